/*
 * lease.c: see lease.h.
 *
 * Invariants: a lease is in exactly one queue's set and in two orders,
 * the node-wide dl (by deadline) and its queue's q->lseq (by id), at
 * at[0] and at[1]; a run's positions only grow (position p is slot p &
 * (cap - 1), tail - head <= cap), the keys at head..tail - 1 that are
 * not NULL never decrease, and those at head and tail - 1 are not NULL
 * (head == tail == 0 when it is empty), the latter's is last; a lease's
 * place in a run is its position, so that a run that grows (copied to
 * a ring twice the size) touches no lease record; in the heap,
 * heap[i] >= heap[(i - 1) / 2]; a set has a power-of-two number of
 * buckets, grown (doubled) when it holds more leases than buckets, so a
 * lookup walks a chain of about one; it and the queue's id order are
 * freed when its last lease goes.
 * Ids of one queue are consecutive numbers: the low bits spread them
 * over the buckets without hashing.
 */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"

#define SET_MIN_BUCKETS  64
#define ORDER_MIN        64        /* first slots of a queue's run, heap */
#define DL_MIN           1024      /* and of the deadline order's */
#define SPARE_MAX        4096      /* freed records kept for reuse */

#define HEAP             LEASE_RUNS        /* at[] & 7: in the heap */
#define AT(i, t)         ((size_t) (i) << 3 | (size_t) (t))


/* the node-wide order by deadline; each queue has one by id (q->lseq) */
static lease_order_t  dl;

/* freed lease records: a lease taken for every one acknowledged costs
 * no malloc.  Kept in an array, not chained through the records: taking
 * one reads nothing from it (a record freed a while ago is out of the
 * cache, and a chain made every lease wait for that miss) */
static lease_t       *spare[SPARE_MAX];
static size_t         nspare;


/* An order is by deadline (by 0) or by id (1). */
static inline uint64_t
key(const lease_t *l, int by)
{
    return by ? l->ref.seq : l->deadline;
}


static inline void
heap_set(lease_order_t *o, int by, size_t i, lease_t *l)
{
    o->heap[i] = l;
    l->at[by] = AT(i, HEAP);
}


static size_t
sift_up(lease_order_t *o, int by, size_t i)
{
    lease_t   *l;
    uint64_t   k;

    l = o->heap[i];
    k = key(l, by);

    while (i > 0 && key(o->heap[(i - 1) / 2], by) > k) {
        heap_set(o, by, i, o->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }

    heap_set(o, by, i, l);
    return i;
}


static void
sift_down(lease_order_t *o, int by, size_t i)
{
    size_t     c;
    lease_t   *l;
    uint64_t   k;

    l = o->heap[i];
    k = key(l, by);

    for ( ;; ) {
        c = 2 * i + 1;
        if (c >= o->hn) {
            break;
        }
        if (c + 1 < o->hn
            && key(o->heap[c + 1], by) < key(o->heap[c], by))
        {
            c++;
        }
        if (key(o->heap[c], by) >= k) {
            break;
        }
        heap_set(o, by, i, o->heap[c]);
        i = c;
    }

    heap_set(o, by, i, l);
}


/* Room for one more in the array *a of *cap (doubled, or `first` to
 * begin with) holding n.  0 or -1. */
static int
reserve(lease_t ***a, size_t *cap, size_t n, size_t first)
{
    size_t     c;
    lease_t  **na;

    if (n < *cap) {
        return 0;
    }

    c = *cap ? *cap * 2 : first;
    na = realloc(*a, c * sizeof(lease_t *));
    if (na == NULL) {
        return -1;
    }

    *a = na;
    *cap = c;
    return 0;
}


/* Where a lease of key k goes in o: the run whose last key is the
 * highest not above k, else an empty run, else the heap. */
static int
order_pick(const lease_order_t *o, int by, uint64_t k)
{
    int                 t, best, empty;
    uint64_t            last, best_key;
    const lease_run_t  *r;

    best = -1;
    best_key = 0;
    empty = -1;

    for (t = 0; t < LEASE_RUNS; t++) {
        r = &o->run[t];
        if (r->head == r->tail) {
            if (empty < 0) {
                empty = t;
            }
            continue;
        }
        last = r->last;
        if (last <= k && (best < 0 || last > best_key)) {
            best = t;
            best_key = last;
        }
    }

    return best >= 0 ? best : empty >= 0 ? empty : HEAP;
}


/* The slot of position p of run r. */
#define SLOT(r, p)  ((r)->a[(p) & ((r)->cap - 1)])


/* Room for one more in place t of o.  A full run at most half live
 * needs no memory: order_put() compacts it; else its ring is copied to
 * one twice the size (or `first` slots to begin with).  0 or -1. */
static int
order_room(lease_order_t *o, int t, size_t first)
{
    size_t        c, p;
    lease_t     **na;
    lease_run_t  *r;

    if (t == HEAP) {
        return reserve(&o->heap, &o->hcap, o->hn, first);
    }

    r = &o->run[t];
    if (r->tail - r->head < r->cap
        || (r->cap > 0 && r->live <= r->cap / 2))
    {
        return 0;
    }

    c = r->cap ? r->cap * 2 : first;
    na = malloc(c * sizeof(lease_t *));
    if (na == NULL) {
        return -1;
    }

    for (p = r->head; p < r->tail; p++) {
        na[p & (c - 1)] = SLOT(r, p);
    }

    free(r->a);
    r->a = na;
    r->cap = c;
    return 0;
}


/* Moves run t's leases together, in order, from its head on. */
static void
run_compact(lease_run_t *r, int by, int t)
{
    size_t    p, j;
    lease_t  *l;

    /* j <= p: the slot written was read already */
    for (p = r->head, j = r->head; p < r->tail; p++) {
        l = SLOT(r, p);
        if (l != NULL) {
            SLOT(r, j) = l;
            l->at[by] = AT(j, t);
            j++;
        }
    }

    assert(j - r->head == r->live);
    r->tail = j;
}


/* Adds l to place t of o (order_pick(), order_room() made room). */
static void
order_put(lease_order_t *o, int by, int t, lease_t *l)
{
    lease_run_t  *r;

    if (t == HEAP) {
        heap_set(o, by, o->hn++, l);
        (void) sift_up(o, by, o->hn - 1);
        return;
    }

    r = &o->run[t];
    assert(r->head == r->tail || r->last <= key(l, by));

    if (r->tail - r->head == r->cap) {
        run_compact(r, by, t);
    }

    r->last = key(l, by);
    l->at[by] = AT(r->tail, t);
    SLOT(r, r->tail) = l;
    r->tail++;
    r->live++;
}


static void
order_remove(lease_order_t *o, int by, lease_t *l)
{
    int           t;
    size_t        i;
    lease_t      *last;
    lease_run_t  *r;

    i = l->at[by] >> 3;
    t = (int) (l->at[by] & 7);

    if (t != HEAP) {
        r = &o->run[t];
        assert(i >= r->head && i < r->tail && SLOT(r, i) == l);
        SLOT(r, i) = NULL;

        if (--r->live == 0) {
            r->head = 0;
            r->tail = 0;
            return;
        }

        if (i == r->head) {
            while (SLOT(r, r->head) == NULL) {
                r->head++;
            }

        } else if (i == r->tail - 1) {
            while (SLOT(r, r->tail - 1) == NULL) {
                r->tail--;
            }
            r->last = key(SLOT(r, r->tail - 1), by);
        }
        return;
    }

    /* the element at i is a leaf or moves up, or the last one moves
     * down into it: either way a single sift does */
    assert(i < o->hn && o->heap[i] == l);

    last = o->heap[--o->hn];
    if (i == o->hn) {
        return;
    }

    heap_set(o, by, i, last);
    if (sift_up(o, by, i) == i) {
        sift_down(o, by, i);
    }
}


static lease_t *
order_min(const lease_order_t *o, int by)
{
    int                 t;
    lease_t            *m, *l;
    uint64_t            k;
    const lease_run_t  *r;

    m = o->hn ? o->heap[0] : NULL;
    k = m ? key(m, by) : 0;

    for (t = 0; t < LEASE_RUNS; t++) {
        r = &o->run[t];
        if (r->head < r->tail) {
            l = SLOT(r, r->head);
            if (m == NULL || key(l, by) < k) {
                m = l;
                k = key(l, by);
            }
        }
    }

    return m;
}


static size_t
order_count(const lease_order_t *o)
{
    int     t;
    size_t  n;

    n = o->hn;
    for (t = 0; t < LEASE_RUNS; t++) {
        n += o->run[t].live;
    }

    return n;
}


static void
order_free(lease_order_t *o)
{
    int  t;

    for (t = 0; t < LEASE_RUNS; t++) {
        free(o->run[t].a);
    }

    free(o->heap);
    memset(o, 0, sizeof(lease_order_t));
}


static void
record_free(lease_t *l)
{
    if (nspare < SPARE_MAX) {
        spare[nspare++] = l;
        return;
    }

    free(l);
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
    int        td, ts;
    size_t     b;
    lease_t   *l;

    if (q->leased_items >= q->lbuckets_n && set_grow(q) != 0
        && q->lbuckets_n == 0)
    {
        return NULL;
    }

    td = order_pick(&dl, 0, deadline);
    ts = order_pick(&q->lseq, 1, ref->seq);
    if (order_room(&dl, td, DL_MIN) != 0
        || order_room(&q->lseq, ts, ORDER_MIN) != 0)
    {
        return NULL;
    }

    if (nspare > 0) {
        l = spare[--nspare];

    } else {
        l = malloc(sizeof(lease_t));
        if (l == NULL) {
            return NULL;
        }
    }

    l->ref = *ref;
    l->q = q;
    l->deadline = deadline;

    b = (size_t) (ref->seq & (q->lbuckets_n - 1));
    l->hnext = q->lbuckets[b];
    q->lbuckets[b] = l;
    q->leased_items++;

    order_put(&dl, 0, td, l);
    order_put(&q->lseq, 1, ts, l);
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
lease_prefetch(queue_t *q, const uint64_t *ids, size_t n)
{
    int            t;
    size_t         i, k, m;
    lease_t       *l;
    lease_run_t   *r;

    if (q->lbuckets_n == 0) {
        return;
    }

    m = q->lbuckets_n - 1;

    /* each step's loads were asked for by the step before: the misses
     * of all the ids overlap instead of following one another */
    for (i = 0; i < n; i++) {
        __builtin_prefetch(&q->lbuckets[ids[i] & m]);
    }

    for (i = 0; i < n; i++) {
        l = q->lbuckets[ids[i] & m];
        if (l != NULL) {
            __builtin_prefetch(l, 1);
        }
    }

    for (i = 0; i < n; i++) {
        for (l = q->lbuckets[ids[i] & m]; l; l = l->hnext) {
            if (l->ref.seq == ids[i]) {
                break;
            }
        }
        if (l == NULL) {
            continue;
        }
        for (k = 0; k < 2; k++) {
            t = (int) (l->at[k] & 7);
            if (t != HEAP) {
                r = k ? &q->lseq.run[t] : &dl.run[t];
                __builtin_prefetch(&SLOT(r, l->at[k] >> 3), 1);
            }
        }
    }
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
    order_remove(&dl, 0, l);
    order_remove(&q->lseq, 1, l);
    record_free(l);

    if (q->leased_items == 0) {
        /* a queue without leases holds no table: ten thousand queues
         * that once had leases do not keep one each */
        free(q->lbuckets);
        q->lbuckets = NULL;
        q->lbuckets_n = 0;
        order_free(&q->lseq);
    }
}


int
lease_renew(lease_t *l, uint64_t deadline)
{
    int  t;

    /* out and in again; taking l out only lowers a run's last key or
     * frees room, so the place picked with l still in stays right */
    t = order_pick(&dl, 0, deadline);
    if (order_room(&dl, t, DL_MIN) != 0) {
        return -1;
    }

    order_remove(&dl, 0, l);
    l->deadline = deadline;
    order_put(&dl, 0, t, l);
    return 0;
}


lease_t *
lease_min(void)
{
    return order_min(&dl, 0);
}


uint64_t
lease_min_seq(const queue_t *q)
{
    lease_t  *l;

    l = order_min(&q->lseq, 1);
    return l ? l->ref.seq : UINT64_MAX;
}


void
lease_drop_queue(queue_t *q)
{
    size_t    i;
    lease_t  *l, *next;

    for (i = 0; i < q->lbuckets_n; i++) {
        for (l = q->lbuckets[i]; l; l = next) {
            next = l->hnext;
            order_remove(&dl, 0, l);
            record_free(l);
        }
    }

    free(q->lbuckets);
    q->lbuckets = NULL;
    q->lbuckets_n = 0;
    order_free(&q->lseq);
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
    return order_count(&dl);
}


void
lease_shutdown(void)
{
    order_free(&dl);

    while (nspare > 0) {
        free(spare[--nspare]);
    }
}
