/*
 * hello-cage: the test app of the Cages tests (static, no libraries beyond libc), the
 * Evervault "Hello, Cage!" server plus what the tests probe from inside a cage:
 *   GET  /hello               {"response":"Hello! I'm writing to you from within an enclave"}
 *   POST /echo                the method, path, headers and body it got, as JSON
 *   POST /roundtrip           its body to 127.0.0.1:9999/encrypt, that answer to /decrypt
 *   GET  /egress?host=H&port=P  resolve H (the cage's DNS), connect, send a TLS ClientHello
 *                             with SNI H, report what came back
 *   GET  /env                 its environment
 *   GET  /crash               exits 1
 *   GET  /whoami              its uid, /proc/self/uid_map (who its uid 0 is on the host, when
 *                             the cage has a /proc), the owner it sees of /dev/null (the
 *                             host's), whether it can write its own files (/etc/hostname, a
 *                             new /etc/whoami-file, left for the host to look at)
 *   GET  /escape?paths=a,b&port=N&wpaths=c&socks=d&pid=P  escape attempts, each reported
 *                             "blocked: <why>" or "ALLOWED": paths read, wpaths written,
 *                             unix sockets socks connected, signal 0 to the host's pid P,
 *                             forbidden calls, the network
 * Listens on $PORT or 8008; one request per connection.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static char out[1 << 20];
static size_t olen;

static void add(const char *s, size_t n) {
  if (olen + n < sizeof out) memcpy(out + olen, s, n), olen += n;
}
static void adds(const char *s) { add(s, strlen(s)); }

static void add_json_str(const char *s, size_t n) {
  adds("\"");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char e[8];
    if (c == '"' || c == '\\') e[0] = '\\', e[1] = (char)c, add(e, 2);
    else if (c < 0x20 || c >= 0x7f) snprintf(e, sizeof e, "\\u%04x", c), add(e, 6);
    else add((const char *)&c, 1);
  }
  adds("\"");
}

static void respond(int fd, int status, const char *ctype) {
  char h[200];
  int n = snprintf(h, sizeof h,
                   "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   status, ctype, olen);
  if (write(fd, h, (size_t)n) < 0 || write(fd, out, olen) < 0) return;
}

/* A POST to the Encryption API: its body into dst (NUL-terminated); the status, or -errno. */
static int api_call(const char *path, const char *body, size_t blen, char *dst, size_t cap) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9999)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    int e = errno;
    close(s);
    return -e;
  }
  char h[256];
  int n = snprintf(h, sizeof h,
                   "POST %s HTTP/1.1\r\nHost: 127.0.0.1:9999\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n",
                   path, blen);
  if (write(s, h, (size_t)n) < 0 || write(s, body, blen) < 0) return close(s), -EIO;
  static char resp[1 << 20];
  size_t rl = 0;
  ssize_t k;
  while (rl < sizeof resp - 1 && (k = read(s, resp + rl, sizeof resp - 1 - rl)) > 0)
    rl += (size_t)k;
  close(s);
  resp[rl] = 0;
  char *b = strstr(resp, "\r\n\r\n");
  int status = 0;
  sscanf(resp, "HTTP/1.1 %d", &status);
  snprintf(dst, cap, "%s", b ? b + 4 : "");
  return status;
}

/* ---- DNS and a ClientHello ---------------------------------------------------------------- */

static int resolve(const char *host, struct in_addr *ret) {
  char ns[64] = "127.0.0.1", line[256];
  FILE *f = fopen("/etc/resolv.conf", "r");
  while (f && fgets(line, sizeof line, f)) sscanf(line, "nameserver %63s", ns);
  if (f) fclose(f);
  uint8_t q[300] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  size_t n = 12;
  for (const char *p = host; *p;) {
    size_t l = strcspn(p, ".");
    if (l == 0 || l > 63 || n + l + 6 > sizeof q) return -EINVAL;
    q[n++] = (uint8_t)l;
    memcpy(q + n, p, l);
    n += l;
    p += l + (p[l] == '.');
  }
  q[n++] = 0, q[n++] = 0, q[n++] = 1, q[n++] = 0, q[n++] = 1;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
  inet_pton(AF_INET, ns, &a.sin_addr);
  if (sendto(s, q, n, 0, (struct sockaddr *)&a, sizeof a) < 0) return close(s), -errno;
  struct pollfd pf = {s, POLLIN, 0};
  if (poll(&pf, 1, 3000) <= 0) return close(s), -ETIMEDOUT;
  uint8_t r[600];
  ssize_t k = recv(s, r, sizeof r, 0);
  close(s);
  if (k < (ssize_t)n + 16 || r[7] == 0) return -ENOENT;
  memcpy(ret, r + k - 4, 4);
  return 0;
}

static size_t client_hello(uint8_t *p, const char *host) {
  size_t hl = strlen(host), n = 0;
  uint8_t body[512];
  size_t b = 0;
  body[b++] = 3, body[b++] = 3; /* TLS 1.2 */
  for (int i = 0; i < 32; i++) body[b++] = (uint8_t)(i * 7);
  body[b++] = 0;                                             /* session id */
  static const uint8_t suites[] = {0, 8, 0xc0, 0x2f, 0xc0, 0x2b, 0xc0, 0x30, 0x00, 0x9c};
  memcpy(body + b, suites, sizeof suites), b += sizeof suites;
  body[b++] = 1, body[b++] = 0; /* compression: null */
  uint8_t ext[300];
  size_t e = 0;
  ext[e++] = 0, ext[e++] = 0; /* server_name */
  ext[e++] = (uint8_t)((hl + 5) >> 8), ext[e++] = (uint8_t)(hl + 5);
  ext[e++] = (uint8_t)((hl + 3) >> 8), ext[e++] = (uint8_t)(hl + 3);
  ext[e++] = 0, ext[e++] = (uint8_t)(hl >> 8), ext[e++] = (uint8_t)hl;
  memcpy(ext + e, host, hl), e += hl;
  static const uint8_t more[] = {
      0, 10, 0, 6, 0, 4, 0, 0x17, 0, 0x1d,             /* supported_groups */
      0, 11, 0, 2, 1, 0,                               /* ec_point_formats */
      0, 13, 0, 8, 0, 6, 4, 1, 4, 3, 8, 4,             /* signature_algorithms */
  };
  memcpy(ext + e, more, sizeof more), e += sizeof more;
  body[b++] = (uint8_t)(e >> 8), body[b++] = (uint8_t)e;
  memcpy(body + b, ext, e), b += e;
  p[n++] = 22, p[n++] = 3, p[n++] = 1;
  p[n++] = (uint8_t)((b + 4) >> 8), p[n++] = (uint8_t)(b + 4);
  p[n++] = 1, p[n++] = 0, p[n++] = (uint8_t)(b >> 8), p[n++] = (uint8_t)b;
  memcpy(p + n, body, b);
  return n + b;
}

static void egress(const char *host, int port) {
  char msg[300];
  struct in_addr ad = {0};
  int r = resolve(host, &ad);
  if (r < 0) {
    snprintf(msg, sizeof msg, "{\"resolved\":false,\"error\":\"%s\"}", strerror(-r));
    adds(msg);
    return;
  }
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = ad};
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    snprintf(msg, sizeof msg, "{\"resolved\":\"%s\",\"connected\":false,\"error\":\"%s\"}",
             inet_ntoa(ad), strerror(errno));
    close(s);
    adds(msg);
    return;
  }
  uint8_t ch[600];
  size_t chl = client_hello(ch, host);
  ssize_t w = write(s, ch, chl);
  struct pollfd pf = {s, POLLIN, 0};
  uint8_t rb[5];
  ssize_t k = poll(&pf, 1, 10000) > 0 ? read(s, rb, sizeof rb) : -1;
  int e = errno;
  close(s);
  snprintf(msg, sizeof msg,
           "{\"resolved\":\"%s\",\"connected\":true,\"sent\":%s,\"reply_bytes\":%zd,"
           "\"record_type\":%d,\"error\":\"%s\"}",
           inet_ntoa(ad), w == (ssize_t)chl ? "true" : "false", k, k > 0 ? rb[0] : -1,
           k < 0 ? strerror(e) : "");
  adds(msg);
}

/* ---- escape attempts ---------------------------------------------------------------------- */

static int first = 1;
static void report(const char *name, int rc, int err) {
  char m[200];
  snprintf(m, sizeof m, "%s\"%s\":\"%s%s\"", first ? "" : ",", name,
           rc >= 0 ? "ALLOWED" : "blocked: ", rc >= 0 ? "" : strerror(err));
  first = 0;
  adds(m);
}

/* The call first, then its errno (a function's arguments have no order of evaluation). */
#define TRY(name, call)       \
  do {                        \
    int rc_ = (int)(call);    \
    report(name, rc_, errno); \
  } while (0)

/* A call that the policy may answer by killing: tried in a child. */
static void in_child(const char *name, int which) {
  pid_t p = fork();
  if (p == 0) {
    long r = -1;
    if (which == 0) r = ptrace(PTRACE_TRACEME, 0, NULL, NULL);
    else if (which == 1) r = syscall(SYS_bpf, 0, NULL, 0);
    else if (which == 2) r = syscall(SYS_init_module, NULL, 0, "");
    else if (which == 3) r = syscall(SYS_kexec_load, 0, 0, NULL, 0);
    else if (which == 4) r = syscall(SYS_add_key, "user", "k", "v", 1, -2 /* user keyring */);
    else if (which == 5) {
      char attr[128] = {0}; /* a software counter on itself: the least perf allows */
      ((uint32_t *)attr)[0] = 1, ((uint32_t *)attr)[1] = 112, ((uint64_t *)attr)[1] = 0;
      r = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
    } else if (which == 6) r = syscall(SYS_open_tree, -100, "/", 1 /* OPEN_TREE_CLONE */);
    else if (which == 7) r = syscall(SYS_userfaultfd, 0);
    else if (which == 8) {
      char buf[8];
      struct iovec l = {buf, sizeof buf}, rm = {(void *)0x400000, sizeof buf};
      r = syscall(SYS_process_vm_readv, 1, &l, 1, &rm, 1, 0); /* init's memory */
      if (r < 0 && errno == EFAULT) r = 0; /* reached it: only the address was wrong */
    } else if (which == 9) { /* a command that does not exist: only the permission is tried */
      r = syscall(SYS_reboot, 0xfee1dead, 672274793, 0x0badc0de, NULL);
      if (r < 0 && errno == EINVAL) r = 0;
    }
    _exit(r >= 0 ? 0 : 10 + (errno & 0x3f));
  }
  int ws;
  waitpid(p, &ws, 0);
  char m[200];
  if (WIFSIGNALED(ws))
    snprintf(m, sizeof m, "%s\"%s\":\"blocked: killed by signal %d\"", first ? "" : ",", name,
             WTERMSIG(ws));
  else if (WEXITSTATUS(ws) == 0)
    snprintf(m, sizeof m, "%s\"%s\":\"ALLOWED\"", first ? "" : ",", name);
  else
    snprintf(m, sizeof m, "%s\"%s\":\"blocked: %s\"", first ? "" : ",", name,
             strerror(WEXITSTATUS(ws) - 10));
  first = 0;
  adds(m);
}

/* Opens each of the comma-separated paths with flags: "<what> <i>" in the report. */
static void opens(char *paths, const char *what, int flags) {
  int k = 0;
  char name[64];
  for (char *p = strtok(paths, ","); p; p = strtok(NULL, ","), k++) {
    snprintf(name, sizeof name, "%s %d", what, k);
    int fd = open(p, flags);
    report(name, fd, errno);
    if (fd >= 0) close(fd);
  }
}

static void escape(char *paths, int port, char *wpaths, char *socks, int pid) {
  first = 1;
  adds("{");
  opens(paths, "read path", O_RDONLY);
  opens(wpaths, "write path", O_WRONLY);
  int k = 0;
  char name[64];
  k = 0;
  for (char *p = strtok(socks, ","); p; p = strtok(NULL, ","), k++) {
    snprintf(name, sizeof name, "connect unix socket %d", k);
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    snprintf(u.sun_path, sizeof u.sun_path, "%s", p);
    int us = socket(AF_UNIX, SOCK_STREAM, 0);
    TRY(name, connect(us, (struct sockaddr *)&u, sizeof u));
    close(us);
  }
  if (pid > 0) TRY("signal a host process", kill(pid, 0));
  int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  report("raw socket", s, errno);
  s = socket(AF_PACKET, SOCK_RAW, 0);
  report("packet socket", s, errno);
  TRY("mount tmpfs", mount("x", "/tmp", "tmpfs", 0, NULL));
  TRY("unshare user ns", unshare(CLONE_NEWUSER));
  TRY("unshare net ns", unshare(CLONE_NEWNET));
  TRY("chroot", chroot("/tmp"));
  TRY("sethostname", sethostname("x", 1));
  TRY("setns", (int)syscall(SYS_setns, 0, 0));
  in_child("ptrace", 0);
  in_child("bpf", 1);
  in_child("init_module", 2);
  in_child("kexec_load", 3);
  in_child("add_key", 4);
  in_child("perf_event_open", 5);
  in_child("open_tree", 6);
  in_child("userfaultfd", 7);
  in_child("process_vm_readv init", 8);
  in_child("reboot", 9);
  /* The network: the host's loopback (evserver's port) and an outside address. */
  s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  TRY("connect host loopback port", connect(s, (struct sockaddr *)&a, sizeof a));
  close(s);
  s = socket(AF_INET, SOCK_STREAM, 0);
  a.sin_port = htons(443);
  inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
  TRY("connect outside", connect(s, (struct sockaddr *)&a, sizeof a));
  close(s);
  adds("}");
}

/* A line of /proc/self/status ("Pid", "Uid"...): its first field, or -1. */
static long status_field(const char *key) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  size_t kl = strlen(key);
  for (char *l = buf; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
    if (strncmp(l, key, kl) == 0 && l[kl] == ':') return strtol(l + kl + 1, NULL, 10);
  return -1;
}

static void whoami(void) {
  char m[300], map[200] = "";
  int fd = open("/proc/self/uid_map", O_RDONLY);
  ssize_t n = fd >= 0 ? read(fd, map, sizeof map - 1) : -1;
  if (fd >= 0) close(fd);
  map[n > 0 ? n : 0] = 0;
  struct stat sb;
  long null_uid = stat("/dev/null", &sb) == 0 ? (long)sb.st_uid : -1;
  snprintf(m, sizeof m, "{\"uid\":%u,\"gid\":%u,\"pid\":%d,\"dev_null_uid\":%ld,\"uid_map\":",
           (unsigned)getuid(), (unsigned)getgid(), (int)getpid(), null_uid);
  adds(m);
  add_json_str(map, strlen(map));
  /* What /proc shows: this process as its pid namespace numbers it, and every process there. */
  snprintf(m, sizeof m, ",\"status_pid\":%ld,\"status_uid\":%ld,\"proc_pids\":[",
           status_field("Pid"), status_field("Uid"));
  adds(m);
  DIR *d = opendir("/proc");
  struct dirent *e;
  int k = 0;
  while (d && (e = readdir(d)))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') {
      snprintf(m, sizeof m, "%s%s", k++ ? "," : "", e->d_name);
      adds(m);
    }
  if (d) closedir(d);
  adds("]");
  first = 0;
  fd = open("/etc/hostname", O_WRONLY | O_APPEND);
  report("write own file", fd >= 0 && write(fd, "", 0) == 0 ? 0 : -1, errno);
  if (fd >= 0) close(fd);
  fd = open("/etc/whoami-file", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  report("create own file", fd, errno);
  if (fd >= 0) close(fd);
  adds("}");
}

static void query(const char *path, const char *key, char *dst, size_t cap) {
  dst[0] = 0;
  const char *q = strchr(path, '?');
  size_t kl = strlen(key);
  for (q = q ? q + 1 : NULL; q && *q;) {
    size_t l = strcspn(q, "&");
    if (l > kl && strncmp(q, key, kl) == 0 && q[kl] == '=') {
      size_t vl = l - kl - 1 < cap - 1 ? l - kl - 1 : cap - 1;
      memcpy(dst, q + kl + 1, vl);
      dst[vl] = 0;
      return;
    }
    q += l + (q[l] == '&');
  }
}

static void serve(int c) {
  static char req[1 << 20];
  size_t n = 0;
  char *he = NULL;
  ssize_t k;
  while (n < sizeof req - 1 && (k = read(c, req + n, sizeof req - 1 - n)) > 0) {
    n += (size_t)k;
    req[n] = 0;
    if (!he) he = strstr(req, "\r\n\r\n");
    if (he) {
      char *cl = strcasestr(req, "\r\ncontent-length:");
      size_t want = cl && cl < he ? strtoul(cl + 17, NULL, 10) : 0;
      if (n >= (size_t)(he + 4 - req) + want) break;
    }
  }
  if (!he) return;
  *he = 0;
  char *body = he + 4;
  size_t blen = n - (size_t)(body - req);
  char method[16] = "", path[2048] = "";
  sscanf(req, "%15s %2047s", method, path);
  olen = 0;
  int status = 200;
  if (strcmp(path, "/hello") == 0) {
    adds("{\"response\":\"Hello! I'm writing to you from within an enclave\"}");
  } else if (strcmp(path, "/echo") == 0) {
    adds("{\"method\":");
    add_json_str(method, strlen(method));
    adds(",\"path\":");
    add_json_str(path, strlen(path));
    adds(",\"headers\":{");
    char *line = strstr(req, "\r\n");
    int firsth = 1;
    while (line && line[2]) {
      char *h = line + 2, *end = strstr(h, "\r\n"), *colon = strchr(h, ':');
      size_t hl = end ? (size_t)(end - h) : strlen(h);
      if (colon && colon < h + hl) {
        if (!firsth) adds(",");
        firsth = 0;
        for (char *x = h; x < colon; x++) *x = (char)((*x >= 'A' && *x <= 'Z') ? *x + 32 : *x);
        add_json_str(h, (size_t)(colon - h));
        adds(":");
        char *v = colon + 1;
        while (*v == ' ') v++;
        add_json_str(v, (size_t)(h + hl - v));
      }
      line = end;
    }
    adds("},\"body\":");
    add_json_str(body, blen);
    adds("}");
  } else if (strcmp(path, "/roundtrip") == 0) {
    static char enc[1 << 19], dec[1 << 19];
    int s1 = api_call("/encrypt", body, blen, enc, sizeof enc);
    int s2 = s1 == 200 ? api_call("/decrypt", enc, strlen(enc), dec, sizeof dec) : 0;
    char m[100];
    snprintf(m, sizeof m, "{\"encrypt_status\":%d,\"decrypt_status\":%d,\"encrypted\":", s1, s2);
    adds(m);
    add_json_str(enc, s1 > 0 ? strlen(enc) : 0);
    adds(",\"decrypted\":");
    add_json_str(dec, s2 > 0 ? strlen(dec) : 0);
    adds("}");
  } else if (strncmp(path, "/egress?", 8) == 0) {
    char host[256], port[8];
    query(path, "host", host, sizeof host);
    query(path, "port", port, sizeof port);
    egress(host, port[0] ? atoi(port) : 443);
  } else if (strcmp(path, "/env") == 0) {
    adds("{");
    for (char **e = environ; *e; e++) {
      char *eq = strchr(*e, '=');
      if (!eq) continue;
      if (e != environ) adds(",");
      add_json_str(*e, (size_t)(eq - *e));
      adds(":");
      add_json_str(eq + 1, strlen(eq + 1));
    }
    adds("}");
  } else if (strcmp(path, "/crash") == 0) {
    _exit(1);
  } else if (strcmp(path, "/whoami") == 0) {
    whoami();
  } else if (strncmp(path, "/escape", 7) == 0) {
    char paths[2048], port[8], wpaths[1024], socks[1024], pid[16];
    query(path, "paths", paths, sizeof paths);
    query(path, "port", port, sizeof port);
    query(path, "wpaths", wpaths, sizeof wpaths);
    query(path, "socks", socks, sizeof socks);
    query(path, "pid", pid, sizeof pid);
    escape(paths, port[0] ? atoi(port) : 1, wpaths, socks, pid[0] ? atoi(pid) : 0);
  } else {
    status = 404;
    adds("{\"error\":\"not found\"}");
  }
  respond(c, status, "application/json");
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const char *ps = getenv("PORT");
  int port = ps ? atoi(ps) : 8008;
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 64) < 0) {
    perror("hello-cage: listen");
    return 1;
  }
  printf("hello-cage listening on %d\n", port);
  fflush(stdout);
  for (;;) {
    int c = accept(l, NULL, NULL);
    if (c < 0) continue;
    serve(c);
    close(c);
  }
}
