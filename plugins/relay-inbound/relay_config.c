/*
 * The relay-config.json loader (contract: relay_config.h).
 *
 * jansson parses the file (rejecting duplicate keys); this file walks the tree once, checking
 * every member against the documented format and copying what it keeps into plain C structs, so
 * that no jansson type outlives the load and the relay plugin sees only validated data. Unknown
 * members are errors rather than ignored: silently dropping an option such as an encryption
 * route is worse than refusing to start.
 *
 * Depends on libc and jansson only (the relay plugin compiles this file into itself), which is
 * why it has its own host name check instead of sharing conf.c's. No logging.
 */
#include "relay_config.h"
#include "relay_path.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h> /* strncasecmp */
#include <sys/socket.h>
#include <unistd.h>

#define JPATH_MAX 320

typedef struct ctx {
  const char *name; /* file name for messages */
  char *dir;        /* directory of name, "" if none; relative paths join it */
  char *err;
  size_t errlen;
} ctx;

static int fail(const ctx *c, const char *jpath, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(const ctx *c, const char *jpath, const char *fmt, ...) {
  va_list ap;
  int n;
  if (!c->err || c->errlen == 0) return -EINVAL;
  n = snprintf(c->err, c->errlen, "%s: %s: ", c->name, jpath);
  if (n >= 0 && (size_t)n < c->errlen) {
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -EINVAL;
}

static int oom(const ctx *c) {
  if (c->err && c->errlen) snprintf(c->err, c->errlen, "%s: out of memory", c->name);
  return -ENOMEM;
}

/* s as a JSON string literal for messages, control characters escaped, cut after 80 bytes. */
static void quote(const char *s, char *buf, size_t len) {
  size_t o = 0;
  if (len < 8) {
    if (len) buf[0] = 0;
    return;
  }
  buf[o++] = '"';
  for (size_t i = 0; s[i] && o + 8 < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (i >= 80) {
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
    if (ch == '"' || ch == '\\') {
      buf[o++] = '\\';
      buf[o++] = (char)ch;
    } else if (ch < 0x20 || ch == 0x7f) {
      o += (size_t)snprintf(buf + o, len - o, "\\u%04x", ch);
    } else {
      buf[o++] = (char)ch;
    }
  }
  buf[o++] = '"';
  buf[o] = 0;
}

/* Writes a JSON path into out (JPATH_MAX bytes); long paths are cut, which only shortens the
 * message. */
static void jpath_fmt(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jpath_fmt(char *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, JPATH_MAX, fmt, ap);
  va_end(ap);
}

static void jpath_member(char *out, const char *parent, const char *member) {
  jpath_fmt(out, "%s.%s", parent, member);
}

static void jpath_index(char *out, const char *parent, size_t i) {
  jpath_fmt(out, "%s[%zu]", parent, i);
}

static char ascii_lower(char ch) { return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch; }

static void lower_in_place(char *s) {
  for (; *s; s++) *s = ascii_lower(*s);
}

/* RFC 1123 host name (see conf.c for the twin: this file may not depend on it). */
static int valid_hostname(const char *s) {
  size_t n = strlen(s), label = 0;
  if (n == 0 || n > 253) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = ascii_lower(s[i]);
    if (ch == '.') {
      if (label == 0 || s[i - 1] == '-') return 0;
      label = 0;
    } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-') {
      if (label == 0 && ch == '-') return 0;
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return label > 0 && s[n - 1] != '-';
}

static int has_control(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
  return 0;
}

static char *join_dir(const ctx *c, const char *v) {
  size_t dl = strlen(c->dir), vl = strlen(v);
  char *out;
  if (v[0] == '/' || dl == 0) return strdup(v);
  out = malloc(dl + 1 + vl + 1);
  if (!out) return NULL;
  memcpy(out, c->dir, dl);
  if (c->dir[dl - 1] != '/') out[dl++] = '/';
  memcpy(out + dl, v, vl + 1);
  return out;
}

/* Members that can be written as .name in a JSON path (short ones only, to keep paths short). */
static int is_identifier(const char *s) {
  size_t n = 0;
  if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return 0;
  for (; *s; s++, n++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_') || n >= 64)
      return 0;
  return 1;
}

/* Checks that obj has only the listed members; the first unknown one is an error. */
static int check_members(const ctx *c, const char *jpath, json_t *obj,
                         const char *const *known) {
  const char *key;
  json_t *val;
  json_object_foreach(obj, key, val) {
    char p[JPATH_MAX], q[100], list[256];
    size_t off = 0;
    int found = 0;
    for (const char *const *k = known; *k; k++) found |= strcmp(*k, key) == 0;
    if (found) continue;
    list[0] = 0;
    for (const char *const *k = known; *k && off < sizeof list; k++) {
      int n = snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "", *k);
      off = n < 0 ? sizeof list : off + (size_t)n;
    }
    if (is_identifier(key)) {
      jpath_member(p, jpath, key);
    } else {
      quote(key, q, sizeof q);
      jpath_fmt(p, "%s[%s]", jpath, q);
    }
    return fail(c, p, "unknown member; expected one of %s", list);
  }
  return 0;
}

/* A non-empty string without control characters, copied. */
static int get_string(const ctx *c, const char *jpath, json_t *v, char **ret) {
  const char *s;
  if (!json_is_string(v)) return fail(c, jpath, "expected a string");
  s = json_string_value(v);
  if (!s[0]) return fail(c, jpath, "must not be empty");
  if (has_control(s)) return fail(c, jpath, "must not contain control characters");
  *ret = strdup(s);
  return *ret ? 0 : oom(c);
}

static int get_bool(const ctx *c, const char *jpath, json_t *v, int *ret) {
  if (!json_is_boolean(v)) return fail(c, jpath, "expected true or false");
  *ret = json_is_true(v);
  return 0;
}

static int get_path(const ctx *c, const char *jpath, json_t *v, char **ret) {
  char *s;
  int r = get_string(c, jpath, v, &s);
  if (r < 0) return r;
  *ret = join_dir(c, s);
  free(s);
  return *ret ? 0 : oom(c);
}

/* destinationDomain: [http:// | https://] host [:port] [/]. */
static int parse_destination(const ctx *c, const char *jpath, json_t *v, evs__relay *r) {
  const char *s, *colon, *hs;
  char *hostpart = NULL, q[100];
  size_t hl, n;
  const char *scheme = "https";
  unsigned char bin[16];
  int ipv6 = 0;
  if (!json_is_string(v)) return fail(c, jpath, "expected a string");
  s = json_string_value(v);
  quote(s, q, sizeof q);
  if (strncasecmp(s, "https://", 8) == 0) {
    s += 8;
  } else if (strncasecmp(s, "http://", 7) == 0) {
    s += 7;
    scheme = "http";
  } else if (strstr(s, "://")) {
    return fail(c, jpath, "unsupported scheme in %s; write http://, https:// or no scheme", q);
  }
  n = strlen(s);
  if (n > 0 && s[n - 1] == '/') n--; /* tolerate "http://host:9000/" */
  if (n == 0) return fail(c, jpath, "expected a host name, got %s", q);
  if (memchr(s, '/', n) || memchr(s, '?', n) || memchr(s, '#', n) || memchr(s, '@', n))
    return fail(c, jpath, "expected [http://|https://]host[:port] without a path, got %s", q);
  if (s[0] == '[') {
    const char *close = memchr(s, ']', n);
    if (!close) return fail(c, jpath, "unterminated IPv6 literal in %s", q);
    hs = s + 1;
    hl = (size_t)(close - hs);
    colon = close + 1 < s + n ? close + 1 : NULL;
    if (colon && *colon != ':') return fail(c, jpath, "expected ':' after ']' in %s", q);
    ipv6 = 1;
  } else {
    colon = memchr(s, ':', n);
    hs = s;
    hl = colon ? (size_t)(colon - s) : n;
    if (colon && memchr(colon + 1, ':', (size_t)(s + n - colon - 1)))
      return fail(c, jpath, "write an IPv6 destination in brackets: [::1]:9000, got %s", q);
  }
  if (colon) {
    const char *p = colon + 1, *end = s + n;
    unsigned long port = 0;
    if (p == end || end - p > 5) return fail(c, jpath, "expected a port in 1..65535 in %s", q);
    for (; p < end; p++) {
      if (*p < '0' || *p > '9') return fail(c, jpath, "expected a port in 1..65535 in %s", q);
      port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port < 1 || port > 65535) return fail(c, jpath, "expected a port in 1..65535 in %s", q);
    r->destination_port = (uint16_t)port;
  }
  hostpart = strndup(hs, hl);
  if (!hostpart) return oom(c);
  lower_in_place(hostpart);
  if (ipv6 ? inet_pton(AF_INET6, hostpart, bin) != 1 : !valid_hostname(hostpart)) {
    free(hostpart);
    return fail(c, jpath, "expected an RFC 1123 host name or IP address, got %s", q);
  }
  r->destination_host = hostpart;
  r->destination_scheme = strdup(scheme);
  return r->destination_scheme ? 0 : oom(c);
}

static int parse_dns_targets(const ctx *c, const char *jpath, json_t *v, evs__relay *r) {
  static const char *const known[] = {"type", "address", "port", NULL};
  size_t i;
  json_t *t;
  if (!json_is_array(v) || json_array_size(v) == 0)
    return fail(c, jpath, "expected a non-empty array of {\"type\", \"address\"} objects");
  r->dns_targets = calloc(json_array_size(v), sizeof *r->dns_targets);
  if (!r->dns_targets) return oom(c);
  json_array_foreach(v, i, t) {
    evs__relay_dns_target *d = &r->dns_targets[r->ndns_targets++];
    char p[JPATH_MAX], pm[JPATH_MAX];
    json_t *type, *addr, *port;
    const char *ts;
    unsigned char bin[4];
    int rc;
    jpath_index(p, jpath, i);
    if (!json_is_object(t)) return fail(c, p, "expected an object");
    if ((rc = check_members(c, p, t, known)) < 0) return rc;
    type = json_object_get(t, "type");
    addr = json_object_get(t, "address");
    jpath_member(pm, p, "type");
    if (!type) return fail(c, p, "missing member \"type\"");
    ts = json_is_string(type) ? json_string_value(type) : "";
    if (strcmp(ts, "A") == 0) d->type = EVS_RELAY_DNS_A;
    else if (strcmp(ts, "CNAME") == 0) d->type = EVS_RELAY_DNS_CNAME;
    else return fail(c, pm, "expected \"A\" or \"CNAME\"");
    jpath_member(pm, p, "address");
    if (!addr) return fail(c, p, "missing member \"address\"");
    if ((rc = get_string(c, pm, addr, &d->address)) < 0) return rc;
    lower_in_place(d->address);
    if (d->type == EVS_RELAY_DNS_A && inet_pton(AF_INET, d->address, bin) != 1)
      return fail(c, pm, "an A target needs an IPv4 address");
    if (d->type == EVS_RELAY_DNS_CNAME && !valid_hostname(d->address))
      return fail(c, pm, "a CNAME target needs an RFC 1123 host name");
    /* evserver extension: the port the target serves https on (tests, non-standard setups). */
    d->port = 443;
    if ((port = json_object_get(t, "port"))) {
      json_int_t n = json_is_integer(port) ? json_integer_value(port) : 0;
      jpath_member(pm, p, "port");
      if (n < 1 || n > 65535) return fail(c, pm, "expected a port in 1..65535");
      d->port = (uint16_t)n;
    }
  }
  return 0;
}

static int parse_route(const ctx *c, const char *jpath, json_t *v, evs__relay_route *rt) {
  static const char *const known[] = {"route", "method", "fields", NULL};
  static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "*", NULL};
  char p[JPATH_MAX], q[100];
  json_t *route, *method, *fields, *f;
  size_t i;
  int rc;
  if (!json_is_object(v)) return fail(c, jpath, "expected an object");
  if ((rc = check_members(c, jpath, v, known)) < 0) return rc;
  route = json_object_get(v, "route");
  method = json_object_get(v, "method");
  fields = json_object_get(v, "fields");

  if (!route) return fail(c, jpath, "missing member \"route\"");
  jpath_member(p, jpath, "route");
  if ((rc = get_string(c, p, route, &rt->route)) < 0) return rc;
  if (rt->route[0] != '/') return fail(c, p, "must start with '/'");
  for (const char *s = rt->route; *s; s++)
    if (*s == ' ' || *s == '?' || *s == '#')
      return fail(c, p, "must be a path without spaces, query or fragment");
  /* Requests are matched in normal form (relay_path.h), so the pattern is kept in it too. A
   * ';', "//", "." or ".." would never be seen in a request's normal form: refused, not guessed. */
  {
    size_t rl = strlen(rt->route);
    char *keep = malloc(3 * rl + 2);
    if (!keep || !(rt->pattern = malloc(3 * rl + 2))) {
      free(keep);
      return oom(c);
    }
    int n = evs__path_normalize(rt->route, rl, rt->pattern, 3 * rl + 2, 0);
    int n2 = n < 0 ? n
                   : evs__path_normalize(rt->route, rl, keep, 3 * rl + 2,
                                         EVS__PATH_KEEP_DOTS | EVS__PATH_KEEP_PARAMS |
                                             EVS__PATH_KEEP_EMPTY);
    int same = n2 >= 0 && strcmp(keep, rt->pattern) == 0;
    free(keep);
    if (n < 0) return fail(c, p, "%s", evs__path_strerror(n));
    if (!same) return fail(c, p, "must not contain ';', \"//\", \".\" or \"..\" segments");
  }

  jpath_member(p, jpath, "method");
  if (method) {
    const char *m = json_is_string(method) ? json_string_value(method) : NULL;
    int ok = 0;
    for (const char *const *k = methods; m && *k; k++) ok |= strcmp(*k, m) == 0;
    if (!ok) {
      if (m) {
        quote(m, q, sizeof q);
        return fail(c, p, "expected one of GET, POST, PUT, PATCH, DELETE, *, got %s", q);
      }
      return fail(c, p, "expected one of GET, POST, PUT, PATCH, DELETE, *");
    }
    rt->method = strdup(m);
  } else {
    rt->method = strdup("*");
  }
  if (!rt->method) return oom(c);

  jpath_member(p, jpath, "fields");
  if (!fields) return fail(c, jpath, "missing member \"fields\"");
  if (!json_is_array(fields) || json_array_size(fields) == 0)
    return fail(c, p, "expected a non-empty array of strings");
  rt->fields = calloc(json_array_size(fields), sizeof *rt->fields);
  if (!rt->fields) return oom(c);
  json_array_foreach(fields, i, f) {
    char pf[JPATH_MAX];
    jpath_index(pf, p, i);
    if ((rc = get_string(c, pf, f, &rt->fields[rt->nfields])) < 0) return rc;
    rt->nfields++;
  }
  return 0;
}

static int parse_relay(const ctx *c, const char *domain, json_t *v, evs__relay *r) {
  static const char *const known[] = {"destinationDomain", "dnsTargets", "fieldsToEncrypt",
                                      "mtls", "responseDecryption", "xForwardedFor",
                                      "verifyDestination", "caFile", "appId", "curve",
                                      "caseSensitiveRoutes", NULL};
  static const char *const mtls_known[] = {"certificate", "key", "passphraseFile", NULL};
  char jp[JPATH_MAX], p[JPATH_MAX], q[100];
  json_t *dest, *dns, *fte, *m, *x;
  int rc;
  quote(domain, q, sizeof q);
  jpath_fmt(jp, "$[%s]", q);
  r->response_decryption = 1;
  r->x_forwarded_for = 1;
  r->verify_destination = 1;
  if (!valid_hostname(domain))
    return fail(c, jp, "the Relay domain must be an RFC 1123 host name");
  if (!(r->domain = strdup(domain))) return oom(c);
  lower_in_place(r->domain);
  if (!json_is_object(v)) return fail(c, jp, "expected an object");
  if ((rc = check_members(c, jp, v, known)) < 0) return rc;

  dest = json_object_get(v, "destinationDomain");
  dns = json_object_get(v, "dnsTargets");
  if (dest && dns)
    return fail(c, jp, "destinationDomain and dnsTargets are mutually exclusive; keep one");
  if (!dest && !dns) return fail(c, jp, "missing member \"destinationDomain\" (or \"dnsTargets\")");
  if (dest) {
    jpath_member(p, jp, "destinationDomain");
    if ((rc = parse_destination(c, p, dest, r)) < 0) return rc;
  } else {
    jpath_member(p, jp, "dnsTargets");
    if ((rc = parse_dns_targets(c, p, dns, r)) < 0) return rc;
    if (!(r->destination_scheme = strdup("https"))) return oom(c);
  }

  if ((fte = json_object_get(v, "fieldsToEncrypt"))) {
    size_t i;
    json_t *e;
    jpath_member(p, jp, "fieldsToEncrypt");
    if (!json_is_array(fte)) return fail(c, p, "expected an array");
    r->routes = calloc(json_array_size(fte) ? json_array_size(fte) : 1, sizeof *r->routes);
    if (!r->routes) return oom(c);
    json_array_foreach(fte, i, e) {
      char pe[JPATH_MAX];
      jpath_index(pe, p, i);
      r->nroutes++;
      if ((rc = parse_route(c, pe, e, &r->routes[i])) < 0) return rc;
    }
  }

  if ((m = json_object_get(v, "mtls"))) {
    json_t *cert, *key;
    char pm[JPATH_MAX];
    jpath_member(p, jp, "mtls");
    if (!json_is_object(m)) return fail(c, p, "expected an object with certificate and key");
    if ((rc = check_members(c, p, m, mtls_known)) < 0) return rc;
    cert = json_object_get(m, "certificate");
    key = json_object_get(m, "key");
    if (!cert) return fail(c, p, "missing member \"certificate\"");
    if (!key) return fail(c, p, "missing member \"key\"");
    jpath_member(pm, p, "certificate");
    if ((rc = get_path(c, pm, cert, &r->mtls_certificate)) < 0) return rc;
    jpath_member(pm, p, "key");
    if ((rc = get_path(c, pm, key, &r->mtls_key)) < 0) return rc;
    /* The key's passphrase stays in a file of its own: this file is printed back by
     * `evctl relay` (GET /relays) and kept in version control. */
    if ((x = json_object_get(m, "passphraseFile"))) {
      jpath_member(pm, p, "passphraseFile");
      if ((rc = get_path(c, pm, x, &r->mtls_passphrase_file)) < 0) return rc;
    }
  }

  if ((x = json_object_get(v, "responseDecryption"))) {
    jpath_member(p, jp, "responseDecryption");
    if ((rc = get_bool(c, p, x, &r->response_decryption)) < 0) return rc;
  }
  if ((x = json_object_get(v, "caseSensitiveRoutes"))) {
    jpath_member(p, jp, "caseSensitiveRoutes");
    if ((rc = get_bool(c, p, x, &r->case_sensitive_routes)) < 0) return rc;
  }
  if ((x = json_object_get(v, "verifyDestination"))) {
    jpath_member(p, jp, "verifyDestination");
    if ((rc = get_bool(c, p, x, &r->verify_destination)) < 0) return rc;
  }
  if ((x = json_object_get(v, "xForwardedFor"))) {
    const char *s = json_is_string(x) ? json_string_value(x) : "";
    jpath_member(p, jp, "xForwardedFor");
    if (strcmp(s, "append") == 0) r->x_forwarded_for = 1;
    else if (strcmp(s, "preserve") == 0) r->x_forwarded_for = 0;
    else return fail(c, p, "expected \"append\" or \"preserve\"");
  }
  if ((x = json_object_get(v, "caFile"))) {
    jpath_member(p, jp, "caFile");
    if ((rc = get_path(c, p, x, &r->ca_file)) < 0) return rc;
  }
  if ((x = json_object_get(v, "appId"))) {
    jpath_member(p, jp, "appId");
    if ((rc = get_string(c, p, x, &r->app_id)) < 0) return rc;
    for (const char *a = r->app_id; *a; a++)
      if (!isalnum((unsigned char)*a) && *a != '_' && *a != '-')
        return fail(c, p, "an app id is letters, digits, '_' and '-'");
  }
  if ((x = json_object_get(v, "curve"))) {
    const char *s = json_is_string(x) ? json_string_value(x) : "";
    jpath_member(p, jp, "curve");
    if (strcmp(s, "secp256k1") != 0 && strcmp(s, "prime256v1") != 0)
      return fail(c, p, "expected \"secp256k1\" or \"prime256v1\"");
    if (!(r->curve = strdup(s))) return oom(c);
  }
  return 0;
}

static int relay_cmp(const void *a, const void *b) {
  const evs__relay *x = a, *y = b;
  return strcmp(x->domain, y->domain);
}

static void relay_clear(evs__relay *r) {
  free(r->domain);
  free(r->destination_scheme);
  free(r->destination_host);
  for (size_t i = 0; r->dns_targets && i < r->ndns_targets; i++) free(r->dns_targets[i].address);
  free(r->dns_targets);
  for (size_t i = 0; r->routes && i < r->nroutes; i++) {
    evs__relay_route *rt = &r->routes[i];
    free(rt->route);
    free(rt->pattern);
    free(rt->method);
    for (size_t k = 0; rt->fields && k < rt->nfields; k++) free(rt->fields[k]);
    free(rt->fields);
  }
  free(r->routes);
  free(r->mtls_certificate);
  free(r->mtls_key);
  free(r->mtls_passphrase_file);
  free(r->app_id);
  free(r->curve);
  free(r->ca_file);
}

void evs__relay_config_free(evs__relay_config *c) {
  if (!c) return;
  for (size_t i = 0; c->relays && i < c->n; i++) relay_clear(&c->relays[i]);
  free(c->relays);
  free(c);
}

int evs__relay_config_load_buffer(const char *name, const char *buf, size_t len,
                                  evs__relay_config **ret, char *err, size_t errlen) {
  ctx c = {name ? name : "relay-config.json", NULL, err, errlen};
  const char *slash = strrchr(c.name, '/');
  evs__relay_config *cfg = NULL;
  json_error_t je;
  json_t *root = NULL, *v;
  const char *key;
  size_t i = 0;
  int rc = -EINVAL;
  if (len > EVS_RELAY_CONFIG_MAX_BYTES) {
    if (err && errlen)
      snprintf(err, errlen, "%s: file is larger than %u bytes (1 MiB)", c.name,
               EVS_RELAY_CONFIG_MAX_BYTES);
    return -EFBIG;
  }
  if (!buf && len) return fail(&c, "$", "no buffer");
  c.dir = slash ? strndup(c.name, (size_t)(slash - c.name) + (slash == c.name)) : strdup("");
  if (!c.dir) return oom(&c);
  root = json_loadb(buf ? buf : "", len, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    if (err && errlen)
      snprintf(err, errlen, "%s:%d:%d: %s", c.name, je.line, je.column, je.text);
    goto out;
  }
  if (!json_is_object(root)) {
    rc = fail(&c, "$", "expected an object mapping Relay domains to their settings");
    goto out;
  }
  cfg = calloc(1, sizeof *cfg);
  if (cfg) cfg->relays = calloc(json_object_size(root) ? json_object_size(root) : 1,
                                sizeof *cfg->relays);
  if (!cfg || !cfg->relays) {
    rc = oom(&c);
    goto out;
  }
  json_object_foreach(root, key, v) {
    cfg->n++;
    if ((rc = parse_relay(&c, key, v, &cfg->relays[i++])) < 0) goto out;
  }
  qsort(cfg->relays, cfg->n, sizeof *cfg->relays, relay_cmp);
  for (i = 1; i < cfg->n; i++) {
    if (strcmp(cfg->relays[i - 1].domain, cfg->relays[i].domain) == 0) {
      char q[100];
      quote(cfg->relays[i].domain, q, sizeof q);
      rc = fail(&c, "$", "the Relay domain %s is listed twice (domains are case-insensitive)",
                q);
      goto out;
    }
  }
  rc = 0;
out:
  json_decref(root);
  free(c.dir);
  if (rc < 0) {
    evs__relay_config_free(cfg);
    return rc;
  }
  *ret = cfg;
  return 0;
}

int evs__relay_config_load_file(const char *path, evs__relay_config **ret, char *err,
                                size_t errlen) {
  size_t cap = 64 * 1024, len = 0;
  char *buf;
  int fd, rc;
  if (!path) {
    if (err && errlen) snprintf(err, errlen, "no relay configuration file given");
    return -EINVAL;
  }
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    rc = -errno;
    if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(-rc));
    return rc;
  }
  buf = malloc(cap);
  /* Read at most one byte past the limit, so that an oversized file is not read in full. */
  while (buf) {
    ssize_t n;
    if (len == cap) {
      char *nb;
      if (len > EVS_RELAY_CONFIG_MAX_BYTES) break;
      nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = -errno;
      if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(-rc));
      free(buf);
      close(fd);
      return rc;
    }
    if (n == 0) break;
    len += (size_t)n;
    if (len > EVS_RELAY_CONFIG_MAX_BYTES) break;
  }
  close(fd);
  if (!buf) {
    if (err && errlen) snprintf(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
  }
  rc = evs__relay_config_load_buffer(path, buf, len, ret, err, errlen);
  free(buf);
  return rc;
}

/* ASCII case-insensitive, locale-independent; consistent with sorting the lower-case domains
 * with strcmp, which bsearch needs. */
static int find_cmp(const void *key, const void *elem) {
  const unsigned char *a = key, *b = (const unsigned char *)((const evs__relay *)elem)->domain;
  for (;; a++, b++) {
    int d = (unsigned char)ascii_lower((char)*a) - *b;
    if (d || !*a) return d;
  }
}

const evs__relay *evs__relay_config_find(const evs__relay_config *c, const char *host) {
  if (!c || !host || c->n == 0) return NULL;
  return bsearch(host, c->relays, c->n, sizeof *c->relays, find_cmp);
}
