/* One forwarder: a local TCP listener whose every connection becomes a WebSocket to
 * <url path>/_piko/v1/tcp/<endpoint> on the server's proxy port, spliced both ways
 * (PROTOCOL.md section 4). Local bytes go out as binary messages; the server's payloads are
 * written to the local connection. A local EOF sends a close frame; the server's close (or
 * drop) half-closes the local connection. Back-pressure: each side stops reading while more
 * than PK_FWD_HIGH_WATER bytes wait to be written on the other.
 */
#ifndef PK_PIKO_FWD_H
#define PK_PIKO_FWD_H

#include "cli/piko_conf.h"

#include <uv.h>

#define PK_FWD_HIGH_WATER (1024 * 1024)
#define PK_FWD_LOW_WATER  (256 * 1024)
#define PK_FWD_MAX_CONNS  4096

struct pk_fwd;

struct pk_fwd_hooks {
	/* pk_fwd_stop/abort finished: no connection is left. */
	void (*on_stopped)(struct pk_fwd *f);
};

/* Binds and listens on fc's address. conf and fc must outlive it. Returns 0 and *out, or
 * -errno (bind or listen failed; the error is logged). */
int pk_fwd_new(uv_loop_t *loop, struct pk_conf *conf, struct pk_conf_forwarder *fc,
               const struct pk_fwd_hooks *hooks, struct pk_fwd **out);

/* Stops accepting; on_stopped once the open connections have ended. Idempotent. */
void pk_fwd_stop(struct pk_fwd *f);
/* Stops accepting and drops every connection; on_stopped follows. */
void pk_fwd_abort(struct pk_fwd *f);
/* Releases a stopped forwarder. */
void pk_fwd_free(struct pk_fwd *f);

#endif
