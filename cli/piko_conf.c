/* piko's command line and config file (see piko_conf.h and docs/piko.md). */
#include "cli/piko_conf.h"

#include "common/log.h"
#include "common/parse.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PK__MAX_FLAGS 64

/* Flag scopes. */
#define PK__S_AGENT   0x1
#define PK__S_FORWARD 0x2
#define PK__S_HTTP    0x4 /* agent http, agent start */
#define PK__S_START   0x8 /* agent start, forward start */
#define PK__S_ALL     (PK__S_AGENT | PK__S_FORWARD)

enum { PK__T_STR, PK__T_DUR, PK__T_BOOL };

struct pk__flag {
	const char *name; /* flag spelling without "--" */
	int type;
	unsigned scope;
};

static const struct pk__flag pk__flags[] = {
    {"config", PK__T_STR, PK__S_START},
    {"connect.url", PK__T_STR, PK__S_ALL},
    {"connect.token", PK__T_STR, PK__S_ALL},
    {"connect.token-file", PK__T_STR, PK__S_ALL},
    {"connect.timeout", PK__T_DUR, PK__S_ALL},
    {"connect.ping-interval", PK__T_DUR, PK__S_AGENT},
    {"connect.ping-timeout", PK__T_DUR, PK__S_AGENT},
    {"connect.stream-window", PK__T_STR, PK__S_AGENT},
    {"connect.tls.root-cas", PK__T_STR, PK__S_ALL},
    {"connect.tls.cert", PK__T_STR, PK__S_ALL},
    {"connect.tls.key", PK__T_STR, PK__S_ALL},
    {"connect.tls.insecure-skip-verify", PK__T_BOOL, PK__S_ALL},
    {"log.level", PK__T_STR, PK__S_ALL},
    {"log.subsystems", PK__T_STR, PK__S_ALL},
    {"grace-period", PK__T_DUR, PK__S_ALL},
    {"timeout", PK__T_DUR, PK__S_HTTP},
    {"access-log", PK__T_BOOL, PK__S_HTTP},
};

#define PK__N_FLAGS (sizeof(pk__flags) / sizeof(pk__flags[0]))

static void pk__err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void pk__err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("piko: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- usage ---- */

static const char pk__usage_top[] =
    "Usage: piko COMMAND [options]\n"
    "\n"
    "Commands:\n"
    "  agent http ENDPOINT ADDR    register ENDPOINT and forward its HTTP requests to ADDR\n"
    "  agent tcp ENDPOINT ADDR     register ENDPOINT and forward its TCP connections to ADDR\n"
    "  agent start --config FILE   run the listeners of a config file\n"
    "  forward tcp ADDR ENDPOINT   listen on ADDR; carry each connection to ENDPOINT\n"
    "  forward start --config FILE run the forwarders of a config file\n"
    "\n"
    "  --help      this text (piko COMMAND --help for the command's options)\n"
    "  --version   print the version\n"
    "\n"
    "Exit codes: 0 clean stop, 1 runtime failure (e.g. the server refused the token),\n"
    "2 bad usage or configuration. See docs/piko.md.\n";

static const char pk__usage_common[] =
    "  --connect.url URL              server URL (agent: http://localhost:8001,\n"
    "                                 forward: http://localhost:8000); https:// uses TLS\n"
    "  --connect.token TOKEN          bearer token (JWT) sent to the server\n"
    "  --connect.token-file FILE      read the token from FILE (keeps it out of ps)\n"
    "  --connect.timeout DURATION     connect + TLS + upgrade limit (default 10s)\n"
    "  --connect.tls.root-cas FILE    PEM CAs to verify the server with (default: system)\n"
    "  --connect.tls.cert FILE        client certificate (PEM), with --connect.tls.key\n"
    "  --connect.tls.key FILE         client private key (PEM)\n"
    "  --connect.tls.insecure-skip-verify  do not verify the server certificate\n"
    "  --log.level LEVEL              debug, info, warn, error (default info)\n"
    "  --log.subsystems LIST          subsystems logged at every level (comma-separated)\n"
    "  --grace-period DURATION        time to finish in-flight work on SIGTERM (default 30s)\n";

static const char pk__usage_agent[] =
    "  --connect.ping-interval DURATION  yamux ping period (default 5s)\n"
    "  --connect.ping-timeout DURATION   reconnect when a ping is unanswered this long\n"
    "                                    (default 5s)\n"
    "  --connect.stream-window SIZE   bytes the server may send on a stream ahead of the\n"
    "                                 service reading them (256KiB..16MiB, default 1MiB)\n"
    "  --timeout DURATION             http: wait this long for the service's answer\n"
    "                                 (default 10s; then 504 upstream timeout)\n"
    "  --access-log[=BOOL]            http: log every request (default true)\n";

static void pk__usage(FILE *out, const char *cmd, const char *sub)
{
	if (cmd == NULL) {
		fputs(pk__usage_top, out);
		return;
	}
	int agent = strcmp(cmd, "agent") == 0;
	if (sub == NULL || (strcmp(sub, "http") && strcmp(sub, "tcp") && strcmp(sub, "start")))
		fprintf(out, "Usage: piko %s %s [options]\n", cmd,
		        agent ? "http ENDPOINT ADDR | tcp ENDPOINT ADDR | start --config FILE"
		              : "tcp ADDR ENDPOINT | start --config FILE");
	else if (strcmp(sub, "start") == 0)
		fprintf(out, "Usage: piko %s start --config FILE [options]\n", cmd);
	else if (agent)
		fprintf(out,
		        "Usage: piko agent %s ENDPOINT ADDR [options]\n"
		        "  ADDR: a port (localhost:PORT), HOST:PORT%s\n",
		        sub, strcmp(sub, "http") == 0 ? " or an http(s):// URL" : "");
	else
		fprintf(out,
		        "Usage: piko forward tcp ADDR ENDPOINT [options]\n"
		        "  ADDR: local listen address, a port (127.0.0.1:PORT) or HOST:PORT\n");
	fputs("\nOptions:\n", out);
	if (agent || strcmp(cmd, "forward") == 0)
		fputs("  --config FILE                  config file (start only; libconfig)\n",
		      out);
	fputs(pk__usage_common, out);
	if (agent)
		fputs(pk__usage_agent, out);
}

/* ---- value parsers ---- */

static int pk__endpoint_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PK_CONF_ENDPOINT_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("-._~", s[i]))
			return 0;
	return 1;
}

static int pk__path_char(char ch)
{
	return isalnum((unsigned char)ch) || strchr("-._~/%!$&'()*+,;=:@", ch) != NULL;
}

static int pk__copy(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);
	if (n >= size)
		return -1;
	memcpy(dst, src, n + 1);
	return 0;
}

/* scheme://host[:port][/path] -> parts. def_port from the scheme. */
static int pk__split_url(const char *url, char *scheme, size_t scheme_len, char *host,
                         size_t host_len, uint16_t *port, int *explicit_port, char *path,
                         size_t path_len, const char **why)
{
	const char *sep = strstr(url, "://");
	if (sep == NULL || (size_t)(sep - url) >= scheme_len || sep == url) {
		*why = "expected scheme://host[:port]";
		return -EINVAL;
	}
	for (size_t i = 0; i < (size_t)(sep - url); i++)
		scheme[i] = (char)tolower((unsigned char)url[i]);
	scheme[sep - url] = 0;
	const char *a = sep + 3;
	size_t alen = strcspn(a, "/?#");
	if (a[alen] == '?' || a[alen] == '#' || strpbrk(a + alen, "?#")) {
		*why = "a query or fragment is not allowed";
		return -EINVAL;
	}
	char auth[300];
	if (alen == 0 || alen >= sizeof(auth)) {
		*why = "missing or overlong host";
		return -EINVAL;
	}
	memcpy(auth, a, alen);
	auth[alen] = 0;
	if (strchr(auth, '@')) {
		*why = "user information is not allowed";
		return -EINVAL;
	}
	/* Host and optional port. */
	char *colon = NULL;
	if (auth[0] == '[') {
		char *rb = strchr(auth, ']');
		if (rb == NULL) {
			*why = "unterminated [IPv6] host";
			return -EINVAL;
		}
		colon = rb[1] == ':' ? rb + 1 : NULL;
		if (rb[1] != 0 && rb[1] != ':') {
			*why = "bad characters after ]";
			return -EINVAL;
		}
		*rb = 0;
		if ((size_t)(rb - auth) > host_len || !strchr(auth + 1, ':') ||
		    pk_parse_host(auth + 1) < 0) {
			*why = "bad IPv6 address";
			return -EINVAL;
		}
		if (pk__copy(host, host_len, auth + 1) < 0) {
			*why = "host too long";
			return -EINVAL;
		}
	} else {
		colon = strchr(auth, ':');
		if (colon)
			*colon = 0;
		if (pk_parse_host(auth) < 0 || strchr(auth, ':')) {
			*why = "bad host name";
			return -EINVAL;
		}
		if (pk__copy(host, host_len, auth) < 0) {
			*why = "host too long";
			return -EINVAL;
		}
	}
	*explicit_port = 0;
	if (colon) {
		long long p;
		if (pk_parse_int(colon + 1, 1, 65535, &p) < 0) {
			*why = "bad port (1-65535)";
			return -EINVAL;
		}
		*port = (uint16_t)p;
		*explicit_port = 1;
	}
	const char *pth = a + alen;
	for (const char *q = pth; *q; q++) {
		if (!pk__path_char(*q)) {
			*why = "bad character in the path";
			return -EINVAL;
		}
	}
	size_t plen = strlen(pth);
	while (plen > 0 && pth[plen - 1] == '/')
		plen--;
	if (plen >= path_len) {
		*why = "path too long";
		return -EINVAL;
	}
	memcpy(path, pth, plen);
	path[plen] = 0;
	return 0;
}

int pk_conf_parse_url(struct pk_conf_connect *cc, const char *url, const char **why)
{
	char scheme[16], host[256], path[512];
	uint16_t port = 0;
	int explicit_port = 0;
	if (strlen(url) >= sizeof(cc->url)) {
		*why = "too long";
		return -EINVAL;
	}
	if (pk__split_url(url, scheme, sizeof(scheme), host, sizeof(host), &port, &explicit_port,
	                  path, sizeof(path), why) < 0)
		return -EINVAL;
	int tls;
	if (strcmp(scheme, "http") == 0 || strcmp(scheme, "ws") == 0) {
		tls = 0;
	} else if (strcmp(scheme, "https") == 0 || strcmp(scheme, "wss") == 0) {
		tls = 1;
	} else {
		*why = "the scheme must be http, https, ws or wss";
		return -EINVAL;
	}
	if (!explicit_port)
		port = tls ? 443 : 80;
	snprintf(cc->url, sizeof(cc->url), "%s", url);
	snprintf(cc->target.host, sizeof(cc->target.host), "%s", host);
	cc->target.port = port;
	cc->target.pk__naddrs = 0;
	cc->tls = tls;
	int v6 = strchr(host, ':') != NULL;
	if (explicit_port)
		snprintf(cc->host_header, sizeof(cc->host_header), "%s%s%s:%u", v6 ? "[" : "", host,
		         v6 ? "]" : "", port);
	else
		snprintf(cc->host_header, sizeof(cc->host_header), "%s%s%s", v6 ? "[" : "", host,
		         v6 ? "]" : "");
	snprintf(cc->path_prefix, sizeof(cc->path_prefix), "%s", path);
	return 0;
}

static int pk__all_digits(const char *s)
{
	if (*s == 0)
		return 0;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return 0;
	return 1;
}

int pk_conf_parse_local(struct pk_conf_listener *l, const char *addr, const char **why)
{
	struct pk_net_target *t = &l->target;
	if (strlen(addr) >= sizeof(l->addr)) {
		*why = "too long";
		return -EINVAL;
	}
	snprintf(l->addr, sizeof(l->addr), "%s", addr);
	l->https = 0;
	t->pk__naddrs = 0;
	if (pk__all_digits(addr)) {
		long long p;
		if (pk_parse_int(addr, 1, 65535, &p) < 0) {
			*why = "bad port (1-65535)";
			return -EINVAL;
		}
		snprintf(t->host, sizeof(t->host), "localhost");
		t->port = (uint16_t)p;
		return 0;
	}
	if (strstr(addr, "://")) {
		char scheme[16], path[512];
		int explicit_port;
		if (pk__split_url(addr, scheme, sizeof(scheme), t->host, sizeof(t->host), &t->port,
		                  &explicit_port, path, sizeof(path), why) < 0)
			return -EINVAL;
		if (l->protocol == PK_CONF_TCP) {
			*why = "a TCP listener takes a port or host:port, not a URL";
			return -EINVAL;
		}
		if (strcmp(scheme, "http") == 0) {
			l->https = 0;
		} else if (strcmp(scheme, "https") == 0) {
			l->https = 1;
		} else {
			*why = "the scheme must be http or https";
			return -EINVAL;
		}
		if (path[0]) {
			*why = "a path is not supported";
			return -EINVAL;
		}
		if (!explicit_port)
			t->port = l->https ? 443 : 80;
		return 0;
	}
	uint16_t port;
	if (pk_parse_addr(addr, t->host, sizeof(t->host), &port) < 0 || t->host[0] == 0 ||
	    port == 0) {
		*why = "expected a port, host:port or an http(s) URL";
		return -EINVAL;
	}
	t->port = port;
	return 0;
}

static int pk__parse_bind(struct pk_conf_forwarder *f, const char *addr, const char **why)
{
	if (strlen(addr) >= sizeof(f->addr)) {
		*why = "too long";
		return -EINVAL;
	}
	snprintf(f->addr, sizeof(f->addr), "%s", addr);
	long long p;
	if (pk__all_digits(addr)) {
		if (pk_parse_int(addr, 1, 65535, &p) < 0) {
			*why = "bad port (1-65535)";
			return -EINVAL;
		}
		snprintf(f->bind_host, sizeof(f->bind_host), "127.0.0.1");
		f->bind_port = (uint16_t)p;
		return 0;
	}
	if (pk_parse_addr(addr, f->bind_host, sizeof(f->bind_host), &f->bind_port) < 0) {
		*why = "expected a port or host:port";
		return -EINVAL;
	}
	if (f->bind_host[0] == 0)
		snprintf(f->bind_host, sizeof(f->bind_host), "0.0.0.0");
	return 0;
}

/* ---- settings shared by flags and the file ---- */

/* Where a value came from, for messages. */
struct pk__src {
	const char *file; /* NULL: command line */
	int line;
};

static void pk__bad(const struct pk__src *src, const char *name, const char *value, const char *why)
{
	if (src->file) {
		/* Named as the file spells it: connect.ping_interval, not connect.ping-interval. */
		char key[64];
		snprintf(key, sizeof(key), "%s", name);
		for (char *p = key; *p; p++)
			if (*p == '-')
				*p = '_';
		pk__err("%s:%d: %s: invalid value \"%s\": %s", src->file, src->line, key, value,
		        why);
	} else {
		pk__err("invalid value \"%s\" for --%s: %s", value, name, why);
	}
}

static int pk__dur(const struct pk__src *src, const char *name, const char *v, uint64_t *out)
{
	if (pk_parse_duration(v, out) < 0) {
		pk__bad(src, name, v, "expected a duration such as 500ms, 10s, 1m");
		return -1;
	}
	return 0;
}

static int pk__bool(const struct pk__src *src, const char *name, const char *v, int *out)
{
	if (pk_parse_bool(v, out) < 0) {
		pk__bad(src, name, v, "expected true or false");
		return -1;
	}
	return 0;
}

static int pk__str(const struct pk__src *src, const char *name, const char *v, char *dst,
                   size_t size)
{
	if (strlen(v) >= size) {
		pk__bad(src, name, v, "too long");
		return -1;
	}
	snprintf(dst, size, "%s", v);
	return 0;
}

/* Applies a global setting by flag name (dashes). Listener settings are handled apart. */
static int pk__set(struct pk_conf *c, const struct pk__src *src, const char *name, const char *v)
{
	struct pk_conf_connect *cc = &c->connect;
	const char *why;
	if (strcmp(name, "connect.url") == 0) {
		if (pk_conf_parse_url(cc, v, &why) < 0) {
			pk__bad(src, name, v, why);
			return -1;
		}
		return 0;
	}
	if (strcmp(name, "connect.token") == 0)
		return pk__str(src, name, v, cc->token, sizeof(cc->token));
	if (strcmp(name, "connect.token-file") == 0)
		return pk__str(src, name, v, cc->token_file, sizeof(cc->token_file));
	if (strcmp(name, "connect.timeout") == 0)
		return pk__dur(src, name, v, &cc->timeout_ms);
	if (strcmp(name, "connect.ping-interval") == 0)
		return pk__dur(src, name, v, &cc->ping_interval_ms);
	if (strcmp(name, "connect.ping-timeout") == 0)
		return pk__dur(src, name, v, &cc->ping_timeout_ms);
	if (strcmp(name, "connect.stream-window") == 0) {
		uint64_t w;
		if (pk_parse_size(v, PK_CONF_WINDOW_MIN, PK_CONF_WINDOW_MAX, &w) < 0) {
			pk__bad(src, name, v, "expected a size from 256KiB to 16MiB, such as 1MiB");
			return -1;
		}
		cc->stream_window = (uint32_t)w;
		return 0;
	}
	if (strcmp(name, "connect.tls.root-cas") == 0)
		return pk__str(src, name, v, cc->tls_root_cas, sizeof(cc->tls_root_cas));
	if (strcmp(name, "connect.tls.cert") == 0)
		return pk__str(src, name, v, cc->tls_cert, sizeof(cc->tls_cert));
	if (strcmp(name, "connect.tls.key") == 0)
		return pk__str(src, name, v, cc->tls_key, sizeof(cc->tls_key));
	if (strcmp(name, "connect.tls.insecure-skip-verify") == 0)
		return pk__bool(src, name, v, &cc->tls_insecure);
	if (strcmp(name, "log.level") == 0) {
		int l = pk_log_level_parse(v);
		if (l < 0) {
			pk__bad(src, name, v, "expected debug, info, warn or error");
			return -1;
		}
		c->log_level = l;
		return 0;
	}
	if (strcmp(name, "log.subsystems") == 0)
		return pk__str(src, name, v, c->log_subsystems, sizeof(c->log_subsystems));
	if (strcmp(name, "grace-period") == 0)
		return pk__dur(src, name, v, &c->grace_ms);
	pk__err("unknown option --%s", name);
	return -1;
}

/* ---- config file ---- */

/* "connect.token_file" (file spelling) -> "connect.token-file" (flag spelling). */
static void pk__flag_name(const char *path, char *out, size_t size)
{
	snprintf(out, size, "%s", path);
	for (char *p = out; *p; p++)
		if (*p == '_')
			*p = '-';
}

/* A scalar setting as text (strings as they are, numbers as seconds, booleans). */
static int pk__scalar(const config_setting_t *s, char *buf, size_t size)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_STRING:
		snprintf(buf, size, "%s", config_setting_get_string(s));
		return 0;
	case CONFIG_TYPE_INT:
		snprintf(buf, size, "%d", config_setting_get_int(s));
		return 0;
	case CONFIG_TYPE_INT64:
		snprintf(buf, size, "%lld", config_setting_get_int64(s));
		return 0;
	case CONFIG_TYPE_BOOL:
		snprintf(buf, size, "%s", config_setting_get_bool(s) ? "true" : "false");
		return 0;
	case CONFIG_TYPE_ARRAY:
	case CONFIG_TYPE_LIST: {
		/* log.subsystems = ["a", "b"] */
		size_t off = 0;
		buf[0] = 0;
		for (int i = 0; i < config_setting_length(s); i++) {
			const char *v = config_setting_get_string_elem(s, i);
			if (v == NULL)
				return -1;
			int n = snprintf(buf + off, size - off, "%s%s", i ? "," : "", v);
			if (n < 0 || (size_t)n >= size - off)
				return -1;
			off += (size_t)n;
		}
		return 0;
	}
	default:
		return -1;
	}
}

static int pk__file_key(struct pk_conf *c, const char *file, const config_setting_t *s,
                        const char *path, unsigned mode)
{
	static const char *const keys[] = {
	    "connect.url",
	    "connect.token",
	    "connect.token_file",
	    "connect.timeout",
	    "connect.ping_interval",
	    "connect.ping_timeout",
	    "connect.stream_window",
	    "connect.tls.root_cas",
	    "connect.tls.cert",
	    "connect.tls.key",
	    "connect.tls.insecure_skip_verify",
	    "log.level",
	    "log.subsystems",
	    "grace_period",
	};
	struct pk__src src = {file, config_setting_source_line(s)};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strcmp(keys[i], path) != 0)
			continue;
		if (mode == PK_CONF_FORWARD && (strncmp(path, "connect.ping", 12) == 0 ||
		                                strcmp(path, "connect.stream_window") == 0))
			break;
		char v[PK_CONF_TOKEN_MAX + 16], flag[64];
		if (pk__scalar(s, v, sizeof(v)) < 0) {
			pk__err("%s:%d: %s: expected a string, number or boolean", file, src.line,
			        path);
			return -1;
		}
		pk__flag_name(path, flag, sizeof(flag));
		return pk__set(c, &src, flag, v);
	}
	pk__err("%s:%d: unknown key %s", file, src.line, path);
	return -1;
}

static int pk__file_group(struct pk_conf *c, const char *file, const config_setting_t *g,
                          const char *prefix, unsigned mode)
{
	for (int i = 0; i < config_setting_length(g); i++) {
		const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
		char path[256];
		snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "",
		         config_setting_name(s));
		int r;
		if (config_setting_is_group(s))
			r = pk__file_group(c, file, s, path, mode);
		else
			r = pk__file_key(c, file, s, path, mode);
		if (r < 0)
			return r;
	}
	return 0;
}

static int pk__file_item_str(const char *file, const config_setting_t *s, char *buf, size_t size)
{
	if (pk__scalar(s, buf, size) < 0) {
		pk__err("%s:%d: %s: expected a string", file, config_setting_source_line(s),
		        config_setting_name(s));
		return -1;
	}
	return 0;
}

/* One element of listeners = ( {...}, ... ). */
static int pk__file_listener(struct pk_conf *c, const char *file, const config_setting_t *e,
                             unsigned idx)
{
	struct pk_conf_listener *l = &c->listeners[c->n_listeners];
	int line = config_setting_source_line(e);
	char endpoint[256] = "", proto[32] = "http", addr[1024] = "", v[64];
	l->timeout_ms = 10000;
	l->access_log = 1;
	if (!config_setting_is_group(e)) {
		pk__err("%s:%d: listeners[%u]: expected a group { ... }", file, line, idx);
		return -1;
	}
	for (int i = 0; i < config_setting_length(e); i++) {
		const config_setting_t *s = config_setting_get_elem(e, (unsigned)i);
		const char *k = config_setting_name(s);
		struct pk__src src = {file, config_setting_source_line(s)};
		char name[64];
		snprintf(name, sizeof(name), "listeners[%u].%s", idx, k);
		if (strcmp(k, "endpoint_id") == 0) {
			if (pk__file_item_str(file, s, endpoint, sizeof(endpoint)) < 0)
				return -1;
		} else if (strcmp(k, "protocol") == 0) {
			if (pk__file_item_str(file, s, proto, sizeof(proto)) < 0)
				return -1;
		} else if (strcmp(k, "addr") == 0) {
			if (pk__file_item_str(file, s, addr, sizeof(addr)) < 0)
				return -1;
		} else if (strcmp(k, "timeout") == 0) {
			if (pk__file_item_str(file, s, v, sizeof(v)) < 0 ||
			    pk__dur(&src, name, v, &l->timeout_ms) < 0)
				return -1;
		} else if (strcmp(k, "access_log") == 0) {
			if (pk__file_item_str(file, s, v, sizeof(v)) < 0 ||
			    pk__bool(&src, name, v, &l->access_log) < 0)
				return -1;
		} else {
			pk__err("%s:%d: unknown key listeners[%u].%s", file, src.line, idx, k);
			return -1;
		}
	}
	if (strcmp(proto, "http") == 0) {
		l->protocol = PK_CONF_HTTP;
	} else if (strcmp(proto, "tcp") == 0) {
		l->protocol = PK_CONF_TCP;
	} else {
		pk__err("%s:%d: listeners[%u].protocol: invalid value \"%s\": expected http or tcp",
		        file, line, idx, proto);
		return -1;
	}
	if (!pk__endpoint_ok(endpoint)) {
		pk__err("%s:%d: listeners[%u].endpoint_id: invalid value \"%s\": expected 1-%d "
		        "letters, digits, '-', '.', '_' or '~'",
		        file, line, idx, endpoint, PK_CONF_ENDPOINT_MAX);
		return -1;
	}
	pk__copy(l->endpoint, sizeof(l->endpoint), endpoint);
	const char *why;
	if (addr[0] == 0 || pk_conf_parse_local(l, addr, &why) < 0) {
		pk__err("%s:%d: listeners[%u].addr: invalid value \"%s\": %s", file, line, idx,
		        addr, addr[0] ? why : "missing");
		return -1;
	}
	c->n_listeners++;
	return 0;
}

static int pk__file_forwarder(struct pk_conf *c, const char *file, const config_setting_t *e,
                              unsigned idx)
{
	struct pk_conf_forwarder *f = &c->forwarders[c->n_forwarders];
	int line = config_setting_source_line(e);
	char endpoint[256] = "", addr[300] = "";
	if (!config_setting_is_group(e)) {
		pk__err("%s:%d: forwarders[%u]: expected a group { ... }", file, line, idx);
		return -1;
	}
	for (int i = 0; i < config_setting_length(e); i++) {
		const config_setting_t *s = config_setting_get_elem(e, (unsigned)i);
		const char *k = config_setting_name(s);
		if (strcmp(k, "endpoint_id") == 0) {
			if (pk__file_item_str(file, s, endpoint, sizeof(endpoint)) < 0)
				return -1;
		} else if (strcmp(k, "addr") == 0) {
			if (pk__file_item_str(file, s, addr, sizeof(addr)) < 0)
				return -1;
		} else {
			pk__err("%s:%d: unknown key forwarders[%u].%s", file,
			        config_setting_source_line(s), idx, k);
			return -1;
		}
	}
	if (!pk__endpoint_ok(endpoint)) {
		pk__err("%s:%d: forwarders[%u].endpoint_id: invalid value \"%s\"", file, line, idx,
		        endpoint);
		return -1;
	}
	pk__copy(f->endpoint, sizeof(f->endpoint), endpoint);
	const char *why;
	if (addr[0] == 0 || pk__parse_bind(f, addr, &why) < 0) {
		pk__err("%s:%d: forwarders[%u].addr: invalid value \"%s\": %s", file, line, idx,
		        addr, addr[0] ? why : "missing");
		return -1;
	}
	c->n_forwarders++;
	return 0;
}

static int pk__file_list(struct pk_conf *c, const char *file, const config_setting_t *s,
                         int listeners)
{
	const char *what = listeners ? "listeners" : "forwarders";
	if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
		pk__err("%s:%d: %s: expected a list ( { ... }, ... )", file,
		        config_setting_source_line(s), what);
		return -1;
	}
	int n = config_setting_length(s);
	if (n > PK_CONF_MAX_ITEMS) {
		pk__err("%s:%d: %s: at most %d entries", file, config_setting_source_line(s), what,
		        PK_CONF_MAX_ITEMS);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		int r = listeners ? pk__file_listener(c, file, e, (unsigned)i)
		                  : pk__file_forwarder(c, file, e, (unsigned)i);
		if (r < 0)
			return r;
	}
	return 0;
}

static int pk__load_file(struct pk_conf *c, const char *file)
{
	config_t lc;
	config_init(&lc);
	int rc = -1;
	if (config_read_file(&lc, file) != CONFIG_TRUE) {
		if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
			pk__err("%s: cannot read the config file", file);
		else
			pk__err("%s:%d: %s", file, config_error_line(&lc), config_error_text(&lc));
		goto out;
	}
	const config_setting_t *root = config_root_setting(&lc);
	for (int i = 0; i < config_setting_length(root); i++) {
		const config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
		const char *k = config_setting_name(s);
		int r;
		if (strcmp(k, "listeners") == 0 && c->mode == PK_CONF_AGENT)
			r = pk__file_list(c, file, s, 1);
		else if (strcmp(k, "forwarders") == 0 && c->mode == PK_CONF_FORWARD)
			r = pk__file_list(c, file, s, 0);
		else if (config_setting_is_group(s))
			r = pk__file_group(c, file, s, k, (unsigned)c->mode);
		else
			r = pk__file_key(c, file, s, k, (unsigned)c->mode);
		if (r < 0)
			goto out;
	}
	if (c->mode == PK_CONF_AGENT && c->n_listeners == 0) {
		pk__err("%s: no listeners: add listeners = ( { endpoint_id = ...; addr = ...; } )",
		        file);
		goto out;
	}
	if (c->mode == PK_CONF_FORWARD && c->n_forwarders == 0) {
		pk__err(
		    "%s: no forwarders: add forwarders = ( { endpoint_id = ...; addr = ...; } )",
		    file);
		goto out;
	}
	rc = 0;
out:
	config_destroy(&lc);
	return rc;
}

/* ---- token file and TLS ---- */

static int pk__read_token_file(struct pk_conf_connect *cc)
{
	int fd = open(cc->token_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		pk__err("--connect.token-file %s: %s", cc->token_file, strerror(errno));
		return -1;
	}
	ssize_t n = read(fd, cc->token, sizeof(cc->token) - 1);
	int e = errno;
	close(fd);
	if (n < 0) {
		pk__err("--connect.token-file %s: %s", cc->token_file, strerror(e));
		return -1;
	}
	if ((size_t)n == sizeof(cc->token) - 1) {
		pk__err("--connect.token-file %s: longer than %d bytes", cc->token_file,
		        PK_CONF_TOKEN_MAX - 1);
		return -1;
	}
	while (n > 0 && isspace((unsigned char)cc->token[n - 1]))
		n--;
	cc->token[n] = 0;
	size_t lead = strspn(cc->token, " \t\r\n");
	memmove(cc->token, cc->token + lead, (size_t)n - lead + 1);
	if (cc->token[0] == 0) {
		pk__err("--connect.token-file %s: the file is empty", cc->token_file);
		return -1;
	}
	return 0;
}

static int pk__token_ok(const char *t)
{
	for (; *t; t++)
		if ((unsigned char)*t <= 0x20 || *t == 0x7f)
			return 0;
	return 1;
}

static void pk__tls_err(const char *flag, const char *file)
{
	char buf[256];
	ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
	ERR_clear_error();
	pk__err("invalid value \"%s\" for --%s: %s", file, flag, buf);
}

static SSL_CTX *pk__client_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return ctx;
}

static int pk__build_tls(struct pk_conf *c)
{
	struct pk_conf_connect *cc = &c->connect;
	if ((cc->tls_cert[0] != 0) != (cc->tls_key[0] != 0)) {
		pk__err("--connect.tls.cert and --connect.tls.key go together");
		return -1;
	}
	if (cc->tls) {
		SSL_CTX *ctx = pk__client_ctx();
		if (ctx == NULL) {
			pk__err("cannot create a TLS context");
			return -1;
		}
		cc->target.tls = ctx;
		if (cc->tls_root_cas[0]) {
			if (SSL_CTX_load_verify_locations(ctx, cc->tls_root_cas, NULL) != 1) {
				pk__tls_err("connect.tls.root-cas", cc->tls_root_cas);
				return -1;
			}
		} else {
			SSL_CTX_set_default_verify_paths(ctx);
		}
		if (cc->tls_cert[0]) {
			if (SSL_CTX_use_certificate_chain_file(ctx, cc->tls_cert) != 1) {
				pk__tls_err("connect.tls.cert", cc->tls_cert);
				return -1;
			}
			if (SSL_CTX_use_PrivateKey_file(ctx, cc->tls_key, SSL_FILETYPE_PEM) != 1 ||
			    SSL_CTX_check_private_key(ctx) != 1) {
				pk__tls_err("connect.tls.key", cc->tls_key);
				return -1;
			}
		}
		if (cc->tls_insecure)
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	} else if (cc->tls_root_cas[0] || cc->tls_cert[0] || cc->tls_insecure) {
		pk__err("--connect.tls.* options need an https:// --connect.url (got \"%s\")",
		        cc->url);
		return -1;
	}
	for (unsigned i = 0; i < c->n_listeners; i++) {
		if (!c->listeners[i].https)
			continue;
		if (c->local_tls == NULL) {
			c->local_tls = pk__client_ctx();
			if (c->local_tls == NULL) {
				pk__err("cannot create a TLS context");
				return -1;
			}
			SSL_CTX_set_default_verify_paths(c->local_tls);
		}
		c->listeners[i].target.tls = c->local_tls;
	}
	return 0;
}

void pk_conf_free(struct pk_conf *c)
{
	if (c->connect.target.tls)
		SSL_CTX_free(c->connect.target.tls);
	if (c->local_tls)
		SSL_CTX_free(c->local_tls);
	c->connect.target.tls = c->local_tls = NULL;
}

/* ---- the command line ---- */

struct pk__arg {
	const char *name; /* without "--" */
	char value[PK_CONF_TOKEN_MAX];
};

static const struct pk__flag *pk__find_flag(const char *name, size_t len)
{
	for (size_t i = 0; i < PK__N_FLAGS; i++)
		if (strlen(pk__flags[i].name) == len && strncmp(pk__flags[i].name, name, len) == 0)
			return &pk__flags[i];
	return NULL;
}

static int pk__defaults(struct pk_conf *c)
{
	const char *why;
	struct pk_conf_connect *cc = &c->connect;
	const char *url =
	    c->mode == PK_CONF_AGENT ? "http://localhost:8001" : "http://localhost:8000";
	pk_conf_parse_url(cc, url, &why);
	cc->timeout_ms = 10000;
	cc->ping_interval_ms = 5000;
	cc->ping_timeout_ms = 5000;
	cc->stream_window = PK_CONF_WINDOW_DEFAULT;
	c->grace_ms = 30000;
	c->log_level = PK_LOG_INFO;
	return 0;
}

/* Settings that apply to listeners: flags override the file. */
static int pk__listener_flag(struct pk_conf *c, const struct pk__flag *f, const char *v)
{
	struct pk__src src = {NULL, 0};
	uint64_t ms;
	int b;
	if (strcmp(f->name, "timeout") == 0) {
		if (pk__dur(&src, f->name, v, &ms) < 0)
			return -1;
		if (ms == 0) {
			pk__bad(&src, f->name, v, "must be more than 0");
			return -1;
		}
		for (unsigned i = 0; i < c->n_listeners; i++)
			c->listeners[i].timeout_ms = ms;
		return 0;
	}
	if (pk__bool(&src, f->name, v, &b) < 0)
		return -1;
	for (unsigned i = 0; i < c->n_listeners; i++)
		c->listeners[i].access_log = b;
	return 0;
}

/* Positional arguments of a run command into listeners/forwarders. */
static int pk__positionals(struct pk_conf *c, const char *sub, char **pos, int npos)
{
	const char *why;
	if (strcmp(sub, "start") == 0) {
		if (npos > 0) {
			pk__err("unexpected argument \"%s\" (start takes --config FILE)", pos[0]);
			return -1;
		}
		return 0;
	}
	if (npos != 2) {
		pk__err("%s %s takes two arguments: %s",
		        c->mode == PK_CONF_AGENT ? "agent" : "forward", sub,
		        c->mode == PK_CONF_AGENT ? "ENDPOINT ADDR" : "ADDR ENDPOINT");
		return -1;
	}
	const char *ep = c->mode == PK_CONF_AGENT ? pos[0] : pos[1];
	const char *addr = c->mode == PK_CONF_AGENT ? pos[1] : pos[0];
	if (!pk__endpoint_ok(ep)) {
		pk__err(
		    "invalid ENDPOINT \"%s\": expected 1-%d letters, digits, '-', '.', '_' or '~'",
		    ep, PK_CONF_ENDPOINT_MAX);
		return -1;
	}
	if (c->mode == PK_CONF_AGENT) {
		struct pk_conf_listener *l = &c->listeners[0];
		l->protocol = strcmp(sub, "http") == 0 ? PK_CONF_HTTP : PK_CONF_TCP;
		l->timeout_ms = 10000;
		l->access_log = 1;
		snprintf(l->endpoint, sizeof(l->endpoint), "%s", ep);
		if (pk_conf_parse_local(l, addr, &why) < 0) {
			pk__err("invalid ADDR \"%s\": %s", addr, why);
			return -1;
		}
		c->n_listeners = 1;
	} else {
		struct pk_conf_forwarder *f = &c->forwarders[0];
		snprintf(f->endpoint, sizeof(f->endpoint), "%s", ep);
		if (pk__parse_bind(f, addr, &why) < 0) {
			pk__err("invalid ADDR \"%s\": %s", addr, why);
			return -1;
		}
		c->n_forwarders = 1;
	}
	return 0;
}

int pk_conf_parse(struct pk_conf *c, int argc, char **argv)
{
	if (argc < 2) {
		pk__usage(stderr, NULL, NULL);
		return PK_CONF_ERROR;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
		printf("piko %s\n", PK_VERSION);
		return PK_CONF_VERSION;
	}
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		pk__usage(stdout, NULL, NULL);
		return PK_CONF_HELP;
	}
	if (strcmp(cmd, "agent") == 0) {
		c->mode = PK_CONF_AGENT;
	} else if (strcmp(cmd, "forward") == 0) {
		c->mode = PK_CONF_FORWARD;
	} else {
		pk__err("unknown command \"%s\" (try piko --help)", cmd);
		return PK_CONF_ERROR;
	}
	static struct pk__arg args[PK__MAX_FLAGS];
	int nargs = 0;
	char *pos[8];
	int npos = 0;
	const char *sub = NULL;
	int help = 0;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			help = 1;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || a[2] == 0) {
			if (sub == NULL)
				sub = a;
			else if (npos < 8)
				pos[npos++] = argv[i];
			else {
				pk__err("too many arguments");
				return PK_CONF_ERROR;
			}
			continue;
		}
		const char *name = a + 2;
		const char *eq = strchr(name, '=');
		size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
		const struct pk__flag *f = pk__find_flag(name, nlen);
		if (f == NULL) {
			pk__err("unknown option --%.*s (try piko %s --help)", (int)nlen, name, cmd);
			return PK_CONF_ERROR;
		}
		const char *v;
		if (eq)
			v = eq + 1;
		else if (f->type == PK__T_BOOL)
			v = "true";
		else if (i + 1 < argc)
			v = argv[++i];
		else {
			pk__err("option --%s needs a value", f->name);
			return PK_CONF_ERROR;
		}
		if (nargs == PK__MAX_FLAGS) {
			pk__err("too many options");
			return PK_CONF_ERROR;
		}
		args[nargs].name = f->name;
		snprintf(args[nargs].value, sizeof(args[nargs].value), "%s", v);
		if (strlen(v) >= sizeof(args[nargs].value)) {
			pk__err("value of --%s is too long", f->name);
			return PK_CONF_ERROR;
		}
		nargs++;
	}
	if (help) {
		pk__usage(stdout, cmd, sub);
		return PK_CONF_HELP;
	}
	if (sub == NULL) {
		pk__err("%s needs a subcommand", cmd);
		pk__usage(stderr, cmd, NULL);
		return PK_CONF_ERROR;
	}
	int start = strcmp(sub, "start") == 0;
	if (!start && !(c->mode == PK_CONF_AGENT && strcmp(sub, "http") == 0) &&
	    strcmp(sub, "tcp") != 0) {
		pk__err("unknown subcommand \"%s %s\" (try piko %s --help)", cmd, sub, cmd);
		return PK_CONF_ERROR;
	}
	pk__defaults(c);
	if (pk__positionals(c, sub, pos, npos) < 0)
		return PK_CONF_ERROR;
	/* Scope checks, then the config file, then the other flags over it. */
	const char *config = NULL;
	for (int i = 0; i < nargs; i++) {
		const struct pk__flag *f = pk__find_flag(args[i].name, strlen(args[i].name));
		int ok = 1;
		if ((f->scope & PK__S_START) && !start)
			ok = 0;
		if ((f->scope & PK__S_HTTP) &&
		    (c->mode != PK_CONF_AGENT || strcmp(sub, "tcp") == 0))
			ok = 0;
		if (f->scope == PK__S_AGENT && c->mode != PK_CONF_AGENT)
			ok = 0;
		if (!ok) {
			pk__err("option --%s does not apply to piko %s %s", f->name, cmd, sub);
			return PK_CONF_ERROR;
		}
		if (strcmp(f->name, "config") == 0)
			config = args[i].value;
	}
	if (start && config == NULL) {
		pk__err("piko %s start needs --config FILE", cmd);
		return PK_CONF_ERROR;
	}
	if (config && pk__load_file(c, config) < 0)
		return PK_CONF_ERROR;
	struct pk__src src = {NULL, 0};
	for (int i = 0; i < nargs; i++) {
		const struct pk__flag *f = pk__find_flag(args[i].name, strlen(args[i].name));
		int r = 0;
		if (strcmp(f->name, "config") == 0)
			continue;
		if (f->scope == PK__S_HTTP)
			r = pk__listener_flag(c, f, args[i].value);
		else
			r = pk__set(c, &src, f->name, args[i].value);
		if (r < 0)
			return PK_CONF_ERROR;
	}
	struct pk_conf_connect *cc = &c->connect;
	if (cc->token[0] && cc->token_file[0]) {
		pk__err("--connect.token and --connect.token-file exclude each other");
		return PK_CONF_ERROR;
	}
	if (cc->token_file[0] && pk__read_token_file(cc) < 0)
		return PK_CONF_ERROR;
	if (cc->token[0] && !pk__token_ok(cc->token)) {
		pk__err("invalid --connect.token: spaces or control characters");
		return PK_CONF_ERROR;
	}
	if (cc->timeout_ms == 0 || cc->ping_interval_ms == 0 || cc->ping_timeout_ms == 0) {
		pk__err(
		    "--connect.timeout, --connect.ping-interval and --connect.ping-timeout must "
		    "be more than 0");
		return PK_CONF_ERROR;
	}
	if (pk__build_tls(c) < 0)
		return PK_CONF_ERROR;
	return PK_CONF_RUN;
}
