/*
 * ep_client.c: framing and deadlines of the connection to the enclave process (see
 * ep_client.h); the host starts and supervises the process itself (a helper, ABI 1.7).
 *
 * I/O uses a uv_poll_t on the non-blocking socket with our own read buffer and write queue
 * rather than a uv_pipe_t: libuv calls a pipe's write callbacks (UV_ECANCELED) when the handle
 * closes, and the host closes this plugin's shared object right after fini, before the loop
 * runs again, so no callback into this file may outlive fini. A poll handle has no request
 * callbacks, and every handle here is closed with libc's free() as its close callback
 * (close_free): that function stays mapped after the plugin is unloaded, and it is all a close
 * needs, since the handles are allocated on their own.
 */
#include "ep_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "evserver/evs_plugin.h"
#include "evs_enclave_proto.h"

#define EP_MSG_INITIAL 256

/* free() as a close callback: uv_close_cb takes a uv_handle_t *, which free accepts. */
#define close_free ((uv_close_cb)(void (*)(void))free)

/* ---- messages ----------------------------------------------------------------------------- */

void ep_msg_init(ep_msg *m, uint16_t op) {
  memset(m, 0, sizeof *m);
  m->op = op;
  m->cap = EP_MSG_INITIAL;
  m->buf = malloc(m->cap);
  if (!m->buf) m->failed = 1;
  m->len = 4 + EVS_EP_HEADER_LEN - 4; /* header space; "length" included */
}

void ep_msg_add(ep_msg *m, const void *data, size_t len) { ep_msg_add2(m, data, len, NULL, 0); }

/* Requests carry plaintext to encrypt and replies the plaintext decrypted: their buffers are
 * wiped before they are freed or moved, never left in freed memory. */
static void wipe_free(void *buf, size_t len) {
  if (!buf) return;
  explicit_bzero(buf, len);
  free(buf);
}

/* realloc, wiping the old block: grows buf (len bytes used) to cap. NULL on failure (buf kept). */
static uint8_t *grow_wiped(uint8_t *buf, size_t len, size_t cap) {
  uint8_t *b = malloc(cap);
  if (!b) return NULL;
  if (len) memcpy(b, buf, len);
  wipe_free(buf, len);
  return b;
}

void ep_msg_add2(ep_msg *m, const void *data, size_t len, const void *data2, size_t len2) {
  if (m->failed) return;
  if (len2 > EVS_EP_MAX_MESSAGE) {
    m->failed = 1;
    return;
  }
  len += len2;
  if (len > EVS_EP_MAX_MESSAGE || m->len + 4 + len > EVS_EP_MAX_MESSAGE + 4 ||
      m->nitems >= EVS_EP_MAX_ITEMS) {
    m->failed = 1;
    return;
  }
  if (m->len + 4 + len > m->cap) {
    size_t cap = m->cap;
    while (cap < m->len + 4 + len) cap *= 2;
    uint8_t *b = grow_wiped(m->buf, m->len, cap);
    if (!b) {
      m->failed = 1;
      return;
    }
    m->buf = b;
    m->cap = cap;
  }
  evs_ep_put_u32(m->buf + m->len, (uint32_t)len);
  if (len - len2) memcpy(m->buf + m->len + 4, data, len - len2);
  if (len2) memcpy(m->buf + m->len + 4 + len - len2, data2, len2);
  m->len += 4 + len;
  m->nitems++;
}

void ep_msg_add_str(ep_msg *m, const char *s) { ep_msg_add(m, s, strlen(s)); }

int ep_msg_add_items(ep_msg *m, const uint8_t *p, size_t len) {
  size_t n = 0, off = 0;
  while (off < len) {
    if (len - off < 4 || n >= EVS_EP_MAX_ITEMS) return -EINVAL;
    uint32_t l = evs_ep_get_u32(p + off);
    if (l > len - off - 4) return -EINVAL;
    off += 4 + (size_t)l;
    n++;
  }
  if (m->failed) return 0;
  if (len > EVS_EP_MAX_MESSAGE || m->len + len > EVS_EP_MAX_MESSAGE + 4 ||
      m->nitems + n > EVS_EP_MAX_ITEMS) {
    m->failed = 1;
    return 0;
  }
  if (m->len + len > m->cap) {
    size_t cap = m->cap;
    while (cap < m->len + len) cap *= 2;
    uint8_t *b = grow_wiped(m->buf, m->len, cap);
    if (!b) {
      m->failed = 1;
      return 0;
    }
    m->buf = b;
    m->cap = cap;
  }
  if (len) memcpy(m->buf + m->len, p, len);
  m->len += len;
  m->nitems += (uint32_t)n;
  return 0;
}

void ep_msg_done(ep_msg *m) {
  wipe_free(m->buf, m->len);
  memset(m, 0, sizeof *m);
  m->failed = 1;
}

int ep_items_parse(const uint8_t *p, size_t len, ep_item *ret, size_t max) {
  size_t n = 0, off = 0;
  while (off < len) {
    if (len - off < 4 || n >= max) return -EINVAL;
    uint32_t l = evs_ep_get_u32(p + off);
    off += 4;
    if (l > len - off) return -EINVAL;
    ret[n].data = p + off;
    ret[n].len = l;
    n++;
    off += l;
  }
  return (int)n;
}

/* ---- the client --------------------------------------------------------------------------- */

typedef struct ep_pending {
  struct ep_pending *next;
  uint32_t id;
  uint64_t deadline;
  ep_reply_fn cb;
  void *arg;
} ep_pending;

typedef struct ep_out {
  struct ep_out *next;
  uint8_t *buf;
  size_t len, off;
} ep_out;

struct ep_client {
  uv_loop_t *loop;
  int adopted;         /* the current connection is to a predecessor's process */
  int enclave_pid;     /* from HELLO */
  uint64_t timeout_ms;
  ep_up_fn on_up;
  void *on_up_arg;
  void (*on_down)(void *arg, size_t failed);

  int fd;              /* our connection, -1 when down */
  int ready;           /* HELLO answered */
  uint64_t starts;
  uv_poll_t *poll;     /* NULL when down */
  int poll_events;
  uv_timer_t *sweep;   /* deadlines of pending requests */

  uint8_t *in;         /* read buffer */
  size_t in_len, in_cap;
  ep_out *out_head, *out_tail;
  ep_pending *pending; /* oldest first: the enclave answers in order */
  ep_pending **pending_tail;
  uint32_t next_id;
  int freeing;
  uv_prepare_t *flusher; /* armed while calls wait: sends them all before the loop polls */
};

static size_t fail_all(ep_client *c) {
  /* Detach the list first: a callback may issue a new call, which then fails at once. */
  ep_pending *p = c->pending;
  size_t n = 0;
  c->pending = NULL;
  c->pending_tail = &c->pending;
  while (p) {
    n++;
    ep_pending *next = p->next;
    if (p->cb) p->cb(p->arg, EVS_ENOCRYPTO, NULL, 0);
    free(p);
    p = next;
  }
  return n;
}

/* Closes the connection and fails what waited on it. */
static size_t drop_conn(ep_client *c) {
  if (c->poll) {
    uv_poll_stop(c->poll);
    uv_close((uv_handle_t *)c->poll, close_free);
    c->poll = NULL;
  }
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
  c->ready = 0;
  while (c->out_head) {
    ep_out *o = c->out_head;
    c->out_head = o->next;
    wipe_free(o->buf, o->len);
    free(o);
  }
  c->out_tail = NULL;
  if (c->in) explicit_bzero(c->in, c->in_len);
  c->in_len = 0;
  c->adopted = 0;
  c->enclave_pid = 0;
  return fail_all(c);
}

/* The connection is gone (EOF, error, protocol violation, a missed deadline): fail closed and
 * tell the caller, who has the process (which is not trusted any more) killed and restarted. */
static void go_down(ep_client *c) {
  if (c->fd < 0) return;
  size_t failed = drop_conn(c);
  if (c->freeing) return;
  if (c->on_down) c->on_down(c->on_up_arg, failed);
}

static void update_poll(ep_client *c);
static void on_writable(ep_client *c);

static void dispatch(ep_client *c, const uint8_t *msg, size_t len) {
  /* msg starts at magic; len = bytes after the length field. */
  if (len < EVS_EP_HEADER_LEN - 4 || evs_ep_get_u32(msg) != EVS_EP_MAGIC ||
      evs_ep_get_u16(msg + 4) != EVS_EP_VERSION) {
    go_down(c);
    return;
  }
  uint32_t id = evs_ep_get_u32(msg + 8);
  int32_t status = (int32_t)evs_ep_get_u32(msg + 12);
  uint32_t nitems = evs_ep_get_u32(msg + 16);
  if (nitems > EVS_EP_MAX_ITEMS) {
    go_down(c);
    return;
  }
  ep_item *items = nitems ? calloc(nitems, sizeof *items) : NULL;
  if (nitems && !items) {
    go_down(c);
    return;
  }
  int n = ep_items_parse(msg + 20, len - 20, items, nitems);
  if (n < 0 || (uint32_t)n != nitems) {
    free(items);
    go_down(c);
    return;
  }
  ep_pending **pp = &c->pending, *p = NULL;
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->id == id) {
      p = *pp;
      *pp = p->next;
      if (!*pp) c->pending_tail = pp;
      break;
    }
  if (p) {
    if (status > 0) status = EVS_EP_E_PROTOCOL;
    if (p->cb) p->cb(p->arg, status, items, nitems);
    free(p);
  }
  free(items);
}

static void on_readable(ep_client *c) {
  for (;;) {
    if (c->in_cap - c->in_len < 65536) {
      size_t cap = c->in_cap ? c->in_cap * 2 : 131072;
      if (cap > EVS_EP_MAX_MESSAGE + 4 + 65536) cap = EVS_EP_MAX_MESSAGE + 4 + 65536;
      if (cap <= c->in_cap) { /* a message over the limit */
        go_down(c);
        return;
      }
      uint8_t *b = grow_wiped(c->in, c->in_len, cap);
      if (!b) {
        go_down(c);
        return;
      }
      c->in = b;
      c->in_cap = cap;
    }
    ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (r == 0) {
      go_down(c);
      return;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      go_down(c);
      return;
    }
    c->in_len += (size_t)r;
  }
  size_t off = 0;
  while (c->in_len - off >= 4) {
    uint32_t l = evs_ep_get_u32(c->in + off);
    if (l > EVS_EP_MAX_MESSAGE || l < EVS_EP_HEADER_LEN - 4) {
      go_down(c);
      return;
    }
    if (c->in_len - off - 4 < l) break;
    dispatch(c, c->in + off + 4, l);
    if (c->fd < 0) return; /* went down while dispatching */
    off += 4 + l;
  }
  if (c->fd < 0) return;
  if (off) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    explicit_bzero(c->in + c->in_len, off); /* the replies just handled */
  }
  /* Give back a large buffer once a big message (a file) has gone through. */
  if (c->in_len == 0 && c->in_cap > (1u << 20)) {
    wipe_free(c->in, c->in_cap);
    c->in = NULL;
    c->in_cap = 0;
  }
}

/* Sends as much of the queue as the socket takes, up to 64 messages per system call. */
static void on_writable(ep_client *c) {
  while (c->out_head) {
    struct iovec iov[64];
    size_t n = 0, want = 0;
    for (ep_out *o = c->out_head; o && n < 64; o = o->next, n++) {
      iov[n].iov_base = o->buf + o->off;
      iov[n].iov_len = o->len - o->off;
      want += iov[n].iov_len;
    }
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
    ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      go_down(c);
      return;
    }
    for (size_t left = (size_t)w; left && c->out_head;) {
      ep_out *o = c->out_head;
      if (left < o->len - o->off) {
        o->off += left;
        break;
      }
      left -= o->len - o->off;
      c->out_head = o->next;
      if (!c->out_head) c->out_tail = NULL;
      wipe_free(o->buf, o->len);
      free(o);
    }
    if ((size_t)w < want) break; /* the socket is full: wait for POLLOUT */
  }
  update_poll(c);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  ep_client *c = h->data;
  if (status < 0) {
    go_down(c);
    return;
  }
  if (events & UV_READABLE) {
    on_readable(c);
    if (c->fd < 0) return;
  }
  if (events & (UV_WRITABLE | UV_DISCONNECT)) on_writable(c);
}

static void update_poll(ep_client *c) {
  if (!c->poll) return;
  int ev = UV_READABLE | UV_DISCONNECT | (c->out_head ? UV_WRITABLE : 0);
  if (ev != c->poll_events) {
    c->poll_events = ev;
    if (uv_poll_start(c->poll, ev, on_poll) < 0) go_down(c);
  }
}

/* The value of " key=value" in HELLO's text, or an empty string. */
static void hello_field(const ep_item *text, const char *key, char *out, size_t cap) {
  out[0] = 0;
  size_t kl = strlen(key);
  for (size_t i = 0; i + kl + 1 < text->len; i++) {
    if (text->data[i] != ' ' || memcmp(text->data + i + 1, key, kl) != 0 ||
        text->data[i + 1 + kl] != '=')
      continue;
    size_t j = i + 2 + kl, n = 0;
    while (j < text->len && text->data[j] != ' ' && n + 1 < cap) out[n++] = (char)text->data[j++];
    out[n] = 0;
    return;
  }
}

static void on_hello(void *arg, int status, const ep_item *items, size_t nitems) {
  ep_client *c = arg;
  if (status != 0) return; /* the connection went down, or a refusal: the sweep will see it */
  char pid[16] = "";
  if (nitems >= 2) hello_field(&items[1], "pid", pid, sizeof pid);
  c->enclave_pid = atoi(pid);
  c->starts++;
  c->ready = 1;
  if (c->on_up) c->on_up(c->on_up_arg);
}

static void on_flush(uv_prepare_t *h) {
  ep_client *c = h->data;
  uv_prepare_stop(h);
  if (c->fd >= 0 && c->out_head) on_writable(c);
}

static int enqueue(ep_client *c, uint8_t *buf, size_t len) {
  ep_out *o = calloc(1, sizeof *o);
  if (!o) return -ENOMEM;
  o->buf = buf;
  o->len = len;
  if (c->out_tail)
    c->out_tail->next = o;
  else
    c->out_head = o;
  c->out_tail = o;
  /* Sent just before the loop next waits for events: the calls that this turn's callbacks
   * make (many requests', under load) go out in one system call and wake the enclave once. */
  if (!uv_is_active((uv_handle_t *)c->flusher)) uv_prepare_start(c->flusher, on_flush);
  return 0;
}

static int send_msg(ep_client *c, ep_msg *m, ep_reply_fn cb, void *arg) {
  if (m->failed) {
    ep_msg_done(m);
    return -E2BIG;
  }
  if (c->fd < 0) {
    ep_msg_done(m);
    return EVS_ENOCRYPTO;
  }
  ep_pending *p = calloc(1, sizeof *p);
  if (!p) {
    ep_msg_done(m);
    return -ENOMEM;
  }
  uint32_t id = ++c->next_id ? c->next_id : ++c->next_id;
  evs_ep_put_u32(m->buf, (uint32_t)(m->len - 4));
  evs_ep_put_u32(m->buf + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(m->buf + 8, EVS_EP_VERSION);
  evs_ep_put_u16(m->buf + 10, m->op);
  evs_ep_put_u32(m->buf + 12, id);
  evs_ep_put_u32(m->buf + 16, 0);
  evs_ep_put_u32(m->buf + 20, m->nitems);
  p->id = id;
  p->cb = cb;
  p->arg = arg;
  p->deadline = uv_now(c->loop) + c->timeout_ms;
  uint8_t *buf = m->buf;
  size_t len = m->len;
  m->buf = NULL;
  ep_msg_done(m);
  if (enqueue(c, buf, len) < 0) {
    wipe_free(buf, len);
    free(p);
    return -ENOMEM;
  }
  if (c->fd < 0) { /* the write found the peer gone: fail_all already ran without p */
    free(p);
    return EVS_ENOCRYPTO;
  }
  *c->pending_tail = p;
  c->pending_tail = &p->next;
  return (int)id;
}

/* Sends ATTACH (one-way, request id 0) over via with fd: the enclave serves fd as a further
 * connection. One small frame in one sendmsg, so it never interleaves with other writes. */
static int attach_send(int via, int fd) {
  uint8_t f[EVS_EP_HEADER_LEN];
  evs_ep_put_u32(f, EVS_EP_HEADER_LEN - 4);
  evs_ep_put_u32(f + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(f + 8, EVS_EP_VERSION);
  evs_ep_put_u16(f + 10, EVS_EP_ATTACH);
  evs_ep_put_u32(f + 12, 0);
  evs_ep_put_u32(f + 16, 0);
  evs_ep_put_u32(f + 20, 0);
  struct iovec iov = {f, sizeof f};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cm;
  memset(&cm, 0, sizeof cm);
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                      .msg_controllen = sizeof cm.buf};
  struct cmsghdr *cmh = CMSG_FIRSTHDR(&mh);
  cmh->cmsg_level = SOL_SOCKET;
  cmh->cmsg_type = SCM_RIGHTS;
  cmh->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmh), &fd, sizeof fd);
  ssize_t n = sendmsg(via, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n == (ssize_t)sizeof f ? 0 : n < 0 ? -errno : -EIO;
}

/* A new connection to an enclave: via attaches it when >= 0. Returns our end, or -errno. */
static int new_conn(int via, int *ret_theirs) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  if (via >= 0) {
    int r = attach_send(via, sv[1]);
    close(sv[1]);
    if (r < 0) {
      close(sv[0]);
      return r;
    }
  } else {
    *ret_theirs = sv[1];
  }
  return sv[0];
}

/* Uses fd as the connection: polls it and says HELLO. */
static int connect_fd(ep_client *c, int fd) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  c->fd = fd;
  c->poll = calloc(1, sizeof *c->poll);
  if (!c->poll || uv_poll_init(c->loop, c->poll, c->fd) < 0) {
    free(c->poll);
    c->poll = NULL;
    go_down(c);
    return -ENOMEM;
  }
  c->poll->data = c;
  uv_unref((uv_handle_t *)c->poll); /* the enclave never keeps a worker's loop alive */
  c->poll_events = 0;
  update_poll(c);
  /* The first start runs in init, before the loop has run: its cached time may be seconds old
   * (a slow start of the worker), which would cut HELLO's deadline short. */
  uv_update_time(c->loop);
  ep_msg m;
  ep_msg_init(&m, EVS_EP_HELLO);
  int r = send_msg(c, &m, on_hello, c);
  return r < 0 ? r : 0;
}

int ep_client_attach(ep_client *c, int via, int adopted) {
  if (c->fd >= 0) go_down(c);
  int fd = new_conn(via, NULL);
  if (fd < 0) return fd;
  int r = connect_fd(c, fd);
  if (r == 0) c->adopted = adopted;
  return r;
}

void ep_client_detach(ep_client *c) { go_down(c); }

static void on_sweep(uv_timer_t *t) {
  ep_client *c = t->data;
  uint64_t now = uv_now(c->loop);
  int expired = 0;
  for (ep_pending *p = c->pending; p; p = p->next)
    if (p->deadline <= now) expired = 1;
  /* An enclave that stops answering is treated as dead: fail everything and restart it. */
  if (expired && c->fd >= 0) go_down(c);
}

int ep_client_new(uv_loop_t *loop, const ep_client_config *cfg, ep_client **ret) {
  ep_client *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->loop = loop;
  c->fd = -1;
  c->pending_tail = &c->pending;
  c->timeout_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms : 10000;
  c->on_up = cfg->on_up;
  c->on_up_arg = cfg->on_up_arg;
  c->on_down = cfg->on_down;
  c->sweep = calloc(1, sizeof *c->sweep);
  c->flusher = calloc(1, sizeof *c->flusher);
  if (!c->sweep || !c->flusher) {
    free(c->sweep);
    free(c->flusher);
    free(c);
    return -ENOMEM;
  }
  uv_timer_init(loop, c->sweep);
  uv_prepare_init(loop, c->flusher);
  c->sweep->data = c->flusher->data = c;
  uv_unref((uv_handle_t *)c->flusher);
  uv_unref((uv_handle_t *)c->sweep);
  uv_timer_start(c->sweep, on_sweep, 250, 250);
  *ret = c;
  return 0;
}

void ep_client_free(ep_client *c) {
  if (!c) return;
  c->freeing = 1;
  /* Closed with free() itself as the callback (see the top of the file). The process is the
   * host's: it ends, or stays for this worker's successor, without us. */
  if (c->poll) {
    uv_poll_stop(c->poll);
    uv_close((uv_handle_t *)c->poll, close_free);
    c->poll = NULL;
  }
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  uv_timer_stop(c->sweep);
  uv_close((uv_handle_t *)c->sweep, close_free);
  uv_prepare_stop(c->flusher);
  uv_close((uv_handle_t *)c->flusher, close_free);
  fail_all(c);
  while (c->out_head) {
    ep_out *o = c->out_head;
    c->out_head = o->next;
    wipe_free(o->buf, o->len);
    free(o);
  }
  wipe_free(c->in, c->in_cap);
  free(c);
}

int ep_client_call(ep_client *c, ep_msg *m, ep_reply_fn cb, void *arg) {
  int r = send_msg(c, m, cb, arg);
  return r < 0 ? r : 0;
}

int ep_client_ready(const ep_client *c) { return c->fd >= 0 && c->ready; }
int ep_client_pid(const ep_client *c) { return c->fd < 0 ? 0 : c->enclave_pid; }
uint64_t ep_client_starts(const ep_client *c) { return c->starts; }
int ep_client_adopted(const ep_client *c) { return c->fd >= 0 && c->adopted; }
