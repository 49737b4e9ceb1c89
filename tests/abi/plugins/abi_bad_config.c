/*
 * abi-bad-config: a well-formed plugin with a config items table. It is built twice, as
 * abi-bad-key and abi-bad-value (PLUGIN_NAME), and the test's configuration gives each a section
 * the host must refuse: an unknown key, and a value outside [min, max]. The host validates the
 * section against the table without running plugin code, so init must never run.
 */
#include <errno.h>

#include "evserver/evs_plugin.h"

#ifndef PLUGIN_NAME
#error "PLUGIN_NAME must be defined by the build"
#endif

static const evs_config_item items[] = {
    {"limit", EVS_CONFIG_INT, "10", 1, 100, 0, "a number between 1 and 100"},
    {"window", EVS_CONFIG_DURATION, "1s", 0, 0, 0, "a duration"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  (void)ret_state;
  host->log(plugin, NULL, EVS_LOG_ERROR, "init ran although the configuration was invalid");
  return -EINVAL;
}

EVS_PLUGIN_DEFINE(PLUGIN_NAME, "0.0.1", "config items table, invalid section", items, init, NULL);
