/*
 * api.c: the SDK-facing Evervault API on the api listener (docs: /work/shared PROTOCOL.md §2,
 * README.md here): GET /cages/key and GET /keys (api-key header), POST /decrypt (Basic
 * appId:apiKey; JSON or an %EVENC file), POST /encrypt (JSON or a file). Also the request
 * context, the JSON field walkers and small helpers the admin endpoints share.
 *
 * Every encrypt or decrypt request is one enclave round trip: all fields travel in one batch.
 * Decryption fails closed: one field that does not decrypt fails the whole request (422), and a
 * dead or slow enclave answers 503, never plaintext and never a hang. Parameters are checked
 * before anything is encrypted, and refused by name when not understood (never dropped); body
 * limits are exact (README.md, "Parameters" and "Limits").
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "enclave_int.h"
#include "evs_enclave_proto.h"

enum { API_KEYS = 100, API_ENCRYPT, API_DECRYPT, API_CST };

/* ---- the request context ------------------------------------------------------------------ */

static void ctx_free(enc_ctx *x) {
  if (!x) return;
  json_decref(x->root);
  json_decref(x->body_obj);
  free(x->slots);
  if (x->api_key) {
    OPENSSL_cleanse(x->api_key, strlen(x->api_key));
    free(x->api_key);
  }
  if (x->token) {
    OPENSSL_cleanse(x->token, strlen(x->token));
    free(x->token);
  }
  if (x->body) {
    OPENSSL_cleanse(x->body, x->body_len);
    free(x->body);
  }
  free(x);
}

static void ctx_release(void *p) {
  enc_ctx *x = p;
  x->req = NULL;
  if (!x->pending) ctx_free(x);
}

enc_ctx *enc_ctx_new(enclave_state *st, evs_request *req) {
  enc_ctx *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->st = st;
  x->req = req;
  st->host->request_set_data(req, st->plugin, x, ctx_release);
  return x;
}

int enc_ctx_resume(enc_ctx *x) {
  x->pending = 0;
  if (!x->req) {
    ctx_free(x);
    return 0;
  }
  return 1;
}

static void run_step(enc_ctx *x, int status, const uint8_t *data, size_t len) {
  if (!enc_ctx_resume(x)) return;
  if (x->err_status) {
    enc_reply_error(x, x->err_status, x->err_code, x->err_detail);
  } else if (status < 0) {
    if (status == -E2BIG)
      enc_reply_error(x, 413, "payload-too-large",
                      x->too_big ? x->too_big : "The request body is too large");
    else if (status == -ENOMEM)
      enc_reply_error(x, 500, "internal-error", "Out of memory");
    else
      enc_reply_error(x, 400, "bad-request", "The request body could not be read");
  } else {
    x->step(x, data, len);
  }
}

static void on_step_timer(void *arg) {
  enc_ctx *x = arg;
  x->st->host->timer_free(x->timer);
  x->timer = NULL;
  /* The body (if any) moves out of the ctx: steps keep what they need themselves. */
  uint8_t *body = x->body;
  size_t len = x->body_len;
  x->body = NULL;
  x->body_len = 0;
  run_step(x, x->body_status, body, len);
  if (body) {
    OPENSSL_cleanse(body, len);
    free(body);
  }
}

/* Not even from the body callback may the plugin answer at once (the host goes on using the
 * request after it returns): keep a copy and continue on a zero timer. */
static void on_step_body(void *arg, int status, const uint8_t *data, size_t len) {
  enc_ctx *x = arg;
  x->body_status = status;
  if (status == 0 && x->req && !(x->body = malloc(len ? len : 1)))
    x->body_status = -ENOMEM;
  if (x->body) {
    if (len) memcpy(x->body, data, len);
    x->body_len = len;
  }
  /* The host frees its buffer without wiping it; it may hold an app token or plaintext. */
  if (data && len) OPENSSL_cleanse((uint8_t *)data, len);
  x->timer = x->st->host->timer_start(x->st->plugin, 0, 0, on_step_timer, x);
  if (!x->timer) {
    free(x->body);
    x->body = NULL;
    x->body_len = 0;
    run_step(x, -ENOMEM, NULL, 0);
  }
}

int enc_continue(enc_ctx *x, int read_body, enc_step_fn step) {
  const evs_host *h = x->st->host;
  x->step = step;
  x->pending = 1;
  int r = 0;
  if (read_body && !x->err_status) {
    r = h->read_body(x->req, x->body_max, on_step_body, x);
    if (r == 0) return EVS_HANDLED;
  }
  x->body_status = r;
  x->timer = h->timer_start(x->st->plugin, 0, 0, on_step_timer, x);
  if (!x->timer) { /* out of memory: the one synchronous answer left */
    x->pending = 0;
    h->respond_error(x->req, 500, "internal-error", "Out of memory");
  }
  return EVS_HANDLED;
}

int enc_fail(enc_ctx *x, int status, const char *code, const char *detail) {
  x->err_status = status;
  x->err_code = code;
  x->err_detail = detail;
  return enc_continue(x, 0, NULL);
}

void enc_reply_json(enc_ctx *x, int status, json_t *obj) {
  const evs_host *h = x->st->host;
  evs_request *req = x->req;
  char *body = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY) : NULL;
  json_decref(obj);
  if (!body) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  static const evs_header hdr[] = {{"Content-Type", 12, "application/json", 16},
                                   {"Access-Control-Allow-Origin", 27, "*", 1}};
  size_t n = strlen(body);
  h->respond(req, status, hdr, x->cors ? 2 : 1, (const uint8_t *)body, n);
  OPENSSL_cleanse(body, n); /* may hold decrypted values or a freshly minted secret */
  free(body);
}

void enc_reply_error(enc_ctx *x, int status, const char *code, const char *detail) {
  if (!x->cors) {
    x->st->host->respond_error(x->req, status, code, detail);
    return;
  }
  /* respond_error takes no headers: the same documented shape, by hand, with CORS so that a
   * page's script can read why (a token already used, expired...). */
  json_t *o = json_pack("{s:i,s:s,s:s,s:s,s:s}", "status", status, "code", code, "title",
                        status == 401 ? "Unauthorized" : status == 403 ? "Forbidden"
                        : status == 429 ? "Too Many Requests" : status >= 500 ? "Server Error"
                                                                : "Bad Request",
                        "detail", detail, "message", detail);
  char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  if (!body) {
    x->st->host->respond_error(x->req, status, code, detail);
    return;
  }
  evs_header hdr[] = {{"Content-Type", 12, "application/json", 16},
                      {"Access-Control-Allow-Origin", 27, "*", 1},
                      {"X-Evervault-Error-Code", 22, code, strlen(code)}};
  x->st->host->respond(x->req, status, hdr, 3, (const uint8_t *)body, strlen(body));
  free(body);
}

/* ---- helpers ------------------------------------------------------------------------------ */

char *enc_b64(const uint8_t *data, size_t len) {
  char *out = malloc(4 * ((len + 2) / 3) + 1);
  if (!out) return NULL;
  EVP_EncodeBlock((unsigned char *)out, data, (int)len);
  return out;
}

int enc_unb64(const char *s, size_t len, uint8_t **ret, size_t *ret_len) {
  if (len % 4 || len > (64u << 20)) return -EINVAL;
  uint8_t *out = malloc(len / 4 * 3 + 1);
  if (!out) return -ENOMEM;
  int n = len ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)len) : 0;
  if (n < 0) {
    free(out);
    return -EINVAL;
  }
  if (len && s[len - 1] == '=') n--;
  if (len > 1 && s[len - 2] == '=') n--;
  *ret = out;
  *ret_len = (size_t)n;
  return 0;
}

void enc_audit(enclave_state *st, const char *who, const char *app, const char *op,
               size_t fields, const char *outcome) {
  json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:s}", "who", who && *who ? who : "admin", "app",
                        app ? app : "", "op", op, "fields", (json_int_t)fields, "outcome", outcome);
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  if (s) st->host->store_append(st->plugin, "audit", s);
  free(s);
  json_decref(o);
}

static const char *status_code(int status, int *ret_http, const char **ret_detail) {
  switch (status) {
    case EVS_EP_E_NO_APP:
      *ret_http = 503;
      *ret_detail = "The app's keys are locked: unlock the app (evctl app unlock)";
      return "service-unavailable";
    case EVS_EP_E_BAD_TOKEN:
      *ret_http = 401;
      *ret_detail = "The app token does not open this app's keys";
      return "unauthorized";
    case EVS_EP_E_DECRYPT:
      *ret_http = 422;
      *ret_detail = "Unable to decrypt data";
      return "decryption-error";
    case EVS_EP_E_INVALID:
      *ret_http = 400;
      *ret_detail = "The request holds an invalid value (curve, role, type or size)";
      return "bad-request";
    case EVS_ENOCRYPTO:
      *ret_http = 503;
      *ret_detail = "The encryption service is unavailable; try again shortly";
      return "service-unavailable";
    default:
      *ret_http = 500;
      *ret_detail = "The encryption service failed";
      return "internal-error";
  }
}

static void reply_status(enc_ctx *x, int status) {
  int http;
  const char *detail;
  const char *code = status_code(status, &http, &detail);
  enc_reply_error(x, http, code, detail);
}

/* ---- JSON walkers ------------------------------------------------------------------------- */

static int add_slot(enc_ctx *x, json_t *parent, const char *key, size_t index) {
  if (x->nslots == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 16;
    if (cap > EVS_EP_MAX_ITEMS) return -E2BIG;
    enc_slot *s = realloc(x->slots, cap * sizeof *s);
    if (!s) return -ENOMEM;
    x->slots = s;
    x->cap = cap;
  }
  if (x->nslots + 2 > EVS_EP_MAX_ITEMS) return -E2BIG; /* room for app id, curve, role */
  x->slots[x->nslots++] = (enc_slot){parent, key, index};
  return 0;
}

static json_t *slot_get(const enc_slot *s) {
  return json_is_object(s->parent) ? json_object_get(s->parent, s->key)
                                   : json_array_get(s->parent, s->index);
}

static void slot_set(const enc_slot *s, json_t *v) {
  if (json_is_object(s->parent))
    json_object_set_new(s->parent, s->key, v);
  else
    json_array_set_new(s->parent, s->index, v);
}

/* Collects leaves: for decrypt every string starting "ev:", for encrypt every string, number
 * and boolean. Depth is bounded by jansson's own parser limit. */
static int collect(enc_ctx *x, json_t *v, int decrypt) {
  const char *k;
  json_t *c;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach(v, k, c) {
      if (json_is_object(c) || json_is_array(c)) {
        int r = collect(x, c, decrypt);
        if (r < 0) return r;
      } else if (decrypt ? (json_is_string(c) && strncmp(json_string_value(c), "ev:", 3) == 0)
                         : (json_is_string(c) || json_is_number(c) || json_is_boolean(c))) {
        int r = add_slot(x, v, k, 0);
        if (r < 0) return r;
      }
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, c) {
      if (json_is_object(c) || json_is_array(c)) {
        int r = collect(x, c, decrypt);
        if (r < 0) return r;
      } else if (decrypt ? (json_is_string(c) && strncmp(json_string_value(c), "ev:", 3) == 0)
                         : (json_is_string(c) || json_is_number(c) || json_is_boolean(c))) {
        int r = add_slot(x, v, NULL, i);
        if (r < 0) return r;
      }
    }
  }
  return 0;
}

void enc_set_data(enc_ctx *x, json_t *data) {
  /* A top-level scalar is wrapped in a one-element array so it has a slot like any leaf. */
  if (json_is_object(data) || json_is_array(data)) {
    x->root = data;
    return;
  }
  x->root = json_array();
  x->wrapped = 1;
  if (x->root) json_array_append_new(x->root, data);
  else json_decref(data);
}

static json_t *answer_data(enc_ctx *x) {
  return x->wrapped ? json_array_get(x->root, 0) : x->root;
}

json_t *enc_answer_data(enc_ctx *x) {
  return answer_data(x);
}

/* A decrypted value as JSON, typed by its tag (PROTOCOL.md §2.2): type 0 a string, 1 a number,
 * 2 a boolean. A :number is a JSON number (an integer beyond 64 bits becomes a double, as the
 * SDK's Number() makes it) or "null", what JSON.stringify made of NaN or Infinity when the SDK
 * encrypted it (answered as null); a :boolean is "true" or "false". Anything else was relabelled
 * (RFVC / Tk9D do not authenticate the tag) and is EVS_EP_E_DECRYPT: never returned as a string,
 * never a guessed value. The enclave refuses such values itself; this is the plugin's own check.
 * Returns 0 with *ret set, or a negative protocol status. */
static int typed_value(uint8_t type, const char *p, size_t len, json_t **ret) {
  json_t *v = NULL;
  switch (type) {
    case 0:
      v = json_stringn(p, len);
      if (!v) return EVS_EP_E_INTERNAL; /* not UTF-8, or out of memory */
      break;
    case 1:
      if (len == 4 && memcmp(p, "null", 4) == 0) {
        v = json_null();
        break;
      }
      /* jansson's grammar is JSON's (no "01", "0x10", "NaN"), except that it skips whitespace
       * around the value. */
      if (!len || isspace((unsigned char)p[0]) || isspace((unsigned char)p[len - 1]))
        return EVS_EP_E_DECRYPT;
      v = json_loadb(p, len, JSON_DECODE_ANY, NULL);
      if (!v) v = json_loadb(p, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
      if (!json_is_number(v)) { /* a real beyond the double range, e.g. 1e400 */
        json_decref(v);
        return EVS_EP_E_DECRYPT;
      }
      break;
    case 2:
      if (len == 4 && memcmp(p, "true", 4) == 0) v = json_true();
      else if (len == 5 && memcmp(p, "false", 5) == 0) v = json_false();
      else return EVS_EP_E_DECRYPT;
      break;
    default:
      return EVS_EP_E_PROTOCOL;
  }
  *ret = v;
  return 0;
}

static void on_decrypted(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  enclave_state *st = x->st;
  const char *op = x->octet ? "decrypt-file" : "decrypt";
  size_t fields = x->octet ? 1 : x->nslots;
  if (status == 0 && !x->octet && n != x->nslots) status = EVS_EP_E_PROTOCOL;
  if (status == 0 && x->octet && n != 1) status = EVS_EP_E_PROTOCOL;
  /* A body that is not a well-formed %EVENC file (no magic, truncated, a bad header) is data
   * that does not decrypt, like a tampered one: 422 decryption-error (PROTOCOL.md §2.3), as a
   * malformed ev: string is in JSON. Its size was checked before it was read. */
  if (x->octet && status == EVS_EP_E_INVALID) status = EVS_EP_E_DECRYPT;
  if (status == 0 && !x->octet) {
    for (size_t i = 0; i < n && status == 0; i++) {
      if (it[i].len < 4) {
        status = EVS_EP_E_PROTOCOL;
        break;
      }
      int32_t fs = (int32_t)evs_ep_get_u32(it[i].data);
      if (fs != 0) {
        /* A field that is not a valid ev: string for this app is a decryption error too. */
        status = fs == EVS_EP_E_NO_APP || fs == EVS_EP_E_INTERNAL ? fs : EVS_EP_E_DECRYPT;
        break;
      }
      if (it[i].len < 5) {
        status = EVS_EP_E_PROTOCOL;
        break;
      }
      json_t *v = NULL;
      int tr = typed_value(it[i].data[4], (const char *)it[i].data + 5, it[i].len - 5, &v);
      if (tr != 0) {
        status = tr;
        break;
      }
      slot_set(&x->slots[i], v);
    }
  }
  enc_audit(st, x->key_id, x->app_id, op, fields, status == 0 ? "ok" : "error");
  if (status != 0) {
    reply_status(x, status);
    return;
  }
  if (x->octet) {
    static const evs_header hdr[] = {{"Content-Type", 12, "application/octet-stream", 24}};
    st->host->respond(x->req, 200, hdr, 1, it[0].data, it[0].len);
    return;
  }
  enc_reply_json(x, 200, json_pack("{s:O}", "data", answer_data(x)));
}

void enc_do_decrypt(enc_ctx *x) {
  ep_msg m;
  if (x->octet) {
    ep_msg_init(&m, EVS_EP_DECRYPT_FILE);
    ep_msg_add_str(&m, x->app_id);
    ep_msg_add(&m, x->body, x->body_len);
  } else {
    int r = collect(x, x->root, 1);
    if (r < 0) {
      enc_reply_error(x, 413, "payload-too-large", "Too many encrypted fields in one request");
      return;
    }
    ep_msg_init(&m, EVS_EP_DECRYPT);
    ep_msg_add_str(&m, x->app_id);
    for (size_t i = 0; i < x->nslots; i++) ep_msg_add_str(&m, json_string_value(slot_get(&x->slots[i])));
  }
  x->pending = 1;
  int r = ep_client_call(x->st->client, &m, on_decrypted, x);
  if (r < 0) {
    x->pending = 0;
    enc_audit(x->st, x->key_id, x->app_id, "decrypt", x->nslots, "error");
    if (r == -E2BIG)
      enc_reply_error(x, 413, "payload-too-large", "The request is too large to decrypt");
    else
      reply_status(x, EVS_ENOCRYPTO);
  }
}

static void on_encrypted(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  enclave_state *st = x->st;
  if (status == 0 && (x->octet ? n != 1 : n != x->nslots)) status = EVS_EP_E_PROTOCOL;
  if (status == 0 && !x->octet) {
    for (size_t i = 0; i < n && status == 0; i++) {
      if (it[i].len < 4) {
        status = EVS_EP_E_PROTOCOL;
        break;
      }
      int32_t fs = (int32_t)evs_ep_get_u32(it[i].data);
      if (fs != 0) {
        status = fs;
        break;
      }
      json_t *v = json_stringn((const char *)it[i].data + 4, it[i].len - 4);
      if (!v) {
        status = EVS_EP_E_INTERNAL;
        break;
      }
      slot_set(&x->slots[i], v);
    }
  }
  enc_audit(st, x->key_id, x->app_id, x->octet ? "encrypt-file" : "encrypt",
            x->octet ? 1 : x->nslots, status == 0 ? "ok" : "error");
  if (status != 0) {
    reply_status(x, status);
    return;
  }
  if (x->octet) {
    static const evs_header hdr[] = {{"Content-Type", 12, "application/octet-stream", 24}};
    st->host->respond(x->req, 200, hdr, 1, it[0].data, it[0].len);
    return;
  }
  json_t *d = answer_data(x);
  enc_reply_json(x, 200, x->admin ? json_pack("{s:O}", "data", d) : json_incref(d));
}

void enc_do_encrypt(enc_ctx *x) {
  ep_msg m;
  if (x->octet) {
    ep_msg_init(&m, EVS_EP_ENCRYPT_FILE);
    ep_msg_add_str(&m, x->app_id);
    ep_msg_add_str(&m, x->curve);
    ep_msg_add(&m, x->body, x->body_len);
  } else {
    int r = collect(x, x->root, 0);
    if (r < 0) {
      enc_reply_error(x, 413, "payload-too-large", "Too many fields in one request");
      return;
    }
    ep_msg_init(&m, EVS_EP_ENCRYPT);
    ep_msg_add_str(&m, x->app_id);
    ep_msg_add_str(&m, x->curve);
    ep_msg_add_str(&m, x->role);
    for (size_t i = 0; i < x->nslots; i++) {
      json_t *v = slot_get(&x->slots[i]);
      char *item = NULL;
      size_t len = 0;
      if (json_is_string(v)) {
        len = json_string_length(v) + 2;
        if ((item = malloc(len))) {
          memcpy(item, "s:", 2);
          memcpy(item + 2, json_string_value(v), len - 2);
        }
      } else if (json_is_boolean(v)) {
        item = strdup(json_is_true(v) ? "b:true" : "b:false");
        len = item ? strlen(item) : 0;
      } else {
        char *num = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (num && asprintf(&item, "n:%s", num) < 0) item = NULL;
        len = item ? strlen(item) : 0;
        free(num);
      }
      if (!item) {
        m.failed = 1;
        break;
      }
      ep_msg_add(&m, item, len);
      OPENSSL_cleanse(item, len); /* plaintext */
      free(item);
    }
  }
  x->pending = 1;
  int r = ep_client_call(x->st->client, &m, on_encrypted, x);
  if (r < 0) {
    x->pending = 0;
    if (r == -E2BIG)
      enc_reply_error(x, 413, "payload-too-large", "The request is too large to encrypt");
    else
      reply_status(x, EVS_ENOCRYPTO);
  }
}

/* ---- authentication ----------------------------------------------------------------------- */

/* The presented credential: `api-key: <key>` or `Authorization: Basic base64(appId:key)`.
 * Fills x->api_key, x->key_id and (Basic) x->app_id. 0, or -1 when absent or malformed. */
static int read_credential(enc_ctx *x, int basic) {
  const evs_host *h = x->st->host;
  evs_header hd;
  char *key = NULL;
  if (basic && h->request_header(x->req, "authorization", &hd) == 0 && hd.value_len > 6 &&
      strncasecmp(hd.value, "Basic ", 6) == 0) {
    const char *b = hd.value + 6;
    size_t bl = hd.value_len - 6;
    while (bl && *b == ' ') b++, bl--;
    while (bl && b[bl - 1] == ' ') bl--;
    uint8_t *dec;
    size_t dl;
    if (enc_unb64(b, bl, &dec, &dl) < 0) return -1;
    uint8_t *colon = memchr(dec, ':', dl);
    if (!colon || memchr(dec, 0, dl) || (size_t)(colon - dec) >= ENC_APP_ID_MAX) {
      OPENSSL_cleanse(dec, dl);
      free(dec);
      return -1;
    }
    memcpy(x->app_id, dec, (size_t)(colon - dec));
    x->app_id[colon - dec] = 0;
    key = strndup((const char *)colon + 1, dl - (size_t)(colon - dec) - 1);
    OPENSSL_cleanse(dec, dl);
    free(dec);
  } else if (h->request_header(x->req, "api-key", &hd) == 0 && hd.value_len < 512) {
    key = strndup(hd.value, hd.value_len);
  }
  if (!key) return -1;
  x->api_key = key;
  return enc_api_key_id(key, x->key_id);
}

static void api_dispatch(enc_ctx *x);

static const char *action_permission(int action) {
  return action == API_DECRYPT || action == API_CST ? "api:decrypt" : "api:encrypt";
}

static void on_api_app(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status < 0 && status != -ENOENT) {
    enc_reply_error(x, 503, "service-unavailable", "The store is unavailable; retry");
    return;
  }
  if (status != 0) {
    enc_reply_error(x, 401, "unauthorized", "Invalid authorization provided.");
    return;
  }
  json_t *app = json_loadb((const char *)v, len, 0, NULL);
  json_t *out = json_pack("{s:O?,s:O?}", "ecdhKey", json_object_get(app, "ecdhKey"),
                          "ecdhP256Key", json_object_get(app, "ecdhP256Key"));
  json_decref(app);
  enc_reply_json(x, 200, out);
}

static void on_key_record(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  char app[ENC_APP_ID_MAX] = "", key_id[ENC_KEY_ID_MAX] = "";
  const char *op = x->action == API_DECRYPT ? "decrypt" : "encrypt";
  /* The store could not answer (PostgreSQL restarting, unreachable): the key is neither good
   * nor bad, so the client is told to retry, not that its key is wrong (docs/state.md). */
  if (status < 0 && status != -ENOENT) {
    enc_reply_error(x, 503, "service-unavailable",
                    "The store is unavailable: the API key cannot be checked now; retry");
    return;
  }
  /* Basic carries the app id too; it must be the key's. */
  int verdict = status == 0 ? enc_api_key_verify(v, len, x->api_key, action_permission(x->action),
                                                 x->app_id[0] ? x->app_id : NULL, app, key_id)
                            : ENC_KEY_INVALID;
  if (verdict == ENC_KEY_INVALID) {
    enc_audit(x->st, x->key_id, x->app_id, x->action == API_DECRYPT ? "decrypt" : "auth", 0,
              "unauthorized");
    enc_reply_error(x, 401, "unauthorized", "Invalid authorization provided.");
    return;
  }
  snprintf(x->app_id, sizeof x->app_id, "%s", app);
  if (verdict == ENC_KEY_FORBIDDEN) {
    enc_audit(x->st, x->key_id, x->app_id, op, 0, "forbidden");
    enc_reply_error(x, 403, "forbidden", "The API key does not have the required permissions.");
    return;
  }
  enc_keycache_put(x->st, x->key_gen, x->api_key, action_permission(x->action), app);
  api_dispatch(x);
}

/* ---- the endpoints ------------------------------------------------------------------------ */

static void api_dispatch(enc_ctx *x) {
  enclave_state *st = x->st;
  if (x->action == API_KEYS) {
    /* /keys names the app in a header: it must be the key's. */
    evs_header hd;
    if (st->host->request_header(x->req, "x-evervault-app-id", &hd) == 0 &&
        (hd.value_len != strlen(x->app_id) || memcmp(hd.value, x->app_id, hd.value_len) != 0)) {
      enc_reply_error(x, 401, "unauthorized", "Invalid authorization provided.");
      return;
    }
    char k[ENC_STORE_KEY_MAX];
    snprintf(k, sizeof k, "app/%s", x->app_id);
    x->pending = 1;
    if (st->host->store_get(st->plugin, k, on_api_app, x) < 0) {
      x->pending = 0;
      enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    }
    return;
  }
  if (x->action == API_CST)
    enc_cst_create(x);
  else if (x->action == API_DECRYPT)
    enc_do_decrypt(x);
  else
    enc_do_encrypt(x);
}

static int content_is(enc_ctx *x, const char *type) {
  evs_header hd;
  size_t n = strlen(type);
  return x->st->host->request_header(x->req, "content-type", &hd) == 0 && hd.value_len >= n &&
         strncasecmp(hd.value, type, n) == 0;
}

/* ---- parameters ---------------------------------------------------------------------------
 * A parameter is never silently dropped: an unknown, repeated, empty, over-long or invalid one
 * is refused with 400 bad-request naming it. (A data role cut short or ignored would encrypt
 * without the data policy the caller asked for; a curve name not understood would encrypt
 * with another curve.) The SDK sends no query parameters at all (PROTOCOL.md §2). */

static const struct {
  const char *name, *canonical;
} curve_names[] = {
    {"secp256k1", "secp256k1"},  {"koblitz", "secp256k1"}, {"prime256v1", "prime256v1"},
    {"secp256r1", "prime256v1"}, {"nist", "prime256v1"},
};

const char *enc_curve_name(const char *v, size_t len) {
  for (size_t i = 0; i < sizeof curve_names / sizeof curve_names[0]; i++)
    if (strlen(curve_names[i].name) == len && strncasecmp(v, curve_names[i].name, len) == 0)
      return curve_names[i].canonical;
  return NULL;
}

int enc_role_valid(const char *v, size_t len) {
  if (len < 1 || len > 20) return 0;
  for (size_t i = 0; i < len; i++)
    if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '-')) return 0;
  return 1;
}

const char *enc_param_label(const char *name, size_t len, char *out, size_t cap) {
  int ok = len > 0 && len <= 40 && len + 3 <= cap;
  for (size_t i = 0; ok && i < len; i++)
    if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '.' && name[i] != '-')
      ok = 0;
  if (ok)
    snprintf(out, cap, "'%.*s'", (int)len, name);
  else
    snprintf(out, cap, "%s", len ? "(a long or unprintable name)" : "(an empty name)");
  return out;
}

static int hexval(int c) {
  return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* Decodes a query component (%XX, '+' as a space) into out (cap bytes, NUL-terminated); the
 * decoded length, or -1 when an escape is malformed, it decodes to a NUL, or it does not fit
 * (nothing the API takes is that long: such a value is refused, never cut). */
static long query_decode(const char *s, size_t len, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      if (len - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) return -1;
      c = hexval(s[i + 1]) << 4 | hexval(s[i + 2]);
      i += 2;
    } else if (c == '+') {
      c = ' ';
    }
    if (c == 0 || o + 1 >= cap) return -1;
    out[o++] = (char)c;
  }
  out[o] = 0;
  return (long)o;
}

/* The query of an API request into x->curve and x->role (defaults: secp256k1, no role). 0, or
 * -1 with a 400 detail in detail (cap bytes). /encrypt takes curve and role (role not with a
 * file: data roles are for values only); the other endpoints take none. */
static int api_query(enc_ctx *x, const char *q, char *detail, size_t cap) {
  int takes = x->action == API_ENCRYPT;
  int seen_curve = 0, seen_role = 0;
  char label[48];
  snprintf(x->curve, sizeof x->curve, "secp256k1");
  x->role[0] = 0;
  for (const char *p = q ? q : ""; *p;) {
    size_t seg = strcspn(p, "&");
    const char *eq = memchr(p, '=', seg);
    size_t nl = eq ? (size_t)(eq - p) : seg;
    char name[48], value[64];
    long n = query_decode(p, nl, name, sizeof name);
    const char *next = p[seg] ? p + seg + 1 : p + seg;
    if (seg == 0) { /* "a=1&&b=2", a trailing '&': no parameter there */
      p = next;
      continue;
    }
    int is_curve = n >= 0 && strcmp(name, "curve") == 0;
    int is_role = n >= 0 && strcmp(name, "role") == 0;
    if (n < 0 || !takes || !(is_curve || is_role)) {
      enc_param_label(n >= 0 ? name : p, n >= 0 ? (size_t)n : nl, label, sizeof label);
      snprintf(detail, cap, "Unknown query parameter %s: %s", label,
               takes ? "/encrypt takes curve and role" : "this endpoint takes no parameters");
      return -1;
    }
    if ((is_curve && seen_curve++) || (is_role && seen_role++)) {
      snprintf(detail, cap, "Query parameter '%s' is given more than once", name);
      return -1;
    }
    if (!eq || eq + 1 == p + seg) {
      snprintf(detail, cap, "Query parameter '%s' has no value", name);
      return -1;
    }
    long vl = query_decode(eq + 1, seg - nl - 1, value, sizeof value);
    if (is_curve) {
      const char *c = vl >= 0 ? enc_curve_name(value, (size_t)vl) : NULL;
      if (!c) {
        snprintf(detail, cap, "Invalid query parameter 'curve': " ENC_CURVE_HINT);
        return -1;
      }
      snprintf(x->curve, sizeof x->curve, "%s", c);
    } else {
      if (vl < 0 || !enc_role_valid(value, (size_t)vl)) {
        snprintf(detail, cap, "Invalid query parameter 'role': " ENC_ROLE_HINT);
        return -1;
      }
      if (x->octet) {
        snprintf(detail, cap,
                 "Invalid query parameter 'role': data roles cannot be used with files");
        return -1;
      }
      memcpy(x->role, value, (size_t)vl + 1);
    }
    p = next;
  }
  return 0;
}

/* The API request, its body read: authenticate, then keys, encrypt or decrypt. */
static void api_step(enc_ctx *x, const uint8_t *data, size_t len) {
  const evs_host *h = x->st->host;
  const evs_request_info *info = h->request_info(x->req);
  int token = x->action == API_DECRYPT ? enc_cst_credential(x) : 0;
  if (token < 0 || (token == 0 && read_credential(x, x->action != API_KEYS) < 0)) {
    enc_reply_error(x, 401, "unauthorized", "Invalid authorization provided.");
    return;
  }
  char detail[256];
  if (api_query(x, info->query, detail, sizeof detail) < 0) {
    enc_reply_error(x, 400, "bad-request", detail);
    return;
  }
  if (x->action == API_KEYS) {
    /* no body: straight to the key record */
  } else if (x->octet) {
    if (!(x->body = malloc(len ? len : 1))) {
      enc_reply_error(x, 500, "internal-error", "Out of memory");
      return;
    }
    memcpy(x->body, data, len);
    x->body_len = len;
  } else {
    json_error_t je;
    json_t *root = json_loadb((const char *)data, len, JSON_DECODE_ANY, &je);
    if (!root) {
      enc_reply_error(x, 400, "bad-request", "The request body is not valid JSON");
      return;
    }
    /* /decrypt takes the SDK's {"data": ...}, or any other value as the data itself (the
     * Cages API's form); /encrypt takes the value itself. "data" next to other keys is
     * ambiguous: refused, naming the other key, rather than one of the two dropped. */
    json_t *d = root;
    if (x->action == API_DECRYPT && json_is_object(root) && json_object_get(root, "data")) {
      const char *k;
      json_t *c;
      json_object_foreach(root, k, c) {
        if (strcmp(k, "data") == 0) continue;
        char label[48];
        snprintf(detail, sizeof detail,
                 "Unknown body parameter %s next to 'data': /decrypt takes {\"data\": ...} "
                 "(or the data itself, without a 'data' key)",
                 enc_param_label(k, strlen(k), label, sizeof label));
        json_decref(root);
        enc_reply_error(x, 400, "bad-request", detail);
        return;
      }
      d = json_incref(json_object_get(root, "data"));
      json_decref(root);
    }
    enc_set_data(x, d);
    if (!x->root) {
      enc_reply_error(x, 500, "internal-error", "Out of memory");
      return;
    }
  }
  if (token) {
    if (x->octet)
      enc_reply_error(x, 400, "bad-request",
                      "A client-side token decrypts JSON ({\"data\": ...}), not a file");
    else
      enc_cst_redeem(x);
    return;
  }
  /* A key checked for this permission less than a second ago, with no revocation in this node
   * since: no store read (enclave_int.h, the key cache). Basic's app must still be the key's. */
  const char *cached = enc_keycache_get(x->st, x->api_key, strlen(x->api_key),
                                        action_permission(x->action));
  if (cached && (!x->app_id[0] || strcmp(cached, x->app_id) == 0)) {
    snprintf(x->app_id, sizeof x->app_id, "%s", cached);
    api_dispatch(x);
    return;
  }
  x->pending = 1;
  x->key_gen = x->st->key_gen;
  char k[ENC_STORE_KEY_MAX];
  snprintf(k, sizeof k, "key/%s", x->key_id);
  if (x->st->host->store_get(x->st->plugin, k, on_key_record, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 503, "service-unavailable", "The store is unavailable; retry");
  }
}

int enc_api_route(enclave_state *st, evs_request *req) {
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *path = info->path;
  while (path[0] == '/' && path[1] == '/') path++; /* EV_API_URL with a trailing slash */
  int get = strcmp(info->method, "GET") == 0, post = strcmp(info->method, "POST") == 0;
  int action;
  if (get && (strcmp(path, "/cages/key") == 0 || strcmp(path, "/keys") == 0))
    action = API_KEYS;
  else if (post && strcmp(path, "/decrypt") == 0)
    action = API_DECRYPT;
  else if (post && strcmp(path, "/encrypt") == 0)
    action = API_ENCRYPT;
  else if (post && strcmp(path, "/client-side-tokens") == 0)
    action = API_CST;
  else if (get && strncmp(path, "/public-keys/", 13) == 0)
    return enc_public_keys_route(st, req, path + 13);
  else if (strcmp(info->method, "OPTIONS") == 0 &&
           (strcmp(path, "/decrypt") == 0 || strncmp(path, "/public-keys/", 13) == 0))
    return enc_preflight_route(st, req);
  else
    return EVS_DECLINED;
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  x->action = action;
  x->octet = action != API_KEYS && content_is(x, "application/octet-stream");
  /* Exact body limits (README.md, "Limits"): a file to encrypt holds at most the SDK's 25 MiB;
   * a file to decrypt is at most that plus the %EVENC overhead; JSON at most 25 MiB. */
  if (action == API_ENCRYPT && x->octet) {
    x->body_max = EVS_EP_FILE_MAX_PLAINTEXT;
    x->too_big = "A file to encrypt may hold at most 25 MiB (26214400 bytes)";
  } else if (action == API_DECRYPT && x->octet) {
    x->body_max = EVS_EP_FILE_MAX_PLAINTEXT + EVS_EP_FILE_OVERHEAD;
    x->too_big = "An encrypted file is at most 26214475 bytes (25 MiB of plaintext and the 75 "
                 "bytes of the %EVENC format)";
  } else {
    x->body_max = ENC_MAX_JSON_BODY;
    x->too_big = "The request body is over the 25 MiB (26214400 bytes) limit";
  }
  return enc_continue(x, action != API_KEYS, api_step);
}

/* ---- key checks for other plugins (the crypto provider's check_api_key) ------------------ */

int enc_api_key_id(const char *key, char ret_id[ENC_KEY_ID_MAX]) {
  const char *last = strrchr(key, ':');
  if (strncmp(key, "ev:key:", 7) != 0 || !last || strlen(last + 1) >= ENC_KEY_ID_MAX ||
      strncmp(last + 1, "key_", 4) != 0)
    return -1;
  for (const char *p = last + 1; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '_') return -1;
  strcpy(ret_id, last + 1);
  return 0;
}

int enc_api_key_verify(const uint8_t *record, size_t len, const char *key, const char *perm,
                       const char *app_id, char ret_app[ENC_APP_ID_MAX],
                       char ret_key_id[ENC_KEY_ID_MAX]) {
  json_t *rec = key ? json_loadb((const char *)record, len, 0, NULL) : NULL;
  const char *hash_hex = json_string_value(json_object_get(rec, "hash"));
  const char *app = json_string_value(json_object_get(rec, "appId"));
  const char *kid = json_string_value(json_object_get(rec, "keyId"));
  uint8_t want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
  int ok = rec && hash_hex && app && strlen(hash_hex) == 2 * sizeof want &&
           strlen(app) < ENC_APP_ID_MAX && !json_is_true(json_object_get(rec, "revoked"));
  for (size_t i = 0; ok && i < sizeof want; i++) {
    unsigned b;
    if (sscanf(hash_hex + 2 * i, "%2x", &b) != 1) ok = 0;
    want[i] = (uint8_t)b;
  }
  /* The hash is computed and compared whatever went before, in constant time. */
  SHA256((const uint8_t *)(key ? key : ""), key ? strlen(key) : 0, got);
  if (CRYPTO_memcmp(want, got, sizeof want) != 0) ok = 0;
  if (ok && app_id && strcmp(app_id, app) != 0) ok = 0;
  if (!ok) {
    json_decref(rec);
    return ENC_KEY_INVALID;
  }
  /* Every key may encrypt (the permissions table of the README); others are granted. */
  int allowed = strcmp(perm, "api:encrypt") == 0;
  json_t *p;
  size_t i;
  json_array_foreach(json_object_get(rec, "permissions"), i, p) {
    if (json_is_string(p) && strcmp(json_string_value(p), perm) == 0) allowed = 1;
  }
  snprintf(ret_app, ENC_APP_ID_MAX, "%s", app);
  snprintf(ret_key_id, ENC_KEY_ID_MAX, "%s", kid ? kid : "");
  json_decref(rec);
  return allowed ? ENC_KEY_OK : ENC_KEY_FORBIDDEN;
}
