/*
 * fuzz_proto.c: libFuzzer target for the protocol parsers.
 *
 * The input is read twice: as a stream of requests (the way memqd walks
 * its connection buffer: find a line, parse it, walk the get keys, skip a
 * data block) and as a stream of replies (the way the gateway walks a node's
 * answer).  Each line is parsed from an exact-size copy, so reading past
 * its end is an ASan report, and every pointer handed back must stay inside
 * what was passed in.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mq_proto.h"


#define MAX_BYTES  (1u << 20)

#define check(cond)  do { if (!(cond)) __builtin_trap(); } while (0)

#define inside(p, n, base, blen)                                             \
    ((p) >= (base) && (n) <= (size_t) ((base) + (blen) - (p)))


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* An accepted /ack= list: inside the key, and exactly nacks ids. */
static void
fuzz_ack_ids(const mq_get_opts_t *o, const char *k, size_t klen)
{
    size_t       n;
    uint64_t     id;
    const char  *p, *end;

    check(o->acks_len > 0 && inside(o->acks, o->acks_len, k, klen));
    check(o->nacks >= 1 && o->nacks <= MQ_ACK_IDS_MAX);

    p = o->acks;
    end = o->acks + o->acks_len;
    n = 0;

    while (mq_proto_next_id(&p, end, &id) == MQ_OK) {
        check(p > o->acks && p <= end);
        n++;
    }

    check(n == o->nacks && p == end);
}


static void
fuzz_get_keys(const mq_request_t *req, const char *line, size_t len)
{
    int             rc;
    size_t          n, klen;
    const char     *p, *end, *k, *err;
    mq_get_opts_t   o;

    check(req->rest != NULL && req->rest_len > 0);
    check(inside(req->rest, req->rest_len, line, len));
    check(req->key == req->rest);

    p = req->rest;
    end = req->rest + req->rest_len;
    n = 0;

    while (mq_proto_next_key(&p, end, &k, &klen) == MQ_OK) {
        check(klen > 0 && inside(k, klen, req->rest, req->rest_len));
        check(memchr(k, ' ', klen) == NULL);
        check(p > k && p <= end);
        n++;

        err = NULL;
        rc = mq_proto_parse_get_key(k, klen, &o, &err);

        if (rc == MQ_OK) {
            check(o.name_len > 0 && o.name_len <= klen);
            check(o.name_len <= MQ_NAME_MAX);
            check(mq_name_valid(k, o.name_len));
            check(o.name_len == klen || k[o.name_len] == '/');
            check(o.wait_ms >= -1 && o.wait_ms <= MQ_GET_WAIT_MAX);
            check(o.count >= 1 && o.count <= MQ_GET_COUNT_MAX);
            check(o.lease_ms <= MQ_LEASE_MS_MAX);
            check(!o.lease_ms || !(o.open || o.peek));
            if (o.acks != NULL) {
                fuzz_ack_ids(&o, k, klen);
            } else {
                check(o.nacks == 0);
            }

        } else {
            check(rc == MQ_ERROR && err != NULL);
        }
    }

    check(p == end);
    check(n >= 1 && n <= MQ_KEYS_MAX);
}


static void
fuzz_request(const char *src, size_t len)
{
    int            rc;
    char          *line;
    const char    *err;
    mq_request_t   req;

    /* an exact-size copy: no NUL, no slack after the line */
    line = malloc(len ? len : 1);
    if (line == NULL) {
        return;
    }
    memcpy(line, src, len);

    err = NULL;
    rc = mq_proto_parse_request(line, len, &req, &err);

    check(rc == MQ_OK || rc == MQ_ERROR);
    check(rc == MQ_OK || err != NULL);
    check((unsigned) req.cmd <= MQ_CMD_UNKNOWN);
    check(mq_cmd_name(req.cmd) != NULL);

    if (req.key != NULL) {
        check(req.key_len > 0 && inside(req.key, req.key_len, line, len));
    }

    if (req.rest != NULL) {
        check(req.rest_len > 0 && inside(req.rest, req.rest_len, line, len));
        check(req.rest[0] != ' ' && req.rest[req.rest_len - 1] != ' ');
    }

    if (req.has_data) {
        check(req.cmd == MQ_CMD_SET || req.cmd == MQ_CMD_ADD
              || req.cmd == MQ_CMD_REPLACE || req.cmd == MQ_CMD_APPEND
              || req.cmd == MQ_CMD_PREPEND || req.cmd == MQ_CMD_CAS);
    }

    if (rc == MQ_OK) {
        switch (req.cmd) {

        case MQ_CMD_SET:
            check(req.has_data && mq_name_valid(req.key, req.key_len));
            break;

        case MQ_CMD_DELETE:
        case MQ_CMD_FLUSH:
            check(mq_name_valid(req.key, req.key_len));
            check(!req.has_id || req.cmd == MQ_CMD_DELETE);
            break;

        case MQ_CMD_TOUCH:
            check(mq_name_valid(req.key, req.key_len) && req.has_id);
            check(req.key[req.key_len] == '/');
            check(req.exptime >= 0
                  && req.exptime <= MQ_LEASE_MS_MAX / 1000);
            break;

        case MQ_CMD_GET:
        case MQ_CMD_GETS:
            fuzz_get_keys(&req, line, len);
            break;

        default:
            break;
        }
    }

    free(line);
}


static void
fuzz_requests(const char *buf, size_t size)
{
    int          rc;
    size_t       ll, used, left;
    const char  *p, *end, *err;
    mq_request_t req;

    p = buf;
    end = buf + size;

    while (p < end) {
        left = (size_t) (end - p);
        rc = mq_proto_find_line(p, left, &ll, &used);

        if (rc == MQ_AGAIN) {
            check(left <= MQ_LINE_MAX + 1);
            check(memchr(p, '\n', left) == NULL);
            fuzz_request(p, left);
            return;
        }

        if (rc == MQ_ERROR) {
            check(left > MQ_LINE_MAX);
            return;
        }

        check(rc == MQ_OK);
        check(ll <= MQ_LINE_MAX && used <= left);
        check(used == ll + 1 || used == ll + 2);
        check(p[used - 1] == '\n' && memchr(p, '\n', ll) == NULL);
        check(used == ll + 1 || p[ll] == '\r');

        fuzz_request(p, ll);

        /* skip the data block the way the server swallows it */
        rc = mq_proto_parse_request(p, ll, &req, &err);
        p += used;

        if (req.has_data) {
            left = (size_t) (end - p);
            if (req.bytes >= left || left - req.bytes < 2) {
                return;
            }
            p += req.bytes + 2;
        }

        (void) rc;
    }
}


static void
fuzz_replies(const char *buf, size_t size)
{
    int          rc;
    size_t       left;
    const char  *p, *end, *err;
    mq_reply_t   r;

    p = buf;
    end = buf + size;

    while (p < end) {
        left = (size_t) (end - p);

        err = NULL;
        rc = mq_proto_parse_reply(p, left, MAX_BYTES, &r, &err);

        if (rc == MQ_AGAIN) {
            check(memchr(p, '\n', left) == NULL && left <= MQ_LINE_MAX + 1);
            return;
        }

        if (rc == MQ_ERROR) {
            check(err != NULL);
            return;
        }

        check(rc == MQ_OK);
        check(r.consumed > 0 && r.consumed <= left);
        check(p[r.consumed - 1] == '\n');
        check(r.type <= MQ_REPLY_TOUCHED);

        if (r.key != NULL) {
            check(r.key_len > 0 && inside(r.key, r.key_len, p, r.consumed));
        }

        if (r.text != NULL) {
            check(inside(r.text, r.text_len, p, r.consumed));
        }

        p += r.consumed;

        if (r.type == MQ_REPLY_VALUE) {
            check(r.key != NULL && r.bytes <= MAX_BYTES);

            left = (size_t) (end - p);
            if (r.bytes >= left || left - r.bytes < 2) {
                return;
            }
            p += r.bytes + 2;
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_requests((const char *) data, size);
    fuzz_replies((const char *) data, size);

    return 0;
}
