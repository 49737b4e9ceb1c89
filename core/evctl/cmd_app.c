/*
 * evctl commands for apps, their scoped API keys and ad-hoc encryption, answered by the enclave
 * plugin's admin endpoints (plugins/enclave/apps.c):
 *
 *   app create                         POST   /apps
 *   app list                           GET    /apps
 *   app unlock <appId> [--token T]     POST   /apps/<appId>/unlock   (token from stdin if absent)
 *   app lock <appId>                   POST   /apps/<appId>/lock
 *   key create <appId> --permissions   POST   /apps/<appId>/keys
 *   key list <appId>                   GET    /apps/<appId>/keys
 *   key revoke <appId> <keyId>         DELETE /apps/<appId>/keys/<keyId>
 *   encrypt <appId> [--curve C] [--role R] <value|JSON>   POST /apps/<appId>/encrypt
 *   decrypt <appId> <ev:...|JSON>                          POST /apps/<appId>/decrypt
 *
 * Secrets (app tokens, API keys) are printed once, to stdout, and never anywhere else. With
 * --json every command prints the server's object.
 */
#include "evctl.h"
#include "evs_app_id.h" /* enclave/proto: header-only, the one app id rule */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

/* A key id: "key_" and letters or digits, at most 32 bytes. (App ids follow the one rule of
 * enclave/proto/evs_app_id.h, shared with the enclave and its plugin.) */
static int valid_key_id(const char *s) {
  const char *prefix = "key_";
  size_t pl = strlen(prefix);
  if (strncmp(s, prefix, pl) != 0 || strlen(s) > 32 || !s[pl]) return 0;
  for (const char *p = s + pl; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
      return 0;
  return 1;
}

static void field(const evctl_ctx *ctx, const char *label, const char *text) {
  printf("  ");
  evctl_print(ctx, stdout, EVCTL_BOLD, label);
  for (size_t w = evctl_text_width(label); w < 13; w++) putchar(' ');
  evctl_print(ctx, stdout, EVCTL_PLAIN, text ? text : "-");
  putchar('\n');
}

static const char *str(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static char *when(json_t *v) {
  if (!json_is_integer(v)) return strdup("-");
  time_t t = (time_t)(json_integer_value(v) / 1000);
  struct tm tm;
  char buf[32];
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return strdup(buf);
}

/* Finishes a command whose answer is obj: --json prints it; otherwise show(obj). */
static int done(const evctl_ctx *ctx, json_t *obj, void (*show)(const evctl_ctx *, json_t *)) {
  if (ctx->json)
    evctl_print_json(obj);
  else
    show(ctx, obj);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* ---- app ---------------------------------------------------------------------------------- */

static void show_created(const evctl_ctx *ctx, json_t *o) {
  field(ctx, "appId", str(o, "appId"));
  field(ctx, "appToken", str(o, "appToken"));
  field(ctx, "ecdhKey", str(o, "ecdhKey"));
  field(ctx, "ecdhP256Key", str(o, "ecdhP256Key"));
  fputs("The app token is shown only this once: keep it safe. It unlocks the app's keys after a\n"
        "restart (evctl app unlock, or a credentials file evserver-app-<appId>).\n",
        stderr);
}

int evctl_cmd_app_create(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("app create", argc, argv);
  if (rc) return rc;
  json_t *body = json_object(), *obj;
  rc = evctl_admin_call(ctx, "POST", "/apps", body, &obj);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  rc = done(ctx, obj, show_created);
  return rc;
}

static void show_apps(const evctl_ctx *ctx, json_t *o) {
  static const char *const hdr[] = {"APP", "CREATED", "ECDH KEY (secp256k1)"};
  evctl_table *t = evctl_table_new(3, hdr);
  json_t *a;
  size_t i;
  json_array_foreach(json_object_get(o, "apps"), i, a) {
    char *c = when(json_object_get(a, "createdAt"));
    const char *cells[] = {str(a, "appId"), c, str(a, "ecdhKey")};
    if (t) evctl_table_add(t, cells, NULL);
    free(c);
  }
  if (t) evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
}

int evctl_cmd_app_list(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("app list", argc, argv);
  if (rc) return rc;
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", "/apps", NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show_apps);
}

static void show_unlocked(const evctl_ctx *ctx, json_t *o) {
  printf("%s unlocked in %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT " workers\n",
         str(o, "appId") ? str(o, "appId") : "app",
         json_integer_value(json_object_get(o, "workersUnlocked")),
         json_integer_value(json_object_get(o, "workers")));
}

static void show_locked(const evctl_ctx *ctx, json_t *o) {
  printf("%s locked in %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT " workers\n",
         str(o, "appId") ? str(o, "appId") : "app",
         json_integer_value(json_object_get(o, "workersLocked")),
         json_integer_value(json_object_get(o, "workers")));
}

/* The commands whose only argument is an app id: METHOD /apps/<appId>/<what>, then show. */
static int app_call(const evctl_ctx *ctx, const char *cmd, int argc, char **argv,
                    const char *method, const char *what,
                    void (*show)(const evctl_ctx *, json_t *)) {
  const char *pos[1];
  int np, rc = evctl_parse_opts(cmd, argc, argv, NULL, 0, pos, 1, 1, &np);
  if (rc) return rc;
  if (!evs_app_id_valid(pos[0], strlen(pos[0]))) return evctl_usage_error(cmd, "'%s' is not an app id", pos[0]);
  char path[96];
  snprintf(path, sizeof path, "/apps/%s/%s", pos[0], what);
  json_t *obj;
  if (evctl_admin_call(ctx, method, path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show);
}

int evctl_cmd_app_lock(const evctl_ctx *ctx, int argc, char **argv) {
  return app_call(ctx, "app lock", argc, argv, "POST", "lock", show_locked);
}

int evctl_cmd_app_unlock(const evctl_ctx *ctx, int argc, char **argv) {
  evctl_opt opts[] = {EVCTL_OPT("token")};
  const char *pos[1];
  int np, rc = evctl_parse_opts("app unlock", argc, argv, opts, 1, pos, 1, 1, &np);
  if (rc) return rc;
  if (!evs_app_id_valid(pos[0], strlen(pos[0]))) return evctl_usage_error("app unlock", "'%s' is not an app id", pos[0]);
  char buf[1024];
  const char *token = opts[0].value;
  if (!token) {
    /* From stdin, so it stays out of the process list and shell history. */
    if (!fgets(buf, sizeof buf, stdin)) {
      fputs("evctl: app unlock: no token on standard input (or use --token)\n", stderr);
      return EVCTL_EXIT_USAGE;
    }
    buf[strcspn(buf, "\r\n")] = 0;
    token = buf;
  }
  char path[96];
  snprintf(path, sizeof path, "/apps/%s/unlock", pos[0]);
  json_t *body = json_pack("{s:s}", "appToken", token), *obj;
  OPENSSL_cleanse(buf, sizeof buf);
  rc = evctl_admin_call(ctx, "POST", path, body, &obj);
  json_decref(body); /* jansson's copy of the token goes with it */
  if (rc < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show_unlocked);
}

/* ---- key ---------------------------------------------------------------------------------- */

static void show_key(const evctl_ctx *ctx, json_t *o) {
  field(ctx, "keyId", str(o, "keyId"));
  field(ctx, "apiKey", str(o, "apiKey"));
  char *perms = json_dumps(json_object_get(o, "permissions"), JSON_COMPACT | JSON_ENCODE_ANY);
  field(ctx, "permissions", perms);
  free(perms);
  fputs("The API key is shown only this once: evserver keeps only its hash.\n", stderr);
}

int evctl_cmd_key_create(const evctl_ctx *ctx, int argc, char **argv) {
  evctl_opt opts[] = {EVCTL_OPT("permissions")};
  const char *pos[1];
  int np, rc = evctl_parse_opts("key create", argc, argv, opts, 1, pos, 1, 1, &np);
  if (rc) return rc;
  if (!evs_app_id_valid(pos[0], strlen(pos[0]))) return evctl_usage_error("key create", "'%s' is not an app id", pos[0]);
  json_t *perms = json_array();
  for (const char *p = opts[0].value; p && *p;) {
    size_t n = strcspn(p, ",");
    if (n) json_array_append_new(perms, json_stringn(p, n));
    p += n;
    if (*p == ',') p++;
  }
  char path[96];
  snprintf(path, sizeof path, "/apps/%s/keys", pos[0]);
  json_t *body = json_pack("{s:o}", "permissions", perms), *obj;
  rc = evctl_admin_call(ctx, "POST", path, body, &obj);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show_key);
}

static void show_keys(const evctl_ctx *ctx, json_t *o) {
  static const char *const hdr[] = {"KEY", "CREATED", "STATUS", "PERMISSIONS"};
  evctl_table *t = evctl_table_new(4, hdr);
  json_t *k;
  size_t i;
  json_array_foreach(json_object_get(o, "keys"), i, k) {
    char *c = when(json_object_get(k, "createdAt"));
    char *perms = json_dumps(json_object_get(k, "permissions"), JSON_COMPACT | JSON_ENCODE_ANY);
    int revoked = json_is_true(json_object_get(k, "revoked"));
    const char *cells[] = {str(k, "keyId"), c, revoked ? "revoked" : "active", perms};
    const evctl_style styles[] = {EVCTL_PLAIN, EVCTL_PLAIN, revoked ? EVCTL_RED : EVCTL_GREEN,
                                  EVCTL_PLAIN};
    if (t) evctl_table_add(t, cells, styles);
    free(c);
    free(perms);
  }
  if (t) evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
}

int evctl_cmd_key_list(const evctl_ctx *ctx, int argc, char **argv) {
  return app_call(ctx, "key list", argc, argv, "GET", "keys", show_keys);
}

static void show_revoked(const evctl_ctx *ctx, json_t *o) {
  printf("%s revoked\n", str(o, "keyId") ? str(o, "keyId") : "key");
}

int evctl_cmd_key_revoke(const evctl_ctx *ctx, int argc, char **argv) {
  const char *pos[2];
  int np, rc = evctl_parse_opts("key revoke", argc, argv, NULL, 0, pos, 2, 2, &np);
  if (rc) return rc;
  if (!evs_app_id_valid(pos[0], strlen(pos[0]))) return evctl_usage_error("key revoke", "'%s' is not an app id", pos[0]);
  if (!valid_key_id(pos[1])) return evctl_usage_error("key revoke", "'%s' is not a key id", pos[1]);
  char path[128];
  snprintf(path, sizeof path, "/apps/%s/keys/%s", pos[0], pos[1]);
  json_t *obj;
  if (evctl_admin_call(ctx, "DELETE", path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show_revoked);
}

/* ---- encrypt / decrypt -------------------------------------------------------------------- */

static void show_data(const evctl_ctx *ctx, json_t *o) {
  json_t *d = json_object_get(o, "data");
  if (json_is_string(d)) {
    fwrite(json_string_value(d), 1, json_string_length(d), stdout); /* raw: the caller's data */
    putchar('\n');
  } else {
    evctl_print_json(d);
  }
}

/* A value given on the command line: JSON if it parses as JSON, else the text as a string. */
static json_t *value_arg(const char *s) {
  json_t *v = json_loads(s, JSON_DECODE_ANY, NULL);
  return v ? v : json_string(s);
}

static int crypt_cmd(const evctl_ctx *ctx, const char *cmd, int argc, char **argv, int enc) {
  evctl_opt opts[] = {EVCTL_OPT("curve"), EVCTL_OPT("role")};
  const char *pos[2];
  int np, rc = evctl_parse_opts(cmd, argc, argv, opts, enc ? 2 : 0, pos, 2, 2, &np);
  if (rc) return rc;
  if (!evs_app_id_valid(pos[0], strlen(pos[0]))) return evctl_usage_error(cmd, "'%s' is not an app id", pos[0]);
  const char *curve = opts[0].value;
  if (curve && strcmp(curve, "secp256k1") != 0 && strcmp(curve, "prime256v1") != 0)
    return evctl_usage_error(cmd, "%s: --curve is secp256k1 or prime256v1", cmd);
  json_t *body = json_pack("{s:o}", "data", value_arg(pos[1])), *obj;
  if (curve) json_object_set_new(body, "curve", json_string(curve));
  if (opts[1].value) json_object_set_new(body, "role", json_string(opts[1].value));
  char path[96];
  snprintf(path, sizeof path, "/apps/%s/%s", pos[0], enc ? "encrypt" : "decrypt");
  rc = evctl_admin_call(ctx, "POST", path, body, &obj);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  return done(ctx, obj, show_data);
}

int evctl_cmd_encrypt(const evctl_ctx *ctx, int argc, char **argv) {
  return crypt_cmd(ctx, "encrypt", argc, argv, 1);
}

int evctl_cmd_decrypt(const evctl_ctx *ctx, int argc, char **argv) {
  return crypt_cmd(ctx, "decrypt", argc, argv, 0);
}
