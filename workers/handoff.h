/* Passing a client connection from one worker to another.
 *
 * When a request arrives on worker A but the tunnel that should serve it lives on worker
 * B, A hands B the client socket (SCM_RIGHTS) together with the bytes it has already read
 * from it (the request head, maybe part of the body), and forgets the connection; B goes
 * on as if it had accepted it itself.
 *
 * Transport: each worker process-table slot S binds an AF_UNIX SOCK_DGRAM socket at
 * <run_dir>/w<S>.sock (run_dir = <state_dir>/run, mode 0700; socket files mode 0600). A
 * sender keeps one socket connected to each slot it has sent to (struct
 * pk_handoff_sender): a send to a path walks and checks that path every time (under load
 * perf put 3.4 of the 8.0 us per request that sendmsg took there; a tight loop, 0.7 us;
 * bench/results/2026-12-07.md). When the worker of a slot dies, the next send to it
 * fails; the socket is dropped and connected again once, which finds a respawned worker
 * that re-bound the path (the old file is unlinked first), so senders need not be told.
 * One handoff = one pk_chan message (common/channel.h) of type
 * PK_MSG_HANDOFF whose payload is a struct pk_handoff followed by the already-read bytes
 * when there are at most PK_HANDOFF_INLINE of them; larger byte runs travel in a sealed
 * memfd passed as a second descriptor, so a datagram stays small.
 *
 * Limits worth knowing: the kernel queues at most net.unix.max_dgram_qlen datagrams per
 * receiving socket (10 by default; it cannot be raised per socket), and queued datagrams
 * are charged to the *sender's* socket send buffer. A worker that does not read its
 * socket, or a burst of handoffs to one worker, therefore makes pk_handoff_send fail with
 * -EAGAIN at once (never block): the caller must treat that as "that worker is busy"
 * (pick another tunnel, retry on a later loop turn, or answer 502/503).
 *
 * Descriptors received are close-on-exec; every fd of a rejected message is closed. No
 * threads: pk_handoff_recv uses one static message buffer.
 */
#ifndef PK_HANDOFF_H
#define PK_HANDOFF_H

#include <stddef.h>
#include <stdint.h>

#define PK_HANDOFF_VERSION   1
#define PK_HANDOFF_INLINE    (32 * 1024)       /* more already-read bytes go in a memfd */
#define PK_HANDOFF_MAX_BYTES (2 * 1024 * 1024) /* already-read bytes per handoff */
#define PK_HANDOFF_MAX_SLOT  65535             /* slots are 0..this */
#define PK_HANDOFF_ADDR_MAX  64

/* pk_handoff.flags */
#define PK_HANDOFF_F_TLS       1u /* the client came in on a TLS listener */
#define PK_HANDOFF_F_FORWARDED 2u /* the request came from a peer node: never forward again */
/* Bits 8-15 of flags: how many handoffs the connection has been through. */
#define PK_HANDOFF_HOPS(flags) (((flags) >> 8) & 0xffu)
#define PK_HANDOFF_SET_HOPS(n) (((uint32_t)(n)&0xffu) << 8)

/* The fixed part of a handoff message (host byte order: it never leaves the machine). */
struct pk_handoff {
	uint32_t version;   /* PK_HANDOFF_VERSION (set by pk_handoff_send) */
	uint32_t from_slot; /* the sender's process-table slot */
	uint64_t tunnel_id; /* the tunnel chosen by the sender (the receiver re-checks it) */
	uint32_t flags;     /* PK_HANDOFF_F_* */
	uint32_t bytes_len; /* length of the already-read bytes (set by pk_handoff_send) */
	char client_addr[PK_HANDOFF_ADDR_MAX]; /* "ip:port" as the sender saw it, NUL-terminated */
};

_Static_assert(sizeof(struct pk_handoff) == 88, "pk_handoff is a wire struct: no padding");

/* Builds "<state_dir>/run" into buf and creates that directory with mode 0700 if it is
 * missing (state_dir itself must exist). An existing run dir must be a real directory
 * (not a symlink) owned by this user; group/other permission bits on it are removed.
 * Returns 0, -EINVAL, -ENAMETOOLONG (buf too small, or the path would not leave room for
 * the socket names within sun_path), -ENOTDIR, -EPERM (owned by someone else), or the
 * -errno of mkdir/lstat/chmod. */
int pk_handoff_prepare_dir(const char *state_dir, char *buf, size_t size);

/* Writes the socket path of slot into buf ("<run_dir>/w<slot>.sock"). 0, -EINVAL (slot
 * out of 0..PK_HANDOFF_MAX_SLOT), or -ENAMETOOLONG (does not fit buf or sun_path). */
int pk_handoff_path(const char *run_dir, int slot, char *buf, size_t size);

/* Creates this slot's receiving socket: non-blocking, close-on-exec SOCK_DGRAM, bound at
 * pk_handoff_path() after unlinking whatever was there (a respawned worker takes over
 * its predecessor's path), socket file mode 0600. Sets *fd_out; the caller owns it and
 * polls it for reading. Returns 0, -EINVAL, -ENAMETOOLONG (the path does not fit
 * sun_path's 107 bytes: choose a shorter state_dir; logged with the path), or the -errno
 * of socket/unlink/bind. Only one live process may listen on a slot: a second listen
 * silently takes the path from the first (the supervisor's slot table prevents that). */
int pk_handoff_listen(const char *run_dir, int slot, int *fd_out);

/* Removes the socket file of slot (a worker leaving for good). 0, or -errno (-ENOENT
 * when there was none). */
int pk_handoff_unlink(const char *run_dir, int slot);

/* The sending side of one process: a non-blocking, close-on-exec SOCK_DGRAM socket per
 * target slot, connected on the first send to that slot. */
struct pk_handoff_sender {
	int *fd; /* by target slot; -1: not connected */
	int n;   /* slots fd[] covers */
};

/* Makes s empty (no sockets yet). 0, or -EINVAL when s is NULL. */
int pk_handoff_sender(struct pk_handoff_sender *s);

/* Closes every socket of s and frees its table; s is empty again. */
void pk_handoff_sender_close(struct pk_handoff_sender *s);

/* Hands client_fd and the len already-read bytes to the worker of target_slot. h supplies
 * from_slot, tunnel_id, flags and client_addr (truncated to 63 bytes); version and
 * bytes_len are filled in here. The receiver gets its own copy of client_fd: on success the
 * caller closes its copy (without shutdown(), which would end the connection for both);
 * on failure the caller still owns client_fd and the connection is untouched. Never
 * blocks. Returns 0, or:
 *   -ECONNREFUSED / -ENOENT  no worker bound at that slot (stale socket file / no file)
 *   -EAGAIN                  its queue (or our send buffer) is full: try another or later
 *   -EMSGSIZE                len > PK_HANDOFF_MAX_BYTES
 *   -EINVAL                  bad arguments (h NULL, client_fd < 0, bytes NULL with len > 0,
 *                            slot out of range)
 *   -ENAMETOOLONG            the target path does not fit sun_path
 *   -ENOMEM                  no memory for s's table
 *   -errno                   socket/connect, memfd_create/write/fcntl (large bytes), sendmsg */
int pk_handoff_send(struct pk_handoff_sender *s, const char *run_dir, int target_slot,
                    const struct pk_handoff *h, int client_fd, const void *bytes, size_t len);

/* Receives one handoff from fd (a pk_handoff_listen socket); call until -EAGAIN when the
 * socket polls readable. Returns:
 *   1        a handoff: *h filled, *client_fd is the connected client socket (close-on-exec,
 *            in whatever blocking mode the sender had it; the caller owns it), *bytes is a
 *            malloc'd copy of the h->bytes_len (== *len) already-read bytes (NULL when 0;
 *            the caller frees it)
 *   -EAGAIN  nothing waiting
 *   -EPROTO  a malformed message, dropped with every fd that came with it (wrong type,
 *            version or size, unterminated client_addr, bytes_len over the limit, missing or
 *            extra fds, truncated datagram or control data, a client fd that is not a
 *            stream socket, a memfd that is not a sealed regular file of bytes_len bytes);
 *            logged (subsystem "handoff") with the reason. Keep reading.
 *   -ENOMEM  no memory for the bytes: the handoff (and its client connection) was dropped
 *   -errno   from recvmsg (the socket itself is broken)
 * On anything but 1, *client_fd is -1, *bytes NULL and *len 0. */
int pk_handoff_recv(int fd, struct pk_handoff *h, int *client_fd, char **bytes, size_t *len);

#endif
