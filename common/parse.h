/* Small value parsers shared by pikod's config and the CLIs. Pure functions: no
 * allocation, no I/O, no locale, no name resolution. */
#ifndef PK_PARSE_H
#define PK_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Longest duration pk_parse_duration accepts: 100 years of 365 days, in ms. */
#define PK_DURATION_MAX_MS (100ULL * 365 * 24 * 3600 * 1000)

/* Durations: "250ms", "30s", "5m", "1h", "1h30m", "1m30s500ms", or a bare non-negative
 * integer meaning seconds. Units are h, m, s, ms, each at most once and in that order
 * ("30m1h" and "1s1s" are rejected). No sign, no fraction, no spaces, no overflow (the
 * total must not exceed PK_DURATION_MAX_MS). "0" and "0s" are zero.
 * Returns 0 and *ms, or -EINVAL (s is NULL, empty, malformed or too large). */
int pk_parse_duration(const char *s, uint64_t *ms);

/* Formats ms as the canonical duration string pk_parse_duration reads back: the non-zero
 * h, m, s, ms components in order ("1m30s", "250ms", "1h0m5s" is written "1h5s"), or
 * "0s" for zero. Returns the length (snprintf semantics: may exceed size - 1). */
int pk_format_duration(uint64_t ms, char *buf, size_t size);

/* A bare host: an IPv4 literal (dotted quad), an IPv6 literal without brackets, or a
 * DNS name (labels of 1-63 letters, digits and '-', not starting or ending with '-',
 * separated by '.', at most 253 chars, one trailing '.' allowed). A name made only of
 * digits and dots must be a valid IPv4 literal. Returns 0 or -EINVAL. */
int pk_parse_host(const char *s);

/* Bind/dial addresses: "host:port", ":port" (host = "" meaning every address),
 * "[v6]:port". Port 0-65535, decimal digits only; host as for pk_parse_host, except that
 * an IPv6 literal must be in brackets (and only an IPv6 literal may be). Does not
 * resolve. host gets the host without brackets (may be NULL when hostlen is 0: validate
 * only); port may be NULL.
 * Returns 0, or -EINVAL (bad syntax) / -ENAMETOOLONG (host does not fit hostlen). */
int pk_parse_addr(const char *s, char *host, size_t hostlen, uint16_t *port);

/* Integer in [min, max], decimal digits, optional leading '-' only when min < 0. No '+',
 * no spaces. Returns 0 and *out, or -EINVAL (syntax) / -ERANGE (outside [min, max],
 * including values that do not fit a long long). */
int pk_parse_int(const char *s, long long min, long long max, long long *out);

/* A byte count: decimal digits, then nothing (bytes) or a binary unit k/KiB or m/MiB
 * (case-insensitive): "1048576", "1MiB", "256k". Returns 0 and *out, or -EINVAL (syntax)
 * / -ERANGE (outside [min, max]). */
int pk_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Booleans: true/false, yes/no, on/off, 1/0 (case-insensitive). 0, or -EINVAL. */
int pk_parse_bool(const char *s, int *out);

#endif
