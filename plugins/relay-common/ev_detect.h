/*
 * ev_detect: the streaming form of evs__looks_like_ev_string() (rewriter.h) for the form and
 * multipart rewriters, whose unselected values arrive in pieces of any size and are never held.
 * Feeding a value's bytes in any split and then asking evs__ev_detect_done() gives the same
 * answer as evs__looks_like_ev_string() on the whole value (tests/unit/test_form_rewrite.c checks
 * this). The detector gives up at the first byte that rules an ev: string out, so the common
 * case costs one comparison per value.
 */
#ifndef EVS_RELAY_EV_DETECT_H
#define EVS_RELAY_EV_DETECT_H

#include <stdbool.h>
#include <stddef.h>

struct evs__ev_detect {
  int st;          /* 0..2: prefix "ev:" matched so far; 3: in the body; -1: not an ev: string */
  unsigned colons; /* ':' seen, including the prefix's */
  unsigned char last[2];
};

static inline void evs__ev_detect_reset(struct evs__ev_detect *d) {
  d->st = 0;
  d->colons = 0;
  d->last[0] = d->last[1] = 0;
}

static inline bool evs__ev_detect_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=' || c == '-' || c == '_' || c == ':' || c == '$';
}

static inline void evs__ev_detect_feed(struct evs__ev_detect *d, const char *s, size_t n) {
  for (size_t i = 0; i < n && d->st >= 0; i++) {
    unsigned char c = (unsigned char)s[i];
    if (d->st < 3) {
      d->st = c == (unsigned char)"ev:"[d->st] ? d->st + 1 : -1;
    } else if (!evs__ev_detect_char(c)) {
      d->st = -1;
    }
    d->colons += c == ':';
    d->last[0] = d->last[1];
    d->last[1] = c;
  }
}

/* Whether the bytes fed since the last reset look like an ev: string. */
static inline bool evs__ev_detect_done(const struct evs__ev_detect *d) {
  return d->st == 3 && (d->colons == 5 || d->colons == 6) && d->last[0] == ':' && d->last[1] == '$';
}

#endif
