/*
 * test_frame.c: record and segment-header framing: round trips, the exact
 * byte layout, corruption detection, truncation and bad lengths.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "mq_crc32c.h"
#include "mq_frame.h"


#define MAX_LEN  4096


static size_t
make_record(unsigned char *buf, mq_frame_hdr_t *h, const char *payload,
    uint32_t len)
{
    memset(h, 0, sizeof(*h));
    h->len = len;
    h->flags = 0xa5a5f00d;
    h->kind = MQ_FRAME_ITEM;
    h->seq = 0x0102030405060708ull;
    h->ctime = 1764000000123ull;
    h->exptime = -5;

    memcpy(buf + MQ_FRAME_HDR_SIZE, payload, len);
    mq_frame_encode(buf, h, buf + MQ_FRAME_HDR_SIZE);

    return MQ_FRAME_HDR_SIZE + len;
}


static void
test_frame_round_trip(void **state)
{
    int             rc;
    size_t          n, lens[] = { 0, 1, 5, 39, 40, 41, 1000, MAX_LEN };
    size_t          i, j;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + MAX_LEN];
    char            payload[MAX_LEN];

    (void) state;

    for (j = 0; j < sizeof(payload); j++) {
        payload[j] = (char) (j * 7 + 3);
    }

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        n = make_record(buf, &h, payload, (uint32_t) lens[i]);

        err = NULL;
        rc = mq_frame_decode(buf, n, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_OK);
        assert_null(err);
        assert_int_equal(d.crc, h.crc);
        assert_int_equal(d.len, lens[i]);
        assert_int_equal(d.flags, 0xa5a5f00d);
        assert_int_equal(d.kind, MQ_FRAME_ITEM);
        assert_true(d.seq == 0x0102030405060708ull);
        assert_true(d.ctime == 1764000000123ull);
        assert_true(d.exptime == -5);

        /* trailing bytes (the next record) do not matter */
        rc = mq_frame_decode(buf, sizeof(buf), MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_OK);
        assert_int_equal(d.len, lens[i]);
    }
}


/* the layout is the documented one, field by field, little-endian */
static void
test_frame_layout(void **state)
{
    mq_frame_hdr_t  h;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 3];
    uint32_t        crc;

    static const unsigned char  expect[MQ_FRAME_HDR_SIZE - 4] = {
        3, 0, 0, 0,                             /* len */
        0x78, 0x56, 0x34, 0x12,                 /* flags */
        1, 0, 0, 0,                             /* kind */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,   /* seq */
        0x10, 0x20, 0, 0, 0, 0, 0, 0,           /* ctime */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff    /* exptime -1 */
    };

    (void) state;

    memset(&h, 0, sizeof(h));
    h.len = 3;
    h.flags = 0x12345678;
    h.kind = MQ_FRAME_ITEM;
    h.seq = 0x0102030405060708ull;
    h.ctime = 0x2010;
    h.exptime = -1;

    mq_frame_encode(buf, &h, "abc");

    assert_memory_equal(buf + 4, expect, sizeof(expect));

    crc = mq_crc32c(mq_crc32c(0, expect, sizeof(expect)), "abc", 3);
    assert_int_equal(h.crc, crc);
    assert_int_equal(buf[0], crc & 0xff);
    assert_int_equal(buf[1], (crc >> 8) & 0xff);
    assert_int_equal(buf[2], (crc >> 16) & 0xff);
    assert_int_equal(buf[3], crc >> 24);
}


static void
test_frame_bit_flips(void **state)
{
    int             rc;
    size_t          n, bit;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 64];

    (void) state;

    n = make_record(buf, &h, "0123456789abcdef0123456789abcdef0123456789abc",
                    45);

    for (bit = 0; bit < n * 8; bit++) {
        buf[bit / 8] ^= (unsigned char) (1u << (bit % 8));

        err = NULL;
        rc = mq_frame_decode(buf, n, MAX_LEN, &d, &err);

        /* a flipped len bit either shortens the record (then the CRC
         * fails) or asks for more bytes than there are */
        if (rc == MQ_OK) {
            fail_msg("bit %zu flipped, record still accepted", bit);
        }

        if (rc == MQ_ERROR) {
            assert_non_null(err);

        } else {
            assert_int_equal(rc, MQ_AGAIN);
            assert_true(bit >= 32 && bit < 64);
        }

        buf[bit / 8] ^= (unsigned char) (1u << (bit % 8));
    }

    assert_int_equal(mq_frame_decode(buf, n, MAX_LEN, &d, &err), MQ_OK);
}


static void
test_frame_truncated(void **state)
{
    int             rc;
    size_t          n, avail;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 32];

    (void) state;

    n = make_record(buf, &h, "payload of a record", 19);

    for (avail = 0; avail < n; avail++) {
        rc = mq_frame_decode(buf, avail, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_AGAIN);

        if (avail < MQ_FRAME_HDR_SIZE) {
            assert_int_equal(d.len, 0);
        } else {
            assert_int_equal(d.len, 19);
        }
    }

    assert_int_equal(mq_frame_decode(buf, n, MAX_LEN, &d, &err), MQ_OK);
}


static void
test_frame_bad_length(void **state)
{
    int             rc;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 16];

    (void) state;

    make_record(buf, &h, "0123456789", 10);

    /* exactly max_len is fine, one more is not */
    assert_int_equal(mq_frame_decode(buf, sizeof(buf), 10, &d, &err), MQ_OK);

    err = NULL;
    rc = mq_frame_decode(buf, sizeof(buf), 9, &d, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, "bad length");

    /* a huge length fails with the header alone, and even with just the
     * length field, before any payload is waited for */
    buf[4] = 0xff;
    buf[5] = 0xff;
    buf[6] = 0xff;
    buf[7] = 0xff;

    err = NULL;
    rc = mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, MAX_LEN, &d, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, "bad length");

    err = NULL;
    rc = mq_frame_decode(buf, 8, MAX_LEN, &d, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, "bad length");

    rc = mq_frame_decode(buf, 7, MAX_LEN, &d, &err);
    assert_int_equal(rc, MQ_AGAIN);

    /* max_len 0: only empty records */
    make_record(buf, &h, "", 0);
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, 0, &d, &err),
                     MQ_OK);
    make_record(buf, &h, "x", 1);
    assert_int_equal(mq_frame_decode(buf, MQ_FRAME_HDR_SIZE + 1, 0, &d, &err),
                     MQ_ERROR);
}


static void
test_frame_bad_kind(void **state)
{
    int             rc;
    uint32_t        kinds[] = { 0, 2, 0x100, 0xffffffff };
    size_t          i;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 16];

    (void) state;

    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        memset(&h, 0, sizeof(h));
        h.len = 4;
        h.kind = kinds[i];
        memcpy(buf + MQ_FRAME_HDR_SIZE, "abcd", 4);

        /* even with a correct CRC */
        mq_frame_encode(buf, &h, buf + MQ_FRAME_HDR_SIZE);

        err = NULL;
        rc = mq_frame_decode(buf, MQ_FRAME_HDR_SIZE + 4, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_ERROR);
        assert_string_equal(err, "unknown kind");

        /* known as soon as the header is there */
        rc = mq_frame_decode(buf, MQ_FRAME_HDR_SIZE, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_ERROR);
    }
}


static void
test_frame_bad_crc(void **state)
{
    int             rc;
    const char     *err;
    mq_frame_hdr_t  h, d;
    unsigned char   buf[MQ_FRAME_HDR_SIZE + 16];

    (void) state;

    make_record(buf, &h, "abcdef", 6);
    buf[MQ_FRAME_HDR_SIZE + 5] = 'g';

    err = NULL;
    rc = mq_frame_decode(buf, MQ_FRAME_HDR_SIZE + 6, MAX_LEN, &d, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, "bad crc");

    /* all zeroes is not a valid empty record either */
    memset(buf, 0, sizeof(buf));
    rc = mq_frame_decode(buf, sizeof(buf), MAX_LEN, &d, &err);
    assert_int_equal(rc, MQ_ERROR);
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
        mq_frame_encode(buf + off, &h, buf + off + MQ_FRAME_HDR_SIZE);
        off += MQ_FRAME_HDR_SIZE + i;
    }
    n = off;

    off = 0;
    for (i = 0; i < 5; i++) {
        rc = mq_frame_decode(buf + off, n - off, MAX_LEN, &d, &err);
        assert_int_equal(rc, MQ_OK);
        assert_true(d.seq == 100 + i);
        assert_int_equal(d.len, i);
        off += MQ_FRAME_HDR_SIZE + d.len;
    }

    assert_int_equal(off, n);
    assert_int_equal(mq_frame_decode(buf + off, 0, MAX_LEN, &d, &err),
                     MQ_AGAIN);
}


static void
test_seg_header(void **state)
{
    size_t         i;
    uint64_t       seq;
    unsigned char  buf[MQ_SEG_HDR_SIZE];

    static const unsigned char  expect[MQ_SEG_HDR_SIZE] = {
        'M', 'Q', 'S', 'E', 'G', 0, 0, 1,
        0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01
    };

    (void) state;

    mq_frame_seg_encode(buf, 0x0123456789abcdefull);
    assert_memory_equal(buf, expect, sizeof(expect));

    seq = 0;
    assert_int_equal(mq_frame_seg_decode(buf, &seq), MQ_OK);
    assert_true(seq == 0x0123456789abcdefull);

    mq_frame_seg_encode(buf, 0);
    assert_int_equal(mq_frame_seg_decode(buf, &seq), MQ_OK);
    assert_true(seq == 0);

    /* any change to the magic or version is refused */
    for (i = 0; i < 8; i++) {
        buf[i] ^= 0x01;
        assert_int_equal(mq_frame_seg_decode(buf, &seq), MQ_ERROR);
        buf[i] ^= 0x01;
    }

    buf[7] = 2;
    assert_int_equal(mq_frame_seg_decode(buf, &seq), MQ_ERROR);

    memset(buf, 0, sizeof(buf));
    assert_int_equal(mq_frame_seg_decode(buf, &seq), MQ_ERROR);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_frame_round_trip),
        cmocka_unit_test(test_frame_layout),
        cmocka_unit_test(test_frame_bit_flips),
        cmocka_unit_test(test_frame_truncated),
        cmocka_unit_test(test_frame_bad_length),
        cmocka_unit_test(test_frame_bad_kind),
        cmocka_unit_test(test_frame_bad_crc),
        cmocka_unit_test(test_frame_sequence),
        cmocka_unit_test(test_seg_header),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
