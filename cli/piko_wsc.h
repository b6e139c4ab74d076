/* A WebSocket client connection for piko: TCP/TLS connect (piko_net), the opening
 * handshake, then a byte stream carried in binary messages (PROTOCOL.md section 2).
 *
 * Used by the agent (one per listener, carrying yamux) and by the forwarder (one per local
 * connection, carrying raw bytes). The owner enforces timeouts with its own timers.
 *
 * Callbacks (the owner may call pk_wsc_free from any of them):
 *   on_open()             101 accepted; data may flow.
 *   on_refused(status,msg) no WebSocket: status is the HTTP status (0 when there was no
 *                         usable answer: connect failure, EOF, malformed answer); msg is the
 *                         server's JSON "error" message, else the body's start, else a
 *                         description. Nothing follows.
 *   on_data(data,len)     payload bytes (message boundaries are not reported).
 *   on_closed(err,why)    the connection ended after on_open: err 0 for a close frame from
 *                         the server, else -errno. Nothing follows.
 *   on_written(credit)    a pk_wsc_send with that credit is on the socket.
 */
#ifndef PK_PIKO_WSC_H
#define PK_PIKO_WSC_H

#include "cli/piko_net.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct pk_wsc;

struct pk_wsc_ops {
	void (*on_open)(struct pk_wsc *w);
	void (*on_refused)(struct pk_wsc *w, int status, const char *msg);
	void (*on_data)(struct pk_wsc *w, const uint8_t *data, size_t len);
	void (*on_closed)(struct pk_wsc *w, int err, const char *why);
	void (*on_written)(struct pk_wsc *w, size_t credit);
};

/* Connects to t and asks to upgrade `path` (Host: host_header). extra_headers is NULL or
 * complete "Name: value\r\n" lines (Authorization). Returns 0 and *out, or -ENOMEM /
 * -EINVAL (bad path or header); later failures come through on_refused. */
int pk_wsc_open(uv_loop_t *loop, struct pk_net_target *t, const char *host_header, const char *path,
                const char *extra_headers, const struct pk_wsc_ops *ops, void *ud,
                struct pk_wsc **out);

void *pk_wsc_ud(const struct pk_wsc *w);

/* Sends the iovecs as one binary message (masked). Returns 0, -EPIPE (closing or not open),
 * -ENOMEM, -EIO. */
int pk_wsc_send(struct pk_wsc *w, const struct iovec *iov, int n, size_t credit);

/* As pk_wsc_send for one buffer the caller no longer needs: masks it in place and writes
 * the frame without building a copy (only what the socket does not take at once is
 * copied and queued). buf holds masked bytes afterwards. */
int pk_wsc_send_inplace(struct pk_wsc *w, uint8_t *buf, size_t len);

/* Bytes queued towards the server. */
size_t pk_wsc_queued(const struct pk_wsc *w);

/* Back-pressure on what the server sends. */
void pk_wsc_read_stop(struct pk_wsc *w);
void pk_wsc_read_start(struct pk_wsc *w);

/* Starts a clean close: a close frame with code, then our half-close. on_closed follows
 * when the server answers or drops. Idempotent. */
void pk_wsc_close(struct pk_wsc *w, uint16_t code);

/* Drops the connection now; no callback follows. NULL is a no-op. */
void pk_wsc_free(struct pk_wsc *w);

#endif
