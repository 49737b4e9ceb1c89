/*
 * The inner sandbox layer: seccomp filters per process role. The systemd unit's
 * SystemCallFilter= is the outer layer for the whole service; these filters narrow one process
 * further, after it has opened everything it needs. One file per policy (policy_*.c); this
 * header is the whole API.
 *
 * Used by the enclave (the key-holding process: the tightest filter) and, later, by function
 * workers. Never by core/: the host itself is not sandboxed by this layer.
 */
#ifndef EVS_SANDBOX_H
#define EVS_SANDBOX_H

typedef enum evs_sandbox_policy {
  /* Key holder: I/O on already-open descriptors, memory, time, randomness, exit. No open, no
   * socket creation, no exec, no ptrace, no new processes. */
  EVS_SANDBOX_ENCLAVE = 1,
} evs_sandbox_policy;

/*
 * Apply a policy to the calling thread and every thread it creates afterwards: sets
 * PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE 0 and RLIMIT_CORE 0 (no core dumps of secrets), then
 * loads the seccomp filter. Forbidden system calls fail with EPERM (so a library probing for an
 * optional feature degrades instead of dying); a few that can only mean compromise (execve,
 * ptrace, process_vm_*) kill the process with SIGSYS. Irreversible. Returns 0 or a negative
 * errno.
 */
int evs_sandbox_apply(evs_sandbox_policy policy);

/* Human-readable name of a policy, for logs. */
const char *evs_sandbox_policy_name(evs_sandbox_policy policy);

#endif
