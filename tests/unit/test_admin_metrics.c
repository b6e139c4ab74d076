/* Tests for workers/admin_metrics: Prometheus exposition of a metrics snapshot. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers/admin_metrics.h"

static const uint64_t bounds[PK_CTR_LAT_BUCKETS - 1] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static struct pk_metrics_snapshot *snap_new(void)
{
	struct pk_metrics_snapshot *s = calloc(1, sizeof(*s));
	cr_assert_not_null(s);
	s->version = "1.2.3";
	s->node_id = "n1";
	s->sup.generation = 2;
	s->sup.flags = PK_CTR_F_READY;
	s->sup.start_time_ns = 1700000000123456789ull;
	memcpy(s->latency_bounds_us, bounds, sizeof(bounds));
	s->endpoints = 0;
	s->tunnels = 0;
	return s;
}

static struct pk_metrics_child *add_child(struct pk_metrics_snapshot *s, int role, int widx,
                                          uint32_t gen, pid_t pid, enum pk_child_state st)
{
	struct pk_metrics_child *c = &s->children[s->nchildren];
	c->slot = s->nchildren++;
	c->role = role;
	c->worker_index = widx;
	c->generation = gen;
	c->pid = pid;
	c->state = st;
	return c;
}

static char *render(const struct pk_metrics_snapshot *s)
{
	char *text = NULL;
	size_t len = 0;
	cr_assert_eq(pk_metrics_render(s, &text, &len), 0);
	cr_assert_eq(strlen(text), len);
	return text;
}

/* Whether the exposition holds exactly this line. */
static int has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return 1;
	return 0;
}

static int has_prefix_line(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);
	for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++)
		if (p == text || p[-1] == '\n')
			return 1;
	(void)n;
	return 0;
}

Test(admin_metrics, add_worker_sums_every_field)
{
	struct pk_ctr_worker a = {0}, b = {0}, t = {0};
	a.requests[1] = 3;
	b.requests[1] = 4;
	a.methods[PK_CTR_M_POST] = 2;
	b.latency[PK_CTR_LAT_BUCKETS - 1] = 5;
	a.latency_sum_us = 10;
	b.latency_sum_us = 11;
	b.v[PK_CTR_W_HANDOFFS_RECEIVED] = 9;
	pk_metrics_add_worker(&t, &a);
	pk_metrics_add_worker(&t, &b);
	cr_assert_eq(t.requests[1], 7);
	cr_assert_eq(t.methods[PK_CTR_M_POST], 2);
	cr_assert_eq(t.latency[PK_CTR_LAT_BUCKETS - 1], 5);
	cr_assert_eq(t.latency_sum_us, 21);
	cr_assert_eq(t.v[PK_CTR_W_HANDOFFS_RECEIVED], 9);
}

Test(admin_metrics, request_counters_by_status_class_and_method)
{
	struct pk_metrics_snapshot *s = snap_new();
	s->total.requests[1] = 7;
	s->total.requests[4] = 2;
	s->total.methods[PK_CTR_M_GET] = 8;
	s->total.methods[PK_CTR_M_OTHER] = 1;
	char *t = render(s);
	cr_assert(has_line(t, "piko_proxy_requests_total{status=\"2xx\"} 7"), "%s", t);
	cr_assert(has_line(t, "piko_proxy_requests_total{status=\"5xx\"} 2"));
	cr_assert(has_line(t, "piko_proxy_requests_total{status=\"1xx\"} 0"));
	cr_assert(has_line(t, "pikod_proxy_requests_by_method_total{method=\"GET\"} 8"));
	cr_assert(has_line(t, "pikod_proxy_requests_by_method_total{method=\"OTHER\"} 1"));
	cr_assert(has_line(t, "# TYPE piko_proxy_requests_total counter"));
	free(t);
	free(s);
}

Test(admin_metrics, histogram_is_cumulative_and_inf_equals_count)
{
	struct pk_metrics_snapshot *s = snap_new();
	s->total.latency[0] = 3;                      /* <= 5 ms */
	s->total.latency[8] = 2;                      /* <= 2.5 s */
	s->total.latency[PK_CTR_LAT_BUCKETS - 1] = 1; /* > 10 s */
	s->total.latency_count = 5;                   /* lagging: the buckets rule */
	s->total.latency_sum_us = 12500250;
	char *t = render(s);
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_bucket{le=\"0.005\"} 3"), "%s",
	          t);
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_bucket{le=\"1\"} 3"));
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_bucket{le=\"2.5\"} 5"));
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_bucket{le=\"10\"} 5"));
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_bucket{le=\"+Inf\"} 6"));
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_count 6"));
	cr_assert(has_line(t, "piko_proxy_request_latency_seconds_sum 12.50025"));
	cr_assert(has_line(t, "# TYPE piko_proxy_request_latency_seconds histogram"));
	free(t);
	free(s);
}

Test(admin_metrics, every_sample_follows_its_family_header_and_no_series_repeats)
{
	struct pk_metrics_snapshot *s = snap_new();
	add_child(s, 0, 0, 2, 100, PK_CHILD_READY)->have_proc = 1;
	add_child(s, 0, 1, 2, 101, PK_CHILD_READY);
	add_child(s, 1, -1, 2, 102, PK_CHILD_READY)->have_proc = 1;
	s->sup_have_proc = 1;
	char *t = render(s);
	char family[128] = "";
	char *seen[1024];
	int nseen = 0;
	char *save = NULL;
	for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "# HELP ", 7) == 0) {
			cr_assert(sscanf(line + 7, "%127s", family) == 1);
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char name[128];
			cr_assert(sscanf(line + 7, "%127s", name) == 1);
			cr_assert_str_eq(name, family, "TYPE without HELP before it: %s", line);
			continue;
		}
		cr_assert(line[0] != '#', "unexpected comment %s", line);
		cr_assert(strncmp(line, family, strlen(family)) == 0,
		          "sample %s outside its family %s", line, family);
		char *sp = strrchr(line, ' ');
		cr_assert_not_null(sp);
		*sp = '\0';
		for (int i = 0; i < nseen; i++)
			cr_assert_str_neq(seen[i], line, "series twice: %s", line);
		cr_assert_lt(nseen, 1024);
		seen[nseen++] = line;
	}
	cr_assert_gt(nseen, 40);
	free(t);
	free(s);
}

Test(admin_metrics, worker_up_covers_the_serving_generation_only)
{
	struct pk_metrics_snapshot *s = snap_new();
	add_child(s, 0, 0, 2, 100, PK_CHILD_READY);
	add_child(s, 0, 1, 2, 0, PK_CHILD_DEAD);      /* waiting for its respawn */
	add_child(s, 0, 2, 1, 90, PK_CHILD_DRAINING); /* the previous generation */
	add_child(s, 0, 2, 2, 103, PK_CHILD_STARTING);
	char *t = render(s);
	cr_assert(has_line(t, "pikod_worker_up{worker=\"0\"} 1"), "%s", t);
	cr_assert(has_line(t, "pikod_worker_up{worker=\"1\"} 0"));
	cr_assert(has_line(t, "pikod_worker_up{worker=\"2\"} 0"));
	cr_assert(!has_prefix_line(t, "pikod_worker_up{worker=\"3\"}"));
	free(t);
	free(s);
}

Test(admin_metrics, gauges_sum_live_workers_only)
{
	struct pk_metrics_snapshot *s = snap_new();
	add_child(s, 0, 0, 2, 100, PK_CHILD_READY)->gauges[PK_CTR_G_TUNNELS] = 2;
	add_child(s, 0, 1, 2, 101, PK_CHILD_READY)->gauges[PK_CTR_G_TUNNELS] = 3;
	add_child(s, 0, 2, 2, 0, PK_CHILD_DEAD)->gauges[PK_CTR_G_TUNNELS] = 7; /* stale */
	add_child(s, 0, 1, 2, 104, PK_CHILD_READY)->gauges[PK_CTR_G_REQUESTS_INFLIGHT] = 4;
	char *t = render(s);
	cr_assert(has_line(t, "piko_upstreams_connected_upstreams 5"), "%s", t);
	cr_assert(has_line(t, "piko_proxy_requests_in_flight 4"));
	free(t);
	free(s);
}

Test(admin_metrics, routing_table_families_absent_when_unreadable)
{
	struct pk_metrics_snapshot *s = snap_new();
	s->endpoints = -1;
	s->tunnels = -1;
	char *t = render(s);
	cr_assert(!has_prefix_line(t, "piko_upstreams_registered_endpoints"));
	cr_assert(!has_prefix_line(t, "# HELP piko_upstreams_registered_endpoints"));
	cr_assert(!has_prefix_line(t, "pikod_tunnel_streams_in_flight"));
	free(t);
	s->endpoints = 3;
	s->tunnels = 4;
	s->tunnel_streams = 6;
	t = render(s);
	cr_assert(has_line(t, "piko_upstreams_registered_endpoints 3"));
	cr_assert(has_line(t, "pikod_tunnel_streams_in_flight 6"));
	free(t);
	free(s);
}

Test(admin_metrics, supervisor_counters_and_start_time)
{
	struct pk_metrics_snapshot *s = snap_new();
	s->sup.reloads_ok = 3;
	s->sup.reloads_failed = 1;
	s->sup.restarts[0] = 2;
	s->sup.restarts[1] = 1;
	char *t = render(s);
	cr_assert(has_line(t, "pikod_reloads_total{result=\"success\"} 3"), "%s", t);
	cr_assert(has_line(t, "pikod_reloads_total{result=\"failure\"} 1"));
	cr_assert(has_line(t, "pikod_child_restarts_total{role=\"worker\"} 2"));
	cr_assert(has_line(t, "pikod_child_restarts_total{role=\"admin\"} 1"));
	cr_assert(has_line(t, "pikod_child_restarts_total{role=\"cluster\"} 0"));
	cr_assert(has_line(t, "pikod_start_time_seconds 1700000000.123"));
	cr_assert(has_line(t, "pikod_generation 2"));
	cr_assert(has_line(t, "pikod_ready 1"));
	free(t);
	free(s);
}

Test(admin_metrics, label_values_are_escaped)
{
	struct pk_metrics_snapshot *s = snap_new();
	s->version = "1\"2\\3\n";
	char *t = render(s);
	cr_assert(has_line(t, "pikod_build_info{version=\"1\\\"2\\\\3\\n\"} 1"), "%s", t);
	free(t);
	free(s);
}

Test(admin_metrics, process_figures_for_live_processes_with_stats)
{
	struct pk_metrics_snapshot *s = snap_new();
	struct pk_metrics_child *c = add_child(s, 0, 0, 2, 100, PK_CHILD_READY);
	c->have_proc = 1;
	c->rss_bytes = 4096;
	c->open_fds = 12;
	add_child(s, 2, -1, 2, 0, PK_CHILD_DEAD)->have_proc = 1; /* no pid: left out */
	s->sup_have_proc = 1;
	s->sup_rss_bytes = 8192;
	s->sup_open_fds = 20;
	char *t = render(s);
	cr_assert(
	    has_line(t, "pikod_process_resident_memory_bytes{role=\"worker\",slot=\"0\"} 4096"),
	    "%s", t);
	cr_assert(has_line(t, "pikod_process_open_fds{role=\"worker\",slot=\"0\"} 12"));
	cr_assert(has_line(t, "pikod_process_open_fds{role=\"supervisor\",slot=\"-\"} 20"));
	cr_assert(!has_prefix_line(t, "pikod_process_open_fds{role=\"cluster\""));
	free(t);
	free(s);
}

Test(admin_metrics, render_rejects_null_arguments)
{
	char *t;
	size_t len;
	cr_assert_eq(pk_metrics_render(NULL, &t, &len), -EINVAL);
}

Test(admin_metrics, proc_stats_of_this_process_counts_a_new_fd)
{
	uint64_t rss = 0, fds = 0, fds2 = 0;
	cr_assert_eq(pk_metrics_proc_stats(getpid(), &rss, &fds), 0);
	cr_assert_gt(rss, 0);
	cr_assert_geq(fds, 3);
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pk_metrics_proc_stats(getpid(), &rss, &fds2), 0);
	close(fd);
	cr_assert_eq(fds2, fds + 1);
}

Test(admin_metrics, proc_stats_of_a_missing_process)
{
	uint64_t rss, fds;
	/* pid_max is at most 2^22 on Linux: this pid cannot exist. */
	cr_assert_eq(pk_metrics_proc_stats(0x7ffffff0, &rss, &fds), -ENOENT);
	cr_assert_eq(pk_metrics_proc_stats(0, &rss, &fds), -EINVAL);
}
