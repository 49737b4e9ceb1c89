/*
 * fr_egress.c: a box's way out. The box has no network of its own (an empty net namespace);
 * evs-fnbox binds one unix socket of ours into it (--egress, /run/evs/egress.sock) and the
 * bootstrap sends every HTTP(S) connection through it as `CONNECT host:port`. Here, per box:
 * a listener on that socket, the CONNECT head read (at most 8 KiB), the host checked against
 * the Function's outbound allowlist (`outbound_allowlist` in function.toml: names, or
 * "*.suffix"; empty: any), the name resolved by us and every address checked (loopback,
 * private, link-local and other internal ranges refused unless egress_allow_private), then a
 * TCP connection to the first acceptable address and bytes copied both ways, with a bounded
 * amount in flight each way. TLS stays end to end between the Function and the destination.
 * Answers: 200 (tunnel), 403 (not allowed), 502 (unreachable), 400 (not a CONNECT).
 */
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "fn_token.h"
#include "fr_int.h"

#define HEAD_MAX 8192
#define HIGH_WATER (1u << 20)
#define LOW_WATER (256u << 10)

enum { C_HEAD, C_RESOLVE, C_CONNECT, C_PIPE, C_CLOSING };

typedef struct eg_conn eg_conn;

struct fr_egress {
  fr_state *st;
  uv_pipe_t server;
  int server_open;
  char path[108];
  json_t *allow;
  char label[160];
  eg_conn *conns;
  int closing;
};

struct eg_conn {
  fr_egress *eg;
  eg_conn *next;
  uv_pipe_t client;
  uv_tcp_t up;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  int state, open_handles, up_init, resolving, connecting;
  char head[HEAD_MAX];
  size_t hlen;
  char host[256];
  int port;
  size_t pend_to_up, pend_to_client;
};

static void eg_maybe_free(fr_egress *eg) {
  if (eg->closing && !eg->server_open && !eg->conns) {
    fr_state *st = eg->st;
    json_decref(eg->allow);
    free(eg);
    fr_live(st, -1);
  }
}

/* Frees c once both handles are closed and no resolve or connect is outstanding. */
static void conn_try_free(eg_conn *c) {
  if (c->open_handles > 0 || c->resolving || c->connecting) return;
  fr_egress *eg = c->eg;
  for (eg_conn **pp = &eg->conns; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  free(c);
  eg_maybe_free(eg);
}

static void conn_handle_closed(uv_handle_t *h) {
  eg_conn *c = h->data;
  c->open_handles--;
  conn_try_free(c);
}

static void conn_close(eg_conn *c) {
  if (c->state == C_CLOSING) return;
  c->state = C_CLOSING;
  if (c->resolving) uv_cancel((uv_req_t *)&c->gai);
  uv_close((uv_handle_t *)&c->client, conn_handle_closed);
  if (c->up_init) uv_close((uv_handle_t *)&c->up, conn_handle_closed);
}

typedef struct eg_write {
  uv_write_t req;
  eg_conn *c;
  int to_up;
  size_t len;
  char data[];
} eg_write;

static void on_read_client(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_read_up(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  if (suggested > 65536) suggested = 65536;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void on_written(uv_write_t *w, int status) {
  eg_write *ew = (eg_write *)w;
  eg_conn *c = ew->c;
  if (ew->to_up) c->pend_to_up -= ew->len;
  else c->pend_to_client -= ew->len;
  free(ew);
  if (c->state == C_CLOSING) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  /* Below the low mark again: the side that was paused reads on. */
  if (c->state == C_PIPE && c->pend_to_up < LOW_WATER) uv_read_start((uv_stream_t *)&c->client, on_alloc, on_read_client);
  if (c->state == C_PIPE && c->pend_to_client < LOW_WATER) uv_read_start((uv_stream_t *)&c->up, on_alloc, on_read_up);
}

static int send_bytes(eg_conn *c, int to_up, const char *data, size_t len) {
  eg_write *ew = malloc(sizeof *ew + len);
  if (!ew) return -ENOMEM;
  ew->c = c;
  ew->to_up = to_up;
  ew->len = len;
  memcpy(ew->data, data, len);
  uv_buf_t b = uv_buf_init(ew->data, (unsigned)len);
  int r = uv_write(&ew->req, to_up ? (uv_stream_t *)&c->up : (uv_stream_t *)&c->client, &b, 1, on_written);
  if (r < 0) {
    free(ew);
    return r;
  }
  if (to_up) c->pend_to_up += len;
  else c->pend_to_client += len;
  return 0;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  conn_close(req->data);
}

/* The proxy's answer; with then_close, the connection ends once it has been written. */
static void answer(eg_conn *c, const char *status_line, int then_close) {
  char msg[128];
  snprintf(msg, sizeof msg, "HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n", status_line);
  if (send_bytes(c, 0, msg, strlen(msg)) < 0) {
    conn_close(c);
    return;
  }
  if (!then_close) return;
  uv_read_stop((uv_stream_t *)&c->client);
  c->state = C_CONNECT; /* nothing more is read or relayed */
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->client, on_shutdown) < 0) conn_close(c);
}

static void on_read_up(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  eg_conn *c = s->data;
  if (n > 0 && c->state == C_PIPE) {
    if (send_bytes(c, 0, buf->base, (size_t)n) < 0) conn_close(c);
    else if (c->pend_to_client > HIGH_WATER) uv_read_stop(s);
  } else if (n < 0) {
    conn_close(c);
  }
  free(buf->base);
}

static void on_read_client(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_connected(uv_connect_t *req, int status) {
  eg_conn *c = req->data;
  c->connecting = 0;
  if (c->state == C_CLOSING) {
    conn_try_free(c);
    return;
  }
  if (status < 0) {
    answer(c, "502 Bad Gateway", 1);
    return;
  }
  c->state = C_PIPE;
  c->up.data = c;
  answer(c, "200 Connection established", 0);
  /* Bytes the client sent after its head go first. */
  char *p = strstr(c->head, "\r\n\r\n");
  size_t used = p ? (size_t)(p + 4 - c->head) : c->hlen;
  if (c->hlen > used && send_bytes(c, 1, c->head + used, c->hlen - used) < 0) {
    conn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->up, on_alloc, on_read_up);
  uv_read_start((uv_stream_t *)&c->client, on_alloc, on_read_client);
}

/* Loopback, private, link-local, carrier-grade NAT, multicast and reserved addresses: where
 * the node's own services live, which a Function must not reach unless allowed. */
static int internal_addr(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
    return (a >> 24) == 0 || (a >> 24) == 10 || (a >> 24) == 127 || (a >> 20) == 0xac1 ||
           (a >> 16) == 0xc0a8 || (a >> 16) == 0xa9fe || (a >> 22) == (100u << 2 | 1) || (a >> 28) >= 0xe;
  }
  if (sa->sa_family == AF_INET6) {
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(b, v4mapped, 12) == 0) {
      struct sockaddr_in s4;
      memset(&s4, 0, sizeof s4);
      s4.sin_family = AF_INET;
      memcpy(&s4.sin_addr, b + 12, 4);
      return internal_addr((const struct sockaddr *)&s4);
    }
    int zero = 1;
    for (int i = 0; i < 15; i++) zero &= b[i] == 0;
    if (zero) return 1;                          /* :: and ::1 */
    if ((b[0] & 0xfe) == 0xfc) return 1;         /* fc00::/7 unique local */
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return 1; /* fe80::/10 link-local */
    if (b[0] == 0xff) return 1;                  /* multicast */
    return 0;
  }
  return 1;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  eg_conn *c = req->data;
  c->resolving = 0;
  if (c->state == C_CLOSING) {
    uv_freeaddrinfo(res);
    conn_try_free(c);
    return;
  }
  fr_state *st = c->eg->st;
  const struct addrinfo *pick = NULL;
  int internal = 0;
  for (const struct addrinfo *ai = status == 0 ? res : NULL; ai && !pick; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    if (!st->egress_allow_private && internal_addr(ai->ai_addr)) {
      internal = 1;
      continue;
    }
    pick = ai;
  }
  if (!pick) {
    uv_freeaddrinfo(res);
    answer(c, internal ? "403 Forbidden" : "502 Bad Gateway", 1);
    return;
  }
  uv_tcp_init((uv_loop_t *)st->loop, &c->up);
  c->up.data = c;
  c->up_init = 1;
  c->open_handles++;
  c->creq.data = c;
  c->connecting = 1;
  int r = uv_tcp_connect(&c->creq, &c->up, pick->ai_addr, on_connected);
  uv_freeaddrinfo(res);
  if (r < 0) {
    c->connecting = 0;
    answer(c, "502 Bad Gateway", 1);
  }
}

static int host_allowed(const json_t *allow, const char *host) {
  if (!json_is_array(allow) || json_array_size(allow) == 0) return 1;
  size_t i, hl = strlen(host);
  json_t *v;
  json_array_foreach(allow, i, v) {
    const char *p = json_string_value(v);
    if (!p) continue;
    if (p[0] == '*' && p[1] == '.') {
      size_t sl = strlen(p + 1); /* ".suffix" */
      if (hl > sl && strcasecmp(host + hl - sl, p + 1) == 0) return 1;
    } else if (strcasecmp(p, host) == 0) {
      return 1;
    }
  }
  return 0;
}

static int parse_connect(eg_conn *c) {
  return evs__fn_connect_parse(c->head, c->hlen, c->host, sizeof c->host, &c->port);
}

static void on_read_client(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  eg_conn *c = s->data;
  if (n < 0) {
    free(buf->base);
    conn_close(c);
    return;
  }
  if (c->state == C_PIPE) {
    if (n > 0 && send_bytes(c, 1, buf->base, (size_t)n) < 0) conn_close(c);
    else if (c->pend_to_up > HIGH_WATER) uv_read_stop(s);
    free(buf->base);
    return;
  }
  if (c->state != C_HEAD) { /* bytes while we resolve or connect: keep them after the head */
    if (c->hlen + (size_t)n >= sizeof c->head) {
      uv_read_stop(s); /* resumes once connected */
    } else if (n > 0) {
      memcpy(c->head + c->hlen, buf->base, (size_t)n);
      c->hlen += (size_t)n;
      c->head[c->hlen] = 0;
    }
    free(buf->base);
    return;
  }
  if (c->hlen + (size_t)n >= sizeof c->head) {
    free(buf->base);
    answer(c, "400 Bad Request", 1);
    return;
  }
  memcpy(c->head + c->hlen, buf->base, (size_t)n);
  c->hlen += (size_t)n;
  c->head[c->hlen] = 0;
  free(buf->base);
  if (!strstr(c->head, "\r\n\r\n")) return;
  if (parse_connect(c) < 0) {
    answer(c, "400 Bad Request", 1);
    return;
  }
  fr_egress *eg = c->eg;
  if (!host_allowed(eg->allow, c->host)) {
    answer(c, "403 Forbidden", 1);
    return;
  }
  c->state = C_RESOLVE;
  char port[8];
  snprintf(port, sizeof port, "%d", c->port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->gai.data = c;
  c->resolving = 1;
  if (uv_getaddrinfo((uv_loop_t *)eg->st->loop, &c->gai, on_resolved, c->host, port, &hints) < 0) {
    c->resolving = 0;
    answer(c, "502 Bad Gateway", 1);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  fr_egress *eg = server->data;
  if (status < 0 || eg->closing) return;
  eg_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->eg = eg;
  uv_pipe_init((uv_loop_t *)eg->st->loop, &c->client, 0);
  c->client.data = c;
  c->open_handles = 1;
  c->next = eg->conns;
  eg->conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->client) < 0) {
    conn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->client, on_alloc, on_read_client);
}

static void server_closed(uv_handle_t *h) {
  fr_egress *eg = h->data;
  eg->server_open = 0;
  eg_maybe_free(eg);
}

/* libuv calls the callbacks of a closing handle (and of its cancelled writes, lookups and
 * connects) on a later loop turn. When fini closes the boxes' proxies, that turn comes after
 * the host has unloaded this plugin (the worker runs its loop once more to close everything),
 * so the code those callbacks live in must stay mapped: the first proxy pins this shared object
 * (RTLD_NODELETE). The callbacks then run as usual and release the last memory. */
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
  if (!eg) return NULL;
  eg->st = st;
  eg->allow = allow ? json_deep_copy(allow) : NULL;
  snprintf(eg->label, sizeof eg->label, "%s", label);
  int n = snprintf(eg->path, sizeof eg->path, "%s/%d-%u.sock", st->egress_dir, (int)getpid(), ++seq);
  if (n < 0 || (size_t)n >= sizeof eg->path) {
    json_decref(eg->allow);
    free(eg);
    return NULL;
  }
  mkdir(st->egress_dir, 0700);
  unlink(eg->path);
  uv_pipe_init((uv_loop_t *)st->loop, &eg->server, 0);
  eg->server.data = eg;
  eg->server_open = 1;
  st->live++;
  /* 0666 in a 0700 directory: only this uid reaches it through the file system, and a box
   * started by root (whose uid 0 is a uid of its own on the host) can connect through its bind
   * mount without keeping the host's uid 0 (docs/functions.md, "Files and uids"). */
  if (uv_pipe_bind(&eg->server, eg->path) < 0 || chmod(eg->path, 0666) < 0 ||
      uv_listen((uv_stream_t *)&eg->server, 16, on_connection) < 0) {
    fr_egress_close(eg);
    return NULL;
  }
  return eg;
}

const char *fr_egress_path(const fr_egress *eg) { return eg->path; }

void fr_egress_close(fr_egress *eg) {
  if (!eg || eg->closing) return;
  eg->closing = 1;
  unlink(eg->path);
  for (eg_conn *c = eg->conns; c; c = c->next) conn_close(c);
  uv_close((uv_handle_t *)&eg->server, server_closed);
}
