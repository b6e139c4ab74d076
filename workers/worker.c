/* A worker: serves the proxy and upstream listeners on its own libuv loop.
 *
 * Every worker accepts on the same inherited listening sockets; the kernel spreads the
 * connections. On drain a worker stops accepting at once (the listeners stay open in the
 * supervisor and the newer generation, so nothing queued is lost), finishes what it
 * accepted, and exits.
 */
#include "common/log.h"
#include "proto/http1.h"
#include "workers/child.h"
#include "workers/httpd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PK__LOG "worker"

struct pk__worker {
	struct pk_child *child;
	struct pk_httpd *proxy;
	struct pk_httpd *upstream;
	int open_servers;
};

/* The endpoint a proxy request is for: x-piko-endpoint, else the Host's first label. */
static int pk__request_endpoint(const struct pk_http_req *req, char *buf, size_t len)
{
	const char *ep = pk_http_req_header(req, "x-piko-endpoint");
	if (ep != NULL && ep[0] != '\0') {
		snprintf(buf, len, "%s", ep);
		return 1;
	}
	const char *host = pk_http_req_header(req, "host");
	size_t label = 0;
	if (host == NULL || !pk_http1_endpoint_from_host(host, strlen(host), &label) ||
	    label >= len)
		return 0;
	memcpy(buf, host, label);
	buf[label] = '\0';
	return 1;
}

static void pk__proxy_handle(struct pk_httpd_conn *conn, const struct pk_http_req *req, void *ud)
{
	char endpoint[256];
	if (!pk__request_endpoint(req, endpoint, sizeof(endpoint))) {
		pk_httpd_respond_error(conn, 400, "missing endpoint id");
		return;
	}
	/* No upstream can register with this build yet (tunnels are the next piece), so
	 * every endpoint is without upstreams: the answer a Piko client expects then. */
	pk_httpd_respond_error(conn, 502, "no available upstreams");
}

static void pk__upstream_handle(struct pk_httpd_conn *conn, const struct pk_http_req *req,
				void *ud)
{
	if (strncmp(req->path, "/piko/v1/upstream/", 18) != 0) {
		pk_httpd_respond_error(conn, 404, "not found");
		return;
	}
	/* 503 is retryable for Piko agents: they keep trying until a build that accepts
	 * tunnels answers. */
	pk_httpd_respond_error(conn, 503, "upstream registration not available");
}

static void pk__server_drained(void *ud)
{
	struct pk__worker *w = ud;
	if (--w->open_servers == 0)
		pk_child_exit(w->child, 0);
}

static void pk__worker_drain(struct pk_child *c, int now)
{
	struct pk__worker *w = c->role_data;
	if (now)
		pk_child_exit(c, 0);
	pk_httpd_drain(w->proxy, pk__server_drained, w);
	pk_httpd_drain(w->upstream, pk__server_drained, w);
}

int pk_worker_start(struct pk_child *c)
{
	static struct pk__worker worker;
	struct pk__worker *w = &worker;
	const struct pk_config *cfg = &c->cfg;
	struct pk_httpd_options popt = {
		.max_header_bytes = cfg->proxy_max_header_bytes,
		.read_header_timeout_ms = cfg->proxy_read_header_timeout_ms,
		.idle_timeout_ms = cfg->proxy_idle_timeout_ms,
		.subsystem = "proxy",
	};
	struct pk_httpd_options uopt = popt;
	int rc;

	uopt.subsystem = "upstream";
	w->child = c;
	rc = pk_httpd_start(&w->proxy, c->loop, PK_FD_PROXY, &popt, pk__proxy_handle, w);
	if (rc == 0)
		rc = pk_httpd_start(&w->upstream, c->loop, PK_FD_UPSTREAM, &uopt,
				    pk__upstream_handle, w);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot serve the listeners", "error=%s", uv_strerror(rc));
		return rc;
	}
	w->open_servers = 2;
	c->role_data = w;
	c->on_drain = pk__worker_drain;
	return pk_child_ready(c);
}
