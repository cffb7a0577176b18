/*
 * journal.h: the node-wide journal.  Every record appended to any queue is
 * also appended here, in the order the loop took them; under --sync always
 * one fdatasync of the journal makes a whole batch durable, whatever the
 * number of queues it touched.  The queue files are written at the same
 * time but synced only at checkpoints, when a journal file is full.
 *
 *   <data-dir>/.journal/00000000000000000007.jnl   full, checkpoint running
 *   <data-dir>/.journal/00000000000000000008.jnl   being written
 *
 * Files are preallocated to --segment-size (zeros, which never decode as a
 * record), so an fdatasync does not have to commit a growing file's size.
 * After a crash, recovery (recover.c) replays every journal file into the
 * queue files and removes them.  Format: common/mq_frame.h.
 */

#ifndef MEMQD_JOURNAL_H
#define MEMQD_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mq_frame.h"
#include "sync.h"

#define JOURNAL_DIR  ".journal"

/* Creates the journal directory and a new file numbered after `last`
 * (the highest number recovery saw, 0 if none).  0 or -1 (logged).
 * Without it (--sync interval or none) the other calls do nothing. */
int journal_init(uint64_t last);

/* Whether there is a journal (--sync always): records are kept. */
int journal_on(void);

/* Buffers one record: JITEM (h describes the item, data its bytes),
 * JACK (h->seq the id), JACKS (data the ids, mq_frame_ids_encode()) or
 * JDROP (h and data unused).  0, or -1 when out of memory or the journal
 * failed before. */
int journal_add(uint32_t kind, const char *name, size_t nlen,
    const mq_frame_hdr_t *h, const void *data, size_t len);

/* Writes the buffer early when it has grown large (called between
 * requests, never in the middle of one).  0 or -1. */
int journal_flush_big(void);

/* Writes what is buffered (switching files when the current one is full)
 * and, when `sync` is set, submits a commit for it.  0 or -1 after a write
 * failure (logged; srv.readonly is set). */
int journal_commit(int sync);

/* Commits now (to the thread) when records wait, the commit thread is idle
 * and more ready descriptors are to be handled: loop_after_event. */
void journal_commit_early(int more);

/* Called by the loop when a commit or a checkpoint is over. */
void journal_durable(uint64_t durable);
void journal_checkpoint_done(uint64_t token, int failed);

/* Clean stop: everything written, every queue file synced, the journal
 * files removed (a clean restart has nothing to replay) unless `keep`:
 * some records are in no queue file. */
void journal_shutdown(int keep);

/* A background job (sync.h): syncfs of the data directory's file system,
 * logged when it fails.  Checkpoints run it, and so does --sync interval. */
int journal_syncfs(sync_job_t *job);

/* Journal file name of `number` (24 bytes and a NUL). */
void journal_name(char *buf, uint64_t number);

/* Parses a directory entry name: 0 and *number set for a journal file. */
int journal_parse_name(const char *name, uint64_t *number);

/* A queue file's write-back failed where the checkpoint may not see it:
 * as after a failed checkpoint, every journal file stays for the replay
 * at the next start, and the node refuses further writes. */
void journal_keep_all(void);

#endif /* MEMQD_JOURNAL_H */
