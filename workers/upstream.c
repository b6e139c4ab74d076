/* The upstream port: agents register endpoints here (PROTOCOL.md section 1).
 *
 *   GET /piko/v1/upstream/<endpoint> + WebSocket upgrade [+ Authorization: Bearer <jwt>]
 *
 * The endpoint id is validated and the token checked before the upgrade; a failure is a
 * JSON error and no upgrade. After the 101 the connection belongs to tunnel.c. */
#include "workers/upstream.h"

#include "common/log.h"
#include "proto/http1.h"
#include "proto/jwt.h"
#include "proto/websocket.h"
#include "shm/routes.h"
#include "workers/tunnel.h"
#include "workers/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PK__LOG      "upstream"
#define PK__PREFIX   "/piko/v1/upstream/"
#define PK__RBUF     (16 * 1024)
#define PK__MAX_HEAD (64 * 1024)

struct pk__uconn {
	struct pk_worker *w;
	uv_tcp_t *tcp;
	uv_timer_t timer;
	int handles;
	int done; /* answered (error) or handed to a tunnel */
	struct pk_http1_parser p;
	char remote[80];
	uint8_t rbuf[PK__RBUF];
};

static void pk__uconn_closed(uv_handle_t *h)
{
	struct pk__uconn *u = h->data;
	if (h == (uv_handle_t *)u->tcp)
		free(h);
	if (--u->handles > 0)
		return;
	struct pk_worker *w = u->w;
	pk_http1_parser_free(&u->p);
	free(u);
	w->upstream_conns--;
	pk_worker_check_drained(w);
}

static void pk__uconn_close(struct pk__uconn *u)
{
	if (u->tcp && !uv_is_closing((uv_handle_t *)u->tcp))
		uv_close((uv_handle_t *)u->tcp, pk__uconn_closed);
	if (!uv_is_closing((uv_handle_t *)&u->timer))
		uv_close((uv_handle_t *)&u->timer, pk__uconn_closed);
}

struct pk__uwrite {
	uv_write_t req;
	struct pk__uconn *u;
	char data[];
};

static void pk__error_written(uv_write_t *req, int status)
{
	struct pk__uwrite *wr = (struct pk__uwrite *)req;
	struct pk__uconn *u = wr->u;
	free(wr);
	pk__uconn_close(u);
}

/* Answers with a JSON error and closes. */
static void pk__uconn_fail(struct pk__uconn *u, int status, const char *msg, const char *extra)
{
	char buf[512];
	ssize_t n = pk_http1_build_error(buf, sizeof(buf), (unsigned)status, msg, 1);
	u->done = 1;
	uv_read_stop((uv_stream_t *)u->tcp);
	uv_timer_stop(&u->timer);
	pk_log_info(PK__LOG, "upstream refused", "remote=%s status=%d error=%s", u->remote, status,
	            msg);
	if (n < 0) {
		pk__uconn_close(u);
		return;
	}
	size_t extra_len = extra ? strlen(extra) : 0;
	struct pk__uwrite *wr = malloc(sizeof(*wr) + (size_t)n + extra_len);
	if (wr == NULL) {
		pk__uconn_close(u);
		return;
	}
	/* An extra header line goes right after the status line. */
	char *eol = memchr(buf, '\n', (size_t)n);
	size_t first = eol ? (size_t)(eol - buf) + 1 : 0;
	memcpy(wr->data, buf, first);
	if (extra_len)
		memcpy(wr->data + first, extra, extra_len);
	memcpy(wr->data + first + extra_len, buf + first, (size_t)n - first);
	wr->u = u;
	uv_buf_t b = uv_buf_init(wr->data, (unsigned)((size_t)n + extra_len));
	if (uv_write(&wr->req, (uv_stream_t *)u->tcp, &b, 1, pk__error_written) < 0) {
		free(wr);
		pk__uconn_close(u);
	}
}

static void pk__handshake_written(uv_write_t *req, int status)
{
	free(req);
}

static int pk__check_auth(struct pk__uconn *u, const char *endpoint, int64_t *exp)
{
	struct pk_worker *w = u->w;
	const char *msg = NULL;

	*exp = 0;
	if (w->upstream_auth == NULL)
		return 0;
	int status = pk_worker_check_token(w->upstream_auth, &u->p, endpoint, exp, &msg);
	if (status != 0) {
		pk__uconn_fail(u, status, msg, NULL);
		return -EACCES;
	}
	if (w->cfg->upstream.auth.disable_disconnect_on_expiry)
		*exp = 0;
	return 0;
}

static void pk__handle_head(struct pk__uconn *u, const uint8_t *rest, size_t rest_len)
{
	struct pk_worker *w = u->w;
	struct pk_http1_parser *p = &u->p;
	char endpoint[PK_ROUTE_MAX_ENDPOINT + 1];
	const char *target = pk_http1_ptr(p, p->target);
	size_t tlen = p->target.len;
	int64_t exp = 0;

	if (tlen < sizeof(PK__PREFIX) || memcmp(target, PK__PREFIX, sizeof(PK__PREFIX) - 1) != 0) {
		pk__uconn_fail(u, 404, "not found", NULL);
		return;
	}
	const char *ep = target + sizeof(PK__PREFIX) - 1;
	size_t eplen = tlen - (sizeof(PK__PREFIX) - 1);
	const char *q = memchr(ep, '?', eplen);
	if (q)
		eplen = (size_t)(q - ep);
	if (!pk_routes_valid_endpoint(ep, eplen)) {
		pk__uconn_fail(u, 400, "invalid endpoint id", NULL);
		return;
	}
	memcpy(endpoint, ep, eplen);
	endpoint[eplen] = '\0';
	if (w->draining) {
		/* Retryable for agents: they reconnect, and land on a worker that stays. */
		pk__uconn_fail(u, 503, "server draining", NULL);
		return;
	}
	if (pk__check_auth(u, endpoint, &exp) < 0)
		return;

	char accept[PK_WS_ACCEPT_LEN + 1];
	const char *why = NULL;
	int rc = pk_worker_ws_check(p, accept, &why);
	if (rc < 0) {
		int status = pk_ws_handshake_status(rc);
		pk__uconn_fail(u, status, why ? why : "websocket upgrade required",
		               status == 426 ? PK_WS_VERSION_HEADER : NULL);
		return;
	}
	uv_write_t *wreq = malloc(sizeof(*wreq) + PK_WS_RESPONSE_MAX);
	if (wreq == NULL) {
		pk__uconn_fail(u, 500, "internal error", NULL);
		return;
	}
	char *resp = (char *)(wreq + 1);
	int n = pk_ws_server_response(resp, PK_WS_RESPONSE_MAX, accept);
	uv_buf_t b = uv_buf_init(resp, n > 0 ? (unsigned)n : 0);
	if (n <= 0 || uv_write(wreq, (uv_stream_t *)u->tcp, &b, 1, pk__handshake_written) < 0) {
		free(wreq);
		pk__uconn_fail(u, 500, "internal error", NULL);
		return;
	}
	/* The connection is the tunnel's from here; this handshake object goes away. */
	uv_read_stop((uv_stream_t *)u->tcp);
	u->done = 1;
	rc = pk_tunnel_start(w, u->tcp, endpoint, u->remote, exp, rest, rest_len);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot start tunnel", "endpoint=%s error=%s", endpoint,
		             strerror(-rc));
		u->tcp->data = u;
		pk__uconn_close(u);
		return;
	}
	u->tcp = NULL;
	u->handles--; /* the tcp handle is not ours to close any more */
	pk__uconn_close(u);
}

static void pk__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct pk__uconn *u = h->data;
	*b = uv_buf_init((char *)u->rbuf, sizeof(u->rbuf));
}

static void pk__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct pk__uconn *u = s->data;
	size_t used = 0;
	if (u->done)
		return;
	if (n < 0) {
		u->done = 1;
		pk__uconn_close(u);
		return;
	}
	if (n == 0)
		return;
	int rc = pk_http1_parser_feed(&u->p, u->rbuf, (size_t)n, &used);
	if (rc == 0)
		return;
	if (rc < 0) {
		pk__uconn_fail(u, rc == -EPROTO ? u->p.error_status : 500,
		               rc == -EPROTO ? u->p.error_reason : "internal error", NULL);
		return;
	}
	uv_timer_stop(&u->timer);
	pk__handle_head(u, u->rbuf + used, (size_t)n - used);
}

static void pk__uconn_timeout(uv_timer_t *t)
{
	struct pk__uconn *u = t->data;
	if (!u->done)
		pk__uconn_fail(u, 408, "request header timeout", NULL);
}

static void pk__on_connection(uv_stream_t *l, int status)
{
	struct pk_worker *w = l->data;
	struct pk_http1_limits lim = {.max_head_bytes = PK__MAX_HEAD};
	if (status < 0)
		return;
	struct pk__uconn *u = calloc(1, sizeof(*u));
	uv_tcp_t *tcp = malloc(sizeof(*tcp));
	if (u == NULL || tcp == NULL) {
		free(u);
		free(tcp);
		pk_log_error(PK__LOG, "out of memory accepting an agent", NULL);
		return;
	}
	u->w = w;
	u->tcp = tcp;
	uv_tcp_init(w->loop, tcp);
	uv_timer_init(w->loop, &u->timer);
	tcp->data = u;
	u->timer.data = u;
	u->handles = 2;
	w->upstream_conns++;
	pk_http1_parser_init(&u->p, PK_HTTP1_REQUEST, &lim);
	if (uv_accept(l, (uv_stream_t *)tcp) < 0) {
		pk__uconn_close(u);
		return;
	}
	pk_listener_accepted(&w->upstream_listener, (uv_stream_t *)tcp);
	pk_worker_peer_name(tcp, u->remote, sizeof(u->remote));
	uv_timer_start(&u->timer, pk__uconn_timeout, w->cfg->proxy_read_header_timeout_ms, 0);
	uv_read_start((uv_stream_t *)tcp, pk__alloc, pk__on_read);
}

int pk_upstream_listen(struct pk_worker *w, int fd)
{
	return pk_listener_start(&w->upstream_listener, w->loop, fd, "upstream", pk__on_connection,
	                         w);
}
