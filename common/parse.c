/* Value parsers for durations, addresses, integers and booleans. Hand-written rather than
 * strtoull/getaddrinfo based: strtoull accepts spaces, signs and "0x", and the config
 * must reject those instead of guessing. */
#include "common/parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define PK__HOST_MAX 253

static int pk__is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int pk__is_alnum(char c)
{
	return pk__is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Reads a run of digits at *p into *v, advancing *p. Fails on no digits or when the value
 * exceeds limit (checked before it could overflow). */
static int pk__digits(const char **p, uint64_t limit, uint64_t *v)
{
	const char *s = *p;
	uint64_t n = 0;

	if (!pk__is_digit(*s))
		return -EINVAL;
	for (; pk__is_digit(*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (d > limit || n > (limit - d) / 10)
			return -EINVAL;
		n = n * 10 + d;
	}
	*p = s;
	*v = n;
	return 0;
}

/* Unit at *p: returns its rank (0 = h, 1 = m, 2 = s, 3 = ms) and advances, or -1. */
static int pk__unit(const char **p, uint64_t *scale)
{
	static const struct {
		const char *name;
		uint64_t ms;
	} units[] = {{"h", 3600000}, {"ms", 1}, {"m", 60000}, {"s", 1000}};
	static const int rank[] = {0, 3, 1, 2};

	/* "ms" is tried before "m" so that "5ms" is not read as five minutes + "s". */
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		size_t n = strlen(units[i].name);
		if (strncmp(*p, units[i].name, n) == 0) {
			*p += n;
			*scale = units[i].ms;
			return rank[i];
		}
	}
	return -1;
}

int pk_parse_duration(const char *s, uint64_t *ms)
{
	const char *p = s;
	uint64_t total = 0, v, scale;
	int last = -1;

	if (s == NULL || *s == '\0')
		return -EINVAL;
	/* A bare integer means seconds. */
	if (pk__digits(&p, PK_DURATION_MAX_MS, &v) == 0 && *p == '\0') {
		if (v > PK_DURATION_MAX_MS / 1000)
			return -EINVAL;
		*ms = v * 1000;
		return 0;
	}
	p = s;
	while (*p != '\0') {
		if (pk__digits(&p, PK_DURATION_MAX_MS, &v) < 0)
			return -EINVAL;
		int rank = pk__unit(&p, &scale);
		if (rank <= last)
			return -EINVAL; /* unknown unit, repeated or out of order */
		last = rank;
		if (v > (PK_DURATION_MAX_MS - total) / scale)
			return -EINVAL;
		total += v * scale;
	}
	*ms = total;
	return 0;
}

int pk_format_duration(uint64_t ms, char *buf, size_t size)
{
	static const struct {
		const char *name;
		uint64_t ms;
	} units[] = {{"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
	size_t len = 0;

	if (size > 0)
		buf[0] = '\0';
	if (ms == 0)
		return snprintf(buf, size, "0s");
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		uint64_t n = ms / units[i].ms;
		ms %= units[i].ms;
		if (n == 0)
			continue;
		int w = snprintf(len < size ? buf + len : NULL, len < size ? size - len : 0,
		                 "%llu%s", (unsigned long long)n, units[i].name);
		if (w < 0)
			return w;
		len += (size_t)w;
	}
	return (int)len;
}

/* Whether s[0..len) is a valid DNS label sequence (see pk_parse_host). */
static int pk__dns_name(const char *s, size_t len)
{
	size_t label = 0;
	int only_digits_dots = 1;

	if (len > 0 && s[len - 1] == '.')
		len--; /* one trailing dot: fully qualified */
	if (len == 0 || len > PK__HOST_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			continue;
		}
		if (!pk__is_alnum(c) && c != '-')
			return 0;
		if (c == '-' && label == 0)
			return 0;
		if (!pk__is_digit(c))
			only_digits_dots = 0;
		if (++label > 63)
			return 0;
	}
	if (s[len - 1] == '-')
		return 0;
	/* "1.2.3.256" or "999" is a mistyped address, not a host name. */
	return !only_digits_dots;
}

static int pk__ip_literal(int af, const char *s, size_t len)
{
	char tmp[INET6_ADDRSTRLEN + 1];
	unsigned char out[sizeof(struct in6_addr)];

	if (len == 0 || len >= sizeof(tmp))
		return 0;
	memcpy(tmp, s, len);
	tmp[len] = '\0';
	return inet_pton(af, tmp, out) == 1;
}

/* Host without brackets, not IPv6. */
static int pk__host_v4_or_name(const char *s, size_t len)
{
	return pk__ip_literal(AF_INET, s, len) || pk__dns_name(s, len);
}

int pk_parse_host(const char *s)
{
	if (s == NULL)
		return -EINVAL;
	size_t len = strlen(s);
	if (pk__host_v4_or_name(s, len) || pk__ip_literal(AF_INET6, s, len))
		return 0;
	return -EINVAL;
}

static int pk__port(const char *s, uint16_t *port)
{
	uint64_t v;

	if (pk__digits(&s, 65535, &v) < 0 || *s != '\0')
		return -EINVAL;
	if (port != NULL)
		*port = (uint16_t)v;
	return 0;
}

int pk_parse_addr(const char *s, char *host, size_t hostlen, uint16_t *port)
{
	const char *h, *colon;
	size_t hlen;

	if (s == NULL)
		return -EINVAL;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || close[1] != ':')
			return -EINVAL; /* "[::1]" without a port, or junk after ']' */
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
		if (!pk__ip_literal(AF_INET6, h, hlen))
			return -EINVAL;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return -EINVAL;
		h = s;
		hlen = (size_t)(colon - s);
		/* A second colon means an unbracketed IPv6 literal: ambiguous with the port. */
		if (memchr(h, ':', hlen) != NULL)
			return -EINVAL;
		if (hlen > 0 && !pk__host_v4_or_name(h, hlen))
			return -EINVAL;
	}
	if (pk__port(colon + 1, port) < 0)
		return -EINVAL;
	if (hostlen == 0 && host == NULL)
		return 0;
	if (host == NULL || hlen >= hostlen)
		return -ENAMETOOLONG;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	return 0;
}

int pk_parse_int(const char *s, long long min, long long max, long long *out)
{
	int neg = 0;
	uint64_t v;

	if (s == NULL || min > max)
		return -EINVAL;
	if (*s == '-') {
		if (min >= 0)
			return -EINVAL;
		neg = 1;
		s++;
	}
	if (!pk__is_digit(*s))
		return -EINVAL;
	/* Syntax first, so that "99999999999999999999x" is -EINVAL and not -ERANGE. */
	const char *end = s;
	while (pk__is_digit(*end))
		end++;
	if (*end != '\0')
		return -EINVAL;
	/* 2^63 is representable when negative. */
	if (pk__digits(&s, (uint64_t)INT64_MAX + (uint64_t)neg, &v) < 0)
		return -ERANGE;
	long long n = neg ? (long long)(0 - v) : (long long)v;
	if (n < min || n > max)
		return -ERANGE;
	*out = n;
	return 0;
}

int pk_parse_bool(const char *s, int *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};

	if (s == NULL)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -EINVAL;
}

int pk_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	static const struct {
		const char *name;
		uint64_t scale;
	} units[] = {{"", 1}, {"k", 1024}, {"kib", 1024}, {"m", 1024 * 1024}, {"mib", 1024 * 1024}};
	uint64_t v;

	if (s == NULL || min > max)
		return -EINVAL;
	const char *p = s;
	if (pk__digits(&p, UINT64_MAX, &v) < 0)
		return pk__is_digit(*s) ? -ERANGE : -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcasecmp(p, units[i].name) != 0)
			continue;
		if (v > max / units[i].scale)
			return -ERANGE;
		v *= units[i].scale;
		if (v < min)
			return -ERANGE;
		*out = v;
		return 0;
	}
	return -EINVAL;
}
