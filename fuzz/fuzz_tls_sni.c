/*
 * libFuzzer target for the project's one TLS ClientHello reader (lib/tls_hello.c), read from
 * bytes any client sends: by the egress proxy of boxes and cages, and through core/tls_sni.c by
 * a TLS listener that has a passthrough provider (ABI 1.9 add_tls_passthrough). Checks, beyond
 * memory safety: a name found is non-empty printable ASCII without upper case, and the
 * listener's is a plain host name (letters, digits, '-', '.') and the reader's otherwise; the
 * verdict on the whole input never contradicts the verdict on a prefix (either may decide on
 * any prefix that is not -EAGAIN).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "tls_hello.h"
#include "tls_sni.h"

static int host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char name[256], pname[256], lname[256];
  int rc = evs_tls_hello_sni(data, size, name, sizeof name);
  if (rc == 1) {
    if (!name[0]) __builtin_trap();
    for (const char *c = name; *c; c++)
      if (*c <= 0x20 || *c >= 0x7f || (*c >= 'A' && *c <= 'Z')) __builtin_trap();
  }
  if (rc != -EAGAIN && rc != 1 && rc != 0 && rc != -EINVAL && rc != -ENAMETOOLONG) __builtin_trap();
  /* The listener's view: the reader's verdict, narrowed to plain host names. */
  int lr = evs__tls_sni_parse(data, size, lname, sizeof lname);
  int plain = rc == 1;
  for (const char *c = name; plain && *c; c++) plain = host_char(*c);
  int want = rc == 1 ? (plain ? 1 : -EINVAL) : rc == -ENAMETOOLONG ? -EINVAL : rc;
  if (lr != want || (lr == 1 && strcmp(lname, name) != 0)) __builtin_trap();
  /* A decided prefix decides the whole the same way. */
  for (size_t k = size > 64 ? size - 64 : 0; k < size; k++) {
    int pr = evs_tls_hello_sni(data, k, pname, sizeof pname);
    if (pr == -EAGAIN) continue;
    if (pr != rc) __builtin_trap();
    if (pr == 1 && strcmp(pname, name) != 0) __builtin_trap();
  }
  return 0;
}
