/*
 * The enclave policy: the process that holds App Master Keys and private keys. After start-up it
 * only talks over the socketpair it inherited and the unix sockets handed to it over that (its
 * ATTACH request), so it may read and write open descriptors, receive descriptors, ask what kind
 * of socket one is, manage its own memory (never executable), lock memory, read clocks and
 * randomness, wait, and exit. It cannot open files, create sockets, connect, exec, fork or
 * trace.
 */
#include <errno.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "policy.h"

#define ALLOW(call)                                                            \
  do {                                                                         \
    int r_ = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(call), 0);        \
    if (r_ < 0) return r_;                                                     \
  } while (0)

int evs__sandbox_enclave_rules(scmp_filter_ctx ctx) {
  ALLOW(read);
  ALLOW(write);
  ALLOW(readv);
  ALLOW(writev);
  ALLOW(recvmsg);
  ALLOW(sendmsg);
  ALLOW(recvfrom);
  ALLOW(sendto);
  ALLOW(close);
  ALLOW(poll);
  ALLOW(ppoll);
  ALLOW(epoll_wait);
  ALLOW(epoll_pwait);
  ALLOW(epoll_ctl);
  ALLOW(fstat);
  ALLOW(newfstatat);
  ALLOW(lseek);
  ALLOW(fcntl);
  ALLOW(brk);
  ALLOW(munmap);
  ALLOW(mremap);
  ALLOW(madvise);
  ALLOW(mlock);
  ALLOW(munlock);
  ALLOW(mlock2);
  ALLOW(futex);
  ALLOW(clock_gettime);
  ALLOW(clock_nanosleep);
  ALLOW(nanosleep);
  ALLOW(gettimeofday);
  ALLOW(getrandom);
  ALLOW(getpid);
  ALLOW(gettid);
  ALLOW(rt_sigreturn);
  ALLOW(rt_sigprocmask);
  ALLOW(restart_syscall);
  ALLOW(sigaltstack); /* sanitizer runtimes and libraries install alternate signal stacks */
  ALLOW(sched_yield);
  ALLOW(exit);
  ALLOW(exit_group);
  /* ATTACH checks that a received descriptor is a unix stream socket that is not listening:
   * getsockopt(SOL_SOCKET) for SO_DOMAIN, SO_TYPE and SO_ACCEPTCONN only, which read a socket's
   * kind and nothing else. */
  static const int sockopts[] = {SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN};
  for (size_t i = 0; i < sizeof sockopts / sizeof sockopts[0]; i++) {
    int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(getsockopt), 2,
                             SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET, 0),
                             SCMP_A2(SCMP_CMP_EQ, (scmp_datum_t)sockopts[i], 0));
    if (r < 0) return r;
  }
  /* Memory may be mapped and re-protected, but never executable: no code can be injected. */
  int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
                           SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  if (r < 0) return r;
  r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
                       SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
  if (r < 0) return r;
  return 0;
}
