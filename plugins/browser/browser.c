/*
 * browser.c: the "browser" plugin. Serves the browser SDK (evervault.js) and the Inputs iframe
 * (inputs.html, inputs.js, inputs.css) from assets_dir, on the listeners of role api (the same
 * origin as the API the page's script calls: /public-keys, /decrypt; the enclave plugin serves
 * those). README.md here is the user's guide.
 *
 * URLs: /browser/<version>/<file> is immutable (the version is a hash of every asset, so a
 * change of any file is a new URL: Cache-Control immutable, a year); /browser/<file> is the
 * current version for pages that pin nothing (no-cache: revalidated with its ETag). The assets
 * name each other through __EVS_VERSION__, replaced at load, so a page that loaded version V
 * gets the iframe of version V.
 *
 * The Inputs page is served only for an app and an embedding origin that allowed_origins
 * lists, with a Content-Security-Policy whose frame-ancestors is the app's origins: the browser
 * refuses to render it inside any other page. Everything is read and compressed in init;
 * requests are answered from memory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "evserver/evs_plugin.h"
#include "browser_policy.h"

#ifndef EVS_BROWSER_DEFAULT_ASSETS
#define EVS_BROWSER_DEFAULT_ASSETS "/usr/share/evserver/browser"
#endif

typedef struct asset {
  const char *name, *type;
  uint8_t *data, *gz;
  size_t len, gz_len;
  char etag[40], etag_gz[44];
} asset;

typedef struct browser_state {
  const evs_host *host;
  evs_plugin *plugin;
  asset assets[4];
  char version[17];
  evs_bp_policy policy;
} browser_state;

static const struct {
  const char *name, *type;
} asset_files[4] = {
    {"evervault.js", "text/javascript; charset=utf-8"},
    {"inputs.html", "text/html; charset=utf-8"},
    {"inputs.js", "text/javascript; charset=utf-8"},
    {"inputs.css", "text/css; charset=utf-8"},
};

static const evs_config_item items[] = {
    {"assets_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "directory of evervault.js and the Inputs page (default: " EVS_BROWSER_DEFAULT_ASSETS ")"},
    {"allowed_origins", EVS_CONFIG_STRING, "", 0, 0, 0,
     "which pages may embed an app's Inputs iframe: app_<id>=<origin>[,<origin>...], entries "
     "separated by spaces (an app not listed cannot be embedded anywhere)"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void hex(const uint8_t *in, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[2 * n] = 0;
}

static int read_file(const char *dir, const char *name, uint8_t **ret, size_t *ret_len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return -errno;
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      if (cap > (size_t)8 << 20) { /* an asset is small; refuse a runaway file */
        free(buf);
        fclose(f);
        return -EFBIG;
      }
      cap = cap ? cap * 2 : 16384;
      uint8_t *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        fclose(f);
        return -ENOMEM;
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) break;
  }
  fclose(f);
  buf[len] = 0;
  *ret = buf;
  *ret_len = len;
  return 0;
}

/* Replaces every __EVS_VERSION__ in *data by version (same length or shorter is not assumed). */
static int substitute(uint8_t **data, size_t *len, const char *version) {
  static const char mark[] = "__EVS_VERSION__";
  size_t ml = sizeof mark - 1, vl = strlen(version), count = 0;
  for (uint8_t *p = *data; (p = (uint8_t *)strstr((char *)p, mark)); p += ml) count++;
  if (!count) return 0;
  size_t nl = *len - count * ml + count * vl;
  uint8_t *out = malloc(nl + 1), *o = out;
  if (!out) return -ENOMEM;
  const char *p = (const char *)*data, *q;
  while ((q = strstr(p, mark))) {
    memcpy(o, p, (size_t)(q - p));
    o += q - p;
    memcpy(o, version, vl);
    o += vl;
    p = q + ml;
  }
  size_t rest = strlen(p);
  memcpy(o, p, rest);
  o[rest] = 0;
  free(*data);
  *data = out;
  *len = nl;
  return 0;
}

static int gzip_asset(asset *a) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) return -ENOMEM;
  size_t cap = deflateBound(&z, a->len) + 32;
  if (!(a->gz = malloc(cap))) {
    deflateEnd(&z);
    return -ENOMEM;
  }
  z.next_in = a->data;
  z.avail_in = (uInt)a->len;
  z.next_out = a->gz;
  z.avail_out = (uInt)cap;
  int r = deflate(&z, Z_FINISH);
  a->gz_len = cap - z.avail_out;
  deflateEnd(&z);
  return r == Z_STREAM_END ? 0 : -EIO;
}

static void state_free(browser_state *st) {
  if (!st) return;
  for (size_t i = 0; i < 4; i++) {
    free(st->assets[i].data);
    free(st->assets[i].gz);
  }
  evs__bp_policy_free(&st->policy);
  free(st);
}

/* ---- serving ------------------------------------------------------------------------------- */

static void text_answer(browser_state *st, evs_request *req, int status, const char *msg) {
  static const evs_header hdr[] = {
      {"Content-Type", 12, "text/plain; charset=utf-8", 25},
      {"Content-Security-Policy", 23, "default-src 'none'; frame-ancestors 'none'", 42},
      {"X-Content-Type-Options", 22, "nosniff", 7},
      {"Cache-Control", 13, "no-store", 8},
  };
  st->host->respond(req, status, hdr, 4, (const uint8_t *)msg, strlen(msg));
}

/* The Inputs page's policy: only its own scripts, styles and API; Google Fonts for fontUrl;
 * framed only by the app's origins. */
static int inputs_csp(const evs_bp_app *app, char *out, size_t cap) {
  int n = snprintf(out, cap,
                   "default-src 'none'; script-src 'self'; style-src 'self' "
                   "https://fonts.googleapis.com; font-src https://fonts.gstatic.com; "
                   "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                   "form-action 'none'; frame-ancestors");
  for (size_t i = 0; i < app->norigins && n > 0 && (size_t)n < cap; i++)
    n += snprintf(out + n, cap - (size_t)n, " %s", app->origins[i]);
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int serve(void *state, evs_request *req) {
  browser_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *rest = info->path + strlen("/browser/");
  if (strncmp(info->path, "/browser/", 9) != 0) return EVS_DECLINED;
  int versioned = 0;
  const char *slash = strchr(rest, '/');
  if (slash) {
    if ((size_t)(slash - rest) != strlen(st->version) ||
        strncmp(rest, st->version, (size_t)(slash - rest)) != 0) {
      text_answer(st, req, 404, "No such version of the browser SDK (it was replaced: reload "
                                "the page)\n");
      return EVS_HANDLED;
    }
    versioned = 1;
    rest = slash + 1;
  }
  asset *a = NULL;
  for (size_t i = 0; i < 4; i++)
    if (strcmp(rest, st->assets[i].name) == 0) a = &st->assets[i];
  if (!a) return EVS_DECLINED; /* the host's 404 */

  evs_header hdr[12];
  size_t n = 0;
  char csp[4096];
#define H(k, v) hdr[n++] = (evs_header){k, strlen(k), v, strlen(v)}
  int html = a == &st->assets[1];
  if (html) {
    char app_id[24], origin[EVS_BP_MAX_ORIGIN + 16], canon[EVS_BP_MAX_ORIGIN + 16];
    const evs_bp_app *app = NULL;
    if (evs__bp_query_get(info->query, "app", app_id, sizeof app_id) < 0 ||
        !(app = evs__bp_policy_app(&st->policy, app_id))) {
      h->counter_add(st->plugin, "inputs_refused", 1);
      text_answer(st, req, 403, "This app may not be embedded: list it in allowed_origins\n");
      return EVS_HANDLED;
    }
    int ol = evs__bp_query_get(info->query, "origin", origin, sizeof origin);
    if (ol < 0 || evs__bp_origin_canon(origin, (size_t)ol, canon, sizeof canon) < 0 ||
        strcmp(canon, origin) != 0 || !evs__bp_origin_allowed(app, canon)) {
      h->counter_add(st->plugin, "inputs_refused", 1);
      text_answer(st, req, 403, "This page's origin may not embed the app's Inputs\n");
      return EVS_HANDLED;
    }
    if (inputs_csp(app, csp, sizeof csp) < 0) {
      text_answer(st, req, 500, "The app's origin list is too long\n");
      return EVS_HANDLED;
    }
    H("Content-Security-Policy", csp);
    H("Referrer-Policy", "no-referrer");
    H("Cache-Control", "no-cache");
  } else {
    H("Cache-Control", versioned ? "public, max-age=31536000, immutable" : "no-cache");
    H("Access-Control-Allow-Origin", "*");
  }
  H("Content-Type", a->type);
  H("X-Content-Type-Options", "nosniff");
  H("Vary", "Accept-Encoding");
  evs_header ae;
  int gz = h->request_header(req, "accept-encoding", &ae) == 0 &&
           evs__bp_accepts_gzip(ae.value, ae.value_len) && a->gz_len < a->len;
  const char *etag = gz ? a->etag_gz : a->etag;
  H("ETag", etag);
  if (gz) H("Content-Encoding", "gzip");
#undef H
  evs_header inm;
  if (h->request_header(req, "if-none-match", &inm) == 0 && inm.value_len == strlen(etag) &&
      memcmp(inm.value, etag, inm.value_len) == 0) {
    h->respond(req, 304, hdr, n, NULL, 0);
    return EVS_HANDLED;
  }
  h->counter_add(st->plugin, "assets_served", 1);
  h->respond(req, 200, hdr, n, gz ? a->gz : a->data, gz ? a->gz_len : a->len);
  return EVS_HANDLED;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  browser_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  const char *dir = host->config_string(plugin, "assets_dir");
  int configured = dir && *dir;
  if (!configured) dir = EVS_BROWSER_DEFAULT_ASSETS;
  char err[256];
  if (evs__bp_policy_parse(host->config_string(plugin, "allowed_origins"), &st->policy, err,
                           sizeof err) < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR,
              "allowed_origins in [plugin \"browser\"]: %s", err);
    state_free(st);
    return -EINVAL;
  }
  EVP_MD_CTX *all = EVP_MD_CTX_new();
  if (!all || EVP_DigestInit_ex(all, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(all);
    state_free(st);
    return -ENOMEM;
  }
  for (size_t i = 0; i < 4; i++) {
    asset *a = &st->assets[i];
    a->name = asset_files[i].name;
    a->type = asset_files[i].type;
    int r = read_file(dir, a->name, &a->data, &a->len);
    if (r == -ENOENT && !configured) {
      /* Not configured and not installed (a build tree's plugins_dir loads every plugin):
       * stay loaded, serving nothing, so servers that do not use it are not broken by it. */
      host->log(plugin, NULL, EVS_LOG_WARN,
                "%s/%s is not installed: the browser SDK and Inputs are not served; set "
                "assets_dir in the [plugin \"browser\"] section to serve them", dir, a->name);
      EVP_MD_CTX_free(all);
      state_free(st);
      *ret_state = NULL;
      return 0;
    }
    if (r < 0) {
      host->log(plugin, NULL, EVS_LOG_ERROR,
                "cannot read %s/%s (%s): set assets_dir in [plugin \"browser\"] to the "
                "directory holding evervault.js and inputs.*", dir, a->name, strerror(-r));
      EVP_MD_CTX_free(all);
      state_free(st);
      return r;
    }
    EVP_DigestUpdate(all, a->name, strlen(a->name) + 1);
    EVP_DigestUpdate(all, a->data, a->len);
  }
  uint8_t md[EVP_MAX_MD_SIZE];
  EVP_DigestFinal_ex(all, md, NULL);
  EVP_MD_CTX_free(all);
  hex(md, 8, st->version);
  for (size_t i = 0; i < 4; i++) {
    asset *a = &st->assets[i];
    if (substitute(&a->data, &a->len, st->version) < 0 || gzip_asset(a) < 0) {
      state_free(st);
      return -ENOMEM;
    }
    uint8_t d[SHA256_DIGEST_LENGTH];
    char hx[33];
    SHA256(a->data, a->len, d);
    hex(d, 16, hx);
    snprintf(a->etag, sizeof a->etag, "\"%s\"", hx);
    snprintf(a->etag_gz, sizeof a->etag_gz, "\"%s-gz\"", hx);
  }
  static const evs_route route = {sizeof(evs_route), "api", NULL, "GET", "/browser", serve};
  int r = host->add_route(plugin, &route);
  if (r < 0) {
    state_free(st);
    return r;
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "browser SDK version %s from %s, %zu app(s) embeddable",
            st->version, dir, st->policy.napps);
  *ret_state = st;
  return 0;
}

static void fini(void *state) {
  state_free(state);
}

EVS_PLUGIN_DEFINE("browser", "1.0.0",
                  "the browser SDK (evervault.js) and the Inputs card iframe, with per-app "
                  "frame-ancestors",
                  items, init, fini);
