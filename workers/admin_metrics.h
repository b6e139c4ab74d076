/* The admin API's Prometheus exposition (text format 0.0.4), rendered from a snapshot.
 *
 * The admin child fills a struct pk_metrics_snapshot from the counters region, the child
 * table, the routing table and /proc (workers/admin.c does that), then calls
 * pk_metrics_render(). This module only formats: no shared memory, no LMDB, no loop, so
 * it is tested on synthetic snapshots (tests/unit/test_admin_metrics.c).
 *
 * Guarantees of the text (what a strict parser checks):
 *   - every family has one "# HELP" and one "# TYPE" line, before its samples, and its
 *     samples are contiguous; no series appears twice;
 *   - label values are escaped (backslash, double quote, newline);
 *   - the latency histogram's buckets are cumulative, so never decrease, and the "+Inf"
 *     bucket equals _count by construction (both are the sum of the stored buckets, which
 *     are read one by one while workers keep adding, so a stored total count could lag
 *     them).
 *
 * Metric names and what they come from are listed in docs/observability.md.
 */
#ifndef PK_ADMIN_METRICS_H
#define PK_ADMIN_METRICS_H

#include "shm/counters.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Largest exposition pk_metrics_render produces; beyond it -E2BIG (a full table of 128
 * children renders in about 40 KiB). */
#define PK_METRICS_MAX_TEXT (4u << 20)

/* One child-table entry as the exposition needs it. */
struct pk_metrics_child {
	int slot;
	int role; /* enum pk_role: 0 worker, 1 admin, 2 cluster */
	int worker_index;
	uint32_t generation;
	enum pk_child_state state;
	pid_t pid; /* 0: no process in the slot now */
	int64_t gauges[PK_CTR_G__COUNT];
	int have_proc; /* rss_bytes/open_fds were read */
	uint64_t rss_bytes, open_fds;
};

struct pk_metrics_snapshot {
	const char *version; /* pikod's version, for pikod_build_info */
	const char *node_id;
	struct pk_ctr_supervisor_info sup;
	/* Sum of every worker block (pk_metrics_add_worker). */
	struct pk_ctr_worker total;
	/* Upper bounds of the first PK_CTR_LAT_BUCKETS - 1 latency buckets (microseconds,
	 * increasing); the last bucket is +Inf. */
	uint64_t latency_bounds_us[PK_CTR_LAT_BUCKETS - 1];
	/* Entries of the child table with a role (state != PK_CHILD_UNUSED). */
	struct pk_metrics_child children[PK_MAX_CHILDREN];
	int nchildren;
	/* The supervisor process's own figures. */
	int sup_have_proc;
	uint64_t sup_rss_bytes, sup_open_fds;
	/* From the routing table: endpoints with at least one tunnel, tunnel rows, and the
	 * sum of their in-flight streams. -1 when the table could not be read (those
	 * families are then left out rather than reported as 0). */
	long endpoints, tunnels;
	uint64_t tunnel_streams;
};

/* Adds every counter of worker block w into total (Prometheus sums over workers). */
void pk_metrics_add_worker(struct pk_ctr_worker *total, const struct pk_ctr_worker *w);

/* Renders the exposition of s. On success returns 0 and sets *text (NUL-terminated,
 * malloc'd, the caller frees it) and *len. Errors: -ENOMEM, -E2BIG (over
 * PK_METRICS_MAX_TEXT), -EINVAL (s, text or len NULL). */
int pk_metrics_render(const struct pk_metrics_snapshot *s, char **text, size_t *len);

/* Reads the resident set size (bytes, from /proc/<pid>/statm) and the number of open
 * descriptors (entries of /proc/<pid>/fd, counted up to 1,048,576) of process pid.
 * 0, or -errno (-ENOENT: no such process; -EACCES: not ours to inspect). */
int pk_metrics_proc_stats(pid_t pid, uint64_t *rss_bytes, uint64_t *open_fds);

/* The content type of the exposition. */
#define PK_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
