/*
 * userns: what the sandboxes built from namespaces share (evs-fnbox, evs-cage-vmm and
 * evs-cage-init): the id maps of a new user namespace, the loopback, dropping capabilities.
 * Plain libc, no allocation, no logging: callers report errors (negative errno) their way.
 *
 * Started by root, a sandbox's uid 0 is not the host's root but a uid nobody else has: what
 * checks a uid rather than a capability (global sysctls, signals, ptrace of same-uid
 * processes, files owned by root) then finds a stranger. Each kind of sandbox has its own, so
 * that a function box and a cage are strangers to each other too. Started by anyone else, a
 * sandbox's uid 0 is that user (an unprivileged writer may map only its own ids).
 */
#ifndef EVS_USERNS_H
#define EVS_USERNS_H

#include <sys/types.h>

#ifndef EVS_FNBOX_UID
#define EVS_FNBOX_UID 2147483646u /* a function box's uid 0 when evs-fnbox runs as root */
#endif
/* A sandboxed cage run by root has EVS_CAGE_IDS ids (an image's non-root USER needs more than
 * one): its uid and gid n are EVS_CAGE_UID_BASE + n on the host, a range that no one else uses
 * (below the function box's uid; set another at build time, -DEVS_CAGE_UID_BASE=, where the
 * machine's users or /etc/subuid ranges overlap it). */
#ifndef EVS_CAGE_UID_BASE
#define EVS_CAGE_UID_BASE 2147352576u /* 0x7ffe0000 */
#endif
#define EVS_CAGE_IDS 65536u
#define EVS_CAGE_UID EVS_CAGE_UID_BASE /* the cage's uid 0 on the host */

/* Writes s to an existing file (procfs, sysfs). 0 or -errno. */
int evs__write_file(const char *path, const char *s);

/* After unshare(CLONE_NEWUSER) by an unprivileged process: setgroups denied, then its own uid
 * and gid (the only ids it may map) as inner_uid and inner_gid inside. 0 or -errno. */
int evs__map_ids(uid_t inner_uid, uid_t uid, gid_t inner_gid, gid_t gid);

/* evs__map_ids with 0 inside. */
int evs__map_self(uid_t uid, gid_t gid);

/* Root's part for a stranger: maps uid and gid 0 of pid's new user namespace to id (pid has
 * unshared; the caller, outside it, has CAP_SETUID and CAP_SETGID). 0 or -errno. */
int evs__map_stranger(pid_t pid, unsigned id);

/* The same for count ids: 0..count-1 of pid's namespace are base..base+count-1 outside, uids
 * and gids alike. 0 or -errno. */
int evs__map_stranger_range(pid_t pid, unsigned base, unsigned count);

/* In a namespace mapped by evs__map_stranger, the process that still has the host's root
 * credentials becomes uid and gid 0 there (the stranger's id outside), with no supplementary
 * groups (root's would stay the host's). It keeps its capabilities in the namespace; the
 * parent-death signal is cleared by the change of uid. 0 or -errno. */
int evs__become_ns_root(void);

/* The net namespace's loopback up (best effort). */
void evs__loopback_up(void);

/* Every capability goes for good (bounding set, ambient, securebits locked so that exec as
 * uid 0 regains nothing), then no-new-privs. 0 or -errno. */
int evs__drop_caps(void);

#endif
