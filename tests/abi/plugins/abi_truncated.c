/*
 * abi-truncated: a descriptor shorter than the ABI 1.0 one: only the fixed head (magic,
 * version, size) is there. The host must read nothing beyond `size` and reject it.
 */
#include <stdint.h>

#include "evserver/evs_plugin.h"

/* The head every descriptor version shares, and nothing else: the object really is this short,
 * so a host that reads past `size` would read whatever the linker put next. */
struct truncated_descriptor {
  uint32_t magic;
  uint16_t abi_major;
  uint16_t abi_minor;
  uint32_t size;
};

__attribute__((visibility("default"))) const struct truncated_descriptor evs_plugin_entry = {
    EVS_PLUGIN_MAGIC, EVS_ABI_MAJOR, EVS_ABI_MINOR, sizeof(struct truncated_descriptor)};
