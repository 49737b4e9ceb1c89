/*
 * Unit tests for core/store.c and its backends.
 *
 * The same test functions run twice: against SQLite in a fresh temporary directory, and against
 * PostgreSQL when EVS_TEST_PG_DSN names a server (tests/integration/pg_store.sh starts a
 * throwaway one and sets it); without it the PostgreSQL group is skipped, saying why. Each
 * PostgreSQL test works in a schema of its own (evs_test_<pid>_<n>, selected through
 * PGOPTIONS=-csearch_path=...) and drops it afterwards, so the tests never touch tables outside
 * it. Tests that need raw access (counting migrations, planting a future schema version) use
 * sqlite3/libpq directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "store.h"

#define MAX_EXTRA 8

typedef struct fx {
  int pg;
  char dir[256];               /* sqlite: the temporary directory */
  char path[PATH_MAX];         /* sqlite: the fixture's database */
  char schema[64];             /* pg: the fixture's schema */
  char extra[MAX_EXTRA][80];   /* pg: more schemas made by the test, dropped at teardown */
  int nextra;
  evs__store_options o;
  evs__store *s;
  int64_t now;                 /* the fake clock's time, unix ms */
} fx;

static const char *pg_dsn;
static int pg_counter;

/* ---- helpers ----------------------------------------------------------------------------- */

static int64_t fake_now(void *arg) {
  return *(int64_t *)arg;
}

static void use_fake_clock(fx *f, int64_t start) {
  f->now = start;
  evs__store_set_clock_for_tests(f->s, fake_now, &f->now);
}

static fx *need(void **state) {
  fx *f = *state;
  if (f->pg && !pg_dsn)
    skip();
  return f;
}

static void set_search_path(const char *schema) {
  char opt[128];
  snprintf(opt, sizeof(opt), "-c search_path=%s", schema);
  setenv("PGOPTIONS", opt, 1);
}

static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Run SQL in the given schema (pg) or database file (sqlite); returns the first column of the
 * first row as a number if there is one, else 0; -1 on error. */
static long raw_sql(fx *f, const char *where, const char *sql) {
  long v = 0;

  if (f->pg) {
    PGconn *c = PQconnectdb(pg_dsn);
    char set[128];
    PGresult *res;
    if (PQstatus(c) != CONNECTION_OK) {
      print_error("raw connect: %s", PQerrorMessage(c));
      PQfinish(c);
      return -1;
    }
    PQsetNoticeProcessor(c, quiet, NULL); /* "drop cascades to ..." */
    snprintf(set, sizeof(set), "SET search_path TO %s", where);
    PQclear(PQexec(c, set));
    res = PQexec(c, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
      v = atol(PQgetvalue(res, 0, 0));
    else if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
      print_error("raw sql: %s", PQresultErrorMessage(res));
      v = -1;
    }
    PQclear(res);
    PQfinish(c);
  } else {
    sqlite3 *db;
    sqlite3_stmt *st;
    if (sqlite3_open(where, &db) != SQLITE_OK)
      v = -1;
    else if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
      v = -1;
    else {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
      else if (rc != SQLITE_DONE)
        v = -1;
      sqlite3_finalize(st);
    }
    if (v < 0)
      print_error("raw sql: %s\n", sqlite3_errmsg(db));
    sqlite3_close(db);
  }
  return v;
}

/* A fresh, empty store location beside the fixture's: *o points at it (and, for pg, PGOPTIONS
 * selects it until restore_location). where receives the path or schema. */
static void fresh_location(fx *f, const char *name, evs__store_options *o, char *where,
                           size_t len) {
  *o = f->o;
  if (f->pg) {
    char sql[160];
    assert_true(f->nextra < MAX_EXTRA);
    snprintf(where, len, "%s_%s", f->schema, name);
    snprintf(f->extra[f->nextra++], sizeof(f->extra[0]), "%s", where);
    snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", where);
    assert_int_equal(raw_sql(f, "public", sql), 0);
    set_search_path(where);
  } else {
    snprintf(where, len, "%s/%s.db", f->dir, name);
    o->path = where;
  }
}

static void restore_location(fx *f) {
  if (f->pg)
    set_search_path(f->schema);
}

static evs__store *reopen(fx *f, const evs__store_options *o) {
  char err[256];
  evs__store *s = NULL;
  int r = evs__store_open(o, &s, err, sizeof(err));
  if (r < 0)
    print_error("open: %d %s\n", r, err);
  assert_int_equal(r, 0);
  (void)f;
  return s;
}

/* Keys joined by '|', in the order a scan reports them. */
typedef struct seen {
  char buf[16384];
  size_t n;
  int count;
  int stop_after;   /* > 0: return 1 after this many */
  int fail_after;   /* > 0: return -EINTR after this many */
  evs__store *del;  /* delete each key from inside the callback */
  const char *ns;
} seen;

static int seen_cb(void *arg, const char *key, const uint8_t *v, size_t len) {
  seen *k = arg;
  size_t kl = strlen(key);
  (void)v;
  (void)len;
  if (k->n + kl + 2 < sizeof(k->buf)) {
    memcpy(k->buf + k->n, key, kl);
    k->n += kl;
    k->buf[k->n++] = '|';
    k->buf[k->n] = '\0';
  }
  k->count++;
  if (k->del && evs__store_delete(k->del, k->ns, key) != 0)
    return -EIO;
  if (k->stop_after && k->count >= k->stop_after)
    return 1;
  if (k->fail_after && k->count >= k->fail_after)
    return -EINTR;
  return 0;
}

static const char *scan_keys(evs__store *s, const char *ns, const char *prefix) {
  static seen k;
  memset(&k, 0, sizeof(k));
  assert_int_equal(evs__store_scan(s, ns, prefix, seen_cb, &k), 0);
  return k.buf;
}

static void put_str(evs__store *s, const char *ns, const char *key, const char *v) {
  assert_int_equal(evs__store_put(s, ns, key, (const uint8_t *)v, strlen(v), 0), 0);
}

static void assert_value(evs__store *s, const char *ns, const char *key, const char *want) {
  uint8_t *v = NULL;
  size_t len = 0;
  assert_int_equal(evs__store_get(s, ns, key, &v, &len), 0);
  assert_int_equal(len, strlen(want));
  assert_string_equal((const char *)v, want); /* the trailing NUL is part of the contract */
  free(v);
}

static void assert_absent(evs__store *s, const char *ns, const char *key) {
  uint8_t *v = (uint8_t *)"untouched";
  size_t len = 4242;
  assert_int_equal(evs__store_get(s, ns, key, &v, &len), -ENOENT);
  assert_string_equal((const char *)v, "untouched"); /* ret_* written only on success */
  assert_int_equal(len, 4242);
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup_sqlite(void **state) {
  fx *f = calloc(1, sizeof(*f));
  char err[256];
  const char *tmp = getenv("TMPDIR");

  snprintf(f->dir, sizeof(f->dir), "%s/evs-store-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(f->dir)) {
    print_error("mkdtemp: %s\n", strerror(errno));
    free(f);
    return -1;
  }
  snprintf(f->path, sizeof(f->path), "%s/store.db", f->dir);
  f->o.backend = "sqlite";
  f->o.path = f->path;
  if (evs__store_open(&f->o, &f->s, err, sizeof(err)) < 0) {
    print_error("open: %s\n", err);
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown_sqlite(void **state) {
  fx *f = *state;
  char cmd[sizeof(f->dir) + 16];

  evs__store_close(f->s);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
  if (system(cmd) != 0)
    print_error("could not remove %s\n", f->dir);
  free(f);
  return 0;
}

static int setup_pg(void **state) {
  fx *f = calloc(1, sizeof(*f));
  char err[256], sql[128];

  f->pg = 1;
  *state = f;
  if (!pg_dsn)
    return 0; /* each test skips */
  snprintf(f->schema, sizeof(f->schema), "evs_test_%d_%d", (int)getpid(), ++pg_counter);
  snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", f->schema);
  if (raw_sql(f, "public", sql) < 0)
    return -1;
  set_search_path(f->schema);
  f->o.backend = "postgresql";
  f->o.dsn = pg_dsn;
  if (evs__store_open(&f->o, &f->s, err, sizeof(err)) < 0) {
    print_error("open: %s\n", err);
    return -1;
  }
  return 0;
}

static int teardown_pg(void **state) {
  fx *f = *state;
  char sql[160];

  evs__store_close(f->s);
  if (pg_dsn) {
    snprintf(sql, sizeof(sql), "DROP SCHEMA %s CASCADE", f->schema);
    raw_sql(f, "public", sql);
    for (int i = 0; i < f->nextra; i++) {
      snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", f->extra[i]);
      raw_sql(f, "public", sql);
    }
    unsetenv("PGOPTIONS");
  }
  free(f);
  return 0;
}

/* ---- key-value --------------------------------------------------------------------------- */

static void test_get_put_delete(void **state) {
  fx *f = need(state);

  assert_string_equal(evs__store_backend_name(f->s), f->pg ? "postgresql" : "sqlite");
  assert_absent(f->s, "plugin.a", "k");
  put_str(f->s, "plugin.a", "k", "one");
  assert_value(f->s, "plugin.a", "k", "one");
  put_str(f->s, "plugin.a", "k", "two"); /* upsert */
  assert_value(f->s, "plugin.a", "k", "two");
  /* Namespaces are separate. */
  assert_absent(f->s, "plugin.b", "k");
  put_str(f->s, "plugin.b", "k", "other");
  assert_value(f->s, "plugin.a", "k", "two");
  assert_int_equal(evs__store_delete(f->s, "plugin.a", "k"), 0);
  assert_int_equal(evs__store_delete(f->s, "plugin.a", "k"), -ENOENT);
  assert_absent(f->s, "plugin.a", "k");
  assert_value(f->s, "plugin.b", "k", "other");
}

static void test_binary_values(void **state) {
  fx *f = need(state);
  uint8_t all[512], *v;
  const char key[] = "bin\xff\x01\xc3\xa9";
  size_t len;

  for (size_t i = 0; i < sizeof(all); i++)
    all[i] = (uint8_t)(i * 7);
  all[0] = 0;
  all[100] = 0;
  all[511] = 0;
  assert_int_equal(evs__store_put(f->s, "ns", key, all, sizeof(all), 0), 0);
  assert_int_equal(evs__store_get(f->s, "ns", key, &v, &len), 0);
  assert_int_equal(len, sizeof(all));
  assert_memory_equal(v, all, sizeof(all));
  assert_int_equal(v[len], 0);
  free(v);

  /* An empty value is a value, not an absence; v may be NULL for it. */
  assert_int_equal(evs__store_put(f->s, "ns", "empty", NULL, 0, 0), 0);
  v = NULL;
  assert_int_equal(evs__store_get(f->s, "ns", "empty", &v, &len), 0);
  assert_non_null(v);
  assert_int_equal(len, 0);
  free(v);
  assert_string_equal(scan_keys(f->s, "ns", NULL), "bin\xff\x01\xc3\xa9|empty|");
}

static void test_scan_order_and_prefix(void **state) {
  fx *f = need(state);
  const char *keys[] = { "b", "a%b", "a_b", "aXb", "a%", "a", "ab", "\xff", "\xff\xff", "a\xff",
                         "A", "a\x01" };
  seen k;

  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    put_str(f->s, "scan", keys[i], "v");
  put_str(f->s, "scan2", "a", "elsewhere");

  /* Bytewise ascending, whatever the insertion order or locale. */
  assert_string_equal(scan_keys(f->s, "scan", NULL),
                      "A|a|a\x01|a%|a%b|aXb|a_b|ab|a\xff|b|\xff|\xff\xff|");
  assert_string_equal(scan_keys(f->s, "scan", ""),
                      "A|a|a\x01|a%|a%b|aXb|a_b|ab|a\xff|b|\xff|\xff\xff|");
  assert_string_equal(scan_keys(f->s, "scan", "a"), "a|a\x01|a%|a%b|aXb|a_b|ab|a\xff|");
  /* '%' and '_' are literal bytes, not LIKE wildcards. */
  assert_string_equal(scan_keys(f->s, "scan", "a%"), "a%|a%b|");
  assert_string_equal(scan_keys(f->s, "scan", "a_"), "a_b|");
  assert_string_equal(scan_keys(f->s, "scan", "%"), "");
  assert_string_equal(scan_keys(f->s, "scan", "_"), "");
  /* Prefixes ending in 0xff have no simple successor. */
  assert_string_equal(scan_keys(f->s, "scan", "a\xff"), "a\xff|");
  assert_string_equal(scan_keys(f->s, "scan", "\xff"), "\xff|\xff\xff|");
  assert_string_equal(scan_keys(f->s, "scan", "\xff\xff"), "\xff\xff|");
  assert_string_equal(scan_keys(f->s, "scan", "zzz"), "");
  assert_string_equal(scan_keys(f->s, "scan2", NULL), "a|");
  assert_string_equal(scan_keys(f->s, "nothing", NULL), "");

  /* A positive return stops the scan, which then succeeds; a negative one is returned. */
  memset(&k, 0, sizeof(k));
  k.stop_after = 2;
  assert_int_equal(evs__store_scan(f->s, "scan", NULL, seen_cb, &k), 0);
  assert_string_equal(k.buf, "A|a|");
  memset(&k, 0, sizeof(k));
  k.fail_after = 3;
  assert_int_equal(evs__store_scan(f->s, "scan", NULL, seen_cb, &k), -EINTR);
  assert_int_equal(k.count, 3);
}

static void test_scan_pages_and_reentry(void **state) {
  fx *f = need(state);
  char key[32];
  uint8_t *big;
  seen k;

  /* More rows than one page holds. */
  for (int i = 599; i >= 0; i--) {
    snprintf(key, sizeof(key), "k%04d", i);
    put_str(f->s, "many", key, key);
  }
  memset(&k, 0, sizeof(k));
  assert_int_equal(evs__store_scan(f->s, "many", "k", seen_cb, &k), 0);
  assert_int_equal(k.count, 600);
  assert_memory_equal(k.buf, "k0000|k0001|", 12);
  assert_string_equal(k.buf + 599 * 6, "k0599|");

  /* Callbacks may call into the store: delete every key while scanning. */
  memset(&k, 0, sizeof(k));
  k.del = f->s;
  k.ns = "many";
  assert_int_equal(evs__store_scan(f->s, "many", NULL, seen_cb, &k), 0);
  assert_int_equal(k.count, 600);
  assert_string_equal(scan_keys(f->s, "many", NULL), "");

  /* More bytes than one page holds: pages end early, and no row is lost or repeated. */
  big = calloc(1, 1u << 20);
  assert_non_null(big);
  for (int i = 0; i < 10; i++) {
    snprintf(key, sizeof(key), "big%d", i);
    big[0] = (uint8_t)i;
    assert_int_equal(evs__store_put(f->s, "big", key, big, 1u << 20, 0), 0);
  }
  free(big);
  assert_string_equal(scan_keys(f->s, "big", NULL),
                      "big0|big1|big2|big3|big4|big5|big6|big7|big8|big9|");
}

static void test_ttl(void **state) {
  fx *f = need(state);
  const int64_t t0 = 1700000000000;

  use_fake_clock(f, t0);
  assert_int_equal(evs__store_put(f->s, "ttl", "short", (const uint8_t *)"s", 1, 10), 0);
  put_str(f->s, "ttl", "forever", "f");
  assert_int_equal(evs__store_put(f->s, "ttl", "renewed", (const uint8_t *)"r", 1, 10), 0);
  assert_int_equal(evs__store_put(f->s, "ttl", "renewed", (const uint8_t *)"r", 1, 0), 0);
  assert_int_equal(evs__store_put(f->s, "ttl", "deleted", (const uint8_t *)"d", 1, 10), 0);

  f->now = t0 + 9999;
  assert_value(f->s, "ttl", "short", "s");
  assert_string_equal(scan_keys(f->s, "ttl", NULL), "deleted|forever|renewed|short|");

  f->now = t0 + 10000; /* expiry is exclusive: at expires_at the row is gone */
  assert_absent(f->s, "ttl", "short");
  assert_string_equal(scan_keys(f->s, "ttl", NULL), "forever|renewed|");
  assert_int_equal(evs__store_delete(f->s, "ttl", "deleted"), -ENOENT);
  assert_value(f->s, "ttl", "renewed", "r");

  /* Writing an expired key brings it back. */
  put_str(f->s, "ttl", "short", "again");
  assert_value(f->s, "ttl", "short", "again");

  /* The purge finds the expired rows nobody read. */
  for (int i = 0; i < 5; i++) {
    char key[16];
    snprintf(key, sizeof(key), "p%d", i);
    assert_int_equal(evs__store_put(f->s, "ttl", key, (const uint8_t *)"x", 1, 1), 0);
  }
  assert_int_equal(evs__store_purge_expired(f->s, 100), 0);
  f->now += 1000;
  assert_int_equal(evs__store_purge_expired(f->s, 3), 3);
  assert_int_equal(evs__store_purge_expired(f->s, 100), 2);
  assert_int_equal(evs__store_purge_expired(f->s, 100), 0);
  assert_string_equal(scan_keys(f->s, "ttl", NULL), "forever|renewed|short|");

  /* Puts purge lazily too: expired rows vanish without a get or a purge call. */
  for (int i = 0; i < 10; i++) {
    char key[16];
    snprintf(key, sizeof(key), "lazy%d", i);
    assert_int_equal(evs__store_put(f->s, "ttl", key, (const uint8_t *)"x", 1, 1), 0);
  }
  f->now += 1000;
  for (int i = 0; i < 200; i++)
    put_str(f->s, "ttl", "churn", "x");
  assert_int_equal(evs__store_purge_expired(f->s, 100), 0);
}

static int no_record(void *arg, int64_t id, int64_t ts_ms, const char *json) {
  (void)arg;
  (void)id;
  (void)ts_ms;
  (void)json;
  return 0;
}

static void test_limits(void **state) {
  fx *f = need(state);
  char name[EVS_STORE_NAME_MAX + 2], key[EVS_STORE_KEY_MAX + 2];
  uint8_t *big, *v;
  size_t len;
  char *rec;
  seen k;

  /* Names. */
  assert_int_equal(evs__store_put(f->s, NULL, "k", (const uint8_t *)"v", 1, 0), -EINVAL);
  assert_int_equal(evs__store_put(f->s, "", "k", (const uint8_t *)"v", 1, 0), -EINVAL);
  assert_int_equal(evs__store_put(f->s, "bad ns", "k", (const uint8_t *)"v", 1, 0), -EINVAL);
  assert_int_equal(evs__store_put(f->s, "bad\nns", "k", (const uint8_t *)"v", 1, 0), -EINVAL);
  memset(name, 'n', sizeof(name));
  name[EVS_STORE_NAME_MAX] = '\0';
  put_str(f->s, name, "k", "v");
  name[EVS_STORE_NAME_MAX] = 'n';
  name[EVS_STORE_NAME_MAX + 1] = '\0';
  assert_int_equal(evs__store_put(f->s, name, "k", (const uint8_t *)"v", 1, 0), -E2BIG);
  assert_int_equal(evs__store_get(f->s, name, "k", &v, &len), -E2BIG);
  put_str(f->s, "a-b_c.d:e/F9", "k", "v");

  /* Keys. */
  assert_int_equal(evs__store_put(f->s, "ns", NULL, (const uint8_t *)"v", 1, 0), -EINVAL);
  assert_int_equal(evs__store_put(f->s, "ns", "", (const uint8_t *)"v", 1, 0), -EINVAL);
  memset(key, 'k', sizeof(key));
  key[EVS_STORE_KEY_MAX] = '\0';
  put_str(f->s, "ns", key, "max");
  assert_value(f->s, "ns", key, "max");
  key[EVS_STORE_KEY_MAX] = 'k';
  key[EVS_STORE_KEY_MAX + 1] = '\0';
  assert_int_equal(evs__store_put(f->s, "ns", key, (const uint8_t *)"v", 1, 0), -E2BIG);
  assert_int_equal(evs__store_delete(f->s, "ns", key), -E2BIG);
  memset(&k, 0, sizeof(k));
  assert_int_equal(evs__store_scan(f->s, "ns", key, seen_cb, &k), -E2BIG);
  assert_int_equal(evs__store_scan(f->s, "ns", NULL, NULL, NULL), -EINVAL);

  /* Values. */
  assert_int_equal(evs__store_put(f->s, "ns", "k", NULL, 5, 0), -EINVAL);
  big = malloc(EVS_STORE_VALUE_MAX + 1);
  assert_non_null(big);
  for (size_t i = 0; i < EVS_STORE_VALUE_MAX + 1; i++)
    big[i] = (uint8_t)(i ^ (i >> 11));
  assert_int_equal(evs__store_put(f->s, "ns", "big", big, EVS_STORE_VALUE_MAX + 1, 0), -E2BIG);
  assert_int_equal(evs__store_put(f->s, "ns", "big", big, EVS_STORE_VALUE_MAX, 0), 0);
  assert_int_equal(evs__store_get(f->s, "ns", "big", &v, &len), 0);
  assert_int_equal(len, EVS_STORE_VALUE_MAX);
  assert_memory_equal(v, big, EVS_STORE_VALUE_MAX);
  free(v);
  free(big);
  assert_int_equal(evs__store_delete(f->s, "ns", "big"), 0);

  /* TTL. */
  assert_int_equal(evs__store_put(f->s, "ns", "t", (const uint8_t *)"v", 1, EVS_STORE_TTL_MAX_S),
                   0);
  assert_int_equal(
      evs__store_put(f->s, "ns", "t", (const uint8_t *)"v", 1, EVS_STORE_TTL_MAX_S + 1), -EINVAL);
  assert_value(f->s, "ns", "t", "v");

  /* Output pointers and handles. */
  assert_int_equal(evs__store_get(f->s, "ns", "k", NULL, &len), -EINVAL);
  assert_int_equal(evs__store_get(NULL, "ns", "k", &v, &len), -EINVAL);
  assert_int_equal(evs__store_purge_expired(f->s, 0), -EINVAL);

  /* Records. */
  assert_int_equal(evs__store_append(f->s, "log", "", NULL), -EINVAL);
  assert_int_equal(evs__store_append(f->s, "log", NULL, NULL), -EINVAL);
  assert_int_equal(evs__store_append(f->s, "bad stream", "{}", NULL), -EINVAL);
  assert_int_equal(evs__store_append(f->s, "log", "{\"x\":\"\xc3\x28\"}", NULL), -EINVAL);
  assert_int_equal(evs__store_append(f->s, "log", "\xc0\xaf", NULL), -EINVAL);     /* overlong */
  assert_int_equal(evs__store_append(f->s, "log", "\xed\xa0\x80", NULL), -EINVAL); /* surrogate */
  assert_int_equal(evs__store_append(f->s, "log", "\xf4\x90\x80\x80", NULL), -EINVAL);
  assert_int_equal(evs__store_append(f->s, "log", "\xe2\x82", NULL), -EINVAL); /* truncated */
  assert_int_equal(evs__store_append(f->s, "log", "{\"\xe2\x82\xac\xf0\x9f\x98\x80\":1}", NULL),
                   0);
  /* The same behind ASCII runs of every length (the check skips eight ASCII bytes at once): a
   * bad or truncated sequence at any offset, a good one at any offset. */
  for (int pad = 0; pad < 20; pad++) {
    static const char *const bad[] = {"\xc3\x28", "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82"};
    char buf[64];
    for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
      snprintf(buf, sizeof buf, "%.*s%s", pad, "{\"aaaaaaaaaaaaaaaaaaaaaaaaaaa", bad[b]);
      assert_int_equal(evs__store_append(f->s, "log", buf, NULL), -EINVAL);
      snprintf(buf, sizeof buf, "%.*s%sbbbbbbbbbbbb", pad, "{\"aaaaaaaaaaaaaaaaaaaaaaaa", bad[b]);
      assert_int_equal(evs__store_append(f->s, "log", buf, NULL), -EINVAL);
    }
    snprintf(buf, sizeof buf, "%.*s\xe2\x82\xac" "bbbbbbbbbbb", pad, "aaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_int_equal(evs__store_append(f->s, "log", buf, NULL), 0);
  }
  rec = malloc(EVS_STORE_RECORD_MAX + 2);
  assert_non_null(rec);
  memset(rec, 'x', EVS_STORE_RECORD_MAX + 1);
  rec[EVS_STORE_RECORD_MAX + 1] = '\0';
  assert_int_equal(evs__store_append(f->s, "log", rec, NULL), -E2BIG);
  rec[EVS_STORE_RECORD_MAX] = '\0';
  assert_int_equal(evs__store_append(f->s, "log", rec, NULL), 0);
  free(rec);
  assert_int_equal(evs__store_query(f->s, "log", 0, 0, no_record, NULL), -EINVAL);
  assert_int_equal(evs__store_query(f->s, "log", 0, 1, NULL, NULL), -EINVAL);
}

/* ---- streams ----------------------------------------------------------------------------- */

typedef struct recs {
  int n;
  int64_t ids[1024], ts[1024];
  char first[64];
  int stop_after;
} recs;

static int recs_cb(void *arg, int64_t id, int64_t ts_ms, const char *json) {
  recs *r = arg;
  if (r->n == 0)
    snprintf(r->first, sizeof(r->first), "%s", json);
  if (r->n < 1024) {
    r->ids[r->n] = id;
    r->ts[r->n] = ts_ms;
  }
  r->n++;
  return r->stop_after && r->n >= r->stop_after ? 1 : 0;
}

static void test_append_query(void **state) {
  fx *f = need(state);
  int64_t ids[5], id;
  recs r;

  use_fake_clock(f, 1000);
  for (int i = 0; i < 5; i++) {
    char rec[64];
    snprintf(rec, sizeof(rec), "{\"n\":%d}", i);
    assert_int_equal(evs__store_append(f->s, "audit", rec, &ids[i]), 0);
    if (i)
      assert_true(ids[i] > ids[i - 1]);
    f->now += 10;
  }
  assert_int_equal(evs__store_append(f->s, "txlog", "{\"other\":true}", NULL), 0);

  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "audit", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 5);
  assert_string_equal(r.first, "{\"n\":4}"); /* newest first */
  for (int i = 0; i < 5; i++) {
    assert_int_equal(r.ids[i], ids[4 - i]);
    assert_int_equal(r.ts[i], 1000 + 10 * (4 - i));
  }

  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "audit", 0, 2, recs_cb, &r), 0);
  assert_int_equal(r.n, 2);
  assert_int_equal(r.ids[1], ids[3]);

  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "audit", 1020, 100, recs_cb, &r), 0); /* inclusive */
  assert_int_equal(r.n, 3);

  memset(&r, 0, sizeof(r));
  r.stop_after = 1;
  assert_int_equal(evs__store_query(f->s, "audit", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 1);

  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "none", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 0);

  /* Many records with the same timestamp: several pages, ordered by id, none lost. */
  f->now = 5000;
  for (int i = 0; i < 600; i++)
    assert_int_equal(evs__store_append(f->s, "burst", "{}", &id), 0);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "burst", 0, 1000, recs_cb, &r), 0);
  assert_int_equal(r.n, 600);
  assert_int_equal(r.ids[0], id);
  for (int i = 1; i < 600; i++)
    assert_true(r.ids[i] < r.ids[i - 1]);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "burst", 0, 300, recs_cb, &r), 0);
  assert_int_equal(r.n, 300);
}

/* A batch is written whole, with the timestamps it carries, or not at all. */
static void test_append_batch(void **state) {
  fx *f = need(state);
  recs r;
  evs__store_rec ok[] = {
    {"batch", "{\"n\":0}", 700}, {"batch", "{\"n\":1}", 800}, {"other", "{\"n\":2}", 900},
  };
  evs__store_rec bad[] = {{"batch", "{\"n\":3}", 950}, {"bad stream", "{}", 960}};
  evs__store_rec bad_utf8[] = {{"batch", "{\"n\":3}", 950}, {"batch", "\xc0\xaf", 960}};

  assert_int_equal(evs__store_append_batch(f->s, ok, 3), 0);
  assert_int_equal(evs__store_append_batch(f->s, ok, 0), 0);
  assert_int_equal(evs__store_append_batch(f->s, bad, 2), -EINVAL);
  assert_int_equal(evs__store_append_batch(f->s, bad_utf8, 2), -EINVAL);
  assert_int_equal(evs__store_append_batch(f->s, NULL, 1), -EINVAL);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "batch", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 2); /* nothing of the refused batches */
  assert_string_equal(r.first, "{\"n\":1}");
  assert_int_equal(r.ts[0], 800);
  assert_int_equal(r.ts[1], 700);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "other", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 1);

  /* A batch larger than one statement's rows (PostgreSQL: PG_BATCH_ROWS) is still one
   * transaction: all of it, in order (a bad record anywhere refuses it before any write). */
  enum { BIG = 1000 };
  evs__store_rec *big = calloc(BIG, sizeof *big);
  char (*texts)[32] = calloc(BIG, sizeof *texts);
  assert_non_null(big);
  assert_non_null(texts);
  for (int i = 0; i < BIG; i++) {
    snprintf(texts[i], sizeof texts[i], "{\"n\":%d}", i);
    big[i] = (evs__store_rec){"big", texts[i], 1000 + i};
  }
  big[BIG - 1].stream = "bad stream";
  assert_int_equal(evs__store_append_batch(f->s, big, BIG), -EINVAL);
  big[BIG - 1].stream = "big";
  assert_int_equal(evs__store_append_batch(f->s, big, BIG), 0);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(f->s, "big", 0, 2 * BIG, recs_cb, &r), 0);
  assert_int_equal(r.n, BIG);
  assert_string_equal(r.first, "{\"n\":999}");
  /* Every row with its own timestamp, in the batch's order (SQLite writes it with multi-row
   * INSERTs of several sizes: each row's parameters at their place). */
  for (int i = 0; i < BIG; i++) {
    assert_int_equal(r.ts[i], 1000 + BIG - 1 - i);
    if (i) assert_true(r.ids[i] < r.ids[i - 1]);
  }
  free(big);
  free(texts);
}

/* Several processes append at once, in batches and one by one, to one stream with few distinct
 * timestamps (so that ids decide the order): every id is unique, each process's ids increase
 * in the order it appended, and a query that spans several pages returns every record once,
 * by (ts_ms, id) descending. */
/* n child processes started together: each runs fn(arg, i, go) and exits with what it returns,
 * which must be 0. A child lines up with the others by calling together_wait(go) once its
 * set-up is done: it returns when every child has been forked. */
static int together_wait(int go) {
  char c;
  return read(go, &c, 1) == 0 ? 0 : -1;
}

static void run_together(int n, int (*fn)(void *arg, int i, int go), void *arg) {
  pid_t pids[16];
  int go[2];

  assert_true(n <= 16);
  assert_int_equal(pipe(go), 0);
  for (int i = 0; i < n; i++) {
    pids[i] = fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0) {
      close(go[1]);
      _exit(fn(arg, i, go[0]));
    }
  }
  close(go[0]);
  close(go[1]);
  for (int i = 0; i < n; i++) {
    int status;
    assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
  }
}

#define ID_PROCS 3
#define ID_ROUNDS 20
#define ID_BATCH 31 /* multi-row INSERTs of 16, 8, 4 and 2 rows and a single row */

typedef struct id_row {
  int64_t id, ts;
  int p, n;
} id_row;

typedef struct id_rows {
  id_row *v;
  int n, cap, bad;
} id_rows;

static int id_rows_cb(void *arg, int64_t id, int64_t ts_ms, const char *json) {
  id_rows *r = arg;
  id_row x = {id, ts_ms, -1, -1};
  if (sscanf(json, "{\"p\":%d,\"n\":%d}", &x.p, &x.n) != 2 || r->n == r->cap) {
    r->bad++;
    return 0;
  }
  r->v[r->n++] = x;
  return 0;
}

static int id_child(void *arg, int p, int go) {
  const evs__store_options *o = arg;
  char err[256], texts[ID_BATCH][48];
  evs__store_rec batch[ID_BATCH];
  evs__store *s = NULL;
  int n = 0;

  if (evs__store_open(o, &s, err, sizeof(err)) < 0) {
    fprintf(stderr, "id child %d: open: %s\n", p, err);
    return 10;
  }
  if (together_wait(go) < 0)
    return 9;
  for (int round = 0; round < ID_ROUNDS; round++) {
    for (int i = 0; i < ID_BATCH; i++, n++) {
      snprintf(texts[i], sizeof(texts[i]), "{\"p\":%d,\"n\":%d}", p, n);
      batch[i] = (evs__store_rec){i % 4 ? "ids" : "ids.other", texts[i], 1000 + n % 3};
    }
    if (evs__store_append_batch(s, batch, ID_BATCH) != 0)
      return 11;
    snprintf(texts[0], sizeof(texts[0]), "{\"p\":%d,\"n\":%d}", p, n++);
    if (evs__store_append(s, "ids", texts[0], NULL) != 0)
      return 12;
  }
  evs__store_close(s);
  return 0;
}

static void test_ids_concurrent(void **state) {
  fx *f = need(state);
  enum { PER = ID_ROUNDS * (ID_BATCH + 1), TOTAL = ID_PROCS * PER };
  evs__store_options o;
  char where[PATH_MAX];
  int total = 0;
  id_rows rows = {calloc(TOTAL, sizeof(id_row)), 0, TOTAL, 0};

  assert_non_null(rows.v);
  fresh_location(f, "ids", &o, where, sizeof(where));
  evs__store_close(reopen(f, &o)); /* migrated before the race */
  run_together(ID_PROCS, id_child, &o);

  evs__store *s = reopen(f, &o);
  const char *streams[] = {"ids", "ids.other"};
  for (int k = 0; k < 2; k++) {
    int from = rows.n;
    assert_int_equal(evs__store_query(s, streams[k], 0, TOTAL, id_rows_cb, &rows), 0);
    for (int i = from + 1; i < rows.n; i++) {
      const id_row *a = &rows.v[i - 1], *b = &rows.v[i];
      assert_true(a->ts > b->ts || (a->ts == b->ts && a->id > b->id));
    }
  }
  evs__store_close(s);
  restore_location(f);
  assert_int_equal(rows.bad, 0);
  assert_int_equal(rows.n, TOTAL); /* > the store's page of 256 rows: paged by (ts_ms, id) */

  /* By process and append order: ids increase; all ids differ. */
  int64_t *last = calloc(ID_PROCS * PER, sizeof(int64_t));
  assert_non_null(last);
  for (int i = 0; i < rows.n; i++) {
    assert_true(rows.v[i].p >= 0 && rows.v[i].p < ID_PROCS && rows.v[i].n >= 0 &&
                rows.v[i].n < PER);
    assert_int_equal(last[rows.v[i].p * PER + rows.v[i].n], 0); /* each record once */
    last[rows.v[i].p * PER + rows.v[i].n] = rows.v[i].id;
    total++;
  }
  for (int p = 0; p < ID_PROCS; p++)
    for (int n = 1; n < PER; n++)
      assert_true(last[p * PER + n] > last[p * PER + n - 1]);
  for (int i = 0; i < TOTAL; i++)
    for (int j = i + 1; j < TOTAL; j++)
      if (last[i] == last[j])
        fail_msg("id %lld given twice", (long long)last[i]);
  assert_int_equal(total, TOTAL);
  free(last);
  free(rows.v);
}

/* A record is acknowledged when its batch's commit returns: it must then survive the process
 * being killed at once (kill -9, no close). The store's VFS (store_sqlite_vfs.c) holds WAL
 * writes until a commit frame: this checks they are in the file when the commit returns, for
 * batches of every size (one frame, a run longer than the VFS's buffer, a transaction that
 * spills pages before it commits) and across WAL checkpoints and restarts. SQLite only. */
static int killed_child(const evs__store_options *o, int batches, int per, size_t rec_len) {
  char err[256];
  evs__store *s = NULL;
  evs__store_rec *batch = calloc((size_t)per, sizeof(*batch));
  char *texts = malloc((size_t)per * (rec_len + 1));

  if (!batch || !texts || evs__store_open(o, &s, err, sizeof(err)) < 0)
    return 10;
  for (int b = 0; b < batches; b++) {
    for (int i = 0; i < per; i++) {
      char *t = texts + (size_t)i * (rec_len + 1);
      int n = snprintf(t, rec_len + 1, "{\"b\":%d,\"i\":%d,\"pad\":\"", b, i);
      memset(t + n, 'x', rec_len - (size_t)n - 2);
      memcpy(t + rec_len - 2, "\"}", 3);
      batch[i] = (evs__store_rec){"durable", t, 1000 + b};
    }
    if (evs__store_append_batch(s, batch, (size_t)per) != 0)
      return 11;
  }
  kill(getpid(), SIGKILL); /* right after the last commit returned */
  return 12;
}

static void test_durable_after_kill(void **state) {
  fx *f = need(state);
  static const struct {
    int batches, per;
    size_t len;
  } cases[] = {
    {1, 1, 40},        /* one small record: one frame */
    {3, 200, 300},     /* runs longer than the VFS's buffer (~15 pages per commit) */
    {1, 3000, 1000},   /* ~3 MB in one transaction: pages spill before the commit */
    {60, 60, 250},     /* > 1000 frames: checkpoints, the WAL restarts from its start */
  };

  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    evs__store_options o;
    char where[PATH_MAX], name[16];
    int status;
    recs r;

    snprintf(name, sizeof(name), "kill%zu", c);
    fresh_location(f, name, &o, where, sizeof(where));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
      _exit(killed_child(&o, cases[c].batches, cases[c].per, cases[c].len));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);

    evs__store *s = reopen(f, &o);
    memset(&r, 0, sizeof(r));
    assert_int_equal(evs__store_query(s, "durable", 0, 1u << 20, recs_cb, &r), 0);
    assert_int_equal(r.n, cases[c].batches * cases[c].per);
    char want[64];
    snprintf(want, sizeof(want), "{\"b\":%d,\"i\":", cases[c].batches - 1);
    assert_memory_equal(r.first, want, strlen(want));
    evs__store_close(s);
    restore_location(f);
  }
}

/* ---- schema ------------------------------------------------------------------------------ */

static void test_migrations(void **state) {
  fx *f = need(state);
  const char *where = f->pg ? f->schema : f->path;
  evs__store *s;
  char err[256];
  int r;

  assert_int_equal(evs__store_schema_version(f->s), EVS_STORE_SCHEMA_VERSION);
  put_str(f->s, "m", "k", "kept");
  evs__store_close(f->s);
  f->s = NULL;

  /* Reopening applies nothing again and keeps the data. */
  for (int i = 0; i < 2; i++) {
    s = reopen(f, &f->o);
    assert_int_equal(evs__store_schema_version(s), EVS_STORE_SCHEMA_VERSION);
    assert_value(s, "m", "k", "kept");
    evs__store_close(s);
  }
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_schema_migrations"),
                   EVS_STORE_SCHEMA_VERSION);

  /* A store migrated by a newer evserver is refused, with a message saying so. */
  assert_int_equal(raw_sql(f, where, "INSERT INTO evs_schema_migrations (version, name, "
                                     "applied_at) VALUES (999, 'future', 0)"),
                   0);
  s = NULL;
  r = evs__store_open(&f->o, &s, err, sizeof(err));
  assert_int_equal(r, -ENOTSUP);
  assert_null(s);
  assert_non_null(strstr(err, "newer"));
  assert_int_equal(raw_sql(f, where, "DELETE FROM evs_schema_migrations WHERE version = 999"), 0);
  f->s = reopen(f, &f->o);
}

/* A store written at schema 1 (evs_log with the stream's name and AUTOINCREMENT ids) opens at
 * the current version with its records, their ids and timestamps, and query order intact, and
 * new records get ids above the old ones. SQLite only: PostgreSQL's version 2 changes nothing. */
static void test_migrate_log_v1(void **state) {
  fx *f = need(state);
  evs__store_options o;
  char where[PATH_MAX];
  recs r;

  fresh_location(f, "v1", &o, where, sizeof(where));
  /* Schema 1 as version 1 of store_sqlite.c made it. */
  assert_int_equal(raw_sql(f, where,
                           "CREATE TABLE evs_schema_migrations (version INTEGER PRIMARY KEY, "
                           "name TEXT NOT NULL, applied_at INTEGER NOT NULL);"),
                   0);
  assert_int_equal(raw_sql(f, where,
                           "INSERT INTO evs_schema_migrations VALUES (1, 'kv and log', 0)"), 0);
  assert_int_equal(raw_sql(f, where,
                           "CREATE TABLE evs_kv (ns TEXT NOT NULL, key BLOB NOT NULL, "
                           "value BLOB NOT NULL, expires_at INTEGER, PRIMARY KEY (ns, key))"),
                   0);
  assert_int_equal(raw_sql(f, where,
                           "CREATE TABLE evs_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                           "stream TEXT NOT NULL, ts_ms INTEGER NOT NULL, record TEXT NOT NULL)"),
                   0);
  assert_int_equal(raw_sql(f, where, "CREATE INDEX evs_log_stream_ts ON evs_log "
                                     "(stream, ts_ms, id)"),
                   0);
  /* Ids with gaps, ties on the timestamp, two streams. */
  assert_int_equal(raw_sql(f, where,
                           "INSERT INTO evs_log (id, stream, ts_ms, record) VALUES "
                           "(5, 'a', 1000, '{\"n\":5}'), (7, 'b/c', 1000, '{\"n\":7}'), "
                           "(8, 'a', 1000, '{\"n\":8}'), (9, 'a', 900, '{\"n\":9}'), "
                           "(12, 'a', 1100, '{\"n\":12}')"),
                   0);
  assert_int_equal(raw_sql(f, where, "SELECT seq FROM sqlite_sequence WHERE name = 'evs_log'"),
                   12);

  evs__store *s = reopen(f, &o);
  assert_int_equal(evs__store_schema_version(s), EVS_STORE_SCHEMA_VERSION);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(s, "a", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 4);
  assert_string_equal(r.first, "{\"n\":12}");
  int64_t want_ids[] = {12, 8, 5, 9}, want_ts[] = {1100, 1000, 1000, 900};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(r.ids[i], want_ids[i]);
    assert_int_equal(r.ts[i], want_ts[i]);
  }
  memset(&r, 0, sizeof(r));
  r.stop_after = 0;
  assert_int_equal(evs__store_query(s, "b/c", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 1);
  assert_int_equal(r.ids[0], 7);
  assert_string_equal(r.first, "{\"n\":7}");

  int64_t id;
  assert_int_equal(evs__store_append(s, "a", "{\"n\":13}", &id), 0);
  assert_true(id > 12);
  assert_int_equal(evs__store_append(s, "new", "{}", &id), 0);
  evs__store_rec batch[] = {{"b/c", "{\"n\":14}", 2000}, {"a", "{\"n\":15}", 2000}};
  assert_int_equal(evs__store_append_batch(s, batch, 2), 0);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(s, "b/c", 0, 100, recs_cb, &r), 0);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.first, "{\"n\":14}");
  assert_true(r.ids[0] > id);
  evs__store_close(s);

  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_log"), 9);
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_log_stream"), 3);
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM sqlite_sequence"), 0);
  s = reopen(f, &o); /* nothing applied twice */
  evs__store_close(s);
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_schema_migrations"),
                   EVS_STORE_SCHEMA_VERSION);
  restore_location(f);
}

/* Several processes open a fresh store at the same moment (so they race to migrate it), then
 * write and read concurrently. No call may fail: lock waits must stay inside the store. */
#define NPROC 4
#define NOPS 150

static int child(void *arg, int id, int go) {
  const evs__store_options *o = arg;
  char err[256], key[32], val[32];
  evs__store *s = NULL;
  uint8_t *v;
  size_t len;

  if (together_wait(go) < 0) /* all open at once: they race to migrate */
    return 9;
  if (evs__store_open(o, &s, err, sizeof(err)) < 0) {
    fprintf(stderr, "child %d: open: %s\n", id, err);
    return 10;
  }
  for (int i = 0; i < NOPS; i++) {
    int r;
    snprintf(key, sizeof(key), "c%d-%03d", id, i);
    snprintf(val, sizeof(val), "%d:%d", id, i);
    if ((r = evs__store_put(s, "conc", key, (const uint8_t *)val, strlen(val), 0)) != 0) {
      fprintf(stderr, "child %d: put: %d\n", id, r);
      return 11;
    }
    if ((r = evs__store_put(s, "conc", "shared", (const uint8_t *)val, strlen(val), 0)) != 0) {
      fprintf(stderr, "child %d: put shared: %d\n", id, r);
      return 12;
    }
    if ((r = evs__store_get(s, "conc", key, &v, &len)) != 0 || strcmp((char *)v, val) != 0) {
      fprintf(stderr, "child %d: get: %d\n", id, r);
      return 13;
    }
    free(v);
    if ((r = evs__store_append(s, "conc", "{\"op\":\"put\"}", NULL)) != 0) {
      fprintf(stderr, "child %d: append: %d\n", id, r);
      return 14;
    }
  }
  evs__store_close(s);
  return 0;
}

static void test_concurrent_processes(void **state) {
  fx *f = need(state);
  evs__store_options o;
  char where[PATH_MAX];
  evs__store *s;
  seen k;
  recs r;

  fresh_location(f, "conc", &o, where, sizeof(where));
  run_together(NPROC, child, &o);

  s = reopen(f, &o);
  memset(&k, 0, sizeof(k));
  assert_int_equal(evs__store_scan(s, "conc", "c", seen_cb, &k), 0);
  assert_int_equal(k.count, NPROC * NOPS);
  memset(&r, 0, sizeof(r));
  assert_int_equal(evs__store_query(s, "conc", 0, 100000, recs_cb, &r), 0);
  assert_int_equal(r.n, NPROC * NOPS);
  evs__store_close(s);
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_schema_migrations"),
                   EVS_STORE_SCHEMA_VERSION);
  restore_location(f);
}

/* Delete is a take-once: however many processes (or nodes, on PostgreSQL) delete the same key
 * at the same moment, exactly one is told 0 and every other -ENOENT. The function-runtime
 * plugin's run tokens rely on it for "single use" (rtlive/<digest>). */
#define TAKE_KEYS 200

typedef struct take_arg {
  const evs__store_options *o;
  int counts; /* write end: each child's wins */
} take_arg;

static int take_child(void *arg, int i, int go) {
  take_arg *a = arg;
  char err[256];
  evs__store *cs = NULL;
  int won = 0;
  if (evs__store_open(a->o, &cs, err, sizeof(err)) < 0)
    return 10;
  if (together_wait(go) < 0)
    return 9;
  for (int k = 0; k < TAKE_KEYS; k++) {
    char ck[32];
    snprintf(ck, sizeof(ck), "tok/%d", (k + i * 37) % TAKE_KEYS); /* each its own order */
    int r = evs__store_delete(cs, "take", ck);
    if (r == 0)
      won++;
    else if (r != -ENOENT)
      return 11;
  }
  evs__store_close(cs);
  if (write(a->counts, &won, sizeof(won)) != (ssize_t)sizeof(won))
    return 12;
  return 0;
}

static void test_delete_once_concurrent(void **state) {
  fx *f = need(state);
  evs__store_options o;
  char where[PATH_MAX], key[32];
  int counts[2];

  fresh_location(f, "take", &o, where, sizeof(where));
  evs__store *s = reopen(f, &o);
  for (int k = 0; k < TAKE_KEYS; k++) {
    snprintf(key, sizeof(key), "tok/%d", k);
    put_str(s, "take", key, "1");
  }
  evs__store_close(s);
  assert_int_equal(pipe(counts), 0);
  take_arg a = {&o, counts[1]};
  run_together(NPROC, take_child, &a);
  close(counts[1]);
  int total = 0;
  for (int i = 0; i < NPROC; i++) {
    int won = 0;
    assert_int_equal(read(counts[0], &won, sizeof(won)), (ssize_t)sizeof(won));
    total += won;
  }
  close(counts[0]);
  assert_int_equal(total, TAKE_KEYS);
  restore_location(f);
}

/* put_new creates and never overwrites a live key; an expired one counts as absent. */
static void test_put_new(void **state) {
  fx *f = need(state);
  const uint8_t *a = (const uint8_t *)"a", *b = (const uint8_t *)"b";

  use_fake_clock(f, 1700000000000);
  assert_int_equal(evs__store_put_new(f->s, "pn", "k", a, 1, 0), 0);
  assert_int_equal(evs__store_put_new(f->s, "pn", "k", b, 1, 0), -EEXIST);
  assert_value(f->s, "pn", "k", "a");
  assert_int_equal(evs__store_put_new(f->s, "pn", "t", a, 1, 10), 0);
  f->now += 9999;
  assert_int_equal(evs__store_put_new(f->s, "pn", "t", b, 1, 10), -EEXIST);
  assert_value(f->s, "pn", "t", "a");
  f->now += 1; /* expired now: created again, with the new expiry */
  assert_int_equal(evs__store_put_new(f->s, "pn", "t", b, 1, 10), 0);
  assert_value(f->s, "pn", "t", "b");
  f->now += 9999;
  assert_value(f->s, "pn", "t", "b");
  assert_int_equal(evs__store_put_new(f->s, "other", "k", b, 1, 0), 0); /* per namespace */
  assert_int_equal(evs__store_delete(f->s, "pn", "k"), 0);
  assert_int_equal(evs__store_put_new(f->s, "pn", "k", b, 0, 0), 0);
  assert_value(f->s, "pn", "k", "");
  assert_int_equal(evs__store_put_new(f->s, "pn", "", a, 1, 0), -EINVAL);
}

/* Create-only is atomic: of NPROC processes creating the same keys at once, exactly one wins
 * each key, and the value kept is the winner's. */
static int claim_child(void *arg, int i, int go) {
  take_arg *a = arg;
  char err[256], ck[32], me[8];
  evs__store *cs = NULL;
  int won = 0;
  if (evs__store_open(a->o, &cs, err, sizeof(err)) < 0)
    return 10;
  if (together_wait(go) < 0)
    return 9;
  snprintf(me, sizeof(me), "%d", i);
  for (int k = 0; k < TAKE_KEYS; k++) {
    snprintf(ck, sizeof(ck), "ver/%d", (k + i * 37) % TAKE_KEYS);
    int r = evs__store_put_new(cs, "claim", ck, (const uint8_t *)me, strlen(me), 0);
    if (r == 0)
      won++;
    else if (r != -EEXIST)
      return 11;
  }
  evs__store_close(cs);
  int msg[2] = {i, won};
  if (write(a->counts, msg, sizeof(msg)) != (ssize_t)sizeof(msg))
    return 12;
  return 0;
}

static void test_put_new_concurrent(void **state) {
  fx *f = need(state);
  evs__store_options o;
  char where[PATH_MAX];
  int counts[2];

  fresh_location(f, "claim", &o, where, sizeof(where));
  evs__store *s = reopen(f, &o);
  evs__store_close(s);
  assert_int_equal(pipe(counts), 0);
  take_arg a = {&o, counts[1]};
  run_together(NPROC, claim_child, &a);
  close(counts[1]);
  int total = 0, wins[NPROC] = {0};
  for (int i = 0; i < NPROC; i++) {
    int msg[2];
    assert_int_equal(read(counts[0], msg, sizeof(msg)), (ssize_t)sizeof(msg));
    assert_true(msg[0] >= 0 && msg[0] < NPROC);
    wins[msg[0]] = msg[1];
    total += msg[1];
  }
  close(counts[0]);
  assert_int_equal(total, TAKE_KEYS);
  /* Every key holds one writer's mark, and the marks add up to the wins: no key was written
   * by two creators. */
  s = reopen(f, &o);
  int per[NPROC] = {0};
  for (int k = 0; k < TAKE_KEYS; k++) {
    char ck[32];
    uint8_t *v = NULL;
    size_t len = 0;
    snprintf(ck, sizeof(ck), "ver/%d", k);
    assert_int_equal(evs__store_get(s, "claim", ck, &v, &len), 0);
    int who = atoi((const char *)v);
    free(v);
    assert_true(who >= 0 && who < NPROC);
    per[who]++;
  }
  evs__store_close(s);
  for (int i = 0; i < NPROC; i++)
    assert_int_equal(per[i], wins[i]);
  restore_location(f);
}

/* The upgrade case: the migrations table exists (an older evserver made it) and several
 * processes open the store at once to apply the pending steps. A deferred transaction or a
 * missing advisory lock shows here as a failed open. */
#define UPGRADE_ROUNDS 5 /* the race is won or lost by timing: give it several chances */

static int upgrade_child(void *arg, int i, int go) {
  const evs__store_options *o = arg;
  evs__store *s = NULL;
  char err[256];
  if (together_wait(go) < 0)
    return 9;
  if (evs__store_open(o, &s, err, sizeof(err)) < 0) {
    fprintf(stderr, "child %d: open: %s\n", i, err);
    return 10;
  }
  evs__store_close(s);
  return 0;
}

static void upgrade_round(fx *f, int round) {
  evs__store_options o;
  char where[PATH_MAX], name[16];

  snprintf(name, sizeof(name), "upgrade%d", round);
  fresh_location(f, name, &o, where, sizeof(where));
  assert_int_equal(raw_sql(f, where, "CREATE TABLE evs_schema_migrations (version integer "
                                     "PRIMARY KEY, name text NOT NULL, applied_at bigint "
                                     "NOT NULL)"),
                   0);
  run_together(NPROC, upgrade_child, &o);
  assert_int_equal(raw_sql(f, where, "SELECT count(*) FROM evs_schema_migrations"),
                   EVS_STORE_SCHEMA_VERSION);
  restore_location(f);
}

static void test_concurrent_upgrade(void **state) {
  fx *f = need(state);
  for (int round = 0; round < UPGRADE_ROUNDS; round++)
    upgrade_round(f, round);
}

static void test_file_mode(void **state) {
  fx *f = need(state);
  evs__store_options o;
  char where[PATH_MAX], side[PATH_MAX + 8];
  evs__store *s;
  struct stat st;
  mode_t old;

  if (f->pg) {
    print_message("    (file modes do not apply to PostgreSQL)\n");
    skip();
  }
  /* Even with a permissive umask, the database and its WAL files are the owner's alone. */
  fresh_location(f, "mode", &o, where, sizeof(where));
  old = umask(0);
  s = reopen(f, &o);
  put_str(s, "m", "k", "v");
  umask(old);
  assert_int_equal(stat(where, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  snprintf(side, sizeof(side), "%s-wal", where);
  assert_int_equal(stat(side, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  snprintf(side, sizeof(side), "%s-shm", where);
  assert_int_equal(stat(side, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  evs__store_close(s);
}

/* ---- opening: options and error messages (no server needed) ------------------------------ */

static void test_open_errors(void **state) {
  fx *f = *state;
  evs__store_options o = { 0 };
  evs__store *s = (evs__store *)&o; /* a sentinel: must stay untouched on failure */
  char err[512];
  int r;

  (void)f;
  o.backend = "mongodb";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -EINVAL);
  assert_ptr_equal(s, &o);
  assert_non_null(strstr(err, "unknown backend"));

  o.backend = "sqlite";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -EINVAL);
  o.path = "/nonexistent-dir/evs/store.db";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -ENOENT);
  assert_non_null(strstr(err, "/nonexistent-dir/evs/store.db"));
  assert_ptr_equal(s, &o);

  /* The DSN may carry a password: it must not show up in any message. */
  o.backend = "postgresql";
  o.path = NULL;
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -EINVAL);
  o.dsn = "host=db password=Sup3rSecret junk";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -EINVAL);
  assert_null(strstr(err, "Sup3rSecret"));
  o.dsn = "postgresql://evs:Sup3rSecret@db/x?sslmode=%zz";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -EINVAL);
  assert_null(strstr(err, "Sup3rSecret"));
  /* A unix socket directory that does not exist: fails at once, without the network. */
  o.dsn = "postgresql://Sup3rSecret:Sup3rSecret@%2Fnonexistent-dir/Sup3rSecret";
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -ECONNREFUSED);
  assert_null(strstr(err, "Sup3rSecret"));
  o.dsn = "host=/nonexistent-dir password=Sup3rSecret user=Sup3rSecret dbname=Sup3rSecret "
          "connect_timeout=2";
  r = evs__store_open(&o, &s, err, sizeof(err));
  assert_int_equal(r, -ECONNREFUSED);
  assert_ptr_equal(s, &o);
  assert_non_null(strstr(err, "cannot connect"));
  assert_null(strstr(err, "Sup3rSecret"));
  assert_null(strchr(err, '\n'));
  /* No '=': libpq takes it for a database name, and it is masked whole. */
  o.dsn = "password Sup3rSecret";
  setenv("PGHOST", "/nonexistent-dir", 1);
  r = evs__store_open(&o, &s, err, sizeof(err));
  unsetenv("PGHOST");
  assert_int_equal(r, -ECONNREFUSED);
  assert_null(strstr(err, "Sup3rSecret"));
}

/* The server quotes the database name back; with the password equal to it, the message must
 * come out masked. */
static void test_pg_server_message_masked(void **state) {
  fx *f = need(state);
  evs__store_options o = { .backend = "postgresql" };
  evs__store *s = NULL;
  char dsn[1024], err[512];

  snprintf(dsn, sizeof(dsn), "%s dbname=Sup3rSecret password=Sup3rSecret", pg_dsn);
  o.dsn = dsn;
  assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -ECONNREFUSED);
  assert_null(s);
  assert_non_null(strstr(err, "***"));
  assert_null(strstr(err, "Sup3rSecret"));

  /* A bare name (no '=') reaches the server as a database name; point libpq's environment at
   * the test server so that the server is the one quoting it. */
  {
    PQconninfoOption *opts = PQconninfoParse(pg_dsn, NULL);
    const char *envs[][2] = { { "host", "PGHOST" }, { "port", "PGPORT" }, { "user", "PGUSER" } };
    assert_non_null(opts);
    for (PQconninfoOption *op = opts; op->keyword; op++)
      for (size_t i = 0; i < 3; i++)
        if (op->val && strcmp(op->keyword, envs[i][0]) == 0)
          setenv(envs[i][1], op->val, 1);
    PQconninfoFree(opts);
    o.dsn = "Sup3rSecret";
    assert_int_equal(evs__store_open(&o, &s, err, sizeof(err)), -ECONNREFUSED);
    for (size_t i = 0; i < 3; i++)
      unsetenv(envs[i][1]);
    assert_non_null(strstr(err, "***"));
    assert_null(strstr(err, "Sup3rSecret"));
  }
  (void)f;
}

static void test_format_error(void **state) {
  char buf[64];

  (void)state;
  evs__store_format_error(buf, sizeof(buf), "pg", "bad pw\tpw\n", "pw");
  assert_string_equal(buf, "pg: bad *** ***");
  evs__store_format_error(buf, 12, "pg", "0123456789abcdef", NULL);
  assert_string_equal(buf, "pg: 0123456");
  evs__store_format_error(buf, sizeof(buf), "x", NULL, "");
  assert_string_equal(buf, "x:");
}

/* ---- main -------------------------------------------------------------------------------- */

#define STORE_TESTS(setup, teardown)                                                          \
  cmocka_unit_test_setup_teardown(test_get_put_delete, setup, teardown),                      \
  cmocka_unit_test_setup_teardown(test_binary_values, setup, teardown),                       \
  cmocka_unit_test_setup_teardown(test_scan_order_and_prefix, setup, teardown),               \
  cmocka_unit_test_setup_teardown(test_scan_pages_and_reentry, setup, teardown),              \
  cmocka_unit_test_setup_teardown(test_ttl, setup, teardown),                                 \
  cmocka_unit_test_setup_teardown(test_limits, setup, teardown),                              \
  cmocka_unit_test_setup_teardown(test_append_query, setup, teardown),                        \
  cmocka_unit_test_setup_teardown(test_append_batch, setup, teardown),                        \
  cmocka_unit_test_setup_teardown(test_ids_concurrent, setup, teardown),                      \
  cmocka_unit_test_setup_teardown(test_migrations, setup, teardown),                          \
  cmocka_unit_test_setup_teardown(test_concurrent_processes, setup, teardown),                \
  cmocka_unit_test_setup_teardown(test_concurrent_upgrade, setup, teardown),                  \
  cmocka_unit_test_setup_teardown(test_delete_once_concurrent, setup, teardown),              \
  cmocka_unit_test_setup_teardown(test_put_new, setup, teardown),                             \
  cmocka_unit_test_setup_teardown(test_put_new_concurrent, setup, teardown),                  \
  cmocka_unit_test_setup_teardown(test_file_mode, setup, teardown)

int main(void) {
  const struct CMUnitTest sqlite_tests[] = {
    STORE_TESTS(setup_sqlite, teardown_sqlite),
    cmocka_unit_test_setup_teardown(test_open_errors, setup_sqlite, teardown_sqlite),
    cmocka_unit_test_setup_teardown(test_migrate_log_v1, setup_sqlite, teardown_sqlite),
    cmocka_unit_test_setup_teardown(test_durable_after_kill, setup_sqlite, teardown_sqlite),
    cmocka_unit_test(test_format_error),
  };
  const struct CMUnitTest pg_tests[] = {
    STORE_TESTS(setup_pg, teardown_pg),
    cmocka_unit_test_setup_teardown(test_pg_server_message_masked, setup_pg, teardown_pg),
  };
  int failed;

  pg_dsn = getenv("EVS_TEST_PG_DSN");
  if (pg_dsn && !*pg_dsn)
    pg_dsn = NULL;
  failed = cmocka_run_group_tests_name("store/sqlite", sqlite_tests, NULL, NULL);
  if (!pg_dsn)
    print_message("store/postgresql: skipped: EVS_TEST_PG_DSN is not set "
                  "(tests/integration/pg_store.sh starts a server and sets it)\n");
  failed += cmocka_run_group_tests_name("store/postgresql", pg_tests, NULL, NULL);
  return failed ? 1 : 0;
}
