/* Structured logging: one JSON object per line on stderr.
 *
 *   {"ts":"2026-11-27T22:53:28.123Z","level":"info","subsystem":"supervisor",
 *    "msg":"child exited","pid":123,"slot":2,"status":1}
 *
 * Fields are given as a small format: space-separated `key=%conv` pairs, where conv is
 * one of d i u ld lu lld llu zd zu x s g. `%s` values are JSON-escaped strings (NULL is
 * written as null); the others are numbers. Example:
 *
 *   pk_log_info("supervisor", "child exited", "slot=%d pid=%d reason=%s", s, p, why);
 *
 * Filtering: a record is written when its level is at or above the configured level, or
 * when its subsystem (or a dotted parent of it: "proxy" covers "proxy.access") is in the
 * debug-subsystem list, which enables every level for it (as Piko's --log.subsystems).
 */
#ifndef PK_LOG_H
#define PK_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum pk_log_level {
	PK_LOG_DEBUG = 0,
	PK_LOG_INFO = 1,
	PK_LOG_WARN = 2,
	PK_LOG_ERROR = 3,
};

/* Parses "debug", "info", "warn"/"warning", "error". Returns the level or -1. */
int pk_log_level_parse(const char *name);
const char *pk_log_level_name(enum pk_log_level level);

/* Sets the minimum level and the subsystems logged at every level (a NULL-terminated
 * array of strings, copied; NULL for none). Not thread-safe; call at start-up. */
void pk_log_setup(enum pk_log_level level, const char *const *debug_subsystems);

/* Sets a process-wide field written into every record, e.g. "role=%s slot=%d".
 * The rendered text is copied. Pass NULL to clear. */
void pk_log_set_context(const char *fields_fmt, ...) __attribute__((format(printf, 1, 2)));

/* Whether a record of this level and subsystem would be written. */
int pk_log_enabled(enum pk_log_level level, const char *subsystem);

void pk_log(enum pk_log_level level, const char *subsystem, const char *msg, const char *fields_fmt,
            ...) __attribute__((format(printf, 4, 5)));
void pk_logv(enum pk_log_level level, const char *subsystem, const char *msg,
             const char *fields_fmt, va_list ap);

/* Writes a record whose fields are given pre-rendered: `json_fields` is either empty or
 * a sequence of `,"key":value` pairs (valid JSON, built with pk_json_escape), for records
 * whose keys are only known at run time (the access log's headers). */
void pk_log_raw(enum pk_log_level level, const char *subsystem, const char *msg,
                const char *json_fields);

/* Batching, for a process that writes a record per request and has a loop to flush from
 * (the piko agent's access log). With it on, records below warning level are gathered, whole,
 * in a buffer of PIPE_BUF bytes (so one write of them stays atomic on a pipe). The buffer is
 * written when the next record would not fit, before any warning or error, on
 * pk_log_flush() and at exit. A crash loses what is gathered. Turning it off flushes. */
void pk_log_batch(int on);
void pk_log_flush(void);

/* Writes src[0..len) as a JSON string (with quotes) into dst; returns the length it needs
 * (snprintf semantics: truncated output is NUL-terminated but incomplete). */
size_t pk_json_escape(char *dst, size_t size, const char *src, size_t len);

/* Renders one record (without the trailing newline) into buf; returns the length that
 * would have been written (like snprintf). Exposed for tests. */
int pk_log_render(char *buf, unsigned long size, enum pk_log_level level, const char *subsystem,
                  const char *msg, const char *fields_fmt, va_list ap);

#define pk_log_debug(sub, msg, ...) pk_log(PK_LOG_DEBUG, sub, msg, __VA_ARGS__)
#define pk_log_info(sub, msg, ...)  pk_log(PK_LOG_INFO, sub, msg, __VA_ARGS__)
#define pk_log_warn(sub, msg, ...)  pk_log(PK_LOG_WARN, sub, msg, __VA_ARGS__)
#define pk_log_error(sub, msg, ...) pk_log(PK_LOG_ERROR, sub, msg, __VA_ARGS__)

#endif
