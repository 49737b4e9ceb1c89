/*
 * request_guard: the trust-boundary checks both relays apply to a request's head, one
 * implementation (plugins/relay-inbound/README.md, "The trust boundary"):
 *   - encrypted data (ev: strings, %EVENC) in the request target or any header, in every
 *     spelling ev_guard.h knows;
 *   - a request body the relay could not read: a Content-Encoding other than identity;
 * and, for a relay that rewrites the response, the Accept-Encoding it forwards.
 * Like decrypt_body.c this file reads the request through the plugin ABI (abi/ only); it keeps
 * no state and never logs or answers: the caller answers with its relay's documented error.
 */
#ifndef EVS_RELAY_REQUEST_GUARD_H
#define EVS_RELAY_REQUEST_GUARD_H

#include "evserver/evs_plugin.h"

/* 1 if the request target or any header field (name or value) carries encrypted data, else 0. */
int evs__relay_head_carries_ev_data(const evs_host *h, evs_request *req);

/* 1 if any Content-Encoding field of the request is other than `identity` (its body could be
 * neither rewritten nor checked for encrypted data), else 0. Every field counts, not only the
 * first. */
int evs__relay_body_encoded(const evs_host *h, evs_request *req);

/* Sets the request's Accept-Encoding to the client's (all its fields) narrowed to the codings
 * content_decode.c decodes, so that a destination whose response the relay rewrites has no
 * reason to send one it could not read. */
void evs__relay_narrow_accept_encoding(const evs_host *h, evs_request *req);

#endif
