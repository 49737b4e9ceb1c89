/*
 * browser_policy.c: see browser_policy.h. No allocation beyond the policy itself; every output is bounded.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

#include "browser_policy.h"

void evs__bp_policy_free(evs_bp_policy *p) {
  if (!p) return;
  for (size_t i = 0; i < p->napps; i++) {
    for (size_t j = 0; j < p->apps[i].norigins; j++) free(p->apps[i].origins[j]);
    free(p->apps[i].origins);
  }
  free(p->apps);
  p->apps = NULL;
  p->napps = 0;
}

static int app_id_ok(const char *s, size_t n) {
  if (n != 16 || strncmp(s, "app_", 4) != 0) return 0;
  for (size_t i = 4; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

int evs__bp_origin_canon(const char *s, size_t len, char *out, size_t cap) {
  size_t skip;
  int https;
  if (len >= 8 && strncasecmp(s, "https://", 8) == 0) {
    skip = 8;
    https = 1;
  } else if (len >= 7 && strncasecmp(s, "http://", 7) == 0) {
    skip = 7;
    https = 0;
  } else {
    return -1;
  }
  const char *h = s + skip;
  size_t hl = len - skip;
  if (hl == 0 || hl >= EVS_BP_MAX_ORIGIN) return -1;
  /* host[:port], or [v6]:port */
  size_t host_end;
  if (h[0] == '[') {
    const char *rb = memchr(h, ']', hl);
    if (!rb) return -1;
    host_end = (size_t)(rb - h) + 1;
    for (size_t i = 1; i + 1 < host_end; i++)
      if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.') return -1;
    if (host_end == 2) return -1;
  } else {
    host_end = 0;
    while (host_end < hl && h[host_end] != ':') {
      unsigned char c = (unsigned char)h[host_end];
      if (!isalnum(c) && c != '-' && c != '.') return -1;
      host_end++;
    }
    if (host_end == 0 || h[0] == '.' || h[0] == '-') return -1;
  }
  long port = -1;
  if (host_end < hl) {
    if (h[host_end] != ':' || host_end + 1 == hl || hl - host_end - 1 > 5) return -1;
    port = 0;
    for (size_t i = host_end + 1; i < hl; i++) {
      if (!isdigit((unsigned char)h[i])) return -1;
      port = port * 10 + (h[i] - '0');
    }
    if (port < 1 || port > 65535) return -1;
    if ((https && port == 443) || (!https && port == 80)) port = -1;
  }
  char buf[EVS_BP_MAX_ORIGIN + 16];
  size_t o = 0;
  const char *scheme = https ? "https://" : "http://";
  memcpy(buf, scheme, strlen(scheme));
  o = strlen(scheme);
  for (size_t i = 0; i < host_end; i++) buf[o++] = (char)tolower((unsigned char)h[i]);
  if (port > 0) o += (size_t)snprintf(buf + o, sizeof buf - o, ":%ld", port);
  if (o + 1 > cap) return -1;
  memcpy(out, buf, o);
  out[o] = 0;
  return (int)o;
}

int evs__bp_policy_parse(const char *text, evs_bp_policy *ret, char *err, size_t cap) {
  evs_bp_policy p = {NULL, 0};
  const char *s = text ? text : "";
  while (*s) {
    while (*s == ' ' || *s == ';' || *s == '\t' || *s == '\n') s++;
    if (!*s) break;
    size_t n = strcspn(s, " ;\t\n");
    const char *eq = memchr(s, '=', n);
    if (!eq || !app_id_ok(s, (size_t)(eq - s))) {
      snprintf(err, cap, "entry %zu: expected app_<12 hex digits>=<origin>[,<origin>...]",
               p.napps + 1);
      goto fail;
    }
    for (size_t i = 0; i < p.napps; i++)
      if (strncmp(p.apps[i].app_id, s, 16) == 0) {
        snprintf(err, cap, "app %.16s is given twice", s);
        goto fail;
      }
    evs_bp_app *na = realloc(p.apps, (p.napps + 1) * sizeof *na);
    if (!na) {
      snprintf(err, cap, "out of memory");
      goto fail;
    }
    p.apps = na;
    evs_bp_app *a = &p.apps[p.napps++];
    memset(a, 0, sizeof *a);
    memcpy(a->app_id, s, 16);
    const char *o = eq + 1, *end = s + n;
    if (o == end) {
      snprintf(err, cap, "app %.16s: no origin", s);
      goto fail;
    }
    while (o < end) {
      const char *comma = memchr(o, ',', (size_t)(end - o));
      size_t ol = comma ? (size_t)(comma - o) : (size_t)(end - o);
      char canon[EVS_BP_MAX_ORIGIN + 16];
      if (evs__bp_origin_canon(o, ol, canon, sizeof canon) < 0) {
        snprintf(err, cap, "app %.16s: '%.*s' is not an origin (scheme://host[:port], no path)",
                 s, (int)(ol > 80 ? 80 : ol), o);
        goto fail;
      }
      char **no = realloc(a->origins, (a->norigins + 1) * sizeof *no);
      if (!no || !(no[a->norigins] = strdup(canon))) {
        if (no) a->origins = no;
        snprintf(err, cap, "out of memory");
        goto fail;
      }
      a->origins = no;
      a->norigins++;
      o += ol + (comma ? 1 : 0);
      if (comma && o == end) {
        snprintf(err, cap, "app %.16s: an empty origin after ','", s);
        goto fail;
      }
    }
    s += n;
  }
  *ret = p;
  return 0;
fail:
  evs__bp_policy_free(&p);
  memset(ret, 0, sizeof *ret);
  return -1;
}

const evs_bp_app *evs__bp_policy_app(const evs_bp_policy *p, const char *app_id) {
  for (size_t i = 0; i < p->napps; i++)
    if (strcmp(p->apps[i].app_id, app_id) == 0) return &p->apps[i];
  return NULL;
}

int evs__bp_origin_allowed(const evs_bp_app *app, const char *origin) {
  for (size_t i = 0; app && i < app->norigins; i++)
    if (strcmp(app->origins[i], origin) == 0) return 1;
  return 0;
}

static int hexv(int c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int evs__bp_query_get(const char *q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  int found = -1;
  for (const char *p = q ? q : ""; *p;) {
    size_t seg = strcspn(p, "&");
    if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      if (found >= 0) return -1;
      size_t o = 0;
      for (size_t i = nl + 1; i < seg; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
          if (i + 2 >= seg || hexv(p[i + 1]) < 0 || hexv(p[i + 2]) < 0) return -2;
          c = hexv(p[i + 1]) << 4 | hexv(p[i + 2]);
          i += 2;
        } else if (c == '+') {
          c = ' ';
        }
        if (c == 0 || o + 1 >= cap) return -2;
        out[o++] = (char)c;
      }
      out[o] = 0;
      found = (int)o;
    }
    p += seg;
    if (*p) p++;
  }
  return found;
}

int evs__bp_accepts_gzip(const char *v, size_t len) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (v[i] == ' ' || v[i] == ',')) i++;
    size_t start = i;
    while (i < len && v[i] != ',' && v[i] != ';' && v[i] != ' ') i++;
    size_t tl = i - start;
    int is_gzip = (tl == 4 && strncasecmp(v + start, "gzip", 4) == 0) ||
                  (tl == 1 && v[start] == '*');
    int q0 = 0;
    while (i < len && v[i] != ',') {
      if (v[i] == 'q' && i + 1 < len && v[i + 1] == '=') {
        size_t j = i + 2;
        q0 = 1;
        while (j < len && v[j] != ',' && v[j] != ';') {
          if (v[j] >= '1' && v[j] <= '9') q0 = 0;
          j++;
        }
      }
      i++;
    }
    if (is_gzip && !q0) return 1;
  }
  return 0;
}
