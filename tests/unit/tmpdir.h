/* Temporary directories for unit tests: make one, and remove it with everything in it. */
#ifndef PK_TEST_TMPDIR_H
#define PK_TEST_TMPDIR_H

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Removes dir and everything below it; a missing dir is fine. */
static inline void rm_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX];

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		int n = snprintf(p, sizeof(p), "%.2000s/%.255s", dir, e->d_name);
		if (n < 0 || (size_t)n >= sizeof(p))
			continue;
		if (e->d_type == DT_DIR)
			rm_tree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

#endif
