/* pikoctl: the operator's CLI over the admin API (docs/observability.md).
 *
 *   pikoctl endpoints list | upstreams list | cluster nodes | cluster node ID | status
 *   pikoctl reload
 *   pikoctl token create [--endpoints a,b] [--expires 24h] --hmac-secret-file F | ...
 *
 * Output is an aligned table, or with -o json the admin API's JSON, indented. Exit codes:
 * 0 done, 1 the server or the network said no (the message names the cause), 2 usage. */
#include "cli/pikoctl_http.h"
#include "proto/http1.h"
#include "common/parse.h"
#include "proto/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PK__DEFAULT_URL       "http://127.0.0.1:8002"
#define PK__DEFAULT_TIMEOUT   10000
#define PK__RELOAD_TIMEOUT    100000 /* the server waits up to 90 s for the supervisor */
#define PK__MAX_KEY_FILE      (64 * 1024)
#define PK__MAX_ARGS          8
#define PK__EXIT_FAIL         1
#define PK__EXIT_USAGE        2
#define PK__MAX_TABLE_COLUMNS 8

struct pk__opts {
	const char *server_url, *token, *token_file, *root_cas, *forward, *timeout, *output;
	const char *endpoints, *expires, *hmac_file, *rsa_file, *ecdsa_file, *audience, *issuer;
	const char *args[PK__MAX_ARGS];
	int nargs;
	int json;
	uint64_t timeout_ms;
	int timeout_set;
	char *token_buf; /* token read from --token-file */
	struct pk_ctl_url url;
};

static void pk__usage(FILE *out)
{
	fprintf(
	    out,
	    "Usage: pikoctl COMMAND [options]\n"
	    "\n"
	    "Commands:\n"
	    "  endpoints list          endpoints with their upstream counts\n"
	    "  upstreams list          every upstream tunnel on the node\n"
	    "  cluster nodes           the cluster's nodes\n"
	    "  cluster node ID         one node (ID or \"local\") with its endpoints\n"
	    "  status                  version, uptime, generation, workers, reloads, traffic\n"
	    "  reload                  reload pikod's configuration and wait for the result\n"
	    "  token create            mint a JWT for agents (see the token options)\n"
	    "\n"
	    "Options:\n"
	    "  --server.url URL        admin API (default " PK__DEFAULT_URL ")\n"
	    "  --token TOKEN           bearer token for the admin API\n"
	    "  --token-file FILE       read the bearer token from FILE\n"
	    "  --tls.root-cas FILE     CA bundle for https (not supported by this build)\n"
	    "  --forward NODE          ask node NODE (answered through the node at --server.url)\n"
	    "  --timeout DURATION      per-request deadline (default 10s; reload: 100s)\n"
	    "  -o, --output FORMAT     table (default) or json\n"
	    "  -h, --help              this text\n"
	    "  --version               print the version\n"
	    "\n"
	    "Token options (token create):\n"
	    "  --endpoints A,B         endpoints the token may register (default: all)\n"
	    "  --expires DURATION      lifetime, e.g. 24h (default 24h; 0: never expires)\n"
	    "  --hmac-secret-file F    sign with HS256 using the secret in F (one trailing\n"
	    "                          newline is ignored)\n"
	    "  --rsa-private-key-file F    sign with RS256 (PEM private key)\n"
	    "  --ecdsa-private-key-file F  sign with ES256/384/512 (PEM private key)\n"
	    "  --audience AUD          \"aud\" claim\n"
	    "  --issuer ISS            \"iss\" claim\n");
}

static int pk__usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int pk__usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "pikoctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nRun 'pikoctl --help' for usage.\n");
	return PK__EXIT_USAGE;
}

static int pk__fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int pk__fail(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "pikoctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return PK__EXIT_FAIL;
}

/* ---- arguments ---- */

struct pk__flag {
	const char *name;
	size_t off;
};

#define PK__F(n, field)                                                                            \
	{                                                                                          \
		n, offsetof(struct pk__opts, field)                                                \
	}
static const struct pk__flag pk__flags[] = {
    PK__F("server.url", server_url),
    PK__F("token", token),
    PK__F("token-file", token_file),
    PK__F("tls.root-cas", root_cas),
    PK__F("forward", forward),
    PK__F("timeout", timeout),
    PK__F("output", output),
    PK__F("o", output),
    PK__F("endpoints", endpoints),
    PK__F("expires", expires),
    PK__F("hmac-secret-file", hmac_file),
    PK__F("rsa-private-key-file", rsa_file),
    PK__F("ecdsa-private-key-file", ecdsa_file),
    PK__F("audience", audience),
    PK__F("issuer", issuer),
};

/* Flags may come before, between or after the command words. Returns 0, -1 for
 * --help/--version handled (exit 0), or an exit code for a usage error. */
static int pk__parse_args(int argc, char **argv, struct pk__opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || a[1] == '\0') {
			if (o->nargs == PK__MAX_ARGS)
				return pk__usage_error("too many arguments");
			o->args[o->nargs++] = a;
			continue;
		}
		const char *name = a + (a[1] == '-' ? 2 : 1);
		if (strcmp(name, "help") == 0 || strcmp(name, "h") == 0) {
			pk__usage(stdout);
			return -1;
		}
		if (strcmp(name, "version") == 0) {
			printf("pikoctl %s\n", PK_VERSION);
			return -1;
		}
		const char *eq = strchr(name, '=');
		size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
		const struct pk__flag *f = NULL;
		for (size_t k = 0; k < sizeof(pk__flags) / sizeof(pk__flags[0]); k++)
			if (strlen(pk__flags[k].name) == nlen &&
			    strncmp(pk__flags[k].name, name, nlen) == 0)
				f = &pk__flags[k];
		if (f == NULL)
			return pk__usage_error("unknown option %s", a);
		const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
		if (val == NULL)
			return pk__usage_error("%s needs a value", a);
		*(const char **)((char *)o + f->off) = val;
	}
	return 0;
}

static char *pk__read_file(const char *path, size_t max, const char *what)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "pikoctl: cannot read %s %s: %s\n", what, path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(max + 1);
	size_t len = 0;
	while (buf && len < max) {
		ssize_t n = read(fd, buf + len, max - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0) {
				fprintf(stderr, "pikoctl: cannot read %s %s: %s\n", what, path,
				        strerror(errno));
				free(buf);
				buf = NULL;
			}
			break;
		}
		len += (size_t)n;
	}
	char extra;
	if (buf && len == max && read(fd, &extra, 1) == 1) {
		fprintf(stderr, "pikoctl: %s %s is larger than %zu bytes\n", what, path, max);
		free(buf);
		buf = NULL;
	}
	close(fd);
	if (buf)
		buf[len] = '\0';
	if (buf && strlen(buf) != len) {
		fprintf(stderr, "pikoctl: %s %s contains a NUL byte\n", what, path);
		free(buf);
		buf = NULL;
	}
	return buf;
}

/* Endpoint and node ids: [A-Za-z0-9._-]{1,128}. */
static int pk__valid_id(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128)
		return 0;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static void pk__chomp(char *s)
{
	size_t n = strlen(s);
	if (n > 0 && s[n - 1] == '\n')
		s[--n] = '\0';
	if (n > 0 && s[n - 1] == '\r')
		s[--n] = '\0';
}

/* Validates the connection options. Returns 0 or an exit code. */
static int pk__prepare_client(struct pk__opts *o, uint64_t default_timeout)
{
	char err[PK_CTL_ERR_MAX];

	if (o->root_cas)
		return pk__usage_error("--tls.root-cas: https to the admin API is not supported "
		                       "by this pikoctl (use an http:// --server.url)");
	if (pk_ctl_url_parse(o->server_url ? o->server_url : PK__DEFAULT_URL, &o->url, err) < 0)
		return pk__usage_error("--server.url %s", err);
	o->timeout_ms = default_timeout;
	if (o->timeout && (pk_parse_duration(o->timeout, &o->timeout_ms) < 0 || o->timeout_ms == 0))
		return pk__usage_error("--timeout: invalid duration \"%s\" (use e.g. 500ms, 30s)",
		                       o->timeout);
	if (o->token && o->token_file)
		return pk__usage_error("--token and --token-file are exclusive");
	if (o->token_file) {
		o->token_buf = pk__read_file(o->token_file, PK_JWT_MAX_TOKEN + 2, "token file");
		if (o->token_buf == NULL)
			return PK__EXIT_FAIL;
		pk__chomp(o->token_buf);
		o->token = o->token_buf;
	}
	for (const char *p = o->token; p && *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return pk__usage_error(
			    "the token contains whitespace or control characters");
	if (o->forward && !pk__valid_id(o->forward))
		return pk__usage_error("--forward: invalid node id \"%s\"", o->forward);
	return 0;
}

/* ---- talking to the admin API ---- */

/* The "error" member of a JSON error body, or NULL. */
static const char *pk__body_error(json_t *body)
{
	json_t *e = json_is_object(body) ? json_object_get(body, "error") : NULL;
	return json_is_string(e) ? json_string_value(e) : NULL;
}

/* Calls the admin API. Returns 0 with *status and *body (parsed JSON, NULL when the body
 * is not JSON; the caller decrefs it), or PK__EXIT_FAIL after printing the cause. */
static int pk__call(struct pk__opts *o, const char *method, const char *path, unsigned *status,
                    json_t **body)
{
	struct pk_ctl_response r;
	char err[PK_CTL_ERR_MAX], full[1024];

	snprintf(full, sizeof(full), "%s%s%s", path, o->forward ? "?forward=" : "",
	         o->forward ? o->forward : "");
	if (pk_ctl_http_request(&o->url, method, full, o->token, o->timeout_ms, &r, err) < 0)
		return pk__fail("%s (admin API at %s)", err,
		                o->server_url ? o->server_url : PK__DEFAULT_URL);
	*status = r.status;
	*body = r.body_len ? json_loadb(r.body, r.body_len, 0, NULL) : NULL;
	pk_ctl_response_free(&r);
	return 0;
}

/* Reports a non-2xx answer. Always returns PK__EXIT_FAIL. */
static int pk__http_error(unsigned status, json_t *body)
{
	const char *msg = pk__body_error(body);
	const char *hint = "";
	if (status == 401)
		hint = msg && strcmp(msg, "missing authorization") == 0
		           ? " (the admin API needs a token: use --token or --token-file)"
		           : " (check the token)";
	pk__fail("the admin API answered %u %s: %s%s", status, pk_http1_reason(status),
	         msg ? msg : "no error message", hint);
	return PK__EXIT_FAIL;
}

/* GET path and expect 200 with a JSON body of the given type. 0 or an exit code. */
static int pk__get(struct pk__opts *o, const char *path, json_type type, json_t **out)
{
	unsigned status;
	json_t *body;
	int rc = pk__call(o, "GET", path, &status, &body);
	if (rc)
		return rc;
	if (status != 200) {
		rc = pk__http_error(status, body);
		json_decref(body);
		return rc;
	}
	if (body == NULL || json_typeof(body) != type) {
		json_decref(body);
		return pk__fail("unexpected answer from %s (not the JSON the admin API sends)",
		                path);
	}
	*out = body;
	return 0;
}

static int pk__print_json(json_t *v)
{
	if (json_dumpf(v, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
		return pk__fail("cannot write the output");
	putchar('\n');
	return 0;
}

/* ---- tables ---- */

struct pk__table {
	int ncols;
	char **cells; /* row-major, header first */
	size_t nrows, cap;
};

static void pk__table_row(struct pk__table *t, ...)
{
	va_list ap;
	if (t->nrows == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		char **nc = realloc(t->cells, cap * (size_t)t->ncols * sizeof(char *));
		if (nc == NULL) {
			fprintf(stderr, "pikoctl: out of memory\n");
			exit(PK__EXIT_FAIL);
		}
		t->cells = nc;
		t->cap = cap;
	}
	va_start(ap, t);
	for (int c = 0; c < t->ncols; c++) {
		const char *v = va_arg(ap, const char *);
		char *d = strdup(v ? v : "");
		if (d == NULL) {
			fprintf(stderr, "pikoctl: out of memory\n");
			exit(PK__EXIT_FAIL);
		}
		t->cells[t->nrows * (size_t)t->ncols + (size_t)c] = d;
	}
	va_end(ap);
	t->nrows++;
}

static void pk__table_print(struct pk__table *t)
{
	size_t width[PK__MAX_TABLE_COLUMNS] = {0};
	for (size_t r = 0; r < t->nrows; r++)
		for (int c = 0; c < t->ncols; c++) {
			size_t n = strlen(t->cells[r * (size_t)t->ncols + (size_t)c]);
			if (n > width[c])
				width[c] = n;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (int c = 0; c < t->ncols; c++) {
			const char *v = t->cells[r * (size_t)t->ncols + (size_t)c];
			if (c + 1 < t->ncols)
				printf("%-*s  ", (int)width[c], v);
			else
				printf("%s\n", v);
		}
	}
	for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = t->cap = 0;
}

/* A member as text for a table cell: strings as they are, numbers and booleans written. */
static const char *pk__cell(json_t *obj, const char *key, char *buf, size_t size)
{
	json_t *v = json_object_get(obj, key);
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v))
		snprintf(buf, size, "%lld", (long long)json_integer_value(v));
	else if (json_is_boolean(v))
		snprintf(buf, size, "%s", json_is_true(v) ? "yes" : "no");
	else
		snprintf(buf, size, "-");
	return buf;
}

static int pk__cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rows "endpoint, count" of an endpoints object, sorted by endpoint. */
static void pk__endpoint_rows(struct pk__table *t, json_t *eps)
{
	size_t n = json_object_size(eps), i = 0;
	const char **keys = calloc(n ? n : 1, sizeof(*keys));
	const char *k;
	json_t *v;
	if (keys == NULL)
		return;
	json_object_foreach(eps, k, v) keys[i++] = k;
	qsort(keys, n, sizeof(*keys), pk__cmp_str);
	for (i = 0; i < n; i++) {
		char num[32];
		pk__table_row(t, keys[i], pk__cell(eps, keys[i], num, sizeof(num)));
	}
	free(keys);
}

/* ---- commands ---- */

static int pk__cmd_endpoints(struct pk__opts *o)
{
	json_t *eps;
	int rc = pk__get(o, "/status/upstream/endpoints", JSON_OBJECT, &eps);
	if (rc)
		return rc;
	if (o->json) {
		rc = pk__print_json(eps);
	} else {
		struct pk__table t = {.ncols = 2};
		pk__table_row(&t, "ENDPOINT", "UPSTREAMS");
		pk__endpoint_rows(&t, eps);
		pk__table_print(&t);
	}
	json_decref(eps);
	return rc;
}

static int pk__cmd_upstreams(struct pk__opts *o)
{
	json_t *list, *u;
	size_t i;
	int rc = pk__get(o, "/status/upstream/upstreams", JSON_ARRAY, &list);
	if (rc)
		return rc;
	if (o->json) {
		rc = pk__print_json(list);
	} else {
		struct pk__table t = {.ncols = 7};
		pk__table_row(&t, "ENDPOINT", "WORKER", "GENERATION", "TUNNEL", "REMOTE",
		              "CONNECTED SINCE", "STREAMS");
		json_array_foreach(list, i, u)
		{
			char b[5][32];
			pk__table_row(
			    &t, pk__cell(u, "endpoint", b[0], 32), pk__cell(u, "worker", b[1], 32),
			    pk__cell(u, "generation", b[2], 32), pk__cell(u, "tunnel_id", b[3], 32),
			    json_string_value(json_object_get(u, "remote")),
			    json_string_value(json_object_get(u, "connected_since")),
			    pk__cell(u, "in_flight_streams", b[4], 32));
		}
		pk__table_print(&t);
	}
	json_decref(list);
	return rc;
}

static int pk__cmd_nodes(struct pk__opts *o)
{
	json_t *list, *n;
	size_t i;
	int rc = pk__get(o, "/status/cluster/nodes", JSON_ARRAY, &list);
	if (rc)
		return rc;
	if (o->json) {
		rc = pk__print_json(list);
	} else {
		struct pk__table t = {.ncols = 6};
		pk__table_row(&t, "ID", "STATUS", "PROXY ADDR", "ADMIN ADDR", "ENDPOINTS",
		              "UPSTREAMS");
		json_array_foreach(list, i, n)
		{
			char b[5][64], neps[32];
			snprintf(neps, sizeof(neps), "%zu",
			         json_object_size(json_object_get(n, "endpoints")));
			pk__table_row(&t, pk__cell(n, "id", b[0], 64),
			              pk__cell(n, "status", b[1], 64),
			              pk__cell(n, "proxy_addr", b[2], 64),
			              pk__cell(n, "admin_addr", b[3], 64), neps,
			              pk__cell(n, "upstreams", b[4], 64));
		}
		pk__table_print(&t);
	}
	json_decref(list);
	return rc;
}

static int pk__cmd_node(struct pk__opts *o, const char *id)
{
	char path[256], b[4][64];
	json_t *n;
	if (!pk__valid_id(id))
		return pk__usage_error("invalid node id \"%s\"", id);
	snprintf(path, sizeof(path), "/status/cluster/nodes/%s", id);
	int rc = pk__get(o, path, JSON_OBJECT, &n);
	if (rc)
		return rc;
	if (o->json) {
		rc = pk__print_json(n);
	} else {
		printf("ID:          %s\n", pk__cell(n, "id", b[0], 64));
		printf("Status:      %s\n", pk__cell(n, "status", b[1], 64));
		printf("Proxy addr:  %s\n", pk__cell(n, "proxy_addr", b[2], 64));
		printf("Admin addr:  %s\n", pk__cell(n, "admin_addr", b[3], 64));
		printf("Upstreams:   %s\n\n", pk__cell(n, "upstreams", b[0], 64));
		struct pk__table t = {.ncols = 2};
		pk__table_row(&t, "ENDPOINT", "UPSTREAMS");
		json_t *eps = json_object_get(n, "endpoints");
		if (json_is_object(eps))
			pk__endpoint_rows(&t, eps);
		pk__table_print(&t);
	}
	json_decref(n);
	return rc;
}

static long long pk__int(json_t *obj, const char *path1, const char *path2)
{
	json_t *v = json_object_get(obj, path1);
	if (path2)
		v = json_object_get(v, path2);
	return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static int pk__cmd_status(struct pk__opts *o)
{
	json_t *s;
	char b[2][64], up[64];
	int rc = pk__get(o, "/status", JSON_OBJECT, &s);
	if (rc)
		return rc;
	if (o->json) {
		rc = pk__print_json(s);
		json_decref(s);
		return rc;
	}
	pk_format_duration((uint64_t)pk__int(s, "uptime_seconds", NULL) * 1000, up, sizeof(up));
	printf("Version:     %s\n", pk__cell(s, "version", b[0], 64));
	printf("Node:        %s\n", pk__cell(s, "node_id", b[0], 64));
	printf("Started:     %s (up %s)\n", pk__cell(s, "started_at", b[0], 64), up);
	printf("Generation:  %lld\n", pk__int(s, "generation", NULL));
	printf("Ready:       %s\n", pk__cell(s, "ready", b[1], 64));
	printf("Workers:     %lld of %lld up\n", pk__int(s, "workers", "up"),
	       pk__int(s, "workers", "configured"));
	printf("Reloads:     %lld succeeded, %lld failed\n", pk__int(s, "reloads", "success"),
	       pk__int(s, "reloads", "failure"));
	printf("Restarts:    worker %lld, admin %lld, cluster %lld\n",
	       pk__int(s, "restarts", "worker"), pk__int(s, "restarts", "admin"),
	       pk__int(s, "restarts", "cluster"));
	printf("Endpoints:   %s\n", pk__cell(s, "endpoints", b[0], 64));
	printf("Upstreams:   %s\n", pk__cell(s, "upstreams", b[0], 64));
	printf("Requests:    %lld (1xx %lld, 2xx %lld, 3xx %lld, 4xx %lld, 5xx %lld, other %lld)\n",
	       pk__int(s, "requests", "total"), pk__int(s, "requests", "1xx"),
	       pk__int(s, "requests", "2xx"), pk__int(s, "requests", "3xx"),
	       pk__int(s, "requests", "4xx"), pk__int(s, "requests", "5xx"),
	       pk__int(s, "requests", "other"));
	json_decref(s);
	return 0;
}

static int pk__cmd_reload(struct pk__opts *o)
{
	unsigned status;
	json_t *body;
	int rc = pk__call(o, "POST", "/reload", &status, &body);
	if (rc)
		return rc;
	if (status == 200 && json_is_true(json_object_get(body, "ok"))) {
		if (o->json)
			rc = pk__print_json(body);
		else
			printf("reload complete: generation %lld\n",
			       pk__int(body, "generation", NULL));
	} else if (status == 401 || status == 404 || status == 405) {
		rc = pk__http_error(status, body);
	} else {
		const char *msg = pk__body_error(body);
		if (o->json && body)
			pk__print_json(body);
		rc = pk__fail("reload failed: %s", msg ? msg : pk_http1_reason(status));
	}
	json_decref(body);
	return rc;
}

/* ---- token create ---- */

static int pk__split_endpoints(char *list, const char **out, size_t max, size_t *n)
{
	*n = 0;
	for (char *save = NULL, *e = strtok_r(list, ",", &save); e;
	     e = strtok_r(NULL, ",", &save)) {
		if (!pk__valid_id(e))
			return pk__usage_error("--endpoints: invalid endpoint id \"%s\"", e);
		if (*n == max)
			return pk__usage_error("--endpoints: more than %zu endpoints", max);
		out[(*n)++] = e;
	}
	return 0;
}

static int pk__cmd_token_create(struct pk__opts *o)
{
	struct pk_jwt_mint_params p = {0};
	const char *eps[256];
	char *list = NULL, *key = NULL, *token = NULL;
	const char *why = NULL, *file;
	uint64_t ttl_ms = 24ull * 3600 * 1000;
	int rc, nkeys = !!o->hmac_file + !!o->rsa_file + !!o->ecdsa_file;

	if (nkeys != 1)
		return pk__usage_error("token create needs exactly one of --hmac-secret-file, "
		                       "--rsa-private-key-file, --ecdsa-private-key-file");
	if (o->expires && pk_parse_duration(o->expires, &ttl_ms) < 0)
		return pk__usage_error(
		    "--expires: invalid duration \"%s\" (use e.g. 1h, 24h, 720h)", o->expires);
	if (o->endpoints) {
		list = strdup(o->endpoints);
		if (list == NULL)
			return pk__fail("out of memory");
		rc = pk__split_endpoints(list, eps, sizeof(eps) / sizeof(eps[0]), &p.n_endpoints);
		if (rc) {
			free(list);
			return rc;
		}
	}
	p.kind = o->hmac_file ? PK_JWT_KEY_HMAC : o->rsa_file ? PK_JWT_KEY_RSA : PK_JWT_KEY_ECDSA;
	file = o->hmac_file ? o->hmac_file : o->rsa_file ? o->rsa_file : o->ecdsa_file;
	key = pk__read_file(file, PK__MAX_KEY_FILE, o->hmac_file ? "secret file" : "key file");
	if (key == NULL) {
		free(list);
		return PK__EXIT_FAIL;
	}
	if (p.kind == PK_JWT_KEY_HMAC)
		pk__chomp(key);
	p.key = key;
	p.iat = (int64_t)time(NULL);
	p.exp = ttl_ms ? p.iat + (int64_t)((ttl_ms + 999) / 1000) : 0;
	p.audience = o->audience;
	p.issuer = o->issuer;
	p.endpoints = eps;
	rc = pk_jwt_mint(&p, &token, &why);
	memset(key, 0, strlen(key));
	free(key);
	if (rc < 0) {
		free(list);
		return pk__fail("cannot create the token from %s: %s", file,
		                why ? why : strerror(-rc));
	}
	if (o->json) {
		char exp[40] = "";
		time_t t = (time_t)p.exp;
		struct tm tm;
		if (p.exp)
			strftime(exp, sizeof(exp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
		json_t *arr = json_array();
		for (size_t i = 0; arr && i < p.n_endpoints; i++)
			json_array_append_new(arr, json_string(eps[i]));
		json_t *out = json_pack("{s:s,s:s?,s:o*}", "token", token, "expires_at",
		                        p.exp ? exp : NULL, "endpoints", arr);
		rc = out ? pk__print_json(out) : pk__fail("out of memory");
		json_decref(out);
	} else {
		printf("%s\n", token);
		rc = 0;
	}
	free(token);
	free(list);
	return rc;
}

/* ---- main ---- */

static int pk__is(const struct pk__opts *o, const char *a0, const char *a1, int nargs)
{
	return o->nargs == nargs && strcmp(o->args[0], a0) == 0 &&
	       (a1 == NULL || strcmp(o->args[1], a1) == 0);
}

static int pk__run(struct pk__opts *o)
{
	int is_token = o->nargs >= 1 && strcmp(o->args[0], "token") == 0;
	int is_reload = o->nargs >= 1 && strcmp(o->args[0], "reload") == 0;
	int rc;

	if (o->output && strcmp(o->output, "json") != 0 && strcmp(o->output, "table") != 0)
		return pk__usage_error("--output: expected table or json, got \"%s\"", o->output);
	o->json = o->output && strcmp(o->output, "json") == 0;
	if (!is_token && (o->endpoints || o->expires || o->hmac_file || o->rsa_file ||
	                  o->ecdsa_file || o->audience || o->issuer))
		return pk__usage_error("token options are only for 'token create'");
	if (is_token) {
		if (!pk__is(o, "token", "create", 2))
			return pk__usage_error("unknown command; did you mean 'token create'?");
		return pk__cmd_token_create(o);
	}
	rc = pk__prepare_client(o, is_reload ? PK__RELOAD_TIMEOUT : PK__DEFAULT_TIMEOUT);
	if (rc)
		return rc;
	if (pk__is(o, "endpoints", "list", 2))
		return pk__cmd_endpoints(o);
	if (pk__is(o, "upstreams", "list", 2))
		return pk__cmd_upstreams(o);
	if (pk__is(o, "cluster", "nodes", 2))
		return pk__cmd_nodes(o);
	if (pk__is(o, "cluster", "node", 3))
		return pk__cmd_node(o, o->args[2]);
	if (pk__is(o, "status", NULL, 1))
		return pk__cmd_status(o);
	if (pk__is(o, "reload", NULL, 1))
		return pk__cmd_reload(o);
	return pk__usage_error("unknown command \"%s%s%s\"", o->args[0], o->nargs > 1 ? " " : "",
	                       o->nargs > 1 ? o->args[1] : "");
}

int main(int argc, char **argv)
{
	struct pk__opts o;
	memset(&o, 0, sizeof(o));
	int rc = pk__parse_args(argc, argv, &o);
	if (rc < 0)
		return 0;
	if (rc > 0)
		return rc;
	if (o.nargs == 0) {
		pk__usage(stderr);
		return PK__EXIT_USAGE;
	}
	rc = pk__run(&o);
	free(o.token_buf);
	return rc;
}
