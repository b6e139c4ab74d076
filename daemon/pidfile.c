#include "daemon/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int pk__mkdir_p(const char *dir)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);
	if (len == 0 || len >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, len + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int pk_pidfile_acquire(const char *state_dir, long *other_pid, char *err, size_t errlen)
{
	char path[PATH_MAX];
	int rc = pk__mkdir_p(state_dir);
	if (rc < 0) {
		snprintf(err, errlen, "state_dir %s: %s", state_dir, strerror(-rc));
		return rc;
	}
	snprintf(path, sizeof(path), "%s/pikod.pid", state_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EEXIST : -errno;
		char buf[32] = {0};
		*other_pid = 0;
		if (pread(fd, buf, sizeof(buf) - 1, 0) > 0)
			*other_pid = strtol(buf, NULL, 10);
		if (rc == -EEXIST)
			snprintf(err, errlen,
			         "another pikod (pid %ld) is running with state_dir %s; stop it or "
			         "use another --state-dir",
			         *other_pid, state_dir);
		else
			snprintf(err, errlen, "lock %s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		rc = -errno;
		snprintf(err, errlen, "write %s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	return fd;
}

void pk_pidfile_release(const char *state_dir, int fd)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/pikod.pid", state_dir);
	unlink(path);
	close(fd);
}
