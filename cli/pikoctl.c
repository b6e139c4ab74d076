/* pikoctl: the operator's CLI over the admin API.
 *
 * This build only knows --version and --help: the commands (endpoints list, upstreams list,
 * cluster nodes, status, reload, token create) come with the admin API they talk to. */
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
	fprintf(out, "Usage: pikoctl COMMAND [options]\n"
		     "\n"
		     "  --help       this text\n"
		     "  --version    print the version\n"
		     "\n"
		     "No command is available in this build yet; see docs/operations.md.\n");
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("pikoctl %s\n", PK_VERSION);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2)
		fprintf(stderr, "pikoctl: unknown command \"%s\"\n", argv[1]);
	usage(stderr);
	return 2;
}
