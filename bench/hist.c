/*
 * hist.c: latency histogram for memq-bench.
 *
 * Log-linear buckets over microseconds: values below 128 have a bucket
 * each; above, every power of two is split into 64 buckets, so a bucket is
 * at most 1/64 (about 1.5%) wide.  Adding is a few instructions and the
 * histogram is a fixed 25 KiB, whatever the number of requests.
 */

#include "bench.h"


static unsigned
hist_index(uint64_t v)
{
    unsigned  msb, shift, i;

    if (v < 128) {
        return (unsigned) v;
    }

    msb = 63 - (unsigned) __builtin_clzll(v);
    shift = msb - 6;
    i = 128 + (shift - 1) * 64 + (unsigned) ((v >> shift) - 64);

    return i < BENCH_HIST_BUCKETS ? i : BENCH_HIST_BUCKETS - 1;
}


/* the middle of bucket i, as a value */
static uint64_t
hist_value(unsigned i)
{
    unsigned  shift;
    uint64_t  lo;

    if (i < 128) {
        return i;
    }

    shift = (i - 128) / 64 + 1;
    lo = (uint64_t) (64 + (i - 128) % 64) << shift;

    return lo + ((uint64_t) 1 << shift) / 2;
}


void
bench_hist_add(bench_hist_t *h, uint64_t us)
{
    h->b[hist_index(us)]++;
    h->n++;

    if (us > h->max) {
        h->max = us;
    }
}


/* the value below which pct percent of the samples are, 0 when empty */
uint64_t
bench_hist_pct(const bench_hist_t *h, double pct)
{
    unsigned  i;
    uint64_t  want, seen, v;

    if (h->n == 0) {
        return 0;
    }

    want = (uint64_t) ((double) h->n * pct / 100.0);
    if (want == 0) {
        want = 1;
    }

    seen = 0;

    for (i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }

    return h->max;
}
