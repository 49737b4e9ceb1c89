/*
 * The PostgreSQL store backend: several evserver nodes behind a load balancer share one
 * database through it, and plugins cannot tell it from the SQLite backend.
 *
 * One libpq connection per handle, used synchronously (store.c's callers run off the loop
 * thread). Every statement goes through PQexecParams with typed parameters: keys and values
 * travel as binary bytea, never spliced into SQL, and results come back in binary format.
 * Keys are bytea, so their order is bytewise as in SQLite; names are text COLLATE "C". A
 * connection that broke is reset at the start of the next call, so one failed call (-ENOTCONN)
 * is the cost of a database restart. Expiry times come from the calling node's clock.
 *
 * The connection string may hold a password. It is never copied into a message: a string that
 * does not parse gets a fixed message, and the password is masked in anything libpq or the
 * server says. The tables live in the connection's search_path (set options=-csearch_path=...
 * in the DSN for a dedicated schema); the database should use the UTF8 encoding.
 *
 * MIGRATIONS. The same scheme as store_sqlite.c (read its header comment on adding one): the
 * array `migrations` below holds the same versions in PostgreSQL's dialect. Each step runs in
 * its own transaction that first takes a transaction-scoped advisory lock, so nodes starting
 * together apply it exactly once; the others wait, then find it applied.
 */
#include "store.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

/* Type OIDs from pg_type.h, which is a server header. */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25

/* The advisory lock that serializes migrations: any fixed 64-bit number other software in the
 * same database is unlikely to use ("evsstore" in ASCII). */
#define MIGRATION_LOCK "7310593858020143717"

#define MIN_SERVER_VERSION 100000 /* 10: identity columns */

typedef struct migration {
  int version;
  const char *name;
  const char *sql;
} migration;

static const migration migrations[] = {
  { 1, "kv and log",
    "CREATE TABLE evs_kv ("
    "  ns text COLLATE \"C\" NOT NULL,"
    "  key bytea NOT NULL,"
    "  value bytea NOT NULL,"
    "  expires_at bigint," /* unix ms; NULL: never */
    "  PRIMARY KEY (ns, key));"
    "CREATE INDEX evs_kv_expires ON evs_kv (expires_at) WHERE expires_at IS NOT NULL;"
    "CREATE TABLE evs_log ("
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  stream text COLLATE \"C\" NOT NULL,"
    "  ts_ms bigint NOT NULL,"
    "  record text NOT NULL);"
    "CREATE INDEX evs_log_stream_ts ON evs_log (stream, ts_ms, id);" },
  /* SQLite's version 2 rebuilt its evs_log so that a commit writes fewer WAL pages (no
   * AUTOINCREMENT row, stream names interned). Nothing here has that cost: the identity
   * column's sequence is not written per row, and nodes of version 1 may still be writing to
   * this table; so the step only moves the version. */
  { 2, "log: interned streams, no sqlite_sequence (sqlite only)", "SELECT 1" },
};
_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == EVS_STORE_SCHEMA_VERSION,
               "store_pg.c: migrations[] and EVS_STORE_SCHEMA_VERSION disagree");

/* Page queries cap bytes in SQL: the running total of value sizes before each row must be
 * under $6, so at least one row comes back and no page holds much more than the cap.
 * octet_length() of a TOASTed value reads only its header, and rows the outer filter drops are
 * never detoasted. */
#define SCAN_SQL(upper)                                                                       \
  "SELECT key, value FROM ("                                                                  \
  "  SELECT key, value, octet_length(value) AS len,"                                          \
  "    sum(octet_length(value)) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) AS run"          \
  "  FROM evs_kv WHERE ns = $1 AND key >= $2 " upper                                          \
  "    AND (expires_at IS NULL OR expires_at > $4)"                                           \
  "  ORDER BY key LIMIT $5) t "                                                               \
  "WHERE run - len < $6 ORDER BY key"

typedef struct pg {
  PGconn *conn;
  char *password; /* a copy, to mask in messages; wiped on close */
  char errmsg[256];
  /* Reconnection backoff: after a failed reconnect, calls fail at once (-ENOTCONN) until
   * retry_at (CLOCK_MONOTONIC ms), so a worker's callers never wait on more than one connect
   * attempt per backoff period while the database is away. Not the store's clock: only how
   * often this process knocks. */
  int64_t retry_at_ms;
  int64_t backoff_ms;
} pg;

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 1000

/* ---- parameters and results -------------------------------------------------------------- */

#define MAX_PARAMS 6

typedef struct params {
  int n;
  Oid types[MAX_PARAMS];
  const char *values[MAX_PARAMS];
  int lengths[MAX_PARAMS];
  int formats[MAX_PARAMS];
  char ints[MAX_PARAMS][24];
} params;

static void p_text(params *p, const char *s) {
  p->types[p->n] = OID_TEXT;
  p->values[p->n] = s;
  p->formats[p->n] = 0;
  p->n++;
}

static void p_bytea(params *p, const void *b, size_t len) {
  p->types[p->n] = OID_BYTEA;
  /* A NULL pointer would be SQL NULL: an empty bytea needs a non-NULL one. */
  p->values[p->n] = len ? (const char *)b : "";
  p->lengths[p->n] = (int)len;
  p->formats[p->n] = 1;
  p->n++;
}

static void p_int8(params *p, int64_t v) {
  snprintf(p->ints[p->n], sizeof(p->ints[0]), "%" PRId64, v);
  p->types[p->n] = OID_INT8;
  p->values[p->n] = p->ints[p->n];
  p->formats[p->n] = 0;
  p->n++;
}

static void p_null(params *p, Oid type) {
  p->types[p->n] = type;
  p->values[p->n] = NULL;
  p->formats[p->n] = 0;
  p->n++;
}

/* A binary int8 (or int4) result column. */
static int64_t get_int(const PGresult *res, int row, int col) {
  const char *v = PQgetvalue(res, row, col);
  if (PQgetlength(res, row, col) == 4) {
    uint32_t x;
    memcpy(&x, v, 4);
    return (int32_t)be32toh(x);
  }
  uint64_t x = 0;
  if (PQgetlength(res, row, col) == 8)
    memcpy(&x, v, 8);
  return (int64_t)be64toh(x);
}

/* ---- errors ------------------------------------------------------------------------------ */

static int map_sqlstate(const char *st) {
  if (!st)
    return -EIO;
  /* 08: connection exceptions; 57P01-57P03: the server is shutting down or starting (a
   * restart): the session ends, and the next call reconnects. */
  if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
      strcmp(st, "57P03") == 0)
    return -ENOTCONN;
  if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 || strcmp(st, "55P03") == 0)
    return -EBUSY;
  if (strcmp(st, "53100") == 0)
    return -ENOSPC;
  if (strcmp(st, "53200") == 0)
    return -ENOMEM;
  if (strcmp(st, "54000") == 0)
    return -E2BIG;
  if (strcmp(st, "57014") == 0)
    return -ECANCELED;
  if (strncmp(st, "22", 2) == 0)
    return -EINVAL;
  return -EIO;
}

/* Record a failure for last_error (password masked) and return a negative errno. res may be
 * NULL (libpq could not even send the query). */
static int fail(pg *g, const PGresult *res, const char *what) {
  const char *msg = res ? PQresultErrorMessage(res) : "";
  int r;

  if (!msg || !*msg)
    msg = PQerrorMessage(g->conn);
  evs__store_format_error(g->errmsg, sizeof(g->errmsg), what, msg, g->password);
  r = map_sqlstate(res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL);
  if (PQstatus(g->conn) == CONNECTION_BAD)
    r = -ENOTCONN;
  return r;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Before each call: a connection that broke since the last one is re-established, at most
 * once per backoff period (PG_BACKOFF_MIN_MS doubling to PG_BACKOFF_MAX_MS); in between,
 * -ENOTCONN at once. docs/state.md states what callers answer meanwhile. */
static int ensure_conn(pg *g) {
  if (PQstatus(g->conn) == CONNECTION_OK)
    return 0;
  int64_t now = mono_ms();
  if (g->retry_at_ms && now < g->retry_at_ms)
    return -ENOTCONN; /* errmsg still holds the last reconnect's message */
  PQreset(g->conn);
  if (PQstatus(g->conn) == CONNECTION_OK) {
    g->retry_at_ms = 0;
    g->backoff_ms = 0;
    return 0;
  }
  g->backoff_ms = g->backoff_ms ? g->backoff_ms * 2 : PG_BACKOFF_MIN_MS;
  if (g->backoff_ms > PG_BACKOFF_MAX_MS)
    g->backoff_ms = PG_BACKOFF_MAX_MS;
  g->retry_at_ms = mono_ms() + g->backoff_ms;
  evs__store_format_error(g->errmsg, sizeof(g->errmsg), "postgresql: reconnect",
                          PQerrorMessage(g->conn), g->password);
  return -ENOTCONN;
}

/* Run one statement. Returns the result (caller PQclear()s it) or NULL with *ret_err set. */
static PGresult *run(pg *g, const char *sql, const params *p, const char *what, int *ret_err) {
  PGresult *res;
  ExecStatusType st;

  res = PQexecParams(g->conn, sql, p ? p->n : 0, p ? p->types : NULL, p ? p->values : NULL,
                     p ? p->lengths : NULL, p ? p->formats : NULL, 1);
  st = PQresultStatus(res);
  if (res && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK))
    return res;
  *ret_err = fail(g, res, what);
  PQclear(res);
  return NULL;
}

/* Run SQL that returns no rows (several statements are allowed: no parameters). */
static int cmd(pg *g, const char *sql, const char *what) {
  PGresult *res = PQexec(g->conn, sql);
  ExecStatusType st = PQresultStatus(res);
  int r = 0;

  if (!res || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK))
    r = fail(g, res, what);
  PQclear(res);
  return r;
}

/* ---- open, migrate, close ---------------------------------------------------------------- */

/* libpq prints server notices ("relation already exists, skipping") to stderr by default;
 * library-like code stays quiet. */
static void ignore_notice(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static void pg_close(void *impl) {
  pg *g = impl;

  if (!g)
    return;
  PQfinish(g->conn);
  if (g->password) {
    explicit_bzero(g->password, strlen(g->password));
    free(g->password);
  }
  free(g);
}

static int read_version(pg *g) {
  PGresult *res;
  int r;

  res = run(g, "SELECT coalesce(max(version), 0)::bigint FROM evs_schema_migrations", NULL,
            "postgresql: schema version", &r);
  if (!res)
    return r;
  r = PQntuples(res) == 1 ? (int)get_int(res, 0, 0) : -EIO;
  PQclear(res);
  return r;
}

/* Apply at most one pending migration. Returns 1 if one was applied, 0 if the schema is
 * current, or a negative errno (g->errmsg says why). */
static int migrate_step(pg *g, int64_t now_ms, const migration **ret_m) {
  const migration *m;
  PGresult *res;
  params p = { 0 };
  int r, cur;

  if ((r = cmd(g, "BEGIN", "postgresql: begin migration")) < 0)
    return r;
  r = cmd(g,
          "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ");"
          "CREATE TABLE IF NOT EXISTS evs_schema_migrations ("
          "  version integer PRIMARY KEY,"
          "  name text NOT NULL,"
          "  applied_at bigint NOT NULL)", /* unix ms */
          "postgresql: lock and create evs_schema_migrations");
  if (r < 0)
    goto rollback;
  if ((r = cur = read_version(g)) < 0)
    goto rollback;
  if (cur > EVS_STORE_SCHEMA_VERSION) {
    snprintf(g->errmsg, sizeof(g->errmsg),
             "postgresql: store schema version %d is newer than this evserver's (%d); "
             "upgrade evserver",
             cur, EVS_STORE_SCHEMA_VERSION);
    r = -ENOTSUP;
    goto rollback;
  }
  if (cur == EVS_STORE_SCHEMA_VERSION)
    return cmd(g, "COMMIT", "postgresql: commit");

  m = *ret_m = &migrations[cur];
  if ((r = cmd(g, m->sql, "postgresql: migration")) < 0)
    goto rollback;
  p_int8(&p, m->version);
  p_text(&p, m->name);
  p_int8(&p, now_ms);
  res = run(g, "INSERT INTO evs_schema_migrations (version, name, applied_at) "
               "VALUES ($1, $2, $3)",
            &p, "postgresql: record migration", &r);
  if (!res)
    goto rollback;
  PQclear(res);
  if ((r = cmd(g, "COMMIT", "postgresql: commit migration")) < 0)
    goto rollback;
  return 1;

rollback:
  if (PQstatus(g->conn) == CONNECTION_OK) {
    PGresult *rb = PQexec(g->conn, "ROLLBACK");
    PQclear(rb);
  }
  return r;
}

static int pg_open(const evs__store_options *o, int64_t now_ms, void **ret_impl, char *err,
                   size_t errlen) {
  /* Defaults first, the DSN (expanded from dbname) next so it can override them, and
   * client_encoding last so it cannot: records are UTF-8. */
  const char *keys[] = { "application_name", "connect_timeout", "dbname", "client_encoding",
                         NULL };
  /* connect_timeout 2 s (the DSN may change it): a reconnect blocks its caller that long at
   * most, once per backoff period (ensure_conn). */
  const char *vals[] = { "evserver", "2", o->dsn, "UTF8", NULL };
  const migration *m = NULL;
  PQconninfoOption *opts;
  const char *secret = NULL;
  char *perr = NULL;
  int r, bare;
  pg *g;

  if (!o->dsn || !*o->dsn) {
    if (err)
      snprintf(err, errlen, "postgresql: no connection string (dsn)");
    return -EINVAL;
  }
  /* libpq's parse errors quote pieces of the string, which may be the password: say nothing
   * about where the string is wrong. A string with no '=' that is not a URI is a bare
   * database name to libpq, which the server may quote back ("database ... does not exist"):
   * mask all of it, in case it is a mistyped "password secret". */
  bare = !strchr(o->dsn, '=') && strncmp(o->dsn, "postgresql://", 13) != 0 &&
         strncmp(o->dsn, "postgres://", 11) != 0;
  if (bare)
    opts = NULL;
  else if (!(opts = PQconninfoParse(o->dsn, &perr))) {
    PQfreemem(perr);
    if (err)
      snprintf(err, errlen, "postgresql: the connection string (dsn) does not parse; "
                            "it is not shown, since it may contain a password");
    return -EINVAL;
  }
  g = calloc(1, sizeof(*g));
  if (!g) {
    PQconninfoFree(opts);
    if (err)
      snprintf(err, errlen, "postgresql: out of memory");
    return -ENOMEM;
  }
  for (PQconninfoOption *op = opts; op && op->keyword; op++)
    if (strcmp(op->keyword, "password") == 0 && op->val && *op->val)
      secret = op->val;
  if (bare)
    secret = o->dsn;
  if (secret && !(g->password = strdup(secret))) {
    PQconninfoFree(opts);
    free(g);
    if (err)
      snprintf(err, errlen, "postgresql: out of memory");
    return -ENOMEM;
  }
  PQconninfoFree(opts);

  g->conn = PQconnectdbParams(keys, vals, 1);
  if (!g->conn) {
    r = -ENOMEM;
    snprintf(g->errmsg, sizeof(g->errmsg), "postgresql: out of memory");
    goto fail;
  }
  PQsetNoticeProcessor(g->conn, ignore_notice, NULL);
  if (PQstatus(g->conn) != CONNECTION_OK) {
    evs__store_format_error(g->errmsg, sizeof(g->errmsg), "postgresql: cannot connect",
                            PQerrorMessage(g->conn), g->password);
    r = -ECONNREFUSED;
    goto fail;
  }
  if (PQserverVersion(g->conn) < MIN_SERVER_VERSION) {
    snprintf(g->errmsg, sizeof(g->errmsg),
             "postgresql: server version %d is too old (10 or later is needed)",
             PQserverVersion(g->conn));
    r = -ENOTSUP;
    goto fail;
  }
  while ((r = migrate_step(g, now_ms, &m)) > 0)
    ;
  if (r < 0)
    goto fail;
  *ret_impl = g;
  return 0;

fail:
  if (err) {
    if (m)
      snprintf(err, errlen, "%s (migration %d '%s')", g->errmsg, m->version, m->name);
    else
      snprintf(err, errlen, "%s", g->errmsg);
  }
  pg_close(g);
  return r;
}

/* ---- key-value --------------------------------------------------------------------------- */

static int pg_get(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms,
                  uint8_t **ret_value, size_t *ret_len) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  uint8_t *v = NULL;
  size_t n = 0;
  int r, expired = 0;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, ns);
  p_bytea(&p, key, key_len);
  res = run(g, "SELECT value, expires_at FROM evs_kv WHERE ns = $1 AND key = $2", &p,
            "postgresql: get", &r);
  if (!res)
    return r;
  if (PQntuples(res) == 0)
    r = -ENOENT;
  else if (!PQgetisnull(res, 0, 1) && get_int(res, 0, 1) <= now_ms) {
    r = -ENOENT;
    expired = 1;
  } else {
    n = (size_t)PQgetlength(res, 0, 0);
    v = malloc(n + 1);
    if (!v)
      r = -ENOMEM;
    else {
      memcpy(v, PQgetvalue(res, 0, 0), n);
      v[n] = '\0';
    }
  }
  PQclear(res);
  if (expired) {
    /* Best effort, and only if still expired: another node may have just refreshed it. */
    params d = { 0 };
    int ignored;
    p_text(&d, ns);
    p_bytea(&d, key, key_len);
    p_int8(&d, now_ms);
    PQclear(run(g, "DELETE FROM evs_kv WHERE ns = $1 AND key = $2 AND expires_at <= $3", &d,
                "postgresql: delete expired", &ignored));
  }
  if (r < 0)
    return r;
  *ret_value = v;
  *ret_len = n;
  return 0;
}

#define PG_UPSERT                                                                    \
  "INSERT INTO evs_kv (ns, key, value, expires_at) VALUES ($1, $2, $3, $4) "              \
  "ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, "                           \
  "expires_at = EXCLUDED.expires_at"

/* A put (create_only 0: insert or replace) or a create-only put (-EEXIST when a live row is
 * there; now_ms decides what is live). The conflicting row is locked, so of concurrent
 * creators exactly one changes a row: an absent or expired key is created, a live one left
 * alone. */
static int pg_write(pg *g, int create_only, const char *ns, const char *key, size_t key_len,
                    const uint8_t *v, size_t len, int64_t expires_ms, int64_t now_ms) {
  params p = { 0 };
  PGresult *res;
  int r;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, ns);
  p_bytea(&p, key, key_len);
  p_bytea(&p, v, len);
  if (expires_ms)
    p_int8(&p, expires_ms);
  else
    p_null(&p, OID_INT8);
  if (create_only)
    p_int8(&p, now_ms);
  res = run(g,
            create_only ? PG_UPSERT " WHERE evs_kv.expires_at IS NOT NULL AND "
                                    "evs_kv.expires_at <= $5"
                        : PG_UPSERT,
            &p, create_only ? "postgresql: put_new" : "postgresql: put", &r);
  if (!res)
    return r;
  r = create_only && atoi(PQcmdTuples(res)) == 0 ? -EEXIST : 0;
  PQclear(res);
  return r;
}

static int pg_put(void *impl, const char *ns, const char *key, size_t key_len, const uint8_t *v,
                  size_t len, int64_t expires_ms) {
  return pg_write(impl, 0, ns, key, key_len, v, len, expires_ms, 0);
}

static int pg_put_new(void *impl, const char *ns, const char *key, size_t key_len,
                      const uint8_t *v, size_t len, int64_t expires_ms, int64_t now_ms) {
  return pg_write(impl, 1, ns, key, key_len, v, len, expires_ms, now_ms);
}

static int pg_del(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  int r;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, ns);
  p_bytea(&p, key, key_len);
  /* Delete whatever is there; a row that had already expired still counts as absent. */
  res = run(g, "DELETE FROM evs_kv WHERE ns = $1 AND key = $2 RETURNING expires_at", &p,
            "postgresql: delete", &r);
  if (!res)
    return r;
  if (PQntuples(res) == 0)
    r = -ENOENT;
  else
    r = (PQgetisnull(res, 0, 0) || get_int(res, 0, 0) > now_ms) ? 0 : -ENOENT;
  PQclear(res);
  return r;
}

static int pg_scan(void *impl, const evs__store_scan_req *req, evs__store_page *page) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  int r;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, req->ns);
  p_bytea(&p, req->lo, req->lo_len);
  if (req->hi)
    p_bytea(&p, req->hi, req->hi_len);
  else
    p_null(&p, OID_BYTEA); /* unused by the unbounded statement; keeps $4..$6 in place */
  p_int8(&p, req->now_ms);
  p_int8(&p, (int64_t)page->max_rows);
  p_int8(&p, (int64_t)page->max_bytes);
  /* Two statements, as in store_sqlite.c, so the upper bound always ends the index range. */
  res = run(g, req->hi ? SCAN_SQL("AND key < $3") : SCAN_SQL(""), &p, "postgresql: scan", &r);
  if (!res)
    return r;
  for (int i = 0; i < PQntuples(res) && r == 0; i++)
    r = evs__store_page_add(page, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                            PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1), 0, 0);
  PQclear(res);
  return r;
}

/* ---- streams ----------------------------------------------------------------------------- */

static int pg_append(void *impl, const char *stream, int64_t ts_ms, const char *record,
                     size_t record_len, int64_t *ret_id) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  int r;

  (void)record_len; /* text parameters travel NUL-terminated */
  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, stream);
  p_int8(&p, ts_ms);
  p_text(&p, record);
  res = run(g, "INSERT INTO evs_log (stream, ts_ms, record) VALUES ($1, $2, $3) RETURNING id",
            &p, "postgresql: append", &r);
  if (!res)
    return r;
  if (PQntuples(res) == 1) {
    *ret_id = get_int(res, 0, 0);
    r = 0;
  } else
    r = -EIO;
  PQclear(res);
  return r;
}

/* Rows of one INSERT: a batch of up to this many records is one statement, so one round trip
 * and one implicit transaction (the group commit's wait is then the commit, not a round trip
 * per record). */
#define PG_BATCH_ROWS 400

/* INSERT of recs[0..n) (n <= PG_BATCH_ROWS) in one statement. */
static int pg_insert_rows(pg *g, const evs__store_rec *recs, size_t n) {
  size_t np = 3 * n;
  Oid *types = malloc(np * sizeof *types);
  const char **values = malloc(np * sizeof *values);
  char (*ints)[24] = malloc(n * sizeof *ints);
  size_t cap = 64 + n * 32;
  char *sql = malloc(cap);
  int r = -ENOMEM;
  if (!types || !values || !ints || !sql) goto out;
  size_t off = (size_t)snprintf(sql, cap, "INSERT INTO evs_log (stream, ts_ms, record) VALUES ");
  for (size_t i = 0; i < n; i++) {
    snprintf(ints[i], sizeof ints[i], "%" PRId64, recs[i].ts_ms);
    types[3 * i] = OID_TEXT;
    values[3 * i] = recs[i].stream;
    types[3 * i + 1] = OID_INT8;
    values[3 * i + 1] = ints[i];
    types[3 * i + 2] = OID_TEXT;
    values[3 * i + 2] = recs[i].json;
    off += (size_t)snprintf(sql + off, cap - off, "%s($%zu,$%zu,$%zu)", i ? "," : "", 3 * i + 1,
                            3 * i + 2, 3 * i + 3);
  }
  PGresult *res = PQexecParams(g->conn, sql, (int)np, types, values, NULL, NULL, 1);
  ExecStatusType st = PQresultStatus(res);
  r = res && st == PGRES_COMMAND_OK ? 0 : fail(g, res, "postgresql: append");
  PQclear(res);
out:
  free(types);
  free(values);
  free(ints);
  free(sql);
  return r;
}

static int pg_append_batch(void *impl, const evs__store_rec *recs, size_t n, int nowait) {
  pg *g = impl;
  int r;

  if (nowait) /* every write is a round trip to the server */
    return -EOPNOTSUPP;
  if ((r = ensure_conn(g)) < 0)
    return r;
  if (n <= PG_BATCH_ROWS)
    return pg_insert_rows(g, recs, n);
  if ((r = cmd(g, "BEGIN", "postgresql: begin append")) < 0)
    return r;
  for (size_t i = 0; i < n && r == 0; i += PG_BATCH_ROWS)
    r = pg_insert_rows(g, recs + i, n - i < PG_BATCH_ROWS ? n - i : PG_BATCH_ROWS);
  if (r == 0 && (r = cmd(g, "COMMIT", "postgresql: commit append")) == 0)
    return 0;
  PQclear(PQexec(g->conn, "ROLLBACK"));
  return r;
}

static int pg_query(void *impl, const evs__store_query_req *req, evs__store_page *page) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  int r;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_text(&p, req->stream);
  p_int8(&p, req->since_ms);
  p_int8(&p, req->before_ts);
  p_int8(&p, req->before_id);
  p_int8(&p, (int64_t)page->max_rows);
  p_int8(&p, (int64_t)page->max_bytes);
  /* The row comparison is a range on the (stream, ts_ms, id) index, read backwards. */
  res = run(g,
            "SELECT id, ts_ms, record FROM ("
            "  SELECT id, ts_ms, record, octet_length(record) AS len,"
            "    sum(octet_length(record)) OVER (ORDER BY ts_ms DESC, id DESC"
            "                                    ROWS UNBOUNDED PRECEDING) AS run"
            "  FROM evs_log WHERE stream = $1 AND ts_ms >= $2 AND (ts_ms, id) < ($3, $4)"
            "  ORDER BY ts_ms DESC, id DESC LIMIT $5) t "
            "WHERE run - len < $6 ORDER BY ts_ms DESC, id DESC",
            &p, "postgresql: query", &r);
  if (!res)
    return r;
  for (int i = 0; i < PQntuples(res) && r == 0; i++)
    r = evs__store_page_add(page, NULL, 0, PQgetvalue(res, i, 2), (size_t)PQgetlength(res, i, 2),
                            get_int(res, i, 0), get_int(res, i, 1));
  PQclear(res);
  return r;
}

/* ---- the rest ---------------------------------------------------------------------------- */

static int pg_purge(void *impl, int64_t now_ms, size_t max_rows) {
  pg *g = impl;
  params p = { 0 };
  PGresult *res;
  int r;

  if ((r = ensure_conn(g)) < 0)
    return r;
  p_int8(&p, now_ms);
  p_int8(&p, max_rows > INT32_MAX ? INT32_MAX : (int64_t)max_rows);
  /* SKIP LOCKED: nodes purging at the same time split the work instead of queueing on (or
   * deadlocking over) the same rows. */
  res = run(g,
            "DELETE FROM evs_kv WHERE (ns, key) IN (SELECT ns, key FROM evs_kv "
            "WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &p, "postgresql: purge", &r);
  if (!res)
    return r;
  r = atoi(PQcmdTuples(res));
  PQclear(res);
  return r;
}

static int pg_schema_version(void *impl) {
  int r = ensure_conn(impl);
  return r < 0 ? r : read_version(impl);
}

static const char *pg_last_error(void *impl) {
  return ((pg *)impl)->errmsg;
}

const evs__store_backend evs__store_backend_pg = {
  .name = "postgresql",
  .open = pg_open,
  .close = pg_close,
  .get = pg_get,
  .put = pg_put,
  .put_new = pg_put_new,
  .del = pg_del,
  .scan = pg_scan,
  .append = pg_append,
  .append_batch = pg_append_batch,
  .query = pg_query,
  .purge = pg_purge,
  .schema_version = pg_schema_version,
  .last_error = pg_last_error,
};
