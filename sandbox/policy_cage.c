/*
 * The Cages policies (docs/cages.md). Both are exec stages on a default-allow filter, with the
 * kills every helper gets (policy_exec.c).
 *   - cage-vmm: evs-cage-vmm and everything under it (qemu, or the sandbox's evs-cage-init and
 *     the app). It must build the sandbox (unshare, mount, pivot_root; init chroots into the
 *     app's root) and init serves loopback sockets in the cage's own network namespace, so
 *     inet sockets stay, but never raw or packet ones; setns, keyrings, clock setting, swap,
 *     reboot and the new mount API are refused.
 *   - cage-app: the app under the sandbox backend, loaded by evs-cage-init before its exec (the
 *     program arrives compiled on fd 4: init links no libseccomp). As the above, and also no
 *     mount, unshare, pivot_root or chroot: the app may fork and serve TCP, nothing more.
 */
#include <errno.h>
#include <sys/socket.h>

#include "policy.h"

static int socket_rules(scmp_filter_ctx ctx) {
  /* AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (glibc asks the kernel for addresses), and no
   * raw sockets in them (SOCK_RAW, SOCK_PACKET: types 3 and 10, under the flag bits). */
  int r;
  for (int call = 0; call < 2; call++) {
    int nr = call ? SCMP_SYS(socketpair) : SCMP_SYS(socket);
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1, SCMP_A0(SCMP_CMP_GT, AF_NETLINK, 0));
    if (r < 0) return r;
    for (int fam = AF_INET + 1; fam < AF_NETLINK; fam++) {
      if (fam == AF_INET6) continue;
      r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1, SCMP_A0(SCMP_CMP_EQ, fam, 0));
      if (r < 0) return r;
    }
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1,
                         SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW));
    if (r < 0) return r;
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1,
                         SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_PACKET));
    if (r < 0) return r;
  }
  return 0;
}

static int refuse(scmp_filter_ctx ctx, const int *calls, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), calls[i], 0);
    if (r < 0) return r;
  }
  return 0;
}

int evs__sandbox_cage_vmm_rules(scmp_filter_ctx ctx) {
  static const int refused[] = {
      SCMP_SYS(setns),        SCMP_SYS(keyctl),        SCMP_SYS(add_key),
      SCMP_SYS(request_key),  SCMP_SYS(swapon),        SCMP_SYS(swapoff),
      SCMP_SYS(reboot),       SCMP_SYS(settimeofday),  SCMP_SYS(clock_settime),
      SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex),     SCMP_SYS(acct),
      SCMP_SYS(quotactl),     SCMP_SYS(fanotify_init), SCMP_SYS(name_to_handle_at),
      SCMP_SYS(syslog),       SCMP_SYS(fsopen),        SCMP_SYS(fsmount),
      SCMP_SYS(move_mount),   SCMP_SYS(open_tree),
  };
  int r = refuse(ctx, refused, sizeof refused / sizeof refused[0]);
  return r < 0 ? r : socket_rules(ctx);
}

int evs__sandbox_cage_app_rules(scmp_filter_ctx ctx) {
  int r = evs__sandbox_cage_vmm_rules(ctx);
  if (r < 0) return r;
  static const int refused[] = {
      SCMP_SYS(mount),  SCMP_SYS(umount2),     SCMP_SYS(pivot_root), SCMP_SYS(chroot),
      SCMP_SYS(unshare), SCMP_SYS(userfaultfd), SCMP_SYS(sethostname), SCMP_SYS(setdomainname),
  };
  return refuse(ctx, refused, sizeof refused / sizeof refused[0]);
}
