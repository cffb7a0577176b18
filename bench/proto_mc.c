/*
 * proto_mc.c: the memcache text protocol, as memq and as memcached.
 *
 * memq:      produce "set <q> 0 0 <size>", consume "get <q>" (with
 *            "/close/open" under --ack, "/lease=<ms>" under --lease and
 *            "/t=<ms>" under --wait); the last requests of an --ack
 *            consumer are "get <q>/close", one for each queue it used,
 *            which acknowledge what it still has open there.  Under
 *            --lease every item is acknowledged by a pipelined
 *            "delete <q>/<id> noreply" as it arrives; the last "get
 *            <q>/close" then answers once every one of them has run.
 * memcached: not a queue but the protocol's ceiling: produce
 *            "set k<i> 0 0 <size>", consume "get k<i>" over the same keys.
 *
 * Replies: STORED; END (empty); VALUE <key> <flags> <bytes> [<cas>] +
 * data + END; DELETED; ERROR, CLIENT_ERROR, SERVER_ERROR, NOT_STORED
 * and NOT_FOUND lines are refusals.
 */

#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "mq_proto.h"


#define MC_CRLF       "\r\n"
#define MC_VALUE_MAX  ((uint64_t) 1 << 30)


static int
mc_select(bench_buf_t *out, const bench_conf_t *cf, int producer,
    const bench_queue_t *from, const bench_queue_t *q)
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
memq_produce(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    return mc_set(out, cf, q->name, q->len, id);
}


static char *
memcached_produce(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    return mc_set(out, cf, NULL, 0, id);
}


static int
memq_consume(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    char  wait[32], lease[32];

    wait[0] = '\0';
    lease[0] = '\0';

    if (cf->wait_ms >= 0) {
        (void) snprintf(wait, sizeof(wait), "/t=%lld",
                        (long long) cf->wait_ms);
    }

    if (cf->lease_ms > 0) {
        (void) snprintf(lease, sizeof(lease), "/lease=%lu",
                        (unsigned long) cf->lease_ms);
    }

    return bench_buf_printf(out, "get %s%s%s%s" MC_CRLF, q->name,
                            cf->ack ? "/close/open" : "", lease, wait);
}


static int
memcached_consume(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q, uint64_t id)
{
    return bench_buf_printf(out, "get k%llu" MC_CRLF,
                            (unsigned long long) id);
}


/* --lease: the item is acknowledged with no reply to wait for */
static int
memq_ack(bench_buf_t *out, const bench_conf_t *cf, const bench_reply_t *r)
{
    size_t  n;

    if (cf->lease_ms == 0) {
        return 0;
    }

    for (n = 0; n < r->key_len && r->key[n] != '/'; n++) {
        /* void */
    }

    if (bench_buf_printf(out, "delete %.*s/%llu noreply" MC_CRLF, (int) n,
                         r->key, (unsigned long long) r->job_id) != 0)
    {
        return -1;
    }

    return 0;
}


static int
mc_ack(bench_buf_t *out, const bench_conf_t *cf, const bench_reply_t *r)
{
    return 0;
}


static int
memq_finish(bench_buf_t *out, const bench_conf_t *cf, const bench_queue_t *q)
{
    if (!cf->ack && cf->lease_ms == 0) {
        return 0;
    }

    if (bench_buf_printf(out, "get %s/close" MC_CRLF, q->name) != 0) {
        return -1;
    }

    return 1;
}


static int
memcached_finish(bench_buf_t *out, const bench_conf_t *cf,
    const bench_queue_t *q)
{
    return 0;
}


/*
 * Reply header lines are split by common/'s mq_proto_parse_reply(), the
 * parser the gateway uses too; the data block and the END after it are
 * checked here.
 */
static ssize_t
mc_parse(const char *buf, size_t len, bench_reply_t *r)
{
    int          rc;
    size_t       need;
    mq_reply_t   mr;
    const char  *err, *data;

    rc = mq_proto_parse_reply(buf, len, MC_VALUE_MAX, &mr, &err);

    if (rc == MQ_AGAIN) {
        return 0;
    }

    if (rc != MQ_OK) {
        return -1;
    }

    memset(r, 0, sizeof(bench_reply_t));

    switch (mr.type) {

    case MQ_REPLY_STORED:
        r->type = BENCH_REPLY_STORED;
        return (ssize_t) mr.consumed;

    case MQ_REPLY_END:
        r->type = BENCH_REPLY_EMPTY;
        return (ssize_t) mr.consumed;

    case MQ_REPLY_DELETED:
    case MQ_REPLY_OK:
        r->type = BENCH_REPLY_OK;
        return (ssize_t) mr.consumed;

    case MQ_REPLY_ERROR:
    case MQ_REPLY_CLIENT_ERROR:
    case MQ_REPLY_SERVER_ERROR:
    case MQ_REPLY_NOT_STORED:
    case MQ_REPLY_NOT_FOUND:
        r->type = BENCH_REPLY_ERROR;
        r->text = buf;
        r->text_len = mr.consumed;

        while (r->text_len > 0
               && (buf[r->text_len - 1] == '\n'
                   || buf[r->text_len - 1] == '\r'))
        {
            r->text_len--;
        }

        return (ssize_t) mr.consumed;

    case MQ_REPLY_VALUE:
        break;

    default:
        return -1;
    }

    /* data, CRLF, then END CRLF: this tool never asks for several items */
    need = mr.consumed + (size_t) mr.bytes + 2 + 5;
    if (len < need) {
        return 0;
    }

    data = buf + mr.consumed;

    if (memcmp(data + mr.bytes, "\r\nEND\r\n", 7) != 0) {
        return -1;
    }

    r->type = BENCH_REPLY_VALUE;
    r->value = data;
    r->value_len = (size_t) mr.bytes;
    r->key = mr.key;
    r->key_len = mr.key_len;
    r->job_id = mr.cas;

    return (ssize_t) need;
}


const bench_proto_t  bench_proto_memq = {
    "memq", 1,
    mc_select, memq_produce, memq_consume, memq_ack, memq_finish, mc_parse
};


const bench_proto_t  bench_proto_memcached = {
    "memcached", 0,
    mc_select, memcached_produce, memcached_consume, mc_ack,
    memcached_finish, mc_parse
};
