/*
 * evctl commands for the Outbound Relay's CA, answered by the enclave plugin's admin endpoints
 * (plugins/enclave/relay_ca.c):
 *
 *   relay-ca create [--cn NAME] [--days N]   POST   /relay-ca
 *   relay-ca show                            GET    /relay-ca
 *   relay-ca rotate [--cn NAME] [--days N]   POST   /relay-ca/rotate
 *   relay-ca remove <fingerprint>            DELETE /relay-ca/<fingerprint>
 *
 * The CA's private key is made in the enclave and stored only sealed; nothing here ever sees
 * it. Every command prints what show prints: the current CA (subject, SHA-256 fingerprint,
 * validity), the CAs clients should trust, and where the certificate is served (the value for
 * the SDKs' EV_CERT_HOSTNAME). With --json, the server's object.
 */
#include "evctl.h"

#include <stdlib.h>
#include <string.h>

static const char *str(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static void field(const evctl_ctx *ctx, const char *label, const char *text) {
  printf("  ");
  evctl_print(ctx, stdout, EVCTL_BOLD, label);
  for (size_t w = evctl_text_width(label); w < 13; w++) putchar(' ');
  evctl_print(ctx, stdout, EVCTL_PLAIN, text ? text : "-");
  putchar('\n');
}

static void show(const evctl_ctx *ctx, json_t *o) {
  json_t *cur = json_object_get(o, "current");
  printf("Current relay CA\n");
  field(ctx, "subject", str(cur, "subject"));
  field(ctx, "fingerprint", str(cur, "fingerprint"));
  field(ctx, "notBefore", str(cur, "notBefore"));
  field(ctx, "notAfter", str(cur, "notAfter"));
  const char *url = str(o, "url");
  char where[512];
  if (url)
    snprintf(where, sizeof where, "%s", url);
  else
    snprintf(where, sizeof where, "GET %s on every listener that serves api (set relay_ca_url "
             "in [plugin \"enclave\"] to show the public URL)", str(o, "path") ? str(o, "path") : "?");
  field(ctx, "served at", where);
  json_t *workers = json_object_get(o, "workers");
  if (workers) {
    char w[64];
    snprintf(w, sizeof w, "%lld of %lld", (long long)json_integer_value(json_object_get(o, "workersUpdated")),
             (long long)json_integer_value(workers));
    field(ctx, "workers", w);
  }
  static const char *const hdr[] = {"TRUSTED", "FINGERPRINT (SHA-256)", "NOT AFTER"};
  evctl_table *t = evctl_table_new(3, hdr);
  json_t *a;
  size_t i;
  json_array_foreach(json_object_get(o, "trusted"), i, a) {
    const char *cells[] = {i == 0 ? "current" : json_is_true(json_object_get(a, "expired")) ? "expired" : "older",
                           str(a, "fingerprint"), str(a, "notAfter")};
    if (t) evctl_table_add(t, cells, NULL);
  }
  if (t) {
    putchar('\n');
    evctl_table_print(t, ctx, stdout);
  }
  evctl_table_free(t);
}

static int finish(const evctl_ctx *ctx, json_t *obj) {
  if (ctx->json)
    evctl_print_json(obj);
  else
    show(ctx, obj);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* create and rotate: [--cn NAME] [--days N]. */
static int make(const evctl_ctx *ctx, const char *cmd, const char *path, int argc, char **argv) {
  const char *cn = NULL, *days = NULL;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], **dst = NULL;
    size_t nl = 0;
    if (strncmp(a, "--cn", 4) == 0 && (a[4] == 0 || a[4] == '=')) dst = &cn, nl = 4;
    else if (strncmp(a, "--days", 6) == 0 && (a[6] == 0 || a[6] == '=')) dst = &days, nl = 6;
    else return evctl_usage_error(cmd, "%s: unexpected argument '%s'", cmd, a);
    if (a[nl] == '=') *dst = a + nl + 1;
    else if (i + 1 < argc) *dst = argv[++i];
    else return evctl_usage_error(cmd, "%s: %s needs a value", cmd, a);
  }
  json_t *body = json_object();
  if (cn) json_object_set_new(body, "commonName", json_string(cn));
  if (days) {
    char *end;
    long d = strtol(days, &end, 10);
    if (!*days || *end || d < 1 || d > 10950) {
      json_decref(body);
      return evctl_usage_error(cmd, "%s: --days is 1 to 10950", cmd);
    }
    json_object_set_new(body, "validityDays", json_integer(d));
  }
  json_t *obj;
  int rc = evctl_admin_call(ctx, "POST", path, body, &obj);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  return finish(ctx, obj);
}

int evctl_cmd_relay_ca_create(const evctl_ctx *ctx, int argc, char **argv) {
  return make(ctx, "relay-ca create", "/relay-ca", argc, argv);
}

int evctl_cmd_relay_ca_rotate(const evctl_ctx *ctx, int argc, char **argv) {
  return make(ctx, "relay-ca rotate", "/relay-ca/rotate", argc, argv);
}

int evctl_cmd_relay_ca_show(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("relay-ca show", argc, argv);
  if (rc) return rc;
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", "/relay-ca", NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  return finish(ctx, obj);
}

int evctl_cmd_relay_ca_remove(const evctl_ctx *ctx, int argc, char **argv) {
  if (argc != 1) return evctl_usage_error("relay-ca remove", "relay-ca remove: give one fingerprint");
  const char *fp = argv[0];
  size_t n = strlen(fp);
  if (n == 0 || n > 96 || strspn(fp, "0123456789abcdefABCDEF:") != n)
    return evctl_usage_error("relay-ca remove", "relay-ca remove: a fingerprint is hex (with colons), as show prints it");
  char path[128];
  snprintf(path, sizeof path, "/relay-ca/%s", fp);
  json_t *obj;
  if (evctl_admin_call(ctx, "DELETE", path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  return finish(ctx, obj);
}
