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
 * The checkpoint thread makes the queue files durable (syncfs of the data
 * directory's file system) so that journal files behind a checkpoint can
 * be removed; it never delays a commit.
 *
 * Descriptors handed over are borrowed: the loop keeps them open until the
 * ticket that covers them is durable (sync_durable()).
 */

#ifndef MEMQD_SYNC_H
#define MEMQD_SYNC_H

#include <stddef.h>
#include <stdint.h>

/* durable: highest ticket made durable; failed: a sync failed (every
 * ticket not yet durable never will be) */
typedef void (*sync_done_pt)(uint64_t durable, int failed);

/* token: as given to sync_checkpoint(); failed: the syncfs failed */
typedef void (*sync_ckpt_pt)(uint64_t token, int failed);

int sync_init(sync_done_pt done, sync_ckpt_pt ckpt_done);

/* The ticket the next submission will get: replies parked with it wait
 * for the next commit. */
uint64_t sync_next_ticket(void);

/* Highest ticket durable so far, as the loop last saw it. */
uint64_t sync_durable(void);

/*
 * Submits fds[0..n) for the next commit (full: fsync with metadata and,
 * when dirfd != -1, fsync of that directory too).  Returns the ticket, or
 * the last one when n is 0.
 */
uint64_t sync_submit(const int *fds, size_t n, int full, int dirfd);

/* Asks for a checkpoint of the file system of fd; ckpt_done(token) runs in
 * the loop when it is over.  One at a time: 0, or -1 when one is running. */
int sync_checkpoint(int fd, uint64_t token);

/* Waits for every submitted commit and checkpoint, stops the threads. */
void sync_shutdown(void);

#endif /* MEMQD_SYNC_H */
