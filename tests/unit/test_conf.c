/*
 * Unit tests for core/conf.c: the typed value parsers, the evserver.conf syntax, validation
 * against item tables (every type, bound, flag and error message), the host's settings with
 * their defaults and cross-key checks, path resolution, the shipped etc/evserver.conf, and a
 * check that docs/configuration.md documents every key of every host table as it is.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"

#ifndef EVS_SOURCE_DIR
#error "EVS_SOURCE_DIR must name the source tree"
#endif
#ifndef EVS_DEFAULT_PLUGINS_DIR
#define EVS_DEFAULT_PLUGINS_DIR "/usr/lib/evserver/plugins.d"
#endif

#define P "/etc/evs/t.conf"
#define MIN_LISTENER "[listener \"http\"]\naddress = 127.0.0.1:8080\n"

static char err[1024];

static evs__settings *load_ok(const char *text) {
  evs__settings *s = NULL;
  err[0] = 0;
  if (evs__settings_load_buffer(P, text, strlen(text), &s, err, sizeof err) != 0)
    fail_msg("unexpected error: %s\n--- input ---\n%s", err, text);
  assert_non_null(s);
  return s;
}

static void expect_error(const char *text, const char *want) {
  evs__settings *s = (evs__settings *)0x1;
  err[0] = 0;
  if (evs__settings_load_buffer(P, text, strlen(text), &s, err, sizeof err) == 0)
    fail_msg("expected error '%s'\n--- input ---\n%s", want, text);
  assert_ptr_equal(s, (evs__settings *)0x1); /* untouched on failure */
  if (strcmp(err, want) != 0) fail_msg("error\n got: %s\nwant: %s", err, want);
}

static evs__conf *parse_ok(const char *text, size_t len) {
  evs__conf *c = NULL;
  if (evs__conf_parse_buffer(P, text, len, &c, err, sizeof err) != 0)
    fail_msg("unexpected parse error: %s", err);
  return c;
}

static void expect_parse_error(const char *text, size_t len, const char *want) {
  evs__conf *c = (evs__conf *)0x1;
  err[0] = 0;
  if (evs__conf_parse_buffer(P, text, len, &c, err, sizeof err) == 0)
    fail_msg("expected parse error '%s'", want);
  assert_ptr_equal(c, (evs__conf *)0x1);
  if (strcmp(err, want) != 0) fail_msg("parse error\n got: %s\nwant: %s", err, want);
}

/* ---- Typed parsers ----------------------------------------------------------------------- */

static void test_parse_int(void **state) {
  int64_t v = 42;
  (void)state;
  assert_int_equal(evs__conf_parse_int("0", &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(evs__conf_parse_int("-5", &v), 0);
  assert_int_equal(v, -5);
  assert_int_equal(evs__conf_parse_int("+7", &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(evs__conf_parse_int("9223372036854775807", &v), 0);
  assert_true(v == INT64_MAX);
  v = 42;
  const char *bad[] = {"", "-", "+", "1x", " 1", "1 ", "0x10", "1.0", "9223372036854775808",
                       "--1", "1e3", NULL};
  for (int i = 0; bad[i]; i++) {
    if (evs__conf_parse_int(bad[i], &v) == 0) fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(v, 42); /* untouched */
  }
  assert_int_equal(evs__conf_parse_int(NULL, &v), -1);
}

static void test_parse_bool(void **state) {
  int b = 7;
  (void)state;
  const char *yes[] = {"on", "yes", "true", "ON", "Yes", "TRUE", NULL};
  const char *no[] = {"off", "no", "false", "OFF", "No", "False", NULL};
  for (int i = 0; yes[i]; i++) {
    assert_int_equal(evs__conf_parse_bool(yes[i], &b), 0);
    assert_int_equal(b, 1);
  }
  for (int i = 0; no[i]; i++) {
    assert_int_equal(evs__conf_parse_bool(no[i], &b), 0);
    assert_int_equal(b, 0);
  }
  b = 7;
  const char *bad[] = {"", "1", "0", "onn", "y", "enabled", " on", NULL};
  for (int i = 0; bad[i]; i++) {
    if (evs__conf_parse_bool(bad[i], &b) == 0) fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(b, 7);
  }
}

static void test_parse_duration(void **state) {
  static const struct {
    const char *in;
    int64_t ms;
  } ok[] = {{"250ms", 250}, {"10s", 10000}, {"5m", 300000}, {"1h", 3600000}, {"30", 30000},
            {"0", 0},       {"10S", 10000}, {"2H", 7200000}, {"1MS", 1}};
  int64_t v = 42;
  (void)state;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    assert_int_equal(evs__conf_parse_duration_ms(ok[i].in, &v), 0);
    assert_int_equal(v, ok[i].ms);
  }
  v = 42;
  const char *bad[] = {"", "s", "1.5s", "-1s", "10 s", "1d", "1sec", "ms",
                       "9999999999999999h", "99999999999999999999", "+1s", NULL};
  for (int i = 0; bad[i]; i++) {
    if (evs__conf_parse_duration_ms(bad[i], &v) == 0) fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(v, 42);
  }
}

static void test_parse_size(void **state) {
  static const struct {
    const char *in;
    int64_t bytes;
  } ok[] = {{"512", 512}, {"64k", 65536}, {"25m", 25 * 1048576}, {"1g", 1073741824},
            {"1K", 1024}, {"0", 0}};
  int64_t v = 42;
  (void)state;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    assert_int_equal(evs__conf_parse_size(ok[i].in, &v), 0);
    assert_int_equal(v, ok[i].bytes);
  }
  v = 42;
  const char *bad[] = {"", "k", "1t", "1kb", "-1", "1.5m", "1 k", "9999999999999g", NULL};
  for (int i = 0; bad[i]; i++) {
    if (evs__conf_parse_size(bad[i], &v) == 0) fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(v, 42);
  }
}

/* ---- Syntax ------------------------------------------------------------------------------ */

static void test_parse_structure(void **state) {
  const char *text = "\xEF\xBB\xBF# comment\n"
                     "\n"
                     "  [server]  \n"
                     "workers=2\n"
                     "\tlog_level   =   debug   \n"
                     "user = \"  spaced  \"\n"
                     "state_dir = a # not a comment\n"
                     "[ listener   \"my listener\" ]\r\n"
                     "address = \"\"\r\n"
                     "   # indented comment\n"
                     "tls =\n"
                     "[plugin \"p\"]\n"
                     "x = \"a\"b\"";
  evs__conf *c = parse_ok(text, strlen(text));
  (void)state;
  assert_string_equal(c->path, P);
  assert_string_equal(c->dir, "/etc/evs");
  assert_int_equal(c->nsections, 3);
  assert_string_equal(c->sections[0].type, "server");
  assert_null(c->sections[0].name);
  assert_int_equal(c->sections[0].line, 3);
  assert_int_equal(c->sections[0].nentries, 4);
  assert_string_equal(c->sections[0].entries[0].key, "workers");
  assert_string_equal(c->sections[0].entries[0].value, "2");
  assert_int_equal(c->sections[0].entries[0].line, 4);
  assert_string_equal(c->sections[0].entries[1].value, "debug");
  assert_string_equal(c->sections[0].entries[2].value, "  spaced  ");
  assert_string_equal(c->sections[0].entries[3].value, "a # not a comment");
  assert_string_equal(c->sections[1].type, "listener");
  assert_string_equal(c->sections[1].name, "my listener");
  assert_int_equal(c->sections[1].line, 8);
  assert_string_equal(c->sections[1].entries[0].value, "");
  assert_string_equal(c->sections[1].entries[1].key, "tls");
  assert_string_equal(c->sections[1].entries[1].value, "");
  assert_int_equal(c->sections[1].entries[1].line, 11);
  assert_string_equal(c->sections[2].entries[0].value, "a\"b");
  evs__conf_free(c);

  /* Empty input and comments only are valid syntax. */
  c = parse_ok("", 0);
  assert_int_equal(c->nsections, 0);
  evs__conf_free(c);
  c = parse_ok("# x\n\n", 5);
  assert_int_equal(c->nsections, 0);
  evs__conf_free(c);
  evs__conf_free(NULL);
}

static void test_parse_errors(void **state) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"key = v\n", P ":1: key 'key' is outside of any [section]"},
      {"[server\n", P ":1: malformed section header; expected [type] or [type \"name\"] with a "
                    "type of lower-case letters, digits, '_' and '-'"},
      {"[server] x\n", P ":1: malformed section header; expected [type] or [type \"name\"] "
                       "with a type of lower-case letters, digits, '_' and '-'"},
      {"[Server]\n", P ":1: malformed section header; expected [type] or [type \"name\"] with a "
                     "type of lower-case letters, digits, '_' and '-'"},
      {"[]\n", P ":1: malformed section header; expected [type] or [type \"name\"] with a type "
               "of lower-case letters, digits, '_' and '-'"},
      {"[listener \"a]\n", P ":1: malformed section header; expected [type] or [type \"name\"] "
                           "with a type of lower-case letters, digits, '_' and '-'"},
      {"[listener a]\n", P ":1: malformed section header; expected [type] or [type \"name\"] "
                         "with a type of lower-case letters, digits, '_' and '-'"},
      {"[listener \"\"]\n", P ":1: empty section name"},
      {"[server]\nWorkers = 1\n", P ":2: expected 'key = value', '[section]' or '# comment'; "
                                  "keys are lower-case letters, digits and '_'"},
      {"[server]\nworkers\n", P ":2: expected 'key = value', '[section]' or '# comment'; keys "
                              "are lower-case letters, digits and '_'"},
      {"[server]\n= 1\n", P ":2: expected 'key = value', '[section]' or '# comment'; keys are "
                          "lower-case letters, digits and '_'"},
      {"[server]\nwork-ers = 1\n", P ":2: expected 'key = value', '[section]' or '# comment'; "
                                   "keys are lower-case letters, digits and '_'"},
      {"[server]\nworkers = 1\n\nworkers = 2\n", P ":4: key 'workers' is already set on line 2"},
      {"[server]\n[admin]\n[server]\n", P ":3: section [server] is already defined on line 1"},
      {"[listener \"a\"]\n[listener \"a\"]\n",
       P ":2: section [listener \"a\"] is already defined on line 1"},
      {"[server]\nuser = \"abc\n", P ":2: key 'user': unterminated quoted value"},
      {"[server]\nuser = \"\n", P ":2: key 'user': unterminated quoted value"},
      {"[server]\nuser = a\x01 b\n", P ":2: control character 0x01 at column 9"},
      {"[server]\nuser = a\rb\n", P ":2: control character 0x0d at column 9"},
      {"[server]\nuser = a\x7f\n", P ":2: control character 0x7f at column 9"},
      {"[server]\nuser = \xff\n", P ":2: invalid UTF-8 at column 8"},
      {"[server]\nuser = \xc0\xaf\n", P ":2: invalid UTF-8 at column 8"},     /* overlong */
      {"[server]\nuser = \xed\xa0\x80\n", P ":2: invalid UTF-8 at column 8"}, /* surrogate */
      {"[server]\nuser = \xf4\x90\x80\x80\n", P ":2: invalid UTF-8 at column 8"}, /* >10FFFF */
      {"[server]\nuser = \xe2\x82\n", P ":2: invalid UTF-8 at column 8"},         /* cut */
  };
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_parse_error(cases[i].in, strlen(cases[i].in), cases[i].want);

  /* Valid multi-byte UTF-8 passes. */
  evs__conf *c = parse_ok("[server]\nuser = d\xc3\xa9j\xc3\xa0 \xe2\x82\xac \xf0\x9f\x94\x91\n",
                          strlen("[server]\nuser = d\xc3\xa9j\xc3\xa0 \xe2\x82\xac "
                                 "\xf0\x9f\x94\x91\n"));
  evs__conf_free(c);

  /* An embedded NUL byte. */
  static const char nul[] = "[server]\nuser = a\0b\n";
  expect_parse_error(nul, sizeof nul - 1, P ":2: NUL byte at column 9");
}

static void test_parse_limits(void **state) {
  size_t n = EVS_CONF_MAX_LINE_BYTES;
  char *buf = malloc(EVS_CONF_MAX_FILE_BYTES + 2);
  evs__conf *c;
  (void)state;
  assert_non_null(buf);
  /* A line of exactly the limit is fine; one byte more is not. */
  memcpy(buf, "[server]\nuser = ", 16);
  memset(buf + 16, 'u', n - 7);
  buf[9 + n] = '\n';
  c = parse_ok(buf, 9 + n + 1);
  assert_int_equal(strlen(c->sections[0].entries[0].value), n - 7);
  evs__conf_free(c);
  memset(buf + 16, 'u', n - 6);
  buf[9 + n + 1] = '\n';
  expect_parse_error(buf, 9 + n + 2, P ":2: line longer than 4096 bytes");
  /* The CR of a CRLF does not count. */
  memset(buf + 16, 'u', n - 7);
  buf[9 + n] = '\r';
  buf[9 + n + 1] = '\n';
  c = parse_ok(buf, 9 + n + 2);
  evs__conf_free(c);

  /* File size: exactly the limit parses (comments), one more byte is refused. */
  memset(buf, '#', EVS_CONF_MAX_FILE_BYTES + 1);
  for (size_t i = 1000; i < EVS_CONF_MAX_FILE_BYTES; i += 1000) buf[i] = '\n';
  c = parse_ok(buf, EVS_CONF_MAX_FILE_BYTES);
  evs__conf_free(c);
  expect_parse_error(buf, EVS_CONF_MAX_FILE_BYTES + 1, P ": file is larger than 1048576 bytes");

  /* A file full of tiny unique keys, and one full of tiny sections, parse (in linear time). */
  {
    size_t off = 0, k = 0;
    off += (size_t)sprintf(buf, "[plugin \"p\"]\n");
    while (off + 16 < EVS_CONF_MAX_FILE_BYTES) off += (size_t)sprintf(buf + off, "k%zx=\n", k++);
    c = parse_ok(buf, off);
    assert_int_equal(c->sections[0].nentries, k);
    evs__conf_free(c);
    off = 0;
    k = 0;
    while (off + 24 < EVS_CONF_MAX_FILE_BYTES)
      off += (size_t)sprintf(buf + off, "[plugin \"%zx\"]\n", k++);
    c = parse_ok(buf, off);
    assert_int_equal(c->nsections, k);
    evs__conf_free(c);
    /* ...and a duplicate at the very end is still found. */
    off += (size_t)sprintf(buf + off, "[plugin \"0\"]\n");
    c = NULL;
    assert_int_equal(evs__conf_parse_buffer(P, buf, off, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "section [plugin \"0\"] is already defined on line 1"));
  }
  free(buf);
}

static void test_secret_lines_not_echoed(void **state) {
  /* The parser cannot know which keys are secret, so it never echoes a line or a value. */
  static const char *inputs[] = {
      "[store]\npostgresql://evs:hunter2@db/evs\n",
      "[store]\nhunter2\n",
      "[store]\ndsn = \"host=db password=hunter2\n",
      "[store]\ndsn = host=db password=hunter2\x01\n",
      "hunter2 = x\n[store]\n",
  };
  (void)state;
  for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
    evs__conf *c = NULL;
    err[0] = 0;
    assert_int_equal(evs__conf_parse_buffer(P, inputs[i], strlen(inputs[i]), &c, err, sizeof err),
                     -1);
    assert_true(err[0]);
    if (strstr(err, "hunter2") && i != 4) fail_msg("secret echoed: %s", err);
  }
}

/* ---- Validation against item tables ------------------------------------------------------ */

static const evs_config_item test_items[] = {
    {"n", EVS_CONFIG_INT, "5", 1, 10, 0, "bounded int"},
    {"free", EVS_CONFIG_INT, NULL, 0, 0, 0, "unbounded int"},
    {"atleast", EVS_CONFIG_INT, NULL, 1, INT64_MAX, 0, "int with a minimum"},
    {"flag", EVS_CONFIG_BOOL, "off", 0, 0, 0, "bool"},
    {"wait", EVS_CONFIG_DURATION, "1s", 100, 3600000, 0, "duration"},
    {"anytime", EVS_CONFIG_DURATION, NULL, 0, 0, 0, "unbounded duration"},
    {"buf", EVS_CONFIG_SIZE, "64k", 1024, 1048576, 0, "size"},
    {"file", EVS_CONFIG_PATH, NULL, 0, 0, 0, "path"},
    {"name", EVS_CONFIG_STRING, NULL, 0, 0, 0, "string"},
    {"req", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_REQUIRED, "required string"},
    {"pin", EVS_CONFIG_INT, NULL, 0, 9999, EVS_CONFIG_SECRET, "secret int"},
    {"token", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_SECRET | EVS_CONFIG_REQUIRED, "secret"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int validate_text(const char *body, const evs_config_item *items) {
  char text[2048];
  evs__conf *c;
  int r;
  snprintf(text, sizeof text, "[plugin \"x\"]\n%s", body);
  c = parse_ok(text, strlen(text));
  err[0] = 0;
  r = evs__conf_validate_section(c, &c->sections[0], items, err, sizeof err);
  evs__conf_free(c);
  return r;
}

static void expect_invalid(const char *body, const char *want) {
  if (validate_text(body, test_items) == 0) fail_msg("accepted:\n%s", body);
  if (strcmp(err, want) != 0) fail_msg("error\n got: %s\nwant: %s", err, want);
}

static void test_validate_types(void **state) {
  (void)state;
  assert_int_equal(validate_text("req = r\ntoken = t\n", test_items), 0);
  assert_int_equal(validate_text("req = r\ntoken = t\nn = 1\nn2 = 1\n", test_items), -1);
  assert_int_equal(validate_text("req=r\ntoken=t\nn=10\nfree=-99\natleast=999999999\nflag=yes\n"
                                 "wait=100ms\nanytime=0\nbuf=1m\nfile=x\nname=\npin=0\n",
                                 test_items),
                   0);
  expect_invalid("req = r\ntoken = t\nn = 11\n",
                 P ":4: key 'n': expected an integer in [1, 10], got '11'");
  expect_invalid("req = r\ntoken = t\nn = 0\n",
                 P ":4: key 'n': expected an integer in [1, 10], got '0'");
  expect_invalid("req = r\ntoken = t\nn = ten\n",
                 P ":4: key 'n': expected an integer in [1, 10], got 'ten'");
  expect_invalid("req = r\ntoken = t\nfree = 1.5\n",
                 P ":4: key 'free': expected an integer, got '1.5'");
  expect_invalid("req = r\ntoken = t\natleast = 0\n",
                 P ":4: key 'atleast': expected an integer of at least 1, got '0'");
  expect_invalid("req = r\ntoken = t\nflag = maybe\n",
                 P ":4: key 'flag': expected on/off, yes/no or true/false, got 'maybe'");
  expect_invalid("req = r\ntoken = t\nwait = 2h\n",
                 P ":4: key 'wait': expected a duration such as 250ms, 10s, 5m or 1h in "
                   "[100ms, 1h], got '2h'");
  expect_invalid("req = r\ntoken = t\nwait = 99ms\n",
                 P ":4: key 'wait': expected a duration such as 250ms, 10s, 5m or 1h in "
                   "[100ms, 1h], got '99ms'");
  expect_invalid("req = r\ntoken = t\nanytime = soon\n",
                 P ":4: key 'anytime': expected a duration such as 250ms, 10s, 5m or 1h, got "
                   "'soon'");
  expect_invalid("req = r\ntoken = t\nbuf = 2m\n",
                 P ":4: key 'buf': expected a size such as 512, 64k, 25m or 1g in [1k, 1m], got "
                   "'2m'");
  expect_invalid("req = r\ntoken = t\nbuf = 1023\n",
                 P ":4: key 'buf': expected a size such as 512, 64k, 25m or 1g in [1k, 1m], got "
                   "'1023'");
  expect_invalid("req = r\ntoken = t\nfile =\n", P ":4: key 'file': must not be empty");
  expect_invalid("req = \"\"\ntoken = t\n", P ":2: key 'req': must not be empty");
  expect_invalid("token = t\n", P ":1: [plugin \"x\"]: missing required key 'req'");
  expect_invalid("req = r\n", P ":1: [plugin \"x\"]: missing required key 'token'");
  expect_invalid("req = r\ntoken = t\nzzz = 1\n",
                 P ":4: unknown key 'zzz' in [plugin \"x\"] (known keys: n, free, atleast, flag, "
                   "wait, anytime, buf, file, name, req, pin, token)");
  /* Long values are shortened in messages. */
  expect_invalid("req = r\ntoken = t\nn = 123456789012345678901234567890123456789012345678901234"
                 "567890123456789\n",
                 P ":4: key 'n': expected an integer in [1, 10], got '12345678901234567890123456"
                   "7890123456789012345678901234567890...'");
}

static void test_validate_secret(void **state) {
  (void)state;
  expect_invalid("req = r\ntoken = t\npin = hunter2\n",
                 P ":4: key 'pin': expected an integer in [0, 9999] (the value is secret and not "
                   "shown)");
  expect_invalid("req = r\ntoken = t\npin = 31337\n",
                 P ":4: key 'pin': expected an integer in [0, 9999] (the value is secret and not "
                   "shown)");
  expect_invalid("req = r\ntoken = \"\"\n", P ":3: key 'token': must not be empty");
}

static void test_validate_tables(void **state) {
  static const evs_config_item no_keys[] = {{NULL, 0, NULL, 0, 0, 0, NULL}};
  static const evs_config_item bad_default[] = {
      {"n", EVS_CONFIG_INT, "lots", 0, 0, 0, "broken default"},
      {NULL, 0, NULL, 0, 0, 0, NULL},
  };
  (void)state;
  assert_int_equal(validate_text("", no_keys), 0);
  assert_int_equal(validate_text("a = 1\n", no_keys), -1);
  assert_string_equal(err, P ":2: unknown key 'a': [plugin \"x\"] takes no keys");
  assert_int_equal(validate_text("a = 1\n", NULL), -1);
  assert_int_equal(validate_text("", bad_default), -1);
  assert_string_equal(err, P ":1: [plugin \"x\"]: the built-in default of key 'n' is not valid "
                             "for its type; set the key explicitly and report the bug");
  assert_int_equal(validate_text("n = 3\n", bad_default), 0);
  assert_int_equal(evs__conf_validate_section(NULL, NULL, test_items, err, sizeof err), 0);
}

static void test_value_lookup(void **state) {
  const char *text = "[plugin \"x\"]\nn = 7\nname = a\n[plugin \"y\"]\n";
  evs__conf *c = parse_ok(text, strlen(text));
  const evs__conf_section *x = evs__conf_find_section(c, "plugin", "x");
  (void)state;
  assert_ptr_equal(x, &c->sections[0]);
  assert_ptr_equal(evs__conf_find_section(c, "plugin", "y"), &c->sections[1]);
  assert_null(evs__conf_find_section(c, "plugin", "z"));
  assert_null(evs__conf_find_section(c, "plugin", NULL));
  assert_null(evs__conf_find_section(c, "server", NULL));
  assert_string_equal(evs__conf_value(x, test_items, "n"), "7");
  assert_string_equal(evs__conf_value(x, test_items, "buf"), "64k"); /* the default */
  assert_null(evs__conf_value(x, test_items, "file"));              /* no default */
  assert_null(evs__conf_value(x, test_items, "nonexistent"));
  assert_string_equal(evs__conf_value(NULL, test_items, "wait"), "1s"); /* absent section */
  assert_int_equal(evs__conf_find_entry(x, "name")->line, 3);
  assert_null(evs__conf_find_entry(x, "buf"));
  assert_null(evs__conf_find_entry(NULL, "n"));
  evs__conf_free(c);
}

static void test_resolve_path(void **state) {
  evs__conf *c;
  char *p, *cwd = getcwd(NULL, 0), want[PATH_MAX + 64];
  (void)state;
  assert_non_null(cwd);
  c = parse_ok("", 0);
  p = evs__conf_resolve_path(c, "relay-config.json");
  assert_string_equal(p, "/etc/evs/relay-config.json");
  free(p);
  p = evs__conf_resolve_path(c, "/abs/x");
  assert_string_equal(p, "/abs/x");
  free(p);
  p = evs__conf_resolve_path(c, "../x");
  assert_string_equal(p, "/etc/evs/../x");
  free(p);
  assert_null(evs__conf_resolve_path(c, NULL));
  evs__conf_free(c);

  /* A relative configuration path is anchored to the working directory. */
  assert_int_equal(evs__conf_parse_buffer("t.conf", "", 0, &c, err, sizeof err), 0);
  assert_string_equal(c->dir, cwd);
  p = evs__conf_resolve_path(c, "x");
  const char *sep = strcmp(cwd, "/") == 0 ? "" : "/"; /* the tests may run from / */
  snprintf(want, sizeof want, "%s%sx", cwd, sep);
  assert_string_equal(p, want);
  free(p);
  evs__conf_free(c);
  assert_int_equal(evs__conf_parse_buffer("sub/t.conf", "", 0, &c, err, sizeof err), 0);
  snprintf(want, sizeof want, "%s%ssub", cwd, sep);
  assert_string_equal(c->dir, want);
  evs__conf_free(c);
  assert_int_equal(evs__conf_parse_buffer("/t.conf", "", 0, &c, err, sizeof err), 0);
  assert_string_equal(c->dir, "/");
  p = evs__conf_resolve_path(c, "x");
  assert_string_equal(p, "/x");
  free(p);
  evs__conf_free(c);
  free(cwd);
}

/* ---- Settings ---------------------------------------------------------------------------- */

static void test_minimal_defaults(void **state) {
  evs__settings *s = load_ok(MIN_LISTENER);
  (void)state;
  assert_int_equal(s->workers, 0);
  assert_string_equal(s->state_dir, "/var/lib/evserver");
  assert_string_equal(s->plugins_dir, EVS_DEFAULT_PLUGINS_DIR);
  assert_string_equal(s->log_level, "info");
  assert_null(s->user);
  assert_string_equal(s->admin_socket, "/run/evserver/admin.sock");
  assert_int_equal(s->max_header_bytes, 32 * 1024);
  assert_int_equal(s->max_header_fields, 100);
  assert_int_equal(s->max_body_bytes, 26 * 1024 * 1024);
  assert_int_equal(s->max_connections, 10000);
  assert_int_equal(s->header_timeout_ms, 10000);
  assert_int_equal(s->body_timeout_ms, 30000);
  assert_int_equal(s->idle_timeout_ms, 60000);
  assert_int_equal(s->send_timeout_ms, 30000);
  assert_int_equal(s->drain_timeout_ms, 30000);
  assert_int_equal(s->upstream_connect_timeout_ms, 5000);
  assert_int_equal(s->upstream_response_timeout_ms, 60000);
  assert_int_equal(s->upstream_pool_max_idle, 32);
  assert_int_equal(s->upstream_pool_idle_timeout_ms, 30000);
  assert_null(s->upstream_ca_file);
  assert_string_equal(s->store_backend, "sqlite");
  assert_string_equal(s->store_path, "/var/lib/evserver/evserver.db");
  assert_null(s->store_dsn);
  assert_int_equal(s->nlisteners, 1);
  assert_string_equal(s->listeners[0].name, "http");
  assert_string_equal(s->listeners[0].address, "127.0.0.1:8080");
  assert_int_equal(s->listeners[0].tls, 0);
  assert_null(s->listeners[0].cert_file);
  assert_null(s->listeners[0].key_file);
  assert_int_equal(s->ncerts, 0);
  assert_int_equal(s->nplugins, 0);
  assert_non_null(s->conf);
  assert_string_equal(s->conf->path, P);
  evs__settings_free(s);
  evs__settings_free(NULL);
}

static void test_full_settings(void **state) {
  const char *text = "[server]\n"
                     "workers = 64\n"
                     "state_dir = state\n"
                     "plugins_dir = /opt/evs/plugins\n"
                     "log_level = debug\n"
                     "user = evserver\n"
                     "[admin]\n"
                     "socket = run/admin.sock\n"
                     "[limits]\n"
                     "max_header_bytes = 1m\n"
                     "max_header_fields = 1000\n"
                     "max_body_bytes = 1g\n"
                     "max_connections = 1\n"
                     "header_timeout = 100ms\n"
                     "body_timeout = 1h\n"
                     "idle_timeout = 5m\n"
                     "send_timeout = 45\n"
                     "drain_timeout = 0\n"
                     "[upstream]\n"
                     "connect_timeout = 10m\n"
                     "response_timeout = 1s\n"
                     "pool_max_idle = 0\n"
                     "pool_idle_timeout = 1h\n"
                     "ca_file = ca.pem\n"
                     "[store]\n"
                     "backend = postgresql\n"
                     "path = /srv/db.sqlite\n"
                     "dsn = \"host=db password=hunter2\"\n"
                     "[listener \"tls\"]\n"
                     "address = [::1]:8443\n"
                     "tls = on\n"
                     "certificate = tls/default.crt\n"
                     "key = /keys/default.key\n"
                     "[listener \"any\"]\n"
                     "address = *:80\n"
                     "serves =  api   relay outbound-2\n"
                     "[listener \"api\"]\n"
                     "address = *:81\n"
                     "[certificate \"relays\"]\n"
                     "server_names = *.Relay.Example.com \t relay.example.com\n"
                     "certificate = tls/relays.crt\n"
                     "key = tls/relays.key\n"
                     "[plugin \"relay-inbound\"]\n"
                     "relay_config = relay-config.json\n"
                     "[plugin \"x2\"]\n";
  evs__settings *s = load_ok(text);
  (void)state;
  assert_int_equal(s->workers, 64);
  assert_string_equal(s->state_dir, "/etc/evs/state");
  assert_string_equal(s->plugins_dir, "/opt/evs/plugins");
  assert_string_equal(s->log_level, "debug");
  assert_string_equal(s->user, "evserver");
  assert_string_equal(s->admin_socket, "/etc/evs/run/admin.sock");
  assert_int_equal(s->max_header_bytes, 1048576);
  assert_int_equal(s->max_header_fields, 1000);
  assert_int_equal(s->max_body_bytes, 1073741824);
  assert_int_equal(s->max_connections, 1);
  assert_int_equal(s->header_timeout_ms, 100);
  assert_int_equal(s->body_timeout_ms, 3600000);
  assert_int_equal(s->idle_timeout_ms, 300000);
  assert_int_equal(s->send_timeout_ms, 45000);
  assert_int_equal(s->drain_timeout_ms, 0);
  assert_int_equal(s->upstream_connect_timeout_ms, 600000);
  assert_int_equal(s->upstream_response_timeout_ms, 1000);
  assert_int_equal(s->upstream_pool_max_idle, 0);
  assert_int_equal(s->upstream_pool_idle_timeout_ms, 3600000);
  assert_string_equal(s->upstream_ca_file, "/etc/evs/ca.pem");
  assert_string_equal(s->store_backend, "postgresql");
  assert_string_equal(s->store_path, "/srv/db.sqlite");
  assert_string_equal(s->store_dsn, "host=db password=hunter2");
  assert_int_equal(s->nlisteners, 3);
  assert_string_equal(s->listeners[0].name, "tls");
  /* serves: as written; by default api for the listener named "api", relay for others. */
  assert_int_equal(s->listeners[0].nroles, 1);
  assert_string_equal(s->listeners[0].roles[0], "relay");
  assert_int_equal(s->listeners[1].nroles, 3);
  assert_string_equal(s->listeners[1].roles[0], "api");
  assert_string_equal(s->listeners[1].roles[1], "relay");
  assert_string_equal(s->listeners[1].roles[2], "outbound-2");
  assert_int_equal(s->listeners[2].nroles, 1);
  assert_string_equal(s->listeners[2].roles[0], "api");
  assert_string_equal(s->listeners[0].address, "[::1]:8443");
  assert_int_equal(s->listeners[0].tls, 1);
  assert_string_equal(s->listeners[0].cert_file, "/etc/evs/tls/default.crt");
  assert_string_equal(s->listeners[0].key_file, "/keys/default.key");
  assert_string_equal(s->listeners[1].name, "any");
  assert_int_equal(s->listeners[1].tls, 0);
  assert_int_equal(s->ncerts, 1);
  assert_string_equal(s->certs[0].name, "relays");
  assert_int_equal(s->certs[0].nserver_names, 2);
  assert_string_equal(s->certs[0].server_names[0], "*.relay.example.com");
  assert_string_equal(s->certs[0].server_names[1], "relay.example.com");
  assert_string_equal(s->certs[0].cert_file, "/etc/evs/tls/relays.crt");
  assert_string_equal(s->certs[0].key_file, "/etc/evs/tls/relays.key");
  assert_int_equal(s->nplugins, 2);
  assert_string_equal(s->plugins[0].name, "relay-inbound");
  assert_string_equal(evs__conf_find_entry(s->plugins[0].section, "relay_config")->value,
                      "relay-config.json");
  assert_string_equal(s->plugins[1].name, "x2");
  assert_int_equal(s->plugins[1].section->nentries, 0);
  evs__settings_free(s);

  /* store.path is relative to state_dir, itself relative to the file. */
  s = load_ok("[server]\nstate_dir = /srv/evs\n[store]\npath = db/evs.db\n" MIN_LISTENER);
  assert_string_equal(s->store_path, "/srv/evs/db/evs.db");
  evs__settings_free(s);
  s = load_ok("[server]\nstate_dir = st\n" MIN_LISTENER);
  assert_string_equal(s->store_path, "/etc/evs/st/evserver.db");
  evs__settings_free(s);
  /* An empty optional string reads as unset. */
  s = load_ok("[server]\nuser =\n" MIN_LISTENER);
  assert_null(s->user);
  evs__settings_free(s);
}

static void test_settings_errors(void **state) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"", P ": no [listener \"name\"] section; at least one listener is required"},
      {"[server]\n", P ": no [listener \"name\"] section; at least one listener is required"},
      {MIN_LISTENER "[foo]\n",
       P ":3: unknown section [foo] (known sections: server, admin, limits, upstream, store, "
         "listener, certificate, plugin)"},
      {"[listener]\naddress = 127.0.0.1:1\n",
       P ":1: section [listener] needs a name: [listener \"name\"]"},
      {"[plugin]\n", P ":1: section [plugin] needs a name: [plugin \"name\"]"},
      {"[server \"x\"]\n", P ":1: section [server] takes no name; write [server]"},
      {"[server]\nworker = 1\n",
       P ":2: unknown key 'worker' in [server] (known keys: workers, state_dir, plugins_dir, "
         "log_level, user, tls_ticket_rotation)"},
      {"[server]\nworkers = 65\n" MIN_LISTENER,
       P ":2: key 'workers': expected an integer in [0, 64], got '65'"},
      {"[server]\nworkers = -1\n" MIN_LISTENER,
       P ":2: key 'workers': expected an integer in [0, 64], got '-1'"},
      {"[server]\nworkers = x\n" MIN_LISTENER,
       P ":2: key 'workers': expected an integer in [0, 64], got 'x'"},
      {"[server]\nlog_level = verbose\n" MIN_LISTENER,
       P ":2: key 'log_level': expected one of error, warn, info, debug, got 'verbose'"},
      {"[server]\nlog_level = INFO\n" MIN_LISTENER,
       P ":2: key 'log_level': expected one of error, warn, info, debug, got 'INFO'"},
      {"[server]\nlog_level =\n" MIN_LISTENER,
       P ":2: key 'log_level': expected one of error, warn, info, debug, got ''"},
      {"[server]\nstate_dir =\n" MIN_LISTENER, P ":2: key 'state_dir': must not be empty"},
      {"[limits]\nmax_header_bytes = 2m\n" MIN_LISTENER,
       P ":2: key 'max_header_bytes': expected a size such as 512, 64k, 25m or 1g in [1k, 1m], "
         "got '2m'"},
      {"[limits]\nmax_header_fields = 0\n" MIN_LISTENER,
       P ":2: key 'max_header_fields': expected an integer in [1, 1000], got '0'"},
      {"[limits]\nheader_timeout = 0\n" MIN_LISTENER,
       P ":2: key 'header_timeout': expected a duration such as 250ms, 10s, 5m or 1h in "
         "[100ms, 1h], got '0'"},
      {"[limits]\ndrain_timeout = 2h\n" MIN_LISTENER,
       P ":2: key 'drain_timeout': expected a duration such as 250ms, 10s, 5m or 1h in "
         "[0ms, 1h], got '2h'"},
      {"[upstream]\npool_max_idle = 10001\n" MIN_LISTENER,
       P ":2: key 'pool_max_idle': expected an integer in [0, 10000], got '10001'"},
      {"[store]\nbackend = mysql\n" MIN_LISTENER,
       P ":2: key 'backend': expected one of sqlite, postgresql, got 'mysql'"},
      {"[store]\n\nbackend = postgresql\n" MIN_LISTENER,
       P ":3: [store]: key 'dsn' is required when backend = postgresql"},
      {"[store]\nbackend = postgresql\ndsn = \"\"\n" MIN_LISTENER,
       P ":2: [store]: key 'dsn' is required when backend = postgresql"},
      {"[listener \"a\"]\n", P ":1: [listener \"a\"]: missing required key 'address'"},
      {"[listener \"a\"]\naddress =\n", P ":2: key 'address': must not be empty"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\ntls = maybe\n",
       P ":3: key 'tls': expected on/off, yes/no or true/false, got 'maybe'"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\ntls = on\n",
       P ":1: [listener \"a\"]: key 'certificate' is required when tls = on"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\ntls = on\ncertificate = c.pem\n",
       P ":1: [listener \"a\"]: key 'key' is required when tls = on"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\ncertificate = c.pem\n",
       P ":3: key 'certificate' is set but tls is off; set tls = on or remove the key"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\ntls = off\nkey = k.pem\n",
       P ":4: key 'key' is set but tls is off; set tls = on or remove the key"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\nserves = admin\n",
       P ":3: key 'serves': role 'admin' is served by the admin socket only ([admin] socket); "
         "remove it"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\nserves = api Relay\n",
       P ":3: key 'serves': 'Relay' is not a role; expected [a-z0-9-]{1,32}"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\nserves = relay api relay\n",
       P ":3: key 'serves': role 'relay' is named twice"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\nserves = \" \"\n",
       P ":3: key 'serves': expected at least one role (api, relay, ...)"},
      {"[listener \"a\"]\naddress = 127.0.0.1:1\n[listener \"b\"]\naddress = 127.0.0.1:1\n",
       P ":4: key 'address': address '127.0.0.1:1' of [listener \"b\"] is already used by "
         "[listener \"a\"] (line 1)"},
      {"[listener \"a\"]\naddress = [::1]:80\n[listener \"b\"]\naddress = [0:0::1]:80\n",
       P ":4: key 'address': address '[::1]:80' of [listener \"b\"] is already used by "
         "[listener \"a\"] (line 1)"},
      {MIN_LISTENER "[certificate \"c\"]\ncertificate = c\nkey = k\n",
       P ":3: [certificate \"c\"]: missing required key 'server_names'"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a.example\nkey = k\n",
       P ":3: [certificate \"c\"]: missing required key 'certificate'"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a.example\ncertificate = c\n",
       P ":3: [certificate \"c\"]: missing required key 'key'"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = \"  \"\ncertificate = c\nkey = k\n",
       P ":4: key 'server_names': expected at least one name"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = ok.example bad_name\ncertificate = c\n"
                    "key = k\n",
       P ":4: key 'server_names': 'bad_name' is not a host name or a *.suffix wildcard"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = *\ncertificate = c\nkey = k\n",
       P ":4: key 'server_names': '*' is not a host name or a *.suffix wildcard"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a.*.example\ncertificate = c\nkey = k\n",
       P ":4: key 'server_names': 'a.*.example' is not a host name or a *.suffix wildcard"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a..example\ncertificate = c\nkey = k\n",
       P ":4: key 'server_names': 'a..example' is not a host name or a *.suffix wildcard"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = -a.example\ncertificate = c\nkey = k\n",
       P ":4: key 'server_names': '-a.example' is not a host name or a *.suffix wildcard"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a.example A.example\ncertificate = c\n"
                    "key = k\n",
       P ":4: key 'server_names': server name 'a.example' is listed twice"},
      {MIN_LISTENER "[certificate \"c\"]\nserver_names = a.example\ncertificate = c\nkey = k\n"
                    "[certificate \"d\"]\nserver_names = b.example A.EXAMPLE\ncertificate = c\n"
                    "key = k\n",
       P ":8: key 'server_names': server name 'a.example' of [certificate \"d\"] is already used "
         "by [certificate \"c\"] (line 3)"},
      {MIN_LISTENER "[plugin \"Relay_X\"]\n",
       P ":3: [plugin \"Relay_X\"]: invalid plugin name; use lower-case letters, digits and '-'"},
      {MIN_LISTENER "[plugin \"a b\"]\n",
       P ":3: [plugin \"a b\"]: invalid plugin name; use lower-case letters, digits and '-'"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_error(cases[i].in, cases[i].want);
}

static void test_listener_addresses(void **state) {
  static const char *good[] = {"127.0.0.1:8080", "[::1]:8443", "*:80", "0.0.0.0:443",
                               "[::]:1", "10.0.0.1:65535", "[2001:db8::1]:443", NULL};
  static const char *bad[] = {"localhost:80", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                              "127.0.0.1:080800", "::1:80", "[::1]", "[::1]80", "*:",
                              ":80", "256.1.1.1:80", "[fe80::1%eth0]:80", "1.2.3:80",
                              "127.0.0.1:+80", "127.0.0.1:8o", "[127.0.0.1]:80", "**:80",
                              "[::1:80", "127.0.0.1:80 ", NULL};
  char text[256], want[512];
  (void)state;
  for (int i = 0; good[i]; i++) {
    snprintf(text, sizeof text, "[listener \"a\"]\naddress = %s\n", good[i]);
    evs__settings_free(load_ok(text));
  }
  for (int i = 0; bad[i]; i++) {
    snprintf(text, sizeof text, "[listener \"a\"]\naddress = \"%s\"\n", bad[i]);
    snprintf(want, sizeof want,
             P ":2: key 'address': expected host:port with an IPv4 address, [IPv6 address] or * "
               "as host and a port in 1..65535, got '%s'",
             bad[i]);
    expect_error(text, want);
  }
}

static void test_parse_address(void **state) {
  char host[INET6_ADDRSTRLEN] = "untouched";
  int family = -7;
  uint16_t port = 7;
  (void)state;
  assert_int_equal(evs__conf_parse_address("127.0.0.1:8080", host, sizeof host, &family, &port),
                   0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(family, AF_INET);
  assert_int_equal(port, 8080);
  assert_int_equal(evs__conf_parse_address("[0:0::1]:8443", host, sizeof host, &family, &port),
                   0);
  assert_string_equal(host, "::1");
  assert_int_equal(family, AF_INET6);
  assert_int_equal(port, 8443);
  assert_int_equal(evs__conf_parse_address("*:80", host, sizeof host, &family, &port), 0);
  assert_string_equal(host, "*");
  assert_int_equal(family, AF_UNSPEC);
  assert_int_equal(port, 80);
  /* Failure leaves the outputs alone. */
  snprintf(host, sizeof host, "untouched");
  family = -7;
  port = 7;
  assert_int_equal(evs__conf_parse_address("nope", host, sizeof host, &family, &port), -1);
  assert_int_equal(evs__conf_parse_address(NULL, host, sizeof host, &family, &port), -1);
  assert_int_equal(evs__conf_parse_address("1.2.3.4:5", host, 8, &family, &port), -1);
  assert_string_equal(host, "untouched");
  assert_int_equal(family, -7);
  assert_int_equal(port, 7);
}

static void test_secret_never_in_settings_errors(void **state) {
  static const char *inputs[] = {
      "[store]\nbackend = postgresql\ndsn = host=db password=hunter2\nx = 1\n" MIN_LISTENER,
      "[store]\ndsn = host=db password=hunter2\nbackend = oracle\n" MIN_LISTENER,
      "[store]\ndsn = hunter2\ndsn = hunter2\n" MIN_LISTENER,
      "[store]\ndsn = \"hunter2\n" MIN_LISTENER,
  };
  (void)state;
  for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
    evs__settings *s = NULL;
    err[0] = 0;
    assert_int_equal(
        evs__settings_load_buffer(P, inputs[i], strlen(inputs[i]), &s, err, sizeof err), -1);
    assert_true(err[0]);
    if (strstr(err, "hunter2")) fail_msg("secret echoed: %s", err);
  }
}

/* ---- Files ------------------------------------------------------------------------------- */

static void test_load_file(void **state) {
  char path[] = "/tmp/evs_test_conf_XXXXXX";
  int fd = mkstemp(path);
  evs__settings *s = NULL;
  char want[512];
  (void)state;
  assert_true(fd >= 0);
  assert_int_equal(write(fd, MIN_LISTENER, strlen(MIN_LISTENER)), (ssize_t)strlen(MIN_LISTENER));
  close(fd);
  assert_int_equal(evs__settings_load(path, &s, err, sizeof err), 0);
  assert_string_equal(s->conf->path, path);
  assert_string_equal(s->conf->dir, "/tmp");
  evs__settings_free(s);

  /* Oversized: refused without reading it all. */
  {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (long i = 0; ftell(f) <= (long)EVS_CONF_MAX_FILE_BYTES; i++)
      fputs("# ............................................................\n", f);
    fclose(f);
    s = NULL;
    assert_int_equal(evs__settings_load(path, &s, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: file is larger than 1048576 bytes", path);
    assert_string_equal(err, want);
    assert_null(s);
  }
  unlink(path);

  assert_int_equal(evs__settings_load(path, &s, err, sizeof err), -1);
  snprintf(want, sizeof want, "%s: %s", path, strerror(ENOENT));
  assert_string_equal(err, want);
  assert_int_equal(evs__settings_load("/tmp", &s, err, sizeof err), -1);
  snprintf(want, sizeof want, "/tmp: %s", strerror(EISDIR));
  assert_string_equal(err, want);
  assert_int_equal(evs__settings_load(NULL, &s, err, sizeof err), -1);
  assert_null(s);
}

static const evs_config_item relay_plugin_items[] = {
    {"relay_config", EVS_CONFIG_PATH, NULL, 0, 0, EVS_CONFIG_REQUIRED, "relay-config.json"},
    {"base_domain", EVS_CONFIG_STRING, NULL, 0, 0, 0, "base domain"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void test_shipped_example(void **state) {
  evs__settings *s = NULL, *d;
  char *p;
  (void)state;
  if (evs__settings_load(EVS_SOURCE_DIR "/etc/evserver.conf", &s, err, sizeof err) != 0)
    fail_msg("etc/evserver.conf: %s", err);
  assert_int_equal(s->nlisteners, 1);
  assert_string_equal(s->listeners[0].name, "http");
  assert_string_equal(s->listeners[0].address, "127.0.0.1:8080");
  assert_int_equal(s->listeners[0].tls, 0);
  assert_string_equal(s->admin_socket, "/run/evserver/admin.sock");
  assert_string_equal(s->store_backend, "sqlite");
  assert_int_equal(s->nplugins, 1);
  assert_string_equal(s->plugins[0].name, "relay-inbound");
  assert_int_equal(evs__conf_validate_section(s->conf, s->plugins[0].section, relay_plugin_items,
                                              err, sizeof err),
                   0);
  p = evs__conf_resolve_path(s->conf,
                             evs__conf_value(s->plugins[0].section, relay_plugin_items,
                                             "relay_config"));
  assert_string_equal(p, EVS_SOURCE_DIR "/etc/relay-config.json");
  free(p);
  assert_string_equal(evs__conf_value(s->plugins[0].section, relay_plugin_items, "base_domain"),
                      "relay.localhost");

  /* The example's limits and upstream values are the defaults. */
  d = load_ok(MIN_LISTENER);
  assert_int_equal(s->workers, d->workers);
  assert_int_equal(s->max_header_bytes, d->max_header_bytes);
  assert_int_equal(s->max_header_fields, d->max_header_fields);
  assert_int_equal(s->max_body_bytes, d->max_body_bytes);
  assert_int_equal(s->max_connections, d->max_connections);
  assert_int_equal(s->header_timeout_ms, d->header_timeout_ms);
  assert_int_equal(s->body_timeout_ms, d->body_timeout_ms);
  assert_int_equal(s->idle_timeout_ms, d->idle_timeout_ms);
  assert_int_equal(s->send_timeout_ms, d->send_timeout_ms);
  assert_int_equal(s->drain_timeout_ms, d->drain_timeout_ms);
  assert_int_equal(s->upstream_connect_timeout_ms, d->upstream_connect_timeout_ms);
  assert_int_equal(s->upstream_response_timeout_ms, d->upstream_response_timeout_ms);
  assert_int_equal(s->upstream_pool_max_idle, d->upstream_pool_max_idle);
  assert_int_equal(s->upstream_pool_idle_timeout_ms, d->upstream_pool_idle_timeout_ms);
  assert_string_equal(s->log_level, d->log_level);
  evs__settings_free(d);
  evs__settings_free(s);
}

/* The commented-out TLS listener and certificate of the example are valid when uncommented. */
static void test_shipped_example_tls_block(void **state) {
  FILE *f = fopen(EVS_SOURCE_DIR "/etc/evserver.conf", "r");
  char line[512], *text = calloc(1, 1 << 16);
  size_t off = 0;
  int in_block = 0;
  evs__settings *s;
  (void)state;
  assert_non_null(f);
  assert_non_null(text);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "# [listener", 11) == 0 || strncmp(line, "# [certificate", 14) == 0)
      in_block = 1;
    else if (line[0] != '#')
      in_block = 0;
    /* Uncomment "# [section ...]" and "# key = value" lines of those blocks only. */
    int uncomment = in_block && line[1] == ' ' &&
                    (line[2] == '[' || (line[2] >= 'a' && line[2] <= 'z' && strstr(line, " = ")));
    off += (size_t)snprintf(text + off, (1 << 16) - off, "%s", uncomment ? line + 2 : line);
  }
  fclose(f);
  s = load_ok(text);
  free(text);
  assert_int_equal(s->nlisteners, 5);
  assert_int_equal(s->listeners[1].tls, 1);
  assert_int_equal(s->listeners[2].nroles, 1);
  assert_string_equal(s->listeners[2].roles[0], "api");
  assert_int_equal(s->listeners[3].tls, 1); /* the Outbound Relay's CONNECT proxy */
  assert_int_equal(s->listeners[3].nroles, 1);
  assert_string_equal(s->listeners[3].roles[0], "outbound");
  assert_int_equal(s->listeners[4].tls, 1); /* the Cages front */
  assert_string_equal(s->listeners[4].roles[0], "cages");
  assert_int_equal(s->ncerts, 1);
  evs__settings_free(s);
}

/* ---- The item tables and their documentation --------------------------------------------- */

static const char *type_name(evs_config_type t) {
  switch (t) {
  case EVS_CONFIG_STRING: return "string";
  case EVS_CONFIG_INT: return "int";
  case EVS_CONFIG_BOOL: return "bool";
  case EVS_CONFIG_DURATION: return "duration";
  case EVS_CONFIG_SIZE: return "size";
  case EVS_CONFIG_PATH: return "path";
  }
  return "?";
}

/* The key tables are the one declaration of the host's keys: every key that fills a setting
 * fills it with its default when unset, and with the value written when set (all keys of the
 * unnamed sections at once, so a row pointing at the wrong member shows). */
static void test_key_table_fills_settings(void **state) {
  (void)state;
  char text[8192];
  size_t off = 0;
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++) {
    if (d->named || !d->keys) continue;
    off += (size_t)snprintf(text + off, sizeof text - off, "[%s]\n", d->type);
    for (const evs__conf_key *k = d->keys; k->item.key; k++) {
      const evs_config_item *it = &k->item;
      if (k->setting == 0) continue;
      /* A value other than the default, distinct per key where the type allows. */
      const char *v = it->type == EVS_CONFIG_STRING ? (k->one_of ? k->one_of[0] : "v")
                      : it->type == EVS_CONFIG_PATH ? "/p"
                      : it->type == EVS_CONFIG_BOOL ? "on"
                                                    : NULL;
      char num[32];
      if (!v) {
        snprintf(num, sizeof num, "%lld", (long long)(it->max ? it->max : it->min + 1));
        if (it->type == EVS_CONFIG_DURATION) strcat(num, "ms");
        v = num;
      }
      off += (size_t)snprintf(text + off, sizeof text - off, "%s = %s\n", it->key, v);
    }
  }
  snprintf(text + off, sizeof text - off, "%s", MIN_LISTENER);
  evs__settings *set = load_ok(text), *defaults = load_ok(MIN_LISTENER);
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++) {
    if (d->named || !d->keys) continue;
    for (const evs__conf_key *k = d->keys; k->item.key; k++) {
      const evs_config_item *it = &k->item;
      if (k->setting == 0) continue;
      const char *f = (const char *)set + k->setting - 1;
      const char *g = (const char *)defaults + k->setting - 1;
      if (it->type == EVS_CONFIG_STRING || it->type == EVS_CONFIG_PATH) {
        const char *sv = *(char *const *)(const void *)f, *dv = *(char *const *)(const void *)g;
        assert_non_null(sv);
        if (it->default_value && it->type == EVS_CONFIG_STRING)
          assert_string_equal(dv, it->default_value);
        if (!it->default_value) assert_null(dv);
      } else {
        int64_t sv = *(const int64_t *)(const void *)f, dv = *(const int64_t *)(const void *)g;
        int64_t want = 0;
        if (it->type == EVS_CONFIG_INT) evs__conf_parse_int(it->default_value, &want);
        if (it->type == EVS_CONFIG_SIZE) evs__conf_parse_size(it->default_value, &want);
        if (it->type == EVS_CONFIG_DURATION) evs__conf_parse_duration_ms(it->default_value, &want);
        if (dv != want) fail_msg("[%s] %s: default read as %lld", d->type, it->key, (long long)dv);
        int64_t set_want = it->max ? it->max : it->min + 1;
        if (sv != set_want) fail_msg("[%s] %s: read as %lld", d->type, it->key, (long long)sv);
      }
    }
  }
  assert_string_equal(set->log_level, "error");
  assert_string_equal(set->store_backend, "sqlite");
  evs__settings_free(set);
  evs__settings_free(defaults);
}

static void test_item_tables(void **state) {
  const evs__conf_section_def *d;
  int n = 0;
  (void)state;
  for (d = evs__conf_host_sections; d->type; d++, n++) {
    evs__conf_section empty = {(char *)d->type, d->named ? (char *)"n" : NULL, 1, NULL, 0};
    assert_non_null(d->help);
    if (!d->keys) {
      assert_string_equal(d->type, "plugin");
      continue;
    }
    /* Every default is valid for its own item (validate checks defaults of absent keys). */
    evs_config_item no_required[32];
    size_t k = 0;
    for (const evs_config_item *it = &d->keys[0].item; it->key; it = &d->keys[++k].item) {
      assert_true(k < 31);
      no_required[k] = *it;
      no_required[k].flags &= ~EVS_CONFIG_REQUIRED;
      for (const char *c = it->key; *c; c++)
        assert_true((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
      assert_non_null(it->help);
      assert_true(it->help[0] && !strchr(it->help, '\n'));
      if (it->flags & EVS_CONFIG_REQUIRED) assert_null(it->default_value);
    }
    no_required[k] = (evs_config_item){NULL, 0, NULL, 0, 0, 0, NULL};
    if (evs__conf_validate_section(NULL, &empty, no_required, err, sizeof err) != 0)
      fail_msg("[%s]: %s", d->type, err);
  }
  assert_int_equal(n, 8);
  assert_ptr_equal(evs__conf_host_sections[0].keys, evs__conf_server_keys);
  assert_ptr_equal(evs__conf_host_sections[1].keys, evs__conf_admin_keys);
  assert_ptr_equal(evs__conf_host_sections[2].keys, evs__conf_limits_keys);
  assert_ptr_equal(evs__conf_host_sections[3].keys, evs__conf_upstream_keys);
  assert_ptr_equal(evs__conf_host_sections[4].keys, evs__conf_store_keys);
  assert_ptr_equal(evs__conf_host_sections[5].keys, evs__conf_listener_keys);
  assert_ptr_equal(evs__conf_host_sections[6].keys, evs__conf_certificate_keys);
}

static void fmt_bound(const evs_config_item *it, int64_t v, char *buf, size_t len) {
  static const struct {
    const char *u;
    int64_t m;
  } dur[] = {{"h", 3600000}, {"m", 60000}, {"s", 1000}}, sz[] = {{"g", 1 << 30},
                                                                 {"m", 1 << 20},
                                                                 {"k", 1 << 10}};
  const char *tail = it->type == EVS_CONFIG_DURATION ? "ms" : "";
  for (int i = 0; i < 3 && it->type != EVS_CONFIG_INT; i++) {
    int64_t m = it->type == EVS_CONFIG_DURATION ? dur[i].m : sz[i].m;
    if (v != 0 && v % m == 0) {
      snprintf(buf, len, "%lld%s", (long long)(v / m),
               it->type == EVS_CONFIG_DURATION ? dur[i].u : sz[i].u);
      return;
    }
  }
  snprintf(buf, len, "%lld%s", (long long)v, tail);
}

/* Splits a markdown table row into trimmed cells. */
static int split_row(char *row, char **cells, int max) {
  int n = 0;
  char *p = row, *bar;
  if (*p != '|') return 0;
  p++;
  while (n < max && (bar = strchr(p, '|'))) {
    char *e = bar;
    *bar = 0;
    while (*p == ' ') p++;
    while (e > p && e[-1] == ' ') *--e = 0;
    cells[n++] = p;
    p = bar + 1;
  }
  return n;
}

static void test_docs_cover_items(void **state) {
  FILE *f = fopen(EVS_SOURCE_DIR "/docs/configuration.md", "r");
  static char doc[1 << 17];
  size_t len;
  (void)state;
  assert_non_null(f);
  len = fread(doc, 1, sizeof doc - 1, f);
  fclose(f);
  doc[len] = 0;
  assert_non_null(strstr(doc, "evserver -t"));
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++) {
    char heading[128], *start, *end, *line;
    int rows = 0;
    snprintf(heading, sizeof heading, d->named ? "\n### `[%s \"name\"]`\n" : "\n### `[%s]`\n",
             d->type);
    start = strstr(doc, heading);
    if (!start) fail_msg("docs/configuration.md lacks the heading %s", heading + 1);
    start += strlen(heading);
    end = strstr(start, "\n#");
    if (!end) end = doc + len;
    if (!d->keys) continue;
    /* Every documented row is a key of the table, with its type, default and bounds. */
    for (line = start; line < end;) {
      char *nl = memchr(line, '\n', (size_t)(end - line)), row[2048], *cells[8];
      size_t n = nl ? (size_t)(nl - line) : (size_t)(end - line);
      if (n < sizeof row && strncmp(line, "| `", 3) == 0) {
        const evs__conf_key *k;
        const evs_config_item *it;
        char key[64], want[128], lo[32], hi[32];
        memcpy(row, line, n);
        row[n] = 0;
        assert_true(split_row(row, cells, 8) >= 5);
        if (sscanf(cells[0], "`%63[a-z0-9_]`", key) != 1) fail_msg("bad key cell: %s", cells[0]);
        for (k = d->keys; k->item.key && strcmp(k->item.key, key) != 0; k++) {}
        it = &k->item;
        if (!it->key) fail_msg("docs: [%s] documents '%s', which is not a key", d->type, key);
        snprintf(want, sizeof want, "%s%s%s", type_name(it->type),
                 it->flags & EVS_CONFIG_REQUIRED ? " (required)" : "",
                 it->flags & EVS_CONFIG_SECRET ? " (secret)" : "");
        if (strcmp(cells[1], want) != 0)
          fail_msg("docs: [%s] %s: type '%s', want '%s'", d->type, key, cells[1], want);
        if (!it->default_value)
          snprintf(want, sizeof want, "—");
        else
          snprintf(want, sizeof want, "`%s`", it->default_value);
        if (strcmp(key, "plugins_dir") == 0 ? !strstr(cells[2], "build-time")
                                            : strcmp(cells[2], want) != 0)
          fail_msg("docs: [%s] %s: default '%s', want '%s'", d->type, key, cells[2], want);
        if (it->min != 0 || it->max != 0) {
          fmt_bound(it, it->min, lo, sizeof lo);
          fmt_bound(it, it->max, hi, sizeof hi);
          snprintf(want, sizeof want, "%s..%s", lo, hi);
          if (strcmp(cells[3], want) != 0)
            fail_msg("docs: [%s] %s: bounds '%s', want '%s'", d->type, key, cells[3], want);
        }
        rows++;
      }
      line = nl ? nl + 1 : end;
    }
    /* ...and every key of the table is documented. */
    for (const evs__conf_key *k = d->keys; k->item.key; k++) {
      const evs_config_item *it = &k->item;
      char needle[80];
      snprintf(needle, sizeof needle, "\n| `%s` |", it->key);
      char *hit = strstr(start - 1, needle);
      if (!hit || hit >= end) fail_msg("docs/configuration.md: [%s] lacks key '%s'", d->type,
                                       it->key);
      rows--;
    }
    assert_int_equal(rows, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_int),
      cmocka_unit_test(test_parse_bool),
      cmocka_unit_test(test_parse_duration),
      cmocka_unit_test(test_parse_size),
      cmocka_unit_test(test_parse_structure),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_parse_limits),
      cmocka_unit_test(test_secret_lines_not_echoed),
      cmocka_unit_test(test_validate_types),
      cmocka_unit_test(test_validate_secret),
      cmocka_unit_test(test_validate_tables),
      cmocka_unit_test(test_value_lookup),
      cmocka_unit_test(test_resolve_path),
      cmocka_unit_test(test_minimal_defaults),
      cmocka_unit_test(test_full_settings),
      cmocka_unit_test(test_settings_errors),
      cmocka_unit_test(test_listener_addresses),
      cmocka_unit_test(test_parse_address),
      cmocka_unit_test(test_secret_never_in_settings_errors),
      cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_shipped_example),
      cmocka_unit_test(test_shipped_example_tls_block),
      cmocka_unit_test(test_item_tables),
      cmocka_unit_test(test_key_table_fills_settings),
      cmocka_unit_test(test_docs_cover_items),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
