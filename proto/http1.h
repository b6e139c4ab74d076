/* HTTP/1.1 message heads and body framing for a reverse proxy. Pure: bytes in, results
 * out; no sockets, no loop. Shared by pikod (proxy, upstream and admin ports), piko and
 * the tests.
 *
 * Parsing a head
 *   struct pk_http1_parser p;
 *   pk_http1_parser_init(&p, PK_HTTP1_REQUEST, NULL);
 *   on each read of n bytes at d:
 *       size_t used;
 *       int r = pk_http1_parser_feed(&p, d, n, &used);
 *       r == 0: every byte was head, read more.
 *       r == 1: the head is complete. d[used..n) are bytes past the head (body or the
 *               next pipelined message): keep them. The raw head is pk_http1_raw_head().
 *       r == -EPROTO: rejected; answer p.error_status with p.error_reason and close.
 *       r == -ENOMEM: out of memory.
 *   pk_http1_parser_reset(&p) before the next message on the connection;
 *   pk_http1_parser_free(&p) at the end.
 *
 * Ownership: the parser copies the head bytes into a buffer it owns (grown on demand up to
 * max_head_bytes). Every span (offset/length) is relative to that buffer; pointers from
 * pk_http1_ptr() and pk_http1_raw_head() stay valid until the next feed, reset or free.
 * Empty lines before the start line are skipped (RFC 9112 section 2.2) and are not part of
 * the raw head, though they count toward max_head_bytes and toward `used`.
 *
 * How parsing works: a byte scanner finds the end of the head across any split of the
 * input and rejects, on the raw bytes, what libhttp-parser 2.9.4 lets through (bare LF,
 * bare CR, NUL and other control bytes, obs-fold, whitespace before a colon, oversize).
 * The complete head is then run through libhttp-parser in one call (its own checks:
 * method, URL characters, header name tokens, Content-Length syntax and duplicates,
 * Content-Length with Transfer-Encoding, request Transfer-Encoding not ending in chunked),
 * and finally the semantic checks below run on the collected headers. Framing checks are
 * done by both libhttp-parser and this module, so a library change cannot open a hole.
 *
 * Request rules (each rejection sets error_status and a short error_reason)
 *   400  malformed start line, bare LF/CR, control bytes, obs-fold, whitespace before ':',
 *        bad or repeated Content-Length (even if equal, as libhttp-parser does),
 *        Content-Length with Transfer-Encoding, Transfer-Encoding not ending in chunked,
 *        Transfer-Encoding in an HTTP/1.0 request, missing Host in HTTP/1.1, more than one
 *        Host, Host with characters outside an authority, CONNECT, a target that is not
 *        origin-form ("/..."), "*" (OPTIONS only) or an absolute-form http/https URL whose
 *        authority equals the Host header byte for byte (case-insensitive) and carries no
 *        userinfo. That rule keeps the proxy from being an open proxy: absolute-form can
 *        only name the host the request already names.
 *   431  head longer than max_head_bytes, or more than max_headers header lines.
 *   501  unknown method; a transfer coding other than chunked (gzip, chunked).
 *   505  HTTP version other than 1.0 and 1.1.
 * Response rules: the same byte checks, 1.0/1.1 only, Content-Length rules as above.
 * A proxy answers a rejected upstream response with 502, not with error_status.
 */
#ifndef PK_HTTP1_H
#define PK_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PK_HTTP1_DEFAULT_MAX_HEAD    (64 * 1024)
#define PK_HTTP1_MAX_HEAD_CAP        (1024 * 1024)
#define PK_HTTP1_DEFAULT_MAX_HEADERS 100
#define PK_HTTP1_MAX_HEADERS_CAP     1024

enum pk_http1_type {
	PK_HTTP1_REQUEST = 0,
	PK_HTTP1_RESPONSE = 1,
};

/* How the body after a head is delimited. */
enum pk_http1_body_kind {
	PK_HTTP1_BODY_NONE = 0,    /* no body: requests without CL/TE; HEAD/1xx/204/304 answers */
	PK_HTTP1_BODY_LENGTH,      /* exactly content_length bytes (may be 0) */
	PK_HTTP1_BODY_CHUNKED,     /* chunked coding, see pk_http1_body */
	PK_HTTP1_BODY_UNTIL_CLOSE, /* responses without CL/TE: the body ends at EOF */
};

/* A run of bytes in the parser's head buffer. */
struct pk_http1_span {
	uint32_t off;
	uint32_t len;
};

/* Header names the parser and the proxy look for, recognised once per header at parse
 * time (case-insensitively) so that lookups and hop-by-hop checks compare small numbers. */
enum pk_http1_known {
	PK_H_OTHER = 0,
	PK_H_HOST,
	PK_H_CONTENT_LENGTH,
	PK_H_TRANSFER_ENCODING,
	PK_H_CONNECTION,
	PK_H_UPGRADE,
	PK_H_KEEP_ALIVE,
	PK_H_PROXY_CONNECTION,
	PK_H_PROXY_AUTHENTICATE,
	PK_H_PROXY_AUTHORIZATION,
	PK_H_TE,
	PK_H_TRAILER,
	PK_H_X_FORWARDED_FOR,
	PK_H_X_FORWARDED_PROTO,
	PK_H_X_PIKO_FORWARD,
	PK_H_X_PIKO_ENDPOINT,
	PK_H__COUNT
};

/* One header line: name as sent, value without surrounding whitespace. */
struct pk_http1_header {
	struct pk_http1_span name;
	struct pk_http1_span value;
	unsigned known; /* enum pk_http1_known of the name */
};

struct pk_http1_limits {
	size_t max_head_bytes; /* 0: PK_HTTP1_DEFAULT_MAX_HEAD; at most PK_HTTP1_MAX_HEAD_CAP */
	unsigned max_headers;  /* 0: PK_HTTP1_DEFAULT_MAX_HEADERS; at most ..._CAP */
};

struct pk_http1_parser {
	/* Results: valid after feed returned 1, until reset or free. Read-only. */
	enum pk_http1_type type;
	struct pk_http1_span method;     /* requests */
	struct pk_http1_span target;     /* requests: request-target as sent */
	unsigned version_minor;          /* 0 or 1; the major version is always 1 */
	unsigned status;                 /* responses: status code */
	struct pk_http1_span reason;     /* responses: reason phrase (may be empty) */
	struct pk_http1_header *headers; /* in order of appearance */
	unsigned n_headers;
	/* After a 1xx other than 101 the final response follows: reset and parse again. */
	enum pk_http1_body_kind body_kind;
	uint64_t content_length; /* BODY_LENGTH only */
	int keep_alive;          /* the connection may carry another message */
	int upgrade;             /* request: GET HTTP/1.1 with Connection: upgrade and
	                          * Upgrade: websocket; response: status 101 */
	int is_head_response;    /* set by pk_http1_parser_response_to_head() */

	/* Rejection: valid after feed returned -EPROTO. */
	int error_status;         /* 400, 431, 501 or 505 */
	const char *error_reason; /* static, short, lower case, e.g. "bare LF in head" */
	int hp_errno; /* libhttp-parser's enum http_errno when it rejected a request, else 0 */

	/* Private. */
	char *pk__buf;
	size_t pk__cap, pk__len, pk__skipped;
	size_t pk__max_head;
	unsigned pk__max_headers, pk__hcap;
	uint32_t pk__known; /* bit k: a header with known == k is present */
	int pk__state, pk__prev, pk__line_len, pk__last_cb;
};

/* Prepares p for one message of the given type. limits may be NULL (defaults). Allocates
 * nothing yet. Raises libhttp-parser's process-wide header limit above
 * PK_HTTP1_MAX_HEAD_CAP (http_parser_set_max_header_size) so that ours is the one that
 * applies. Returns 0, or -EINVAL for an unknown type. */
int pk_http1_parser_init(struct pk_http1_parser *p, enum pk_http1_type type,
                         const struct pk_http1_limits *limits);

/* Forgets the current message (results and errors) but keeps the buffers and limits, for
 * the next message on the same connection. */
void pk_http1_parser_reset(struct pk_http1_parser *p);

/* Frees the buffers. p may be re-initialised afterwards. */
void pk_http1_parser_free(struct pk_http1_parser *p);

/* Responses only: the request was HEAD, so the response has no body whatever its
 * Content-Length or Transfer-Encoding say. Call before the head completes; reset clears it. */
void pk_http1_parser_response_to_head(struct pk_http1_parser *p, int is_head);

/* Feeds len bytes (any split of the stream). *used gets the number of those bytes that
 * belong to the head (including skipped leading empty lines).
 * Returns 0 (need more; *used == len), 1 (head complete; the bytes from *used on are not
 * the head's), -EPROTO (rejected: error_status/error_reason set; *used is the offset of
 * the offending byte, or the head's end for a rule checked on the whole head; the parser
 * stays failed until reset), -ENOMEM, or -EINVAL when called after completion or failure.
 * The outcome does not depend on how the stream is split into calls. */
int pk_http1_parser_feed(struct pk_http1_parser *p, const void *data, size_t len, size_t *used);

/* The exact raw head bytes (start line through the empty line) once complete: forward
 * them or pass them on as they are. NULL (and *len 0) before completion. */
const char *pk_http1_raw_head(const struct pk_http1_parser *p, size_t *len);

/* Pointer to the bytes of a span (not NUL-terminated). */
const char *pk_http1_ptr(const struct pk_http1_parser *p, struct pk_http1_span s);

/* Whether span s equals the NUL-terminated str, ASCII case-insensitively. */
int pk_http1_span_ieq(const struct pk_http1_parser *p, struct pk_http1_span s, const char *str);

/* Index of the first header at index >= from named `name` (case-insensitive), or -1. Use
 * it to walk a header that appears several times:
 *     for (int i = pk_http1_find(p, "x", 0); i >= 0; i = pk_http1_find(p, "x", i + 1)) */
int pk_http1_find(const struct pk_http1_parser *p, const char *name, int from);

/* The same for a known name: a bit test when no such header is present. */
int pk_http1_find_known(const struct pk_http1_parser *p, enum pk_http1_known id, int from);

/* The enum pk_http1_known of a header name (any case), PK_H_OTHER if not one of them. */
enum pk_http1_known pk_http1_known_id(const char *name, size_t len);

/* Value of the first header named `name`, or NULL. *len gets its length (len may be NULL). */
const char *pk_http1_get(const struct pk_http1_parser *p, const char *name, size_t *len);

/* Copies the value of the first header named `name` into buf as a NUL-terminated string.
 * Returns buf, or NULL when absent or when the value does not fit (size includes the NUL). */
char *pk_http1_get_copy(const struct pk_http1_parser *p, const char *name, char *buf, size_t size);

/* Number of headers named `name`. */
unsigned pk_http1_count(const struct pk_http1_parser *p, const char *name);

/* Whether any header named `name` lists `token` in its comma-separated value
 * (case-insensitive), e.g. pk_http1_has_token(p, "connection", "close"). */
int pk_http1_has_token(const struct pk_http1_parser *p, const char *name, const char *token);

/* The endpoint id of a request (PROTOCOL.md section 5): the first non-empty
 * x-piko-endpoint header, else pk_http1_endpoint_from_host() on Host. Returns 1 and the
 * id in *id and *len (pointing into the head buffer), or 0 when there is none. */
int pk_http1_endpoint(const struct pk_http1_parser *p, const char **id, size_t *len);

/* The endpoint of a Host value: its first label, port stripped, when the host contains
 * a dot and is not an IP address (bracketed IPv6, or made only of digits and dots) and the
 * label is not empty. "foo.piko.example.com:9000" -> "foo"; "localhost", "127.0.0.1",
 * "[::1]:8000" -> none. Returns 1 with *label_len (the label starts at host), or 0. */
int pk_http1_endpoint_from_host(const char *host, size_t len, size_t *label_len);

/* Options for the head written toward an upstream (or a peer node). */
struct pk_http1_proxy_opts {
	const char *client_addr; /* appended to X-Forwarded-For; NULL leaves XFF as it was */
	int https;               /* X-Forwarded-Proto: https (1) or http (0) */
	int keep_alive;          /* 1: no Connection: close (peer links keep the connection);
	                          * ignored for upgrades */
};

/* Writes the proxied request head for the complete request in p into buf:
 *   - request line: method and target as received, version HTTP/1.1; an empty Host
 *     when an HTTP/1.0 request had none (HTTP/1.1 requires the field);
 *   - every header in order, except the hop-by-hop ones (Connection, Keep-Alive,
 *     Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Upgrade) and
 *     every header named in Connection. Host, Content-Length and Transfer-Encoding are
 *     never removed by Connection: the body is relayed byte-exact, so its framing headers
 *     must travel with it (Transfer-Encoding: chunked stays for a chunked body; it is
 *     dropped for any other body kind). X-Forwarded-For, X-Forwarded-Proto and
 *     X-Piko-Forward from the client are replaced by ours;
 *   - X-Forwarded-For: existing values joined with ", " then client_addr;
 *     X-Forwarded-Proto; X-Piko-Forward: true;
 *   - Connection: close, or for a WebSocket upgrade Connection: Upgrade + Upgrade: websocket;
 *   - the empty line.
 * Returns the length written (no NUL), -ENOSPC when buf is too small, -EINVAL when p holds
 * no complete request or client_addr has control characters or commas. */
ssize_t pk_http1_build_proxy_request(const struct pk_http1_parser *p,
                                     const struct pk_http1_proxy_opts *o, char *buf, size_t size);

/* The standard reason phrase of a status code ("Bad Gateway"), "Unknown" for others. */
const char *pk_http1_reason(unsigned status);

/* A header for the response builder. */
struct pk_http1_field {
	const char *name;
	const char *value;
};

/* Writes a complete response: status line (reason NULL: the standard phrase), Content-Type
 * (when content_type is not NULL), Content-Length: body_len, the extra fields,
 * Connection: close when close is set, the empty line and the body.
 * Returns the length, -ENOSPC, or -EINVAL (status outside 100-599, a name that is not a
 * token, a value or reason with control characters). */
ssize_t pk_http1_build_response(char *buf, size_t size, unsigned status, const char *reason,
                                const char *content_type, const struct pk_http1_field *extra,
                                size_t n_extra, const void *body, size_t body_len, int close);

/* The JSON error answer {"error":"<message>"} (message JSON-escaped) with
 * Content-Type: application/json, e.g. 502 "no available upstreams". Errors as above. */
ssize_t pk_http1_build_error(char *buf, size_t size, unsigned status, const char *message,
                             int close);

/* Body framer: tells which of the bytes after a head belong to the body, so the body can be
 * relayed byte-exact and the next pipelined message found. The chunked coding is parsed by
 * this module's own state machine (not libhttp-parser's body callbacks): it only has to
 * delimit, and one small state machine is easier to bound and fuzz. Chunk-size lines take
 * hex digits (at most 15), optional whitespace and ";extensions" up to 4 KiB; trailers up to
 * 16 KiB; every line must end in CRLF; control bytes and obs-fold are rejected. */
struct pk_http1_body {
	enum pk_http1_body_kind kind;
	uint64_t remaining; /* LENGTH: body bytes left; CHUNKED: bytes left in this chunk */
	int done;           /* the body has ended */
	const char *error_reason;
	int pk__state;
	unsigned pk__digits;
	uint32_t pk__line, pk__trailer;
};

/* Starts a body of the given kind (length used for BODY_LENGTH). NONE and LENGTH 0 are
 * done at once. */
void pk_http1_body_init(struct pk_http1_body *b, enum pk_http1_body_kind kind, uint64_t length);

/* Starts the body announced by the complete head in p. */
void pk_http1_body_init_from(struct pk_http1_body *b, const struct pk_http1_parser *p);

/* Feeds bytes that follow the head. Returns how many of them belong to the body (all of
 * them unless the body ends inside data: then b->done is set and the rest is the next
 * message), 0 once done, or -EPROTO for a malformed chunked body (b->error_reason set).
 * UNTIL_CLOSE bodies take every byte and end only when the caller sees EOF. */
ssize_t pk_http1_body_feed(struct pk_http1_body *b, const void *data, size_t len);

#endif
