/*
 * The inner sandbox layer: seccomp filters per process role. The systemd unit's
 * SystemCallFilter= is the outer layer for the whole service; these filters narrow one process
 * further. One file per policy (policy_*.c); this header is the whole API.
 *
 * Policies have names (the registry below), which is how plugins choose one for a helper
 * process (evs_helper_spec.sandbox in the plugin ABI). A policy has up to two stages:
 *   - the exec stage, which the host loads in a helper's child process just before exec, so it
 *     must let that exec and the program's start-up through;
 *   - the final stage, which a program that links this library applies itself once it has
 *     opened what it needs (evs_sandbox_apply): the enclave does, since its tightest filter
 *     forbids exec and open.
 * Filters stack: a process under both gets the intersection. Neither is ever lifted.
 *
 * Used by the enclave (the key-holding process: the tightest filter), by the host for helper
 * processes (core/helper.c), and later by function workers.
 */
#ifndef EVS_SANDBOX_H
#define EVS_SANDBOX_H

#include <stddef.h>

typedef enum evs_sandbox_policy {
  /* Key holder: I/O on already-open descriptors, memory, time, randomness, exit. No open, no
   * socket creation, no exec, no ptrace, no new processes. Its exec stage (loaded by the host
   * before exec) already kills ptrace and the other calls only an attacker makes, and refuses
   * sockets other than unix ones, mounts and namespaces. */
  EVS_SANDBOX_ENCLAVE = 1,
  /* Untrusted code (function workers, cage workloads): its one stage is loaded before exec, so
   * the program itself needs no change. Threads but no new processes; unix sockets only; no
   * mounts, namespaces, ptrace, module loading, bpf, perf, keyrings, clock setting. Calls that
   * only an attacker makes kill the process (SIGSYS); the rest fail with EPERM. */
  EVS_SANDBOX_WORKER = 2,
  /* evs-fnbox, the builder of a function box (sandbox/fnbox.c): its exec stage kills what the
   * worker's does but lets the box's set-up through (unshare, mount, pivot_root, fork). The
   * final stage is the runtime's, below, which evs-fnbox loads itself before its last exec. */
  EVS_SANDBOX_FNBOX = 3,
  /* The interpreter of a function box (node 20, python 3.11): deny by default (EPERM), an
   * allowlist of what the runtime needs to serve runs; threads but no new processes, unix
   * sockets only. One execve (evs_sandbox_apply_exec: the interpreter's), then none. */
  EVS_SANDBOX_FUNCTION_NODE = 4,
  EVS_SANDBOX_FUNCTION_PYTHON = 5,
  /* evs-cage-vmm and what runs under it (qemu; the sandbox's evs-cage-init and app): an exec
   * stage with the kills above that lets the sandbox's set-up through (unshare, mount,
   * pivot_root, chroot) and inet sockets (the cage's own loopback), never raw or packet ones. */
  EVS_SANDBOX_CAGE_VMM = 6,
  /* A cage's app under the sandbox backend: cage-vmm's, and no mount, unshare, pivot_root or
   * chroot. Compiled by evs-cage-vmm, loaded by evs-cage-init before the app's exec. */
  EVS_SANDBOX_CAGE_APP = 7,
} evs_sandbox_policy;

/* evs_sandbox_apply_ex flags. LOG_DENIED: calls the policy would refuse with EPERM are allowed
 * and logged by the kernel (SECCOMP_RET_LOG) instead, to find what a runtime needs; the deadly
 * ones still kill. Never in production. */
#define EVS_SANDBOX_LOG_DENIED 1u

/*
 * Apply a policy's final stage to the calling thread and every thread it creates afterwards:
 * sets PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE 0 and RLIMIT_CORE 0 (no core dumps of secrets), then
 * loads the seccomp filter. Forbidden system calls fail with EPERM (so a library probing for an
 * optional feature degrades instead of dying); a few that can only mean compromise (execve,
 * ptrace, process_vm_*) kill the process with SIGSYS. Irreversible. Returns 0 or a negative
 * errno.
 */
int evs_sandbox_apply(evs_sandbox_policy policy);
/* The same, with EVS_SANDBOX_* flags. */
int evs_sandbox_apply_ex(evs_sandbox_policy policy, unsigned flags);

/* For a policy applied just before an exec (the function policies): the filter lets exactly
 * one execve through, the one whose path argument is this very pointer (exec_path, which the
 * caller then passes to execve unchanged); any other execve kills the process. After the exec
 * no such pointer exists in the new program's view, so it can exec nothing. */
int evs_sandbox_apply_exec(evs_sandbox_policy policy, unsigned flags, const char *exec_path);

/* Human-readable name of a policy, for logs; also its name in the registry. */
const char *evs_sandbox_policy_name(evs_sandbox_policy policy);

/* The policy named name ("enclave", "worker", "fnbox", "function-node", "function-python",
 * "cage-vmm", "cage-app"): 0
 * and *ret, or -ENOENT. */
int evs_sandbox_policy_lookup(const char *name, evs_sandbox_policy *ret);

/* Whether a policy's final stage is applied by the program itself (after exec, linking this
 * library) rather than by the exec stage. */
int evs_sandbox_policy_self_applied(evs_sandbox_policy policy);

/*
 * Compiles a policy's exec stage into a classic BPF program (an array of struct sock_filter,
 * *ret_len bytes, malloc'd: the caller frees it). Compile in the parent, load in the child with
 * evs_sandbox_load: libseccomp allocates, which a child forked from a threaded process must not.
 * Returns 0 or a negative errno.
 */
int evs_sandbox_compile_exec_stage(evs_sandbox_policy policy, void **ret_prog, size_t *ret_len);

/* Loads a program from evs_sandbox_compile_exec_stage into the calling process, after setting
 * PR_SET_NO_NEW_PRIVS. Async-signal-safe (two prctl calls): for a child between fork and exec.
 * Returns 0 or a negative errno. */
int evs_sandbox_load(const void *prog, size_t len);

#endif
