/*
 * browser_policy.h: the browser plugin's parsers of untrusted or configured text, apart from the plugin
 * so the unit test and fuzz/fuzz_browser_policy.c run them without a host: the per-app origin
 * policy (`allowed_origins`), the Inputs page's query (`app`, `origin`) and Accept-Encoding.
 */
#ifndef EVS_BROWSER_POLICY_H
#define EVS_BROWSER_POLICY_H

#include <stddef.h>

#define EVS_BP_MAX_ORIGIN 256 /* bytes of one origin, scheme://host[:port] */

typedef struct evs_bp_app {
  char app_id[24];
  char **origins; /* each a canonical origin: lower-case scheme and host, no default port */
  size_t norigins;
} evs_bp_app;

typedef struct evs_bp_policy {
  evs_bp_app *apps;
  size_t napps;
} evs_bp_policy;

/* Parses `app_<12 hex>=<origin>[,<origin>...]` entries separated by spaces or ';' into ret
 * (zeroed first; free with evs__bp_policy_free). An app may appear once. Returns 0, or -1 with
 * a one-line reason in err (cap bytes) and ret left empty. */
int evs__bp_policy_parse(const char *text, evs_bp_policy *ret, char *err, size_t cap);
void evs__bp_policy_free(evs_bp_policy *p);
/* The app's entry, or NULL. */
const evs_bp_app *evs__bp_policy_app(const evs_bp_policy *p, const char *app_id);
/* 1 when origin (exact, as canonicalised) is one of app's. */
int evs__bp_origin_allowed(const evs_bp_app *app, const char *origin);

/* Canonicalises an origin (http or https, a host name or IP literal, an optional port) into out
 * (cap bytes): lower case, default port dropped. Returns its length, or -1 when it is not an
 * origin (a path, credentials, a query, '*' or anything outside [a-z0-9.-:[]]). */
int evs__bp_origin_canon(const char *s, size_t len, char *out, size_t cap);

/* Finds parameter name in query q (no '?'), %-decodes it into out (cap bytes, NUL-terminated).
 * Returns its length, -1 when absent or given twice, -2 when malformed or too long. */
int evs__bp_query_get(const char *q, const char *name, char *out, size_t cap);

/* 1 when an Accept-Encoding value accepts gzip (a q=0 refuses it), else 0. */
int evs__bp_accepts_gzip(const char *v, size_t len);

#endif
