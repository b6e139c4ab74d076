#include "common/channel.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int pk_chan_pair(int fds[2])
{
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
		return -errno;
	return 0;
}

int pk_chan_send(int fd, uint16_t type, const void *payload, size_t len, const int *fds, int nfds)
{
	struct pk_msg_hdr hdr = {.type = type, .version = PK_CHAN_VERSION, .len = (uint32_t)len};
	struct iovec iov[2] = {{&hdr, sizeof(hdr)}, {(void *)payload, len}};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * PK_CHAN_MAX_FDS)];
	} ctl;
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = len > 0 ? 2 : 1};

	if (len > PK_CHAN_MAX_PAYLOAD || nfds < 0 || nfds > PK_CHAN_MAX_FDS)
		return -EMSGSIZE;
	if (nfds > 0) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	for (;;) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n >= 0)
			return 0;
		if (errno != EINTR)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	}
}

static void pk__close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Collects every SCM_RIGHTS fd from the control data. Fds beyond the caller's room are
 * closed and reported as an error: an unexpected descriptor must never leak. */
static int pk__collect_fds(struct msghdr *mh, int *fds, int room, int *got)
{
	int err = 0;
	*got = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm != NULL; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len < CMSG_LEN(0)) {
			err = -EPROTO;
			continue;
		}
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int f;
			memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (*got < room)
				fds[(*got)++] = f;
			else {
				close(f);
				err = -EPROTO;
			}
		}
	}
	return err;
}

int pk_chan_recv(int fd, struct pk_msg *msg, int *fds, int *nfds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * PK_CHAN_MAX_FDS)];
	} ctl;
	struct iovec iov = {msg, sizeof(*msg)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	int room = nfds ? *nfds : 0;
	ssize_t n;

	if (nfds)
		*nfds = 0;
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;

	int got = 0;
	int err = pk__collect_fds(&mh, fds, room, &got);
	if (n == 0 && got == 0)
		return 0;
	if ((mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || (size_t)n < sizeof(msg->hdr) ||
	    msg->hdr.version != PK_CHAN_VERSION || msg->hdr.len != (size_t)n - sizeof(msg->hdr))
		err = -EPROTO;
	if (err < 0) {
		pk__close_fds(fds, got);
		return err;
	}
	if (nfds)
		*nfds = got;
	return 1;
}

int pk_msg_get(const struct pk_msg *msg, void *out, size_t size)
{
	if (msg->hdr.len != size)
		return -EPROTO;
	memcpy(out, msg->payload, size);
	return 0;
}

const char *pk_msg_type_name(uint16_t type)
{
	switch (type) {
	case PK_MSG_READY:
		return "ready";
	case PK_MSG_DRAIN:
		return "drain";
	case PK_MSG_STOP:
		return "stop";
	case PK_MSG_RELOAD:
		return "reload";
	case PK_MSG_RELOAD_RESULT:
		return "reload-result";
	case PK_MSG_HANDOFF:
		return "handoff";
	default:
		return "unknown";
	}
}
