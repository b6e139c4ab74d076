/* Tests for shm/db: the LMDB adapter. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tmpdir.h"
#include "shm/db.h"

static char tdir[64];

static void setup(void)
{
	strcpy(tdir, "/tmp/pk-db-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir));
}

static void teardown(void)
{
	rm_tree(tdir);
}

TestSuite(db, .init = setup, .fini = teardown);

static struct pk_db *open_db(const char *sub, const struct pk_db_options *opt)
{
	char path[PATH_MAX];
	struct pk_db *db = NULL;

	snprintf(path, sizeof(path), "%s/%s", tdir, sub);
	int rc = pk_db_open(&db, path, opt);
	cr_assert_eq(rc, 0, "open %s: %s", path, pk_db_strerror(rc));
	return db;
}

/* Collects rows as "key=value" strings joined by ';'. */
struct collect {
	char buf[4096];
	size_t len;
	int stop_after; /* return 1 after this many rows (0: never) */
	int seen;
};

static int collect_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	struct collect *c = ud;
	int n = snprintf(c->buf + c->len, sizeof(c->buf) - c->len, "%.*s=%.*s;", (int)kl,
	                 (const char *)k, (int)vl, (const char *)v);

	c->len += (size_t)n;
	c->seen++;
	return c->stop_after && c->seen >= c->stop_after ? 1 : 0;
}

static void put_s(struct pk_db *db, enum pk_db_which w, const char *k, const char *v)
{
	int rc = pk_db_put(db, w, k, strlen(k), v, strlen(v));
	cr_assert_eq(rc, 0, "put %s: %s", k, pk_db_strerror(rc));
}

/* ---- basic semantics ---- */

Test(db, put_get_overwrite_del)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[32];
	size_t len = 0;

	put_s(db, PK_DB_META, "k", "one");
	cr_assert_eq(pk_db_get(db, PK_DB_META, "k", 1, buf, sizeof(buf), &len), 0);
	cr_assert_eq(len, 3);
	cr_assert_arr_eq(buf, "one", 3);

	put_s(db, PK_DB_META, "k", "second");
	cr_assert_eq(pk_db_get(db, PK_DB_META, "k", 1, buf, sizeof(buf), &len), 0);
	cr_assert_eq(len, 6);
	cr_assert_arr_eq(buf, "second", 6);

	cr_assert_eq(pk_db_del(db, PK_DB_META, "k", 1, NULL, 0), 0);
	cr_assert_eq(pk_db_get(db, PK_DB_META, "k", 1, buf, sizeof(buf), &len), -ENOENT);
	cr_assert_eq(pk_db_del(db, PK_DB_META, "k", 1, NULL, 0), -ENOENT);
	pk_db_close(db);
}

Test(db, get_small_buffer_reports_needed_size)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[4] = "xxx";
	size_t len = 0;

	put_s(db, PK_DB_NODES, "n1", "0123456789");
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, "n1", 2, buf, 3, &len), -ENOBUFS);
	cr_assert_eq(len, 10);
	cr_assert_str_eq(buf, "xxx");
	pk_db_close(db);
}

Test(db, databases_are_separate)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[8];
	size_t len;

	put_s(db, PK_DB_NODES, "same", "nodes");
	cr_assert_eq(pk_db_get(db, PK_DB_REMOTE, "same", 4, buf, sizeof(buf), &len), -ENOENT);
	cr_assert_eq(pk_db_get(db, PK_DB_LOG, "same", 4, buf, sizeof(buf), &len), -ENOENT);
	pk_db_close(db);
}

Test(db, data_survives_reopen)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[8];
	size_t len;

	put_s(db, PK_DB_META, "persist", "yes");
	pk_db_close(db);
	db = open_db("env", NULL);
	cr_assert_eq(pk_db_get(db, PK_DB_META, "persist", 7, buf, sizeof(buf), &len), 0);
	cr_assert_arr_eq(buf, "yes", 3);
	pk_db_close(db);
}

Test(db, scan_prefix_in_key_order)
{
	struct pk_db *db = open_db("env", NULL);
	struct collect c = {0};

	put_s(db, PK_DB_REMOTE, "b/1", "x");
	put_s(db, PK_DB_REMOTE, "a/2", "q");
	put_s(db, PK_DB_REMOTE, "a/1", "p");
	put_s(db, PK_DB_REMOTE, "a", "bare");
	cr_assert_eq(pk_db_scan(db, PK_DB_REMOTE, "a/", 2, collect_cb, &c), 2);
	cr_assert_str_eq(c.buf, "a/1=p;a/2=q;");

	memset(&c, 0, sizeof(c));
	cr_assert_eq(pk_db_scan(db, PK_DB_REMOTE, NULL, 0, collect_cb, &c), 4);
	cr_assert_str_eq(c.buf, "a=bare;a/1=p;a/2=q;b/1=x;");

	memset(&c, 0, sizeof(c));
	cr_assert_eq(pk_db_scan(db, PK_DB_REMOTE, "zz", 2, collect_cb, &c), 0);
	cr_assert_eq(c.seen, 0);
	pk_db_close(db);
}

Test(db, scan_callback_stops_early)
{
	struct pk_db *db = open_db("env", NULL);
	struct collect c = {.stop_after = 2};

	put_s(db, PK_DB_REMOTE, "a", "1");
	put_s(db, PK_DB_REMOTE, "b", "2");
	put_s(db, PK_DB_REMOTE, "c", "3");
	cr_assert_eq(pk_db_scan(db, PK_DB_REMOTE, NULL, 0, collect_cb, &c), 2);
	cr_assert_str_eq(c.buf, "a=1;b=2;");
	pk_db_close(db);
}

static int fail_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	return -ECANCELED;
}

Test(db, scan_callback_error_is_returned)
{
	struct pk_db *db = open_db("env", NULL);

	put_s(db, PK_DB_REMOTE, "a", "1");
	cr_assert_eq(pk_db_scan(db, PK_DB_REMOTE, NULL, 0, fail_cb, NULL), -ECANCELED);
	/* The handle is usable afterwards: the read txn was reset. */
	put_s(db, PK_DB_REMOTE, "b", "2");
	pk_db_close(db);
}

static void log_key(unsigned char key[9], char origin, uint64_t seq)
{
	key[0] = (unsigned char)origin;
	for (int i = 0; i < 8; i++)
		key[1 + i] = (unsigned char)(seq >> (56 - 8 * i));
}

static int seq_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	uint64_t *out = ud, s = 0;

	cr_assert_eq(kl, 9);
	for (int i = 0; i < 8; i++)
		s = s << 8 | ((const unsigned char *)k)[1 + i];
	*out = s;
	return 0;
}

static int count_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	(*(int *)ud)++;
	return 0;
}

Test(db, last_and_scan_from_on_log_keys)
{
	struct pk_db *db = open_db("env", NULL);
	unsigned char key[9], start[9];
	uint64_t seq = 0;
	int n = 0;

	for (uint64_t s = 1; s <= 300; s++) {
		log_key(key, 'A', s);
		cr_assert_eq(pk_db_put(db, PK_DB_LOG, key, 9, "e", 1), 0);
	}
	for (uint64_t s = 1; s <= 7; s++) {
		log_key(key, 'B', s);
		cr_assert_eq(pk_db_put(db, PK_DB_LOG, key, 9, "e", 1), 0);
	}
	cr_assert_eq(pk_db_last(db, PK_DB_LOG, "A", 1, seq_cb, &seq), 0);
	cr_assert_eq(seq, 300);
	cr_assert_eq(pk_db_last(db, PK_DB_LOG, "B", 1, seq_cb, &seq), 0);
	cr_assert_eq(seq, 7);
	cr_assert_eq(pk_db_last(db, PK_DB_LOG, "C", 1, seq_cb, &seq), -ENOENT);
	cr_assert_eq(pk_db_last(db, PK_DB_LOG, "0", 1, seq_cb, &seq), -ENOENT);

	log_key(start, 'A', 291);
	cr_assert_eq(pk_db_scan_from(db, PK_DB_LOG, start, 9, "A", 1, count_cb, &n), 10);
	cr_assert_eq(n, 10);
	pk_db_close(db);
}

Test(db, last_with_all_ff_prefix)
{
	struct pk_db *db = open_db("env", NULL);
	const unsigned char k1[] = {0xff, 0xff, 0x01}, k2[] = {0xff, 0xff, 0x02};
	uint64_t dummy;
	struct collect c = {0};

	cr_assert_eq(pk_db_put(db, PK_DB_META, k1, 3, "a", 1), 0);
	cr_assert_eq(pk_db_put(db, PK_DB_META, k2, 3, "b", 1), 0);
	(void)dummy;
	cr_assert_eq(pk_db_last(db, PK_DB_META, "\xff\xff", 2, collect_cb, &c), 0);
	cr_assert_eq(c.seen, 1);
	cr_assert_str_eq(c.buf, "\xff\xff\x02=b;");
	pk_db_close(db);
}

Test(db, count_and_clear)
{
	struct pk_db *db = open_db("env", NULL);
	size_t n = 99;

	put_s(db, PK_DB_ROUTES, "ep", "t1");
	put_s(db, PK_DB_ROUTES, "ep", "t2");
	put_s(db, PK_DB_ROUTES, "other", "t1");
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(pk_db_clear(db, PK_DB_ROUTES), 0);
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, 0);
	pk_db_close(db);
}

/* ---- DUPSORT routes ---- */

Test(db, routes_hold_a_set_of_values_per_key)
{
	struct pk_db *db = open_db("env", NULL);
	struct collect c = {0};
	size_t n;

	put_s(db, PK_DB_ROUTES, "ep", "t3");
	put_s(db, PK_DB_ROUTES, "ep", "t1");
	put_s(db, PK_DB_ROUTES, "ep", "t2");
	put_s(db, PK_DB_ROUTES, "ep", "t2"); /* adding a member twice is a no-op */
	put_s(db, PK_DB_ROUTES, "ep2", "t9");
	cr_assert_eq(pk_db_scan(db, PK_DB_ROUTES, "ep", 2, collect_cb, &c), 4);
	cr_assert_str_eq(c.buf, "ep=t1;ep=t2;ep=t3;ep2=t9;");
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, 4);
	pk_db_close(db);
}

Test(db, routes_delete_one_exact_pair)
{
	struct pk_db *db = open_db("env", NULL);
	struct collect c = {0};

	put_s(db, PK_DB_ROUTES, "ep", "t1");
	put_s(db, PK_DB_ROUTES, "ep", "t2");
	put_s(db, PK_DB_ROUTES, "ep", "t3");
	cr_assert_eq(pk_db_del(db, PK_DB_ROUTES, "ep", 2, "t2", 2), 0);
	cr_assert_eq(pk_db_del(db, PK_DB_ROUTES, "ep", 2, "t2", 2), -ENOENT);
	cr_assert_eq(pk_db_del(db, PK_DB_ROUTES, "ep", 2, "t7", 2), -ENOENT);
	cr_assert_eq(pk_db_scan(db, PK_DB_ROUTES, "ep", 2, collect_cb, &c), 2);
	cr_assert_str_eq(c.buf, "ep=t1;ep=t3;");
	pk_db_close(db);
}

Test(db, routes_delete_key_removes_all_values)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[8];
	size_t len;

	put_s(db, PK_DB_ROUTES, "ep", "t1");
	put_s(db, PK_DB_ROUTES, "ep", "t2");
	cr_assert_eq(pk_db_del(db, PK_DB_ROUTES, "ep", 2, NULL, 0), 0);
	cr_assert_eq(pk_db_get(db, PK_DB_ROUTES, "ep", 2, buf, sizeof(buf), &len), -ENOENT);
	pk_db_close(db);
}

Test(db, routes_get_returns_smallest_value)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[8];
	size_t len;

	put_s(db, PK_DB_ROUTES, "ep", "t5");
	put_s(db, PK_DB_ROUTES, "ep", "t4");
	cr_assert_eq(pk_db_get(db, PK_DB_ROUTES, "ep", 2, buf, sizeof(buf), &len), 0);
	cr_assert_arr_eq(buf, "t4", 2);
	pk_db_close(db);
}

/* Route values in these tests: "w<worker>:<tunnel>". */
static int is_worker2(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	(*(int *)ud)++;
	return vl >= 2 && memcmp(v, "w2", 2) == 0;
}

Test(db, del_matching_purges_one_workers_routes)
{
	struct pk_db *db = open_db("env", NULL);
	char k[16], v[16];
	int visited = 0, expect_deleted = 0, total = 0;
	struct collect c = {0};
	size_t n;

	/* Endpoints with a mix: some only worker 2 (key disappears), some none, some
	 * interleaved, some runs of consecutive deleted duplicates. */
	for (int e = 0; e < 20; e++) {
		for (int w = 0; w < 4; w++) {
			if (e % 4 == 1 && w != 2)
				continue; /* worker 2 only */
			if (e % 4 == 2 && w == 2)
				continue; /* no worker 2 */
			for (int t = 0; t < (e % 3) + 1; t++) {
				snprintf(k, sizeof(k), "ep%02d", e);
				snprintf(v, sizeof(v), "w%d:%d", w, t);
				put_s(db, PK_DB_ROUTES, k, v);
				total++;
				expect_deleted += w == 2;
			}
		}
	}
	int rc = pk_db_del_matching(db, PK_DB_ROUTES, is_worker2, &visited);
	cr_assert_eq(rc, expect_deleted, "deleted %d, expected %d", rc, expect_deleted);
	cr_assert_geq(visited, total);
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq((int)n, total - expect_deleted);
	cr_assert_eq(pk_db_scan(db, PK_DB_ROUTES, NULL, 0, collect_cb, &c), total - expect_deleted);
	cr_assert_null(strstr(c.buf, "=w2:"));
	cr_assert_null(strstr(c.buf, "ep01="), "an endpoint served only by worker 2 remains");
	pk_db_close(db);
}

static int abort_on_second(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	return ++(*(int *)ud) == 2 ? -EINTR : 1;
}

Test(db, del_matching_error_rolls_back)
{
	struct pk_db *db = open_db("env", NULL);
	int calls = 0;
	size_t n;

	put_s(db, PK_DB_ROUTES, "a", "1");
	put_s(db, PK_DB_ROUTES, "b", "2");
	cr_assert_eq(pk_db_del_matching(db, PK_DB_ROUTES, abort_on_second, &calls), -EINTR);
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, 2);
	pk_db_close(db);
}

/* ---- general write transactions ---- */

static int multi_fn(struct pk_db_txn *t, void *ud)
{
	char buf[8];
	size_t len;
	int rc;

	if ((rc = pk_db_txn_put(t, PK_DB_NODES, "n1", 2, "up", 2, 0)))
		return rc;
	if ((rc = pk_db_txn_put(t, PK_DB_ROUTES, "ep", 2, "t1", 2, 0)))
		return rc;
	/* The transaction sees its own writes. */
	if ((rc = pk_db_txn_get(t, PK_DB_NODES, "n1", 2, buf, sizeof(buf), &len)))
		return rc;
	if (len != 2 || memcmp(buf, "up", 2) != 0)
		return -EILSEQ;
	return *(int *)ud;
}

Test(db, write_commits_all_or_nothing)
{
	struct pk_db *db = open_db("env", NULL);
	char buf[8];
	size_t len;
	int result = -EPIPE;

	cr_assert_eq(pk_db_write(db, multi_fn, &result), -EPIPE);
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, "n1", 2, buf, sizeof(buf), &len), -ENOENT);
	cr_assert_eq(pk_db_get(db, PK_DB_ROUTES, "ep", 2, buf, sizeof(buf), &len), -ENOENT);

	result = 7;
	cr_assert_eq(pk_db_write(db, multi_fn, &result), 7);
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, "n1", 2, buf, sizeof(buf), &len), 0);
	cr_assert_eq(pk_db_get(db, PK_DB_ROUTES, "ep", 2, buf, sizeof(buf), &len), 0);
	pk_db_close(db);
}

static int nooverwrite_fn(struct pk_db_txn *t, void *ud)
{
	return pk_db_txn_put(t, *(enum pk_db_which *)ud, "k", 1, "v", 1, PK_DB_NOOVERWRITE);
}

Test(db, txn_put_nooverwrite)
{
	struct pk_db *db = open_db("env", NULL);
	enum pk_db_which w = PK_DB_LOG;

	cr_assert_eq(pk_db_write(db, nooverwrite_fn, &w), 0);
	cr_assert_eq(pk_db_write(db, nooverwrite_fn, &w), -EEXIST);
	w = PK_DB_ROUTES; /* exact pair for the DUPSORT db */
	cr_assert_eq(pk_db_write(db, nooverwrite_fn, &w), 0);
	cr_assert_eq(pk_db_write(db, nooverwrite_fn, &w), -EEXIST);
	pk_db_close(db);
}

static struct pk_db *nested_db;

static int nested_write_fn(struct pk_db_txn *t, void *ud)
{
	char buf[4];
	size_t len;

	*(int *)ud = pk_db_get(nested_db, PK_DB_META, "k", 1, buf, sizeof(buf), &len);
	return 0;
}

static int nested_scan_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	*(int *)ud = pk_db_put(nested_db, PK_DB_META, "x", 1, "y", 1);
	return 0;
}

Test(db, nested_calls_are_refused)
{
	int inner = 0;

	nested_db = open_db("env", NULL);
	put_s(nested_db, PK_DB_META, "k", "v");
	cr_assert_eq(pk_db_write(nested_db, nested_write_fn, &inner), 0);
	cr_assert_eq(inner, -EBUSY);
	inner = 0;
	cr_assert_eq(pk_db_scan(nested_db, PK_DB_META, NULL, 0, nested_scan_cb, &inner), 1);
	cr_assert_eq(inner, -EBUSY);
	pk_db_close(nested_db);
}

/* ---- limits and bad input ---- */

Test(db, key_and_value_limits)
{
	struct pk_db *db = open_db("env", NULL);
	static char big[PK_DB_MAX_VALUE + 1];

	cr_assert_eq(pk_db_put(db, PK_DB_META, "", 0, "v", 1), -EINVAL);
	cr_assert_eq(pk_db_put(db, PK_DB_META, big, PK_DB_MAX_KEY + 1, "v", 1), -E2BIG);
	cr_assert_eq(pk_db_put(db, PK_DB_META, big, PK_DB_MAX_KEY, "v", 1), 0);
	cr_assert_eq(pk_db_put(db, PK_DB_ROUTES, "k", 1, big, PK_DB_MAX_DUP_VALUE + 1), -E2BIG);
	cr_assert_eq(pk_db_put(db, PK_DB_ROUTES, "k", 1, big, PK_DB_MAX_DUP_VALUE), 0);
	cr_assert_eq(pk_db_put(db, PK_DB_META, "k", 1, big, PK_DB_MAX_VALUE + 1), -E2BIG);
	cr_assert_eq(pk_db_put(db, PK_DB_META, "k", 1, big, PK_DB_MAX_VALUE), 0);
	cr_assert_eq(pk_db_put(db, PK_DB__COUNT, "k", 1, "v", 1), -EINVAL);
	pk_db_close(db);
}

Test(db, dir_under_a_file_is_enotdir)
{
	struct pk_db *db = (struct pk_db *)&db;

	cr_assert_eq(pk_db_open(&db, "/dev/null/sub", NULL), -ENOTDIR);
	cr_assert_null(db);
}

Test(db, dir_that_is_a_file_is_enotdir)
{
	char path[PATH_MAX];
	struct pk_db *db = NULL;
	int fd;

	snprintf(path, sizeof(path), "%s/file", tdir);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	cr_assert_eq(pk_db_open(&db, path, NULL), -ENOTDIR);
	cr_assert_str_neq(pk_db_strerror(-ENOTDIR), "");
}

Test(db, empty_dir_is_einval)
{
	struct pk_db *db = NULL;

	cr_assert_eq(pk_db_open(&db, "", NULL), -EINVAL);
}

Test(db, mapsize_above_max_is_einval)
{
	struct pk_db_options o = {.mapsize = 1 << 24, .max_mapsize = 1 << 20};
	char path[PATH_MAX];
	struct pk_db *db = NULL;

	snprintf(path, sizeof(path), "%s/env", tdir);
	cr_assert_eq(pk_db_open(&db, path, &o), -EINVAL);
}

Test(db, second_open_in_one_process_is_ebusy)
{
	struct pk_db *db = open_db("env", NULL), *db2 = NULL;
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/env/.", tdir); /* same directory, other spelling */
	cr_assert_eq(pk_db_open(&db2, path, NULL), -EBUSY);
	pk_db_close(db);
	cr_assert_eq(pk_db_open(&db2, path, NULL), 0);
	pk_db_close(db2);
}

Test(db, creates_nested_dirs_and_private_files)
{
	struct pk_db *db;
	struct stat st;
	char path[PATH_MAX];

	umask(022);
	db = open_db("a/b/c", NULL);
	snprintf(path, sizeof(path), "%s/a/b", tdir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/a/b/c", tdir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/a/b/c/data.mdb", tdir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/a/b/c/lock.mdb", tdir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	pk_db_close(db);
}

Test(db, every_env_fd_is_cloexec)
{
	struct pk_db *db = open_db("env", NULL);
	char link[PATH_MAX], target[PATH_MAX], envdir[PATH_MAX];
	struct dirent *e;
	int found = 0;
	DIR *d;

	put_s(db, PK_DB_META, "k", "v"); /* any lazily opened fds are open now */
	snprintf(envdir, sizeof(envdir), "%s/env/", tdir);
	d = opendir("/proc/self/fd");
	cr_assert_not_null(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(link, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strncmp(target, envdir, strlen(envdir)) != 0)
			continue;
		found++;
		int flags = fcntl(atoi(e->d_name), F_GETFD);
		cr_assert(flags >= 0 && (flags & FD_CLOEXEC), "fd %s -> %s lacks FD_CLOEXEC",
		          e->d_name, target);
	}
	closedir(d);
	cr_assert_geq(found, 2, "expected data.mdb and lock.mdb fds, found %d", found);
	pk_db_close(db);
}

/* ---- map size ---- */

Test(db, map_grows_from_a_tiny_start)
{
	struct pk_db_options o = {.mapsize = 32 * 1024, .max_mapsize = 64 << 20};
	struct pk_db *db = open_db("env", &o);
	struct pk_db_stat st;
	char k[32], v[128], buf[128];
	size_t len;

	memset(v, 'v', sizeof(v));
	for (int i = 0; i < 20000; i++) {
		snprintf(k, sizeof(k), "key-%06d", i);
		int rc = pk_db_put(db, PK_DB_NODES, k, strlen(k), v, sizeof(v));
		cr_assert_eq(rc, 0, "put %d: %s", i, pk_db_strerror(rc));
	}
	cr_assert_eq(pk_db_stat(db, &st), 0);
	cr_assert_gt(st.mapsize, (size_t)2 << 20, "map did not grow: %zu", st.mapsize);
	cr_assert_leq(st.used, st.mapsize);
	for (int i = 0; i < 20000; i += 997) {
		snprintf(k, sizeof(k), "key-%06d", i);
		cr_assert_eq(pk_db_get(db, PK_DB_NODES, k, strlen(k), buf, sizeof(buf), &len), 0);
		cr_assert_eq(len, sizeof(v));
	}
	pk_db_close(db);
}

Test(db, map_at_max_size_is_enospc_and_keeps_data)
{
	struct pk_db_options o = {.mapsize = 64 * 1024, .max_mapsize = 256 * 1024};
	struct pk_db *db = open_db("env", &o);
	char k[32], v[512], buf[512];
	size_t len;
	int i, rc = 0;

	memset(v, 'v', sizeof(v));
	for (i = 0; i < 10000; i++) {
		snprintf(k, sizeof(k), "key-%06d", i);
		rc = pk_db_put(db, PK_DB_NODES, k, strlen(k), v, sizeof(v));
		if (rc)
			break;
	}
	cr_assert_eq(rc, -ENOSPC, "rc %d after %d puts", rc, i);
	cr_assert_gt(i, 100);
	snprintf(k, sizeof(k), "key-%06d", i - 1);
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, k, strlen(k), buf, sizeof(buf), &len), 0);
	/* Deleting frees room again. */
	snprintf(k, sizeof(k), "key-%06d", 0);
	cr_assert_eq(pk_db_del(db, PK_DB_NODES, k, strlen(k), NULL, 0), 0);
	pk_db_close(db);
}

/* ---- processes ---- */

static int wait_ok(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#define NPROC 4
#define NROWS 2000

/* Child body: writes its rows, reads each back, and scans the others' rows checking
 * that a snapshot never shows fewer rows of a peer than an earlier snapshot did. */
static int concurrent_child(int id)
{
	struct pk_db *db = NULL;
	char path[PATH_MAX], k[32], v[32], buf[32];
	int seen[NPROC] = {0};
	size_t len;

	snprintf(path, sizeof(path), "%s/env", tdir);
	if (pk_db_open(&db, path, NULL) != 0)
		return 10;
	for (int i = 0; i < NROWS; i++) {
		snprintf(k, sizeof(k), "%d/%05d", id, i);
		snprintf(v, sizeof(v), "v%d.%d", id, i);
		if (pk_db_put(db, PK_DB_NODES, k, strlen(k), v, strlen(v)) != 0)
			return 11;
		if (pk_db_get(db, PK_DB_NODES, k, strlen(k), buf, sizeof(buf), &len) != 0)
			return 12;
		if (len != strlen(v) || memcmp(buf, v, len) != 0)
			return 13;
		if (pk_db_put(db, PK_DB_ROUTES, "shared", 6, k, strlen(k)) != 0)
			return 14;
		if (i % 100 == 0) {
			for (int p = 0; p < NPROC; p++) {
				char pre[16];
				int n = 0;

				snprintf(pre, sizeof(pre), "%d/", p);
				if (pk_db_scan(db, PK_DB_NODES, pre, 2, count_cb, &n) < 0)
					return 15;
				if (n < seen[p])
					return 16;
				seen[p] = n;
			}
		}
	}
	pk_db_close(db);
	return 0;
}

static int verify_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	int id, i;
	char key[32], want[32];

	if (kl >= sizeof(key))
		return -EINVAL;
	memcpy(key, k, kl);
	key[kl] = '\0';
	if (sscanf(key, "%d/%d", &id, &i) != 2)
		return -EINVAL;
	snprintf(want, sizeof(want), "v%d.%d", id, i);
	if (vl != strlen(want) || memcmp(v, want, vl) != 0)
		return -EILSEQ;
	return 0;
}

Test(db, four_processes_write_and_read_concurrently, .timeout = 120)
{
	pid_t pids[NPROC];
	struct pk_db *db;
	size_t n;

	for (int i = 0; i < NPROC; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0)
			_exit(concurrent_child(i));
	}
	for (int i = 0; i < NPROC; i++)
		cr_assert_eq(wait_ok(pids[i]), 0, "child %d failed", i);

	db = open_db("env", NULL);
	cr_assert_eq(pk_db_count(db, PK_DB_NODES, &n), 0);
	cr_assert_eq(n, NPROC * NROWS);
	cr_assert_eq(pk_db_scan(db, PK_DB_NODES, NULL, 0, verify_cb, NULL), NPROC * NROWS);
	cr_assert_eq(pk_db_count(db, PK_DB_ROUTES, &n), 0);
	cr_assert_eq(n, NPROC * NROWS);
	pk_db_close(db);
}

/* Child: signals the parent from inside a scan (read txn active), then blocks. */
static int hold_read_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud)
{
	int fd = *(int *)ud;
	char c = 'r';

	if (write(fd, &c, 1) != 1)
		_exit(21);
	for (;;)
		pause();
	return 0;
}

Test(db, reader_check_clears_a_killed_reader)
{
	struct pk_db *db = open_db("env", NULL);
	int p[2], dead = -1;
	char c;
	pid_t pid;

	put_s(db, PK_DB_META, "k", "v");
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_db *cdb = NULL;
		char path[PATH_MAX];

		close(p[0]);
		snprintf(path, sizeof(path), "%s/env", tdir);
		if (pk_db_open(&cdb, path, NULL) != 0)
			_exit(20);
		pk_db_scan(cdb, PK_DB_META, NULL, 0, hold_read_cb, &p[1]);
		_exit(22);
	}
	close(p[1]);
	cr_assert_eq(read(p[0], &c, 1), 1);
	close(p[0]);

	cr_assert_eq(pk_db_reader_check(db, &dead), 0);
	cr_assert_eq(dead, 0, "a live reader was cleared");
	cr_assert_eq(kill(pid, SIGKILL), 0);
	cr_assert_eq(wait_ok(pid), 128 + SIGKILL);
	cr_assert_eq(pk_db_reader_check(db, &dead), 0);
	cr_assert_geq(dead, 1);
	cr_assert_eq(pk_db_reader_check(db, &dead), 0);
	cr_assert_eq(dead, 0);
	pk_db_close(db);
}

/* A killed reader's slot is cleared by the next process that opens the environment.
 * The parent keeps the environment open throughout: otherwise the next opener is alone,
 * and LMDB re-initialises the whole reader table anyway. */
Test(db, open_clears_stale_readers_of_killed_process)
{
	struct pk_db *db = open_db("env", NULL);
	int p[2], dead = -1;
	char c;
	pid_t pid;

	put_s(db, PK_DB_META, "k", "v");
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_db *cdb = NULL;
		char path[PATH_MAX];

		close(p[0]);
		snprintf(path, sizeof(path), "%s/env", tdir);
		if (pk_db_open(&cdb, path, NULL) != 0)
			_exit(20);
		pk_db_scan(cdb, PK_DB_META, NULL, 0, hold_read_cb, &p[1]);
		_exit(22);
	}
	close(p[1]);
	cr_assert_eq(read(p[0], &c, 1), 1);
	close(p[0]);
	cr_assert_eq(kill(pid, SIGKILL), 0);
	cr_assert_eq(wait_ok(pid), 128 + SIGKILL);

	pid = fork(); /* a fresh process opens (and closes) the environment */
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_db *cdb = NULL;
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/env", tdir);
		if (pk_db_open(&cdb, path, NULL) != 0)
			_exit(20);
		pk_db_close(cdb);
		_exit(0);
	}
	cr_assert_eq(wait_ok(pid), 0);
	cr_assert_eq(pk_db_reader_check(db, &dead), 0);
	cr_assert_eq(dead, 0, "open left %d stale readers", dead);
	pk_db_close(db);
}

Test(db, adopts_a_map_grown_by_another_process, .timeout = 60)
{
	struct pk_db_options o = {.mapsize = 64 * 1024, .max_mapsize = 64 << 20};
	struct pk_db *db = open_db("env", &o);
	char k[32], v[200], buf[200];
	size_t len;
	pid_t pid;

	put_s(db, PK_DB_META, "before", "x");
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_db *cdb = NULL;
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/env", tdir);
		if (pk_db_open(&cdb, path, &o) != 0)
			_exit(30);
		memset(v, 'v', sizeof(v));
		for (int i = 0; i < 5000; i++) {
			snprintf(k, sizeof(k), "key-%06d", i);
			if (pk_db_put(cdb, PK_DB_NODES, k, strlen(k), v, sizeof(v)) != 0)
				_exit(31);
		}
		pk_db_close(cdb);
		_exit(0);
	}
	cr_assert_eq(wait_ok(pid), 0);
	/* Our 64 KiB map is now far smaller than the data: reads and writes adopt. */
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, "key-004999", 10, buf, sizeof(buf), &len), 0);
	cr_assert_eq(len, sizeof(v));
	put_s(db, PK_DB_META, "after", "y");
	cr_assert_eq(pk_db_get(db, PK_DB_META, "after", 5, buf, sizeof(buf), &len), 0);
	pk_db_close(db);
}

/* Grows the map from a child process: 5000 rows of 200 bytes into a 64 KiB start. */
static void grow_in_child(const struct pk_db_options *o)
{
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_db *cdb = NULL;
		char path[PATH_MAX], k[32], v[200];

		snprintf(path, sizeof(path), "%s/env", tdir);
		if (pk_db_open(&cdb, path, o) != 0)
			_exit(30);
		memset(v, 'v', sizeof(v));
		for (int i = 0; i < 5000; i++) {
			snprintf(k, sizeof(k), "key-%06d", i);
			if (pk_db_put(cdb, PK_DB_NODES, k, strlen(k), v, sizeof(v)) != 0)
				_exit(31);
		}
		pk_db_close(cdb);
		_exit(0);
	}
	cr_assert_eq(wait_ok(pid), 0);
}

Test(db, write_adopts_a_map_grown_by_another_process, .timeout = 60)
{
	struct pk_db_options o = {.mapsize = 64 * 1024, .max_mapsize = 64 << 20};
	struct pk_db *db = open_db("env", &o);
	char buf[200];
	size_t len;

	put_s(db, PK_DB_META, "before", "x");
	grow_in_child(&o);
	put_s(db, PK_DB_META, "after", "y"); /* first call after the growth is a write */
	cr_assert_eq(pk_db_get(db, PK_DB_NODES, "key-004999", 10, buf, sizeof(buf), &len), 0);
	cr_assert_eq(len, 200);
	pk_db_close(db);
}

Test(db, handle_inherited_across_fork_is_refused)
{
	struct pk_db *db = open_db("env", NULL);
	pid_t pid;

	put_s(db, PK_DB_META, "k", "v");
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char buf[4];
		size_t len;

		if (pk_db_get(db, PK_DB_META, "k", 1, buf, sizeof(buf), &len) != -EBADF)
			_exit(40);
		if (pk_db_put(db, PK_DB_META, "k", 1, "w", 1) != -EBADF)
			_exit(41);
		pk_db_close(db); /* frees the wrapper only */
		_exit(0);
	}
	cr_assert_eq(wait_ok(pid), 0);
	/* The parent's handle still works: the child did not touch its reader slot. */
	char buf[4];
	size_t len;
	cr_assert_eq(pk_db_get(db, PK_DB_META, "k", 1, buf, sizeof(buf), &len), 0);
	cr_assert_eq(buf[0], 'v');
	pk_db_close(db);
}

Test(db, strerror_describes_codes)
{
	cr_assert_str_eq(pk_db_strerror(-ENOENT), "not found");
	cr_assert_str_eq(pk_db_strerror(-ENOSPC), "database map full at its maximum size");
	cr_assert_str_eq(pk_db_name(PK_DB_ROUTES), "routes");
	cr_assert_str_eq(pk_db_name(PK_DB__COUNT), "?");
}
