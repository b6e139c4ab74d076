/* The counters region. See counters.h for the contract and the layout. */
#include "shm/counters.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PK__RELAXED    __ATOMIC_RELAXED
#define PK__ACQUIRE    __ATOMIC_ACQUIRE
#define PK__RELEASE    __ATOMIC_RELEASE
#define PK__SEQ_TRIES  1000 /* a supervisor update is a few stores: this is generous */
#define PK__OWNER_SPAN (PK_MAX_TUNNELS / PK_MAX_CHILDREN)

_Static_assert(sizeof(PK_CTR_MAGIC) - 1 == 8, "magic is 8 bytes");
_Static_assert(sizeof(struct pk_ctr_region) <= 24u << 20, "counters region over 24 MiB");
_Static_assert(PK_MAX_TUNNELS % PK_MAX_CHILDREN == 0, "owner regions must tile the slots");
_Static_assert(sizeof(struct pk_ctr_child) % PK_CTR_CACHELINE == 0, "child entry alignment");
_Static_assert(sizeof(struct pk_ctr_worker) % PK_CTR_CACHELINE == 0, "worker block alignment");

const uint64_t pk_ctr_latency_bounds_us[PK_CTR_LAT_BUCKETS - 1] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

struct pk_counters {
	struct pk_ctr_region *r;
	size_t size;
	int hint_owner; /* owner the hint belongs to, -1 none */
	uint32_t hint;  /* next slot to try for hint_owner */
};

static uint64_t pk__now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- create, map, validate ---- */

size_t pk_counters_size(void)
{
	return sizeof(struct pk_ctr_region);
}

static void pk__header_init(struct pk_ctr_header *h)
{
	memcpy(h->magic, PK_CTR_MAGIC, sizeof(h->magic));
	h->version = PK_CTR_VERSION;
	h->header_size = sizeof(*h);
	h->total_size = sizeof(struct pk_ctr_region);
	h->max_children = PK_MAX_CHILDREN;
	h->max_workers = PK_MAX_WORKERS;
	h->max_tunnels = PK_MAX_TUNNELS;
	h->roles = PK_CTR_ROLES;
	h->child_size = sizeof(struct pk_ctr_child);
	h->worker_size = sizeof(struct pk_ctr_worker);
	h->tunnel_size = sizeof(struct pk_ctr_tunnel);
	h->off_supervisor = offsetof(struct pk_ctr_region, supervisor);
	h->off_children = offsetof(struct pk_ctr_region, children);
	h->off_workers = offsetof(struct pk_ctr_region, workers);
	h->off_tunnels = offsetof(struct pk_ctr_region, tunnels);
}

/* A region is ours if every figure matches what this binary would have written: a
 * child from an upgraded binary with another layout must refuse, not misread. */
static int pk__header_ok(const struct pk_ctr_header *h)
{
	struct pk_ctr_header want;

	memset(&want, 0, sizeof(want));
	pk__header_init(&want);
	return memcmp(h, &want, sizeof(want)) == 0;
}

int pk_counters_create(size_t *size_out)
{
	size_t size = sizeof(struct pk_ctr_region);
	struct pk_ctr_region *r;
	int fd, err;

	fd = memfd_create("pikod-counters", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) != 0)
		goto err_close_fd;
	r = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r == MAP_FAILED)
		goto err_close_fd;
	/* A new memfd is zero-filled: only the header needs writing. */
	pk__header_init(&r->header);
	munmap(r, size);
	/* No process may shrink the file under the others' maps (SIGBUS) or grow it. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
		goto err_close_fd;
	if (size_out)
		*size_out = size;
	return fd;

err_close_fd:
	err = errno;
	close(fd);
	return -err;
}

int pk_counters_map(int fd, struct pk_counters **out)
{
	size_t size = sizeof(struct pk_ctr_region);
	struct pk_counters *c;
	struct stat st;
	void *p;

	if (!out || fd < 0)
		return -EINVAL;
	*out = NULL;
	if (fstat(fd, &st) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
		return -EPROTO;
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	if (!pk__header_ok(p)) {
		munmap(p, size);
		return -EPROTO;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		munmap(p, size);
		return -ENOMEM;
	}
	c->r = p;
	c->size = size;
	c->hint_owner = -1;
	*out = c;
	return 0;
}

void pk_counters_unmap(struct pk_counters *c)
{
	if (!c)
		return;
	munmap(c->r, c->size);
	free(c);
}

struct pk_ctr_region *pk_counters_region(struct pk_counters *c)
{
	return c ? c->r : NULL;
}

/* ---- supervisor state ---- */

void pk_counters_set_started(struct pk_counters *c)
{
	__atomic_store_n(&c->r->supervisor.start_time_ns, pk__now_ns(), PK__RELAXED);
}

void pk_counters_set_state(struct pk_counters *c, uint32_t generation, int ready, int stopping)
{
	struct pk_ctr_supervisor *s = &c->r->supervisor;
	uint32_t flags = (ready ? PK_CTR_F_READY : 0) | (stopping ? PK_CTR_F_STOPPING : 0);

	__atomic_store_n(&s->generation, generation, PK__RELAXED);
	__atomic_store_n(&s->flags, flags, PK__RELEASE);
}

void pk_counters_reload_done(struct pk_counters *c, int ok)
{
	struct pk_ctr_supervisor *s = &c->r->supervisor;

	__atomic_fetch_add(ok ? &s->reloads_ok : &s->reloads_failed, 1, PK__RELAXED);
}

void pk_counters_child_restarted(struct pk_counters *c, int role)
{
	if (role < 0 || role >= PK_CTR_ROLES)
		return;
	__atomic_fetch_add(&c->r->supervisor.restarts[role], 1, PK__RELAXED);
}

int pk_counters_is_ready(const struct pk_counters *c)
{
	uint32_t f = __atomic_load_n(&c->r->supervisor.flags, PK__ACQUIRE);

	return (f & PK_CTR_F_READY) && !(f & PK_CTR_F_STOPPING);
}

void pk_counters_read_supervisor(const struct pk_counters *c, struct pk_ctr_supervisor_info *out)
{
	const struct pk_ctr_supervisor *s = &c->r->supervisor;

	out->flags = __atomic_load_n(&s->flags, PK__ACQUIRE);
	out->generation = __atomic_load_n(&s->generation, PK__RELAXED);
	out->start_time_ns = __atomic_load_n(&s->start_time_ns, PK__RELAXED);
	out->reloads_ok = __atomic_load_n(&s->reloads_ok, PK__RELAXED);
	out->reloads_failed = __atomic_load_n(&s->reloads_failed, PK__RELAXED);
	for (int i = 0; i < PK_CTR_ROLES; i++)
		out->restarts[i] = __atomic_load_n(&s->restarts[i], PK__RELAXED);
}

/* ---- child table ---- */

void pk_counters_reset_gauges(struct pk_counters *c, int slot)
{
	if (slot < 0 || slot >= PK_MAX_CHILDREN)
		return;
	for (int g = 0; g < PK_CTR_G__COUNT; g++)
		__atomic_store_n(&c->r->children[slot].gauges[g], 0, PK__RELAXED);
}

/* Sequence-count writer: readers retry while seq is odd or changed under them. */
int pk_counters_set_child(struct pk_counters *c, int slot, pid_t pid, int role, int worker_index,
                          uint32_t generation, enum pk_child_state state, unsigned restarts)
{
	struct pk_ctr_child *e;
	uint32_t seq;
	int32_t old_pid;

	if (slot < 0 || slot >= PK_MAX_CHILDREN)
		return -EINVAL;
	e = &c->r->children[slot];
	old_pid = __atomic_load_n(&e->pid, PK__RELAXED);
	if (old_pid != 0 && pid == 0) {
		/* The process in this slot was reaped: nobody else can undo what it held. */
		pk_counters_reset_gauges(c, slot);
		pk_counters_release_all_for_worker(c, slot);
	}
	seq = __atomic_load_n(&e->seq, PK__RELAXED);
	__atomic_store_n(&e->seq, seq + 1, PK__RELAXED);
	__atomic_thread_fence(PK__RELEASE);
	__atomic_store_n(&e->pid, (int32_t)pid, PK__RELAXED);
	__atomic_store_n(&e->role, (int32_t)role, PK__RELAXED);
	__atomic_store_n(&e->worker_index, (int32_t)worker_index, PK__RELAXED);
	__atomic_store_n(&e->generation, generation, PK__RELAXED);
	__atomic_store_n(&e->state, (uint32_t)state, PK__RELAXED);
	__atomic_store_n(&e->restarts, (uint32_t)restarts, PK__RELAXED);
	if (pid != 0 && pid != old_pid)
		__atomic_store_n(&e->started_at_ns, pk__now_ns(), PK__RELAXED);
	__atomic_store_n(&e->seq, seq + 2, PK__RELEASE);
	return 0;
}

static void pk__child_copy(const struct pk_ctr_child *e, struct pk_ctr_child_info *out)
{
	out->pid = __atomic_load_n(&e->pid, PK__RELAXED);
	out->role = __atomic_load_n(&e->role, PK__RELAXED);
	out->worker_index = __atomic_load_n(&e->worker_index, PK__RELAXED);
	out->generation = __atomic_load_n(&e->generation, PK__RELAXED);
	out->state = (enum pk_child_state)__atomic_load_n(&e->state, PK__RELAXED);
	out->restarts = __atomic_load_n(&e->restarts, PK__RELAXED);
	out->started_at_ns = __atomic_load_n(&e->started_at_ns, PK__RELAXED);
}

int pk_counters_get_child(const struct pk_counters *c, int slot, struct pk_ctr_child_info *out)
{
	const struct pk_ctr_child *e;

	if (slot < 0 || slot >= PK_MAX_CHILDREN || !out)
		return -EINVAL;
	e = &c->r->children[slot];
	for (int i = 0; i < PK__SEQ_TRIES; i++) {
		uint32_t s1 = __atomic_load_n(&e->seq, PK__ACQUIRE), s2;

		if (s1 & 1)
			continue;
		pk__child_copy(e, out);
		__atomic_thread_fence(PK__ACQUIRE);
		s2 = __atomic_load_n(&e->seq, PK__RELAXED);
		if (s1 != s2)
			continue;
		/* Gauges are the child's own, each atomic by itself. */
		for (int g = 0; g < PK_CTR_G__COUNT; g++)
			out->gauges[g] = __atomic_load_n(&e->gauges[g], PK__RELAXED);
		return 0;
	}
	return -EAGAIN;
}

void pk_counters_gauge_add(struct pk_counters *c, int slot, enum pk_ctr_gauge g, int64_t delta)
{
	if (slot < 0 || slot >= PK_MAX_CHILDREN || (unsigned)g >= PK_CTR_G__COUNT)
		return;
	__atomic_fetch_add(&c->r->children[slot].gauges[g], delta, PK__RELAXED);
}

/* ---- per-worker counters ---- */

const uint64_t pk_ctr_size_bounds[PK_CTR_SIZE_BUCKETS - 1] = {
    256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
};

static int pk__size_bucket(uint64_t n)
{
	int i = 0;
	while (i < PK_CTR_SIZE_BUCKETS - 1 && n > pk_ctr_size_bounds[i])
		i++;
	return i;
}

void pk_counters_request_sizes(struct pk_counters *c, int worker, uint64_t request_bytes,
                               uint64_t response_bytes)
{
	if (c == NULL || worker < 0 || worker >= PK_MAX_WORKERS)
		return;
	struct pk_ctr_worker *w = &c->r->workers[worker];
	__atomic_fetch_add(&w->req_size[pk__size_bucket(request_bytes)], 1, PK__RELAXED);
	__atomic_fetch_add(&w->resp_size[pk__size_bucket(response_bytes)], 1, PK__RELAXED);
	__atomic_fetch_add(&w->req_size_sum, request_bytes, PK__RELAXED);
	__atomic_fetch_add(&w->resp_size_sum, response_bytes, PK__RELAXED);
}

int pk_counters_latency_bucket(uint64_t latency_us)
{
	int i = 0;

	while (i < PK_CTR_LAT_BUCKETS - 1 && latency_us > pk_ctr_latency_bounds_us[i])
		i++;
	return i;
}

void pk_counters_request_done(struct pk_counters *c, int worker, enum pk_ctr_method m, int status,
                              uint64_t latency_us)
{
	struct pk_ctr_worker *w;
	int cls = status >= 100 && status <= 599 ? status / 100 - 1 : PK_CTR_STATUS_OTHER;

	if (worker < 0 || worker >= PK_MAX_WORKERS)
		return;
	if ((unsigned)m >= PK_CTR_M__COUNT)
		m = PK_CTR_M_OTHER;
	w = &c->r->workers[worker];
	__atomic_fetch_add(&w->requests[cls], 1, PK__RELAXED);
	__atomic_fetch_add(&w->methods[m], 1, PK__RELAXED);
	__atomic_fetch_add(&w->latency[pk_counters_latency_bucket(latency_us)], 1, PK__RELAXED);
	__atomic_fetch_add(&w->latency_sum_us, latency_us, PK__RELAXED);
	__atomic_fetch_add(&w->latency_count, 1, PK__RELAXED);
}

void pk_counters_worker_add(struct pk_counters *c, int worker, enum pk_ctr_wfield f, uint64_t n)
{
	if (worker < 0 || worker >= PK_MAX_WORKERS || (unsigned)f >= PK_CTR_W__COUNT)
		return;
	__atomic_fetch_add(&c->r->workers[worker].v[f], n, PK__RELAXED);
}

int pk_counters_read_worker(const struct pk_counters *c, int worker, struct pk_ctr_worker *out)
{
	const uint64_t *src;
	uint64_t *dst;

	if (worker < 0 || worker >= PK_MAX_WORKERS || !out)
		return -EINVAL;
	/* The block is all uint64_t: copy field by field, each load atomic. */
	src = (const uint64_t *)&c->r->workers[worker];
	dst = (uint64_t *)out;
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], PK__RELAXED);
	return 0;
}

enum pk_ctr_method pk_counters_method(const char *method, size_t len)
{
	static const char *const names[PK_CTR_M_OTHER] = {
	    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
	};

	for (int i = 0; method && i < PK_CTR_M_OTHER; i++)
		if (strlen(names[i]) == len && memcmp(names[i], method, len) == 0)
			return (enum pk_ctr_method)i;
	return PK_CTR_M_OTHER;
}

/* ---- tunnel slots ---- */

int pk_counters_tunnel_alloc(struct pk_counters *c, int owner, uint32_t *slot, uint32_t *tag)
{
	uint32_t start, want = (uint32_t)owner + 1;

	if (owner < 0 || owner >= PK_MAX_CHILDREN || !slot || !tag)
		return -EINVAL;
	start = c->hint_owner == owner ? c->hint : (uint32_t)owner * PK__OWNER_SPAN;
	for (uint32_t i = 0; i < PK_MAX_TUNNELS; i++) {
		uint32_t s = (start + i) % PK_MAX_TUNNELS, expect = 0, t;
		struct pk_ctr_tunnel *e = &c->r->tunnels[s];

		if (__atomic_load_n(&e->owner, PK__RELAXED) != 0)
			continue;
		if (!__atomic_compare_exchange_n(&e->owner, &expect, want, 0, __ATOMIC_ACQ_REL,
		                                 PK__RELAXED))
			continue;
		/* Ours now: only the owner writes tag and streams. Publishing the new tag
		 * with release makes a reader that sees it also see streams == 0. */
		__atomic_store_n(&e->streams, 0, PK__RELAXED);
		t = __atomic_load_n(&e->tag, PK__RELAXED) + 1;
		if (t == 0)
			t = 1;
		__atomic_store_n(&e->tag, t, PK__RELEASE);
		c->hint_owner = owner;
		c->hint = (s + 1) % PK_MAX_TUNNELS;
		/* Scans of every slot stop at the high-water mark. */
		uint32_t hwm = __atomic_load_n(&c->r->supervisor.tunnels_hwm, PK__RELAXED);
		while (s + 1 > hwm &&
		       !__atomic_compare_exchange_n(&c->r->supervisor.tunnels_hwm, &hwm, s + 1, 1,
		                                    __ATOMIC_ACQ_REL, PK__RELAXED))
			;
		*slot = s;
		*tag = t;
		return 0;
	}
	return -ENOSPC;
}

int pk_counters_tunnel_free(struct pk_counters *c, int owner, uint32_t slot, uint32_t tag)
{
	struct pk_ctr_tunnel *e;

	if (owner < 0 || owner >= PK_MAX_CHILDREN || slot >= PK_MAX_TUNNELS)
		return -EINVAL;
	e = &c->r->tunnels[slot];
	if (__atomic_load_n(&e->tag, PK__ACQUIRE) != tag)
		return -ESTALE;
	if (__atomic_load_n(&e->owner, PK__ACQUIRE) != (uint32_t)owner + 1)
		return -EPERM;
	__atomic_store_n(&e->streams, 0, PK__RELAXED);
	__atomic_store_n(&e->owner, 0, PK__RELEASE);
	/* Reuse low slots first: the table's pages are touched (and resident) only as far
	 * as tunnels have ever reached, not swept through by churn. */
	if (c->hint_owner == owner && slot < c->hint)
		c->hint = slot;
	return 0;
}

static int pk__tunnel_live(const struct pk_ctr_tunnel *e, uint32_t tag)
{
	return __atomic_load_n(&e->tag, PK__ACQUIRE) == tag &&
	       __atomic_load_n(&e->owner, PK__ACQUIRE) != 0;
}

int pk_counters_tunnel_streams_add(struct pk_counters *c, uint32_t slot, uint32_t tag,
                                   int32_t delta)
{
	struct pk_ctr_tunnel *e;
	uint32_t cur, next;

	if (slot >= PK_MAX_TUNNELS)
		return -EINVAL;
	e = &c->r->tunnels[slot];
	if (!pk__tunnel_live(e, tag))
		return -ESTALE;
	if (delta >= 0) {
		__atomic_fetch_add(&e->streams, (uint32_t)delta, PK__RELAXED);
		return 0;
	}
	/* Saturate at 0: an unbalanced decrement must not wrap into "very busy". */
	cur = __atomic_load_n(&e->streams, PK__RELAXED);
	do {
		uint32_t d = (uint32_t)(-(int64_t)delta);

		next = cur > d ? cur - d : 0;
	} while (
	    !__atomic_compare_exchange_n(&e->streams, &cur, next, 1, PK__RELAXED, PK__RELAXED));
	return 0;
}

int pk_counters_tunnel_streams(const struct pk_counters *c, uint32_t slot, uint32_t tag,
                               uint32_t *n)
{
	const struct pk_ctr_tunnel *e;
	uint32_t v;

	if (slot >= PK_MAX_TUNNELS || !n)
		return -EINVAL;
	e = &c->r->tunnels[slot];
	if (!pk__tunnel_live(e, tag))
		return -ESTALE;
	v = __atomic_load_n(&e->streams, PK__RELAXED);
	__atomic_thread_fence(PK__ACQUIRE);
	/* Re-check: a slot released and reused between the loads is not this tunnel. */
	if (__atomic_load_n(&e->tag, PK__RELAXED) != tag)
		return -ESTALE;
	*n = v;
	return 0;
}

int pk_counters_release_all_for_worker(struct pk_counters *c, int owner)
{
	uint32_t want = (uint32_t)owner + 1;
	int n = 0;

	if (owner < 0 || owner >= PK_MAX_CHILDREN)
		return -EINVAL;
	uint32_t end = __atomic_load_n(&c->r->supervisor.tunnels_hwm, __ATOMIC_ACQUIRE);
	if (end > PK_MAX_TUNNELS)
		end = PK_MAX_TUNNELS;
	for (uint32_t s = 0; s < end; s++) {
		struct pk_ctr_tunnel *e = &c->r->tunnels[s];
		uint32_t expect = want;

		if (__atomic_load_n(&e->owner, PK__RELAXED) != want)
			continue;
		__atomic_store_n(&e->streams, 0, PK__RELAXED);
		if (__atomic_compare_exchange_n(&e->owner, &expect, 0, 0, PK__RELEASE, PK__RELAXED))
			n++;
	}
	if (c->hint_owner == owner)
		c->hint_owner = -1;
	return n;
}
