/* codec_peer: a yamux-over-WebSocket test peer made only of pikod's codecs (proto/websocket,
 * proto/yamux, proto/http1 for the handshake heads), plain non-blocking sockets and poll().
 * It exists so the interop tests can pair our codecs with independent implementations
 * (hashicorp/yamux + gorilla/websocket in Go, yamux-js + ws in Node) that take the same flags.
 *
 *   codec_peer server --listen 127.0.0.1:0 [switches]   first stdout line: the bound port
 *   codec_peer client --url ws://127.0.0.1:PORT/path [switches]
 *
 * Switches:
 *   --echo             accept the peer's streams and echo them (FIN after the peer's FIN)
 *   --open N           open N streams, send --bytes of a per-stream pattern on each, FIN,
 *                      verify the echo and the peer's FIN
 *   --bytes M          bytes per opened stream (default 1 MiB)
 *   --conns K          server: exit after K connections ended (default: serve forever)
 *   --timeout S        give up (exit 3) after S seconds (default 60)
 *   --msg-size B       yamux bytes per WebSocket message (default 5000: messages split frames
 *                      and hold several frames)
 *   --frag             send every message as two frames (binary + continuation)
 *   --ws-ping-ms MS    send a WebSocket ping every MS ms
 *   --ping             send a yamux ping at session start (the opener waits for its answer
 *                      before closing); --ping-ms MS repeats it
 *   --lazy             open streams lazily (the SYN rides on the first Data frame)
 *   --window BYTES     our receive window per stream (default 256 KiB; more is granted
 *                      with the SYN/ACK)
 *   --expect-token T   server: answer 401 {"error":"invalid token"} unless the request has
 *                      Authorization: Bearer T
 *
 * A server prints "upgraded path=<request target>" for every accepted upgrade.
 *
 * Each connection ends with one stdout line
 *   summary opened=N verified=N failed=N verified_bytes=B echoed_streams=N echoed_bytes=B
 *           pings=N error=none|<what>
 * The process exits 0 when every connection it was asked to run ended without error and
 * every opened stream verified, 1 otherwise, 2 for usage errors, 3 on timeout.
 *
 * Flow control: opened streams send only within the yamux send window and only while the
 * socket output queue is below OUT_HIGH; echoed bytes are reported consumed only once they
 * were sent back, so the peer can never make us buffer more than one window per stream.
 */
#include "proto/http1.h"
#include "proto/websocket.h"
#include "proto/yamux.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS   64
#define OUT_HIGH    (1u << 20)  /* stop producing data above this many queued wire bytes */
#define BUF_CAP     (64u << 20) /* any buffer above this is a bug in the peer or in us */
#define READ_CHUNK  65536
#define SEND_CHUNK  32768
#define CLOSE_GRACE 2000 /* ms to wait for the peer's close after ours */

enum { S_OPEN = 1, S_ECHO = 2 };

struct buf {
	uint8_t *p;
	size_t off, len, cap; /* bytes live in p[off..len) */
};

struct pstream {
	uint32_t id;
	int kind;
	unsigned index; /* opener: stream number, seeds the pattern */
	uint64_t sent, recvd;
	bool fin_sent, fin_recv, bad, gone;
	struct buf pend; /* echo: received, not yet sent back */
};

struct conn {
	int fd;
	bool client, upgraded, closing, peer_closed, eof, shut_wr;
	uint64_t close_deadline;
	struct pk_http1_parser hp;
	char key[PK_WS_KEY_LEN + 1];
	struct pk_ws ws;
	struct pk_yamux_session *ys;
	struct buf plain; /* yamux bytes not yet framed */
	struct buf out;   /* wire bytes not yet written */
	struct pstream **st;
	size_t nst, cap_st;
	unsigned opened, verified, failed, echoed_streams, open_freed, pings;
	uint64_t verified_bytes, echoed_bytes, next_ws_ping, next_ping;
	uint32_t ping_seq;
	char err[160];
};

static struct {
	bool server, echo, frag, ping, lazy;
	const char *listen, *url, *token;
	unsigned open, conns, ws_ping_ms, ping_ms, window;
	uint64_t bytes;
	size_t msg_size;
	uint64_t deadline;
	char host[128], path[512], port[16];
} opt = {.bytes = 1u << 20, .msg_size = 5000, .window = PK_YAMUX_INITIAL_WINDOW};

static struct conn *conns[MAX_CONNS];
static unsigned conns_done, conns_bad;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t yamux_clock(void *ud)
{
	(void)ud;
	return now_ms();
}

/* The per-stream byte pattern; the same formula is used by every peer. */
static uint8_t pattern(unsigned k, uint64_t i)
{
	return (uint8_t)(i * 7 + k * 13 + (i >> 10));
}

/* ---- byte buffers ---- */

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static size_t buf_used(const struct buf *b)
{
	return b->len - b->off;
}

static void buf_drop(struct buf *b, size_t n)
{
	b->off += n;
	if (b->off == b->len)
		b->off = b->len = 0;
}

/* Returns room for n more bytes at the end (commit with b->len += n), or NULL. */
static uint8_t *buf_room(struct buf *b, size_t n)
{
	size_t used = buf_used(b), want;
	uint8_t *np;

	if (used + n > BUF_CAP)
		return NULL;
	if (b->off && b->len + n > b->cap) {
		memmove(b->p, b->p + b->off, used);
		b->off = 0;
		b->len = used;
	}
	if (b->len + n > b->cap) {
		want = b->cap ? b->cap : 4096;
		while (want < b->len + n)
			want *= 2;
		np = realloc(b->p, want);
		if (!np)
			return NULL;
		b->p = np;
		b->cap = want;
	}
	return b->p + b->len;
}

static int buf_put(struct buf *b, const void *d, size_t n)
{
	uint8_t *dst = buf_room(b, n);

	if (!dst)
		return -ENOMEM;
	memcpy(dst, d, n);
	b->len += n;
	return 0;
}

/* ---- connection helpers ---- */

/* Records the first error of a connection; it ends up in the summary line. */
__attribute__((format(printf, 2, 3))) static void fail(struct conn *c, const char *fmt, ...)
{
	va_list ap;

	if (c->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
}

/* Frames pending yamux bytes as binary messages of at most msg_size payload bytes. */
static int frame_plain(struct conn *c)
{
	uint8_t hdr[PK_WS_MAX_HEADER];
	struct pk_ws_mask m;
	size_t n, part;
	uint8_t *dst;
	int h, i, nparts;

	while (buf_used(&c->plain) && !c->ws.close_sent) {
		n = buf_used(&c->plain);
		if (n > opt.msg_size)
			n = opt.msg_size;
		nparts = opt.frag && n >= 2 ? 2 : 1;
		for (i = 0; i < nparts; i++) {
			part = nparts == 1 ? n : (i == 0 ? n / 2 : n - n / 2);
			h = pk_ws_header(&c->ws, hdr, i == 0 ? PK_WS_OP_BINARY : PK_WS_OP_CONT,
			                 i == nparts - 1, part, &m);
			if (h < 0 || buf_put(&c->out, hdr, (size_t)h) < 0 ||
			    !(dst = buf_room(&c->out, part)))
				return -ENOMEM;
			pk_ws_mask_copy(&m, dst, c->plain.p + c->plain.off, part);
			c->out.len += part;
			buf_drop(&c->plain, part);
		}
	}
	return 0;
}

static void send_control(struct conn *c, enum pk_ws_opcode op, const uint8_t *p, size_t n)
{
	uint8_t f[PK_WS_MAX_CONTROL_FRAME];
	int len;

	if (c->ws.close_sent || frame_plain(c) < 0)
		return;
	len = pk_ws_control(&c->ws, f, sizeof(f), op, p, n);
	if (len > 0)
		buf_put(&c->out, f, (size_t)len);
}

/* Queues our close frame (once) and starts the close grace period. */
static void start_close(struct conn *c, uint16_t code)
{
	uint8_t f[PK_WS_MAX_CONTROL_FRAME];
	int len;

	if (!c->ws.close_sent) {
		frame_plain(c);
		len = pk_ws_close(&c->ws, f, sizeof(f), code, NULL, 0);
		if (len > 0)
			buf_put(&c->out, f, (size_t)len);
	}
	if (!c->closing) {
		c->closing = true;
		c->close_deadline = now_ms() + CLOSE_GRACE;
	}
}

static struct pstream *stream_add(struct conn *c, uint32_t id, int kind)
{
	struct pstream *ps = calloc(1, sizeof(*ps));
	struct pstream **na;

	if (!ps)
		return NULL;
	if (c->nst == c->cap_st) {
		na = realloc(c->st, (c->cap_st ? c->cap_st * 2 : 64) * sizeof(*na));
		if (!na) {
			free(ps);
			return NULL;
		}
		c->st = na;
		c->cap_st = c->cap_st ? c->cap_st * 2 : 64;
	}
	ps->id = id;
	ps->kind = kind;
	c->st[c->nst++] = ps;
	return ps;
}

/* Frees streams the session let go of (on_free only marks them, so that loops over c->st
 * stay valid while callbacks run). */
static void stream_sweep(struct conn *c)
{
	size_t i = 0;

	while (i < c->nst) {
		if (!c->st[i]->gone) {
			i++;
			continue;
		}
		buf_free(&c->st[i]->pend);
		free(c->st[i]);
		c->st[i] = c->st[--c->nst];
	}
}

/* ---- yamux callbacks ---- */

static int cb_write(void *ud, const struct iovec *iov, int iovcnt)
{
	struct conn *c = ud;
	int i;

	for (i = 0; i < iovcnt; i++)
		if (buf_put(&c->plain, iov[i].iov_base, iov[i].iov_len) < 0)
			return -ENOMEM;
	return 0;
}

static int cb_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	struct conn *c = ud;
	struct pstream *ps;

	if (!opt.echo)
		return PK_YAMUX_REJECT;
	ps = stream_add(c, id, S_ECHO);
	if (!ps)
		return PK_YAMUX_REJECT;
	pk_yamux_stream_set_user(s, id, ps);
	return PK_YAMUX_ACCEPT;
}

static void cb_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user, const uint8_t *d,
                    size_t n)
{
	struct conn *c = ud;
	struct pstream *ps = user;
	size_t i;

	if (ps->kind == S_ECHO) {
		if (buf_used(&ps->pend) + n > opt.window)
			fail(c, "echo: stream %u got more than the window", id);
		if (buf_put(&ps->pend, d, n) < 0)
			fail(c, "echo: out of memory on stream %u", id);
		return;
	}
	for (i = 0; i < n && !ps->bad; i++) {
		if (ps->recvd + i >= opt.bytes || d[i] != pattern(ps->index, ps->recvd + i)) {
			ps->bad = true;
			fprintf(stderr, "codec_peer: stream %u: echo differs at offset %llu\n", id,
			        (unsigned long long)(ps->recvd + i));
		}
	}
	ps->recvd += n;
	pk_yamux_consumed(s, id, n);
}

static void cb_fin(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct conn *c = ud;
	struct pstream *ps = user;

	(void)s;
	(void)id;
	ps->fin_recv = true;
	if (ps->kind == S_OPEN) {
		if (!ps->bad && ps->recvd == opt.bytes) {
			c->verified++;
			c->verified_bytes += ps->recvd;
		} else {
			c->failed++;
			fprintf(stderr, "codec_peer: stream %u: FIN after %llu of %llu bytes%s\n",
			        id, (unsigned long long)ps->recvd, (unsigned long long)opt.bytes,
			        ps->bad ? " (corrupt)" : "");
		}
	}
}

static void cb_rst(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct conn *c = ud;
	struct pstream *ps = user;

	(void)s;
	if (ps->kind == S_OPEN && !ps->fin_recv)
		c->failed++;
	fail(c, "yamux: stream %u reset by the peer", id);
}

static void cb_free(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct conn *c = ud;
	struct pstream *ps = user;

	(void)s;
	(void)id;
	if (!ps)
		return;
	ps->gone = true;
	if (ps->kind == S_OPEN)
		c->open_freed++;
	else if (ps->fin_recv && ps->fin_sent && !buf_used(&ps->pend))
		c->echoed_streams++;
}

static void cb_ping_ack(struct pk_yamux_session *s, void *ud, uint32_t ping_id, uint64_t rtt)
{
	struct conn *c = ud;

	(void)s;
	(void)ping_id;
	(void)rtt;
	c->pings++;
}

static void cb_goaway(struct pk_yamux_session *s, void *ud, uint32_t code)
{
	struct conn *c = ud;

	(void)s;
	if (code != PK_YAMUX_GOAWAY_NORMAL)
		fail(c, "yamux: peer sent GoAway %u", code);
}

static void cb_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	struct conn *c = ud;

	(void)s;
	fail(c, "yamux: protocol error: %s (%d)", reason, err);
}

static const struct pk_yamux_callbacks callbacks = {
    .write = cb_write,
    .on_stream = cb_stream,
    .on_data = cb_data,
    .on_fin = cb_fin,
    .on_rst = cb_rst,
    .on_free = cb_free,
    .on_ping_ack = cb_ping_ack,
    .on_goaway = cb_goaway,
    .on_error = cb_error,
};

/* ---- session ---- */

static int session_start(struct conn *c)
{
	struct pk_yamux_options yo;
	struct pstream *ps;
	uint32_t id;
	unsigned i;
	int r;

	pk_yamux_options_init(&yo);
	yo.now_ms = yamux_clock;
	yo.max_window = opt.window;
	r = pk_yamux_new(&c->ys, c->client ? PK_YAMUX_CLIENT : PK_YAMUX_SERVER, &yo, &callbacks, c);
	if (r < 0)
		return r;
	c->upgraded = true;
	c->next_ws_ping = now_ms() + opt.ws_ping_ms;
	if (opt.ping) {
		pk_yamux_ping(c->ys, ++c->ping_seq);
		c->next_ping = now_ms() + opt.ping_ms;
	}
	for (i = 0; i < opt.open; i++) {
		ps = stream_add(c, 0, S_OPEN);
		if (!ps)
			return -ENOMEM;
		ps->index = i;
		r = pk_yamux_open(c->ys, opt.lazy ? PK_YAMUX_OPEN_LAZY : 0, ps, &id);
		if (r < 0) {
			ps->gone = true;
			return r;
		}
		ps->id = id;
		c->opened++;
	}
	return 0;
}

/* Moves data: opened streams send their pattern, echo streams send back what they hold.
 * Stops while the wire queue is above OUT_HIGH. */
static void pump(struct conn *c)
{
	static uint8_t tmp[SEND_CHUNK];
	struct pk_yamux_stream_info info;
	struct pstream *ps;
	size_t i, n, j;
	ssize_t r;

	for (i = 0; i < c->nst && c->ys && !pk_yamux_error(c->ys); i++) {
		ps = c->st[i];
		while (!ps->gone && ps->kind == S_OPEN && ps->sent < opt.bytes &&
		       buf_used(&c->out) + buf_used(&c->plain) < OUT_HIGH) {
			n = opt.bytes - ps->sent < SEND_CHUNK ? (size_t)(opt.bytes - ps->sent)
			                                      : SEND_CHUNK;
			/* Generate only what the window lets out. */
			if (pk_yamux_stream_info(c->ys, ps->id, &info) < 0 || !info.send_window)
				break;
			if (n > info.send_window)
				n = info.send_window;
			for (j = 0; j < n; j++)
				tmp[j] = pattern(ps->index, ps->sent + j);
			r = pk_yamux_send(c->ys, ps->id, tmp, n);
			if (r <= 0)
				break;
			ps->sent += (size_t)r;
		}
		while (!ps->gone && ps->kind == S_ECHO && buf_used(&ps->pend) &&
		       buf_used(&c->out) + buf_used(&c->plain) < OUT_HIGH) {
			n = buf_used(&ps->pend) < SEND_CHUNK ? buf_used(&ps->pend) : SEND_CHUNK;
			r = pk_yamux_send(c->ys, ps->id, ps->pend.p + ps->pend.off, n);
			if (r <= 0)
				break;
			buf_drop(&ps->pend, (size_t)r);
			c->echoed_bytes += (size_t)r;
			pk_yamux_consumed(c->ys, ps->id, (size_t)r);
		}
		if (ps->gone || ps->fin_sent)
			continue;
		if ((ps->kind == S_OPEN && ps->sent == opt.bytes) ||
		    (ps->kind == S_ECHO && ps->fin_recv && !buf_used(&ps->pend))) {
			ps->fin_sent = true;
			pk_yamux_close(c->ys, ps->id);
		}
	}
	stream_sweep(c);
	if (c->ys && pk_yamux_error(c->ys) && !c->closing) {
		fail(c, "yamux: session ended (%d)", pk_yamux_error(c->ys));
		start_close(c, PK_WS_CLOSE_PROTOCOL);
	}
	/* The opener ends the connection once its streams and pings are done and no stream of
	 * the peer's is still being echoed. */
	if (opt.open && c->ys && !c->closing && c->open_freed == c->opened && c->nst == 0 &&
	    pk_yamux_ping_outstanding(c->ys, NULL) == 0) {
		pk_yamux_goaway(c->ys, PK_YAMUX_GOAWAY_NORMAL);
		start_close(c, PK_WS_CLOSE_NORMAL);
	}
	if (frame_plain(c) < 0)
		fail(c, "conn: output buffer overflow");
}

/* ---- handshake ---- */

/* Copies a header value into a NUL-terminated buffer; NULL when absent. */
static const char *hdr_dup(struct conn *c, const char *name, char *out, size_t size)
{
	size_t len;
	const char *v = pk_http1_get(&c->hp, name, &len);

	if (!v)
		return NULL;
	if (len >= size)
		len = size - 1;
	memcpy(out, v, len);
	out[len] = 0;
	return out;
}

/* --expect-token: the request must carry Authorization: Bearer <token>. */
static bool token_ok(struct conn *c)
{
	size_t len;
	const char *v;

	if (!opt.token)
		return true;
	v = pk_http1_get(&c->hp, "authorization", &len);
	return v && len == 7 + strlen(opt.token) && !strncmp(v, "Bearer ", 7) &&
	       !memcmp(v + 7, opt.token, len - 7);
}

static int server_handshake(struct conn *c)
{
	char method[16], upg[128], con[128], key[128], ver[16], acc[PK_WS_ACCEPT_LEN + 1];
	char resp[512];
	struct pk_ws_upgrade_req req = {0};
	struct pk_http1_span m = c->hp.method;
	const char *why = NULL;
	ssize_t n;
	int r;

	snprintf(method, sizeof(method), "%.*s", (int)m.len, pk_http1_ptr(&c->hp, m));
	req.method = method;
	req.http_version = c->hp.version_minor == 1 ? "1.1" : "1.0";
	req.upgrade = hdr_dup(c, "upgrade", upg, sizeof(upg));
	req.connection = hdr_dup(c, "connection", con, sizeof(con));
	req.key = hdr_dup(c, "sec-websocket-key", key, sizeof(key));
	req.version = hdr_dup(c, "sec-websocket-version", ver, sizeof(ver));
	r = pk_ws_server_check(&req, acc, &why);
	if (r == 0 && !token_ok(c)) {
		n = pk_http1_build_error(resp, sizeof(resp), 401, "invalid token", 1);
		if (n > 0)
			buf_put(&c->out, resp, (size_t)n);
		fail(c, "handshake: bad or missing token");
		c->closing = true;
		c->close_deadline = now_ms() + CLOSE_GRACE;
		return -EACCES;
	}
	if (r < 0) {
		n = pk_http1_build_error(resp, sizeof(resp), (unsigned)pk_ws_handshake_status(r),
		                         why ? why : "bad upgrade", 1);
		if (n > 0)
			buf_put(&c->out, resp, (size_t)n);
		fail(c, "handshake: %s (%d)", why ? why : "?", r);
		c->closing = true;
		c->close_deadline = now_ms() + CLOSE_GRACE;
		return r;
	}
	printf("upgraded path=%.*s\n", (int)c->hp.target.len, pk_http1_ptr(&c->hp, c->hp.target));
	fflush(stdout);
	n = pk_ws_server_response(resp, sizeof(resp), acc);
	if (n < 0 || buf_put(&c->out, resp, (size_t)n) < 0)
		return -ENOMEM;
	pk_ws_init(&c->ws, PK_WS_SERVER, NULL);
	return session_start(c);
}

static int client_handshake(struct conn *c)
{
	char upg[128], con[128], acc[128], ext[128], proto[128];
	struct pk_ws_upgrade_resp resp = {0};
	const char *why = NULL;
	int r;

	resp.status = (int)c->hp.status;
	resp.upgrade = hdr_dup(c, "upgrade", upg, sizeof(upg));
	resp.connection = hdr_dup(c, "connection", con, sizeof(con));
	resp.accept = hdr_dup(c, "sec-websocket-accept", acc, sizeof(acc));
	resp.extensions = hdr_dup(c, "sec-websocket-extensions", ext, sizeof(ext));
	resp.protocol = hdr_dup(c, "sec-websocket-protocol", proto, sizeof(proto));
	r = pk_ws_client_check(c->key, &resp, &why);
	if (r < 0) {
		fail(c, "handshake rejected: %s (status %d)", why ? why : "?", resp.status);
		return r;
	}
	pk_ws_init(&c->ws, PK_WS_CLIENT, NULL);
	return session_start(c);
}

/* ---- input ---- */

static void on_ws_event(struct conn *c, const struct pk_ws_event *ev)
{
	ssize_t r;

	switch (ev->type) {
	case PK_WS_EV_DATA:
		if (!c->ys || pk_yamux_error(c->ys))
			return;
		r = pk_yamux_feed(c->ys, ev->data, ev->len);
		if (r < 0) {
			fail(c, "yamux: feed failed (%zd)", r);
			start_close(c, PK_WS_CLOSE_PROTOCOL);
		}
		return;
	case PK_WS_EV_PING:
		send_control(c, PK_WS_OP_PONG, ev->data, ev->len);
		return;
	case PK_WS_EV_CLOSE:
		c->peer_closed = true;
		if (ev->code != PK_WS_CLOSE_NORMAL && ev->code != PK_WS_CLOSE_NO_STATUS &&
		    ev->code != PK_WS_CLOSE_GOING_AWAY)
			fail(c, "websocket: peer closed with code %u", ev->code);
		start_close(c, ev->code == PK_WS_CLOSE_NO_STATUS ? PK_WS_CLOSE_NORMAL : ev->code);
		return;
	case PK_WS_EV_ERROR:
		fprintf(stderr, "codec_peer: websocket error %u: %s\n", ev->code, ev->reason);
		fail(c, "websocket: error %u: %s", ev->code, ev->reason);
		start_close(c, ev->code);
		c->peer_closed = true; /* nothing more will be read */
		return;
	default:
		return;
	}
}

static void on_ws_bytes(struct conn *c, uint8_t *p, size_t n)
{
	struct pk_ws_event ev;
	size_t off = 0;

	while (!c->peer_closed) {
		off += pk_ws_feed(&c->ws, p + off, n - off, &ev);
		if (ev.type == PK_WS_EV_NONE)
			break;
		on_ws_event(c, &ev);
	}
}

static void on_bytes(struct conn *c, uint8_t *p, size_t n)
{
	size_t used = 0;
	int r;

	if (c->upgraded) {
		on_ws_bytes(c, p, n);
		return;
	}
	r = pk_http1_parser_feed(&c->hp, p, n, &used);
	if (r == 0)
		return;
	if (r < 0) {
		fail(c, "http: bad head: %s", c->hp.error_reason ? c->hp.error_reason : "?");
		c->closing = true;
		c->close_deadline = now_ms();
		return;
	}
	r = c->client ? client_handshake(c) : server_handshake(c);
	if (r < 0) {
		fail(c, "websocket: handshake failed (%d)", r);
		c->closing = true;
		c->close_deadline = now_ms() + CLOSE_GRACE;
		return;
	}
	if (used < n)
		on_ws_bytes(c, p + used, n - used);
}

/* ---- connection lifecycle ---- */

static struct conn *conn_new(int fd, bool client)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->client = client;
	pk_http1_parser_init(&c->hp, client ? PK_HTTP1_RESPONSE : PK_HTTP1_REQUEST, NULL);
	return c;
}

static bool conn_ok(const struct conn *c)
{
	return !c->err[0] && c->upgraded && c->verified == opt.open && c->failed == 0;
}

static void conn_finish(struct conn *c)
{
	if (c->ys && opt.open && c->verified < opt.open && !c->err[0])
		fail(c, "open: connection ended with %u streams unverified",
		     opt.open - c->verified);
	if (!c->upgraded && !c->err[0])
		fail(c, "websocket: connection ended before the upgrade");
	printf("summary opened=%u verified=%u failed=%u verified_bytes=%llu echoed_streams=%u "
	       "echoed_bytes=%llu pings=%u error=%s\n",
	       c->opened, c->verified, c->failed, (unsigned long long)c->verified_bytes,
	       c->echoed_streams, (unsigned long long)c->echoed_bytes, c->pings,
	       c->err[0] ? c->err : "none");
	fflush(stdout);
	if (c->err[0])
		fprintf(stderr, "codec_peer: %s\n", c->err);
	conns_done++;
	if (!conn_ok(c))
		conns_bad++;
	pk_yamux_free(c->ys);
	c->ys = NULL;
	stream_sweep(c);
	free(c->st);
	pk_http1_parser_free(&c->hp);
	buf_free(&c->plain);
	buf_free(&c->out);
	close(c->fd);
	free(c);
}

static void conn_read(struct conn *c)
{
	static uint8_t in[READ_CHUNK];
	ssize_t n;

	n = recv(c->fd, in, sizeof(in), 0);
	if (n > 0) {
		on_bytes(c, in, (size_t)n);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0)
		fail(c, "socket: recv: %s", strerror(errno));
	c->eof = true;
}

static void conn_write(struct conn *c)
{
	ssize_t n;

	while (buf_used(&c->out)) {
		n = send(c->fd, c->out.p + c->out.off, buf_used(&c->out), MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			fail(c, "socket: send: %s", strerror(errno));
			c->eof = true;
			buf_drop(&c->out, buf_used(&c->out));
			return;
		}
		buf_drop(&c->out, (size_t)n);
	}
}

/* Timers: WebSocket and yamux pings. */
static void conn_timers(struct conn *c, uint64_t now)
{
	static const uint8_t ping_payload[] = "codec_peer";

	if (!c->upgraded || c->closing)
		return;
	if (opt.ws_ping_ms && now >= c->next_ws_ping) {
		send_control(c, PK_WS_OP_PING, ping_payload, sizeof(ping_payload) - 1);
		c->next_ws_ping = now + opt.ws_ping_ms;
	}
	if (opt.ping && opt.ping_ms && c->ys && now >= c->next_ping) {
		pk_yamux_ping(c->ys, ++c->ping_seq);
		c->next_ping = now + opt.ping_ms;
	}
}

/* Whether the connection is over: EOF, or our close is out and the peer's arrived (or
 * the grace period ran out). */
static bool conn_over(struct conn *c, uint64_t now)
{
	if (c->eof)
		return true;
	if (!c->closing || buf_used(&c->out))
		return c->closing && now >= c->close_deadline;
	if (!c->upgraded || c->peer_closed) {
		if (c->client && c->upgraded && now < c->close_deadline) {
			/* RFC 6455 7.1.1: the server closes TCP first; wait for it briefly. */
			if (!c->shut_wr)
				shutdown(c->fd, SHUT_WR);
			c->shut_wr = true;
			return false;
		}
		return true;
	}
	return now >= c->close_deadline;
}

/* ---- setup ---- */

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int parse_hostport(const char *s, char *host, size_t hsize, char *port, size_t psize)
{
	const char *colon = strrchr(s, ':');

	if (!colon || (size_t)(colon - s) >= hsize || strlen(colon + 1) >= psize || !colon[1])
		return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	strcpy(port, colon + 1);
	return 0;
}

static int make_addr(const char *host, const char *port, struct sockaddr_in *sa)
{
	char *end;
	long p = strtol(port, &end, 10);

	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	if (*end || p < 0 || p > 65535 || inet_pton(AF_INET, host, &sa->sin_addr) != 1)
		return -1;
	sa->sin_port = htons((uint16_t)p);
	return 0;
}

static int tcp_nodelay(int fd)
{
	int one = 1;

	return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int start_listen(void)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int one = 1, fd;

	if (parse_hostport(opt.listen, opt.host, sizeof(opt.host), opt.port, sizeof(opt.port)) <
	        0 ||
	    make_addr(opt.host, opt.port, &sa) < 0)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
		close(fd);
		return -1;
	}
	printf("%u\n", ntohs(sa.sin_port));
	fflush(stdout);
	return fd;
}

static struct conn *start_client(void)
{
	const char *rest, *slash;
	char hostport[160], req[1024];
	struct sockaddr_in sa;
	struct conn *c;
	int fd, n;

	if (strncmp(opt.url, "ws://", 5) != 0)
		return NULL;
	rest = opt.url + 5;
	slash = strchr(rest, '/');
	snprintf(hostport, sizeof(hostport), "%.*s",
	         slash ? (int)(slash - rest) : (int)strlen(rest), rest);
	snprintf(opt.path, sizeof(opt.path), "%s", slash ? slash : "/");
	if (parse_hostport(hostport, opt.host, sizeof(opt.host), opt.port, sizeof(opt.port)) < 0 ||
	    make_addr(opt.host, opt.port, &sa) < 0)
		return NULL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || set_nonblock(fd) < 0) {
		close(fd);
		return NULL;
	}
	tcp_nodelay(fd);
	c = conn_new(fd, true);
	if (!c || pk_ws_client_key(c->key) < 0) {
		close(fd);
		free(c);
		return NULL;
	}
	n = pk_ws_client_request(req, sizeof(req), opt.path, hostport, c->key, NULL);
	if (n < 0 || buf_put(&c->out, req, (size_t)n) < 0) {
		conn_finish(c);
		return NULL;
	}
	return c;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: codec_peer server --listen HOST:PORT [switches]\n"
	        "       codec_peer client --url ws://HOST:PORT/PATH [switches]\n"
	        "switches: --echo --open N --bytes M --conns K --timeout S --msg-size B --frag\n"
	        "          --ws-ping-ms MS --ping --ping-ms MS --lazy --window BYTES\n"
	        "          --expect-token T\n");
	exit(2);
}

static unsigned long long num_arg(int argc, char **argv, int *i)
{
	char *end;
	unsigned long long v;

	if (*i + 1 >= argc)
		usage();
	v = strtoull(argv[++*i], &end, 10);
	if (*end || argv[*i][0] == '-')
		usage();
	return v;
}

static void parse_args(int argc, char **argv)
{
	unsigned long long timeout = 60;
	int i;

	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "server"))
		opt.server = true;
	else if (strcmp(argv[1], "client") != 0)
		usage();
	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			opt.listen = argv[++i];
		else if (!strcmp(argv[i], "--url") && i + 1 < argc)
			opt.url = argv[++i];
		else if (!strcmp(argv[i], "--echo"))
			opt.echo = true;
		else if (!strcmp(argv[i], "--frag"))
			opt.frag = true;
		else if (!strcmp(argv[i], "--ping"))
			opt.ping = true;
		else if (!strcmp(argv[i], "--lazy"))
			opt.lazy = true;
		else if (!strcmp(argv[i], "--window"))
			opt.window = (unsigned)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--open"))
			opt.open = (unsigned)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--bytes"))
			opt.bytes = num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--conns"))
			opt.conns = (unsigned)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--timeout"))
			timeout = num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--msg-size"))
			opt.msg_size = (size_t)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--ws-ping-ms"))
			opt.ws_ping_ms = (unsigned)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--ping-ms"))
			opt.ping_ms = (unsigned)num_arg(argc, argv, &i);
		else if (!strcmp(argv[i], "--expect-token") && i + 1 < argc)
			opt.token = argv[++i];
		else
			usage();
	}
	if ((opt.server && !opt.listen) || (!opt.server && !opt.url) || opt.msg_size == 0 ||
	    opt.open > 4000 || opt.window < PK_YAMUX_INITIAL_WINDOW || opt.window > (1u << 30))
		usage();
	opt.deadline = now_ms() + timeout * 1000;
}

static void accept_all(int lfd)
{
	unsigned i;
	int fd;

	for (;;) {
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		for (i = 0; i < MAX_CONNS && conns[i]; i++)
			;
		if (i == MAX_CONNS || !(conns[i] = conn_new(fd, false))) {
			close(fd);
			continue;
		}
		tcp_nodelay(fd);
	}
}

int main(int argc, char **argv)
{
	struct pollfd pfd[MAX_CONNS + 1];
	struct conn *idx[MAX_CONNS + 1];
	int lfd = -1, timeout;
	unsigned i, n;
	uint64_t now;

	signal(SIGPIPE, SIG_IGN);
	parse_args(argc, argv);
	if (opt.server) {
		lfd = start_listen();
		if (lfd < 0) {
			fprintf(stderr, "codec_peer: cannot listen on %s\n", opt.listen);
			return 1;
		}
	} else if (!(conns[0] = start_client())) {
		fprintf(stderr, "codec_peer: cannot connect to %s\n", opt.url);
		return 1;
	}
	for (;;) {
		now = now_ms();
		if (now >= opt.deadline) {
			fprintf(stderr, "codec_peer: timed out\n");
			for (i = 0; i < MAX_CONNS; i++)
				if (conns[i])
					fail(conns[i], "peer: timed out");
			for (i = 0; i < MAX_CONNS; i++)
				if (conns[i])
					conn_finish(conns[i]);
			return 3;
		}
		n = 0;
		if (lfd >= 0) {
			pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
			idx[n++] = NULL;
		}
		timeout = (int)(opt.deadline - now);
		for (i = 0; i < MAX_CONNS; i++) {
			struct conn *c = conns[i];

			if (!c)
				continue;
			conn_timers(c, now);
			pump(c);
			conn_write(c);
			if (conn_over(c, now)) {
				conn_finish(c);
				conns[i] = NULL;
				continue;
			}
			pfd[n] = (struct pollfd){.fd = c->fd, .events = 0};
			/* Reading stops while our output is backed up: the peer then stalls too. */
			if (buf_used(&c->out) < 4 * OUT_HIGH)
				pfd[n].events |= POLLIN;
			if (buf_used(&c->out))
				pfd[n].events |= POLLOUT;
			if (c->closing && (int)(c->close_deadline - now) < timeout)
				timeout =
				    c->close_deadline > now ? (int)(c->close_deadline - now) : 0;
			if (opt.ws_ping_ms && timeout > (int)opt.ws_ping_ms)
				timeout = (int)opt.ws_ping_ms;
			if (opt.ping_ms && timeout > (int)opt.ping_ms)
				timeout = (int)opt.ping_ms;
			idx[n++] = c;
		}
		if (!opt.server && !conns[0])
			return conns_bad ? 1 : 0;
		if (opt.server && opt.conns && conns_done >= opt.conns)
			return conns_bad ? 1 : 0;
		if (poll(pfd, n, timeout) < 0 && errno != EINTR)
			return 1;
		for (i = 0; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			if (!idx[i]) {
				accept_all(lfd);
				continue;
			}
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
				conn_read(idx[i]);
			if (pfd[i].revents & POLLOUT)
				conn_write(idx[i]);
		}
	}
}
