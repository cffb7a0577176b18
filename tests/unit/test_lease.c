// links: memqd/lease.c
/*
 * test_lease.c: the lease structures (memqd/lease.c): the per-queue id
 * table and id order and the node-wide deadline order (sorted runs and a
 * heap), checked against a plain model through random adds, renewals
 * and removals, through a consumer's traffic (a clock, a few lease
 * durations, ids in order, items leased again, touches), and at 100,000
 * leases.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lease.h"

#define MODEL_N  4000
#define ID_N     30000


typedef struct {
    int        live;
    uint64_t   deadline;
    lease_t   *l;
} model_t;


static uint64_t  rng = 88172645463325252ull;


static uint64_t
next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}


static item_ref_t
ref_of(uint64_t seq)
{
    item_ref_t  r;

    memset(&r, 0, sizeof(r));
    r.seq = seq;
    r.seg = 1;
    r.off = seq * 64;
    r.len = (uint32_t) seq % 100;
    r.deliveries = (uint32_t) seq % 7;
    return r;
}


static void
count_each(lease_t *l, void *arg)
{
    (*(size_t *) arg)++;
}


/* The invariants of lease.c for order o (by 0 deadline, 1 id); the
 * number of leases in it. */
static size_t
check_order(const lease_order_t *o, int by)
{
    int                 t;
    size_t              i, n, live;
    uint64_t            k, prev;
    const lease_t      *l;
    const lease_run_t  *r;

    n = 0;

    for (t = 0; t < LEASE_RUNS; t++) {
        r = &o->run[t];
        assert_true(r->head <= r->tail && r->tail - r->head <= r->cap);
        if (r->head == r->tail) {
            assert_true(r->head == 0 && r->live == 0);
            continue;
        }
        assert_true((r->cap & (r->cap - 1)) == 0);
        assert_non_null(r->a[r->head & (r->cap - 1)]);
        assert_non_null(r->a[(r->tail - 1) & (r->cap - 1)]);

        live = 0;
        prev = 0;
        for (i = r->head; i < r->tail; i++) {
            l = r->a[i & (r->cap - 1)];
            if (l == NULL) {
                continue;
            }
            k = by ? l->ref.seq : l->deadline;
            assert_true(k >= prev);
            assert_true(l->at[by] == (i << 3 | (size_t) t));
            prev = k;
            live++;
        }
        assert_true(live == r->live);
        assert_true(r->last == k);
        n += live;
    }

    for (i = 0; i < o->hn; i++) {
        l = o->heap[i];
        assert_true(l->at[by] == (i << 3 | LEASE_RUNS));
        if (i > 0) {
            k = by ? l->ref.seq : l->deadline;
            prev = by ? o->heap[(i - 1) / 2]->ref.seq
                      : o->heap[(i - 1) / 2]->deadline;
            assert_true(k >= prev);
        }
    }

    return n + o->hn;
}


/* The heap's top is the earliest deadline the model holds. */
static void
check_min(model_t *m, size_t n)
{
    size_t     i;
    lease_t   *top;
    uint64_t   best;

    best = UINT64_MAX;
    for (i = 0; i < n; i++) {
        if (m[i].live && m[i].deadline < best) {
            best = m[i].deadline;
        }
    }

    top = lease_min();
    if (best == UINT64_MAX) {
        assert_null(top);
    } else {
        assert_non_null(top);
        assert_true(top->deadline == best);
    }
}


/* q's lowest leased id is the lowest the model holds live. */
static void
check_min_seq(const queue_t *q, model_t *m, size_t n)
{
    size_t  i;

    for (i = 0; i < n && !m[i].live; i++) {
        /* the first live one */
    }

    assert_true(lease_min_seq(q) == (i < n ? (uint64_t) i : UINT64_MAX));
}


static void
test_random_against_model(void **state)
{
    size_t      i, k, live, seen;
    queue_t     q;
    model_t    *m;
    lease_t    *l;
    uint64_t    seq;
    item_ref_t  r;

    (void) state;

    memset(&q, 0, sizeof(q));
    m = calloc(MODEL_N, sizeof(model_t));
    assert_non_null(m);
    live = 0;

    for (k = 0; k < 60000; k++) {
        seq = next_rand() % MODEL_N;
        i = (size_t) seq;

        switch (next_rand() % 4) {
        case 0:
        case 1:
            if (m[i].live) {
                break;
            }
            r = ref_of(seq);
            m[i].deadline = next_rand() % 100000;
            m[i].l = lease_add(&q, &r, m[i].deadline);
            assert_non_null(m[i].l);
            m[i].live = 1;
            live++;
            break;

        case 2:
            if (!m[i].live) {
                assert_null(lease_find(&q, seq));
                break;
            }
            m[i].deadline = next_rand() % 100000;
            assert_true(lease_renew(m[i].l, m[i].deadline) == 0);
            break;

        default:
            l = lease_find(&q, seq);
            if (!m[i].live) {
                assert_null(l);
                break;
            }
            assert_ptr_equal(l, m[i].l);
            assert_true(l->ref.seq == seq && l->ref.off == seq * 64);
            assert_true(l->ref.deliveries == seq % 7);
            lease_remove(l);
            m[i].live = 0;
            live--;
        }

        assert_true(q.leased_items == live);
        assert_true(lease_count() == live);

        if (k % 97 == 0) {
            assert_true(check_order(&q.lseq, 1) == live);
            check_min(m, MODEL_N);
            check_min_seq(&q, m, MODEL_N);
        }
    }

    seen = 0;
    lease_each(&q, count_each, &seen);
    assert_true(seen == live);

    /* popping the minimum gives the deadlines in order */
    seq = 0;
    while ((l = lease_min()) != NULL) {
        assert_true(l->deadline >= seq);
        seq = l->deadline;
        m[l->ref.seq].live = 0;
        lease_remove(l);
        live--;
        check_min_seq(&q, m, MODEL_N);
    }
    assert_true(live == 0 && q.leased_items == 0);
    assert_true(lease_min_seq(&q) == UINT64_MAX);

    lease_drop_queue(&q);
    lease_shutdown();
    free(m);
}


/*
 * A consumer's traffic: a clock that moves on, leases of a few durations
 * (more than there are runs, sometimes), ids taken in order and items
 * given back and leased again, touches mostly forward and sometimes to
 * an earlier deadline, acknowledgements mostly oldest first, and a lease
 * held long at the head of the runs.  Against the model after every
 * step: the earliest deadline, the lowest id, the invariants; then the
 * leases run out in deadline order, and those of one duration taken in
 * id order run out in id order.
 */
static void
test_consumer_against_model(void **state)
{
    size_t      i, k, live, oldest, next_id, held;
    queue_t     q;
    model_t    *m;
    lease_t    *l;
    uint64_t    now, seq, dur, last_dl;
    item_ref_t  r;
    static const uint64_t  durs[] = { 30000, 30000, 30000, 60000, 5000,
                                      30000, 120000, 1000 };

    (void) state;

    memset(&q, 0, sizeof(q));
    m = calloc(ID_N, sizeof(model_t));
    assert_non_null(m);
    live = 0;
    now = 1000;
    oldest = 1;
    next_id = 1;

    /* one lease held long, at the lowest id */
    r = ref_of(0);
    m[0].deadline = now + 3600000;
    m[0].l = lease_add(&q, &r, m[0].deadline);
    m[0].live = 1;
    live++;
    held = 1;

    for (k = 0; next_id < ID_N - 1; k++) {
        now += next_rand() % 3;

        switch (next_rand() % 8) {
        case 0:
        case 1:
        case 2:
            /* a new id, or (1 in 16) one given back taken again */
            seq = next_id;
            if (next_rand() % 16 == 0 && oldest < next_id) {
                seq = oldest + next_rand() % (next_id - oldest);
                if (m[seq].live) {
                    break;
                }
            } else {
                next_id++;
            }
            dur = next_rand() % 4 == 0 ? durs[next_rand() % 8] : 30000;
            r = ref_of(seq);
            m[seq].deadline = now + dur;
            m[seq].l = lease_add(&q, &r, m[seq].deadline);
            assert_non_null(m[seq].l);
            m[seq].live = 1;
            live++;
            break;

        case 3:
            /* a touch: usually the same duration from now */
            seq = oldest + next_rand() % (next_id - oldest + 1);
            if (seq >= ID_N || !m[seq].live) {
                break;
            }
            m[seq].deadline = now + (next_rand() % 8 ? 30000
                                                     : next_rand() % 50);
            assert_true(lease_renew(m[seq].l, m[seq].deadline) == 0);
            break;

        default:
            /* acknowledged: mostly the oldest, sometimes any */
            while (oldest < next_id && !m[oldest].live) {
                oldest++;
            }
            seq = next_rand() % 4 ? oldest
                  : oldest + next_rand() % (next_id - oldest + 1);
            if (seq == 0 || seq >= ID_N || !m[seq].live) {
                break;
            }
            l = lease_find(&q, seq);
            assert_ptr_equal(l, m[seq].l);
            lease_remove(l);
            m[seq].live = 0;
            live--;
        }

        assert_true(q.leased_items == live && lease_count() == live);

        if (k % 61 == 0) {
            assert_true(check_order(&q.lseq, 1) == live);
            check_min(m, ID_N);
            check_min_seq(&q, m, ID_N);
        }
    }

    assert_true(check_order(&q.lseq, 1) == live);
    assert_true(live > held);

    /* they run out in deadline order */
    last_dl = 0;
    while ((l = lease_min()) != NULL) {
        assert_true(l->deadline >= last_dl);
        last_dl = l->deadline;
        seq = l->ref.seq;
        assert_true(m[seq].live && m[seq].deadline == l->deadline);
        m[seq].live = 0;
        lease_remove(l);
        live--;
        if (live % 101 == 0) {
            assert_true(check_order(&q.lseq, 1) == live);
            check_min_seq(&q, m, ID_N);
        }
    }

    assert_true(live == 0 && q.leased_items == 0);
    for (i = 0; i < ID_N; i++) {
        assert_false(m[i].live);
    }

    lease_drop_queue(&q);
    lease_shutdown();
    free(m);
}


/*
 * Leases of one duration taken in id order, acknowledged in id order
 * with one held at the head all along: every one goes to a run (the
 * heap stays empty), the run is compacted rather than grown, and they
 * run out in id order.
 */
static void
test_one_duration_in_order(void **state)
{
    size_t      i, n;
    queue_t     q;
    lease_t    *l;
    uint64_t    seq;
    item_ref_t  r;

    (void) state;

    memset(&q, 0, sizeof(q));
    n = 200000;

    r = ref_of(1);
    assert_non_null(lease_add(&q, &r, 1000));

    for (i = 2; i <= n; i++) {
        r = ref_of(i);
        assert_non_null(lease_add(&q, &r, 1000 + i / 10));
        if (i > 101) {
            lease_remove(lease_find(&q, i - 100));
        }
    }

    assert_true(q.leased_items == 101);
    assert_true(check_order(&q.lseq, 1) == 101);
    assert_true(q.lseq.hn == 0 && q.lseq.run[0].cap <= 1024);
    assert_true(lease_min_seq(&q) == 1);

    /* and they run out in id order */
    seq = 0;
    while ((l = lease_min()) != NULL) {
        assert_true(l->ref.seq > seq);
        seq = l->ref.seq;
        lease_remove(l);
    }
    assert_true(seq == n && q.leased_items == 0);

    lease_drop_queue(&q);
    lease_shutdown();
}


/*
 * Consumers that each hold a window of leases and acknowledge their
 * oldest, as the gateway's client mode does: the runs' rings wrap
 * around and never grow past twice the leases held, and every check
 * holds on the way (the positions of a lease go on past the ring's
 * size).
 */
static void
test_sliding_window_wraps(void **state)
{
    size_t      i, w, n, held;
    queue_t     q;
    lease_t    *l;
    uint64_t    next, pf[8];
    item_ref_t  r;

    (void) state;

    memset(&q, 0, sizeof(q));
    next = 1;
    n = 100000;
    held = 0;

    while (next <= n) {
        for (w = 0; w < 4; w++) {
            /* consumer w takes 16 ids, acknowledges down to 300 held */
            for (i = 0; i < 16; i++) {
                r = ref_of(next);
                r.deliveries = (uint32_t) w;
                assert_non_null(lease_add(&q, &r, 1000 + next / 16));
                next++;
                held++;
            }
            /* prefetching changes nothing, leased ids or not */
            for (i = 0; i < 8; i++) {
                pf[i] = next - held - 4 + i * 3;
            }
            lease_prefetch(&q, pf, 8);
            while (held > 4 * 300) {
                l = lease_min();
                assert_non_null(l);
                lease_remove(lease_find(&q, l->ref.seq));
                held--;
            }
        }
        if (next % 4096 < 64) {
            assert_true(check_order(&q.lseq, 1) == held);
        }
    }

    assert_true(q.leased_items == held);
    assert_true(check_order(&q.lseq, 1) == held);
    assert_true(q.lseq.hn == 0 && q.lseq.run[0].cap <= 2048);
    assert_true(q.lseq.run[0].tail > q.lseq.run[0].cap);
    assert_true(lease_min_seq(&q) == next - held);

    lease_drop_queue(&q);
    lease_shutdown();
}


static void
test_two_queues_and_drop(void **state)
{
    size_t      i, seen;
    queue_t     a, b;
    lease_t    *l;
    item_ref_t  r;

    (void) state;

    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));

    for (i = 1; i <= 1000; i++) {
        r = ref_of(i);
        assert_non_null(lease_add(&a, &r, 5000 - i));
        assert_non_null(lease_add(&b, &r, 10000 + i));
    }

    /* the same id on another queue is another lease */
    l = lease_find(&a, 7);
    assert_non_null(l);
    assert_ptr_equal(l->q, &a);
    assert_ptr_not_equal(lease_find(&b, 7), l);
    assert_null(lease_find(&a, 1001));
    assert_null(lease_find(&a, 0));

    assert_true(lease_min()->q == &a && lease_min()->deadline == 4000);

    assert_true(lease_min_seq(&a) == 1 && lease_min_seq(&b) == 1);
    lease_drop_queue(&a);
    assert_true(a.leased_items == 0 && a.lbuckets == NULL);
    assert_true(lease_min_seq(&a) == UINT64_MAX && a.lseq.heap == NULL
                && a.lseq.run[0].a == NULL);
    assert_true(lease_count() == 1000);
    assert_null(lease_find(&a, 7));
    assert_true(lease_min()->q == &b && lease_min()->deadline == 10001);

    seen = 0;
    lease_each(&b, count_each, &seen);
    assert_true(seen == 1000);

    lease_drop_queue(&b);
    assert_null(lease_min());
    lease_shutdown();
}


static void
test_100k(void **state)
{
    size_t      i, n;
    queue_t     q;
    lease_t    *l;
    item_ref_t  r;

    (void) state;

    memset(&q, 0, sizeof(q));
    n = 100000;

    for (i = 1; i <= n; i++) {
        r = ref_of(i);
        assert_non_null(lease_add(&q, &r, 1000 + (i * 7919) % 5000));
    }
    assert_true(q.leased_items == n);
    /* the table grew with the leases: chains stay short */
    assert_true(q.lbuckets_n >= n / 2);

    assert_true(lease_min_seq(&q) == 1);

    /* acknowledged in id order, as a consumer does: the lowest id
     * follows, and an item given back and leased again lowers it */
    for (i = 1; i <= n; i++) {
        l = lease_find(&q, i);
        assert_non_null(l);
        lease_remove(l);
        assert_true(lease_min_seq(&q) == (i < n ? i + 1 : UINT64_MAX));
        if (i == n / 2) {
            r = ref_of(3);
            assert_non_null(lease_add(&q, &r, 1));
            assert_true(lease_min_seq(&q) == 3);
            lease_remove(lease_find(&q, 3));
        }
    }
    assert_true(q.leased_items == 0 && lease_count() == 0);
    assert_null(lease_min());
    /* no lease left: no table either */
    assert_null(q.lbuckets);
    assert_true(q.lbuckets_n == 0);

    lease_drop_queue(&q);
    lease_shutdown();
}


#define RING_ID_N  200000


/*
 * One run (ids in order, one duration) whose window of leases wanders:
 * it wraps around the ring, grows while wrapped, shrinks, and loses
 * leases at its head, its tail and in between, so that compaction and
 * growth meet a ring whose head is anywhere.  Against the model after
 * every step: the invariants, the earliest and lowest live lease.
 */
static void
test_ring_wanders(void **state)
{
    size_t      i, k, held, lo, want;
    queue_t     q;
    lease_t    *l;
    uint64_t    next, seq;
    item_ref_t  r;
    static unsigned char  live[RING_ID_N + 1];

    (void) state;

    memset(&q, 0, sizeof(q));
    memset(live, 0, sizeof(live));
    next = 1;
    lo = 1;
    held = 0;

    for (k = 0; next < RING_ID_N - 3000; k++) {
        /* the window's size wanders between 1 and about 2500 */
        want = (size_t) (next_rand() % (k % 7 == 0 ? 2500 : 40)) + 1;

        while (held < want) {
            r = ref_of(next);
            assert_non_null(lease_add(&q, &r, 1000 + next));
            live[next++] = 1;
            held++;
        }

        for (i = next_rand() % 64; i > 0 && held > 1; i--) {
            switch (next_rand() % 3) {
            case 0:         /* its head, but for stretches where it stays
                             * and the run fills up behind it */
                if (k / 1024 % 2) {
                    seq = lo + next_rand() % (next - lo);
                    break;
                }
                while (!live[lo]) {
                    lo++;
                }
                seq = lo;
                break;
            case 1:         /* its tail */
                for (seq = next - 1; !live[seq]; seq--) {
                    /* void */
                }
                break;
            default:        /* anywhere, leased or not */
                seq = lo + next_rand() % (next - lo);
            }
            l = lease_find(&q, seq);
            assert_true((l != NULL) == live[seq]);
            if (l != NULL) {
                lease_remove(l);
                live[seq] = 0;
                held--;
            }
        }

        assert_true(check_order(&q.lseq, 1) == held);
        while (!live[lo]) {
            lo++;
        }
        assert_true(lease_min_seq(&q) == lo);
        l = lease_min();
        assert_non_null(l);
        assert_true(l->ref.seq == lo && l->deadline == 1000 + lo);
    }

    assert_true(q.lseq.hn == 0);
    lease_drop_queue(&q);
    lease_shutdown();
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_consumer_against_model),
        cmocka_unit_test(test_one_duration_in_order),
        cmocka_unit_test(test_sliding_window_wraps),
        cmocka_unit_test(test_two_queues_and_drop),
        cmocka_unit_test(test_100k),
        cmocka_unit_test(test_ring_wanders),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
