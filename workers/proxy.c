/* The proxy port (DESIGN.md section 5, PROTOCOL.md sections 4-5).
 *
 * A client connection reads one request head, finds the endpoint, picks a tunnel (local
 * ones first, the less loaded of two random candidates), and either serves the request on
 * a stream of that tunnel or hands the socket to the worker holding the tunnel. The request
 * head is rewritten for the upstream and the body relayed byte-exact with its framing; the
 * response head is rewritten for the client (hop-by-hop headers dropped) and its body
 * relayed the same way, after which the connection serves the next request.
 *
 * Flow control is end to end: client bytes are read only while the stream takes them, and
 * stream bytes are reported consumed only once written to the client, so neither a slow
 * client nor a slow upstream makes pikod buffer more than a window.
 */
#include "workers/proxy.h"

#include "common/log.h"
#include "proto/http1.h"
#include "proto/jwt.h"
#include "proto/websocket.h"
#include "shm/counters.h"
#include "shm/routes.h"
#include "workers/handoff.h"
#include "workers/tunnel.h"
#include "workers/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PK__LOG            "proxy"
#define PK__READ_CHUNK     (64 * 1024)
#define PK__MAX_CANDIDATES 64
#define PK__WAIT_POLL_MS   20
/* TCP endpoint: how long the client may take to answer our close frame with its own. */
#define PK__CLOSE_WAIT_MS    10000
#define PK__TCP_PREFIX       "/_piko/v1/tcp/"
#define PK__MAX_HOPS         2
#define PK__HANDOFF_RETRY_MS 2000
#define PK__MAX_PIPELINED    (64 * 1024) /* bytes of later requests read ahead */

enum pk__pstate {
	PK__P_HEAD,     /* reading a request head */
	PK__P_WAIT,     /* waiting for an upstream to register */
	PK__P_EXCHANGE, /* request sent or being sent, response being relayed */
	PK__P_SPLICE,   /* upgraded: raw bytes both ways */
	PK__P_TCP,      /* /_piko/v1/tcp/: WebSocket frames <-> stream bytes */
	PK__P_CLOSING,
};

struct pk__pconn;

/* One request's stream. Outlives the request when the stream is not finished yet (the
 * agent's FIN may come after the response): then pc is NULL and it only waits to go. */
struct pk__xchg {
	struct pk__pconn *pc;
	struct pk_tunnel *t; /* NULL once the stream is gone */
	uint32_t sid;
	unsigned writes; /* client writes that will report consumption */
	int gone;        /* the stream is finished or reset: free when writes == 0 */
};

static void pk__x_put(struct pk__xchg *x)
{
	if (x->gone && x->writes == 0)
		free(x);
}

struct pk__pconn {
	struct pk_worker *w;
	uv_tcp_t tcp;
	uv_timer_t timer;
	int handles;
	enum pk__pstate state;
	struct pk__pconn *next, *prev;
	char client[80];
	char client_ip[64];
	unsigned requests;
	int hops; /* handoffs this connection went through */
	int https;
	int tcp_mode; /* the request is GET /_piko/v1/tcp/<endpoint> */
	int reading;
	int client_eof;
	int fin_after_dec; /* TCP endpoint: the client's close frame came; FIN once dec[] is sent */
	int close_after;   /* close once the current response is out */
	int shutting;

	/* client input not yet used: in[0..in_len) */
	uint8_t *in;
	size_t in_len, in_cap;
	size_t parsed; /* of in[], bytes already fed to the head parser */

	struct pk_http1_parser req;
	struct pk_http1_body reqbody;
	int req_head_done;
	int req_body_done;
	size_t pending_body; /* framed body bytes at the front of in[] not yet sent */
	char endpoint[PK_ROUTE_MAX_ENDPOINT + 1];
	uint64_t wait_until_ms;
	uint64_t started_ms;
	uint64_t hint_tunnel; /* tunnel chosen by the worker that handed us over */

	struct pk__xchg *x;
	uint8_t *fwd; /* proxied head still to send */
	size_t fwd_len, fwd_off;

	struct pk_http1_parser resp;
	struct pk_http1_body respbody;
	int resp_head_done;
	int resp_done;
	int upstream_fin;
	int shut_done; /* our half-close towards the client is out */
	int status;
	int inflight;        /* counted in the in-flight gauge */
	uint64_t tunnel_id;  /* of the current request's stream */
	uint64_t req_bytes;  /* request body bytes sent upstream */
	uint64_t resp_bytes; /* response bytes written to the client */

	size_t out_pending; /* bytes written to the client, not yet completed */
	int settle_queued;  /* on pk__settle_head: a write finished at once */
	struct pk__pconn *settle_next;

	/* /_piko/v1/tcp/ */
	struct pk_ws ws;
	uint8_t *dec; /* decoded client payload not yet taken by the stream */
	size_t dec_len, dec_off;
};

struct pk__cwrite {
	uv_write_t req;
	struct pk__pconn *pc;
	struct pk__xchg *x; /* consumption to report, or NULL */
	size_t consumed;
	size_t len;
	uint8_t data[];
};

static struct pk__pconn *pk__conns;

/* Connections whose last write went out whole at once (uv_try_write). What its completion
 * would have done next (the next request, or the shutdown) runs before the loop polls again
 * (a prepare handle), not inside the caller. An idle handle would make that poll return at
 * once: a turn of the loop more, and a system call, for every answer. */
static struct pk__pconn *pk__settle_head;
static uv_prepare_t pk__settle_prep;
static int pk__settle_ready;

static void pk__pump(struct pk__pconn *pc);
static void pk__next_request(struct pk__pconn *pc);
static void pk__route(struct pk__pconn *pc);
static void pk__close(struct pk__pconn *pc);

/* ---- connection lifetime ---- */

static void pk__handle_closed(uv_handle_t *h)
{
	struct pk__pconn *pc = h->data;
	if (--pc->handles > 0)
		return;
	struct pk_worker *w = pc->w;
	if (pc->settle_queued) {
		struct pk__pconn **pp = &pk__settle_head;
		while (*pp != pc)
			pp = &(*pp)->settle_next;
		*pp = pc->settle_next;
	}
	if (pc->prev)
		pc->prev->next = pc->next;
	else
		pk__conns = pc->next;
	if (pc->next)
		pc->next->prev = pc->prev;
	pk_http1_parser_free(&pc->req);
	pk_http1_parser_free(&pc->resp);
	free(pc->in);
	free(pc->fwd);
	free(pc->dec);
	free(pc);
	w->proxy_conns--;
	pk_counters_gauge_add(w->ctr, w->slot, PK_CTR_G_CONNECTIONS, -1);
	pk_worker_check_drained(w);
}

/* Drops the current exchange's stream: detached if it may still get the agent's FIN,
 * reset when the request was abandoned. The FIN after a complete HTTP answer tells the
 * agent nothing it waits for: it goes with the next frames for the agent. */
static void pk__drop_xchg(struct pk__pconn *pc, int abort)
{
	struct pk__xchg *x = pc->x;
	if (x == NULL)
		return;
	pc->x = NULL;
	x->pc = NULL;
	int lazy = pc->resp_done && !pc->tcp_mode;
	if (!abort && x->t &&
	    (lazy ? pk_tunnel_stream_fin_lazy(x->t, x->sid) : pk_tunnel_stream_fin(x->t, x->sid)) ==
	        0)
		return; /* detached: freed when the agent's side ends (pk__x_on_close) */
	if (x->t)
		pk_tunnel_stream_reset(x->t, x->sid);
	x->t = NULL;
	x->gone = 1;
	pk__x_put(x);
}

static void pk__close(struct pk__pconn *pc)
{
	if (pc->state == PK__P_CLOSING)
		return;
	pc->state = PK__P_CLOSING;
	pk__drop_xchg(pc, !pc->resp_done);
	if (pc->inflight) {
		pc->inflight = 0;
		pk_counters_gauge_add(pc->w->ctr, pc->w->slot, PK_CTR_G_REQUESTS_INFLIGHT, -1);
	}
	uv_close((uv_handle_t *)&pc->tcp, pk__handle_closed);
	uv_close((uv_handle_t *)&pc->timer, pk__handle_closed);
}

static void pk__close_wait_timeout(uv_timer_t *t)
{
	pk__close(t->data);
}

/* TCP endpoint: the connection ends once both close frames are through (ours out, the
 * client's taken and turned into the stream's FIN after its last bytes), so neither what
 * the service sent last nor what the client sent last is cut off. */
static void pk__tcp_maybe_done(struct pk__pconn *pc)
{
	if (pc->state != PK__P_TCP || !pc->shut_done)
		return;
	if (pc->client_eof && !pc->fin_after_dec)
		pk__close(pc);
	else if (!pc->client_eof)
		uv_timer_start(&pc->timer, pk__close_wait_timeout, PK__CLOSE_WAIT_MS, 0);
}

static void pk__after_shutdown(uv_shutdown_t *req, int status)
{
	struct pk__pconn *pc = req->data;
	free(req);
	if (pc->state == PK__P_CLOSING)
		return;
	pc->shut_done = 1;
	if (status >= 0 && pc->state == PK__P_TCP) {
		pk__tcp_maybe_done(pc);
		return;
	}
	if (status < 0 || pc->client_eof || pc->state != PK__P_SPLICE) {
		pk__close(pc);
	}
}

/* Half-closes towards the client once everything queued is written. */
static void pk__shutdown(struct pk__pconn *pc)
{
	if (pc->shutting || pc->state == PK__P_CLOSING)
		return;
	pc->shutting = 1;
	uv_shutdown_t *req = malloc(sizeof(*req));
	if (req == NULL) {
		pk__close(pc);
		return;
	}
	req->data = pc;
	if (uv_shutdown(req, (uv_stream_t *)&pc->tcp, pk__after_shutdown) < 0) {
		free(req);
		pk__close(pc);
	}
}

/* ---- writing to the client ---- */

/* Once everything written so far is out: the next request, or the shutdown. */
static void pk__written(struct pk__pconn *pc)
{
	if (pc->out_pending == 0 && pc->resp_done && pc->state == PK__P_EXCHANGE) {
		if (pc->close_after)
			pk__shutdown(pc);
		else
			pk__next_request(pc);
	}
}

static int pk__settling;

/* Until nothing is left to settle: a pipelined request routed here has frames for its
 * agent, which go before the poll too (whether or not the tunnels' own prepare handle has
 * run this turn), and writing those can wake streams that answer their clients at once. */
static void pk__settle_run(void)
{
	if (pk__settling)
		return;
	pk__settling = 1;
	do {
		while (pk__settle_head != NULL) {
			struct pk__pconn *pc = pk__settle_head;
			pk__settle_head = pc->settle_next;
			pc->settle_queued = 0;
			if (pc->state != PK__P_CLOSING)
				pk__written(pc);
		}
		pk_tunnel_flush_pending();
	} while (pk__settle_head != NULL);
	pk__settling = 0;
	uv_prepare_stop(&pk__settle_prep);
}

static void pk__settle_all(uv_prepare_t *h)
{
	(void)h;
	pk__settle_run();
}

/* The tunnels' prepare handle may run after this one in the same turn; a client write it
 * leads to would otherwise settle only after the poll. */
static void pk__settle_after_flush(void)
{
	if (pk__settle_head != NULL)
		pk__settle_run();
}

static void pk__settle_later(struct pk__pconn *pc)
{
	if (pc->settle_queued)
		return;
	if (!pk__settle_ready) {
		uv_prepare_init(pc->w->loop, &pk__settle_prep);
		pk_tunnel_after_flush(pk__settle_after_flush);
		pk__settle_ready = 1;
	}
	pc->settle_queued = 1;
	pc->settle_next = pk__settle_head;
	pk__settle_head = pc;
	uv_prepare_start(&pk__settle_prep, pk__settle_all);
}

static void pk__cwrite_done(uv_write_t *req, int status)
{
	struct pk__cwrite *wr = (struct pk__cwrite *)req;
	struct pk__pconn *pc = wr->pc;
	pc->out_pending -= wr->len;
	pk_counters_worker_add(pc->w->ctr, pc->w->worker_index, PK_CTR_W_BYTES_OUT, wr->len);
	if (wr->x) {
		struct pk__xchg *x = wr->x;
		x->writes--;
		if (!x->gone && x->t && status == 0)
			pk_tunnel_stream_consumed(x->t, x->sid, wr->consumed);
		pk__x_put(x);
	}
	free(wr);
	if (pc->state == PK__P_CLOSING)
		return;
	if (status < 0) {
		pk__close(pc);
		return;
	}
	pk__written(pc);
}

/* Writes what the socket takes now straight from the caller's buffers (most responses: no
 * copy, no write request, and none of the epoll re-arming a uv_write completion costs).
 * Returns the bytes written (the rest is for pk__cwrite to queue) or a libuv error. */
static int pk__cwrite_now(struct pk__pconn *pc, const void *a, size_t alen, const void *b,
                          size_t blen, size_t consumed)
{
	uv_buf_t bufs[2] = {uv_buf_init((char *)a, (unsigned)alen),
	                    uv_buf_init((char *)b, (unsigned)blen)};
	int n = uv_try_write((uv_stream_t *)&pc->tcp, bufs, blen ? 2 : 1);

	if (n == UV_EAGAIN)
		return 0;
	if (n < 0)
		return n;
	pk_counters_worker_add(pc->w->ctr, pc->w->worker_index, PK_CTR_W_BYTES_OUT, (uint64_t)n);
	if ((size_t)n < alen + blen)
		return n;
	struct pk__xchg *x = pc->x;
	if (consumed && x && !x->gone && x->t)
		pk_tunnel_stream_consumed(x->t, x->sid, consumed);
	pk__settle_later(pc);
	return n;
}

/* Queues bytes to the client; `consumed` stream bytes are reported once written. */
static int pk__cwrite(struct pk__pconn *pc, const void *a, size_t alen, const void *b, size_t blen,
                      size_t consumed)
{
	if (pc->out_pending == 0) {
		int n = pk__cwrite_now(pc, a, alen, b, blen, consumed);
		if (n < 0)
			return n;
		if ((size_t)n == alen + blen)
			return 0;
		size_t skip_a = (size_t)n < alen ? (size_t)n : alen;
		a = (const uint8_t *)a + skip_a;
		alen -= skip_a;
		if ((size_t)n > skip_a) {
			b = (const uint8_t *)b + ((size_t)n - skip_a);
			blen -= (size_t)n - skip_a;
		}
	}
	struct pk__cwrite *wr = malloc(sizeof(*wr) + alen + blen);
	if (wr == NULL)
		return -ENOMEM;
	memcpy(wr->data, a, alen);
	if (blen)
		memcpy(wr->data + alen, b, blen);
	wr->pc = pc;
	wr->x = consumed ? pc->x : NULL;
	wr->consumed = consumed;
	if (wr->x)
		wr->x->writes++;
	wr->len = alen + blen;
	uv_buf_t buf = uv_buf_init((char *)wr->data, (unsigned)wr->len);
	int rc = uv_write(&wr->req, (uv_stream_t *)&pc->tcp, &buf, 1, pk__cwrite_done);
	if (rc < 0) {
		if (wr->x)
			wr->x->writes--;
		free(wr);
		return rc;
	}
	pc->out_pending += wr->len;
	return 0;
}

/* Appends `,"<key>":{"name":"value",...}` for the allow-listed headers of p. */
static size_t pk__log_headers(char *buf, size_t size, const char *key,
                              const struct pk_http1_parser *p, const struct pk_strlist *allow)
{
	size_t n = 0;
	int first = 1;
	if (allow->count == 0 || p == NULL || size < 64)
		return 0;
	n += (size_t)snprintf(buf, size, ",\"%s\":{", key);
	for (int i = 0; i < allow->count && n < size - 32; i++) {
		for (int h = pk_http1_find(p, allow->items[i], 0); h >= 0;
		     h = pk_http1_find(p, allow->items[i], h + 1)) {
			if (n >= size - 32)
				break;
			if (!first)
				buf[n++] = ',';
			first = 0;
			n += pk_json_escape(buf + n, size - n, allow->items[i],
			                    strlen(allow->items[i]));
			if (n >= size - 8)
				break;
			buf[n++] = ':';
			n += pk_json_escape(buf + n, size - n, pk_http1_ptr(p, p->headers[h].value),
			                    p->headers[h].value.len);
			break; /* the first value of each listed header */
		}
	}
	if (n >= size - 2)
		return 0; /* too much to log whole: leave the headers out */
	buf[n++] = '}';
	buf[n] = '\0';
	return n;
}

static void pk__finish_request(struct pk__pconn *pc)
{
	struct pk_worker *w = pc->w;
	uint64_t now = pk_worker_now_ms();
	size_t mlen = pc->req_head_done ? pc->req.method.len : 0;
	const char *m = pc->req_head_done ? pk_http1_ptr(&pc->req, pc->req.method) : "";
	pk_counters_request_done(w->ctr, w->worker_index,
	                         mlen ? pk_counters_method(m, mlen) : PK_CTR_M_OTHER, pc->status,
	                         (now - pc->started_ms) * 1000);
	pk_counters_request_sizes(w->ctr, w->worker_index, pc->req_bytes, pc->resp_bytes);
	if (pc->inflight) {
		pc->inflight = 0;
		pk_counters_gauge_add(w->ctr, w->slot, PK_CTR_G_REQUESTS_INFLIGHT, -1);
	}
	if (w->cfg->proxy_access_log_disable)
		return;
	char fields[8192], target[2048];
	size_t tlen = pc->req_head_done ? pc->req.target.len : 0;
	pk_json_escape(target, sizeof(target),
	               pc->req_head_done ? pk_http1_ptr(&pc->req, pc->req.target) : "",
	               tlen > 1024 ? 1024 : tlen);
	char method[40];
	pk_json_escape(method, sizeof(method), m, mlen > 16 ? 16 : mlen);
	int n = snprintf(fields, sizeof(fields),
	                 ",\"endpoint\":\"%s\",\"method\":%s,\"path\":%s,\"status\":%d,"
	                 "\"duration_ms\":%llu,\"request_bytes\":%llu,\"response_bytes\":%llu,"
	                 "\"client\":\"%s\",\"tunnel_id\":%llu,\"handoffs\":%d",
	                 pc->endpoint, method, target, pc->status,
	                 (unsigned long long)(now - pc->started_ms),
	                 (unsigned long long)pc->req_bytes, (unsigned long long)pc->resp_bytes,
	                 pc->client, (unsigned long long)pc->tunnel_id, pc->hops);
	if (n > 0 && (size_t)n < sizeof(fields)) {
		size_t len = (size_t)n;
		len += pk__log_headers(fields + len, sizeof(fields) - len, "request_headers",
		                       pc->req_head_done ? &pc->req : NULL,
		                       &w->cfg->proxy_access_log_request_headers);
		pk__log_headers(fields + len, sizeof(fields) - len, "response_headers",
		                pc->resp_head_done ? &pc->resp : NULL,
		                &w->cfg->proxy_access_log_response_headers);
	}
	pk_log_raw(pc->status >= 500 ? PK_LOG_WARN : PK_LOG_INFO, "proxy.access", "request",
	           fields);
}

/* Answers the current request with a JSON error. */
static void pk__fail(struct pk__pconn *pc, int status, const char *msg)
{
	char buf[512];
	int close = pc->close_after || !pc->req_head_done || !pc->req_body_done ||
	            pc->w->draining || pc->state == PK__P_TCP;
	ssize_t n = pk_http1_build_error(buf, sizeof(buf), (unsigned)status, msg, close);
	pk__drop_xchg(pc, 1);
	uv_timer_stop(&pc->timer);
	pc->status = status;
	pc->close_after = close;
	pc->resp_done = 1;
	pc->state = PK__P_EXCHANGE;
	if (pc->req_head_done)
		pk__finish_request(pc);
	if (n < 0 || pk__cwrite(pc, buf, (size_t)n, NULL, 0, 0) < 0)
		pk__close(pc);
}

/* ---- reading from the client ---- */

/* A TCP endpoint connection's bytes are decoded and sent on inside the read callback
 * (pk__pump_tcp leaves nothing in in[]; what the stream cannot take is copied to dec[]),
 * so they are read into one buffer of the worker's, in reads large enough that each
 * becomes one large frame to the agent, written without a copy (workers/tunnel.c). */
#define PK__TCP_READ (256 * 1024)
static uint8_t pk__tcp_rbuf[PK__TCP_READ];

static void pk__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct pk__pconn *pc = h->data;
	if (pc->state == PK__P_TCP && pc->in_len == 0) {
		*b = uv_buf_init((char *)pk__tcp_rbuf, sizeof(pk__tcp_rbuf));
		return;
	}
	if (pc->in_cap - pc->in_len < PK__READ_CHUNK) {
		size_t cap = pc->in_len + PK__READ_CHUNK;
		uint8_t *n = realloc(pc->in, cap);
		if (n == NULL) {
			*b = uv_buf_init(NULL, 0);
			return;
		}
		pc->in = n;
		pc->in_cap = cap;
	}
	*b = uv_buf_init((char *)pc->in + pc->in_len, (unsigned)(pc->in_cap - pc->in_len));
}

static void pk__read_stop(struct pk__pconn *pc)
{
	if (pc->reading) {
		uv_read_stop((uv_stream_t *)&pc->tcp);
		pc->reading = 0;
	}
}

static void pk__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void pk__read_start(struct pk__pconn *pc)
{
	if (!pc->reading && !pc->client_eof && pc->state != PK__P_CLOSING) {
		if (uv_read_start((uv_stream_t *)&pc->tcp, pk__alloc, pk__on_read) == 0)
			pc->reading = 1;
	}
}

static void pk__consume_in(struct pk__pconn *pc, size_t n)
{
	memmove(pc->in, pc->in + n, pc->in_len - n);
	pc->in_len -= n;
	pc->parsed = pc->parsed > n ? pc->parsed - n : 0;
}

/* ---- stream callbacks ---- */

static void pk__x_on_data(void *ud, const uint8_t *data, size_t len);
static void pk__x_on_fin(void *ud);
static void pk__x_on_close(void *ud, int err);
static void pk__x_on_writable(void *ud);

static const struct pk_tstream_ops pk__xops = {
    .on_data = pk__x_on_data,
    .on_fin = pk__x_on_fin,
    .on_close = pk__x_on_close,
    .on_writable = pk__x_on_writable,
};

static int pk__is_hop(const struct pk_http1_parser *p, const struct pk_http1_header *h)
{
	switch ((enum pk_http1_known)h->known) {
	case PK_H_CONNECTION:
	case PK_H_KEEP_ALIVE:
	case PK_H_PROXY_CONNECTION:
	case PK_H_TE:
	case PK_H_TRAILER:
	case PK_H_UPGRADE:
		return 1;
	case PK_H_CONTENT_LENGTH:
	case PK_H_TRANSFER_ENCODING:
		return 0; /* framing stays whatever Connection says */
	default:
		break;
	}
	/* headers named in Connection */
	const char *name = pk_http1_ptr(p, h->name);
	for (int i = pk_http1_find_known(p, PK_H_CONNECTION, 0); i >= 0;
	     i = pk_http1_find_known(p, PK_H_CONNECTION, i + 1)) {
		const char *v = pk_http1_ptr(p, p->headers[i].value);
		size_t vlen = p->headers[i].value.len, pos = 0;
		while (pos < vlen) {
			while (pos < vlen && (v[pos] == ' ' || v[pos] == ',' || v[pos] == '\t'))
				pos++;
			size_t start = pos;
			while (pos < vlen && v[pos] != ',' && v[pos] != ' ' && v[pos] != '\t')
				pos++;
			if (pos > start && pos - start == h->name.len &&
			    strncasecmp(v + start, name, h->name.len) == 0)
				return 1;
		}
	}
	return 0;
}

/* The response head for the client: status line, the upstream's headers minus hop-by-hop
 * ones, and our Connection decision. */
static ssize_t pk__client_head(struct pk__pconn *pc, char *buf, size_t size)
{
	const struct pk_http1_parser *p = &pc->resp;
	size_t n = 0;
	const char *reason = pk_http1_ptr(p, p->reason);
	int w = snprintf(buf, size, "HTTP/1.1 %u %.*s\r\n", p->status, (int)p->reason.len, reason);
	if (w < 0 || (size_t)w >= size)
		return -ENOSPC;
	n = (size_t)w;
	for (unsigned i = 0; i < p->n_headers; i++) {
		const struct pk_http1_header *h = &p->headers[i];
		if (pk__is_hop(p, h))
			continue;
		size_t need = h->name.len + 2 + h->value.len + 2;
		if (n + need >= size)
			return -ENOSPC;
		memcpy(buf + n, pk_http1_ptr(p, h->name), h->name.len);
		n += h->name.len;
		memcpy(buf + n, ": ", 2);
		n += 2;
		memcpy(buf + n, pk_http1_ptr(p, h->value), h->value.len);
		n += h->value.len;
		memcpy(buf + n, "\r\n", 2);
		n += 2;
	}
	const char *conn = pc->close_after              ? "Connection: close\r\n\r\n"
	                   : pc->req.version_minor == 0 ? "Connection: keep-alive\r\n\r\n"
	                                                : "\r\n";
	size_t clen = strlen(conn);
	if (n + clen > size)
		return -ENOSPC;
	memcpy(buf + n, conn, clen);
	return (ssize_t)(n + clen);
}

static void pk__response_body(struct pk__pconn *pc, const char *head, size_t head_len,
                              const uint8_t *data, size_t len, size_t consumed_extra)
{
	ssize_t body = len ? pk_http1_body_feed(&pc->respbody, data, len) : 0;
	if (body < 0) {
		pk__close(pc); /* malformed chunked body from upstream: cannot frame it */
		return;
	}
	/* Bytes past the end of the body are not the client's (an upstream must not send
	 * any); they are dropped but still consumed. */
	/* The head (if given) and the body bytes go out in one write. */
	int rc = head ? pk__cwrite(pc, head, head_len, data, (size_t)body, len + consumed_extra)
	              : pk__cwrite(pc, data, (size_t)body, NULL, 0, len + consumed_extra);
	if (rc < 0) {
		pk__close(pc);
		return;
	}
	pc->resp_bytes += (uint64_t)body + head_len;
	if (pc->respbody.done && !pc->resp_done) {
		pc->resp_done = 1;
		pk__finish_request(pc);
		pk__drop_xchg(pc, 0);
	}
}

static void pk__response_head(struct pk__pconn *pc, const uint8_t *data, size_t len)
{
	size_t used = 0;
	int rc = pk_http1_parser_feed(&pc->resp, data, len, &used);
	if (rc == 0) {
		/* The whole chunk went into the parser's own buffer: consumed now. */
		pk_tunnel_stream_consumed(pc->x->t, pc->x->sid, len);
		return;
	}
	if (rc < 0) {
		pk__fail(pc, 502, "upstream unreachable");
		return;
	}
	unsigned status = pc->resp.status;
	if (status >= 100 && status < 200 && status != 101) {
		/* Interim response (100 Continue): relay it and read the final one. */
		size_t hl = 0;
		const char *h = pk_http1_raw_head(&pc->resp, &hl);
		if (pk__cwrite(pc, h, hl, NULL, 0, 0) < 0) {
			pk__close(pc);
			return;
		}
		pk_http1_parser_reset(&pc->resp);
		pk_tunnel_stream_consumed(pc->x->t, pc->x->sid, used);
		if (len > used)
			pk__response_head(pc, data + used, len - used);
		return;
	}
	uv_timer_stop(&pc->timer);
	pc->resp_head_done = 1;
	pc->status = (int)status;
	if (status == 101) {
		if (!pc->req.upgrade) {
			pk__fail(pc, 502, "upstream unreachable");
			return;
		}
		size_t hl = 0;
		const char *h = pk_http1_raw_head(&pc->resp, &hl);
		pc->state = PK__P_SPLICE;
		pk__finish_request(pc);
		if (pk__cwrite(pc, h, hl, data + used, len - used, len) < 0) {
			pk__close(pc);
			return;
		}
		pk__read_start(pc);
		pk__pump(pc);
		return;
	}
	pk_http1_body_init_from(&pc->respbody, &pc->resp);
	if (pc->respbody.kind == PK_HTTP1_BODY_UNTIL_CLOSE || !pc->req.keep_alive ||
	    pc->w->draining || !pc->req_body_done)
		pc->close_after = 1;
	char head[16 * 1024];
	ssize_t hl = pk__client_head(pc, head, sizeof(head));
	if (hl < 0) {
		pk__fail(pc, 502, "upstream unreachable");
		return;
	}
	pk__response_body(pc, head, (size_t)hl, data + used, len - used, used);
}

static void pk__x_on_data(void *ud, const uint8_t *data, size_t len)
{
	struct pk__xchg *x = ud;
	struct pk__pconn *pc = x->pc;
	if (pc == NULL) {
		pk_tunnel_stream_consumed(x->t, x->sid, len);
		return;
	}
	switch (pc->state) {
	case PK__P_EXCHANGE:
		if (!pc->resp_head_done)
			pk__response_head(pc, data, len);
		else if (!pc->resp_done)
			pk__response_body(pc, NULL, 0, data, len, 0);
		else
			pk_tunnel_stream_consumed(x->t, x->sid, len);
		break;
	case PK__P_SPLICE:
		if (pk__cwrite(pc, data, len, NULL, 0, len) < 0)
			pk__close(pc);
		break;
	case PK__P_TCP: {
		uint8_t hdr[PK_WS_MAX_HEADER];
		int hlen = pk_ws_header(&pc->ws, hdr, PK_WS_OP_BINARY, true, len, NULL);
		if (hlen < 0 || pk__cwrite(pc, hdr, (size_t)hlen, data, len, len) < 0)
			pk__close(pc);
		break;
	}
	default:
		pk_tunnel_stream_consumed(x->t, x->sid, len);
	}
}

static void pk__x_on_fin(void *ud)
{
	struct pk__xchg *x = ud;
	struct pk__pconn *pc = x->pc;
	if (pc == NULL)
		return;
	pc->upstream_fin = 1;
	switch (pc->state) {
	case PK__P_EXCHANGE:
		if (!pc->resp_head_done) {
			pk__fail(pc, 502, "upstream unreachable");
		} else if (!pc->resp_done) {
			if (pc->respbody.kind == PK_HTTP1_BODY_UNTIL_CLOSE) {
				pc->resp_done = 1;
				pk__finish_request(pc);
				pk__drop_xchg(pc, 0);
				if (pc->out_pending == 0)
					pk__shutdown(pc);
			} else {
				pk__close(pc); /* truncated response */
			}
		}
		break;
	case PK__P_SPLICE:
		pk__shutdown(pc);
		break;
	case PK__P_TCP: {
		uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
		int n = pk_ws_close(&pc->ws, frame, sizeof(frame), PK_WS_CLOSE_NORMAL, NULL, 0);
		if (n > 0 && pk__cwrite(pc, frame, (size_t)n, NULL, 0, 0) == 0)
			pk__shutdown(pc);
		else
			pk__close(pc);
		break;
	}
	default:
		break;
	}
}

static void pk__x_on_close(void *ud, int err)
{
	struct pk__xchg *x = ud;
	struct pk__pconn *pc = x->pc;
	x->t = NULL;
	x->gone = 1;
	x->pc = NULL;
	pk__x_put(x);
	if (pc == NULL)
		return;
	pc->x = NULL;
	if (pc->state == PK__P_TCP && pc->upstream_fin && pc->client_eof && !pc->fin_after_dec) {
		pk__tcp_maybe_done(pc); /* both FINs: the end of a clean close, not a reset */
		return;
	}
	if (pc->state == PK__P_EXCHANGE && !pc->resp_head_done)
		pk__fail(pc, 502, "upstream unreachable");
	else if (pc->state != PK__P_EXCHANGE || !pc->resp_done)
		pk__close(pc);
}

static void pk__x_on_writable(void *ud)
{
	struct pk__xchg *x = ud;
	if (x->pc)
		pk__pump(x->pc);
}

/* ---- sending the request (and spliced bytes) to the stream ---- */

/* Sends buf to the stream; returns bytes taken or -1 after failing the request. */
static ssize_t pk__send(struct pk__pconn *pc, const uint8_t *buf, size_t len)
{
	if (len == 0)
		return 0;
	ssize_t n = pk_tunnel_stream_send(pc->x->t, pc->x->sid, buf, len);
	if (n < 0) {
		if (pc->state == PK__P_EXCHANGE && !pc->resp_head_done)
			pk__fail(pc, 502, "upstream unreachable");
		else
			pk__close(pc);
		return -1;
	}
	return n;
}

static void pk__pump_tcp(struct pk__pconn *pc)
{
	/* First what an earlier turn could not send, then what the client sent since. */
	while (pc->dec_off < pc->dec_len) {
		ssize_t n = pk__send(pc, pc->dec + pc->dec_off, pc->dec_len - pc->dec_off);
		if (n <= 0)
			return;
		pc->dec_off += (size_t)n;
	}
	pc->dec_len = pc->dec_off = 0;
	size_t off = 0;
	while (pc->in_len > off) {
		struct pk_ws_event ev;
		off += pk_ws_feed(&pc->ws, pc->in + off, pc->in_len - off, &ev);
		if (ev.type == PK_WS_EV_NONE)
			break;
		if (ev.type == PK_WS_EV_DATA) {
			/* Straight from in[] (unmasked in place) while the stream takes it; only
			 * what it cannot take now is copied aside into dec[]. */
			size_t sent = 0;
			while (pc->dec_len == 0 && sent < ev.len) {
				ssize_t n = pk__send(pc, ev.data + sent, ev.len - sent);
				if (n < 0)
					return;
				if (n == 0)
					break;
				sent += (size_t)n;
			}
			if (sent == ev.len)
				continue;
			uint8_t *d = realloc(pc->dec, pc->dec_len + ev.len - sent);
			if (d == NULL) {
				pk__close(pc);
				return;
			}
			pc->dec = d;
			memcpy(pc->dec + pc->dec_len, ev.data + sent, ev.len - sent);
			pc->dec_len += ev.len - sent;
		} else if (ev.type == PK_WS_EV_PING) {
			uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
			int n = pk_ws_control(&pc->ws, frame, sizeof(frame), PK_WS_OP_PONG, ev.data,
			                      ev.len);
			if (n > 0)
				pk__cwrite(pc, frame, (size_t)n, NULL, 0, 0);
		} else if (ev.type == PK_WS_EV_CLOSE && pc->x) {
			/* The client is done sending: FIN to the stream, after what the stream
			 * could not take yet (dec[]). What the service still sends goes on to the
			 * client, and our close frame answers once the agent's FIN comes
			 * (pk__x_on_fin), as a TCP half-close would; if it came first, this is the
			 * client's answer to ours (pk__tcp_maybe_done). */
			pc->client_eof = 1;
			pc->fin_after_dec = 1;
			pk__read_stop(pc);
			break;
		} else if (ev.type == PK_WS_EV_CLOSE || ev.type == PK_WS_EV_ERROR) {
			uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
			uint16_t code = ev.type == PK_WS_EV_CLOSE ? PK_WS_CLOSE_NORMAL : ev.code;
			int n = pk_ws_close(&pc->ws, frame, sizeof(frame), code, NULL, 0);
			pc->client_eof = 1;
			pk__read_stop(pc);
			if (pc->x)
				pk_tunnel_stream_fin(pc->x->t, pc->x->sid);
			if (n > 0 && pk__cwrite(pc, frame, (size_t)n, NULL, 0, 0) == 0)
				pk__shutdown(pc);
			else
				pk__close(pc);
			return;
		}
	}
	pk__consume_in(pc, pc->in_len);
	if (pc->dec_len > 0) {
		pk__read_stop(pc);
		pk__pump_tcp(pc);
		return;
	}
	if (pc->fin_after_dec) {
		pc->fin_after_dec = 0;
		if (pc->x)
			pk_tunnel_stream_fin(pc->x->t, pc->x->sid);
		pk__tcp_maybe_done(pc);
		return;
	}
	pk__read_start(pc);
}

static void pk__pump(struct pk__pconn *pc)
{
	if (pc->x == NULL || pc->state == PK__P_CLOSING)
		return;
	while (pc->fwd_off < pc->fwd_len) {
		ssize_t n = pk__send(pc, pc->fwd + pc->fwd_off, pc->fwd_len - pc->fwd_off);
		if (n <= 0)
			return;
		pc->fwd_off += (size_t)n;
	}
	if (pc->state == PK__P_TCP) {
		pk__pump_tcp(pc);
		return;
	}
	if (pc->state == PK__P_SPLICE || (pc->state == PK__P_EXCHANGE && pc->req.upgrade)) {
		/* Upgraded (or upgrading): every byte goes through. */
		while (pc->in_len > 0) {
			ssize_t n = pk__send(pc, pc->in, pc->in_len);
			if (n < 0)
				return;
			if (n == 0) {
				pk__read_stop(pc);
				return;
			}
			pk__consume_in(pc, (size_t)n);
		}
		if (pc->state == PK__P_SPLICE && pc->client_eof)
			pk_tunnel_stream_fin(pc->x->t, pc->x->sid);
		else if (pc->state == PK__P_SPLICE)
			pk__read_start(pc);
		return;
	}
	if (pc->state != PK__P_EXCHANGE || pc->req_body_done)
		return;
	for (;;) {
		if (pc->pending_body == 0) {
			if (pc->reqbody.done || pc->in_len == 0)
				break;
			ssize_t body = pk_http1_body_feed(&pc->reqbody, pc->in, pc->in_len);
			if (body < 0) {
				pk__fail(pc, 400, "malformed request body");
				return;
			}
			if (body == 0)
				break;
			pc->pending_body = (size_t)body;
		}
		/* pending_body bytes at the front of in[] are framed body not yet sent. */
		ssize_t n = pk__send(pc, pc->in, pc->pending_body);
		if (n < 0)
			return;
		if (n == 0) {
			pk__read_stop(pc);
			return;
		}
		pk__consume_in(pc, (size_t)n);
		pc->pending_body -= (size_t)n;
		pc->req_bytes += (uint64_t)n;
	}
	if (pc->reqbody.done && pc->pending_body == 0) {
		/* What follows is the next request: keep reading it (no stop/start per request,
		 * each of which costs epoll_ctl calls), up to a bound. */
		pc->req_body_done = 1;
		if (pc->in_len >= PK__MAX_PIPELINED)
			pk__read_stop(pc);
		return;
	}
	pk__read_start(pc);
}

/* ---- routing ---- */

static void pk__start_exchange(struct pk__pconn *pc, struct pk_tunnel *t);
static void pk__try_route(struct pk__pconn *pc);

static void pk__exchange_timeout(uv_timer_t *timer)
{
	struct pk__pconn *pc = timer->data;
	if (pc->state == PK__P_EXCHANGE && !pc->resp_head_done)
		pk__fail(pc, 504, "upstream timeout");
}

static void pk__wait_tick(uv_timer_t *timer)
{
	struct pk__pconn *pc = timer->data;
	if (pc->state == PK__P_WAIT)
		pk__try_route(pc);
}

static void pk__head_timeout(uv_timer_t *timer)
{
	struct pk__pconn *pc = timer->data;
	if (pc->state != PK__P_HEAD)
		return;
	if (pc->in_len > 0 || pc->requests == 0) {
		pc->close_after = 1;
		pk__fail(pc, 408, "request header timeout");
	} else {
		pk__close(pc); /* idle keep-alive connection */
	}
}

/* The less loaded of two random candidates. */
static int pk__p2c(const unsigned *load, int n)
{
	if (n == 1)
		return 0;
	int a = rand() % n, b = rand() % (n - 1);
	if (b >= a)
		b++;
	return load[b] < load[a] ? b : a;
}

static int pk__handoff(struct pk__pconn *pc, const struct pk_route *r)
{
	struct pk_worker *w = pc->w;
	size_t hl = 0;
	const char *head = pk_http1_raw_head(&pc->req, &hl);
	uv_os_fd_t fd;
	int rc;

	if (uv_fileno((uv_handle_t *)&pc->tcp, &fd) < 0)
		return -EBADF;
	char *bytes = malloc(hl + pc->in_len + 1);
	if (bytes == NULL)
		return -ENOMEM;
	memcpy(bytes, head, hl);
	memcpy(bytes + hl, pc->in, pc->in_len);
	struct pk_handoff h = {
	    .version = PK_HANDOFF_VERSION,
	    .from_slot = (uint32_t)w->slot,
	    .tunnel_id = r->tunnel_id,
	    .flags = PK_HANDOFF_SET_HOPS(pc->hops + 1) | (pc->https ? PK_HANDOFF_F_TLS : 0),
	    .bytes_len = (uint32_t)(hl + pc->in_len),
	};
	snprintf(h.client_addr, sizeof(h.client_addr), "%.63s", pc->client);
	rc = pk_handoff_send(&w->sender, w->run_dir, (int)r->slot, &h, fd, bytes, hl + pc->in_len);
	free(bytes);
	if (rc < 0) {
		pk_log_debug("handoff", "handoff failed", "to_slot=%u error=%s", r->slot,
		             strerror(-rc));
		return rc;
	}
	pk_counters_worker_add(w->ctr, w->worker_index, PK_CTR_W_HANDOFFS_SENT, 1);
	pk_log_debug("handoff", "handed off", "to_slot=%u tunnel_id=%llu endpoint=%s", r->slot,
	             (unsigned long long)r->tunnel_id, pc->endpoint);
	/* The other worker owns the connection now: close our descriptor silently. */
	pc->resp_done = 1;
	pk__close(pc);
	return 0;
}

static void pk__try_route(struct pk__pconn *pc)
{
	struct pk_worker *w = pc->w;
	struct pk_route rows[PK__MAX_CANDIDATES];
	struct pk_tunnel *local[PK__MAX_CANDIDATES];
	unsigned load[PK__MAX_CANDIDATES];
	int n = 0, markers = 0, nlocal = 0;
	uint64_t now = pk_worker_now_ms();
	size_t eplen = strlen(pc->endpoint);

	int rc = pk_routes_lookup(w->db, pc->endpoint, eplen, now, rows, PK__MAX_CANDIDATES, &n,
	                          &markers);
	if (rc < 0) {
		pk_log_error(PK__LOG, "route lookup failed", "endpoint=%s error=%s", pc->endpoint,
		             strerror(-rc));
		n = 0;
	}
	/* Local tunnels first: the hinted one (handoff), else the least loaded of two. */
	for (int i = 0; i < n; i++) {
		if (rows[i].slot != (uint32_t)w->slot)
			continue;
		struct pk_tunnel *t = pk_worker_find_tunnel(w, rows[i].tunnel_id);
		if (t == NULL || !pk_tunnel_usable(t))
			continue;
		if (pc->hint_tunnel == rows[i].tunnel_id) {
			pk__start_exchange(pc, t);
			return;
		}
		load[nlocal] = pk_tunnel_streams(t);
		local[nlocal++] = t;
	}
	if (nlocal > 0) {
		pk__start_exchange(pc, local[pk__p2c(load, nlocal)]);
		return;
	}
	/* Another worker's tunnel: hand the connection over. A connection that was handed to
	 * us is not passed on again, unless we are leaving. */
	if (pc->hops == 0 || (w->draining && pc->hops < PK__MAX_HOPS)) {
		for (;;) {
			int m = 0;
			uint32_t maxgen = 0;
			struct pk_route cand[PK__MAX_CANDIDATES];
			for (int i = 0; i < n; i++)
				if (rows[i].slot != (uint32_t)w->slot &&
				    rows[i].generation > maxgen)
					maxgen = rows[i].generation;
			for (int i = 0; i < n; i++) {
				if (rows[i].slot == (uint32_t)w->slot ||
				    rows[i].generation != maxgen)
					continue;
				uint32_t s = 0;
				if (pk_counters_tunnel_streams(w->ctr, rows[i].ctr_slot,
				                               rows[i].ctr_tag, &s) < 0)
					continue;
				load[m] = s;
				cand[m++] = rows[i];
			}
			if (m == 0)
				break;
			int pick = pk__p2c(load, m);
			int hrc = pk__handoff(pc, &cand[pick]);
			if (hrc == 0)
				return;
			if (hrc == -EAGAIN) {
				/* Its handoff queue is full for the moment (a burst): retry soon,
				 * within a bound, rather than fail the request. */
				if (now < pc->started_ms + PK__HANDOFF_RETRY_MS) {
					pc->state = PK__P_WAIT;
					uv_timer_start(&pc->timer, pk__wait_tick, 1, 0);
					return;
				}
				pk__fail(pc, 503, "worker busy");
				return;
			}
			/* That worker is gone: forget its rows and try the others. */
			for (int i = 0; i < n; i++)
				if (rows[i].slot == cand[pick].slot)
					rows[i].slot =
					    (uint32_t)w->slot; /* excluded from here on */
		}
	}
	if (markers > 0 && pc->wait_until_ms < pc->started_ms + w->cfg->grace_period_ms)
		pc->wait_until_ms = pc->started_ms + w->cfg->grace_period_ms;
	if (now < pc->wait_until_ms) {
		pc->state = PK__P_WAIT;
		uv_timer_start(&pc->timer, pk__wait_tick, PK__WAIT_POLL_MS, 0);
		return;
	}
	pk_counters_worker_add(w->ctr, w->worker_index, PK_CTR_W_NO_UPSTREAM, 1);
	pk__fail(pc, 502, "no available upstreams");
}

static int pk__check_proxy_auth(struct pk__pconn *pc)
{
	const char *msg = NULL;
	int64_t exp;
	if (pc->w->proxy_auth == NULL)
		return 0;
	int status = pk_worker_check_token(pc->w->proxy_auth, &pc->req, pc->endpoint, &exp, &msg);
	if (status != 0) {
		pk__fail(pc, status, msg);
		return -EACCES;
	}
	return 0;
}

static void pk__route(struct pk__pconn *pc)
{
	struct pk_worker *w = pc->w;
	const char *target = pk_http1_ptr(&pc->req, pc->req.target);
	size_t tlen = pc->req.target.len, plen = sizeof(PK__TCP_PREFIX) - 1;
	const char *ep = NULL;
	size_t eplen = 0;

	pc->state = PK__P_EXCHANGE;
	if (tlen > plen && memcmp(target, PK__TCP_PREFIX, plen) == 0) {
		ep = target + plen;
		eplen = tlen - plen;
		const char *q = memchr(ep, '?', eplen);
		if (q)
			eplen = (size_t)(q - ep);
		pc->tcp_mode = 1;
		pc->close_after = 1;
	} else if (!pk_http1_endpoint(&pc->req, &ep, &eplen)) {
		pk__fail(pc, 400, "missing endpoint id");
		return;
	}
	if (!pk_routes_valid_endpoint(ep, eplen)) {
		pk__fail(pc, 400, "invalid endpoint id");
		return;
	}
	memcpy(pc->endpoint, ep, eplen);
	pc->endpoint[eplen] = '\0';
	if (pk__check_proxy_auth(pc) < 0)
		return;
	if (pc->tcp_mode) { /* TCP endpoint: a WebSocket upgrade is required */
		char accept[PK_WS_ACCEPT_LEN + 1];
		const char *why = NULL;
		int rc = pk_worker_ws_check(&pc->req, accept, &why);
		if (rc < 0) {
			pk__fail(pc, pk_ws_handshake_status(rc), why ? why : "websocket required");
			return;
		}
	}
	pc->wait_until_ms = pc->started_ms + w->cfg->proxy_upstream_wait_ms;
	pk__try_route(pc);
}

static void pk__start_tcp(struct pk__pconn *pc)
{
	char accept[PK_WS_ACCEPT_LEN + 1], resp[PK_WS_RESPONSE_MAX];
	const char *why = NULL;
	if (pk_worker_ws_check(&pc->req, accept, &why) < 0) {
		pk__fail(pc, 400, "websocket required");
		return;
	}
	int n = pk_ws_server_response(resp, sizeof(resp), accept);
	if (n <= 0 || pk__cwrite(pc, resp, (size_t)n, NULL, 0, 0) < 0) {
		pk__close(pc);
		return;
	}
	pc->status = 101;
	pk__finish_request(pc);
	pc->state = PK__P_TCP;
	pk_ws_init(&pc->ws, PK_WS_SERVER, NULL);
	pk__pump(pc);
}

static void pk__start_exchange(struct pk__pconn *pc, struct pk_tunnel *t)
{
	struct pk__xchg *x = calloc(1, sizeof(*x));
	if (x == NULL) {
		pk__fail(pc, 500, "internal error");
		return;
	}
	x->pc = pc;
	x->t = t;
	/* A request's SYN rides on the request; a TCP endpoint's service may speak first. */
	int rc = pk_tunnel_stream_open(t, &pk__xops, x, !pc->tcp_mode, &x->sid);
	if (rc < 0) {
		free(x);
		if (rc == -EBUSY)
			pk__fail(pc, 503, "too many requests in flight for this upstream");
		else
			pk__fail(pc, 502, "upstream unreachable");
		return;
	}
	pc->x = x;
	pc->tunnel_id = pk_tunnel_id(t);
	pc->state = PK__P_EXCHANGE;
	if (pc->tcp_mode) {
		pk__start_tcp(pc);
		return;
	}
	size_t hl = 0;
	pk_http1_raw_head(&pc->req, &hl);
	size_t cap = hl + 1024;
	struct pk_http1_proxy_opts o = {.client_addr = pc->client_ip, .https = pc->https};
	pc->fwd = malloc(cap);
	ssize_t n =
	    pc->fwd ? pk_http1_build_proxy_request(&pc->req, &o, (char *)pc->fwd, cap) : -ENOMEM;
	if (n < 0) {
		pk__fail(pc, n == -ENOSPC ? 431 : 500, "cannot forward request");
		return;
	}
	pc->fwd_len = (size_t)n;
	pc->fwd_off = 0;
	pk_http1_parser_reset(&pc->resp);
	pk_http1_parser_response_to_head(&pc->resp,
	                                 pk_http1_span_ieq(&pc->req, pc->req.method, "HEAD"));
	pk_http1_body_init_from(&pc->reqbody, &pc->req);
	pc->pending_body = 0;
	pc->req_body_done = pc->req.upgrade ? 1 : pc->reqbody.done;
	if (pc->w->cfg->proxy_timeout_ms > 0)
		uv_timer_start(&pc->timer, pk__exchange_timeout, pc->w->cfg->proxy_timeout_ms, 0);
	pk__pump(pc);
}

/* ---- request heads ---- */

static void pk__process_head(struct pk__pconn *pc)
{
	size_t used = 0;
	if (pc->in_len == 0 || pc->parsed == pc->in_len) {
		pk__read_start(pc);
		return;
	}
	if (pc->parsed == 0 && pc->requests > 0)
		uv_timer_start(&pc->timer, pk__head_timeout,
		               pc->w->cfg->proxy_read_header_timeout_ms, 0);
	int rc =
	    pk_http1_parser_feed(&pc->req, pc->in + pc->parsed, pc->in_len - pc->parsed, &used);
	if (rc == 0) {
		pc->parsed = pc->in_len;
		pk__read_start(pc);
		return;
	}
	if (rc < 0) {
		pk__read_stop(pc);
		pc->close_after = 1;
		pk__fail(pc, rc == -EPROTO ? pc->req.error_status : 500,
		         rc == -EPROTO ? pc->req.error_reason : "internal error");
		return;
	}
	uv_timer_stop(&pc->timer);
	size_t head_end = pc->parsed + used;
	pk__consume_in(pc, head_end);
	pc->parsed = 0;
	pc->req_head_done = 1;
	pc->requests++;
	pc->started_ms = pk_worker_now_ms();
	pc->req_bytes = pc->resp_bytes = 0;
	pc->tunnel_id = 0;
	pc->inflight = 1;
	pk_counters_gauge_add(pc->w->ctr, pc->w->slot, PK_CTR_G_REQUESTS_INFLIGHT, 1);
	if (pc->w->draining || !pc->req.keep_alive)
		pc->close_after = 1;
	/* Known before routing, so an early error answer can keep the connection when the
	 * request has no body to skip. */
	pk_http1_body_init_from(&pc->reqbody, &pc->req);
	pc->req_body_done = pc->reqbody.done && !pc->req.upgrade;
	pk__route(pc);
}

static void pk__next_request(struct pk__pconn *pc)
{
	struct pk_worker *w = pc->w;
	pk_http1_parser_reset(&pc->req);
	pk_http1_parser_reset(&pc->resp);
	pc->req_head_done = pc->req_body_done = 0;
	pc->resp_head_done = pc->resp_done = pc->upstream_fin = 0;
	pc->status = 0;
	pc->pending_body = 0;
	pc->hint_tunnel = 0;
	pc->tcp_mode = 0;
	pc->endpoint[0] = '\0';
	free(pc->fwd);
	pc->fwd = NULL;
	pc->fwd_len = pc->fwd_off = 0;
	pc->state = PK__P_HEAD;
	pc->parsed = 0;
	if (w->draining && pc->in_len == 0) {
		pk__close(pc);
		return;
	}
	uv_timer_start(&pc->timer, pk__head_timeout,
	               pc->in_len > 0 ? w->cfg->proxy_read_header_timeout_ms
	                              : w->cfg->proxy_idle_timeout_ms,
	               0);
	pk__process_head(pc);
}

static void pk__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct pk__pconn *pc = s->data;
	if (pc->state == PK__P_CLOSING)
		return;
	if (n < 0) {
		pc->client_eof = 1;
		pk__read_stop(pc);
		switch (pc->state) {
		case PK__P_EXCHANGE:
			if (!pc->req_body_done)
				pk__close(pc);
			else
				pc->close_after = 1;
			break;
		case PK__P_SPLICE:
			pk__pump(pc); /* sends what is left, then FIN */
			if (pc->upstream_fin && pc->out_pending == 0)
				pk__close(pc);
			break;
		case PK__P_TCP:
			if (pc->x)
				pk_tunnel_stream_fin(pc->x->t, pc->x->sid);
			pk__close(pc);
			break;
		default:
			pk__close(pc);
		}
		return;
	}
	if (n == 0)
		return;
	pk_counters_worker_add(pc->w->ctr, pc->w->worker_index, PK_CTR_W_BYTES_IN, (uint64_t)n);
	if (b->base == (char *)pk__tcp_rbuf) {
		/* in[] is the worker's buffer for this callback only (pk__alloc). */
		uint8_t *own = pc->in;
		size_t own_cap = pc->in_cap;
		pc->in = pk__tcp_rbuf;
		pc->in_len = (size_t)n;
		pc->in_cap = sizeof(pk__tcp_rbuf);
		pk__pump(pc);
		/* All of it was taken, unless the connection is on its way to closing. */
		pc->in = own;
		pc->in_cap = own_cap;
		pc->in_len = 0;
		return;
	}
	pc->in_len += (size_t)n;
	if (pc->state == PK__P_HEAD)
		pk__process_head(pc);
	else if (pc->state == PK__P_EXCHANGE || pc->state == PK__P_SPLICE || pc->state == PK__P_TCP)
		pk__pump(pc);
	if (pc->state != PK__P_HEAD && pc->state != PK__P_CLOSING &&
	    pc->in_len >= PK__MAX_PIPELINED && (pc->state == PK__P_WAIT || pc->req_body_done))
		pk__read_stop(pc); /* bytes of a later request: enough buffered */
}

/* ---- connections ---- */

static struct pk__pconn *pk__conn_new(struct pk_worker *w)
{
	struct pk_http1_limits lim = {
	    .max_head_bytes = w->cfg->proxy_max_header_bytes > PK_HTTP1_MAX_HEAD_CAP
	                          ? PK_HTTP1_MAX_HEAD_CAP
	                          : w->cfg->proxy_max_header_bytes,
	};
	struct pk__pconn *pc = calloc(1, sizeof(*pc));
	if (pc == NULL)
		return NULL;
	pc->w = w;
	uv_tcp_init(w->loop, &pc->tcp);
	uv_timer_init(w->loop, &pc->timer);
	pc->tcp.data = pc->timer.data = pc;
	pc->handles = 2;
	pc->next = pk__conns;
	if (pk__conns)
		pk__conns->prev = pc;
	pk__conns = pc;
	w->proxy_conns++;
	pk_counters_gauge_add(w->ctr, w->slot, PK_CTR_G_CONNECTIONS, 1);
	pk_http1_parser_init(&pc->req, PK_HTTP1_REQUEST, &lim);
	pk_http1_parser_init(&pc->resp, PK_HTTP1_RESPONSE, NULL);
	pc->state = PK__P_HEAD;
	return pc;
}

static void pk__set_client(struct pk__pconn *pc, const char *addr)
{
	snprintf(pc->client, sizeof(pc->client), "%s", addr);
	/* "1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1" */
	const char *colon = strrchr(addr, ':');
	size_t len = colon ? (size_t)(colon - addr) : strlen(addr);
	if (len >= 2 && addr[0] == '[' && addr[len - 1] == ']') {
		addr++;
		len -= 2;
	}
	if (len >= sizeof(pc->client_ip))
		len = sizeof(pc->client_ip) - 1;
	memcpy(pc->client_ip, addr, len);
	pc->client_ip[len] = '\0';
}

/* A client's request has usually arrived by the time we accept it: read it at once, before
 * the socket is registered with epoll. A connection handed to another worker then costs no
 * epoll_ctl pair here, and a local one is routed a loop turn earlier. Anything but data
 * (nothing yet, EOF, an error) is left to the loop's read path. */
static void pk__read_first(struct pk__pconn *pc)
{
	uv_os_fd_t fd;
	uv_buf_t b;
	ssize_t n;

	if (uv_fileno((uv_handle_t *)&pc->tcp, &fd) == 0) {
		pk__alloc((uv_handle_t *)&pc->tcp, PK__READ_CHUNK, &b);
		if (b.base != NULL) {
			do
				n = recv(fd, b.base, b.len, MSG_DONTWAIT);
			while (n < 0 && errno == EINTR);
			if (n > 0) {
				/* As if reading were on, which is what the read path expects:
				 * a pk__read_stop() it makes stands, else reading starts. */
				pc->reading = 1;
				pk__on_read((uv_stream_t *)&pc->tcp, n, &b);
				if (pc->state == PK__P_CLOSING || !pc->reading)
					return; /* answered, failed, handed off or held back */
				pc->reading = 0;
			}
		}
	}
	pk__read_start(pc);
}

static void pk__on_connection(uv_stream_t *l, int status)
{
	struct pk_worker *w = l->data;
	char addr[80];
	if (status < 0)
		return;
	struct pk__pconn *pc = pk__conn_new(w);
	if (pc == NULL) {
		pk_log_error(PK__LOG, "out of memory accepting a client", NULL);
		return;
	}
	if (uv_accept(l, (uv_stream_t *)&pc->tcp) < 0) {
		pk__close(pc);
		return;
	}
	pk_listener_accepted(&w->proxy_listener, (uv_stream_t *)&pc->tcp);
	pk_worker_peer_name(&pc->tcp, addr, sizeof(addr));
	pk__set_client(pc, addr);
	uv_timer_start(&pc->timer, pk__head_timeout, w->cfg->proxy_read_header_timeout_ms, 0);
	pk__read_first(pc);
}

int pk_proxy_adopt(struct pk_worker *w, const struct pk_handoff *h, int fd, const char *bytes,
                   size_t len)
{
	struct pk__pconn *pc = pk__conn_new(w);
	if (pc == NULL)
		return -ENOMEM;
	int rc = uv_tcp_open(&pc->tcp, fd);
	if (rc < 0) {
		/* The handle does not own fd: the caller closes it. */
		pk__close(pc);
		return rc;
	}
	pc->in = malloc(len + PK__READ_CHUNK);
	if (pc->in == NULL) {
		pk__close(pc); /* closes fd too: the handle owns it */
		return 0;
	}
	memcpy(pc->in, bytes, len);
	pc->in_len = len;
	pc->in_cap = len + PK__READ_CHUNK;
	pk__set_client(pc, h->client_addr);
	pc->hops = (int)PK_HANDOFF_HOPS(h->flags);
	pc->https = (h->flags & PK_HANDOFF_F_TLS) != 0;
	pc->hint_tunnel = h->tunnel_id;
	pk_counters_worker_add(w->ctr, w->worker_index, PK_CTR_W_HANDOFFS_RECEIVED, 1);
	pk_log_debug("handoff", "adopted", "from_slot=%u tunnel_id=%llu", h->from_slot,
	             (unsigned long long)h->tunnel_id);
	uv_timer_start(&pc->timer, pk__head_timeout, w->cfg->proxy_read_header_timeout_ms, 0);
	pk__process_head(pc);
	return 0;
}

void pk_proxy_drain(struct pk_worker *w)
{
	for (struct pk__pconn *pc = pk__conns, *next; pc; pc = next) {
		next = pc->next;
		if (pc->state == PK__P_HEAD && pc->in_len == 0 && pc->requests > 0)
			pk__close(pc);
		else
			pc->close_after = 1;
	}
}

/* ---- accepting, with tunnel affinity ----
 *
 * Every worker accepts from the one listening socket the supervisor bound. A worker that
 * holds no tunnel while a ready sibling of its generation holds some could only hand each
 * connection it accepts over to that sibling: a second process, a descriptor passed and a
 * head parsed twice for nothing. So it stops accepting (the queue is shared: the others
 * take every connection) and starts again within PK__AFFINITY_MS once it gets a tunnel or
 * no sibling has one (the holder died or drains). With tunnels on every worker nothing
 * changes: a request whose tunnel is elsewhere is handed off as before. */

#define PK__AFFINITY_MS 100

static uv_timer_t pk__aff_timer;

/* Whether this worker should accept: it holds a tunnel, or no ready sibling of its
 * generation does. */
static int pk__should_accept(struct pk_worker *w)
{
	if (w->ntunnels > 0)
		return 1;
	for (int s = 0; s < PK_MAX_CHILDREN; s++) {
		struct pk_ctr_child_info ci;
		if (s == w->slot || pk_counters_get_child(w->ctr, s, &ci) < 0)
			continue;
		if (ci.pid > 0 && ci.role == PK_ROLE_WORKER && ci.state == PK_CHILD_READY &&
		    ci.generation == w->generation && ci.gauges[PK_CTR_G_TUNNELS] > 0)
			return 0;
	}
	return 1;
}

static void pk__affinity_tick(uv_timer_t *t)
{
	struct pk_worker *w = t->data;
	int on = pk__should_accept(w);
	int paused = (w->proxy_listener.paused & PK_LISTENER_AFFINITY) != 0;
	if (on && paused) {
		pk_log_debug(PK__LOG, "accepting again", NULL);
		pk_listener_resume(&w->proxy_listener, PK_LISTENER_AFFINITY);
	} else if (!on && !paused) {
		pk_log_debug(PK__LOG, "not accepting: a sibling holds the tunnels", NULL);
		pk_listener_pause(&w->proxy_listener, PK_LISTENER_AFFINITY);
	}
}

int pk_proxy_listen(struct pk_worker *w, int fd)
{
	int rc = pk_listener_start(&w->proxy_listener, w->loop, fd, "proxy", pk__on_connection, w);
	if (rc < 0)
		return rc;
	uv_timer_init(w->loop, &pk__aff_timer);
	pk__aff_timer.data = w;
	uv_timer_start(&pk__aff_timer, pk__affinity_tick, PK__AFFINITY_MS, PK__AFFINITY_MS);
	uv_unref((uv_handle_t *)&pk__aff_timer);
	return 0;
}

void pk_proxy_unlisten(struct pk_worker *w)
{
	uv_timer_stop(&pk__aff_timer);
	pk_listener_stop(&w->proxy_listener);
}
