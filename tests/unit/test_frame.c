/*
 * test_frame.c: record, segment-header and journal-header framing
 * (common/mq_frame.h): version 2 round trips and byte layout, damage to
 * every field of a record (magic, header CRC, length, kind, payload CRC),
 * short input, version 1 records built byte by byte as the old writer laid
 * them out, mq_frame_resync(), and the segment and journal file headers.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


#define MAX_LEN   4096
#define MARK      0x5eedf00du     /* the mark of the file under test */
#define NELTS(a)  (sizeof(a) / sizeof((a)[0]))


static void
put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) v;
    p[1] = (unsigned char) (v >> 8);
    p[2] = (unsigned char) (v >> 16);
    p[3] = (unsigned char) (v >> 24);
}


static void
put_le64(unsigned char *p, uint64_t v)
{
    put_le32(p, (uint32_t) v);
    put_le32(p + 4, (uint32_t) (v >> 32));
}


static uint32_t
get_le32(const unsigned char *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}


/* Writes a version 2 record of kind `kind` at buf; returns its size. */
static size_t
make_record(unsigned char *buf, mq_frame_hdr_t *h, uint32_t kind,
    const void *payload, uint32_t len)
{
    memset(h, 0, sizeof(*h));
    h->len = len;
    h->flags = 0xa5a5f00d;
    h->kind = kind;
    h->seq = 0x0102030405060708ull;
    h->ctime = 1764000000123ull;
    h->exptime = -5;

    memcpy(buf + MQ_FRAME_HDR_SIZE, payload, len);
    mq_frame_encode(buf, h, buf + MQ_FRAME_HDR_SIZE, MARK);

    return MQ_FRAME_HDR_SIZE + len;
}


/* Sets the header CRC of the version 2 header at buf after an edit. */
static void
reseal(unsigned char *buf)
{
    put_le32(buf + 4, mq_crc32c(0, buf + 8, MQ_FRAME_HDR_SIZE - 8) ^ MARK);
}


/*
 * Writes a version 1 record the way the old writer did: u32 crc over
 * bytes 4..39 and the payload, u32 len, u32 flags, u32 kind, u64 seq,
 * u64 ctime, i64 exptime, payload.  Returns its size.
 */
static size_t
make_v1(unsigned char *buf, uint32_t kind, uint64_t seq, uint32_t flags,
    int64_t exptime, const void *payload, uint32_t len)
{
    put_le32(buf + 4, len);
    put_le32(buf + 8, flags);
    put_le32(buf + 12, kind);
    put_le64(buf + 16, seq);
    put_le64(buf + 24, 1700000000000ull + seq);
    put_le64(buf + 32, (uint64_t) exptime);
    memcpy(buf + MQ_FRAME_V1_HDR_SIZE, payload, len);
    put_le32(buf, mq_crc32c(0, buf + 4, MQ_FRAME_V1_HDR_SIZE - 4 + len));

    return MQ_FRAME_V1_HDR_SIZE + len;
}


static void
assert_hdr_equal(const mq_frame_hdr_t *a, const mq_frame_hdr_t *b)
{
    assert_int_equal(a->crc, b->crc);
    assert_int_equal(a->len, b->len);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->kind, b->kind);
    assert_true(a->seq == b->seq);
    assert_true(a->ctime == b->ctime);
    assert_true(a->exptime == b->exptime);
}


/* ---- version 2 records ---- */

static void
test_frame_round_trip(void **state)
{
    int             rc;
    size_t          n, i, j, k;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + MAX_LEN + 64];
    char            payload[MAX_LEN];

    static const size_t    lens[] = { 0, 1, 5, 47, 48, 49, 1000, MAX_LEN };
    static const uint32_t  kinds[] = {
        MQ_FRAME_ITEM, MQ_FRAME_JITEM, MQ_FRAME_JDROP, MQ_FRAME_JACK,
        MQ_FRAME_JACKS
    };

    (void) state;

    for (j = 0; j < sizeof(payload); j++) {
        payload[j] = (char) (j * 7 + 3);
    }

    for (k = 0; k < NELTS(kinds); k++) {
        for (i = 0; i < NELTS(lens); i++) {
            memset(buf, 0x5a, sizeof(buf));
            n = make_record(buf, &h, kinds[k], payload, (uint32_t) lens[i]);
            assert_int_equal(n, MQ_FRAME_HDR_SIZE + lens[i]);
            assert_int_equal(h.crc, mq_crc32c(0, payload, lens[i]));

            err = NULL;
            rc = mq_frame_decode(buf, n, MAX_LEN, MARK, &d, &err);
            assert_int_equal(rc, MQ_OK);
            assert_null(err);
            assert_hdr_equal(&d, &h);

            /* trailing bytes (the next record) do not matter */
            rc = mq_frame_decode(buf, sizeof(buf), MAX_LEN, MARK, &d, &err);
            assert_int_equal(rc, MQ_OK);
            assert_hdr_equal(&d, &h);
        }
    }
}


/* the layout is the documented one, field by field, little-endian */
static void
test_frame_layout(void **state)
{
    mq_frame_hdr_t  h;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 3];

    static const unsigned char  expect[MQ_FRAME_HDR_SIZE] = {
        'M', 'Q', 'R', '2',                     /* magic */
        0, 0, 0, 0,                             /* hcrc, checked below */
        3, 0, 0, 0,                             /* len */
        0x78, 0x56, 0x34, 0x12,                 /* flags */
        2, 0, 0, 0,                             /* kind JITEM */
        0, 0, 0, 0,                             /* pcrc, checked below */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,   /* seq */
        0x10, 0x20, 0, 0, 0, 0, 0, 0,           /* ctime */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff    /* exptime -1 */
    };

    (void) state;

    memset(&h, 0, sizeof(h));
    h.len = 3;
    h.flags = 0x12345678;
    h.kind = MQ_FRAME_JITEM;
    h.seq = 0x0102030405060708ull;
    h.ctime = 0x2010;
    h.exptime = -1;

    mq_frame_encode(buf, &h, "abc", MARK);

    assert_int_equal(get_le32(buf), MQ_FRAME_MAGIC);
    assert_memory_equal(buf, expect, 4);
    assert_memory_equal(buf + 8, expect + 8, 12);
    assert_memory_equal(buf + 24, expect + 24, 24);

    assert_int_equal(h.crc, mq_crc32c(0, "abc", 3));
    assert_int_equal(get_le32(buf + 20), h.crc);
    assert_int_equal(get_le32(buf + 4),
                     mq_crc32c(0, buf + 8, MQ_FRAME_HDR_SIZE - 8) ^ MARK);
}


/* one damaged field and what the decoder must say about it */
typedef struct {
    const char  *what;
    size_t       off;        /* byte of the record to change */
    uint32_t     value;      /* u32 LE written there */
    int          seal;       /* fix the header CRC afterwards */
    int          rc;         /* MQ_ERROR or MQ_DECLINED */
    const char  *err;
} damage_t;


static void
test_frame_damage_table(void **state)
{
    int             rc;
    size_t          i, n;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   good[MQ_FRAME_HDR_SIZE + 64], buf[sizeof(good)];

    static const damage_t  cases[] = {
        { "magic", 0, 0x3252514e, 0, MQ_ERROR, "bad magic" },
        { "magic v1-like", 0, 0, 0, MQ_ERROR, "bad magic" },
        { "header crc", 4, 0x12345678, 0, MQ_ERROR, "bad header crc" },
        { "len, crc not fixed", 8, 10, 0, MQ_ERROR, "bad header crc" },
        { "flags, crc not fixed", 12, 1, 0, MQ_ERROR, "bad header crc" },
        { "seq, crc not fixed", 24, 7, 0, MQ_ERROR, "bad header crc" },
        { "exptime, crc not fixed", 44, 1, 0, MQ_ERROR, "bad header crc" },
        { "len over max", 8, 65, 1, MQ_ERROR, "bad length" },
        { "len huge", 8, 0xffffffff, 1, MQ_ERROR, "bad length" },
        { "kind 0", 16, 0, 1, MQ_ERROR, "unknown kind" },
        { "kind 6", 16, 6, 1, MQ_ERROR, "unknown kind" },
        { "kind max", 16, 0xffffffff, 1, MQ_ERROR, "unknown kind" },
        { "payload crc field", 20, 0xdeadbeef, 1, MQ_DECLINED,
          "bad payload crc" },
        { "payload first byte", MQ_FRAME_HDR_SIZE, 0x7a7a7a7a, 0,
          MQ_DECLINED, "bad payload crc" },
        { "payload last bytes", MQ_FRAME_HDR_SIZE + 30, 0, 0,
          MQ_DECLINED, "bad payload crc" },
    };

    (void) state;

    n = make_record(good, &h, MQ_FRAME_ITEM,
                    "0123456789abcdef0123456789abcdef0123", 34);

    for (i = 0; i < NELTS(cases); i++) {
        memcpy(buf, good, sizeof(buf));
        put_le32(buf + cases[i].off, cases[i].value);
        if (cases[i].seal) {
            reseal(buf);
        }

        err = NULL;
        memset(&d, 0xee, sizeof(d));
        rc = mq_frame_decode(buf, n, 64, MARK, &d, &err);

        if (rc != cases[i].rc || err == NULL
            || strcmp(err, cases[i].err) != 0)
        {
            fail_msg("%s: rc %d (%s), want %d (%s)", cases[i].what, rc,
                     err ? err : "-", cases[i].rc, cases[i].err);
        }

        if (rc == MQ_DECLINED) {
            /* the header is good: the record's extent and id are known */
            assert_int_equal(d.len, 34);
            assert_true(d.seq == h.seq);
            assert_int_equal(d.kind, MQ_FRAME_ITEM);
            assert_int_equal(d.flags, h.flags);
            assert_true(d.ctime == h.ctime);
            assert_true(d.exptime == h.exptime);
        }

        /* with more bytes after it the answer is the same */
        rc = mq_frame_decode(buf, sizeof(buf), 64, MARK, &d, &err);
        assert_int_equal(rc, cases[i].rc);
    }

    /* and the good record is good */
    assert_int_equal(mq_frame_decode(good, n, 64, MARK, &d, &err), MQ_OK);
}


/* any single flipped bit: header bits fail the header, payload bits fail
 * the payload only */
static void
test_frame_bit_flips(void **state)
{
    int             rc;
    size_t          n, bit;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 64];

    (void) state;

    n = make_record(buf, &h, MQ_FRAME_ITEM,
                    "0123456789abcdef0123456789abcdef0123456789abc", 45);

    for (bit = 0; bit < n * 8; bit++) {
        buf[bit / 8] ^= (unsigned char) (1u << (bit % 8));

        err = NULL;
        rc = mq_frame_decode(buf, n, MAX_LEN, MARK, &d, &err);

        if (bit < MQ_FRAME_HDR_SIZE * 8) {
            if (rc != MQ_ERROR) {
                fail_msg("header bit %zu flipped: rc %d", bit, rc);
            }
            assert_non_null(err);
            assert_string_equal(err, bit < 32 ? "bad magic"
                                              : "bad header crc");
        } else {
            if (rc != MQ_DECLINED) {
                fail_msg("payload bit %zu flipped: rc %d", bit, rc);
            }
            assert_string_equal(err, "bad payload crc");
            assert_int_equal(d.len, 45);
            assert_true(d.seq == h.seq);
        }

        buf[bit / 8] ^= (unsigned char) (1u << (bit % 8));
    }

    assert_int_equal(mq_frame_decode(buf, n, MAX_LEN, MARK, &d, &err), MQ_OK);
}


static void
test_frame_bad_length(void **state)
{
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 16];

    (void) state;

    make_record(buf, &h, MQ_FRAME_ITEM, "0123456789", 10);

    /* exactly max_len is fine, one more is not */
    assert_int_equal(mq_frame_decode(buf, sizeof(buf), 10, MARK, &d, &err),
                     MQ_OK);

    err = NULL;
    assert_int_equal(mq_frame_decode(buf, sizeof(buf), 9, MARK, &d, &err),
                     MQ_ERROR);
    assert_string_equal(err, "bad length");

    /* a huge length (with a header CRC that holds) fails with the header
     * alone: nothing waits for its payload */
    put_le32(buf + 8, 0xfffffff0);
    reseal(buf);
    err = NULL;
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, MAX_LEN, MARK, &d,
                                     &err), MQ_ERROR);
    assert_string_equal(err, "bad length");
    assert_int_equal(d.len, 0);

    /* max_len 0: only empty records */
    make_record(buf, &h, MQ_FRAME_JDROP, "", 0);
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, 0, MARK, &d, &err),
                     MQ_OK);
    make_record(buf, &h, MQ_FRAME_ITEM, "x", 1);
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE + 1, 0, MARK, &d,
                                     &err), MQ_ERROR);
}


static void
test_frame_short_input(void **state)
{
    int             rc;
    size_t          n, avail;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 32];

    (void) state;

    n = make_record(buf, &h, MQ_FRAME_ITEM, "payload of a record", 19);

    for (avail = 0; avail < n; avail++) {
        memset(&d, 0xee, sizeof(d));
        rc = mq_frame_decode(buf, avail, MAX_LEN, MARK, &d, &err);
        assert_int_equal(rc, MQ_AGAIN);

        if (avail < MQ_FRAME_HDR_SIZE) {
            /* the header is not there: nothing is told */
            assert_int_equal(d.len, 0);
        } else {
            /* the header is, and good: the record's size is known */
            assert_int_equal(d.len, 19);
            assert_true(d.seq == h.seq);
        }
    }

    assert_int_equal(mq_frame_decode(buf, n, MAX_LEN, MARK, &d, &err), MQ_OK);

    /* a damaged header is told as soon as the header is there, not when
     * the payload would be */
    buf[30] ^= 0x40;
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE - 1, MAX_LEN, MARK,
                                     &d, &err), MQ_AGAIN);
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, MAX_LEN, MARK, &d,
                                     &err), MQ_ERROR);
}


/* zeros (a preallocated journal) and garbage are refused from four bytes,
 * never waited on */
static void
test_frame_zeros_garbage(void **state)
{
    size_t          avail, i;
    const char     *err;
    mq_frame_hdr_t  d;
    unsigned char   buf[256];

    (void) state;

    memset(buf, 0, sizeof(buf));

    for (avail = 4; avail <= sizeof(buf); avail++) {
        err = NULL;
        assert_int_equal(mq_frame_decode(buf, avail, MAX_LEN, MARK, &d, &err),
                         MQ_ERROR);
        assert_string_equal(err, "bad magic");
        assert_int_equal(d.len, 0);
    }

    /* fewer than four bytes cannot be told yet */
    for (avail = 0; avail < 4; avail++) {
        assert_int_equal(mq_frame_decode(buf, avail, MAX_LEN, MARK, &d, &err),
                         MQ_AGAIN);
    }

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = (unsigned char) (i * 37 + 11);
    }
    assert_int_equal(mq_frame_decode(buf, 4, MAX_LEN, MARK, &d, &err),
                     MQ_ERROR);

    /* the magic alone followed by zeros: the header CRC fails */
    memset(buf, 0, sizeof(buf));
    put_le32(buf, MQ_FRAME_MAGIC);
    assert_int_equal(mq_frame_decode(buf, 4, MAX_LEN, MARK, &d, &err),
                     MQ_AGAIN);
    err = NULL;
    assert_int_equal(mq_frame_decode(buf, sizeof(buf), MAX_LEN, MARK, &d, &err),
                     MQ_ERROR);
    assert_string_equal(err, "bad header crc");
}


static void
test_frame_sequence(void **state)
{
    int             rc;
    size_t          off, n, i;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[5 * (MQ_FRAME_HDR_SIZE + 8)];

    (void) state;

    off = 0;
    for (i = 0; i < 5; i++) {
        memset(&h, 0, sizeof(h));
        h.len = (uint32_t) i;
        h.kind = MQ_FRAME_ITEM;
        h.seq = 100 + i;
        memcpy(buf + off + MQ_FRAME_HDR_SIZE, "abcdefgh", i);
        mq_frame_encode(buf + off, &h, buf + off + MQ_FRAME_HDR_SIZE, MARK);
        off += MQ_FRAME_HDR_SIZE + i;
    }
    n = off;

    off = 0;
    for (i = 0; i < 5; i++) {
        rc = mq_frame_decode(buf + off, n - off, MAX_LEN, MARK, &d, &err);
        assert_int_equal(rc, MQ_OK);
        assert_true(d.seq == 100 + i);
        assert_int_equal(d.len, i);
        off += MQ_FRAME_HDR_SIZE + d.len;
    }

    assert_int_equal(off, n);
    assert_int_equal(mq_frame_decode(buf + off, 0, MAX_LEN, MARK, &d, &err),
                     MQ_AGAIN);
}


/* ---- version 1 records ---- */

static void
test_frame_v1_decode(void **state)
{
    int             rc;
    size_t          n, i, avail;
    const char     *err;
    mq_frame_hdr_t  d;
    unsigned char   buf[MQ_FRAME_V1_HDR_SIZE + 64];

    static const uint32_t  lens[] = { 0, 1, 13, 40, 64 };

    (void) state;

    for (i = 0; i < NELTS(lens); i++) {
        n = make_v1(buf, MQ_FRAME_ITEM, 77 + i, 0xf00d, 1800000000,
                    "v1 payload bytes, as the first writer wrote them.."
                    "..............", lens[i]);

        err = NULL;
        rc = mq_frame_decode_v1(buf, n, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_OK);
        assert_null(err);
        assert_int_equal(d.len, lens[i]);
        assert_int_equal(d.flags, 0xf00d);
        assert_int_equal(d.kind, MQ_FRAME_ITEM);
        assert_true(d.seq == 77 + i);
        assert_true(d.ctime == 1700000000000ull + 77 + i);
        assert_true(d.exptime == 1800000000);
        assert_int_equal(d.crc, get_le32(buf));

        /* a v1 record is not a v2 one */
        assert_int_equal(mq_frame_decode(buf, n, MAX_LEN, MARK, &d, &err),
                         MQ_ERROR);
    }

    /* short input */
    n = make_v1(buf, MQ_FRAME_ITEM, 5, 0, 0, "abcdefghij", 10);
    for (avail = 0; avail < n; avail++) {
        assert_int_equal(mq_frame_decode_v1(buf, avail, MAX_LEN, &d, &err),
                         MQ_AGAIN);
    }

    /* no payload CRC of its own: any damaged bit is an error, never
     * MQ_DECLINED */
    for (i = 0; i < n * 8; i++) {
        buf[i / 8] ^= (unsigned char) (1u << (i % 8));
        rc = mq_frame_decode_v1(buf, n, MAX_LEN, &d, &err);
        if (rc == MQ_OK || rc == MQ_DECLINED) {
            fail_msg("v1 bit %zu flipped: rc %d", i, rc);
        }
        /* a flipped length bit may ask for more bytes than there are */
        if (rc == MQ_AGAIN) {
            assert_true(i >= 32 && i < 64);
        }
        buf[i / 8] ^= (unsigned char) (1u << (i % 8));
    }

    n = make_v1(buf, MQ_FRAME_ITEM, 5, 0, 0, "abcdefghij", 10);
    buf[MQ_FRAME_V1_HDR_SIZE + 3] ^= 1;
    err = NULL;
    assert_int_equal(mq_frame_decode_v1(buf, n, MAX_LEN, &d, &err),
                     MQ_ERROR);
    assert_string_equal(err, "bad crc");

    /* over max_len: known from eight bytes */
    n = make_v1(buf, MQ_FRAME_ITEM, 5, 0, 0, "abcdefghij", 10);
    err = NULL;
    assert_int_equal(mq_frame_decode_v1(buf, 8, 9, &d, &err), MQ_ERROR);
    assert_string_equal(err, "bad length");
    assert_int_equal(mq_frame_decode_v1(buf, n, 10, &d, &err), MQ_OK);

    /* only items were ever written in version 1 */
    n = make_v1(buf, MQ_FRAME_JITEM, 5, 0, 0, "abcdefghij", 10);
    err = NULL;
    assert_int_equal(mq_frame_decode_v1(buf, n, MAX_LEN, &d, &err),
                     MQ_ERROR);
    assert_string_equal(err, "unknown kind");
}


/* ---- resync ---- */

static void
test_frame_resync(void **state)
{
    size_t          n, i, at, end;
    mq_frame_hdr_t  h;
    unsigned char   buf[1024], rec[MQ_FRAME_HDR_SIZE + 32];

    (void) state;

    n = make_record(rec, &h, MQ_FRAME_ITEM, "found after garbage", 19);

    /* garbage full of 'M's and "MQR2"s, then a record */
    for (i = 0; i < 300; i++) {
        buf[i] = (unsigned char) "MQR2xM\0Q"[i % 8];
    }
    memcpy(buf + 300, rec, n);
    end = 300 + n;

    assert_int_equal(mq_frame_resync(buf, 0, end, MAX_LEN, MARK), 300);
    assert_int_equal(mq_frame_resync(buf, 299, end, MAX_LEN, MARK), 300);
    assert_int_equal(mq_frame_resync(buf, 300, end, MAX_LEN, MARK), 300);
    assert_int_equal(mq_frame_resync(buf, 301, end, MAX_LEN, MARK), end);

    /* the header alone is enough: a record whose payload is damaged, or
     * cut off, is still found (its header tells where it ends) */
    buf[300 + MQ_FRAME_HDR_SIZE + 2] ^= 0xff;
    assert_int_equal(mq_frame_resync(buf, 0, end, MAX_LEN, MARK), 300);
    assert_int_equal(mq_frame_resync(buf, 0, 300 + MQ_FRAME_HDR_SIZE,
                                     MAX_LEN, MARK), 300);

    /* a header cut off by the end of the buffer is not found */
    for (i = 1; i < MQ_FRAME_HDR_SIZE; i++) {
        assert_int_equal(mq_frame_resync(buf, 0, 300 + i, MAX_LEN, MARK),
                         300 + i);
    }

    /* over max_len: not a header we accept */
    assert_int_equal(mq_frame_resync(buf, 0, end, 18, MARK), end);

    /* a fake magic whose header CRC is wrong is skipped: the real record
     * after it is found */
    memset(buf, 'x', sizeof(buf));
    memcpy(buf + 10, rec, MQ_FRAME_HDR_SIZE);
    buf[10 + 30] ^= 0x01;                 /* seq changed, CRC now wrong */
    memcpy(buf + 100, rec, n);
    at = mq_frame_resync(buf, 0, sizeof(buf), MAX_LEN, MARK);
    assert_int_equal(at, 100);

    /* records back to back: each is found from its own offset */
    memset(buf, 0, sizeof(buf));
    memcpy(buf + 1, rec, n);
    memcpy(buf + 1 + n, rec, n);
    assert_int_equal(mq_frame_resync(buf, 0, sizeof(buf), MAX_LEN, MARK), 1);
    assert_int_equal(mq_frame_resync(buf, 2, sizeof(buf), MAX_LEN, MARK),
                     1 + n);

    /* nothing there, empty ranges, `from` past the end */
    memset(buf, 'M', sizeof(buf));
    assert_int_equal(mq_frame_resync(buf, 0, sizeof(buf), MAX_LEN, MARK),
                     sizeof(buf));
    assert_int_equal(mq_frame_resync(buf, 0, 0, MAX_LEN, MARK), 0);
    assert_int_equal(mq_frame_resync(buf, 10, 20, MAX_LEN, MARK), 20);
    assert_int_equal(mq_frame_resync(buf, 30, 20, MAX_LEN, MARK), 20);
}


/* ---- file headers ---- */

static void
test_seg_header(void **state)
{
    size_t         i;
    unsigned       ver;
    uint32_t       mark;
    unsigned char  buf[MQ_SEG_HDR_SIZE];

    static const unsigned char  expect[12] = {
        'M', 'Q', 'S', 'E', 'G', 0, 0, 2,
        0x0d, 0xf0, 0xed, 0x5e
    };

    (void) state;

    mq_frame_seg_encode(buf, MARK);
    assert_memory_equal(buf, expect, sizeof(expect));
    assert_int_equal(get_le32(buf + 12), mq_crc32c(0, buf, 12));

    mark = 0;
    ver = 0;
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_OK);
    assert_int_equal(mark, MARK);
    assert_int_equal(ver, 2);

    mq_frame_seg_encode(buf, 0);
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_OK);
    assert_int_equal(mark, 0);

    /* version 1, as the first writer laid it out (a first sequence
     * number, no CRC), is read, with no mark */
    buf[7] = 1;
    put_le64(buf + 8, 52113);
    mark = 7;
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_OK);
    assert_int_equal(ver, 1);
    assert_int_equal(mark, 0);

    /* versions we do not know are refused */
    mq_frame_seg_encode(buf, MARK);
    buf[7] = 0;
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);
    buf[7] = 3;
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);
    buf[7] = 0xff;
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);

    /* any other change is refused: magic by its bytes, mark and CRC by
     * the CRC */
    for (i = 0; i < MQ_SEG_HDR_SIZE; i++) {
        if (i == 7) {
            continue;
        }
        mq_frame_seg_encode(buf, MARK);
        buf[i] ^= 0x01;
        assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);
    }

    memset(buf, 0, sizeof(buf));
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);

    /* a journal header is not a segment header */
    mq_frame_jnl_encode(buf, MARK);
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_ERROR);
}


static void
test_jnl_header(void **state)
{
    size_t          i;
    uint32_t        mark;
    unsigned char   buf[MQ_SEG_HDR_SIZE];

    static const unsigned char  expect[12] = {
        'M', 'Q', 'J', 'N', 'L', 0, 0, 2,
        0x0d, 0xf0, 0xed, 0x5e
    };
    static const uint32_t  marks[] = { 0, 1, 7, MARK, UINT32_MAX };

    (void) state;

    mq_frame_jnl_encode(buf, MARK);
    assert_memory_equal(buf, expect, sizeof(expect));
    assert_int_equal(get_le32(buf + 12), mq_crc32c(0, buf, 12));

    for (i = 0; i < NELTS(marks); i++) {
        mq_frame_jnl_encode(buf, marks[i]);
        mark = 12345;
        assert_int_equal(mq_frame_jnl_decode(buf, &mark), MQ_OK);
        assert_int_equal(mark, marks[i]);
    }

    for (i = 0; i < MQ_SEG_HDR_SIZE; i++) {
        mq_frame_jnl_encode(buf, 3);
        buf[i] ^= 0x20;
        assert_int_equal(mq_frame_jnl_decode(buf, &mark), MQ_ERROR);
    }

    memset(buf, 0, sizeof(buf));
    assert_int_equal(mq_frame_jnl_decode(buf, &mark), MQ_ERROR);

    mq_frame_seg_encode(buf, 3);
    assert_int_equal(mq_frame_jnl_decode(buf, &mark), MQ_ERROR);
}


/* A record a client could write: all of it, as the payload of a record. */
static void
test_frame_mark_forgery(void **state)
{
    size_t          n, at;
    uint32_t        mark;
    mq_frame_hdr_t  h, d;
    const char     *err;
    unsigned char   forged[MQ_FRAME_HDR_SIZE + 5];
    unsigned char   buf[3 * MQ_FRAME_HDR_SIZE + sizeof(forged) + 8];

    (void) state;

    /* the client knows the format, not the file's mark: its best guess */
    memset(&h, 0, sizeof(h));
    h.len = 5;
    h.kind = MQ_FRAME_ITEM;
    h.seq = 7;
    memcpy(forged + MQ_FRAME_HDR_SIZE, "evil!", 5);
    mq_frame_encode(forged, &h, forged + MQ_FRAME_HDR_SIZE, 0);

    /* it checks in a file whose mark it guessed, and in no other */
    assert_int_equal(mq_frame_decode(forged, sizeof(forged), MAX_LEN, 0, &d,
                                     &err), MQ_OK);
    assert_int_equal(mq_frame_decode(forged, sizeof(forged), MAX_LEN, MARK,
                                     &d, &err), MQ_ERROR);
    assert_string_equal(err, "bad header crc");

    /* stored as a payload: the search for the next record after damage
     * does not stop inside it */
    n = make_record(buf, &h, MQ_FRAME_ITEM, forged, sizeof(forged));
    buf[0] ^= 0xff;
    at = mq_frame_resync(buf, 1, n, MAX_LEN, MARK);
    assert_int_equal(at, n);
    assert_int_equal(mq_frame_resync(buf, 1, n, MAX_LEN, 0),
                     MQ_FRAME_HDR_SIZE);

    /* one good record and the forged one inside it: two marks, one vote
     * each, none to trust */
    buf[0] ^= 0xff;
    assert_int_equal(mq_frame_mark_vote(buf, 0, n, MAX_LEN, &mark),
                     MQ_ERROR);

    /* a second record that checks with the first one's mark settles it */
    n += make_record(buf + n, &h, MQ_FRAME_ITEM, "x", 1);
    mark = 0;
    assert_int_equal(mq_frame_mark_vote(buf, 0, n, MAX_LEN, &mark), MQ_OK);
    assert_int_equal(mark, MARK);

    /* a first record whose payload is damaged still gives its mark when
     * the record after it checks with it, however many forged records
     * a later payload holds */
    {
        size_t          m, k;
        unsigned char   big[8 * sizeof(forged) + 4 * MQ_FRAME_HDR_SIZE];
        unsigned char   stuffed[6 * sizeof(forged)];

        for (k = 0; k < 6; k++) {
            memcpy(stuffed + k * sizeof(forged), forged, sizeof(forged));
        }
        m = make_record(big, &h, MQ_FRAME_ITEM, "first", 5);
        m += make_record(big + m, &h, MQ_FRAME_ITEM, "second", 6);
        m += make_record(big + m, &h, MQ_FRAME_ITEM, stuffed,
                         sizeof(stuffed));
        big[MQ_FRAME_HDR_SIZE] ^= 1;                  /* "first" damaged */
        mark = 0;
        assert_int_equal(mq_frame_mark_vote(big, 0, m, MAX_LEN, &mark),
                         MQ_OK);
        assert_int_equal(mark, MARK);
    }

    /* nothing that checks: no vote */
    buf[MQ_FRAME_HDR_SIZE + MQ_FRAME_HDR_SIZE] ^= 1;   /* forged payload */
    buf[n - 1] ^= 1;                                   /* last payload */
    buf[MQ_FRAME_HDR_SIZE + 2] ^= 1;                   /* first payload */
    assert_int_equal(mq_frame_mark_vote(buf, 0, n, MAX_LEN, &mark),
                     MQ_ERROR);
    assert_int_equal(mq_frame_mark_vote(buf, 0, 0, MAX_LEN, &mark),
                     MQ_ERROR);

    /* two new marks differ (2^-32 that they do not) */
    assert_true(mq_frame_new_mark() != mq_frame_new_mark());
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_frame_round_trip),
        cmocka_unit_test(test_frame_layout),
        cmocka_unit_test(test_frame_damage_table),
        cmocka_unit_test(test_frame_bit_flips),
        cmocka_unit_test(test_frame_bad_length),
        cmocka_unit_test(test_frame_short_input),
        cmocka_unit_test(test_frame_zeros_garbage),
        cmocka_unit_test(test_frame_sequence),
        cmocka_unit_test(test_frame_v1_decode),
        cmocka_unit_test(test_frame_resync),
        cmocka_unit_test(test_seg_header),
        cmocka_unit_test(test_jnl_header),
        cmocka_unit_test(test_frame_mark_forgery),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
