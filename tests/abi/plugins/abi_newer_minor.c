/*
 * abi-newer-minor: built against a newer minor ABI than the host's. It may call services the
 * host's table does not have, so the host must reject it.
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
    EVS_PLUGIN_MAGIC, EVS_ABI_MAJOR, EVS_ABI_MINOR + 1, sizeof(evs_plugin_descriptor),
    "abi-newer-minor", "0.0.1", "newer minor ABI", NULL, init, NULL};
