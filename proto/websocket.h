/* WebSocket (RFC 6455): opening handshake helpers and a streaming frame codec.
 *
 * Pure code: bytes in, events out. No sockets, no loop, no allocation. Shared by pikod (the
 * upstream port where agents connect, the proxy port's /_piko/v1/tcp/ endpoint) and by the
 * `piko` agent and forwarder.
 *
 * How Piko uses WebSocket (PROTOCOL.md section 2): every write is one binary message and the
 * receiver concatenates message payloads into a byte stream, so the decoder's main output is
 * a sequence of payload chunks. Message boundaries are reported too, but a Piko peer must not
 * rely on them. No subprotocol and no extension is ever negotiated, so RSV bits are always
 * an error.
 *
 * Decoding (pk_ws_feed): a pull interface. Each call consumes some input and returns at most
 * one event; the caller loops until PK_WS_EV_NONE. Payload is unmasked in place in the
 * caller's buffer and handed back as a pointer into it, so feed() MODIFIES ITS INPUT.
 *
 *	size_t off = 0;
 *	for (;;) {
 *		struct pk_ws_event ev;
 *		off += pk_ws_feed(&ws, buf + off, len - off, &ev);
 *		if (ev.type == PK_WS_EV_NONE)
 *			break;                     // every byte consumed; read more
 *		handle(&ev);                       // stop on PK_WS_EV_ERROR
 *	}
 *
 * Encoding: pk_ws_header() writes a frame header (at most 14 bytes) into a small buffer so
 * the payload can go out as a separate iovec. A client must mask the payload: either in
 * place (pk_ws_mask_inplace) or while copying it into an output buffer (pk_ws_mask_copy).
 * Control frames are small and are built whole (pk_ws_control, pk_ws_close).
 *
 * Throughput-relevant choices:
 *  - Zero copy on receive: data payload is never buffered; a 1 MiB message is delivered as
 *    chunks pointing into whatever read buffers it arrived in. Only a split frame header
 *    (<= 14 bytes) and a control frame payload (<= 125 bytes) are copied into the state.
 *  - Masking XORs 8 bytes at a time with a rotated 64-bit pattern (memcpy loads, which
 *    compilers turn into plain or vector loads); the mask offset is carried across calls.
 *  - Client mask keys come from RAND_bytes in batches of 16 keys (one call per 16 frames).
 *  - One event per call keeps the decoder free of callbacks and lets the caller stop
 *    consuming at any point (backpressure) without losing state.
 */
#ifndef PK_WEBSOCKET_H
#define PK_WEBSOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Handshake --------------------------------------------------------------------- */

#define PK_WS_KEY_LEN    24 /* base64 of 16 bytes */
#define PK_WS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest (20 bytes) */

/* The header a 426 answer to a wrong Sec-WebSocket-Version must carry (RFC 6455 4.4). */
#define PK_WS_VERSION_HEADER "Sec-WebSocket-Version: 13\r\n"

/* Header values of an upgrade request, as the HTTP parser found them. NULL means the
 * header is absent. Repeated headers must be joined with "," (RFC 9110 5.3) by the caller.
 * http_version is "HTTP/1.1" or "1.1". Surrounding spaces and tabs are ignored. */
struct pk_ws_upgrade_req {
	const char *method;
	const char *http_version;
	const char *upgrade;
	const char *connection;
	const char *key;     /* Sec-WebSocket-Key */
	const char *version; /* Sec-WebSocket-Version */
};

/* Computes Sec-WebSocket-Accept for a key: base64(SHA-1(key || RFC 6455 GUID)).
 * key need not be NUL-terminated; out receives PK_WS_ACCEPT_LEN chars and a NUL.
 * Returns 0, -EINVAL if key_len > 128 (no valid key is that long) or -EIO if OpenSSL
 * fails. */
int pk_ws_accept(const char *key, size_t key_len, char out[PK_WS_ACCEPT_LEN + 1]);

/* Server: validates an upgrade request: method GET, HTTP/1.1, Upgrade holding the token
 * "websocket" and Connection holding the token "upgrade" (comma-separated lists,
 * case-insensitive), a key that is base64 of exactly 16 bytes, version 13. On success writes
 * the accept value into accept (may be NULL to only validate) and returns 0. On failure
 * returns -EINVAL (answer 400) or -EPROTONOSUPPORT (the version is present but not 13:
 * answer 426 with PK_WS_VERSION_HEADER), and sets *why (if why is not NULL) to a static
 * description. -EIO if OpenSSL fails (answer 500). */
int pk_ws_server_check(const struct pk_ws_upgrade_req *req, char accept[PK_WS_ACCEPT_LEN + 1],
                       const char **why);

/* The HTTP status for an error of pk_ws_server_check: 400, 426 or 500. */
int pk_ws_handshake_status(int err);

/* Server: writes the 101 response head (status line, Upgrade, Connection,
 * Sec-WebSocket-Accept, empty line) into buf. No subprotocol or extension is selected.
 * Returns its length (no NUL is counted; one is written), or -ENOSPC if size is too small
 * (PK_WS_RESPONSE_MAX always suffices) or -EINVAL if accept is not PK_WS_ACCEPT_LEN long. */
#define PK_WS_RESPONSE_MAX 160
int pk_ws_server_response(char *buf, size_t size, const char *accept);

/* Client: makes a fresh random key (RAND_bytes, base64) into key (PK_WS_KEY_LEN chars and
 * a NUL). Returns 0 or -EIO if the random generator fails. */
int pk_ws_client_key(char key[PK_WS_KEY_LEN + 1]);

/* Client: writes the upgrade request head into buf:
 *	GET <path> HTTP/1.1, Host, Upgrade: websocket, Connection: Upgrade,
 *	Sec-WebSocket-Key, Sec-WebSocket-Version: 13, <extra_headers>, empty line.
 * path must start with '/' and, like host, hold no control characters or spaces.
 * extra_headers is NULL or complete header lines, each ending in "\r\n" (for example
 * "Authorization: Bearer x\r\n"); it is copied verbatim after a check that it ends in CRLF
 * and holds no bare CR/LF (no header injection). Returns the length (a NUL is written but not
 * counted), -EINVAL for bad arguments or -ENOSPC if buf is too small. */
int pk_ws_client_request(char *buf, size_t size, const char *path, const char *host,
                         const char *key, const char *extra_headers);

/* Header values of the server's answer. NULL = absent. */
struct pk_ws_upgrade_resp {
	int status;
	const char *upgrade;
	const char *connection;
	const char *accept;     /* Sec-WebSocket-Accept */
	const char *extensions; /* Sec-WebSocket-Extensions */
	const char *protocol;   /* Sec-WebSocket-Protocol */
};

/* Client: checks the answer to a request made with key: status 101, Upgrade "websocket",
 * Connection "upgrade", the right accept value, no extension or subprotocol (we offered
 * none). Returns 0, -EPROTO (sets *why if why is not NULL), -EINVAL if key is not a
 * valid key, or -EIO if OpenSSL fails. */
int pk_ws_client_check(const char *key, const struct pk_ws_upgrade_resp *resp, const char **why);

/* ---- Frames ------------------------------------------------------------------------ */

enum pk_ws_role {
	PK_WS_SERVER = 0, /* receives masked frames, sends unmasked */
	PK_WS_CLIENT = 1, /* receives unmasked frames, sends masked */
};

enum pk_ws_opcode {
	PK_WS_OP_CONT = 0x0,
	PK_WS_OP_TEXT = 0x1,
	PK_WS_OP_BINARY = 0x2,
	PK_WS_OP_CLOSE = 0x8,
	PK_WS_OP_PING = 0x9,
	PK_WS_OP_PONG = 0xA,
};

/* Close codes used by the codec (RFC 6455 7.4.1). */
enum {
	PK_WS_CLOSE_NORMAL = 1000,
	PK_WS_CLOSE_GOING_AWAY = 1001,
	PK_WS_CLOSE_PROTOCOL = 1002,
	PK_WS_CLOSE_UNSUPPORTED = 1003,
	PK_WS_CLOSE_NO_STATUS = 1005, /* reported for a close frame without a code; never sent */
	PK_WS_CLOSE_BAD_DATA = 1007,
	PK_WS_CLOSE_TOO_BIG = 1009,
	PK_WS_CLOSE_INTERNAL = 1011,
};

#define PK_WS_MAX_HEADER        14  /* 2 + 8 (64-bit length) + 4 (mask key) */
#define PK_WS_MAX_CONTROL       125 /* control frame payload limit */
#define PK_WS_MAX_CONTROL_FRAME (2 + 4 + PK_WS_MAX_CONTROL)

struct pk_ws_opts {
	uint64_t max_frame;   /* largest data frame payload; 0 = no limit. Exceeded: 1009 */
	uint64_t max_message; /* largest data message (sum of its frames); 0 = no limit: 1009 */
	bool allow_text;      /* deliver text messages as data (no UTF-8 check) instead of
	                         failing with 1003; Piko treats text as a protocol error */
};

/* Per-connection state. Embed it; initialise with pk_ws_init. The fields are private
 * except where noted as readable. */
struct pk_ws {
	struct pk_ws_opts opts;
	uint8_t role;     /* enum pk_ws_role */
	uint8_t state;    /* decoder state (internal) */
	uint8_t hdr_len;  /* header bytes collected */
	uint8_t hdr_need; /* header size once known */
	uint8_t hdr[PK_WS_MAX_HEADER];
	uint8_t opcode;   /* opcode of the frame being read */
	uint8_t fin;      /* FIN of the frame being read */
	uint8_t mask[4];  /* mask key of the frame being read */
	uint8_t mask_off; /* position in mask[] of the next payload byte */
	uint8_t ctrl_len; /* control payload bytes collected */
	uint8_t ctrl[PK_WS_MAX_CONTROL];
	bool in_message;        /* readable: inside a fragmented data message */
	bool message_text;      /* the current data message is text */
	bool close_received;    /* readable: a close frame was decoded */
	bool close_sent;        /* readable: a close frame was encoded */
	uint64_t remaining;     /* payload bytes left in the frame being read */
	uint64_t message_len;   /* data bytes of the current message so far */
	uint16_t err_code;      /* sticky error (close code), 0 = none */
	int err;                /* sticky error (negative errno) */
	const char *err_reason; /* sticky error description */
	uint8_t key_pool[64];   /* client mask keys, 16 per RAND_bytes call */
	uint8_t key_used;       /* bytes of key_pool consumed */
};

/* Initialises ws for role. opts may be NULL (no limits, text rejected); it is copied. */
void pk_ws_init(struct pk_ws *ws, enum pk_ws_role role, const struct pk_ws_opts *opts);

/* ---- Decoding ---------------------------------------------------------------------- */

enum pk_ws_event_type {
	PK_WS_EV_NONE = 0,    /* all input consumed, nothing to report: read more */
	PK_WS_EV_DATA,        /* data, len > 0: a payload chunk of a data message */
	PK_WS_EV_MESSAGE_END, /* the current data message is complete */
	PK_WS_EV_PING,        /* data, len: ping payload; answer with a pong carrying it */
	PK_WS_EV_PONG,        /* data, len: pong payload */
	PK_WS_EV_CLOSE,       /* code (1005 if none), data, len: reason (valid UTF-8) */
	PK_WS_EV_ERROR,       /* code: close code to send; err, reason: what went wrong */
};

struct pk_ws_event {
	enum pk_ws_event_type type;
	const uint8_t *data; /* into the caller's buffer (DATA) or ws (control payloads) */
	size_t len;
	uint16_t code;      /* CLOSE, ERROR */
	bool text;          /* DATA, MESSAGE_END: the message is a text message */
	int err;            /* ERROR: -EPROTO (1002), -ENOTSUP (text, 1003), -EILSEQ
	                     * (bad UTF-8 in a close reason, 1007), -EMSGSIZE (limit, 1009) */
	const char *reason; /* ERROR: static description for logs */
};

/* Consumes input from buf and reports at most one event in *ev. Returns the number of
 * bytes consumed (0..len); the caller passes the rest back in, plus new input, and calls
 * again until ev->type is PK_WS_EV_NONE (which means all of buf was consumed). An event can
 * be reported with 0 bytes consumed (MESSAGE_END after the last chunk), so keep calling even
 * when len is 0. Input may be split anywhere.
 *
 * buf is MODIFIED: masked payload is unmasked in place, and DATA events point into buf.
 * Control payloads are copied into ws and stay valid until the next call.
 *
 * ERROR is terminal: ws reports the same error (consuming nothing) on every later call; the
 * caller should send a close frame with ev->code (pk_ws_close) and drop the connection.
 * After CLOSE, any further input is an error (1002). */
size_t pk_ws_feed(struct pk_ws *ws, uint8_t *buf, size_t len, struct pk_ws_event *ev);

/* ---- Encoding ---------------------------------------------------------------------- */

/* Masking state of one outgoing frame; filled by pk_ws_header. For the server role
 * masking is off and the mask functions only copy (or do nothing). */
struct pk_ws_mask {
	uint8_t key[4];
	uint8_t off; /* position in key[] of the next payload byte */
	bool on;
};

/* Writes the header of a frame with opcode, fin and a payload of len bytes into hdr, using
 * the shortest length encoding. Client role: picks a random mask key, puts it in the header
 * and in *mask; the caller must then pass the len payload bytes, in order and in as many
 * pieces as it likes, through pk_ws_mask_inplace or pk_ws_mask_copy. mask may be NULL for
 * the server role only. Returns the header length (2..14) or -EINVAL (bad opcode, control
 * frame longer than 125 or fragmented, len >= 2^63, NULL mask for a client),
 * -EPIPE (a close frame was already sent) or -EIO (random generator failure). A close
 * header marks ws close_sent. */
int pk_ws_header(struct pk_ws *ws, uint8_t hdr[PK_WS_MAX_HEADER], enum pk_ws_opcode opcode,
                 bool fin, uint64_t len, struct pk_ws_mask *mask);

/* Pure header encoder: like pk_ws_header, with the mask key given (NULL = unmasked) and no
 * state checks. Returns the header length or -EINVAL. */
int pk_ws_encode_header(uint8_t hdr[PK_WS_MAX_HEADER], enum pk_ws_opcode opcode, bool fin,
                        uint64_t len, const uint8_t *mask_key);

/* Masks n payload bytes in place (no-op when masking is off); advances m->off. */
void pk_ws_mask_inplace(struct pk_ws_mask *m, uint8_t *buf, size_t n);

/* Copies n payload bytes from src to dst, masking them when masking is on; advances
 * m->off. dst and src must not overlap unless equal. */
void pk_ws_mask_copy(struct pk_ws_mask *m, uint8_t *dst, const uint8_t *src, size_t n);

/* Builds a whole ping or pong frame (header and, for a client, masked payload) with a
 * payload of len <= 125 bytes into out (PK_WS_MAX_CONTROL_FRAME bytes always suffice).
 * Returns the frame length, or -EINVAL (not ping/pong, len > 125), -ENOSPC, -EPIPE, -EIO. */
int pk_ws_control(struct pk_ws *ws, uint8_t *out, size_t size, enum pk_ws_opcode opcode,
                  const uint8_t *payload, size_t len);

/* Builds a close frame into out and marks ws close_sent (no frame may follow it). code 0
 * sends no status; otherwise code must be one an endpoint may send (1000-1003, 1007-1014,
 * 3000-4999) and reason (reason_len <= 123 bytes, may be NULL when 0) is sent after it.
 * Returns the frame length or -EINVAL, -ENOSPC, -EPIPE (already sent), -EIO. */
int pk_ws_close(struct pk_ws *ws, uint8_t *out, size_t size, uint16_t code, const char *reason,
                size_t reason_len);

/* Whether code may appear in a close frame on the wire (RFC 6455 7.4). */
bool pk_ws_close_code_valid(uint16_t code);

#endif
