/* A small HTTP/1.1 server for simple request/response handlers on a libuv loop.
 *
 * It serves the admin API and the answers pikod gives itself (errors, health). It reads
 * one request head at a time (bounded by max_header_bytes, within read_header_timeout),
 * calls the handler, writes the response, and keeps the connection for the next request
 * (until idle_timeout) unless either side asked to close. Request bodies are not read: a
 * request that carries one gets its answer and the connection is closed afterwards, so a
 * body is never mistaken for the next request.
 *
 * Draining stops accepting at once, closes idle connections, lets busy ones finish their
 * current response with "Connection: close", and calls back when none is left.
 */
#ifndef PK_HTTPD_H
#define PK_HTTPD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define PK_HTTPD_MAX_HEADERS 64

struct pk_httpd;
struct pk_httpd_conn;

struct pk_http_header {
	const char *name; /* NUL-terminated, as received */
	const char *value;
};

struct pk_http_req {
	const char *method;
	const char *target; /* origin-form target as received, with the query */
	const char *path;   /* target without the query (NUL-terminated copy) */
	const char *query;  /* after '?', or "" */
	int http_minor;
	int nheaders;
	struct pk_http_header headers[PK_HTTPD_MAX_HEADERS];
	const char *client_addr; /* "ip:port" */
};

/* Case-insensitive header lookup; NULL if absent. */
const char *pk_http_req_header(const struct pk_http_req *req, const char *name);

/* The value of `name` in a query string ("a=1&forward=n2"), copied into buf; 0 or -ENOENT. */
int pk_http_query_param(const char *query, const char *name, char *buf, size_t len);

/* Handler: must call pk_httpd_respond() exactly once, now or later (e.g. after I/O). */
typedef void (*pk_httpd_handler_fn)(struct pk_httpd_conn *conn, const struct pk_http_req *req,
                                    void *ud);

struct pk_httpd_options {
	size_t max_header_bytes;         /* 431 beyond this */
	uint64_t read_header_timeout_ms; /* 408 and close when a head takes longer */
	uint64_t idle_timeout_ms;        /* close a kept-alive connection idle this long */
	const char *subsystem;           /* for logs, e.g. "admin" */
};

/* Starts serving on an inherited listening socket. Returns 0 or -errno. */
int pk_httpd_start(struct pk_httpd **out, uv_loop_t *loop, int listen_fd,
                   const struct pk_httpd_options *opt, pk_httpd_handler_fn fn, void *ud);

/* Writes the response: status line, Content-Type (if given), Content-Length, extra headers
 * (each a full "Name: value" line without CRLF, NULL-terminated array, may be NULL), body.
 * Returns 0 or -errno (the connection is then closed). */
int pk_httpd_respond(struct pk_httpd_conn *conn, int status, const char *content_type,
                     const char *const *extra_headers, const void *body, size_t len);

/* Shorthand for the JSON error body used everywhere: {"error":"<msg>"}. */
int pk_httpd_respond_error(struct pk_httpd_conn *conn, int status, const char *msg);

const char *pk_http_reason(int status);

/* Stops accepting, closes idle connections, finishes busy ones; calls cb(ud) once none is
 * left (possibly before returning). */
void pk_httpd_drain(struct pk_httpd *srv, void (*cb)(void *ud), void *ud);

/* Connections currently open. */
unsigned pk_httpd_connections(const struct pk_httpd *srv);

#endif
