/*
 * request_guard.c: the head checks of the trust boundary both relays share (request_guard.h).
 */
#include "request_guard.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "content_decode.h"
#include "ev_guard.h"

int evs__relay_head_carries_ev_data(const evs_host *h, evs_request *req) {
  const evs_request_info *info = h->request_info(req);
  evs__ev_guard g;
  evs__ev_guard_init(&g);
  evs__ev_guard_feed(&g, info->target, strlen(info->target));
  size_t found = evs__ev_guard_finish(&g);
  evs_header hd;
  for (size_t i = 0; !found && h->request_header_at(req, i, &hd) == 0; i++) {
    evs__ev_guard_feed(&g, hd.name, hd.name_len);
    evs__ev_guard_finish(&g);
    evs__ev_guard_feed(&g, hd.value, hd.value_len);
    found = evs__ev_guard_finish(&g);
  }
  return found > 0;
}

int evs__relay_body_encoded(const evs_host *h, evs_request *req) {
  evs_header hd;
  for (size_t i = 0; h->request_header_at(req, i, &hd) == 0; i++) {
    if (hd.name_len != 16 || strncasecmp(hd.name, "content-encoding", 16) != 0) continue;
    const char *v = hd.value;
    size_t n = hd.value_len;
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    if (!(n == 8 && strncasecmp(v, "identity", 8) == 0)) return 1;
  }
  return 0;
}

void evs__relay_narrow_accept_encoding(const evs_host *h, evs_request *req) {
  char *all = NULL;
  size_t len = 0;
  int any = 0;
  evs_header hd;
  for (size_t i = 0; h->request_header_at(req, i, &hd) == 0; i++) {
    if (hd.name_len != 15 || strncasecmp(hd.name, "accept-encoding", 15) != 0) continue;
    char *n = realloc(all, len + hd.value_len + 2);
    if (!n) break;
    all = n;
    if (any) all[len++] = ',';
    memcpy(all + len, hd.value, hd.value_len);
    len += hd.value_len;
    any = 1;
  }
  char *out = malloc(2 * len + 9);
  if (out) {
    evs__cdecode_accept_encoding(any ? all : NULL, len, out);
    h->request_set_header(req, "Accept-Encoding", out);
  }
  free(out);
  free(all);
}
