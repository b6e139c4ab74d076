/* The counters region: hot numbers shared by every process of a node, without locks.
 *
 * The supervisor creates it before starting children (a sealed memfd, close-on-exec),
 * children get the fd at a fixed number and map it MAP_SHARED. Nothing here is a
 * system call after the map: every update is one __atomic operation on shared memory
 * (relaxed for counters, acquire/release for flags and ownership).
 *
 * Who writes what (one writer per field group, so no field needs a lock):
 *   supervisor state .......... the supervisor
 *   child table, entry i ...... the supervisor (identity/state, under a sequence count)
 *                               and the child in slot i (its gauges)
 *   worker block w ............ workers with worker index w. Blocks are kept across a
 *                               respawn (the new worker keeps adding to the same totals,
 *                               as Prometheus counters must never go back), and during a
 *                               reload the old and the new worker w add to the same
 *                               block (atomic adds keep it exact).
 *   tunnel slots .............. the owner that allocated the slot; anyone reads them.
 *
 * Ownership of tunnel slots is by child-table slot (the process-table index), not by
 * worker index, because an old-generation worker w and a new-generation worker w run
 * side by side during a reload: releasing "worker w's" slots when one dies must not free
 * the other's.
 *
 * Counters that can go down (in-flight requests, connected tunnels) are gauges in the
 * child-table entry of the process that owns them, so when that process dies the
 * supervisor can zero them exactly (pk_counters_set_child does it on pid -> 0).
 *
 * Layout: below, in the "layout" section, with no code: a versioned header (magic
 * "PIKOCTRS", version, sizes, offsets, maximums) validated on map; a mismatch is -EPROTO.
 */
#ifndef PK_COUNTERS_H
#define PK_COUNTERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ==== layout (shared memory; no code) ==== */

#define PK_CTR_MAGIC     "PIKOCTRS" /* 8 bytes, no terminator stored */
#define PK_CTR_VERSION   2
#define PK_CTR_CACHELINE 64

#define PK_MAX_CHILDREN 128
#define PK_MAX_WORKERS  64
#define PK_MAX_TUNNELS  (1u << 20) /* per node: the packaged LimitNOFILE */

/* Role numbers are workers/child.h's enum pk_role (worker 0, admin 1, cluster 2); the
 * table has room for a few more. */
#define PK_CTR_ROLES 8

/* Supervisor flags. */
#define PK_CTR_F_READY    1u /* the current generation is serving */
#define PK_CTR_F_STOPPING 2u /* shutdown has begun */

enum pk_child_state {
	PK_CHILD_UNUSED = 0,
	PK_CHILD_STARTING,
	PK_CHILD_READY,
	PK_CHILD_DRAINING,
	PK_CHILD_DEAD,
};

/* Gauges of one child process (written by that process). */
enum pk_ctr_gauge {
	PK_CTR_G_REQUESTS_INFLIGHT = 0,
	PK_CTR_G_TUNNELS,     /* tunnels connected to this process now */
	PK_CTR_G_CONNECTIONS, /* client connections open now */
	PK_CTR_G__COUNT
};

/* Request methods counted separately; everything else is OTHER. */
enum pk_ctr_method {
	PK_CTR_M_GET = 0,
	PK_CTR_M_HEAD,
	PK_CTR_M_POST,
	PK_CTR_M_PUT,
	PK_CTR_M_DELETE,
	PK_CTR_M_CONNECT,
	PK_CTR_M_OPTIONS,
	PK_CTR_M_TRACE,
	PK_CTR_M_PATCH,
	PK_CTR_M_OTHER,
	PK_CTR_M__COUNT
};

/* Status classes: index 0..4 = 1xx..5xx, 5 = anything else (e.g. no response sent). */
#define PK_CTR_STATUS_CLASSES 6
#define PK_CTR_STATUS_OTHER   5

/* Latency histogram: Prometheus' default buckets 0.005 .. 10 s, plus +Inf. Stored per
 * bucket (not cumulative); pk_ctr_latency_bounds_us gives the upper bounds. */
#define PK_CTR_LAT_BUCKETS 12

/* Request and response size histograms (body bytes): upper bounds 256 B, 1 KiB, 4 KiB ...
 * 64 MiB (powers of 4), plus +Inf; pk_ctr_size_bounds gives them. */
#define PK_CTR_SIZE_BUCKETS 11

/* Plain per-worker counters. */
enum pk_ctr_wfield {
	PK_CTR_W_BYTES_IN = 0, /* request bytes read from clients */
	PK_CTR_W_BYTES_OUT,    /* response bytes written to clients */
	PK_CTR_W_HANDOFFS_SENT,
	PK_CTR_W_HANDOFFS_RECEIVED,
	PK_CTR_W_TUNNELS_CONNECTED, /* total tunnels accepted */
	PK_CTR_W_STREAMS_OPENED,
	PK_CTR_W_FORWARDED,   /* requests forwarded to a peer node */
	PK_CTR_W_NO_UPSTREAM, /* requests that found no upstream in time */
	PK_CTR_W__COUNT
};

struct pk_ctr_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint64_t total_size;
	uint32_t max_children, max_workers, max_tunnels, roles;
	uint32_t child_size, worker_size, tunnel_size, reserved;
	uint64_t off_supervisor, off_children, off_workers, off_tunnels;
} __attribute__((aligned(PK_CTR_CACHELINE)));

struct pk_ctr_supervisor {
	uint64_t start_time_ns; /* CLOCK_REALTIME when the supervisor started */
	uint64_t generation;    /* the serving generation */
	uint32_t flags;         /* PK_CTR_F_* */
	uint32_t tunnels_hwm;   /* one past the highest tunnel slot ever allocated */
	uint64_t reloads_ok, reloads_failed;
	uint64_t restarts[PK_CTR_ROLES]; /* unexpected child exits that were respawned */
} __attribute__((aligned(PK_CTR_CACHELINE)));

struct pk_ctr_child {
	/* Written by the supervisor. seq is odd while an update is in progress. */
	uint32_t seq;
	int32_t pid; /* 0: no process in this slot */
	int32_t role;
	int32_t worker_index;
	uint32_t generation;
	uint32_t state; /* enum pk_child_state */
	uint32_t restarts;
	uint32_t reserved;
	uint64_t started_at_ns; /* CLOCK_REALTIME when this pid was first published */
	/* Written by the child in this slot; its own cache line. */
	int64_t gauges[PK_CTR_G__COUNT] __attribute__((aligned(PK_CTR_CACHELINE)));
} __attribute__((aligned(PK_CTR_CACHELINE)));

struct pk_ctr_worker {
	uint64_t requests[PK_CTR_STATUS_CLASSES];
	uint64_t methods[PK_CTR_M__COUNT];
	uint64_t latency[PK_CTR_LAT_BUCKETS];
	uint64_t latency_sum_us;
	uint64_t latency_count;
	uint64_t req_size[PK_CTR_SIZE_BUCKETS];
	uint64_t resp_size[PK_CTR_SIZE_BUCKETS];
	uint64_t req_size_sum, resp_size_sum;
	uint64_t v[PK_CTR_W__COUNT];
} __attribute__((aligned(PK_CTR_CACHELINE)));

struct pk_ctr_tunnel {
	uint32_t owner;   /* 0 free, else child slot + 1 */
	uint32_t tag;     /* bumped on every allocation, never 0 once used */
	uint32_t streams; /* in-flight streams */
	uint32_t reserved;
};

struct pk_ctr_region {
	struct pk_ctr_header header;
	struct pk_ctr_supervisor supervisor;
	struct pk_ctr_child children[PK_MAX_CHILDREN];
	struct pk_ctr_worker workers[PK_MAX_WORKERS];
	struct pk_ctr_tunnel tunnels[PK_MAX_TUNNELS];
};

/* ==== API ==== */

struct pk_counters; /* one process's mapping */

/* Upper bounds of the first PK_CTR_LAT_BUCKETS - 1 buckets, in microseconds
 * (5000 .. 10000000); the last bucket is +Inf. */
extern const uint64_t pk_ctr_latency_bounds_us[PK_CTR_LAT_BUCKETS - 1];

/* Upper bounds, in bytes, of the first PK_CTR_SIZE_BUCKETS - 1 size buckets. */
extern const uint64_t pk_ctr_size_bounds[PK_CTR_SIZE_BUCKETS - 1];

/* Size of the region in bytes (1,085,696 bytes, about 1.04 MiB). */
size_t pk_counters_size(void);

/* Creates a zeroed, initialised region in a memfd (MFD_CLOEXEC, sealed against resizing
 * so no process can truncate it under the others) and returns the fd (>= 0; the caller
 * owns it), or -errno. *size_out (may be NULL) gets the size. Does not map it. */
int pk_counters_create(size_t *size_out);

/* Maps the region in fd (the fd stays the caller's; it may be closed afterwards) and
 * validates the header. 0 and *out, or -EPROTO (not a region of this version and layout:
 * wrong size, magic, version or layout figures), -EINVAL, -ENOMEM or another -errno. */
int pk_counters_map(int fd, struct pk_counters **out);

/* Unmaps and frees (NULL is fine). */
void pk_counters_unmap(struct pk_counters *c);

/* The raw region, for readers that want to walk it (admin metrics, tests). */
struct pk_ctr_region *pk_counters_region(struct pk_counters *c);

/* ---- supervisor state (written by the supervisor) ---- */

/* Records now as the start time. */
void pk_counters_set_started(struct pk_counters *c);
/* Publishes the serving generation and the ready/stopping flags (release order: a reader
 * that sees READY also sees the generation). */
void pk_counters_set_state(struct pk_counters *c, uint32_t generation, int ready, int stopping);
/* Counts a finished reload, successful or not. */
void pk_counters_reload_done(struct pk_counters *c, int ok);
/* Counts a respawn of a child with this role (out-of-range roles are ignored). */
void pk_counters_child_restarted(struct pk_counters *c, int role);
/* Whether the READY flag is set and STOPPING is not. */
int pk_counters_is_ready(const struct pk_counters *c);

struct pk_ctr_supervisor_info {
	uint64_t start_time_ns, generation, reloads_ok, reloads_failed;
	uint64_t restarts[PK_CTR_ROLES];
	uint32_t flags;
};
void pk_counters_read_supervisor(const struct pk_counters *c, struct pk_ctr_supervisor_info *out);

/* ---- child table ---- */

/* Publishes child-table entry slot (supervisor only). started_at is set when a new
 * nonzero pid appears. When the pid goes from nonzero to 0 (the process was reaped), the
 * slot's gauges are zeroed and every tunnel slot it owned is released, since that
 * process can no longer do it. Returns 0 or -EINVAL (slot out of range). */
int pk_counters_set_child(struct pk_counters *c, int slot, pid_t pid, int role, int worker_index,
                          uint32_t generation, enum pk_child_state state, unsigned restarts);

struct pk_ctr_child_info {
	pid_t pid;
	int role, worker_index;
	uint32_t generation, restarts;
	enum pk_child_state state;
	uint64_t started_at_ns;
	int64_t gauges[PK_CTR_G__COUNT];
};
/* Reads a consistent copy of entry slot. 0, -EINVAL, or -EAGAIN if the supervisor was
 * mid-update for too long (retry later). */
int pk_counters_get_child(const struct pk_counters *c, int slot, struct pk_ctr_child_info *out);

/* Adds delta to a gauge of the calling child's own slot. Out-of-range slot/gauge: no-op. */
void pk_counters_gauge_add(struct pk_counters *c, int slot, enum pk_ctr_gauge g, int64_t delta);
/* Zeroes a slot's gauges (the supervisor, for a process known dead). */
void pk_counters_reset_gauges(struct pk_counters *c, int slot);

/* ---- per-worker counters (out-of-range worker/field: no-op) ---- */

/* Counts one finished request: status class, method, latency histogram and sum. */
void pk_counters_request_done(struct pk_counters *c, int worker, enum pk_ctr_method m, int status,
                              uint64_t latency_us);
void pk_counters_worker_add(struct pk_counters *c, int worker, enum pk_ctr_wfield f, uint64_t n);
/* Counts one request's body sizes in the size histograms. */
void pk_counters_request_sizes(struct pk_counters *c, int worker, uint64_t request_bytes,
                               uint64_t response_bytes);
/* Copies worker block w (each field read atomically). 0 or -EINVAL. */
int pk_counters_read_worker(const struct pk_counters *c, int worker, struct pk_ctr_worker *out);
/* Maps a method token ("GET", ...; case-sensitive, as HTTP) to its index. */
enum pk_ctr_method pk_counters_method(const char *method, size_t len);
/* Histogram bucket for a latency. */
int pk_counters_latency_bucket(uint64_t latency_us);

/* ---- tunnel slots ---- */

/* Takes a free slot for owner (the caller's child-table slot, 0..PK_MAX_CHILDREN-1);
 * *slot and *tag identify it (store both in the route). Search starts in a region per
 * owner, so owners rarely contend for the same cache lines. 0, -ENOSPC (all taken),
 * -EINVAL. */
int pk_counters_tunnel_alloc(struct pk_counters *c, int owner, uint32_t *slot, uint32_t *tag);
/* Gives a slot back. 0, -EINVAL, -EPERM (owned by another), -ESTALE (tag differs: the
 * slot was released and reused meanwhile). */
int pk_counters_tunnel_free(struct pk_counters *c, int owner, uint32_t slot, uint32_t tag);
/* Owner only: adds delta to the slot's in-flight streams (saturating at 0). 0, -EINVAL,
 * -ESTALE. */
int pk_counters_tunnel_streams_add(struct pk_counters *c, uint32_t slot, uint32_t tag,
                                   int32_t delta);
/* Anyone: in-flight streams of (slot, tag). 0 and *n, -EINVAL, or -ESTALE when the slot
 * is free or now holds another tunnel. */
int pk_counters_tunnel_streams(const struct pk_counters *c, uint32_t slot, uint32_t tag,
                               uint32_t *n);
/* Releases every slot held by owner (a dead child's slot index). Returns the number
 * released, or -EINVAL. Only for an owner that is gone: a live one would keep using its
 * slots (it would see -ESTALE/-EPERM once they are reused). */
int pk_counters_release_all_for_worker(struct pk_counters *c, int owner);

#endif
