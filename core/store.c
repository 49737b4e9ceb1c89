/*
 * The store's front: argument checks, backend selection, the clock, the per-handle mutex and
 * paging for scan and query. See store.h for the contract.
 *
 * Every limit in store.h is enforced here, once, so the backends (store_sqlite.c, store_pg.c)
 * may assume well-formed arguments and behave alike. Scans and queries are read a page at a
 * time (bounded in rows and bytes) and the callbacks run between pages, with the mutex
 * released and no statement open: memory stays bounded whatever the data, a slow callback
 * never holds a database snapshot open, and callbacks may call back into the store.
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Page bounds: at most this many rows, and rows are added until this many bytes are reached. */
#define PAGE_ROWS 256
#define PAGE_BYTES (4u << 20)
/* Purge a batch of expired rows every this many puts, so rows that are never read again do
 * not pile up even without a host timer. */
#define PURGE_EVERY_PUTS 64
#define PURGE_BATCH 256

struct evs__store {
  const evs__store_backend *backend;
  void *impl;
  pthread_mutex_t lock;
  unsigned puts;
  int64_t (*now_ms)(void *arg);
  void *now_arg;
};

static const evs__store_backend *const backends[] = {
  &evs__store_backend_sqlite,
  &evs__store_backend_pg,
};

static int64_t real_now_ms(void *arg) {
  struct timespec ts;
  (void)arg;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(evs__store *s) {
  return s->now_ms(s->now_arg);
}

/* ---- argument checks --------------------------------------------------------------------- */

static int check_name(const char *name) {
  size_t n;

  if (!name || !*name)
    return -EINVAL;
  for (n = 0; name[n]; n++) {
    char c = name[n];
    if (n >= EVS_STORE_NAME_MAX)
      return -E2BIG;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == ':' || c == '/' || c == '-'))
      return -EINVAL;
  }
  return 0;
}

/* Returns the key's length, or a negative errno. */
static long check_key(const char *key, int allow_empty) {
  size_t n;

  if (!key)
    return allow_empty ? 0 : -EINVAL;
  n = strnlen(key, EVS_STORE_KEY_MAX + 1);
  if (n > EVS_STORE_KEY_MAX)
    return -E2BIG;
  if (n == 0 && !allow_empty)
    return -EINVAL;
  return (long)n;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), so that both backends
 * accept exactly the same records: PostgreSQL rejects invalid text, SQLite would not. */
static int valid_utf8(const unsigned char *p, size_t n) {
  size_t i = 0;

  while (i < n) {
    unsigned c = p[i], lo = 0x80, hi = 0xbf;
    size_t need;
    uint64_t w;

    /* Eight ASCII bytes at a time: records are JSON, nearly all ASCII (a byte loop was a
     * visible part of a transaction record's cost, checked when queued and when written). */
    if (n - i >= 8 && (memcpy(&w, p + i, 8), (w & 0x8080808080808080ull) == 0)) {
      i += 8;
      continue;
    }
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf)
      need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c == 0xe0)
        lo = 0xa0;
      else if (c == 0xed)
        hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c == 0xf0)
        lo = 0x90;
      else if (c == 0xf4)
        hi = 0x8f;
    } else
      return 0;
    if (n - i - 1 < need)
      return 0;
    if (p[i + 1] < lo || p[i + 1] > hi)
      return 0;
    for (size_t k = 2; k <= need; k++)
      if ((p[i + k] & 0xc0) != 0x80)
        return 0;
    i += need + 1;
  }
  return 1;
}

/* ---- pages ------------------------------------------------------------------------------- */

int evs__store_page_add(evs__store_page *p, const void *key, size_t key_len, const void *data,
                        size_t len, int64_t id, int64_t ts_ms) {
  evs__store_row *r;
  char *mem;

  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    evs__store_row **rows = realloc(p->rows, cap * sizeof(*rows));
    if (!rows)
      return -ENOMEM;
    p->rows = rows;
    p->cap = cap;
  }
  mem = malloc(sizeof(*r) + key_len + 1 + len + 1);
  if (!mem)
    return -ENOMEM;
  r = (evs__store_row *)mem;
  r->id = id;
  r->ts_ms = ts_ms;
  r->key = mem + sizeof(*r);
  if (key_len)
    memcpy(r->key, key, key_len);
  r->key[key_len] = '\0';
  r->data = (uint8_t *)r->key + key_len + 1;
  if (len)
    memcpy(r->data, data, len);
  r->data[len] = '\0';
  r->len = len;
  p->rows[p->n++] = r;
  p->bytes += len;
  return 0;
}

static void page_clear(evs__store_page *p) {
  for (size_t i = 0; i < p->n; i++)
    free(p->rows[i]);
  p->n = 0;
  p->bytes = 0;
}

static void page_done(evs__store_page *p) {
  page_clear(p);
  free(p->rows);
  p->rows = NULL;
  p->cap = 0;
}

/* True when the backend may have more rows after this page. */
static int page_full(const evs__store_page *p) {
  return p->n > 0 && (p->n >= p->max_rows || p->bytes >= p->max_bytes);
}

/* ---- open and close ---------------------------------------------------------------------- */

int evs__store_open(const evs__store_options *o, evs__store **ret, char *err, size_t errlen) {
  const evs__store_backend *b = NULL;
  const char *name;
  evs__store *s;
  int r;

  if (err && errlen)
    err[0] = '\0';
  if (!o || !ret) {
    if (err)
      snprintf(err, errlen, "store: no options");
    return -EINVAL;
  }
  name = o->backend ? o->backend : "sqlite";
  for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
    if (strcmp(backends[i]->name, name) == 0)
      b = backends[i];
  if (!b) {
    if (err)
      snprintf(err, errlen, "store: unknown backend '%.32s' (expected sqlite or postgresql)",
               name);
    return -EINVAL;
  }

  s = calloc(1, sizeof(*s));
  if (!s) {
    if (err)
      snprintf(err, errlen, "store: out of memory");
    return -ENOMEM;
  }
  if (pthread_mutex_init(&s->lock, NULL) != 0) {
    free(s);
    if (err)
      snprintf(err, errlen, "store: cannot create mutex");
    return -ENOMEM;
  }
  s->backend = b;
  s->now_ms = real_now_ms;

  r = b->open(o, now_ms(s), &s->impl, err, errlen);
  if (r < 0) {
    pthread_mutex_destroy(&s->lock);
    free(s);
    return r;
  }
  *ret = s;
  return 0;
}

void evs__store_close(evs__store *s) {
  if (!s)
    return;
  if (s->impl)
    s->backend->close(s->impl);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

/* ---- key-value --------------------------------------------------------------------------- */

int evs__store_get(evs__store *s, const char *ns, const char *key, uint8_t **ret_value,
                   size_t *ret_len) {
  long klen;
  int r;

  if (!s || !ret_value || !ret_len)
    return -EINVAL;
  if ((r = check_name(ns)) < 0)
    return r;
  if ((klen = check_key(key, 0)) < 0)
    return (int)klen;
  pthread_mutex_lock(&s->lock);
  r = s->backend->get(s->impl, ns, key, (size_t)klen, now_ms(s), ret_value, ret_len);
  pthread_mutex_unlock(&s->lock);
  return r;
}

static int put_common(evs__store *s, const char *ns, const char *key, const uint8_t *v,
                      size_t len, uint64_t ttl_s, int create_only) {
  int64_t now, expires = 0;
  long klen;
  int r;

  if (!s || (!v && len))
    return -EINVAL;
  if ((r = check_name(ns)) < 0)
    return r;
  if ((klen = check_key(key, 0)) < 0)
    return (int)klen;
  if (len > EVS_STORE_VALUE_MAX)
    return -E2BIG;
  if (ttl_s > EVS_STORE_TTL_MAX_S)
    return -EINVAL;

  pthread_mutex_lock(&s->lock);
  now = now_ms(s);
  if (ttl_s)
    expires = now + (int64_t)ttl_s * 1000;
  if (create_only)
    r = s->backend->put_new(s->impl, ns, key, (size_t)klen, v ? v : (const uint8_t *)"", len,
                            expires, now);
  else
    r = s->backend->put(s->impl, ns, key, (size_t)klen, v ? v : (const uint8_t *)"", len,
                        expires);
  /* Opportunistic and best effort: a failed purge must not fail the put that triggered it. */
  if (r == 0 && ++s->puts % PURGE_EVERY_PUTS == 0)
    (void)s->backend->purge(s->impl, now, PURGE_BATCH);
  pthread_mutex_unlock(&s->lock);
  return r;
}

int evs__store_put(evs__store *s, const char *ns, const char *key, const uint8_t *v, size_t len,
                   uint64_t ttl_s) {
  return put_common(s, ns, key, v, len, ttl_s, 0);
}

int evs__store_put_new(evs__store *s, const char *ns, const char *key, const uint8_t *v,
                       size_t len, uint64_t ttl_s) {
  return put_common(s, ns, key, v, len, ttl_s, 1);
}

int evs__store_delete(evs__store *s, const char *ns, const char *key) {
  long klen;
  int r;

  if (!s)
    return -EINVAL;
  if ((r = check_name(ns)) < 0)
    return r;
  if ((klen = check_key(key, 0)) < 0)
    return (int)klen;
  pthread_mutex_lock(&s->lock);
  r = s->backend->del(s->impl, ns, key, (size_t)klen, now_ms(s));
  pthread_mutex_unlock(&s->lock);
  return r;
}

/* The smallest byte string greater than every string starting with prefix: drop trailing 0xff
 * bytes, then increment the last byte. Returns its length; 0 means there is none (the prefix is
 * empty or all 0xff) and the scan has no upper bound. */
static size_t prefix_successor(const uint8_t *prefix, size_t n, uint8_t *out) {
  while (n > 0 && prefix[n - 1] == 0xff)
    n--;
  if (n == 0)
    return 0;
  memcpy(out, prefix, n);
  out[n - 1]++;
  return n;
}

int evs__store_scan(evs__store *s, const char *ns, const char *prefix, evs__store_scan_cb cb,
                    void *arg) {
  /* lo is the prefix at first, then the last key seen followed by a 0x00 byte: since keys
   * hold no NUL, that is the first key after it. */
  uint8_t lo[EVS_STORE_KEY_MAX + 1], hi[EVS_STORE_KEY_MAX];
  evs__store_page page = { .max_rows = PAGE_ROWS, .max_bytes = PAGE_BYTES };
  evs__store_scan_req req = { .ns = ns, .lo = lo };
  long plen;
  int r;

  if (!s || !cb)
    return -EINVAL;
  if ((r = check_name(ns)) < 0)
    return r;
  if ((plen = check_key(prefix, 1)) < 0)
    return (int)plen;
  memcpy(lo, prefix ? prefix : "", (size_t)plen);
  req.lo_len = (size_t)plen;
  req.hi_len = prefix_successor(lo, (size_t)plen, hi);
  req.hi = req.hi_len ? hi : NULL;

  for (;;) {
    pthread_mutex_lock(&s->lock);
    req.now_ms = now_ms(s);
    r = s->backend->scan(s->impl, &req, &page);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
      break;
    for (size_t i = 0; i < page.n && r == 0; i++) {
      evs__store_row *row = page.rows[i];
      r = cb(arg, row->key, row->data, row->len);
    }
    if (r != 0 || !page_full(&page)) {
      if (r > 0)
        r = 0;
      break;
    }
    {
      evs__store_row *last = page.rows[page.n - 1];
      size_t klen = strlen(last->key);
      memcpy(lo, last->key, klen);
      lo[klen] = 0x00;
      req.lo_len = klen + 1;
    }
    page_clear(&page);
  }
  page_done(&page);
  return r;
}

/* ---- streams ----------------------------------------------------------------------------- */

int evs__store_check_record(const char *stream, const char *json_record) {
  size_t n;
  int r;

  if (!json_record)
    return -EINVAL;
  if ((r = check_name(stream)) < 0)
    return r;
  n = strnlen(json_record, EVS_STORE_RECORD_MAX + 1);
  if (n > EVS_STORE_RECORD_MAX)
    return -E2BIG;
  if (n == 0 || !valid_utf8((const unsigned char *)json_record, n))
    return -EINVAL;
  return 0;
}

int64_t evs__store_now_ms(evs__store *s) {
  return now_ms(s);
}

static int append_batch(evs__store *s, const evs__store_rec *recs, size_t n, int nowait) {
  int r;

  if (!s || (n && !recs))
    return -EINVAL;
  for (size_t i = 0; i < n; i++)
    if ((r = evs__store_check_record(recs[i].stream, recs[i].json)) < 0)
      return r;
  if (n == 0)
    return 0;
  pthread_mutex_lock(&s->lock);
  r = s->backend->append_batch(s->impl, recs, n, nowait);
  pthread_mutex_unlock(&s->lock);
  return r;
}

int evs__store_append_batch(evs__store *s, const evs__store_rec *recs, size_t n) {
  return append_batch(s, recs, n, 0);
}

int evs__store_append_batch_try(evs__store *s, const evs__store_rec *recs, size_t n) {
  return append_batch(s, recs, n, 1);
}

int evs__store_append(evs__store *s, const char *stream, const char *json_record,
                      int64_t *ret_id) {
  int64_t id;
  size_t n;
  int r;

  if (!s)
    return -EINVAL;
  if ((r = evs__store_check_record(stream, json_record)) < 0)
    return r;
  n = strlen(json_record);
  pthread_mutex_lock(&s->lock);
  r = s->backend->append(s->impl, stream, now_ms(s), json_record, n, &id);
  pthread_mutex_unlock(&s->lock);
  if (r == 0 && ret_id)
    *ret_id = id;
  return r;
}

int evs__store_query(evs__store *s, const char *stream, int64_t since_ms, size_t limit,
                     evs__store_query_cb cb, void *arg) {
  evs__store_page page = { .max_bytes = PAGE_BYTES };
  evs__store_query_req req = {
    .stream = stream, .since_ms = since_ms, .before_ts = INT64_MAX, .before_id = INT64_MAX,
  };
  int r;

  if (!s || !cb || limit == 0)
    return -EINVAL;
  if ((r = check_name(stream)) < 0)
    return r;

  for (;;) {
    page.max_rows = limit < PAGE_ROWS ? limit : PAGE_ROWS;
    pthread_mutex_lock(&s->lock);
    r = s->backend->query(s->impl, &req, &page);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
      break;
    for (size_t i = 0; i < page.n && r == 0; i++) {
      evs__store_row *row = page.rows[i];
      r = cb(arg, row->id, row->ts_ms, (const char *)row->data);
    }
    limit -= page.n;
    if (r != 0 || limit == 0 || !page_full(&page)) {
      if (r > 0)
        r = 0;
      break;
    }
    req.before_ts = page.rows[page.n - 1]->ts_ms;
    req.before_id = page.rows[page.n - 1]->id;
    page_clear(&page);
  }
  page_done(&page);
  return r;
}

/* ---- the rest ---------------------------------------------------------------------------- */

int evs__store_purge_expired(evs__store *s, size_t max_rows) {
  int r;

  if (!s || max_rows == 0)
    return -EINVAL;
  pthread_mutex_lock(&s->lock);
  r = s->backend->purge(s->impl, now_ms(s), max_rows);
  pthread_mutex_unlock(&s->lock);
  return r;
}

int evs__store_schema_version(evs__store *s) {
  int r;

  if (!s)
    return -EINVAL;
  pthread_mutex_lock(&s->lock);
  r = s->backend->schema_version(s->impl);
  pthread_mutex_unlock(&s->lock);
  return r;
}

const char *evs__store_backend_name(evs__store *s) {
  return s ? s->backend->name : "";
}

void evs__store_last_error(evs__store *s, char *buf, size_t len) {
  if (!buf || !len)
    return;
  if (!s) {
    buf[0] = '\0';
    return;
  }
  pthread_mutex_lock(&s->lock);
  snprintf(buf, len, "%s", s->backend->last_error(s->impl));
  pthread_mutex_unlock(&s->lock);
}

void evs__store_set_clock_for_tests(evs__store *s, int64_t (*now)(void *arg), void *arg) {
  if (!s)
    return;
  pthread_mutex_lock(&s->lock);
  s->now_ms = now ? now : real_now_ms;
  s->now_arg = now ? arg : NULL;
  pthread_mutex_unlock(&s->lock);
}

void evs__store_format_error(char *buf, size_t len, const char *prefix, const char *detail,
                             const char *secret) {
  size_t slen = secret ? strlen(secret) : 0, o = 0;
  int n;

  if (!buf || !len)
    return;
  n = snprintf(buf, len, "%s: ", prefix);
  if (n < 0)
    n = 0;
  o = (size_t)n < len ? (size_t)n : len - 1;
  for (const char *p = detail ? detail : ""; *p && o + 1 < len;) {
    if (slen && strncmp(p, secret, slen) == 0) {
      for (const char *m = "***"; *m && o + 1 < len; m++)
        buf[o++] = *m;
      p += slen;
      continue;
    }
    buf[o++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
    p++;
  }
  /* Messages from libpq and SQLite often end in a newline: drop the trailing blank. */
  while (o > 0 && buf[o - 1] == ' ')
    o--;
  buf[o] = '\0';
}
