/* The node-local routing table: the "routes" database of shm/db (PK_DB_ROUTES, DUPSORT).
 *
 * Key: an endpoint id, its bytes without a terminating NUL ([A-Za-z0-9._-]{1,128}).
 * Values: a set of struct pk_route rows, fixed size, stored as-is (host byte order; the
 * table never leaves the machine). One row per tunnel registered for the endpoint, plus
 * "moving" markers (slot == PK_ROUTE_SLOT_MARKER): a draining worker that closes a tunnel
 * so its agent reconnects elsewhere leaves a marker saying "an upstream for this endpoint
 * is on its way back until since_ms", so a request waits (proxy.upstream_wait) instead of
 * failing or being forwarded. A real tunnel registering clears the markers.
 *
 * A row is identified by its bytes: removing needs the exact row that was added (keep the
 * struct you added; zero it before filling so the reserved bytes compare equal).
 *
 * Every function opens its own transaction through shm/db (one snapshot per read call,
 * one write transaction per write call) and returns a negative errno on failure with the
 * errors of shm/db (-EAGAIN, -ENOSPC, -EBADF for a handle inherited across fork, -EBUSY
 * when called from inside another call on the same handle, -EIO ...). Functions taking
 * an endpoint fail with -EINVAL unless pk_routes_valid_endpoint() accepts it.
 *
 * Values of another size found in the database are never interpreted: they are skipped
 * (left in place) and counted in a debug log record (subsystem "shm.routes").
 */
#ifndef PK_ROUTES_H
#define PK_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include "shm/db.h"

#define PK_ROUTE_MAX_ENDPOINT 128         /* endpoint ids: [A-Za-z0-9._-]{1,128} */
#define PK_ROUTE_SLOT_MARKER  0xffffffffu /* a "moving" marker, not a tunnel */

/* Route flags. */
#define PK_ROUTE_F_DRAINING 1u /* the worker holding the tunnel is draining: prefer others */

struct pk_route {
	uint32_t slot;       /* process-table slot of the worker holding the tunnel, or
	                        PK_ROUTE_SLOT_MARKER */
	uint32_t generation; /* that worker's generation */
	uint64_t tunnel_id;  /* unique within the node */
	uint32_t ctr_slot;   /* counters-region tunnel slot (in-flight streams), with its tag */
	uint32_t ctr_tag;
	uint64_t since_ms; /* CLOCK_MONOTONIC ms when registered; markers: when it expires */
	uint32_t flags;    /* PK_ROUTE_F_* */
	uint32_t reserved; /* zero */
	int64_t token_exp; /* the agent token's expiry (unix seconds), 0 = none */
	char remote[48];   /* the agent's address "ip:port", NUL-terminated */
};

_Static_assert(sizeof(struct pk_route) == 96, "pk_route is stored as-is: 96 bytes");

/* Whether a row is a moving marker rather than a tunnel. */
static inline int pk_route_is_marker(const struct pk_route *r)
{
	return r->slot == PK_ROUTE_SLOT_MARKER;
}

/* 1 if ep[0..len) is a valid endpoint id ([A-Za-z0-9._-]{1,128}), else 0. ep need not be
 * NUL-terminated; NULL is invalid. */
int pk_routes_valid_endpoint(const char *ep, size_t len);

/* Adds row r to endpoint's set. Adding a row that is already there is a no-op (0).
 * Errors: -EINVAL (bad endpoint, r NULL), and shm/db's write errors. */
int pk_routes_add(struct pk_db *db, const char *endpoint, size_t len, const struct pk_route *r);

/* Removes exactly row r (all 40 bytes compared) from endpoint's set. 0, -ENOENT when that
 * row is absent, -EINVAL, or shm/db's write errors. */
int pk_routes_remove(struct pk_db *db, const char *endpoint, size_t len, const struct pk_route *r);

/* Replaces row old by row new in one write transaction (e.g. to set PK_ROUTE_F_DRAINING
 * without a moment when the tunnel is missing). -ENOENT (nothing changed) when old is
 * absent; new may equal old (then it is a no-op). Errors as pk_routes_add. */
int pk_routes_replace(struct pk_db *db, const char *endpoint, size_t len,
                      const struct pk_route *old, const struct pk_route *new_row);

/* Looks an endpoint up in one read snapshot. Copies up to max of its rows into out, in
 * value order, leaving out the markers; *n gets the number copied. *markers (may be NULL)
 * gets the number of live markers (since_ms >= now_ms); expired markers are ignored. Keys
 * that merely start with endpoint ("abc" for "ab") never match. Rows beyond max are not
 * copied: rows are ordered by their bytes (in practice by slot), so size max for the most
 * tunnels one endpoint should have. Returns 0 (also when nothing matched: *n == 0), or
 * -EINVAL (bad endpoint, max < 0, out NULL with max > 0, n NULL), or shm/db's read errors
 * (-EAGAIN, -EBADF, -EBUSY, -EIO). *n and *markers are 0 on failure. */
int pk_routes_lookup(struct pk_db *db, const char *endpoint, size_t len, uint64_t now_ms,
                     struct pk_route *out, int max, int *n, int *markers);

/* Deletes every row (tunnels and markers) whose slot is `slot`, across all endpoints, in
 * one write transaction: what a dead worker left behind. Visits the whole table. Returns
 * the number of rows deleted, or a negative errno (-EINVAL for slot ==
 * PK_ROUTE_SLOT_MARKER: markers are purged by expiry). */
int pk_routes_purge_slot(struct pk_db *db, uint32_t slot);

/* Deletes every marker whose expiry (since_ms) is < now_ms, in one write transaction.
 * Visits the whole table. Returns the number deleted, or a negative errno. */
int pk_routes_purge_expired_markers(struct pk_db *db, uint64_t now_ms);

/* Deletes every marker of endpoint (live or expired) in one write transaction; called when
 * a real tunnel registers. Visits only that endpoint's rows. Returns the number deleted
 * (0 when there were none), or a negative errno. */
int pk_routes_clear_markers(struct pk_db *db, const char *endpoint, size_t len);

/* Callback of pk_routes_foreach_endpoint: ep (not NUL-terminated, len bytes) has `tunnels`
 * non-marker rows (>= 1). Return 0 to go on, > 0 to stop, < 0 to abort (the call returns
 * that value). ep is valid only during the call. */
typedef int (*pk_routes_endpoint_cb)(const char *ep, size_t len, unsigned tunnels, void *ud);

/* Calls cb once per endpoint that has at least one tunnel, in key order, all from one read
 * snapshot (for the admin API's endpoint list). cb runs while the snapshot is open: it must
 * not call into the same db handle (that fails with -EBUSY) and should be quick. Returns
 * the number of endpoints passed to cb, or a negative errno (cb's own included). */
int pk_routes_foreach_endpoint(struct pk_db *db, pk_routes_endpoint_cb cb, void *ud);

/* Callback of pk_routes_foreach: one row (markers included: check pk_route_is_marker).
 * Return values and lifetime as pk_routes_endpoint_cb; r points to a copy. */
typedef int (*pk_routes_row_cb)(const char *ep, size_t len, const struct pk_route *r, void *ud);

/* Calls cb for every (endpoint, row) pair, in key then value order, from one read
 * snapshot (for the admin upstreams list). Same rules as pk_routes_foreach_endpoint.
 * Returns the number of rows passed to cb, or a negative errno. */
int pk_routes_foreach(struct pk_db *db, pk_routes_row_cb cb, void *ud);

#endif
