/*
 * outbound_config.c: an app's Outbound Relay configuration, validated and compiled, and the
 * table of every app's (outbound_config.h). Library code: no plugin state, no logging.
 */
#include "outbound_config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpath.h" /* plugins/relay-common: the same selectors as the Inbound Relay's */

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  if (errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -EINVAL;
}

static int oom(char *err, size_t errlen) {
  if (errlen) snprintf(err, errlen, "out of memory");
  return -ENOMEM;
}

static int id_valid(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return 0;
  }
  return 1;
}

int evs__ob_app_id_valid(const char *s) { return s && id_valid(s, EVS__OB_APP_ID_MAX); }

/* Every member of o is one of known[]; else an error naming the first stranger. */
static int check_members(const json_t *o, const char *const *known, const char *where, char *err,
                         size_t errlen) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    size_t i = 0;
    while (known[i] && strcmp(known[i], k) != 0) i++;
    if (!known[i]) {
      char list[256] = "";
      for (i = 0; known[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, known[i], sizeof list - strlen(list) - 1);
      }
      return fail(err, errlen, "%s: unknown member \"%.64s\" (known: %s)", where, k, list);
    }
  }
  return 0;
}

void evs__ob_app_free(evs__ob_app *a) {
  if (!a) return;
  for (size_t i = 0; i < a->n; i++) {
    evs__ob_destination *d = &a->dests[i];
    free(d->id);
    free(d->domain);
    for (size_t k = 0; k < d->nfields; k++) free(d->fields[k]);
    free(d->fields);
  }
  free(a->dests);
  evs__ob_matcher_free(a->matcher);
  json_decref(a->config);
  free(a->v2_body);
  free(a->app_id);
  free(a);
}

static int same_pattern(const evs__ob_pattern *x, const evs__ob_pattern *y) {
  return x->host_kind == y->host_kind && x->port == y->port && x->path_kind == y->path_kind &&
         strcmp(x->host, y->host) == 0 && strcmp(x->path, y->path) == 0;
}

static int parse_destination(const char *id, const json_t *v, evs__ob_destination *d, char *err,
                             size_t errlen) {
  static const char *const known[] = {"destinationDomain", "fieldsToEncrypt", "encryptFiles", NULL};
  char where[128];
  snprintf(where, sizeof where, "outboundDestinations.%s", id);
  if (!id_valid(id, EVS__OB_ID_MAX))
    return fail(err, errlen, "outboundDestinations: the destination id \"%.64s\" must be 1 to 64 "
                "letters, digits, '_' or '-'", id);
  if (!json_is_object(v)) return fail(err, errlen, "%s: expected an object", where);
  int rc = check_members(v, known, where, err, errlen);
  if (rc < 0) return rc;
  if (!(d->id = strdup(id))) return oom(err, errlen);

  const json_t *dom = json_object_get(v, "destinationDomain");
  if (!dom) return fail(err, errlen, "%s: missing member \"destinationDomain\"", where);
  if (!json_is_string(dom))
    return fail(err, errlen, "%s.destinationDomain: expected a string", where);
  const char *why;
  if (evs__ob_pattern_parse(json_string_value(dom), json_string_length(dom), &d->pattern, &why) < 0)
    return fail(err, errlen, "%s.destinationDomain: %s", where, why);
  if (!(d->domain = strdup(json_string_value(dom)))) return oom(err, errlen);

  const json_t *f = json_object_get(v, "fieldsToEncrypt");
  if (f) {
    size_t i;
    json_t *e;
    if (!json_is_array(f)) return fail(err, errlen, "%s.fieldsToEncrypt: expected an array of strings", where);
    if (json_array_size(f) > EVS__OB_MAX_FIELDS)
      return fail(err, errlen, "%s.fieldsToEncrypt: at most %d fields", where, EVS__OB_MAX_FIELDS);
    d->fields = calloc(json_array_size(f) + 1, sizeof *d->fields);
    if (!d->fields) return oom(err, errlen);
    json_array_foreach(f, i, e) {
      if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 256 ||
          strlen(json_string_value(e)) != json_string_length(e))
        return fail(err, errlen, "%s.fieldsToEncrypt[%zu]: expected a non-empty string of at most "
                    "256 bytes", where, i);
      const char *sel = json_string_value(e);
      evs__jsonpath *jp = NULL;
      char jerr[160];
      rc = evs__jsonpath_compile(&sel, 1, &jp, jerr, sizeof jerr);
      if (rc == -ENOMEM) return oom(err, errlen);
      if (rc < 0) return fail(err, errlen, "%s.fieldsToEncrypt[%zu]: %s", where, i, jerr);
      evs__jsonpath_free(jp);
      if (!(d->fields[d->nfields] = strdup(sel))) return oom(err, errlen);
      d->nfields++;
    }
  }
  const json_t *ef = json_object_get(v, "encryptFiles");
  if (ef) {
    if (!json_is_boolean(ef)) return fail(err, errlen, "%s.encryptFiles: expected true or false", where);
    d->encrypt_files = json_is_true(ef);
  }
  return 0;
}

/* The normalised configuration and the /v2/relay-outbound answer, from the compiled app. */
static int render(evs__ob_app *a) {
  json_t *dests = json_object(), *pub = json_object();
  if (!dests || !pub) goto nomem;
  for (size_t i = 0; i < a->n; i++) {
    const evs__ob_destination *d = &a->dests[i];
    json_t *fields = json_array();
    if (!fields) goto nomem;
    for (size_t k = 0; k < d->nfields; k++) json_array_append_new(fields, json_string(d->fields[k]));
    json_t *o = json_pack("{s:s, s:O, s:b}", "destinationDomain", d->domain, "fieldsToEncrypt",
                          fields, "encryptFiles", d->encrypt_files);
    json_t *p = json_pack("{s:s, s:s, s:O, s:b}", "id", d->id, "destinationDomain", d->domain,
                          "fieldsToEncrypt", fields, "encryptFiles", d->encrypt_files);
    json_decref(fields);
    if (!o || !p || json_object_set_new(dests, d->id, o) < 0 || json_object_set_new(pub, d->id, p) < 0) {
      json_decref(o);
      json_decref(p);
      goto nomem;
    }
  }
  a->config = json_pack("{s:o, s:s}", "outboundDestinations", dests, "unconfiguredHosts",
                        a->refuse_unconfigured ? "refuse" : "passthrough");
  dests = NULL;
  json_t *answer = json_pack("{s:o}", "outboundDestinations", pub);
  pub = NULL;
  if (!a->config || !answer) {
    json_decref(answer);
    goto nomem;
  }
  a->v2_body = json_dumps(answer, JSON_COMPACT);
  json_decref(answer);
  if (!a->v2_body) goto nomem;
  a->v2_len = strlen(a->v2_body);
  return 0;
nomem:
  json_decref(dests);
  json_decref(pub);
  return -ENOMEM;
}

int evs__ob_app_compile(const char *app_id, const json_t *config, evs__ob_app **ret, char *err,
                        size_t errlen) {
  static const char *const known[] = {"appId", "outboundDestinations", "unconfiguredHosts", NULL};
  if (!evs__ob_app_id_valid(app_id))
    return fail(err, errlen, "appId: must be 1 to 64 letters, digits, '_' or '-'");
  if (!json_is_object(config)) return fail(err, errlen, "the document must be a JSON object");
  int rc = check_members(config, known, "the document", err, errlen);
  if (rc < 0) return rc;
  const json_t *aid = json_object_get(config, "appId");
  if (aid && (!json_is_string(aid) || strcmp(json_string_value(aid), app_id) != 0))
    return fail(err, errlen, "appId: the document is for \"%.64s\", not for the app %s",
                json_is_string(aid) ? json_string_value(aid) : "?", app_id);
  const json_t *od = json_object_get(config, "outboundDestinations");
  if (!od) return fail(err, errlen, "missing member \"outboundDestinations\" (an object, {} for none)");
  if (!json_is_object(od)) return fail(err, errlen, "outboundDestinations: expected an object of destinations by id");
  if (json_object_size(od) > EVS__OB_MAX_DESTINATIONS)
    return fail(err, errlen, "outboundDestinations: at most %d destinations", EVS__OB_MAX_DESTINATIONS);

  evs__ob_app *a = calloc(1, sizeof *a);
  if (!a) return oom(err, errlen);
  a->refuse_unconfigured = 1;
  if (!(a->app_id = strdup(app_id))) goto nomem;
  const json_t *uh = json_object_get(config, "unconfiguredHosts");
  if (uh) {
    const char *s = json_string_value(uh);
    if (s && strcmp(s, "refuse") == 0) a->refuse_unconfigured = 1;
    else if (s && strcmp(s, "passthrough") == 0) a->refuse_unconfigured = 0;
    else {
      rc = fail(err, errlen, "unconfiguredHosts: expected \"refuse\" or \"passthrough\"");
      goto out;
    }
  }
  a->dests = calloc(json_object_size(od) + 1, sizeof *a->dests);
  if (!a->dests) goto nomem;
  const char *id;
  json_t *v;
  json_object_foreach((json_t *)od, id, v) {
    evs__ob_destination *d = &a->dests[a->n++];
    if ((rc = parse_destination(id, v, d, err, errlen)) < 0) goto out;
    for (size_t i = 0; i + 1 < a->n; i++)
      if (same_pattern(&a->dests[i].pattern, &d->pattern)) {
        rc = fail(err, errlen, "outboundDestinations.%s.destinationDomain: \"%.300s\" is the same "
                  "destination as outboundDestinations.%s (\"%.300s\"); keep one",
                  d->id, d->domain, a->dests[i].id, a->dests[i].domain);
        goto out;
      }
  }
  evs__ob_pattern *pats = calloc(a->n + 1, sizeof *pats);
  if (!pats) goto nomem;
  for (size_t i = 0; i < a->n; i++) pats[i] = a->dests[i].pattern;
  a->matcher = evs__ob_matcher_new(pats, a->n);
  free(pats);
  if (!a->matcher || render(a) < 0) goto nomem;
  *ret = a;
  return 0;
nomem:
  rc = oom(err, errlen);
out:
  evs__ob_app_free(a);
  return rc;
}

/* FNV-1a, 64 bits: an etag needs to change with the content, not to resist forgery. */
static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

json_t *evs__ob_app_doc(evs__ob_app *a, uint64_t version, int64_t updated_at) {
  char *text = json_dumps(a->config, JSON_COMPACT | JSON_SORT_KEYS);
  if (!text) return NULL;
  snprintf(a->etag, sizeof a->etag, "\"%" PRIu64 "-%016" PRIx64 "\"", version, fnv1a(text, strlen(text)));
  free(text);
  a->version = version;
  a->updated_at = updated_at;
  return json_pack("{s:s, s:I, s:s, s:I, s:O}", "appId", a->app_id, "version", (json_int_t)version,
                   "etag", a->etag, "updatedAt", (json_int_t)updated_at, "config", a->config);
}

int evs__ob_app_from_doc(const char *app_id, const uint8_t *doc, size_t len, evs__ob_app **ret,
                         char *err, size_t errlen) {
  json_error_t je;
  json_t *o = json_loadb((const char *)doc, len, JSON_REJECT_DUPLICATES, &je);
  if (!o) return fail(err, errlen, "stored document: %s", je.text);
  const json_t *ver = json_object_get(o, "version"), *at = json_object_get(o, "updatedAt");
  const char *aid = json_string_value(json_object_get(o, "appId"));
  int rc;
  if (!json_is_integer(ver) || json_integer_value(ver) < 1 || !json_is_integer(at) || !aid ||
      strcmp(aid, app_id) != 0) {
    rc = fail(err, errlen, "stored document: missing or wrong appId, version or updatedAt");
  } else {
    evs__ob_app *a = NULL;
    rc = evs__ob_app_compile(app_id, json_object_get(o, "config"), &a, err, errlen);
    if (rc == 0) {
      json_t *check = evs__ob_app_doc(a, (uint64_t)json_integer_value(ver), json_integer_value(at));
      if (!check) {
        evs__ob_app_free(a);
        rc = oom(err, errlen);
      } else {
        json_decref(check);
        *ret = a;
      }
    }
  }
  json_decref(o);
  return rc;
}

const evs__ob_destination *evs__ob_app_match(const evs__ob_app *a, const char *host, int port,
                                             const char *path, size_t path_len) {
  if (!a) return NULL;
  int i = evs__ob_match(a->matcher, host, port, path, path_len);
  return i < 0 ? NULL : &a->dests[i];
}

struct evs__ob_table {
  evs__ob_app **apps;
  size_t n, cap;
  int sealed;
};

evs__ob_table *evs__ob_table_new(void) { return calloc(1, sizeof(evs__ob_table)); }

int evs__ob_table_add(evs__ob_table *t, evs__ob_app *a) {
  if (t->sealed) {
    evs__ob_app_free(a);
    return -EPERM;
  }
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->apps[i]->app_id, a->app_id) == 0) {
      evs__ob_app_free(a);
      return -EEXIST;
    }
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 16;
    evs__ob_app **n = realloc(t->apps, cap * sizeof *n);
    if (!n) {
      evs__ob_app_free(a);
      return -ENOMEM;
    }
    t->apps = n;
    t->cap = cap;
  }
  t->apps[t->n++] = a;
  return 0;
}

static int by_app_id(const void *x, const void *y) {
  return strcmp((*(evs__ob_app *const *)x)->app_id, (*(evs__ob_app *const *)y)->app_id);
}

void evs__ob_table_seal(evs__ob_table *t) {
  if (t->n) qsort(t->apps, t->n, sizeof *t->apps, by_app_id);
  t->sealed = 1;
}

const evs__ob_app *evs__ob_table_get(const evs__ob_table *t, const char *app_id) {
  if (!t || !app_id) return NULL;
  size_t lo = 0, hi = t->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(app_id, t->apps[mid]->app_id);
    if (c == 0) return t->apps[mid];
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return NULL;
}

size_t evs__ob_table_count(const evs__ob_table *t) { return t ? t->n : 0; }
const evs__ob_app *evs__ob_table_at(const evs__ob_table *t, size_t i) {
  return t && i < t->n ? t->apps[i] : NULL;
}

void evs__ob_table_free(evs__ob_table *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n; i++) evs__ob_app_free(t->apps[i]);
  free(t->apps);
  free(t);
}

void evs__ob_selection_free(evs__ob_selection *s) {
  if (!s) return;
  evs__jsonpath_free(s->paths);
  for (size_t k = 0; k < s->nfields; k++) free(s->fields[k]);
  free(s->fields);
  free(s->names);
  free(s);
}

int evs__ob_selection_new(const evs__ob_destination *d, evs__ob_selection **ret) {
  if (d->nfields == 0 && !d->encrypt_files) return -EINVAL;
  evs__ob_selection *s = calloc(1, sizeof *s);
  if (!s || !(s->fields = calloc(d->nfields + 1, sizeof *s->fields)) ||
      !(s->names = calloc(d->nfields + 1, sizeof *s->names))) {
    evs__ob_selection_free(s);
    return -ENOMEM;
  }
  s->encrypt_files = d->encrypt_files;
  for (size_t k = 0; k < d->nfields; k++) {
    if (!(s->fields[k] = strdup(d->fields[k]))) {
      evs__ob_selection_free(s);
      return -ENOMEM;
    }
    s->nfields++;
    const char *n = s->fields[k];
    /* `$.<name>`: one plain member, which is also a form or multipart field's name. */
    if (n[0] == '$' && n[1] == '.' && n[2] && !strpbrk(n + 2, ".[]*'\"\\ "))
      s->names[s->nnames++] = n + 2;
  }
  char jerr[160];
  int rc = s->nfields == 0 ? 0 : evs__jsonpath_compile((const char *const *)s->fields, s->nfields,
                                                       &s->paths, jerr, sizeof jerr);
  if (rc < 0) {
    evs__ob_selection_free(s);
    return rc == -ENOMEM ? -ENOMEM : -EINVAL;
  }
  *ret = s;
  return 0;
}
