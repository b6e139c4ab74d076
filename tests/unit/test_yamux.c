/* Tests for proto/yamux: two sessions back to back in memory (each one's output queued and
 * fed to the other by pump(), so there is no recursion), plus raw-byte tests against one
 * session for wire layout and protocol violations. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/yamux.h"

/* ---- growable byte buffer ---- */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		cr_assert_not_null(b->p);
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ---- event log ---- */

enum ev_type {
	EV_STREAM = 1,
	EV_DATA,
	EV_FIN,
	EV_RST,
	EV_WINDOW,
	EV_ACK,
	EV_FREE,
	EV_PING_ACK,
	EV_GOAWAY,
	EV_ERROR,
};

struct ev {
	enum ev_type type;
	uint32_t id;
	uint64_t val; /* data: byte count; window: available; ping: id; goaway: code */
	uint32_t sum; /* data: checksum of the bytes */
};

struct peer;
typedef void (*hook_fn)(struct peer *p, struct ev *e);

struct rx {
	uint32_t id;
	struct buf data;
};

struct peer {
	const char *name;
	struct pk_yamux_session *s;
	struct peer *other;
	struct buf inbox; /* bytes written by the other side, not yet fed */
	struct buf wire;  /* everything this side wrote */
	struct ev *evs;
	size_t nev, capev;
	struct rx *rx;
	size_t nrx;
	int accept_answer; /* what on_stream returns */
	int auto_consume;  /* call pk_yamux_consumed from on_data */
	int write_fail;    /* write callback returns this when non-zero */
	hook_fn hook;      /* called after each event is logged (re-entrancy tests) */
	int last_error;
	const char *last_reason;
};

static uint64_t fake_now;

static uint64_t clock_cb(void *ud)
{
	(void)ud;
	return fake_now;
}

static uint32_t checksum(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--)
		h = (h ^ *p++) * 16777619u;
	return h;
}

static struct buf *rx_of(struct peer *p, uint32_t id)
{
	size_t i;

	for (i = 0; i < p->nrx; i++)
		if (p->rx[i].id == id)
			return &p->rx[i].data;
	p->rx = realloc(p->rx, (p->nrx + 1) * sizeof(*p->rx));
	cr_assert_not_null(p->rx);
	memset(&p->rx[p->nrx], 0, sizeof(p->rx[0]));
	p->rx[p->nrx].id = id;
	return &p->rx[p->nrx++].data;
}

static void log_ev(struct peer *p, enum ev_type type, uint32_t id, uint64_t val, uint32_t sum)
{
	struct ev e = {type, id, val, sum};

	if (p->nev == p->capev) {
		p->capev = p->capev ? p->capev * 2 : 64;
		p->evs = realloc(p->evs, p->capev * sizeof(*p->evs));
		cr_assert_not_null(p->evs);
	}
	p->evs[p->nev++] = e;
	if (p->hook)
		p->hook(p, &e);
}

static size_t count_ev(const struct peer *p, enum ev_type type, uint32_t id)
{
	size_t i, n = 0;

	for (i = 0; i < p->nev; i++)
		if (p->evs[i].type == type && (id == 0 || p->evs[i].id == id))
			n++;
	return n;
}

static const struct ev *last_ev(const struct peer *p, enum ev_type type)
{
	size_t i;

	for (i = p->nev; i-- > 0;)
		if (p->evs[i].type == type)
			return &p->evs[i];
	return NULL;
}

/* ---- callbacks ---- */

static int cb_write(void *ud, const struct iovec *iov, int iovcnt)
{
	struct peer *p = ud;
	int i;

	if (p->write_fail)
		return p->write_fail;
	for (i = 0; i < iovcnt; i++) {
		buf_add(&p->wire, iov[i].iov_base, iov[i].iov_len);
		if (p->other)
			buf_add(&p->other->inbox, iov[i].iov_base, iov[i].iov_len);
	}
	return 0;
}

static int cb_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	struct peer *p = ud;

	cr_assert_eq(pk_yamux_stream_set_user(s, id, p), 0);
	log_ev(p, EV_STREAM, id, 0, 0);
	return p->accept_answer;
}

static void cb_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                    const uint8_t *data, size_t len)
{
	struct peer *p = ud;

	(void)user;
	buf_add(rx_of(p, id), data, len);
	if (p->auto_consume)
		cr_assert_eq(pk_yamux_consumed(s, id, len), 0);
	log_ev(p, EV_DATA, id, len, checksum(data, len));
}

static void cb_fin(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	(void)user;
	log_ev(ud, EV_FIN, id, 0, 0);
}

static void cb_rst(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	(void)user;
	log_ev(ud, EV_RST, id, 0, 0);
}

static void cb_window(struct pk_yamux_session *s, void *ud, uint32_t id, void *user, uint32_t av)
{
	(void)s;
	(void)user;
	log_ev(ud, EV_WINDOW, id, av, 0);
}

static void cb_ack(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	(void)user;
	log_ev(ud, EV_ACK, id, 0, 0);
}

/* val = 1 when the stream's user pointer (set in cb_stream, or given to open) came back. */
static void cb_free(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	cr_assert(user == NULL || user == ud);
	log_ev(ud, EV_FREE, id, user != NULL, 0);
}

static void cb_ping_ack(struct pk_yamux_session *s, void *ud, uint32_t pid, uint64_t rtt)
{
	(void)s;
	log_ev(ud, EV_PING_ACK, pid, rtt, 0);
}

static void cb_goaway(struct pk_yamux_session *s, void *ud, uint32_t code)
{
	(void)s;
	log_ev(ud, EV_GOAWAY, 0, code, 0);
}

static void cb_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	struct peer *p = ud;

	(void)s;
	p->last_error = err;
	p->last_reason = reason;
	log_ev(p, EV_ERROR, 0, (uint64_t)(int64_t)err, 0);
}

static const struct pk_yamux_callbacks callbacks = {
    .write = cb_write,
    .on_stream = cb_stream,
    .on_data = cb_data,
    .on_fin = cb_fin,
    .on_rst = cb_rst,
    .on_window = cb_window,
    .on_ack = cb_ack,
    .on_free = cb_free,
    .on_ping_ack = cb_ping_ack,
    .on_goaway = cb_goaway,
    .on_error = cb_error,
};

static void peer_init(struct peer *p, const char *name, enum pk_yamux_role role,
                      const struct pk_yamux_options *opt)
{
	struct pk_yamux_options o;

	memset(p, 0, sizeof(*p));
	p->name = name;
	p->accept_answer = PK_YAMUX_ACCEPT;
	p->auto_consume = 1;
	if (!opt) {
		pk_yamux_options_init(&o);
		o.now_ms = clock_cb;
		opt = &o;
	}
	cr_assert_eq(pk_yamux_new(&p->s, role, opt, &callbacks, p), 0);
}

static void peer_fini(struct peer *p)
{
	size_t i;

	pk_yamux_free(p->s);
	buf_free(&p->inbox);
	buf_free(&p->wire);
	for (i = 0; i < p->nrx; i++)
		buf_free(&p->rx[i].data);
	free(p->rx);
	free(p->evs);
}

/* Server (pikod's role) and client (the agent's role), wired together. */
static struct peer srv, cli;

static void pair_setup(void)
{
	fake_now = 1000;
	peer_init(&srv, "server", PK_YAMUX_SERVER, NULL);
	peer_init(&cli, "client", PK_YAMUX_CLIENT, NULL);
	srv.other = &cli;
	cli.other = &srv;
}

static void pair_teardown(void)
{
	peer_fini(&srv);
	peer_fini(&cli);
}

/* The pair again, with options of its own for either side (NULL: defaults). */
static void pair_reinit(const struct pk_yamux_options *so, const struct pk_yamux_options *co)
{
	pair_teardown();
	peer_init(&srv, "server", PK_YAMUX_SERVER, so);
	peer_init(&cli, "client", PK_YAMUX_CLIENT, co);
	srv.other = &cli;
	cli.other = &srv;
}

/* Feeds each side's inbox until both are empty. Returns the first negative feed result. */
static ssize_t pump(void)
{
	struct peer *ps[2] = {&srv, &cli};
	ssize_t r, first = 0;
	int progress = 1, i;

	while (progress) {
		progress = 0;
		for (i = 0; i < 2; i++) {
			struct buf in = ps[i]->inbox;

			if (!in.len)
				continue;
			memset(&ps[i]->inbox, 0, sizeof(ps[i]->inbox));
			r = pk_yamux_feed(ps[i]->s, in.p, in.len);
			buf_free(&in);
			if (r < 0 && !first)
				first = r;
			progress = 1;
		}
	}
	return first;
}

/* ---- frame construction ---- */

static void put_hdr(struct buf *b, uint8_t type, uint16_t flags, uint32_t id, uint32_t len)
{
	uint8_t h[12];

	pk_yamux_encode_header(h, type, flags, id, len);
	buf_add(b, h, 12);
}

static uint32_t get_be(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const uint8_t goaway_proto[12] = {0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

/* ============================ wire layout ============================ */

TestSuite(wire, .init = pair_setup, .fini = pair_teardown);

Test(wire, header_layout_is_big_endian)
{
	uint8_t h[12];
	const uint8_t want[12] = {0, 1, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04};

	pk_yamux_encode_header(h, 1, 0x1234, 0xdeadbeef, 0x01020304);
	cr_assert_arr_eq(h, want, 12);
}

Test(wire, open_sends_window_update_syn_delta_zero)
{
	uint32_t id = 0;
	const uint8_t want[12] = {0, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0};

	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &id), 0);
	cr_assert_eq(id, 2);
	cr_assert_eq(srv.wire.len, 12);
	cr_assert_arr_eq(srv.wire.p, want, 12);
}

Test(wire, accept_sends_window_update_ack)
{
	uint32_t id;
	const uint8_t want[12] = {0, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0};

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	cr_assert_eq(cli.wire.len, 12);
	cr_assert_arr_eq(cli.wire.p, want, 12);
}

Test(wire, data_fin_rst_ping_goaway_bytes)
{
	uint32_t id;
	const uint8_t data[17] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'};
	const uint8_t fin[12] = {0, 1, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0};
	const uint8_t ping[12] = {0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42};
	const uint8_t pong[12] = {0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 42};
	const uint8_t ga[12] = {0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	const uint8_t rst[12] = {0, 1, 0, 8, 0, 0, 0, 3, 0, 0, 0, 0};

	cr_assert_eq(pk_yamux_open(cli.s, 0, NULL, &id), 0);
	cr_assert_eq(id, 1);
	pump();
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_send(cli.s, id, "hello", 5), 5);
	cr_assert_arr_eq(cli.wire.p, data, 17);
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_close(cli.s, id), 0);
	cr_assert_arr_eq(cli.wire.p, fin, 12);
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_ping(cli.s, 42), 0);
	cr_assert_arr_eq(cli.wire.p, ping, 12);
	srv.wire.len = 0;
	pump();
	cr_assert_eq(srv.wire.len, 12);
	cr_assert_arr_eq(srv.wire.p, pong, 12);
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_goaway(cli.s, 0), 0);
	cr_assert_arr_eq(cli.wire.p, ga, 12);
	pump();
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_open(cli.s, 0, NULL, &id), 0);
	cr_assert_eq(id, 3);
	cli.wire.len = 0;
	cr_assert_eq(pk_yamux_reset(cli.s, id), 0);
	cr_assert_eq(cli.wire.len, 12);
	cr_assert_arr_eq(cli.wire.p, rst, 12);
}

Test(wire, lazy_open_carries_syn_on_first_data)
{
	uint32_t id;
	const uint8_t want[14] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 'h', 'i'};

	cr_assert_eq(pk_yamux_open(srv.s, PK_YAMUX_OPEN_LAZY, NULL, &id), 0);
	cr_assert_eq(srv.wire.len, 0);
	cr_assert_eq(pk_yamux_send(srv.s, id, "hi", 2), 2);
	cr_assert_eq(srv.wire.len, 14);
	cr_assert_arr_eq(srv.wire.p, want, 14);
	pump();
	cr_assert_eq(count_ev(&cli, EV_STREAM, 2), 1);
	cr_assert_eq(rx_of(&cli, 2)->len, 2);
	cr_assert_eq(count_ev(&srv, EV_ACK, 2), 1);
}

Test(wire, larger_max_window_is_granted_with_syn_and_ack)
{
	struct pk_yamux_options o;
	struct pk_yamux_stream_info si;
	uint32_t id;

	pk_yamux_options_init(&o);
	o.max_window = 1024 * 1024;
	pair_reinit(&o, &o);
	pk_yamux_open(srv.s, 0, NULL, &id);
	cr_assert_eq(get_be(srv.wire.p + 8), 768 * 1024);
	pump();
	cr_assert_eq(pk_yamux_stream_info(cli.s, id, &si), 0);
	cr_assert_eq(si.send_window, 1024 * 1024);
	cr_assert_eq(pk_yamux_stream_info(srv.s, id, &si), 0);
	cr_assert_eq(si.send_window, 1024 * 1024);
	cr_assert_eq(si.recv_window, 1024 * 1024);
}

/* ============================ streams ============================ */

TestSuite(stream, .init = pair_setup, .fini = pair_teardown);

Test(stream, open_accept_ack)
{
	uint32_t a, b;
	struct pk_yamux_stream_info si;

	cr_assert_eq(pk_yamux_open(srv.s, 0, &srv, &a), 0);
	cr_assert_eq(pk_yamux_open(srv.s, 0, &srv, &b), 0);
	cr_assert_eq(a, 2);
	cr_assert_eq(b, 4);
	cr_assert_eq(pk_yamux_stream_info(srv.s, a, &si), 0);
	cr_assert(si.state & PK_YAMUX_ST_WAIT_ACK);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&cli, EV_STREAM, a), 1);
	cr_assert_eq(count_ev(&cli, EV_STREAM, b), 1);
	cr_assert_eq(count_ev(&srv, EV_ACK, a), 1);
	cr_assert_eq(count_ev(&srv, EV_ACK, b), 1);
	cr_assert_eq(pk_yamux_stream_info(srv.s, a, &si), 0);
	cr_assert_eq(si.state & PK_YAMUX_ST_WAIT_ACK, 0);
	cr_assert_eq(si.user, &srv);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 2);
}

Test(stream, client_opens_odd_ids)
{
	uint32_t a, b;

	pk_yamux_open(cli.s, 0, NULL, &a);
	pk_yamux_open(cli.s, 0, NULL, &b);
	cr_assert_eq(a, 1);
	cr_assert_eq(b, 3);
	pump();
	cr_assert_eq(count_ev(&srv, EV_STREAM, 1), 1);
	cr_assert_eq(count_ev(&cli, EV_ACK, 3), 1);
}

Test(stream, data_both_ways)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	cr_assert_eq(pk_yamux_send(srv.s, id, "GET / HTTP/1.1\r\n\r\n", 18), 18);
	pump();
	cr_assert_eq(pk_yamux_send(cli.s, id, "HTTP/1.1 200 OK\r\n\r\n", 19), 19);
	pump();
	cr_assert_eq(rx_of(&cli, id)->len, 18);
	cr_assert_arr_eq(rx_of(&cli, id)->p, "GET / HTTP/1.1\r\n\r\n", 18);
	cr_assert_eq(rx_of(&srv, id)->len, 19);
	cr_assert_arr_eq(rx_of(&srv, id)->p, "HTTP/1.1 200 OK\r\n\r\n", 19);
}

Test(stream, data_before_ack_is_delivered)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "early", 5);
	cr_assert_eq(count_ev(&srv, EV_ACK, id), 0);
	pump();
	cr_assert_eq(rx_of(&cli, id)->len, 5);
	cr_assert_eq(count_ev(&srv, EV_ACK, id), 1);
}

/* A reader that does not consume stops the sender at exactly the window. */
Test(stream, slow_consumer_blocks_sender_at_window)
{
	const size_t total = 1024 * 1024;
	uint8_t *payload = malloc(total);
	size_t sent = 0, i;
	ssize_t n;
	uint32_t id;
	struct pk_yamux_stream_info si;

	for (i = 0; i < total; i++)
		payload[i] = (uint8_t)(i * 7 + (i >> 10));
	cli.auto_consume = 0;
	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	while ((n = pk_yamux_send(srv.s, id, payload + sent, total - sent)) > 0)
		sent += (size_t)n;
	cr_assert_eq(n, 0);
	cr_assert_eq(sent, PK_YAMUX_INITIAL_WINDOW);
	pump();
	cr_assert_eq(rx_of(&cli, id)->len, PK_YAMUX_INITIAL_WINDOW);
	cr_assert_eq(pk_yamux_send(srv.s, id, payload + sent, total - sent), 0);

	/* Half the window minus one byte: still no update. */
	size_t wire_before = cli.wire.len;
	cr_assert_eq(pk_yamux_consumed(cli.s, id, PK_YAMUX_INITIAL_WINDOW / 2 - 1), 0);
	cr_assert_eq(cli.wire.len, wire_before);
	cr_assert_eq(pk_yamux_consumed(cli.s, id, 1), 0);
	cr_assert_eq(cli.wire.len, wire_before + 12);
	cr_assert_eq(get_be(cli.wire.p + wire_before), 0x00010000); /* WindowUpdate, no flags */
	cr_assert_eq(get_be(cli.wire.p + wire_before + 8), PK_YAMUX_INITIAL_WINDOW / 2);
	pump();
	cr_assert_eq(last_ev(&srv, EV_WINDOW)->val, PK_YAMUX_INITIAL_WINDOW / 2);

	/* Now let the reader consume everything as it arrives. */
	cr_assert_eq(pk_yamux_stream_info(cli.s, id, &si), 0);
	cr_assert_eq(pk_yamux_consumed(cli.s, id, si.unconsumed), 0);
	cli.auto_consume = 1;
	pump();
	for (;;) {
		n = pk_yamux_send(srv.s, id, payload + sent, total - sent);
		cr_assert_geq(n, 0);
		sent += (size_t)n;
		if (sent == total)
			break;
		cr_assert_eq(pump(), 0);
		cr_assert_eq(pk_yamux_stream_info(srv.s, id, &si), 0);
		cr_assert_gt(si.send_window, 0);
	}
	pump();
	cr_assert_eq(rx_of(&cli, id)->len, total);
	cr_assert_arr_eq(rx_of(&cli, id)->p, payload, total);
	free(payload);
}

Test(stream, window_update_not_sent_after_peer_fin)
{
	uint32_t id;
	size_t before;

	cli.auto_consume = 0;
	pk_yamux_open(srv.s, 0, NULL, &id);
	uint8_t *big = calloc(1, PK_YAMUX_INITIAL_WINDOW);
	cr_assert_eq(pk_yamux_send(srv.s, id, big, PK_YAMUX_INITIAL_WINDOW),
	             PK_YAMUX_INITIAL_WINDOW);
	pk_yamux_close(srv.s, id);
	pump();
	before = cli.wire.len;
	cr_assert_eq(pk_yamux_consumed(cli.s, id, PK_YAMUX_INITIAL_WINDOW), 0);
	cr_assert_eq(cli.wire.len, before);
	free(big);
}

Test(stream, consumed_more_than_delivered_is_einval)
{
	uint32_t id;

	cli.auto_consume = 0;
	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "abc", 3);
	pump();
	cr_assert_eq(pk_yamux_consumed(cli.s, id, 4), -EINVAL);
	cr_assert_eq(pk_yamux_consumed(cli.s, id, 3), 0);
}

Test(stream, half_close_opener_first)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	cr_assert_eq(pk_yamux_close(srv.s, id), 0);
	cr_assert_eq(pk_yamux_send(srv.s, id, "x", 1), -EPIPE);
	pump();
	cr_assert_eq(count_ev(&cli, EV_FIN, id), 1);
	/* The other direction still works. */
	cr_assert_eq(pk_yamux_send(cli.s, id, "reply", 5), 5);
	pump();
	cr_assert_eq(rx_of(&srv, id)->len, 5);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 0);
	cr_assert_eq(pk_yamux_close(cli.s, id), 0);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	pump();
	cr_assert_eq(count_ev(&srv, EV_FIN, id), 1);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
	cr_assert_eq(pk_yamux_stream_count(srv.s), 0);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
}

Test(stream, half_close_acceptor_first)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	cr_assert_eq(pk_yamux_close(cli.s, id), 0);
	pump();
	cr_assert_eq(count_ev(&srv, EV_FIN, id), 1);
	cr_assert_eq(pk_yamux_send(srv.s, id, "more", 4), 4);
	pump();
	cr_assert_eq(rx_of(&cli, id)->len, 4);
	pk_yamux_close(srv.s, id);
	pump();
	cr_assert_eq(pk_yamux_stream_count(srv.s), 0);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
}

Test(stream, close_is_idempotent)
{
	uint32_t id;
	size_t before;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_close(srv.s, id);
	before = srv.wire.len;
	cr_assert_eq(pk_yamux_close(srv.s, id), 0);
	cr_assert_eq(srv.wire.len, before);
}

Test(stream, data_with_fin_delivers_then_fins)
{
	struct buf in = {0};
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	put_hdr(&in, PK_YAMUX_DATA, PK_YAMUX_FIN, id, 3);
	buf_add(&in, "end", 3);
	cr_assert_eq(pk_yamux_feed(srv.s, in.p, in.len), (ssize_t)in.len);
	cr_assert_eq(srv.evs[srv.nev - 2].type, EV_DATA);
	cr_assert_eq(srv.evs[srv.nev - 1].type, EV_FIN);
	buf_free(&in);
}

Test(stream, reset_by_opener)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	cr_assert_eq(pk_yamux_reset(srv.s, id), 0);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 0);
	cr_assert_eq(pk_yamux_send(srv.s, id, "x", 1), -ENOENT);
	pump();
	cr_assert_eq(count_ev(&cli, EV_RST, id), 1);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	cr_assert_eq(pk_yamux_send(cli.s, id, "x", 1), -ENOENT);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
}

Test(stream, reject_resets_and_early_data_is_discarded)
{
	uint32_t id;

	cli.accept_answer = PK_YAMUX_REJECT;
	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "request", 7);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&cli, EV_STREAM, id), 1);
	cr_assert_eq(count_ev(&cli, EV_DATA, 0), 0);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	cr_assert_eq(last_ev(&cli, EV_FREE)->val, 1);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 1);
	cr_assert_eq(count_ev(&srv, EV_ACK, id), 0);
	cr_assert_eq(pk_yamux_error(cli.s), 0);
	cr_assert_eq(pk_yamux_oldest_unacked(srv.s, NULL, NULL), 0);
}

Test(stream, frames_for_recently_closed_stream_are_ignored)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	pk_yamux_reset(cli.s, id);
	/* In flight before the RST reaches the opener. */
	pk_yamux_send(srv.s, id, "late", 4);
	pk_yamux_close(srv.s, id);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(pk_yamux_error(cli.s), 0);
	cr_assert_eq(count_ev(&cli, EV_DATA, id), 0);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 1);
}

Test(stream, deferred_accept_and_backlog)
{
	struct pk_yamux_options o;
	struct pk_yamux_stream_info si;
	uint32_t a, b, c;

	pk_yamux_options_init(&o);
	o.accept_backlog = 2;
	pair_reinit(NULL, &o);
	cli.accept_answer = PK_YAMUX_DEFER;
	pk_yamux_open(srv.s, 0, NULL, &a);
	pk_yamux_open(srv.s, 0, NULL, &b);
	pk_yamux_open(srv.s, 0, NULL, &c);
	pump();
	cr_assert_eq(count_ev(&cli, EV_STREAM, 0), 2); /* the third never reached on_stream */
	cr_assert_eq(count_ev(&srv, EV_RST, c), 1);
	cr_assert_eq(count_ev(&srv, EV_ACK, 0), 0);
	cr_assert_eq(pk_yamux_stream_info(cli.s, a, &si), 0);
	cr_assert(si.state & PK_YAMUX_ST_DEFERRED);
	cr_assert_eq(pk_yamux_accept(cli.s, a), 0);
	cr_assert_eq(pk_yamux_accept(cli.s, a), -EINVAL);
	pump();
	cr_assert_eq(count_ev(&srv, EV_ACK, a), 1);
	/* One backlog slot is free again. */
	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &c), 0);
	pump();
	cr_assert_eq(count_ev(&cli, EV_STREAM, c), 1);
	cr_assert_eq(count_ev(&srv, EV_RST, c), 0);
	/* Sending on a deferred stream accepts it (the data carries the ACK). */
	cr_assert_eq(pk_yamux_send(cli.s, b, "x", 1), 1);
	cr_assert_eq(cli.wire.p[cli.wire.len - 13 + 3], PK_YAMUX_ACK);
	pump();
	cr_assert_eq(count_ev(&srv, EV_ACK, b), 1);
}

/* A client with a 1 MiB window (the agent's default) answering on_stream lazily. */
static void lazy_client(void)
{
	struct pk_yamux_options o;

	pk_yamux_options_init(&o);
	o.max_window = 1024 * 1024;
	o.accept_backlog = 1;
	pair_reinit(NULL, &o);
	cli.accept_answer = PK_YAMUX_ACCEPT_LAZY;
}

Test(stream, lazy_accept_ack_rides_on_the_first_data)
{
	struct pk_yamux_stream_info si;
	uint32_t a, b;
	size_t before;

	lazy_client();
	/* Two at once: lazy streams are not in the backlog (1). */
	pk_yamux_open(srv.s, 0, NULL, &a);
	pk_yamux_open(srv.s, 0, NULL, &b);
	cr_assert_eq(pk_yamux_send(srv.s, a, "GET / HTTP/1.1\r\n\r\n", 18), 18);
	pump();
	cr_assert_eq(count_ev(&cli, EV_STREAM, 0), 2);
	cr_assert_eq(rx_of(&cli, a)->len, 18);
	/* Consumed (auto_consume), yet nothing went back: no ACK, no window update. */
	cr_assert_eq(cli.wire.len, 0);
	cr_assert_eq(pk_yamux_stream_info(cli.s, a, &si), 0);
	cr_assert(si.state & PK_YAMUX_ST_ACK_LAZY);
	cr_assert(!(si.state & PK_YAMUX_ST_DEFERRED));
	/* The answer's first Data frame is the ACK. */
	cr_assert_eq(pk_yamux_send(cli.s, a, "HTTP/1.1 200", 12), 12);
	cr_assert_eq(cli.wire.len, 24);
	cr_assert_eq(cli.wire.p[1], PK_YAMUX_DATA);
	cr_assert_eq(cli.wire.p[3], PK_YAMUX_ACK);
	pump();
	cr_assert_eq(count_ev(&srv, EV_ACK, a), 1);
	cr_assert_eq(pk_yamux_accept(cli.s, a), -EINVAL);
	/* The other is ACKed alone when asked, with the window above 256 KiB granted. */
	before = cli.wire.len;
	cr_assert_eq(pk_yamux_accept(cli.s, b), 0);
	cr_assert_eq(cli.wire.len, before + 12);
	cr_assert_eq(cli.wire.p[before + 3], PK_YAMUX_ACK);
	cr_assert_eq(get_be(cli.wire.p + before + 8), 768 * 1024);
	pump();
	cr_assert_eq(count_ev(&srv, EV_ACK, b), 1);
	cr_assert_eq(pk_yamux_stream_info(srv.s, b, &si), 0);
	cr_assert_eq(si.send_window, 1024 * 1024);
}

Test(stream, lazy_accept_opens_the_window_at_half_of_initial)
{
	static uint8_t body[128 * 1024];
	struct pk_yamux_stream_info si;
	uint32_t a;

	lazy_client();
	pk_yamux_open(srv.s, 0, NULL, &a);
	cr_assert_eq(pk_yamux_send(srv.s, a, body, sizeof(body) - 1), (ssize_t)sizeof(body) - 1);
	pump();
	cr_assert_eq(cli.wire.len, 0); /* one byte short of half of 256 KiB */
	cr_assert_eq(pk_yamux_send(srv.s, a, body, 1), 1);
	pump();
	/* WindowUpdate(ACK): the consumed 128 KiB back plus the 768 KiB above initial. */
	cr_assert_eq(cli.wire.len, 12);
	cr_assert_eq(cli.wire.p[1], PK_YAMUX_WINDOW_UPDATE);
	cr_assert_eq(cli.wire.p[3], PK_YAMUX_ACK);
	cr_assert_eq(get_be(cli.wire.p + 8), 768 * 1024 + sizeof(body));
	cr_assert_eq(count_ev(&srv, EV_ACK, a), 1);
	cr_assert_eq(pk_yamux_stream_info(srv.s, a, &si), 0);
	cr_assert_eq(si.send_window, 1024 * 1024);
}

Test(stream, lazy_accept_ack_rides_on_fin)
{
	uint32_t a;

	lazy_client();
	pk_yamux_open(srv.s, 0, NULL, &a);
	pump();
	cr_assert_eq(cli.wire.len, 0);
	cr_assert_eq(pk_yamux_close(cli.s, a), 0);
	cr_assert_eq(cli.wire.len, 12);
	cr_assert_eq(cli.wire.p[3], PK_YAMUX_ACK | PK_YAMUX_FIN);
	pump();
	cr_assert_eq(count_ev(&srv, EV_ACK, a), 1);
	cr_assert_eq(count_ev(&srv, EV_FIN, a), 1);
}

Test(stream, max_streams_refuses_open_and_rsts_syn)
{
	struct pk_yamux_options o;
	uint32_t id;

	pk_yamux_options_init(&o);
	o.max_streams = 2;
	o.accept_backlog = 2;
	pair_reinit(NULL, &o);
	cr_assert_eq(pk_yamux_open(cli.s, 0, NULL, &id), 0);
	cr_assert_eq(pk_yamux_open(cli.s, 0, NULL, &id), 0);
	cr_assert_eq(pk_yamux_open(cli.s, 0, NULL, &id), -ENOSPC);
	pump();
	/* A SYN towards the full table is reset, not a protocol error. */
	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &id), 0);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&cli, EV_STREAM, id), 0);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 1);
	/* Room again after a stream ends. */
	pk_yamux_reset(cli.s, 1);
	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &id), 0);
	pump();
	cr_assert_eq(count_ev(&cli, EV_STREAM, id), 1);
}

Test(stream, unacked_since_uses_the_clock)
{
	uint32_t a, b, id = 0;
	uint64_t since = 0;

	cli.accept_answer = PK_YAMUX_DEFER;
	fake_now = 5000;
	pk_yamux_open(srv.s, 0, NULL, &a);
	fake_now = 6000;
	pk_yamux_open(srv.s, 0, NULL, &b);
	pump();
	cr_assert_eq(pk_yamux_oldest_unacked(srv.s, &id, &since), 1);
	cr_assert_eq(id, a);
	cr_assert_eq(since, 5000);
	pk_yamux_accept(cli.s, a);
	pump();
	cr_assert_eq(pk_yamux_oldest_unacked(srv.s, &id, &since), 1);
	cr_assert_eq(id, b);
	cr_assert_eq(since, 6000);
	pk_yamux_accept(cli.s, b);
	pump();
	cr_assert_eq(pk_yamux_oldest_unacked(srv.s, &id, &since), 0);
}

Test(stream, lazy_stream_reset_sends_nothing)
{
	uint32_t id;

	pk_yamux_open(srv.s, PK_YAMUX_OPEN_LAZY, NULL, &id);
	cr_assert_eq(pk_yamux_reset(srv.s, id), 0);
	cr_assert_eq(srv.wire.len, 0);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
}

Test(stream, thousand_concurrent_streams)
{
	enum { N = 1000 };
	uint32_t ids[N];
	char msg[32];
	int i, len;

	for (i = 0; i < N; i++)
		cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &ids[i]), 0);
	for (i = 0; i < N; i++) {
		len = snprintf(msg, sizeof(msg), "request %d", i);
		cr_assert_eq(pk_yamux_send(srv.s, ids[i], msg, (size_t)len), len);
	}
	cr_assert_eq(pump(), 0);
	cr_assert_eq(pk_yamux_stream_count(cli.s), N);
	for (i = N - 1; i >= 0; i--) {
		struct buf *b = rx_of(&cli, ids[i]);

		len = snprintf(msg, sizeof(msg), "request %d", i);
		cr_assert_eq(b->len, (size_t)len);
		cr_assert_arr_eq(b->p, msg, (size_t)len);
		len = snprintf(msg, sizeof(msg), "response %d", i);
		cr_assert_eq(pk_yamux_send(cli.s, ids[i], msg, (size_t)len), len);
		cr_assert_eq(pk_yamux_close(cli.s, ids[i]), 0);
	}
	cr_assert_eq(pump(), 0);
	for (i = 0; i < N; i++) {
		struct buf *b = rx_of(&srv, ids[i]);

		len = snprintf(msg, sizeof(msg), "response %d", i);
		cr_assert_eq(b->len, (size_t)len);
		cr_assert_arr_eq(b->p, msg, (size_t)len);
		cr_assert_eq(pk_yamux_close(srv.s, ids[i]), 0);
	}
	cr_assert_eq(pump(), 0);
	cr_assert_eq(pk_yamux_stream_count(srv.s), 0);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
	cr_assert_eq(count_ev(&srv, EV_FREE, 0), N);
	cr_assert_eq(count_ev(&cli, EV_FREE, 0), N);
}

Test(stream, out_of_order_syns_are_accepted)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 5, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 3, 0);
	cr_assert_eq(pk_yamux_feed(srv.s, in.p, in.len), (ssize_t)in.len);
	cr_assert_eq(count_ev(&srv, EV_STREAM, 0), 3);
	buf_free(&in);
}

Test(stream, free_calls_on_free_for_live_streams)
{
	uint32_t id;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pump();
	pk_yamux_free(cli.s);
	cli.s = NULL;
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
}

Test(stream, write_failure_kills_session)
{
	uint32_t id;

	srv.write_fail = -ENOBUFS;
	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &id), -ENOBUFS);
	cr_assert_eq(pk_yamux_error(srv.s), -ENOBUFS);
	cr_assert_eq(pk_yamux_ping(srv.s, 1), -EPIPE);
	cr_assert_eq(pk_yamux_feed(srv.s, "", 0), -EPIPE);
}

/* ============================ session ============================ */

TestSuite(session, .init = pair_setup, .fini = pair_teardown);

Test(session, ping_from_server)
{
	uint64_t oldest = 0;

	fake_now = 10000;
	cr_assert_eq(pk_yamux_ping(srv.s, 7), 0);
	cr_assert_eq(pk_yamux_ping(srv.s, 7), -EEXIST);
	cr_assert_eq(pk_yamux_ping_outstanding(srv.s, &oldest), 1);
	cr_assert_eq(oldest, 10000);
	fake_now = 10025;
	pump();
	cr_assert_eq(pk_yamux_ping_outstanding(srv.s, NULL), 0);
	cr_assert_eq(count_ev(&srv, EV_PING_ACK, 7), 1);
	cr_assert_eq(last_ev(&srv, EV_PING_ACK)->val, 25);
	cr_assert_eq(count_ev(&cli, EV_PING_ACK, 0), 0);
}

Test(session, ping_from_client)
{
	cr_assert_eq(pk_yamux_ping(cli.s, 0xfffffffe), 0);
	pump();
	cr_assert_eq(count_ev(&cli, EV_PING_ACK, 0xfffffffe), 1);
	cr_assert_eq(count_ev(&srv, EV_PING_ACK, 0), 0);
}

Test(session, unanswered_ping_stays_outstanding)
{
	uint64_t oldest = 0;
	int i;

	fake_now = 300;
	for (i = 0; i < PK_YAMUX_MAX_PINGS; i++)
		cr_assert_eq(pk_yamux_ping(srv.s, (uint32_t)i), 0);
	cr_assert_eq(pk_yamux_ping(srv.s, 99), -EBUSY);
	cr_assert_eq(pk_yamux_ping_outstanding(srv.s, &oldest), PK_YAMUX_MAX_PINGS);
	cr_assert_eq(oldest, 300);
}

Test(session, unsolicited_ping_ack_is_ignored)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_PING, PK_YAMUX_ACK, 0, 1234);
	cr_assert_eq(pk_yamux_feed(srv.s, in.p, in.len), 12);
	cr_assert_eq(srv.nev, 0);
	cr_assert_eq(srv.wire.len, 0);
	buf_free(&in);
}

Test(session, goaway_normal_refuses_new_opens)
{
	uint32_t id, old;

	pk_yamux_open(srv.s, 0, NULL, &old);
	pump();
	cr_assert_eq(pk_yamux_goaway(cli.s, 0), 0);
	pump();
	cr_assert_eq(count_ev(&srv, EV_GOAWAY, 0), 1);
	cr_assert_eq(last_ev(&srv, EV_GOAWAY)->val, 0);
	cr_assert(pk_yamux_remote_goaway(srv.s));
	cr_assert_eq(pk_yamux_open(srv.s, 0, NULL, &id), -ECONNREFUSED);
	/* Existing streams carry on. */
	cr_assert_eq(pk_yamux_send(srv.s, old, "still", 5), 5);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(rx_of(&cli, old)->len, 5);
}

Test(session, syn_after_local_goaway_is_reset)
{
	struct buf in = {0};

	pk_yamux_goaway(srv.s, 0);
	srv.wire.len = 0;
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	cr_assert_eq(pk_yamux_feed(srv.s, in.p, in.len), 12);
	cr_assert_eq(count_ev(&srv, EV_STREAM, 0), 0);
	cr_assert_eq(srv.wire.len, 12);
	cr_assert_eq(srv.wire.p[3], PK_YAMUX_RST);
	cr_assert_eq(get_be(srv.wire.p + 4), 1);
	buf_free(&in);
}

Test(session, goaway_error_code_ends_session)
{
	cr_assert_eq(pk_yamux_goaway(cli.s, PK_YAMUX_GOAWAY_INTERNAL_ERROR), 0);
	cr_assert_eq(pk_yamux_error(cli.s), -ECONNABORTED);
	cr_assert_eq(pump(), -ECONNRESET);
	cr_assert_eq(last_ev(&srv, EV_GOAWAY)->val, 2);
	cr_assert_eq(pk_yamux_error(srv.s), -ECONNRESET);
	cr_assert_eq(count_ev(&srv, EV_ERROR, 0), 0);
}

/* ============================ protocol violations ============================ */

static struct peer one;

static void one_server(void)
{
	fake_now = 0;
	peer_init(&one, "server", PK_YAMUX_SERVER, NULL);
}

static void one_fini(void)
{
	peer_fini(&one);
}

TestSuite(violation, .init = one_server, .fini = one_fini);

/* Feeds `in`; asserts the session died with exactly one GoAway(1) as its last frame. */
static void expect_violation(struct peer *p, struct buf *in)
{
	size_t before = p->wire.len;
	ssize_t r = pk_yamux_feed(p->s, in->p, in->len);

	cr_assert_eq(r, -EPROTO, "feed returned %zd", r);
	cr_assert_geq(p->wire.len, before + 12);
	cr_assert_arr_eq(p->wire.p + p->wire.len - 12, goaway_proto, 12);
	cr_assert_eq(count_ev(p, EV_ERROR, 0), 1);
	cr_assert_eq(p->last_error, -EPROTO);
	cr_assert_not_null(p->last_reason);
	cr_assert_eq(pk_yamux_error(p->s), -EPROTO);
	cr_assert_eq(pk_yamux_feed(p->s, in->p, in->len), -EPIPE);
	cr_assert_eq(count_ev(p, EV_ERROR, 0), 1);
	buf_free(in);
}

Test(violation, bad_version)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_PING, PK_YAMUX_SYN, 0, 1);
	in.p[0] = 1;
	expect_violation(&one, &in);
	cr_assert_eq(one.wire.len, 12); /* no ping answer */
}

Test(violation, unknown_type)
{
	struct buf in = {0};

	put_hdr(&in, 4, 0, 0, 0);
	expect_violation(&one, &in);
}

Test(violation, data_on_stream_zero)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_DATA, 0, 0, 1);
	buf_add(&in, "x", 1);
	expect_violation(&one, &in);
}

Test(violation, syn_on_stream_zero)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 0, 0);
	expect_violation(&one, &in);
}

Test(violation, ping_on_a_stream)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_PING, PK_YAMUX_SYN, 3, 1);
	expect_violation(&one, &in);
}

Test(violation, goaway_on_a_stream)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_GOAWAY, 0, 1, 0);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_GOAWAY, 0), 0);
}

Test(violation, syn_with_server_parity_to_server)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 2, 0);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_STREAM, 0), 0);
}

Test(violation, syn_with_client_parity_to_client)
{
	struct peer c;
	struct buf in = {0};

	peer_init(&c, "client", PK_YAMUX_CLIENT, NULL);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	expect_violation(&c, &in);
	peer_fini(&c);
}

Test(violation, syn_on_live_stream)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_DATA, PK_YAMUX_SYN, 1, 0);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_STREAM, 1), 1);
}

Test(violation, syn_reuses_closed_id)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_STREAM, 1), 1);
	cr_assert_eq(count_ev(&one, EV_RST, 1), 1);
}

Test(violation, syn_far_below_highest_id)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1 + 2 * 5000, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	expect_violation(&one, &in);
}

Test(violation, data_beyond_receive_window)
{
	struct buf in = {0};

	one.auto_consume = 0;
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_DATA, 0, 1, PK_YAMUX_INITIAL_WINDOW - 10);
	{
		uint8_t *z = calloc(1, PK_YAMUX_INITIAL_WINDOW);
		buf_add(&in, z, PK_YAMUX_INITIAL_WINDOW - 10);
		free(z);
	}
	put_hdr(&in, PK_YAMUX_DATA, 0, 1, 11);
	buf_add(&in, "01234567890", 11);
	expect_violation(&one, &in);
	cr_assert_eq(rx_of(&one, 1)->len, PK_YAMUX_INITIAL_WINDOW - 10);
}

Test(violation, data_beyond_window_on_syn)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_DATA, PK_YAMUX_SYN, 1, PK_YAMUX_INITIAL_WINDOW + 1);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_STREAM, 0), 0);
}

Test(violation, data_after_fin)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN | PK_YAMUX_FIN, 1, 0);
	put_hdr(&in, PK_YAMUX_DATA, 0, 1, 1);
	buf_add(&in, "x", 1);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_FIN, 1), 1);
	cr_assert_eq(count_ev(&one, EV_DATA, 0), 0);
}

Test(violation, second_fin)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_FIN, 1, 0);
	put_hdr(&in, PK_YAMUX_DATA, PK_YAMUX_FIN, 1, 0);
	expect_violation(&one, &in);
}

Test(violation, send_window_overflow)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, 0, 1, UINT32_MAX - PK_YAMUX_INITIAL_WINDOW + 1);
	expect_violation(&one, &in);
}

Test(violation, data_for_peer_id_never_opened)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_DATA, 0, 7, 1);
	buf_add(&in, "x", 1);
	expect_violation(&one, &in);
}

Test(violation, window_update_for_own_id_never_opened)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_ACK, 2, 0);
	expect_violation(&one, &in);
}

Test(violation, frame_for_lazy_stream_not_announced)
{
	struct buf in = {0};
	uint32_t id;

	cr_assert_eq(pk_yamux_open(one.s, PK_YAMUX_OPEN_LAZY, NULL, &id), 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_ACK, id, 0);
	expect_violation(&one, &in);
	cr_assert_eq(count_ev(&one, EV_ACK, 0), 0);
}

Test(violation, frames_before_the_violation_are_processed)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_DATA, PK_YAMUX_SYN, 1, 3);
	buf_add(&in, "abc", 3);
	put_hdr(&in, 9, 0, 0, 0);
	put_hdr(&in, PK_YAMUX_PING, PK_YAMUX_SYN, 0, 5);
	expect_violation(&one, &in);
	cr_assert_eq(rx_of(&one, 1)->len, 3);
	/* ACK of stream 1, then GoAway; the ping after the bad frame is not answered. */
	cr_assert_eq(one.wire.len, 24);
}

Test(violation, stale_frames_for_freed_stream_are_not_errors)
{
	struct buf in = {0};

	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_SYN, 1, 0);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, 1, 0);
	put_hdr(&in, PK_YAMUX_DATA, 0, 1, 4);
	buf_add(&in, "late", 4);
	put_hdr(&in, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_FIN, 1, 0);
	cr_assert_eq(pk_yamux_feed(one.s, in.p, in.len), (ssize_t)in.len);
	cr_assert_eq(pk_yamux_error(one.s), 0);
	cr_assert_eq(count_ev(&one, EV_DATA, 0), 0);
	buf_free(&in);
}

/* ============================ split input ============================ */

/* A client transcript exercising every frame kind, built by a real client session. */
static void build_transcript(struct buf *t)
{
	struct peer c;
	uint32_t a, b, z;
	static uint8_t blob[3000];
	size_t i;

	for (i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)(i * 31 + 5);
	peer_init(&c, "client", PK_YAMUX_CLIENT, NULL);
	cr_assert_eq(pk_yamux_open(c.s, 0, NULL, &a), 0);
	cr_assert_eq(pk_yamux_send(c.s, a, "hello", 5), 5);
	cr_assert_eq(pk_yamux_open(c.s, PK_YAMUX_OPEN_LAZY, NULL, &b), 0);
	cr_assert_eq(pk_yamux_send(c.s, b, blob, sizeof(blob)), sizeof(blob));
	cr_assert_eq(pk_yamux_ping(c.s, 9), 0);
	cr_assert_eq(pk_yamux_send(c.s, a, blob, 700), 700);
	cr_assert_eq(pk_yamux_open(c.s, 0, NULL, &z), 0);
	cr_assert_eq(pk_yamux_reset(c.s, z), 0);
	cr_assert_eq(pk_yamux_close(c.s, a), 0);
	cr_assert_eq(pk_yamux_send(c.s, b, "tail", 4), 4);
	cr_assert_eq(pk_yamux_close(c.s, b), 0);
	*t = c.wire;
	memset(&c.wire, 0, sizeof(c.wire));
	/* Answer to the server's ping 77 (see run_cut), an empty Data frame, GoAway(0). */
	put_hdr(t, PK_YAMUX_PING, PK_YAMUX_ACK, 0, 77);
	put_hdr(t, PK_YAMUX_DATA, 0, b, 0);
	put_hdr(t, PK_YAMUX_GOAWAY, 0, 0, 0);
	peer_fini(&c);
}

struct outcome {
	struct ev evs[64]; /* non-data events in order */
	size_t nev;
	struct buf wire;
	struct buf rx1, rx3;
};

/* Feeds the transcript to a fresh server in pieces: cut == 0 means chunks of `chunk`
 * bytes, otherwise two feeds split at `cut`. */
static void run_cut(const struct buf *t, size_t cut, size_t chunk, struct outcome *o)
{
	struct peer p;
	size_t off = 0, i, n;

	peer_init(&p, "server", PK_YAMUX_SERVER, NULL);
	cr_assert_eq(pk_yamux_ping(p.s, 77), 0);
	while (off < t->len) {
		n = cut ? (off == 0 ? cut : t->len - cut) : chunk;
		if (n > t->len - off)
			n = t->len - off;
		cr_assert_eq(pk_yamux_feed(p.s, t->p + off, n), (ssize_t)n);
		off += n;
	}
	memset(o, 0, sizeof(*o));
	for (i = 0; i < p.nev; i++) {
		if (p.evs[i].type == EV_DATA)
			continue;
		cr_assert_lt(o->nev, 64);
		o->evs[o->nev] = p.evs[i];
		o->evs[o->nev].val = p.evs[i].type == EV_PING_ACK ? 0 : p.evs[i].val;
		o->nev++;
	}
	buf_add(&o->wire, p.wire.p, p.wire.len);
	buf_add(&o->rx1, rx_of(&p, 1)->p, rx_of(&p, 1)->len);
	buf_add(&o->rx3, rx_of(&p, 3)->p, rx_of(&p, 3)->len);
	peer_fini(&p);
}

static void outcome_free(struct outcome *o)
{
	buf_free(&o->wire);
	buf_free(&o->rx1);
	buf_free(&o->rx3);
}

static void assert_same(const struct outcome *a, const struct outcome *b, size_t cut)
{
	size_t i;

	cr_assert_eq(a->nev, b->nev, "cut %zu: %zu events vs %zu", cut, a->nev, b->nev);
	for (i = 0; i < a->nev; i++) {
		cr_assert_eq(a->evs[i].type, b->evs[i].type, "cut %zu event %zu", cut, i);
		cr_assert_eq(a->evs[i].id, b->evs[i].id, "cut %zu event %zu", cut, i);
		cr_assert_eq(a->evs[i].val, b->evs[i].val, "cut %zu event %zu", cut, i);
	}
	cr_assert_eq(a->wire.len, b->wire.len, "cut %zu", cut);
	cr_assert_arr_eq(a->wire.p, b->wire.p, a->wire.len, "cut %zu", cut);
	cr_assert_eq(a->rx1.len, b->rx1.len, "cut %zu", cut);
	cr_assert_arr_eq(a->rx1.p, b->rx1.p, a->rx1.len, "cut %zu", cut);
	cr_assert_eq(a->rx3.len, b->rx3.len, "cut %zu", cut);
	cr_assert_arr_eq(a->rx3.p, b->rx3.p, a->rx3.len, "cut %zu", cut);
}

Test(split, reference_outcome_is_what_the_client_did)
{
	struct buf t;
	struct outcome ref;

	build_transcript(&t);
	run_cut(&t, 0, t.len, &ref);
	/* streams 1 and 3 (5 was reset), both FIN'd: 1 STREAM/FIN each; ping answer; GoAway. */
	cr_assert_eq(ref.rx1.len, 705);
	cr_assert_eq(ref.rx3.len, 3004);
	cr_assert_arr_eq(ref.rx1.p, "hello", 5);
	cr_assert_arr_eq(ref.rx3.p + 3000, "tail", 4);
	cr_assert_eq(ref.evs[ref.nev - 1].type, EV_GOAWAY);
	outcome_free(&ref);
	buf_free(&t);
}

Test(split, every_two_piece_cut_gives_identical_events)
{
	struct buf t;
	struct outcome ref, o;
	size_t cut;

	build_transcript(&t);
	run_cut(&t, 0, t.len, &ref);
	for (cut = 1; cut < t.len; cut++) {
		run_cut(&t, cut, 0, &o);
		assert_same(&ref, &o, cut);
		outcome_free(&o);
	}
	outcome_free(&ref);
	buf_free(&t);
}

Test(split, byte_by_byte_gives_identical_events)
{
	struct buf t;
	struct outcome ref, o;
	size_t chunk;

	build_transcript(&t);
	run_cut(&t, 0, t.len, &ref);
	for (chunk = 1; chunk <= 13; chunk++) {
		run_cut(&t, 0, chunk, &o);
		assert_same(&ref, &o, chunk);
		outcome_free(&o);
	}
	outcome_free(&ref);
	buf_free(&t);
}

/* ============================ re-entrancy ============================ */

TestSuite(reentry, .init = pair_setup, .fini = pair_teardown);

static void hook_reset_on_data(struct peer *p, struct ev *e)
{
	if (e->type == EV_DATA)
		cr_assert_eq(pk_yamux_reset(p->s, e->id), 0);
}

Test(reentry, reset_from_on_data_mid_payload)
{
	uint32_t id;
	struct buf in;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "0123456789", 10);
	pk_yamux_ping(srv.s, 3);
	in = cli.inbox;
	memset(&cli.inbox, 0, sizeof(cli.inbox));
	cli.hook = hook_reset_on_data;
	/* SYN + data header + 4 payload bytes, then the rest. */
	cr_assert_eq(pk_yamux_feed(cli.s, in.p, 12 + 12 + 4), 28);
	cr_assert_eq(pk_yamux_feed(cli.s, in.p + 28, in.len - 28), (ssize_t)(in.len - 28));
	buf_free(&in);
	cr_assert_eq(count_ev(&cli, EV_DATA, id), 1);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
	cli.hook = NULL;
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&srv, EV_PING_ACK, 3), 1);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 1);
}

static void hook_close_on_fin(struct peer *p, struct ev *e)
{
	if (e->type == EV_FIN)
		cr_assert_eq(pk_yamux_close(p->s, e->id), 0);
}

Test(reentry, close_from_on_fin_frees_the_stream)
{
	uint32_t id;

	cli.hook = hook_close_on_fin;
	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "req", 3);
	pk_yamux_close(srv.s, id);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
	cr_assert_eq(pk_yamux_stream_count(cli.s), 0);
	cr_assert_eq(pk_yamux_stream_count(srv.s), 0);
}

static void hook_free_on_data(struct peer *p, struct ev *e)
{
	if (e->type == EV_DATA) {
		pk_yamux_free(p->s);
		p->s = NULL;
	}
}

Test(reentry, free_session_from_callback_is_deferred)
{
	uint32_t id;
	struct buf in;

	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "one", 3);
	pk_yamux_send(srv.s, id, "two", 3);
	in = cli.inbox;
	memset(&cli.inbox, 0, sizeof(cli.inbox));
	cli.hook = hook_free_on_data;
	struct pk_yamux_session *s = cli.s;
	cr_assert_eq(pk_yamux_feed(s, in.p, in.len), -EPIPE);
	buf_free(&in);
	cr_assert_null(cli.s);
	cr_assert_eq(count_ev(&cli, EV_DATA, id), 1); /* "two" was not interpreted */
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
}

static void hook_feed_on_stream(struct peer *p, struct ev *e)
{
	if (e->type == EV_STREAM)
		cr_assert_eq(pk_yamux_feed(p->s, "x", 1), -EBUSY);
}

Test(reentry, feed_from_callback_is_ebusy)
{
	uint32_t id;

	cli.hook = hook_feed_on_stream;
	pk_yamux_open(srv.s, 0, NULL, &id);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&cli, EV_STREAM, id), 1);
	cr_assert_eq(pk_yamux_error(cli.s), 0);
}

static void hook_send_on_stream(struct peer *p, struct ev *e)
{
	if (e->type == EV_STREAM)
		cr_assert_eq(pk_yamux_send(p->s, e->id, "hi", 2), 2);
}

Test(reentry, send_from_on_stream_carries_the_ack)
{
	uint32_t id;

	cli.hook = hook_send_on_stream;
	pk_yamux_open(srv.s, 0, NULL, &id);
	cr_assert_eq(pump(), 0);
	/* One Data frame with ACK, no separate WindowUpdate ACK. */
	cr_assert_eq(cli.wire.len, 14);
	cr_assert_eq(get_be(cli.wire.p), 0x00000002);
	cr_assert_eq(count_ev(&srv, EV_ACK, id), 1);
	cr_assert_eq(rx_of(&srv, id)->len, 2);
}

static void hook_reset_on_stream(struct peer *p, struct ev *e)
{
	if (e->type == EV_STREAM)
		cr_assert_eq(pk_yamux_reset(p->s, e->id), 0);
}

Test(reentry, reset_from_on_stream)
{
	uint32_t id;

	cli.hook = hook_reset_on_stream;
	pk_yamux_open(srv.s, 0, NULL, &id);
	pk_yamux_send(srv.s, id, "data", 4);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(cli.wire.len, 12);
	cr_assert_eq(cli.wire.p[3], PK_YAMUX_RST);
	cr_assert_eq(count_ev(&cli, EV_FREE, id), 1);
	cr_assert_eq(last_ev(&cli, EV_FREE)->val, 1); /* user set inside on_stream */
	cr_assert_eq(count_ev(&cli, EV_DATA, 0), 0);
	cr_assert_eq(count_ev(&srv, EV_RST, id), 1);
}

static void hook_reset_on_ack(struct peer *p, struct ev *e)
{
	if (e->type == EV_ACK)
		cr_assert_eq(pk_yamux_reset(p->s, e->id), 0);
}

Test(reentry, reset_from_on_ack_with_piggybacked_data)
{
	uint32_t id;

	srv.hook = hook_reset_on_ack;
	cli.hook = hook_send_on_stream;
	pk_yamux_open(srv.s, 0, NULL, &id);
	cr_assert_eq(pump(), 0);
	cr_assert_eq(count_ev(&srv, EV_DATA, 0), 0);
	cr_assert_eq(count_ev(&srv, EV_FREE, id), 1);
	cr_assert_eq(count_ev(&cli, EV_RST, id), 1);
	cr_assert_eq(pk_yamux_error(srv.s), 0);
}

static size_t window_sends;
static uint8_t window_blob[PK_YAMUX_INITIAL_WINDOW];

static void hook_send_on_window(struct peer *p, struct ev *e)
{
	ssize_t n;

	if (e->type != EV_WINDOW || window_sends >= 4 * sizeof(window_blob))
		return;
	n = pk_yamux_send(p->s, e->id, window_blob, sizeof(window_blob));
	cr_assert_gt(n, 0);
	window_sends += (size_t)n;
}

Test(reentry, send_from_on_window)
{
	uint32_t id;
	ssize_t n;

	srv.hook = hook_send_on_window;
	pk_yamux_open(srv.s, 0, NULL, &id);
	n = pk_yamux_send(srv.s, id, window_blob, sizeof(window_blob));
	cr_assert_eq(n, (ssize_t)sizeof(window_blob));
	window_sends = (size_t)n;
	cr_assert_eq(pump(), 0);
	cr_assert_geq(window_sends, 4 * sizeof(window_blob));
	cr_assert_eq(rx_of(&cli, id)->len, window_sends);
}
