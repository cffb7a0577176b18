/*
 * lease.h: leased items (get <q>/lease=MS): who holds them, and when
 * each lease runs out.
 *
 *   per queue: lease_set_t, a hash table id -> lease (delete q/<id>,
 *              touch q/<id>: one lookup each)
 *   node-wide: every lease by deadline; the loop timer is armed for the
 *              earliest, so a tick costs little per lease that runs out,
 *              never a scan
 *   per queue: its leases by id, whose lowest is the queue's watermark
 *
 * Both orders are a lease_order_t: a lease goes to the end of one of
 * LEASE_RUNS sorted runs when its key is no lower than that run's last
 * (the run whose last key is the closest below; deadlines of one lease
 * duration come in time order, a queue's ids in id order, so a few
 * durations in use each fill a run of their own), else to a binary
 * min-heap (a touch to an earlier deadline, more durations than runs, an
 * item given back and leased again).  A run is a ring: leases that end
 * oldest first free its head for the appends that wrap around, so a
 * window of leases that slides along (a consumer holding a few thousand
 * and acknowledging its oldest) never moves one.  Leaving a run costs
 * O(1): a NULL left in the slot, the ends skip NULLs, and an append
 * compacts a run that is full and at most half live, or copies the ring
 * to one twice the size (the leases keep their positions: no record is
 * touched); the heap costs O(log n).  The earliest is the lowest of the
 * runs' heads and the heap's top.
 *
 *   lease_t ──hnext──► lease_t ...     (bucket chain of its queue's set)
 *      ▲
 *      ├── at[0]                       (node-wide, by deadline)
 *      └── at[1]                       (its queue's q->lseq, by id)
 *
 * A lease belongs to no connection.  This file owns the structures only:
 * what happens to an item whose lease runs out (back to the head of its
 * queue, or to its dead-letter queue) is queue.c's business.
 */

#ifndef MEMQD_LEASE_H
#define MEMQD_LEASE_H

#include <stddef.h>
#include <stdint.h>

#include "queue.h"

typedef struct lease_s  lease_t;

struct lease_s {
    item_ref_t  ref;         /* the item, with its delivery count */
    queue_t    *q;           /* (ref) its queue */
    uint64_t    deadline;    /* monotonic ms */
    size_t      at[2];       /* place in the deadline order [0] and in
                                q->lseq [1]: index << 3 | run (0 ..
                                LEASE_RUNS - 1) or LEASE_RUNS (heap) */
    lease_t    *hnext;       /* bucket chain of q's set */
};

/* Creates a lease of ref on q until `deadline` and links it into q's set
 * and the heap.  NULL when out of memory (nothing changed). */
lease_t *lease_add(queue_t *q, const item_ref_t *ref, uint64_t deadline);

/* The lease of item `seq` on q, or NULL. */
lease_t *lease_find(queue_t *q, uint64_t seq);

/* Asks the CPU for the memory that finding and removing the leases of
 * ids[0..n) on q will touch (a list of acknowledgements), so that their
 * cache misses overlap.  Changes nothing. */
void lease_prefetch(queue_t *q, const uint64_t *ids, size_t n);

/* Unlinks l from its set and the heap and frees it. */
void lease_remove(lease_t *l);

/* Moves l's deadline (either way).  0, or -1 when out of memory (l is
 * left as it was). */
int lease_renew(lease_t *l, uint64_t deadline);

/* The lease with the earliest deadline, or NULL when there is none. */
lease_t *lease_min(void);

/* The lowest id leased on q, or UINT64_MAX when q holds no lease. */
uint64_t lease_min_seq(const queue_t *q);

/* Every lease of q, unlinked and freed (the queue is deleted or freed). */
void lease_drop_queue(queue_t *q);

/* Calls fn(l, arg) for every lease of q, in no order; fn must not add
 * or remove leases. */
void lease_each(queue_t *q, void (*fn)(lease_t *l, void *arg), void *arg);

/* Leases held node-wide. */
size_t lease_count(void);

/* Frees the deadline order and spare records (shutdown; every set must
 * be dropped first). */
void lease_shutdown(void);

#endif /* MEMQD_LEASE_H */
