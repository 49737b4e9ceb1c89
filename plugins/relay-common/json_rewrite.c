/*
 * json_rewrite: a push (incremental) JSON validator and rewriter for the Inbound Relay's
 * "fields to encrypt" (see json_rewrite.h for the contract). One byte-driven state machine: the
 * grammar state (what may come next at the current depth), and the lexer state of the token in
 * progress (string with escape / \u / UTF-8 sub-states, number, literal), both of which survive
 * any split of the input. Unselected bytes are never copied: the output is emitted as spans of
 * the caller's buffer, broken only around selected values.
 */
#include "json_rewrite.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "rw_base.h"

enum pstate { P_VALUE, P_ARR_FIRST, P_OBJ_FIRST, P_KEY, P_COLON, P_AFTER, P_END };
enum tok { T_NONE, T_STRING, T_NUMBER, T_LITERAL };
enum sstate { S_NORMAL, S_ESC, S_HEX, S_LOW_BS, S_LOW_U, S_LOW_HEX, S_UTF8 };
enum nstate { N_START, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

struct frame {
  uint64_t index;  /* arrays: index of the next element */
  size_t key_base; /* objects: first entry of this object in keys */
  bool is_obj, sel, live;
};

struct evs__json_rewrite {
  evs__rw_base b; /* first: the rewriter is its base (rw_base.h) */
  const evs__jsonpath *paths;
  size_t nw;
  struct evs__json_rewrite_opts o;

  /* Buffers, kept by a reset (emptied). */
  struct frame *fr; /* fr[0..depth) */
  uint64_t *st;     /* states of frame d at st[d * nw] */
  unsigned fr_cap;
  uint64_t *cur;     /* states of the value about to start */
  evs__rw_buf key;   /* the member name being read (the value is the base's val) */
  evs__rw_keys keys; /* the member names of all open objects: their hashes */

  /* Parse state from here on: zero after new and after a reset, but for start(). */
  enum pstate ps;
  unsigned depth;
  bool cur_sel, cur_live;

  enum tok tok;
  int sub;
  bool tok_key;
  unsigned need, hexn;
  unsigned char lo, hi;
  uint32_t cu, hisur;
  const char *lit;
  unsigned lit_pos;
  int ev; /* ev: detector: 0..2 prefix matched, 3 in body, -1 off */
  unsigned ev_colons;
  unsigned char ev_last[2];
};

const char *evs__json_rewrite_strerror(int err) {
  switch (err) {
  case EVS__RW_E_SYNTAX: return "malformed JSON";
  case EVS__RW_E_DUPKEY: return "duplicate member name in an object";
  case EVS__RW_E_DEPTH: return "JSON nested too deeply";
  case EVS__RW_E_TOOBIG: return "selected value or member name too large";
  case EVS__RW_E_KEYS: return "too many member names in open objects";
  case EVS__RW_E_EVDATA: return "Evervault-encrypted data in an unselected field";
  case -ENOMEM: return "out of memory";
  default: return "error";
  }
}

/* The member name and the selected value grow alike: doubling from 16, capped at max_value. */
static int key_append(evs__json_rewrite *rw, const char *s, size_t n) {
  return evs__rw_buf_append(&rw->b.mem, &rw->key, rw->o.max_value, EVS__RW_E_TOOBIG, 16, 0, s,
                            n);
}

static bool ev_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=' || c == '-' || c == '_' || c == ':' || c == '$';
}

int evs__looks_like_ev_string(const char *s, size_t len) {
  unsigned colons = 1;
  if (len < 5 || memcmp(s, "ev:", 3) != 0 || s[len - 2] != ':' || s[len - 1] != '$') return 0;
  for (size_t i = 3; i < len; i++) {
    if (!ev_char((unsigned char)s[i])) return 0;
    colons += s[i] == ':';
  }
  return colons == 5 || colons == 6;
}

/* The streaming form of evs__looks_like_ev_string() over decoded string bytes. */
static void ev_feed(evs__json_rewrite *rw, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n && rw->ev >= 0; i++) {
    unsigned char c = s[i];
    if (rw->ev < 3) {
      rw->ev = c == (unsigned char)"ev:"[rw->ev] ? rw->ev + 1 : -1;
      if (rw->ev == 3) rw->ev_colons = 1;
    } else if (!ev_char(c)) {
      rw->ev = -1;
    } else {
      rw->ev_colons += c == ':';
    }
    rw->ev_last[0] = rw->ev_last[1];
    rw->ev_last[1] = c;
  }
}

static bool ev_looks_encrypted(const evs__json_rewrite *rw) {
  return rw->ev == 3 && (rw->ev_colons == 5 || rw->ev_colons == 6) && rw->ev_last[0] == ':' &&
         rw->ev_last[1] == '$';
}

/* Decoded string bytes go to the member name, the selected value, or the ev: detector. */
static int str_out(evs__json_rewrite *rw, const char *s, size_t n) {
  if (rw->tok_key) return key_append(rw, s, n);
  if (rw->b.capturing) return evs__rw_val_append(&rw->b, s, n);
  if (rw->ev >= 0) ev_feed(rw, (const unsigned char *)s, n);
  return 0;
}

static int str_out_cp(evs__json_rewrite *rw, uint32_t cp) {
  char b[4];
  size_t n;
  if (cp < 0x80) {
    b[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    b[0] = (char)(0xC0 | (cp >> 6));
    b[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    b[0] = (char)(0xE0 | (cp >> 12));
    b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    b[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    b[0] = (char)(0xF0 | (cp >> 18));
    b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return str_out(rw, b, n);
}

/* Records the member name just parsed in the innermost object; fails on a repeat. */
static int key_insert(evs__json_rewrite *rw, uint64_t h, size_t base) {
  size_t slot;
  int r = evs__rw_keys_reserve(&rw->keys, &rw->b.mem, sizeof h, rw->o.max_keys);
  if (r < 0) return r;
  if (evs__rw_keys_find(&rw->keys, sizeof h, h, base, &slot) != EVS__RW_KEYS_NONE)
    return EVS__RW_E_DUPKEY;
  evs__rw_keys_put(&rw->keys, sizeof h, slot, h);
  return 0;
}

/* The current token ended just before q. */
static int tok_end(evs__json_rewrite *rw, const char *q, evs__rw_type type) {
  int r = 0;
  rw->tok = T_NONE;
  if (rw->tok_key) {
    struct frame *f = &rw->fr[rw->depth - 1];
    if ((r = key_insert(rw, evs__rw_name_hash(rw->key.p, rw->key.len), f->key_base)) < 0)
      return r;
    if (f->sel) {
      rw->cur_sel = true;
      rw->cur_live = false;
    } else if (f->live) {
      int m = evs__jsonpath_step(rw->paths, rw->st + (rw->depth - 1) * rw->nw, rw->cur, rw->key.p,
                                 rw->key.len, 0);
      rw->cur_live = m != EVS__JSONPATH_DEAD;
      rw->cur_sel = m == EVS__JSONPATH_MATCH;
    } else {
      rw->cur_sel = rw->cur_live = false;
    }
    rw->ps = P_COLON;
    return 0;
  }
  if (rw->b.capturing) {
    if ((r = evs__rw_capture_end(&rw->b, type, q, NULL)) < 0) return r;
  } else if (type == EVS__RW_STRING && !rw->o.allow_ev && ev_looks_encrypted(rw)) {
    return EVS__RW_E_EVDATA;
  }
  rw->ps = rw->depth ? P_AFTER : P_END;
  return 0;
}

/* Bytes that stand for themselves inside a string: printable ASCII except '"' and '\\'. */
static const unsigned char plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Lexes string bytes from *pp; returns 0 when the buffer ran out or the string ended. */
static int lex_string(evs__json_rewrite *rw, const unsigned char **pp, const unsigned char *e) {
  const unsigned char *p = *pp;
  int r = 0;
  while (p < e) {
    unsigned char c = *p;
    switch (rw->sub) {
    case S_NORMAL: {
      const unsigned char *s = p;
      while (p < e && plain[*p]) p++;
      if (p > s && (rw->tok_key || rw->b.capturing || rw->ev >= 0) &&
          (r = str_out(rw, (const char *)s, (size_t)(p - s))) < 0)
        goto out;
      if (p == e) goto out;
      c = *p;
      if (c == '"') {
        p++;
        r = tok_end(rw, (const char *)p, EVS__RW_STRING);
        goto out;
      } else if (c == '\\') {
        rw->sub = S_ESC;
      } else if (c < 0x20) {
        r = EVS__RW_E_SYNTAX;
        goto out;
      } else {
        if (c >= 0xC2 && c <= 0xDF) rw->need = 1, rw->lo = 0x80, rw->hi = 0xBF;
        else if (c == 0xE0) rw->need = 2, rw->lo = 0xA0, rw->hi = 0xBF;
        else if (c == 0xED) rw->need = 2, rw->lo = 0x80, rw->hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) rw->need = 2, rw->lo = 0x80, rw->hi = 0xBF;
        else if (c == 0xF0) rw->need = 3, rw->lo = 0x90, rw->hi = 0xBF;
        else if (c >= 0xF1 && c <= 0xF3) rw->need = 3, rw->lo = 0x80, rw->hi = 0xBF;
        else if (c == 0xF4) rw->need = 3, rw->lo = 0x80, rw->hi = 0x8F;
        else {
          r = EVS__RW_E_SYNTAX;
          goto out;
        }
        if ((r = str_out(rw, (const char *)p, 1)) < 0) goto out;
        rw->sub = S_UTF8;
      }
      p++;
      break;
    }
    case S_UTF8:
      if (c < rw->lo || c > rw->hi) {
        r = EVS__RW_E_SYNTAX;
        goto out;
      }
      if ((r = str_out(rw, (const char *)p, 1)) < 0) goto out;
      rw->lo = 0x80, rw->hi = 0xBF;
      if (--rw->need == 0) rw->sub = S_NORMAL;
      p++;
      break;
    case S_ESC: {
      char d;
      switch (c) {
      case '"': d = '"'; break;
      case '\\': d = '\\'; break;
      case '/': d = '/'; break;
      case 'b': d = '\b'; break;
      case 'f': d = '\f'; break;
      case 'n': d = '\n'; break;
      case 'r': d = '\r'; break;
      case 't': d = '\t'; break;
      case 'u':
        rw->sub = S_HEX, rw->hexn = 0, rw->cu = 0;
        p++;
        continue;
      default:
        r = EVS__RW_E_SYNTAX;
        goto out;
      }
      if ((r = str_out(rw, &d, 1)) < 0) goto out;
      rw->sub = S_NORMAL;
      p++;
      break;
    }
    case S_HEX:
    case S_LOW_HEX: {
      int v = hexval(c);
      if (v < 0) {
        r = EVS__RW_E_SYNTAX;
        goto out;
      }
      rw->cu = rw->cu << 4 | (uint32_t)v;
      p++;
      if (++rw->hexn < 4) break;
      if (rw->sub == S_HEX) {
        if (rw->cu >= 0xD800 && rw->cu <= 0xDBFF) {
          rw->hisur = rw->cu;
          rw->sub = S_LOW_BS;
          break;
        }
        if (rw->cu >= 0xDC00 && rw->cu <= 0xDFFF) { /* lone low surrogate: not Unicode */
          r = EVS__RW_E_SYNTAX;
          goto out;
        }
        r = str_out_cp(rw, rw->cu);
      } else {
        if (rw->cu < 0xDC00 || rw->cu > 0xDFFF) {
          r = EVS__RW_E_SYNTAX;
          goto out;
        }
        r = str_out_cp(rw, 0x10000 + ((rw->hisur - 0xD800) << 10) + (rw->cu - 0xDC00));
      }
      if (r < 0) goto out;
      rw->sub = S_NORMAL;
      break;
    }
    case S_LOW_BS:
    case S_LOW_U:
      if (c != (rw->sub == S_LOW_BS ? '\\' : 'u')) { /* a high surrogate must be paired */
        r = EVS__RW_E_SYNTAX;
        goto out;
      }
      p++;
      if (rw->sub == S_LOW_BS) {
        rw->sub = S_LOW_U;
      } else {
        rw->sub = S_LOW_HEX, rw->hexn = 0, rw->cu = 0;
      }
      break;
    }
  }
out:
  *pp = p;
  return r;
}

/* Lexes number bytes; at the first byte not part of the number ends the token (not consuming
 * it). Returns 0 or an error. */
static int lex_number(evs__json_rewrite *rw, const unsigned char **pp, const unsigned char *e) {
  const unsigned char *p = *pp, *s = p;
  int r = 0;
  for (; p < e; p++) {
    unsigned char c = *p;
    bool digit = c >= '0' && c <= '9';
    switch (rw->sub) {
    case N_START:
      rw->sub = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
      continue;
    case N_MINUS:
      if (!digit) goto bad;
      rw->sub = c == '0' ? N_ZERO : N_INT;
      continue;
    case N_INT:
      if (digit) continue;
      /* fall through */
    case N_ZERO:
      if (c == '.') rw->sub = N_DOT;
      else if (c == 'e' || c == 'E') rw->sub = N_E;
      else goto end;
      continue;
    case N_DOT:
      if (!digit) goto bad;
      rw->sub = N_FRAC;
      continue;
    case N_FRAC:
      if (digit) continue;
      if (c == 'e' || c == 'E') rw->sub = N_E;
      else goto end;
      continue;
    case N_E:
      if (c == '+' || c == '-') {
        rw->sub = N_ESIGN;
        continue;
      }
      /* fall through */
    case N_ESIGN:
      if (!digit) goto bad;
      rw->sub = N_EXP;
      continue;
    case N_EXP:
      if (digit) continue;
      goto end;
    }
  }
  if (rw->b.capturing) r = evs__rw_val_append(&rw->b, (const char *)s, (size_t)(p - s));
  *pp = p;
  return r;
end:
  if (rw->b.capturing && (r = evs__rw_val_append(&rw->b, (const char *)s, (size_t)(p - s))) < 0)
    return r;
  *pp = p;
  return tok_end(rw, (const char *)p, EVS__RW_NUMBER);
bad:
  *pp = p;
  return EVS__RW_E_SYNTAX;
}

static int push_frame(evs__json_rewrite *rw, bool is_obj) {
  struct frame *f;
  int r;
  void *fr = rw->fr;
  r = evs__rw_frames_reserve(&rw->b.mem, &fr, &rw->st, &rw->fr_cap, rw->depth, rw->o.max_depth,
                             sizeof *rw->fr, rw->nw);
  rw->fr = fr;
  if (r < 0) return r;
  f = &rw->fr[rw->depth];
  f->index = 0;
  f->key_base = rw->keys.len;
  f->is_obj = is_obj;
  f->sel = rw->cur_sel;
  f->live = rw->cur_live;
  if (f->live) memcpy(rw->st + rw->depth * rw->nw, rw->cur, rw->nw * sizeof *rw->st);
  rw->depth++;
  rw->ps = is_obj ? P_OBJ_FIRST : P_ARR_FIRST;
  return 0;
}

static void pop_frame(evs__json_rewrite *rw) {
  rw->keys.len = rw->fr[--rw->depth].key_base;
  rw->ps = rw->depth ? P_AFTER : P_END;
}

/* A value starts with byte c at p (not consumed unless it is a bracket or quote). */
static int value_begin(evs__json_rewrite *rw, const unsigned char **pp) {
  const unsigned char *p = *pp;
  unsigned char c = *p;
  int r = 0;
  if (rw->depth && !rw->fr[rw->depth - 1].is_obj) {
    struct frame *f = &rw->fr[rw->depth - 1];
    if (f->sel) {
      rw->cur_sel = true;
      rw->cur_live = false;
    } else if (f->live) {
      int m = evs__jsonpath_step(rw->paths, rw->st + (rw->depth - 1) * rw->nw, rw->cur, NULL, 0,
                                 f->index);
      rw->cur_live = m != EVS__JSONPATH_DEAD;
      rw->cur_sel = m == EVS__JSONPATH_MATCH;
    } else {
      rw->cur_sel = rw->cur_live = false;
    }
    f->index++;
  }
  switch (c) {
  case '{':
  case '[':
    *pp = p + 1;
    return push_frame(rw, c == '{');
  case '"':
    rw->tok = T_STRING;
    rw->sub = S_NORMAL;
    rw->tok_key = false;
    rw->ev = rw->cur_sel ? -1 : 0;
    if (rw->cur_sel) r = evs__rw_capture_begin(&rw->b, (const char *)p);
    *pp = p + 1;
    return r;
  case 't':
  case 'f':
  case 'n':
    rw->tok = T_LITERAL;
    rw->lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
    rw->lit_pos = 0;
    rw->tok_key = false;
    if (rw->cur_sel && c != 'n') r = evs__rw_capture_begin(&rw->b, (const char *)p);
    return r;
  default:
    if (c == '-' || (c >= '0' && c <= '9')) {
      rw->tok = T_NUMBER;
      rw->sub = N_START;
      rw->tok_key = false;
      if (rw->cur_sel) r = evs__rw_capture_begin(&rw->b, (const char *)p);
      return r;
    }
    return EVS__RW_E_SYNTAX;
  }
}

static int parse(evs__json_rewrite *rw, const unsigned char *p, const unsigned char *e,
                 const unsigned char **ret_p) {
  int r = 0;
  while (p < e) {
    switch (rw->tok) {
    case T_STRING:
      r = lex_string(rw, &p, e);
      break;
    case T_NUMBER:
      r = lex_number(rw, &p, e);
      break;
    case T_LITERAL:
      while (p < e && rw->lit[rw->lit_pos]) {
        if (*p != (unsigned char)rw->lit[rw->lit_pos]) {
          r = EVS__RW_E_SYNTAX;
          goto out;
        }
        rw->lit_pos++;
        p++;
      }
      if (!rw->lit[rw->lit_pos]) {
        if (rw->b.capturing) r = evs__rw_val_append(&rw->b, rw->lit, rw->lit_pos);
        if (r == 0) r = tok_end(rw, (const char *)p, EVS__RW_BOOLEAN);
      }
      break;
    case T_NONE: {
      unsigned char c;
      while (p < e && is_ws(*p)) p++;
      if (p == e) break;
      c = *p;
      switch (rw->ps) {
      case P_VALUE:
        r = value_begin(rw, &p);
        break;
      case P_ARR_FIRST:
        if (c == ']') {
          pop_frame(rw);
          p++;
        } else {
          r = value_begin(rw, &p);
        }
        break;
      case P_OBJ_FIRST:
      case P_KEY:
        if (c == '}' && rw->ps == P_OBJ_FIRST) {
          pop_frame(rw);
        } else if (c == '"') {
          rw->tok = T_STRING;
          rw->sub = S_NORMAL;
          rw->tok_key = true;
          rw->key.len = 0;
          rw->ev = -1;
        } else {
          r = EVS__RW_E_SYNTAX;
          break;
        }
        p++;
        break;
      case P_COLON:
        if (c != ':') {
          r = EVS__RW_E_SYNTAX;
          break;
        }
        rw->ps = P_VALUE;
        p++;
        break;
      case P_AFTER: {
        bool obj = rw->fr[rw->depth - 1].is_obj;
        if (c == ',') rw->ps = obj ? P_KEY : P_VALUE;
        else if (c == (obj ? '}' : ']')) pop_frame(rw);
        else {
          r = EVS__RW_E_SYNTAX;
          break;
        }
        p++;
        break;
      }
      case P_END:
        r = EVS__RW_E_SYNTAX;
        break;
      }
      break;
    }
    }
    if (r < 0) break;
  }
out:
  *ret_p = p;
  return r;
}

static int run(evs__rw_base *b, const char *p, const char *e, const char **ret_p) {
  const unsigned char *q;
  int r = parse((evs__json_rewrite *)b, (const unsigned char *)p, (const unsigned char *)e, &q);
  *ret_p = (const char *)q;
  return r;
}

static int finish(evs__rw_base *b) {
  evs__json_rewrite *rw = (evs__json_rewrite *)b;
  int r;
  if (rw->tok == T_NUMBER) {
    /* The body's end terminates a top-level number. */
    if (rw->sub != N_ZERO && rw->sub != N_INT && rw->sub != N_FRAC && rw->sub != N_EXP)
      return EVS__RW_E_SYNTAX;
    rw->b.pass = NULL;
    if ((r = tok_end(rw, NULL, EVS__RW_NUMBER)) < 0) return r;
  }
  return rw->tok != T_NONE || rw->ps != P_END ? EVS__RW_E_SYNTAX : 0;
}

static void clear(evs__rw_base *b) {
  evs__json_rewrite *rw = (evs__json_rewrite *)b;
  free(rw->fr);
  free(rw->st);
  free(rw->cur);
  free(rw->key.p);
  evs__rw_keys_clear(&rw->keys);
}

/* The state before the first byte (new and reset): a value is expected, the selectors at their
 * start. */
static void start(evs__json_rewrite *rw) {
  rw->ps = P_VALUE;
  if (rw->paths) {
    evs__jsonpath_start(rw->paths, rw->cur);
    rw->cur_live = true;
    rw->cur_sel = evs__jsonpath_accepts(rw->paths, rw->cur);
  }
}

static void reset(evs__rw_base *b) {
  evs__json_rewrite *rw = (evs__json_rewrite *)b;
  memset(&rw->ps, 0, sizeof *rw - offsetof(evs__json_rewrite, ps));
  rw->key.len = 0;
  if (rw->key.p) rw->key.p[0] = 0;
  evs__rw_keys_empty(&rw->keys);
  start(rw);
}

static const evs__rw_class json_class = {finish, clear, 16, false, reset};

int evs__json_rewrite_new(const evs__jsonpath *paths, const struct evs__json_rewrite_opts *opts,
                          evs__rw_emit_fn emit_fn, evs__rw_transform_fn transform, void *ud,
                          evs__json_rewrite **ret_rw) {
  evs__json_rewrite *rw;
  if (!emit_fn || (paths && !transform)) return -EINVAL;
  rw = evs__rw_base_new(sizeof *rw, offsetof(evs__json_rewrite, o), sizeof rw->o, opts,
                        &json_class, emit_fn, transform, ud);
  if (!rw) return -ENOMEM;
  evs__rw_tree_limits(&rw->o.max_depth, &rw->o.max_value, &rw->o.max_keys);
  rw->b.val_max = rw->o.max_value;
  rw->paths = paths;
  rw->nw = paths ? evs__jsonpath_nwords(paths) : 0;
  if (paths) {
    if (!(rw->cur = calloc(rw->nw, sizeof *rw->cur))) {
      free(rw);
      return -ENOMEM;
    }
    evs__rw_mem_account(&rw->b.mem, 0, rw->nw * sizeof *rw->cur);
  }
  start(rw);
  *ret_rw = rw;
  return 0;
}

EVS__RW_DEFINE_TYPED(evs__json_rewrite, run)

/* ---- the rewriter interface (rewriter.h) ------------------------------------------------- */

/* A replacement placed by the caller is a JSON string literal: ev: strings need no escapes. */
static size_t ops_place(const char *value, size_t len, char *out, size_t cap) {
  if (out && cap >= len + 2) {
    out[0] = '"';
    memcpy(out + 1, value, len);
    out[len + 1] = '"';
  }
  return len + 2;
}

static int ops_new(const evs__rewriter_select *sel, evs__rw_emit_fn emit_fn,
                   evs__rw_transform_fn transform_fn, void *ud, void **ret_impl) {
  evs__json_rewrite *rw = NULL;
  struct evs__json_rewrite_opts o = {sizeof o, 0, 0, 0, sel->allow_ev};
  int r = evs__json_rewrite_new(sel->paths, &o, emit_fn, transform_fn, ud, &rw);
  if (r == 0) *ret_impl = rw;
  return r;
}

const evs__rewriter_ops evs__json_rewriter = {
    .name = "json",
    .parse_unselected = 0,
    .place = ops_place,
    .place_returned = ops_place,
    .new = ops_new,
    .reset = evs__rw_base_reset,
    EVS__RW_BASE_OPS(evs__json_rewrite),
    .strerror = evs__json_rewrite_strerror,
};
