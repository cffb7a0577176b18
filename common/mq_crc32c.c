/*
 * mq_crc32c.c: CRC32C (Castagnoli, reflected polynomial 0x82f63b78).
 *
 * Two implementations of the same function:
 *   - mq_crc32c_hw(): the SSE4.2 crc32 instruction, 8 bytes per step.  The
 *     instruction has a latency of three cycles but can start one per
 *     cycle, so long buffers are cut into three interleaved blocks of
 *     MQ_CRC32C_BLK bytes whose CRCs are computed side by side and then
 *     combined: crc(A B) = shift(crc(A)) ^ crc(B), where shift() appends
 *     MQ_CRC32C_BLK zero bytes and is a linear map, kept as four tables;
 *   - mq_crc32c_sw(): slicing-by-8 over eight 256-entry tables.
 * All tables are built on first use (12 KiB, never freed).
 * mq_crc32c() picks one on its first call (CPU feature check) and keeps it
 * in a function pointer; the pick and the table build are published with
 * atomics, so the first calls may race from several threads safely.
 *
 * The x86-only code sits behind one #if because it is a single function
 * with a portable twin right next to it; a separate file per platform would
 * spread one checksum over three files.
 */

#include <string.h>

#include "mq_crc32c.h"


#define MQ_CRC32C_POLY  0x82f63b78u
#define MQ_CRC32C_BLK   256

typedef uint32_t (*mq_crc32c_pt)(uint32_t crc, const void *buf, size_t len);

/* slicing tables: mq_crc32c_table[k][b] is the CRC of byte b followed by
 * k zero bytes */
static uint32_t      mq_crc32c_table[8][256];

/* mq_crc32c_shift[k][b]: the CRC register b << 8k after MQ_CRC32C_BLK zero
 * bytes (no pre- or post-inversion) */
static uint32_t      mq_crc32c_shift[4][256];

/* 0 = not built, 1 = being built by some thread, 2 = ready */
static int           mq_crc32c_table_state;

/* the implementation mq_crc32c() uses, NULL until the first call */
static mq_crc32c_pt  mq_crc32c_impl;


static void
mq_crc32c_table_build(void)
{
    uint32_t  c, col[32];
    unsigned  n, k, i;

    for (n = 0; n < 256; n++) {
        c = n;
        for (k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ MQ_CRC32C_POLY : c >> 1;
        }
        mq_crc32c_table[0][n] = c;
    }

    for (n = 0; n < 256; n++) {
        c = mq_crc32c_table[0][n];
        for (k = 1; k < 8; k++) {
            c = mq_crc32c_table[0][c & 0xff] ^ (c >> 8);
            mq_crc32c_table[k][n] = c;
        }
    }

    /* the image of each single bit of the register under the shift, then
     * every byte value as the sum of its bits' images */

    for (n = 0; n < 32; n++) {
        c = (uint32_t) 1 << n;
        for (i = 0; i < MQ_CRC32C_BLK; i++) {
            c = mq_crc32c_table[0][c & 0xff] ^ (c >> 8);
        }
        col[n] = c;
    }

    for (k = 0; k < 4; k++) {
        for (n = 0; n < 256; n++) {
            c = 0;
            for (i = 0; i < 8; i++) {
                if (n & (1u << i)) {
                    c ^= col[8 * k + i];
                }
            }
            mq_crc32c_shift[k][n] = c;
        }
    }
}


/* Builds the tables exactly once; a thread arriving while another builds
 * waits for it (the build takes microseconds). */
static void
mq_crc32c_table_init(void)
{
    int  expected;

    if (__atomic_load_n(&mq_crc32c_table_state, __ATOMIC_ACQUIRE) == 2) {
        return;
    }

    expected = 0;
    if (__atomic_compare_exchange_n(&mq_crc32c_table_state, &expected, 1, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    {
        mq_crc32c_table_build();
        __atomic_store_n(&mq_crc32c_table_state, 2, __ATOMIC_RELEASE);
        return;
    }

    while (__atomic_load_n(&mq_crc32c_table_state, __ATOMIC_ACQUIRE) != 2) {
        /* another thread is building the tables */
    }
}


static uint32_t
mq_crc32c_le32(const unsigned char *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8
           | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}


/* The portable path; exported so tests can compare it with the hardware
 * path. */
uint32_t
mq_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    uint32_t              lo, hi;
    const unsigned char  *p;

    mq_crc32c_table_init();

    p = buf;
    crc = ~crc;

    while (len > 0 && ((uintptr_t) p & 7) != 0) {
        crc = mq_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }

    while (len >= 8) {
        lo = crc ^ mq_crc32c_le32(p);
        hi = mq_crc32c_le32(p + 4);

        crc = mq_crc32c_table[7][lo & 0xff]
              ^ mq_crc32c_table[6][(lo >> 8) & 0xff]
              ^ mq_crc32c_table[5][(lo >> 16) & 0xff]
              ^ mq_crc32c_table[4][lo >> 24]
              ^ mq_crc32c_table[3][hi & 0xff]
              ^ mq_crc32c_table[2][(hi >> 8) & 0xff]
              ^ mq_crc32c_table[1][(hi >> 16) & 0xff]
              ^ mq_crc32c_table[0][hi >> 24];

        p += 8;
        len -= 8;
    }

    while (len > 0) {
        crc = mq_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }

    return ~crc;
}


#if defined(__x86_64__)

static uint32_t
mq_crc32c_shift_blk(uint32_t c)
{
    return mq_crc32c_shift[0][c & 0xff]
           ^ mq_crc32c_shift[1][(c >> 8) & 0xff]
           ^ mq_crc32c_shift[2][(c >> 16) & 0xff]
           ^ mq_crc32c_shift[3][c >> 24];
}


/* Needs the tables: mq_crc32c_pick() builds them before handing this out. */
__attribute__((target("sse4.2")))
static uint32_t
mq_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    size_t                i;
    uint64_t              c, c1, c2, w0, w1, w2, w3;
    const unsigned char  *p;

    /* no alignment prologue: unaligned 8-byte loads cost nothing extra on
     * CPUs with SSE4.2, and short records would pay for it */

    p = buf;
    c = ~crc;

    while (len >= 3 * MQ_CRC32C_BLK) {
        c1 = 0;
        c2 = 0;

        for (i = 0; i < MQ_CRC32C_BLK; i += 8) {
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + MQ_CRC32C_BLK + i, 8);
            memcpy(&w2, p + 2 * MQ_CRC32C_BLK + i, 8);
            c = __builtin_ia32_crc32di(c, w0);
            c1 = __builtin_ia32_crc32di(c1, w1);
            c2 = __builtin_ia32_crc32di(c2, w2);
        }

        c = mq_crc32c_shift_blk((uint32_t) c) ^ (uint32_t) c1;
        c = mq_crc32c_shift_blk((uint32_t) c) ^ (uint32_t) c2;

        p += 3 * MQ_CRC32C_BLK;
        len -= 3 * MQ_CRC32C_BLK;
    }

    while (len >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c = __builtin_ia32_crc32di(c, w1);
        c = __builtin_ia32_crc32di(c, w2);
        c = __builtin_ia32_crc32di(c, w3);
        p += 32;
        len -= 32;
    }

    while (len >= 8) {
        memcpy(&w0, p, 8);
        c = __builtin_ia32_crc32di(c, w0);
        p += 8;
        len -= 8;
    }

    while (len > 0) {
        c = __builtin_ia32_crc32qi((uint32_t) c, *p++);
        len--;
    }

    return ~(uint32_t) c;
}


static mq_crc32c_pt
mq_crc32c_pick(void)
{
    mq_crc32c_table_init();

    __builtin_cpu_init();

    if (__builtin_cpu_supports("sse4.2")) {
        return mq_crc32c_hw;
    }

    return mq_crc32c_sw;
}

#else

static mq_crc32c_pt
mq_crc32c_pick(void)
{
    return mq_crc32c_sw;
}

#endif


uint32_t
mq_crc32c(uint32_t crc, const void *buf, size_t len)
{
    mq_crc32c_pt  f;

    f = __atomic_load_n(&mq_crc32c_impl, __ATOMIC_ACQUIRE);

    if (f == NULL) {
        f = mq_crc32c_pick();
        __atomic_store_n(&mq_crc32c_impl, f, __ATOMIC_RELEASE);
    }

    return f(crc, buf, len);
}
