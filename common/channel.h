/* Typed messages with optional fd passing over an AF_UNIX SOCK_SEQPACKET socket pair.
 *
 * One message = one datagram: a header (type, version, payload length) and a payload of at
 * most PK_CHAN_MAX_PAYLOAD bytes, plus up to PK_CHAN_MAX_FDS descriptors (SCM_RIGHTS).
 * SEQPACKET keeps message boundaries, so a reader never sees half a message and fds arrive
 * with the message that names them.
 *
 * Used for the supervisor <-> child control channel (ready, drain, stop, ...) and for the
 * handoff channels between workers (client sockets with the bytes already read).
 */
#ifndef PK_CHANNEL_H
#define PK_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#define PK_CHAN_VERSION     1
#define PK_CHAN_MAX_PAYLOAD (64 * 1024)
#define PK_CHAN_MAX_FDS     4

enum pk_msg_type {
	PK_MSG_READY = 1, /* child -> supervisor: listeners open, serving */
	PK_MSG_DRAIN = 2, /* supervisor -> child: stop accepting, finish, exit; payload pk_msg_drain */
	PK_MSG_STOP = 3,  /* supervisor -> child: exit now */
	PK_MSG_RELOAD = 4, /* child (admin) -> supervisor: operator asked for a reload */
	PK_MSG_RELOAD_RESULT = 5, /* supervisor -> admin: payload pk_msg_reload_result */
	PK_MSG_HANDOFF = 6, /* worker -> worker: a client socket + bytes already read */
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

/* Receives one message into msg. *nfds is in: room in fds[], out: descriptors received
 * (close-on-exec; the caller owns them). Returns 1 when a message was read, 0 on EOF,
 * -EAGAIN when none is waiting, -EPROTO for a malformed message (wrong version, length
 * mismatch, truncated control data, more fds than room) — every fd that came with a
 * rejected message is closed — or another -errno. */
int pk_chan_recv(int fd, struct pk_msg *msg, int *fds, int *nfds);

/* Copies a fixed-size payload out of msg: fails with -EPROTO unless the payload is exactly
 * `size` bytes, so a message with trailing or missing bytes is never half-read. */
int pk_msg_get(const struct pk_msg *msg, void *out, size_t size);

const char *pk_msg_type_name(uint16_t type);

#endif
