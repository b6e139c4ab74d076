/* A worker: serves the proxy and upstream listeners on its own libuv loop, holds the
 * tunnels of the agents that connected to it, and adopts client connections other workers
 * hand it for those tunnels.
 *
 * Every worker accepts on the same inherited listening sockets; the kernel spreads the
 * connections. On drain a worker stops accepting at once (the listeners stay open in the
 * supervisor and the newer generation, so nothing queued is lost), takes its tunnels' routes
 * out of the table (leaving "moving" markers so requests wait for the agents to reconnect
 * instead of failing), finishes what it accepted, closes each tunnel once idle, and exits.
 */
#include "workers/worker.h"

#include "common/log.h"
#include "proto/http1.h"
#include "proto/jwt.h"
#include "proto/websocket.h"
#include "shm/counters.h"
#include "shm/db.h"
#include "shm/routes.h"
#include "workers/handoff.h"
#include "workers/proxy.h"
#include "workers/tunnel.h"
#include "workers/upstream.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PK__LOG "worker"
/* A draining worker keeps its handoff socket open this long after its tunnels left the
 * routing table: a handoff sent by a worker that read the table just before is still
 * served, instead of dying in the queue with the socket. */
#define PK__DRAIN_LINGER_MS 500
#define PK__KEEP_FREED_HEAP (8 * 1024 * 1024) /* M_TRIM_THRESHOLD of a worker */

uint64_t pk_worker_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int pk_worker_peer_name(uv_tcp_t *tcp, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];
	buf[0] = '\0';
	if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &sl) < 0)
		return -ENOTCONN;
	if (ss.ss_family == AF_INET6) {
		uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
	} else {
		uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
	}
	return 0;
}

int pk_worker_ws_check(const struct pk_http1_parser *p, char accept[PK_WS_ACCEPT_LEN + 1],
                       const char **why)
{
	char method[16] = "", upgrade[128], connection[256], key[64], version[16];
	if (p->method.len < sizeof(method)) {
		memcpy(method, pk_http1_ptr(p, p->method), p->method.len);
		method[p->method.len] = '\0';
	}
	struct pk_ws_upgrade_req req = {
	    .method = method,
	    .http_version = p->version_minor == 1 ? "1.1" : "1.0",
	    .upgrade = pk_http1_get_copy(p, "upgrade", upgrade, sizeof(upgrade)),
	    .connection = pk_http1_get_copy(p, "connection", connection, sizeof(connection)),
	    .key = pk_http1_get_copy(p, "sec-websocket-key", key, sizeof(key)),
	    .version = pk_http1_get_copy(p, "sec-websocket-version", version, sizeof(version)),
	};
	return pk_ws_server_check(&req, accept, why);
}

int pk_worker_check_token(const struct pk_jwt_verifier *v, const struct pk_http1_parser *p,
                          const char *endpoint, int64_t *exp, const char **msg)
{
	char authz[PK_JWT_MAX_TOKEN + 64], xpiko[PK_JWT_MAX_TOKEN + 64];
	struct pk_jwt_claims claims;

	*exp = 0;
	const char *a = pk_http1_get_copy(p, "authorization", authz, sizeof(authz));
	const char *x = pk_http1_get_copy(p, "x-piko-authorization", xpiko, sizeof(xpiko));
	enum pk_jwt_error e = pk_jwt_authenticate(v, a, x, (int64_t)time(NULL), &claims);
	if (e != PK_JWT_OK) {
		*msg = pk_jwt_error_str(e);
		return e == PK_JWT_INTERNAL_ERROR ? 500 : 401;
	}
	int ok = pk_jwt_endpoint_permitted(&claims, endpoint);
	*exp = claims.exp;
	pk_jwt_claims_free(&claims);
	if (!ok) {
		*msg = pk_jwt_error_str(PK_JWT_ENDPOINT_NOT_PERMITTED);
		return 401;
	}
	return 0;
}

/* ---- tunnel table ---- */

struct pk__tunnel_entry {
	struct pk_tunnel *t;
	struct pk__tunnel_entry *next;
};

static struct pk__tunnel_entry *pk__buckets[PK_TUNNEL_BUCKETS];

static unsigned pk__bucket(uint64_t id)
{
	return (unsigned)((id * 0x9E3779B97F4A7C15ull) >> 52) % PK_TUNNEL_BUCKETS;
}

void pk_worker_add_tunnel(struct pk_worker *w, struct pk_tunnel *t)
{
	struct pk__tunnel_entry *e = malloc(sizeof(*e));
	if (e == NULL)
		abort();
	unsigned b = pk__bucket(pk_tunnel_id(t));
	e->t = t;
	e->next = pk__buckets[b];
	pk__buckets[b] = e;
	w->ntunnels++;
}

void pk_worker_remove_tunnel(struct pk_worker *w, struct pk_tunnel *t)
{
	w->tunnels_closed++;
	unsigned b = pk__bucket(pk_tunnel_id(t));
	for (struct pk__tunnel_entry **pp = &pk__buckets[b]; *pp; pp = &(*pp)->next) {
		if ((*pp)->t == t) {
			struct pk__tunnel_entry *e = *pp;
			*pp = e->next;
			free(e);
			w->ntunnels--;
			return;
		}
	}
}

struct pk_tunnel *pk_worker_find_tunnel(struct pk_worker *w, uint64_t id)
{
	for (struct pk__tunnel_entry *e = pk__buckets[pk__bucket(id)]; e; e = e->next)
		if (pk_tunnel_id(e->t) == id)
			return e->t;
	return NULL;
}

/* After many tunnels closed (agents moving away, a burst of disconnects) hand the freed
 * heap back to the system, so memory follows the tunnels held now, not the peak. */
static void pk__trim(uv_timer_t *timer)
{
	struct pk_worker *w = timer->data;
	if (w->tunnels_closed >= 256) {
		w->tunnels_closed = 0;
		malloc_trim(0);
	}
}

/* ---- handoffs in ---- */

static void pk__on_handoff(uv_poll_t *p, int status, int events)
{
	struct pk_worker *w = p->data;
	for (int i = 0; i < 64; i++) {
		struct pk_handoff h;
		int fd = -1;
		char *bytes = NULL;
		size_t len = 0;
		int rc = pk_handoff_recv(w->handoff_fd, &h, &fd, &bytes, &len);
		if (rc == -EAGAIN)
			return;
		if (rc < 0) {
			pk_log_warn("handoff", "bad handoff message", "error=%s", strerror(-rc));
			continue;
		}
		rc = pk_proxy_adopt(w, &h, fd, bytes, len);
		if (rc < 0) {
			pk_log_warn("handoff", "cannot adopt connection", "error=%s",
			            strerror(-rc));
			close(fd);
		}
		free(bytes);
	}
}

/* ---- draining ---- */

void pk_worker_check_drained(struct pk_worker *w)
{
	if (!w->draining)
		return;
	if (pk_worker_now_ms() - w->drain_started_ms < PK__DRAIN_LINGER_MS)
		return; /* the linger timer checks again */
	if (w->proxy_conns == 0 && w->upstream_conns == 0 && w->ntunnels == 0)
		pk_child_exit(w->child, 0);
}

static void pk__drain_linger_done(uv_timer_t *t)
{
	pk_worker_check_drained(t->data);
}

static void pk__drain_tunnels(struct pk_worker *w)
{
	/* Markers first, so that a request finding no route while an agent moves waits for
	 * it to register again (up to grace_period) instead of failing. */
	uint64_t until = pk_worker_now_ms() + w->cfg->grace_period_ms;
	struct pk_tunnel *all[256];
	for (;;) {
		int n = 0;
		for (unsigned b = 0; b < PK_TUNNEL_BUCKETS && n < 256; b++)
			for (struct pk__tunnel_entry *e = pk__buckets[b]; e && n < 256; e = e->next)
				if (pk_tunnel_usable(e->t))
					all[n++] = e->t;
		if (n == 0)
			break;
		for (int i = 0; i < n; i++) {
			struct pk_route marker = {.slot = PK_ROUTE_SLOT_MARKER, .since_ms = until};
			const char *ep = pk_tunnel_endpoint(all[i]);
			marker.tunnel_id = pk_tunnel_id(all[i]);
			(void)pk_routes_add(w->db, ep, strlen(ep), &marker);
			pk_tunnel_drain(all[i]);
		}
	}
}

static void pk__worker_drain(struct pk_child *c, int now)
{
	struct pk_worker *w = c->role_data;
	if (now)
		pk_child_exit(c, 0);
	if (w->draining)
		return;
	w->draining = 1;
	w->drain_started_ms = pk_worker_now_ms();
	uv_timer_init(w->loop, &w->drain_timer);
	w->drain_timer.data = w;
	uv_timer_start(&w->drain_timer, pk__drain_linger_done, PK__DRAIN_LINGER_MS + 1, 0);
	if (w->listeners_open) {
		w->listeners_open = 0;
		pk_proxy_unlisten(w);
		pk_listener_stop(&w->upstream_listener);
	}
	pk_proxy_drain(w);
	pk__drain_tunnels(w);
	pk_worker_check_drained(w);
}

/* ---- start-up ---- */

static int pk__make_verifier(const struct pk_auth_config *a, const char *port,
                             struct pk_jwt_verifier **out)
{
	const char *why = NULL;
	*out = NULL;
	if (!a->hmac_secret_key && !a->rsa_public_key && !a->ecdsa_public_key)
		return 0;
	struct pk_jwt_config jc = {
	    .hmac_secret_key = a->hmac_secret_key,
	    .rsa_public_key = a->rsa_public_key,
	    .ecdsa_public_key = a->ecdsa_public_key,
	    .audience = a->audience,
	    .issuer = a->issuer,
	};
	int rc = pk_jwt_verifier_new(&jc, out, &why);
	if (rc < 0)
		pk_log_error(PK__LOG, "invalid auth configuration", "port=%s error=%s", port,
		             why ? why : strerror(-rc));
	return rc;
}

int pk_worker_start(struct pk_child *c)
{
	static struct pk_worker worker;
	struct pk_worker *w = &worker;
	char dir[PATH_MAX];
	int rc;

	w->child = c;
	w->loop = c->loop;
	w->cfg = &c->cfg;
	w->ctr = c->counters;
	w->slot = c->slot;
	w->generation = c->generation;
	w->worker_index = c->worker_index;
	w->handoff_fd = -1;
	pk_handoff_sender(&w->sender);
	srand((unsigned)getpid() ^ (unsigned)pk_worker_now_ms());
	/* Bulk transfers allocate and free 64-256 KiB buffers at a high rate. With glibc's
	 * defaults the top of the heap went back to the kernel and was faulted in again each
	 * time: brk, munmap and page faults took about 7 % of a worker under iperf3. Keep up
	 * to 8 MiB of freed heap for reuse; pk__trim still hands it back after tunnels close. */
	mallopt(M_TRIM_THRESHOLD, PK__KEEP_FREED_HEAP);
	mallopt(M_MMAP_THRESHOLD, 1024 * 1024);

	if (pk__make_verifier(&w->cfg->upstream.auth, "upstream", &w->upstream_auth) < 0 ||
	    pk__make_verifier(&w->cfg->proxy.auth, "proxy", &w->proxy_auth) < 0)
		pk_child_exit(c, PK_EXIT_FATAL_CONFIG);

	snprintf(dir, sizeof(dir), "%s/db", w->cfg->state_dir);
	rc = pk_db_open(&w->db, dir, NULL);
	if (rc < 0)
		return rc;
	/* A previous worker in this slot may have died without cleaning up. */
	(void)pk_routes_purge_slot(w->db, (uint32_t)w->slot);

	rc = pk_handoff_prepare_dir(w->cfg->state_dir, w->run_dir, sizeof(w->run_dir));
	if (rc == 0)
		rc = pk_handoff_listen(w->run_dir, w->slot, &w->handoff_fd);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot set up the handoff channel", "dir=%s error=%s",
		             w->run_dir, strerror(-rc));
		return rc;
	}
	uv_timer_init(w->loop, &w->trim_timer);
	w->trim_timer.data = w;
	uv_timer_start(&w->trim_timer, pk__trim, 2000, 2000);
	uv_unref((uv_handle_t *)&w->trim_timer);
	uv_poll_init(w->loop, &w->handoff_poll, w->handoff_fd);
	w->handoff_poll.data = w;
	uv_poll_start(&w->handoff_poll, UV_READABLE, pk__on_handoff);

	rc = pk_proxy_listen(w, PK_FD_PROXY);
	if (rc == 0)
		rc = pk_upstream_listen(w, PK_FD_UPSTREAM);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot serve the listeners", "error=%s", uv_strerror(rc));
		return rc;
	}
	w->listeners_open = 1;
	c->role_data = w;
	c->on_drain = pk__worker_drain;
	return pk_child_ready(c);
}
