/*
 * Unit tests for plugins/relay-common/ws_frame.c: RFC 6455's own examples (§5.7 frames, §1.3
 * the accept key), fragmentation with an interleaved control frame, every refusal and its close
 * code, UTF-8 checked across fragment boundaries, the message size limit, close payloads, and
 * message kinds. fuzz/fuzz_ws_frame.c checks split-independence and round trips at random.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "ev_guard.h"
#include "ws_frame.h"
#include "ws_plain_ref.h"

typedef struct seen {
  int n;
  int control[16], opcode[16], first[16], fin[16];
  char data[16][256];
  size_t len[16];
} seen;

static int record(void *arg, const evs__ws_event *ev) {
  seen *s = arg;
  if (s->n < 16) {
    s->control[s->n] = ev->control;
    s->opcode[s->n] = ev->opcode;
    s->first[s->n] = ev->first;
    s->fin[s->n] = ev->fin;
    s->len[s->n] = ev->len < 256 ? ev->len : 255;
    memcpy(s->data[s->n], ev->data, s->len[s->n]);
  }
  s->n++;
  return 0;
}

static long parse(int from_client, uint64_t max, const void *d, size_t n, seen *s) {
  evs__ws_parser *p = malloc(sizeof *p);
  evs__ws_parser_init(p, from_client, max);
  memset(s, 0, sizeof *s);
  long r = evs__ws_parse(p, d, n, record, s);
  free(p);
  return r;
}

static void test_rfc_examples(void **state) {
  (void)state;
  seen s;
  /* §5.7: a single-frame unmasked text message, and the masked one */
  static const uint8_t unmasked[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
  assert_int_equal(parse(0, 0, unmasked, sizeof unmasked, &s), sizeof unmasked);
  assert_int_equal(s.n, 1);
  assert_memory_equal(s.data[0], "Hello", 5);
  static const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
  assert_int_equal(parse(1, 0, masked, sizeof masked, &s), sizeof masked);
  assert_int_equal(s.n, 1);
  assert_true(s.first[0] && s.fin[0] && s.opcode[0] == EVS__WS_OP_TEXT);
  assert_memory_equal(s.data[0], "Hello", 5);
  /* a fragmented text message with a ping between its fragments */
  static const uint8_t frag[] = {0x01, 0x03, 'H', 'e', 'l', 0x89, 0x00, 0x80, 0x02, 'l', 'o'};
  assert_int_equal(parse(0, 0, frag, sizeof frag, &s), sizeof frag);
  assert_int_equal(s.n, 3);
  assert_true(s.first[0] && !s.fin[0] && s.control[1] && s.opcode[1] == EVS__WS_OP_PING);
  assert_true(!s.first[2] && s.fin[2] && s.opcode[2] == EVS__WS_OP_TEXT);
}

/* §1.3: the accept key of the RFC's example */
static void sha1(const uint8_t *in, size_t n, uint8_t out[20]) {
  unsigned int len = 20;
  EVP_Digest(in, n, out, &len, EVP_sha1(), NULL);
}

static void test_accept_key(void **state) {
  (void)state;
  char acc[29];
  evs__ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, sha1, acc);
  assert_string_equal(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_refusals(void **state) {
  (void)state;
  seen s;
  struct {
    int from_client;
    uint8_t b[16];
    size_t n;
    long want;
  } cases[] = {
      {1, {0x81, 0x02, 'h', 'i'}, 4, -1002},                       /* client frame unmasked */
      {0, {0x81, 0x82, 1, 2, 3, 4, 'h', 'i'}, 8, -1002},           /* server frame masked */
      {0, {0xC1, 0x01, 'x'}, 3, -1002},                            /* RSV1 */
      {0, {0x83, 0x01, 'x'}, 3, -1002},                            /* opcode 3 */
      {0, {0x89, 0x7E, 0x00, 0x7E}, 4, -1002},                     /* ping of 126 bytes */
      {0, {0x09, 0x00}, 2, -1002},                                 /* fragmented ping */
      {0, {0x80, 0x01, 'x'}, 3, -1002},                            /* continuation first */
      {0, {0x01, 0x01, 'a', 0x81, 0x01, 'b'}, 6, -1002},           /* new message inside one */
      {0, {0x81, 0x02, 0xC3, 0x28}, 4, -1007},                     /* invalid UTF-8 */
      {0, {0x81, 0x03, 0xED, 0xA0, 0x80}, 5, -1007},               /* a surrogate */
      {0, {0x81, 0x02, 0xC0, 0x80}, 4, -1007},                     /* overlong */
      {0, {0x88, 0x01, 0x03}, 3, -1002},                           /* close of 1 byte */
      {0, {0x88, 0x02, 0x03, 0xED}, 4, -1002},                     /* close code 1005 */
      {0, {0x88, 0x02, 0x03, 0xE7}, 4, -1002},                     /* close code 999 */
      {0, {0x88, 0x03, 0x03, 0xE8, 0xFF}, 5, -1007},               /* reason not UTF-8 */
      {0, {0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0}, 10, -1002},     /* 64-bit length, top bit */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    assert_int_equal(parse(cases[i].from_client, 0, cases[i].b, cases[i].n, &s), cases[i].want);
}

static void test_utf8_across_fragments_and_limit(void **state) {
  (void)state;
  seen s;
  /* "é" split between two fragments is fine; a truncated sequence at the end is not */
  static const uint8_t ok[] = {0x01, 0x01, 0xC3, 0x80, 0x01, 0xA9};
  assert_int_equal(parse(0, 0, ok, sizeof ok, &s), sizeof ok);
  static const uint8_t cut[] = {0x81, 0x01, 0xC3};
  assert_int_equal(parse(0, 0, cut, sizeof cut, &s), -1007);
  /* the whole-buffer check, ASCII first: long runs, a bad byte at every place */
  uint8_t t[40];
  memset(t, 'a', sizeof t);
  assert_true(evs__ws_utf8_valid(t, sizeof t));
  for (size_t i = 0; i < sizeof t; i++) {
    t[i] = 0xFF;
    assert_false(evs__ws_utf8_valid(t, sizeof t));
    t[i] = 'a';
  }
  memcpy(t + 30, "\xC3\xA9", 2);
  assert_true(evs__ws_utf8_valid(t, sizeof t));
  assert_false(evs__ws_utf8_valid(t, 31));
  /* binary is not checked */
  static const uint8_t bin[] = {0x82, 0x01, 0xC3};
  assert_int_equal(parse(0, 0, bin, sizeof bin, &s), sizeof bin);
  /* max_message counts all fragments */
  static const uint8_t big[] = {0x02, 0x03, 'a', 'b', 'c', 0x80, 0x02, 'd', 'e'};
  assert_int_equal(parse(0, 5, big, sizeof big, &s), sizeof big);
  assert_int_equal(parse(0, 4, big, sizeof big, &s), -1009);
}

/* The masking and the UTF-8 check go sixteen and eight bytes at a time: every length and phase
 * agrees with the byte-by-byte definitions (RFC 6455 §5.3, RFC 3629). */
static int utf8_ref(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      k = 1, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2, cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3, cp = c & 0x07;
    } else {
      return 0;
    }
    if (n - i <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (s[i + j] & 0x3F);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += k + 1;
  }
  return 1;
}


/* n bytes of 'a' with one byte of odd at each position, alone or followed by a second one of
 * odd, each given to check: every spot of a block and of its tail. */
static void each_odd_spot(uint8_t *t, size_t n, const uint8_t *odd, size_t nodd,
                          void (*check)(const uint8_t *, size_t)) {
  for (size_t pos = 0; pos < n; pos++)
    for (size_t o = 0; o < nodd; o++)
      for (size_t o2 = 0; o2 <= nodd; o2++) {
        memset(t, 'a', n);
        t[pos] = odd[o];
        if (o2 < nodd && pos + 1 < n) t[pos + 1] = odd[o2];
        check(t, n);
      }
}

static void utf8_check(const uint8_t *t, size_t n) {
  assert_int_equal(evs__ws_utf8_valid(t, n), utf8_ref(t, n));
}
static void test_mask_and_utf8_fast_agree(void **state) {
  (void)state;
  const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  uint8_t src[80], a[80], b[80];
  uint32_t x = 12345;
  for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)(x = x * 1103515245u + 12345u) ^ 0x5a;
  for (size_t n = 0; n <= sizeof src; n++)
    for (uint64_t off = 0; off < 8; off++) {
      for (size_t i = 0; i < n; i++) b[i] = src[i] ^ key[(off + i) & 3];
      memset(a, 0, sizeof a);
      evs__ws_mask_copy(a, src, n, key, off);
      assert_memory_equal(a, b, n);
      memcpy(a, src, n);
      evs__ws_mask(a, n, key, off);
      assert_memory_equal(a, b, n);
    }
  /* ASCII with one or two other bytes anywhere, at every length (the high-bit pre-check's
   * blocks and tails), against the reference */
  static const uint8_t odd[] = {0x80, 0xC2, 0xC3, 0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xFF, 0xBF};
  uint8_t t[70];
  for (size_t n = 0; n <= sizeof t; n++) each_odd_spot(t, n, odd, sizeof odd, utf8_check);
  for (size_t n = 0; n <= sizeof t; n++) {
    memset(t, 'a', n);
    assert_true(evs__ws_utf8_valid(t, n));
    if (n >= 2) {
      t[n - 2] = 0xC3, t[n - 1] = 0xA9; /* é at the very end */
      assert_true(evs__ws_utf8_valid(t, n));
      assert_false(evs__ws_utf8_valid(t, n - 1));
    }
  }
}

/* One payload through the one-pass remask: the rule's verdict, the output masked with the new
 * key, and never a yes where the UTF-8 check or the guard would refuse. */
static void remask_check(const uint8_t *t, size_t n) {
  static const uint8_t kin[4] = {0x37, 0xfa, 0x21, 0x3d}, kout[4] = {0x5e, 0x01, 0xc4, 0x92};
  uint8_t src[300], dst[300];
  assert_true(n <= sizeof src);
  for (size_t i = 0; i < n; i++) src[i] = t[i] ^ kin[i & 3];
  int r = evs__ws_remask_plain(dst, src, n, kin, kout);
  assert_int_equal(r, ws_plain_ref(t, n));
  if (r) {
    assert_true(evs__ws_utf8_valid(t, n));
    assert_int_equal(evs__ev_guard_scan(t, n), 0);
    for (size_t i = 0; i < n; i++) assert_int_equal(dst[i], t[i] ^ kout[i & 3]);
  }
}

/* The one pass goes sixteen bytes at a time, looking one byte ahead across blocks, with an
 * overlapping last block: a trigger, a non-ASCII byte, an 'e' and its next byte, and a whole ev:
 * token, at every offset of every length up to past four blocks, against the byte-by-byte rule
 * and against the UTF-8 check and the guard themselves. */
static void test_remask_plain(void **state) {
  (void)state;
  static const uint8_t odd[] = {'%', '\\', '&', 'e', 'v', 'x', 0x80, 0xC3, 0xFF, 0x7F, 0x00};
  uint8_t t[300];
  for (size_t n = 0; n <= 70; n++) {
    memset(t, 'a', n);
    remask_check(t, n);
    each_odd_spot(t, n, odd, sizeof odd, remask_check);
  }
  /* An ev: token (and its escaped spellings) anywhere in plain text: the pass says no, and the
   * guard finds it. */
  static const char *const tokens[] = {"ev:RFVC:Ak3X:AAAA:BBBB:$", "\\u0065v:RFVC:Ak3X:AAAA:BBBB:$",
                                       "%65v:RFVC:Ak3X:AAAA:BBBB:$", "%EVENC"};
  for (size_t k = 0; k < sizeof tokens / sizeof tokens[0]; k++) {
    size_t tl = strlen(tokens[k]);
    for (size_t n = tl; n <= 100; n++)
      for (size_t pos = 0; pos + tl <= n; pos++) {
        memset(t, 'b', n);
        memcpy(t + pos, tokens[k], tl);
        assert_int_not_equal(evs__ev_guard_scan(t, n), 0);
        remask_check(t, n);
      }
  }
  /* The benchmark's message passes in one pass; random ASCII text agrees with the rule. */
  static const char msg[] =
      "{\"name\":\"Claude Shannon\",\"ssn\":\"123-12-1234\",\"card\":{\"number\":"
      "\"4242 4242 4242 4242\",\"cvc\":\"123\"},\"email\":\"claude@example.com\"}";
  uint8_t src[sizeof msg], dst[sizeof msg];
  static const uint8_t key[4] = {1, 2, 3, 4};
  for (size_t i = 0; i + 1 < sizeof msg; i++) src[i] = (uint8_t)msg[i] ^ key[i & 3];
  assert_true(evs__ws_remask_plain(dst, src, sizeof msg - 1, key, key));
  assert_memory_equal(dst, src, sizeof msg - 1); /* the same key again */
  uint32_t x = 99;
  static const char alpha[] = "abcdev%&\\ {}\":,0123456789";
  for (int round = 0; round < 20000; round++) {
    size_t n = (x = x * 1103515245u + 12345u) >> 16 & 255;
    for (size_t i = 0; i < n; i++)
      t[i] = (uint8_t)alpha[((x = x * 1103515245u + 12345u) >> 16) % (sizeof alpha - 1)];
    remask_check(t, n);
  }
}

static void test_writer_and_kinds(void **state) {
  (void)state;
  uint8_t h[14], key[4] = {9, 8, 7, 6};
  assert_int_equal(evs__ws_frame_head(h, 1, 1, 5, NULL), 2);
  assert_int_equal(evs__ws_frame_head(h, 1, 2, 300, NULL), 4);
  assert_int_equal(h[1], 126);
  assert_int_equal(evs__ws_frame_head(h, 1, 2, 70000, key), 14);
  assert_int_equal(h[1], 0x80 | 127);
  uint8_t p[11] = "hello world";
  evs__ws_mask(p, 11, key, 0);
  evs__ws_mask(p, 5, key, 0);
  evs__ws_mask(p + 5, 6, key, 5);
  assert_memory_equal(p, "hello world", 11);
  assert_int_equal(evs__ws_message_kind((const uint8_t *)" \n{\"a\":1}", 9), EVS__WS_MSG_JSON);
  assert_int_equal(evs__ws_message_kind((const uint8_t *)"\xEF\xBB\xBF[1]", 6), EVS__WS_MSG_JSON);
  assert_int_equal(evs__ws_message_kind((const uint8_t *)"<a/>", 4), EVS__WS_MSG_XML);
  assert_int_equal(evs__ws_message_kind((const uint8_t *)"hello", 5), EVS__WS_MSG_OTHER);
  assert_int_equal(evs__ws_message_kind((const uint8_t *)"  ", 2), EVS__WS_MSG_OTHER);
  int code;
  assert_true(evs__ws_close_valid((const uint8_t *)"\x03\xE8ok", 4, &code) && code == 1000);
  assert_true(evs__ws_close_valid(NULL, 0, &code) && code == 1005);
  assert_false(evs__ws_close_code_ok(1006));
  assert_true(evs__ws_close_code_ok(4000));
}

/* The fast path's frame finder takes exactly the whole frames the parser would take as whole
 * messages (or pings and pongs) and leaves everything else to the parser. */
static void test_frame_whole(void **state) {
  (void)state;
  evs__ws_frame f;
  static const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                   0x7f, 0x9f, 0x4d, 0x51, 0x58};
  assert_true(evs__ws_frame_whole(masked, sizeof masked, 1, 0, &f));
  assert_true(f.opcode == EVS__WS_OP_TEXT && f.head_len == 6 && f.len == 5 && f.mask == masked + 2);
  for (size_t n = 0; n < sizeof masked; n++) /* not yet whole */
    assert_false(evs__ws_frame_whole(masked, n, 1, 0, &f));
  assert_false(evs__ws_frame_whole(masked, sizeof masked, 0, 0, &f)); /* wrong side */
  assert_false(evs__ws_frame_whole(masked, sizeof masked, 1, 4, &f));  /* over max_message */
  assert_true(evs__ws_frame_whole(masked, sizeof masked, 1, 5, &f));
  static const uint8_t ping[] = {0x89, 0x01, 'p', 0x81, 0x00};
  assert_true(evs__ws_frame_whole(ping, sizeof ping, 0, 0, &f));
  assert_true(f.opcode == EVS__WS_OP_PING && f.head_len == 2 && f.len == 1 && !f.mask);
  uint8_t mid[300] = {0x82, 0x7E, 0x01, 0x00};
  assert_true(evs__ws_frame_whole(mid, 4 + 256, 0, 0, &f) && f.head_len == 4 && f.len == 256);
  assert_false(evs__ws_frame_whole(mid, 4 + 255, 0, 0, &f));
  /* left to the parser: fragments, continuations, closes, reserved bits, 64-bit lengths,
   * oversized control frames, unknown opcodes */
  static const uint8_t others[][4] = {{0x01, 0x01, 'a'}, {0x80, 0x01, 'a'}, {0x88, 0x00},
                                      {0xC1, 0x01, 'a'}, {0x82, 0x7F, 0}, {0x89, 0x7E, 0, 126},
                                      {0x83, 0x01, 'a'}, {0x09, 0x00}};
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
    assert_false(evs__ws_frame_whole(others[i], 4, 0, 0, &f));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc_examples),
      cmocka_unit_test(test_accept_key),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_utf8_across_fragments_and_limit),
      cmocka_unit_test(test_mask_and_utf8_fast_agree),
      cmocka_unit_test(test_remask_plain),
      cmocka_unit_test(test_writer_and_kinds),
      cmocka_unit_test(test_frame_whole),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
