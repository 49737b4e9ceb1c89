/* egress_proxy.c: a function box's egress proxy (egress_proxy.h). */
#include "egress_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls_hello.h"
#include "outbound_match.h"

#define HEAD_MAX 4096            /* the CONNECT request's head */
#define PEEK_MAX EVS_TLS_HELLO_MAX /* the first flight held until its name is checked */
#define HIGH_WATER (256 * 1024)  /* bytes queued towards one end before the other is paused */
#define LOW_WATER (64 * 1024)

typedef struct tunnel tunnel;

struct egress_proxy {
  uv_loop_t *loop;
  uv_pipe_t listener;
  char *path;
  evs__ob_matcher *allow; /* NULL: any host */
  egress_proxy_opts o;
  tunnel *tunnels;
  unsigned n_tunnels;
};

enum { T_HEAD, T_RESOLVING, T_CONNECTING, T_PEEK, T_OPEN, T_ENDING };

/* One end of a tunnel: the box or the destination. */
typedef struct tend {
  uv_stream_t *s;
  size_t queued; /* bytes being written to this tend */
  int reading;   /* reading from this tend */
  int eof;       /* this end has finished sending */
} tend;

struct tunnel {
  egress_proxy *e;
  tunnel *next, **prev;
  int state;
  int refs; /* handles not yet closed, plus a resolver still running */
  uv_pipe_t box_h;
  uv_tcp_t *dest_h; /* one per address tried: a closing handle cannot be initialised again */
  uv_timer_t timer;
  uv_getaddrinfo_t gai;
  uv_connect_t conn;
  uv_shutdown_t shut_box, shut_dest;
  int resolving;
  int over_limit; /* answered 503 once its head is read (an answer before it would be lost) */
  tend box, dest;
  char host[EVS__OB_HOST_MAX + 1];
  int port;
  struct addrinfo *addrs, *next_addr;
  uint8_t *buf; /* the CONNECT head, then the box's first flight until it is checked */
  size_t len;
};

typedef struct wreq {
  uv_write_t w;
  tunnel *t;
  tend *to;
  size_t len;
  char data[];
} wreq;

static void start_reading(tunnel *t, tend *from);
static tend *other(tunnel *t, tend *x) { return x == &t->box ? &t->dest : &t->box; }

static void unref(tunnel *t) {
  if (--t->refs > 0) return;
  if (t->addrs) uv_freeaddrinfo(t->addrs);
  free(t->buf);
  free(t);
}

static void on_closed(uv_handle_t *h) { unref(h->data); }

static void on_dest_closed(uv_handle_t *h) {
  tunnel *t = h->data;
  free(h);
  unref(t);
}

static void close_dest(tunnel *t) {
  if (!t->dest_h) return;
  uv_close((uv_handle_t *)t->dest_h, on_dest_closed);
  t->dest_h = NULL;
  t->dest.s = NULL;
}

static void unlink_tunnel(tunnel *t) {
  if (!t->prev) return;
  *t->prev = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = NULL;
  t->e->n_tunnels--;
}

/* Ends the tunnel at once: pending writes are cancelled. */
static void tunnel_end(tunnel *t) {
  if (t->state == T_ENDING) return;
  if (t->resolving) uv_cancel((uv_req_t *)&t->gai);
  t->state = T_ENDING;
  unlink_tunnel(t);
  uv_close((uv_handle_t *)&t->box_h, on_closed);
  uv_close((uv_handle_t *)&t->timer, on_closed);
  close_dest(t);
}

/* Both ends have finished sending and everything is written: the tunnel is done. */
static void maybe_finish(tunnel *t) {
  if (t->state != T_ENDING && t->box.eof && t->dest.eof && !t->box.queued && !t->dest.queued)
    tunnel_end(t);
}

static void on_timeout(uv_timer_t *tm) { tunnel_end(tm->data); }
static void touch(tunnel *t, uint64_t ms) { uv_timer_start(&t->timer, on_timeout, ms, 0); }

static void event(tunnel *t, int allowed, const char *why) {
  if (t->e->o.event) t->e->o.event(t->e->o.event_arg, t->host, t->port, allowed, why);
}

/* ---- writing, with backpressure ----------------------------------------------------------- */

static void on_write(uv_write_t *w, int status) {
  wreq *r = (wreq *)w;
  tunnel *t = r->t;
  tend *to = r->to;
  to->queued -= r->len;
  free(r);
  if (t->state == T_ENDING) return;
  if (status < 0) {
    tunnel_end(t);
    return;
  }
  /* Below the low mark again: let the other end send more. */
  tend *from = other(t, to);
  if (t->state == T_OPEN && to->queued < LOW_WATER && !from->reading && !from->eof)
    start_reading(t, from);
  maybe_finish(t);
}

static int send_to(tunnel *t, tend *to, const void *data, size_t len) {
  wreq *r = malloc(sizeof *r + len);
  if (!r) return UV_ENOMEM;
  memcpy(r->data, data, len);
  r->t = t;
  r->to = to;
  r->len = len;
  uv_buf_t b = uv_buf_init(r->data, (unsigned)len);
  int rc = uv_write(&r->w, to->s, &b, 1, on_write);
  if (rc < 0) {
    free(r);
    return rc;
  }
  to->queued += len;
  return 0;
}

static void after_refusal(uv_shutdown_t *sh, int status) {
  (void)status;
  tunnel *t = sh->data;
  uv_close((uv_handle_t *)&t->box_h, on_closed);
  unref(t); /* the shutdown's reference */
}

/* Answers the CONNECT with an error, sends it, then ends the tunnel. */
static void refuse(tunnel *t, int status, const char *why) {
  event(t, 0, why);
  char head[512];
  const char *reason = status == 400 ? "Bad Request" : status == 403 ? "Forbidden"
                       : status == 502 ? "Bad Gateway" : status == 504 ? "Gateway Timeout"
                                                       : "Service Unavailable";
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s\n",
                   status, reason, strlen(why) + 1, why);
  uv_read_stop(t->box.s);
  t->box.reading = 0;
  if (t->resolving) uv_cancel((uv_req_t *)&t->gai);
  t->state = T_ENDING;
  unlink_tunnel(t);
  uv_close((uv_handle_t *)&t->timer, on_closed);
  close_dest(t);
  t->shut_box.data = t;
  if (send_to(t, &t->box, head, (size_t)n) < 0 ||
      uv_shutdown(&t->shut_box, t->box.s, after_refusal) < 0) {
    uv_close((uv_handle_t *)&t->box_h, on_closed);
    return;
  }
  t->refs++; /* the shutdown's */
}

/* ---- addresses ---------------------------------------------------------------------------- */

/* Whether a function may reach addr without allow_private: a unicast Internet address, not the
 * node itself, its networks, or an address reserved for documentation or benchmarks. */
static int public_addr(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
    unsigned b0 = a >> 24, b1 = (a >> 16) & 0xff, b2 = (a >> 8) & 0xff;
    if (b0 == 0 || b0 == 10 || b0 == 127 || b0 >= 224) return 0; /* this, private, loop, mcast */
    if (b0 == 169 && b1 == 254) return 0;                          /* link-local */
    if (b0 == 172 && (b1 & 0xf0) == 16) return 0;                  /* private */
    if (b0 == 192 && b1 == 168) return 0;                          /* private */
    if (b0 == 100 && (b1 & 0xc0) == 64) return 0;                  /* shared (CGNAT) */
    if (b0 == 198 && (b1 & 0xfe) == 18) return 0;                  /* benchmarking */
    if ((b0 == 192 && b1 == 0 && (b2 == 0 || b2 == 2)) || (b0 == 198 && b1 == 51 && b2 == 100) ||
        (b0 == 203 && b1 == 0 && b2 == 113))
      return 0; /* IETF assignments, documentation */
    return 1;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    const uint8_t *b = a->s6_addr;
    if (IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_LINKLOCAL(a) ||
        IN6_IS_ADDR_SITELOCAL(a) || IN6_IS_ADDR_MULTICAST(a))
      return 0;
    if ((b[0] & 0xfe) == 0xfc) return 0; /* unique local */
    if (IN6_IS_ADDR_V4MAPPED(a) || IN6_IS_ADDR_V4COMPAT(a) ||
        (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b)) { /* NAT64 */
      struct sockaddr_in v4 = {.sin_family = AF_INET};
      memcpy(&v4.sin_addr, b + 12, 4);
      return public_addr((const struct sockaddr *)&v4);
    }
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return 0; /* documentation */
    if (b[0] == 0x20 && b[1] == 0x02) return 0; /* 6to4: an IPv4 address inside */
    return 1;
  }
  return 0;
}

/* ---- connecting --------------------------------------------------------------------------- */

static void try_connect(tunnel *t);
static void on_first_flight(tunnel *t);

static void on_connect(uv_connect_t *c, int status) {
  tunnel *t = c->data;
  if (t->state == T_ENDING) return;
  if (status < 0) { /* the next address, on a new socket */
    close_dest(t);
    if (t->next_addr) try_connect(t);
    else refuse(t, 502, "the destination refused the connection or could not be reached");
    return;
  }
  if (send_to(t, &t->box, "HTTP/1.1 200 Connection established\r\n\r\n", 39) < 0) {
    tunnel_end(t);
    return;
  }
  event(t, 1, NULL);
  t->state = T_PEEK;
  touch(t, t->e->o.idle_timeout_ms);
  start_reading(t, &t->dest); /* a server may speak first */
  start_reading(t, &t->box);  /* the first flight, held until its name is checked */
  /* A client that sent its first flight right behind the CONNECT head (the cages' runner
   * does) sends nothing more until it is answered: decide on what is held already. */
  if (t->len) on_first_flight(t);
}

static void try_connect(tunnel *t) {
  while (t->next_addr && !t->e->o.allow_private && !public_addr(t->next_addr->ai_addr))
    t->next_addr = t->next_addr->ai_next;
  struct addrinfo *a = t->next_addr;
  if (!a) {
    refuse(t, 403, t->addrs ? "the host resolves only to addresses functions may not reach "
                              "(loopback, private, link-local or reserved)"
                            : "the destination could not be reached");
    return;
  }
  t->next_addr = a->ai_next;
  uv_tcp_t *h = malloc(sizeof *h);
  if (!h || uv_tcp_init(t->e->loop, h) < 0) {
    free(h);
    refuse(t, 502, "the destination refused the connection or could not be reached");
    return;
  }
  h->data = t;
  t->dest_h = h;
  t->refs++;
  t->dest.s = (uv_stream_t *)h;
  t->conn.data = t;
  if (uv_tcp_connect(&t->conn, h, a->ai_addr, on_connect) < 0)
    refuse(t, 502, "the destination refused the connection or could not be reached");
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  tunnel *t = g->data;
  t->resolving = 0;
  if (t->state == T_ENDING) {
    if (res) uv_freeaddrinfo(res);
    unref(t); /* the resolver's reference */
    return;
  }
  t->refs--; /* the resolver's; the handles still hold t */
  if (status < 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    refuse(t, 502, "the host name does not resolve");
    return;
  }
  t->addrs = t->next_addr = res;
  t->state = T_CONNECTING;
  try_connect(t);
}

/* ---- the CONNECT head and the first flight ------------------------------------------------ */

static void resolve(tunnel *t) {
  char name[EVS__OB_HOST_MAX + 1], port[8];
  size_t hl = strlen(t->host);
  if (t->host[0] == '[') { /* getaddrinfo wants an IPv6 literal without brackets */
    memcpy(name, t->host + 1, hl - 2);
    name[hl - 2] = 0;
  } else {
    memcpy(name, t->host, hl + 1);
  }
  snprintf(port, sizeof port, "%d", t->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  t->gai.data = t;
  t->state = T_RESOLVING;
  t->refs++;
  if (uv_getaddrinfo(t->e->loop, &t->gai, on_resolved, name, port, &hints) < 0) {
    t->refs--;
    refuse(t, 502, "the host name does not resolve");
    return;
  }
  t->resolving = 1;
}

static void on_head(tunnel *t) {
  uint8_t *end = memmem(t->buf, t->len, "\r\n\r\n", 4);
  if (!end) {
    if (t->len >= HEAD_MAX) refuse(t, 400, "the CONNECT request's head is too long");
    return;
  }
  size_t head_len = (size_t)(end + 4 - t->buf);
  const char *line = (const char *)t->buf;
  const char *eol = memchr(line, '\r', head_len);
  const char *sp = memchr(line, ' ', (size_t)(eol - line));
  const char *sp2 = sp ? memchr(sp + 1, ' ', (size_t)(eol - sp - 1)) : NULL;
  if (!sp2 || sp - line != 7 || memcmp(line, "CONNECT", 7) != 0 || eol - sp2 - 1 != 8 ||
      memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
      evs__ob_authority_parse(sp + 1, (size_t)(sp2 - sp - 1), t->host, sizeof t->host,
                              &t->port) < 0) {
    t->host[0] = 0;
    refuse(t, 400, "the request is not CONNECT host:port HTTP/1.1");
    return;
  }
  if (t->over_limit) {
    refuse(t, 503, "too many egress connections from this box at once");
    return;
  }
  /* What followed the head already belongs to the first flight. */
  memmove(t->buf, t->buf + head_len, t->len - head_len);
  t->len -= head_len;
  if (t->e->allow && evs__ob_match(t->e->allow, t->host, t->port, NULL, 0) < 0) {
    refuse(t, 403, "the host is not in the function's outbound allowlist");
    return;
  }
  uv_read_stop(t->box.s);
  t->box.reading = 0;
  resolve(t);
}

/* The name a plain HTTP request's Host header gives (without a port), or NULL when the bytes
 * are not (yet) an HTTP request head. Returns 1 found, 0 not HTTP, -EAGAIN incomplete. */
static int http_host(const uint8_t *p, size_t n, char *out, size_t cap) {
  size_t i = 0;
  while (i < n && p[i] >= 'A' && p[i] <= 'Z') i++;
  if (i == 0 || (i < n && p[i] != ' ')) return 0;
  if (i == n) return -EAGAIN;
  const uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
  if (!end) return n >= PEEK_MAX ? 0 : -EAGAIN;
  for (const uint8_t *l = memmem(p, (size_t)(end - p), "\r\n", 2); l && l < end;
       l = memmem(l + 2, (size_t)(end - l - 2) + 2, "\r\n", 2)) {
    const uint8_t *v = l + 2;
    if ((size_t)(end - v) < 5 || strncasecmp((const char *)v, "host:", 5) != 0) continue;
    v += 5;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    const uint8_t *ve = v;
    while (ve < end && *ve != '\r' && *ve != ' ' && *ve != '\t') ve++;
    /* strip a port, keep an IPv6 literal's brackets */
    const uint8_t *colon = NULL;
    for (const uint8_t *c = v; c < ve; c++) {
      if (*c == ']') colon = NULL;
      else if (*c == ':' && (*v != '[' || (c > v && c[-1] == ']'))) colon = c;
    }
    size_t len = (size_t)((colon ? colon : ve) - v);
    if (len == 0 || len >= cap) return 0;
    for (size_t k = 0; k < len; k++) out[k] = (char)(v[k] >= 'A' && v[k] <= 'Z' ? v[k] + 32 : v[k]);
    out[len] = 0;
    if (len && out[len - 1] == '.') out[len - 1] = 0;
    return 1;
  }
  return 0; /* no Host header: an HTTP/1.0-style request names nothing else */
}

/* The first flight: a TLS ClientHello's server_name, or a plain request's Host, must name
 * the CONNECT host; anything else (a protocol we cannot read) goes as it is. */
static void on_first_flight(tunnel *t) {
  char name[EVS__OB_HOST_MAX + 2];
  int rc;
  if (evs_tls_hello_is_tls(t->buf, t->len)) {
    rc = evs_tls_hello_sni(t->buf, t->len, name, sizeof name);
    if (rc == -EAGAIN && t->len < PEEK_MAX) return;
    if (rc < 0) {
      event(t, 0, "the TLS ClientHello could not be read");
      tunnel_end(t);
      return;
    }
  } else {
    rc = http_host(t->buf, t->len, name, sizeof name);
    if (rc == -EAGAIN) return;
  }
  if (rc == 1 && strcmp(name, t->host) != 0) {
    event(t, 0, "the TLS server name or Host header names another host than the CONNECT");
    tunnel_end(t);
    return;
  }
  t->state = T_OPEN;
  if (t->len && send_to(t, &t->dest, t->buf, t->len) < 0) {
    tunnel_end(t);
    return;
  }
  free(t->buf);
  t->buf = NULL;
  t->len = 0;
}

/* ---- reading ------------------------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)h;
  (void)suggested;
  static char slab[65536]; /* one loop thread: the data is copied out before the next read */
  *b = uv_buf_init(slab, sizeof slab);
}

static int hold(tunnel *t, const char *data, size_t n, size_t max) {
  if (t->len + n > max) return -1;
  uint8_t *nb = realloc(t->buf, t->len + n ? t->len + n : 1);
  if (!nb) return -1;
  memcpy(nb + t->len, data, n);
  t->buf = nb;
  t->len += n;
  return 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  tunnel *t = s->data;
  if (t->state == T_ENDING || n == 0) return;
  tend *from = s == t->box.s ? &t->box : &t->dest, *to = other(t, from);
  if (n < 0) { /* EOF or error: the other end gets a half-close; both done ends the tunnel */
    uv_read_stop(s);
    from->reading = 0;
    from->eof = 1;
    if (n != UV_EOF || t->state != T_OPEN) {
      tunnel_end(t);
      return;
    }
    uv_shutdown_t *sh = from == &t->box ? &t->shut_dest : &t->shut_box;
    sh->data = t;
    if (uv_shutdown(sh, to->s, NULL) < 0) tunnel_end(t);
    else maybe_finish(t);
    return;
  }
  touch(t, t->state == T_HEAD ? t->e->o.connect_timeout_ms : t->e->o.idle_timeout_ms);
  if (t->state == T_HEAD) {
    if (hold(t, b->base, (size_t)n, HEAD_MAX + PEEK_MAX) < 0) {
      refuse(t, 400, "the CONNECT request's head is too long");
      return;
    }
    on_head(t);
    return;
  }
  if (t->state == T_PEEK && from == &t->box) {
    if (hold(t, b->base, (size_t)n, PEEK_MAX + HEAD_MAX) < 0) {
      event(t, 0, "the first flight is longer than one TLS record");
      tunnel_end(t);
      return;
    }
    on_first_flight(t);
    return;
  }
  if (send_to(t, to, b->base, (size_t)n) < 0) {
    tunnel_end(t);
    return;
  }
  if (to->queued >= HIGH_WATER) { /* the slow end pauses the fast one */
    uv_read_stop(s);
    from->reading = 0;
  }
}

static void start_reading(tunnel *t, tend *from) {
  if (from->reading || from->eof) return;
  if (uv_read_start(from->s, alloc_cb, on_read) == 0) from->reading = 1;
  else tunnel_end(t);
}

/* ---- the listener ------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *l, int status) {
  egress_proxy *e = l->data;
  if (status < 0) return;
  tunnel *t = calloc(1, sizeof *t);
  if (!t) return;
  t->e = e;
  if (uv_pipe_init(e->loop, &t->box_h, 0) < 0) {
    free(t);
    return;
  }
  t->box_h.data = t;
  t->refs = 1;
  if (uv_accept(l, (uv_stream_t *)&t->box_h) < 0) {
    uv_close((uv_handle_t *)&t->box_h, on_closed);
    return;
  }
  uv_timer_init(e->loop, &t->timer);
  t->timer.data = t;
  t->refs++;
  t->box.s = (uv_stream_t *)&t->box_h;
  t->next = e->tunnels;
  t->prev = &e->tunnels;
  if (e->tunnels) e->tunnels->prev = &t->next;
  e->tunnels = t;
  e->n_tunnels++;
  t->over_limit = e->n_tunnels > e->o.max_tunnels;
  touch(t, e->o.connect_timeout_ms);
  start_reading(t, &t->box);
}

int egress_proxy_open(uv_loop_t *loop, const egress_proxy_opts *o, egress_proxy **ret,
                   const char **ret_why) {
  const char *why = "cannot create the egress socket";
  egress_proxy *e = calloc(1, sizeof *e);
  evs__ob_pattern *pats = calloc(o->n_allow ? o->n_allow : 1, sizeof *pats);
  if (!e || !pats || !o->path) goto fail;
  e->loop = loop;
  e->o = *o;
  if (!e->o.max_tunnels) e->o.max_tunnels = 64;
  if (!e->o.connect_timeout_ms) e->o.connect_timeout_ms = 10000;
  if (!e->o.idle_timeout_ms) e->o.idle_timeout_ms = 300000;
  for (size_t i = 0; i < o->n_allow; i++) {
    if (evs__ob_pattern_parse(o->allow[i], strlen(o->allow[i]), &pats[i], &why) < 0) goto fail;
    if (pats[i].path_kind != EVS__OB_PATH_ANY) {
      why = "an outbound allowlist entry names hosts (and ports), not paths";
      goto fail;
    }
  }
  if (o->n_allow && !(e->allow = evs__ob_matcher_new(pats, o->n_allow))) goto fail;
  why = "cannot create the egress socket";
  if (!(e->path = strdup(o->path))) goto fail;
  e->o.path = e->path;
  e->o.allow = NULL; /* not kept: the matcher holds copies */
  unlink(e->path);
  if (uv_pipe_init(loop, &e->listener, 0) < 0) goto fail;
  e->listener.data = e;
  mode_t old = umask(0077); /* the box runs as our uid: nobody else may connect */
  int rc = uv_pipe_bind(&e->listener, e->path);
  umask(old);
  if (rc < 0 || uv_listen((uv_stream_t *)&e->listener, 64, on_connection) < 0) {
    uv_close((uv_handle_t *)&e->listener, (uv_close_cb)free);
    unlink(e->path);
    free(e->path);
    if (e->allow) evs__ob_matcher_free(e->allow);
    free(pats);
    *ret_why = why;
    return -EIO;
  }
  free(pats);
  *ret = e;
  return 0;
fail:
  if (e) {
    if (e->allow) evs__ob_matcher_free(e->allow);
    free(e->path);
  }
  free(e);
  free(pats);
  *ret_why = why;
  return -EINVAL;
}

static void free_egress(uv_handle_t *h) { free(h->data); }

void egress_proxy_close(egress_proxy *e) {
  if (!e) return;
  while (e->tunnels) tunnel_end(e->tunnels);
  unlink(e->path);
  free(e->path);
  if (e->allow) evs__ob_matcher_free(e->allow);
  uv_close((uv_handle_t *)&e->listener, free_egress);
}

unsigned egress_proxy_tunnels(const egress_proxy *e) { return e ? e->n_tunnels : 0; }
