/*
 * sync.h: the two background threads that wait on the disk for the loop.
 *
 * The commit thread makes journal writes durable (group commit): the loop
 * hands it the journal descriptors written in this iteration with a new
 * ticket; the thread takes every submission made meanwhile, syncs each
 * descriptor once and publishes the highest ticket it covered.  The loop
 * releases every reply parked at or below it.  One fsync serves every
 * writer of every queue that arrived meanwhile.
 *
 * The background thread runs the slow jobs the journal hands it, one at a
 * time: checkpoints (syncfs of the data directory's file system, so that
 * journal files behind them can be removed) and the zero-filling of the
 * next journal file.  It never delays a commit.
 *
 * Descriptors handed over are borrowed: the loop keeps them open until the
 * ticket that covers them is durable (sync_durable()).
 */

#ifndef MEMQD_SYNC_H
#define MEMQD_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "prom.h"

/* durable: highest ticket made durable; failed: a sync failed (every
 * ticket not yet durable never will be) */
typedef void (*sync_done_pt)(uint64_t durable, int failed);

/* A background job: run() in the background thread, then done(job, rc)
 * in the loop.  The job is the caller's; it is busy from sync_job() until
 * done() is called. */
typedef struct sync_job_s  sync_job_t;

struct sync_job_s {
    int          (*run)(sync_job_t *job);
    void         (*done)(sync_job_t *job, int rc);
    int            busy;
    int            rc;
    int            finished;      /* run() is over, done() not yet called */
    sync_job_t    *next;          /* (sync.c) queue of jobs */
};

int sync_init(sync_done_pt done);

/* The ticket the next submission will get: replies parked with it wait
 * for the next commit. */
uint64_t sync_next_ticket(void);

/* Highest ticket durable so far, as the loop last saw it. */
uint64_t sync_durable(void);

/*
 * Submits fds[0..n) for the next commit (full: fsync with metadata and,
 * when dirfd != -1, fsync of that directory too).  Returns the ticket, or
 * the last one when n is 0.
 *
 * quiet: the caller sees no other writer (one record in this commit and
 * in the one before).  When the commit thread is idle too, the commit is
 * made here, in the loop, as Redis does under appendfsync always: the
 * reply then goes out without two thread wake-ups (measured: 50-70 us a
 * durable set on a busy 2-core machine, docs/memqd.md).  Under load the
 * thread keeps the loop reading while the disk works.
 */
uint64_t sync_submit(const int *fds, size_t n, int full, int dirfd,
    int quiet);

/* Queues a background job: 0, or -1 when it is busy already. */
int sync_job(sync_job_t *job);

/* A copy of the histogram of commit times: every fsync/fdatasync of one
 * commit, from the commit thread's start to its end (metrics.c). */
void sync_fsync_hist(prom_hist_t *out);

/* Waits for every submitted commit and job, stops the threads. */
void sync_shutdown(void);

#endif /* MEMQD_SYNC_H */
