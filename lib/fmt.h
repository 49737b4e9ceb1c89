/*
 * Small appenders that build heads, keys, IDs and records on the request path (core's server.c,
 * upstream.c, proxy.c; the cage front's transaction record).
 *
 * snprintf parses its format on every call, and with ten calls a request that was a third of the
 * proxy's user-space instructions (docs/performance.md). Each appender writes at p, without a NUL,
 * and returns the new end. The caller has sized the buffer: these never check.
 */
#ifndef EVS_LIB_FMT_H
#define EVS_LIB_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline char *evs__fmt_mem(char *p, const void *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

static inline char *evs__fmt_str(char *p, const char *s) { return evs__fmt_mem(p, s, strlen(s)); }

/* A string literal: its length is known at compile time. */
#define EVS__FMT_LIT(p, lit) evs__fmt_mem((p), "" lit, sizeof(lit) - 1)

/* Decimal; at most 20 bytes. */
static inline char *evs__fmt_u64(char *p, uint64_t v) {
  char t[20];
  size_t n = 0;
  do {
    t[n++] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  while (n) *p++ = t[--n];
  return p;
}

/* Decimal with a sign; at most 20 bytes. */
static inline char *evs__fmt_i64(char *p, int64_t v) {
  if (v >= 0) return evs__fmt_u64(p, (uint64_t)v);
  *p++ = '-';
  return evs__fmt_u64(p, (uint64_t)0 - (uint64_t)v);
}

/* Lower-case hex, zero-padded to at least min_digits (at most 16); at most 16 bytes. */
static inline char *evs__fmt_hex(char *p, uint64_t v, unsigned min_digits) {
  char t[16];
  unsigned n = 0;
  do {
    t[n++] = "0123456789abcdef"[v & 15u];
    v >>= 4;
  } while (v);
  while (n < min_digits && n < sizeof t) t[n++] = '0';
  while (n) *p++ = t[--n];
  return p;
}

#endif
