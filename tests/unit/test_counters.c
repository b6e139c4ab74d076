/* Tests for shm/counters: the MAP_SHARED counters region. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/counters.h"

#define EXEC_ENV "PK_TEST_COUNTERS_EXEC_FD"
#define EXEC_FD  57 /* a fixed fd number, as the supervisor passes it */

/* The exec'd side of the fork+exec test: runs before Criterion's main when this binary
 * is started with EXEC_ENV set, maps the region from the inherited fd and exits. */
__attribute__((constructor)) static void exec_child_main(void)
{
	const char *v = getenv(EXEC_ENV);
	struct pk_counters *c = NULL;
	uint32_t slot, tag;

	if (!v)
		return;
	if (atoi(v) != EXEC_FD || pk_counters_map(EXEC_FD, &c) != 0)
		_exit(50);
	close(EXEC_FD); /* the mapping outlives the fd */
	pk_counters_worker_add(c, 3, PK_CTR_W_HANDOFFS_SENT, 42);
	if (pk_counters_tunnel_alloc(c, 9, &slot, &tag) != 0)
		_exit(51);
	if (pk_counters_tunnel_streams_add(c, slot, tag, 5) != 0)
		_exit(52);
	pk_counters_unmap(c);
	_exit(0);
}

static int wait_status(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static struct pk_counters *create_and_map(int *fd_out)
{
	struct pk_counters *c = NULL;
	size_t size = 0;
	int fd = pk_counters_create(&size);

	cr_assert_geq(fd, 0, "create: %s", strerror(-fd));
	cr_assert_eq(size, pk_counters_size());
	cr_assert_eq(pk_counters_map(fd, &c), 0);
	if (fd_out)
		*fd_out = fd;
	else
		close(fd);
	return c;
}

/* ---- create, map, validate ---- */

Test(counters, create_gives_cloexec_sealed_fd_of_reasonable_size)
{
	size_t size = 0;
	int fd = pk_counters_create(&size);

	cr_assert_geq(fd, 0);
	cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	cr_assert_leq(size, (size_t)24 << 20, "region is %zu bytes", size);
	cr_assert_geq(size, sizeof(struct pk_ctr_tunnel) * PK_MAX_TUNNELS);
	/* Room for a million tunnels, but memory only for what was written: the header. */
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_leq((size_t)st.st_blocks * 512, (size_t)64 << 10, "%lld bytes resident",
	              (long long)st.st_blocks * 512);
	cr_assert_eq(ftruncate(fd, 0), -1, "a child could shrink the region");
	cr_assert_eq(errno, EPERM);
	close(fd);
}

Test(counters, map_sees_header_and_zeroed_state)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_region *r = pk_counters_region(c);
	struct pk_ctr_supervisor_info si;

	cr_assert_arr_eq(r->header.magic, "PIKOCTRS", 8);
	cr_assert_eq(r->header.version, PK_CTR_VERSION);
	cr_assert_eq(r->header.total_size, pk_counters_size());
	cr_assert_eq(r->header.max_tunnels, PK_MAX_TUNNELS);
	pk_counters_read_supervisor(c, &si);
	cr_assert_eq(si.flags, 0);
	cr_assert_eq(si.generation, 0);
	cr_assert_not(pk_counters_is_ready(c));
	pk_counters_unmap(c);
}

static void poke_and_expect_eproto(size_t off, unsigned char byte)
{
	struct pk_counters *c = NULL;
	size_t size;
	int fd = pk_counters_create(&size);
	unsigned char *p;

	cr_assert_geq(fd, 0);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	p[off] ^= byte;
	munmap(p, size);
	cr_assert_eq(pk_counters_map(fd, &c), -EPROTO);
	cr_assert_null(c);
	close(fd);
}

Test(counters, corrupt_magic_is_eproto)
{
	poke_and_expect_eproto(offsetof(struct pk_ctr_header, magic) + 3, 0x20);
}

Test(counters, other_version_is_eproto)
{
	poke_and_expect_eproto(offsetof(struct pk_ctr_header, version), 0x02);
}

Test(counters, other_layout_figure_is_eproto)
{
	poke_and_expect_eproto(offsetof(struct pk_ctr_header, max_workers), 0x01);
}

Test(counters, wrong_file_size_is_eproto)
{
	struct pk_counters *c = NULL;
	int fd = memfd_create("small", MFD_CLOEXEC);

	cr_assert_geq(fd, 0);
	cr_assert_eq(pk_counters_map(fd, &c), -EPROTO); /* empty */
	cr_assert_eq(ftruncate(fd, (off_t)pk_counters_size() + 4096), 0);
	cr_assert_eq(pk_counters_map(fd, &c), -EPROTO); /* right header missing, too big */
	close(fd);
}

Test(counters, bad_fd_is_an_error)
{
	struct pk_counters *c = NULL;

	cr_assert_eq(pk_counters_map(-1, &c), -EINVAL);
	cr_assert_eq(pk_counters_map(1000, &c), -EBADF);
}

/* ---- supervisor state and child table ---- */

Test(counters, supervisor_state)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_supervisor_info si;

	pk_counters_set_started(c);
	pk_counters_set_state(c, 3, 1, 0);
	cr_assert(pk_counters_is_ready(c));
	pk_counters_reload_done(c, 1);
	pk_counters_reload_done(c, 1);
	pk_counters_reload_done(c, 0);
	pk_counters_child_restarted(c, 0);
	pk_counters_child_restarted(c, 2);
	pk_counters_child_restarted(c, 2);
	pk_counters_child_restarted(c, PK_CTR_ROLES); /* ignored */
	pk_counters_read_supervisor(c, &si);
	cr_assert_gt(si.start_time_ns, 0);
	cr_assert_eq(si.generation, 3);
	cr_assert_eq(si.reloads_ok, 2);
	cr_assert_eq(si.reloads_failed, 1);
	cr_assert_eq(si.restarts[0], 1);
	cr_assert_eq(si.restarts[1], 0);
	cr_assert_eq(si.restarts[2], 2);

	pk_counters_set_state(c, 3, 1, 1); /* stopping wins over ready */
	cr_assert_not(pk_counters_is_ready(c));
	pk_counters_unmap(c);
}

Test(counters, child_entry_roundtrip_and_started_at)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_child_info ci;
	uint64_t t0;

	cr_assert_eq(pk_counters_set_child(c, 5, 1234, 0, 2, 7, PK_CHILD_STARTING, 1), 0);
	cr_assert_eq(pk_counters_get_child(c, 5, &ci), 0);
	cr_assert_eq(ci.pid, 1234);
	cr_assert_eq(ci.role, 0);
	cr_assert_eq(ci.worker_index, 2);
	cr_assert_eq(ci.generation, 7);
	cr_assert_eq(ci.state, PK_CHILD_STARTING);
	cr_assert_eq(ci.restarts, 1);
	cr_assert_gt(ci.started_at_ns, 0);
	t0 = ci.started_at_ns;

	/* Same pid, new state: started_at stays. */
	cr_assert_eq(pk_counters_set_child(c, 5, 1234, 0, 2, 7, PK_CHILD_READY, 1), 0);
	cr_assert_eq(pk_counters_get_child(c, 5, &ci), 0);
	cr_assert_eq(ci.state, PK_CHILD_READY);
	cr_assert_eq(ci.started_at_ns, t0);

	cr_assert_eq(pk_counters_set_child(c, PK_MAX_CHILDREN, 1, 0, 0, 0, 0, 0), -EINVAL);
	cr_assert_eq(pk_counters_get_child(c, -1, &ci), -EINVAL);
	pk_counters_unmap(c);
}

Test(counters, reaped_child_loses_gauges_and_tunnel_slots)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_child_info ci;
	uint32_t slot, tag, other_slot, other_tag, n;

	pk_counters_set_child(c, 4, 999, 0, 0, 1, PK_CHILD_READY, 0);
	pk_counters_gauge_add(c, 4, PK_CTR_G_REQUESTS_INFLIGHT, 3);
	pk_counters_gauge_add(c, 4, PK_CTR_G_TUNNELS, 2);
	pk_counters_gauge_add(c, 4, PK_CTR_G_REQUESTS_INFLIGHT, -1);
	cr_assert_eq(pk_counters_tunnel_alloc(c, 4, &slot, &tag), 0);
	cr_assert_eq(pk_counters_tunnel_alloc(c, 6, &other_slot, &other_tag), 0);
	cr_assert_eq(pk_counters_get_child(c, 4, &ci), 0);
	cr_assert_eq(ci.gauges[PK_CTR_G_REQUESTS_INFLIGHT], 2);
	cr_assert_eq(ci.gauges[PK_CTR_G_TUNNELS], 2);

	pk_counters_set_child(c, 4, 0, 0, 0, 1, PK_CHILD_DEAD, 1);
	cr_assert_eq(pk_counters_get_child(c, 4, &ci), 0);
	cr_assert_eq(ci.pid, 0);
	cr_assert_eq(ci.gauges[PK_CTR_G_REQUESTS_INFLIGHT], 0);
	cr_assert_eq(ci.gauges[PK_CTR_G_TUNNELS], 0);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), -ESTALE);
	cr_assert_eq(pk_counters_tunnel_streams(c, other_slot, other_tag, &n), 0);
	pk_counters_unmap(c);
}

/* The supervisor rewrites an entry in a loop while a forked reader checks that every
 * copy it gets is one the writer wrote (all fields derived from one number). */
Test(counters, child_entry_reads_are_never_torn, .timeout = 60)
{
	struct pk_counters *c = create_and_map(NULL);
	pid_t pid;

	pk_counters_set_child(c, 1, 1, 1, 1, 1, PK_CHILD_READY, 1);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_ctr_child_info ci;

		for (int i = 0; i < 200000; i++) {
			if (pk_counters_get_child(c, 1, &ci) != 0)
				continue;
			uint32_t g = ci.generation;
			if (ci.pid != (pid_t)g || ci.worker_index != (int)g || ci.restarts != g ||
			    ci.role != (int)(g % 3))
				_exit(60);
		}
		_exit(0);
	}
	for (uint32_t g = 2; g < 400000; g++)
		pk_counters_set_child(c, 1, (pid_t)g, (int)(g % 3), (int)g, g, PK_CHILD_READY, g);
	cr_assert_eq(wait_status(pid), 0);
	pk_counters_unmap(c);
}

/* ---- worker counters ---- */

Test(counters, request_done_fills_class_method_and_histogram)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_worker w;

	pk_counters_request_done(c, 2, PK_CTR_M_GET, 200, 4000);           /* <= 5 ms */
	pk_counters_request_done(c, 2, PK_CTR_M_GET, 404, 5000);           /* boundary: <= 5 ms */
	pk_counters_request_done(c, 2, PK_CTR_M_POST, 502, 5001);          /* <= 10 ms */
	pk_counters_request_done(c, 2, PK_CTR_M_OTHER, 0, 10000001);       /* +Inf, other status */
	pk_counters_request_done(c, 2, PK_CTR_M__COUNT, 101, 1000000);     /* bad method: OTHER */
	pk_counters_request_done(c, PK_MAX_WORKERS, PK_CTR_M_GET, 200, 1); /* ignored */
	cr_assert_eq(pk_counters_read_worker(c, 2, &w), 0);
	cr_assert_eq(w.requests[1], 1); /* 2xx */
	cr_assert_eq(w.requests[3], 1); /* 4xx */
	cr_assert_eq(w.requests[4], 1); /* 5xx */
	cr_assert_eq(w.requests[0], 1); /* 1xx */
	cr_assert_eq(w.requests[PK_CTR_STATUS_OTHER], 1);
	cr_assert_eq(w.methods[PK_CTR_M_GET], 2);
	cr_assert_eq(w.methods[PK_CTR_M_POST], 1);
	cr_assert_eq(w.methods[PK_CTR_M_OTHER], 2);
	cr_assert_eq(w.latency[0], 2);
	cr_assert_eq(w.latency[1], 1);
	cr_assert_eq(w.latency[7], 1); /* 1 s */
	cr_assert_eq(w.latency[PK_CTR_LAT_BUCKETS - 1], 1);
	cr_assert_eq(w.latency_count, 5);
	cr_assert_eq(w.latency_sum_us, 4000 + 5000 + 5001 + 10000001 + 1000000);
	cr_assert_eq(pk_counters_read_worker(c, 0, &w), 0);
	cr_assert_eq(w.latency_count, 0);
	pk_counters_unmap(c);
}

Test(counters, method_names)
{
	cr_assert_eq(pk_counters_method("GET", 3), PK_CTR_M_GET);
	cr_assert_eq(pk_counters_method("PATCH", 5), PK_CTR_M_PATCH);
	cr_assert_eq(pk_counters_method("get", 3), PK_CTR_M_OTHER);
	cr_assert_eq(pk_counters_method("GETX", 4), PK_CTR_M_OTHER);
	cr_assert_eq(pk_counters_method("GE", 2), PK_CTR_M_OTHER);
}

#define INCS 1000000

Test(counters, four_processes_add_exactly, .timeout = 120)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_worker w;
	pid_t pids[4];

	for (int i = 0; i < 4; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			for (int n = 0; n < INCS; n++)
				pk_counters_worker_add(c, 7, PK_CTR_W_STREAMS_OPENED, 1);
			_exit(0);
		}
	}
	for (int i = 0; i < 4; i++)
		cr_assert_eq(wait_status(pids[i]), 0);
	cr_assert_eq(pk_counters_read_worker(c, 7, &w), 0);
	cr_assert_eq(w.v[PK_CTR_W_STREAMS_OPENED], 4ull * INCS);
	pk_counters_unmap(c);
}

/* ---- tunnel slots ---- */

Test(counters, tunnel_slot_lifecycle_and_tags)
{
	struct pk_counters *c = create_and_map(NULL);
	uint32_t slot, tag, n = 99;

	cr_assert_eq(pk_counters_tunnel_alloc(c, 3, &slot, &tag), 0);
	cr_assert_neq(tag, 0);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(pk_counters_tunnel_streams_add(c, slot, tag, 3), 0);
	cr_assert_eq(pk_counters_tunnel_streams_add(c, slot, tag, -1), 0);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(pk_counters_tunnel_streams_add(c, slot, tag, -5), 0); /* saturates */
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), 0);
	cr_assert_eq(n, 0);

	cr_assert_eq(pk_counters_tunnel_free(c, 4, slot, tag), -EPERM);
	cr_assert_eq(pk_counters_tunnel_free(c, 3, slot, tag + 1), -ESTALE);
	cr_assert_eq(pk_counters_tunnel_free(c, 3, slot, tag), 0);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), -ESTALE);
	cr_assert_eq(pk_counters_tunnel_free(c, 3, slot, tag), -EPERM); /* already free */

	pk_counters_unmap(c);
}

Test(counters, reused_slot_gets_a_new_tag)
{
	int fd;
	struct pk_counters *c = create_and_map(&fd), *c2 = NULL;
	uint32_t slot, tag, slot2, tag2, n;

	cr_assert_eq(pk_counters_tunnel_alloc(c, 3, &slot, &tag), 0);
	cr_assert_eq(pk_counters_tunnel_free(c, 3, slot, tag), 0);
	/* A fresh mapping (as in a respawned worker) starts at the owner's region start,
	 * so it takes the same slot again. */
	cr_assert_eq(pk_counters_map(fd, &c2), 0);
	cr_assert_eq(pk_counters_tunnel_alloc(c2, 3, &slot2, &tag2), 0);
	cr_assert_eq(slot2, slot);
	cr_assert_neq(tag2, tag);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, tag, &n), -ESTALE);
	cr_assert_eq(pk_counters_tunnel_streams_add(c, slot, tag, 1), -ESTALE);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot2, tag2, &n), 0);
	pk_counters_unmap(c2);
	pk_counters_unmap(c);
	close(fd);
}

Test(counters, release_all_for_worker_frees_only_that_owner)
{
	struct pk_counters *c = create_and_map(NULL);
	uint32_t s3[10], t3[10], s4[5], t4[5], n;

	for (int i = 0; i < 10; i++)
		cr_assert_eq(pk_counters_tunnel_alloc(c, 3, &s3[i], &t3[i]), 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pk_counters_tunnel_alloc(c, 4, &s4[i], &t4[i]), 0);
	cr_assert_eq(pk_counters_tunnel_streams_add(c, s4[0], t4[0], 2), 0);
	cr_assert_eq(pk_counters_release_all_for_worker(c, 3), 10);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(pk_counters_tunnel_streams(c, s3[i], t3[i], &n), -ESTALE);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pk_counters_tunnel_streams(c, s4[i], t4[i], &n), 0);
	cr_assert_eq(pk_counters_tunnel_streams(c, s4[0], t4[0], &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(pk_counters_release_all_for_worker(c, 3), 0);
	cr_assert_eq(pk_counters_release_all_for_worker(c, PK_MAX_CHILDREN), -EINVAL);
	pk_counters_unmap(c);
}

Test(counters, alloc_reports_enospc_when_full)
{
	struct pk_counters *c = create_and_map(NULL);
	uint32_t slot, tag;
	int n = 0;

	while (pk_counters_tunnel_alloc(c, 0, &slot, &tag) == 0)
		n++;
	cr_assert_eq(n, PK_MAX_TUNNELS);
	cr_assert_eq(pk_counters_tunnel_alloc(c, 1, &slot, &tag), -ENOSPC);
	cr_assert_eq(pk_counters_tunnel_alloc(c, -1, &slot, &tag), -EINVAL);
	pk_counters_unmap(c);
}

/* Slots are reused lowest first after frees, and the high-water mark bounds the scan that
 * releases a dead worker's slots: resident pages follow the tunnels that ever existed. */
Test(counters, tunnel_slots_stay_compact_and_release_scans_to_the_high_water_mark)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_region *r = pk_counters_region(c);
	uint32_t slot[100], tag[100], s, t;
	uint32_t base = 3 * (PK_MAX_TUNNELS / PK_MAX_CHILDREN);

	cr_assert_eq(r->supervisor.tunnels_hwm, 0);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(pk_counters_tunnel_alloc(c, 3, &slot[i], &tag[i]), 0);
		cr_assert_eq(slot[i], base + (uint32_t)i);
	}
	cr_assert_eq(r->supervisor.tunnels_hwm, base + 100);
	/* Churn: free low slots, allocate again: the freed ones come back, the mark stays. */
	for (int round = 0; round < 1000; round++) {
		int i = round % 50;
		cr_assert_eq(pk_counters_tunnel_free(c, 3, slot[i], tag[i]), 0);
		cr_assert_eq(pk_counters_tunnel_alloc(c, 3, &s, &t), 0);
		cr_assert_eq(s, slot[i], "round %d: got slot %u, not the freed %u", round, s,
		             slot[i]);
		tag[i] = t;
	}
	cr_assert_eq(r->supervisor.tunnels_hwm, base + 100);
	/* A slot past the mark is never looked at by the release scan (nobody could own it). */
	r->tunnels[base + 200].owner = 4;
	cr_assert_eq(pk_counters_release_all_for_worker(c, 3), 100);
	cr_assert_eq(r->tunnels[base + 200].owner, 4);
	r->tunnels[base + 200].owner = 0;
	pk_counters_unmap(c);
}

/* Four processes race for every slot (each allocates until the table is full); a shared
 * array records who got each slot, and a slot handed out twice is caught by the CAS. */
Test(counters, concurrent_alloc_never_shares_a_slot, .timeout = 120)
{
	struct pk_counters *c = create_and_map(NULL);
	struct pk_ctr_region *r = pk_counters_region(c);
	uint32_t *got = mmap(NULL, PK_MAX_TUNNELS * sizeof(uint32_t), PROT_READ | PROT_WRITE,
	                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pids[4];
	int total = 0;

	cr_assert_neq(got, MAP_FAILED);
	for (int i = 0; i < 4; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			uint32_t slot, tag, zero = 0, me = (uint32_t)i + 1;
			int rc;

			/* Churn first: take and give back, so frees race with allocs too. */
			for (int k = 0; k < 20000; k++) {
				rc = pk_counters_tunnel_alloc(c, i, &slot, &tag);
				if (rc == -ENOSPC)
					break; /* a faster process already filled the table */
				if (rc != 0)
					_exit(70);
				if (pk_counters_tunnel_free(c, i, slot, tag) != 0)
					_exit(71);
			}
			while ((rc = pk_counters_tunnel_alloc(c, i, &slot, &tag)) == 0) {
				zero = 0;
				if (!__atomic_compare_exchange_n(&got[slot], &zero, me, 0,
				                                 __ATOMIC_ACQ_REL,
				                                 __ATOMIC_RELAXED))
					_exit(72); /* someone else holds it too */
			}
			_exit(rc == -ENOSPC ? 0 : 73);
		}
	}
	for (int i = 0; i < 4; i++) {
		int st = wait_status(pids[i]);
		cr_assert_eq(st, 0, "child %d exited %d", i, st);
	}
	for (uint32_t s = 0; s < PK_MAX_TUNNELS; s++) {
		cr_assert_neq(got[s], 0, "slot %u never handed out", s);
		cr_assert_eq(r->tunnels[s].owner, got[s], "slot %u owner mismatch", s);
		total++;
	}
	cr_assert_eq(total, PK_MAX_TUNNELS);
	munmap(got, PK_MAX_TUNNELS * sizeof(uint32_t));
	pk_counters_unmap(c);
}

/* ---- across fork ---- */

Test(counters, mapping_is_shared_with_a_forked_child)
{
	int fd;
	struct pk_counters *c = create_and_map(&fd);
	struct pk_ctr_worker w;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct pk_counters *cc = NULL;

		/* Map afresh from the inherited fd, as a child does after exec. */
		if (pk_counters_map(fd, &cc) != 0)
			_exit(80);
		pk_counters_worker_add(cc, 1, PK_CTR_W_BYTES_IN, 1000);
		pk_counters_unmap(cc);
		_exit(0);
	}
	cr_assert_eq(wait_status(pid), 0);
	cr_assert_eq(pk_counters_read_worker(c, 1, &w), 0);
	cr_assert_eq(w.v[PK_CTR_W_BYTES_IN], 1000);
	pk_counters_unmap(c);
	close(fd);
}

Test(counters, child_after_fork_and_exec_maps_the_fd, .timeout = 60)
{
	int fd;
	struct pk_counters *c = create_and_map(&fd);
	struct pk_ctr_region *r = pk_counters_region(c);
	struct pk_ctr_worker w;
	uint32_t slot = 9 * (PK_MAX_TUNNELS / PK_MAX_CHILDREN), n;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char *argv[] = {"test_counters", NULL};
		char env[64];
		int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);

		/* As the supervisor does: the region at a fixed fd, without CLOEXEC. */
		if (dup2(fd, EXEC_FD) != EXEC_FD || devnull < 0 || dup2(devnull, 1) != 1)
			_exit(90);
		snprintf(env, sizeof(env), "%s=%d", EXEC_ENV, EXEC_FD);
		char *envp[] = {env, NULL};
		execve("/proc/self/exe", argv, envp);
		_exit(91);
	}
	cr_assert_eq(wait_status(pid), 0);
	cr_assert_eq(pk_counters_read_worker(c, 3, &w), 0);
	cr_assert_eq(w.v[PK_CTR_W_HANDOFFS_SENT], 42);
	cr_assert_eq(r->tunnels[slot].owner, 10);
	cr_assert_eq(pk_counters_tunnel_streams(c, slot, r->tunnels[slot].tag, &n), 0);
	cr_assert_eq(n, 5);
	pk_counters_unmap(c);
	close(fd);
}
