/* What the pieces of one worker process share: its loop, configuration, shared state, the
 * tunnels it holds, and its listeners. One instance per worker process. */
#ifndef PK_WORKER_H
#define PK_WORKER_H

#include "daemon/config.h"
#include "workers/child.h"
#include "workers/handoff.h"
#include "workers/listener.h"

#include <limits.h>
#include <stdint.h>
#include <uv.h>

#define PK_TUNNEL_BUCKETS 4096

struct pk_db;
struct pk_counters;
struct pk_tunnel;
struct pk_jwt_verifier;

struct pk_worker {
	struct pk_child *child;
	uv_loop_t *loop;
	const struct pk_config *cfg;
	struct pk_db *db;
	struct pk_counters *ctr;
	int slot;
	uint32_t generation;
	int worker_index;
	char run_dir[PATH_MAX];

	struct pk_jwt_verifier *upstream_auth; /* NULL: upstream port without auth */
	struct pk_jwt_verifier *proxy_auth;    /* NULL: proxy port without auth */

	uint64_t next_tunnel_id;
	struct pk_tunnel *tunnels[PK_TUNNEL_BUCKETS];
	unsigned ntunnels;

	struct pk_listener proxy_listener, upstream_listener;
	int listeners_open;
	unsigned proxy_conns;    /* client connections on the proxy port */
	unsigned upstream_conns; /* upstream connections still in their handshake */
	int draining;
	uint64_t drain_started_ms;
	unsigned tunnels_closed; /* since the last malloc_trim */
	uv_timer_t trim_timer;
	uv_timer_t drain_timer;

	int handoff_fd;                  /* our bound DGRAM socket */
	struct pk_handoff_sender sender; /* connected DGRAM sockets to the other slots */
	uv_poll_t handoff_poll;
};

struct pk_http1_parser;

/* "ip:port" / "[ip6]:port" of the peer. 0 or -ENOTCONN (buf then empty). */
int pk_worker_peer_name(uv_tcp_t *tcp, char *buf, size_t len);

/* Validates a WebSocket upgrade request head and computes the accept value (29 bytes with
 * the NUL). Returns 0, or the error of pk_ws_server_check (map with
 * pk_ws_handshake_status). */
int pk_worker_ws_check(const struct pk_http1_parser *p, char accept[29], const char **why);

struct pk_jwt_verifier;

/* Checks the request's bearer token (Authorization, or x-piko-authorization which wins)
 * with v for endpoint. Returns 0 when allowed (*exp: the token's exp, 0 = none), else the
 * HTTP status to answer (401, or 500 when out of memory) with *msg Piko's error message. */
int pk_worker_check_token(const struct pk_jwt_verifier *v, const struct pk_http1_parser *p,
                          const char *endpoint, int64_t *exp, const char **msg);

/* Monotonic milliseconds (CLOCK_MONOTONIC, the same clock in every process). */
uint64_t pk_worker_now_ms(void);

/* Tunnel table of this worker. */
void pk_worker_add_tunnel(struct pk_worker *w, struct pk_tunnel *t);
void pk_worker_remove_tunnel(struct pk_worker *w, struct pk_tunnel *t);
struct pk_tunnel *pk_worker_find_tunnel(struct pk_worker *w, uint64_t id);

/* Called when a connection or tunnel goes away while draining: exits once nothing is left. */
void pk_worker_check_drained(struct pk_worker *w);

#endif
