/* Typed messages with optional fd passing over AF_UNIX sockets that keep message
 * boundaries: a SOCK_SEQPACKET socket pair, or unconnected SOCK_DGRAM sockets addressed by
 * path.
 *
 * One message = one datagram: a header (type, version, payload length) and a payload of at
 * most PK_CHAN_MAX_PAYLOAD bytes, plus up to PK_CHAN_MAX_FDS descriptors (SCM_RIGHTS).
 * Message boundaries are kept, so a reader never sees half a message and fds arrive with
 * the message that names them.
 *
 * Used for the supervisor <-> child control channel (SEQPACKET pair: ready, drain, stop,
 * ...) and for the handoff sockets between workers (DGRAM, see workers/handoff.h: client
 * sockets with the bytes already read).
 */
#ifndef PK_CHANNEL_H
#define PK_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#define PK_CHAN_VERSION     1
#define PK_CHAN_MAX_PAYLOAD (64 * 1024)
#define PK_CHAN_MAX_FDS     4
#define PK_CHAN_MAX_IOV     8 /* payload pieces of one pk_chan_sendv */

enum pk_msg_type {
	PK_MSG_READY = 1, /* child -> supervisor: listeners open, serving */
	/* supervisor -> child: stop accepting, finish, exit; payload pk_msg_drain */
	PK_MSG_DRAIN = 2,
	PK_MSG_STOP = 3,          /* supervisor -> child: exit now */
	PK_MSG_RELOAD = 4,        /* child (admin) -> supervisor: operator asked for a reload */
	PK_MSG_RELOAD_RESULT = 5, /* supervisor -> admin: payload pk_msg_reload_result */
	PK_MSG_HANDOFF = 6,       /* worker -> worker: a client socket + bytes already read */
	PK_MSG_TYPE_MAX
};

struct pk_msg_hdr {
	uint16_t type;
	uint16_t version;
	uint32_t len; /* payload bytes that follow */
};

struct pk_msg_drain {
	uint64_t grace_ms;
};

struct pk_msg_reload_result {
	uint32_t ok;
	uint32_t generation;
	char error[512];
};

struct pk_msg {
	struct pk_msg_hdr hdr;
	unsigned char payload[PK_CHAN_MAX_PAYLOAD];
};

/* Creates a connected, non-blocking, close-on-exec SEQPACKET pair. 0 or -errno. */
int pk_chan_pair(int fds[2]);

/* Sends one message. fds (may be NULL when nfds is 0) are duplicated into the receiver;
 * the caller still owns its copies. Returns 0, -EMSGSIZE (payload or fd count over the
 * limits), -EAGAIN (socket buffer full: the peer is not reading), or another -errno. */
int pk_chan_send(int fd, uint16_t type, const void *payload, size_t len, const int *fds, int nfds);

/* As pk_chan_send, but addressed: sends one datagram to the socket bound at `to` (tolen
 * bytes of it; to NULL with tolen 0 sends on a connected socket, as pk_chan_send). For an
 * unbound SOCK_DGRAM sender. Besides pk_chan_send's errors: -ENOENT (no socket file at
 * that path), -ECONNREFUSED (a file, but nobody bound to it), and on a non-blocking socket
 * -EAGAIN also when the receiver's queue is full. Blocks only if fd is a blocking socket. */
int pk_chan_sendto(int fd, const struct sockaddr_un *to, socklen_t tolen, uint16_t type,
                   const void *payload, size_t len, const int *fds, int nfds);

/* As pk_chan_sendto with the payload gathered from iovcnt pieces (at most PK_CHAN_MAX_IOV,
 * total at most PK_CHAN_MAX_PAYLOAD, else -EMSGSIZE), so a caller can send a fixed header
 * and a body without copying them together. */
int pk_chan_sendv(int fd, const struct sockaddr_un *to, socklen_t tolen, uint16_t type,
                  const struct iovec *iov, int iovcnt, const int *fds, int nfds);

/* Receives one message into msg. *nfds is in: room in fds[], out: descriptors received
 * (close-on-exec; the caller owns them). Returns 1 when a message was read, 0 on EOF,
 * -EAGAIN when none is waiting, -EPROTO for a malformed message (wrong version, length
 * mismatch, truncated control data, more fds than room) — every fd that came with a
 * rejected message is closed — or another -errno. */
int pk_chan_recv(int fd, struct pk_msg *msg, int *fds, int *nfds);

/* As pk_chan_recv, for a SOCK_DGRAM socket: a datagram socket has no end of stream, so 0
 * is never returned and an empty datagram is -EPROTO like any other malformed message.
 * Returns 1, -EAGAIN, -EPROTO (every fd that came with the message closed) or -errno. */
int pk_chan_recv_dgram(int fd, struct pk_msg *msg, int *fds, int *nfds);

/* Copies a fixed-size payload out of msg: fails with -EPROTO unless the payload is exactly
 * `size` bytes, so a message with trailing or missing bytes is never half-read. */
int pk_msg_get(const struct pk_msg *msg, void *out, size_t size);

const char *pk_msg_type_name(uint16_t type);

#endif
