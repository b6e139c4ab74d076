/* Unit tests for daemon/config.c: defaults, file, flags, env expansion, validation
 * errors (each names the key and the line), writing and reading back, usage. */
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/config.h"

static char dir[64];
static char conf[128]; /* dir/pikod.conf */
static struct pk_config cfg;
static char err[PK_CONFIG_ERR_MAX];

static void setup(void)
{
	strcpy(dir, "/tmp/pk-test-config-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(conf, sizeof(conf), "%s/pikod.conf", dir);
	cr_assert_eq(pk_config_init(&cfg), 0);
	err[0] = '\0';
}

static void teardown(void)
{
	char cmd[128];
	pk_config_free(&cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(config, .init = setup, .fini = teardown);

/* Writes dir/name and returns its path (static buffer per call site is not needed:
 * callers copy when they keep more than one). */
static const char *write_file(const char *name, const char *text)
{
	static char path[4][256];
	static int next;
	char *p = path[next++ % 4];
	snprintf(p, 256, "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
	return p;
}

/* Loads argv (argv[0] added) with no extra handler. */
static int load_args(const char **args)
{
	char *argv[160] = {"pikod"};
	int argc = 1;
	for (; args[argc - 1] != NULL; argc++)
		argv[argc] = (char *)args[argc - 1];
	return pk_config_load(&cfg, argc, argv, NULL, NULL, err);
}

/* Writes text as dir/pikod.conf and loads it with --config. */
static int load_conf(const char *text)
{
	write_file("pikod.conf", text);
	return load_args((const char *[]){"--config", conf, NULL});
}

/* Asserts a load failed with exactly "CONF:LINE: rest". */
static void expect_file_error(int rc, int line, const char *rest)
{
	char want[PK_CONFIG_ERR_MAX];
	snprintf(want, sizeof(want), "%s:%d: %s", conf, line, rest);
	cr_assert_eq(rc, -EINVAL, "rc %d, err \"%s\"", rc, err);
	cr_assert_str_eq(err, want);
}

/* A PEM public key of the given family, generated for the test. */
static char *make_pubkey(const char *type)
{
	EVP_PKEY *key = strcmp(type, "RSA") == 0
	                    ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024)
	                    : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	cr_assert_not_null(key);
	BIO *bio = BIO_new(BIO_s_mem());
	cr_assert_eq(PEM_write_bio_PUBKEY(bio, key), 1);
	char *data;
	long n = BIO_get_mem_data(bio, &data);
	char *pem = strndup(data, (size_t)n);
	BIO_free(bio);
	EVP_PKEY_free(key);
	return pem;
}

/* ---- defaults ---- */

Test(config, defaults)
{
	cr_expect_eq(cfg.workers, 0);
	cr_expect_str_eq(cfg.state_dir, "/var/lib/pikod");
	cr_expect_eq(cfg.grace_period_ms, 30000);
	cr_expect_str_eq(cfg.proxy.bind_addr, ":8000");
	cr_expect_eq(cfg.proxy_timeout_ms, 30000);
	cr_expect_eq(cfg.proxy_upstream_wait_ms, 0);
	cr_expect_eq(cfg.proxy_max_header_bytes, 1048576);
	cr_expect_eq(cfg.proxy_read_header_timeout_ms, 10000);
	cr_expect_eq(cfg.proxy_idle_timeout_ms, 300000);
	cr_expect_str_eq(cfg.upstream.bind_addr, ":8001");
	cr_expect_str_eq(cfg.admin.bind_addr, "127.0.0.1:8002");
	cr_expect_str_eq(cfg.cluster.bind_addr, ":8003");
	cr_expect_null(cfg.cluster_advertise_addr);
	cr_expect_null(cfg.cluster_node_id);
	cr_expect_null(cfg.cluster_node_id_prefix);
	cr_expect_str_eq(cfg.log_level, "info");
	cr_expect_null(cfg.proxy.auth.hmac_secret_key);
	cr_expect_null(cfg.upstream.tls.cert);
	cr_expect_eq(cfg.upstream.auth.disable_disconnect_on_expiry, 0);
	cr_expect_null(cfg.config_file);
}

Test(config, default_lists_are_empty_and_terminated)
{
	cr_expect_eq(cfg.cluster_join.count, 0);
	cr_assert_not_null(cfg.cluster_join.items);
	cr_expect_null(cfg.cluster_join.items[0]);
	cr_expect_eq(cfg.log_subsystems.count, 0);
	cr_assert_not_null(cfg.log_subsystems.items);
	cr_expect_null(cfg.log_subsystems.items[0]);
}

Test(config, no_arguments_keeps_defaults)
{
	struct pk_config fresh;
	cr_assert_eq(load_args((const char *[]){NULL}), 0, "%s", err);
	cr_assert_eq(pk_config_init(&fresh), 0);
	cr_expect(pk_config_equal(&cfg, &fresh));
	pk_config_free(&fresh);
}

/* ---- the file ---- */

Test(config, file_sets_values_of_every_type)
{
	int rc = load_conf(
	    "workers = 4;\n"
	    "state_dir = \"/srv/pikod\";\n"
	    "grace_period = \"1m30s\";\n"
	    "proxy = {\n"
	    "  bind_addr = \"[::1]:9000\";\n"
	    "  http = { max_header_bytes = 4096; idle_timeout = \"250ms\"; };\n"
	    "};\n"
	    "upstream = { auth = { disable_disconnect_on_expiry = true; }; };\n"
	    "cluster = { join = [\"a:8003\", \"b\"]; node_id = \"n-1\"; };\n"
	    "log = { level = \"debug\"; subsystems = (\"proxy\", \"proxy.access\"); };\n");
	cr_assert_eq(rc, 0, "%s", err);
	cr_expect_eq(cfg.workers, 4);
	cr_expect_str_eq(cfg.state_dir, "/srv/pikod");
	cr_expect_eq(cfg.grace_period_ms, 90000);
	cr_expect_str_eq(cfg.proxy.bind_addr, "[::1]:9000");
	cr_expect_eq(cfg.proxy_max_header_bytes, 4096);
	cr_expect_eq(cfg.proxy_idle_timeout_ms, 250);
	cr_expect_eq(cfg.upstream.auth.disable_disconnect_on_expiry, 1);
	cr_assert_eq(cfg.cluster_join.count, 2);
	cr_expect_str_eq(cfg.cluster_join.items[0], "a:8003");
	cr_expect_str_eq(cfg.cluster_join.items[1], "b");
	cr_expect_null(cfg.cluster_join.items[2]);
	cr_expect_str_eq(cfg.cluster_node_id, "n-1");
	cr_expect_str_eq(cfg.log_level, "debug");
	cr_assert_eq(cfg.log_subsystems.count, 2);
	cr_expect_str_eq(cfg.log_subsystems.items[1], "proxy.access");
	cr_expect_str_eq(cfg.config_file, conf);
}

Test(config, integer_duration_means_seconds)
{
	cr_assert_eq(load_conf("grace_period = 45;\nproxy = { timeout = 0; };\n"), 0, "%s", err);
	cr_expect_eq(cfg.grace_period_ms, 45000);
	cr_expect_eq(cfg.proxy_timeout_ms, 0);
}

Test(config, empty_file_keeps_defaults)
{
	cr_assert_eq(load_conf("# nothing here\n"), 0, "%s", err);
	cr_expect_str_eq(cfg.proxy.bind_addr, ":8000");
}

Test(config, warning_level_is_stored_as_warn)
{
	cr_assert_eq(load_conf("log = { level = \"warning\"; };\n"), 0, "%s", err);
	cr_expect_str_eq(cfg.log_level, "warn");
}

Test(config, empty_optional_string_is_unset)
{
	cr_assert_eq(load_conf("proxy = { auth = { hmac_secret_key = \"\"; }; };\n"), 0, "%s", err);
	cr_expect_null(cfg.proxy.auth.hmac_secret_key);
}

/* ---- file errors: each names the key and the line ---- */

Test(config, missing_file)
{
	char want[PK_CONFIG_ERR_MAX];
	int rc = load_args((const char *[]){"--config", "/nonexistent/pikod.conf", NULL});
	cr_assert_eq(rc, -EINVAL);
	snprintf(want, sizeof(want), "/nonexistent/pikod.conf: cannot read: %s", strerror(ENOENT));
	cr_expect_str_eq(err, want);
}

Test(config, syntax_error)
{
	expect_file_error(load_conf("workers = 2;\nproxy = {\n bind_addr = ;\n};\n"), 3,
	                  "syntax error");
}

Test(config, unknown_top_level_key_suggests)
{
	expect_file_error(load_conf("\nworkerz = 2;\n"), 2,
	                  "workerz: unknown key (did you mean workers?)");
}

Test(config, unknown_nested_key_names_full_path)
{
	expect_file_error(load_conf("proxy = {\n  timeout = \"1s\";\n  bind_adr = \":1\";\n};\n"),
	                  3, "proxy.bind_adr: unknown key (did you mean proxy.bind_addr?)");
}

Test(config, unknown_key_deep_in_group)
{
	expect_file_error(load_conf("proxy = {\n http = {\n  frobnicate = 1;\n };\n};\n"), 3,
	                  "proxy.http.frobnicate: unknown key");
}

Test(config, unknown_group_suggests)
{
	expect_file_error(load_conf("proxi = {\n bind_addr = \":1\";\n};\n"), 1,
	                  "proxi: unknown key (did you mean proxy?)");
}

Test(config, dashed_key_in_file_suggests_underscores)
{
	expect_file_error(
	    load_conf("upstream = { auth = {\n disable-disconnect-on-expiry = true; }; };\n"), 2,
	    "upstream.auth.disable-disconnect-on-expiry: unknown key "
	    "(did you mean upstream.auth.disable_disconnect_on_expiry?)");
}

Test(config, auth_group_does_not_exist_for_cluster)
{
	expect_file_error(load_conf("cluster = { auth = { issuer = \"x\"; }; };\n"), 1,
	                  "cluster.auth: unknown key");
}

Test(config, scalar_where_group_expected)
{
	expect_file_error(load_conf("proxy = 5;\n"), 1,
	                  "proxy: expected a group { ... }, got an integer");
}

Test(config, group_where_scalar_expected)
{
	expect_file_error(load_conf("workers = { n = 1; };\n"), 1,
	                  "workers: expected an integer, got a group");
}

Test(config, integer_where_address_expected)
{
	expect_file_error(load_conf("proxy = {\n bind_addr = 8000;\n};\n"), 2,
	                  "proxy.bind_addr: expected a string (an address like \":8000\"), got "
	                  "an integer");
}

Test(config, quoted_integer_is_rejected)
{
	expect_file_error(load_conf("workers = \"2\";\n"), 1,
	                  "workers: expected an integer, got a string");
}

Test(config, float_duration_is_rejected)
{
	expect_file_error(load_conf("proxy = { timeout = 1.5; };\n"), 1,
	                  "proxy.timeout: expected a duration (a string like \"30s\" or an integer "
	                  "number of seconds), got a float");
}

Test(config, bad_duration_string)
{
	expect_file_error(load_conf("\n\nproxy = { timeout = \"30x\"; };\n"), 3,
	                  "proxy.timeout: invalid duration \"30x\" (use e.g. 500ms, 30s, 5m, 1h)");
}

Test(config, negative_integer_duration)
{
	expect_file_error(load_conf("grace_period = -1;\n"), 1,
	                  "grace_period: invalid duration -1 (seconds, 0 to 3153600000; or a "
	                  "string like \"30s\")");
}

Test(config, workers_above_maximum)
{
	expect_file_error(load_conf("workers = 257;\n"), 1,
	                  "workers: must be between 0 and 256, got 257");
}

Test(config, max_header_bytes_below_minimum)
{
	expect_file_error(load_conf("proxy = { http = {\nmax_header_bytes = 1023; }; };\n"), 2,
	                  "proxy.http.max_header_bytes: must be between 1024 and 16777216, got "
	                  "1023");
}

Test(config, int64_out_of_range)
{
	expect_file_error(load_conf("workers = 10000000000L;\n"), 1,
	                  "workers: must be between 0 and 256, got 10000000000");
}

Test(config, boolean_as_string_is_rejected)
{
	expect_file_error(
	    load_conf("upstream = { auth = { disable_disconnect_on_expiry = \"yes\"; }; };\n"), 1,
	    "upstream.auth.disable_disconnect_on_expiry: expected true or false, got a string");
}

Test(config, address_without_port)
{
	expect_file_error(load_conf("admin = {\n\n bind_addr = \"[::1]\";\n};\n"), 3,
	                  "admin.bind_addr: invalid address \"[::1]\" (use host:port, :port or "
	                  "[v6]:port)");
}

Test(config, address_port_out_of_range)
{
	expect_file_error(load_conf("upstream = { bind_addr = \"host:99999\"; };\n"), 1,
	                  "upstream.bind_addr: invalid address \"host:99999\" (use host:port, "
	                  ":port or [v6]:port)");
}

Test(config, empty_bind_addr)
{
	expect_file_error(load_conf("cluster = { bind_addr = \"\"; };\n"), 1,
	                  "cluster.bind_addr: must not be empty");
}

Test(config, empty_state_dir)
{
	expect_file_error(load_conf("state_dir = \"\";\n"), 1, "state_dir: must not be empty");
}

Test(config, bad_log_level)
{
	expect_file_error(load_conf("log = {\n level = \"verbose\";\n};\n"), 2,
	                  "log.level: invalid log level \"verbose\" (use debug, info, warn or "
	                  "error)");
}

Test(config, advertise_addr_needs_a_host)
{
	expect_file_error(load_conf("cluster = { advertise_addr = \":8003\"; };\n"), 1,
	                  "cluster.advertise_addr: invalid address \":8003\" (use host:port with a "
	                  "host and a non-zero port)");
}

Test(config, node_id_with_bad_characters)
{
	expect_file_error(load_conf("cluster = { node_id = \"a/b\"; };\n"), 1,
	                  "cluster.node_id: invalid name \"a/b\" (1-64 letters, digits, '.', '_' "
	                  "or '-')");
}

Test(config, duplicate_top_level_key)
{
	expect_file_error(load_conf("workers = 1;\n# comment = 3;\nworkers = 2;\n"), 3,
	                  "workers: set more than once");
}

Test(config, duplicate_nested_key)
{
	expect_file_error(load_conf("proxy = {\n  bind_addr = \":1\"; /* { */\n  http = { "
	                            "idle_timeout = \"1s\"; };\n  bind_addr = \":2\";\n};\n"),
	                  4, "proxy.bind_addr: set more than once");
}

Test(config, duplicate_group)
{
	expect_file_error(
	    load_conf("log = { level = \"info\"; };\nlog = { level = \"debug\"; };\n"), 2,
	    "log: set more than once");
}

Test(config, list_where_string_list_expected_gets_string)
{
	expect_file_error(load_conf("cluster = { join = \"a:8003\"; };\n"), 1,
	                  "cluster.join: expected a list of strings, like [\"a\", \"b\"], got a "
	                  "string");
}

Test(config, list_item_of_wrong_type_names_its_line)
{
	expect_file_error(load_conf("cluster = {\n join = (\n  \"a:8003\",\n  5\n );\n};\n"), 4,
	                  "cluster.join: item 2: expected a string, got an integer");
}

Test(config, list_item_invalid_address)
{
	expect_file_error(load_conf("cluster = { join = (\"a:8003\",\n\"a b\"); };\n"), 2,
	                  "cluster.join: invalid peer address \"a b\" (use host, host:port or "
	                  "[v6]:port)");
}

Test(config, list_item_empty)
{
	expect_file_error(load_conf("log = { subsystems = [\"\"]; };\n"), 1,
	                  "log.subsystems: empty list item");
}

Test(config, tls_cert_without_key)
{
	const char *cert = write_file("cert.pem", "x");
	char text[512];
	snprintf(text, sizeof(text), "proxy = {\n tls = {\n  cert = \"%s\";\n };\n};\n", cert);
	expect_file_error(load_conf(text), 3, "proxy.tls.cert: set without proxy.tls.key");
}

Test(config, tls_key_without_cert)
{
	const char *key = write_file("key.pem", "x");
	char text[512];
	snprintf(text, sizeof(text), "upstream = { tls = {\n key = \"%s\"; }; };\n", key);
	expect_file_error(load_conf(text), 2, "upstream.tls.key: set without upstream.tls.cert");
}

Test(config, tls_client_cas_without_cert)
{
	const char *cas = write_file("ca.pem", "x");
	char text[512];
	snprintf(text, sizeof(text), "admin = { tls = { client_cas = \"%s\"; }; };\n", cas);
	expect_file_error(load_conf(text), 1, "admin.tls.client_cas: set without admin.tls.cert");
}

Test(config, tls_pair_accepted)
{
	char cert[256], text[1024];
	snprintf(cert, sizeof(cert), "%s", write_file("cert.pem", "x"));
	const char *key = write_file("key.pem", "x");
	snprintf(text, sizeof(text),
	         "cluster = { tls = { cert = \"%s\"; key = \"%s\"; client_cas = \"%s\"; }; };\n",
	         cert, key, cert);
	cr_assert_eq(load_conf(text), 0, "%s", err);
	cr_expect_str_eq(cfg.cluster.tls.cert, cert);
	cr_expect_str_eq(cfg.cluster.tls.key, key);
}

Test(config, tls_file_missing)
{
	char text[512], want[512];
	snprintf(text, sizeof(text), "proxy = { tls = {\n cert = \"%s/nope.pem\"; }; };\n", dir);
	snprintf(want, sizeof(want), "proxy.tls.cert: cannot read \"%s/nope.pem\": %s", dir,
	         strerror(ENOENT));
	expect_file_error(load_conf(text), 2, want);
}

Test(config, tls_file_is_a_directory)
{
	char text[512], want[512];
	snprintf(text, sizeof(text), "proxy = { tls = { key = \"%s\"; }; };\n", dir);
	snprintf(want, sizeof(want), "proxy.tls.key: \"%s\" is not a regular file", dir);
	expect_file_error(load_conf(text), 1, want);
}

Test(config, tls_file_unreadable)
{
	if (geteuid() == 0)
		cr_skip_test("root reads every file");
	char text[512], want[512];
	const char *key = write_file("key.pem", "secret");
	cr_assert_eq(chmod(key, 0), 0);
	snprintf(text, sizeof(text), "proxy = { tls = { key = \"%s\"; }; };\n", key);
	snprintf(want, sizeof(want), "proxy.tls.key: cannot read \"%s\": %s", key,
	         strerror(EACCES));
	expect_file_error(load_conf(text), 1, want);
}

Test(config, rsa_and_ecdsa_keys_accepted)
{
	char *rsa = make_pubkey("RSA"), *ec = make_pubkey("EC");
	char text[4096];
	snprintf(text, sizeof(text),
	         "upstream = { auth = { rsa_public_key = \"%s\";\n ecdsa_public_key = \"%s\"; }; "
	         "};\n",
	         rsa, ec);
	cr_assert_eq(load_conf(text), 0, "%s", err);
	cr_expect_str_eq(cfg.upstream.auth.rsa_public_key, rsa);
	cr_expect_str_eq(cfg.upstream.auth.ecdsa_public_key, ec);
	free(rsa);
	free(ec);
}

Test(config, rsa_key_garbage)
{
	expect_file_error(load_conf("proxy = { auth = {\n rsa_public_key = \"hello\"; }; };\n"), 2,
	                  "proxy.auth.rsa_public_key: not a PEM RSA public key (expected "
	                  "\"-----BEGIN PUBLIC KEY-----\" text)");
}

Test(config, rsa_key_of_wrong_family)
{
	char *ec = make_pubkey("EC");
	char text[4096];
	snprintf(text, sizeof(text), "admin = { auth = { rsa_public_key = \"%s\"; }; };\n", ec);
	expect_file_error(load_conf(text), 1,
	                  "admin.auth.rsa_public_key: a PEM public key, but not RSA");
	free(ec);
}

Test(config, ecdsa_key_of_wrong_family)
{
	char *rsa = make_pubkey("RSA");
	char text[4096];
	snprintf(text, sizeof(text), "admin = { auth = { ecdsa_public_key = \"%s\"; }; };\n", rsa);
	expect_file_error(load_conf(text), 1,
	                  "admin.auth.ecdsa_public_key: a PEM public key, but not ECDSA (EC)");
	free(rsa);
}

/* ---- ${VAR} expansion ---- */

Test(config, env_variable_expanded)
{
	setenv("PK_TEST_SECRET", "s3cret", 1);
	cr_assert_eq(load_conf("proxy = { auth = { hmac_secret_key = \"k-${PK_TEST_SECRET}-x\"; "
	                       "}; };\n"),
	             0, "%s", err);
	cr_expect_str_eq(cfg.proxy.auth.hmac_secret_key, "k-s3cret-x");
}

Test(config, env_default_used_when_unset)
{
	unsetenv("PK_TEST_UNSET");
	cr_assert_eq(load_conf("state_dir = \"${PK_TEST_UNSET:/tmp/x}\";\n"), 0, "%s", err);
	cr_expect_str_eq(cfg.state_dir, "/tmp/x");
}

Test(config, env_value_beats_default)
{
	setenv("PK_TEST_DIR", "/srv", 1);
	cr_assert_eq(load_conf("state_dir = \"${PK_TEST_DIR:/tmp/x}\";\n"), 0, "%s", err);
	cr_expect_str_eq(cfg.state_dir, "/srv");
}

Test(config, env_set_but_empty_is_empty)
{
	setenv("PK_TEST_EMPTY", "", 1);
	cr_assert_eq(load_conf("cluster = { node_id = \"${PK_TEST_EMPTY:dflt}\"; };\n"), 0, "%s",
	             err);
	cr_expect_null(cfg.cluster_node_id);
}

Test(config, env_empty_default_unsets_optional)
{
	unsetenv("PK_TEST_UNSET");
	cr_assert_eq(load_conf("proxy = { auth = { issuer = \"${PK_TEST_UNSET:}\"; }; };\n"), 0,
	             "%s", err);
	cr_expect_null(cfg.proxy.auth.issuer);
}

Test(config, env_dollar_escapes)
{
	cr_assert_eq(load_conf("proxy = { auth = { hmac_secret_key = \"a$${B}c$d$\"; }; };\n"), 0,
	             "%s", err);
	cr_expect_str_eq(cfg.proxy.auth.hmac_secret_key, "a${B}c$d$");
}

Test(config, env_expanded_in_list_items)
{
	setenv("PK_TEST_PEER", "peer.example", 1);
	cr_assert_eq(load_conf("cluster = { join = [\"${PK_TEST_PEER}:8003\", \"b\"]; };\n"), 0,
	             "%s", err);
	cr_expect_str_eq(cfg.cluster_join.items[0], "peer.example:8003");
}

Test(config, env_expanded_before_validation)
{
	setenv("PK_TEST_PORT", "notaport", 1);
	expect_file_error(load_conf("proxy = {\n bind_addr = \":${PK_TEST_PORT}\";\n};\n"), 2,
	                  "proxy.bind_addr: invalid address \":notaport\" (use host:port, :port or "
	                  "[v6]:port)");
}

Test(config, env_unset_without_default)
{
	unsetenv("PK_TEST_UNSET");
	expect_file_error(
	    load_conf("\nproxy = { auth = { audience = \"${PK_TEST_UNSET}\"; }; };\n"), 2,
	    "proxy.auth.audience: environment variable PK_TEST_UNSET is not set (use "
	    "${PK_TEST_UNSET:default} to give a default)");
}

Test(config, env_unterminated)
{
	expect_file_error(load_conf("state_dir = \"/a/${HOME\";\n"), 1,
	                  "state_dir: unterminated \"${\" (write $$ for a literal $)");
}

Test(config, env_invalid_name)
{
	expect_file_error(load_conf("state_dir = \"${A-B}\";\n"), 1,
	                  "state_dir: invalid variable name in ${A-B}");
}

Test(config, env_error_in_list_item_names_item_line)
{
	unsetenv("PK_TEST_UNSET");
	expect_file_error(load_conf("log = { subsystems = [\n\"a\",\n\"${PK_TEST_UNSET}\"]; };\n"),
	                  3,
	                  "log.subsystems: environment variable PK_TEST_UNSET is not set (use "
	                  "${PK_TEST_UNSET:default} to give a default)");
}

Test(config, load_string_does_not_expand)
{
	setenv("PK_TEST_SECRET", "s3cret", 1);
	cr_assert_eq(pk_config_load_string(
	                 &cfg, "proxy = { auth = { hmac_secret_key = \"${PK_TEST_SECRET}\"; }; };",
	                 "memfd", err),
	             0, "%s", err);
	cr_expect_str_eq(cfg.proxy.auth.hmac_secret_key, "${PK_TEST_SECRET}");
}

Test(config, load_string_ex_expands_on_request)
{
	setenv("PK_TEST_SECRET", "s3cret", 1);
	cr_assert_eq(pk_config_load_string_ex(
	                 &cfg, "proxy = { auth = { hmac_secret_key = \"${PK_TEST_SECRET}\"; }; };",
	                 "memfd", PK_CONFIG_EXPAND_ENV, err),
	             0, "%s", err);
	cr_expect_str_eq(cfg.proxy.auth.hmac_secret_key, "s3cret");
}

Test(config, load_string_errors_name_origin)
{
	cr_assert_eq(pk_config_load_string(&cfg, "workers = 2;\nbogus = 1;\n", "memfd", err),
	             -EINVAL);
	cr_expect_str_eq(err, "memfd:2: bogus: unknown key");
}

/* ---- flags ---- */

Test(config, flag_with_separate_value)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.bind-addr", ":9000", NULL}), 0, "%s", err);
	cr_expect_str_eq(cfg.proxy.bind_addr, ":9000");
}

Test(config, flag_with_equals_value)
{
	cr_assert_eq(load_args((const char *[]){"--state-dir=./var", "--workers=3", NULL}), 0, "%s",
	             err);
	cr_expect_str_eq(cfg.state_dir, "./var");
	cr_expect_eq(cfg.workers, 3);
}

Test(config, flag_value_starting_with_dash)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.auth.issuer", "-me-", NULL}), 0, "%s",
	             err);
	cr_expect_str_eq(cfg.proxy.auth.issuer, "-me-");
}

Test(config, flags_override_file_in_any_order)
{
	write_file("pikod.conf", "workers = 2;\nproxy = { timeout = \"5s\"; };\n");
	cr_assert_eq(load_args((const char *[]){"--workers", "7", "--config", conf, NULL}), 0, "%s",
	             err);
	cr_expect_eq(cfg.workers, 7);
	cr_expect_eq(cfg.proxy_timeout_ms, 5000);
}

Test(config, short_config_flag)
{
	write_file("pikod.conf", "workers = 2;\n");
	cr_assert_eq(load_args((const char *[]){"-c", conf, NULL}), 0, "%s", err);
	cr_expect_eq(cfg.workers, 2);
}

Test(config, last_scalar_flag_wins)
{
	cr_assert_eq(load_args((const char *[]){"--workers", "1", "--workers=5", NULL}), 0, "%s",
	             err);
	cr_expect_eq(cfg.workers, 5);
}

Test(config, bare_boolean_flag_is_true)
{
	cr_assert_eq(load_args((const char *[]){"--upstream.auth.disable-disconnect-on-expiry",
	                                        "--workers", "1", NULL}),
	             0, "%s", err);
	cr_expect_eq(cfg.upstream.auth.disable_disconnect_on_expiry, 1);
	cr_expect_eq(cfg.workers, 1);
}

Test(config, boolean_flag_with_value)
{
	write_file("pikod.conf",
	           "upstream = { auth = { disable_disconnect_on_expiry = true; }; };\n");
	cr_assert_eq(load_args((const char *[]){
	                 "-c", conf, "--upstream.auth.disable-disconnect-on-expiry=no", NULL}),
	             0, "%s", err);
	cr_expect_eq(cfg.upstream.auth.disable_disconnect_on_expiry, 0);
}

Test(config, boolean_flag_takes_following_bool_word)
{
	write_file("pikod.conf",
	           "upstream = { auth = { disable_disconnect_on_expiry = true; }; };\n");
	cr_assert_eq(
	    load_args((const char *[]){"-c", conf, "--upstream.auth.disable-disconnect-on-expiry",
	                               "false", NULL}),
	    0, "%s", err);
	cr_expect_eq(cfg.upstream.auth.disable_disconnect_on_expiry, 0);
}

Test(config, list_flag_is_comma_separated)
{
	cr_assert_eq(load_args((const char *[]){"--cluster.join", "a:8003, b:8003,c", NULL}), 0,
	             "%s", err);
	cr_assert_eq(cfg.cluster_join.count, 3);
	cr_expect_str_eq(cfg.cluster_join.items[0], "a:8003");
	cr_expect_str_eq(cfg.cluster_join.items[1], "b:8003");
	cr_expect_str_eq(cfg.cluster_join.items[2], "c");
	cr_expect_null(cfg.cluster_join.items[3]);
}

Test(config, list_flag_replaces_file_list_then_appends)
{
	write_file("pikod.conf", "cluster = { join = [\"file:8003\"]; };\n");
	cr_assert_eq(load_args((const char *[]){"--cluster.join", "a", "-c", conf, "--cluster.join",
	                                        "b", NULL}),
	             0, "%s", err);
	cr_assert_eq(cfg.cluster_join.count, 2);
	cr_expect_str_eq(cfg.cluster_join.items[0], "a");
	cr_expect_str_eq(cfg.cluster_join.items[1], "b");
}

Test(config, empty_list_flag_clears_list)
{
	write_file("pikod.conf", "log = { subsystems = [\"proxy\"]; };\n");
	cr_assert_eq(load_args((const char *[]){"-c", conf, "--log.subsystems=", NULL}), 0, "%s",
	             err);
	cr_expect_eq(cfg.log_subsystems.count, 0);
	cr_expect_null(cfg.log_subsystems.items[0]);
}

Test(config, flag_values_are_not_expanded)
{
	setenv("PK_TEST_SECRET", "s3cret", 1);
	cr_assert_eq(
	    load_args((const char *[]){"--admin.auth.hmac-secret-key", "${PK_TEST_SECRET}", NULL}),
	    0, "%s", err);
	cr_expect_str_eq(cfg.admin.auth.hmac_secret_key, "${PK_TEST_SECRET}");
}

Test(config, flag_bad_integer)
{
	cr_assert_eq(load_args((const char *[]){"--workers", "two", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--workers: expected an integer, got \"two\"");
}

Test(config, flag_integer_out_of_range)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.http.max-header-bytes=99999999", NULL}),
	             -EINVAL);
	cr_expect_str_eq(err, "--proxy.http.max-header-bytes: must be between 1024 and 16777216, "
	                      "got \"99999999\"");
}

Test(config, flag_bad_duration)
{
	cr_assert_eq(load_args((const char *[]){"--grace-period", "1.5s", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--grace-period: invalid duration \"1.5s\" (use e.g. 500ms, 30s, 5m, "
	                      "1h)");
}

Test(config, flag_bad_boolean)
{
	cr_assert_eq(
	    load_args((const char *[]){"--upstream.auth.disable-disconnect-on-expiry=maybe", NULL}),
	    -EINVAL);
	cr_expect_str_eq(err, "--upstream.auth.disable-disconnect-on-expiry: expected true or "
	                      "false, got \"maybe\"");
}

Test(config, flag_bad_address)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.bind-addr", "a b:1", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--proxy.bind-addr: invalid address \"a b:1\" (use host:port, :port "
	                      "or [v6]:port)");
}

Test(config, flag_bad_list_item)
{
	cr_assert_eq(load_args((const char *[]){"--cluster.join", "a:1,,b", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--cluster.join: empty list item");
}

Test(config, flag_missing_value)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.timeout", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--proxy.timeout: missing value");
}

Test(config, config_flag_missing_value)
{
	cr_assert_eq(load_args((const char *[]){"--config", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--config: missing value");
}

Test(config, unknown_flag_suggests_closest)
{
	cr_assert_eq(load_args((const char *[]){"--proxy.bind-adr", ":1", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--proxy.bind-adr: unknown flag (did you mean --proxy.bind-addr?)");
}

Test(config, underscore_flag_suggests_dashes)
{
	cr_assert_eq(
	    load_args((const char *[]){"--upstream.auth.disable_disconnect_on_expiry", NULL}),
	    -EINVAL);
	cr_expect_str_eq(err, "--upstream.auth.disable_disconnect_on_expiry: unknown flag (did you "
	                      "mean --upstream.auth.disable-disconnect-on-expiry?)");
}

Test(config, unknown_flag_without_suggestion)
{
	cr_assert_eq(load_args((const char *[]){"--frobnicate", NULL}), -EINVAL);
	cr_expect_str_eq(err, "--frobnicate: unknown flag");
}

Test(config, unknown_single_dash_flag)
{
	cr_assert_eq(load_args((const char *[]){"-workers", "2", NULL}), -EINVAL);
	cr_expect_str_eq(err, "-workers: unknown flag (did you mean --workers?)");
}

Test(config, positional_argument_rejected)
{
	cr_assert_eq(load_args((const char *[]){"--workers", "2", "serve", NULL}), -EINVAL);
	cr_expect_str_eq(err,
	                 "unexpected argument \"serve\" (pikod takes no positional arguments)");
}

Test(config, argument_after_double_dash_rejected)
{
	cr_assert_eq(load_args((const char *[]){"--", "x", NULL}), -EINVAL);
	cr_expect_str_eq(err, "unexpected argument \"x\" (pikod takes no positional arguments)");
}

Test(config, tls_pair_error_names_flags)
{
	const char *cert = write_file("cert.pem", "x");
	cr_assert_eq(load_args((const char *[]){"--proxy.tls.cert", cert, NULL}), -EINVAL);
	cr_expect_str_eq(err, "--proxy.tls.cert: set without --proxy.tls.key");
}

Test(config, flag_completes_tls_pair_from_file)
{
	char cert[256], text[512];
	snprintf(cert, sizeof(cert), "%s", write_file("cert.pem", "x"));
	const char *key = write_file("key.pem", "x");
	snprintf(text, sizeof(text), "proxy = { tls = { cert = \"%s\"; }; };\n", cert);
	write_file("pikod.conf", text);
	cr_assert_eq(load_args((const char *[]){"-c", conf, "--proxy.tls.key", key, NULL}), 0, "%s",
	             err);
	cr_expect_str_eq(cfg.proxy.tls.key, key);
}

/* ---- the extra callback ---- */

struct seen {
	char names[4][32];
	char values[4][32];
	int n;
};

static int extra_cb(void *ud, const char *name, const char *value)
{
	struct seen *s = ud;
	if (s->n < 4) {
		snprintf(s->names[s->n], 32, "%s", name);
		snprintf(s->values[s->n], 32, "%s", value != NULL ? value : "(null)");
		s->n++;
	}
	if (strcmp(name, "help") == 0 || strcmp(name, "check") == 0 || strcmp(name, "h") == 0)
		return 2;
	if (strcmp(name, "child-role") == 0)
		return strcmp(value, "bad") == 0 ? -1 : 1;
	return 0;
}

static int load_extra(const char **args, struct seen *s)
{
	char *argv[16] = {"pikod"};
	int argc = 1;
	for (; args[argc - 1] != NULL; argc++)
		argv[argc] = (char *)args[argc - 1];
	return pk_config_load(&cfg, argc, argv, extra_cb, s, err);
}

Test(config, extra_consumes_flag_with_value)
{
	struct seen s = {0};
	cr_assert_eq(
	    load_extra((const char *[]){"--child-role", "worker", "--workers", "2", NULL}, &s), 0,
	    "%s", err);
	cr_assert_eq(s.n, 1);
	cr_expect_str_eq(s.names[0], "child-role");
	cr_expect_str_eq(s.values[0], "worker");
	cr_expect_eq(cfg.workers, 2);
}

Test(config, extra_bare_flag_leaves_next_argument)
{
	struct seen s = {0};
	cr_assert_eq(load_extra((const char *[]){"--check", "--workers", "3", "-h", NULL}, &s), 0,
	             "%s", err);
	cr_assert_eq(s.n, 2);
	cr_expect_str_eq(s.names[0], "check");
	cr_expect_str_eq(s.values[0], "--workers");
	cr_expect_str_eq(s.names[1], "h");
	cr_expect_str_eq(s.values[1], "(null)");
	cr_expect_eq(cfg.workers, 3);
}

Test(config, extra_equals_value)
{
	struct seen s = {0};
	cr_assert_eq(load_extra((const char *[]){"--child-role=admin", NULL}, &s), 0, "%s", err);
	cr_expect_str_eq(s.values[0], "admin");
}

Test(config, extra_bare_flag_given_a_value)
{
	struct seen s = {0};
	cr_assert_eq(load_extra((const char *[]){"--help=yes", NULL}, &s), -EINVAL);
	cr_expect_str_eq(err, "--help: takes no value");
}

Test(config, extra_rejects_value)
{
	struct seen s = {0};
	cr_assert_eq(load_extra((const char *[]){"--child-role", "bad", NULL}, &s), -EINVAL);
	cr_expect_str_eq(err, "--child-role: invalid value");
}

Test(config, extra_runs_even_when_file_is_bad)
{
	struct seen s = {0};
	write_file("pikod.conf", "bogus = 1;\n");
	cr_assert_eq(load_extra((const char *[]){"--help", "-c", conf, NULL}, &s), -EINVAL);
	cr_expect_eq(s.n, 1);
	cr_expect_str_eq(s.names[0], "help");
}

/* ---- writing and reading back ---- */

static char *write_to_string(const struct pk_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	cr_assert_not_null(f);
	cr_assert_eq(pk_config_write(c, f), 0);
	fclose(f);
	return buf;
}

Test(config, round_trip_defaults)
{
	struct pk_config back;
	char *text = write_to_string(&cfg);
	cr_assert_eq(pk_config_init(&back), 0);
	cr_assert_eq(pk_config_load_string(&back, text, "written", err), 0, "%s\n%s", err, text);
	cr_expect(pk_config_equal(&cfg, &back), "%s", text);
	pk_config_free(&back);
	free(text);
}

Test(config, round_trip_every_key_set)
{
	char *rsa = make_pubkey("RSA"), *ec = make_pubkey("EC");
	char cert[256], key[256], ca[256];
	snprintf(cert, sizeof(cert), "%s", write_file("cert with \"quote\".pem", "x"));
	snprintf(key, sizeof(key), "%s", write_file("key\\back$slash.pem", "x"));
	snprintf(ca, sizeof(ca), "%s", write_file("ca.pem", "x"));
	const char *ports[] = {"proxy", "upstream", "admin"};
	const char *all_ports[] = {"proxy", "upstream", "admin", "cluster"};
	const char *args[128];
	char flags[64][64];
	int n = 0, nf = 0;
#define ARG(flag, value) (args[n++] = (flag), args[n++] = (value))
	for (int i = 0; i < 3; i++) {
		snprintf(flags[nf], 64, "--%s.auth.hmac-secret-key", ports[i]);
		ARG(flags[nf++], "se\"cr\\et ${NOT_EXPANDED} $$ \t\n end");
		snprintf(flags[nf], 64, "--%s.auth.rsa-public-key", ports[i]);
		ARG(flags[nf++], rsa);
		snprintf(flags[nf], 64, "--%s.auth.ecdsa-public-key", ports[i]);
		ARG(flags[nf++], ec);
		snprintf(flags[nf], 64, "--%s.auth.audience", ports[i]);
		ARG(flags[nf++], ports[i]);
		snprintf(flags[nf], 64, "--%s.auth.issuer", ports[i]);
		ARG(flags[nf++], "issuer \xc3\xa9");
	}
	for (int i = 0; i < 4; i++) {
		snprintf(flags[nf], 64, "--%s.tls.cert", all_ports[i]);
		ARG(flags[nf++], cert);
		snprintf(flags[nf], 64, "--%s.tls.key", all_ports[i]);
		ARG(flags[nf++], key);
		snprintf(flags[nf], 64, "--%s.tls.client-cas", all_ports[i]);
		ARG(flags[nf++], ca);
	}
	ARG("--workers", "9");
	ARG("--state-dir", "/srv/$HOME/pikod");
	ARG("--grace-period", "1h2m3s4ms");
	ARG("--proxy.bind-addr", "[::1]:1");
	ARG("--proxy.timeout", "0");
	ARG("--proxy.upstream-wait", "2s");
	ARG("--proxy.http.max-header-bytes", "16777216");
	ARG("--proxy.http.read-header-timeout", "1ms");
	ARG("--proxy.http.idle-timeout", "48h");
	ARG("--upstream.bind-addr", "0.0.0.0:2");
	ARG("--admin.bind-addr", ":0");
	ARG("--cluster.bind-addr", "localhost:4");
	ARG("--cluster.advertise-addr", "10.0.0.1:8003");
	ARG("--cluster.node-id", "node-1");
	ARG("--cluster.node-id-prefix", "eu.west_");
	ARG("--cluster.join", "a:8003,b,[::1]:8003");
	ARG("--log.level", "error");
	ARG("--log.subsystems", "proxy,cluster.log");
	args[n++] = "--upstream.auth.disable-disconnect-on-expiry";
	args[n] = NULL;
#undef ARG
	cr_assert_eq(load_args(args), 0, "%s", err);

	struct pk_config back, fresh;
	char *text = write_to_string(&cfg);
	cr_assert_eq(pk_config_init(&fresh), 0);
	cr_expect_not(pk_config_equal(&cfg, &fresh), "a default survived");
	cr_assert_eq(pk_config_init(&back), 0);
	cr_assert_eq(pk_config_load_string(&back, text, "written", err), 0, "%s\n%s", err, text);
	cr_expect(pk_config_equal(&cfg, &back), "%s", text);
	cr_expect_str_eq(back.proxy.auth.hmac_secret_key, "se\"cr\\et ${NOT_EXPANDED} $$ \t\n end");
	cr_expect_str_eq(back.upstream.tls.key, key);
	pk_config_free(&back);
	pk_config_free(&fresh);
	free(text);
	free(rsa);
	free(ec);
}

Test(config, written_document_is_grouped)
{
	char *text = write_to_string(&cfg);
	cr_expect_not_null(strstr(text, "proxy = {\n  bind_addr = \":8000\";\n"), "%s", text);
	cr_expect_not_null(strstr(text, "  http = {\n    max_header_bytes = 1048576;\n"), "%s",
	                   text);
	cr_expect_null(strstr(text, "hmac_secret_key"), "unset key written:\n%s", text);
	free(text);
}

Test(config, equal_detects_each_kind_of_difference)
{
	struct pk_config other;
	cr_assert_eq(pk_config_init(&other), 0);
	cr_expect(pk_config_equal(&cfg, &other));
	other.proxy_idle_timeout_ms++;
	cr_expect_not(pk_config_equal(&cfg, &other));
	pk_config_free(&other);

	cr_assert_eq(pk_config_init(&other), 0);
	cr_assert_eq(pk_config_load_string(&other, "cluster = { join = [\"x\"]; };", "s", err), 0);
	cr_expect_not(pk_config_equal(&cfg, &other));
	pk_config_free(&other);

	cr_assert_eq(pk_config_init(&other), 0);
	cr_assert_eq(
	    pk_config_load_string(&other, "admin = { auth = { issuer = \"i\"; }; };", "s", err), 0);
	cr_expect_not(pk_config_equal(&cfg, &other));
	pk_config_free(&other);
}

/* ---- usage ---- */

Test(config, usage_lists_every_flag_with_default)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	pk_config_usage(f);
	fclose(f);
	static const char *const want[] = {
	    "-c, --config FILE",
	    "--workers INT",
	    "(default: 0)",
	    "--proxy.bind-addr ADDR",
	    "(default: :8000)",
	    "--proxy.http.max-header-bytes BYTES",
	    "(default: 1048576)",
	    "--admin.bind-addr ADDR",
	    "(default: 127.0.0.1:8002)",
	    "--upstream.auth.disable-disconnect-on-expiry [BOOL]",
	    "--cluster.tls.client-cas PATH",
	    "--cluster.join ADDR,...",
	    "--log.level LEVEL",
	    "(default: info)",
	    "(default: 5m)",
	    "\nLogging:\n",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_expect_not_null(strstr(buf, want[i]), "missing \"%s\"", want[i]);
	free(buf);
}

/* ---- the packaged example ---- */

/* packaging/pikod.conf documents every key at its default: it must load and equal the
 * built-in defaults. Run from the project root, as `make unit-test` does. */
Test(config, packaged_example_is_the_defaults)
{
	struct pk_config fresh;
	cr_assert_eq(load_args((const char *[]){"--config", "packaging/pikod.conf", NULL}), 0, "%s",
	             err);
	cr_assert_eq(pk_config_init(&fresh), 0);
	cr_expect(pk_config_equal(&cfg, &fresh));
	pk_config_free(&fresh);
}
