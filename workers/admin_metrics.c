/* Prometheus text exposition of a metrics snapshot. See admin_metrics.h. */
#include "workers/admin_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PK__MAX_FDS_COUNTED (1u << 20)

/* A growing text buffer; the first failure sticks and later appends are no-ops. */
struct pk__mbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void pk__put(struct pk__mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pk__put(struct pk__mbuf *b, const char *fmt, ...)
{
	va_list ap;
	if (b->err)
		return;
	for (;;) {
		size_t room = b->cap - b->len;
		va_start(ap, fmt);
		int n = vsnprintf(b->p + b->len, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->err = -EINVAL;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t want = b->cap * 2;
		while (want < b->len + (size_t)n + 1)
			want *= 2;
		if (want > PK_METRICS_MAX_TEXT) {
			b->err = -E2BIG;
			return;
		}
		char *np = realloc(b->p, want);
		if (np == NULL) {
			b->err = -ENOMEM;
			return;
		}
		b->p = np;
		b->cap = want;
	}
}

/* Label values: Prometheus escapes backslash, double quote and newline. Our values are
 * mostly fixed words, but the version and node id come from outside. */
static void pk__put_label_value(struct pk__mbuf *b, const char *v)
{
	char tmp[512];
	size_t n = 0;
	for (; v && *v && n + 2 < sizeof(tmp); v++) {
		if (*v == '\\' || *v == '"') {
			tmp[n++] = '\\';
			tmp[n++] = *v;
		} else if (*v == '\n') {
			tmp[n++] = '\\';
			tmp[n++] = 'n';
		} else {
			tmp[n++] = *v;
		}
	}
	tmp[n] = '\0';
	pk__put(b, "\"%s\"", tmp);
}

static void pk__size_histogram(struct pk__mbuf *b, const char *name, const char *help,
                               const uint64_t *buckets, uint64_t sum);
static void pk__family(struct pk__mbuf *b, const char *name, const char *type, const char *help)
{
	pk__put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Microseconds as decimal seconds, exactly ("0.005", "2.5", "10"). */
static void pk__fmt_us(char *out, size_t size, uint64_t us)
{
	uint64_t frac = us % 1000000;
	int digits = 6;
	if (frac == 0) {
		snprintf(out, size, "%llu", (unsigned long long)(us / 1000000));
		return;
	}
	while (frac % 10 == 0) {
		frac /= 10;
		digits--;
	}
	snprintf(out, size, "%llu.%0*llu", (unsigned long long)(us / 1000000), digits,
	         (unsigned long long)frac);
}

static const char *const pk__role_names[] = {"worker", "admin", "cluster"};

static const char *pk__role(int role)
{
	if (role >= 0 && (size_t)role < sizeof(pk__role_names) / sizeof(pk__role_names[0]))
		return pk__role_names[role];
	return "unknown";
}

static const char *const pk__method_names[PK_CTR_M__COUNT] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
};

static const char *const pk__status_names[PK_CTR_STATUS_CLASSES] = {
    "1xx", "2xx", "3xx", "4xx", "5xx", "other",
};

static void pk__counter1(struct pk__mbuf *b, const char *name, const char *help, uint64_t v)
{
	pk__family(b, name, "counter", help);
	pk__put(b, "%s %llu\n", name, (unsigned long long)v);
}

static void pk__gauge1(struct pk__mbuf *b, const char *name, const char *help, long long v)
{
	pk__family(b, name, "gauge", help);
	pk__put(b, "%s %lld\n", name, v);
}

static void pk__render_node(struct pk__mbuf *b, const struct pk_metrics_snapshot *s)
{
	pk__family(b, "pikod_build_info", "gauge", "Always 1; the version label names the build.");
	pk__put(b, "pikod_build_info{version=");
	pk__put_label_value(b, s->version ? s->version : "unknown");
	pk__put(b, "} 1\n");
	pk__family(b, "pikod_start_time_seconds", "gauge",
	           "When the supervisor started, in seconds since the Unix epoch.");
	pk__put(b, "pikod_start_time_seconds %llu.%03llu\n",
	        (unsigned long long)(s->sup.start_time_ns / 1000000000u),
	        (unsigned long long)(s->sup.start_time_ns % 1000000000u / 1000000u));
	pk__gauge1(b, "pikod_generation", "The serving generation (1 at start, +1 per reload).",
	           (long long)s->sup.generation);
	pk__gauge1(b, "pikod_ready", "1 while the serving generation is ready and not stopping.",
	           (s->sup.flags & PK_CTR_F_READY) && !(s->sup.flags & PK_CTR_F_STOPPING) ? 1 : 0);
	pk__family(b, "piko_cluster_nodes", "gauge",
	           "Known cluster nodes by status (this node included).");
	pk__put(b, "piko_cluster_nodes{status=\"active\"} 1\n");
}

static void pk__render_requests(struct pk__mbuf *b, const struct pk_metrics_snapshot *s)
{
	const struct pk_ctr_worker *t = &s->total;
	char le[32];

	pk__family(b, "piko_proxy_requests_total", "counter",
	           "Proxied requests by response status class (\"other\": no response was sent).");
	for (int i = 0; i < PK_CTR_STATUS_CLASSES; i++)
		pk__put(b, "piko_proxy_requests_total{status=\"%s\"} %llu\n", pk__status_names[i],
		        (unsigned long long)t->requests[i]);
	pk__family(b, "pikod_proxy_requests_by_method_total", "counter",
	           "Proxied requests by request method (OTHER: any method not listed).");
	for (int i = 0; i < PK_CTR_M__COUNT; i++)
		pk__put(b, "pikod_proxy_requests_by_method_total{method=\"%s\"} %llu\n",
		        pk__method_names[i], (unsigned long long)t->methods[i]);

	pk__family(b, "piko_proxy_request_latency_seconds", "histogram",
	           "Time from a request's head to the end of its response.");
	uint64_t cum = 0;
	for (int i = 0; i < PK_CTR_LAT_BUCKETS; i++) {
		cum += t->latency[i];
		if (i < PK_CTR_LAT_BUCKETS - 1)
			pk__fmt_us(le, sizeof(le), s->latency_bounds_us[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		pk__put(b, "piko_proxy_request_latency_seconds_bucket{le=\"%s\"} %llu\n", le,
		        (unsigned long long)cum);
	}
	char sum[32];
	pk__fmt_us(sum, sizeof(sum), t->latency_sum_us);
	pk__put(b, "piko_proxy_request_latency_seconds_sum %s\n", sum);
	pk__put(b, "piko_proxy_request_latency_seconds_count %llu\n", (unsigned long long)cum);
	pk__size_histogram(b, "piko_proxy_request_size_bytes", "Request body sizes.", t->req_size,
	                   t->req_size_sum);
	pk__size_histogram(b, "piko_proxy_response_size_bytes",
	                   "Response sizes (head and body) written to clients.", t->resp_size,
	                   t->resp_size_sum);
}

static void pk__size_histogram(struct pk__mbuf *b, const char *name, const char *help,
                               const uint64_t *buckets, uint64_t sum)
{
	uint64_t cum = 0;
	pk__family(b, name, "histogram", help);
	for (int i = 0; i < PK_CTR_SIZE_BUCKETS; i++) {
		cum += buckets[i];
		if (i < PK_CTR_SIZE_BUCKETS - 1)
			pk__put(b, "%s_bucket{le=\"%llu\"} %llu\n", name,
			        (unsigned long long)pk_ctr_size_bounds[i], (unsigned long long)cum);
		else
			pk__put(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	}
	pk__put(b, "%s_sum %llu\n", name, (unsigned long long)sum);
	pk__put(b, "%s_count %llu\n", name, (unsigned long long)cum);
}

static long long pk__worker_gauge_sum(const struct pk_metrics_snapshot *s, enum pk_ctr_gauge g)
{
	long long sum = 0;
	for (int i = 0; i < s->nchildren; i++)
		if (s->children[i].role == 0 && s->children[i].pid != 0)
			sum += s->children[i].gauges[g];
	return sum;
}

static void pk__render_traffic(struct pk__mbuf *b, const struct pk_metrics_snapshot *s)
{
	const struct pk_ctr_worker *t = &s->total;

	pk__gauge1(b, "piko_proxy_requests_in_flight", "Proxied requests being served now.",
	           pk__worker_gauge_sum(s, PK_CTR_G_REQUESTS_INFLIGHT));
	pk__gauge1(b, "pikod_proxy_connections", "Client connections open on the proxy port now.",
	           pk__worker_gauge_sum(s, PK_CTR_G_CONNECTIONS));
	pk__family(b, "pikod_bytes_total", "counter",
	           "Bytes read from clients (in) and written to clients (out) on the proxy port.");
	pk__put(b, "pikod_bytes_total{direction=\"in\"} %llu\n",
	        (unsigned long long)t->v[PK_CTR_W_BYTES_IN]);
	pk__put(b, "pikod_bytes_total{direction=\"out\"} %llu\n",
	        (unsigned long long)t->v[PK_CTR_W_BYTES_OUT]);
	pk__family(b, "pikod_handoffs_total", "counter",
	           "Client connections passed to the worker holding the tunnel.");
	pk__put(b, "pikod_handoffs_total{direction=\"sent\"} %llu\n",
	        (unsigned long long)t->v[PK_CTR_W_HANDOFFS_SENT]);
	pk__put(b, "pikod_handoffs_total{direction=\"received\"} %llu\n",
	        (unsigned long long)t->v[PK_CTR_W_HANDOFFS_RECEIVED]);
	pk__counter1(b, "pikod_streams_opened_total", "Streams opened on upstream tunnels.",
	             t->v[PK_CTR_W_STREAMS_OPENED]);
	pk__counter1(b, "piko_upstreams_upstream_requests_total",
	             "Requests and connections sent to upstreams (one tunnel stream each).",
	             t->v[PK_CTR_W_STREAMS_OPENED]);
	pk__counter1(b, "pikod_tunnels_connected_total", "Upstream tunnels accepted.",
	             t->v[PK_CTR_W_TUNNELS_CONNECTED]);
	pk__counter1(b, "pikod_forwarded_requests_total", "Requests forwarded to a peer node.",
	             t->v[PK_CTR_W_FORWARDED]);
	pk__counter1(b, "pikod_no_upstream_requests_total",
	             "Requests that found no upstream in time (answered 502).",
	             t->v[PK_CTR_W_NO_UPSTREAM]);
}

static void pk__render_upstreams(struct pk__mbuf *b, const struct pk_metrics_snapshot *s)
{
	pk__gauge1(b, "piko_upstreams_connected_upstreams",
	           "Upstream tunnels connected to this node.",
	           pk__worker_gauge_sum(s, PK_CTR_G_TUNNELS));
	if (s->endpoints >= 0)
		pk__gauge1(b, "piko_upstreams_registered_endpoints",
		           "Endpoints with at least one upstream on this node.", s->endpoints);
	if (s->tunnels >= 0)
		pk__gauge1(b, "pikod_tunnel_streams_in_flight",
		           "Streams open now over this node's upstream tunnels.",
		           (long long)s->tunnel_streams);
}

static void pk__render_processes(struct pk__mbuf *b, const struct pk_metrics_snapshot *s)
{
	int up[PK_MAX_WORKERS];

	pk__family(b, "pikod_reloads_total", "counter", "Finished reloads by result.");
	pk__put(b, "pikod_reloads_total{result=\"success\"} %llu\n",
	        (unsigned long long)s->sup.reloads_ok);
	pk__put(b, "pikod_reloads_total{result=\"failure\"} %llu\n",
	        (unsigned long long)s->sup.reloads_failed);
	pk__family(b, "pikod_child_restarts_total", "counter",
	           "Children that exited unexpectedly and were respawned, by role.");
	for (size_t r = 0; r < sizeof(pk__role_names) / sizeof(pk__role_names[0]); r++)
		pk__put(b, "pikod_child_restarts_total{role=\"%s\"} %llu\n", pk__role_names[r],
		        (unsigned long long)s->sup.restarts[r]);

	/* One series per worker index of the serving generation; a worker waiting to be
	 * respawned is 0. */
	for (int w = 0; w < PK_MAX_WORKERS; w++)
		up[w] = -1;
	for (int i = 0; i < s->nchildren; i++) {
		const struct pk_metrics_child *c = &s->children[i];
		if (c->role != 0 || c->generation != s->sup.generation || c->worker_index < 0 ||
		    c->worker_index >= PK_MAX_WORKERS)
			continue;
		int v = c->pid != 0 && c->state == PK_CHILD_READY;
		if (v > up[c->worker_index])
			up[c->worker_index] = v;
	}
	pk__family(b, "pikod_worker_up", "gauge",
	           "1 when the serving generation's worker with this index is running and ready.");
	for (int w = 0; w < PK_MAX_WORKERS; w++)
		if (up[w] >= 0)
			pk__put(b, "pikod_worker_up{worker=\"%d\"} %d\n", w, up[w]);

	static const char *const fam[2][2] = {
	    {"pikod_process_resident_memory_bytes", "Resident memory of each pikod process."},
	    {"pikod_process_open_fds", "Open file descriptors of each pikod process."},
	};
	for (int f = 0; f < 2; f++) {
		pk__family(b, fam[f][0], "gauge", fam[f][1]);
		if (s->sup_have_proc)
			pk__put(b, "%s{role=\"supervisor\",slot=\"-\"} %llu\n", fam[f][0],
			        (unsigned long long)(f == 0 ? s->sup_rss_bytes : s->sup_open_fds));
		for (int i = 0; i < s->nchildren; i++) {
			const struct pk_metrics_child *c = &s->children[i];
			if (c->pid == 0 || !c->have_proc)
				continue;
			pk__put(b, "%s{role=\"%s\",slot=\"%d\"} %llu\n", fam[f][0],
			        pk__role(c->role), c->slot,
			        (unsigned long long)(f == 0 ? c->rss_bytes : c->open_fds));
		}
	}
}

int pk_metrics_render(const struct pk_metrics_snapshot *s, char **text, size_t *len)
{
	struct pk__mbuf b = {0};

	if (s == NULL || text == NULL || len == NULL)
		return -EINVAL;
	b.cap = 16384;
	b.p = malloc(b.cap);
	if (b.p == NULL)
		return -ENOMEM;
	b.p[0] = '\0';
	pk__render_node(&b, s);
	pk__render_requests(&b, s);
	pk__render_traffic(&b, s);
	pk__render_upstreams(&b, s);
	pk__render_processes(&b, s);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*text = b.p;
	*len = b.len;
	return 0;
}

void pk_metrics_add_worker(struct pk_ctr_worker *total, const struct pk_ctr_worker *w)
{
	for (int i = 0; i < PK_CTR_STATUS_CLASSES; i++)
		total->requests[i] += w->requests[i];
	for (int i = 0; i < PK_CTR_M__COUNT; i++)
		total->methods[i] += w->methods[i];
	for (int i = 0; i < PK_CTR_LAT_BUCKETS; i++)
		total->latency[i] += w->latency[i];
	total->latency_sum_us += w->latency_sum_us;
	total->latency_count += w->latency_count;
	for (int i = 0; i < PK_CTR_SIZE_BUCKETS; i++) {
		total->req_size[i] += w->req_size[i];
		total->resp_size[i] += w->resp_size[i];
	}
	total->req_size_sum += w->req_size_sum;
	total->resp_size_sum += w->resp_size_sum;
	for (int i = 0; i < PK_CTR_W__COUNT; i++)
		total->v[i] += w->v[i];
}

/* ---- /proc ---- */

static int pk__read_rss(pid_t pid, uint64_t *rss)
{
	char path[64], buf[256];
	unsigned long long size, resident;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int err = errno;
	close(fd);
	if (n < 0)
		return -err;
	buf[n] = '\0';
	if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
		return -EPROTO;
	long page = sysconf(_SC_PAGESIZE);
	*rss = (uint64_t)resident * (uint64_t)(page > 0 ? page : 4096);
	return 0;
}

static int pk__count_fds(pid_t pid, uint64_t *count)
{
	char path[64];
	uint64_t n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (d == NULL)
		return -errno;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < PK__MAX_FDS_COUNTED)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	/* Our own listing holds one descriptor open while counting. */
	if (pid == getpid() && n > 0)
		n--;
	*count = n;
	return 0;
}

int pk_metrics_proc_stats(pid_t pid, uint64_t *rss_bytes, uint64_t *open_fds)
{
	if (pid <= 0 || rss_bytes == NULL || open_fds == NULL)
		return -EINVAL;
	int rc = pk__read_rss(pid, rss_bytes);
	if (rc == 0)
		rc = pk__count_fds(pid, open_fds);
	return rc;
}
