/*
 * The admin endpoints, served on the admin socket (admin.c).
 */
#ifndef EVS_CORE_ADMIN_H
#define EVS_CORE_ADMIN_H

#include "request.h"

/* Serve a request that arrived on the admin socket. */
void evs__admin_handle(evs__worker *w, evs_request *req);

#endif
