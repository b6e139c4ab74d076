/* pikoctl's HTTP client: one request per connection over a blocking socket, for a
 * short-lived CLI talking to the admin API. No loop, no threads; every step (resolve,
 * connect, send, receive) is bounded by one overall deadline.
 *
 * Responses are parsed with proto/http1 (the same checks as the server side). Bodies
 * delimited by Content-Length or by the end of the connection are read, up to
 * PK_CTL_MAX_BODY bytes; a chunked body is refused (the admin API never sends one).
 *
 * Only http:// URLs: TLS to the admin port is not built in (pk_ctl_url_parse says so).
 */
#ifndef PK_PIKOCTL_HTTP_H
#define PK_PIKOCTL_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define PK_CTL_MAX_BODY (16u << 20)
#define PK_CTL_ERR_MAX  512

struct pk_ctl_url {
	char host[256]; /* without brackets for IPv6 literals */
	char port[8];
	char base_path[512]; /* path prefix from the URL, without a trailing '/' ("" if none) */
};

/* Parses "http://host[:port][/prefix]" (port default 80). Returns 0, or -EINVAL with a
 * message in err: not http (https is named as unsupported), missing host, bad port,
 * userinfo, query or fragment in the URL, or too long. */
int pk_ctl_url_parse(const char *url, struct pk_ctl_url *out, char err[PK_CTL_ERR_MAX]);

struct pk_ctl_response {
	unsigned status;
	char content_type[128]; /* "" when absent */
	char *body;             /* NUL-terminated (malloc'd); free with pk_ctl_response_free */
	size_t body_len;
};

/* Sends `method path` (path already holds any query) with Host, optional
 * "Authorization: Bearer <token>" (token may be NULL), Content-Length: 0 for POST, and
 * Connection: close; reads the whole response within timeout_ms. Returns 0 and fills
 * *resp (any status), or a negative errno with a one-line cause in err:
 *   -ECONNREFUSED "connection refused", -ETIMEDOUT, -EHOSTUNREACH/-ENETUNREACH, -ENOENT
 *   (name did not resolve), -EPROTO (malformed or chunked response), -EFBIG (body over
 *   PK_CTL_MAX_BODY), -ECONNRESET / -EPIPE (closed before a full response), -ENOMEM. */
int pk_ctl_http_request(const struct pk_ctl_url *url, const char *method, const char *path,
                        const char *token, uint64_t timeout_ms, struct pk_ctl_response *resp,
                        char err[PK_CTL_ERR_MAX]);

/* Frees resp->body (and zeroes resp). NULL is fine. */
void pk_ctl_response_free(struct pk_ctl_response *resp);

#endif
