/* piko's command line and config file: what to run and how to reach the server.
 *
 *   piko agent http ENDPOINT ADDR [flags]      piko agent tcp ENDPOINT ADDR [flags]
 *   piko agent start --config FILE [flags]     piko forward tcp ADDR ENDPOINT [flags]
 *   piko forward start --config FILE [flags]
 *
 * Flags may come before or after the positional arguments, as "--name value" or
 * "--name=value"; flags override the config file. Every error names the argument or key
 * (and the line, for the file) and maps to exit code 2. docs/piko.md lists every option.
 */
#ifndef PK_PIKO_CONF_H
#define PK_PIKO_CONF_H

#include "cli/piko_net.h"

#include <stddef.h>
#include <stdint.h>

#define PK_CONF_ENDPOINT_MAX 128
#define PK_CONF_TOKEN_MAX    8192
#define PK_CONF_MAX_ITEMS    64 /* listeners or forwarders per process */

enum pk_conf_mode {
	PK_CONF_AGENT = 1,
	PK_CONF_FORWARD = 2,
};

enum pk_conf_proto {
	PK_CONF_HTTP = 1,
	PK_CONF_TCP = 2,
};

/* connect.*: the Piko server (upstream port for agents, proxy port for forwarders). */
/* The agent's receive window per stream: what pikod may send ahead of the local service.
 * yamux starts every stream at 256 KiB; a larger window is granted with the stream's ACK. */
#define PK_CONF_WINDOW_MIN     (256u * 1024u)
#define PK_CONF_WINDOW_DEFAULT (1024u * 1024u)
#define PK_CONF_WINDOW_MAX     (16u * 1024u * 1024u)

struct pk_conf_connect {
	char url[1024];
	struct pk_net_target target; /* host, port, TLS context */
	char host_header[300];       /* Host: of the upgrade request */
	char path_prefix[512];       /* URL path without a trailing '/', may be "" */
	int tls;
	char token[PK_CONF_TOKEN_MAX];
	char token_file[1024];
	uint64_t timeout_ms;       /* connect + TLS + upgrade */
	uint64_t ping_interval_ms; /* yamux ping period (agent) */
	uint64_t ping_timeout_ms;  /* drop the session when a ping is older */
	uint32_t stream_window;    /* yamux receive window per stream (agent) */
	char tls_root_cas[1024];
	char tls_cert[1024];
	char tls_key[1024];
	int tls_insecure;
};

struct pk_conf_listener {
	char endpoint[PK_CONF_ENDPOINT_MAX + 1];
	int protocol;    /* enum pk_conf_proto */
	char addr[1024]; /* as given */
	struct pk_net_target target;
	int https; /* ADDR was an https:// URL */
	uint64_t timeout_ms;
	int access_log;
};

struct pk_conf_forwarder {
	char endpoint[PK_CONF_ENDPOINT_MAX + 1];
	char addr[300]; /* as given */
	char bind_host[256];
	uint16_t bind_port;
};

struct pk_conf {
	int mode; /* enum pk_conf_mode */
	struct pk_conf_connect connect;
	struct pk_conf_listener listeners[PK_CONF_MAX_ITEMS];
	unsigned n_listeners;
	struct pk_conf_forwarder forwarders[PK_CONF_MAX_ITEMS];
	unsigned n_forwarders;
	uint64_t grace_ms;
	int log_level;
	char log_subsystems[512]; /* comma-separated */
	SSL_CTX *local_tls;       /* for https:// ADDRs */
};

/* What main should do after parsing. */
enum pk_conf_action {
	PK_CONF_RUN = 0,
	PK_CONF_HELP = 1,    /* usage was printed on stdout: exit 0 */
	PK_CONF_VERSION = 2, /* version was printed: exit 0 */
	PK_CONF_ERROR = -1,  /* a message was printed on stderr: exit 2 */
};

/* Parses argv into c (zeroed by the caller), reads the config file and the token file, and
 * builds TLS contexts. Prints help, version or errors itself. Returns an enum
 * pk_conf_action. */
int pk_conf_parse(struct pk_conf *c, int argc, char **argv);

/* Frees the TLS contexts. */
void pk_conf_free(struct pk_conf *c);

/* Parses a server URL (http, https, ws, wss) into the connect fields. Returns 0, or -EINVAL
 * with *why set to a static reason. Exposed for tests. */
int pk_conf_parse_url(struct pk_conf_connect *cc, const char *url, const char **why);

/* Parses an agent ADDR (port, host:port, http(s) URL) into l. 0 or -EINVAL and *why. */
int pk_conf_parse_local(struct pk_conf_listener *l, const char *addr, const char **why);

#endif
