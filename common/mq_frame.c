/*
 * mq_frame.c: encode and decode segment headers and records (the layout is
 * documented in mq_frame.h, next to its version number).
 *
 * Integers are written byte by byte in little-endian order, so files are
 * the same on every host.  A decoder trusts nothing: the length is bounded
 * by the caller's max_len before it is used for anything, the kind must be
 * known, and the CRC must match before a record is handed out.
 */

#include <string.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


static const unsigned char  mq_seg_magic[8] = {
    'M', 'Q', 'S', 'E', 'G', 0, 0, MQ_SEG_VERSION
};


static void
mq_put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) v;
    p[1] = (unsigned char) (v >> 8);
    p[2] = (unsigned char) (v >> 16);
    p[3] = (unsigned char) (v >> 24);
}


static void
mq_put_le64(unsigned char *p, uint64_t v)
{
    mq_put_le32(p, (uint32_t) v);
    mq_put_le32(p + 4, (uint32_t) (v >> 32));
}


static uint32_t
mq_get_le32(const unsigned char *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8
           | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}


static uint64_t
mq_get_le64(const unsigned char *p)
{
    return (uint64_t) mq_get_le32(p) | (uint64_t) mq_get_le32(p + 4) << 32;
}


void
mq_frame_encode(unsigned char *dst, mq_frame_hdr_t *h, const void *payload)
{
    uint32_t  crc;

    mq_put_le32(dst + 4, h->len);
    mq_put_le32(dst + 8, h->flags);
    mq_put_le32(dst + 12, h->kind);
    mq_put_le64(dst + 16, h->seq);
    mq_put_le64(dst + 24, h->ctime);
    mq_put_le64(dst + 32, (uint64_t) h->exptime);

    crc = mq_crc32c(0, dst + 4, MQ_FRAME_HDR_SIZE - 4);
    crc = mq_crc32c(crc, payload, h->len);

    h->crc = crc;
    mq_put_le32(dst, crc);
}


int
mq_frame_decode(const unsigned char *buf, size_t avail, uint32_t max_len,
    mq_frame_hdr_t *h, const char **err)
{
    uint32_t  crc;

    memset(h, 0, sizeof(*h));

    /* the length is checked as soon as its bytes are there, so a corrupt
     * length never makes a reader wait for (or read) a huge payload */

    if (avail < 8) {
        return MQ_AGAIN;
    }

    if (mq_get_le32(buf + 4) > max_len) {
        *err = "bad length";
        return MQ_ERROR;
    }

    if (avail < MQ_FRAME_HDR_SIZE) {
        return MQ_AGAIN;
    }

    h->crc = mq_get_le32(buf);
    h->len = mq_get_le32(buf + 4);
    h->flags = mq_get_le32(buf + 8);
    h->kind = mq_get_le32(buf + 12);
    h->seq = mq_get_le64(buf + 16);
    h->ctime = mq_get_le64(buf + 24);
    h->exptime = (int64_t) mq_get_le64(buf + 32);

    if (h->kind != MQ_FRAME_ITEM) {
        *err = "unknown kind";
        return MQ_ERROR;
    }

    if (avail - MQ_FRAME_HDR_SIZE < h->len) {
        return MQ_AGAIN;
    }

    crc = mq_crc32c(0, buf + 4, MQ_FRAME_HDR_SIZE - 4 + (size_t) h->len);

    if (crc != h->crc) {
        *err = "bad crc";
        return MQ_ERROR;
    }

    return MQ_OK;
}


void
mq_frame_seg_encode(unsigned char *dst, uint64_t first_seq)
{
    memcpy(dst, mq_seg_magic, sizeof(mq_seg_magic));
    mq_put_le64(dst + 8, first_seq);
}


int
mq_frame_seg_decode(const unsigned char *buf, uint64_t *first_seq)
{
    if (memcmp(buf, mq_seg_magic, sizeof(mq_seg_magic)) != 0) {
        return MQ_ERROR;
    }

    *first_seq = mq_get_le64(buf + 8);

    return MQ_OK;
}
