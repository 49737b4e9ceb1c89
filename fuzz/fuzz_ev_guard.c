/*
 * libFuzzer target for plugins/relay-common/ev_guard.c. Checks: the count does not depend on
 * how the input is split; and the guard is a superset of what the relay decrypts: whenever
 * decrypt_scan.c (in the mode the first byte picks) would hand a value to the enclave, the guard
 * finds at least one in the same bytes. So nothing a relay would decrypt on the way back can
 * pass the request check.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decrypt_scan.h"
#include "ev_guard.h"

static int emit_none(void *ud, const char *b, size_t n) {
  (void)ud;
  (void)b;
  (void)n;
  return 0;
}

static int transform_count(void *ud, int kind, const char *v, size_t n, const char **ret,
                           size_t *ret_len) {
  (void)kind;
  *(size_t *)ud += 1;
  *ret = v;
  *ret_len = n;
  return 0;
}

static const char *const types[] = {
    "application/json", "application/xml", "application/x-www-form-urlencoded", "text/plain",
    "multipart/form-data; boundary=b", "image/png", "text/html", NULL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *ct = types[data[0] % 8];
  size_t step = 1 + data[0] / 8;
  data++;
  size--;
  size_t whole = evs__ev_guard_scan(data, size);
  evs__ev_guard g;
  evs__ev_guard_init(&g);
  for (size_t i = 0; i < size; i += step)
    evs__ev_guard_feed(&g, data + i, size - i < step ? size - i : step);
  if (evs__ev_guard_finish(&g) != whole) __builtin_trap();

  size_t values = 0;
  evs__decrypt_scan *sc = NULL;
  if (evs__decrypt_scan_new(ct, NULL, emit_none, transform_count, &values, &sc) != 0) abort();
  if (evs__decrypt_scan_feed(sc, (const char *)data, size) == 0) evs__decrypt_scan_finish(sc);
  evs__decrypt_scan_free(sc);
  if (values > 0 && whole == 0) __builtin_trap();
  return 0;
}
