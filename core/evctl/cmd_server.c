/*
 * evctl commands about the running server itself: `status` (GET /status), `plugins`
 * (GET /plugins) and `routes` (GET /routes). With --json each prints the server's object as received; otherwise a short
 * human summary. Fields the server adds later are still shown, after the known ones, so a
 * newer server never loses information in an older evctl.
 */
#include "evctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* A JSON scalar as text; containers as compact JSON. Returns a malloc'd string or NULL. */
static char *value_text(const json_t *v) {
  char *s = NULL;
  if (!v || json_is_null(v)) return strdup("-");
  if (json_is_string(v)) return strdup(json_string_value(v));
  if (json_is_integer(v)) {
    if (asprintf(&s, "%" PRId64, (int64_t)json_integer_value(v)) < 0) return NULL;
    return s;
  }
  if (json_is_real(v)) {
    if (asprintf(&s, "%g", json_real_value(v)) < 0) return NULL;
    return s;
  }
  if (json_is_boolean(v)) return strdup(json_is_true(v) ? "yes" : "no");
  return json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
}

static char *uptime_text(const json_t *v) {
  if (!json_is_integer(v) || json_integer_value(v) < 0) return value_text(v);
  int64_t s = (int64_t)json_integer_value(v);
  int64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
  char *out = NULL;
  int rc = d ? asprintf(&out, "%" PRId64 "d %" PRId64 "h %" PRId64 "m", d, h, m)
         : h ? asprintf(&out, "%" PRId64 "h %" PRId64 "m %" PRId64 "s", h, m, sec)
         : m ? asprintf(&out, "%" PRId64 "m %" PRId64 "s", m, sec)
             : asprintf(&out, "%" PRId64 "s", sec);
  return rc < 0 ? NULL : out;
}

static void print_field(const evctl_ctx *ctx, const char *label, const char *text) {
  printf("  ");
  evctl_print(ctx, stdout, EVCTL_BOLD, label);
  for (size_t w = evctl_text_width(label); w < 13; w++) putchar(' ');
  evctl_print(ctx, stdout, EVCTL_PLAIN, text ? text : "?");
  putchar('\n');
}

int evctl_cmd_status(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("status", argc, argv);
  if (rc) return rc;
  json_t *st;
  if (evctl_admin_call(ctx, "GET", "/status", NULL, &st) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(st);
    json_decref(st);
    return EVCTL_EXIT_OK;
  }

  char *version = value_text(json_object_get(st, "version")), *title = NULL;
  if (asprintf(&title, "evserver %s", version ? version : "?") < 0) title = NULL;
  evctl_print(ctx, stdout, EVCTL_BOLD, title ? title : "evserver");
  fputs("  ", stdout);
  free(title);
  evctl_print(ctx, stdout, EVCTL_GREEN, "running");
  putchar('\n');
  free(version);

  static const char *const known[] = {"pid", "workers", "generation", "uptime_s", "connections",
                                      "requests", NULL};
  for (size_t i = 0; known[i]; i++) {
    json_t *v = json_object_get(st, known[i]);
    int uptime = strcmp(known[i], "uptime_s") == 0;
    char *text = uptime ? uptime_text(v) : value_text(v);
    print_field(ctx, uptime ? "uptime" : known[i], text);
    free(text);
  }
  const char *key;
  json_t *v;
  json_object_foreach(st, key, v) {
    int seen = strcmp(key, "version") == 0;
    for (size_t i = 0; known[i] && !seen; i++) seen = strcmp(key, known[i]) == 0;
    if (seen) continue;
    char *text = value_text(v);
    print_field(ctx, key, text);
    free(text);
  }
  json_decref(st);
  return EVCTL_EXIT_OK;
}

static const char *string_field(const json_t *obj, const char *key) {
  const json_t *v = json_object_get(obj, key);
  return json_is_string(v) && *json_string_value(v) ? json_string_value(v) : NULL;
}

int evctl_cmd_plugins(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("plugins", argc, argv);
  if (rc) return rc;
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", "/plugins", NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  json_t *list = json_object_get(obj, "plugins");
  if (!json_is_array(list)) {
    fprintf(stderr, "evctl: GET /plugins: the answer has no \"plugins\" array\n");
    json_decref(obj);
    return EVCTL_EXIT_ERROR;
  }
  if (ctx->json) {
    evctl_print_json(obj);
    json_decref(obj);
    return EVCTL_EXIT_OK;
  }
  if (json_array_size(list) == 0) {
    printf("No plugins.\n");
    json_decref(obj);
    return EVCTL_EXIT_OK;
  }

  static const char *const headers[] = {"NAME", "VERSION", "STATUS", "DESCRIPTION"};
  evctl_table *t = evctl_table_new(4, headers);
  size_t loaded = 0, rejected = 0, i;
  json_t *p;
  json_array_foreach(list, i, p) {
    const char *status = string_field(p, "status");
    int ok = status && strcmp(status, "loaded") == 0;
    loaded += ok;
    rejected += !ok;
    const char *cells[] = {string_field(p, "name"), string_field(p, "version"), status,
                           string_field(p, "description")};
    const evctl_style styles[] = {EVCTL_PLAIN, EVCTL_PLAIN, ok ? EVCTL_GREEN : EVCTL_RED,
                                  EVCTL_PLAIN};
    if (!t || evctl_table_add(t, cells, styles) < 0) {
      fprintf(stderr, "evctl: out of memory\n");
      evctl_table_free(t);
      json_decref(obj);
      return EVCTL_EXIT_ERROR;
    }
  }
  evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);

  /* Why a plugin was rejected is the one thing an operator needs next, so it is spelled out. */
  json_array_foreach(list, i, p) {
    const char *status = string_field(p, "status");
    if (status && strcmp(status, "loaded") == 0) continue;
    const char *name = string_field(p, "name"), *file = string_field(p, "file");
    const char *reason = string_field(p, "reason");
    putchar('\n');
    evctl_print(ctx, stdout, EVCTL_RED, name ? name : "(unnamed)");
    if (file) {
      fputs(" (", stdout);
      evctl_print(ctx, stdout, EVCTL_PLAIN, file);
      putchar(')');
    }
    fputs(": ", stdout);
    evctl_print(ctx, stdout, EVCTL_PLAIN, reason ? reason : "no reason given");
    putchar('\n');
  }
  printf("\n%zu loaded, %zu rejected\n", loaded, rejected);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* The route table in the order the server tries it, then which listener serves which roles,
 * then the plugins that still route with ROUTE hooks (tried after the routes). */
int evctl_cmd_routes(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("routes", argc, argv);
  if (rc) return rc;
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", "/routes", NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  json_t *routes = json_object_get(obj, "routes");
  if (!json_is_array(routes)) {
    fprintf(stderr, "evctl: GET /routes: the answer has no \"routes\" array\n");
    json_decref(obj);
    return EVCTL_EXIT_ERROR;
  }
  if (ctx->json) {
    evctl_print_json(obj);
    json_decref(obj);
    return EVCTL_EXIT_OK;
  }
  static const char *const rh[] = {"ROLE", "HOST", "METHOD", "PREFIX", "PLUGIN"};
  static const char *const lh[] = {"LISTENER", "ADDRESS", "SERVES"};
  evctl_table *rt = evctl_table_new(5, rh), *lt = evctl_table_new(3, lh);
  int ok = rt && lt;
  size_t i;
  json_t *r;
  json_array_foreach(routes, i, r) {
    const char *cells[] = {string_field(r, "role"), string_field(r, "host"),
                           string_field(r, "method"), string_field(r, "prefix"),
                           string_field(r, "plugin")};
    if (ok && evctl_table_add(rt, cells, NULL) < 0) ok = 0;
  }
  json_array_foreach(json_object_get(obj, "listeners"), i, r) {
    char *roles = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&roles, &len);
    size_t k;
    json_t *role;
    json_array_foreach(json_object_get(r, "roles"), k, role) {
      if (m && json_is_string(role)) fprintf(m, "%s%s", k ? " " : "", json_string_value(role));
    }
    if (m) fclose(m);
    const char *cells[] = {string_field(r, "name"), string_field(r, "address"), roles};
    if (ok && evctl_table_add(lt, cells, NULL) < 0) ok = 0;
    free(roles);
  }
  if (!ok) {
    fprintf(stderr, "evctl: out of memory\n");
  } else {
    if (json_array_size(routes) == 0) printf("No routes.\n");
    else evctl_table_print(rt, ctx, stdout);
    putchar('\n');
    evctl_table_print(lt, ctx, stdout);
    json_t *hooks = json_object_get(obj, "route_hooks");
    if (json_array_size(hooks) > 0) {
      printf("\nROUTE hooks, after the routes:");
      json_array_foreach(hooks, i, r) {
        if (!json_is_string(r)) continue;
        putchar(' ');
        evctl_print(ctx, stdout, EVCTL_PLAIN, json_string_value(r));
      }
      putchar('\n');
    }
  }
  evctl_table_free(rt);
  evctl_table_free(lt);
  json_decref(obj);
  return ok ? EVCTL_EXIT_OK : EVCTL_EXIT_ERROR;
}
