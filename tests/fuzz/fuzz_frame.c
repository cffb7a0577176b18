/*
 * fuzz_frame.c: libFuzzer target for record and segment-header decoding.
 *
 * The input is taken as a segment body: records are decoded back to back
 * with a small max_len, the way recovery scans a file, and after a bad
 * record the scan slides on by one byte to reach more decoder states.
 * A record that decodes must re-encode to the very same bytes; the two
 * CRC paths must agree on the input.
 */

#include <stdint.h>
#include <string.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


#define MAX_LEN  256

#define check(cond)  do { if (!(cond)) __builtin_trap(); } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc;
    size_t          off, left;
    uint64_t        seq;
    const char     *err;
    mq_frame_hdr_t  h, e;
    unsigned char   hdr[MQ_FRAME_HDR_SIZE], seg[MQ_SEG_HDR_SIZE];

    check(mq_crc32c(0, data, size) == mq_crc32c_sw(0, data, size));

    if (size >= MQ_SEG_HDR_SIZE
        && mq_frame_seg_decode(data, &seq) == MQ_OK)
    {
        mq_frame_seg_encode(seg, seq);
        check(memcmp(seg, data, MQ_SEG_HDR_SIZE) == 0);
    }

    off = 0;

    while (off < size) {
        left = size - off;

        err = NULL;
        rc = mq_frame_decode(data + off, left, MAX_LEN, &h, &err);

        if (rc == MQ_OK) {
            check(h.len <= MAX_LEN && h.kind == MQ_FRAME_ITEM);
            check(MQ_FRAME_HDR_SIZE + (size_t) h.len <= left);

            e = h;
            mq_frame_encode(hdr, &e, data + off + MQ_FRAME_HDR_SIZE);
            check(e.crc == h.crc);
            check(memcmp(hdr, data + off, MQ_FRAME_HDR_SIZE) == 0);

            off += MQ_FRAME_HDR_SIZE + h.len;
            continue;
        }

        if (rc == MQ_AGAIN) {
            check(h.len <= MAX_LEN);
            check(left < MQ_FRAME_HDR_SIZE + (size_t) h.len
                  || left < MQ_FRAME_HDR_SIZE);
            check(left >= MQ_FRAME_HDR_SIZE || h.len == 0);
            off++;
            continue;
        }

        check(rc == MQ_ERROR && err != NULL);
        off++;
    }

    return 0;
}
