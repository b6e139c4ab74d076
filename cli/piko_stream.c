/* The agent's stream handlers: HTTP exchange, WebSocket splice, TCP splice (see
 * piko_stream.h). */
#include "cli/piko_stream.h"

#include "cli/piko_net.h"
#include "common/log.h"
#include "proto/http1.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PK__LOG        "agent"
#define PK__ACCESS     "access"
#define PK__HEAD_EXTRA 256

/* ---- the pool ---- */

struct pk__idle {
	struct pk_net_conn *c;
	struct pk_pool *pool;
	uint64_t since;
	struct pk__idle *next, *prev;
};

struct pk_pool {
	uv_loop_t *loop;
	struct pk_conf_listener *l;
	uv_timer_t timer;
	struct pk__idle *head;
	unsigned n;
};

static void pk__idle_drop(struct pk__idle *e)
{
	struct pk_pool *p = e->pool;
	if (e->prev)
		e->prev->next = e->next;
	else
		p->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	p->n--;
	pk_net_close(e->c);
	free(e);
}

/* An idle connection must stay silent: any byte, EOF or error ends it. */
static void pk__idle_read(struct pk_net_conn *c, uint8_t *d, size_t n)
{
	(void)d;
	(void)n;
	pk__idle_drop(pk_net_ud(c));
}

static void pk__idle_eof(struct pk_net_conn *c)
{
	pk__idle_drop(pk_net_ud(c));
}

static void pk__idle_error(struct pk_net_conn *c, int err)
{
	(void)err;
	pk__idle_drop(pk_net_ud(c));
}

static const struct pk_net_ops pk__idle_ops = {
    .on_read = pk__idle_read,
    .on_eof = pk__idle_eof,
    .on_error = pk__idle_error,
};

static void pk__pool_tick(uv_timer_t *t)
{
	struct pk_pool *p = t->data;
	uint64_t now = uv_now(p->loop);
	struct pk__idle *e = p->head;
	while (e) {
		struct pk__idle *n = e->next;
		if (now - e->since >= PK_POOL_IDLE_MS)
			pk__idle_drop(e);
		e = n;
	}
}

int pk_pool_new(uv_loop_t *loop, struct pk_conf_listener *l, struct pk_pool **out)
{
	struct pk_pool *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->loop = loop;
	p->l = l;
	uv_timer_init(loop, &p->timer);
	p->timer.data = p;
	uv_timer_start(&p->timer, pk__pool_tick, PK_POOL_IDLE_MS / 4, PK_POOL_IDLE_MS / 4);
	uv_unref((uv_handle_t *)&p->timer);
	*out = p;
	return 0;
}

static void pk__pool_closed(uv_handle_t *h)
{
	free(h->data);
}

void pk_pool_free(struct pk_pool *p)
{
	if (p == NULL)
		return;
	while (p->head)
		pk__idle_drop(p->head);
	uv_close((uv_handle_t *)&p->timer, pk__pool_closed);
}

/* Most recently used first: it is the least likely to have been closed by the service. */
static struct pk_net_conn *pk__pool_get(struct pk_pool *p)
{
	struct pk__idle *e = p->head;
	if (e == NULL)
		return NULL;
	p->head = e->next;
	if (p->head)
		p->head->prev = NULL;
	p->n--;
	struct pk_net_conn *c = e->c;
	free(e);
	return c;
}

static void pk__pool_put(struct pk_pool *p, struct pk_net_conn *c)
{
	struct pk__idle *e = p->n < PK_POOL_MAX_IDLE ? calloc(1, sizeof(*e)) : NULL;
	if (e == NULL) {
		pk_net_close(c);
		return;
	}
	e->c = c;
	e->pool = p;
	e->since = uv_now(p->loop);
	e->next = p->head;
	if (p->head)
		p->head->prev = e;
	p->head = e;
	p->n++;
	pk_net_set_owner(c, &pk__idle_ops, e);
	pk_net_read_start(c);
}

/* ---- stream handlers ---- */

enum {
	PK__H_HEAD = 0, /* reading the request head from the stream */
	PK__H_WAIT,     /* request sent (or being sent), waiting for the answer's head */
	PK__H_BODY,     /* relaying the answer's body */
	PK__H_SPLICE,   /* TCP listener, or HTTP after a 101 */
	PK__H_DONE,     /* answered; draining what the stream still sends */
};

/* Splice bytes from the server point into the tunnel's read buffer, which holds several
 * WebSocket and yamux frames per read: a stream's share of one read is gathered (at most
 * this many pieces at a time) and written to the service with one writev once the whole
 * read has been handed on (pk_net_on_read_done), instead of one write per frame boundary. */
#define PK__GATHER_MAX 8

struct pk_strm {
	struct pk_strm_env env;
	uint32_t id;
	int http;
	int phase;
	unsigned gone : 1,           /* the stream left the session */
	    peer_fin : 1,            /* the server half-closed the stream */
	    our_fin : 1,             /* we half-closed (or must, once pend is sent) */
	    fin_pending : 1,         /* FIN after pend */
	    conn_eof : 1,            /* the service half-closed */
	    req_done : 1,            /* the whole request went to the service */
	    resp_done : 1,           /* the whole answer came */
	    reused : 1,              /* the connection came from the pool */
	    retried : 1,             /* one retry on a fresh connection was made */
	    reusable : 1,            /* the connection may go back to the pool */
	    linger : 1,              /* close the connection once its half-close is out */
	    upgrade : 1,             /* the request asks for a WebSocket upgrade */
	    is_head : 1,             /* HEAD request */
	    answered : 1,            /* some answer bytes went to the stream */
	    glisted : 1;             /* on pk__gathered */
	int busy;                    /* entry points in progress: freeing waits for 0 */
	struct pk_strm *next, *prev; /* every live handler, for pk_strm_close_all */
	struct pk_net_conn *conn;
	size_t credit_out;               /* stream bytes written to the service, not yet consumed */
	uv_buf_t gather[PK__GATHER_MAX]; /* spliced bytes of the tunnel read under way */
	unsigned ngather;
	struct pk_strm *gnext; /* on pk__gathered */
	struct pk_http1_parser req;
	struct pk_http1_body reqbody;
	struct pk_http1_parser resp;
	struct pk_http1_body respbody;
	char *head; /* the request head for the service (kept for one retry) */
	size_t head_len;
	uint8_t *pend; /* bytes for the stream waiting for window */
	size_t pend_len, pend_off;
	uv_timer_t *timer;
	uint64_t t0;
	unsigned status;
	char method[16];
	char path[200];
};

static unsigned pk__strm_live;
static struct pk_strm *pk__strm_list;
static struct pk_strm *pk__gathered; /* handlers with gathered bytes, pinned (busy) */

unsigned pk_strm_live(void)
{
	return pk__strm_live;
}

static const struct pk_net_ops pk__conn_ops;
static void pk__to_stream(struct pk_strm *h, const uint8_t *d, size_t n);

static void pk__timer_closed(uv_handle_t *t)
{
	free(t);
}

static void pk__timer_stop(struct pk_strm *h)
{
	if (h->timer) {
		h->timer->data = NULL;
		uv_close((uv_handle_t *)h->timer, pk__timer_closed);
		h->timer = NULL;
	}
}

static void pk__maybe_free(struct pk_strm *h)
{
	if (!h->gone || h->conn != NULL || h->busy > 0)
		return;
	pk__timer_stop(h);
	if (h->http) {
		pk_http1_parser_free(&h->req);
		pk_http1_parser_free(&h->resp);
	}
	free(h->head);
	free(h->pend);
	if (h->prev)
		h->prev->next = h->next;
	else
		pk__strm_list = h->next;
	if (h->next)
		h->next->prev = h->prev;
	free(h);
	pk__strm_live--;
}

/* Every entry point (stream and connection callbacks, the timer) runs between enter and
 * leave: a yamux call inside may free the stream (on_free) and the handler must survive
 * until the outermost entry point returns. */
static void pk__enter(struct pk_strm *h)
{
	h->busy++;
}

static void pk__leave(struct pk_strm *h)
{
	if (--h->busy == 0)
		pk__maybe_free(h);
}

/* Gives back the window of bytes that will never be written on. */
static void pk__drop_conn(struct pk_strm *h)
{
	if (h->conn == NULL)
		return;
	h->ngather = 0; /* their window is in credit_out */
	pk_net_close(h->conn);
	h->conn = NULL;
	if (h->credit_out && !h->gone)
		pk_yamux_consumed(h->env.ys, h->id, h->credit_out);
	h->credit_out = 0;
}

static void pk__reset(struct pk_strm *h)
{
	pk__drop_conn(h);
	if (!h->gone)
		pk_yamux_reset(h->env.ys, h->id); /* on_free follows at once */
}

static void pk__access_log(struct pk_strm *h)
{
	if (!h->http || !h->env.listener->access_log || h->method[0] == 0)
		return;
	pk_log_info(PK__ACCESS, "request",
	            "endpoint=%s method=%s path=%s status=%u duration_ms=%llu",
	            h->env.listener->endpoint, h->method, h->path, h->status,
	            (unsigned long long)(uv_now(h->env.loop) - h->t0));
	h->method[0] = 0;
}

/* Our half-close, once everything for the stream is sent. */
static void pk__fin(struct pk_strm *h)
{
	if (h->our_fin || h->gone)
		return;
	if (h->pend_len > h->pend_off) {
		h->fin_pending = 1;
		return;
	}
	h->our_fin = 1;
	pk_yamux_close(h->env.ys, h->id);
}

/* ---- towards the stream ---- */

static void pk__flush(struct pk_strm *h)
{
	while (h->pend_off < h->pend_len && !h->gone) {
		ssize_t n = pk_yamux_send(h->env.ys, h->id, h->pend + h->pend_off,
		                          h->pend_len - h->pend_off);
		if (n < 0) {
			pk__reset(h);
			return;
		}
		if (n == 0)
			return;
		h->pend_off += (size_t)n;
	}
	free(h->pend);
	h->pend = NULL;
	h->pend_len = h->pend_off = 0;
	if (h->fin_pending)
		pk__fin(h);
	else if (h->conn && !h->conn_eof)
		pk_net_read_start(h->conn);
}

static void pk__to_stream(struct pk_strm *h, const uint8_t *d, size_t n)
{
	if (h->gone || n == 0)
		return;
	h->answered = 1;
	if (h->pend_len == h->pend_off) {
		while (n > 0) {
			ssize_t k = pk_yamux_send(h->env.ys, h->id, d, n);
			if (k < 0) {
				pk__reset(h);
				return;
			}
			if (k == 0)
				break;
			d += k;
			n -= (size_t)k;
		}
		if (n == 0)
			return;
	}
	/* Window closed: keep the rest, stop reading the service until on_window. */
	size_t have = h->pend_len - h->pend_off;
	uint8_t *b = malloc(have + n);
	if (b == NULL) {
		pk__reset(h);
		return;
	}
	if (have)
		memcpy(b, h->pend + h->pend_off, have);
	memcpy(b + have, d, n);
	free(h->pend);
	h->pend = b;
	h->pend_off = 0;
	h->pend_len = have + n;
	if (h->conn)
		pk_net_read_stop(h->conn);
}

/* An answer made here (400, 502, 504): JSON error, then FIN. */
static void pk__answer_error(struct pk_strm *h, unsigned status, const char *msg)
{
	char buf[512];
	ssize_t n = pk_http1_build_error(buf, sizeof(buf), status, msg, 1);
	pk__timer_stop(h);
	pk__drop_conn(h);
	h->status = status;
	h->phase = PK__H_DONE;
	if (n > 0)
		pk__to_stream(h, (const uint8_t *)buf, (size_t)n);
	pk__fin(h);
	pk__access_log(h);
}

/* ---- towards the service ---- */

/* Writes bufs to the service. What the socket takes at once gives its window back now,
 * without a copy, a write request or a completion callback; the rest is copied into the
 * connection's queue with its window as credit, given back when its write completes. When
 * the connection cannot take them, their window goes back at once and -1 is returned: either
 * way every byte's window is accounted for here, and the caller gives back nothing. */
static int pk__writev_conn(struct pk_strm *h, uv_buf_t *b, unsigned n)
{
	size_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += b[i].len;
	size_t done = pk_net_try_writev(h->conn, b, n);
	size_t rest = total - done;
	if (done > 0 && !h->gone)
		pk_yamux_consumed(h->env.ys, h->id, done);
	if (rest == 0)
		return 0;
	unsigned i = 0;
	while (done >= b[i].len)
		done -= b[i++].len;
	b[i].base += done;
	b[i].len -= done;
	if (pk_net_write(h->conn, b + i, n - i, rest) < 0) {
		/* The connection reports the failure; these bytes will never be written. */
		if (!h->gone)
			pk_yamux_consumed(h->env.ys, h->id, rest);
		return -1;
	}
	h->credit_out += rest;
	return 0;
}

static int pk__write_conn(struct pk_strm *h, const uint8_t *d, size_t n)
{
	uv_buf_t b = uv_buf_init((char *)d, (unsigned)n);
	return pk__writev_conn(h, &b, 1);
}

/* Writes the bytes gathered from the tunnel read that has just been handed on. */
static void pk__gather_flush(struct pk_strm *h)
{
	unsigned n = h->ngather;
	if (n == 0)
		return;
	h->ngather = 0;
	for (unsigned i = 0; i < n; i++)
		h->credit_out -= h->gather[i].len; /* held while gathered; the write takes them */
	if (pk__writev_conn(h, h->gather, n) < 0)
		pk__reset(h); /* the service would miss bytes of the stream */
}

static void pk__gather_flush_all(void)
{
	while (pk__gathered) {
		struct pk_strm *h = pk__gathered;
		pk__gathered = h->gnext;
		h->gnext = NULL;
		h->glisted = 0;
		pk__gather_flush(h);
		pk__leave(h);
	}
}

/* Spliced bytes for the service (h->conn is set). */
static void pk__gather(struct pk_strm *h, const uint8_t *d, size_t n)
{
	if (n == 0)
		return;
	if (!pk_net_in_read()) {
		if (pk__write_conn(h, d, n) < 0)
			pk__reset(h);
		return;
	}
	h->credit_out += n;
	if (h->ngather > 0) {
		uv_buf_t *last = &h->gather[h->ngather - 1];
		if ((const uint8_t *)last->base + last->len == d) {
			last->len += n;
			return;
		}
	}
	if (h->ngather == PK__GATHER_MAX) {
		pk__gather_flush(h);
		if (h->conn == NULL)
			return; /* reset: the window of d went back with credit_out */
	}
	h->gather[h->ngather++] = uv_buf_init((char *)d, (unsigned)n);
	if (!h->glisted) {
		pk__enter(h);
		h->glisted = 1;
		h->gnext = pk__gathered;
		pk__gathered = h;
	}
}

static int pk__name_is(const struct pk_http1_parser *p, struct pk_http1_span name, const char *s,
                       size_t n)
{
	return name.len == n && pk_http1_span_ieq(p, name, s);
}

/* What the message's Connection header names, worked out once per head. */
struct pk__conn_names {
	int mode;        /* 0: no Connection header; 1: exactly one token (tok); 2: anything else */
	const char *tok; /* mode 1 */
	size_t len;
};

static void pk__conn_names_init(const struct pk_http1_parser *p, struct pk__conn_names *cn)
{
	unsigned count = pk_http1_count(p, "connection");
	cn->mode = count == 0 ? 0 : 2;
	cn->tok = NULL;
	cn->len = 0;
	if (count != 1)
		return;
	size_t n = 0;
	const char *v = pk_http1_get(p, "connection", &n);
	if (v == NULL)
		return;
	while (n > 0 && (v[0] == ' ' || v[0] == '\t')) {
		v++;
		n--;
	}
	while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	if (n == 0 || memchr(v, ',', n) != NULL)
		return;
	cn->mode = 1;
	cn->tok = v;
	cn->len = n;
}

/* Whether a header is hop-by-hop. Dispatches on the name's length first: this runs for every
 * header of every request and answer. */
static int pk__is_hop(const struct pk_http1_parser *p, struct pk_http1_span name, int keep_upgrade,
                      const struct pk__conn_names *cn)
{
	switch (name.len) {
	case 2:
		if (pk__name_is(p, name, "te", 2))
			return 1;
		break;
	case 4:
		if (pk__name_is(p, name, "host", 4))
			return 0;
		break;
	case 7:
		if (pk__name_is(p, name, "trailer", 7))
			return 1;
		if (pk__name_is(p, name, "upgrade", 7))
			return !keep_upgrade;
		break;
	case 10:
		if (pk__name_is(p, name, "connection", 10) ||
		    pk__name_is(p, name, "keep-alive", 10))
			return 1;
		break;
	case 14:
		if (pk__name_is(p, name, "content-length", 14))
			return 0;
		break;
	case 16:
		if (pk__name_is(p, name, "proxy-connection", 16))
			return 1;
		break;
	case 17:
		if (pk__name_is(p, name, "transfer-encoding", 17))
			return 0;
		break;
	case 18:
		if (pk__name_is(p, name, "proxy-authenticate", 18))
			return 1;
		break;
	default:
		break;
	}
	/* Headers named in Connection are hop-by-hop too. */
	if (cn->mode == 0)
		return 0;
	if (cn->mode == 1)
		return name.len == cn->len &&
		       strncasecmp(pk_http1_ptr(p, name), cn->tok, cn->len) == 0;
	char nm[128];
	if (name.len >= sizeof(nm))
		return 0;
	memcpy(nm, pk_http1_ptr(p, name), name.len);
	nm[name.len] = 0;
	return pk_http1_has_token(p, "connection", nm);
}

static int pk__put(char *buf, size_t size, size_t *off, const char *s, size_t n)
{
	if (*off + n > size)
		return -1;
	memcpy(buf + *off, s, n);
	*off += n;
	return 0;
}

/* Copies every end-to-end header of p into buf. */
static int pk__put_headers(const struct pk_http1_parser *p, char *buf, size_t size, size_t *off)
{
	struct pk__conn_names cn;
	pk__conn_names_init(p, &cn);
	for (unsigned i = 0; i < p->n_headers; i++) {
		const struct pk_http1_header *hd = &p->headers[i];
		if (pk__is_hop(p, hd->name, 0, &cn))
			continue;
		if (pk__put(buf, size, off, pk_http1_ptr(p, hd->name), hd->name.len) < 0 ||
		    pk__put(buf, size, off, ": ", 2) < 0 ||
		    pk__put(buf, size, off, pk_http1_ptr(p, hd->value), hd->value.len) < 0 ||
		    pk__put(buf, size, off, "\r\n", 2) < 0)
			return -1;
	}
	return 0;
}

/* The request as the service gets it: same method, target and end-to-end headers, HTTP/1.1
 * keep-alive (no Connection: close), Connection: Upgrade for a WebSocket upgrade. */
static int pk__build_request(struct pk_strm *h)
{
	const struct pk_http1_parser *p = &h->req;
	size_t raw_len;
	pk_http1_raw_head(p, &raw_len);
	size_t size = raw_len + PK__HEAD_EXTRA, off = 0;
	char *buf = malloc(size);
	if (buf == NULL)
		return -1;
	char up[128];
	int ok = pk__put(buf, size, &off, pk_http1_ptr(p, p->method), p->method.len) == 0 &&
	         pk__put(buf, size, &off, " ", 1) == 0 &&
	         pk__put(buf, size, &off, pk_http1_ptr(p, p->target), p->target.len) == 0 &&
	         pk__put(buf, size, &off, " HTTP/1.1\r\n", 11) == 0 &&
	         pk__put_headers(p, buf, size, &off) == 0;
	if (ok && h->upgrade) {
		int n =
		    snprintf(up, sizeof(up), "Connection: Upgrade\r\nUpgrade: %s\r\n",
		             pk_http1_get_copy(p, "upgrade", up + 64, 64) ? up + 64 : "websocket");
		ok = n > 0 && pk__put(buf, size, &off, up, (size_t)n) == 0;
	}
	ok = ok && pk__put(buf, size, &off, "\r\n", 2) == 0;
	if (!ok) {
		free(buf);
		return -1;
	}
	h->head = buf;
	h->head_len = off;
	return 0;
}

static void pk__timeout(uv_timer_t *t)
{
	struct pk_strm *h = t->data;
	if (h == NULL)
		return;
	pk__enter(h);
	pk_log_warn(PK__LOG, "upstream timeout", "endpoint=%s method=%s path=%s timeout_ms=%llu",
	            h->env.listener->endpoint, h->method, h->path,
	            (unsigned long long)h->env.listener->timeout_ms);
	pk__answer_error(h, 504, "upstream timeout");
	pk__leave(h);
}

static int pk__connect(struct pk_strm *h)
{
	struct pk_net_conn *c = h->http ? pk__pool_get(h->env.pool) : NULL;
	h->reused = c != NULL;
	if (c) {
		pk_net_set_owner(c, &pk__conn_ops, h);
		pk_net_read_start(c);
		h->conn = c;
		return 0;
	}
	return pk_net_connect(h->env.loop, &h->env.listener->target, &pk__conn_ops, h, &h->conn);
}

/* Request body bytes (or spliced bytes before the 101) from the stream. */
static void pk__request_bytes(struct pk_strm *h, const uint8_t *d, size_t n)
{
	if (n == 0)
		return;
	if (h->upgrade || h->req_done || h->conn == NULL) {
		if (h->upgrade && h->conn && !h->req_done) {
			if (pk__write_conn(h, d, n) < 0)
				pk__reset(h);
		} else {
			/* nothing more belongs to the request */
			pk_yamux_consumed(h->env.ys, h->id, n);
		}
		return;
	}
	ssize_t k = pk_http1_body_feed(&h->reqbody, d, n);
	if (k < 0) {
		pk_yamux_consumed(h->env.ys, h->id, n);
		pk__answer_error(h, 400, "malformed request body");
		return;
	}
	if (k > 0 && pk__write_conn(h, d, (size_t)k) < 0) {
		pk_yamux_consumed(h->env.ys, h->id, n - (size_t)k);
		pk__reset(h);
		return;
	}
	if ((size_t)k < n)
		pk_yamux_consumed(h->env.ys, h->id, n - (size_t)k);
	if (h->reqbody.done)
		h->req_done = 1;
}

static void pk__start_exchange(struct pk_strm *h, const uint8_t *rest, size_t n)
{
	struct pk_http1_parser *p = &h->req;
	h->t0 = uv_now(h->env.loop);
	snprintf(h->method, sizeof(h->method), "%.*s", (int)p->method.len,
	         pk_http1_ptr(p, p->method));
	snprintf(h->path, sizeof(h->path), "%.*s", (int)p->target.len, pk_http1_ptr(p, p->target));
	h->upgrade = p->upgrade != 0;
	pk_log_debug(PK__LOG, "request started", "endpoint=%s stream=%u method=%s path=%s",
	             h->env.listener->endpoint, h->id, h->method, h->path);
	h->is_head = pk_http1_span_ieq(p, p->method, "HEAD");
	pk_http1_body_init_from(&h->reqbody, p);
	h->req_done = !h->upgrade && h->reqbody.done;
	if (pk__build_request(h) < 0) {
		pk_yamux_consumed(h->env.ys, h->id, n);
		pk__answer_error(h, 431, "request head too large");
		return;
	}
	h->phase = PK__H_WAIT;
	if (pk__connect(h) < 0 || pk_net_write1(h->conn, h->head, h->head_len, 0) < 0) {
		pk_yamux_consumed(h->env.ys, h->id, n);
		pk__answer_error(h, 502, "upstream unreachable");
		return;
	}
	h->timer = malloc(sizeof(*h->timer));
	if (h->timer) {
		uv_timer_init(h->env.loop, h->timer);
		h->timer->data = h;
		uv_timer_start(h->timer, pk__timeout, h->env.listener->timeout_ms, 0);
	}
	pk_http1_parser_init(&h->resp, PK_HTTP1_RESPONSE, NULL);
	pk_http1_parser_response_to_head(&h->resp, h->is_head);
	pk__request_bytes(h, rest, n);
}

/* ---- the answer from the service ---- */

/* The answer's head for the stream: status line, end-to-end headers (Upgrade kept for 101),
 * then `body` (the body bytes that came with the head), all in one frame: the server writes
 * a small answer to its client at once instead of head and body apart. */
static int pk__relay_head(struct pk_strm *h, const uint8_t *body, size_t body_len)
{
	const struct pk_http1_parser *p = &h->resp;
	size_t raw_len;
	pk_http1_raw_head(p, &raw_len);
	size_t size = raw_len + PK__HEAD_EXTRA + body_len, off = 0;
	char *buf = malloc(size);
	if (buf == NULL)
		return -1;
	char line[64];
	int n = snprintf(line, sizeof(line), "HTTP/1.1 %u ", p->status);
	int ok = pk__put(buf, size, &off, line, (size_t)n) == 0 &&
	         pk__put(buf, size, &off, pk_http1_ptr(p, p->reason), p->reason.len) == 0 &&
	         pk__put(buf, size, &off, "\r\n", 2) == 0 &&
	         pk__put_headers(p, buf, size, &off) == 0;
	if (ok && p->status == 101) {
		char up[64];
		n = snprintf(line, sizeof(line), "Connection: Upgrade\r\nUpgrade: %s\r\n",
		             pk_http1_get_copy(p, "upgrade", up, sizeof(up)) ? up : "websocket");
		ok = n > 0 && (size_t)n < sizeof(line) &&
		     pk__put(buf, size, &off, line, (size_t)n) == 0;
	}
	ok = ok && pk__put(buf, size, &off, "\r\n", 2) == 0 &&
	     (body_len == 0 || pk__put(buf, size, &off, (const char *)body, body_len) == 0);
	if (ok)
		pk__to_stream(h, (const uint8_t *)buf, off);
	free(buf);
	return ok ? 0 : -1;
}

/* The exchange is over on the service side: pool the connection or close it. */
static void pk__release_conn(struct pk_strm *h)
{
	if (h->conn == NULL)
		return;
	/* Pooled only when it is in step: the request went out whole and nothing is queued. */
	if (h->reusable && h->req_done && h->credit_out == 0 && pk_net_queued(h->conn) == 0 &&
	    !h->conn_eof) {
		struct pk_net_conn *c = h->conn;
		h->conn = NULL;
		pk__pool_put(h->env.pool, c);
		return;
	}
	pk__drop_conn(h);
}

static void pk__answer_done(struct pk_strm *h)
{
	h->resp_done = 1;
	h->phase = PK__H_DONE;
	pk__fin(h);
	pk__access_log(h);
	pk__release_conn(h);
}

static void pk__answer_body(struct pk_strm *h, const uint8_t *d, size_t n)
{
	ssize_t k = pk_http1_body_feed(&h->respbody, d, n);
	if (k < 0) {
		pk__reset(h); /* cannot frame it: the client sees a cut answer */
		return;
	}
	pk__to_stream(h, d, (size_t)k);
	if ((size_t)k < n)
		h->reusable = 0; /* bytes past the answer: the connection is out of step */
	if (h->respbody.done && !h->gone)
		pk__answer_done(h);
}

static void pk__answer_head(struct pk_strm *h, const uint8_t *d, size_t n)
{
	size_t used = 0;
	int r = pk_http1_parser_feed(&h->resp, d, n, &used);
	if (r == 0)
		return;
	if (r < 0) {
		pk_log_warn(PK__LOG, "bad answer from the service", "endpoint=%s reason=%s",
		            h->env.listener->endpoint,
		            h->resp.error_reason ? h->resp.error_reason : "");
		pk__answer_error(h, 502, "upstream unreachable");
		return;
	}
	struct pk_http1_parser *p = &h->resp;
	h->status = p->status;
	if (p->status == 101 && !h->upgrade) {
		pk__answer_error(h, 502, "upstream unreachable");
		return;
	}
	if (p->status >= 100 && p->status < 200 && p->status != 101) {
		/* Interim answer (100 Continue): relay it as it is, the final one follows. */
		size_t len;
		const char *raw = pk_http1_raw_head(p, &len);
		pk__to_stream(h, (const uint8_t *)raw, len);
		pk_http1_parser_reset(p);
		pk_http1_parser_response_to_head(p, h->is_head);
		if (used < n)
			pk__answer_head(h, d + used, n - used);
		return;
	}
	pk__timer_stop(h);
	if (p->status == 101) {
		if (pk__relay_head(h, NULL, 0) < 0) {
			pk__reset(h);
			return;
		}
		if (h->gone)
			return;
		h->phase = PK__H_SPLICE;
		h->req_done = 1;
		pk__access_log(h);
		if (used < n)
			pk__to_stream(h, d + used, n - used);
		if (h->peer_fin && h->conn)
			pk_net_shutdown(h->conn);
		return;
	}
	h->phase = PK__H_BODY;
	h->reusable = p->keep_alive && !h->upgrade;
	pk_http1_body_init_from(&h->respbody, p);
	if (h->respbody.kind == PK_HTTP1_BODY_UNTIL_CLOSE)
		h->reusable = 0;
	size_t rest = n - used;
	ssize_t k = 0;
	if (!h->respbody.done && rest > 0) {
		k = pk_http1_body_feed(&h->respbody, d + used, rest);
		if (k < 0) { /* cannot frame it; nothing was relayed yet */
			pk_log_warn(PK__LOG, "bad answer from the service", "endpoint=%s reason=%s",
			            h->env.listener->endpoint, "malformed chunked body");
			pk__answer_error(h, 502, "upstream unreachable");
			return;
		}
	}
	if (pk__relay_head(h, d + used, (size_t)k) < 0) {
		pk__reset(h);
		return;
	}
	if (h->gone)
		return;
	if ((size_t)k < rest)
		h->reusable = 0; /* bytes past the answer: the connection is out of step */
	if (h->respbody.done)
		pk__answer_done(h);
}

/* A reused connection the service had closed: try once more on a fresh one, but only when
 * nothing but the head was sent (no body that would have to be replayed). */
static int pk__retry(struct pk_strm *h)
{
	if (!h->reused || h->retried || h->answered || h->upgrade ||
	    h->reqbody.kind != PK_HTTP1_BODY_NONE)
		return 0;
	h->retried = 1;
	pk_net_close(h->conn);
	h->conn = NULL;
	h->reused = 0;
	pk_http1_parser_reset(&h->resp);
	pk_http1_parser_response_to_head(&h->resp, h->is_head);
	if (pk_net_connect(h->env.loop, &h->env.listener->target, &pk__conn_ops, h, &h->conn) < 0 ||
	    pk_net_write1(h->conn, h->head, h->head_len, 0) < 0)
		return 0;
	return 1;
}

/* ---- connection callbacks ---- */

static void pk__c_connect(struct pk_net_conn *c, int err)
{
	struct pk_strm *h = pk_net_ud(c);
	if (err == 0)
		return;
	pk__enter(h);
	pk_log_warn(PK__LOG, "cannot reach the service", "endpoint=%s addr=%s error=%s",
	            h->env.listener->endpoint, h->env.listener->addr, uv_strerror(err));
	if (h->http)
		pk__answer_error(h, 502, "upstream unreachable");
	else
		pk__reset(h);
	pk__leave(h);
}

static void pk__c_read(struct pk_net_conn *c, uint8_t *d, size_t n)
{
	struct pk_strm *h = pk_net_ud(c);
	pk__enter(h);
	switch (h->phase) {
	case PK__H_WAIT:
		pk__answer_head(h, d, n);
		break;
	case PK__H_BODY:
		pk__answer_body(h, d, n);
		break;
	case PK__H_SPLICE:
		pk__to_stream(h, d, n);
		break;
	default:
		h->reusable = 0;
		break;
	}
	pk__leave(h);
}

static void pk__c_eof(struct pk_net_conn *c)
{
	struct pk_strm *h = pk_net_ud(c);
	pk__enter(h);
	h->conn_eof = 1;
	switch (h->phase) {
	case PK__H_WAIT:
		if (!pk__retry(h))
			pk__answer_error(h, 502, "upstream unreachable");
		break;
	case PK__H_BODY:
		if (h->respbody.kind == PK_HTTP1_BODY_UNTIL_CLOSE) {
			h->reusable = 0;
			pk__answer_done(h);
		} else {
			pk__reset(h); /* the answer was cut short */
		}
		break;
	case PK__H_SPLICE:
		pk__fin(h);
		break;
	default:
		break;
	}
	pk__leave(h);
}

static void pk__c_error(struct pk_net_conn *c, int err)
{
	struct pk_strm *h = pk_net_ud(c);
	pk__enter(h);
	pk_log_debug(PK__LOG, "service connection failed", "endpoint=%s error=%s",
	             h->env.listener->endpoint, uv_strerror(err));
	if (h->phase == PK__H_WAIT) {
		if (!pk__retry(h))
			pk__answer_error(h, 502, "upstream unreachable");
	} else if (h->gone || h->phase == PK__H_DONE) {
		pk__drop_conn(h);
	} else {
		pk__reset(h);
	}
	pk__leave(h);
}

static void pk__c_written(struct pk_net_conn *c, size_t credit)
{
	struct pk_strm *h = pk_net_ud(c);
	if (credit == 0)
		return;
	pk__enter(h);
	h->credit_out = credit > h->credit_out ? 0 : h->credit_out - credit;
	if (!h->gone)
		pk_yamux_consumed(h->env.ys, h->id, credit);
	pk__leave(h);
}

/* Our half-close towards the service is out: a finished splice may close now. */
static void pk__c_shutdown(struct pk_net_conn *c)
{
	struct pk_strm *h = pk_net_ud(c);
	pk__enter(h);
	h->linger = 1;
	if (h->gone)
		pk__drop_conn(h);
	pk__leave(h);
}

static const struct pk_net_ops pk__conn_ops = {
    .on_connect = pk__c_connect,
    .on_read = pk__c_read,
    .on_eof = pk__c_eof,
    .on_error = pk__c_error,
    .on_written = pk__c_written,
    .on_shutdown = pk__c_shutdown,
};

/* ---- stream callbacks ---- */

struct pk_strm *pk_strm_new(const struct pk_strm_env *env, uint32_t id)
{
	struct pk_strm *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return NULL;
	h->env = *env;
	h->id = id;
	pk_net_on_read_done(pk__gather_flush_all);
	h->http = env->listener->protocol == PK_CONF_HTTP;
	if (h->http) {
		pk_http1_parser_init(&h->req, PK_HTTP1_REQUEST, NULL);
		h->phase = PK__H_HEAD;
	} else {
		h->phase = PK__H_SPLICE;
		h->t0 = uv_now(env->loop);
		int r = pk__connect(h);
		if (r < 0) {
			pk_log_warn(PK__LOG, "cannot reach the service",
			            "endpoint=%s addr=%s error=%s", env->listener->endpoint,
			            env->listener->addr, uv_strerror(r));
			free(h);
			return NULL;
		}
	}
	pk__strm_live++;
	h->next = pk__strm_list;
	if (pk__strm_list)
		pk__strm_list->prev = h;
	pk__strm_list = h;
	return h;
}

void pk_strm_close_all(void)
{
	struct pk_strm *h = pk__strm_list;
	while (h) {
		struct pk_strm *n = h->next;
		if (h->gone && h->busy == 0) {
			pk__drop_conn(h);
			pk__maybe_free(h);
		}
		h = n;
	}
}

static void pk__head_bytes(struct pk_strm *h, const uint8_t *d, size_t n)
{
	size_t used = 0;
	int r = pk_http1_parser_feed(&h->req, d, n, &used);
	pk_yamux_consumed(h->env.ys, h->id, r == 1 ? used : n);
	if (r == 0)
		return;
	if (r < 0) {
		h->t0 = uv_now(h->env.loop);
		pk__answer_error(h, h->req.error_status ? (unsigned)h->req.error_status : 400,
		                 h->req.error_reason ? h->req.error_reason : "bad request");
		return;
	}
	pk__start_exchange(h, d + used, n - used);
}

void pk_strm_data(struct pk_strm *h, const uint8_t *d, size_t n)
{
	pk__enter(h);
	switch (h->phase) {
	case PK__H_HEAD:
		pk__head_bytes(h, d, n);
		break;
	case PK__H_SPLICE:
		if (h->conn == NULL)
			pk_yamux_consumed(h->env.ys, h->id, n);
		else
			pk__gather(h, d, n);
		break;
	case PK__H_WAIT:
	case PK__H_BODY:
		pk__request_bytes(h, d, n);
		break;
	default:
		pk_yamux_consumed(h->env.ys, h->id, n);
		break;
	}
	pk__leave(h);
}

void pk_strm_fin(struct pk_strm *h)
{
	pk__enter(h);
	h->peer_fin = 1;
	switch (h->phase) {
	case PK__H_HEAD:
		pk__reset(h); /* the request ended inside its head */
		break;
	case PK__H_SPLICE:
		if (h->conn) {
			pk__gather_flush(h); /* the half-close goes after them */
			if (h->conn)
				pk_net_shutdown(h->conn);
		}
		break;
	case PK__H_WAIT:
	case PK__H_BODY:
		if (!h->req_done && !h->upgrade)
			pk__reset(h); /* the request body was cut short */
		break;
	default:
		break;
	}
	pk__leave(h);
}

void pk_strm_window(struct pk_strm *h)
{
	pk__enter(h);
	pk__flush(h);
	pk__leave(h);
}

void pk_strm_gone(struct pk_strm *h)
{
	pk__enter(h);
	h->gone = 1;
	int reset = !(h->our_fin && h->peer_fin);
	if (reset && h->phase != PK__H_DONE) {
		pk__timer_stop(h);
		if (h->status == 0)
			h->status = 499;
		pk__access_log(h);
	}
	/* A finished splice whose last bytes are still being written to the service lingers
	 * until its half-close is out (pk__c_shutdown); anything else is over. */
	if (reset || h->phase != PK__H_SPLICE || h->linger)
		pk__drop_conn(h);
	else
		pk__gather_flush(h);
	pk__leave(h);
}
