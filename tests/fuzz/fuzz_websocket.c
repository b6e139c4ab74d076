/* Fuzzes the WebSocket frame decoder and encoder.
 *
 * Input: byte 0 = options (text allowed, size limits), byte 1 = seed for chunk sizes, the
 * rest = wire bytes.
 *  1. The wire bytes go into a server-role and a client-role decoder twice: in one piece and
 *     in seed-derived chunks. Both runs must report the same byte stream and the same events
 *     at the same stream offsets (the decoder must not care how input is split).
 *  2. The wire bytes are also used as a payload: encoded by each role as a fragmented binary
 *     message with a ping in between and a close frame after it, then decoded by the other
 *     role; the payload, ping and close must come back unchanged.
 * Any mismatch aborts so libFuzzer reports it. */
#include "proto/websocket.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__);          \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s << 13;
	r->s ^= r->s >> 7;
	r->s ^= r->s << 17;
	return r->s;
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

struct rec {
	int type;
	size_t at;
	uint16_t code;
	int err;
	size_t len;
	uint64_t hash;
};

struct log {
	uint8_t *stream;
	size_t len, cap;
	struct rec *ev;
	size_t nev, evcap;
	bool failed;
};

static void log_init(struct log *l, size_t cap)
{
	memset(l, 0, sizeof(*l));
	l->cap = cap;
	l->stream = malloc(cap ? cap : 1);
	l->evcap = cap / 2 + 4; /* each event needs a frame of >= 2 bytes, plus an error */
	l->ev = malloc(l->evcap * sizeof(*l->ev));
	CHECK(l->stream && l->ev);
}

static void log_free(struct log *l)
{
	free(l->stream);
	free(l->ev);
}

static void log_event(struct log *l, const struct pk_ws_event *ev)
{
	if (ev->type == PK_WS_EV_DATA) {
		CHECK(ev->len > 0 && l->len + ev->len <= l->cap);
		memcpy(l->stream + l->len, ev->data, ev->len);
		l->len += ev->len;
		return;
	}
	CHECK(l->nev < l->evcap);
	CHECK(ev->type == PK_WS_EV_ERROR || ev->len <= PK_WS_MAX_CONTROL);
	struct rec *r = &l->ev[l->nev++];
	r->type = ev->type;
	r->at = l->len;
	r->code = ev->code;
	r->err = ev->err;
	r->len = ev->type == PK_WS_EV_ERROR ? 0 : ev->len;
	r->hash = r->len ? fnv(14695981039346656037ull, ev->data, ev->len) : 0;
	if (ev->type == PK_WS_EV_ERROR) {
		CHECK(ev->code >= 1000 && ev->err < 0 && ev->reason != NULL);
		l->failed = true;
	}
}

static void feed(struct pk_ws *ws, uint8_t *buf, size_t len, struct log *l)
{
	size_t off = 0;

	while (!l->failed) {
		struct pk_ws_event ev;
		size_t n = pk_ws_feed(ws, buf + off, len - off, &ev);

		CHECK(n <= len - off);
		off += n;
		if (ev.type == PK_WS_EV_NONE) {
			CHECK(off == len);
			return;
		}
		log_event(l, &ev);
	}
}

static size_t chunk_size(struct rng *r)
{
	uint64_t x = rng_next(r);

	switch (x & 3) {
	case 0:
		return 1;
	case 1:
		return 1 + (x >> 8) % 16;
	case 2:
		return 1 + (x >> 8) % 200;
	default:
		return 1 + (x >> 8) % 5000;
	}
}

/* Feeds buf whole, or in chunks from r, into a fresh decoder. buf is consumed. */
static void run(enum pk_ws_role role, const struct pk_ws_opts *o, uint8_t *buf, size_t len,
                struct rng *r, struct log *l)
{
	struct pk_ws ws;

	pk_ws_init(&ws, role, o);
	log_init(l, len);
	if (r == NULL) {
		feed(&ws, buf, len, l);
		return;
	}
	size_t off = 0;
	while (off < len && !l->failed) {
		size_t n = chunk_size(r);
		if (n > len - off)
			n = len - off;
		feed(&ws, buf + off, n, l);
		off += n;
	}
	if (!l->failed)
		feed(&ws, buf + len, 0, l);
}

static void same(const struct log *a, const struct log *b)
{
	CHECK(a->failed == b->failed);
	CHECK(a->len == b->len);
	CHECK(a->len == 0 || memcmp(a->stream, b->stream, a->len) == 0);
	CHECK(a->nev == b->nev);
	for (size_t i = 0; i < a->nev; i++) {
		CHECK(a->ev[i].type == b->ev[i].type);
		CHECK(a->ev[i].at == b->ev[i].at);
		CHECK(a->ev[i].code == b->ev[i].code);
		CHECK(a->ev[i].err == b->ev[i].err);
		CHECK(a->ev[i].len == b->ev[i].len);
		CHECK(a->ev[i].hash == b->ev[i].hash);
	}
}

static void decode_both_ways(enum pk_ws_role role, const struct pk_ws_opts *o, const uint8_t *wire,
                             size_t len, uint64_t seed)
{
	uint8_t *a = malloc(len + 1), *b = malloc(len + 1);
	struct rng r = {seed | 1};
	struct log la, lb;

	CHECK(a && b);
	memcpy(a, wire, len);
	memcpy(b, wire, len);
	run(role, o, a, len, NULL, &la);
	run(role, o, b, len, &r, &lb);
	same(&la, &lb);
	log_free(&la);
	log_free(&lb);
	free(a);
	free(b);
}

/* Appends one frame to out; payload masked either while copying or in place in pieces. */
static size_t put_frame(struct pk_ws *tx, uint8_t *out, enum pk_ws_opcode op, bool fin,
                        const uint8_t *p, size_t n, struct rng *r)
{
	struct pk_ws_mask m;
	int h = pk_ws_header(tx, out, op, fin, n, &m);

	CHECK(h >= 2 && h <= PK_WS_MAX_HEADER);
	CHECK(m.on == (tx->role == PK_WS_CLIENT));
	if (rng_next(r) & 1) {
		pk_ws_mask_copy(&m, out + h, p, n);
		return (size_t)h + n;
	}
	if (n > 0)
		memcpy(out + h, p, n);
	for (size_t off = 0; off < n;) {
		size_t k = chunk_size(r);
		if (k > n - off)
			k = n - off;
		pk_ws_mask_inplace(&m, out + h + off, k);
		off += k;
	}
	return (size_t)h + n;
}

static size_t put_ping(struct pk_ws *tx, uint8_t *out, size_t size, const uint8_t *p, size_t n)
{
	int c = pk_ws_control(tx, out, size, PK_WS_OP_PING, p, n);

	CHECK(c > 0);
	return (size_t)c;
}

static void roundtrip(enum pk_ws_role sender, const uint8_t *payload, size_t len, uint64_t seed)
{
	struct rng r = {seed * 0x9e3779b97f4a7c15ull | 1};
	struct pk_ws tx;
	size_t frames = 1 + rng_next(&r) % 4;
	size_t cap = len + frames * PK_WS_MAX_HEADER + 2 * PK_WS_MAX_CONTROL_FRAME;
	uint8_t *wire = malloc(cap);
	size_t w = 0, off = 0, ping_len = len < 125 ? len : 125;
	struct log l;

	CHECK(wire != NULL);
	pk_ws_init(&tx, sender, NULL);
	for (size_t i = 0; i < frames; i++) {
		bool last = i + 1 == frames;
		size_t n = last ? len - off : (size_t)(rng_next(&r) % (len - off + 1));
		enum pk_ws_opcode op = i == 0 ? PK_WS_OP_BINARY : PK_WS_OP_CONT;

		/* The ping goes between the first two fragments, or first if there is one. */
		if (i == 0 && last)
			w += put_ping(&tx, wire + w, cap - w, payload, ping_len);
		w += put_frame(&tx, wire + w, op, last, payload + off, n, &r);
		off += n;
		if (i == 0 && !last)
			w += put_ping(&tx, wire + w, cap - w, payload, ping_len);
	}
	int c = pk_ws_close(&tx, wire + w, cap - w, 4000, "done", 4);
	CHECK(c > 0 && tx.close_sent);
	w += (size_t)c;
	CHECK(w <= cap);

	run(sender == PK_WS_CLIENT ? PK_WS_SERVER : PK_WS_CLIENT, NULL, wire, w, &r, &l);
	CHECK(!l.failed);
	CHECK(l.len == len);
	CHECK(len == 0 || memcmp(l.stream, payload, len) == 0);
	CHECK(l.nev == 3);
	CHECK(l.ev[0].type == PK_WS_EV_PING && l.ev[0].len == ping_len);
	CHECK(l.ev[0].hash == (ping_len ? fnv(14695981039346656037ull, payload, ping_len) : 0));
	CHECK(l.ev[1].type == PK_WS_EV_MESSAGE_END && l.ev[1].at == len);
	CHECK(l.ev[2].type == PK_WS_EV_CLOSE && l.ev[2].code == 4000 && l.ev[2].len == 4);
	log_free(&l);
	free(wire);
}

/* Splits the input at NULs into request header values. Whatever the server accepts must
 * pass the client's check of the 101 it would send; the request builder must never emit
 * a head that is not one well-formed head. */
static void handshake(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *f[6] = {0};
	char acc[PK_WS_ACCEPT_LEN + 1], head[1024];
	size_t nf = 0;

	CHECK(buf != NULL);
	memcpy(buf, data, size);
	buf[size] = '\0';
	for (char *p = buf; nf < 6 && p <= buf + size; p += strlen(p) + 1)
		f[nf++] = p;
	struct pk_ws_upgrade_req req = {f[0], f[1], f[2], f[3], f[4], f[5]};
	const char *why = NULL;
	int rc = pk_ws_server_check(&req, acc, &why);

	CHECK(rc == 0 || rc == -EINVAL || rc == -EPROTONOSUPPORT);
	CHECK(rc == 0 || why != NULL);
	if (rc == 0) {
		struct pk_ws_upgrade_resp resp = {101, "websocket", "Upgrade", acc, NULL, NULL};
		/* The client compares against the key it sent, which has no padding spaces. */
		char *key = f[4];

		while (*key == ' ' || *key == '\t')
			key++;
		key[PK_WS_KEY_LEN] = '\0';
		CHECK(pk_ws_client_check(key, &resp, NULL) == 0);
		CHECK(pk_ws_server_response(head, sizeof(head), acc) > 0);
	}
	int n = pk_ws_client_request(head, sizeof(head), f[0] ? f[0] : "/", f[1] ? f[1] : "h",
	                             "dGhlIHNhbXBsZSBub25jZQ==", f[2]);
	if (n > 0) {
		CHECK((size_t)n == strlen(head));
		char *end = strstr(head, "\r\n\r\n");
		CHECK(end != NULL && end + 4 == head + n);
	}
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pk_ws_opts o = {0};

	if (size < 2)
		return 0;
	o.allow_text = data[0] & 1;
	if (data[0] & 2)
		o.max_frame = (data[0] >> 4) * 16u;
	if (data[0] & 4)
		o.max_message = (data[0] >> 4) * 64u;
	uint64_t seed = data[1] + 1;
	data += 2;
	size -= 2;

	decode_both_ways(PK_WS_SERVER, &o, data, size, seed);
	decode_both_ways(PK_WS_CLIENT, &o, data, size, seed);
	roundtrip(PK_WS_CLIENT, data, size, seed);
	roundtrip(PK_WS_SERVER, data, size, seed);
	handshake(data, size);
	return 0;
}
