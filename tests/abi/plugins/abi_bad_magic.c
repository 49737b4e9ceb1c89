/*
 * abi-bad-magic: a descriptor whose magic is wrong, as a corrupt file or a foreign plugin
 * format would present. The host must reject it before calling any of its code.
 */
#include <errno.h>

#include "evserver/evs_plugin.h"

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  (void)host;
  (void)plugin;
  (void)ret_state;
  return -EINVAL; /* never reached: the magic check comes first */
}

__attribute__((visibility("default"))) const evs_plugin_descriptor evs_plugin_entry = {
    0x4b4c4f47u, EVS_ABI_MAJOR, EVS_ABI_MINOR, sizeof(evs_plugin_descriptor),
    "abi-bad-magic", "0.0.1", "wrong magic", NULL, init, NULL};
