/*
 * sync.h: the fsync thread and group commit.
 *
 * The loop collects, per iteration, the fds whose writes must become
 * durable (dup()s of segment fds, directory fds) into a batch and submits
 * it with a ticket number.  The thread takes every batch submitted so far
 * at once, fdatasync()s each fd, closes it, publishes the highest ticket
 * it covered and wakes the loop through an eventfd.  One fsync per file
 * thus serves every write that arrived meanwhile.
 *
 * The thread touches only the fds handed to it.
 */

#ifndef MEMQD_SYNC_H
#define MEMQD_SYNC_H

#include <stdint.h>

/* Called on the loop thread when tickets up to `durable` are on disk;
 * failed != 0 if any fsync failed since the last call. */
typedef void (*sync_done_pt)(uint64_t durable, int failed);

int sync_init(sync_done_pt done);

/* Hands fd to the next batch; the sync thread closes it. */
void sync_add_fd(int fd);

/* Closes the current batch and wakes the thread.  Returns the batch's
 * ticket (the same ticket is returned while the batch is empty). */
uint64_t sync_submit(void);

/* Ticket the next submit will have: replies parked now wait for it. */
uint64_t sync_next_ticket(void);

/* Waits until everything submitted is durable, stops the thread. */
void sync_shutdown(void);

#endif /* MEMQD_SYNC_H */
