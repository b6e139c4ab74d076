/* Byte-stream connections for piko (see piko_net.h). */
#include "cli/piko_net.h"

#include "common/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#define PK__LOG "net"

struct pk__wreq {
	uv_write_t req;
	struct pk_net_conn *c;
	struct pk__wreq *next; /* queue of writes made before the connection was up */
	uint8_t *buf;          /* what goes on the wire (ciphertext with TLS) */
	size_t wire_len;
	size_t plain_len; /* what the owner asked to write */
	size_t credit;
	int notify; /* call on_written (owner writes; not TLS handshake records) */
};

struct pk_net_conn {
	uv_loop_t *loop;
	uv_tcp_t *tcp; /* heap: a failed connect attempt gets a fresh handle */
	struct pk_net_target *target;
	const struct pk_net_ops *ops;
	void *ud;
	uv_connect_t creq;
	uv_getaddrinfo_t gai;
	uv_shutdown_t sreq;
	SSL *ssl;
	BIO *rbio; /* network -> TLS */
	BIO *wbio; /* TLS -> network */
	struct pk__wreq *pend_head, *pend_tail;
	size_t queued;
	int addr_i;
	int last_err;
	unsigned connected : 1, closing : 1, want_read : 1, reading : 1, shut_req : 1,
	    shut_sent : 1, failed : 1, gai_busy : 1, tcp_open : 1, eof : 1, in_connect : 1;
};

static unsigned pk__live;
static uint8_t pk__rbuf[PK_NET_READ_BUF];
static uint8_t pk__pbuf[PK_NET_READ_BUF];
static unsigned pk__in_read;        /* an on_read call is under way */
static void (*pk__read_done)(void); /* pk_net_on_read_done */

static void pk__try_addr(struct pk_net_conn *c);
static void pk__start_reading(struct pk_net_conn *c);
static int pk__submit(struct pk_net_conn *c, struct pk__wreq *w);

unsigned pk_net_live(void)
{
	return pk__live;
}

static void pk__free(struct pk_net_conn *c)
{
	struct pk__wreq *w = c->pend_head;
	while (w) {
		struct pk__wreq *n = w->next;
		free(w->buf);
		free(w);
		w = n;
	}
	if (c->ssl)
		SSL_free(c->ssl); /* frees both BIOs */
	free(c);
	pk__live--;
}

static void pk__tcp_closed(uv_handle_t *h)
{
	struct pk_net_conn *c = h->data;
	free(h);
	if (c == NULL)
		return; /* an abandoned connect attempt */
	c->tcp = NULL;
	if (!c->gai_busy)
		pk__free(c);
}

static int pk__new_tcp(struct pk_net_conn *c)
{
	uv_tcp_t *t = malloc(sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	int r = uv_tcp_init(c->loop, t);
	if (r < 0) {
		free(t);
		return r;
	}
	t->data = c;
	c->tcp = t;
	c->reading = 0;
	return 0;
}

void pk_net_close(struct pk_net_conn *c)
{
	if (c == NULL || c->closing)
		return;
	c->closing = 1;
	if (c->gai_busy)
		uv_cancel((uv_req_t *)&c->gai);
	if (c->tcp)
		uv_close((uv_handle_t *)c->tcp, pk__tcp_closed);
	else if (!c->gai_busy)
		pk__free(c);
}

static struct pk_net_conn *pk__alloc(uv_loop_t *loop, const struct pk_net_ops *ops, void *ud)
{
	struct pk_net_conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->loop = loop;
	c->ops = ops;
	c->ud = ud;
	c->want_read = 1;
	if (pk__new_tcp(c) < 0) {
		free(c);
		return NULL;
	}
	pk__live++;
	return c;
}

void pk_net_set_owner(struct pk_net_conn *c, const struct pk_net_ops *ops, void *ud)
{
	c->ops = ops;
	c->ud = ud;
}

void *pk_net_ud(const struct pk_net_conn *c)
{
	return c->ud;
}

size_t pk_net_queued(const struct pk_net_conn *c)
{
	return c->queued;
}

int pk_net_connected(const struct pk_net_conn *c)
{
	return c->connected;
}

/* ---- failures ---- */

static void pk__fail(struct pk_net_conn *c, int err)
{
	if (c->closing || c->failed)
		return;
	c->failed = 1;
	if (c->in_connect) {
		c->last_err = err; /* pk_net_connect returns it */
		return;
	}
	if (!c->connected) {
		if (c->ops->on_connect)
			c->ops->on_connect(c, err);
	} else if (c->ops->on_error) {
		c->ops->on_error(c, err);
	}
}

static void pk__log_tls(struct pk_net_conn *c, const char *what)
{
	char buf[256];
	unsigned long e = ERR_get_error();
	if (e == 0 && c->ssl) {
		long v = SSL_get_verify_result(c->ssl);
		snprintf(buf, sizeof(buf), "%s", X509_verify_cert_error_string(v));
	} else {
		ERR_error_string_n(e, buf, sizeof(buf));
	}
	ERR_clear_error();
	pk_log_warn(PK__LOG, what, "host=%s port=%u error=%s", c->target ? c->target->host : "",
	            c->target ? c->target->port : 0, buf);
}

/* ---- writing ---- */

static void pk__write_done(uv_write_t *req, int status)
{
	struct pk__wreq *w = (struct pk__wreq *)req;
	struct pk_net_conn *c = w->c;
	size_t credit = w->credit;
	int notify = w->notify;
	c->queued -= w->plain_len;
	free(w->buf);
	free(w);
	if (c->closing)
		return;
	if (status < 0) {
		pk__fail(c, status);
		return;
	}
	if (notify && c->ops->on_written)
		c->ops->on_written(c, credit);
}

/* Moves what TLS produced into a write of its own (handshake, close_notify). */
static int pk__flush_tls(struct pk_net_conn *c)
{
	size_t n = BIO_ctrl_pending(c->wbio);
	if (n == 0)
		return 0;
	struct pk__wreq *w = calloc(1, sizeof(*w));
	uint8_t *buf = malloc(n);
	if (w == NULL || buf == NULL) {
		free(w);
		free(buf);
		return -ENOMEM;
	}
	BIO_read(c->wbio, buf, (int)n);
	w->c = c;
	w->buf = buf;
	w->wire_len = n;
	uv_buf_t b = uv_buf_init((char *)buf, (unsigned)n);
	int r = uv_write(&w->req, (uv_stream_t *)c->tcp, &b, 1, pk__write_done);
	if (r < 0) {
		free(buf);
		free(w);
	}
	return r;
}

static int pk__submit(struct pk_net_conn *c, struct pk__wreq *w)
{
	if (c->ssl) {
		if (w->plain_len > 0) {
			int r = SSL_write(c->ssl, w->buf, (int)w->plain_len);
			if (r <= 0) {
				pk__log_tls(c, "tls write failed");
				return -EPROTO;
			}
		}
		size_t n = BIO_ctrl_pending(c->wbio);
		uint8_t *ct = malloc(n ? n : 1);
		if (ct == NULL)
			return -ENOMEM;
		BIO_read(c->wbio, ct, (int)n);
		free(w->buf);
		w->buf = ct;
		w->wire_len = n;
	}
	uv_buf_t b = uv_buf_init((char *)w->buf, (unsigned)w->wire_len);
	c->queued += w->plain_len;
	int r = uv_write(&w->req, (uv_stream_t *)c->tcp, &b, 1, pk__write_done);
	if (r < 0)
		c->queued -= w->plain_len;
	return r;
}

/* Writes on the spot when nothing is queued: no request, no completion callback and no
 * epoll change (libuv re-arms the watcher after every finished uv_write). Only for plain
 * TCP and writes nobody waits on (credit 0: on_written is skipped, and it is not needed
 * since nothing was queued). Returns the bytes written (0: use the queue). */
static size_t pk__try_write(struct pk_net_conn *c, const uv_buf_t *bufs, unsigned n, size_t credit)
{
	if (credit != 0 || c->ssl || !c->connected || c->queued != 0 || c->tcp == NULL ||
	    uv_stream_get_write_queue_size((uv_stream_t *)c->tcp) != 0)
		return 0;
	int r = uv_try_write((uv_stream_t *)c->tcp, bufs, n);
	return r > 0 ? (size_t)r : 0;
}

size_t pk_net_try_writev(struct pk_net_conn *c, const uv_buf_t *bufs, unsigned n)
{
	if (c->closing || c->shut_req || c->failed || n == 0)
		return 0;
	return pk__try_write(c, bufs, n, 0);
}

size_t pk_net_try_write(struct pk_net_conn *c, const void *buf, size_t len)
{
	uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
	return len ? pk_net_try_writev(c, &b, 1) : 0;
}

int pk_net_write_take(struct pk_net_conn *c, uint8_t *buf, size_t len, size_t credit)
{
	if (c->closing || c->shut_req || c->failed) {
		free(buf);
		return -EPIPE;
	}
	uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
	size_t done = pk__try_write(c, &b, 1, credit);
	if (done == len) {
		free(buf);
		return 0;
	}
	if (done > 0) {
		memmove(buf, buf + done, len - done);
		len -= done;
	}
	struct pk__wreq *w = calloc(1, sizeof(*w));
	if (w == NULL) {
		free(buf);
		return -ENOMEM;
	}
	w->c = c;
	w->buf = buf;
	w->wire_len = w->plain_len = len;
	w->credit = credit;
	w->notify = 1;
	if (!c->connected) {
		if (c->pend_tail)
			c->pend_tail->next = w;
		else
			c->pend_head = w;
		c->pend_tail = w;
		c->queued += len;
		return 0;
	}
	int r = pk__submit(c, w);
	if (r < 0) {
		free(w->buf);
		free(w);
	}
	return r;
}

int pk_net_write(struct pk_net_conn *c, const uv_buf_t *bufs, unsigned n, size_t credit)
{
	if (c->closing || c->shut_req || c->failed)
		return -EPIPE;
	size_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += bufs[i].len;
	/* Straight from the caller's buffers when the socket takes it all; else the rest is
	 * copied and queued. */
	size_t skip = pk__try_write(c, bufs, n, credit);
	if (total > 0 && skip == total)
		return 0;
	uint8_t *buf = malloc(total - skip ? total - skip : 1);
	if (buf == NULL)
		return -ENOMEM;
	size_t off = 0;
	for (unsigned i = 0; i < n; i++) {
		size_t l = bufs[i].len, from = 0;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		from = skip;
		skip = 0;
		memcpy(buf + off, bufs[i].base + from, l - from);
		off += l - from;
	}
	return pk_net_write_take(c, buf, off, credit);
}

int pk_net_write1(struct pk_net_conn *c, const void *buf, size_t len, size_t credit)
{
	uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
	return pk_net_write(c, &b, 1, credit);
}

/* ---- shutdown ---- */

static void pk__shutdown_done(uv_shutdown_t *req, int status)
{
	struct pk_net_conn *c = req->data;
	if (c->closing)
		return;
	if (status < 0 && status != UV_ENOTCONN) {
		pk__fail(c, status);
		return;
	}
	if (c->ops->on_shutdown)
		c->ops->on_shutdown(c);
}

static void pk__do_shutdown(struct pk_net_conn *c)
{
	if (c->shut_sent)
		return;
	c->shut_sent = 1;
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		pk__flush_tls(c);
	}
	c->sreq.data = c;
	int r = uv_shutdown(&c->sreq, (uv_stream_t *)c->tcp, pk__shutdown_done);
	if (r < 0)
		pk__fail(c, r);
}

void pk_net_shutdown(struct pk_net_conn *c)
{
	if (c->closing || c->shut_req)
		return;
	c->shut_req = 1;
	if (c->connected)
		pk__do_shutdown(c);
}

/* ---- reading ---- */

static void pk__alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	*buf = uv_buf_init((char *)pk__rbuf, sizeof(pk__rbuf));
}

static void pk__up(struct pk_net_conn *c);

void pk_net_on_read_done(void (*fn)(void))
{
	pk__read_done = fn;
}

int pk_net_in_read(void)
{
	return pk__in_read > 0;
}

/* Hands bytes read to the owner; then the hook runs, while they are still in the buffer. */
static void pk__deliver(struct pk_net_conn *c, uint8_t *data, size_t len)
{
	pk__in_read++;
	c->ops->on_read(c, data, len);
	if (--pk__in_read == 0 && pk__read_done)
		pk__read_done();
}

static void pk__eof(struct pk_net_conn *c)
{
	if (c->eof)
		return;
	c->eof = 1;
	uv_read_stop((uv_stream_t *)c->tcp);
	c->reading = 0;
	if (c->ops->on_eof)
		c->ops->on_eof(c);
}

static void pk__handshake(struct pk_net_conn *c)
{
	int r = SSL_do_handshake(c->ssl);
	if (pk__flush_tls(c) < 0) {
		pk__fail(c, -ENOMEM);
		return;
	}
	if (r == 1) {
		pk__up(c);
		return;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ)
		return;
	pk__log_tls(c, "tls handshake failed");
	pk__fail(c, -EPROTO);
}

/* Decrypts what the socket gave and hands the plaintext on. */
static void pk__tls_read(struct pk_net_conn *c)
{
	/* Records are decrypted one after another into pbuf and handed on together, so an
	 * owner that gathers its writes (pk_net_on_read_done) sees as much at once as over
	 * plain TCP, not one 16 KiB record at a time. */
	size_t have = 0;
	int e = SSL_ERROR_WANT_READ;
	while (!c->closing && !c->failed) {
		int r = SSL_read(c->ssl, pk__pbuf + have, (int)(sizeof(pk__pbuf) - have));
		if (r <= 0) {
			e = SSL_get_error(c->ssl, r);
			break;
		}
		have += (size_t)r;
		if (have == sizeof(pk__pbuf)) {
			pk__deliver(c, pk__pbuf, have);
			have = 0;
		}
	}
	if (have > 0 && !c->closing && !c->failed)
		pk__deliver(c, pk__pbuf, have);
	if (c->closing || c->failed)
		return;
	if (e == SSL_ERROR_ZERO_RETURN) {
		pk__eof(c);
		return;
	}
	if (e != SSL_ERROR_WANT_READ) {
		pk__log_tls(c, "tls read failed");
		pk__fail(c, -EPROTO);
		return;
	}
	if (pk__flush_tls(c) < 0)
		pk__fail(c, -ENOMEM);
}

static void pk__read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct pk_net_conn *c = s->data;
	if (c == NULL || c->closing)
		return;
	if (nread == 0)
		return;
	if (nread < 0) {
		if (nread == UV_EOF && c->connected)
			pk__eof(c);
		else
			pk__fail(c, nread == UV_EOF ? -ECONNRESET : (int)nread);
		return;
	}
	if (c->ssl == NULL) {
		pk__deliver(c, (uint8_t *)buf->base, (size_t)nread);
		return;
	}
	BIO_write(c->rbio, buf->base, (int)nread);
	if (!c->connected) {
		pk__handshake(c);
		if (!c->connected)
			return;
	}
	pk__tls_read(c);
}

static void pk__start_reading(struct pk_net_conn *c)
{
	if (c->reading || c->eof || c->closing || c->tcp == NULL)
		return;
	if (uv_read_start((uv_stream_t *)c->tcp, pk__alloc_cb, pk__read_cb) == 0)
		c->reading = 1;
}

void pk_net_read_stop(struct pk_net_conn *c)
{
	c->want_read = 0;
	if (c->reading && c->connected) {
		uv_read_stop((uv_stream_t *)c->tcp);
		c->reading = 0;
	}
}

void pk_net_read_start(struct pk_net_conn *c)
{
	c->want_read = 1;
	if (c->connected)
		pk__start_reading(c);
}

/* ---- connecting ---- */

/* TCP and TLS are up: flush the early writes, tell the owner. */
static void pk__up(struct pk_net_conn *c)
{
	c->connected = 1;
	struct pk__wreq *w = c->pend_head;
	c->pend_head = c->pend_tail = NULL;
	while (w) {
		struct pk__wreq *n = w->next;
		c->queued -= w->plain_len;
		int r = pk__submit(c, w);
		if (r < 0) {
			free(w->buf);
			free(w);
			c->connected = 0;
			pk__fail(c, r);
			while (n) {
				w = n->next;
				free(n->buf);
				free(n);
				n = w;
			}
			return;
		}
		w = n;
	}
	if (!c->want_read && c->reading) {
		uv_read_stop((uv_stream_t *)c->tcp);
		c->reading = 0;
	}
	if (c->ops->on_connect)
		c->ops->on_connect(c, 0);
	if (c->closing || c->failed)
		return;
	if (c->want_read)
		pk__start_reading(c);
	if (c->shut_req)
		pk__do_shutdown(c);
}

static int pk__is_ip(const char *host)
{
	uint8_t b[16];
	return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

static void pk__start_tls(struct pk_net_conn *c)
{
	c->ssl = SSL_new(c->target->tls);
	c->rbio = BIO_new(BIO_s_mem());
	c->wbio = BIO_new(BIO_s_mem());
	if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL) {
		BIO_free(c->rbio);
		BIO_free(c->wbio);
		c->rbio = c->wbio = NULL;
		pk__fail(c, -ENOMEM);
		return;
	}
	SSL_set_bio(c->ssl, c->rbio, c->wbio);
	/* Verify the name we dialled: a DNS name against the certificate's names (and sent as
	 * SNI), an IP literal against its IP addresses. */
	if (pk__is_ip(c->target->host)) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->target->host);
	} else {
		SSL_set_tlsext_host_name(c->ssl, c->target->host);
		SSL_set1_host(c->ssl, c->target->host);
	}
	SSL_set_connect_state(c->ssl);
	pk__start_reading(c);
	pk__handshake(c);
}

static void pk__connect_cb(uv_connect_t *req, int status)
{
	struct pk_net_conn *c = req->data;
	if (c->closing)
		return;
	if (status < 0) {
		c->last_err = status;
		/* Next address on a fresh handle. */
		c->tcp->data = NULL;
		uv_close((uv_handle_t *)c->tcp, pk__tcp_closed);
		c->tcp = NULL;
		int r = pk__new_tcp(c);
		if (r < 0) {
			pk__fail(c, r);
			return;
		}
		c->addr_i++;
		pk__try_addr(c);
		return;
	}
	c->tcp_open = 1;
	uv_tcp_nodelay(c->tcp, 1);
	if (c->target->tls)
		pk__start_tls(c);
	else
		pk__up(c);
}

static void pk__try_addr(struct pk_net_conn *c)
{
	struct pk_net_target *t = c->target;
	while (c->addr_i < t->pk__naddrs) {
		c->creq.data = c;
		int r = uv_tcp_connect(&c->creq, c->tcp,
		                       (const struct sockaddr *)&t->pk__addrs[c->addr_i],
		                       pk__connect_cb);
		if (r == 0)
			return;
		c->last_err = r;
		c->addr_i++;
	}
	/* Every address failed: forget them so the next attempt resolves again. */
	t->pk__expires = 0;
	pk__fail(c, c->last_err ? c->last_err : -EHOSTUNREACH);
}

static void pk__gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct pk_net_conn *c = req->data;
	c->gai_busy = 0;
	if (c->closing) {
		if (res)
			uv_freeaddrinfo(res);
		if (c->tcp == NULL)
			pk__free(c);
		return;
	}
	struct pk_net_target *t = c->target;
	if (status < 0 || res == NULL) {
		pk_log_warn(PK__LOG, "cannot resolve host", "host=%s error=%s", t->host,
		            uv_strerror(status));
		pk__fail(c, -EHOSTUNREACH);
		return;
	}
	t->pk__naddrs = 0;
	for (struct addrinfo *a = res; a && t->pk__naddrs < PK_NET_MAX_ADDRS; a = a->ai_next) {
		if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
			continue;
		memcpy(&t->pk__addrs[t->pk__naddrs], a->ai_addr, a->ai_addrlen);
		((struct sockaddr_in *)&t->pk__addrs[t->pk__naddrs])->sin_port = htons(t->port);
		t->pk__naddrs++;
	}
	uv_freeaddrinfo(res);
	t->pk__expires = uv_now(c->loop) + PK_NET_CACHE_MS;
	pk__try_addr(c);
}

static void pk__connect_start(struct pk_net_conn *c)
{
	struct pk_net_target *t = c->target;
	uv_loop_t *loop = c->loop;
	if (t->pk__naddrs > 0 && (t->pk__expires == UINT64_MAX || uv_now(loop) < t->pk__expires)) {
		pk__try_addr(c);
		return;
	}
	struct sockaddr_in6 a6;
	struct sockaddr_in a4;
	if (uv_ip4_addr(t->host, t->port, &a4) == 0) {
		memcpy(&t->pk__addrs[0], &a4, sizeof(a4));
		t->pk__naddrs = 1;
		t->pk__expires = UINT64_MAX;
		pk__try_addr(c);
		return;
	}
	if (strchr(t->host, ':') && uv_ip6_addr(t->host, t->port, &a6) == 0) {
		memcpy(&t->pk__addrs[0], &a6, sizeof(a6));
		t->pk__naddrs = 1;
		t->pk__expires = UINT64_MAX;
		pk__try_addr(c);
		return;
	}
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	c->gai.data = c;
	if (uv_getaddrinfo(loop, &c->gai, pk__gai_cb, t->host, NULL, &hints) < 0) {
		pk__fail(c, -EHOSTUNREACH);
		return;
	}
	c->gai_busy = 1;
}

int pk_net_connect(uv_loop_t *loop, struct pk_net_target *t, const struct pk_net_ops *ops, void *ud,
                   struct pk_net_conn **out)
{
	struct pk_net_conn *c = pk__alloc(loop, ops, ud);
	if (c == NULL)
		return -ENOMEM;
	c->target = t;
	c->in_connect = 1;
	pk__connect_start(c);
	c->in_connect = 0;
	if (c->failed) {
		int err = c->last_err < 0 ? c->last_err : -ECONNREFUSED;
		pk_net_close(c);
		return err;
	}
	*out = c;
	return 0;
}

int pk_net_accept(uv_stream_t *server, const struct pk_net_ops *ops, void *ud,
                  struct pk_net_conn **out)
{
	struct pk_net_conn *c = pk__alloc(server->loop, ops, ud);
	if (c == NULL)
		return -ENOMEM;
	int r = uv_accept(server, (uv_stream_t *)c->tcp);
	if (r < 0) {
		pk_net_close(c);
		return r;
	}
	uv_tcp_nodelay(c->tcp, 1);
	c->connected = 1;
	c->tcp_open = 1;
	pk__start_reading(c);
	*out = c;
	return 0;
}

void pk_net_peer(const struct pk_net_conn *c, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	buf[0] = 0;
	if (c->tcp == NULL || uv_tcp_getpeername(c->tcp, (struct sockaddr *)&ss, &len) < 0)
		return;
	char ip[64];
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		uv_ip4_name(a, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		uv_ip6_name(a, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(a->sin6_port));
	}
}
