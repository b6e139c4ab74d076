/* piko: the agent (piko agent http|tcp|start) and the forwarder (piko forward tcp|start).
 *
 * One libuv loop runs everything: one agent session per listener, one listening socket per
 * forwarder. SIGTERM/SIGINT stop gracefully within --grace-period (a second signal stops at
 * once). Exit codes: 0 clean stop, 1 runtime failure (the server refused the registration,
 * a forwarder cannot listen), 2 bad usage or configuration. See docs/piko.md. */
#include "cli/piko_agent.h"
#include "cli/piko_conf.h"
#include "cli/piko_fwd.h"
#include "cli/piko_stream.h"
#include "common/log.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK__LOG "piko"

static struct {
	uv_loop_t *loop;
	struct pk_conf conf;
	struct pk_agent *agents[PK_CONF_MAX_ITEMS];
	struct pk_fwd *fwds[PK_CONF_MAX_ITEMS];
	unsigned n;       /* agents or forwarders running */
	unsigned stopped; /* of those, stopped */
	int exit_code;
	int stopping;
	uv_signal_t sigterm, sigint;
	uv_timer_t grace;
	uv_prepare_t log_flush;
} M;

/* The agent logs a line per request: its records are gathered during a loop turn and
 * written together just before the loop waits again. This handle is started first and never
 * stopped; libuv (1.44) runs prepare handles started later, such as the sessions' frame
 * flushes, before it, so answers leave before their log lines. Were that order to change,
 * only the order of those two writes would. */
static void pk__log_flush_cb(uv_prepare_t *p)
{
	pk_log_flush();
}

static void pk__all_stopped(void)
{
	uv_close((uv_handle_t *)&M.sigterm, NULL);
	uv_close((uv_handle_t *)&M.sigint, NULL);
	uv_close((uv_handle_t *)&M.grace, NULL);
	if (M.conf.mode == PK_CONF_AGENT)
		uv_close((uv_handle_t *)&M.log_flush, NULL);
	for (unsigned i = 0; i < M.n; i++)
		if (M.agents[i])
			pk_agent_free(M.agents[i]);
	pk_strm_close_all();
	pk_log_info(PK__LOG, "stopped", "exit_code=%d", M.exit_code);
}

static void pk__abort_all(void)
{
	for (unsigned i = 0; i < M.n; i++) {
		if (M.agents[i])
			pk_agent_abort(M.agents[i]);
		if (M.fwds[i])
			pk_fwd_abort(M.fwds[i]);
	}
}

static void pk__stopped_one(void)
{
	if (++M.stopped == M.n)
		pk__all_stopped();
}

static void pk__agent_stopped(struct pk_agent *a)
{
	(void)a;
	pk__stopped_one();
}

static void pk__fwd_stopped(struct pk_fwd *f)
{
	(void)f;
	pk__stopped_one();
}

static void pk__fatal(struct pk_agent *a, int status, const char *msg)
{
	(void)a;
	fprintf(stderr, "piko: the server refused the registration (status %d): %s\n", status, msg);
	M.exit_code = 1;
	M.stopping = 1;
	pk__abort_all();
}

static const struct pk_agent_hooks pk__agent_hooks = {
    .on_fatal = pk__fatal,
    .on_stopped = pk__agent_stopped,
};

static const struct pk_fwd_hooks pk__fwd_hooks = {
    .on_stopped = pk__fwd_stopped,
};

static void pk__grace_over(uv_timer_t *t)
{
	(void)t;
	pk_log_warn(PK__LOG, "grace period over, stopping now", "grace_ms=%llu",
	            (unsigned long long)M.conf.grace_ms);
	pk__abort_all();
}

static void pk__on_signal(uv_signal_t *s, int signum)
{
	(void)s;
	if (M.stopping) {
		pk_log_warn(PK__LOG, "second signal, stopping now", "signal=%d", signum);
		pk__abort_all();
		return;
	}
	M.stopping = 1;
	pk_log_info(PK__LOG, "stopping", "signal=%d grace_ms=%llu", signum,
	            (unsigned long long)M.conf.grace_ms);
	uv_timer_start(&M.grace, pk__grace_over, M.conf.grace_ms, 0);
	for (unsigned i = 0; i < M.n; i++) {
		if (M.agents[i])
			pk_agent_stop(M.agents[i]);
		if (M.fwds[i])
			pk_fwd_stop(M.fwds[i]);
	}
}

static void pk__setup_log(void)
{
	static char subs[sizeof(M.conf.log_subsystems)];
	static const char *list[32];
	size_t n = 0;
	snprintf(subs, sizeof(subs), "%s", M.conf.log_subsystems);
	for (char *save = NULL, *t = strtok_r(subs, ",", &save); t && n < 31;
	     t = strtok_r(NULL, ",", &save))
		list[n++] = t;
	list[n] = NULL;
	pk_log_setup((enum pk_log_level)M.conf.log_level, n ? list : NULL);
}

static int pk__start(void)
{
	if (M.conf.mode == PK_CONF_AGENT) {
		for (unsigned i = 0; i < M.conf.n_listeners; i++) {
			if (pk_agent_new(M.loop, &M.conf, &M.conf.listeners[i], &pk__agent_hooks,
			                 &M.agents[i]) < 0)
				return -1;
			M.n++;
		}
		return 0;
	}
	int failed = 0;
	for (unsigned i = 0; i < M.conf.n_forwarders; i++) {
		int r =
		    pk_fwd_new(M.loop, &M.conf, &M.conf.forwarders[i], &pk__fwd_hooks, &M.fwds[i]);
		if (r < 0) {
			fprintf(stderr, "piko: cannot listen on %s: %s\n",
			        M.conf.forwarders[i].addr, uv_strerror(r));
			failed = 1;
			break;
		}
		M.n++;
	}
	return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
	int r = pk_conf_parse(&M.conf, argc, argv);
	if (r == PK_CONF_HELP || r == PK_CONF_VERSION)
		return 0;
	if (r != PK_CONF_RUN) {
		pk_conf_free(&M.conf);
		return 2;
	}
	pk__setup_log();
	signal(SIGPIPE, SIG_IGN);
	/* Write queues come and go in 64 KiB pieces under bulk transfer: keep freed heap
	 * instead of handing it back and faulting it in again on the next burst. What piko
	 * keeps is bounded by its queue limits. */
	mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
	M.loop = uv_default_loop();
	uv_signal_init(M.loop, &M.sigterm);
	uv_signal_init(M.loop, &M.sigint);
	uv_timer_init(M.loop, &M.grace);
	uv_signal_start(&M.sigterm, pk__on_signal, SIGTERM);
	uv_signal_start(&M.sigint, pk__on_signal, SIGINT);
	if (M.conf.mode == PK_CONF_AGENT) {
		pk_log_batch(1);
		uv_prepare_init(M.loop, &M.log_flush);
		uv_prepare_start(&M.log_flush, pk__log_flush_cb);
		uv_unref((uv_handle_t *)&M.log_flush);
	}
	pk_log_info(PK__LOG, "starting", "version=%s mode=%s url=%s", PK_VERSION,
	            M.conf.mode == PK_CONF_AGENT ? "agent" : "forward", M.conf.connect.url);
	if (pk__start() < 0) {
		M.exit_code = 1;
		M.stopping = 1;
		if (M.n == 0) {
			M.n = 0;
			pk__all_stopped();
		} else {
			pk__abort_all();
		}
	}
	uv_run(M.loop, UV_RUN_DEFAULT);
	for (unsigned i = 0; i < PK_CONF_MAX_ITEMS; i++)
		if (M.fwds[i])
			pk_fwd_free(M.fwds[i]);
	uv_loop_close(M.loop);
	pk_conf_free(&M.conf);
	pk_log_flush();
	return M.exit_code;
}
