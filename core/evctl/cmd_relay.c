/*
 * evctl commands for relays, the `ev relay ...` commands of the product documentation, answered
 * by the relay-inbound plugin's admin endpoints (plugins/relay-inbound/relay_admin.c):
 *
 *   relay create [--force] [--destination-domain D] [--custom-domain C] [--relay-type T]
 *                [--dns-target JSON]... [--base-domain B] [--file F]     (local file only)
 *   relay clone --domain D [--file F] [--force]      GET    /relays
 *   relay push [--file F] [--prune] [--yes]          GET    /relays, then PUT /relays
 *   relay diff [--file F] [--prune]                  GET    /relays
 *   relay delete --domain D                          DELETE /relays/<domain>
 *   relay list                                       GET    /relays
 *   relay structures [--relay D]                     GET    /relays/structures
 *   activity [--relay D] [--status S] [--method M] [--since DUR] [--limit N] [--request-id ID]
 *                                                    GET    /activity, and the Outbound
 *                                                    Relay's GET /outbound-activity (merged)
 *   relay dev --port P [--host H] [--file F] [--listen ADDR] [--state-dir DIR]
 *                                                    runs evserver (fork and exec)
 *
 * push and diff share one computation: the file's relays replace the server's relays of the
 * same domain (compared case-insensitively) and the server's other relays stay, unless --prune
 * makes the file the whole set. docs/evctl.md is the user's guide.
 */
#include "evctl.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_FILE "relay-config.json"
#define DEFAULT_BASE_DOMAIN "relay.localhost"
#define RELAY_FILE_MAX (1u << 20) /* the server's limit for relay-config.json */

/* ---- options ------------------------------------------------------------------------------ */


/* ---- small helpers ------------------------------------------------------------------------ */

static const char *str(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static void err_line(const evctl_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void err_line(const evctl_ctx *ctx, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fputs("evctl: ", stderr);
  evctl_print(ctx, stderr, EVCTL_PLAIN, buf); /* may quote a file's or the server's text */
  fputc('\n', stderr);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Appends s to *q as a query parameter, percent-encoded. q has room for cap bytes. */
static void add_param(char *q, size_t cap, const char *name, const char *s) {
  size_t l = strlen(q);
  int w = snprintf(q + l, cap - l, "%c%s=", l ? '&' : '?', name);
  if (w < 0 || (size_t)w >= cap - l) return;
  l += (size_t)w;
  static const char hex[] = "0123456789ABCDEF";
  for (const unsigned char *p = (const unsigned char *)s; *p && l + 4 < cap; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        strchr("-._~", *p)) {
      q[l++] = (char)*p;
    } else {
      q[l++] = '%';
      q[l++] = hex[*p >> 4];
      q[l++] = hex[*p & 15];
    }
  }
  q[l] = '\0';
}

/* Host-name characters only: what a relay domain may contain. */
static int valid_domain(const char *d) {
  size_t n = strlen(d);
  if (n == 0 || n > 253) return 0;
  for (const char *p = d; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.'))
      return 0;
  return 1;
}

/* The key of obj equal to domain ignoring case, or NULL. */
static const char *find_key(json_t *obj, const char *domain) {
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    if (strcasecmp(k, domain) == 0) return k;
  }
  return NULL;
}

/* ---- relay-config.json files -------------------------------------------------------------- */

/* Reads a relay-config.json: a JSON object of objects (the server checks the rest). Reports
 * errors itself and returns NULL. */
static json_t *read_relay_file(const evctl_ctx *ctx, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    err_line(ctx, "%s: %s%s", path, strerror(errno),
             errno == ENOENT ? " (create one with `evctl relay create` or `evctl relay clone`)" : "");
    return NULL;
  }
  char *buf = malloc(RELAY_FILE_MAX + 1);
  size_t n = buf ? fread(buf, 1, RELAY_FILE_MAX + 1, f) : 0;
  int rerr = ferror(f);
  fclose(f);
  if (!buf || rerr) {
    err_line(ctx, "%s: %s", path, buf ? "read error" : "out of memory");
    free(buf);
    return NULL;
  }
  if (n > RELAY_FILE_MAX) {
    err_line(ctx, "%s: larger than 1 MiB, the most a relay-config.json may be", path);
    free(buf);
    return NULL;
  }
  json_error_t je;
  json_t *v = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &je);
  free(buf);
  if (!v) {
    err_line(ctx, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    return NULL;
  }
  if (!json_is_object(v)) {
    err_line(ctx, "%s: expected a JSON object mapping relay domains to their configuration", path);
    json_decref(v);
    return NULL;
  }
  const char *k;
  json_t *r;
  json_object_foreach(v, k, r) {
    if (!json_is_object(r)) {
      err_line(ctx, "%s: $[\"%s\"]: expected an object", path, k);
      json_decref(v);
      return NULL;
    }
  }
  return v;
}

/* Writes v as an indented relay-config.json; refuses to replace a file unless force. */
static int write_relay_file(const evctl_ctx *ctx, const char *path, json_t *v, int force) {
  char *text = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (!text) {
    err_line(ctx, "out of memory");
    return -1;
  }
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0644);
  if (fd < 0) {
    if (errno == EEXIST)
      err_line(ctx, "%s already exists (use --force to overwrite it)", path);
    else
      err_line(ctx, "%s: %s", path, strerror(errno));
    free(text);
    return -1;
  }
  size_t len = strlen(text);
  text[len] = '\n'; /* json_dumps' NUL becomes the final newline */
  size_t off = 0;
  int rc = 0;
  while (off < len + 1) {
    ssize_t w = write(fd, text + off, len + 1 - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      rc = -1;
      break;
    }
    off += (size_t)w;
  }
  if (close(fd) < 0) rc = -1;
  if (rc < 0) err_line(ctx, "%s: %s", path, strerror(errno));
  free(text);
  return rc;
}

/* GET /relays: the server's relay-config.json object (a new reference), or NULL (reported). */
static json_t *server_relays(const evctl_ctx *ctx, json_t **ret_answer) {
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", "/relays", NULL, &obj) < 0) return NULL;
  json_t *relays = json_object_get(obj, "relays");
  if (!json_is_object(relays)) {
    err_line(ctx, "GET /relays: the answer has no \"relays\" object");
    json_decref(obj);
    return NULL;
  }
  json_incref(relays);
  if (ret_answer)
    *ret_answer = obj;
  else
    json_decref(obj);
  return relays;
}

/* ---- relay create ------------------------------------------------------------------------- */

/* The host of a destinationDomain: without scheme, port or brackets. */
static void destination_host(const char *dest, char *out, size_t outlen) {
  const char *p = strstr(dest, "://");
  p = p ? p + 3 : dest;
  size_t n;
  if (*p == '[') {
    p++;
    n = strcspn(p, "]");
  } else {
    n = strcspn(p, ":/");
  }
  snprintf(out, outlen, "%.*s", (int)n, p);
}

int evctl_cmd_relay_create(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay create";
  evctl_opt o[] = {EVCTL_FLAG("force"), EVCTL_OPT("destination-domain"), EVCTL_OPT("custom-domain"),
                   EVCTL_OPT("relay-type"), EVCTL_OPT_REPEAT("dns-target", EVCTL_OPT_VALUES),
                   EVCTL_OPT("file"), EVCTL_OPT("base-domain")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, sizeof o / sizeof o[0], NULL, 0, 0, NULL);
  if (rc) return rc;
  int force = o[0].set > 0;
  const char *dest = o[1].value, *custom = o[2].value, *type = o[3].value;
  const char *file = o[5].value ? o[5].value : DEFAULT_FILE;
  const char *base = o[6].value ? o[6].value : DEFAULT_BASE_DOMAIN;
  char t[8];
  if (type) {
    if (strcasecmp(type, "AUTO") != 0 && strcasecmp(type, "CUSTOM") != 0 &&
        strcasecmp(type, "DNS") != 0)
      return evctl_usage_error(cmd, "%s: --relay-type is AUTO, CUSTOM or DNS, not '%s'", cmd, type);
    snprintf(t, sizeof t, "%s", type);
    for (char *p = t; *p; p++) *p = (char)(*p & ~0x20);
  } else {
    snprintf(t, sizeof t, "%s", o[4].set ? "DNS" : custom ? "CUSTOM" : "AUTO");
  }
  if (strcmp(t, "DNS") == 0) {
    if (!o[4].set) return evctl_usage_error(cmd, "%s: a DNS relay needs at least one --dns-target", cmd);
    if (dest)
      return evctl_usage_error(cmd, "%s: a relay has either --destination-domain or DNS targets, "
                               "not both", cmd);
    if (!custom) return evctl_usage_error(cmd, "%s: a DNS relay needs --custom-domain", cmd);
  } else {
    if (o[4].set) return evctl_usage_error(cmd, "%s: --dns-target needs --relay-type DNS", cmd);
    if (!dest) return evctl_usage_error(cmd, "%s: --destination-domain is required", cmd);
    if (strcmp(t, "CUSTOM") == 0 && !custom)
      return evctl_usage_error(cmd, "%s: a CUSTOM relay needs --custom-domain", cmd);
    if (strcmp(t, "AUTO") == 0 && custom)
      return evctl_usage_error(cmd, "%s: an AUTO relay is named after its destination; use "
                               "--relay-type CUSTOM with --custom-domain", cmd);
  }
  if (custom && !valid_domain(custom))
    return evctl_usage_error(cmd, "%s: --custom-domain '%s' is not a host name", cmd, custom);
  if (!valid_domain(base))
    return evctl_usage_error(cmd, "%s: --base-domain '%s' is not a host name", cmd, base);

  char domain[512];
  if (custom) {
    snprintf(domain, sizeof domain, "%s", custom);
  } else {
    char h[256];
    destination_host(dest, h, sizeof h);
    for (char *p = h; *p; p++)
      if (*p == '.' || *p == ':') *p = '-';
    if (!valid_domain(h))
      return evctl_usage_error(cmd, "%s: --destination-domain '%s' has no host name", cmd, dest);
    snprintf(domain, sizeof domain, "%s.%s", h, base);
  }
  for (char *p = domain; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p | 0x20);

  json_t *relay = json_object();
  if (dest) {
    json_object_set_new(relay, "destinationDomain", json_string(dest));
  } else {
    json_t *targets = json_array();
    for (int i = 0; i < o[4].set; i++) {
      json_error_t je;
      json_t *tg = json_loads(o[4].v[i], 0, &je);
      if (!json_is_object(tg) || !json_is_string(json_object_get(tg, "type")) ||
          !json_is_string(json_object_get(tg, "address"))) {
        json_decref(tg);
        json_decref(targets);
        json_decref(relay);
        return evctl_usage_error(cmd, "%s: --dns-target '%s' is not a JSON object with \"type\" "
                                 "(A or CNAME) and \"address\"", cmd, o[4].v[i]);
      }
      json_array_append_new(targets, tg);
    }
    json_object_set_new(relay, "dnsTargets", targets);
  }
  json_object_set_new(relay, "fieldsToEncrypt", json_array());
  json_t *doc = json_object();
  json_object_set_new(doc, domain, relay);
  rc = write_relay_file(ctx, file, doc, force) < 0 ? EVCTL_EXIT_ERROR : EVCTL_EXIT_OK;
  if (rc == EVCTL_EXIT_OK) {
    if (ctx->json) {
      json_t *out = json_pack("{s:s,s:s,s:s,s:O}", "file", file, "domain", domain, "relayType", t,
                              "config", doc);
      evctl_print_json(out);
      json_decref(out);
    } else {
      printf("Wrote %s with the %s relay ", file, t);
      evctl_print(ctx, stdout, EVCTL_BOLD, domain);
      printf(".\nEdit its fieldsToEncrypt, then `evctl relay push --file %s`.\n", file);
    }
  }
  json_decref(doc);
  return rc;
}

/* ---- relay clone -------------------------------------------------------------------------- */

int evctl_cmd_relay_clone(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay clone";
  evctl_opt o[] = {EVCTL_OPT("domain"), EVCTL_OPT("file"), EVCTL_FLAG("force")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 3, NULL, 0, 0, NULL);
  if (rc) return rc;
  const char *domain = o[0].value, *file = o[1].value ? o[1].value : DEFAULT_FILE;
  if (!domain) return evctl_usage_error(cmd, "%s: --domain is required", cmd);
  json_t *relays = server_relays(ctx, NULL);
  if (!relays) return EVCTL_EXIT_ERROR;
  const char *key = find_key(relays, domain);
  if (!key) {
    err_line(ctx, "relay clone: the server has no relay %s (see `evctl relay list`)", domain);
    json_decref(relays);
    return EVCTL_EXIT_ERROR;
  }
  json_t *doc = json_pack("{s:O}", key, json_object_get(relays, key));
  rc = write_relay_file(ctx, file, doc, o[2].set > 0) < 0 ? EVCTL_EXIT_ERROR : EVCTL_EXIT_OK;
  if (rc == EVCTL_EXIT_OK) {
    if (ctx->json) {
      json_t *out = json_pack("{s:s,s:s,s:O}", "file", file, "domain", key, "config", doc);
      evctl_print_json(out);
      json_decref(out);
    } else {
      printf("Wrote %s with the relay ", file);
      evctl_print(ctx, stdout, EVCTL_BOLD, key);
      printf(".\n");
    }
  }
  json_decref(doc);
  json_decref(relays);
  return rc;
}

/* ---- diff and push ------------------------------------------------------------------------ */

typedef struct relay_diff {
  json_t *added;   /* [domain] */
  json_t *removed; /* [domain] (only with --prune) */
  json_t *changed; /* [{domain, from, to}] */
  json_t *kept;    /* [domain]: on the server, not in the file, left alone (without --prune) */
  json_t *merged;  /* the relay set after a push */
} relay_diff;

static void diff_done(relay_diff *d) {
  json_decref(d->added);
  json_decref(d->removed);
  json_decref(d->changed);
  json_decref(d->kept);
  json_decref(d->merged);
}

static int diff_empty(const relay_diff *d) {
  return !json_array_size(d->added) && !json_array_size(d->removed) && !json_array_size(d->changed);
}

/* What pushing file onto server does: the file's relays replace those of the same domain
 * (any case), the server's others stay unless prune. */
static int compute_diff(json_t *server, json_t *file, int prune, relay_diff *d) {
  memset(d, 0, sizeof *d);
  d->added = json_array();
  d->removed = json_array();
  d->changed = json_array();
  d->kept = json_array();
  d->merged = prune ? json_object() : json_deep_copy(server);
  if (!d->added || !d->removed || !d->changed || !d->kept || !d->merged) return -1;
  const char *k;
  json_t *v;
  json_object_foreach(file, k, v) {
    const char *sk = find_key(server, k);
    if (!sk) {
      json_array_append_new(d->added, json_string(k));
    } else {
      json_t *sv = json_object_get(server, sk);
      if (!json_equal(sv, v))
        json_array_append_new(d->changed, json_pack("{s:s,s:O,s:O}", "domain", k, "from", sv, "to", v));
      if (!prune) json_object_del(d->merged, sk);
    }
    json_object_set(d->merged, k, v);
  }
  json_object_foreach(server, k, v) {
    if (!find_key(file, k)) json_array_append_new(prune ? d->removed : d->kept, json_string(k));
  }
  return 0;
}

static void print_value(const evctl_ctx *ctx, json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
  evctl_print(ctx, stdout, EVCTL_PLAIN, s ? s : "?");
  free(s);
}

/* One key line of a relay's diff: "    <mark> key: value" or "... from -> to". */
static void key_line(const evctl_ctx *ctx, char mark, evctl_style style, const char *key,
                     json_t *from, json_t *to) {
  char head[8] = {' ', ' ', ' ', ' ', mark, ' ', 0};
  evctl_print(ctx, stdout, style, head);
  evctl_print(ctx, stdout, style, key);
  fputs(": ", stdout);
  if (from) print_value(ctx, from);
  if (from && to) fputs(" -> ", stdout);
  if (to) print_value(ctx, to);
  putchar('\n');
}

static void relay_line(const evctl_ctx *ctx, char mark, evctl_style style, const char *domain) {
  char head[4] = {mark, ' ', 0};
  evctl_print(ctx, stdout, style, head);
  evctl_print(ctx, stdout, style, domain);
  putchar('\n');
}

static void show_diff(const evctl_ctx *ctx, const relay_diff *d, json_t *file, json_t *server,
                      int prune) {
  size_t i;
  json_t *e;
  json_array_foreach(d->added, i, e) {
    const char *domain = json_string_value(e);
    relay_line(ctx, '+', EVCTL_GREEN, domain);
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(file, domain), k, v) key_line(ctx, '+', EVCTL_GREEN, k, NULL, v);
  }
  json_array_foreach(d->changed, i, e) {
    relay_line(ctx, '~', EVCTL_YELLOW, str(e, "domain"));
    json_t *from = json_object_get(e, "from"), *to = json_object_get(e, "to"), *v;
    const char *k;
    json_object_foreach(from, k, v) {
      json_t *nv = json_object_get(to, k);
      if (!nv)
        key_line(ctx, '-', EVCTL_RED, k, v, NULL);
      else if (!json_equal(v, nv))
        key_line(ctx, '~', EVCTL_YELLOW, k, v, nv);
    }
    json_object_foreach(to, k, v) {
      if (!json_object_get(from, k)) key_line(ctx, '+', EVCTL_GREEN, k, NULL, v);
    }
  }
  json_array_foreach(d->removed, i, e) relay_line(ctx, '-', EVCTL_RED, json_string_value(e));
  (void)server;
  printf("%zu to add, %zu to change, %zu to remove", json_array_size(d->added),
         json_array_size(d->changed), json_array_size(d->removed));
  if (!prune && json_array_size(d->kept))
    printf("; %zu relay(s) on the server but not in the file stay (--prune removes them)",
           json_array_size(d->kept));
  printf(".\n");
}

static json_t *diff_json(const relay_diff *d, int prune) {
  json_t *out = json_pack("{s:O,s:O,s:O}", "added", d->added, "removed", d->removed, "changed",
                          d->changed);
  if (out && !prune) json_object_set(out, "kept", d->kept);
  return out;
}

/* Reads the file and the server's relays and computes their diff. EVCTL_EXIT_OK or an error
 * (reported). */
static int load_diff(const evctl_ctx *ctx, const char *file, int prune, json_t **ret_file,
                     json_t **ret_server, relay_diff *d) {
  json_t *f = read_relay_file(ctx, file);
  if (!f) return EVCTL_EXIT_ERROR;
  json_t *s = server_relays(ctx, NULL);
  if (!s) {
    json_decref(f);
    return EVCTL_EXIT_ERROR;
  }
  if (compute_diff(s, f, prune, d) < 0) {
    diff_done(d);
    json_decref(f);
    json_decref(s);
    err_line(ctx, "out of memory");
    return EVCTL_EXIT_ERROR;
  }
  *ret_file = f;
  *ret_server = s;
  return EVCTL_EXIT_OK;
}

int evctl_cmd_relay_diff(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay diff";
  evctl_opt o[] = {EVCTL_OPT("file"), EVCTL_FLAG("prune")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 2, NULL, 0, 0, NULL);
  if (rc) return rc;
  const char *file = o[0].value ? o[0].value : DEFAULT_FILE;
  int prune = o[1].set > 0;
  json_t *f, *s;
  relay_diff d;
  if ((rc = load_diff(ctx, file, prune, &f, &s, &d)) != EVCTL_EXIT_OK) return rc;
  if (ctx->json) {
    json_t *out = diff_json(&d, prune);
    evctl_print_json(out);
    json_decref(out);
  } else {
    show_diff(ctx, &d, f, s, prune);
  }
  diff_done(&d);
  json_decref(f);
  json_decref(s);
  return EVCTL_EXIT_OK;
}

/* Asks on the terminal; 1 if the answer is yes. */
static int confirm(const char *question) {
  fprintf(stderr, "%s [y/N] ", question);
  fflush(stderr);
  char line[64];
  if (!fgets(line, sizeof line, stdin)) return 0;
  return line[0] == 'y' || line[0] == 'Y';
}

int evctl_cmd_relay_push(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay push";
  evctl_opt o[] = {EVCTL_OPT("file"), EVCTL_FLAG("yes"), EVCTL_FLAG("prune")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 3, NULL, 0, 0, NULL);
  if (rc) return rc;
  const char *file = o[0].value ? o[0].value : DEFAULT_FILE;
  int yes = o[1].set > 0, prune = o[2].set > 0;
  /* A prompt needs a person at a terminal; with --json stdout belongs to scripts. */
  int interactive = !ctx->json && isatty(STDIN_FILENO) && isatty(STDERR_FILENO);
  if (!yes && !interactive)
    return evctl_usage_error(cmd, "%s: pass --yes to push without a confirmation prompt%s", cmd,
                             ctx->json ? " (--json never prompts)" : " (standard input is not a terminal)");
  json_t *f, *s;
  relay_diff d;
  if ((rc = load_diff(ctx, file, prune, &f, &s, &d)) != EVCTL_EXIT_OK) return rc;
  json_t *out = NULL;
  if (diff_empty(&d)) {
    if (ctx->json) {
      out = diff_json(&d, prune);
      json_object_set_new(out, "pushed", json_false());
      json_object_set_new(out, "relays", json_integer((json_int_t)json_object_size(s)));
      evctl_print_json(out);
    } else {
      printf("Nothing to push: the server already has %s's relays.\n", file);
    }
    goto done;
  }
  if (!ctx->json) show_diff(ctx, &d, f, s, prune);
  if (!yes && !confirm("Push these changes?")) {
    fputs("evctl: relay push: cancelled; nothing was changed\n", stderr);
    rc = EVCTL_EXIT_ERROR;
    goto done;
  }
  char *text = json_dumps(d.merged, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_t *ans = NULL;
  if (!text) {
    err_line(ctx, "out of memory");
    rc = EVCTL_EXIT_ERROR;
    goto done;
  }
  int r = evctl_admin_call_text(ctx, "PUT", "/relays", text, strlen(text), &ans);
  free(text);
  if (r < 0) {
    rc = EVCTL_EXIT_ERROR;
    goto done;
  }
  json_t *count = json_object_get(ans, "relays");
  if (ctx->json) {
    out = diff_json(&d, prune);
    json_object_set_new(out, "pushed", json_true());
    json_object_set(out, "relays", count ? count : json_null());
    evctl_print_json(out);
  } else {
    printf("Pushed: the server now has %" JSON_INTEGER_FORMAT " relay(s).\n",
           json_integer_value(count));
  }
  json_decref(ans);
done:
  json_decref(out);
  diff_done(&d);
  json_decref(f);
  json_decref(s);
  return rc;
}

/* ---- relay delete, relay list ------------------------------------------------------------- */

int evctl_cmd_relay_delete(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay delete";
  evctl_opt o[] = {EVCTL_OPT("domain")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 1, NULL, 0, 0, NULL);
  if (rc) return rc;
  const char *domain = o[0].value;
  if (!domain) return evctl_usage_error(cmd, "%s: --domain is required", cmd);
  if (!valid_domain(domain))
    return evctl_usage_error(cmd, "%s: '%s' is not a relay domain", cmd, domain);
  char path[300];
  snprintf(path, sizeof path, "/relays/%s", domain);
  json_t *obj;
  if (evctl_admin_call(ctx, "DELETE", path, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(obj);
  } else {
    printf("Deleted relay ");
    evctl_print(ctx, stdout, EVCTL_BOLD, str(obj, "deleted") ? str(obj, "deleted") : domain);
    printf("; %" JSON_INTEGER_FORMAT " relay(s) left.\n",
           json_integer_value(json_object_get(obj, "relays")));
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* "A 203.0.113.7, CNAME b.example.com:8443" for dnsTargets. */
static char *dns_text(json_t *targets) {
  char *out = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&out, &len);
  if (!m) return NULL;
  size_t i;
  json_t *t;
  fputs("dns: ", m);
  json_array_foreach(targets, i, t) {
    fprintf(m, "%s%s %s", i ? ", " : "", str(t, "type") ? str(t, "type") : "?",
            str(t, "address") ? str(t, "address") : "?");
    json_t *port = json_object_get(t, "port"); /* evserver extension */
    if (json_is_integer(port)) fprintf(m, ":%" JSON_INTEGER_FORMAT, json_integer_value(port));
  }
  fclose(m);
  return out;
}

/* "POST /users (2), * /health (1)": each route with its number of fields. */
static char *routes_text(json_t *routes) {
  if (!json_array_size(routes)) return NULL;
  char *out = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&out, &len);
  if (!m) return NULL;
  size_t i;
  json_t *r;
  json_array_foreach(routes, i, r) {
    fprintf(m, "%s%s %s (%zu)", i ? ", " : "", str(r, "method") ? str(r, "method") : "*",
            str(r, "route") ? str(r, "route") : "?", json_array_size(json_object_get(r, "fields")));
  }
  fclose(m);
  return out;
}

static void show_relays(const evctl_ctx *ctx, json_t *relays) {
  static const char *const hdr[] = {"DOMAIN", "DESTINATION", "ROUTES (FIELDS)", "MTLS",
                                    "RESPONSE DECRYPTION"};
  evctl_table *t = evctl_table_new(5, hdr);
  if (!t) return;
  const char *k;
  json_t *r;
  json_object_foreach(relays, k, r) {
    char *dns = NULL, *routes = routes_text(json_object_get(r, "fieldsToEncrypt"));
    const char *dest = str(r, "destinationDomain");
    if (!dest) dest = dns = dns_text(json_object_get(r, "dnsTargets"));
    int mtls = json_is_object(json_object_get(r, "mtls"));
    int dec = !json_is_false(json_object_get(r, "responseDecryption"));
    const char *cells[] = {k, dest, routes ? routes : "-", mtls ? "yes" : "no", dec ? "on" : "off"};
    evctl_table_add(t, cells, NULL);
    free(dns);
    free(routes);
  }
  evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
}

int evctl_cmd_relay_list(const evctl_ctx *ctx, int argc, char **argv) {
  int rc = evctl_no_args("relay list", argc, argv);
  if (rc) return rc;
  json_t *obj;
  json_t *relays = server_relays(ctx, &obj);
  if (!relays) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(obj);
  } else if (json_object_size(relays) == 0) {
    printf("No relays (%s is empty). Create one with `evctl relay create`.\n",
           str(obj, "path") ? str(obj, "path") : "relay-config.json");
  } else {
    show_relays(ctx, relays);
  }
  json_decref(relays);
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* ---- relay structures, activity ----------------------------------------------------------- */

static char *ms_time(json_t *v) {
  if (!json_is_integer(v)) return strdup("-");
  time_t t = (time_t)(json_integer_value(v) / 1000);
  struct tm tm;
  char buf[32];
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return strdup(buf);
}

/* The strings of an array joined by ", " (NULL if empty). */
static char *joined(json_t *arr) {
  if (!json_array_size(arr)) return NULL;
  char *out = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&out, &len);
  if (!m) return NULL;
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) fprintf(m, "%s%s", i ? ", " : "", json_string_value(v) ? json_string_value(v) : "?");
  fclose(m);
  return out;
}

int evctl_cmd_relay_structures(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay structures";
  evctl_opt o[] = {EVCTL_OPT("relay")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 1, NULL, 0, 0, NULL);
  if (rc) return rc;
  char path[400] = "";
  if (o[0].value) {
    if (!valid_domain(o[0].value))
      return evctl_usage_error(cmd, "%s: '%s' is not a relay domain", cmd, o[0].value);
    add_param(path, sizeof path, "relay", o[0].value);
  }
  char target[512];
  snprintf(target, sizeof target, "/relays/structures%s", path);
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", target, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(obj);
    json_decref(obj);
    return EVCTL_EXIT_OK;
  }
  json_t *list = json_object_get(obj, "structures"), *s;
  if (!json_array_size(list)) {
    printf("No request structures recorded yet (they are kept for 24 hours).\n");
  } else {
    static const char *const hdr[] = {"RELAY", "METHOD", "ROUTE", "CONTENT TYPE", "FIELDS",
                                      "LAST SEEN"};
    evctl_table *t = evctl_table_new(6, hdr);
    size_t i;
    json_array_foreach(list, i, s) {
      char *fields = joined(json_object_get(s, "fields")), *seen = ms_time(json_object_get(s, "lastSeen"));
      const char *cells[] = {str(s, "relay"), str(s, "method"), str(s, "route"),
                             str(s, "contentType"), fields, seen};
      if (t) evctl_table_add(t, cells, NULL);
      free(fields);
      free(seen);
    }
    if (t) evctl_table_print(t, ctx, stdout);
    evctl_table_free(t);
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* "10m", "1h", "24h", "2d", "30s" -> milliseconds; -1 if malformed. */
static int64_t parse_duration(const char *s) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || v < 0 || v > 100000000LL || s[0] == '-' || s[0] == '+') return -1;
  int64_t unit = strcmp(end, "s") == 0 ? 1000 : strcmp(end, "m") == 0 ? 60000
               : strcmp(end, "h") == 0 ? 3600000 : strcmp(end, "d") == 0 ? 86400000 : 0;
  return unit ? (int64_t)v * unit : -1;
}

static int by_started_desc(const void *a, const void *b) {
  const char *x = json_string_value(json_object_get(*(json_t *const *)a, "startedAt"));
  const char *y = json_string_value(json_object_get(*(json_t *const *)b, "startedAt"));
  return strcmp(y ? y : "", x ? x : "");
}

/* Another plugin's records (relay-outbound's GET /outbound-activity, function-runtime's GET
 * /function-activity; same query) merged into obj's "transactions", newest first, at most
 * limit. Without that plugin, nothing is added. */
static void merge_outbound(const evctl_ctx *ctx, const char *base, const char *q, int limit, json_t *obj) {
  char target[1500], err[256];
  snprintf(target, sizeof target, "%s%s", base, q);
  evctl_response r = {0};
  if (evctl_http_request(ctx->socket_path, "GET", target, NULL, NULL, 0, ctx->timeout_ms, &r,
                         err, sizeof err) < 0)
    return;
  json_t *o = r.status == 200 ? json_loadb(r.body, r.body_len, 0, NULL) : NULL;
  evctl_response_done(&r);
  json_t *more = json_object_get(o, "transactions"), *list = json_object_get(obj, "transactions");
  if (json_array_size(more) && json_is_array(list)) {
    json_array_extend(list, more);
    size_t n = json_array_size(list);
    json_t **v = malloc(n * sizeof *v);
    if (v) {
      for (size_t i = 0; i < n; i++) v[i] = json_incref(json_array_get(list, i));
      qsort(v, n, sizeof *v, by_started_desc);
      json_array_clear(list);
      for (size_t i = 0; i < n; i++) {
        if ((int)i < limit) json_array_append(list, v[i]);
        json_decref(v[i]);
      }
      free(v);
    }
  }
  json_decref(o);
}

int evctl_cmd_activity(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "activity";
  evctl_opt o[] = {EVCTL_OPT("relay"), EVCTL_OPT("status"), EVCTL_OPT("method"), EVCTL_OPT("since"),
                   EVCTL_OPT("limit"), EVCTL_OPT("request-id")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 6, NULL, 0, 0, NULL);
  if (rc) return rc;
  char q[1400] = "";
  if (o[0].value) {
    if (!valid_domain(o[0].value))
      return evctl_usage_error(cmd, "%s: '%s' is not a relay domain", cmd, o[0].value);
    add_param(q, sizeof q, "relay", o[0].value);
  }
  if (o[1].value) add_param(q, sizeof q, "status", o[1].value);
  if (o[2].value) add_param(q, sizeof q, "method", o[2].value);
  if (o[3].value) {
    int64_t d = parse_duration(o[3].value);
    if (d < 0)
      return evctl_usage_error(cmd, "%s: --since is a duration such as 30s, 10m, 1h, 24h or 7d", cmd);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)(now_ms() - d > 0 ? now_ms() - d : 0));
    add_param(q, sizeof q, "since", ms);
  }
  if (o[4].value) add_param(q, sizeof q, "limit", o[4].value);
  if (o[5].value) add_param(q, sizeof q, "requestId", o[5].value);
  char target[1500];
  snprintf(target, sizeof target, "/activity%s", q);
  json_t *obj;
  if (evctl_admin_call(ctx, "GET", target, NULL, &obj) < 0) return EVCTL_EXIT_ERROR;
  merge_outbound(ctx, "/outbound-activity", q, o[4].value ? atoi(o[4].value) : 50, obj);
  merge_outbound(ctx, "/function-activity", q, o[4].value ? atoi(o[4].value) : 50, obj);
  if (ctx->json) {
    evctl_print_json(obj);
    json_decref(obj);
    return EVCTL_EXIT_OK;
  }
  json_t *list = json_object_get(obj, "transactions"), *x;
  if (!json_array_size(list)) {
    printf("No relayed requests match.\n");
  } else {
    static const char *const hdr[] = {"TIME", "RELAY", "METHOD", "PATH", "STATUS", "DURATION",
                                      "ENCRYPTED FIELDS"};
    evctl_table *t = evctl_table_new(7, hdr);
    size_t i;
    json_array_foreach(list, i, x) {
      char status[16] = "-", dur[32] = "-";
      json_t *sv = json_object_get(x, "status"), *dv = json_object_get(x, "durationMs");
      json_int_t code = json_is_integer(sv) ? json_integer_value(sv) : 0;
      if (code) snprintf(status, sizeof status, "%" JSON_INTEGER_FORMAT, code);
      if (json_is_number(dv)) snprintf(dur, sizeof dur, "%.0f ms", json_number_value(dv));
      char *fields = joined(json_object_get(x, "encryptedFields"));
      char relay[400];
      const char *dest = json_string_value(json_object_get(x, "destination"));
      snprintf(relay, sizeof relay, "%s%s%s", str(x, "relay"), dest ? " to " : "", dest ? dest : "");
      if (dest) { /* outbound records count decrypted values instead */
        json_t *dv2 = json_object_get(x, "decryptedFields");
        free(fields);
        fields = malloc(48);
        if (fields) snprintf(fields, 48, "(%lld decrypted)",
                             (long long)(json_is_integer(dv2) ? json_integer_value(dv2) : 0));
      }
      const char *cells[] = {str(x, "startedAt"), relay, str(x, "method"), str(x, "path"),
                             status, dur, fields};
      evctl_style styles[7] = {0};
      styles[4] = code >= 500 ? EVCTL_RED : code >= 400 ? EVCTL_YELLOW : code ? EVCTL_GREEN : 0;
      if (t) evctl_table_add(t, cells, styles);
      free(fields);
    }
    if (t) evctl_table_print(t, ctx, stdout);
    evctl_table_free(t);
  }
  json_decref(obj);
  return EVCTL_EXIT_OK;
}

/* ---- relay dev ---------------------------------------------------------------------------- */

static volatile sig_atomic_t dev_child;

static void forward_signal(int sig) {
  if (dev_child > 0) kill((pid_t)dev_child, sig);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* Directory of evctl's own executable (for the evserver and plugins beside it). */
static int exe_dir(char *out, size_t outlen) {
  ssize_t n = readlink("/proc/self/exe", out, outlen - 1);
  if (n <= 0) return -1;
  out[n] = '\0';
  char *slash = strrchr(out, '/');
  if (!slash) return -1;
  *slash = '\0';
  return 0;
}

/* evserver next to evctl, else the first in PATH. */
static int find_evserver(const char *dir, char *out, size_t outlen) {
  int w = snprintf(out, outlen, "%s/evserver", dir);
  if (w > 0 && (size_t)w < outlen && access(out, X_OK) == 0) return 0;
  const char *path = getenv("PATH");
  for (const char *p = path ? path : ""; *p;) {
    size_t n = strcspn(p, ":");
    if (n) {
      w = snprintf(out, outlen, "%.*s/evserver", (int)n, p);
      if (w > 0 && (size_t)w < outlen && access(out, X_OK) == 0) return 0;
    }
    p += n;
    if (*p == ':') p++;
  }
  return -1;
}

int evctl_cmd_relay_dev(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "relay dev";
  evctl_opt o[] = {EVCTL_OPT("port"), EVCTL_OPT("host"), EVCTL_OPT("file"), EVCTL_OPT("listen"),
                   EVCTL_OPT("state-dir")};
  int rc = evctl_parse_opts(cmd, argc, argv, o, 5, NULL, 0, 0, NULL);
  if (rc) return rc;
  if (!o[0].value) return evctl_usage_error(cmd, "%s: --port is required", cmd);
  char *end;
  long port = strtol(o[0].value, &end, 10);
  if (*end || port < 1 || port > 65535)
    return evctl_usage_error(cmd, "%s: --port must be in 1..65535", cmd);
  const char *host = o[1].value ? o[1].value : "127.0.0.1";
  const char *listen = o[3].value ? o[3].value : "127.0.0.1:7700";
  if (strpbrk(host, " \t\r\n\"/?#@") || strpbrk(listen, " \t\r\n\""))
    return evctl_usage_error(cmd, "%s: --host and --listen take a host and a host:port", cmd);

  char file[PATH_MAX], state[PATH_MAX] = "", dir[PATH_MAX], server[PATH_MAX];
  if (!realpath(o[2].value ? o[2].value : DEFAULT_FILE, file)) {
    err_line(ctx, "%s: %s (create one with `evctl relay create`)",
             o[2].value ? o[2].value : DEFAULT_FILE, strerror(errno));
    return EVCTL_EXIT_ERROR;
  }
  if (o[4].value && !realpath(o[4].value, state)) {
    err_line(ctx, "%s: %s", o[4].value, strerror(errno));
    return EVCTL_EXIT_ERROR;
  }
  json_t *relays = read_relay_file(ctx, file);
  if (!relays) return EVCTL_EXIT_ERROR;
  if (exe_dir(dir, sizeof dir) < 0 || find_evserver(dir, server, sizeof server) < 0) {
    err_line(ctx, "relay dev: cannot find evserver next to evctl or in PATH");
    json_decref(relays);
    return EVCTL_EXIT_ERROR;
  }
  /* Plugins: the build tree's plugins.d beside the binaries, else the installed directory. */
  char plugins[PATH_MAX + 32], probe[PATH_MAX + 64];
  snprintf(plugins, sizeof plugins, "%s/plugins.d", dir);
  snprintf(probe, sizeof probe, "%s/relay-inbound.so", plugins);
  if (access(probe, R_OK) != 0) snprintf(plugins, sizeof plugins, "%s", EVS_DEFAULT_PLUGINS_DIR);

  /* A private directory: the configuration, the admin socket, a plugins.d with only the
   * plugins wanted (evserver loads every .so in plugins_dir) and, without --state-dir, the
   * state. */
  char tmp[] = "/tmp/evctl-relay-dev-XXXXXX";
  if (!mkdtemp(tmp)) {
    err_line(ctx, "relay dev: cannot create a temporary directory: %s", strerror(errno));
    json_decref(relays);
    return EVCTL_EXIT_ERROR;
  }
  char p1[PATH_MAX + 64], p2[PATH_MAX + 64], conf[PATH_MAX];
  snprintf(p1, sizeof p1, "%s/plugins.d", tmp);
  int ok = mkdir(p1, 0700) == 0;
  snprintf(p1, sizeof p1, "%s/relay-inbound.so", plugins);
  snprintf(p2, sizeof p2, "%s/plugins.d/relay-inbound.so", tmp);
  ok = ok && symlink(p1, p2) == 0;
  char enclave_bin[PATH_MAX + 32] = "";
  if (*state) {
    snprintf(p1, sizeof p1, "%s/enclave.so", plugins);
    snprintf(p2, sizeof p2, "%s/plugins.d/enclave.so", tmp);
    ok = ok && symlink(p1, p2) == 0;
    snprintf(enclave_bin, sizeof enclave_bin, "%s/evserver-enclave", dir);
    if (access(enclave_bin, X_OK) != 0) enclave_bin[0] = '\0'; /* the plugin's default */
  } else {
    snprintf(state, sizeof state, "%s/state", tmp);
    ok = ok && mkdir(state, 0700) == 0;
  }
  snprintf(conf, sizeof conf, "%s/evserver.conf", tmp);
  FILE *cf = ok ? fopen(conf, "w") : NULL;
  int bracket = strchr(host, ':') && host[0] != '[';
  if (cf) {
    fprintf(cf,
            "# written by `evctl relay dev`\n"
            "[server]\nworkers = 1\nstate_dir = %s\nplugins_dir = %s/plugins.d\nlog_level = info\n\n"
            "[admin]\nsocket = %s/admin.sock\n\n"
            "[listener \"http\"]\naddress = %s\ntls = off\n\n"
            "[plugin \"relay-inbound\"]\nrelay_config = %s\ndestination_override = http://%s%s%s:%ld\n",
            state, tmp, tmp, listen, file, bracket ? "[" : "", host, bracket ? "]" : "", port);
    if (enclave_bin[0]) fprintf(cf, "\n[plugin \"enclave\"]\nenclave_binary = %s\n", enclave_bin);
    ok = fclose(cf) == 0;
  } else {
    ok = 0;
  }
  if (!ok) {
    err_line(ctx, "relay dev: cannot prepare %s: %s", tmp, strerror(errno));
    nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    json_decref(relays);
    return EVCTL_EXIT_ERROR;
  }

  char url[300], dest[300], admin[PATH_MAX + 32];
  const char *colon = strrchr(listen, ':');
  int lhlen = colon ? (int)(colon - listen) : 0;
  int any = lhlen == 1 && listen[0] == '*';
  snprintf(url, sizeof url, "http://%.*s%s", any ? 9 : lhlen, any ? "127.0.0.1" : listen,
           colon ? colon : "");
  snprintf(dest, sizeof dest, "http://%s%s%s:%ld", bracket ? "[" : "", host, bracket ? "]" : "", port);
  snprintf(admin, sizeof admin, "%s/admin.sock", tmp);
  if (ctx->json) {
    json_t *list = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(relays, k, v) {
      json_array_append_new(list, json_pack("{s:s,s:s}", "domain", k, "hostHeader", k));
    }
    json_t *out = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:o}", "url", url, "listen", listen,
                            "destination", dest, "file", file, "adminSocket", admin, "stateDir",
                            state, "relays", list);
    evctl_print_json(out);
    json_decref(out);
  } else {
    printf("Relay dev server on %s, forwarding every relay to %s.\n", url, dest);
    const char *k;
    json_t *v;
    json_object_foreach(relays, k, v) {
      printf("  ");
      evctl_print(ctx, stdout, EVCTL_BOLD, k);
      printf(": curl -H 'Host: ");
      evctl_print(ctx, stdout, EVCTL_PLAIN, k);
      printf("' %s/\n", url);
    }
    printf("Edits of %s apply within a second. Ctrl-C stops.\n", file);
  }
  json_decref(relays);
  fflush(stdout);

  pid_t pid = fork();
  if (pid < 0) {
    err_line(ctx, "relay dev: fork: %s", strerror(errno));
    nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return EVCTL_EXIT_ERROR;
  }
  if (pid == 0) {
    /* The server dies with evctl, and its output goes to stderr: stdout was the summary (with
     * --json, exactly one object). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execl(server, server, "-c", conf, (char *)NULL);
    fprintf(stderr, "evctl: relay dev: cannot run %s: %s\n", server, strerror(errno));
    _exit(127);
  }
  dev_child = pid;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  dev_child = 0;
  nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return EVCTL_EXIT_OK;
  if (WIFSIGNALED(status) && (WTERMSIG(status) == SIGINT || WTERMSIG(status) == SIGTERM))
    return EVCTL_EXIT_OK;
  if (WIFEXITED(status) && WEXITSTATUS(status) != 127)
    fprintf(stderr, "evctl: relay dev: evserver exited with status %d (its log is above)\n",
            WEXITSTATUS(status));
  return EVCTL_EXIT_ERROR;
}
