/* The proxy port: client connections (HTTP/1.1 with keep-alive, WebSocket upgrades, and
 * the /_piko/v1/tcp/<endpoint> WebSocket for TCP endpoints), routed to tunnels. */
#ifndef PK_PROXY_H
#define PK_PROXY_H

#include <stddef.h>
#include <stdint.h>

struct pk_worker;
struct pk_handoff;

/* Starts accepting clients on the inherited listening socket fd (kept open; the worker
 * listens on a duplicate, which it closes while a sibling holds the tunnels and this
 * worker holds none: tunnel affinity, see proxy.c). 0 or a libuv error. */
int pk_proxy_listen(struct pk_worker *w, int fd);
/* Stops accepting for good (draining). */
void pk_proxy_unlisten(struct pk_worker *w);

/* Adopts a client connection another worker handed over (fd is ours now, bytes are what
 * that worker had read: a complete request head and possibly more). 0 or -errno (the
 * caller then closes fd). */
int pk_proxy_adopt(struct pk_worker *w, const struct pk_handoff *h, int fd, const char *bytes,
                   size_t len);

/* Draining: idle kept-alive connections close now, the others after their response. */
void pk_proxy_drain(struct pk_worker *w);

#endif
