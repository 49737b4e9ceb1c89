/*
 * outbound_config.h: an app's Outbound Relay configuration, validated and compiled, and the
 * per-worker table of every app's. Library code (jansson and outbound_match.h): no plugin state,
 * no logging; errors are sentences naming the field, for the caller to answer or log.
 *
 * The document an operator pushes (evctl outbound push FILE), one per app:
 *
 *   {
 *     "appId": "app_...",                       optional; must be the app pushed to
 *     "outboundDestinations": {                 required; at most 256
 *       "<id>": {                               [A-Za-z0-9_-]{1,64}
 *         "destinationDomain": "api.example.com/pay",   outbound_match.h's syntax
 *         "fieldsToEncrypt": ["$.card.number", "$.iban"],  response encryption (optional):
 *                                              the Inbound Relay's selectors (relay-common's
 *                                              jsonpath): JSON and XML paths, form and multipart
 *                                              fields by $.<name> (files included)
 *         "encryptFiles": false                 response encryption of files: whole bodies
 *                                              no rewriter parses, named multipart file parts
 *       }
 *     },
 *     "unconfiguredHosts": "refuse"             or "passthrough" (see README.md); default refuse
 *   }
 *
 * In the store (namespace relay-outbound, key "app/<appId>") the document is wrapped:
 * {"appId", "version" (1, 2, ... per app), "etag", "updatedAt" (ms), "config": <normalised>}.
 * The normalised form has every member present (defaults filled in) and no appId.
 */
#ifndef EVS_OUTBOUND_CONFIG_H
#define EVS_OUTBOUND_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "jsonpath.h"
#include "outbound_match.h"

#define EVS__OB_MAX_DESTINATIONS 256
#define EVS__OB_MAX_FIELDS 64
#define EVS__OB_ID_MAX 64
#define EVS__OB_APP_ID_MAX 64
#define EVS__OB_DOC_MAX (512u * 1024) /* a stored document, and an admin request body */
#define EVS__OB_ETAG_MAX 48

typedef struct evs__ob_destination {
  char *id;
  char *domain;              /* as configured */
  evs__ob_pattern pattern;   /* compiled */
  char **fields;             /* response fieldsToEncrypt, nfields strings */
  size_t nfields;
  int encrypt_files;
} evs__ob_destination;

typedef struct evs__ob_app {
  char *app_id;
  uint64_t version;
  char etag[EVS__OB_ETAG_MAX];
  int64_t updated_at;         /* ms since the epoch */
  int refuse_unconfigured;    /* unconfiguredHosts: 1 refuse, 0 passthrough */
  evs__ob_destination *dests; /* in the document's order */
  size_t n;
  evs__ob_matcher *matcher;   /* indexes dests */
  json_t *config;             /* the normalised configuration (a reference) */
  char *v2_body;              /* the GET /v2/relay-outbound answer, rendered once */
  size_t v2_len;
} evs__ob_app;

/* A syntactically valid app id for this plugin's keys and routes: [A-Za-z0-9_-]{1,64}. (Which
 * apps exist is the enclave plugin's business; its API keys name the app.) */
int evs__ob_app_id_valid(const char *s);

/* Validates config (the pushed document) for app_id and compiles it. On success returns 0 and
 * *ret (caller frees with evs__ob_app_free; version 0, empty etag: the caller stamps them). On
 * failure -EINVAL with a sentence in err naming the field ("outboundDestinations.pay.
 * destinationDomain: ..."), or -ENOMEM. */
int evs__ob_app_compile(const char *app_id, const json_t *config, evs__ob_app **ret, char *err,
                        size_t errlen);

/* Parses a stored document (see above) of len bytes for app_id. Same returns. */
int evs__ob_app_from_doc(const char *app_id, const uint8_t *doc, size_t len, evs__ob_app **ret,
                         char *err, size_t errlen);

/* The stored document of a compiled app with version and updated_at, its etag computed from
 * the version and the normalised configuration (and written into a->etag). New reference, or
 * NULL when out of memory. */
json_t *evs__ob_app_doc(evs__ob_app *a, uint64_t version, int64_t updated_at);

void evs__ob_app_free(evs__ob_app *a);

/* The most specific destination for host:port (and path, or NULL at CONNECT time; see
 * evs__ob_match), or NULL. */
const evs__ob_destination *evs__ob_app_match(const evs__ob_app *a, const char *host, int port,
                                             const char *path, size_t path_len);

/* Every app's configuration, by app id: built whole (add, then seal), then only read, and
 * replaced whole when the store changes. */
typedef struct evs__ob_table evs__ob_table;
evs__ob_table *evs__ob_table_new(void);
/* Takes a (also on error). -EEXIST for an app already in it, -ENOMEM. Only before seal. */
int evs__ob_table_add(evs__ob_table *t, evs__ob_app *a);
void evs__ob_table_seal(evs__ob_table *t);
const evs__ob_app *evs__ob_table_get(const evs__ob_table *t, const char *app_id);
size_t evs__ob_table_count(const evs__ob_table *t);
const evs__ob_app *evs__ob_table_at(const evs__ob_table *t, size_t i);
void evs__ob_table_free(evs__ob_table *t);

/* A destination's fieldsToEncrypt compiled for the rewriters (relay-common's rewriter.h), owned
 * by one response: it outlives reloads of the table. paths holds every selector (JSON and XML);
 * names the form and multipart field names, from the selectors of one plain member
 * (`$.<name>`). */
typedef struct evs__ob_selection {
  evs__jsonpath *paths;
  const char **names; /* point into fields */
  size_t nnames;
  char **fields;
  size_t nfields;
  int encrypt_files;
} evs__ob_selection;

/* 0 and *ret (free with evs__ob_selection_free), -EINVAL (no fields and no encryptFiles), or
 * -ENOMEM. */
int evs__ob_selection_new(const evs__ob_destination *d, evs__ob_selection **ret);
void evs__ob_selection_free(evs__ob_selection *s);

#endif
