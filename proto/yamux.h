/* yamux session state machine (hashicorp/yamux wire format, PROTOCOL.md section 3).
 *
 * Pure code: the session consumes the peer's bytes through pk_yamux_feed() and emits its own
 * frames through the write callback. The caller owns the transport, the event loop and every
 * timer. Both roles are implemented: a client opens odd stream ids, a server even ones. In
 * Piko the server (pikod) opens every stream and the agent (a yamux client) only accepts.
 *
 * Streams are named by their id in every call and callback, never by a pointer, so a stale id
 * is a harmless -ENOENT. Each stream carries one caller pointer ("stream user"), handed back
 * in every stream callback.
 *
 * Ownership of output: the write callback gets one or two iovecs. iov[0] is the 12-byte frame
 * header in a buffer owned by the session and valid only during the call. For a Data frame,
 * iov[1] points into the caller's buffer given to pk_yamux_send(), also valid only until that
 * call returns. A caller that cannot write synchronously must copy both before returning.
 *
 * Ownership of input: on_data points into the buffer given to pk_yamux_feed() (zero copy),
 * valid only during the callback. A Data payload may arrive in several on_data calls, as the
 * bytes arrive; nothing is buffered by the session except at most 11 bytes of a split header.
 *
 * Re-entrancy: every callback may call any function of this API on the same session (send,
 * close, reset, consumed, open, ping, goaway, accept, stream user, even pk_yamux_free, which is
 * then deferred until the outermost call returns), except pk_yamux_feed (-EBUSY). The write
 * callback must not call into the session at all.
 *
 * Time: the session reads a caller-provided monotonic clock (options.now_ms) only to stamp
 * SYNs and pings, so the caller can enforce Piko's timeouts (ping answer within 10 s, stream
 * ACK within 75 s) with pk_yamux_ping_outstanding() and pk_yamux_oldest_unacked().
 *
 * Protocol violations by the peer end the session: it emits GoAway(1), calls on_error and is
 * dead from then on (every call returns -EPIPE; only pk_yamux_free is useful). They are: a
 * version other than 0; an unknown type; Data or WindowUpdate on stream 0; Ping or GoAway on
 * a stream other than 0; a SYN on id 0, on an id of our parity, on a live id or on an id the
 * peer used before; Data beyond the receive window; Data after the peer's FIN; a second FIN;
 * a send-window overflow (more than 2^32-1 granted); any frame for an id that was never
 * opened (for a peer-parity id: above every SYN seen; for ours: not yet allocated, or opened
 * lazily and not announced yet).
 *
 * Frames for ids that existed and were freed (closed, reset, rejected, refused) are ignored
 * and their payload discarded, as hashicorp/yamux does: they are legitimately in flight when
 * one side resets a stream or refuses a SYN that the opener followed with data at once.
 *
 * Not errors, handled locally: a SYN while we have sent GoAway, while max_streams streams are
 * live, or while accept_backlog streams await pk_yamux_accept() is answered with RST (Piko's
 * backlog rule). An ACK for a stream that does not await one, and a ping answer with an id we
 * did not send, are ignored.
 */
#ifndef PK_YAMUX_H
#define PK_YAMUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define PK_YAMUX_HEADER_SIZE     12
#define PK_YAMUX_VERSION         0
#define PK_YAMUX_INITIAL_WINDOW  (256u * 1024u) /* fixed by the protocol */
#define PK_YAMUX_MAX_PINGS       16             /* outstanding pings we originated */
#define PK_YAMUX_MAX_STREAMS_CAP (1u << 20)

enum pk_yamux_type {
	PK_YAMUX_DATA = 0,
	PK_YAMUX_WINDOW_UPDATE = 1,
	PK_YAMUX_PING = 2,
	PK_YAMUX_GOAWAY = 3,
};

enum pk_yamux_flag {
	PK_YAMUX_SYN = 0x1,
	PK_YAMUX_ACK = 0x2,
	PK_YAMUX_FIN = 0x4,
	PK_YAMUX_RST = 0x8,
};

enum pk_yamux_goaway_code {
	PK_YAMUX_GOAWAY_NORMAL = 0,
	PK_YAMUX_GOAWAY_PROTOCOL_ERROR = 1,
	PK_YAMUX_GOAWAY_INTERNAL_ERROR = 2,
};

enum pk_yamux_role {
	PK_YAMUX_CLIENT = 0, /* opens odd ids */
	PK_YAMUX_SERVER = 1, /* opens even ids */
};

/* Answers of on_stream. */
enum pk_yamux_accept {
	PK_YAMUX_REJECT = 0,      /* RST the stream now (on_free follows) */
	PK_YAMUX_ACCEPT = 1,      /* ACK now */
	PK_YAMUX_DEFER = 2,       /* keep it in the backlog until pk_yamux_accept(); data that
	                             arrives meanwhile is delivered by on_data as usual */
	PK_YAMUX_ACCEPT_LAZY = 3, /* accepted; the ACK (and the window above initial_window)
	                             rides on the stream's first frame: data, FIN, or a
	                             WindowUpdate once the peer has used half of initial_window;
	                             pk_yamux_accept() sends it alone. Not in the backlog. */
};

/* pk_yamux_open() flags. */
#define PK_YAMUX_OPEN_LAZY 0x1 /* no frame now: SYN rides on the first send/close/update */

struct pk_yamux_session;

/* Every callback except write gets the session and the session user data `ud`. Stream
 * callbacks also get the stream id and its user pointer. All are optional except write. */
struct pk_yamux_callbacks {
	/* Emits bytes towards the peer (see ownership above). Returns 0, or a negative errno
	 * that kills the session: the call that triggered it returns that errno. */
	int (*write)(void *ud, const struct iovec *iov, int iovcnt);

	/* A peer SYN on a new id. Returns one of enum pk_yamux_accept. The stream exists
	 * during the call: attach a pointer with pk_yamux_stream_set_user(), and send, close
	 * or reset it (the first frame carries the ACK). Missing callback = accept. */
	int (*on_stream)(struct pk_yamux_session *s, void *ud, uint32_t id);

	/* Payload bytes of a Data frame, pointing into the feed() buffer. The application
	 * reports what it has used with pk_yamux_consumed() (now, from here, or later). */
	void (*on_data)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user,
	                const uint8_t *data, size_t len);

	/* The peer half-closed: no more data will come. If we had already sent our FIN, the
	 * stream is freed right after (on_free follows). */
	void (*on_fin)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user);

	/* The peer reset the stream (or refused our SYN). The stream is already gone: calls
	 * on it return -ENOENT. on_free follows. */
	void (*on_rst)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user);

	/* The peer granted send window; `available` is what pk_yamux_send() may now send. Not
	 * called after our FIN. */
	void (*on_window)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user,
	                  uint32_t available);

	/* A stream we opened was ACKed. */
	void (*on_ack)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user);

	/* The stream left the table (both FINs, RST either way, rejected, or pk_yamux_free):
	 * release whatever stream_user holds. Called exactly once for every stream that
	 * pk_yamux_open() returned or on_stream was called for. */
	void (*on_free)(struct pk_yamux_session *s, void *ud, uint32_t id, void *stream_user);

	/* The answer to a ping we sent with pk_yamux_ping(); rtt_ms from options.now_ms. */
	void (*on_ping_ack)(struct pk_yamux_session *s, void *ud, uint32_t ping_id,
	                    uint64_t rtt_ms);

	/* The peer sent GoAway. Code 0: no new streams may be opened (pk_yamux_open returns
	 * -ECONNREFUSED), existing ones continue. Any other code: the peer is terminating;
	 * the session is dead and feed() returns -ECONNRESET. */
	void (*on_goaway)(struct pk_yamux_session *s, void *ud, uint32_t code);

	/* Fatal protocol error by the peer (err = -EPROTO): GoAway(1) has been emitted and
	 * the session is dead. `reason` is a static string for logs. */
	void (*on_error)(struct pk_yamux_session *s, void *ud, int err, const char *reason);
};

struct pk_yamux_options {
	uint32_t max_streams;         /* live streams, both directions (default 4096) */
	uint32_t accept_backlog;      /* deferred, unaccepted peer streams (default 256) */
	uint32_t initial_window;      /* window both sides assume at open (default 256 KiB;
	                                 anything else breaks interoperability) */
	uint32_t max_window;          /* our receive window per stream, >= initial_window; the
	                                 difference is granted with our SYN/ACK (default 256 KiB) */
	uint64_t (*now_ms)(void *ud); /* monotonic clock, may be NULL (times read as 0) */
};

/* Fills defaults. */
void pk_yamux_options_init(struct pk_yamux_options *opt);

/* Creates a session. opt may be NULL for defaults; cb is copied (cb->write is required); ud
 * is passed to every callback. Returns 0 and *out, -EINVAL (bad option or missing write) or
 * -ENOMEM. No callback is called. */
int pk_yamux_new(struct pk_yamux_session **out, enum pk_yamux_role role,
                 const struct pk_yamux_options *opt, const struct pk_yamux_callbacks *cb, void *ud);

/* Frees the session, calling on_free for every live stream (callbacks must not call into the
 * session from there). Emits nothing: send GoAway first for a clean end. From inside a
 * callback the free is deferred until the outermost call into the session returns. NULL is
 * a no-op. */
void pk_yamux_free(struct pk_yamux_session *s);

/* Consumes peer bytes, arbitrarily split. Callbacks run from here. Returns len, or a negative
 * errno when the session died: -EPROTO (peer violation; GoAway(1) emitted, on_error called),
 * -ECONNRESET (peer GoAway with a non-zero code), -ECONNABORTED (a callback sent GoAway with
 * a non-zero code), the write callback's errno, -EPIPE (already dead), -EBUSY (called from a
 * callback), -EINVAL. After an error no further byte is interpreted. */
ssize_t pk_yamux_feed(struct pk_yamux_session *s, const void *buf, size_t len);

/* Opens a stream with the next id of our parity. Sends WindowUpdate(SYN, delta = max_window -
 * initial_window) now, or with PK_YAMUX_OPEN_LAZY leaves the SYN to the first frame of the
 * stream. The stream may carry data before the ACK. Returns 0 and *id, or -ECONNREFUSED (the
 * peer sent GoAway), -ENOSPC (max_streams live or ids exhausted), -ENOMEM, -EPIPE (dead), the
 * write errno. */
int pk_yamux_open(struct pk_yamux_session *s, unsigned flags, void *stream_user, uint32_t *id);

/* ACKs a stream that on_stream deferred or accepted lazily. Returns 0, -ENOENT, -EINVAL (not
 * awaiting its ACK), -EPIPE, the write errno. */
int pk_yamux_accept(struct pk_yamux_session *s, uint32_t id);

/* Sends up to len bytes as one Data frame, never more than the peer's window. Returns the
 * number of bytes taken (0 when the window is closed: retry after on_window), or -ENOENT,
 * -EPIPE (we sent FIN, or dead), -EINVAL, the write errno. */
ssize_t pk_yamux_send(struct pk_yamux_session *s, uint32_t id, const void *buf, size_t len);

/* The application has used n more received bytes of the stream. Sends a WindowUpdate once
 * the credit to give back reaches half of max_window (so a reader that does not consume
 * stops the sender after max_window bytes). Returns 0, -ENOENT, -EINVAL (more than was
 * delivered), -EPIPE, the write errno. */
int pk_yamux_consumed(struct pk_yamux_session *s, uint32_t id, size_t n);

/* Half-closes our direction (FIN). Frees the stream (on_free) if the peer had FIN'd.
 * Idempotent. Returns 0, -ENOENT, -EPIPE, the write errno. */
int pk_yamux_close(struct pk_yamux_session *s, uint32_t id);

/* Aborts the stream (RST; nothing is sent for a lazy stream never announced) and frees it
 * (on_free, no on_rst). Returns 0, -ENOENT, -EPIPE, the write errno. */
int pk_yamux_reset(struct pk_yamux_session *s, uint32_t id);

/* Sends Ping(SYN, ping_id), stamped with now_ms. The answer calls on_ping_ack. Returns 0,
 * -EEXIST (that id is outstanding), -EBUSY (PK_YAMUX_MAX_PINGS outstanding), -EPIPE, the
 * write errno. Peer pings are answered automatically. */
int pk_yamux_ping(struct pk_yamux_session *s, uint32_t ping_id);

/* Number of our pings not answered yet; *oldest_ms (if not NULL and count > 0) gets the
 * send time of the oldest. The caller drops the session when that is too old. */
unsigned pk_yamux_ping_outstanding(const struct pk_yamux_session *s, uint64_t *oldest_ms);

/* Sends GoAway(code). After it, peer SYNs are refused with RST. Code 0 keeps the session
 * usable; any other code kills it (-ECONNABORTED). Returns 0, -EPIPE, the write errno. */
int pk_yamux_goaway(struct pk_yamux_session *s, uint32_t code);

/* The stream we opened that has waited longest for its ACK (SYN sent, no ACK, not reset):
 * returns 1 and fills *id and *since_ms (SYN time), or 0 when none waits. */
int pk_yamux_oldest_unacked(const struct pk_yamux_session *s, uint32_t *id, uint64_t *since_ms);

/* Stream state, for callers and tests. */
#define PK_YAMUX_ST_LOCAL          0x01 /* we opened it */
#define PK_YAMUX_ST_SYN_PENDING    0x02 /* lazy open, SYN not sent yet */
#define PK_YAMUX_ST_WAIT_ACK       0x04 /* SYN sent, no ACK yet */
#define PK_YAMUX_ST_ACCEPT_PENDING 0x08 /* peer opened, our ACK not sent yet */
#define PK_YAMUX_ST_DEFERRED       0x10 /* counted in the accept backlog */
#define PK_YAMUX_ST_LOCAL_FIN      0x20
#define PK_YAMUX_ST_REMOTE_FIN     0x40
#define PK_YAMUX_ST_ACK_LAZY       0x80 /* accepted lazily, ACK still pending */

struct pk_yamux_stream_info {
	unsigned state;       /* PK_YAMUX_ST_* */
	uint32_t send_window; /* bytes pk_yamux_send may send now */
	uint32_t recv_window; /* bytes the peer may still send */
	uint32_t unconsumed;  /* delivered, not yet reported by pk_yamux_consumed */
	void *user;
};

/* Returns 0 and *info, or -ENOENT. */
int pk_yamux_stream_info(const struct pk_yamux_session *s, uint32_t id,
                         struct pk_yamux_stream_info *info);
/* Returns 0, or -ENOENT. */
int pk_yamux_stream_set_user(struct pk_yamux_session *s, uint32_t id, void *stream_user);
/* The stream's user pointer, NULL for an unknown id. */
void *pk_yamux_stream_user(const struct pk_yamux_session *s, uint32_t id);

uint32_t pk_yamux_stream_count(const struct pk_yamux_session *s);
/* 0 while alive, else the negative errno that ended the session. */
int pk_yamux_error(const struct pk_yamux_session *s);
/* Whether the peer sent GoAway (any code). */
int pk_yamux_remote_goaway(const struct pk_yamux_session *s);
enum pk_yamux_role pk_yamux_role(const struct pk_yamux_session *s);

/* Encodes a frame header in network order; exposed for tests and tools. */
void pk_yamux_encode_header(uint8_t out[PK_YAMUX_HEADER_SIZE], uint8_t type, uint16_t flags,
                            uint32_t stream_id, uint32_t length);

#endif
