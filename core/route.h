/*
 * The route table (ABI 1.7 add_route): routes a plugin registered for a listener role, kept
 * most specific first, matched against a request's host, method and path. Pure data: no loop,
 * no logging, no plugin calls (host.c registers and runs them for server.c and admin.c), so the
 * ordering rules are unit-tested on their own (tests/unit/test_route.c).
 */
#ifndef EVS_CORE_ROUTE_H
#define EVS_CORE_ROUTE_H

#include <stddef.h>

#include "evserver/evs_plugin.h"
#include "worker.h"

/* A route as the host keeps it: strings owned. host_kind: 2 exact, 1 "*.suffix" (host holds
 * ".suffix"), 0 any (host NULL). prefix has no trailing '/'; prefix_len 0 means "/" (all). */
struct evs__route {
  evs__plugin_rec *plugin;
  char *role;
  char *host;
  int host_kind;
  char *method;                /* NULL: any */
  char *prefix;
  size_t prefix_len;
  int connect;                 /* method "CONNECT", no prefix ("" kept): matches CONNECT only */
  evs_hook_fn fn;
  size_t seq;                  /* registration order */
};

/* Roles are [a-z0-9-]{1,32}. 1 if valid. */
int evs__route_role_valid(const char *role);

/* Checks r (as a plugin passed it) and fills out with owned copies: 0, -EINVAL (malformed) or
 * -ENOMEM. out->plugin and out->seq are left for the caller. */
int evs__route_make(const evs_route *r, struct evs__route *out);
/* Frees what evs__route_make allocated; accepts a zeroed route. */
void evs__route_clear(struct evs__route *rt);
/* 1 if a and b have the same role, host pattern, method and prefix. */
int evs__route_same(const struct evs__route *a, const struct evs__route *b);
/* Inserts rt (moved in) into the sorted table *routes of *n entries, most specific first
 * (see evs_route in the ABI header); 0 or -ENOMEM (rt is then untouched). */
int evs__route_insert(struct evs__route **routes, size_t *n, const struct evs__route *rt);
/* Removes (and clears) the routes of one plugin from the table: its init failed. */
void evs__route_drop_plugin(struct evs__route *routes, size_t *n, const evs__plugin_rec *plugin);
/* Clears every route and frees the table; *routes and *n are reset. */
void evs__route_table_free(struct evs__route **routes, size_t *n);
/* 1 if rt matches a request on a listener serving role, with host (lower-case, no port),
 * method and path. For a CONNECT request, host is the target's (evs__route_connect_host) and
 * path is ignored; CONNECT requests match CONNECT routes only, and those nothing else. */
int evs__route_matches(const struct evs__route *rt, const char *role, const char *host,
                       const char *method, const char *path);
/* The host of a CONNECT target ("host:port", "[v6]:port"), lower-case, without port or
 * brackets, into buf: its length, or 0 when it does not fit or is empty. */
size_t evs__route_connect_host(const char *target, char *buf, size_t len);
/* The host pattern as written ("*.example", an exact name, or "*" for any). */
const char *evs__route_host_text(const struct evs__route *rt, char *buf, size_t len);

#endif
