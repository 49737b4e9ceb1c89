/*
 * libFuzzer target for plugins/function-runtime/fn_token.c: the Authorization header of a
 * Function run (Basic appId:apiKey, RunToken, Bearer) and the payload digest run tokens are
 * bound to (the egress proxy's CONNECT targets are fuzz_outbound_match's: one parser). The
 * first byte picks the mode:
 *   0  the rest is an Authorization value: if accepted, Basic gives a non-empty app id and key
 *      within their limits and without NUL bytes, a token has the run-token shape;
 *   1  the rest is JSON: if it parses, its digest is 64 hex digits and equals the digest of its
 *      own canonical dump parsed again (the binding does not depend on key order or spacing);
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/function-runtime \
 *     plugins/function-runtime/fn_token.c fuzz/fuzz_fn_token.c -ljansson -lcrypto -o /tmp/fuzz_fn_token
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fn_token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  if (data[0] % 2 == 0) {
    fn_auth a;
    int rc = evs__fn_auth_parse(s, n, &a);
    if (rc == 0) {
      if (a.kind == FN_AUTH_BASIC) {
        size_t al = strlen(a.app_id), kl = strlen(a.key);
        if (al == 0 || al > FN_APP_MAX || kl == 0 || kl > FN_KEY_MAX) __builtin_trap();
      } else if (a.kind == FN_AUTH_TOKEN) {
        if (!evs__fn_token_valid(a.token, strlen(a.token))) __builtin_trap();
      } else {
        __builtin_trap();
      }
    } else if (rc > 0) {
      __builtin_trap();
    }
    return 0;
  }
  json_t *v = json_loadb(s, n, JSON_DECODE_ANY, NULL);
  if (!v) return 0;
  char d1[65], d2[65];
  if (evs__fn_payload_digest(v, d1) == 0) {
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_INDENT(1));
    json_t *again = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    if (again && evs__fn_payload_digest(again, d2) == 0 && strcmp(d1, d2) != 0) __builtin_trap();
    if (strlen(d1) != 64) __builtin_trap();
    json_decref(again);
    free(text);
  }
  json_decref(v);
  return 0;
}
