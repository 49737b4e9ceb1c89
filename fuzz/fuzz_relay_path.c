/*
 * libFuzzer target for plugins/relay-common/relay_path.c. Besides memory errors it checks, for
 * every flag combination: the output fits 3 * len + 2, starts with '/', is what normalising it
 * again gives (idempotence) and never fails to normalise; with flags 0 it holds no "//", no "."
 * or ".." segment and no ';'; an input refused with one flag set is refused alike with all; the
 * views of a path are distinct and the first is the full normal form; a normal form matches
 * itself as a pattern (when it holds no '*'), in every case.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/relay_path.c fuzz/fuzz_relay_path.c -o /tmp/fuzz_relay_path
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay_path.h"

static int has_dot_segment(const char *s) {
  for (const char *p = s; (p = strchr(p, '/')) != NULL; p++) {
    if (p[1] == '.' && (p[2] == '/' || p[2] == 0)) return 1;
    if (p[1] == '.' && p[2] == '.' && (p[3] == '/' || p[3] == 0)) return 1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  const char *in = (const char *)data;
  size_t cap = 3 * size + 2;
  char *out = malloc(cap), *again = malloc(cap);
  if (!out || !again) abort();
  int first = 0;
  for (unsigned f = 0; f < 16; f++) {
    int n = evs__path_normalize(in, size, out, cap, f);
    if (f == 0) first = n;
    if ((n < 0) != (first < 0) || (n < 0 && n != first)) __builtin_trap();
    if (n == EVS__PATH_E_NOSPACE) __builtin_trap();
    if (n < 0) continue;
    if ((size_t)n >= cap || strlen(out) != (size_t)n || out[0] != '/') __builtin_trap();
    int m = evs__path_normalize(out, (size_t)n, again, cap, f);
    if (m != n || memcmp(out, again, (size_t)n + 1) != 0) __builtin_trap();
    if (f == 0 && (strstr(out, "//") || has_dot_segment(out) || strchr(out, ';')))
      __builtin_trap();
    if (!strchr(out, '*') && !evs__route_match(out, out, 1)) __builtin_trap();
  }
  evs__path_views pv;
  int rc = evs__path_views_init(&pv, in, size, 0);
  if ((rc < 0) != (first < 0)) __builtin_trap();
  if (rc == 0) {
    evs__path_normalize(in, size, out, cap, 0);
    if (pv.n < 1 || pv.n > 8 || strcmp(pv.v[0], out) != 0) __builtin_trap();
    for (size_t i = 0; i < pv.n; i++)
      for (size_t j = i + 1; j < pv.n; j++)
        if (strcmp(pv.v[i], pv.v[j]) == 0) __builtin_trap();
    if (!strchr(out, '*') && !evs__path_views_match(&pv, out)) __builtin_trap();
    evs__path_views_clear(&pv);
  }
  free(out);
  free(again);
  return 0;
}
