/*
 * test_crc32c.c: CRC32C known vectors, incremental use, and agreement of
 * the hardware and table paths over many lengths and alignments.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "mq_crc32c.h"


typedef struct {
    const char  *data;
    size_t       len;
    uint32_t     crc;
} crc_case_t;


/* RFC 3720 (iSCSI) B.4 vectors and the usual check value */
static void
test_crc_vectors(void **state)
{
    size_t         i;
    unsigned char  buf[32];

    static const crc_case_t  cases[] = {
        { "123456789", 9, 0xe3069283 },
        { "", 0, 0x00000000 },
        { "a", 1, 0xc1d04330 },
        { "abc", 3, 0x364b3fb7 },
        { "The quick brown fox jumps over the lazy dog", 43, 0x22620404 },
    };

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(mq_crc32c(0, cases[i].data, cases[i].len),
                         cases[i].crc);
        assert_int_equal(mq_crc32c_sw(0, cases[i].data, cases[i].len),
                         cases[i].crc);
    }

    memset(buf, 0, sizeof(buf));
    assert_int_equal(mq_crc32c(0, buf, 32), 0x8a9136aa);
    assert_int_equal(mq_crc32c_sw(0, buf, 32), 0x8a9136aa);

    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(mq_crc32c(0, buf, 32), 0x62a8ab43);
    assert_int_equal(mq_crc32c_sw(0, buf, 32), 0x62a8ab43);

    for (i = 0; i < 32; i++) {
        buf[i] = (unsigned char) i;
    }
    assert_int_equal(mq_crc32c(0, buf, 32), 0x46dd794e);
    assert_int_equal(mq_crc32c_sw(0, buf, 32), 0x46dd794e);

    for (i = 0; i < 32; i++) {
        buf[i] = (unsigned char) (31 - i);
    }
    assert_int_equal(mq_crc32c(0, buf, 32), 0x113fdb5c);
    assert_int_equal(mq_crc32c_sw(0, buf, 32), 0x113fdb5c);
}


static void
test_crc_null_empty(void **state)
{
    (void) state;

    assert_int_equal(mq_crc32c(0, NULL, 0), 0);
    assert_int_equal(mq_crc32c(0x12345678, NULL, 0), 0x12345678);
    assert_int_equal(mq_crc32c_sw(0x12345678, NULL, 0), 0x12345678);
}


static uint64_t  rng_state = 0x9e3779b97f4a7c15ull;

static unsigned char
rng_byte(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned char) (rng_state >> 24);
}


static void
test_crc_paths_agree(void **state)
{
    size_t         i, len, off;
    unsigned char  buf[4096 + 16];

    (void) state;

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = rng_byte();
    }

    for (off = 0; off < 16; off++) {
        for (len = 0; len <= 256; len++) {
            assert_int_equal(mq_crc32c(0, buf + off, len),
                             mq_crc32c_sw(0, buf + off, len));
            assert_int_equal(mq_crc32c(0xdeadbeef, buf + off, len),
                             mq_crc32c_sw(0xdeadbeef, buf + off, len));
        }
    }

    /* around and past the interleaved block sizes (3 x 256 bytes) */
    for (len = 700; len <= 2400; len++) {
        off = len & 15;
        assert_int_equal(mq_crc32c(0, buf + off, len),
                         mq_crc32c_sw(0, buf + off, len));
    }

    for (i = 0; i < 200; i++) {
        off = rng_byte() & 15;
        len = ((size_t) rng_byte() << 4 | rng_byte()) % 4096;
        assert_int_equal(mq_crc32c(0, buf + off, len),
                         mq_crc32c_sw(0, buf + off, len));
    }
}


/* crc(a || b) == crc(crc(a), b), for every split point */
static void
test_crc_incremental(void **state)
{
    size_t         i, split;
    uint32_t       whole, c;
    unsigned char  buf[300];

    (void) state;

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = rng_byte();
    }

    whole = mq_crc32c(0, buf, sizeof(buf));

    for (split = 0; split <= sizeof(buf); split++) {
        c = mq_crc32c(0, buf, split);
        assert_int_equal(mq_crc32c(c, buf + split, sizeof(buf) - split),
                         whole);

        c = mq_crc32c_sw(0, buf, split);
        assert_int_equal(mq_crc32c_sw(c, buf + split, sizeof(buf) - split),
                         whole);
    }
}


/* every single-bit error in a record-sized buffer changes the CRC */
static void
test_crc_bit_flips(void **state)
{
    size_t         i;
    uint32_t       good;
    unsigned char  buf[128];

    (void) state;

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = rng_byte();
    }

    good = mq_crc32c(0, buf, sizeof(buf));

    for (i = 0; i < sizeof(buf) * 8; i++) {
        buf[i / 8] ^= (unsigned char) (1u << (i % 8));
        assert_int_not_equal(mq_crc32c(0, buf, sizeof(buf)), good);
        buf[i / 8] ^= (unsigned char) (1u << (i % 8));
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_crc_vectors),
        cmocka_unit_test(test_crc_null_empty),
        cmocka_unit_test(test_crc_paths_agree),
        cmocka_unit_test(test_crc_incremental),
        cmocka_unit_test(test_crc_bit_flips),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
