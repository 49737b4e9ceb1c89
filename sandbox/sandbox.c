/*
 * Common part of the sandbox layer (see evs_sandbox.h): process hardening that every policy
 * shares, and dispatch to the policy files.
 */
#include <errno.h>
#include <stddef.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "evs_sandbox.h"
#include "policy.h"

const char *evs_sandbox_policy_name(evs_sandbox_policy policy) {
  switch (policy) {
    case EVS_SANDBOX_ENCLAVE: return "enclave";
  }
  return "unknown";
}

int evs_sandbox_apply(evs_sandbox_policy policy) {
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) < 0) return -errno;
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) return -errno;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
  if (!ctx) return -ENOMEM;
  int r;
  switch (policy) {
    case EVS_SANDBOX_ENCLAVE: r = evs__sandbox_enclave_rules(ctx); break;
    default: r = -EINVAL; break;
  }
  if (r == 0) r = evs__sandbox_kill_rules(ctx);
  if (r == 0) r = seccomp_load(ctx);
  seccomp_release(ctx);
  return r;
}

int evs__sandbox_kill_rules(scmp_filter_ctx ctx) {
  /* Calls that no key holder ever makes legitimately: die loudly instead of returning EPERM. */
  static const int deadly[] = {
      SCMP_SYS(execve), SCMP_SYS(execveat), SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv),
      SCMP_SYS(process_vm_writev), SCMP_SYS(kexec_load), SCMP_SYS(init_module),
      SCMP_SYS(finit_module), SCMP_SYS(bpf), SCMP_SYS(perf_event_open),
  };
  for (size_t i = 0; i < sizeof deadly / sizeof deadly[0]; i++) {
    int r = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, deadly[i], 0);
    if (r < 0) return r;
  }
  return 0;
}
