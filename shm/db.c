/* The LMDB adapter. See db.h for the contract; comments here say why. */
#include "shm/db.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

#define PK__SUB         "shm"
#define PK__MAXDBS      16 /* room above the five we use, for later additions */
#define PK__BEGIN_TRIES 4  /* resized + readers full + a fresh read txn, with margin */
#define PK__WRITE_TRIES 64 /* each retry doubles the map: bounded by address space */
#define PK__MAX_OPEN    8  /* environments open at once in one process */
#define PK__DIR_MODE    0700
#define PK__FILE_MODE   0600

static const struct {
	const char *name;
	unsigned flags;
} pk__dbs[PK_DB__COUNT] = {
    [PK_DB_ROUTES] = {"routes", MDB_DUPSORT},
    [PK_DB_NODES] = {"nodes", 0},
    [PK_DB_REMOTE] = {"remote", 0},
    [PK_DB_LOG] = {"log", 0},
    [PK_DB_META] = {"meta", 0},
};

struct pk_db {
	MDB_env *env;
	MDB_dbi dbi[PK_DB__COUNT];
	MDB_txn *rtxn; /* the reusable read txn: reset between reads, NULL until first use */
	size_t max_mapsize;
	unsigned fork_gen; /* pk__fork_gen at open: a mismatch means we are a forked child */
	int busy;          /* inside a call: nested calls would break the no-active-txn rules */
	dev_t dev;
	ino_t ino;
};

struct pk_db_txn {
	struct pk_db *db;
	MDB_txn *txn;
	int dead_rc; /* an LMDB error that killed the txn (MDB_MAP_FULL, MDB_TXN_FULL) */
};

/* Bumped in the child on every fork(), so handles inherited across fork are recognised
 * without a getpid() syscall per read. */
static unsigned pk__fork_gen;
static int pk__atfork_registered;

/* Environments open in this process, by directory identity, to refuse a second open. */
static struct {
	int used;
	dev_t dev;
	ino_t ino;
} pk__envs[PK__MAX_OPEN];

static void pk__after_fork_child(void)
{
	pk__fork_gen++;
	/* The parent's environments are not open in this process in any usable sense. */
	memset(pk__envs, 0, sizeof(pk__envs));
}

/* ---- errors ---- */

static int pk__err(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_TXN_FULL:
		return -E2BIG;
	case MDB_READERS_FULL:
	case MDB_MAP_RESIZED:
	case MDB_TLS_FULL:
		return -EAGAIN;
	case MDB_DBS_FULL:
		return -EMFILE;
	case MDB_BAD_VALSIZE:
	case MDB_BAD_DBI:
	case MDB_BAD_RSLOT:
		return -EINVAL;
	case MDB_INVALID:
	case MDB_VERSION_MISMATCH:
	case MDB_INCOMPATIBLE:
		return -EPROTO;
	}
	if (rc > 0)
		return -rc; /* a system errno passed through by LMDB */
	return -EIO;        /* corruption, panic, internal page/cursor errors */
}

/* Translates and logs codes that mean something is wrong beyond the caller's request. */
static int pk__err_log(int rc, const char *what)
{
	int err = pk__err(rc);

	if (err != -ENOENT && err != -EEXIST)
		pk_log_error(PK__SUB, "lmdb call failed", "op=%s code=%d error=%s", what, rc,
		             mdb_strerror(rc));
	return err;
}

const char *pk_db_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case -ENOENT:
		return "not found";
	case -ENOSPC:
		return "database map full at its maximum size";
	case -E2BIG:
		return "key, value or transaction too large";
	case -EAGAIN:
		return "database busy (reader slots full or map resized); try again";
	case -EBUSY:
		return "database handle busy (nested call) or environment already open";
	case -EBADF:
		return "database handle inherited across fork; open a new one";
	case -EPROTO:
		return "not a compatible LMDB environment";
	case -ENOBUFS:
		return "buffer too small for the value";
	case -EIO:
		return "database I/O error or corruption";
	}
	return strerror(err < 0 ? -err : err);
}

const char *pk_db_name(enum pk_db_which which)
{
	if ((unsigned)which >= PK_DB__COUNT)
		return "?";
	return pk__dbs[which].name;
}

/* ---- argument checks ---- */

static int pk__is_dup(enum pk_db_which which)
{
	return (pk__dbs[which].flags & MDB_DUPSORT) != 0;
}

static int pk__check_key(enum pk_db_which which, const void *key, size_t keylen)
{
	if ((unsigned)which >= PK_DB__COUNT || !key || keylen == 0)
		return -EINVAL;
	if (keylen > PK_DB_MAX_KEY)
		return -E2BIG;
	return 0;
}

static int pk__check_val(enum pk_db_which which, const void *val, size_t vallen)
{
	if (!val && vallen)
		return -EINVAL;
	if (vallen > (pk__is_dup(which) ? PK_DB_MAX_DUP_VALUE : PK_DB_MAX_VALUE))
		return -E2BIG;
	return 0;
}

static int pk__check_prefix(enum pk_db_which which, const void *p, size_t plen)
{
	if ((unsigned)which >= PK_DB__COUNT || (!p && plen))
		return -EINVAL;
	if (plen > PK_DB_MAX_KEY)
		return -E2BIG;
	return 0;
}

/* Every public call on a handle starts here: refuses inherited handles and nesting. */
static int pk__enter(struct pk_db *db)
{
	if (!db)
		return -EINVAL;
	if (db->fork_gen != pk__fork_gen)
		return -EBADF;
	if (db->busy)
		return -EBUSY;
	db->busy = 1;
	return 0;
}

static void pk__leave(struct pk_db *db)
{
	db->busy = 0;
}

/* ---- transactions, with LMDB's recoverable conditions handled ---- */

/* Handles one failed txn start. Returns 0 when the start should be retried. */
static int pk__recover(struct pk_db *db, int rc, int *checked)
{
	int dead = 0;

	if (rc == MDB_MAP_RESIZED) {
		/* Another process grew the map past ours: adopt the size in the file. No txn
		 * of ours is active (the read txn is reset, no write txn is open). */
		rc = mdb_env_set_mapsize(db->env, 0);
		pk_log_info(PK__SUB, "adopted database map grown by another process", "ok=%d",
		            rc == MDB_SUCCESS);
		return rc;
	}
	if (rc == MDB_READERS_FULL && !*checked) {
		*checked = 1;
		if (mdb_reader_check(db->env, &dead) != MDB_SUCCESS)
			return rc;
		pk_log_warn(PK__SUB, "reader table full; cleared stale readers", "cleared=%d",
		            dead);
		return dead > 0 ? 0 : rc;
	}
	return rc;
}

static int pk__read_begin(struct pk_db *db)
{
	int checked = 0, rc = MDB_SUCCESS;

	for (int i = 0; i < PK__BEGIN_TRIES; i++) {
		if (db->rtxn)
			rc = mdb_txn_renew(db->rtxn);
		else
			rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, &db->rtxn);
		if (rc == MDB_SUCCESS)
			return 0;
		if (rc != MDB_MAP_RESIZED && rc != MDB_READERS_FULL && db->rtxn) {
			/* A renew that failed otherwise: drop the txn and begin afresh. */
			mdb_txn_abort(db->rtxn);
			db->rtxn = NULL;
			continue;
		}
		if (pk__recover(db, rc, &checked) != 0)
			break;
	}
	if (db->rtxn) {
		mdb_txn_abort(db->rtxn);
		db->rtxn = NULL;
	}
	return pk__err_log(rc, "read txn begin");
}

/* Starts a read for a public call: enter + a renewed read txn. */
static int pk__read_enter(struct pk_db *db)
{
	int rc = pk__enter(db);

	if (rc)
		return rc;
	rc = pk__read_begin(db);
	if (rc)
		pk__leave(db);
	return rc;
}

static void pk__read_leave(struct pk_db *db)
{
	mdb_txn_reset(db->rtxn);
	pk__leave(db);
}

static int pk__write_begin(struct pk_db *db, MDB_txn **txn)
{
	int checked = 0, rc = MDB_SUCCESS;

	for (int i = 0; i < PK__BEGIN_TRIES; i++) {
		rc = mdb_txn_begin(db->env, NULL, 0, txn);
		if (rc == MDB_SUCCESS)
			return 0;
		if (pk__recover(db, rc, &checked) != 0)
			break;
	}
	return pk__err_log(rc, "write txn begin");
}

/* Doubles the map after MDB_MAP_FULL, up to max_mapsize. Called with no txn active. */
static int pk__grow(struct pk_db *db)
{
	MDB_envinfo info;
	size_t next;
	int rc;

	rc = mdb_env_info(db->env, &info);
	if (rc)
		return pk__err_log(rc, "env info");
	if (info.me_mapsize >= db->max_mapsize) {
		pk_log_error(PK__SUB, "database map full at its maximum size", "mapsize=%zu",
		             info.me_mapsize);
		return -ENOSPC;
	}
	next = info.me_mapsize > db->max_mapsize / 2 ? db->max_mapsize : info.me_mapsize * 2;
	rc = mdb_env_set_mapsize(db->env, next);
	if (rc)
		return pk__err_log(rc, "set mapsize");
	pk_log_info(PK__SUB, "database map grown", "from=%zu to=%zu", info.me_mapsize, next);
	return 0;
}

/* The write loop: fn in one txn, replayed after growing the map when it filled. */
static int pk__write(struct pk_db *db, pk_db_write_fn fn, void *ud)
{
	for (int i = 0; i < PK__WRITE_TRIES; i++) {
		struct pk_db_txn t = {.db = db};
		int ret, rc;

		rc = pk__write_begin(db, &t.txn);
		if (rc)
			return rc;
		ret = fn(&t, ud);
		if (t.dead_rc == MDB_MAP_FULL) {
			mdb_txn_abort(t.txn);
		} else if (t.dead_rc || ret < 0) {
			mdb_txn_abort(t.txn);
			return t.dead_rc ? pk__err(t.dead_rc) : ret;
		} else {
			rc = mdb_txn_commit(t.txn); /* frees the txn, even on failure */
			if (rc == MDB_SUCCESS)
				return ret;
			if (rc != MDB_MAP_FULL)
				return pk__err_log(rc, "commit");
		}
		rc = pk__grow(db);
		if (rc)
			return rc;
	}
	return -ENOSPC;
}

int pk_db_write(struct pk_db *db, pk_db_write_fn fn, void *ud)
{
	int rc;

	if (!fn)
		return -EINVAL;
	rc = pk__enter(db);
	if (rc)
		return rc;
	rc = pk__write(db, fn, ud);
	pk__leave(db);
	return rc;
}

/* ---- cursor walks shared by reads and write txns ---- */

static int pk__has_prefix(const MDB_val *k, const void *prefix, size_t plen)
{
	return k->mv_size >= plen && (plen == 0 || memcmp(k->mv_data, prefix, plen) == 0);
}

static int pk__scan(MDB_txn *txn, MDB_dbi dbi, const void *start, size_t startlen,
                    const void *prefix, size_t plen, pk_db_row_cb cb, void *ud)
{
	MDB_cursor *cur;
	MDB_val k = {startlen, (void *)start}, v;
	int n = 0, ret = 0, rc;

	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		return pk__err_log(rc, "cursor open");
	rc = mdb_cursor_get(cur, &k, &v, startlen ? MDB_SET_RANGE : MDB_FIRST);
	while (rc == MDB_SUCCESS && pk__has_prefix(&k, prefix, plen)) {
		int r = cb(k.mv_data, k.mv_size, v.mv_data, v.mv_size, ud);

		if (r < 0) {
			ret = r;
			break;
		}
		if (n < INT_MAX)
			n++;
		if (r > 0)
			break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (ret < 0)
		return ret;
	if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND)
		return pk__err_log(rc, "cursor get");
	return n;
}

/* Positions at the last pair whose key starts with prefix: seek to the smallest key
 * greater than every key with the prefix (prefix "incremented"), then step back. */
static int pk__last(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t plen, pk_db_row_cb cb,
                    void *ud)
{
	unsigned char succ[PK_DB_MAX_KEY];
	size_t slen = plen;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, ret;

	if (plen)
		memcpy(succ, prefix, plen);
	while (slen > 0 && succ[slen - 1] == 0xff)
		slen--;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		return pk__err_log(rc, "cursor open");
	rc = MDB_NOTFOUND;
	if (slen > 0) {
		succ[slen - 1]++;
		k.mv_size = slen;
		k.mv_data = succ;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc == MDB_SUCCESS)
			rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
	}
	if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	if (rc == MDB_SUCCESS && !pk__has_prefix(&k, prefix, plen))
		rc = MDB_NOTFOUND;
	if (rc == MDB_SUCCESS) {
		ret = cb(k.mv_data, k.mv_size, v.mv_data, v.mv_size, ud);
		ret = ret < 0 ? ret : 0;
	} else {
		ret = pk__err_log(rc, "cursor get");
	}
	mdb_cursor_close(cur);
	return ret;
}

static int pk__copy_out(const MDB_val *v, void *buf, size_t bufsize, size_t *len)
{
	*len = v->mv_size;
	if (v->mv_size > bufsize)
		return -ENOBUFS;
	if (v->mv_size)
		memcpy(buf, v->mv_data, v->mv_size);
	return 0;
}

/* ---- reads ---- */

int pk_db_get(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen, void *buf,
              size_t bufsize, size_t *len)
{
	MDB_val k = {keylen, (void *)key}, v;
	int rc = pk__check_key(which, key, keylen);

	if (rc)
		return rc;
	if (!len || (!buf && bufsize))
		return -EINVAL;
	rc = pk__read_enter(db);
	if (rc)
		return rc;
	rc = mdb_get(db->rtxn, db->dbi[which], &k, &v);
	rc = rc ? pk__err_log(rc, "get") : pk__copy_out(&v, buf, bufsize, len);
	pk__read_leave(db);
	return rc;
}

int pk_db_scan_from(struct pk_db *db, enum pk_db_which which, const void *start, size_t startlen,
                    const void *prefix, size_t prefixlen, pk_db_row_cb cb, void *ud)
{
	int rc = pk__check_prefix(which, prefix, prefixlen);

	if (!rc)
		rc = pk__check_prefix(which, start, startlen);
	if (rc)
		return rc;
	if (!cb)
		return -EINVAL;
	rc = pk__read_enter(db);
	if (rc)
		return rc;
	rc = pk__scan(db->rtxn, db->dbi[which], start, startlen, prefix, prefixlen, cb, ud);
	pk__read_leave(db);
	return rc;
}

int pk_db_scan(struct pk_db *db, enum pk_db_which which, const void *prefix, size_t prefixlen,
               pk_db_row_cb cb, void *ud)
{
	return pk_db_scan_from(db, which, prefix, prefixlen, prefix, prefixlen, cb, ud);
}

int pk_db_last(struct pk_db *db, enum pk_db_which which, const void *prefix, size_t prefixlen,
               pk_db_row_cb cb, void *ud)
{
	int rc = pk__check_prefix(which, prefix, prefixlen);

	if (rc)
		return rc;
	if (!cb)
		return -EINVAL;
	rc = pk__read_enter(db);
	if (rc)
		return rc;
	rc = pk__last(db->rtxn, db->dbi[which], prefix, prefixlen, cb, ud);
	pk__read_leave(db);
	return rc;
}

int pk_db_count(struct pk_db *db, enum pk_db_which which, size_t *n)
{
	MDB_stat st;
	int rc;

	if ((unsigned)which >= PK_DB__COUNT || !n)
		return -EINVAL;
	rc = pk__read_enter(db);
	if (rc)
		return rc;
	rc = mdb_stat(db->rtxn, db->dbi[which], &st);
	if (rc == MDB_SUCCESS)
		*n = st.ms_entries;
	pk__read_leave(db);
	return rc ? pk__err_log(rc, "stat") : 0;
}

/* ---- write txn helpers ---- */

static int pk__txn_rc(struct pk_db_txn *t, int rc, const char *what)
{
	if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
		t->dead_rc = rc; /* LMDB has marked the txn failed; only abort remains */
		return pk__err(rc);
	}
	return rc ? pk__err_log(rc, what) : 0;
}

int pk_db_txn_put(struct pk_db_txn *t, enum pk_db_which which, const void *key, size_t keylen,
                  const void *val, size_t vallen, unsigned flags)
{
	MDB_val k = {keylen, (void *)key}, v = {vallen, (void *)val};
	int dup, rc = pk__check_key(which, key, keylen);

	if (!rc)
		rc = pk__check_val(which, val, vallen);
	if (rc || !t)
		return rc ? rc : -EINVAL;
	if (t->dead_rc)
		return pk__err(t->dead_rc);
	dup = pk__is_dup(which);
	rc = mdb_put(t->txn, t->db->dbi[which], &k, &v,
	             dup                           ? MDB_NODUPDATA
	             : (flags & PK_DB_NOOVERWRITE) ? MDB_NOOVERWRITE
	                                           : 0);
	/* A DUPSORT db holds a set: adding a member twice is not an error. */
	if (rc == MDB_KEYEXIST && dup && !(flags & PK_DB_NOOVERWRITE))
		return 0;
	return pk__txn_rc(t, rc, "put");
}

int pk_db_txn_del(struct pk_db_txn *t, enum pk_db_which which, const void *key, size_t keylen,
                  const void *val, size_t vallen)
{
	MDB_val k = {keylen, (void *)key}, v = {vallen, (void *)val};
	int rc = pk__check_key(which, key, keylen);

	if (!rc && val)
		rc = pk__check_val(which, val, vallen);
	if (rc || !t)
		return rc ? rc : -EINVAL;
	if (t->dead_rc)
		return pk__err(t->dead_rc);
	rc = mdb_del(t->txn, t->db->dbi[which], &k, val && pk__is_dup(which) ? &v : NULL);
	return pk__txn_rc(t, rc, "del");
}

int pk_db_txn_get(struct pk_db_txn *t, enum pk_db_which which, const void *key, size_t keylen,
                  void *buf, size_t bufsize, size_t *len)
{
	MDB_val k = {keylen, (void *)key}, v;
	int rc = pk__check_key(which, key, keylen);

	if (rc)
		return rc;
	if (!t || !len || (!buf && bufsize))
		return -EINVAL;
	if (t->dead_rc)
		return pk__err(t->dead_rc);
	rc = mdb_get(t->txn, t->db->dbi[which], &k, &v);
	return rc ? pk__txn_rc(t, rc, "get") : pk__copy_out(&v, buf, bufsize, len);
}

int pk_db_txn_scan(struct pk_db_txn *t, enum pk_db_which which, const void *start, size_t startlen,
                   const void *prefix, size_t prefixlen, pk_db_row_cb cb, void *ud)
{
	int rc = pk__check_prefix(which, prefix, prefixlen);

	if (!rc)
		rc = pk__check_prefix(which, start, startlen);
	if (rc || !t || !cb)
		return rc ? rc : -EINVAL;
	if (t->dead_rc)
		return pk__err(t->dead_rc);
	return pk__scan(t->txn, t->db->dbi[which], start, startlen, prefix, prefixlen, cb, ud);
}

int pk_db_txn_clear(struct pk_db_txn *t, enum pk_db_which which)
{
	if (!t || (unsigned)which >= PK_DB__COUNT)
		return -EINVAL;
	if (t->dead_rc)
		return pk__err(t->dead_rc);
	return pk__txn_rc(t, mdb_drop(t->txn, t->db->dbi[which], 0), "drop");
}

/* ---- one-shot writes ---- */

struct pk__kv {
	enum pk_db_which which;
	const void *key, *val;
	size_t keylen, vallen;
};

static int pk__put_fn(struct pk_db_txn *t, void *ud)
{
	const struct pk__kv *a = ud;

	return pk_db_txn_put(t, a->which, a->key, a->keylen, a->val, a->vallen, 0);
}

static int pk__del_fn(struct pk_db_txn *t, void *ud)
{
	const struct pk__kv *a = ud;

	return pk_db_txn_del(t, a->which, a->key, a->keylen, a->val, a->vallen);
}

static int pk__clear_fn(struct pk_db_txn *t, void *ud)
{
	const struct pk__kv *a = ud;

	return pk_db_txn_clear(t, a->which);
}

int pk_db_put(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen,
              const void *val, size_t vallen)
{
	struct pk__kv a = {which, key, val, keylen, vallen};
	int rc = pk__check_key(which, key, keylen);

	if (!rc)
		rc = pk__check_val(which, val, vallen);
	return rc ? rc : pk_db_write(db, pk__put_fn, &a);
}

int pk_db_del(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen,
              const void *val, size_t vallen)
{
	struct pk__kv a = {which, key, val, keylen, vallen};
	int rc = pk__check_key(which, key, keylen);

	if (!rc && val)
		rc = pk__check_val(which, val, vallen);
	return rc ? rc : pk_db_write(db, pk__del_fn, &a);
}

int pk_db_clear(struct pk_db *db, enum pk_db_which which)
{
	struct pk__kv a = {.which = which};

	if ((unsigned)which >= PK_DB__COUNT)
		return -EINVAL;
	return pk_db_write(db, pk__clear_fn, &a);
}

struct pk__match {
	enum pk_db_which which;
	pk_db_row_cb cb;
	void *ud;
	int deleted;
};

static int pk__del_matching_fn(struct pk_db_txn *t, void *ud)
{
	struct pk__match *m = ud;
	MDB_cursor *cur;
	MDB_val k, v;
	int ret = 0, rc;

	m->deleted = 0; /* the txn may be a replay */
	rc = mdb_cursor_open(t->txn, t->db->dbi[m->which], &cur);
	if (rc)
		return pk__txn_rc(t, rc, "cursor open");
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == MDB_SUCCESS) {
		int r = m->cb(k.mv_data, k.mv_size, v.mv_data, v.mv_size, m->ud);

		if (r < 0) {
			ret = r;
			break;
		}
		if (r > 0) {
			rc = mdb_cursor_del(cur, 0);
			if (rc)
				break;
			m->deleted++;
		}
		/* After a delete the cursor already rests on the following pair, and
		 * MDB_NEXT returns that pair rather than skipping it. */
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (ret < 0)
		return ret;
	if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND)
		return pk__txn_rc(t, rc, "delete matching");
	return m->deleted;
}

int pk_db_del_matching(struct pk_db *db, enum pk_db_which which, pk_db_row_cb cb, void *ud)
{
	struct pk__match m = {which, cb, ud, 0};

	if ((unsigned)which >= PK_DB__COUNT || !cb)
		return -EINVAL;
	return pk_db_write(db, pk__del_matching_fn, &m);
}

/* ---- maintenance ---- */

int pk_db_reader_check(struct pk_db *db, int *dead)
{
	int n = 0, rc = pk__enter(db);

	if (rc)
		return rc;
	rc = mdb_reader_check(db->env, &n);
	pk__leave(db);
	if (rc)
		return pk__err_log(rc, "reader check");
	if (n > 0)
		pk_log_info(PK__SUB, "cleared stale database readers", "cleared=%d", n);
	if (dead)
		*dead = n;
	return 0;
}

int pk_db_stat(struct pk_db *db, struct pk_db_stat *st)
{
	MDB_envinfo info;
	MDB_stat ms;
	int rc;

	if (!st)
		return -EINVAL;
	rc = pk__enter(db);
	if (rc)
		return rc;
	rc = mdb_env_info(db->env, &info);
	if (!rc)
		rc = mdb_env_stat(db->env, &ms);
	pk__leave(db);
	if (rc)
		return pk__err_log(rc, "env stat");
	st->mapsize = info.me_mapsize;
	st->page_size = ms.ms_psize;
	st->used = (info.me_last_pgno + 1) * (size_t)ms.ms_psize;
	st->maxreaders = info.me_maxreaders;
	st->numreaders = info.me_numreaders;
	return 0;
}

/* ---- open and close ---- */

/* mkdir -p with mode 0700 for every directory created; the leaf must be a directory. */
static int pk__mkdir_p(const char *dir)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);
	struct stat st;

	if (len == 0)
		return -EINVAL;
	if (len >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (path[i] != '/' && path[i] != '\0')
			continue;
		path[i] = '\0';
		if (mkdir(path, PK__DIR_MODE) != 0 && errno != EEXIST)
			return -errno;
		path[i] = dir[i];
	}
	if (stat(dir, &st) != 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int pk__registry_find(dev_t dev, ino_t ino)
{
	for (int i = 0; i < PK__MAX_OPEN; i++)
		if (pk__envs[i].used && pk__envs[i].dev == dev && pk__envs[i].ino == ino)
			return i;
	return -1;
}

static int pk__registry_add(dev_t dev, ino_t ino)
{
	if (pk__registry_find(dev, ino) >= 0)
		return -EBUSY;
	for (int i = 0; i < PK__MAX_OPEN; i++) {
		if (!pk__envs[i].used) {
			pk__envs[i].used = 1;
			pk__envs[i].dev = dev;
			pk__envs[i].ino = ino;
			return 0;
		}
	}
	return -EMFILE;
}

static void pk__registry_del(dev_t dev, ino_t ino)
{
	int i = pk__registry_find(dev, ino);

	if (i >= 0)
		pk__envs[i].used = 0;
}

static int pk__create_dbis(struct pk_db_txn *t, void *ud)
{
	for (int i = 0; i < PK_DB__COUNT; i++) {
		int rc = mdb_dbi_open(t->txn, pk__dbs[i].name, pk__dbs[i].flags | MDB_CREATE,
		                      &t->db->dbi[i]);
		if (rc)
			return pk__txn_rc(t, rc, pk__dbs[i].name);
	}
	return 0;
}

static size_t pk__round_page(size_t n)
{
	long ps = sysconf(_SC_PAGESIZE);
	size_t p = ps > 0 ? (size_t)ps : 4096;

	return n < p ? p : n / p * p;
}

static int pk__options(struct pk_db_options *o, const struct pk_db_options *opt)
{
	if (opt)
		*o = *opt;
	else
		memset(o, 0, sizeof(*o));
	o->mapsize = pk__round_page(o->mapsize ? o->mapsize : PK_DB_DEFAULT_MAPSIZE);
	o->max_mapsize = pk__round_page(o->max_mapsize ? o->max_mapsize : PK_DB_DEFAULT_MAXMAP);
	if (!o->maxreaders)
		o->maxreaders = PK_DB_DEFAULT_READERS;
	return o->mapsize <= o->max_mapsize ? 0 : -EINVAL;
}

/* LMDB opens data.mdb without O_CLOEXEC (only the lock and meta fds get it); a child
 * exec'd with it open would keep the file busy and could be handed a stray fd. */
static int pk__cloexec_data_fd(MDB_env *env)
{
	mdb_filehandle_t fd;
	int flags;

	if (mdb_env_get_fd(env, &fd) != MDB_SUCCESS)
		return -EIO;
	flags = fcntl(fd, F_GETFD);
	if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

static int pk__env_open(struct pk_db *db, const char *dir, const struct pk_db_options *o)
{
	unsigned flags = MDB_NOTLS | (o->sync ? 0 : MDB_NOSYNC);
	int rc;

	rc = mdb_env_create(&db->env);
	if (rc)
		return pk__err(rc);
	if ((rc = mdb_env_set_maxdbs(db->env, PK__MAXDBS)) ||
	    (rc = mdb_env_set_maxreaders(db->env, o->maxreaders)) ||
	    (rc = mdb_env_set_mapsize(db->env, o->mapsize)) ||
	    (rc = mdb_env_open(db->env, dir, flags, PK__FILE_MODE)))
		goto err_close_env;
	if (mdb_env_get_maxkeysize(db->env) < PK_DB_MAX_KEY) {
		rc = MDB_INCOMPATIBLE; /* liblmdb built with a smaller key limit */
		goto err_close_env;
	}
	return pk__cloexec_data_fd(db->env);

err_close_env:
	mdb_env_close(db->env);
	db->env = NULL;
	return pk__err(rc);
}

static int pk__open(struct pk_db *db, const char *dir, const struct pk_db_options *o)
{
	struct stat st;
	int dead = 0, rc;

	rc = pk__mkdir_p(dir);
	if (rc)
		return rc;
	if (stat(dir, &st) != 0)
		return -errno;
	db->dev = st.st_dev;
	db->ino = st.st_ino;
	rc = pk__registry_add(db->dev, db->ino);
	if (rc)
		return rc;
	rc = pk__env_open(db, dir, o);
	if (rc)
		goto err_registry;
	/* Slots of processes that died while this environment was last in use. */
	rc = mdb_reader_check(db->env, &dead);
	if (rc) {
		rc = pk__err(rc);
		goto err_env;
	}
	pk_log_info(PK__SUB, "database opened", "dir=%s mapsize=%zu stale_readers=%d", dir,
	            o->mapsize, dead);
	rc = pk__write(db, pk__create_dbis, NULL);
	if (rc)
		goto err_env;
	return 0;

err_env:
	mdb_env_close(db->env);
	db->env = NULL;
err_registry:
	pk__registry_del(db->dev, db->ino);
	return rc;
}

int pk_db_open(struct pk_db **out, const char *dir, const struct pk_db_options *opt)
{
	struct pk_db_options o;
	struct pk_db *db;
	int rc;

	if (!out || !dir)
		return -EINVAL;
	*out = NULL;
	rc = pk__options(&o, opt);
	if (rc)
		goto err_log;
	if (!pk__atfork_registered) {
		rc = -pthread_atfork(NULL, NULL, pk__after_fork_child);
		if (rc)
			goto err_log;
		pk__atfork_registered = 1;
	}
	db = calloc(1, sizeof(*db));
	if (!db) {
		rc = -ENOMEM;
		goto err_log;
	}
	db->max_mapsize = o.max_mapsize;
	db->fork_gen = pk__fork_gen;
	rc = pk__open(db, dir, &o);
	if (rc) {
		free(db);
		goto err_log;
	}
	*out = db;
	return 0;

err_log:
	pk_log_error(PK__SUB, "cannot open database", "dir=%s error=%s", dir, pk_db_strerror(rc));
	return rc;
}

void pk_db_close(struct pk_db *db)
{
	if (!db)
		return;
	if (db->fork_gen != pk__fork_gen) {
		/* Inherited across fork: mdb_env_close would release reader slots under the
		 * parent's pid. Leave the environment alone; exec or exit reclaims it. */
		free(db);
		return;
	}
	if (db->rtxn)
		mdb_txn_abort(db->rtxn);
	mdb_env_close(db->env);
	pk__registry_del(db->dev, db->ino);
	free(db);
}
