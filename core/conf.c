/*
 * The evserver.conf parser, item validation, and the host's settings (contract: conf.h).
 *
 * Three layers, each usable on its own. evs__conf_parse_buffer() turns bytes into sections and
 * entries: syntax only, no knowledge of keys. evs__conf_validate_section() checks one section
 * against an evs_config_item table (one of the host's tables below, or a plugin's).
 * evs__settings_load() runs both over a whole file, adds the checks that span keys
 * (enumerations, "required when", addresses, server names) and fills evs__settings. The file
 * is hand-written by an operator, but every limit is enforced anyway and fuzz/fuzz_conf.c drives
 * all three layers.
 *
 * Library-like: no logging. Errors come back in the caller's buffer and never contain the value
 * of a SECRET item; the parser, which cannot know which keys are secret, never echoes values.
 * Buffers that held file bytes or values are wiped before they are freed, since a value may be
 * a database password.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef EVS_DEFAULT_PLUGINS_DIR
#define EVS_DEFAULT_PLUGINS_DIR "/usr/lib/evserver/plugins.d"
#endif

#define MS_S 1000
#define MS_M (60 * MS_S)
#define MS_H (60 * MS_M)
#define KIB 1024
#define MIB (1024 * KIB)
#define GIB ((int64_t)1024 * MIB)

/* ---- The host's key tables --------------------------------------------------------------- */
/* The one declaration of every host key: name, type, default, bounds, flags and help (the item
 * validation and --describe-config read), the evs__settings member it fills and, for a string
 * with a fixed set of values, that set. Bounds keep values in the range the server code was
 * written for; docs/configuration.md documents every row (tests/unit/test_conf.c fails when it
 * does not). */

/* The member a key fills: an int64_t for INT, BOOL, DURATION and SIZE, a char * for STRING and
 * PATH (a copy; PATH resolved against the configuration's directory; empty reads as unset).
 * BY_HAND: the loader reads the key itself (named sections, store.path). */
#define SETTING(member) (offsetof(evs__settings, member) + 1)
#define BY_HAND 0

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const store_backends[] = {"sqlite", "postgresql", NULL};

const evs__conf_key evs__conf_server_keys[] = {
    {{"workers", EVS_CONFIG_INT, "0", 0, 64, 0,
      "worker processes; 0 starts one per CPU"},
     SETTING(workers), NULL},
    {{"state_dir", EVS_CONFIG_PATH, "/var/lib/evserver", 0, 0, 0,
      "directory for persistent state (the SQLite store, keys)"},
     SETTING(state_dir), NULL},
    {{"plugins_dir", EVS_CONFIG_PATH, EVS_DEFAULT_PLUGINS_DIR, 0, 0, 0,
      "directory the plugin loader searches for <name>.so"},
     SETTING(plugins_dir), NULL},
    {{"log_level", EVS_CONFIG_STRING, "info", 0, 0, 0,
      "least severe level logged: error, warn, info or debug"},
     SETTING(log_level), log_levels},
    {{"user", EVS_CONFIG_STRING, NULL, 0, 0, 0,
      "user to switch to after binding the listeners (optional)"},
     SETTING(user), NULL},
    {{"tls_ticket_rotation", EVS_CONFIG_DURATION, "1h", 1000, 24 * MS_H, 0,
      "how often the TLS session ticket key is replaced; a ticket opens for 2 to 3 times this"},
     SETTING(tls_ticket_rotation_ms), NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_admin_keys[] = {
    {{"socket", EVS_CONFIG_PATH, "/run/evserver/admin.sock", 0, 0, 0,
      "Unix socket of the admin API (used by evctl)"},
     SETTING(admin_socket), NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_limits_keys[] = {
    {{"max_header_bytes", EVS_CONFIG_SIZE, "32k", 1 * KIB, 1 * MIB, 0,
      "largest request head (request line and headers); larger answers 431"},
     SETTING(max_header_bytes), NULL},
    {{"max_header_fields", EVS_CONFIG_INT, "100", 1, 1000, 0,
      "most header fields in a request; more answers 431"},
     SETTING(max_header_fields), NULL},
    /* 26m: room for the largest %EVENC file POST /decrypt takes (25 MiB of plaintext plus 75
     * bytes); the enclave plugin and the relay apply their exact 25 MiB limits themselves. */
    {{"max_body_bytes", EVS_CONFIG_SIZE, "26m", 1 * KIB, 64 * GIB, 0,
      "largest request body, per request; larger answers 413"},
     SETTING(max_body_bytes), NULL},
    {{"max_connections", EVS_CONFIG_INT, "10000", 1, 1000000, 0,
      "most open client connections on the node, counted across all workers; more get 503"},
     SETTING(max_connections), NULL},
    {{"max_connections_per_ip", EVS_CONFIG_INT, "1000", 0, 1000000, 0,
      "most open connections from one client address (IPv6: one /64), node-wide; more get 503; "
      "0: no limit"},
     SETTING(max_connections_per_ip), NULL},
    {{"header_timeout", EVS_CONFIG_DURATION, "10s", 100, 1 * MS_H, 0,
      "time allowed to receive a complete request head, from its first byte (a total deadline)"},
     SETTING(header_timeout_ms), NULL},
    {{"body_timeout", EVS_CONFIG_DURATION, "30s", 100, 1 * MS_H, 0,
      "longest wait between two reads of a request body"},
     SETTING(body_timeout_ms), NULL},
    {{"request_timeout", EVS_CONFIG_DURATION, "5m", 0, 24 * MS_H, 0,
      "time allowed from the first byte of a request until its body is received; 0: no limit"},
     SETTING(request_timeout_ms), NULL},
    {{"min_body_rate", EVS_CONFIG_SIZE, "1k", 0, 1 * GIB, 0,
      "slowest request body accepted, in bytes per second over each min_body_rate_window; "
      "slower answers 408; 0: no minimum"},
     SETTING(min_body_rate), NULL},
    {{"min_body_rate_window", EVS_CONFIG_DURATION, "10s", 100, 1 * MS_H, 0,
      "window over which min_body_rate is measured"},
     SETTING(min_body_rate_window_ms), NULL},
    {{"min_body_rate_grace", EVS_CONFIG_DURATION, "5s", 0, 1 * MS_H, 0,
      "time a request body may take to start before min_body_rate applies"},
     SETTING(min_body_rate_grace_ms), NULL},
    {{"idle_timeout", EVS_CONFIG_DURATION, "60s", 100, 1 * MS_H, 0,
      "how long an idle keep-alive connection is kept open"},
     SETTING(idle_timeout_ms), NULL},
    {{"send_timeout", EVS_CONFIG_DURATION, "30s", 100, 1 * MS_H, 0,
      "longest wait for the client to accept more response bytes"},
     SETTING(send_timeout_ms), NULL},
    {{"drain_timeout", EVS_CONFIG_DURATION, "30s", 0, 1 * MS_H, 0,
      "how long SIGTERM and SIGHUP wait for in-flight requests before closing them"},
     SETTING(drain_timeout_ms), NULL},
    {{"tls_identity_cache", EVS_CONFIG_INT, "1024", 1, 1000000, 0,
      "TLS contexts each worker keeps for the certificates plugins give tunnels by name "
      "(evs_tls_identity.cache_key), least recently used evicted first"},
     SETTING(tls_identity_cache), NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_upstream_keys[] = {
    {{"connect_timeout", EVS_CONFIG_DURATION, "5s", 100, 10 * MS_M, 0,
      "time allowed to connect to an upstream (TCP and TLS handshake)"},
     SETTING(upstream_connect_timeout_ms), NULL},
    {{"response_timeout", EVS_CONFIG_DURATION, "60s", 1 * MS_S, 1 * MS_H, 0,
      "time to the first response byte, and longest wait between response reads"},
     SETTING(upstream_response_timeout_ms), NULL},
    {{"pool_max_idle", EVS_CONFIG_INT, "32", 0, 10000, 0,
      "idle keep-alive connections kept per upstream; 0 disables pooling"},
     SETTING(upstream_pool_max_idle), NULL},
    {{"pool_idle_timeout", EVS_CONFIG_DURATION, "30s", 1 * MS_S, 1 * MS_H, 0,
      "how long an idle pooled upstream connection is kept"},
     SETTING(upstream_pool_idle_timeout_ms), NULL},
    {{"ca_file", EVS_CONFIG_PATH, NULL, 0, 0, 0,
      "PEM bundle to verify upstream certificates; unset: the system default"},
     SETTING(upstream_ca_file), NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_store_keys[] = {
    {{"backend", EVS_CONFIG_STRING, "sqlite", 0, 0, 0,
      "where plugins' key-value data lives: sqlite or postgresql"},
     SETTING(store_backend), store_backends},
    {{"path", EVS_CONFIG_PATH, "evserver.db", 0, 0, 0,
      "SQLite database file; a relative path is relative to state_dir"},
     BY_HAND, NULL},
    {{"dsn", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_SECRET,
      "libpq connection string; required when backend = postgresql"},
     SETTING(store_dsn), NULL},
    {{"record_timeout", EVS_CONFIG_DURATION, "10s", 100, 10 * MS_M, 0,
      "longest a response's end waits for its transaction record to be committed; after it "
      "the connection closes without the end (the response is not acknowledged)"},
     SETTING(store_record_timeout_ms), NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_listener_keys[] = {
    {{"address", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_REQUIRED,
      "host:port to listen on: 127.0.0.1:8080, [::1]:8443, *:80"},
     BY_HAND, NULL},
    {{"tls", EVS_CONFIG_BOOL, "off", 0, 0, 0,
      "terminate TLS on this listener"},
     BY_HAND, NULL},
    {{"certificate", EVS_CONFIG_PATH, NULL, 0, 0, 0,
      "PEM certificate chain used when no [certificate] matches the SNI name; required with tls"},
     BY_HAND, NULL},
    {{"key", EVS_CONFIG_PATH, NULL, 0, 0, 0,
      "PEM private key of certificate; required with tls"},
     BY_HAND, NULL},
    {{"serves", EVS_CONFIG_STRING, NULL, 0, 0, 0,
      "space-separated roles whose routes this listener serves: api, relay, or a plugin's own "
      "(default: api for a listener named \"api\", relay for any other)"},
     BY_HAND, NULL},
    {{"session_tickets", EVS_CONFIG_BOOL, "on", 0, 0, 0,
      "TLS session resumption with tickets (TLS 1.3 and 1.2), valid on every worker of the node"},
     BY_HAND, NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_key evs__conf_certificate_keys[] = {
    {{"server_names", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_REQUIRED,
      "space-separated SNI names this certificate serves: exact names or *.suffix wildcards"},
     BY_HAND, NULL},
    {{"certificate", EVS_CONFIG_PATH, NULL, 0, 0, EVS_CONFIG_REQUIRED,
      "PEM certificate chain"},
     BY_HAND, NULL},
    {{"key", EVS_CONFIG_PATH, NULL, 0, 0, EVS_CONFIG_REQUIRED,
      "PEM private key"},
     BY_HAND, NULL},
    {{NULL, 0, NULL, 0, 0, 0, NULL}, BY_HAND, NULL},
};

const evs__conf_section_def evs__conf_host_sections[] = {
    {"server", 0, evs__conf_server_keys, "processes, directories, logging"},
    {"admin", 0, evs__conf_admin_keys, "the local admin API"},
    {"limits", 0, evs__conf_limits_keys, "per-request and per-connection limits and timeouts"},
    {"upstream", 0, evs__conf_upstream_keys, "connections to destinations"},
    {"store", 0, evs__conf_store_keys, "the key-value store plugins persist to"},
    {"listener", 1, evs__conf_listener_keys, "an address to accept clients on (one or more)"},
    {"certificate", 1, evs__conf_certificate_keys, "an SNI certificate for TLS listeners"},
    {"plugin", 1, NULL, "a plugin's own settings (keys declared by the plugin)"},
    {NULL, 0, NULL, NULL},
};

/* ---- Small helpers ----------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  if (!err || errlen == 0) return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* Frees a string that may hold a secret value. */
static void free_wiped(char *s) {
  if (!s) return;
  explicit_bzero(s, strlen(s));
  free(s);
}

static int is_ws(char c) { return c == ' ' || c == '\t'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || is_digit(c); }
static char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; }

/* Appends ", item" (or "item" first) to a list in buf, truncating at the end of buf. */
static void list_append(char *buf, size_t len, size_t *off, const char *item) {
  int n;
  if (*off >= len) return;
  n = snprintf(buf + *off, len - *off, "%s%s", *off ? ", " : "", item);
  *off = n < 0 ? len : *off + (size_t)n;
}

/* "[type]" or "[type \"name\"]" for messages; names are not secret. */
static const char *sec_label(const evs__conf_section *sec, char *buf, size_t len) {
  if (sec->name)
    snprintf(buf, len, "[%s \"%.100s\"]", sec->type, sec->name);
  else
    snprintf(buf, len, "[%s]", sec->type);
  return buf;
}

/* A value shortened for an error message, cut at a UTF-8 character boundary. */
static const char *echo(const char *v, char *buf, size_t len) {
  size_t n = strlen(v), max = 60;
  if (n <= max) return v;
  while (max > 0 && ((unsigned char)v[max] & 0xC0) == 0x80) max--;
  snprintf(buf, len, "%.*s...", (int)max, v);
  return buf;
}

static char *join_path(const char *dir, const char *v) {
  char *out;
  size_t dl, vl;
  if (v[0] == '/' || !dir || !dir[0]) return strdup(v);
  dl = strlen(dir);
  vl = strlen(v);
  out = malloc(dl + 1 + vl + 1);
  if (!out) return NULL;
  memcpy(out, dir, dl);
  if (dir[dl - 1] != '/') out[dl++] = '/';
  memcpy(out + dl, v, vl + 1);
  return out;
}

/* The directory of path, made absolute against the working directory so that resolved paths
 * stay valid after the server changes directory. */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  char *d, *cwd, *abs;
  if (!slash)
    d = strdup(".");
  else if (slash == path)
    d = strdup("/");
  else
    d = strndup(path, (size_t)(slash - path));
  if (!d || d[0] == '/') return d;
  cwd = getcwd(NULL, 0);
  if (!cwd) {
    free(d);
    return NULL;
  }
  abs = strcmp(d, ".") == 0 ? strdup(cwd) : join_path(cwd, d);
  free(cwd);
  free(d);
  return abs;
}

/* RFC 1123 host name: dot-separated labels of letters, digits and '-', 1..63 bytes each, not
 * starting or ending with '-', 253 bytes in all. (relay_config.c has its own copy: it must
 * compile into the relay plugin without core files.) */
static int valid_hostname(const char *s) {
  size_t n = strlen(s), label = 0;
  if (n == 0 || n > 253) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-') return 0;
      label = 0;
    } else if (is_lower_alnum(ascii_lower(c)) || c == '-') {
      if (label == 0 && c == '-') return 0;
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return label > 0 && s[n - 1] != '-';
}

/* ---- Typed value parsers ----------------------------------------------------------------- */

/* Unsigned decimal digits at *s, advancing it; -1 on no digits or overflow. */
static int parse_digits(const char **s, int64_t *ret) {
  int64_t v = 0;
  const char *p = *s;
  if (!is_digit(*p)) return -1;
  for (; is_digit(*p); p++) {
    int d = *p - '0';
    if (v > (INT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *s = p;
  *ret = v;
  return 0;
}

int evs__conf_parse_int(const char *v, int64_t *ret) {
  int neg = 0;
  int64_t n;
  if (!v) return -1;
  if (*v == '-' || *v == '+') neg = *v++ == '-';
  if (parse_digits(&v, &n) < 0 || *v) return -1;
  *ret = neg ? -n : n;
  return 0;
}

int evs__conf_parse_bool(const char *v, int *ret) {
  static const char *const yes[] = {"on", "yes", "true"}, *const no[] = {"off", "no", "false"};
  if (!v) return -1;
  for (size_t i = 0; i < 3; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *ret = 1;
      return 0;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *ret = 0;
      return 0;
    }
  }
  return -1;
}

/* Digits followed by one of the units; the unit is matched case-insensitively. */
typedef struct unit {
  const char *suffix;
  int64_t mult;
} unit;

static int parse_with_units(const char *v, const unit *units, size_t nunits, int64_t *ret) {
  int64_t n;
  if (!v || parse_digits(&v, &n) < 0) return -1;
  for (size_t i = 0; i < nunits; i++) {
    if (strcasecmp(v, units[i].suffix) == 0) {
      if (n > INT64_MAX / units[i].mult) return -1;
      *ret = n * units[i].mult;
      return 0;
    }
  }
  return -1;
}

int evs__conf_parse_duration_ms(const char *v, int64_t *ret) {
  static const unit units[] = {{"", MS_S}, {"ms", 1}, {"s", MS_S}, {"m", MS_M}, {"h", MS_H}};
  return parse_with_units(v, units, sizeof units / sizeof units[0], ret);
}

int evs__conf_parse_size(const char *v, int64_t *ret) {
  static const unit units[] = {{"", 1}, {"k", KIB}, {"m", MIB}, {"g", GIB}};
  return parse_with_units(v, units, sizeof units / sizeof units[0], ret);
}

char *evs__conf_resolve_path(const evs__conf *conf, const char *v) {
  if (!v) return NULL;
  return join_path(conf ? conf->dir : NULL, v);
}

static void fmt_duration(int64_t ms, char *buf, size_t len) {
  if (ms != 0 && ms % MS_H == 0)
    snprintf(buf, len, "%lldh", (long long)(ms / MS_H));
  else if (ms != 0 && ms % MS_M == 0)
    snprintf(buf, len, "%lldm", (long long)(ms / MS_M));
  else if (ms != 0 && ms % MS_S == 0)
    snprintf(buf, len, "%llds", (long long)(ms / MS_S));
  else
    snprintf(buf, len, "%lldms", (long long)ms);
}

static void fmt_size(int64_t b, char *buf, size_t len) {
  if (b != 0 && b % GIB == 0)
    snprintf(buf, len, "%lldg", (long long)(b / GIB));
  else if (b != 0 && b % MIB == 0)
    snprintf(buf, len, "%lldm", (long long)(b / MIB));
  else if (b != 0 && b % KIB == 0)
    snprintf(buf, len, "%lldk", (long long)(b / KIB));
  else
    snprintf(buf, len, "%lld", (long long)b);
}

static void fmt_bound(const evs_config_item *it, int64_t v, char *buf, size_t len) {
  if (it->type == EVS_CONFIG_DURATION)
    fmt_duration(v, buf, len);
  else if (it->type == EVS_CONFIG_SIZE)
    fmt_size(v, buf, len);
  else
    snprintf(buf, len, "%lld", (long long)v);
}

/* What a value of the item must look like, for "expected ..." messages. */
static void describe_expected(const evs_config_item *it, char *buf, size_t len) {
  char lo[32], hi[32];
  const char *what;
  switch (it->type) {
  case EVS_CONFIG_INT: what = "an integer"; break;
  case EVS_CONFIG_DURATION: what = "a duration such as 250ms, 10s, 5m or 1h"; break;
  case EVS_CONFIG_SIZE: what = "a size such as 512, 64k, 25m or 1g"; break;
  case EVS_CONFIG_BOOL: snprintf(buf, len, "on/off, yes/no or true/false"); return;
  case EVS_CONFIG_PATH: snprintf(buf, len, "a path"); return;
  default: snprintf(buf, len, "a value"); return;
  }
  if (it->min == 0 && it->max == 0) {
    snprintf(buf, len, "%s", what);
    return;
  }
  fmt_bound(it, it->min, lo, sizeof lo);
  fmt_bound(it, it->max, hi, sizeof hi);
  if (it->max == INT64_MAX)
    snprintf(buf, len, "%s of at least %s", what, lo);
  else
    snprintf(buf, len, "%s in [%s, %s]", what, lo, hi);
}

/* Checks v against the item's type and bounds; the parsed number (INT, DURATION, SIZE) or
 * boolean goes to *ret_num when ret_num is not NULL. */
static int check_value(const evs_config_item *it, const char *v, int64_t *ret_num) {
  int64_t n = 0;
  int b;
  switch (it->type) {
  case EVS_CONFIG_STRING:
    if ((it->flags & EVS_CONFIG_REQUIRED) && !v[0]) return -1;
    break;
  case EVS_CONFIG_PATH:
    if (!v[0]) return -1;
    break;
  case EVS_CONFIG_BOOL:
    if (evs__conf_parse_bool(v, &b) < 0) return -1;
    n = b;
    break;
  case EVS_CONFIG_INT:
  case EVS_CONFIG_DURATION:
  case EVS_CONFIG_SIZE:
    if (it->type == EVS_CONFIG_INT ? evs__conf_parse_int(v, &n)
        : it->type == EVS_CONFIG_DURATION ? evs__conf_parse_duration_ms(v, &n)
                                          : evs__conf_parse_size(v, &n))
      return -1;
    if ((it->min != 0 || it->max != 0) && (n < it->min || n > it->max)) return -1;
    break;
  default:
    return -1;
  }
  if (ret_num) *ret_num = n;
  return 0;
}

/* An item table as validation and lookups walk it: a plugin's array of evs_config_item, or one
 * of the host's arrays of evs__conf_key (whose first member is the item), with its row size. */
typedef struct item_table {
  const char *rows; /* NULL: no items */
  size_t stride;
} item_table;

static item_table plugin_table(const evs_config_item *items) {
  return (item_table){(const char *)items, sizeof *items};
}

static item_table host_table(const evs__conf_key *keys) {
  return (item_table){(const char *)keys, sizeof *keys};
}

/* The i-th item, or NULL at the terminating row (key NULL). */
static const evs_config_item *item_at(item_table t, size_t i) {
  const evs_config_item *it = t.rows ? (const evs_config_item *)(t.rows + i * t.stride) : NULL;
  return it && it->key ? it : NULL;
}

static const evs_config_item *find_item(item_table t, const char *key) {
  const evs_config_item *it;
  for (size_t i = 0; (it = item_at(t, i)); i++)
    if (strcmp(it->key, key) == 0) return it;
  return NULL;
}

/* ---- Lookups ----------------------------------------------------------------------------- */

const evs__conf_entry *evs__conf_find_entry(const evs__conf_section *sec, const char *key) {
  if (!sec || !key) return NULL;
  for (size_t i = 0; i < sec->nentries; i++)
    if (strcmp(sec->entries[i].key, key) == 0) return &sec->entries[i];
  return NULL;
}

/* sec may be NULL (the section is absent): then the default applies. */
static const char *value_of(const evs__conf_section *sec, item_table t, const char *key) {
  const evs__conf_entry *e = evs__conf_find_entry(sec, key);
  const evs_config_item *it;
  if (e) return e->value;
  it = find_item(t, key);
  return it ? it->default_value : NULL;
}

const char *evs__conf_value(const evs__conf_section *sec, const evs_config_item *items,
                            const char *key) {
  return value_of(sec, plugin_table(items), key);
}

const evs__conf_section *evs__conf_find_section(const evs__conf *conf, const char *type,
                                                const char *name) {
  if (!conf || !type) return NULL;
  for (size_t i = 0; i < conf->nsections; i++) {
    const evs__conf_section *s = &conf->sections[i];
    if (strcmp(s->type, type) != 0) continue;
    if (!name ? !s->name : (s->name && strcmp(s->name, name) == 0)) return s;
  }
  return NULL;
}

/* ---- Parser ------------------------------------------------------------------------------ */

/* An open-addressing hash set of indices, so that duplicate sections and keys are found in
 * linear time even in a 1 MiB file of one-byte keys. */
typedef struct dupslot {
  uint64_t hash;
  uint32_t idx1; /* index + 1; 0: empty */
} dupslot;

typedef struct dupset {
  dupslot *slots;
  size_t cap; /* a power of two, or 0 */
  size_t n;
} dupset;

typedef int (*dup_eq_fn)(const void *ctx, uint32_t a, uint32_t b);

static uint64_t hash_str(uint64_t h, const char *s) {
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 0x100000001b3ull;
  }
  h ^= 0xff; /* separator, so that ("ab","c") and ("a","bc") differ */
  return h * 0x100000001b3ull;
}

static void dupset_clear(dupset *d) {
  free(d->slots);
  d->slots = NULL;
  d->cap = d->n = 0;
}

static void dupset_place(dupslot *slots, size_t cap, dupslot s) {
  size_t i = (size_t)s.hash & (cap - 1);
  while (slots[i].idx1) i = (i + 1) & (cap - 1);
  slots[i] = s;
}

/* Inserts idx unless an equal one is present: returns 1 and its index in *ret_existing, 0 if
 * inserted, -1 without memory. */
static int dupset_add(dupset *d, uint64_t hash, uint32_t idx, dup_eq_fn eq, const void *ctx,
                      uint32_t *ret_existing) {
  if (d->cap) {
    for (size_t i = (size_t)hash & (d->cap - 1); d->slots[i].idx1; i = (i + 1) & (d->cap - 1)) {
      if (d->slots[i].hash == hash && eq(ctx, d->slots[i].idx1 - 1, idx)) {
        *ret_existing = d->slots[i].idx1 - 1;
        return 1;
      }
    }
  }
  if ((d->n + 1) * 2 > d->cap) {
    size_t ncap = d->cap ? d->cap * 2 : 16;
    dupslot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    for (size_t i = 0; i < d->cap; i++)
      if (d->slots[i].idx1) dupset_place(ns, ncap, d->slots[i]);
    free(d->slots);
    d->slots = ns;
    d->cap = ncap;
  }
  dupset_place(d->slots, d->cap, (dupslot){hash, idx + 1});
  d->n++;
  return 0;
}

typedef struct parser {
  const char *path;
  evs__conf *conf;
  size_t sections_cap;
  size_t entries_cap; /* of the last section, the only one that grows */
  dupset secs, keys;
  char *err;
  size_t errlen;
} parser;

static int sec_eq(const void *ctx, uint32_t a, uint32_t b) {
  const evs__conf *c = ctx;
  const evs__conf_section *x = &c->sections[a], *y = &c->sections[b];
  if (strcmp(x->type, y->type) != 0) return 0;
  if (!x->name || !y->name) return !x->name && !y->name;
  return strcmp(x->name, y->name) == 0;
}

static int key_eq(const void *ctx, uint32_t a, uint32_t b) {
  const evs__conf_section *s = ctx;
  return strcmp(s->entries[a].key, s->entries[b].key) == 0;
}

static int oom(parser *p) {
  set_err(p->err, p->errlen, "%s: out of memory", p->path);
  return -1;
}

/* Rejects NUL, control characters other than tab, and malformed UTF-8 (overlong forms,
 * surrogates, code points above U+10FFFF). */
static int check_line_bytes(parser *p, unsigned lineno, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned c = s[i];
    size_t more;
    unsigned lo = 0x80, hi = 0xBF;
    if (c == 0) {
      set_err(p->err, p->errlen, "%s:%u: NUL byte at column %zu", p->path, lineno, i + 1);
      return -1;
    }
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      set_err(p->err, p->errlen, "%s:%u: control character 0x%02x at column %zu", p->path,
              lineno, c, i + 1);
      return -1;
    }
    if (c < 0x80) continue;
    if (c >= 0xC2 && c <= 0xDF) more = 1;
    else if (c == 0xE0) more = 2, lo = 0xA0;
    else if (c == 0xED) more = 2, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) more = 2;
    else if (c == 0xF0) more = 3, lo = 0x90;
    else if (c == 0xF4) more = 3, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) more = 3;
    else goto bad;
    if (n - i - 1 < more) goto bad;
    for (size_t k = 1; k <= more; k++) {
      unsigned cc = s[i + k];
      if (k == 1 ? (cc < lo || cc > hi) : (cc < 0x80 || cc > 0xBF)) goto bad;
    }
    i += more;
    continue;
  bad:
    set_err(p->err, p->errlen, "%s:%u: invalid UTF-8 at column %zu", p->path, lineno, i + 1);
    return -1;
  }
  return 0;
}

static int add_section(parser *p, unsigned lineno, const char *type, size_t tlen,
                       const char *name, size_t nlen, int named) {
  evs__conf *c = p->conf;
  evs__conf_section *s;
  uint32_t existing;
  uint64_t h;
  int r;
  char label[160];
  if (c->nsections == p->sections_cap) {
    size_t ncap = p->sections_cap ? p->sections_cap * 2 : 8;
    evs__conf_section *ns = realloc(c->sections, ncap * sizeof *ns);
    if (!ns) return oom(p);
    c->sections = ns;
    p->sections_cap = ncap;
  }
  s = &c->sections[c->nsections];
  memset(s, 0, sizeof *s);
  s->line = lineno;
  s->type = strndup(type, tlen);
  s->name = named ? strndup(name, nlen) : NULL;
  c->nsections++; /* counted now, so that evs__conf_free releases it on any error below */
  if (!s->type || (named && !s->name)) return oom(p);
  h = hash_str(0xcbf29ce484222325ull, s->type);
  h = s->name ? hash_str(h ^ 1, s->name) : h;
  r = dupset_add(&p->secs, h, (uint32_t)(c->nsections - 1), sec_eq, c, &existing);
  if (r < 0) return oom(p);
  if (r > 0) {
    set_err(p->err, p->errlen, "%s:%u: section %s is already defined on line %u", p->path,
            lineno, sec_label(s, label, sizeof label), c->sections[existing].line);
    return -1;
  }
  /* Keys are unique per section and a section is never reopened, so the key set restarts. */
  if (p->keys.cap > 64) dupset_clear(&p->keys);
  else if (p->keys.cap) memset(p->keys.slots, 0, p->keys.cap * sizeof *p->keys.slots);
  p->keys.n = 0;
  p->entries_cap = 0;
  return 0;
}

static int parse_header(parser *p, unsigned lineno, const char *s, size_t n) {
  size_t i = 1, ts, te, ns = 0, ne = 0;
  int named = 0;
  while (i < n && is_ws(s[i])) i++;
  ts = i;
  while (i < n && (is_lower_alnum(s[i]) || s[i] == '_' || s[i] == '-')) i++;
  te = i;
  while (i < n && is_ws(s[i])) i++;
  if (i < n && s[i] == '"') {
    named = 1;
    ns = ++i;
    while (i < n && s[i] != '"') i++;
    if (i == n) goto bad;
    ne = i++;
    if (ne == ns) {
      set_err(p->err, p->errlen, "%s:%u: empty section name", p->path, lineno);
      return -1;
    }
    while (i < n && is_ws(s[i])) i++;
  }
  if (te == ts || i != n - 1 || s[i] != ']') goto bad;
  return add_section(p, lineno, s + ts, te - ts, s + ns, ne - ns, named);
bad:
  set_err(p->err, p->errlen,
          "%s:%u: malformed section header; expected [type] or [type \"name\"] with a type of "
          "lower-case letters, digits, '_' and '-'",
          p->path, lineno);
  return -1;
}

static int parse_entry(parser *p, unsigned lineno, const char *s, size_t n) {
  evs__conf *c = p->conf;
  evs__conf_section *sec;
  evs__conf_entry *e;
  size_t i = 0, klen, vs;
  uint32_t existing;
  int r;
  while (i < n && (is_lower_alnum(s[i]) || s[i] == '_')) i++;
  klen = i;
  while (i < n && is_ws(s[i])) i++;
  if (klen == 0 || i == n || s[i] != '=') {
    /* Nothing of the line is echoed: it might be a secret pasted on a line of its own. */
    set_err(p->err, p->errlen,
            "%s:%u: expected 'key = value', '[section]' or '# comment'; keys are lower-case "
            "letters, digits and '_'",
            p->path, lineno);
    return -1;
  }
  if (c->nsections == 0) {
    set_err(p->err, p->errlen, "%s:%u: key '%.*s' is outside of any [section]", p->path, lineno,
            (int)klen, s);
    return -1;
  }
  i++;
  while (i < n && is_ws(s[i])) i++;
  vs = i;
  if (vs < n && s[vs] == '"') {
    if (n - vs < 2 || s[n - 1] != '"') {
      set_err(p->err, p->errlen, "%s:%u: key '%.*s': unterminated quoted value", p->path, lineno,
              (int)klen, s);
      return -1;
    }
    vs++;
    n--;
  }
  sec = &c->sections[c->nsections - 1];
  if (sec->nentries == p->entries_cap) {
    size_t ncap = p->entries_cap ? p->entries_cap * 2 : 8;
    evs__conf_entry *ne = realloc(sec->entries, ncap * sizeof *ne);
    if (!ne) return oom(p);
    sec->entries = ne;
    p->entries_cap = ncap;
  }
  e = &sec->entries[sec->nentries];
  e->line = lineno;
  e->key = strndup(s, klen);
  e->value = strndup(s + vs, n - vs);
  sec->nentries++;
  if (!e->key || !e->value) return oom(p);
  r = dupset_add(&p->keys, hash_str(0xcbf29ce484222325ull, e->key),
                 (uint32_t)(sec->nentries - 1), key_eq, sec, &existing);
  if (r < 0) return oom(p);
  if (r > 0) {
    set_err(p->err, p->errlen, "%s:%u: key '%s' is already set on line %u", p->path, lineno,
            e->key, sec->entries[existing].line);
    return -1;
  }
  return 0;
}

static int parse_line(parser *p, unsigned lineno, const char *s, size_t n) {
  while (n > 0 && is_ws(*s)) s++, n--;
  while (n > 0 && is_ws(s[n - 1])) n--;
  if (n == 0 || s[0] == '#') return 0;
  if (s[0] == '[') return parse_header(p, lineno, s, n);
  return parse_entry(p, lineno, s, n);
}

int evs__conf_parse_buffer(const char *path, const char *buf, size_t len, evs__conf **ret_conf,
                           char *err, size_t errlen) {
  parser p = {.path = path ? path : "(config)", .err = err, .errlen = errlen};
  size_t off = 0;
  unsigned lineno = 0;
  int r = -1;
  if (len > EVS_CONF_MAX_FILE_BYTES) {
    set_err(err, errlen, "%s: file is larger than %u bytes", p.path, EVS_CONF_MAX_FILE_BYTES);
    return -1;
  }
  if (!buf && len) {
    set_err(err, errlen, "%s: no buffer", p.path);
    return -1;
  }
  p.conf = calloc(1, sizeof *p.conf);
  if (!p.conf) return oom(&p);
  p.conf->path = strdup(p.path);
  p.conf->dir = dir_of(p.path);
  if (!p.conf->path) {
    oom(&p);
    goto out;
  }
  if (!p.conf->dir) {
    set_err(err, errlen, "%s: cannot determine its directory: %s", p.path, strerror(errno));
    goto out;
  }
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) off = 3; /* a UTF-8 byte order mark */
  while (off < len) {
    const char *nl = memchr(buf + off, '\n', len - off);
    size_t end = nl ? (size_t)(nl - buf) : len, n = end - off;
    lineno++;
    if (n > 0 && buf[end - 1] == '\r') n--;
    if (n > EVS_CONF_MAX_LINE_BYTES) {
      set_err(err, errlen, "%s:%u: line longer than %d bytes", p.path, lineno,
              EVS_CONF_MAX_LINE_BYTES);
      goto out;
    }
    if (check_line_bytes(&p, lineno, (const unsigned char *)buf + off, n) < 0 ||
        parse_line(&p, lineno, buf + off, n) < 0)
      goto out;
    off = nl ? end + 1 : len;
  }
  r = 0;
out:
  dupset_clear(&p.secs);
  dupset_clear(&p.keys);
  if (r < 0) {
    evs__conf_free(p.conf);
    return -1;
  }
  *ret_conf = p.conf;
  return 0;
}

/* Reads at most max + 1 bytes, so that an oversized file is detected without reading it all. */
static int read_bounded(const char *path, size_t max, char **ret_buf, size_t *ret_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  size_t cap = 64 * 1024, len = 0;
  char *buf;
  if (fd < 0) return errno ? -errno : -EIO;
  buf = malloc(cap);
  if (!buf) {
    close(fd);
    return -ENOMEM;
  }
  for (;;) {
    ssize_t r;
    if (len == cap) {
      char *nb;
      if (cap > max) break;
      nb = malloc(cap * 2);
      if (!nb) {
        explicit_bzero(buf, len);
        free(buf);
        close(fd);
        return -ENOMEM;
      }
      memcpy(nb, buf, len);
      explicit_bzero(buf, len);
      free(buf);
      buf = nb;
      cap *= 2;
    }
    r = read(fd, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno ? -errno : -EIO;
      explicit_bzero(buf, len);
      free(buf);
      close(fd);
      return e;
    }
    if (r == 0) break;
    len += (size_t)r;
    if (len > max) break;
  }
  close(fd);
  *ret_buf = buf;
  *ret_len = len;
  return 0;
}

int evs__conf_parse_file(const char *path, evs__conf **ret_conf, char *err, size_t errlen) {
  char *buf = NULL;
  size_t len = 0;
  int r;
  if (!path) {
    set_err(err, errlen, "no configuration file given");
    return -1;
  }
  r = read_bounded(path, EVS_CONF_MAX_FILE_BYTES, &buf, &len);
  if (r < 0) {
    set_err(err, errlen, "%s: %s", path, strerror(-r));
    return -1;
  }
  r = evs__conf_parse_buffer(path, buf, len, ret_conf, err, errlen);
  explicit_bzero(buf, len);
  free(buf);
  return r;
}

void evs__conf_free(evs__conf *conf) {
  if (!conf) return;
  for (size_t i = 0; i < conf->nsections; i++) {
    evs__conf_section *s = &conf->sections[i];
    for (size_t k = 0; k < s->nentries; k++) {
      free(s->entries[k].key);
      free_wiped(s->entries[k].value);
    }
    free(s->entries);
    free(s->type);
    free(s->name);
  }
  free(conf->sections);
  free(conf->path);
  free(conf->dir);
  free(conf);
}

/* ---- Validation -------------------------------------------------------------------------- */

static int validate(const evs__conf *conf, const evs__conf_section *sec, item_table items,
                    char *err, size_t errlen) {
  const char *path = conf && conf->path ? conf->path : "(config)";
  char label[160], expected[128], eb[80];
  const evs_config_item *it;
  if (!sec) return 0;
  for (size_t i = 0; i < sec->nentries; i++) {
    const evs__conf_entry *e = &sec->entries[i];
    if (!(it = find_item(items, e->key))) {
      char known[512];
      const evs_config_item *k;
      size_t off = 0;
      known[0] = 0;
      for (size_t j = 0; (k = item_at(items, j)); j++)
        list_append(known, sizeof known, &off, k->key);
      if (!known[0])
        set_err(err, errlen, "%s:%u: unknown key '%s': %s takes no keys", path, e->line, e->key,
                sec_label(sec, label, sizeof label));
      else
        set_err(err, errlen, "%s:%u: unknown key '%s' in %s (known keys: %s)", path, e->line,
                e->key, sec_label(sec, label, sizeof label), known);
      return -1;
    }
    if (check_value(it, e->value, NULL) == 0) continue;
    if ((it->type == EVS_CONFIG_STRING || it->type == EVS_CONFIG_PATH) && !e->value[0]) {
      set_err(err, errlen, "%s:%u: key '%s': must not be empty", path, e->line, e->key);
      return -1;
    }
    describe_expected(it, expected, sizeof expected);
    if (it->flags & EVS_CONFIG_SECRET)
      set_err(err, errlen, "%s:%u: key '%s': expected %s (the value is secret and not shown)",
              path, e->line, e->key, expected);
    else
      set_err(err, errlen, "%s:%u: key '%s': expected %s, got '%s'", path, e->line, e->key,
              expected, echo(e->value, eb, sizeof eb));
    return -1;
  }
  for (size_t i = 0; (it = item_at(items, i)); i++) {
    if (evs__conf_find_entry(sec, it->key)) continue;
    if (it->flags & EVS_CONFIG_REQUIRED) {
      set_err(err, errlen, "%s:%u: %s: missing required key '%s'", path, sec->line,
              sec_label(sec, label, sizeof label), it->key);
      return -1;
    }
    /* A default that does not parse is a bug in the item table (a plugin's, most likely):
     * refuse it here, at load time, rather than hand garbage to the plugin later. */
    if (it->default_value && check_value(it, it->default_value, NULL) < 0) {
      set_err(err, errlen,
              "%s:%u: %s: the built-in default of key '%s' is not valid for its type; set the "
              "key explicitly and report the bug",
              path, sec->line, sec_label(sec, label, sizeof label), it->key);
      return -1;
    }
  }
  return 0;
}

int evs__conf_validate_section(const evs__conf *conf, const evs__conf_section *sec,
                               const evs_config_item *items, char *err, size_t errlen) {
  return validate(conf, sec, plugin_table(items), err, errlen);
}

/* ---- Addresses and server names ---------------------------------------------------------- */

static int parse_port(const char *s, uint16_t *ret) {
  int64_t v;
  if (!is_digit(*s) || strlen(s) > 5 || parse_digits(&s, &v) < 0 || *s || v < 1 || v > 65535)
    return -1;
  *ret = (uint16_t)v;
  return 0;
}

int evs__conf_parse_address(const char *address, char *ret_host, size_t hostlen,
                            int *ret_family, uint16_t *ret_port) {
  char host[INET6_ADDRSTRLEN + 8], norm[INET6_ADDRSTRLEN];
  const char *colon, *hs;
  size_t hl;
  unsigned char bin[16];
  int family;
  uint16_t port;
  if (!address || !ret_host || hostlen < INET6_ADDRSTRLEN) return -1;
  if (address[0] == '[') {
    const char *close = strchr(address, ']');
    if (!close || close[1] != ':') return -1;
    hs = address + 1;
    hl = (size_t)(close - hs);
    colon = close + 1;
    family = AF_INET6;
  } else {
    colon = strrchr(address, ':');
    if (!colon) return -1;
    hs = address;
    hl = (size_t)(colon - address);
    family = AF_INET;
  }
  if (hl == 0 || hl >= sizeof host) return -1;
  memcpy(host, hs, hl);
  host[hl] = 0;
  if (parse_port(colon + 1, &port) < 0) return -1;
  if (family == AF_INET && strcmp(host, "*") == 0) {
    family = AF_UNSPEC;
    snprintf(norm, sizeof norm, "*");
  } else if (inet_pton(family, host, bin) != 1 || !inet_ntop(family, bin, norm, sizeof norm)) {
    return -1;
  }
  snprintf(ret_host, hostlen, "%s", norm);
  if (ret_family) *ret_family = family;
  if (ret_port) *ret_port = port;
  return 0;
}

/* An SNI server name: a host name, or "*." and a host name. */
static int valid_server_name(const char *s) {
  if (s[0] == '*' && s[1] == '.') s += 2;
  return valid_hostname(s);
}

/* ---- Settings ---------------------------------------------------------------------------- */

static const evs__conf_section_def *find_def(const char *type) {
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++)
    if (strcmp(d->type, type) == 0) return d;
  return NULL;
}

typedef struct loader {
  const evs__conf *conf;
  evs__settings *s;
  char *err;
  size_t errlen;
} loader;

static int load_oom(loader *l) {
  set_err(l->err, l->errlen, "%s: out of memory", l->conf->path);
  return -1;
}

/* Line of key in sec if set there, else of the section, else 0. */
static unsigned line_of(const evs__conf_section *sec, const char *key) {
  const evs__conf_entry *e = evs__conf_find_entry(sec, key);
  return e ? e->line : sec ? sec->line : 0;
}

static int item_num(loader *l, const evs__conf_section *sec, const evs__conf_key *keys,
                    const char *key, int64_t *ret) {
  const evs_config_item *it = find_item(host_table(keys), key);
  const char *v = value_of(sec, host_table(keys), key);
  if (!it || !v || check_value(it, v, ret) < 0) {
    /* Only reachable with a broken built-in default: the section itself was validated. */
    set_err(l->err, l->errlen, "%s: internal error: no valid value for key '%s'",
            l->conf->path, key);
    return -1;
  }
  return 0;
}

/* A copy of the value of key (resolved if it is a PATH), or NULL if it has none. */
static int item_str(loader *l, const evs__conf_section *sec, const evs__conf_key *keys,
                    const char *key, char **ret) {
  const evs_config_item *it = find_item(host_table(keys), key);
  const char *v = value_of(sec, host_table(keys), key);
  *ret = NULL;
  if (!v || !v[0]) return 0;
  *ret = it && it->type == EVS_CONFIG_PATH ? evs__conf_resolve_path(l->conf, v) : strdup(v);
  return *ret ? 0 : load_oom(l);
}

/* A key with a fixed set of values (one_of) holds one of them. */
static int check_one_of(loader *l, const evs__conf_section *sec, const evs__conf_key *k) {
  char eb[80], list[128];
  const char *v = value_of(sec, host_table(k), k->item.key);
  size_t off = 0;
  int ok = 0;
  list[0] = 0;
  for (const char *const *e = k->one_of; *e; e++) {
    ok |= v && strcmp(*e, v) == 0;
    list_append(list, sizeof list, &off, *e);
  }
  if (ok) return 0;
  set_err(l->err, l->errlen, "%s:%u: key '%s': expected one of %s, got '%s'", l->conf->path,
          line_of(sec, k->item.key), k->item.key, list, echo(v ? v : "", eb, sizeof eb));
  return -1;
}

static int load_unnamed(loader *l) {
  evs__settings *s = l->s;
  const evs__conf_section *store;
  const char *v;
  char label[160];
  /* Every key of the unnamed sections that fills a setting, straight from the key tables. */
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++) {
    if (d->named || !d->keys) continue;
    const evs__conf_section *sec = evs__conf_find_section(l->conf, d->type, NULL);
    for (const evs__conf_key *k = d->keys; k->item.key; k++) {
      if (k->one_of && check_one_of(l, sec, k) < 0) return -1;
      if (k->setting == BY_HAND) continue;
      void *field = (char *)s + (k->setting - 1);
      int r;
      switch (k->item.type) {
      case EVS_CONFIG_STRING:
      case EVS_CONFIG_PATH: r = item_str(l, sec, d->keys, k->item.key, field); break;
      default: r = item_num(l, sec, d->keys, k->item.key, field); break;
      }
      if (r < 0) return -1;
    }
  }
  store = evs__conf_find_section(l->conf, "store", NULL);
  if (strcmp(s->store_backend, "postgresql") == 0 && !s->store_dsn) {
    set_err(l->err, l->errlen, "%s:%u: %s: key 'dsn' is required when backend = postgresql",
            l->conf->path, line_of(store, "backend"),
            store ? sec_label(store, label, sizeof label) : "[store]");
    return -1;
  }
  /* The SQLite file lives in the state directory unless given as an absolute path. */
  v = value_of(store, host_table(evs__conf_store_keys), "path");
  s->store_path = join_path(s->state_dir, v);
  return s->store_path ? 0 : load_oom(l);
}

/* `serves`: the listener roles whose routes it serves (ABI 1.7 routes). Without the key, a
 * listener named "api" serves api (the enclave plugin's API listener, as it was found by name
 * before roles existed) and any other serves relay, so configurations written before stay
 * as they were. "admin" belongs to the admin socket alone: its endpoints have no
 * authentication besides the socket's file mode. */
static int load_roles(loader *l, const evs__conf_section *sec, evs__listener_conf *lc) {
  const char *v = value_of(sec, host_table(evs__conf_listener_keys), "serves");
  char eb[80];
  if (!v) v = strcmp(lc->name, "api") == 0 ? "api" : "relay";
  size_t n = 0;
  for (const char *p = v; *p;) {
    while (is_ws(*p)) p++;
    if (*p) n++;
    while (*p && !is_ws(*p)) p++;
  }
  if (n == 0) {
    set_err(l->err, l->errlen, "%s:%u: key 'serves': expected at least one role (api, relay, ...)",
            l->conf->path, line_of(sec, "serves"));
    return -1;
  }
  if (!(lc->roles = calloc(n, sizeof *lc->roles))) return load_oom(l);
  for (const char *p = v; *p;) {
    while (is_ws(*p)) p++;
    if (!*p) break;
    const char *start = p;
    while (*p && !is_ws(*p)) p++;
    char *role = strndup(start, (size_t)(p - start));
    if (!role) return load_oom(l);
    lc->roles[lc->nroles++] = role;
    size_t rl = strlen(role);
    if (rl > 32 || strspn(role, "abcdefghijklmnopqrstuvwxyz0123456789-") != rl) {
      set_err(l->err, l->errlen, "%s:%u: key 'serves': '%s' is not a role; expected [a-z0-9-]{1,32}",
              l->conf->path, line_of(sec, "serves"), echo(role, eb, sizeof eb));
      return -1;
    }
    if (strcmp(role, "admin") == 0) {
      set_err(l->err, l->errlen,
              "%s:%u: key 'serves': role 'admin' is served by the admin socket only ([admin] "
              "socket); remove it",
              l->conf->path, line_of(sec, "serves"));
      return -1;
    }
    for (size_t k = 0; k + 1 < lc->nroles; k++) {
      if (strcmp(lc->roles[k], role) == 0) {
        set_err(l->err, l->errlen, "%s:%u: key 'serves': role '%s' is named twice",
                l->conf->path, line_of(sec, "serves"), role);
        return -1;
      }
    }
  }
  return 0;
}

static int load_listener(loader *l, const evs__conf_section *sec, evs__listener_conf *lc) {
  const evs__conf_key *items = evs__conf_listener_keys;
  const char *path = l->conf->path;
  char host[INET6_ADDRSTRLEN], label[160], eb[80];
  const char *addr = value_of(sec, host_table(items), "address");
  int64_t tls;
  uint16_t port;
  int family;
  if (!(lc->name = strdup(sec->name)) || !(lc->address = strdup(addr))) return load_oom(l);
  if (evs__conf_parse_address(addr, host, sizeof host, &family, &port) < 0) {
    set_err(l->err, l->errlen,
            "%s:%u: key 'address': expected host:port with an IPv4 address, [IPv6 address] or * "
            "as host and a port in 1..65535, got '%s'",
            path, line_of(sec, "address"), echo(addr, eb, sizeof eb));
    return -1;
  }
  if (item_num(l, sec, items, "tls", &tls) < 0) return -1;
  lc->tls = (int)tls;
  int64_t tickets;
  if (item_num(l, sec, items, "session_tickets", &tickets) < 0) return -1;
  lc->session_tickets = (int)tickets;
  if (load_roles(l, sec, lc) < 0) return -1;
  if (item_str(l, sec, items, "certificate", &lc->cert_file) < 0 ||
      item_str(l, sec, items, "key", &lc->key_file) < 0)
    return -1;
  for (int k = 0; k < 2; k++) {
    const char *key = k ? "key" : "certificate";
    const char *have = k ? lc->key_file : lc->cert_file;
    if (lc->tls && !have) {
      set_err(l->err, l->errlen, "%s:%u: %s: key '%s' is required when tls = on", path,
              sec->line, sec_label(sec, label, sizeof label), key);
      return -1;
    }
    /* A certificate on a plain listener is almost always a forgotten `tls = on`: refuse it
     * rather than serve plaintext where TLS was meant. */
    if (!lc->tls && have) {
      set_err(l->err, l->errlen,
              "%s:%u: key '%s' is set but tls is off; set tls = on or remove the key", path,
              line_of(sec, key), key);
      return -1;
    }
  }
  return 0;
}

static int load_cert(loader *l, const evs__conf_section *sec, evs__cert_conf *cc) {
  const evs__conf_key *items = evs__conf_certificate_keys;
  const char *names = value_of(sec, host_table(items), "server_names");
  char eb[80];
  size_t n = 0;
  if (!(cc->name = strdup(sec->name))) return load_oom(l);
  if (item_str(l, sec, items, "certificate", &cc->cert_file) < 0 ||
      item_str(l, sec, items, "key", &cc->key_file) < 0)
    return -1;
  for (const char *p = names; *p;) {
    while (is_ws(*p)) p++;
    if (*p) n++;
    while (*p && !is_ws(*p)) p++;
  }
  cc->server_names = calloc(n ? n : 1, sizeof *cc->server_names);
  if (!cc->server_names) return load_oom(l);
  for (const char *p = names; *p;) {
    const char *start;
    char *name;
    while (is_ws(*p)) p++;
    if (!*p) break;
    start = p;
    while (*p && !is_ws(*p)) p++;
    name = strndup(start, (size_t)(p - start));
    if (!name) return load_oom(l);
    cc->server_names[cc->nserver_names++] = name;
    for (char *c = name; *c; c++) *c = ascii_lower(*c);
    if (!valid_server_name(name)) {
      set_err(l->err, l->errlen,
              "%s:%u: key 'server_names': '%s' is not a host name or a *.suffix wildcard",
              l->conf->path, line_of(sec, "server_names"), echo(name, eb, sizeof eb));
      return -1;
    }
  }
  if (n == 0) {
    set_err(l->err, l->errlen, "%s:%u: key 'server_names': expected at least one name",
            l->conf->path, line_of(sec, "server_names"));
    return -1;
  }
  return 0;
}

/* Finds values shared between sections (listener addresses, SNI names) by sorting. */
typedef struct owned_name {
  const char *text;
  const evs__conf_section *sec;
  const char *key;
} owned_name;

static int owned_cmp(const void *a, const void *b) {
  const owned_name *x = a, *y = b;
  int c = strcmp(x->text, y->text);
  if (c) return c;
  return x->sec->line < y->sec->line ? -1 : x->sec->line > y->sec->line;
}

static int check_unique(loader *l, owned_name *v, size_t n, const char *what) {
  char la[160], lb[160];
  qsort(v, n, sizeof *v, owned_cmp);
  for (size_t i = 1; i < n; i++) {
    if (strcmp(v[i - 1].text, v[i].text) != 0) continue;
    if (v[i].sec == v[i - 1].sec)
      set_err(l->err, l->errlen, "%s:%u: key '%s': %s '%s' is listed twice", l->conf->path,
              line_of(v[i].sec, v[i].key), v[i].key, what, v[i].text);
    else
      set_err(l->err, l->errlen, "%s:%u: key '%s': %s '%s' of %s is already used by %s (line %u)",
              l->conf->path, line_of(v[i].sec, v[i].key), v[i].key, what, v[i].text,
              sec_label(v[i].sec, la, sizeof la), sec_label(v[i - 1].sec, lb, sizeof lb),
              v[i - 1].sec->line);
    return -1;
  }
  return 0;
}

static int check_duplicates(loader *l, const evs__conf_section **lsecs,
                            const evs__conf_section **csecs) {
  evs__settings *s = l->s;
  size_t total = 0, n = 0;
  owned_name *v;
  char (*norm)[INET6_ADDRSTRLEN + 8];
  int r = -1;
  for (size_t i = 0; i < s->ncerts; i++) total += s->certs[i].nserver_names;
  v = calloc(total > s->nlisteners ? total : s->nlisteners, sizeof *v);
  norm = calloc(s->nlisteners ? s->nlisteners : 1, sizeof *norm);
  if (!v || !norm) {
    load_oom(l);
    goto out;
  }
  for (size_t i = 0; i < s->nlisteners; i++) {
    char host[INET6_ADDRSTRLEN];
    uint16_t port;
    int family;
    evs__conf_parse_address(s->listeners[i].address, host, sizeof host, &family, &port);
    snprintf(norm[i], sizeof norm[i], family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
    v[i] = (owned_name){norm[i], lsecs[i], "address"};
  }
  if (check_unique(l, v, s->nlisteners, "address") < 0) goto out;
  for (size_t i = 0; i < s->ncerts; i++)
    for (size_t k = 0; k < s->certs[i].nserver_names; k++)
      v[n++] = (owned_name){s->certs[i].server_names[k], csecs[i], "server_names"};
  if (check_unique(l, v, n, "server name") < 0) goto out;
  r = 0;
out:
  free(v);
  free(norm);
  return r;
}

static int valid_plugin_name(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!is_lower_alnum(*s) && *s != '-') return 0;
  return 1;
}

static int settings_from_conf(evs__conf *conf, evs__settings **ret_settings, char *err,
                              size_t errlen) {
  evs__settings *s = calloc(1, sizeof *s);
  loader l = {conf, s, err, errlen};
  const evs__conf_section **lsecs = NULL, **csecs = NULL;
  size_t nl = 0, nc = 0, np = 0;
  char label[160], known[160];
  int r = -1;
  if (!s) {
    set_err(err, errlen, "%s: out of memory", conf->path);
    evs__conf_free(conf);
    return -1;
  }
  s->conf = conf;
  for (size_t i = 0; i < conf->nsections; i++) {
    const evs__conf_section *sec = &conf->sections[i];
    const evs__conf_section_def *def = find_def(sec->type);
    if (!def) {
      size_t off = 0;
      known[0] = 0;
      for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++)
        list_append(known, sizeof known, &off, d->type);
      set_err(err, errlen, "%s:%u: unknown section [%s] (known sections: %s)", conf->path,
              sec->line, sec->type, known);
      goto out;
    }
    if (def->named && !sec->name) {
      set_err(err, errlen, "%s:%u: section [%s] needs a name: [%s \"name\"]", conf->path,
              sec->line, sec->type, sec->type);
      goto out;
    }
    if (!def->named && sec->name) {
      set_err(err, errlen, "%s:%u: section [%s] takes no name; write [%s]", conf->path,
              sec->line, sec->type, sec->type);
      goto out;
    }
    if (def->keys && validate(conf, sec, host_table(def->keys), err, errlen) < 0)
      goto out;
    if (strcmp(def->type, "listener") == 0) nl++;
    if (strcmp(def->type, "certificate") == 0) nc++;
    if (strcmp(def->type, "plugin") == 0) {
      if (!valid_plugin_name(sec->name)) {
        set_err(err, errlen,
                "%s:%u: %s: invalid plugin name; use lower-case letters, digits and '-'",
                conf->path, sec->line, sec_label(sec, label, sizeof label));
        goto out;
      }
      np++;
    }
  }
  if (nl == 0) {
    set_err(err, errlen, "%s: no [listener \"name\"] section; at least one listener is required",
            conf->path);
    goto out;
  }
  if (load_unnamed(&l) < 0) goto out;

  s->listeners = calloc(nl, sizeof *s->listeners);
  s->certs = calloc(nc ? nc : 1, sizeof *s->certs);
  s->plugins = calloc(np ? np : 1, sizeof *s->plugins);
  lsecs = calloc(nl, sizeof *lsecs);
  csecs = calloc(nc ? nc : 1, sizeof *csecs);
  if (!s->listeners || !s->certs || !s->plugins || !lsecs || !csecs) {
    load_oom(&l);
    goto out;
  }
  for (size_t i = 0; i < conf->nsections; i++) {
    const evs__conf_section *sec = &conf->sections[i];
    if (strcmp(sec->type, "listener") == 0) {
      lsecs[s->nlisteners] = sec;
      if (load_listener(&l, sec, &s->listeners[s->nlisteners++]) < 0) goto out;
    } else if (strcmp(sec->type, "certificate") == 0) {
      csecs[s->ncerts] = sec;
      if (load_cert(&l, sec, &s->certs[s->ncerts++]) < 0) goto out;
    } else if (strcmp(sec->type, "plugin") == 0) {
      evs__plugin_conf *pc = &s->plugins[s->nplugins++];
      pc->section = sec;
      if (!(pc->name = strdup(sec->name))) {
        load_oom(&l);
        goto out;
      }
    }
  }
  if (check_duplicates(&l, lsecs, csecs) < 0) goto out;
  r = 0;
out:
  free(lsecs);
  free(csecs);
  if (r < 0) {
    evs__settings_free(s);
    return -1;
  }
  *ret_settings = s;
  return 0;
}

int evs__settings_load_buffer(const char *path, const char *buf, size_t len,
                              evs__settings **ret_settings, char *err, size_t errlen) {
  evs__conf *conf;
  if (evs__conf_parse_buffer(path, buf, len, &conf, err, errlen) < 0) return -1;
  return settings_from_conf(conf, ret_settings, err, errlen);
}

int evs__settings_load(const char *path, evs__settings **ret_settings, char *err,
                       size_t errlen) {
  evs__conf *conf;
  if (evs__conf_parse_file(path, &conf, err, errlen) < 0) return -1;
  return settings_from_conf(conf, ret_settings, err, errlen);
}

void evs__settings_free(evs__settings *s) {
  if (!s) return;
  free(s->state_dir);
  free(s->plugins_dir);
  free(s->log_level);
  free(s->user);
  free(s->admin_socket);
  free(s->upstream_ca_file);
  free(s->store_backend);
  free(s->store_path);
  free_wiped(s->store_dsn);
  for (size_t i = 0; s->listeners && i < s->nlisteners; i++) {
    free(s->listeners[i].name);
    free(s->listeners[i].address);
    free(s->listeners[i].cert_file);
    free(s->listeners[i].key_file);
    for (size_t k = 0; k < s->listeners[i].nroles; k++) free(s->listeners[i].roles[k]);
    free(s->listeners[i].roles);
  }
  free(s->listeners);
  for (size_t i = 0; s->certs && i < s->ncerts; i++) {
    for (size_t k = 0; k < s->certs[i].nserver_names; k++) free(s->certs[i].server_names[k]);
    free(s->certs[i].server_names);
    free(s->certs[i].name);
    free(s->certs[i].cert_file);
    free(s->certs[i].key_file);
  }
  free(s->certs);
  for (size_t i = 0; s->plugins && i < s->nplugins; i++) free(s->plugins[i].name);
  free(s->plugins);
  evs__conf_free(s->conf);
  free(s);
}
