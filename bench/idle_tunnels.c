/* idle_tunnels: opens N idle upstream registrations (agents) to pikod, for memory and
 * re-registration benchmarks. Built on proto/websocket and proto/yamux: each connection is a
 * real agent as far as pikod can tell (WebSocket upgrade on /piko/v1/upstream/<endpoint>,
 * then a yamux client session that answers pings and accepts nothing else to do).
 *
 *	idle_tunnels --port P -n N [--endpoints K] [--first F] [--sources S]
 *	             [--source-first A] [--concurrency C] [--max-seconds T]
 *
 * Connections come from source addresses 127.0.0.A .. 127.0.0.(A+S-1), round robin, so more
 * than one address's ephemeral ports can be used (default A = 2, S = N / 2000 + 1: the
 * kernel's search for a free ephemeral port to one destination grows with the ports an
 * address already uses, and made this tool, not pikod, the bottleneck above ~10,000).
 * Endpoint of connection i is "idle<F + i % K>" (default F = 0, K = N: one endpoint per
 * tunnel). At most C handshakes are in flight at once (default 256). Several processes
 * (each within its own open-file limit) open more tunnels than one can: give each its own
 * F and A.
 *
 * A connection that drops (pikod restarted) is redialed after 20-40 ms (jittered), and after
 * the same delay when the dial is refused, as long as the tool runs.
 *
 * stdout, one line per event (times are CLOCK_MONOTONIC nanoseconds, comparable with
 * Python's time.monotonic_ns()):
 *	all_open n=N mono_ns=T          every connection is registered (again)
 *	closed mono_ns=T                after the "close" command
 * stdin, one command per line: "close" (close every connection, dial no more), "exit".
 * The tool exits on "exit", on end of stdin, or after --max-seconds (default 300).
 */
#include "proto/websocket.h"
#include "proto/yamux.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_TUNNELS 200000
#define HS_BUF      1024
#define STDIN_TAG   UINT32_MAX

enum state { ST_IDLE, ST_WAIT, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DONE };

struct tun {
	int fd;
	uint8_t state;
	uint16_t hs_len;
	char *hs; /* handshake response buffer while ST_HANDSHAKE */
	uint64_t retry_at;
	struct pk_ws ws;
	struct pk_yamux_session *ys;
};

static struct tun *tuns;
static uint32_t n_tun, n_endpoints, n_sources, concurrency, first_endpoint, source_first = 2;
static uint32_t n_open, n_inflight;
static uint16_t port;
static int ep;
static uint32_t *waitq; /* tunnels waiting to dial, FIFO ring */
static uint32_t wq_head, wq_len;
static uint8_t rbuf[65536];
static int closing;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void wq_push(uint32_t i)
{
	waitq[(wq_head + wq_len) % n_tun] = i;
	wq_len++;
}

static void report_all_open(void)
{
	printf("all_open n=%u mono_ns=%llu\n", n_open, (unsigned long long)now_ns());
	fflush(stdout);
}

/* Drops a connection and schedules a redial (unless we are closing down). */
static void drop(uint32_t i)
{
	struct tun *t = &tuns[i];
	if (t->state == ST_OPEN)
		n_open--;
	if (t->state == ST_CONNECTING || t->state == ST_HANDSHAKE)
		n_inflight--;
	if (t->ys) {
		pk_yamux_free(t->ys);
		t->ys = NULL;
	}
	free(t->hs);
	t->hs = NULL;
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	if (closing) {
		t->state = ST_DONE;
		return;
	}
	t->state = ST_WAIT;
	t->retry_at = now_ns() + 20000000u + (uint64_t)(rand() % 20000) * 1000u;
	wq_push(i);
}

static int yamux_write(void *ud, const struct iovec *iov, int iovcnt)
{
	struct tun *t = ud;
	uint8_t frame[PK_WS_MAX_HEADER + 64];
	size_t total = 0;
	for (int k = 0; k < iovcnt; k++)
		total += iov[k].iov_len;
	if (total > 64)
		return -EMSGSIZE; /* an idle agent only sends small control frames */
	struct pk_ws_mask m;
	int h = pk_ws_header(&t->ws, frame, PK_WS_OP_BINARY, true, total, &m);
	if (h < 0)
		return h;
	size_t off = (size_t)h;
	for (int k = 0; k < iovcnt; k++) {
		pk_ws_mask_copy(&m, frame + off, iov[k].iov_base, iov[k].iov_len);
		off += iov[k].iov_len;
	}
	return write(t->fd, frame, off) == (ssize_t)off ? 0 : -EIO;
}

static const struct pk_yamux_callbacks yamux_cb = {.write = yamux_write};

static void dial(uint32_t i)
{
	struct tun *t = &tuns[i];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("idle_tunnels: socket");
		exit(1);
	}
	int one = 1;
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	struct sockaddr_in src = {.sin_family = AF_INET};
	src.sin_addr.s_addr = htonl(0x7f000000u + source_first + i % n_sources);
	if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
		perror("idle_tunnels: bind");
		exit(1);
	}
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
	dst.sin_addr.s_addr = htonl(0x7f000001u);
	t->fd = fd;
	t->state = ST_CONNECTING;
	n_inflight++;
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS) {
		drop(i);
		return;
	}
	struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = i};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		perror("idle_tunnels: epoll_ctl");
		exit(1);
	}
}

static void send_upgrade(uint32_t i)
{
	struct tun *t = &tuns[i];
	char key[PK_WS_KEY_LEN + 1], path[64], host[32], req[512];
	snprintf(path, sizeof(path), "/piko/v1/upstream/idle%u", first_endpoint + i % n_endpoints);
	snprintf(host, sizeof(host), "127.0.0.1:%u", port);
	if (pk_ws_client_key(key) < 0)
		exit(1);
	int n = pk_ws_client_request(req, sizeof(req), path, host, key, NULL);
	if (n < 0 || write(t->fd, req, (size_t)n) != n) {
		drop(i);
		return;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
	epoll_ctl(ep, EPOLL_CTL_MOD, t->fd, &ev);
	t->hs = malloc(HS_BUF);
	t->hs_len = 0;
	t->state = ST_HANDSHAKE;
}

/* Feeds session bytes (after the upgrade) through WebSocket into yamux. */
static void feed(uint32_t i, uint8_t *buf, size_t len)
{
	struct tun *t = &tuns[i];
	size_t off = 0;
	for (;;) {
		struct pk_ws_event ev;
		off += pk_ws_feed(&t->ws, buf + off, len - off, &ev);
		if (ev.type == PK_WS_EV_NONE)
			return;
		if (ev.type == PK_WS_EV_DATA) {
			if (pk_yamux_feed(t->ys, ev.data, ev.len) < 0) {
				drop(i);
				return;
			}
		} else if (ev.type == PK_WS_EV_PING) {
			uint8_t pong[PK_WS_MAX_CONTROL_FRAME];
			int n = pk_ws_control(&t->ws, pong, sizeof(pong), PK_WS_OP_PONG, ev.data,
			                      ev.len);
			if (n < 0 || write(t->fd, pong, (size_t)n) != n) {
				drop(i);
				return;
			}
		} else if (ev.type == PK_WS_EV_CLOSE || ev.type == PK_WS_EV_ERROR) {
			drop(i);
			return;
		}
	}
}

static void on_handshake_bytes(uint32_t i, const uint8_t *buf, size_t len)
{
	struct tun *t = &tuns[i];
	if (t->hs_len + len > HS_BUF) {
		drop(i);
		return;
	}
	memcpy(t->hs + t->hs_len, buf, len);
	t->hs_len += (uint16_t)len;
	char *end = memmem(t->hs, t->hs_len, "\r\n\r\n", 4);
	if (!end)
		return;
	if (t->hs_len < 12 || memcmp(t->hs, "HTTP/1.1 101", 12) != 0) {
		drop(i);
		return;
	}
	size_t head = (size_t)(end - t->hs) + 4;
	uint8_t rest[HS_BUF];
	size_t rest_len = t->hs_len - head;
	memcpy(rest, t->hs + head, rest_len);
	free(t->hs);
	t->hs = NULL;
	pk_ws_init(&t->ws, PK_WS_CLIENT, NULL);
	if (pk_yamux_new(&t->ys, PK_YAMUX_CLIENT, NULL, &yamux_cb, t) < 0) {
		drop(i);
		return;
	}
	t->state = ST_OPEN;
	n_inflight--;
	n_open++;
	if (n_open == n_tun)
		report_all_open();
	if (rest_len)
		feed(i, rest, rest_len);
}

static void on_event(uint32_t i, uint32_t events)
{
	struct tun *t = &tuns[i];
	if (t->state == ST_CONNECTING) {
		int err = 0;
		socklen_t el = sizeof(err);
		getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &el);
		if (err || (events & (EPOLLERR | EPOLLHUP))) {
			drop(i);
			return;
		}
		send_upgrade(i);
		return;
	}
	ssize_t r = read(t->fd, rbuf, sizeof(rbuf));
	if (r <= 0) {
		if (r < 0 && errno == EAGAIN)
			return;
		drop(i);
		return;
	}
	if (t->state == ST_HANDSHAKE)
		on_handshake_bytes(i, rbuf, (size_t)r);
	else if (t->state == ST_OPEN)
		feed(i, rbuf, (size_t)r);
}

static void close_all(void)
{
	closing = 1;
	for (uint32_t i = 0; i < n_tun; i++)
		if (tuns[i].fd >= 0)
			drop(i);
	wq_len = 0;
	printf("closed mono_ns=%llu\n", (unsigned long long)now_ns());
	fflush(stdout);
}

static int on_stdin(void)
{
	static char line[256];
	static size_t len;
	ssize_t r = read(0, line + len, sizeof(line) - 1 - len);
	if (r <= 0)
		return -1;
	len += (size_t)r;
	char *nl;
	while ((nl = memchr(line, '\n', len))) {
		*nl = 0;
		if (!strcmp(line, "close"))
			close_all();
		else if (!strcmp(line, "exit"))
			return -1;
		size_t used = (size_t)(nl - line) + 1;
		memmove(line, nl + 1, len - used);
		len -= used;
	}
	if (len == sizeof(line) - 1)
		len = 0;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: idle_tunnels --port P -n N [--endpoints K] [--first F] "
	                "[--sources S] [--source-first A] [--concurrency C] [--max-seconds T]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	double max_seconds = 300;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *k = argv[i], *v = argv[++i];
		if (!strcmp(k, "--port"))
			port = (uint16_t)atoi(v);
		else if (!strcmp(k, "-n"))
			n_tun = (uint32_t)atol(v);
		else if (!strcmp(k, "--endpoints"))
			n_endpoints = (uint32_t)atol(v);
		else if (!strcmp(k, "--first"))
			first_endpoint = (uint32_t)atol(v);
		else if (!strcmp(k, "--sources"))
			n_sources = (uint32_t)atol(v);
		else if (!strcmp(k, "--source-first"))
			source_first = (uint32_t)atol(v);
		else if (!strcmp(k, "--concurrency"))
			concurrency = (uint32_t)atol(v);
		else if (!strcmp(k, "--max-seconds"))
			max_seconds = atof(v);
		else
			usage();
	}
	if (!port || !n_tun || n_tun > MAX_TUNNELS || max_seconds <= 0 || max_seconds > 3600)
		usage();
	if (!n_endpoints)
		n_endpoints = n_tun;
	if (!n_sources)
		n_sources = n_tun / 2000 + 1;
	if (source_first < 1 || n_sources > 254 || source_first + n_sources > 255)
		usage();
	if (!concurrency)
		concurrency = 256;

	tuns = calloc(n_tun, sizeof(*tuns));
	waitq = calloc(n_tun, sizeof(*waitq));
	if (!tuns || !waitq)
		return 1;
	srand((unsigned)now_ns());
	ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
	epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
	for (uint32_t i = 0; i < n_tun; i++) {
		tuns[i].fd = -1;
		tuns[i].state = ST_WAIT;
		wq_push(i);
	}

	uint64_t stop_at = now_ns() + (uint64_t)(max_seconds * 1e9);
	static struct epoll_event evs[1024];
	for (;;) {
		uint64_t now = now_ns();
		if (now >= stop_at)
			break;
		/* Dial waiting tunnels whose delay is over, within the handshake window. The
		 * queue is FIFO and delays are similar, so a not-yet-due head blocks the rest. */
		while (wq_len && n_inflight < concurrency) {
			uint32_t i = waitq[wq_head];
			if (tuns[i].retry_at > now)
				break;
			wq_head = (wq_head + 1) % n_tun;
			wq_len--;
			dial(i);
		}
		int timeout = wq_len && n_inflight < concurrency ? 5 : 100;
		int n = epoll_wait(ep, evs, 1024, timeout);
		for (int e = 0; e < n; e++) {
			if (evs[e].data.u32 == STDIN_TAG) {
				if (on_stdin() < 0)
					goto out;
				continue;
			}
			on_event(evs[e].data.u32, evs[e].events);
		}
	}
out:
	closing = 1;
	for (uint32_t i = 0; i < n_tun; i++)
		if (tuns[i].fd >= 0)
			drop(i);
	return 0;
}
