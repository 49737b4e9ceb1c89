/*
 * libFuzzer target for plugins/function-runtime/fr_sni.c: the server_name of a TLS ClientHello,
 * read by the function boxes' egress proxy from bytes a function sends. Checks, beyond memory
 * safety: a name found is non-empty printable ASCII without upper case; the verdict on the
 * whole input never contradicts the verdict on a prefix (a prefix that was already invalid or
 * complete stays so: the proxy may decide on any prefix it has read).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "fr_sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char name[256], pname[256];
  int rc = fr_sni_parse(data, size, name, sizeof name);
  if (rc == 1) {
    if (!name[0]) __builtin_trap();
    for (const char *c = name; *c; c++)
      if (*c <= 0x20 || *c >= 0x7f || (*c >= 'A' && *c <= 'Z')) __builtin_trap();
  }
  if (rc != -EAGAIN && rc != 1 && rc != 0 && rc != -EINVAL && rc != -ENAMETOOLONG) __builtin_trap();
  /* A decided prefix decides the whole the same way. */
  for (size_t k = size > 64 ? size - 64 : 0; k < size; k++) {
    int pr = fr_sni_parse(data, k, pname, sizeof pname);
    if (pr == -EAGAIN) continue;
    if (pr != rc) __builtin_trap();
    if (pr == 1 && strcmp(pname, name) != 0) __builtin_trap();
  }
  return 0;
}
