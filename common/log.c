#include "common/log.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PK__LOG_MAX_SUBSYSTEMS 32
#define PK__LOG_LINE_MAX       8192

static enum pk_log_level pk__log_min = PK_LOG_INFO;
static char *pk__log_subsystems[PK__LOG_MAX_SUBSYSTEMS];
static int pk__log_nsubsystems;
static char pk__log_context[512];
static const char *pk__raw_fields; /* set only during pk_log_raw */
static long pk__pid;               /* cached: getpid() is a system call per record */

/* Batched output (pk_log_batch): records below warning level, whole lines, written together. */
static int pk__batch_on;
static char pk__batch_buf[PIPE_BUF];
static size_t pk__batch_len;

static void pk__write_all(const char *p, size_t n)
{
	for (size_t off = 0; off < n;) {
		ssize_t w = write(STDERR_FILENO, p + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
}

void pk_log_flush(void)
{
	int saved = errno;
	size_t n = pk__batch_len;

	pk__batch_len = 0;
	pk__write_all(pk__batch_buf, n);
	errno = saved;
}

static void pk__batch_forget(void)
{
	pk__batch_len = 0; /* the parent writes those */
}

void pk_log_batch(int on)
{
	static int registered;

	if (!on)
		pk_log_flush();
	else if (!registered) {
		registered = 1;
		atexit(pk_log_flush);
		pthread_atfork(NULL, NULL, pk__batch_forget);
	}
	pk__batch_on = on;
}

static void pk__forget_pid(void)
{
	pk__pid = 0;
}

static long pk__getpid(void)
{
	if (pk__pid == 0) {
		static int registered;
		if (!registered) {
			registered = 1;
			pthread_atfork(NULL, NULL, pk__forget_pid); /* a forked child has its own */
		}
		pk__pid = (long)getpid();
	}
	return pk__pid;
}

static const char *const pk__level_names[] = {"debug", "info", "warn", "error"};

int pk_log_level_parse(const char *name)
{
	if (name == NULL)
		return -1;
	for (int i = 0; i < 4; i++)
		if (strcmp(name, pk__level_names[i]) == 0)
			return i;
	if (strcmp(name, "warning") == 0)
		return PK_LOG_WARN;
	return -1;
}

const char *pk_log_level_name(enum pk_log_level level)
{
	if ((int)level < 0 || level > PK_LOG_ERROR)
		return "info";
	return pk__level_names[level];
}

void pk_log_setup(enum pk_log_level level, const char *const *debug_subsystems)
{
	pk__log_min = level;
	for (int i = 0; i < pk__log_nsubsystems; i++)
		free(pk__log_subsystems[i]);
	pk__log_nsubsystems = 0;
	for (int i = 0; debug_subsystems && debug_subsystems[i]; i++) {
		if (pk__log_nsubsystems == PK__LOG_MAX_SUBSYSTEMS)
			break;
		char *copy = strdup(debug_subsystems[i]);
		if (copy != NULL)
			pk__log_subsystems[pk__log_nsubsystems++] = copy;
	}
}

/* "proxy" matches "proxy" and "proxy.access", not "proxyx". */
static int pk__subsystem_listed(const char *subsystem)
{
	for (int i = 0; i < pk__log_nsubsystems; i++) {
		size_t n = strlen(pk__log_subsystems[i]);
		if (strncmp(subsystem, pk__log_subsystems[i], n) == 0 &&
		    (subsystem[n] == '\0' || subsystem[n] == '.'))
			return 1;
	}
	return 0;
}

int pk_log_enabled(enum pk_log_level level, const char *subsystem)
{
	if (level >= pk__log_min)
		return 1;
	return subsystem != NULL && pk__subsystem_listed(subsystem);
}

/* A bounded writer: keeps counting past the end so callers learn the full length. */
struct pk__out {
	char *buf;
	size_t size;
	size_t len;
};

static void pk__put(struct pk__out *o, const char *s, size_t n)
{
	if (o->len < o->size) {
		size_t room = o->size - o->len;
		memcpy(o->buf + o->len, s, n < room ? n : room);
	}
	o->len += n;
}

static void pk__putc(struct pk__out *o, char c)
{
	pk__put(o, &c, 1);
}

static void pk__put_escaped_n(struct pk__out *o, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	pk__putc(o, '"');
	for (const unsigned char *p = (const unsigned char *)s; p < (const unsigned char *)s + len;
	     p++) {
		switch (*p) {
		case '"':
			pk__put(o, "\\\"", 2);
			break;
		case '\\':
			pk__put(o, "\\\\", 2);
			break;
		case '\n':
			pk__put(o, "\\n", 2);
			break;
		case '\r':
			pk__put(o, "\\r", 2);
			break;
		case '\t':
			pk__put(o, "\\t", 2);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				char u[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
				pk__put(o, u, 6);
			} else {
				pk__putc(o, (char)*p);
			}
		}
	}
	pk__putc(o, '"');
}

static void pk__put_escaped(struct pk__out *o, const char *s)
{
	if (s == NULL)
		pk__put(o, "null", 4);
	else
		pk__put_escaped_n(o, s, strlen(s));
}

size_t pk_json_escape(char *dst, size_t size, const char *src, size_t len)
{
	struct pk__out o = {dst, size, 0};
	pk__put_escaped_n(&o, src, len);
	if (size > 0)
		dst[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

static void pk__put_fmt(struct pk__out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void pk__put_fmt(struct pk__out *o, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		pk__put(o, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Renders `key=%conv key=%conv` into `,"key":value` pairs. Unknown conversions end the
 * rendering (the format is a programming contract, checked by the compiler). */
static void pk__put_fields(struct pk__out *o, const char *fmt, va_list ap)
{
	const char *p = fmt;
	while (p && *p) {
		while (*p == ' ')
			p++;
		const char *key = p;
		while (*p && *p != '=' && *p != ' ')
			p++;
		if (*p != '=' || p[1] != '%' || p == key)
			return;
		size_t keylen = (size_t)(p - key);
		p += 2;
		pk__putc(o, ',');
		pk__putc(o, '"');
		pk__put(o, key, keylen);
		pk__put(o, "\":", 2);
		if (p[0] == 's') {
			pk__put_escaped(o, va_arg(ap, const char *));
			p += 1;
		} else if (p[0] == 'd' || p[0] == 'i') {
			pk__put_fmt(o, "%d", va_arg(ap, int));
			p += 1;
		} else if (p[0] == 'u') {
			pk__put_fmt(o, "%u", va_arg(ap, unsigned));
			p += 1;
		} else if (p[0] == 'x') {
			pk__put_fmt(o, "\"0x%x\"", va_arg(ap, unsigned));
			p += 1;
		} else if (p[0] == 'g') {
			pk__put_fmt(o, "%g", va_arg(ap, double));
			p += 1;
		} else if (p[0] == 'l' && p[1] == 'l' && (p[2] == 'd' || p[2] == 'u')) {
			if (p[2] == 'd')
				pk__put_fmt(o, "%lld", va_arg(ap, long long));
			else
				pk__put_fmt(o, "%llu", va_arg(ap, unsigned long long));
			p += 3;
		} else if (p[0] == 'l' && (p[1] == 'd' || p[1] == 'u')) {
			if (p[1] == 'd')
				pk__put_fmt(o, "%ld", va_arg(ap, long));
			else
				pk__put_fmt(o, "%lu", va_arg(ap, unsigned long));
			p += 2;
		} else if (p[0] == 'z' && (p[1] == 'd' || p[1] == 'u')) {
			if (p[1] == 'd')
				pk__put_fmt(o, "%zd", va_arg(ap, ssize_t));
			else
				pk__put_fmt(o, "%zu", va_arg(ap, size_t));
			p += 2;
		} else {
			pk__put(o, "null", 4);
			return;
		}
	}
}

int pk_log_render(char *buf, unsigned long size, enum pk_log_level level, const char *subsystem,
                  const char *msg, const char *fields_fmt, va_list ap)
{
	struct pk__out o = {buf, size, 0};
	struct timespec ts;
	struct tm tm;
	char tsbuf[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(tsbuf, sizeof(tsbuf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(tsbuf + n, sizeof(tsbuf) - n, ".%03ldZ", ts.tv_nsec / 1000000);

	pk__put(&o, "{\"ts\":\"", 7);
	pk__put(&o, tsbuf, strlen(tsbuf));
	pk__put(&o, "\",\"level\":\"", 11);
	const char *lv = pk_log_level_name(level);
	pk__put(&o, lv, strlen(lv));
	pk__put(&o, "\",\"subsystem\":", 14);
	pk__put_escaped(&o, subsystem ? subsystem : "");
	pk__put(&o, ",\"msg\":", 7);
	pk__put_escaped(&o, msg ? msg : "");
	pk__put_fmt(&o, ",\"pid\":%ld", pk__getpid());
	if (pk__log_context[0] != '\0')
		pk__put(&o, pk__log_context, strlen(pk__log_context));
	if (pk__raw_fields)
		pk__put(&o, pk__raw_fields, strlen(pk__raw_fields));
	else
		pk__put_fields(&o, fields_fmt, ap);
	pk__putc(&o, '}');
	if (size > 0)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

void pk_log_set_context(const char *fields_fmt, ...)
{
	pk__log_context[0] = '\0';
	if (fields_fmt == NULL)
		return;
	struct pk__out o = {pk__log_context, sizeof(pk__log_context) - 1, 0};
	va_list ap;
	va_start(ap, fields_fmt);
	pk__put_fields(&o, fields_fmt, ap);
	va_end(ap);
	if (o.len >= sizeof(pk__log_context))
		o.len = 0; /* too long to be useful; drop rather than truncate mid-field */
	pk__log_context[o.len] = '\0';
}

void pk_logv(enum pk_log_level level, const char *subsystem, const char *msg,
             const char *fields_fmt, va_list ap)
{
	char line[PK__LOG_LINE_MAX];
	int saved = errno;

	if (!pk_log_enabled(level, subsystem))
		return;
	va_list cp;
	va_copy(cp, ap);
	int n = pk_log_render(line, sizeof(line) - 1, level, subsystem, msg, fields_fmt, cp);
	va_end(cp);
	if (n < 0)
		goto out;
	if ((size_t)n >= sizeof(line) - 1) {
		/* Over-long record: keep it valid JSON by dropping the fields. */
		n = pk_log_render(line, sizeof(line) - 1, level, subsystem, "log record truncated",
		                  NULL, ap);
		if (n < 0 || (size_t)n >= sizeof(line) - 1)
			goto out;
	}
	line[n++] = '\n';
	if (pk__batch_on && level < PK_LOG_WARN && (size_t)n <= sizeof(pk__batch_buf)) {
		if (pk__batch_len + (size_t)n > sizeof(pk__batch_buf))
			pk_log_flush();
		memcpy(pk__batch_buf + pk__batch_len, line, (size_t)n);
		pk__batch_len += (size_t)n;
		goto out;
	}
	if (pk__batch_len > 0)
		pk_log_flush(); /* what was gathered goes first */
	/* One write per record (or per batch of whole records, at most PIPE_BUF bytes) so lines
	 * from several processes never interleave. */
	pk__write_all(line, (size_t)n);
out:
	errno = saved;
}

void pk_log(enum pk_log_level level, const char *subsystem, const char *msg, const char *fields_fmt,
            ...)
{
	va_list ap;
	va_start(ap, fields_fmt);
	pk_logv(level, subsystem, msg, fields_fmt, ap);
	va_end(ap);
}

void pk_log_raw(enum pk_log_level level, const char *subsystem, const char *msg,
                const char *json_fields)
{
	pk__raw_fields = json_fields ? json_fields : "";
	pk_log(level, subsystem, msg, NULL);
	pk__raw_fields = NULL;
}
