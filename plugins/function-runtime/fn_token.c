/*
 * fn_token.c: Authorization header, run token and payload digest (fn_token.h).
 */
#include "fn_token.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int evs__fn_token_valid(const char *s, size_t len) {
  if (len != FN_TOKEN_LEN || memcmp(s, "rt_", 3) != 0) return 0;
  for (size_t i = 3; i < len; i++)
    if (!s[i] || !strchr(b64url, s[i])) return 0;
  /* 43 characters carry 258 bits: the last one holds 2 bits of padding, which must be 0. */
  return (strchr(b64url, s[len - 1]) - b64url) % 4 == 0;
}

int evs__fn_token_new(char *out) {
  uint8_t b[33] = {0};
  if (getrandom(b, 32, 0) != 32) return -EIO;
  memcpy(out, "rt_", 3);
  size_t o = 3;
  for (size_t i = 0; i < 33 && o < FN_TOKEN_LEN; i += 3) {
    uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)(i + 1 < 33 ? b[i + 1] : 0) << 8 | (i + 2 < 33 ? b[i + 2] : 0);
    for (int k = 3; k >= 0 && o < FN_TOKEN_LEN; k--) out[o++] = b64url[(v >> (6 * k)) & 63];
  }
  out[FN_TOKEN_LEN] = 0;
  OPENSSL_cleanse(b, sizeof b);
  return 0;
}

static void hex(const uint8_t *d, size_t n, char *out) {
  static const char x[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = x[d[i] >> 4];
    out[2 * i + 1] = x[d[i] & 15];
  }
  out[2 * n] = 0;
}

void evs__fn_token_digest(const char *token, char out[65]) {
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256((const uint8_t *)token, strlen(token), d);
  hex(d, sizeof d, out);
}

int evs__fn_payload_digest(const json_t *payload, char out[65]) {
  char *s = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
  if (!s) return -ENOMEM;
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256((const uint8_t *)s, strlen(s), d);
  OPENSSL_cleanse(s, strlen(s)); /* the payload may hold plaintext */
  free(s);
  hex(d, sizeof d, out);
  return 0;
}

static int b64val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Standard base64 (padding optional) into out (cap bytes); the length, or -1. */
static long b64dec(const char *s, size_t n, char *out, size_t cap) {
  while (n && s[n - 1] == '=') n--;
  if (n % 4 == 1) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64val((unsigned char)s[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o == cap) return -1;
      out[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  return (long)o;
}

int evs__fn_auth_parse(const char *v, size_t len, fn_auth *ret) {
  fn_auth a;
  memset(&a, 0, sizeof a);
  while (len && (*v == ' ' || *v == '\t')) v++, len--;
  while (len && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
  size_t sp = 0;
  while (sp < len && v[sp] != ' ') sp++;
  const char *cred = v + sp;
  size_t clen = len - sp;
  while (clen && *cred == ' ') cred++, clen--;
  if (sp == 5 && strncasecmp(v, "Basic", 5) == 0) {
    char dec[FN_APP_MAX + FN_KEY_MAX + 2];
    long n = clen ? b64dec(cred, clen, dec, sizeof dec - 1) : -1;
    if (n <= 0) return -EINVAL;
    dec[n] = 0;
    char *colon = memchr(dec, ':', (size_t)n);
    int rc = -EINVAL;
    if (colon && strlen(dec) == (size_t)n) { /* no NUL inside */
      size_t al = (size_t)(colon - dec), kl = (size_t)n - al - 1;
      if (al >= 1 && al <= FN_APP_MAX && kl >= 1 && kl <= FN_KEY_MAX) {
        memcpy(a.app_id, dec, al);
        memcpy(a.key, colon + 1, kl);
        a.kind = FN_AUTH_BASIC;
        rc = 0;
      }
    }
    OPENSSL_cleanse(dec, sizeof dec);
    if (rc == 0) *ret = a;
    OPENSSL_cleanse(&a, sizeof a);
    return rc;
  }
  if ((sp == 8 && strncasecmp(v, "RunToken", 8) == 0) || (sp == 6 && strncasecmp(v, "Bearer", 6) == 0)) {
    if (!evs__fn_token_valid(cred, clen)) return -EBADMSG;
    memcpy(a.token, cred, clen);
    a.kind = FN_AUTH_TOKEN;
    *ret = a;
    return 0;
  }
  return -EINVAL;
}

int evs__fn_b64_decode(const char *s, size_t n, uint8_t **ret, size_t *ret_len) {
  uint8_t *out = malloc(n / 4 * 3 + 3);
  if (!out) return -ENOMEM;
  long r = b64dec(s, n, (char *)out, n / 4 * 3 + 3);
  if (r < 0) {
    free(out);
    return -EINVAL;
  }
  *ret = out;
  *ret_len = (size_t)r;
  return 0;
}
