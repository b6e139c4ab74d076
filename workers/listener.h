/* A worker's listening socket that it can stop and start accepting on.
 *
 * Every worker accepts from the sockets the supervisor bound, which it inherits. It listens
 * on a duplicate of the inherited descriptor, so that stopping (closing the duplicate) leaves
 * the shared accept queue to the siblings, and starting again is a new duplicate. A worker
 * stops accepting for one of several reasons at once; it accepts while none holds.
 *
 * One reason is kept here: descriptors. When an accepted connection's descriptor comes
 * within the reserve of the open-file limit (RLIMIT_NOFILE), the worker stops accepting, so
 * that connections wait in the queue for a sibling, or for this worker once descriptors are
 * free again, instead of being accepted and dropped for want of one. While stopped for it,
 * the worker looks for a free descriptor below the reserve every PK_LISTENER_PROBE_MS. */
#ifndef PK_WORKERS_LISTENER_H
#define PK_WORKERS_LISTENER_H

#include <uv.h>

#define PK_LISTENER_PROBE_MS 100

enum pk_listener_why {
	PK_LISTENER_AFFINITY = 1u << 0, /* a sibling holds the tunnels (proxy.c) */
	PK_LISTENER_FDS = 1u << 1,      /* near the open-file limit (kept here) */
};

struct pk_listener {
	uv_tcp_t tcp; /* on a duplicate of fd while state is not OFF; tcp.data = data */
	uv_timer_t probe;
	uv_loop_t *loop;
	uv_connection_cb on_conn;
	void *data;
	const char *name; /* "proxy", "upstream": the log's listener field */
	int fd;           /* the inherited listening socket; closed only by pk_listener_stop */
	int state;        /* PK__LS_* in listener.c */
	int stopped;      /* for good: draining */
	unsigned paused;  /* pk_listener_why bits */
	int fd_high;      /* stop accepting once an accepted descriptor is this or above */
	int fd_limit;
	uint64_t warned_ms;
};

/* Starts accepting on a duplicate of fd, with on_conn called with the tcp handle whose data
 * is data. The open-file limit is read now. Sets TCP_NODELAY on the listening socket:
 * Linux copies it into every accepted socket, which saves a setsockopt per connection
 * (each system call costs about 1 us on the benchmark machine). 0 or a libuv error. */
int pk_listener_start(struct pk_listener *l, uv_loop_t *loop, int fd, const char *name,
                      uv_connection_cb on_conn, void *data);

/* To call after each uv_accept that succeeded: stops accepting when conn's descriptor is
 * within the reserve. */
void pk_listener_accepted(struct pk_listener *l, uv_stream_t *conn);

void pk_listener_pause(struct pk_listener *l, unsigned why);
void pk_listener_resume(struct pk_listener *l, unsigned why);

/* Stops accepting for good (draining), and closes the inherited socket. */
void pk_listener_stop(struct pk_listener *l);

/* 1 while a duplicate is listening. */
int pk_listener_on(const struct pk_listener *l);

/* The descriptor number at and above which accepting stops, for an open-file limit. */
int pk_listener_fd_high(int fd_limit);

#endif
