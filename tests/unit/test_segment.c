// links: memqd/segment.c memqd/sys.c memqd/log.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_segment.c: segment.c's small pieces: segment file names (seg_name,
 * seg_parse_name), seg_create (in <srv.data_fd>/<queue>/) and seg_pwrite,
 * and the position file (position_write, position_read, position_save,
 * position_read_pending): its exact bytes, round trips, large lists of
 * pending items, when it is written in place, and every way it can be
 * missing or damaged, which must read as seq 0.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mq_crc32c.h"
#include "mq_frame.h"
#include "segment.h"
#include "server.h"


#define POS_SIZE  20
#define POS2_MIN  28


typedef struct {
    char  dir[64];                  /* mkdtemp() path */
    int   dirfd;                    /* O_DIRECTORY fd of dir */
} fx_t;


static int
setup(void **state)
{
    fx_t  *f;

    f = calloc(1, sizeof(fx_t));
    if (f == NULL) {
        return -1;
    }

    strcpy(f->dir, "/tmp/memq-unit-segment-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }

    f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->dirfd == -1) {
        rmdir(f->dir);
        free(f);
        return -1;
    }

    srv.data_fd = f->dirfd;
    *state = f;
    return 0;
}


/* Removes everything below dirfd's directory (two levels: queue
 * directories and their files). */
static void
clear_dir(int dirfd, int depth)
{
    int             fd, sub;
    DIR            *d;
    struct dirent  *de;

    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    d = fd == -1 ? NULL : fdopendir(fd);

    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (unlinkat(dirfd, de->d_name, 0) == 0) {
            continue;
        }
        if (depth > 0) {
            sub = openat(dirfd, de->d_name,
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub != -1) {
                clear_dir(sub, depth - 1);
                close(sub);
            }
        }
        unlinkat(dirfd, de->d_name, AT_REMOVEDIR);
    }

    if (d != NULL) {
        closedir(d);
    }
}


static int
teardown(void **state)
{
    fx_t  *f;

    f = *state;

    clear_dir(f->dirfd, 1);
    close(f->dirfd);
    rmdir(f->dir);
    free(f);
    srv.data_fd = -1;
    return 0;
}


static void
put_file(fx_t *f, const char *name, const void *data, size_t len)
{
    int  fd;

    fd = openat(f->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0644);
    assert_true(fd != -1);
    assert_int_equal(seg_pwrite(fd, data, len, 0), 0);
    close(fd);
}


/* Reads up to cap bytes of name; returns the count, -1 if missing. */
static ssize_t
get_file(fx_t *f, const char *name, unsigned char *buf, size_t cap)
{
    int      fd;
    ssize_t  n;

    fd = openat(f->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    n = read(fd, buf, cap);
    close(fd);
    return n;
}


/* ---- segment names ---- */

static void
test_seg_name_format(void **state)
{
    char  buf[SEG_NAME_LEN + 1];

    (void) state;

    seg_name(buf, 1);
    assert_string_equal(buf, "00000000000000000001.seg");

    seg_name(buf, 52113);
    assert_string_equal(buf, "00000000000000052113.seg");

    seg_name(buf, 0);
    assert_string_equal(buf, "00000000000000000000.seg");

    seg_name(buf, UINT64_MAX);
    assert_string_equal(buf, "18446744073709551615.seg");
    assert_int_equal(strlen(buf), SEG_NAME_LEN);
}


static void
test_seg_name_round_trip(void **state)
{
    char            buf[SEG_NAME_LEN + 1];
    size_t          i;
    uint64_t        id;
    const uint64_t  ids[] = {
        0, 1, 9, 10, 52113, 4294967295ull, 4294967296ull,
        1000000000000000000ull, 9999999999999999999ull,
        18446744073709551609ull
    };

    (void) state;

    for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        seg_name(buf, ids[i]);
        id = 12345;
        assert_int_equal(seg_parse_name(buf, &id), 0);
        assert_int_equal(id, ids[i]);
    }

    /* names sort as their ids do */
    for (id = 1; id < 100000000000000000ull; id = id * 10 + 3) {
        char  a[SEG_NAME_LEN + 1], b[SEG_NAME_LEN + 1];

        seg_name(a, id);
        seg_name(b, id + 1);
        assert_true(strcmp(a, b) < 0);
    }
}


static void
test_seg_parse_name_rejects(void **state)
{
    size_t       i;
    uint64_t     id;
    const char  *bad[] = {
        "",
        ".seg",
        "1.seg",
        "0000000000000000001.seg",            /* 19 digits */
        "000000000000000000001.seg",          /* 21 digits */
        "00000000000000000001",               /* no suffix */
        "00000000000000000001.SEG",
        "00000000000000000001.seg.tmp",
        "00000000000000000001.segx",
        "00000000000000000001.sex",
        "0000000000000000000a.seg",
        "a0000000000000000000.seg",
        "000000000 000000000.seg",
        "+0000000000000000001.seg",
        "-0000000000000000001.seg",
        "0x000000000000000001.seg",
        "99999999999999999999.seg",           /* > UINT64_MAX */
        "18446744073709551616.seg",           /* UINT64_MAX + 1 */
        "20000000000000000000.seg",
        "position",
        "position.tmp",
        "..",
    };

    (void) state;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        id = 777;
        if (seg_parse_name(bad[i], &id) != -1) {
            print_error("accepted \"%s\"\n", bad[i]);
            fail();
        }
        assert_int_equal(id, 777);
    }
}


/* ---- seg_create, seg_pwrite ---- */

/* Opens q1/<segment id> for reading and writing, or -1. */
static int
open_seg(fx_t *f, uint64_t id)
{
    char  path[8 + SEG_NAME_LEN];

    memcpy(path, "q1/", 3);
    seg_name(path + 3, id);
    return openat(f->dirfd, path, O_RDWR | O_CLOEXEC);
}


/* Runs seg_create() with its log line kept off the test output. */
static int
seg_create_quiet(const char *qname, uint64_t id)
{
    int  rc, saved, devnull;

    fflush(stderr);
    saved = dup(STDERR_FILENO);
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(saved != -1 && devnull != -1);
    dup2(devnull, STDERR_FILENO);

    rc = seg_create(qname, id, 0x5eedf00du);

    dup2(saved, STDERR_FILENO);
    close(saved);
    close(devnull);
    return rc;
}


static void
test_seg_create(void **state)
{
    fx_t           *f = *state;
    int             fd;
    unsigned        ver;
    uint32_t        mark;
    unsigned char   buf[64];
    struct stat     st;

    assert_int_equal(mkdirat(f->dirfd, "q1", 0755), 0);
    assert_int_equal(seg_create("q1", 42, 0x5eedf00du), 0);

    fd = open_seg(f, 42);
    assert_true(fd >= 0);

    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, MQ_SEG_HDR_SIZE);

    assert_int_equal(pread(fd, buf, sizeof(buf), 0), MQ_SEG_HDR_SIZE);
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_OK);
    assert_int_equal(mark, 0x5eedf00du);
    assert_int_equal(ver, MQ_SEG_VERSION);

    /* records can be written after the header and read back */
    assert_int_equal(seg_pwrite(fd, "abc", 3, MQ_SEG_HDR_SIZE), 0);
    assert_int_equal(pread(fd, buf, 3, MQ_SEG_HDR_SIZE), 3);
    assert_memory_equal(buf, "abc", 3);
    close(fd);

    /* another id, another file beside it */
    assert_int_equal(seg_create("q1", 52113, 0x5eedf00du), 0);
    fd = open_seg(f, 52113);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, sizeof(buf), 0), MQ_SEG_HDR_SIZE);
    assert_int_equal(mq_frame_seg_decode(buf, &ver, &mark), MQ_OK);
    assert_int_equal(mark, 0x5eedf00du);
    close(fd);
}


static void
test_seg_create_never_clobbers(void **state)
{
    fx_t           *f = *state;
    int             fd;
    ssize_t         n;
    unsigned char   buf[64];

    /* an existing file of the same name may hold records: refuse */
    assert_int_equal(mkdirat(f->dirfd, "q1", 0755), 0);
    assert_int_equal(seg_create("q1", 42, 0x5eedf00du), 0);
    fd = open_seg(f, 42);
    assert_true(fd >= 0);
    assert_int_equal(seg_pwrite(fd, "records from an earlier life", 28,
                                MQ_SEG_HDR_SIZE), 0);
    close(fd);

    errno = 0;
    assert_int_equal(seg_create_quiet("q1", 42), -1);
    assert_int_equal(errno, EEXIST);

    fd = open_seg(f, 42);
    assert_true(fd >= 0);
    n = pread(fd, buf, sizeof(buf), MQ_SEG_HDR_SIZE);
    assert_int_equal(n, 28);
    assert_memory_equal(buf, "records from an earlier life", 28);
    close(fd);
}


static void
test_seg_create_fails(void **state)
{
    fx_t  *f = *state;

    /* no queue directory */
    errno = 0;
    assert_int_equal(seg_create_quiet("q1", 1), -1);
    assert_int_equal(errno, ENOENT);

    /* no data directory */
    srv.data_fd = -1;
    errno = 0;
    assert_int_equal(seg_create_quiet("q1", 1), -1);
    assert_int_equal(errno, EBADF);
    srv.data_fd = f->dirfd;

    /* the queue "directory" is a file */
    put_file(f, "q2", "x", 1);
    assert_int_equal(seg_create_quiet("q2", 1), -1);
}


static void
test_seg_pwrite(void **state)
{
    fx_t           *f = *state;
    int             fd;
    size_t          i;
    unsigned char  *big, *back;

    big = malloc(3 * 1024 * 1024);
    back = malloc(3 * 1024 * 1024);
    assert_non_null(big);
    assert_non_null(back);

    for (i = 0; i < 3 * 1024 * 1024; i++) {
        big[i] = (unsigned char) (i * 13 + (i >> 12));
    }

    put_file(f, "data", "", 0);
    fd = openat(f->dirfd, "data", O_RDWR | O_CLOEXEC);
    assert_true(fd != -1);

    /* at an offset past the end: the gap reads as zeros */
    assert_int_equal(seg_pwrite(fd, big, 3 * 1024 * 1024, 100), 0);
    assert_int_equal(pread(fd, back, 100, 0), 100);
    for (i = 0; i < 100; i++) {
        assert_int_equal(back[i], 0);
    }
    assert_int_equal(pread(fd, back, 3 * 1024 * 1024, 100), 3 * 1024 * 1024);
    assert_memory_equal(back, big, 3 * 1024 * 1024);

    assert_int_equal(seg_pwrite(fd, "", 0, 0), 0);
    close(fd);

    /* a read-only fd: -1 with errno */
    fd = openat(f->dirfd, "data", O_RDONLY | O_CLOEXEC);
    assert_true(fd != -1);
    errno = 0;
    assert_int_equal(seg_pwrite(fd, big, 10, 0), -1);
    assert_int_equal(errno, EBADF);
    close(fd);

    free(big);
    free(back);
}


/* ---- the position file ---- */

static void
test_position_layout(void **state)
{
    fx_t           *f = *state;
    uint32_t        crc;
    unsigned char   buf[64];
    const unsigned char  want[16] = {
        'M', 'Q', 'P', 'O', 'S', 0, 0, 1,
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01
    };

    assert_int_equal(position_write(f->dirfd, 0x0102030405060708ull), 0);

    assert_int_equal(get_file(f, "position", buf, sizeof(buf)), POS_SIZE);
    assert_memory_equal(buf, want, 16);

    crc = mq_crc32c(0, want, 16);
    assert_int_equal(buf[16], crc & 0xff);
    assert_int_equal(buf[17], (crc >> 8) & 0xff);
    assert_int_equal(buf[18], (crc >> 16) & 0xff);
    assert_int_equal(buf[19], crc >> 24);

    /* written as position.tmp, renamed over position: no tmp left */
    assert_int_equal(faccessat(f->dirfd, "position.tmp", F_OK, 0), -1);
}


static void
test_position_round_trip(void **state)
{
    fx_t            *f = *state;
    size_t           i;
    uint64_t         seq;
    const uint64_t   seqs[] = {
        0, 1, 2, 255, 256, 65536, 4294967295ull, 4294967296ull,
        0x8000000000000000ull, UINT64_MAX - 1, UINT64_MAX, 7
    };

    for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        assert_int_equal(position_write(f->dirfd, seqs[i]), 0);
        seq = 12345;
        assert_int_equal(position_read(f->dirfd, &seq), 0);
        assert_int_equal(seq, seqs[i]);
    }
}


static void
test_position_missing(void **state)
{
    fx_t      *f = *state;
    uint64_t   seq;

    seq = 99;
    assert_int_equal(position_read(f->dirfd, &seq), -1);
    assert_int_equal(seq, 0);

    /* only the tmp file: a write that never reached its rename */
    put_file(f, "position.tmp", "MQPOS", 5);
    seq = 99;
    assert_int_equal(position_read(f->dirfd, &seq), -1);
    assert_int_equal(seq, 0);

    seq = 99;
    assert_int_equal(position_read(-1, &seq), -1);
    assert_int_equal(seq, 0);
}


static void
test_position_damaged(void **state)
{
    fx_t           *f = *state;
    size_t          i, bit;
    uint32_t        crc;
    uint64_t        seq;
    unsigned char   good[POS_SIZE], bad[POS_SIZE + 8];

    assert_int_equal(position_write(f->dirfd, 123456789), 0);
    assert_int_equal(get_file(f, "position", good, sizeof(good)), POS_SIZE);

    /* every bit of every byte */
    for (i = 0; i < POS_SIZE; i++) {
        for (bit = 0; bit < 8; bit++) {
            memcpy(bad, good, POS_SIZE);
            bad[i] ^= (unsigned char) (1u << bit);
            put_file(f, "position", bad, POS_SIZE);

            seq = 99;
            assert_int_equal(position_read(f->dirfd, &seq), -1);
            assert_int_equal(seq, 0);
        }
    }

    /* every wrong size: cut short, or with bytes after a valid file */
    for (i = 0; i < sizeof(bad); i++) {
        if (i == POS_SIZE) {
            continue;
        }
        memset(bad, 0, sizeof(bad));
        memcpy(bad, good, i < POS_SIZE ? i : POS_SIZE);
        put_file(f, "position", bad, i);

        seq = 99;
        assert_int_equal(position_read(f->dirfd, &seq), -1);
        assert_int_equal(seq, 0);
    }

    /* a future version with a matching crc is not read as ours */
    memcpy(bad, good, POS_SIZE);
    bad[7] = 2;
    crc = mq_crc32c(0, bad, 16);
    bad[16] = (unsigned char) crc;
    bad[17] = (unsigned char) (crc >> 8);
    bad[18] = (unsigned char) (crc >> 16);
    bad[19] = (unsigned char) (crc >> 24);
    put_file(f, "position", bad, POS_SIZE);
    seq = 99;
    assert_int_equal(position_read(f->dirfd, &seq), -1);
    assert_int_equal(seq, 0);

    /* and the good bytes read again */
    put_file(f, "position", good, POS_SIZE);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 123456789);
}


/* A write that cannot complete leaves the previous position in place
 * (one of another length: renamed into place, see the next case). */
static void
test_position_write_fails_keeps_old(void **state)
{
    fx_t            *f = *state;
    size_t           n;
    uint64_t         seq, *pending;
    const uint64_t   two[] = { 3, 4 };

    assert_int_equal(position_write(f->dirfd, 10), 0);
    assert_int_equal(mkdirat(f->dirfd, "position.tmp", 0755), 0);

    assert_int_equal(position_save(f->dirfd, 20, two, 2), -1);

    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), 0);
    assert_int_equal(seq, 10);
    assert_int_equal(n, 0);
    assert_null(pending);

    assert_int_equal(position_write(-1, 30), -1);
}


static ino_t
ino_of(fx_t *f, const char *name)
{
    struct stat  st;

    assert_int_equal(fstatat(f->dirfd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
    return st.st_ino;
}


/*
 * A record of the file's own length, within one sector, is written over
 * the file's bytes (the same inode: no file made and renamed, no inode
 * freed); one of another length, or longer than a sector, is renamed
 * into place.  A position that is a symbolic link or has a second name
 * is replaced, never written through.
 */
static void
test_position_in_place(void **state)
{
    fx_t            *f = *state;
    size_t           n, i;
    ino_t            ino;
    uint64_t         seq, *pending, many[100];
    const uint64_t   two[] = { 3, 4 }, other[] = { 5, 6 };
    unsigned char    buf[64];

    assert_int_equal(position_write(f->dirfd, 10), 0);
    ino = ino_of(f, "position");

    assert_int_equal(position_write(f->dirfd, 20), 0);
    assert_int_equal(ino_of(f, "position"), ino);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 20);
    assert_int_equal(faccessat(f->dirfd, "position.tmp", F_OK, 0), -1);

    /* another length: a new file */
    assert_int_equal(position_save(f->dirfd, 30, two, 2), 0);
    assert_true(ino_of(f, "position") != ino);
    ino = ino_of(f, "position");

    /* the same length again: in place */
    assert_int_equal(position_save(f->dirfd, 31, other, 2), 0);
    assert_int_equal(ino_of(f, "position"), ino);
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), 0);
    assert_int_equal(seq, 31);
    assert_int_equal(n, 2);
    assert_int_equal(pending[0], 5);
    assert_int_equal(pending[1], 6);
    free(pending);

    /* longer than a sector (28 + 8 x 100 bytes): renamed each time */
    for (i = 0; i < 100; i++) {
        many[i] = 100 + i;
    }
    assert_int_equal(position_save(f->dirfd, 40, many, 100), 0);
    ino = ino_of(f, "position");
    assert_int_equal(position_save(f->dirfd, 41, many, 100), 0);
    assert_true(ino_of(f, "position") != ino);
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), 0);
    assert_int_equal(seq, 41);
    assert_int_equal(n, 100);
    free(pending);

    /* a link to another file: that file keeps its bytes */
    assert_int_equal(unlinkat(f->dirfd, "position", 0), 0);
    assert_int_equal(position_write(f->dirfd, 50), 0);
    assert_int_equal(renameat(f->dirfd, "position", f->dirfd, "victim"), 0);
    assert_int_equal(symlinkat("victim", f->dirfd, "position"), 0);
    assert_int_equal(position_write(f->dirfd, 51), 0);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 51);
    assert_int_equal(get_file(f, "victim", buf, sizeof(buf)), POS_SIZE);
    assert_int_equal(buf[8], 50);

    /* a second name: the same */
    assert_int_equal(unlinkat(f->dirfd, "victim", 0), 0);
    assert_int_equal(linkat(f->dirfd, "position", f->dirfd, "victim", 0), 0);
    assert_int_equal(position_write(f->dirfd, 52), 0);
    assert_int_equal(get_file(f, "victim", buf, sizeof(buf)), POS_SIZE);
    assert_int_equal(buf[8], 51);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 52);
}


/* A FIFO in the position file's place holds nothing up: a read says
 * there is no position, a write replaces it (SIGALRM ends the test if
 * either blocks). */
static void
test_position_fifo(void **state)
{
    fx_t      *f = *state;
    uint64_t   seq;

    alarm(10);

    assert_int_equal(mkfifoat(f->dirfd, "position", 0644), 0);
    assert_int_equal(position_read(f->dirfd, &seq), -1);
    assert_int_equal(seq, 0);

    assert_int_equal(position_write(f->dirfd, 7), 0);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 7);

    alarm(0);
}


/* Saved through the data directory and the queue's name, as memqd does:
 * <qname>/position, in place or renamed the same way; a name longer than
 * any queue's is refused. */
static void
test_position_save_by_name(void **state)
{
    fx_t            *f = *state;
    int              qfd;
    char             name[MQ_NAME_MAX + 2];
    uint64_t         seq;
    const uint64_t   two[] = { 3, 4 };

    assert_int_equal(mkdirat(f->dirfd, "q", 0755), 0);
    qfd = openat(f->dirfd, "q", O_RDONLY | O_DIRECTORY);
    assert_true(qfd != -1);

    assert_int_equal(position_save_counts(f->dirfd, "q", 9, NULL, NULL, 0),
                     0);
    assert_int_equal(position_read(qfd, &seq), 0);
    assert_int_equal(seq, 9);

    assert_int_equal(position_save_counts(f->dirfd, "q", 11, two, NULL, 2),
                     0);
    assert_int_equal(position_save_counts(f->dirfd, "q", 12, two, NULL, 2),
                     0);
    assert_int_equal(position_read(qfd, &seq), 0);
    assert_int_equal(seq, 12);
    assert_int_equal(faccessat(qfd, "position.tmp", F_OK, 0), -1);

    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(position_save_counts(f->dirfd, name, 1, NULL, NULL, 0),
                     -1);
    close(qfd);
}


/* A stale position.tmp from a crash is overwritten, not appended to. */
static void
test_position_stale_tmp(void **state)
{
    fx_t      *f = *state;
    uint64_t   seq;
    char       junk[100];

    memset(junk, 'j', sizeof(junk));
    put_file(f, "position.tmp", junk, sizeof(junk));

    assert_int_equal(position_write(f->dirfd, 5), 0);
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 5);
}


static void
test_position_pending_round_trip(void **state)
{
    fx_t            *f = *state;
    size_t           n;
    uint64_t         seq, *pending;
    const uint64_t   want[] = { 3, 9, 1ull << 40 };

    assert_int_equal(position_save(f->dirfd, 77, want, 3), 0);
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), 0);
    assert_int_equal(seq, 77);
    assert_int_equal(n, 3);
    assert_memory_equal(pending, want, sizeof(want));
    free(pending);

    /* the plain reader sees the cursor */
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 77);

    /* a damaged version 2 file reads as nothing */
    {
        int            fd;
        unsigned char  b = 0xff;

        fd = openat(f->dirfd, "position", O_WRONLY);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, &b, 1, 30), 1);
        close(fd);
    }
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n),
                     -1);
    assert_int_equal(seq, 0);
    assert_null(pending);
}


/* Writes n pending seqs (first, first + 2, ...) with cursor seq; checks
 * they read back intact.  Returns the file size. */
static size_t
pending_round_trip(fx_t *f, uint64_t seq, size_t n, uint64_t first)
{
    size_t       i, got;
    uint64_t    *want, *pending, rseq;
    struct stat  st;

    want = malloc((n ? n : 1) * sizeof(uint64_t));
    assert_non_null(want);
    for (i = 0; i < n; i++) {
        want[i] = first + 2 * i;
    }

    assert_int_equal(position_save(f->dirfd, seq, want, n), 0);

    assert_int_equal(fstatat(f->dirfd, "position", &st, 0), 0);
    assert_int_equal(st.st_size, n ? POS2_MIN + 8 * n : POS_SIZE);

    rseq = 0;
    pending = NULL;
    got = 12345;
    assert_int_equal(position_read_pending(f->dirfd, &rseq, &pending, &got),
                     0);
    assert_true(rseq == seq);
    assert_int_equal(got, n);

    if (n == 0) {
        assert_null(pending);
    } else {
        assert_non_null(pending);
        if (memcmp(pending, want, n * sizeof(uint64_t)) != 0) {
            for (i = 0; i < n && pending[i] == want[i]; i++) {
                /* void */
            }
            fail_msg("pending[%zu] = %llu, want %llu", i,
                     (unsigned long long) pending[i],
                     (unsigned long long) want[i]);
        }
    }

    free(pending);
    free(want);
    return (size_t) st.st_size;
}


/* issue 7: a position file with more than 1,048,576 owed items read back
 * as damaged, so a restart delivered them all again, or none */
static void
test_position_pending_large(void **state)
{
    fx_t      *f = *state;
    uint64_t   seq;

    pending_round_trip(f, 5, 0, 0);
    pending_round_trip(f, 5000, 1, 4999);
    pending_round_trip(f, 1u << 20, 1u << 20, 1);
    pending_round_trip(f, 3000000, (1u << 20) + 1, 7);
    assert_int_equal(pending_round_trip(f, 4000001, 2000000, 1),
                     POS2_MIN + 8 * 2000000);

    /* the plain reader sees the cursor of the big file */
    assert_int_equal(position_read(f->dirfd, &seq), 0);
    assert_int_equal(seq, 4000001);
}


/* the count must match the size, the CRC the bytes: otherwise the file
 * reads as nothing */
static void
test_position_pending_damaged(void **state)
{
    fx_t           *f = *state;
    size_t          n, len;
    uint32_t        crc;
    uint64_t        seq, *pending;
    unsigned char   buf[POS2_MIN + 8 * 4 + 8];
    const uint64_t  want[] = { 10, 11, 20, 30 };

    assert_int_equal(position_save(f->dirfd, 40, want, 4), 0);
    len = POS2_MIN + 8 * 4;
    assert_int_equal(get_file(f, "position", buf, sizeof(buf)), len);
    assert_memory_equal(buf, "MQPOS\0\0\2", 8);
    assert_int_equal(buf[16], 4);
    assert_int_equal(buf[24], 10);

    /* a count that disagrees with the size, with a CRC that holds */
    buf[16] = 5;
    crc = mq_crc32c(0, buf, len - 4);
    buf[len - 4] = (unsigned char) crc;
    buf[len - 3] = (unsigned char) (crc >> 8);
    buf[len - 2] = (unsigned char) (crc >> 16);
    buf[len - 1] = (unsigned char) (crc >> 24);
    put_file(f, "position", buf, len);

    seq = 99;
    pending = (uint64_t *) buf;
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), -1);
    assert_int_equal(seq, 0);
    assert_null(pending);
    assert_int_equal(n, 0);

    /* cut short by one item */
    assert_int_equal(position_save(f->dirfd, 40, want, 4), 0);
    assert_int_equal(get_file(f, "position", buf, sizeof(buf)), len);
    put_file(f, "position", buf, len - 8);
    assert_int_equal(position_read_pending(f->dirfd, &seq, &pending, &n), -1);
    assert_null(pending);
}


#define T(name)  cmocka_unit_test_setup_teardown(name, setup, teardown)

int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_seg_name_format),
        cmocka_unit_test(test_seg_name_round_trip),
        cmocka_unit_test(test_seg_parse_name_rejects),
        T(test_seg_create),
        T(test_seg_create_never_clobbers),
        T(test_position_pending_round_trip),
        T(test_position_pending_large),
        T(test_position_pending_damaged),
        T(test_seg_create_fails),
        T(test_seg_pwrite),
        T(test_position_layout),
        T(test_position_round_trip),
        T(test_position_missing),
        T(test_position_damaged),
        T(test_position_write_fails_keeps_old),
        T(test_position_in_place),
        T(test_position_save_by_name),
        T(test_position_fifo),
        T(test_position_stale_tmp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
