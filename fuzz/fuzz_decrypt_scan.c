/*
 * libFuzzer target for plugins/relay-common/decrypt_scan.c. The first byte picks the
 * Content-Type (JSON, XML, urlencoded, text, multipart, raw) and the split step; the rest is the
 * body. Besides memory errors it checks: with an identity transform (each value put back as it
 * came) the output equals the input, whole and split (except where the scanner resolved an escape,
 * "\/" in JSON or %XX in a urlencoded body, which the identity cannot restore); with a marker
 * transform the output and the values do not depend on the split; every value handed over is a
 * well-formed ev: string (or a file starting with %EVENC); memory stays within the caps.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/decrypt_scan.c fuzz/fuzz_decrypt_scan.c -o /tmp/fuzz_decrypt_scan
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decrypt_scan.h"
#include "fuzz_buf.h"

struct out {
  char *b;
  size_t len, cap;
  bool identity;
  unsigned k;
  uint64_t vhash; /* of all values and kinds, in order */
  bool lossy_json, lossy_form; /* values that may have come from "\/" or %XX */
  char *ret;
  size_t ret_cap;
};

static int out_emit(void *ud, const char *b, size_t n) {
  struct out *o = ud;
  fuzz_buf_append(&o->b, &o->len, &o->cap, b, n);
  return 0;
}

static bool b64c(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=' || c == '_' || c == '-';
}

/* An independent statement of the token rule: "ev:", segments of [A-Za-z0-9+/=_-]+, ":$",
 * 5 or 6 ':' in all. */
static bool well_formed(const char *v, size_t n) {
  unsigned colons = 0;
  size_t seg = 1;
  if (n < 5 || memcmp(v, "ev:", 3) != 0 || v[n - 2] != ':' || v[n - 1] != '$') return false;
  for (size_t i = 2; i < n - 1; i++) {
    if (v[i] == ':') {
      if (seg == 0) return false;
      colons++;
      seg = 0;
    } else if (b64c((unsigned char)v[i])) {
      seg++;
    } else {
      return false;
    }
  }
  return colons == 5 || colons == 6;
}

static int out_transform(void *ud, int kind, const char *v, size_t n, const char **ret,
                         size_t *ret_len) {
  struct out *o = ud;
  if (kind == EVS__DSCAN_FILE) {
    if (n < 6 || memcmp(v, "%EVENC", 6) != 0) __builtin_trap();
  } else if (!well_formed(v, n)) {
    __builtin_trap();
  }
  o->vhash = (o->vhash ^ (uint64_t)kind) * 1099511628211u;
  for (size_t i = 0; i < n; i++) o->vhash = (o->vhash ^ (unsigned char)v[i]) * 1099511628211u;
  o->k++;
  if (kind == EVS__DSCAN_STRING_JSON && memchr(v, '/', n)) o->lossy_json = true;
  if (kind == EVS__DSCAN_FORM) o->lossy_form = true;
  if (n + 2 > o->ret_cap) {
    o->ret_cap = n + 64;
    free(o->ret);
    o->ret = malloc(o->ret_cap);
    if (!o->ret) abort();
  }
  if (!o->identity) {
    *ret_len = (size_t)snprintf(o->ret, o->ret_cap, "<%u>", o->k);
  } else if (kind == EVS__DSCAN_STRING_JSON) {
    o->ret[0] = '"';
    memcpy(o->ret + 1, v, n);
    o->ret[n + 1] = '"';
    *ret_len = n + 2;
  } else {
    memcpy(o->ret, v, n);
    *ret_len = n;
  }
  *ret = o->ret;
  return 0;
}

static const char *const types[] = {
    "application/json", "application/xml", "application/x-www-form-urlencoded", "text/plain",
    "multipart/form-data; boundary=b", "multipart/mixed; boundary=\"--x\"", "image/png", NULL,
};

static int run(const char *ct, const struct evs__decrypt_scan_opts *opts, const uint8_t *data,
               size_t size, size_t step, bool identity, struct out *o) {
  evs__decrypt_scan *sc = NULL;
  int r = 0;
  memset(o, 0, sizeof *o);
  o->identity = identity;
  if (evs__decrypt_scan_new(ct, opts, out_emit, out_transform, o, &sc) != 0) abort();
  for (size_t i = 0; i < size && r == 0; i += step)
    r = evs__decrypt_scan_feed(sc, (const char *)data + i, size - i < step ? size - i : step);
  if (r == 0) r = evs__decrypt_scan_finish(sc);
  if (evs__decrypt_scan_mem_high_water(sc) > 2 * opts->max_token + opts->max_file + 8192)
    __builtin_trap();
  if (evs__decrypt_scan_values_found(sc) != o->k) __builtin_trap();
  evs__decrypt_scan_free(sc);
  free(o->ret);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct evs__decrypt_scan_opts opts = {sizeof opts, 0, 4096};
  const char *ct;
  size_t step;
  struct out a, b, c, d;
  int ra, rb, rc, rd;
  bool escapes;
  if (size < 1) return 0;
  ct = types[data[0] % 8];
  step = 1 + (data[0] >> 3) % 9;
  opts.max_token = data[0] & 0x80 ? 48 : 0;
  data++;
  size--;
  ra = run(ct, &opts, data, size, size ? size : 1, true, &a);
  rb = run(ct, &opts, data, size, step, true, &b);
  rc = run(ct, &opts, data, size, size ? size : 1, false, &c);
  rd = run(ct, &opts, data, size, step, false, &d);
  if (ra != rb || rc != rd || ra != rc) __builtin_trap();
  if (a.k != b.k || a.vhash != b.vhash || c.k != d.k || c.vhash != d.vhash || a.k != c.k)
    __builtin_trap();
  if (c.len != d.len || (c.len && memcmp(c.b, d.b, c.len) != 0)) __builtin_trap();
  escapes = (a.lossy_json && memmem(data, size, "\\/", 2)) ||
            (a.lossy_form && memchr(data, '%', size));
  if (ra == 0 && !escapes && (a.len != size || (size && memcmp(a.b, data, size) != 0)))
    __builtin_trap();
  if (ra == 0 && (b.len != a.len || (a.len && memcmp(a.b, b.b, a.len) != 0))) __builtin_trap();
  free(a.b);
  free(b.b);
  free(c.b);
  free(d.b);
  return 0;
}
