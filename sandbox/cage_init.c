/*
 * evs-cage-init: PID 1 of a cage (docs/cages.md, "The cage's side"), under either backend.
 *
 * Under kvm it is the initramfs's /init: it mounts /dev, /proc and /sys, loads the modules in
 * /lib/modules/evs/order (virtio transport and console), and finds the virtio-serial port named
 * "evs". Under the sandbox, evs-cage-vmm starts it in fresh namespaces with the mux already on
 * fd 3 and the app's seccomp program on fd 4. Then, either way: /cage.json, lo up, HELLO to the
 * host, START (the environment, secrets included), the app started in /rootfs (chroot, its
 * user, its working directory), READY once its port accepts, and the mux served: channels the
 * host opens to the app's port; the Encryption API on 127.0.0.1:9999 (each request goes up as
 * one API call); with egress, DNS on 127.0.0.1:53 (a loopback address per name) and the egress
 * ports, whose connections go up with the name they were resolved from. The app's output goes
 * up only in debug mode; its exit is reported and the host restarts the cage.
 *
 * Static, single-threaded, poll(2). It never exits while the cage lives: pid 1's end is the
 * cage's (a VM powers off; a sandbox's pid namespace ends).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cage_mux.h"
#include "userns.h"

#define API_PORT 9999
#define MAX_ENV 512
#define MAX_ARGS 64
#define MAX_PORTS 16
#define MAX_NAMES 1024
#define MAX_API 32
#define API_MAX_BODY (1u << 20) /* one Encryption API request */

struct cfg {
  int debug, egress;
  uint16_t port;
  uint16_t egress_ports[MAX_PORTS];
  int n_egress_ports;
  char *argv[MAX_ARGS];
  int argc;
  char *env[MAX_ENV];
  int n_env;
  char workdir[256];
  unsigned uid, gid;
};

struct api_conn {
  int fd;
  uint32_t id;      /* 0: reading the request */
  cmux_buf in, out; /* request bytes; the answer */
  int answered;
};

static struct {
  int vm;
  int mux_fd;
  cmux *mux;
  struct cfg cfg;
  char *start_env[MAX_ENV];
  int n_start_env, started, ready;
  pid_t app;
  int out_pipe[2], err_pipe[2];
  char line[2][4096];
  size_t line_len[2];
  int sfd, api_l, dns_fd;
  int egress_l[MAX_PORTS];
  struct api_conn api[MAX_API];
  uint32_t next_api;
  char *names[MAX_NAMES];
  int n_names;
  uint8_t *filter;
  size_t filter_len;
} g;

/* ---- failure: said to the host and the console, then the cage ends ---------------------- */

static __attribute__((noreturn)) void end_cage(void) {
  if (g.vm) {
    sync();
    reboot(RB_POWER_OFF);
  }
  kill(-1, SIGKILL);
  _exit(1);
}

static __attribute__((noreturn, format(printf, 1, 2))) void fail(const char *fmt, ...) {
  char msg[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "evs-cage-init: %s\n", msg);
  if (g.mux_fd >= 0) {
    uint8_t f[CMUX_HDR + 300];
    size_t n = strlen(msg);
    f[0] = 0, f[1] = 0, f[2] = (uint8_t)(n >> 8), f[3] = (uint8_t)n;
    f[4] = CMUX_FAIL;
    memset(f + 5, 0, 4);
    memcpy(f + CMUX_HDR, msg, n);
    if (g.mux) { /* what the engine queued first */
      cmux_buf *o = cmux_out(g.mux);
      fcntl(g.mux_fd, F_SETFL, fcntl(g.mux_fd, F_GETFL) & ~O_NONBLOCK);
      if (o->len && write(g.mux_fd, o->p, o->len) < 0) end_cage();
    }
    if (write(g.mux_fd, f, CMUX_HDR + n) < 0) end_cage();
  }
  end_cage();
}

/* ---- /cage.json: a small reader for the fields init needs -------------------------------- */

struct js {
  const char *p, *end;
};

static void ws(struct js *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r'))
    j->p++;
}

/* A JSON string into out (escapes \" \\ \/ \n \t and \u00XX); -1 if malformed or too long. */
static int js_str(struct js *j, char *out, size_t cap) {
  ws(j);
  if (j->p >= j->end || *j->p != '"') return -1;
  size_t n = 0;
  for (j->p++; j->p < j->end && *j->p != '"'; j->p++) {
    char c = *j->p;
    if (c == '\\') {
      if (++j->p >= j->end) return -1;
      c = *j->p;
      if (c == 'n') c = '\n';
      else if (c == 't') c = '\t';
      else if (c == 'u') {
        unsigned v;
        if (j->end - j->p < 5 || sscanf(j->p + 1, "%4x", &v) != 1 || v > 0x7f) return -1;
        c = (char)v;
        j->p += 4;
      } else if (c != '"' && c != '\\' && c != '/') return -1;
    }
    if (n + 1 >= cap) return -1;
    out[n++] = c;
  }
  if (j->p >= j->end) return -1;
  j->p++;
  out[n] = 0;
  return (int)n;
}

static int js_skip(struct js *j, int depth);

static int js_skip_container(struct js *j, char close, int depth) {
  j->p++;
  for (;;) {
    ws(j);
    if (j->p < j->end && *j->p == close) {
      j->p++;
      return 0;
    }
    if (close == '}') {
      char k[256];
      if (js_str(j, k, sizeof k) < 0) return -1;
      ws(j);
      if (j->p >= j->end || *j->p++ != ':') return -1;
    }
    if (js_skip(j, depth + 1) < 0) return -1;
    ws(j);
    if (j->p < j->end && *j->p == ',') j->p++;
    else if (j->p >= j->end || *j->p != close) return -1;
  }
}

static int js_skip(struct js *j, int depth) {
  ws(j);
  if (j->p >= j->end || depth > 16) return -1;
  char c = *j->p;
  if (c == '{') return js_skip_container(j, '}', depth);
  if (c == '[') return js_skip_container(j, ']', depth);
  if (c == '"') {
    static char tmp[65536];
    return js_str(j, tmp, sizeof tmp) < 0 ? -1 : 0;
  }
  while (j->p < j->end && !strchr(",}] \n\t\r", *j->p)) j->p++;
  return 0;
}

static int js_bool(struct js *j, int *v) {
  ws(j);
  if (j->end - j->p >= 4 && memcmp(j->p, "true", 4) == 0) return *v = 1, j->p += 4, 0;
  if (j->end - j->p >= 5 && memcmp(j->p, "false", 5) == 0) return *v = 0, j->p += 5, 0;
  return -1;
}

static int js_num(struct js *j, long *v) {
  ws(j);
  char *e;
  *v = strtol(j->p, &e, 10);
  if (e == j->p) return -1;
  j->p = e;
  return 0;
}

/* An array of strings: each strdup'd into out (at most max). */
static int js_strs(struct js *j, char **out, int *n, int max) {
  ws(j);
  if (j->p >= j->end || *j->p != '[') return -1;
  j->p++;
  static char s[65536];
  for (;;) {
    ws(j);
    if (j->p < j->end && *j->p == ']') return j->p++, 0;
    if (js_str(j, s, sizeof s) < 0 || *n >= max) return -1;
    out[(*n)++] = strdup(s);
    ws(j);
    if (j->p < j->end && *j->p == ',') j->p++;
  }
}

static int js_ports(struct js *j, struct cfg *c) {
  ws(j);
  if (j->p >= j->end || *j->p != '[') return -1;
  j->p++;
  for (;;) {
    ws(j);
    if (j->p < j->end && *j->p == ']') return j->p++, 0;
    long v;
    char s[16];
    if (*j->p == '"') {
      if (js_str(j, s, sizeof s) < 0) return -1;
      v = strtol(s, NULL, 10);
    } else if (js_num(j, &v) < 0) {
      return -1;
    }
    if (v < 1 || v > 65535 || c->n_egress_ports >= MAX_PORTS) return -1;
    c->egress_ports[c->n_egress_ports++] = (uint16_t)v;
    ws(j);
    if (j->p < j->end && *j->p == ',') j->p++;
  }
}

static int js_object(struct js *j, struct cfg *c, int in_egress) {
  ws(j);
  if (j->p >= j->end || *j->p != '{') return -1;
  j->p++;
  for (;;) {
    ws(j);
    if (j->p < j->end && *j->p == '}') return j->p++, 0;
    char k[64], s[256];
    if (js_str(j, k, sizeof k) < 0) return -1;
    ws(j);
    if (j->p >= j->end || *j->p++ != ':') return -1;
    long v;
    int r;
    if (in_egress && strcmp(k, "enabled") == 0) r = js_bool(j, &c->egress);
    else if (in_egress && strcmp(k, "ports") == 0) r = js_ports(j, c);
    else if (!in_egress && strcmp(k, "egress") == 0) r = js_object(j, c, 1);
    else if (!in_egress && strcmp(k, "debug") == 0) r = js_bool(j, &c->debug);
    else if (!in_egress && (strcmp(k, "entrypoint") == 0 || strcmp(k, "cmd") == 0))
      r = js_strs(j, c->argv, &c->argc, MAX_ARGS - 1);
    else if (!in_egress && strcmp(k, "env") == 0) r = js_strs(j, c->env, &c->n_env, MAX_ENV);
    else if (!in_egress && strcmp(k, "workdir") == 0)
      r = js_str(j, c->workdir, sizeof c->workdir) < 0 ? -1 : 0;
    else if (!in_egress && strcmp(k, "port") == 0) {
      r = js_num(j, &v);
      if (r == 0 && (v < 1 || v > 65535)) r = -1;
      c->port = (uint16_t)v;
    } else if (!in_egress && strcmp(k, "user") == 0) {
      r = js_str(j, s, sizeof s) < 0 ? -1 : 0;
      if (r == 0 && strcmp(s, "root") != 0 && sscanf(s, "%u:%u", &c->uid, &c->gid) < 1) r = -1;
    } else {
      r = js_skip(j, 1);
    }
    if (r < 0) return -1;
    ws(j);
    if (j->p < j->end && *j->p == ',') j->p++;
  }
}

static void read_config(void) {
  static char buf[1 << 20];
  int fd = open("/cage.json", O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("/cage.json: %s", strerror(errno));
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0 || n == (ssize_t)sizeof buf) fail("/cage.json: unreadable or too large");
  struct cfg *c = &g.cfg;
  c->port = 8008;
  snprintf(c->workdir, sizeof c->workdir, "/");
  struct js j = {buf, buf + n};
  if (js_object(&j, c, 0) < 0) fail("/cage.json: malformed");
  if (c->argc == 0) fail("/cage.json: no entrypoint or cmd");
  if (c->egress && c->n_egress_ports == 0) c->egress_ports[c->n_egress_ports++] = 443;
  c->argv[c->argc] = NULL;
}

/* ---- the machine (kvm only): mounts, modules, the port ----------------------------------- */

static void vm_setup(void) {
  mkdir("/dev", 0755);
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  FILE *f = fopen("/lib/modules/evs/order", "re");
  char name[128];
  while (f && fgets(name, sizeof name, f)) {
    name[strcspn(name, "\r\n")] = 0;
    if (!name[0] || strchr(name, '/')) continue;
    char p[256];
    snprintf(p, sizeof p, "/lib/modules/evs/%s", name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST))
      dprintf(2, "evs-cage-init: module %s: %s\n", name, strerror(errno));
    if (fd >= 0) close(fd);
  }
  if (f) fclose(f);
  /* The port named "evs" (its device appears once the driver has probed). */
  for (int tries = 0; tries < 500; tries++) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char p[300], nm[64] = "";
      snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
      int fd = open(p, O_RDONLY | O_CLOEXEC);
      ssize_t k = fd >= 0 ? read(fd, nm, sizeof nm - 1) : -1;
      if (fd >= 0) close(fd);
      if (k <= 0 || strncmp(nm, "evs\n", 4) != 0) continue;
      snprintf(p, sizeof p, "/dev/%s", e->d_name);
      g.mux_fd = open(p, O_RDWR | O_CLOEXEC | O_NOCTTY);
      if (g.mux_fd >= 0) break;
    }
    if (d) closedir(d);
    if (g.mux_fd >= 0) return;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fail("no virtio-serial port named evs");
}

/* What the app sees besides its image: /proc, /sys (read-only, in a VM only: in the sandbox it
 * would be the host kernel's, devices and all), /dev, a /tmp of its own. */
static void app_mounts(void) {
  mkdir("/rootfs/proc", 0555);
  mkdir("/rootfs/sys", 0555);
  mkdir("/rootfs/dev", 0755);
  mkdir("/rootfs/tmp", 01777);
  /* Read-only in the sandbox: the global sysctls under /proc/sys check the writer's uid, not a
   * capability, and the cage's ids are host ids (the runner's, or EVS_CAGE_UID_BASE + n). */
  unsigned long ro = g.vm ? 0 : MS_RDONLY;
  if (mount("proc", "/rootfs/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | ro, NULL) < 0)
    dprintf(2, "evs-cage-init: /proc: %s\n", strerror(errno));
  if (g.vm) {
    mount("sysfs", "/rootfs/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/rootfs/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  }
  /* (the sandbox's /dev nodes are bound in by evs-cage-vmm, which can still see the host's) */
  mount("tmp", "/rootfs/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m");
}

/* ---- the app ------------------------------------------------------------------------------ */

static void start_app(void) {
  if (g.cfg.debug && (pipe2(g.out_pipe, O_CLOEXEC) < 0 || pipe2(g.err_pipe, O_CLOEXEC) < 0))
    fail("pipe: %s", strerror(errno));
  char *envp[MAX_ENV * 2 + 1];
  int n = 0;
  for (int i = 0; i < g.cfg.n_env; i++) envp[n++] = g.cfg.env[i];
  for (int i = 0; i < g.n_start_env; i++) { /* the deployment's variables win */
    const char *eq = strchr(g.start_env[i], '=');
    size_t kl = eq ? (size_t)(eq - g.start_env[i]) + 1 : strlen(g.start_env[i]);
    for (int k = 0; k < n; k++)
      if (strncmp(envp[k], g.start_env[i], kl) == 0) envp[k] = envp[--n];
    envp[n++] = g.start_env[i];
  }
  envp[n] = NULL;
  pid_t pid = fork();
  if (pid < 0) fail("fork: %s", strerror(errno));
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    setsid();
    if (chroot("/rootfs") < 0 || chdir("/") < 0) _exit(126);
    /* The app's own /dev/null (init's root has none under the sandbox): its output must never
     * reach the host's logs outside debug mode, so no null means no start. */
    int null = open("/dev/null", O_RDWR);
    if (null < 0 || dup2(null, 0) < 0 || dup2(g.cfg.debug ? g.out_pipe[1] : null, 1) < 0 ||
        dup2(g.cfg.debug ? g.err_pipe[1] : null, 2) < 0)
      _exit(126);
    if (chdir(g.cfg.workdir) < 0) _exit(126);
    if (setgroups(0, NULL) < 0 && errno != EPERM) _exit(126);
    if (setresgid(g.cfg.gid, g.cfg.gid, g.cfg.gid) < 0 ||
        setresuid(g.cfg.uid, g.cfg.uid, g.cfg.uid) < 0)
      _exit(126);
    if (!g.vm) { /* the VM is the boundary under kvm; here the kernel is shared */
      if (evs__drop_caps() < 0) _exit(126);
      struct sock_fprog fp = {(unsigned short)(g.filter_len / sizeof(struct sock_filter)),
                              (struct sock_filter *)g.filter};
      if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
          (g.filter && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0) < 0))
        _exit(126);
    }
    syscall(SYS_close_range, 3, ~0u, 0);
    extern char **environ;
    environ = envp;
    execvp(g.cfg.argv[0], g.cfg.argv);
    _exit(127);
  }
  g.app = pid;
  if (g.cfg.debug) {
    close(g.out_pipe[1]);
    close(g.err_pipe[1]);
    fcntl(g.out_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(g.err_pipe[0], F_SETFL, O_NONBLOCK);
  }
  for (int i = 0; i < g.n_start_env; i++) { /* secrets stay in the app's memory alone */
    explicit_bzero(g.start_env[i], strlen(g.start_env[i]));
    free(g.start_env[i]);
  }
  g.n_start_env = 0;
}

static int app_port_open(void) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g.cfg.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
  close(s);
  return ok;
}

/* ---- listeners ---------------------------------------------------------------------------- */

static int listen_on(int type, uint32_t addr, uint16_t port) {
  int s = socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) fail("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(addr);
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) fail("bind port %u: %s", port, strerror(errno));
  if (type == SOCK_STREAM && listen(s, 128) < 0) fail("listen: %s", strerror(errno));
  return s;
}

static void open_listeners(void) {
  g.api_l = listen_on(SOCK_STREAM, INADDR_LOOPBACK, API_PORT);
  g.dns_fd = -1;
  for (int i = 0; i < MAX_PORTS; i++) g.egress_l[i] = -1;
  if (!g.cfg.egress) return;
  g.dns_fd = listen_on(SOCK_DGRAM, INADDR_LOOPBACK, 53);
  /* Any loopback address: each name resolves to one of its own. */
  for (int i = 0; i < g.cfg.n_egress_ports; i++)
    g.egress_l[i] = listen_on(SOCK_STREAM, INADDR_ANY, g.cfg.egress_ports[i]);
  int fd = open("/rootfs/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    mkdir("/rootfs/etc", 0755);
    fd = open("/rootfs/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (fd >= 0) {
    const char rc[] = "nameserver 127.0.0.1\n";
    if (write(fd, rc, sizeof rc - 1) < 0) dprintf(2, "evs-cage-init: resolv.conf\n");
    close(fd);
  }
}

/* ---- DNS: every A question gets a loopback address of its own ---------------------------- */

static uint32_t name_addr(int i) { return (127u << 24) | (1u << 16) | (uint32_t)(i + 1); }

static int name_index(const char *name) {
  for (int i = 0; i < g.n_names; i++)
    if (strcmp(g.names[i], name) == 0) return i;
  if (g.n_names >= MAX_NAMES) return -1;
  g.names[g.n_names] = strdup(name);
  return g.names[g.n_names] ? g.n_names++ : -1;
}

static void serve_dns(void) {
  uint8_t q[512], a[600];
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(g.dns_fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
  if (n < 12 || (q[2] & 0x80) || q[4] != 0 || q[5] != 1) return;
  char name[256];
  size_t nl = 0, i = 12;
  while (i < (size_t)n && q[i]) {
    size_t l = q[i];
    if (l > 63 || i + 1 + l >= (size_t)n || nl + l + 1 >= sizeof name) return;
    if (nl) name[nl++] = '.';
    for (size_t k = 0; k < l; k++) {
      char c = (char)q[i + 1 + k];
      name[nl++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    i += 1 + l;
  }
  name[nl] = 0;
  if (i + 5 > (size_t)n) return;
  size_t qend = i + 5;
  uint16_t qtype = (uint16_t)(q[i + 1] << 8 | q[i + 2]);
  memcpy(a, q, qend);
  a[2] = 0x84 | (q[2] & 0x01); /* response, authoritative, RD copied */
  a[3] = 0x80;                 /* recursion available, NOERROR */
  a[6] = a[7] = a[8] = a[9] = a[10] = a[11] = 0;
  size_t len = qend;
  int idx = qtype == 1 && nl ? name_index(name) : -1;
  if (idx >= 0) {
    uint32_t ad = name_addr(idx);
    static const uint8_t rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
    memcpy(a + len, rr, sizeof rr);
    len += sizeof rr;
    a[len++] = (uint8_t)(ad >> 24), a[len++] = (uint8_t)(ad >> 16);
    a[len++] = (uint8_t)(ad >> 8), a[len++] = (uint8_t)ad;
    a[7] = 1;
  } else if (qtype == 1) {
    a[3] = 0x83; /* NXDOMAIN */
  }
  sendto(g.dns_fd, a, len, 0, (struct sockaddr *)&from, fl);
}

static void accept_egress(int l) {
  int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return;
  struct sockaddr_in a;
  socklen_t al = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
    close(fd);
    return;
  }
  uint32_t ad = ntohl(a.sin_addr.s_addr);
  int idx = (int)(ad - name_addr(0));
  if ((ad >> 16) != ((127u << 8) | 1u) || idx < 0 || idx >= g.n_names) {
    close(fd); /* not a name we resolved: no destination to ask for */
    return;
  }
  cmux_open(g.mux, fd, CMUX_KIND_EGRESS, ntohs(a.sin_port), g.names[idx]);
}

/* ---- the Encryption API on 9999: one request per connection ------------------------------ */

static void api_close(struct api_conn *c) {
  close(c->fd);
  cmux_buf_free(&c->in);
  cmux_buf_free(&c->out);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static void api_answer(struct api_conn *c, int status, const char *ctype, const uint8_t *body,
                       size_t len) {
  char h[256];
  int n = snprintf(h, sizeof h,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   status, status < 300 ? "OK" : "Error", ctype, len);
  c->out.max = 0;
  cmux_buf_put(&c->out, h, (size_t)n);
  cmux_buf_put(&c->out, body, len);
  c->answered = 1;
}

static void api_error(struct api_conn *c, int status, const char *msg) {
  char b[200];
  int n = snprintf(b, sizeof b, "{\"status\":%d,\"message\":\"%s\"}", status, msg);
  api_answer(c, status, "application/json", (const uint8_t *)b, (size_t)n);
}

/* The request, once whole: up as API_REQ. */
static void api_request(struct api_conn *c) {
  uint8_t *p = c->in.p;
  size_t n = c->in.len;
  uint8_t *he = memmem(p, n, "\r\n\r\n", 4);
  if (!he) {
    if (n > 16384) api_error(c, 431, "request head too large");
    return;
  }
  size_t hl = (size_t)(he - p) + 4;
  char *sp1 = memchr(p, ' ', hl);
  char *sp2 = sp1 ? memchr(sp1 + 1, ' ', hl - (size_t)(sp1 + 1 - (char *)p)) : NULL;
  if (!sp1 || !sp2) {
    api_error(c, 400, "bad request line");
    return;
  }
  size_t clen = 0;
  char *end = (char *)he;
  for (char *l = memmem(p, hl, "\r\n", 2); l && l + 2 < end;
       l = memmem(l + 2, (size_t)(end - l - 2) + 2, "\r\n", 2)) {
    char *h = l + 2;
    if (strncasecmp(h, "content-length:", 15) == 0) clen = strtoul(h + 15, NULL, 10);
    if (strncasecmp(h, "transfer-encoding:", 18) == 0) {
      api_error(c, 411, "send a Content-Length");
      return;
    }
  }
  if (clen > API_MAX_BODY) {
    api_error(c, 413, "request body too large");
    return;
  }
  if (n - hl < clen) return; /* more to come */
  c->id = ++g.next_api ? g.next_api : ++g.next_api;
  cmux_buf *o = cmux_out(g.mux);
  size_t off = cmux_frame_begin(o, CMUX_API_REQ, 0);
  cmux_put_u32(o, c->id);
  cmux_put_str(o, (char *)p, (size_t)(sp1 - (char *)p));
  char *path = sp1 + 1;
  cmux_put_str(o, path, (size_t)(sp2 - path));
  cmux_buf_put(o, p + hl, clen);
  if (cmux_frame_end(o, off) < 0) api_error(c, 500, "cannot pass the request on");
}

static void api_read(struct api_conn *c) {
  uint8_t b[16384];
  ssize_t k = read(c->fd, b, sizeof b);
  if (k < 0 && errno == EAGAIN) return;
  if (k <= 0) {
    api_close(c); /* an answer that comes later finds no connection: dropped */
    return;
  }
  if (c->id || c->answered) return;
  c->in.max = API_MAX_BODY + 16384;
  if (cmux_buf_put(&c->in, b, (size_t)k) < 0) {
    api_error(c, 413, "request too large");
    return;
  }
  api_request(c);
}

static void api_accept(void) {
  int fd = accept4(g.api_l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return;
  for (int i = 0; i < MAX_API; i++)
    if (g.api[i].fd < 0) {
      g.api[i].fd = fd;
      return;
    }
  close(fd); /* too many at once */
}

static void api_reply(const cmux_frame *f) {
  cmux_rd r;
  cmux_rd_init(&r, f->payload, f->len);
  uint32_t id;
  uint16_t status;
  const char *ct;
  size_t ctl, bl;
  const uint8_t *body;
  if (cmux_get_u32(&r, &id) < 0 || cmux_get_u16(&r, &status) < 0 ||
      cmux_get_str(&r, &ct, &ctl) < 0 || ctl > 100)
    return;
  cmux_get_rest(&r, &body, &bl);
  char ctype[101];
  memcpy(ctype, ct, ctl);
  ctype[ctl] = 0;
  for (int i = 0; i < MAX_API; i++)
    if (g.api[i].fd >= 0 && g.api[i].id == id && !g.api[i].answered)
      api_answer(&g.api[i], status, ctype, body, bl);
}

/* ---- the host's frames -------------------------------------------------------------------- */

static void on_ctrl(void *arg, cmux *m, const cmux_frame *f) {
  (void)arg, (void)m;
  if (f->type == CMUX_START && !g.started) {
    cmux_rd r;
    cmux_rd_init(&r, f->payload, f->len);
    while (r.n && g.n_start_env < MAX_ENV) {
      const char *s;
      size_t l;
      if (cmux_get_str(&r, &s, &l) < 0 || !memchr(s, '=', l) || memchr(s, 0, l)) break;
      char *e = malloc(l + 1);
      if (!e) break;
      memcpy(e, s, l);
      e[l] = 0;
      g.start_env[g.n_start_env++] = e;
    }
    g.started = 1;
  } else if (f->type == CMUX_API_RESP) {
    api_reply(f);
  }
}

static int on_open(void *arg, cmux *m, uint32_t chan, uint8_t kind, uint16_t port,
                   const char *name, int *skip_head) {
  (void)arg, (void)m, (void)chan, (void)port, (void)name, (void)skip_head;
  if (kind != CMUX_KIND_APP) return -1;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g.cfg.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    close(s);
    return -1;
  }
  return s;
}

static void on_dead(void *arg, cmux *m, const char *why) {
  (void)arg, (void)m;
  dprintf(2, "evs-cage-init: %s\n", why);
  end_cage(); /* the host is gone: so is the cage */
}

static const cmux_ops ops = {on_ctrl, on_open, on_dead};

static void send_log(int stream, const char *p, size_t n) {
  cmux_buf *o = cmux_out(g.mux);
  size_t off = cmux_frame_begin(o, CMUX_LOG, 0);
  cmux_put_u8(o, (uint8_t)stream);
  cmux_buf_put(o, p, n);
  cmux_frame_end(o, off);
}

static void read_output(int s) {
  int fd = s == 1 ? g.out_pipe[0] : g.err_pipe[0];
  char b[4096];
  ssize_t k = read(fd, b, sizeof b);
  if (k <= 0) {
    if (k == 0 || errno != EAGAIN) {
      close(fd);
      if (s == 1) g.out_pipe[0] = -1;
      else g.err_pipe[0] = -1;
    }
    return;
  }
  for (ssize_t i = 0; i < k; i++) {
    char *line = g.line[s - 1];
    size_t *ll = &g.line_len[s - 1];
    if (b[i] == '\n' || *ll == sizeof g.line[0]) {
      if (cmux_out(g.mux)->len < (4u << 20)) send_log(s, line, *ll); /* else dropped */
      *ll = 0;
      if (b[i] == '\n') continue;
    }
    line[(*ll)++] = b[i];
  }
}

static void reap(void) {
  struct signalfd_siginfo si;
  while (read(g.sfd, &si, sizeof si) > 0) {
  }
  int ws;
  pid_t p;
  while ((p = waitpid(-1, &ws, WNOHANG)) > 0) {
    if (p != g.app) continue;
    g.app = 0;
    uint8_t e[5];
    uint32_t v = WIFSIGNALED(ws) ? (uint32_t)WTERMSIG(ws) : (uint32_t)WEXITSTATUS(ws);
    e[0] = WIFSIGNALED(ws) ? 1 : 0;
    e[1] = (uint8_t)(v >> 24), e[2] = (uint8_t)(v >> 16), e[3] = (uint8_t)(v >> 8);
    e[4] = (uint8_t)v;
    cmux_send(g.mux, CMUX_EXIT, e, sizeof e);
  }
}

int main(void) {
  g.mux_fd = -1;
  for (int i = 0; i < MAX_API; i++) g.api[i].fd = -1;
  g.out_pipe[0] = g.err_pipe[0] = -1;
  struct stat sb;
  g.vm = !(fstat(3, &sb) == 0 && S_ISSOCK(sb.st_mode));
  if (g.vm) {
    vm_setup();
  } else {
    g.mux_fd = 3;
    fcntl(3, F_SETFD, FD_CLOEXEC);
    /* The app's seccomp program (evs-cage-vmm compiled it: no libseccomp in here). */
    if (fstat(4, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0 && sb.st_size < 65536 &&
        sb.st_size % (off_t)sizeof(struct sock_filter) == 0) {
      g.filter = malloc((size_t)sb.st_size);
      if (!g.filter || pread(4, g.filter, (size_t)sb.st_size, 0) != sb.st_size)
        fail("the app's seccomp program");
      g.filter_len = (size_t)sb.st_size;
      close(4);
    } else {
      fail("no seccomp program for the app on fd 4");
    }
  }
  sigset_t ss;
  sigemptyset(&ss);
  sigaddset(&ss, SIGCHLD);
  sigaddset(&ss, SIGPIPE);
  sigaddset(&ss, SIGTERM);
  sigaddset(&ss, SIGINT);
  sigaddset(&ss, SIGHUP);
  sigprocmask(SIG_BLOCK, &ss, NULL);
  sigemptyset(&ss);
  sigaddset(&ss, SIGCHLD);
  g.sfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  g.mux = cmux_new(g.mux_fd, 1, &ops, NULL);
  if (!g.mux) fail("out of memory");
  read_config();
  if (!g.vm) { /* the ids the cage has (evs-cage-vmm): an image USER outside them cannot run */
    const char *ids = getenv("EVS_CAGE_IDS");
    unsigned long n = ids ? strtoul(ids, NULL, 10) : 1;
    if (g.cfg.uid >= n || g.cfg.gid >= n)
      fail("the image's USER is %u:%u, but this cage has only uid and gid 0: the sandbox backend "
           "maps a range of ids only when evserver runs as root (docs/cages.md)",
           g.cfg.uid, g.cfg.gid);
  }
  evs__loopback_up();
  sethostname("cage", 4);
  app_mounts();
  uint8_t hello[2] = {(uint8_t)(g.cfg.port >> 8), (uint8_t)g.cfg.port};
  cmux_send(g.mux, CMUX_HELLO, hello, sizeof hello);

  struct pollfd pf[512];
  int64_t last_probe = 0;
  for (;;) {
    if (g.started && !g.app && !g.ready && g.api_l == 0) {
      open_listeners();
      start_app();
    }
    if (g.started && g.app && !g.ready) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t now = ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
      if (now - last_probe >= 5) {
        last_probe = now;
        if (app_port_open()) {
          g.ready = 1;
          cmux_send(g.mux, CMUX_READY, NULL, 0);
        }
      }
    }
    size_t n = cmux_pollfds(g.mux, pf, 400);
    size_t base = n;
    pf[n++] = (struct pollfd){g.sfd, POLLIN, 0};
    if (g.api_l > 0) pf[n++] = (struct pollfd){g.api_l, POLLIN, 0};
    if (g.dns_fd >= 0) pf[n++] = (struct pollfd){g.dns_fd, POLLIN, 0};
    for (int i = 0; i < MAX_PORTS; i++)
      if (g.egress_l[i] >= 0) pf[n++] = (struct pollfd){g.egress_l[i], POLLIN, 0};
    if (g.out_pipe[0] >= 0) pf[n++] = (struct pollfd){g.out_pipe[0], POLLIN, 0};
    if (g.err_pipe[0] >= 0) pf[n++] = (struct pollfd){g.err_pipe[0], POLLIN, 0};
    for (int i = 0; i < MAX_API; i++)
      if (g.api[i].fd >= 0)
        pf[n++] = (struct pollfd){g.api[i].fd, (short)(g.api[i].out.len ? POLLOUT : POLLIN), 0};
    int wait_ms = g.started && g.app && !g.ready ? 5 : -1;
    if (poll(pf, n, wait_ms) < 0 && errno != EINTR) fail("poll: %s", strerror(errno));
    for (size_t i = base; i < n; i++) {
      if (!pf[i].revents) continue;
      int fd = pf[i].fd;
      if (fd == g.sfd) reap();
      else if (fd == g.api_l) api_accept();
      else if (fd == g.dns_fd) serve_dns();
      else if (fd == g.out_pipe[0]) read_output(1);
      else if (fd == g.err_pipe[0]) read_output(2);
      else {
        int done = 0;
        for (int k = 0; k < MAX_PORTS && !done; k++)
          if (fd == g.egress_l[k]) accept_egress(fd), done = 1;
        for (int k = 0; k < MAX_API && !done; k++) {
          struct api_conn *c = &g.api[k];
          if (c->fd != fd) continue;
          done = 1;
          if (c->out.len) {
            ssize_t w = write(fd, c->out.p, c->out.len);
            if (w > 0) cmux_buf_drop(&c->out, (size_t)w);
            if (w < 0 && errno != EAGAIN) api_close(c);
            else if (c->out.len == 0) api_close(c);
          } else {
            api_read(c);
          }
        }
      }
    }
    cmux_service(g.mux, pf, base);
  }
}
