/* What every child process (worker, admin, cluster) shares: its start-up from the fixed fds
 * the supervisor set up before exec, its libuv loop, and its control channel.
 *
 * A child is started as `pikod --role ROLE --slot N --generation G [--worker-index I]
 * [--workers N]` with these descriptors already in place:
 */
#ifndef PK_CHILD_H
#define PK_CHILD_H

#include "daemon/config.h"

#include <stdint.h>
#include <uv.h>

#define PK_FD_CONTROL    3 /* SEQPACKET control channel to the supervisor */
#define PK_FD_CONFIG     4 /* memfd: the effective configuration (libconfig text) */
#define PK_FD_COUNTERS   5 /* memfd: the shared counters region */
#define PK_FD_PROXY      6 /* listeners, present only for roles that serve them */
#define PK_FD_UPSTREAM   7
#define PK_FD_ADMIN      8
#define PK_FD_CLUSTER    9
#define PK_FD_FIRST_FREE 10

/* Exit code for "the configuration handed to me is unusable": the supervisor does not
 * respawn a child that exits with it (nginx's "fatal, don't respawn"). */
#define PK_EXIT_FATAL_CONFIG 2

enum pk_role { PK_ROLE_WORKER = 0, PK_ROLE_ADMIN, PK_ROLE_CLUSTER, PK_ROLE_COUNT };

const char *pk_role_name(enum pk_role role);
int pk_role_parse(const char *name); /* -1 if unknown */

struct pk_counters;

struct pk_child {
	uv_loop_t *loop;
	enum pk_role role;
	int slot; /* index in the supervisor's process table */
	uint32_t generation;
	int worker_index; /* workers: 0..nworkers-1 */
	int nworkers;     /* workers in this generation */
	struct pk_config cfg;
	struct pk_counters *counters;

	uv_poll_t control;
	int control_open;
	int draining;
	uint64_t grace_ms;
	uv_timer_t grace_timer;
	uv_signal_t sigterm;

	/* Set by the role before pk_child_ready(): called once when the supervisor asks to
	 * drain (stop accepting, finish in-flight work, then call pk_child_exit) or when the
	 * control channel breaks (the supervisor is gone). `now` = stop at once. */
	void (*on_drain)(struct pk_child *c, int now);
	void *role_data;
};

/* Entry point for `pikod --role ...`; never returns. */
int pk_child_main(int argc, char **argv) __attribute__((noreturn));

/* Tells the supervisor this child is serving. 0 or -errno. */
int pk_child_ready(struct pk_child *c);

/* Sends a message to the supervisor. */
int pk_child_send(struct pk_child *c, uint16_t type, const void *payload, size_t len);

/* Handler for messages other than drain/stop (admin uses it for reload results). */
extern void (*pk_child_on_message)(struct pk_child *c, uint16_t type, const void *payload,
                                   size_t len);

/* Ends the process after the loop has closed its handles. */
void pk_child_exit(struct pk_child *c, int code) __attribute__((noreturn));

/* Role entry points: set up serving on c->loop, call pk_child_ready() when serving.
 * Return 0, or a negative errno to exit 1 (or PK_EXIT_FATAL_CONFIG via pk_child_exit). */
int pk_worker_start(struct pk_child *c);
int pk_admin_start(struct pk_child *c);
int pk_cluster_start(struct pk_child *c);

#endif
