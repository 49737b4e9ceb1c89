/*
 * ec_base64.c: standard-alphabet base64 for ev: strings. The SDK writes it unpadded (§3.1);
 * other encoders pad. The decoder accepts both spellings and nothing else: no whitespace, no
 * URL-safe alphabet, no '=' inside, no non-zero unused bits, so a ciphertext has exactly one
 * unpadded spelling. The inputs are ciphertexts and public keys, never secrets, so table lookups
 * indexed by the data are fine here.
 */
#include <string.h>

#include "ec_internal.h"

static const char b64_alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static const int8_t b64_value[256] = {
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
  52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
  -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
  15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
  -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
  41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

size_t evs_ec_b64_encode(const uint8_t *in, size_t len, char *out) {
  char *o = out;
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    o[0] = b64_alphabet[v >> 18];
    o[1] = b64_alphabet[(v >> 12) & 63];
    o[2] = b64_alphabet[(v >> 6) & 63];
    o[3] = b64_alphabet[v & 63];
    o += 4;
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    o[0] = b64_alphabet[v >> 18];
    o[1] = b64_alphabet[(v >> 12) & 63];
    o += 2;
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    o[0] = b64_alphabet[v >> 18];
    o[1] = b64_alphabet[(v >> 12) & 63];
    o[2] = b64_alphabet[(v >> 6) & 63];
    o += 3;
  }
  return (size_t)(o - out);
}

/* The number of data characters once padding is accounted for, or (size_t)-1 if the padding
 * or the length is wrong. */
static size_t b64_data_chars(const char *in, size_t len) {
  if (len >= 1 && in[len - 1] == '=') {
    if (len % 4 != 0) return (size_t)-1;
    len--;
    if (in[len - 1] == '=') len--;
  }
  if (len % 4 == 1) return (size_t)-1;
  return len;
}

int evs__ec_b64_check(const char *in, size_t len, size_t *ret_len) {
  if (!in && len) return EVS_EC_EINVAL;
  size_t n = b64_data_chars(in, len);
  if (n == (size_t)-1) return EVS_EC_EBASE64;
  int8_t acc = 0;
  for (size_t i = 0; i < n; i++) acc |= b64_value[(unsigned char)in[i]];
  if (acc < 0) return EVS_EC_EBASE64;
  /* Unused low bits of the last character must be zero. */
  if (n % 4 == 2 && (b64_value[(unsigned char)in[n - 1]] & 0x0f)) return EVS_EC_EBASE64;
  if (n % 4 == 3 && (b64_value[(unsigned char)in[n - 1]] & 0x03)) return EVS_EC_EBASE64;
  *ret_len = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
  return EVS_EC_OK;
}

int evs_ec_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *ret_len) {
  size_t outlen;
  if (!ret_len || (!out && cap)) return EVS_EC_EINVAL;
  int r = evs__ec_b64_check(in, len, &outlen);
  if (r) return r;
  if (outlen > cap) return EVS_EC_ESPACE;
  *ret_len = evs__ec_b64_decode_valid(in, len, out);
  return EVS_EC_OK;
}

/* The check above, once: ev: strings are checked when parsed and decoded after (the
 * ciphertext once per key tried), so checking at every decode doubled the base64 work. */
size_t evs__ec_b64_decode_valid(const char *in, size_t len, uint8_t *out) {
  size_t n = b64_data_chars(in, len), i = 0;
  uint8_t *o = out;
  for (; i + 4 <= n; i += 4) {
    uint32_t v = (uint32_t)b64_value[(unsigned char)in[i]] << 18 |
                 (uint32_t)b64_value[(unsigned char)in[i + 1]] << 12 |
                 (uint32_t)b64_value[(unsigned char)in[i + 2]] << 6 |
                 (uint32_t)b64_value[(unsigned char)in[i + 3]];
    o[0] = (uint8_t)(v >> 16);
    o[1] = (uint8_t)(v >> 8);
    o[2] = (uint8_t)v;
    o += 3;
  }
  if (n - i == 2) {
    uint32_t v = (uint32_t)b64_value[(unsigned char)in[i]] << 18 |
                 (uint32_t)b64_value[(unsigned char)in[i + 1]] << 12;
    *o++ = (uint8_t)(v >> 16);
  } else if (n - i == 3) {
    uint32_t v = (uint32_t)b64_value[(unsigned char)in[i]] << 18 |
                 (uint32_t)b64_value[(unsigned char)in[i + 1]] << 12 |
                 (uint32_t)b64_value[(unsigned char)in[i + 2]] << 6;
    o[0] = (uint8_t)(v >> 16);
    o[1] = (uint8_t)(v >> 8);
    o += 2;
  }
  return (size_t)(o - out);
}
