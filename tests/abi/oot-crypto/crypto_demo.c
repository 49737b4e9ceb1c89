/*
 * crypto_demo.c: a third-party plugin that encrypts, decrypts and checks API keys through the
 * typed calls of ABI 1.6, built against the installed header only
 * (tests/abi/test_out_of_tree_crypto.sh). Answers Host crypto.test:
 *
 *   POST /encrypt?app=<id>        body: a string  -> 200 the ev: string
 *   POST /decrypt?app=<id>        body: ev: string -> 200 "<type>:<plaintext>"
 *   POST /file?app=<id>           body: file bytes -> 200 the bytes, after encrypt_file then
 *                                 decrypt_file (X-Encrypted-Length: the %EVENC file's length)
 *   GET  /check?perm=<permission> api-key header   -> 200 the key's app id
 *
 * A failed call answers 502 (500 when the call itself was refused) with "status <n> <name>".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evserver/evs_plugin.h>

typedef struct demo_state {
  const evs_host *host;
  evs_plugin *plugin;
} demo_state;

typedef struct demo_call {
  demo_state *st;
  evs_request *req;
  char app[160];
  size_t encrypted_len;
} demo_call;

static const char *status_name(int s) {
  switch (s) {
  case EVS_CRYPTO_OK: return "ok";
  case EVS_CRYPTO_E_NO_APP: return "no-app";
  case EVS_CRYPTO_E_DECRYPT: return "decrypt";
  case EVS_CRYPTO_E_INVALID: return "invalid";
  case EVS_ENOCRYPTO: return "no-crypto";
  case -EACCES: return "access";
  default: return "other";
  }
}

static void answer(demo_call *c, int http, const uint8_t *body, size_t len, const char *extra) {
  evs_header h[2] = {{"Content-Type", 12, "text/plain", 10}, {NULL, 0, NULL, 0}};
  size_t nh = 1;
  if (extra) {
    h[1] = (evs_header){"X-Encrypted-Length", 18, extra, strlen(extra)};
    nh = 2;
  }
  c->st->host->respond(c->req, http, h, nh, body, len);
  free(c);
}

static void answer_status(demo_call *c, int http, int status) {
  char b[64];
  int n = snprintf(b, sizeof b, "status %d %s", status, status_name(status));
  answer(c, http, (const uint8_t *)b, (size_t)n, NULL);
}

/* The query parameter `name` into out; 0 or -ENOENT. */
static int query_param(const char *q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = q; p && *p;) {
    const char *end = strchr(p, '&');
    size_t l = end ? (size_t)(end - p) : strlen(p);
    if (l > nl && strncmp(p, name, nl) == 0 && p[nl] == '=' && l - nl - 1 < cap) {
      memcpy(out, p + nl + 1, l - nl - 1);
      out[l - nl - 1] = '\0';
      return 0;
    }
    p = end ? end + 1 : NULL;
  }
  return -ENOENT;
}

static void on_encrypted(void *arg, int status, const evs_crypto_result *res, size_t n) {
  demo_call *c = arg;
  if (status != EVS_CRYPTO_OK || n != 1 || res[0].status != EVS_CRYPTO_OK) {
    answer_status(c, 502, status != EVS_CRYPTO_OK ? status : n == 1 ? res[0].status : -EPROTO);
    return;
  }
  answer(c, 200, res[0].data, res[0].len, NULL); /* res is the provider's: copied by respond */
}

static void on_decrypted(void *arg, int status, const evs_crypto_result *res, size_t n) {
  demo_call *c = arg;
  if (status != EVS_CRYPTO_OK || n != 1 || res[0].status != EVS_CRYPTO_OK) {
    answer_status(c, 502, status != EVS_CRYPTO_OK ? status : n == 1 ? res[0].status : -EPROTO);
    return;
  }
  const char *t = res[0].type == EVS_CRYPTO_NUMBER ? "number"
                  : res[0].type == EVS_CRYPTO_BOOLEAN ? "boolean" : "string";
  size_t tl = strlen(t), len = tl + 1 + res[0].len;
  uint8_t *b = malloc(len);
  if (!b) {
    answer_status(c, 500, -ENOMEM);
    return;
  }
  memcpy(b, t, tl);
  b[tl] = ':';
  memcpy(b + tl + 1, res[0].data, res[0].len);
  answer(c, 200, b, len, NULL);
  memset(b, 0, len); /* plaintext: wiped */
  free(b);
}

static void on_file_decrypted(void *arg, int status, const uint8_t *data, size_t len) {
  demo_call *c = arg;
  if (status != EVS_CRYPTO_OK) {
    answer_status(c, 502, status);
    return;
  }
  char el[32];
  snprintf(el, sizeof el, "%zu", c->encrypted_len);
  answer(c, 200, data, len, el);
}

static void on_file_encrypted(void *arg, int status, const uint8_t *data, size_t len) {
  demo_call *c = arg;
  if (status != EVS_CRYPTO_OK) {
    answer_status(c, 502, status);
    return;
  }
  if (len < 6 || memcmp(data, "%EVENC", 6) != 0) {
    answer_status(c, 502, -EPROTO);
    return;
  }
  c->encrypted_len = len;
  /* data is valid during this callback: the next call copies it before returning. */
  evs_file_request fr = {sizeof fr, c->app, NULL, data, len};
  int r = c->st->host->decrypt_file(c->st->plugin, &fr, on_file_decrypted, c);
  if (r < 0) answer_status(c, 500, r);
}

static void on_key(void *arg, int status, const char *app_id) {
  demo_call *c = arg;
  if (status != EVS_CRYPTO_OK) {
    answer_status(c, 401, status);
    return;
  }
  answer(c, 200, (const uint8_t *)app_id, strlen(app_id), NULL);
}

static void on_body(void *arg, int status, const uint8_t *data, size_t len) {
  demo_call *c = arg;
  const evs_host *h = c->st->host;
  const evs_request_info *info = h->request_info(c->req);
  if (status < 0) {
    answer_status(c, 400, status);
    return;
  }
  int r;
  if (strcmp(info->path, "/encrypt") == 0) {
    evs_crypto_value v = {sizeof v, EVS_CRYPTO_STRING_EXACT, data, len};
    evs_encrypt_request er = {sizeof er, c->app, "secp256k1", NULL, &v, 1};
    r = h->encrypt_values(c->st->plugin, &er, on_encrypted, c);
  } else if (strcmp(info->path, "/decrypt") == 0) {
    evs_crypto_value v = {sizeof v, 0, data, len};
    evs_decrypt_request dr = {sizeof dr, c->app, &v, 1};
    r = h->decrypt_values(c->st->plugin, &dr, on_decrypted, c);
  } else {
    evs_file_request fr = {sizeof fr, c->app, "prime256v1", data, len};
    r = h->encrypt_file(c->st->plugin, &fr, on_file_encrypted, c);
  }
  if (r < 0) answer_status(c, 500, r);
}

static int route(void *state, evs_request *req) {
  demo_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  if (strcmp(info->host, "crypto.test") != 0) return EVS_DECLINED;
  demo_call *c = calloc(1, sizeof *c);
  if (!c) {
    h->respond_error(req, 500, "internal-server-error", "out of memory");
    return EVS_HANDLED;
  }
  c->st = st;
  c->req = req;
  if (strcmp(info->path, "/check") == 0) {
    char perm[64];
    evs_header key;
    if (query_param(info->query, "perm", perm, sizeof perm) < 0 ||
        h->request_header(req, "api-key", &key) != 0) {
      answer_status(c, 400, -EINVAL);
      return EVS_HANDLED;
    }
    evs_api_key_request kr = {sizeof kr, key.value, key.value_len, perm, 0};
    int r = h->check_api_key(st->plugin, &kr, on_key, c);
    if (r < 0) answer_status(c, r == -EACCES ? 401 : 500, r);
    return EVS_HANDLED;
  }
  if (strcmp(info->method, "POST") != 0 || query_param(info->query, "app", c->app, sizeof c->app) < 0 ||
      (strcmp(info->path, "/encrypt") != 0 && strcmp(info->path, "/decrypt") != 0 &&
       strcmp(info->path, "/file") != 0)) {
    free(c);
    h->respond_error(req, 404, "not-found", "crypto-demo: no such route");
    return EVS_HANDLED;
  }
  int r = h->read_body(req, 1 << 20, on_body, c);
  if (r < 0) answer_status(c, 500, r);
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  if (host->abi_minor < 6) { /* the typed crypto calls came with ABI 1.6 */
    host->log(plugin, NULL, EVS_LOG_ERROR, "needs evserver plugin ABI 1.6");
    return -ENOTSUP;
  }
  demo_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  int rc = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (rc < 0) {
    free(st);
    return rc;
  }
  *ret_state = st;
  return 0;
}

static void fini(void *state) { free(state); }

EVS_PLUGIN_DEFINE("crypto-demo", "1.0.0",
                  "test: encrypts, decrypts and checks API keys through the typed crypto calls",
                  NULL, init, fini);
