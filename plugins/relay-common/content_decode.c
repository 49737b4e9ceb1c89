/*
 * content_decode.c: HTTP content-coding decoder (contract in content_decode.h). Each coding is
 * a stage; a stage's output is the next stage's input and the last stage's output goes to the
 * caller, counted against max_out. zlib and libbrotli do the decoding; their allocations go
 * through a counting allocator so that a stream cannot make the decompressor itself grow past
 * max_mem.
 */
#include "content_decode.h"

#include <brotli/decode.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define OUT_CHUNK 16384

typedef struct cstage {
  int coding;
  int inited;    /* deflate: the decoder exists once the wrapper was sniffed */
  int got_input; /* any byte arrived: an empty body with a coding is accepted as empty */
  int ended;     /* the stream (or the current gzip member) ended */
  uint8_t hdr[2];
  size_t nhdr;
  z_stream z;
  BrotliDecoderState *br;
} cstage;

struct evs__cdecode {
  cstage st[EVS__CDEC_MAX_CODINGS];
  size_t n;
  uint64_t max_out, total;
  size_t max_mem, mem;
  int err;
  evs__cdecode_emit_fn emit;
  void *ud;
};

/* ---- counting allocator ------------------------------------------------------------------- */

typedef union mhdr {
  size_t size;
  max_align_t align;
} mhdr;

static void *c_alloc(evs__cdecode *d, size_t size) {
  if (size > d->max_mem - d->mem || size > SIZE_MAX - sizeof(mhdr)) return NULL;
  mhdr *h = malloc(sizeof *h + size);
  if (!h) return NULL;
  h->size = size;
  d->mem += size;
  return h + 1;
}

static void c_free(evs__cdecode *d, void *p) {
  if (!p) return;
  mhdr *h = (mhdr *)p - 1;
  d->mem -= h->size;
  free(h);
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
  if (size && items > SIZE_MAX / size) return Z_NULL;
  return c_alloc(opaque, (size_t)items * size);
}
static void z_free(voidpf opaque, voidpf p) { c_free(opaque, p); }
static void *b_alloc(void *opaque, size_t size) { return c_alloc(opaque, size); }
static void b_free(void *opaque, void *p) { c_free(opaque, p); }

/* ---- parsing ------------------------------------------------------------------------------ */

int evs__cdecode_parse(const char *value, size_t len, int *ret_codings) {
  int c[EVS__CDEC_MAX_CODINGS];
  size_t n = 0, i = 0;
  while (i <= len) {
    size_t s = i;
    while (i < len && value[i] != ',') i++;
    size_t e = i;
    while (s < e && (value[s] == ' ' || value[s] == '\t')) s++;
    while (e > s && (value[e - 1] == ' ' || value[e - 1] == '\t')) e--;
    size_t tl = e - s;
    const char *tok = value + s;
    int coding = 0;
    if (tl == 0 || (tl == 8 && strncasecmp(tok, "identity", 8) == 0)) {
      coding = 0; /* empty list elements are ignored (RFC 9110 §5.6.1), identity is a no-op */
    } else if ((tl == 4 && strncasecmp(tok, "gzip", 4) == 0) ||
               (tl == 6 && strncasecmp(tok, "x-gzip", 6) == 0)) {
      coding = EVS__CDEC_GZIP;
    } else if (tl == 7 && strncasecmp(tok, "deflate", 7) == 0) {
      coding = EVS__CDEC_DEFLATE;
    } else if (tl == 2 && strncasecmp(tok, "br", 2) == 0) {
      coding = EVS__CDEC_BR;
    } else {
      return EVS__CDEC_E_UNSUPPORTED;
    }
    if (coding) {
      if (n == EVS__CDEC_MAX_CODINGS) return EVS__CDEC_E_UNSUPPORTED;
      c[n++] = coding;
    }
    i++; /* past the comma (or the end) */
  }
  memcpy(ret_codings, c, n * sizeof *c);
  return (int)n;
}

size_t evs__cdecode_accept_encoding(const char *in, size_t len, char *out) {
  size_t o = 0, i = 0;
  while (in && i < len) {
    size_t s = i;
    while (i < len && in[i] != ',') i++;
    size_t e = i++;
    while (s < e && (in[s] == ' ' || in[s] == '\t')) s++;
    while (e > s && (in[e - 1] == ' ' || in[e - 1] == '\t')) e--;
    size_t cl = 0; /* the coding: up to ';' or whitespace */
    while (s + cl < e && in[s + cl] != ';' && in[s + cl] != ' ' && in[s + cl] != '\t') cl++;
    const char *c = in + s;
    int known = (cl == 4 && strncasecmp(c, "gzip", 4) == 0) ||
                (cl == 6 && strncasecmp(c, "x-gzip", 6) == 0) ||
                (cl == 7 && strncasecmp(c, "deflate", 7) == 0) ||
                (cl == 2 && strncasecmp(c, "br", 2) == 0) ||
                (cl == 8 && strncasecmp(c, "identity", 8) == 0);
    for (size_t k = s; known && k < e; k++) /* never a control byte into the request head */
      if (((unsigned char)in[k] < 0x20 && in[k] != '\t') || in[k] == 0x7f) known = 0;
    if (!known) continue;
    if (o) {
      memcpy(out + o, ", ", 2);
      o += 2;
    }
    memcpy(out + o, c, e - s);
    o += e - s;
  }
  if (o == 0) {
    memcpy(out, "identity", 8);
    o = 8;
  }
  out[o] = 0;
  return o;
}

/* ---- decoding ----------------------------------------------------------------------------- */

static int stage_feed(evs__cdecode *d, size_t i, const uint8_t *p, size_t n);

/* Output of stage i: to stage i+1, or to the caller. */
static int pass_on(evs__cdecode *d, size_t i, const uint8_t *p, size_t n) {
  if (i + 1 < d->n) return stage_feed(d, i + 1, p, n);
  if (d->max_out && n > d->max_out - d->total) return EVS__CDEC_E_TOOBIG;
  d->total += n;
  return d->emit(d->ud, (const char *)p, n);
}

static int z_start(evs__cdecode *d, cstage *s, int wbits) {
  s->z.zalloc = z_alloc;
  s->z.zfree = z_free;
  s->z.opaque = d;
  int r = inflateInit2(&s->z, wbits);
  if (r != Z_OK) return r == Z_MEM_ERROR ? EVS__CDEC_E_NOMEM : EVS__CDEC_E_CORRUPT;
  s->inited = 1;
  return 0;
}

static int z_run(evs__cdecode *d, size_t i, const uint8_t *p, size_t n) {
  cstage *s = &d->st[i];
  uint8_t out[OUT_CHUNK];
  while (n > 0) {
    if (s->ended) {
      /* Another gzip member may follow (RFC 1952 §2.2); anything else is trailing garbage. */
      if (s->coding != EVS__CDEC_GZIP) return EVS__CDEC_E_CORRUPT;
      if (inflateReset(&s->z) != Z_OK) return EVS__CDEC_E_CORRUPT;
      s->ended = 0;
    }
    uInt chunk = n > 1u << 30 ? 1u << 30 : (uInt)n;
    s->z.next_in = (Bytef *)(uintptr_t)p;
    s->z.avail_in = chunk;
    for (;;) {
      s->z.next_out = out;
      s->z.avail_out = sizeof out;
      int r = inflate(&s->z, Z_NO_FLUSH);
      size_t produced = sizeof out - s->z.avail_out;
      if (r == Z_MEM_ERROR) return EVS__CDEC_E_NOMEM;
      if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) return EVS__CDEC_E_CORRUPT;
      if (produced) {
        int e = pass_on(d, i, out, produced);
        if (e < 0) return e;
      }
      if (r == Z_STREAM_END) {
        s->ended = 1;
        break;
      }
      if (r == Z_BUF_ERROR || (s->z.avail_in == 0 && s->z.avail_out > 0)) break;
    }
    size_t used = chunk - s->z.avail_in;
    p += used;
    n -= used;
    if (!s->ended && used < chunk) return EVS__CDEC_E_CORRUPT; /* no progress: cannot happen */
  }
  return 0;
}

/* "deflate" is the zlib format (RFC 9110 §8.4.1.2), but some servers send raw deflate and
 * browsers accept both: a zlib header (CM 8, CINFO <= 7, check bits) picks zlib. */
static int deflate_feed(evs__cdecode *d, size_t i, const uint8_t *p, size_t n) {
  cstage *s = &d->st[i];
  if (!s->inited) {
    while (s->nhdr < 2 && n > 0) {
      s->hdr[s->nhdr++] = *p++;
      n--;
    }
    if (s->nhdr < 2) return 0;
    int zlib = (s->hdr[0] & 0x0f) == 8 && (s->hdr[0] >> 4) <= 7 &&
               ((unsigned)s->hdr[0] << 8 | s->hdr[1]) % 31 == 0;
    int r = z_start(d, s, zlib ? 15 : -15);
    if (r < 0) return r;
    if ((r = z_run(d, i, s->hdr, 2)) < 0) return r;
  }
  return z_run(d, i, p, n);
}

static int br_feed(evs__cdecode *d, size_t i, const uint8_t *p, size_t n) {
  cstage *s = &d->st[i];
  uint8_t out[OUT_CHUNK];
  if (n > 0 && s->ended) return EVS__CDEC_E_CORRUPT;
  size_t avail_in = n;
  const uint8_t *next_in = p;
  while (avail_in > 0) {
    size_t avail_out = sizeof out;
    uint8_t *next_out = out;
    BrotliDecoderResult r =
        BrotliDecoderDecompressStream(s->br, &avail_in, &next_in, &avail_out, &next_out, NULL);
    if (r == BROTLI_DECODER_RESULT_ERROR) {
      BrotliDecoderErrorCode c = BrotliDecoderGetErrorCode(s->br);
      int alloc = c <= BROTLI_DECODER_ERROR_ALLOC_CONTEXT_MODES &&
                  c >= BROTLI_DECODER_ERROR_ALLOC_BLOCK_TYPE_TREES;
      return alloc ? EVS__CDEC_E_NOMEM : EVS__CDEC_E_CORRUPT;
    }
    size_t produced = sizeof out - avail_out;
    if (produced) {
      int e = pass_on(d, i, out, produced);
      if (e < 0) return e;
    }
    if (r == BROTLI_DECODER_RESULT_SUCCESS) {
      s->ended = 1;
      return avail_in > 0 ? EVS__CDEC_E_CORRUPT : 0;
    }
    if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) break;
  }
  /* Output may still be pending with all input consumed. */
  while (BrotliDecoderHasMoreOutput(s->br)) {
    size_t avail_out = sizeof out, zero = 0;
    uint8_t *next_out = out;
    const uint8_t *none = NULL;
    BrotliDecoderResult r =
        BrotliDecoderDecompressStream(s->br, &zero, &none, &avail_out, &next_out, NULL);
    size_t produced = sizeof out - avail_out;
    if (produced) {
      int e = pass_on(d, i, out, produced);
      if (e < 0) return e;
    }
    if (r == BROTLI_DECODER_RESULT_ERROR) return EVS__CDEC_E_CORRUPT;
    if (r == BROTLI_DECODER_RESULT_SUCCESS) s->ended = 1;
    if (r != BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT) break;
  }
  return 0;
}

static int stage_feed(evs__cdecode *d, size_t i, const uint8_t *p, size_t n) {
  cstage *s = &d->st[i];
  if (n == 0) return 0;
  s->got_input = 1;
  switch (s->coding) {
  case EVS__CDEC_GZIP: return z_run(d, i, p, n);
  case EVS__CDEC_DEFLATE: return deflate_feed(d, i, p, n);
  default: return br_feed(d, i, p, n);
  }
}

int evs__cdecode_new(const int *codings, size_t n, uint64_t max_out, size_t max_mem,
                     evs__cdecode_emit_fn emit, void *ud, evs__cdecode **ret) {
  if (!codings || n == 0 || n > EVS__CDEC_MAX_CODINGS || !emit || !ret) return -EINVAL;
  evs__cdecode *d = calloc(1, sizeof *d);
  if (!d) return EVS__CDEC_E_NOMEM;
  d->max_out = max_out;
  d->max_mem = max_mem ? max_mem : EVS__CDEC_MEM_DEFAULT;
  d->emit = emit;
  d->ud = ud;
  /* Codings are listed in the order applied: undo the last first. */
  for (size_t k = 0; k < n; k++) {
    cstage *s = &d->st[k];
    s->coding = codings[n - 1 - k];
    d->n = k + 1;
    int r = 0;
    if (s->coding == EVS__CDEC_GZIP) {
      r = z_start(d, s, 15 + 16);
    } else if (s->coding == EVS__CDEC_BR) {
      if (!(s->br = BrotliDecoderCreateInstance(b_alloc, b_free, d))) r = EVS__CDEC_E_NOMEM;
    } else if (s->coding != EVS__CDEC_DEFLATE) {
      r = -EINVAL;
    }
    if (r < 0) {
      evs__cdecode_free(d);
      return r;
    }
  }
  *ret = d;
  return 0;
}

int evs__cdecode_feed(evs__cdecode *d, const uint8_t *p, size_t n) {
  if (d->err) return d->err;
  int r = stage_feed(d, 0, p, n);
  if (r < 0) d->err = r;
  return r;
}

int evs__cdecode_finish(evs__cdecode *d) {
  if (d->err) return d->err;
  for (size_t i = 0; i < d->n; i++) {
    cstage *s = &d->st[i];
    if (s->got_input && !s->ended) {
      d->err = EVS__CDEC_E_CORRUPT;
      return d->err;
    }
  }
  return 0;
}

uint64_t evs__cdecode_total(const evs__cdecode *d) { return d->total; }

void evs__cdecode_free(evs__cdecode *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) {
    cstage *s = &d->st[i];
    if (s->inited) inflateEnd(&s->z);
    if (s->br) BrotliDecoderDestroyInstance(s->br);
  }
  free(d);
}
