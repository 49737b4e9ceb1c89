/*
 * The exec stage every helper process gets (loaded by the host between fork and exec, on a
 * default-allow filter): what no helper may ever do, whatever its policy, while still letting
 * its exec and its program's start-up (the dynamic loader, sanitizer runtimes) through.
 * Calls that only an attacker makes kill the process (SIGSYS); the rest fail with EPERM: a
 * network socket (unix sockets only), mounts, new namespaces or joining others, keyrings,
 * clock setting, swap, reboot, accounting.
 */
#include <errno.h>
#include <sys/socket.h>

#include "policy.h"

int evs__sandbox_exec_kill_rules(scmp_filter_ctx ctx) {
  static const int deadly[] = {
      SCMP_SYS(ptrace),       SCMP_SYS(process_vm_readv), SCMP_SYS(process_vm_writev),
      SCMP_SYS(kexec_load),   SCMP_SYS(kexec_file_load),  SCMP_SYS(init_module),
      SCMP_SYS(finit_module), SCMP_SYS(delete_module),    SCMP_SYS(bpf),
      SCMP_SYS(perf_event_open), SCMP_SYS(iopl),          SCMP_SYS(ioperm),
      SCMP_SYS(open_by_handle_at),
  };
  int r;
  for (size_t i = 0; i < sizeof deadly / sizeof deadly[0]; i++)
    if ((r = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, deadly[i], 0)) < 0) return r;
  return 0;
}

int evs__sandbox_exec_rules(scmp_filter_ctx ctx) {
  int r = evs__sandbox_exec_kill_rules(ctx);
  if (r < 0) return r;
  static const int refused[] = {
      SCMP_SYS(mount),      SCMP_SYS(umount2),  SCMP_SYS(pivot_root), SCMP_SYS(chroot),
      SCMP_SYS(setns),      SCMP_SYS(unshare),  SCMP_SYS(keyctl),     SCMP_SYS(add_key),
      SCMP_SYS(request_key), SCMP_SYS(swapon),  SCMP_SYS(swapoff),    SCMP_SYS(reboot),
      SCMP_SYS(settimeofday), SCMP_SYS(clock_settime), SCMP_SYS(clock_adjtime),
      SCMP_SYS(adjtimex),   SCMP_SYS(acct),     SCMP_SYS(quotactl),   SCMP_SYS(userfaultfd),
      SCMP_SYS(fanotify_init), SCMP_SYS(name_to_handle_at), SCMP_SYS(syslog),
      SCMP_SYS(fsopen),     SCMP_SYS(fsmount),  SCMP_SYS(move_mount), SCMP_SYS(open_tree),
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if ((r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), refused[i], 0)) < 0) return r;
  /* Sockets: unix ones only (the helper talks over the socketpair it was given). */
  r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1,
                       SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
  if (r < 0) return r;
  return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socketpair), 1,
                          SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
}
