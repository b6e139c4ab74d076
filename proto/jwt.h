/* JWT verification and minting for Piko-compatible auth (PROTOCOL.md sections 5 and 6).
 *
 * Built on libjwt 1.10 (signatures) and jansson (JSON). libjwt takes the algorithm from the
 * token header and validates no claims, so this module does the rest itself:
 *
 *   - the token is at most PK_JWT_MAX_TOKEN bytes of base64url and two dots; each segment is
 *     strict, unpadded base64url with zero trailing bits;
 *   - the header is decoded here first; its "alg" must be in the verifier's allowed set (the
 *     configured key types: HS256/384/512 for the HMAC secret, RS256/384/512 for the RSA key,
 *     and the one ES algorithm that matches the ECDSA key's curve: P-256 ES256, P-384 ES384,
 *     P-521 ES512), and only then is the signature checked, with that family's key. So
 *     "alg":"none" and algorithm confusion (an HS token keyed with a public key PEM) fail;
 *   - header-supplied keys ("jwk", "jku", "x5u", "x5c") and "crit" reject the token; "kid" is
 *     ignored. "typ", when present, must be "JWT" (any case): libjwt refuses anything else;
 *   - duplicate JSON member names, \u0000 in strings and invalid UTF-8 reject the token;
 *   - claims are checked like Piko's golang-jwt v5 parser: "exp" (now < exp + leeway), "nbf"
 *     (now >= nbf - leeway), "aud" (string or array of strings; must contain the configured
 *     audience), "iss" (must equal the configured issuer). Registered claims of the wrong JSON
 *     type reject the token. Fractional times are floored (exp) or rounded up (nbf).
 *     An expired token with a valid signature is "expired token" even when another claim is
 *     also wrong; a bad signature is always "invalid token".
 *   - "piko": {"endpoints": [...]} (array of strings) limits the endpoints; missing, null or
 *     empty = all endpoints.
 *
 * Nothing here does I/O or keeps global state; a verifier is read-only after creation and may
 * be shared by everything in one process.
 */
#ifndef PK_JWT_H
#define PK_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longer tokens are "invalid token" without being decoded. */
#define PK_JWT_MAX_TOKEN 8192
/* Largest leeway pk_jwt_verifier_new accepts, in seconds. */
#define PK_JWT_MAX_LEEWAY 3600
/* Largest HMAC secret accepted (verifying and minting), in bytes. */
#define PK_JWT_MAX_SECRET 4096

/* Auth outcomes. Every value but PK_JWT_OK and PK_JWT_INTERNAL_ERROR is a 401 whose body
 * is {"error":"<pk_jwt_error_str()>"}. PK_JWT_INTERNAL_ERROR (out of memory) is a 500, as
 * Piko answers an unexpected verifier error. */
enum pk_jwt_error {
	PK_JWT_OK = 0,
	PK_JWT_MISSING_AUTHORIZATION,  /* "missing authorization" */
	PK_JWT_INVALID_AUTHORIZATION,  /* "invalid authorization" */
	PK_JWT_UNSUPPORTED_AUTH_TYPE,  /* "unsupported auth type" */
	PK_JWT_INVALID_TOKEN,          /* "invalid token" */
	PK_JWT_EXPIRED_TOKEN,          /* "expired token" */
	PK_JWT_ENDPOINT_NOT_PERMITTED, /* "endpoint not permitted" */
	PK_JWT_INTERNAL_ERROR,         /* "internal error" */
};

/* Piko's message for e (a static string); "unknown error" for a value outside the enum. */
const char *pk_jwt_error_str(enum pk_jwt_error e);

/* Verifier configuration: the <port>.auth.* keys. A NULL or empty string means "not set".
 * At least one key must be set (with none, auth is disabled and no verifier is created). */
struct pk_jwt_config {
	const char *hmac_secret_key;  /* shared secret, used as raw bytes */
	const char *rsa_public_key;   /* PEM: PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE */
	const char *ecdsa_public_key; /* PEM: PUBLIC KEY or CERTIFICATE; P-256, P-384 or P-521 */
	const char *audience;         /* required member of "aud" */
	const char *issuer;           /* required value of "iss" */
	unsigned leeway_seconds;      /* clock skew allowed on exp/nbf; 0 (default) to 3600 */
};

struct pk_jwt_verifier;

/* Creates a verifier from cfg; the strings are copied (cfg may be freed afterwards).
 * Keys are parsed and checked here, so a bad key is a configuration error, not a 401.
 * On success returns 0 and sets *out (free with pk_jwt_verifier_free). On failure returns
 * -EINVAL (no key set, unreadable PEM, wrong key type, unsupported curve, RSA key under 1024
 * bits, secret over PK_JWT_MAX_SECRET, leeway over PK_JWT_MAX_LEEWAY) or -ENOMEM, leaves *out
 * untouched, and if why is not NULL points *why at a static sentence naming the problem. */
int pk_jwt_verifier_new(const struct pk_jwt_config *cfg, struct pk_jwt_verifier **out,
                        const char **why);

/* Frees v (the HMAC secret is wiped). NULL is a no-op. */
void pk_jwt_verifier_free(struct pk_jwt_verifier *v);

/* What a verified token grants. Owned by the caller: release with pk_jwt_claims_free. */
struct pk_jwt_claims {
	int64_t exp;        /* "exp" in seconds since the epoch, floored; 0 = no expiry */
	size_t n_endpoints; /* 0 = every endpoint is permitted */
	char **endpoints;   /* n_endpoints NUL-terminated names, in token order */
};

/* Verifies token (len bytes, need not be NUL-terminated) at time now (seconds since the
 * epoch). Returns PK_JWT_OK and fills *claims (which must then be freed), or
 * PK_JWT_INVALID_TOKEN / PK_JWT_EXPIRED_TOKEN / PK_JWT_INTERNAL_ERROR with *claims zeroed
 * (freeing it is then harmless). claims may be NULL when only the verdict matters. */
enum pk_jwt_error pk_jwt_verify(const struct pk_jwt_verifier *v, const char *token, size_t len,
                                int64_t now, struct pk_jwt_claims *claims);

/* Releases what pk_jwt_verify stored in c and zeroes it. NULL is a no-op. */
void pk_jwt_claims_free(struct pk_jwt_claims *c);

/* Whether c permits endpoint (NUL-terminated): true when c lists no endpoints, otherwise
 * only for an exact, case-sensitive match. */
bool pk_jwt_endpoint_permitted(const struct pk_jwt_claims *c, const char *endpoint);

/* Extracts the bearer token the way Piko does from the raw header values (either may be
 * NULL for "absent"; the HTTP layer has already trimmed surrounding whitespace):
 *   - x-piko-authorization wins when it is present and non-empty, else Authorization;
 *   - neither (or both empty): PK_JWT_MISSING_AUTHORIZATION;
 *   - no space in the value ("Bearer", "abc"): PK_JWT_INVALID_AUTHORIZATION;
 *   - the part before the first space is not "Bearer": PK_JWT_UNSUPPORTED_AUTH_TYPE. The
 *     scheme is compared case-insensitively (RFC 7235 section 2.1); Piko compares exactly.
 * On PK_JWT_OK, *token and *len are the bytes after the first space, verbatim (possibly
 * empty; pk_jwt_verify then says "invalid token"); they point into the header value. */
enum pk_jwt_error pk_jwt_bearer_token(const char *authorization, const char *x_piko_authorization,
                                      const char **token, size_t *len);

/* pk_jwt_bearer_token followed by pk_jwt_verify; same results and ownership. */
enum pk_jwt_error pk_jwt_authenticate(const struct pk_jwt_verifier *v, const char *authorization,
                                      const char *x_piko_authorization, int64_t now,
                                      struct pk_jwt_claims *claims);

/* Token minting (pikoctl token create). */
enum pk_jwt_key_kind {
	PK_JWT_KEY_HMAC,  /* key = shared secret: HS256 */
	PK_JWT_KEY_RSA,   /* key = RSA private key PEM: RS256 */
	PK_JWT_KEY_ECDSA, /* key = EC private key PEM: ES256 (P-256), ES384 (P-384), ES512 (P-521)
	                   */
};

struct pk_jwt_mint_params {
	enum pk_jwt_key_kind kind;
	const char *key;              /* NUL-terminated; unencrypted PEM for RSA/ECDSA */
	int64_t iat;                  /* "iat", seconds since the epoch */
	int64_t exp;                  /* "exp"; 0 = the token never expires */
	const char *audience;         /* "aud" when non-NULL and non-empty */
	const char *issuer;           /* "iss" when non-NULL and non-empty */
	const char *const *endpoints; /* "piko": {"endpoints": [...]} when n_endpoints > 0 */
	size_t n_endpoints;
};

/* Signs the claims {exp?, iat, aud?, iss?, piko.endpoints?} with header {"alg","typ":"JWT"}.
 * On success returns 0 and sets *token to a NUL-terminated string the caller frees with
 * free(). Returns -EINVAL (empty or oversize secret, unreadable or encrypted PEM, key of the
 * wrong type or curve, endpoint not valid UTF-8, exp < 0, token over PK_JWT_MAX_TOKEN) or
 * -ENOMEM; *token is then untouched and, when why is not NULL, *why names the problem. */
int pk_jwt_mint(const struct pk_jwt_mint_params *p, char **token, const char **why);

#endif
