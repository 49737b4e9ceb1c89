/*
 * libFuzzer target for plugins/function-runtime/fn_token.c: the Authorization header of a
 * Function run (Basic appId:apiKey, RunToken, Bearer) and the payload digest run tokens are
 * bound to. The first byte picks the mode:
 *   0  the rest is an Authorization value: if accepted, Basic gives a non-empty app id and key
 *      within their limits and without NUL bytes, a token has the run-token shape;
 *   1  the rest is JSON: if it parses, its digest is 64 hex digits and equals the digest of its
 *      own canonical dump parsed again (the binding does not depend on key order or spacing);
 *   2  the rest is a box's egress request head (fr_egress.c): if accepted, the host is
 *      non-empty, NUL-terminated within its buffer, of the allowed characters, the port in
 *      1..65535.
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
  if (data[0] % 3 == 2) {
    char host[256];
    int port = -1;
    char *head = malloc(n + 1);
    if (!head) return 0;
    memcpy(head, s, n);
    head[n] = 0;
    if (evs__fn_connect_parse(head, n, host, sizeof host, &port) == 0) {
      size_t hl = strnlen(host, sizeof host);
      if (hl == 0 || hl == sizeof host || port < 1 || port > 65535) __builtin_trap();
      for (size_t i = 0; i < hl; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:_-", host[i])) __builtin_trap();
    }
    free(head);
    return 0;
  }
  if (data[0] % 3 == 0) {
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
