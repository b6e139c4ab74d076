/* The admin child: health, readiness, Prometheus metrics, the status API and reload on the
 * admin listener. It reads shared state only (the counters region, LMDB); it never asks
 * the workers, so a slow scrape cannot stall the data path. The one thing it asks the
 * supervisor is a reload, over its control channel.
 *
 * Endpoints (docs/observability.md has the bodies):
 *   GET  /health /ready                      probes (no token when exempt_probes)
 *   GET  /metrics                            Prometheus text (workers/admin_metrics.c)
 *   GET  /status                             pikod's own summary (pikoctl status)
 *   GET  /status/upstream/endpoints          {"<endpoint>": <local upstream count>}
 *   GET  /status/upstream/upstreams          one object per tunnel
 *   GET  /status/cluster/nodes               [node] (only this node until clustering exists)
 *   GET  /status/cluster/nodes/<id|local>    node, 404 when unknown
 *   POST /reload                             waits for the supervisor's verdict
 * Any path takes ?forward=<node-id>: this node's id (or "local") is served here, any
 * other id is 404 {"error":"unknown node"} until node-to-node forwarding exists. */
#include "common/channel.h"
#include "common/log.h"
#include "daemon/listeners.h"
#include "proto/jwt.h"
#include "shm/counters.h"
#include "shm/db.h"
#include "shm/routes.h"
#include "workers/admin_metrics.h"
#include "workers/child.h"
#include "workers/httpd.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PK__LOG                "admin"
#define PK__RELOAD_WAIT_MS     90000 /* longer than the supervisor's own reload timeout */
#define PK__RELOAD_POLL_MS     20
#define PK__RELOAD_SETTLE_MS   1000 /* a failure counted, its message not yet read */
#define PK__MAX_UPSTREAM_ROWS  100000
#define PK__NODE_ID_RANDOM_LEN 10

struct pk__admin {
	struct pk_child *child;
	struct pk_httpd *httpd;
	struct pk_db *db;             /* NULL when the routing table could not be opened */
	struct pk_jwt_verifier *auth; /* NULL: admin.auth.* unset */
	int exempt_probes;
	char node_id[96];
	char admin_addr[300];
	char proxy_addr[300];

	/* The reload this child asked for, answered on reload_conn. */
	struct pk_httpd_conn *reload_conn;
	uv_timer_t reload_timer;
	uint64_t reload_deadline_ms;
	uint64_t reload_failed_seen_ms; /* when the failure counter moved; 0: not yet */
	uint64_t base_ok, base_failed, base_generation;
};

/* ---- small helpers ---- */

static uint64_t pk__clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* RFC 3339 UTC with milliseconds, e.g. "2026-01-02T03:04:05.678Z". */
static void pk__rfc3339(uint64_t unix_ms, char *out, size_t size)
{
	time_t secs = (time_t)(unix_ms / 1000);
	struct tm tm;
	char base[32];
	gmtime_r(&secs, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, size, "%s.%03uZ", base, (unsigned)(unix_ms % 1000));
}

/* A CLOCK_MONOTONIC millisecond stamp (route since_ms) as wall-clock time now. */
static uint64_t pk__mono_to_unix_ms(uint64_t mono_ms)
{
	uint64_t now_mono = pk__clock_ms(CLOCK_MONOTONIC);
	uint64_t now_real = pk__clock_ms(CLOCK_REALTIME);
	uint64_t age = now_mono > mono_ms ? now_mono - mono_ms : 0;
	return now_real > age ? now_real - age : 0;
}

static int pk__respond_json(struct pk_httpd_conn *conn, int status, json_t *body,
                            const char *const *extra)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (text == NULL)
		return pk_httpd_respond_error(conn, 500, "out of memory");
	int rc = pk_httpd_respond(conn, status, "application/json", extra, text, strlen(text));
	free(text);
	return rc;
}

/* {"error": msg} with msg escaped (pk_httpd_respond_error takes only fixed strings). */
static int pk__respond_err(struct pk_httpd_conn *conn, int status, const char *msg)
{
	return pk__respond_json(conn, status, json_pack("{s:s}", "error", msg), NULL);
}

/* ---- node identity ---- */

static uint64_t pk__mix64(uint64_t x)
{
	/* splitmix64's finaliser: spreads every input bit over the output. */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The node id: cluster.node_id, else node_id_prefix + a random-looking suffix. Until the
 * cluster child owns the id, the suffix is derived from what identifies this run of the
 * supervisor (its start time and pid, and the boot id), so every admin child of one run,
 * respawned or reloaded, gives the same id, and a restart gives a new one. */
static void pk__node_id(struct pk__admin *a)
{
	const struct pk_config *cfg = &a->child->cfg;
	struct pk_ctr_supervisor_info sup;
	char boot[64] = "";
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";

	if (cfg->cluster_node_id) {
		snprintf(a->node_id, sizeof(a->node_id), "%s", cfg->cluster_node_id);
		return;
	}
	pk_counters_read_supervisor(a->child->counters, &sup);
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, boot, sizeof(boot) - 1);
		boot[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	uint64_t h = pk__mix64(sup.start_time_ns ^ ((uint64_t)getppid() << 40));
	for (const char *p = boot; *p; p++)
		h = pk__mix64(h ^ (unsigned char)*p);
	char suffix[PK__NODE_ID_RANDOM_LEN + 1];
	for (int i = 0; i < PK__NODE_ID_RANDOM_LEN; i++) {
		suffix[i] = alphabet[h % 36];
		h = i % 6 == 5 ? pk__mix64(h) : h / 36;
	}
	suffix[PK__NODE_ID_RANDOM_LEN] = '\0';
	snprintf(a->node_id, sizeof(a->node_id), "%s%s",
	         cfg->cluster_node_id_prefix ? cfg->cluster_node_id_prefix : "", suffix);
}

/* proxy_addr: the advertised host (cluster.advertise_addr) or the bind host (or this
 * machine's name when binding every address) with the proxy port. */
static void pk__addresses(struct pk__admin *a)
{
	const struct pk_config *cfg = &a->child->cfg;
	char host[256] = "", adv[256] = "";
	const char *bind = cfg->proxy.bind_addr;
	const char *colon = strrchr(bind, ':');
	const char *port = colon ? colon + 1 : "8000";

	if (colon && colon > bind)
		snprintf(host, sizeof(host), "%.*s", (int)(colon - bind), bind);
	if (cfg->cluster_advertise_addr) {
		const char *ac = strrchr(cfg->cluster_advertise_addr, ':');
		size_t n = ac ? (size_t)(ac - cfg->cluster_advertise_addr)
		              : strlen(cfg->cluster_advertise_addr);
		snprintf(adv, sizeof(adv), "%.*s", (int)n, cfg->cluster_advertise_addr);
	}
	if (adv[0])
		snprintf(host, sizeof(host), "%s", adv);
	if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "[::]") == 0) {
		if (gethostname(host, sizeof(host) - 1) < 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
	}
	snprintf(a->proxy_addr, sizeof(a->proxy_addr), "%s:%s", host, port);
	if (pk_sockname(PK_FD_ADMIN, a->admin_addr, sizeof(a->admin_addr)) < 0)
		snprintf(a->admin_addr, sizeof(a->admin_addr), "%s", cfg->admin.bind_addr);
}

/* ---- routing table views ---- */

static int pk__ep_to_json(const char *ep, size_t len, unsigned tunnels, void *ud)
{
	char key[PK_ROUTE_MAX_ENDPOINT + 1];
	if (len > PK_ROUTE_MAX_ENDPOINT)
		return 0;
	memcpy(key, ep, len);
	key[len] = '\0';
	return json_object_set_new(ud, key, json_integer(tunnels)) < 0 ? -ENOMEM : 0;
}

/* {"<endpoint>": count}; NULL and *err on failure. */
static json_t *pk__endpoints_json(struct pk__admin *a, int *err)
{
	json_t *obj = json_object();
	if (obj == NULL) {
		*err = -ENOMEM;
		return NULL;
	}
	if (a->db == NULL) {
		*err = -ENODEV;
		json_decref(obj);
		return NULL;
	}
	int rc = pk_routes_foreach_endpoint(a->db, pk__ep_to_json, obj);
	if (rc < 0) {
		*err = rc;
		json_decref(obj);
		return NULL;
	}
	return obj;
}

static long long pk__json_sum(json_t *obj)
{
	const char *k;
	json_t *v;
	long long sum = 0;
	json_object_foreach(obj, k, v) sum += json_integer_value(v);
	return sum;
}

struct pk__rows {
	struct pk__admin *a;
	json_t *list; /* upstreams list, or NULL when only counting */
	long tunnels;
	uint64_t streams;
};

static int pk__row(const char *ep, size_t len, const struct pk_route *r, void *ud)
{
	struct pk__rows *rows = ud;
	uint32_t streams = 0;
	char since[40], id[24], name[PK_ROUTE_MAX_ENDPOINT + 1];

	if (pk_route_is_marker(r))
		return 0;
	if (rows->tunnels >= PK__MAX_UPSTREAM_ROWS)
		return 1;
	(void)pk_counters_tunnel_streams(rows->a->child->counters, r->ctr_slot, r->ctr_tag,
	                                 &streams);
	rows->tunnels++;
	rows->streams += streams;
	if (rows->list == NULL)
		return 0;
	struct pk_ctr_child_info ci;
	int widx = pk_counters_get_child(rows->a->child->counters, (int)r->slot, &ci) == 0
	               ? ci.worker_index
	               : -1;
	snprintf(name, sizeof(name), "%.*s", (int)len, ep);
	pk__rfc3339(pk__mono_to_unix_ms(r->since_ms), since, sizeof(since));
	/* Tunnel ids use 64 bits: a string keeps them exact for JSON readers with doubles. */
	snprintf(id, sizeof(id), "%llu", (unsigned long long)r->tunnel_id);
	char remote[sizeof(r->remote)], expiry[40] = "";
	snprintf(remote, sizeof(remote), "%.*s", (int)sizeof(r->remote) - 1, r->remote);
	if (r->token_exp > 0)
		pk__rfc3339((uint64_t)r->token_exp * 1000, expiry, sizeof(expiry));
	json_t *o =
	    json_pack("{s:s,s:i,s:i,s:I,s:s,s:s,s:s,s:o,s:I,s:b}", "endpoint", name, "worker",
	              (int)r->slot, "worker_index", widx, "generation", (json_int_t)r->generation,
	              "tunnel_id", id, "remote", remote, "connected_since", since, "token_expiry",
	              r->token_exp > 0 ? json_string(expiry) : json_null(), "in_flight_streams",
	              (json_int_t)streams, "draining", (r->flags & PK_ROUTE_F_DRAINING) != 0);
	if (o == NULL || json_array_append_new(rows->list, o) < 0)
		return -ENOMEM;
	return 0;
}

static int pk__scan_rows(struct pk__admin *a, struct pk__rows *rows)
{
	if (a->db == NULL)
		return -ENODEV;
	int rc = pk_routes_foreach(a->db, pk__row, rows);
	return rc < 0 ? rc : 0;
}

static const char *pk__db_error(int err)
{
	return err == -ENODEV ? "routing table not open" : pk_db_strerror(err);
}

/* ---- node and status documents ---- */

static json_t *pk__node_json(struct pk__admin *a, int *err)
{
	json_t *eps = pk__endpoints_json(a, err);
	if (eps == NULL)
		return NULL;
	struct pk_ctr_supervisor_info sup;
	pk_counters_read_supervisor(a->child->counters, &sup);
	const char *status = sup.flags & PK_CTR_F_STOPPING ? "leaving" : "active";
	return json_pack("{s:s,s:s,s:s,s:s,s:I,s:o}", "id", a->node_id, "status", status,
	                 "proxy_addr", a->proxy_addr, "admin_addr", a->admin_addr, "upstreams",
	                 (json_int_t)pk__json_sum(eps), "endpoints", eps);
}

static const char *pk__state_name(enum pk_child_state st)
{
	switch (st) {
	case PK_CHILD_STARTING:
		return "starting";
	case PK_CHILD_READY:
		return "ready";
	case PK_CHILD_DRAINING:
		return "draining";
	case PK_CHILD_DEAD:
		return "restarting";
	default:
		return "unused";
	}
}

static json_t *pk__processes_json(struct pk__admin *a, int *workers_up, int *workers)
{
	json_t *list = json_array();
	struct pk_ctr_supervisor_info sup;
	pk_counters_read_supervisor(a->child->counters, &sup);
	*workers_up = *workers = 0;
	for (int slot = 0; list && slot < PK_MAX_CHILDREN; slot++) {
		struct pk_ctr_child_info ci;
		if (pk_counters_get_child(a->child->counters, slot, &ci) < 0 ||
		    ci.state == PK_CHILD_UNUSED)
			continue;
		if (ci.role == PK_ROLE_WORKER && ci.generation == sup.generation) {
			(*workers)++;
			*workers_up += ci.pid != 0 && ci.state == PK_CHILD_READY;
		}
		json_t *o =
		    json_pack("{s:i,s:s,s:i,s:i,s:I,s:s,s:I,s:I,s:I,s:I}", "slot", slot, "role",
		              pk_role_name((enum pk_role)ci.role), "worker", ci.worker_index, "pid",
		              (int)ci.pid, "generation", (json_int_t)ci.generation, "state",
		              pk__state_name(ci.state), "restarts", (json_int_t)ci.restarts,
		              "tunnels", (json_int_t)ci.gauges[PK_CTR_G_TUNNELS], "connections",
		              (json_int_t)ci.gauges[PK_CTR_G_CONNECTIONS], "requests_in_flight",
		              (json_int_t)ci.gauges[PK_CTR_G_REQUESTS_INFLIGHT]);
		if (o == NULL || json_array_append_new(list, o) < 0) {
			json_decref(list);
			return NULL;
		}
	}
	return list;
}

static json_t *pk__requests_json(struct pk__admin *a)
{
	static const char *const names[PK_CTR_STATUS_CLASSES] = {"1xx", "2xx", "3xx",
	                                                         "4xx", "5xx", "other"};
	struct pk_ctr_worker total, w;
	memset(&total, 0, sizeof(total));
	for (int i = 0; i < PK_MAX_WORKERS; i++)
		if (pk_counters_read_worker(a->child->counters, i, &w) == 0)
			pk_metrics_add_worker(&total, &w);
	json_t *o = json_object();
	json_int_t sum = 0;
	for (int i = 0; o && i < PK_CTR_STATUS_CLASSES; i++) {
		sum += (json_int_t)total.requests[i];
		json_object_set_new(o, names[i], json_integer((json_int_t)total.requests[i]));
	}
	if (o)
		json_object_set_new(o, "total", json_integer(sum));
	return o;
}

static json_t *pk__status_json(struct pk__admin *a)
{
	struct pk_ctr_supervisor_info sup;
	struct pk__rows rows = {.a = a};
	int workers_up, workers, err = 0;
	char started[40];

	pk_counters_read_supervisor(a->child->counters, &sup);
	json_t *eps = pk__endpoints_json(a, &err);
	if (eps == NULL || pk__scan_rows(a, &rows) < 0) {
		json_decref(eps);
		eps = NULL;
	}
	uint64_t now = pk__clock_ms(CLOCK_REALTIME), start = sup.start_time_ns / 1000000u;
	pk__rfc3339(start, started, sizeof(started));
	json_t *procs = pk__processes_json(a, &workers_up, &workers);
	json_int_t neps = eps ? (json_int_t)json_object_size(eps) : -1;
	json_decref(eps);
	return json_pack(
	    "{s:s,s:s,s:s,s:I,s:I,s:b,s:b,s:{s:i,s:i},s:o*,s:{s:I,s:I},s:{s:I,s:I,s:I},s:o*,s:o*,"
	    "s:o*}",
	    "version", PK_VERSION, "node_id", a->node_id, "started_at", started, "uptime_seconds",
	    (json_int_t)(now > start ? (now - start) / 1000 : 0), "generation",
	    (json_int_t)sup.generation, "ready", (sup.flags & PK_CTR_F_READY) != 0, "stopping",
	    (sup.flags & PK_CTR_F_STOPPING) != 0, "workers", "configured", workers, "up",
	    workers_up, "processes", procs, "reloads", "success", (json_int_t)sup.reloads_ok,
	    "failure", (json_int_t)sup.reloads_failed, "restarts", "worker",
	    (json_int_t)sup.restarts[PK_ROLE_WORKER], "admin",
	    (json_int_t)sup.restarts[PK_ROLE_ADMIN], "cluster",
	    (json_int_t)sup.restarts[PK_ROLE_CLUSTER], "endpoints",
	    neps >= 0 ? json_integer(neps) : NULL, "upstreams",
	    neps >= 0 ? json_integer(rows.tunnels) : NULL, "requests", pk__requests_json(a));
}

/* ---- metrics ---- */

static void pk__collect_children(struct pk__admin *a, struct pk_metrics_snapshot *s)
{
	for (int slot = 0; slot < PK_MAX_CHILDREN; slot++) {
		struct pk_ctr_child_info ci;
		if (pk_counters_get_child(a->child->counters, slot, &ci) < 0 ||
		    ci.state == PK_CHILD_UNUSED)
			continue;
		struct pk_metrics_child *m = &s->children[s->nchildren++];
		m->slot = slot;
		m->role = ci.role;
		m->worker_index = ci.worker_index;
		m->generation = ci.generation;
		m->state = ci.state;
		m->pid = ci.pid;
		memcpy(m->gauges, ci.gauges, sizeof(m->gauges));
		if (ci.pid > 0)
			m->have_proc =
			    pk_metrics_proc_stats(ci.pid, &m->rss_bytes, &m->open_fds) == 0;
	}
}

static int pk__collect(struct pk__admin *a, struct pk_metrics_snapshot *s)
{
	struct pk_ctr_worker w;
	struct pk__rows rows = {.a = a};
	int err = 0;

	s->version = PK_VERSION;
	s->node_id = a->node_id;
	pk_counters_read_supervisor(a->child->counters, &s->sup);
	for (int i = 0; i < PK_MAX_WORKERS; i++)
		if (pk_counters_read_worker(a->child->counters, i, &w) == 0)
			pk_metrics_add_worker(&s->total, &w);
	memcpy(s->latency_bounds_us, pk_ctr_latency_bounds_us, sizeof(s->latency_bounds_us));
	pk__collect_children(a, s);
	/* The supervisor is our parent; once it is gone the parent is someone else's. */
	pid_t sup = getppid();
	if (sup > 1)
		s->sup_have_proc =
		    pk_metrics_proc_stats(sup, &s->sup_rss_bytes, &s->sup_open_fds) == 0;
	json_t *eps = pk__endpoints_json(a, &err);
	s->endpoints = eps ? (long)json_object_size(eps) : -1;
	json_decref(eps);
	s->tunnels = pk__scan_rows(a, &rows) == 0 ? rows.tunnels : -1;
	s->tunnel_streams = rows.streams;
	return 0;
}

static void pk__serve_metrics(struct pk__admin *a, struct pk_httpd_conn *conn)
{
	struct pk_metrics_snapshot *s = calloc(1, sizeof(*s));
	char *text = NULL;
	size_t len = 0;
	int rc = s ? pk__collect(a, s) : -ENOMEM;
	if (rc == 0)
		rc = pk_metrics_render(s, &text, &len);
	free(s);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot render metrics", "error=%s", strerror(-rc));
		pk_httpd_respond_error(conn, 500, "cannot render metrics");
		return;
	}
	pk_httpd_respond(conn, 200, PK_METRICS_CONTENT_TYPE, NULL, text, len);
	free(text);
}

/* ---- reload ---- */

static void pk__reload_answer(struct pk__admin *a, int status, json_t *body)
{
	struct pk_httpd_conn *conn = a->reload_conn;
	a->reload_conn = NULL;
	uv_timer_stop(&a->reload_timer);
	if (conn)
		pk__respond_json(conn, status, body, NULL);
	else
		json_decref(body);
}

/* Success is read from the counters region, not only from the supervisor's message: a
 * successful reload drains this (old-generation) admin child, and the supervisor does not
 * write to children it has told to drain. */
static void pk__reload_poll(struct pk__admin *a)
{
	struct pk_ctr_supervisor_info sup;
	uint64_t now = uv_now(a->child->loop);

	if (a->reload_conn == NULL)
		return;
	pk_counters_read_supervisor(a->child->counters, &sup);
	if (sup.reloads_ok > a->base_ok && sup.generation > a->base_generation) {
		pk__reload_answer(
		    a, 200,
		    json_pack("{s:b,s:I}", "ok", 1, "generation", (json_int_t)sup.generation));
		return;
	}
	if (sup.flags & PK_CTR_F_STOPPING) {
		pk__reload_answer(a, 503,
		                  json_pack("{s:b,s:s}", "ok", 0, "error",
		                            "pikod is shutting down; no reload was done"));
		return;
	}
	if (sup.reloads_failed > a->base_failed && a->reload_failed_seen_ms == 0)
		a->reload_failed_seen_ms = now;
	if (a->reload_failed_seen_ms && now - a->reload_failed_seen_ms >= PK__RELOAD_SETTLE_MS) {
		pk__reload_answer(a, 500,
		                  json_pack("{s:b,s:s}", "ok", 0, "error",
		                            "reload failed (see the supervisor's log)"));
		return;
	}
	if (now >= a->reload_deadline_ms)
		pk__reload_answer(a, 504,
		                  json_pack("{s:b,s:s}", "ok", 0, "error",
		                            "timed out waiting for the reload result"));
}

static void pk__reload_tick(uv_timer_t *t)
{
	pk__reload_poll(t->data);
}

static void pk__on_message(struct pk_child *c, uint16_t type, const void *payload, size_t len)
{
	struct pk__admin *a = c->role_data;
	struct pk_msg_reload_result r;

	if (type != PK_MSG_RELOAD_RESULT || len != sizeof(r)) {
		pk_log_warn(PK__LOG, "unexpected control message", "type=%s len=%zu",
		            pk_msg_type_name(type), len);
		return;
	}
	memcpy(&r, payload, sizeof(r));
	r.error[sizeof(r.error) - 1] = '\0';
	if (a->reload_conn == NULL)
		return; /* answered already (from the counters), or asked by someone else */
	if (r.ok)
		pk__reload_answer(
		    a, 200,
		    json_pack("{s:b,s:I}", "ok", 1, "generation", (json_int_t)r.generation));
	else
		pk__reload_answer(a, 500,
		                  json_pack("{s:b,s:s}", "ok", 0, "error",
		                            r.error[0] ? r.error : "reload failed"));
}

static void pk__serve_reload(struct pk__admin *a, struct pk_httpd_conn *conn)
{
	struct pk_ctr_supervisor_info sup;

	if (a->reload_conn) {
		pk_httpd_respond_error(conn, 409, "a reload is already in progress");
		return;
	}
	if (a->child->draining) {
		pk_httpd_respond_error(conn, 503, "this admin process is shutting down");
		return;
	}
	pk_counters_read_supervisor(a->child->counters, &sup);
	a->base_ok = sup.reloads_ok;
	a->base_failed = sup.reloads_failed;
	a->base_generation = sup.generation;
	int rc = pk_child_send(a->child, PK_MSG_RELOAD, NULL, 0);
	if (rc < 0) {
		pk__respond_err(conn, 500, "cannot reach the supervisor");
		return;
	}
	pk_log_info(PK__LOG, "reload requested", "generation=%llu",
	            (unsigned long long)sup.generation);
	a->reload_conn = conn;
	a->reload_failed_seen_ms = 0;
	a->reload_deadline_ms = uv_now(a->child->loop) + PK__RELOAD_WAIT_MS;
	uv_timer_start(&a->reload_timer, pk__reload_tick, PK__RELOAD_POLL_MS, PK__RELOAD_POLL_MS);
}

/* ---- request routing ---- */

/* 0 when the request may go on; otherwise it has been answered. */
static int pk__authorize(struct pk__admin *a, struct pk_httpd_conn *conn,
                         const struct pk_http_req *req)
{
	static const char *const challenge[] = {"WWW-Authenticate: Bearer", NULL};
	if (a->auth == NULL)
		return 0;
	enum pk_jwt_error e = pk_jwt_authenticate(a->auth, pk_http_req_header(req, "authorization"),
	                                          pk_http_req_header(req, "x-piko-authorization"),
	                                          (int64_t)time(NULL), NULL);
	if (e == PK_JWT_OK)
		return 0;
	if (e == PK_JWT_INTERNAL_ERROR)
		pk__respond_err(conn, 500, pk_jwt_error_str(e));
	else
		pk__respond_json(conn, 401, json_pack("{s:s}", "error", pk_jwt_error_str(e)),
		                 challenge);
	return -1;
}

static int pk__method_ok(struct pk_httpd_conn *conn, const struct pk_http_req *req,
                         const char *want)
{
	static const char *const allow_get[] = {"Allow: GET", NULL};
	static const char *const allow_post[] = {"Allow: POST", NULL};
	if (strcmp(req->method, want) == 0)
		return 1;
	pk_httpd_respond(conn, 405, "application/json",
	                 strcmp(want, "GET") == 0 ? allow_get : allow_post,
	                 "{\"error\":\"method not allowed\"}", 30);
	return 0;
}

static void pk__serve_probe(struct pk__admin *a, struct pk_httpd_conn *conn,
                            const struct pk_http_req *req, int ready_probe)
{
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
		pk_httpd_respond_error(conn, 405, "method not allowed");
		return;
	}
	if (!ready_probe) {
		pk_httpd_respond(conn, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
		return;
	}
	int ready = pk_counters_is_ready(a->child->counters) && !a->child->draining;
	if (ready)
		pk_httpd_respond(conn, 200, "application/json", NULL, "{\"status\":\"ready\"}", 18);
	else
		pk_httpd_respond_error(conn, 503, "not ready");
}

static void pk__serve_status(struct pk__admin *a, struct pk_httpd_conn *conn, const char *path)
{
	int err = 0;
	json_t *body = NULL;

	if (strcmp(path, "/status") == 0) {
		body = pk__status_json(a);
	} else if (strcmp(path, "/status/upstream/endpoints") == 0) {
		body = pk__endpoints_json(a, &err);
	} else if (strcmp(path, "/status/upstream/upstreams") == 0) {
		struct pk__rows rows = {.a = a, .list = json_array()};
		err = rows.list ? pk__scan_rows(a, &rows) : -ENOMEM;
		body = err < 0 ? (json_decref(rows.list), NULL) : rows.list;
	} else if (strcmp(path, "/status/cluster/nodes") == 0) {
		json_t *node = pk__node_json(a, &err);
		body = node ? json_pack("[o]", node) : NULL;
	} else if (strncmp(path, "/status/cluster/nodes/", 22) == 0) {
		const char *id = path + 22;
		if (strcmp(id, "local") != 0 && strcmp(id, a->node_id) != 0) {
			pk_httpd_respond_error(conn, 404, "node not found");
			return;
		}
		body = pk__node_json(a, &err);
	} else {
		pk_httpd_respond_error(conn, 404, "not found");
		return;
	}
	if (body == NULL) {
		char msg[160];
		snprintf(msg, sizeof(msg), "routing table unavailable: %s",
		         err ? pk__db_error(err) : "out of memory");
		pk__respond_err(conn, 503, msg);
		return;
	}
	pk__respond_json(conn, 200, body, NULL);
}

static void pk__admin_handle(struct pk_httpd_conn *conn, const struct pk_http_req *req, void *ud)
{
	struct pk__admin *a = ud;
	char forward[128];
	int probe = strcmp(req->path, "/health") == 0 || strcmp(req->path, "/ready") == 0;

	if (!(probe && a->exempt_probes) && pk__authorize(a, conn, req) < 0)
		return;
	int frc = pk_http_query_param(req->query, "forward", forward, sizeof(forward));
	if (frc == 0 && strcmp(forward, "local") != 0 && strcmp(forward, a->node_id) != 0) {
		pk_httpd_respond_error(conn, 404, "unknown node");
		return;
	}
	if (frc == -ENAMETOOLONG) {
		pk_httpd_respond_error(conn, 404, "unknown node");
		return;
	}
	if (probe) {
		pk__serve_probe(a, conn, req, strcmp(req->path, "/ready") == 0);
		return;
	}
	if (strcmp(req->path, "/reload") == 0) {
		if (pk__method_ok(conn, req, "POST"))
			pk__serve_reload(a, conn);
		return;
	}
	if (strcmp(req->path, "/metrics") == 0) {
		if (pk__method_ok(conn, req, "GET"))
			pk__serve_metrics(a, conn);
		return;
	}
	if (strcmp(req->path, "/status") == 0 || strncmp(req->path, "/status/", 8) == 0) {
		if (pk__method_ok(conn, req, "GET"))
			pk__serve_status(a, conn, req->path);
		return;
	}
	pk_httpd_respond_error(conn, 404, "not found");
}

/* ---- lifecycle ---- */

static void pk__admin_drained(void *ud)
{
	struct pk__admin *a = ud;
	pk_child_exit(a->child, 0);
}

static void pk__admin_drain(struct pk_child *c, int now)
{
	struct pk__admin *a = c->role_data;
	if (now)
		pk_child_exit(c, 0);
	/* A reload we asked for that succeeded is what drains us: answer it first (the
	 * pending connection keeps the drain waiting until then). */
	pk__reload_poll(a);
	pk_httpd_drain(a->httpd, pk__admin_drained, a);
}

static int pk__setup_auth(struct pk__admin *a)
{
	const struct pk_auth_config *ac = &a->child->cfg.admin.auth;
	const char *why = NULL;
	struct pk_jwt_config jc = {
	    .hmac_secret_key = ac->hmac_secret_key,
	    .rsa_public_key = ac->rsa_public_key,
	    .ecdsa_public_key = ac->ecdsa_public_key,
	    .audience = ac->audience,
	    .issuer = ac->issuer,
	};
	a->exempt_probes = a->child->cfg.admin_auth_exempt_probes;
	if (!ac->hmac_secret_key && !ac->rsa_public_key && !ac->ecdsa_public_key)
		return 0;
	int rc = pk_jwt_verifier_new(&jc, &a->auth, &why);
	if (rc < 0)
		pk_log_error(PK__LOG, "admin.auth: unusable key", "error=%s", why ? why : "?");
	return rc;
}

int pk_admin_start(struct pk_child *c)
{
	static struct pk__admin admin;
	struct pk__admin *a = &admin;
	struct pk_httpd_options opt = {
	    .max_header_bytes = 64 * 1024,
	    .read_header_timeout_ms = 10000,
	    .idle_timeout_ms = 60000,
	    .subsystem = PK__LOG,
	};
	char dir[PATH_MAX];
	int rc;

	a->child = c;
	if (pk__setup_auth(a) < 0)
		pk_child_exit(c, PK_EXIT_FATAL_CONFIG);
	pk__node_id(a);
	pk__addresses(a);
	snprintf(dir, sizeof(dir), "%s/db", c->cfg.state_dir);
	rc = pk_db_open(&a->db, dir, NULL);
	if (rc < 0) {
		/* Metrics still work from the counters region; the status API says why not. */
		pk_log_error(PK__LOG, "cannot open the routing table", "dir=%s error=%s", dir,
		             pk_db_strerror(rc));
		a->db = NULL;
	}
	uv_timer_init(c->loop, &a->reload_timer);
	a->reload_timer.data = a;
	rc = pk_httpd_start(&a->httpd, c->loop, PK_FD_ADMIN, &opt, pk__admin_handle, a);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot serve the admin listener", "error=%s",
		             uv_strerror(rc));
		return rc;
	}
	c->role_data = a;
	c->on_drain = pk__admin_drain;
	pk_child_on_message = pk__on_message;
	pk_log_info(PK__LOG, "admin API serving", "node_id=%s addr=%s auth=%s", a->node_id,
	            a->admin_addr, a->auth ? "jwt" : "none");
	return pk_child_ready(c);
}
