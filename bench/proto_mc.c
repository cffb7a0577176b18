/*
 * proto_mc.c: the memcache text protocol, as memq and as memcached.
 *
 * memq:      produce "set <q> 0 0 <size>", consume "get <q>" (with
 *            "/close/open" under --ack and "/t=<ms>" under --wait); the
 *            last request of an --ack consumer is "get <q>/close", which
 *            acknowledges what it still has open.
 * memcached: not a queue but the protocol's ceiling: produce
 *            "set k<i> 0 0 <size>", consume "get k<i>" over the same keys.
 *
 * Replies: STORED; END (empty); VALUE <key> <flags> <bytes> [<cas>] +
 * data + END; DELETED; ERROR, CLIENT_ERROR and SERVER_ERROR lines.
 */

#include <stdio.h>
#include <string.h>

#include "bench.h"


#define MC_CRLF  "\r\n"


static unsigned
mc_setup(bench_buf_t *out, const bench_conf_t *cf, int producer)
{
    return 0;
}


static char *
mc_set(bench_buf_t *out, const bench_conf_t *cf, const char *key,
    size_t key_len, uint64_t id)
{
    char  *p;

    if (key != NULL) {
        if (bench_buf_printf(out, "set %.*s 0 0 %zu" MC_CRLF, (int) key_len,
                             key, cf->size) != 0)
        {
            return NULL;
        }

    } else if (bench_buf_printf(out, "set k%llu 0 0 %zu" MC_CRLF,
                                (unsigned long long) id, cf->size) != 0)
    {
        return NULL;
    }

    if (bench_buf_reserve(out, cf->size + 2) != 0) {
        return NULL;
    }

    p = out->data + out->len;
    memcpy(p + cf->size, MC_CRLF, 2);
    out->len += cf->size + 2;

    return p;
}


static char *
memq_produce(bench_buf_t *out, const bench_conf_t *cf, uint64_t id)
{
    return mc_set(out, cf, cf->queue, cf->queue_len, id);
}


static char *
memcached_produce(bench_buf_t *out, const bench_conf_t *cf, uint64_t id)
{
    return mc_set(out, cf, NULL, 0, id);
}


static int
memq_consume(bench_buf_t *out, const bench_conf_t *cf, uint64_t id)
{
    char  wait[32];

    wait[0] = '\0';

    if (cf->wait_ms >= 0) {
        (void) snprintf(wait, sizeof(wait), "/t=%lld",
                        (long long) cf->wait_ms);
    }

    return bench_buf_printf(out, "get %s%s%s" MC_CRLF, cf->queue,
                            cf->ack ? "/close/open" : "", wait);
}


static int
memcached_consume(bench_buf_t *out, const bench_conf_t *cf, uint64_t id)
{
    return bench_buf_printf(out, "get k%llu" MC_CRLF,
                            (unsigned long long) id);
}


static int
mc_ack(bench_buf_t *out, const bench_conf_t *cf, const bench_reply_t *r)
{
    return 0;
}


static int
memq_finish(bench_buf_t *out, const bench_conf_t *cf)
{
    if (!cf->ack) {
        return 0;
    }

    if (bench_buf_printf(out, "get %s/close" MC_CRLF, cf->queue) != 0) {
        return -1;
    }

    return 1;
}


static int
memcached_finish(bench_buf_t *out, const bench_conf_t *cf)
{
    return 0;
}


/* a line starting with word, followed by end of line or a space */
static int
mc_word(const char *line, size_t len, const char *word)
{
    size_t  n;

    n = strlen(word);

    return len >= n && memcmp(line, word, n) == 0
           && (len == n || line[n] == ' ');
}


/* parses the decimal at *pp, moves *pp past it; -1 when there is none */
static int
mc_number(const char **pp, const char *end, uint64_t *v)
{
    const char  *p;

    p = *pp;
    *v = 0;

    while (p < end && *p == ' ') {
        p++;
    }

    if (p == end || *p < '0' || *p > '9') {
        return -1;
    }

    while (p < end && *p >= '0' && *p <= '9') {
        if (*v > (UINT64_MAX - 9) / 10) {
            return -1;
        }
        *v = *v * 10 + (uint64_t) (*p++ - '0');
    }

    *pp = p;

    return 0;
}


static ssize_t
mc_parse(const char *buf, size_t len, bench_reply_t *r)
{
    size_t       n, need;
    uint64_t     flags, bytes;
    const char  *eol, *p, *end, *data;

    eol = memchr(buf, '\n', len);
    if (eol == NULL) {
        return len > 4096 ? -1 : 0;
    }

    n = (size_t) (eol - buf) + 1;
    end = (eol > buf && eol[-1] == '\r') ? eol - 1 : eol;

    memset(r, 0, sizeof(bench_reply_t));

    if (mc_word(buf, (size_t) (end - buf), "STORED")) {
        r->type = BENCH_REPLY_STORED;
        return (ssize_t) n;
    }

    if (mc_word(buf, (size_t) (end - buf), "END")) {
        r->type = BENCH_REPLY_EMPTY;
        return (ssize_t) n;
    }

    if (mc_word(buf, (size_t) (end - buf), "DELETED")) {
        r->type = BENCH_REPLY_OK;
        return (ssize_t) n;
    }

    if (mc_word(buf, (size_t) (end - buf), "ERROR")
        || mc_word(buf, (size_t) (end - buf), "CLIENT_ERROR")
        || mc_word(buf, (size_t) (end - buf), "SERVER_ERROR")
        || mc_word(buf, (size_t) (end - buf), "NOT_STORED"))
    {
        r->type = BENCH_REPLY_ERROR;
        r->text = buf;
        r->text_len = (size_t) (end - buf);
        return (ssize_t) n;
    }

    if (!mc_word(buf, (size_t) (end - buf), "VALUE")) {
        return -1;
    }

    /* VALUE <key> <flags> <bytes> [<cas>] */
    p = buf + 5;

    while (p < end && *p == ' ') {
        p++;
    }

    while (p < end && *p != ' ') {
        p++;
    }

    if (mc_number(&p, end, &flags) != 0 || mc_number(&p, end, &bytes) != 0
        || bytes > ((uint64_t) 1 << 32))
    {
        return -1;
    }

    /* data, CRLF, then END CRLF: this tool never asks for several items */
    need = n + (size_t) bytes + 2 + 5;
    if (len < need) {
        return 0;
    }

    data = buf + n;

    if (memcmp(data + bytes, "\r\nEND\r\n", 7) != 0) {
        return -1;
    }

    r->type = BENCH_REPLY_VALUE;
    r->value = data;
    r->value_len = (size_t) bytes;

    return (ssize_t) need;
}


const bench_proto_t  bench_proto_memq = {
    "memq", 1,
    mc_setup, memq_produce, memq_consume, mc_ack, memq_finish, mc_parse
};


const bench_proto_t  bench_proto_memcached = {
    "memcached", 0,
    mc_setup, memcached_produce, memcached_consume, mc_ack,
    memcached_finish, mc_parse
};
