/*
 * relay_admin.c: the relay-inbound plugin's admin endpoints, served on the admin Unix socket
 * (request_info.listener == "admin"; only the socket's permissions guard them) for evctl's
 * `relay` and `activity` commands (core/evctl/cmd_relay.c):
 *
 *   GET    /relays                  {"path", "relays": <relay-config.json as in the file>}
 *   PUT    /relays                  body: a whole relay-config.json -> {"relays": <count>}
 *   DELETE /relays/<domain>         remove one relay -> {"deleted": <domain>, "relays": <count>}
 *   GET    /relays/structures[?relay=D]     {"structures": [...]}, newest lastSeen first
 *   GET    /activity[?relay=&status=&method=&since=&limit=&requestId=]
 *                                   {"transactions": [...]}, newest first
 *
 * Every other request is declined, so other plugins (the enclave's /apps) still see it.
 * Writes go through relay_config_replace (relay_inbound.c), which validates, writes the file
 * atomically and applies it without a restart; with config_source = store they are then
 * published to the store (relay_config_publish) and answered once the store has them, so every
 * node of a cluster applies them within store_poll_interval. The records read here are written
 * by the request path; their formats are fixed in relay_int.h.
 *
 * Answers that wait for the store keep their state in an admin_ctx attached to the request
 * (request_set_data): if the client goes away first, the host frees the request and the ctx
 * learns it, so a late store callback never touches a dead request.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "relay_int.h"

/* Hard caps on what one answer collects. */
#define STRUCTURES_MAX 10000     /* structure records returned by one GET */
#define ACTIVITY_LIMIT_DEFAULT 50
#define ACTIVITY_LIMIT_MAX 1000
/* With filters, the newest records (since `since`) that are examined to find `limit` matches:
 * the store offers no paging below a time bound, and one answer must stay bounded. */
#define ACTIVITY_SCAN_MAX 10000
#define PARAM_MAX 256            /* longest query parameter value accepted */

enum { A_STRUCTURES = 1, A_ACTIVITY, A_PUT };

typedef struct admin_ctx {
  relay_state *st;
  evs_request *req; /* NULL once the host has finished the request */
  int pending;      /* a host callback is outstanding and will free or resume the ctx */
  int action;
  json_t *items;    /* collected records */
  int truncated;
  /* Filters. */
  char relay[PARAM_MAX];
  char method[16];
  char request_id[PARAM_MAX];
  int status_exact; /* 100..599, or 0 */
  int status_class; /* 1..5 for "Nxx", or 0 */
  int64_t since_ms;
  size_t limit;
} admin_ctx;

static void ctx_free(admin_ctx *x) {
  if (!x) return;
  json_decref(x->items);
  free(x);
}

/* The host's free_fn for the request data: the request is over. */
static void ctx_release(void *p) {
  admin_ctx *x = p;
  x->req = NULL;
  if (!x->pending) ctx_free(x);
}

static admin_ctx *ctx_new(relay_state *st, evs_request *req, int action) {
  admin_ctx *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->st = st;
  x->req = req;
  x->action = action;
  relay_host(st)->request_set_data(req, relay_plugin(st), x, ctx_release);
  return x;
}

/* Called first in every host callback: 1 if the request is still there to answer. */
static int ctx_resume(admin_ctx *x) {
  x->pending = 0;
  if (!x->req) {
    ctx_free(x);
    return 0;
  }
  return 1;
}

/* Sends obj (consumed) as JSON. The request, and with it any ctx, may be gone afterwards. */
static void reply_json(const evs_host *h, evs_request *req, int status, json_t *obj) {
  char *body = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(obj);
  if (!body) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  static const evs_header hdr[] = {{"Content-Type", 12, "application/json", 16}};
  h->respond(req, status, hdr, 1, (const uint8_t *)body, strlen(body));
  free(body);
}

/* ---- query strings ------------------------------------------------------------------------ */

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes [s, s+n) ('+' is a space) into out (outlen bytes with the NUL). -1 if too long
 * or malformed, or if it decodes to a NUL or control character. */
static int decode(const char *s, size_t n, char *out, size_t outlen) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      int a = i + 1 < n ? hexval(s[i + 1]) : -1, b = i + 2 < n ? hexval(s[i + 2]) : -1;
      if (a < 0 || b < 0) return -1;
      c = a * 16 + b;
      i += 2;
    }
    if (c < 0x20 || c == 0x7f || o + 1 >= outlen) return -1;
    out[o++] = (char)c;
  }
  out[o] = '\0';
  return 0;
}

/* A relay domain as a filter or path segment: host-name characters only, so it can never
 * reach outside "structure/<domain>/" in a store prefix. Lower-cases in place. */
static int valid_domain(char *d) {
  if (!*d || strlen(d) > 253) return 0;
  for (char *p = d; *p; p++) {
    if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_')) return 0;
    *p = (char)tolower((unsigned char)*p);
  }
  return 1;
}

/* Parses a decimal integer in [min, max]. */
static int parse_int(const char *s, int64_t min, int64_t max, int64_t *ret) {
  if (!*s) return -1;
  int64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (*p - '0');
  }
  if (v < min || v > max) return -1;
  *ret = v;
  return 0;
}

/* Reads the query parameters of a GET /activity or /relays/structures into x. Returns NULL or
 * the message of a 400 answer (static text). */
static const char *parse_query(admin_ctx *x, const char *q, int activity) {
  x->limit = ACTIVITY_LIMIT_DEFAULT;
  while (*q) {
    size_t n = strcspn(q, "&");
    const char *eq = memchr(q, '=', n);
    size_t kn = eq ? (size_t)(eq - q) : n;
    char key[32], val[PARAM_MAX];
    if (kn == 0 && n == 0) {
      q++;
      continue;
    }
    if (decode(q, kn, key, sizeof key) < 0) return "A query parameter name is malformed";
    if (decode(eq ? eq + 1 : q + n, eq ? n - kn - 1 : 0, val, sizeof val) < 0)
      return "A query parameter value is malformed or too long";
    q += n;
    if (*q == '&') q++;
    if (strcmp(key, "relay") == 0) {
      if (!valid_domain(val)) return "relay must be a relay domain";
      snprintf(x->relay, sizeof x->relay, "%s", val);
      continue;
    }
    if (!activity) return "Unknown query parameter (known: relay)";
    if (strcmp(key, "status") == 0) {
      int64_t v;
      if (strlen(val) == 3 && val[0] >= '1' && val[0] <= '5' && (val[1] | 0x20) == 'x' &&
          (val[2] | 0x20) == 'x')
        x->status_class = val[0] - '0';
      else if (parse_int(val, 100, 599, &v) == 0)
        x->status_exact = (int)v;
      else
        return "status must be a status code (200) or a class (2xx, 4xx, 5xx)";
    } else if (strcmp(key, "method") == 0) {
      size_t ml = strlen(val);
      if (ml == 0 || ml >= sizeof x->method) return "method must be an HTTP method";
      for (size_t i = 0; i < ml; i++) {
        if (!isalpha((unsigned char)val[i])) return "method must be an HTTP method";
        x->method[i] = (char)toupper((unsigned char)val[i]);
      }
      x->method[ml] = '\0';
    } else if (strcmp(key, "since") == 0) {
      if (parse_int(val, 0, INT64_MAX / 2, &x->since_ms) < 0)
        return "since must be a time in milliseconds since the epoch";
    } else if (strcmp(key, "limit") == 0) {
      int64_t v;
      if (parse_int(val, 1, ACTIVITY_LIMIT_MAX, &v) < 0) return "limit must be in 1..1000";
      x->limit = (size_t)v;
    } else if (strcmp(key, "requestId") == 0) {
      if (!*val) return "requestId must not be empty";
      snprintf(x->request_id, sizeof x->request_id, "%s", val);
    } else {
      return "Unknown query parameter (known: relay, status, method, since, limit, requestId)";
    }
  }
  return NULL;
}

/* ---- publishing to the store (config_source = store) -------------------------------------- */

static void on_published(void *arg, int status) {
  admin_ctx *x = arg;
  if (!ctx_resume(x)) return;
  const evs_host *h = relay_host(x->st);
  if (status < 0) {
    h->log(relay_plugin(x->st), NULL, EVS_LOG_ERROR,
           "relay configuration applied on this node but not stored (%s): other nodes keep theirs",
           strerror(-status));
    h->respond_error(x->req, 503, "service-unavailable",
                     "The store is unavailable: the relay configuration was applied on this node "
                     "only; push it again");
    return;
  }
  json_t *answer = x->items;
  x->items = NULL;
  reply_json(h, x->req, 200, answer);
}

/* Answers answer (consumed) now, or once the store has text when the store's copy is
 * authoritative. x may be NULL (then one is made for req). */
static void answer_after_publish(relay_state *st, evs_request *req, admin_ctx *x, const char *text,
                                 size_t len, json_t *answer) {
  const evs_host *h = relay_host(st);
  if (!relay_config_shared(st)) {
    reply_json(h, req, 200, answer);
    return;
  }
  if (!x && !(x = ctx_new(st, req, A_PUT))) {
    json_decref(answer);
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  json_decref(x->items);
  x->items = answer;
  x->pending = 1;
  if (relay_config_publish(st, text, len, on_published, x) < 0) on_published(x, -EIO);
}

/* ---- GET /relays, DELETE /relays/<domain> --------------------------------------------------- */

/* The relay-config.json object in the file. NULL with a message in err. */
static json_t *load_file(relay_state *st, char *err, size_t errlen) {
  json_error_t je;
  json_t *v = json_load_file(relay_config_path(st), JSON_REJECT_DUPLICATES, &je);
  if (!v) {
    snprintf(err, errlen, "%s:%d:%d: %s", relay_config_path(st), je.line, je.column, je.text);
    return NULL;
  }
  if (!json_is_object(v)) {
    snprintf(err, errlen, "%s: not a JSON object", relay_config_path(st));
    json_decref(v);
    return NULL;
  }
  return v;
}

static void get_relays(relay_state *st, evs_request *req) {
  const evs_host *h = relay_host(st);
  char err[512];
  json_t *v = load_file(st, err, sizeof err);
  if (!v) {
    h->respond_error(req, 500, "internal-error", err);
    return;
  }
  reply_json(h, req, 200, json_pack("{s:s,s:o}", "path", relay_config_path(st), "relays", v));
}

static void delete_relay(relay_state *st, evs_request *req, const char *segment) {
  const evs_host *h = relay_host(st);
  char domain[PARAM_MAX], err[1024];
  if (decode(segment, strlen(segment), domain, sizeof domain) < 0 || !valid_domain(domain)) {
    h->respond_error(req, 404, "relay-not-found", "No relay has this domain");
    return;
  }
  json_t *v = load_file(st, err, sizeof err);
  if (!v) {
    h->respond_error(req, 500, "internal-error", err);
    return;
  }
  /* The file's keys may be written in any case; relay domains compare case-insensitively. */
  const char *key = NULL, *k;
  json_t *val;
  json_object_foreach(v, k, val) {
    if (strcasecmp(k, domain) == 0) key = k;
  }
  if (!key) {
    json_decref(v);
    h->respond_error(req, 404, "relay-not-found", "No relay has this domain");
    return;
  }
  json_object_del(v, key);
  char *text = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(v);
  if (!text) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  size_t tl = strlen(text);
  int rc = relay_config_replace(st, text, tl, err, sizeof err);
  if (rc < 0) {
    free(text);
    h->respond_error(req, rc == -EINVAL ? 400 : 500, rc == -EINVAL ? "bad-request" : "internal-error",
                     err);
    return;
  }
  answer_after_publish(st, req, NULL, text, tl,
                       json_pack("{s:s,s:I}", "deleted", domain, "relays",
                                 (json_int_t)relay_current_config(st)->n));
  free(text);
}

/* ---- PUT /relays -------------------------------------------------------------------------- */

static void on_put_body(void *arg, int status, const uint8_t *data, size_t len) {
  admin_ctx *x = arg;
  if (!ctx_resume(x)) return;
  relay_state *st = x->st;
  const evs_host *h = relay_host(st);
  evs_request *req = x->req;
  if (status == -E2BIG) {
    h->respond_error(req, 413, "payload-too-large", "relay-config.json may be at most 1 MiB");
    return;
  }
  if (status < 0) {
    h->respond_error(req, 400, "bad-request", "The request body could not be read");
    return;
  }
  char err[1024];
  int rc = relay_config_replace(st, (const char *)data, len, err, sizeof err);
  if (rc == -EINVAL || rc == -EFBIG) {
    h->respond_error(req, 400, "bad-request", err);
    return;
  }
  if (rc < 0) {
    h->respond_error(req, 500, "internal-error", err);
    return;
  }
  answer_after_publish(st, req, x, (const char *)data, len,
                       json_pack("{s:I}", "relays", (json_int_t)relay_current_config(st)->n));
}

/* ---- GET /relays/structures --------------------------------------------------------------- */

static int64_t last_seen(json_t *rec) {
  json_t *v = json_object_get(rec, "lastSeen");
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static int by_last_seen_desc(const void *a, const void *b) {
  int64_t x = last_seen(*(json_t *const *)a), y = last_seen(*(json_t *const *)b);
  return x < y ? 1 : x > y ? -1 : 0;
}

static void on_structure(void *arg, int status, const char *key, const uint8_t *v, size_t len) {
  admin_ctx *x = arg;
  if (key) {
    if (!x->req) return;
    if (json_array_size(x->items) >= STRUCTURES_MAX) {
      x->truncated = 1;
      return;
    }
    json_t *rec = json_loadb((const char *)v, len, 0, NULL);
    if (json_is_object(rec))
      json_array_append(x->items, rec);
    json_decref(rec);
    return;
  }
  if (!ctx_resume(x)) return;
  const evs_host *h = relay_host(x->st);
  evs_request *req = x->req;
  if (status < 0) {
    h->respond_error(req, 500, "internal-error", "The store is unavailable");
    return;
  }
  size_t n = json_array_size(x->items);
  json_t **sorted = n ? malloc(n * sizeof *sorted) : NULL;
  json_t *out = json_array();
  if ((n && !sorted) || !out) {
    free(sorted);
    json_decref(out);
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) sorted[i] = json_array_get(x->items, i);
  if (n) qsort(sorted, n, sizeof *sorted, by_last_seen_desc);
  for (size_t i = 0; i < n; i++) json_array_append(out, sorted[i]);
  free(sorted);
  json_t *obj = json_pack("{s:o}", "structures", out);
  if (obj && x->truncated) json_object_set_new(obj, "truncated", json_true());
  reply_json(h, req, 200, obj);
}

/* ---- GET /activity ------------------------------------------------------------------------ */

static int matches(const admin_ctx *x, json_t *rec) {
  const char *s;
  if (*x->relay) {
    s = json_string_value(json_object_get(rec, "relay"));
    if (!s || strcasecmp(s, x->relay) != 0) return 0;
  }
  if (*x->method) {
    s = json_string_value(json_object_get(rec, "method"));
    if (!s || strcasecmp(s, x->method) != 0) return 0;
  }
  if (*x->request_id) {
    s = json_string_value(json_object_get(rec, "requestId"));
    if (!s || strcmp(s, x->request_id) != 0) return 0;
  }
  if (x->status_exact || x->status_class) {
    json_t *st = json_object_get(rec, "status");
    if (!json_is_integer(st)) return 0;
    json_int_t code = json_integer_value(st);
    if (x->status_exact && code != x->status_exact) return 0;
    if (x->status_class && code / 100 != x->status_class) return 0;
  }
  return 1;
}

static void on_transaction(void *arg, int status, int64_t ts_ms, const char *json) {
  admin_ctx *x = arg;
  (void)ts_ms;
  if (json) {
    if (!x->req || json_array_size(x->items) >= x->limit) return;
    json_t *rec = json_loads(json, 0, NULL);
    if (json_is_object(rec) && matches(x, rec)) json_array_append(x->items, rec);
    json_decref(rec);
    return;
  }
  if (!ctx_resume(x)) return;
  const evs_host *h = relay_host(x->st);
  evs_request *req = x->req;
  if (status < 0) {
    h->respond_error(req, 500, "internal-error", "The store is unavailable");
    return;
  }
  reply_json(h, req, 200, json_pack("{s:O}", "transactions", x->items));
}

/* ---- routing ------------------------------------------------------------------------------ */

/* Starts a store scan or query for x; answers 500 itself on failure. */
static void start_read(admin_ctx *x) {
  relay_state *st = x->st;
  const evs_host *h = relay_host(st);
  int rc;
  x->pending = 1;
  if (!(x->items = json_array())) {
    rc = -ENOMEM;
  } else if (x->action == A_STRUCTURES) {
    char prefix[PARAM_MAX + 16];
    snprintf(prefix, sizeof prefix, "structure/%s%s", x->relay, *x->relay ? "/" : "");
    rc = h->store_scan(relay_plugin(st), prefix, on_structure, x);
  } else {
    int filtered = *x->relay || *x->method || *x->request_id || x->status_exact || x->status_class;
    rc = h->store_query(relay_plugin(st), "transactions", x->since_ms,
                        filtered ? ACTIVITY_SCAN_MAX : x->limit, on_transaction, x);
  }
  if (rc < 0) {
    x->pending = 0;
    h->respond_error(x->req, 500, "internal-error",
                     rc == -ENOMEM ? "Out of memory" : "The store is unavailable");
  }
}

int relay_admin_route(relay_state *st, evs_request *req) {
  const evs_host *h = relay_host(st);
  const evs_request_info *info = h->request_info(req);
  if (!info->listener || strcmp(info->listener, "admin") != 0) return EVS_DECLINED;
  const char *path = info->path, *m = info->method, *query = info->query ? info->query : "";
  int get = strcmp(m, "GET") == 0;

  if (strcmp(path, "/relays") == 0) {
    if (get) {
      get_relays(st, req);
    } else if (strcmp(m, "PUT") == 0) {
      admin_ctx *x = ctx_new(st, req, A_PUT);
      if (!x) {
        h->respond_error(req, 500, "internal-error", "Out of memory");
        return EVS_HANDLED;
      }
      x->pending = 1;
      int rc = h->read_body(req, EVS_RELAY_CONFIG_MAX_BYTES, on_put_body, x);
      if (rc < 0) {
        x->pending = 0;
        if (rc == -E2BIG)
          h->respond_error(req, 413, "payload-too-large", "relay-config.json may be at most 1 MiB");
        else
          h->respond_error(req, 400, "bad-request", "The request body could not be read");
      }
    } else {
      h->respond_error(req, 405, "method-not-allowed", "/relays takes GET and PUT");
    }
    return EVS_HANDLED;
  }

  int structures = strcmp(path, "/relays/structures") == 0;
  if ((structures && get) || strcmp(path, "/activity") == 0) {
    if (!get) {
      h->respond_error(req, 405, "method-not-allowed", "/activity takes GET");
      return EVS_HANDLED;
    }
    admin_ctx *x = ctx_new(st, req, structures ? A_STRUCTURES : A_ACTIVITY);
    if (!x) {
      h->respond_error(req, 500, "internal-error", "Out of memory");
      return EVS_HANDLED;
    }
    const char *bad = parse_query(x, query, !structures);
    if (bad)
      h->respond_error(req, 400, "bad-request", bad);
    else
      start_read(x);
    return EVS_HANDLED;
  }

  if (strncmp(path, "/relays/", 8) == 0 && path[8] && !strchr(path + 8, '/')) {
    if (strcmp(m, "DELETE") == 0)
      delete_relay(st, req, path + 8);
    else
      h->respond_error(req, 405, "method-not-allowed", "/relays/<domain> takes DELETE");
    return EVS_HANDLED;
  }
  return EVS_DECLINED;
}
