#include "proto/websocket.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

/* ---- Handshake --------------------------------------------------------------------- */

#define PK__WS_GUID           "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define PK__WS_GUID_LEN       36
#define PK__WS_ACCEPT_KEY_MAX 128

static bool pk__ws_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Trims optional whitespace around s[0..*len); returns the new start. */
static const char *pk__ws_trim(const char *s, size_t *len)
{
	while (*len > 0 && pk__ws_ows(s[0])) {
		s++;
		(*len)--;
	}
	while (*len > 0 && pk__ws_ows(s[*len - 1]))
		(*len)--;
	return s;
}

/* Whether the comma-separated list value holds token (case-insensitive). */
static bool pk__ws_has_token(const char *value, const char *token)
{
	size_t tlen = strlen(token);

	if (value == NULL)
		return false;
	for (;;) {
		const char *comma = strchr(value, ',');
		size_t n = comma ? (size_t)(comma - value) : strlen(value);
		const char *el = pk__ws_trim(value, &n);

		if (n == tlen && strncasecmp(el, token, tlen) == 0)
			return true;
		if (comma == NULL)
			return false;
		value = comma + 1;
	}
}

/* Whether value, trimmed, equals want exactly. */
static bool pk__ws_equals(const char *value, const char *want)
{
	size_t n = strlen(value);
	const char *v = pk__ws_trim(value, &n);

	return n == strlen(want) && memcmp(v, want, n) == 0;
}

static bool pk__ws_b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

/* A key is base64 of exactly 16 bytes: 22 alphabet characters and "==". The unused low
 * bits of the last character are not checked (Go's decoder, used by Piko, does not). */
static bool pk__ws_key_valid(const char *key, size_t len)
{
	if (len != PK_WS_KEY_LEN || key[22] != '=' || key[23] != '=')
		return false;
	for (size_t i = 0; i < 22; i++)
		if (!pk__ws_b64_char(key[i]))
			return false;
	return true;
}

int pk_ws_accept(const char *key, size_t key_len, char out[PK_WS_ACCEPT_LEN + 1])
{
	unsigned char in[PK__WS_ACCEPT_KEY_MAX + PK__WS_GUID_LEN];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	if (key_len > PK__WS_ACCEPT_KEY_MAX)
		return -EINVAL;
	memcpy(in, key, key_len);
	memcpy(in + key_len, PK__WS_GUID, PK__WS_GUID_LEN);
	if (EVP_Digest(in, key_len + PK__WS_GUID_LEN, md, &md_len, EVP_sha1(), NULL) != 1 ||
	    md_len != 20)
		return -EIO;
	if (EVP_EncodeBlock((unsigned char *)out, md, 20) != PK_WS_ACCEPT_LEN)
		return -EIO;
	return 0;
}

#define PK__WS_FAIL(why_ptr, text, code)                                                           \
	do {                                                                                       \
		if (why_ptr != NULL)                                                               \
			*why_ptr = text;                                                           \
		return code;                                                                       \
	} while (0)

int pk_ws_server_check(const struct pk_ws_upgrade_req *req, char accept[PK_WS_ACCEPT_LEN + 1],
                       const char **why)
{
	char tmp[PK_WS_ACCEPT_LEN + 1];

	if (req->method == NULL || strcmp(req->method, "GET") != 0)
		PK__WS_FAIL(why, "method is not GET", -EINVAL);
	if (req->http_version == NULL ||
	    (strcmp(req->http_version, "HTTP/1.1") != 0 && strcmp(req->http_version, "1.1") != 0))
		PK__WS_FAIL(why, "HTTP version is not 1.1", -EINVAL);
	if (!pk__ws_has_token(req->upgrade, "websocket"))
		PK__WS_FAIL(why, "Upgrade header lacks websocket", -EINVAL);
	if (!pk__ws_has_token(req->connection, "upgrade"))
		PK__WS_FAIL(why, "Connection header lacks upgrade", -EINVAL);
	if (req->version == NULL)
		PK__WS_FAIL(why, "missing Sec-WebSocket-Version", -EINVAL);
	if (!pk__ws_equals(req->version, "13"))
		PK__WS_FAIL(why, "unsupported Sec-WebSocket-Version", -EPROTONOSUPPORT);
	if (req->key == NULL)
		PK__WS_FAIL(why, "missing Sec-WebSocket-Key", -EINVAL);

	size_t klen = strlen(req->key);
	const char *key = pk__ws_trim(req->key, &klen);

	if (!pk__ws_key_valid(key, klen))
		PK__WS_FAIL(why, "invalid Sec-WebSocket-Key", -EINVAL);
	if (pk_ws_accept(key, klen, accept ? accept : tmp) != 0)
		PK__WS_FAIL(why, "accept computation failed", -EIO);
	return 0;
}

int pk_ws_handshake_status(int err)
{
	if (err == -EPROTONOSUPPORT)
		return 426;
	if (err == -EINVAL)
		return 400;
	return 500;
}

int pk_ws_server_response(char *buf, size_t size, const char *accept)
{
	if (accept == NULL || strlen(accept) != PK_WS_ACCEPT_LEN)
		return -EINVAL;
	int n = snprintf(buf, size,
	                 "HTTP/1.1 101 Switching Protocols\r\n"
	                 "Upgrade: websocket\r\n"
	                 "Connection: Upgrade\r\n"
	                 "Sec-WebSocket-Accept: %s\r\n"
	                 "\r\n",
	                 accept);
	if (n < 0 || (size_t)n >= size)
		return -ENOSPC;
	return n;
}

int pk_ws_client_key(char key[PK_WS_KEY_LEN + 1])
{
	unsigned char raw[16];

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return -EIO;
	if (EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw)) != PK_WS_KEY_LEN)
		return -EIO;
	return 0;
}

/* Visible ASCII only: no spaces, controls or DEL that could split the request line. */
static bool pk__ws_visible(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

/* Complete header lines: ends in CRLF, every CR is part of a CRLF, no empty line. */
static bool pk__ws_header_lines(const char *s)
{
	size_t n = strlen(s);

	if (n == 0)
		return true;
	if (n < 2 || s[n - 2] != '\r' || s[n - 1] != '\n')
		return false;
	for (size_t i = 0; i < n; i++) {
		bool line_start = i == 0 || s[i - 1] == '\n';

		if (s[i] == '\r' && s[i + 1] != '\n')
			return false;
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			return false;
		if (line_start && s[i] == '\r')
			return false; /* empty line would end the head early */
	}
	return true;
}

int pk_ws_client_request(char *buf, size_t size, const char *path, const char *host,
                         const char *key, const char *extra_headers)
{
	if (path == NULL || path[0] != '/' || !pk__ws_visible(path))
		return -EINVAL;
	if (host == NULL || !pk__ws_visible(host))
		return -EINVAL;
	if (key == NULL || !pk__ws_key_valid(key, strlen(key)))
		return -EINVAL;
	if (extra_headers == NULL)
		extra_headers = "";
	if (!pk__ws_header_lines(extra_headers))
		return -EINVAL;
	int n = snprintf(buf, size,
	                 "GET %s HTTP/1.1\r\n"
	                 "Host: %s\r\n"
	                 "Upgrade: websocket\r\n"
	                 "Connection: Upgrade\r\n"
	                 "Sec-WebSocket-Key: %s\r\n"
	                 "Sec-WebSocket-Version: 13\r\n"
	                 "%s"
	                 "\r\n",
	                 path, host, key, extra_headers);
	if (n < 0 || (size_t)n >= size)
		return -ENOSPC;
	return n;
}

static bool pk__ws_nonempty(const char *value)
{
	if (value == NULL)
		return false;
	size_t n = strlen(value);
	pk__ws_trim(value, &n);
	return n > 0;
}

int pk_ws_client_check(const char *key, const struct pk_ws_upgrade_resp *resp, const char **why)
{
	char want[PK_WS_ACCEPT_LEN + 1];

	if (key == NULL || !pk__ws_key_valid(key, strlen(key)))
		PK__WS_FAIL(why, "invalid key", -EINVAL);
	if (resp->status != 101)
		PK__WS_FAIL(why, "status is not 101", -EPROTO);
	if (!pk__ws_has_token(resp->upgrade, "websocket"))
		PK__WS_FAIL(why, "Upgrade header lacks websocket", -EPROTO);
	if (!pk__ws_has_token(resp->connection, "upgrade"))
		PK__WS_FAIL(why, "Connection header lacks upgrade", -EPROTO);
	if (pk__ws_nonempty(resp->extensions))
		PK__WS_FAIL(why, "server selected an extension", -EPROTO);
	if (pk__ws_nonempty(resp->protocol))
		PK__WS_FAIL(why, "server selected a subprotocol", -EPROTO);
	if (resp->accept == NULL)
		PK__WS_FAIL(why, "missing Sec-WebSocket-Accept", -EPROTO);
	if (pk_ws_accept(key, strlen(key), want) != 0)
		PK__WS_FAIL(why, "accept computation failed", -EIO);
	if (!pk__ws_equals(resp->accept, want))
		PK__WS_FAIL(why, "wrong Sec-WebSocket-Accept", -EPROTO);
	return 0;
}

/* ---- Masking ----------------------------------------------------------------------- */

/* dst[i] = src[i] ^ key[(off + i) % 4]. Works in place. Eight bytes per step: the key
 * repeats every 4 bytes, so an 8-byte pattern starting at off is the same for every
 * aligned 8-byte step of the payload. */
static void pk__ws_xor(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                       unsigned off)
{
	uint8_t pat[8];
	uint64_t m;
	size_t i = 0;

	for (unsigned k = 0; k < 8; k++)
		pat[k] = key[(off + k) & 3];
	memcpy(&m, pat, 8);
	/* 64 bytes a step in 16-byte vectors (SSE2 on x86-64, NEON on arm64): the mask is
	 * most of the cost of a masked frame. memcpy keeps unaligned and in-place use legal. */
	typedef uint64_t pk__v2 __attribute__((vector_size(16)));
	const pk__v2 mv = {m, m};
	for (; i + 64 <= n; i += 64) {
		pk__v2 a, b, c, d;
		memcpy(&a, src + i, 16);
		memcpy(&b, src + i + 16, 16);
		memcpy(&c, src + i + 32, 16);
		memcpy(&d, src + i + 48, 16);
		a ^= mv;
		b ^= mv;
		c ^= mv;
		d ^= mv;
		memcpy(dst + i, &a, 16);
		memcpy(dst + i + 16, &b, 16);
		memcpy(dst + i + 32, &c, 16);
		memcpy(dst + i + 48, &d, 16);
	}
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, src + i, 8);
		w ^= m;
		memcpy(dst + i, &w, 8);
	}
	for (; i < n; i++)
		dst[i] = src[i] ^ pat[i & 7];
}

void pk_ws_mask_inplace(struct pk_ws_mask *m, uint8_t *buf, size_t n)
{
	if (!m->on || n == 0)
		return;
	pk__ws_xor(buf, buf, n, m->key, m->off);
	m->off = (uint8_t)((m->off + n) & 3);
}

void pk_ws_mask_copy(struct pk_ws_mask *m, uint8_t *dst, const uint8_t *src, size_t n)
{
	if (n == 0)
		return;
	if (!m->on) {
		if (dst != src)
			memcpy(dst, src, n);
		return;
	}
	pk__ws_xor(dst, src, n, m->key, m->off);
	m->off = (uint8_t)((m->off + n) & 3);
}

/* ---- Shared frame rules ------------------------------------------------------------ */

static bool pk__ws_is_control(unsigned op)
{
	return (op & 0x8) != 0;
}

static bool pk__ws_known_opcode(unsigned op)
{
	return op == PK_WS_OP_CONT || op == PK_WS_OP_TEXT || op == PK_WS_OP_BINARY ||
	       op == PK_WS_OP_CLOSE || op == PK_WS_OP_PING || op == PK_WS_OP_PONG;
}

bool pk_ws_close_code_valid(uint16_t code)
{
	if (code >= 1000 && code <= 1003)
		return true;
	if (code >= 1007 && code <= 1014)
		return true; /* 1012-1014 are IANA-registered */
	return code >= 3000 && code <= 4999;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool pk__ws_utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i];
		size_t extra;
		uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			extra = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			extra = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			extra = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return false;
		}
		if (n - i <= extra)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= extra; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
		i += extra + 1;
	}
	return true;
}

/* ---- Decoding ---------------------------------------------------------------------- */

enum {
	PK__WS_S_HEADER = 0, /* collecting a frame header */
	PK__WS_S_DATA,       /* passing data payload through */
	PK__WS_S_CTRL,       /* collecting a control payload */
	PK__WS_S_END,        /* MESSAGE_END to report */
	PK__WS_S_CLOSED,     /* close frame received */
	PK__WS_S_ERROR,      /* failed; sticky */
};

void pk_ws_init(struct pk_ws *ws, enum pk_ws_role role, const struct pk_ws_opts *opts)
{
	memset(ws, 0, sizeof(*ws));
	ws->role = (uint8_t)role;
	if (opts != NULL)
		ws->opts = *opts;
	ws->state = PK__WS_S_HEADER;
	ws->key_used = sizeof(ws->key_pool);
}

/* Makes ws fail for good. Returns false so checks can `return pk__ws_fail(...)`. */
static bool pk__ws_fail(struct pk_ws *ws, uint16_t code, int err, const char *reason)
{
	ws->state = PK__WS_S_ERROR;
	ws->err_code = code;
	ws->err = err;
	ws->err_reason = reason;
	return false;
}

static bool pk__ws_proto(struct pk_ws *ws, const char *reason)
{
	return pk__ws_fail(ws, PK_WS_CLOSE_PROTOCOL, -EPROTO, reason);
}

/* Checks the first two header bytes, so errors show as early as possible, and works out
 * the header size. */
static bool pk__ws_first_bytes(struct pk_ws *ws)
{
	uint8_t b0 = ws->hdr[0], b1 = ws->hdr[1];
	unsigned op = b0 & 0x0f, len7 = b1 & 0x7f;
	bool fin = (b0 & 0x80) != 0, masked = (b1 & 0x80) != 0;

	if (b0 & 0x70)
		return pk__ws_proto(ws, "reserved bits set");
	if (!pk__ws_known_opcode(op))
		return pk__ws_proto(ws, "unknown opcode");
	if (pk__ws_is_control(op)) {
		if (!fin)
			return pk__ws_proto(ws, "fragmented control frame");
		if (len7 > PK_WS_MAX_CONTROL)
			return pk__ws_proto(ws, "control frame payload over 125 bytes");
	} else if (op == PK_WS_OP_CONT) {
		if (!ws->in_message)
			return pk__ws_proto(ws, "continuation frame outside a message");
	} else {
		if (ws->in_message)
			return pk__ws_proto(ws, "new message before the last one ended");
		if (op == PK_WS_OP_TEXT && !ws->opts.allow_text)
			return pk__ws_fail(ws, PK_WS_CLOSE_UNSUPPORTED, -ENOTSUP,
			                   "text messages are not accepted");
	}
	if (ws->role == PK_WS_SERVER && !masked)
		return pk__ws_proto(ws, "unmasked frame from a client");
	if (ws->role == PK_WS_CLIENT && masked)
		return pk__ws_proto(ws, "masked frame from a server");
	ws->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0));
	return true;
}

static uint64_t pk__ws_be(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Applies the size limits to a data frame of plen bytes. */
static bool pk__ws_within_limits(struct pk_ws *ws, uint64_t plen)
{
	const struct pk_ws_opts *o = &ws->opts;

	if (o->max_frame != 0 && plen > o->max_frame)
		return pk__ws_fail(ws, PK_WS_CLOSE_TOO_BIG, -EMSGSIZE, "frame over the size limit");
	if (o->max_message != 0 &&
	    (ws->message_len > o->max_message || plen > o->max_message - ws->message_len))
		return pk__ws_fail(ws, PK_WS_CLOSE_TOO_BIG, -EMSGSIZE,
		                   "message over the size limit");
	ws->message_len = plen > UINT64_MAX - ws->message_len ? UINT64_MAX : ws->message_len + plen;
	return true;
}

/* The header is complete: set up for the payload. */
static bool pk__ws_frame_start(struct pk_ws *ws)
{
	unsigned op = ws->hdr[0] & 0x0f, len7 = ws->hdr[1] & 0x7f;
	unsigned ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
	uint64_t plen = ext ? pk__ws_be(ws->hdr + 2, ext) : len7;

	if (plen >> 63)
		return pk__ws_proto(ws, "64-bit length with the top bit set");
	ws->opcode = (uint8_t)op;
	ws->fin = (ws->hdr[0] & 0x80) != 0;
	ws->remaining = plen;
	ws->mask_off = 0;
	if (ws->hdr[1] & 0x80)
		memcpy(ws->mask, ws->hdr + 2 + ext, 4);
	ws->hdr_len = 0;
	ws->hdr_need = 0;

	if (pk__ws_is_control(op)) {
		ws->ctrl_len = 0;
		ws->state = PK__WS_S_CTRL;
		return true;
	}
	if (op != PK_WS_OP_CONT) {
		ws->message_text = op == PK_WS_OP_TEXT;
		ws->message_len = 0;
	}
	if (!pk__ws_within_limits(ws, plen))
		return false;
	ws->in_message = !ws->fin;
	if (plen > 0)
		ws->state = PK__WS_S_DATA;
	else
		ws->state = ws->fin ? PK__WS_S_END : PK__WS_S_HEADER;
	return true;
}

/* Collects header bytes; returns how many were taken. */
static size_t pk__ws_header_bytes(struct pk_ws *ws, const uint8_t *p, size_t n)
{
	size_t used = 0;

	while (ws->state == PK__WS_S_HEADER && used < n) {
		size_t need = ws->hdr_len < 2 ? 2 : ws->hdr_need;
		size_t take = need - ws->hdr_len;

		if (take > n - used)
			take = n - used;
		memcpy(ws->hdr + ws->hdr_len, p + used, take);
		ws->hdr_len = (uint8_t)(ws->hdr_len + take);
		used += take;
		if (ws->hdr_len < need)
			break;
		if (need == 2)
			pk__ws_first_bytes(ws);
		if (ws->state == PK__WS_S_HEADER && ws->hdr_len == ws->hdr_need)
			pk__ws_frame_start(ws);
	}
	return used;
}

/* A complete control frame: report it (or fail, reported on the next turn). */
static bool pk__ws_control_done(struct pk_ws *ws, struct pk_ws_event *ev)
{
	uint16_t code = PK_WS_CLOSE_NO_STATUS;

	ws->state = PK__WS_S_HEADER;
	if (ws->opcode == PK_WS_OP_PING || ws->opcode == PK_WS_OP_PONG) {
		ev->type = ws->opcode == PK_WS_OP_PING ? PK_WS_EV_PING : PK_WS_EV_PONG;
		ev->data = ws->ctrl;
		ev->len = ws->ctrl_len;
		return true;
	}
	if (ws->ctrl_len == 1)
		return pk__ws_proto(ws, "close frame with a 1-byte payload");
	if (ws->ctrl_len >= 2) {
		code = (uint16_t)((ws->ctrl[0] << 8) | ws->ctrl[1]);
		if (!pk_ws_close_code_valid(code))
			return pk__ws_proto(ws, "invalid close code");
		if (!pk__ws_utf8_valid(ws->ctrl + 2, ws->ctrl_len - 2u))
			return pk__ws_fail(ws, PK_WS_CLOSE_BAD_DATA, -EILSEQ,
			                   "close reason is not UTF-8");
	}
	ev->type = PK_WS_EV_CLOSE;
	ev->code = code;
	ev->data = ws->ctrl + (ws->ctrl_len >= 2 ? 2 : 0);
	ev->len = ws->ctrl_len >= 2 ? ws->ctrl_len - 2u : 0;
	ws->close_received = true;
	ws->state = PK__WS_S_CLOSED;
	return true;
}

static size_t pk__ws_control_bytes(struct pk_ws *ws, const uint8_t *p, size_t n,
                                   struct pk_ws_event *ev)
{
	size_t take = ws->remaining < n ? (size_t)ws->remaining : n;

	if (ws->hdr[1] & 0x80) {
		pk__ws_xor(ws->ctrl + ws->ctrl_len, p, take, ws->mask, ws->mask_off);
		ws->mask_off = (uint8_t)((ws->mask_off + take) & 3);
	} else {
		memcpy(ws->ctrl + ws->ctrl_len, p, take);
	}
	ws->ctrl_len = (uint8_t)(ws->ctrl_len + take);
	ws->remaining -= take;
	if (ws->remaining == 0)
		pk__ws_control_done(ws, ev);
	return take;
}

static size_t pk__ws_data_bytes(struct pk_ws *ws, uint8_t *p, size_t n, struct pk_ws_event *ev)
{
	size_t take = ws->remaining < n ? (size_t)ws->remaining : n;

	if (ws->hdr[1] & 0x80) {
		pk__ws_xor(p, p, take, ws->mask, ws->mask_off);
		ws->mask_off = (uint8_t)((ws->mask_off + take) & 3);
	}
	ev->type = PK_WS_EV_DATA;
	ev->data = p;
	ev->len = take;
	ev->text = ws->message_text;
	ws->remaining -= take;
	if (ws->remaining == 0)
		ws->state = ws->fin ? PK__WS_S_END : PK__WS_S_HEADER;
	return take;
}

size_t pk_ws_feed(struct pk_ws *ws, uint8_t *buf, size_t len, struct pk_ws_event *ev)
{
	size_t used = 0;

	memset(ev, 0, sizeof(*ev));
	for (;;) {
		switch (ws->state) {
		case PK__WS_S_ERROR:
			ev->type = PK_WS_EV_ERROR;
			ev->code = ws->err_code;
			ev->err = ws->err;
			ev->reason = ws->err_reason;
			return used;
		case PK__WS_S_END:
			ev->type = PK_WS_EV_MESSAGE_END;
			ev->text = ws->message_text;
			ws->state = PK__WS_S_HEADER;
			return used;
		case PK__WS_S_CLOSED:
			if (used == len)
				return used;
			pk__ws_proto(ws, "data after a close frame");
			break;
		case PK__WS_S_HEADER:
			if (used == len)
				return used;
			used += pk__ws_header_bytes(ws, buf + used, len - used);
			break;
		case PK__WS_S_CTRL:
			/* An empty control payload completes with no input. */
			if (ws->remaining == 0)
				pk__ws_control_done(ws, ev);
			else if (used == len)
				return used;
			else
				used += pk__ws_control_bytes(ws, buf + used, len - used, ev);
			if (ev->type != PK_WS_EV_NONE)
				return used;
			break;
		case PK__WS_S_DATA:
			if (used == len)
				return used;
			return used + pk__ws_data_bytes(ws, buf + used, len - used, ev);
		}
	}
}

/* ---- Encoding ---------------------------------------------------------------------- */

int pk_ws_encode_header(uint8_t hdr[PK_WS_MAX_HEADER], enum pk_ws_opcode opcode, bool fin,
                        uint64_t len, const uint8_t *mask_key)
{
	unsigned op = (unsigned)opcode;
	int n = 2;

	if (!pk__ws_known_opcode(op) || (len >> 63))
		return -EINVAL;
	if (pk__ws_is_control(op) && (!fin || len > PK_WS_MAX_CONTROL))
		return -EINVAL;
	hdr[0] = (uint8_t)((fin ? 0x80 : 0) | op);
	if (len < 126) {
		hdr[1] = (uint8_t)len;
	} else if (len <= 0xffff) {
		hdr[1] = 126;
		hdr[2] = (uint8_t)(len >> 8);
		hdr[3] = (uint8_t)len;
		n = 4;
	} else {
		hdr[1] = 127;
		for (int i = 0; i < 8; i++)
			hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
		n = 10;
	}
	if (mask_key != NULL) {
		hdr[1] |= 0x80;
		memcpy(hdr + n, mask_key, 4);
		n += 4;
	}
	return n;
}

/* Next mask key from the pool, refilled 16 keys at a time. */
static int pk__ws_next_key(struct pk_ws *ws, uint8_t key[4])
{
	if (ws->key_used + 4u > sizeof(ws->key_pool)) {
		if (RAND_bytes(ws->key_pool, sizeof(ws->key_pool)) != 1)
			return -EIO;
		ws->key_used = 0;
	}
	memcpy(key, ws->key_pool + ws->key_used, 4);
	ws->key_used = (uint8_t)(ws->key_used + 4);
	return 0;
}

int pk_ws_header(struct pk_ws *ws, uint8_t hdr[PK_WS_MAX_HEADER], enum pk_ws_opcode opcode,
                 bool fin, uint64_t len, struct pk_ws_mask *mask)
{
	struct pk_ws_mask none = {.on = false};
	int n;

	if (ws->close_sent)
		return -EPIPE;
	if (mask == NULL) {
		if (ws->role == PK_WS_CLIENT)
			return -EINVAL;
		mask = &none;
	}
	memset(mask, 0, sizeof(*mask));
	if (ws->role == PK_WS_CLIENT) {
		n = pk__ws_next_key(ws, mask->key);
		if (n < 0)
			return n;
		mask->on = true;
	}
	n = pk_ws_encode_header(hdr, opcode, fin, len, mask->on ? mask->key : NULL);
	if (n > 0 && opcode == PK_WS_OP_CLOSE)
		ws->close_sent = true;
	return n;
}

/* A whole control frame whose payload is already validated. */
static int pk__ws_control_frame(struct pk_ws *ws, uint8_t *out, size_t size,
                                enum pk_ws_opcode opcode, const uint8_t *payload, size_t len)
{
	struct pk_ws_mask m;
	size_t need = 2 + (ws->role == PK_WS_CLIENT ? 4 : 0) + len;

	if (len > PK_WS_MAX_CONTROL)
		return -EINVAL;
	if (ws->close_sent)
		return -EPIPE;
	if (size < need)
		return -ENOSPC;
	int n = pk_ws_header(ws, out, opcode, true, len, &m);
	if (n < 0)
		return n;
	pk_ws_mask_copy(&m, out + n, payload, len);
	return n + (int)len;
}

int pk_ws_control(struct pk_ws *ws, uint8_t *out, size_t size, enum pk_ws_opcode opcode,
                  const uint8_t *payload, size_t len)
{
	if (opcode != PK_WS_OP_PING && opcode != PK_WS_OP_PONG)
		return -EINVAL;
	if (len > 0 && payload == NULL)
		return -EINVAL;
	return pk__ws_control_frame(ws, out, size, opcode, payload, len);
}

int pk_ws_close(struct pk_ws *ws, uint8_t *out, size_t size, uint16_t code, const char *reason,
                size_t reason_len)
{
	uint8_t payload[PK_WS_MAX_CONTROL];

	if (reason_len > 0 && (reason == NULL || code == 0))
		return -EINVAL;
	if (code != 0 && !pk_ws_close_code_valid(code))
		return -EINVAL;
	if (reason_len > PK_WS_MAX_CONTROL - 2)
		return -EINVAL;
	if (!pk__ws_utf8_valid((const uint8_t *)reason, reason_len))
		return -EINVAL;
	if (code == 0)
		return pk__ws_control_frame(ws, out, size, PK_WS_OP_CLOSE, NULL, 0);
	payload[0] = (uint8_t)(code >> 8);
	payload[1] = (uint8_t)code;
	if (reason_len > 0)
		memcpy(payload + 2, reason, reason_len);
	return pk__ws_control_frame(ws, out, size, PK_WS_OP_CLOSE, payload, reason_len + 2);
}
