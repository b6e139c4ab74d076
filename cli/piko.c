/* piko: the agent (piko agent http|tcp|start) and the forwarder (piko forward tcp).
 *
 * This build only knows --version and --help: agent and forward come with the client work
 * (see the open issues). */
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
	fprintf(out, "Usage: piko COMMAND [options]\n"
		     "\n"
		     "  --help       this text\n"
		     "  --version    print the version\n"
		     "\n"
		     "No command is available in this build yet; see docs/operations.md.\n");
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("piko %s\n", PK_VERSION);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2)
		fprintf(stderr, "piko: unknown command \"%s\"\n", argv[1]);
	usage(stderr);
	return 2;
}
