/*
 * Helper processes (ABI 1.7 helper_*; core/helper.c): programs the host runs for plugins on a
 * socketpair, sandboxed (a named policy from sandbox/, namespaces, rlimits, cgroup v2 limits),
 * restarted with backoff, ended with the master, and optionally kept per worker rank so that
 * they outlive a worker. Worker-side only: the master just holds the kept descriptors and reaps.
 */
#ifndef EVS_CORE_HELPER_H
#define EVS_CORE_HELPER_H

#include <stddef.h>
#include <stdint.h>

#include "evserver/evs_plugin.h"

struct evs__plugin_rec;

#define EVS__HELPER_RESTART_MIN_MS 200
#define EVS__HELPER_RESTART_MAX_MS 10000
#define EVS__HELPER_KEPT_MAX 40 /* length of evs_helper_spec.kept */

/* The delay before the next start after `failures` consecutive short-lived runs (0: the first
 * restart): min doubled per failure, capped at max. Pure. */
uint64_t evs__helper_backoff(uint64_t min_ms, uint64_t max_ms, unsigned failures);

/* Checks a spec as a plugin passed it (only the members its size covers are read): returns 0,
 * or -EINVAL with the reason in err (never a value from argv or envp, which may be secret).
 * Pure apart from the policy registry. */
int evs__helper_spec_check(const evs_helper_spec *spec, char *err, size_t errlen);

/* ABI entry points (plugin.c wires them into the host table). */
int evs__helper_spawn(struct evs__plugin_rec *p, const evs_helper_spec *spec,
                      evs_helper_event_fn cb, void *arg, evs_helper **ret);
int evs__helper_fd(evs_helper *h);
int evs__helper_pid(evs_helper *h);
int evs__helper_kill(evs_helper *h, int sig);
void evs__helper_stop(evs_helper *h);

/* After a plugin's fini, or its failed init: no more callbacks into it. Kept helpers stay for
 * the rank's next worker (only the descriptors this worker holds are closed); the others are
 * stopped. */
void evs__helpers_release(struct evs__plugin_rec *p);

#endif
