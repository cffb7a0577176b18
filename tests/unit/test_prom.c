// links: memqd/prom.c
/*
 * test_prom.c: the Prometheus text writer of memqd's /metrics: label
 * values escaped as text format 0.0.4 says (backslash, double quote, line
 * feed; every other byte as it is), HELP/TYPE lines, fixed-point values,
 * histogram buckets (bounds included, cumulative, +Inf, _sum, _count),
 * and a buffer that stops at its limit and says so.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "prom.h"


/* b's text as a C string (for comparisons) */
static const char *
text(prom_buf_t *b)
{
    prom_mem(b, "", 1);
    b->len--;
    return b->p;
}


static prom_buf_t
buf(size_t max)
{
    prom_buf_t  b;

    memset(&b, 0, sizeof(b));
    b.max = max;
    return b;
}


static void
test_prom_escape(void **state)
{
    prom_buf_t  b = buf(1 << 20);

    prom_escape(&b, "a\\b\"c\nd", 7);
    assert_string_equal(text(&b), "a\\\\b\\\"c\\nd");
    prom_buf_free(&b);

    /* nothing else changes, NUL and CR included */
    prom_escape(&b, "x\ry\0z{}=,", 10);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.p, "x\ry\0z{}=,", 10);
    prom_buf_free(&b);

    /* escapes at the edges, and in a row */
    prom_escape(&b, "\"\\\n\n\"", 5);
    assert_string_equal(text(&b), "\\\"\\\\\\n\\n\\\"");
    prom_buf_free(&b);
}


static void
test_prom_family_and_samples(void **state)
{
    prom_buf_t  b = buf(1 << 20);

    prom_family(&b, "m", "gauge", "What it is.");
    prom_sample(&b, "m", "queue", "q\"1", 3, 42, 1);
    prom_sample(&b, "m", NULL, NULL, 0, 0, 1);
    prom_sample(&b, "m", "queue", "x", 1, 1500, 1000);
    prom_sample(&b, "m", "queue", "y", 1, 2000, 1000);
    prom_sample(&b, "m", "queue", "z", 1, 7, 1000);
    prom_sample(&b, "m", "queue", "w", 1, 18446744073709551615ull, 1);

    assert_string_equal(text(&b),
        "# HELP m What it is.\n"
        "# TYPE m gauge\n"
        "m{queue=\"q\\\"1\"} 42\n"
        "m 0\n"
        "m{queue=\"x\"} 1.5\n"
        "m{queue=\"y\"} 2\n"
        "m{queue=\"z\"} 0.007\n"
        "m{queue=\"w\"} 18446744073709551615\n");
    prom_buf_free(&b);
}


static void
test_prom_hist(void **state)
{
    size_t       i;
    prom_buf_t   b = buf(1 << 20);
    prom_hist_t  h;
    const char  *t;

    memset(&h, 0, sizeof(h));
    prom_hist_observe(&h, 0);
    prom_hist_observe(&h, 50);          /* on a bound: that bucket */
    prom_hist_observe(&h, 51);
    prom_hist_observe(&h, 5000000);
    prom_hist_observe(&h, 5000001);     /* past the last: +Inf */

    assert_int_equal(h.count, 5);
    assert_int_equal(h.sum_us, 10000102);
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 1);
    assert_int_equal(h.counts[PROM_HIST_BUCKETS - 1], 1);
    assert_int_equal(h.counts[PROM_HIST_BUCKETS], 1);

    for (i = 1; i < PROM_HIST_BUCKETS; i++) {
        assert_true(prom_hist_bounds[i] > prom_hist_bounds[i - 1]);
    }

    prom_hist(&b, "lat", "command", "s\"t", &h);
    t = text(&b);

    assert_non_null(strstr(t,
        "lat_bucket{command=\"s\\\"t\",le=\"0.00005\"} 2\n"
        "lat_bucket{command=\"s\\\"t\",le=\"0.0001\"} 3\n"));
    assert_non_null(strstr(t,
        "lat_bucket{command=\"s\\\"t\",le=\"2.5\"} 3\n"
        "lat_bucket{command=\"s\\\"t\",le=\"5\"} 4\n"
        "lat_bucket{command=\"s\\\"t\",le=\"+Inf\"} 5\n"
        "lat_sum{command=\"s\\\"t\"} 10.000102\n"
        "lat_count{command=\"s\\\"t\"} 5\n"));
    prom_buf_free(&b);

    /* without a label */
    prom_hist(&b, "f", NULL, NULL, &h);
    t = text(&b);
    assert_non_null(strstr(t, "f_bucket{le=\"+Inf\"} 5\nf_sum 10.000102\n"
                              "f_count 5\n"));
    prom_buf_free(&b);
}


static void
test_prom_buffer_limit(void **state)
{
    size_t      i;
    prom_buf_t  b = buf(100000);

    for (i = 0; i < 100000 && !b.failed; i++) {
        prom_str(&b, "0123456789");
    }

    assert_true(b.failed);
    assert_true(b.cap <= 100000);
    assert_true(b.len <= 100000);

    /* failed stays failed: nothing is appended any more */
    i = b.len;
    prom_str(&b, "x");
    assert_int_equal(b.len, i);
    prom_buf_free(&b);
    assert_false(b.failed);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_prom_escape),
        cmocka_unit_test(test_prom_family_and_samples),
        cmocka_unit_test(test_prom_hist),
        cmocka_unit_test(test_prom_buffer_limit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
