/* Tests for cli/pikoctl_http: URL parsing and one request against a forked loopback server
 * that answers with canned bytes. (Links proto/http1.c: UNIT_EXTRA_pikoctl_http.) */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/pikoctl_http.h"

static char err[PK_CTL_ERR_MAX];

Test(pikoctl_url, host_port_and_prefix)
{
	struct pk_ctl_url u;
	cr_assert_eq(pk_ctl_url_parse("http://127.0.0.1:8002", &u, err), 0);
	cr_assert_str_eq(u.host, "127.0.0.1");
	cr_assert_str_eq(u.port, "8002");
	cr_assert_str_eq(u.base_path, "");
	cr_assert_eq(pk_ctl_url_parse("http://[::1]/admin/", &u, err), 0);
	cr_assert_str_eq(u.host, "::1");
	cr_assert_str_eq(u.port, "80");
	cr_assert_str_eq(u.base_path, "/admin");
}

Test(pikoctl_url, rejects_what_it_cannot_use)
{
	struct pk_ctl_url u;
	cr_assert_eq(pk_ctl_url_parse("https://h:1", &u, err), -EINVAL);
	cr_assert(strstr(err, "https is not supported"), "%s", err);
	const char *bad[] = {"ftp://h",    "http://",    "http://h:0",    "http://h:65536",
	                     "http://h:x", "http://u@h", "http://h/?a=1", "http://[::1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(pk_ctl_url_parse(bad[i], &u, err), -EINVAL, "%s", bad[i]);
}

/* A one-shot server: accepts one connection, reads the head, checks it holds `expect`
 * (else answers 400), writes `answer`, then closes (or stays silent when answer is NULL). */
static pid_t serve_once(const char *expect, const char *answer, struct pk_ctl_url *u)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	cr_assert(l >= 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(l, 1), 0);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &al), 0);
	snprintf(u->host, sizeof(u->host), "127.0.0.1");
	snprintf(u->port, sizeof(u->port), "%u", ntohs(a.sin_port));
	u->base_path[0] = '\0';
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid > 0) {
		close(l);
		return pid;
	}
	int c = accept(l, NULL, NULL);
	char buf[8192];
	size_t len = 0;
	while (len < sizeof(buf) - 1) {
		ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			break;
	}
	if (answer == NULL) {
		pause();
		_exit(0);
	}
	if (expect && !strstr(buf, expect))
		answer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
	(void)!write(c, answer, strlen(answer));
	close(c);
	_exit(0);
}

static void reap(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

Test(pikoctl_http, content_length_body_and_request_headers)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once("Authorization: Bearer tok\r\n",
	                       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
	                       "Content-Length: 7\r\n\r\n{\"a\":1}trailing-junk",
	                       &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/status", "tok", 5000, &r, err), 0, "%s", err);
	cr_assert_eq(r.status, 200);
	cr_assert_str_eq(r.content_type, "application/json");
	cr_assert_eq(r.body_len, 7);
	cr_assert_str_eq(r.body, "{\"a\":1}");
	pk_ctl_response_free(&r);
	reap(pid);
}

Test(pikoctl_http, post_carries_an_empty_body)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid =
	    serve_once("POST /reload HTTP/1.1\r\n",
	               "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}", &u);
	cr_assert_eq(pk_ctl_http_request(&u, "POST", "/reload", NULL, 5000, &r, err), 0, "%s", err);
	cr_assert_eq(r.status, 500);
	cr_assert_str_eq(r.body, "{}");
	pk_ctl_response_free(&r);
	reap(pid);
}

Test(pikoctl_http, body_until_close)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once(NULL, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 5000, &r, err), 0, "%s", err);
	cr_assert_str_eq(r.body, "hello");
	pk_ctl_response_free(&r);
	reap(pid);
}

Test(pikoctl_http, chunked_and_malformed_answers_are_protocol_errors)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once(
	    NULL, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 5000, &r, err), -EPROTO);
	reap(pid);
	pid = serve_once(NULL, "HTTP/1.1 200 OK\nContent-Length: 0\n\n", &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 5000, &r, err), -EPROTO);
	cr_assert(strstr(err, "malformed response"), "%s", err);
	reap(pid);
}

Test(pikoctl_http, truncated_body_is_an_error)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once(NULL, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 5000, &r, err), -ECONNRESET);
	cr_assert_null(r.body);
	reap(pid);
}

Test(pikoctl_http, connection_refused_is_named)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once(NULL, "", &u);
	reap(pid); /* nothing listens on that port any more */
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 5000, &r, err), -ECONNREFUSED);
	cr_assert(strstr(err, "connection refused"), "%s", err);
}

Test(pikoctl_http, silent_server_times_out)
{
	struct pk_ctl_url u;
	struct pk_ctl_response r;
	pid_t pid = serve_once(NULL, NULL, &u);
	cr_assert_eq(pk_ctl_http_request(&u, "GET", "/", NULL, 200, &r, err), -ETIMEDOUT);
	cr_assert(strstr(err, "timed out"), "%s", err);
	reap(pid);
}
