/*
 * libFuzzer target for core/tls_sni.c: the server_name of a TLS ClientHello, read by a TLS
 * listener that has a passthrough provider (ABI 1.9 add_tls_passthrough) from the first bytes
 * any client sends. Checks, beyond memory safety: a name found is non-empty, lower-case letters,
 * digits, '-' and '.'; the verdict on the whole input never contradicts the verdict on a prefix
 * (the listener decides on the first prefix that is not -EAGAIN).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "tls_sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char name[256], pname[256];
  int rc = evs__tls_sni_parse(data, size, name, sizeof name);
  if (rc == 1) {
    if (!name[0]) __builtin_trap();
    for (const char *c = name; *c; c++)
      if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.'))
        __builtin_trap();
  }
  if (rc != -EAGAIN && rc != 1 && rc != 0 && rc != -EINVAL) __builtin_trap();
  for (size_t k = size > 64 ? size - 64 : 0; k < size; k++) {
    int pr = evs__tls_sni_parse(data, k, pname, sizeof pname);
    if (pr == -EAGAIN) continue;
    if (pr != rc) __builtin_trap();
    if (pr == 1 && strcmp(pname, name) != 0) __builtin_trap();
  }
  return 0;
}
