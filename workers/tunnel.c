#include "workers/tunnel.h"

#include "common/log.h"
#include "proto/websocket.h"
#include "proto/yamux.h"
#include "shm/counters.h"
#include "shm/routes.h"
#include "workers/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PK__LOG              "upstream"
#define PK__READ_BUF         (64 * 1024)
#define PK__QUEUE_HIGH       (1024 * 1024) /* bytes queued to the agent before streams wait */
#define PK__QUEUE_LOW        (256 * 1024)
#define PK__TICK_MS          5000
#define PK__PING_INTERVAL_MS 30000 /* as Piko */
#define PK__PING_TIMEOUT_MS  10000
#define PK__FIN_DELAY_MS     10 /* an exchange's FIN waits at most this long for company */
#define PK__FIN_OWED_MAX     16

struct pk__tstream {
	struct pk_tunnel *t;
	const struct pk_tstream_ops *ops;
	void *ud;
	uint32_t id;
	int user_gone; /* reset by the user: no more callbacks */
	int blocked;   /* waiting for the agent queue to drain */
	struct pk__tstream *bnext;
};

struct pk_tunnel {
	struct pk_worker *w;
	uv_tcp_t *tcp;
	uv_timer_t timer;
	int handles;
	struct pk_ws ws;
	struct pk_yamux_session *ys;
	char endpoint[PK_ROUTE_MAX_ENDPOINT + 1];
	char remote[80];
	uint64_t id;
	struct pk_route route;
	int route_added; /* the route row is in the table */
	int ctr_held;    /* the counters slot is ours */
	int64_t token_exp;
	int closing;
	int draining;
	int close_sent;
	size_t queued;
	unsigned nstreams;
	uint64_t last_ping_ms;
	uint32_t ping_seq;
	struct pk__tstream *blocked;
	struct pk_tunnel *hnext;
	struct pk__twrite *batch; /* frames not yet handed to uv_write */
	struct pk_tunnel *fnext, *fprev;
	int in_flush_list;
	uint32_t fin_owed[PK__FIN_OWED_MAX]; /* streams whose FIN waits for other frames */
	unsigned nfin;
	int write_failed; /* a write was refused: the agent's byte stream has a gap, close */
	struct pk_tunnel *onext, *oprev; /* on pk__owing while nfin > 0 */
};

/* One read buffer for every tunnel of the worker: what is read is decoded and handed on
 * inside the read callback, so nothing stays in it between reads, and an idle tunnel costs
 * no buffer at all. */
static uint8_t pk__rbuf[PK__READ_BUF];

/* Frames for one agent are gathered during a loop turn and written with one uv_write just
 * before the loop polls again (a uv_prepare handle), so a burst of yamux frames costs one
 * system call instead of one each. */
struct pk__twrite {
	uv_write_t req;
	struct pk_tunnel *t;
	size_t len, cap;
	uint8_t data[];
};

#define PK__BATCH_MIN  (16 * 1024)
#define PK__BATCH_BULK (256 * 1024)
/* A frame at least this large goes to the socket from the caller's buffers, together with
 * the batch ahead of it, instead of being copied into the batch. */
#define PK__DIRECT_MIN (16 * 1024)
#define PK__DIRECT_IOV 4

static struct pk_tunnel *pk__flush_list;
static uv_prepare_t pk__flush_prepare;
static int pk__flush_ready;
static void (*pk__flushed_hook)(void);

/* Tunnels owing FINs (pk_tunnel_stream_fin_lazy), and the timer that sends them when no
 * other frame has taken them along. */
static struct pk_tunnel *pk__owing;
static uv_timer_t pk__fin_timer;
static int pk__fin_timer_ready;

static void pk__tunnel_close(struct pk_tunnel *t, const char *reason);
static void pk__tunnel_unroute(struct pk_tunnel *t);
static void pk__tick(uv_timer_t *timer);

uint64_t pk_tunnel_id(const struct pk_tunnel *t)
{
	return t->id;
}

const char *pk_tunnel_endpoint(const struct pk_tunnel *t)
{
	return t->endpoint;
}

int pk_tunnel_usable(const struct pk_tunnel *t)
{
	return !t->closing && !t->draining && !t->write_failed && t->ys != NULL &&
	       !pk_yamux_remote_goaway(t->ys);
}

unsigned pk_tunnel_streams(const struct pk_tunnel *t)
{
	/* A stream owing only its FIN has finished its exchange. */
	return t->nstreams > t->nfin ? t->nstreams - t->nfin : 0;
}

/* ---- writing to the agent ---- */

static void pk__notify_writable(struct pk_tunnel *t)
{
	struct pk__tstream *list = t->blocked;
	t->blocked = NULL;
	while (list) {
		struct pk__tstream *ts = list;
		list = ts->bnext;
		ts->blocked = 0;
		ts->bnext = NULL;
		if (!ts->user_gone && ts->ops->on_writable)
			ts->ops->on_writable(ts->ud);
		if (t->closing)
			return;
	}
}

static void pk__twrite_done(uv_write_t *req, int status)
{
	struct pk__twrite *wr = (struct pk__twrite *)req;
	struct pk_tunnel *t = wr->t;
	t->queued -= wr->len;
	free(wr);
	if (status < 0) {
		pk__tunnel_close(t, "write failed");
		return;
	}
	if (t->queued < PK__QUEUE_LOW && t->blocked && !t->closing && !t->write_failed)
		pk__notify_writable(t);
}

/* Frames after a refused write would reach the agent out of place: the tunnel closes
 * (from its timer: the caller may be inside the session) and sends nothing more. */
static void pk__write_refused(struct pk_tunnel *t)
{
	if (t->write_failed || t->closing)
		return;
	t->write_failed = 1;
	pk__tunnel_unroute(t);
	uv_timer_start(&t->timer, pk__tick, 0, 0);
}

static void pk__flush(struct pk_tunnel *t)
{
	struct pk__twrite *wr = t->batch;
	if (wr == NULL)
		return;
	t->batch = NULL;
	if (wr->len == 0 || t->write_failed) {
		t->queued -= wr->len;
		free(wr); /* a direct write took all of it, or nothing more may go */
		return;
	}
	/* What the socket takes at once needs no write request: no completion to wait for, no
	 * poll registration to change, and the loop does not turn again at once for it. */
	uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)wr->len);
	int k = uv_try_write((uv_stream_t *)t->tcp, &b, 1);
	size_t done = k > 0 ? (size_t)k : 0;
	t->queued -= done;
	if (done == wr->len) {
		free(wr);
		return;
	}
	wr->len -= done;
	b = uv_buf_init((char *)wr->data + done, (unsigned)wr->len);
	if (uv_write(&wr->req, (uv_stream_t *)t->tcp, &b, 1, pk__twrite_done) < 0) {
		t->queued -= wr->len;
		free(wr);
		pk__write_refused(t);
	}
}

static void pk__unlist(struct pk_tunnel *t)
{
	if (!t->in_flush_list)
		return;
	if (t->fprev)
		t->fprev->fnext = t->fnext;
	else
		pk__flush_list = t->fnext;
	if (t->fnext)
		t->fnext->fprev = t->fprev;
	t->fnext = t->fprev = NULL;
	t->in_flush_list = 0;
}

static void pk__owe_unlist(struct pk_tunnel *t)
{
	if (t->nfin == 0)
		return;
	t->nfin = 0;
	if (t->oprev)
		t->oprev->onext = t->onext;
	else
		pk__owing = t->onext;
	if (t->onext)
		t->onext->oprev = t->oprev;
	t->onext = t->oprev = NULL;
}

/* A stream gone before its owed FIN went (the agent reset it) owes nothing, and no longer
 * stands for a finished exchange in pk_tunnel_streams. */
static void pk__owe_forget(struct pk_tunnel *t, uint32_t id)
{
	for (unsigned i = 0; i < t->nfin; i++)
		if (t->fin_owed[i] == id) {
			if (t->nfin == 1) {
				pk__owe_unlist(t);
				return;
			}
			t->fin_owed[i] = t->fin_owed[--t->nfin];
			return;
		}
}

/* The owed FINs, into the tunnel's batch. A stream the agent has reset meanwhile is gone
 * and owes nothing. */
static void pk__fins_out(struct pk_tunnel *t)
{
	uint32_t ids[PK__FIN_OWED_MAX];
	unsigned n = t->nfin;
	memcpy(ids, t->fin_owed, n * sizeof(ids[0]));
	pk__owe_unlist(t);
	for (unsigned i = 0; i < n && !t->closing && t->ys; i++)
		if (pk_yamux_stream_user(t->ys, ids[i]) != NULL)
			(void)pk_yamux_close(t->ys, ids[i]);
}

static void pk__fin_timeout(uv_timer_t *h)
{
	while (pk__owing)
		pk__fins_out(pk__owing);
}

static void pk__flush_all(uv_prepare_t *h)
{
	while (pk__flush_list) {
		struct pk_tunnel *t = pk__flush_list;
		if (t->nfin)
			pk__fins_out(t); /* frames go to the agent anyway: the FINs go with them */
		pk__unlist(t);
		pk__flush(t);
		/* A direct write (pk__send_direct) may have taken the batch that kept the queue
		 * high: no write completion will wake the streams waiting for it. */
		if (t->queued < PK__QUEUE_LOW && t->blocked && !t->closing && !t->write_failed)
			pk__notify_writable(t);
	}
	uv_prepare_stop(h);
	/* Streams woken above may have written to their clients: what follows those writes
	 * runs before the poll as well, even when its prepare handle has had its turn. */
	if (pk__flushed_hook)
		pk__flushed_hook();
}

void pk_tunnel_after_flush(void (*fn)(void))
{
	pk__flushed_hook = fn;
}

void pk_tunnel_flush_pending(void)
{
	if (pk__flush_list)
		pk__flush_all(&pk__flush_prepare);
}

/* Room for n more bytes in the tunnel's batch (a new batch when it is full). */
static uint8_t *pk__reserve(struct pk_tunnel *t, size_t n)
{
	if (t->batch && t->batch->cap - t->batch->len >= n)
		return t->batch->data + t->batch->len;
	pk__flush(t);
	size_t cap = n > PK__BATCH_MIN ? (n > PK__BATCH_BULK ? n : PK__BATCH_BULK) : PK__BATCH_MIN;
	struct pk__twrite *wr = malloc(sizeof(*wr) + cap);
	if (wr == NULL)
		return NULL;
	wr->t = t;
	wr->len = 0;
	wr->cap = cap;
	t->batch = wr;
	if (!t->in_flush_list) {
		if (!pk__flush_ready) {
			uv_prepare_init(t->w->loop, &pk__flush_prepare);
			uv_unref((uv_handle_t *)&pk__flush_prepare);
			pk__flush_ready = 1;
		}
		t->fnext = pk__flush_list;
		t->fprev = NULL;
		if (pk__flush_list)
			pk__flush_list->fprev = t;
		pk__flush_list = t;
		t->in_flush_list = 1;
		uv_prepare_start(&pk__flush_prepare, pk__flush_all);
	}
	return wr->data;
}

/* Writes the batch and a large frame (its header, then the iovecs) with one writev when
 * libuv has nothing queued: the payload is not copied into the batch. Returns how many of
 * the frame's bytes went out; the batch keeps what of it did not. */
static size_t pk__send_direct(struct pk_tunnel *t, const uint8_t *hdr, size_t hlen,
                              const struct iovec *iov, int iovcnt)
{
	uv_buf_t b[2 + PK__DIRECT_IOV];
	unsigned nb = 0;
	if (t->write_failed)
		return 0;
	size_t blen = t->batch ? t->batch->len : 0;
	if (blen)
		b[nb++] = uv_buf_init((char *)t->batch->data, (unsigned)blen);
	b[nb++] = uv_buf_init((char *)hdr, (unsigned)hlen);
	for (int i = 0; i < iovcnt; i++)
		b[nb++] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
	int r = uv_try_write((uv_stream_t *)t->tcp, b, nb);
	size_t k = r > 0 ? (size_t)r : 0;
	if (blen == 0)
		return k;
	size_t from_batch = k < blen ? k : blen;
	memmove(t->batch->data, t->batch->data + from_batch, blen - from_batch);
	t->batch->len -= from_batch;
	t->queued -= from_batch;
	return k - from_batch;
}

/* Queues one WebSocket frame (binary unless given) holding the concatenated iovecs. */
static int pk__send_frame(struct pk_tunnel *t, enum pk_ws_opcode op, const struct iovec *iov,
                          int iovcnt)
{
	uint8_t hdr[PK_WS_MAX_HEADER];
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	int hlen = pk_ws_header(&t->ws, hdr, op, true, total, NULL);
	if (hlen < 0)
		return hlen;
	size_t skip = 0; /* bytes of the frame already on the socket */
	if (total >= PK__DIRECT_MIN && iovcnt <= PK__DIRECT_IOV) {
		skip = pk__send_direct(t, hdr, (size_t)hlen, iov, iovcnt);
		if (skip == (size_t)hlen + total)
			return 0;
	}
	uint8_t *p = pk__reserve(t, (size_t)hlen + total - skip);
	if (p == NULL)
		return -ENOMEM;
	size_t off = 0;
	if (skip < (size_t)hlen) {
		memcpy(p, hdr + skip, (size_t)hlen - skip);
		off = (size_t)hlen - skip;
		skip = 0;
	} else {
		skip -= (size_t)hlen;
	}
	for (int i = 0; i < iovcnt; i++) {
		size_t l = iov[i].iov_len;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		memcpy(p + off, (const uint8_t *)iov[i].iov_base + skip, l - skip);
		off += l - skip;
		skip = 0;
	}
	t->batch->len += off;
	t->queued += off;
	return 0;
}

static int pk__send_raw(struct pk_tunnel *t, const uint8_t *frame, size_t len)
{
	uint8_t *p = pk__reserve(t, len);
	if (p == NULL)
		return -ENOMEM;
	memcpy(p, frame, len);
	t->batch->len += len;
	t->queued += len;
	return 0;
}

/* ---- yamux callbacks ---- */

static int pk__ys_write(void *ud, const struct iovec *iov, int iovcnt)
{
	struct pk_tunnel *t = ud;
	if (t->close_sent)
		return -EPIPE;
	return pk__send_frame(t, PK_WS_OP_BINARY, iov, iovcnt);
}

static int pk__ys_on_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	/* Agents never open streams towards the server (PROTOCOL.md section 1). */
	return PK_YAMUX_REJECT;
}

static void pk__ys_on_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                           const uint8_t *data, size_t len)
{
	struct pk__tstream *ts = user;
	if (ts == NULL || ts->user_gone) {
		pk_yamux_consumed(s, id, len);
		return;
	}
	ts->ops->on_data(ts->ud, data, len);
}

static void pk__ys_on_fin(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct pk__tstream *ts = user;
	if (ts && !ts->user_gone && ts->ops->on_fin)
		ts->ops->on_fin(ts->ud);
}

static void pk__ys_on_window(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                             uint32_t available)
{
	struct pk__tstream *ts = user;
	if (ts && !ts->user_gone && !ts->blocked && ts->ops->on_writable)
		ts->ops->on_writable(ts->ud);
}

static void pk__unblock(struct pk_tunnel *t, struct pk__tstream *ts)
{
	for (struct pk__tstream **pp = &t->blocked; *pp; pp = &(*pp)->bnext)
		if (*pp == ts) {
			*pp = ts->bnext;
			break;
		}
	ts->blocked = 0;
}

static void pk__ys_on_free(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct pk_tunnel *t = ud;
	struct pk__tstream *ts = user;
	if (ts == NULL)
		return;
	if (ts->blocked)
		pk__unblock(t, ts);
	pk__owe_forget(t, id);
	t->nstreams--;
	pk_counters_tunnel_streams_add(t->w->ctr, t->route.ctr_slot, t->route.ctr_tag, -1);
	if (!ts->user_gone && ts->ops->on_close)
		ts->ops->on_close(ts->ud, -ECONNRESET);
	free(ts);
	if (t->draining && t->nstreams == 0 && !t->closing)
		uv_timer_start(&t->timer, pk__tick, 0, 0); /* close outside the session's call */
}

static void pk__ys_on_goaway(struct pk_yamux_session *s, void *ud, uint32_t code)
{
	struct pk_tunnel *t = ud;
	pk_log_info(PK__LOG, "agent sent goaway", "endpoint=%s code=%u", t->endpoint, code);
}

static void pk__ys_on_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	struct pk_tunnel *t = ud;
	pk_log_warn(PK__LOG, "yamux protocol error from agent", "endpoint=%s reason=%s",
	            t->endpoint, reason);
}

static uint64_t pk__now_cb(void *ud)
{
	return pk_worker_now_ms();
}

static const struct pk_yamux_callbacks pk__ys_cbs = {
    .write = pk__ys_write,
    .on_stream = pk__ys_on_stream,
    .on_data = pk__ys_on_data,
    .on_fin = pk__ys_on_fin,
    .on_window = pk__ys_on_window,
    .on_free = pk__ys_on_free,
    .on_goaway = pk__ys_on_goaway,
    .on_error = pk__ys_on_error,
};

/* ---- stream API for the proxy ---- */

int pk_tunnel_stream_open(struct pk_tunnel *t, const struct pk_tstream_ops *ops, void *ud, int lazy,
                          uint32_t *id)
{
	if (!pk_tunnel_usable(t))
		return -ECONNREFUSED;
	if (t->nfin)
		pk__fins_out(t); /* they go with this stream's frames, and free their streams */
	if (t->nstreams >= (unsigned)t->w->cfg->upstream_max_streams)
		return -EBUSY;
	struct pk__tstream *ts = calloc(1, sizeof(*ts));
	if (ts == NULL)
		return -ENOMEM;
	ts->t = t;
	ts->ops = ops;
	ts->ud = ud;
	int rc = pk_yamux_open(t->ys, lazy ? PK_YAMUX_OPEN_LAZY : 0, ts, &ts->id);
	if (rc < 0) {
		free(ts);
		return rc;
	}
	t->nstreams++;
	pk_counters_tunnel_streams_add(t->w->ctr, t->route.ctr_slot, t->route.ctr_tag, 1);
	pk_counters_worker_add(t->w->ctr, t->w->worker_index, PK_CTR_W_STREAMS_OPENED, 1);
	*id = ts->id;
	return 0;
}

static struct pk__tstream *pk__ts(struct pk_tunnel *t, uint32_t id)
{
	if (t->closing || t->ys == NULL)
		return NULL;
	return pk_yamux_stream_user(t->ys, id);
}

ssize_t pk_tunnel_stream_send(struct pk_tunnel *t, uint32_t id, const void *buf, size_t len)
{
	struct pk__tstream *ts = pk__ts(t, id);
	if (ts == NULL)
		return -EPIPE;
	if (t->queued >= PK__QUEUE_HIGH) {
		if (!ts->blocked) {
			ts->blocked = 1;
			ts->bnext = t->blocked;
			t->blocked = ts;
		}
		return 0;
	}
	return pk_yamux_send(t->ys, id, buf, len);
}

int pk_tunnel_stream_consumed(struct pk_tunnel *t, uint32_t id, size_t n)
{
	if (pk__ts(t, id) == NULL)
		return -EPIPE;
	return pk_yamux_consumed(t->ys, id, n);
}

int pk_tunnel_stream_fin(struct pk_tunnel *t, uint32_t id)
{
	if (pk__ts(t, id) == NULL)
		return -EPIPE;
	return pk_yamux_close(t->ys, id);
}

int pk_tunnel_stream_fin_lazy(struct pk_tunnel *t, uint32_t id)
{
	if (pk__ts(t, id) == NULL)
		return -EPIPE;
	if (t->draining)
		return pk_yamux_close(t->ys, id); /* the tunnel closes when its last stream ends */
	if (t->nfin == PK__FIN_OWED_MAX)
		pk__fins_out(t);
	if (t->nfin == 0) {
		if (!pk__fin_timer_ready) {
			uv_timer_init(t->w->loop, &pk__fin_timer);
			uv_unref((uv_handle_t *)&pk__fin_timer);
			pk__fin_timer_ready = 1;
		}
		t->oprev = NULL;
		t->onext = pk__owing;
		if (pk__owing)
			pk__owing->oprev = t;
		else
			uv_timer_start(&pk__fin_timer, pk__fin_timeout, PK__FIN_DELAY_MS, 0);
		pk__owing = t;
	}
	t->fin_owed[t->nfin++] = id;
	return 0;
}

void pk_tunnel_stream_reset(struct pk_tunnel *t, uint32_t id)
{
	struct pk__tstream *ts = pk__ts(t, id);
	if (ts == NULL)
		return;
	ts->user_gone = 1;
	pk_yamux_reset(t->ys, id);
}

/* ---- lifetime ---- */

static void pk__tunnel_handle_closed(uv_handle_t *h)
{
	struct pk_tunnel *t = h->data;
	if (h != (uv_handle_t *)&t->timer)
		free(h);
	if (--t->handles > 0)
		return;
	struct pk_worker *w = t->w;
	free(t);
	pk_worker_check_drained(w);
}

static void pk__after_shutdown(uv_shutdown_t *req, int status)
{
	struct pk_tunnel *t = req->data;
	free(req);
	uv_close((uv_handle_t *)t->tcp, pk__tunnel_handle_closed);
}

/* Takes the tunnel out of the routing table: no new request finds it. */
static void pk__tunnel_unroute(struct pk_tunnel *t)
{
	if (!t->route_added)
		return;
	int rc = pk_routes_remove(t->w->db, t->endpoint, strlen(t->endpoint), &t->route);
	if (rc < 0 && rc != -ENOENT)
		pk_log_error(PK__LOG, "cannot remove route", "endpoint=%s error=%s", t->endpoint,
		             strerror(-rc));
	t->route_added = 0;
}

static void pk__tunnel_close(struct pk_tunnel *t, const char *reason)
{
	struct pk_worker *w = t->w;
	if (t->closing)
		return;
	t->closing = 1;
	pk__tunnel_unroute(t);
	if (t->ctr_held) {
		pk_counters_tunnel_free(w->ctr, w->slot, t->route.ctr_slot, t->route.ctr_tag);
		pk_counters_gauge_add(w->ctr, w->slot, PK_CTR_G_TUNNELS, -1);
		t->ctr_held = 0;
	}
	pk_worker_remove_tunnel(w, t);
	pk_log_info(PK__LOG, "upstream disconnected", "endpoint=%s tunnel_id=%llu reason=%s",
	            t->endpoint, (unsigned long long)t->id, reason);

	/* Streams learn first (their users answer 502 or close), then the agent gets a
	 * proper close frame, then FIN. */
	pk__owe_unlist(t); /* the session goes, and every stream with it */
	struct pk_yamux_session *ys = t->ys;
	t->ys = NULL;
	pk_yamux_free(ys);
	t->blocked = NULL;
	uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
	int n = pk_ws_close(&t->ws, frame, sizeof(frame), PK_WS_CLOSE_GOING_AWAY, NULL, 0);
	int sent = 0;
	if (n > 0 && t->batch == NULL && t->queued == 0 && !t->write_failed) {
		/* Nothing queued ahead of it: straight to the socket, without a batch buffer.
		 * When many agents go at once (a network split), a batch each would be the
		 * largest allocation of the whole disconnect. */
		uv_buf_t b = uv_buf_init((char *)frame, (unsigned)n);
		int wn = uv_try_write((uv_stream_t *)t->tcp, &b, 1);
		sent = wn > 0 ? wn : 0;
	}
	if (n > sent)
		(void)pk__send_raw(t, frame + sent, (size_t)(n - sent));
	t->close_sent = 1;
	pk__unlist(t);
	pk__flush(t); /* before the FIN below */
	uv_timer_stop(&t->timer);
	uv_close((uv_handle_t *)&t->timer, pk__tunnel_handle_closed);
	uv_read_stop((uv_stream_t *)t->tcp);
	uv_shutdown_t *req = malloc(sizeof(*req));
	if (req) {
		req->data = t;
		if (uv_shutdown(req, (uv_stream_t *)t->tcp, pk__after_shutdown) == 0)
			return;
		free(req);
	}
	uv_close((uv_handle_t *)t->tcp, pk__tunnel_handle_closed);
}

static void pk__tick(uv_timer_t *timer)
{
	struct pk_tunnel *t = timer->data;
	uint64_t now = pk_worker_now_ms();
	uint64_t oldest = 0;

	if (t->closing)
		return;
	if (t->write_failed) {
		pk__tunnel_close(t, "write failed");
		return;
	}
	if (t->draining && t->nstreams == 0) {
		pk__tunnel_close(t, "worker draining");
		return;
	}
	if (t->token_exp > 0 && (int64_t)time(NULL) >= t->token_exp) {
		pk__tunnel_close(t, "token expired");
		return;
	}
	if (pk_yamux_ping_outstanding(t->ys, &oldest) > 0 && now - oldest > PK__PING_TIMEOUT_MS) {
		pk__tunnel_close(t, "ping timeout");
		return;
	}
	if (now - t->last_ping_ms >= PK__PING_INTERVAL_MS) {
		t->last_ping_ms = now;
		(void)pk_yamux_ping(t->ys, ++t->ping_seq);
	}
	uint64_t next = PK__TICK_MS;
	if (t->token_exp > 0) {
		int64_t left_ms = (t->token_exp - (int64_t)time(NULL)) * 1000;
		if (left_ms >= 0 && (uint64_t)left_ms < next)
			next = (uint64_t)left_ms + 1;
	}
	uv_timer_start(&t->timer, pk__tick, next, 0);
}

static void pk__feed(struct pk_tunnel *t, uint8_t *buf, size_t len)
{
	size_t off = 0;
	for (;;) {
		struct pk_ws_event ev;
		off += pk_ws_feed(&t->ws, buf + off, len - off, &ev);
		switch (ev.type) {
		case PK_WS_EV_NONE:
			return;
		case PK_WS_EV_DATA: {
			ssize_t rc = pk_yamux_feed(t->ys, ev.data, ev.len);
			if (rc < 0) {
				pk__tunnel_close(t, "yamux session ended");
				return;
			}
			if (t->closing)
				return;
			break;
		}
		case PK_WS_EV_PING: {
			uint8_t frame[PK_WS_MAX_CONTROL_FRAME];
			int n = pk_ws_control(&t->ws, frame, sizeof(frame), PK_WS_OP_PONG, ev.data,
			                      ev.len);
			if (n > 0)
				(void)pk__send_raw(t, frame, (size_t)n);
			break;
		}
		case PK_WS_EV_CLOSE:
			pk__tunnel_close(t, "agent closed the websocket");
			return;
		case PK_WS_EV_ERROR:
			pk_log_warn(PK__LOG, "websocket error from agent", "endpoint=%s reason=%s",
			            t->endpoint, ev.reason);
			pk__tunnel_close(t, "websocket protocol error");
			return;
		default:
			break;
		}
	}
}

static void pk__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	*b = uv_buf_init((char *)pk__rbuf, sizeof(pk__rbuf));
}

static void pk__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct pk_tunnel *t = s->data;
	if (n < 0) {
		pk__tunnel_close(t, n == UV_EOF ? "agent disconnected" : uv_strerror((int)n));
		return;
	}
	if (n > 0)
		pk__feed(t, pk__rbuf, (size_t)n);
}

void pk_tunnel_drain(struct pk_tunnel *t)
{
	if (t->closing || t->draining)
		return;
	t->draining = 1;
	pk__tunnel_unroute(t);
	if (t->nfin)
		pk__fins_out(t); /* finished exchanges: their streams end now */
	if (t->nstreams == 0 && !t->closing)
		pk__tunnel_close(t, "worker draining");
}

int pk_tunnel_start(struct pk_worker *w, uv_tcp_t *tcp, const char *endpoint, const char *remote,
                    int64_t token_exp, const void *rest, size_t rest_len)
{
	struct pk_yamux_options yo;
	struct pk_tunnel *t = calloc(1, sizeof(*t));
	int rc;

	if (t == NULL)
		return -ENOMEM;
	if (rest_len > sizeof(pk__rbuf)) {
		free(t);
		return -E2BIG;
	}
	t->w = w;
	t->tcp = tcp;
	tcp->data = t;
	snprintf(t->endpoint, sizeof(t->endpoint), "%s", endpoint);
	snprintf(t->remote, sizeof(t->remote), "%s", remote);
	t->token_exp = token_exp;
	t->id = ((uint64_t)(uint32_t)getpid() << 32) | (++w->next_tunnel_id & 0xffffffffu);
	pk_ws_init(&t->ws, PK_WS_SERVER, NULL);
	pk_yamux_options_init(&yo);
	yo.now_ms = pk__now_cb;
	rc = pk_yamux_new(&t->ys, PK_YAMUX_SERVER, &yo, &pk__ys_cbs, t);
	if (rc < 0)
		goto err_free;

	t->route.slot = (uint32_t)w->slot;
	t->route.generation = w->generation;
	t->route.tunnel_id = t->id;
	t->route.since_ms = pk_worker_now_ms();
	t->route.token_exp = token_exp;
	snprintf(t->route.remote, sizeof(t->route.remote), "%.47s", remote);
	rc = pk_counters_tunnel_alloc(w->ctr, w->slot, &t->route.ctr_slot, &t->route.ctr_tag);
	if (rc < 0)
		goto err_session;
	rc = pk_routes_add(w->db, t->endpoint, strlen(t->endpoint), &t->route);
	if (rc < 0) {
		pk_counters_tunnel_free(w->ctr, w->slot, t->route.ctr_slot, t->route.ctr_tag);
		goto err_session;
	}
	(void)pk_routes_clear_markers(w->db, t->endpoint, strlen(t->endpoint));
	t->route_added = 1;
	t->ctr_held = 1;
	pk_counters_gauge_add(w->ctr, w->slot, PK_CTR_G_TUNNELS, 1);
	pk_counters_worker_add(w->ctr, w->worker_index, PK_CTR_W_TUNNELS_CONNECTED, 1);
	pk_worker_add_tunnel(w, t);

	uv_timer_init(w->loop, &t->timer);
	t->timer.data = t;
	t->handles = 2;
	t->last_ping_ms = pk_worker_now_ms();
	uv_timer_start(&t->timer, pk__tick, 0, 0);
	pk_log_info(PK__LOG, "upstream registered", "endpoint=%s tunnel_id=%llu remote=%s",
	            t->endpoint, (unsigned long long)t->id, t->remote);
	uv_read_start((uv_stream_t *)tcp, pk__alloc, pk__on_read);
	if (rest_len > 0) {
		memcpy(pk__rbuf, rest, rest_len);
		pk__feed(t, pk__rbuf, rest_len);
	}
	return 0;

err_session:
	pk_yamux_free(t->ys);
err_free:
	tcp->data = NULL;
	free(t);
	return rc;
}
