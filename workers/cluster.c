/* The cluster child. Node-to-node replication of the cluster log (DESIGN.md section 6)
 * is not built yet: this child holds the cluster listener and its process slot so the
 * process model, reloads and shutdown already include it. Peers that connect are closed
 * at once, so nothing mistakes this node for a working cluster member. */
#include "common/log.h"
#include "workers/child.h"

#include <stdlib.h>

#define PK__LOG "cluster"

struct pk__cluster {
	uv_tcp_t listener;
	int listening;
};

static void pk__on_peer(uv_stream_t *l, int status)
{
	if (status < 0)
		return;
	uv_tcp_t *peer = malloc(sizeof(*peer));
	if (peer == NULL)
		abort();
	uv_tcp_init(l->loop, peer);
	if (uv_accept(l, (uv_stream_t *)peer) == 0)
		pk_log_debug(PK__LOG, "peer connection refused: clustering not enabled", NULL);
	uv_close((uv_handle_t *)peer, (uv_close_cb)free);
}

static void pk__cluster_drain(struct pk_child *c, int now)
{
	pk_child_exit(c, 0);
}

int pk_cluster_start(struct pk_child *c)
{
	static struct pk__cluster cl;
	int rc;

	uv_tcp_init(c->loop, &cl.listener);
	rc = uv_tcp_open(&cl.listener, PK_FD_CLUSTER);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&cl.listener, 128, pk__on_peer);
	if (rc < 0) {
		pk_log_error(PK__LOG, "cannot serve the cluster listener", "error=%s",
		             uv_strerror(rc));
		return rc;
	}
	cl.listening = 1;
	c->role_data = &cl;
	c->on_drain = pk__cluster_drain;
	return pk_child_ready(c);
}
