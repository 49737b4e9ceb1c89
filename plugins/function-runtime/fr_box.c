/*
 * fr_box.c: boxes and pools. A box is one evs-fnbox process (a helper the host spawns under
 * the sandbox policy "fnbox", docs/functions.md) serving one (app, function, version,
 * environment version), one run at a time, over the channel on its fd 3: 4-byte big-endian
 * length, then one JSON object. A pool holds the boxes of one such key in this worker (at most
 * pool_max) and the runs waiting for one; a run takes an idle box, or starts one (cold start)
 * when the pool has room, or waits. Idle boxes are stopped after idle_timeout.
 *
 * A box start: the version's code is unpacked once per node into code_dir/<app>/<name>/<ver>
 * (fn_archive.c; other workers and nodes find it there or unpack it from the store), the
 * environment's secrets are decrypted through the enclave into the spawn's envp only (copied
 * by helper_spawn, wiped here), then helper_spawn. The box says "ready" when the handler is
 * loaded. A timeout, a protocol error or a crash ends the box (SIGKILL to evs-fnbox, which is
 * pid 1 of its pid namespace, so its whole tree dies); the next run starts a fresh one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <ftw.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <uv.h>

#include "fn_archive.h"
#include "fr_int.h"

#define FRAME_MAX (32u << 20)

void fr_context_crypto(fr_state *st, const char *app, int encrypt, json_t *data,
                       void (*cb)(void *arg, int status, json_t *data), void *arg);

enum { B_PREP = 1, B_STARTING, B_IDLE, B_BUSY, B_DEAD };

struct fr_pool {
  fr_pool *next;
  fr_state *st;
  char app[FN_APP_MAX + 1];
  char name[FR_NAME_MAX + 1];
  int64_t version, env_version;
  json_t *fn;
  fr_box *boxes;
  size_t nboxes;
  fr_run *qhead, *qtail;
  int warming; /* the next box_start is a pre-warm (fr_pool_warm), for no run yet */
};

struct fr_box {
  fr_box *next;
  fr_pool *pool;
  fr_state *st;
  int refs;
  int state;
  evs_helper *h;
  int fd;
  uv_poll_t *poll;
  int poll_events;
  fr_run *run;
  uint8_t *rbuf;
  size_t rlen, rcap;
  uint8_t *wbuf;
  size_t wlen, wcap;
  int64_t idle_since;
  int prewarm; /* started ahead of any run: counted function_prewarmed once ready */
  evs_timer *start_timer, *reap_timer;
  fr_egress *egress;
  json_t *env;  /* plain values for the spawn's environment (plaintext secrets: wiped) */
  char dir[4400];
};

static void box_close(fr_box *b, const char *why);

static void box_unref(fr_box *b) {
  if (--b->refs) return;
  fr_state *st = b->st;
  free(b->rbuf);
  if (b->wbuf) OPENSSL_cleanse(b->wbuf, b->wcap);
  free(b->wbuf);
  json_decref(b->env);
  free(b);
  fr_live(st, -1);
}

static void pool_free(fr_pool *p) {
  fr_state *st = p->st;
  for (fr_pool **pp = &st->pools; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  json_decref(p->fn);
  free(p);
}

static void queue_remove(fr_pool *p, fr_run *r) {
  fr_run *prev = NULL;
  for (fr_run *q = p->qhead; q; prev = q, q = q->next_queued) {
    if (q != r) continue;
    if (prev) prev->next_queued = q->next_queued;
    else p->qhead = q->next_queued;
    if (p->qtail == q) p->qtail = prev;
    q->next_queued = NULL;
    return;
  }
}

static fr_run *queue_pop(fr_pool *p) {
  fr_run *r = p->qhead;
  if (r) queue_remove(p, r);
  return r;
}

/* ---- the channel ------------------------------------------------------------------------- */

static void poll_update(fr_box *b);

static void flush(fr_box *b) {
  while (b->wlen) {
    ssize_t n = send(b->fd, b->wbuf, b->wlen, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      box_close(b, "the channel failed");
      return;
    }
    /* Sent bytes may be plaintext: wipe them as they go. */
    memmove(b->wbuf, b->wbuf + n, b->wlen - (size_t)n);
    OPENSSL_cleanse(b->wbuf + b->wlen - (size_t)n, (size_t)n);
    b->wlen -= (size_t)n;
  }
  poll_update(b);
}

static int send_frame(fr_box *b, json_t *obj) {
  char *s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(obj);
  if (!s) return -ENOMEM;
  size_t len = strlen(s);
  if (len > FRAME_MAX) {
    OPENSSL_cleanse(s, len);
    free(s);
    return -E2BIG;
  }
  if (b->wlen + 4 + len > b->wcap) {
    size_t nc = (b->wlen + 4 + len) * 2;
    uint8_t *nb = malloc(nc);
    if (!nb) {
      OPENSSL_cleanse(s, len);
      free(s);
      return -ENOMEM;
    }
    if (b->wbuf) {
      memcpy(nb, b->wbuf, b->wlen);
      OPENSSL_cleanse(b->wbuf, b->wcap);
      free(b->wbuf);
    }
    b->wbuf = nb;
    b->wcap = nc;
  }
  uint8_t *w = b->wbuf + b->wlen;
  w[0] = (uint8_t)(len >> 24);
  w[1] = (uint8_t)(len >> 16);
  w[2] = (uint8_t)(len >> 8);
  w[3] = (uint8_t)len;
  memcpy(w + 4, s, len);
  b->wlen += 4 + len;
  OPENSSL_cleanse(s, len);
  free(s);
  flush(b);
  return 0;
}

static void pump(fr_pool *p);

static void assign(fr_box *b, fr_run *r) {
  b->state = B_BUSY;
  b->run = r;
  r->box = b;
  json_t *payload = r->payload ? r->payload : json_null();
  r->payload = NULL; /* the frame takes it; plaintext kept no longer than needed */
  fr_run_started(r);
  if (send_frame(b, json_pack("{s:s,s:s,s:o}", "t", "run", "id", r->id, "payload", payload)) < 0)
    box_close(b, "the run could not be sent");
}

typedef struct fr_call {
  fr_box *box;
  json_int_t seq;
} fr_call;

static void on_call_done(void *arg, int status, json_t *data) {
  fr_call *c = arg;
  fr_box *b = c->box;
  if (b->state != B_DEAD && !b->st->stopping) {
    json_t *reply = status == 0 ? json_pack("{s:s,s:I,s:b,s:o}", "t", "reply", "seq", c->seq, "ok", 1, "data", data)
                                : json_pack("{s:s,s:I,s:b,s:s}", "t", "reply", "seq", c->seq, "ok", 0, "error",
                                            status == EVS_CRYPTO_E_DECRYPT || status == EVS_CRYPTO_E_INVALID
                                                ? "decryption-error: a value does not decrypt with this app's keys"
                                                : "the enclave could not serve the call");
    if (status != 0) json_decref(data);
    send_frame(b, reply);
  } else {
    json_decref(data);
  }
  box_unref(b);
  free(c);
}

static void fail_queued(fr_pool *p, const char *status, json_t *error, int http, const char *code,
                        const char *detail) {
  fr_run *r;
  while ((r = queue_pop(p))) {
    r->pool = NULL;
    fr_run_finish(r, status, NULL, error ? json_incref(error) : NULL, http, code, detail);
  }
}

static void on_frame(fr_box *b, const uint8_t *data, size_t len) {
  json_t *f = json_loadb((const char *)data, len, 0, NULL);
  const char *t = json_string_value(json_object_get(f, "t"));
  if (!t) {
    json_decref(f);
    box_close(b, "a malformed frame");
    return;
  }
  fr_state *st = b->st;
  if (strcmp(t, "ready") == 0 && b->state == B_STARTING) {
    if (b->start_timer) st->h->timer_free(b->start_timer);
    b->start_timer = NULL;
    b->state = B_IDLE;
    b->idle_since = fr_now_ms();
    int warmed = b->prewarm;
    if (warmed) st->h->counter_add(st->p, "function_prewarmed", 1);
    b->prewarm = 0;
    fr_run *r = queue_pop(b->pool);
    if (r) {
      if (warmed) r->cold = 1; /* it waited for this box's start all the same */
      r->pool = NULL;
      assign(b, r);
    }
  } else if (strcmp(t, "fail") == 0 && b->state == B_STARTING) {
    json_t *err = json_object_get(f, "error");
    if (!json_is_object(err)) err = NULL;
    json_t *e = err ? json_incref(err) : json_pack("{s:s,s:s}", "message", "The handler could not be loaded", "stack", "");
    fr_pool *p = b->pool;
    box_close(b, NULL);
    fail_queued(p, "failure", e, 0, NULL, NULL);
    json_decref(e);
  } else if (strcmp(t, "log") == 0 && b->run) {
    const char *stream = json_string_value(json_object_get(f, "stream"));
    json_t *text = json_object_get(f, "text");
    if (json_is_string(text))
      fr_run_log(b->run, stream && strcmp(stream, "stderr") == 0 ? "stderr" : "stdout", json_string_value(text),
                 json_string_length(text));
  } else if (strcmp(t, "call") == 0 && b->run) {
    const char *op = json_string_value(json_object_get(f, "op"));
    json_t *seq = json_object_get(f, "seq");
    fr_call *c = calloc(1, sizeof *c);
    if (!op || !json_is_integer(seq) || (strcmp(op, "encrypt") != 0 && strcmp(op, "decrypt") != 0) || !c) {
      free(c);
      json_decref(f);
      box_close(b, "a malformed call");
      return;
    }
    c->box = b;
    c->seq = json_integer_value(seq);
    b->refs++;
    json_t *d = json_object_get(f, "data");
    fr_context_crypto(st, b->run->app, strcmp(op, "encrypt") == 0, json_incref(d ? d : json_null()), on_call_done, c);
  } else if (strcmp(t, "result") == 0 && b->run) {
    fr_run *r = b->run;
    b->run = NULL;
    r->box = NULL;
    b->state = B_IDLE;
    b->idle_since = fr_now_ms();
    if (json_is_true(json_object_get(f, "ok"))) {
      json_t *res = json_object_get(f, "result");
      fr_run_finish(r, "success", json_incref(res ? res : json_null()), NULL, 0, NULL, NULL);
    } else {
      json_t *err = json_object_get(f, "error");
      json_t *m = json_object_get(err, "message"), *sk = json_object_get(err, "stack");
      json_t *e = json_object();
      json_object_set_new(e, "message", json_is_string(m) ? json_incref(m) : json_string("The function failed"));
      json_object_set_new(e, "stack", json_is_string(sk) ? json_incref(sk) : json_string(""));
      fr_run_finish(r, "failure", NULL, e, 0, NULL, NULL);
    }
    if (b->state == B_IDLE) pump(b->pool);
  } else {
    json_decref(f);
    box_close(b, "an unexpected frame");
    return;
  }
  json_decref(f);
}

static void on_readable(fr_box *b) {
  for (;;) {
    if (b->rcap - b->rlen < 65536) {
      size_t nc = b->rcap ? b->rcap * 2 : 131072;
      if (nc > FRAME_MAX + 65536 + 4) nc = FRAME_MAX + 65536 + 4;
      if (nc <= b->rcap) {
        box_close(b, "a frame over 32 MiB");
        return;
      }
      uint8_t *nb = realloc(b->rbuf, nc);
      if (!nb) {
        box_close(b, "out of memory");
        return;
      }
      b->rbuf = nb;
      b->rcap = nc;
    }
    ssize_t n = recv(b->fd, b->rbuf + b->rlen, b->rcap - b->rlen, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      box_close(b, "the box closed its channel");
      return;
    }
    b->rlen += (size_t)n;
    size_t off = 0;
    while (b->state != B_DEAD && b->rlen - off >= 4) {
      const uint8_t *p = b->rbuf + off;
      uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
      if (len > FRAME_MAX) {
        box_close(b, "a frame over 32 MiB");
        return;
      }
      if (b->rlen - off - 4 < len) break;
      on_frame(b, p + 4, len); /* on_poll's reference keeps b alive through it */
      off += 4 + len;
      if (b->state == B_DEAD) return;
    }
    memmove(b->rbuf, b->rbuf + off, b->rlen - off);
    b->rlen -= off;
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  fr_box *b = h->data;
  if (status < 0) {
    box_close(b, "the channel failed");
    return;
  }
  b->refs++; /* whatever a frame does (box_close included), b lives until we are done */
  if (events & UV_READABLE) on_readable(b);
  int dead = b->state == B_DEAD;
  if (!dead && (events & UV_WRITABLE)) flush(b);
  box_unref(b);
}

static void poll_update(fr_box *b) {
  if (!b->poll || b->state == B_DEAD) return;
  int ev = UV_READABLE | (b->wlen ? UV_WRITABLE : 0);
  if (ev != b->poll_events) {
    b->poll_events = ev;
    uv_poll_start(b->poll, ev, on_poll);
  }
}

/* ---- start and end ----------------------------------------------------------------------- */

static void on_reap_box(void *arg) {
  fr_box *b = arg;
  fr_state *st = b->st;
  st->h->timer_free(b->reap_timer);
  b->reap_timer = NULL;
  if (b->h) st->h->helper_stop(b->h);
  b->h = NULL;
  box_unref(b);
}

/* Ends a box: its run (if any, and not detached by a timeout) fails; the pool forgets it; the
 * helper is stopped on a later loop turn (never from inside its own callback). */
static void box_close(fr_box *b, const char *why) {
  if (b->state == B_DEAD) return;
  fr_state *st = b->st;
  int was_starting = b->state == B_STARTING || b->state == B_PREP;
  b->state = B_DEAD;
  if (b->h) st->h->helper_kill(b->h, SIGKILL);
  if (b->poll) {
    uv_poll_stop(b->poll);
    uv_close((uv_handle_t *)b->poll, (uv_close_cb)(void (*)(void))free);
    b->poll = NULL;
  }
  if (b->fd >= 0) close(b->fd);
  b->fd = -1;
  fr_egress_close(b->egress);
  b->egress = NULL;
  if (b->start_timer) st->h->timer_free(b->start_timer);
  b->start_timer = NULL;
  fr_pool *p = b->pool;
  for (fr_box **pp = &p->boxes; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      p->nboxes--;
      break;
    }
  if (why) st->h->log(st->p, NULL, EVS_LOG_WARN, "function %s (app %s): box ended: %s", p->name, p->app, why);
  fr_run *r = b->run;
  b->run = NULL;
  if (r) {
    r->box = NULL;
    fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The function's process ended before the run completed");
  }
  if (was_starting && why && !st->stopping)
    fail_queued(p, NULL, NULL, 503, "function-not-ready-error", "The function could not be started; retry in a few moments");
  if (st->stopping) {
    if (b->h) st->h->helper_stop(b->h);
    b->h = NULL;
    box_unref(b);
    return;
  }
  b->reap_timer = st->h->timer_start(st->p, 0, 0, on_reap_box, b);
  if (!b->reap_timer) box_unref(b); /* the helper is stopped at unload */
  if (p->qhead) pump(p);
}

static void on_helper(void *arg, evs_helper *h, const evs_helper_event *ev) {
  (void)h;
  fr_box *b = arg;
  if (ev->type == EVS_HELPER_EXITED || ev->type == EVS_HELPER_FAILED) {
    char why[96];
    if (ev->type == EVS_HELPER_FAILED) snprintf(why, sizeof why, "it could not start (%s)", strerror(-ev->error));
    else if (ev->signal) snprintf(why, sizeof why, "evs-fnbox was killed by signal %d", ev->signal);
    else snprintf(why, sizeof why, "evs-fnbox exited with status %d", ev->exit_code);
    box_close(b, why);
  }
}

static void on_start_timeout(void *arg) {
  fr_box *b = arg;
  b->st->h->timer_free(b->start_timer);
  b->start_timer = NULL;
  box_close(b, "it did not become ready within start_timeout");
}

static void spawn(fr_box *b) {
  fr_state *st = b->st;
  fr_pool *p = b->pool;
  const char *runtime = json_string_value(json_object_get(p->fn, "runtime"));
  const char *handler = json_string_value(json_object_get(p->fn, "handler"));
  int node = runtime && strcmp(runtime, "node") == 0;
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%" PRId64, st->tmp_size);
  const char *argv[] = {st->fnbox, "--runtime", node ? "node" : "python", "--interpreter",
                        node ? st->node : st->python, "--code", b->dir, "--handler", handler ? handler : "",
                        "--tmp-size", tmp, NULL, NULL, NULL};
  if (st->egress_on) {
    char label[160];
    snprintf(label, sizeof label, "%s/%s", p->app, p->name);
    b->egress = fr_egress_open(st, json_object_get(p->fn, "outboundAllowlist"), label);
    if (!b->egress) {
      box_close(b, "its egress socket could not be made (egress_dir too long or not writable?)");
      return;
    }
    argv[11] = "--egress";
    argv[12] = fr_egress_path(b->egress);
  }
  /* Memory without a delegated cgroup: Python under RLIMIT_AS (a MemoryError, the box lives
   * on); V8 cannot start under an address-space limit, so Node gets a heap limit instead,
   * unless the Function's environment sets NODE_OPTIONS itself. */
  char heap[64];
  if (node && !json_object_get(b->env, "NODE_OPTIONS")) {
    snprintf(heap, sizeof heap, "--max-old-space-size=%lld", (long long)(st->memory_max / 4 * 3 >> 20));
    json_object_set_new(b->env, "NODE_OPTIONS", json_string(heap));
  }
  size_t n = json_object_size(b->env), i = 0;
  char **envp = calloc(n + 1, sizeof *envp);
  const char *k;
  json_t *v;
  json_object_foreach(b->env, k, v) {
    const char *s = json_string_value(v);
    size_t len = strlen(k) + 1 + (s ? strlen(s) : 0) + 1;
    if (envp && (envp[i] = malloc(len))) snprintf(envp[i++], len, "%s=%s", k, s ? s : "");
  }
  evs_helper_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.size = sizeof spec;
  spec.path = st->fnbox;
  spec.argv = argv;
  spec.envp = (const char *const *)envp;
  spec.sandbox = "fnbox";
  spec.fd = 3;
  spec.flags = EVS_HELPER_NO_RESTART;
  spec.cgroup_memory_max = (uint64_t)st->memory_max;
  if (!node && st->python_rlimit_as) spec.rlimit_as = (uint64_t)st->memory_max;
  spec.cgroup_pids_max = 256;
  int rc = envp ? st->h->helper_spawn(st->p, &spec, on_helper, b, &b->h) : -ENOMEM;
  for (size_t j = 0; envp && j < i; j++) {
    OPENSSL_cleanse(envp[j], strlen(envp[j]));
    free(envp[j]);
  }
  free(envp);
  json_decref(b->env); /* jansson's copies of the plaintext cannot be wiped; dropped at once */
  b->env = NULL;
  if (rc < 0) {
    b->h = NULL;
    char why[160];
    snprintf(why, sizeof why, "helper_spawn of %s failed: %s", st->fnbox, strerror(-rc));
    box_close(b, why);
    return;
  }
  int fd = st->h->helper_fd(b->h);
  b->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  if (b->fd < 0 || fcntl(b->fd, F_SETFL, fcntl(b->fd, F_GETFL) | O_NONBLOCK) < 0 || !(b->poll = malloc(sizeof *b->poll)) ||
      uv_poll_init((uv_loop_t *)st->loop, b->poll, b->fd) < 0) {
    free(b->poll);
    b->poll = NULL;
    box_close(b, "its channel could not be watched");
    return;
  }
  b->poll->data = b;
  b->state = B_STARTING;
  poll_update(b);
  /* A pre-warmed box is counted as function_prewarmed once ready: no run waits for it. */
  if (!b->prewarm) st->h->counter_add(st->p, "function_cold_starts", 1);
}

static void on_env_decrypted(void *arg, int status, json_t *data) {
  fr_box *b = arg;
  if (b->state == B_DEAD || b->st->stopping) {
    json_decref(data);
    box_unref(b);
    return;
  }
  if (status < 0) {
    json_decref(data);
    box_close(b, "the environment's secrets could not be decrypted (is the app unlocked?)");
    box_unref(b);
    return;
  }
  const char *k;
  json_t *v;
  json_object_foreach(data, k, v) {
    if (json_is_string(v)) json_object_set(b->env, k, v);
    else {
      char *s = json_dumps(v, JSON_ENCODE_ANY);
      if (s) json_object_set_new(b->env, k, json_string(s));
      free(s);
    }
  }
  json_decref(data);
  spawn(b);
  box_unref(b);
}

static void on_env(void *arg, int status, const uint8_t *v, size_t len) {
  fr_box *b = arg;
  if (b->state == B_DEAD || b->st->stopping) {
    box_unref(b);
    return;
  }
  if (status < 0 && status != -ENOENT) {
    box_close(b, "the environment could not be read from the store");
    box_unref(b);
    return;
  }
  json_t *env = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : NULL;
  json_t *secrets = json_object();
  b->env = json_object();
  const char *k;
  json_t *e;
  json_object_foreach(env, k, e) {
    json_t *val = json_object_get(e, "value");
    if (!json_is_string(val)) continue;
    if (json_is_true(json_object_get(e, "secret"))) json_object_set(secrets, k, val);
    else json_object_set(b->env, k, val);
  }
  json_decref(env);
  if (json_object_size(secrets) == 0) {
    json_decref(secrets);
    spawn(b);
    box_unref(b);
    return;
  }
  fr_context_crypto(b->st, b->pool->app, 0, secrets, on_env_decrypted, b); /* keeps the reference */
}

static void load_env(fr_box *b) {
  char key[512];
  snprintf(key, sizeof key, "env/%s/%s", b->pool->app, b->pool->name);
  b->refs++;
  if (b->st->h->store_get(b->st->p, key, on_env, b) < 0) {
    box_unref(b);
    box_close(b, "the store is unavailable");
  }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  remove(path);
  return 0;
}

/* rm -r, not following symlinks (there are none in an unpacked archive anyway). */
void fr_rm_tree(const char *dir) {
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void on_code(void *arg, int status, const uint8_t *v, size_t len) {
  fr_box *b = arg;
  fr_state *st = b->st;
  if (b->state == B_DEAD || st->stopping) {
    box_unref(b);
    return;
  }
  if (status < 0) {
    box_close(b, status == -ENOENT ? "its code is not in the store" : "the store is unavailable");
    box_unref(b);
    return;
  }
  char tmp[4500], err[300];
  snprintf(tmp, sizeof tmp, "%s.tmp-%d", b->dir, (int)getpid());
  fr_rm_tree(tmp);
  int rc = evs__fn_archive_unpack(v, len, (uint64_t)st->max_code * 8, tmp, err, sizeof err);
  if (rc == 0 && rename(tmp, b->dir) < 0 && errno != EEXIST && errno != ENOTEMPTY) rc = -errno;
  fr_rm_tree(tmp); /* another worker's copy won the rename: ours goes */
  if (rc < 0) {
    char why[400];
    snprintf(why, sizeof why, "its code could not be unpacked: %s", err[0] ? err : strerror(-rc));
    box_close(b, why);
    box_unref(b);
    return;
  }
  load_env(b);
  box_unref(b);
}

static int mkdirs(const char *path) {
  char buf[4400];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *s = buf + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) return -errno;
    *s = '/';
  }
  return 0;
}

static int box_start(fr_pool *p) {
  fr_state *st = p->st;
  fr_box *b = calloc(1, sizeof *b);
  if (!b) return -ENOMEM;
  st->live++;
  b->st = st;
  b->pool = p;
  b->refs = 1;
  b->fd = -1;
  b->state = B_PREP;
  b->prewarm = p->warming;
  p->warming = 0;
  b->next = p->boxes;
  p->boxes = b;
  p->nboxes++;
  snprintf(b->dir, sizeof b->dir, "%s/%s/%s/%" PRId64, st->code_dir_base, p->app, p->name, p->version);
  b->start_timer = st->h->timer_start(st->p, (uint64_t)st->start_timeout_ms, 0, on_start_timeout, b);
  struct stat sb;
  if (stat(b->dir, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    load_env(b);
    return 0;
  }
  mkdirs(b->dir);
  char key[512];
  snprintf(key, sizeof key, "code/%s/%s/%" PRId64, p->app, p->name, p->version);
  b->refs++;
  if (st->h->store_get(st->p, key, on_code, b) < 0) {
    box_unref(b);
    box_close(b, "the store is unavailable");
  }
  return 0;
}

static void pump(fr_pool *p) {
  fr_state *st = p->st;
  if (st->stopping) return;
  for (;;) {
    if (!p->qhead) return;
    fr_box *idle = NULL;
    size_t starting = 0, queued = 0;
    for (fr_box *b = p->boxes; b; b = b->next) {
      if (b->state == B_IDLE && !idle) idle = b;
      if (b->state == B_PREP || b->state == B_STARTING) starting++;
    }
    if (idle) {
      fr_run *r = queue_pop(p);
      r->pool = NULL;
      assign(idle, r);
      continue;
    }
    for (fr_run *r = p->qhead; r; r = r->next_queued) queued++;
    if (starting >= queued || p->nboxes >= (size_t)st->pool_max) return;
    p->qhead->cold = 1;
    if (box_start(p) < 0) return;
  }
}

/* The pool of (app, name, the record's version and environment version); made if absent. */
static fr_pool *pool_get(fr_state *st, const char *app, const char *name, json_t *fn) {
  int64_t ver = json_integer_value(json_object_get(fn, "version"));
  int64_t envv = json_integer_value(json_object_get(fn, "envVersion"));
  fr_pool *p = st->pools;
  while (p && !(p->version == ver && p->env_version == envv && strcmp(p->app, app) == 0 &&
                strcmp(p->name, name) == 0))
    p = p->next;
  if (!p) {
    if (!(p = calloc(1, sizeof *p))) return NULL;
    p->st = st;
    snprintf(p->app, sizeof p->app, "%s", app);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->version = ver;
    p->env_version = envv;
    p->fn = json_incref(fn);
    p->next = st->pools;
    st->pools = p;
  }
  return p;
}

int fr_pool_warm(fr_state *st, const char *app, const char *name, json_t *fn) {
  if (st->stopping || st->pool_max < 1) return 0;
  fr_pool *p = pool_get(st, app, name, fn);
  if (!p) return -ENOMEM;
  if (p->nboxes > 0) return 0; /* one box is all a pre-warm makes: runs grow the pool */
  p->warming = 1;
  int rc = box_start(p);
  p->warming = 0;
  return rc;
}

int fr_pool_submit(fr_state *st, fr_run *r) {
  fr_pool *p = pool_get(st, r->app, r->name, r->fn);
  if (!p) return -ENOMEM;
  r->pool = p;
  r->next_queued = NULL;
  if (p->qtail) p->qtail->next_queued = r;
  else p->qhead = r;
  p->qtail = r;
  pump(p);
  return 0;
}

void fr_box_abandon(fr_run *r) {
  if (r->pool) {
    queue_remove(r->pool, r);
    r->pool = NULL;
  }
  fr_box *b = r->box;
  if (!b) return;
  b->run = NULL;
  r->box = NULL;
  box_close(b, NULL); /* SIGKILL: the whole box */
}

void fr_pools_reap(fr_state *st) {
  int64_t now = fr_now_ms();
  for (fr_pool *p = st->pools, *np; p; p = np) {
    np = p->next;
    for (fr_box *b = p->boxes, *nb; b; b = nb) {
      nb = b->next;
      if (b->state == B_IDLE && now - b->idle_since >= st->idle_ms) box_close(b, NULL);
    }
    if (!p->boxes && !p->qhead) pool_free(p);
  }
}

void fr_pools_free(fr_state *st) {
  while (st->pools) {
    fr_pool *p = st->pools;
    while (p->boxes) box_close(p->boxes, NULL);
    fail_queued(p, NULL, NULL, 503, "function-not-ready-error", "The server is stopping; retry");
    pool_free(p);
  }
}
