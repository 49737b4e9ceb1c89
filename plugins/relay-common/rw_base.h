/*
 * rw_base: the skeleton the four body rewriters (json, xml, form, multipart) share, so that each
 * format's .c keeps only its grammar. A rewriter embeds an evs__rw_base first and gives a
 * class (its finish and clear; its run goes to evs__rw_feed); the base holds the callbacks, the
 * error that poisons the rewriter and where it was found, the pass-through span of the current
 * buffer, the captured value and the memory accounting, and implements the
 * feed/finish/free/transform plumbing that used to be written four times. Internal to
 * relay-common (rewriter.h is the interface).
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_RW_BASE_H
#define EVS_RELAY_RW_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rewriter.h"

struct evs__rw_base;

/* A growable byte buffer kept NUL-terminated (a captured value, a name, a header block). */
typedef struct evs__rw_buf {
  char *p;
  size_t len, cap;
} evs__rw_buf;

/* A format's parser: parses p[0..e) of the current buffer (the base has set pass to its
 * start): 0, or an error with *ret_p where it was found. Output before a selected value goes
 * through evs__rw_capture_begin; the rest of the buffer is emitted by the base unless capturing.
 * Given to evs__rw_feed directly (EVS__RW_DEFINE_TYPED), so that it is inlined there: through a
 * pointer, a feed cost 23 instructions more (callgrind, a body fed byte by byte). */
typedef int (*evs__rw_run_fn)(struct evs__rw_base *b, const char *p, const char *e,
                              const char **ret_p);

/* What a format gives the base. */
typedef struct evs__rw_class {
  /* The end of the body: 0 or an error (reported at the body's length). */
  int (*finish)(struct evs__rw_base *b);
  /* Frees what the format allocated besides the base's value buffer (not the rewriter). */
  void (*clear)(struct evs__rw_base *b);
  /* How val grows (evs__rw_buf_grow): from val_first bytes, doubling; with val_clamp, never
   * past val_max + 1 (so that a 25 MiB cap does not allocate 32 MiB). Each format keeps the
   * policy it always had. */
  size_t val_first;
  bool val_clamp;
  /* Optional: back to the state the format's new left it in, keeping what its buffers grew to
   * (the base has reset its own part). NULL: the format cannot be reset. */
  void (*reset)(struct evs__rw_base *b);
} evs__rw_class;

typedef struct evs__rw_base {
  const evs__rw_class *cls;
  evs__rw_emit_fn emit;
  evs__rw_transform_fn transform;
  void *ud;
  int err;        /* nonzero: poisoned, returned by every later call */
  bool capturing; /* a selected value is being held in val; nothing is emitted */
  uint64_t err_off, off; /* off: body offset of the current buffer's first byte */
  const char *pass; /* start of not yet emitted pass-through bytes in the current buffer */
  evs__rw_buf val;
  size_t val_max; /* bytes of val; more is EVS__RW_E_TOOBIG */
  evs__rw_mem mem;
} evs__rw_base;

/* Allocates a zeroed rewriter of size bytes whose first member is an evs__rw_base, copies the
 * caller's options (a struct starting with its size_t size, which may be older and shorter, or
 * NULL) to the o_size bytes at offset o_off and sets their size, and accounts size bytes. NULL
 * on -ENOMEM. */
void *evs__rw_base_new(size_t size, size_t o_off, size_t o_size, const void *opts,
                       const evs__rw_class *cls, evs__rw_emit_fn emit,
                       evs__rw_transform_fn transform, void *ud);

/* The defaults of the tree formats (JSON, XML): depth 256, value 1 MiB, keys 100000 with at most
 * UINT32_MAX / 4 (the hash table holds 32-bit entries). */
void evs__rw_tree_limits(unsigned *max_depth, size_t *max_value, size_t *max_keys);

/* The operations every format's table and typed functions share (impl is the rewriter). */
int evs__rw_base_finish(void *impl);
void evs__rw_base_free(void *impl); /* accepts NULL */
uint64_t evs__rw_base_error_offset(const void *impl);
size_t evs__rw_base_mem_high_water(const void *impl);
/* The ops' reset (rewriter.h): 0, or -EOPNOTSUPP for a format without a class reset. */
int evs__rw_base_reset(void *impl);

/* Records r (an error) found at body offset off and returns it. */
static inline int evs__rw_fail(evs__rw_base *b, int r, uint64_t off) {
  b->err = r;
  b->err_off = off;
  return r;
}

static inline int evs__rw_emit(evs__rw_base *b, const char *p, size_t n) {
  return n ? b->emit(b->ud, p, n) : 0;
}

/* Feeds buf[0..len) to the format's run: a poisoned rewriter returns its error; the bytes run
 * left as pass-through are emitted unless a value is being captured; an error is recorded at
 * its body offset. 0 or a negative error. */
static inline int evs__rw_feed(evs__rw_base *b, const char *buf, size_t len, evs__rw_run_fn run) {
  const char *p = buf;
  int r;
  if (b->err) return b->err;
  if (len == 0) return 0;
  b->pass = buf;
  r = run(b, buf, buf + len, &p);
  if (r < 0) return evs__rw_fail(b, r, b->off + (uint64_t)(p - buf));
  if (!b->capturing && (r = evs__rw_emit(b, b->pass, (size_t)(buf + len - b->pass))) < 0)
    return evs__rw_fail(b, r, b->off + len);
  b->off += len;
  return 0;
}

/* Grows buf to hold need bytes: the capacity doubles from first (or from its current size),
 * and stays at most clamp when clamp is nonzero. 0 or -ENOMEM (buf unchanged). */
int evs__rw_buf_grow(evs__rw_mem *m, evs__rw_buf *buf, size_t need, size_t first, size_t clamp);

/* Appends s[0..n) to buf, which has room for it and a NUL. */
static inline void evs__rw_buf_put(evs__rw_buf *buf, const char *s, size_t n) {
  if (n) memcpy(buf->p + buf->len, s, n);
  buf->len += n;
  buf->p[buf->len] = 0;
}

/* Appends s[0..n) to buf, kept NUL-terminated, failing with err past max bytes (growing it by
 * evs__rw_buf_grow). 0, err or -ENOMEM. Inline: it runs on every piece of a name. */
static inline int evs__rw_buf_append(evs__rw_mem *m, evs__rw_buf *buf, size_t max, int err,
                                     size_t first, size_t clamp, const char *s, size_t n) {
  if (n > max - buf->len) return err;
  if (buf->len + n + 1 > buf->cap) {
    int r = evs__rw_buf_grow(m, buf, buf->len + n + 1, first, clamp);
    if (r < 0) return r;
  }
  evs__rw_buf_put(buf, s, n);
  return 0;
}

/* Grows val to need bytes by the class's policy. 0 or -ENOMEM. */
int evs__rw_val_grow(evs__rw_base *b, size_t need);

/* Appends to the captured value (EVS__RW_E_TOOBIG past val_max). Inline, and the class read
 * only when growing: it runs on every piece of a selected value. */
static inline int evs__rw_val_append(evs__rw_base *b, const char *s, size_t n) {
  if (n > b->val_max - b->val.len) return EVS__RW_E_TOOBIG;
  if (b->val.len + n + 1 > b->val.cap) {
    int r = evs__rw_val_grow(b, b->val.len + n + 1);
    if (r < 0) return r;
  }
  evs__rw_buf_put(&b->val, s, n);
  return 0;
}

/* A selected value starts at p in the current buffer: the pass-through bytes before it are
 * emitted and val is emptied, still NUL-terminated so that an empty value is handed over as a
 * string. 0 or a negative error. */
static inline int evs__rw_capture_begin(evs__rw_base *b, const char *p) {
  int r = evs__rw_emit(b, b->pass, (size_t)(p - b->pass));
  b->capturing = true;
  b->val.len = 0;
  return r < 0 ? r : evs__rw_val_append(b, "", 0);
}

/* Writes a replacement: the base emits it verbatim; the form rewriter percent-encodes it. */
typedef int (*evs__rw_put_fn)(evs__rw_base *b, const char *s, size_t n);


/* The captured value ends; pass-through resumes at resume (NULL at the end of the body). The
 * value goes to the transform as type; what it returns is written with put (NULL: verbatim).
 * A deferred value writes nothing: the caller has recorded a hole at its output position.
 * Returns 0, a negative error, or a positive value the transform returned other than
 * EVS__RW_DEFER (as each format always passed it on). */
static inline int evs__rw_capture_end(evs__rw_base *b, evs__rw_type type, const char *resume,
                                      evs__rw_put_fn put) {
  const char *out = NULL;
  size_t out_len = 0;
  int r;
  b->capturing = false;
  b->pass = resume;
  r = b->transform(b->ud, type, b->val.p, b->val.len, &out, &out_len);
  explicit_bzero(b->val.p, b->val.len); /* a plaintext value: the transform has taken its copy */
  if (r == EVS__RW_DEFER) return 0;
  if (r == 0) r = put ? put(b, out, out_len) : evs__rw_emit(b, out, out_len);
  return r;
}

/* The plain field names the form and multipart rewriters select, copied into one allocation. */
typedef struct evs__rw_names {
  char **v;
  size_t *len, n;
} evs__rw_names;

/* Copies names[0..n) (n > 0, none NULL) into set and accounts it in m. With name_buf, room for
 * the longest name and a NUL follows the copies: *ret_buf points to it and *ret_max is that
 * longest length (the form rewriter reads a name there; a longer one cannot be selected).
 * 0 or -ENOMEM (set unchanged). */
int evs__rw_names_copy(evs__rw_names *set, evs__rw_mem *m, const char *const *names, size_t n,
                       bool name_buf, char **ret_buf, size_t *ret_max);
void evs__rw_names_clear(evs__rw_names *set);

static inline bool evs__rw_names_has(const evs__rw_names *set, const char *s, size_t n) {
  for (size_t i = 0; i < set->n; i++)
    if (set->len[i] == n && memcmp(set->v[i], s, n) == 0) return true;
  return false;
}

/* ---- the stack of open containers (JSON objects and arrays, XML elements) ------------------ */

/* *fr holds *cap frames of fsize bytes and *st as many runs of nw jsonpath state words. */
int evs__rw_frames_grow(evs__rw_mem *m, void **fr, uint64_t **st, unsigned *cap, unsigned depth,
                        size_t fsize, size_t nw);
/* Room for frame depth: EVS__RW_E_DEPTH at max_depth, else 0 or -ENOMEM (then *fr may have
 * moved and *st not: store *fr whatever the result). */
static inline int evs__rw_frames_reserve(evs__rw_mem *m, void **fr, uint64_t **st, unsigned *cap,
                                         unsigned depth, unsigned max_depth, size_t fsize,
                                         size_t nw) {
  if (depth >= max_depth) return EVS__RW_E_DEPTH;
  return depth == *cap ? evs__rw_frames_grow(m, fr, st, cap, depth, fsize, nw) : 0;
}

/* ---- names of the open containers (JSON: duplicate member names; XML: sibling indices) ---- */

/* A 64-bit hash of a name, eight bytes at a time. Unkeyed: a collision can only make the request
 * that contains it fail (json_rewrite.h, xml_rewrite.h). */
static inline uint64_t evs__rw_name_hash(const char *s, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xff51afd7ed558ccdULL);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, s + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  if (i < n) {
    uint64_t w = 0;
    for (unsigned sh = 0; i < n; i++, sh += 8) w |= (uint64_t)(unsigned char)s[i] << sh;
    h = (h ^ w) * 0x100000001b3ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

/* The names of all open containers, innermost last (a container records where its own start and
 * drops them when it closes), each an entry of el bytes starting with its hash, found through an
 * open-addressing table of entry index + 1 (0 empty). Slots of closed containers go stale rather
 * than being cleared; a rebuild drops them. */
typedef struct evs__rw_keys {
  void *ent;
  size_t len, cap;
  uint32_t *tab;
  size_t tab_cap, tab_used;
} evs__rw_keys;

#define EVS__RW_KEYS_NONE SIZE_MAX

/* The entry among ent[base..len) whose hash is h, or EVS__RW_KEYS_NONE with *ret_slot the free
 * slot where the probe ended (the one evs__rw_keys_put takes). A slot may point past len or
 * before base (stale, or an enclosing container's): only a live entry of this container counts. */
static inline size_t evs__rw_keys_find(const evs__rw_keys *k, size_t el, uint64_t h, size_t base,
                                       size_t *ret_slot) {
  size_t mask = k->tab_cap - 1, slot;
  *ret_slot = 0;
  if (!k->tab_cap) return EVS__RW_KEYS_NONE;
  for (slot = h & mask; k->tab[slot]; slot = (slot + 1) & mask) {
    size_t e = k->tab[slot] - 1;
    uint64_t eh;
    if (e < base || e >= k->len) continue;
    memcpy(&eh, (const char *)k->ent + e * el, sizeof eh);
    if (eh == h) return e;
  }
  *ret_slot = slot;
  return EVS__RW_KEYS_NONE;
}

/* The first free slot on h's probe path (the table has one: it is at most half full). */
static inline size_t evs__rw_keys_slot(const evs__rw_keys *k, uint64_t h) {
  size_t mask = k->tab_cap - 1, slot;
  for (slot = h & mask; k->tab[slot]; slot = (slot + 1) & mask) {
  }
  return slot;
}

/* Room for one more entry: EVS__RW_E_KEYS at max entries, the entries grown, the table rebuilt
 * when half full. 0 or a negative error; a rebuild moves slots (find again). */
int evs__rw_keys_grow(evs__rw_keys *k, evs__rw_mem *m, size_t el);
static inline int evs__rw_keys_reserve(evs__rw_keys *k, evs__rw_mem *m, size_t el, size_t max) {
  if (k->len >= max) return EVS__RW_E_KEYS;
  if (k->len == k->cap || (k->tab_used + 1) * 2 > k->tab_cap) return evs__rw_keys_grow(k, m, el);
  return 0;
}

/* Appends an entry with hash h at a free slot on its probe path (a find's or evs__rw_keys_slot's
 * after the reserve); returns its index (its bytes past the hash are the caller's). */
static inline size_t evs__rw_keys_put(evs__rw_keys *k, size_t el, size_t slot, uint64_t h) {
  k->tab[slot] = (uint32_t)(k->len + 1);
  k->tab_used++;
  memcpy((char *)k->ent + k->len * el, &h, sizeof h);
  return k->len++;
}

void evs__rw_keys_clear(evs__rw_keys *k);
/* Empties k for a rewriter's reset, keeping its memory. */
void evs__rw_keys_empty(evs__rw_keys *k);

/* The typed functions of a format's header (T_feed, T_finish, T_free, T_error_offset,
 * T_mem_high_water for the prefix T), each the base's own, T_feed with the format's run; and
 * T_ops_feed, T_feed for the operations table. */
#define EVS__RW_DEFINE_TYPED(T, run)                                                              \
  int T##_feed(T *rw, const char *buf, size_t len) {                                             \
    return evs__rw_feed(&rw->b, buf, len, run);                                                   \
  }                                                                                               \
  static int T##_ops_feed(void *impl, const char *buf, size_t len) {                              \
    return T##_feed(impl, buf, len);                                                              \
  }                                                                                               \
  int T##_finish(T *rw) { return evs__rw_base_finish(rw); }                                       \
  void T##_free(T *rw) { evs__rw_base_free(rw); }                                                 \
  uint64_t T##_error_offset(const T *rw) { return evs__rw_base_error_offset(rw); }               \
  size_t T##_mem_high_water(const T *rw) { return evs__rw_base_mem_high_water(rw); }

/* The entries of a format's evs__rewriter_ops that are the base's (and T_ops_feed). */
#define EVS__RW_BASE_OPS(T)                                                                       \
  .feed = T##_ops_feed, .finish = evs__rw_base_finish, .free = evs__rw_base_free,                \
  .error_offset = evs__rw_base_error_offset, .mem_high_water = evs__rw_base_mem_high_water

#endif
