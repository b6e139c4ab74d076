#include "common/channel.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static struct pk_msg msg;

Test(channel, message_round_trip_keeps_type_and_payload)
{
	int p[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	struct pk_msg_drain d = {.grace_ms = 1234};
	cr_assert_eq(pk_chan_send(p[0], PK_MSG_DRAIN, &d, sizeof(d), NULL, 0), 0);
	int nfds = 0;
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, &nfds), 1);
	cr_assert_eq(msg.hdr.type, PK_MSG_DRAIN);
	struct pk_msg_drain got;
	cr_assert_eq(pk_msg_get(&msg, &got, sizeof(got)), 0);
	cr_assert_eq(got.grace_ms, 1234);
	cr_assert_eq(pk_msg_get(&msg, &got, sizeof(got) - 1), -EPROTO);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, &nfds), -EAGAIN);
	close(p[0]);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, &nfds), 0);
	close(p[1]);
}

Test(channel, passes_a_descriptor_that_works_and_is_cloexec)
{
	int p[2], pipefd[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	cr_assert_eq(pipe(pipefd), 0);
	cr_assert_eq(pk_chan_send(p[0], PK_MSG_HANDOFF, "hi", 2, &pipefd[1], 1), 0);
	close(pipefd[1]);
	int fds[PK_CHAN_MAX_FDS], nfds = PK_CHAN_MAX_FDS;
	cr_assert_eq(pk_chan_recv(p[1], &msg, fds, &nfds), 1);
	cr_assert_eq(nfds, 1);
	cr_assert_eq(msg.hdr.len, 2);
	cr_assert(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);
	cr_assert_eq(write(fds[0], "x", 1), 1);
	char c;
	cr_assert_eq(read(pipefd[0], &c, 1), 1);
	cr_assert_eq(c, 'x');
	close(fds[0]);
	close(pipefd[0]);
	close(p[0]);
	close(p[1]);
}

Test(channel, more_fds_than_room_are_closed_and_rejected)
{
	int p[2], a[2], b[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	cr_assert_eq(pipe(a), 0);
	cr_assert_eq(pipe(b), 0);
	int send_fds[2] = {a[1], b[1]};
	cr_assert_eq(pk_chan_send(p[0], PK_MSG_HANDOFF, NULL, 0, send_fds, 2), 0);
	close(a[1]);
	close(b[1]);
	int fds[1], nfds = 1;
	cr_assert_eq(pk_chan_recv(p[1], &msg, fds, &nfds), -EPROTO);
	cr_assert_eq(nfds, 0);
	/* Every write end is closed now, so both read ends see EOF. */
	char c;
	cr_assert_eq(read(a[0], &c, 1), 0);
	cr_assert_eq(read(b[0], &c, 1), 0);
}

Test(channel, rejects_wrong_version_and_length)
{
	int p[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	struct pk_msg_hdr h = {.type = PK_MSG_READY, .version = 99, .len = 0};
	cr_assert_eq(send(p[0], &h, sizeof(h), 0), (ssize_t)sizeof(h));
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), -EPROTO);
	h.version = PK_CHAN_VERSION;
	h.len = 10; /* claims 10 bytes, carries none */
	cr_assert_eq(send(p[0], &h, sizeof(h), 0), (ssize_t)sizeof(h));
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), -EPROTO);
	char shortmsg[3] = {1, 0, 1};
	cr_assert_eq(send(p[0], shortmsg, sizeof(shortmsg), 0), 3);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), -EPROTO);
}

Test(channel, over_limit_sends_are_refused)
{
	int p[2], fds[PK_CHAN_MAX_FDS + 1] = {0};
	cr_assert_eq(pk_chan_pair(p), 0);
	cr_assert_eq(pk_chan_send(p[0], PK_MSG_READY, &msg, PK_CHAN_MAX_PAYLOAD + 1, NULL, 0),
	             -EMSGSIZE);
	cr_assert_eq(pk_chan_send(p[0], PK_MSG_READY, NULL, 0, fds, PK_CHAN_MAX_FDS + 1),
	             -EMSGSIZE);
}

Test(channel, works_across_fork)
{
	int p[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[1]);
		_exit(pk_chan_send(p[0], PK_MSG_READY, "child", 5, NULL, 0) == 0 ? 0 : 1);
	}
	close(p[0]);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), 1);
	cr_assert_eq(msg.hdr.type, PK_MSG_READY);
	cr_assert_eq(memcmp(msg.payload, "child", 5), 0);
}

/* ---- addressed datagrams (the handoff transport) ---- */

static int bound_dgram(struct sockaddr_un *sa, char *dir)
{
	strcpy(dir, "/tmp/pk-chan-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/s", dir);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)sa, sizeof(*sa)), 0);
	return fd;
}

static void unbind(const struct sockaddr_un *sa, const char *dir)
{
	unlink(sa->sun_path);
	rmdir(dir);
}

Test(channel, sendto_reaches_a_bound_dgram_socket_with_fds)
{
	struct sockaddr_un sa;
	char dir[32];
	int rx = bound_dgram(&sa, dir), pipefd[2];
	int tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	cr_assert_eq(pipe(pipefd), 0);
	cr_assert_eq(pk_chan_sendto(tx, &sa, sizeof(sa), PK_MSG_HANDOFF, "abc", 3, &pipefd[1], 1),
	             0);
	close(pipefd[1]);
	int fds[PK_CHAN_MAX_FDS], nfds = PK_CHAN_MAX_FDS;
	cr_assert_eq(pk_chan_recv_dgram(rx, &msg, fds, &nfds), 1);
	cr_assert_eq(msg.hdr.type, PK_MSG_HANDOFF);
	cr_assert_eq(msg.hdr.len, 3);
	cr_assert_eq(memcmp(msg.payload, "abc", 3), 0);
	cr_assert_eq(nfds, 1);
	cr_assert(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);
	close(fds[0]);
	char c;
	cr_assert_eq(read(pipefd[0], &c, 1), 0, "the only write end left was the passed one");
	cr_assert_eq(pk_chan_recv_dgram(rx, &msg, fds, &nfds), -EAGAIN);
	unbind(&sa, dir);
}

Test(channel, empty_datagram_is_malformed_not_eof)
{
	struct sockaddr_un sa;
	char dir[32];
	int rx = bound_dgram(&sa, dir);
	int tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cr_assert_eq(sendto(tx, "", 0, 0, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(pk_chan_recv_dgram(rx, &msg, NULL, NULL), -EPROTO);
	unbind(&sa, dir);
}

Test(channel, sendto_without_a_listener_reports_why)
{
	struct sockaddr_un sa;
	char dir[32];
	int rx = bound_dgram(&sa, dir);
	int tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	close(rx); /* the file stays, nobody is bound */
	cr_assert_eq(pk_chan_sendto(tx, &sa, sizeof(sa), PK_MSG_READY, NULL, 0, NULL, 0),
	             -ECONNREFUSED);
	unlink(sa.sun_path);
	cr_assert_eq(pk_chan_sendto(tx, &sa, sizeof(sa), PK_MSG_READY, NULL, 0, NULL, 0), -ENOENT);
	rmdir(dir);
}

Test(channel, sendv_gathers_pieces_into_one_payload)
{
	int p[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	struct iovec iov[3] = {{"ab", 2}, {NULL, 0}, {"cde", 3}};
	cr_assert_eq(pk_chan_sendv(p[0], NULL, 0, PK_MSG_READY, iov, 3, NULL, 0), 0);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), 1);
	cr_assert_eq(msg.hdr.len, 5);
	cr_assert_eq(memcmp(msg.payload, "abcde", 5), 0);
}

Test(channel, sendv_limits_apply_to_the_total)
{
	int p[2];
	cr_assert_eq(pk_chan_pair(p), 0);
	struct iovec iov[2] = {{msg.payload, PK_CHAN_MAX_PAYLOAD}, {msg.payload, 1}};
	cr_assert_eq(pk_chan_sendv(p[0], NULL, 0, PK_MSG_READY, iov, 2, NULL, 0), -EMSGSIZE);
	struct iovec many[PK_CHAN_MAX_IOV + 1] = {{0}};
	cr_assert_eq(pk_chan_sendv(p[0], NULL, 0, PK_MSG_READY, many, PK_CHAN_MAX_IOV + 1, NULL, 0),
	             -EMSGSIZE);
	cr_assert_eq(pk_chan_recv(p[1], &msg, NULL, NULL), -EAGAIN, "nothing was sent");
}
