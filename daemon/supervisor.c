#include "daemon/supervisor.h"

#include "common/channel.h"
#include "common/log.h"
#include "daemon/listeners.h"
#include "daemon/notify.h"
#include "daemon/pidfile.h"
#include "shm/counters.h"
#include "shm/db.h"
#include "shm/routes.h"
#include "workers/child.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define PK__SLOTS             PK_MAX_CHILDREN
#define PK__RELOAD_TIMEOUT_MS 60000
#define PK__BACKOFF_MIN_MS    50
#define PK__BACKOFF_MAX_MS    10000
#define PK__STABLE_MS         10000 /* a child up this long restarts without backoff */
#define PK__MAX_DRAINING_GENS 3
#define PK__STOP_SLACK_MS     5000
#define PK__LOG               "supervisor"

enum pk__proc_state {
	PK__PROC_FREE = 0,
	PK__PROC_STARTING,
	PK__PROC_READY,
	PK__PROC_DRAINING,
	PK__PROC_BACKOFF, /* exited; respawn timer running */
	PK__PROC_FAILED,  /* exited with the fatal-config code; not respawned */
};

struct pk__proc {
	enum pk__proc_state state;
	enum pk_role role;
	int worker_index;
	uint32_t generation;
	int running; /* process handle live (exit_cb not yet called) */
	uv_process_t process;
	int ctl_fd;
	uv_poll_t poll;
	int poll_live;
	uv_timer_t timer; /* respawn backoff, or kill after the drain grace period */
	unsigned restarts;
	unsigned backoff_ms;
	uint64_t started_ms;
	struct pk__sup *sup;
};

/* What one generation runs with. */
struct pk__gen {
	uint32_t id;
	struct pk_config cfg;
	int cfg_loaded;
	int nworkers;
	int config_fd; /* memfd with the rendered config handed to children */
	struct pk_listener lst[PK_LISTENER_COUNT];
};

struct pk__sup {
	uv_loop_t *loop;
	int argc;
	char **argv;
	char exe[PATH_MAX];
	struct pk__gen cur;
	struct pk__gen next; /* valid while reloading */
	int reloading;
	int reload_requester; /* slot of the admin child that asked, or -1 */
	uv_timer_t reload_timer;
	int stopping;
	int exit_code;
	uv_timer_t stop_timer;
	uv_timer_t housekeeping; /* expired route markers */
	uv_signal_t sig_hup, sig_term, sig_int;
	int counters_fd;
	struct pk_counters *counters;
	int pidfile_fd;
	struct pk_db *db; /* routing table, to purge the routes of a dead worker */
	int initial_ready_sent;
	struct pk__proc procs[PK__SLOTS];
};

static void pk__spawn(struct pk__sup *s, int slot);
static void pk__maybe_finish_stop(struct pk__sup *s);
static void pk__reload_fail(struct pk__sup *s, const char *why);

static uint64_t pk__now_ms(struct pk__sup *s)
{
	return uv_now(s->loop);
}

static void pk__housekeeping(uv_timer_t *t)
{
	struct pk__sup *s = t->data;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	int n = pk_routes_purge_expired_markers(s->db, now);
	if (n > 0)
		pk_log_debug(PK__LOG, "expired route markers purged", "count=%d", n);
}

/* ---- shared state for the admin child ---- */

static int pk__gen_all_ready(struct pk__sup *s, uint32_t gen)
{
	int any = 0;
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		if (p->state == PK__PROC_FREE || p->generation != gen ||
		    p->state == PK__PROC_DRAINING)
			continue;
		if (p->state != PK__PROC_READY)
			return 0;
		any = 1;
	}
	return any;
}

static void pk__publish(struct pk__sup *s)
{
	struct pk_counters *c = s->counters;
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		enum pk_child_state st;
		switch (p->state) {
		case PK__PROC_STARTING:
			st = PK_CHILD_STARTING;
			break;
		case PK__PROC_READY:
			st = PK_CHILD_READY;
			break;
		case PK__PROC_DRAINING:
			st = PK_CHILD_DRAINING;
			break;
		case PK__PROC_BACKOFF:
		case PK__PROC_FAILED:
			st = PK_CHILD_DEAD;
			break;
		default:
			st = PK_CHILD_UNUSED;
		}
		pk_counters_set_child(c, i, p->running ? p->process.pid : 0, (int)p->role,
		                      p->worker_index, p->generation, st, p->restarts);
	}
	int ready = !s->stopping && pk__gen_all_ready(s, s->cur.id);
	pk_counters_set_state(c, s->cur.id, ready, s->stopping);
}

/* ---- control channel ---- */

static void pk__on_child_ready(struct pk__sup *s, int slot);
static void pk__begin_reload(struct pk__sup *s, int requester);

static void pk__close_ctl(struct pk__proc *p)
{
	if (p->poll_live) {
		uv_poll_stop(&p->poll);
		uv_close((uv_handle_t *)&p->poll, NULL);
		p->poll_live = 0;
	}
	if (p->ctl_fd >= 0) {
		close(p->ctl_fd);
		p->ctl_fd = -1;
	}
}

static void pk__on_ctl(uv_poll_t *h, int status, int events)
{
	struct pk__proc *p = h->data;
	struct pk__sup *s = p->sup;
	int slot = (int)(p - s->procs);
	static struct pk_msg msg;

	for (;;) {
		int fds[PK_CHAN_MAX_FDS], nfds = PK_CHAN_MAX_FDS;
		int rc = pk_chan_recv(p->ctl_fd, &msg, fds, &nfds);
		if (rc == -EAGAIN)
			return;
		if (rc <= 0) {
			/* EOF: the child is exiting; its exit callback does the bookkeeping. */
			pk__close_ctl(p);
			return;
		}
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		switch (msg.hdr.type) {
		case PK_MSG_READY:
			pk__on_child_ready(s, slot);
			break;
		case PK_MSG_RELOAD:
			pk_log_info(PK__LOG, "reload requested over the admin API", "slot=%d",
			            slot);
			pk__begin_reload(s, slot);
			break;
		default:
			pk_log_warn(PK__LOG, "unexpected message from child", "slot=%d type=%s",
			            slot, pk_msg_type_name(msg.hdr.type));
		}
	}
}

static void pk__send(struct pk__proc *p, uint16_t type, const void *payload, size_t len)
{
	if (p->ctl_fd < 0)
		return;
	int rc = pk_chan_send(p->ctl_fd, type, payload, len, NULL, 0);
	if (rc < 0)
		pk_log_warn(PK__LOG, "control message not delivered", "slot=%d type=%s error=%s",
		            (int)(p - p->sup->procs), pk_msg_type_name(type), strerror(-rc));
}

static void pk__send_drain(struct pk__proc *p, uint64_t grace_ms)
{
	struct pk_msg_drain d = {.grace_ms = grace_ms};
	pk__send(p, PK_MSG_DRAIN, &d, sizeof(d));
}

/* ---- process lifecycle ---- */

static void pk__kill_timer_cb(uv_timer_t *t)
{
	struct pk__proc *p = t->data;
	if (p->running) {
		pk_log_warn(PK__LOG, "child outlived its grace period; killing",
		            "slot=%d child_pid=%d", (int)(p - p->sup->procs), p->process.pid);
		uv_process_kill(&p->process, SIGKILL);
	}
}

static void pk__respawn_cb(uv_timer_t *t)
{
	struct pk__proc *p = t->data;
	struct pk__sup *s = p->sup;
	if (p->state == PK__PROC_BACKOFF && !s->stopping)
		pk__spawn(s, (int)(p - s->procs));
}

static void pk__process_closed(uv_handle_t *h)
{
	/* Nothing to free: the handle lives in the slot. */
}

/* A worker that is gone cannot remove its tunnels' routes itself: do it at once, so no
 * request is sent towards it, and clear any LMDB reader slot it held. */
static void pk__purge_routes(struct pk__sup *s, int slot)
{
	int dead = 0;
	if (s->db == NULL)
		return;
	int n = pk_routes_purge_slot(s->db, (uint32_t)slot);
	if (n > 0)
		pk_log_info(PK__LOG, "routes purged", "slot=%d count=%d", slot, n);
	else if (n < 0)
		pk_log_error(PK__LOG, "cannot purge routes", "slot=%d error=%s", slot,
		             pk_db_strerror(n));
	(void)pk_db_reader_check(s->db, &dead);
}

static void pk__on_exit(uv_process_t *proc, int64_t status, int sig)
{
	struct pk__proc *p = proc->data;
	struct pk__sup *s = p->sup;
	int slot = (int)(p - s->procs);
	int pid = proc->pid;

	p->running = 0;
	uv_close((uv_handle_t *)proc, pk__process_closed);
	pk__close_ctl(p);
	uv_timer_stop(&p->timer);
	if (p->role == PK_ROLE_WORKER)
		pk__purge_routes(s, slot);

	int expected = p->state == PK__PROC_DRAINING || s->stopping;
	enum pk_log_level lvl = expected && sig == 0 && status == 0 ? PK_LOG_INFO : PK_LOG_WARN;
	if (sig)
		pk_log(lvl, PK__LOG, "child exited",
		       "slot=%d child_pid=%d role=%s generation=%u signal=%d", slot, pid,
		       pk_role_name(p->role), p->generation, sig);
	else
		pk_log(lvl, PK__LOG, "child exited",
		       "slot=%d child_pid=%d role=%s generation=%u code=%d", slot, pid,
		       pk_role_name(p->role), p->generation, (int)status);

	if (expected) {
		p->state = PK__PROC_FREE;
	} else if (s->reloading && p->generation == s->next.id) {
		p->state = PK__PROC_FREE;
		pk__reload_fail(s, "a new child exited before it was ready");
	} else if (p->generation != s->cur.id) {
		p->state = PK__PROC_FREE;
	} else if (sig == 0 && status == PK_EXIT_FATAL_CONFIG) {
		p->state = PK__PROC_FAILED;
		pk_log_error(PK__LOG, "child rejected its configuration; not respawning",
		             "slot=%d role=%s", slot, pk_role_name(p->role));
	} else {
		uint64_t up = pk__now_ms(s) - p->started_ms;
		if (up >= PK__STABLE_MS)
			p->backoff_ms = PK__BACKOFF_MIN_MS;
		else if (p->backoff_ms == 0)
			p->backoff_ms = PK__BACKOFF_MIN_MS;
		else if ((p->backoff_ms *= 2) > PK__BACKOFF_MAX_MS)
			p->backoff_ms = PK__BACKOFF_MAX_MS;
		p->state = PK__PROC_BACKOFF;
		p->restarts++;
		pk_counters_child_restarted(s->counters, (int)p->role);
		pk_log_info(PK__LOG, "respawning child", "slot=%d role=%s delay_ms=%u", slot,
		            pk_role_name(p->role), p->backoff_ms);
		uv_timer_start(&p->timer, pk__respawn_cb, p->backoff_ms, 0);
	}
	pk__publish(s);
	if (s->stopping)
		pk__maybe_finish_stop(s);
}

static const struct pk__gen *pk__gen_of(struct pk__sup *s, uint32_t id)
{
	if (s->reloading && id == s->next.id)
		return &s->next;
	return &s->cur;
}

static void pk__spawn(struct pk__sup *s, int slot)
{
	struct pk__proc *p = &s->procs[slot];
	const struct pk__gen *g = pk__gen_of(s, p->generation);
	char a_slot[16], a_gen[16], a_idx[16], a_nw[16];
	char *args[16];
	int n = 0, fds[2], rc;

	snprintf(a_slot, sizeof(a_slot), "%d", slot);
	snprintf(a_gen, sizeof(a_gen), "%u", p->generation);
	snprintf(a_idx, sizeof(a_idx), "%d", p->worker_index);
	snprintf(a_nw, sizeof(a_nw), "%d", g->nworkers);
	args[n++] = s->exe;
	args[n++] = "--role";
	args[n++] = (char *)pk_role_name(p->role);
	args[n++] = "--slot";
	args[n++] = a_slot;
	args[n++] = "--generation";
	args[n++] = a_gen;
	args[n++] = "--worker-index";
	args[n++] = a_idx;
	args[n++] = "--workers";
	args[n++] = a_nw;
	args[n] = NULL;

	rc = pk_chan_pair(fds);
	if (rc < 0)
		goto err_backoff;

	uv_stdio_container_t stdio[PK_FD_FIRST_FREE];
	memset(stdio, 0, sizeof(stdio));
	for (int i = 0; i < PK_FD_FIRST_FREE; i++)
		stdio[i].flags = UV_IGNORE;
	stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
	stdio[1].data.fd = 1;
	stdio[2].data.fd = 2;
#define PK__PASS(num, fdv)                                                                         \
	do {                                                                                       \
		stdio[num].flags = UV_INHERIT_FD;                                                  \
		stdio[num].data.fd = (fdv);                                                        \
	} while (0)
	PK__PASS(PK_FD_CONTROL, fds[1]);
	PK__PASS(PK_FD_CONFIG, g->config_fd);
	PK__PASS(PK_FD_COUNTERS, s->counters_fd);
	if (p->role == PK_ROLE_WORKER) {
		PK__PASS(PK_FD_PROXY, g->lst[PK_LISTENER_PROXY].fd);
		PK__PASS(PK_FD_UPSTREAM, g->lst[PK_LISTENER_UPSTREAM].fd);
	} else if (p->role == PK_ROLE_ADMIN) {
		PK__PASS(PK_FD_ADMIN, g->lst[PK_LISTENER_ADMIN].fd);
	} else {
		PK__PASS(PK_FD_CLUSTER, g->lst[PK_LISTENER_CLUSTER].fd);
	}
#undef PK__PASS

	uv_process_options_t opt = {
	    .exit_cb = pk__on_exit,
	    .file = s->exe,
	    .args = args,
	    .stdio_count = PK_FD_FIRST_FREE,
	    .stdio = stdio,
	};
	p->process.data = p;
	rc = uv_spawn(s->loop, &p->process, &opt);
	close(fds[1]);
	if (rc < 0) {
		/* libuv still wants the handle closed after a failed spawn. */
		uv_close((uv_handle_t *)&p->process, pk__process_closed);
		close(fds[0]);
		goto err_backoff;
	}
	p->running = 1;
	p->ctl_fd = fds[0];
	p->started_ms = pk__now_ms(s);
	p->state = PK__PROC_STARTING;
	uv_poll_init(s->loop, &p->poll, p->ctl_fd);
	p->poll.data = p;
	p->poll_live = 1;
	uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, pk__on_ctl);
	pk_log_info(PK__LOG, "child started",
	            "slot=%d child_pid=%d role=%s generation=%u worker=%d", slot, p->process.pid,
	            pk_role_name(p->role), p->generation, p->worker_index);
	pk__publish(s);
	return;

err_backoff:
	pk_log_error(PK__LOG, "cannot start child", "slot=%d role=%s error=%s", slot,
	             pk_role_name(p->role), rc < 0 && rc > -4096 ? uv_strerror(rc) : "unknown");
	if (s->reloading && p->generation == s->next.id) {
		p->state = PK__PROC_FREE;
		pk__reload_fail(s, "cannot start a new child");
		return;
	}
	p->state = PK__PROC_BACKOFF;
	p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : 1000;
	if (p->backoff_ms > PK__BACKOFF_MAX_MS)
		p->backoff_ms = PK__BACKOFF_MAX_MS;
	uv_timer_start(&p->timer, pk__respawn_cb, p->backoff_ms, 0);
}

static int pk__alloc_slot(struct pk__sup *s, enum pk_role role, int worker_index, uint32_t gen)
{
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		if (p->state != PK__PROC_FREE || p->running)
			continue;
		p->role = role;
		p->worker_index = worker_index;
		p->generation = gen;
		p->restarts = 0;
		p->backoff_ms = 0;
		p->ctl_fd = -1;
		return i;
	}
	return -1;
}

/* Starts every child of generation g. Returns 0 or -ENOSPC when the table is full. */
static int pk__start_generation(struct pk__sup *s, struct pk__gen *g)
{
	int slots[PK__SLOTS], n = 0;
	for (int w = 0; w < g->nworkers + 2; w++) {
		enum pk_role role = w < g->nworkers    ? PK_ROLE_WORKER
		                    : w == g->nworkers ? PK_ROLE_ADMIN
		                                       : PK_ROLE_CLUSTER;
		int slot = pk__alloc_slot(s, role, w < g->nworkers ? w : -1, g->id);
		if (slot < 0) {
			for (int i = 0; i < n; i++)
				s->procs[slots[i]].state = PK__PROC_FREE;
			return -ENOSPC;
		}
		s->procs[slot].state = PK__PROC_STARTING; /* reserve before the next alloc */
		slots[n++] = slot;
	}
	for (int i = 0; i < n; i++)
		pk__spawn(s, slots[i]);
	return 0;
}

/* ---- generations: config handed to children, listeners ---- */

static int pk__render_config(struct pk__gen *g, char *err, size_t errlen)
{
	int fd = memfd_create("pikod-config", MFD_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "memfd_create: %s", strerror(errno));
		return -errno;
	}
	int dupfd = dup(fd);
	FILE *f = dupfd >= 0 ? fdopen(dupfd, "w") : NULL;
	int rc = f ? pk_config_write(&g->cfg, f) : -errno;
	if (f && fclose(f) != 0 && rc == 0)
		rc = -EIO;
	if (rc < 0) {
		snprintf(err, errlen, "rendering the configuration: %s", strerror(-rc));
		close(fd);
		return rc;
	}
	g->config_fd = fd;
	return 0;
}

static int pk__resolve_workers(int configured)
{
	if (configured > 0)
		return configured > PK_MAX_WORKERS ? PK_MAX_WORKERS : configured;
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > PK_MAX_WORKERS ? PK_MAX_WORKERS : (int)n;
}

static const char *pk__listener_addr(const struct pk_config *cfg, int i)
{
	switch (i) {
	case PK_LISTENER_PROXY:
		return cfg->proxy.bind_addr;
	case PK_LISTENER_UPSTREAM:
		return cfg->upstream.bind_addr;
	case PK_LISTENER_ADMIN:
		return cfg->admin.bind_addr;
	default:
		return cfg->cluster.bind_addr;
	}
}

/* Proxy clients (an HTTP request, a WebSocket upgrade, a TLS ClientHello) and agents (their
 * upgrade) speak first, so the kernel holds a new connection until its first bytes arrive:
 * a worker is woken once, with something to read, instead of once to accept and again for
 * the request. A silent client is held for about read_header_timeout (as nginx's `deferred`
 * does), then accepted and given that timeout again. Set on reused listeners too: a reload
 * may change the timeout. */
static void pk__defer_accept(struct pk__gen *g, int i)
{
	uint64_t s = (g->cfg.proxy_read_header_timeout_ms + 999) / 1000;
	int rc;

	if (i != PK_LISTENER_PROXY && i != PK_LISTENER_UPSTREAM)
		return;
	rc = pk_listener_defer_accept(&g->lst[i], s < 1 ? 1 : s > 3600 ? 3600 : (int)s);
	if (rc < 0)
		pk_log_warn(PK__LOG, "cannot defer accepting", "listener=%s error=%s",
		            pk_listener_name(i), strerror(-rc));
}

/* Opens g's listeners, reusing the fd of `prev` (may be NULL) where the address is the
 * same. On failure closes what it opened and leaves prev untouched. */
static int pk__open_listeners(struct pk__gen *g, const struct pk__gen *prev, char *err,
                              size_t errlen)
{
	for (int i = 0; i < PK_LISTENER_COUNT; i++)
		g->lst[i].fd = -1;
	for (int i = 0; i < PK_LISTENER_COUNT; i++) {
		const char *addr = pk__listener_addr(&g->cfg, i);
		if (prev && prev->lst[i].fd >= 0 && strcmp(prev->lst[i].addr, addr) == 0) {
			g->lst[i] = prev->lst[i];
			pk__defer_accept(g, i);
			continue;
		}
		char why[256];
		int rc = pk_listener_open(&g->lst[i], addr, why, sizeof(why));
		if (rc < 0) {
			snprintf(err, errlen, "%s listener: %s", pk_listener_name(i), why);
			for (int j = 0; j < i; j++)
				if (!prev || g->lst[j].fd != prev->lst[j].fd)
					pk_listener_close(&g->lst[j]);
			return rc;
		}
		pk__defer_accept(g, i);
		pk_log_info(PK__LOG, "listening", "listener=%s addr=%s bound=%s",
		            pk_listener_name(i), addr, g->lst[i].bound);
	}
	return 0;
}

/* Closes the listeners of `old` that `keep` does not share. */
static void pk__close_listeners_except(struct pk__gen *old, const struct pk__gen *keep)
{
	for (int i = 0; i < PK_LISTENER_COUNT; i++) {
		if (old->lst[i].fd < 0)
			continue;
		if (keep && keep->lst[i].fd == old->lst[i].fd)
			continue;
		pk_listener_close(&old->lst[i]);
	}
}

static void pk__gen_free(struct pk__gen *g)
{
	if (g->config_fd >= 0)
		close(g->config_fd);
	g->config_fd = -1;
	if (g->cfg_loaded)
		pk_config_free(&g->cfg);
	g->cfg_loaded = 0;
}

/* ---- readiness and reload ---- */

static void pk__drain_generation(struct pk__sup *s, uint32_t gen)
{
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		if (p->generation != gen || p->state == PK__PROC_FREE)
			continue;
		if (!p->running) {
			uv_timer_stop(&p->timer);
			p->state = PK__PROC_FREE;
			continue;
		}
		p->state = PK__PROC_DRAINING;
		pk__send_drain(p, s->cur.cfg.grace_period_ms);
		uv_timer_start(&p->timer, pk__kill_timer_cb,
		               s->cur.cfg.grace_period_ms + PK__STOP_SLACK_MS, 0);
	}
}

/* Caps the number of generations still draining: the oldest ones are killed. */
static void pk__cap_draining(struct pk__sup *s)
{
	for (;;) {
		uint32_t oldest = UINT32_MAX;
		uint32_t gens[PK__SLOTS];
		int ngens = 0;
		for (int i = 0; i < PK__SLOTS; i++) {
			struct pk__proc *p = &s->procs[i];
			if (p->state != PK__PROC_DRAINING || !p->running)
				continue;
			int seen = 0;
			for (int j = 0; j < ngens; j++)
				seen |= gens[j] == p->generation;
			if (!seen)
				gens[ngens++] = p->generation;
			if (p->generation < oldest)
				oldest = p->generation;
		}
		if (ngens <= PK__MAX_DRAINING_GENS)
			return;
		pk_log_warn(PK__LOG, "too many generations draining; killing the oldest",
		            "generation=%u", oldest);
		for (int i = 0; i < PK__SLOTS; i++) {
			struct pk__proc *p = &s->procs[i];
			if (p->state == PK__PROC_DRAINING && p->running &&
			    p->generation == oldest) {
				uv_process_kill(&p->process, SIGKILL);
				p->generation = 0; /* counted as gone for the next pass */
			}
		}
	}
}

static void pk__reply_reload(struct pk__sup *s, int ok, uint32_t generation, const char *error)
{
	if (s->reload_requester < 0)
		return;
	struct pk__proc *p = &s->procs[s->reload_requester];
	struct pk_msg_reload_result r = {.ok = (uint32_t)ok, .generation = generation};
	snprintf(r.error, sizeof(r.error), "%s", error ? error : "");
	if (p->state != PK__PROC_FREE && p->state != PK__PROC_DRAINING)
		pk__send(p, PK_MSG_RELOAD_RESULT, &r, sizeof(r));
	s->reload_requester = -1;
}

static void pk__reload_commit(struct pk__sup *s)
{
	uint32_t old_id = s->cur.id;
	uv_timer_stop(&s->reload_timer);
	s->reloading = 0;
	/* The requester is an admin child of the old generation: answer it before it is
	 * told to drain. */
	pk__reply_reload(s, 1, s->next.id, NULL);
	pk__drain_generation(s, old_id);
	pk__close_listeners_except(&s->cur, &s->next);
	pk__gen_free(&s->cur);
	s->cur = s->next;
	memset(&s->next, 0, sizeof(s->next));
	s->next.config_fd = -1;
	pk_counters_reload_done(s->counters, 1);
	pk__cap_draining(s);
	pk__publish(s);
	char status[128];
	snprintf(status, sizeof(status), "serving: generation %u, %d workers", s->cur.id,
	         s->cur.nworkers);
	pk_notify_ready(status);
	pk_log_info(PK__LOG, "reload complete", "generation=%u previous=%u workers=%d", s->cur.id,
	            old_id, s->cur.nworkers);
}

static void pk__reload_fail(struct pk__sup *s, const char *why)
{
	char status[600];
	if (s->reloading) {
		uv_timer_stop(&s->reload_timer);
		for (int i = 0; i < PK__SLOTS; i++) {
			struct pk__proc *p = &s->procs[i];
			if (p->generation != s->next.id || p->state == PK__PROC_FREE)
				continue;
			uv_timer_stop(&p->timer);
			if (p->running) {
				p->state = PK__PROC_DRAINING;
				uv_process_kill(&p->process, SIGKILL);
			} else {
				p->state = PK__PROC_FREE;
			}
		}
		pk__close_listeners_except(&s->next, &s->cur);
		pk__gen_free(&s->next);
		s->reloading = 0;
	}
	pk_counters_reload_done(s->counters, 0);
	pk_log_error(PK__LOG, "reload failed; the running generation keeps serving", "error=%s",
	             why);
	snprintf(status, sizeof(status), "reload failed: %s", why);
	pk_notify_ready(status);
	pk__reply_reload(s, 0, s->cur.id, why);
	pk__publish(s);
}

static void pk__reload_timeout(uv_timer_t *t)
{
	pk__reload_fail(t->data, "new children did not become ready in time");
}

static void pk__on_child_ready(struct pk__sup *s, int slot)
{
	struct pk__proc *p = &s->procs[slot];
	if (p->state != PK__PROC_STARTING)
		return;
	p->state = PK__PROC_READY;
	pk_log_info(PK__LOG, "child ready", "slot=%d child_pid=%d role=%s generation=%u", slot,
	            p->process.pid, pk_role_name(p->role), p->generation);
	if (s->reloading && p->generation == s->next.id) {
		if (pk__gen_all_ready(s, s->next.id))
			pk__reload_commit(s);
		return;
	}
	pk__publish(s);
	if (!s->initial_ready_sent && p->generation == s->cur.id &&
	    pk__gen_all_ready(s, s->cur.id)) {
		char status[128];
		s->initial_ready_sent = 1;
		snprintf(status, sizeof(status), "serving: generation %u, %d workers", s->cur.id,
		         s->cur.nworkers);
		pk_notify_ready(status);
		pk_log_info(PK__LOG, "ready", "generation=%u workers=%d", s->cur.id,
		            s->cur.nworkers);
	}
}

static int pk__extra_flag(void *ud, const char *name, const char *value)
{
	/* --check/--version/--help were handled at start-up; tolerate them on re-read. */
	if (strcmp(name, "check") == 0 || strcmp(name, "version") == 0 || strcmp(name, "help") == 0)
		return 2;
	return 0;
}

static void pk__begin_reload(struct pk__sup *s, int requester)
{
	char err[PK_CONFIG_ERR_MAX];
	struct pk__gen *g = &s->next;

	if (s->stopping)
		return;
	if (s->reloading) {
		pk_log_warn(PK__LOG, "reload already in progress; request ignored", NULL);
		if (requester >= 0) {
			struct pk_msg_reload_result r = {.ok = 0, .generation = s->cur.id};
			snprintf(r.error, sizeof(r.error), "a reload is already in progress");
			pk__send(&s->procs[requester], PK_MSG_RELOAD_RESULT, &r, sizeof(r));
		}
		return;
	}
	s->reload_requester = requester;
	pk_notify_reloading();
	pk_log_info(PK__LOG, "reloading configuration", "file=%s",
	            s->cur.cfg.config_file ? s->cur.cfg.config_file : "");

	memset(g, 0, sizeof(*g));
	g->config_fd = -1;
	for (int i = 0; i < PK_LISTENER_COUNT; i++)
		g->lst[i].fd = -1;
	err[0] = '\0';
	if (pk_config_init(&g->cfg) < 0) {
		pk__reload_fail(s, "out of memory");
		return;
	}
	g->cfg_loaded = 1;
	if (pk_config_load(&g->cfg, s->argc, s->argv, pk__extra_flag, NULL, err) < 0) {
		pk__gen_free(g);
		pk__reload_fail(s, err);
		return;
	}
	const char *unsupported = pk_config_unsupported(&g->cfg);
	if (unsupported) {
		snprintf(err, sizeof(err), "%s: TLS listeners are not implemented in this version",
		         unsupported);
		pk__gen_free(g);
		pk__reload_fail(s, err);
		return;
	}
	if (strcmp(g->cfg.state_dir, s->cur.cfg.state_dir) != 0) {
		pk__gen_free(g);
		pk__reload_fail(s, "state_dir cannot change on reload; restart pikod");
		return;
	}
	g->id = s->cur.id + 1;
	g->nworkers = pk__resolve_workers(g->cfg.workers);
	if (pk__render_config(g, err, sizeof(err)) < 0 ||
	    pk__open_listeners(g, &s->cur, err, sizeof(err)) < 0) {
		pk__gen_free(g);
		pk__reload_fail(s, err);
		return;
	}
	pk_log_setup(pk_log_level_parse(g->cfg.log_level),
	             (const char *const *)g->cfg.log_subsystems.items);
	s->reloading = 1;
	uv_timer_start(&s->reload_timer, pk__reload_timeout, PK__RELOAD_TIMEOUT_MS, 0);
	if (pk__start_generation(s, g) < 0)
		pk__reload_fail(s, "process table full (too many generations draining)");
}

/* ---- stopping ---- */

static void pk__finish(struct pk__sup *s)
{
	uv_signal_stop(&s->sig_hup);
	uv_signal_stop(&s->sig_term);
	uv_signal_stop(&s->sig_int);
	uv_timer_stop(&s->housekeeping);
	uv_timer_stop(&s->stop_timer);
	uv_timer_stop(&s->reload_timer);
	uv_stop(s->loop);
}

static void pk__maybe_finish_stop(struct pk__sup *s)
{
	int others = 0, admins = 0;
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		if (!p->running)
			continue;
		if (p->role == PK_ROLE_ADMIN)
			admins++;
		else
			others++;
	}
	if (others > 0)
		return;
	if (admins > 0) {
		/* Workers are gone; the admin child (which answered /ready 503 meanwhile) goes
		 * last. */
		for (int i = 0; i < PK__SLOTS; i++)
			if (s->procs[i].running && s->procs[i].role == PK_ROLE_ADMIN &&
			    s->procs[i].state != PK__PROC_FREE) {
				pk__send(&s->procs[i], PK_MSG_STOP, NULL, 0);
				s->procs[i].state = PK__PROC_FREE;
			}
		return;
	}
	pk_log_info(PK__LOG, "stopped", NULL);
	pk__finish(s);
}

static void pk__stop_timeout(uv_timer_t *t)
{
	struct pk__sup *s = t->data;
	pk_log_warn(PK__LOG, "grace period over; killing remaining children", NULL);
	for (int i = 0; i < PK__SLOTS; i++)
		if (s->procs[i].running)
			uv_process_kill(&s->procs[i].process, SIGKILL);
}

static void pk__begin_stop(struct pk__sup *s, int signum)
{
	if (s->stopping) {
		pk_log_warn(PK__LOG, "second stop signal; stopping now", "signal=%d", signum);
		for (int i = 0; i < PK__SLOTS; i++)
			if (s->procs[i].running)
				uv_process_kill(&s->procs[i].process, SIGKILL);
		pk__finish(s);
		return;
	}
	s->stopping = 1;
	pk_notify_stopping();
	pk_log_info(PK__LOG, "stopping", "signal=%d grace_ms=%llu", signum,
	            (unsigned long long)s->cur.cfg.grace_period_ms);
	if (s->reloading)
		pk__reload_fail(s, "stopping");
	/* Our copies of the listeners go first: new connections are refused from here on,
	 * instead of queueing where no worker will take them. */
	pk__close_listeners_except(&s->cur, NULL);
	pk__publish(s);
	for (int i = 0; i < PK__SLOTS; i++) {
		struct pk__proc *p = &s->procs[i];
		uv_timer_stop(&p->timer);
		if (!p->running) {
			p->state = PK__PROC_FREE;
			continue;
		}
		if (p->role != PK_ROLE_ADMIN && p->state != PK__PROC_DRAINING) {
			p->state = PK__PROC_DRAINING;
			pk__send_drain(p, s->cur.cfg.grace_period_ms);
		}
	}
	uv_timer_start(&s->stop_timer, pk__stop_timeout,
	               s->cur.cfg.grace_period_ms + PK__STOP_SLACK_MS, 0);
	pk__maybe_finish_stop(s);
}

static void pk__on_signal(uv_signal_t *h, int signum)
{
	struct pk__sup *s = h->data;
	if (signum == SIGHUP)
		pk__begin_reload(s, -1);
	else
		pk__begin_stop(s, signum);
}

/* ---- start-up ---- */

static int pk__open_state(struct pk__sup *s, char *err, size_t errlen)
{
	long other = 0;
	int rc = pk_pidfile_acquire(s->cur.cfg.state_dir, &other, err, errlen);
	if (rc < 0)
		return rc;
	s->pidfile_fd = rc;

	/* Create the routing table (clearing readers left by a previous crash) before any
	 * child opens it, and empty it: routes are rebuilt as agents connect. Children are
	 * started with fork+exec and LMDB's descriptors are close-on-exec, so this handle
	 * never reaches a child. */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/db", s->cur.cfg.state_dir);
	rc = pk_db_open(&s->db, dir, NULL);
	if (rc < 0) {
		snprintf(err, errlen, "routing table %.900s: %s", dir, pk_db_strerror(rc));
		return rc;
	}
	(void)pk_db_clear(s->db, PK_DB_ROUTES);

	size_t size = 0;
	rc = pk_counters_create(&size);
	if (rc < 0) {
		snprintf(err, errlen, "counters region: %s", strerror(-rc));
		return rc;
	}
	s->counters_fd = rc;
	rc = pk_counters_map(s->counters_fd, &s->counters);
	if (rc < 0) {
		snprintf(err, errlen, "counters region: %s", strerror(-rc));
		return rc;
	}
	return 0;
}

static int pk__self_exe(char *buf, size_t len, const char *argv0)
{
	/* Resolved once at start: a reload execs this path, so an upgraded binary installed
	 * in its place starts the new generation. */
	ssize_t n = readlink("/proc/self/exe", buf, len - 1);
	if (n > 0) {
		buf[n] = '\0';
		char *del = strstr(buf, " (deleted)");
		if (del)
			*del = '\0';
		return 0;
	}
	if (realpath(argv0, buf) != NULL)
		return 0;
	return -errno;
}

/* Every tunnel and client connection is a descriptor. The soft open-file limit is often
 * 1024 where the hard one allows far more (systemd's default is 1024:524288), so raise the
 * soft limit to the hard one, as Piko (Go) does; children inherit it. */
static void pk__raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t was = rl.rlim_cur;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			pk_log_warn(PK__LOG, "cannot raise the open-file limit",
			            "soft=%llu hard=%llu error=%s", (unsigned long long)was,
			            (unsigned long long)rl.rlim_max, strerror(errno));
			return;
		}
	}
	pk_log_info(PK__LOG, "open-file limit", "limit=%llu was=%llu",
	            (unsigned long long)rl.rlim_cur, (unsigned long long)was);
}

int pk_supervisor_run(struct pk_config *cfg, int argc, char **argv)
{
	static struct pk__sup sup;
	struct pk__sup *s = &sup;
	char err[PK_CONFIG_ERR_MAX];
	int rc;

	signal(SIGPIPE, SIG_IGN);
	s->loop = uv_default_loop();
	s->argc = argc;
	s->argv = argv;
	s->counters_fd = -1;
	s->pidfile_fd = -1;
	s->reload_requester = -1;
	s->cur.cfg = *cfg;
	s->cur.cfg_loaded = 1;
	s->cur.config_fd = -1;
	s->next.config_fd = -1;
	s->cur.id = 1;
	s->cur.nworkers = pk__resolve_workers(cfg->workers);
	for (int i = 0; i < PK__SLOTS; i++) {
		s->procs[i].sup = s;
		s->procs[i].ctl_fd = -1;
		uv_timer_init(s->loop, &s->procs[i].timer);
		s->procs[i].timer.data = &s->procs[i];
	}
	pk_log_set_context("proc=%s", "supervisor");
	pk__raise_nofile();
	if (pk__self_exe(s->exe, sizeof(s->exe), argv[0]) < 0) {
		pk_log_error(PK__LOG, "cannot find our own executable", NULL);
		return 1;
	}

	rc = pk__open_state(s, err, sizeof(err));
	if (rc == 0)
		rc = pk__render_config(&s->cur, err, sizeof(err));
	if (rc == 0)
		rc = pk__open_listeners(&s->cur, NULL, err, sizeof(err));
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot start", "error=%s", err);
		fprintf(stderr, "pikod: %s\n", err);
		if (s->pidfile_fd >= 0 && rc != -EEXIST)
			pk_pidfile_release(s->cur.cfg.state_dir, s->pidfile_fd);
		return 1;
	}

	uv_timer_init(s->loop, &s->reload_timer);
	uv_timer_init(s->loop, &s->stop_timer);
	uv_timer_init(s->loop, &s->housekeeping);
	s->reload_timer.data = s->stop_timer.data = s->housekeeping.data = s;
	uv_timer_start(&s->housekeeping, pk__housekeeping, 60000, 60000);
	uv_signal_init(s->loop, &s->sig_hup);
	uv_signal_init(s->loop, &s->sig_term);
	uv_signal_init(s->loop, &s->sig_int);
	s->sig_hup.data = s->sig_term.data = s->sig_int.data = s;
	uv_signal_start(&s->sig_hup, pk__on_signal, SIGHUP);
	uv_signal_start(&s->sig_term, pk__on_signal, SIGTERM);
	uv_signal_start(&s->sig_int, pk__on_signal, SIGINT);

	pk_log_info(PK__LOG, "starting", "version=%s workers=%d state_dir=%s", PK_VERSION,
	            s->cur.nworkers, s->cur.cfg.state_dir);
	pk_counters_set_started(s->counters);
	if (pk__start_generation(s, &s->cur) < 0) {
		pk_log_error(PK__LOG, "process table too small", NULL);
		return 1;
	}
	uv_run(s->loop, UV_RUN_DEFAULT);

	pk__close_listeners_except(&s->cur, NULL);
	pk_db_close(s->db);
	pk_pidfile_release(s->cur.cfg.state_dir, s->pidfile_fd);
	pk__gen_free(&s->cur);
	return s->exit_code;
}
