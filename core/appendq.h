/*
 * Stream appends (store_append, store_append_request), written in batches off the loop
 * (appendq.c).
 */
#ifndef EVS_CORE_APPENDQ_H
#define EVS_CORE_APPENDQ_H

#include <stdint.h>

#include "worker.h"

/* Stream appends, written in batches on a libuv work thread (appendq.c). add checks and queues
 * a record; sync writes the queue and waits for the batch in flight (before a query); close
 * writes what is left, after the loop ended and before the store closes. */
typedef struct evs__appendq evs__appendq;
struct evs__store_options;
/* so: the worker's store options (PostgreSQL: the batches get a connection of their own). */
int evs__appendq_init(evs__worker *w, const struct evs__store_options *so);
/* ret_seq NULL: written behind (within APPENDQ_INTERVAL_MS). ret_seq set: somebody waits for
 * this record (a response held for it): a batch starts as soon as no other is in flight (group
 * commit), and *ret_seq receives the record's sequence number for evs__appendq_wait. */
int evs__appendq_add(evs__worker *w, const char *plugin, const char *stream, const char *json,
                     uint64_t *ret_seq);
/* fn(arg, status) runs once on the loop thread, at the top of a loop turn, when the record seq
 * (and every record before it) is in the store (status 0) or was given up (negative: refused
 * by the store, dropped past the queue's bounds, or the queue closed: -ECANCELED). Returns 1
 * when seq is already settled (fn never runs), 0 when fn will run, or a negative errno. A
 * record whose batch failed for a passing reason (-ENOTCONN, -EBUSY) is written again: its
 * waiter waits on. */
typedef void (*evs__appendq_fn)(void *arg, int status);
int evs__appendq_wait(evs__worker *w, uint64_t seq, evs__appendq_fn fn, void *arg);
/* fn(arg, status) runs once on the loop thread when every record queued so far is written
 * (as evs__appendq_wait), the batch starting at once; returns 1 (fn never runs) when nothing
 * waits to be written or the store is away (waiting would last the outage), 0 otherwise. A
 * query goes after it, to read what this worker appended, without writing on the loop. */
int evs__appendq_flush(evs__worker *w, evs__appendq_fn fn, void *arg);
/* 0 while the store takes records; -ENOTCONN while a batch failed for a passing reason and
 * waits to be written again (PostgreSQL unreachable); -ENOTSUP without a store. */
int evs__appendq_ready(evs__worker *w);
/* Batches written so far (tests: group commit), and of them those written on the loop. */
uint64_t evs__appendq_batches(evs__worker *w);
uint64_t evs__appendq_batches_on_loop(evs__worker *w);
/* Writes the queue on the calling thread (the loop has ended: evs__appendq_close). */
void evs__appendq_sync(evs__worker *w);
void evs__appendq_close(evs__worker *w);

#endif
