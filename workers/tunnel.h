/* A tunnel: one agent's WebSocket connection carrying a yamux session in which pikod is
 * the server and opens one stream per proxied request (PROTOCOL.md sections 1-4).
 *
 * The upstream port (upstream.c) does the HTTP handshake and hands the connected socket
 * over with pk_tunnel_start(); from then on this module owns it: it registers the route in
 * the shared table, pings the agent, enforces token expiry, and removes the route when the
 * session ends for any reason.
 *
 * Streams are used by the proxy (proxy.c) through the pk_tunnel_stream_* calls. Flow
 * control is end to end: stream data is handed to the user, which reports consumption
 * once it has written the bytes on, so a slow reader stops the agent after one window.
 */
#ifndef PK_TUNNEL_H
#define PK_TUNNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

struct pk_worker;
struct pk_tunnel;

struct pk_tstream_ops {
	/* Bytes from the agent; valid during the call only. Report them with
	 * pk_tunnel_stream_consumed() once written on. */
	void (*on_data)(void *ud, const uint8_t *data, size_t len);
	/* The agent half-closed the stream. */
	void (*on_fin)(void *ud);
	/* The stream is gone (reset by the agent, tunnel closed): err < 0. No call follows and
	 * the id must not be used again. Not called after pk_tunnel_stream_reset(). */
	void (*on_close)(void *ud, int err);
	/* Sending may continue (after pk_tunnel_stream_send took less than offered). */
	void (*on_writable)(void *ud);
};

/* Takes over the accepted agent connection `tcp` (heap-allocated, initialised, data unused)
 * after the 101 answer was queued on it. `rest` are bytes read past the request head.
 * endpoint is copied. token_exp: the JWT's expiry (0 = none, or disconnect disabled).
 * Returns 0 or -errno (then the caller still owns tcp and closes it). */
int pk_tunnel_start(struct pk_worker *w, uv_tcp_t *tcp, const char *endpoint, const char *remote,
                    int64_t token_exp, const void *rest, size_t rest_len);

uint64_t pk_tunnel_id(const struct pk_tunnel *t);
const char *pk_tunnel_endpoint(const struct pk_tunnel *t);
/* Whether the tunnel can take new streams (open, not closing, not told to go away). */
int pk_tunnel_usable(const struct pk_tunnel *t);
/* In-flight streams. */
unsigned pk_tunnel_streams(const struct pk_tunnel *t);

/* Opens a stream. lazy: its SYN rides on its first frame (a request: the caller sends at
 * once); else the SYN goes now (a TCP endpoint, whose service may speak first). 0 and *id,
 * or -ECONNREFUSED (tunnel closing), -EBUSY (too many streams: the per-tunnel cap),
 * -ENOSPC, -EPIPE. */
int pk_tunnel_stream_open(struct pk_tunnel *t, const struct pk_tstream_ops *ops, void *ud, int lazy,
                          uint32_t *id);
/* Sends up to len bytes; returns how many were taken (0: wait for on_writable) or -errno. */
ssize_t pk_tunnel_stream_send(struct pk_tunnel *t, uint32_t id, const void *buf, size_t len);
int pk_tunnel_stream_consumed(struct pk_tunnel *t, uint32_t id, size_t n);
/* Half-closes our direction. */
int pk_tunnel_stream_fin(struct pk_tunnel *t, uint32_t id);
/* The FIN of a finished HTTP exchange: the agent is waiting for nothing from it, so it goes
 * with the next frames for the agent, or within 10 ms, instead of waking the agent alone. */
int pk_tunnel_stream_fin_lazy(struct pk_tunnel *t, uint32_t id);
/* Aborts the stream; no callback follows. */
void pk_tunnel_stream_reset(struct pk_tunnel *t, uint32_t id);

/* Writes the frames gathered for every agent now, instead of just before the loop polls. */
void pk_tunnel_flush_pending(void);
/* fn runs after every flush of the gathered frames (in the loop's prepare phase, or from
 * pk_tunnel_flush_pending). */
void pk_tunnel_after_flush(void (*fn)(void));

/* Draining: closes the tunnel once it has no stream in flight (now if idle), so its agent
 * reconnects to a worker that is not going away. */
void pk_tunnel_drain(struct pk_tunnel *t);

#endif
