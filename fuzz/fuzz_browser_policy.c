/*
 * libFuzzer target for plugins/browser/browser_policy.c: the browser plugin's parsers. The input is used
 * as an allowed_origins value, as a single origin, as the Inputs page's query and as an
 * Accept-Encoding value. Invariants besides memory errors: a parsed policy holds only canonical
 * origins (canonicalising one again gives itself) that the policy then allows for their app; a
 * canonical origin is idempotent and holds no path, query or credentials; a decoded query value
 * fits its buffer and holds no NUL.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/browser plugins/browser/browser_policy.c \
 *     fuzz/fuzz_browser_policy.c -o /tmp/fuzz_browser_policy
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "browser_policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 8192) return 0;
  char *s = malloc(size + 1);
  if (!s) abort();
  memcpy(s, data, size);
  s[size] = 0;

  evs_bp_policy p;
  char err[256];
  if (evs__bp_policy_parse(s, &p, err, sizeof err) == 0) {
    for (size_t i = 0; i < p.napps; i++) {
      if (evs__bp_policy_app(&p, p.apps[i].app_id) != &p.apps[i]) __builtin_trap();
      for (size_t j = 0; j < p.apps[i].norigins; j++) {
        const char *o = p.apps[i].origins[j];
        char again[EVS_BP_MAX_ORIGIN + 16];
        int n = evs__bp_origin_canon(o, strlen(o), again, sizeof again);
        if (n < 0 || strcmp(again, o) != 0) __builtin_trap();
        if (!evs__bp_origin_allowed(&p.apps[i], o)) __builtin_trap();
      }
    }
    evs__bp_policy_free(&p);
  } else if (p.napps != 0 || p.apps != NULL || strlen(err) >= sizeof err) {
    __builtin_trap();
  }

  char canon[EVS_BP_MAX_ORIGIN + 16], again[EVS_BP_MAX_ORIGIN + 16];
  int n = evs__bp_origin_canon(s, size, canon, sizeof canon);
  if (n >= 0) {
    if ((size_t)n != strlen(canon)) __builtin_trap();
    if (strchr(canon + 8, '/') || strchr(canon, '?') || strchr(canon, '@') || strchr(canon, '#'))
      __builtin_trap();
    if (evs__bp_origin_canon(canon, (size_t)n, again, sizeof again) != n ||
        strcmp(canon, again) != 0)
      __builtin_trap();
  }

  char out[64];
  for (int k = 0; k < 2; k++) {
    int q = evs__bp_query_get(s, k ? "origin" : "app", out, sizeof out);
    if (q >= 0 && ((size_t)q >= sizeof out || strlen(out) != (size_t)q)) __builtin_trap();
  }
  (void)evs__bp_accepts_gzip(s, size);
  free(s);
  return 0;
}
