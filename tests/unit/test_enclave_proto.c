/*
 * Unit tests for the enclave process's framing and dispatch (enclave/proc/frame.c, ops.c): a
 * message parsed into items, every malformed shape refused (short header, magic, version, item
 * count over the limit, item lengths that overrun or underfill the body), responses built with
 * the hard cap, error responses for malformed requests and unknown ops (echoing the request id),
 * a mutation loop that must never crash, and the value checks used by ENCRYPT (JSON numbers,
 * JavaScript trim).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "enclave.h"

/* ---- helpers ------------------------------------------------------------------------------- */

typedef struct msgbuf {
  uint8_t p[8192];
  size_t len; /* including the u32 length */
  uint32_t n;
} msgbuf;

static void msg_begin(msgbuf *m, uint16_t op, uint32_t id) {
  memset(m, 0, sizeof *m);
  evs_ep_put_u32(m->p + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(m->p + 8, EVS_EP_VERSION);
  evs_ep_put_u16(m->p + 10, op);
  evs_ep_put_u32(m->p + 12, id);
  m->len = EVS_EP_HEADER_LEN;
}

static void msg_add(msgbuf *m, const void *data, size_t len) {
  assert_true(m->len + 4 + len <= sizeof m->p);
  evs_ep_put_u32(m->p + m->len, (uint32_t)len);
  memcpy(m->p + m->len + 4, data, len);
  m->len += 4 + len;
  m->n++;
}

static void msg_end(msgbuf *m) {
  evs_ep_put_u32(m->p, (uint32_t)(m->len - 4));
  evs_ep_put_u32(m->p + 20, m->n);
}

/* Parses a response the enclave built (the whole message, with its length). */
static int32_t response(const evs_ep_buf *b, evs_ep_msg *ret, evs_ep_item *items) {
  assert_true(b->len >= EVS_EP_HEADER_LEN);
  assert_int_equal(evs_ep_get_u32(b->p), b->len - 4);
  assert_int_equal(evs__ep_parse(b->p + 4, b->len - 4, ret, items), EVS_EP_OK);
  return ret->status;
}

static evs_enclave *new_enclave(void) {
  uint8_t key[EVS_SEAL_KEY_LEN];
  memset(key, 7, sizeof key);
  evs_enclave *e = NULL;
  assert_int_equal(evs__enclave_new(key, &e), EVS_EP_OK);
  return e;
}

static evs_ep_item items[EVS_EP_MAX_ITEMS];

/* ---- parse ----------------------------------------------------------------------------------- */

static void test_parse_ok(void **state) {
  (void)state;
  msgbuf m;
  msg_begin(&m, EVS_EP_DECRYPT, 0xdeadbeef);
  msg_add(&m, "app", 3);
  msg_add(&m, "", 0);
  msg_add(&m, "ev:x", 4);
  msg_end(&m);
  evs_ep_msg r;
  assert_int_equal(evs__ep_parse(m.p + 4, m.len - 4, &r, items), EVS_EP_OK);
  assert_int_equal(r.op, EVS_EP_DECRYPT);
  assert_int_equal(r.request_id, 0xdeadbeef);
  assert_int_equal(r.nitems, 3);
  assert_int_equal(r.items[0].len, 3);
  assert_memory_equal(r.items[0].p, "app", 3);
  assert_int_equal(r.items[1].len, 0);
  assert_memory_equal(r.items[2].p, "ev:x", 4);
}

static void test_parse_malformed(void **state) {
  (void)state;
  msgbuf m;
  evs_ep_msg r;
  msg_begin(&m, EVS_EP_HELLO, 42);
  msg_add(&m, "abc", 3);
  msg_end(&m);
  const uint8_t *b = m.p + 4;
  size_t len = m.len - 4;
  /* Every truncation is refused; the op and id are echoed once they are present. */
  for (size_t l = 0; l < len; l++) {
    assert_int_equal(evs__ep_parse(b, l, &r, items), EVS_EP_E_PROTOCOL);
    if (l >= 12) assert_int_equal(r.request_id, 42);
    else assert_int_equal(r.request_id, 0);
  }
  /* Trailing bytes. */
  uint8_t big[64];
  memcpy(big, b, len);
  big[len] = 0;
  assert_int_equal(evs__ep_parse(big, len + 1, &r, items), EVS_EP_E_PROTOCOL);
  /* Magic, version. */
  memcpy(big, b, len);
  big[0] ^= 1;
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  assert_int_equal(r.op, EVS_EP_HELLO);
  memcpy(big, b, len);
  evs_ep_put_u16(big + 4, EVS_EP_VERSION + 1);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  /* An item length that overruns the body, including one that would wrap. */
  memcpy(big, b, len);
  evs_ep_put_u32(big + 20, 4);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  evs_ep_put_u32(big + 20, 0xffffffffu);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  /* More items than declared bytes, and more than the limit. */
  memcpy(big, b, len);
  evs_ep_put_u32(big + 16, 2);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  evs_ep_put_u32(big + 16, EVS_EP_MAX_ITEMS + 1);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
  /* Fewer items than bytes. */
  evs_ep_put_u32(big + 16, 0);
  assert_int_equal(evs__ep_parse(big, len, &r, items), EVS_EP_E_PROTOCOL);
}

static void test_parse_item_limit(void **state) {
  (void)state;
  size_t n = EVS_EP_MAX_ITEMS;
  size_t len = EVS_EP_HEADER_LEN - 4 + 4 * n;
  uint8_t *b = calloc(1, len + 4);
  assert_non_null(b);
  evs_ep_put_u32(b, EVS_EP_MAGIC);
  evs_ep_put_u16(b + 4, EVS_EP_VERSION);
  evs_ep_put_u32(b + 16, (uint32_t)n);
  evs_ep_msg r;
  assert_int_equal(evs__ep_parse(b, len, &r, items), EVS_EP_OK); /* 4096 empty items */
  assert_int_equal(r.nitems, n);
  evs_ep_put_u32(b + 16, (uint32_t)n + 1);
  assert_int_equal(evs__ep_parse(b, len + 4, &r, items), EVS_EP_E_PROTOCOL);
  free(b);
}

/* ---- build --------------------------------------------------------------------------------- */

static void test_build(void **state) {
  (void)state;
  evs_ep_buf b = {0};
  evs__ep_begin(&b, EVS_EP_ENCRYPT, 7, 0);
  assert_int_equal(evs__ep_add(&b, "hello", 5), 0);
  assert_int_equal(evs__ep_add_status(&b, EVS_EP_E_DECRYPT, NULL, 0, NULL, 0), 0);
  assert_int_equal(evs__ep_add_status(&b, 0, "\x01", 1, "42", 2), 0);
  uint8_t *p = evs__ep_reserve(&b, 100);
  assert_non_null(p);
  memcpy(p, "abc", 3);
  evs__ep_shrink_last(&b, 100, 3);
  evs__ep_finish(&b);
  evs_ep_msg r;
  assert_int_equal(response(&b, &r, items), 0);
  assert_int_equal(r.op, EVS_EP_ENCRYPT);
  assert_int_equal(r.request_id, 7);
  assert_int_equal(r.nitems, 4);
  assert_memory_equal(r.items[0].p, "hello", 5);
  assert_int_equal(r.items[1].len, 4);
  assert_int_equal((int32_t)evs_ep_get_u32(r.items[1].p), EVS_EP_E_DECRYPT);
  assert_int_equal(r.items[2].len, 7);
  assert_memory_equal(r.items[2].p, "\0\0\0\0\x01" "42", 7);
  assert_int_equal(r.items[3].len, 3);
  assert_memory_equal(r.items[3].p, "abc", 3);

  /* Growth far past the first allocation keeps the content. */
  evs__ep_begin(&b, EVS_EP_DECRYPT, 8, 0);
  for (int i = 0; i < 1000; i++) assert_int_equal(evs__ep_add(&b, "0123456789", 10), 0);
  evs__ep_finish(&b);
  assert_int_equal(response(&b, &r, items), 0);
  assert_int_equal(r.nitems, 1000);
  assert_memory_equal(r.items[999].p, "0123456789", 10);
  evs__ep_buf_done(&b);
}

static void test_build_limits(void **state) {
  (void)state;
  evs_ep_buf b = {0};
  evs_ep_msg r;
  /* Over EVS_EP_MAX_MESSAGE: the response becomes an empty EVS_EP_E_INVALID. */
  evs__ep_begin(&b, EVS_EP_ENCRYPT_FILE, 9, 0);
  assert_null(evs__ep_reserve(&b, EVS_EP_MAX_MESSAGE));
  assert_int_equal(evs__ep_add(&b, "x", 1), -1);
  evs__ep_finish(&b);
  assert_int_equal(response(&b, &r, items), EVS_EP_E_INVALID);
  assert_int_equal(r.request_id, 9);
  assert_int_equal(r.nitems, 0);
  /* Over EVS_EP_MAX_ITEMS. */
  evs__ep_begin(&b, EVS_EP_DECRYPT, 10, 0);
  for (int i = 0; i < EVS_EP_MAX_ITEMS; i++) assert_int_equal(evs__ep_add(&b, NULL, 0), 0);
  assert_int_equal(evs__ep_add(&b, NULL, 0), -1);
  evs__ep_finish(&b);
  assert_int_equal(response(&b, &r, items), EVS_EP_E_INVALID);
  /* A fresh begin clears the overflow. */
  evs__ep_begin(&b, EVS_EP_DECRYPT, 11, 0);
  assert_int_equal(evs__ep_add(&b, "y", 1), 0);
  evs__ep_finish(&b);
  assert_int_equal(response(&b, &r, items), 0);
  assert_int_equal(r.nitems, 1);
  evs__ep_buf_done(&b);
  evs__ep_buf_done(&b); /* twice is fine */
}

/* ---- dispatch ---------------------------------------------------------------------------- */

static void test_handle_errors(void **state) {
  (void)state;
  evs_enclave *e = new_enclave();
  evs_ep_buf out = {0};
  evs_ep_msg r;
  msgbuf m;

  /* Garbage. */
  evs__ep_handle(e, (const uint8_t *)"nonsense", 8, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_PROTOCOL);
  assert_int_equal(r.nitems, 0);
  evs__ep_handle(e, NULL, 0, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_PROTOCOL);

  /* Unknown op, echoing the request id. */
  msg_begin(&m, 999, 1234);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_UNKNOWN_OP);
  assert_int_equal(r.request_id, 1234);
  assert_int_equal(r.op, 999);

  /* A request with a non-zero status. */
  msg_begin(&m, EVS_EP_HELLO, 1);
  evs_ep_put_u32(m.p + 16, (uint32_t)-1);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_PROTOCOL);

  /* Wrong item counts for each op. */
  static const struct { uint16_t op; int n; } wrong[] = {
      {EVS_EP_HELLO, 1},        {EVS_EP_APP_CREATE, 0}, {EVS_EP_APP_CREATE, 2},
      {EVS_EP_APP_UNLOCK, 4},   {EVS_EP_APP_LOCK, 0},   {EVS_EP_APP_STATUS, 2},
      {EVS_EP_ENCRYPT, 2},      {EVS_EP_DECRYPT, 0},    {EVS_EP_ENCRYPT_FILE, 2},
      {EVS_EP_DECRYPT_FILE, 3},  {EVS_EP_DECRYPT_ROLE, 0},
  };
  for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
    msg_begin(&m, wrong[i].op, (uint32_t)i);
    for (int k = 0; k < wrong[i].n; k++) msg_add(&m, "app", 3);
    msg_end(&m);
    evs__ep_handle(e, m.p + 4, m.len - 4, &out);
    assert_int_equal(response(&out, &r, items), EVS_EP_E_PROTOCOL);
    assert_int_equal(r.request_id, i);
  }

  /* Bad app ids and apps that are not unlocked. */
  msg_begin(&m, EVS_EP_APP_CREATE, 1);
  msg_add(&m, "../etc", 6);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_INVALID);
  msg_begin(&m, EVS_EP_DECRYPT, 1);
  msg_add(&m, "app_nope", 8);
  msg_add(&m, "ev:x", 4);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_NO_APP);

  /* HELLO answers with the version and a self-check (no sandbox in this test process). */
  msg_begin(&m, EVS_EP_HELLO, 5);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), 0);
  assert_int_equal(r.nitems, 2);
  assert_int_equal(evs_ep_get_u16(r.items[0].p), EVS_EP_VERSION);
  assert_true(r.items[1].len > 17 && memcmp(r.items[1].p, "evserver-enclave ", 17) == 0);
  /* ... ending with the pid, then the tag when there is one. */
  char text[400], want[100];
  snprintf(text, sizeof text, "%.*s", (int)r.items[1].len, (const char *)r.items[1].p);
  snprintf(want, sizeof want, " mlock=none pid=%ld", (long)getpid());
  assert_non_null(strstr(text, want));
  assert_string_equal(strstr(text, want) + strlen(want), "");
  evs__enclave_set_tag(e, "cfg-1_A");
  msg_begin(&m, EVS_EP_HELLO, 6);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), 0);
  snprintf(text, sizeof text, "%.*s", (int)r.items[1].len, (const char *)r.items[1].p);
  snprintf(want, sizeof want, " pid=%ld tag=cfg-1_A", (long)getpid());
  assert_non_null(strstr(text, want));
  assert_string_equal(strstr(text, want) + strlen(want), "");

  /* ATTACH is the process loop's (it carries a descriptor); here it is an unknown op. */
  msg_begin(&m, EVS_EP_ATTACH, 0);
  msg_end(&m);
  evs__ep_handle(e, m.p + 4, m.len - 4, &out);
  assert_int_equal(response(&out, &r, items), EVS_EP_E_UNKNOWN_OP);

  evs__ep_buf_done(&out);
  evs__enclave_free(e);
}

/* Random mutations of valid requests (with an unlocked app) never crash and always give a
 * well-formed response. The fuzz target does this at scale; this is the quick version. */
static void test_handle_mutations(void **state) {
  (void)state;
  evs_enclave *e = new_enclave();
  evs_app_created c;
  assert_int_equal(evs__app_create(e, (const uint8_t *)"app_m", 5, &c), EVS_EP_OK);
  evs_ep_buf out = {0};
  evs_ep_msg r;
  msgbuf m;
  msgbuf base[4];
  msg_begin(&base[0], EVS_EP_ENCRYPT, 1);
  msg_add(&base[0], "app_m", 5);
  msg_add(&base[0], "prime256v1", 10);
  msg_add(&base[0], "pii", 3);
  msg_add(&base[0], "s:abc", 5);
  msg_add(&base[0], "n:1.5e3", 7);
  msg_end(&base[0]);
  evs__ep_handle(e, base[0].p + 4, base[0].len - 4, &out);
  assert_int_equal(response(&out, &r, items), 0);
  char ev[512];
  assert_true(r.items[0].len - 4 < sizeof ev);
  memcpy(ev, r.items[0].p + 4, r.items[0].len - 4);
  size_t evlen = r.items[0].len - 4;
  msg_begin(&base[1], EVS_EP_DECRYPT, 2);
  msg_add(&base[1], "app_m", 5);
  msg_add(&base[1], ev, evlen);
  msg_end(&base[1]);
  msg_begin(&base[2], EVS_EP_APP_UNLOCK, 3);
  msg_add(&base[2], "app_m", 5);
  msg_add(&base[2], c.token, EVS_APP_TOKEN_LEN);
  msg_add(&base[2], c.share1, sizeof c.share1);
  msg_add(&base[2], c.share2, sizeof c.share2);
  msg_add(&base[2], c.wrapped, sizeof c.wrapped);
  msg_end(&base[2]);
  msg_begin(&base[3], EVS_EP_DECRYPT_FILE, 4);
  msg_add(&base[3], "app_m", 5);
  msg_add(&base[3], "%EVENC", 6);
  msg_end(&base[3]);

  srand(12345);
  for (int iter = 0; iter < 20000; iter++) {
    m = base[iter % 4];
    int flips = 1 + rand() % 4;
    for (int k = 0; k < flips; k++) {
      size_t at = 4 + (size_t)rand() % (m.len - 4);
      m.p[at] = (uint8_t)rand();
    }
    size_t len = m.len - 4;
    if (rand() % 8 == 0) len = (size_t)rand() % (len + 1);
    evs__ep_handle(e, m.p + 4, len, &out);
    (void)response(&out, &r, items);
  }
  evs__app_created_done(&c);
  evs__ep_buf_done(&out);
  evs__enclave_free(e);
}

/* ---- value checks ------------------------------------------------------------------------- */

static void test_json_number(void **state) {
  (void)state;
  static const char *good[] = {"0", "-0", "1", "12.5", "1e21", "1e+21", "-1.5E-7", "123456789"};
  static const char *bad[] = {"", "-", "01", "1.", ".5", "1e", "1e+", "+1", "NaN", "Infinity",
                              "0x10", "1 ", " 1", "1.5.5", "null", "true"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    assert_true(evs__json_number_valid((const uint8_t *)good[i], strlen(good[i])));
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_false(evs__json_number_valid((const uint8_t *)bad[i], strlen(bad[i])));
}

static void test_js_trim(void **state) {
  (void)state;
  static const struct { const char *in, *out; } cases[] = {
      {"  a b  ", "a b"},
      {"\t\n\v\f\r a \r\n", "a"},
      {"\xc2\xa0x\xc2\xa0", "x"},              /* U+00A0 */
      {"\xef\xbb\xbfx\xe3\x80\x80", "x"},      /* U+FEFF, U+3000 */
      {"\xe2\x80\x80y\xe2\x80\xa8\xe2\x80\x8a", "y"}, /* U+2000, U+2028, U+200A */
      {"\xe2\x80\x8bz", "\xe2\x80\x8bz"},      /* U+200B is not whitespace */
      {"\xc3\xa9", "\xc3\xa9"},
      {"   ", ""},
      {"", ""},
      {"\xff a", "\xff a"},                     /* invalid UTF-8 is kept */
      {"a \x80", "a \x80"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t start, n = evs__js_trim((const uint8_t *)cases[i].in, strlen(cases[i].in), &start);
    assert_int_equal(n, strlen(cases[i].out));
    assert_memory_equal(cases[i].in + start, cases[i].out, n);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_ok),        cmocka_unit_test(test_parse_malformed),
      cmocka_unit_test(test_parse_item_limit), cmocka_unit_test(test_build),
      cmocka_unit_test(test_build_limits),    cmocka_unit_test(test_handle_errors),
      cmocka_unit_test(test_handle_mutations), cmocka_unit_test(test_json_number),
      cmocka_unit_test(test_js_trim),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
