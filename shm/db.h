/* The LMDB adapter: the only module that includes <lmdb.h>.
 *
 * One LMDB environment (a directory holding data.mdb and lock.mdb; MDB_NOSUBDIR is not
 * used) is the node's shared state. Every process of a node (supervisor, workers, admin,
 * cluster) opens it itself, after its own exec, and reads it through lock-free MVCC
 * snapshots while writers are serialised by LMDB's writer lock in lock.mdb.
 *
 * Rules for callers (LMDB's own, restated because breaking them corrupts state silently):
 *  - Open an environment at most once per process (pk_db_open refuses a second open of
 *    the same directory with -EBUSY): LMDB's liveness locks are POSIX fcntl locks, which
 *    a process drops on *any* close of the lock file.
 *  - A handle never crosses fork(). Open after fork (pikod forks then execs, so each
 *    child opens its own). In a forked child every call on an inherited handle fails with
 *    -EBADF, and pk_db_close only frees the wrapper without touching the environment (a
 *    real close would clear the parent's reader slot).
 *  - No threads: a handle is used by one thread.
 *  - Calls do not nest: calling into the same handle from a scan callback or from a
 *    pk_db_write function fails with -EBUSY (use the pk_db_txn_* helpers inside a write).
 *
 * Reads: each handle keeps one read-only transaction (MDB_NOTLS, so it owns one reader
 * slot for the life of the handle). A read renews it, works, and resets it before
 * returning, so no read ever pins an old snapshot and callers never hold LMDB pointers
 * after a call: values are copied out (pk_db_get) or shown to a callback for the
 * duration of that callback only (pk_db_scan).
 *
 * Databases: five named databases, fixed at open. "routes" is MDB_DUPSORT: one key holds
 * a sorted set of distinct values (one endpoint -> several tunnels); the others map a key
 * to one value.
 *
 * Errors: every function returns 0 (or a count) on success and a negative errno on
 * failure; pk_db_strerror() describes them. LMDB codes are translated:
 *   MDB_NOTFOUND -> -ENOENT        MDB_KEYEXIST -> -EEXIST
 *   MDB_MAP_FULL -> -ENOSPC        (only after growing the map up to max_mapsize)
 *   MDB_TXN_FULL -> -E2BIG         (one write transaction touched too many pages)
 *   MDB_READERS_FULL, MDB_MAP_RESIZED -> -EAGAIN (only after the retries below)
 *   MDB_DBS_FULL -> -EMFILE        MDB_BAD_VALSIZE -> -EINVAL
 *   MDB_INVALID, MDB_VERSION_MISMATCH, MDB_INCOMPATIBLE -> -EPROTO (not our file format)
 *   MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_PANIC and other internal codes -> -EIO
 *   system errors (open, mmap, ...) -> -errno
 * Retries done here: MDB_MAP_RESIZED (another process grew the map) -> adopt the new size
 * and retry; MDB_READERS_FULL -> mdb_reader_check, retry once; MDB_MAP_FULL on a write
 * -> double the map (up to max_mapsize) and run the write again.
 */
#ifndef PK_DB_H
#define PK_DB_H

#include <stddef.h>

/* The named databases. Key and value layouts belong to the modules that use them. */
enum pk_db_which {
	PK_DB_ROUTES = 0, /* MDB_DUPSORT: endpoint -> local tunnels */
	PK_DB_NODES,      /* node id -> node record */
	PK_DB_REMOTE,     /* endpoint -> remote upstream info */
	PK_DB_LOG,        /* (origin, seq) -> cluster log entry */
	PK_DB_META,       /* small node-local facts */
	PK_DB__COUNT
};

/* Size limits. Keys (all dbs) and values of the DUPSORT db are stored as LMDB keys, so
 * they are bounded by LMDB's compiled-in maximum key size (511 bytes). */
#define PK_DB_MAX_KEY         511
#define PK_DB_MAX_DUP_VALUE   511
#define PK_DB_MAX_VALUE       (64 * 1024)
#define PK_DB_DEFAULT_MAPSIZE ((size_t)256 << 20)
#define PK_DB_DEFAULT_MAXMAP  ((size_t)4 << 30)
#define PK_DB_DEFAULT_READERS 126

struct pk_db_options {
	/* Initial map size in bytes (0: PK_DB_DEFAULT_MAPSIZE). Rounded to the page size.
	 * The data file only grows as data is written; the map is address space. */
	size_t mapsize;
	/* Largest map a write may grow to on MDB_MAP_FULL (0: PK_DB_DEFAULT_MAXMAP). */
	size_t max_mapsize;
	/* Reader slots in the lock file (0: PK_DB_DEFAULT_READERS). Each open handle holds
	 * one slot for its life; only the first process to create lock.mdb sets this. */
	unsigned maxreaders;
	/* Nonzero: fsync on commit. Zero (default): MDB_NOSYNC, since the state is
	 * rebuilt on start and should live on tmpfs; a process crash loses nothing, an OS
	 * crash may lose the file. */
	int sync;
};

struct pk_db;     /* one open environment */
struct pk_db_txn; /* a write transaction, valid only inside a pk_db_write function */

/* Called for each (key, value) pair visited. The pointers point into the map and are
 * valid only until the callback returns: copy what you keep. Return 0 to continue, a
 * positive value to stop (the visit counts), or a negative errno to abort the call,
 * which then returns that value. */
typedef int (*pk_db_row_cb)(const void *key, size_t keylen, const void *val, size_t vallen,
                            void *ud);

/* Runs inside one write transaction. Return >= 0 to commit (pk_db_write returns that
 * value), < 0 to abort (pk_db_write returns it). The function may run more than once
 * (after the map is grown, the transaction is replayed from scratch), so it must have
 * no effects outside the transaction beyond ones it can redo. */
typedef int (*pk_db_write_fn)(struct pk_db_txn *txn, void *ud);

/* Opens (creating if needed) the environment in dir: mkdir -p dir with mode 0700, files
 * mode 0600, flags MDB_NOTLS (+ MDB_NOSYNC unless opt->sync), every fd close-on-exec.
 * Clears stale reader slots (logged), creates the named databases, and sets *out.
 * opt may be NULL for defaults. Errors: -EINVAL (bad arguments, or mapsize >
 * max_mapsize), -ENAMETOOLONG, -ENOTDIR / -EACCES / ... (dir unusable), -EBUSY (already
 * open in this process), -EPROTO (not an LMDB environment of ours), -ENOMEM, -EIO.
 * Failures are also logged (subsystem "shm") with the directory and the reason. */
int pk_db_open(struct pk_db **out, const char *dir, const struct pk_db_options *opt);

/* Closes the environment and frees db (NULL is fine). Releases this process's reader
 * slot. See the fork rule above for a handle inherited across fork(). */
void pk_db_close(struct pk_db *db);

/* Copies the value of key into buf and sets *len to its length. For the DUPSORT db the
 * first (smallest) value is returned. Errors: -ENOENT, -ENOBUFS (buf too small; *len
 * is set to the size needed and buf is untouched), -EINVAL, -EBUSY, -EBADF, -EAGAIN. */
int pk_db_get(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen, void *buf,
              size_t bufsize, size_t *len);

/* Calls cb for each pair whose key starts with prefix (prefixlen 0: every pair), in key
 * order, duplicates in value order, all from one snapshot. Returns the number of pairs
 * passed to cb, or a negative errno (cb's own negative value included). */
int pk_db_scan(struct pk_db *db, enum pk_db_which which, const void *prefix, size_t prefixlen,
               pk_db_row_cb cb, void *ud);

/* As pk_db_scan, but starts at the first key >= start (which should itself begin with
 * prefix), e.g. "log entries of origin O after sequence S". */
int pk_db_scan_from(struct pk_db *db, enum pk_db_which which, const void *start, size_t startlen,
                    const void *prefix, size_t prefixlen, pk_db_row_cb cb, void *ud);

/* Calls cb once with the last pair whose key starts with prefix (its last duplicate).
 * Returns 0, or -ENOENT when no key has that prefix, or another negative errno. */
int pk_db_last(struct pk_db *db, enum pk_db_which which, const void *prefix, size_t prefixlen,
               pk_db_row_cb cb, void *ud);

/* Number of pairs (duplicates counted) in a database: 0 and *n, or a negative errno. */
int pk_db_count(struct pk_db *db, enum pk_db_which which, size_t *n);

/* Stores key -> val in its own write transaction. Plain dbs: replaces any old value.
 * DUPSORT db: adds val to the key's set; adding a pair that exists is a no-op.
 * Errors: -EINVAL (empty key), -E2BIG (key or value over the limits above), -ENOSPC
 * (map at max_mapsize), -EBUSY, -EBADF, -EAGAIN, -EIO. */
int pk_db_put(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen,
              const void *val, size_t vallen);

/* Deletes in its own write transaction. val == NULL: the key and all its values.
 * val != NULL on the DUPSORT db: only that exact (key, val) pair. (On plain dbs val is
 * ignored.) Errors: -ENOENT (nothing matched), and as pk_db_put. */
int pk_db_del(struct pk_db *db, enum pk_db_which which, const void *key, size_t keylen,
              const void *val, size_t vallen);

/* In one write transaction, visits every pair of the db and deletes those for which cb
 * returns a positive value (here positive means "delete", not "stop"; 0 keeps the pair;
 * a negative value aborts the whole transaction and is returned). Returns the number of pairs
 * deleted. Used to purge a dead worker's routes. cb may run more than once per pair (see
 * pk_db_write_fn). */
int pk_db_del_matching(struct pk_db *db, enum pk_db_which which, pk_db_row_cb cb, void *ud);

/* Empties a database in one write transaction (the supervisor does this to the routes of
 * a previous run). 0 or a negative errno. */
int pk_db_clear(struct pk_db *db, enum pk_db_which which);

/* Runs fn inside one write transaction: commits if fn returns >= 0, aborts otherwise.
 * Returns fn's value, or the commit's error. fn uses the pk_db_txn_* helpers below. */
int pk_db_write(struct pk_db *db, pk_db_write_fn fn, void *ud);

/* Helpers usable only inside a pk_db_write function, on the txn it was given. Same
 * semantics and errors as their pk_db_* namesakes, seeing the transaction's own writes.
 * PK_DB_NOOVERWRITE makes txn_put fail with -EEXIST when the key (plain db) or the exact
 * pair (DUPSORT db) exists. After a helper fails with -ENOSPC or -E2BIG the transaction
 * is dead: return the error. txn_scan's callback must not write through txn. */
#define PK_DB_NOOVERWRITE 1u
int pk_db_txn_put(struct pk_db_txn *txn, enum pk_db_which which, const void *key, size_t keylen,
                  const void *val, size_t vallen, unsigned flags);
int pk_db_txn_del(struct pk_db_txn *txn, enum pk_db_which which, const void *key, size_t keylen,
                  const void *val, size_t vallen);
int pk_db_txn_get(struct pk_db_txn *txn, enum pk_db_which which, const void *key, size_t keylen,
                  void *buf, size_t bufsize, size_t *len);
int pk_db_txn_scan(struct pk_db_txn *txn, enum pk_db_which which, const void *start,
                   size_t startlen, const void *prefix, size_t prefixlen, pk_db_row_cb cb,
                   void *ud);
int pk_db_txn_clear(struct pk_db_txn *txn, enum pk_db_which which);

/* Clears reader slots left by dead processes (the supervisor calls it after a child
 * crash). *dead (may be NULL) gets how many were cleared. 0 or a negative errno. */
int pk_db_reader_check(struct pk_db *db, int *dead);

struct pk_db_stat {
	size_t mapsize; /* this process's current map size */
	size_t used;    /* bytes of the data file in use (last page + 1) */
	size_t page_size;
	unsigned maxreaders;
	unsigned numreaders; /* reader slots ever used (high-water mark, includes dead) */
};

/* Fills *st. 0 or a negative errno. */
int pk_db_stat(struct pk_db *db, struct pk_db_stat *st);

/* Name of a database ("routes", ...), or "?" for an out-of-range value. */
const char *pk_db_name(enum pk_db_which which);

/* Describes a negative errno returned by this module (falls back to strerror). */
const char *pk_db_strerror(int err);

#endif
