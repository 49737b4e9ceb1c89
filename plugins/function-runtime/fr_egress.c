/*
 * fr_egress.c: a box's way out. The box has no network of its own (an empty net namespace);
 * evs-fnbox binds one unix socket of ours into it (--egress, /run/evs/egress.sock) and the
 * bootstrap sends every HTTP(S) connection through it as `CONNECT host:port`. This file gives
 * each box its own socket and proxy (egress_proxy.c: the allowlist in the Outbound Relay's
 * destination-domain syntax, public addresses only unless egress_allow_private, the TLS server
 * name or HTTP Host checked against the CONNECT host) and counts and logs what it refused
 * (host and rule; never data).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "egress_proxy.h"
#include "fr_int.h"

struct fr_egress {
  fr_state *st;
  egress_proxy *proxy;
  char path[108];
  char label[160]; /* app/function, for log lines */
};

static void on_event(void *arg, const char *host, int port, int allowed, const char *why) {
  fr_egress *eg = arg;
  const evs_host *h = eg->st->h;
  h->counter_add(eg->st->p, allowed ? "function_egress_allowed" : "function_egress_refused", 1);
  if (!allowed)
    h->log(eg->st->p, NULL, EVS_LOG_INFO, "function %s: egress to %s:%d refused: %s", eg->label,
           host[0] ? host : "?", port, why);
}

/* libuv calls the callbacks of a closing handle (and of its cancelled writes, lookups and
 * connects) on a later loop turn. When fini closes the boxes' proxies, that turn comes after
 * the host has unloaded this plugin (the worker runs its loop once more to close everything),
 * so the code those callbacks live in must stay mapped: the first proxy pins this shared object
 * (RTLD_NODELETE). The proxy's callbacks touch nothing of ours once it is closed. */
static void pin_self(void) {
  static int pinned;
  Dl_info info;
  if (pinned || !dladdr((void *)&pin_self, &info) || !info.dli_fname) return;
  if (dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE)) pinned = 1;
}

fr_egress *fr_egress_open(fr_state *st, const json_t *allow, const char *label) {
  static unsigned seq;
  pin_self();
  fr_egress *eg = calloc(1, sizeof *eg);
  size_t n_allow = json_is_array(allow) ? json_array_size(allow) : 0;
  const char **names = calloc(n_allow ? n_allow : 1, sizeof *names);
  if (!eg || !names) goto fail;
  eg->st = st;
  snprintf(eg->label, sizeof eg->label, "%s", label);
  int n = snprintf(eg->path, sizeof eg->path, "%s/%d-%u.sock", st->egress_dir, (int)getpid(), ++seq);
  if (n < 0 || (size_t)n >= sizeof eg->path) goto fail;
  for (size_t i = 0; i < n_allow; i++)
    if (!(names[i] = json_string_value(json_array_get(allow, i)))) goto fail;
  mkdir(st->egress_dir, 0700);
  egress_proxy_opts o = {.path = eg->path, .allow = names, .n_allow = n_allow,
                         .allow_private = st->egress_allow_private, .event = on_event,
                         .event_arg = eg};
  const char *why = NULL;
  if (egress_proxy_open((uv_loop_t *)st->loop, &o, &eg->proxy, &why) < 0) {
    st->h->log(st->p, NULL, EVS_LOG_ERROR, "function %s: no egress proxy: %s", label, why);
    goto fail;
  }
  /* 0666 in a 0700 directory: only this uid reaches it through the file system, and a box
   * started by root (whose uid 0 is a uid of its own on the host) can connect through its bind
   * mount without keeping the host's uid 0 (docs/functions.md, "Files and uids"). */
  if (chmod(eg->path, 0666) < 0) {
    egress_proxy_close(eg->proxy);
    goto fail;
  }
  free(names);
  return eg;
fail:
  free(names);
  free(eg);
  return NULL;
}

const char *fr_egress_path(const fr_egress *eg) { return eg->path; }

void fr_egress_close(fr_egress *eg) {
  if (!eg) return;
  egress_proxy_close(eg->proxy);
  free(eg);
}
