/*
 * frame.c: the enclave protocol's framing (evs_enclave_proto.h) for the enclave process: parse
 * a request into items that point into the received message, build a response under the hard
 * message cap. Response buffers may hold plaintext (DECRYPT), so they grow by
 * allocate-copy-wipe rather than realloc and are wiped when done.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "enclave.h"

int evs__ep_parse(const uint8_t *body, size_t len, evs_ep_msg *ret, evs_ep_item *items) {
  memset(ret, 0, sizeof *ret);
  ret->items = items;
  if (len >= 8) ret->op = evs_ep_get_u16(body + 6);
  if (len >= 12) ret->request_id = evs_ep_get_u32(body + 8);
  if (len < EVS_EP_HEADER_LEN - 4 || len > EVS_EP_MAX_MESSAGE) return EVS_EP_E_PROTOCOL;
  ret->magic = evs_ep_get_u32(body);
  ret->version = evs_ep_get_u16(body + 4);
  ret->status = (int32_t)evs_ep_get_u32(body + 12);
  uint32_t n = evs_ep_get_u32(body + 16);
  if (ret->magic != EVS_EP_MAGIC || ret->version != EVS_EP_VERSION || n > EVS_EP_MAX_ITEMS)
    return EVS_EP_E_PROTOCOL;
  size_t off = EVS_EP_HEADER_LEN - 4;
  for (uint32_t i = 0; i < n; i++) {
    if (len - off < 4) return EVS_EP_E_PROTOCOL;
    uint32_t l = evs_ep_get_u32(body + off);
    off += 4;
    if (l > len - off) return EVS_EP_E_PROTOCOL;
    items[i].p = body + off;
    items[i].len = l;
    off += l;
  }
  if (off != len) return EVS_EP_E_PROTOCOL; /* trailing bytes: a framing bug somewhere */
  ret->nitems = n;
  return EVS_EP_OK;
}

#define BUF_MAX ((size_t)EVS_EP_MAX_MESSAGE + 4)

static int grow(evs_ep_buf *b, size_t need) {
  if (b->overflow) return -1;
  if (need > BUF_MAX || b->nitems >= EVS_EP_MAX_ITEMS) {
    b->overflow = 1;
    return -1;
  }
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < need) cap *= 2;
  if (cap > BUF_MAX) cap = BUF_MAX;
  uint8_t *p = malloc(cap);
  if (!p) {
    b->overflow = b->nomem = 1;
    return -1;
  }
  if (b->p) {
    memcpy(p, b->p, b->len);
    OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

void evs__ep_begin(evs_ep_buf *b, uint16_t op, uint32_t request_id, int32_t status) {
  if (b->p && b->len) OPENSSL_cleanse(b->p, b->len);
  b->len = 0;
  b->nitems = 0;
  b->overflow = b->nomem = 0;
  if (grow(b, EVS_EP_HEADER_LEN) < 0) return;
  evs_ep_put_u32(b->p, 0);
  evs_ep_put_u32(b->p + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(b->p + 8, EVS_EP_VERSION);
  evs_ep_put_u16(b->p + 10, op);
  evs_ep_put_u32(b->p + 12, request_id);
  evs_ep_put_u32(b->p + 16, (uint32_t)status);
  evs_ep_put_u32(b->p + 20, 0);
  b->len = EVS_EP_HEADER_LEN;
}

uint8_t *evs__ep_reserve(evs_ep_buf *b, size_t len) {
  if (len > BUF_MAX || grow(b, b->len + 4 + len) < 0) {
    b->overflow = 1;
    return NULL;
  }
  evs_ep_put_u32(b->p + b->len, (uint32_t)len);
  uint8_t *p = b->p + b->len + 4;
  b->len += 4 + len;
  b->nitems++;
  return p;
}

void evs__ep_shrink_last(evs_ep_buf *b, size_t reserved, size_t used) {
  if (b->overflow || used > reserved) return;
  size_t start = b->len - reserved - 4;
  evs_ep_put_u32(b->p + start, (uint32_t)used);
  OPENSSL_cleanse(b->p + start + 4 + used, reserved - used);
  b->len = start + 4 + used;
}

int evs__ep_add(evs_ep_buf *b, const void *data, size_t len) {
  uint8_t *p = evs__ep_reserve(b, len);
  if (!p) return -1;
  if (len) memcpy(p, data, len);
  return 0;
}

int evs__ep_add_status(evs_ep_buf *b, int32_t status, const void *a, size_t alen, const void *c,
                       size_t clen) {
  if (alen > BUF_MAX || clen > BUF_MAX) {
    b->overflow = 1;
    return -1;
  }
  uint8_t *p = evs__ep_reserve(b, 4 + alen + clen);
  if (!p) return -1;
  evs_ep_put_u32(p, (uint32_t)status);
  if (alen) memcpy(p + 4, a, alen);
  if (clen) memcpy(p + 4 + alen, c, clen);
  return 0;
}

void evs__ep_finish(evs_ep_buf *b) {
  if (b->overflow) {
    uint16_t op = 0;
    uint32_t id = 0;
    if (b->p && b->len >= EVS_EP_HEADER_LEN) {
      op = evs_ep_get_u16(b->p + 10);
      id = evs_ep_get_u32(b->p + 12);
    }
    int nomem = b->nomem;
    evs__ep_begin(b, op, id, nomem ? EVS_EP_E_INTERNAL : EVS_EP_E_INVALID);
    if (b->overflow) { /* not even a header fits: nothing sensible can be sent */
      b->len = 0;
      return;
    }
  }
  evs_ep_put_u32(b->p, (uint32_t)(b->len - 4));
  evs_ep_put_u32(b->p + 20, b->nitems);
}

void evs__ep_buf_done(evs_ep_buf *b) {
  if (b->p) {
    OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
  }
  memset(b, 0, sizeof *b);
}
