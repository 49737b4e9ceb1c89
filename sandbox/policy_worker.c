/*
 * The worker policy: for untrusted code run as a helper process (function workers, cage
 * workloads). Loaded by the host before exec (its only stage), on top of the exec stage every
 * helper gets (policy_exec.c): the program may run threads but no new processes (clone without
 * CLONE_THREAD, fork and vfork fail with EPERM; clone3, whose flags seccomp cannot see, fails
 * with ENOSYS so that libc falls back to clone). exec stays allowed: with no new processes and
 * PR_SET_NO_NEW_PRIVS it only replaces the sandboxed process by another one under the same
 * filters and limits.
 */
#include <errno.h>
#include <sched.h>

#include "policy.h"

int evs__sandbox_worker_rules(scmp_filter_ctx ctx) {
  int r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
  if (r < 0) return r;
  static const int refused[] = {SCMP_SYS(fork), SCMP_SYS(vfork)};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), refused[i], 0)) < 0) return r;
  return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
}
