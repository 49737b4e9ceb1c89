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
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_allowed_calls_work),
      cmocka_unit_test(test_forbidden_calls_fail_with_eperm),
      cmocka_unit_test(test_exec_kills_with_sigsys),
      cmocka_unit_test(test_registry),
      cmocka_unit_test(test_worker_exec_stage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
