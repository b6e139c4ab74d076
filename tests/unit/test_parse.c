/* Unit tests for common/parse.c. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/parse.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- durations ---- */

Test(duration, units)
{
	static const struct {
		const char *in;
		uint64_t ms;
	} cases[] = {
	    {"250ms", 250},
	    {"30s", 30000},
	    {"5m", 300000},
	    {"1h", 3600000},
	    {"1h30m", 5400000},
	    {"1m30s500ms", 90500},
	    {"0s", 0},
	    {"0ms", 0},
	    {"1500ms", 1500},
	    {"90s", 90000},
	    {"1h1m1s1ms", 3661001},
	    {"007s", 7000},
	    {"48h", 172800000},
	};
	for (size_t i = 0; i < N(cases); i++) {
		uint64_t ms = 12345;
		cr_expect_eq(pk_parse_duration(cases[i].in, &ms), 0, "%s", cases[i].in);
		cr_expect_eq(ms, cases[i].ms, "%s -> %llu", cases[i].in, (unsigned long long)ms);
	}
}

Test(duration, bare_integer_is_seconds)
{
	uint64_t ms = 1;
	cr_assert_eq(pk_parse_duration("5", &ms), 0);
	cr_expect_eq(ms, 5000);
	cr_assert_eq(pk_parse_duration("0", &ms), 0);
	cr_expect_eq(ms, 0);
}

Test(duration, rejects_malformed)
{
	static const char *const bad[] = {
	    "",    "-1s",  "+1s", "1.5s",   " 5",    "5 ",    "5 s",  "s",     "ms",   "1x",
	    "1d",  "1us",  "1ns", "1S",     "1H",    "30m1h", "1s1s", "1ms1s", "1h1h", "5mss",
	    "1s5", "0x10", "1e3", "1_000s", "5m-1s", "--1",   "1sm",  "h",     "1hh",
	};
	for (size_t i = 0; i < N(bad); i++) {
		uint64_t ms = 777;
		cr_expect_eq(pk_parse_duration(bad[i], &ms), -EINVAL, "\"%s\" accepted", bad[i]);
		cr_expect_eq(ms, 777, "\"%s\" wrote the output", bad[i]);
	}
	uint64_t ms;
	cr_expect_eq(pk_parse_duration(NULL, &ms), -EINVAL);
}

Test(duration, maximum_is_accepted)
{
	char buf[64];
	uint64_t ms;
	snprintf(buf, sizeof(buf), "%llums", (unsigned long long)PK_DURATION_MAX_MS);
	cr_assert_eq(pk_parse_duration(buf, &ms), 0);
	cr_expect_eq(ms, PK_DURATION_MAX_MS);
	snprintf(buf, sizeof(buf), "%llu", (unsigned long long)PK_DURATION_MAX_MS / 1000);
	cr_assert_eq(pk_parse_duration(buf, &ms), 0);
	cr_expect_eq(ms, PK_DURATION_MAX_MS);
}

Test(duration, overflow_is_rejected)
{
	static const char *const bad[] = {
	    "3153600000001ms",         /* max + 1 */
	    "3153600001",              /* bare seconds, max + 1 s */
	    "876001h",                 /* hours beyond max */
	    "876000h1ms",              /* exactly max + 1ms through a sum */
	    "18446744073709551616s",   /* 2^64 */
	    "99999999999999999999999", /* bare, beyond 2^64 */
	    "18446744073709551615ms",  /* 2^64 - 1 */
	    "5124095576030431h",       /* wraps uint64 when multiplied */
	};
	for (size_t i = 0; i < N(bad); i++) {
		uint64_t ms = 777;
		cr_expect_eq(pk_parse_duration(bad[i], &ms), -EINVAL, "\"%s\" accepted", bad[i]);
		cr_expect_eq(ms, 777);
	}
}

Test(duration, format_canonical)
{
	static const struct {
		uint64_t ms;
		const char *out;
	} cases[] = {
	    {0, "0s"},         {250, "250ms"},     {1000, "1s"},
	    {90000, "1m30s"},  {3600000, "1h"},    {3605000, "1h5s"},
	    {1500, "1s500ms"}, {172800000, "48h"}, {3661001, "1h1m1s1ms"},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char buf[64];
		int n = pk_format_duration(cases[i].ms, buf, sizeof(buf));
		cr_expect_str_eq(buf, cases[i].out);
		cr_expect_eq(n, (int)strlen(cases[i].out));
	}
}

Test(duration, format_round_trips)
{
	static const uint64_t values[] = {
	    0, 1, 999, 1000, 59999, 60000, 86399999, 123456789, PK_DURATION_MAX_MS};
	for (size_t i = 0; i < N(values); i++) {
		char buf[64];
		uint64_t back = 0;
		pk_format_duration(values[i], buf, sizeof(buf));
		cr_expect_eq(pk_parse_duration(buf, &back), 0, "%s", buf);
		cr_expect_eq(back, values[i], "%s", buf);
	}
}

Test(duration, format_truncates_like_snprintf)
{
	char buf[4] = "xxx";
	int n = pk_format_duration(5400000, buf, sizeof(buf)); /* "1h30m" */
	cr_expect_eq(n, 5);
	cr_expect_str_eq(buf, "1h3");
	cr_expect_eq(pk_format_duration(5400000, NULL, 0), 5);
}

/* ---- hosts and addresses ---- */

Test(addr, host_port_forms)
{
	static const struct {
		const char *in, *host;
		uint16_t port;
	} cases[] = {
	    {":8000", "", 8000},
	    {":0", "", 0},
	    {"127.0.0.1:8002", "127.0.0.1", 8002},
	    {"[::1]:8000", "::1", 8000},
	    {"[::]:1", "::", 1},
	    {"[::ffff:1.2.3.4]:65535", "::ffff:1.2.3.4", 65535},
	    {"localhost:80", "localhost", 80},
	    {"pikod-0.pikod.default.svc.cluster.local:8003",
	     "pikod-0.pikod.default.svc.cluster.local", 8003},
	    {"example.com.:443", "example.com.", 443},
	    {"a:1", "a", 1},
	    {"x1:08000", "x1", 8000},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char host[256] = "junk";
		uint16_t port = 4242;
		cr_expect_eq(pk_parse_addr(cases[i].in, host, sizeof(host), &port), 0, "%s",
		             cases[i].in);
		cr_expect_str_eq(host, cases[i].host, "%s", cases[i].in);
		cr_expect_eq(port, cases[i].port, "%s", cases[i].in);
	}
}

Test(addr, rejects_malformed)
{
	static const char *const bad[] = {
	    "",
	    "8000",
	    "[::1]",
	    "[::1]8000",
	    "::1:8000",
	    "host:99999",
	    "host:65536",
	    "a b:1",
	    "host:",
	    ":",
	    "[::1]:",
	    "[]:80",
	    "[1.2.3.4]:80",
	    "host:+80",
	    "host:-1",
	    "host: 80",
	    "host:80 ",
	    "-host:80",
	    "host-:80",
	    "a..b:80",
	    ".a:80",
	    "a_b:80",
	    "1.2.3.256:80",
	    "999:80",
	    "[::1:80",
	    "[::1]]:80",
	    "ho%st:80",
	    "host:0x50",
	    "[fe80::1%eth0]:80",
	    "host:123456789012345678901234567890",
	};
	for (size_t i = 0; i < N(bad); i++) {
		char host[256];
		uint16_t port;
		cr_expect_eq(pk_parse_addr(bad[i], host, sizeof(host), &port), -EINVAL,
		             "\"%s\" accepted", bad[i]);
	}
	cr_expect_eq(pk_parse_addr(NULL, NULL, 0, NULL), -EINVAL);
}

Test(addr, host_length_limits)
{
	char name[300], addr[320];
	/* 4 labels of 63 + 3 dots = 255 > 253 */
	memset(name, 'a', sizeof(name));
	for (int i = 63; i < 255; i += 64)
		name[i] = '.';
	name[253] = '\0'; /* 253 chars, last label 61 long */
	snprintf(addr, sizeof(addr), "%s:1", name);
	cr_expect_eq(pk_parse_addr(addr, NULL, 0, NULL), 0);
	name[253] = 'a';
	name[254] = '\0';
	snprintf(addr, sizeof(addr), "%s:1", name);
	cr_expect_eq(pk_parse_addr(addr, NULL, 0, NULL), -EINVAL, "254-char host accepted");

	char label[80];
	memset(label, 'b', 64);
	strcpy(label + 64, ":1");
	cr_expect_eq(pk_parse_addr(label, NULL, 0, NULL), -EINVAL, "64-char label accepted");
	label[63] = ':';
	label[64] = '1';
	label[65] = '\0';
	cr_expect_eq(pk_parse_addr(label, NULL, 0, NULL), 0, "63-char label rejected");
}

Test(addr, host_buffer_too_small)
{
	char host[9];
	uint16_t port = 0;
	cr_expect_eq(pk_parse_addr("localhost:80", host, sizeof(host), &port), -ENAMETOOLONG);
	char fits[10];
	cr_expect_eq(pk_parse_addr("localhost:80", fits, sizeof(fits), &port), 0);
	cr_expect_str_eq(fits, "localhost");
}

Test(addr, validate_only)
{
	cr_expect_eq(pk_parse_addr("[::1]:9", NULL, 0, NULL), 0);
	cr_expect_eq(pk_parse_addr("[::1]", NULL, 0, NULL), -EINVAL);
}

Test(host, bare_hosts)
{
	static const char *const good[] = {"localhost",         "10.0.0.1", "::1", "fe80::1",
	                                   "pikod.default.svc", "a-b.c",    "x."};
	static const char *const bad[] = {"",   "[::1]", "a b",  "host:80", "-a",
	                                  "a-", "1.2.3", "a..b", "_x",      "1.2.3.4.5"};
	for (size_t i = 0; i < N(good); i++)
		cr_expect_eq(pk_parse_host(good[i]), 0, "\"%s\" rejected", good[i]);
	for (size_t i = 0; i < N(bad); i++)
		cr_expect_eq(pk_parse_host(bad[i]), -EINVAL, "\"%s\" accepted", bad[i]);
	cr_expect_eq(pk_parse_host(NULL), -EINVAL);
}

/* ---- integers ---- */

Test(integer, in_range)
{
	long long v = 0;
	cr_expect_eq(pk_parse_int("0", 0, 10, &v), 0);
	cr_expect_eq(v, 0);
	cr_expect_eq(pk_parse_int("10", 0, 10, &v), 0);
	cr_expect_eq(v, 10);
	cr_expect_eq(pk_parse_int("-5", -10, 10, &v), 0);
	cr_expect_eq(v, -5);
	cr_expect_eq(pk_parse_int("007", 0, 10, &v), 0);
	cr_expect_eq(v, 7);
	cr_expect_eq(pk_parse_int("9223372036854775807", 0, INT64_MAX, &v), 0);
	cr_expect_eq(v, INT64_MAX);
	cr_expect_eq(pk_parse_int("-9223372036854775808", INT64_MIN, 0, &v), 0);
	cr_expect_eq(v, INT64_MIN);
}

Test(integer, out_of_range)
{
	long long v = 99;
	cr_expect_eq(pk_parse_int("11", 0, 10, &v), -ERANGE);
	cr_expect_eq(pk_parse_int("-11", -10, 10, &v), -ERANGE);
	cr_expect_eq(pk_parse_int("1023", 1024, 2048, &v), -ERANGE);
	cr_expect_eq(pk_parse_int("9223372036854775808", 0, INT64_MAX, &v), -ERANGE);
	cr_expect_eq(pk_parse_int("-9223372036854775809", INT64_MIN, 0, &v), -ERANGE);
	cr_expect_eq(pk_parse_int("99999999999999999999999999", 0, 10, &v), -ERANGE);
	cr_expect_eq(v, 99);
}

Test(integer, rejects_malformed)
{
	static const char *const bad[] = {"",
	                                  "-",
	                                  "+1",
	                                  " 1",
	                                  "1 ",
	                                  "1.0",
	                                  "0x10",
	                                  "1e3",
	                                  "two",
	                                  "1k",
	                                  "--1",
	                                  "1-",
	                                  "99999999999999999999x"};
	for (size_t i = 0; i < N(bad); i++) {
		long long v = 99;
		cr_expect_eq(pk_parse_int(bad[i], -100, 100, &v), -EINVAL, "\"%s\"", bad[i]);
		cr_expect_eq(v, 99);
	}
	long long v;
	cr_expect_eq(pk_parse_int(NULL, 0, 1, &v), -EINVAL);
}

Test(integer, minus_only_when_negatives_allowed)
{
	long long v;
	cr_expect_eq(pk_parse_int("-1", 0, 10, &v), -EINVAL);
	cr_expect_eq(pk_parse_int("-0", 0, 10, &v), -EINVAL);
	cr_expect_eq(pk_parse_int("-0", -1, 10, &v), 0);
	cr_expect_eq(v, 0);
}

/* ---- booleans ---- */

Test(boolean, words)
{
	static const struct {
		const char *in;
		int v;
	} cases[] = {{"true", 1},  {"TRUE", 1}, {"Yes", 1}, {"on", 1}, {"1", 1},
	             {"false", 0}, {"No", 0},   {"OFF", 0}, {"0", 0}};
	for (size_t i = 0; i < N(cases); i++) {
		int v = -1;
		cr_expect_eq(pk_parse_bool(cases[i].in, &v), 0, "%s", cases[i].in);
		cr_expect_eq(v, cases[i].v, "%s", cases[i].in);
	}
}

Test(boolean, rejects_others)
{
	static const char *const bad[] = {"", "2", "t", "f", "y", "n", "truex", " true", "enable"};
	for (size_t i = 0; i < N(bad); i++) {
		int v = -1;
		cr_expect_eq(pk_parse_bool(bad[i], &v), -EINVAL, "\"%s\"", bad[i]);
		cr_expect_eq(v, -1);
	}
	int v;
	cr_expect_eq(pk_parse_bool(NULL, &v), -EINVAL);
}

Test(parse_size, bytes_and_binary_units)
{
	uint64_t v = 0;
	cr_expect_eq(pk_parse_size("1048576", 0, UINT64_MAX, &v), 0);
	cr_expect_eq(v, 1048576u);
	cr_expect_eq(pk_parse_size("256k", 0, UINT64_MAX, &v), 0);
	cr_expect_eq(v, 256u * 1024);
	cr_expect_eq(pk_parse_size("256KiB", 0, UINT64_MAX, &v), 0);
	cr_expect_eq(v, 256u * 1024);
	cr_expect_eq(pk_parse_size("4MiB", 0, UINT64_MAX, &v), 0);
	cr_expect_eq(v, 4u * 1024 * 1024);
	cr_expect_eq(pk_parse_size("1m", 0, UINT64_MAX, &v), 0);
	cr_expect_eq(v, 1024u * 1024);
}

Test(parse_size, rejects_bad_syntax_and_out_of_range)
{
	uint64_t v = 7;
	cr_expect_eq(pk_parse_size("", 0, 10, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("k", 0, 10, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("-1", 0, 10, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("1 MiB", 0, UINT64_MAX, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("1GiB", 0, UINT64_MAX, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("1.5m", 0, UINT64_MAX, &v), -EINVAL);
	cr_expect_eq(pk_parse_size("255k", 256 * 1024, 16 * 1024 * 1024, &v), -ERANGE);
	cr_expect_eq(pk_parse_size("17MiB", 256 * 1024, 16 * 1024 * 1024, &v), -ERANGE);
	cr_expect_eq(pk_parse_size("99999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
	cr_expect_eq(pk_parse_size("18014398509481984k", 0, UINT64_MAX, &v), -ERANGE);
	cr_expect_eq(v, 7u, "out untouched on failure");
}
