/* proto/http1: head parsing, rejections, framing, proxy head builder, endpoint rule. */
#include "proto/http1.h"

#include <criterion/criterion.h>

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static struct pk_http1_parser P;

static void fini(void)
{
	pk_http1_parser_free(&P);
}

/* Feeds s in one piece; returns feed's result; *used (if given) gets the bytes used. */
static int parse_type(enum pk_http1_type type, const char *s, size_t *used)
{
	size_t u;
	pk_http1_parser_free(&P);
	cr_assert_eq(pk_http1_parser_init(&P, type, NULL), 0);
	int r = pk_http1_parser_feed(&P, s, strlen(s), &u);
	if (used)
		*used = u;
	return r;
}

static int req(const char *s)
{
	return parse_type(PK_HTTP1_REQUEST, s, NULL);
}

static int resp(const char *s)
{
	return parse_type(PK_HTTP1_RESPONSE, s, NULL);
}

/* Asserts that s is rejected with status, and that nothing was accepted. */
static void assert_rejected(enum pk_http1_type type, const char *s, int status)
{
	size_t len;
	int r = parse_type(type, s, NULL);
	cr_assert_eq(r, -EPROTO, "expected rejection of %s, got %d", s, r);
	cr_assert_eq(P.error_status, status, "status %d (%s), expected %d for %s", P.error_status,
	             P.error_reason, status, s);
	cr_assert_not_null(P.error_reason);
	cr_assert_null(pk_http1_raw_head(&P, &len));
	cr_assert_eq(len, 0);
	size_t u;
	cr_assert_eq(pk_http1_parser_feed(&P, "x", 1, &u), -EINVAL, "a failed parser stays failed");
	pk_http1_parser_free(&P);
}

#define REJECT_REQ(s, st)  assert_rejected(PK_HTTP1_REQUEST, s, st)
#define REJECT_RESP(s, st) assert_rejected(PK_HTTP1_RESPONSE, s, st)

static int span_is(struct pk_http1_span s, const char *want)
{
	return s.len == strlen(want) && memcmp(pk_http1_ptr(&P, s), want, s.len) == 0;
}

/* Runs libhttp-parser 2.9.4 alone over s; returns its errno. */
static enum http_errno lib_parse(enum http_parser_type type, const char *s)
{
	http_parser hp;
	http_parser_settings st;
	http_parser_settings_init(&st);
	http_parser_init(&hp, type);
	http_parser_execute(&hp, &st, s, strlen(s));
	return HTTP_PARSER_ERRNO(&hp);
}

/* ---- libhttp-parser's own behaviour (DESIGN.md section 8 claims) ---- */

TestSuite(lib);

Test(lib, rejects_content_length_with_transfer_encoding)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	                                     "Transfer-Encoding: chunked\r\n\r\n"),
	             HPE_UNEXPECTED_CONTENT_LENGTH);
}

Test(lib, rejects_differing_duplicate_content_length)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	                                     "Content-Length: 6\r\n\r\n"),
	             HPE_UNEXPECTED_CONTENT_LENGTH);
}

Test(lib, rejects_equal_duplicate_content_length_too)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	                                     "Content-Length: 5\r\n\r\n"),
	             HPE_UNEXPECTED_CONTENT_LENGTH);
}

Test(lib, rejects_plus_sign_content_length)
{
	cr_assert_eq(
	    lib_parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
	    HPE_INVALID_CONTENT_LENGTH);
}

Test(lib, rejects_request_transfer_encoding_not_ending_in_chunked)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\n"
	                                     "Transfer-Encoding: chunked, gzip\r\n\r\n"),
	             HPE_INVALID_TRANSFER_ENCODING);
}

Test(lib, accepts_obs_fold)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
	             HPE_OK);
}

Test(lib, accepts_whitespace_before_colon)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "GET / HTTP/1.1\r\nHost : a\r\n\r\n"), HPE_OK);
}

Test(lib, accepts_bare_lf)
{
	cr_assert_eq(lib_parse(HTTP_REQUEST, "GET / HTTP/1.1\nHost: a\n\n"), HPE_OK);
}

/* ---- libhttp-parser's rejections surface as ours ---- */

TestSuite(reject, .fini = fini);

Test(reject, content_length_with_transfer_encoding)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	           "Transfer-Encoding: chunked\r\n\r\n",
	           400);
}

Test(reject, transfer_encoding_then_content_length)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	           "Content-Length: 5\r\n\r\n",
	           400);
}

Test(reject, content_length_with_transfer_encoding_reports_library_errno)
{
	cr_assert_eq(req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	                 "Transfer-Encoding: chunked\r\n\r\n"),
	             -EPROTO);
	cr_assert_eq(P.hp_errno, HPE_UNEXPECTED_CONTENT_LENGTH);
	cr_assert_str_eq(P.error_reason, "content-length with transfer-encoding");
}

Test(reject, differing_content_lengths)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	           400);
}

Test(reject, equal_repeated_content_lengths)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
	           400);
}

Test(reject, content_length_syntax)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n", 400);
}

Test(reject, transfer_encoding_not_ending_in_chunked)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	           "Transfer-Encoding: identity\r\n\r\n",
	           400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400);
}

Test(reject, chunked_twice)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
	           400);
}

Test(reject, other_codings_before_chunked_are_unsupported)
{
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
	           "Transfer-Encoding: chunked\r\n\r\n",
	           501);
}

Test(reject, transfer_encoding_in_http10_request)
{
	REJECT_REQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

Test(reject, obs_fold)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
}

Test(reject, whitespace_before_colon)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
	REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400);
}

/* libhttp-parser, built without strict mode, takes spaces inside a field name; a proxy must
 * not pass "Transfer-Encoding x" on (found by fuzz_http1: the re-parsed forward failed). */
Test(reject, field_name_that_is_not_a_token)
{
	static const char *const names[] = {"Transfer-Encoding c",
	                                    "X Y",
	                                    "X\tY",
	                                    "X(Y)",
	                                    "X\"Y",
	                                    "X/Y",
	                                    "X,Y",
	                                    "X@Y",
	                                    "X[Y]",
	                                    "X{Y}",
	                                    "X=Y",
	                                    "X?Y",
	                                    "X\x80Y",
	                                    "X;Y",
	                                    "X\\Y"};
	char head[128];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: a\r\n%s: v\r\n\r\n",
		         names[i]);
		assert_rejected(PK_HTTP1_REQUEST, head, 400);
		snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n%s: v\r\n\r\n", names[i]);
		assert_rejected(PK_HTTP1_RESPONSE, head, 400);
	}
	/* a longer name that libhttp-parser would take for Transfer-Encoding */
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding-: x\r\n\r\n", 400);
	REJECT_REQ("GET /c HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n"
	           "transfer-encodingX: x\r\n\r\n",
	           400);
	REJECT_RESP("HTTP/1.1 200 OK\r\nTRANSFER-ENCODING0: x\r\n\r\n", 400);
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encodin: x\r\n\r\n"), 1);
	/* every tchar is fine */
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\nA!#$%&'*+-.^_`|~z09: v\r\n\r\n"), 1);
	cr_assert_eq(P.n_headers, 2);
}

Test(reject, bare_lf)
{
	REJECT_REQ("GET / HTTP/1.1\nHost: a\n\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
	REJECT_REQ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

Test(reject, cr_in_field_value)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n", 400);
}

Test(reject, nul_in_field_value)
{
	static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
	size_t u;
	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&P, s, sizeof(s) - 1, &u), -EPROTO);
	cr_assert_eq(P.error_status, 400);
	cr_assert_str_eq(P.error_reason, "NUL in head");
}

/* The scanner skips ordinary bytes a word at a time: a control byte must be caught at
 * every offset and alignment, and tab and bytes 0x80-0xff (obs-text) must still pass. */
Test(reject, control_byte_at_every_offset_of_a_long_value)
{
	static const unsigned char bad[] = {0x00, 0x01, 0x08, 0x0b, 0x1f, 0x7f, '\n'};
	static const unsigned char good[] = {'\t', 0x80, 0xa0, 0xfe, 0xff, 0x20, 0x7e};
	char head[128];
	size_t u;
	for (size_t skew = 0; skew < 8; skew++) {
		for (size_t k = 0; k < 40; k++) {
			for (int good_pass = 0; good_pass < 2; good_pass++) {
				const unsigned char *set = good_pass ? good : bad;
				size_t nset = good_pass ? sizeof(good) : sizeof(bad);
				for (size_t b = 0; b < nset; b++) {
					int n = snprintf(head, sizeof(head),
					                 "GET / HTTP/1.1\r\nHost: a\r\n%.*sX: ",
					                 (int)skew, "ZZZZZZZZ");
					size_t vstart = (size_t)n;
					memset(head + vstart, 'v', 40);
					head[vstart + k] = (char)set[b];
					memcpy(head + vstart + 40, "v\r\n\r\n", 6);
					size_t len = vstart + 46;
					pk_http1_parser_free(&P);
					cr_assert_eq(
					    pk_http1_parser_init(&P, PK_HTTP1_REQUEST, NULL), 0);
					int r = pk_http1_parser_feed(&P, head, len, &u);
					if (good_pass) {
						cr_assert_eq(r, 1,
						             "byte 0x%02x at %zu (skew %zu): %s",
						             set[b], k, skew,
						             P.error_reason ? P.error_reason : "");
					} else {
						cr_assert_eq(r, -EPROTO,
						             "byte 0x%02x at %zu (skew %zu) passed",
						             set[b], k, skew);
						cr_assert_eq(P.error_status, 400);
						cr_assert_eq(u, vstart + k, "stopped at the byte");
					}
				}
			}
		}
	}
}

Test(reject, control_characters)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fz\r\n\r\n", 400);
	REJECT_REQ("GET /\x1b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

Test(reject, header_without_colon_or_name)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nBad[name]: v\r\n\r\n", 400);
}

Test(reject, connect)
{
	REJECT_REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400);
}

Test(reject, absolute_form_toward_another_host)
{
	REJECT_REQ("GET http://evil.example/x HTTP/1.1\r\nHost: foo.piko.example.com\r\n\r\n", 400);
	REJECT_REQ(
	    "GET http://foo.piko.example.com:81/ HTTP/1.1\r\nHost: foo.piko.example.com\r\n\r\n",
	    400);
	REJECT_REQ("GET http://x/ HTTP/1.0\r\n\r\n", 400);
}

Test(reject, absolute_form_with_userinfo)
{
	REJECT_REQ("GET http://u@a.b/ HTTP/1.1\r\nHost: u@a.b\r\n\r\n", 400);
}

Test(reject, other_target_forms)
{
	REJECT_REQ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

Test(reject, missing_host_in_http11)
{
	REJECT_REQ("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400);
}

Test(reject, multiple_host)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400);
}

Test(reject, host_with_bad_characters)
{
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", 400);
}

Test(reject, bad_versions)
{
	REJECT_REQ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
	REJECT_REQ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
	REJECT_REQ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
	REJECT_REQ("GET / HTTP/11.1\r\nHost: a\r\n\r\n", 505);
	REJECT_RESP("HTTP/2.0 200 OK\r\n\r\n", 505);
}

Test(reject, malformed_request_lines)
{
	REJECT_REQ("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
	REJECT_REQ(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	REJECT_REQ("GET\r\n\r\n", 400);
}

Test(reject, unknown_method)
{
	REJECT_REQ("BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501);
	REJECT_REQ("get / HTTP/1.1\r\nHost: a\r\n\r\n", 501);
}

Test(reject, malformed_status_lines)
{
	REJECT_RESP("HTTP/1.1 20 OK\r\n\r\n", 400);
	REJECT_RESP("HTTP/1.1 2000 OK\r\n\r\n", 400);
	REJECT_RESP("HTTP/1.1  200 OK\r\n\r\n", 400);
	REJECT_RESP("HTTP/1.1 099 OK\r\n\r\n", 400);
	REJECT_RESP("ICY 200 OK\r\n\r\n", 400);
}

Test(reject, response_content_length_rules)
{
	REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
	REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	            400);
	REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", 400);
}

Test(reject, response_bare_lf_and_fold)
{
	REJECT_RESP("HTTP/1.1 200 OK\nContent-Length: 0\n\n", 400);
	REJECT_RESP("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400);
}

/* ---- limits ---- */

static char *make_head_of_size(size_t total)
{
	/* "GET / HTTP/1.1\r\nHost: a\r\nX: vvv...\r\n\r\n" of exactly total bytes */
	const char *pre = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
	size_t fixed = strlen(pre) + 4;
	char *s = malloc(total + 1);
	cr_assert(total > fixed);
	strcpy(s, pre);
	memset(s + strlen(pre), 'v', total - fixed);
	strcpy(s + total - 4, "\r\n\r\n");
	return s;
}

Test(reject, head_at_limit_is_accepted_one_more_is_431)
{
	struct pk_http1_limits lim = {.max_head_bytes = 1000};
	size_t u;
	char *ok = make_head_of_size(1000), *big = make_head_of_size(1001);

	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, &lim), 0);
	cr_assert_eq(pk_http1_parser_feed(&P, ok, 1000, &u), 1);
	pk_http1_parser_reset(&P);
	cr_assert_eq(pk_http1_parser_feed(&P, big, 1001, &u), -EPROTO);
	cr_assert_eq(P.error_status, 431);
	cr_assert_eq(u, 1000, "rejected at the first byte past the limit");
	free(ok);
	free(big);
}

Test(reject, oversize_head_fed_in_pieces_is_431_before_the_end)
{
	struct pk_http1_limits lim = {.max_head_bytes = 512};
	char *big = make_head_of_size(4096);
	size_t u;
	int r = 0;
	size_t off = 0;

	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, &lim), 0);
	while (off < 4096 && (r = pk_http1_parser_feed(&P, big + off, 100, &u)) == 0)
		off += 100;
	cr_assert_eq(r, -EPROTO);
	cr_assert_eq(P.error_status, 431);
	cr_assert_eq(off, 500, "the feed that crossed 512 bytes failed");
	free(big);
}

Test(reject, default_limit_is_64k)
{
	char *big = make_head_of_size(PK_HTTP1_DEFAULT_MAX_HEAD + 1);
	size_t u;
	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&P, big, PK_HTTP1_DEFAULT_MAX_HEAD + 1, &u), -EPROTO);
	cr_assert_eq(P.error_status, 431);
	free(big);
}

Test(reject, large_limit_above_libhttp_parser_default)
{
	/* 200 KiB is above libhttp-parser's built-in 80 KiB; our limit rules. */
	struct pk_http1_limits lim = {.max_head_bytes = 200 * 1024};
	char *s = make_head_of_size(150 * 1024);
	size_t u;
	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, &lim), 0);
	cr_assert_eq(pk_http1_parser_feed(&P, s, 150 * 1024, &u), 1, "%s", P.error_reason);
	free(s);
}

static char *make_n_headers(unsigned n)
{
	char *s = malloc(64 + n * 16);
	size_t len = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (unsigned i = 1; i < n; i++)
		len += (size_t)sprintf(s + len, "X-%u: v\r\n", i);
	strcpy(s + len, "\r\n");
	return s;
}

Test(reject, header_count_limit)
{
	struct pk_http1_limits lim = {.max_headers = 10};
	char *ten = make_n_headers(10), *eleven = make_n_headers(11);
	size_t u;

	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, &lim), 0);
	cr_assert_eq(pk_http1_parser_feed(&P, ten, strlen(ten), &u), 1);
	cr_assert_eq(P.n_headers, 10);
	pk_http1_parser_reset(&P);
	cr_assert_eq(pk_http1_parser_feed(&P, eleven, strlen(eleven), &u), -EPROTO);
	cr_assert_eq(P.error_status, 431);
	free(ten);
	free(eleven);
}

Test(reject, default_header_count_is_100)
{
	char *s = make_n_headers(101);
	REJECT_REQ(s, 431);
	free(s);
}

/* ---- accepted heads ---- */

TestSuite(head, .fini = fini);

static const char REQ1[] = "POST /api/v1/items?x=1 HTTP/1.1\r\n"
                           "Host: foo.piko.example.com:9000\r\n"
                           "User-Agent: test/1.0\r\n"
                           "Accept: */*\r\n"
                           "Content-Length: 5\r\n"
                           "X-Empty:\r\n"
                           "X-Multi: one\r\n"
                           "X-Pad:   padded value \t \r\n"
                           "x-multi: two\r\n"
                           "\r\n";

Test(head, request_fields)
{
	size_t used, len;
	cr_assert_eq(parse_type(PK_HTTP1_REQUEST, REQ1, &used), 1);
	cr_assert_eq(used, strlen(REQ1));
	cr_assert(span_is(P.method, "POST"));
	cr_assert(span_is(P.target, "/api/v1/items?x=1"));
	cr_assert_eq(P.version_minor, 1);
	cr_assert_eq(P.n_headers, 8);
	cr_assert(span_is(P.headers[0].name, "Host"));
	cr_assert(span_is(P.headers[0].value, "foo.piko.example.com:9000"));
	cr_assert(span_is(P.headers[4].name, "X-Empty"));
	cr_assert(span_is(P.headers[4].value, ""));
	cr_assert(span_is(P.headers[6].value, "padded value"));
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(P.content_length, 5);
	cr_assert_eq(P.keep_alive, 1);
	cr_assert_eq(P.upgrade, 0);
	const char *raw = pk_http1_raw_head(&P, &len);
	cr_assert_eq(len, strlen(REQ1));
	cr_assert_eq(memcmp(raw, REQ1, len), 0);
}

Test(head, header_lookup_helpers)
{
	size_t len;
	cr_assert_eq(req(REQ1), 1);
	cr_assert_eq(pk_http1_find(&P, "x-multi", 0), 5);
	cr_assert_eq(pk_http1_find(&P, "X-MULTI", 6), 7);
	cr_assert_eq(pk_http1_find(&P, "x-multi", 8), -1);
	cr_assert_eq(pk_http1_find(&P, "nope", 0), -1);
	cr_assert_eq(pk_http1_count(&P, "x-multi"), 2);
	const char *v = pk_http1_get(&P, "user-agent", &len);
	cr_assert_eq(len, 8);
	cr_assert_eq(memcmp(v, "test/1.0", 8), 0);
	cr_assert_null(pk_http1_get(&P, "nope", &len));
	cr_assert_eq(len, 0);
}

Test(head, known_names_get_their_id_in_any_case)
{
	static const struct {
		const char *name;
		enum pk_http1_known id;
	} names[] = {
	    {"host", PK_H_HOST},
	    {"content-length", PK_H_CONTENT_LENGTH},
	    {"transfer-encoding", PK_H_TRANSFER_ENCODING},
	    {"connection", PK_H_CONNECTION},
	    {"upgrade", PK_H_UPGRADE},
	    {"keep-alive", PK_H_KEEP_ALIVE},
	    {"proxy-connection", PK_H_PROXY_CONNECTION},
	    {"proxy-authenticate", PK_H_PROXY_AUTHENTICATE},
	    {"proxy-authorization", PK_H_PROXY_AUTHORIZATION},
	    {"te", PK_H_TE},
	    {"trailer", PK_H_TRAILER},
	    {"x-forwarded-for", PK_H_X_FORWARDED_FOR},
	    {"x-forwarded-proto", PK_H_X_FORWARDED_PROTO},
	    {"x-piko-forward", PK_H_X_PIKO_FORWARD},
	    {"x-piko-endpoint", PK_H_X_PIKO_ENDPOINT},
	};
	cr_assert_eq(sizeof(names) / sizeof(names[0]), PK_H__COUNT - 1, "every id is listed");
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char up[32], cut[32];
		size_t n = strlen(names[i].name);
		for (size_t k = 0; k <= n; k++)
			up[k] = (char)toupper((unsigned char)names[i].name[k]);
		cr_assert_eq(pk_http1_known_id(names[i].name, n), names[i].id, "%s", names[i].name);
		cr_assert_eq(pk_http1_known_id(up, n), names[i].id, "%s", up);
		/* one byte short, one byte off, one byte more: not the name */
		cr_assert_eq(pk_http1_known_id(names[i].name, n - 1), PK_H_OTHER, "%s-1", up);
		memcpy(cut, names[i].name, n + 1);
		cut[n - 1] ^= 0x01;
		cr_assert_eq(pk_http1_known_id(cut, n), PK_H_OTHER, "%s", cut);
		memcpy(cut, names[i].name, n);
		cut[n] = 's';
		cr_assert_eq(pk_http1_known_id(cut, n + 1), PK_H_OTHER, "%.*s", (int)n + 1, cut);
	}
	cr_assert_eq(pk_http1_known_id("x-forwarded-host", 16), PK_H_OTHER);
	cr_assert_eq(pk_http1_known_id("", 0), PK_H_OTHER);

	/* After a parse: each header carries its id, and lookups by id or by name agree. */
	cr_assert_eq(req("GET / HTTP/1.1\r\nHOST: a\r\nX-Other: 1\r\ntE: trailers\r\n"
	                 "te: x\r\n\r\n"),
	             1);
	cr_assert_eq(P.headers[0].known, PK_H_HOST);
	cr_assert_eq(P.headers[1].known, PK_H_OTHER);
	cr_assert_eq(P.headers[2].known, PK_H_TE);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_TE, 0), 2);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_TE, 3), 3);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_TE, 4), -1);
	cr_assert_eq(pk_http1_find(&P, "TE", 3), 3);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_UPGRADE, 0), -1);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_OTHER, 0), -1);
	cr_assert_eq(pk_http1_find(&P, "x-other", 0), 1);
	/* The next message on the same parser forgets the previous one's headers. */
	pk_http1_parser_reset(&P);
	size_t u;
	static const char second[] = "GET / HTTP/1.1\r\nHost: b\r\n\r\n";
	cr_assert_eq(pk_http1_parser_feed(&P, second, sizeof(second) - 1, &u), 1);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_TE, 0), -1);
	cr_assert_eq(pk_http1_find_known(&P, PK_H_HOST, 0), 0);
}

Test(head, has_token)
{
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo , Keep-Alive\r\n"
	                 "Connection: ,bar,\r\n\r\n"),
	             1);
	cr_assert(pk_http1_has_token(&P, "connection", "keep-alive"));
	cr_assert(pk_http1_has_token(&P, "connection", "FOO"));
	cr_assert(pk_http1_has_token(&P, "connection", "bar"));
	cr_assert_not(pk_http1_has_token(&P, "connection", "close"));
	cr_assert_not(pk_http1_has_token(&P, "connection", "keep"));
	cr_assert_not(pk_http1_has_token(&P, "upgrade", "bar"));
}

Test(head, leading_empty_lines_are_skipped)
{
	static const char s[] = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
	size_t used, len;
	cr_assert_eq(parse_type(PK_HTTP1_REQUEST, s, &used), 1);
	cr_assert_eq(used, sizeof(s) - 1);
	const char *raw = pk_http1_raw_head(&P, &len);
	cr_assert_eq(len, sizeof(s) - 1 - 4);
	cr_assert_eq(memcmp(raw, s + 4, len), 0);
}

Test(head, http10_without_host)
{
	cr_assert_eq(req("GET / HTTP/1.0\r\n\r\n"), 1);
	cr_assert_eq(P.version_minor, 0);
	cr_assert_eq(P.keep_alive, 0);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_NONE);
}

Test(head, absolute_form_matching_host_is_accepted)
{
	cr_assert_eq(req("GET http://Foo.Piko.example.com:9000/x?y HTTP/1.1\r\n"
	                 "Host: foo.piko.example.com:9000\r\n\r\n"),
	             1);
	cr_assert(span_is(P.target, "http://Foo.Piko.example.com:9000/x?y"));
	cr_assert_eq(req("GET https://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n"), 1);
}

Test(head, options_asterisk)
{
	cr_assert_eq(req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 1);
}

Test(head, empty_host_is_allowed)
{
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 1);
}

Test(head, obs_text_in_value_is_allowed)
{
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n"), 1);
}

Test(head, response_fields)
{
	cr_assert_eq(resp("HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\n"), 1);
	cr_assert_eq(P.status, 404);
	cr_assert(span_is(P.reason, "Not Found"));
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(P.content_length, 12);
	cr_assert_eq(P.keep_alive, 1);
}

/* Responses are split by proto/http1 alone: names and values as the spans say, and a tab
 * (OWS) beside Content-Length's digits trimmed like any value's, where libhttp-parser would
 * refuse it. */
Test(head, response_header_spans)
{
	cr_assert_eq(resp("HTTP/1.1 200 OK\r\nContent-Length:\t5\t\r\nX-A:b: c \r\nX-E:\r\n"
	                  "Set-Cookie: a=1\r\n\r\n"),
	             1);
	cr_assert_eq(P.n_headers, 4);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(P.content_length, 5);
	cr_assert(span_is(P.headers[1].name, "X-A"));
	cr_assert(span_is(P.headers[1].value, "b: c"));
	cr_assert(span_is(P.headers[2].name, "X-E"));
	cr_assert_eq(P.headers[2].value.len, 0);
	cr_assert_eq(pk_http1_count(&P, "set-cookie"), 1);
}

Test(head, response_without_reason)
{
	cr_assert_eq(resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), 1);
	cr_assert_eq(P.status, 200);
	cr_assert_eq(P.reason.len, 0);
	cr_assert_eq(resp("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"), 1);
	cr_assert_eq(P.reason.len, 0);
}

Test(head, feed_after_completion_is_einval)
{
	size_t u;
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 1);
	cr_assert_eq(pk_http1_parser_feed(&P, "G", 1, &u), -EINVAL);
}

Test(head, init_rejects_unknown_type)
{
	cr_assert_eq(pk_http1_parser_init(&P, (enum pk_http1_type)7, NULL), -EINVAL);
}

/* ---- framing, keep-alive, upgrade ---- */

TestSuite(framing, .fini = fini);

Test(framing, request_kinds)
{
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_NONE);
	cr_assert_eq(req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(P.content_length, 0);
	cr_assert_eq(req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_CHUNKED);
	cr_assert_eq(req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999\r\n\r\n"),
	             1);
	cr_assert_eq(P.content_length, 999999999999999ULL);
}

Test(framing, response_kinds)
{
	cr_assert_eq(resp("HTTP/1.1 200 OK\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_UNTIL_CLOSE);
	cr_assert_eq(P.keep_alive, 0);
	cr_assert_eq(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_CHUNKED);
	cr_assert_eq(P.keep_alive, 1);
	cr_assert_eq(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_CHUNKED);
	cr_assert_eq(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_UNTIL_CLOSE);
	cr_assert_eq(resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_UNTIL_CLOSE);
}

Test(framing, responses_without_body)
{
	static const char *const heads[] = {
	    "HTTP/1.1 100 Continue\r\n\r\n",
	    "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
	    "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "HTTP/1.1 199 Whatever\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
		cr_assert_eq(resp(heads[i]), 1);
		cr_assert_eq(P.body_kind, PK_HTTP1_BODY_NONE, "%s", heads[i]);
		cr_assert_eq(P.content_length, 0);
		cr_assert_eq(P.keep_alive, 1);
		pk_http1_parser_free(&P);
	}
}

Test(framing, response_to_head)
{
	size_t u;
	static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_RESPONSE, NULL), 0);
	pk_http1_parser_response_to_head(&P, 1);
	cr_assert_eq(pk_http1_parser_feed(&P, s, sizeof(s) - 1, &u), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_NONE);
	cr_assert_eq(P.keep_alive, 1);
	pk_http1_parser_reset(&P);
	cr_assert_eq(P.is_head_response, 0, "reset clears the HEAD flag");
	cr_assert_eq(pk_http1_parser_feed(&P, s, sizeof(s) - 1, &u), 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_LENGTH);
}

struct ka_case {
	const char *head;
	int keep_alive;
};

Test(framing, keep_alive_table)
{
	static const struct ka_case cases[] = {
	    {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 0},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n", 0},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", 1},
	    {"GET / HTTP/1.0\r\n\r\n", 0},
	    {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
	    {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nConnection: close\r\n\r\n", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(req(cases[i].head), 1);
		cr_assert_eq(P.keep_alive, cases[i].keep_alive, "%s", cases[i].head);
		pk_http1_parser_free(&P);
	}
}

Test(framing, websocket_upgrade_request)
{
	cr_assert_eq(req("GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
	                 "Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n"),
	             1);
	cr_assert_eq(P.upgrade, 1);
}

Test(framing, not_an_upgrade)
{
	static const char *const heads[] = {
	    "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
	    "POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
	    "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
		cr_assert_eq(req(heads[i]), 1);
		cr_assert_eq(P.upgrade, 0, "%s", heads[i]);
		pk_http1_parser_free(&P);
	}
}

Test(framing, switching_protocols_response)
{
	cr_assert_eq(resp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
	                  "Upgrade: websocket\r\n\r\n"),
	             1);
	cr_assert_eq(P.upgrade, 1);
	cr_assert_eq(P.body_kind, PK_HTTP1_BODY_NONE);
	cr_assert_eq(P.keep_alive, 0);
}

/* ---- split invariance ---- */

TestSuite(split, .fini = fini);

struct snapshot {
	int r;
	size_t used_total;
	int status;
	const char *reason;
	char raw[2048];
	size_t raw_len;
	struct pk_http1_span method, target, rphrase;
	unsigned vminor, code, n;
	struct pk_http1_header h[32];
	int body_kind, keep_alive, upgrade;
	uint64_t cl;
};

static void snap(struct snapshot *s, int r, size_t used_total)
{
	const char *raw;
	memset(s, 0, sizeof(*s));
	s->r = r;
	s->used_total = used_total;
	if (r < 0) {
		s->status = P.error_status;
		s->reason = P.error_reason;
		return;
	}
	raw = pk_http1_raw_head(&P, &s->raw_len);
	cr_assert(s->raw_len <= sizeof(s->raw));
	memcpy(s->raw, raw, s->raw_len);
	s->method = P.method;
	s->target = P.target;
	s->rphrase = P.reason;
	s->vminor = P.version_minor;
	s->code = P.status;
	s->n = P.n_headers;
	cr_assert(s->n <= 32);
	memcpy(s->h, P.headers, s->n * sizeof(s->h[0]));
	s->body_kind = P.body_kind;
	s->keep_alive = P.keep_alive;
	s->upgrade = P.upgrade;
	s->cl = P.content_length;
}

/* Feeds s in pieces given by cuts (ascending offsets), snapshots the outcome. */
static void feed_split(enum pk_http1_type type, const char *s, size_t len, const size_t *cuts,
                       size_t ncuts, struct snapshot *out)
{
	size_t off = 0, total = 0, u;
	int r = 0;
	cr_assert_eq(pk_http1_parser_init(&P, type, NULL), 0);
	for (size_t k = 0; k <= ncuts && r == 0; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		r = pk_http1_parser_feed(&P, s + off, end - off, &u);
		total += u;
		off = end;
	}
	snap(out, r, total);
	pk_http1_parser_free(&P);
}

static void assert_same(const struct snapshot *a, const struct snapshot *b, const char *what)
{
	cr_assert_eq(a->r, b->r, "%s: result", what);
	cr_assert_eq(a->used_total, b->used_total, "%s: used", what);
	cr_assert_eq(a->status, b->status, "%s: status", what);
	cr_assert_eq(a->reason, b->reason, "%s: reason", what);
	cr_assert_eq(a->raw_len, b->raw_len, "%s: raw length", what);
	cr_assert_eq(memcmp(a->raw, b->raw, a->raw_len), 0, "%s: raw", what);
	cr_assert_eq(memcmp(&a->method, &b->method, sizeof(a->method)), 0, "%s: method", what);
	cr_assert_eq(memcmp(&a->target, &b->target, sizeof(a->target)), 0, "%s: target", what);
	cr_assert_eq(memcmp(&a->rphrase, &b->rphrase, sizeof(a->rphrase)), 0, "%s", what);
	cr_assert_eq(a->vminor, b->vminor, "%s", what);
	cr_assert_eq(a->code, b->code, "%s", what);
	cr_assert_eq(a->n, b->n, "%s: header count", what);
	cr_assert_eq(memcmp(a->h, b->h, a->n * sizeof(a->h[0])), 0, "%s: headers", what);
	cr_assert_eq(a->body_kind, b->body_kind, "%s", what);
	cr_assert_eq(a->keep_alive, b->keep_alive, "%s", what);
	cr_assert_eq(a->upgrade, b->upgrade, "%s", what);
	cr_assert_eq(a->cl, b->cl, "%s", what);
}

static void check_every_split(enum pk_http1_type type, const char *s, size_t len)
{
	struct snapshot whole, part;
	size_t cuts[4096];
	char what[64];

	cr_assert(len < 4096);
	feed_split(type, s, len, NULL, 0, &whole);
	for (size_t at = 0; at <= len; at++) {
		feed_split(type, s, len, &at, 1, &part);
		snprintf(what, sizeof(what), "split at %zu", at);
		assert_same(&whole, &part, what);
	}
	for (size_t k = 0; k < len; k++)
		cuts[k] = k + 1;
	feed_split(type, s, len, cuts, len, &part);
	assert_same(&whole, &part, "one byte at a time");
}

static const char RESP1[] = "HTTP/1.1 200 OK\r\n"
                            "Content-Type: text/plain\r\n"
                            "Transfer-Encoding: chunked\r\n"
                            "Set-Cookie: a=1\r\n"
                            "Set-Cookie: b=2\r\n"
                            "\r\n"
                            "5\r\nhello\r\n0\r\n\r\n";

Test(split, request_at_every_offset)
{
	char with_body[512];
	int n = snprintf(with_body, sizeof(with_body), "\r\n%shelloGET / HTTP/1.1\r\n", REQ1);
	struct snapshot whole;
	feed_split(PK_HTTP1_REQUEST, with_body, (size_t)n, NULL, 0, &whole);
	cr_assert_eq(whole.r, 1);
	cr_assert_eq(whole.used_total, strlen(REQ1) + 2);
	check_every_split(PK_HTTP1_REQUEST, with_body, (size_t)n);
}

Test(split, response_at_every_offset)
{
	struct snapshot whole;
	feed_split(PK_HTTP1_RESPONSE, RESP1, sizeof(RESP1) - 1, NULL, 0, &whole);
	cr_assert_eq(whole.r, 1);
	cr_assert_eq(whole.n, 4);
	check_every_split(PK_HTTP1_RESPONSE, RESP1, sizeof(RESP1) - 1);
}

Test(split, rejections_at_every_offset)
{
	static const char *const bad[] = {
	    "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
	    "\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
	    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct snapshot whole;
		feed_split(PK_HTTP1_REQUEST, bad[i], strlen(bad[i]), NULL, 0, &whole);
		cr_assert_eq(whole.r, -EPROTO, "%s", bad[i]);
		check_every_split(PK_HTTP1_REQUEST, bad[i], strlen(bad[i]));
	}
}

/* ---- pipelining and body framing ---- */

TestSuite(body, .fini = fini);

Test(body, pipelined_requests)
{
	static const char s[] = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
	                        "POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	                        "3\r\nxyz\r\n0\r\n\r\n"
	                        "GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
	static const char *const targets[] = {"/a", "/b", "/c"};
	static const size_t body_lens[] = {3, 13, 0};
	size_t off = 0, len = sizeof(s) - 1, u;
	struct pk_http1_body b;

	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, NULL), 0);
	for (int k = 0; k < 3; k++) {
		cr_assert_eq(pk_http1_parser_feed(&P, s + off, len - off, &u), 1);
		cr_assert(span_is(P.target, targets[k]));
		off += u;
		pk_http1_body_init_from(&b, &P);
		ssize_t n = pk_http1_body_feed(&b, s + off, len - off);
		cr_assert_eq(n, (ssize_t)body_lens[k], "request %d", k);
		cr_assert(b.done);
		off += (size_t)n;
		pk_http1_parser_reset(&P);
	}
	cr_assert_eq(off, len);
}

static const char CHUNKED[] = "4\r\nWiki\r\n"
                              "5;name=value;x=\"q\"\r\npedia\r\n"
                              "E \t\r\n in\r\n\r\nchunks.\r\n"
                              "0\r\n"
                              "Expires: never\r\n"
                              "X-Trailer: 1\r\n"
                              "\r\n";

Test(body, chunked_whole)
{
	struct pk_http1_body b;
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%sGET /next", CHUNKED);

	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, buf, (size_t)n), (ssize_t)(sizeof(CHUNKED) - 1));
	cr_assert(b.done);
	cr_assert_eq(pk_http1_body_feed(&b, "x", 1), 0, "a done body takes nothing");
}

Test(body, chunked_split_at_every_offset_and_byte_by_byte)
{
	char buf[256];
	size_t len = (size_t)snprintf(buf, sizeof(buf), "%sNEXT", CHUNKED);
	size_t body = sizeof(CHUNKED) - 1;

	for (size_t at = 0; at <= len; at++) {
		struct pk_http1_body b;
		pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
		ssize_t a = pk_http1_body_feed(&b, buf, at);
		cr_assert_geq(a, 0);
		ssize_t c = pk_http1_body_feed(&b, buf + a, len - (size_t)a);
		cr_assert_geq(c, 0);
		cr_assert_eq((size_t)(a + c), body, "split at %zu", at);
		cr_assert(b.done);
	}
	struct pk_http1_body b;
	size_t taken = 0;
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	for (size_t k = 0; k < len; k++) {
		ssize_t n = pk_http1_body_feed(&b, buf + k, 1);
		cr_assert(n == 0 || n == 1);
		taken += (size_t)n;
		cr_assert_eq(b.done, k + 1 >= body, "done exactly at the last byte (k=%zu)", k);
	}
	cr_assert_eq(taken, body);
}

Test(body, chunked_large_chunk_spans_many_feeds)
{
	struct pk_http1_body b;
	static char data[70000];
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, "10000\r\n", 7), 7);
	memset(data, 'z', sizeof(data));
	cr_assert_eq(pk_http1_body_feed(&b, data, 40000), 40000);
	cr_assert_eq(b.remaining, 0x10000 - 40000);
	cr_assert_eq(pk_http1_body_feed(&b, data, 25536), 25536);
	cr_assert_eq(pk_http1_body_feed(&b, "\r\n0\r\n\r\nX", 8), 7);
	cr_assert(b.done);
}

static void assert_chunked_bad(const char *s)
{
	struct pk_http1_body b;
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, s, strlen(s)), -EPROTO, "%s", s);
	cr_assert_not_null(b.error_reason);
	cr_assert_not(b.done);
	cr_assert_eq(pk_http1_body_feed(&b, "0\r\n\r\n", 5), -EPROTO, "stays failed");
}

Test(body, chunked_rejections)
{
	assert_chunked_bad("x\r\n");
	assert_chunked_bad("\r\n");
	assert_chunked_bad(" 5\r\nhello\r\n");
	assert_chunked_bad("-5\r\n");
	assert_chunked_bad("5\nhello\r\n");
	assert_chunked_bad("5\r\nhello\n0\r\n\r\n");
	assert_chunked_bad("5\r\nhelloX\r\n");
	assert_chunked_bad("5 5\r\n");
	assert_chunked_bad("1000000000000000\r\n");
	assert_chunked_bad("5;a\x01\r\n");
	assert_chunked_bad("0\r\nX: 1\r\n folded\r\n\r\n");
	assert_chunked_bad("0\r\nX: 1\n\r\n");
	assert_chunked_bad("0\r\n\n");
	assert_chunked_bad("0\r\nX: a\x7f\r\n\r\n");
}

Test(body, chunked_bounds)
{
	static char s[20000];
	struct pk_http1_body b;
	/* 15 hex digits are accepted. */
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, "00000000000000f\r\n", 17), 17);
	cr_assert_eq(b.remaining, 15);
	/* Extensions over 4 KiB are not. */
	memset(s, 'e', sizeof(s));
	memcpy(s, "1;", 2);
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, s, 5000), -EPROTO);
	/* Nor trailers over 16 KiB. */
	memcpy(s, "0\r\nX: ", 6);
	pk_http1_body_init(&b, PK_HTTP1_BODY_CHUNKED, 0);
	cr_assert_eq(pk_http1_body_feed(&b, s, sizeof(s)), -EPROTO);
}

Test(body, length_and_other_kinds)
{
	struct pk_http1_body b;
	pk_http1_body_init(&b, PK_HTTP1_BODY_LENGTH, 5);
	cr_assert_eq(pk_http1_body_feed(&b, "abc", 3), 3);
	cr_assert_not(b.done);
	cr_assert_eq(pk_http1_body_feed(&b, "deNEXT", 6), 2);
	cr_assert(b.done);
	pk_http1_body_init(&b, PK_HTTP1_BODY_LENGTH, 0);
	cr_assert(b.done);
	pk_http1_body_init(&b, PK_HTTP1_BODY_NONE, 0);
	cr_assert(b.done);
	cr_assert_eq(pk_http1_body_feed(&b, "abc", 3), 0);
	pk_http1_body_init(&b, PK_HTTP1_BODY_UNTIL_CLOSE, 0);
	cr_assert_eq(pk_http1_body_feed(&b, "abc", 3), 3);
	cr_assert_not(b.done);
}

/* ---- proxied request head ---- */

TestSuite(proxy, .fini = fini);

static char OUT[4096];

static const char *build(const char *head, const char *addr, int https, int keep_alive)
{
	struct pk_http1_proxy_opts o = {
	    .client_addr = addr, .https = https, .keep_alive = keep_alive};
	cr_assert_eq(req(head), 1, "%s", P.error_reason ? P.error_reason : "");
	ssize_t n = pk_http1_build_proxy_request(&P, &o, OUT, sizeof(OUT) - 1);
	cr_assert_gt(n, 0);
	OUT[n] = '\0';
	return OUT;
}

Test(proxy, full_example)
{
	const char *out = build("GET /x?y=1 HTTP/1.0\r\n"
	                        "Host: foo.piko.example.com\r\n"
	                        "Connection: keep-alive, X-Secret\r\n"
	                        "Keep-Alive: timeout=5\r\n"
	                        "X-Secret: s\r\n"
	                        "Proxy-Connection: keep-alive\r\n"
	                        "Proxy-Authorization: Basic eA==\r\n"
	                        "Proxy-Authenticate: x\r\n"
	                        "TE: trailers\r\n"
	                        "Trailer: X\r\n"
	                        "Upgrade: h2c\r\n"
	                        "X-Forwarded-For: 10.0.0.1\r\n"
	                        "Accept: */*\r\n"
	                        "X-Forwarded-Proto: https\r\n"
	                        "X-Piko-Forward: false\r\n"
	                        "x-forwarded-for: 10.0.0.2, 10.0.0.3\r\n"
	                        "\r\n",
	                        "192.0.2.7", 0, 0);
	cr_assert_str_eq(out, "GET /x?y=1 HTTP/1.1\r\n"
	                      "Host: foo.piko.example.com\r\n"
	                      "Accept: */*\r\n"
	                      "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n"
	                      "X-Forwarded-Proto: http\r\n"
	                      "X-Piko-Forward: true\r\n"
	                      "Connection: close\r\n"
	                      "\r\n");
}

Test(proxy, xff_without_previous_value_and_https)
{
	const char *out = build("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "2001:db8::1", 1, 0);
	cr_assert_str_eq(out, "GET / HTTP/1.1\r\nHost: a\r\n"
	                      "X-Forwarded-For: 2001:db8::1\r\n"
	                      "X-Forwarded-Proto: https\r\n"
	                      "X-Piko-Forward: true\r\n"
	                      "Connection: close\r\n\r\n");
}

Test(proxy, no_client_addr_keeps_xff_and_keep_alive_drops_connection_close)
{
	const char *out =
	    build("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", NULL, 0, 1);
	cr_assert_str_eq(out, "GET / HTTP/1.1\r\nHost: a\r\n"
	                      "X-Forwarded-For: 1.2.3.4\r\n"
	                      "X-Forwarded-Proto: http\r\n"
	                      "X-Piko-Forward: true\r\n\r\n");
}

Test(proxy, connection_cannot_remove_host_or_framing)
{
	const char *out = build("POST / HTTP/1.1\r\nHost: a\r\n"
	                        "Connection: host, content-length, transfer-encoding, X-A\r\n"
	                        "Content-Length: 3\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
	                        "1.1.1.1", 0, 0);
	cr_assert_str_eq(out, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-B: 2\r\n"
	                      "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n"
	                      "X-Piko-Forward: true\r\nConnection: close\r\n\r\n");
}

Test(proxy, http10_without_host_gets_an_empty_host)
{
	struct pk_http1_parser q;
	size_t u;
	const char *out = build("GET / HTTP/1.0\r\nX-Piko-Endpoint: e\r\n\r\n", "1.1.1.1", 0, 0);
	cr_assert_str_eq(out, "GET / HTTP/1.1\r\nHost: \r\nX-Piko-Endpoint: e\r\n"
	                      "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n"
	                      "X-Piko-Forward: true\r\nConnection: close\r\n\r\n");
	cr_assert_eq(pk_http1_parser_init(&q, PK_HTTP1_REQUEST, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&q, out, strlen(out), &u), 1);
	pk_http1_parser_free(&q);
}

Test(proxy, chunked_body_keeps_transfer_encoding)
{
	const char *out = build("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	                        "Connection: transfer-encoding\r\n\r\n",
	                        "1.1.1.1", 0, 0);
	cr_assert_not_null(strstr(out, "\r\nTransfer-Encoding: chunked\r\n"));
}

Test(proxy, websocket_upgrade)
{
	const char *out = build("GET /ws HTTP/1.1\r\nHost: a.b\r\nConnection: Upgrade\r\n"
	                        "Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n"
	                        "Sec-WebSocket-Version: 13\r\n\r\n",
	                        "1.1.1.1", 0, 0);
	cr_assert_str_eq(out, "GET /ws HTTP/1.1\r\nHost: a.b\r\nSec-WebSocket-Key: k\r\n"
	                      "Sec-WebSocket-Version: 13\r\n"
	                      "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n"
	                      "X-Piko-Forward: true\r\n"
	                      "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

Test(proxy, output_reparses)
{
	struct pk_http1_parser q;
	size_t u;
	const char *out = build(REQ1, "9.9.9.9", 0, 0);
	cr_assert_eq(pk_http1_parser_init(&q, PK_HTTP1_REQUEST, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&q, out, strlen(out), &u), 1);
	cr_assert_eq(u, strlen(out));
	cr_assert_eq(q.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(q.content_length, 5);
	cr_assert_eq(q.keep_alive, 0);
	pk_http1_parser_free(&q);
}

Test(proxy, too_small_buffer_is_enospc_at_every_size)
{
	struct pk_http1_proxy_opts o = {.client_addr = "1.2.3.4"};
	char small[1024];
	cr_assert_eq(req(REQ1), 1);
	ssize_t full = pk_http1_build_proxy_request(&P, &o, small, sizeof(small));
	cr_assert_gt(full, 0);
	for (size_t n = 0; n < (size_t)full; n++)
		cr_assert_eq(pk_http1_build_proxy_request(&P, &o, small, n), -ENOSPC, "size %zu",
		             n);
	cr_assert_eq(pk_http1_build_proxy_request(&P, &o, small, (size_t)full), full);
}

Test(proxy, invalid_arguments)
{
	struct pk_http1_proxy_opts o = {.client_addr = "1.2.3.4\r\nX: y"};
	char buf[1024];
	size_t u;
	cr_assert_eq(pk_http1_parser_init(&P, PK_HTTP1_REQUEST, NULL), 0);
	cr_assert_eq(pk_http1_build_proxy_request(&P, &o, buf, sizeof(buf)), -EINVAL,
	             "no complete head");
	cr_assert_eq(pk_http1_parser_feed(&P, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27, &u), 1);
	cr_assert_eq(pk_http1_build_proxy_request(&P, &o, buf, sizeof(buf)), -EINVAL);
	o.client_addr = "1.2.3.4, 5.6.7.8";
	cr_assert_eq(pk_http1_build_proxy_request(&P, &o, buf, sizeof(buf)), -EINVAL);
	struct pk_http1_parser r;
	cr_assert_eq(pk_http1_parser_init(&r, PK_HTTP1_RESPONSE, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&r, "HTTP/1.1 204 No\r\n\r\n", 19, &u), 1);
	o.client_addr = NULL;
	cr_assert_eq(pk_http1_build_proxy_request(&r, &o, buf, sizeof(buf)), -EINVAL,
	             "responses are not requests");
	pk_http1_parser_free(&r);
}

/* ---- response builder ---- */

TestSuite(response);

Test(response, json_error)
{
	char buf[512];
	ssize_t n = pk_http1_build_error(buf, sizeof(buf) - 1, 502, "no available upstreams", 0);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	cr_assert_str_eq(buf, "HTTP/1.1 502 Bad Gateway\r\n"
	                      "Content-Type: application/json\r\n"
	                      "Content-Length: 34\r\n"
	                      "\r\n"
	                      "{\"error\":\"no available upstreams\"}");
}

Test(response, json_error_escapes_and_closes)
{
	char buf[512];
	ssize_t n = pk_http1_build_error(buf, sizeof(buf) - 1, 400, "a\"b\\c\n", 1);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	cr_assert_not_null(strstr(buf, "Connection: close\r\n\r\n"));
	cr_assert_not_null(strstr(buf, "\r\n\r\n{\"error\":\"a\\\"b\\\\c\\u000a\"}"));
	cr_assert(strncmp(buf, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
}

Test(response, custom_reason_and_extra_fields)
{
	char buf[512];
	struct pk_http1_field extra[] = {{"Retry-After", "1"}, {"X-A", "b c"}};
	ssize_t n = pk_http1_build_response(buf, sizeof(buf) - 1, 503, "Busy", "text/plain", extra,
	                                    2, "hi", 2, 1);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	cr_assert_str_eq(buf, "HTTP/1.1 503 Busy\r\nContent-Type: text/plain\r\n"
	                      "Content-Length: 2\r\nRetry-After: 1\r\nX-A: b c\r\n"
	                      "Connection: close\r\n\r\nhi");
}

Test(response, invalid_arguments)
{
	char buf[512];
	struct pk_http1_field bad_name[] = {{"X A", "1"}};
	struct pk_http1_field bad_value[] = {{"X", "1\r\nY: 2"}};
	cr_assert_eq(pk_http1_build_response(buf, sizeof(buf), 99, NULL, NULL, NULL, 0, NULL, 0, 0),
	             -EINVAL);
	cr_assert_eq(
	    pk_http1_build_response(buf, sizeof(buf), 600, NULL, NULL, NULL, 0, NULL, 0, 0),
	    -EINVAL);
	cr_assert_eq(
	    pk_http1_build_response(buf, sizeof(buf), 200, NULL, NULL, bad_name, 1, NULL, 0, 0),
	    -EINVAL);
	cr_assert_eq(
	    pk_http1_build_response(buf, sizeof(buf), 200, NULL, NULL, bad_value, 1, NULL, 0, 0),
	    -EINVAL);
	cr_assert_eq(
	    pk_http1_build_response(buf, sizeof(buf), 200, "O\nK", NULL, NULL, 0, NULL, 0, 0),
	    -EINVAL);
}

Test(response, enospc)
{
	char buf[512];
	ssize_t full = pk_http1_build_error(buf, sizeof(buf), 504, "upstream timeout", 0);
	cr_assert_gt(full, 0);
	for (size_t n = 0; n < (size_t)full; n++)
		cr_assert_eq(pk_http1_build_error(buf, n, 504, "upstream timeout", 0), -ENOSPC);
}

Test(response, builds_a_parseable_response)
{
	char buf[512];
	struct pk_http1_parser q;
	size_t u;
	ssize_t n = pk_http1_build_error(buf, sizeof(buf), 401, "invalid token", 1);
	cr_assert_eq(pk_http1_parser_init(&q, PK_HTTP1_RESPONSE, NULL), 0);
	cr_assert_eq(pk_http1_parser_feed(&q, buf, (size_t)n, &u), 1);
	cr_assert_eq(q.status, 401);
	cr_assert_eq(q.body_kind, PK_HTTP1_BODY_LENGTH);
	cr_assert_eq(u + q.content_length, (size_t)n);
	cr_assert_eq(q.keep_alive, 0);
	pk_http1_parser_free(&q);
}

/* ---- endpoint rule ---- */

TestSuite(endpoint, .fini = fini);

struct ep_case {
	const char *host;
	const char *want; /* NULL: none */
};

Test(endpoint, host_table)
{
	static const struct ep_case cases[] = {
	    {"foo.piko.example.com:9000", "foo"},
	    {"foo.piko.example.com", "foo"},
	    {"my-svc.example.com.", "my-svc"},
	    {"a.b", "a"},
	    {"123.example.com", "123"},
	    {"foo.", "foo"},
	    {"localhost", NULL},
	    {"localhost:8000", NULL},
	    {"127.0.0.1", NULL},
	    {"127.0.0.1:8000", NULL},
	    {"10.1.2", NULL},
	    {"[::1]:8000", NULL},
	    {"[::1]", NULL},
	    {"[2001:db8::1]:443", NULL},
	    {"::1", NULL},
	    {".example.com", NULL},
	    {"", NULL},
	    {"foo:80.x", NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = 0;
		int r = pk_http1_endpoint_from_host(cases[i].host, strlen(cases[i].host), &n);
		if (!cases[i].want) {
			cr_assert_eq(r, 0, "%s", cases[i].host);
			continue;
		}
		cr_assert_eq(r, 1, "%s", cases[i].host);
		cr_assert_eq(n, strlen(cases[i].want), "%s", cases[i].host);
		cr_assert_eq(memcmp(cases[i].host, cases[i].want, n), 0, "%s", cases[i].host);
	}
}

Test(endpoint, header_wins_over_host)
{
	const char *id;
	size_t n;
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: foo.example.com\r\nX-Piko-Endpoint: bar\r\n\r\n"),
	             1);
	cr_assert_eq(pk_http1_endpoint(&P, &id, &n), 1);
	cr_assert_eq(n, 3);
	cr_assert_eq(memcmp(id, "bar", 3), 0);
}

Test(endpoint, empty_header_falls_back_to_host)
{
	const char *id;
	size_t n;
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: foo.example.com\r\nx-piko-endpoint:\r\n\r\n"), 1);
	cr_assert_eq(pk_http1_endpoint(&P, &id, &n), 1);
	cr_assert_eq(n, 3);
	cr_assert_eq(memcmp(id, "foo", 3), 0);
}

Test(endpoint, none)
{
	const char *id;
	size_t n;
	cr_assert_eq(req("GET / HTTP/1.1\r\nHost: localhost:8000\r\n\r\n"), 1);
	cr_assert_eq(pk_http1_endpoint(&P, &id, &n), 0);
	cr_assert_eq(req("GET / HTTP/1.0\r\n\r\n"), 1);
	cr_assert_eq(pk_http1_endpoint(&P, &id, &n), 0);
}
