/*
 * evctl's HTTP/1.1 client: one request per connection over the admin Unix socket, blocking I/O
 * with a deadline for the whole exchange. It sends Connection: close and reads a response framed
 * by Content-Length, chunked transfer coding, or the close of the connection, skipping interim
 * 1xx responses. The server is trusted to speak HTTP, not to be well-behaved: every length is
 * bounded and a malformed answer is an error, never a crash or a hang.
 */
#include "evctl.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD_BYTES (64u << 10)
#define MAX_HEADERS 200

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *msg) { snprintf(err, errlen, "%s", msg); }

/* The next line in [p, end): its length without CR LF goes to *ret_len, the start of the line
 * after it is returned. NULL if no LF yet. */
static const char *next_line(const char *p, const char *end, size_t *ret_len) {
  const char *lf = memchr(p, '\n', (size_t)(end - p));
  if (!lf) return NULL;
  size_t n = (size_t)(lf - p);
  if (n > 0 && p[n - 1] == '\r') n--;
  *ret_len = n;
  return lf + 1;
}

static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

static char *dup_range(const char *p, size_t n) {
  char *s = malloc(n + 1);
  if (s) {
    memcpy(s, p, n);
    s[n] = '\0';
  }
  return s;
}

void evctl_response_done(evctl_response *r) {
  if (!r) return;
  free(r->reason);
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  free(r->headers);
  free(r->body);
  memset(r, 0, sizeof(*r));
}

const char *evctl_response_header(const evctl_response *r, const char *name) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

/* Parses a status line and header fields from [p, end) (the head without its final empty
 * line) into r. Returns 0 or -1 with err. */
static int parse_head(const char *p, const char *end, evctl_response *r, char *err, size_t errlen) {
  size_t n;
  const char *next = next_line(p, end, &n);
  if (!next) next = end, n = (size_t)(end - p);
  if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
      p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
      (n > 12 && p[12] != ' ')) {
    set_err(err, errlen, "not an HTTP/1.x status line");
    return -1;
  }
  r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
  r->reason = n > 13 ? dup_range(p + 13, n - 13) : dup_range("", 0);
  if (!r->reason) goto nomem;

  for (p = next; p < end; p = next) {
    next = next_line(p, end, &n);
    if (!next) next = end, n = (size_t)(end - p);
    if (n == 0) continue;
    if (p[0] == ' ' || p[0] == '\t') {
      set_err(err, errlen, "folded header line");
      return -1;
    }
    const char *colon = memchr(p, ':', n);
    if (!colon || colon == p) {
      set_err(err, errlen, "header line without a name");
      return -1;
    }
    for (const char *c = p; c < colon; c++)
      if (!is_tchar((unsigned char)*c)) {
        set_err(err, errlen, "invalid character in a header name");
        return -1;
      }
    const char *v = colon + 1, *ve = p + n;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    if (r->nheaders == MAX_HEADERS) {
      set_err(err, errlen, "too many header fields");
      return -1;
    }
    evctl_header *h = realloc(r->headers, (r->nheaders + 1) * sizeof(*h));
    if (!h) goto nomem;
    r->headers = h;
    h[r->nheaders].name = dup_range(p, (size_t)(colon - p));
    h[r->nheaders].value = dup_range(v, (size_t)(ve - v));
    r->nheaders++;
    if (!h[r->nheaders - 1].name || !h[r->nheaders - 1].value) goto nomem;
  }
  return 0;
nomem:
  set_err(err, errlen, "out of memory");
  return -1;
}

/* Whether the last coding in a Transfer-Encoding value is "chunked". */
static int last_coding_is_chunked(const char *te) {
  const char *last = strrchr(te, ',');
  last = last ? last + 1 : te;
  while (*last == ' ' || *last == '\t') last++;
  size_t n = strcspn(last, " \t;");
  return n == 7 && strncasecmp(last, "chunked", 7) == 0;
}

/* Decodes a chunked body starting at p. Returns 1 when the last chunk and trailers are complete
 * (*ret_end just past them), 0 if more is needed, -1 if malformed. Decoded data goes to body. */
static int decode_chunked(const char *p, const char *end, char **body, size_t *body_len,
                          const char **ret_end, char *err, size_t errlen) {
  char *out = NULL;
  size_t outlen = 0;
  for (;;) {
    size_t n;
    const char *data = next_line(p, end, &n);
    if (!data) goto more;
    size_t size = 0, digits = 0;
    for (; digits < n; digits++) {
      char c = p[digits];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) break;
      if (size > (EVCTL_MAX_RESPONSE_BYTES >> 4)) goto toobig;
      size = size * 16 + (size_t)d;
    }
    if (digits == 0 || (digits < n && p[digits] != ';' && p[digits] != ' ' && p[digits] != '\t')) {
      set_err(err, errlen, "malformed chunk size");
      goto fail;
    }
    if (size == 0) {
      /* Trailer fields until an empty line; evctl has no use for them. */
      for (p = data;;) {
        const char *after = next_line(p, end, &n);
        if (!after) goto more;
        p = after;
        if (n == 0) break;
      }
      if (!out && !(out = malloc(1))) goto nomem;
      out[outlen] = '\0';
      *body = out;
      *body_len = outlen;
      *ret_end = p;
      return 1;
    }
    if (outlen + size > EVCTL_MAX_RESPONSE_BYTES) goto toobig;
    if ((size_t)(end - data) < size + 2) goto more;
    if (data[size] != '\r' || data[size + 1] != '\n') {
      set_err(err, errlen, "chunk not followed by CRLF");
      goto fail;
    }
    char *grown = realloc(out, outlen + size + 1);
    if (!grown) goto nomem;
    out = grown;
    memcpy(out + outlen, data, size);
    outlen += size;
    p = data + size + 2;
  }
more:
  free(out);
  return 0;
toobig:
  set_err(err, errlen, "response body too large");
  goto fail;
nomem:
  set_err(err, errlen, "out of memory");
fail:
  free(out);
  return -1;
}

int evctl_http_parse(const char *buf, size_t len, int eof, int head_request,
                     evctl_response *ret, size_t *ret_used, char *err, size_t errlen) {
  const char *p = buf, *end = buf + len;
  for (;;) {
    /* Find the empty line ending the head. */
    const char *line = p, *body = NULL;
    size_t n;
    for (;;) {
      const char *after = next_line(line, end, &n);
      if (!after) break;
      if (n == 0 && line != p) {
        body = after;
        break;
      }
      line = after;
    }
    if (!body) {
      if ((size_t)(end - p) > MAX_HEAD_BYTES) {
        set_err(err, errlen, "response head too large");
        return -1;
      }
      if (!eof) return 0;
      set_err(err, errlen, p == end ? "the server closed the connection without a response"
                                    : "the connection closed in the middle of the response head");
      return -1;
    }
    if ((size_t)(body - p) > MAX_HEAD_BYTES) {
      set_err(err, errlen, "response head too large");
      return -1;
    }

    evctl_response r = {0};
    if (parse_head(p, line, &r, err, errlen) < 0) {
      evctl_response_done(&r);
      return -1;
    }
    if (r.status < 200 && r.status != 101) {
      /* An interim response (100 Continue, 103 Early Hints): the real one follows. */
      evctl_response_done(&r);
      p = body;
      continue;
    }

    const char *te = evctl_response_header(&r, "Transfer-Encoding");
    const char *cl = evctl_response_header(&r, "Content-Length");
    const char *stop = NULL;
    int rc = 1;
    if (head_request || r.status == 204 || r.status == 304 || r.status < 200) {
      stop = body;
      r.body = dup_range("", 0);
    } else if (te && last_coding_is_chunked(te)) {
      rc = decode_chunked(body, end, &r.body, &r.body_len, &stop, err, errlen);
    } else if (!te && cl) {
      uint64_t want = 0;
      const char *c = cl;
      if (!*c) goto badlen;
      for (; *c; c++) {
        if (*c < '0' || *c > '9') goto badlen;
        want = want * 10 + (uint64_t)(*c - '0');
        if (want > EVCTL_MAX_RESPONSE_BYTES) {
          set_err(err, errlen, "response body too large");
          evctl_response_done(&r);
          return -1;
        }
      }
      for (size_t i = 0; i < r.nheaders; i++)
        if (strcasecmp(r.headers[i].name, "Content-Length") == 0 && strcmp(r.headers[i].value, cl))
          goto badlen;
      if ((uint64_t)(end - body) < want) {
        if (eof) {
          set_err(err, errlen, "the connection closed before the end of the response body");
          rc = -1;
        } else {
          rc = 0;
        }
      } else {
        stop = body + want;
        r.body = dup_range(body, (size_t)want);
        r.body_len = (size_t)want;
      }
    } else {
      /* Framed by the close of the connection. */
      if (!eof) {
        rc = 0;
      } else {
        stop = end;
        r.body = dup_range(body, (size_t)(end - body));
        r.body_len = (size_t)(end - body);
      }
    }
    if (rc == 1 && !r.body) {
      set_err(err, errlen, "out of memory");
      rc = -1;
    }
    if (rc == 0 && eof) {
      set_err(err, errlen, "the connection closed before the end of the response body");
      rc = -1;
    }
    if (rc != 1) {
      evctl_response_done(&r);
      return rc;
    }
    *ret = r;
    *ret_used = (size_t)(stop - buf);
    return 1;
  badlen:
    set_err(err, errlen, "invalid Content-Length");
    evctl_response_done(&r);
    return -1;
  }
}

/* ---- the exchange --------------------------------------------------------------------------- */

static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd pfd = {.fd = fd, .events = events};
    int rc = poll(&pfd, 1, (int)left);
    if (rc < 0 && errno == EINTR) continue;
    return rc < 0 ? -1 : rc;
  }
}

int evctl_http_request(const char *socket_path, const char *method, const char *target,
                       const char *content_type, const char *body, size_t body_len,
                       int timeout_ms, evctl_response *ret, char *err, size_t errlen) {
  int64_t deadline = now_ms() + timeout_ms;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof(sa.sun_path)) {
    snprintf(err, errlen, "cannot connect to %s: the path is longer than %zu bytes", socket_path,
             sizeof(sa.sun_path) - 1);
    return -1;
  }
  memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "cannot create a socket: %s", strerror(errno));
    return -1;
  }
  /* A Unix stream connect blocks only while the server's backlog is full; SO_SNDTIMEO bounds
   * that wait and every send. */
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
    int e = errno;
    const char *hint = e == ENOENT || e == ECONNREFUSED ? " (is evserver running?)"
                     : e == EACCES ? " (run evctl as root or as the user evserver runs as)"
                     : e == EAGAIN ? " (the server is not accepting connections)"
                     : "";
    snprintf(err, errlen, "cannot connect to %s: %s%s", socket_path, strerror(e), hint);
    close(fd);
    return -1;
  }

  char *req = NULL;
  size_t reqlen = 0;
  FILE *m = open_memstream(&req, &reqlen);
  if (!m) {
    snprintf(err, errlen, "out of memory");
    close(fd);
    return -1;
  }
  fprintf(m, "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: evctl/%s\r\n"
             "Accept: application/json\r\nConnection: close\r\n",
          method, target, EVS_VERSION);
  if (body)
    fprintf(m, "Content-Type: %s\r\nContent-Length: %zu\r\n", content_type, body_len);
  else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
           strcmp(method, "PATCH") == 0)
    fputs("Content-Length: 0\r\n", m);
  fputs("\r\n", m);
  if (body) fwrite(body, 1, body_len, m);
  if (fclose(m) != 0) {
    free(req);
    snprintf(err, errlen, "out of memory");
    close(fd);
    return -1;
  }

  int rc = -1;
  char *buf = NULL;
  size_t len = 0, cap = 0, parse_at = 0;
  for (size_t off = 0; off < reqlen;) {
    ssize_t w = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      /* The server may have answered before reading everything (an early error): read it. */
      if (errno == EPIPE || errno == ECONNRESET) break;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        snprintf(err, errlen, "timed out after %ds sending to %s", timeout_ms / 1000, socket_path);
      else
        snprintf(err, errlen, "cannot send to %s: %s", socket_path, strerror(errno));
      goto out;
    }
    off += (size_t)w;
  }

  for (;;) {
    size_t used;
    int eof = 0;
    if (cap - len < 16384) {
      size_t ncap = cap ? cap * 2 : 65536, most = EVCTL_MAX_RESPONSE_BYTES + MAX_HEAD_BYTES + 1;
      if (ncap > most) ncap = most;
      if (ncap <= len) {
        snprintf(err, errlen, "the response from %s is too large", socket_path);
        goto out;
      }
      char *grown = realloc(buf, ncap);
      if (!grown) {
        snprintf(err, errlen, "out of memory");
        goto out;
      }
      buf = grown;
      cap = ncap;
    }
    int ready = wait_fd(fd, POLLIN, deadline);
    if (ready == 0) {
      snprintf(err, errlen, "timed out after %ds waiting for an answer from %s",
               timeout_ms / 1000, socket_path);
      goto out;
    }
    ssize_t r = ready < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno != ECONNRESET) {
      snprintf(err, errlen, "cannot read from %s: %s", socket_path, strerror(errno));
      goto out;
    }
    if (r <= 0)
      eof = 1;
    else
      len += (size_t)r;
    /* Past 1 MiB, parse again only after a quarter more has arrived, so a large body costs
     * linear time; the server closes after the response anyway. */
    if (!eof && len < parse_at) continue;
    parse_at = len < (1u << 20) ? 0 : len + len / 4;
    char perr[128];
    int prc = evctl_http_parse(buf, len, eof, strcmp(method, "HEAD") == 0, ret, &used, perr,
                               sizeof(perr));
    if (prc < 0) {
      snprintf(err, errlen, "bad response from %s: %s", socket_path, perr);
      goto out;
    }
    if (prc == 1) break;
  }
  rc = 0;
out:
  free(buf);
  free(req);
  close(fd);
  return rc;
}
