/* Byte-stream connections for piko: outbound TCP (optionally TLS) and accepted sockets, on
 * one libuv loop.
 *
 * A pk_net_conn hides the socket, name resolution, the TLS layer (OpenSSL over memory BIOs)
 * and the write queue. Its owner sees plaintext only:
 *
 *   on_connect(err)   once, for pk_net_connect(): 0 when TCP (and TLS) is up, else -errno.
 *                     Writes made before it are queued and go out after it.
 *   on_read(data,len) bytes in; data points into a buffer shared by every connection and is
 *                     writable (the WebSocket decoder unmasks in place). Valid during the
 *                     call and the pk_net_on_read_done hook after it. The owner must take
 *                     every byte it is given: pausing with pk_net_read_stop() applies to
 *                     the next socket read.
 *   on_eof()          the peer half-closed (or TLS close_notify).
 *   on_error(err)     read, write or TLS failure; the owner should close.
 *   on_written(credit) one queued write finished; credit is the number given to
 *                     pk_net_write (the agent turns it into yamux window credit).
 *   on_shutdown()     the half-close asked for by pk_net_shutdown() went out.
 *
 * After pk_net_close() no callback is called; memory is released once libuv is done.
 *
 * Name resolution goes through uv_getaddrinfo (libuv's own resolver thread) unless the host
 * is an IP literal; answers are cached per pk_net_target for PK_NET_CACHE_MS. Several
 * addresses (localhost -> ::1, 127.0.0.1) are tried in order until one connects.
 */
#ifndef PK_PIKO_NET_H
#define PK_PIKO_NET_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define PK_NET_MAX_ADDRS 4
#define PK_NET_CACHE_MS  10000
#define PK_NET_READ_BUF  (256 * 1024)

/* Where to connect. Owned by the caller and must outlive every connection made to it. */
struct pk_net_target {
	char host[256]; /* name or IP literal (IPv6 without brackets) */
	uint16_t port;
	SSL_CTX *tls; /* NULL: plain TCP */
	/* Resolver cache (private). */
	struct sockaddr_storage pk__addrs[PK_NET_MAX_ADDRS];
	int pk__naddrs;
	uint64_t pk__expires;
};

struct pk_net_conn;

struct pk_net_ops {
	void (*on_connect)(struct pk_net_conn *c, int err);
	void (*on_read)(struct pk_net_conn *c, uint8_t *data, size_t len);
	void (*on_eof)(struct pk_net_conn *c);
	void (*on_error)(struct pk_net_conn *c, int err);
	void (*on_written)(struct pk_net_conn *c, size_t credit);
	void (*on_shutdown)(struct pk_net_conn *c);
};

/* Starts connecting to t. Reading starts by itself once connected. Returns 0 and *out, or
 * -ENOMEM or an error found at once (no callback follows then); every later failure is
 * reported by on_connect. */
int pk_net_connect(uv_loop_t *loop, struct pk_net_target *t, const struct pk_net_ops *ops, void *ud,
                   struct pk_net_conn **out);

/* Accepts one connection from a listening stream and starts reading. 0, or -errno. */
int pk_net_accept(uv_stream_t *server, const struct pk_net_ops *ops, void *ud,
                  struct pk_net_conn **out);

/* Changes the owner (the HTTP agent moves connections in and out of its pool). */
void pk_net_set_owner(struct pk_net_conn *c, const struct pk_net_ops *ops, void *ud);
void *pk_net_ud(const struct pk_net_conn *c);

/* Copies the n buffers and queues them as one write; on_written(credit) follows once they
 * are on the socket. Returns 0, -ENOMEM, -EPIPE (closing or shut down) or a TLS -EPROTO. */
int pk_net_write(struct pk_net_conn *c, const uv_buf_t *bufs, unsigned n, size_t credit);
/* Like pk_net_write, taking ownership of buf (malloc'd; freed by the connection, also on
 * failure) instead of copying it. */
int pk_net_write_take(struct pk_net_conn *c, uint8_t *buf, size_t len, size_t credit);
/* Convenience for one buffer. */
int pk_net_write1(struct pk_net_conn *c, const void *buf, size_t len, size_t credit);

/* Writes what the socket takes right now, straight from buf, when nothing is queued ahead
 * of it (plain TCP only). Returns the bytes written (0: none, or not possible now); those
 * are on the socket, so the caller may count them as written at once. */
size_t pk_net_try_write(struct pk_net_conn *c, const void *buf, size_t len);
/* The same for n buffers, in one writev. */
size_t pk_net_try_writev(struct pk_net_conn *c, const uv_buf_t *bufs, unsigned n);

/* fn runs after every on_read call returns, before the read buffer is used again: an owner
 * that kept pointers into on_read's data (to write them together) writes them there. One
 * hook per process; NULL removes it. */
void pk_net_on_read_done(void (*fn)(void));
/* Whether an on_read call is under way (its data is still valid). */
int pk_net_in_read(void);

/* Bytes queued and not yet written. */
size_t pk_net_queued(const struct pk_net_conn *c);

/* Pauses or resumes reading; both idempotent. */
void pk_net_read_stop(struct pk_net_conn *c);
void pk_net_read_start(struct pk_net_conn *c);

/* Half-closes our direction after everything queued (TLS: close_notify first). */
void pk_net_shutdown(struct pk_net_conn *c);

/* Whether connected (TCP and TLS). */
int pk_net_connected(const struct pk_net_conn *c);

/* Peer address as "ip:port" into buf (empty on failure). */
void pk_net_peer(const struct pk_net_conn *c, char *buf, size_t size);

/* Closes the connection now (queued writes are dropped) and releases it later. NULL is a
 * no-op. */
void pk_net_close(struct pk_net_conn *c);

/* Number of connections not yet released (for shutdown checks and tests). */
unsigned pk_net_live(void);

#endif
