/* codec_bench: the yamux + WebSocket data path, encode -> decode, no sockets.
 *
 * A yamux server session (pikod's role) and a yamux client session (the agent's role) are
 * wired back to back through WebSocket framing: every yamux write becomes one binary message
 * (client: masked while copied into the wire buffer; server: copied unmasked), the other side
 * decodes it with pk_ws_feed (unmasking in place) and feeds the payload to its session. The
 * wire buffers stand in for the sockets, so one copy per direction is counted, as writev()
 * into the kernel would cost.
 *
 * The server opens one stream (as pikod does); the receiver reports every byte consumed, so
 * window updates flow back through the reverse direction as they would on a real tunnel.
 *
 *	codec_bench [--dir up|down] [--size BYTES] [--frames N] [--runs R]
 *
 * up   = agent -> pikod (client masks, server unmasks): response bodies.
 * down = pikod -> agent (server unmasked, client decodes): request bodies.
 * Prints one line per run and the median, in bytes/s (wall clock, CLOCK_MONOTONIC) and ns per
 * frame. For instruction counts run it under
 *	valgrind --tool=callgrind --toggle-collect=pump_frames ./codec_bench --runs 1 ...
 * and divide the Ir total by the frame count: only pump_frames (the loop) is counted.
 */
#include "proto/websocket.h"
#include "proto/yamux.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WIRE_CAP (4u << 20)

/* One direction of the simulated connection: bytes written by one side, read by the other. */
struct wire {
	uint8_t *buf;
	size_t len;
};

struct side {
	const char *name;
	struct pk_yamux_session *ys;
	struct pk_ws ws;
	struct wire *out; /* what this side writes */
	uint64_t rx_bytes;
	uint32_t stream;
	int failed;
};

static int write_ws(void *ud, const struct iovec *iov, int iovcnt)
{
	struct side *sd = ud;
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (sd->out->len + PK_WS_MAX_HEADER + total > WIRE_CAP)
		return -ENOBUFS;

	struct pk_ws_mask m;
	uint8_t *p = sd->out->buf + sd->out->len;
	int h = pk_ws_header(&sd->ws, p, PK_WS_OP_BINARY, true, total, &m);
	if (h < 0)
		return h;
	p += h;
	for (int i = 0; i < iovcnt; i++) {
		pk_ws_mask_copy(&m, p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	sd->out->len = (size_t)(p - sd->out->buf);
	return 0;
}

static void on_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                    const uint8_t *data, size_t len)
{
	struct side *sd = ud;
	sd->rx_bytes += len;
	if (pk_yamux_consumed(s, id, len) < 0)
		sd->failed = 1;
}

static int on_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	struct side *sd = ud;
	sd->stream = id;
	return PK_YAMUX_ACCEPT;
}

static void on_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	struct side *sd = ud;
	fprintf(stderr, "codec_bench: %s: yamux error %d: %s\n", sd->name, err, reason);
	sd->failed = 1;
}

/* Decodes everything on the wire towards `to` and feeds it to its session. */
static int drain(struct side *to, struct wire *w)
{
	size_t off = 0;
	for (;;) {
		struct pk_ws_event ev;
		off += pk_ws_feed(&to->ws, w->buf + off, w->len - off, &ev);
		if (ev.type == PK_WS_EV_NONE)
			break;
		if (ev.type == PK_WS_EV_ERROR) {
			fprintf(stderr, "codec_bench: %s: ws error %s\n", to->name, ev.reason);
			return -EPROTO;
		}
		if (ev.type == PK_WS_EV_DATA) {
			ssize_t r = pk_yamux_feed(to->ys, ev.data, ev.len);
			if (r < 0)
				return (int)r;
		}
	}
	w->len = 0;
	return to->failed ? -EPROTO : 0;
}

/* The measured loop: send `frames` Data frames of `size` bytes from `tx` to `rx`, pumping
 * both directions after each send. Not inlined so callgrind can toggle on it. */
__attribute__((noinline)) int pump_frames(struct side *tx, struct side *rx, struct wire *to_rx,
                                          struct wire *to_tx, const uint8_t *payload, size_t size,
                                          long frames);
__attribute__((noinline)) int pump_frames(struct side *tx, struct side *rx, struct wire *to_rx,
                                          struct wire *to_tx, const uint8_t *payload, size_t size,
                                          long frames)
{
	for (long i = 0; i < frames; i++) {
		size_t sent = 0;
		while (sent < size) {
			ssize_t n = pk_yamux_send(tx->ys, tx->stream, payload + sent, size - sent);
			if (n < 0)
				return (int)n;
			if (n == 0 && to_rx->len == 0 && to_tx->len == 0)
				return -EDEADLK; /* window closed and nothing in flight */
			sent += (size_t)n;
			int r = drain(rx, to_rx);
			if (r == 0)
				r = drain(tx, to_tx);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void usage(void)
{
	fprintf(stderr, "usage: codec_bench [--dir up|down] [--size BYTES] [--frames N] "
	                "[--runs R]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *dir = "up";
	size_t size = 16384;
	long frames = 100000;
	int runs = 5;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--dir") == 0)
			dir = argv[++i];
		else if (strcmp(argv[i], "--size") == 0)
			size = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--frames") == 0)
			frames = strtol(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--runs") == 0)
			runs = atoi(argv[++i]);
		else
			usage();
	}
	if (size == 0 || size > (1u << 20) || frames <= 0 || runs <= 0 || runs > 100 ||
	    (strcmp(dir, "up") && strcmp(dir, "down")))
		usage();

	static struct wire c2s, s2c;
	c2s.buf = malloc(WIRE_CAP);
	s2c.buf = malloc(WIRE_CAP);
	uint8_t *payload = malloc(size);
	if (!c2s.buf || !s2c.buf || !payload)
		return 1;
	for (size_t i = 0; i < size; i++)
		payload[i] = (uint8_t)(i * 131u + 7u);

	double *rates = calloc((size_t)runs, sizeof(double));
	for (int r = 0; r < runs; r++) {
		struct side srv = {.name = "server", .out = &s2c};
		struct side cli = {.name = "client", .out = &c2s};
		struct pk_yamux_callbacks cb = {.write = write_ws,
		                                .on_data = on_data,
		                                .on_stream = on_stream,
		                                .on_error = on_error};
		pk_ws_init(&srv.ws, PK_WS_SERVER, NULL);
		pk_ws_init(&cli.ws, PK_WS_CLIENT, NULL);
		if (pk_yamux_new(&srv.ys, PK_YAMUX_SERVER, NULL, &cb, &srv) < 0 ||
		    pk_yamux_new(&cli.ys, PK_YAMUX_CLIENT, NULL, &cb, &cli) < 0)
			return 1;
		/* pikod opens the stream; the agent accepts it. */
		if (pk_yamux_open(srv.ys, 0, NULL, &srv.stream) < 0 || drain(&cli, &s2c) < 0 ||
		    drain(&srv, &c2s) < 0 || cli.stream != srv.stream) {
			fprintf(stderr, "codec_bench: stream open failed\n");
			return 1;
		}

		bool up = strcmp(dir, "up") == 0;
		struct side *tx = up ? &cli : &srv, *rx = up ? &srv : &cli;
		struct wire *to_rx = up ? &c2s : &s2c, *to_tx = up ? &s2c : &c2s;
		double t0 = now_s();
		int err = pump_frames(tx, rx, to_rx, to_tx, payload, size, frames);
		double dt = now_s() - t0;
		if (err < 0 || rx->rx_bytes != (uint64_t)size * (uint64_t)frames) {
			fprintf(stderr, "codec_bench: run failed (%d), received %llu\n", err,
			        (unsigned long long)rx->rx_bytes);
			return 1;
		}
		rates[r] = (double)rx->rx_bytes / dt;
		printf("run %d: dir=%s size=%zu frames=%ld %.3f s %.1f MB/s %.0f ns/frame\n", r + 1,
		       dir, size, frames, dt, rates[r] / 1e6, dt * 1e9 / (double)frames);
		pk_yamux_free(srv.ys);
		pk_yamux_free(cli.ys);
	}
	qsort(rates, (size_t)runs, sizeof(double), cmp_double);
	double med = rates[runs / 2];
	printf("median: dir=%s size=%zu %.1f MB/s %.2f Mframes/s %.0f ns/frame (%d runs)\n", dir,
	       size, med / 1e6, med / (double)size / 1e6, (double)size * 1e9 / med, runs);
	free(rates);
	free(payload);
	free(c2s.buf);
	free(s2c.buf);
	return 0;
}
