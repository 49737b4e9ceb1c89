/*
 * The evs_host service table plugins call (host.c): adapters from the ABI to the core
 * modules, the registrations a plugin makes in init, and the hooks that run them.
 */
#ifndef EVS_CORE_HOST_H
#define EVS_CORE_HOST_H

#include "evserver/evs_plugin.h"
#include "plugin.h"
#include "worker.h"

struct evs__hook {
  evs__plugin_rec *plugin;
  evs_phase phase;
  evs_hook_fn fn;
};

/* The table handed to every plugin's init. */
const evs_host *evs__host_table(void);
/* Drops what a plugin registered with the host (event subscriptions, crypto provider, node
 * messages, auxiliary store): after a failed init, and when the plugin is freed. */
void evs__host_forget(evs__plugin_rec *r);
/* Frees the host's caches once every plugin is unloaded. */
void evs__host_done(void);
/* ABI 1.8: the worker starts draining: the event "worker.draining" to subscribed plugins. */
void evs__host_emit_draining(const char *reason);
/* Offer the request to the routes of the given listener roles (ABI 1.7), most specific first;
 * 1 if a route's handler took it. */
int evs__routes_run(evs__worker *w, const char *const *roles, size_t nroles, evs_request *req);
/* Run the hooks of a phase; for ROUTE returns 1 if a plugin took the request. */
int evs__plugins_run_hooks(evs__worker *w, evs_phase phase, evs_request *req);
void evs__request_free_pdata(evs_request *req);

#endif
