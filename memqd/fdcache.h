/*
 * fdcache.h: a bounded set of open segment files.
 *
 * Queues do not keep descriptors: a segment is opened when it is read or
 * written and stays open in one of a fixed number of slots until another
 * segment needs the slot (clock order).  Ten thousand queues cost no more
 * descriptors than a few.  A segment remembers its last slot as a hint;
 * the slot says which (queue, segment) it holds, so a stale hint is
 * noticed and the file opened again.
 */

#ifndef MEMQD_FDCACHE_H
#define MEMQD_FDCACHE_H

#include <stdint.h>

typedef struct queue_s  queue_t;

/* Sizes the cache from RLIMIT_NOFILE.  0 or -1. */
int fdcache_init(void);

/*
 * An open O_RDWR descriptor of segment `seg` of q (borrowed: valid until
 * the next fdcache call), or -1 with errno set (ENOENT, EMFILE, ...).
 * *hint is the segment's slot hint, updated.
 */
int fdcache_get(const queue_t *q, uint64_t seg, int *hint);

/* Closes one cached descriptor (the clock hand's) for a caller that ran
 * out: 0, or -1 (EMFILE) when the cache holds none.  The cache is sized
 * from the descriptor limit at start, which may have been lowered since. */
int fdcache_shed(void);

/* Closes the segment's descriptor if it is open (file removed). */
void fdcache_drop(const queue_t *q, uint64_t seg, int hint);

/* Closes every descriptor of q (queue deleted or freed). */
void fdcache_drop_queue(const queue_t *q);

/* Closes everything (shutdown). */
void fdcache_close_all(void);

#endif /* MEMQD_FDCACHE_H */
