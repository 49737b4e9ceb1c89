/*
 * Common part of the sandbox layer (see evs_sandbox.h): the registry of named policies,
 * process hardening that every policy shares, dispatch to the policy files, and the compiled
 * exec stage the host loads into helper processes before exec.
 */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evs_sandbox.h"
#include "policy.h"

/* The registry: name, and whether the program applies the final stage itself. */
static const struct {
  evs_sandbox_policy policy;
  const char *name;
  int self_applied;
} registry[] = {
    {EVS_SANDBOX_ENCLAVE, "enclave", 1},
    {EVS_SANDBOX_WORKER, "worker", 0},
    {EVS_SANDBOX_FNBOX, "fnbox", 0},
    {EVS_SANDBOX_FUNCTION_NODE, "function-node", 1},
    {EVS_SANDBOX_FUNCTION_PYTHON, "function-python", 1},
    {EVS_SANDBOX_CAGE_VMM, "cage-vmm", 0},
    {EVS_SANDBOX_CAGE_APP, "cage-app", 0},
};
#define NREGISTRY (sizeof registry / sizeof registry[0])

const char *evs_sandbox_policy_name(evs_sandbox_policy policy) {
  for (size_t i = 0; i < NREGISTRY; i++)
    if (registry[i].policy == policy) return registry[i].name;
  return "unknown";
}

int evs_sandbox_policy_lookup(const char *name, evs_sandbox_policy *ret) {
  for (size_t i = 0; name && i < NREGISTRY; i++)
    if (strcmp(registry[i].name, name) == 0) {
      *ret = registry[i].policy;
      return 0;
    }
  return -ENOENT;
}

int evs_sandbox_policy_self_applied(evs_sandbox_policy policy) {
  for (size_t i = 0; i < NREGISTRY; i++)
    if (registry[i].policy == policy) return registry[i].self_applied;
  return 0;
}

int evs_sandbox_apply(evs_sandbox_policy policy) { return evs_sandbox_apply_ex(policy, 0); }

int evs_sandbox_apply_ex(evs_sandbox_policy policy, unsigned flags) {
  return evs_sandbox_apply_exec(policy, flags, NULL);
}

int evs_sandbox_apply_exec(evs_sandbox_policy policy, unsigned flags, const char *exec_path) {
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) < 0) return -errno;
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) return -errno;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
  scmp_filter_ctx ctx =
      seccomp_init((flags & EVS_SANDBOX_LOG_DENIED) ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(EPERM));
  if (!ctx) return -ENOMEM;
  int r;
  switch (policy) {
    case EVS_SANDBOX_ENCLAVE:
      r = evs__sandbox_enclave_rules(ctx);
      if (r == 0) r = evs__sandbox_kill_rules(ctx);
      break;
    case EVS_SANDBOX_FUNCTION_NODE:
    case EVS_SANDBOX_FUNCTION_PYTHON:
      r = evs__sandbox_function_rules(ctx, policy, exec_path);
      break;
    default: r = -EINVAL; break; /* the worker and fnbox policies have only an exec stage */
  }
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

int evs_sandbox_compile_exec_stage(evs_sandbox_policy policy, void **ret_prog, size_t *ret_len) {
  if (strcmp(evs_sandbox_policy_name(policy), "unknown") == 0) return -EINVAL;
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) return -ENOMEM;
  /* The filter is loaded by evs_sandbox_load, which sets no-new-privs itself. */
  int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
  if (r == 0 && policy == EVS_SANDBOX_FNBOX) {
    r = evs__sandbox_exec_kill_rules(ctx);
    if (r == 0) r = evs__sandbox_fnbox_exec_rules(ctx);
  } else if (r == 0 && (policy == EVS_SANDBOX_CAGE_VMM || policy == EVS_SANDBOX_CAGE_APP)) {
    r = evs__sandbox_exec_kill_rules(ctx);
    if (r == 0)
      r = policy == EVS_SANDBOX_CAGE_VMM ? evs__sandbox_cage_vmm_rules(ctx)
                                         : evs__sandbox_cage_app_rules(ctx);
  } else if (r == 0) {
    r = evs__sandbox_exec_rules(ctx);
  }
  if (r == 0 && policy == EVS_SANDBOX_WORKER) r = evs__sandbox_worker_rules(ctx);
  int fd = -1;
  if (r == 0) {
    fd = memfd_create("evs-seccomp", MFD_CLOEXEC);
    if (fd < 0) r = -errno;
  }
  if (r == 0) r = seccomp_export_bpf(ctx, fd);
  seccomp_release(ctx);
  struct stat sb;
  if (r == 0 && fstat(fd, &sb) < 0) r = -errno;
  void *prog = NULL;
  if (r == 0 && (sb.st_size <= 0 || sb.st_size % sizeof(struct sock_filter) != 0)) r = -EINVAL;
  if (r == 0 && !(prog = malloc((size_t)sb.st_size))) r = -ENOMEM;
  if (r == 0 && pread(fd, prog, (size_t)sb.st_size, 0) != sb.st_size) r = -EIO;
  if (fd >= 0) close(fd);
  if (r < 0) {
    free(prog);
    return r;
  }
  *ret_prog = prog;
  *ret_len = (size_t)sb.st_size;
  return 0;
}

int evs_sandbox_load(const void *prog, size_t len) {
  struct sock_fprog fp = {(unsigned short)(len / sizeof(struct sock_filter)),
                          (struct sock_filter *)prog};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0) < 0) return -errno;
  return 0;
}
