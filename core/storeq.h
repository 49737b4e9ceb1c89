/*
 * The worker's store lane (storeq.c): key-value store calls run on a thread of their own, in
 * the order they were made, and their results come back to the loop.
 */
#ifndef EVS_CORE_STOREQ_H
#define EVS_CORE_STOREQ_H

#include "worker.h"

/* One call. work runs on the lane's thread (store calls only: no loop, no plugin code); done
 * runs afterwards on the loop thread, at the top of a loop turn, and owns the job then. Jobs
 * run one at a time, first in first out. */
typedef struct evs__storeq_job {
  void (*work)(struct evs__storeq_job *j);
  void (*done)(struct evs__storeq_job *j);
  void (*release)(struct evs__storeq_job *j); /* frees it unanswered (evs__storeq_close) */
  struct evs__storeq_job *next;
} evs__storeq_job;

typedef struct evs__storeq evs__storeq;
int evs__storeq_init(evs__worker *w);
/* Queue a job; 0, or -ENOTSUP without a lane (the caller then does the work itself). */
int evs__storeq_submit(evs__worker *w, evs__storeq_job *j);
/* Wait until every job queued so far has run its work: a synchronous call made on the loop
 * after this sees their effects, in order. */
void evs__storeq_drain(evs__worker *w);
/* When the loop has ended (before its handles are closed): finish the queued work and stop
 * the thread; later submits are refused (-ENOTSUP). */
void evs__storeq_stop(evs__worker *w);
/* After the loop is closed: stop if not yet, release the jobs whose done could not run any
 * more, free the lane. */
void evs__storeq_close(evs__worker *w);

#endif
