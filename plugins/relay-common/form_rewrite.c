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
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ev_detect.h"
#include "rw_base.h"

struct evs__form_rewrite {
  evs__rw_base b; /* first: the rewriter is its base (rw_base.h) */
  evs__rw_names fields;
  size_t fmax; /* the longest field name */
  struct evs__form_rewrite_opts o;
  uint64_t pairs;

  bool in_value, seg_used, name_over;
  int pct; /* 0: plain; 1: after '%'; 2: after '%' and one hex digit */
  unsigned char hi;
  char *name; /* fmax + 1 bytes: a longer name cannot be selected */
  size_t name_len;
  struct evs__ev_detect ev;
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

/* Out of line, as out() runs on every piece of a body: inlined, the append made it heavier
 * (callgrind, +6% on the unit tests' bodies). */
static __attribute__((noinline)) int val_append(evs__form_rewrite *rw, const char *s, size_t n) {
  return evs__rw_val_append(&rw->b, s, n);
}

/* Decoded bytes of the current name or value. */
static int out(evs__form_rewrite *rw, const char *s, size_t n) {
  if (!rw->in_value) {
    if (rw->name_over || !rw->fields.n) return 0;
    if (n > rw->fmax - rw->name_len) {
      rw->name_over = true;
      return 0;
    }
    memcpy(rw->name + rw->name_len, s, n);
    rw->name_len += n;
    return 0;
  }
  if (rw->b.capturing) return val_append(rw, s, n);
  if (rw->ev.st >= 0) evs__ev_detect_feed(&rw->ev, s, n);
  return 0;
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
static int emit_encoded(evs__rw_base *rw, const char *s, size_t n) {
  char b[3 * 256];
  for (size_t i = 0; i < n; i += 256) {
    size_t c = n - i < 256 ? n - i : 256;
    int r = evs__rw_emit(rw, b, evs__form_urlencode(s + i, c, b, sizeof b));
    if (r < 0) return r;
  }
  return 0;
}

static bool selected(const evs__form_rewrite *rw) {
  return !rw->name_over && evs__rw_names_has(&rw->fields, rw->name, rw->name_len);
}

/* The '=' ending the name is at p. */
static int value_begin(evs__form_rewrite *rw, const char *p) {
  rw->in_value = true;
  if (rw->fields.n && selected(rw)) return evs__rw_capture_begin(&rw->b, p + 1);
  evs__ev_detect_reset(&rw->ev);
  return 0;
}

/* The pair ends just before q (its '&', or NULL at the end of the body). */
static int pair_end(evs__form_rewrite *rw, const char *q) {
  int r = 0;
  if (rw->seg_used) rw->pairs++;
  if (rw->b.capturing) {
    r = evs__rw_capture_end(&rw->b, EVS__RW_STRING, q, emit_encoded);
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

static int run(evs__rw_base *b, const char *p, const char *e, const char **ret_p) {
  evs__form_rewrite *rw = (evs__form_rewrite *)b;
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
      if ((rw->b.capturing || !rw->in_value || rw->ev.st >= 0) &&
          (r = out(rw, s, (size_t)(p - s))) < 0)
        break;
    }
  }
  *ret_p = p;
  return r;
}

static int finish(evs__rw_base *b) {
  evs__form_rewrite *rw = (evs__form_rewrite *)b;
  int r;
  if (rw->pct) return EVS__RW_E_SYNTAX;
  rw->b.pass = NULL;
  r = pair_end(rw, NULL);
  return r < 0 ? r : 0;
}

static void clear(evs__rw_base *b) { evs__rw_names_clear(&((evs__form_rewrite *)b)->fields); }

/* The value grows from 64 bytes, doubling. */
static const evs__rw_class form_class = {finish, clear, 64, false, NULL};

int evs__form_rewrite_new(const char *const *fields, size_t nfields,
                          const struct evs__form_rewrite_opts *opts, evs__rw_emit_fn emit_fn,
                          evs__rw_transform_fn transform, void *ud, evs__form_rewrite **ret_rw) {
  evs__form_rewrite *rw;
  if (!emit_fn || (nfields && (!fields || !transform))) return -EINVAL;
  for (size_t i = 0; i < nfields; i++)
    if (!fields[i]) return -EINVAL;
  rw = evs__rw_base_new(sizeof *rw, offsetof(evs__form_rewrite, o), sizeof rw->o, opts,
                        &form_class, emit_fn, transform, ud);
  if (!rw) return -ENOMEM;
  if (!rw->o.max_value) rw->o.max_value = 1024 * 1024;
  rw->b.val_max = rw->o.max_value;
  /* The names, then the current name's buffer. */
  if (nfields &&
      evs__rw_names_copy(&rw->fields, &rw->b.mem, fields, nfields, true, &rw->name, &rw->fmax)) {
    free(rw);
    return -ENOMEM;
  }
  *ret_rw = rw;
  return 0;
}

EVS__RW_DEFINE_TYPED(evs__form_rewrite, run)

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

const evs__rewriter_ops evs__form_rewriter = {
    .name = "form",
    .parse_unselected = 0,
    .place = ops_place,
    .place_returned = evs__rewriter_place_verbatim, /* the rewriter encodes it */
    .new = ops_new,
    EVS__RW_BASE_OPS(evs__form_rewrite),
    .strerror = evs__form_rewrite_strerror,
};
