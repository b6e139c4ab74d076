/* Tests for workers/handoff: client sockets passed between workers over DGRAM sockets. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tmpdir.h"
#include "common/channel.h"
#include "workers/handoff.h"

static char tdir[64];
static char run_dir[128];

static void setup(void)
{
	strcpy(tdir, "/tmp/pk-ho-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir));
	cr_assert_eq(pk_handoff_prepare_dir(tdir, run_dir, sizeof(run_dir)), 0);
}

static void teardown(void)
{
	rm_tree(tdir);
}

TestSuite(handoff, .init = setup, .fini = teardown, .timeout = 20);

/* Open descriptors of this process (the directory stream's own fd included, every time). */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	cr_assert_not_null(d);
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

/* A connected TCP pair on loopback: *client as a client would hold it, *server as accept
 * gave it to a worker. */
static void tcp_pair(int *client, int *server)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(l, 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(l, 1), 0);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
	*client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(*client, 0);
	cr_assert_eq(connect(*client, (struct sockaddr *)&sa, sizeof(sa)), 0);
	*server = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(*server, 0);
	close(l);
}

static void read_full(int fd, void *buf, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = read(fd, (char *)buf + off, len - off);
		cr_assert_gt(n, 0, "read: %zd (%s)", n, strerror(errno));
		off += (size_t)n;
	}
}

static struct pk_handoff make_h(void)
{
	struct pk_handoff h;

	memset(&h, 0, sizeof(h));
	h.from_slot = 3;
	h.tunnel_id = 0x1122334455667788ull;
	h.flags = PK_HANDOFF_F_FORWARDED;
	snprintf(h.client_addr, sizeof(h.client_addr), "127.0.0.1:54321");
	return h;
}

static int listen_slot(int slot)
{
	int fd = -1, rc = pk_handoff_listen(run_dir, slot, &fd);

	cr_assert_eq(rc, 0, "listen slot %d: %s", slot, strerror(-rc));
	return fd;
}

static struct pk_handoff_sender sender(void)
{
	struct pk_handoff_sender tx;

	cr_assert_eq(pk_handoff_sender(&tx), 0);
	return tx;
}

/* A bare datagram socket, for writing messages pk_handoff_send would never make. */
static int raw_sender(void)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	return fd;
}

static char *pattern(size_t len)
{
	char *b = malloc(len);

	cr_assert_not_null(b);
	for (size_t i = 0; i < len; i++)
		b[i] = (char)(i * 7 + i / 251);
	return b;
}

/* Sends bytes of length len and checks they come back intact with the header fields. */
static void round_trip_bytes(size_t len)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), c, s, got_fd = -1;
	struct pk_handoff h = make_h(), got;
	char *data = pattern(len), *bytes = NULL;
	size_t blen = 0;
	int before;

	tcp_pair(&c, &s);
	before = count_fds();
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, s, data, len), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_eq(blen, len);
	cr_assert_eq(got.bytes_len, len);
	cr_assert_eq(memcmp(bytes, data, len), 0);
	cr_assert_eq(got.tunnel_id, h.tunnel_id);
	close(got_fd);
	pk_handoff_sender_close(&tx);
	cr_assert_eq(count_fds(), before, "a memfd or a client fd leaked");
	free(bytes);
	free(data);
	close(c);
	close(s);
	close(rx);
}

Test(handoff, live_tcp_connection_works_on_the_receiving_side)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), c, s, got_fd = -1;
	struct pk_handoff h = make_h(), got;
	static const char head[] = "GET / HTTP/1.1\r\nHost: api.example\r\n\r\n";
	char *bytes = NULL, buf[5];
	size_t blen = 0;

	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), -EAGAIN);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, s, head, sizeof(head) - 1), 0);
	close(s); /* the sender forgets the connection */

	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_eq(got.version, PK_HANDOFF_VERSION);
	cr_assert_eq(got.from_slot, 3);
	cr_assert_eq(got.tunnel_id, 0x1122334455667788ull);
	cr_assert_eq(got.flags, PK_HANDOFF_F_FORWARDED);
	cr_assert_str_eq(got.client_addr, "127.0.0.1:54321");
	cr_assert_eq(blen, sizeof(head) - 1);
	cr_assert_eq(memcmp(bytes, head, blen), 0);
	cr_assert(fcntl(got_fd, F_GETFD) & FD_CLOEXEC);

	cr_assert_eq(write(c, "hello", 5), 5);
	read_full(got_fd, buf, 5);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	cr_assert_eq(write(got_fd, "world", 5), 5);
	read_full(c, buf, 5);
	cr_assert_eq(memcmp(buf, "world", 5), 0);
	close(got_fd);
	cr_assert_eq(read(c, buf, 1), 0, "closing the last copy ends the connection");
	free(bytes);
	close(c);
	pk_handoff_sender_close(&tx);
}

Test(handoff, no_bytes_gives_null_buffer)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), c, s, got_fd = -1;
	struct pk_handoff h = make_h(), got;
	char *bytes = (char *)&h;
	size_t blen = 99;

	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, s, NULL, 0), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_null(bytes);
	cr_assert_eq(blen, 0);
	close(got_fd);
	pk_handoff_sender_close(&tx);
}

Test(handoff, inline_bytes_up_to_the_limit_arrive_intact)
{
	round_trip_bytes(PK_HANDOFF_INLINE);
}

Test(handoff, larger_bytes_arrive_intact_through_a_memfd)
{
	round_trip_bytes(PK_HANDOFF_INLINE + 1);
}

Test(handoff, maximum_bytes_arrive_intact)
{
	round_trip_bytes(PK_HANDOFF_MAX_BYTES);
}

Test(handoff, over_limit_bytes_are_refused)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), c, s, got_fd;
	struct pk_handoff h = make_h(), got;
	char *data = pattern(PK_HANDOFF_MAX_BYTES + 1), *bytes;
	size_t blen;

	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, s, data, PK_HANDOFF_MAX_BYTES + 1),
	             -EMSGSIZE);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), -EAGAIN);
	free(data);
	pk_handoff_sender_close(&tx);
}

Test(handoff, client_addr_is_terminated_by_the_sender)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), c, s, got_fd = -1;
	struct pk_handoff h = make_h(), got;
	char *bytes;
	size_t blen;

	memset(h.client_addr, 'x', sizeof(h.client_addr));
	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, s, "a", 1), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_eq(strlen(got.client_addr), sizeof(got.client_addr) - 1);
	close(got_fd);
	free(bytes);
	pk_handoff_sender_close(&tx);
}

Test(handoff, sending_to_a_slot_without_a_socket_file_fails)
{
	struct pk_handoff_sender tx = sender();
	int c, s;
	struct pk_handoff h = make_h();

	tcp_pair(&c, &s);
	int rc = pk_handoff_send(&tx, run_dir, 7, &h, s, "x", 1);
	cr_assert(rc == -ENOENT || rc == -ECONNREFUSED, "rc %d", rc);
	cr_assert_eq(write(s, "y", 1), 1, "the caller still owns a working client fd");
	pk_handoff_sender_close(&tx);
}

Test(handoff, sending_to_a_stale_socket_file_is_refused)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(5), c, s;
	struct pk_handoff h = make_h();

	close(rx); /* the worker died; its file stays */
	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 5, &h, s, "x", 1), -ECONNREFUSED);
	pk_handoff_sender_close(&tx);
}

Test(handoff, one_connected_socket_per_slot_is_reused)
{
	struct pk_handoff_sender tx = sender();
	int rx0 = listen_slot(0), rx1 = listen_slot(1), c, s, got_fd, before;
	struct pk_handoff h = make_h(), got;
	char *bytes;
	size_t blen;

	tcp_pair(&c, &s);
	before = count_fds();
	for (int i = 0; i < 6; i++) {
		int rx = i % 2 ? rx1 : rx0;
		cr_assert_eq(pk_handoff_send(&tx, run_dir, i % 2, &h, s, "x", 1), 0);
		cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
		close(got_fd);
		free(bytes);
	}
	cr_assert_eq(count_fds(), before + 2, "one socket for each of the two slots");
	pk_handoff_sender_close(&tx);
	cr_assert_eq(count_fds(), before);
}

Test(handoff, a_worker_respawned_in_a_slot_gets_the_next_handoff)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(3), c, s, got_fd;
	struct pk_handoff h = make_h(), got;
	char *bytes;
	size_t blen;

	tcp_pair(&c, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 3, &h, s, "a", 1), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	close(got_fd);
	free(bytes);
	close(rx); /* the worker died; the sender is still connected to its socket */
	int before = count_fds();
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 3, &h, s, "b", 1), -ECONNREFUSED);
	cr_assert_eq(count_fds(), before - 1, "the dead worker's socket was let go");
	cr_assert_eq(write(s, "y", 1), 1, "the caller still owns a working client fd");
	rx = listen_slot(3); /* its successor re-binds the path */
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 3, &h, s, "c", 1), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_eq(blen, 1);
	cr_assert_eq(bytes[0], 'c');
	close(got_fd);
	free(bytes);
	close(rx);
	/* Respawned between two sends, with no failed send in between: still found. */
	rx = listen_slot(3);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 3, &h, s, "d", 1), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	cr_assert_eq(bytes[0], 'd');
	close(got_fd);
	free(bytes);
	pk_handoff_sender_close(&tx);
}

Test(handoff, full_queue_gives_eagain_without_blocking)
{
	struct pk_handoff_sender tx = sender();
	int rx = listen_slot(0), sp[2], rc = 0, sent = 0;
	struct pk_handoff h = make_h(), got;
	char *bytes;
	size_t blen;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	int before = count_fds();
	/* The suite timeout turns a blocking send into a failure instead of a hang. */
	while (sent < 100000 && (rc = pk_handoff_send(&tx, run_dir, 0, &h, sp[0], "q", 1)) == 0)
		sent++;
	cr_assert_eq(rc, -EAGAIN, "rc %d after %d sends", rc, sent);
	cr_assert_gt(sent, 0);

	int received = 0, got_fd;
	while ((rc = pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen)) == 1) {
		received++;
		cr_assert_eq(blen, 1);
		close(got_fd);
		free(bytes);
	}
	cr_assert_eq(rc, -EAGAIN);
	cr_assert_eq(received, sent, "every queued handoff arrives");
	cr_assert_eq(count_fds(), before + 1, "nothing new but the socket connected to slot 0");
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 0, &h, sp[0], "q", 1), 0, "room again");
	pk_handoff_sender_close(&tx);
}

/* ---- malformed messages: dropped with every fd they carried ---- */

static void send_raw(const void *payload, size_t len, const int *fds, int nfds)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int tx = raw_sender();

	cr_assert_eq(pk_handoff_path(run_dir, 0, sa.sun_path, sizeof(sa.sun_path)), 0);
	cr_assert_eq(pk_chan_sendto(tx, &sa, sizeof(sa), PK_MSG_HANDOFF, payload, len, fds, nfds),
	             0);
	close(tx);
}

static void expect_rejected(int rx, int before)
{
	struct pk_handoff got;
	char *bytes = (char *)&got;
	size_t blen = 1;
	int got_fd = 0;

	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), -EPROTO);
	cr_assert_eq(got_fd, -1);
	cr_assert_null(bytes);
	cr_assert_eq(blen, 0);
	cr_assert_eq(count_fds(), before, "the rejected message's fds were closed");
}

Test(handoff, non_socket_client_fd_is_rejected_and_closed)
{
	int rx = listen_slot(0), p[2];
	struct pk_handoff h = make_h();
	char c;

	h.version = PK_HANDOFF_VERSION;
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	send_raw(&h, sizeof(h), &p[1], 1);
	close(p[1]);
	int before = count_fds();
	expect_rejected(rx, before);
	cr_assert_eq(read(p[0], &c, 1), 0, "the receiver's copy of the write end is closed");
}

Test(handoff, wrong_version_is_rejected_and_closed)
{
	int rx = listen_slot(0), sp[2];
	struct pk_handoff h = make_h();
	char c;

	h.version = PK_HANDOFF_VERSION + 1;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	send_raw(&h, sizeof(h), &sp[0], 1);
	close(sp[0]);
	int before = count_fds();
	expect_rejected(rx, before);
	cr_assert_eq(read(sp[1], &c, 1), 0, "no copy of the client socket is left open");
}

Test(handoff, missing_client_fd_is_rejected)
{
	int rx = listen_slot(0);
	struct pk_handoff h = make_h();

	h.version = PK_HANDOFF_VERSION;
	send_raw(&h, sizeof(h), NULL, 0);
	expect_rejected(rx, count_fds());
}

Test(handoff, extra_fds_are_rejected_and_closed)
{
	int rx = listen_slot(0), sp[2], p[2];
	struct pk_handoff h = make_h();
	char c;

	h.version = PK_HANDOFF_VERSION;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	int fds[2] = {sp[0], p[1]};
	send_raw(&h, sizeof(h), fds, 2);
	close(sp[0]);
	close(p[1]);
	int before = count_fds();
	expect_rejected(rx, before);
	cr_assert_eq(read(p[0], &c, 1), 0);
	cr_assert_eq(read(sp[1], &c, 1), 0);
}

Test(handoff, inline_length_mismatch_is_rejected)
{
	int rx = listen_slot(0), sp[2];
	struct {
		struct pk_handoff h;
		char b[4];
	} m = {make_h(), "abc"};

	m.h.version = PK_HANDOFF_VERSION;
	m.h.bytes_len = 10; /* carries 4 */
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	send_raw(&m, sizeof(m), &sp[0], 1);
	close(sp[0]);
	expect_rejected(rx, count_fds());
}

Test(handoff, memfd_of_the_wrong_size_is_rejected_and_closed)
{
	int rx = listen_slot(0), sp[2];
	struct pk_handoff h = make_h();
	int mfd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	cr_assert_geq(mfd, 0);
	cr_assert_eq(write(mfd, "short", 5), 5);
	cr_assert_eq(
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
	h.version = PK_HANDOFF_VERSION;
	h.bytes_len = PK_HANDOFF_INLINE + 100;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	int fds[2] = {sp[0], mfd};
	send_raw(&h, sizeof(h), fds, 2);
	close(sp[0]);
	close(mfd);
	expect_rejected(rx, count_fds());
}

Test(handoff, unsealed_memfd_is_rejected)
{
	int rx = listen_slot(0), sp[2];
	struct pk_handoff h = make_h();
	int mfd = memfd_create("t", MFD_CLOEXEC);
	size_t len = PK_HANDOFF_INLINE + 1;

	cr_assert_geq(mfd, 0);
	cr_assert_eq(ftruncate(mfd, (off_t)len), 0);
	h.version = PK_HANDOFF_VERSION;
	h.bytes_len = (uint32_t)len;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	int fds[2] = {sp[0], mfd};
	send_raw(&h, sizeof(h), fds, 2);
	close(sp[0]);
	close(mfd);
	expect_rejected(rx, count_fds());
}

Test(handoff, oversized_datagram_is_rejected)
{
	int rx = listen_slot(0), tx = raw_sender(), sp[2];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t big = sizeof(struct pk_msg) + 16; /* more than any channel message */
	char *junk = calloc(1, big);
	struct iovec iov = {junk, big};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct msghdr mh = {.msg_name = &sa,
	                    .msg_namelen = sizeof(sa),
	                    .msg_iov = &iov,
	                    .msg_iovlen = 1,
	                    .msg_control = ctl.buf,
	                    .msg_controllen = sizeof(ctl.buf)};

	cr_assert_not_null(junk);
	cr_assert_eq(pk_handoff_path(run_dir, 0, sa.sun_path, sizeof(sa.sun_path)), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	memset(&ctl, 0, sizeof(ctl));
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &sp[0], sizeof(int));
	cr_assert_eq(sendmsg(tx, &mh, 0), (ssize_t)big);
	close(sp[0]);
	expect_rejected(rx, count_fds());
	char c;
	cr_assert_eq(read(sp[1], &c, 1), 0);
	free(junk);
}

/* ---- paths and sockets ---- */

Test(handoff, socket_and_dir_permissions)
{
	int rx = listen_slot(4);
	char path[128];
	struct stat st;

	cr_assert_eq(stat(run_dir, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
	cr_assert_eq(pk_handoff_path(run_dir, 4, path, sizeof(path)), 0);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0600);
	cr_assert(fcntl(rx, F_GETFD) & FD_CLOEXEC);
	cr_assert(fcntl(rx, F_GETFL) & O_NONBLOCK);
	cr_assert_eq(pk_handoff_unlink(run_dir, 4), 0);
	cr_assert_eq(stat(path, &st), -1);
	close(rx);
}

Test(handoff, prepare_dir_tightens_an_existing_dir)
{
	char again[128];

	cr_assert_eq(chmod(run_dir, 0755), 0);
	cr_assert_eq(pk_handoff_prepare_dir(tdir, again, sizeof(again)), 0);
	cr_assert_str_eq(again, run_dir);
	struct stat st;
	cr_assert_eq(stat(run_dir, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
}

Test(handoff, too_long_paths_are_refused_clearly)
{
	char longdir[200], buf[256];
	int fd = -1;

	memset(longdir, 'd', sizeof(longdir) - 1);
	longdir[0] = '/';
	longdir[sizeof(longdir) - 1] = '\0';
	cr_assert_eq(pk_handoff_listen(longdir, 0, &fd), -ENAMETOOLONG);
	cr_assert_eq(fd, -1);
	cr_assert_eq(pk_handoff_prepare_dir(longdir, buf, sizeof(buf)), -ENAMETOOLONG);
	cr_assert_eq(pk_handoff_prepare_dir(tdir, buf, 4), -ENAMETOOLONG);
	cr_assert_eq(pk_handoff_path(run_dir, PK_HANDOFF_MAX_SLOT + 1, buf, sizeof(buf)), -EINVAL);
	cr_assert_eq(pk_handoff_path(run_dir, -1, buf, sizeof(buf)), -EINVAL);
}

/* ---- across processes ---- */

Test(handoff, respawned_worker_rebinds_the_slot)
{
	int ready[2];
	char c;

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int fd = -1;
		int rc = pk_handoff_listen(run_dir, 2, &fd);
		_exit(rc == 0 && write(ready[1], "r", 1) == 1 ? 0 : 1);
	}
	close(ready[1]);
	cr_assert_eq(read(ready[0], &c, 1), 1);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);

	struct pk_handoff_sender tx = sender();
	int cl, s, got_fd = -1;
	struct pk_handoff h = make_h(), got;
	char *bytes;
	size_t blen;
	tcp_pair(&cl, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 2, &h, s, "x", 1), -ECONNREFUSED,
	             "the dead worker's file is stale");
	int rx = listen_slot(2);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 2, &h, s, "x", 1), 0);
	cr_assert_eq(pk_handoff_recv(rx, &got, &got_fd, &bytes, &blen), 1);
	close(got_fd);
	free(bytes);
	pk_handoff_sender_close(&tx);
}

/* The child plays a worker on slot 1: it receives one handoff, echoes the already-read
 * bytes to the client, then echoes what the client sends. */
static int echo_worker(int ready_fd)
{
	int rx = -1, cfd = -1;
	struct pk_handoff h;
	char *bytes = NULL, buf[4];
	size_t blen = 0;
	struct pollfd pfd;

	if (pk_handoff_listen(run_dir, 1, &rx) != 0 || write(ready_fd, "r", 1) != 1)
		return 1;
	pfd = (struct pollfd){.fd = rx, .events = POLLIN};
	if (poll(&pfd, 1, 10000) != 1)
		return 2;
	if (pk_handoff_recv(rx, &h, &cfd, &bytes, &blen) != 1)
		return 3;
	if (h.from_slot != 3 || strcmp(h.client_addr, "127.0.0.1:54321") != 0)
		return 4;
	if (write(cfd, bytes, blen) != (ssize_t)blen)
		return 5;
	size_t off = 0;
	while (off < sizeof(buf)) {
		ssize_t n = read(cfd, buf + off, sizeof(buf) - off);
		if (n <= 0)
			return 6;
		off += (size_t)n;
	}
	if (write(cfd, "echo:", 5) != 5 || write(cfd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		return 7;
	free(bytes);
	close(cfd);
	return 0;
}

Test(handoff, another_process_serves_the_handed_connection)
{
	int ready[2];
	char c;

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(ready[0]);
		_exit(echo_worker(ready[1]));
	}
	close(ready[1]);
	cr_assert_eq(read(ready[0], &c, 1), 1, "child listening");

	struct pk_handoff_sender tx = sender();
	int cl, s;
	struct pk_handoff h = make_h();
	char buf[32];
	tcp_pair(&cl, &s);
	cr_assert_eq(pk_handoff_send(&tx, run_dir, 1, &h, s, "HEAD", 4), 0);
	close(s);
	read_full(cl, buf, 4);
	cr_assert_eq(memcmp(buf, "HEAD", 4), 0);
	cr_assert_eq(write(cl, "ping", 4), 4);
	read_full(cl, buf, 9);
	cr_assert_eq(memcmp(buf, "echo:ping", 9), 0);
	cr_assert_eq(read(cl, buf, 1), 0, "the child closed the last copy");

	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	pk_handoff_sender_close(&tx);
}
