/*
 * The plugins' HTTP client (client.c): the evs_host http_request call. Loop thread only.
 */
#ifndef EVS_CORE_CLIENT_H
#define EVS_CORE_CLIENT_H

#include "evserver/evs_plugin.h"
#include "worker.h"

/* Sends r (copied: nothing of it is kept after the call) on a pooled connection and calls cb
 * once with the status and the body, or a negative error. Returns 0, or a negative error, and
 * then cb never runs. */
int evs__client_request(evs__plugin_rec *p, const evs_client_request *creq, evs_client_cb cb,
                        void *arg);

#endif
