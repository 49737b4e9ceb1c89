/*
 * Proxying a client request to an upstream (proxy.c): the evs_host proxy call and the calls a
 * plugin's filters and response_head make while a request is proxied. Loop thread only.
 */
#ifndef EVS_CORE_PROXY_H
#define EVS_CORE_PROXY_H

#include "request.h"

int evs__proxy_start(evs_request *req, const evs_upstream *up, evs_body_filter_fn req_filter,
                     evs_body_filter_fn resp_filter, void *filter_arg, evs__plugin_rec *p);
int evs__proxy_filter_emit(evs_request *req, const uint8_t *data, size_t len);
/* Ends a response held by a response filter (EVS_FILTER_HOLD). */
int evs__proxy_filter_end(evs_request *req, int status);
/* A header of the upstream response being proxied, once its head arrived. */
int evs__proxy_response_header(evs_request *req, const char *name, evs_header *ret);
/* ABI 1.4: from evs_upstream.response_head: drops fields from the head the client gets;
 * returns how many, or -EINVAL outside that callback. */
int evs__proxy_response_remove_header(evs_request *req, const char *name);

#endif
