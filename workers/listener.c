/* A listening socket a worker stops and starts accepting on (see listener.h). */
#include "workers/listener.h"

#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/resource.h>
#include <unistd.h>

#define PK__LOG "listener"

/* A full worker says so at warn level at most this often; in between, at debug. */
#define PK__WARN_EVERY_MS 60000

enum { PK__LS_OFF, PK__LS_ON, PK__LS_CLOSING };

int pk_listener_fd_high(int fd_limit)
{
	/* Room for what a worker opens besides accepted connections: descriptors passed by a
	 * sibling, the listeners' duplicates, the log. A thirty-second of the limit keeps a
	 * 1024 limit at 976 and a 1,048,576 one at 1,015,792. */
	int reserve = fd_limit / 32 + 16;
	int high = fd_limit - reserve;
	return high < 16 ? 16 : high;
}

static int pk__sync(struct pk_listener *l);
static void pk__probe(uv_timer_t *t);

static void pk__closed(uv_handle_t *h)
{
	struct pk_listener *l = h->data;
	l->state = PK__LS_OFF;
	(void)pk__sync(l); /* resumed while closing */
}

static int pk__open(struct pk_listener *l)
{
	int fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 0);
	int rc;
	if (fd < 0) {
		rc = uv_translate_sys_error(errno);
		if (errno == EMFILE || errno == ENFILE) {
			/* No descriptor for the duplicate either: as if the last accept had been
			 * within the reserve. */
			l->paused |= PK_LISTENER_FDS;
			uv_timer_start(&l->probe, pk__probe, PK_LISTENER_PROBE_MS,
			               PK_LISTENER_PROBE_MS);
		}
		pk_log_error(PK__LOG, "cannot listen again", "listener=%s error=%s", l->name,
		             uv_strerror(rc));
		return rc;
	}
	uv_tcp_init(l->loop, &l->tcp);
	l->tcp.data = l->data;
	rc = uv_tcp_open(&l->tcp, fd);
	if (rc < 0)
		close(fd);
	else
		rc = uv_tcp_nodelay(&l->tcp, 1);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&l->tcp, 4096, l->on_conn);
	if (rc < 0) {
		/* A socket the kernel lets us duplicate but not listen on: nothing to retry. */
		pk_log_error(PK__LOG, "cannot listen again", "listener=%s error=%s", l->name,
		             uv_strerror(rc));
		l->stopped = 1;
		l->tcp.data = l;
		l->state = PK__LS_CLOSING;
		uv_close((uv_handle_t *)&l->tcp, pk__closed);
		return rc;
	}
	l->state = PK__LS_ON;
	return 0;
}

static int pk__sync(struct pk_listener *l)
{
	int want = !l->stopped && l->paused == 0;
	if (want && l->state == PK__LS_OFF) {
		return pk__open(l);
	} else if (!want && l->state == PK__LS_ON) {
		l->state = PK__LS_CLOSING;
		l->tcp.data = l; /* the close callback finds us; on_conn is not called again */
		uv_close((uv_handle_t *)&l->tcp, pk__closed);
	}
	return 0;
}

/* Whether a descriptor below the reserve is free: the kernel hands out the lowest one. */
static int pk__fd_room(const struct pk_listener *l)
{
	int fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	close(fd);
	return fd < l->fd_high;
}

static void pk__probe(uv_timer_t *t)
{
	struct pk_listener *l = t->data;
	if (!(l->paused & PK_LISTENER_FDS) || !pk__fd_room(l))
		return;
	uv_timer_stop(t);
	pk_log_debug(PK__LOG, "accepting again: descriptors are free", "listener=%s", l->name);
	pk_listener_resume(l, PK_LISTENER_FDS);
}

int pk_listener_start(struct pk_listener *l, uv_loop_t *loop, int fd, const char *name,
                      uv_connection_cb on_conn, void *data)
{
	struct rlimit rl;
	*l = (struct pk_listener){.loop = loop,
	                          .on_conn = on_conn,
	                          .data = data,
	                          .name = name,
	                          .fd = fd,
	                          .state = PK__LS_OFF};
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > 1 << 30)
		l->fd_limit = 1 << 30;
	else
		l->fd_limit = (int)rl.rlim_cur;
	l->fd_high = pk_listener_fd_high(l->fd_limit);
	uv_timer_init(loop, &l->probe);
	l->probe.data = l;
	uv_unref((uv_handle_t *)&l->probe);
	return pk__sync(l);
}

void pk_listener_accepted(struct pk_listener *l, uv_stream_t *conn)
{
	uv_os_fd_t fd;
	if (uv_fileno((uv_handle_t *)conn, &fd) < 0 || fd < l->fd_high)
		return;
	uint64_t now = uv_now(l->loop);
	if (l->warned_ms == 0 || now - l->warned_ms >= PK__WARN_EVERY_MS) {
		l->warned_ms = now ? now : 1;
		pk_log_warn(PK__LOG, "not accepting: near the open-file limit",
		            "listener=%s fd=%d fd_limit=%d", l->name, fd, l->fd_limit);
	} else {
		pk_log_debug(PK__LOG, "not accepting: near the open-file limit",
		             "listener=%s fd=%d fd_limit=%d", l->name, fd, l->fd_limit);
	}
	pk_listener_pause(l, PK_LISTENER_FDS);
	uv_timer_start(&l->probe, pk__probe, PK_LISTENER_PROBE_MS, PK_LISTENER_PROBE_MS);
}

void pk_listener_pause(struct pk_listener *l, unsigned why)
{
	l->paused |= why;
	(void)pk__sync(l);
}

void pk_listener_resume(struct pk_listener *l, unsigned why)
{
	l->paused &= ~why;
	(void)pk__sync(l);
}

void pk_listener_stop(struct pk_listener *l)
{
	l->stopped = 1;
	uv_timer_stop(&l->probe);
	(void)pk__sync(l);
	/* For good: let go of the inherited socket too, so that a listener the supervisor
	 * closed (its address changed in a reload) is not kept bound by a draining worker. */
	if (l->fd >= 0) {
		close(l->fd);
		l->fd = -1;
		pk_log_debug(PK__LOG, "stopped accepting for good", "listener=%s", l->name);
	}
}

int pk_listener_on(const struct pk_listener *l)
{
	return l->state == PK__LS_ON;
}
