/* The admin child: health and readiness (and, as they land, metrics and status) on the
 * admin listener. It reads shared state only (the counters region, LMDB); it never asks
 * the workers, so a slow scrape cannot stall the data path. */
#include "common/channel.h"
#include "common/log.h"
#include "shm/counters.h"
#include "workers/child.h"
#include "workers/httpd.h"

#include <errno.h>
#include <string.h>

#define PK__LOG "admin"

struct pk__admin {
	struct pk_child *child;
	struct pk_httpd *httpd;
};

static void pk__admin_handle(struct pk_httpd_conn *conn, const struct pk_http_req *req, void *ud)
{
	struct pk__admin *a = ud;
	int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;

	if (strcmp(req->path, "/health") == 0) {
		if (!get) {
			pk_httpd_respond_error(conn, 405, "method not allowed");
			return;
		}
		pk_httpd_respond(conn, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
		return;
	}
	if (strcmp(req->path, "/ready") == 0) {
		if (!get) {
			pk_httpd_respond_error(conn, 405, "method not allowed");
			return;
		}
		int ready = pk_counters_is_ready(a->child->counters) && !a->child->draining;
		if (ready)
			pk_httpd_respond(conn, 200, "application/json", NULL,
					 "{\"status\":\"ready\"}", 18);
		else
			pk_httpd_respond_error(conn, 503, "not ready");
		return;
	}
	pk_httpd_respond_error(conn, 404, "not found");
}

static void pk__admin_drained(void *ud)
{
	struct pk__admin *a = ud;
	pk_child_exit(a->child, 0);
}

static void pk__admin_drain(struct pk_child *c, int now)
{
	struct pk__admin *a = c->role_data;
	if (now)
		pk_child_exit(c, 0);
	pk_httpd_drain(a->httpd, pk__admin_drained, a);
}

int pk_admin_start(struct pk_child *c)
{
	static struct pk__admin admin;
	struct pk__admin *a = &admin;
	struct pk_httpd_options opt = {
		.max_header_bytes = 64 * 1024,
		.read_header_timeout_ms = 10000,
		.idle_timeout_ms = 60000,
		.subsystem = PK__LOG,
	};
	int rc;

	a->child = c;
	rc = pk_httpd_start(&a->httpd, c->loop, PK_FD_ADMIN, &opt, pk__admin_handle, a);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot serve the admin listener", "error=%s", uv_strerror(rc));
		return rc;
	}
	c->role_data = a;
	c->on_drain = pk__admin_drain;
	return pk_child_ready(c);
}
