/* Client socket handoff between workers. See handoff.h for the contract. */
#include "workers/handoff.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/channel.h"
#include "common/log.h"

#define PK__SUB   "handoff"
#define PK__SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
/* Longest socket name a run dir must leave room for: "/w65535.sock". */
#define PK__NAME_MAX (sizeof("/w65535.sock") - 1)

_Static_assert(sizeof(struct pk_handoff) + PK_HANDOFF_INLINE <= PK_CHAN_MAX_PAYLOAD,
               "inline handoff bytes must fit one channel message");

/* ---- paths ---- */

int pk_handoff_prepare_dir(const char *state_dir, char *buf, size_t size)
{
	struct stat st;
	int n;

	if (!state_dir || !*state_dir || !buf)
		return -EINVAL;
	n = snprintf(buf, size, "%s/run", state_dir);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	if ((size_t)n + PK__NAME_MAX >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		pk_log_error(PK__SUB, "run directory path too long for unix socket names",
		             "path=%s len=%d max=%zu", buf, n,
		             sizeof(((struct sockaddr_un *)0)->sun_path) - 1 - PK__NAME_MAX);
		return -ENAMETOOLONG;
	}
	if (mkdir(buf, 0700) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	/* It exists: make sure it is ours before trusting the sockets in it. */
	if (lstat(buf, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	if (st.st_uid != geteuid())
		return -EPERM;
	if ((st.st_mode & 077) && chmod(buf, 0700) < 0)
		return -errno;
	return 0;
}

int pk_handoff_path(const char *run_dir, int slot, char *buf, size_t size)
{
	int n;

	if (!run_dir || !buf || slot < 0 || slot > PK_HANDOFF_MAX_SLOT)
		return -EINVAL;
	n = snprintf(buf, size, "%s/w%d.sock", run_dir, slot);
	if (n < 0 || (size_t)n >= size || (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -ENAMETOOLONG;
	return 0;
}

static int pk__addr(const char *run_dir, int slot, struct sockaddr_un *sa, socklen_t *salen)
{
	int rc;

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	rc = pk_handoff_path(run_dir, slot, sa->sun_path, sizeof(sa->sun_path));
	if (rc < 0)
		return rc;
	*salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sa->sun_path) + 1);
	return 0;
}

/* ---- sockets ---- */

int pk_handoff_listen(const char *run_dir, int slot, int *fd_out)
{
	struct sockaddr_un sa;
	socklen_t salen;
	mode_t old;
	int fd, rc;

	if (!fd_out)
		return -EINVAL;
	*fd_out = -1;
	rc = pk__addr(run_dir, slot, &sa, &salen);
	if (rc == -ENAMETOOLONG)
		pk_log_error(PK__SUB, "handoff socket path too long for a unix socket",
		             "run_dir=%s slot=%d max=%zu", run_dir, slot, sizeof(sa.sun_path) - 1);
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A predecessor in this slot (crashed or retired) left its file; bind needs it gone. */
	if (unlink(sa.sun_path) < 0 && errno != ENOENT) {
		rc = -errno;
		goto err_close_fd;
	}
	/* bind creates the file with the umask applied: narrow it so the socket is 0600
	 * from birth (no threads, so the process-wide umask is ours for this moment). */
	old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sa, salen) < 0 ? -errno : 0;
	umask(old);
	if (rc < 0)
		goto err_close_fd;
	*fd_out = fd;
	return 0;

err_close_fd:
	pk_log_error(PK__SUB, "cannot bind handoff socket", "path=%s error=%s", sa.sun_path,
	             strerror(-rc));
	close(fd);
	return rc;
}

int pk_handoff_unlink(const char *run_dir, int slot)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int rc = pk__addr(run_dir, slot, &sa, &salen);

	if (rc < 0)
		return rc;
	return unlink(sa.sun_path) < 0 ? -errno : 0;
}

/* ---- sending ---- */

/* Puts len bytes into a new memfd and seals it, so the receiver reads exactly what was
 * sent and nothing can change under it. Returns the fd or -errno. */
static int pk__memfd(const void *bytes, size_t len)
{
	const char *p = bytes;
	size_t off = 0;
	int fd, rc;

	fd = memfd_create("pikod-handoff", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	while (off < len) {
		ssize_t n = write(fd, p + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			goto err_close_fd;
		}
		off += (size_t)n;
	}
	if (fcntl(fd, F_ADD_SEALS, PK__SEALS) < 0) {
		rc = -errno;
		goto err_close_fd;
	}
	return fd;

err_close_fd:
	close(fd);
	return rc;
}

int pk_handoff_sender(struct pk_handoff_sender *s)
{
	if (!s)
		return -EINVAL;
	s->fd = NULL;
	s->n = 0;
	return 0;
}

void pk_handoff_sender_close(struct pk_handoff_sender *s)
{
	for (int i = 0; i < s->n; i++)
		if (s->fd[i] >= 0)
			close(s->fd[i]);
	free(s->fd);
	s->fd = NULL;
	s->n = 0;
}

/* The socket connected to slot's path, connecting one first if there is none. Returns the
 * fd or -errno (-ENOENT: no file; -ECONNREFUSED: nobody bound to it). */
static int pk__peer(struct pk_handoff_sender *s, const char *run_dir, int slot)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int fd, rc;

	if (slot >= s->n) {
		/* Slots are small and few: room for this one and a handful more. */
		int n = slot < PK_HANDOFF_MAX_SLOT - 8 ? slot + 8 : PK_HANDOFF_MAX_SLOT + 1;
		int *f = realloc(s->fd, (size_t)n * sizeof(*f));
		if (!f)
			return -ENOMEM;
		for (int i = s->n; i < n; i++)
			f[i] = -1;
		s->fd = f;
		s->n = n;
	}
	if (s->fd[slot] >= 0)
		return s->fd[slot];
	rc = pk__addr(run_dir, slot, &sa, &salen);
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	s->fd[slot] = fd;
	return fd;
}

/* The peer of a connected datagram socket is gone (its worker exited). */
static bool pk__peer_gone(int rc)
{
	return rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -ENOTCONN || rc == -EPIPE;
}

/* Sends one message to slot; when the connected socket's peer is gone, connects again
 * once: a respawned worker may have bound the path since. */
static int pk__send(struct pk_handoff_sender *s, const char *run_dir, int slot,
                    const struct iovec *iov, int iovcnt, const int *fds, int nfds)
{
	for (int attempt = 0;; attempt++) {
		int fd = pk__peer(s, run_dir, slot);
		if (fd < 0)
			return fd;
		int rc = pk_chan_sendv(fd, NULL, 0, PK_MSG_HANDOFF, iov, iovcnt, fds, nfds);
		if (rc == 0 || !pk__peer_gone(rc))
			return rc;
		close(fd);
		s->fd[slot] = -1;
		if (attempt > 0)
			return rc;
	}
}

int pk_handoff_send(struct pk_handoff_sender *s, const char *run_dir, int target_slot,
                    const struct pk_handoff *h, int client_fd, const void *bytes, size_t len)
{
	struct pk_handoff hh;
	struct iovec iov[2];
	int fds[2] = {client_fd, -1};
	int rc;

	if (!s || !run_dir || !h || client_fd < 0 || (!bytes && len > 0) || target_slot < 0 ||
	    target_slot > PK_HANDOFF_MAX_SLOT)
		return -EINVAL;
	if (len > PK_HANDOFF_MAX_BYTES)
		return -EMSGSIZE;
	hh = *h;
	hh.version = PK_HANDOFF_VERSION;
	hh.bytes_len = (uint32_t)len;
	hh.client_addr[sizeof(hh.client_addr) - 1] = '\0';
	iov[0] = (struct iovec){&hh, sizeof(hh)};
	if (len <= PK_HANDOFF_INLINE) {
		iov[1] = (struct iovec){(void *)bytes, len};
		return pk__send(s, run_dir, target_slot, iov, 2, fds, 1);
	}
	fds[1] = pk__memfd(bytes, len);
	if (fds[1] < 0)
		return fds[1];
	rc = pk__send(s, run_dir, target_slot, iov, 1, fds, 2);
	close(fds[1]); /* the receiver has its own reference (or the send failed) */
	return rc;
}

/* ---- receiving ---- */

static int pk__reject(const char *why, int *fds, int nfds)
{
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	pk_log_warn(PK__SUB, "handoff message rejected", "reason=%s fds=%d", why, nfds);
	return -EPROTO;
}

/* The fd must be a stream socket: anything else would be driven as a client connection
 * and fail in stranger ways later. SO_TYPE alone tells (ENOTSOCK for anything but a
 * socket), in one system call per handoff. */
static int pk__is_stream_socket(int fd)
{
	int type = 0;
	socklen_t tl = sizeof(type);

	return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM;
}

/* Checks the memfd and copies its bytes into a new buffer. Returns 0, -EPROTO with *why
 * set, or -ENOMEM. */
static int pk__read_memfd(int fd, size_t len, char **out, const char **why)
{
	struct stat st;
	size_t off = 0;
	char *buf;
	int seals;

	*why = "bytes fd is not a regular file of bytes_len bytes";
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
	    (size_t)st.st_size != len)
		return -EPROTO;
	*why = "bytes fd is not a sealed memfd";
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & PK__SEALS) != PK__SEALS)
		return -EPROTO;
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	while (off < len) {
		ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(buf);
			*why = "bytes fd read failed";
			return -EPROTO;
		}
		off += (size_t)n;
	}
	*out = buf;
	return 0;
}

/* Validates a received message and extracts its parts. Closes nothing; returns 0,
 * -EPROTO with *why set, or -ENOMEM. */
static int pk__parse(const struct pk_msg *m, const int *fds, int nfds, struct pk_handoff *h,
                     char **bytes, const char **why)
{
	size_t len;
	int inl;

	*why = "not a handoff message";
	if (m->hdr.type != PK_MSG_HANDOFF || m->hdr.len < sizeof(*h))
		return -EPROTO;
	memcpy(h, m->payload, sizeof(*h));
	*why = "wrong handoff version";
	if (h->version != PK_HANDOFF_VERSION)
		return -EPROTO;
	*why = "client_addr not terminated";
	if (!memchr(h->client_addr, '\0', sizeof(h->client_addr)))
		return -EPROTO;
	*why = "bytes_len over the limit";
	len = h->bytes_len;
	if (len > PK_HANDOFF_MAX_BYTES)
		return -EPROTO;
	inl = len <= PK_HANDOFF_INLINE;
	*why = "payload length does not match bytes_len";
	if (m->hdr.len != sizeof(*h) + (inl ? len : 0))
		return -EPROTO;
	*why = "wrong number of descriptors";
	if (nfds != (inl ? 1 : 2))
		return -EPROTO;
	*why = "client fd is not a stream socket";
	if (!pk__is_stream_socket(fds[0]))
		return -EPROTO;
	if (!inl)
		return pk__read_memfd(fds[1], len, bytes, why);
	if (len == 0)
		return 0;
	*bytes = malloc(len);
	if (!*bytes)
		return -ENOMEM;
	memcpy(*bytes, m->payload + sizeof(*h), len);
	return 0;
}

int pk_handoff_recv(int fd, struct pk_handoff *h, int *client_fd, char **bytes, size_t *len)
{
	/* 64 KiB: too big for a loop's stack frame, and there are no threads. */
	static struct pk_msg msg;
	int fds[PK_CHAN_MAX_FDS], nfds = PK_CHAN_MAX_FDS;
	const char *why = NULL;
	char *buf = NULL;
	int rc;

	if (!h || !client_fd || !bytes || !len)
		return -EINVAL;
	*client_fd = -1;
	*bytes = NULL;
	*len = 0;
	rc = pk_chan_recv_dgram(fd, &msg, fds, &nfds);
	if (rc == -EPROTO)
		pk_log_warn(PK__SUB, "handoff message rejected", "reason=%s",
		            "malformed channel message");
	if (rc < 0)
		return rc;
	rc = pk__parse(&msg, fds, nfds, h, &buf, &why);
	if (rc == -ENOMEM) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		pk_log_error(PK__SUB, "handoff dropped: out of memory", "bytes=%u", h->bytes_len);
		return rc;
	}
	if (rc < 0)
		return pk__reject(why, fds, nfds);
	if (nfds > 1)
		close(fds[1]); /* the memfd, copied out */
	*client_fd = fds[0];
	*bytes = buf;
	*len = h->bytes_len;
	return 1;
}
