#include "daemon/listeners.h"

#include "common/parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PK__LISTEN_BACKLOG 4096

static const char *const pk__listener_names[PK_LISTENER_COUNT] = {"proxy", "upstream", "admin",
                                                                  "cluster"};

const char *pk_listener_name(enum pk_listener_id id)
{
	return (unsigned)id < PK_LISTENER_COUNT ? pk__listener_names[id] : "unknown";
}

int pk_sockname(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
	}
	return 0;
}

static int pk__bind_one(const struct addrinfo *ai, int *fdp)
{
	int one = 1, zero = 0;
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto err_close_fd;
	/* An unspecified IPv6 address serves IPv4 too, like Go's ":8000". */
	if (ai->ai_family == AF_INET6 &&
	    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr))
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		goto err_close_fd;
	if (listen(fd, PK__LISTEN_BACKLOG) < 0)
		goto err_close_fd;
	*fdp = fd;
	return 0;

err_close_fd : {
	int e = errno;
	close(fd);
	return -e;
}
}

int pk_listener_open(struct pk_listener *l, const char *addr, char *err, size_t errlen)
{
	char host[256], portstr[8];
	uint16_t port;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	int rc;

	l->fd = -1;
	snprintf(l->addr, sizeof(l->addr), "%s", addr);
	l->bound[0] = '\0';
	rc = pk_parse_addr(addr, host, sizeof(host), &port);
	if (rc < 0) {
		snprintf(err, errlen, "invalid address \"%s\"", addr);
		return rc;
	}
	snprintf(portstr, sizeof(portstr), "%u", port);
	if (host[0] == '\0') {
		/* Every address: try the IPv6 wildcard (dual-stack) first, then IPv4. */
		hints.ai_family = AF_INET6;
		rc = getaddrinfo("::", portstr, &hints, &res);
		if (rc == 0) {
			rc = pk__bind_one(res, &l->fd);
			freeaddrinfo(res);
			res = NULL;
			if (rc == 0)
				goto bound;
			if (rc != -EAFNOSUPPORT && rc != -EADDRNOTAVAIL)
				goto err_bind;
		}
		host[0] = '\0';
		hints.ai_family = AF_INET;
		rc = getaddrinfo("0.0.0.0", portstr, &hints, &res);
	} else {
		hints.ai_family = AF_UNSPEC;
		rc = getaddrinfo(host, portstr, &hints, &res);
	}
	if (rc != 0) {
		snprintf(err, errlen, "resolve %s: %s", addr, gai_strerror(rc));
		return -EINVAL;
	}
	rc = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		rc = pk__bind_one(ai, &l->fd);
		if (rc == 0)
			break;
	}
	freeaddrinfo(res);
	if (rc < 0)
		goto err_bind;
bound:
	pk_sockname(l->fd, l->bound, sizeof(l->bound));
	return 0;

err_bind:
	snprintf(err, errlen, "bind %s: %s", addr, strerror(-rc));
	return rc;
}

int pk_listener_defer_accept(struct pk_listener *l, int seconds)
{
	if (setsockopt(l->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, sizeof(seconds)) < 0)
		return -errno;
	return 0;
}

void pk_listener_close(struct pk_listener *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
}
