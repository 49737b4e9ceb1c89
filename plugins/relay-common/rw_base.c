/*
 * rw_base.c: the skeleton of the body rewriters (rw_base.h): creation with options copied by
 * size, feed (the pass-through span of each buffer, the error offset), finish, free, and the
 * hand-over of a captured value to the transform. The grammar of each format is in its own .c.
 */
#include "rw_base.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void *evs__rw_base_new(size_t size, size_t o_off, size_t o_size, const void *opts,
                       const evs__rw_class *cls, evs__rw_emit_fn emit,
                       evs__rw_transform_fn transform, void *ud) {
  evs__rw_base *b = calloc(1, size);
  char *o = (char *)b + o_off;
  if (!b) return NULL;
  if (opts) {
    size_t n = *(const size_t *)opts;
    memcpy(o, opts, n < o_size ? n : o_size);
  }
  *(size_t *)o = o_size;
  b->cls = cls;
  b->emit = emit;
  b->transform = transform;
  b->ud = ud;
  b->mem.now = b->mem.high = size;
  return b;
}

void evs__rw_tree_limits(unsigned *max_depth, size_t *max_value, size_t *max_keys) {
  if (!*max_depth) *max_depth = 256;
  if (!*max_value) *max_value = 1024 * 1024;
  if (!*max_keys) *max_keys = 100000;
  if (*max_keys > UINT32_MAX / 4) *max_keys = UINT32_MAX / 4;
}

int evs__rw_base_finish(void *impl) {
  evs__rw_base *b = impl;
  int r;
  if (b->err) return b->err;
  r = b->cls->finish(b);
  return r < 0 ? evs__rw_fail(b, r, b->off) : 0;
}

void evs__rw_base_free(void *impl) {
  evs__rw_base *b = impl;
  if (!b) return;
  b->cls->clear(b);
  free(b->val.p);
  free(b);
}

int evs__rw_base_reset(void *impl) {
  evs__rw_base *b = impl;
  if (!b->cls->reset) return -EOPNOTSUPP;
  b->err = 0;
  b->capturing = false;
  b->err_off = b->off = 0;
  b->pass = NULL;
  b->val.len = 0;
  if (b->val.p) explicit_bzero(b->val.p, b->val.cap); /* the last selected value, plaintext */
  b->cls->reset(b);
  return 0;
}

uint64_t evs__rw_base_error_offset(const void *impl) {
  return ((const evs__rw_base *)impl)->err_off;
}

size_t evs__rw_base_mem_high_water(const void *impl) {
  return ((const evs__rw_base *)impl)->mem.high;
}

int evs__rw_buf_grow(evs__rw_mem *m, evs__rw_buf *buf, size_t need, size_t first, size_t clamp) {
  size_t c = buf->cap ? buf->cap : first;
  char *nb;
  while (c < need) c *= 2;
  if (clamp && c > clamp) c = clamp;
  if (!(nb = realloc(buf->p, c))) return -ENOMEM;
  evs__rw_mem_account(m, buf->cap, c);
  buf->p = nb;
  buf->cap = c;
  return 0;
}

int evs__rw_val_grow(evs__rw_base *b, size_t need) {
  return evs__rw_buf_grow(&b->mem, &b->val, need, b->cls->val_first,
                          b->cls->val_clamp ? b->val_max + 1 : 0);
}

int evs__rw_names_copy(evs__rw_names *set, evs__rw_mem *m, const char *const *names, size_t n,
                       bool name_buf, char **ret_buf, size_t *ret_max) {
  size_t total = 0, max = 0, extra;
  char **v, *s;
  size_t *len;
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(names[i]);
    total += l + 1;
    if (l > max) max = l;
  }
  extra = name_buf ? max + 1 : 0;
  v = calloc(n, sizeof *v);
  len = calloc(n, sizeof *len);
  s = malloc(total + extra);
  if (!v || !len || !s) {
    free(v);
    free(len);
    free(s);
    return -ENOMEM;
  }
  evs__rw_mem_account(m, 0, n * (sizeof *v + sizeof *len) + total + extra);
  for (size_t i = 0; i < n; i++) {
    len[i] = strlen(names[i]);
    v[i] = s;
    memcpy(s, names[i], len[i] + 1);
    s += len[i] + 1;
  }
  set->v = v;
  set->len = len;
  set->n = n;
  if (ret_buf) *ret_buf = s;
  if (ret_max) *ret_max = max;
  return 0;
}

void evs__rw_names_clear(evs__rw_names *set) {
  if (set->n) free(set->v[0]);
  free(set->v);
  free(set->len);
}

int evs__rw_frames_grow(evs__rw_mem *m, void **fr, uint64_t **st, unsigned *cap, unsigned depth,
                        size_t fsize, size_t nw) {
  size_t c = *cap, c2 = *cap;
  void *s = *st;
  int r;
  if ((r = evs__rw_grow(m, fr, &c, depth + 1, fsize)) < 0) return r;
  if (nw && (r = evs__rw_grow(m, &s, &c2, depth + 1, nw * sizeof **st)) < 0) return r;
  *st = s;
  *cap = (unsigned)c;
  return 0;
}

int evs__rw_keys_grow(evs__rw_keys *k, evs__rw_mem *m, size_t el) {
  int r;
  if (k->len == k->cap && (r = evs__rw_grow(m, &k->ent, &k->cap, k->len + 1, el)) < 0) return r;
  if ((k->tab_used + 1) * 2 > k->tab_cap) { /* rebuild, dropping stale slots */
    size_t n = 16, mask, slot;
    while (n < 3 * (k->len + 1)) n *= 2;
    if (n != k->tab_cap) {
      uint32_t *t = malloc(n * sizeof *t);
      if (!t) return -ENOMEM;
      evs__rw_mem_account(m, k->tab_cap * sizeof *t, n * sizeof *t);
      free(k->tab);
      k->tab = t;
      k->tab_cap = n;
    }
    memset(k->tab, 0, k->tab_cap * sizeof *k->tab);
    k->tab_used = 0;
    mask = k->tab_cap - 1;
    for (size_t i = 0; i < k->len; i++) {
      uint64_t h;
      memcpy(&h, (const char *)k->ent + i * el, sizeof h);
      for (slot = h & mask; k->tab[slot]; slot = (slot + 1) & mask) {
      }
      k->tab[slot] = (uint32_t)(i + 1);
      k->tab_used++;
    }
  }
  return 0;
}

void evs__rw_keys_clear(evs__rw_keys *k) {
  free(k->ent);
  free(k->tab);
}

void evs__rw_keys_empty(evs__rw_keys *k) {
  k->len = k->tab_used = 0;
  if (k->tab) memset(k->tab, 0, k->tab_cap * sizeof *k->tab);
}
