/*
 * Unit tests for plugins/function-runtime/fn_archive.c and fn_token.c: a deployed Function's
 * tar.gz is unpacked when it holds only files and directories with safe names, and refused
 * (nothing outside the target written) for "..", absolute names, symlinks, hard links and
 * oversized contents; the Authorization header forms and run tokens; the payload digest does
 * not depend on key order. Archives come from fuzz/corpus/fuzz_fn_archive (written by Python's
 * tarfile, an independent writer).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fn_archive.h"
#include "fn_token.h"

static uint8_t *load(const char *name, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/fuzz/corpus/fuzz_fn_archive/%s", EVS_SOURCE_DIR, name);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  uint8_t *buf = malloc(1 << 20);
  *len = fread(buf, 1, 1 << 20, f);
  fclose(f);
  return buf;
}

static void tmpdir(char *out, size_t cap) {
  const char *t = getenv("TMPDIR");
  snprintf(out, cap, "%s/evs-fnar-XXXXXX", t && *t ? t : "/tmp");
  assert_non_null(mkdtemp(out));
}

static void test_unpack_ok(void **state) {
  (void)state;
  size_t len;
  uint8_t *a = load("hello", &len);
  char base[512], dir[600], file[700], err[256];
  tmpdir(base, sizeof base);
  snprintf(dir, sizeof dir, "%s/code", base);
  assert_int_equal(evs__fn_archive_unpack(a, len, 1 << 20, dir, err, sizeof err), 0);
  snprintf(file, sizeof file, "%s/lib/index.js", dir);
  struct stat sb;
  assert_int_equal(stat(file, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  /* The same archive into an existing directory is refused (no merging into old code). */
  assert_int_equal(evs__fn_archive_unpack(a, len, 1 << 20, dir, err, sizeof err), -EEXIST);
  /* Too big unpacked. */
  snprintf(dir, sizeof dir, "%s/small", base);
  assert_int_equal(evs__fn_archive_unpack(a, len, 4, dir, err, sizeof err), -E2BIG);
  free(a);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  assert_int_equal(system(cmd), 0);
}

static void test_refused(void **state) {
  (void)state;
  static const char *const bad[] = {"dotdot", "absolute", "symlink", "hardlink"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t len;
    uint8_t *a = load(bad[i], &len);
    char base[512], dir[600], err[256];
    tmpdir(base, sizeof base);
    snprintf(dir, sizeof dir, "%s/code", base);
    int rc = evs__fn_archive_unpack(a, len, 1 << 20, dir, err, sizeof err);
    assert_int_equal(rc, -EINVAL);
    assert_true(strlen(err) > 0);
    /* Checking without a directory decides the same. */
    assert_int_equal(evs__fn_archive_unpack(a, len, 1 << 20, NULL, err, sizeof err), -EINVAL);
    free(a);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    assert_int_equal(system(cmd), 0);
  }
  char err[64];
  assert_int_equal(evs__fn_archive_unpack((const uint8_t *)"not gzip", 8, 100, NULL, err, sizeof err), -EINVAL);
}

static void test_names(void **state) {
  (void)state;
  assert_true(evs__fn_archive_name_ok("index.js"));
  assert_true(evs__fn_archive_name_ok("lib/a.js"));
  assert_true(evs__fn_archive_name_ok("lib/"));
  assert_true(evs__fn_archive_name_ok("..a"));
  assert_false(evs__fn_archive_name_ok("../a"));
  assert_false(evs__fn_archive_name_ok("a/../b"));
  assert_false(evs__fn_archive_name_ok("a/.."));
  assert_false(evs__fn_archive_name_ok("/etc/passwd"));
  assert_false(evs__fn_archive_name_ok("a//b"));
  assert_false(evs__fn_archive_name_ok("./a"));
  assert_false(evs__fn_archive_name_ok("a\\b"));
  assert_false(evs__fn_archive_name_ok(""));
}

static void test_auth_and_tokens(void **state) {
  (void)state;
  fn_auth a;
  const char *basic = "Basic YXBwXzAxMjM0NTY3ODlhYjprZXk6d2l0aDpjb2xvbnM="; /* app_0123456789ab:key:with:colons */
  assert_int_equal(evs__fn_auth_parse(basic, strlen(basic), &a), 0);
  assert_int_equal(a.kind, FN_AUTH_BASIC);
  assert_string_equal(a.app_id, "app_0123456789ab");
  assert_string_equal(a.key, "key:with:colons");
  char tok[FN_TOKEN_LEN + 1], h[80];
  assert_int_equal(evs__fn_token_new(tok), 0);
  assert_true(evs__fn_token_valid(tok, strlen(tok)));
  snprintf(h, sizeof h, "RunToken %s", tok);
  assert_int_equal(evs__fn_auth_parse(h, strlen(h), &a), 0);
  assert_int_equal(a.kind, FN_AUTH_TOKEN);
  assert_string_equal(a.token, tok);
  snprintf(h, sizeof h, "bearer  %s ", tok);
  assert_int_equal(evs__fn_auth_parse(h, strlen(h), &a), 0);
  assert_int_equal(evs__fn_auth_parse("Bearer rt_short", 15, &a), -EBADMSG);
  assert_int_equal(evs__fn_auth_parse("Digest x", 8, &a), -EINVAL);
  assert_int_equal(evs__fn_auth_parse("Basic !!!", 9, &a), -EINVAL);
  assert_int_equal(evs__fn_auth_parse("Basic bm9jb2xvbg==", 18, &a), -EINVAL); /* "nocolon" */
  char d1[65], d2[65];
  json_t *x = json_loads("{\"b\": [1, {\"z\": true, \"a\": \"ev:x\"}], \"a\": null}", 0, NULL);
  json_t *y = json_loads("{\"a\":null,\"b\":[1,{\"a\":\"ev:x\",\"z\":true}]}", 0, NULL);
  assert_int_equal(evs__fn_payload_digest(x, d1), 0);
  assert_int_equal(evs__fn_payload_digest(y, d2), 0);
  assert_string_equal(d1, d2);
  json_object_set_new(y, "a", json_integer(1));
  assert_int_equal(evs__fn_payload_digest(y, d2), 0);
  assert_string_not_equal(d1, d2);
  json_decref(x);
  json_decref(y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unpack_ok),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_auth_and_tokens),
  };
  return cmocka_run_group_tests_name("fn_archive", tests, NULL, NULL);
}
