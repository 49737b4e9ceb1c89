/*
 * libFuzzer target for core/http_parse.c. One input is used four ways: as a request head, as a
 * response head (both through the incremental scanner, fed whole and byte by byte), and as a
 * chunked body (decoded whole, byte by byte and in pieces whose size comes from the input).
 * Beyond "no crash", it checks invariants: the scanner and the parsers agree on where a head
 * ends, every offset lies inside the head, accepted fields really are tokens and valid values,
 * framing flags are never contradictory, and the decoder's output and verdict do not depend on
 * how the input was split. Any violation aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

#define MAX_HEAD 4096
#define MAXF 32

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      abort();                                                              \
    }                                                                       \
  } while (0)

static void check_head(const char *buf, const evs__http_head *h, int is_request) {
  CHECK(h->head_len >= 4 && h->head_len <= MAX_HEAD);
  CHECK(memcmp(buf + h->head_len - 4, "\r\n\r\n", 4) == 0);
  CHECK(h->version_minor == 0 || h->version_minor == 1);
  CHECK(h->nfields <= h->max_fields);
  if (is_request) {
    CHECK(h->method_len > 0 && h->method_off + h->method_len <= h->head_len);
    CHECK(h->target_len > 0 && h->target_off + h->target_len <= h->head_len);
    for (uint32_t i = 0; i < h->method_len; i++)
      CHECK(evs__http_is_tchar((unsigned char)buf[h->method_off + i]));
    for (uint32_t i = 0; i < h->target_len; i++) {
      unsigned char c = (unsigned char)buf[h->target_off + i];
      CHECK(c > 0x20 && c < 0x7f && c != '#');
    }
  } else {
    CHECK(h->status >= 100 && h->status <= 599);
    CHECK(h->reason_off + h->reason_len <= h->head_len);
  }
  for (size_t i = 0; i < h->nfields; i++) {
    const evs__http_field *f = &h->fields[i];
    CHECK(f->name_len > 0 && f->name_off + f->name_len <= h->head_len);
    CHECK(f->value_off + f->value_len <= h->head_len);
    for (uint32_t k = 0; k < f->name_len; k++)
      CHECK(evs__http_is_tchar((unsigned char)buf[f->name_off + k]));
    CHECK(evs__http_is_valid_field_value(buf + f->value_off, f->value_len));
    CHECK(buf[f->name_off + f->name_len] == ':');
    (void)evs__http_field_is_hop_by_hop(buf, h, i);
  }
  CHECK(!((h->flags & EVS_HTTP_F_CHUNKED) && (h->flags & EVS_HTTP_F_CONTENT_LENGTH)));
  CHECK(!(h->flags & EVS_HTTP_F_CONTENT_LENGTH) ||
        h->content_length <= UINT64_C(0x7fffffffffffffff));
  if (h->flags & EVS_HTTP_F_CONTENT_LENGTH)
    CHECK(evs__http_find_field(buf, h, "content-length") >= 0);
  if (h->flags & EVS_HTTP_F_CHUNKED)
    CHECK(evs__http_find_field(buf, h, "transfer-encoding") >= 0);
  if (h->flags & EVS_HTTP_F_HOST) {
    CHECK(is_request);
    CHECK(h->host_field < h->nfields);
    const evs__http_field *f = &h->fields[h->host_field];
    CHECK(evs__http_field_is(buf, f, "host"));
    CHECK(evs__http_is_valid_host(buf + f->value_off, f->value_len));
  }
  if (is_request && h->version_minor == 1)
    CHECK(h->flags & EVS_HTTP_F_HOST);
}

/* Scanner whole vs. growing byte by byte must agree; then scanner vs. parser must agree. */
static void one_head(const char *buf, size_t len, int is_request) {
  evs__http_scan sc;
  size_t hl = 0, hl2 = 0;
  memset(&sc, 0, sizeof(sc));
  int r = evs__http_scan_head(&sc, buf, len, MAX_HEAD, &hl);
  memset(&sc, 0, sizeof(sc));
  int r2 = EVS_HTTP_NEED_MORE;
  for (size_t n = 1; n <= len && r2 == EVS_HTTP_NEED_MORE; n++)
    r2 = evs__http_scan_head(&sc, buf, n, MAX_HEAD, &hl2);
  if (len == 0)
    r2 = evs__http_scan_head(&sc, buf, 0, MAX_HEAD, &hl2);
  CHECK(r == r2);
  if (r == EVS_HTTP_OK)
    CHECK(hl == hl2 && hl <= len && hl <= MAX_HEAD);

  evs__http_field fields[MAXF], fields2[MAXF];
  evs__http_head h, h2;
  memset(&h, 0, sizeof(h));
  h.fields = fields;
  h.max_fields = MAXF;
  const char *detail = NULL;
  /* The parser alone on all the bytes. It stops at the first empty line, as the scanner does. */
  int p = is_request ? evs__http_parse_request_detail(buf, len, &h, &detail)
                     : evs__http_parse_response_detail(buf, len, &h, &detail);
  CHECK(p == EVS_HTTP_OK || p < 0);
  if (p < 0)
    CHECK(detail != NULL);
  if (p == EVS_HTTP_OK) {
    check_head(buf, &h, is_request);
    /* A head the parser accepts is one the scanner finds, at the same place. */
    if (len <= MAX_HEAD || h.head_len <= MAX_HEAD)
      CHECK(r == EVS_HTTP_OK && hl == h.head_len);
  }
  if (r == EVS_HTTP_E_BAD)
    CHECK(p < 0); /* bare CR/LF before the end of the head */
  if (r == EVS_HTTP_OK) {
    memset(&h2, 0, sizeof(h2));
    h2.fields = fields2;
    h2.max_fields = MAXF;
    int p2 = is_request ? evs__http_parse_request(buf, hl, &h2)
                        : evs__http_parse_response(buf, hl, &h2);
    CHECK(p2 == p);
    if (p2 == EVS_HTTP_OK) {
      CHECK(h2.head_len == hl && h2.nfields == h.nfields && h2.flags == h.flags);
      CHECK(memcmp(fields, fields2, h.nfields * sizeof(fields[0])) == 0);
    }
  }
  (void)evs__http_result_status(p);
  CHECK(evs__http_result_reason(p) != NULL);
}

struct dec_result {
  int rc;
  int done;
  size_t consumed;
  size_t dlen;
  uint64_t hash;
};

/* Decode in pieces of `step` bytes (0: all at once), hashing the body. */
static void decode(const char *in, size_t len, size_t step, size_t max_trailer,
                   struct dec_result *o) {
  evs__http_chunked d;
  memset(&d, 0, sizeof(d));
  d.max_trailer_bytes = max_trailer;
  memset(o, 0, sizeof(*o));
  o->hash = 1469598103934665603ull;
  size_t off = 0;
  while (off < len && !d.done) {
    size_t end = step ? off - off % step + step : len;
    if (end > len)
      end = len;
    size_t used = 0, dl = 0;
    const char *dp = NULL;
    int r = evs__http_chunked_decode(&d, in + off, end - off, &used, &dp, &dl);
    if (r != EVS_HTTP_OK) {
      CHECK(r == EVS_HTTP_E_BAD);
      o->rc = r;
      return;
    }
    CHECK(used <= end - off);
    CHECK(used > 0 || d.done);
    if (dl > 0) {
      CHECK(dp >= in + off && dp + dl == in + off + used);
      for (size_t k = 0; k < dl; k++)
        o->hash = (o->hash ^ (unsigned char)dp[k]) * 1099511628211ull;
      o->dlen += dl;
    }
    off += used;
  }
  o->done = d.done;
  o->consumed = off;
}

static void chunked(const char *in, size_t len, size_t step, size_t max_trailer) {
  struct dec_result a, b, c;
  decode(in, len, 0, max_trailer, &a);
  decode(in, len, 1, max_trailer, &b);
  decode(in, len, step, max_trailer, &c);
  CHECK(a.rc == b.rc && a.rc == c.rc);
  if (a.rc == EVS_HTTP_OK) {
    CHECK(a.done == b.done && a.consumed == b.consumed && a.dlen == b.dlen && a.hash == b.hash);
    CHECK(a.done == c.done && a.consumed == c.consumed && a.dlen == c.dlen && a.hash == c.hash);
    CHECK(a.consumed <= len && a.dlen <= a.consumed);
    if (!a.done)
      CHECK(a.consumed == len);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 3 * MAX_HEAD)
    return 0;
  /* A private copy, so reading past the input is caught by ASan. */
  char *buf = malloc(size ? size : 1);
  if (buf == NULL)
    return 0;
  memcpy(buf, data, size);
  one_head(buf, size, 1);
  one_head(buf, size, 0);
  size_t step = size ? (size_t)(unsigned char)buf[0] % 7 + 2 : 2;
  size_t max_trailer = size > 1 ? (size_t)(unsigned char)buf[size - 1] : 0;
  chunked(buf, size, step, max_trailer);
  for (size_t i = 0; i + 1 < size && i < 64; i++)
    (void)evs__http_is_valid_host(buf + i, size - i < 80 ? size - i : 80);
  free(buf);
  return 0;
}
