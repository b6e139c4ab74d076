/* The routing table over shm/db. See routes.h for the contract; comments here say why. */
#include "shm/routes.h"

#include <errno.h>
#include <string.h>

#include "common/log.h"

#define PK__SUB        "shm.routes"
#define PK__CLEAR_STEP 64 /* markers deleted per scan pass in clear_markers */

int pk_routes_valid_endpoint(const char *ep, size_t len)
{
	if (!ep || len == 0 || len > PK_ROUTE_MAX_ENDPOINT)
		return 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)ep[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* Copies a row out of the map when it has our size. The copy also fixes alignment: LMDB
 * gives no alignment guarantee for values. */
static int pk__row(const void *val, size_t vallen, struct pk_route *r)
{
	if (vallen != sizeof(*r))
		return 0;
	memcpy(r, val, sizeof(*r));
	return 1;
}

static void pk__log_skipped(const char *op, unsigned skipped)
{
	if (skipped)
		pk_log_debug(PK__SUB, "skipped rows of the wrong size", "op=%s rows=%u", op,
		             skipped);
}

/* ---- single-row writes ---- */

int pk_routes_add(struct pk_db *db, const char *endpoint, size_t len, const struct pk_route *r)
{
	if (!pk_routes_valid_endpoint(endpoint, len) || !r)
		return -EINVAL;
	return pk_db_put(db, PK_DB_ROUTES, endpoint, len, r, sizeof(*r));
}

int pk_routes_remove(struct pk_db *db, const char *endpoint, size_t len, const struct pk_route *r)
{
	if (!pk_routes_valid_endpoint(endpoint, len) || !r)
		return -EINVAL;
	return pk_db_del(db, PK_DB_ROUTES, endpoint, len, r, sizeof(*r));
}

struct pk__replace {
	const char *ep;
	size_t len;
	const struct pk_route *old, *new_row;
};

static int pk__replace_fn(struct pk_db_txn *t, void *ud)
{
	const struct pk__replace *a = ud;
	int rc = pk_db_txn_del(t, PK_DB_ROUTES, a->ep, a->len, a->old, sizeof(*a->old));

	if (rc < 0)
		return rc;
	return pk_db_txn_put(t, PK_DB_ROUTES, a->ep, a->len, a->new_row, sizeof(*a->new_row), 0);
}

int pk_routes_replace(struct pk_db *db, const char *endpoint, size_t len,
                      const struct pk_route *old, const struct pk_route *new_row)
{
	struct pk__replace a = {endpoint, len, old, new_row};

	if (!pk_routes_valid_endpoint(endpoint, len) || !old || !new_row)
		return -EINVAL;
	return pk_db_write(db, pk__replace_fn, &a);
}

/* ---- lookup ---- */

struct pk__lookup {
	size_t len;
	uint64_t now_ms;
	struct pk_route *out;
	int max, n, markers;
	unsigned skipped;
};

static int pk__lookup_cb(const void *key, size_t keylen, const void *val, size_t vallen, void *ud)
{
	struct pk__lookup *l = ud;
	struct pk_route r;

	/* The exact key sorts before every longer key sharing its prefix, so the first
	 * longer key means our rows are done. */
	if (keylen != l->len)
		return 1;
	(void)key;
	if (!pk__row(val, vallen, &r)) {
		l->skipped++;
		return 0;
	}
	if (pk_route_is_marker(&r)) {
		if (r.since_ms >= l->now_ms)
			l->markers++;
		return 0;
	}
	if (l->n < l->max)
		l->out[l->n++] = r;
	return 0;
}

int pk_routes_lookup(struct pk_db *db, const char *endpoint, size_t len, uint64_t now_ms,
                     struct pk_route *out, int max, int *n, int *markers)
{
	struct pk__lookup l = {.len = len, .now_ms = now_ms, .out = out, .max = max};
	int rc;

	if (n)
		*n = 0;
	if (markers)
		*markers = 0;
	if (!pk_routes_valid_endpoint(endpoint, len) || !n || max < 0 || (!out && max > 0))
		return -EINVAL;
	rc = pk_db_scan(db, PK_DB_ROUTES, endpoint, len, pk__lookup_cb, &l);
	pk__log_skipped("lookup", l.skipped);
	if (rc < 0)
		return rc;
	*n = l.n;
	if (markers)
		*markers = l.markers;
	return 0;
}

/* ---- bulk deletes ---- */

struct pk__match {
	uint32_t slot;    /* purge_slot: the slot to delete */
	uint64_t now_ms;  /* purge_expired_markers: markers expiring before this go */
	int markers;      /* nonzero: match expired markers, else rows of slot */
	unsigned skipped; /* rows of the wrong size (a replayed txn may count twice) */
};

static int pk__match_cb(const void *key, size_t keylen, const void *val, size_t vallen, void *ud)
{
	struct pk__match *m = ud;
	struct pk_route r;

	(void)key;
	(void)keylen;
	if (!pk__row(val, vallen, &r)) {
		m->skipped++;
		return 0;
	}
	if (m->markers)
		return pk_route_is_marker(&r) && r.since_ms < m->now_ms;
	return r.slot == m->slot;
}

int pk_routes_purge_slot(struct pk_db *db, uint32_t slot)
{
	struct pk__match m = {.slot = slot};
	int rc;

	if (slot == PK_ROUTE_SLOT_MARKER)
		return -EINVAL;
	rc = pk_db_del_matching(db, PK_DB_ROUTES, pk__match_cb, &m);
	pk__log_skipped("purge_slot", m.skipped);
	return rc;
}

int pk_routes_purge_expired_markers(struct pk_db *db, uint64_t now_ms)
{
	struct pk__match m = {.now_ms = now_ms, .markers = 1};
	int rc = pk_db_del_matching(db, PK_DB_ROUTES, pk__match_cb, &m);

	pk__log_skipped("purge_expired_markers", m.skipped);
	return rc;
}

/* clear_markers: a txn scan may not write, so each pass collects up to PK__CLEAR_STEP
 * markers of the endpoint and deletes them after the scan; passes repeat until one finds
 * fewer. Only the endpoint's own rows are visited. */
struct pk__clear {
	const char *ep;
	size_t len;
	struct pk_route found[PK__CLEAR_STEP];
	int nfound;
	unsigned skipped;
};

static int pk__clear_scan_cb(const void *key, size_t keylen, const void *val, size_t vallen,
                             void *ud)
{
	struct pk__clear *c = ud;
	struct pk_route r;

	(void)key;
	if (keylen != c->len)
		return 1;
	if (!pk__row(val, vallen, &r)) {
		c->skipped++;
		return 0;
	}
	if (!pk_route_is_marker(&r))
		return 0;
	c->found[c->nfound++] = r;
	return c->nfound == PK__CLEAR_STEP;
}

static int pk__clear_fn(struct pk_db_txn *t, void *ud)
{
	struct pk__clear *c = ud;
	int total = 0, rc;

	c->skipped = 0; /* the function is replayed after a map growth */
	do {
		c->nfound = 0;
		rc = pk_db_txn_scan(t, PK_DB_ROUTES, c->ep, c->len, c->ep, c->len,
		                    pk__clear_scan_cb, c);
		if (rc < 0)
			return rc;
		for (int i = 0; i < c->nfound; i++) {
			rc = pk_db_txn_del(t, PK_DB_ROUTES, c->ep, c->len, &c->found[i],
			                   sizeof(c->found[i]));
			if (rc < 0)
				return rc;
			total++;
		}
	} while (c->nfound == PK__CLEAR_STEP);
	return total;
}

int pk_routes_clear_markers(struct pk_db *db, const char *endpoint, size_t len)
{
	struct pk__clear c = {.ep = endpoint, .len = len};
	int rc;

	if (!pk_routes_valid_endpoint(endpoint, len))
		return -EINVAL;
	rc = pk_db_write(db, pk__clear_fn, &c);
	pk__log_skipped("clear_markers", c.skipped);
	return rc;
}

/* ---- walks for the admin API ---- */

/* foreach_endpoint groups a key's rows: the current key is held until a different key (or
 * the end of the table) shows up, then reported if it had a tunnel. */
struct pk__group {
	pk_routes_endpoint_cb cb;
	void *ud;
	char key[PK_DB_MAX_KEY];
	size_t keylen;
	unsigned tunnels;
	int reported;
	unsigned skipped;
};

static int pk__group_flush(struct pk__group *g)
{
	int r = 0;

	if (g->keylen > 0 && g->tunnels > 0) {
		r = g->cb(g->key, g->keylen, g->tunnels, g->ud);
		if (r >= 0)
			g->reported++;
	}
	g->keylen = 0;
	g->tunnels = 0;
	return r;
}

static int pk__group_cb(const void *key, size_t keylen, const void *val, size_t vallen, void *ud)
{
	struct pk__group *g = ud;
	struct pk_route r;

	if (keylen != g->keylen || memcmp(key, g->key, keylen) != 0) {
		int rc = pk__group_flush(g);

		if (rc != 0)
			return rc;
		/* Keys are bounded by shm/db (PK_DB_MAX_KEY), so the copy always fits. */
		memcpy(g->key, key, keylen);
		g->keylen = keylen;
	}
	if (!pk__row(val, vallen, &r))
		g->skipped++;
	else if (!pk_route_is_marker(&r))
		g->tunnels++;
	return 0;
}

int pk_routes_foreach_endpoint(struct pk_db *db, pk_routes_endpoint_cb cb, void *ud)
{
	struct pk__group g = {.cb = cb, .ud = ud};
	int rc;

	if (!cb)
		return -EINVAL;
	rc = pk_db_scan(db, PK_DB_ROUTES, NULL, 0, pk__group_cb, &g);
	/* A scan stopped by cb (rc counts visits, cb said stop) leaves keylen 0 after the
	 * flush that stopped it; otherwise the last endpoint is still held. */
	if (rc >= 0)
		rc = pk__group_flush(&g);
	pk__log_skipped("foreach_endpoint", g.skipped);
	return rc < 0 ? rc : g.reported;
}

struct pk__each {
	pk_routes_row_cb cb;
	void *ud;
	unsigned skipped;
};

static int pk__each_cb(const void *key, size_t keylen, const void *val, size_t vallen, void *ud)
{
	struct pk__each *e = ud;
	struct pk_route r;

	if (!pk__row(val, vallen, &r)) {
		e->skipped++;
		return 0;
	}
	return e->cb(key, keylen, &r, e->ud);
}

int pk_routes_foreach(struct pk_db *db, pk_routes_row_cb cb, void *ud)
{
	struct pk__each e = {.cb = cb, .ud = ud};
	int rc;

	if (!cb)
		return -EINVAL;
	rc = pk_db_scan(db, PK_DB_ROUTES, NULL, 0, pk__each_cb, &e);
	pk__log_skipped("foreach", e.skipped);
	if (rc < 0 || e.skipped == 0)
		return rc;
	/* pk_db_scan counted the skipped rows as visits; the contract counts rows given to cb. */
	return rc - (int)e.skipped;
}
