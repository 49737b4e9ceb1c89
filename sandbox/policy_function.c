/*
 * The function policies: function-node and function-python, the final stage evs-fnbox loads
 * just before it execs the interpreter of a function box (sandbox/fnbox.c), and the fnbox
 * policy's exec stage, which lets evs-fnbox build that box.
 *
 * The final stage is deny by default (EPERM, so that a runtime probing for a feature degrades)
 * with an allowlist of what node 20 and python 3.11 need to serve runs, found with
 * `evs-fnbox --seccomp-log` (would-be-denied calls go to the kernel log instead). Threads yes
 * (clone with CLONE_THREAD; clone3, whose flags seccomp cannot see, fails with ENOSYS so that
 * glibc falls back to clone), new processes no. Sockets: unix ones only (the channel, the egress
 * proxy). The filter goes on before the exec of the interpreter, so it allows exactly that
 * execve: the one whose path argument is the very pointer evs-fnbox passes. Any later execve
 * (its path elsewhere in a new address space, which the box cannot see) kills the box, as do
 * execveat and the calls that only an attacker makes (SIGSYS).
 */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "policy.h"

static int add_names(scmp_filter_ctx ctx, uint32_t action, const char *const *names, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int nr = seccomp_syscall_resolve_name(names[i]);
    if (nr == __NR_SCMP_ERROR) continue; /* not on this architecture */
    int r = seccomp_rule_add(ctx, action, nr, 0);
    if (r < 0) return r;
  }
  return 0;
}

/* Both runtimes: files (the root is read-only anyway; /tmp is the writable tmpfs), memory,
 * time, signals within the box, polling, threads' futexes, unix sockets. */
static const char *const common[] = {
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "open", "openat", "close", "close_range", "stat", "fstat", "lstat",
    "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "lseek",
    "getdents64", "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2", "mkdir",
    "mkdirat", "rmdir", "unlink", "unlinkat", "symlink", "symlinkat", "link", "linkat",
    "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat",
    "lchown", "umask", "truncate", "ftruncate",
    "fallocate", "fsync", "fdatasync", "flock", "utimensat", "futimesat", "utime", "utimes",
    "fadvise64", "copy_file_range", "sendfile", "splice", "tee", "pipe", "pipe2", "dup", "dup2",
    "dup3", "fcntl", "ioctl", "mmap", "munmap", "mprotect", "mremap", "madvise", "brk",
    "mincore", "msync", "mlock", "munlock", "membarrier", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "get_mempolicy", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "sigaltstack",
    "kill", "tgkill", "tkill", "poll", "ppoll", "select", "pselect6", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
    "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "futex",
    "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_setscheduler", "getpriority", "setpriority", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "getrlimit", "setrlimit",
    "prlimit64", "getrusage", "sysinfo", "times", "uname", "getuid", "geteuid", "getgid",
    "getegid", "getresuid", "getresgid", "getgroups", "getpid", "getppid", "gettid", "getpgrp",
    "getpgid", "getsid", "getcpu", "capget", "prctl", "arch_prctl", "getrandom", "memfd_create",
    "wait4", "waitid", "exit", "exit_group", "restart_syscall",
    /* sockets: creation is unix-only (below); the rest only ever applies to unix sockets */
    "connect", "bind", "listen", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "shutdown", "getsockname", "getpeername", "getsockopt",
    "setsockopt",
};

/* Only an attacker makes these: the box dies (SIGSYS). */
static const char *const deadly[] = {
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "iopl", "ioperm",
    "open_by_handle_at", "userfaultfd", "execveat",
};

int evs__sandbox_function_rules(scmp_filter_ctx ctx, evs_sandbox_policy policy,
                                const char *exec_path) {
  int r = add_names(ctx, SCMP_ACT_KILL_PROCESS, deadly, sizeof deadly / sizeof deadly[0]);
  if (r == 0) r = add_names(ctx, SCMP_ACT_ALLOW, common, sizeof common / sizeof common[0]);
  if (r < 0) return r;
  scmp_datum_t once = (scmp_datum_t)(uintptr_t)exec_path;
  if (exec_path)
    r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(execve), 1,
                         SCMP_A0(SCMP_CMP_EQ, once, 0));
  if (r == 0)
    r = exec_path ? seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(execve), 1,
                                     SCMP_A0(SCMP_CMP_NE, once, 0))
                  : seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, SCMP_SYS(execve), 0);
  if (r < 0) return r;
  /* Threads only: a clone without CLONE_THREAD (fork, child_process.spawn, os.fork) is
   * refused by the default action. */
  r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                       SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
  if (r == 0) r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (r == 0)
    r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                         SCMP_A0(SCMP_CMP_EQ, AF_UNIX, 0));
  if (r == 0)
    r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socketpair), 1,
                         SCMP_A0(SCMP_CMP_EQ, AF_UNIX, 0));
  /* io_uring would bypass the filter for the calls it performs; libuv falls back without it. */
  if (r == 0) r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(io_uring_setup), 0);
  (void)policy; /* node and python need the same calls so far; each keeps its name */
  return r;
}

/* The fnbox exec stage: what evs-fnbox needs to build the box (unshare, mount, pivot_root,
 * one fork), on top of the kills every helper gets. */
int evs__sandbox_fnbox_exec_rules(scmp_filter_ctx ctx) {
  static const int refused[] = {
      SCMP_SYS(setns),        SCMP_SYS(chroot),        SCMP_SYS(keyctl),
      SCMP_SYS(add_key),      SCMP_SYS(request_key),   SCMP_SYS(swapon),
      SCMP_SYS(swapoff),      SCMP_SYS(reboot),        SCMP_SYS(settimeofday),
      SCMP_SYS(clock_settime), SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex),
      SCMP_SYS(acct),         SCMP_SYS(quotactl),      SCMP_SYS(fanotify_init),
      SCMP_SYS(name_to_handle_at), SCMP_SYS(syslog),   SCMP_SYS(fsopen),
      SCMP_SYS(fsmount),      SCMP_SYS(move_mount),    SCMP_SYS(open_tree),
  };
  int r;
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), refused[i], 0)) < 0) return r;
  r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1,
                       SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
  if (r < 0) return r;
  return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socketpair), 1,
                          SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
}
