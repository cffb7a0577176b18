/*
 * lease.c: see lease.h.
 *
 * Invariants: a lease is in exactly one queue's set, at dl.a[l->hidx] and
 * at q->lseq.a[l->sidx]; dl.a[i]->deadline >= dl.a[(i - 1) / 2]->deadline
 * and likewise by ref.seq in each lseq; a set has a power-of-two number of
 * buckets, grown (doubled) when it holds more leases than buckets, so a
 * lookup walks a chain of about one; it and the queue's id heap are freed
 * when its last lease goes.  Ids of one queue are consecutive numbers:
 * the low bits spread them over the buckets without hashing.
 */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"

#define SET_MIN_BUCKETS  64


/* the node-wide heap by deadline; each queue has one by id (q->lseq) */
static lease_heap_t  dl;


/* A heap orders by deadline (ids 0) or by id (1), and keeps each
 * lease's index in it in hidx or sidx. */
static inline uint64_t
key(const lease_t *l, int by_id)
{
    return by_id ? l->ref.seq : l->deadline;
}


static inline void
heap_set(lease_heap_t *h, int by_id, size_t i, lease_t *l)
{
    h->a[i] = l;
    if (by_id) {
        l->sidx = i;
    } else {
        l->hidx = i;
    }
}


static size_t
sift_up(lease_heap_t *h, int by_id, size_t i)
{
    lease_t   *l;
    uint64_t   k;

    l = h->a[i];
    k = key(l, by_id);

    while (i > 0 && key(h->a[(i - 1) / 2], by_id) > k) {
        heap_set(h, by_id, i, h->a[(i - 1) / 2]);
        i = (i - 1) / 2;
    }

    heap_set(h, by_id, i, l);
    return i;
}


static void
sift_down(lease_heap_t *h, int by_id, size_t i)
{
    size_t     c;
    lease_t   *l;
    uint64_t   k;

    l = h->a[i];
    k = key(l, by_id);

    for ( ;; ) {
        c = 2 * i + 1;
        if (c >= h->n) {
            break;
        }
        if (c + 1 < h->n && key(h->a[c + 1], by_id) < key(h->a[c], by_id)) {
            c++;
        }
        if (key(h->a[c], by_id) >= k) {
            break;
        }
        heap_set(h, by_id, i, h->a[c]);
        i = c;
    }

    heap_set(h, by_id, i, l);
}


/* Room for one more in h.  0 or -1. */
static int
heap_reserve(lease_heap_t *h, size_t first)
{
    size_t     cap;
    lease_t  **na;

    if (h->n < h->cap) {
        return 0;
    }

    cap = h->cap ? h->cap * 2 : first;
    na = realloc(h->a, cap * sizeof(lease_t *));
    if (na == NULL) {
        return -1;
    }

    h->a = na;
    h->cap = cap;
    return 0;
}


static void
heap_insert(lease_heap_t *h, int by_id, lease_t *l)
{
    heap_set(h, by_id, h->n++, l);
    (void) sift_up(h, by_id, h->n - 1);
}


/* The element at i is a leaf or moves up, or the last one moves down
 * into it: either way a single sift does. */
static void
heap_remove(lease_heap_t *h, int by_id, size_t i)
{
    lease_t  *last;

    assert(i < h->n);

    last = h->a[--h->n];
    if (i == h->n) {
        return;
    }

    heap_set(h, by_id, i, last);
    if (sift_up(h, by_id, i) == i) {
        sift_down(h, by_id, i);
    }
}


/* Doubles q's bucket array (or makes the first one).  0 or -1. */
static int
set_grow(queue_t *q)
{
    size_t     n, i, b;
    lease_t  **nb, *l, *next;

    n = q->lbuckets_n ? q->lbuckets_n * 2 : SET_MIN_BUCKETS;
    nb = calloc(n, sizeof(lease_t *));
    if (nb == NULL) {
        return -1;
    }

    for (i = 0; i < q->lbuckets_n; i++) {
        for (l = q->lbuckets[i]; l; l = next) {
            next = l->hnext;
            b = (size_t) (l->ref.seq & (n - 1));
            l->hnext = nb[b];
            nb[b] = l;
        }
    }

    free(q->lbuckets);
    q->lbuckets = nb;
    q->lbuckets_n = n;
    return 0;
}


lease_t *
lease_add(queue_t *q, const item_ref_t *ref, uint64_t deadline)
{
    size_t     b;
    lease_t   *l;

    if (q->leased_items >= q->lbuckets_n && set_grow(q) != 0
        && q->lbuckets_n == 0)
    {
        return NULL;
    }

    if (heap_reserve(&dl, 1024) != 0
        || heap_reserve(&q->lseq, SET_MIN_BUCKETS) != 0)
    {
        return NULL;
    }

    l = malloc(sizeof(lease_t));
    if (l == NULL) {
        return NULL;
    }

    l->ref = *ref;
    l->q = q;
    l->deadline = deadline;

    b = (size_t) (ref->seq & (q->lbuckets_n - 1));
    l->hnext = q->lbuckets[b];
    q->lbuckets[b] = l;
    q->leased_items++;

    heap_insert(&dl, 0, l);
    heap_insert(&q->lseq, 1, l);
    return l;
}


lease_t *
lease_find(queue_t *q, uint64_t seq)
{
    lease_t  *l;

    if (q->lbuckets_n == 0) {
        return NULL;
    }

    for (l = q->lbuckets[seq & (q->lbuckets_n - 1)]; l; l = l->hnext) {
        if (l->ref.seq == seq) {
            return l;
        }
    }

    return NULL;
}


void
lease_remove(lease_t *l)
{
    queue_t   *q;
    lease_t  **pp;

    q = l->q;

    for (pp = &q->lbuckets[l->ref.seq & (q->lbuckets_n - 1)]; *pp;
         pp = &(*pp)->hnext)
    {
        if (*pp == l) {
            *pp = l->hnext;
            break;
        }
    }

    assert(q->leased_items > 0);
    q->leased_items--;
    heap_remove(&dl, 0, l->hidx);
    heap_remove(&q->lseq, 1, l->sidx);
    free(l);

    if (q->leased_items == 0) {
        /* a queue without leases holds no table: ten thousand queues
         * that once had leases do not keep one each */
        free(q->lbuckets);
        q->lbuckets = NULL;
        q->lbuckets_n = 0;
        free(q->lseq.a);
        memset(&q->lseq, 0, sizeof(lease_heap_t));
    }
}


void
lease_renew(lease_t *l, uint64_t deadline)
{
    l->deadline = deadline;
    if (sift_up(&dl, 0, l->hidx) == l->hidx) {
        sift_down(&dl, 0, l->hidx);
    }
}


lease_t *
lease_min(void)
{
    return dl.n ? dl.a[0] : NULL;
}


uint64_t
lease_min_seq(const queue_t *q)
{
    return q->lseq.n ? q->lseq.a[0]->ref.seq : UINT64_MAX;
}


void
lease_drop_queue(queue_t *q)
{
    size_t    i;
    lease_t  *l, *next;

    for (i = 0; i < q->lbuckets_n; i++) {
        for (l = q->lbuckets[i]; l; l = next) {
            next = l->hnext;
            heap_remove(&dl, 0, l->hidx);
            free(l);
        }
    }

    free(q->lbuckets);
    q->lbuckets = NULL;
    q->lbuckets_n = 0;
    free(q->lseq.a);
    memset(&q->lseq, 0, sizeof(lease_heap_t));
    q->leased_items = 0;
}


void
lease_each(queue_t *q, void (*fn)(lease_t *l, void *arg), void *arg)
{
    size_t    i;
    lease_t  *l;

    for (i = 0; i < q->lbuckets_n; i++) {
        for (l = q->lbuckets[i]; l; l = l->hnext) {
            fn(l, arg);
        }
    }
}


size_t
lease_count(void)
{
    return dl.n;
}


void
lease_shutdown(void)
{
    free(dl.a);
    memset(&dl, 0, sizeof(lease_heap_t));
}
