/* Fuzz target for proto/http1.
 *
 * Input: byte 0 = flags (bit 0 response, bit 1 response to HEAD, bit 2 small limits),
 * byte 1 = seed for the split points, the rest = the stream. The stream is parsed once
 * whole and once cut into pseudo-random pieces derived from the seed; both must agree.
 * Whatever parsed is then exercised: lookups, endpoint, the proxied head (which must
 * itself parse back to the same request), body framing and the next pipelined message.
 * The stream is also fed to the chunked framer directly, whole and split. An accepted
 * response head, which proto/http1 splits itself, must also be accepted by libhttp-parser
 * with the same header names and values. */
#include "proto/http1.h"

#include <errno.h>
#include <http_parser.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c))                                                                          \
			abort();                                                                   \
	} while (0)

struct rng {
	uint32_t s;
};

static size_t next_piece(struct rng *r, size_t left)
{
	r->s ^= r->s << 13;
	r->s ^= r->s >> 17;
	r->s ^= r->s << 5;
	size_t n = 1 + r->s % 64;
	if ((r->s >> 8) % 8 == 0)
		n = 1;
	return n < left ? n : left;
}

struct outcome {
	int r;
	size_t used;
	int status;
	const char *reason;
	size_t raw_len;
	unsigned n_headers;
	int body_kind, keep_alive, upgrade;
	uint64_t cl;
};

static void record(const struct pk_http1_parser *p, int r, size_t used, struct outcome *o)
{
	memset(o, 0, sizeof(*o));
	o->r = r;
	o->used = used;
	if (r < 0) {
		o->status = p->error_status;
		o->reason = p->error_reason;
		return;
	}
	pk_http1_raw_head(p, &o->raw_len);
	o->n_headers = p->n_headers;
	o->body_kind = p->body_kind;
	o->keep_alive = p->keep_alive;
	o->upgrade = p->upgrade;
	o->cl = p->content_length;
}

static int feed_pieces(struct pk_http1_parser *p, const uint8_t *d, size_t len, struct rng *rng,
                       size_t *used_total)
{
	size_t off = 0, u;
	int r = 0;

	*used_total = 0;
	while (r == 0 && off < len) {
		size_t n = next_piece(rng, len - off);
		r = pk_http1_parser_feed(p, d + off, n, &u);
		*used_total += u;
		off += n;
	}
	return r;
}

static void same(const struct outcome *a, const struct outcome *b)
{
	CHECK(a->r == b->r);
	CHECK(a->used == b->used);
	CHECK(a->status == b->status);
	CHECK(a->reason == b->reason);
	CHECK(a->raw_len == b->raw_len);
	CHECK(a->n_headers == b->n_headers);
	CHECK(a->body_kind == b->body_kind);
	CHECK(a->keep_alive == b->keep_alive);
	CHECK(a->upgrade == b->upgrade);
	CHECK(a->cl == b->cl);
}

static void exercise_lookups(const struct pk_http1_parser *p)
{
	const char *id;
	size_t n, raw_len;
	const char *raw = pk_http1_raw_head(p, &raw_len);

	CHECK(raw != NULL);
	for (unsigned i = 0; i < p->n_headers; i++) {
		const struct pk_http1_header *h = &p->headers[i];
		CHECK(h->name.off + h->name.len <= raw_len);
		CHECK(h->value.off + h->value.len <= raw_len);
	}
	(void)pk_http1_get(p, "host", &n);
	(void)pk_http1_count(p, "set-cookie");
	(void)pk_http1_has_token(p, "connection", "close");
	if (pk_http1_endpoint(p, &id, &n) == 1)
		CHECK(n > 0 && id >= raw && id + n <= raw + raw_len);
}

/* The proxied head of an accepted request parses back to the same request. */
static void exercise_proxy(const struct pk_http1_parser *p, struct rng *rng)
{
	static char out[2 * PK_HTTP1_MAX_HEAD_CAP];
	struct pk_http1_proxy_opts o = {.client_addr = (rng->s & 1) ? "192.0.2.1" : NULL,
	                                .https = (int)(rng->s >> 1) & 1,
	                                .keep_alive = (int)(rng->s >> 2) & 1};
	struct pk_http1_limits big = {PK_HTTP1_MAX_HEAD_CAP, PK_HTTP1_MAX_HEADERS_CAP};
	struct pk_http1_parser q;
	size_t raw_len, u;
	ssize_t n, small;

	pk_http1_raw_head(p, &raw_len);
	n = pk_http1_build_proxy_request(p, &o, out, sizeof(out));
	CHECK(n > 0);
	small = pk_http1_build_proxy_request(p, &o, out, (size_t)(rng->s % (size_t)n));
	CHECK(small == -ENOSPC);
	n = pk_http1_build_proxy_request(p, &o, out, sizeof(out));
	CHECK(pk_http1_parser_init(&q, PK_HTTP1_REQUEST, &big) == 0);
	CHECK(pk_http1_parser_feed(&q, out, (size_t)n, &u) == 1);
	CHECK(u == (size_t)n);
	CHECK(q.method.len == p->method.len &&
	      memcmp(pk_http1_ptr(&q, q.method), pk_http1_ptr(p, p->method), q.method.len) == 0);
	CHECK(q.target.len == p->target.len &&
	      memcmp(pk_http1_ptr(&q, q.target), pk_http1_ptr(p, p->target), q.target.len) == 0);
	CHECK(q.body_kind == p->body_kind);
	CHECK(q.content_length == p->content_length);
	CHECK(q.upgrade == p->upgrade);
	pk_http1_parser_free(&q);
}

/* Frames the body after the head, then parses what follows as the next message. */
static void exercise_pipeline(struct pk_http1_parser *p, const uint8_t *d, size_t len,
                              struct rng *rng)
{
	for (int msg = 0; msg < 8; msg++) {
		struct pk_http1_body b;
		size_t used;
		int r;

		pk_http1_body_init_from(&b, p);
		while (!b.done && len > 0) {
			size_t piece = next_piece(rng, len);
			ssize_t n = pk_http1_body_feed(&b, d, piece);
			if (n < 0)
				return;
			CHECK((size_t)n <= piece);
			CHECK(b.done || (size_t)n == piece);
			d += n;
			len -= (size_t)n;
		}
		if (!b.done || len == 0 || p->upgrade)
			return;
		pk_http1_parser_reset(p);
		r = feed_pieces(p, d, len, rng, &used);
		if (r != 1)
			return;
		exercise_lookups(p);
		d += used;
		len -= used;
	}
}

/* libhttp-parser's view of a head: its header spans, merged across callbacks. */
struct hp_view {
	const char *base;
	struct pk_http1_span names[PK_HTTP1_MAX_HEADERS_CAP], values[PK_HTTP1_MAX_HEADERS_CAP];
	unsigned n;
	int last; /* 1 field, 2 value, 3 headers complete */
};

static int hp_field(http_parser *hp, const char *at, size_t len)
{
	struct hp_view *v = hp->data;
	uint32_t off = (uint32_t)(at - v->base);

	if (v->last == 1) {
		v->names[v->n - 1].len += (uint32_t)len;
		return 0;
	}
	CHECK(v->n < PK_HTTP1_MAX_HEADERS_CAP);
	v->names[v->n] = (struct pk_http1_span){off, (uint32_t)len};
	v->values[v->n++] = (struct pk_http1_span){off + (uint32_t)len, 0};
	v->last = 1;
	return 0;
}

static int hp_value(http_parser *hp, const char *at, size_t len)
{
	struct hp_view *v = hp->data;

	CHECK(v->n > 0);
	if (v->last == 2)
		v->values[v->n - 1].len += (uint32_t)len;
	else
		v->values[v->n - 1] =
		    (struct pk_http1_span){(uint32_t)(at - v->base), (uint32_t)len};
	v->last = 2;
	return 0;
}

static int hp_done(http_parser *hp)
{
	((struct hp_view *)hp->data)->last = 3;
	return 0;
}

static int is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static void same_as_http_parser(const struct pk_http1_parser *p)
{
	static struct hp_view v;
	http_parser hp;
	http_parser_settings st;
	size_t raw_len;
	const char *raw = pk_http1_raw_head(p, &raw_len);

	memset(&v, 0, sizeof(v));
	v.base = raw;
	http_parser_settings_init(&st);
	st.on_header_field = hp_field;
	st.on_header_value = hp_value;
	st.on_headers_complete = hp_done;
	http_parser_init(&hp, HTTP_RESPONSE);
	hp.data = &v;
	http_parser_execute(&hp, &st, raw, raw_len);
	if (HTTP_PARSER_ERRNO(&hp) == HPE_INVALID_CONTENT_LENGTH) {
		/* The one known difference: libhttp-parser refuses a tab (OWS, RFC 9110 5.6.3)
		 * around the digits of Content-Length; we trim it like any value's. */
		int i = pk_http1_find_known(p, PK_H_CONTENT_LENGTH, 0);
		CHECK(i >= 0);
		const char *line = raw + p->headers[i].name.off;
		const char *cr = memchr(line, '\r', raw_len - p->headers[i].name.off);
		CHECK(cr != NULL && memchr(line, '\t', (size_t)(cr - line)) != NULL);
		return;
	}
	CHECK(HTTP_PARSER_ERRNO(&hp) == HPE_OK);
	CHECK(v.last == 3);
	CHECK(v.n == p->n_headers);
	for (unsigned i = 0; i < v.n; i++) {
		struct pk_http1_span *val = &v.values[i];
		while (val->len > 0 && is_ows(raw[val->off]))
			val->off++, val->len--;
		while (val->len > 0 && is_ows(raw[val->off + val->len - 1]))
			val->len--;
		CHECK(v.names[i].off == p->headers[i].name.off);
		CHECK(v.names[i].len == p->headers[i].name.len);
		CHECK(val->off == p->headers[i].value.off || val->len == 0);
		CHECK(val->len == p->headers[i].value.len);
	}
}

static void exercise_chunked(const uint8_t *d, size_t len, struct rng *rng)
{
	struct pk_http1_body whole, split;
	ssize_t a, total = 0;

	pk_http1_body_init(&whole, PK_HTTP1_BODY_CHUNKED, 0);
	a = pk_http1_body_feed(&whole, d, len);
	pk_http1_body_init(&split, PK_HTTP1_BODY_CHUNKED, 0);
	for (size_t off = 0; off < len && !split.done;) {
		size_t n = next_piece(rng, len - off);
		ssize_t r = pk_http1_body_feed(&split, d + off, n);
		if (r < 0) {
			total = r;
			break;
		}
		total += r;
		off += (size_t)r;
		if ((size_t)r < n)
			CHECK(split.done);
	}
	if (a < 0)
		CHECK(total < 0);
	else if (whole.done)
		CHECK(split.done && total == a);
	else
		CHECK(total == a && !split.done);
}

static void exercise_error(const uint8_t *d, size_t len)
{
	char msg[101], out[1024];
	size_t n = len < 100 ? len : 100;

	memcpy(msg, d, n);
	msg[n] = '\0';
	ssize_t r = pk_http1_build_error(out, sizeof(out), 400 + (unsigned)(n % 200), msg, n & 1);
	CHECK(r > 0 || r == -EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pk_http1_limits small = {256, 8};
	struct pk_http1_parser whole, split;
	struct outcome ow, os;
	struct rng rng;
	size_t used;
	int r;

	if (size < 2)
		return 0;
	enum pk_http1_type type = (data[0] & 1) ? PK_HTTP1_RESPONSE : PK_HTTP1_REQUEST;
	const struct pk_http1_limits *lim = (data[0] & 4) ? &small : NULL;
	rng.s = 0x9e3779b9u ^ ((uint32_t)data[1] << 8) ^ (uint32_t)size;
	const uint8_t *d = data + 2;
	size_t len = size - 2;

	CHECK(pk_http1_parser_init(&whole, type, lim) == 0);
	CHECK(pk_http1_parser_init(&split, type, lim) == 0);
	pk_http1_parser_response_to_head(&whole, data[0] & 2);
	pk_http1_parser_response_to_head(&split, data[0] & 2);

	r = pk_http1_parser_feed(&whole, d, len, &used);
	record(&whole, r, used, &ow);
	r = feed_pieces(&split, d, len, &rng, &used);
	record(&split, r, used, &os);
	if (r != -ENOMEM && ow.r != -ENOMEM)
		same(&ow, &os);

	if (r == 1) {
		exercise_lookups(&split);
		if (type == PK_HTTP1_REQUEST)
			exercise_proxy(&split, &rng);
		else
			same_as_http_parser(&split);
		exercise_pipeline(&split, d + used, len - used, &rng);
	}
	exercise_chunked(d, len, &rng);
	exercise_error(d, len);
	pk_http1_parser_free(&whole);
	pk_http1_parser_free(&split);
	return 0;
}
