#include "common/log.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int render(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = pk_log_render(buf, size, PK_LOG_WARN, "proxy.access", "hello \"you\"", fmt, ap);
	va_end(ap);
	return n;
}

Test(log, renders_fields_as_json)
{
	char buf[512];
	render(buf, sizeof(buf), "slot=%d name=%s big=%llu neg=%ld sz=%zu", 3, "a\"b\\c\n",
	       18446744073709551615ULL, -7L, (size_t)42);
	cr_assert(strstr(buf, "\"level\":\"warn\"") != NULL, "%s", buf);
	cr_assert(strstr(buf, "\"subsystem\":\"proxy.access\"") != NULL, "%s", buf);
	cr_assert(strstr(buf, "\"msg\":\"hello \\\"you\\\"\"") != NULL, "%s", buf);
	cr_assert(strstr(buf,
	                 ",\"slot\":3,\"name\":\"a\\\"b\\\\c\\n\",\"big\":18446744073709551615,"
	                 "\"neg\":-7,\"sz\":42}") != NULL,
	          "%s", buf);
	cr_assert(strncmp(buf, "{\"ts\":\"", 7) == 0);
}

Test(log, null_string_is_json_null_and_control_chars_escaped)
{
	char buf[256];
	render(buf, sizeof(buf), "a=%s b=%s", (const char *)NULL, "\x01x");
	cr_assert(strstr(buf, "\"a\":null,\"b\":\"\\u0001x\"") != NULL, "%s", buf);
}

Test(log, reports_full_length_when_truncated)
{
	char small[16];
	char big[512];
	int n = render(small, sizeof(small), "k=%s", "value");
	int m = render(big, sizeof(big), "k=%s", "value");
	cr_assert_eq(n, m);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
}

Test(log, level_names_parse)
{
	cr_assert_eq(pk_log_level_parse("debug"), PK_LOG_DEBUG);
	cr_assert_eq(pk_log_level_parse("warning"), PK_LOG_WARN);
	cr_assert_eq(pk_log_level_parse("error"), PK_LOG_ERROR);
	cr_assert_eq(pk_log_level_parse("loud"), -1);
	cr_assert_eq(pk_log_level_parse(NULL), -1);
}

Test(log, subsystems_enable_every_level_for_themselves_and_children)
{
	const char *subs[] = {"proxy", NULL};
	pk_log_setup(PK_LOG_WARN, subs);
	cr_assert(pk_log_enabled(PK_LOG_DEBUG, "proxy"));
	cr_assert(pk_log_enabled(PK_LOG_DEBUG, "proxy.access"));
	cr_assert_not(pk_log_enabled(PK_LOG_DEBUG, "proxyx"));
	cr_assert_not(pk_log_enabled(PK_LOG_INFO, "admin"));
	cr_assert(pk_log_enabled(PK_LOG_ERROR, "admin"));
	pk_log_setup(PK_LOG_INFO, NULL);
	cr_assert_not(pk_log_enabled(PK_LOG_DEBUG, "proxy"));
}

Test(log, context_fields_appear_in_every_record)
{
	char buf[512];
	pk_log_set_context("role=%s slot=%d", "worker", 2);
	render(buf, sizeof(buf), "x=%d", 1);
	pk_log_set_context(NULL);
	cr_assert(strstr(buf, ",\"role\":\"worker\",\"slot\":2,\"x\":1}") != NULL, "%s", buf);
}

Test(log, json_escape_quotes_and_controls)
{
	char buf[64];
	size_t n = pk_json_escape(buf, sizeof(buf), "a\"b\n\x02", 5);
	cr_assert_str_eq(buf, "\"a\\\"b\\n\\u0002\"");
	cr_assert_eq(n, strlen(buf));
	char small[4];
	n = pk_json_escape(small, sizeof(small), "abcdef", 6);
	cr_assert_eq(n, 8);
	cr_assert_eq(strlen(small), 3);
}

Test(log, pid_field_is_the_callers_even_after_fork)
{
	char buf[256];
	render(buf, sizeof(buf), "x=%d", 1); /* caches the parent's pid */
	int p[2];
	cr_assert_eq(pipe(p), 0);
	pid_t child = fork();
	if (child == 0) {
		char line[256], want[64];
		render(line, sizeof(line), "x=%d", 1);
		snprintf(want, sizeof(want), "\"pid\":%ld,", (long)getpid());
		_exit(strstr(line, want) ? 0 : 1);
	}
	int st;
	cr_assert_eq(waitpid(child, &st, 0), child);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child logged its parent's pid");
}

/* ---- batched output ---- */

static int err_pipe = -1;

/* Points stderr at a non-blocking pipe (each Criterion test runs in its own process). */
static void capture_stderr(void)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
	cr_assert_eq(fcntl(p[1], F_SETPIPE_SZ, 1 << 20) > 0, 1);
	cr_assert_eq(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
	close(p[1]);
	err_pipe = p[0];
}

/* One read of what is in the pipe now: its length, or 0 when there is nothing. */
static size_t read_now(char *buf, size_t size)
{
	ssize_t n = read(err_pipe, buf, size - 1);
	if (n < 0) {
		cr_assert_eq(errno, EAGAIN);
		n = 0;
	}
	buf[n] = '\0';
	return (size_t)n;
}

/* stderr captured, info records logged, batching on. */
static void start_batching(void)
{
	capture_stderr();
	pk_log_setup(PK_LOG_INFO, NULL);
	pk_log_batch(1);
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

Test(log_batch, records_wait_for_the_flush_and_keep_their_order)
{
	static char buf[1 << 16];
	start_batching();
	pk_log_info("t", "first", "n=%d", 1);
	pk_log_info("t", "second", "n=%d", 2);
	pk_log_debug("t", "not logged", "n=%d", 3);
	cr_assert_eq(read_now(buf, sizeof(buf)), 0, "written before the flush: %s", buf);
	pk_log_flush();
	read_now(buf, sizeof(buf));
	cr_assert_eq(count_lines(buf), 2, "%s", buf);
	char *a = strstr(buf, "\"msg\":\"first\""), *b = strstr(buf, "\"msg\":\"second\"");
	cr_assert(a && b && a < b, "%s", buf);
	pk_log_flush(); /* nothing gathered: writes nothing */
	cr_assert_eq(read_now(buf, sizeof(buf)), 0);
}

Test(log_batch, a_warning_goes_out_at_once_after_what_was_gathered)
{
	static char buf[1 << 16];
	start_batching();
	pk_log_info("t", "gathered", NULL);
	pk_log_warn("t", "urgent", NULL);
	read_now(buf, sizeof(buf));
	cr_assert_eq(count_lines(buf), 2, "%s", buf);
	char *a = strstr(buf, "\"msg\":\"gathered\""), *b = strstr(buf, "\"msg\":\"urgent\"");
	cr_assert(a && b && a < b, "%s", buf);
}

Test(log_batch, a_full_buffer_is_written_in_whole_lines_of_at_most_pipe_buf)
{
	static char buf[1 << 16];
	char pad[200];
	start_batching();
	memset(pad, 'x', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	unsigned logged = 0;
	size_t first = 0;
	while (first == 0 && logged < 1000) {
		pk_log_info("t", "fill", "pad=%s i=%u", pad, logged);
		logged++;
		first = read_now(buf, sizeof(buf));
	}
	cr_assert_gt(first, 0, "nothing written after %u records", logged);
	cr_assert_leq(first, PIPE_BUF);
	cr_assert_eq(buf[first - 1], '\n', "a record was cut");
	unsigned lines = count_lines(buf);
	cr_assert_eq(lines, logged - 1, "the record that did not fit stays gathered");
	pk_log_flush();
	read_now(buf, sizeof(buf));
	cr_assert_eq(count_lines(buf), 1);
	char want[32];
	snprintf(want, sizeof(want), "\"i\":%u}", logged - 1);
	cr_assert(strstr(buf, want) != NULL, "%s", buf);
}

Test(log_batch, turned_off_it_flushes_and_writes_each_record_at_once)
{
	static char buf[1 << 16];
	start_batching();
	pk_log_info("t", "gathered", NULL);
	pk_log_batch(0);
	read_now(buf, sizeof(buf));
	cr_assert_eq(count_lines(buf), 1, "%s", buf);
	pk_log_info("t", "direct", NULL);
	read_now(buf, sizeof(buf));
	cr_assert(strstr(buf, "\"msg\":\"direct\""), "%s", buf);
}
