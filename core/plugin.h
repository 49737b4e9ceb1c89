/*
 * The plugin loader (plugin.c): finds plugins, checks their descriptors and configuration
 * before any plugin code runs, loads them into a worker and unloads them.
 */
#ifndef EVS_CORE_PLUGIN_H
#define EVS_CORE_PLUGIN_H

#include "evserver/evs_plugin.h"
#include "worker.h"

struct evs__plugin_rec {
  char *file;
  char *name;
  const evs_plugin_descriptor *desc;
  void *handle;              /* lt_dlhandle */
  void *state;
  const evs__conf_section *section;
  int loaded;
  char *reason;              /* why it was rejected */
  evs_crypto_provider_fn crypto;
  evs_crypto_provider crypto2; /* register_crypto_provider2 (size 0: none) */
  struct evs__subscription *subs;
  int in_init;
  evs_node_msg_fn node_fn;   /* node_subscribe */
  evs__store *aux_store;     /* aux_store_open */
};

/* Scan the plugins directory and check each plugin's descriptor and configuration section,
 * without running plugin code. Rejections are logged (one line each) and kept in *ret with
 * loaded == 0. Returns the number of plugins found, or -1 on a fatal error (unreadable dir). */
int evs__plugins_scan(const evs__settings *s, evs__plugin_rec **ret, size_t *ret_n);
/* In a worker: scan, then init each acceptable plugin. */
int evs__plugins_load(evs__worker *w);
void evs__plugins_unload(evs__worker *w);
void evs__plugins_free(evs__plugin_rec *p, size_t n);
/* A configuration section mentions a plugin that is not in plugins.d: for `-t`. */
int evs__plugins_check_sections(const evs__settings *s, const evs__plugin_rec *p, size_t n,
                                char *err, size_t errlen);

#endif
