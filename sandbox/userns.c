/*
 * userns: id maps, loopback and capabilities for the namespace sandboxes (userns.h). Built
 * into evs-fnbox, evs-cage-vmm and the static evs-cage-init, so libc only.
 */
#include "userns.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int evs__write_file(const char *path, const char *s) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = write(fd, s, strlen(s));
  int e = n < 0 ? -errno : 0;
  close(fd);
  return e;
}

int evs__map_ids(uid_t inner_uid, uid_t uid, gid_t inner_gid, gid_t gid) {
  char map[64];
  int r = evs__write_file("/proc/self/setgroups", "deny");
  snprintf(map, sizeof map, "%u %u 1\n", (unsigned)inner_uid, (unsigned)uid);
  if (r == 0) r = evs__write_file("/proc/self/uid_map", map);
  snprintf(map, sizeof map, "%u %u 1\n", (unsigned)inner_gid, (unsigned)gid);
  if (r == 0) r = evs__write_file("/proc/self/gid_map", map);
  return r;
}

int evs__map_self(uid_t uid, gid_t gid) { return evs__map_ids(0, uid, 0, gid); }

int evs__map_stranger(pid_t pid, unsigned id) { return evs__map_stranger_range(pid, id, 1); }

int evs__map_stranger_range(pid_t pid, unsigned base, unsigned count) {
  char path[64], map[64];
  snprintf(map, sizeof map, "0 %u %u\n", base, count);
  snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
  int r = evs__write_file(path, map);
  snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
  if (r == 0) r = evs__write_file(path, map);
  return r;
}

int evs__become_ns_root(void) {
  if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) return -errno;
  return 0;
}

void evs__loopback_up(void) {
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0); /* any family reaches the ioctl */
  if (s < 0) return;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
}

int evs__drop_caps(void) {
  if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_SETUID_FIXUP |
                                   SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_NOROOT |
                                   SECBIT_NOROOT_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                                   SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
            0, 0, 0) < 0 &&
      geteuid() == 0) /* (a uid other than 0 regains nothing at exec under no-new-privs) */
    return -errno;
  for (int c = 0; c <= 63; c++)
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno == EINVAL) break;
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data) < 0) return -errno;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
  return 0;
}
