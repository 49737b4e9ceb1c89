/*
 * outbound_match.c: destination domains and CONNECT targets (outbound_match.h). Library code:
 * no plugin state, no logging.
 */
#include "outbound_match.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

static int name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
}

/* Lower-cases and checks a DNS name or IPv4 address of len bytes into out (cap bytes). A
 * trailing dot is dropped. suffix: the name may start with '.' (the part after '*'). Returns
 * 0, or -EINVAL with *why. */
static int check_name(const char *s, size_t len, int suffix, char *out, size_t cap,
                      const char **why) {
  if (len && s[len - 1] == '.' && !(suffix && len == 1)) len--;
  if (len == 0) return *why = "the host is empty", -EINVAL;
  if (len > EVS__OB_HOST_MAX || len >= cap) return *why = "the host is longer than 253 bytes", -EINVAL;
  int digits_dots = 1;
  size_t label = 0;
  for (size_t i = 0; i < len; i++) {
    char c = lower(s[i]);
    if (!name_char(c)) {
      if (c == '*') return *why = "'*' may only open the host (\"*.example.com\") or end the path", -EINVAL;
      return *why = "the host holds a character that is not a letter, digit, '-', '_' or '.'", -EINVAL;
    }
    if (c == '.') {
      if (label == 0 && !(suffix && i == 0)) return *why = "the host has an empty label (\"..\" or a leading '.')", -EINVAL;
      label = 0;
    } else if (++label > 63) {
      return *why = "a label of the host is longer than 63 bytes", -EINVAL;
    }
    if (!(c == '.' || (c >= '0' && c <= '9'))) digits_dots = 0;
    out[i] = c;
  }
  out[len] = 0;
  if (out[len - 1] == '.') return *why = "the host has an empty label (\"..\" at its end)", -EINVAL;
  if (digits_dots && !suffix) {
    /* All digits and dots: it must be an IPv4 address in its one dotted-decimal spelling, so
     * that "127.1" or "0177.0.0.1" cannot name the same host as another spelling. */
    struct in_addr a;
    char canon[INET_ADDRSTRLEN];
    if (inet_pton(AF_INET, out, &a) != 1 || !inet_ntop(AF_INET, &a, canon, sizeof canon) ||
        strcmp(canon, out) != 0)
      return *why = "the host looks numeric but is not an IPv4 address in dotted-decimal form", -EINVAL;
  }
  return 0;
}

/* "[v6]" of len bytes (brackets included; without them when bare) into its canonical form,
 * in brackets. */
static int check_v6(const char *s, size_t len, int bare, char *out, size_t cap, const char **why) {
  char buf[INET6_ADDRSTRLEN + 1], canon[INET6_ADDRSTRLEN];
  struct in6_addr a;
  if (bare) {
    if (len > INET6_ADDRSTRLEN) return *why = "not a valid IPv6 address", -EINVAL;
    memcpy(buf, s, len);
    buf[len] = 0;
  } else {
    if (len < 3 || s[len - 1] != ']' || len - 2 > INET6_ADDRSTRLEN)
      return *why = "an IPv6 address must be in brackets: [2001:db8::1]", -EINVAL;
    memcpy(buf, s + 1, len - 2);
    buf[len - 2] = 0;
  }
  if (inet_pton(AF_INET6, buf, &a) != 1) return *why = "not a valid IPv6 address", -EINVAL;
  inet_ntop(AF_INET6, &a, canon, sizeof canon);
  size_t cl = strlen(canon);
  if (cl + 3 > cap) return *why = "the host is too long", -EINVAL;
  out[0] = '[';
  memcpy(out + 1, canon, cl);
  out[cl + 1] = ']';
  out[cl + 2] = 0;
  return 0;
}

/* Digits of a port, 1-65535, no sign, at most 5 digits. */
static int parse_port(const char *s, size_t len) {
  if (len == 0 || len > 5) return -1;
  int v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v >= 1 && v <= 65535 ? v : -1;
}

/* Splits "host[:port]" (host may be "[v6]") at the port's colon; *ret_colon is NULL when
 * there is no port. Returns -1 for a colon outside brackets with no brackets (a bare v6). */
static int split_port(const char *s, size_t len, const char **ret_colon) {
  *ret_colon = NULL;
  if (len && s[0] == '[') {
    const char *close = memchr(s, ']', len);
    if (!close) return -1;
    size_t rest = len - (size_t)(close + 1 - s);
    if (rest == 0) return 0;
    if (close[1] != ':') return -1;
    *ret_colon = close + 1;
    return 0;
  }
  const char *c = memchr(s, ':', len);
  if (c && memchr(c + 1, ':', len - (size_t)(c + 1 - s))) return -1;
  *ret_colon = c;
  return 0;
}

int evs__ob_pattern_parse(const char *s, size_t len, evs__ob_pattern *ret, const char **ret_why) {
  const char *why = NULL;
  memset(ret, 0, sizeof *ret);
  if (len == 0) return *ret_why = "the destination domain is empty", -EINVAL;
  if (len > EVS__OB_DOMAIN_MAX) return *ret_why = "the destination domain is too long", -EINVAL;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
      return *ret_why = "the destination domain holds a space, a control or a non-ASCII byte "
                        "(write international names in their xn-- form)", -EINVAL;
  for (size_t i = 0; i + 2 < len; i++)
    if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/')
      return *ret_why = "give the host alone, without a scheme (\"api.example.com\", not "
                        "\"https://api.example.com\")", -EINVAL;
  const char *slash = memchr(s, '/', len);
  size_t hl = slash ? (size_t)(slash - s) : len;
  const char *h = s;
  if (hl && h[0] == '*') {
    ret->host_kind = EVS__OB_HOST_SUFFIX;
    h++;
    hl--;
    if (hl == 0) return *ret_why = "\"*\" alone would match every host; name a suffix (\"*.example.com\")", -EINVAL;
  }
  /* A bare IPv6 address (two colons or more, no brackets: "::1", as Node's options.hostname
   * and axios spell it) is the address alone; a port needs the brackets ("[::1]:8443"). */
  const char *c1 = hl && h[0] != '[' ? memchr(h, ':', hl) : NULL;
  if (c1 && memchr(c1 + 1, ':', hl - (size_t)(c1 + 1 - h))) {
    if (ret->host_kind == EVS__OB_HOST_SUFFIX)
      return *ret_why = "an IPv6 address cannot be a suffix", -EINVAL;
    if (check_v6(h, hl, 1, ret->host, sizeof ret->host, &why) < 0)
      return *ret_why = "malformed host (an IPv6 address with a port goes in brackets: "
                        "[2001:db8::1]:443)", -EINVAL;
    goto path;
  }
  const char *colon;
  if (split_port(h, hl, &colon) < 0)
    return *ret_why = "malformed host or port (an IPv6 address goes in brackets: [2001:db8::1]:443)", -EINVAL;
  size_t name_len = colon ? (size_t)(colon - h) : hl;
  if (colon) {
    ret->port = parse_port(colon + 1, hl - name_len - 1);
    if (ret->port < 0) return *ret_why = "the port must be a number from 1 to 65535", -EINVAL;
  }
  int rc;
  if (name_len && h[0] == '[') {
    if (ret->host_kind == EVS__OB_HOST_SUFFIX)
      return *ret_why = "an IPv6 address cannot be a suffix", -EINVAL;
    rc = check_v6(h, name_len, 0, ret->host, sizeof ret->host, &why);
  } else {
    rc = check_name(h, name_len, ret->host_kind == EVS__OB_HOST_SUFFIX, ret->host,
                    sizeof ret->host, &why);
  }
  if (rc < 0) return *ret_why = why, rc;
path:
  ret->path_kind = EVS__OB_PATH_ANY;
  if (slash) {
    const char *p = slash;
    size_t pl = (size_t)(s + len - slash);
    ret->path_kind = EVS__OB_PATH_EXACT;
    if (p[pl - 1] == '*') {
      ret->path_kind = EVS__OB_PATH_PREFIX;
      pl--;
    }
    if (pl > EVS__OB_PATH_MAX) return *ret_why = "the path is longer than 1024 bytes", -EINVAL;
    for (size_t i = 0; i < pl; i++) {
      if (p[i] == '*') return *ret_why = "'*' may only end the path (\"api.example.com/v1/*\")", -EINVAL;
      if (p[i] == '?' || p[i] == '#')
        return *ret_why = "the path may not hold a query or a fragment ('?', '#')", -EINVAL;
    }
    memcpy(ret->path, p, pl);
    ret->path[pl] = 0;
  }
  return 0;
}

int evs__ob_authority_parse(const char *s, size_t len, char *host, size_t cap, int *ret_port) {
  const char *why, *colon;
  if (len == 0 || len > EVS__OB_HOST_MAX + 8) return -EINVAL;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '/' ||
        s[i] == '*' || s[i] == '@')
      return -EINVAL;
  if (split_port(s, len, &colon) < 0 || !colon) return -EINVAL;
  int port = parse_port(colon + 1, len - (size_t)(colon + 1 - s));
  if (port < 0) return -EINVAL;
  size_t hl = (size_t)(colon - s);
  if (hl > cap - 1 || cap == 0) return -ENAMETOOLONG;
  int rc = hl && s[0] == '[' ? check_v6(s, hl, 0, host, cap, &why) : check_name(s, hl, 0, host, cap, &why);
  if (rc < 0) return rc;
  *ret_port = port;
  return 0;
}

struct evs__ob_matcher {
  size_t n;
  evs__ob_pattern *p; /* copies, in match order */
  int *index;         /* the position each had in the caller's array */
};

typedef struct ranked {
  const evs__ob_pattern *p;
  int i;
} ranked;

static int more_specific(const void *a, const void *b) {
  const ranked *ra = a, *rb = b;
  const evs__ob_pattern *x = ra->p, *y = rb->p;
  if (x->host_kind != y->host_kind) return x->host_kind - y->host_kind;
  size_t xl = strlen(x->host), yl = strlen(y->host);
  if (x->host_kind == EVS__OB_HOST_SUFFIX && xl != yl) return xl > yl ? -1 : 1;
  if ((x->port == 0) != (y->port == 0)) return x->port ? -1 : 1;
  if (x->path_kind != y->path_kind) return x->path_kind - y->path_kind;
  xl = strlen(x->path);
  yl = strlen(y->path);
  if (xl != yl) return xl > yl ? -1 : 1;
  return ra->i - rb->i; /* the order given */
}

evs__ob_matcher *evs__ob_matcher_new(const evs__ob_pattern *patterns, size_t n) {
  evs__ob_matcher *m = calloc(1, sizeof *m);
  ranked *r = calloc(n ? n : 1, sizeof *r);
  if (!m || !r) goto fail;
  m->p = calloc(n ? n : 1, sizeof *m->p);
  m->index = calloc(n ? n : 1, sizeof *m->index);
  if (!m->p || !m->index) goto fail;
  for (size_t i = 0; i < n; i++) r[i] = (ranked){&patterns[i], (int)i};
  qsort(r, n, sizeof *r, more_specific);
  for (size_t i = 0; i < n; i++) {
    m->p[i] = *r[i].p;
    m->index[i] = r[i].i;
  }
  m->n = n;
  free(r);
  return m;
fail:
  free(r);
  evs__ob_matcher_free(m);
  return NULL;
}

void evs__ob_matcher_free(evs__ob_matcher *m) {
  if (!m) return;
  free(m->p);
  free(m->index);
  free(m);
}

static int host_matches(const evs__ob_pattern *p, const char *host, size_t hl) {
  if (p->host_kind == EVS__OB_HOST_EXACT) return strcmp(p->host, host) == 0;
  size_t sl = strlen(p->host);
  return hl >= sl && memcmp(host + hl - sl, p->host, sl) == 0;
}

int evs__ob_match(const evs__ob_matcher *m, const char *host, int port, const char *path,
                  size_t path_len) {
  if (!m || !host) return -1;
  size_t hl = strlen(host);
  for (size_t i = 0; i < m->n; i++) {
    const evs__ob_pattern *p = &m->p[i];
    if (p->port && p->port != port) continue;
    if (!host_matches(p, host, hl)) continue;
    if (path && p->path_kind != EVS__OB_PATH_ANY) {
      size_t pl = strlen(p->path);
      if (p->path_kind == EVS__OB_PATH_EXACT ? path_len != pl || memcmp(path, p->path, pl) != 0
                                             : path_len < pl || memcmp(path, p->path, pl) != 0)
        continue;
    }
    return m->index[i];
  }
  return -1;
}
