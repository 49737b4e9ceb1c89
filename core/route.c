/*
 * The route table (ABI 1.7): validation, ordering and matching of routes plugins register with
 * add_route. Dispatch lives with the request path (server.c, admin.c); registration in the
 * evs_host table (host.c, which also runs them: evs__routes_run). See route.h.
 */
#include "route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int evs__route_role_valid(const char *role) {
  size_t n = role ? strlen(role) : 0;
  return n >= 1 && n <= 32 && strspn(role, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

static char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

/* Host names: letters, digits, '-', '.', '_' (as request_info.host can carry them), no empty
 * label at either end. */
static int host_valid(const char *h) {
  size_t n = strlen(h);
  if (n == 0 || n > 253 || h[0] == '.' || h[n - 1] == '.') return 0;
  return strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") == n;
}

static int method_valid(const char *m) {
  size_t n = strlen(m);
  return n >= 1 && n <= 32 && strspn(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ-_") == n;
}

void evs__route_clear(evs__route *rt) {
  if (!rt) return;
  free(rt->role);
  free(rt->host);
  free(rt->method);
  free(rt->prefix);
  memset(rt, 0, sizeof *rt);
}

int evs__route_make(const evs_route *r, evs__route *out) {
  if (!r || r->size < offsetof(evs_route, handler) + sizeof r->handler || !r->handler ||
      !evs__route_role_valid(r->role) || (r->method && !method_valid(r->method)))
    return -EINVAL;
  /* A CONNECT route has no path (its requests' target is an authority); every other route has
   * a prefix. */
  int is_connect = r->method && strcmp(r->method, "CONNECT") == 0;
  if (is_connect ? r->path_prefix != NULL
                 : !r->path_prefix || r->path_prefix[0] != '/' || strlen(r->path_prefix) > 1024)
    return -EINVAL;
  evs__route rt;
  memset(&rt, 0, sizeof rt);
  rt.connect = is_connect;
  if (r->host) {
    const char *h = r->host;
    if (h[0] == '*') {
      if (h[1] != '.' || !host_valid(h + 2)) return -EINVAL;
      rt.host_kind = 1;
      h++; /* keep ".suffix" */
    } else {
      if (!host_valid(h)) return -EINVAL;
      rt.host_kind = 2;
    }
    if (!(rt.host = strdup(h))) return -ENOMEM;
    for (char *c = rt.host; *c; c++) *c = ascii_lower(*c);
  }
  rt.role = strdup(r->role);
  rt.method = r->method ? strdup(r->method) : NULL;
  /* "/apps/" and "/apps" mean the same: the prefix is kept without its trailing slash. */
  size_t pl = is_connect ? 0 : strlen(r->path_prefix);
  while (pl > 1 && r->path_prefix[pl - 1] == '/') pl--;
  rt.prefix = is_connect ? strdup("") : strndup(r->path_prefix, pl);
  rt.prefix_len = pl <= 1 ? 0 : pl; /* "/" matches every path */
  rt.fn = r->handler;
  if (!rt.role || (r->method && !rt.method) || !rt.prefix) {
    evs__route_clear(&rt);
    return -ENOMEM;
  }
  *out = rt;
  return 0;
}

static int str_eq(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int evs__route_same(const evs__route *a, const evs__route *b) {
  return strcmp(a->role, b->role) == 0 && a->host_kind == b->host_kind && str_eq(a->host, b->host) &&
         str_eq(a->method, b->method) && strcmp(a->prefix, b->prefix) == 0;
}

/* Negative if a is more specific than b (comes first). */
static int specificity_cmp(const evs__route *a, const evs__route *b) {
  if (a->host_kind != b->host_kind) return b->host_kind - a->host_kind;
  if (a->host_kind == 1) {
    size_t la = strlen(a->host), lb = strlen(b->host);
    if (la != lb) return la > lb ? -1 : 1;
  }
  if (a->prefix_len != b->prefix_len) return a->prefix_len > b->prefix_len ? -1 : 1;
  if (!a->method != !b->method) return a->method ? -1 : 1;
  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

int evs__route_insert(evs__route **routes, size_t *n, const evs__route *rt) {
  evs__route *nr = realloc(*routes, (*n + 1) * sizeof *nr);
  if (!nr) return -ENOMEM;
  *routes = nr;
  size_t at = *n;
  while (at > 0 && specificity_cmp(rt, &nr[at - 1]) < 0) at--;
  memmove(&nr[at + 1], &nr[at], (*n - at) * sizeof *nr);
  nr[at] = *rt;
  (*n)++;
  return 0;
}

void evs__route_drop_plugin(evs__route *routes, size_t *n, const evs__plugin_rec *plugin) {
  size_t out = 0;
  for (size_t k = 0; k < *n; k++) {
    if (routes[k].plugin == plugin) evs__route_clear(&routes[k]);
    else routes[out++] = routes[k];
  }
  *n = out;
}

void evs__route_table_free(evs__route **routes, size_t *n) {
  for (size_t k = 0; k < *n; k++) evs__route_clear(&(*routes)[k]);
  free(*routes);
  *routes = NULL;
  *n = 0;
}

size_t evs__route_connect_host(const char *target, char *buf, size_t len) {
  const char *h = target, *end;
  if (h[0] == '[') {
    end = strchr(h, ']');
    if (!end) return 0;
    h++;
  } else {
    end = strrchr(h, ':');
    if (!end) end = h + strlen(h);
  }
  size_t n = (size_t)(end - h);
  if (n == 0 || n >= len) return 0;
  for (size_t k = 0; k < n; k++) buf[k] = ascii_lower(h[k]);
  buf[n] = '\0';
  return n;
}

int evs__route_matches(const evs__route *rt, const char *role, const char *host,
                       const char *method, const char *path) {
  if (strcmp(rt->role, role) != 0) return 0;
  /* CONNECT routes and CONNECT requests meet only each other: a tunnel is never a request
   * for a path, and a route for paths never takes a connection over by surprise. */
  if (rt->connect != (strcmp(method, "CONNECT") == 0)) return 0;
  /* A GET route answers HEAD too (RFC 9110 §9.3.2; the host sends no body to HEAD). */
  if (rt->method && strcmp(rt->method, method) != 0 &&
      !(strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0))
    return 0;
  if (rt->host_kind == 2 && strcmp(rt->host, host ? host : "") != 0) return 0;
  if (rt->host_kind == 1) {
    size_t hl = host ? strlen(host) : 0, sl = strlen(rt->host);
    /* ".example" matches "a.example" and "a.b.example", never "example" itself. */
    if (hl <= sl || strcmp(host + hl - sl, rt->host) != 0) return 0;
  }
  if (rt->prefix_len == 0 || rt->connect) return 1;
  return strncmp(path, rt->prefix, rt->prefix_len) == 0 &&
         (path[rt->prefix_len] == 0 || path[rt->prefix_len] == '/' ||
          path[rt->prefix_len] == '?');
}

const char *evs__route_host_text(const evs__route *rt, char *buf, size_t len) {
  if (rt->host_kind == 0) return "*";
  if (rt->host_kind == 2) return rt->host;
  snprintf(buf, len, "*%s", rt->host);
  return buf;
}
