/*
 * abi-no-descriptor: a valid shared object without the `evs_plugin_entry` symbol, like a library
 * copied into plugins.d by mistake. The host must say what it looked for.
 */
#include "evserver/evs_plugin.h"

__attribute__((visibility("default"))) int abi_no_descriptor_answer(void);
__attribute__((visibility("default"))) int abi_no_descriptor_answer(void) { return 42; }
