/*
 * rewriter.c: what the body rewriters share beyond their operations tables (rewriter.h): the
 * choice of a rewriter by Content-Type, and the relay's answer to a rewriter's error. The tables
 * themselves are at the end of each format's .c.
 */
#include "rewriter.h"

#include <errno.h>
#include <stdlib.h>

#include <string.h>
#include <strings.h>

/* The media type of ct[0..n) is want (case-insensitive), parameters ignored. */
static int ct_is(const char *ct, size_t n, const char *want) {
  size_t wl = strlen(want);
  return n >= wl && strncasecmp(ct, want, wl) == 0 && (n == wl || ct[wl] == ';' || ct[wl] == ' ');
}

/* The media type ends with suffix (e.g. "+json") before any parameters. */
static int ct_suffix(const char *ct, size_t n, const char *suffix) {
  size_t end = 0;
  while (end < n && ct[end] != ';' && ct[end] != ' ') end++;
  size_t sl = strlen(suffix);
  return end >= sl && strncasecmp(ct + end - sl, suffix, sl) == 0;
}

const evs__rewriter_ops *evs__rewriter_for_content_type(const char *ct, size_t n) {
  if (ct_is(ct, n, "application/json") || ct_suffix(ct, n, "+json")) return &evs__json_rewriter;
  if (ct_is(ct, n, "application/xml") || ct_is(ct, n, "text/xml") || ct_suffix(ct, n, "+xml"))
    return &evs__xml_rewriter;
  if (ct_is(ct, n, "application/x-www-form-urlencoded")) return &evs__form_rewriter;
  if (ct_is(ct, n, "multipart/form-data")) return &evs__multipart_rewriter;
  return NULL;
}

size_t evs__rewriter_place_verbatim(const char *value, size_t len, char *out, size_t cap) {
  if (out && cap >= len) memcpy(out, value, len);
  return len;
}

int evs__rewriter_answer(int err, const char **ret_code) {
  switch ((evs__rw_error)err) {
  case EVS__RW_E_EVDATA:
    *ret_code = "encrypted-data-in-field";
    return 400;
  case EVS__RW_E_SYNTAX:
  case EVS__RW_E_DUPKEY:
  case EVS__RW_E_DEPTH:
  case EVS__RW_E_TOOBIG:
  case EVS__RW_E_KEYS:
  case EVS__RW_E_DOCTYPE:
  case EVS__RW_E_ENTITY:
  case EVS__RW_E_PI:
  case EVS__RW_E_ENCODING:
  case EVS__RW_E_MIXED:
  case EVS__RW_E_UNSUPPORTED:
  case EVS__RW_E_BOUNDARY:
    *ret_code = "bad-request";
    return 400;
  }
  return 0;
}

int evs__rw_grow_slow(evs__rw_mem *m, void **b, size_t *cap, size_t need, size_t el) {
  size_t n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  void *nb = realloc(*b, n * el);
  if (!nb) return -ENOMEM;
  evs__rw_mem_account(m, *cap * el, n * el);
  *b = nb;
  *cap = n;
  return 0;
}
