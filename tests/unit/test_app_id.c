/*
 * Unit tests for the one app id rule (enclave/proto/evs_app_id.h) and for the enclave process
 * as one of its entry points: every id of a shared set is valid exactly when the rule says, and
 * APP_CREATE (enclave/proc/keys.c) accepts exactly those. The same set is run through evctl and
 * the enclave plugin's admin API by tests/integration/test_70_enclave_api.py
 * (test_one_app_id_rule); keep the two lists alike.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "enclave.h"
#include "evs_app_id.h"

static const char *const good[] = {
    "app_0123456789ab", /* what the enclave plugin generates */
    "app_a",
    "app_int1",
    "app_zzzzzzzzzzzzzzzzzzzzzzzzzzz", /* 31 bytes: the longest */
    "app_000000000000",
};

static const char *const bad[] = {
    "",
    "app_",
    "app",
    "APP_abc",
    "App_abc",
    "app_ABC",
    "app_abC",
    "app-abc",
    "app_a-b",
    "app_a_b",
    "app_a.b",
    "app_a/b",
    "app_zzzzzzzzzzzzzzzzzzzzzzzzzzzz", /* 32 bytes */
    "xapp_1",
    " app_1",
    "app_1 ",
    "app_\xc3\xa9",
    "key_0123",
};

static void test_rule(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    if (!evs_app_id_valid(good[i], strlen(good[i]))) fail_msg("refused: '%s'", good[i]);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (evs_app_id_valid(bad[i], strlen(bad[i]))) fail_msg("accepted: '%s'", bad[i]);
  assert_false(evs_app_id_valid(NULL, 5));
  assert_false(evs_app_id_valid("app_a\0b", 7)); /* a NUL inside */
  assert_true(evs_app_id_valid("app_ab", 5));    /* only len bytes count: "app_a" */
  assert_int_equal(strlen(good[3]), EVS_APP_ID_MAX_LEN);
  /* Every byte value at every position after the prefix: only [a-z0-9] passes. */
  for (int c = 0; c < 256; c++) {
    char id[8] = "app_x1";
    id[4] = (char)c;
    int want = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    assert_int_equal(evs_app_id_valid(id, 6), want);
  }
}

static void test_enclave_entry(void **state) {
  (void)state;
  uint8_t key[EVS_SEAL_KEY_LEN];
  memset(key, 7, sizeof key);
  evs_enclave *e = NULL;
  assert_int_equal(evs__enclave_new(key, &e), EVS_EP_OK);
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    evs_app_created c;
    int r = evs__app_create(e, (const uint8_t *)good[i], strlen(good[i]), &c);
    if (r != EVS_EP_OK) fail_msg("APP_CREATE refused '%s': %d", good[i], r);
    evs__app_created_done(&c);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    evs_app_created c;
    int r = evs__app_create(e, (const uint8_t *)bad[i], strlen(bad[i]), &c);
    if (r != EVS_EP_E_INVALID) fail_msg("APP_CREATE took '%s': %d", bad[i], r);
  }
  evs__enclave_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rule),
      cmocka_unit_test(test_enclave_entry),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
