/* Tests for workers/listener: stopping and starting to accept, for a reason or for want of
 * descriptors, on real loopback sockets and a real libuv loop. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workers/listener.h"

#define MAX_CONNS 512

static uv_loop_t loop;
static int lfd = -1;
static struct sockaddr_in addr;
static struct pk_listener lis;
static uv_tcp_t *accepted[MAX_CONNS];
static int naccepted;
static int close_at_once; /* close each connection as soon as it is accepted */
static int max_fd_seen;
static uv_timer_t keep; /* a worker's loop always has handles of its own (its polls) */

static void noop(uv_timer_t *t)
{
	(void)t;
}

static void setup(void)
{
	socklen_t sl = sizeof(addr);
	cr_assert_eq(uv_loop_init(&loop), 0);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	cr_assert_eq(listen(lfd, 1024), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&addr, &sl), 0);
	naccepted = 0;
	close_at_once = 0;
	max_fd_seen = -1;
	uv_timer_init(&loop, &keep);
	uv_timer_start(&keep, noop, 1000, 1000);
}

TestSuite(listener, .init = setup, .timeout = 30);

static void on_conn(uv_stream_t *l, int status)
{
	cr_assert_eq(status, 0);
	cr_assert_eq(l->data, &loop, "the handle carries the caller's data");
	uv_tcp_t *t = malloc(sizeof(*t));
	cr_assert_not_null(t);
	uv_tcp_init(&loop, t);
	cr_assert_eq(uv_accept(l, (uv_stream_t *)t), 0);
	uv_os_fd_t fd;
	cr_assert_eq(uv_fileno((uv_handle_t *)t, &fd), 0);
	if (fd > max_fd_seen)
		max_fd_seen = fd;
	pk_listener_accepted(&lis, (uv_stream_t *)t);
	cr_assert_lt(naccepted, MAX_CONNS);
	if (close_at_once) {
		uv_close((uv_handle_t *)t, (uv_close_cb)free);
		accepted[naccepted++] = NULL;
	} else {
		accepted[naccepted++] = t;
	}
}

static int dial(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0, "connect: %s",
	             strerror(errno));
	return fd;
}

/* Runs the loop until cond() holds; fails after 10 s. */
static void run_until(int (*cond)(void), const char *what)
{
	uint64_t deadline = uv_hrtime() + 10ull * 1000 * 1000 * 1000;
	while (!cond()) {
		cr_assert_lt(uv_hrtime(), deadline, "timed out waiting for %s", what);
		uv_run(&loop, UV_RUN_ONCE); /* wakes for an event, or keep's tick */
	}
}

static int want_accepted;
static int reached_count(void)
{
	return naccepted >= want_accepted;
}
static int is_off(void)
{
	return !pk_listener_on(&lis) && lis.state == 0;
}
static int is_on(void)
{
	return pk_listener_on(&lis);
}

/* A client socket the server has not closed or reset: nothing to read yet. */
static void assert_waiting(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
	          "client fd %d: recv gave %zd (%s), not a connection still waiting", fd, n,
	          n < 0 ? strerror(errno) : "data or EOF");
}

Test(listener, fd_high_keeps_a_reserve)
{
	cr_assert_eq(pk_listener_fd_high(1024), 976);
	cr_assert_eq(pk_listener_fd_high(256), 232);
	cr_assert_eq(pk_listener_fd_high(1048576), 1015792);
	cr_assert_eq(pk_listener_fd_high(20), 16, "never below 16");
	for (int lim = 64; lim < 5000000; lim = lim * 3 / 2) {
		int h = pk_listener_fd_high(lim);
		cr_assert(h < lim && h > lim - lim / 16 - 32, "limit %d: high %d", lim, h);
	}
}

Test(listener, accepts_and_hands_its_data_to_the_callback)
{
	cr_assert_eq(pk_listener_start(&lis, &loop, lfd, "test", on_conn, &loop), 0);
	int c = dial();
	want_accepted = 1;
	run_until(reached_count, "one connection");
	cr_assert_neq(max_fd_seen, lfd, "accepted on a socket of its own");
	close(c);
}

Test(listener, accepted_sockets_have_nodelay_without_a_call_each)
{
	int one = 0;
	socklen_t ol = sizeof(one);
	cr_assert_eq(getsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, &ol), 0);
	cr_assert_eq(one, 0, "the test's listening socket starts without it");
	cr_assert_eq(pk_listener_start(&lis, &loop, lfd, "test", on_conn, &loop), 0);
	int c = dial();
	want_accepted = 1;
	run_until(reached_count, "one connection");
	uv_os_fd_t fd;
	cr_assert_eq(uv_fileno((uv_handle_t *)accepted[0], &fd), 0);
	int on = 0;
	socklen_t len = sizeof(on);
	cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
	cr_assert_eq(on, 1, "an accepted connection sends small writes at once (no Nagle)");
	close(c);
}

Test(listener, reasons_stop_and_start_accepting_independently)
{
	cr_assert_eq(pk_listener_start(&lis, &loop, lfd, "test", on_conn, &loop), 0);
	pk_listener_pause(&lis, PK_LISTENER_AFFINITY);
	run_until(is_off, "the duplicate closed");
	int c1 = dial();
	for (int i = 0; i < 20; i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	cr_assert_eq(naccepted, 0, "nothing accepted while paused");
	assert_waiting(c1);

	pk_listener_pause(&lis, PK_LISTENER_FDS);
	pk_listener_resume(&lis, PK_LISTENER_AFFINITY);
	for (int i = 0; i < 20; i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	cr_assert_eq(naccepted, 0, "still paused for the other reason");
	cr_assert(!pk_listener_on(&lis));

	pk_listener_resume(&lis, PK_LISTENER_FDS);
	want_accepted = 1;
	run_until(reached_count, "the waiting connection accepted");
	cr_assert(pk_listener_on(&lis));

	/* Paused and resumed before the close callback ran: listening again. */
	pk_listener_pause(&lis, PK_LISTENER_AFFINITY);
	pk_listener_resume(&lis, PK_LISTENER_AFFINITY);
	run_until(is_on, "listening again");
	int c2 = dial();
	want_accepted = 2;
	run_until(reached_count, "a new connection accepted");

	/* Stopped for good: the inherited socket is let go too, so the port refuses. */
	pk_listener_stop(&lis);
	pk_listener_resume(&lis, PK_LISTENER_AFFINITY | PK_LISTENER_FDS);
	run_until(is_off, "stopped for good");
	cr_assert_eq(fcntl(lfd, F_GETFD), -1, "the inherited socket is closed");
	cr_assert_eq(errno, EBADF);
	int c3 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(c3, (struct sockaddr *)&addr, sizeof(addr)), -1);
	cr_assert_eq(errno, ECONNREFUSED, "connect: %s", strerror(errno));
	for (int i = 0; i < 20; i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	cr_assert_eq(naccepted, 2, "nothing accepted once stopped");
	close(c1);
	close(c2);
	close(c3);
}

Test(listener, stops_short_of_the_open_file_limit_and_loses_no_connection)
{
	struct rlimit rl;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = 256;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	int high = pk_listener_fd_high(256);

	cr_assert_eq(pk_listener_start(&lis, &loop, lfd, "test", on_conn, &loop), 0);
	cr_assert_eq(lis.fd_high, high);
	enum { N = 150 };
	int clients[N];
	for (int i = 0; i < N; i++)
		clients[i] = dial();

	/* Client sockets take about the first 150 descriptors; the accepted ones climb to the
	 * reserve, and then accepting stops with the rest still queued. */
	want_accepted = 1;
	run_until(reached_count, "the first connection");
	run_until(is_off, "accepting stopped");
	int first = naccepted;
	cr_assert_lt(first, N, "accepted %d of %d under a limit of 256", first, N);
	cr_assert_eq(max_fd_seen, high, "stopped at the first descriptor in the reserve");
	for (int i = 0; i < 100; i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	cr_assert_eq(naccepted, first, "nothing accepted while out of descriptors");
	for (int i = 0; i < N; i++)
		assert_waiting(clients[i]);

	/* Descriptors come free: the probe starts accepting again and the queued connections
	 * are all taken, none dropped. */
	for (int i = 0; i < first; i++)
		uv_close((uv_handle_t *)accepted[i], (uv_close_cb)free);
	close_at_once = 1;
	want_accepted = N;
	run_until(reached_count, "every queued connection accepted");
	cr_assert_eq(naccepted, N);
	cr_assert_lt(max_fd_seen, 256);
	for (int i = 0; i < N; i++)
		close(clients[i]);
}
