/* yamux session state machine. See yamux.h for the contract.
 *
 * Rule that keeps re-entrancy safe: a stream pointer is never used after a callback has
 * run; the stream is looked up again by id (ids are never reused within a session, so a
 * lookup finds the same stream or nothing). State is changed before a callback is called.
 */
#include "proto/yamux.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Internal stream flags: the public PK_YAMUX_ST_* bits. */
#define F_LOCAL       PK_YAMUX_ST_LOCAL
#define F_SYN_PENDING PK_YAMUX_ST_SYN_PENDING
#define F_WAIT_ACK    PK_YAMUX_ST_WAIT_ACK
#define F_ACK_PENDING PK_YAMUX_ST_ACCEPT_PENDING
#define F_DEFERRED    PK_YAMUX_ST_DEFERRED
#define F_ACK_LAZY    PK_YAMUX_ST_ACK_LAZY
#define F_LOCAL_FIN   PK_YAMUX_ST_LOCAL_FIN
#define F_REMOTE_FIN  PK_YAMUX_ST_REMOTE_FIN

/* Peer ids seen in SYNs are remembered in a ring of this many bits below the highest one,
 * so out-of-order SYNs from a concurrent opener are accepted while a reused id is caught.
 * A SYN further below the highest than this is taken as a reuse. */
#define SEEN_BITS 1024u

#define MIN_BUCKETS 16u

struct pk__yamux_stream {
	uint32_t id;
	unsigned flags;
	uint32_t send_window;
	uint32_t recv_window;
	uint32_t unconsumed;
	uint64_t syn_ms;
	void *user;
	struct pk__yamux_stream *hnext;         /* hash chain */
	struct pk__yamux_stream *uprev, *unext; /* un-ACKed FIFO, oldest first */
};

struct pk__yamux_ping {
	uint32_t id;
	uint64_t sent_ms;
};

struct pk_yamux_session {
	enum pk_yamux_role role;
	struct pk_yamux_callbacks cb;
	struct pk_yamux_options opt;
	void *ud;

	struct pk__yamux_stream **buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t nstreams;
	uint32_t ndeferred;
	struct pk__yamux_stream *unacked_head, *unacked_tail;

	uint64_t next_id;     /* our next id; above UINT32_MAX = exhausted */
	int64_t peer_max_idx; /* highest peer SYN id >> 1, -1 before the first */
	uint8_t peer_seen[SEEN_BITS / 8];

	struct pk__yamux_ping pings[PK_YAMUX_MAX_PINGS];
	unsigned npings;

	/* Input parser. */
	uint8_t hdr[PK_YAMUX_HEADER_SIZE];
	unsigned hdr_have;
	uint32_t pay_left; /* payload bytes of the current Data frame still to come */
	uint32_t pay_id;   /* its stream, 0 = discard */
	int pay_fin;       /* apply the peer's FIN when the payload ends */

	int dead; /* 0, or the negative errno that ended the session */
	int local_goaway;
	int remote_goaway;
	unsigned depth; /* calls into the session under way (callbacks re-enter) */
	int free_pending;
};

/* ---- small helpers ---- */

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void pk_yamux_encode_header(uint8_t out[PK_YAMUX_HEADER_SIZE], uint8_t type, uint16_t flags,
                            uint32_t stream_id, uint32_t length)
{
	out[0] = PK_YAMUX_VERSION;
	out[1] = type;
	out[2] = (uint8_t)(flags >> 8);
	out[3] = (uint8_t)flags;
	out[4] = (uint8_t)(stream_id >> 24);
	out[5] = (uint8_t)(stream_id >> 16);
	out[6] = (uint8_t)(stream_id >> 8);
	out[7] = (uint8_t)stream_id;
	out[8] = (uint8_t)(length >> 24);
	out[9] = (uint8_t)(length >> 16);
	out[10] = (uint8_t)(length >> 8);
	out[11] = (uint8_t)length;
}

static uint64_t now_ms(const struct pk_yamux_session *s)
{
	return s->opt.now_ms ? s->opt.now_ms(s->ud) : 0;
}

/* Parity of the ids the peer opens: 1 = odd (peer is a client). */
static uint32_t peer_parity(const struct pk_yamux_session *s)
{
	return s->role == PK_YAMUX_SERVER ? 1 : 0;
}

static void enter(struct pk_yamux_session *s)
{
	s->depth++;
}

static void destroy(struct pk_yamux_session *s);

/* Ends a public call; performs a pk_yamux_free requested from a callback. */
static ssize_t leave(struct pk_yamux_session *s, ssize_t ret)
{
	if (--s->depth == 0 && s->free_pending)
		destroy(s);
	return ret;
}

static void set_dead(struct pk_yamux_session *s, int err)
{
	if (!s->dead)
		s->dead = err;
}

/* ---- output ---- */

static int emit(struct pk_yamux_session *s, uint8_t type, uint16_t flags, uint32_t id,
                uint32_t length, const void *payload, size_t plen)
{
	uint8_t hdr[PK_YAMUX_HEADER_SIZE];
	struct iovec iov[2];
	int r;

	pk_yamux_encode_header(hdr, type, flags, id, length);
	iov[0].iov_base = hdr;
	iov[0].iov_len = sizeof(hdr);
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = plen;
	r = s->cb.write(s->ud, iov, plen ? 2 : 1);
	if (r < 0) {
		set_dead(s, r);
		return r;
	}
	return 0;
}

/* Fatal peer violation: GoAway(1), then on_error. Returns -EPROTO. */
static int proto_error(struct pk_yamux_session *s, const char *reason)
{
	if (s->dead)
		return s->dead;
	(void)emit(s, PK_YAMUX_GOAWAY, 0, 0, PK_YAMUX_GOAWAY_PROTOCOL_ERROR, NULL, 0);
	s->local_goaway = 1;
	s->dead = -EPROTO;
	if (s->cb.on_error)
		s->cb.on_error(s, s->ud, -EPROTO, reason);
	return -EPROTO;
}

/* ---- stream table ---- */

static struct pk__yamux_stream *find(const struct pk_yamux_session *s, uint32_t id)
{
	struct pk__yamux_stream *st = NULL;

	for (st = s->buckets[(id >> 1) & (s->nbuckets - 1)]; st; st = st->hnext)
		if (st->id == id)
			return st;
	return NULL;
}

/* Doubles the bucket array when chains get long; a failed allocation only costs speed. */
static void maybe_grow(struct pk_yamux_session *s)
{
	struct pk__yamux_stream **nb, *st, *next;
	uint32_t n, i, b;

	if (s->nstreams <= s->nbuckets * 2 || s->nbuckets >= PK_YAMUX_MAX_STREAMS_CAP)
		return;
	n = s->nbuckets * 2;
	nb = calloc(n, sizeof(*nb));
	if (!nb)
		return;
	for (i = 0; i < s->nbuckets; i++) {
		for (st = s->buckets[i]; st; st = next) {
			next = st->hnext;
			b = (st->id >> 1) & (n - 1);
			st->hnext = nb[b];
			nb[b] = st;
		}
	}
	free(s->buckets);
	s->buckets = nb;
	s->nbuckets = n;
}

static struct pk__yamux_stream *stream_new(struct pk_yamux_session *s, uint32_t id, unsigned flags,
                                           void *user)
{
	struct pk__yamux_stream *st = calloc(1, sizeof(*st));
	uint32_t b;

	if (!st)
		return NULL;
	st->id = id;
	st->flags = flags;
	st->send_window = s->opt.initial_window;
	st->recv_window = s->opt.initial_window;
	st->user = user;
	b = (id >> 1) & (s->nbuckets - 1);
	st->hnext = s->buckets[b];
	s->buckets[b] = st;
	s->nstreams++;
	maybe_grow(s);
	return st;
}

static void unacked_unlink(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	if (!(st->flags & F_WAIT_ACK))
		return;
	st->flags &= ~F_WAIT_ACK;
	if (st->uprev)
		st->uprev->unext = st->unext;
	else
		s->unacked_head = st->unext;
	if (st->unext)
		st->unext->uprev = st->uprev;
	else
		s->unacked_tail = st->uprev;
	st->uprev = st->unext = NULL;
}

static void unacked_append(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	st->flags |= F_WAIT_ACK;
	st->syn_ms = now_ms(s);
	st->unext = NULL;
	st->uprev = s->unacked_tail;
	if (s->unacked_tail)
		s->unacked_tail->unext = st;
	else
		s->unacked_head = st;
	s->unacked_tail = st;
}

static void clear_deferred(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	if (st->flags & F_DEFERRED) {
		st->flags &= ~F_DEFERRED;
		s->ndeferred--;
	}
}

/* Takes the stream out of every index and frees it; returns its user pointer. */
static void *stream_remove(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	struct pk__yamux_stream **pp = &s->buckets[(st->id >> 1) & (s->nbuckets - 1)];
	void *user = st->user;

	while (*pp != st)
		pp = &(*pp)->hnext;
	*pp = st->hnext;
	unacked_unlink(s, st);
	clear_deferred(s, st);
	s->nstreams--;
	free(st);
	return user;
}

static void notify_free(struct pk_yamux_session *s, uint32_t id, void *user)
{
	if (s->cb.on_free)
		s->cb.on_free(s, s->ud, id, user);
}

/* Flags our next frame on the stream must carry (SYN of a lazy open, ACK of an accepted
 * stream), updating the state as if that frame were sent. */
static uint16_t take_flags(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	uint16_t fl = 0;

	if (st->flags & F_SYN_PENDING) {
		st->flags &= ~F_SYN_PENDING;
		unacked_append(s, st);
		fl |= PK_YAMUX_SYN;
	}
	if (st->flags & F_ACK_PENDING) {
		st->flags &= ~(F_ACK_PENDING | F_ACK_LAZY);
		clear_deferred(s, st);
		fl |= PK_YAMUX_ACK;
	}
	return fl;
}

/* Sends a WindowUpdate giving back what the application consumed, when that reaches half
 * of max_window (hashicorp's rule), or whenever a SYN/ACK is owed or `force` is set. */
static int send_update(struct pk_yamux_session *s, struct pk__yamux_stream *st, int force)
{
	uint32_t delta = s->opt.max_window - st->recv_window - st->unconsumed;
	int owed = (st->flags & (F_SYN_PENDING | F_ACK_PENDING)) != 0;
	uint16_t fl;

	if (st->flags & F_ACK_LAZY) {
		/* Only the peer's need opens it early: half of initial_window used. */
		uint32_t used = s->opt.initial_window - st->recv_window - st->unconsumed;
		if (!force && used < s->opt.initial_window / 2)
			return 0;
		owed = 1;
	}
	if (!force && !owed && (delta < s->opt.max_window / 2 || (st->flags & F_REMOTE_FIN)))
		return 0;
	fl = take_flags(s, st);
	st->recv_window += delta;
	return emit(s, PK_YAMUX_WINDOW_UPDATE, fl, st->id, delta, NULL, 0);
}

/* ---- peer id bookkeeping ---- */

static int seen_test(const struct pk_yamux_session *s, uint32_t idx)
{
	return s->peer_seen[(idx % SEEN_BITS) / 8] >> (idx % 8) & 1;
}

static void seen_set(struct pk_yamux_session *s, uint32_t idx, int on)
{
	uint8_t bit = (uint8_t)(1u << (idx % 8));

	if (on)
		s->peer_seen[(idx % SEEN_BITS) / 8] |= bit;
	else
		s->peer_seen[(idx % SEEN_BITS) / 8] &= (uint8_t)~bit;
}

/* Records a peer SYN id. Returns 0, or -1 when the id was used before. */
static int peer_id_mark(struct pk_yamux_session *s, uint32_t id)
{
	int64_t idx = id >> 1;
	int64_t j;

	if (idx > s->peer_max_idx) {
		if (idx - s->peer_max_idx >= SEEN_BITS)
			memset(s->peer_seen, 0, sizeof(s->peer_seen));
		else
			for (j = s->peer_max_idx + 1; j < idx; j++)
				seen_set(s, (uint32_t)j, 0);
		s->peer_max_idx = idx;
		seen_set(s, (uint32_t)idx, 1);
		return 0;
	}
	if (s->peer_max_idx - idx >= SEEN_BITS || seen_test(s, (uint32_t)idx))
		return -1;
	seen_set(s, (uint32_t)idx, 1);
	return 0;
}

/* Whether an id not in the table existed before (frames for it are stale, not errors). */
static int id_was_opened(const struct pk_yamux_session *s, uint32_t id)
{
	if ((id & 1) == peer_parity(s))
		return (int64_t)(id >> 1) <= s->peer_max_idx;
	return id < s->next_id;
}

/* ---- input: stream events ---- */

static void discard_payload(struct pk_yamux_session *s, uint8_t type, uint32_t len)
{
	if (type == PK_YAMUX_DATA) {
		s->pay_left = len;
		s->pay_id = 0;
		s->pay_fin = 0;
	}
}

static void remote_fin(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	uint32_t id = st->id;
	void *user = st->user;

	if (st->flags & F_LOCAL_FIN) {
		stream_remove(s, st);
		if (s->cb.on_fin)
			s->cb.on_fin(s, s->ud, id, user);
		notify_free(s, id, user);
		return;
	}
	st->flags |= F_REMOTE_FIN;
	if (s->cb.on_fin)
		s->cb.on_fin(s, s->ud, id, user);
}

static void remote_rst(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	uint32_t id = st->id;
	void *user = stream_remove(s, st);

	if (s->cb.on_rst)
		s->cb.on_rst(s, s->ud, id, user);
	notify_free(s, id, user);
}

/* A SYN passed the checks: create the stream and ask the application. Refusals (GoAway
 * sent, table full, backlog full) are RSTs, not errors. */
static int incoming_stream(struct pk_yamux_session *s, uint32_t id)
{
	struct pk__yamux_stream *st = NULL;
	int answer = PK_YAMUX_ACCEPT;
	void *user;
	int r;

	if (s->local_goaway || s->nstreams >= s->opt.max_streams ||
	    s->ndeferred >= s->opt.accept_backlog)
		return emit(s, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, id, 0, NULL, 0);
	st = stream_new(s, id, F_ACK_PENDING, NULL);
	if (!st)
		return emit(s, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, id, 0, NULL, 0);
	if (s->cb.on_stream)
		answer = s->cb.on_stream(s, s->ud, id);
	st = find(s, id);
	if (!st || s->dead)
		return 0; /* reset from inside on_stream, or the session ended */
	if (answer == PK_YAMUX_ACCEPT)
		return (st->flags & F_ACK_PENDING) ? send_update(s, st, 1) : 0;
	if (answer == PK_YAMUX_ACCEPT_LAZY) {
		if (st->flags & F_ACK_PENDING)
			st->flags |= F_ACK_LAZY;
		return 0;
	}
	if (answer == PK_YAMUX_DEFER) {
		if (st->flags & F_ACK_PENDING) {
			st->flags |= F_DEFERRED;
			s->ndeferred++;
		}
		return 0;
	}
	user = stream_remove(s, st);
	r = emit(s, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, id, 0, NULL, 0);
	notify_free(s, id, user);
	return r;
}

/* Checks a SYN's id. Returns 0 or the fatal error. */
static int check_syn(struct pk_yamux_session *s, uint32_t id)
{
	if ((id & 1) != peer_parity(s))
		return proto_error(s, "SYN on a stream id of the wrong parity");
	if (find(s, id))
		return proto_error(s, "SYN on a live stream id");
	if (peer_id_mark(s, id) < 0)
		return proto_error(s, "SYN reuses a stream id");
	return 0;
}

/* Checks a frame for a live stream before any callback runs. */
static int check_frame(struct pk_yamux_session *s, const struct pk__yamux_stream *st, uint8_t type,
                       uint16_t flags, uint32_t len)
{
	if (st->flags & F_SYN_PENDING)
		return proto_error(s, "frame for a stream not opened yet");
	if ((flags & PK_YAMUX_FIN) && (st->flags & F_REMOTE_FIN) && !(flags & PK_YAMUX_RST))
		return proto_error(s, "second FIN");
	if (type == PK_YAMUX_DATA && len > 0 && (st->flags & F_REMOTE_FIN))
		return proto_error(s, "data after FIN");
	if (type == PK_YAMUX_DATA && len > st->recv_window)
		return proto_error(s, "receive window exceeded");
	if (type == PK_YAMUX_WINDOW_UPDATE && (uint64_t)st->send_window + len > UINT32_MAX)
		return proto_error(s, "send window overflow");
	return 0;
}

static void remote_ack(struct pk_yamux_session *s, struct pk__yamux_stream *st)
{
	if (!(st->flags & F_WAIT_ACK))
		return; /* duplicate or for a peer-opened stream: harmless */
	unacked_unlink(s, st);
	if (s->cb.on_ack)
		s->cb.on_ack(s, s->ud, st->id, st->user);
}

static void window_grant(struct pk_yamux_session *s, struct pk__yamux_stream *st, uint32_t delta)
{
	st->send_window += delta;
	if (delta && !(st->flags & F_LOCAL_FIN) && s->cb.on_window)
		s->cb.on_window(s, s->ud, st->id, st->user, st->send_window);
}

/* Applies a frame's flags and body to a live stream. Pointers are re-read after callbacks. */
static void stream_frame(struct pk_yamux_session *s, uint32_t id, uint8_t type, uint16_t flags,
                         uint32_t len)
{
	struct pk__yamux_stream *st = find(s, id);

	if (st && (flags & PK_YAMUX_RST)) {
		remote_rst(s, st);
		st = NULL;
	}
	if (st && (flags & PK_YAMUX_ACK)) {
		remote_ack(s, st);
		st = s->dead ? NULL : find(s, id);
	}
	if (!st) {
		discard_payload(s, type, len);
		return;
	}
	if (type == PK_YAMUX_WINDOW_UPDATE) {
		window_grant(s, st, len);
		st = s->dead ? NULL : find(s, id);
		if (st && (flags & PK_YAMUX_FIN))
			remote_fin(s, st);
		return;
	}
	st->recv_window -= len;
	st->unconsumed += len;
	s->pay_left = len;
	s->pay_id = id;
	s->pay_fin = (flags & PK_YAMUX_FIN) != 0;
	if (len == 0 && s->pay_fin)
		remote_fin(s, st);
}

static int on_stream_header(struct pk_yamux_session *s, uint8_t type, uint16_t flags, uint32_t id,
                            uint32_t len)
{
	struct pk__yamux_stream *st = NULL;
	int r;

	if (id == 0)
		return proto_error(s, "Data or WindowUpdate on stream 0");
	if (flags & PK_YAMUX_SYN) {
		if ((r = check_syn(s, id)) < 0)
			return r;
		if (type == PK_YAMUX_DATA && len > s->opt.initial_window)
			return proto_error(s, "receive window exceeded");
		if (type == PK_YAMUX_WINDOW_UPDATE &&
		    (uint64_t)s->opt.initial_window + len > UINT32_MAX)
			return proto_error(s, "send window overflow");
		if ((r = incoming_stream(s, id)) < 0 || s->dead)
			return r < 0 ? r : s->dead;
		/* The SYN's own flags were consumed; ACK/FIN/RST and the body still apply. */
		stream_frame(s, id, type, flags & ~PK_YAMUX_SYN, len);
		return s->dead;
	}
	st = find(s, id);
	if (!st) {
		if (!id_was_opened(s, id))
			return proto_error(s, "frame for a stream never opened");
		discard_payload(s, type, len);
		return 0;
	}
	if ((r = check_frame(s, st, type, flags, len)) < 0)
		return r;
	stream_frame(s, id, type, flags, len);
	return s->dead;
}

/* ---- input: session frames ---- */

static int on_ping(struct pk_yamux_session *s, uint16_t flags, uint32_t ping_id)
{
	unsigned i;
	uint64_t rtt;

	if (flags & PK_YAMUX_SYN)
		return emit(s, PK_YAMUX_PING, PK_YAMUX_ACK, 0, ping_id, NULL, 0);
	for (i = 0; i < s->npings; i++) {
		if (s->pings[i].id != ping_id)
			continue;
		rtt = now_ms(s) - s->pings[i].sent_ms;
		s->pings[i] = s->pings[--s->npings];
		if (s->cb.on_ping_ack)
			s->cb.on_ping_ack(s, s->ud, ping_id, rtt);
		break;
	}
	return 0;
}

static int on_goaway_frame(struct pk_yamux_session *s, uint32_t code)
{
	s->remote_goaway = 1;
	if (code != PK_YAMUX_GOAWAY_NORMAL)
		set_dead(s, -ECONNRESET);
	if (s->cb.on_goaway)
		s->cb.on_goaway(s, s->ud, code);
	return s->dead;
}

static int on_header(struct pk_yamux_session *s)
{
	const uint8_t *h = s->hdr;
	uint8_t type = h[1];
	uint16_t flags = (uint16_t)(h[2] << 8 | h[3]);
	uint32_t id = get_be32(h + 4);
	uint32_t len = get_be32(h + 8);

	if (h[0] != PK_YAMUX_VERSION)
		return proto_error(s, "bad version");
	switch (type) {
	case PK_YAMUX_DATA:
	case PK_YAMUX_WINDOW_UPDATE:
		return on_stream_header(s, type, flags, id, len);
	case PK_YAMUX_PING:
		if (id != 0)
			return proto_error(s, "Ping on a stream other than 0");
		return on_ping(s, flags, len);
	case PK_YAMUX_GOAWAY:
		if (id != 0)
			return proto_error(s, "GoAway on a stream other than 0");
		return on_goaway_frame(s, len);
	default:
		return proto_error(s, "unknown frame type");
	}
}

/* Hands up to len payload bytes to the current stream; returns how many were taken. */
static size_t on_payload(struct pk_yamux_session *s, const uint8_t *p, size_t len)
{
	size_t n = len < s->pay_left ? len : s->pay_left;
	uint32_t id = s->pay_id;
	struct pk__yamux_stream *st = NULL;

	s->pay_left -= (uint32_t)n;
	if (!id)
		return n;
	st = find(s, id);
	if (st && s->cb.on_data)
		s->cb.on_data(s, s->ud, id, st->user, p, n);
	if (s->pay_left == 0 && s->pay_fin && !s->dead) {
		s->pay_fin = 0;
		st = find(s, id);
		if (st)
			remote_fin(s, st);
	}
	return n;
}

ssize_t pk_yamux_feed(struct pk_yamux_session *s, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t off = 0, take;

	if (!s || (!buf && len))
		return -EINVAL;
	if (s->depth)
		return -EBUSY;
	if (s->dead)
		return -EPIPE;
	enter(s);
	while (off < len && !s->dead) {
		if (s->pay_left) {
			off += on_payload(s, p + off, len - off);
			continue;
		}
		take = PK_YAMUX_HEADER_SIZE - s->hdr_have;
		if (take > len - off)
			take = len - off;
		memcpy(s->hdr + s->hdr_have, p + off, take);
		s->hdr_have += (unsigned)take;
		off += take;
		if (s->hdr_have == PK_YAMUX_HEADER_SIZE) {
			s->hdr_have = 0;
			on_header(s);
		}
	}
	return leave(s, s->dead ? s->dead : (ssize_t)len);
}

/* ---- lifecycle ---- */

void pk_yamux_options_init(struct pk_yamux_options *opt)
{
	memset(opt, 0, sizeof(*opt));
	opt->max_streams = 4096;
	opt->accept_backlog = 256;
	opt->initial_window = PK_YAMUX_INITIAL_WINDOW;
	opt->max_window = PK_YAMUX_INITIAL_WINDOW;
}

static int options_valid(const struct pk_yamux_options *o)
{
	return o->max_streams >= 1 && o->max_streams <= PK_YAMUX_MAX_STREAMS_CAP &&
	       o->accept_backlog <= o->max_streams && o->initial_window >= 1 &&
	       o->max_window >= o->initial_window && o->max_window <= (1u << 30);
}

int pk_yamux_new(struct pk_yamux_session **out, enum pk_yamux_role role,
                 const struct pk_yamux_options *opt, const struct pk_yamux_callbacks *cb, void *ud)
{
	struct pk_yamux_session *s;

	if (!out || !cb || !cb->write || (role != PK_YAMUX_CLIENT && role != PK_YAMUX_SERVER))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (opt)
		s->opt = *opt;
	else
		pk_yamux_options_init(&s->opt);
	if (!options_valid(&s->opt)) {
		free(s);
		return -EINVAL;
	}
	s->nbuckets = MIN_BUCKETS;
	s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
	if (!s->buckets) {
		free(s);
		return -ENOMEM;
	}
	s->role = role;
	s->cb = *cb;
	s->ud = ud;
	s->next_id = role == PK_YAMUX_CLIENT ? 1 : 2;
	s->peer_max_idx = -1;
	*out = s;
	return 0;
}

static void destroy(struct pk_yamux_session *s)
{
	struct pk__yamux_stream *st = NULL;
	uint32_t i, id;
	void *user;

	s->depth++; /* calls from on_free find a dead session */
	set_dead(s, -EPIPE);
	for (i = 0; i < s->nbuckets; i++) {
		while ((st = s->buckets[i]) != NULL) {
			id = st->id;
			user = stream_remove(s, st);
			notify_free(s, id, user);
		}
	}
	free(s->buckets);
	free(s);
}

void pk_yamux_free(struct pk_yamux_session *s)
{
	if (!s)
		return;
	if (s->depth) {
		/* Inside a callback: stop interpreting input, free on the way out. */
		s->free_pending = 1;
		set_dead(s, -EPIPE);
		return;
	}
	destroy(s);
}

/* ---- operations ---- */

/* Common entry checks; looks the stream up when id is not 0. */
static int begin(struct pk_yamux_session *s, uint32_t id, struct pk__yamux_stream **st)
{
	if (!s)
		return -EINVAL;
	if (s->dead || s->free_pending)
		return -EPIPE;
	if (id) {
		*st = find(s, id);
		if (!*st)
			return -ENOENT;
	}
	return 0;
}

int pk_yamux_open(struct pk_yamux_session *s, unsigned flags, void *stream_user, uint32_t *id)
{
	struct pk__yamux_stream *st = NULL;
	uint32_t sid;
	int r;

	if ((r = begin(s, 0, NULL)) < 0)
		return r;
	if (!id || (flags & ~PK_YAMUX_OPEN_LAZY))
		return -EINVAL;
	if (s->remote_goaway)
		return -ECONNREFUSED;
	if (s->nstreams >= s->opt.max_streams || s->next_id > UINT32_MAX)
		return -ENOSPC;
	sid = (uint32_t)s->next_id;
	st = stream_new(s, sid, F_LOCAL | F_SYN_PENDING, stream_user);
	if (!st)
		return -ENOMEM;
	s->next_id += 2;
	*id = sid;
	if (flags & PK_YAMUX_OPEN_LAZY)
		return 0;
	enter(s);
	return (int)leave(s, send_update(s, st, 1));
}

int pk_yamux_accept(struct pk_yamux_session *s, uint32_t id)
{
	struct pk__yamux_stream *st = NULL;
	int r;

	if ((r = begin(s, id, &st)) < 0)
		return r;
	if (!(st->flags & F_ACK_PENDING))
		return -EINVAL;
	enter(s);
	return (int)leave(s, send_update(s, st, 1));
}

ssize_t pk_yamux_send(struct pk_yamux_session *s, uint32_t id, const void *buf, size_t len)
{
	struct pk__yamux_stream *st = NULL;
	uint32_t n;
	uint16_t fl;
	int r;

	if ((r = begin(s, id, &st)) < 0)
		return r;
	if (!buf && len)
		return -EINVAL;
	if (st->flags & F_LOCAL_FIN)
		return -EPIPE;
	n = len < st->send_window ? (uint32_t)len : st->send_window;
	if (n == 0)
		return 0;
	fl = take_flags(s, st);
	st->send_window -= n;
	enter(s);
	r = emit(s, PK_YAMUX_DATA, fl, id, n, buf, n);
	return leave(s, r < 0 ? r : (ssize_t)n);
}

int pk_yamux_consumed(struct pk_yamux_session *s, uint32_t id, size_t n)
{
	struct pk__yamux_stream *st = NULL;
	int r;

	if ((r = begin(s, id, &st)) < 0)
		return r;
	if (n > st->unconsumed)
		return -EINVAL;
	st->unconsumed -= (uint32_t)n;
	enter(s);
	return (int)leave(s, send_update(s, st, 0));
}

int pk_yamux_close(struct pk_yamux_session *s, uint32_t id)
{
	struct pk__yamux_stream *st = NULL;
	uint16_t fl;
	void *user;
	int r;

	if ((r = begin(s, id, &st)) < 0)
		return r;
	if (st->flags & F_LOCAL_FIN)
		return 0;
	fl = take_flags(s, st) | PK_YAMUX_FIN;
	st->flags |= F_LOCAL_FIN;
	enter(s);
	r = emit(s, PK_YAMUX_WINDOW_UPDATE, fl, id, 0, NULL, 0);
	if (r == 0 && (st->flags & F_REMOTE_FIN)) {
		user = stream_remove(s, st);
		notify_free(s, id, user);
	}
	return (int)leave(s, r);
}

int pk_yamux_reset(struct pk_yamux_session *s, uint32_t id)
{
	struct pk__yamux_stream *st = NULL;
	int announced;
	void *user;
	int r = 0;

	if ((r = begin(s, id, &st)) < 0)
		return r;
	announced = !(st->flags & F_SYN_PENDING);
	user = stream_remove(s, st);
	enter(s);
	if (announced)
		r = emit(s, PK_YAMUX_WINDOW_UPDATE, PK_YAMUX_RST, id, 0, NULL, 0);
	notify_free(s, id, user);
	return (int)leave(s, r);
}

int pk_yamux_ping(struct pk_yamux_session *s, uint32_t ping_id)
{
	unsigned i;
	int r;

	if ((r = begin(s, 0, NULL)) < 0)
		return r;
	for (i = 0; i < s->npings; i++)
		if (s->pings[i].id == ping_id)
			return -EEXIST;
	if (s->npings == PK_YAMUX_MAX_PINGS)
		return -EBUSY;
	s->pings[s->npings].id = ping_id;
	s->pings[s->npings].sent_ms = now_ms(s);
	s->npings++;
	enter(s);
	return (int)leave(s, emit(s, PK_YAMUX_PING, PK_YAMUX_SYN, 0, ping_id, NULL, 0));
}

int pk_yamux_goaway(struct pk_yamux_session *s, uint32_t code)
{
	int r;

	if ((r = begin(s, 0, NULL)) < 0)
		return r;
	s->local_goaway = 1;
	enter(s);
	r = emit(s, PK_YAMUX_GOAWAY, 0, 0, code, NULL, 0);
	if (code != PK_YAMUX_GOAWAY_NORMAL)
		set_dead(s, -ECONNABORTED);
	return (int)leave(s, r);
}

/* ---- queries ---- */

unsigned pk_yamux_ping_outstanding(const struct pk_yamux_session *s, uint64_t *oldest_ms)
{
	unsigned i;
	uint64_t oldest = UINT64_MAX;

	for (i = 0; i < s->npings; i++)
		if (s->pings[i].sent_ms < oldest)
			oldest = s->pings[i].sent_ms;
	if (oldest_ms && s->npings)
		*oldest_ms = oldest;
	return s->npings;
}

int pk_yamux_oldest_unacked(const struct pk_yamux_session *s, uint32_t *id, uint64_t *since_ms)
{
	if (!s->unacked_head)
		return 0;
	if (id)
		*id = s->unacked_head->id;
	if (since_ms)
		*since_ms = s->unacked_head->syn_ms;
	return 1;
}

int pk_yamux_stream_info(const struct pk_yamux_session *s, uint32_t id,
                         struct pk_yamux_stream_info *info)
{
	const struct pk__yamux_stream *st = find(s, id);

	if (!st)
		return -ENOENT;
	info->state = st->flags;
	info->send_window = st->send_window;
	info->recv_window = st->recv_window;
	info->unconsumed = st->unconsumed;
	info->user = st->user;
	return 0;
}

int pk_yamux_stream_set_user(struct pk_yamux_session *s, uint32_t id, void *stream_user)
{
	struct pk__yamux_stream *st = find(s, id);

	if (!st)
		return -ENOENT;
	st->user = stream_user;
	return 0;
}

void *pk_yamux_stream_user(const struct pk_yamux_session *s, uint32_t id)
{
	const struct pk__yamux_stream *st = find(s, id);

	return st ? st->user : NULL;
}

uint32_t pk_yamux_stream_count(const struct pk_yamux_session *s)
{
	return s->nstreams;
}

int pk_yamux_error(const struct pk_yamux_session *s)
{
	return s->dead;
}

int pk_yamux_remote_goaway(const struct pk_yamux_session *s)
{
	return s->remote_goaway;
}

enum pk_yamux_role pk_yamux_role(const struct pk_yamux_session *s)
{
	return s->role;
}
