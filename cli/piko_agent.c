/* One agent listener: session, reconnects, pings, stream dispatch (see piko_agent.h). */
#include "cli/piko_agent.h"

#include "cli/piko_stream.h"
#include "cli/piko_wsc.h"
#include "common/log.h"
#include "proto/yamux.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK__LOG "agent"
/* Bytes queued towards the server before the session is declared stuck. Windows bound
 * this already (256 KiB per stream); the cap guards against a server that stops reading. */
#define PK__MAX_QUEUED    (64u * 1024 * 1024)
#define PK__CLOSE_WAIT_MS 2000
/* Frames of at least this size go out on their own when nothing is gathered: copying them
 * into the batch buys no system call. */
#define PK__BATCH_DIRECT (16u * 1024)
/* A batch buffer grown beyond this is released after its flush rather than kept. */
#define PK__BATCH_KEEP (256u * 1024)
/* A new stream's ACK rides on its first frame (usually the answer's head), so the server
 * is not woken for an ACK alone while the service works. A stream that sends nothing for
 * this long is ACKed alone: far below hashicorp/yamux's StreamOpenTimeout (75 s), after
 * which a Piko server drops the whole session. */
#define PK__ACK_DELAY_MS 20
/* Streams accepted lazily per timer period; beyond, ACKed at once. hashicorp/yamux blocks
 * OpenStream while AcceptBacklog (256) of its streams await their ACK: we stay well below. */
#define PK__ACK_OWED_MAX 64

enum {
	PK__A_IDLE = 0,   /* waiting to reconnect */
	PK__A_CONNECTING, /* connect + upgrade in progress */
	PK__A_UP,         /* session up */
	PK__A_CLOSING,    /* our close frame is out, waiting for the server */
	PK__A_STOPPED,
};

struct pk_agent {
	uv_loop_t *loop;
	struct pk_conf *conf;
	struct pk_conf_listener *l;
	const struct pk_agent_hooks *hooks;
	int state;
	int stopping;
	int handles;
	struct pk_wsc *wsc;
	struct pk_yamux_session *ys;
	struct pk_pool *pool;
	uv_timer_t timer; /* backoff, connect timeout, close wait */
	uv_timer_t ping;  /* ping ticks; also the drained check while stopping */
	uv_timer_t ack;   /* PK__ACK_DELAY_MS after the first of owed[] was accepted */
	uint32_t owed[PK__ACK_OWED_MAX]; /* streams accepted lazily since ack started */
	unsigned n_owed;
	/* yamux frames made during one loop turn, sent as one WebSocket message (one write)
	 * from the prepare hook, just before the loop waits for I/O again. */
	uv_prepare_t flush;
	uint8_t *ob;
	size_t ob_len, ob_cap;
	uint64_t backoff_ms;
	uint32_t ping_id;
	uint64_t up_since;
	char path[1024];
	char *extra; /* Authorization header line, or NULL */
};

static void pk__connect(struct pk_agent *a);
static void pk__check_drained(struct pk_agent *a);

int pk_agent_retryable(int status)
{
	switch (status) {
	case 0:
	case 408:
	case 429:
	case 500:
	case 502:
	case 503:
	case 504:
		return 1;
	default:
		return 0;
	}
}

static void pk__finish(struct pk_agent *a)
{
	if (a->state == PK__A_STOPPED)
		return;
	a->state = PK__A_STOPPED;
	uv_timer_stop(&a->timer);
	uv_timer_stop(&a->ping);
	a->hooks->on_stopped(a);
}

/* Drops the session (streams and all) and the connection. */
static void pk__teardown(struct pk_agent *a)
{
	uv_timer_stop(&a->timer);
	uv_timer_stop(&a->ping);
	uv_timer_stop(&a->ack);
	a->n_owed = 0;
	uv_prepare_stop(&a->flush);
	a->ob_len = 0;
	if (a->ys) {
		struct pk_yamux_session *ys = a->ys;
		a->ys = NULL;
		pk_yamux_free(ys); /* on_free for every stream: handlers drop their connections */
	}
	pk_wsc_free(a->wsc);
	a->wsc = NULL;
	a->state = PK__A_IDLE;
}

static void pk__retry_fire(uv_timer_t *t)
{
	struct pk_agent *a = t->data;
	if (a->state == PK__A_IDLE && !a->stopping)
		pk__connect(a);
}

/* Next attempt after a jittered wait; the base doubles up to the maximum. */
static void pk__schedule(struct pk_agent *a, const char *why)
{
	if (a->stopping) {
		pk__finish(a);
		return;
	}
	uint64_t base = a->backoff_ms;
	uint32_t rnd = 0;
	if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1)
		rnd = (uint32_t)rand();
	uint64_t delay = base / 2 + rnd % (base / 2 + 1);
	a->backoff_ms = base * 2 > PK_AGENT_BACKOFF_MAX_MS ? PK_AGENT_BACKOFF_MAX_MS : base * 2;
	pk_log_info(PK__LOG, "reconnecting", "endpoint=%s in_ms=%llu reason=%s", a->l->endpoint,
	            (unsigned long long)delay, why);
	a->state = PK__A_IDLE;
	uv_timer_start(&a->timer, pk__retry_fire, delay, 0);
}

static void pk__lost(struct pk_agent *a, const char *why)
{
	int was_up = a->state == PK__A_UP || a->state == PK__A_CLOSING;
	pk__teardown(a);
	if (was_up && a->stopping)
		pk_log_info(PK__LOG, "disconnected", "endpoint=%s reason=%s", a->l->endpoint, why);
	else if (was_up)
		pk_log_warn(PK__LOG, "disconnected", "endpoint=%s reason=%s", a->l->endpoint, why);
	pk__schedule(a, why);
}

/* ---- batching frames towards the server ---- */

/* Sends what was gathered as one message. 0, or the pk_wsc_send error. */
static int pk__flush_out(struct pk_agent *a)
{
	uv_prepare_stop(&a->flush);
	if (a->ob_len == 0 || a->wsc == NULL) {
		a->ob_len = 0;
		return 0;
	}
	struct iovec iov = {.iov_base = a->ob, .iov_len = a->ob_len};
	int r = pk_wsc_send(a->wsc, &iov, 1, 0);
	a->ob_len = 0;
	if (a->ob_cap > PK__BATCH_KEEP) {
		free(a->ob);
		a->ob = NULL;
		a->ob_cap = 0;
	}
	return r;
}

static void pk__flush_cb(uv_prepare_t *p)
{
	struct pk_agent *a = p->data;
	if (pk__flush_out(a) < 0)
		pk__lost(a, "session failed");
}

static int pk__ob_reserve(struct pk_agent *a, size_t need)
{
	if (a->ob_len + need <= a->ob_cap)
		return 0;
	size_t cap = a->ob_cap ? a->ob_cap : 4096;
	while (cap < a->ob_len + need)
		cap *= 2;
	uint8_t *b = realloc(a->ob, cap);
	if (b == NULL)
		return -ENOMEM;
	a->ob = b;
	a->ob_cap = cap;
	return 0;
}

/* ---- yamux callbacks ---- */

static int pk__y_write(void *ud, const struct iovec *iov, int n)
{
	struct pk_agent *a = ud;
	if (a->wsc == NULL)
		return -EPIPE;
	size_t len = 0;
	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	if (pk_wsc_queued(a->wsc) + a->ob_len + len > PK__MAX_QUEUED)
		return -ENOBUFS;
	if (a->ob_len == 0 && len >= PK__BATCH_DIRECT)
		return pk_wsc_send(a->wsc, iov, n, 0);
	if (pk__ob_reserve(a, len) < 0)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		memcpy(a->ob + a->ob_len, iov[i].iov_base, iov[i].iov_len);
		a->ob_len += iov[i].iov_len;
	}
	uv_prepare_start(&a->flush, pk__flush_cb);
	return 0;
}

/* ACKs the lazily accepted streams that have sent nothing yet (the others' first frame
 * carried it: -EINVAL; gone: -ENOENT). */
static void pk__ack_fire(uv_timer_t *t)
{
	struct pk_agent *a = t->data;
	unsigned n = a->n_owed;
	a->n_owed = 0;
	for (unsigned i = 0; i < n && a->ys; i++)
		(void)pk_yamux_accept(a->ys, a->owed[i]);
}

static int pk__y_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	struct pk_agent *a = ud;
	if (a->stopping)
		return PK_YAMUX_REJECT;
	struct pk_strm_env env = {
	    .loop = a->loop,
	    .ys = s,
	    .listener = a->l,
	    .pool = a->pool,
	};
	struct pk_strm *h = pk_strm_new(&env, id);
	if (h == NULL)
		return PK_YAMUX_REJECT;
	pk_yamux_stream_set_user(s, id, h);
	if (a->n_owed == PK__ACK_OWED_MAX)
		return PK_YAMUX_ACCEPT;
	a->owed[a->n_owed++] = id;
	if (!uv_is_active((uv_handle_t *)&a->ack))
		uv_timer_start(&a->ack, pk__ack_fire, PK__ACK_DELAY_MS, 0);
	return PK_YAMUX_ACCEPT_LAZY;
}

static void pk__y_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                       const uint8_t *data, size_t len)
{
	(void)s;
	(void)ud;
	(void)id;
	if (user)
		pk_strm_data(user, data, len);
}

static void pk__y_fin(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	(void)ud;
	(void)id;
	if (user)
		pk_strm_fin(user);
}

static void pk__y_window(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                         uint32_t avail)
{
	(void)s;
	(void)ud;
	(void)id;
	(void)avail;
	if (user)
		pk_strm_window(user);
}

static void pk__drained_tick(uv_timer_t *t)
{
	pk__check_drained(t->data);
}

static void pk__y_free(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	(void)id;
	struct pk_agent *a = ud;
	if (user)
		pk_strm_gone(user);
	if (a->stopping && a->ys == s)
		uv_timer_start(&a->ping, pk__drained_tick, 0, 0);
}

static void pk__y_ping_ack(struct pk_yamux_session *s, void *ud, uint32_t id, uint64_t rtt)
{
	(void)s;
	struct pk_agent *a = ud;
	pk_log_debug(PK__LOG, "ping answered", "endpoint=%s id=%u rtt_ms=%llu", a->l->endpoint, id,
	             (unsigned long long)rtt);
}

static void pk__y_goaway(struct pk_yamux_session *s, void *ud, uint32_t code)
{
	(void)s;
	struct pk_agent *a = ud;
	pk_log_info(PK__LOG, "server sent goaway", "endpoint=%s code=%u", a->l->endpoint, code);
}

static void pk__y_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	(void)s;
	(void)err;
	struct pk_agent *a = ud;
	pk_log_warn(PK__LOG, "yamux protocol error", "endpoint=%s reason=%s", a->l->endpoint,
	            reason);
}

static const struct pk_yamux_callbacks pk__ycb = {
    .write = pk__y_write,
    .on_stream = pk__y_stream,
    .on_data = pk__y_data,
    .on_fin = pk__y_fin,
    .on_window = pk__y_window,
    .on_free = pk__y_free,
    .on_ping_ack = pk__y_ping_ack,
    .on_goaway = pk__y_goaway,
    .on_error = pk__y_error,
};

static uint64_t pk__now(void *ud)
{
	struct pk_agent *a = ud;
	return uv_now(a->loop);
}

/* ---- pings ---- */

static void pk__ping_tick(uv_timer_t *t)
{
	struct pk_agent *a = t->data;
	if (a->ys == NULL)
		return;
	uint64_t oldest;
	if (pk_yamux_ping_outstanding(a->ys, &oldest) > 0 &&
	    uv_now(a->loop) - oldest >= a->conf->connect.ping_timeout_ms) {
		pk_log_warn(PK__LOG, "server not answering pings", "endpoint=%s waited_ms=%llu",
		            a->l->endpoint, (unsigned long long)(uv_now(a->loop) - oldest));
		pk__lost(a, "ping timeout");
		return;
	}
	int r = pk_yamux_ping(a->ys, ++a->ping_id);
	if (r < 0 && r != -EBUSY && r != -EEXIST)
		pk__lost(a, "session failed");
}

/* ---- WebSocket callbacks ---- */

static void pk__w_open(struct pk_wsc *w)
{
	struct pk_agent *a = pk_wsc_ud(w);
	uv_timer_stop(&a->timer);
	struct pk_yamux_options opt;
	pk_yamux_options_init(&opt);
	opt.now_ms = pk__now;
	opt.max_window = a->conf->connect.stream_window;
	if (pk_yamux_new(&a->ys, PK_YAMUX_CLIENT, &opt, &pk__ycb, a) < 0) {
		pk__lost(a, "out of memory");
		return;
	}
	a->state = PK__A_UP;
	a->backoff_ms = PK_AGENT_BACKOFF_MIN_MS;
	a->up_since = uv_now(a->loop);
	uint64_t iv = a->conf->connect.ping_interval_ms;
	uint64_t tick =
	    iv < a->conf->connect.ping_timeout_ms ? iv : a->conf->connect.ping_timeout_ms;
	uv_timer_start(&a->ping, pk__ping_tick, tick, tick);
	pk_log_info(PK__LOG, "registered", "endpoint=%s url=%s protocol=%s addr=%s", a->l->endpoint,
	            a->conf->connect.url, a->l->protocol == PK_CONF_HTTP ? "http" : "tcp",
	            a->l->addr);
}

static void pk__w_refused(struct pk_wsc *w, int status, const char *msg)
{
	struct pk_agent *a = pk_wsc_ud(w);
	pk_wsc_free(w);
	a->wsc = NULL;
	uv_timer_stop(&a->timer);
	if (pk_agent_retryable(status)) {
		pk_log_warn(PK__LOG, "cannot register", "endpoint=%s url=%s status=%d error=%s",
		            a->l->endpoint, a->conf->connect.url, status, msg);
		a->state = PK__A_IDLE;
		pk__schedule(a, status ? "retryable status" : "no answer");
		return;
	}
	pk_log_error(PK__LOG, "registration refused", "endpoint=%s url=%s status=%d error=%s",
	             a->l->endpoint, a->conf->connect.url, status, msg);
	a->state = PK__A_IDLE;
	a->hooks->on_fatal(a, status, msg);
}

static void pk__w_data(struct pk_wsc *w, const uint8_t *d, size_t n)
{
	struct pk_agent *a = pk_wsc_ud(w);
	if (a->ys == NULL)
		return;
	ssize_t r = pk_yamux_feed(a->ys, d, n);
	if (r < 0)
		pk__lost(a, r == -ECONNRESET ? "server went away" : "session error");
}

static void pk__w_closed(struct pk_wsc *w, int err, const char *why)
{
	struct pk_agent *a = pk_wsc_ud(w);
	(void)err;
	pk__lost(a, why);
}

static const struct pk_wsc_ops pk__wops = {
    .on_open = pk__w_open,
    .on_refused = pk__w_refused,
    .on_data = pk__w_data,
    .on_closed = pk__w_closed,
};

static void pk__connect_timeout(uv_timer_t *t)
{
	struct pk_agent *a = t->data;
	if (a->state == PK__A_CONNECTING) {
		pk_log_warn(PK__LOG, "cannot register", "endpoint=%s url=%s status=0 error=%s",
		            a->l->endpoint, a->conf->connect.url, "connect timeout");
		pk__teardown(a);
		pk__schedule(a, "connect timeout");
	} else if (a->state == PK__A_CLOSING) {
		pk__teardown(a);
		pk__finish(a);
	}
}

static void pk__connect(struct pk_agent *a)
{
	a->state = PK__A_CONNECTING;
	int r = pk_wsc_open(a->loop, &a->conf->connect.target, a->conf->connect.host_header,
	                    a->path, a->extra, &pk__wops, a, &a->wsc);
	if (r < 0) {
		a->wsc = NULL;
		pk_log_warn(PK__LOG, "cannot register", "endpoint=%s url=%s status=0 error=%s",
		            a->l->endpoint, a->conf->connect.url, uv_strerror(r));
		a->state = PK__A_IDLE;
		pk__schedule(a, "connect failed");
		return;
	}
	uv_timer_start(&a->timer, pk__connect_timeout, a->conf->connect.timeout_ms, 0);
}

/* ---- stopping ---- */

static void pk__check_drained(struct pk_agent *a)
{
	if (!a->stopping || a->state != PK__A_UP)
		return;
	if (a->ys && pk_yamux_stream_count(a->ys) > 0)
		return;
	pk_log_info(PK__LOG, "closing", "endpoint=%s", a->l->endpoint);
	pk__flush_out(a); /* the last frames go before the close frame */
	a->state = PK__A_CLOSING;
	pk_wsc_close(a->wsc, 1000);
	uv_timer_start(&a->timer, pk__connect_timeout, PK__CLOSE_WAIT_MS, 0);
}

void pk_agent_stop(struct pk_agent *a)
{
	if (a->stopping)
		return;
	a->stopping = 1;
	switch (a->state) {
	case PK__A_IDLE:
	case PK__A_CONNECTING:
		pk__teardown(a);
		pk__finish(a);
		break;
	case PK__A_UP:
		uv_timer_stop(&a->ping);
		pk_yamux_goaway(a->ys, PK_YAMUX_GOAWAY_NORMAL);
		pk__check_drained(a);
		break;
	default:
		break;
	}
}

void pk_agent_abort(struct pk_agent *a)
{
	a->stopping = 1;
	if (a->state == PK__A_STOPPED)
		return;
	pk__teardown(a);
	pk__finish(a);
}

/* ---- life ---- */

int pk_agent_new(uv_loop_t *loop, struct pk_conf *conf, struct pk_conf_listener *l,
                 const struct pk_agent_hooks *hooks, struct pk_agent **out)
{
	struct pk_agent *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return -ENOMEM;
	a->loop = loop;
	a->conf = conf;
	a->l = l;
	a->hooks = hooks;
	a->backoff_ms = PK_AGENT_BACKOFF_MIN_MS;
	snprintf(a->path, sizeof(a->path), "%s/piko/v1/upstream/%s", conf->connect.path_prefix,
	         l->endpoint);
	if (conf->connect.token[0]) {
		size_t n = strlen(conf->connect.token) + 32;
		a->extra = malloc(n);
		if (a->extra == NULL) {
			free(a);
			return -ENOMEM;
		}
		snprintf(a->extra, n, "Authorization: Bearer %s\r\n", conf->connect.token);
	}
	if (pk_pool_new(loop, l, &a->pool) < 0) {
		free(a->extra);
		free(a);
		return -ENOMEM;
	}
	uv_timer_init(loop, &a->timer);
	uv_timer_init(loop, &a->ping);
	uv_timer_init(loop, &a->ack);
	uv_prepare_init(loop, &a->flush);
	a->timer.data = a->ping.data = a->ack.data = a->flush.data = a;
	a->handles = 4;
	*out = a;
	pk__connect(a);
	return 0;
}

static void pk__closed(uv_handle_t *h)
{
	struct pk_agent *a = h->data;
	if (--a->handles > 0)
		return;
	free(a->extra);
	free(a->ob);
	free(a);
}

void pk_agent_free(struct pk_agent *a)
{
	pk__teardown(a);
	pk_pool_free(a->pool);
	uv_close((uv_handle_t *)&a->timer, pk__closed);
	uv_close((uv_handle_t *)&a->ping, pk__closed);
	uv_close((uv_handle_t *)&a->ack, pk__closed);
	uv_close((uv_handle_t *)&a->flush, pk__closed);
}
