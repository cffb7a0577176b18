/*
 * prom.c: see prom.h.  Numbers are formatted by hand (integers and
 * fixed-point decimals), so the text never depends on the locale.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

#define PROM_BUF_MIN  65536


/* 50 us .. 5 s: from a page-cache fdatasync to a stalled disk */
const uint64_t  prom_hist_bounds[PROM_HIST_BUCKETS] = {
    50, 100, 250, 500,
    1000, 2500, 5000, 10000,
    25000, 50000, 100000, 250000,
    500000, 1000000, 2500000, 5000000
};


void
prom_hist_observe(prom_hist_t *h, uint64_t us)
{
    size_t  i;

    for (i = 0; i < PROM_HIST_BUCKETS && us > prom_hist_bounds[i]; i++) {
        /* void */
    }

    h->counts[i]++;
    h->count++;
    h->sum_us += us;
}


static int
grow(prom_buf_t *b, size_t n)
{
    char    *np;
    size_t   cap;

    if (b->failed) {
        return -1;
    }

    if (b->len + n <= b->cap) {
        return 0;
    }

    cap = b->cap ? b->cap : PROM_BUF_MIN;
    while (cap < b->len + n) {
        cap *= 2;
    }

    if (cap > b->max) {
        cap = b->max;
    }

    if (b->len + n > cap) {
        b->failed = 1;
        return -1;
    }

    np = realloc(b->p, cap);
    if (np == NULL) {
        b->failed = 1;
        return -1;
    }

    b->p = np;
    b->cap = cap;
    return 0;
}


void
prom_mem(prom_buf_t *b, const char *s, size_t n)
{
    if (n == 0 || grow(b, n) != 0) {
        return;
    }

    memcpy(b->p + b->len, s, n);
    b->len += n;
}


void
prom_str(prom_buf_t *b, const char *s)
{
    prom_mem(b, s, strlen(s));
}


void
prom_escape(prom_buf_t *b, const char *s, size_t n)
{
    size_t  i, start;

    for (i = 0, start = 0; i < n; i++) {
        if (s[i] != '\\' && s[i] != '"' && s[i] != '\n') {
            continue;
        }

        prom_mem(b, s + start, i - start);
        prom_mem(b, s[i] == '\\' ? "\\\\" : s[i] == '"' ? "\\\"" : "\\n", 2);
        start = i + 1;
    }

    prom_mem(b, s + start, n - start);
}


void
prom_family(prom_buf_t *b, const char *name, const char *type,
    const char *help)
{
    prom_str(b, "# HELP ");
    prom_str(b, name);
    prom_str(b, " ");
    prom_str(b, help);
    prom_str(b, "\n# TYPE ");
    prom_str(b, name);
    prom_str(b, " ");
    prom_str(b, type);
    prom_str(b, "\n");
}


/* v / scale in decimal: scale is 1, or a power of ten up to 10^6 */
static void
number(prom_buf_t *b, uint64_t v, unsigned scale)
{
    int       n, digits;
    char      buf[48];
    unsigned  s;

    if (scale <= 1) {
        n = snprintf(buf, sizeof(buf), "%" PRIu64, v);

    } else {
        for (digits = 0, s = scale; s > 1; s /= 10) {
            digits++;
        }
        n = snprintf(buf, sizeof(buf), "%" PRIu64 ".%0*" PRIu64,
                     v / scale, digits, v % scale);
        /* trailing zeros (and a bare dot) say nothing */
        while (buf[n - 1] == '0') {
            n--;
        }
        if (buf[n - 1] == '.') {
            n--;
        }
    }

    prom_mem(b, buf, (size_t) n);
}


static void
sample_start(prom_buf_t *b, const char *name, const char *suffix,
    const char *lname, const char *lval, size_t llen)
{
    prom_str(b, name);
    prom_str(b, suffix);

    if (lname != NULL) {
        prom_str(b, "{");
        prom_str(b, lname);
        prom_str(b, "=\"");
        prom_escape(b, lval, llen);
        prom_str(b, "\"}");
    }

    prom_str(b, " ");
}


void
prom_sample(prom_buf_t *b, const char *name, const char *lname,
    const char *lval, size_t llen, uint64_t v, unsigned scale)
{
    sample_start(b, name, "", lname, lval, llen);
    number(b, v, scale);
    prom_str(b, "\n");
}


void
prom_hist(prom_buf_t *b, const char *name, const char *lname,
    const char *lval, const prom_hist_t *h)
{
    size_t    i;
    uint64_t  cum;

    for (i = 0, cum = 0; i <= PROM_HIST_BUCKETS; i++) {
        cum += h->counts[i];

        prom_str(b, name);
        prom_str(b, "_bucket{");
        if (lname != NULL) {
            prom_str(b, lname);
            prom_str(b, "=\"");
            prom_escape(b, lval, strlen(lval));
            prom_str(b, "\",");
        }
        prom_str(b, "le=\"");
        if (i < PROM_HIST_BUCKETS) {
            number(b, prom_hist_bounds[i], 1000000);
        } else {
            prom_str(b, "+Inf");
        }
        prom_str(b, "\"} ");
        number(b, cum, 1);
        prom_str(b, "\n");
    }

    sample_start(b, name, "_sum", lname, lval, lval ? strlen(lval) : 0);
    number(b, h->sum_us, 1000000);
    prom_str(b, "\n");
    sample_start(b, name, "_count", lname, lval, lval ? strlen(lval) : 0);
    number(b, h->count, 1);
    prom_str(b, "\n");
}


void
prom_buf_free(prom_buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = 0;
}
