/*
 * form_rewrite: a push parser and rewriter for application/x-www-form-urlencoded bodies (the
 * contract is in form_rewrite.h). A small byte-driven state machine (name or value, and where in
 * a %XX escape) that survives any split of the input. As in json_rewrite.c, unselected bytes are
 * emitted as spans of the caller's buffer; only a selected value is decoded into a buffer, to be
 * handed to the transform.
 */
#include "form_rewrite.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ev_detect.h"

struct evs__form_rewrite {
  char **fields;
  size_t *flen, nfields, fmax;
  struct evs__form_rewrite_opts o;
  evs__rw_emit_fn emit;
  evs__rw_transform_fn transform;
  void *ud;
  int err;
  uint64_t err_off, off, pairs;

  bool in_value, capturing, seg_used, name_over;
  int pct; /* 0: plain; 1: after '%'; 2: after '%' and one hex digit */
  unsigned char hi;
  char *name; /* fmax + 1 bytes: a longer name cannot be selected */
  size_t name_len;
  char *val;
  size_t val_len, val_cap;
  struct evs__ev_detect ev;
  const char *pass; /* start of not yet emitted pass-through bytes in the current buffer */
  evs__rw_mem mem;
};

const char *evs__form_rewrite_strerror(int err) {
  switch (err) {
  case EVS__RW_E_SYNTAX: return "malformed form body (bad %XX escape)";
  case EVS__RW_E_TOOBIG: return "selected form value too large";
  case EVS__RW_E_EVDATA: return "Evervault-encrypted data in an unselected form field";
  case -ENOMEM: return "out of memory";
  default: return "error";
  }
}

/* Appends to the selected value, kept NUL-terminated and capped at max_value bytes. */
static int val_append(evs__form_rewrite *rw, const char *s, size_t n) {
  if (n > rw->o.max_value - rw->val_len) return EVS__RW_E_TOOBIG;
  if (rw->val_len + n + 1 > rw->val_cap) {
    size_t c = rw->val_cap ? rw->val_cap : 64;
    char *b;
    while (c < rw->val_len + n + 1) c *= 2;
    if (!(b = realloc(rw->val, c))) return -ENOMEM;
    evs__rw_mem_account(&rw->mem, rw->val_cap, c);
    rw->val = b;
    rw->val_cap = c;
  }
  memcpy(rw->val + rw->val_len, s, n);
  rw->val_len += n;
  rw->val[rw->val_len] = 0;
  return 0;
}

/* Decoded bytes of the current name or value. */
static int out(evs__form_rewrite *rw, const char *s, size_t n) {
  if (!rw->in_value) {
    if (rw->name_over || !rw->nfields) return 0;
    if (n > rw->fmax - rw->name_len) {
      rw->name_over = true;
      return 0;
    }
    memcpy(rw->name + rw->name_len, s, n);
    rw->name_len += n;
    return 0;
  }
  if (rw->capturing) return val_append(rw, s, n);
  if (rw->ev.st >= 0) evs__ev_detect_feed(&rw->ev, s, n);
  return 0;
}

static int emit(evs__form_rewrite *rw, const char *b, size_t n) {
  return n ? rw->emit(rw->ud, b, n) : 0;
}

static bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '*' ||
         c == '-' || c == '.' || c == '_';
}

size_t evs__form_urlencode(const char *in, size_t len, char *outb, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if (unreserved(c) || c == ' ') {
      if (o < cap) outb[o] = c == ' ' ? '+' : (char)c;
      o++;
    } else {
      if (o + 3 <= cap) {
        outb[o] = '%';
        outb[o + 1] = hex[c >> 4];
        outb[o + 2] = hex[c & 15];
      }
      o += 3;
    }
  }
  return o;
}

/* Emits a replacement encoded, through a bounded stack buffer rather than an allocation. */
static int emit_encoded(evs__form_rewrite *rw, const char *s, size_t n) {
  char b[3 * 256];
  for (size_t i = 0; i < n; i += 256) {
    size_t c = n - i < 256 ? n - i : 256;
    int r = emit(rw, b, evs__form_urlencode(s + i, c, b, sizeof b));
    if (r < 0) return r;
  }
  return 0;
}

static bool selected(const evs__form_rewrite *rw) {
  if (rw->name_over) return false;
  for (size_t i = 0; i < rw->nfields; i++)
    if (rw->flen[i] == rw->name_len && memcmp(rw->fields[i], rw->name, rw->name_len) == 0)
      return true;
  return false;
}

/* The '=' ending the name is at p. */
static int value_begin(evs__form_rewrite *rw, const char *p) {
  int r;
  rw->in_value = true;
  if (rw->nfields && selected(rw)) {
    if ((r = emit(rw, rw->pass, (size_t)(p + 1 - rw->pass))) < 0) return r;
    rw->capturing = true;
    rw->val_len = 0;
    return val_append(rw, "", 0); /* an empty value is still a NUL-terminated buffer */
  }
  evs__ev_detect_reset(&rw->ev);
  return 0;
}

/* The pair ends just before q (its '&', or NULL at the end of the body). */
static int pair_end(evs__form_rewrite *rw, const char *q) {
  int r = 0;
  if (rw->seg_used) rw->pairs++;
  if (rw->capturing) {
    const char *rep = NULL;
    size_t rep_len = 0;
    rw->capturing = false;
    rw->pass = q;
    r = rw->transform(rw->ud, EVS__RW_STRING, rw->val, rw->val_len, &rep, &rep_len);
    if (r == EVS__RW_DEFER) r = 0;
    else if (r == 0) r = emit_encoded(rw, rep, rep_len);
  } else if (rw->in_value && !rw->o.allow_ev && evs__ev_detect_done(&rw->ev)) {
    r = EVS__RW_E_EVDATA;
  }
  rw->in_value = rw->seg_used = rw->name_over = false;
  rw->name_len = 0;
  return r;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int run(evs__form_rewrite *rw, const char *p, const char *e, const char **ret_p) {
  int r = 0;
  while (p < e) {
    unsigned char c = (unsigned char)*p;
    if (rw->pct) {
      int v = hexval(c);
      if (v < 0) {
        r = EVS__RW_E_SYNTAX;
        break;
      }
      if (rw->pct == 1) {
        rw->hi = (unsigned char)v;
        rw->pct = 2;
      } else {
        char d = (char)(rw->hi << 4 | v);
        rw->pct = 0;
        if ((r = out(rw, &d, 1)) < 0) break;
      }
      p++;
      continue;
    }
    if (c == '&') {
      if ((r = pair_end(rw, p)) < 0) break;
      p++;
      continue;
    }
    rw->seg_used = true;
    if (c == '=' && !rw->in_value) {
      if ((r = value_begin(rw, p)) < 0) break;
      p++;
    } else if (c == '%') {
      rw->pct = 1;
      p++;
    } else if (c == '+') {
      if ((r = out(rw, " ", 1)) < 0) break;
      p++;
    } else {
      /* A run of bytes that stand for themselves. An unselected value that is already known not
       * to be an ev: string needs no decoding at all. */
      const char *s = p;
      if (rw->in_value) {
        while (p < e && *p != '&' && *p != '%' && *p != '+') p++;
      } else {
        while (p < e && *p != '&' && *p != '%' && *p != '+' && *p != '=') p++;
      }
      if ((rw->capturing || !rw->in_value || rw->ev.st >= 0) &&
          (r = out(rw, s, (size_t)(p - s))) < 0)
        break;
    }
  }
  *ret_p = p;
  return r;
}

static int fail(evs__form_rewrite *rw, int r, uint64_t off) {
  rw->err = r;
  rw->err_off = off;
  return r;
}

int evs__form_rewrite_feed(evs__form_rewrite *rw, const char *buf, size_t len) {
  const char *p;
  int r;
  if (rw->err) return rw->err;
  if (len == 0) return 0;
  rw->pass = buf;
  r = run(rw, buf, buf + len, &p);
  if (r < 0) return fail(rw, r, rw->off + (uint64_t)(p - buf));
  if (!rw->capturing && (r = emit(rw, rw->pass, (size_t)(buf + len - rw->pass))) < 0)
    return fail(rw, r, rw->off + len);
  rw->off += len;
  return 0;
}

int evs__form_rewrite_finish(evs__form_rewrite *rw) {
  int r;
  if (rw->err) return rw->err;
  if (rw->pct) return fail(rw, EVS__RW_E_SYNTAX, rw->off);
  rw->pass = NULL;
  if ((r = pair_end(rw, NULL)) < 0) return fail(rw, r, rw->off);
  return 0;
}

int evs__form_rewrite_new(const char *const *fields, size_t nfields,
                          const struct evs__form_rewrite_opts *opts, evs__rw_emit_fn emit_fn,
                          evs__rw_transform_fn transform, void *ud, evs__form_rewrite **ret_rw) {
  evs__form_rewrite *rw;
  if (!emit_fn || (nfields && (!fields || !transform))) return -EINVAL;
  for (size_t i = 0; i < nfields; i++)
    if (!fields[i]) return -EINVAL;
  if (!(rw = calloc(1, sizeof *rw))) return -ENOMEM;
  if (opts) memcpy(&rw->o, opts, opts->size < sizeof rw->o ? opts->size : sizeof rw->o);
  rw->o.size = sizeof rw->o;
  if (!rw->o.max_value) rw->o.max_value = 1024 * 1024;
  rw->emit = emit_fn;
  rw->transform = transform;
  rw->ud = ud;
  rw->mem.now = rw->mem.high = sizeof *rw;
  if (nfields) {
    size_t total = 0;
    char *s;
    for (size_t i = 0; i < nfields; i++) {
      size_t l = strlen(fields[i]);
      total += l + 1;
      if (l > rw->fmax) rw->fmax = l;
    }
    rw->fields = calloc(nfields, sizeof *rw->fields);
    rw->flen = calloc(nfields, sizeof *rw->flen);
    s = malloc(total + rw->fmax + 1); /* the names, then the current name's buffer */
    if (!rw->fields || !rw->flen || !s) {
      free(rw->fields);
      free(rw->flen);
      free(s);
      free(rw);
      return -ENOMEM;
    }
    evs__rw_mem_account(&rw->mem, 0,
                        nfields * (sizeof *rw->fields + sizeof *rw->flen) + total + rw->fmax + 1);
    for (size_t i = 0; i < nfields; i++) {
      rw->flen[i] = strlen(fields[i]);
      rw->fields[i] = s;
      memcpy(s, fields[i], rw->flen[i] + 1);
      s += rw->flen[i] + 1;
    }
    rw->name = s;
    rw->nfields = nfields;
  }
  *ret_rw = rw;
  return 0;
}

void evs__form_rewrite_free(evs__form_rewrite *rw) {
  if (!rw) return;
  if (rw->nfields) free(rw->fields[0]);
  free(rw->fields);
  free(rw->flen);
  free(rw->val);
  free(rw);
}

uint64_t evs__form_rewrite_error_offset(const evs__form_rewrite *rw) { return rw->err_off; }

size_t evs__form_rewrite_mem_high_water(const evs__form_rewrite *rw) { return rw->mem.high; }

uint64_t evs__form_rewrite_pairs(const evs__form_rewrite *rw) { return rw->pairs; }

/* ---- the rewriter interface (rewriter.h) ------------------------------------------------- */

/* A replacement placed by the caller is percent-encoded, as the rewriter writes one itself. */
static size_t ops_place(const char *value, size_t len, char *out, size_t cap) {
  return evs__form_urlencode(value, len, out, cap);
}

static int ops_new(const evs__rewriter_select *sel, evs__rw_emit_fn emit_fn,
                   evs__rw_transform_fn transform_fn, void *ud, void **ret_impl) {
  evs__form_rewrite *rw = NULL;
  struct evs__form_rewrite_opts o = {sizeof o, 0, sel->allow_ev};
  int r = evs__form_rewrite_new(sel->names, sel->nnames, &o, emit_fn, transform_fn, ud, &rw);
  if (r == 0) *ret_impl = rw;
  return r;
}
static int ops_feed(void *impl, const char *buf, size_t len) {
  return evs__form_rewrite_feed(impl, buf, len);
}
static int ops_finish(void *impl) { return evs__form_rewrite_finish(impl); }
static void ops_free(void *impl) { evs__form_rewrite_free(impl); }
static uint64_t ops_error_offset(const void *impl) {
  return evs__form_rewrite_error_offset(impl);
}
static size_t ops_mem_high_water(const void *impl) {
  return evs__form_rewrite_mem_high_water(impl);
}

const evs__rewriter_ops evs__form_rewriter = {
    .name = "form",
    .parse_unselected = 0,
    .place = ops_place,
    .place_returned = evs__rewriter_place_verbatim, /* the rewriter encodes it */
    .new = ops_new,
    .feed = ops_feed,
    .finish = ops_finish,
    .free = ops_free,
    .error_offset = ops_error_offset,
    .mem_high_water = ops_mem_high_water,
    .strerror = evs__form_rewrite_strerror,
};
