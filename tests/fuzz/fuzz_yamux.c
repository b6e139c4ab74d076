/* Fuzz target for proto/yamux: arbitrary peer bytes fed to a server-role session in
 * input-derived chunks, while the callbacks do random-ish things (accept/reject/defer,
 * consume, send, FIN, RST, open, ping, GoAway, even free the session). Checks: no crash, no
 * leak, on_free exactly once per stream (each stream owns a heap object freed there).
 *
 * Input layout: byte 0 seeds the decisions; the rest is the peer byte stream. Seeds in
 * tests/fuzz/corpus/yamux/ are 1 byte + a valid client transcript. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/yamux.h"

#define MAGIC 0x59414d58u

struct obj {
	uint32_t magic;
	uint32_t id;
};

struct fz {
	struct pk_yamux_session *s;
	uint32_t rng;
	uint32_t ids[32];
	unsigned nids;
	int freed;
	unsigned writes;
	long live_objs;
};

static uint8_t sendbuf[4096];

static uint32_t rnd(struct fz *f)
{
	f->rng ^= f->rng << 13;
	f->rng ^= f->rng >> 17;
	f->rng ^= f->rng << 5;
	return f->rng;
}

static struct obj *obj_new(struct fz *f, uint32_t id)
{
	struct obj *o = malloc(sizeof(*o));

	if (!o)
		abort();
	o->magic = MAGIC;
	o->id = id;
	f->live_objs++;
	return o;
}

static void remember(struct fz *f, uint32_t id)
{
	f->ids[f->nids++ % 32] = id;
}

static uint32_t some_id(struct fz *f)
{
	unsigned n = f->nids < 32 ? f->nids : 32;

	return n ? f->ids[rnd(f) % n] : rnd(f);
}

static void open_one(struct fz *f, unsigned flags)
{
	struct obj *o = obj_new(f, 0);
	uint32_t id;

	if (pk_yamux_open(f->s, flags, o, &id) == 0) {
		o->id = id;
		remember(f, id);
	} else {
		free(o);
		f->live_objs--;
	}
}

/* One random operation; the session may die or be freed by it. */
static void random_op(struct fz *f, uint32_t id)
{
	if (f->freed)
		return;
	switch (rnd(f) % 16) {
	case 0:
	case 1:
		(void)pk_yamux_send(f->s, id, sendbuf, rnd(f) % sizeof(sendbuf));
		break;
	case 2:
		(void)pk_yamux_close(f->s, id);
		break;
	case 3:
		(void)pk_yamux_reset(f->s, id);
		break;
	case 4:
		(void)pk_yamux_accept(f->s, id);
		break;
	case 5:
		open_one(f, rnd(f) & 1 ? PK_YAMUX_OPEN_LAZY : 0);
		break;
	case 6:
		(void)pk_yamux_ping(f->s, rnd(f) % 8);
		break;
	case 7:
		if (rnd(f) % 8 == 0)
			(void)pk_yamux_goaway(f->s, rnd(f) % 3);
		break;
	case 8:
		if (rnd(f) % 16 == 0) {
			pk_yamux_free(f->s);
			f->freed = 1;
		}
		break;
	default:
		break;
	}
}

static int fz_write(void *ud, const struct iovec *iov, int iovcnt)
{
	struct fz *f = ud;
	volatile uint8_t sink = 0;
	int i;

	/* Touch every byte so ASan checks the iovecs point at live memory. */
	for (i = 0; i < iovcnt; i++)
		for (size_t j = 0; j < iov[i].iov_len; j++)
			sink ^= ((const uint8_t *)iov[i].iov_base)[j];
	(void)sink;
	f->writes++;
	return rnd(f) % 512 == 0 ? -ENOBUFS : 0;
}

static int fz_stream(struct pk_yamux_session *s, void *ud, uint32_t id)
{
	struct fz *f = ud;
	uint32_t r = rnd(f) % 8;

	remember(f, id);
	if (pk_yamux_stream_set_user(s, id, obj_new(f, id)) != 0)
		abort();
	if (r == 0)
		return PK_YAMUX_REJECT;
	if (r == 1)
		random_op(f, id);
	return r < 4 ? PK_YAMUX_ACCEPT : r < 6 ? PK_YAMUX_ACCEPT_LAZY : PK_YAMUX_DEFER;
}

static void check(void *user, uint32_t id)
{
	struct obj *o = user;

	if (o && (o->magic != MAGIC || o->id != id))
		abort();
}

static void fz_data(struct pk_yamux_session *s, void *ud, uint32_t id, void *user,
                    const uint8_t *data, size_t len)
{
	struct fz *f = ud;
	volatile uint8_t sink = 0;
	struct pk_yamux_stream_info si;
	size_t i;

	check(user, id);
	for (i = 0; i < len; i++)
		sink ^= data[i];
	(void)sink;
	if (!f->freed && pk_yamux_stream_info(s, id, &si) == 0 && si.unconsumed)
		(void)pk_yamux_consumed(s, id, rnd(f) % (si.unconsumed + 1));
	if (rnd(f) % 4 == 0)
		random_op(f, id);
}

static void fz_fin(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct fz *f = ud;

	(void)s;
	check(user, id);
	if (rnd(f) % 2)
		random_op(f, id);
}

static void fz_rst(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	check(user, id);
	random_op(ud, id); /* the stream is gone: exercises -ENOENT paths */
}

static void fz_window(struct pk_yamux_session *s, void *ud, uint32_t id, void *user, uint32_t avail)
{
	(void)s;
	(void)avail;
	check(user, id);
	random_op(ud, id);
}

static void fz_ack(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	(void)s;
	check(user, id);
	random_op(ud, id);
}

static void fz_free(struct pk_yamux_session *s, void *ud, uint32_t id, void *user)
{
	struct fz *f = ud;

	(void)s;
	check(user, id);
	if (user) {
		((struct obj *)user)->magic = 0;
		free(user);
		f->live_objs--;
	}
}

static void fz_ping_ack(struct pk_yamux_session *s, void *ud, uint32_t pid, uint64_t rtt)
{
	(void)s;
	(void)pid;
	(void)rtt;
	random_op(ud, some_id(ud));
}

static void fz_goaway(struct pk_yamux_session *s, void *ud, uint32_t code)
{
	(void)s;
	(void)code;
	random_op(ud, some_id(ud));
}

static void fz_error(struct pk_yamux_session *s, void *ud, int err, const char *reason)
{
	(void)s;
	(void)ud;
	if (err != -EPROTO || !reason)
		abort();
}

static const struct pk_yamux_callbacks fz_cb = {
    .write = fz_write,
    .on_stream = fz_stream,
    .on_data = fz_data,
    .on_fin = fz_fin,
    .on_rst = fz_rst,
    .on_window = fz_window,
    .on_ack = fz_ack,
    .on_free = fz_free,
    .on_ping_ack = fz_ping_ack,
    .on_goaway = fz_goaway,
    .on_error = fz_error,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pk_yamux_options opt;
	struct fz f;
	size_t off = 1, n;
	ssize_t r;

	if (size < 1)
		return 0;
	memset(&f, 0, sizeof(f));
	f.rng = 0x9e3779b9u ^ (uint32_t)data[0] * 0x01000193u;
	pk_yamux_options_init(&opt);
	/* Small limits so the fuzzer reaches them. */
	opt.max_streams = 1 + data[0] % 48; /* > 32 live streams grows the hash table */
	opt.accept_backlog = opt.max_streams / 2;
	opt.initial_window = 1 + (data[0] & 0x80 ? 64 : PK_YAMUX_INITIAL_WINDOW - 1);
	opt.max_window = opt.initial_window * (1 + (data[0] >> 5 & 3));
	if (pk_yamux_new(&f.s, PK_YAMUX_SERVER, &opt, &fz_cb, &f) != 0)
		abort();
	/* Streams 2 (and 4) exist from the start, so inputs can ACK, FIN or RST them. */
	for (n = 0; n < 1 + (data[0] >> 6 & 1u); n++)
		open_one(&f, n & 1 ? PK_YAMUX_OPEN_LAZY : 0);
	while (off < size && !f.freed) {
		n = 1 + rnd(&f) % 97;
		if (n > size - off)
			n = size - off;
		r = pk_yamux_feed(f.s, data + off, n);
		if (r < 0) {
			if (!f.freed && pk_yamux_error(f.s) == 0)
				abort(); /* an error return means the session is dead */
			break;
		}
		if ((size_t)r != n)
			abort();
		off += n;
		if (rnd(&f) % 4 == 0)
			random_op(&f, some_id(&f));
	}
	if (!f.freed)
		pk_yamux_free(f.s);
	if (f.live_objs != 0)
		abort(); /* on_free missed or doubled */
	return 0;
}
