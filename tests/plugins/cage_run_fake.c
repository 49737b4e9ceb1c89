/*
 * cage_run_fake.c: a stand-in for the Cages runner (plugins/cage-broker/cage_run.h), linked
 * into a test build of the cage-broker plugin (test-plugins.d/cage-broker.so) so that the
 * front is tested on its own (tests/integration/test_97_cage_front.py): every instance is
 * tests/integration/cage/fake_app.py run as a helper process (helper_spawn, the "worker"
 * policy), serving HTTP on a unix socket; the image file is not booted, only checked to exist.
 * The app speaks a line protocol on the helper's socketpair (fd 3):
 *   app -> runner: "READY", "LOG <stream> <text>", "API <id> <method> <path> <base64 body>"
 *   runner -> app: "REPLY <id> <status> <base64 body>"
 * An exit is CRASHED, the helper's restart then STARTING and READY again, like the runner.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "cage_run.h"

#ifndef EVS_FAKE_CAGE_APP
#error EVS_FAKE_CAGE_APP must name fake_app.py
#endif

struct cage_api_call {
  cage_instance *ci;
  unsigned long id;
};

struct cage_instance {
  evs_plugin *p;
  const evs_host *h;
  evs_helper *hp;
  cage_run_callbacks cb;
  void *arg;
  char sock[300];
  uv_pipe_t *pipe;
  char line[1 << 20];
  size_t len;
  int stopping;
  char **env;
  evs_timer *stop_timer;
};

static void pipe_closed(uv_handle_t *h) { free(h); }

static void close_pipe(cage_instance *ci) {
  if (!ci->pipe) return;
  ci->pipe->data = NULL;
  uv_close((uv_handle_t *)ci->pipe, pipe_closed);
  ci->pipe = NULL;
}

static uint8_t *unb64(const char *s, size_t *ret) {
  size_t n = strlen(s);
  uint8_t *out = malloc(n / 4 * 3 + 4);
  int r = out ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)n) : -1;
  if (r < 0) {
    free(out);
    return NULL;
  }
  while (n > 0 && s[n - 1] == '=') { r--; n--; }
  *ret = (size_t)r;
  return out;
}

static void handle_line(cage_instance *ci, char *l) {
  if (!strcmp(l, "READY")) {
    ci->cb.on_state(ci->arg, ci, CAGE_READY, "the app accepts connections");
  } else if (!strncmp(l, "LOG ", 4) && ci->cb.on_log) {
    int stream = l[4] == '2' ? 2 : 1;
    const char *t = l[5] ? l + 6 : "";
    ci->cb.on_log(ci->arg, ci, stream, t, strlen(t));
  } else if (!strncmp(l, "API ", 4)) {
    char method[16], path[128], b64[1 << 19];
    unsigned long id;
    b64[0] = 0;
    if (sscanf(l + 4, "%lu %15s %127s %524287s", &id, method, path, b64) < 3) return;
    size_t bl = 0;
    uint8_t *body = unb64(b64, &bl);
    cage_api_call *call = calloc(1, sizeof *call);
    if (!call) {
      free(body);
      return;
    }
    call->ci = ci;
    call->id = id;
    ci->cb.on_api(ci->arg, ci, call, method, path, body ? body : (const uint8_t *)"",
                  body ? bl : 0);
    free(body);
  }
}

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  b->base = malloc(sz);
  b->len = b->base ? sz : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  cage_instance *ci = s->data;
  if (!ci || n < 0) {
    free(b->base);
    if (ci && n < 0) close_pipe(ci);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    char c = b->base[i];
    if (c == '\n') {
      ci->line[ci->len] = 0;
      handle_line(ci, ci->line);
      ci->len = 0;
    } else if (ci->len < sizeof ci->line - 1) {
      ci->line[ci->len++] = c;
    }
  }
  free(b->base);
}

static void on_event(void *arg, evs_helper *h, const evs_helper_event *ev) {
  (void)h;
  cage_instance *ci = arg;
  if (ev->type == EVS_HELPER_STARTED) {
    close_pipe(ci);
    int fd = dup(ev->fd);
    ci->pipe = calloc(1, sizeof *ci->pipe);
    if (fd < 0 || !ci->pipe) return;
    uv_pipe_init(ci->h->uv_loop(ci->p), ci->pipe, 0);
    uv_pipe_open(ci->pipe, fd);
    ci->pipe->data = ci;
    ci->len = 0;
    uv_read_start((uv_stream_t *)ci->pipe, alloc_cb, on_read);
    if (ev->starts > 1) ci->cb.on_state(ci->arg, ci, CAGE_STARTING, "restarted after a crash");
  } else if (ev->type == EVS_HELPER_EXITED) {
    close_pipe(ci);
    char why[96];
    snprintf(why, sizeof why, "the app exited (code %d, signal %d)", ev->exit_code, ev->signal);
    ci->cb.on_state(ci->arg, ci, CAGE_CRASHED, why);
  }
}

int cage_run_start(evs_plugin *p, const evs_host *host, const cage_run_spec *spec,
                   const cage_run_callbacks *cb, void *arg, cage_instance **ret_ci) {
  if (access(spec->image_path, R_OK) < 0) return -errno;
  cage_instance *ci = calloc(1, sizeof *ci);
  if (!ci) return -ENOMEM;
  ci->p = p;
  ci->h = host;
  ci->cb = *cb;
  ci->arg = arg;
  snprintf(ci->sock, sizeof ci->sock, "%s/fake-%s.sock", host->state_dir(p), spec->name);
  size_t n = 0;
  while (spec->env && spec->env[n]) n++;
  ci->env = calloc(n + 3, sizeof *ci->env);
  for (size_t i = 0; ci->env && i < n; i++) ci->env[i] = strdup(spec->env[i]);
  if (ci->env) {
    ci->env[n] = strdup("PYTHONDONTWRITEBYTECODE=1");
    ci->env[n + 1] = strdup(spec->debug ? "FAKE_DEBUG=1" : "FAKE_DEBUG=0");
  }
  const char *argv[] = {"/usr/bin/python3", EVS_FAKE_CAGE_APP, ci->sock, NULL};
  /* bench/cages/front/run: its own app (a C echo server) instead of fake_app.py. */
  const char *bin = getenv("EVS_FAKE_CAGE_APP_BIN");
  const char *bargv[] = {bin, ci->sock, NULL};
  evs_helper_spec hs;
  memset(&hs, 0, sizeof hs);
  hs.size = sizeof hs;
  hs.path = bin && bin[0] == '/' ? bin : "/usr/bin/python3";
  hs.argv = bin && bin[0] == '/' ? bargv : argv;
  hs.envp = (const char *const *)ci->env;
  hs.sandbox = "worker";
  hs.restart_min_ms = 100;
  hs.restart_max_ms = 400;
  int rc = host->helper_spawn(p, &hs, on_event, ci, &ci->hp);
  if (rc < 0) {
    for (size_t i = 0; ci->env && ci->env[i]; i++) free(ci->env[i]);
    free(ci->env);
    free(ci);
    return rc;
  }
  *ret_ci = ci;
  return 0;
}

const char *cage_run_app_socket(const cage_instance *ci) { return ci->sock; }
const char *cage_run_backend(const cage_instance *ci) { return (void)ci, "fake"; }

void cage_api_reply(cage_api_call *call, int status, const char *content_type,
                    const uint8_t *body, size_t len) {
  (void)content_type;
  cage_instance *ci = call->ci;
  char *b = malloc(4 * ((len + 2) / 3) + 64);
  if (b && ci->pipe && !ci->stopping) {
    int k = sprintf(b, "REPLY %lu %d ", call->id, status);
    k += EVP_EncodeBlock((unsigned char *)b + k, body, (int)len);
    b[k++] = '\n';
    uv_buf_t ub = uv_buf_init(b, (unsigned)k);
    uv_try_write((uv_stream_t *)ci->pipe, &ub, 1); /* short replies: fits the socket buffer */
  }
  free(b);
  free(call);
}

static void stopped(void *arg) {
  cage_instance *ci = arg;
  ci->h->timer_free(ci->stop_timer);
  ci->cb.on_state(ci->arg, ci, CAGE_STOPPED, "stopped");
  for (size_t i = 0; ci->env && ci->env[i]; i++) free(ci->env[i]);
  free(ci->env);
  unlink(ci->sock);
  free(ci);
}

void cage_run_stop(cage_instance *ci) {
  ci->stopping = 1;
  close_pipe(ci);
  ci->h->helper_stop(ci->hp);
  ci->stop_timer = ci->h->timer_start(ci->p, 0, 0, stopped, ci);
}
