/* One agent listener: a WebSocket + yamux session to the server's upstream port
 * (GET <url path>/piko/v1/upstream/<endpoint>), kept up forever.
 *
 * Reconnects with exponential backoff and jitter (100 ms doubling to 15 s, each wait drawn
 * from [d/2, d]; back to 100 ms after a successful upgrade) on a dropped connection, a close
 * from the server, a dead session (a yamux ping unanswered for connect.ping_timeout), and on
 * the retryable answers 408, 429, 500, 502, 503, 504 or no answer at all. Any other answer
 * (401 bad token, 404, ...) is fatal: on_fatal gets the server's JSON error message.
 *
 * The server opens streams; each one goes to a piko_stream handler. pk_agent_stop() sends
 * GoAway(0) (no new streams), lets in-flight streams finish, closes the WebSocket and calls
 * on_stopped.
 */
#ifndef PK_PIKO_AGENT_H
#define PK_PIKO_AGENT_H

#include "cli/piko_conf.h"

#include <uv.h>

#define PK_AGENT_BACKOFF_MIN_MS 100
#define PK_AGENT_BACKOFF_MAX_MS 15000

struct pk_agent;

struct pk_agent_hooks {
	/* The server refused the registration for good (status, its message). */
	void (*on_fatal)(struct pk_agent *a, int status, const char *msg);
	/* pk_agent_stop/abort finished: no connection and no stream is left. */
	void (*on_stopped)(struct pk_agent *a);
};

/* Creates the listener and starts connecting. conf and l must outlive it. 0 or -ENOMEM. */
int pk_agent_new(uv_loop_t *loop, struct pk_conf *conf, struct pk_conf_listener *l,
                 const struct pk_agent_hooks *hooks, struct pk_agent **out);

/* Graceful stop (SIGTERM): GoAway(0), finish in-flight streams, close. Idempotent. */
void pk_agent_stop(struct pk_agent *a);

/* Immediate stop: drops the session and every stream. on_stopped follows (once). */
void pk_agent_abort(struct pk_agent *a);

/* Releases a stopped listener. */
void pk_agent_free(struct pk_agent *a);

/* Whether the retryable statuses include status (0 = no answer). Exposed for tests. */
int pk_agent_retryable(int status);

#endif
