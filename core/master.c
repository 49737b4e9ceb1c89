/*
 * The master process: parses the command line, validates the configuration and plugins, opens
 * the listening sockets, forks the workers and supervises them. It runs no event loop and no
 * plugin code: it waits for signals (SIGHUP reload, SIGTERM/SIGINT stop, SIGCHLD) and talks to
 * systemd through the sd_notify protocol (READY, RELOADING, STOPPING, WATCHDOG).
 *
 * Listening sockets belong to the master and outlive worker generations: on reload, new workers
 * inherit the same sockets before old ones stop accepting, so no queued connection is dropped.
 * All workers of a generation accept on one shared socket per listener.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "node.h"
#include "plugin.h"
#include "server.h"
#include "tls_tickets.h"
#include "worker.h"

#define MAX_WORKERS 64
#define READY_TIMEOUT_MS 15000

typedef struct child {
  pid_t pid;
  int slot;
  int rank; /* k for the k-th worker of its generation; a replacement inherits it */
  unsigned generation;
  int ctl; /* master's end of the worker's node channel, -1 when closed */
} child;

typedef struct master {
  evs__settings *settings;
  evs__listen_sock *socks;
  size_t nsocks;
  child children[EVS_METRICS_SLOTS];
  unsigned generation;       /* the generation that is (or is becoming) current */
  unsigned last_generation;  /* highest number handed out: numbers are never reused */
  evs__listen_sock *stale_socks; /* during a reload: the previous sockets, closed in new workers */
  size_t nstale;
  int nworkers;
  uint64_t watchdog_usec;
  int stopping;
  int sigfd;
  evs__kept_fd kept[EVS__KEPT_MAX]; /* descriptors plugins keep per rank (keep_fd) */
  size_t nkept;
} master;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- sd_notify --------------------------------------------------------------------------- */

static void sd_notify_msg(const char *msg) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !path[0]) return;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t len = strlen(path);
  if (len >= sizeof sa.sun_path) {
    close(fd);
    return;
  }
  memcpy(sa.sun_path, path, len);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace */
  socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  ssize_t r = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, sl);
  (void)r;
  close(fd);
}

/* ---- sockets ----------------------------------------------------------------------------- */

static int open_tcp(const evs__listener_conf *l, char *err, size_t errlen) {
  char host[256];
  int family = 0;
  uint16_t port = 0;
  if (evs__conf_parse_address(l->address, host, sizeof host, &family, &port) < 0) {
    snprintf(err, errlen, "listener '%s': invalid address '%s'", l->name, l->address);
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl;
  memset(&ss, 0, sizeof ss);
  if (family == AF_INET6 || (family == AF_UNSPEC && strcmp(host, "*") == 0)) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    if (strcmp(host, "*") == 0) a->sin6_addr = in6addr_any;
    else if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) goto bad;
    sl = sizeof *a;
    family = AF_INET6;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) goto bad;
    sl = sizeof *a;
  }
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "listener '%s': socket: %s", l->name, strerror(errno));
    return -1;
  }
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6 && strcmp(host, "*") == 0)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
    snprintf(err, errlen, "listener '%s': cannot listen on %s: %s", l->name, l->address,
             strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
bad:
  snprintf(err, errlen, "listener '%s': invalid address '%s'", l->name, l->address);
  return -1;
}

/* Creates path and its missing parents: the parents with parent_mode, path with mode. */
static int mkdir_p(const char *path, mode_t parent_mode, mode_t mode) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, parent_mode) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
  return 0;
}

static int open_unix(const char *path, char *err, size_t errlen) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "admin socket path too long: %s", path);
    return -1;
  }
  strcpy(sa.sun_path, path);
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    mkdir_p(dir, 0750, 0750);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  /* A stale socket from a crashed run is replaced; a live one belongs to another evserver. */
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    snprintf(err, errlen, "admin socket %s is in use by a running evserver", path);
    close(fd);
    return -1;
  }
  close(fd);
  unlink(path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  mode_t old = umask(0117);
  int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (r < 0 || listen(fd, 128) < 0) {
    snprintf(err, errlen, "cannot listen on admin socket %s: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* Open the sockets of s, reusing those of `old` whose address is unchanged. */
static int open_sockets(const evs__settings *s, const evs__listen_sock *old, size_t nold,
                        evs__listen_sock **ret, size_t *ret_n, char *err, size_t errlen) {
  size_t n = s->nlisteners + 1;
  evs__listen_sock *socks = calloc(n, sizeof *socks);
  if (!socks) return -1;
  for (size_t i = 0; i < n; i++) {
    evs__listen_sock *k = &socks[i];
    const char *addr = i < s->nlisteners ? s->listeners[i].address : s->admin_socket;
    k->is_admin = i == s->nlisteners;
    k->name = strdup(k->is_admin ? "admin" : s->listeners[i].name);
    k->conf = k->is_admin ? NULL : &s->listeners[i];
    k->tls = k->is_admin ? 0 : s->listeners[i].tls;
    k->fd = -1;
    for (size_t j = 0; j < nold; j++) {
      const char *oaddr = old[j].is_admin ? NULL : old[j].conf->address;
      if (old[j].is_admin == k->is_admin && old[j].fd >= 0 &&
          (k->is_admin || strcmp(oaddr, addr) == 0)) {
        k->fd = dup(old[j].fd);
        break;
      }
    }
    if (k->fd < 0) k->fd = k->is_admin ? open_unix(addr, err, errlen) : open_tcp(k->conf, err, errlen);
    if (k->fd >= 0 && k->tls) {
      /* Built here, as root: workers inherit the contexts, never read the key files. */
      char terr[1024];
      if (evs__tls_server_new(s, k->conf, &k->tls_server, terr, sizeof terr) < 0) {
        /* A message cut at errlen is still the message. */
        if (snprintf(err, errlen, "listener '%s': %s", k->name, terr) < 0 && errlen) err[0] = 0;
        close(k->fd);
        k->fd = -1;
      }
    }
    if (k->fd < 0) {
      for (size_t j = 0; j <= i; j++) {
        if (socks[j].fd >= 0) close(socks[j].fd);
        evs__tls_server_free(socks[j].tls_server);
        free(socks[j].name);
      }
      free(socks);
      return -1;
    }
  }
  *ret = socks;
  *ret_n = n;
  return 0;
}

static void close_sockets(evs__listen_sock *socks, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (socks[i].fd >= 0) close(socks[i].fd);
    evs__tls_server_free(socks[i].tls_server);
    free(socks[i].name);
  }
  free(socks);
}

/* ---- workers ----------------------------------------------------------------------------- */

static int free_slot(master *m) {
  for (int i = 0; i < EVS_METRICS_SLOTS; i++)
    if (m->children[i].pid == 0) return i;
  return -1;
}

static void drop_privileges(const evs__settings *s) {
  if (!s->user || geteuid() != 0) return;
  struct passwd *pw = getpwnam(s->user);
  if (!pw) {
    EVS_LOG_ERR("EVS-1601", "user '%s' does not exist", s->user);
    _exit(1);
  }
  if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
    EVS_LOG_ERR("EVS-1602", "cannot switch to user '%s': %s", s->user, strerror(errno));
    _exit(1);
  }
}

/* Fork one worker; returns the read end of its ready pipe, or -1. */
static int spawn(master *m, int slot, int rank, int first) {
  int p[2], ctl[2];
  if (pipe2(p, O_CLOEXEC) < 0) return -1;
  /* The node channel (node.c): without it the worker still serves, but alone. */
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) < 0) ctl[0] = ctl[1] = -1;
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    if (ctl[0] >= 0) {
      close(ctl[0]);
      close(ctl[1]);
    }
    return -1;
  }
  if (pid == 0) {
    close(p[0]);
    if (ctl[0] >= 0) close(ctl[0]);
    /* A worker holding a sibling's channel could pose as the master to it. */
    for (int i = 0; i < EVS_METRICS_SLOTS; i++)
      if (m->children[i].pid != 0 && m->children[i].ctl >= 0) close(m->children[i].ctl);
    if (m->sigfd >= 0) close(m->sigfd);
    /* A listener that moved must not stay open (and unanswered) in the new generation. */
    for (size_t i = 0; i < m->nstale; i++) close(m->stale_socks[i].fd);
    /* Kept descriptors: this rank's go to the worker, any other rank's must not. */
    size_t nkept = 0;
    for (size_t i = 0; i < m->nkept; i++) {
      if (m->kept[i].rank == rank) m->kept[nkept++] = m->kept[i];
      else close(m->kept[i].fd);
    }
    drop_privileges(m->settings);
    _exit(evs__worker_run(m->settings, m->socks, m->nsocks, slot, rank, m->generation, m->nworkers,
                          first, p[1], ctl[1], m->kept, nkept));
  }
  close(p[1]);
  if (ctl[1] >= 0) {
    close(ctl[1]);
    fcntl(ctl[0], F_SETFL, O_NONBLOCK);
  }
  m->children[slot] = (child){pid, slot, rank, m->generation, ctl[0]};
  return p[0];
}

/* ---- the node channel: relay messages between workers (core/node.c) ---------------------- */

static void close_ctl(child *c) {
  if (c->ctl >= 0) close(c->ctl);
  c->ctl = -1;
}

static void kept_drop(master *m, size_t i) {
  close(m->kept[i].fd);
  m->kept[i] = m->kept[--m->nkept];
}

/* KEEP from a worker: hold fd (or, when fd < 0, drop) for the worker's rank under plugin/name.
 * Only the current generation keeps: a draining worker's successor already has the rank. */
static void keep_fd(master *m, const child *from, const evs__node_hdr *h, const uint8_t *name,
                    size_t len, int fd) {
  if (from->generation != m->generation || len == 0 || len >= sizeof m->kept[0].name) {
    if (fd >= 0) close(fd);
    return;
  }
  char nm[sizeof m->kept[0].name];
  memcpy(nm, name, len);
  nm[len] = 0;
  for (size_t i = 0; i < m->nkept; i++)
    if (m->kept[i].rank == from->rank && strcmp(m->kept[i].plugin, h->plugin) == 0 &&
        strcmp(m->kept[i].name, nm) == 0) {
      kept_drop(m, i);
      break;
    }
  if (fd < 0) return;
  if (m->nkept == EVS__KEPT_MAX) {
    EVS_LOG_WARN("EVS-1621", "plugin %s: too many kept descriptors; not keeping %s", h->plugin, nm);
    close(fd);
    return;
  }
  evs__kept_fd *k = &m->kept[m->nkept++];
  k->rank = from->rank;
  snprintf(k->plugin, sizeof k->plugin, "%s", h->plugin);
  snprintf(k->name, sizeof k->name, "%s", nm);
  k->fd = fd;
}

/* One datagram from the worker in `slot`. The payload may be secret (an app token on its way to
 * every enclave): it is passed on at once, never logged, and the buffer is wiped. */
static void relay_node(master *m, int slot) {
  static uint8_t buf[EVS__NODE_DGRAM_MAX];
  child *from = &m->children[slot];
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 4)];
  } cm;
  struct iovec iov = {buf, sizeof buf};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                      .msg_controllen = sizeof cm.buf};
  ssize_t n = recvmsg(from->ctl, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    close_ctl(from);
    return;
  }
  if (n < 0) return;
  int fd = -1; /* the first descriptor passed (KEEP); any other is closed */
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (fd < 0) fd = f;
      else close(f);
    }
  }
  evs__node_hdr h;
  if (n < (ssize_t)sizeof h) {
    if (fd >= 0) close(fd);
    return;
  }
  memcpy(&h, buf, sizeof h);
  h.plugin[sizeof h.plugin - 1] = 0;
  if (h.type == EVS__NODE_KEEP) {
    keep_fd(m, from, &h, buf + sizeof h, (size_t)n - sizeof h, fd);
    return;
  }
  if (fd >= 0) close(fd);
  if (h.type == EVS__NODE_BCAST) {
    h.origin = slot; /* a worker cannot answer in another's name */
    memcpy(buf, &h, sizeof h);
    int reached = 0;
    for (int i = 0; i < EVS_METRICS_SLOTS; i++) {
      child *c = &m->children[i];
      if (i == slot || c->pid == 0 || c->ctl < 0) continue;
      if (send(c->ctl, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n) reached++;
    }
    explicit_bzero(buf, (size_t)n);
    evs__node_hdr cnt = h;
    cnt.type = EVS__NODE_COUNT;
    cnt.value = reached;
    ssize_t w = send(from->ctl, &cnt, sizeof cnt, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)w;
  } else if (h.type == EVS__NODE_REPLY && h.origin >= 0 && h.origin < EVS_METRICS_SLOTS) {
    child *to = &m->children[h.origin];
    if (to->pid != 0 && to->ctl >= 0) {
      ssize_t w = send(to->ctl, &h, sizeof h, MSG_DONTWAIT | MSG_NOSIGNAL);
      (void)w;
    }
  }
  explicit_bzero(buf, (size_t)n);
}

/* Start a full generation and wait until every worker said it is ready. Returns how many did;
 * *ret_degraded counts those that came up with a plugin that failed its init. */
static int spawn_generation(master *m, int *ret_degraded) {
  int fds[MAX_WORKERS];
  int n = 0;
  for (int i = 0; i < m->nworkers; i++) {
    int slot = free_slot(m);
    if (slot < 0) break;
    int fd = spawn(m, slot, i, i == 0);
    if (fd >= 0) fds[n++] = fd;
  }
  int ready = 0, degraded = 0;
  uint64_t deadline = now_ms() + READY_TIMEOUT_MS;
  for (int i = 0; i < n; i++) {
    struct pollfd pfd = {fds[i], POLLIN, 0};
    uint64_t t = now_ms();
    int left = t < deadline ? (int)(deadline - t) : 0;
    char c;
    if (poll(&pfd, 1, left) == 1 && read(fds[i], &c, 1) == 1) {
      ready++;
      if (c != 'R') degraded++;
    }
    close(fds[i]);
  }
  *ret_degraded = degraded;
  return ready;
}

static void signal_generation(master *m, int sig, int older_than_current) {
  for (int i = 0; i < EVS_METRICS_SLOTS; i++) {
    child *c = &m->children[i];
    if (c->pid == 0) continue;
    if (older_than_current && c->generation == m->generation) continue;
    kill(c->pid, sig);
  }
}

static void signal_generation_exact(master *m, int sig, unsigned generation) {
  for (int i = 0; i < EVS_METRICS_SLOTS; i++)
    if (m->children[i].pid != 0 && m->children[i].generation == generation)
      kill(m->children[i].pid, sig);
}

static int live_children(master *m) {
  int n = 0;
  for (int i = 0; i < EVS_METRICS_SLOTS; i++) n += m->children[i].pid != 0;
  return n;
}

static void reap(master *m) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < EVS_METRICS_SLOTS; i++) {
      child *c = &m->children[i];
      if (c->pid != pid) continue;
      c->pid = 0;
      close_ctl(c);
      evs__metrics_region *r = evs__metrics_region_get();
      if (r) __atomic_store_n(&r->slots[i].pid, 0, __ATOMIC_RELAXED);
      int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (c->generation == m->generation && !m->stopping) {
        /* A current worker died: replace it (slowly if it keeps dying). */
        EVS_LOG_ERR("EVS-1603", "worker %d exited unexpectedly (%s %d); restarting it", (int)pid,
                    WIFSIGNALED(status) ? "signal" : "status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        if (r) __atomic_fetch_add(&r->worker_restarts, 1, __ATOMIC_RELAXED);
        static uint64_t last_restart;
        if (now_ms() - last_restart < 1000) usleep(500 * 1000);
        last_restart = now_ms();
        int fd = spawn(m, i, c->rank, 0);
        if (fd >= 0) close(fd);
      } else if (!clean) {
        EVS_LOG_WARN("EVS-1604", "worker %d of generation %u exited with %s %d", (int)pid,
                     c->generation, WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      }
    }
  }
}

/* The user the workers switch to: only when the master runs as root and [server] user is set. */
typedef struct run_user {
  uid_t uid;
  gid_t gid;
  char name[64];
} run_user;

/* 1 and *ret filled when workers switch users, 0 when they do not, -1 (err) if the user does not
 * exist. */
static int worker_user(const evs__settings *s, run_user *ret, char *err, size_t errlen) {
  if (!s->user || geteuid() != 0) return 0;
  struct passwd *pw = getpwnam(s->user);
  if (!pw) {
    snprintf(err, errlen, "[server] user '%s' does not exist", s->user);
    return -1;
  }
  ret->uid = pw->pw_uid;
  ret->gid = pw->pw_gid;
  snprintf(ret->name, sizeof ret->name, "%s", pw->pw_name);
  return 1;
}

/* What the workers will need of the state directory and the SQLite store, checked as the
 * workers' user: in a child that switches to it, so the kernel itself answers (modes, ACLs, a
 * parent directory closed to the user). With migrate, the child then opens the store and runs
 * its migrations, so every file that creates belongs to the user. Without a user to switch to,
 * migrate opens the store here. Returns 0, or -1 with why in err. */
static int check_as_worker_user(const evs__settings *s, int migrate, char *err, size_t errlen) {
  run_user u;
  int r = worker_user(s, &u, err, errlen);
  if (r < 0) return -1;
  evs__store_options so = {s->store_backend, s->store_path, s->store_dsn};
  if (r == 0) {
    if (!migrate) return 0;
    evs__store *st = NULL;
    char serr[512];
    if (evs__store_open(&so, &st, serr, sizeof serr) < 0) {
      snprintf(err, errlen, "store (%s): %s", s->store_backend, serr);
      return -1;
    }
    evs__store_close(st);
    return 0;
  }
  /* What the start does as root first: it creates the directory's missing parents and gives
   * the directory, and a store file root left, to the user. So the user must reach the nearest
   * existing parent, and use what exists and will not be given to it. */
  char reach[4096];
  struct stat sb;
  snprintf(reach, sizeof reach, "%s", s->state_dir);
  do {
    char *slash = strrchr(reach, '/');
    if (!slash) break;
    if (slash == reach) slash[1] = '\0';
    else *slash = '\0';
  } while (stat(reach, &sb) < 0 && strcmp(reach, "/") != 0);
  int sqlite = strcmp(s->store_backend, "sqlite") == 0;
  int dir_given = !migrate; /* with migrate, prepare_state_dir has given them already */
  int store_given = !migrate && sqlite && stat(s->store_path, &sb) == 0 && sb.st_uid == 0;
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    char msg[10240] = "";
    close(p[0]);
    if (setgroups(0, NULL) < 0 || setgid(u.gid) < 0 || setuid(u.uid) < 0) {
      snprintf(msg, sizeof msg, "cannot switch to user '%s': %s", u.name, strerror(errno));
    } else {
      if (access(reach, X_OK) < 0)
        snprintf(msg, sizeof msg,
                 "state directory %s is not usable by user '%s' (uid %u): cannot reach %s: %s; "
                 "open the path to that user or choose another state_dir",
                 s->state_dir, u.name, (unsigned)u.uid, reach, strerror(errno));
      else if (!dir_given && access(s->state_dir, R_OK | W_OK | X_OK) < 0)
        snprintf(msg, sizeof msg,
                 "state directory %s is not usable by user '%s' (uid %u): %s; give it to that "
                 "user (chown) or choose another state_dir",
                 s->state_dir, u.name, (unsigned)u.uid, strerror(errno));
      else if (sqlite && !store_given && access(s->store_path, F_OK) == 0 &&
               access(s->store_path, R_OK | W_OK) < 0)
        snprintf(msg, sizeof msg,
                 "store file %s is not usable by user '%s' (uid %u): %s; give it to that user "
                 "(chown)",
                 s->store_path, u.name, (unsigned)u.uid, strerror(errno));
      else if (migrate) {
        evs__store *st = NULL;
        char serr[512];
        if (evs__store_open(&so, &st, serr, sizeof serr) < 0)
          snprintf(msg, sizeof msg, "store (%s), as user '%s': %s", s->store_backend, u.name,
                   serr);
        else
          evs__store_close(st);
      }
    }
    size_t n = strlen(msg);
    if (n && write(p[1], msg, n) < 0) n = 1;
    _exit(n ? 1 : 0);
  }
  close(p[1]);
  char msg[10240];
  ssize_t n, got = 0;
  while ((n = read(p[0], msg + got, sizeof msg - 1 - (size_t)got)) > 0) got += n;
  close(p[0]);
  msg[got > 0 ? got : 0] = '\0';
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
  if (snprintf(err, errlen, "%s", got > 0 ? msg : "the check as the workers' user failed") < 0 &&
      errlen)
    err[0] = 0;
  return -1;
}

/* Files of an earlier start that created them as root (before the store was opened as the
 * workers' user): the workers could not open them. */
static void give_store_files(const evs__settings *s, const run_user *u) {
  if (strcmp(s->store_backend, "sqlite") != 0) return;
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s%s", s->store_path, suffixes[i]);
    if (lstat(path, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_uid != 0 || u->uid == 0) continue;
    if (chown(path, u->uid, u->gid) < 0)
      EVS_LOG_WARN("EVS-1606", "cannot chown %s: %s", path, strerror(errno));
    else
      EVS_LOG_WARN("EVS-1623", "%s belonged to root: given to user '%s', whom the workers run as",
                   path, u->name);
  }
}

/* The state directory exists and belongs to the workers' user, and the store is migrated (as
 * that user, so the files it creates are the user's). */
static int prepare_state_dir(const evs__settings *s) {
  /* Parents the user must traverse; the directory itself is private. */
  if (mkdir_p(s->state_dir, 0755, 0700) < 0) {
    EVS_LOG_ERR("EVS-1605", "cannot create state directory %s: %s", s->state_dir, strerror(errno));
    return -1;
  }
  char err[1024];
  run_user u;
  int r = worker_user(s, &u, err, sizeof err);
  if (r < 0) {
    EVS_LOG_ERR("EVS-1601", "%s", err);
    return -1;
  }
  if (r > 0) {
    if (chown(s->state_dir, u.uid, u.gid) < 0)
      EVS_LOG_WARN("EVS-1606", "cannot chown %s: %s", s->state_dir, strerror(errno));
    give_store_files(s, &u);
  }
  /* Migrate once here so workers starting together do not race (the store also copes). */
  if (check_as_worker_user(s, 1, err, sizeof err) < 0) {
    EVS_LOG_ERR("EVS-1607", "%s", err);
    return -1;
  }
  return 0;
}

/* Validate a configuration file with its plugins; on success *ret holds it. */
/* Every connection is a descriptor, and all of limits.max_connections may land on one worker
 * (they share the listening sockets): raise the soft RLIMIT_NOFILE to the hard limit, which the
 * workers inherit, and say so when even that cannot hold max_connections (the systemd unit
 * sets LimitNOFILE=65536). */
static void raise_nofile(const evs__settings *s) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  /* 128: listeners, the store, logs, upstream pools' share is on top of this. */
  if (rl.rlim_cur != RLIM_INFINITY && (int64_t)rl.rlim_cur < s->max_connections + 128)
    EVS_LOG_WARN("EVS-1622",
                 "open-file limit %llu is below limits.max_connections (%lld) plus a margin: "
                 "accepting may fail before the limit (raise LimitNOFILE / ulimit -n)",
                 (unsigned long long)rl.rlim_cur, (long long)s->max_connections);
}

/* Checks every plugin's descriptor and configuration section, in a child process: opening a
 * plugin (dlopen) runs its ELF constructors, and the master, which supervises the node and may
 * run as root, runs no plugin code at all. The child runs as the workers' user. Returns 0 when
 * all plugins are acceptable; otherwise -1 with the first error in err and *ret_fatal set when
 * the configuration cannot run at all (not just without a rejected plugin). */
static int check_plugins_in_child(const evs__settings *s, char *err, size_t errlen,
                                  int *ret_fatal) {
  struct {
    int rc, fatal;
    char err[1024];
  } res;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "cannot check plugins: pipe: %s", strerror(errno));
    *ret_fatal = 1;
    return -1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    drop_privileges(s);
    memset(&res, 0, sizeof res);
    evs__plugin_rec *p = NULL;
    size_t n = 0;
    if (evs__plugins_scan(s, &p, &n) < 0) {
      res.rc = -1;
      res.fatal = 1;
      snprintf(res.err, sizeof res.err, "cannot read plugins directory %s", s->plugins_dir);
    } else if (evs__plugins_check_sections(s, p, n, res.err, sizeof res.err) < 0) {
      res.rc = -1;
      res.fatal = strstr(res.err, "no loadable plugin") != NULL;
    }
    ssize_t w = write(fds[1], &res, sizeof res);
    _exit(w == (ssize_t)sizeof res ? 0 : 1);
  }
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    snprintf(err, errlen, "cannot check plugins: fork: %s", strerror(errno));
    *ret_fatal = 1;
    return -1;
  }
  ssize_t got;
  do got = read(fds[0], &res, sizeof res);
  while (got < 0 && errno == EINTR);
  close(fds[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (got != (ssize_t)sizeof res) {
    if (WIFSIGNALED(st))
      snprintf(err, errlen, "checking the plugins in %s crashed (signal %d): a plugin's "
               "constructor or descriptor is broken", s->plugins_dir, WTERMSIG(st));
    else
      snprintf(err, errlen, "checking the plugins in %s failed (exit status %d)",
               s->plugins_dir, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    *ret_fatal = 1;
    return -1;
  }
  res.err[sizeof res.err - 1] = '\0';
  if (res.rc == 0) return 0;
  snprintf(err, errlen, "%s", res.err);
  *ret_fatal = res.fatal;
  return -1;
}

static int load_config(const char *path, evs__settings **ret, int for_test) {
  char err[2048] = "";
  evs__settings *s = NULL;
  if (evs__settings_load(path, &s, err, sizeof err) < 0) {
    if (for_test) fprintf(stderr, "evserver: %s\n", err);
    else EVS_LOG_ERR("EVS-1608", "%s", err);
    return -1;
  }
  evs_log_level lvl;
  if (evs__log_level_from_string(s->log_level, &lvl) == 0) evs__log_set_level(lvl);
  /* Load the TLS material now, so a bad certificate fails -t and a reload, not the workers. */
  for (size_t i = 0; i < s->nlisteners; i++) {
    if (!s->listeners[i].tls) continue;
    evs__tls_server *t = NULL;
    char terr[1024];
    if (evs__tls_server_new(s, &s->listeners[i], &t, terr, sizeof terr) < 0) {
      if (for_test) fprintf(stderr, "evserver: %s: listener '%s': %s\n", path, s->listeners[i].name, terr);
      else EVS_LOG_ERR("EVS-1619", "%s: listener '%s': %s", path, s->listeners[i].name, terr);
      evs__settings_free(s);
      return -1;
    }
    evs__tls_server_free(t);
  }
  int fatal = 0;
  if (check_plugins_in_child(s, err, sizeof err, &fatal) < 0) {
    /* Rejected plugins were logged by the check; only -t repeats the first error on stderr. A
     * rejected plugin is not fatal for a running server (it is skipped and logged), but -t
     * reports it so the operator sees it before a restart. Unknown plugin sections, an
     * unreadable plugins directory and a check that crashed are fatal. */
    if (for_test) fprintf(stderr, "evserver: %s\n", err);
    else if (fatal) EVS_LOG_ERR("EVS-1609", "%s", err);
    if (fatal || for_test) {
      evs__settings_free(s);
      return -1;
    }
  }
  *ret = s;
  return 0;
}

static int resolve_workers(const evs__settings *s) {
  long n = s->workers > 0 ? s->workers : sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  if (n > MAX_WORKERS / 2) n = MAX_WORKERS / 2; /* room for two generations during a reload */
  return (int)n;
}

static void reload(master *m, const char *conf_path) {
  /* One datagram, as Type=notify-reload requires. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char msg[80];
  snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000u);
  sd_notify_msg(msg);
  evs__settings *ns = NULL;
  if (load_config(conf_path, &ns, 0) < 0) {
    EVS_LOG_ERR("EVS-1610", "reload failed: keeping the running configuration");
    sd_notify_msg("READY=1\nSTATUS=reload failed; running the previous configuration");
    return;
  }
  evs__listen_sock *socks;
  size_t nsocks;
  char err[1024];
  if (open_sockets(ns, m->socks, m->nsocks, &socks, &nsocks, err, sizeof err) < 0) {
    EVS_LOG_ERR("EVS-1611", "reload failed: %s; keeping the running configuration", err);
    evs__settings_free(ns);
    sd_notify_msg("READY=1\nSTATUS=reload failed; running the previous configuration");
    return;
  }
  if (prepare_state_dir(ns) < 0) {
    close_sockets(socks, nsocks);
    evs__settings_free(ns);
    sd_notify_msg("READY=1\nSTATUS=reload failed; running the previous configuration");
    return;
  }
  evs__settings *old_settings = m->settings;
  evs__listen_sock *old_socks = m->socks;
  size_t old_n = m->nsocks;
  unsigned old_generation = m->generation;
  int old_nworkers = m->nworkers;
  m->settings = ns;
  m->socks = socks;
  m->nsocks = nsocks;
  m->nworkers = resolve_workers(ns);
  m->generation = ++m->last_generation;
  m->stale_socks = old_socks;
  m->nstale = old_n;
  int degraded = 0;
  int ready = spawn_generation(m, &degraded);
  m->stale_socks = NULL;
  m->nstale = 0;
  if (ready < m->nworkers || degraded > 0) {
    /* The new generation cannot serve what the old one does: retire it gracefully (it may
     * already have accepted connections) and keep the running configuration. */
    EVS_LOG_ERR("EVS-1618", "reload failed: %d of %d new workers ready, %d with a plugin that "
                "failed to initialise; keeping the running configuration", ready, m->nworkers,
                degraded);
    signal_generation_exact(m, SIGQUIT, m->generation);
    m->settings = old_settings;
    m->socks = old_socks;
    m->nsocks = old_n;
    m->generation = old_generation;
    m->nworkers = old_nworkers;
    close_sockets(socks, nsocks);
    evs__settings_free(ns);
    sd_notify_msg("READY=1\nSTATUS=reload failed; running the previous configuration");
    return;
  }
  /* Old workers stop accepting only now that new ones are listening. */
  signal_generation(m, SIGQUIT, 1);
  for (size_t i = m->nkept; i-- > 0;) /* ranks this generation does not have */
    if (m->kept[i].rank >= m->nworkers) kept_drop(m, i);
  close_sockets(old_socks, old_n);
  evs__settings_free(old_settings);
  evs__metrics_region *r = evs__metrics_region_get();
  if (r) __atomic_fetch_add(&r->reloads, 1, __ATOMIC_RELAXED);
  EVS_LOG_INFO("EVS-1612", "configuration reloaded: generation %u, %d of %d workers ready",
               m->generation, ready, m->nworkers);
  sd_notify_msg("READY=1\nSTATUS=running");
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: evserver [-c FILE] [-t] [-V]\n"
          "  -c FILE   configuration file (default /etc/evserver/evserver.conf)\n"
          "  -t        check the configuration and plugins, then exit\n"
          "  -V        print the version and exit\n"
          "  --describe-config  print every host configuration key with its help\n");
}

static void describe(void) {
  for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++) {
    printf("[%s%s]\n", d->type, d->named ? " \"name\"" : "");
    if (!d->keys) {
      printf("  (keys declared by the plugin)\n\n");
      continue;
    }
    for (const evs__conf_key *k = d->keys; k->item.key; k++) {
      const evs_config_item *it = &k->item;
      printf("  %-22s default %-16s %s\n", it->key, it->default_value ? it->default_value : "-",
             it->help ? it->help : "");
    }
    printf("\n");
  }
}

int evs__main(int argc, char **argv);
int evs__main(int argc, char **argv) {
  const char *conf_path = "/etc/evserver/evserver.conf";
  int test_only = 0;
  static const struct option longopts[] = {{"describe-config", no_argument, NULL, 'D'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  int opt;
  evs__log_set_role("master");
  while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
    switch (opt) {
      case 'c': conf_path = optarg; break;
      case 't': test_only = 1; break;
      case 'V': printf("evserver %s (plugin ABI %d.%d)\n", EVS_VERSION, EVS_ABI_MAJOR, EVS_ABI_MINOR); return 0;
      case 'D': describe(); return 0;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  /* No core dumps: a worker's memory may hold request data in flight. */
  struct rlimit rl = {0, 0};
  setrlimit(RLIMIT_CORE, &rl);
  prctl(PR_SET_DUMPABLE, 0);

  static master m; /* large (kept descriptors): not on the stack */
  memset(&m, 0, sizeof m);
  if (load_config(conf_path, &m.settings, test_only) < 0) return 1;
  raise_nofile(m.settings);
  if (test_only) {
    char err[1024];
    if (check_as_worker_user(m.settings, 0, err, sizeof err) < 0) {
      fprintf(stderr, "evserver: %s: %s\n", conf_path, err);
      evs__settings_free(m.settings);
      return 1;
    }
    /* Initialise every plugin once, in a child (the master runs no plugin code), so that a
     * plugin's own files (relay-config.json, ...) are checked too. */
    pid_t pid = fork();
    if (pid == 0) _exit(evs__worker_check_plugins(m.settings) == 0 ? 0 : 3);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "evserver: a plugin failed to initialise with %s (see the log line above)\n",
              conf_path);
      evs__settings_free(m.settings);
      return 1;
    }
    printf("evserver: configuration file %s test is successful\n", conf_path);
    evs__settings_free(m.settings);
    return 0;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGQUIT);
  sigprocmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  m.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (m.sigfd < 0) {
    EVS_LOG_ERR("EVS-1620", "signalfd: %s", strerror(errno));
    return 1;
  }
  for (int i = 0; i < EVS_METRICS_SLOTS; i++) m.children[i].ctl = -1;
  /* Processes a worker started and left behind when it exited (enclaves kept for its successor,
   * keep_fd) become the master's children, so they are reaped here and waited for at stop. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (evs__metrics_init() < 0 || prepare_state_dir(m.settings) < 0) return 1;
  /* Before the listeners' TLS contexts are built and the workers forked: they share the ring. */
  if (evs__tls_tickets_init(now_ms()) < 0) {
    EVS_LOG_ERR("EVS-1624", "cannot make the TLS session ticket keys: %s", strerror(errno));
    return 1;
  }
  char err[1024];
  if (open_sockets(m.settings, NULL, 0, &m.socks, &m.nsocks, err, sizeof err) < 0) {
    EVS_LOG_ERR("EVS-1613", "%s", err);
    return 1;
  }
  m.nworkers = resolve_workers(m.settings);
  m.generation = m.last_generation = 1;
  int degraded = 0;
  int ready = spawn_generation(&m, &degraded);
  if (ready == 0) {
    EVS_LOG_ERR("EVS-1614", "no worker became ready; stopping");
    signal_generation(&m, SIGKILL, 0);
    return 1;
  }
  EVS_LOG_INFO("EVS-1615", "evserver %s started: %d workers, %zu listeners, admin socket %s",
               EVS_VERSION, ready, m.nsocks - 1, m.settings->admin_socket);
  sd_notify_msg("READY=1\nSTATUS=running");
  const char *wd = getenv("WATCHDOG_USEC");
  if (wd) m.watchdog_usec = strtoull(wd, NULL, 10);
  uint64_t stop_deadline = 0;

  for (;;) {
    int timeout = 1000;
    if (m.watchdog_usec) {
      uint64_t half = m.watchdog_usec / 2;
      if (half < 1000000) timeout = (int)(half / 1000);
    }
    /* Signals arrive through the signalfd, node messages through the workers' channels. */
    struct pollfd pfd[1 + EVS_METRICS_SLOTS];
    int slot_of[1 + EVS_METRICS_SLOTS], np = 1;
    pfd[0] = (struct pollfd){m.sigfd, POLLIN, 0};
    for (int i = 0; i < EVS_METRICS_SLOTS; i++) {
      if (m.children[i].pid == 0 || m.children[i].ctl < 0) continue;
      pfd[np] = (struct pollfd){m.children[i].ctl, POLLIN, 0};
      slot_of[np++] = i;
    }
    int pr = poll(pfd, (nfds_t)np, timeout);
    if (m.watchdog_usec && live_children(&m) > 0) sd_notify_msg("WATCHDOG=1");
    evs__tls_tickets_tick(now_ms(), m.settings->tls_ticket_rotation_ms);
    for (int i = 1; pr > 0 && i < np; i++)
      if (pfd[i].revents && m.children[slot_of[i]].ctl == pfd[i].fd) relay_node(&m, slot_of[i]);
    struct signalfd_siginfo si;
    while (pr > 0 && (pfd[0].revents & POLLIN) && read(m.sigfd, &si, sizeof si) == sizeof si) {
      int sig = (int)si.ssi_signo;
      if (sig == SIGCHLD) reap(&m);
      else if (sig == SIGHUP && !m.stopping) reload(&m, conf_path);
      else if ((sig == SIGTERM || sig == SIGINT || sig == SIGQUIT) && !m.stopping) {
        m.stopping = 1;
        sd_notify_msg("STOPPING=1");
        EVS_LOG_INFO("EVS-1616", "stopping: draining workers");
        signal_generation(&m, SIGTERM, 0);
        /* New connections are refused from now on instead of waiting in a queue nobody reads. */
        close_sockets(m.socks, m.nsocks);
        m.socks = NULL;
        m.nsocks = 0;
        stop_deadline = now_ms() + (uint64_t)m.settings->drain_timeout_ms + 5000;
      }
    }
    reap(&m);
    if (m.stopping) {
      if (live_children(&m) == 0) break;
      if (now_ms() > stop_deadline) {
        signal_generation(&m, SIGKILL, 0);
        stop_deadline = now_ms() + 5000;
      }
    }
  }
  /* Closing the kept descriptors lets the processes they reach (enclaves) see EOF and exit;
   * they are our children now (subreaper): wait a little for them to wipe and go. */
  while (m.nkept) kept_drop(&m, m.nkept - 1);
  for (uint64_t until = now_ms() + 3000; now_ms() < until;) {
    pid_t r = waitpid(-1, NULL, WNOHANG);
    if (r < 0) break; /* ECHILD: none left */
    if (r == 0) usleep(10000);
  }
  unlink(m.settings->admin_socket);
  close_sockets(m.socks, m.nsocks);
  evs__settings_free(m.settings);
  EVS_LOG_INFO("EVS-1617", "stopped");
  return 0;
}
