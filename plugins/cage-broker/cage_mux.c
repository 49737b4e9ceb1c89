/* cage_mux.c: the cage mux's frame codec and channel engine (cage_mux.h). */
#include "cage_mux.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CHANS 256
#define OUT_HIGH (256u * 1024)    /* stop reading channels while this much waits for the stream */
#define OUT_MAX (8u * 1024 * 1024) /* a peer that never reads: the engine dies instead of growing */
#define HEAD_MAX 4096              /* a CONNECT answer's head */

/* ---- codec ------------------------------------------------------------------------------ */

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int is_chan_type(uint8_t t) { return t >= CMUX_OPEN && t <= CMUX_CLOSE; }
static int is_ctrl_type(uint8_t t) { return t >= CMUX_HELLO && t <= CMUX_WHERE; }

long cmux_parse(const uint8_t *p, size_t n, cmux_frame *f) {
  if (n < CMUX_HDR) return 0;
  uint32_t len = get32(p);
  uint8_t type = p[4];
  uint32_t chan = get32(p + 5);
  if (len > CMUX_MAX_PAYLOAD) return -EPROTO;
  if (chan == 0 ? !is_ctrl_type(type) : !is_chan_type(type)) return -EPROTO;
  if (type == CMUX_DATA && len > CMUX_MAX_DATA) return -EPROTO;
  if (type == CMUX_OPEN && (len < 3 || len > 3 + 255)) return -EPROTO;
  if (type == CMUX_CREDIT && len != 4) return -EPROTO;
  if ((type == CMUX_SHUT || type == CMUX_CLOSE) && len != 0) return -EPROTO;
  if (n - CMUX_HDR < len) return 0;
  f->type = type;
  f->chan = chan;
  f->payload = p + CMUX_HDR;
  f->len = len;
  return (long)(CMUX_HDR + len);
}

void cmux_rd_init(cmux_rd *r, const uint8_t *p, size_t n) {
  r->p = p;
  r->n = n;
  r->bad = 0;
}

static const uint8_t *take(cmux_rd *r, size_t k) {
  if (r->bad || r->n < k) {
    r->bad = 1;
    return NULL;
  }
  const uint8_t *q = r->p;
  r->p += k;
  r->n -= k;
  return q;
}

int cmux_get_u8(cmux_rd *r, uint8_t *v) {
  const uint8_t *q = take(r, 1);
  if (!q) return -EPROTO;
  *v = q[0];
  return 0;
}

int cmux_get_u16(cmux_rd *r, uint16_t *v) {
  const uint8_t *q = take(r, 2);
  if (!q) return -EPROTO;
  *v = (uint16_t)(q[0] << 8 | q[1]);
  return 0;
}

int cmux_get_u32(cmux_rd *r, uint32_t *v) {
  const uint8_t *q = take(r, 4);
  if (!q) return -EPROTO;
  *v = get32(q);
  return 0;
}

int cmux_get_str(cmux_rd *r, const char **s, size_t *len) {
  uint16_t l;
  if (cmux_get_u16(r, &l) < 0) return -EPROTO;
  const uint8_t *q = take(r, l);
  if (!q) return -EPROTO;
  *s = (const char *)q;
  *len = l;
  return 0;
}

void cmux_get_rest(cmux_rd *r, const uint8_t **p, size_t *len) {
  *p = r->bad ? NULL : r->p;
  *len = r->bad ? 0 : r->n;
  r->p += r->bad ? 0 : r->n;
  r->n = 0;
}

int cmux_buf_put(cmux_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (b->max && b->len + n > b->max) return -ENOBUFS;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    uint8_t *q = malloc(cap);
    if (!q) return -ENOMEM;
    if (b->len) memcpy(q, b->p, b->len);
    if (b->p) {
      explicit_bzero(b->p, b->cap);
      free(b->p);
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

void cmux_buf_drop(cmux_buf *b, size_t n) {
  if (n >= b->len) {
    if (b->p) explicit_bzero(b->p, b->len);
    b->len = 0;
    return;
  }
  memmove(b->p, b->p + n, b->len - n);
  explicit_bzero(b->p + b->len - n, n);
  b->len -= n;
}

void cmux_buf_free(cmux_buf *b) {
  if (b->p) {
    explicit_bzero(b->p, b->cap);
    free(b->p);
  }
  b->p = NULL;
  b->len = b->cap = 0;
}

static int put_raw(cmux_buf *b, const uint8_t *q, size_t n) { return cmux_buf_put(b, q, n); }

size_t cmux_frame_begin(cmux_buf *b, uint8_t type, uint32_t chan) {
  uint8_t h[CMUX_HDR] = {0, 0, 0, 0, type, (uint8_t)(chan >> 24), (uint8_t)(chan >> 16),
                         (uint8_t)(chan >> 8), (uint8_t)chan};
  size_t off = b->len;
  put_raw(b, h, sizeof h); /* a failure shows at cmux_frame_end */
  return off;
}

int cmux_put_u8(cmux_buf *b, uint8_t v) { return put_raw(b, &v, 1); }
int cmux_put_u16(cmux_buf *b, uint16_t v) {
  uint8_t q[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  return put_raw(b, q, 2);
}
int cmux_put_u32(cmux_buf *b, uint32_t v) {
  uint8_t q[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  return put_raw(b, q, 4);
}
int cmux_put_str(cmux_buf *b, const char *s, size_t len) {
  if (len > 65535) return -EMSGSIZE;
  int r = cmux_put_u16(b, (uint16_t)len);
  return r < 0 ? r : put_raw(b, (const uint8_t *)s, len);
}

int cmux_frame_end(cmux_buf *b, size_t off) {
  if (b->len < off + CMUX_HDR) return -ENOMEM;
  size_t len = b->len - off - CMUX_HDR;
  if (len > CMUX_MAX_PAYLOAD) {
    explicit_bzero(b->p + off, b->len - off);
    b->len = off;
    return -EMSGSIZE;
  }
  b->p[off] = (uint8_t)(len >> 24);
  b->p[off + 1] = (uint8_t)(len >> 16);
  b->p[off + 2] = (uint8_t)(len >> 8);
  b->p[off + 3] = (uint8_t)len;
  return 0;
}

/* ---- engine ----------------------------------------------------------------------------- */

typedef struct chan {
  uint32_t id;
  int fd;
  int pfi;          /* index in the last cmux_pollfds array, -1 if not there */
  int local_eof;    /* read EOF from fd; SHUT sent */
  int peer_eof;     /* SHUT received */
  int wr_shut;      /* shutdown(fd, SHUT_WR) done */
  int skip_head;    /* dropping a CONNECT answer's head */
  uint32_t credit;  /* bytes we may still send */
  uint32_t consumed; /* bytes written to fd, not yet credited back */
  cmux_buf in;      /* from the peer, for fd */
  cmux_buf head;
} chan;

struct cmux {
  int fd;
  int odd;
  int dead;
  uint32_t next_id;
  const cmux_ops *ops;
  void *arg;
  cmux_buf in, out;
  chan *ch[MAX_CHANS];
  unsigned n;
};

cmux *cmux_new(int fd, int odd, const cmux_ops *ops, void *arg) {
  cmux *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->fd = fd;
  m->odd = odd;
  m->next_id = odd ? 1 : 2;
  m->ops = ops;
  m->arg = arg;
  m->in.max = CMUX_HDR + CMUX_MAX_PAYLOAD;
  m->out.max = OUT_MAX;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return m;
}

static void chan_free(chan *c) {
  if (c->fd >= 0) close(c->fd);
  cmux_buf_free(&c->in);
  cmux_buf_free(&c->head);
  free(c);
}

void cmux_free(cmux *m) {
  if (!m) return;
  for (unsigned i = 0; i < m->n; i++) chan_free(m->ch[i]);
  cmux_buf_free(&m->in);
  cmux_buf_free(&m->out);
  free(m);
}

cmux_buf *cmux_out(cmux *m) { return &m->out; }
int cmux_pending(const cmux *m) { return m->out.len > 0; }
unsigned cmux_channels(const cmux *m) { return m->n; }

static void die(cmux *m, const char *why) {
  if (m->dead) return;
  m->dead = 1;
  for (unsigned i = 0; i < m->n; i++) chan_free(m->ch[i]);
  m->n = 0;
  if (m->ops->on_dead) m->ops->on_dead(m->arg, m, why);
}

static void send_empty(cmux *m, uint8_t type, uint32_t id) {
  size_t off = cmux_frame_begin(&m->out, type, id);
  if (cmux_frame_end(&m->out, off) < 0) die(m, "mux output over its limit");
}

static void send_credit(cmux *m, chan *c) {
  size_t off = cmux_frame_begin(&m->out, CMUX_CREDIT, c->id);
  cmux_put_u32(&m->out, c->consumed);
  if (cmux_frame_end(&m->out, off) < 0) die(m, "mux output over its limit");
  c->consumed = 0;
}

static chan *find(cmux *m, uint32_t id) {
  for (unsigned i = 0; i < m->n; i++)
    if (m->ch[i]->id == id) return m->ch[i];
  return NULL;
}

static void remove_chan(cmux *m, chan *c) {
  for (unsigned i = 0; i < m->n; i++)
    if (m->ch[i] == c) {
      m->ch[i] = m->ch[--m->n];
      break;
    }
  chan_free(c);
}

static chan *add_chan(cmux *m, uint32_t id, int fd) {
  if (m->n >= MAX_CHANS) return NULL;
  chan *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->id = id;
  c->fd = fd;
  c->pfi = -1;
  c->credit = CMUX_WINDOW;
  c->in.max = CMUX_WINDOW;
  c->head.max = HEAD_MAX;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  m->ch[m->n++] = c;
  return c;
}

uint32_t cmux_open(cmux *m, int fd, uint8_t kind, uint16_t port, const char *name) {
  size_t nl = name ? strlen(name) : 0;
  if (m->dead || nl > 255) {
    close(fd);
    return 0;
  }
  uint32_t id = m->next_id;
  chan *c = add_chan(m, id, fd);
  if (!c) {
    close(fd);
    return 0;
  }
  m->next_id += 2;
  if (m->next_id == 0 || m->next_id == 1) m->next_id = m->odd ? 1 : 2; /* wrapped */
  size_t off = cmux_frame_begin(&m->out, CMUX_OPEN, id);
  cmux_put_u8(&m->out, kind);
  cmux_put_u16(&m->out, port);
  put_raw(&m->out, (const uint8_t *)name, nl);
  if (cmux_frame_end(&m->out, off) < 0) die(m, "mux output over its limit");
  return id;
}

int cmux_send(cmux *m, uint8_t type, const void *payload, size_t len) {
  if (m->dead) return -EPIPE;
  size_t off = cmux_frame_begin(&m->out, type, 0);
  int r = put_raw(&m->out, (const uint8_t *)payload, len);
  if (r == 0) r = cmux_frame_end(&m->out, off);
  else m->out.len = off;
  return r;
}

/* Both directions done and flushed: the channel goes (the peer frees its side likewise). */
static int maybe_done(cmux *m, chan *c) {
  if (!(c->local_eof && c->peer_eof && c->in.len == 0)) return 0;
  remove_chan(m, c);
  return 1;
}

static void on_frame(cmux *m, const cmux_frame *f) {
  if (f->chan == 0) {
    if (m->ops->on_ctrl) m->ops->on_ctrl(m->arg, m, f);
    return;
  }
  chan *c = find(m, f->chan);
  switch (f->type) {
    case CMUX_OPEN: {
      if (c || (f->chan & 1) == (uint32_t)m->odd) {
        die(m, "OPEN of a channel in use or of our own numbering");
        return;
      }
      char name[256];
      size_t nl = f->len - 3;
      memcpy(name, f->payload + 3, nl);
      name[nl] = 0;
      if (memchr(name, 0, nl)) nl = 0, name[0] = 0;
      uint16_t port = (uint16_t)(f->payload[1] << 8 | f->payload[2]);
      int skip = 0;
      int fd = m->ops->on_open ? m->ops->on_open(m->arg, m, f->chan, f->payload[0], port, name,
                                                 &skip)
                               : -1;
      if (m->dead) {
        if (fd >= 0) close(fd);
        return;
      }
      chan *n = fd >= 0 ? add_chan(m, f->chan, fd) : NULL;
      if (!n) {
        if (fd >= 0) close(fd);
        send_empty(m, CMUX_CLOSE, f->chan);
        return;
      }
      n->skip_head = skip;
      return;
    }
    case CMUX_DATA:
      if (!c) return; /* closed on our side already */
      if (c->peer_eof || c->in.len + f->len > CMUX_WINDOW) {
        die(m, "DATA past the window or after SHUT");
        return;
      }
      cmux_buf_put(&c->in, f->payload, f->len);
      return;
    case CMUX_CREDIT: {
      if (!c) return;
      uint32_t add = get32(f->payload);
      if ((uint64_t)c->credit + add > CMUX_WINDOW) {
        die(m, "CREDIT past the window");
        return;
      }
      c->credit += add;
      return;
    }
    case CMUX_SHUT:
      if (!c) return;
      c->peer_eof = 1;
      if (c->in.len == 0 && !c->wr_shut) {
        shutdown(c->fd, SHUT_WR);
        c->wr_shut = 1;
      }
      maybe_done(m, c);
      return;
    case CMUX_CLOSE:
      if (c) remove_chan(m, c);
      return;
  }
}

/* Room for want more bytes (less if the cap is near); -ENOBUFS when none is left. */
static int ensure_room(cmux_buf *b, size_t want) {
  if (b->cap - b->len >= want) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap - b->len < want) cap *= 2;
  if (b->max && cap > b->max) cap = b->max;
  if (cap <= b->len) return -ENOBUFS;
  if (cap <= b->cap) return 0;
  uint8_t *q = malloc(cap);
  if (!q) return -ENOMEM;
  if (b->len) memcpy(q, b->p, b->len);
  if (b->p) {
    explicit_bzero(b->p, b->cap);
    free(b->p);
  }
  b->p = q;
  b->cap = cap;
  return 0;
}

static void read_stream(cmux *m) {
  for (;;) {
    if (ensure_room(&m->in, 65536) < 0) {
      die(m, "mux frame over its limit");
      return;
    }
    size_t room = m->in.cap - m->in.len;
    if (room > 65536) room = 65536;
    ssize_t k = read(m->fd, m->in.p + m->in.len, room);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (k <= 0) {
      die(m, k == 0 ? "the peer closed the mux" : "mux read error");
      return;
    }
    m->in.len += (size_t)k;
    size_t used = 0;
    for (;;) {
      cmux_frame f;
      long r = cmux_parse(m->in.p + used, m->in.len - used, &f);
      if (r < 0) {
        die(m, "malformed mux frame");
        return;
      }
      if (r == 0) break;
      on_frame(m, &f);
      if (m->dead) return;
      used += (size_t)r;
    }
    cmux_buf_drop(&m->in, used);
    if ((size_t)k < room) break;
  }
}

/* A write that never raises SIGPIPE on a socket (the stream may also be a character device:
 * the virtio-serial port). */
static ssize_t xwrite(int fd, const void *p, size_t n) {
  ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (k < 0 && errno == ENOTSOCK) k = write(fd, p, n);
  return k;
}

static void write_stream(cmux *m) {
  while (m->out.len) {
    ssize_t k = xwrite(m->fd, m->out.p, m->out.len);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (k <= 0) {
      die(m, "mux write error");
      return;
    }
    cmux_buf_drop(&m->out, (size_t)k);
  }
}

/* The CONNECT answer's head: 1 when dropped (a 200), 0 for more, -1 refused. */
static int eat_head(chan *c, const uint8_t *p, size_t n, size_t *used) {
  for (size_t i = 0; i < n; i++) {
    if (cmux_buf_put(&c->head, p + i, 1) < 0) return -1;
    if (c->head.len >= 4 && memcmp(c->head.p + c->head.len - 4, "\r\n\r\n", 4) == 0) {
      *used = i + 1;
      if (c->head.len < 12 || memcmp(c->head.p, "HTTP/1.", 7) != 0 ||
          memcmp(c->head.p + 8, " 200", 4) != 0)
        return -1;
      c->skip_head = 0;
      return 1;
    }
  }
  *used = n;
  return 0;
}

static void read_chan(cmux *m, chan *c) {
  uint8_t buf[CMUX_MAX_DATA];
  size_t want = c->credit < sizeof buf ? c->credit : sizeof buf;
  ssize_t k = read(c->fd, buf, want);
  if (k < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (k < 0) {
    send_empty(m, CMUX_CLOSE, c->id);
    remove_chan(m, c);
    return;
  }
  if (k == 0) {
    if (c->skip_head) { /* the proxy refused before answering */
      send_empty(m, CMUX_CLOSE, c->id);
      remove_chan(m, c);
      return;
    }
    c->local_eof = 1;
    send_empty(m, CMUX_SHUT, c->id);
    maybe_done(m, c);
    return;
  }
  const uint8_t *p = buf;
  size_t n = (size_t)k;
  if (c->skip_head) {
    size_t used;
    int r = eat_head(c, p, n, &used);
    if (r < 0) {
      send_empty(m, CMUX_CLOSE, c->id);
      remove_chan(m, c);
      return;
    }
    p += used;
    n -= used;
    if (n == 0) return;
  }
  size_t off = cmux_frame_begin(&m->out, CMUX_DATA, c->id);
  put_raw(&m->out, p, n);
  if (cmux_frame_end(&m->out, off) < 0) {
    die(m, "mux output over its limit");
    return;
  }
  c->credit -= (uint32_t)n;
}

static void write_chan(cmux *m, chan *c) {
  while (c->in.len) {
    ssize_t k = xwrite(c->fd, c->in.p, c->in.len);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (k <= 0) {
      send_empty(m, CMUX_CLOSE, c->id);
      remove_chan(m, c);
      return;
    }
    cmux_buf_drop(&c->in, (size_t)k);
    c->consumed += (uint32_t)k;
  }
  if (c->consumed >= CMUX_WINDOW / 4 || (c->in.len == 0 && c->consumed))
    if (!c->peer_eof) send_credit(m, c);
  if (c->in.len == 0 && c->peer_eof && !c->wr_shut) {
    shutdown(c->fd, SHUT_WR);
    c->wr_shut = 1;
  }
  maybe_done(m, c);
}

size_t cmux_pollfds(cmux *m, struct pollfd *pf, size_t cap) {
  if (m->dead || cap == 0) return 0;
  pf[0].fd = m->fd;
  pf[0].events = POLLIN | (m->out.len ? POLLOUT : 0);
  pf[0].revents = 0;
  size_t k = 1;
  for (unsigned i = 0; i < m->n; i++) {
    chan *c = m->ch[i];
    c->pfi = -1;
    short ev = 0;
    if (!c->local_eof && c->credit > 0 && m->out.len < OUT_HIGH) ev |= POLLIN;
    if (c->in.len) ev |= POLLOUT;
    if (!ev || k >= cap) continue;
    pf[k].fd = c->fd;
    pf[k].events = ev;
    pf[k].revents = 0;
    c->pfi = (int)k++;
  }
  return k;
}

void cmux_service(cmux *m, const struct pollfd *pf, size_t n) {
  if (m->dead || n == 0 || pf[0].fd != m->fd) return;
  if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) read_stream(m);
  if (m->dead) return;
  /* Channels by id, as the array may change under the callbacks. */
  uint32_t ids[MAX_CHANS];
  int pfis[MAX_CHANS];
  unsigned cnt = 0;
  for (unsigned i = 0; i < m->n; i++) {
    if (m->ch[i]->pfi < 0 || (size_t)m->ch[i]->pfi >= n) continue;
    ids[cnt] = m->ch[i]->id;
    pfis[cnt++] = m->ch[i]->pfi;
  }
  for (unsigned i = 0; i < cnt && !m->dead; i++) {
    chan *c = find(m, ids[i]);
    if (!c || pf[pfis[i]].fd != c->fd) continue;
    short re = pf[pfis[i]].revents;
    if (re & POLLOUT || (re & (POLLERR | POLLHUP) && c->in.len)) write_chan(m, c);
    c = find(m, ids[i]);
    if (c && !m->dead && re & (POLLIN | POLLHUP | POLLERR) && !c->local_eof && c->credit)
      read_chan(m, c);
  }
  /* Output queued by anything above, including frames that arrived for channels. */
  if (!m->dead) {
    for (unsigned i = 0; i < m->n && !m->dead; i++)
      if (m->ch[i]->in.len) write_chan(m, m->ch[i]);
    if (!m->dead) write_stream(m);
  }
}
