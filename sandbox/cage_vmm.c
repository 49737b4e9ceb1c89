/*
 * evs-cage-vmm: runs one cage for the cage-broker plugin (docs/cages.md, "The runner"). A helper
 * process (policy cage-vmm) that the runner (plugins/cage-broker/cage_run.c) keeps per worker
 * rank. It reads the image file and boots it:
 *   kvm      qemu-system-x86_64 -M microvm with KVM: the image's kernel, cmdline and ramdisks
 *            (concatenated, as Nitro loads them), one virtio-serial port named "evs" on a unix
 *            socket only this process reaches, no other device (no NIC, no disk).
 *   sandbox  both ramdisks unpacked into a private directory, and the image's /init
 *            (evs-cage-init) run there as pid 1 of new user, pid, mount, net, ipc and uts
 *            namespaces (pivot_root into it, host /dev nodes null, zero, random, urandom bound
 *            in, its own /proc), the mux on a socketpair, the app's seccomp program (cage-app) on
 *            fd 4. Run by root, the cage's ids 0..65535 are EVS_CAGE_UID_BASE + n outside
 *            (userns.h), and the tree keeps the image's owners, shifted there.
 * Either way it then serves the mux's host side: connections to its app socket (dir/app.sock,
 * 0600) become channels to the app's port once the app is READY; egress channels are checked
 * for their port and handed to the plugin's egress proxy (a CONNECT over a unix socket: the
 * proxy checks the allowlist, public addresses and the TLS server name); control frames
 * (HELLO, START, READY, EXIT, LOG, API calls) pass between the cage and the plugin.
 *
 * The plugin's side (fd 3) is the kept helper's socket: each worker that takes the cage over
 * sends a fresh connection on it (one byte with SCM_RIGHTS), and frames go over the newest. A
 * cage whose app exits, or whose VM or init ends, makes this process exit 3 after saying why:
 * the host restarts it with backoff, which boots the cage afresh.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cage_mux.h"
#include "eif.h"
#include "evs_sandbox.h"
#include "userns.h"

#define CTL_FD 3
#define MAX_PORTS 16

static struct {
  const char *backend, *eif_path, *base, *qemu;
  int tcg; /* --accel tcg: software emulation, for tests where KVM cannot boot a kernel */
  char dir[256];             /* private: mkdtemp under --dir */
  char egress_sock[108];     /* the plugin's egress proxy, as the attached worker said */
  unsigned long long memory_mib;
  unsigned cpus;
  int debug;
  uint16_t ports[MAX_PORTS];
  int n_ports;
  int ctl_fd;     /* the newest connection from a worker, or -1 */
  cmux *ctl;      /* frames to and from the plugin */
  cmux *mux;      /* the cage */
  int mux_fd;
  int app_l;      /* the app socket's listener once READY, else -1 */
  pid_t child;    /* qemu, or the sandbox's outer process */
  int sfd;
  int ready, hello_seen;
  cmux_buf pending; /* control frames for the plugin while no worker is attached */
  char app_sock[PATH_MAX];
} g;

static __attribute__((noreturn)) void finish(int code);
static void rm_tree(const char *p);

static void to_plugin(uint8_t type, const void *p, size_t n) {
  if (g.ctl) {
    cmux_send(g.ctl, type, p, n);
    return;
  }
  /* No worker right now: keep the state frames for the next one (API calls are not kept:
   * their answer would come from a worker that never saw them). */
  if (type == CMUX_API_REQ || type == CMUX_LOG) return;
  g.pending.max = 1u << 20;
  size_t off = cmux_frame_begin(&g.pending, type, 0);
  cmux_buf_put(&g.pending, p, n);
  cmux_frame_end(&g.pending, off);
}

static __attribute__((format(printf, 1, 2))) void say_fail(const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "evs-cage-vmm: %s\n", msg);
  to_plugin(CMUX_FAIL, msg, strlen(msg));
}

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  say_fail("%s", msg);
  finish(4);
}

/* Flushes what the plugin should hear (bounded), ends the cage, exits. */
static __attribute__((noreturn)) void finish(int code) {
  if (g.child > 0) kill(g.child, SIGKILL);
  if (g.ctl && g.ctl_fd >= 0) {
    cmux_buf *o = cmux_out(g.ctl);
    fcntl(g.ctl_fd, F_SETFL, fcntl(g.ctl_fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {1, 0};
    setsockopt(g.ctl_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (o->len && write(g.ctl_fd, o->p, o->len) < 0) code = code ? code : 1;
  }
  if (g.dir[0]) rm_tree(g.dir);
  _exit(code);
}

static void usage(void) {
  dprintf(2, "usage: evs-cage-vmm --backend kvm|sandbox --eif <file> --dir <base dir> "
             "[--memory <MiB>] [--cpus <n>] [--debug] [--egress-port <p>...] [--qemu <path>] "
             "[--accel kvm|tcg]\n");
  _exit(2);
}

static void parse_args(int argc, char **argv) {
  g.memory_mib = 256;
  g.cpus = 1;
  g.qemu = "/usr/bin/qemu-system-x86_64";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--debug") == 0) {
      g.debug = 1;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (strcmp(a, "--backend") == 0) g.backend = v;
    else if (strcmp(a, "--eif") == 0) g.eif_path = v;
    else if (strcmp(a, "--dir") == 0) g.base = v;
    else if (strcmp(a, "--qemu") == 0) g.qemu = v;
    else if (strcmp(a, "--accel") == 0) g.tcg = strcmp(v, "tcg") == 0;
    else if (strcmp(a, "--memory") == 0) g.memory_mib = strtoull(v, NULL, 10);
    else if (strcmp(a, "--cpus") == 0) g.cpus = (unsigned)strtoul(v, NULL, 10);
    else if (strcmp(a, "--egress-port") == 0 && g.n_ports < MAX_PORTS) {
      long p = strtol(v, NULL, 10);
      if (p < 1 || p > 65535) usage();
      g.ports[g.n_ports++] = (uint16_t)p;
    } else usage();
  }
  if (!g.backend || !g.eif_path || !g.base || g.memory_mib < 16 || g.cpus < 1 || g.cpus > 64)
    usage();
  if (strcmp(g.backend, "kvm") != 0 && strcmp(g.backend, "sandbox") != 0) usage();
}

/* ---- files -------------------------------------------------------------------------------- */

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb, (void)flag, (void)f;
  remove(p);
  return 0;
}

static void rm_tree(const char *p) { nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static void write_all(const char *path, const uint8_t *p, size_t n, int append) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0600);
  if (fd < 0) die("%s: %s", path, strerror(errno));
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k <= 0) die("%s: %s", path, strerror(errno));
    p += k;
    n -= (size_t)k;
  }
  close(fd);
}

/* Run by root, the cage's ids 0..EVS_CAGE_IDS-1 are EVS_CAGE_UID_BASE and up on the host
 * (userns.h): the archive's owners are shifted there as they are written, and what the unpack
 * itself made (implied parent directories, the device mount points, the root) becomes the
 * cage's root. Nothing of the cage runs yet: no race with it. */
static int g_stranger; /* run by root: the cage's ids are EVS_CAGE_UID_BASE + n */
static int chown_one(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)flag, (void)f;
  if ((sb->st_uid == 0 || sb->st_gid == 0) &&
      lchown(p, sb->st_uid == 0 ? EVS_CAGE_UID : (uid_t)-1,
             sb->st_gid == 0 ? EVS_CAGE_UID : (gid_t)-1) < 0)
    die("%s: %s", p, strerror(errno));
  return 0;
}

/* Unpacks a gzip'd newc ramdisk into the current directory: regular files, directories and
 * symbolic links only (no device nodes, FIFOs or set-id bits), no absolute paths, no "..", no
 * writing through a link. The image is the developer's, so it is input we do not trust. */
static void unpack(const uint8_t *p, size_t n) {
  struct archive *a = archive_read_new();
  struct archive *w = archive_write_disk_new();
  archive_read_support_filter_gzip(a);
  archive_read_support_filter_none(a);
  archive_read_support_format_cpio(a);
  archive_write_disk_set_options(w, ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                        ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                        ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                                        ARCHIVE_EXTRACT_PERM |
                                        (g_stranger ? ARCHIVE_EXTRACT_OWNER : 0));
  if (archive_read_open_memory(a, p, n) != ARCHIVE_OK) die("ramdisk: not an archive");
  struct archive_entry *e;
  int r;
  while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    mode_t t = archive_entry_filetype(e);
    if (t != AE_IFREG && t != AE_IFDIR && t != AE_IFLNK) continue;
    archive_entry_set_perm(e, archive_entry_perm(e) & 0777);
    if (g_stranger) { /* the image's owners, as the cage's ids on the host */
      la_int64_t u = archive_entry_uid(e), gr = archive_entry_gid(e);
      if (u < 0 || u >= EVS_CAGE_IDS || gr < 0 || gr >= EVS_CAGE_IDS)
        die("ramdisk entry %s: owner %lld:%lld is not one of the cage's %u ids",
            archive_entry_pathname(e), (long long)u, (long long)gr, EVS_CAGE_IDS);
      archive_entry_set_uid(e, EVS_CAGE_UID_BASE + u);
      archive_entry_set_gid(e, EVS_CAGE_UID_BASE + gr);
      archive_entry_set_uname(e, NULL);
      archive_entry_set_gname(e, NULL);
    }
    if (archive_read_extract2(a, e, w) != ARCHIVE_OK)
      die("ramdisk entry refused: %s", archive_error_string(a));
  }
  if (r != ARCHIVE_EOF) die("ramdisk: %s", archive_error_string(a));
  archive_read_free(a);
  archive_write_free(w);
}

/* ---- backends ----------------------------------------------------------------------------- */

static const char *const devs[] = {"null", "zero", "random", "urandom", "full"};
#define N_DEVS (sizeof devs / sizeof devs[0])

/* The mount points of the host's harmless device nodes in the unpacked tree, as descriptors:
 * the image is untrusted and its /rootfs or /rootfs/dev may be a link to anywhere of the
 * host's, so no component is followed. Made (create) before the cage exists, and opened again
 * by the outer process in its mount namespace (a mount point must be one of its own mounts).
 * 0, or -1 with errno set and *ret_what naming the step. */
static int dev_points(const char *root, int create, int *ret_fds, const char **ret_what) {
  int r = -1, fd = -1, rootfs = -1, dev = -1;
  size_t i = 0;
  *ret_what = "/rootfs (not a directory?)";
  rootfs = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfs >= 0) {
    fd = openat(rootfs, "rootfs", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    close(rootfs);
    rootfs = fd;
  }
  if (rootfs < 0) goto out;
  *ret_what = "/rootfs/dev (not a directory?)";
  if (create && mkdirat(rootfs, "dev", 0755) < 0 && errno != EEXIST) goto out;
  dev = openat(rootfs, "dev", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dev < 0) goto out;
  if (create && g_stranger && fchownat(dev, "", EVS_CAGE_UID, EVS_CAGE_UID, AT_EMPTY_PATH) < 0)
    goto out;
  *ret_what = "a /rootfs/dev node's mount point (not a regular file?)";
  for (; i < N_DEVS; i++) {
    int flags = O_NOFOLLOW | O_CLOEXEC | (create ? O_RDONLY | O_CREAT | O_NONBLOCK : O_PATH);
    struct stat sb;
    ret_fds[i] = openat(dev, devs[i], flags, 0644);
    if (ret_fds[i] < 0) goto out;
    if (fstat(ret_fds[i], &sb) < 0 || !S_ISREG(sb.st_mode)) {
      close(ret_fds[i]);
      errno = EINVAL;
      goto out;
    }
  }
  r = 0;
out:
  if (r < 0)
    while (i > 0) close(ret_fds[--i]);
  if (dev >= 0) close(dev);
  if (rootfs >= 0) close(rootfs);
  return r;
}

/* A set-up step of the sandbox's own processes failed: said on stderr (the host's log), exit. */
static __attribute__((noreturn)) void setup_fail(int code, const char *what) {
  dprintf(2, "evs-cage-vmm: sandbox set-up: %s: %s\n", what, strerror(errno));
  _exit(code);
}

/* The sandbox's root, made by the outer process in its new mount namespace before it takes
 * the cage's uid (the host's directories above the tree are root's alone): the unpacked tree
 * bound nosuid and nodev, the device nodes bound in, and the tree as the working directory.
 * pid 1 pivots into it (pivot_into), once it has mounted its /proc. */
static void sandbox_root(const char *root) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) setup_fail(110, "private mounts");
  if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0) setup_fail(111, "bind the root");
  if (mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) < 0)
    setup_fail(112, "remount the root");
  int dev_fds[N_DEVS]; /* (opened in the bound tree, which becomes the root) */
  const char *what;
  if (dev_points(root, 0, dev_fds, &what) < 0) setup_fail(120, what);
  for (size_t i = 0; i < N_DEVS; i++) {
    char src[64], dst[64];
    snprintf(src, sizeof src, "/dev/%s", devs[i]);
    snprintf(dst, sizeof dst, "/proc/self/fd/%d", dev_fds[i]);
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0) setup_fail(121, dst);
    close(dev_fds[i]);
  }
  if (chdir(root) < 0) setup_fail(113, "chdir root");
}

/* pid 1, in the new pid namespace, its working directory the bound tree: the namespace's own
 * /proc on the tree's /proc, then pivot_root, the old root detached. The order matters: the
 * kernel lets a user namespace mount a new proc only while a full one is visible in its mount
 * namespace, which the host's is until the detach, and a proc shows the pid namespace of the
 * process that mounts it (the outer process is still in the host's). evs-cage-init then mounts
 * the app's /rootfs/proc, allowed because this one is visible. The image is untrusted: /proc
 * must be a directory of the tree, not a link. Where the host's /proc is partly masked (as in
 * containers) the kernel refuses: the cage has no /proc, as before. */
static void pivot_into(void) {
  if (mkdir("proc", 0555) < 0 && errno != EEXIST) setup_fail(122, "mkdir /proc");
  int pfd = open("proc", O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) setup_fail(123, "the image's /proc");
  char dst[64];
  snprintf(dst, sizeof dst, "/proc/self/fd/%d", pfd);
  if (mount("proc", dst, "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
    if (errno != EPERM) setup_fail(124, "/proc of the cage");
    dprintf(2, "evs-cage-vmm: no /proc in the cage (%s)\n", strerror(errno));
  }
  close(pfd);
  if (syscall(SYS_pivot_root, ".", ".") < 0) setup_fail(114, "pivot_root");
  if (umount2(".", MNT_DETACH) < 0) setup_fail(115, "detach the old root");
  if (chdir("/") < 0) setup_fail(116, "chdir /");
}

/* The sandbox's pid 1 (in the new namespaces): its root, then /init runs. ids: how many ids the
 * cage has (init refuses an image USER outside them with a sentence). */
static __attribute__((noreturn)) void sandbox_pid1(int mux, int filter, unsigned ids) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  pivot_into();
  if (dup2(mux, 3) < 0 || dup2(filter, 4) < 0) _exit(117);
  syscall(SYS_close_range, 5, ~0u, 0);
  int null = open("/dev/null", O_RDWR); /* (there is none at / yet: init makes its own) */
  if (null >= 0) dup2(null, 0);
  char *argv[] = {"/init", NULL};
  char ids_env[32];
  snprintf(ids_env, sizeof ids_env, "EVS_CAGE_IDS=%u", ids);
  char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ids_env,
                  NULL};
  execve("/init", argv, envp);
  _exit(118);
}

/* Started by root, the cage's ids 0..65535 are EVS_CAGE_UID_BASE and up on the host, never root
 * (userns.h): only a process outside the new user namespace may map other ids than its own, so
 * this process writes the maps of the outer one once it has unshared. Otherwise the cage has one
 * id, 0, ours: the subordinate ids of /etc/subuid would need newuidmap, a set-id program, which
 * gains nothing under the no-new-privs every helper runs with, so an image USER other than root
 * is refused there (evs-cage-init says so). */
static void start_sandbox(const eif_image *img) {
  int stranger = g_stranger = geteuid() == 0;
  char root[PATH_MAX];
  snprintf(root, sizeof root, "%s/root", g.dir);
  rm_tree(root);
  if (mkdir(root, 0700) < 0) die("%s: %s", root, strerror(errno));
  int cwd = open(".", O_PATH | O_CLOEXEC);
  if (chdir(root) < 0) die("%s: %s", root, strerror(errno));
  const uint8_t *rd;
  size_t rl;
  for (unsigned i = 0; eif_section(img, EIF_SECTION_RAMDISK, i, &rd, &rl) == 0; i++)
    unpack(rd, rl);
  if (fchdir(cwd) < 0) die("chdir back");
  close(cwd);
  chmod(root, 0755);
  int dev_fds[N_DEVS];
  const char *what;
  if (dev_points(root, 1, dev_fds, &what) < 0) die("the image's %s: %s", what, strerror(errno));
  for (size_t i = 0; i < N_DEVS; i++) close(dev_fds[i]);
  if (stranger && nftw(root, chown_one, 16, FTW_PHYS) != 0) die("%s: chown", root);
  /* The app's seccomp program, compiled here: init links no libseccomp. */
  void *prog;
  size_t plen;
  int r = evs_sandbox_compile_exec_stage(EVS_SANDBOX_CAGE_APP, &prog, &plen);
  if (r < 0) die("cage-app policy: %s", strerror(-r));
  int filter = memfd_create("cage-app", 0);
  if (filter < 0 || write(filter, prog, plen) != (ssize_t)plen) die("memfd: %s", strerror(errno));
  free(prog);
  int sv[2], ready[2], go[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) die("pipe: %s", strerror(errno));
  uid_t uid = getuid();
  gid_t gid = getgid();
  pid_t vmm = getpid();
  pid_t outer = fork();
  if (outer < 0) die("fork: %s", strerror(errno));
  if (outer == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(sv[0]);
    close(ready[0]);
    close(go[1]);
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC |
                CLONE_NEWUTS) < 0) {
      dprintf(2, "evs-cage-vmm: namespaces: %s\n", strerror(errno));
      _exit(100);
    }
    char c;
    if (stranger) {
      if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1) _exit(101);
    } else {
      /* This process's /proc files are root's while it is not dumpable (main): its own maps
       * would be refused to a user. Dumpable for the two writes only. */
      prctl(PR_SET_DUMPABLE, 1);
      errno = -evs__map_self(uid, gid);
      prctl(PR_SET_DUMPABLE, 0);
      if (errno) setup_fail(101, "id maps");
    }
    close(ready[1]);
    close(go[0]);
    sandbox_root(root);
    if (stranger) {
      if (evs__become_ns_root() < 0) setup_fail(103, "becoming the cage's uid");
      /* A change of uid clears the parent-death signal: set it again, and check we have one. */
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != vmm) _exit(104);
    }
    /* rlimits for the whole cage: its memory as address space per process, and processes. */
    struct rlimit as = {g.memory_mib << 20, g.memory_mib << 20};
    setrlimit(RLIMIT_AS, &as);
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);
    pid_t p1 = fork();
    if (p1 < 0) _exit(102);
    if (p1 == 0) sandbox_pid1(sv[1], filter, stranger ? EVS_CAGE_IDS : 1);
    close(sv[1]);
    close(filter);
    int ws;
    while (waitpid(p1, &ws, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws));
  }
  close(sv[1]);
  close(filter);
  close(ready[1]);
  close(go[0]);
  g.child = outer;
  if (stranger) {
    char c;
    if (read(ready[0], &c, 1) != 1) die("the cage's namespaces were not made");
    r = evs__map_stranger_range(outer, EVS_CAGE_UID_BASE, EVS_CAGE_IDS);
    if (r < 0) die("the cage's id maps: %s", strerror(-r));
    if (write(go[1], "g", 1) != 1) die("the cage's outer process is gone");
  }
  close(ready[0]);
  close(go[1]);
  g.mux_fd = sv[0];
}

static void start_kvm(const eif_image *img) {
  const uint8_t *k, *c, *rd;
  size_t kl, cl, rl;
  if (eif_section(img, EIF_SECTION_KERNEL, 0, &k, &kl) < 0) die("the image has no kernel");
  if (eif_section(img, EIF_SECTION_CMDLINE, 0, &c, &cl) < 0) die("the image has no cmdline");
  char kpath[PATH_MAX], ipath[PATH_MAX], spath[PATH_MAX];
  snprintf(kpath, sizeof kpath, "%s/vmlinuz", g.dir);
  snprintf(ipath, sizeof ipath, "%s/initrd", g.dir);
  snprintf(spath, sizeof spath, "%s/mux.sock", g.dir);
  write_all(kpath, k, kl, 0);
  unlink(ipath);
  for (unsigned i = 0; eif_section(img, EIF_SECTION_RAMDISK, i, &rd, &rl) == 0; i++)
    write_all(ipath, rd, rl, 1);
  char cmdline[4096];
  if (cl >= sizeof cmdline || memchr(c, 0, cl)) die("the image's cmdline is too long");
  memcpy(cmdline, c, cl);
  cmdline[cl] = 0;
  /* The port's socket: listening here, qemu connects, only this process accepts. */
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(spath) >= sizeof a.sun_path) die("%s: path too long", spath);
  strcpy(a.sun_path, spath);
  unlink(spath);
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
    die("%s: %s", spath, strerror(errno));
  chmod(spath, 0600);
  char mem[32], smp[32], chardev[PATH_MAX + 64];
  snprintf(mem, sizeof mem, "%llu", g.memory_mib);
  snprintf(smp, sizeof smp, "%u", g.cpus);
  snprintf(chardev, sizeof chardev, "socket,id=evs,path=%s", spath);
  const char *argv[] = {g.qemu, "-M", "microvm", "-accel", g.tcg ? "tcg" : "kvm", "-m", mem,
                        "-smp", smp,
                        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                        "-kernel", kpath, "-initrd", ipath, "-append", cmdline,
                        "-chardev", chardev, "-device", "virtio-serial-device",
                        "-device", "virtserialport,chardev=evs,name=evs",
                        "-serial", "none", /* the app's output comes over the mux */
                        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
                                    "resourcecontrol=deny",
                        NULL};
  pid_t pid = fork();
  if (pid < 0) die("fork: %s", strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    syscall(SYS_close_range, 3, ~0u, 0);
    execv(g.qemu, (char *const *)argv);
    _exit(127);
  }
  g.child = pid;
  struct pollfd pf = {l, POLLIN, 0};
  if (poll(&pf, 1, 60000) <= 0) die("qemu did not connect its virtio-serial port");
  g.mux_fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  if (g.mux_fd < 0) die("accept: %s", strerror(errno));
  close(l);
  unlink(spath);
}

/* ---- the app socket ----------------------------------------------------------------------- */

static void open_app_socket(void) {
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(g.app_sock) >= sizeof a.sun_path) die("%s: path too long", g.app_sock);
  strcpy(a.sun_path, g.app_sock);
  unlink(g.app_sock);
  mode_t old = umask(0177);
  int r = l < 0 ? -1 : bind(l, (struct sockaddr *)&a, sizeof a);
  umask(old);
  if (r < 0 || listen(l, 256) < 0) die("%s: %s", g.app_sock, strerror(errno));
  g.app_l = l;
}

/* ---- frames ------------------------------------------------------------------------------- */

static void cage_ctrl(void *arg, cmux *m, const cmux_frame *f) {
  (void)arg, (void)m;
  switch (f->type) {
    case CMUX_HELLO:
      g.hello_seen = 1;
      to_plugin(CMUX_HELLO, f->payload, f->len); /* the plugin answers START */
      break;
    case CMUX_READY:
      if (!g.ready) open_app_socket();
      g.ready = 1;
      to_plugin(CMUX_READY, NULL, 0);
      break;
    case CMUX_EXIT: {
      to_plugin(CMUX_EXIT, f->payload, f->len);
      finish(3);
    }
    case CMUX_LOG:
      if (g.debug) to_plugin(CMUX_LOG, f->payload, f->len);
      break;
    case CMUX_API_REQ:
      to_plugin(CMUX_API_REQ, f->payload, f->len);
      break;
    case CMUX_FAIL:
      to_plugin(CMUX_FAIL, f->payload, f->len);
      finish(4);
    default:
      break;
  }
}

static void egress_event(int allowed, uint16_t port, const char *host, const char *why) {
  cmux_buf b = {0};
  cmux_put_u8(&b, (uint8_t)allowed);
  cmux_put_u16(&b, port);
  cmux_put_str(&b, host, strlen(host));
  cmux_put_str(&b, why, strlen(why));
  to_plugin(CMUX_EGRESS, b.p, b.len);
  cmux_buf_free(&b);
}

static int cage_open(void *arg, cmux *m, uint32_t chan, uint8_t kind, uint16_t port,
                     const char *name, int *skip_head) {
  (void)arg, (void)m, (void)chan;
  if (kind != CMUX_KIND_EGRESS || !name[0]) return -1;
  int ok = 0;
  for (int i = 0; i < g.n_ports; i++) ok |= g.ports[i] == port;
  if (!g.egress_sock[0] || !ok) {
    egress_event(0, port, name, g.egress_sock[0] ? "port not allowed" : "egress is off");
    return -1;
  }
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-')) {
      egress_event(0, port, "?", "not a host name");
      return -1;
    }
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  memcpy(a.sun_path, g.egress_sock, sizeof a.sun_path);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    if (s >= 0) close(s);
    egress_event(0, port, name, "the egress proxy is not running");
    return -1;
  }
  char req[400];
  int n = snprintf(req, sizeof req, "CONNECT %s:%u HTTP/1.1\r\nHost: %s:%u\r\n\r\n", name, port,
                   name, port);
  if (write(s, req, (size_t)n) != n) {
    close(s);
    return -1;
  }
  *skip_head = 1;
  return s;
}

static void cage_dead(void *arg, cmux *m, const char *why) {
  (void)arg, (void)m;
  die("the cage's mux: %s", why);
}

static const cmux_ops cage_ops = {cage_ctrl, cage_open, cage_dead};

static void plugin_ctrl(void *arg, cmux *m, const cmux_frame *f) {
  (void)arg, (void)m;
  if ((f->type == CMUX_START || f->type == CMUX_API_RESP) && g.mux)
    cmux_send(g.mux, f->type, f->payload, f->len);
  if (f->type == CMUX_WHERE && f->len < sizeof g.egress_sock && !memchr(f->payload, 0, f->len)) {
    memcpy(g.egress_sock, f->payload, f->len);
    g.egress_sock[f->len] = 0;
  }
}

static void plugin_dead(void *arg, cmux *m, const char *why) {
  (void)arg, (void)m, (void)why;
  g.ctl = NULL; /* freed in the loop; the cage goes on for the next worker */
}

static const cmux_ops plugin_ops = {plugin_ctrl, NULL, plugin_dead};

/* A worker hands over a fresh connection on fd 3 (one byte, SCM_RIGHTS). */
static void take_attach(void) {
  char c;
  struct iovec iov = {&c, 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cm;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                      .msg_controllen = sizeof cm.buf};
  ssize_t n = recvmsg(CTL_FD, &mh, MSG_CMSG_CLOEXEC);
  if (n == 0) finish(0); /* the master let the helper go: the cage ends with it */
  if (n < 0) return;
  struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
  if (!h || h->cmsg_type != SCM_RIGHTS || h->cmsg_len != CMSG_LEN(sizeof(int))) return;
  int fd;
  memcpy(&fd, CMSG_DATA(h), sizeof fd);
  if (g.ctl) cmux_free(g.ctl);
  if (g.ctl_fd >= 0) close(g.ctl_fd);
  g.ctl_fd = fd;
  g.ctl = cmux_new(fd, 0, &plugin_ops, NULL);
  if (!g.ctl) die("out of memory");
  /* What the new worker must know: where the app is, the cage's state so far. */
  cmux_send(g.ctl, CMUX_WHERE, g.app_sock, strlen(g.app_sock));
  g.egress_sock[0] = 0; /* the new worker's proxy, when it says */
  if (g.pending.len) {
    cmux_buf_put(cmux_out(g.ctl), g.pending.p, g.pending.len);
    cmux_buf_free(&g.pending);
  } else if (g.hello_seen) {
    if (g.ready) cmux_send(g.ctl, CMUX_READY, NULL, 0);
  }
}

int main(int argc, char **argv) {
  parse_args(argc, argv);
  g.ctl_fd = -1;
  g.app_l = -1;
  g.mux_fd = -1;
  struct stat sb;
  if (fstat(CTL_FD, &sb) < 0 || !S_ISSOCK(sb.st_mode)) {
    dprintf(2, "evs-cage-vmm: fd 3 must be the runner's socket\n");
    return 2;
  }
  syscall(SYS_close_range, CTL_FD + 1, ~0u, 0);
  prctl(PR_SET_DUMPABLE, 0);
  /* A private directory of its own: workers of other ranks run the same cage beside it. */
  mkdir(g.base, 0700);
  int dl = snprintf(g.dir, sizeof g.dir, "%s/cage-XXXXXX", g.base);
  if (dl < 0 || (size_t)dl >= sizeof g.dir || !mkdtemp(g.dir)) {
    dprintf(2, "evs-cage-vmm: %s: %s\n", g.dir, strerror(errno));
    return 2;
  }
  snprintf(g.app_sock, sizeof g.app_sock, "%s/app.sock", g.dir);
  sigset_t ss;
  sigemptyset(&ss);
  sigaddset(&ss, SIGCHLD);
  sigaddset(&ss, SIGPIPE);
  sigaddset(&ss, SIGTERM); /* helper_stop: the cage and its files go first */
  sigaddset(&ss, SIGINT);
  sigprocmask(SIG_BLOCK, &ss, NULL);
  sigdelset(&ss, SIGPIPE);
  g.sfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
  /* The first worker's connection, before anything can fail unheard. */
  struct pollfd p0 = {CTL_FD, POLLIN, 0};
  if (poll(&p0, 1, 10000) > 0) take_attach();

  const char *why;
  eif_image *img;
  int r = eif_open(g.eif_path, &img, &why);
  if (r < 0) die("%s: %s", g.eif_path, why);
  if (strcmp(g.backend, "kvm") == 0) start_kvm(img);
  else start_sandbox(img);
  eif_free(img);
  g.mux = cmux_new(g.mux_fd, 0, &cage_ops, NULL);
  if (!g.mux) die("out of memory");

  struct pollfd pf[600];
  for (;;) {
    size_t n = 0, mux_n, ctl_n = 0;
    mux_n = cmux_pollfds(g.mux, pf, 500);
    n = mux_n;
    size_t ctl_base = n;
    if (g.ctl) {
      ctl_n = cmux_pollfds(g.ctl, pf + n, 2);
      n += ctl_n;
    }
    size_t extra = n;
    pf[n++] = (struct pollfd){CTL_FD, POLLIN, 0};
    pf[n++] = (struct pollfd){g.sfd, POLLIN, 0};
    if (g.app_l >= 0) pf[n++] = (struct pollfd){g.app_l, POLLIN, 0};
    if (poll(pf, n, -1) < 0 && errno != EINTR) die("poll: %s", strerror(errno));
    for (size_t i = extra; i < n; i++) {
      if (!pf[i].revents) continue;
      if (pf[i].fd == CTL_FD) {
        if (pf[i].revents & (POLLHUP | POLLERR) && !(pf[i].revents & POLLIN)) finish(0);
        take_attach();
      } else if (pf[i].fd == g.sfd) {
        struct signalfd_siginfo si;
        while (read(g.sfd, &si, sizeof si) > 0)
          if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) finish(0);
        int ws;
        pid_t p;
        while ((p = waitpid(-1, &ws, WNOHANG)) > 0)
          if (p == g.child) {
            g.child = 0;
            if (g.mux) cmux_service(g.mux, pf, mux_n); /* what the cage said last */
            if (WIFEXITED(ws))
              die("the cage ended (%s exit %d)", g.backend, WEXITSTATUS(ws));
            die("the cage ended (%s killed by signal %d)", g.backend, WTERMSIG(ws));
          }
      } else if (pf[i].fd == g.app_l) {
        int c = accept4(g.app_l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) cmux_open(g.mux, c, CMUX_KIND_APP, 0, "");
      }
    }
    cmux *ctl = g.ctl;
    if (ctl && ctl_n) cmux_service(ctl, pf + ctl_base, ctl_n);
    if (ctl && !g.ctl) {
      cmux_free(ctl);
      close(g.ctl_fd);
      g.ctl_fd = -1;
    }
    cmux_service(g.mux, pf, mux_n);
    if (g.ctl && cmux_pending(g.ctl)) { /* output queued by the mux's frames: flush soon */
      struct pollfd w = {g.ctl_fd, POLLOUT, 0};
      if (poll(&w, 1, 0) > 0) cmux_service(g.ctl, &w, 1);
    }
  }
}
