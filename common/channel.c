#include "common/channel.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

int pk_chan_pair(int fds[2])
{
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
		return -errno;
	return 0;
}

/* Fills the control buffer with one SCM_RIGHTS message carrying fds. */
static void pk__put_fds(struct msghdr *mh, void *buf, const int *fds, int nfds)
{
	size_t size = sizeof(int) * (size_t)nfds;

	memset(buf, 0, CMSG_SPACE(size));
	mh->msg_control = buf;
	mh->msg_controllen = CMSG_SPACE(size);
	struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(size);
	memcpy(CMSG_DATA(cm), fds, size); /* CMSG_DATA may be unaligned for int stores */
}

int pk_chan_sendv(int fd, const struct sockaddr_un *to, socklen_t tolen, uint16_t type,
                  const struct iovec *iov, int iovcnt, const int *fds, int nfds)
{
	struct pk_msg_hdr hdr = {.type = type, .version = PK_CHAN_VERSION};
	struct iovec v[1 + PK_CHAN_MAX_IOV];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * PK_CHAN_MAX_FDS)];
	} ctl;
	struct msghdr mh = {.msg_name = (void *)to, .msg_namelen = to ? tolen : 0, .msg_iov = v};
	size_t len = 0;
	int nv = 1;

	if (iovcnt < 0 || iovcnt > PK_CHAN_MAX_IOV || nfds < 0 || nfds > PK_CHAN_MAX_FDS)
		return -EMSGSIZE;
	if ((iovcnt > 0 && !iov) || (nfds > 0 && !fds))
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > PK_CHAN_MAX_PAYLOAD - len)
			return -EMSGSIZE;
		len += iov[i].iov_len;
		if (iov[i].iov_len > 0)
			v[nv++] = iov[i];
	}
	hdr.len = (uint32_t)len;
	v[0].iov_base = &hdr;
	v[0].iov_len = sizeof(hdr);
	mh.msg_iovlen = (size_t)nv;
	if (nfds > 0)
		pk__put_fds(&mh, ctl.buf, fds, nfds);
	for (;;) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n >= 0)
			return 0;
		if (errno != EINTR)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	}
}

int pk_chan_sendto(int fd, const struct sockaddr_un *to, socklen_t tolen, uint16_t type,
                   const void *payload, size_t len, const int *fds, int nfds)
{
	struct iovec iov = {(void *)payload, len};

	if (len > PK_CHAN_MAX_PAYLOAD)
		return -EMSGSIZE;
	if (!payload && len)
		return -EINVAL;
	return pk_chan_sendv(fd, to, tolen, type, &iov, 1, fds, nfds);
}

int pk_chan_send(int fd, uint16_t type, const void *payload, size_t len, const int *fds, int nfds)
{
	return pk_chan_sendto(fd, NULL, 0, type, payload, len, fds, nfds);
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
		/* Anything but SCM_RIGHTS (credentials, ...) carries no fds and was not asked
		 * for: reject the message. */
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len < CMSG_LEN(0)) {
			err = -EPROTO;
			continue;
		}
		/* A ragged length means we and the kernel disagree on the layout: reject,
		 * but still close every whole fd it holds. */
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if ((cm->cmsg_len - CMSG_LEN(0)) % sizeof(int) != 0)
			err = -EPROTO;
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

/* Reads one message. dgram: an empty read is an empty datagram (malformed), not EOF. */
static int pk__recv(int fd, struct pk_msg *msg, int *fds, int *nfds, int dgram)
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
	if (room > 0 && !fds)
		return -EINVAL;
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;

	int got = 0;
	int err = pk__collect_fds(&mh, fds, room, &got);
	if (n == 0 && got == 0 && !dgram)
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

int pk_chan_recv(int fd, struct pk_msg *msg, int *fds, int *nfds)
{
	return pk__recv(fd, msg, fds, nfds, 0);
}

int pk_chan_recv_dgram(int fd, struct pk_msg *msg, int *fds, int *nfds)
{
	return pk__recv(fd, msg, fds, nfds, 1);
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
