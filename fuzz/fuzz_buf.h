/*
 * fuzz_buf.h: the growing output buffer of the fuzz targets whose code under test emits its
 * output in pieces (the body rewriters, the decryption scanner).
 */
#ifndef EVS_FUZZ_BUF_H
#define EVS_FUZZ_BUF_H

#include <stdlib.h>
#include <string.h>

/* Appends p[0..n) to *buf (*len bytes used, *cap allocated). An empty piece traps: the emit
 * callbacks under test never pass one. */
static inline void fuzz_buf_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n) {
  if (n == 0) __builtin_trap();
  if (*len + n > *cap) {
    *cap = (*len + n) * 2;
    *buf = realloc(*buf, *cap);
    if (!*buf) abort();
  }
  memcpy(*buf + *len, p, n);
  *len += n;
}

#endif
