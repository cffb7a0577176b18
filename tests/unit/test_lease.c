// links: memqd/lease.c
/*
 * test_lease.c: the lease structures (memqd/lease.c): the per-queue id
 * table and id heap and the node-wide deadline heap, checked against a
 * plain model
 * through random adds, renewals and removals, and at 100,000 leases.
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
            lease_renew(m[i].l, m[i].deadline);
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
    assert_true(lease_min_seq(&a) == UINT64_MAX && a.lseq.a == NULL);
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


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_two_queues_and_drop),
        cmocka_unit_test(test_100k),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
