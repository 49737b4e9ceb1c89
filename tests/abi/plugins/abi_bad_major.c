/*
 * abi-bad-major: built against a future major ABI. Majors break compatibility, so the host must
 * reject it, however its other fields look.
 */
#include <errno.h>

#include "evserver/evs_plugin.h"

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  (void)host;
  (void)plugin;
  (void)ret_state;
  return -EINVAL;
}

__attribute__((visibility("default"))) const evs_plugin_descriptor evs_plugin_entry = {
    EVS_PLUGIN_MAGIC, EVS_ABI_MAJOR + 1, 0, sizeof(evs_plugin_descriptor),
    "abi-bad-major", "0.0.1", "wrong major ABI", NULL, init, NULL};
