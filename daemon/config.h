/* pikod configuration: libconfig file + command-line flags, validated.
 *
 * Every key has a flag: dots stay, underscores become dashes
 * (proxy.bind_addr <-> --proxy.bind-addr). Flags take `--key value` or `--key=value`;
 * booleans also take a bare `--key` (true) and `--key true|false`. Lists are
 * comma-separated on the command line (--cluster.join a:8003,b:8003; a repeated list flag
 * appends) and libconfig lists/arrays of strings in the file. Flags override the file,
 * whatever their order on the command line; a repeated scalar flag: the last one wins.
 * In string values (and string list items) of the file, ${VAR} and ${VAR:default} are
 * expanded from the environment ($$ is a literal $; an unset VAR without default is an
 * error naming the key). Flag values are never expanded (the shell did that).
 *
 * An optional string key (one without a default) set to "" is the same as unset (NULL),
 * so `hmac_secret_key = "${HMAC_KEY:}";` disables it when HMAC_KEY is unset. Keys with
 * a default (bind addresses, state_dir, log.level) must not be empty.
 *
 * Durations: "250ms", "30s", "5m", "1h", combinations like "1m30s", or a bare integer
 * meaning seconds (in the file also an integer: `grace_period = 30;`). Stored in ms.
 *
 * Every error is one line, "FILE:LINE: KEY: message" or "--flag: message", e.g.
 *   pikod.conf:12: proxy.timeout: invalid duration "30x" (use e.g. 500ms, 30s, 5m, 1h)
 *   pikod.conf:3: proxy.bind_adr: unknown key (did you mean proxy.bind_addr?)
 *   --workers: expected an integer, got "two"
 *   --proxy.bind-adr: unknown flag (did you mean --proxy.bind-addr?)
 * Syntax errors are "FILE:LINE: syntax error: ..." (libconfig's text).
 *
 * Validation at load (pk_config_load and pk_config_load_string alike): types are strict
 * (an integer where a string is expected is an error, and the reverse), integers and
 * durations in range, addresses by pk_parse_addr(), cluster.advertise_addr with a host and
 * a non-zero port, cluster.join items "host" or "host:port", node ids and log subsystems
 * 1-64 of [A-Za-z0-9._-], log.level one of debug/info/warn(ing)/error (stored canonical),
 * tls.cert/key/client_cas readable regular files, tls.cert and tls.key both or neither,
 * client_cas only with them, *_public_key a PEM SubjectPublicKeyInfo of the right family.
 * Unknown keys and a key set twice in the file are errors. The first error stops loading.
 *
 * The key table in config.c drives parsing, flags, validation, pk_config_write(),
 * pk_config_equal() and pk_config_usage(): a new key is one row there (plus its field).
 */
#ifndef PK_CONFIG_H
#define PK_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define PK_CONFIG_ERR_MAX 1024

struct pk_auth_config {
	char *hmac_secret_key;  /* NULL when unset */
	char *rsa_public_key;   /* PEM text; validated to parse */
	char *ecdsa_public_key; /* PEM text; validated to parse */
	char *audience;
	char *issuer;
	int disable_disconnect_on_expiry; /* upstream only; 0 elsewhere */
};

struct pk_tls_config {
	char *cert;       /* file path; when set, key is required */
	char *key;        /* file path */
	char *client_cas; /* file path; optional (mTLS) */
};

struct pk_listener_config {
	char *bind_addr; /* "host:port", ":port", "[v6]:port" */
	struct pk_tls_config tls;
	struct pk_auth_config auth;
};

struct pk_strlist {
	char **items; /* NULL-terminated; never NULL after pk_config_init */
	int count;
};

struct pk_config {
	int workers;     /* 0 = one per core (resolved by the supervisor) */
	char *state_dir; /* default /var/lib/pikod */
	uint64_t grace_period_ms;

	struct pk_listener_config proxy;
	uint64_t proxy_timeout_ms;             /* proxy.timeout, default 30s */
	uint64_t proxy_upstream_wait_ms;       /* proxy.upstream_wait, default 0 */
	uint64_t proxy_max_header_bytes;       /* proxy.http.max_header_bytes, default 1 MiB */
	uint64_t proxy_read_header_timeout_ms; /* default 10s */
	uint64_t proxy_idle_timeout_ms;        /* default 5m */
	int proxy_access_log_disable;          /* proxy.access_log.disable, default false */
	struct pk_strlist proxy_access_log_request_headers;  /* allowlist, default none */
	struct pk_strlist proxy_access_log_response_headers; /* allowlist, default none */
	int upstream_max_streams;     /* upstream.max_streams: concurrent streams per tunnel */
	int admin_auth_exempt_probes; /* admin.auth.exempt_probes, default true */

	struct pk_listener_config upstream;
	struct pk_listener_config admin; /* default bind 127.0.0.1:8002 */

	struct pk_listener_config cluster; /* bind_addr, tls; auth unused */
	char *cluster_advertise_addr;
	char *cluster_node_id;
	char *cluster_node_id_prefix;
	struct pk_strlist cluster_join;

	char *log_level; /* debug, info, warn, error */
	struct pk_strlist log_subsystems;

	char *config_file; /* the --config path, or NULL */
};

/* Fills defaults. Always succeeds unless out of memory (-ENOMEM; cfg is then freed). */
int pk_config_init(struct pk_config *cfg);
/* Frees every string and list and zeroes cfg. Safe on a zeroed or freed cfg. */
void pk_config_free(struct pk_config *cfg);

/* Loads the file named by --config FILE / --config=FILE / -c FILE (if any; the last one
 * wins) from argv, then applies every flag, then validates. argv[0] is skipped.
 * cfg must come from pk_config_init(); on error it may hold a partly loaded
 * configuration that must only be freed. cfg->config_file gets the --config path.
 *
 * Non-flag arguments (pikod takes none) and flags not in the key table are errors, unless
 * `extra` accepts them. extra is called while argv is scanned, before the file is read,
 * with the flag name without its dashes ("help" for --help or -help, "h" for -h) and a
 * value: the text after '=' if any, else the next argument (NULL at the end of argv). It
 * returns 1 when it consumed the flag with that value (the next argument is then
 * skipped), 2 when it consumed a bare flag and did not use the value (an "=value" given
 * to it is then an error), 0 when it does not know the flag, negative when the value is
 * invalid (the error is then "--NAME: invalid value"). extra may be NULL.
 * Returns 0, or -EINVAL with a message in err (-ENOMEM: out of memory). */
typedef int (*pk_config_extra_flag_fn)(void *ud, const char *name, const char *value);
int pk_config_load(struct pk_config *cfg, int argc, char **argv, pk_config_extra_flag_fn extra,
                   void *ud, char err[PK_CONFIG_ERR_MAX]);

/* Parses a libconfig document from memory (used for the config a supervisor hands to
 * its children, as written by pk_config_write()). `origin` names it in errors ("FILE" in
 * "FILE:LINE: ..."). Then validates. ${VAR} is NOT expanded: the written document is
 * already expanded, and a literal "$" in a value must survive the round trip.
 * cfg must come from pk_config_init(). Returns 0, or -EINVAL with a message in err. */
int pk_config_load_string(struct pk_config *cfg, const char *text, const char *origin,
                          char err[PK_CONFIG_ERR_MAX]);

/* pk_config_load_string() with options: PK_CONFIG_EXPAND_ENV expands ${VAR} in string
 * values as pk_config_load() does for the --config file. */
#define PK_CONFIG_EXPAND_ENV 0x1u
int pk_config_load_string_ex(struct pk_config *cfg, const char *text, const char *origin,
                             unsigned flags, char err[PK_CONFIG_ERR_MAX]);

/* Writes the effective configuration as a libconfig document that
 * pk_config_load_string() reads back to an equal configuration (pk_config_equal();
 * config_file is not part of it). Unset optional strings are left out. Secrets included:
 * the caller must keep it private (memfd, 0600 file). Returns 0 or -EIO (write error). */
int pk_config_write(const struct pk_config *cfg, FILE *out);

/* Whether every key of a and b has the same value (config_file is ignored). 1 or 0. */
int pk_config_equal(const struct pk_config *a, const struct pk_config *b);

/* Writes the option part of --help: every key's flag with its value placeholder,
 * description and default, grouped by section (the first group, "General:", starts with
 * -c/--config). No usage line or preamble: the daemon prints those and its own flags
 * (--help, --version, --check). */
void pk_config_usage(FILE *out);

/* Settings this build accepts in a file but cannot honour yet: returns the first such key
 * ("proxy.tls.cert", ...) or NULL. Checked at start, by --check and on reload, so a node is
 * never started believing it serves TLS while it serves plain text. */
const char *pk_config_unsupported(const struct pk_config *cfg);

/* Durations and addresses are parsed by common/parse.h (pk_parse_duration,
 * pk_parse_addr), shared with the CLIs. */

#endif
