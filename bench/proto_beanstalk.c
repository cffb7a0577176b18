/*
 * proto_beanstalk.c: beanstalkd tubes as a queue.
 *
 * setup:   producer "use <tube>" -> USING <tube>;
 *          consumer "watch <tube>" + "ignore default" -> WATCHING <n> twice
 * switch:  (--queues, a connection going round several tubes) producer
 *          "use <next>"; consumer "watch <next>" + "ignore <previous>",
 *          so that a consumer watches one tube at a time and the tube an
 *          item came from is known
 * produce: put 0 0 60 <size> + data  -> INSERTED <id>
 * consume: reserve-with-timeout <s>  -> RESERVED <id> <bytes> + data, or
 *          TIMED_OUT; each job taken is then removed with "delete <id>"
 *          (-> DELETED), pipelined behind the reserves.
 * <s> is 0 unless --wait asks for more (rounded up to whole seconds).
 */

#include <stdio.h>
#include <string.h>

#include "bench.h"


static int
bs_select(bench_buf_t *out, const bench_conf_t *cf, int producer,
    const bench_queue_t *from, const bench_queue_t *q)
{
    if (producer) {
        return bench_buf_printf(out, "use %s\r\n", q->name) == 0 ? 1 : -1;
    }

    /* watch first: ignoring the only tube watched is refused */
    return bench_buf_printf(out, "watch %s\r\nignore %s\r\n", q->name,
                            from != NULL ? from->name : "default") == 0
           ? 2 : -1;
}


static char *
bs_produce(bench_buf_t *out, const bench_conf_t *cf, const bench_queue_t *q,
    uint64_t id)
{
    char  *p;

    if (bench_buf_printf(out, "put 0 0 60 %zu\r\n", cf->size) != 0
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
bs_consume(bench_buf_t *out, const bench_conf_t *cf, const bench_queue_t *q,
    uint64_t id)
{
    long long  secs;

    secs = cf->wait_ms > 0 ? (cf->wait_ms + 999) / 1000 : 0;

    return bench_buf_printf(out, "reserve-with-timeout %lld\r\n", secs);
}


static int
bs_ack(bench_buf_t *out, const bench_conf_t *cf, const bench_reply_t *r)
{
    if (bench_buf_printf(out, "delete %llu\r\n",
                         (unsigned long long) r->job_id) != 0)
    {
        return -1;
    }

    return 1;
}


static int
bs_finish(bench_buf_t *out, const bench_conf_t *cf, const bench_queue_t *q)
{
    return 0;
}


static int
bs_word(const char *line, size_t len, const char *word)
{
    size_t  n;

    n = strlen(word);

    return len >= n && memcmp(line, word, n) == 0
           && (len == n || line[n] == ' ');
}


static ssize_t
bs_parse(const char *buf, size_t len, bench_reply_t *r)
{
    size_t               n, ll;
    unsigned long long   id, bytes;
    const char          *eol;
    char                 tmp[64];

    memset(r, 0, sizeof(bench_reply_t));

    eol = memchr(buf, '\n', len);
    if (eol == NULL) {
        return len > 4096 ? -1 : 0;
    }

    n = (size_t) (eol - buf) + 1;
    ll = (eol > buf && eol[-1] == '\r') ? n - 2 : n - 1;

    if (bs_word(buf, ll, "INSERTED")) {
        r->type = BENCH_REPLY_STORED;
        return (ssize_t) n;
    }

    if (bs_word(buf, ll, "USING") || bs_word(buf, ll, "WATCHING")
        || bs_word(buf, ll, "DELETED"))
    {
        r->type = BENCH_REPLY_OK;
        return (ssize_t) n;
    }

    if (bs_word(buf, ll, "TIMED_OUT")) {
        r->type = BENCH_REPLY_EMPTY;
        return (ssize_t) n;
    }

    if (!bs_word(buf, ll, "RESERVED")) {
        r->type = BENCH_REPLY_ERROR;
        r->text = buf;
        r->text_len = ll;
        return (ssize_t) n;
    }

    if (ll >= sizeof(tmp)) {
        return -1;
    }

    memcpy(tmp, buf, ll);
    tmp[ll] = '\0';

    if (sscanf(tmp, "RESERVED %llu %llu", &id, &bytes) != 2
        || bytes > ((unsigned long long) 1 << 32))
    {
        return -1;
    }

    if (len < n + bytes + 2) {
        return 0;
    }

    r->type = BENCH_REPLY_VALUE;
    r->value = buf + n;
    r->value_len = (size_t) bytes;
    r->job_id = id;

    return (ssize_t) (n + bytes + 2);
}


const bench_proto_t  bench_proto_beanstalk = {
    "beanstalk", 1,
    bs_select, bs_produce, bs_consume, bs_ack, bs_finish, bs_parse
};
