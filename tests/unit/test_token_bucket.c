/*
 * Unit tests of lib/token_bucket.h, the rate limiter of alerts, the Outbound Relay's
 * unauthenticated leaves and GET /public-keys: the burst, the continuous refill, the cap, a
 * clock that goes back, and the property a fixed window lacks (no burst across a window edge).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "token_bucket.h"

static int take_n(evs_token_bucket *b, int n, uint64_t now) {
  int ok = 0;
  for (int i = 0; i < n; i++) ok += evs_token_bucket_take(b, now);
  return ok;
}

static void test_rate(void **state) {
  (void)state;
  evs_token_bucket b;
  evs_token_bucket_init(&b, 30, 30, 1000);
  assert_int_equal(take_n(&b, 200, 1000), 30);
  assert_false(evs_token_bucket_take(&b, 1000 + 1999)); /* 30/min: one token per 2 s */
  assert_true(evs_token_bucket_take(&b, 1000 + 2000));
  assert_false(evs_token_bucket_take(&b, 1000 + 2000));
  /* A long pause refills to the burst, not beyond. */
  assert_int_equal(take_n(&b, 200, 10u * 60 * 1000), 30);
  /* A clock that goes back adds nothing. */
  assert_false(evs_token_bucket_take(&b, 5));
}

static void test_burst_apart_from_rate(void **state) {
  (void)state;
  evs_token_bucket b;
  evs_token_bucket_init(&b, 60, 5, 0);
  assert_int_equal(take_n(&b, 100, 0), 5);
  assert_int_equal(take_n(&b, 100, 1000), 1); /* 60/min: one a second */
  assert_int_equal(take_n(&b, 100, 60000), 5); /* a minute later: the burst, not 59 */
  /* Nonsense settings are taken as 1. */
  evs_token_bucket_init(&b, 0, -3, 0);
  assert_int_equal(take_n(&b, 10, 0), 1);
  assert_int_equal(take_n(&b, 10, 60000), 1);
}

/* Whatever the start and the pace of requests, over any span of T ms no more than
 * burst + rate * T / 60000 pass: the bound a fixed one-minute window breaks at its edge. */
static void test_no_more_than_the_rate_over_any_span(void **state) {
  (void)state;
  const int64_t rate = 100;
  for (uint64_t start = 0; start < 120000; start += 7919) {
    for (uint64_t step = 1; step <= 2000; step *= 3) {
      evs_token_bucket b;
      evs_token_bucket_init(&b, rate, rate, start);
      uint64_t span = 90000;
      int passed = 0;
      for (uint64_t t = start; t < start + span; t += step) passed += evs_token_bucket_take(&b, t);
      assert_true(passed <= rate + (int)(rate * span / 60000) + 1);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rate),
      cmocka_unit_test(test_burst_apart_from_rate),
      cmocka_unit_test(test_no_more_than_the_rate_over_any_span),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
