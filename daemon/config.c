/* pikod configuration: one key table drives the file parser, the flags, validation, the
 * writer, comparison and --help. See config.h for the rules users see. */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/parse.h"

#define PK__VALUE_MAX (64 * 1024)   /* longest string value, after ${} expansion */
#define PK__LIST_MAX  256           /* items in one list */
#define PK__FILE_MAX  (1024 * 1024) /* largest config file */
#define PK__NAME_MAX  128           /* longest key or flag name handled */
#define PK__IDENT_MAX 64            /* node ids, prefixes, subsystem names */

enum pk__type {
	PK__T_INT,      /* int field */
	PK__T_SIZE,     /* uint64_t field, an integer in the file */
	PK__T_DURATION, /* uint64_t field, milliseconds */
	PK__T_BOOL,     /* int field, 0 or 1 */
	PK__T_STRING,   /* char * field */
	PK__T_LIST,     /* struct pk_strlist field */
};

/* What a string (or each list item) must look like. */
enum pk__check {
	PK__C_ANY,
	PK__C_BIND,      /* bind address, pk_parse_addr */
	PK__C_ADVERTISE, /* host:port with a host and a non-zero port */
	PK__C_PEER,      /* host or host:port */
	PK__C_LEVEL,     /* log level, stored canonical */
	PK__C_IDENT,     /* 1-64 of [A-Za-z0-9._-] */
	PK__C_FILE,      /* readable regular file */
	PK__C_RSA,       /* PEM RSA public key */
	PK__C_EC,        /* PEM EC public key */
};

/* A key. A string key with a default is required (must not be empty); one without a
 * default is optional and "" means unset. Keys of one group must be contiguous in the
 * table: pk_config_write() opens each group once. */
struct pk__key {
	const char *name; /* dotted file key; the flag is derived from it */
	enum pk__type type;
	enum pk__check check;
	size_t off;           /* into struct pk_config */
	const char *def;      /* default as flag text; NULL: unset / empty list */
	long long min, max;   /* PK__T_INT, PK__T_SIZE */
	const char *requires; /* a key that must also be set when this one is */
	const char *meta;     /* value placeholder in --help */
	const char *help;
};

#define PK__OFF(field) offsetof(struct pk_config, field)

#define PK__STR(key, chk, field, dflt, mt, text)                                                   \
	{                                                                                          \
		.name = key, .type = PK__T_STRING, .check = chk, .off = PK__OFF(field),            \
		.def = dflt, .meta = mt, .help = text                                              \
	}
#define PK__DUR(key, field, dflt, text)                                                            \
	{                                                                                          \
		.name = key, .type = PK__T_DURATION, .off = PK__OFF(field), .def = dflt,           \
		.meta = "DURATION", .help = text                                                   \
	}

#define PK__AUTH(port, who)                                                                        \
	PK__STR(#port ".auth.hmac_secret_key", PK__C_ANY, port.auth.hmac_secret_key, NULL,         \
	        "SECRET", "HMAC secret verifying " who " JWTs (HS256/HS384/HS512)"),               \
	    PK__STR(#port ".auth.rsa_public_key", PK__C_RSA, port.auth.rsa_public_key, NULL,       \
	            "PEM", "RSA public key (PEM text) verifying " who " JWTs (RS*/PS*)"),          \
	    PK__STR(#port ".auth.ecdsa_public_key", PK__C_EC, port.auth.ecdsa_public_key, NULL,    \
	            "PEM", "ECDSA public key (PEM text) verifying " who " JWTs (ES*)"),            \
	    PK__STR(#port ".auth.audience", PK__C_ANY, port.auth.audience, NULL, "STRING",         \
	            "JWT audience (aud) that " who " tokens must carry"),                          \
	    PK__STR(#port ".auth.issuer", PK__C_ANY, port.auth.issuer, NULL, "STRING",             \
	            "JWT issuer (iss) that " who " tokens must carry")

#define PK__TLS(port, who)                                                                         \
	{.name = #port ".tls.cert",                                                                \
	 .type = PK__T_STRING,                                                                     \
	 .check = PK__C_FILE,                                                                      \
	 .off = PK__OFF(port.tls.cert),                                                            \
	 .requires = #port ".tls.key",                                                             \
	 .meta = "PATH",                                                                           \
	 .help = "TLS certificate chain (PEM file) for the " who " port; enables TLS"},            \
	    {.name = #port ".tls.key",                                                             \
	     .type = PK__T_STRING,                                                                 \
	     .check = PK__C_FILE,                                                                  \
	     .off = PK__OFF(port.tls.key),                                                         \
	     .requires = #port ".tls.cert",                                                        \
	     .meta = "PATH",                                                                       \
	     .help = "TLS private key (PEM file) for " #port ".tls.cert"},                         \
	{                                                                                          \
		.name = #port ".tls.client_cas", .type = PK__T_STRING, .check = PK__C_FILE,        \
		.off = PK__OFF(port.tls.client_cas), .requires = #port ".tls.cert",                \
		.meta = "PATH",                                                                    \
		.help = "CA bundle (PEM file): require client certificates signed by it (mTLS)"    \
	}

static const struct pk__key pk__keys[] = {
    {.name = "workers",
     .type = PK__T_INT,
     .off = PK__OFF(workers),
     .def = "0",
     .min = 0,
     .max = 256,
     .meta = "INT",
     .help = "worker processes; 0 means one per CPU core"},
    PK__STR("state_dir", PK__C_ANY, state_dir, "/var/lib/pikod", "PATH",
            "directory for the routing table and cluster log (LMDB)"),
    PK__DUR("grace_period", grace_period_ms, "30s",
            "how long stopping or reloading waits for in-flight requests"),

    PK__STR("proxy.bind_addr", PK__C_BIND, proxy.bind_addr, ":8000", "ADDR",
            "listen address for client traffic"),
    PK__DUR("proxy.timeout", proxy_timeout_ms, "30s", "timeout for a forwarded request (0 = none)"),
    PK__DUR("proxy.upstream_wait", proxy_upstream_wait_ms, "0s",
            "how long a request waits for an upstream to register before 502"),
    {.name = "proxy.http.max_header_bytes",
     .type = PK__T_SIZE,
     .off = PK__OFF(proxy_max_header_bytes),
     .def = "1048576",
     .min = 1024,
     .max = 16 * 1024 * 1024,
     .meta = "BYTES",
     .help = "largest request head accepted from a client"},
    PK__DUR("proxy.http.read_header_timeout", proxy_read_header_timeout_ms, "10s",
            "time a client has to send the request head"),
    PK__DUR("proxy.http.idle_timeout", proxy_idle_timeout_ms, "5m",
            "idle keep-alive client connections are closed after this"),
    {.name = "proxy.access_log.disable",
     .type = PK__T_BOOL,
     .off = PK__OFF(proxy_access_log_disable),
     .def = "false",
     .meta = "[BOOL]",
     .help = "turn off the access log (one JSON line per proxied request, subsystem proxy.access)"},
    {.name = "proxy.access_log.request_headers",
     .type = PK__T_LIST,
     .check = PK__C_IDENT,
     .off = PK__OFF(proxy_access_log_request_headers),
     .meta = "NAME,...",
     .help = "request headers written to the access log (none unless listed)"},
    {.name = "proxy.access_log.response_headers",
     .type = PK__T_LIST,
     .check = PK__C_IDENT,
     .off = PK__OFF(proxy_access_log_response_headers),
     .meta = "NAME,...",
     .help = "response headers written to the access log (none unless listed)"},
    PK__AUTH(proxy, "client"),
    PK__TLS(proxy, "proxy"),

    PK__STR("upstream.bind_addr", PK__C_BIND, upstream.bind_addr, ":8001", "ADDR",
            "listen address for upstream (agent) connections"),
    PK__AUTH(upstream, "upstream"),
    {.name = "upstream.auth.disable_disconnect_on_expiry",
     .type = PK__T_BOOL,
     .off = PK__OFF(upstream.auth.disable_disconnect_on_expiry),
     .def = "false",
     .meta = "[BOOL]",
     .help = "keep an upstream connected after its token expires"},
    {.name = "upstream.max_streams",
     .type = PK__T_INT,
     .off = PK__OFF(upstream_max_streams),
     .def = "1024",
     .min = 1,
     .max = 65536,
     .meta = "INT",
     .help = "concurrent requests per upstream connection; beyond it clients get 503"},
    PK__TLS(upstream, "upstream"),

    PK__STR("admin.bind_addr", PK__C_BIND, admin.bind_addr, "127.0.0.1:8002", "ADDR",
            "listen address for the admin API (health, metrics, status)"),
    PK__AUTH(admin, "admin API"),
    {.name = "admin.auth.exempt_probes",
     .type = PK__T_BOOL,
     .off = PK__OFF(admin_auth_exempt_probes),
     .def = "true",
     .meta = "[BOOL]",
     .help = "serve /health and /ready without a token when admin auth is on"},
    PK__TLS(admin, "admin"),

    PK__STR("cluster.bind_addr", PK__C_BIND, cluster.bind_addr, ":8003", "ADDR",
            "listen address for node-to-node traffic"),
    PK__STR("cluster.advertise_addr", PK__C_ADVERTISE, cluster_advertise_addr, NULL, "HOST:PORT",
            "address peers use to reach this node; unset: derived from cluster.bind_addr"),
    PK__STR("cluster.node_id", PK__C_IDENT, cluster_node_id, NULL, "ID",
            "fixed node id; unset: node_id_prefix + random, new on every start"),
    PK__STR("cluster.node_id_prefix", PK__C_IDENT, cluster_node_id_prefix, NULL, "PREFIX",
            "prefix of the random node id"),
    {.name = "cluster.join",
     .type = PK__T_LIST,
     .check = PK__C_PEER,
     .off = PK__OFF(cluster_join),
     .meta = "ADDR,...",
     .help = "peers to join: host or host:port (DNS names are re-resolved)"},
    PK__TLS(cluster, "cluster"),

    PK__STR("log.level", PK__C_LEVEL, log_level, "info", "LEVEL",
            "minimum log level: debug, info, warn or error"),
    {.name = "log.subsystems",
     .type = PK__T_LIST,
     .check = PK__C_IDENT,
     .off = PK__OFF(log_subsystems),
     .meta = "NAME,...",
     .help = "subsystems logged at every level (e.g. proxy,upstream)"},
};

#define PK__NKEYS (sizeof(pk__keys) / sizeof(pk__keys[0]))

/* Where a value came from, for error messages. */
struct pk__src {
	const char *file; /* NULL with flag == 0: a default */
	unsigned line;
	int flag;
};

struct pk__ctx {
	struct pk_config *cfg;
	char *err;
	int expand;         /* ${VAR} expansion of file strings */
	const char *origin; /* names the document in errors */
	struct pk__src src[PK__NKEYS];
	unsigned char flag_seen[PK__NKEYS];
};

/* ---- helpers ---- */

static void *pk__field(const struct pk_config *cfg, const struct pk__key *k)
{
	return (char *)cfg + k->off;
}

/* The flag spelling of a key: underscores become dashes. */
static const char *pk__flagname(const char *key, char *buf, size_t size)
{
	size_t i = 0;
	for (; key[i] != '\0' && i + 1 < size; i++)
		buf[i] = key[i] == '_' ? '-' : key[i];
	buf[i] = '\0';
	return buf;
}

/* Renders a user value for a message: quoted, escaped, at most ~60 chars. */
static const char *pk__quote(const char *s, char *buf, size_t size)
{
	size_t n = 0;
	buf[n++] = '"';
	for (; *s != '\0' && n + 8 < size; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			n += (size_t)snprintf(buf + n, size - n, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
		else
			buf[n++] = (char)c;
	}
	if (*s != '\0')
		n += (size_t)snprintf(buf + n, size - n, "...");
	snprintf(buf + n, size - n, "\"");
	return buf;
}

#define PK__QUOTE(s) pk__quote((s), (char[80]){0}, 80)

static int pk__fail(struct pk__ctx *c, const struct pk__src *src, const char *key, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

/* Formats "FILE:LINE: KEY: msg" or "--flag: msg" into c->err (truncated to fit).
 * Returns -EINVAL. */
static int pk__fail(struct pk__ctx *c, const struct pk__src *src, const char *key, const char *fmt,
                    ...)
{
	char flag[PK__NAME_MAX];
	int n;
	va_list ap;

	if (src != NULL && src->flag)
		n = snprintf(c->err, PK_CONFIG_ERR_MAX,
		             "--%s: ", pk__flagname(key, flag, sizeof(flag)));
	else if (src != NULL && src->file != NULL)
		n = snprintf(c->err, PK_CONFIG_ERR_MAX, "%s:%u: %s: ", src->file, src->line, key);
	else
		n = snprintf(c->err, PK_CONFIG_ERR_MAX, "%s: ", key);
	if (n < 0 || n >= PK_CONFIG_ERR_MAX)
		return -EINVAL;
	va_start(ap, fmt);
	vsnprintf(c->err + n, PK_CONFIG_ERR_MAX - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int pk__oom(struct pk__ctx *c)
{
	snprintf(c->err, PK_CONFIG_ERR_MAX, "out of memory");
	return -ENOMEM;
}

static int pk__find_key(const char *name)
{
	for (size_t i = 0; i < PK__NKEYS; i++)
		if (strcmp(pk__keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* Exact flag match: a key's '_' is spelled '-' in the flag, nothing else differs. */
static int pk__find_flag(const char *flag)
{
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const char *k = pk__keys[i].name, *f = flag;
		for (; *k != '\0' && *f != '\0'; k++, f++)
			if (*f != (*k == '_' ? '-' : *k))
				break;
		if (*k == '\0' && *f == '\0')
			return (int)i;
	}
	return -1;
}

/* Whether name is a group of the table ("proxy", "proxy.auth"). */
static int pk__is_section(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < PK__NKEYS; i++)
		if (strncmp(pk__keys[i].name, name, n) == 0 && pk__keys[i].name[n] == '.')
			return 1;
	return 0;
}

/* Levenshtein distance, for "did you mean". Strings are at most PK__NAME_MAX long. */
static size_t pk__distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[PK__NAME_MAX + 1];

	if (la > PK__NAME_MAX || lb > PK__NAME_MAX)
		return (size_t)-1;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* The closest key or group name to `name` within distance 2 (or equal once '-' and '_'
 * are treated alike), in flag spelling when as_flag. Writes it to out, or "" if none. */
static void pk__suggest(const char *name, int as_flag, char *out, size_t size)
{
	size_t best = 3;
	char cand[PK__NAME_MAX], norm[PK__NAME_MAX];
	const char sep = as_flag ? '-' : '_';

	out[0] = '\0';
	snprintf(norm, sizeof(norm), "%s", name);
	for (char *p = norm; *p != '\0'; p++)
		if (*p == '_' || *p == '-')
			*p = sep;
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const char *k = pk__keys[i].name;
		/* The key itself, then each group that contains it. */
		for (size_t len = strlen(k); len > 0 && len < sizeof(cand);) {
			memcpy(cand, k, len);
			cand[len] = '\0';
			for (char *p = cand; *p != '\0'; p++)
				if (*p == '_')
					*p = sep;
			size_t d = strcmp(norm, cand) == 0 ? 0 : pk__distance(name, cand);
			if (d < best) {
				best = d;
				snprintf(out, size, "%s", cand);
			}
			const char *dot = memrchr(k, '.', len);
			len = dot != NULL ? (size_t)(dot - k) : 0;
		}
	}
	if (as_flag && pk__distance(name, "config") < best)
		snprintf(out, size, "config");
}

static const char *pk__type_name(const config_setting_t *s)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_GROUP:
		return "a group";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		return "an integer";
	case CONFIG_TYPE_FLOAT:
		return "a float";
	case CONFIG_TYPE_STRING:
		return "a string";
	case CONFIG_TYPE_BOOL:
		return "a boolean";
	default:
		return "a list";
	}
}

static const char *pk__expected(const struct pk__key *k)
{
	switch (k->type) {
	case PK__T_INT:
	case PK__T_SIZE:
		return "an integer";
	case PK__T_DURATION:
		return "a duration (a string like \"30s\" or an integer number of seconds)";
	case PK__T_BOOL:
		return "true or false";
	case PK__T_LIST:
		return "a list of strings, like [\"a\", \"b\"]";
	case PK__T_STRING:
		break;
	}
	switch (k->check) {
	case PK__C_BIND:
	case PK__C_ADVERTISE:
		return "a string (an address like \":8000\")";
	case PK__C_FILE:
		return "a string (a file path)";
	case PK__C_RSA:
	case PK__C_EC:
		return "a string (a PEM public key)";
	case PK__C_LEVEL:
		return "a string (debug, info, warn or error)";
	default:
		return "a string";
	}
}

/* ---- value checks ---- */

/* Family (EVP_PKEY_*) of a PEM SubjectPublicKeyInfo, or -1 if it does not parse. */
static int pk__pem_family(const char *pem)
{
	BIO *bio = BIO_new_mem_buf(pem, -1);
	if (bio == NULL)
		return -1;
	EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (pkey == NULL) {
		ERR_clear_error(); /* don't leave stale errors for the next TLS call */
		return -1;
	}
	int id = EVP_PKEY_get_base_id(pkey);
	EVP_PKEY_free(pkey);
	return id;
}

static int pk__check_pem(const char *v, int want, char *why, size_t n)
{
	int id = pk__pem_family(v);
	int ok = want == EVP_PKEY_RSA ? (id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS) : id == want;
	if (ok)
		return 0;
	const char *fam = want == EVP_PKEY_RSA ? "RSA" : "ECDSA (EC)";
	if (id < 0)
		snprintf(why, n,
		         "not a PEM %s public key (expected \"-----BEGIN PUBLIC KEY-----\" text)",
		         fam);
	else
		snprintf(why, n, "a PEM public key, but not %s", fam);
	return -EINVAL;
}

static int pk__check_file(const char *path, char *why, size_t n)
{
	struct stat st;
	/* O_NONBLOCK: a FIFO must not hang the check. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		snprintf(why, n, "cannot read %s: %s", PK__QUOTE(path), strerror(errno));
		return -EINVAL;
	}
	int rc = fstat(fd, &st);
	close(fd);
	if (rc < 0 || !S_ISREG(st.st_mode)) {
		snprintf(why, n, "%s is not a regular file", PK__QUOTE(path));
		return -EINVAL;
	}
	return 0;
}

static int pk__check_ident(const char *v, char *why, size_t n)
{
	size_t len = strlen(v);
	int ok = len > 0 && len <= PK__IDENT_MAX;
	for (const char *p = v; ok && *p != '\0'; p++)
		ok = isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == '-';
	if (ok)
		return 0;
	snprintf(why, n, "invalid name %s (1-%d letters, digits, '.', '_' or '-')", PK__QUOTE(v),
	         PK__IDENT_MAX);
	return -EINVAL;
}

/* Checks a non-empty string value or list item. 0, or -EINVAL with the reason in why. */
static int pk__check(const struct pk__key *k, const char *v, char *why, size_t n)
{
	char host[256];
	uint16_t port;

	switch (k->check) {
	case PK__C_ANY:
		return 0;
	case PK__C_BIND:
		if (pk_parse_addr(v, NULL, 0, NULL) == 0)
			return 0;
		snprintf(why, n, "invalid address %s (use host:port, :port or [v6]:port)",
		         PK__QUOTE(v));
		return -EINVAL;
	case PK__C_ADVERTISE:
		if (pk_parse_addr(v, host, sizeof(host), &port) == 0 && host[0] != '\0' &&
		    port != 0)
			return 0;
		snprintf(why, n,
		         "invalid address %s (use host:port with a host and a non-zero port)",
		         PK__QUOTE(v));
		return -EINVAL;
	case PK__C_PEER:
		if ((pk_parse_addr(v, host, sizeof(host), &port) == 0 && host[0] != '\0') ||
		    pk_parse_host(v) == 0)
			return 0;
		snprintf(why, n, "invalid peer address %s (use host, host:port or [v6]:port)",
		         PK__QUOTE(v));
		return -EINVAL;
	case PK__C_LEVEL:
		if (pk_log_level_parse(v) >= 0)
			return 0;
		snprintf(why, n, "invalid log level %s (use debug, info, warn or error)",
		         PK__QUOTE(v));
		return -EINVAL;
	case PK__C_IDENT:
		return pk__check_ident(v, why, n);
	case PK__C_FILE:
		return pk__check_file(v, why, n);
	case PK__C_RSA:
		return pk__check_pem(v, EVP_PKEY_RSA, why, n);
	case PK__C_EC:
		return pk__check_pem(v, EVP_PKEY_EC, why, n);
	}
	return 0;
}

/* ---- storing values ---- */

static void pk__list_clear(struct pk_strlist *l)
{
	for (int i = 0; i < l->count; i++)
		free(l->items[i]);
	l->count = 0;
	if (l->items != NULL)
		l->items[0] = NULL;
}

/* Checks and appends an item; takes ownership of item. */
static int pk__list_add(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                        char *item)
{
	struct pk_strlist *l = pk__field(c->cfg, k);
	char why[512];

	if (item[0] == '\0') {
		free(item);
		return pk__fail(c, src, k->name, "empty list item");
	}
	if (pk__check(k, item, why, sizeof(why)) < 0) {
		free(item);
		return pk__fail(c, src, k->name, "%s", why);
	}
	if (l->count >= PK__LIST_MAX) {
		free(item);
		return pk__fail(c, src, k->name, "too many items (at most %d)", PK__LIST_MAX);
	}
	char **items = realloc(l->items, sizeof(*items) * ((size_t)l->count + 2));
	if (items == NULL) {
		free(item);
		return pk__oom(c);
	}
	items[l->count++] = item;
	items[l->count] = NULL;
	l->items = items;
	return 0;
}

/* Checks and stores a string value; takes ownership of v. */
static int pk__store_string(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                            char *v)
{
	char **field = pk__field(c->cfg, k);
	char why[512];

	if (strlen(v) > PK__VALUE_MAX) {
		free(v);
		return pk__fail(c, src, k->name, "value longer than %d bytes", PK__VALUE_MAX);
	}
	if (v[0] == '\0') {
		free(v);
		if (k->def != NULL)
			return pk__fail(c, src, k->name, "must not be empty");
		v = NULL; /* optional: empty means unset */
	} else if (pk__check(k, v, why, sizeof(why)) < 0) {
		free(v);
		return pk__fail(c, src, k->name, "%s", why);
	} else if (k->check == PK__C_LEVEL) {
		/* "warning" is stored as "warn", so equal configs compare equal. */
		const char *canon = pk_log_level_name(pk_log_level_parse(v));
		free(v);
		if ((v = strdup(canon)) == NULL)
			return pk__oom(c);
	}
	free(*field);
	*field = v;
	c->src[k - pk__keys] = *src;
	return 0;
}

static int pk__store_int(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                         long long v)
{
	if (v < k->min || v > k->max)
		return pk__fail(c, src, k->name, "must be between %lld and %lld, got %lld", k->min,
		                k->max, v);
	if (k->type == PK__T_INT)
		*(int *)pk__field(c->cfg, k) = (int)v;
	else
		*(uint64_t *)pk__field(c->cfg, k) = (uint64_t)v;
	c->src[k - pk__keys] = *src;
	return 0;
}

static void pk__store_scalar(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                             uint64_t v)
{
	if (k->type == PK__T_BOOL)
		*(int *)pk__field(c->cfg, k) = v != 0;
	else
		*(uint64_t *)pk__field(c->cfg, k) = v;
	c->src[k - pk__keys] = *src;
}

/* Adds the comma-separated items of text (spaces around items trimmed). */
static int pk__set_list_text(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                             const char *text)
{
	if (text[0] == '\0')
		return 0; /* --log.subsystems "" is the empty list */
	for (const char *p = text;;) {
		const char *end = strchr(p, ',');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
		while (len > 0 && *p == ' ')
			p++, len--;
		while (len > 0 && p[len - 1] == ' ')
			len--;
		char *item = strndup(p, len);
		if (item == NULL)
			return pk__oom(c);
		int rc = pk__list_add(c, k, src, item);
		if (rc < 0)
			return rc;
		if (end == NULL)
			return 0;
		p = end + 1;
	}
}

/* Sets a key from flag (or default) text. */
static int pk__set_text(struct pk__ctx *c, const struct pk__key *k, const struct pk__src *src,
                        const char *text)
{
	long long v;
	uint64_t ms;
	int b, rc;

	switch (k->type) {
	case PK__T_INT:
	case PK__T_SIZE:
		rc = pk_parse_int(text, k->min, k->max, &v);
		if (rc == -ERANGE)
			return pk__fail(c, src, k->name, "must be between %lld and %lld, got %s",
			                k->min, k->max, PK__QUOTE(text));
		if (rc < 0)
			return pk__fail(c, src, k->name, "expected an integer, got %s",
			                PK__QUOTE(text));
		return pk__store_int(c, k, src, v);
	case PK__T_DURATION:
		if (pk_parse_duration(text, &ms) < 0)
			return pk__fail(c, src, k->name,
			                "invalid duration %s (use e.g. 500ms, 30s, 5m, 1h)",
			                PK__QUOTE(text));
		pk__store_scalar(c, k, src, ms);
		return 0;
	case PK__T_BOOL:
		if (pk_parse_bool(text, &b) < 0)
			return pk__fail(c, src, k->name, "expected true or false, got %s",
			                PK__QUOTE(text));
		pk__store_scalar(c, k, src, (uint64_t)b);
		return 0;
	case PK__T_STRING: {
		char *dup = strdup(text);
		return dup != NULL ? pk__store_string(c, k, src, dup) : pk__oom(c);
	}
	case PK__T_LIST:
		c->src[k - pk__keys] = *src;
		return pk__set_list_text(c, k, src, text);
	}
	return -EINVAL;
}

/* ---- ${VAR} expansion ---- */

struct pk__buf {
	char *p;
	size_t len, cap;
};

static int pk__buf_add(struct pk__buf *b, const char *s, size_t n)
{
	if (b->len + n > PK__VALUE_MAX)
		return -E2BIG;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->p, cap);
		if (p == NULL)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

/* Expands one "${...}" at *pp (which points at '$'), advancing past '}'. */
static int pk__expand_var(const char **pp, struct pk__buf *b, char *why, size_t n)
{
	const char *p = *pp + 2, *name = p;

	while (isalnum((unsigned char)*p) || *p == '_')
		p++;
	size_t nlen = (size_t)(p - name);
	const char *close = strchr(p, '}');
	if (close == NULL) {
		snprintf(why, n, "unterminated \"${\" (write $$ for a literal $)");
		return -EINVAL;
	}
	if (nlen == 0 || isdigit((unsigned char)name[0]) || (*p != '}' && *p != ':')) {
		snprintf(why, n, "invalid variable name in %.*s", (int)(close - *pp + 1), *pp);
		return -EINVAL;
	}
	char var[128];
	if (nlen >= sizeof(var)) {
		snprintf(why, n, "variable name too long");
		return -EINVAL;
	}
	memcpy(var, name, nlen);
	var[nlen] = '\0';
	const char *val = getenv(var);
	int rc;
	if (val != NULL)
		rc = pk__buf_add(b, val, strlen(val));
	else if (*p == ':')
		rc = pk__buf_add(b, p + 1, (size_t)(close - p - 1));
	else {
		snprintf(why, n,
		         "environment variable %s is not set (use ${%s:default} to give a default)",
		         var, var);
		return -EINVAL;
	}
	*pp = close + 1;
	return rc;
}

/* Expands ${VAR}, ${VAR:default} and $$ in s. A '$' followed by anything else is kept.
 * Returns 0 and a malloc'd *out, or -EINVAL with why, or -ENOMEM. */
static int pk__expand(const char *s, char **out, char *why, size_t n)
{
	struct pk__buf b = {0};
	int rc = pk__buf_add(&b, "", 0);

	while (rc == 0 && *s != '\0') {
		const char *dollar = strchr(s, '$');
		size_t lit = dollar != NULL ? (size_t)(dollar - s) : strlen(s);
		rc = pk__buf_add(&b, s, lit);
		s += lit;
		if (rc < 0 || *s == '\0')
			break;
		if (s[1] == '$') {
			rc = pk__buf_add(&b, "$", 1);
			s += 2;
		} else if (s[1] == '{') {
			rc = pk__expand_var(&s, &b, why, n);
		} else {
			rc = pk__buf_add(&b, "$", 1);
			s++;
		}
	}
	if (rc == -E2BIG) {
		snprintf(why, n, "value longer than %d bytes after expansion", PK__VALUE_MAX);
		rc = -EINVAL;
	}
	if (rc < 0) {
		free(b.p);
		return rc;
	}
	*out = b.p;
	return 0;
}

/* ---- the file ---- */

static struct pk__src pk__setting_src(const struct pk__ctx *c, const config_setting_t *s)
{
	const char *file = config_setting_source_file(s);
	return (struct pk__src){.file = file != NULL ? file : c->origin,
	                        .line = config_setting_source_line(s)};
}

/* A string from the file, expanded when enabled. */
static int pk__setting_string(struct pk__ctx *c, const struct pk__key *k, const config_setting_t *s,
                              char **out)
{
	const char *raw = config_setting_get_string(s);
	struct pk__src src = pk__setting_src(c, s);
	char why[512];

	if (!c->expand) {
		*out = strdup(raw);
		return *out != NULL ? 0 : pk__oom(c);
	}
	int rc = pk__expand(raw, out, why, sizeof(why));
	if (rc == -ENOMEM)
		return pk__oom(c);
	if (rc < 0)
		return pk__fail(c, &src, k->name, "%s", why);
	return 0;
}

static int pk__set_list_setting(struct pk__ctx *c, const struct pk__key *k,
                                const config_setting_t *s)
{
	struct pk__src src = pk__setting_src(c, s);
	int n = config_setting_length(s);

	pk__list_clear(pk__field(c->cfg, k));
	c->src[k - pk__keys] = src;
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		struct pk__src esrc = pk__setting_src(c, e);
		char *item;
		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			return pk__fail(c, &esrc, k->name, "item %d: expected a string, got %s",
			                i + 1, pk__type_name(e));
		int rc = pk__setting_string(c, k, e, &item);
		if (rc == 0)
			rc = pk__list_add(c, k, &esrc, item);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int pk__set_duration_setting(struct pk__ctx *c, const struct pk__key *k,
                                    const config_setting_t *s)
{
	struct pk__src src = pk__setting_src(c, s);
	long long secs = config_setting_get_int64(s);

	if (secs < 0 || (unsigned long long)secs > PK_DURATION_MAX_MS / 1000)
		return pk__fail(c, &src, k->name,
		                "invalid duration %lld (seconds, 0 to %llu; or a string like "
		                "\"30s\")",
		                secs, (unsigned long long)(PK_DURATION_MAX_MS / 1000));
	pk__store_scalar(c, k, &src, (uint64_t)secs * 1000);
	return 0;
}

/* Sets a key from a file setting. */
static int pk__set_setting(struct pk__ctx *c, const struct pk__key *k, const config_setting_t *s)
{
	struct pk__src src = pk__setting_src(c, s);
	int t = config_setting_type(s);
	int is_int = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
	char *v;
	int rc;

	switch (k->type) {
	case PK__T_INT:
	case PK__T_SIZE:
		if (!is_int)
			break;
		return pk__store_int(c, k, &src, config_setting_get_int64(s));
	case PK__T_DURATION:
		if (is_int)
			return pk__set_duration_setting(c, k, s);
		if (t != CONFIG_TYPE_STRING)
			break;
		if ((rc = pk__setting_string(c, k, s, &v)) < 0)
			return rc;
		rc = pk__set_text(c, k, &src, v);
		free(v);
		return rc;
	case PK__T_BOOL:
		if (t != CONFIG_TYPE_BOOL)
			break;
		pk__store_scalar(c, k, &src, (uint64_t)config_setting_get_bool(s));
		return 0;
	case PK__T_STRING:
		if (t != CONFIG_TYPE_STRING)
			break;
		if ((rc = pk__setting_string(c, k, s, &v)) < 0)
			return rc;
		return pk__store_string(c, k, &src, v);
	case PK__T_LIST:
		if (t != CONFIG_TYPE_LIST && t != CONFIG_TYPE_ARRAY)
			break;
		return pk__set_list_setting(c, k, s);
	}
	return pk__fail(c, &src, k->name, "expected %s, got %s", pk__expected(k), pk__type_name(s));
}

/* Applies every setting of a group, recursing into the table's groups. */
static int pk__walk(struct pk__ctx *c, const config_setting_t *group, const char *prefix)
{
	int n = config_setting_length(group);

	for (int i = 0; i < n; i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		struct pk__src src = pk__setting_src(c, s);
		char path[PK__NAME_MAX + 2], hint[PK__NAME_MAX];
		int rc;

		snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "",
		         config_setting_name(s));
		int k = strlen(path) <= PK__NAME_MAX ? pk__find_key(path) : -1;
		if (k >= 0) {
			rc = pk__set_setting(c, &pk__keys[k], s);
		} else if (strlen(path) <= PK__NAME_MAX && pk__is_section(path)) {
			if (!config_setting_is_group(s))
				return pk__fail(c, &src, path, "expected a group { ... }, got %s",
				                pk__type_name(s));
			rc = pk__walk(c, s, path);
		} else {
			pk__suggest(path, 0, hint, sizeof(hint));
			if (hint[0] != '\0')
				return pk__fail(c, &src, path, "unknown key (did you mean %s?)",
				                hint);
			return pk__fail(c, &src, path, "unknown key");
		}
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* libconfig reports a duplicate setting with its line only. Recovers the dotted name of
 * the setting named on that line by following group nesting in the text (comments and
 * strings skipped). Leaves out empty when it cannot tell. */
static void pk__dup_name(const char *text, int line, char *out, size_t size)
{
	const char *stack[16], *ident = NULL, *named = NULL;
	size_t stack_len[16], ident_len = 0, named_len = 0;
	int depth = 0, cur = 1;

	out[0] = '\0';
	for (const char *p = text; *p != '\0' && cur <= line;) {
		if (*p == '\n') {
			cur++, p++;
		} else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
			p += strcspn(p, "\n");
		} else if (p[0] == '/' && p[1] == '*') {
			const char *end = strstr(p + 2, "*/");
			end = end != NULL ? end + 2 : p + strlen(p);
			for (; p < end; p++)
				cur += *p == '\n';
		} else if (*p == '"') {
			for (p++; *p != '\0' && *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				cur += *p == '\n';
			}
			p += *p == '"';
		} else if (isalpha((unsigned char)*p) || *p == '*') {
			ident = p;
			while (isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '*')
				p++;
			ident_len = (size_t)(p - ident);
		} else if ((*p == '=' || *p == ':') && ident != NULL) {
			if (cur == line) {
				for (int i = 0; i < depth && i < 16; i++)
					if (stack[i] != NULL)
						snprintf(out + strlen(out), size - strlen(out),
						         "%.*s.", (int)stack_len[i], stack[i]);
				snprintf(out + strlen(out), size - strlen(out), "%.*s",
				         (int)ident_len, ident);
				return;
			}
			named = ident, named_len = ident_len, ident = NULL, p++;
		} else if (*p == '{') {
			if (depth < 16)
				stack[depth] = named, stack_len[depth] = named_len;
			depth++, named = NULL, ident = NULL, p++;
		} else if (*p == '}') {
			depth -= depth > 0, ident = NULL, p++;
		} else {
			if (!isspace((unsigned char)*p))
				ident = NULL;
			p++;
		}
	}
}

static int pk__syntax_error(struct pk__ctx *c, const config_t *lc, const char *text)
{
	const char *file = config_error_file(lc) != NULL ? config_error_file(lc) : c->origin;
	const char *msg = config_error_text(lc) != NULL ? config_error_text(lc) : "error";
	int line = config_error_line(lc);
	char name[PK__NAME_MAX];

	if (strcmp(msg, "duplicate setting name") == 0) {
		name[0] = '\0';
		if (config_error_file(lc) == NULL)
			pk__dup_name(text, line, name, sizeof(name));
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s:%d: %s%sset more than once", file, line,
		         name, name[0] != '\0' ? ": " : "");
	} else if (strcmp(msg, "syntax error") == 0) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s:%d: syntax error", file, line);
	} else {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s:%d: syntax error: %s", file, line, msg);
	}
	return -EINVAL;
}

/* Parses a document and applies its settings. */
static int pk__apply_text(struct pk__ctx *c, const char *text)
{
	config_t lc;
	int rc;

	config_init(&lc);
	if (config_read_string(&lc, text) != CONFIG_TRUE)
		rc = pk__syntax_error(c, &lc, text);
	else
		rc = pk__walk(c, config_root_setting(&lc), "");
	config_destroy(&lc);
	return rc;
}

/* Reads a whole config file, bounded. */
static int pk__read_file(struct pk__ctx *c, const char *path, char **out)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s: cannot read: %s", path, strerror(errno));
		return -EINVAL;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > PK__FILE_MAX) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s: not a regular file of at most %d bytes",
		         path, PK__FILE_MAX);
		close(fd);
		return -EINVAL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	size_t len = 0;
	ssize_t n = 1;
	if (buf == NULL) {
		close(fd);
		return pk__oom(c);
	}
	while (len < (size_t)st.st_size && (n = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	int saved = errno;
	close(fd);
	if (n < 0) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s: cannot read: %s", path, strerror(saved));
		free(buf);
		return -EINVAL;
	}
	buf[len] = '\0';
	if (memchr(buf, '\0', len) != NULL) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s: contains a NUL byte (not a text file)",
		         path);
		free(buf);
		return -EINVAL;
	}
	*out = buf;
	return 0;
}

/* ---- validation across keys ---- */

static int pk__is_set(const struct pk_config *cfg, const struct pk__key *k)
{
	return k->type != PK__T_STRING || *(char **)pk__field(cfg, k) != NULL;
}

static int pk__validate(struct pk__ctx *c)
{
	char flag[PK__NAME_MAX];

	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		if (k->requires == NULL || !pk__is_set(c->cfg, k))
			continue;
		int r = pk__find_key(k->requires);
		if (r >= 0 && pk__is_set(c->cfg, &pk__keys[r]))
			continue;
		if (c->src[i].flag)
			return pk__fail(c, &c->src[i], k->name, "set without --%s",
			                pk__flagname(k->requires, flag, sizeof(flag)));
		return pk__fail(c, &c->src[i], k->name, "set without %s", k->requires);
	}
	return 0;
}

/* ---- public: init, free ---- */

void pk_config_free(struct pk_config *cfg)
{
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		if (k->type == PK__T_STRING) {
			free(*(char **)pk__field(cfg, k));
		} else if (k->type == PK__T_LIST) {
			struct pk_strlist *l = pk__field(cfg, k);
			pk__list_clear(l);
			free(l->items);
		}
	}
	free(cfg->config_file);
	memset(cfg, 0, sizeof(*cfg));
}

int pk_config_init(struct pk_config *cfg)
{
	char err[PK_CONFIG_ERR_MAX];
	struct pk__ctx c = {.cfg = cfg, .err = err};
	static const struct pk__src dflt = {0};

	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		int rc = 0;
		if (k->type == PK__T_LIST) {
			struct pk_strlist *l = pk__field(cfg, k);
			if ((l->items = calloc(1, sizeof(*l->items))) == NULL)
				rc = -ENOMEM;
		}
		if (rc == 0 && k->def != NULL)
			rc = pk__set_text(&c, k, &dflt, k->def);
		if (rc < 0) {
			pk_config_free(cfg);
			return -ENOMEM; /* defaults are valid: only allocation can fail */
		}
	}
	return 0;
}

/* ---- public: loading ---- */

int pk_config_load_string_ex(struct pk_config *cfg, const char *text, const char *origin,
                             unsigned flags, char err[PK_CONFIG_ERR_MAX])
{
	struct pk__ctx c = {.cfg = cfg,
	                    .err = err,
	                    .expand = (flags & PK_CONFIG_EXPAND_ENV) != 0,
	                    .origin = origin != NULL ? origin : "<string>"};

	err[0] = '\0';
	int rc = pk__apply_text(&c, text);
	return rc < 0 ? rc : pk__validate(&c);
}

int pk_config_load_string(struct pk_config *cfg, const char *text, const char *origin,
                          char err[PK_CONFIG_ERR_MAX])
{
	return pk_config_load_string_ex(cfg, text, origin, 0, err);
}

struct pk__flag {
	int key;
	const char *value;
};

/* Offers a flag outside the table to the caller. Returns how many extra argv entries it
 * used (0 or 1), or an error. */
static int pk__extra(struct pk__ctx *c, const char *dashes, const char *name, const char *eq,
                     const char *next, pk_config_extra_flag_fn extra, void *ud)
{
	char hint[PK__NAME_MAX];
	int r = extra != NULL ? extra(ud, name, eq != NULL ? eq : next) : 0;

	if (r == 1)
		return eq == NULL && next != NULL;
	if (r == 2 && eq == NULL)
		return 0;
	if (r == 2) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s%s: takes no value", dashes, name);
		return -EINVAL;
	}
	if (r < 0) {
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s%s: invalid value", dashes, name);
		return -EINVAL;
	}
	pk__suggest(name, 1, hint, sizeof(hint));
	if (hint[0] != '\0')
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s%.*s: unknown flag (did you mean --%s?)",
		         dashes, PK__NAME_MAX, name, hint);
	else
		snprintf(c->err, PK_CONFIG_ERR_MAX, "%s%.*s: unknown flag", dashes, PK__NAME_MAX,
		         name);
	return -EINVAL;
}

/* Scans argv: records table flags in order, the config path, and hands the rest to
 * extra. Returns 0 or an error. */
static int pk__scan_args(struct pk__ctx *c, int argc, char **argv, pk_config_extra_flag_fn extra,
                         void *ud, struct pk__flag *flags, int *nflags, const char **config)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--") == 0 && next == NULL)
			return 0;
		if (a[0] != '-' || a[1] == '\0' || strcmp(a, "--") == 0) {
			const char *bad = strcmp(a, "--") == 0 ? next : a;
			snprintf(c->err, PK_CONFIG_ERR_MAX,
			         "unexpected argument %s (pikod takes no positional arguments)",
			         PK__QUOTE(bad));
			return -EINVAL;
		}
		const char *dashes = a[1] == '-' ? "--" : "-";
		const char *start = a + strlen(dashes), *eq = strchr(start, '=');
		char name[PK__NAME_MAX + 1];
		snprintf(name, sizeof(name), "%.*s",
		         (int)(eq != NULL ? (size_t)(eq - start) : strlen(start)), start);
		eq = eq != NULL ? eq + 1 : NULL;

		int is_config = strcmp(name, dashes[1] ? "config" : "c") == 0;
		int k = dashes[1] && !is_config ? pk__find_flag(name) : -1;
		if (is_config || (k >= 0 && pk__keys[k].type != PK__T_BOOL)) {
			const char *v = eq != NULL ? eq : next;
			if (v == NULL) {
				snprintf(c->err, PK_CONFIG_ERR_MAX, "%s%s: missing value", dashes,
				         name);
				return -EINVAL;
			}
			i += eq == NULL;
			if (is_config)
				*config = v;
			else
				flags[(*nflags)++] = (struct pk__flag){k, v};
		} else if (k >= 0) {
			/* Booleans: bare, =value, or a following true/false word. */
			int b;
			const char *v = eq;
			if (v == NULL && next != NULL && pk_parse_bool(next, &b) == 0)
				v = next, i++;
			flags[(*nflags)++] = (struct pk__flag){k, v != NULL ? v : "true"};
		} else {
			int used = pk__extra(c, dashes, name, eq, next, extra, ud);
			if (used < 0)
				return used;
			i += used;
		}
	}
	return 0;
}

static int pk__apply_file(struct pk__ctx *c, const char *path)
{
	char *text = NULL;
	int rc = pk__read_file(c, path, &text);
	if (rc < 0)
		return rc;
	c->origin = path;
	c->expand = 1;
	rc = pk__apply_text(c, text);
	free(text);
	return rc;
}

int pk_config_load(struct pk_config *cfg, int argc, char **argv, pk_config_extra_flag_fn extra,
                   void *ud, char err[PK_CONFIG_ERR_MAX])
{
	struct pk__ctx c = {.cfg = cfg, .err = err};
	const char *config = NULL;
	int nflags = 0, rc;

	err[0] = '\0';
	struct pk__flag *flags = calloc((size_t)(argc > 0 ? argc : 1), sizeof(*flags));
	if (flags == NULL)
		return pk__oom(&c);
	rc = pk__scan_args(&c, argc, argv, extra, ud, flags, &nflags, &config);
	if (rc == 0 && config != NULL) {
		free(cfg->config_file);
		cfg->config_file = strdup(config);
		rc = cfg->config_file != NULL ? pk__apply_file(&c, config) : pk__oom(&c);
	}
	for (int i = 0; rc == 0 && i < nflags; i++) {
		const struct pk__key *k = &pk__keys[flags[i].key];
		const struct pk__src src = {.flag = 1};
		/* The first list flag replaces the file's list; more of them append. */
		if (k->type == PK__T_LIST && !c.flag_seen[flags[i].key])
			pk__list_clear(pk__field(cfg, k));
		c.flag_seen[flags[i].key] = 1;
		rc = pk__set_text(&c, k, &src, flags[i].value);
	}
	free(flags);
	return rc < 0 ? rc : pk__validate(&c);
}

/* ---- public: writing, comparing, usage ---- */

static void pk__write_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", out); /* PEM keys stay readable */
		else if (ch == '\t')
			fputs("\\t", out);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(out, "\\x%02x", ch); /* libconfig reads \xNN back */
		else
			fputc(ch, out);
	}
	fputc('"', out);
}

static void pk__write_value(FILE *out, const struct pk_config *cfg, const struct pk__key *k)
{
	const void *f = pk__field(cfg, k);
	char buf[64];

	switch (k->type) {
	case PK__T_INT:
		fprintf(out, "%d", *(const int *)f);
		break;
	case PK__T_SIZE:
		fprintf(out, "%llu%s", (unsigned long long)*(const uint64_t *)f,
		        *(const uint64_t *)f > INT32_MAX ? "L" : "");
		break;
	case PK__T_DURATION:
		pk_format_duration(*(const uint64_t *)f, buf, sizeof(buf));
		fprintf(out, "\"%s\"", buf);
		break;
	case PK__T_BOOL:
		fputs(*(const int *)f ? "true" : "false", out);
		break;
	case PK__T_STRING:
		pk__write_string(out, *(char *const *)f);
		break;
	case PK__T_LIST: {
		const struct pk_strlist *l = f;
		fputs("[", out);
		for (int i = 0; i < l->count; i++) {
			fputs(i ? ", " : " ", out);
			pk__write_string(out, l->items[i]);
		}
		fputs(l->count ? " ]" : "]", out);
		break;
	}
	}
}

/* Length of the group part of a key ("proxy.http" of "proxy.http.idle_timeout"). */
static size_t pk__group_len(const char *name)
{
	const char *dot = strrchr(name, '.');
	return dot != NULL ? (size_t)(dot - name) : 0;
}

/* Number of '.'-separated components in s[0..len). */
static int pk__depth(const char *s, size_t len)
{
	int d = len > 0;
	for (size_t i = 0; i < len; i++)
		d += s[i] == '.';
	return d;
}

int pk_config_write(const struct pk_config *cfg, FILE *out)
{
	const char *cur = "";
	size_t cur_len = 0;

	fputs("# pikod effective configuration (generated; contains secrets)\n", out);
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		if (!pk__is_set(cfg, k))
			continue;
		size_t glen = pk__group_len(k->name);
		/* Common whole components between the open group and this key's group. */
		size_t common = 0;
		for (size_t j = 0; j <= cur_len && j <= glen; j++) {
			int end_a = j == cur_len || cur[j] == '.';
			int end_b = j == glen || k->name[j] == '.';
			if (end_a && end_b)
				common = j;
			if (j == cur_len || j == glen || cur[j] != k->name[j])
				break;
		}
		int depth = pk__depth(cur, cur_len), keep = pk__depth(cur, common);
		for (int d = depth; d > keep; d--)
			fprintf(out, "%*s};\n", (d - 1) * 2, "");
		for (size_t j = common + (common > 0); j < glen;) {
			size_t e = j;
			while (e < glen && k->name[e] != '.')
				e++;
			int indent = j > 0 ? pk__depth(k->name, j - 1) * 2 : 0;
			fprintf(out, "%*s%.*s = {\n", indent, "", (int)(e - j), k->name + j);
			j = e + 1;
		}
		cur = k->name;
		cur_len = glen;
		fprintf(out, "%*s%s = ", pk__depth(cur, cur_len) * 2, "",
		        k->name + glen + (glen > 0));
		pk__write_value(out, cfg, k);
		fputs(";\n", out);
	}
	for (int d = pk__depth(cur, cur_len); d > 0; d--)
		fprintf(out, "%*s};\n", (d - 1) * 2, "");
	return ferror(out) ? -EIO : 0;
}

static int pk__str_eq(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int pk_config_equal(const struct pk_config *a, const struct pk_config *b)
{
	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		const void *fa = pk__field(a, k), *fb = pk__field(b, k);
		switch (k->type) {
		case PK__T_INT:
		case PK__T_BOOL:
			if (*(const int *)fa != *(const int *)fb)
				return 0;
			break;
		case PK__T_SIZE:
		case PK__T_DURATION:
			if (*(const uint64_t *)fa != *(const uint64_t *)fb)
				return 0;
			break;
		case PK__T_STRING:
			if (!pk__str_eq(*(char *const *)fa, *(char *const *)fb))
				return 0;
			break;
		case PK__T_LIST: {
			const struct pk_strlist *la = fa, *lb = fb;
			if (la->count != lb->count)
				return 0;
			for (int j = 0; j < la->count; j++)
				if (strcmp(la->items[j], lb->items[j]) != 0)
					return 0;
			break;
		}
		}
	}
	return 1;
}

static const struct {
	const char *section, *title;
} pk__sections[] = {
    {"", "General"},
    {"proxy", "Proxy port: HTTP and TCP traffic from clients"},
    {"upstream", "Upstream port: connections from agents"},
    {"admin", "Admin port: health, readiness, metrics, status"},
    {"cluster", "Cluster port: node-to-node replication"},
    {"log", "Logging"},
};

static void pk__usage_line(FILE *out, const char *opt, const char *help, const char *def)
{
	int w = fprintf(out, "  %s", opt);
	if (w > 44)
		fprintf(out, "\n%46s", "");
	else
		fprintf(out, "%*s", 46 - w, "");
	fputs(help, out);
	if (def != NULL)
		fprintf(out, " (default: %s)", def);
	fputc('\n', out);
}

void pk_config_usage(FILE *out)
{
	char section[PK__NAME_MAX] = "-", flag[PK__NAME_MAX], opt[2 * PK__NAME_MAX];

	for (size_t i = 0; i < PK__NKEYS; i++) {
		const struct pk__key *k = &pk__keys[i];
		const char *dot = strchr(k->name, '.');
		size_t slen = dot != NULL ? (size_t)(dot - k->name) : 0;
		if (strlen(section) != slen || strncmp(section, k->name, slen) != 0) {
			snprintf(section, sizeof(section), "%.*s", (int)slen, k->name);
			const char *title = section;
			for (size_t j = 0; j < sizeof(pk__sections) / sizeof(pk__sections[0]); j++)
				if (strcmp(pk__sections[j].section, section) == 0)
					title = pk__sections[j].title;
			fprintf(out, "%s%s:\n", i > 0 ? "\n" : "", title);
			if (slen == 0)
				pk__usage_line(out, "-c, --config FILE",
				               "libconfig file to read (flags override it)", NULL);
		}
		snprintf(opt, sizeof(opt), "--%s %s", pk__flagname(k->name, flag, sizeof(flag)),
		         k->meta);
		pk__usage_line(out, opt, k->help, k->def);
	}
}

const char *pk_config_unsupported(const struct pk_config *cfg)
{
	if (cfg->proxy.tls.cert)
		return "proxy.tls.cert";
	if (cfg->upstream.tls.cert)
		return "upstream.tls.cert";
	if (cfg->admin.tls.cert)
		return "admin.tls.cert";
	if (cfg->cluster.tls.cert)
		return "cluster.tls.cert";
	return NULL;
}
