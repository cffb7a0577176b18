/*
 * mq_frame.c: encode and decode segment headers and records (the layout is
 * documented in mq_frame.h, next to its version number).
 *
 * Integers are written byte by byte in little-endian order, so files are
 * the same on every host.  A decoder trusts nothing: the header's own CRC
 * must hold before its length is used for anything, the length is bounded
 * by the caller's max_len, the kind must be known, and the payload CRC must
 * match before a record is handed out.
 */

#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


static const unsigned char  mq_seg_magic[8] = {
    'M', 'Q', 'S', 'E', 'G', 0, 0, MQ_SEG_VERSION
};

static const unsigned char  mq_jnl_magic[8] = {
    'M', 'Q', 'J', 'N', 'L', 0, 0, MQ_JNL_VERSION
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
mq_frame_encode(unsigned char *dst, mq_frame_hdr_t *h, const void *payload,
    uint32_t mark)
{
    h->crc = mq_crc32c(0, payload, h->len);

    mq_put_le32(dst, MQ_FRAME_MAGIC);
    mq_put_le32(dst + 8, h->len);
    mq_put_le32(dst + 12, h->flags);
    mq_put_le32(dst + 16, h->kind);
    mq_put_le32(dst + 20, h->crc);
    mq_put_le64(dst + 24, h->seq);
    mq_put_le64(dst + 32, h->ctime);
    mq_put_le64(dst + 40, (uint64_t) h->exptime);
    mq_put_le32(dst + 4,
                mq_crc32c(0, dst + 8, MQ_FRAME_HDR_SIZE - 8) ^ mark);
}


static int
mq_kind_known(uint32_t kind)
{
    return kind >= MQ_FRAME_ITEM && kind <= MQ_FRAME_JACKS;
}


/* Checks a whole version 2 header at buf: MQ_OK or MQ_ERROR with *err. */
static int
mq_header_check(const unsigned char *buf, uint32_t max_len, uint32_t mark,
    const char **err)
{
    if (mq_get_le32(buf) != MQ_FRAME_MAGIC) {
        *err = "bad magic";
        return MQ_ERROR;
    }

    if (mq_get_le32(buf + 4)
        != (mq_crc32c(0, buf + 8, MQ_FRAME_HDR_SIZE - 8) ^ mark))
    {
        *err = "bad header crc";
        return MQ_ERROR;
    }

    if (mq_get_le32(buf + 8) > max_len) {
        *err = "bad length";
        return MQ_ERROR;
    }

    if (!mq_kind_known(mq_get_le32(buf + 16))) {
        *err = "unknown kind";
        return MQ_ERROR;
    }

    return MQ_OK;
}


int
mq_frame_decode(const unsigned char *buf, size_t avail, uint32_t max_len,
    uint32_t mark, mq_frame_hdr_t *h, const char **err)
{
    memset(h, 0, sizeof(*h));

    /* a wrong magic is known from four bytes: a reader meeting zeros (a
     * preallocated journal) or garbage never waits for more */
    if (avail >= 4 && mq_get_le32(buf) != MQ_FRAME_MAGIC) {
        *err = "bad magic";
        return MQ_ERROR;
    }

    if (avail < MQ_FRAME_HDR_SIZE) {
        return MQ_AGAIN;
    }

    if (mq_header_check(buf, max_len, mark, err) != MQ_OK) {
        return MQ_ERROR;
    }

    h->len = mq_get_le32(buf + 8);
    h->flags = mq_get_le32(buf + 12);
    h->kind = mq_get_le32(buf + 16);
    h->crc = mq_get_le32(buf + 20);
    h->seq = mq_get_le64(buf + 24);
    h->ctime = mq_get_le64(buf + 32);
    h->exptime = (int64_t) mq_get_le64(buf + 40);

    if (avail - MQ_FRAME_HDR_SIZE < h->len) {
        return MQ_AGAIN;
    }

    if (mq_crc32c(0, buf + MQ_FRAME_HDR_SIZE, h->len) != h->crc) {
        *err = "bad payload crc";
        return MQ_DECLINED;
    }

    return MQ_OK;
}


int
mq_frame_decode_v1(const unsigned char *buf, size_t avail, uint32_t max_len,
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

    if (avail < MQ_FRAME_V1_HDR_SIZE) {
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

    if (avail - MQ_FRAME_V1_HDR_SIZE < h->len) {
        return MQ_AGAIN;
    }

    crc = mq_crc32c(0, buf + 4, MQ_FRAME_V1_HDR_SIZE - 4 + (size_t) h->len);

    if (crc != h->crc) {
        *err = "bad crc";
        return MQ_ERROR;
    }

    return MQ_OK;
}


size_t
mq_frame_resync(const unsigned char *buf, size_t from, size_t len,
    uint32_t max_len, uint32_t mark)
{
    size_t                i;
    const char           *err;
    const unsigned char  *p;

    for (i = from; i + MQ_FRAME_HDR_SIZE <= len; i++) {
        p = memchr(buf + i, 'M', len - MQ_FRAME_HDR_SIZE + 1 - i);
        if (p == NULL) {
            break;
        }

        i = (size_t) (p - buf);

        if (mq_header_check(p, max_len, mark, &err) == MQ_OK) {
            return i;
        }
    }

    return len;
}


/* The mark of the whole record at buf (avail bytes present) when its
 * payload CRC holds: MQ_OK, else MQ_ERROR. */
static int
mq_record_mark(const unsigned char *buf, size_t avail, uint32_t max_len,
    uint32_t *mark)
{
    uint32_t  len;

    if (avail < MQ_FRAME_HDR_SIZE || mq_get_le32(buf) != MQ_FRAME_MAGIC) {
        return MQ_ERROR;
    }

    len = mq_get_le32(buf + 8);
    if (len > max_len || len > avail - MQ_FRAME_HDR_SIZE
        || !mq_kind_known(mq_get_le32(buf + 16))
        || mq_crc32c(0, buf + MQ_FRAME_HDR_SIZE, len) != mq_get_le32(buf + 20))
    {
        return MQ_ERROR;
    }

    *mark = mq_get_le32(buf + 4) ^ mq_crc32c(0, buf + 8, MQ_FRAME_HDR_SIZE - 8);

    return MQ_OK;
}


int
mq_frame_mark_vote(const unsigned char *buf, size_t from, size_t len,
    uint32_t max_len, uint32_t *mark)
{
    size_t                i, k, n, best, next, work;
    uint32_t              m, marks[MQ_MARK_VOTES];
    unsigned              votes[MQ_MARK_VOTES];
    const unsigned char  *p;

    if (from >= len) {
        return MQ_ERROR;
    }

    /* A record whose header is damaged (in a field other than length and
     * kind) and whose payload is intact gives a wrong mark: no mark is
     * taken from one record alone while others say otherwise.  The first
     * record is inside no payload: read with the mark its header gives,
     * it leads to the second; when that one checks with the same mark,
     * that is the mark. */
    if (len - from >= MQ_FRAME_HDR_SIZE
        && mq_get_le32(buf + from) == MQ_FRAME_MAGIC)
    {
        m = mq_get_le32(buf + from + 4)
            ^ mq_crc32c(0, buf + from + 8, MQ_FRAME_HDR_SIZE - 8);
        next = from + MQ_FRAME_HDR_SIZE + mq_get_le32(buf + from + 8);
        if (next > from && next < len
            && mq_record_mark(buf + next, len - next, max_len, mark) == MQ_OK
            && *mark == m)
        {
            return MQ_OK;
        }
    }

    /* Else every record that checks votes.  Bytes a client wrote may vote
     * too, so the payload bytes checked are bounded (a file of crafted
     * headers must not make a start slow). */
    n = 0;
    work = 0;

    for (i = from; i + MQ_FRAME_HDR_SIZE <= len && work < MQ_MARK_WORK; i++) {
        p = memchr(buf + i, 'M', len - MQ_FRAME_HDR_SIZE + 1 - i);
        if (p == NULL) {
            break;
        }
        i = (size_t) (p - buf);

        if (mq_get_le32(p) == MQ_FRAME_MAGIC) {
            work += MQ_FRAME_HDR_SIZE + mq_get_le32(p + 8);
        }

        if (mq_record_mark(p, len - i, max_len, &m) != MQ_OK) {
            continue;
        }

        for (k = 0; k < n && marks[k] != m; k++) {
            /* void */
        }

        if (k == n) {
            if (n == MQ_MARK_VOTES) {
                continue;
            }
            marks[n] = m;
            votes[n++] = 0;
        }
        votes[k]++;
    }

    /* the most votes (the first met on a tie), if two records agree on it
     * or no record says otherwise */
    best = 0;
    for (k = 1; k < n; k++) {
        if (votes[k] > votes[best]) {
            best = k;
        }
    }

    if (n == 0 || (votes[best] < 2 && n > 1)) {
        return MQ_ERROR;
    }

    *mark = marks[best];

    return MQ_OK;
}


uint32_t
mq_frame_new_mark(void)
{
    uint32_t         m;
    struct timespec  ts;

    if (getrandom(&m, sizeof(m), GRND_NONBLOCK) == (ssize_t) sizeof(m)) {
        return m;
    }

    /* no entropy yet (early boot): unpredictable enough to tell files
     * apart, and a client still never sees it */
    clock_gettime(CLOCK_REALTIME, &ts);
    return mq_crc32c((uint32_t) getpid(), &ts, sizeof(ts));
}


/* A file header: magic (version in its last byte), mark, CRC of both. */
static void
mq_file_hdr_encode(unsigned char *dst, const unsigned char *magic,
    uint32_t mark)
{
    memcpy(dst, magic, 8);
    mq_put_le32(dst + 8, mark);
    mq_put_le32(dst + 12, mq_crc32c(0, dst, 12));
}


void
mq_frame_seg_encode(unsigned char *dst, uint32_t mark)
{
    mq_file_hdr_encode(dst, mq_seg_magic, mark);
}


int
mq_frame_seg_decode(const unsigned char *buf, unsigned *version,
    uint32_t *mark)
{
    /* the magic without its last byte, which is the version */
    if (memcmp(buf, mq_seg_magic, sizeof(mq_seg_magic) - 1) != 0) {
        return MQ_ERROR;
    }

    if (buf[7] == 1) {
        /* version 1: the first sequence number follows, no mark */
        *version = 1;
        *mark = 0;
        return MQ_OK;
    }

    if (buf[7] != MQ_SEG_VERSION
        || mq_get_le32(buf + 12) != mq_crc32c(0, buf, 12))
    {
        return MQ_ERROR;
    }

    *version = MQ_SEG_VERSION;
    *mark = mq_get_le32(buf + 8);

    return MQ_OK;
}


void
mq_frame_jnl_encode(unsigned char *dst, uint32_t mark)
{
    mq_file_hdr_encode(dst, mq_jnl_magic, mark);
}


int
mq_frame_jnl_decode(const unsigned char *buf, uint32_t *mark)
{
    if (memcmp(buf, mq_jnl_magic, sizeof(mq_jnl_magic)) != 0
        || mq_get_le32(buf + 12) != mq_crc32c(0, buf, 12))
    {
        return MQ_ERROR;
    }

    *mark = mq_get_le32(buf + 8);

    return MQ_OK;
}


void
mq_frame_ids_encode(unsigned char *dst, const uint64_t *ids, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        mq_put_le64(dst + 8 * i, ids[i]);
    }
}


uint64_t
mq_frame_id_get(const unsigned char *src, size_t i)
{
    return mq_get_le64(src + 8 * i);
}
