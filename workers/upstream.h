/* The upstream port: WebSocket registration of agents (see upstream.c). */
#ifndef PK_UPSTREAM_H
#define PK_UPSTREAM_H

struct pk_worker;

/* Starts accepting agents on the inherited listening socket fd. 0 or a libuv error. */
int pk_upstream_listen(struct pk_worker *w, int fd);

#endif
