/* libFuzzer target for proto/jwt.
 *
 * Input modes (first byte):
 *   'C'  claims mode: the rest is "<header JSON>\n<payload JSON>". The harness encodes both
 *        and signs them with HS256 and the verifier's secret, so the fuzzer reaches the
 *        header rules and claim checks behind a valid signature.
 *   else token mode: the rest is a token, verified against a verifier with an HMAC secret,
 *        an RSA key and a P-256 key all configured (audience and issuer set too), and also
 *        fed through pk_jwt_authenticate as an Authorization header value.
 * Nothing may crash, leak, or read out of bounds; an accepted token must yield claims that
 * hold together. */
#include "proto/jwt.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-secret"

static const char rsa_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                              "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAv9zISVKvEtdSJ3rQnlYM\n"
                              "xwtT03zoNGSeH9vaaVMY6YkUYDKNrlJFb7wknHSPv/oJgQ3RsuPtlk+hqZU98qib\n"
                              "d4Mljg4cg6gEhtZFzMHyUjw9RVsIAwkdm0b9JziqEJMeBwkg06wZymuplE5VHA9Y\n"
                              "cLZwIwT1cvZIw9fkgC4hu9BfknXMqDEM0HTDIbOnREic9OT+lcYUY9c03uHHLrwE\n"
                              "cOYjC+cQl+QeWeRrVD83Pe1mwL0w2+NlQVLJjuu39H5I7W3p04ncQQNVIu3QZ895\n"
                              "br566rsofpV5CsjltjYR6HIjJwMKTKV4TztCaJ/JaTrnZVetqosasnOn2Rjg83lm\n"
                              "LwIDAQAB\n"
                              "-----END PUBLIC KEY-----\n";

static const char ec_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                             "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4Qm76KZ4pjY9VUlzyd4eXQ7u8Ivi\n"
                             "mYnwD87ypi9piI8UMX2JMD+bpP3gvAZaByX2VEnSK2KK1zhv02vQwC8eMA==\n"
                             "-----END PUBLIC KEY-----\n";

static struct pk_jwt_verifier *all_keys, *hmac_only;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct pk_jwt_config all = {.hmac_secret_key = SECRET,
	                            .rsa_public_key = rsa_pub,
	                            .ecdsa_public_key = ec_pub,
	                            .audience = "pikod",
	                            .issuer = "https://issuer.example",
	                            .leeway_seconds = 5};
	struct pk_jwt_config hs = {.hmac_secret_key = SECRET};

	if (pk_jwt_verifier_new(&all, &all_keys, NULL) < 0 ||
	    pk_jwt_verifier_new(&hs, &hmac_only, NULL) < 0)
		abort();
	return 0;
}

static void check_claims(enum pk_jwt_error e, struct pk_jwt_claims *c)
{
	size_t i;

	if (e != PK_JWT_OK) {
		if (c->endpoints != NULL || c->n_endpoints != 0 || c->exp != 0)
			abort(); /* claims must be zeroed on failure */
		return;
	}
	if ((c->n_endpoints == 0) != (c->endpoints == NULL))
		abort();
	for (i = 0; i < c->n_endpoints; i++)
		if (!pk_jwt_endpoint_permitted(c, c->endpoints[i]))
			abort();
	pk_jwt_claims_free(c);
}

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t i, o = 0;
	uint32_t v;

	for (i = 0; i + 2 < n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (n - i == 1) {
		v = (uint32_t)in[i] << 16;
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
	} else if (n - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
	}
	return o;
}

static void claims_mode(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	struct pk_jwt_claims c;
	enum pk_jwt_error e;
	size_t hlen, plen, n;
	char *tok;

	if (nl == NULL)
		return;
	hlen = (size_t)(nl - data);
	plen = size - hlen - 1;
	tok = malloc((hlen + plen) / 3 * 4 + 8 + 2 + 64);
	if (tok == NULL)
		return;
	n = b64url(data, hlen, tok);
	tok[n++] = '.';
	n += b64url(nl + 1, plen, tok + n);
	HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)tok, n, mac,
	     &mac_len);
	tok[n++] = '.';
	n += b64url(mac, mac_len, tok + n);
	e = pk_jwt_verify(all_keys, tok, n, 1700000000, &c);
	check_claims(e, &c);
	e = pk_jwt_verify(hmac_only, tok, n, 1700000000, &c);
	check_claims(e, &c);
	free(tok);
}

static void token_mode(const uint8_t *data, size_t size)
{
	struct pk_jwt_claims c;
	enum pk_jwt_error e;
	char *hdr;

	e = pk_jwt_verify(all_keys, (const char *)data, size, 1700000000, &c);
	check_claims(e, &c);
	hdr = malloc(size + 1);
	if (hdr == NULL)
		return;
	memcpy(hdr, data, size);
	hdr[size] = '\0';
	e = pk_jwt_authenticate(all_keys, hdr, NULL, 1700000000, &c);
	check_claims(e, &c);
	free(hdr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0 || size > 3 * PK_JWT_MAX_TOKEN)
		return 0;
	if (data[0] == 'C')
		claims_mode(data + 1, size - 1);
	else
		token_mode(data + 1, size - 1);
	return 0;
}
