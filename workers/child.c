#include "workers/child.h"

#include "common/channel.h"
#include "common/log.h"
#include "common/parse.h"
#include "shm/counters.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PK__CONFIG_MAX (4 * 1024 * 1024)

void (*pk_child_on_message)(struct pk_child *c, uint16_t type, const void *payload, size_t len);

static const char *const pk__role_names[PK_ROLE_COUNT] = {"worker", "admin", "cluster"};

const char *pk_role_name(enum pk_role role)
{
	return (unsigned)role < PK_ROLE_COUNT ? pk__role_names[role] : "unknown";
}

int pk_role_parse(const char *name)
{
	for (int i = 0; i < PK_ROLE_COUNT; i++)
		if (strcmp(name, pk__role_names[i]) == 0)
			return i;
	return -1;
}

int pk_child_send(struct pk_child *c, uint16_t type, const void *payload, size_t len)
{
	return pk_chan_send(PK_FD_CONTROL, type, payload, len, NULL, 0);
}

int pk_child_ready(struct pk_child *c)
{
	int rc = pk_child_send(c, PK_MSG_READY, NULL, 0);
	if (rc < 0)
		pk_log_error("child", "cannot report ready", "error=%s", strerror(-rc));
	else
		pk_log_info("child", "ready", NULL);
	return rc;
}

static void pk__walk_close(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

void pk_child_exit(struct pk_child *c, int code)
{
	/* Close every handle so in-kernel state (listeners, connections) goes away in order,
	 * then leave without running the loop again. */
	uv_walk(c->loop, pk__walk_close, NULL);
	uv_run(c->loop, UV_RUN_NOWAIT);
	pk_log_info("child", "exiting", "code=%d", code);
	exit(code);
}

static void pk__grace_expired(uv_timer_t *t)
{
	struct pk_child *c = t->data;
	pk_log_warn("child", "grace period over, exiting with work in flight", NULL);
	pk_child_exit(c, 0);
}

static void pk__begin_drain(struct pk_child *c, uint64_t grace_ms, int now)
{
	if (c->draining && !now)
		return;
	c->draining = 1;
	c->grace_ms = grace_ms;
	if (!now && grace_ms > 0) {
		uv_timer_start(&c->grace_timer, pk__grace_expired, grace_ms, 0);
		uv_unref((uv_handle_t *)&c->grace_timer);
	}
	pk_log_info("child", now ? "stopping" : "draining", "grace_ms=%llu",
	            (unsigned long long)grace_ms);
	if (c->on_drain)
		c->on_drain(c, now);
	else
		pk_child_exit(c, 0);
}

static void pk__on_control(uv_poll_t *p, int status, int events)
{
	struct pk_child *c = p->data;
	static struct pk_msg msg;

	for (;;) {
		int fds[PK_CHAN_MAX_FDS], nfds = PK_CHAN_MAX_FDS;
		int rc = pk_chan_recv(PK_FD_CONTROL, &msg, fds, &nfds);
		if (rc == -EAGAIN)
			return;
		if (rc <= 0) {
			/* The supervisor is gone (or broke the protocol): nobody will tell us to
			 * stop, so drain now and leave. */
			pk_log_warn("child", "control channel closed; draining", "error=%s",
			            rc == 0 ? "eof" : strerror(-rc));
			uv_poll_stop(p);
			c->control_open = 0;
			pk__begin_drain(c, c->cfg.grace_period_ms, 0);
			return;
		}
		for (int i = 0; i < nfds; i++)
			close(fds[i]); /* no control message carries fds today */
		switch (msg.hdr.type) {
		case PK_MSG_DRAIN: {
			struct pk_msg_drain d;
			if (pk_msg_get(&msg, &d, sizeof(d)) < 0)
				d.grace_ms = c->cfg.grace_period_ms;
			pk__begin_drain(c, d.grace_ms, 0);
			break;
		}
		case PK_MSG_STOP:
			pk__begin_drain(c, 0, 1);
			break;
		default:
			if (pk_child_on_message)
				pk_child_on_message(c, msg.hdr.type, msg.payload, msg.hdr.len);
			else
				pk_log_warn("child", "unexpected control message", "type=%s",
				            pk_msg_type_name(msg.hdr.type));
		}
	}
}

static void pk__on_sigterm(uv_signal_t *h, int signum)
{
	struct pk_child *c = h->data;
	pk__begin_drain(c, c->cfg.grace_period_ms, 0);
}

/* The config memfd is shared with siblings; pread keeps its offset untouched. */
static int pk__read_config(char **out)
{
	struct stat st;
	if (fstat(PK_FD_CONFIG, &st) < 0)
		return -errno;
	if (st.st_size <= 0 || st.st_size > PK__CONFIG_MAX)
		return -EINVAL;
	char *text = malloc((size_t)st.st_size + 1);
	if (text == NULL)
		return -ENOMEM;
	size_t off = 0;
	while (off < (size_t)st.st_size) {
		ssize_t n = pread(PK_FD_CONFIG, text + off, (size_t)st.st_size - off, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(text);
			return n < 0 ? -errno : -EIO;
		}
		off += (size_t)n;
	}
	text[off] = '\0';
	*out = text;
	return 0;
}

struct pk__child_args {
	int role, slot, worker_index, nworkers;
	long long generation;
};

static int pk__parse_child_args(int argc, char **argv, struct pk__child_args *a)
{
	long long v;
	a->role = -1;
	a->slot = a->worker_index = -1;
	a->nworkers = 0;
	a->generation = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *val = argv[i + 1];
		if (strcmp(k, "--role") == 0) {
			a->role = pk_role_parse(val);
			continue;
		}
		if (pk_parse_int(val, -1, 1LL << 31, &v) < 0)
			return -EINVAL;
		if (strcmp(k, "--slot") == 0)
			a->slot = (int)v;
		else if (strcmp(k, "--generation") == 0)
			a->generation = v;
		else if (strcmp(k, "--worker-index") == 0)
			a->worker_index = (int)v;
		else if (strcmp(k, "--workers") == 0)
			a->nworkers = (int)v;
		else
			return -EINVAL;
	}
	return a->role < 0 || a->slot < 0 ? -EINVAL : 0;
}

int pk_child_main(int argc, char **argv)
{
	static struct pk_child child;
	struct pk_child *c = &child;
	struct pk__child_args a;
	char err[PK_CONFIG_ERR_MAX];
	char *text = NULL;
	int rc;

	signal(SIGPIPE, SIG_IGN);
	/* Terminal signals go to the whole process group; the supervisor decides. */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGTERM, SIG_IGN); /* until the loop's handler below takes over */
	if (pk__parse_child_args(argc, argv, &a) < 0) {
		fprintf(stderr, "pikod: --role is internal to pikod's supervisor\n");
		exit(PK_EXIT_FATAL_CONFIG);
	}
	c->role = a.role;
	c->slot = a.slot;
	c->generation = (uint32_t)a.generation;
	c->worker_index = a.worker_index;
	c->nworkers = a.nworkers;
	if (c->role == PK_ROLE_WORKER)
		pk_log_set_context("proc=%s slot=%d generation=%u worker=%d", pk_role_name(c->role),
		                   c->slot, c->generation, c->worker_index);
	else
		pk_log_set_context("proc=%s slot=%d generation=%u", pk_role_name(c->role), c->slot,
		                   c->generation);

	err[0] = '\0';
	rc = pk_config_init(&c->cfg);
	if (rc == 0 && (rc = pk__read_config(&text)) < 0)
		snprintf(err, sizeof(err), "reading fd %d: %s", PK_FD_CONFIG, strerror(-rc));
	if (rc == 0)
		rc = pk_config_load_string(&c->cfg, text, "supervisor", err);
	if (rc < 0) {
		pk_log_error("child", "unusable configuration from the supervisor", "error=%s",
		             err);
		exit(PK_EXIT_FATAL_CONFIG);
	}
	free(text);
	close(PK_FD_CONFIG);
	pk_log_setup(pk_log_level_parse(c->cfg.log_level),
	             (const char *const *)c->cfg.log_subsystems.items);

	rc = pk_counters_map(PK_FD_COUNTERS, &c->counters);
	if (rc < 0) {
		pk_log_error("child", "cannot map the counters region", "error=%s", strerror(-rc));
		exit(PK_EXIT_FATAL_CONFIG);
	}

	c->loop = uv_default_loop();
	uv_timer_init(c->loop, &c->grace_timer);
	c->grace_timer.data = c;
	rc = uv_poll_init(c->loop, &c->control, PK_FD_CONTROL);
	if (rc < 0) {
		pk_log_error("child", "no control channel", "error=%s", uv_strerror(rc));
		exit(1);
	}
	c->control.data = c;
	c->control_open = 1;
	/* SIGTERM sent to the whole process group (timeout(1), a shell's kill 0): drain like
	 * the supervisor asked, rather than die with work in flight. */
	uv_signal_init(c->loop, &c->sigterm);
	c->sigterm.data = c;
	uv_signal_start(&c->sigterm, pk__on_sigterm, SIGTERM);
	uv_unref((uv_handle_t *)&c->sigterm);
	uv_poll_start(&c->control, UV_READABLE | UV_DISCONNECT, pk__on_control);

	switch (c->role) {
	case PK_ROLE_WORKER:
		rc = pk_worker_start(c);
		break;
	case PK_ROLE_ADMIN:
		rc = pk_admin_start(c);
		break;
	default:
		rc = pk_cluster_start(c);
		break;
	}
	if (rc < 0) {
		pk_log_error("child", "start failed", "error=%s", strerror(-rc));
		exit(1);
	}
	uv_run(c->loop, UV_RUN_DEFAULT);
	pk_child_exit(c, 0);
}
