/*
 * libFuzzer target for plugins/relay-common/content_decode.c, the decoder of compressed
 * responses (the destination's bytes are untrusted). The first byte picks the codings (gzip,
 * deflate, br, "gzip, br"), the split step and the mode; the rest is the input. Mode "decode":
 * the input is the encoded body; whole and split decoding must agree (status and output) and
 * stay within the output bound. Mode "round trip": the input is a plaintext, encoded here with
 * zlib or libbrotlienc; decoding must give it back, whole and split. The Content-Encoding and
 * Accept-Encoding parsers get the input as text too.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/content_decode.c fuzz/fuzz_content_decode.c -lz -lbrotlidec \
 *     -lbrotlienc -o /tmp/fuzz_content_decode
 */
#include <brotli/encode.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "content_decode.h"

#define MAX_OUT (1u << 20)

struct out {
  uint8_t *b;
  size_t len, cap;
};

static int emit(void *ud, const char *p, size_t n) {
  struct out *o = ud;
  if (n == 0) __builtin_trap();
  if (o->len + n > o->cap) {
    o->cap = (o->len + n) * 2;
    o->b = realloc(o->b, o->cap);
    if (!o->b) __builtin_trap();
  }
  memcpy(o->b + o->len, p, n);
  o->len += n;
  return 0;
}

static int run(const int *c, size_t nc, const uint8_t *p, size_t n, size_t step, struct out *o) {
  evs__cdecode *d = NULL;
  int r = evs__cdecode_new(c, nc, MAX_OUT, 0, emit, o, &d);
  if (r < 0) return r;
  for (size_t off = 0; r == 0 && off < n; off += step) {
    size_t k = n - off < step ? n - off : step;
    r = evs__cdecode_feed(d, p + off, k);
  }
  if (r == 0) r = evs__cdecode_finish(d);
  if (o->len > MAX_OUT || evs__cdecode_total(d) != o->len) __builtin_trap();
  evs__cdecode_free(d);
  return r;
}

static uint8_t *encode(int coding, const uint8_t *p, size_t n, size_t *ret_len, int raw) {
  if (coding == EVS__CDEC_BR) {
    size_t cap = BrotliEncoderMaxCompressedSize(n) + 64;
    uint8_t *b = malloc(cap);
    if (!b || !BrotliEncoderCompress(1, 18, BROTLI_MODE_GENERIC, n, p, &cap, b)) __builtin_trap();
    *ret_len = cap;
    return b;
  }
  z_stream z;
  memset(&z, 0, sizeof z);
  int wbits = coding == EVS__CDEC_GZIP ? 31 : raw ? -15 : 15;
  if (deflateInit2(&z, 1, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY) != Z_OK) __builtin_trap();
  size_t cap = deflateBound(&z, n) + 64;
  uint8_t *b = malloc(cap);
  z.next_in = (Bytef *)(uintptr_t)p;
  z.avail_in = (uInt)n;
  z.next_out = b;
  z.avail_out = (uInt)cap;
  if (!b || deflate(&z, Z_FINISH) != Z_STREAM_END) __builtin_trap();
  *ret_len = z.total_out;
  deflateEnd(&z);
  return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t ctl = data[0];
  const uint8_t *p = data + 1;
  size_t n = size - 1;

  /* The header parsers, on the same bytes. */
  int parsed[EVS__CDEC_MAX_CODINGS];
  int np = evs__cdecode_parse((const char *)p, n, parsed);
  if (np > EVS__CDEC_MAX_CODINGS) __builtin_trap();
  char *ae = malloc(2 * n + 9);
  size_t al = evs__cdecode_accept_encoding((const char *)p, n, ae);
  if (al != strlen(ae) || al > 2 * n + 8) __builtin_trap();
  free(ae);

  static const int sets[4][2] = {{EVS__CDEC_GZIP, 0}, {EVS__CDEC_DEFLATE, 0}, {EVS__CDEC_BR, 0},
                                 {EVS__CDEC_GZIP, EVS__CDEC_BR}};
  size_t set = ctl & 3, nc = set == 3 ? 2 : 1;
  size_t step = 1 + ((ctl >> 2) & 15) * 37;
  const int *c = sets[set];

  uint8_t *enc = NULL;
  size_t enc_len = n;
  int roundtrip = (ctl & 0x40) && n <= 65536;
  if (roundtrip) {
    /* Encode as "gzip, br" says: gzip first, then br. */
    enc = encode(c[0], p, n, &enc_len, ctl & 0x80);
    if (nc == 2) {
      size_t l2;
      uint8_t *e2 = encode(c[1], enc, enc_len, &l2, 0);
      free(enc);
      enc = e2;
      enc_len = l2;
    }
  }
  const uint8_t *in = roundtrip ? enc : p;
  struct out whole = {0}, split = {0};
  int r1 = run(c, nc, in, enc_len, enc_len ? enc_len : 1, &whole);
  int r2 = run(c, nc, in, enc_len, step, &split);
  if (r1 != r2) __builtin_trap();
  if (r1 == 0 && (whole.len != split.len || (whole.len && memcmp(whole.b, split.b, whole.len))))
    __builtin_trap();
  if (roundtrip && (r1 != 0 || whole.len != n || (n && memcmp(whole.b, p, n)))) __builtin_trap();
  free(whole.b);
  free(split.b);
  free(enc);
  return 0;
}
