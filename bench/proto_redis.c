/*
 * proto_redis.c: Redis (RESP2) lists as a queue.
 *
 * produce: LPUSH <q> <payload>   -> :<length>
 * consume: RPOP <q>              -> $<n> + data, or $-1 when empty;
 *          with --wait, BRPOP <q> <seconds> -> *2 [key, data], or *-1.
 */

#include <stdio.h>
#include <string.h>

#include "bench.h"


static int
redis_select(bench_buf_t *out, const bench_conf_t *cf, int producer,
    const bench_queue_t *from, const bench_queue_t *q)
{
    return 0;
}


static char *
redis_produce(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    char  *p;

    if (bench_buf_printf(out, "*3\r\n$5\r\nLPUSH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                         q->len, q->name, cf->size) != 0
        || bench_buf_reserve(out, cf->size + 2) != 0)
    {
        return NULL;
    }

    p = out->data + out->len;
    memcpy(p + cf->size, "\r\n", 2);
    out->len += cf->size + 2;

    return p;
}


static int
redis_consume(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    char  secs[32];
    int   n;

    if (cf->wait_ms < 0) {
        return bench_buf_printf(out, "*2\r\n$4\r\nRPOP\r\n$%zu\r\n%s\r\n",
                                q->len, q->name);
    }

    /* BRPOP takes seconds; 0 would mean "forever" */
    n = snprintf(secs, sizeof(secs), "%.3f",
                 cf->wait_ms > 0 ? (double) cf->wait_ms / 1000.0 : 0.001);

    return bench_buf_printf(out,
                            "*3\r\n$5\r\nBRPOP\r\n$%zu\r\n%s\r\n$%d\r\n%s\r\n",
                            q->len, q->name, n, secs);
}


static int
redis_ack(bench_buf_t *out, const bench_conf_t *cf, const bench_reply_t *r)
{
    return 0;
}


static int
redis_finish(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q)
{
    return 0;
}


/* one RESP line at buf: its length with CRLF, 0 when incomplete */
static size_t
redis_line(const char *buf, size_t len, long long *num)
{
    const char  *eol;
    char         tmp[24];
    size_t       n;

    eol = memchr(buf, '\n', len);
    if (eol == NULL) {
        return 0;
    }

    n = (size_t) (eol - buf);

    if (num != NULL) {
        *num = 0;
        if (n >= 2 && n - 2 < sizeof(tmp)) {
            memcpy(tmp, buf + 1, n - 2);
            tmp[n - 2] = '\0';
            (void) sscanf(tmp, "%lld", num);
        }
    }

    return n + 1;
}


/* a bulk string at buf: bytes taken, 0 incomplete, -1 broken */
static ssize_t
redis_bulk(const char *buf, size_t len, bench_reply_t *r)
{
    size_t     n;
    long long  v;

    if (len == 0) {
        return 0;
    }

    if (buf[0] != '$') {
        return -1;
    }

    n = redis_line(buf, len, &v);
    if (n == 0) {
        return len > 64 ? -1 : 0;
    }

    if (v < 0) {
        r->type = BENCH_REPLY_EMPTY;
        return (ssize_t) n;
    }

    if (len < n + (size_t) v + 2) {
        return 0;
    }

    r->type = BENCH_REPLY_VALUE;
    r->value = buf + n;
    r->value_len = (size_t) v;

    return (ssize_t) (n + (size_t) v + 2);
}


static ssize_t
redis_parse(const char *buf, size_t len, bench_reply_t *r)
{
    size_t     n;
    ssize_t    k1, k2;
    long long  v;

    memset(r, 0, sizeof(bench_reply_t));

    if (len == 0) {
        return 0;
    }

    switch (buf[0]) {

    case '$':
        return redis_bulk(buf, len, r);

    case ':':
    case '+':
    case '-':
        n = redis_line(buf, len, NULL);
        if (n == 0) {
            return len > 4096 ? -1 : 0;
        }

        r->type = buf[0] == ':' ? BENCH_REPLY_STORED
                : buf[0] == '+' ? BENCH_REPLY_OK : BENCH_REPLY_ERROR;
        r->text = buf;
        r->text_len = n - 2;
        return (ssize_t) n;

    case '*':
        /* BRPOP: *-1, or *2 with the list name and the value */
        n = redis_line(buf, len, &v);
        if (n == 0) {
            return len > 64 ? -1 : 0;
        }

        if (v < 0) {
            r->type = BENCH_REPLY_EMPTY;
            return (ssize_t) n;
        }

        if (v != 2) {
            return -1;
        }

        k1 = redis_bulk(buf + n, len - n, r);
        if (k1 <= 0) {
            return k1;
        }

        k2 = redis_bulk(buf + n + k1, len - n - (size_t) k1, r);
        if (k2 <= 0) {
            return k2;
        }

        return (ssize_t) n + k1 + k2;

    default:
        return -1;
    }
}


const bench_proto_t  bench_proto_redis = {
    "redis", 1,
    redis_select, redis_produce, redis_consume, redis_ack, redis_finish,
    redis_parse
};
