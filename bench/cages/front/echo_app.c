/*
 * bench/cages/front/echo_app.c: the app behind both fronts in bench/cages/front/run: HTTP/1.1
 * keep-alive on the unix socket argv[1], answering every request with its body (so the bench sees what each
 * front passed on: plaintext through evserver, ev: strings through nginx). Single-threaded
 * poll() loop. Started by the stand-in runner (tests/plugins/cage_run_fake.c, through
 * EVS_FAKE_CAGE_APP_BIN), it says READY on fd 3 once listening; with a port number instead of
 * a path it listens on that TCP port (in a real cage, built with `evctl cage build`).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXC 1024
#define BUF 65536

typedef struct conn {
  char in[BUF];
  size_t len;
} conn;

static conn *conns[MAXC];

static int serve(int fd, conn *c) {
  for (;;) {
    char *end = memmem(c->in, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->in) + 4, body = 0;
    for (char *p = c->in; p < end; p++)
      if ((p == c->in || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15))
        body = strtoul(p + 15, NULL, 10);
    if (head + body > BUF) return -1;
    if (c->len < head + body) return 0;
    char out[BUF + 256];
    int n = snprintf(out, 256, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Content-Length: %zu\r\n\r\n", body);
    memcpy(out + n, c->in + head, body);
    size_t total = (size_t)n + body, off = 0;
    while (off < total) {
      ssize_t w = write(fd, out + off, total - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return -1;
      off += (size_t)w;
    }
    memmove(c->in, c->in + head + body, c->len - head - body);
    c->len -= head + body;
  }
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  /* A front that closes a connection while an answer is written must not kill the app (a
   * restarted app is a new process, which the bench no longer counts or pins). */
  signal(SIGPIPE, SIG_IGN);
  int ls;
  if (strspn(argv[1], "0123456789") == strlen(argv[1])) {
    /* In a real cage: the app's port (EXPOSE), inside the cage's own network. */
    ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0) return 1;
  } else {
    ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
    unlink(a.sun_path);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0) return 1;
    /* The stand-in runner's protocol on fd 3. */
    if (write(3, "READY\n", 6) != 6) { /* no runner: run anyway (nginx alone) */ }
  }
  static struct pollfd pf[MAXC + 1];
  int fds[MAXC];
  int n = 0;
  for (;;) {
    pf[0].fd = ls;
    pf[0].events = POLLIN;
    for (int i = 0; i < n; i++) {
      pf[i + 1].fd = fds[i];
      pf[i + 1].events = POLLIN;
    }
    if (poll(pf, (nfds_t)n + 1, -1) < 0) continue;
    for (int i = n - 1; i >= 0; i--) {
      if (!pf[i + 1].revents) continue;
      conn *c = conns[i];
      ssize_t r = read(fds[i], c->in + c->len, BUF - c->len);
      if (r <= 0 || (c->len += (size_t)r, serve(fds[i], c) < 0)) {
        close(fds[i]);
        free(c);
        fds[i] = fds[n - 1];
        conns[i] = conns[n - 1];
        n--;
      }
    }
    if (pf[0].revents && n < MAXC) {
      int fd = accept(ls, NULL, NULL);
      if (fd >= 0) {
        fds[n] = fd;
        conns[n] = calloc(1, sizeof(conn));
        n++;
      }
    }
  }
}
