/*
 * payload.c: message bodies and the --verify bookkeeping.
 *
 * Without --verify every message is the same filler.  With it, message id
 * of run R is
 *
 *     R ":" id ":" filler crc
 *
 * where id is decimal, filler is printable and derived from (R, id) only,
 * and crc is the CRC32 (IEEE, as zlib's crc32()) of everything before it,
 * as 8 lowercase hex digits.  A consumer can thus check an item knowing
 * only the run id: the CRC catches damage (the id included), and a bitmap
 * over 0..count-1 counts the ids never seen (lost) and those seen twice
 * (dup).  The CRC is deliberately
 * not memqd's CRC32C, so the check does not share code with what it checks.
 *
 * With --queues N > 1 the index of the queue the message was produced
 * into follows the id:
 *
 *     R ":" id ":" queue ":" filler crc
 *
 * so that an item taken from another queue is counted (misplaced).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"


struct bench_verify_s {
    const bench_conf_t   *cf;         /* (ref) */
    uint64_t             *seen;       /* bitmap over ids 0..count-1 */
    uint64_t              dup;
    uint64_t              corrupt;
    uint64_t              misplaced;
};


static const char  alphabet[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

static uint32_t    crc_table[8][256];
static int         crc_ready;
static char       *plain;     /* the payload without --verify */


static void
crc_init(void)
{
    uint32_t  c, i, k;

    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++) {
            c = (c & 1) ? 0xedb88320 ^ (c >> 1) : c >> 1;
        }
        crc_table[0][i] = c;
    }

    for (i = 0; i < 256; i++) {
        for (k = 1; k < 8; k++) {
            crc_table[k][i] = (crc_table[k - 1][i] >> 8)
                              ^ crc_table[0][crc_table[k - 1][i] & 0xff];
        }
    }

    crc_ready = 1;
}


static uint32_t
load_le32(const unsigned char *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}


/* CRC32 (IEEE), eight bytes a step (slicing-by-8) */
static uint32_t
crc32_ieee(const char *buf, size_t n)
{
    uint32_t              c, hi;
    const unsigned char  *p;

    if (!crc_ready) {
        crc_init();
    }

    p = (const unsigned char *) buf;
    c = 0xffffffff;

    while (n >= 8) {
        c ^= load_le32(p);
        hi = load_le32(p + 4);

        c = crc_table[7][c & 0xff] ^ crc_table[6][(c >> 8) & 0xff]
            ^ crc_table[5][(c >> 16) & 0xff] ^ crc_table[4][c >> 24]
            ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff]
            ^ crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];

        p += 8;
        n -= 8;
    }

    while (n--) {
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    }

    return c ^ 0xffffffff;
}


static uint64_t
run_hash(const char *s)
{
    uint64_t  h;

    /* FNV-1a */
    h = 0xcbf29ce484222325ULL;

    while (*s) {
        h ^= (unsigned char) *s++;
        h *= 0x100000001b3ULL;
    }

    return h;
}


size_t
bench_payload_min_size(const bench_conf_t *cf)
{
    char    tmp[32];
    size_t  n;

    n = strlen(cf->run_id) + 2
        + (size_t) snprintf(tmp, sizeof(tmp), "%llu",
                            (unsigned long long) (cf->count ? cf->count - 1
                                                            : 0))
        + BENCH_CRC_LEN;

    if (cf->queues > 1) {
        n += (size_t) snprintf(tmp, sizeof(tmp), "%u", cf->queues - 1) + 1;
    }

    return n;
}


void
bench_payload_fill(const bench_conf_t *cf, char *p, uint64_t id, unsigned q)
{
    int       n;
    size_t    i, k, end;
    uint32_t  crc;
    uint64_t  x, r;
    char      hex[BENCH_CRC_LEN + 1];

    if (!cf->verify) {
        /* the same bytes every time: copy them, do not make them */
        if (plain == NULL) {
            plain = malloc(cf->size + 1);
            if (plain == NULL) {
                memset(p, 'x', cf->size);
                return;
            }

            for (i = 0; i < cf->size; i++) {
                plain[i] = alphabet[i % 62];
            }
        }

        memcpy(p, plain, cf->size);
        return;
    }

    /* the caller checked that size >= bench_payload_min_size() */
    if (cf->queues > 1) {
        n = snprintf(p, cf->size, "%s:%llu:%u:", cf->run_id,
                     (unsigned long long) id, q);

    } else {
        n = snprintf(p, cf->size, "%s:%llu:", cf->run_id,
                     (unsigned long long) id);
    }

    end = cf->size - BENCH_CRC_LEN;

    /* xorshift64*, seeded by run and id */
    x = run_hash(cf->run_id) ^ ((id + 1) * 0x9e3779b97f4a7c15ULL);

    for (i = (size_t) n; i < end; /* void */) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r = x * 0x2545f4914f6cdd1dULL;

        for (k = 0; k < 8 && i < end; k++, i++) {
            p[i] = alphabet[r & 63];
            r >>= 8;
        }
    }

    crc = crc32_ieee(p, end);
    snprintf(hex, sizeof(hex), "%08x", crc);
    memcpy(p + end, hex, BENCH_CRC_LEN);
}


bench_verify_t *
bench_verify_create(const bench_conf_t *cf)
{
    bench_verify_t  *v;

    v = calloc(1, sizeof(bench_verify_t));
    if (v == NULL) {
        return NULL;
    }

    v->cf = cf;
    v->seen = calloc(cf->count / 64 + 1, sizeof(uint64_t));

    if (v->seen == NULL) {
        bench_verify_destroy(v);
        return NULL;
    }

    return v;
}


void
bench_verify_destroy(bench_verify_t *v)
{
    if (v == NULL) {
        return;
    }

    free(v->seen);
    free(v);
}


/* a decimal number at p[*i..end) followed by ':'; -1 when there is none */
static int
verify_number(const char *p, size_t *i, size_t end, uint64_t *v)
{
    size_t  k;

    *v = 0;

    for (k = *i; k < end && p[k] >= '0' && p[k] <= '9'; k++) {
        if (*v > (UINT64_MAX - 9) / 10) {
            return -1;
        }
        *v = *v * 10 + (uint64_t) (p[k] - '0');
    }

    if (k == *i || k == end || p[k] != ':') {
        return -1;
    }

    *i = k + 1;

    return 0;
}


void
bench_verify_item(bench_verify_t *v, const char *p, size_t n, unsigned q)
{
    size_t               rl, i, end;
    uint32_t             crc;
    uint64_t             id, from, bit;
    const bench_conf_t  *cf;
    char                 hex[BENCH_CRC_LEN + 1];

    cf = v->cf;

    if (n != cf->size) {
        goto corrupt;
    }

    rl = strlen(cf->run_id);

    if (n < rl + 2 + BENCH_CRC_LEN
        || memcmp(p, cf->run_id, rl) != 0 || p[rl] != ':')
    {
        goto corrupt;
    }

    end = n - BENCH_CRC_LEN;
    i = rl + 1;
    from = q;

    if (verify_number(p, &i, end, &id) != 0 || id >= cf->count) {
        goto corrupt;
    }

    if (cf->queues > 1
        && (verify_number(p, &i, end, &from) != 0 || from >= cf->queues))
    {
        goto corrupt;
    }

    crc = crc32_ieee(p, end);
    snprintf(hex, sizeof(hex), "%08x", crc);

    if (memcmp(p + end, hex, BENCH_CRC_LEN) != 0) {
        goto corrupt;
    }

    if (from != q) {
        v->misplaced++;
    }

    bit = (uint64_t) 1 << (id % 64);

    if (v->seen[id / 64] & bit) {
        v->dup++;
        return;
    }

    v->seen[id / 64] |= bit;
    return;

corrupt:

    v->corrupt++;
}


void
bench_verify_report(bench_verify_t *v, uint64_t upto, bench_result_t *res)
{
    uint64_t  i, seen;

    seen = 0;

    for (i = 0; i < upto; i++) {
        if (i % 64 == 0 && i + 64 <= upto) {
            seen += (uint64_t) __builtin_popcountll(v->seen[i / 64]);
            i += 63;
            continue;
        }

        seen += (v->seen[i / 64] >> (i % 64)) & 1;
    }

    res->lost = upto - seen;
    res->dup = v->dup;
    res->corrupt = v->corrupt;
    res->misplaced = v->misplaced;
}
