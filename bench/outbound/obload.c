/* bench/outbound/obload.c: a small closed-loop load generator for HTTPS proxies (CONNECT), since
 * wrk cannot speak through one. C threads, blocking sockets, OpenSSL; one connection per thread.
 *
 * Each thread, until the deadline: TCP to the proxy, TLS to it (-t), `CONNECT host:port` (with
 * `Proxy-Authorization`, -a), TLS inside the tunnel (verified against -C, name -n), then POST
 * the body (-b) to -u. -k: keep-alive, requests follow each other in one tunnel; otherwise
 * every request carries `Connection: close` and gets a new tunnel (as the SDKs do).
 * -D (direct): no proxy, no tunnel: TLS to the server itself (-t), then `GET -u` with
 * `Host: -T` and `Connection: close`, a new connection per request (bench/tls/run: the cost of a
 * TLS listener per connection, full or resumed with -r).
 * Prints a summary in wrk's format, so bench/lib/evsbench.py's parse_wrk reads it.
 *
 * cc -O2 -o obload obload.c -lssl -lcrypto -lpthread */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int g_port, g_tls, g_keepalive, g_conns = 10, g_dur = 10, g_resume, g_direct;
static const char *g_auth, *g_target = "localhost:443", *g_name = "localhost", *g_path = "/";
static const char *g_cafile, *g_proxy_ca, *g_check;
static char *g_body;
static size_t g_body_len;
static SSL_CTX *g_outer_ctx, *g_inner_ctx;
static double g_deadline;

typedef struct {
  pthread_t th;
  long done, errors, connect_err, read_err, resumed, handshakes;
  double *lat; size_t nlat, cap;
  SSL_SESSION *sess;
} worker;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The byte stream of a tunnel: the outer SSL, or the plain socket. */
typedef struct { int fd; SSL *o; } stream;
static int s_write(stream *s, const void *b, int n) {
  return s->o ? SSL_write(s->o, b, n) : (int)write(s->fd, b, n);
}
static int s_read(stream *s, void *b, int n) {
  return s->o ? SSL_read(s->o, b, n) : (int)read(s->fd, b, n);
}

/* Reads one HTTP response head+body over `rd`; returns status, or -1. */
typedef int (*rdfn)(void *, void *, int);
static int read_response(rdfn rd, void *arg, int head_only) {
  char buf[16384];
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have == sizeof buf - 1) return -1;
    int n = rd(arg, buf + have, (int)(sizeof buf - 1 - have));
    if (n <= 0) return -1;
    have += n;
    buf[have] = 0;
    end = strstr(buf, "\r\n\r\n");
  }
  int status = atoi(buf + 9);
  if (head_only) return status;
  long clen = -1;
  for (char *p = buf; p < end; p = strstr(p, "\r\n") + 2)
    if (!strncasecmp(p, "content-length:", 15)) clen = atol(p + 15);
  if (clen < 0) {   /* the destination answers with a Content-Length */
    if (getenv("OBLOAD_DEBUG")) fprintf(stderr, "no length: %.*s\n", (int)(end - buf), buf);
    return -1;
  }
  size_t body_have = have - (size_t)(end + 4 - buf);
  static __thread char chk[16384];
  size_t nchk = body_have < sizeof chk ? body_have : sizeof chk;
  memcpy(chk, end + 4, nchk);
  while ((long)body_have < clen) {
    int n = rd(arg, buf, sizeof buf);
    if (n <= 0) return -1;
    if (nchk + n < sizeof chk) { memcpy(chk + nchk, buf, n); nchk += n; }
    body_have += n;
  }
  if (getenv("OBLOAD_DEBUG") && g_check && !memmem(chk, nchk, g_check, strlen(g_check))) fprintf(stderr, "%.*s\n%.*s\n", (int)(end - buf), buf, (int)nchk, chk);
  if (g_check && (nchk >= sizeof chk || !memmem(chk, nchk, g_check, strlen(g_check)))) return -2;
  return status;
}
static int rd_ssl(void *a, void *b, int n) { return SSL_read(a, b, n); }
static int rd_stream(void *a, void *b, int n) { return s_read(a, b, n); }

static void record(worker *w, double t) {
  if (w->nlat == w->cap) {
    w->cap = w->cap ? 2 * w->cap : 65536;
    w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
  }
  w->lat[w->nlat++] = t;
}

static void *run(void *arg) {
  worker *w = arg;
  char req[8192];
  while (now() < g_deadline) {
    double t0 = now();
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    stream s = {fd, NULL};
    SSL *in = NULL;
    BIO *ob = NULL;
    if (connect(fd, (void *)&sa, sizeof sa) != 0) { w->connect_err++; close(fd); usleep(1000); continue; }
    if (g_tls) {
      s.o = SSL_new(g_outer_ctx);
      SSL_set_fd(s.o, fd);
      SSL_set_tlsext_host_name(s.o, "localhost");
      if (g_resume && w->sess) SSL_set_session(s.o, w->sess);
      if (SSL_connect(s.o) != 1) { w->connect_err++; goto fail; }
      w->handshakes++;
      w->resumed += SSL_session_reused(s.o);
    }
    int n;
    if (g_direct) {
      n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                   g_path, g_target);
      if (s_write(&s, req, n) != n) { w->read_err++; goto fail; }
      int st = read_response(rd_stream, &s, 0);
      if (st < 0) { w->read_err++; goto fail; }
      if (st < 200 || st > 399) w->errors++;
      w->done++;
      record(w, now() - t0);
      goto fail;   /* the connection ends after one request, as with `Connection: close` */
    }
    n = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n", g_target,
                     g_target, g_auth ? "Proxy-Authorization: " : "", g_auth ? g_auth : "",
                     g_auth ? "\r\n" : "");
    if (s_write(&s, req, n) != n) { w->connect_err++; goto fail; }
    /* The CONNECT's response: read byte by byte up to the blank line, so that nothing of the
     * inner TLS is consumed here. */
    {
      char h[4096];
      size_t k = 0;
      while (k < sizeof h - 1) {
        if (s_read(&s, h + k, 1) != 1) break;
        k++;
        if (k >= 4 && !memcmp(h + k - 4, "\r\n\r\n", 4)) break;
      }
      h[k] = 0;
      if (k < 12 || atoi(h + 9) != 200) { w->connect_err++; goto fail; }
    }
    in = SSL_new(g_inner_ctx);
    if (s.o) {
      ob = BIO_new(BIO_f_ssl());
      BIO_set_ssl(ob, s.o, BIO_NOCLOSE);
      SSL_set_bio(in, ob, ob);
    } else {
      SSL_set_fd(in, fd);
    }
    SSL_set_tlsext_host_name(in, g_name);
    SSL_set1_host(in, g_name);
    if (SSL_connect(in) != 1) {
      if (getenv("OBLOAD_DEBUG")) ERR_print_errors_fp(stderr);
      w->connect_err++;
      goto fail;
    }
    for (;;) {
      n = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n%s\r\n", g_path, g_target, g_body_len,
                   g_keepalive ? "" : "Connection: close\r\n");
      if (SSL_write(in, req, n) != n || SSL_write(in, g_body, (int)g_body_len) != (int)g_body_len) {
        w->read_err++; break;
      }
      int st = read_response(rd_ssl, in, 0);
      if (st < 0) {
        if (getenv("OBLOAD_DEBUG")) fprintf(stderr, "response: %d\n", st);
        w->read_err++;
        break;
      }
      if (st < 200 || st > 399) w->errors++;
      w->done++;
      double t1 = now();
      record(w, t1 - t0);
      t0 = t1;
      if (!g_keepalive || t1 >= g_deadline) break;
    }
  fail:
    if (in) { SSL_shutdown(in); SSL_free(in); }   /* frees ob, which leaves s.o alone */
    if (s.o) {
      if (g_resume) {
        SSL_SESSION *ss = SSL_get1_session(s.o);
        if (ss) { if (w->sess) SSL_SESSION_free(w->sess); w->sess = ss; }
      }
      SSL_shutdown(s.o);
      SSL_free(s.o);
    }
    close(fd);
  }
  return NULL;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void usage(void) {
  fprintf(stderr, "usage: obload -p PROXYPORT [-t] [-P proxy-ca] -C inner-ca -T host:port -n name "
                  "-u path -b bodyfile [-a key] [-k] [-r] [-c conns] [-d secs] [-x expect]\n"
                  "       obload -D -p PORT [-t -P server-ca] -T host -u path [-r] [-c conns] [-d secs] [-x expect]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int o;
  const char *bodyfile = NULL;
  while ((o = getopt(argc, argv, "p:tP:C:T:n:u:b:a:krc:d:x:D")) != -1) switch (o) {
    case 'p': g_port = atoi(optarg); break;
    case 't': g_tls = 1; break;
    case 'P': g_proxy_ca = optarg; break;
    case 'C': g_cafile = optarg; break;
    case 'T': g_target = optarg; break;
    case 'n': g_name = optarg; break;
    case 'u': g_path = optarg; break;
    case 'b': bodyfile = optarg; break;
    case 'a': g_auth = optarg; break;
    case 'k': g_keepalive = 1; break;
    case 'r': g_resume = 1; break;
    case 'c': g_conns = atoi(optarg); break;
    case 'd': g_dur = atoi(optarg); break;
    case 'x': g_check = optarg; break;
    case 'D': g_direct = 1; break;
    default: usage();
  }
  if (!g_port || (!g_direct && (!g_cafile || !bodyfile)) || g_conns < 1 || g_conns > 1000) usage();
  g_body = malloc(1 << 20);
  if (bodyfile) {
    FILE *f = fopen(bodyfile, "rb");
    if (!f) { perror(bodyfile); return 2; }
    g_body_len = fread(g_body, 1, 1 << 20, f);
    fclose(f);
  }
  signal(SIGPIPE, SIG_IGN);
  g_outer_ctx = SSL_CTX_new(TLS_client_method());
  g_inner_ctx = SSL_CTX_new(TLS_client_method());
  if (g_proxy_ca) {
    SSL_CTX_load_verify_locations(g_outer_ctx, g_proxy_ca, NULL);
    SSL_CTX_set_verify(g_outer_ctx, SSL_VERIFY_PEER, NULL);
  }
  if (g_cafile && SSL_CTX_load_verify_locations(g_inner_ctx, g_cafile, NULL) != 1) { ERR_print_errors_fp(stderr); return 2; }
  SSL_CTX_set_verify(g_inner_ctx, SSL_VERIFY_PEER, NULL);
  /* Inner sessions are never resumed: each tunnel's inner TLS is a full handshake (the SDK). */
  SSL_CTX_set_session_cache_mode(g_inner_ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(g_inner_ctx, SSL_OP_NO_TICKET);
  if (!g_resume) SSL_CTX_set_options(g_outer_ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(g_outer_ctx, g_resume ? SSL_SESS_CACHE_CLIENT : SSL_SESS_CACHE_OFF);
  worker *ws = calloc(g_conns, sizeof *ws);
  double t0 = now();
  g_deadline = t0 + g_dur;
  for (int i = 0; i < g_conns; i++) pthread_create(&ws[i].th, NULL, run, &ws[i]);
  long done = 0, errors = 0, cerr = 0, rerr = 0, resumed = 0, handshakes = 0;
  size_t nl = 0;
  for (int i = 0; i < g_conns; i++) {
    pthread_join(ws[i].th, NULL);
    resumed += ws[i].resumed; handshakes += ws[i].handshakes;
    done += ws[i].done; errors += ws[i].errors; cerr += ws[i].connect_err; rerr += ws[i].read_err;
    nl += ws[i].nlat;
  }
  double el = now() - t0;
  double *all = malloc((nl + 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < g_conns; i++) { memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof *all); k += ws[i].nlat; }
  qsort(all, nl, sizeof *all, cmpd);
  double p50 = nl ? all[nl / 2] : 0, p99 = nl ? all[(size_t)(nl * 0.99)] : 0;
  printf("obload %s, %d connections, %s\n",
         g_direct ? "direct, new connection per request"
                  : g_keepalive ? "keep-alive" : "new tunnel per request",
         g_conns, g_tls ? "TLS" : "plain");
  printf("  Latency Distribution\n     50%%  %.3fms\n     99%%  %.3fms\n", p50 * 1e3, p99 * 1e3);
  printf("  %ld requests in %.2fs\n", done, el);
  if (cerr || rerr) printf("  Socket errors: connect %ld, read %ld, write 0, timeout 0\n", cerr, rerr);
  if (errors) printf("  Non-2xx or 3xx responses: %ld\n", errors);
  printf("Requests/sec: %.2f\n", done / el);
  if (g_tls) printf("TLS handshakes to the server: %ld, resumed %ld\n", handshakes, resumed);
  return 0;
}
