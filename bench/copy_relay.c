/* copy_relay: the least a TCP relay can do, as a calibration for a TCP endpoint.
 *
 *   copy_relay LISTEN_PORT TARGET_PORT
 *
 * Accepts on 127.0.0.1:LISTEN_PORT, connects each client to 127.0.0.1:TARGET_PORT and copies
 * bytes both ways with blocking read(2) and write(2) through a 256 KiB buffer, one thread per
 * direction; a side's EOF becomes a half-close of the other. No framing, no event loop, no
 * buffering beyond one read: three of these in a row on one core bound what any forwarder,
 * server and agent on that core can carry (bench/run.py, iperf3 phase). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define COPY_BUF (256 * 1024)

struct half {
	int from, to;
	struct half *peer; /* the other direction; the last one out closes both sockets */
	int done;
	pthread_mutex_t *mu;
};

/* One direction is over; the second of the two to get here closes both sockets. */
static void half_done(struct half *h)
{
	pthread_mutex_lock(h->mu);
	h->done = 1;
	int last = h->peer->done;
	pthread_mutex_unlock(h->mu);
	if (last) {
		close(h->from);
		close(h->to);
		pthread_mutex_destroy(h->mu);
		free(h->mu);
		free(h < h->peer ? h : h->peer); /* both halves are one allocation */
	}
}

static void *copy_half(void *arg)
{
	struct half *h = arg;
	char *buf = malloc(COPY_BUF);
	while (buf) {
		ssize_t n = read(h->from, buf, COPY_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(h->to, buf + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				goto out;
			off += w;
		}
	}
out:
	free(buf);
	shutdown(h->to, SHUT_WR);
	half_done(h);
	return NULL;
}

static int parse_port(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	return *s && !*end && v > 0 && v < 65536 ? (int)v : -1;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int relay(int client, int target_port)
{
	int one = 1;
	struct sockaddr_in to = loopback(target_port);
	int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (up < 0 || connect(up, (struct sockaddr *)&to, sizeof(to)) < 0) {
		fprintf(stderr, "copy_relay: connect 127.0.0.1:%d: %s\n", target_port,
		        strerror(errno));
		if (up >= 0)
			close(up);
		return -1;
	}
	setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct half *h = calloc(2, sizeof(*h));
	pthread_mutex_t *mu = malloc(sizeof(*mu));
	if (h == NULL || mu == NULL) {
		free(h);
		free(mu);
		close(up);
		return -1;
	}
	pthread_mutex_init(mu, NULL);
	h[0] = (struct half){.from = client, .to = up, .peer = &h[1], .mu = mu};
	h[1] = (struct half){.from = up, .to = client, .peer = &h[0], .mu = mu};
	pthread_t t;
	if (pthread_create(&t, NULL, copy_half, &h[0]) != 0) {
		pthread_mutex_destroy(mu);
		free(mu);
		free(h);
		close(up);
		return -1;
	}
	pthread_detach(t);
	if (pthread_create(&t, NULL, copy_half, &h[1]) != 0) {
		/* The running half's read and write both fail now; whichever of it and this
		 * finishes last closes and frees. */
		shutdown(up, SHUT_RDWR);
		shutdown(client, SHUT_RD);
		half_done(&h[1]);
		return 0;
	}
	pthread_detach(t);
	return 0;
}

int main(int argc, char **argv)
{
	int lport = argc == 3 ? parse_port(argv[1]) : -1;
	int tport = argc == 3 ? parse_port(argv[2]) : -1;
	if (lport < 0 || tport < 0) {
		fprintf(stderr, "usage: copy_relay LISTEN_PORT TARGET_PORT (ports 1-65535)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int one = 1;
	struct sockaddr_in a = loopback(lport);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 64) < 0) {
		fprintf(stderr, "copy_relay: listen 127.0.0.1:%d: %s\n", lport, strerror(errno));
		return 1;
	}
	for (;;) {
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "copy_relay: accept: %s\n", strerror(errno));
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				usleep(10000); /* until a connection ends */
				continue;
			}
			return 1;
		}
		if (relay(c, tport) < 0)
			close(c);
	}
}
