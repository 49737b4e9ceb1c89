/*
 * Stream appends (store_append), written behind in batches, off the loop (appendq.c).
 */
#ifndef EVS_CORE_APPENDQ_H
#define EVS_CORE_APPENDQ_H

#include "worker.h"

/* Stream appends, written behind in batches (appendq.c). add checks and queues a record;
 * sync writes the queue and waits for the batch in flight (before a query); close writes
 * what is left, after the loop ended and before the store closes. */
typedef struct evs__appendq evs__appendq;
struct evs__store_options;
/* so: the worker's store options (PostgreSQL: the batches get a connection of their own). */
int evs__appendq_init(evs__worker *w, const struct evs__store_options *so);
int evs__appendq_add(evs__worker *w, const char *plugin, const char *stream, const char *json);
void evs__appendq_sync(evs__worker *w);
void evs__appendq_close(evs__worker *w);

#endif
