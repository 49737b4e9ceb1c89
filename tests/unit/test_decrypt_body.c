/*
 * Unit tests for plugins/relay-common/decrypt_body.c, the batched decryption both relays use
 * (the Inbound Relay's responses, the Outbound Relay's requests), against a fake host whose
 * decrypt_values / decrypt_file answer later (a queue the test runs): JSON values typed (numbers
 * and booleans bare, strings quoted and escaped), XML escaped, form values percent-encoded, a
 * %EVENC file, values the keys do not open left as they were, the emit callback before the
 * first value and the spool after it, an enclave failure failing the body, an enclave call that
 * cannot start, and freeing while calls are in flight (their answers then only free memory).
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decrypt_body.h"
#include "evserver/evs_plugin.h"

#define EV_STR "ev:QkNE:str:AAAA:BBBB:$"
#define EV_NUM "ev:QkNE:num:AAAA:BBBB:$"
#define EV_BOOL "ev:QkNE:boo:AAAA:BBBB:$"
#define EV_BAD "ev:QkNE:bad:AAAA:BBBB:$"

/* ---- the fake host: crypto calls queued, answered by run_pending ------------------------ */

typedef struct call {
  int file;
  evs_values_cb vcb;
  evs_bytes_cb bcb;
  void *arg;
  char **values;
  size_t n;
  size_t file_len;
} call;

static call g_calls[64];
static size_t g_ncalls;
static int g_fail_status; /* answer every call with this status */
static int g_refuse;      /* decrypt_values returns this at once */

static int fake_decrypt_values(evs_plugin *p, const evs_decrypt_request *req, evs_values_cb cb,
                               void *arg) {
  (void)p;
  if (g_refuse) return g_refuse;
  call *c = &g_calls[g_ncalls++];
  memset(c, 0, sizeof *c);
  c->vcb = cb;
  c->arg = arg;
  c->n = req->n;
  c->values = calloc(req->n, sizeof *c->values);
  for (size_t i = 0; i < req->n; i++) c->values[i] = strndup((const char *)req->values[i].data, req->values[i].len);
  assert_string_equal(req->app_id, "app_test");
  return 0;
}

static int fake_decrypt_file(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg) {
  (void)p;
  call *c = &g_calls[g_ncalls++];
  memset(c, 0, sizeof *c);
  c->file = 1;
  c->bcb = cb;
  c->arg = arg;
  c->file_len = req->len;
  return 0;
}

static void run_pending(void) {
  for (size_t k = 0; k < g_ncalls; k++) {
    call *c = &g_calls[k];
    if (c->file) {
      static const uint8_t plain[] = "FILE-PLAINTEXT";
      c->bcb(c->arg, g_fail_status, g_fail_status ? NULL : plain, g_fail_status ? 0 : 14);
      continue;
    }
    evs_crypto_result res[16];
    for (size_t i = 0; i < c->n; i++) {
      const char *v = c->values[i];
      res[i] = (evs_crypto_result){EVS_CRYPTO_OK, EVS_CRYPTO_STRING, (const uint8_t *)"a\"b<", 4};
      if (strstr(v, ":num:")) res[i] = (evs_crypto_result){EVS_CRYPTO_OK, EVS_CRYPTO_NUMBER, (const uint8_t *)"42", 2};
      if (strstr(v, ":boo:")) res[i] = (evs_crypto_result){EVS_CRYPTO_OK, EVS_CRYPTO_BOOLEAN, (const uint8_t *)"true", 4};
      if (strstr(v, ":bad:")) res[i] = (evs_crypto_result){EVS_CRYPTO_E_DECRYPT, 0, NULL, 0};
    }
    if (g_fail_status) c->vcb(c->arg, g_fail_status, NULL, 0);
    else c->vcb(c->arg, 0, res, c->n);
    for (size_t i = 0; i < c->n; i++) free(c->values[i]);
    free(c->values);
  }
  g_ncalls = 0;
}

static evs_host g_host;

/* ---- the caller ---------------------------------------------------------------------------- */

typedef struct out {
  char direct[4096];
  size_t direct_len;
  int done_status;
  int done_calls;
} out;

static int on_emit(void *arg, const uint8_t *p, size_t n) {
  out *o = arg;
  memcpy(o->direct + o->direct_len, p, n);
  o->direct_len += n;
  return 0;
}

static void on_done(void *arg, int status) {
  out *o = arg;
  o->done_status = status;
  o->done_calls++;
}

static evs__decrypt_body *make(out *o, const char *ct, int direct) {
  evs__decrypt_body_cfg c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.host = &g_host;
  c.app_id = "app_test";
  c.spool_dir = "/tmp";
  c.emit = direct ? on_emit : NULL;
  c.done = on_done;
  c.arg = o;
  evs__decrypt_body *d = NULL;
  assert_int_equal(evs__decrypt_body_new(&c, ct, &d), 0);
  return d;
}

/* Everything after the direct bytes: the spool with its holes filled. */
static char *spooled(evs__decrypt_body *d, size_t *ret_len) {
  relay_spool *s = evs__decrypt_body_spool(d);
  relay_spool_rewind(s);
  char *buf = calloc(1, 8192);
  size_t len = 0, n;
  do {
    assert_int_equal(relay_spool_read(s, (uint8_t *)buf + len, 8192 - len - 1, &n), 0);
    len += n;
  } while (n > 0);
  *ret_len = len;
  return buf;
}

static char *run(const char *ct, const char *body, int direct, out *o, int *ret_finish) {
  evs__decrypt_body *d = make(o, ct, direct);
  assert_int_equal(evs__decrypt_body_feed(d, (const uint8_t *)body, strlen(body)), 0);
  *ret_finish = evs__decrypt_body_finish(d);
  if (*ret_finish == EVS__DBODY_PENDING) run_pending();
  size_t len;
  char *s = spooled(d, &len);
  char *all = calloc(1, o->direct_len + len + 1);
  memcpy(all, o->direct, o->direct_len);
  memcpy(all + o->direct_len, s, len);
  free(s);
  evs__decrypt_body_free(d);
  return all;
}

static void test_json_typed(void **state) {
  (void)state;
  out o = {0};
  int fin;
  char *got = run("application/json",
                  "{\"s\":\"" EV_STR "\",\"n\":\"" EV_NUM "\",\"b\":\"" EV_BOOL "\",\"x\":\"" EV_BAD
                  "\",\"k\":1}", 1, &o, &fin);
  assert_int_equal(fin, EVS__DBODY_PENDING);
  assert_int_equal(o.done_calls, 1);
  assert_int_equal(o.done_status, 0);
  assert_string_equal(got, "{\"s\":\"a\\\"b<\",\"n\":42,\"b\":true,\"x\":\"" EV_BAD "\",\"k\":1}");
  /* The bytes before the first value (its opening quote is the value's) went straight out. */
  assert_int_equal(o.direct_len, 5);
  free(got);
}

static void test_xml_form_text(void **state) {
  (void)state;
  out o = {0};
  int fin;
  char *got = run("application/xml", "<r><s>" EV_STR "</s></r>", 0, &o, &fin);
  assert_string_equal(got, "<r><s>a&quot;b&lt;</s></r>");
  assert_int_equal(o.direct_len, 0); /* no emit: everything spooled */
  free(got);
  memset(&o, 0, sizeof o);
  got = run("application/x-www-form-urlencoded", "a=1&s=" EV_STR, 0, &o, &fin);
  assert_string_equal(got, "a=1&s=a%22b%3C");
  free(got);
  memset(&o, 0, sizeof o);
  got = run("text/plain", "no values here", 0, &o, &fin);
  assert_int_equal(fin, 0); /* nothing to wait for */
  assert_int_equal(o.done_calls, 0);
  assert_string_equal(got, "no values here");
  free(got);
}

static void test_file(void **state) {
  (void)state;
  out o = {0};
  int fin;
  char *got = run("application/octet-stream", "%EVENC-something-encrypted", 0, &o, &fin);
  assert_int_equal(fin, EVS__DBODY_PENDING);
  assert_string_equal(got, "FILE-PLAINTEXT");
  free(got);
}

static void test_enclave_failure(void **state) {
  (void)state;
  out o = {0};
  evs__decrypt_body *d = make(&o, "application/json", 0);
  const char *body = "[\"" EV_STR "\"]";
  assert_int_equal(evs__decrypt_body_feed(d, (const uint8_t *)body, strlen(body)), 0);
  assert_int_equal(evs__decrypt_body_finish(d), EVS__DBODY_PENDING);
  g_fail_status = EVS_CRYPTO_UNAVAILABLE;
  run_pending();
  g_fail_status = 0;
  assert_int_equal(o.done_calls, 1);
  assert_int_equal(o.done_status, EVS_CRYPTO_UNAVAILABLE);
  evs__decrypt_body_free(d);
  /* A call that cannot start fails the body at once. */
  memset(&o, 0, sizeof o);
  d = make(&o, "application/json", 0);
  g_refuse = EVS_ENOCRYPTO;
  assert_int_equal(evs__decrypt_body_feed(d, (const uint8_t *)body, strlen(body)), 0);
  assert_int_equal(evs__decrypt_body_finish(d), EVS_ENOCRYPTO);
  g_refuse = 0;
  evs__decrypt_body_free(d);
}

static void test_free_while_pending(void **state) {
  (void)state;
  out o = {0};
  evs__decrypt_body *d = make(&o, "application/json", 1);
  const char *body = "[\"" EV_STR "\",\"" EV_NUM "\"]";
  assert_int_equal(evs__decrypt_body_feed(d, (const uint8_t *)body, strlen(body)), 0);
  assert_int_equal(evs__decrypt_body_finish(d), EVS__DBODY_PENDING);
  evs__decrypt_body_free(d); /* the request went away */
  run_pending();             /* the answers only free memory (ASan checks) */
  assert_int_equal(o.done_calls, 0);
}

int main(void) {
  memset(&g_host, 0, sizeof g_host);
  g_host.size = sizeof g_host;
  g_host.decrypt_values = fake_decrypt_values;
  g_host.decrypt_file = fake_decrypt_file;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json_typed),       cmocka_unit_test(test_xml_form_text),
      cmocka_unit_test(test_file),             cmocka_unit_test(test_enclave_failure),
      cmocka_unit_test(test_free_while_pending),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
