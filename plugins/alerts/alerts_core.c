/*
 * The host-independent half of the alerts plugin (contract: alerts_core.h): the alerts.json
 * loader, the event sanitiser, payload builders, the webhook signature and the backoff.
 * jansson parses and builds JSON, OpenSSL computes the HMAC; nothing here logs.
 *
 * Payloads are built from an allow-list of the documented alert fields, not by forwarding the
 * event: an emitter that (wrongly) put request data into an event still cannot make it leave the
 * server through an alert.
 */
#include "alerts_core.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const evs__alert_field_names[EVS__AF_COUNT] = {
    "teamUuid",  "errorMessage", "evMessage",   "activityLink",  "timestamp",    "errorType",
    "statusCode", "statusGroup", "relayUuid",   "inboundDomain", "functionUuid", "functionName",
};

static const char *const kind_names[] = {"webhook", "slack", "discord"};

/* ---- alerts.json ------------------------------------------------------------------------- */

static int fail(const char *name, char *err, size_t errlen, const char *jpath, const char *fmt,
                ...) __attribute__((format(printf, 5, 6)));
static int fail(const char *name, char *err, size_t errlen, const char *jpath, const char *fmt,
                ...) {
  if (!err || !errlen) return -EINVAL;
  int n = snprintf(err, errlen, "%s: %s: ", name, jpath);
  if (n >= 0 && (size_t)n < errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -EINVAL;
}

/* A destination URL: http(s)://, a non-empty authority, no spaces or control characters. The
 * host's HTTP client does the rest (it refuses what it cannot connect to). */
static int url_ok(const char *u) {
  size_t skip;
  if (strncmp(u, "https://", 8) == 0) skip = 8;
  else if (strncmp(u, "http://", 7) == 0) skip = 7;
  else return 0;
  if (strlen(u) > EVS__ALERTS_MAX_URL) return 0;
  if (u[skip] == '\0' || u[skip] == '/' || u[skip] == '?' || u[skip] == ':') return 0;
  for (const unsigned char *p = (const unsigned char *)u; *p; p++)
    if (*p <= 0x20 || *p == 0x7f) return 0;
  return 1;
}

/* Relay domains and function names: printable ASCII without spaces, 1..253 bytes. */
static int pattern_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 253) return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p <= 0x20 || *p >= 0x7f) return 0;
  return 1;
}

static int push_str(char ***arr, size_t *n, const char *s, int lower) {
  for (size_t i = 0; i < *n; i++)
    if (strcmp((*arr)[i], s) == 0) return 0; /* same pattern twice: keep one */
  char **na = realloc(*arr, (*n + 1) * sizeof *na);
  if (!na) return -ENOMEM;
  *arr = na;
  char *c = strdup(s);
  if (!c) return -ENOMEM;
  if (lower)
    for (char *p = c; *p; p++)
      if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
  na[(*n)++] = c;
  return 0;
}

void evs__alerts_config_free(evs__alerts_config *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++) {
    evs__alert_dest *d = &c->dests[i];
    free(d->url);
    for (size_t k = 0; k < d->nrelays; k++) free(d->relays[k]);
    for (size_t k = 0; k < d->nfunctions; k++) free(d->functions[k]);
    free(d->relays);
    free(d->functions);
  }
  free(c->dests);
  free(c);
}

static int parse_entry(evs__alerts_config *c, json_t *e, size_t idx, const char *name, char *err,
                       size_t errlen) {
  char jp[64];
  snprintf(jp, sizeof jp, "$[%zu]", idx);
  if (!json_is_object(e)) return fail(name, err, errlen, jp, "expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(e, key, v) {
    if (strcmp(key, "relay") != 0 && strcmp(key, "function") != 0 && strcmp(key, "type") != 0 &&
        strcmp(key, "url") != 0)
      return fail(name, err, errlen, jp,
                  "unknown member (known members: relay, function, type, url)");
    if (!json_is_string(v))
      return fail(name, err, errlen, jp, "member '%s': expected a string", key);
  }
  const char *relay = json_string_value(json_object_get(e, "relay"));
  const char *function = json_string_value(json_object_get(e, "function"));
  const char *type = json_string_value(json_object_get(e, "type"));
  const char *url = json_string_value(json_object_get(e, "url"));
  if (!relay == !function)
    return fail(name, err, errlen, jp, "exactly one of 'relay' and 'function' is required");
  const char *pat = relay ? relay : function;
  if (!pattern_ok(pat))
    return fail(name, err, errlen, jp, "'%s': expected a domain, a name or \"*\"",
                relay ? "relay" : "function");
  if (!type) return fail(name, err, errlen, jp, "'type' is required");
  int kind = -1;
  for (int k = 0; k < 3; k++)
    if (strcmp(type, kind_names[k]) == 0) kind = k;
  if (kind < 0)
    return fail(name, err, errlen, jp, "'type': expected one of webhook, slack, discord");
  if (!url) return fail(name, err, errlen, jp, "'url' is required");
  /* The URL is not quoted back: a chat webhook URL is a credential. */
  if (!url_ok(url))
    return fail(name, err, errlen, jp,
                "'url': expected an http:// or https:// URL with a host, no spaces, at most %d "
                "bytes",
                EVS__ALERTS_MAX_URL);

  evs__alert_dest *d = NULL;
  for (size_t i = 0; i < c->n; i++)
    if ((int)c->dests[i].kind == kind && strcmp(c->dests[i].url, url) == 0) d = &c->dests[i];
  if (!d) {
    evs__alert_dest *nd = realloc(c->dests, (c->n + 1) * sizeof *nd);
    if (!nd) return -ENOMEM;
    c->dests = nd;
    d = &nd[c->n];
    memset(d, 0, sizeof *d);
    d->kind = (evs__alert_kind)kind;
    if (!(d->url = strdup(url))) return -ENOMEM;
    c->n++;
  }
  if (relay) return push_str(&d->relays, &d->nrelays, relay, 1);
  return push_str(&d->functions, &d->nfunctions, function, 0);
}

int evs__alerts_config_parse(const char *text, size_t len, const char *name,
                             evs__alerts_config **ret_config, char *err, size_t errlen) {
  json_error_t je;
  name = name ? name : "alerts.json";
  json_t *root = json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    /* jansson appends "near '<token>'": the token may be (part of) a webhook URL, which is a
     * credential, so only line, column and the reason are kept. */
    char *near = strstr(je.text, " near ");
    if (near) *near = 0;
    if (err && errlen) snprintf(err, errlen, "%s:%d:%d: %s", name, je.line, je.column, je.text);
    return -EINVAL;
  }
  int rc = 0;
  evs__alerts_config *c = calloc(1, sizeof *c);
  if (!c) {
    rc = -ENOMEM;
    goto out;
  }
  if (!json_is_array(root)) {
    rc = fail(name, err, errlen, "$", "expected an array of alerts");
    goto out;
  }
  if (json_array_size(root) > EVS__ALERTS_MAX_ENTRIES) {
    rc = fail(name, err, errlen, "$", "more than %d alerts", EVS__ALERTS_MAX_ENTRIES);
    goto out;
  }
  size_t i;
  json_t *e;
  json_array_foreach(root, i, e) {
    rc = parse_entry(c, e, i, name, err, errlen);
    if (rc == -ENOMEM && err && errlen) snprintf(err, errlen, "%s: out of memory", name);
    if (rc < 0) goto out;
  }
  c->nentries = json_array_size(root);
out:
  json_decref(root);
  if (rc < 0) {
    evs__alerts_config_free(c);
    return rc;
  }
  *ret_config = c;
  return 0;
}

int evs__alerts_config_load_file(const char *path, evs__alerts_config **ret_config, char *err,
                                 size_t errlen) {
  if (!path) return -ENOENT;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e != ENOENT && err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  size_t cap = 16 * 1024, len = 0;
  char *buf = malloc(cap);
  int rc = 0;
  if (!buf) {
    close(fd);
    return -ENOMEM;
  }
  for (;;) {
    if (len == cap) {
      if (cap > EVS__ALERTS_MAX_FILE) {
        if (err && errlen)
          snprintf(err, errlen, "%s: larger than %u bytes", path, EVS__ALERTS_MAX_FILE);
        rc = -EFBIG;
        goto out;
      }
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        rc = -ENOMEM;
        goto out;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = -errno;
      if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
      goto out;
    }
    if (n == 0) break;
    len += (size_t)n;
  }
  if (len > EVS__ALERTS_MAX_FILE) {
    if (err && errlen) snprintf(err, errlen, "%s: larger than %u bytes", path, EVS__ALERTS_MAX_FILE);
    rc = -EFBIG;
    goto out;
  }
  rc = evs__alerts_config_parse(buf, len, path, ret_config, err, errlen);
out:
  free(buf);
  close(fd);
  return rc;
}

/* ---- events ------------------------------------------------------------------------------ */

void evs__alert_event_free(evs__alert_event *ev) {
  if (!ev) return;
  free(ev->type);
  for (int i = 0; i < EVS__AF_COUNT; i++) free(ev->str[i]);
  free(ev);
}

int evs__alert_event_parse(const char *type, const char *json, evs__alert_event **ret_event) {
  if (!type || !*type || !json) return -EINVAL;
  json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
  if (!root || !json_is_object(root)) {
    json_decref(root);
    return -EINVAL;
  }
  int rc = 0;
  evs__alert_event *ev = calloc(1, sizeof *ev);
  if (!ev || !(ev->type = strdup(type))) {
    rc = -ENOMEM;
    goto out;
  }
  for (int i = 0; i < EVS__AF_COUNT; i++) {
    json_t *v = json_object_get(root, evs__alert_field_names[i]);
    if (!v) continue;
    if (i == EVS__AF_STATUS_CODE) {
      if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 999) {
        ev->status_code = (int)json_integer_value(v);
        ev->has_status_code = 1;
      }
      continue;
    }
    if (!json_is_string(v) || json_string_length(v) > EVS__ALERTS_MAX_FIELD) continue;
    /* Strings with NUL bytes would be cut short silently later: drop them instead. */
    if (strlen(json_string_value(v)) != json_string_length(v)) continue;
    if (!(ev->str[i] = strdup(json_string_value(v)))) {
      rc = -ENOMEM;
      goto out;
    }
  }
out:
  json_decref(root);
  if (rc < 0) {
    evs__alert_event_free(ev);
    return rc;
  }
  *ret_event = ev;
  return 0;
}

static int match_list(char *const *pats, size_t n, const char *value) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(pats[i], "*") == 0) return 1;
    if (value && strcasecmp(pats[i], value) == 0) return 1;
  }
  return 0;
}

int evs__alert_dest_matches(const evs__alert_dest *d, const evs__alert_event *ev) {
  if (strncmp(ev->type, "relay.", 6) == 0)
    return match_list(d->relays, d->nrelays, ev->str[EVS__AF_INBOUND_DOMAIN]);
  if (strncmp(ev->type, "function.", 9) == 0)
    return match_list(d->functions, d->nfunctions, ev->str[EVS__AF_FUNCTION_NAME]);
  return 0;
}

/* ---- payloads ---------------------------------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

#define SBUF_MAX (64u * 1024) /* a chat message built from at most 12 bounded fields */

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 512;
    while (nc < b->len + n + 1) nc *= 2;
    char *np = nc <= SBUF_MAX ? realloc(b->p, nc) : NULL;
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* Slack's mrkdwn treats &, < and > as markup (links, mentions): escape them as Slack asks. */
static void sb_slack(sbuf *b, const char *s) {
  for (; *s; s++) {
    if (*s == '&') sb_str(b, "&amp;");
    else if (*s == '<') sb_str(b, "&lt;");
    else if (*s == '>') sb_str(b, "&gt;");
    else sb_add(b, s, 1);
  }
}

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

/* One human-readable message, the same for both chat services. Links: Slack's <url|text> form
 * for Slack; Discord shows the bare URL. */
static char *chat_text(evs__alert_kind kind, const evs__alert_event *ev) {
  sbuf b = {0};
  void (*add)(sbuf *, const char *) = kind == EVS__ALERT_SLACK ? sb_slack : sb_str;
  const char *const *s = (const char *const *)ev->str;
  int fn = strncmp(ev->type, "function.", 9) == 0;
  char code[16] = "-";
  if (ev->has_status_code) snprintf(code, sizeof code, "%d", ev->status_code);
  sb_str(&b, fn ? "Function error" : "Relay error");
  sb_str(&b, " on ");
  add(&b, or_dash(fn ? s[EVS__AF_FUNCTION_NAME] : s[EVS__AF_INBOUND_DOMAIN]));
  sb_str(&b, ": ");
  sb_str(&b, code);
  sb_str(&b, " ");
  add(&b, or_dash(s[EVS__AF_ERROR_TYPE]));
  sb_str(&b, " (");
  add(&b, or_dash(s[EVS__AF_STATUS_GROUP]));
  sb_str(&b, ")\n");
  add(&b, or_dash(s[EVS__AF_ERROR_MESSAGE]));
  if (s[EVS__AF_EV_MESSAGE]) {
    sb_str(&b, "\n");
    add(&b, s[EVS__AF_EV_MESSAGE]);
  }
  sb_str(&b, "\nAt ");
  add(&b, or_dash(s[EVS__AF_TIMESTAMP]));
  if (s[EVS__AF_ACTIVITY_LINK]) {
    sb_str(&b, kind == EVS__ALERT_SLACK ? "\n<" : "\n");
    add(&b, s[EVS__AF_ACTIVITY_LINK]);
    sb_str(&b, kind == EVS__ALERT_SLACK ? "|View activity>" : "");
  }
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* Discord refuses messages over 2000 characters; cut longer ones at a UTF-8 boundary after
 * 1990 characters and mark the cut. At least 10 characters (10 bytes) follow the cut, so the
 * 3-byte mark and its NUL fit in place. */
static void discord_cap(char *t) {
  size_t chars = 0, cut = 0;
  for (size_t i = 0; t[i]; i++) {
    if (((unsigned char)t[i] & 0xC0) == 0x80) continue;
    if (chars == 1990) cut = i;
    chars++;
  }
  if (chars > 2000) memcpy(t + cut, "\u2026", sizeof "\u2026");
}

static char *dump(json_t *j, size_t *ret_len) {
  if (!j) return NULL;
  char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (s && ret_len) *ret_len = strlen(s);
  return s;
}

static json_t *chat_json(evs__alert_kind kind, const char *text) {
  if (kind == EVS__ALERT_SLACK) return json_pack("{s:s}", "text", text);
  /* allowed_mentions with no parse types: no @everyone or role ping, whatever the text says. */
  return json_pack("{s:s, s:{s:[]}}", "content", text, "allowed_mentions", "parse");
}

char *evs__alert_body(evs__alert_kind kind, const evs__alert_event *ev, size_t *ret_len) {
  if (kind == EVS__ALERT_WEBHOOK) {
    json_t *o = json_object();
    if (!o) return NULL;
    for (int i = 0; i < EVS__AF_COUNT; i++) {
      json_t *v = NULL;
      if (i == EVS__AF_STATUS_CODE && ev->has_status_code) {
        v = json_integer(ev->status_code);
      } else if (i != EVS__AF_STATUS_CODE && ev->str[i]) {
        v = json_string(ev->str[i]); /* UTF-8: it came out of json_loads */
      } else {
        continue;
      }
      if (!v || json_object_set_new(o, evs__alert_field_names[i], v) < 0) {
        json_decref(o);
        return NULL;
      }
    }
    return dump(o, ret_len);
  }
  char *text = chat_text(kind, ev);
  if (!text) return NULL;
  if (kind == EVS__ALERT_DISCORD) discord_cap(text);
  json_t *j = chat_json(kind, text);
  free(text);
  return dump(j, ret_len);
}

char *evs__alert_summary_body(evs__alert_kind kind, uint64_t count, int64_t max_per_minute,
                              const char *timestamp_iso, size_t *ret_len) {
  char text[256];
  snprintf(text, sizeof text,
           "%llu alert(s) suppressed: more than %lld per minute for this destination",
           (unsigned long long)count, (long long)max_per_minute);
  if (kind == EVS__ALERT_WEBHOOK)
    return dump(json_pack("{s:s, s:s, s:I, s:s}", "errorType", "alerts-suppressed", "evMessage",
                          text, "suppressedCount", (json_int_t)count, "timestamp",
                          timestamp_iso ? timestamp_iso : ""),
                ret_len);
  char msg[300];
  snprintf(msg, sizeof msg, "evserver: %s", text);
  return dump(chat_json(kind, msg), ret_len);
}

/* ---- signature, rate limit, backoff ------------------------------------------------------- */

int evs__alert_sign(const uint8_t *key, size_t key_len, int64_t unix_time, const uint8_t *body,
                    size_t body_len, char *ret, size_t ret_size) {
  if (!key || !key_len || (!body && body_len) || !ret) return -EINVAL;
  if (ret_size < EVS__ALERTS_SIG_MAX) return -ENOSPC;
  char ts[24];
  int tn = snprintf(ts, sizeof ts, "%lld", (long long)unix_time);
  uint8_t mac[EVP_MAX_MD_SIZE];
  size_t mac_len = 0;
  EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *h = m ? EVP_MAC_CTX_new(m) : NULL;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                         OSSL_PARAM_construct_end()};
  int ok = h && EVP_MAC_init(h, key, key_len, params) &&
           EVP_MAC_update(h, (const uint8_t *)ts, (size_t)tn) &&
           EVP_MAC_update(h, (const uint8_t *)".", 1) && EVP_MAC_update(h, body, body_len) &&
           EVP_MAC_final(h, mac, &mac_len, sizeof mac);
  EVP_MAC_CTX_free(h);
  EVP_MAC_free(m);
  if (!ok || mac_len != 32) return -EIO;
  int o = snprintf(ret, ret_size, "t=%s,v1=", ts);
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < mac_len; i++) {
    ret[o++] = hex[mac[i] >> 4];
    ret[o++] = hex[mac[i] & 15];
  }
  ret[o] = 0;
  OPENSSL_cleanse(mac, sizeof mac);
  return 0;
}

uint64_t evs__alert_backoff_ms(unsigned attempt, uint32_t rnd) {
  uint64_t d = 1000;
  for (unsigned i = 1; i < attempt && d < 60000; i++) d *= 2;
  if (d > 60000) d = 60000;
  return d / 2 + rnd % (d / 2 + 1);
}

int evs__alert_retryable(int status) { return status < 0 || status == 429 || status >= 500; }

void evs__alert_url_origin(const char *url, char *ret, size_t ret_size) {
  if (!ret_size) return;
  const char *p = strstr(url, "://");
  size_t n = p ? (size_t)(p + 3 - url) : 0;
  if (p) n += strcspn(p + 3, "/?#");
  /* Credentials in the authority (user:pass@host) are cut off too. */
  const char *at = p ? memchr(p + 3, '@', n - (size_t)(p + 3 - url)) : NULL;
  if (at)
    snprintf(ret, ret_size, "%.*s%.*s", (int)(p + 3 - url), url, (int)(url + n - at - 1), at + 1);
  else
    snprintf(ret, ret_size, "%.*s", (int)n, url);
}
