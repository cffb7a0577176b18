/*
 * segment.h: segment files and the position file of a queue directory.
 *
 *   <data-dir>/<queue>/00000000000000000001.seg   first seq 1
 *   <data-dir>/<queue>/00000000000000052113.seg   first seq 52113
 *   <data-dir>/<queue>/position                   low watermark
 *
 * Segment format: common/mq_frame.h.
 *
 * Position file: where delivery resumes after a restart.  Every record
 * below `seq` was consumed, except the `pending` ones (items open on a
 * connection or given back, still owed to consumers).
 *   version 1, 20 bytes: "MQPOS\0\0\1", u64 seq, u32 CRC32C of the rest;
 *   version 2: "MQPOS\0\0\2", u64 seq, u64 n, n x u64 pending seqs
 *   (ascending), u32 CRC32C of everything before it;
 *   version 3: "MQPOS\0\0\3", u64 seq, u64 n, n x u64 pending seqs
 *   (ascending), n x u32 delivery counts (same order), u32 CRC32C.
 * Version 1 is written when nothing is pending, version 2 when no pending
 * item was delivered yet (every count 0), version 3 otherwise.  Changing
 * the format: a new version byte; keep reading the old ones.  The file
 * is replaced, never edited: write position.tmp, rename over position.
 * A missing or damaged file reads as seq 0: everything still in the
 * segments is delivered again, never the other way round.
 */

#ifndef MEMQD_SEGMENT_H
#define MEMQD_SEGMENT_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"

#define SEG_NAME_LEN  24     /* 20 digits + ".seg" */

/* A directory stream over dirfd's directory (the caller closedir()s it;
 * dirfd stays open), or NULL. */
DIR *dir_stream(int dirfd);

void seg_name(char *buf, uint64_t id);

/* Parses a directory entry name; 0 and *id set if it is a segment. */
int seg_parse_name(const char *name, uint64_t *id);

/* Creates segment `id` of queue qname with its header written; 0, or -1
 * (logged, errno kept). */
int seg_create(const char *qname, uint64_t id, uint32_t mark);

/* pwrite() of all bytes, retrying short writes; 0 or -1 with errno. */
int seg_pwrite(int fd, const void *buf, size_t len, uint64_t off);

int position_read(int dirfd, uint64_t *seq);
int position_write(int dirfd, uint64_t seq);

/* With pending items; *pending is malloc()ed (NULL when none). */
int position_read_pending(int dirfd, uint64_t *seq, uint64_t **pending,
    size_t *npending);
int position_save(int dirfd, uint64_t seq, const uint64_t *pending,
    size_t n);

/* With delivery counts too (counts may be NULL: all 0); *counts is
 * malloc()ed, NULL when the file has none (versions 1 and 2).  Saving:
 * qname NULL, dirfd is the queue's directory; else dirfd is the data
 * directory and the file is <qname>/position (one open the fewer). */
int position_read_counts(int dirfd, uint64_t *seq, uint64_t **pending,
    uint32_t **counts, size_t *npending);
int position_save_counts(int dirfd, const char *qname, uint64_t seq,
    const uint64_t *pending, const uint32_t *counts, size_t n);

/* Recovery (recover.c): the journal's view of the queues. */
typedef struct jscan_s  jscan_t;

/* Scans the journal files; *last is the highest file number.  0 or -1. */
int recover_journal_scan(jscan_t **js, uint64_t *last);

/* The first id the journal holds for a queue (0: none); *dropped when
 * the journal deleted it. */
uint64_t recover_journal_first(jscan_t *js, const char *name, size_t len,
    int *dropped);

/* The ids the journal acknowledged for a queue after its last drop
 * (ascending, no repeats; *acks valid until recover_journal_done()). */
size_t recover_journal_acks(jscan_t *js, const char *name, size_t len,
    const uint64_t **acks);

/* Appends every journal record its queue's files lack. */
int recover_journal_replay(jscan_t *js);

/* Frees the scan; remove: the journal files go too (after a replay that
 * was synced). */
void recover_journal_done(jscan_t *js, int remove);

/* Rebuilds q (segments, cursor, counters) from its directory: see
 * recover.c; acks[0..nacks) (ascending) are leased items the journal
 * acknowledged.  0 on success, -1 when the directory is unusable. */
int recover_queue(queue_t *q, uint64_t jfirst, const uint64_t *acks,
    size_t nacks);

/* Removes a queue directory the journal says was deleted. */
void recover_remove_queue(const char *name);

#endif /* MEMQD_SEGMENT_H */
