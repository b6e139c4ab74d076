#include "proto/websocket.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------------- */

#define MAX_EVENTS 64

/* One non-DATA event, with the stream offset at which it was reported. */
struct rec {
	enum pk_ws_event_type type;
	size_t at;
	uint16_t code;
	int err;
	bool text;
	size_t len;
	uint8_t data[PK_WS_MAX_CONTROL];
};

/* What a decoder reported: DATA chunks concatenated into a stream, everything else as
 * records. Splitting the input differently may change DATA chunking only. */
struct log {
	uint8_t *stream;
	size_t len, cap;
	struct rec ev[MAX_EVENTS];
	size_t nev;
	bool failed;
	bool data_text; /* some DATA chunk had the text flag */
};

static void log_init(struct log *l)
{
	memset(l, 0, sizeof(*l));
}

static void log_free(struct log *l)
{
	free(l->stream);
}

static void log_event(struct log *l, const struct pk_ws_event *ev)
{
	if (ev->type == PK_WS_EV_DATA) {
		cr_assert_gt(ev->len, 0, "DATA events are never empty");
		if (l->len + ev->len > l->cap) {
			l->cap = (l->len + ev->len) * 2;
			l->stream = realloc(l->stream, l->cap);
			cr_assert_not_null(l->stream);
		}
		memcpy(l->stream + l->len, ev->data, ev->len);
		l->len += ev->len;
		l->data_text |= ev->text;
		return;
	}
	cr_assert_lt(l->nev, MAX_EVENTS);
	struct rec *r = &l->ev[l->nev++];
	r->type = ev->type;
	r->at = l->len;
	r->code = ev->code;
	r->err = ev->err;
	r->text = ev->text;
	if (ev->type == PK_WS_EV_PING || ev->type == PK_WS_EV_PONG || ev->type == PK_WS_EV_CLOSE) {
		cr_assert_leq(ev->len, PK_WS_MAX_CONTROL);
		r->len = ev->len;
		if (ev->len)
			memcpy(r->data, ev->data, ev->len);
	}
	if (ev->type == PK_WS_EV_ERROR)
		l->failed = true;
}

/* Feeds buf (modified in place) until the decoder wants more input or fails. */
static void feed(struct pk_ws *ws, uint8_t *buf, size_t len, struct log *l)
{
	size_t off = 0;

	while (!l->failed) {
		struct pk_ws_event ev;
		size_t n = pk_ws_feed(ws, buf + off, len - off, &ev);

		cr_assert_leq(n, len - off);
		off += n;
		if (ev.type == PK_WS_EV_NONE) {
			cr_assert_eq(off, len, "NONE means every byte was consumed");
			return;
		}
		log_event(l, &ev);
	}
}

/* Feeds a copy of buf in one go to a fresh decoder. */
static void decode(enum pk_ws_role role, const struct pk_ws_opts *o, const uint8_t *buf, size_t len,
                   struct log *l)
{
	struct pk_ws ws;
	uint8_t *copy = malloc(len ? len : 1);

	memcpy(copy, buf, len);
	pk_ws_init(&ws, role, o);
	log_init(l);
	feed(&ws, copy, len, l);
	free(copy);
}

static const uint8_t test_key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Builds a frame by hand (independently of the encoder). ext forces the length encoding:
 * 0 shortest, 2 the 16-bit form, 8 the 64-bit form. mask NULL = unmasked. */
static size_t mkframe_ext(uint8_t *out, uint8_t b0, const void *payload, size_t len,
                          const uint8_t *mask, int ext)
{
	size_t n = 0;

	if (ext == 0)
		ext = len < 126 ? 0 : len <= 0xffff ? 2 : 8;
	out[n++] = b0;
	out[n++] = (uint8_t)((mask ? 0x80 : 0) | (ext == 0 ? len : ext == 2 ? 126 : 127));
	for (int i = ext - 1; i >= 0; i--)
		out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
	if (mask) {
		memcpy(out + n, mask, 4);
		n += 4;
	}
	for (size_t i = 0; i < len; i++)
		out[n + i] = ((const uint8_t *)payload)[i] ^ (mask ? mask[i % 4] : 0);
	return n + len;
}

static size_t mkframe(uint8_t *out, uint8_t b0, const void *payload, size_t len,
                      const uint8_t *mask)
{
	return mkframe_ext(out, b0, payload, len, mask, 0);
}

/* A frame as a client would send it to the server role. */
static size_t cframe(uint8_t *out, uint8_t b0, const void *payload, size_t len)
{
	return mkframe(out, b0, payload, len, test_key);
}

#define FIN   0x80
#define BIN   0x02
#define TEXT  0x01
#define CONT  0x00
#define CLOSE 0x08
#define PING  0x09
#define PONG  0x0a

/* Decodes one server-role frame and expects an error with code and err. */
static void expect_server_error(const uint8_t *buf, size_t len, uint16_t code, int err,
                                const struct pk_ws_opts *o)
{
	struct log l;

	decode(PK_WS_SERVER, o, buf, len, &l);
	cr_assert(l.failed, "expected an error");
	cr_assert_eq(l.ev[l.nev - 1].type, PK_WS_EV_ERROR);
	cr_assert_eq(l.ev[l.nev - 1].code, code, "code %u", l.ev[l.nev - 1].code);
	cr_assert_eq(l.ev[l.nev - 1].err, err);
	log_free(&l);
}

static const uint8_t *pattern(size_t n)
{
	static uint8_t *buf;
	static size_t cap;

	if (n > cap) {
		free(buf);
		buf = malloc(n);
		cap = n;
		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)(i * 31 + (i >> 8) * 7 + 1);
	}
	return buf;
}

/* ---- handshake: accept --------------------------------------------------------------- */

Test(ws_handshake, accept_matches_rfc6455_example)
{
	char out[PK_WS_ACCEPT_LEN + 1];
	const char *key = "dGhlIHNhbXBsZSBub25jZQ==";

	cr_assert_eq(pk_ws_accept(key, strlen(key), out), 0);
	cr_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static struct pk_ws_upgrade_req good_req(void)
{
	struct pk_ws_upgrade_req r = {
	    .method = "GET",
	    .http_version = "HTTP/1.1",
	    .upgrade = "websocket",
	    .connection = "Upgrade",
	    .key = "dGhlIHNhbXBsZSBub25jZQ==",
	    .version = "13",
	};
	return r;
}

static void expect_reject(const struct pk_ws_upgrade_req *r, int err)
{
	char acc[PK_WS_ACCEPT_LEN + 1];
	const char *why = NULL;

	cr_assert_eq(pk_ws_server_check(r, acc, &why), err);
	cr_assert_not_null(why);
}

Test(ws_handshake, server_accepts_valid_request)
{
	struct pk_ws_upgrade_req r = good_req();
	char acc[PK_WS_ACCEPT_LEN + 1];

	cr_assert_eq(pk_ws_server_check(&r, acc, NULL), 0);
	cr_assert_str_eq(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

Test(ws_handshake, server_accepts_token_lists_case_and_whitespace)
{
	struct pk_ws_upgrade_req r = good_req();
	char acc[PK_WS_ACCEPT_LEN + 1];

	r.http_version = "1.1";
	r.upgrade = "h2c ,  WebSocket";
	r.connection = "keep-alive,\tUPGRADE ";
	r.key = " dGhlIHNhbXBsZSBub25jZQ== ";
	r.version = " 13";
	cr_assert_eq(pk_ws_server_check(&r, acc, NULL), 0);
	cr_assert_str_eq(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

Test(ws_handshake, rejects_method_other_than_get)
{
	struct pk_ws_upgrade_req r = good_req();
	r.method = "POST";
	expect_reject(&r, -EINVAL);
	r.method = "get";
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_http_1_0)
{
	struct pk_ws_upgrade_req r = good_req();
	r.http_version = "HTTP/1.0";
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_missing_upgrade)
{
	struct pk_ws_upgrade_req r = good_req();
	r.upgrade = NULL;
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_upgrade_without_websocket_token)
{
	struct pk_ws_upgrade_req r = good_req();
	r.upgrade = "websocketx, h2c";
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_missing_connection)
{
	struct pk_ws_upgrade_req r = good_req();
	r.connection = NULL;
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_connection_without_upgrade_token)
{
	struct pk_ws_upgrade_req r = good_req();
	r.connection = "keep-alive, upgraded";
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_missing_key)
{
	struct pk_ws_upgrade_req r = good_req();
	r.key = NULL;
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_key_of_15_bytes)
{
	struct pk_ws_upgrade_req r = good_req();
	r.key = "AAAAAAAAAAAAAAAAAAAA"; /* base64 of 15 bytes */
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_key_of_17_bytes)
{
	struct pk_ws_upgrade_req r = good_req();
	r.key = "AAAAAAAAAAAAAAAAAAAAAAA="; /* 24 chars but 17 bytes */
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_key_with_non_base64_char)
{
	struct pk_ws_upgrade_req r = good_req();
	r.key = "dGhlIHNhbXBsZSBub25j*Q==";
	expect_reject(&r, -EINVAL);
}

Test(ws_handshake, rejects_missing_version_with_400)
{
	struct pk_ws_upgrade_req r = good_req();
	r.version = NULL;
	expect_reject(&r, -EINVAL);
	cr_assert_eq(pk_ws_handshake_status(-EINVAL), 400);
}

Test(ws_handshake, rejects_version_8_with_426)
{
	struct pk_ws_upgrade_req r = good_req();
	r.version = "8";
	expect_reject(&r, -EPROTONOSUPPORT);
	cr_assert_eq(pk_ws_handshake_status(-EPROTONOSUPPORT), 426);
	cr_assert_str_eq(PK_WS_VERSION_HEADER, "Sec-WebSocket-Version: 13\r\n");
}

Test(ws_handshake, server_response_head)
{
	char buf[PK_WS_RESPONSE_MAX];
	const char *want = "HTTP/1.1 101 Switching Protocols\r\n"
	                   "Upgrade: websocket\r\n"
	                   "Connection: Upgrade\r\n"
	                   "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
	                   "\r\n";
	int n = pk_ws_server_response(buf, sizeof(buf), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

	cr_assert_eq(n, (int)strlen(want));
	cr_assert_str_eq(buf, want);
}

Test(ws_handshake, server_response_errors)
{
	char buf[PK_WS_RESPONSE_MAX];

	cr_assert_eq(pk_ws_server_response(buf, 50, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), -ENOSPC);
	cr_assert_eq(pk_ws_server_response(buf, sizeof(buf), "short"), -EINVAL);
}

/* ---- handshake: client --------------------------------------------------------------- */

Test(ws_client, key_is_valid_and_fresh)
{
	char k1[PK_WS_KEY_LEN + 1], k2[PK_WS_KEY_LEN + 1];
	struct pk_ws_upgrade_req r = good_req();

	cr_assert_eq(pk_ws_client_key(k1), 0);
	cr_assert_eq(pk_ws_client_key(k2), 0);
	cr_assert_eq(strlen(k1), PK_WS_KEY_LEN);
	cr_assert_str_neq(k1, k2);
	r.key = k1;
	cr_assert_eq(pk_ws_server_check(&r, NULL, NULL), 0, "the server side accepts our key");
}

Test(ws_client, request_head)
{
	char buf[512];
	const char *want = "GET /piko/v1/upstream/my-ep HTTP/1.1\r\n"
	                   "Host: piko.example.com:8001\r\n"
	                   "Upgrade: websocket\r\n"
	                   "Connection: Upgrade\r\n"
	                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	                   "Sec-WebSocket-Version: 13\r\n"
	                   "Authorization: Bearer abc\r\n"
	                   "\r\n";
	int n = pk_ws_client_request(buf, sizeof(buf), "/piko/v1/upstream/my-ep",
	                             "piko.example.com:8001",
	                             "dGhlIHNhbXBsZSBub25jZQ==", "Authorization: Bearer abc\r\n");

	cr_assert_eq(n, (int)strlen(want));
	cr_assert_str_eq(buf, want);
}

Test(ws_client, request_rejects_injection_and_small_buffer)
{
	char buf[512];
	const char *k = "dGhlIHNhbXBsZSBub25jZQ==";

	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "x", "h", k, NULL), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/a b", "h", k, NULL), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/", "h\r\nX: y", k, NULL), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/", "h", "short", NULL), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/", "h", k, "A: b"), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/", "h", k, "A: b\nC: d\r\n"),
	             -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, sizeof(buf), "/", "h", k, "A: b\r\n\r\n"), -EINVAL);
	cr_assert_eq(pk_ws_client_request(buf, 40, "/", "h", k, NULL), -ENOSPC);
	cr_assert_gt(pk_ws_client_request(buf, sizeof(buf), "/", "h", k, ""), 0);
}

static struct pk_ws_upgrade_resp good_resp(void)
{
	struct pk_ws_upgrade_resp r = {
	    .status = 101,
	    .upgrade = "websocket",
	    .connection = "Upgrade",
	    .accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
	};
	return r;
}

#define CKEY "dGhlIHNhbXBsZSBub25jZQ=="

Test(ws_client, check_accepts_good_response)
{
	struct pk_ws_upgrade_resp r = good_resp();

	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), 0);
	r.extensions = "";
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), 0, "an empty header selects nothing");
}

Test(ws_client, check_rejects_wrong_accept)
{
	struct pk_ws_upgrade_resp r = good_resp();
	const char *why = NULL;

	r.accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOO=";
	cr_assert_eq(pk_ws_client_check(CKEY, &r, &why), -EPROTO);
	cr_assert_str_eq(why, "wrong Sec-WebSocket-Accept");
	r.accept = NULL;
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
}

Test(ws_client, check_rejects_status_other_than_101)
{
	struct pk_ws_upgrade_resp r = good_resp();
	r.status = 200;
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
}

Test(ws_client, check_rejects_missing_upgrade_or_connection)
{
	struct pk_ws_upgrade_resp r = good_resp();
	r.upgrade = NULL;
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
	r = good_resp();
	r.connection = "keep-alive";
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
}

Test(ws_client, check_rejects_extension_or_subprotocol)
{
	struct pk_ws_upgrade_resp r = good_resp();
	r.extensions = "permessage-deflate";
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
	r = good_resp();
	r.protocol = "chat";
	cr_assert_eq(pk_ws_client_check(CKEY, &r, NULL), -EPROTO);
}

/* ---- length encodings ---------------------------------------------------------------- */

Test(ws_encode, header_length_forms)
{
	uint8_t h[PK_WS_MAX_HEADER];

	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_BINARY, true, 125, NULL), 2);
	cr_assert(h[0] == 0x82 && h[1] == 125);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_BINARY, true, 126, NULL), 4);
	cr_assert(h[1] == 126 && h[2] == 0 && h[3] == 126);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_BINARY, false, 65535, NULL), 4);
	cr_assert(h[0] == 0x02 && h[1] == 126 && h[2] == 0xff && h[3] == 0xff);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_CONT, true, 65536, NULL), 10);
	uint8_t want[10] = {0x80, 127, 0, 0, 0, 0, 0, 1, 0, 0};
	cr_assert_arr_eq(h, want, 10);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_BINARY, true, 65536, test_key), 14);
	cr_assert_eq(h[1], 0x80 | 127);
	cr_assert_arr_eq(h + 10, test_key, 4);
}

Test(ws_encode, header_rejects_bad_frames)
{
	uint8_t h[PK_WS_MAX_HEADER];

	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_PING, true, 126, NULL), -EINVAL);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_PING, false, 1, NULL), -EINVAL);
	cr_assert_eq(pk_ws_encode_header(h, PK_WS_OP_BINARY, true, 1ull << 63, NULL), -EINVAL);
	cr_assert_eq(pk_ws_encode_header(h, (enum pk_ws_opcode)3, true, 0, NULL), -EINVAL);
}

static void check_length_decodes(size_t len, int ext)
{
	uint8_t *buf = malloc(len + 14);
	struct log l;
	size_t n = mkframe_ext(buf, FIN | BIN, pattern(len), len, test_key, ext);

	decode(PK_WS_SERVER, NULL, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.len, len);
	cr_assert(len == 0 || memcmp(l.stream, pattern(len), len) == 0);
	cr_assert_eq(l.nev, 1);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_MESSAGE_END);
	log_free(&l);
	free(buf);
}

Test(ws_decode, seven_bit_length)
{
	check_length_decodes(125, 0);
}

Test(ws_decode, sixteen_bit_length)
{
	check_length_decodes(126, 0);
	check_length_decodes(65535, 0);
}

Test(ws_decode, sixty_four_bit_length)
{
	check_length_decodes(65536, 0);
}

Test(ws_decode, accepts_non_minimal_lengths)
{
	check_length_decodes(5, 2);
	check_length_decodes(5, 8);
	check_length_decodes(200, 8);
}

Test(ws_decode, rejects_64_bit_length_with_top_bit)
{
	uint8_t buf[14] = {FIN | BIN, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};

	expect_server_error(buf, sizeof(buf), 1002, -EPROTO, NULL);
}

/* ---- roles --------------------------------------------------------------------------- */

Test(ws_decode, server_rejects_unmasked_frame)
{
	uint8_t buf[16];
	size_t n = mkframe(buf, FIN | BIN, "abc", 3, NULL);

	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, client_rejects_masked_frame)
{
	uint8_t buf[16];
	struct log l;
	size_t n = mkframe(buf, FIN | BIN, "abc", 3, test_key);

	decode(PK_WS_CLIENT, NULL, buf, n, &l);
	cr_assert(l.failed);
	cr_assert_eq(l.ev[0].code, 1002);
	cr_assert_eq(l.len, 0, "nothing delivered from the bad frame");
	log_free(&l);
}

Test(ws_decode, client_accepts_unmasked_frame)
{
	uint8_t buf[16];
	struct log l;
	size_t n = mkframe(buf, FIN | BIN, "abc", 3, NULL);

	decode(PK_WS_CLIENT, NULL, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.len, 3);
	cr_assert_arr_eq(l.stream, "abc", 3);
	log_free(&l);
}

/* ---- fragmentation ------------------------------------------------------------------- */

Test(ws_decode, fragments_with_interleaved_control_frames)
{
	uint8_t buf[128];
	size_t n = 0;
	struct log l;

	n += cframe(buf + n, BIN, "Hel", 3);
	n += cframe(buf + n, FIN | PING, "p!", 2);
	n += cframe(buf + n, CONT, "lo ", 3);
	n += cframe(buf + n, FIN | PONG, "", 0);
	n += cframe(buf + n, CONT, "", 0);
	n += cframe(buf + n, FIN | CONT, "world", 5);
	decode(PK_WS_SERVER, NULL, buf, n, &l);

	cr_assert_not(l.failed);
	cr_assert_eq(l.len, 11);
	cr_assert_arr_eq(l.stream, "Hello world", 11);
	cr_assert_eq(l.nev, 3);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_PING);
	cr_assert_eq(l.ev[0].at, 3);
	cr_assert_eq(l.ev[0].len, 2);
	cr_assert_arr_eq(l.ev[0].data, "p!", 2);
	cr_assert_eq(l.ev[1].type, PK_WS_EV_PONG);
	cr_assert_eq(l.ev[1].at, 6);
	cr_assert_eq(l.ev[1].len, 0);
	cr_assert_eq(l.ev[2].type, PK_WS_EV_MESSAGE_END);
	cr_assert_eq(l.ev[2].at, 11);
	log_free(&l);
}

Test(ws_decode, message_end_comes_after_last_chunk_with_no_input)
{
	uint8_t buf[16];
	struct pk_ws ws;
	struct pk_ws_event ev;
	size_t n = cframe(buf, FIN | BIN, "xyz", 3);

	pk_ws_init(&ws, PK_WS_SERVER, NULL);
	cr_assert_eq(pk_ws_feed(&ws, buf, n, &ev), n);
	cr_assert_eq(ev.type, PK_WS_EV_DATA);
	cr_assert_eq(ev.data, buf + n - 3, "payload is unmasked in place");
	cr_assert_arr_eq(ev.data, "xyz", 3);
	cr_assert_eq(pk_ws_feed(&ws, NULL, 0, &ev), 0);
	cr_assert_eq(ev.type, PK_WS_EV_MESSAGE_END);
	cr_assert_eq(pk_ws_feed(&ws, NULL, 0, &ev), 0);
	cr_assert_eq(ev.type, PK_WS_EV_NONE);
}

Test(ws_decode, empty_final_frame_ends_message)
{
	uint8_t buf[16];
	struct log l;
	size_t n = cframe(buf, FIN | BIN, "", 0);

	decode(PK_WS_SERVER, NULL, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.nev, 1);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_MESSAGE_END);
	log_free(&l);
}

/* ---- errors -------------------------------------------------------------------------- */

Test(ws_decode, rejects_reserved_bits)
{
	for (int bit = 0x10; bit <= 0x40; bit <<= 1) {
		uint8_t buf[16];
		size_t n = cframe(buf, (uint8_t)(FIN | BIN | bit), "a", 1);
		expect_server_error(buf, n, 1002, -EPROTO, NULL);
	}
}

Test(ws_decode, rejects_unknown_opcodes)
{
	int ops[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		uint8_t buf[16];
		size_t n = cframe(buf, (uint8_t)(FIN | ops[i]), "", 0);
		expect_server_error(buf, n, 1002, -EPROTO, NULL);
	}
}

Test(ws_decode, rejects_fragmented_control_frame)
{
	uint8_t buf[16];
	size_t n = cframe(buf, PING, "a", 1);

	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, rejects_control_frame_over_125_bytes)
{
	uint8_t buf[200];
	size_t n = cframe(buf, FIN | PING, pattern(126), 126);

	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, rejects_continuation_without_message)
{
	uint8_t buf[16];
	size_t n = cframe(buf, FIN | CONT, "a", 1);

	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, rejects_new_message_inside_fragmented_one)
{
	uint8_t buf[32];
	size_t n = cframe(buf, BIN, "a", 1);

	n += cframe(buf + n, FIN | BIN, "b", 1);
	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, rejects_text_by_default)
{
	uint8_t buf[16];
	size_t n = cframe(buf, FIN | TEXT, "hi", 2);

	expect_server_error(buf, n, 1003, -ENOTSUP, NULL);
}

Test(ws_decode, accepts_text_when_allowed)
{
	uint8_t buf[32];
	struct pk_ws_opts o = {.allow_text = true};
	struct log l;
	size_t n = cframe(buf, TEXT, "hi", 2);

	n += cframe(buf + n, FIN | CONT, "!", 1);
	decode(PK_WS_SERVER, &o, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_arr_eq(l.stream, "hi!", 3);
	cr_assert(l.data_text);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_MESSAGE_END);
	cr_assert(l.ev[0].text);
	log_free(&l);
}

static void close_payload(uint8_t *p, uint16_t code)
{
	p[0] = (uint8_t)(code >> 8);
	p[1] = (uint8_t)code;
}

Test(ws_decode, rejects_close_with_one_byte_payload)
{
	uint8_t buf[16];
	size_t n = cframe(buf, FIN | CLOSE, "\x03", 1);

	expect_server_error(buf, n, 1002, -EPROTO, NULL);
}

Test(ws_decode, rejects_invalid_close_codes)
{
	uint16_t bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t p[2], buf[16];
		close_payload(p, bad[i]);
		size_t n = cframe(buf, FIN | CLOSE, p, 2);
		expect_server_error(buf, n, 1002, -EPROTO, NULL);
	}
}

Test(ws_decode, accepts_valid_close_codes)
{
	uint16_t good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014, 3000, 4999};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		uint8_t p[8] = {0, 0, 'b', 'y', 'e'}, buf[16];
		struct log l;
		close_payload(p, good[i]);
		size_t n = cframe(buf, FIN | CLOSE, p, 5);
		decode(PK_WS_SERVER, NULL, buf, n, &l);
		cr_assert_not(l.failed);
		cr_assert_eq(l.ev[0].type, PK_WS_EV_CLOSE);
		cr_assert_eq(l.ev[0].code, good[i]);
		cr_assert_eq(l.ev[0].len, 3);
		cr_assert_arr_eq(l.ev[0].data, "bye", 3);
		log_free(&l);
	}
}

Test(ws_decode, close_without_code_reports_1005)
{
	uint8_t buf[16];
	struct log l;
	size_t n = mkframe(buf, FIN | CLOSE, "", 0, NULL);

	decode(PK_WS_CLIENT, NULL, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_CLOSE);
	cr_assert_eq(l.ev[0].code, 1005);
	cr_assert_eq(l.ev[0].len, 0);
	log_free(&l);
}

Test(ws_decode, rejects_close_reason_that_is_not_utf8)
{
	const char *bad[] = {"\xff",      "\xc0\x80",   "\xe0\x80\x80",    "\xed\xa0\x80",
	                     "\xe2\x82(", "ab\xe2\x82", "\xf4\x90\x80\x80"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t p[16], buf[32];
		size_t rl = strlen(bad[i]);
		close_payload(p, 1000);
		memcpy(p + 2, bad[i], rl);
		size_t n = cframe(buf, FIN | CLOSE, p, rl + 2);
		expect_server_error(buf, n, 1007, -EILSEQ, NULL);
	}
}

Test(ws_decode, accepts_utf8_close_reason)
{
	uint8_t p[32], buf[48];
	const char *r = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
	struct log l;

	close_payload(p, 1001);
	memcpy(p + 2, r, strlen(r));
	size_t n = cframe(buf, FIN | CLOSE, p, strlen(r) + 2);
	decode(PK_WS_SERVER, NULL, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.ev[0].len, strlen(r));
	log_free(&l);
}

Test(ws_decode, rejects_frame_over_max_frame)
{
	uint8_t buf[64];
	struct pk_ws_opts o = {.max_frame = 10};
	size_t n = cframe(buf, FIN | BIN, pattern(11), 11);

	expect_server_error(buf, n, 1009, -EMSGSIZE, &o);
}

Test(ws_decode, max_frame_allows_exact_size)
{
	uint8_t buf[64];
	struct pk_ws_opts o = {.max_frame = 10};
	struct log l;
	size_t n = cframe(buf, FIN | BIN, pattern(10), 10);

	decode(PK_WS_SERVER, &o, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.len, 10);
	log_free(&l);
}

Test(ws_decode, rejects_message_over_max_message_across_fragments)
{
	uint8_t buf[64];
	struct pk_ws_opts o = {.max_message = 10};
	struct log l;
	size_t n = cframe(buf, BIN, pattern(6), 6);

	n += cframe(buf + n, FIN | CONT, pattern(5), 5);
	decode(PK_WS_SERVER, &o, buf, n, &l);
	cr_assert(l.failed);
	cr_assert_eq(l.len, 6, "the first fragment was within the limit");
	cr_assert_eq(l.ev[0].code, 1009);
	cr_assert_eq(l.ev[0].err, -EMSGSIZE);
	log_free(&l);
}

Test(ws_decode, max_message_counts_each_message_separately)
{
	uint8_t buf[64];
	struct pk_ws_opts o = {.max_message = 10};
	struct log l;
	size_t n = cframe(buf, FIN | BIN, pattern(8), 8);

	n += cframe(buf + n, BIN, pattern(8), 8);
	n += cframe(buf + n, FIN | CONT, pattern(2), 2);
	decode(PK_WS_SERVER, &o, buf, n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.len, 18);
	log_free(&l);
}

Test(ws_decode, rejects_frame_after_close)
{
	uint8_t buf[32];
	struct log l;
	size_t n = cframe(buf, FIN | CLOSE, "", 0);

	n += cframe(buf + n, FIN | BIN, "a", 1);
	decode(PK_WS_SERVER, NULL, buf, n, &l);
	cr_assert_eq(l.nev, 2);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_CLOSE);
	cr_assert_eq(l.ev[1].type, PK_WS_EV_ERROR);
	cr_assert_eq(l.ev[1].code, 1002);
	cr_assert_eq(l.len, 0);
	log_free(&l);
}

Test(ws_decode, error_is_sticky)
{
	uint8_t buf[16];
	struct pk_ws ws;
	struct pk_ws_event ev;
	size_t n = mkframe(buf, FIN | BIN, "a", 1, NULL);

	pk_ws_init(&ws, PK_WS_SERVER, NULL);
	pk_ws_feed(&ws, buf, n, &ev);
	cr_assert_eq(ev.type, PK_WS_EV_ERROR);
	n = cframe(buf, FIN | BIN, "a", 1);
	cr_assert_eq(pk_ws_feed(&ws, buf, n, &ev), 0);
	cr_assert_eq(ev.type, PK_WS_EV_ERROR);
	cr_assert_eq(ev.code, 1002);
}

Test(ws_decode, error_is_reported_before_the_rest_of_the_header)
{
	uint8_t buf[2] = {FIN | BIN | 0x40, 0x80 | 127};
	struct pk_ws ws;
	struct pk_ws_event ev;

	pk_ws_init(&ws, PK_WS_SERVER, NULL);
	cr_assert_eq(pk_ws_feed(&ws, buf, 2, &ev), 2);
	cr_assert_eq(ev.type, PK_WS_EV_ERROR);
}

/* ---- splits -------------------------------------------------------------------------- */

static size_t build_stream(uint8_t *buf, const uint8_t *mask)
{
	uint8_t cp[8];
	size_t n = 0;

	n += mkframe(buf + n, BIN, pattern(300), 300, mask);
	n += mkframe(buf + n, FIN | PING, "ping!", 5, mask);
	n += mkframe(buf + n, CONT, "", 0, mask);
	n += mkframe(buf + n, FIN | CONT, pattern(200), 200, mask);
	n += mkframe(buf + n, FIN | BIN, "", 0, mask);
	n += mkframe(buf + n, FIN | PONG, pattern(125), 125, mask);
	n += mkframe_ext(buf + n, FIN | BIN, pattern(7), 7, mask, 8);
	n += mkframe(buf + n, FIN | BIN, pattern(70000), 70000, mask);
	close_payload(cp, 1000);
	memcpy(cp + 2, "bye", 3);
	n += mkframe(buf + n, FIN | CLOSE, cp, 5, mask);
	return n;
}

static void assert_same(const struct log *a, const struct log *b)
{
	cr_assert_eq(a->failed, b->failed);
	cr_assert_eq(a->len, b->len);
	cr_assert(a->len == 0 || memcmp(a->stream, b->stream, a->len) == 0);
	cr_assert_eq(a->nev, b->nev);
	for (size_t i = 0; i < a->nev; i++) {
		cr_assert_eq(a->ev[i].type, b->ev[i].type);
		cr_assert_eq(a->ev[i].at, b->ev[i].at);
		cr_assert_eq(a->ev[i].code, b->ev[i].code);
		cr_assert_eq(a->ev[i].len, b->ev[i].len);
		cr_assert(a->ev[i].len == 0 ||
		          memcmp(a->ev[i].data, b->ev[i].data, a->ev[i].len) == 0);
	}
}

static void check_splits(enum pk_ws_role role, const uint8_t *mask)
{
	static uint8_t raw[80000], copy[80000];
	size_t n = build_stream(raw, mask);
	struct log ref, l;

	decode(role, NULL, raw, n, &ref);
	cr_assert_not(ref.failed);
	cr_assert_eq(ref.len, 300 + 200 + 7 + 70000);
	cr_assert_eq(ref.nev, 7); /* ping, end, end, pong, end, end, close */

	/* Two pieces, split at every offset. */
	for (size_t k = 0; k <= n; k++) {
		struct pk_ws ws;

		memcpy(copy, raw, n);
		pk_ws_init(&ws, role, NULL);
		log_init(&l);
		feed(&ws, copy, k, &l);
		feed(&ws, copy + k, n - k, &l);
		assert_same(&ref, &l);
		log_free(&l);
	}

	/* One byte at a time. */
	struct pk_ws ws;
	memcpy(copy, raw, n);
	pk_ws_init(&ws, role, NULL);
	log_init(&l);
	for (size_t i = 0; i < n; i++)
		feed(&ws, copy + i, 1, &l);
	assert_same(&ref, &l);
	log_free(&l);
	log_free(&ref);
}

Test(ws_split, server_role_every_offset_and_bytewise, .timeout = 60)
{
	check_splits(PK_WS_SERVER, test_key);
}

Test(ws_split, client_role_every_offset_and_bytewise, .timeout = 60)
{
	check_splits(PK_WS_CLIENT, NULL);
}

/* ---- round trips --------------------------------------------------------------------- */

/* Encodes one binary message of len bytes with sender's role, using the copying masker,
 * then decodes it with the opposite role. */
static void roundtrip(enum pk_ws_role sender, size_t len)
{
	struct pk_ws tx;
	struct pk_ws_mask m;
	uint8_t *wire = malloc(len + PK_WS_MAX_HEADER);
	struct log l;

	pk_ws_init(&tx, sender, NULL);
	int h = pk_ws_header(&tx, wire, PK_WS_OP_BINARY, true, len, &m);
	cr_assert_gt(h, 0);
	cr_assert_eq(m.on, sender == PK_WS_CLIENT);
	pk_ws_mask_copy(&m, wire + h, pattern(len), len);
	decode(sender == PK_WS_CLIENT ? PK_WS_SERVER : PK_WS_CLIENT, NULL, wire, (size_t)h + len,
	       &l);
	cr_assert_not(l.failed, "len %zu", len);
	cr_assert_eq(l.len, len);
	cr_assert(len == 0 || memcmp(l.stream, pattern(len), len) == 0);
	cr_assert_eq(l.nev, 1);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_MESSAGE_END);
	log_free(&l);
	free(wire);
}

static const size_t rt_sizes[] = {0, 125, 126, 65535, 65536, 1 << 20};

Test(ws_roundtrip, client_to_server)
{
	for (size_t i = 0; i < sizeof(rt_sizes) / sizeof(rt_sizes[0]); i++)
		roundtrip(PK_WS_CLIENT, rt_sizes[i]);
}

Test(ws_roundtrip, server_to_client)
{
	for (size_t i = 0; i < sizeof(rt_sizes) / sizeof(rt_sizes[0]); i++)
		roundtrip(PK_WS_SERVER, rt_sizes[i]);
}

Test(ws_encode, mask_inplace_in_pieces_equals_mask_copy)
{
	struct pk_ws tx;
	struct pk_ws_mask m1, m2;
	uint8_t h[PK_WS_MAX_HEADER];
	size_t len = 1001;
	uint8_t *a = malloc(len), *b = malloc(len);

	pk_ws_init(&tx, PK_WS_CLIENT, NULL);
	cr_assert_gt(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, len, &m1), 0);
	m2 = m1;
	pk_ws_mask_copy(&m1, a, pattern(len), len);
	memcpy(b, pattern(len), len);
	/* Odd piece sizes so the key offset has to carry over. */
	size_t pieces[] = {1, 3, 7, 8, 9, 500, 473};
	size_t off = 0;
	for (size_t i = 0; i < 7; i++) {
		pk_ws_mask_inplace(&m2, b + off, pieces[i]);
		off += pieces[i];
	}
	cr_assert_eq(off, len);
	cr_assert_arr_eq(a, b, len);
	cr_assert_eq(m1.off, m2.off);
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(a[i], pattern(len)[i] ^ m1.key[i % 4]);
	free(a);
	free(b);
}

Test(ws_encode, server_role_does_not_mask)
{
	struct pk_ws tx;
	struct pk_ws_mask m;
	uint8_t h[PK_WS_MAX_HEADER], out[8];

	pk_ws_init(&tx, PK_WS_SERVER, NULL);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 5, &m), 2);
	cr_assert_eq(h[1], 5);
	pk_ws_mask_copy(&m, out, (const uint8_t *)"hello", 5);
	cr_assert_arr_eq(out, "hello", 5);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 5, NULL), 2);
}

Test(ws_encode, client_keys_differ_between_frames)
{
	struct pk_ws tx;
	struct pk_ws_mask m1, m2;
	uint8_t h[PK_WS_MAX_HEADER];

	pk_ws_init(&tx, PK_WS_CLIENT, NULL);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 1, &m1), 6);
	cr_assert_arr_eq(h + 2, m1.key, 4);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 1, &m2), 6);
	cr_assert_arr_neq(m1.key, m2.key, 4);
}

Test(ws_encode, header_state_errors)
{
	struct pk_ws tx;
	struct pk_ws_mask m;
	uint8_t h[PK_WS_MAX_HEADER], out[PK_WS_MAX_CONTROL_FRAME];

	pk_ws_init(&tx, PK_WS_CLIENT, NULL);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 1, NULL), -EINVAL);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_PONG, true, 126, &m), -EINVAL);
	cr_assert_gt(pk_ws_close(&tx, out, sizeof(out), 1000, NULL, 0), 0);
	cr_assert(tx.close_sent);
	cr_assert_eq(pk_ws_header(&tx, h, PK_WS_OP_BINARY, true, 1, &m), -EPIPE);
	cr_assert_eq(pk_ws_control(&tx, out, sizeof(out), PK_WS_OP_PING, NULL, 0), -EPIPE);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 1000, NULL, 0), -EPIPE);
}

Test(ws_encode, close_frame_round_trip)
{
	struct pk_ws tx;
	uint8_t out[PK_WS_MAX_CONTROL_FRAME];
	struct log l;

	pk_ws_init(&tx, PK_WS_CLIENT, NULL);
	int n = pk_ws_close(&tx, out, sizeof(out), 1001, "going", 5);
	cr_assert_eq(n, 6 + 7);
	decode(PK_WS_SERVER, NULL, out, (size_t)n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_CLOSE);
	cr_assert_eq(l.ev[0].code, 1001);
	cr_assert_arr_eq(l.ev[0].data, "going", 5);
	log_free(&l);
}

Test(ws_encode, close_without_code_is_empty)
{
	struct pk_ws tx;
	uint8_t out[PK_WS_MAX_CONTROL_FRAME];

	pk_ws_init(&tx, PK_WS_SERVER, NULL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 0, NULL, 0), 2);
	cr_assert(out[0] == 0x88 && out[1] == 0);
}

Test(ws_encode, close_rejects_bad_arguments)
{
	struct pk_ws tx;
	uint8_t out[PK_WS_MAX_CONTROL_FRAME];
	char reason[124];

	memset(reason, 'r', sizeof(reason));
	pk_ws_init(&tx, PK_WS_SERVER, NULL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 1005, NULL, 0), -EINVAL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 999, NULL, 0), -EINVAL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 0, "x", 1), -EINVAL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 1000, reason, 124), -EINVAL);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 1000, "\xff", 1), -EINVAL);
	cr_assert_eq(pk_ws_close(&tx, out, 4, 1000, "abc", 3), -ENOSPC);
	cr_assert_not(tx.close_sent);
	cr_assert_eq(pk_ws_close(&tx, out, sizeof(out), 1000, reason, 123), 2 + 125);
}

Test(ws_encode, ping_round_trip_and_errors)
{
	struct pk_ws tx;
	uint8_t out[PK_WS_MAX_CONTROL_FRAME];
	struct log l;

	pk_ws_init(&tx, PK_WS_CLIENT, NULL);
	cr_assert_eq(pk_ws_control(&tx, out, sizeof(out), PK_WS_OP_BINARY, NULL, 0), -EINVAL);
	cr_assert_eq(pk_ws_control(&tx, out, sizeof(out), PK_WS_OP_PING, pattern(126), 126),
	             -EINVAL);
	cr_assert_eq(pk_ws_control(&tx, out, 9, PK_WS_OP_PING, (const uint8_t *)"abcd", 4),
	             -ENOSPC);
	int n = pk_ws_control(&tx, out, sizeof(out), PK_WS_OP_PING, pattern(125), 125);
	cr_assert_eq(n, 6 + 125);
	decode(PK_WS_SERVER, NULL, out, (size_t)n, &l);
	cr_assert_not(l.failed);
	cr_assert_eq(l.ev[0].type, PK_WS_EV_PING);
	cr_assert_eq(l.ev[0].len, 125);
	cr_assert_arr_eq(l.ev[0].data, pattern(125), 125);
	log_free(&l);
}
