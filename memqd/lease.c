/*
 * lease.c: see lease.h.
 *
 * Invariants: a lease is in exactly one queue's set and at heap[l->hidx];
 * heap[i]->deadline >= heap[(i - 1) / 2]->deadline; a set has a power-of-
 * two number of buckets, grown (doubled) when it holds more leases than
 * buckets, so a lookup walks a chain of about one; it is freed when its
 * last lease goes.  Ids of one queue are consecutive numbers: the low
 * bits spread them over the buckets without hashing.
 */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"

#define SET_MIN_BUCKETS  64


static lease_t  **heap;
static size_t     nheap;
static size_t     heap_cap;


static void
heap_set(size_t i, lease_t *l)
{
    heap[i] = l;
    l->hidx = i;
}


static void
sift_up(size_t i)
{
    lease_t  *l;

    l = heap[i];

    while (i > 0 && heap[(i - 1) / 2]->deadline > l->deadline) {
        heap_set(i, heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }

    heap_set(i, l);
}


static void
sift_down(size_t i)
{
    size_t    c;
    lease_t  *l;

    l = heap[i];

    for ( ;; ) {
        c = 2 * i + 1;
        if (c >= nheap) {
            break;
        }
        if (c + 1 < nheap && heap[c + 1]->deadline < heap[c]->deadline) {
            c++;
        }
        if (heap[c]->deadline >= l->deadline) {
            break;
        }
        heap_set(i, heap[c]);
        i = c;
    }

    heap_set(i, l);
}


static void
heap_remove(lease_t *l)
{
    size_t    i;
    lease_t  *last;

    i = l->hidx;
    assert(i < nheap && heap[i] == l);

    last = heap[--nheap];
    if (last == l) {
        return;
    }

    heap_set(i, last);
    sift_down(i);
    sift_up(last->hidx);
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
    size_t     b, cap;
    lease_t   *l, **nh;

    if (q->leased_items >= q->lbuckets_n && set_grow(q) != 0
        && q->lbuckets_n == 0)
    {
        return NULL;
    }

    if (nheap == heap_cap) {
        cap = heap_cap ? heap_cap * 2 : 1024;
        nh = realloc(heap, cap * sizeof(lease_t *));
        if (nh == NULL) {
            return NULL;
        }
        heap = nh;
        heap_cap = cap;
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

    heap_set(nheap++, l);
    sift_up(l->hidx);
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
    heap_remove(l);
    free(l);

    if (q->leased_items == 0) {
        /* a queue without leases holds no table: ten thousand queues
         * that once had leases do not keep one each */
        free(q->lbuckets);
        q->lbuckets = NULL;
        q->lbuckets_n = 0;
    }
}


void
lease_renew(lease_t *l, uint64_t deadline)
{
    l->deadline = deadline;
    sift_down(l->hidx);
    sift_up(l->hidx);
}


lease_t *
lease_min(void)
{
    return nheap ? heap[0] : NULL;
}


void
lease_drop_queue(queue_t *q)
{
    size_t    i;
    lease_t  *l, *next;

    for (i = 0; i < q->lbuckets_n; i++) {
        for (l = q->lbuckets[i]; l; l = next) {
            next = l->hnext;
            heap_remove(l);
            free(l);
        }
    }

    free(q->lbuckets);
    q->lbuckets = NULL;
    q->lbuckets_n = 0;
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
    return nheap;
}


void
lease_shutdown(void)
{
    free(heap);
    heap = NULL;
    nheap = 0;
    heap_cap = 0;
}
