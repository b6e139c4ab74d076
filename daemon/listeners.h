/* Listening sockets, bound by the supervisor before any child starts.
 *
 * The supervisor owns one fd per listener (proxy, upstream, admin, cluster) for its whole
 * life; children inherit copies at fixed fd numbers. A reload keeps the fd of every listener
 * whose address did not change, so connections waiting in its accept queue are never lost.
 */
#ifndef PK_LISTENERS_H
#define PK_LISTENERS_H

#include <stddef.h>
#include <stdint.h>

enum pk_listener_id {
	PK_LISTENER_PROXY = 0,
	PK_LISTENER_UPSTREAM,
	PK_LISTENER_ADMIN,
	PK_LISTENER_CLUSTER,
	PK_LISTENER_COUNT
};

struct pk_listener {
	int fd;          /* -1 when not open */
	char addr[300];  /* the configured address, e.g. ":8000" */
	char bound[300]; /* the address actually bound, e.g. "[::]:8000" */
};

const char *pk_listener_name(enum pk_listener_id id);

/* Resolves `addr` (see common/parse.h; an empty host binds every address, IPv6 dual-stack
 * when the host has IPv6, else 0.0.0.0), creates a non-blocking, close-on-exec TCP socket
 * with SO_REUSEADDR, binds and listens. Fills l (fd, addr, bound). Returns 0 or -errno;
 * on failure err holds a message such as "bind 127.0.0.1:8000: Address already in use". */
int pk_listener_open(struct pk_listener *l, const char *addr, char *err, size_t errlen);

/* Holds new connections in the kernel until their first bytes arrive (TCP_DEFER_ACCEPT), or
 * for about `seconds` when none do: for ports whose clients always speak first. */
int pk_listener_defer_accept(struct pk_listener *l, int seconds);

void pk_listener_close(struct pk_listener *l);

/* Formats the local address of a bound socket as "ip:port" / "[ip6]:port". */
int pk_sockname(int fd, char *buf, size_t len);

#endif
