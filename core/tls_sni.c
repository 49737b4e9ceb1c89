/*
 * tls_sni.c: see tls_sni.h. The ClientHello is read by the project's one reader
 * (lib/tls_hello.c); the listener then takes only a plain host name, since it names a cage.
 * A ClientHello split over records or malformed is -EINVAL, which only means the listener
 * terminates TLS itself as usual (and OpenSSL refuses what the reader found malformed).
 */
#include "tls_sni.h"

#include <errno.h>

#include "tls_hello.h"

int evs__tls_sni_parse(const uint8_t *p, size_t n, char *out, size_t cap) {
  int r = evs_tls_hello_sni(p, n, out, cap);
  if (r == -ENAMETOOLONG) return -EINVAL;
  if (r != 1) return r;
  for (const char *c = out; *c; c++) /* (lower case already) */
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.'))
      return -EINVAL;
  return 1;
}
