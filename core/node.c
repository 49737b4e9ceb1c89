/*
 * node.c: the worker's end of the node channel, the ABI's node_* services. A plugin in one
 * worker broadcasts a message to its own instances in the node's other workers; the master
 * relays it (master.c, relay_node) and tells the sender how many workers it reached; each
 * receiver answers once, and the sender's done callback runs when all have answered or at its
 * timeout. The enclave plugin uses it to unlock an app in every worker's enclave.
 *
 * Messages may carry secrets (an app token), so every buffer that held a payload is wiped once
 * the payload has been passed on, and nothing here logs a payload.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "log.h"
#include "node.h"
#include "plugin.h"
#include "worker.h"

struct evs_node_msg {
  uint32_t seq;
  int32_t origin;
  char plugin[64];
  struct evs_node_msg *next; /* unanswered messages, freed at stop */
};

typedef struct pending_bcast {
  struct pending_bcast *next;
  uint32_t seq;
  int expected; /* -1 until the master's COUNT arrives */
  size_t got, ok;
  evs_node_done_fn done;
  void *arg;
  uv_timer_t *timer;
} pending_bcast;

static uv_poll_t ctl_poll;
static int ctl_polling;
static pending_bcast *pending;
static evs_node_msg *unanswered;
static uint32_t next_seq;
static uint8_t rbuf[EVS__NODE_DGRAM_MAX];

static void timer_free_cb(uv_handle_t *h) { free(h); }

static void finish(pending_bcast *b) {
  for (pending_bcast **pp = &pending; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      break;
    }
  uv_timer_stop(b->timer);
  uv_close((uv_handle_t *)b->timer, timer_free_cb);
  size_t workers = b->expected > 0 ? (size_t)b->expected : 0;
  b->done(b->arg, workers, b->ok > workers ? workers : b->ok);
  free(b);
}

static void maybe_finish(pending_bcast *b) {
  if (b->expected >= 0 && b->got >= (size_t)b->expected) finish(b);
}

static void on_timeout(uv_timer_t *t) { finish(t->data); }

static pending_bcast *find(uint32_t seq) {
  for (pending_bcast *b = pending; b; b = b->next)
    if (b->seq == seq) return b;
  return NULL;
}

static int send_dgram(const void *buf, size_t len) {
  evs__worker *w = evs__w;
  if (w->ctl_fd < 0) return -ENOTCONN;
  ssize_t n = send(w->ctl_fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n == (ssize_t)len ? 0 : -errno;
}

static void deliver(const evs__node_hdr *h, const uint8_t *payload, size_t len) {
  evs__worker *w = evs__w;
  evs__plugin_rec *target = NULL;
  for (size_t i = 0; i < w->nplugins; i++)
    if (w->plugins[i].loaded && w->plugins[i].node_fn &&
        strncmp(w->plugins[i].name, h->plugin, sizeof h->plugin) == 0)
      target = &w->plugins[i];
  evs_node_msg *m = calloc(1, sizeof *m);
  if (!m) return; /* the sender counts it as failed at its timeout */
  m->seq = h->seq;
  m->origin = h->origin;
  memcpy(m->plugin, h->plugin, sizeof m->plugin);
  m->next = unanswered;
  unanswered = m;
  if (!target) {
    evs__node_reply(m, -ENOSYS);
    return;
  }
  target->node_fn(target->state, payload, len, m);
}

static void on_ctl(uv_poll_t *p, int status, int events) {
  evs__worker *w = evs__w;
  if (status < 0 || (events & UV_DISCONNECT)) {
    uv_poll_stop(p);
    return;
  }
  for (;;) {
    ssize_t n = recv(w->ctl_fd, rbuf, sizeof rbuf, MSG_DONTWAIT);
    if (n <= 0) {
      if (n == 0) uv_poll_stop(p); /* the master is gone */
      return;
    }
    evs__node_hdr h;
    if ((size_t)n < sizeof h) continue;
    memcpy(&h, rbuf, sizeof h);
    h.plugin[sizeof h.plugin - 1] = 0;
    if (h.type == EVS__NODE_BCAST) {
      deliver(&h, rbuf + sizeof h, (size_t)n - sizeof h);
      OPENSSL_cleanse(rbuf, (size_t)n);
    } else if (h.type == EVS__NODE_COUNT) {
      pending_bcast *b = find(h.seq);
      if (b && b->expected < 0) {
        b->expected = h.value < 0 ? 0 : h.value;
        maybe_finish(b);
      }
    } else if (h.type == EVS__NODE_REPLY) {
      pending_bcast *b = find(h.seq);
      if (b) {
        b->got++;
        if (h.value == 0) b->ok++;
        maybe_finish(b);
      }
    }
  }
}

int evs__node_start(evs__worker *w) {
  if (w->ctl_fd < 0) return 0;
  int r = uv_poll_init(w->loop, &ctl_poll, w->ctl_fd);
  if (r < 0) return r;
  ctl_polling = 1;
  /* Unref'd: the channel alone must not keep a draining worker's loop alive. */
  uv_unref((uv_handle_t *)&ctl_poll);
  return uv_poll_start(&ctl_poll, UV_READABLE | UV_DISCONNECT, on_ctl);
}

void evs__node_stop(evs__worker *w) {
  while (pending) {
    pending_bcast *b = pending;
    pending = b->next;
    uv_timer_stop(b->timer);
    uv_close((uv_handle_t *)b->timer, timer_free_cb);
    free(b);
  }
  while (unanswered) {
    evs_node_msg *m = unanswered;
    unanswered = m->next;
    free(m);
  }
  if (ctl_polling) {
    uv_close((uv_handle_t *)&ctl_poll, NULL);
    ctl_polling = 0;
  }
  if (w->ctl_fd >= 0) {
    close(w->ctl_fd);
    w->ctl_fd = -1;
  }
}

int evs__node_broadcast(evs__plugin_rec *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                        evs_node_done_fn done, void *arg) {
  evs__worker *w = evs__w;
  if (!msg || len == 0 || len > EVS_NODE_MSG_MAX || !done || timeout_ms == 0 ||
      timeout_ms > 60000)
    return -EINVAL;
  if (strlen(p->name) >= sizeof ((evs__node_hdr *)0)->plugin) return -ENAMETOOLONG;
  pending_bcast *b = calloc(1, sizeof *b);
  uv_timer_t *t = malloc(sizeof *t);
  if (!b || !t) {
    free(b);
    free(t);
    return -ENOMEM;
  }
  b->seq = ++next_seq;
  b->done = done;
  b->arg = arg;
  b->timer = t;
  b->expected = -1;
  uv_timer_init(w->loop, t);
  t->data = b;
  if (w->ctl_fd < 0) {
    /* No master (evserver -t, tests): nobody else to tell; done runs on the next turn. */
    b->expected = 0;
    timeout_ms = 0;
  } else {
    static uint8_t sbuf[EVS__NODE_DGRAM_MAX];
    evs__node_hdr h;
    memset(&h, 0, sizeof h);
    h.type = EVS__NODE_BCAST;
    h.seq = b->seq;
    h.origin = w->slot;
    strcpy(h.plugin, p->name);
    memcpy(sbuf, &h, sizeof h);
    memcpy(sbuf + sizeof h, msg, len);
    int r = send_dgram(sbuf, sizeof h + len);
    OPENSSL_cleanse(sbuf, sizeof h + len);
    if (r < 0) {
      uv_close((uv_handle_t *)t, timer_free_cb);
      free(b);
      return r;
    }
  }
  b->next = pending;
  pending = b;
  uv_timer_start(t, on_timeout, timeout_ms, 0);
  return 0;
}

void evs__node_reply(evs_node_msg *m, int status) {
  if (!m) return;
  for (evs_node_msg **pp = &unanswered; *pp; pp = &(*pp)->next)
    if (*pp == m) {
      *pp = m->next;
      break;
    }
  evs__node_hdr h;
  memset(&h, 0, sizeof h);
  h.type = EVS__NODE_REPLY;
  h.seq = m->seq;
  h.origin = m->origin;
  h.value = status;
  memcpy(h.plugin, m->plugin, sizeof h.plugin);
  if (send_dgram(&h, sizeof h) < 0)
    EVS_LOG_WARN("EVS-1507", "cannot answer a node message of plugin %s", m->plugin);
  free(m);
}

/* ---- kept descriptors (ABI keep_fd / kept_fd) ----------------------------------------------
 * The master holds them per rank and hands a rank's to each worker it forks for that rank
 * (master.c, spawn); here a plugin takes its own in init, and the rest are closed. */

static int kept_name_valid(const char *name) {
  size_t n = 0;
  for (; name && name[n]; n++) {
    char c = name[n];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return 0;
  }
  return n >= 1 && n <= 63;
}

int evs__node_keep_fd(evs__plugin_rec *p, const char *name, int fd) {
  evs__worker *w = evs__w;
  if (!kept_name_valid(name)) return -EINVAL;
  if (strlen(p->name) >= sizeof ((evs__node_hdr *)0)->plugin) return -ENAMETOOLONG;
  if (w->ctl_fd < 0) return -ENOTCONN;
  if (w->draining) return -EPERM; /* a successor of this rank already runs */
  evs__node_hdr h;
  memset(&h, 0, sizeof h);
  h.type = EVS__NODE_KEEP;
  strcpy(h.plugin, p->name);
  struct iovec iov[2] = {{&h, sizeof h}, {(void *)name, strlen(name)}};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cm;
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
  if (fd >= 0) {
    memset(&cm, 0, sizeof cm);
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof cm.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t n = sendmsg(w->ctl_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n == (ssize_t)(sizeof h + strlen(name)) ? 0 : n < 0 ? -errno : -EIO;
}

int evs__node_kept_fd(evs__plugin_rec *p, const char *name) {
  evs__worker *w = evs__w;
  if (!p->in_init) return -EPERM;
  if (!kept_name_valid(name)) return -EINVAL;
  for (size_t i = 0; i < w->nkept; i++) {
    evs__kept_fd *k = &w->kept[i];
    if (k->fd >= 0 && strcmp(k->plugin, p->name) == 0 && strcmp(k->name, name) == 0) {
      int fd = k->fd;
      k->fd = -1;
      return fd;
    }
  }
  return -ENOENT;
}

void evs__node_kept_close_rest(evs__worker *w) {
  for (size_t i = 0; i < w->nkept; i++)
    if (w->kept[i].fd >= 0) {
      close(w->kept[i].fd);
      w->kept[i].fd = -1;
    }
  w->nkept = 0;
}
