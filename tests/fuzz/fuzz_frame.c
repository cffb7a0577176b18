/*
 * fuzz_frame.c: libFuzzer target for record framing (common/mq_frame.h).
 *
 * The input is taken as a file body and read three ways:
 *
 *   - as version 2 records, the way recovery scans a segment or the
 *     journal: a good record is skipped whole, a record whose header is
 *     good but whose payload is not (MQ_DECLINED) is skipped by the length
 *     its header gives, and anything else is passed over with
 *     mq_frame_resync(), which must land on the first offset whose header
 *     is good and nowhere earlier;
 *   - as version 1 records, sliding on by one byte after a bad one;
 *   - as a segment header and a journal header.
 *
 * A record that decodes must re-encode to the very same bytes, every
 * answer must keep its contract (lengths bounded, h filled in exactly when
 * the header was good, an error string with every MQ_ERROR), and the two
 * CRC paths must agree on the input.
 */

#include <stdint.h>
#include <string.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


#define MAX_LEN  256
#define MARK     0x5eedf00du     /* records are decoded as of this file */

#define check(cond)  do { if (!(cond)) __builtin_trap(); } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* Whether a good version 2 header starts at p (MQ_FRAME_HDR_SIZE bytes
 * present): decoding the header alone then says so. */
static int
good_header(const uint8_t *p)
{
    int             rc;
    const char     *err;
    mq_frame_hdr_t  h;

    rc = mq_frame_decode(p, MQ_FRAME_HDR_SIZE, MAX_LEN, MARK, &h, &err);
    return rc != MQ_ERROR;
}


static void
scan_v2(const uint8_t *data, size_t size)
{
    int             rc;
    size_t          off, left, next, p;
    const char     *err;
    mq_frame_hdr_t  h, e;
    unsigned char   hdr[MQ_FRAME_HDR_SIZE];

    off = 0;

    while (off < size) {
        left = size - off;

        err = NULL;
        rc = mq_frame_decode(data + off, left, MAX_LEN, MARK, &h, &err);

        if (rc == MQ_OK || rc == MQ_DECLINED) {
            check(h.len <= MAX_LEN);
            check(h.kind >= MQ_FRAME_ITEM && h.kind <= MQ_FRAME_JACKS);
            check(MQ_FRAME_HDR_SIZE + (size_t) h.len <= left);
            check(mq_frame_resync(data, off, size, MAX_LEN, MARK) == off);

            if (rc == MQ_OK) {
                e = h;
                mq_frame_encode(hdr, &e, data + off + MQ_FRAME_HDR_SIZE, MARK);
                check(e.crc == h.crc);
                check(memcmp(hdr, data + off, MQ_FRAME_HDR_SIZE) == 0);

            } else {
                check(err != NULL);
                check(mq_crc32c(0, data + off + MQ_FRAME_HDR_SIZE, h.len)
                      != h.crc);
            }

            off += MQ_FRAME_HDR_SIZE + h.len;
            continue;
        }

        if (rc == MQ_AGAIN) {
            if (left < MQ_FRAME_HDR_SIZE) {
                /* not told yet: fewer than four bytes, or the magic */
                check(h.len == 0);
                check(left < 4 || memcmp(data + off, "MQR2", 4) == 0);
            } else {
                /* a good header whose payload is cut off */
                check(h.len <= MAX_LEN && h.len > 0);
                check(left < MQ_FRAME_HDR_SIZE + (size_t) h.len);
                check(mq_frame_resync(data, off, size, MAX_LEN, MARK) == off);
            }

        } else {
            check(rc == MQ_ERROR && err != NULL);
            check(h.len == 0);
            check(left < MQ_FRAME_HDR_SIZE
                  || mq_frame_resync(data, off, size, MAX_LEN, MARK) != off);
        }

        /* pass over it the way a reader does after damage: the next good
         * header, and no good header before it */
        next = mq_frame_resync(data, off + 1, size, MAX_LEN, MARK);
        check(next > off && next <= size);

        for (p = off + 1; p < next && p + MQ_FRAME_HDR_SIZE <= size; p++) {
            check(!good_header(data + p));
        }

        if (next < size) {
            check(next + MQ_FRAME_HDR_SIZE <= size);
            check(good_header(data + next));
        }

        off = next;
    }
}


static void
scan_v1(const uint8_t *data, size_t size)
{
    int             rc;
    size_t          off, left;
    const char     *err;
    mq_frame_hdr_t  h;

    off = 0;

    while (off < size) {
        left = size - off;

        err = NULL;
        rc = mq_frame_decode_v1(data + off, left, MAX_LEN, &h, &err);

        if (rc == MQ_OK) {
            check(h.len <= MAX_LEN && h.kind == MQ_FRAME_ITEM);
            check(MQ_FRAME_V1_HDR_SIZE + (size_t) h.len <= left);
            check(mq_crc32c(0, data + off + 4,
                            MQ_FRAME_V1_HDR_SIZE - 4 + (size_t) h.len)
                  == h.crc);
            off += MQ_FRAME_V1_HDR_SIZE + h.len;
            continue;
        }

        /* version 1 records have no payload CRC of their own */
        check(rc == MQ_AGAIN || rc == MQ_ERROR);
        check(rc == MQ_AGAIN || err != NULL);
        check(rc == MQ_ERROR || h.len <= MAX_LEN);
        off++;
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned        ver;
    uint32_t        mark, vote;
    unsigned char   b[MQ_SEG_HDR_SIZE];

    check(mq_crc32c(0, data, size) == mq_crc32c_sw(0, data, size));

    if (size >= MQ_SEG_HDR_SIZE) {
        if (mq_frame_seg_decode(data, &ver, &mark) == MQ_OK) {
            check(ver == 1 || ver == MQ_SEG_VERSION);
            if (ver == MQ_SEG_VERSION) {
                mq_frame_seg_encode(b, mark);
                check(memcmp(b, data, MQ_SEG_HDR_SIZE) == 0);
            } else {
                check(mark == 0);
            }
        }

        if (mq_frame_jnl_decode(data, &mark) == MQ_OK) {
            mq_frame_jnl_encode(b, mark);
            check(memcmp(b, data, MQ_SEG_HDR_SIZE) == 0);
        }
    }

    /* a vote names a mark some record in the input checks with */
    if (mq_frame_mark_vote(data, 0, size, MAX_LEN, &vote) == MQ_OK) {
        check(mq_frame_resync(data, 0, size, MAX_LEN, vote) < size);
    }

    scan_v2(data, size);
    scan_v1(data, size);

    return 0;
}
