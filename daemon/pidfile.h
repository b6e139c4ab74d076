/* The pid file in state_dir, held under an exclusive flock for the supervisor's life, so a
 * second pikod on the same state_dir refuses to start instead of sharing its state. */
#ifndef PK_PIDFILE_H
#define PK_PIDFILE_H

#include <stddef.h>

/* Creates state_dir (0750) if needed, locks state_dir/pikod.pid and writes our pid.
 * Returns the open fd (close-on-exec, keep it open), -EEXIST when another live pikod
 * holds it (its pid in *other_pid when readable), or -errno; err gets a message. */
int pk_pidfile_acquire(const char *state_dir, long *other_pid, char *err, size_t errlen);

/* Removes the file and closes fd. */
void pk_pidfile_release(const char *state_dir, int fd);

#endif
