/* Internal: the rule sets of each policy (one file each), added to a default-deny filter. */
#ifndef EVS_SANDBOX_POLICY_H
#define EVS_SANDBOX_POLICY_H

#include <seccomp.h>

int evs__sandbox_enclave_rules(scmp_filter_ctx ctx);
int evs__sandbox_kill_rules(scmp_filter_ctx ctx);

#endif
