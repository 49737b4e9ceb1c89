/*
 * Helper processes (see helper.h and the ABI's evs_helper_spec): the worker side.
 *
 * Process tree. Each start forks a small *shepherd* (no exec; named "evs-helper") that forks
 * the helper proper and waits for it:
 *
 *   master (subreaper) ── shepherd ── helper      kept helpers: the shepherd is re-parented to
 *   worker ── (gone: double fork)                 the master at once, so a worker's death
 *                                                 leaves them alone
 *   worker ── shepherd ── helper                  other helpers end with their worker
 *
 * The shepherd waits until its parent is its anchor (the master, or the worker), then sets
 * PR_SET_PDEATHSIG(SIGKILL) and checks the parent again; the helper sets the same towards the
 * shepherd. Whichever way the anchor dies (kill -9 included), the shepherd and then the helper
 * die with it: a helper never outlives the master. The shepherd also is what can wait for the
 * helper, so it records the wait status (a SIGSYS from seccomp included) for the workers, who
 * cannot: after a worker crash the helper is not a child of the next one.
 *
 * What a worker knows of a start lives in three descriptors, all kept for the rank when the
 * helper is kept: the socket (the host's end), a pipe whose only writer is the shepherd (it
 * sends one byte once the helper runs; every reader sees EOF once the shepherd is gone, its
 * record written), and a memfd "board" where the shepherd writes the helper's pid and its end
 * (wait status, or the step that failed and its errno), and the worker the spec's hash, so
 * that the next worker re-attaches only to a helper started from the same spec and file.
 *
 * Everything runs on the worker's loop thread. A start blocks the loop until the shepherd
 * reports (a fork, the namespaces, an exec: milliseconds).
 */
#include "helper.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "evs_sandbox.h"
#include "userns.h"
#include "log.h"
#include "node.h"
#include "plugin.h"
#include "worker.h"

#define BOARD_MAGIC 0x48535645u /* "EVSH" */
#define START_TIMEOUT_MS 5000
#define STOP_GRACE_MS 2000
#define NS_ALL                                                                                 \
  (EVS_HELPER_NS_USER | EVS_HELPER_NS_PID | EVS_HELPER_NS_MOUNT | EVS_HELPER_NS_NET |        \
   EVS_HELPER_NS_IPC | EVS_HELPER_NS_UTS)

enum { B_STARTING = 0, B_RUNNING = 1, B_EXITED = 2, B_FAILED = 3 };

/* The board: written with pwrite at the members' offsets, so writers never clash. */
typedef struct board {
  uint32_t magic;
  int32_t state;   /* B_*; by the shepherd */
  int32_t pid;     /* the helper, in the server's pid namespace; by the shepherd */
  int32_t wstatus; /* B_EXITED: from waitpid */
  int32_t err;     /* B_FAILED: a negative errno */
  char what[48];   /* B_FAILED: the step, e.g. "user namespace" */
  uint8_t hash[32]; /* the spec's; by the worker */
} board;

struct evs_helper {
  struct evs_helper *next; /* this worker's helpers */
  evs__plugin_rec *plugin;
  evs_helper_event_fn cb;
  void *arg;
  /* The spec, copied. */
  char *path, **argv, **envp, *kept, *label;
  char *cg_path; /* the current start's cgroup, removed once it is over (NULL: none) */
  evs_sandbox_policy policy;
  void *prog;
  size_t prog_len;
  int child_fd;
  uint32_t flags, ns, ns_optional;
  uint64_t rlim[5];
  uint64_t cg_memory, cg_pids;
  uint32_t cg_cpu_pct;
  uint64_t restart_min, restart_max;
  uint8_t hash[32];
  /* The current start. */
  int fd, status_fd, board_fd;
  pid_t pid, shepherd; /* shepherd: our child (not kept), else 0 */
  int adopted, anchored_to_master;
  uint64_t started_ms, starts;
  unsigned failures;
  uv_poll_t *poll;   /* status_fd */
  uv_timer_t *timer; /* restart, or the SIGKILL after a stop's grace */
  uv_timer_t *notify; /* STARTED, on a later turn */
  int stopping, released, closing;
};

static evs_helper *helpers;
static int cgroup_warned;

/* ---- pure parts ---------------------------------------------------------------------------- */

uint64_t evs__helper_backoff(uint64_t min_ms, uint64_t max_ms, unsigned failures) {
  if (min_ms == 0) min_ms = EVS__HELPER_RESTART_MIN_MS;
  if (max_ms == 0) max_ms = EVS__HELPER_RESTART_MAX_MS;
  if (max_ms < min_ms) max_ms = min_ms;
  uint64_t d = min_ms;
  for (unsigned i = 0; i < failures && d < max_ms; i++) d = d > max_ms / 2 ? max_ms : d * 2;
  return d > max_ms ? max_ms : d;
}

/* The members a spec of `size` covers. */
#define HAS(s, m) ((s)->size >= offsetof(evs_helper_spec, m) + sizeof((s)->m))

static int kept_name_ok(const char *k) {
  size_t n = 0;
  for (; k[n]; n++) {
    char c = k[n];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return 0;
  }
  return n >= 1 && n <= EVS__HELPER_KEPT_MAX;
}

int evs__helper_spec_check(const evs_helper_spec *s, char *err, size_t errlen) {
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -EINVAL; } while (0)
  if (!s || !HAS(s, sandbox)) FAIL("the spec is missing or shorter than its ABI 1.7 size");
  if (!s->path || s->path[0] != '/') FAIL("path must be an absolute file name");
  if (!s->sandbox) FAIL("sandbox must name a policy (\"worker\", \"enclave\")");
  evs_sandbox_policy pol;
  if (evs_sandbox_policy_lookup(s->sandbox, &pol) < 0)
    FAIL("unknown sandbox policy '%.40s' (known: worker, enclave)", s->sandbox);
  if (s->argv && !s->argv[0]) FAIL("argv must hold at least argv[0]");
  if (HAS(s, fd) && s->fd != 0 && (s->fd < 3 || s->fd > 1000))
    FAIL("fd must be 0 (3) or in [3, 1000]");
  if (HAS(s, flags) && (s->flags & ~(uint32_t)(EVS_HELPER_NO_RESTART | EVS_HELPER_SEQPACKET)))
    FAIL("unknown flags 0x%x", s->flags);
  if (HAS(s, namespaces) && (s->namespaces & ~(uint32_t)NS_ALL))
    FAIL("unknown namespaces 0x%x", s->namespaces);
  if (HAS(s, namespaces_optional) && (s->namespaces_optional & ~s->namespaces))
    FAIL("namespaces_optional names namespaces that namespaces does not");
  if (HAS(s, cgroup_cpu_max_pct) && s->cgroup_cpu_max_pct > 100000)
    FAIL("cgroup_cpu_max_pct out of range");
  if (HAS(s, restart_max_ms) && s->restart_max_ms && s->restart_min_ms > s->restart_max_ms)
    FAIL("restart_min_ms is larger than restart_max_ms");
  if (HAS(s, kept) && s->kept && !kept_name_ok(s->kept)) FAIL("kept must match [a-z0-9_-]{1,40}");
  return 0;
#undef FAIL
}

/* ---- the spec, copied ---------------------------------------------------------------------- */

static char **strv_dup(const char *const *v, const char *first) {
  size_t n = 0;
  if (v)
    while (v[n]) n++;
  else if (first)
    n = 1;
  char **out = calloc(n + 1, sizeof *out);
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    out[i] = strdup(v ? v[i] : first);
    if (!out[i]) {
      for (size_t j = 0; j < i; j++) free(out[j]);
      free(out);
      return NULL;
    }
  }
  return out;
}

static void strv_free(char **v) {
  for (size_t i = 0; v && v[i]; i++) {
    explicit_bzero(v[i], strlen(v[i])); /* an argument may be secret */
    free(v[i]);
  }
  free(v);
}

static void hash_add(EVP_MD_CTX *md, const void *p, size_t n) { EVP_DigestUpdate(md, p, n); }
static void hash_str(EVP_MD_CTX *md, const char *s) {
  uint64_t n = s ? strlen(s) + 1 : 0; /* length-prefixed: no two lists hash alike */
  hash_add(md, &n, sizeof n);
  if (s) hash_add(md, s, n);
}

/* What identifies the process a spec starts: everything but the restart policy, and the
 * executable file itself (a replaced binary starts a new helper). */
static int spec_hash(evs_helper *h) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(md);
    return -ENOMEM;
  }
  hash_str(md, h->path);
  for (size_t i = 0; h->argv[i]; i++) hash_str(md, h->argv[i]);
  hash_str(md, NULL);
  for (size_t i = 0; h->envp[i]; i++) hash_str(md, h->envp[i]);
  hash_str(md, NULL);
  hash_str(md, evs_sandbox_policy_name(h->policy));
  uint64_t nums[] = {(uint64_t)h->child_fd, h->flags & EVS_HELPER_SEQPACKET, h->ns,
                     h->ns_optional, h->rlim[0], h->rlim[1], h->rlim[2], h->rlim[3], h->rlim[4],
                     h->cg_memory, h->cg_pids, h->cg_cpu_pct, 0, 0, 0, 0, 0};
  struct stat sb;
  if (stat(h->path, &sb) == 0) {
    nums[12] = (uint64_t)sb.st_dev;
    nums[13] = (uint64_t)sb.st_ino;
    nums[14] = (uint64_t)sb.st_size;
    nums[15] = (uint64_t)sb.st_mtim.tv_sec;
    nums[16] = (uint64_t)sb.st_mtim.tv_nsec;
  }
  hash_add(md, nums, sizeof nums);
  unsigned len = 0;
  int ok = EVP_DigestFinal_ex(md, h->hash, &len) == 1 && len == sizeof h->hash;
  EVP_MD_CTX_free(md);
  return ok ? 0 : -EIO;
}

static void helper_free(evs_helper *h) {
  if (!h) return;
  for (evs_helper **pp = &helpers; *pp; pp = &(*pp)->next)
    if (*pp == h) {
      *pp = h->next;
      break;
    }
  free(h->path);
  strv_free(h->argv);
  strv_free(h->envp);
  free(h->kept);
  free(h->label);
  free(h->cg_path);
  free(h->prog);
  free(h);
}

/* ---- the child side: shepherd and helper (no return) --------------------------------------- */

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void board_put(int bfd, size_t off, const void *v, size_t n) {
  ssize_t r = pwrite(bfd, v, n, (off_t)off);
  (void)r;
}

static __attribute__((noreturn)) void child_fail(int bfd, const char *what, int err) {
  board b;
  memset(b.what, 0, sizeof b.what);
  snprintf(b.what, sizeof b.what, "%s", what);
  int32_t st = B_FAILED, e = err;
  board_put(bfd, offsetof(board, err), &e, sizeof e);
  board_put(bfd, offsetof(board, what), b.what, sizeof b.what);
  board_put(bfd, offsetof(board, state), &st, sizeof st);
  _exit(1);
}

/* Closes every descriptor but the n in keep (all >= 3). */
static void close_except(const int *keep, size_t n) {
  int lo = 3;
  for (;;) {
    int next = -1;
    for (size_t i = 0; i < n; i++)
      if (keep[i] >= lo && (next < 0 || keep[i] < next)) next = keep[i];
    if (next < 0) {
      close_range((unsigned)lo, ~0u, 0);
      return;
    }
    if (next > lo) close_range((unsigned)lo, (unsigned)next - 1, 0);
    lo = next + 1;
  }
}

/* Namespaces, in the shepherd (so that a new pid namespace holds the helper as pid 1). Refused
 * ones listed as optional are skipped; another refusal fails the start, naming it. */
static void enter_namespaces(const evs_helper *h, int bfd) {
  uint32_t want = h->ns;
  if (want & EVS_HELPER_NS_USER) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER) < 0) {
      if (!(h->ns_optional & EVS_HELPER_NS_USER)) child_fail(bfd, "user namespace", -errno);
    } else {
      int r = evs__map_ids(uid, uid, gid, gid); /* the same ids inside */
      if (r < 0) child_fail(bfd, "user namespace id maps", r);
    }
  }
  static const struct { uint32_t bit; int flag; const char *name; } ns[] = {
      {EVS_HELPER_NS_PID, CLONE_NEWPID, "pid namespace"},
      {EVS_HELPER_NS_MOUNT, CLONE_NEWNS, "mount namespace"},
      {EVS_HELPER_NS_NET, CLONE_NEWNET, "network namespace"},
      {EVS_HELPER_NS_IPC, CLONE_NEWIPC, "ipc namespace"},
      {EVS_HELPER_NS_UTS, CLONE_NEWUTS, "uts namespace"},
  };
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    if (!(want & ns[i].bit)) continue;
    if (unshare(ns[i].flag) < 0) {
      if (!(h->ns_optional & ns[i].bit)) child_fail(bfd, ns[i].name, -errno);
      continue;
    }
    /* Mounts made inside must not propagate out (and the other way). */
    if (ns[i].flag == CLONE_NEWNS && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
      child_fail(bfd, "mount namespace propagation", -errno);
  }
}

static __attribute__((noreturn)) void run_helper(const evs_helper *h, int sock, int bfd,
                                                 pid_t shepherd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Outside a new pid namespace, make sure the shepherd did not die before the line above. */
  if (!(h->ns & EVS_HELPER_NS_PID) && getppid() != shepherd) _exit(1);
  if (sock != h->child_fd) {
    if (dup2(sock, h->child_fd) < 0) child_fail(bfd, "socket descriptor", -errno);
  } else if (fcntl(sock, F_SETFD, 0) < 0) {
    child_fail(bfd, "socket descriptor", -errno);
  }
  sigset_t none;
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  static const int res[] = {RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CPU, RLIMIT_FSIZE};
  for (size_t i = 0; i < 5; i++) {
    if (!h->rlim[i]) continue;
    struct rlimit rl = {h->rlim[i], h->rlim[i]};
    if (setrlimit(res[i], &rl) < 0) child_fail(bfd, "rlimit", -errno);
  }
  struct rlimit none_core = {0, 0}; /* helpers may hold secrets: never a core file */
  setrlimit(RLIMIT_CORE, &none_core);
  int r = evs_sandbox_load(h->prog, h->prog_len);
  if (r < 0) child_fail(bfd, "seccomp filter", r);
  execve(h->path, h->argv, h->envp);
  child_fail(bfd, "exec", -errno);
}

/* The shepherd: anchors itself, sets up namespaces and the cgroup, forks the helper, records
 * its pid, says so with one byte, waits for it and records how it ended. */
static __attribute__((noreturn)) void run_shepherd(const evs_helper *h, int sock, int st, int bfd,
                                                   int cg_procs, pid_t anchor) {
  prctl(PR_SET_NAME, "evs-helper");
  /* Signals aimed at the server's process group are not for us: we end when the helper does. */
  sigset_t none;
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD) signal(s, SIG_IGN);
  signal(SIGCHLD, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* Move our descriptors above the helper's fd, then close everything else of the worker's
   * (listeners, the node channel, other helpers' sockets). */
  int fds[4] = {sock, st, bfd, cg_procs};
  for (int i = 0; i < 4; i++) {
    if (fds[i] < 0) continue;
    int n = fcntl(fds[i], F_DUPFD_CLOEXEC, h->child_fd + 1);
    if (n < 0) _exit(1);
    fds[i] = n;
  }
  close_except(fds, 4);
  sock = fds[0], st = fds[1], bfd = fds[2], cg_procs = fds[3];
  /* Wait to be the anchor's child (after a double fork, the master's: it is the subreaper). */
  for (uint64_t until = mono_ms() + START_TIMEOUT_MS; getppid() != anchor;) {
    if (mono_ms() > until) child_fail(bfd, "re-parenting to the master", -ETIMEDOUT);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != anchor) _exit(1); /* the anchor died before the line above */
  if (cg_procs >= 0) { /* the helper and we are limited together (pids.max counts us too) */
    if (write(cg_procs, "0", 1) < 0) child_fail(bfd, "cgroup", -errno);
    close(cg_procs);
  }
  enter_namespaces(h, bfd);
  /* Closed by the helper's exec (close-on-exec), or by its exit when a step before failed: the
   * start is reported only once the program runs, so an exec error reaches helper_spawn. */
  int ex[2];
  if (pipe2(ex, O_CLOEXEC) < 0) child_fail(bfd, "pipe", -errno);
  pid_t self = getpid();
  pid_t pid = fork();
  if (pid < 0) child_fail(bfd, "fork", -errno);
  if (pid == 0) {
    close(ex[0]);
    run_helper(h, sock, bfd, self);
  }
  close(sock);
  close(ex[1]);
  char c;
  while (read(ex[0], &c, 1) < 0 && errno == EINTR) {}
  close(ex[0]);
  int ws = 0;
  board b;
  if (pread(bfd, &b, sizeof b, 0) == (ssize_t)sizeof b && b.state == B_FAILED) {
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    _exit(0); /* EOF without the byte: the worker reads the failure */
  }
  int32_t p = pid, state = B_RUNNING;
  board_put(bfd, offsetof(board, pid), &p, sizeof p);
  board_put(bfd, offsetof(board, state), &state, sizeof state);
  char one = 1;
  ssize_t w = write(st, &one, 1);
  (void)w;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
  int32_t v = ws;
  state = B_EXITED;
  board_put(bfd, offsetof(board, wstatus), &v, sizeof v);
  board_put(bfd, offsetof(board, state), &state, sizeof state);
  _exit(0);
}

/* ---- cgroup v2 ----------------------------------------------------------------------------- */

/* cgroup.procs of a new cgroup with the spec's limits, under the worker's own cgroup, when the
 * machine delegates it (cgroup2 mounted at /sys/fs/cgroup and our cgroup writable); -1 and one
 * log line per worker otherwise. */
static int cgroup_open(evs_helper *h) {
  if (!h->cg_memory && !h->cg_pids && !h->cg_cpu_pct) return -1;
  char line[512], dir[768], path[900];
  const char *why = NULL;
  FILE *f = fopen("/proc/self/cgroup", "re");
  int found = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "0::", 3) == 0) {
      line[strcspn(line, "\n")] = 0;
      snprintf(dir, sizeof dir, "/sys/fs/cgroup%s", strcmp(line + 3, "/") ? line + 3 : "");
      found = 1;
    }
  if (f) fclose(f);
  struct stat sb;
  snprintf(path, sizeof path, "%s/cgroup.controllers", found ? dir : "/sys/fs/cgroup");
  if (!found || stat(path, &sb) < 0) why = "no cgroup v2 hierarchy for this process";
  else if (access(dir, W_OK) != 0) why = "this process's cgroup is not delegated (not writable)";
  int fd = -1;
  /* The controllers must be enabled for our cgroup's children; the kernel refuses that while
   * processes sit in our cgroup itself (no internal processes), unless it is the root. */
  snprintf(path, sizeof path, "%s/cgroup.subtree_control", dir);
  if (!why && evs__write_file(path, "+memory +pids +cpu") < 0)
    why = "cannot enable memory, pids and cpu for child cgroups (the server's own cgroup holds "
          "processes; delegate a subtree whose root holds none)";
  if (!why) {
    snprintf(path, sizeof path, "%s/evs-helper-%d-%s", dir, (int)getpid(), h->label);
    if (mkdir(path, 0700) < 0 && errno != EEXIST) why = "cannot create a child cgroup";
  }
  if (!why) {
    char v[64], file[960];
    struct { uint64_t val; const char *name; int pct; } lim[] = {
        {h->cg_memory, "memory.max", 0}, {h->cg_pids ? h->cg_pids + 1 : 0, "pids.max", 0},
        {h->cg_cpu_pct, "cpu.max", 1}};
    for (size_t i = 0; i < 3 && !why; i++) {
      if (!lim[i].val) continue;
      if (lim[i].pct)
        snprintf(v, sizeof v, "%llu 100000", (unsigned long long)lim[i].val * 1000);
      else
        snprintf(v, sizeof v, "%llu", (unsigned long long)lim[i].val);
      snprintf(file, sizeof file, "%s/%s", path, lim[i].name);
      if (evs__write_file(file, v) < 0) why = "a controller is not enabled for the child cgroup";
    }
    snprintf(file, sizeof file, "%s/cgroup.procs", path);
    if (!why && (fd = open(file, O_WRONLY | O_CLOEXEC)) < 0) why = "cgroup.procs is not writable";
  }
  if (!why) {
    free(h->cg_path);
    h->cg_path = strdup(path);
  }
  if (why) {
    if (!cgroup_warned++)
      evs__log(EVS_LOG_WARN, "EVS-1706", h->plugin->name, NULL,
               "helper %s: cgroup v2 limits not applied (%s); starting without them", h->label,
               why);
    return -1;
  }
  return fd;
}

/* ---- the worker side ----------------------------------------------------------------------- */

static void on_status(uv_poll_t *p, int status, int events);
static void schedule_restart(evs_helper *h);

static void emit(evs_helper *h, evs_helper_event *ev) {
  ev->size = sizeof *ev;
  ev->starts = h->starts;
  if (ev->type != EVS_HELPER_STARTED) ev->fd = -1;
  if (h->cb && !h->released && !h->stopping) h->cb(h->arg, h, ev);
}

static void keep_name(const evs_helper *h, char out[64], char what) {
  snprintf(out, 64, "evs-helper-%s-%c", h->kept, what);
}

/* Hands this start's descriptors to the master for the rank (fd < 0 for all: drops them). */
static int keep_all(evs_helper *h, int drop) {
  char n[64];
  int fds[3] = {h->fd, h->status_fd, h->board_fd};
  const char what[3] = {'s', 'p', 'b'};
  int r = 0;
  for (int i = 0; i < 3 && r == 0; i++) {
    keep_name(h, n, what[i]);
    r = evs__node_keep_fd(h->plugin, n, drop ? -1 : fds[i]);
  }
  return r;
}

static void close_start(evs_helper *h) {
  if (h->poll) {
    uv_poll_stop(h->poll);
    uv_close((uv_handle_t *)h->poll, (uv_close_cb)(void (*)(void))free);
    h->poll = NULL;
  }
  if (h->fd >= 0) close(h->fd);
  if (h->status_fd >= 0) close(h->status_fd);
  if (h->board_fd >= 0) close(h->board_fd);
  h->fd = h->status_fd = h->board_fd = -1;
  h->pid = 0;
}

static int watch(evs_helper *h) {
  h->poll = calloc(1, sizeof *h->poll);
  if (!h->poll) return -ENOMEM;
  int r = uv_poll_init(evs__w->loop, h->poll, h->status_fd);
  if (r < 0) {
    free(h->poll);
    h->poll = NULL;
    return r;
  }
  h->poll->data = h;
  uv_unref((uv_handle_t *)h->poll); /* a helper never keeps a draining worker alive */
  return uv_poll_start(h->poll, UV_READABLE | UV_DISCONNECT, on_status);
}

static void on_notify(uv_timer_t *t) {
  evs_helper *h = t->data;
  if (h->fd < 0) return;
  evs_helper_event ev = {.type = EVS_HELPER_STARTED, .pid = h->pid, .fd = h->fd,
                         .adopted = h->adopted};
  emit(h, &ev);
}

static void log_failure(evs_helper *h, const board *b) {
  char what[sizeof b->what + 1];
  memcpy(what, b->what, sizeof b->what);
  what[sizeof b->what] = 0;
  const char *hint = strstr(what, "namespace")
                         ? "; the kernel refuses it to this user (unprivileged user namespaces "
                           "disabled?): list it in namespaces_optional to run without it"
                         : "";
  evs__log(EVS_LOG_ERROR, "EVS-1702", h->plugin->name, NULL,
           "helper %s: cannot start %s: %s refused (%s)%s", h->label, h->path,
           what[0] ? what : "start", strerror(-b->err), hint);
}

/* One start: shepherd, helper, descriptors. Blocks until the shepherd reports. Returns 0, or a
 * negative errno (logged). */
static int start(evs_helper *h) {
  int sv[2] = {-1, -1}, st[2] = {-1, -1}, bfd = -1, cg = -1, r = 0;
  int type = (h->flags & EVS_HELPER_SEQPACKET) ? SOCK_SEQPACKET : SOCK_STREAM;
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(st, O_CLOEXEC) < 0 ||
      (bfd = memfd_create("evs-helper", MFD_CLOEXEC)) < 0) {
    r = -errno;
    goto fail;
  }
  board b0;
  memset(&b0, 0, sizeof b0);
  b0.magic = BOARD_MAGIC;
  memcpy(b0.hash, h->hash, sizeof b0.hash);
  if (pwrite(bfd, &b0, sizeof b0, 0) != (ssize_t)sizeof b0) {
    r = -EIO;
    goto fail;
  }
  cg = cgroup_open(h);
  /* Kept: anchored to the master through a double fork, when there is a master to keep it. */
  int anchored = h->kept && evs__w->ctl_fd >= 0 && !evs__w->draining;
  pid_t anchor = anchored ? getppid() : getpid();
  pid_t first = fork();
  if (first < 0) {
    r = -errno;
    goto fail;
  }
  if (first == 0) {
    if (anchored) {
      pid_t s = fork();
      if (s != 0) _exit(s < 0 ? 1 : 0);
    }
    run_shepherd(h, sv[1], st[1], bfd, cg, anchor);
  }
  close(sv[1]);
  close(st[1]);
  sv[1] = st[1] = -1;
  if (cg >= 0) close(cg);
  cg = -1;
  if (anchored)
    while (waitpid(first, NULL, 0) < 0 && errno == EINTR) {}
  h->shepherd = anchored ? 0 : first;
  h->anchored_to_master = anchored;
  /* Wait for the byte (running) or EOF (failed, or already over). */
  struct pollfd pf = {st[0], POLLIN, 0};
  int pr;
  while ((pr = poll(&pf, 1, START_TIMEOUT_MS)) < 0 && errno == EINTR) {}
  char one = 0;
  ssize_t n = pr == 1 ? read(st[0], &one, 1) : -1;
  board b;
  if (pread(bfd, &b, sizeof b, 0) != (ssize_t)sizeof b) memset(&b, 0, sizeof b);
  if (n != 1 || b.state == B_FAILED) {
    if (b.state == B_FAILED) {
      log_failure(h, &b);
      r = b.err < 0 ? b.err : -EIO;
    } else {
      evs__log(EVS_LOG_ERROR, "EVS-1702", h->plugin->name, NULL,
               "helper %s: %s did not start within %d ms", h->label, h->path, START_TIMEOUT_MS);
      r = -ETIMEDOUT;
    }
    if (h->shepherd > 0) {
      kill(h->shepherd, SIGKILL);
      while (waitpid(h->shepherd, NULL, 0) < 0 && errno == EINTR) {}
      h->shepherd = 0;
    }
    goto fail;
  }
  h->fd = sv[0];
  h->status_fd = st[0];
  h->board_fd = bfd;
  h->pid = b.pid;
  h->adopted = 0;
  h->started_ms = uv_now(evs__w->loop);
  h->starts++;
  fcntl(h->status_fd, F_SETFL, O_NONBLOCK);
  if ((r = watch(h)) < 0) {
    kill(h->pid, SIGKILL);
    close_start(h);
    return r;
  }
  if (anchored && keep_all(h, 0) < 0)
    evs__log(EVS_LOG_WARN, "EVS-1707", h->plugin->name, NULL,
             "helper %s: the master cannot keep it for the next worker of this rank", h->label);
  evs__log(EVS_LOG_INFO, "EVS-1701", h->plugin->name, NULL,
           "helper %s started: pid %d, sandbox %s%s", h->label, (int)h->pid,
           evs_sandbox_policy_name(h->policy), anchored ? ", kept for this worker rank" : "");
  uv_timer_start(h->notify, on_notify, 0, 0);
  return 0;
fail:
  for (int i = 0; i < 2; i++) {
    if (sv[i] >= 0) close(sv[i]);
    if (st[i] >= 0) close(st[i]);
  }
  if (bfd >= 0) close(bfd);
  if (cg >= 0) close(cg);
  return r;
}

static void on_restart(uv_timer_t *t) {
  evs_helper *h = t->data;
  if (h->stopping || h->released || h->fd >= 0) return;
  int r = start(h);
  if (r == 0) return;
  evs_helper_event ev = {.type = EVS_HELPER_FAILED, .error = r};
  emit(h, &ev);
  schedule_restart(h);
}

static void schedule_restart(evs_helper *h) {
  if (h->stopping || h->released || (h->flags & EVS_HELPER_NO_RESTART) || evs__w->draining)
    return;
  uint64_t d = evs__helper_backoff(h->restart_min, h->restart_max, h->failures);
  if (h->failures < 64) h->failures++; /* until a start lives restart_max (on_status) */
  evs_helper_event ev = {.type = EVS_HELPER_RESTARTING, .delay_ms = d};
  emit(h, &ev);
  if (h->stopping || h->closing) return; /* helper_stop from the callback */
  uv_timer_start(h->timer, on_restart, d, 0);
}

static void handles_close_free(evs_helper *h);

/* The shepherd is gone: the helper ended (or never ran). */
static void on_status(uv_poll_t *p, int status, int events) {
  (void)events;
  evs_helper *h = p->data;
  char buf[16];
  ssize_t n = status < 0 ? 0 : read(h->status_fd, buf, sizeof buf);
  if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return; /* not the end yet */
  board b;
  if (pread(h->board_fd, &b, sizeof b, 0) != (ssize_t)sizeof b) memset(&b, 0, sizeof b);
  if (h->shepherd > 0) {
    while (waitpid(h->shepherd, NULL, 0) < 0 && errno == EINTR) {}
    h->shepherd = 0;
  }
  if (h->cg_path) { /* empty now: the shepherd and the helper are gone */
    rmdir(h->cg_path);
    free(h->cg_path);
    h->cg_path = NULL;
  }
  pid_t pid = h->pid;
  uint64_t lived = uv_now(evs__w->loop) - h->started_ms;
  evs_helper_event ev = {.type = EVS_HELPER_EXITED, .pid = pid, .exit_code = -1};
  if (b.state == B_EXITED && WIFEXITED(b.wstatus)) {
    ev.exit_code = WEXITSTATUS(b.wstatus);
  } else if (b.state == B_EXITED && WIFSIGNALED(b.wstatus)) {
    ev.signal = WTERMSIG(b.wstatus);
  }
  if (h->stopping) {
    close_start(h);
    handles_close_free(h);
    return;
  }
  if (b.state == B_FAILED) {
    log_failure(h, &b);
  } else if (ev.signal == SIGSYS) {
    evs__log(EVS_LOG_ERROR, "EVS-1703", h->plugin->name, NULL,
             "helper %s (pid %d) killed by SIGSYS: it made a system call its sandbox policy '%s' "
             "forbids",
             h->label, (int)pid, evs_sandbox_policy_name(h->policy));
  } else if (ev.signal) {
    evs__log(EVS_LOG_WARN, "EVS-1703", h->plugin->name, NULL,
             "helper %s (pid %d) killed by signal %d", h->label, (int)pid, ev.signal);
  } else if (b.state == B_EXITED) {
    evs__log(ev.exit_code ? EVS_LOG_WARN : EVS_LOG_INFO, "EVS-1703", h->plugin->name, NULL,
             "helper %s (pid %d) exited with status %d", h->label, (int)pid, ev.exit_code);
  } else {
    evs__log(EVS_LOG_WARN, "EVS-1703", h->plugin->name, NULL, "helper %s (pid %d) is gone",
             h->label, (int)pid);
  }
  /* A run as long as the longest delay was healthy: the backoff starts over. */
  uint64_t maxd = h->restart_max ? h->restart_max : EVS__HELPER_RESTART_MAX_MS;
  if (lived >= maxd || h->adopted) h->failures = 0;
  int last = (h->flags & EVS_HELPER_NO_RESTART) != 0;
  if (last && h->anchored_to_master && !evs__w->draining) keep_all(h, 1);
  if (b.state == B_FAILED) {
    ev.type = EVS_HELPER_FAILED;
    ev.error = b.err < 0 ? b.err : -EIO;
  }
  emit(h, &ev); /* the fd is still open during the callback */
  close_start(h);
  if (h->stopping) { /* helper_stop from the callback */
    handles_close_free(h);
    return;
  }
  if (!h->released) schedule_restart(h);
}

/* Adopts the rank's kept helper of this name when it runs from the same spec. 1: adopted; 0:
 * none (a different one was stopped). */
static int adopt(evs_helper *h) {
  char n[64];
  int fds[3];
  const char what[3] = {'s', 'p', 'b'};
  for (int i = 0; i < 3; i++) {
    keep_name(h, n, what[i]);
    fds[i] = evs__node_kept_fd(h->plugin, n);
  }
  board b;
  memset(&b, 0, sizeof b);
  int ok = fds[0] >= 0 && fds[1] >= 0 && fds[2] >= 0 &&
           pread(fds[2], &b, sizeof b, 0) == (ssize_t)sizeof b && b.magic == BOARD_MAGIC &&
           b.state == B_RUNNING && b.pid > 0;
  if (ok) { /* the shepherd is still there: no EOF on its pipe */
    struct pollfd pf = {fds[1], POLLIN, 0};
    ok = poll(&pf, 1, 0) == 0;
  }
  int same = ok && CRYPTO_memcmp(b.hash, h->hash, sizeof h->hash) == 0;
  if (ok && !same) {
    /* Started from another spec or file (a reload changed it): end it; the master drops its
     * descriptors when this start keeps new ones. */
    evs__log(EVS_LOG_INFO, "EVS-1704", h->plugin->name, NULL,
             "helper %s: the kept one (pid %d) was started from another spec; replacing it",
             h->label, (int)b.pid);
    kill(b.pid, SIGTERM);
  }
  if (!same) {
    for (int i = 0; i < 3; i++)
      if (fds[i] >= 0) close(fds[i]);
    return 0;
  }
  h->fd = fds[0];
  h->status_fd = fds[1];
  h->board_fd = fds[2];
  h->pid = b.pid;
  h->shepherd = 0;
  h->adopted = 1;
  h->anchored_to_master = 1;
  h->started_ms = uv_now(evs__w->loop);
  h->starts++;
  fcntl(h->status_fd, F_SETFL, O_NONBLOCK);
  if (watch(h) < 0) {
    close_start(h);
    return 0;
  }
  evs__log(EVS_LOG_INFO, "EVS-1705", h->plugin->name, NULL,
           "helper %s: re-attached to pid %d, kept by this worker's predecessor", h->label,
           (int)h->pid);
  uv_timer_start(h->notify, on_notify, 0, 0);
  return 1;
}

static void handles_closed(uv_handle_t *hd) {
  evs_helper *h = hd->data;
  free(hd);
  if (--h->closing == 0) helper_free(h);
}

/* Closes the timers and frees h once both have closed. Idempotent. */
static void handles_close_free(evs_helper *h) {
  if (h->closing) return;
  h->closing = 2;
  h->released = 1; /* no callback from now on */
  uv_timer_stop(h->timer);
  uv_timer_stop(h->notify);
  uv_close((uv_handle_t *)h->timer, handles_closed);
  uv_close((uv_handle_t *)h->notify, handles_closed);
}

int evs__helper_spawn(evs__plugin_rec *p, const evs_helper_spec *spec, evs_helper_event_fn cb,
                      void *arg, evs_helper **ret) {
  char err[160];
  if (!ret || !evs__w) return -EINVAL;
  if (evs__helper_spec_check(spec, err, sizeof err) < 0) {
    evs__log(EVS_LOG_ERROR, "EVS-1700", p->name, NULL, "helper_spawn: %s", err);
    return -EINVAL;
  }
  evs_helper_spec s;
  memset(&s, 0, sizeof s);
  memcpy(&s, spec, spec->size < sizeof s ? spec->size : sizeof s);
  evs_helper *h = calloc(1, sizeof *h);
  if (!h) return -ENOMEM;
  h->plugin = p;
  h->cb = cb;
  h->arg = arg;
  h->fd = h->status_fd = h->board_fd = -1;
  evs_sandbox_policy_lookup(s.sandbox, &h->policy);
  h->path = strdup(s.path);
  h->argv = strv_dup(s.argv, s.path);
  static const char *const empty[] = {NULL};
  h->envp = strv_dup(s.envp ? s.envp : empty, NULL);
  h->kept = s.kept ? strdup(s.kept) : NULL;
  const char *base = strrchr(s.path, '/');
  h->label = strdup(s.kept ? s.kept : base + 1);
  h->child_fd = s.fd ? s.fd : 3;
  h->flags = s.flags;
  h->ns = s.namespaces;
  h->ns_optional = s.namespaces_optional;
  uint64_t rl[5] = {s.rlimit_as, s.rlimit_nofile, s.rlimit_nproc, s.rlimit_cpu, s.rlimit_fsize};
  memcpy(h->rlim, rl, sizeof rl);
  h->cg_memory = s.cgroup_memory_max;
  h->cg_pids = s.cgroup_pids_max;
  h->cg_cpu_pct = s.cgroup_cpu_max_pct;
  h->restart_min = s.restart_min_ms;
  h->restart_max = s.restart_max_ms;
  h->timer = calloc(1, sizeof *h->timer);
  h->notify = calloc(1, sizeof *h->notify);
  int r = 0;
  if (!h->path || !h->argv || !h->envp || (s.kept && !h->kept) || !h->label || !h->timer ||
      !h->notify)
    r = -ENOMEM;
  if (r == 0 && access(h->path, X_OK) < 0) {
    r = -errno;
    evs__log(EVS_LOG_ERROR, "EVS-1702", p->name, NULL, "helper %s: %s is not executable (%s)",
             h->label, h->path, strerror(errno));
  }
  if (r == 0) r = spec_hash(h);
  if (r == 0) {
    r = evs_sandbox_compile_exec_stage(h->policy, &h->prog, &h->prog_len);
    if (r < 0)
      evs__log(EVS_LOG_ERROR, "EVS-1702", p->name, NULL,
               "helper %s: cannot compile sandbox policy %s (%s)", h->label,
               evs_sandbox_policy_name(h->policy), strerror(-r));
  }
  if (r < 0) {
    free(h->timer);
    free(h->notify);
    h->timer = h->notify = NULL;
    helper_free(h);
    return r;
  }
  uv_timer_init(evs__w->loop, h->timer);
  uv_timer_init(evs__w->loop, h->notify);
  h->timer->data = h->notify->data = h;
  uv_unref((uv_handle_t *)h->timer);
  uv_unref((uv_handle_t *)h->notify);
  h->next = helpers;
  helpers = h;
  if (!(h->kept && p->in_init && adopt(h))) r = start(h);
  if (r < 0) {
    handles_close_free(h);
    return r;
  }
  *ret = h;
  return 0;
}

int evs__helper_fd(evs_helper *h) { return h && !h->stopping ? h->fd : -1; }
int evs__helper_pid(evs_helper *h) { return h && h->fd >= 0 ? (int)h->pid : 0; }

int evs__helper_kill(evs_helper *h, int sig) {
  if (!h || h->fd < 0 || h->pid <= 0) return -ESRCH;
  return kill(h->pid, sig) < 0 ? -errno : 0;
}

static void on_grace(uv_timer_t *t) {
  evs_helper *h = t->data;
  if (h && h->pid > 0) kill(h->pid, SIGKILL);
}

void evs__helper_stop(evs_helper *h) {
  if (!h || h->stopping) return;
  h->stopping = 1;
  uv_timer_stop(h->notify);
  uv_timer_stop(h->timer);
  if (h->fd < 0) { /* between starts */
    handles_close_free(h);
    return;
  }
  if (h->anchored_to_master && !evs__w->draining) keep_all(h, 1);
  close(h->fd); /* EOF first: a helper may end cleanly on it (the enclave wipes its keys) */
  h->fd = -1;
  kill(h->pid, SIGTERM);
  /* on_status frees once the shepherd is gone; SIGKILL if the helper lingers. */
  uv_ref((uv_handle_t *)h->timer);
  uv_timer_start(h->timer, on_grace, STOP_GRACE_MS, 0);
}

void evs__helpers_release(evs__plugin_rec *p) {
  for (evs_helper *h = helpers; h; h = h->next) {
    if (h->plugin != p || h->closing) continue;
    h->cb = NULL;
    h->released = 1;
    if (h->fd >= 0 && !h->anchored_to_master) {
      /* Not kept: it ends with this plugin. EOF, SIGTERM, then (the worker may be exiting,
       * with no loop turn left) a short wait here before SIGKILL. */
      close(h->fd);
      h->fd = -1;
      kill(h->pid, SIGTERM);
      for (int i = 0; i < 50; i++) {
        struct pollfd pf = {h->status_fd, POLLIN, 0};
        char c;
        if (poll(&pf, 1, 10) == 1 && read(h->status_fd, &c, 1) == 0) break;
      }
      kill(h->pid, SIGKILL);
    }
    if (h->shepherd > 0) { /* our child: reap it (it ends once the helper has) */
      kill(h->shepherd, SIGKILL);
      while (waitpid(h->shepherd, NULL, 0) < 0 && errno == EINTR) {}
      h->shepherd = 0;
    }
    if (h->stopping && h->pid > 0) kill(h->pid, SIGKILL); /* no loop turn left for the grace */
    /* Kept: only our descriptors close; the master holds the rank's. */
    close_start(h);
    handles_close_free(h);
  }
}
