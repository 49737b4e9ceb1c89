/* bench/websocket/wsload.c: the two ends of the WebSocket benchmark (bench/websocket/run), since
 * wrk speaks no WebSocket. One thread, epoll, non-blocking sockets; no TLS.
 *
 *   wsload echo PORT
 *     a destination: completes each handshake (RFC 6455 4.2.2) and answers every message it
 *     receives with one small text message, {"ok":true}. Frames are read whole (the benchmark's
 *     messages are small and unfragmented).
 *   wsload load PORT HOST PATH CONNS SECONDS MESSAGE_FILE
 *     a closed-loop client: CONNS WebSockets to 127.0.0.1:PORT (Host: HOST), each sending the
 *     message (masked, one text frame) and waiting for the answer before it sends the next,
 *     for SECONDS. Prints one JSON line: messages, seconds, p50/p99 round trip in ms, errors.
 *
 * cc -O2 -o wsload wsload.c -lcrypto */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)

typedef struct conn {
  int fd;
  int open;            /* handshake done */
  uint8_t *in;
  size_t in_len;
  uint64_t sent_ns;
} conn;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *m) {
  perror(m);
  exit(1);
}

static void nonblock(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Writes all of p (the benchmark's frames are small: the socket buffer takes them). */
static int write_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t w = write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      struct timespec ts = {0, 20000};
      nanosleep(&ts, NULL);
      continue;
    }
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

/* One whole frame at in[0..len): its total size, or 0 if incomplete. */
static size_t frame_len(const uint8_t *in, size_t len, size_t *hl, uint64_t *pl) {
  if (len < 2) return 0;
  uint64_t n = in[1] & 0x7F;
  size_t o = 2;
  if (n == 126) {
    if (len < 4) return 0;
    n = (uint64_t)in[2] << 8 | in[3];
    o = 4;
  } else if (n == 127) {
    if (len < 10) return 0;
    n = 0;
    for (int i = 0; i < 8; i++) n = n << 8 | in[2 + i];
    o = 10;
  }
  if (in[1] & 0x80) o += 4;
  if (len < o + n) return 0;
  *hl = o;
  *pl = n;
  return o + (size_t)n;
}

static size_t head(uint8_t *out, int op, size_t n, int mask) {
  size_t o = 0;
  out[o++] = (uint8_t)(0x80 | op);
  uint8_t m = mask ? 0x80 : 0;
  if (n < 126) out[o++] = (uint8_t)(m | n);
  else if (n < 65536) {
    out[o++] = m | 126;
    out[o++] = (uint8_t)(n >> 8);
    out[o++] = (uint8_t)n;
  } else {
    out[o++] = m | 127;
    for (int i = 7; i >= 0; i--) out[o++] = (uint8_t)((uint64_t)n >> (8 * i));
  }
  if (mask) {
    uint32_t k = (uint32_t)rand();
    memcpy(out + o, &k, 4);
    o += 4;
  }
  return o;
}

/* ---- echo ------------------------------------------------------------------------------- */

static void accept_key(const char *key, size_t kl, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  char buf[256];
  if (kl > 100) kl = 100;
  memcpy(buf, key, kl);
  memcpy(buf + kl, guid, sizeof guid - 1);
  unsigned char d[20];
  unsigned int dl = 20;
  EVP_Digest(buf, kl + sizeof guid - 1, d, &dl, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, d, 20);
}

static int echo_input(conn *c) {
  if (!c->open) {
    uint8_t *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!e) return 0;
    char *k = strcasestr((char *)c->in, "sec-websocket-key:");
    if (!k) return -1;
    k += 18;
    while (*k == ' ') k++;
    size_t kl = strcspn(k, "\r\n ");
    char acc[29];
    accept_key(k, kl, acc);
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
    if (write_all(c->fd, resp, (size_t)n) < 0) return -1;
    size_t used = (size_t)(e - c->in) + 4;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    c->open = 1;
  }
  static const char reply[] = "{\"ok\":true}";
  uint8_t out[64];
  size_t hl = head(out, 1, sizeof reply - 1, 0);
  memcpy(out + hl, reply, sizeof reply - 1);
  size_t off = 0, fl, h;
  uint64_t pl;
  while ((fl = frame_len(c->in + off, c->in_len - off, &h, &pl)) > 0) {
    int op = c->in[off] & 0x0F;
    if (op == 8) return -1;
    if (op == 1 || op == 2)
      if (write_all(c->fd, out, hl + sizeof reply - 1) < 0) return -1;
    off += fl;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  return 0;
}

__attribute__((noreturn)) static void run_echo(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) die("listen");
  nonblock(ls);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (!c) {
        int fd;
        while ((fd = accept(ls, NULL, NULL)) >= 0) {
          nonblock(fd);
          c = calloc(1, sizeof *c);
          c->fd = fd;
          c->in = malloc(BUF);
          struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
        }
        continue;
      }
      ssize_t r = read(c->fd, c->in + c->in_len, BUF - c->in_len);
      if (r <= 0 || (c->in_len += (size_t)r, echo_input(c) < 0) || c->in_len == BUF) {
        if (r < 0 && errno == EAGAIN) continue;
        close(c->fd);
        free(c->in);
        free(c);
      }
    }
  }
}

/* ---- load ------------------------------------------------------------------------------- */

static uint8_t *g_msg;
static size_t g_msg_len;
static uint64_t *g_lat;
static size_t g_nlat, g_cap_lat;
static uint64_t g_errors;

static int send_msg(conn *c) {
  uint8_t out[16 + 65536];
  size_t hl = head(out, 1, g_msg_len, 1);
  uint8_t key[4];
  memcpy(key, out + hl - 4, 4);
  for (size_t i = 0; i < g_msg_len; i++) out[hl + i] = g_msg[i] ^ key[i & 3];
  c->sent_ns = now_ns();
  return write_all(c->fd, out, hl + g_msg_len);
}

static int cmp64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int run_load(int port, const char *host, const char *path, int conns, int secs,
                    const char *file) {
  FILE *f = fopen(file, "rb");
  if (!f) die(file);
  g_msg = malloc(65536);
  g_msg_len = fread(g_msg, 1, 65536, f);
  fclose(f);
  int ep = epoll_create1(0);
  conn *cs = calloc((size_t)conns, sizeof *cs);
  for (int i = 0; i < conns; i++) {
    conn *c = &cs[i];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    nonblock(c->fd);
    c->in = malloc(BUF);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, host);
    write_all(c->fd, req, (size_t)n);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  }
  g_cap_lat = 1 << 20;
  g_lat = malloc(g_cap_lat * sizeof *g_lat);
  uint64_t start = 0, end = 0, t0 = now_ns();
  int opened = 0;
  struct epoll_event evs[256];
  uint64_t messages = 0;
  for (;;) {
    uint64_t now = now_ns();
    if (start && now >= end) break;
    if (!start && now - t0 > 10000000000ull) {
      fprintf(stderr, "wsload: only %d of %d WebSockets opened\n", opened, conns);
      return 1;
    }
    int n = epoll_wait(ep, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      ssize_t r = read(c->fd, c->in + c->in_len, BUF - c->in_len);
      if (r < 0 && errno == EAGAIN) continue;
      if (r <= 0) {
        g_errors++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        continue;
      }
      c->in_len += (size_t)r;
      if (!c->open) {
        uint8_t *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!e) continue;
        if (memcmp(c->in, "HTTP/1.1 101", 12) != 0) {
          fprintf(stderr, "wsload: handshake refused: %.*s\n", (int)(e - c->in), c->in);
          return 1;
        }
        size_t used = (size_t)(e - c->in) + 4;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        c->open = 1;
        if (++opened == conns) {
          start = now_ns();
          end = start + (uint64_t)secs * 1000000000ull;
          for (int k = 0; k < conns; k++) send_msg(&cs[k]);
        }
        continue;
      }
      size_t off = 0, fl, h;
      uint64_t pl;
      while ((fl = frame_len(c->in + off, c->in_len - off, &h, &pl)) > 0) {
        int op = c->in[off] & 0x0F;
        off += fl;
        if (op == 8) {
          g_errors++;
          continue;
        }
        if (op != 1 && op != 2) continue;
        uint64_t t = now_ns();
        messages++;
        if (g_nlat < g_cap_lat) g_lat[g_nlat++] = t - c->sent_ns;
        if (t < end) send_msg(c);
      }
      memmove(c->in, c->in + off, c->in_len - off);
      c->in_len -= off;
    }
  }
  double secs_d = (double)(now_ns() - start) / 1e9;
  qsort(g_lat, g_nlat, sizeof *g_lat, cmp64);
  double p50 = g_nlat ? (double)g_lat[g_nlat / 2] / 1e6 : 0;
  double p99 = g_nlat ? (double)g_lat[(g_nlat * 99) / 100] / 1e6 : 0;
  printf("{\"messages\":%llu,\"seconds\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"errors\":%llu}\n",
         (unsigned long long)messages, secs_d, p50, p99, (unsigned long long)g_errors);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 3 && strcmp(argv[1], "echo") == 0) run_echo(atoi(argv[2]));
  if (argc == 8 && strcmp(argv[1], "load") == 0)
    return run_load(atoi(argv[2]), argv[3], argv[4], atoi(argv[5]), atoi(argv[6]), argv[7]);
  fprintf(stderr, "usage: wsload echo PORT | wsload load PORT HOST PATH CONNS SECONDS FILE\n");
  return 2;
}
