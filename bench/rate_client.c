/* rate_client: an open-loop, constant-rate HTTP/1.1 load generator for latency percentiles.
 *
 *	rate_client --addr 127.0.0.1:PORT --path /1k --rate R --duration S [--conns C]
 *	            [--header "Name: value"]... [--timeout S]
 *
 * Request i is due at t0 + i / R, whatever happened to earlier requests. A due request goes
 * out on an idle keep-alive connection; when none is idle it waits, and its latency is still
 * measured from the time it was due (so a stall is charged to every request it delayed, as
 * wrk2 does, instead of silently lowering the rate). Latency = due time -> last byte of the
 * response. One request in flight per connection, no pipelining.
 *
 * Bounded: exactly R * S requests are scheduled; the run ends when all are answered or
 * --timeout seconds (default 5) after the last was due; unanswered ones count as timeouts.
 * Only loopback addresses are accepted.
 *
 * Prints one line: key=value pairs (sent, ok, errors, timeouts, achieved rate, p50, p90, p99,
 * p99.9, max in microseconds).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS   1024
#define MAX_HEADERS 8
#define INBUF       16384
#define MAX_TOTAL   (20u * 1000u * 1000u)

struct conn {
	int fd;
	int busy;
	uint64_t due_ns; /* due time of the request in flight */
	size_t rlen;
	uint8_t in[INBUF];
};

static struct conn conns[MAX_CONNS];
static int idle[MAX_CONNS];
static int nidle;
static struct sockaddr_in sa;
static char req[2048];
static size_t req_len;
static uint64_t *lat_ns;
static uint64_t ok, errors;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int open_conn(int ep, int i)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	conns[i].fd = fd;
	conns[i].busy = 0;
	conns[i].rlen = 0;
	idle[nidle++] = i;
	return 0;
}

/* A connection failed or the server closed it: count the request in flight and reopen. */
static void reset_conn(int ep, int i)
{
	if (conns[i].busy)
		errors++;
	else
		for (int k = 0; k < nidle; k++)
			if (idle[k] == i) {
				idle[k] = idle[--nidle];
				break;
			}
	close(conns[i].fd);
	conns[i].fd = -1;
	conns[i].busy = 0;
	if (open_conn(ep, i) < 0)
		fprintf(stderr, "rate_client: reconnect failed\n");
}

/* Returns 1 when a complete response is in c->in, 0 when more is needed, -1 if malformed. */
static int response_done(struct conn *c, int *status)
{
	const uint8_t *end = memmem(c->in, c->rlen, "\r\n\r\n", 4);
	if (!end)
		return c->rlen >= INBUF ? -1 : 0;
	size_t head = (size_t)(end - c->in) + 4;
	if (c->rlen < 12 || memcmp(c->in, "HTTP/1.", 7) != 0)
		return -1;
	*status = atoi((const char *)c->in + 9);
	size_t body = 0;
	for (size_t p = 0; p + 16 < head; p++) {
		if (c->in[p] != '\n')
			continue;
		if (strncasecmp((const char *)c->in + p + 1, "content-length:", 15) == 0)
			body = strtoul((const char *)c->in + p + 16, NULL, 10);
		else if (strncasecmp((const char *)c->in + p + 1, "transfer-encoding:", 18) == 0)
			return -1; /* the origin sends Content-Length; chunked is not expected */
	}
	if (*status == 204 || *status == 304)
		body = 0;
	if (head + body > INBUF)
		return -1;
	return c->rlen >= head + body ? 1 : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static double pct(const uint64_t *v, uint64_t n, double q)
{
	if (n == 0)
		return NAN;
	uint64_t k = (uint64_t)ceil(q * (double)n);
	if (k < 1)
		k = 1;
	return (double)v[k - 1] / 1000.0;
}

static void usage(void)
{
	fprintf(stderr, "usage: rate_client --addr 127.0.0.1:PORT --path P --rate R --duration S "
	                "[--conns C] [--header H]... [--timeout S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *addr = NULL, *path = "/", *headers[MAX_HEADERS];
	double rate = 0, duration = 0, timeout = 5;
	int nconns = 64, nheaders = 0;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *k = argv[i], *v = argv[++i];
		if (!strcmp(k, "--addr"))
			addr = v;
		else if (!strcmp(k, "--path"))
			path = v;
		else if (!strcmp(k, "--rate"))
			rate = atof(v);
		else if (!strcmp(k, "--duration"))
			duration = atof(v);
		else if (!strcmp(k, "--conns"))
			nconns = atoi(v);
		else if (!strcmp(k, "--timeout"))
			timeout = atof(v);
		else if (!strcmp(k, "--header") && nheaders < MAX_HEADERS)
			headers[nheaders++] = v;
		else
			usage();
	}
	if (!addr || rate <= 0 || duration <= 0 || duration > 600 || timeout <= 0 || timeout > 60 ||
	    nconns < 1 || nconns > MAX_CONNS || rate * duration > MAX_TOTAL)
		usage();
	char host[64];
	const char *colon = strrchr(addr, ':');
	if (!colon || (size_t)(colon - addr) >= sizeof(host))
		usage();
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
	    (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
		fprintf(stderr, "rate_client: only 127.0.0.0/8 addresses\n");
		return 2;
	}
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n", path, addr);
	for (int i = 0; i < nheaders && n > 0 && (size_t)n < sizeof(req); i++)
		n += snprintf(req + n, sizeof(req) - (size_t)n, "%s\r\n", headers[i]);
	if (n <= 0 || (size_t)n + 3 > sizeof(req))
		usage();
	n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
	req_len = (size_t)n;

	uint64_t total = (uint64_t)(rate * duration);
	lat_ns = calloc(total ? total : 1, sizeof(*lat_ns));
	if (!lat_ns)
		return 1;
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise wakeups for the schedule */
	int ep = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < nconns; i++)
		if (open_conn(ep, i) < 0) {
			fprintf(stderr, "rate_client: connect %s failed\n", addr);
			return 1;
		}

	const double period = 1e9 / rate;
	uint64_t t0 = now_ns() + 1000000, next = 0, done = 0;
	uint64_t last_due = t0 + (uint64_t)((double)(total - 1) * period);
	uint64_t deadline = last_due + (uint64_t)(timeout * 1e9);
	struct epoll_event evs[256];
	for (;;) {
		uint64_t now = now_ns();
		while (next < total && nidle > 0) {
			uint64_t due = t0 + (uint64_t)((double)next * period);
			if (due > now)
				break;
			int i = idle[--nidle];
			struct conn *c = &conns[i];
			c->busy = 1;
			c->due_ns = due;
			c->rlen = 0;
			next++;
			if (write(c->fd, req, req_len) != (ssize_t)req_len)
				reset_conn(ep, i);
		}
		if (done + errors >= total || now >= deadline)
			break;
		struct timespec to = {0, 100000000};
		if (next < total && nidle > 0) {
			uint64_t due = t0 + (uint64_t)((double)next * period);
			uint64_t wait = due > now ? due - now : 0;
			to.tv_sec = (time_t)(wait / 1000000000u);
			to.tv_nsec = (long)(wait % 1000000000u);
		}
		int ne = epoll_pwait2(ep, evs, 256, &to, NULL);
		if (ne < 0 && errno != EINTR) {
			perror("epoll_pwait2");
			return 1;
		}
		for (int e = 0; e < ne; e++) {
			int i = (int)evs[e].data.u32;
			struct conn *c = &conns[i];
			ssize_t r = read(c->fd, c->in + c->rlen, INBUF - c->rlen);
			if (r <= 0) {
				if (r < 0 && errno == EAGAIN)
					continue;
				reset_conn(ep, i);
				continue;
			}
			c->rlen += (size_t)r;
			if (!c->busy) {
				reset_conn(ep, i); /* bytes nobody asked for */
				continue;
			}
			int status = 0, d = response_done(c, &status);
			if (d == 0)
				continue;
			if (d < 0 || status < 200 || status >= 300) {
				reset_conn(ep, i);
				continue;
			}
			lat_ns[done++] = now_ns() - c->due_ns;
			ok++;
			c->busy = 0;
			c->rlen = 0;
			idle[nidle++] = i;
		}
	}
	uint64_t end = now_ns();
	uint64_t timeouts = total - done - errors;
	qsort(lat_ns, done, sizeof(*lat_ns), cmp_u64);
	double secs = (double)(end - t0) / 1e9;
	printf("target_rate=%.0f sent=%llu ok=%llu errors=%llu timeouts=%llu rate=%.0f "
	       "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n",
	       rate, (unsigned long long)next, (unsigned long long)ok, (unsigned long long)errors,
	       (unsigned long long)timeouts, (double)done / secs, pct(lat_ns, done, 0.50),
	       pct(lat_ns, done, 0.90), pct(lat_ns, done, 0.99), pct(lat_ns, done, 0.999),
	       done ? (double)lat_ns[done - 1] / 1000.0 : NAN);
	return 0;
}
