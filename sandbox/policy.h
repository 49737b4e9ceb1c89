/* Internal: the rule sets of each policy (one file each), added to a filter. */
#ifndef EVS_SANDBOX_POLICY_H
#define EVS_SANDBOX_POLICY_H

#include <seccomp.h>

#include "evs_sandbox.h"

int evs__sandbox_enclave_rules(scmp_filter_ctx ctx);
int evs__sandbox_kill_rules(scmp_filter_ctx ctx);
/* For a default-allow filter loaded before exec: what no helper may do, exec stage of every
 * policy (kills and refusals that still let the exec and the program's start-up through). */
int evs__sandbox_exec_rules(scmp_filter_ctx ctx);
/* Only the kills of the above: the fnbox exec stage adds its own refusals (it must mount). */
int evs__sandbox_exec_kill_rules(scmp_filter_ctx ctx);
int evs__sandbox_fnbox_exec_rules(scmp_filter_ctx ctx);
/* The final stage of function-node and function-python (a deny-by-default filter). */
int evs__sandbox_function_rules(scmp_filter_ctx ctx, evs_sandbox_policy policy,
                                const char *exec_path);
int evs__sandbox_worker_rules(scmp_filter_ctx ctx);
/* The Cages exec stages (policy_cage.c); the kills come from evs__sandbox_exec_kill_rules. */
int evs__sandbox_cage_vmm_rules(scmp_filter_ctx ctx);
int evs__sandbox_cage_app_rules(scmp_filter_ctx ctx);

#endif
