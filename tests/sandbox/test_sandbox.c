/* tests/sandbox: each policy, applied in a child process, lets allowed calls through, makes
 * forbidden ones fail with EPERM and kills the process on the deadly ones (SIGSYS). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evs_sandbox.h"

/* Run fn in a sandboxed child; returns its wait status. fn returns the child's exit code. */
static int in_child(int (*fn)(int fd), int *ret_byte) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    if (evs_sandbox_apply(EVS_SANDBOX_ENCLAVE) != 0) _exit(99);
    _exit(fn(p[1]));
  }
  close(p[1]);
  unsigned char b = 0;
  ssize_t n = read(p[0], &b, 1);
  close(p[0]);
  *ret_byte = n == 1 ? b : -1;
  int st;
  waitpid(pid, &st, 0);
  return st;
}

static int allowed(int fd) {
  unsigned char buf[32];
  if (getrandom(buf, sizeof buf, 0) != sizeof buf) return 1;
  void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 2;
  if (mlock(m, 4096) != 0 && errno != ENOMEM && errno != EPERM) return 3;
  munmap(m, 4096);
  void *big = malloc(1 << 20); /* malloc may mmap */
  if (!big) return 4;
  free(big);
  /* What the enclave's ATTACH asks of a received descriptor: allowed (a pipe is no socket). */
  int v;
  socklen_t l = sizeof v;
  errno = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &l) == 0 || errno != ENOTSOCK) return 6;
  unsigned char ok = 42;
  return write(fd, &ok, 1) == 1 ? 0 : 5;
}

static int forbidden(int fd) {
  unsigned char bits = 0;
  errno = 0;
  if (open("/etc/hostname", O_RDONLY) < 0 && errno == EPERM) bits |= 1;
  errno = 0;
  if (socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM) bits |= 2;
  errno = 0;
  if (mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED &&
      errno == EPERM)
    bits |= 4;
  errno = 0;
  if (syscall(SYS_fork) < 0 && errno == EPERM) bits |= 8;
  errno = 0;
  if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0 && errno == EPERM) bits |= 16;
  /* getsockopt is allowed for a socket's kind only, not, say, its peer's credentials. */
  struct ucred cred;
  socklen_t l = sizeof cred;
  errno = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &l) < 0 && errno == EPERM) bits |= 32;
  return write(fd, &bits, 1) == 1 ? 0 : 5;
}

static int deadly(int fd) {
  (void)fd;
  char *argv[] = {"/bin/true", NULL};
  execve("/bin/true", argv, NULL);
  return 7; /* not reached: execve kills the process */
}

static void test_allowed_calls_work(void **state) {
  (void)state;
  int byte;
  int st = in_child(allowed, &byte);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  assert_int_equal(byte, 42);
}

static void test_forbidden_calls_fail_with_eperm(void **state) {
  (void)state;
  int byte;
  int st = in_child(forbidden, &byte);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  assert_int_equal(byte, 1 | 2 | 4 | 8 | 16 | 32);
}

static void test_exec_kills_with_sigsys(void **state) {
  (void)state;
  int byte;
  int st = in_child(deadly, &byte);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGSYS);
}

/* The named registry, and the worker policy's exec stage as the host loads it into a helper:
 * compiled in the parent, loaded after fork. */
static void test_registry(void **state) {
  (void)state;
  evs_sandbox_policy p;
  assert_int_equal(evs_sandbox_policy_lookup("enclave", &p), 0);
  assert_int_equal(p, EVS_SANDBOX_ENCLAVE);
  assert_true(evs_sandbox_policy_self_applied(p));
  assert_int_equal(evs_sandbox_policy_lookup("worker", &p), 0);
  assert_int_equal(p, EVS_SANDBOX_WORKER);
  assert_false(evs_sandbox_policy_self_applied(p));
  assert_string_equal(evs_sandbox_policy_name(p), "worker");
  assert_int_equal(evs_sandbox_policy_lookup("nonesuch", &p), -ENOENT);
  assert_int_equal(evs_sandbox_policy_lookup(NULL, &p), -ENOENT);
}

static int worker_child(void *prog, size_t len, int deadly) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (evs_sandbox_load(prog, len) != 0) _exit(99);
    if (deadly) {
      syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0);
      _exit(98);
    }
    int bits = 0;
    errno = 0;
    if (socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM) bits |= 1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) bits |= 2; /* unix sockets stay */
    errno = 0;
    if (syscall(SYS_fork) < 0 && errno == EPERM) bits |= 4;
    errno = 0;
    if (syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */) < 0 && errno == EPERM) bits |= 8;
    unsigned char buf[8];
    if (getrandom(buf, sizeof buf, 0) == sizeof buf) bits |= 16;
    _exit(bits);
  }
  int st;
  waitpid(pid, &st, 0);
  return st;
}

static void test_worker_exec_stage(void **state) {
  (void)state;
  void *prog = NULL;
  size_t len = 0;
  assert_int_equal(evs_sandbox_compile_exec_stage(EVS_SANDBOX_WORKER, &prog, &len), 0);
  assert_true(len > 0);
  int st = worker_child(prog, len, 0);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 31);
  st = worker_child(prog, len, 1);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGSYS);
  free(prog);
  /* The enclave's exec stage kills ptrace too (its own filter, applied later, is tighter). */
  assert_int_equal(evs_sandbox_compile_exec_stage(EVS_SANDBOX_ENCLAVE, &prog, &len), 0);
  st = worker_child(prog, len, 1);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
  free(prog);
}

/* ---- the function policies (evs-fnbox's final stage) and the fnbox exec stage ------------ */

static void *thread_fn(void *arg) { return arg; }

/* Bits of what worked and what was refused as it should be, under a function policy. */
static int function_calls(void) {
  int bits = 0;
  unsigned char buf[8];
  if (getrandom(buf, sizeof buf, 0) == sizeof buf) bits |= 1 << 0;
  int fd = open("/dev/null", O_RDONLY);
  if (fd >= 0) bits |= 1 << 1, close(fd);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) bits |= 1 << 2;
  pthread_t t; /* clone3 gets ENOSYS, glibc falls back to clone with CLONE_THREAD */
  void *ret = NULL;
  if (pthread_create(&t, NULL, thread_fn, (void *)7) == 0 && pthread_join(t, &ret) == 0 &&
      ret == (void *)7)
    bits |= 1 << 3;
  errno = 0;
  if (socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM) bits |= 1 << 4;
  errno = 0;
  if (syscall(SYS_fork) < 0 && errno == EPERM) bits |= 1 << 5;
  errno = 0;
  if (syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0) < 0 && errno == EPERM) bits |= 1 << 6;
  errno = 0;
  if (syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */) < 0 && errno == EPERM) bits |= 1 << 7;
  errno = 0;
  if (syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0) < 0 && errno == EPERM) bits |= 1 << 8;
  errno = 0;
  if (syscall(SYS_clone3, 0, 0) < 0 && errno == ENOSYS) bits |= 1 << 9;
  errno = 0;
  if (syscall(SYS_io_uring_setup, 1, 0) < 0 && errno == ENOSYS) bits |= 1 << 10;
  errno = 0;
  if (syscall(SYS_keyctl, 0, 0, 0, 0, 0) < 0 && errno == EPERM) bits |= 1 << 11;
  return bits;
}

static int function_calls_logged(void) {
  int bits = 0;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) bits |= 1 << 4;
  else close(fd);
  errno = 0;
  if (syscall(SYS_clone3, 0, 0) < 0 && errno == ENOSYS) bits |= 1 << 9;
  return bits;
}

/* Runs function_calls (or a deadly call) in a child under policy p; returns the wait status,
 * and the bits through *ret_bits. */
static int function_child(evs_sandbox_policy p, unsigned flags, long deadly, int *ret_bits) {
  int pp[2];
  assert_int_equal(pipe(pp), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pp[0]);
    if (evs_sandbox_apply_ex(p, flags) != 0) _exit(99);
    if (deadly) {
      syscall(deadly, 0, 0, 0, 0);
      _exit(98);
    }
    /* In log mode the refused calls go through: only those harmless to make for real. */
    int bits = (flags & EVS_SANDBOX_LOG_DENIED) ? function_calls_logged() : function_calls();
    ssize_t w = write(pp[1], &bits, sizeof bits);
    _exit(w == sizeof bits ? 0 : 97);
  }
  close(pp[1]);
  int bits = -1;
  if (read(pp[0], &bits, sizeof bits) != sizeof bits) bits = -1;
  close(pp[0]);
  *ret_bits = bits;
  int st;
  waitpid(pid, &st, 0);
  return st;
}

static void test_function_policies(void **state) {
  (void)state;
  evs_sandbox_policy p;
  assert_int_equal(evs_sandbox_policy_lookup("fnbox", &p), 0);
  assert_int_equal(p, EVS_SANDBOX_FNBOX);
  assert_false(evs_sandbox_policy_self_applied(p));
  static const char *const names[] = {"function-node", "function-python"};
  static const evs_sandbox_policy pols[] = {EVS_SANDBOX_FUNCTION_NODE,
                                            EVS_SANDBOX_FUNCTION_PYTHON};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(evs_sandbox_policy_lookup(names[i], &p), 0);
    assert_int_equal(p, pols[i]);
    assert_true(evs_sandbox_policy_self_applied(p));
    assert_string_equal(evs_sandbox_policy_name(p), names[i]);
    int bits;
    int st = function_child(p, 0, 0, &bits);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(bits, (1 << 12) - 1);
    static const long deadly[] = {SYS_ptrace, SYS_bpf, SYS_kexec_load, SYS_process_vm_readv,
                                  SYS_perf_event_open, SYS_init_module};
    for (size_t d = 0; d < sizeof deadly / sizeof deadly[0]; d++) {
      st = function_child(p, 0, deadly[d], &bits);
      assert_true(WIFSIGNALED(st));
      assert_int_equal(WTERMSIG(st), SIGSYS);
    }
  }
}

/* One execve: the one whose path is the very pointer given; any other, or any without a
 * pointer given, kills. */
static int exec_child(const char *allowed, const char *path) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (evs_sandbox_apply_exec(EVS_SANDBOX_FUNCTION_PYTHON, 0, allowed) != 0) _exit(99);
    char *argv[] = {(char *)path, NULL}, *envp[] = {NULL};
    execve(path, argv, envp);
    _exit(98);
  }
  int st;
  waitpid(pid, &st, 0);
  return st;
}

static void test_function_policy_one_exec(void **state) {
  (void)state;
  static const char path[] = "/bin/true";
  char copy[sizeof path];
  memcpy(copy, path, sizeof path);
  int st = exec_child(path, path);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  st = exec_child(path, copy); /* the same file by another pointer: killed */
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
  st = exec_child(NULL, path);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
}

/* Log mode: what would fail with EPERM goes through (and to the kernel log); kills stay. */
static void test_function_policy_log_mode(void **state) {
  (void)state;
  int bits;
  int st = function_child(EVS_SANDBOX_FUNCTION_PYTHON, EVS_SANDBOX_LOG_DENIED, 0, &bits);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  assert_int_equal(bits & (1 << 4), 0); /* socket(AF_INET) worked */
  assert_true(bits & (1 << 9));         /* clone3 still ENOSYS: an explicit rule, not denial */
  st = function_child(EVS_SANDBOX_FUNCTION_PYTHON, EVS_SANDBOX_LOG_DENIED, SYS_ptrace, &bits);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
}

/* The fnbox exec stage lets the box's set-up through and still kills ptrace; then, loaded as
 * the host loads it, evs-fnbox builds a box that says ready. */
static void test_fnbox_exec_stage(void **state) {
  (void)state;
  void *prog = NULL;
  size_t len = 0;
  assert_int_equal(evs_sandbox_compile_exec_stage(EVS_SANDBOX_FNBOX, &prog, &len), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (evs_sandbox_load(prog, len) != 0) _exit(99);
    int bits = 0;
    if (syscall(SYS_unshare, 0x10000000 | 0x00020000 /* CLONE_NEWUSER|CLONE_NEWNS */) == 0)
      bits |= 1;
    errno = 0;
    if (syscall(SYS_setns, 0, 0) < 0 && errno == EPERM) bits |= 2;
    errno = 0;
    if (socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM) bits |= 4;
    _exit(bits);
  }
  int st;
  waitpid(pid, &st, 0);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 7);
  st = worker_child(prog, len, 1);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);

  const char *py = "/usr/bin/python3.11";
  if (access(py, X_OK) != 0) {
    free(prog);
    skip();
  }
  char dir[] = "/tmp/evs-fnbox-stage-XXXXXX", file[64];
  assert_non_null(mkdtemp(dir));
  chmod(dir, 0755);
  snprintf(file, sizeof file, "%s/main.py", dir);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fputs("def handler(data, context):\n    return data\n", f);
  fclose(f);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (dup2(sv[1], 3) != 3 || fcntl(3, F_SETFD, 0) < 0) _exit(96);
    if (evs_sandbox_load(prog, len) != 0) _exit(99);
    char *argv[] = {"evs-fnbox", "--runtime", "python", "--interpreter", (char *)py, "--code",
                    dir, "--handler", "main.handler", "--tmp-size", "1048576", NULL};
    char *envp[] = {NULL};
    execve(EVS_BINARY_DIR "/evs-fnbox", argv, envp);
    _exit(95);
  }
  close(sv[1]);
  unsigned char frame[64];
  size_t got = 0;
  while (got < 4 + 13) {
    ssize_t n = read(sv[0], frame + got, sizeof frame - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  assert_true(got >= 4 + 13);
  assert_memory_equal(frame, "\0\0\0\x0d{\"t\":\"ready\"}", 4 + 13);
  close(sv[0]); /* EOF: the box ends */
  waitpid(pid, &st, 0);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  unlink(file);
  rmdir(dir);
  free(prog);
}

/* ---- the Cages policies (policy_cage.c) -------------------------------------------------- */

/* Bits of what a cage's app may and may not do, under the cage-app (or cage-vmm) exec stage. */
static int cage_child(evs_sandbox_policy pol, int deadly) {
  void *prog = NULL;
  size_t len = 0;
  assert_int_equal(evs_sandbox_compile_exec_stage(pol, &prog, &len), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (evs_sandbox_load(prog, len) != 0) _exit(99);
    if (deadly) {
      syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0);
      _exit(98);
    }
    int bits = 0, fd;
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0) bits |= 1, close(fd); /* its loopback */
    errno = 0;
    if (socket(AF_INET, SOCK_RAW, 1 /* ICMP */) < 0 && errno == EPERM) bits |= 2;
    errno = 0;
    if (socket(17 /* AF_PACKET */, SOCK_RAW, 0) < 0 && errno == EPERM) bits |= 4;
    errno = 0;
    if (socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0) >= 0) bits |= 8;
    pid_t c = fork(); /* an app may fork */
    if (c == 0) _exit(0);
    if (c > 0) bits |= 16, waitpid(c, NULL, 0);
    errno = 0;
    if (syscall(SYS_chroot, "/") < 0 && errno == EPERM) bits |= 32;
    errno = 0;
    if (syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */) < 0 && errno == EPERM) bits |= 64;
    _exit(bits);
  }
  free(prog);
  int st;
  waitpid(pid, &st, 0);
  return st;
}

static void test_cage_policies(void **state) {
  (void)state;
  evs_sandbox_policy p;
  assert_int_equal(evs_sandbox_policy_lookup("cage-app", &p), 0);
  assert_int_equal(p, EVS_SANDBOX_CAGE_APP);
  int st = cage_child(EVS_SANDBOX_CAGE_APP, 0);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 127);
  st = cage_child(EVS_SANDBOX_CAGE_APP, 1);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
  /* evs-cage-vmm's stage: the same sockets, but chroot and unshare stay (it builds the
   * sandbox); ptrace still kills. */
  assert_int_equal(evs_sandbox_policy_lookup("cage-vmm", &p), 0);
  st = cage_child(EVS_SANDBOX_CAGE_VMM, 0);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st) & 31, 31);
  assert_int_equal(WEXITSTATUS(st) & 32, 0);
  st = cage_child(EVS_SANDBOX_CAGE_VMM, 1);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_allowed_calls_work),
      cmocka_unit_test(test_forbidden_calls_fail_with_eperm),
      cmocka_unit_test(test_exec_kills_with_sigsys),
      cmocka_unit_test(test_registry),
      cmocka_unit_test(test_worker_exec_stage),
      cmocka_unit_test(test_function_policies),
      cmocka_unit_test(test_function_policy_one_exec),
      cmocka_unit_test(test_function_policy_log_mode),
      cmocka_unit_test(test_fnbox_exec_stage),
      cmocka_unit_test(test_cage_policies),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
