/* The forwarder: local TCP connections carried over WebSocket to a TCP endpoint (see
 * piko_fwd.h). */
#include "cli/piko_fwd.h"

#include "cli/piko_net.h"
#include "cli/piko_wsc.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK__LOG "forward"

struct pk__fconn;

struct pk_fwd {
	uv_loop_t *loop;
	struct pk_conf *conf;
	struct pk_conf_forwarder *fc;
	const struct pk_fwd_hooks *hooks;
	uv_tcp_t server;
	int listening;
	int stopping;
	int stopped;
	struct pk__fconn *conns;
	unsigned n_conns;
	char path[1024];
	char *extra;
	char bound[80];
};

struct pk__fconn {
	struct pk_fwd *f;
	struct pk_net_conn *local;
	struct pk_wsc *wsc;
	uv_timer_t *timer; /* connect + upgrade limit */
	int open;
	int local_eof;
	char peer[80];
	struct pk__fconn *next, *prev;
};

static void pk__check_stopped(struct pk_fwd *f)
{
	if (f->stopping && !f->stopped && f->n_conns == 0 && !f->listening) {
		f->stopped = 1;
		f->hooks->on_stopped(f);
	}
}

static void pk__timer_closed(uv_handle_t *h)
{
	free(h);
}

static void pk__fc_close(struct pk__fconn *fc)
{
	struct pk_fwd *f = fc->f;
	pk_net_close(fc->local);
	pk_wsc_free(fc->wsc);
	if (fc->timer)
		uv_close((uv_handle_t *)fc->timer, pk__timer_closed);
	if (fc->prev)
		fc->prev->next = fc->next;
	else
		f->conns = fc->next;
	if (fc->next)
		fc->next->prev = fc->prev;
	f->n_conns--;
	pk_log_debug(PK__LOG, "connection closed", "endpoint=%s peer=%s", f->fc->endpoint,
	             fc->peer);
	free(fc);
	pk__check_stopped(f);
}

/* ---- local side ---- */

static void pk__l_read(struct pk_net_conn *c, uint8_t *d, size_t n)
{
	struct pk__fconn *fc = pk_net_ud(c);
	if (fc->wsc == NULL)
		return; /* the endpoint closed: nothing can carry these bytes */
	if (pk_wsc_send_inplace(fc->wsc, d, n) < 0) {
		pk__fc_close(fc);
		return;
	}
	if (pk_wsc_queued(fc->wsc) > PK_FWD_HIGH_WATER)
		pk_net_read_stop(c);
}

static void pk__l_eof(struct pk_net_conn *c)
{
	struct pk__fconn *fc = pk_net_ud(c);
	fc->local_eof = 1;
	/* WebSocket has no half-close: a close frame, then the server's close ends it. */
	if (fc->wsc)
		pk_wsc_close(fc->wsc, 1000);
	else
		pk__fc_close(fc);
}

static void pk__l_error(struct pk_net_conn *c, int err)
{
	(void)err;
	pk__fc_close(pk_net_ud(c));
}

static void pk__l_written(struct pk_net_conn *c, size_t credit)
{
	(void)credit;
	struct pk__fconn *fc = pk_net_ud(c);
	if (fc->wsc && pk_net_queued(c) < PK_FWD_LOW_WATER)
		pk_wsc_read_start(fc->wsc);
}

static void pk__l_shutdown(struct pk_net_conn *c)
{
	pk__fc_close(pk_net_ud(c));
}

static const struct pk_net_ops pk__local_ops = {
    .on_read = pk__l_read,
    .on_eof = pk__l_eof,
    .on_error = pk__l_error,
    .on_written = pk__l_written,
    .on_shutdown = pk__l_shutdown,
};

/* ---- server side ---- */

static void pk__w_open(struct pk_wsc *w)
{
	struct pk__fconn *fc = pk_wsc_ud(w);
	fc->open = 1;
	if (fc->timer) {
		uv_close((uv_handle_t *)fc->timer, pk__timer_closed);
		fc->timer = NULL;
	}
	pk_log_debug(PK__LOG, "connected", "endpoint=%s peer=%s", fc->f->fc->endpoint, fc->peer);
	pk_net_read_start(fc->local);
}

static void pk__w_refused(struct pk_wsc *w, int status, const char *msg)
{
	struct pk__fconn *fc = pk_wsc_ud(w);
	pk_log_warn(PK__LOG, "cannot reach the endpoint", "endpoint=%s url=%s status=%d error=%s",
	            fc->f->fc->endpoint, fc->f->conf->connect.url, status, msg);
	pk__fc_close(fc);
}

static void pk__w_data(struct pk_wsc *w, const uint8_t *d, size_t n)
{
	struct pk__fconn *fc = pk_wsc_ud(w);
	if (pk_net_write1(fc->local, d, n, 0) < 0) {
		pk__fc_close(fc);
		return;
	}
	if (pk_net_queued(fc->local) > PK_FWD_HIGH_WATER)
		pk_wsc_read_stop(w);
}

static void pk__w_closed(struct pk_wsc *w, int err, const char *why)
{
	struct pk__fconn *fc = pk_wsc_ud(w);
	pk_log_debug(PK__LOG, "endpoint closed", "endpoint=%s peer=%s reason=%s",
	             fc->f->fc->endpoint, fc->peer, why);
	pk_wsc_free(w);
	fc->wsc = NULL;
	if (err < 0 && err != -ECONNRESET) {
		pk__fc_close(fc);
		return;
	}
	/* Whatever the endpoint sent goes out first, then the half-close; done after it. */
	pk_net_read_stop(fc->local);
	pk_net_shutdown(fc->local);
}

static void pk__w_written(struct pk_wsc *w, size_t credit)
{
	(void)credit;
	struct pk__fconn *fc = pk_wsc_ud(w);
	if (!fc->local_eof && pk_wsc_queued(w) < PK_FWD_LOW_WATER)
		pk_net_read_start(fc->local);
}

static const struct pk_wsc_ops pk__wops = {
    .on_open = pk__w_open,
    .on_refused = pk__w_refused,
    .on_data = pk__w_data,
    .on_closed = pk__w_closed,
    .on_written = pk__w_written,
};

static void pk__fc_timeout(uv_timer_t *t)
{
	struct pk__fconn *fc = t->data;
	pk_log_warn(PK__LOG, "cannot reach the endpoint", "endpoint=%s url=%s status=0 error=%s",
	            fc->f->fc->endpoint, fc->f->conf->connect.url, "connect timeout");
	pk__fc_close(fc);
}

static void pk__on_connection(uv_stream_t *server, int status)
{
	struct pk_fwd *f = server->data;
	if (status < 0 || f->stopping)
		return;
	struct pk__fconn *fc = calloc(1, sizeof(*fc));
	if (fc == NULL)
		return;
	fc->f = f;
	if (pk_net_accept(server, &pk__local_ops, fc, &fc->local) < 0) {
		free(fc);
		return;
	}
	fc->next = f->conns;
	if (f->conns)
		f->conns->prev = fc;
	f->conns = fc;
	f->n_conns++;
	pk_net_peer(fc->local, fc->peer, sizeof(fc->peer));
	if (f->n_conns > PK_FWD_MAX_CONNS) {
		pk_log_warn(PK__LOG, "too many connections", "endpoint=%s limit=%d",
		            f->fc->endpoint, PK_FWD_MAX_CONNS);
		pk__fc_close(fc);
		return;
	}
	/* Nothing is read locally until the WebSocket is up. */
	pk_net_read_stop(fc->local);
	int r = pk_wsc_open(f->loop, &f->conf->connect.target, f->conf->connect.host_header,
	                    f->path, f->extra, &pk__wops, fc, &fc->wsc);
	if (r < 0) {
		fc->wsc = NULL;
		pk_log_warn(PK__LOG, "cannot reach the endpoint",
		            "endpoint=%s url=%s status=0 error=%s", f->fc->endpoint,
		            f->conf->connect.url, uv_strerror(r));
		pk__fc_close(fc);
		return;
	}
	fc->timer = malloc(sizeof(*fc->timer));
	if (fc->timer) {
		uv_timer_init(f->loop, fc->timer);
		fc->timer->data = fc;
		uv_timer_start(fc->timer, pk__fc_timeout, f->conf->connect.timeout_ms, 0);
	}
}

/* ---- life ---- */

static int pk__bind(struct pk_fwd *f)
{
	struct sockaddr_storage ss;
	struct pk_conf_forwarder *fc = f->fc;
	if (uv_ip4_addr(fc->bind_host, fc->bind_port, (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(fc->bind_host, fc->bind_port, (struct sockaddr_in6 *)&ss) != 0) {
		/* A name: resolve it once, synchronously, at start-up. */
		struct addrinfo hints, *res = NULL;
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		if (getaddrinfo(fc->bind_host, NULL, &hints, &res) != 0 || res == NULL)
			return -EADDRNOTAVAIL;
		memcpy(&ss, res->ai_addr, res->ai_addrlen);
		((struct sockaddr_in *)&ss)->sin_port = htons(fc->bind_port);
		freeaddrinfo(res);
	}
	int r = uv_tcp_init(f->loop, &f->server);
	if (r < 0)
		return r;
	f->server.data = f;
	f->listening = 1;
	r = uv_tcp_bind(&f->server, (const struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&f->server, 256, pk__on_connection);
	if (r < 0)
		return r;
	struct sockaddr_storage b;
	int blen = sizeof(b);
	char ip[64] = "";
	uint16_t port = 0;
	if (uv_tcp_getsockname(&f->server, (struct sockaddr *)&b, &blen) == 0) {
		if (b.ss_family == AF_INET) {
			uv_ip4_name((struct sockaddr_in *)&b, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in *)&b)->sin_port);
			snprintf(f->bound, sizeof(f->bound), "%s:%u", ip, port);
		} else {
			uv_ip6_name((struct sockaddr_in6 *)&b, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in6 *)&b)->sin6_port);
			snprintf(f->bound, sizeof(f->bound), "[%s]:%u", ip, port);
		}
	}
	return 0;
}

static void pk__server_closed(uv_handle_t *h)
{
	struct pk_fwd *f = h->data;
	f->listening = 0;
	pk__check_stopped(f);
}

int pk_fwd_new(uv_loop_t *loop, struct pk_conf *conf, struct pk_conf_forwarder *fcf,
               const struct pk_fwd_hooks *hooks, struct pk_fwd **out)
{
	struct pk_fwd *f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	f->loop = loop;
	f->conf = conf;
	f->fc = fcf;
	f->hooks = hooks;
	snprintf(f->path, sizeof(f->path), "%s/_piko/v1/tcp/%s", conf->connect.path_prefix,
	         fcf->endpoint);
	if (conf->connect.token[0]) {
		size_t n = strlen(conf->connect.token) + 32;
		f->extra = malloc(n);
		if (f->extra == NULL) {
			free(f);
			return -ENOMEM;
		}
		snprintf(f->extra, n, "Authorization: Bearer %s\r\n", conf->connect.token);
	}
	int r = pk__bind(f);
	if (r < 0) {
		pk_log_error(PK__LOG, "cannot listen", "addr=%s error=%s", fcf->addr,
		             uv_strerror(r));
		/* No hook for a forwarder that never started; the caller frees it after the loop
		 * has closed the handle. */
		*out = f;
		f->stopping = f->stopped = 1;
		if (f->listening)
			uv_close((uv_handle_t *)&f->server, pk__server_closed);
		return r;
	}
	pk_log_info(PK__LOG, "listening", "endpoint=%s addr=%s bound=%s url=%s", fcf->endpoint,
	            fcf->addr, f->bound, conf->connect.url);
	*out = f;
	return 0;
}

void pk_fwd_stop(struct pk_fwd *f)
{
	if (f->stopping)
		return;
	f->stopping = 1;
	if (f->listening)
		uv_close((uv_handle_t *)&f->server, pk__server_closed);
	pk__check_stopped(f);
}

void pk_fwd_abort(struct pk_fwd *f)
{
	pk_fwd_stop(f);
	while (f->conns)
		pk__fc_close(f->conns);
}

void pk_fwd_free(struct pk_fwd *f)
{
	free(f->extra);
	free(f);
}
