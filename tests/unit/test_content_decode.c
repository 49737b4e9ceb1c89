/*
 * Unit tests for plugins/relay-common/content_decode.c, the Inbound Relay's decoder of
 * response content codings: Content-Encoding parsing; gzip (one and several members), deflate
 * zlib-wrapped and raw, br and stacked codings, each fed whole, byte by byte and in random
 * pieces; an empty body; corrupt, truncated and trailing data; the decoded-size bound against
 * gzip and br bombs; the decompressors' memory bound; emit errors passed back. The encoded
 * inputs are made here with zlib and libbrotlienc.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <brotli/encode.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "content_decode.h"

/* ---- encoders ------------------------------------------------------------------------------- */

typedef struct buf {
  uint8_t *p;
  size_t len;
} buf;

/* wbits 31 gzip, 15 zlib, -15 raw deflate. */
static buf z_encode(const uint8_t *in, size_t n, int wbits) {
  z_stream z;
  memset(&z, 0, sizeof z);
  assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  buf b = {malloc(deflateBound(&z, n) + 64), 0};
  assert_non_null(b.p);
  z.next_in = (Bytef *)(uintptr_t)in;
  z.avail_in = (uInt)n;
  z.next_out = b.p;
  z.avail_out = (uInt)(deflateBound(&z, n) + 64);
  assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
  b.len = z.total_out;
  deflateEnd(&z);
  return b;
}

static buf br_encode(const uint8_t *in, size_t n, int quality, int lgwin) {
  size_t cap = BrotliEncoderMaxCompressedSize(n) + 64;
  buf b = {malloc(cap), cap};
  assert_non_null(b.p);
  assert_true(BrotliEncoderCompress(quality, lgwin, BROTLI_MODE_GENERIC, n, in, &b.len, b.p));
  return b;
}

static buf cat(buf a, buf b) {
  buf c = {malloc(a.len + b.len), a.len + b.len};
  memcpy(c.p, a.p, a.len);
  memcpy(c.p + a.len, b.p, b.len);
  free(a.p);
  free(b.p);
  return c;
}

/* ---- decoding harness ----------------------------------------------------------------------- */

typedef struct sink {
  uint8_t *out;
  size_t len, cap;
  int fail_after; /* emit fails with -EIO once this many bytes arrived (0: never) */
} sink;

static int emit(void *ud, const char *p, size_t n) {
  sink *s = ud;
  assert_true(n > 0);
  if (s->len + n > s->cap) {
    s->cap = (s->len + n) * 2;
    s->out = realloc(s->out, s->cap);
    assert_non_null(s->out);
  }
  memcpy(s->out + s->len, p, n);
  s->len += n;
  if (s->fail_after && s->len >= (size_t)s->fail_after) return -EIO;
  return 0;
}

enum split { WHOLE, BYTES, RANDOM };

/* Decodes in with the Content-Encoding value ce, split as asked; the status of the first
 * failing call (or of finish) and the output in *s. */
static int decode(const char *ce, const buf *in, enum split how, uint64_t max_out, size_t max_mem,
                  sink *s) {
  int c[EVS__CDEC_MAX_CODINGS];
  int n = evs__cdecode_parse(ce, strlen(ce), c);
  assert_true(n > 0);
  evs__cdecode *d = NULL;
  int r = evs__cdecode_new(c, (size_t)n, max_out, max_mem, emit, s, &d);
  if (r < 0) return r;
  size_t off = 0;
  while (r == 0 && off < in->len) {
    size_t k = in->len - off;
    if (how == BYTES) k = 1;
    if (how == RANDOM) k = 1 + (size_t)rand() % (k < 300 ? k : 300);
    r = evs__cdecode_feed(d, in->p + off, k);
    off += k;
  }
  if (r == 0) r = evs__cdecode_finish(d);
  if (r == 0) assert_int_equal(evs__cdecode_total(d), s->len);
  evs__cdecode_free(d);
  return r;
}

static void sample(uint8_t *p, size_t n) {
  static const char words[] = "{\"card\":\"ev:RFVC:abc:def:$\",\"name\":\"Ada\"} lorem ipsum ";
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)words[(i * 7 + i / 13) % (sizeof words - 1)];
}

static void roundtrip(const char *ce, buf enc, const uint8_t *plain, size_t n) {
  for (int how = WHOLE; how <= RANDOM; how++) {
    sink s = {0};
    assert_int_equal(decode(ce, &enc, how, 0, 0, &s), 0);
    assert_int_equal(s.len, n);
    assert_memory_equal(s.out, plain, n);
    free(s.out);
  }
  free(enc.p);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_parse(void **state) {
  (void)state;
  int c[EVS__CDEC_MAX_CODINGS];
#define P(s) evs__cdecode_parse(s, strlen(s), c)
  assert_int_equal(P(""), 0);
  assert_int_equal(P("identity"), 0);
  assert_int_equal(P("gzip"), 1);
  assert_int_equal(c[0], EVS__CDEC_GZIP);
  assert_int_equal(P(" X-GZip "), 1);
  assert_int_equal(c[0], EVS__CDEC_GZIP);
  assert_int_equal(P("deflate,br"), 2);
  assert_int_equal(c[0], EVS__CDEC_DEFLATE);
  assert_int_equal(c[1], EVS__CDEC_BR);
  assert_int_equal(P("gzip, , identity,\tBR"), 2);
  assert_int_equal(c[1], EVS__CDEC_BR);
  assert_int_equal(P("gzip, br, deflate"), 3);
  assert_int_equal(P("gzip, br, deflate, gzip"), EVS__CDEC_E_UNSUPPORTED);
  assert_int_equal(P("zstd"), EVS__CDEC_E_UNSUPPORTED);
  assert_int_equal(P("compress"), EVS__CDEC_E_UNSUPPORTED);
  assert_int_equal(P("gzip, zstd"), EVS__CDEC_E_UNSUPPORTED);
  assert_int_equal(P("gzip;q=1"), EVS__CDEC_E_UNSUPPORTED);
  assert_int_equal(P("gzipx"), EVS__CDEC_E_UNSUPPORTED);
#undef P
}

static void test_accept_encoding(void **state) {
  (void)state;
  static const struct { const char *in, *out; } cases[] = {
      {NULL, "identity"},
      {"", "identity"},
      {"*", "identity"},
      {"zstd", "identity"},
      {"gzip, deflate, br, zstd", "gzip, deflate, br"},
      {"br;q=1.0, gzip;q=0.8, *;q=0.1", "br;q=1.0, gzip;q=0.8"},
      {"zstd,br,br,br", "br, br, br"},
      {"identity;q=0, X-GZIP ,compress", "identity;q=0, X-GZIP"},
      {" , gzip ; q=0.5,", "gzip ; q=0.5"},
      {"gzipx, brotli, deflate2", "identity"},
      {"gzip;x=\"a\x01\", br", "br"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t len = cases[i].in ? strlen(cases[i].in) : 0;
    char *out = malloc(2 * len + 9);
    size_t n = evs__cdecode_accept_encoding(cases[i].in, len, out);
    assert_string_equal(out, cases[i].out);
    assert_int_equal(n, strlen(out));
    free(out);
  }
}

static void test_codings(void **state) {
  (void)state;
  size_t n = 200000;
  uint8_t *plain = malloc(n);
  sample(plain, n);
  roundtrip("gzip", z_encode(plain, n, 31), plain, n);
  roundtrip("x-gzip", z_encode(plain, n, 31), plain, n);
  roundtrip("deflate", z_encode(plain, n, 15), plain, n);
  roundtrip("deflate", z_encode(plain, n, -15), plain, n);
  roundtrip("br", br_encode(plain, n, 5, 22), plain, n);
  /* Small bodies, and a raw deflate stream whose first bytes could be mistaken for a header. */
  for (size_t k = 0; k < 40; k++) {
    roundtrip("gzip", z_encode(plain, k, 31), plain, k);
    roundtrip("deflate", z_encode(plain, k, 15), plain, k);
    roundtrip("deflate", z_encode(plain, k, -15), plain, k);
    roundtrip("br", br_encode(plain, k, 11, 22), plain, k);
  }
  /* Two gzip members are one body (RFC 1952). */
  buf two = cat(z_encode(plain, 1000, 31), z_encode(plain + 1000, n - 1000, 31));
  roundtrip("gzip", two, plain, n);
  free(plain);
}

static void test_stacked(void **state) {
  (void)state;
  size_t n = 50000;
  uint8_t *plain = malloc(n);
  sample(plain, n);
  /* "gzip, br": gzip applied first, then br. */
  buf g = z_encode(plain, n, 31);
  roundtrip("gzip, br", br_encode(g.p, g.len, 5, 22), plain, n);
  free(g.p);
  buf b = br_encode(plain, n, 5, 22);
  buf z = z_encode(b.p, b.len, 15);
  roundtrip("br,identity, deflate", z, plain, n);
  free(b.p);
  /* The wrong order fails as corrupt data, never as plaintext. */
  g = z_encode(plain, n, 31);
  buf gb = br_encode(g.p, g.len, 5, 22);
  sink s = {0};
  assert_int_equal(decode("br, gzip", &gb, WHOLE, 0, 0, &s), EVS__CDEC_E_CORRUPT);
  free(s.out);
  free(g.p);
  free(gb.p);
  free(plain);
}

static void test_empty(void **state) {
  (void)state;
  static const char *ces[] = {"gzip", "deflate", "br", "gzip, br"};
  for (size_t i = 0; i < 4; i++) {
    buf none = {NULL, 0};
    sink s = {0};
    assert_int_equal(decode(ces[i], &none, WHOLE, 0, 0, &s), 0);
    assert_int_equal(s.len, 0);
  }
}

static void test_corrupt(void **state) {
  (void)state;
  size_t n = 100000;
  uint8_t *plain = malloc(n);
  sample(plain, n);
  struct { const char *ce; int wbits; } cases[] = {
      {"gzip", 31}, {"deflate", 15}, {"deflate", -15}, {"br", 0}};
  for (size_t i = 0; i < 4; i++) {
    for (int how = WHOLE; how <= RANDOM; how++) {
      buf e = cases[i].wbits ? z_encode(plain, n, cases[i].wbits) : br_encode(plain, n, 5, 22);
      sink s = {0};
      /* Truncated. */
      buf t = {e.p, e.len - 3};
      assert_int_equal(decode(cases[i].ce, &t, how, 0, 0, &s), EVS__CDEC_E_CORRUPT);
      s.len = 0;
      /* Trailing garbage. */
      buf g = {malloc(e.len + 4), e.len + 4};
      memcpy(g.p, e.p, e.len);
      memcpy(g.p + e.len, "junk", 4);
      assert_int_equal(decode(cases[i].ce, &g, how, 0, 0, &s), EVS__CDEC_E_CORRUPT);
      s.len = 0;
      /* A flipped byte in the middle (the checksum at the latest catches it; br may also decode
       * to a wrong length and fail on the trailing bytes). */
      g.len = e.len;
      memcpy(g.p, e.p, e.len);
      g.p[e.len / 2] ^= 0x55;
      int r = decode(cases[i].ce, &g, how, 0, 0, &s);
      if (cases[i].wbits != -15) assert_int_equal(r, EVS__CDEC_E_CORRUPT);
      free(g.p);
      free(s.out);
      free(e.p);
    }
  }
  /* Not compressed at all. */
  buf text = {(uint8_t *)"{\"a\":\"ev:RFVC:x:y:$\"}", 20};
  static const char *ces[] = {"gzip", "deflate", "br"};
  for (size_t i = 0; i < 3; i++) {
    sink s = {0};
    assert_int_equal(decode(ces[i], &text, WHOLE, 0, 0, &s), EVS__CDEC_E_CORRUPT);
    free(s.out);
  }
  free(plain);
}

static void test_bombs(void **state) {
  (void)state;
  size_t n = 32u << 20;
  uint8_t *zeros = calloc(1, n);
  buf bombs[] = {z_encode(zeros, n, 31), z_encode(zeros, n, -15), br_encode(zeros, n, 5, 22)};
  static const char *ces[] = {"gzip", "deflate", "br"};
  free(zeros);
  for (size_t i = 0; i < 3; i++) {
    assert_true(bombs[i].len < 64u * 1024); /* a small body... */
    sink s = {0};
    assert_int_equal(decode(ces[i], &bombs[i], WHOLE, 1u << 20, 0, &s), EVS__CDEC_E_TOOBIG);
    assert_true(s.len <= 1u << 20); /* ...stopped at the bound */
    free(s.out);
    memset(&s, 0, sizeof s);
    assert_int_equal(decode(ces[i], &bombs[i], WHOLE, 0, 0, &s), 0); /* unbounded: all of it */
    assert_int_equal(s.len, n);
    free(s.out);
    free(bombs[i].p);
  }
}

static void test_memory_bound(void **state) {
  (void)state;
  size_t n = 4u << 20;
  uint8_t *plain = malloc(n);
  for (size_t i = 0; i < n; i++) plain[i] = (uint8_t)(rand() >> 7);
  buf b = br_encode(plain, n, 1, 24);
  sink s = {0};
  assert_int_equal(decode("br", &b, WHOLE, 0, 64u * 1024, &s), EVS__CDEC_E_NOMEM);
  s.len = 0;
  assert_int_equal(decode("br", &b, RANDOM, 0, 0, &s), 0); /* the default bound fits 16 MiB */
  assert_int_equal(s.len, n);
  assert_memory_equal(s.out, plain, n);
  free(s.out);
  free(b.p);
  buf g = z_encode(plain, 1000, 31);
  memset(&s, 0, sizeof s);
  assert_int_equal(decode("gzip", &g, WHOLE, 0, 1024, &s), EVS__CDEC_E_NOMEM); /* inflate state */
  free(g.p);
  free(plain);
}

static void test_emit_error(void **state) {
  (void)state;
  size_t n = 100000;
  uint8_t *plain = malloc(n);
  sample(plain, n);
  buf e = z_encode(plain, n, 31);
  sink s = {.fail_after = 1000};
  int c[1] = {EVS__CDEC_GZIP};
  evs__cdecode *d = NULL;
  assert_int_equal(evs__cdecode_new(c, 1, 0, 0, emit, &s, &d), 0);
  assert_int_equal(evs__cdecode_feed(d, e.p, e.len), -EIO);
  assert_int_equal(evs__cdecode_feed(d, e.p, 1), -EIO); /* sticky */
  assert_int_equal(evs__cdecode_finish(d), -EIO);
  evs__cdecode_free(d);
  assert_int_equal(evs__cdecode_new(c, 0, 0, 0, emit, &s, &d), -EINVAL);
  evs__cdecode_free(NULL);
  free(s.out);
  free(e.p);
  free(plain);
}

int main(void) {
  srand(7);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse),   cmocka_unit_test(test_accept_encoding),
      cmocka_unit_test(test_codings),
      cmocka_unit_test(test_stacked), cmocka_unit_test(test_empty),
      cmocka_unit_test(test_corrupt), cmocka_unit_test(test_bombs),
      cmocka_unit_test(test_memory_bound), cmocka_unit_test(test_emit_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
