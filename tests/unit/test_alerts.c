/*
 * Unit tests of plugins/alerts/alerts_core.c: the alerts.json loader, the event sanitiser,
 * payload building (webhook, Slack, Discord), the webhook signature against a known vector
 * computed independently, the backoff bounds, and URL redaction for logs.
 */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "alerts_core.h"

#define SIG_VECTOR "f05f2539e3ae1c49aec5f8cfdad75ef6b06480b133973ffbb7ec9e18827af177"

static char err[512];

static evs__alerts_config *parse_ok(const char *text) {
  evs__alerts_config *c = NULL;
  if (evs__alerts_config_parse(text, strlen(text), "alerts.json", &c, err, sizeof err) != 0)
    fail_msg("unexpected error: %s", err);
  return c;
}

static void expect_invalid(const char *text, const char *msg) {
  evs__alerts_config *c = NULL;
  err[0] = 0;
  assert_int_equal(evs__alerts_config_parse(text, strlen(text), "alerts.json", &c, err, sizeof err),
                   -EINVAL);
  assert_null(c);
  if (!strstr(err, msg)) fail_msg("error '%s' lacks '%s'", err, msg);
}

static void test_config_parse(void **state) {
  (void)state;
  evs__alerts_config *c = parse_ok(
      "[{\"relay\": \"API.example.com\", \"type\": \"webhook\", \"url\": \"https://h.example/a\"},"
      " {\"relay\": \"*\", \"type\": \"webhook\", \"url\": \"https://h.example/a\"},"
      " {\"function\": \"hello\", \"type\": \"slack\", \"url\": \"https://hooks.slack.com/s/T/B/x\"},"
      " {\"relay\": \"*\", \"type\": \"discord\", \"url\": \"http://127.0.0.1:9/d\"}]");
  assert_int_equal(c->nentries, 4);
  assert_int_equal(c->n, 3); /* the two entries with the same type and url merge */
  assert_int_equal(c->dests[0].kind, EVS__ALERT_WEBHOOK);
  assert_int_equal(c->dests[0].nrelays, 2);
  assert_string_equal(c->dests[0].relays[0], "api.example.com");
  assert_string_equal(c->dests[0].relays[1], "*");
  assert_int_equal(c->dests[1].kind, EVS__ALERT_SLACK);
  assert_int_equal(c->dests[1].nfunctions, 1);
  assert_int_equal(c->dests[1].nrelays, 0);
  assert_int_equal(c->dests[2].kind, EVS__ALERT_DISCORD);
  evs__alerts_config_free(c);
  c = parse_ok("[]");
  assert_int_equal(c->n, 0);
  evs__alerts_config_free(c);
  evs__alerts_config_free(NULL);
}

static void test_config_errors(void **state) {
  (void)state;
  expect_invalid("{}", "alerts.json: $: expected an array");
  expect_invalid("[1]", "$[0]: expected an object");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"https://a/\",\"x\":\"1\"}]",
                 "$[0]: unknown member");
  expect_invalid("[{\"type\":\"webhook\",\"url\":\"https://a/\"}]", "exactly one of 'relay'");
  expect_invalid("[{\"relay\":\"*\",\"function\":\"f\",\"type\":\"webhook\",\"url\":\"https://a/\"}]",
                 "exactly one of 'relay'");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"pager\",\"url\":\"https://a/\"}]",
                 "expected one of webhook, slack, discord");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"ftp://a/secret\"}]", "$[0]: 'url'");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"https:///p\"}]", "'url'");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"https://a/b c\"}]", "'url'");
  expect_invalid("[{\"relay\":\"*\",\"type\":\"webhook\"}]", "'url' is required");
  expect_invalid("[{\"relay\":\"a b\",\"type\":\"webhook\",\"url\":\"https://a/\"}]", "'relay'");
  expect_invalid("[{\"relay\":7,\"type\":\"webhook\",\"url\":\"https://a/\"}]", "expected a string");
  expect_invalid("[{\"relay\":\"*\",\"relay\":\"x\",\"type\":\"webhook\",\"url\":\"https://a/\"}]",
                 "alerts.json:1:");
  expect_invalid("[", "alerts.json:1:");
  /* A URL is a credential: it is never quoted in an error. */
  expect_invalid("[{\"relay\":\"*\",\"type\":\"nope\",\"url\":\"https://h/tok3n\"}]", "type");
  assert_null(strstr(err, "tok3n"));
  expect_invalid("[{\"relay\":\"*\",\"url\":\"https://h/tok3n\" \"x\"}]", "alerts.json:1:");
  assert_null(strstr(err, "tok3n")); /* jansson's "near '<token>'" is cut */
  /* The entry cap. */
  char *big = malloc(300 * 64 + 8);
  size_t o = 0;
  big[o++] = '[';
  for (int i = 0; i < EVS__ALERTS_MAX_ENTRIES + 1; i++)
    o += (size_t)sprintf(big + o, "%s{\"relay\":\"*\",\"type\":\"slack\",\"url\":\"https://a/%d\"}",
                         i ? "," : "", i);
  big[o++] = ']';
  big[o] = 0;
  expect_invalid(big, "more than 256 alerts");
  free(big);
}

static void test_config_file(void **state) {
  (void)state;
  evs__alerts_config *c = NULL;
  char path[] = "/tmp/evs-alerts-test-XXXXXX";
  assert_int_equal(evs__alerts_config_load_file("/nonexistent/alerts.json", &c, err, sizeof err),
                   -ENOENT);
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *text = "[{\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"https://a/\"}]";
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  assert_int_equal(evs__alerts_config_load_file(path, &c, err, sizeof err), 0);
  assert_int_equal(c->n, 1);
  evs__alerts_config_free(c);
  unlink(path);
}

static const char *full_event =
    "{\"timestamp\":\"2026-03-01T12:00:00.000Z\",\"teamUuid\":\"team_1\","
    "\"errorMessage\":\"refused\",\"evMessage\":\"in relay\",\"activityLink\":\"https://x/a\","
    "\"errorType\":\"service-unavailable\",\"statusCode\":503,\"statusGroup\":\"5XX\","
    "\"relayUuid\":\"relay_1\",\"inboundDomain\":\"API.example.com\","
    "\"requestBody\":\"4242424242424242\",\"headers\":{\"authorization\":\"Bearer x\"}}";

static void test_event_and_webhook_body(void **state) {
  (void)state;
  evs__alert_event *ev = NULL;
  assert_int_equal(evs__alert_event_parse("relay.error", full_event, &ev), 0);
  size_t len = 0;
  char *body = evs__alert_body(EVS__ALERT_WEBHOOK, ev, &len);
  assert_non_null(body);
  assert_int_equal(len, strlen(body));
  /* The documented fields in the documented order; the extra members are gone. */
  assert_string_equal(
      body,
      "{\"teamUuid\":\"team_1\",\"errorMessage\":\"refused\",\"evMessage\":\"in relay\","
      "\"activityLink\":\"https://x/a\",\"timestamp\":\"2026-03-01T12:00:00.000Z\","
      "\"errorType\":\"service-unavailable\",\"statusCode\":503,\"statusGroup\":\"5XX\","
      "\"relayUuid\":\"relay_1\",\"inboundDomain\":\"API.example.com\"}");
  free(body);
  evs__alert_event_free(ev);

  /* Wrong types are dropped, not converted. */
  assert_int_equal(evs__alert_event_parse("relay.error",
                                          "{\"statusCode\":\"503\",\"teamUuid\":5,"
                                          "\"errorType\":\"bad-request\",\"statusGroup\":null}",
                                          &ev),
                   0);
  body = evs__alert_body(EVS__ALERT_WEBHOOK, ev, &len);
  assert_string_equal(body, "{\"errorType\":\"bad-request\"}");
  free(body);
  evs__alert_event_free(ev);

  ev = NULL;
  assert_int_equal(evs__alert_event_parse("relay.error", "[1]", &ev), -EINVAL);
  assert_int_equal(evs__alert_event_parse("relay.error", "nope", &ev), -EINVAL);
  assert_int_equal(evs__alert_event_parse("", "{}", &ev), -EINVAL);
  assert_null(ev);
  evs__alert_event_free(NULL);
}

static void test_matching(void **state) {
  (void)state;
  evs__alerts_config *c = parse_ok(
      "[{\"relay\":\"api.example.com\",\"type\":\"webhook\",\"url\":\"https://a/1\"},"
      " {\"relay\":\"*\",\"type\":\"webhook\",\"url\":\"https://a/2\"},"
      " {\"function\":\"hello\",\"type\":\"webhook\",\"url\":\"https://a/3\"}]");
  evs__alert_event *relay_ev = NULL, *other_ev = NULL, *fn_ev = NULL, *audit_ev = NULL;
  assert_int_equal(evs__alert_event_parse("relay.error", full_event, &relay_ev), 0);
  assert_int_equal(evs__alert_event_parse("relay.error", "{\"inboundDomain\":\"b.example\"}",
                                          &other_ev),
                   0);
  assert_int_equal(evs__alert_event_parse("function.error", "{\"functionName\":\"hello\"}", &fn_ev),
                   0);
  assert_int_equal(evs__alert_event_parse("audit.x", "{\"inboundDomain\":\"api.example.com\"}",
                                          &audit_ev),
                   0);
  assert_true(evs__alert_dest_matches(&c->dests[0], relay_ev)); /* case-insensitive */
  assert_true(evs__alert_dest_matches(&c->dests[1], relay_ev));
  assert_false(evs__alert_dest_matches(&c->dests[2], relay_ev));
  assert_false(evs__alert_dest_matches(&c->dests[0], other_ev));
  assert_true(evs__alert_dest_matches(&c->dests[1], other_ev));
  assert_false(evs__alert_dest_matches(&c->dests[0], fn_ev));
  assert_false(evs__alert_dest_matches(&c->dests[1], fn_ev)); /* relay "*" is relays only */
  assert_true(evs__alert_dest_matches(&c->dests[2], fn_ev));
  for (size_t i = 0; i < 3; i++) assert_false(evs__alert_dest_matches(&c->dests[i], audit_ev));
  evs__alert_event_free(relay_ev);
  evs__alert_event_free(other_ev);
  evs__alert_event_free(fn_ev);
  evs__alert_event_free(audit_ev);
  evs__alerts_config_free(c);
}

static void test_chat_bodies(void **state) {
  (void)state;
  evs__alert_event *ev = NULL;
  assert_int_equal(
      evs__alert_event_parse("relay.error",
                             "{\"errorMessage\":\"a <b> & c\",\"statusCode\":502,"
                             "\"errorType\":\"service-unavailable\",\"statusGroup\":\"5XX\","
                             "\"inboundDomain\":\"d.example\",\"activityLink\":\"https://x/a\","
                             "\"secret\":\"s3cr3t\"}",
                             &ev),
      0);
  size_t len;
  char *s = evs__alert_body(EVS__ALERT_SLACK, ev, &len);
  json_t *j = json_loads(s, 0, NULL);
  assert_non_null(j);
  assert_int_equal(json_object_size(j), 1);
  const char *t = json_string_value(json_object_get(j, "text"));
  assert_non_null(t);
  assert_non_null(strstr(t, "Relay error on d.example: 502 service-unavailable (5XX)"));
  assert_non_null(strstr(t, "a &lt;b&gt; &amp; c"));
  assert_non_null(strstr(t, "<https://x/a|View activity>"));
  assert_null(strstr(s, "s3cr3t"));
  json_decref(j);
  free(s);

  s = evs__alert_body(EVS__ALERT_DISCORD, ev, &len);
  j = json_loads(s, 0, NULL);
  assert_non_null(j);
  t = json_string_value(json_object_get(j, "content"));
  assert_non_null(strstr(t, "a <b> & c"));
  assert_non_null(strstr(t, "https://x/a"));
  json_t *am = json_object_get(j, "allowed_mentions");
  assert_true(json_is_array(json_object_get(am, "parse")));
  assert_int_equal(json_array_size(json_object_get(am, "parse")), 0);
  json_decref(j);
  free(s);
  evs__alert_event_free(ev);

  /* Discord's 2000-character limit: a long message is cut. */
  char big[4096];
  snprintf(big, sizeof big, "{\"errorMessage\":\"%02000d\",\"evMessage\":\"%01000d\"}", 0, 0);
  assert_int_equal(evs__alert_event_parse("relay.error", big, &ev), 0);
  s = evs__alert_body(EVS__ALERT_DISCORD, ev, &len);
  j = json_loads(s, 0, NULL);
  assert_true(json_string_length(json_object_get(j, "content")) <= 2000 * 4);
  size_t chars = 0;
  for (const unsigned char *p = (const unsigned char *)json_string_value(json_object_get(j, "content"));
       *p; p++)
    chars += (*p & 0xC0) != 0x80;
  assert_true(chars <= 2000);
  json_decref(j);
  free(s);
  evs__alert_event_free(ev);
}

static void test_summary(void **state) {
  (void)state;
  size_t len;
  char *s = evs__alert_summary_body(EVS__ALERT_WEBHOOK, 140, 60, "2026-01-01T00:00:00.000Z", &len);
  json_t *j = json_loads(s, 0, NULL);
  assert_int_equal(json_integer_value(json_object_get(j, "suppressedCount")), 140);
  assert_string_equal(json_string_value(json_object_get(j, "errorType")), "alerts-suppressed");
  json_decref(j);
  free(s);
  s = evs__alert_summary_body(EVS__ALERT_SLACK, 3, 30, NULL, &len);
  assert_non_null(strstr(s, "\"text\""));
  assert_non_null(strstr(s, "3 alert(s) suppressed"));
  free(s);
}

static void test_signature(void **state) {
  (void)state;
  /* Vector computed independently:
   * python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef0123456789abcdef",
   *             b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())' */
  const char *key = "0123456789abcdef0123456789abcdef";
  const char *body = "{\"a\":1}";
  char sig[EVS__ALERTS_SIG_MAX];
  assert_int_equal(evs__alert_sign((const uint8_t *)key, strlen(key), 1700000000,
                                   (const uint8_t *)body, strlen(body), sig, sizeof sig),
                   0);
  assert_string_equal(sig, "t=1700000000,v1=" SIG_VECTOR);
  assert_int_equal(evs__alert_sign((const uint8_t *)key, strlen(key), 1700000000,
                                   (const uint8_t *)body, strlen(body), sig, 10),
                   -ENOSPC);
  assert_int_equal(evs__alert_sign(NULL, 0, 1, (const uint8_t *)body, 1, sig, sizeof sig), -EINVAL);
}

static void test_backoff_and_retryable(void **state) {
  (void)state;
  for (unsigned a = 1; a <= 12; a++) {
    uint64_t full = 1000;
    for (unsigned i = 1; i < a; i++) full = full * 2 > 60000 ? 60000 : full * 2;
    uint64_t lo = evs__alert_backoff_ms(a, 0), hi = evs__alert_backoff_ms(a, UINT32_MAX);
    assert_true(lo >= full / 2 && hi <= full);
    for (uint32_t r = 0; r < 5000; r += 7) {
      uint64_t d = evs__alert_backoff_ms(a, r);
      assert_true(d >= full / 2 && d <= full);
    }
  }
  assert_int_equal(evs__alert_backoff_ms(1, 0), 500);
  assert_true(evs__alert_backoff_ms(100, 12345) <= 60000);
  assert_true(evs__alert_retryable(-111));
  assert_true(evs__alert_retryable(429));
  assert_true(evs__alert_retryable(500));
  assert_true(evs__alert_retryable(503));
  assert_false(evs__alert_retryable(400));
  assert_false(evs__alert_retryable(404));
  assert_false(evs__alert_retryable(301));
}

static void test_url_origin(void **state) {
  (void)state;
  char o[64];
  evs__alert_url_origin("https://hooks.slack.com/services/T0/B0/secret", o, sizeof o);
  assert_string_equal(o, "https://hooks.slack.com");
  evs__alert_url_origin("http://127.0.0.1:8080?x=1", o, sizeof o);
  assert_string_equal(o, "http://127.0.0.1:8080");
  evs__alert_url_origin("https://user:pw@h.example:1/p", o, sizeof o);
  assert_string_equal(o, "https://h.example:1");
  evs__alert_url_origin("nonsense", o, sizeof o);
  assert_string_equal(o, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_parse),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_config_file),
      cmocka_unit_test(test_event_and_webhook_body),
      cmocka_unit_test(test_matching),
      cmocka_unit_test(test_chat_bodies),
      cmocka_unit_test(test_summary),
      cmocka_unit_test(test_signature),
      cmocka_unit_test(test_backoff_and_retryable),
      cmocka_unit_test(test_url_origin),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
