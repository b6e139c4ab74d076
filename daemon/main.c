/* pikod: the supervisor's command line, and the door children come in through. */
#include "common/log.h"
#include "daemon/config.h"
#include "daemon/supervisor.h"
#include "workers/child.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk__main_flags {
	int check;
};

static int pk__main_extra(void *ud, const char *name, const char *value)
{
	struct pk__main_flags *f = ud;
	if (strcmp(name, "check") == 0) {
		f->check = 1;
		return 2;
	}
	return 0;
}

static void pk__usage(FILE *out)
{
	fprintf(out,
	        "Usage: pikod [--config FILE] [--KEY VALUE ...]\n"
	        "\n"
	        "pikod is a tunnel server compatible with Piko agents and clients.\n"
	        "\n"
	        "Commands:\n"
	        "  --help            this text\n"
	        "  --version         print the version and exit\n"
	        "  --check           validate the configuration and exit (0 valid, 2 invalid)\n"
	        "  --config FILE     libconfig file; every key below can also be set there\n"
	        "\n"
	        "Options (flags override the file):\n");
	pk_config_usage(out);
	fprintf(out,
	        "\nExit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.\n"
	        "Documentation: docs/configuration.md and docs/operations.md.\n");
}

int main(int argc, char **argv)
{
	struct pk__main_flags flags = {0};
	struct pk_config cfg;
	char err[PK_CONFIG_ERR_MAX];

	if (argc > 1 && strcmp(argv[1], "--role") == 0)
		pk_child_main(argc, argv);

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			pk__usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("pikod %s\n", PK_VERSION);
			return 0;
		}
	}

	if (pk_config_init(&cfg) < 0) {
		fprintf(stderr, "pikod: out of memory\n");
		return 1;
	}
	err[0] = '\0';
	if (pk_config_load(&cfg, argc, argv, pk__main_extra, &flags, err) < 0) {
		fprintf(stderr, "pikod: %s\n", err);
		fprintf(stderr, "Run 'pikod --help' for the options.\n");
		pk_config_free(&cfg);
		return 2;
	}
	const char *unsupported = pk_config_unsupported(&cfg);
	if (unsupported) {
		fprintf(
		    stderr,
		    "pikod: %s: TLS listeners are not implemented in this version; terminate TLS "
		    "in front of pikod (docs/security.md)\n",
		    unsupported);
		pk_config_free(&cfg);
		return 2;
	}
	if (flags.check) {
		printf("pikod: configuration ok%s%s\n", cfg.config_file ? ": " : "",
		       cfg.config_file ? cfg.config_file : "");
		pk_config_free(&cfg);
		return 0;
	}
	pk_log_setup(pk_log_level_parse(cfg.log_level),
	             (const char *const *)cfg.log_subsystems.items);
	return pk_supervisor_run(&cfg, argc, argv);
}
