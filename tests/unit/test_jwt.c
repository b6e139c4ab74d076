/* Tests for proto/jwt: verification against tokens minted by independent tools (PyJWT and
 * the openssl CLI, see tests/unit/fixtures/jwt/mint.py), the must-reject cases, claim
 * checks at fixed times, bearer extraction, and minting checked by PyJWT.
 *
 * Runs from the project root (make unit-test does). All times are relative to NOW, the
 * fixed "now" the fixtures were minted for. */
#include "proto/jwt.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define FIX   "tests/unit/fixtures/jwt/"
#define NOW   1700000000LL
#define LATER 2000000000LL
#define AUD   "pikod"
#define ISS   "https://issuer.example"

/* ---- fixture helpers ---- */

static char *slurp(const char *name)
{
	char path[256];
	FILE *f;
	char *buf;
	long n;

	snprintf(path, sizeof(path), FIX "%s", name);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "missing fixture %s (run from the project root)", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The token called name in tokens.txt ("<name> <token>" lines); caller frees. */
static char *tok(const char *name)
{
	char *all = slurp("tokens.txt"), *line, *save = NULL, *out = NULL;
	size_t nl = strlen(name);

	for (line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (!strncmp(line, name, nl) && line[nl] == ' ')
			out = strdup(line + nl + 1);
	free(all);
	cr_assert_not_null(out, "no token %s in tokens.txt", name);
	return out;
}

enum keys {
	K_HMAC = 1,
	K_RSA = 2,
	K_EC256 = 4,
	K_EC384 = 8,
	K_EC521 = 16,
};

struct vopts {
	const char *audience, *issuer;
	unsigned leeway;
};

static struct pk_jwt_verifier *verifier_opts(int keys, struct vopts o)
{
	struct pk_jwt_config cfg = {
	    .audience = o.audience, .issuer = o.issuer, .leeway_seconds = o.leeway};
	char *secret = NULL, *rsa = NULL, *ec = NULL;
	struct pk_jwt_verifier *v = NULL;
	const char *why = NULL;
	int rc;

	if (keys & K_HMAC)
		cfg.hmac_secret_key = secret = slurp("hmac.secret");
	if (keys & K_RSA)
		cfg.rsa_public_key = rsa = slurp("rsa.pub");
	if (keys & (K_EC256 | K_EC384 | K_EC521))
		cfg.ecdsa_public_key = ec = slurp(keys & K_EC256   ? "ec256.pub"
		                                  : keys & K_EC384 ? "ec384.pub"
		                                                   : "ec521.pub");
	rc = pk_jwt_verifier_new(&cfg, &v, &why);
	cr_assert_eq(rc, 0, "verifier: %d %s", rc, why);
	free(secret);
	free(rsa);
	free(ec);
	return v;
}

static struct pk_jwt_verifier *verifier(int keys)
{
	return verifier_opts(keys, (struct vopts){0});
}

/* Verifies the named fixture token at now; returns the outcome and frees everything. */
static enum pk_jwt_error check_v(struct pk_jwt_verifier *v, const char *name, long long now)
{
	struct pk_jwt_claims c;
	char *t = tok(name);
	enum pk_jwt_error e = pk_jwt_verify(v, t, strlen(t), now, &c);

	pk_jwt_claims_free(&c);
	free(t);
	pk_jwt_verifier_free(v);
	return e;
}

#define expect(v, name, now, want)                                                                 \
	do {                                                                                       \
		enum pk_jwt_error e_ = check_v((v), (name), (now));                                \
		cr_assert_eq(e_, (want), "%s: got \"%s\", want \"%s\"", (name),                    \
		             pk_jwt_error_str(e_), pk_jwt_error_str(want));                        \
	} while (0)

/* Flips one character in the middle of the signature segment. */
static void tamper_signature(char *t)
{
	char *sig = strrchr(t, '.') + 1;
	char *c = sig + strlen(sig) / 2;

	*c = *c == 'A' ? 'B' : 'A';
}

static enum pk_jwt_error check_tampered(struct pk_jwt_verifier *v, const char *name)
{
	char *t = tok(name);
	enum pk_jwt_error e;

	tamper_signature(t);
	e = pk_jwt_verify(v, t, strlen(t), NOW, NULL);
	free(t);
	pk_jwt_verifier_free(v);
	return e;
}

static enum pk_jwt_error check_str(const char *t)
{
	struct pk_jwt_verifier *v = verifier(K_HMAC | K_RSA | K_EC256);
	enum pk_jwt_error e = pk_jwt_verify(v, t, strlen(t), NOW, NULL);

	pk_jwt_verifier_free(v);
	return e;
}

/* ---- every algorithm family, independent-tool tokens ---- */

Test(family, hs256)
{
	expect(verifier(K_HMAC), "hs256", NOW, PK_JWT_OK);
}
Test(family, hs384)
{
	expect(verifier(K_HMAC), "hs384", NOW, PK_JWT_OK);
}
Test(family, hs512)
{
	expect(verifier(K_HMAC), "hs512", NOW, PK_JWT_OK);
}
Test(family, rs256)
{
	expect(verifier(K_RSA), "rs256", NOW, PK_JWT_OK);
}
Test(family, rs384)
{
	expect(verifier(K_RSA), "rs384", NOW, PK_JWT_OK);
}
Test(family, rs512)
{
	expect(verifier(K_RSA), "rs512", NOW, PK_JWT_OK);
}
Test(family, es256)
{
	expect(verifier(K_EC256), "es256", NOW, PK_JWT_OK);
}
Test(family, es384)
{
	expect(verifier(K_EC384), "es384", NOW, PK_JWT_OK);
}
Test(family, es512)
{
	expect(verifier(K_EC521), "es512", NOW, PK_JWT_OK);
}
Test(family, openssl_cli_hs256)
{
	expect(verifier(K_HMAC), "ossl-hs256", NOW, PK_JWT_OK);
}
Test(family, openssl_cli_rs256)
{
	expect(verifier(K_RSA), "ossl-rs256", NOW, PK_JWT_OK);
}
Test(family, openssl_cli_es256)
{
	expect(verifier(K_EC256), "ossl-es256", NOW, PK_JWT_OK);
}
Test(family, all_keys_configured_accepts_each_family)
{
	expect(verifier(K_HMAC | K_RSA | K_EC256), "hs512", NOW, PK_JWT_OK);
	expect(verifier(K_HMAC | K_RSA | K_EC256), "rs384", NOW, PK_JWT_OK);
	expect(verifier(K_HMAC | K_RSA | K_EC256), "es256", NOW, PK_JWT_OK);
}

#define TAMPER_TEST(name, keys)                                                                    \
	Test(tampered, name)                                                                       \
	{                                                                                          \
		cr_assert_eq(check_tampered(verifier(keys), #name), PK_JWT_INVALID_TOKEN);         \
	}
TAMPER_TEST(hs256, K_HMAC)
TAMPER_TEST(hs384, K_HMAC)
TAMPER_TEST(hs512, K_HMAC)
TAMPER_TEST(rs256, K_RSA)
TAMPER_TEST(rs384, K_RSA)
TAMPER_TEST(rs512, K_RSA)
TAMPER_TEST(es256, K_EC256)
TAMPER_TEST(es384, K_EC384)
TAMPER_TEST(es512, K_EC521)

Test(tampered, payload_swapped_under_valid_signature)
{
	struct pk_jwt_verifier *v = verifier(K_HMAC);
	char *t = tok("hs256"), buf[512];
	char *dot1 = strchr(t, '.'), *dot2 = strrchr(t, '.');

	/* {"sub":"agent","exp":2000000001} in place of ...0000 */
	*dot1 = '\0';
	snprintf(buf, sizeof(buf), "%s.%s%s", t, "eyJzdWIiOiJhZ2VudCIsImV4cCI6MjAwMDAwMDAwMX0",
	         dot2);
	cr_assert_eq(pk_jwt_verify(v, buf, strlen(buf), NOW, NULL), PK_JWT_INVALID_TOKEN);
	free(t);
	pk_jwt_verifier_free(v);
}

Test(tampered, other_rsa_key)
{
	expect(verifier(K_RSA), "rs256-other-key", NOW, PK_JWT_INVALID_TOKEN);
}
Test(tampered, other_hmac_secret)
{
	expect(verifier(K_HMAC), "hs256-other-secret", NOW, PK_JWT_INVALID_TOKEN);
}

/* ---- facts about libjwt 1.10.2 that the design relies on ---- */

static int raw_libjwt(const char *name, const char *keyfile)
{
	char *t = tok(name), *key = slurp(keyfile);
	jwt_t *j = NULL;
	int rc = jwt_decode(&j, t, (const unsigned char *)key, (int)strlen(key));

	jwt_free(j);
	free(t);
	free(key);
	return rc;
}

Test(libjwt_fact, takes_alg_from_header_so_confusion_passes_unpinned)
{
	/* An HS256 token keyed with the RSA public key PEM verifies when that PEM is handed to
	 * jwt_decode: the reason pk_jwt_verify pins the algorithm first. */
	cr_assert_eq(raw_libjwt("confusion-rsa", "rsa.pub"), 0);
}
Test(libjwt_fact, rejects_alg_none_when_given_a_key)
{
	cr_assert_neq(raw_libjwt("none", "hmac.secret"), 0);
}
Test(libjwt_fact, null_key_skips_signature_check)
{
	/* A token signed by a stranger "decodes" with no key, as alg none: pk_jwt_verify never
	 * passes a NULL key and checks the decoded algorithm is the pinned one. */
	char *t = tok("rs256-other-key");
	jwt_t *j = NULL;

	cr_assert_eq(jwt_decode(&j, t, NULL, 0), 0);
	cr_assert_eq(jwt_get_alg(j), JWT_ALG_NONE);
	jwt_free(j);
	free(t);
}
Test(libjwt_fact, validates_no_claims)
{
	/* exp is years in the past in real time; libjwt does not look. */
	cr_assert_eq(raw_libjwt("expired-aud-other", "hmac.secret"), 0);
}
Test(libjwt_fact, does_not_tie_es_alg_to_curve)
{
	cr_assert_eq(raw_libjwt("es384-on-p256", "ec256.pub"), 0);
}
Test(libjwt_fact, refuses_typ_other_than_jwt)
{
	cr_assert_neq(raw_libjwt("typ-at-jwt", "hmac.secret"), 0);
}

/* ---- must reject ---- */

Test(reject, alg_none_unsigned)
{
	expect(verifier(K_HMAC | K_RSA | K_EC256), "none", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, alg_none_with_signature)
{
	expect(verifier(K_HMAC | K_RSA | K_EC256), "none-signed", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, confusion_hs256_keyed_with_rsa_public_pem)
{
	expect(verifier(K_RSA), "confusion-rsa", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, confusion_hs256_keyed_with_ec_public_pem)
{
	expect(verifier(K_EC256), "confusion-ec", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, hs_when_only_rsa_configured)
{
	expect(verifier(K_RSA), "hs256", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, rs_when_only_hmac_configured)
{
	expect(verifier(K_HMAC), "rs256", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, es_when_only_rsa_configured)
{
	expect(verifier(K_RSA), "es256", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, es_alg_not_matching_key_curve)
{
	expect(verifier(K_EC256), "es384-on-p256", NOW, PK_JWT_INVALID_TOKEN);
	expect(verifier(K_EC384), "es256", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, alg_name_is_case_sensitive)
{
	expect(verifier(K_HMAC), "alg-lower", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_jwk)
{
	expect(verifier(K_HMAC), "hdr-jwk", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_jku)
{
	expect(verifier(K_HMAC), "hdr-jku", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_x5u)
{
	expect(verifier(K_HMAC), "hdr-x5u", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_x5c)
{
	expect(verifier(K_HMAC), "hdr-x5c", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_crit)
{
	expect(verifier(K_HMAC), "hdr-crit", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, header_kid_is_ignored)
{
	expect(verifier(K_HMAC), "hdr-kid", NOW, PK_JWT_OK);
}
Test(reject, typ_other_than_jwt)
{
	expect(verifier(K_HMAC), "typ-at-jwt", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, typ_absent_is_fine)
{
	expect(verifier(K_HMAC), "typ-absent", NOW, PK_JWT_OK);
}
Test(reject, duplicate_claim_names)
{
	expect(verifier(K_HMAC), "dup-exp", NOW, PK_JWT_INVALID_TOKEN);
}
Test(reject, token_of_8192_bytes_is_accepted)
{
	expect(verifier(K_HMAC), "size-8192", NOW, PK_JWT_OK);
}
Test(reject, token_of_8193_bytes_is_invalid)
{
	expect(verifier(K_HMAC), "size-8193", NOW, PK_JWT_INVALID_TOKEN);
}

#define HS_HDR "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
#define HS_PAY "eyJzdWIiOiJhZ2VudCIsImV4cCI6MjAwMDAwMDAwMH0"

Test(malformed, empty)
{
	cr_assert_eq(check_str(""), PK_JWT_INVALID_TOKEN);
}
Test(malformed, no_dots)
{
	cr_assert_eq(check_str("abc"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, two_segments)
{
	cr_assert_eq(check_str(HS_HDR "." HS_PAY), PK_JWT_INVALID_TOKEN);
}
Test(malformed, four_segments)
{
	cr_assert_eq(check_str(HS_HDR "." HS_PAY ".abcd.abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, empty_header_segment)
{
	cr_assert_eq(check_str("." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, padding_characters)
{
	cr_assert_eq(check_str(HS_HDR "." HS_PAY "=.abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, standard_base64_alphabet)
{
	cr_assert_eq(check_str(HS_HDR "." HS_PAY ".ab+/"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, whitespace_inside)
{
	cr_assert_eq(check_str(HS_HDR " ." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, segment_length_mod4_is_1)
{
	cr_assert_eq(check_str(HS_HDR "a." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, header_not_json)
{
	/* "notjson" */
	cr_assert_eq(check_str("bm90anNvbg." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, header_json_array)
{
	/* ["alg","HS256"] */
	cr_assert_eq(check_str("WyJhbGciLCJIUzI1NiJd." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, header_without_alg)
{
	/* {"typ":"JWT"} */
	cr_assert_eq(check_str("eyJ0eXAiOiJKV1QifQ." HS_PAY ".abcd"), PK_JWT_INVALID_TOKEN);
}
Test(malformed, payload_json_array)
{
	/* [1] */
	cr_assert_eq(check_str(HS_HDR ".WzFd.abcd"), PK_JWT_INVALID_TOKEN);
}

Test(malformed, embedded_nul_counted_in_length)
{
	struct pk_jwt_verifier *v = verifier(K_HMAC);
	char *t = tok("hs256");

	cr_assert_eq(pk_jwt_verify(v, t, strlen(t) + 1, NOW, NULL), PK_JWT_INVALID_TOKEN);
	free(t);
	pk_jwt_verifier_free(v);
}

Test(malformed, token_need_not_be_nul_terminated)
{
	struct pk_jwt_verifier *v = verifier(K_HMAC);
	char *t = tok("hs256"), *copy;
	size_t n = strlen(t);

	copy = malloc(n); /* exactly n bytes: ASan catches any read past the end */
	memcpy(copy, t, n);
	cr_assert_eq(pk_jwt_verify(v, copy, n, NOW, NULL), PK_JWT_OK);
	free(copy);
	free(t);
	pk_jwt_verifier_free(v);
}

/* ---- claims ---- */

static enum pk_jwt_error verify_claims(struct pk_jwt_verifier *v, const char *name, long long now,
                                       struct pk_jwt_claims *c)
{
	char *t = tok(name);
	enum pk_jwt_error e = pk_jwt_verify(v, t, strlen(t), now, c);

	free(t);
	pk_jwt_verifier_free(v);
	return e;
}

Test(exp, one_second_before_is_valid_and_reported)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), "exp-now", NOW - 1, &c), PK_JWT_OK);
	cr_assert_eq(c.exp, NOW);
	pk_jwt_claims_free(&c);
}
Test(exp, at_exp_is_expired)
{
	expect(verifier(K_HMAC), "exp-now", NOW, PK_JWT_EXPIRED_TOKEN);
}
Test(exp, leeway_extends_validity)
{
	struct vopts o = {.leeway = 5};

	expect(verifier_opts(K_HMAC, o), "exp-now", NOW + 4, PK_JWT_OK);
	expect(verifier_opts(K_HMAC, o), "exp-now", NOW + 5, PK_JWT_EXPIRED_TOKEN);
}
Test(exp, absent_means_no_expiry)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), "no-exp", LATER * 4, &c), PK_JWT_OK);
	cr_assert_eq(c.exp, 0);
	pk_jwt_claims_free(&c);
}
Test(exp, string_is_invalid)
{
	expect(verifier(K_HMAC), "exp-string", NOW, PK_JWT_INVALID_TOKEN);
}
Test(exp, fraction_is_floored)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), "exp-real", NOW - 1, &c), PK_JWT_OK);
	cr_assert_eq(c.exp, NOW);
	pk_jwt_claims_free(&c);
	expect(verifier(K_HMAC), "exp-real", NOW, PK_JWT_EXPIRED_TOKEN);
}
Test(exp, expired_beats_wrong_audience)
{
	/* Piko answers "expired token" whenever expiry is among the failures. */
	expect(verifier_opts(K_HMAC, (struct vopts){.audience = AUD}), "expired-aud-other", NOW,
	       PK_JWT_EXPIRED_TOKEN);
}
Test(exp, expired_with_bad_signature_is_invalid)
{
	cr_assert_eq(check_tampered(verifier(K_HMAC), "expired-aud-other"), PK_JWT_INVALID_TOKEN);
}

Test(nbf, one_second_before_is_invalid)
{
	expect(verifier(K_HMAC), "nbf-now", NOW - 1, PK_JWT_INVALID_TOKEN);
}
Test(nbf, at_nbf_is_valid)
{
	expect(verifier(K_HMAC), "nbf-now", NOW, PK_JWT_OK);
}
Test(nbf, leeway_allows_early_use)
{
	struct vopts o = {.leeway = 5};

	expect(verifier_opts(K_HMAC, o), "nbf-now", NOW - 5, PK_JWT_OK);
	expect(verifier_opts(K_HMAC, o), "nbf-now", NOW - 6, PK_JWT_INVALID_TOKEN);
}
Test(nbf, fraction_is_rounded_up)
{
	/* nbf = NOW - 0.5 */
	expect(verifier(K_HMAC), "nbf-real", NOW - 1, PK_JWT_INVALID_TOKEN);
	expect(verifier(K_HMAC), "nbf-real", NOW, PK_JWT_OK);
}
Test(nbf, string_is_invalid)
{
	expect(verifier(K_HMAC), "nbf-string", NOW, PK_JWT_INVALID_TOKEN);
}

Test(types, iat_string_is_invalid)
{
	expect(verifier(K_HMAC), "iat-string", NOW, PK_JWT_INVALID_TOKEN);
}
Test(types, sub_number_is_invalid)
{
	expect(verifier(K_HMAC), "sub-number", NOW, PK_JWT_INVALID_TOKEN);
}

#define WITH_AUD verifier_opts(K_HMAC, (struct vopts){.audience = AUD})
#define WITH_ISS verifier_opts(K_HMAC, (struct vopts){.issuer = ISS})

Test(aud, string_matching)
{
	expect(WITH_AUD, "aud-string", NOW, PK_JWT_OK);
}
Test(aud, string_other)
{
	expect(WITH_AUD, "aud-other", NOW, PK_JWT_INVALID_TOKEN);
}
Test(aud, array_containing)
{
	expect(WITH_AUD, "aud-array", NOW, PK_JWT_OK);
}
Test(aud, array_not_containing)
{
	expect(WITH_AUD, "aud-array-other", NOW, PK_JWT_INVALID_TOKEN);
}
Test(aud, missing_when_required)
{
	expect(WITH_AUD, "no-exp", NOW, PK_JWT_INVALID_TOKEN);
}
Test(aud, array_with_number)
{
	expect(WITH_AUD, "aud-array-number", NOW, PK_JWT_INVALID_TOKEN);
}
Test(aud, number)
{
	expect(WITH_AUD, "aud-number", NOW, PK_JWT_INVALID_TOKEN);
}
Test(aud, ignored_when_not_configured)
{
	expect(verifier(K_HMAC), "aud-other", NOW, PK_JWT_OK);
}
Test(aud, wrong_type_invalid_even_when_not_configured)
{
	expect(verifier(K_HMAC), "aud-number", NOW, PK_JWT_INVALID_TOKEN);
}

Test(iss, matching)
{
	expect(WITH_ISS, "iss-ok", NOW, PK_JWT_OK);
}
Test(iss, other)
{
	expect(WITH_ISS, "iss-other", NOW, PK_JWT_INVALID_TOKEN);
}
Test(iss, missing_when_required)
{
	expect(WITH_ISS, "no-exp", NOW, PK_JWT_INVALID_TOKEN);
}
Test(iss, number)
{
	expect(WITH_ISS, "iss-number", NOW, PK_JWT_INVALID_TOKEN);
}
Test(iss, ignored_when_not_configured)
{
	expect(verifier(K_HMAC), "iss-other", NOW, PK_JWT_OK);
}
Test(iss, with_audience_both_required)
{
	struct vopts o = {.audience = AUD, .issuer = ISS};

	expect(verifier_opts(K_HMAC, o), "aud-iss-ok", NOW, PK_JWT_OK);
	expect(verifier_opts(K_HMAC, o), "aud-string", NOW, PK_JWT_INVALID_TOKEN);
	expect(verifier_opts(K_HMAC, o), "iss-ok", NOW, PK_JWT_INVALID_TOKEN);
}

Test(endpoints, listed_are_permitted_others_not)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), "ep-two", NOW, &c), PK_JWT_OK);
	cr_assert_eq(c.n_endpoints, 2);
	cr_assert_str_eq(c.endpoints[0], "alpha");
	cr_assert_str_eq(c.endpoints[1], "beta");
	cr_assert(pk_jwt_endpoint_permitted(&c, "alpha"));
	cr_assert(pk_jwt_endpoint_permitted(&c, "beta"));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, "gamma"));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, "alph"));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, "ALPHA"));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, ""));
	pk_jwt_claims_free(&c);
	cr_assert_eq(c.n_endpoints, 0);
	cr_assert_null(c.endpoints);
}

static void expect_all_endpoints(const char *name)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), name, NOW, &c), PK_JWT_OK);
	cr_assert_eq(c.n_endpoints, 0, "%s", name);
	cr_assert(pk_jwt_endpoint_permitted(&c, "anything"));
	pk_jwt_claims_free(&c);
}

Test(endpoints, empty_list_permits_all)
{
	expect_all_endpoints("ep-empty");
}
Test(endpoints, null_list_permits_all)
{
	expect_all_endpoints("ep-null");
}
Test(endpoints, piko_without_endpoints_permits_all)
{
	expect_all_endpoints("ep-piko-empty");
}
Test(endpoints, no_piko_claim_permits_all)
{
	expect_all_endpoints("no-exp");
}
Test(endpoints, empty_name_is_a_real_restriction)
{
	struct pk_jwt_claims c;

	cr_assert_eq(verify_claims(verifier(K_HMAC), "ep-empty-name", NOW, &c), PK_JWT_OK);
	cr_assert_eq(c.n_endpoints, 1);
	cr_assert(pk_jwt_endpoint_permitted(&c, ""));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, "alpha"));
	pk_jwt_claims_free(&c);
}
Test(endpoints, string_instead_of_list_is_invalid)
{
	expect(verifier(K_HMAC), "ep-string", NOW, PK_JWT_INVALID_TOKEN);
}
Test(endpoints, number_in_list_is_invalid)
{
	expect(verifier(K_HMAC), "ep-number-item", NOW, PK_JWT_INVALID_TOKEN);
}
Test(endpoints, piko_not_an_object_is_invalid)
{
	expect(verifier(K_HMAC), "ep-piko-string", NOW, PK_JWT_INVALID_TOKEN);
}
Test(endpoints, claims_zeroed_on_failure)
{
	struct pk_jwt_claims c = {.exp = 7, .n_endpoints = 3};

	cr_assert_eq(verify_claims(verifier(K_HMAC), "ep-number-item", NOW, &c),
	             PK_JWT_INVALID_TOKEN);
	cr_assert_eq(c.exp, 0);
	cr_assert_eq(c.n_endpoints, 0);
	cr_assert_null(c.endpoints);
}

/* ---- Authorization header ---- */

static enum pk_jwt_error bearer(const char *authz, const char *xpiko, const char **out)
{
	const char *t = NULL;
	size_t n = 0;
	enum pk_jwt_error e = pk_jwt_bearer_token(authz, xpiko, &t, &n);
	static char buf[256];

	if (e == PK_JWT_OK) {
		cr_assert_lt(n, sizeof(buf));
		memcpy(buf, t, n);
		buf[n] = '\0';
		*out = buf;
	}
	return e;
}

Test(header, none_is_missing)
{
	const char *t;

	cr_assert_eq(bearer(NULL, NULL, &t), PK_JWT_MISSING_AUTHORIZATION);
}
Test(header, empty_values_are_missing)
{
	const char *t;

	cr_assert_eq(bearer("", "", &t), PK_JWT_MISSING_AUTHORIZATION);
}
Test(header, authorization_bearer)
{
	const char *t;

	cr_assert_eq(bearer("Bearer abc.def.ghi", NULL, &t), PK_JWT_OK);
	cr_assert_str_eq(t, "abc.def.ghi");
}
Test(header, x_piko_authorization_wins)
{
	const char *t;

	cr_assert_eq(bearer("Bearer from-authorization", "Bearer from-x-piko", &t), PK_JWT_OK);
	cr_assert_str_eq(t, "from-x-piko");
}
Test(header, x_piko_authorization_wins_even_when_bad)
{
	const char *t;

	cr_assert_eq(bearer("Bearer good", "Basic dXNlcjpwYXNz", &t), PK_JWT_UNSUPPORTED_AUTH_TYPE);
}
Test(header, empty_x_piko_authorization_falls_back)
{
	const char *t;

	cr_assert_eq(bearer("Bearer from-authorization", "", &t), PK_JWT_OK);
	cr_assert_str_eq(t, "from-authorization");
}
Test(header, no_space_is_invalid_authorization)
{
	const char *t;

	cr_assert_eq(bearer("Bearer", NULL, &t), PK_JWT_INVALID_AUTHORIZATION);
	cr_assert_eq(bearer("abc", NULL, &t), PK_JWT_INVALID_AUTHORIZATION);
	cr_assert_eq(bearer("Bearer\tabc", NULL, &t), PK_JWT_INVALID_AUTHORIZATION);
}
Test(header, other_scheme_is_unsupported)
{
	const char *t;

	cr_assert_eq(bearer("Basic dXNlcjpwYXNz", NULL, &t), PK_JWT_UNSUPPORTED_AUTH_TYPE);
	cr_assert_eq(bearer("Bearerx abc", NULL, &t), PK_JWT_UNSUPPORTED_AUTH_TYPE);
	cr_assert_eq(bearer("Bear abc", NULL, &t), PK_JWT_UNSUPPORTED_AUTH_TYPE);
	cr_assert_eq(bearer(" Bearer abc", NULL, &t), PK_JWT_UNSUPPORTED_AUTH_TYPE);
}
Test(header, scheme_is_case_insensitive)
{
	const char *t;

	cr_assert_eq(bearer("bearer abc", NULL, &t), PK_JWT_OK);
	cr_assert_str_eq(t, "abc");
	cr_assert_eq(bearer("BEARER abc", NULL, &t), PK_JWT_OK);
}
Test(header, token_is_everything_after_first_space)
{
	const char *t;

	cr_assert_eq(bearer("Bearer  abc", NULL, &t), PK_JWT_OK);
	cr_assert_str_eq(t, " abc");
	cr_assert_eq(bearer("Bearer ", NULL, &t), PK_JWT_OK);
	cr_assert_str_eq(t, "");
}

static enum pk_jwt_error authenticate(const char *authz, const char *xpiko)
{
	struct pk_jwt_verifier *v = verifier(K_HMAC);
	struct pk_jwt_claims c;
	enum pk_jwt_error e = pk_jwt_authenticate(v, authz, xpiko, NOW, &c);

	pk_jwt_claims_free(&c);
	pk_jwt_verifier_free(v);
	return e;
}

Test(authenticate, valid_bearer_token)
{
	char *t = tok("hs256"), h[512];

	snprintf(h, sizeof(h), "Bearer %s", t);
	cr_assert_eq(authenticate(h, NULL), PK_JWT_OK);
	cr_assert_eq(authenticate(NULL, h), PK_JWT_OK);
	free(t);
}
Test(authenticate, not_a_jwt_is_invalid_token)
{
	cr_assert_eq(authenticate("Bearer notajwt", NULL), PK_JWT_INVALID_TOKEN);
}
Test(authenticate, empty_token_is_invalid_token)
{
	cr_assert_eq(authenticate("Bearer ", NULL), PK_JWT_INVALID_TOKEN);
}
Test(authenticate, extra_space_is_invalid_token)
{
	char *t = tok("hs256"), h[512];

	snprintf(h, sizeof(h), "Bearer  %s", t);
	cr_assert_eq(authenticate(h, NULL), PK_JWT_INVALID_TOKEN);
	free(t);
}
Test(authenticate, header_errors_pass_through)
{
	cr_assert_eq(authenticate(NULL, NULL), PK_JWT_MISSING_AUTHORIZATION);
	cr_assert_eq(authenticate("Token", NULL), PK_JWT_INVALID_AUTHORIZATION);
	cr_assert_eq(authenticate("Token x", NULL), PK_JWT_UNSUPPORTED_AUTH_TYPE);
}

Test(errors, messages_are_pikos)
{
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_MISSING_AUTHORIZATION), "missing authorization");
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_INVALID_AUTHORIZATION), "invalid authorization");
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_UNSUPPORTED_AUTH_TYPE), "unsupported auth type");
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_INVALID_TOKEN), "invalid token");
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_EXPIRED_TOKEN), "expired token");
	cr_assert_str_eq(pk_jwt_error_str(PK_JWT_ENDPOINT_NOT_PERMITTED), "endpoint not permitted");
	cr_assert_str_eq(pk_jwt_error_str((enum pk_jwt_error)99), "unknown error");
}

/* ---- verifier configuration ---- */

static int new_verifier(struct pk_jwt_config cfg, const char **why)
{
	struct pk_jwt_verifier *v = NULL;
	int rc = pk_jwt_verifier_new(&cfg, &v, why);

	pk_jwt_verifier_free(v);
	return rc;
}

static int new_with_file(const char *rsa_file, const char *ec_file, const char **why)
{
	struct pk_jwt_config cfg = {0};
	char *rsa = rsa_file ? slurp(rsa_file) : NULL, *ec = ec_file ? slurp(ec_file) : NULL;
	int rc;

	cfg.rsa_public_key = rsa;
	cfg.ecdsa_public_key = ec;
	rc = new_verifier(cfg, why);
	free(rsa);
	free(ec);
	return rc;
}

Test(config, no_key_is_an_error)
{
	const char *why = NULL;

	cr_assert_eq(new_verifier((struct pk_jwt_config){.audience = AUD}, &why), -EINVAL);
	cr_assert_str_eq(why, "no verification key is set");
}
Test(config, empty_strings_are_unset)
{
	const char *why = NULL;
	struct pk_jwt_config cfg = {
	    .hmac_secret_key = "", .rsa_public_key = "", .ecdsa_public_key = ""};

	cr_assert_eq(new_verifier(cfg, &why), -EINVAL);
}
Test(config, ec_key_in_rsa_slot)
{
	const char *why = NULL;

	cr_assert_eq(new_with_file("ec256.pub", NULL, &why), -EINVAL);
	cr_assert_str_eq(why, "rsa_public_key is not an RSA key");
}
Test(config, rsa_key_in_ec_slot)
{
	const char *why = NULL;

	cr_assert_eq(new_with_file(NULL, "rsa.pub", &why), -EINVAL);
	cr_assert_str_eq(why, "ecdsa_public_key is not an EC key");
}
Test(config, private_key_refused_in_public_slot)
{
	const char *why = NULL;

	cr_assert_eq(new_with_file("rsa.pem", NULL, &why), -EINVAL);
	cr_assert_str_eq(why, "rsa_public_key is not a readable PEM public key");
}
Test(config, garbage_pem)
{
	const char *why = NULL;

	cr_assert_eq(new_verifier((struct pk_jwt_config){.rsa_public_key = "not a key"}, &why),
	             -EINVAL);
}
Test(config, short_rsa_key)
{
	const char *why = NULL;

	cr_assert_eq(new_with_file("rsa512.pub", NULL, &why), -EINVAL);
	cr_assert_str_eq(why, "rsa_public_key is shorter than 1024 bits");
}
Test(config, curve_without_jwt_algorithm)
{
	const char *why = NULL;

	cr_assert_eq(new_with_file(NULL, "secp256k1.pub", &why), -EINVAL);
	cr_assert_str_eq(why, "ecdsa_public_key is not on P-256, P-384 or P-521");
}
Test(config, leeway_bound)
{
	struct pk_jwt_config cfg = {.hmac_secret_key = "s", .leeway_seconds = PK_JWT_MAX_LEEWAY};

	cr_assert_eq(new_verifier(cfg, NULL), 0);
	cfg.leeway_seconds++;
	cr_assert_eq(new_verifier(cfg, NULL), -EINVAL);
}

static enum pk_jwt_error verify_rs256_with(const char *keyfile)
{
	char *key = slurp(keyfile), *t = tok("rs256");
	struct pk_jwt_config cfg = {.rsa_public_key = key};
	struct pk_jwt_verifier *v = NULL;
	enum pk_jwt_error e;

	cr_assert_eq(pk_jwt_verifier_new(&cfg, &v, NULL), 0);
	e = pk_jwt_verify(v, t, strlen(t), NOW, NULL);
	pk_jwt_verifier_free(v);
	free(key);
	free(t);
	return e;
}

Test(config, rsa_pkcs1_public_key)
{
	cr_assert_eq(verify_rs256_with("rsa-pkcs1.pub"), PK_JWT_OK);
}
Test(config, rsa_certificate)
{
	cr_assert_eq(verify_rs256_with("rsa.crt"), PK_JWT_OK);
}

/* ---- minting ---- */

static char *mint(enum pk_jwt_key_kind kind, const char *keyfile, struct pk_jwt_mint_params p)
{
	char *key = slurp(keyfile), *out = NULL;
	const char *why = NULL;
	int rc;

	p.kind = kind;
	p.key = key;
	rc = pk_jwt_mint(&p, &out, &why);
	cr_assert_eq(rc, 0, "mint: %d %s", rc, why);
	free(key);
	return out;
}

/* Runs PyJWT on token; returns its exit status and its first output line in out. A missing
 * python3 or PyJWT fails the test: `make deps` installs python3-jwt. */
static int pyjwt(const char *token, const char *alg, const char *keyfile, const char *aud,
                 const char *iss, char *out, size_t outlen)
{
	char cmd[16384];
	FILE *p;
	int st;

	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 " FIX "pyverify.py '%s' %s " FIX "%s %s %s",
	         token, alg, keyfile, aud ? aud : "", iss ? iss : "");
	p = popen(cmd, "r");
	cr_assert_not_null(p, "popen failed");
	out[0] = '\0';
	if (fgets(out, (int)outlen, p) != NULL)
		out[strcspn(out, "\n")] = '\0';
	st = pclose(p);
	cr_assert(WIFEXITED(st), "python3 did not exit");
	cr_assert_neq(WEXITSTATUS(st), 127, "/usr/bin/python3 is missing (make deps installs it)");
	cr_assert_neq(WEXITSTATUS(st), 3, "python3-jwt is missing (make deps installs it)");
	return WEXITSTATUS(st);
}

static void expect_python_accepts(const char *token, const char *alg, const char *pubfile)
{
	char out[1024];

	cr_assert_eq(pyjwt(token, alg, pubfile, NULL, NULL, out, sizeof(out)), 0, "%s", out);
	cr_assert_str_eq(out, "{\"exp\": 2000000000, \"iat\": 1700000000}");
}

static const char *header_alg(const char *token, char *buf, size_t n)
{
	/* Crude but independent of our decoder: the headers libjwt writes are fixed strings. */
	if (!strncmp(token, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", 37))
		snprintf(buf, n, "HS256");
	else if (!strncmp(token, "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.", 37))
		snprintf(buf, n, "RS256");
	else if (!strncmp(token, "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.", 37))
		snprintf(buf, n, "ES256");
	else if (!strncmp(token, "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.", 37))
		snprintf(buf, n, "ES384");
	else if (!strncmp(token, "eyJhbGciOiJFUzUxMiIsInR5cCI6IkpXVCJ9.", 37))
		snprintf(buf, n, "ES512");
	else
		snprintf(buf, n, "?");
	return buf;
}

#define SIMPLE                                                                                     \
	{                                                                                          \
		.iat = NOW, .exp = LATER                                                           \
	}

Test(mint, hs256_verified_by_pyjwt)
{
	char *t = mint(PK_JWT_KEY_HMAC, "hmac.secret", (struct pk_jwt_mint_params)SIMPLE), a[8];

	cr_assert_str_eq(header_alg(t, a, sizeof(a)), "HS256");
	expect_python_accepts(t, "HS256", "hmac.secret");
	free(t);
}
Test(mint, rs256_verified_by_pyjwt)
{
	char *t = mint(PK_JWT_KEY_RSA, "rsa.pem", (struct pk_jwt_mint_params)SIMPLE), a[8];

	cr_assert_str_eq(header_alg(t, a, sizeof(a)), "RS256");
	expect_python_accepts(t, "RS256", "rsa.pub");
	free(t);
}
Test(mint, es256_verified_by_pyjwt)
{
	char *t = mint(PK_JWT_KEY_ECDSA, "ec256.pem", (struct pk_jwt_mint_params)SIMPLE), a[8];

	cr_assert_str_eq(header_alg(t, a, sizeof(a)), "ES256");
	expect_python_accepts(t, "ES256", "ec256.pub");
	free(t);
}
Test(mint, es384_key_gives_es384_verified_by_pyjwt)
{
	char *t = mint(PK_JWT_KEY_ECDSA, "ec384.pem", (struct pk_jwt_mint_params)SIMPLE), a[8];

	cr_assert_str_eq(header_alg(t, a, sizeof(a)), "ES384");
	expect_python_accepts(t, "ES384", "ec384.pub");
	free(t);
}
Test(mint, es512_key_gives_es512_verified_by_pyjwt)
{
	char *t = mint(PK_JWT_KEY_ECDSA, "ec521.pem", (struct pk_jwt_mint_params)SIMPLE), a[8];

	cr_assert_str_eq(header_alg(t, a, sizeof(a)), "ES512");
	expect_python_accepts(t, "ES512", "ec521.pub");
	free(t);
}

static const char *const two_endpoints[] = {"alpha", "beta"};

Test(mint, all_claims_verified_by_pyjwt)
{
	struct pk_jwt_mint_params p = {.iat = NOW,
	                               .exp = LATER,
	                               .audience = AUD,
	                               .issuer = ISS,
	                               .endpoints = two_endpoints,
	                               .n_endpoints = 2};
	char *t = mint(PK_JWT_KEY_RSA, "rsa.pem", p), out[1024];

	cr_assert_eq(pyjwt(t, "RS256", "rsa.pub", AUD, ISS, out, sizeof(out)), 0, "%s", out);
	cr_assert_str_eq(out, "{\"aud\": \"pikod\", \"exp\": 2000000000, \"iat\": 1700000000, "
	                      "\"iss\": \"https://issuer.example\", \"piko\": {\"endpoints\": "
	                      "[\"alpha\", \"beta\"]}}");
	free(t);
}

Test(mint, all_claims_verified_by_us)
{
	struct pk_jwt_mint_params p = {.iat = NOW,
	                               .exp = LATER,
	                               .audience = AUD,
	                               .issuer = ISS,
	                               .endpoints = two_endpoints,
	                               .n_endpoints = 2};
	char *t = mint(PK_JWT_KEY_ECDSA, "ec256.pem", p);
	struct pk_jwt_verifier *v = verifier_opts(K_EC256, (struct vopts){AUD, ISS, 0});
	struct pk_jwt_claims c;

	cr_assert_eq(pk_jwt_verify(v, t, strlen(t), NOW, &c), PK_JWT_OK);
	cr_assert_eq(c.exp, LATER);
	cr_assert_eq(c.n_endpoints, 2);
	cr_assert(pk_jwt_endpoint_permitted(&c, "beta"));
	cr_assert_not(pk_jwt_endpoint_permitted(&c, "gamma"));
	pk_jwt_claims_free(&c);
	pk_jwt_verifier_free(v);
	free(t);
}

Test(mint, no_exp_means_no_exp_claim)
{
	char *t = mint(PK_JWT_KEY_HMAC, "hmac.secret", (struct pk_jwt_mint_params){.iat = NOW});
	char out[1024];

	cr_assert_eq(pyjwt(t, "HS256", "hmac.secret", NULL, NULL, out, sizeof(out)), 0, "%s", out);
	cr_assert_str_eq(out, "{\"iat\": 1700000000}");
	free(t);
}

Test(mint, es256_signatures_always_64_bytes)
{
	/* R and S are fixed-width in JWS; a short big-number encoding would fail in other
	 * verifiers about once in 128 signatures. */
	struct pk_jwt_verifier *v = verifier(K_EC256);
	int i;

	for (i = 0; i < 300; i++) {
		struct pk_jwt_mint_params p = {.iat = NOW + i};
		char *t = mint(PK_JWT_KEY_ECDSA, "ec256.pem", p);

		cr_assert_eq(strlen(strrchr(t, '.') + 1), 86, "signature %d: %s", i, t);
		cr_assert_eq(pk_jwt_verify(v, t, strlen(t), NOW, NULL), PK_JWT_OK);
		free(t);
	}
	pk_jwt_verifier_free(v);
}

static int mint_rc(enum pk_jwt_key_kind kind, const char *key, struct pk_jwt_mint_params p)
{
	char *out = NULL;
	const char *why = NULL;
	int rc;

	p.kind = kind;
	p.key = key;
	rc = pk_jwt_mint(&p, &out, &why);
	if (rc < 0)
		cr_assert_not_null(why);
	free(out);
	return rc;
}

static int mint_file_rc(enum pk_jwt_key_kind kind, const char *file)
{
	char *key = slurp(file);
	int rc = mint_rc(kind, key, (struct pk_jwt_mint_params){.iat = NOW});

	free(key);
	return rc;
}

Test(mint, encrypted_key_refused_without_prompting)
{
	cr_assert_eq(mint_file_rc(PK_JWT_KEY_RSA, "rsa-enc.pem"), -EINVAL);
}
Test(mint, key_of_wrong_type)
{
	cr_assert_eq(mint_file_rc(PK_JWT_KEY_RSA, "ec256.pem"), -EINVAL);
	cr_assert_eq(mint_file_rc(PK_JWT_KEY_ECDSA, "rsa.pem"), -EINVAL);
}
Test(mint, public_key_is_not_a_signing_key)
{
	cr_assert_eq(mint_file_rc(PK_JWT_KEY_RSA, "rsa.pub"), -EINVAL);
}
Test(mint, empty_secret)
{
	cr_assert_eq(mint_rc(PK_JWT_KEY_HMAC, "", (struct pk_jwt_mint_params){.iat = NOW}),
	             -EINVAL);
}
Test(mint, endpoint_not_utf8)
{
	static const char *const bad[] = {"ok", "\xff"};
	struct pk_jwt_mint_params p = {.iat = NOW, .endpoints = bad, .n_endpoints = 2};

	cr_assert_eq(mint_rc(PK_JWT_KEY_HMAC, "s", p), -EINVAL);
}
Test(mint, negative_exp)
{
	cr_assert_eq(mint_rc(PK_JWT_KEY_HMAC, "s", (struct pk_jwt_mint_params){.exp = -1}),
	             -EINVAL);
}
Test(mint, oversize_token_refused)
{
	static const char *eps[1024];
	char name[] = "endpoint-name-padding";
	struct pk_jwt_mint_params p = {.iat = NOW, .endpoints = eps, .n_endpoints = 1024};
	int i;

	for (i = 0; i < 1024; i++)
		eps[i] = name;
	cr_assert_eq(mint_rc(PK_JWT_KEY_HMAC, "s", p), -EINVAL);
}
