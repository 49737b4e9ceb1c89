/*
 * evctl commands for the Outbound Relay's destinations, answered by the relay-outbound plugin's
 * admin endpoints (plugins/relay-outbound/relay_outbound.c):
 *
 *   outbound list [<appId>]                          GET    /outbound, /outbound/<appId>
 *   outbound create <appId> --destination-domain D [--id ID] [--fields-to-encrypt a,b]
 *                   [--encrypt-files]                POST   /outbound/<appId>/destinations
 *   outbound delete <appId> <destId>                 DELETE /outbound/<appId>/destinations/<id>
 *   outbound delete <appId> --all                    DELETE /outbound/<appId>
 *   outbound push FILE [--app ID]                    PUT    /outbound/<appId>
 *   outbound diff FILE [--app ID]                    PUT    /outbound/<appId>?dryRun=1
 *
 * The server validates (diff too: a dry run stores nothing), so evctl and the plugin never
 * disagree about what a valid document is. docs/evctl.md is the user's guide.
 */
#include "evctl.h"
#include "evs_app_id.h" /* enclave/proto: header-only, the one app id rule */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DOC_MAX (512u * 1024) /* the plugin's limit for a document */


static int check_app(const char *cmd, const char *app) {
  if (!evs_app_id_valid(app, strlen(app)))
    return evctl_usage_error(cmd, "%s: '%s' is not an app id (app_ and 12 hex digits)", cmd, app);
  return 0;
}

static const char *str(const json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}

static char *dump(const json_t *v) {
  return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER) : strdup("-");
}

static char *when(const json_t *v) {
  if (!json_is_integer(v)) return strdup("-");
  time_t t = (time_t)(json_integer_value(v) / 1000);
  struct tm tm;
  char buf[32];
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return strdup(buf);
}

/* ---- list --------------------------------------------------------------------------------- */

static void show_apps(const evctl_ctx *ctx, json_t *o) {
  static const char *const hdr[] = {"APP", "VERSION", "DESTINATIONS", "UNCONFIGURED HOSTS", "UPDATED"};
  evctl_table *t = evctl_table_new(5, hdr);
  size_t i;
  json_t *a;
  json_array_foreach(json_object_get(o, "apps"), i, a) {
    char ver[32], n[32];
    snprintf(ver, sizeof ver, "%lld", (long long)json_integer_value(json_object_get(a, "version")));
    snprintf(n, sizeof n, "%lld", (long long)json_integer_value(json_object_get(a, "destinations")));
    char *up = when(json_object_get(a, "updatedAt"));
    const char *cells[] = {str(a, "appId"), ver, n, str(a, "unconfiguredHosts"), up};
    if (t) evctl_table_add(t, cells, NULL);
    free(up);
  }
  if (t) evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
}

static void show_app(const evctl_ctx *ctx, json_t *o) {
  static const char *const hdr[] = {"ID", "DESTINATION DOMAIN", "RESPONSE FIELDS", "FILES"};
  json_t *cfg = json_object_get(o, "config");
  printf("%s  version %lld  etag %s  unconfigured hosts: %s\n", str(o, "appId") ? str(o, "appId") : "-",
         (long long)json_integer_value(json_object_get(o, "version")),
         str(o, "etag") ? str(o, "etag") : "-",
         str(cfg, "unconfiguredHosts") ? str(cfg, "unconfiguredHosts") : "-");
  evctl_table *t = evctl_table_new(4, hdr);
  const char *id;
  json_t *d;
  json_object_foreach(json_object_get(cfg, "outboundDestinations"), id, d) {
    char *f = dump(json_object_get(d, "fieldsToEncrypt"));
    const char *cells[] = {id, str(d, "destinationDomain"), f,
                           json_is_true(json_object_get(d, "encryptFiles")) ? "yes" : "no"};
    if (t) evctl_table_add(t, cells, NULL);
    free(f);
  }
  if (t) evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
}

int evctl_cmd_outbound_list(const evctl_ctx *ctx, int argc, char **argv) {
  const char *pos[1] = {NULL};
  int np, rc = evctl_parse_opts("outbound list", argc, argv, NULL, 0, pos, 0, 1, &np);
  if (rc) return rc;
  if (np && (rc = check_app("outbound list", pos[0]))) return rc;
  char path[128];
  snprintf(path, sizeof path, np ? "/outbound/%s" : "/outbound", np ? pos[0] : "");
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) evctl_print_json(obj);
  else if (np) show_app(ctx, obj);
  else show_apps(ctx, obj);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* ---- create, delete ----------------------------------------------------------------------- */

static void reloaded_note(const json_t *o) {
  long long w = json_integer_value(json_object_get(o, "workers"));
  long long ok = json_integer_value(json_object_get(o, "workersReloaded"));
  printf("Applied by %lld of %lld workers of this node (version %lld)%s\n", ok, w,
         (long long)json_integer_value(json_object_get(o, "version")),
         ok < w ? "; the others follow within store_poll_interval" : "");
}

int evctl_cmd_outbound_create(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "outbound create", *pos[1] = {NULL};
  evctl_opt o[] = {EVCTL_OPT("destination-domain"), EVCTL_OPT("id"), EVCTL_OPT("fields-to-encrypt"),
                   EVCTL_FLAG("encrypt-files")};
  int np, rc = evctl_parse_opts(cmd, argc, argv, o, 4, pos, 1, 1, &np);
  if (rc) return rc;
  if ((rc = check_app(cmd, pos[0]))) return rc;
  if (!o[0].value) return evctl_usage_error(cmd, "%s: --destination-domain is required", cmd);
  json_t *body = json_pack("{s:s}", "destinationDomain", o[0].value);
  if (o[1].value) json_object_set_new(body, "id", json_string(o[1].value));
  if (o[2].value) {
    json_t *f = json_array();
    const char *s = o[2].value;
    while (*s) {
      size_t n = strcspn(s, ",");
      if (n) json_array_append_new(f, json_stringn(s, n));
      s += n + (s[n] == ',');
    }
    json_object_set_new(body, "fieldsToEncrypt", f);
  }
  if (o[3].set) json_object_set_new(body, "encryptFiles", json_true());
  char path[128];
  snprintf(path, sizeof path, "/outbound/%s/destinations", pos[0]);
  json_t *obj;
  rc = evctl_admin_call(ctx, "POST", path, body, &obj);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(obj);
  } else {
    printf("Created destination %s (%s) for %s\n", str(obj, "destinationId"), o[0].value, pos[0]);
    reloaded_note(obj);
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

int evctl_cmd_outbound_delete(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "outbound delete", *pos[2] = {NULL, NULL};
  evctl_opt o[] = {EVCTL_FLAG("all")};
  int np, rc = evctl_parse_opts(cmd, argc, argv, o, 1, pos, 1, 2, &np);
  if (rc) return rc;
  if ((rc = check_app(cmd, pos[0]))) return rc;
  if ((np == 2) == o[0].set)
    return evctl_usage_error(cmd, "%s: give a destination id, or --all for the app's whole configuration", cmd);
  char path[256];
  if (np == 2) {
    if (strlen(pos[1]) > 64 || strchr(pos[1], '/') || strchr(pos[1], '?') || strchr(pos[1], '%'))
      return evctl_usage_error(cmd, "%s: '%s' is not a destination id", cmd, pos[1]);
    snprintf(path, sizeof path, "/outbound/%s/destinations/%s", pos[0], pos[1]);
  } else {
    snprintf(path, sizeof path, "/outbound/%s", pos[0]);
  }
  json_t *obj;
  if (evctl_admin_call(ctx, "DELETE", path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(obj);
  } else {
    if (np == 2) printf("Deleted destination %s of %s\n", pos[1], pos[0]);
    else printf("Deleted the outbound configuration of %s\n", pos[0]);
    reloaded_note(obj);
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* ---- push, diff --------------------------------------------------------------------------- */

/* Reads FILE (JSON object) and finds its app: --app, else the file's appId. */
static int load_file(const char *cmd, const char *file, const char *app_opt, char **ret_text,
                     size_t *ret_len, const char **ret_app, json_t **ret_doc) {
  FILE *f = fopen(file, "rb");
  if (!f) {
    fprintf(stderr, "evctl: %s: cannot open %s: %s\n", cmd, file, strerror(errno));
    return EVCTL_EXIT_ERROR;
  }
  char *text = malloc(DOC_MAX + 1);
  size_t n = text ? fread(text, 1, DOC_MAX + 1, f) : 0;
  fclose(f);
  if (!text || n > DOC_MAX) {
    fprintf(stderr, "evctl: %s: %s is larger than 512 KiB\n", cmd, file);
    free(text);
    return EVCTL_EXIT_ERROR;
  }
  text[n] = 0;
  json_error_t je;
  json_t *doc = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
  if (!json_is_object(doc)) {
    if (doc) fprintf(stderr, "evctl: %s: %s: expected a JSON object\n", cmd, file);
    else fprintf(stderr, "evctl: %s: %s:%d:%d: %s\n", cmd, file, je.line, je.column, je.text);
    json_decref(doc);
    free(text);
    return EVCTL_EXIT_ERROR;
  }
  const char *app = app_opt ? app_opt : str(doc, "appId");
  if (!app) {
    json_decref(doc);
    free(text);
    return evctl_usage_error(cmd, "%s: %s has no appId; pass --app", cmd, file);
  }
  int rc = check_app(cmd, app);
  if (rc) {
    json_decref(doc);
    free(text);
    return rc;
  }
  *ret_text = text;
  *ret_len = n;
  *ret_app = app;
  *ret_doc = doc;
  return 0;
}

/* What changes from cur to next (normalised configurations): {added, removed, changed, settings}. */
static json_t *changes(const json_t *cur, const json_t *next) {
  json_t *added = json_array(), *removed = json_array(), *changed = json_array(), *settings = json_array();
  const json_t *cd = json_object_get(cur, "outboundDestinations"), *nd = json_object_get(next, "outboundDestinations");
  const char *id;
  json_t *v;
  json_object_foreach((json_t *)nd, id, v) {
    json_t *old = json_object_get(cd, id);
    if (!old) {
      json_array_append_new(added, json_pack("{s:s, s:O}", "id", id, "to", v));
    } else if (!json_equal(old, v)) {
      json_array_append_new(changed, json_pack("{s:s, s:O, s:O}", "id", id, "from", old, "to", v));
    }
  }
  json_object_foreach((json_t *)cd, id, v)
    if (!json_object_get(nd, id)) json_array_append_new(removed, json_pack("{s:s, s:O}", "id", id, "from", v));
  const char *cu = str(cur, "unconfiguredHosts"), *nu = str(next, "unconfiguredHosts");
  if (cu && nu && strcmp(cu, nu) != 0)
    json_array_append_new(settings, json_pack("{s:s, s:s, s:s}", "name", "unconfiguredHosts", "from", cu, "to", nu));
  return json_pack("{s:o, s:o, s:o, s:o}", "added", added, "removed", removed, "changed", changed,
                   "settings", settings);
}

static size_t print_changes(const evctl_ctx *ctx, const json_t *c) {
  size_t i, total = 0;
  json_t *e;
  json_array_foreach(json_object_get(c, "added"), i, e) {
    evctl_print(ctx, stdout, EVCTL_GREEN, "+ ");
    printf("%s  ", str(e, "id"));
    evctl_print(ctx, stdout, EVCTL_PLAIN, str(json_object_get(e, "to"), "destinationDomain"));
    putchar('\n');
    total++;
  }
  json_array_foreach(json_object_get(c, "changed"), i, e) {
    evctl_print(ctx, stdout, EVCTL_YELLOW, "~ ");
    printf("%s\n", str(e, "id"));
    const char *k;
    json_t *to, *from = json_object_get(e, "from");
    json_object_foreach(json_object_get(e, "to"), k, to) {
      json_t *was = json_object_get(from, k);
      if (was && json_equal(was, to)) continue;
      char *a = dump(was), *b = dump(to);
      printf("    ~ %s: ", k);
      evctl_print(ctx, stdout, EVCTL_PLAIN, a);
      printf(" -> ");
      evctl_print(ctx, stdout, EVCTL_PLAIN, b);
      putchar('\n');
      free(a);
      free(b);
    }
    total++;
  }
  json_array_foreach(json_object_get(c, "removed"), i, e) {
    evctl_print(ctx, stdout, EVCTL_RED, "- ");
    printf("%s  ", str(e, "id"));
    evctl_print(ctx, stdout, EVCTL_PLAIN, str(json_object_get(e, "from"), "destinationDomain"));
    putchar('\n');
    total++;
  }
  json_array_foreach(json_object_get(c, "settings"), i, e) {
    printf("~ %s: %s -> %s\n", str(e, "name"), str(e, "from"), str(e, "to"));
    total++;
  }
  printf("%zu to add, %zu to change, %zu to remove%s\n", json_array_size(json_object_get(c, "added")),
         json_array_size(json_object_get(c, "changed")), json_array_size(json_object_get(c, "removed")),
         json_array_size(json_object_get(c, "settings")) ? ", app settings change" : "");
  return total;
}

/* push and diff: FILE sent to PUT /outbound/<app> (a dry run for diff). 0 with *ret_obj and
 * the app id in app (APP_BUF bytes), or an exit status (reported). */
#define APP_BUF 80
static int send_file(const evctl_ctx *ctx, const char *cmd, int argc, char **argv, int dry_run,
                     json_t **ret_obj, char *ret_app) {
  const char *pos[1] = {NULL}, *app = NULL;
  evctl_opt o[] = {EVCTL_OPT("app")};
  int np, rc = evctl_parse_opts(cmd, argc, argv, o, 1, pos, 1, 1, &np);
  if (rc) return rc;
  char *text = NULL;
  size_t len = 0;
  json_t *doc = NULL;
  if ((rc = load_file(cmd, pos[0], o[0].value, &text, &len, &app, &doc))) return rc;
  if (!app) return EVCTL_EXIT_ERROR; /* load_file sets it on success */
  char path[128];
  snprintf(path, sizeof path, "/outbound/%s%s", app, dry_run ? "?dryRun=1" : "");
  snprintf(ret_app, APP_BUF, "%s", app); /* app may point into doc */
  rc = evctl_admin_call_text(ctx, "PUT", path, text, len, ret_obj);
  free(text);
  json_decref(doc);
  return rc < 0 ? EVCTL_EXIT_ERROR : 0;
}

int evctl_cmd_outbound_diff(const evctl_ctx *ctx, int argc, char **argv) {
  json_t *obj;
  char app[APP_BUF];
  int rc = send_file(ctx, "outbound diff", argc, argv, 1, &obj, app);
  if (rc) return rc;
  json_t *c = changes(json_object_get(json_object_get(obj, "current"), "config"),
                      json_object_get(json_object_get(obj, "proposed"), "config"));
  if (ctx->json) {
    json_object_set_new(c, "appId", json_string(app));
    json_object_set(c, "currentVersion", json_object_get(json_object_get(obj, "current"), "version"));
    evctl_print_json(c);
  } else {
    print_changes(ctx, c);
  }
  json_decref(c);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

int evctl_cmd_outbound_push(const evctl_ctx *ctx, int argc, char **argv) {
  json_t *obj;
  char app[APP_BUF];
  int rc = send_file(ctx, "outbound push", argc, argv, 0, &obj, app);
  if (rc) return rc;
  if (ctx->json) {
    evctl_print_json(obj);
  } else {
    printf("Pushed the outbound configuration of %s: %zu destination(s), etag %s\n", app,
           json_object_size(json_object_get(json_object_get(obj, "config"), "outboundDestinations")),
           str(obj, "etag") ? str(obj, "etag") : "-");
    reloaded_note(obj);
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}
