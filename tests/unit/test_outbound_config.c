/*
 * Unit tests for plugins/relay-outbound/outbound_config.c: a valid document compiles, with
 * defaults filled in and the /v2/relay-outbound answer rendered; every invalid one is refused
 * with an error naming its field; stored documents round-trip (version, etag); the table finds
 * apps by id.
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

#include "outbound_config.h"

#define APP "app_0123456789ab"

static int compile(const char *text, evs__ob_app **ret, char *err, size_t errlen) {
  json_error_t je;
  json_t *o = json_loads(text, 0, &je);
  if (!o) fail_msg("test JSON: %s", je.text);
  int rc = evs__ob_app_compile(APP, o, ret, err, errlen);
  json_decref(o);
  return rc;
}

static void bad(const char *text, const char *want) {
  evs__ob_app *a = NULL;
  char err[512] = "";
  int rc = compile(text, &a, err, sizeof err);
  if (rc != -EINVAL) fail_msg("%s: accepted", text);
  if (!strstr(err, want)) fail_msg("%s: error '%s' lacks '%s'", text, err, want);
  assert_null(a);
}

static void test_valid(void **state) {
  evs__ob_app *a = NULL;
  char err[512];
  int rc = compile("{\"appId\": \"" APP "\", \"outboundDestinations\": {"
                   "\"pay\": {\"destinationDomain\": \"api.pay.example/v1/*\", "
                   "\"fieldsToEncrypt\": [\"$.card.number\", \"$.iban\"], \"encryptFiles\": true},"
                   "\"any\": {\"destinationDomain\": \"*.example.com\"}}}",
                   &a, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_int_equal(a->n, 2);
  assert_int_equal(a->refuse_unconfigured, 1); /* the default */
  assert_string_equal(a->dests[0].id, "pay");
  assert_int_equal(a->dests[0].nfields, 2);
  assert_int_equal(a->dests[0].encrypt_files, 1);
  assert_ptr_equal(evs__ob_app_match(a, "api.pay.example", 443, "/v1/charges", 11), &a->dests[0]);
  assert_ptr_equal(evs__ob_app_match(a, "api.pay.example", 443, "/v2", 3), NULL);
  assert_ptr_equal(evs__ob_app_match(a, "x.example.com", 443, NULL, 0), &a->dests[1]);
  json_t *v2 = json_loads(a->v2_body, 0, NULL);
  assert_non_null(v2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(v2,
                      "outboundDestinations"), "pay"), "destinationDomain")), "api.pay.example/v1/*");
  json_decref(v2);
  assert_string_equal(json_string_value(json_object_get(a->config, "unconfiguredHosts")), "refuse");
  assert_null(json_object_get(a->config, "appId"));

  /* Stored and read back: same configuration, version and etag. */
  json_t *doc = evs__ob_app_doc(a, 7, 1700000000000);
  char *text = json_dumps(doc, JSON_COMPACT);
  evs__ob_app *b = NULL;
  rc = evs__ob_app_from_doc(APP, (const uint8_t *)text, strlen(text), &b, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_int_equal(b->version, 7);
  assert_string_equal(a->etag, b->etag);
  assert_true(json_equal(a->config, b->config));
  assert_int_equal(evs__ob_app_from_doc("app_other", (const uint8_t *)text, strlen(text), &b, err,
                                        sizeof err), -EINVAL);
  free(text);
  json_decref(doc);
  evs__ob_app_free(b);

  /* A different configuration has a different etag at the same version. */
  evs__ob_app *c = NULL;
  rc = compile("{\"outboundDestinations\": {}, \"unconfiguredHosts\": \"passthrough\"}", &c, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_int_equal(c->refuse_unconfigured, 0);
  doc = evs__ob_app_doc(c, 7, 1700000000000);
  assert_string_not_equal(a->etag, c->etag);
  json_decref(doc);
  assert_string_equal(c->v2_body, "{\"outboundDestinations\":{}}");
  evs__ob_app_free(c);
  evs__ob_app_free(a);
}

static void test_invalid(void **state) {
  bad("[]", "JSON object");
  bad("{}", "missing member \"outboundDestinations\"");
  bad("{\"outboundDestinations\": []}", "outboundDestinations: expected an object");
  bad("{\"outboundDestinations\": {}, \"extra\": 1}", "unknown member \"extra\"");
  bad("{\"appId\": \"app_ffffffffffff\", \"outboundDestinations\": {}}", "appId");
  bad("{\"outboundDestinations\": {}, \"unconfiguredHosts\": \"allow\"}", "unconfiguredHosts");
  bad("{\"outboundDestinations\": {\"a b\": {\"destinationDomain\": \"x.com\"}}}", "destination id");
  bad("{\"outboundDestinations\": {\"a\": 1}}", "outboundDestinations.a: expected an object");
  bad("{\"outboundDestinations\": {\"a\": {}}}", "outboundDestinations.a: missing member \"destinationDomain\"");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": 3}}}",
      "outboundDestinations.a.destinationDomain: expected a string");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"https://x.com\"}}}",
      "outboundDestinations.a.destinationDomain: give the host alone");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"x.com\", \"fieldsToEncrypt\": \"f\"}}}",
      "outboundDestinations.a.fieldsToEncrypt: expected an array");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"x.com\", \"fieldsToEncrypt\": [\"\"]}}}",
      "outboundDestinations.a.fieldsToEncrypt[0]");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"x.com\", \"fieldsToEncrypt\": [\"$[\"]}}}",
      "outboundDestinations.a.fieldsToEncrypt[0]");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"x.com\", \"encryptFiles\": 1}}}",
      "outboundDestinations.a.encryptFiles");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"x.com\", \"mtls\": {}}}}",
      "outboundDestinations.a: unknown member \"mtls\"");
  bad("{\"outboundDestinations\": {\"a\": {\"destinationDomain\": \"X.com\"}, "
      "\"b\": {\"destinationDomain\": \"x.com.\"}}}",
      "outboundDestinations.b.destinationDomain: \"x.com.\" is the same destination as outboundDestinations.a");
  /* At most 256 destinations. */
  char *big = malloc(300 * 64 + 64);
  size_t o = (size_t)sprintf(big, "{\"outboundDestinations\": {");
  for (int i = 0; i < 257; i++)
    o += (size_t)sprintf(big + o, "%s\"d%d\": {\"destinationDomain\": \"h%d.example\"}", i ? "," : "", i, i);
  sprintf(big + o, "}}");
  bad(big, "at most 256");
  free(big);

  evs__ob_app *a = NULL;
  char err[64];
  json_t *o2 = json_pack("{s:{}}", "outboundDestinations");
  assert_int_equal(evs__ob_app_compile("bad/app", o2, &a, err, sizeof err), -EINVAL);
  json_decref(o2);
  assert_int_equal(evs__ob_app_from_doc(APP, (const uint8_t *)"{", 1, &a, err, sizeof err), -EINVAL);
  assert_int_equal(evs__ob_app_from_doc(APP, (const uint8_t *)"{\"appId\":\"" APP "\"}", 27, &a, err,
                                        sizeof err), -EINVAL);
}

static evs__ob_app *app_for(const char *id) {
  evs__ob_app *a = NULL;
  char err[128];
  json_t *o = json_pack("{s:{s:{s:s}}}", "outboundDestinations", "d", "destinationDomain", "x.example");
  assert_int_equal(evs__ob_app_compile(id, o, &a, err, sizeof err), 0);
  json_decref(o);
  return a;
}

static void test_table(void **state) {
  evs__ob_table *t = evs__ob_table_new();
  const char *ids[] = {"app_c", "app_a", "app_b"};
  for (int i = 0; i < 3; i++) assert_int_equal(evs__ob_table_add(t, app_for(ids[i])), 0);
  assert_int_equal(evs__ob_table_add(t, app_for("app_a")), -EEXIST);
  evs__ob_table_seal(t);
  assert_int_equal(evs__ob_table_add(t, app_for("app_d")), -EPERM);
  assert_int_equal(evs__ob_table_count(t), 3);
  for (int i = 0; i < 3; i++) assert_string_equal(evs__ob_table_get(t, ids[i])->app_id, ids[i]);
  assert_null(evs__ob_table_get(t, "app_d"));
  assert_null(evs__ob_table_get(NULL, "app_a"));
  assert_string_equal(evs__ob_table_at(t, 0)->app_id, "app_a");
  evs__ob_table_free(t);
  assert_true(evs__ob_app_id_valid("app_0123456789ab"));
  assert_false(evs__ob_app_id_valid(""));
  assert_false(evs__ob_app_id_valid("app/x"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid),
      cmocka_unit_test(test_invalid),
      cmocka_unit_test(test_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
