/* tls_hello.c: the server_name of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), read with
 * bounds checked at every step (tls_hello.h). */
#include "tls_hello.h"

#include <errno.h>
#include <string.h>

/* A bounded reader: every take fails once the bytes run out. */
typedef struct {
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

/* A vector with a length prefix of w bytes, as a reader of its own. */
static int vec(rd *r, int w, rd *ret) {
  size_t len;
  if ((w == 1 ? u8(r, &len) : u16(r, &len)) < 0) return -1;
  ret->p = r->p;
  ret->n = len;
  return take(r, len, NULL);
}

int evs_tls_hello_is_tls(const uint8_t *p, size_t n) { return n >= 1 && p[0] == 22; }

int evs_tls_hello_sni(const uint8_t *p, size_t n, char *out, size_t cap) {
  if (n < 1) return -EAGAIN;
  if (p[0] != 22) return -EINVAL; /* handshake record */
  if (n < 5) return -EAGAIN;
  if (p[1] != 3 || p[2] > 4) return -EINVAL;
  size_t rec = (size_t)p[3] << 8 | p[4];
  if (rec < 4 || rec > 16384) return -EINVAL;
  if (n < 5 + 4) return -EAGAIN;
  const uint8_t *h = p + 5;
  if (h[0] != 1) return -EINVAL; /* client_hello */
  size_t hlen = (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (hlen + 4 > rec) return -EINVAL; /* spread over records: we do not reassemble */
  if (n < 5 + 4 + hlen) return -EAGAIN;

  rd r = {h + 4, hlen}, v;
  size_t x;
  if (u16(&r, &x) < 0 || take(&r, 32, NULL) < 0) return -EINVAL; /* version, random */
  if (vec(&r, 1, &v) < 0 || v.n > 32) return -EINVAL;              /* session id */
  if (vec(&r, 2, &v) < 0 || v.n < 2 || v.n % 2) return -EINVAL;    /* cipher suites */
  if (vec(&r, 1, &v) < 0 || v.n < 1) return -EINVAL;               /* compression */
  if (r.n == 0) return 0;                                           /* no extensions */
  rd exts;
  if (vec(&r, 2, &exts) < 0 || r.n != 0) return -EINVAL;
  int found = 0;
  while (exts.n) {
    size_t type;
    rd body;
    if (u16(&exts, &type) < 0 || vec(&exts, 2, &body) < 0) return -EINVAL;
    if (type != 0) continue;
    if (found) return -EINVAL; /* an extension twice */
    rd list;
    if (vec(&body, 2, &list) < 0 || body.n != 0 || list.n == 0) return -EINVAL;
    while (list.n) {
      size_t kind;
      rd name;
      if (u8(&list, &kind) < 0 || vec(&list, 2, &name) < 0) return -EINVAL;
      if (kind != 0) continue; /* only host_name is defined */
      if (found || name.n == 0) return -EINVAL;
      if (name.n >= cap) return -ENAMETOOLONG;
      for (size_t i = 0; i < name.n; i++) {
        uint8_t c = name.p[i];
        if (c <= 0x20 || c >= 0x7f) return -EINVAL; /* a host name is printable ASCII */
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
      }
      out[name.n] = 0;
      found = 1;
    }
  }
  return found;
}
