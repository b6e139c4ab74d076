/* systemd notifications (sd_notify). Every call is a no-op without NOTIFY_SOCKET, so pikod
 * runs the same under systemd, in a container, or in a terminal. */
#ifndef PK_NOTIFY_H
#define PK_NOTIFY_H

void pk_notify_ready(const char *status);
void pk_notify_reloading(void); /* RELOADING=1 + MONOTONIC_USEC */
void pk_notify_stopping(void);
void pk_notify_status(const char *status);

#endif
