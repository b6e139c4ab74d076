/* JWT verification and minting on libjwt + jansson. See jwt.h for the rules enforced. */
#include "proto/jwt.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* A segment of a PK_JWT_MAX_TOKEN token decodes to at most this many bytes. */
#define PK__JWT_MAX_SEGMENT (PK_JWT_MAX_TOKEN / 4 * 3)

#define PK__JWT_ALG_BIT(a) (1u << (unsigned)(a))
#define PK__JWT_HS_ALGS                                                                            \
	(PK__JWT_ALG_BIT(JWT_ALG_HS256) | PK__JWT_ALG_BIT(JWT_ALG_HS384) |                         \
	 PK__JWT_ALG_BIT(JWT_ALG_HS512))
#define PK__JWT_RS_ALGS                                                                            \
	(PK__JWT_ALG_BIT(JWT_ALG_RS256) | PK__JWT_ALG_BIT(JWT_ALG_RS384) |                         \
	 PK__JWT_ALG_BIT(JWT_ALG_RS512))

struct pk_jwt_verifier {
	unsigned allowed; /* PK__JWT_ALG_BIT of each permitted jwt_alg_t */
	unsigned char *hmac;
	size_t hmac_len;
	char *rsa_pem; /* normalised SubjectPublicKeyInfo PEM, the form libjwt reads */
	size_t rsa_len;
	char *ec_pem;
	size_t ec_len;
	char *audience;
	char *issuer;
	int64_t leeway;
};

/* Exact, case-sensitive names, as golang-jwt's method registry. */
static const struct {
	const char *name;
	jwt_alg_t alg;
} pk__jwt_algs[] = {
    {"HS256", JWT_ALG_HS256}, {"HS384", JWT_ALG_HS384}, {"HS512", JWT_ALG_HS512},
    {"RS256", JWT_ALG_RS256}, {"RS384", JWT_ALG_RS384}, {"RS512", JWT_ALG_RS512},
    {"ES256", JWT_ALG_ES256}, {"ES384", JWT_ALG_ES384}, {"ES512", JWT_ALG_ES512},
};

/* Header parameters that would let the token choose its own key, and "crit", whose
 * extensions we cannot honour (RFC 7515 section 4.1.11). */
static const char *const pk__jwt_forbidden_header[] = {"jwk", "jku", "x5u", "x5c", "crit"};

const char *pk_jwt_error_str(enum pk_jwt_error e)
{
	switch (e) {
	case PK_JWT_OK:
		return "ok";
	case PK_JWT_MISSING_AUTHORIZATION:
		return "missing authorization";
	case PK_JWT_INVALID_AUTHORIZATION:
		return "invalid authorization";
	case PK_JWT_UNSUPPORTED_AUTH_TYPE:
		return "unsupported auth type";
	case PK_JWT_INVALID_TOKEN:
		return "invalid token";
	case PK_JWT_EXPIRED_TOKEN:
		return "expired token";
	case PK_JWT_ENDPOINT_NOT_PERMITTED:
		return "endpoint not permitted";
	case PK_JWT_INTERNAL_ERROR:
		return "internal error";
	}
	return "unknown error";
}

/* ---- keys ---- */

static jwt_alg_t pk__jwt_ec_alg(EVP_PKEY *pkey)
{
	char group[64];

	if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL) != 1)
		return JWT_ALG_INVAL;
	if (!strcmp(group, "prime256v1") || !strcmp(group, "P-256"))
		return JWT_ALG_ES256;
	if (!strcmp(group, "secp384r1") || !strcmp(group, "P-384"))
		return JWT_ALG_ES384;
	if (!strcmp(group, "secp521r1") || !strcmp(group, "P-521"))
		return JWT_ALG_ES512;
	return JWT_ALG_INVAL;
}

/* Reads the first PEM block of pem as a public key: SubjectPublicKeyInfo ("PUBLIC KEY"),
 * PKCS#1 ("RSA PUBLIC KEY") or an X.509 certificate, the forms golang-jwt reads. A private
 * key is refused: it does not belong in a verifier's configuration. */
static EVP_PKEY *pk__jwt_read_pubkey(const char *pem)
{
	char *name = NULL, *header = NULL;
	unsigned char *data = NULL;
	const unsigned char *p;
	EVP_PKEY *pkey = NULL;
	X509 *cert;
	long len = 0;
	BIO *bio;

	bio = BIO_new_mem_buf(pem, -1);
	if (bio == NULL)
		return NULL;
	if (PEM_read_bio(bio, &name, &header, &data, &len) != 1)
		goto out;
	p = data;
	if (!strcmp(name, "PUBLIC KEY")) {
		pkey = d2i_PUBKEY(NULL, &p, len);
	} else if (!strcmp(name, "RSA PUBLIC KEY")) {
		pkey = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, len);
	} else if (!strcmp(name, "CERTIFICATE")) {
		cert = d2i_X509(NULL, &p, len);
		if (cert != NULL)
			pkey = X509_get_pubkey(cert);
		X509_free(cert);
	}
	if (pkey != NULL && p != data + len) { /* trailing DER bytes */
		EVP_PKEY_free(pkey);
		pkey = NULL;
	}
out:
	OPENSSL_free(name);
	OPENSSL_free(header);
	OPENSSL_free(data);
	BIO_free(bio);
	return pkey;
}

/* Copies what bio holds into a new NUL-terminated string. */
static char *pk__jwt_bio_string(BIO *bio, size_t *len)
{
	char *data, *s;
	long n;

	n = BIO_get_mem_data(bio, &data);
	if (n <= 0)
		return NULL;
	s = malloc((size_t)n + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, data, (size_t)n);
	s[n] = '\0';
	*len = (size_t)n;
	return s;
}

static int pk__jwt_pubkey_pem(EVP_PKEY *pkey, char **pem, size_t *len)
{
	BIO *bio;
	int rc = -ENOMEM;

	bio = BIO_new(BIO_s_mem());
	if (bio == NULL)
		return -ENOMEM;
	if (PEM_write_bio_PUBKEY(bio, pkey) == 1) {
		*pem = pk__jwt_bio_string(bio, len);
		if (*pem != NULL)
			rc = 0;
	}
	BIO_free(bio);
	return rc;
}

/* Checks pem is an RSA (want_rsa) or EC public key we can use and stores its SPKI form.
 * For EC keys, *ec_alg gets the one ES algorithm matching the curve. */
static int pk__jwt_load_pubkey(const char *pem, bool want_rsa, char **out, size_t *len,
                               jwt_alg_t *ec_alg, const char **why)
{
	EVP_PKEY *pkey;
	int rc = -EINVAL;

	pkey = pk__jwt_read_pubkey(pem);
	if (pkey == NULL) {
		*why = want_rsa ? "rsa_public_key is not a readable PEM public key"
		                : "ecdsa_public_key is not a readable PEM public key";
		goto out;
	}
	if (want_rsa && EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
		*why = "rsa_public_key is not an RSA key";
		goto out;
	}
	if (want_rsa && EVP_PKEY_get_bits(pkey) < 1024) {
		*why = "rsa_public_key is shorter than 1024 bits";
		goto out;
	}
	if (!want_rsa && EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC) {
		*why = "ecdsa_public_key is not an EC key";
		goto out;
	}
	if (!want_rsa) {
		*ec_alg = pk__jwt_ec_alg(pkey);
		if (*ec_alg == JWT_ALG_INVAL) {
			*why = "ecdsa_public_key is not on P-256, P-384 or P-521";
			goto out;
		}
	}
	rc = pk__jwt_pubkey_pem(pkey, out, len);
	if (rc < 0)
		*why = "out of memory";
out:
	EVP_PKEY_free(pkey);
	ERR_clear_error();
	return rc;
}

static bool pk__jwt_set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

static int pk__jwt_copy_opt(const char *s, char **out)
{
	*out = NULL;
	if (!pk__jwt_set(s))
		return 0;
	*out = strdup(s);
	return *out == NULL ? -ENOMEM : 0;
}

static int pk__jwt_verifier_keys(struct pk_jwt_verifier *v, const struct pk_jwt_config *cfg,
                                 const char **why)
{
	jwt_alg_t ec_alg = JWT_ALG_INVAL;
	int rc;

	if (pk__jwt_set(cfg->hmac_secret_key)) {
		v->hmac_len = strlen(cfg->hmac_secret_key);
		if (v->hmac_len > PK_JWT_MAX_SECRET) {
			*why = "hmac_secret_key is too long";
			return -EINVAL;
		}
		v->hmac = (unsigned char *)strdup(cfg->hmac_secret_key);
		if (v->hmac == NULL)
			return -ENOMEM;
		v->allowed |= PK__JWT_HS_ALGS;
	}
	if (pk__jwt_set(cfg->rsa_public_key)) {
		rc = pk__jwt_load_pubkey(cfg->rsa_public_key, true, &v->rsa_pem, &v->rsa_len, NULL,
		                         why);
		if (rc < 0)
			return rc;
		v->allowed |= PK__JWT_RS_ALGS;
	}
	if (pk__jwt_set(cfg->ecdsa_public_key)) {
		rc = pk__jwt_load_pubkey(cfg->ecdsa_public_key, false, &v->ec_pem, &v->ec_len,
		                         &ec_alg, why);
		if (rc < 0)
			return rc;
		v->allowed |= PK__JWT_ALG_BIT(ec_alg);
	}
	if (v->allowed == 0) {
		*why = "no verification key is set";
		return -EINVAL;
	}
	return 0;
}

int pk_jwt_verifier_new(const struct pk_jwt_config *cfg, struct pk_jwt_verifier **out,
                        const char **why)
{
	struct pk_jwt_verifier *v;
	const char *dummy;
	int rc;

	if (why == NULL)
		why = &dummy;
	*why = "out of memory";
	if (cfg->leeway_seconds > PK_JWT_MAX_LEEWAY) {
		*why = "leeway is over an hour";
		return -EINVAL;
	}
	v = calloc(1, sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	v->leeway = cfg->leeway_seconds;
	rc = pk__jwt_verifier_keys(v, cfg, why);
	if (rc < 0)
		goto err_free;
	*why = "out of memory";
	rc = pk__jwt_copy_opt(cfg->audience, &v->audience);
	if (rc == 0)
		rc = pk__jwt_copy_opt(cfg->issuer, &v->issuer);
	if (rc < 0)
		goto err_free;
	*out = v;
	return 0;

err_free:
	pk_jwt_verifier_free(v);
	return rc;
}

void pk_jwt_verifier_free(struct pk_jwt_verifier *v)
{
	if (v == NULL)
		return;
	if (v->hmac != NULL)
		OPENSSL_cleanse(v->hmac, v->hmac_len);
	free(v->hmac);
	free(v->rsa_pem);
	free(v->ec_pem);
	free(v->audience);
	free(v->issuer);
	free(v);
}

/* ---- token shape ---- */

static int pk__b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/* Strict unpadded base64url (RFC 7515 section 2): no padding, no whitespace, and the unused
 * low bits of the last character must be zero. (A signature covers the encoded text, so a
 * re-encoded segment fails verification anyway; this just refuses the odd form early.) */
static int pk__b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap,
                             size_t *outlen)
{
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t i, o = 0;
	int val;

	if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		val = pk__b64url_value((unsigned char)s[i]);
		if (val < 0)
			return -EINVAL;
		acc = (acc << 6) | (uint32_t)val;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	if (acc != 0)
		return -EINVAL;
	*outlen = o;
	return 0;
}

struct pk__jwt_parts {
	const char *seg[3];
	size_t len[3];
};

/* Splits header.payload.signature; every segment non-empty. The character set is checked
 * by the decoder (header, payload) and here (signature, which libjwt decodes itself). */
static int pk__jwt_split(const char *tok, size_t len, struct pk__jwt_parts *p)
{
	const char *dot1, *dot2;
	size_t i;

	dot1 = memchr(tok, '.', len);
	if (dot1 == NULL)
		return -EINVAL;
	dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok));
	if (dot2 == NULL)
		return -EINVAL;
	p->seg[0] = tok;
	p->len[0] = (size_t)(dot1 - tok);
	p->seg[1] = dot1 + 1;
	p->len[1] = (size_t)(dot2 - dot1 - 1);
	p->seg[2] = dot2 + 1;
	p->len[2] = len - (size_t)(dot2 + 1 - tok);
	for (i = 0; i < 3; i++)
		if (p->len[i] == 0)
			return -EINVAL;
	for (i = 0; i < p->len[2]; i++)
		if (pk__b64url_value((unsigned char)p->seg[2][i]) < 0)
			return -EINVAL;
	return p->len[2] % 4 == 1 ? -EINVAL : 0;
}

/* Decodes one segment as a JSON object. Duplicate names are refused so that we and libjwt
 * cannot read different values from one document. */
static json_t *pk__jwt_segment_object(const char *seg, size_t len)
{
	unsigned char buf[PK__JWT_MAX_SEGMENT];
	size_t n;
	json_t *js;

	if (pk__b64url_decode(seg, len, buf, sizeof(buf), &n) < 0)
		return NULL;
	js = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
	if (js != NULL && !json_is_object(js)) {
		json_decref(js);
		js = NULL;
	}
	return js;
}

/* ---- header ---- */

static jwt_alg_t pk__jwt_alg_by_name(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(pk__jwt_algs) / sizeof(pk__jwt_algs[0]); i++)
		if (!strcmp(pk__jwt_algs[i].name, name))
			return pk__jwt_algs[i].alg;
	return JWT_ALG_INVAL;
}

/* Pins the algorithm before libjwt sees the token: returns it, or JWT_ALG_INVAL when the
 * header must be rejected. */
static jwt_alg_t pk__jwt_check_header(const struct pk_jwt_verifier *v, json_t *hdr)
{
	json_t *alg, *typ;
	jwt_alg_t a;
	size_t i;

	for (i = 0; i < sizeof(pk__jwt_forbidden_header) / sizeof(pk__jwt_forbidden_header[0]); i++)
		if (json_object_get(hdr, pk__jwt_forbidden_header[i]) != NULL)
			return JWT_ALG_INVAL;
	/* libjwt 1.10 refuses any other "typ"; checked here so the rule is ours. */
	typ = json_object_get(hdr, "typ");
	if (typ != NULL && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT")))
		return JWT_ALG_INVAL;
	alg = json_object_get(hdr, "alg");
	if (!json_is_string(alg))
		return JWT_ALG_INVAL;
	a = pk__jwt_alg_by_name(json_string_value(alg));
	if (a == JWT_ALG_INVAL || !(v->allowed & PK__JWT_ALG_BIT(a)))
		return JWT_ALG_INVAL;
	return a;
}

/* ---- signature ---- */

static enum pk_jwt_error pk__jwt_check_signature(const struct pk_jwt_verifier *v, const char *tok,
                                                 size_t len, jwt_alg_t alg)
{
	char buf[PK_JWT_MAX_TOKEN + 1];
	const unsigned char *key;
	jwt_t *jwt = NULL;
	size_t key_len;
	int rc;

	if (PK__JWT_ALG_BIT(alg) & PK__JWT_HS_ALGS) {
		key = v->hmac;
		key_len = v->hmac_len;
	} else if (PK__JWT_ALG_BIT(alg) & PK__JWT_RS_ALGS) {
		key = (const unsigned char *)v->rsa_pem;
		key_len = v->rsa_len;
	} else {
		key = (const unsigned char *)v->ec_pem;
		key_len = v->ec_len;
	}
	/* Given no key, libjwt 1.10 skips the signature check and calls the token "none". */
	if (key == NULL || key_len == 0)
		return PK_JWT_INVALID_TOKEN;
	memcpy(buf, tok, len);
	buf[len] = '\0';
	rc = jwt_decode(&jwt, buf, key, (int)key_len);
	/* libjwt must have used the algorithm we pinned, or the pin meant nothing. */
	if (rc == 0 && jwt_get_alg(jwt) != alg)
		rc = EINVAL;
	jwt_free(jwt);
	/* A failed verify leaves OpenSSL errors queued; they must not surface later in an
	 * unrelated TLS call on this thread. */
	ERR_clear_error();
	if (rc == ENOMEM)
		return PK_JWT_INTERNAL_ERROR;
	return rc == 0 ? PK_JWT_OK : PK_JWT_INVALID_TOKEN;
}

/* ---- claims ---- */

/* Reads a NumericDate claim: absent or null = not present; integer or finite real (rounded
 * towards the stricter side) = present. Returns -1 for any other JSON type. */
static int pk__jwt_time(json_t *claims, const char *name, bool round_up, bool *present,
                        int64_t *out)
{
	json_t *j = json_object_get(claims, name);
	double d;

	*present = false;
	if (j == NULL || json_is_null(j))
		return 0;
	if (json_is_integer(j)) {
		*out = json_integer_value(j);
	} else if (json_is_real(j)) {
		d = json_real_value(j);
		if (!(d > -1e15 && d < 1e15)) /* ~31 million years: beyond any sane clock */
			return -1;
		*out = (int64_t)(round_up ? ceil(d) : floor(d));
	} else {
		return -1;
	}
	*present = true;
	return 0;
}

static int pk__jwt_opt_string(json_t *claims, const char *name, const char **out)
{
	json_t *j = json_object_get(claims, name);

	*out = NULL;
	if (j == NULL || json_is_null(j))
		return 0;
	if (!json_is_string(j))
		return -1;
	*out = json_string_value(j);
	return 0;
}

/* "aud": string or array of strings. *match tells whether want is among them. */
static int pk__jwt_audience(json_t *claims, const char *want, bool *match)
{
	json_t *aud = json_object_get(claims, "aud"), *item;
	size_t i;

	*match = false;
	if (aud == NULL || json_is_null(aud))
		return 0;
	if (json_is_string(aud)) {
		*match = want != NULL && !strcmp(json_string_value(aud), want);
		return 0;
	}
	if (!json_is_array(aud))
		return -1;
	json_array_foreach(aud, i, item)
	{
		if (!json_is_string(item))
			return -1;
		if (want != NULL && !strcmp(json_string_value(item), want))
			*match = true;
	}
	return 0;
}

/* "piko": {"endpoints": [strings]}; *list is NULL when there is no list. */
static int pk__jwt_endpoint_list(json_t *claims, json_t **list)
{
	json_t *piko = json_object_get(claims, "piko"), *eps, *item;
	size_t i;

	*list = NULL;
	if (piko == NULL || json_is_null(piko))
		return 0;
	if (!json_is_object(piko))
		return -1;
	eps = json_object_get(piko, "endpoints");
	if (eps == NULL || json_is_null(eps))
		return 0;
	if (!json_is_array(eps))
		return -1;
	json_array_foreach(eps, i, item)
	{
		if (!json_is_string(item))
			return -1;
	}
	*list = eps;
	return 0;
}

struct pk__jwt_registered {
	bool has_exp, has_nbf, aud_match;
	int64_t exp, nbf;
	const char *iss;
	json_t *endpoints;
};

/* Type checks every claim Piko's parser decodes; a wrong type is a malformed token there. */
static int pk__jwt_read_claims(const struct pk_jwt_verifier *v, json_t *c,
                               struct pk__jwt_registered *r)
{
	bool has_iat;
	int64_t iat;
	const char *sub, *jti;

	if (pk__jwt_time(c, "exp", false, &r->has_exp, &r->exp) < 0 ||
	    pk__jwt_time(c, "nbf", true, &r->has_nbf, &r->nbf) < 0 ||
	    pk__jwt_time(c, "iat", false, &has_iat, &iat) < 0 ||
	    pk__jwt_opt_string(c, "iss", &r->iss) < 0 || pk__jwt_opt_string(c, "sub", &sub) < 0 ||
	    pk__jwt_opt_string(c, "jti", &jti) < 0 ||
	    pk__jwt_audience(c, v->audience, &r->aud_match) < 0 ||
	    pk__jwt_endpoint_list(c, &r->endpoints) < 0)
		return -1;
	return 0;
}

static bool pk__jwt_expired(int64_t now, int64_t exp, int64_t leeway)
{
	int64_t limit;

	if (__builtin_add_overflow(exp, leeway, &limit))
		return false;
	return !(now < limit);
}

static bool pk__jwt_not_yet_valid(int64_t now, int64_t nbf, int64_t leeway)
{
	int64_t limit;

	if (__builtin_sub_overflow(nbf, leeway, &limit))
		return false;
	return now < limit;
}

static enum pk_jwt_error pk__jwt_check_claims(const struct pk_jwt_verifier *v,
                                              const struct pk__jwt_registered *r, int64_t now)
{
	/* Piko reports "expired token" whenever expiry is among the failed checks. */
	if (r->has_exp && pk__jwt_expired(now, r->exp, v->leeway))
		return PK_JWT_EXPIRED_TOKEN;
	if (r->has_nbf && pk__jwt_not_yet_valid(now, r->nbf, v->leeway))
		return PK_JWT_INVALID_TOKEN;
	if (v->audience != NULL && !r->aud_match)
		return PK_JWT_INVALID_TOKEN;
	if (v->issuer != NULL && (r->iss == NULL || strcmp(r->iss, v->issuer)))
		return PK_JWT_INVALID_TOKEN;
	return PK_JWT_OK;
}

/* Copies the endpoint names into one allocation: the pointer array, then the strings. */
static int pk__jwt_copy_endpoints(json_t *list, struct pk_jwt_claims *c)
{
	size_t i, n = json_array_size(list), bytes = 0, l;
	json_t *item;
	char *p;

	if (n == 0)
		return 0;
	json_array_foreach(list, i, item)
	{
		bytes += json_string_length(item) + 1;
	}
	c->endpoints = malloc(n * sizeof(char *) + bytes);
	if (c->endpoints == NULL)
		return -ENOMEM;
	p = (char *)(c->endpoints + n);
	json_array_foreach(list, i, item)
	{
		l = json_string_length(item);
		memcpy(p, json_string_value(item), l + 1);
		c->endpoints[i] = p;
		p += l + 1;
	}
	c->n_endpoints = n;
	return 0;
}

/* ---- verify ---- */

static enum pk_jwt_error pk__jwt_verify_parsed(const struct pk_jwt_verifier *v, const char *token,
                                               size_t len, int64_t now, json_t *hdr,
                                               json_t *payload, struct pk_jwt_claims *claims)
{
	struct pk__jwt_registered r;
	enum pk_jwt_error e;
	jwt_alg_t alg;

	alg = pk__jwt_check_header(v, hdr);
	if (alg == JWT_ALG_INVAL)
		return PK_JWT_INVALID_TOKEN;
	if (pk__jwt_read_claims(v, payload, &r) < 0)
		return PK_JWT_INVALID_TOKEN;
	e = pk__jwt_check_signature(v, token, len, alg);
	if (e != PK_JWT_OK)
		return e;
	e = pk__jwt_check_claims(v, &r, now);
	if (e != PK_JWT_OK || claims == NULL)
		return e;
	claims->exp = r.has_exp ? r.exp : 0;
	if (r.endpoints != NULL && pk__jwt_copy_endpoints(r.endpoints, claims) < 0)
		return PK_JWT_INTERNAL_ERROR;
	return PK_JWT_OK;
}

enum pk_jwt_error pk_jwt_verify(const struct pk_jwt_verifier *v, const char *token, size_t len,
                                int64_t now, struct pk_jwt_claims *claims)
{
	struct pk__jwt_parts parts;
	json_t *hdr = NULL, *payload = NULL;
	enum pk_jwt_error e = PK_JWT_INVALID_TOKEN;

	if (claims != NULL)
		memset(claims, 0, sizeof(*claims));
	if (token == NULL || len == 0 || len > PK_JWT_MAX_TOKEN)
		return PK_JWT_INVALID_TOKEN;
	if (pk__jwt_split(token, len, &parts) < 0)
		return PK_JWT_INVALID_TOKEN;
	hdr = pk__jwt_segment_object(parts.seg[0], parts.len[0]);
	if (hdr == NULL)
		goto out;
	payload = pk__jwt_segment_object(parts.seg[1], parts.len[1]);
	if (payload == NULL)
		goto out;
	e = pk__jwt_verify_parsed(v, token, len, now, hdr, payload, claims);
out:
	json_decref(hdr);
	json_decref(payload);
	if (e != PK_JWT_OK)
		pk_jwt_claims_free(claims);
	return e;
}

void pk_jwt_claims_free(struct pk_jwt_claims *c)
{
	if (c == NULL)
		return;
	free(c->endpoints);
	memset(c, 0, sizeof(*c));
}

bool pk_jwt_endpoint_permitted(const struct pk_jwt_claims *c, const char *endpoint)
{
	size_t i;

	if (c->n_endpoints == 0)
		return true;
	for (i = 0; i < c->n_endpoints; i++)
		if (!strcmp(c->endpoints[i], endpoint))
			return true;
	return false;
}

enum pk_jwt_error pk_jwt_bearer_token(const char *authorization, const char *x_piko_authorization,
                                      const char **token, size_t *len)
{
	const char *h = x_piko_authorization, *sp;

	/* Go's Header.Get gives "" for an absent header, so an empty value falls through. */
	if (h == NULL || h[0] == '\0')
		h = authorization;
	if (h == NULL || h[0] == '\0')
		return PK_JWT_MISSING_AUTHORIZATION;
	sp = strchr(h, ' ');
	if (sp == NULL)
		return PK_JWT_INVALID_AUTHORIZATION;
	if (sp - h != 6 || strncasecmp(h, "Bearer", 6))
		return PK_JWT_UNSUPPORTED_AUTH_TYPE;
	*token = sp + 1;
	*len = strlen(sp + 1);
	return PK_JWT_OK;
}

enum pk_jwt_error pk_jwt_authenticate(const struct pk_jwt_verifier *v, const char *authorization,
                                      const char *x_piko_authorization, int64_t now,
                                      struct pk_jwt_claims *claims)
{
	enum pk_jwt_error e;
	const char *tok;
	size_t len;

	if (claims != NULL)
		memset(claims, 0, sizeof(*claims));
	e = pk_jwt_bearer_token(authorization, x_piko_authorization, &tok, &len);
	if (e != PK_JWT_OK)
		return e;
	return pk_jwt_verify(v, tok, len, now, claims);
}

/* ---- minting ---- */

/* Refuses encrypted keys instead of letting OpenSSL prompt on the terminal. */
static int pk__jwt_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* Reads a private key, checks its type (and curve), and re-encodes it as unencrypted
 * PKCS#8 PEM so libjwt reads exactly the key we checked. */
static int pk__jwt_load_private(const struct pk_jwt_mint_params *p, jwt_alg_t *alg, char **pem,
                                size_t *len, const char **why)
{
	int want = p->kind == PK_JWT_KEY_RSA ? EVP_PKEY_RSA : EVP_PKEY_EC;
	EVP_PKEY *pkey = NULL;
	BIO *bio;
	int rc = -EINVAL;

	*why = "out of memory";
	bio = BIO_new_mem_buf(p->key, -1);
	if (bio == NULL)
		return -ENOMEM;
	pkey = PEM_read_bio_PrivateKey(bio, NULL, pk__jwt_no_passphrase, NULL);
	BIO_free(bio);
	*why = "key is not a readable, unencrypted PEM private key";
	if (pkey == NULL)
		goto out;
	*why = p->kind == PK_JWT_KEY_RSA ? "key is not an RSA private key"
	                                 : "key is not an EC private key";
	if (EVP_PKEY_get_base_id(pkey) != want)
		goto out;
	*alg = JWT_ALG_RS256;
	if (p->kind == PK_JWT_KEY_ECDSA) {
		*why = "key is not on P-256, P-384 or P-521";
		*alg = pk__jwt_ec_alg(pkey);
		if (*alg == JWT_ALG_INVAL)
			goto out;
	}
	*why = "out of memory";
	rc = -ENOMEM;
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL)
		goto out;
	if (PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1) {
		*pem = pk__jwt_bio_string(bio, len);
		if (*pem != NULL)
			rc = 0;
	}
	BIO_free_all(bio); /* a mem BIO frees its buffer; the copy in *pem is ours */
out:
	EVP_PKEY_free(pkey);
	ERR_clear_error();
	return rc;
}

static int pk__jwt_set_str(json_t *obj, const char *name, const char *val)
{
	json_t *s = json_string(val);

	if (s == NULL)
		return -EINVAL; /* NULL for invalid UTF-8 (or no memory) */
	return json_object_set_new(obj, name, s) < 0 ? -ENOMEM : 0;
}

static int pk__jwt_mint_endpoints(json_t *obj, const struct pk_jwt_mint_params *p)
{
	json_t *piko, *list;
	size_t i;

	piko = json_object();
	list = json_array();
	if (piko == NULL || list == NULL || json_object_set_new(piko, "endpoints", list) < 0) {
		json_decref(piko);
		return -ENOMEM;
	}
	if (json_object_set_new(obj, "piko", piko) < 0)
		return -ENOMEM;
	for (i = 0; i < p->n_endpoints; i++) {
		json_t *s = json_string(p->endpoints[i]);

		if (s == NULL)
			return -EINVAL;
		if (json_array_append_new(list, s) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* The claims document as compact JSON (free()), or NULL with *rc set. */
static char *pk__jwt_mint_claims(const struct pk_jwt_mint_params *p, int *rc)
{
	json_t *obj = json_object();
	char *s = NULL;

	*rc = -ENOMEM;
	if (obj == NULL)
		return NULL;
	if (json_object_set_new(obj, "iat", json_integer(p->iat)) < 0)
		goto out;
	if (p->exp != 0 && json_object_set_new(obj, "exp", json_integer(p->exp)) < 0)
		goto out;
	if (pk__jwt_set(p->audience) && (*rc = pk__jwt_set_str(obj, "aud", p->audience)) < 0)
		goto out;
	if (pk__jwt_set(p->issuer) && (*rc = pk__jwt_set_str(obj, "iss", p->issuer)) < 0)
		goto out;
	if (p->n_endpoints > 0 && (*rc = pk__jwt_mint_endpoints(obj, p)) < 0)
		goto out;
	*rc = -ENOMEM;
	s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
	if (s != NULL)
		*rc = 0;
out:
	json_decref(obj);
	return s;
}

static int pk__jwt_mint_key(const struct pk_jwt_mint_params *p, jwt_alg_t *alg, char **key,
                            size_t *len, const char **why)
{
	if (p->key == NULL) {
		*why = "no key";
		return -EINVAL;
	}
	if (p->kind == PK_JWT_KEY_RSA || p->kind == PK_JWT_KEY_ECDSA)
		return pk__jwt_load_private(p, alg, key, len, why);
	*len = strlen(p->key);
	if (p->kind != PK_JWT_KEY_HMAC || *len == 0 || *len > PK_JWT_MAX_SECRET) {
		*why = "the HMAC secret is empty or too long";
		return -EINVAL;
	}
	*alg = JWT_ALG_HS256;
	*key = strdup(p->key);
	return *key == NULL ? -ENOMEM : 0;
}

/* Signs claims (JSON) with alg and key; *token as pk_jwt_mint. */
static int pk__jwt_sign(jwt_alg_t alg, const char *key, size_t key_len, const char *claims,
                        char **token, const char **why)
{
	jwt_t *jwt = NULL;
	char *s;
	int rc;

	*why = "out of memory";
	rc = -jwt_new(&jwt);
	if (rc < 0)
		return rc;
	rc = -jwt_add_grants_json(jwt, claims);
	if (rc == 0)
		rc = -jwt_set_alg(jwt, alg, (const unsigned char *)key, (int)key_len);
	if (rc < 0)
		goto out;
	s = jwt_encode_str(jwt);
	if (s == NULL) {
		rc = errno == ENOMEM ? -ENOMEM : -EINVAL;
		*why = "signing failed";
		goto out;
	}
	if (strlen(s) > PK_JWT_MAX_TOKEN) {
		free(s);
		rc = -EINVAL;
		*why = "the token would be longer than 8 KiB";
		goto out;
	}
	*token = s;
out:
	jwt_free(jwt);
	ERR_clear_error();
	return rc;
}

int pk_jwt_mint(const struct pk_jwt_mint_params *p, char **token, const char **why)
{
	jwt_alg_t alg = JWT_ALG_INVAL;
	char *key = NULL, *claims = NULL;
	size_t key_len = 0;
	const char *dummy;
	int rc;

	if (why == NULL)
		why = &dummy;
	if (p->iat < 0 || p->exp < 0) {
		*why = "iat and exp must not be negative";
		return -EINVAL;
	}
	rc = pk__jwt_mint_key(p, &alg, &key, &key_len, why);
	if (rc < 0)
		return rc;
	claims = pk__jwt_mint_claims(p, &rc);
	if (claims == NULL) {
		*why = rc == -EINVAL ? "a claim is not valid UTF-8" : "out of memory";
		goto out;
	}
	rc = pk__jwt_sign(alg, key, key_len, claims, token, why);
out:
	if (key != NULL)
		OPENSSL_cleanse(key, key_len);
	free(key);
	free(claims);
	return rc;
}
