/* A WebSocket client connection for piko (see piko_wsc.h). */
#include "cli/piko_wsc.h"

#include "proto/http1.h"
#include "proto/websocket.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK__REQ_MAX  (16 * 1024)
#define PK__BODY_MAX 4096

enum {
	PK__W_CONNECTING = 0,
	PK__W_HANDSHAKE,
	PK__W_BODY, /* reading a refusal's body */
	PK__W_OPEN,
	PK__W_DONE, /* a final callback was made */
};

struct pk_wsc {
	struct pk_net_conn *conn;
	const struct pk_wsc_ops *ops;
	void *ud;
	int state;
	int busy;  /* depth of callbacks in progress */
	int freed; /* pk_wsc_free was called while busy */
	char key[PK_WS_KEY_LEN + 1];
	char *req; /* the upgrade request, sent once connected */
	size_t req_len;
	struct pk_http1_parser resp;
	struct pk_http1_body body;
	int status;
	char bodybuf[PK__BODY_MAX + 1];
	size_t body_len;
	struct pk_ws ws;
};

static void pk__release(struct pk_wsc *w)
{
	pk_net_close(w->conn);
	pk_http1_parser_free(&w->resp);
	free(w->req);
	free(w);
}

void pk_wsc_free(struct pk_wsc *w)
{
	if (w == NULL)
		return;
	if (w->busy) {
		w->freed = 1;
		w->state = PK__W_DONE;
		pk_net_close(w->conn);
		w->conn = NULL;
		return;
	}
	pk__release(w);
}

void *pk_wsc_ud(const struct pk_wsc *w)
{
	return w->ud;
}

/* Callback guards: a callback may free w; leave() tells whether w is still usable. */
static void pk__enter(struct pk_wsc *w)
{
	w->busy++;
}

static int pk__leave(struct pk_wsc *w)
{
	if (--w->busy == 0 && w->freed) {
		pk__release(w);
		return 0;
	}
	return !w->freed;
}

static void pk__refused(struct pk_wsc *w, int status, const char *msg)
{
	if (w->state == PK__W_DONE)
		return;
	w->state = PK__W_DONE;
	pk_net_close(w->conn);
	w->conn = NULL;
	pk__enter(w);
	w->ops->on_refused(w, status, msg);
	pk__leave(w);
}

static void pk__closed(struct pk_wsc *w, int err, const char *why)
{
	if (w->state == PK__W_DONE)
		return;
	w->state = PK__W_DONE;
	pk_net_close(w->conn);
	w->conn = NULL;
	pk__enter(w);
	w->ops->on_closed(w, err, why);
	pk__leave(w);
}

/* The message of a refusal: {"error":"..."} when the body is that, else the body. */
static void pk__refusal_done(struct pk_wsc *w)
{
	char msg[PK__BODY_MAX + 64];
	w->bodybuf[w->body_len] = 0;
	json_t *doc = json_loadb(w->bodybuf, w->body_len, 0, NULL);
	const char *e = doc ? json_string_value(json_object_get(doc, "error")) : NULL;
	if (e)
		snprintf(msg, sizeof(msg), "%s", e);
	else if (w->body_len > 0)
		snprintf(msg, sizeof(msg), "%.*s", (int)strcspn(w->bodybuf, "\r\n"), w->bodybuf);
	else
		snprintf(msg, sizeof(msg), "HTTP status %d", w->status);
	if (doc)
		json_decref(doc);
	pk__refused(w, w->status, msg);
}

static void pk__feed_body(struct pk_wsc *w, const uint8_t *d, size_t n)
{
	ssize_t k = pk_http1_body_feed(&w->body, d, n);
	if (k < 0) {
		pk__refusal_done(w);
		return;
	}
	size_t room = PK__BODY_MAX - w->body_len;
	size_t take = (size_t)k < room ? (size_t)k : room;
	memcpy(w->bodybuf + w->body_len, d, take);
	w->body_len += take;
	if (w->body.done || w->body_len == PK__BODY_MAX)
		pk__refusal_done(w);
}

/* ---- the open stream ---- */

static int pk__send_control(struct pk_wsc *w, const uint8_t *frame, int n)
{
	if (n <= 0 || w->conn == NULL)
		return -EIO;
	return pk_net_write1(w->conn, frame, (size_t)n, 0);
}

static void pk__feed_ws(struct pk_wsc *w, uint8_t *d, size_t n)
{
	size_t off = 0;
	pk__enter(w);
	while (w->state == PK__W_OPEN) {
		struct pk_ws_event ev;
		off += pk_ws_feed(&w->ws, d + off, n - off, &ev);
		if (ev.type == PK_WS_EV_NONE)
			break;
		uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
		switch (ev.type) {
		case PK_WS_EV_DATA:
			w->ops->on_data(w, ev.data, ev.len);
			break;
		case PK_WS_EV_PING:
			pk__send_control(w, frame,
			                 pk_ws_control(&w->ws, frame, sizeof(frame), PK_WS_OP_PONG,
			                               ev.data, ev.len));
			break;
		case PK_WS_EV_CLOSE:
			if (!w->ws.close_sent)
				pk__send_control(w, frame,
				                 pk_ws_close(&w->ws, frame, sizeof(frame),
				                             PK_WS_CLOSE_NORMAL, NULL, 0));
			pk__closed(w, 0, "closed by the server");
			break;
		case PK_WS_EV_ERROR:
			if (!w->ws.close_sent)
				pk__send_control(
				    w, frame,
				    pk_ws_close(&w->ws, frame, sizeof(frame), ev.code, NULL, 0));
			pk__closed(w, ev.err ? ev.err : -EPROTO, ev.reason);
			break;
		default:
			break;
		}
	}
	pk__leave(w);
}

/* ---- handshake ---- */

static void pk__answer(struct pk_wsc *w, uint8_t *d, size_t n)
{
	size_t used = 0;
	int r = pk_http1_parser_feed(&w->resp, d, n, &used);
	if (r == 0)
		return;
	if (r < 0) {
		pk__refused(w, 0, "malformed answer to the upgrade request");
		return;
	}
	struct pk_http1_parser *p = &w->resp;
	w->status = (int)p->status;
	if (p->status == 101) {
		char up[128], conn[128], acc[128], ext[128], proto[128];
		struct pk_ws_upgrade_resp rs = {
		    .status = 101,
		    .upgrade = pk_http1_get_copy(p, "upgrade", up, sizeof(up)),
		    .connection = pk_http1_get_copy(p, "connection", conn, sizeof(conn)),
		    .accept = pk_http1_get_copy(p, "sec-websocket-accept", acc, sizeof(acc)),
		    .extensions =
		        pk_http1_get_copy(p, "sec-websocket-extensions", ext, sizeof(ext)),
		    .protocol =
		        pk_http1_get_copy(p, "sec-websocket-protocol", proto, sizeof(proto)),
		};
		const char *why = NULL;
		if (pk_ws_client_check(w->key, &rs, &why) < 0) {
			pk__refused(w, 0, why ? why : "bad WebSocket answer");
			return;
		}
		w->state = PK__W_OPEN;
		pk__enter(w);
		w->ops->on_open(w);
		if (!pk__leave(w))
			return;
		if (used < n && w->state == PK__W_OPEN)
			pk__feed_ws(w, d + used, n - used);
		return;
	}
	if (p->status >= 100 && p->status < 200) {
		/* An interim answer: the real one follows. */
		pk_http1_parser_reset(&w->resp);
		if (used < n)
			pk__answer(w, d + used, n - used);
		return;
	}
	w->state = PK__W_BODY;
	pk_http1_body_init_from(&w->body, p);
	if (w->body.done) {
		pk__refusal_done(w);
		return;
	}
	if (used < n)
		pk__feed_body(w, d + used, n - used);
}

static void pk__on_connect(struct pk_net_conn *c, int err)
{
	struct pk_wsc *w = pk_net_ud(c);
	if (err < 0) {
		char msg[160];
		snprintf(msg, sizeof(msg), "cannot connect: %s", uv_strerror(err));
		pk__refused(w, 0, msg);
		return;
	}
	w->state = PK__W_HANDSHAKE;
}

static void pk__on_read(struct pk_net_conn *c, uint8_t *d, size_t n)
{
	struct pk_wsc *w = pk_net_ud(c);
	switch (w->state) {
	case PK__W_HANDSHAKE:
		pk__answer(w, d, n);
		break;
	case PK__W_BODY:
		pk__feed_body(w, d, n);
		break;
	case PK__W_OPEN:
		pk__feed_ws(w, d, n);
		break;
	default:
		break;
	}
}

static void pk__on_eof(struct pk_net_conn *c)
{
	struct pk_wsc *w = pk_net_ud(c);
	if (w->state == PK__W_OPEN)
		pk__closed(w, -ECONNRESET, "connection closed by the server");
	else if (w->state == PK__W_BODY)
		pk__refusal_done(w);
	else
		pk__refused(w, 0, "connection closed before an answer");
}

static void pk__on_error(struct pk_net_conn *c, int err)
{
	struct pk_wsc *w = pk_net_ud(c);
	if (w->state == PK__W_OPEN) {
		pk__closed(w, err, uv_strerror(err));
	} else if (w->state == PK__W_BODY) {
		pk__refusal_done(w);
	} else {
		char msg[160];
		snprintf(msg, sizeof(msg), "connection failed: %s", uv_strerror(err));
		pk__refused(w, 0, msg);
	}
}

static void pk__on_written(struct pk_net_conn *c, size_t credit)
{
	struct pk_wsc *w = pk_net_ud(c);
	if (w->state != PK__W_OPEN || w->ops->on_written == NULL)
		return;
	pk__enter(w);
	w->ops->on_written(w, credit);
	pk__leave(w);
}

static void pk__on_shutdown(struct pk_net_conn *c)
{
	(void)c;
}

static const struct pk_net_ops pk__net_ops = {
    .on_connect = pk__on_connect,
    .on_read = pk__on_read,
    .on_eof = pk__on_eof,
    .on_error = pk__on_error,
    .on_written = pk__on_written,
    .on_shutdown = pk__on_shutdown,
};

int pk_wsc_open(uv_loop_t *loop, struct pk_net_target *t, const char *host_header, const char *path,
                const char *extra_headers, const struct pk_wsc_ops *ops, void *ud,
                struct pk_wsc **out)
{
	struct pk_wsc *w = calloc(1, sizeof(*w));
	if (w == NULL)
		return -ENOMEM;
	w->ops = ops;
	w->ud = ud;
	pk_ws_init(&w->ws, PK_WS_CLIENT, NULL);
	pk_http1_parser_init(&w->resp, PK_HTTP1_RESPONSE, NULL);
	int r = -ENOMEM;
	w->req = malloc(PK__REQ_MAX);
	if (w->req == NULL)
		goto err_free;
	r = pk_ws_client_key(w->key);
	if (r < 0)
		goto err_free;
	int n = pk_ws_client_request(w->req, PK__REQ_MAX, path, host_header, w->key, extra_headers);
	if (n < 0) {
		r = n;
		goto err_free;
	}
	w->req_len = (size_t)n;
	r = pk_net_connect(loop, t, &pk__net_ops, w, &w->conn);
	if (r < 0)
		goto err_free;
	/* Queued until the connection is up. */
	r = pk_net_write1(w->conn, w->req, w->req_len, 0);
	if (r < 0)
		goto err_free;
	*out = w;
	return 0;
err_free:
	pk__release(w);
	return r;
}

/* The header of a binary message of len bytes, and its mask. Its length, -EPIPE (closing
 * or not open) or the pk_ws_header error. */
static int pk__msg_header(struct pk_wsc *w, size_t len, uint8_t hdr[PK_WS_MAX_HEADER],
                          struct pk_ws_mask *m)
{
	if (w->state != PK__W_OPEN || w->ws.close_sent || w->conn == NULL)
		return -EPIPE;
	return pk_ws_header(&w->ws, hdr, PK_WS_OP_BINARY, true, len, m);
}

int pk_wsc_send(struct pk_wsc *w, const struct iovec *iov, int n, size_t credit)
{
	size_t len = 0;
	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	uint8_t hdr[PK_WS_MAX_HEADER];
	struct pk_ws_mask m;
	int h = pk__msg_header(w, len, hdr, &m);
	if (h < 0)
		return h;
	uint8_t *buf = malloc((size_t)h + len);
	if (buf == NULL)
		return -ENOMEM;
	memcpy(buf, hdr, (size_t)h);
	size_t off = (size_t)h;
	for (int i = 0; i < n; i++) {
		pk_ws_mask_copy(&m, buf + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	return pk_net_write_take(w->conn, buf, off, credit);
}

int pk_wsc_send_inplace(struct pk_wsc *w, uint8_t *buf, size_t len)
{
	uint8_t hdr[PK_WS_MAX_HEADER];
	struct pk_ws_mask m;
	int h = pk__msg_header(w, len, hdr, &m);
	if (h < 0)
		return h;
	pk_ws_mask_inplace(&m, buf, len);
	uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)h),
	                 uv_buf_init((char *)buf, (unsigned)len)};
	return pk_net_write(w->conn, b, 2, 0);
}

size_t pk_wsc_queued(const struct pk_wsc *w)
{
	return w->conn ? pk_net_queued(w->conn) : 0;
}

void pk_wsc_read_stop(struct pk_wsc *w)
{
	if (w->conn)
		pk_net_read_stop(w->conn);
}

void pk_wsc_read_start(struct pk_wsc *w)
{
	if (w->conn)
		pk_net_read_start(w->conn);
}

void pk_wsc_close(struct pk_wsc *w, uint16_t code)
{
	if (w->state != PK__W_OPEN || w->conn == NULL || w->ws.close_sent)
		return;
	uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
	pk__send_control(w, frame, pk_ws_close(&w->ws, frame, sizeof(frame), code, NULL, 0));
	pk_net_shutdown(w->conn);
}
