#include "common/channel.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
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
