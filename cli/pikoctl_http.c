/* pikoctl's HTTP client. See pikoctl_http.h. */
#include "cli/pikoctl_http.h"

#include "proto/http1.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t pk__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int pk__left_ms(uint64_t deadline)
{
	uint64_t now = pk__now_ms();
	if (now >= deadline)
		return 0;
	return deadline - now > 600000 ? 600000 : (int)(deadline - now);
}

int pk_ctl_url_parse(const char *url, struct pk_ctl_url *out, char err[PK_CTL_ERR_MAX])
{
	memset(out, 0, sizeof(*out));
	if (strncmp(url, "https://", 8) == 0) {
		snprintf(err, PK_CTL_ERR_MAX,
		         "%s: https is not supported by this pikoctl; use an http:// URL", url);
		return -EINVAL;
	}
	if (strncmp(url, "http://", 7) != 0) {
		snprintf(err, PK_CTL_ERR_MAX, "%s: the URL must start with http://", url);
		return -EINVAL;
	}
	const char *auth = url + 7;
	size_t alen = strcspn(auth, "/?#");
	const char *rest = auth + alen;
	if (*rest == '?' || *rest == '#' || strpbrk(rest, "?#") != NULL) {
		snprintf(err, PK_CTL_ERR_MAX, "%s: the URL must not have a query or fragment", url);
		return -EINVAL;
	}
	if (memchr(auth, '@', alen)) {
		snprintf(err, PK_CTL_ERR_MAX, "%s: user info in the URL is not supported", url);
		return -EINVAL;
	}
	const char *host = auth, *port = NULL;
	size_t hlen;
	if (alen > 0 && auth[0] == '[') {
		const char *close = memchr(auth, ']', alen);
		if (close == NULL)
			goto bad_host;
		host = auth + 1;
		hlen = (size_t)(close - host);
		if (close + 1 < rest) {
			if (close[1] != ':')
				goto bad_host;
			port = close + 2;
		}
	} else {
		const char *colon = memchr(auth, ':', alen);
		hlen = colon ? (size_t)(colon - auth) : alen;
		port = colon ? colon + 1 : NULL;
	}
	if (hlen == 0 || hlen >= sizeof(out->host))
		goto bad_host;
	memcpy(out->host, host, hlen);
	size_t plen = port ? (size_t)(rest - port) : 0;
	if (port) {
		long v = 0;
		if (plen == 0 || plen > 5)
			goto bad_port;
		for (size_t i = 0; i < plen; i++) {
			if (port[i] < '0' || port[i] > '9')
				goto bad_port;
			v = v * 10 + (port[i] - '0');
		}
		if (v < 1 || v > 65535)
			goto bad_port;
		snprintf(out->port, sizeof(out->port), "%ld", v);
	} else {
		snprintf(out->port, sizeof(out->port), "80");
	}
	size_t blen = strlen(rest);
	while (blen > 0 && rest[blen - 1] == '/')
		blen--;
	if (blen >= sizeof(out->base_path)) {
		snprintf(err, PK_CTL_ERR_MAX, "%s: URL path too long", url);
		return -EINVAL;
	}
	memcpy(out->base_path, rest, blen);
	return 0;

bad_host:
	snprintf(err, PK_CTL_ERR_MAX, "%s: missing or malformed host", url);
	return -EINVAL;
bad_port:
	snprintf(err, PK_CTL_ERR_MAX, "%s: bad port", url);
	return -EINVAL;
}

void pk_ctl_response_free(struct pk_ctl_response *resp)
{
	if (resp == NULL)
		return;
	free(resp->body);
	memset(resp, 0, sizeof(*resp));
}

static int pk__fail(char err[PK_CTL_ERR_MAX], int rc, const char *what)
{
	const char *why;
	switch (rc) {
	case -ECONNREFUSED:
		why = "connection refused";
		break;
	case -ETIMEDOUT:
		why = "timed out";
		break;
	default:
		why = strerror(-rc);
	}
	snprintf(err, PK_CTL_ERR_MAX, "%s: %s", what, why);
	return rc;
}

/* Connects to one address within the deadline. fd or -errno. */
static int pk__connect_one(const struct addrinfo *ai, uint64_t deadline)
{
	int fd =
	    socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	int n;
	do
		n = poll(&p, 1, pk__left_ms(deadline));
	while (n < 0 && errno == EINTR);
	int soerr = 0;
	socklen_t sl = sizeof(soerr);
	if (n == 0)
		soerr = ETIMEDOUT;
	else if (n < 0)
		soerr = errno;
	else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		soerr = errno;
	if (soerr) {
		close(fd);
		return -soerr;
	}
	return fd;
}

static int pk__connect(const struct pk_ctl_url *url, uint64_t deadline, char err[PK_CTL_ERR_MAX])
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res = NULL;
	char what[300];
	snprintf(what, sizeof(what), "cannot connect to %s:%s", url->host, url->port);
	int g = getaddrinfo(url->host, url->port, &hints, &res);
	if (g != 0) {
		snprintf(err, PK_CTL_ERR_MAX, "cannot resolve %s: %s", url->host, gai_strerror(g));
		return -ENOENT;
	}
	int rc = -ECONNREFUSED;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		rc = pk__connect_one(ai, deadline);
		if (rc >= 0 || rc == -ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	return rc >= 0 ? rc : pk__fail(err, rc, what);
}

static int pk__wait(int fd, short ev, uint64_t deadline)
{
	struct pollfd p = {.fd = fd, .events = ev};
	int n;
	do
		n = poll(&p, 1, pk__left_ms(deadline));
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n == 0 ? -ETIMEDOUT : 0;
}

static int pk__send_all(int fd, const char *buf, size_t len, uint64_t deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			int rc = pk__wait(fd, POLLOUT, deadline);
			if (rc < 0)
				return rc;
			continue;
		}
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads some bytes: >0 count, 0 EOF, or -errno. */
static ssize_t pk__recv(int fd, char *buf, size_t len, uint64_t deadline)
{
	for (;;) {
		ssize_t n = recv(fd, buf, len, 0);
		if (n >= 0)
			return n;
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		int rc = pk__wait(fd, POLLIN, deadline);
		if (rc < 0)
			return rc;
	}
}

static int pk__body_append(struct pk_ctl_response *r, const char *data, size_t len, size_t *cap)
{
	if (r->body_len + len > PK_CTL_MAX_BODY)
		return -EFBIG;
	if (r->body_len + len + 1 > *cap) {
		size_t want = *cap ? *cap : 4096;
		while (want < r->body_len + len + 1)
			want *= 2;
		char *nb = realloc(r->body, want);
		if (nb == NULL)
			return -ENOMEM;
		r->body = nb;
		*cap = want;
	}
	memcpy(r->body + r->body_len, data, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

/* Reads the response head (skipping 1xx interim answers) and its body. */
static int pk__read_response(int fd, uint64_t deadline, struct pk_ctl_response *r,
                             char err[PK_CTL_ERR_MAX])
{
	struct pk_http1_parser p;
	char buf[16384];
	size_t cap = 0, used = 0, have = 0, off = 0;
	int rc = 0, done_head = 0;

	pk_http1_parser_init(&p, PK_HTTP1_RESPONSE, NULL);
	while (!done_head) {
		if (off == have) {
			ssize_t n = pk__recv(fd, buf, sizeof(buf), deadline);
			if (n <= 0) {
				rc = n == 0 ? -ECONNRESET : (int)n;
				pk__fail(err, rc,
				         n == 0
				             ? "the server closed the connection before answering"
				             : "reading the response");
				goto out;
			}
			have = (size_t)n;
			off = 0;
		}
		rc = pk_http1_parser_feed(&p, buf + off, have - off, &used);
		off += used;
		if (rc == 0)
			continue;
		if (rc < 0) {
			snprintf(err, PK_CTL_ERR_MAX, "malformed response from the server: %s",
			         p.error_reason ? p.error_reason : strerror(-rc));
			rc = -EPROTO;
			goto out;
		}
		if (p.status >= 100 && p.status < 200 && p.status != 101) {
			pk_http1_parser_reset(&p);
			continue;
		}
		done_head = 1;
	}
	r->status = p.status;
	if (!pk_http1_get_copy(&p, "content-type", r->content_type, sizeof(r->content_type)))
		r->content_type[0] = '\0';
	if (p.body_kind == PK_HTTP1_BODY_CHUNKED) {
		snprintf(err, PK_CTL_ERR_MAX, "chunked responses are not supported");
		rc = -EPROTO;
		goto out;
	}
	uint64_t want = p.body_kind == PK_HTTP1_BODY_LENGTH ? p.content_length
	                : p.body_kind == PK_HTTP1_BODY_NONE ? 0
	                                                    : UINT64_MAX;
	if (want != UINT64_MAX && want > PK_CTL_MAX_BODY) {
		rc = pk__fail(err, -EFBIG, "response body too large");
		goto out;
	}
	rc = pk__body_append(r, "", 0, &cap);
	for (;;) {
		size_t take = have - off;
		if (want != UINT64_MAX && take > want - r->body_len)
			take = (size_t)(want - r->body_len);
		if (rc == 0 && take > 0)
			rc = pk__body_append(r, buf + off, take, &cap);
		if (rc < 0) {
			pk__fail(err, rc, "reading the response body");
			goto out;
		}
		if (want != UINT64_MAX && r->body_len == want)
			break;
		ssize_t n = pk__recv(fd, buf, sizeof(buf), deadline);
		if (n == 0 && want == UINT64_MAX)
			break;
		if (n <= 0) {
			rc = n == 0 ? -ECONNRESET : (int)n;
			pk__fail(err, rc, "reading the response body");
			goto out;
		}
		have = (size_t)n;
		off = 0;
	}
	rc = 0;
out:
	pk_http1_parser_free(&p);
	return rc;
}

int pk_ctl_http_request(const struct pk_ctl_url *url, const char *method, const char *path,
                        const char *token, uint64_t timeout_ms, struct pk_ctl_response *resp,
                        char err[PK_CTL_ERR_MAX])
{
	uint64_t deadline = pk__now_ms() + timeout_ms;
	char req[8192];
	int rc;

	memset(resp, 0, sizeof(resp[0]));
	int host_v6 = strchr(url->host, ':') != NULL;
	int n = snprintf(
	    req, sizeof(req),
	    "%s %s%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: pikoctl/%s\r\n"
	    "Accept: application/json, text/plain\r\n%s%s%s%sConnection: close\r\n\r\n",
	    method, url->base_path, path, host_v6 ? "[" : "", url->host, host_v6 ? "]" : "",
	    url->port, PK_VERSION, token ? "Authorization: Bearer " : "", token ? token : "",
	    token ? "\r\n" : "", strcmp(method, "POST") == 0 ? "Content-Length: 0\r\n" : "");
	if (n < 0 || (size_t)n >= sizeof(req)) {
		snprintf(err, PK_CTL_ERR_MAX, "request too long (is the token over 7 KiB?)");
		return -E2BIG;
	}
	int fd = pk__connect(url, deadline, err);
	if (fd < 0)
		return fd;
	rc = pk__send_all(fd, req, (size_t)n, deadline);
	if (rc < 0)
		pk__fail(err, rc, "sending the request");
	else
		rc = pk__read_response(fd, deadline, resp, err);
	close(fd);
	if (rc < 0)
		pk_ctl_response_free(resp);
	return rc;
}
