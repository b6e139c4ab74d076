#include "daemon/notify.h"

#include "common/log.h"

#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

static void pk__notify(const char *fmt_state)
{
	int rc = sd_notify(0, fmt_state);
	if (rc < 0)
		pk_log_warn("supervisor", "sd_notify failed", "error=%d", rc);
}

void pk_notify_ready(const char *status)
{
	char buf[600];
	if (status)
		snprintf(buf, sizeof(buf), "READY=1\nMAINPID=%ld\nSTATUS=%.500s", (long)getpid(),
		         status);
	else
		snprintf(buf, sizeof(buf), "READY=1\nMAINPID=%ld", (long)getpid());
	pk__notify(buf);
}

void pk_notify_reloading(void)
{
	struct timespec ts;
	char buf[128];
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
	         (unsigned long long)ts.tv_sec * 1000000ULL +
	             (unsigned long long)ts.tv_nsec / 1000);
	pk__notify(buf);
}

void pk_notify_stopping(void)
{
	pk__notify("STOPPING=1\nSTATUS=stopping");
}

void pk_notify_status(const char *status)
{
	char buf[600];
	snprintf(buf, sizeof(buf), "STATUS=%.500s", status);
	pk__notify(buf);
}
