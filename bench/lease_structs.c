/*
 * lease_structs.c: the lease structures of memqd (memqd/lease.c) alone,
 * under the traffic of the gateway's client mode: K consumers take
 * batches of 64 consecutive ids, each lease of one duration, and each
 * acknowledges its oldest ids, lists of 90, once it holds HOLD of them
 * and a list more.  Prints the CPU time per lease (taken and ended),
 * the best of REPEAT runs of N leases.
 *
 * usage: lease-structs [HOLD [N [REPEAT]]]   (4000, 2000000, 5)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lease.h"

#define K     10
#define BATCH 64
#define LIST  90


/* One run: CPU seconds for n leases; -1 on a failure. */
static double
run(size_t hold, size_t n)
{
    int          w, j;
    size_t       np[K], ph[K];
    double       t0, t;
    queue_t      q;
    lease_t     *l;
    uint64_t     next, now, *pend[K];
    item_ref_t   ref;

    memset(&q, 0, sizeof(q));
    memset(&ref, 0, sizeof(ref));
    memset(np, 0, sizeof(np));
    memset(ph, 0, sizeof(ph));

    for (w = 0; w < K; w++) {
        pend[w] = malloc((n + BATCH) * sizeof(uint64_t));
        if (pend[w] == NULL) {
            return -1;
        }
    }

    next = 1;
    now = 1000;
    t0 = (double) clock() / CLOCKS_PER_SEC;

    while (next <= n) {
        for (w = 0; w < K; w++) {
            for (j = 0; j < BATCH; j++) {
                ref.seq = next++;
                if (lease_add(&q, &ref, now + 60000) == NULL) {
                    return -1;
                }
                pend[w][np[w]++] = ref.seq;
            }
            now++;

            while (np[w] - ph[w] >= hold + LIST) {
                lease_prefetch(&q, &pend[w][ph[w]], LIST);
                for (j = 0; j < LIST; j++) {
                    l = lease_find(&q, pend[w][ph[w]++]);
                    if (l == NULL) {
                        return -1;
                    }
                    lease_remove(l);
                }
            }
        }
    }

    t = (double) clock() / CLOCKS_PER_SEC - t0;

    lease_drop_queue(&q);
    lease_shutdown();
    for (w = 0; w < K; w++) {
        free(pend[w]);
    }

    return t;
}


int
main(int argc, char **argv)
{
    int     r, repeat;
    size_t  hold, n;
    double  t, best;

    hold = argc > 1 ? (size_t) atol(argv[1]) : 4000;
    n = argc > 2 ? (size_t) atol(argv[2]) : 2000000;
    repeat = argc > 3 ? atoi(argv[3]) : 5;
    best = -1;

    for (r = 0; r < repeat; r++) {
        t = run(hold, n);
        if (t < 0) {
            fprintf(stderr, "lease-structs: a lease failed\n");
            return 1;
        }
        if (best < 0 || t < best) {
            best = t;
        }
    }

    printf("hold=%zu leases=%zu ns_per_lease=%.1f\n", hold, n,
           best * 1e9 / (double) n);
    return 0;
}
