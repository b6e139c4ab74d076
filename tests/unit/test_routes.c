/* Tests for shm/routes: the routing table over the LMDB adapter. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tmpdir.h"
#include "shm/routes.h"

static char tdir[64];
static char envdir[PATH_MAX];

static void setup(void)
{
	strcpy(tdir, "/tmp/pk-routes-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir));
	snprintf(envdir, sizeof(envdir), "%s/env", tdir);
}

static void teardown(void)
{
	rm_tree(tdir);
}

TestSuite(routes, .init = setup, .fini = teardown);

static struct pk_db *open_db(void)
{
	struct pk_db *db = NULL;
	int rc = pk_db_open(&db, envdir, NULL);

	cr_assert_eq(rc, 0, "open %s: %s", envdir, pk_db_strerror(rc));
	return db;
}

static struct pk_route tunnel(uint32_t slot, uint64_t id)
{
	struct pk_route r;

	memset(&r, 0, sizeof(r));
	r.slot = slot;
	r.generation = 1;
	r.tunnel_id = id;
	r.ctr_slot = (uint32_t)id;
	r.ctr_tag = 7;
	r.since_ms = 1000;
	return r;
}

static struct pk_route marker(uint64_t id, uint64_t expires_ms)
{
	struct pk_route r = tunnel(PK_ROUTE_SLOT_MARKER, id);

	r.since_ms = expires_ms;
	return r;
}

#define EP(s) (s), strlen(s)

static int lookup(struct pk_db *db, const char *ep, uint64_t now, struct pk_route *out, int max,
                  int *markers)
{
	int n = -1, rc = pk_routes_lookup(db, ep, strlen(ep), now, out, max, &n, markers);

	cr_assert_eq(rc, 0, "lookup %s: %s", ep, pk_db_strerror(rc));
	return n;
}

Test(routes, add_lookup_remove)
{
	struct pk_db *db = open_db();
	struct pk_route a = tunnel(1, 10), b = tunnel(2, 20), out[8];
	int markers = -1;

	cr_assert_eq(pk_routes_add(db, EP("api"), &a), 0);
	cr_assert_eq(pk_routes_add(db, EP("api"), &b), 0);
	cr_assert_eq(pk_routes_add(db, EP("api"), &a), 0, "adding a row twice is a no-op");
	cr_assert_eq(lookup(db, "api", 0, out, 8, &markers), 2);
	cr_assert_eq(markers, 0);
	cr_assert_eq(memcmp(&out[0], &a, sizeof(a)), 0);
	cr_assert_eq(memcmp(&out[1], &b, sizeof(b)), 0);

	cr_assert_eq(pk_routes_remove(db, EP("api"), &a), 0);
	cr_assert_eq(pk_routes_remove(db, EP("api"), &a), -ENOENT);
	cr_assert_eq(lookup(db, "api", 0, out, 8, NULL), 1);
	cr_assert_eq(out[0].tunnel_id, 20);
	cr_assert_eq(pk_routes_remove(db, EP("api"), &b), 0);
	cr_assert_eq(lookup(db, "api", 0, out, 8, NULL), 0);
	pk_db_close(db);
}

Test(routes, remove_needs_the_exact_row)
{
	struct pk_db *db = open_db();
	struct pk_route a = tunnel(1, 10), other = a, out[2];

	cr_assert_eq(pk_routes_add(db, EP("api"), &a), 0);
	other.flags = PK_ROUTE_F_DRAINING;
	cr_assert_eq(pk_routes_remove(db, EP("api"), &other), -ENOENT);
	cr_assert_eq(lookup(db, "api", 0, out, 2, NULL), 1);
	pk_db_close(db);
}

Test(routes, replace_swaps_one_row_atomically)
{
	struct pk_db *db = open_db();
	struct pk_route a = tunnel(1, 10), d = a, out[4];

	d.flags = PK_ROUTE_F_DRAINING;
	cr_assert_eq(pk_routes_replace(db, EP("api"), &a, &d), -ENOENT);
	cr_assert_eq(lookup(db, "api", 0, out, 4, NULL), 0, "failed replace adds nothing");
	cr_assert_eq(pk_routes_add(db, EP("api"), &a), 0);
	cr_assert_eq(pk_routes_replace(db, EP("api"), &a, &d), 0);
	cr_assert_eq(lookup(db, "api", 0, out, 4, NULL), 1);
	cr_assert_eq(out[0].flags, PK_ROUTE_F_DRAINING);
	pk_db_close(db);
}

Test(routes, lookup_copies_at_most_max)
{
	struct pk_db *db = open_db();
	struct pk_route out[2];
	int n = -1;

	for (uint32_t i = 0; i < 5; i++) {
		struct pk_route r = tunnel(i, i);
		cr_assert_eq(pk_routes_add(db, EP("api"), &r), 0);
	}
	cr_assert_eq(lookup(db, "api", 0, out, 2, NULL), 2);
	cr_assert_eq(pk_routes_lookup(db, EP("api"), 0, NULL, 0, &n, NULL), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(pk_routes_lookup(db, EP("api"), 0, NULL, 1, &n, NULL), -EINVAL);
	pk_db_close(db);
}

Test(routes, prefix_endpoint_does_not_match_longer_one)
{
	struct pk_db *db = open_db();
	struct pk_route ab = tunnel(1, 1), abc = tunnel(2, 2), out[4];

	cr_assert_eq(pk_routes_add(db, EP("abc"), &abc), 0);
	cr_assert_eq(lookup(db, "ab", 0, out, 4, NULL), 0, "\"ab\" must not see \"abc\"");
	cr_assert_eq(pk_routes_add(db, EP("ab"), &ab), 0);
	cr_assert_eq(lookup(db, "ab", 0, out, 4, NULL), 1);
	cr_assert_eq(out[0].tunnel_id, 1);
	cr_assert_eq(lookup(db, "abc", 0, out, 4, NULL), 1);
	cr_assert_eq(out[0].tunnel_id, 2);
	cr_assert_eq(lookup(db, "a", 0, out, 4, NULL), 0);
	pk_db_close(db);
}

Test(routes, purge_slot_leaves_other_slots)
{
	struct pk_db *db = open_db();
	struct pk_route r1 = tunnel(1, 1), r2 = tunnel(2, 2), r3 = tunnel(1, 3), m = marker(9, 99);
	struct pk_route out[4];

	cr_assert_eq(pk_routes_add(db, EP("a"), &r1), 0);
	cr_assert_eq(pk_routes_add(db, EP("a"), &r2), 0);
	cr_assert_eq(pk_routes_add(db, EP("b"), &r3), 0);
	cr_assert_eq(pk_routes_add(db, EP("b"), &m), 0);
	cr_assert_eq(pk_routes_purge_slot(db, 1), 2);
	cr_assert_eq(lookup(db, "a", 0, out, 4, NULL), 1);
	cr_assert_eq(out[0].slot, 2);
	int markers = 0;
	cr_assert_eq(lookup(db, "b", 0, out, 4, &markers), 0);
	cr_assert_eq(markers, 1, "markers are not a slot's rows");
	cr_assert_eq(pk_routes_purge_slot(db, 1), 0);
	cr_assert_eq(pk_routes_purge_slot(db, PK_ROUTE_SLOT_MARKER), -EINVAL);
	pk_db_close(db);
}

Test(routes, markers_count_until_they_expire)
{
	struct pk_db *db = open_db();
	struct pk_route t = tunnel(1, 1), m1 = marker(1, 100), m2 = marker(2, 200), out[4];
	int markers = -1;

	cr_assert_eq(pk_routes_add(db, EP("api"), &m1), 0);
	cr_assert_eq(pk_routes_add(db, EP("api"), &m2), 0);
	cr_assert_eq(lookup(db, "api", 50, out, 4, &markers), 0, "markers are not tunnels");
	cr_assert_eq(markers, 2);
	cr_assert_eq(lookup(db, "api", 100, out, 4, &markers), 0);
	cr_assert_eq(markers, 2, "a marker is live up to its expiry");
	cr_assert_eq(lookup(db, "api", 101, out, 4, &markers), 0);
	cr_assert_eq(markers, 1);
	cr_assert_eq(lookup(db, "api", 201, out, 4, &markers), 0);
	cr_assert_eq(markers, 0);

	cr_assert_eq(pk_routes_add(db, EP("api"), &t), 0);
	cr_assert_eq(pk_routes_purge_expired_markers(db, 150), 1);
	cr_assert_eq(lookup(db, "api", 0, out, 4, &markers), 1);
	cr_assert_eq(markers, 1, "only the expired marker was purged");
	pk_db_close(db);
}

Test(routes, clear_markers_leaves_tunnels_and_other_endpoints)
{
	struct pk_db *db = open_db();
	struct pk_route t = tunnel(1, 1), out[4];
	int markers = -1;

	/* More markers than one clearing pass takes, to cover the repeat. */
	for (uint64_t i = 0; i < 150; i++) {
		struct pk_route m = marker(i, 1000);
		cr_assert_eq(pk_routes_add(db, EP("api"), &m), 0);
	}
	struct pk_route other = marker(1, 1000);
	cr_assert_eq(pk_routes_add(db, EP("api2"), &other), 0);
	cr_assert_eq(pk_routes_add(db, EP("api"), &t), 0);
	cr_assert_eq(pk_routes_clear_markers(db, EP("api")), 150);
	cr_assert_eq(lookup(db, "api", 0, out, 4, &markers), 1);
	cr_assert_eq(markers, 0);
	cr_assert_eq(lookup(db, "api2", 0, out, 4, &markers), 0);
	cr_assert_eq(markers, 1);
	cr_assert_eq(pk_routes_clear_markers(db, EP("api")), 0);
	pk_db_close(db);
}

Test(routes, rows_of_the_wrong_size_are_skipped)
{
	struct pk_db *db = open_db();
	struct pk_route t = tunnel(3, 3), out[4];
	unsigned char junk[12];

	memset(junk, 0xff, sizeof(junk)); /* would read as a marker expiring never */
	cr_assert_eq(pk_db_put(db, PK_DB_ROUTES, "api", 3, junk, sizeof(junk)), 0);
	cr_assert_eq(pk_routes_add(db, EP("api"), &t), 0);
	int markers = -1;
	cr_assert_eq(lookup(db, "api", 0, out, 4, &markers), 1);
	cr_assert_eq(markers, 0);
	cr_assert_eq(out[0].slot, 3);
	cr_assert_eq(pk_routes_purge_slot(db, 3), 1);
	cr_assert_eq(pk_routes_purge_expired_markers(db, UINT64_MAX), 0);
	size_t n = 0;
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, 1, "the junk row is left alone");
	pk_db_close(db);
}

struct seen {
	char buf[512];
	size_t len;
	int stop_after;
	int calls;
};

static int endpoint_cb(const char *ep, size_t len, unsigned tunnels, void *ud)
{
	struct seen *s = ud;

	s->len += (size_t)snprintf(s->buf + s->len, sizeof(s->buf) - s->len, "%.*s=%u;", (int)len,
	                           ep, tunnels);
	s->calls++;
	return s->stop_after && s->calls >= s->stop_after;
}

Test(routes, foreach_endpoint_counts_tunnels_not_markers)
{
	struct pk_db *db = open_db();
	struct pk_route a1 = tunnel(1, 1), a2 = tunnel(2, 2), b = tunnel(1, 3), m = marker(4, 9);
	struct seen s = {0};

	cr_assert_eq(pk_routes_foreach_endpoint(db, endpoint_cb, &s), 0);
	cr_assert_eq(s.calls, 0);
	cr_assert_eq(pk_routes_add(db, EP("b"), &b), 0);
	cr_assert_eq(pk_routes_add(db, EP("a"), &a2), 0);
	cr_assert_eq(pk_routes_add(db, EP("a"), &a1), 0);
	cr_assert_eq(pk_routes_add(db, EP("a"), &m), 0);
	cr_assert_eq(pk_routes_add(db, EP("m"), &m), 0); /* only a marker: not listed */
	cr_assert_eq(pk_routes_add(db, EP("z"), &b), 0);
	cr_assert_eq(pk_routes_foreach_endpoint(db, endpoint_cb, &s), 3);
	cr_assert_str_eq(s.buf, "a=2;b=1;z=1;");

	struct seen first = {.stop_after = 1};
	cr_assert_eq(pk_routes_foreach_endpoint(db, endpoint_cb, &first), 1);
	cr_assert_str_eq(first.buf, "a=2;");
	pk_db_close(db);
}

static int row_cb(const char *ep, size_t len, const struct pk_route *r, void *ud)
{
	struct seen *s = ud;

	s->len +=
	    (size_t)snprintf(s->buf + s->len, sizeof(s->buf) - s->len, "%.*s:%s%llu;", (int)len, ep,
	                     pk_route_is_marker(r) ? "m" : "t", (unsigned long long)r->tunnel_id);
	s->calls++;
	return 0;
}

Test(routes, foreach_visits_every_row_including_markers)
{
	struct pk_db *db = open_db();
	struct pk_route a = tunnel(1, 1), b = tunnel(1, 2), m = marker(3, 9);
	unsigned char junk[4] = {0};
	struct seen s = {0};

	cr_assert_eq(pk_routes_add(db, EP("x"), &a), 0);
	cr_assert_eq(pk_routes_add(db, EP("x"), &m), 0);
	cr_assert_eq(pk_routes_add(db, EP("y"), &b), 0);
	cr_assert_eq(pk_db_put(db, PK_DB_ROUTES, "y", 1, junk, sizeof(junk)), 0);
	cr_assert_eq(pk_routes_foreach(db, row_cb, &s), 3);
	cr_assert_str_eq(s.buf, "x:t1;x:m3;y:t2;");
	pk_db_close(db);
}

Test(routes, invalid_endpoints_are_refused)
{
	struct pk_db *db = open_db();
	struct pk_route r = tunnel(1, 1), out[1];
	int n = -1;

	cr_assert_eq(pk_routes_add(db, EP("a/b"), &r), -EINVAL);
	cr_assert_eq(pk_routes_add(db, "", 0, &r), -EINVAL);
	cr_assert_eq(pk_routes_lookup(db, "", 0, 0, out, 1, &n, NULL), -EINVAL,
	             "an empty key would scan the whole table");
	cr_assert_eq(n, 0);
	cr_assert_eq(pk_routes_remove(db, EP("a b"), &r), -EINVAL);
	cr_assert_eq(pk_routes_clear_markers(db, EP("*")), -EINVAL);
	pk_db_close(db);
}

Test(routes, valid_endpoint_table)
{
	char max[PK_ROUTE_MAX_ENDPOINT + 1];
	static const struct {
		const char *ep;
		int ok;
	} cases[] = {
	    {"a", 1},     {"my-service", 1}, {"A.b_c-9", 1}, {"...", 1}, {"", 0},
	    {"a b", 0},   {"a/b", 0},        {"a:b", 0},     {"é", 0},   {"a\n", 0},
	    {"a%20b", 0}, {"a\tb", 0},       {"host:80", 0}, {"x*y", 0}, {"a+b", 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		cr_expect_eq(pk_routes_valid_endpoint(cases[i].ep, strlen(cases[i].ep)),
		             cases[i].ok, "%s", cases[i].ep);
	cr_expect_eq(pk_routes_valid_endpoint("a\0b", 3), 0, "an embedded NUL is invalid");
	cr_expect_eq(pk_routes_valid_endpoint(NULL, 1), 0);
	cr_expect_eq(pk_routes_valid_endpoint("abc", 2), 1, "only len bytes are read");
	memset(max, 'x', sizeof(max));
	cr_expect_eq(pk_routes_valid_endpoint(max, PK_ROUTE_MAX_ENDPOINT), 1);
	cr_expect_eq(pk_routes_valid_endpoint(max, PK_ROUTE_MAX_ENDPOINT + 1), 0);
}

/* Several processes, each with its own environment opened after fork, add and remove rows
 * of the same endpoint at once; the table must end up exactly as the sum of their work. */
#define PROCS 4
#define ROWS  200

static int child_work(uint32_t slot)
{
	struct pk_db *db = NULL;
	int bad = 0;

	if (pk_db_open(&db, envdir, NULL) != 0)
		return 2;
	for (uint64_t i = 0; i < ROWS; i++) {
		struct pk_route r = tunnel(slot, i);
		if (pk_routes_add(db, EP("shared"), &r) != 0)
			bad = 1;
		struct pk_route l[1];
		int n = -1;
		if (pk_routes_lookup(db, EP("shared"), 0, l, 1, &n, NULL) != 0 || n != 1)
			bad = 1;
		if (i % 2 == 0 && pk_routes_remove(db, EP("shared"), &r) != 0)
			bad = 1;
	}
	pk_db_close(db);
	return bad;
}

Test(routes, concurrent_processes_end_consistent)
{
	pid_t pids[PROCS];

	for (int p = 0; p < PROCS; p++) {
		pids[p] = fork();
		cr_assert_geq(pids[p], 0);
		if (pids[p] == 0)
			_exit(child_work((uint32_t)p));
	}
	for (int p = 0; p < PROCS; p++) {
		int st = 0;
		cr_assert_eq(waitpid(pids[p], &st, 0), pids[p]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status %d", p, st);
	}

	struct pk_db *db = open_db();
	static struct pk_route out[PROCS * ROWS];
	int seen[PROCS][ROWS] = {{0}};
	int n = lookup(db, "shared", 0, out, PROCS * ROWS, NULL);

	cr_assert_eq(n, PROCS * ROWS / 2);
	for (int i = 0; i < n; i++) {
		cr_assert_lt(out[i].slot, PROCS);
		cr_assert_lt(out[i].tunnel_id, ROWS);
		cr_assert_eq(out[i].tunnel_id % 2, 1, "even rows were removed");
		seen[out[i].slot][out[i].tunnel_id]++;
	}
	for (int p = 0; p < PROCS; p++)
		for (int i = 1; i < ROWS; i += 2)
			cr_assert_eq(seen[p][i], 1, "slot %d row %d", p, i);
	cr_assert_eq(pk_routes_purge_slot(db, 2), ROWS / 2);
	cr_assert_eq(lookup(db, "shared", 0, out, PROCS * ROWS, NULL), (PROCS - 1) * ROWS / 2);
	pk_db_close(db);
}
