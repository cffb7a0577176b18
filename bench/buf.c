/*
 * buf.c: growable byte buffers for requests and replies.
 *
 * data[pos..len) is the part not yet sent (out) or not yet parsed (in).
 * Reserving room first slides that part to the front, then grows the
 * buffer, so a pointer into it is valid only until the next reserve.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"


int
bench_buf_reserve(bench_buf_t *b, size_t n)
{
    size_t   cap;
    char    *p;

    if (b->cap - b->len >= n) {
        return 0;
    }

    if (b->pos > 0) {
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;

        if (b->cap - b->len >= n) {
            return 0;
        }
    }

    cap = b->cap ? b->cap : 4096;

    while (cap - b->len < n) {
        cap *= 2;
    }

    p = realloc(b->data, cap);
    if (p == NULL) {
        return -1;
    }

    b->data = p;
    b->cap = cap;

    return 0;
}


int
bench_buf_append(bench_buf_t *b, const void *p, size_t n)
{
    if (bench_buf_reserve(b, n) != 0) {
        return -1;
    }

    memcpy(b->data + b->len, p, n);
    b->len += n;

    return 0;
}


int
bench_buf_printf(bench_buf_t *b, const char *fmt, ...)
{
    int      n;
    size_t   room;
    va_list  ap;

    room = 256;

    for ( ;; ) {
        if (bench_buf_reserve(b, room) != 0) {
            return -1;
        }

        va_start(ap, fmt);
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);

        if (n < 0) {
            return -1;
        }

        if ((size_t) n < b->cap - b->len) {
            b->len += (size_t) n;
            return 0;
        }

        room = (size_t) n + 1;
    }
}
