/*
 * The SQLite store backend: the embedded default, one database file in the state directory.
 *
 * Several worker processes of a node open the same file, each with its own connection. WAL
 * mode lets readers run alongside the one writer; busy_timeout makes a writer wait for the
 * lock instead of failing, and every write is either a single autocommit statement or a
 * BEGIN IMMEDIATE transaction, which take the write lock up front and so never hit the
 * deadlock-style SQLITE_BUSY that upgrading a read transaction can. synchronous=NORMAL is
 * durable across process crashes and may lose the last commits on power loss, which is the
 * usual trade for WAL. The file is created 0600 before SQLite opens it; SQLite gives its -wal
 * and -shm files the database file's mode.
 *
 * Statements are prepared once per connection and cached (enum stmt_id). Called by store.c
 * only, with arguments already checked and the handle's mutex held.
 *
 * MIGRATIONS. The schema is the ordered array `migrations` below; version N is element N-1.
 * At open, each pending step runs in its own BEGIN IMMEDIATE transaction together with its row
 * in evs_schema_migrations, so concurrent openers apply it exactly once. To change the schema:
 *   1. append a step here and the equivalent step to store_pg.c (same version, same meaning,
 *      each in its own dialect);
 *   2. bump EVS_STORE_SCHEMA_VERSION in store.h (both files check it at compile time);
 *   3. never edit or reorder a step that has shipped; prefer additive changes, since nodes of
 *      the previous version may still run against a migrated PostgreSQL store.
 */
#include "store.h"
#include "store_sqlite_vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#define BUSY_TIMEOUT_MS 5000

typedef struct migration {
  int version;
  const char *name;
  const char *sql;
} migration;

static const migration migrations[] = {
  { 1, "kv and log",
    /* A rowid table rather than WITHOUT ROWID: values may be megabytes, and WITHOUT ROWID
     * tables are meant for small rows. Keys are BLOBs so they compare bytewise. */
    "CREATE TABLE evs_kv ("
    "  ns TEXT NOT NULL,"
    "  key BLOB NOT NULL,"
    "  value BLOB NOT NULL,"
    "  expires_at INTEGER," /* unix ms; NULL: never */
    "  PRIMARY KEY (ns, key));"
    "CREATE INDEX evs_kv_expires ON evs_kv (expires_at) WHERE expires_at IS NOT NULL;"
    /* AUTOINCREMENT: ids are never reused, even after old records are deleted. */
    "CREATE TABLE evs_log ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  stream TEXT NOT NULL,"
    "  ts_ms INTEGER NOT NULL,"
    "  record TEXT NOT NULL);"
    "CREATE INDEX evs_log_stream_ts ON evs_log (stream, ts_ms, id);" },
  { 2, "log: interned streams, no sqlite_sequence",
    /* A commit of a batch of records wrote the table's last leaf, the index's leaf and the
     * sqlite_sequence row (AUTOINCREMENT), each a 4 KiB WAL frame, for about one page of
     * records: the commit's cost was mostly frames. Without AUTOINCREMENT the id is the rowid
     * SQLite picks under the write lock, max(id) + 1: unique across the processes sharing the
     * file and increasing in commit order, as before; it could only be reused if the newest
     * records were deleted, and nothing deletes records. Streams are interned: an integer in
     * the row and in the index instead of the name twice. One B-tree clustered on
     * (stream, ts_ms, id) (WITHOUT ROWID) measured worse: its interior pages hold whole rows.
     * Records are copied with their ids, so query order and cursors are unchanged. */
    "CREATE TABLE evs_log_stream ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE);"
    "INSERT INTO evs_log_stream (name) SELECT DISTINCT stream FROM evs_log ORDER BY stream;"
    "CREATE TABLE evs_log_v2 ("
    "  id INTEGER PRIMARY KEY,"
    "  stream_id INTEGER NOT NULL," /* evs_log_stream.id */
    "  ts_ms INTEGER NOT NULL,"
    "  record TEXT NOT NULL);"
    "INSERT INTO evs_log_v2 (id, stream_id, ts_ms, record) "
    "  SELECT l.id, s.id, l.ts_ms, l.record FROM evs_log l "
    "  JOIN evs_log_stream s ON s.name = l.stream ORDER BY l.id;"
    "DROP TABLE evs_log;" /* and its index and its sqlite_sequence row */
    "ALTER TABLE evs_log_v2 RENAME TO evs_log;"
    "CREATE INDEX evs_log_stream_ts ON evs_log (stream_id, ts_ms, id);" },
};
_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == EVS_STORE_SCHEMA_VERSION,
               "store_sqlite.c: migrations[] and EVS_STORE_SCHEMA_VERSION disagree");

enum stmt_id {
  ST_GET,
  ST_PUT,
  ST_PUT_NEW,
  ST_DEL,
  ST_DEL_EXPIRED,
  ST_SCAN,
  ST_SCAN_BOUNDED,
  ST_APPEND,
  ST_STREAM_ID,
  ST_STREAM_ADD,
  ST_QUERY,
  ST_PURGE,
  ST_VERSION,
  ST_BEGIN,
  ST_COMMIT,
  ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
  [ST_GET] = "SELECT value, expires_at FROM evs_kv WHERE ns = ?1 AND key = ?2",
  [ST_PUT] = "INSERT INTO evs_kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4) "
             "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
             "expires_at = excluded.expires_at",
  /* Create-only: an expired row is replaced (the WHERE), a live one is left alone; one row
   * changed tells the caller it created the key. */
  [ST_PUT_NEW] = "INSERT INTO evs_kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4) "
                 "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                 "expires_at = excluded.expires_at "
                 "WHERE evs_kv.expires_at IS NOT NULL AND evs_kv.expires_at <= ?5",
  [ST_DEL] = "DELETE FROM evs_kv WHERE ns = ?1 AND key = ?2 RETURNING expires_at",
  [ST_DEL_EXPIRED] = "DELETE FROM evs_kv WHERE ns = ?1 AND key = ?2 AND expires_at <= ?3",
  /* Two scan statements rather than "(?3 IS NULL OR key < ?3)", which would keep SQLite from
   * using the upper bound to end the index range. */
  [ST_SCAN] = "SELECT key, value FROM evs_kv WHERE ns = ?1 AND key >= ?2 "
              "AND (expires_at IS NULL OR expires_at > ?4) ORDER BY key LIMIT ?5",
  [ST_SCAN_BOUNDED] = "SELECT key, value FROM evs_kv WHERE ns = ?1 AND key >= ?2 AND key < ?3 "
                      "AND (expires_at IS NULL OR expires_at > ?4) ORDER BY key LIMIT ?5",
  [ST_APPEND] = "INSERT INTO evs_log (stream_id, ts_ms, record) VALUES (?1, ?2, ?3)",
  [ST_STREAM_ID] = "SELECT id FROM evs_log_stream WHERE name = ?1",
  [ST_STREAM_ADD] = "INSERT INTO evs_log_stream (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
  /* The row value comparison is a range on the (stream_id, ts_ms, id) index; the subquery runs
   * once. */
  [ST_QUERY] = "SELECT id, ts_ms, record FROM evs_log "
               "WHERE stream_id = (SELECT id FROM evs_log_stream WHERE name = ?1) "
               "AND ts_ms >= ?2 AND (ts_ms, id) < (?3, ?4) ORDER BY ts_ms DESC, id DESC LIMIT ?5",
  [ST_PURGE] = "DELETE FROM evs_kv WHERE rowid IN (SELECT rowid FROM evs_kv "
               "WHERE expires_at <= ?1 LIMIT ?2)",
  [ST_VERSION] = "SELECT coalesce(max(version), 0) FROM evs_schema_migrations",
  /* A batch's transaction, prepared once rather than parsed at every batch. */
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
};

/* A batch of records is written with multi-row INSERTs of these sizes (greedy), each prepared
 * once: one statement per row cost a VDBE run per row. */
static const size_t multi_rows[] = {32, 16, 8, 4, 2};
#define N_MULTI (sizeof multi_rows / sizeof multi_rows[0])

/* Stream names this connection has seen committed, with their ids: streams are never deleted
 * or renumbered, so an entry stays true. A stream beyond the cache is looked up every time. */
#define STREAM_CACHE 32

typedef struct stream_ent {
  int64_t id;
  char name[EVS_STORE_NAME_MAX + 1];
} stream_ent;

typedef struct sq {
  sqlite3 *db;
  sqlite3_stmt *stmt[ST_COUNT];
  sqlite3_stmt *multi[N_MULTI]; /* INSERT of multi_rows[i] records */
  stream_ent streams[STREAM_CACHE];
  size_t nstreams;
  int nowait;    /* in a nowait append (sq_append_batch) */
  int ckpt_due;  /* the log passed CKPT_PAGES in a nowait commit */
  int restart_due; /* a checkpoint took the whole log: the next write restarts it */
  char errmsg[256];
} sq;

static int map_rc(int rc) {
  switch (rc & 0xff) {
  case SQLITE_OK:
  case SQLITE_ROW:
  case SQLITE_DONE:
    return 0;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return -EBUSY;
  case SQLITE_NOMEM:
    return -ENOMEM;
  case SQLITE_FULL:
    return -ENOSPC;
  case SQLITE_READONLY:
    return -EROFS;
  case SQLITE_PERM:
  case SQLITE_AUTH:
    return -EACCES;
  case SQLITE_TOOBIG:
    return -E2BIG;
  default:
    return -EIO;
  }
}

/* Record the connection's message for last_error and return rc as a negative errno (never 0,
 * whatever rc is: callers rely on a failure staying a failure). */
static int fail(sq *q, int rc, const char *what) {
  int r = map_rc(rc);
  evs__store_format_error(q->errmsg, sizeof(q->errmsg), what, sqlite3_errmsg(q->db), NULL);
  return r < 0 ? r : -EIO;
}

static int stmt(sq *q, enum stmt_id id, sqlite3_stmt **ret) {
  if (!q->stmt[id]) {
    int rc = sqlite3_prepare_v3(q->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                &q->stmt[id], NULL);
    if (rc != SQLITE_OK)
      return fail(q, rc, "sqlite: prepare");
  }
  *ret = q->stmt[id];
  return 0;
}

/* Reset after use so the statement holds no read snapshot and no bound pointers. */
static void done(sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

static int exec(sq *q, const char *sql, const char *what) {
  int rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : fail(q, rc, what);
}

/* ---- open, migrate, close ---------------------------------------------------------------- */

static void sq_close(void *impl) {
  sq *q = impl;

  if (!q)
    return;
  for (int i = 0; i < ST_COUNT; i++)
    sqlite3_finalize(q->stmt[i]);
  for (size_t i = 0; i < N_MULTI; i++)
    sqlite3_finalize(q->multi[i]);
  sqlite3_close_v2(q->db);
  free(q);
}

static int read_version(sq *q) {
  sqlite3_stmt *st = NULL;
  int rc, r;

  if ((r = stmt(q, ST_VERSION, &st)) < 0)
    return r;
  rc = sqlite3_step(st);
  r = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : fail(q, rc, "sqlite: schema version");
  done(st);
  return r;
}

/* Apply at most one pending migration, in one IMMEDIATE transaction with its row in
 * evs_schema_migrations. Returns 1 if one was applied, 0 if the schema is current, or a
 * negative errno with err set. */
static int migrate_step(sq *q, int64_t now_ms, char *err, size_t errlen) {
  const migration *m = NULL;
  sqlite3_stmt *ins = NULL;
  int r, cur, rc;

  /* BEGIN IMMEDIATE waits (busy_timeout) for the write lock, so a second opener reads the
   * version only after the first has committed its step. */
  if ((r = exec(q, "BEGIN IMMEDIATE", "sqlite: begin migration")) < 0)
    goto out;
  r = exec(q, "CREATE TABLE IF NOT EXISTS evs_schema_migrations ("
              "  version INTEGER PRIMARY KEY,"
              "  name TEXT NOT NULL,"
              "  applied_at INTEGER NOT NULL)", /* unix ms */
           "sqlite: create evs_schema_migrations");
  if (r < 0)
    goto rollback;
  if ((r = cur = read_version(q)) < 0)
    goto rollback;
  if (cur > EVS_STORE_SCHEMA_VERSION) {
    snprintf(q->errmsg, sizeof(q->errmsg),
             "sqlite: store schema version %d is newer than this evserver's (%d); "
             "upgrade evserver",
             cur, EVS_STORE_SCHEMA_VERSION);
    r = -ENOTSUP;
    goto rollback;
  }
  if (cur == EVS_STORE_SCHEMA_VERSION) {
    r = exec(q, "COMMIT", "sqlite: commit");
    goto out;
  }

  m = &migrations[cur];
  if ((r = exec(q, m->sql, "sqlite: migration")) < 0)
    goto rollback;
  rc = sqlite3_prepare_v2(q->db,
                          "INSERT INTO evs_schema_migrations (version, name, applied_at) "
                          "VALUES (?1, ?2, ?3)",
                          -1, &ins, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int(ins, 1, m->version);
    sqlite3_bind_text(ins, 2, m->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 3, now_ms);
    rc = sqlite3_step(ins);
  }
  if (rc != SQLITE_DONE) {
    r = fail(q, rc, "sqlite: record migration");
    sqlite3_finalize(ins);
    goto rollback;
  }
  sqlite3_finalize(ins);
  if ((r = exec(q, "COMMIT", "sqlite: commit migration")) < 0)
    goto rollback;
  return 1;

rollback:
  sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
out:
  if (r < 0 && err) {
    if (m)
      snprintf(err, errlen, "%s (migration %d '%s')", q->errmsg, m->version, m->name);
    else
      snprintf(err, errlen, "%s", q->errmsg);
  }
  return r;
}

/* Switch to WAL. Changing the journal mode needs a moment of exclusive access, and SQLite may
 * report SQLITE_BUSY for it without consulting the busy handler when another process is
 * opening the file at the same time, so retry for up to the busy timeout. */
/* SQLite's default checkpoint (PASSIVE once the log holds this many pages) runs inside the
 * commit that passes it: its copying and fsyncs would stall an event loop. A nowait commit
 * leaves it due instead and refuses the next nowait batch, so it runs in a commit that may wait
 * (the caller's thread). So does the write after a checkpoint that took the whole log: it
 * starts the log over and fsyncs its new header before any frame overwrites an old one. (A
 * checkpoint by another connection can still hand that write to a nowait commit.) */
#define CKPT_PAGES 1000

static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages) {
  sq *q = arg;
  int log = 0, done = 0;

  if (pages < CKPT_PAGES || q->nowait) {
    q->ckpt_due = pages >= CKPT_PAGES;
    if (!q->nowait)
      q->restart_due = 0;
    return SQLITE_OK;
  }
  q->ckpt_due = 0;
  q->restart_due = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, &log,
                                             &done) == SQLITE_OK && log > 0 && done == log;
  return SQLITE_OK;
}

static int set_wal(sq *q) {
  sqlite3_stmt *st = NULL;
  int rc = SQLITE_OK;

  for (int waited_ms = 0;; waited_ms += 10) {
    rc = sqlite3_prepare_v2(q->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK)
      rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      const char *mode = (const char *)sqlite3_column_text(st, 0);
      int is_wal = mode && sqlite3_stricmp(mode, "wal") == 0;
      if (!is_wal)
        snprintf(q->errmsg, sizeof(q->errmsg),
                 "sqlite: cannot use WAL mode (journal mode stays '%.16s'); is the state "
                 "directory on a local file system?",
                 mode ? mode : "?");
      sqlite3_finalize(st);
      return is_wal ? 0 : -EIO;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
      break;
    if (waited_ms >= BUSY_TIMEOUT_MS)
      break;
    usleep(10 * 1000);
  }
  return fail(q, rc, "sqlite: journal_mode=WAL");
}

static int sq_open(const evs__store_options *o, int64_t now_ms, void **ret_impl, char *err,
                   size_t errlen) {
  sq *q;
  int fd, r, rc;

  if (!o->path || !*o->path) {
    if (err)
      snprintf(err, errlen, "sqlite: no database path");
    return -EINVAL;
  }
  /* Create the file ourselves so it is 0600 from the first byte: SQLite would create it 0644
   * (less the umask). An existing file keeps the mode its owner gave it. */
  fd = open(o->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    r = -errno;
    if (err)
      snprintf(err, errlen, "sqlite: cannot open '%s': %s", o->path, strerror(-r));
    return r;
  }
  close(fd);

  q = calloc(1, sizeof(*q));
  if (!q) {
    if (err)
      snprintf(err, errlen, "sqlite: out of memory");
    return -ENOMEM;
  }
  /* NOMUTEX: store.c serializes calls on a handle, so SQLite's own mutex is redundant. The
   * VFS writes each WAL commit in one call (store_sqlite_vfs.c); without it, the default. */
  rc = sqlite3_open_v2(o->path, &q->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                       evs__sqlite_vfs_register() == SQLITE_OK ? EVS_SQLITE_VFS : NULL);
  if (rc != SQLITE_OK) {
    r = q->db ? fail(q, rc, "sqlite: open") : -ENOMEM;
    goto fail;
  }
  sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
  if ((r = set_wal(q)) < 0)
    goto fail;
  sqlite3_wal_hook(q->db, wal_hook, q);
  /* trusted_schema=OFF: a tampered file cannot make our statements call SQL functions with
   * side effects through views or triggers. */
  r = exec(q, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA trusted_schema=OFF",
           "sqlite: pragmas");
  if (r < 0)
    goto fail;
  while ((r = migrate_step(q, now_ms, err, errlen)) > 0)
    ;
  if (r < 0) {
    sq_close(q);
    return r;
  }
  *ret_impl = q;
  return 0;

fail:
  if (err)
    snprintf(err, errlen, "%s ('%s')", q->errmsg[0] ? q->errmsg : "sqlite: open", o->path);
  sq_close(q);
  return r;
}

/* ---- key-value --------------------------------------------------------------------------- */

static int sq_purge_one(sq *q, const char *ns, const char *key, size_t key_len, int64_t now_ms) {
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, ST_DEL_EXPIRED, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, key, (int)key_len, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now_ms);
  rc = sqlite3_step(st);
  r = rc == SQLITE_DONE ? 0 : fail(q, rc, "sqlite: delete expired");
  done(st);
  return r;
}

static int sq_get(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms,
                  uint8_t **ret_value, size_t *ret_len) {
  sq *q = impl;
  sqlite3_stmt *st = NULL;
  int r, rc, expired = 0;
  uint8_t *v = NULL;
  size_t n = 0;

  if ((r = stmt(q, ST_GET, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, key, (int)key_len, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    if (sqlite3_column_type(st, 1) != SQLITE_NULL && sqlite3_column_int64(st, 1) <= now_ms) {
      expired = 1;
      r = -ENOENT;
    } else {
      const void *p = sqlite3_column_blob(st, 0);
      n = (size_t)sqlite3_column_bytes(st, 0);
      v = malloc(n + 1);
      if (!v)
        r = -ENOMEM;
      else {
        if (n)
          memcpy(v, p, n);
        v[n] = '\0';
      }
    }
  } else if (rc == SQLITE_DONE)
    r = -ENOENT;
  else
    r = fail(q, rc, "sqlite: get");
  done(st);
  if (expired)
    (void)sq_purge_one(q, ns, key, key_len, now_ms); /* best effort: the row is invisible */
  if (r < 0)
    return r;
  *ret_value = v;
  *ret_len = n;
  return 0;
}

/* A put (ST_PUT: insert or replace) or a create-only put (ST_PUT_NEW: -EEXIST when a live row
 * is there; now_ms decides what is live). */
static int sq_write(sq *q, int which, const char *ns, const char *key, size_t key_len,
                    const uint8_t *v, size_t len, int64_t expires_ms, int64_t now_ms) {
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, which, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, key, (int)key_len, SQLITE_STATIC);
  /* v is never NULL here (store.c passes "" for empty values): a NULL pointer would bind SQL
   * NULL instead of an empty BLOB. */
  sqlite3_bind_blob(st, 3, v, (int)len, SQLITE_STATIC);
  if (expires_ms)
    sqlite3_bind_int64(st, 4, expires_ms);
  else
    sqlite3_bind_null(st, 4);
  if (which == ST_PUT_NEW)
    sqlite3_bind_int64(st, 5, now_ms);
  rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    r = fail(q, rc, which == ST_PUT_NEW ? "sqlite: put_new" : "sqlite: put");
  else if (which == ST_PUT_NEW && sqlite3_changes(q->db) == 0)
    r = -EEXIST;
  done(st);
  return r;
}

static int sq_put(void *impl, const char *ns, const char *key, size_t key_len, const uint8_t *v,
                  size_t len, int64_t expires_ms) {
  return sq_write(impl, ST_PUT, ns, key, key_len, v, len, expires_ms, 0);
}

static int sq_put_new(void *impl, const char *ns, const char *key, size_t key_len,
                      const uint8_t *v, size_t len, int64_t expires_ms, int64_t now_ms) {
  return sq_write(impl, ST_PUT_NEW, ns, key, key_len, v, len, expires_ms, now_ms);
}

static int sq_del(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms) {
  sq *q = impl;
  sqlite3_stmt *st = NULL;
  int r, rc;

  /* Delete whatever is there and report -ENOENT for a row that had already expired, so an
   * expired row goes away here too. */
  if ((r = stmt(q, ST_DEL, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, key, (int)key_len, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    int live = sqlite3_column_type(st, 0) == SQLITE_NULL || sqlite3_column_int64(st, 0) > now_ms;
    r = live ? 0 : -ENOENT;
    /* A RETURNING statement makes its change only when stepped to the end. */
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
      r = fail(q, rc, "sqlite: delete");
  } else if (rc == SQLITE_DONE)
    r = -ENOENT;
  else
    r = fail(q, rc, "sqlite: delete");
  done(st);
  return r;
}

static int sq_scan(void *impl, const evs__store_scan_req *req, evs__store_page *page) {
  sq *q = impl;
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, req->hi ? ST_SCAN_BOUNDED : ST_SCAN, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, req->ns, -1, SQLITE_STATIC);
  /* lo may be empty: bind "" rather than NULL so that it is an empty BLOB, not SQL NULL. */
  sqlite3_bind_blob(st, 2, req->lo_len ? (const void *)req->lo : "", (int)req->lo_len,
                    SQLITE_STATIC);
  if (req->hi)
    sqlite3_bind_blob(st, 3, req->hi, (int)req->hi_len, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, req->now_ms);
  sqlite3_bind_int64(st, 5, (sqlite3_int64)page->max_rows);
  while (page->n < page->max_rows && page->bytes < page->max_bytes) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      break;
    if (rc != SQLITE_ROW) {
      r = fail(q, rc, "sqlite: scan");
      break;
    }
    {
      /* Pointer first, then length, as SQLite asks; key and value are BLOBs, so neither call
       * converts anything. */
      const void *k = sqlite3_column_blob(st, 0), *v;
      size_t klen = (size_t)sqlite3_column_bytes(st, 0), vlen;
      v = sqlite3_column_blob(st, 1);
      vlen = (size_t)sqlite3_column_bytes(st, 1);
      r = evs__store_page_add(page, k, klen, v, vlen, 0, 0);
    }
    if (r < 0)
      break;
  }
  done(st);
  return r;
}

/* ---- streams ----------------------------------------------------------------------------- */

/* Steps a prepared statement that returns no row. */
static int step_done(sq *q, enum stmt_id id, const char *what) {
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, id, &st)) < 0)
    return r;
  rc = sqlite3_step(st);
  r = rc == SQLITE_DONE ? 0 : fail(q, rc, what);
  sqlite3_reset(st);
  return r;
}

static const stream_ent *stream_cached(const sq *q, const char *name) {
  for (size_t i = 0; i < q->nstreams; i++)
    if (strcmp(q->streams[i].name, name) == 0)
      return &q->streams[i];
  return NULL;
}

/* The id of a stream, created if new. Inside the caller's write transaction: an id created
 * here is cached only once that commits (stream_commit), so a rollback leaves no stale entry.
 * *ret_new says the id is not cached yet. */
static int stream_id(sq *q, const char *name, int64_t *ret_id, int *ret_new) {
  const stream_ent *e = stream_cached(q, name);
  sqlite3_stmt *st = NULL;
  int r, rc;

  if (e) {
    *ret_id = e->id;
    *ret_new = 0;
    return 0;
  }
  for (int pass = 0; pass < 2; pass++) {
    if ((r = stmt(q, ST_STREAM_ID, &st)) < 0)
      return r;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *ret_id = sqlite3_column_int64(st, 0);
      *ret_new = 1;
      done(st);
      return 0;
    }
    done(st);
    if (rc != SQLITE_DONE)
      return fail(q, rc, "sqlite: stream id");
    if (pass == 0) {
      if ((r = stmt(q, ST_STREAM_ADD, &st)) < 0)
        return r;
      sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
      rc = sqlite3_step(st);
      done(st);
      if (rc != SQLITE_DONE)
        return fail(q, rc, "sqlite: add stream");
    }
  }
  snprintf(q->errmsg, sizeof(q->errmsg), "sqlite: stream not found after adding it");
  return -EIO;
}

/* After a commit: remember a stream id the transaction looked up. */
static void stream_commit(sq *q, const char *name, int64_t id) {
  if (q->nstreams < STREAM_CACHE && !stream_cached(q, name)) {
    stream_ent *e = &q->streams[q->nstreams++];
    e->id = id;
    snprintf(e->name, sizeof(e->name), "%s", name);
  }
}

static int insert_one(sq *q, int64_t sid, int64_t ts_ms, const char *record, size_t len) {
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, ST_APPEND, &st)) < 0)
    return r;
  sqlite3_bind_int64(st, 1, sid);
  sqlite3_bind_int64(st, 2, ts_ms);
  sqlite3_bind_text(st, 3, record, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(st);
  r = rc == SQLITE_DONE ? 0 : fail(q, rc, "sqlite: append");
  done(st);
  return r;
}

static int sq_append(void *impl, const char *stream, int64_t ts_ms, const char *record,
                     size_t record_len, int64_t *ret_id) {
  sq *q = impl;
  int64_t sid, id;
  int r, fresh;

  if ((r = step_done(q, ST_BEGIN, "sqlite: begin append")) < 0)
    return r;
  if ((r = stream_id(q, stream, &sid, &fresh)) == 0 &&
      (r = insert_one(q, sid, ts_ms, record, record_len)) == 0) {
    /* The connection is ours alone (store.c holds the handle's mutex), so the last rowid is
     * this insert's. */
    id = sqlite3_last_insert_rowid(q->db);
    if ((r = step_done(q, ST_COMMIT, "sqlite: commit append")) == 0) {
      if (fresh)
        stream_commit(q, stream, sid);
      *ret_id = id;
      return 0;
    }
  }
  sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
  return r;
}

/* INSERT of multi_rows[k] records from recs, with their stream ids in sids. */
static int append_multi(sq *q, size_t k, const evs__store_rec *recs, const int64_t *sids) {
  size_t n = multi_rows[k];
  int rc, r;

  if (!q->multi[k]) {
    char sql[64 + 12 * 32];
    size_t len = (size_t)snprintf(sql, sizeof sql,
                                  "INSERT INTO evs_log (stream_id, ts_ms, record) VALUES ");
    for (size_t i = 0; i < n; i++)
      len += (size_t)snprintf(sql + len, sizeof sql - len, "%s(?,?,?)", i ? "," : "");
    rc = sqlite3_prepare_v3(q->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &q->multi[k],
                            NULL);
    if (rc != SQLITE_OK)
      return fail(q, rc, "sqlite: prepare");
  }
  sqlite3_stmt *st = q->multi[k];
  for (size_t i = 0; i < n; i++) {
    int b = 3 * (int)i;
    sqlite3_bind_int64(st, b + 1, sids[i]);
    sqlite3_bind_int64(st, b + 2, recs[i].ts_ms);
    sqlite3_bind_text(st, b + 3, recs[i].json, -1, SQLITE_STATIC);
  }
  rc = sqlite3_step(st);
  r = rc == SQLITE_DONE ? 0 : fail(q, rc, "sqlite: append");
  done(st);
  return r;
}

/* Stream ids of a batch are resolved in chunks of this many records (a batch's records are
 * almost always of one or two streams). */
#define SID_CHUNK 256

static int append_batch(sq *q, const evs__store_rec *recs, size_t n) {
  int64_t sids[SID_CHUNK];
  /* Streams looked up (not cached) in this transaction, to cache once it commits. */
  struct {
    const char *name;
    int64_t id;
  } fresh[STREAM_CACHE];
  size_t nfresh = 0;
  int r;

  if ((r = step_done(q, ST_BEGIN, "sqlite: begin append")) < 0)
    return r;
  for (size_t off = 0; off < n && r == 0; off += SID_CHUNK) {
    size_t m = n - off < SID_CHUNK ? n - off : SID_CHUNK, i = 0;
    const evs__store_rec *c = recs + off;
    for (size_t j = 0; j < m && r == 0; j++) {
      int is_new = 0;
      if (j > 0 && strcmp(c[j].stream, c[j - 1].stream) == 0)
        sids[j] = sids[j - 1];
      else if ((r = stream_id(q, c[j].stream, &sids[j], &is_new)) == 0 && is_new &&
               nfresh < STREAM_CACHE) {
        fresh[nfresh].name = c[j].stream;
        fresh[nfresh++].id = sids[j];
      }
    }
    for (size_t k = 0; k < N_MULTI && r == 0; k++)
      for (; m - i >= multi_rows[k] && r == 0; i += multi_rows[k])
        r = append_multi(q, k, c + i, sids + i);
    for (; i < m && r == 0; i++)
      r = insert_one(q, sids[i], c[i].ts_ms, c[i].json, strlen(c[i].json));
  }
  if (r == 0 && (r = step_done(q, ST_COMMIT, "sqlite: commit append")) == 0) {
    for (size_t i = 0; i < nfresh; i++)
      stream_commit(q, fresh[i].name, fresh[i].id);
    return 0;
  }
  sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
  return r;
}

/* nowait: no busy timeout, so a write lock held by another connection (another worker) fails
 * BEGIN IMMEDIATE at once, and the transaction is rolled back whole on any failure. */
static int sq_append_batch(void *impl, const evs__store_rec *recs, size_t n, int nowait) {
  sq *q = impl;
  int r;

  if (!nowait)
    return append_batch(q, recs, n);
  if (q->ckpt_due || q->restart_due)
    return -EWOULDBLOCK;
  q->nowait = 1;
  sqlite3_busy_timeout(q->db, 0);
  r = append_batch(q, recs, n);
  sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
  q->nowait = 0;
  return r == -EBUSY ? -EWOULDBLOCK : r;
}

static int sq_query(void *impl, const evs__store_query_req *req, evs__store_page *page) {
  sq *q = impl;
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, ST_QUERY, &st)) < 0)
    return r;
  sqlite3_bind_text(st, 1, req->stream, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, req->since_ms);
  sqlite3_bind_int64(st, 3, req->before_ts);
  sqlite3_bind_int64(st, 4, req->before_id);
  sqlite3_bind_int64(st, 5, (sqlite3_int64)page->max_rows);
  while (page->n < page->max_rows && page->bytes < page->max_bytes) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      break;
    if (rc != SQLITE_ROW) {
      r = fail(q, rc, "sqlite: query");
      break;
    }
    {
      const unsigned char *rec = sqlite3_column_text(st, 2);
      size_t rlen = (size_t)sqlite3_column_bytes(st, 2);
      r = evs__store_page_add(page, NULL, 0, rec, rlen, sqlite3_column_int64(st, 0),
                              sqlite3_column_int64(st, 1));
    }
    if (r < 0)
      break;
  }
  done(st);
  return r;
}

/* ---- the rest ---------------------------------------------------------------------------- */

static int sq_purge(void *impl, int64_t now_ms, size_t max_rows) {
  sq *q = impl;
  sqlite3_stmt *st = NULL;
  int r, rc;

  if ((r = stmt(q, ST_PURGE, &st)) < 0)
    return r;
  sqlite3_bind_int64(st, 1, now_ms);
  sqlite3_bind_int64(st, 2, max_rows > INT32_MAX ? INT32_MAX : (sqlite3_int64)max_rows);
  rc = sqlite3_step(st);
  r = rc == SQLITE_DONE ? sqlite3_changes(q->db) : fail(q, rc, "sqlite: purge");
  done(st);
  return r;
}

static int sq_schema_version(void *impl) {
  return read_version(impl);
}

static const char *sq_last_error(void *impl) {
  return ((sq *)impl)->errmsg;
}

const evs__store_backend evs__store_backend_sqlite = {
  .name = "sqlite",
  .open = sq_open,
  .close = sq_close,
  .get = sq_get,
  .put = sq_put,
  .put_new = sq_put_new,
  .del = sq_del,
  .scan = sq_scan,
  .append = sq_append,
  .append_batch = sq_append_batch,
  .query = sq_query,
  .purge = sq_purge,
  .schema_version = sq_schema_version,
  .last_error = sq_last_error,
};
