/*
 * The store: the one interface through which all persistent state goes.
 *
 * Two kinds of data live here. Key-value namespaces hold plugin state (each plugin gets its
 * own namespace through the ABI's store_* calls) with an optional time to live. Append-only
 * streams hold logs such as the transaction log and the audit log: each record gets an id and
 * a unix millisecond timestamp and is read back newest first.
 *
 * Backends: "sqlite" (store_sqlite.c, the embedded default: one WAL-mode file in the state
 * directory, shared by the worker processes of one node) and "postgresql" (store_pg.c, for
 * several nodes sharing one database). Both keep the same data and schema versions (SQLite's
 * log table stores interned stream ids where PostgreSQL's stores names: version 2), apply the
 * same numbered migrations at open and order keys the same way (bytewise), so plugins cannot
 * tell them apart.
 * A third backend is one new file exporting an evs__store_backend, plus one line in the table
 * in store.c.
 *
 * This header is internal to core/ and never installed. The functions are synchronous and
 * may block (disk, network, lock waits): the host calls them off the loop thread and posts the
 * results back as loop callbacks. Library-like: nothing here logs.
 */
#ifndef EVS_CORE_STORE_H
#define EVS_CORE_STORE_H

#include <stddef.h>
#include <stdint.h>

/* Limits, checked in store.c before any backend sees the call. Too long gives -E2BIG; empty,
 * NULL or badly formed gives -EINVAL. */
#define EVS_STORE_NAME_MAX 64               /* bytes, namespace and stream names */
#define EVS_STORE_KEY_MAX 1024              /* bytes, keys and scan prefixes */
#define EVS_STORE_VALUE_MAX (16u << 20)     /* bytes, one value */
#define EVS_STORE_RECORD_MAX (1u << 20)     /* bytes, one stream record */
#define EVS_STORE_TTL_MAX_S (100ull * 365 * 24 * 3600) /* seconds, 100 years */

/* The schema version this build migrates to. Every backend's migration array has exactly this
 * many steps (each backend checks that at compile time). */
#define EVS_STORE_SCHEMA_VERSION 2

typedef struct evs__store evs__store;

typedef struct evs__store_options {
  const char *backend; /* "sqlite" (also when NULL) or "postgresql" */
  const char *path;    /* sqlite: the database file; created with mode 0600 if absent */
  const char *dsn;     /* postgresql: a libpq connection string or URI; may hold a password,
                          so it is never copied into an error message */
} evs__store_options;

/* Open a store and bring its schema up to EVS_STORE_SCHEMA_VERSION. Several processes (and
 * several nodes, for PostgreSQL) may open the same store at once; each migration is applied
 * exactly once. A store whose schema is newer than this build is refused (-ENOTSUP): an older
 * evserver must not write to a schema it does not know.
 *
 * Returns 0 and *ret, or a negative errno with a one-line, password-free message in err (which
 * may be NULL). Open in the process that will use the handle: a handle must not cross fork(). */
int evs__store_open(const evs__store_options *o, evs__store **ret, char *err, size_t errlen);

/* Close a handle; NULL is fine. No call on the handle may be in progress. */
void evs__store_close(evs__store *s);

/* Every function below may be called from any thread; calls on one handle are serialized by
 * a mutex inside it. Callbacks run on the caller's thread with no lock held and no statement
 * open, so a callback may call the store again (for instance delete the key it was given).
 *
 * Names (ns, stream) are 1..EVS_STORE_NAME_MAX bytes of [A-Za-z0-9_.:/-]. Keys are 1..
 * EVS_STORE_KEY_MAX bytes of anything but NUL, compared bytewise. Values are any bytes.
 * Errors: -EINVAL/-E2BIG as above, -EBUSY (lock wait timed out), -ENOSPC, -ENOMEM,
 * -ENOTCONN (PostgreSQL connection lost; the next call reconnects), -EIO (anything else; see
 * evs__store_last_error). */

/* Look a key up. Returns 0 with a malloc'd copy of the value in *ret_value (the caller frees it
 * with free(); it is followed by one NUL byte not counted in *ret_len, so text values can be
 * used as strings) or -ENOENT. An expired row is invisible and is deleted on the way. */
int evs__store_get(evs__store *s, const char *ns, const char *key, uint8_t **ret_value,
                   size_t *ret_len);

/* Insert or replace a key. v may be NULL when len is 0. ttl_s 0: no expiry; otherwise the row
 * disappears ttl_s seconds from now (the writer's clock: nodes sharing a PostgreSQL store are
 * assumed to run NTP). Expired rows are purged lazily: on get and delete, a batch every few
 * dozen puts, and by evs__store_purge_expired. */
int evs__store_put(evs__store *s, const char *ns, const char *key, const uint8_t *v, size_t len,
                   uint64_t ttl_s);

/* Create a key: as evs__store_put when the key is absent or expired, else -EEXIST and nothing
 * written. Atomic: of concurrent creators of one key (any threads, processes, or nodes sharing
 * a PostgreSQL store) exactly one gets 0. */
int evs__store_put_new(evs__store *s, const char *ns, const char *key, const uint8_t *v,
                       size_t len, uint64_t ttl_s);

/* Delete a key. Returns 0, or -ENOENT if it did not exist or had expired. */
int evs__store_delete(evs__store *s, const char *ns, const char *key);

/* Visit the live keys of ns that start with prefix (NULL or "" for all), in ascending bytewise
 * key order. The prefix is matched literally ('%' and '_' are ordinary bytes). key and v are
 * valid during the callback only; v is followed by a NUL byte not counted in len.
 *
 * cb returns 0 to go on, a positive value to stop (the scan then returns 0) or a negative errno
 * to stop and have the scan return it. Rows are read in pages, so the scan is not a snapshot:
 * keys written during it after the current position may or may not be seen. */
typedef int (*evs__store_scan_cb)(void *arg, const char *key, const uint8_t *v, size_t len);
int evs__store_scan(evs__store *s, const char *ns, const char *prefix, evs__store_scan_cb cb,
                    void *arg);

/* Append a record (non-empty UTF-8 text, meant to be one JSON object; not parsed here) to a
 * stream. The store assigns an id (increasing within the store) and a timestamp (the store's
 * clock, unix ms). *ret_id, if ret_id is not NULL, receives the id. */
int evs__store_append(evs__store *s, const char *stream, const char *json_record,
                      int64_t *ret_id);

/* One record of a batch: stream and json_record as for evs__store_append, with the timestamp
 * the caller took when the record was made (evs__store_now_ms). */
typedef struct evs__store_rec {
  const char *stream;
  const char *json;
  int64_t ts_ms;
} evs__store_rec;

/* Append n records in one transaction: all of them or, on failure (a negative errno), none.
 * Records are checked as evs__store_append checks them (evs__store_check_record) first. */
int evs__store_append_batch(evs__store *s, const evs__store_rec *recs, size_t n);
/* The same, written only if that needs no waiting: -EWOULDBLOCK (nothing written) when another
 * connection holds the write lock or the log is due for a checkpoint (the next
 * evs__store_append_batch does it), -EOPNOTSUPP when the backend always waits (PostgreSQL: a
 * network round trip). For a caller on an event loop, which hands those batches to a thread. */
int evs__store_append_batch_try(evs__store *s, const evs__store_rec *recs, size_t n);

/* 0 if evs__store_append would accept this record, else the negative errno it would return. */
int evs__store_check_record(const char *stream, const char *json_record);

/* The store's clock (unix ms): the timestamps it gives appended records. */
int64_t evs__store_now_ms(evs__store *s);

/* Visit up to limit (>= 1) records of a stream with a timestamp >= since_ms, newest first
 * (by timestamp, then id). json is valid during the callback only. cb returns as for scan. */
typedef int (*evs__store_query_cb)(void *arg, int64_t id, int64_t ts_ms, const char *json);
int evs__store_query(evs__store *s, const char *stream, int64_t since_ms, size_t limit,
                     evs__store_query_cb cb, void *arg);

/* Delete up to max_rows expired key-value rows now. Returns how many, or a negative errno.
 * For a periodic host timer; correctness never depends on it. */
int evs__store_purge_expired(evs__store *s, size_t max_rows);

/* The schema version found in the store now (normally EVS_STORE_SCHEMA_VERSION), or a
 * negative errno. */
int evs__store_schema_version(evs__store *s);

/* "sqlite" or "postgresql". Static string. */
const char *evs__store_backend_name(evs__store *s);

/* Copy the backend's message for the most recent failed call on this handle ("" if none) into
 * buf. For the caller's one log line; with several threads it may be another thread's error. */
void evs__store_last_error(evs__store *s, char *buf, size_t len);

/* Tests only: replace the clock (unix ms) used for TTLs and timestamps; NULL restores the real
 * one. */
void evs__store_set_clock_for_tests(evs__store *s, int64_t (*now_ms)(void *arg), void *arg);

/* ---- Backend side ------------------------------------------------------------------------
 * What a backend implements. store.c has already validated every argument, holds the handle's
 * mutex during each call, and passes the clock's "now" in; backends never read a clock. Keys
 * are passed as (bytes, length) and stored as BLOB/bytea so that order is bytewise everywhere.
 * Every function returns 0 (or a count) or a negative errno, and records a message for
 * last_error on failure. */

/* One row of a page: a key-value pair (scan) or a record (query). One allocation holds the row
 * and its NUL-terminated key and data. */
typedef struct evs__store_row {
  int64_t id, ts_ms;  /* query only */
  char *key;          /* scan only, NUL-terminated */
  uint8_t *data;      /* value or record, followed by a NUL byte */
  size_t len;
} evs__store_row;

/* A page of rows, filled by a backend with evs__store_page_add and freed by store.c. A backend
 * stops adding rows once n == max_rows or bytes >= max_bytes (it always adds at least one row
 * if there is one), which bounds the memory one page takes. */
typedef struct evs__store_page {
  evs__store_row **rows;
  size_t n, cap;
  size_t bytes;        /* sum of len */
  size_t max_rows;
  size_t max_bytes;
} evs__store_page;

int evs__store_page_add(evs__store_page *p, const void *key, size_t key_len, const void *data,
                        size_t len, int64_t id, int64_t ts_ms);

/* A scan page request: live rows of ns with lo <= key (< hi if hi is not NULL), by key. */
typedef struct evs__store_scan_req {
  const char *ns;
  const uint8_t *lo;
  size_t lo_len;
  const uint8_t *hi;  /* NULL: no upper bound */
  size_t hi_len;
  int64_t now_ms;
} evs__store_scan_req;

/* A query page request: records of stream with ts_ms >= since_ms and (ts_ms, id) <
 * (before_ts, before_id), by (ts_ms, id) descending. */
typedef struct evs__store_query_req {
  const char *stream;
  int64_t since_ms;
  int64_t before_ts, before_id;
} evs__store_query_req;

typedef struct evs__store_backend {
  const char *name;
  /* Connect, configure and migrate. *ret_impl only on success; err as for evs__store_open. */
  int (*open)(const evs__store_options *o, int64_t now_ms, void **ret_impl, char *err,
              size_t errlen);
  void (*close)(void *impl);
  int (*get)(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms,
             uint8_t **ret_value, size_t *ret_len);
  /* expires_ms 0: never. */
  int (*put)(void *impl, const char *ns, const char *key, size_t key_len, const uint8_t *v,
             size_t len, int64_t expires_ms);
  /* 0 if it wrote (the key was absent or expired at now_ms), -EEXIST if a live row is there. */
  int (*put_new)(void *impl, const char *ns, const char *key, size_t key_len, const uint8_t *v,
                 size_t len, int64_t expires_ms, int64_t now_ms);
  int (*del)(void *impl, const char *ns, const char *key, size_t key_len, int64_t now_ms);
  int (*scan)(void *impl, const evs__store_scan_req *req, evs__store_page *page);
  int (*append)(void *impl, const char *stream, int64_t ts_ms, const char *record,
                size_t record_len, int64_t *ret_id);
  /* All n appends in one transaction, or none. nowait: -EWOULDBLOCK rather than wait for a
   * lock or a checkpoint, -EOPNOTSUPP if the backend cannot (evs__store_append_batch_try). */
  int (*append_batch)(void *impl, const evs__store_rec *recs, size_t n, int nowait);
  int (*query)(void *impl, const evs__store_query_req *req, evs__store_page *page);
  int (*purge)(void *impl, int64_t now_ms, size_t max_rows);
  int (*schema_version)(void *impl);
  const char *(*last_error)(void *impl); /* "" if none; valid until the next call */
} evs__store_backend;

extern const evs__store_backend evs__store_backend_sqlite;
extern const evs__store_backend evs__store_backend_pg;

/* Shared helpers for backends. */

/* Write "<prefix>: <detail>" into buf, with newlines and tabs flattened to spaces and every
 * occurrence of secret (if non-NULL and non-empty) replaced by "***". */
void evs__store_format_error(char *buf, size_t len, const char *prefix, const char *detail,
                             const char *secret);

#endif
