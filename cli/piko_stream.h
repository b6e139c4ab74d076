/* What the agent does with one yamux stream the server opened (PROTOCOL.md section 4).
 *
 * HTTP listener: the stream carries one HTTP/1.1 request. It is parsed, sent to the local
 * service over a kept-alive connection from the listener's pool (hop-by-hop headers removed,
 * Host and the body kept byte-exact), and the answer is relayed back, then FIN. A 101 answer
 * to a WebSocket upgrade turns the stream into a splice. Failures before the answer's head
 * become Piko's JSON errors: 502 {"error":"upstream unreachable"} (connect refused, reset,
 * malformed answer) and 504 {"error":"upstream timeout"} (no head within the listener's
 * timeout).
 *
 * TCP listener: the stream is spliced to a new connection to the service; FIN in either
 * direction is a half-close in the other.
 *
 * Flow control is end to end: received stream bytes are reported with pk_yamux_consumed()
 * only once they are written to the service, and the service is not read while the stream's
 * send window is closed.
 */
#ifndef PK_PIKO_STREAM_H
#define PK_PIKO_STREAM_H

#include "cli/piko_conf.h"
#include "proto/yamux.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Idle keep-alive connections to one listener's service. */
struct pk_pool;

#define PK_POOL_MAX_IDLE 256
#define PK_POOL_IDLE_MS  60000

/* Creates the pool for listener l (which must outlive it). 0 or -ENOMEM. */
int pk_pool_new(uv_loop_t *loop, struct pk_conf_listener *l, struct pk_pool **out);
/* Closes every idle connection and releases the pool (after its timer closed). */
void pk_pool_free(struct pk_pool *p);

/* Everything a stream handler needs; copied into the handler. */
struct pk_strm_env {
	uv_loop_t *loop;
	struct pk_yamux_session *ys;
	struct pk_conf_listener *listener;
	struct pk_pool *pool;
};

struct pk_strm;

/* A new stream `id` on env->ys. Returns the handler (attach it as the stream user) or NULL
 * (out of memory: reject the stream). */
struct pk_strm *pk_strm_new(const struct pk_strm_env *env, uint32_t id);

/* The session's stream callbacks, forwarded. After pk_strm_gone() the handler no longer
 * touches the session and frees itself once its connection is closed. */
void pk_strm_data(struct pk_strm *h, const uint8_t *data, size_t len);
void pk_strm_fin(struct pk_strm *h);
void pk_strm_window(struct pk_strm *h);
void pk_strm_gone(struct pk_strm *h);

/* Closes the connections of handlers whose stream is already gone (finished splices still
 * writing their last bytes): called once every session is down, at exit. */
void pk_strm_close_all(void);

/* Live handlers (for shutdown and tests). */
unsigned pk_strm_live(void);

#endif
