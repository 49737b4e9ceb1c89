/*
 * ops.c: the enclave protocol's operations (evs_enclave_proto.h), one function each, and
 * evs__ep_handle, which turns one request message into one response message. Requests come from
 * the enclave plugin, which is trusted to ask but not to see keys: every input is checked here
 * (item counts, lengths, app ids, curves, roles, types), and a bad one gets an error status,
 * never a crash. Buffers that held plaintext are wiped before they are freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "enclave.h"

/* The protocol's file limits are the crypto library's. */
_Static_assert(EVS_EP_FILE_MAX_PLAINTEXT == EVS_EC_FILE_MAX_PLAINTEXT, "file plaintext limit");
_Static_assert(EVS_EP_FILE_OVERHEAD == EVS_EC_FILE_OVERHEAD, "%EVENC overhead");

#ifndef EVS_ENCLAVE_VERSION
#define EVS_ENCLAVE_VERSION "0"
#endif

/* ---- value checks -------------------------------------------------------------------------- */

int evs__json_number_valid(const uint8_t *s, size_t len) {
  size_t i = 0;
  if (i < len && s[i] == '-') i++;
  if (i >= len) return 0;
  if (s[i] == '0') {
    i++;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < len && s[i] >= '0' && s[i] <= '9') i++;
  } else {
    return 0;
  }
  if (i < len && s[i] == '.') {
    i++;
    size_t d = i;
    while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return 0;
  }
  if (i < len && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < len && (s[i] == '+' || s[i] == '-')) i++;
    size_t d = i;
    while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return 0;
  }
  return i == len;
}

/* Whether a decrypted value's plaintext is of its type tag (evs_enclave_proto.h, DECRYPT): a
 * :number is a JSON number or "null" (JSON.stringify of NaN and +-Infinity, which the SDK
 * encrypts as numbers), a :boolean is "true" or "false". */
static int typed_plaintext_valid(evs_ec_type type, const uint8_t *s, size_t len) {
  switch (type) {
    case EVS_EC_STRING: return 1;
    case EVS_EC_NUMBER:
      return evs__json_number_valid(s, len) || (len == 4 && memcmp(s, "null", 4) == 0);
    case EVS_EC_BOOLEAN:
      return (len == 4 && memcmp(s, "true", 4) == 0) || (len == 5 && memcmp(s, "false", 5) == 0);
  }
  return 0;
}

/* ECMAScript WhiteSpace and LineTerminator (what String.prototype.trim removes). */
static int js_space(uint32_t c) {
  switch (c) {
    case 0x09: case 0x0a: case 0x0b: case 0x0c: case 0x0d: case 0x20: case 0xa0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000: case 0xfeff:
      return 1;
  }
  return c >= 0x2000 && c <= 0x200a;
}

/* Decodes the (well-formed or not) UTF-8 sequence at s[0..len); returns its length, or 0. */
static size_t utf8_at(const uint8_t *s, size_t len, uint32_t *cp) {
  if (len == 0) return 0;
  uint8_t b = s[0];
  size_t n = b < 0x80               ? 1
             : (b & 0xe0) == 0xc0 ? 2
             : (b & 0xf0) == 0xe0 ? 3
             : (b & 0xf8) == 0xf0 ? 4
                                  : 0;
  if (n == 0 || n > len) return 0;
  uint32_t c = n == 1 ? b : n == 2 ? (b & 0x1fu) : n == 3 ? (b & 0x0fu) : (b & 0x07u);
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3fu);
  }
  *cp = c;
  return n;
}

size_t evs__js_trim(const uint8_t *s, size_t len, size_t *ret_start) {
  size_t a = 0, z = len;
  uint32_t c;
  size_t n;
  while (a < z && (n = utf8_at(s + a, z - a, &c)) && js_space(c)) a += n;
  while (z > a) {
    size_t k = z - 1;
    while (k > a && z - k < 4 && (s[k] & 0xc0) == 0x80) k--;
    n = utf8_at(s + k, z - k, &c);
    if (n != z - k || !js_space(c)) break;
    z = k;
  }
  *ret_start = a;
  return z - a;
}

static int parse_curve(const evs_ep_item *it, evs_ec_curve *ret) {
  if (it->len == 9 && memcmp(it->p, "secp256k1", 9) == 0) {
    *ret = EVS_EC_SECP256K1;
    return 0;
  }
  if (it->len == 10 && memcmp(it->p, "prime256v1", 10) == 0) {
    *ret = EVS_EC_P256;
    return 0;
  }
  return -1;
}

/* Statuses of the crypto library, as a caller of the protocol needs them. */
static int32_t map_decrypt_status(int r) {
  switch (r) {
    case EVS_EC_OK: return EVS_EP_OK;
    case EVS_EC_EFORMAT: case EVS_EC_EVERSION: case EVS_EC_ETYPE: case EVS_EC_EBASE64:
    case EVS_EC_ETOOBIG: case EVS_EC_EINVAL:
      return EVS_EP_E_INVALID;
    case EVS_EC_ENOMEM: case EVS_EC_ESPACE: case EVS_EC_ECRYPTO: case EVS_EC_ERANDOM:
      return EVS_EP_E_INTERNAL;
    default: /* EAUTH, EPOINT, ENOKEY, ECRC, EMETADATA: not this app's, or tampered */
      return EVS_EP_E_DECRYPT;
  }
}

static int32_t map_encrypt_status(int r) {
  switch (r) {
    case EVS_EC_OK: return EVS_EP_OK;
    case EVS_EC_EROLE: case EVS_EC_ETOOBIG: case EVS_EC_EINVAL: case EVS_EC_EROLEFILE:
      return EVS_EP_E_INVALID;
    default: return EVS_EP_E_INTERNAL;
  }
}

/* ---- ops --------------------------------------------------------------------------------- */

static int32_t op_hello(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 0) return EVS_EP_E_PROTOCOL;
  /* A live check that the sandbox holds: both calls must fail inside the enclave. */
  int fd = open("/", O_RDONLY | O_CLOEXEC | O_DIRECTORY);
  int open_errno = fd < 0 ? errno : 0;
  if (fd >= 0) close(fd);
  int sk = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int socket_errno = sk < 0 ? errno : 0;
  if (sk >= 0) close(sk);
  /* The pid and tag identify the process to a client that attached to an enclave it did not
   * start (proto header, EVS_EP_ATTACH); fields are appended, never reordered. */
  const char *tag = evs__enclave_tag(e);
  char text[320];
  int n = snprintf(text, sizeof text,
                   "evserver-enclave %s sandbox=%s open=%s socket=%s mlock=%s pid=%ld%s%s",
                   EVS_ENCLAVE_VERSION, evs__enclave_sandbox(e),
                   open_errno == EPERM ? "EPERM" : open_errno ? "error" : "ALLOWED",
                   socket_errno == EPERM ? "EPERM" : socket_errno ? "error" : "ALLOWED",
                   evs__enclave_mlock(e), (long)getpid(), tag ? " tag=" : "", tag ? tag : "");
  if (n < 0 || (size_t)n >= sizeof text) return EVS_EP_E_INTERNAL;
  uint8_t v[2];
  evs_ep_put_u16(v, EVS_EP_VERSION);
  evs__ep_add(out, v, 2);
  evs__ep_add(out, text, (size_t)n);
  return EVS_EP_OK;
}

static int32_t op_app_create(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 1) return EVS_EP_E_PROTOCOL;
  evs_app_created *c = OPENSSL_secure_zalloc(sizeof *c); /* holds the token */
  if (!c) return EVS_EP_E_INTERNAL;
  int32_t r = evs__app_create(e, m->items[0].p, m->items[0].len, c);
  if (r == EVS_EP_OK) {
    evs__ep_add(out, c->token, EVS_APP_TOKEN_LEN);
    evs__ep_add(out, c->pub[0], EVS_EC_PUB_LEN);
    evs__ep_add(out, c->pub[1], EVS_EC_PUB_LEN);
    evs__ep_add(out, c->share1, sizeof c->share1);
    evs__ep_add(out, c->share2, sizeof c->share2);
    evs__ep_add(out, c->wrapped, sizeof c->wrapped);
  }
  OPENSSL_secure_clear_free(c, sizeof *c);
  return r;
}

static int32_t op_app_unlock(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 5) return EVS_EP_E_PROTOCOL;
  const evs_ep_item *it = m->items;
  uint8_t pub[2][EVS_EC_PUB_LEN];
  int32_t r = evs__app_unlock(e, it[0].p, it[0].len, it[1].p, it[1].len, it[2].p, it[2].len,
                              it[3].p, it[3].len, it[4].p, it[4].len, pub);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, pub[0], EVS_EC_PUB_LEN);
  evs__ep_add(out, pub[1], EVS_EC_PUB_LEN);
  return EVS_EP_OK;
}

static int32_t op_app_lock(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 1) return EVS_EP_E_PROTOCOL;
  if (!evs_app_id_valid(m->items[0].p, m->items[0].len)) return EVS_EP_E_INVALID;
  evs__app_lock(e, m->items[0].p, m->items[0].len); /* idempotent */
  return EVS_EP_OK;
}

static int32_t op_app_status(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 1) return EVS_EP_E_PROTOCOL;
  if (!evs_app_id_valid(m->items[0].p, m->items[0].len)) return EVS_EP_E_INVALID;
  evs_app *a = evs__app_find(e, m->items[0].p, m->items[0].len);
  uint8_t unlocked = a ? 1 : 0;
  evs__ep_add(out, &unlocked, 1);
  evs__ep_add(out, a ? a->pub[0] : NULL, a ? EVS_EC_PUB_LEN : 0);
  evs__ep_add(out, a ? a->pub[1] : NULL, a ? EVS_EC_PUB_LEN : 0);
  return EVS_EP_OK;
}

static int32_t find_app(evs_enclave *e, const evs_ep_item *id, evs_app **ret) {
  if (!evs_app_id_valid(id->p, id->len)) return EVS_EP_E_INVALID;
  *ret = evs__app_find(e, id->p, id->len);
  return *ret ? EVS_EP_OK : EVS_EP_E_NO_APP;
}

static int32_t op_encrypt(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems < 3) return EVS_EP_E_PROTOCOL;
  evs_app *app;
  int32_t r = find_app(e, &m->items[0], &app);
  if (r != EVS_EP_OK) return r;
  evs_ec_curve curve;
  if (parse_curve(&m->items[1], &curve) < 0) return EVS_EP_E_INVALID;
  char role[EVS_EC_ROLE_MAX + 1];
  const char *rolep = NULL;
  size_t role_len = m->items[2].len;
  if (role_len) {
    if (!evs_ec_role_valid((const char *)m->items[2].p, role_len)) return EVS_EP_E_INVALID;
    memcpy(role, m->items[2].p, role_len);
    role[role_len] = 0;
    rolep = role;
  }
  evs_ec_encryptor *enc = evs__app_encryptor(app, curve);
  if (!enc) return EVS_EP_E_INTERNAL;

  size_t n = m->nitems - 3;
  if (n == 0) return EVS_EP_OK;
  evs_ec_encrypt_field *f = calloc(n, sizeof *f);
  uint8_t *ok = calloc(n, 1);
  char *arena = NULL;
  size_t cap = 0;
  r = EVS_EP_E_INTERNAL;
  if (!f || !ok) goto done;
  for (size_t i = 0; i < n; i++) {
    const evs_ep_item *it = &m->items[3 + i];
    if (it->len < 2 || it->p[1] != ':') continue;
    const uint8_t *v = it->p + 2;
    size_t len = it->len - 2;
    switch (it->p[0]) {
      case 's': {
        size_t start;
        len = evs__js_trim(v, len, &start); /* as the SDK does (PROTOCOL.md §3.3) */
        v += start;
        f[i].type = EVS_EC_STRING;
        break;
      }
      case 'r': /* exactly as sent (the relay) */
        f[i].type = EVS_EC_STRING;
        break;
      case 'n':
        if (!evs__json_number_valid(v, len)) continue;
        f[i].type = EVS_EC_NUMBER;
        break;
      case 'b':
        if (!((len == 4 && memcmp(v, "true", 4) == 0) || (len == 5 && memcmp(v, "false", 5) == 0)))
          continue;
        f[i].type = EVS_EC_BOOLEAN;
        break;
      default:
        continue;
    }
    f[i].data = v;
    f[i].len = len;
    f[i].role = rolep;
    ok[i] = 1;
    size_t bound = evs_ec_encrypt_bound(len, rolep ? role_len : 0);
    if (bound > EVS_EP_MAX_MESSAGE || cap > EVS_EP_MAX_MESSAGE) { /* the response cannot fit */
      r = EVS_EP_E_INVALID;
      goto done;
    }
    cap += bound;
  }
  /* Encrypt the valid fields in one batch (one ephemeral key where the window allows). */
  size_t nvalid = 0;
  for (size_t i = 0; i < n; i++)
    if (ok[i]) f[nvalid++] = f[i];
  if (nvalid) {
    arena = malloc(cap);
    if (!arena) goto done;
    if (evs_ec_encrypt_batch(enc, f, nvalid, arena, cap) < 0) goto done;
  }
  for (size_t i = 0, j = 0; i < n; i++) {
    if (!ok[i]) {
      evs__ep_add_status(out, EVS_EP_E_INVALID, NULL, 0, NULL, 0);
      continue;
    }
    const evs_ec_encrypt_field *x = &f[j++];
    if (x->status == EVS_EC_OK)
      evs__ep_add_status(out, EVS_EP_OK, x->out, x->out_len, NULL, 0);
    else
      evs__ep_add_status(out, map_encrypt_status(x->status), NULL, 0, NULL, 0);
  }
  r = EVS_EP_OK;
done:
  free(arena); /* ciphertext only */
  free(ok);
  if (f) OPENSSL_clear_free(f, n * sizeof *f);
  return r;
}

static int32_t op_decrypt(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out, int with_role) {
  if (m->nitems < 1) return EVS_EP_E_PROTOCOL;
  evs_app *app;
  int32_t r = find_app(e, &m->items[0], &app);
  if (r != EVS_EP_OK) return r;
  size_t n = m->nitems - 1;
  if (n == 0) return EVS_EP_OK;
  size_t cap = 0;
  for (size_t i = 0; i < n; i++) cap += m->items[1 + i].len; /* <= the message size */
  evs_ec_decrypt_field *f = calloc(n, sizeof *f);
  uint8_t *arena = malloc(cap ? cap : 1);
  r = EVS_EP_E_INTERNAL;
  if (!f || !arena) goto done;
  for (size_t i = 0; i < n; i++) {
    f[i].s = (const char *)m->items[1 + i].p;
    f[i].len = m->items[1 + i].len;
  }
  if (evs_ec_decrypt_batch(app->dec, f, n, arena, cap) < 0) goto done;
  for (size_t i = 0; i < n; i++) {
    if (f[i].status != EVS_EC_OK) {
      evs__ep_add_status(out, map_decrypt_status(f[i].status), NULL, 0, NULL, 0);
      continue;
    }
    if (!typed_plaintext_valid(f[i].plain.type, f[i].plain.data, f[i].plain.len)) {
      /* Relabelled (RFVC / Tk9D do not authenticate the tag): refused like a forgery. */
      evs__ep_add_status(out, EVS_EP_E_DECRYPT, NULL, 0, NULL, 0);
      continue;
    }
    uint8_t meta[2 + EVS_EC_ROLE_MAX] = {(uint8_t)f[i].plain.type, 0};
    size_t meta_len = 1;
    if (with_role) {
      size_t rl = f[i].plain.has_metadata ? strnlen(f[i].plain.meta.role, EVS_EC_ROLE_MAX) : 0;
      meta[1] = (uint8_t)rl;
      memcpy(meta + 2, f[i].plain.meta.role, rl);
      meta_len = 2 + rl;
    }
    evs__ep_add_status(out, EVS_EP_OK, meta, meta_len, f[i].plain.data, f[i].plain.len);
  }
  r = EVS_EP_OK;
done:
  if (arena) OPENSSL_clear_free(arena, cap ? cap : 1);
  if (f) OPENSSL_clear_free(f, n * sizeof *f);
  return r;
}

static int32_t op_encrypt_file(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 3) return EVS_EP_E_PROTOCOL;
  evs_app *app;
  int32_t r = find_app(e, &m->items[0], &app);
  if (r != EVS_EP_OK) return r;
  evs_ec_curve curve;
  if (parse_curve(&m->items[1], &curve) < 0) return EVS_EP_E_INVALID;
  size_t len = m->items[2].len;
  if (len > EVS_EC_FILE_MAX_PLAINTEXT) return EVS_EP_E_INVALID;
  evs_ec_encryptor *enc = evs__app_encryptor(app, curve);
  if (!enc) return EVS_EP_E_INTERNAL;
  size_t cap = len + EVS_EC_FILE_OVERHEAD, used = 0;
  uint8_t *p = evs__ep_reserve(out, cap);
  if (!p) return EVS_EP_E_INVALID;
  int er = evs_ec_encrypt_file(enc, m->items[2].p, len, p, cap, &used);
  if (er != EVS_EC_OK) return map_encrypt_status(er); /* the caller discards out's items */
  evs__ep_shrink_last(out, cap, used);
  return EVS_EP_OK;
}

static int32_t op_decrypt_file(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 2) return EVS_EP_E_PROTOCOL;
  evs_app *app;
  int32_t r = find_app(e, &m->items[0], &app);
  if (r != EVS_EP_OK) return r;
  size_t len = m->items[1].len;
  if (len < EVS_EC_FILE_OVERHEAD) return EVS_EP_E_INVALID;
  size_t cap = len - EVS_EC_FILE_OVERHEAD, used = 0;
  uint8_t *p = evs__ep_reserve(out, cap);
  if (!p) return EVS_EP_E_INVALID;
  int dr = evs_ec_decrypt_file(app->dec, m->items[1].p, len, p, cap, &used, NULL);
  if (dr != EVS_EC_OK) return map_decrypt_status(dr);
  evs__ep_shrink_last(out, cap, used);
  return EVS_EP_OK;
}

static int32_t op_ca_create(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 2 || m->items[1].len != 4) return EVS_EP_E_PROTOCOL;
  char *pem = NULL;
  uint8_t *sealed = NULL;
  size_t pem_len = 0, sealed_len = 0;
  int32_t r = evs__ca_create(e, m->items[0].p, m->items[0].len, evs_ep_get_u32(m->items[1].p),
                             &pem, &pem_len, &sealed, &sealed_len);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, pem, pem_len);
  evs__ep_add(out, sealed, sealed_len);
  free(pem);
  free(sealed);
  return EVS_EP_OK;
}

static int32_t op_ca_sign(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems < 5 || m->items[3].len != 4) return EVS_EP_E_PROTOCOL;
  const evs_ep_item *it = m->items;
  char *pem = NULL;
  size_t pem_len = 0;
  int32_t r = evs__ca_sign(e, it[0].p, it[0].len, it[1].p, it[1].len, it[2].p, it[2].len,
                           evs_ep_get_u32(it[3].p), it + 4, m->nitems - 4, &pem, &pem_len);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, pem, pem_len);
  free(pem);
  return EVS_EP_OK;
}

static int32_t op_attest_root_create(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 2 || m->items[1].len != 4) return EVS_EP_E_PROTOCOL;
  uint8_t *der = NULL, *sealed = NULL;
  size_t der_len = 0, sealed_len = 0;
  int32_t r = evs__attest_root_create(e, m->items[0].p, m->items[0].len,
                                      evs_ep_get_u32(m->items[1].p), &der, &der_len, &sealed,
                                      &sealed_len);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, der, der_len);
  evs__ep_add(out, sealed, sealed_len);
  free(der);
  free(sealed);
  return EVS_EP_OK;
}

static int32_t op_attest_node_create(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 3) return EVS_EP_E_PROTOCOL;
  const evs_ep_item *it = m->items;
  uint8_t *der = NULL, *sealed = NULL;
  size_t der_len = 0, sealed_len = 0;
  int32_t r = evs__attest_node_create(e, it[0].p, it[0].len, it[1].p, it[1].len, it[2].p,
                                      it[2].len, &der, &der_len, &sealed, &sealed_len);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, der, der_len);
  evs__ep_add(out, sealed, sealed_len);
  free(der);
  free(sealed);
  return EVS_EP_OK;
}

static int32_t op_attest_chain(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 3) return EVS_EP_E_PROTOCOL;
  const evs_ep_item *it = m->items;
  int32_t r = evs__attest_chain(e, it[0].p, it[0].len, it[1].p, it[1].len, it[2].p, it[2].len);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, it[1].p, it[1].len); /* the chain, leaf first */
  evs__ep_add(out, it[0].p, it[0].len);
  return EVS_EP_OK;
}

static int32_t op_attest_sign(evs_enclave *e, const evs_ep_msg *m, evs_ep_buf *out) {
  if (m->nitems != 3) return EVS_EP_E_PROTOCOL;
  const evs_ep_item *it = m->items;
  uint8_t sig[EVS_ATTEST_SIG_LEN];
  int32_t r = evs__attest_sign(e, it[0].p, it[0].len, it[1].p, it[1].len, it[2].p, it[2].len,
                               sig);
  if (r != EVS_EP_OK) return r;
  evs__ep_add(out, sig, sizeof sig);
  return EVS_EP_OK;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

void evs__ep_handle(evs_enclave *e, const uint8_t *body, size_t len, evs_ep_buf *out) {
  static evs_ep_item items[EVS_EP_MAX_ITEMS]; /* single-threaded process (enclave.h) */
  evs_ep_msg m;
  int32_t r = evs__ep_parse(body, len, &m, items);
  evs__ep_begin(out, m.op, m.request_id, 0);
  if (r == EVS_EP_OK && m.status != 0) r = EVS_EP_E_PROTOCOL; /* requests carry status 0 */
  if (r == EVS_EP_OK) {
    switch (m.op) {
      case EVS_EP_HELLO: r = op_hello(e, &m, out); break;
      case EVS_EP_APP_CREATE: r = op_app_create(e, &m, out); break;
      case EVS_EP_APP_UNLOCK: r = op_app_unlock(e, &m, out); break;
      case EVS_EP_APP_LOCK: r = op_app_lock(e, &m, out); break;
      case EVS_EP_APP_STATUS: r = op_app_status(e, &m, out); break;
      case EVS_EP_ENCRYPT: r = op_encrypt(e, &m, out); break;
      case EVS_EP_DECRYPT: r = op_decrypt(e, &m, out, 0); break;
      case EVS_EP_DECRYPT_ROLE: r = op_decrypt(e, &m, out, 1); break;
      case EVS_EP_ENCRYPT_FILE: r = op_encrypt_file(e, &m, out); break;
      case EVS_EP_DECRYPT_FILE: r = op_decrypt_file(e, &m, out); break;
      case EVS_EP_CA_CREATE: r = op_ca_create(e, &m, out); break;
      case EVS_EP_CA_SIGN: r = op_ca_sign(e, &m, out); break;
      case EVS_EP_ATTEST_ROOT_CREATE: r = op_attest_root_create(e, &m, out); break;
      case EVS_EP_ATTEST_NODE_CREATE: r = op_attest_node_create(e, &m, out); break;
      case EVS_EP_ATTEST_CHAIN: r = op_attest_chain(e, &m, out); break;
      case EVS_EP_ATTEST_SIGN: r = op_attest_sign(e, &m, out); break;
      /* ATTACH carries a descriptor and is answered by nobody: main.c's loop takes it before
       * a frame gets here. Anyone else (a unit test, the fuzzer) gets the unknown-op error. */
      case EVS_EP_ATTACH: r = EVS_EP_E_UNKNOWN_OP; break;
      default: r = EVS_EP_E_UNKNOWN_OP; break;
    }
  }
  if (r != EVS_EP_OK) /* an error response carries no items (and no half-written plaintext) */
    evs__ep_begin(out, m.op, m.request_id, r);
  evs__ep_finish(out);
}
