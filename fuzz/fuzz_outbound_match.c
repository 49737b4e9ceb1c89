/*
 * libFuzzer target for plugins/relay-outbound/outbound_match.c: destination domains and
 * CONNECT targets. The first byte picks the mode:
 *   0  one destination domain: if accepted, its host is lower-case and holds no '*', its path
 *      is empty exactly when it has none and starts with '/' otherwise, and a matcher of it
 *      matches the host (and the path) it names;
 *   1  one CONNECT target: if accepted, the host is lower-case without a trailing dot, printing
 *      host:port and parsing that again gives the same host and port, and the same text is a
 *      valid destination domain that matches it;
 *   2  lines: destination domains (the valid ones compiled into one matcher) and, last, a
 *      CONNECT target and a path to match: the index returned names a pattern that matches on
 *      its own, and no pattern matches when the matcher says none does.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-outbound \
 *     plugins/relay-outbound/outbound_match.c fuzz/fuzz_outbound_match.c -o /tmp/fuzz_ob_match
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbound_match.h"

static void check_pattern(const evs__ob_pattern *p) {
  for (const char *c = p->host; *c; c++)
    if ((*c >= 'A' && *c <= 'Z') || *c == '*') __builtin_trap();
  if (!p->host[0]) __builtin_trap();
  if ((p->path_kind == EVS__OB_PATH_ANY) != (p->path[0] == 0)) __builtin_trap();
  if (p->path[0] && p->path[0] != '/') __builtin_trap();
  if (p->port < 0 || p->port > 65535) __builtin_trap();
}

static int match_one(const evs__ob_pattern *p, const char *host, int port, const char *path, size_t pl) {
  evs__ob_matcher *m = evs__ob_matcher_new(p, 1);
  if (!m) abort();
  int r = evs__ob_match(m, host, port, path, pl);
  evs__ob_matcher_free(m);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 8192) return 0;
  const char *in = (const char *)data + 1;
  size_t n = size - 1;
  const char *why;
  if (data[0] % 3 == 0) {
    evs__ob_pattern p;
    if (evs__ob_pattern_parse(in, n, &p, &why) != 0) {
      if (!why) __builtin_trap();
      return 0;
    }
    check_pattern(&p);
    if (p.host_kind == EVS__OB_HOST_EXACT) {
      const char *path = p.path_kind == EVS__OB_PATH_ANY ? "/" : p.path;
      if (match_one(&p, p.host, p.port ? p.port : 443, path, strlen(path)) != 0) __builtin_trap();
      if (match_one(&p, p.host, p.port ? p.port : 443, NULL, 0) != 0) __builtin_trap();
    }
  } else if (data[0] % 3 == 1) {
    char host[EVS__OB_HOST_MAX + 64], again[EVS__OB_HOST_MAX + 64], text[EVS__OB_HOST_MAX + 80];
    int port, port2;
    if (evs__ob_authority_parse(in, n, host, sizeof host, &port) != 0) return 0;
    size_t hl = strlen(host);
    if (!hl || host[hl - 1] == '.') __builtin_trap();
    for (const char *c = host; *c; c++)
      if (*c >= 'A' && *c <= 'Z') __builtin_trap();
    int tl = snprintf(text, sizeof text, "%s:%d", host, port);
    if (evs__ob_authority_parse(text, (size_t)tl, again, sizeof again, &port2) != 0) __builtin_trap();
    if (strcmp(host, again) != 0 || port != port2) __builtin_trap();
    evs__ob_pattern p;
    if (evs__ob_pattern_parse(text, (size_t)tl, &p, &why) != 0) __builtin_trap();
    if (match_one(&p, host, port, "/", 1) != 0) __builtin_trap();
  } else {
    evs__ob_pattern *pats = calloc(64, sizeof *pats);
    if (!pats) abort();
    size_t np = 0;
    const char *s = in, *end = in + n;
    const char *last = NULL;
    size_t last_len = 0;
    while (s < end) {
      const char *nl = memchr(s, '\n', (size_t)(end - s));
      size_t l = nl ? (size_t)(nl - s) : (size_t)(end - s);
      if (!nl) {
        last = s;
        last_len = l;
      } else if (np < 64 && evs__ob_pattern_parse(s, l, &pats[np], &why) == 0) {
        np++;
      }
      s += l + (nl != NULL);
    }
    char host[EVS__OB_HOST_MAX + 64];
    int port;
    const char *path = last ? memchr(last, ' ', last_len) : NULL;
    size_t al = path ? (size_t)(path - last) : last_len;
    if (last && evs__ob_authority_parse(last, al, host, sizeof host, &port) == 0) {
      size_t pl = path ? last_len - al - 1 : 0;
      const char *pp = path ? path + 1 : NULL;
      evs__ob_matcher *m = evs__ob_matcher_new(pats, np);
      if (!m) abort();
      int r = evs__ob_match(m, host, port, pp, pl);
      if (r >= (int)np) __builtin_trap();
      if (r >= 0 && match_one(&pats[r], host, port, pp, pl) != 0) __builtin_trap();
      if (r < 0)
        for (size_t i = 0; i < np; i++)
          if (match_one(&pats[i], host, port, pp, pl) == 0) __builtin_trap();
      evs__ob_matcher_free(m);
    }
    free(pats);
  }
  return 0;
}
