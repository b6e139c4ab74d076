/* HTTP/1.1 heads and body framing. See http1.h for the contract and the rules. */
#include "proto/http1.h"

#include <errno.h>
#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
	PK__S_PRE = 0, /* before the start line: empty lines are skipped */
	PK__S_PRE_LF,  /* saw CR in the preamble */
	PK__S_HEAD,    /* inside the head */
	PK__S_DONE,
	PK__S_FAILED,
};

enum { PK__CB_NONE = 0, PK__CB_FIELD, PK__CB_VALUE };

static int pk__lower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

static int pk__memieq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (pk__lower((unsigned char)a[i]) != pk__lower((unsigned char)b[i]))
			return 0;
	return 1;
}

static int pk__is_ows(int c)
{
	return c == ' ' || c == '\t';
}

/* tchar (RFC 9110 5.6.2): what a field name is made of. */
static int pk__is_tchar(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int pk__is_ctl(int c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* Whether none of 8 bytes is below 0x20 or 0x7f: a word of ordinary head bytes. A tab
 * (allowed) also fails the test; the caller then goes byte by byte. The "below" test has no
 * false negatives: its borrows can only mark bytes above one truly below 0x20. */
static int pk__word_plain(uint64_t x)
{
	const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
	uint64_t below = (x - ones * 0x20) & ~x & high;
	uint64_t y = x ^ (ones * 0x7f);
	uint64_t del = (y - ones) & ~y & high;
	return (below | del) == 0;
}

static unsigned pk__count(const struct pk_http1_parser *p, enum pk_http1_known id);
static int pk__has_token(const struct pk_http1_parser *p, enum pk_http1_known id,
                         const char *token);

static int pk__fail(struct pk_http1_parser *p, int status, const char *reason)
{
	p->error_status = status;
	p->error_reason = reason;
	p->pk__state = PK__S_FAILED;
	return -EPROTO;
}

/* ---- set-up ---- */

int pk_http1_parser_init(struct pk_http1_parser *p, enum pk_http1_type type,
                         const struct pk_http1_limits *limits)
{
	if (type != PK_HTTP1_REQUEST && type != PK_HTTP1_RESPONSE)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	p->type = type;
	p->pk__max_head = PK_HTTP1_DEFAULT_MAX_HEAD;
	p->pk__max_headers = PK_HTTP1_DEFAULT_MAX_HEADERS;
	if (limits && limits->max_head_bytes)
		p->pk__max_head = limits->max_head_bytes < PK_HTTP1_MAX_HEAD_CAP
		                      ? limits->max_head_bytes
		                      : PK_HTTP1_MAX_HEAD_CAP;
	if (limits && limits->max_headers)
		p->pk__max_headers = limits->max_headers < PK_HTTP1_MAX_HEADERS_CAP
		                         ? limits->max_headers
		                         : PK_HTTP1_MAX_HEADERS_CAP;
	/* Our own bound is the real one; libhttp-parser's (80 KiB by default, process-wide)
	 * must not cut below it. */
	http_parser_set_max_header_size(2 * PK_HTTP1_MAX_HEAD_CAP);
	return 0;
}

void pk_http1_parser_reset(struct pk_http1_parser *p)
{
	char *buf = p->pk__buf;
	struct pk_http1_header *headers = p->headers;
	size_t cap = p->pk__cap, max_head = p->pk__max_head;
	unsigned hcap = p->pk__hcap, max_headers = p->pk__max_headers;
	enum pk_http1_type type = p->type;

	memset(p, 0, sizeof(*p));
	p->type = type;
	p->pk__buf = buf;
	p->pk__cap = cap;
	p->headers = headers;
	p->pk__hcap = hcap;
	p->pk__max_head = max_head;
	p->pk__max_headers = max_headers;
}

void pk_http1_parser_free(struct pk_http1_parser *p)
{
	free(p->pk__buf);
	free(p->headers);
	p->pk__buf = NULL;
	p->headers = NULL;
	p->pk__cap = 0;
	p->pk__hcap = 0;
	p->n_headers = 0;
}

void pk_http1_parser_response_to_head(struct pk_http1_parser *p, int is_head)
{
	p->is_head_response = is_head ? 1 : 0;
}

/* ---- buffer ---- */

static int pk__append(struct pk_http1_parser *p, const char *d, size_t n)
{
	if (n == 0)
		return 0;
	if (p->pk__len + n > p->pk__cap) {
		size_t cap = p->pk__cap ? p->pk__cap : 1024;
		while (cap < p->pk__len + n)
			cap *= 2;
		if (cap > p->pk__max_head)
			cap = p->pk__max_head;
		char *nb = realloc(p->pk__buf, cap);
		if (!nb)
			return -ENOMEM;
		p->pk__buf = nb;
		p->pk__cap = cap;
	}
	memcpy(p->pk__buf + p->pk__len, d, n);
	p->pk__len += n;
	return 0;
}

/* ---- head completion: line checks, start line, libhttp-parser, semantics ---- */

/* Checks the header lines for what libhttp-parser accepts but a proxy must not (obs-fold,
 * whitespace before the colon) and counts them. The scanner already guaranteed that every
 * line ends in CRLF and holds no control bytes. */
static int pk__check_lines(struct pk_http1_parser *p, unsigned *count)
{
	const char *b = p->pk__buf;
	size_t end = p->pk__len - 2; /* the final empty line */
	const char *nl = memchr(b, '\n', end);
	size_t pos = (size_t)(nl - b) + 1;

	*count = 0;
	while (pos < end) {
		const char *line = b + pos;
		size_t ll = (size_t)((const char *)memchr(line, '\r', end - pos) - line);
		const char *colon = memchr(line, ':', ll);

		if (pk__is_ows((unsigned char)line[0]))
			return pk__fail(p, 400, "obsolete line folding");
		if (!colon)
			return pk__fail(p, 400, "header line without colon");
		if (colon == line)
			return pk__fail(p, 400, "empty header name");
		if (pk__is_ows((unsigned char)colon[-1]))
			return pk__fail(p, 400, "whitespace before colon");
		/* libhttp-parser (as packaged, not strict) lets spaces into names: a name such as
		 * "Transfer-Encoding x" would reach the upstream as it came. */
		for (const char *c = line; c < colon; c++)
			if (!pk__is_tchar((unsigned char)*c))
				return pk__fail(p, 400, "invalid header field");
		/* libhttp-parser takes any name that starts with "Transfer-Encoding" for it,
		 * except in what it deems an upgrade; we take only the exact name. Refuse what the
		 * two would frame differently (and any server might). */
		if ((size_t)(colon - line) > 17 && pk__memieq(line, "transfer-encoding", 17))
			return pk__fail(p, 400, "invalid header field");
		if (++*count > p->pk__max_headers)
			return pk__fail(p, 431, "too many header fields");
		pos += ll + 2;
	}
	return 0;
}

/* "HTTP/1.0" or "HTTP/1.1" -> 0 with *minor; other well-formed versions -> 505. */
static int pk__parse_version(struct pk_http1_parser *p, const char *v, size_t n, int is_request)
{
	size_t i = 5;
	int digits = 0;

	if (n < 8 || memcmp(v, "HTTP/", 5) != 0)
		goto malformed;
	while (i < n && v[i] >= '0' && v[i] <= '9')
		i++, digits++;
	if (digits == 0 || i == n || v[i] != '.')
		goto malformed;
	i++;
	digits = 0;
	while (i < n && v[i] >= '0' && v[i] <= '9')
		i++, digits++;
	if (digits == 0 || i != n)
		goto malformed;
	if (n != 8 || v[5] != '1' || (v[7] != '0' && v[7] != '1'))
		return pk__fail(p, 505, "unsupported HTTP version");
	p->version_minor = (unsigned)(v[7] - '0');
	return 0;
malformed:
	return pk__fail(p, 400, is_request ? "malformed request line" : "malformed status line");
}

static struct pk_http1_span pk__span(size_t off, size_t len)
{
	struct pk_http1_span s = {(uint32_t)off, (uint32_t)len};
	return s;
}

static int pk__parse_request_line(struct pk_http1_parser *p, size_t ll)
{
	const char *b = p->pk__buf;
	const char *sp1 = memchr(b, ' ', ll);
	const char *sp2;

	if (!sp1 || sp1 == b)
		return pk__fail(p, 400, "malformed request line");
	sp2 = memchr(sp1 + 1, ' ', ll - (size_t)(sp1 + 1 - b));
	if (!sp2 || sp2 == sp1 + 1)
		return pk__fail(p, 400, "malformed request line");
	p->method = pk__span(0, (size_t)(sp1 - b));
	p->target = pk__span((size_t)(sp1 + 1 - b), (size_t)(sp2 - sp1 - 1));
	return pk__parse_version(p, sp2 + 1, ll - (size_t)(sp2 + 1 - b), 1);
}

static int pk__parse_status_line(struct pk_http1_parser *p, size_t ll)
{
	const char *b = p->pk__buf;
	int r;

	if (ll < 12 || b[8] != ' ')
		return pk__fail(p, 400, "malformed status line");
	r = pk__parse_version(p, b, 8, 0);
	if (r < 0)
		return r;
	for (int i = 9; i < 12; i++)
		if (b[i] < '0' || b[i] > '9')
			return pk__fail(p, 400, "malformed status line");
	p->status = (unsigned)((b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0'));
	if (p->status < 100 || p->status > 599)
		return pk__fail(p, 400, "status code out of range");
	if (ll == 12) {
		p->reason = pk__span(12, 0);
		return 0;
	}
	if (b[12] != ' ')
		return pk__fail(p, 400, "malformed status line");
	p->reason = pk__span(13, ll - 13);
	return 0;
}

static int pk__on_field(http_parser *hp, const char *at, size_t len)
{
	struct pk_http1_parser *p = hp->data;
	size_t off = (size_t)(at - p->pk__buf);
	struct pk_http1_header *h;

	if (p->pk__last_cb == PK__CB_FIELD && p->n_headers > 0) {
		h = &p->headers[p->n_headers - 1];
		h->name.len = (uint32_t)(off + len - h->name.off);
		return 0;
	}
	if (p->n_headers >= p->pk__hcap)
		return 1; /* cannot happen: the line pass counted them */
	h = &p->headers[p->n_headers++];
	h->name = pk__span(off, len);
	h->value = pk__span(off + len, 0);
	p->pk__last_cb = PK__CB_FIELD;
	return 0;
}

static int pk__on_value(http_parser *hp, const char *at, size_t len)
{
	struct pk_http1_parser *p = hp->data;
	size_t off = (size_t)(at - p->pk__buf);
	struct pk_http1_header *h;

	if (p->n_headers == 0)
		return 1;
	h = &p->headers[p->n_headers - 1];
	if (p->pk__last_cb == PK__CB_VALUE)
		h->value.len = (uint32_t)(off + len - h->value.off);
	else
		h->value = pk__span(off, len);
	p->pk__last_cb = PK__CB_VALUE;
	return 0;
}

static int pk__on_headers_complete(http_parser *hp)
{
	struct pk_http1_parser *p = hp->data;

	p->pk__last_cb = -1; /* marks completion */
	return 0;
}

/* Gives each parsed header its id, and the parser the mask lookups test first. */
static void pk__classify(struct pk_http1_parser *p)
{
	p->pk__known = 0;
	for (unsigned i = 0; i < p->n_headers; i++) {
		struct pk_http1_header *h = &p->headers[i];
		h->known = pk_http1_known_id(pk_http1_ptr(p, h->name), h->name.len);
		p->pk__known |= 1u << h->known;
	}
}

static int pk__map_hp_error(struct pk_http1_parser *p, enum http_errno e)
{
	p->hp_errno = (int)e;
	switch (e) {
	case HPE_HEADER_OVERFLOW:
		return pk__fail(p, 431, "head too large");
	case HPE_INVALID_VERSION:
		return pk__fail(p, 505, "unsupported HTTP version");
	case HPE_INVALID_METHOD:
		return pk__fail(p, 501, "unknown method");
	case HPE_INVALID_CONTENT_LENGTH:
		return pk__fail(p, 400, "invalid content-length");
	case HPE_UNEXPECTED_CONTENT_LENGTH:
		pk__classify(p); /* the headers read before the error */
		if (pk__count(p, PK_H_TRANSFER_ENCODING) > 0)
			return pk__fail(p, 400, "content-length with transfer-encoding");
		return pk__fail(p, 400, "repeated content-length");
	case HPE_INVALID_TRANSFER_ENCODING:
		return pk__fail(p, 400, "transfer-encoding must end in chunked");
	case HPE_INVALID_HEADER_TOKEN:
		return pk__fail(p, 400, "invalid header field");
	case HPE_INVALID_URL:
	case HPE_INVALID_HOST:
	case HPE_INVALID_PORT:
	case HPE_INVALID_PATH:
	case HPE_INVALID_QUERY_STRING:
	case HPE_INVALID_FRAGMENT:
		return pk__fail(p, 400, "invalid request target");
	case HPE_INVALID_STATUS:
		return pk__fail(p, 400, "malformed status line");
	default:
		return pk__fail(p, 400, "malformed head");
	}
}

static void pk__trim_values(struct pk_http1_parser *p)
{
	for (unsigned i = 0; i < p->n_headers; i++) {
		struct pk_http1_span *v = &p->headers[i].value;
		while (v->len > 0 && pk__is_ows((unsigned char)p->pk__buf[v->off]))
			v->off++, v->len--;
		while (v->len > 0 && pk__is_ows((unsigned char)p->pk__buf[v->off + v->len - 1]))
			v->len--;
	}
}

/* A response's header lines, split at the first colon. Everything libhttp-parser would
 * check in a response head is checked by the scanner, the status line, pk__check_lines and
 * the framing rules, so responses skip it: about 3,500 of the 26,700 instructions of a
 * proxied request (callgrind). fuzz_http1 holds the two to the same header spans. */
static void pk__split_headers(struct pk_http1_parser *p)
{
	const char *b = p->pk__buf;
	size_t end = p->pk__len - 2; /* the final empty line */
	size_t pos = (size_t)((const char *)memchr(b, '\n', end) - b) + 1;

	p->n_headers = 0;
	while (pos < end) {
		const char *line = b + pos;
		size_t ll = (size_t)((const char *)memchr(line, '\r', end - pos) - line);
		size_t nl = (size_t)((const char *)memchr(line, ':', ll) - line);
		struct pk_http1_header *h = &p->headers[p->n_headers++];
		h->name = pk__span(pos, nl);
		h->value = pk__span(pos + nl + 1, ll - nl - 1);
		pos += ll + 2;
	}
	pk__trim_values(p);
}

static int pk__run_http_parser(struct pk_http1_parser *p)
{
	http_parser hp;
	http_parser_settings st;
	enum http_errno e;

	http_parser_settings_init(&st);
	st.on_header_field = pk__on_field;
	st.on_header_value = pk__on_value;
	st.on_headers_complete = pk__on_headers_complete;
	http_parser_init(&hp, p->type == PK_HTTP1_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE);
	hp.data = p;
	http_parser_execute(&hp, &st, p->pk__buf, p->pk__len);
	e = HTTP_PARSER_ERRNO(&hp);
	pk__trim_values(p);
	if (e != HPE_OK && e != HPE_PAUSED)
		return pk__map_hp_error(p, e);
	if (p->pk__last_cb != -1)
		return pk__fail(p, 400, "malformed head");
	return 0;
}

static unsigned pk__count(const struct pk_http1_parser *p, enum pk_http1_known id)
{
	unsigned n = 0;
	for (int i = pk_http1_find_known(p, id, 0); i >= 0; i = pk_http1_find_known(p, id, i + 1))
		n++;
	return n;
}

static const char *pk__get(const struct pk_http1_parser *p, enum pk_http1_known id, size_t *len)
{
	int i = pk_http1_find_known(p, id, 0);
	*len = i < 0 ? 0 : p->headers[i].value.len;
	return i < 0 ? NULL : pk_http1_ptr(p, p->headers[i].value);
}

/* Calls fn(ctx, token, len) for each element of each comma list in headers `name`. */
typedef int (*pk__token_fn)(void *ctx, const char *tok, size_t len);

/* The next header at index >= from: by id, or by name for one without an id. */
static int pk__next(const struct pk_http1_parser *p, enum pk_http1_known id, const char *name,
                    int from)
{
	return id != PK_H_OTHER ? pk_http1_find_known(p, id, from) : pk_http1_find(p, name, from);
}

static int pk__each_token(const struct pk_http1_parser *p, enum pk_http1_known id, const char *name,
                          pk__token_fn fn, void *ctx)
{
	for (int i = pk__next(p, id, name, 0); i >= 0; i = pk__next(p, id, name, i + 1)) {
		const char *v = pk_http1_ptr(p, p->headers[i].value);
		size_t n = p->headers[i].value.len, pos = 0;

		while (pos <= n) {
			const char *comma = memchr(v + pos, ',', n - pos);
			size_t end = comma ? (size_t)(comma - v) : n;
			size_t s = pos, e = end;

			while (s < e && pk__is_ows((unsigned char)v[s]))
				s++;
			while (e > s && pk__is_ows((unsigned char)v[e - 1]))
				e--;
			if (e > s) {
				int r = fn(ctx, v + s, e - s);
				if (r)
					return r;
			}
			pos = end + 1;
		}
	}
	return 0;
}

struct pk__te {
	unsigned total, chunked;
	int last_chunked;
};

static int pk__te_token(void *ctx, const char *tok, size_t len)
{
	struct pk__te *te = ctx;
	int is_chunked = len == 7 && pk__memieq(tok, "chunked", 7);

	te->total++;
	te->chunked += is_chunked;
	te->last_chunked = is_chunked;
	return 0;
}

static int pk__parse_content_length(struct pk_http1_parser *p)
{
	int i = pk_http1_find_known(p, PK_H_CONTENT_LENGTH, 0);
	const char *v = pk_http1_ptr(p, p->headers[i].value);
	size_t n = p->headers[i].value.len;
	uint64_t cl = 0;

	/* 15 digits (< 10^15) keeps every sum of lengths far from overflow. */
	if (n == 0 || n > 15)
		return pk__fail(p, 400, "invalid content-length");
	for (size_t k = 0; k < n; k++) {
		if (v[k] < '0' || v[k] > '9')
			return pk__fail(p, 400, "invalid content-length");
		cl = cl * 10 + (uint64_t)(v[k] - '0');
	}
	p->content_length = cl;
	return 0;
}

/* Decides body_kind from Content-Length / Transfer-Encoding (before the response special
 * cases). Checked here as well as by libhttp-parser. */
static int pk__framing(struct pk_http1_parser *p)
{
	unsigned ncl = pk__count(p, PK_H_CONTENT_LENGTH);
	unsigned nte = pk__count(p, PK_H_TRANSFER_ENCODING);
	int req = p->type == PK_HTTP1_REQUEST;
	struct pk__te te = {0, 0, 0};

	if (ncl > 1)
		return pk__fail(p, 400, "repeated content-length");
	if (ncl && nte)
		return pk__fail(p, 400, "content-length with transfer-encoding");
	if (ncl) {
		p->body_kind = PK_HTTP1_BODY_LENGTH;
		return pk__parse_content_length(p);
	}
	if (!nte) {
		p->body_kind = req ? PK_HTTP1_BODY_NONE : PK_HTTP1_BODY_UNTIL_CLOSE;
		return 0;
	}
	pk__each_token(p, PK_H_TRANSFER_ENCODING, NULL, pk__te_token, &te);
	if (te.total == 0)
		return pk__fail(p, 400, "empty transfer-encoding");
	if (te.chunked > 1)
		return pk__fail(p, 400, "chunked applied twice");
	if (req && p->version_minor == 0)
		return pk__fail(p, 400, "transfer-encoding in HTTP/1.0 request");
	if (req && !te.last_chunked)
		return pk__fail(p, 400, "transfer-encoding must end in chunked");
	if (req && te.total > 1)
		return pk__fail(p, 501, "unsupported transfer-encoding");
	/* A response whose codings do not end in chunked (or an HTTP/1.0 one with any
	 * Transfer-Encoding) is delimited by the connection close (RFC 9112 6.1, 6.3). */
	if (te.last_chunked && p->version_minor == 1)
		p->body_kind = PK_HTTP1_BODY_CHUNKED;
	else
		p->body_kind = PK_HTTP1_BODY_UNTIL_CLOSE;
	return 0;
}

static int pk__host_char(int c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c != 0 && strchr("-._~!$&'()*+,;=%:[]", c) != NULL;
}

static int pk__check_host(struct pk_http1_parser *p)
{
	unsigned n = pk__count(p, PK_H_HOST);
	size_t len;
	const char *h;

	if (n > 1)
		return pk__fail(p, 400, "multiple host headers");
	if (n == 0) {
		if (p->version_minor == 1)
			return pk__fail(p, 400, "missing host header");
		return 0;
	}
	h = pk__get(p, PK_H_HOST, &len);
	for (size_t i = 0; i < len; i++)
		if (!pk__host_char((unsigned char)h[i]))
			return pk__fail(p, 400, "invalid host header");
	return 0;
}

static int pk__starts_ci(const char *s, size_t n, const char *prefix)
{
	size_t pl = strlen(prefix);
	return n >= pl && pk__memieq(s, prefix, pl);
}

/* Origin-form, "*" for OPTIONS, or absolute-form naming exactly the Host header. */
static int pk__check_target(struct pk_http1_parser *p)
{
	const char *t = pk_http1_ptr(p, p->target);
	size_t n = p->target.len, skip, alen = 0;
	const char *host;
	size_t host_len;

	if (t[0] == '/')
		return 0;
	if (n == 1 && t[0] == '*') {
		if (pk_http1_span_ieq(p, p->method, "OPTIONS"))
			return 0;
		return pk__fail(p, 400, "invalid request target");
	}
	if (pk__starts_ci(t, n, "http://"))
		skip = 7;
	else if (pk__starts_ci(t, n, "https://"))
		skip = 8;
	else
		return pk__fail(p, 400, "invalid request target");
	while (skip + alen < n && !strchr("/?#", t[skip + alen]))
		alen++;
	if (alen == 0)
		return pk__fail(p, 400, "invalid request target");
	if (memchr(t + skip, '@', alen))
		return pk__fail(p, 400, "userinfo in request target");
	host = pk__get(p, PK_H_HOST, &host_len);
	if (!host || host_len != alen || !pk__memieq(host, t + skip, alen))
		return pk__fail(p, 400, "absolute-form target does not match host");
	return 0;
}

static int pk__finish_request(struct pk_http1_parser *p)
{
	int r;

	/* The proxy is not a forward proxy: no tunnels to arbitrary hosts. */
	if (pk_http1_span_ieq(p, p->method, "CONNECT"))
		return pk__fail(p, 400, "CONNECT not allowed");
	if ((r = pk__check_host(p)) < 0 || (r = pk__check_target(p)) < 0 ||
	    (r = pk__framing(p)) < 0)
		return r;
	if (p->version_minor == 1)
		p->keep_alive = !pk__has_token(p, PK_H_CONNECTION, "close");
	else
		p->keep_alive = pk__has_token(p, PK_H_CONNECTION, "keep-alive") &&
		                !pk__has_token(p, PK_H_CONNECTION, "close");
	p->upgrade = p->version_minor == 1 && pk_http1_span_ieq(p, p->method, "GET") &&
	             pk__has_token(p, PK_H_CONNECTION, "upgrade") &&
	             pk__has_token(p, PK_H_UPGRADE, "websocket");
	return 0;
}

static int pk__finish_response(struct pk_http1_parser *p)
{
	int r = pk__framing(p);
	unsigned s = p->status;

	if (r < 0)
		return r;
	if (p->is_head_response || (s >= 100 && s < 200) || s == 204 || s == 304)
		p->body_kind = PK_HTTP1_BODY_NONE;
	if (p->body_kind != PK_HTTP1_BODY_LENGTH)
		p->content_length = 0;
	if (p->version_minor == 1)
		p->keep_alive = !pk__has_token(p, PK_H_CONNECTION, "close");
	else
		p->keep_alive = pk__has_token(p, PK_H_CONNECTION, "keep-alive") &&
		                !pk__has_token(p, PK_H_CONNECTION, "close");
	if (p->body_kind == PK_HTTP1_BODY_UNTIL_CLOSE)
		p->keep_alive = 0;
	if (s == 101) {
		p->upgrade = 1;
		p->keep_alive = 0;
	}
	return 0;
}

static int pk__finish(struct pk_http1_parser *p)
{
	size_t ll = (size_t)((const char *)memchr(p->pk__buf, '\r', p->pk__len) - p->pk__buf);
	unsigned count;
	int r;

	r = p->type == PK_HTTP1_REQUEST ? pk__parse_request_line(p, ll)
	                                : pk__parse_status_line(p, ll);
	if (r < 0 || (r = pk__check_lines(p, &count)) < 0)
		return r;
	if (count > p->pk__hcap) {
		struct pk_http1_header *h = realloc(p->headers, count * sizeof(*h));
		if (!h)
			return -ENOMEM;
		p->headers = h;
		p->pk__hcap = count;
	}
	if (p->type == PK_HTTP1_RESPONSE)
		pk__split_headers(p);
	else if ((r = pk__run_http_parser(p)) < 0)
		return r;
	if (p->n_headers != count)
		return pk__fail(p, 400, "malformed head");
	pk__classify(p);
	return p->type == PK_HTTP1_REQUEST ? pk__finish_request(p) : pk__finish_response(p);
}

/* ---- the byte scanner ---- */

/* Scans one head byte. Returns 0 to go on, 1 at the end of the head, or a rejection
 * reason. *start is where this chunk's head bytes begin (after skipped empty lines). */
static int pk__scan_byte(struct pk_http1_parser *p, unsigned char c, size_t i, size_t *start,
                         const char **why)
{
	if (p->pk__state == PK__S_PRE) {
		if (c == '\r') {
			p->pk__state = PK__S_PRE_LF;
			p->pk__skipped++;
			*start = i + 1;
			return 0;
		}
		p->pk__state = PK__S_HEAD;
		*start = i;
	} else if (p->pk__state == PK__S_PRE_LF) {
		if (c != '\n')
			goto bare_cr;
		p->pk__state = PK__S_PRE;
		p->pk__skipped++;
		*start = i + 1;
		return 0;
	}
	if (p->pk__prev == '\r') {
		if (c != '\n')
			goto bare_cr;
		p->pk__prev = '\n';
		if (p->pk__line_len == 0)
			return 1;
		p->pk__line_len = 0;
		return 0;
	}
	if (c == '\n')
		*why = "bare LF in head";
	else if (c == 0)
		*why = "NUL in head";
	else if (pk__is_ctl(c) && c != '\r')
		*why = "control character in head";
	if (*why)
		return -1;
	p->pk__prev = c;
	if (c != '\r')
		p->pk__line_len++;
	return 0;
bare_cr:
	*why = "bare CR in head";
	return -1;
}

int pk_http1_parser_feed(struct pk_http1_parser *p, const void *data, size_t len, size_t *used)
{
	const unsigned char *d = data;
	size_t i = 0, start = 0;
	const char *why = NULL;
	int r = 0;

	*used = 0;
	if (p->pk__state == PK__S_DONE || p->pk__state == PK__S_FAILED)
		return -EINVAL;
	while (i < len && r == 0) {
		/* Fast path: a run of ordinary bytes (no CR, LF or control byte) inside a line
		 * only extends the line, so it is skipped in one go, never past the head limit;
		 * the byte that ends the run takes the careful path below. */
		if (p->pk__state == PK__S_HEAD && p->pk__prev != '\r') {
			size_t room = p->pk__max_head - (p->pk__skipped + p->pk__len + (i - start));
			size_t end = len - i < room ? len : i + room, j = i;
			uint64_t x;
			while (end - j >= 8 && (memcpy(&x, d + j, 8), pk__word_plain(x)))
				j += 8;
			while (j < end && !pk__is_ctl(d[j]))
				j++;
			if (j > i) {
				p->pk__line_len += (int)(j - i);
				p->pk__prev = d[j - 1];
				i = j;
				continue;
			}
		}
		/* Checked per byte so that where a head is cut does not change the verdict. */
		if (p->pk__skipped + p->pk__len + (i - start) + 1 > p->pk__max_head) {
			*used = i;
			return pk__fail(p, 431, "head too large");
		}
		r = pk__scan_byte(p, d[i], i, &start, &why);
		if (r < 0) {
			*used = i;
			return pk__fail(p, 400, why);
		}
		i++;
	}
	*used = i;
	if (p->pk__state != PK__S_HEAD)
		return 0;
	if (pk__append(p, (const char *)d + start, i - start) < 0) {
		p->pk__state = PK__S_FAILED;
		return -ENOMEM;
	}
	if (r == 0)
		return 0;
	r = pk__finish(p);
	if (r < 0) {
		p->pk__state = PK__S_FAILED;
		return r;
	}
	p->pk__state = PK__S_DONE;
	return 1;
}

/* ---- accessors ---- */

const char *pk_http1_raw_head(const struct pk_http1_parser *p, size_t *len)
{
	if (p->pk__state != PK__S_DONE) {
		*len = 0;
		return NULL;
	}
	*len = p->pk__len;
	return p->pk__buf;
}

const char *pk_http1_ptr(const struct pk_http1_parser *p, struct pk_http1_span s)
{
	return p->pk__buf ? p->pk__buf + s.off : "";
}

int pk_http1_span_ieq(const struct pk_http1_parser *p, struct pk_http1_span s, const char *str)
{
	const char *v = pk_http1_ptr(p, s);
	/* Most calls compare different names: the first byte settles them without strlen. */
	if (s.len == 0 || str[0] == '\0')
		return s.len == 0 && str[0] == '\0';
	if (pk__lower((unsigned char)v[0]) != pk__lower((unsigned char)str[0]))
		return 0;
	return strlen(str) == s.len && pk__memieq(v, str, s.len);
}

static int pk__is(const char *s, size_t n, const char *lower, size_t ln)
{
	return n == ln && pk__memieq(s, lower, n);
}

#define PK__IS(lit) pk__is(s, n, lit, sizeof(lit) - 1)

enum pk_http1_known pk_http1_known_id(const char *s, size_t n)
{
	if (n < 2 || n > 19)
		return PK_H_OTHER;
	switch (pk__lower((unsigned char)s[0])) {
	case 'h':
		return PK__IS("host") ? PK_H_HOST : PK_H_OTHER;
	case 'c':
		return PK__IS("content-length") ? PK_H_CONTENT_LENGTH
		       : PK__IS("connection")   ? PK_H_CONNECTION
		                                : PK_H_OTHER;
	case 't':
		return PK__IS("transfer-encoding") ? PK_H_TRANSFER_ENCODING
		       : PK__IS("te")              ? PK_H_TE
		       : PK__IS("trailer")         ? PK_H_TRAILER
		                                   : PK_H_OTHER;
	case 'u':
		return PK__IS("upgrade") ? PK_H_UPGRADE : PK_H_OTHER;
	case 'k':
		return PK__IS("keep-alive") ? PK_H_KEEP_ALIVE : PK_H_OTHER;
	case 'p':
		return PK__IS("proxy-connection")      ? PK_H_PROXY_CONNECTION
		       : PK__IS("proxy-authenticate")  ? PK_H_PROXY_AUTHENTICATE
		       : PK__IS("proxy-authorization") ? PK_H_PROXY_AUTHORIZATION
		                                       : PK_H_OTHER;
	case 'x':
		return PK__IS("x-forwarded-for")     ? PK_H_X_FORWARDED_FOR
		       : PK__IS("x-forwarded-proto") ? PK_H_X_FORWARDED_PROTO
		       : PK__IS("x-piko-forward")    ? PK_H_X_PIKO_FORWARD
		       : PK__IS("x-piko-endpoint")   ? PK_H_X_PIKO_ENDPOINT
		                                     : PK_H_OTHER;
	default:
		return PK_H_OTHER;
	}
}

#undef PK__IS

int pk_http1_find_known(const struct pk_http1_parser *p, enum pk_http1_known id, int from)
{
	if (id == PK_H_OTHER || !(p->pk__known & (1u << id)))
		return -1;
	for (unsigned i = from < 0 ? 0 : (unsigned)from; i < p->n_headers; i++)
		if (p->headers[i].known == (unsigned)id)
			return (int)i;
	return -1;
}

int pk_http1_find(const struct pk_http1_parser *p, const char *name, int from)
{
	size_t nlen = strlen(name);
	enum pk_http1_known id = pk_http1_known_id(name, nlen);
	if (id != PK_H_OTHER)
		return pk_http1_find_known(p, id, from);
	for (unsigned i = from < 0 ? 0 : (unsigned)from; i < p->n_headers; i++) {
		const struct pk_http1_span *h = &p->headers[i].name;
		if (h->len == nlen && pk__memieq(pk_http1_ptr(p, *h), name, nlen))
			return (int)i;
	}
	return -1;
}

const char *pk_http1_get(const struct pk_http1_parser *p, const char *name, size_t *len)
{
	int i = pk_http1_find(p, name, 0);

	if (len)
		*len = i < 0 ? 0 : p->headers[i].value.len;
	return i < 0 ? NULL : pk_http1_ptr(p, p->headers[i].value);
}

unsigned pk_http1_count(const struct pk_http1_parser *p, const char *name)
{
	unsigned n = 0;

	for (int i = pk_http1_find(p, name, 0); i >= 0; i = pk_http1_find(p, name, i + 1))
		n++;
	return n;
}

static int pk__token_eq(void *ctx, const char *tok, size_t len)
{
	const char *want = ctx;
	return strlen(want) == len && pk__memieq(tok, want, len);
}

static int pk__has_token(const struct pk_http1_parser *p, enum pk_http1_known id, const char *token)
{
	return pk__each_token(p, id, NULL, pk__token_eq, (void *)token) != 0;
}

int pk_http1_has_token(const struct pk_http1_parser *p, const char *name, const char *token)
{
	return pk__each_token(p, pk_http1_known_id(name, strlen(name)), name, pk__token_eq,
	                      (void *)token) != 0;
}

/* ---- endpoint ---- */

int pk_http1_endpoint_from_host(const char *host, size_t len, size_t *label_len)
{
	const char *colon, *dot;
	size_t hl = len, i;

	if (len == 0 || host[0] == '[')
		return 0;
	colon = memchr(host, ':', len);
	if (colon) {
		if (memchr(colon + 1, ':', len - (size_t)(colon - host) - 1))
			return 0; /* unbracketed IPv6 */
		hl = (size_t)(colon - host);
	}
	dot = memchr(host, '.', hl);
	if (!dot || dot == host)
		return 0;
	for (i = 0; i < hl; i++)
		if (host[i] != '.' && (host[i] < '0' || host[i] > '9'))
			break;
	if (i == hl)
		return 0; /* IPv4 (or another all-numeric address form) */
	*label_len = (size_t)(dot - host);
	return 1;
}

int pk_http1_endpoint(const struct pk_http1_parser *p, const char **id, size_t *len)
{
	const char *v;
	size_t n;

	for (int i = pk_http1_find_known(p, PK_H_X_PIKO_ENDPOINT, 0); i >= 0;
	     i = pk_http1_find_known(p, PK_H_X_PIKO_ENDPOINT, i + 1)) {
		if (p->headers[i].value.len > 0) {
			*id = pk_http1_ptr(p, p->headers[i].value);
			*len = p->headers[i].value.len;
			return 1;
		}
	}
	v = pk__get(p, PK_H_HOST, &n);
	if (!v || !pk_http1_endpoint_from_host(v, n, len))
		return 0;
	*id = v;
	return 1;
}

/* ---- writers ---- */

struct pk__w {
	char *buf;
	size_t size, len;
	int full;
};

static void pk__put(struct pk__w *w, const void *s, size_t n)
{
	if (w->full || n > w->size - w->len) {
		w->full = 1;
		return;
	}
	memcpy(w->buf + w->len, s, n);
	w->len += n;
}

static void pk__puts(struct pk__w *w, const char *s)
{
	pk__put(w, s, strlen(s));
}

static void pk__put_span(struct pk__w *w, const struct pk_http1_parser *p, struct pk_http1_span s)
{
	pk__put(w, pk_http1_ptr(p, s), s.len);
}

struct pk__named {
	const struct pk_http1_parser *p;
	struct pk_http1_span name;
};

static int pk__token_is_name(void *ctx, const char *tok, size_t len)
{
	struct pk__named *n = ctx;
	return n->name.len == len && pk__memieq(pk_http1_ptr(n->p, n->name), tok, len);
}

static int pk__drop_header(const struct pk_http1_parser *p, const struct pk_http1_header *h,
                           const struct pk_http1_proxy_opts *o)
{
	struct pk__named named = {p, h->name};

	switch ((enum pk_http1_known)h->known) {
	case PK_H_CONNECTION:
	case PK_H_KEEP_ALIVE:
	case PK_H_PROXY_CONNECTION:
	case PK_H_PROXY_AUTHENTICATE:
	case PK_H_PROXY_AUTHORIZATION:
	case PK_H_TE:
	case PK_H_TRAILER:
	case PK_H_UPGRADE:
	case PK_H_X_FORWARDED_PROTO:
	case PK_H_X_PIKO_FORWARD:
		return 1; /* hop-by-hop, or ours to set */
	case PK_H_X_FORWARDED_FOR:
		return o->client_addr != NULL;
	case PK_H_TRANSFER_ENCODING:
		return p->body_kind != PK_HTTP1_BODY_CHUNKED;
	case PK_H_HOST:
	case PK_H_CONTENT_LENGTH:
		return 0; /* framing and routing headers stay whatever Connection says */
	default:
		return pk__each_token(p, PK_H_CONNECTION, NULL, pk__token_is_name, &named) != 0;
	}
}

static void pk__put_xff(struct pk__w *w, const struct pk_http1_parser *p, const char *addr)
{
	pk__puts(w, "X-Forwarded-For: ");
	for (int i = pk_http1_find_known(p, PK_H_X_FORWARDED_FOR, 0); i >= 0;
	     i = pk_http1_find_known(p, PK_H_X_FORWARDED_FOR, i + 1)) {
		if (p->headers[i].value.len == 0)
			continue;
		pk__put_span(w, p, p->headers[i].value);
		pk__puts(w, ", ");
	}
	pk__puts(w, addr);
	pk__puts(w, "\r\n");
}

ssize_t pk_http1_build_proxy_request(const struct pk_http1_parser *p,
                                     const struct pk_http1_proxy_opts *o, char *buf, size_t size)
{
	struct pk__w w = {buf, size, 0, 0};

	if (p->pk__state != PK__S_DONE || p->type != PK_HTTP1_REQUEST)
		return -EINVAL;
	if (o->client_addr)
		for (const char *c = o->client_addr; *c; c++)
			if (pk__is_ctl((unsigned char)*c) || *c == ',' || *c == '\t')
				return -EINVAL;
	pk__put_span(&w, p, p->method);
	pk__puts(&w, " ");
	pk__put_span(&w, p, p->target);
	pk__puts(&w, " HTTP/1.1\r\n");
	/* HTTP/1.1 requires a Host; an HTTP/1.0 request may lack one (RFC 9112 3.2: empty). */
	if (pk__count(p, PK_H_HOST) == 0)
		pk__puts(&w, "Host: \r\n");
	for (unsigned i = 0; i < p->n_headers; i++) {
		const struct pk_http1_header *h = &p->headers[i];
		if (pk__drop_header(p, h, o))
			continue;
		pk__put_span(&w, p, h->name);
		pk__puts(&w, ": ");
		pk__put_span(&w, p, h->value);
		pk__puts(&w, "\r\n");
	}
	if (o->client_addr)
		pk__put_xff(&w, p, o->client_addr);
	pk__puts(&w, o->https ? "X-Forwarded-Proto: https\r\n" : "X-Forwarded-Proto: http\r\n");
	pk__puts(&w, "X-Piko-Forward: true\r\n");
	if (p->upgrade)
		pk__puts(&w, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
	else if (!o->keep_alive)
		pk__puts(&w, "Connection: close\r\n");
	pk__puts(&w, "\r\n");
	return w.full ? -ENOSPC : (ssize_t)w.len;
}

static int pk__is_token(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      (c && strchr("!#$%&'*+-.^_`|~", c))))
			return 0;
	}
	return 1;
}

static int pk__is_field_text(const char *s)
{
	for (; *s; s++)
		if (pk__is_ctl((unsigned char)*s))
			return 0;
	return 1;
}

const char *pk_http1_reason(unsigned status)
{
	const char *r = http_status_str((enum http_status)status);
	return (r && r[0] != '<') ? r : "Unknown";
}

ssize_t pk_http1_build_response(char *buf, size_t size, unsigned status, const char *reason,
                                const char *content_type, const struct pk_http1_field *extra,
                                size_t n_extra, const void *body, size_t body_len, int close)
{
	struct pk__w w = {buf, size, 0, 0};
	char line[64];

	if (status < 100 || status > 599)
		return -EINVAL;
	if (!reason)
		reason = pk_http1_reason(status);
	if (!pk__is_field_text(reason) || (content_type && !pk__is_field_text(content_type)))
		return -EINVAL;
	for (size_t i = 0; i < n_extra; i++)
		if (!pk__is_token(extra[i].name) || !pk__is_field_text(extra[i].value))
			return -EINVAL;
	snprintf(line, sizeof(line), "HTTP/1.1 %u ", status);
	pk__puts(&w, line);
	pk__puts(&w, reason);
	pk__puts(&w, "\r\n");
	if (content_type) {
		pk__puts(&w, "Content-Type: ");
		pk__puts(&w, content_type);
		pk__puts(&w, "\r\n");
	}
	snprintf(line, sizeof(line), "Content-Length: %zu\r\n", body_len);
	pk__puts(&w, line);
	for (size_t i = 0; i < n_extra; i++) {
		pk__puts(&w, extra[i].name);
		pk__puts(&w, ": ");
		pk__puts(&w, extra[i].value);
		pk__puts(&w, "\r\n");
	}
	if (close)
		pk__puts(&w, "Connection: close\r\n");
	pk__puts(&w, "\r\n");
	if (body_len)
		pk__put(&w, body, body_len);
	return w.full ? -ENOSPC : (ssize_t)w.len;
}

ssize_t pk_http1_build_error(char *buf, size_t size, unsigned status, const char *message,
                             int close)
{
	char body[512];
	struct pk__w w = {body, sizeof(body), 0, 0};

	pk__puts(&w, "{\"error\":\"");
	for (const char *c = message; *c; c++) {
		unsigned char ch = (unsigned char)*c;
		char esc[8];
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			pk__put(&w, esc, 2);
		} else if (ch < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			pk__put(&w, esc, 6);
		} else {
			pk__put(&w, c, 1);
		}
	}
	pk__puts(&w, "\"}");
	if (w.full)
		return -EINVAL; /* messages are short fixed strings */
	return pk_http1_build_response(buf, size, status, NULL, "application/json", NULL, 0, body,
	                               w.len, close);
}

/* ---- body framer ---- */

enum {
	PK__C_SIZE_START = 0, /* first hex digit of a chunk size */
	PK__C_SIZE,           /* more hex digits */
	PK__C_SIZE_WS,        /* whitespace after the digits */
	PK__C_EXT,            /* chunk extensions, up to CR */
	PK__C_SIZE_LF,
	PK__C_DATA,
	PK__C_DATA_CR,
	PK__C_DATA_LF,
	PK__C_TRAILER_START, /* start of a trailer line or of the final CRLF */
	PK__C_TRAILER,
	PK__C_TRAILER_LF,
	PK__C_END_LF,
};

#define PK__MAX_SIZE_DIGITS 15
#define PK__MAX_EXT         4096
#define PK__MAX_TRAILER     (16 * 1024)

void pk_http1_body_init(struct pk_http1_body *b, enum pk_http1_body_kind kind, uint64_t length)
{
	memset(b, 0, sizeof(*b));
	b->kind = kind;
	if (kind == PK_HTTP1_BODY_LENGTH)
		b->remaining = length;
	b->done = kind == PK_HTTP1_BODY_NONE || (kind == PK_HTTP1_BODY_LENGTH && length == 0);
}

void pk_http1_body_init_from(struct pk_http1_body *b, const struct pk_http1_parser *p)
{
	pk_http1_body_init(b, p->body_kind, p->content_length);
}

static int pk__hex(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = pk__lower(c);
	return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static ssize_t pk__chunk_fail(struct pk_http1_body *b, const char *why)
{
	b->error_reason = why;
	b->pk__state = -1;
	return -EPROTO;
}

/* One byte of chunk framing (not chunk data). Returns 0 or -EPROTO. */
static ssize_t pk__chunk_byte(struct pk_http1_body *b, unsigned char c)
{
	int h = pk__hex(c);

	switch (b->pk__state) {
	case PK__C_SIZE_START:
		if (h < 0)
			return pk__chunk_fail(b, "bad chunk size");
		b->remaining = (uint64_t)h;
		b->pk__digits = 1;
		b->pk__state = PK__C_SIZE;
		return 0;
	case PK__C_SIZE:
		if (h >= 0) {
			if (++b->pk__digits > PK__MAX_SIZE_DIGITS)
				return pk__chunk_fail(b, "chunk size too large");
			b->remaining = b->remaining * 16 + (uint64_t)h;
			return 0;
		}
		/* fall through */
	case PK__C_SIZE_WS:
		if (pk__is_ows(c)) {
			b->pk__state = PK__C_SIZE_WS;
			return 0;
		}
		if (c == ';') {
			b->pk__line = 0;
			b->pk__state = PK__C_EXT;
			return 0;
		}
		if (c == '\r') {
			b->pk__state = PK__C_SIZE_LF;
			return 0;
		}
		return pk__chunk_fail(b, "bad chunk size");
	case PK__C_EXT:
		if (c == '\r') {
			b->pk__state = PK__C_SIZE_LF;
			return 0;
		}
		if (pk__is_ctl(c) || ++b->pk__line > PK__MAX_EXT)
			return pk__chunk_fail(b, "bad chunk extension");
		return 0;
	case PK__C_SIZE_LF:
		if (c != '\n')
			return pk__chunk_fail(b, "bare CR in chunk size");
		b->pk__state = b->remaining ? PK__C_DATA : PK__C_TRAILER_START;
		return 0;
	case PK__C_DATA_CR:
		if (c != '\r')
			return pk__chunk_fail(b, "missing CRLF after chunk");
		b->pk__state = PK__C_DATA_LF;
		return 0;
	case PK__C_DATA_LF:
		if (c != '\n')
			return pk__chunk_fail(b, "missing CRLF after chunk");
		b->pk__state = PK__C_SIZE_START;
		return 0;
	case PK__C_TRAILER_START:
		if (c == '\r') {
			b->pk__state = PK__C_END_LF;
			return 0;
		}
		if (pk__is_ows(c))
			return pk__chunk_fail(b, "obsolete line folding in trailer");
		/* fall through */
	case PK__C_TRAILER:
		if (++b->pk__trailer > PK__MAX_TRAILER)
			return pk__chunk_fail(b, "trailer too large");
		if (c == '\r') {
			b->pk__state = PK__C_TRAILER_LF;
			return 0;
		}
		if (pk__is_ctl(c))
			return pk__chunk_fail(b, "control character in trailer");
		b->pk__state = PK__C_TRAILER;
		return 0;
	case PK__C_TRAILER_LF:
		if (c != '\n')
			return pk__chunk_fail(b, "bare CR in trailer");
		b->pk__state = PK__C_TRAILER_START;
		return 0;
	case PK__C_END_LF:
		if (c != '\n')
			return pk__chunk_fail(b, "bare CR at end of body");
		b->done = 1;
		return 0;
	default:
		return pk__chunk_fail(b, "malformed chunked body");
	}
}

static ssize_t pk__chunked_feed(struct pk_http1_body *b, const unsigned char *d, size_t len)
{
	size_t i = 0;

	if (b->pk__state < 0)
		return -EPROTO;
	while (i < len && !b->done) {
		if (b->pk__state == PK__C_DATA) {
			size_t take = len - i;
			if (take > b->remaining)
				take = (size_t)b->remaining;
			b->remaining -= take;
			i += take;
			if (b->remaining == 0)
				b->pk__state = PK__C_DATA_CR;
			continue;
		}
		ssize_t r = pk__chunk_byte(b, d[i]);
		if (r < 0)
			return r;
		i++;
	}
	return (ssize_t)i;
}

ssize_t pk_http1_body_feed(struct pk_http1_body *b, const void *data, size_t len)
{
	if (b->done)
		return 0;
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	switch (b->kind) {
	case PK_HTTP1_BODY_LENGTH: {
		size_t take = len > b->remaining ? (size_t)b->remaining : len;
		b->remaining -= take;
		b->done = b->remaining == 0;
		return (ssize_t)take;
	}
	case PK_HTTP1_BODY_CHUNKED:
		return pk__chunked_feed(b, data, len);
	case PK_HTTP1_BODY_UNTIL_CLOSE:
		return (ssize_t)len;
	default:
		return 0;
	}
}

char *pk_http1_get_copy(const struct pk_http1_parser *p, const char *name, char *buf, size_t size)
{
	size_t len = 0;
	const char *v = pk_http1_get(p, name, &len);
	if (v == NULL || len >= size)
		return NULL;
	memcpy(buf, v, len);
	buf[len] = '\0';
	return buf;
}
