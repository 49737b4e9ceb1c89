/*
 * tls_sni.c: see tls_sni.h. RFC 8446 §4.1.2 (ClientHello) and RFC 6066 §3 (server_name), read
 * with bounds checked at every step; a ClientHello split over records is refused (-EINVAL),
 * which only means the listener terminates TLS itself as usual.
 */
#include "tls_sni.h"

#include <errno.h>
#include <string.h>

typedef struct rd {
  const uint8_t *p;
  size_t n;
} rd;

static int take(rd *r, size_t k, const uint8_t **ret) {
  if (r->n < k) return -1;
  if (ret) *ret = r->p;
  r->p += k;
  r->n -= k;
  return 0;
}

static int u8(rd *r, size_t *v) {
  const uint8_t *b;
  if (take(r, 1, &b) < 0) return -1;
  *v = b[0];
  return 0;
}

static int u16(rd *r, size_t *v) {
  const uint8_t *b;
  if (take(r, 2, &b) < 0) return -1;
  *v = (size_t)b[0] << 8 | b[1];
  return 0;
}

static int sub(rd *r, size_t len, rd *ret) {
  const uint8_t *b;
  if (take(r, len, &b) < 0) return -1;
  ret->p = b;
  ret->n = len;
  return 0;
}

int evs__tls_sni_parse(const uint8_t *p, size_t n, char *out, size_t cap) {
  if (n >= 1 && p[0] != 22) return -EINVAL;        /* handshake record */
  if (n >= 2 && p[1] != 3) return -EINVAL;         /* TLS major version */
  if (n < 5) return -EAGAIN;
  size_t rec = (size_t)p[3] << 8 | p[4];
  if (rec < 4 || rec > 16384) return -EINVAL;
  if (n >= 6 && p[5] != 1) return -EINVAL;         /* client_hello */
  if (n < 9) return -EAGAIN;
  size_t hs = (size_t)p[6] << 16 | (size_t)p[7] << 8 | p[8];
  if (hs + 4 > rec) return -EINVAL;                /* split over records: not read here */
  if (n < 5 + 4 + hs) return -EAGAIN;
  rd r = {p + 9, hs};
  size_t len, ext_len;
  if (take(&r, 2 + 32, NULL) < 0) return -EINVAL;  /* legacy_version, random */
  if (u8(&r, &len) < 0 || take(&r, len, NULL) < 0) return -EINVAL; /* session id */
  if (u16(&r, &len) < 0 || take(&r, len, NULL) < 0) return -EINVAL; /* cipher suites */
  if (u8(&r, &len) < 0 || take(&r, len, NULL) < 0) return -EINVAL;  /* compression */
  if (r.n == 0) return 0;                          /* no extensions */
  rd exts;
  if (u16(&r, &ext_len) < 0 || sub(&r, ext_len, &exts) < 0) return -EINVAL;
  while (exts.n > 0) {
    size_t type;
    rd e;
    if (u16(&exts, &type) < 0 || u16(&exts, &len) < 0 || sub(&exts, len, &e) < 0)
      return -EINVAL;
    if (type != 0) continue;                       /* server_name */
    rd list;
    if (u16(&e, &len) < 0 || sub(&e, len, &list) < 0) return -EINVAL;
    while (list.n > 0) {
      size_t kind;
      rd name;
      if (u8(&list, &kind) < 0 || u16(&list, &len) < 0 || sub(&list, len, &name) < 0)
        return -EINVAL;
      if (kind != 0) continue;                     /* host_name */
      if (name.n == 0 || name.n >= cap) return -EINVAL;
      for (size_t i = 0; i < name.n; i++) {
        uint8_t c = name.p[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
          return -EINVAL;
        out[i] = (char)c;
      }
      out[name.n] = 0;
      return 1;
    }
    return 0;
  }
  return 0;
}
