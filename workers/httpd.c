#include "workers/httpd.h"

#include "common/log.h"
#include "proto/http1.h"
#include "daemon/listeners.h"

#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum pk__conn_state {
	PK__CONN_READING,  /* waiting for (the rest of) a request head */
	PK__CONN_HANDLING, /* handler called, response not yet given */
	PK__CONN_WRITING,  /* response being written */
	PK__CONN_CLOSING,
};

struct pk_httpd_conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	struct pk_httpd *srv;
	struct pk_httpd_conn *next, *prev;
	enum pk__conn_state state;
	int close_after; /* close once the current response is written */
	int handles_open;
	unsigned served; /* responses written: 0 means the first request is still coming */
	size_t len;      /* bytes in buf */
	size_t head_len; /* length of the head being handled */
	char client[80];
	struct pk_http_req req;
	char *scratch; /* NUL-terminated copy of the head the req points into */
	char *buf;     /* max_header_bytes */
};

struct pk_httpd {
	uv_loop_t *loop;
	uv_tcp_t listener;
	int listening;
	struct pk_httpd_options opt;
	pk_httpd_handler_fn fn;
	void *ud;
	struct pk_httpd_conn *conns;
	unsigned nconns;
	int draining;
	void (*drain_cb)(void *);
	void *drain_ud;
};

static void pk__conn_read_more(struct pk_httpd_conn *c);
static void pk__conn_try_head(struct pk_httpd_conn *c);

const char *pk_http_reason(int status)
{
	return pk_http1_reason((unsigned)status);
}

const char *pk_http_req_header(const struct pk_http_req *req, const char *name)
{
	for (int i = 0; i < req->nheaders; i++)
		if (strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}

int pk_http_query_param(const char *query, const char *name, char *buf, size_t len)
{
	size_t nlen = strlen(name);
	for (const char *p = query; p && *p;) {
		const char *end = strchr(p, '&');
		size_t seg = end ? (size_t)(end - p) : strlen(p);
		if (seg > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
			size_t vlen = seg - nlen - 1;
			if (vlen >= len)
				return -ENAMETOOLONG;
			memcpy(buf, p + nlen + 1, vlen);
			buf[vlen] = '\0';
			return 0;
		}
		p = end ? end + 1 : NULL;
	}
	return -ENOENT;
}

/* ---- connection lifetime ---- */

static void pk__conn_free_if_closed(uv_handle_t *h)
{
	struct pk_httpd_conn *c = h->data;
	if (--c->handles_open > 0)
		return;
	struct pk_httpd *srv = c->srv;
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	srv->nconns--;
	free(c->scratch);
	free(c->buf);
	free(c);
	if (srv->draining && srv->nconns == 0 && srv->drain_cb) {
		void (*cb)(void *) = srv->drain_cb;
		srv->drain_cb = NULL;
		cb(srv->drain_ud);
	}
}

static void pk__conn_close(struct pk_httpd_conn *c)
{
	if (c->state == PK__CONN_CLOSING)
		return;
	c->state = PK__CONN_CLOSING;
	uv_close((uv_handle_t *)&c->tcp, pk__conn_free_if_closed);
	uv_close((uv_handle_t *)&c->timer, pk__conn_free_if_closed);
}

static void pk__conn_timeout(uv_timer_t *t)
{
	struct pk_httpd_conn *c = t->data;
	if (c->state != PK__CONN_READING)
		return;
	if (c->len > 0) {
		/* A head that does not arrive in time: say so, then close. */
		c->close_after = 1;
		c->state = PK__CONN_HANDLING;
		uv_read_stop((uv_stream_t *)&c->tcp);
		pk_httpd_respond_error(c, 408, "request header timeout");
		return;
	}
	pk__conn_close(c);
}

static void pk__conn_arm_timer(struct pk_httpd_conn *c)
{
	uint64_t ms = c->len > 0 ? c->srv->opt.read_header_timeout_ms : c->srv->opt.idle_timeout_ms;
	if (ms > 0)
		uv_timer_start(&c->timer, pk__conn_timeout, ms, 0);
	else
		uv_timer_stop(&c->timer);
}

/* ---- writing ---- */

struct pk__write {
	uv_write_t req;
	struct pk_httpd_conn *conn;
	char data[];
};

static void pk__write_done(uv_write_t *w, int status)
{
	struct pk__write *wr = (struct pk__write *)w;
	struct pk_httpd_conn *c = wr->conn;
	free(wr);
	c->served++;
	if (c->state == PK__CONN_CLOSING)
		return;
	if (status < 0 || c->close_after || c->srv->draining) {
		pk__conn_close(c);
		return;
	}
	/* Keep-alive: drop the answered head and look at what follows (pipelining). */
	memmove(c->buf, c->buf + c->head_len, c->len - c->head_len);
	c->len -= c->head_len;
	c->head_len = 0;
	c->state = PK__CONN_READING;
	pk__conn_try_head(c);
}

int pk_httpd_respond(struct pk_httpd_conn *c, int status, const char *content_type,
                     const char *const *extra_headers, const void *body, size_t len)
{
	size_t cap = 256 + len + (content_type ? strlen(content_type) : 0);
	for (int i = 0; extra_headers && extra_headers[i]; i++)
		cap += strlen(extra_headers[i]) + 2;
	struct pk__write *wr = malloc(sizeof(*wr) + cap);
	if (wr == NULL) {
		pk__conn_close(c);
		return -ENOMEM;
	}
	if (c->srv->draining)
		c->close_after = 1;
	int n = snprintf(wr->data, cap, "HTTP/1.1 %d %s\r\n", status, pk_http_reason(status));
	if (content_type)
		n += snprintf(wr->data + n, cap - (size_t)n, "Content-Type: %s\r\n", content_type);
	for (int i = 0; extra_headers && extra_headers[i]; i++)
		n += snprintf(wr->data + n, cap - (size_t)n, "%s\r\n", extra_headers[i]);
	n += snprintf(wr->data + n, cap - (size_t)n, "Content-Length: %zu\r\n%s\r\n", len,
	              c->close_after ? "Connection: close\r\n" : "");
	memcpy(wr->data + n, body, len);
	wr->conn = c;
	c->state = PK__CONN_WRITING;
	uv_buf_t b = uv_buf_init(wr->data, (unsigned)((size_t)n + len));
	int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, pk__write_done);
	if (rc < 0) {
		free(wr);
		pk__conn_close(c);
	}
	return rc;
}

int pk_httpd_respond_error(struct pk_httpd_conn *c, int status, const char *msg)
{
	char body[512];
	/* Messages are fixed strings of ours; none needs JSON escaping. */
	int n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", msg);
	return pk_httpd_respond(c, status, "application/json", NULL, body, (size_t)n);
}

/* ---- parsing ---- */

struct pk__parse {
	struct pk_httpd_conn *c;
	char *base;
	size_t url_off, url_len;
	int in_value;
	size_t name_off[PK_HTTPD_MAX_HEADERS], name_len[PK_HTTPD_MAX_HEADERS];
	size_t val_off[PK_HTTPD_MAX_HEADERS], val_len[PK_HTTPD_MAX_HEADERS];
	int n;
	int too_many;
	int done;
};

static int pk__on_url(http_parser *p, const char *at, size_t len)
{
	struct pk__parse *ps = p->data;
	if (ps->url_len == 0)
		ps->url_off = (size_t)(at - ps->base);
	ps->url_len += len;
	return 0;
}

static int pk__on_field(http_parser *p, const char *at, size_t len)
{
	struct pk__parse *ps = p->data;
	if (ps->n >= PK_HTTPD_MAX_HEADERS) {
		ps->too_many = 1;
		return 1;
	}
	ps->name_off[ps->n] = (size_t)(at - ps->base);
	ps->name_len[ps->n] = len;
	ps->val_off[ps->n] = ps->name_off[ps->n] + len; /* empty value until seen */
	ps->val_len[ps->n] = 0;
	ps->n++;
	return 0;
}

static int pk__on_value(http_parser *p, const char *at, size_t len)
{
	struct pk__parse *ps = p->data;
	ps->val_off[ps->n - 1] = (size_t)(at - ps->base);
	ps->val_len[ps->n - 1] = len;
	return 0;
}

static int pk__on_headers_complete(http_parser *p)
{
	struct pk__parse *ps = p->data;
	ps->done = 1;
	return 1;
}

/* Parses buf[0..head_len) (which ends in CRLFCRLF) into c->req. Returns 0 or an HTTP
 * status to answer with. */
static int pk__parse_head(struct pk_httpd_conn *c, size_t head_len)
{
	static const http_parser_settings settings = {
	    .on_url = pk__on_url,
	    .on_header_field = pk__on_field,
	    .on_header_value = pk__on_value,
	    .on_headers_complete = pk__on_headers_complete,
	};
	struct pk__parse ps = {.c = c};
	http_parser p;

	/* One allocation: the head, then a copy of the path (the target up to '?'). */
	free(c->scratch);
	c->scratch = malloc(2 * head_len + 2);
	if (c->scratch == NULL)
		return 500;
	memcpy(c->scratch, c->buf, head_len);
	c->scratch[head_len] = '\0';
	ps.base = c->scratch;
	http_parser_init(&p, HTTP_REQUEST);
	p.data = &ps;
	http_parser_execute(&p, &settings, c->scratch, head_len);
	if (ps.too_many)
		return 431;
	if (!ps.done || HTTP_PARSER_ERRNO(&p) != HPE_OK || ps.url_len == 0)
		return 400;
	if (p.http_major != 1)
		return 505;

	struct pk_http_req *r = &c->req;
	memset(r, 0, sizeof(*r));
	r->method = http_method_str(p.method);
	r->http_minor = p.http_minor;
	r->client_addr = c->client;
	for (int i = 0; i < ps.n; i++) {
		c->scratch[ps.name_off[i] + ps.name_len[i]] = '\0';
		c->scratch[ps.val_off[i] + ps.val_len[i]] = '\0';
		r->headers[i].name = c->scratch + ps.name_off[i];
		r->headers[i].value = c->scratch + ps.val_off[i];
		/* A value containing a bare CR or LF is an obs-fold or a smuggling attempt. */
		if (strpbrk(r->headers[i].value, "\r\n") || strpbrk(r->headers[i].name, " \t"))
			return 400;
	}
	r->nheaders = ps.n;
	c->scratch[ps.url_off + ps.url_len] = '\0';
	r->target = c->scratch + ps.url_off;
	if (r->target[0] != '/')
		return 400;
	const char *q = strchr(r->target, '?');
	size_t plen = q ? (size_t)(q - r->target) : strlen(r->target);
	char *path = c->scratch + head_len + 1;
	memcpy(path, r->target, plen);
	path[plen] = '\0';
	r->path = path;
	r->query = q ? q + 1 : "";
	int has_body =
	    (p.flags & F_CHUNKED) || (p.content_length != 0 && p.content_length != ULLONG_MAX);
	if (has_body || !http_should_keep_alive(&p) || p.upgrade)
		c->close_after = 1;
	return 0;
}

/* http_parser accepts LF without CR; we don't (it is how requests get smuggled). */
static int pk__has_bare_lf(const char *buf, size_t len)
{
	for (const char *p = memchr(buf, '\n', len); p;
	     p = memchr(p + 1, '\n', len - (size_t)(p + 1 - buf)))
		if (p == buf || p[-1] != '\r')
			return 1;
	return 0;
}

static void pk__conn_try_head(struct pk_httpd_conn *c)
{
	struct pk_httpd *srv = c->srv;
	char *end = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;

	if (pk__has_bare_lf(c->buf, end ? (size_t)(end - c->buf) + 4 : c->len)) {
		c->close_after = 1;
		c->state = PK__CONN_HANDLING;
		uv_read_stop((uv_stream_t *)&c->tcp);
		pk_httpd_respond_error(c, 400, "bare LF in request head");
		return;
	}
	if (end == NULL) {
		if (c->len >= srv->opt.max_header_bytes) {
			c->close_after = 1;
			c->state = PK__CONN_HANDLING;
			pk_httpd_respond_error(c, 431, "request header too large");
			return;
		}
		if (srv->draining && c->len == 0 && c->served > 0) {
			pk__conn_close(c);
			return;
		}
		pk__conn_read_more(c);
		return;
	}
	c->head_len = (size_t)(end - c->buf) + 4;
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_timer_stop(&c->timer);
	c->state = PK__CONN_HANDLING;
	int status = pk__parse_head(c, c->head_len);
	if (status != 0) {
		c->close_after = 1;
		pk_httpd_respond_error(
		    c, status, status == 431 ? "too many header fields" : "malformed request");
		return;
	}
	srv->fn(c, &c->req, srv->ud);
}

static void pk__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct pk_httpd_conn *c = h->data;
	size_t room = c->srv->opt.max_header_bytes - c->len;
	*b = uv_buf_init(c->buf + c->len, (unsigned)room);
}

static void pk__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct pk_httpd_conn *c = s->data;
	if (n < 0) {
		pk__conn_close(c);
		return;
	}
	if (n == 0)
		return;
	int was_empty = c->len == 0;
	c->len += (size_t)n;
	if (was_empty)
		pk__conn_arm_timer(c); /* the head's clock starts with its first byte */
	uv_read_stop(s);
	pk__conn_try_head(c);
}

static void pk__conn_read_more(struct pk_httpd_conn *c)
{
	if (c->len == 0)
		pk__conn_arm_timer(c);
	if (uv_read_start((uv_stream_t *)&c->tcp, pk__alloc, pk__on_read) < 0)
		pk__conn_close(c);
}

/* ---- accepting ---- */

static void pk__on_connection(uv_stream_t *l, int status)
{
	struct pk_httpd *srv = l->data;
	if (status < 0) {
		pk_log_warn(srv->opt.subsystem, "accept failed", "error=%s", uv_strerror(status));
		return;
	}
	struct pk_httpd_conn *c = calloc(1, sizeof(*c));
	if (c != NULL)
		c->buf = malloc(srv->opt.max_header_bytes);
	if (c == NULL || c->buf == NULL) {
		/* Out of memory: still take the connection off the queue (and close it), or
		 * libuv stops accepting on this listener until it is taken. */
		uv_tcp_t *tmp = malloc(sizeof(*tmp));
		if (c)
			free(c);
		if (tmp == NULL)
			abort();
		pk_log_error(srv->opt.subsystem, "out of memory accepting a connection", NULL);
		uv_tcp_init(srv->loop, tmp);
		(void)uv_accept(l, (uv_stream_t *)tmp);
		uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
		return;
	}
	c->srv = srv;
	uv_tcp_init(srv->loop, &c->tcp);
	uv_timer_init(srv->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->handles_open = 2;
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->nconns++;
	if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
		pk__conn_close(c);
		return;
	}
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	c->client[0] = '\0';
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
		char ip[INET6_ADDRSTRLEN];
		if (ss.ss_family == AF_INET6) {
			uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
			snprintf(c->client, sizeof(c->client), "[%s]:%u", ip,
			         ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
		} else {
			uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
			snprintf(c->client, sizeof(c->client), "%s:%u", ip,
			         ntohs(((struct sockaddr_in *)&ss)->sin_port));
		}
	}
	c->state = PK__CONN_READING;
	pk__conn_read_more(c);
}

int pk_httpd_start(struct pk_httpd **out, uv_loop_t *loop, int listen_fd,
                   const struct pk_httpd_options *opt, pk_httpd_handler_fn fn, void *ud)
{
	struct pk_httpd *srv = calloc(1, sizeof(*srv));
	int rc;
	if (srv == NULL)
		return -ENOMEM;
	srv->loop = loop;
	srv->opt = *opt;
	if (srv->opt.max_header_bytes < 1024)
		srv->opt.max_header_bytes = 1024;
	if (srv->opt.subsystem == NULL)
		srv->opt.subsystem = "http";
	srv->fn = fn;
	srv->ud = ud;
	uv_tcp_init(loop, &srv->listener);
	srv->listener.data = srv;
	rc = uv_tcp_open(&srv->listener, listen_fd);
	if (rc < 0)
		goto err_close;
	rc = uv_listen((uv_stream_t *)&srv->listener, 4096, pk__on_connection);
	if (rc < 0)
		goto err_close;
	srv->listening = 1;
	*out = srv;
	return 0;

err_close:
	/* The handle owns the fd now; closing the handle closes it. srv is freed by the loop. */
	uv_close((uv_handle_t *)&srv->listener, (uv_close_cb)free);
	return rc;
}

void pk_httpd_drain(struct pk_httpd *srv, void (*cb)(void *ud), void *ud)
{
	if (srv->listening) {
		srv->listening = 0;
		uv_close((uv_handle_t *)&srv->listener, NULL);
	}
	srv->draining = 1;
	srv->drain_cb = cb;
	srv->drain_ud = ud;
	/* Idle kept-alive connections are closed now (as every HTTP server does; clients
	 * retry a request that meets a closed keep-alive connection). A connection that has
	 * not yet sent its first request is not idle: its request is on the way, so it is
	 * served, once. */
	for (struct pk_httpd_conn *c = srv->conns, *next; c; c = next) {
		next = c->next;
		if (c->state == PK__CONN_READING && c->len == 0 && c->served > 0)
			pk__conn_close(c);
		else
			c->close_after = 1;
	}
	if (srv->nconns == 0 && srv->drain_cb) {
		srv->drain_cb = NULL;
		cb(ud);
	}
}

unsigned pk_httpd_connections(const struct pk_httpd *srv)
{
	return srv->nconns;
}
