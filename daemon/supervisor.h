/* The supervisor: owns the listeners, the configuration and the process table; forks
 * (fork+exec) the workers, the admin child and the cluster child; respawns crashed children
 * into their slot; reloads on SIGHUP without dropping connections; stops on SIGTERM.
 * It does no request I/O. */
#ifndef PK_SUPERVISOR_H
#define PK_SUPERVISOR_H

#include "daemon/config.h"

/* Runs until stopped. cfg is taken over (freed by the supervisor). argv is kept to re-read
 * the configuration on reload (file + the same flags). Returns the process exit code:
 * 0 clean stop, 1 runtime failure. */
int pk_supervisor_run(struct pk_config *cfg, int argc, char **argv);

#endif
