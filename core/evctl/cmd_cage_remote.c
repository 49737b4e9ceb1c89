/*
 * cmd_cage_remote.c: the server-side cage subcommands (docs/evctl.md, docs/cages.md): deploy,
 * list cages|deployments, delete, logs, env add|delete|get, cert upload|lock, against the
 * cage-broker plugin's admin endpoints on the admin socket (plugins/cage-broker/cage_broker.c).
 * The cage is named by cage.toml (-c/--config, default ./cage.toml): its app_uuid and name.
 *
 * deploy uploads the image file in chunks of 8 MiB (PUT /cage-images/<sha256>/<i>, skipping
 * chunks the store already has), then PUT /cages/<app>/<name> with the digest, size and
 * cage.toml's settings; the server checks the image, its PCRs and the locked certificates.
 * Without --eif-path it builds first, with cage build's own code (cmd_cage.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "evctl.h"
#include "fn_toml.h"

#define CAGE_CHUNK (8u << 20)
#define CAGE_DEPLOY_TIMEOUT_MS 120000

typedef struct cage_ref {
  char app[64], name[64];
  json_t *toml; /* the parsed cage.toml */
} cage_ref;

static const char *opt_value(int argc, char **argv, int *i, const char *s, const char *l) {
  const char *a = argv[*i];
  size_t ll = l ? strlen(l) : 0;
  if ((s && !strcmp(a, s)) || (l && !strcmp(a, l))) {
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
  }
  if (l && !strncmp(a, l, ll) && a[ll] == '=') return a + ll + 1;
  return NULL;
}

static char *read_file(const char *path, size_t max, size_t *ret_len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  struct stat sb;
  if (fstat(fileno(f), &sb) < 0 || (size_t)sb.st_size > max) {
    fclose(f);
    errno = EFBIG;
    return NULL;
  }
  char *buf = malloc((size_t)sb.st_size + 1);
  size_t n = buf ? fread(buf, 1, (size_t)sb.st_size, f) : 0;
  fclose(f);
  if (!buf || n != (size_t)sb.st_size) {
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  *ret_len = n;
  return buf;
}

static int load_cage(const char *path, cage_ref *ret) {
  size_t len = 0;
  char *text = read_file(path, EVCTL_TOML_MAX, &len);
  if (!text) {
    fprintf(stderr, "evctl: cannot read %s: %s (run `evctl cage init` first)\n", path,
            strerror(errno));
    return -1;
  }
  char err[256];
  json_t *t = NULL;
  int rc = evctl_toml_parse(text, len, &t, err, sizeof err);
  free(text);
  if (rc < 0) {
    fprintf(stderr, "evctl: %s: %s\n", path, err);
    return -1;
  }
  json_t *top = json_object_get(t, "");
  const char *app = json_string_value(json_object_get(top, "app_uuid"));
  const char *name = json_string_value(json_object_get(top, "name"));
  if (!app || !name || strlen(app) >= sizeof ret->app || strlen(name) >= sizeof ret->name) {
    fprintf(stderr, "evctl: %s: name and app_uuid are required\n", path);
    json_decref(t);
    return -1;
  }
  snprintf(ret->app, sizeof ret->app, "%s", app);
  snprintf(ret->name, sizeof ret->name, "%s", name);
  ret->toml = t;
  return 0;
}

/* The settings the server keeps (cage.toml's, which the image also carries measured). */
static json_t *settings_of(const json_t *toml) {
  json_t *top = json_object_get(toml, ""), *eg = json_object_get(toml, "egress");
  json_t *s = json_object();
  static const char *const keys[] = {"uuid", "team_uuid", "debug", "api_key_auth",
                                     "trx_logging", "disable_tls_termination", NULL};
  for (int i = 0; keys[i]; i++) {
    json_t *v = json_object_get(top, keys[i]);
    if (v) json_object_set(s, keys[i], v);
  }
  json_t *e = json_object();
  json_object_set_new(e, "enabled", json_boolean(json_is_true(json_object_get(eg, "enabled"))));
  json_t *d = json_object_get(eg, "destinations"), *p = json_object_get(eg, "ports");
  json_object_set(e, "destinations", d ? d : json_pack("[s]", "*"));
  if (!d) json_decref(json_object_get(e, "destinations"));
  json_object_set(e, "ports", p ? p : json_pack("[s]", "443"));
  if (!p) json_decref(json_object_get(e, "ports"));
  json_object_set_new(s, "egress", e);
  return s;
}

static void print_obj(const evctl_ctx *ctx, json_t *o, const char *line) {
  if (ctx->json) evctl_print_json(o);
  else if (line) printf("%s\n", line);
}

/* ---- deploy ---------------------------------------------------------------------------------- */

static int upload_chunk(const evctl_ctx *ctx, const char *sha, size_t i, const uint8_t *p,
                        size_t n) {
  char path[160];
  snprintf(path, sizeof path, "/cage-images/%s/%zu", sha, i);
  evctl_response r = {0};
  char err[512];
  /* Skip what the store already holds (a redeploy of the same image). */
  if (evctl_http_request(ctx->socket_path, "GET", path, NULL, NULL, 0, ctx->timeout_ms, &r, err,
                         sizeof err) == 0 && r.status == 200) {
    json_t *o = json_loadb(r.body, r.body_len, 0, NULL);
    size_t have = (size_t)json_integer_value(json_object_get(o, "size"));
    json_decref(o);
    evctl_response_done(&r);
    if (have == n) return 0;
  }
  evctl_response_done(&r);
  memset(&r, 0, sizeof r);
  if (evctl_http_request(ctx->socket_path, "PUT", path, "application/octet-stream",
                         (const char *)p, n, CAGE_DEPLOY_TIMEOUT_MS, &r, err, sizeof err) < 0) {
    fprintf(stderr, "evctl: uploading the image: %s\n", err);
    return -1;
  }
  int ok = r.status == 200;
  if (!ok) fprintf(stderr, "evctl: uploading the image: HTTP %d\n", r.status);
  evctl_response_done(&r);
  return ok ? 0 : -1;
}

static int deploy(const evctl_ctx *ctx, int argc, char **argv) {
  const char *config = "./cage.toml", *eif = NULL, *outdir = NULL;
  char **bargv = calloc((size_t)argc + 4, sizeof *bargv);
  int bargc = 0;
  if (!bargv) return EVCTL_EXIT_ERROR;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "-c", "--config"))) {
      config = v;
      bargv[bargc++] = "--config";
      bargv[bargc++] = (char *)v;
    } else if ((v = opt_value(argc, argv, &i, NULL, "--eif-path"))) {
      eif = v;
    } else if ((v = opt_value(argc, argv, &i, "-o", "--output"))) {
      outdir = v; /* where the build leaves enclave.eif (default: a new temporary directory) */
    } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "--quite")) {
      continue;
    } else {
      bargv[bargc++] = argv[i]; /* for the build: -f, --private-key, --build-arg, context */
    }
  }
  cage_ref c = {0};
  if (load_cage(config, &c) < 0) {
    free(bargv);
    return EVCTL_EXIT_ERROR;
  }
  char built[PATH_MAX + 16] = "";
  if (!eif) {
    /* A fresh build, as ev-cage deploy does without --eif-path. */
    char dir[PATH_MAX] = "/tmp/evctl-cage-XXXXXX";
    if (outdir) snprintf(dir, sizeof dir, "%s", outdir);
    else if (!mkdtemp(dir)) {
      fprintf(stderr, "evctl: cannot make a build directory: %s\n", strerror(errno));
      free(bargv);
      json_decref(c.toml);
      return EVCTL_EXIT_ERROR;
    }
    bargv[bargc++] = "--output";
    bargv[bargc++] = dir;
    evctl_ctx quiet = *ctx;
    quiet.json = 0;
    /* The build's report goes to stderr: stdout carries the deploy's answer (one JSON object
     * with --json). */
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    if (saved >= 0) dup2(STDERR_FILENO, STDOUT_FILENO);
    int rc = evctl_cmd_cage_build(&quiet, bargc, bargv);
    fflush(stdout);
    if (saved >= 0) {
      dup2(saved, STDOUT_FILENO);
      close(saved);
    }
    if (rc != EVCTL_EXIT_OK) {
      free(bargv);
      json_decref(c.toml);
      return rc;
    }
    snprintf(built, sizeof built, "%s/enclave.eif", dir);
    eif = built;
  }
  free(bargv);
  size_t len = 0;
  uint8_t *img = (uint8_t *)read_file(eif, (size_t)4 << 30, &len);
  if (!img || len == 0) {
    fprintf(stderr, "evctl: cannot read %s: %s\n", eif, strerror(errno));
    free(img);
    json_decref(c.toml);
    return EVCTL_EXIT_ERROR;
  }
  uint8_t d[32];
  unsigned dl = 0;
  char sha[65];
  EVP_Digest(img, len, d, &dl, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) sprintf(sha + 2 * i, "%02x", d[i]);
  size_t chunks = (len + CAGE_CHUNK - 1) / CAGE_CHUNK;
  for (size_t i = 0; i < chunks; i++) {
    size_t n = len - i * CAGE_CHUNK < CAGE_CHUNK ? len - i * CAGE_CHUNK : CAGE_CHUNK;
    if (upload_chunk(ctx, sha, i, img + i * CAGE_CHUNK, n) < 0) {
      free(img);
      json_decref(c.toml);
      return EVCTL_EXIT_ERROR;
    }
  }
  free(img);
  json_t *body = json_pack("{s:s,s:I,s:I,s:o}", "image", sha, "size", (json_int_t)len, "chunks",
                           (json_int_t)chunks, "settings", settings_of(c.toml));
  char path[200];
  snprintf(path, sizeof path, "/cages/%s/%s", c.app, c.name);
  evctl_ctx slow = *ctx;
  slow.timeout_ms = CAGE_DEPLOY_TIMEOUT_MS;
  json_t *o = NULL;
  int rc = evctl_admin_call(&slow, "PUT", path, body, &o);
  json_decref(body);
  json_decref(c.toml);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  char line[600];
  snprintf(line, sizeof line,
           "Cage deployed successfully. Your Cage is now available at https://%s",
           json_string_value(json_object_get(o, "domain")) ?: "?");
  print_obj(ctx, o, line);
  json_decref(o);
  return EVCTL_EXIT_OK;
}

/* ---- list, delete, logs ---------------------------------------------------------------------- */

static const char *inst_summary(json_t *cage, char *buf, size_t n) {
  size_t i, off = 0;
  json_t *in;
  buf[0] = 0;
  json_array_foreach(json_object_get(cage, "instances"), i, in) {
    int w = snprintf(buf + off, n - off, "%s%s(%d restarts)", off ? ", " : "",
                     json_string_value(json_object_get(in, "state")) ?: "?",
                     (int)json_integer_value(json_object_get(in, "restarts")));
    if (w < 0 || (size_t)w >= n - off) break;
    off += (size_t)w;
  }
  return buf[0] ? buf : "no instance";
}

static int list(const evctl_ctx *ctx, int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "cages") && strcmp(argv[1], "deployments")))
    return evctl_usage_error("cage list", "say what to list: cages or deployments");
  int deployments = !strcmp(argv[1], "deployments");
  const char *config = NULL, *uuid = NULL, *app = NULL;
  for (int i = 2; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "-c", "--config"))) config = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--cage-uuid"))) uuid = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--app"))) app = v;
    else if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) continue;
    else return evctl_usage_error("cage list", "unexpected argument '%s'", argv[i]);
  }
  char path[200] = "/cages";
  if (app) snprintf(path, sizeof path, "/cages?app=%s", app);
  json_t *o = NULL;
  if (evctl_admin_call(ctx, "GET", path, NULL, &o) < 0) return EVCTL_EXIT_ERROR;
  json_t *cages = json_object_get(o, "cages");
  if (!deployments) {
    if (ctx->json) {
      evctl_print_json(o);
    } else {
      static const char *const hd[] = {"NAME", "APP", "UUID", "DEPLOYMENT", "DOMAIN", "INSTANCES"};
      evctl_table *t = evctl_table_new(6, hd);
      size_t i;
      json_t *cg;
      json_array_foreach(cages, i, cg) {
        char dep[32], inst[256];
        snprintf(dep, sizeof dep, "%lld", (long long)json_integer_value(json_object_get(
                                              json_object_get(cg, "deployment"), "id")));
        const char *cells[] = {json_string_value(json_object_get(cg, "name")),
                               json_string_value(json_object_get(cg, "app")),
                               json_string_value(json_object_get(cg, "uuid")), dep,
                               json_string_value(json_object_get(cg, "domain")),
                               inst_summary(cg, inst, sizeof inst)};
        evctl_table_add(t, cells, NULL);
      }
      evctl_table_print(t, ctx, stdout);
      evctl_table_free(t);
    }
    json_decref(o);
    return EVCTL_EXIT_OK;
  }
  /* deployments: by --cage-uuid, else the cage of cage.toml */
  cage_ref c = {0};
  if (!uuid) {
    if (load_cage(config ? config : "./cage.toml", &c) < 0) {
      json_decref(o);
      return EVCTL_EXIT_ERROR;
    }
  }
  size_t i;
  json_t *cg, *found = NULL;
  json_array_foreach(cages, i, cg) {
    const char *u = json_string_value(json_object_get(cg, "uuid"));
    if (uuid ? (u && !strcmp(u, uuid))
             : (!strcmp(json_string_value(json_object_get(cg, "app")) ?: "", c.app) &&
                !strcmp(json_string_value(json_object_get(cg, "name")) ?: "", c.name)))
      found = cg;
  }
  json_decref(c.toml);
  if (!found) {
    fprintf(stderr, "evctl: no such cage\n");
    json_decref(o);
    return EVCTL_EXIT_ERROR;
  }
  snprintf(path, sizeof path, "/cages/%s/%s/deployments",
           json_string_value(json_object_get(found, "app")),
           json_string_value(json_object_get(found, "name")));
  json_decref(o);
  o = NULL;
  if (evctl_admin_call(ctx, "GET", path, NULL, &o) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(o);
  } else {
    static const char *const hd[] = {"ID", "IMAGE", "PCR0", "DEPLOYED AT (ms)"};
    evctl_table *t = evctl_table_new(4, hd);
    json_t *d;
    json_array_foreach(json_object_get(o, "deployments"), i, d) {
      char id[32], at[32], img[20];
      snprintf(id, sizeof id, "%lld", (long long)json_integer_value(json_object_get(d, "id")));
      snprintf(at, sizeof at, "%lld",
               (long long)json_integer_value(json_object_get(d, "deployedAt")));
      snprintf(img, sizeof img, "%.16s", json_string_value(json_object_get(d, "image")) ?: "");
      const char *cells[] = {id, img,
                             json_string_value(json_object_get(json_object_get(d, "pcrs"), "pcr0")),
                             at};
      evctl_table_add(t, cells, NULL);
    }
    evctl_table_print(t, ctx, stdout);
    evctl_table_free(t);
  }
  json_decref(o);
  return EVCTL_EXIT_OK;
}

static int simple(const evctl_ctx *ctx, int argc, char **argv, const char *what) {
  const char *config = "./cage.toml";
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "-c", "--config"))) config = v;
    else if (!strcmp(argv[i], "--background") || !strcmp(argv[i], "--cage-uuid")) {
      if (!strcmp(argv[i], "--cage-uuid")) i++;
    } else {
      return evctl_usage_error(what, "unexpected argument '%s'", argv[i]);
    }
  }
  cage_ref c = {0};
  if (load_cage(config, &c) < 0) return EVCTL_EXIT_ERROR;
  json_decref(c.toml);
  char path[200];
  int del = !strcmp(what, "cage delete");
  snprintf(path, sizeof path, "/cages/%s/%s%s", c.app, c.name, del ? "" : "/logs?limit=1000");
  json_t *o = NULL;
  if (evctl_admin_call(ctx, del ? "DELETE" : "GET", path, NULL, &o) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(o);
  } else if (del) {
    printf("Cage %s deleted.\n", c.name);
  } else {
    /* newest first from the server: print oldest first */
    json_t *recs = json_object_get(o, "records");
    for (size_t i = json_array_size(recs); i-- > 0;) {
      json_t *r = json_array_get(recs, i);
      evctl_print(ctx, stdout, EVCTL_PLAIN, json_string_value(json_object_get(r, "line")) ?: "");
      putchar('\n');
    }
  }
  json_decref(o);
  return EVCTL_EXIT_OK;
}

/* ---- env ------------------------------------------------------------------------------------- */

static int env(const evctl_ctx *ctx, int argc, char **argv) {
  if (argc < 2) return evctl_usage_error("cage env", "say add, delete or get");
  const char *sub = argv[1], *config = "./cage.toml", *key = NULL, *value = NULL, *curve = NULL;
  int secret = 0;
  for (int i = 2; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "-c", "--config"))) config = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--key"))) key = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--value"))) value = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--curve"))) curve = v;
    else if (!strcmp(argv[i], "--secret")) secret = 1;
    else return evctl_usage_error("cage env", "unexpected argument '%s'", argv[i]);
  }
  int add = !strcmp(sub, "add"), del = !strcmp(sub, "delete"), get = !strcmp(sub, "get");
  if (!add && !del && !get) return evctl_usage_error("cage env", "say add, delete or get");
  if ((add || del) && !key) return evctl_usage_error("cage env", "--key is required");
  if (add && !value) return evctl_usage_error("cage env", "--value is required");
  cage_ref c = {0};
  if (load_cage(config, &c) < 0) return EVCTL_EXIT_ERROR;
  json_decref(c.toml);
  char path[400];
  if (get) snprintf(path, sizeof path, "/cages/%s/%s/env", c.app, c.name);
  else snprintf(path, sizeof path, "/cages/%s/%s/env/%s", c.app, c.name, key);
  json_t *body = add ? json_pack("{s:s,s:b}", "value", value, "secret", secret) : NULL;
  if (body && curve) json_object_set_new(body, "curve", json_string(curve));
  json_t *o = NULL;
  int rc = evctl_admin_call(ctx, add ? "PUT" : del ? "DELETE" : "GET", path, body, &o);
  json_decref(body);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json || get) evctl_print_json(get && !ctx->json ? json_object_get(o, "env") : o);
  else printf("Environment variable %s %s.\n", key, add ? "set" : "deleted");
  json_decref(o);
  return EVCTL_EXIT_OK;
}

/* ---- cert upload, cert lock ------------------------------------------------------------------ */

static int cert(const evctl_ctx *ctx, int argc, char **argv) {
  const char *sub = argc > 1 ? argv[1] : "";
  int upload = !strcmp(sub, "upload"), lock = !strcmp(sub, "lock");
  if (!upload && !lock) return evctl_usage_error("cage cert", "say upload or lock");
  const char *config = "./cage.toml", *cert_path = NULL;
  json_t *pcr8 = json_array();
  int all = 0;
  for (int i = 2; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "-c", "--config"))) config = v;
    else if ((v = opt_value(argc, argv, &i, "-p", "--cert_path"))) cert_path = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--cert-path"))) cert_path = v;
    else if ((v = opt_value(argc, argv, &i, NULL, "--pcr8")))
      json_array_append_new(pcr8, json_string(v));
    else if (!strcmp(argv[i], "--all")) all = 1;
    else {
      json_decref(pcr8);
      return evctl_usage_error("cage cert", "unexpected argument '%s'", argv[i]);
    }
  }
  cage_ref c = {0};
  if (load_cage(config, &c) < 0) {
    json_decref(pcr8);
    return EVCTL_EXIT_ERROR;
  }
  char path[300], file[PATH_MAX];
  snprintf(path, sizeof path, "/cages/%s/%s/certs", c.app, c.name);
  json_t *o = NULL, *body = NULL;
  int rc;
  if (upload) {
    if (!cert_path)
      cert_path =
          json_string_value(json_object_get(json_object_get(c.toml, "signing"), "certPath"));
    if (!cert_path) {
      json_decref(c.toml);
      json_decref(pcr8);
      return evctl_usage_error("cage cert upload", "no --cert_path and no [signing] certPath");
    }
    if (cert_path[0] == '~' && getenv("HOME"))
      snprintf(file, sizeof file, "%s%s", getenv("HOME"), cert_path + 1);
    else snprintf(file, sizeof file, "%s", cert_path);
    struct stat sb;
    if (stat(file, &sb) == 0 && S_ISDIR(sb.st_mode))
      strncat(file, "/cert.pem", sizeof file - strlen(file) - 1);
    size_t len = 0;
    char *pem = read_file(file, 64 * 1024, &len);
    if (!pem) {
      fprintf(stderr, "evctl: cannot read %s: %s\n", file, strerror(errno));
      json_decref(c.toml);
      json_decref(pcr8);
      return EVCTL_EXIT_ERROR;
    }
    body = json_pack("{s:s}", "pem", pem);
    free(pem);
    rc = evctl_admin_call(ctx, "POST", path, body, &o);
  } else {
    if (all) { /* every uploaded certificate */
      json_t *have = NULL;
      if (evctl_admin_call(ctx, "GET", path, NULL, &have) < 0) {
        json_decref(c.toml);
        json_decref(pcr8);
        return EVCTL_EXIT_ERROR;
      }
      size_t i;
      json_t *ce;
      json_array_foreach(json_object_get(have, "certs"), i, ce)
          json_array_append(pcr8, json_object_get(ce, "pcr8"));
      json_decref(have);
    }
    if (json_array_size(pcr8) == 0) {
      json_decref(c.toml);
      json_decref(pcr8);
      return evctl_usage_error("cage cert lock", "name certificates with --pcr8 or --all");
    }
    body = json_pack("{s:O}", "pcr8", pcr8);
    strncat(path, "/lock", sizeof path - strlen(path) - 1);
    rc = evctl_admin_call(ctx, "PUT", path, body, &o);
  }
  json_decref(body);
  json_decref(pcr8);
  json_decref(c.toml);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(o);
  } else {
    size_t i;
    json_t *ce;
    json_array_foreach(json_object_get(o, "certs"), i, ce) {
      int locked = 0;
      size_t j;
      json_t *l;
      json_array_foreach(json_object_get(o, "locked"), j, l)
          locked |= json_equal(l, json_object_get(ce, "pcr8"));
      printf("%s  %s%s\n", json_string_value(json_object_get(ce, "pcr8")) ?: "",
             json_string_value(json_object_get(ce, "subject")) ?: "", locked ? "  (locked)" : "");
    }
  }
  json_decref(o);
  return EVCTL_EXIT_OK;
}

int cmd_cage_remote(int argc, char **argv) {
  const evctl_ctx *ctx = evctl_cage_ctx;
  if (argc < 1 || !ctx) return EVCTL_EXIT_USAGE;
  const char *w = argv[0];
  if (!strcmp(w, "deploy")) return deploy(ctx, argc, argv);
  if (!strcmp(w, "list")) return list(ctx, argc, argv);
  if (!strcmp(w, "delete")) return simple(ctx, argc, argv, "cage delete");
  if (!strcmp(w, "logs")) return simple(ctx, argc, argv, "cage logs");
  if (!strcmp(w, "env")) return env(ctx, argc, argv);
  if (!strcmp(w, "cert")) return cert(ctx, argc, argv);
  return evctl_usage_error("cage", "unknown subcommand '%s'", w);
}
