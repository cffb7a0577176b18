// links: memqd/recover.c memqd/segment.c memqd/sys.c memqd/log.c memqd/config.c
/*
 * test_recover.c: recover_queue() over synthetic queue directories.  Each
 * test writes segment files itself (mq_frame_seg_encode() and
 * mq_frame_encode(), named by seg_name()) in a fresh mkdtemp() directory,
 * damages them, runs recovery with stderr captured, and checks the queue
 * (segments, counters, next seq, cursor), the log lines and the files left
 * on disk.
 *
 * Record i of a segment written here has seq first + i and a payload whose
 * bytes depend on its seq, so a record misplaced by the scan would not
 * pass its CRC.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "mq_frame.h"
#include "segment.h"
#include "server.h"


#define QNAME     "q1"
#define MAX_RECS  64
#define LOG_MAX   16384
#define MIB       (1024 * 1024)
#define SCAN_BUF  MIB               /* recover.c's read size */


/* main.c is not linked: the globals recovery may reach */
server_t  srv;


uint64_t
server_wall_ms(void)
{
    return 1764000000000ull;
}


typedef struct {
    char       dir[64];             /* mkdtemp() path */
    int        dirfd;               /* O_DIRECTORY fd of dir */
    queue_t   *q;                   /* last recovered queue, or NULL */
    char       log[LOG_MAX];        /* what the last recovery logged */
} fx_t;

/* a segment file as the test wrote it */
typedef struct {
    uint64_t   id;                  /* file name */
    uint64_t   first;               /* seq of record 0 */
    size_t     n;                   /* records */
    uint64_t   off[MAX_RECS + 1];   /* record offsets; off[n] = file size */
    uint64_t   bytes;               /* payload bytes of all records */
} tseg_t;


/* ---- fixture ---- */

static void
free_queue(fx_t *f)
{
    size_t  i;

    if (f->q == NULL) {
        return;
    }

    for (i = 0; i < f->q->nsegs; i++) {
        close(f->q->segs[i].fd);
    }

    free(f->q->segs);
    free(f->q->ret);
    free(f->q);
    f->q = NULL;
}


/* Removes every entry of the queue directory. */
static void
clear_dir(fx_t *f)
{
    int             fd;
    DIR            *d;
    struct dirent  *de;

    fd = openat(f->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(fd != -1);
    d = fdopendir(fd);
    assert_non_null(d);

    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (unlinkat(f->dirfd, de->d_name, 0) != 0) {
            unlinkat(f->dirfd, de->d_name, AT_REMOVEDIR);
        }
    }

    closedir(d);
}


static int
setup(void **state)
{
    fx_t  *f;

    f = calloc(1, sizeof(fx_t));
    if (f == NULL) {
        return -1;
    }

    strcpy(f->dir, "/tmp/memq-unit-recover-XXXXXX");
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

    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    fx_t  *f;

    f = *state;
    free_queue(f);
    clear_dir(f);
    close(f->dirfd);
    rmdir(f->dir);
    free(f);
    return 0;
}


/* ---- writing and damaging files ---- */

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


/*
 * Writes segment `id` with records first .. first + n - 1; record i has
 * lens[i] payload bytes, or len when lens is NULL.  s describes the file.
 */
static void
seg_write(fx_t *f, tseg_t *s, uint64_t id, uint64_t first, size_t n,
    const size_t *lens, size_t len)
{
    int              fd;
    char             name[SEG_NAME_LEN + 1];
    size_t           i, j, l;
    uint64_t         off;
    unsigned char   *rec, hdr[MQ_SEG_HDR_SIZE];
    mq_frame_hdr_t   h;

    assert_true(n <= MAX_RECS);

    memset(s, 0, sizeof(tseg_t));
    s->id = id;
    s->first = first;
    s->n = n;

    seg_name(name, id);
    fd = openat(f->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0644);
    assert_true(fd != -1);

    mq_frame_seg_encode(hdr, id);
    assert_int_equal(seg_pwrite(fd, hdr, sizeof(hdr), 0), 0);
    off = MQ_SEG_HDR_SIZE;

    for (i = 0; i < n; i++) {
        l = lens ? lens[i] : len;
        rec = malloc(MQ_FRAME_HDR_SIZE + l);
        assert_non_null(rec);

        for (j = 0; j < l; j++) {
            rec[MQ_FRAME_HDR_SIZE + j] = (unsigned char) ((first + i) * 131
                                                          + j);
        }

        memset(&h, 0, sizeof(h));
        h.len = (uint32_t) l;
        h.flags = (uint32_t) i;
        h.kind = MQ_FRAME_ITEM;
        h.seq = first + i;
        h.ctime = server_wall_ms();
        mq_frame_encode(rec, &h, rec + MQ_FRAME_HDR_SIZE);

        assert_int_equal(seg_pwrite(fd, rec, MQ_FRAME_HDR_SIZE + l, off), 0);
        free(rec);

        s->off[i] = off;
        s->bytes += l;
        off += MQ_FRAME_HDR_SIZE + l;
    }

    s->off[n] = off;
    close(fd);
}


/* Size of segment id on disk, -1 when it does not exist. */
static int64_t
seg_file_size(fx_t *f, uint64_t id)
{
    char         name[SEG_NAME_LEN + 1];
    struct stat  st;

    seg_name(name, id);
    if (fstatat(f->dirfd, name, &st, 0) != 0) {
        assert_int_equal(errno, ENOENT);
        return -1;
    }

    return (int64_t) st.st_size;
}


static void
seg_cut(fx_t *f, uint64_t id, uint64_t size)
{
    int   fd;
    char  name[SEG_NAME_LEN + 1];

    seg_name(name, id);
    fd = openat(f->dirfd, name, O_WRONLY | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(ftruncate(fd, (off_t) size), 0);
    close(fd);
}


static void
seg_flip(fx_t *f, uint64_t id, uint64_t off, unsigned char mask)
{
    int            fd;
    char           name[SEG_NAME_LEN + 1];
    unsigned char  c;

    seg_name(name, id);
    fd = openat(f->dirfd, name, O_RDWR | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(pread(fd, &c, 1, (off_t) off), 1);
    c ^= mask;
    assert_int_equal(pwrite(fd, &c, 1, (off_t) off), 1);
    close(fd);
}


static void
seg_add_bytes(fx_t *f, uint64_t id, const void *data, size_t len)
{
    int          fd;
    char         name[SEG_NAME_LEN + 1];
    struct stat  st;

    seg_name(name, id);
    fd = openat(f->dirfd, name, O_RDWR | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(seg_pwrite(fd, data, len, (uint64_t) st.st_size), 0);
    close(fd);
}


/* ---- running recovery ---- */

static void expect_log(fx_t *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));


static queue_t *
new_queue(fx_t *f)
{
    queue_t  *q;

    free_queue(f);

    /* as queue.c's queue_alloc() leaves it */
    q = calloc(1, sizeof(queue_t));
    assert_non_null(q);
    strcpy(q->name, QNAME);
    q->name_len = strlen(QNAME);
    q->dirfd = f->dirfd;
    q->next_seq = 1;
    q->rseq = 1;

    f->q = q;
    return q;
}


/*
 * recover_queue() on f->q with stderr captured into f->log; returns rc.
 * A sanitizer report inside recovery lands in the capture and is lost
 * with the process: MEMQ_UNIT_NO_CAPTURE=1 leaves stderr alone to see it
 * (the log checks then fail).
 */
static int
run_recover(fx_t *f)
{
    int       rc, saved;
    FILE     *tmp;
    ssize_t   n;

    if (getenv("MEMQ_UNIT_NO_CAPTURE") != NULL) {
        f->log[0] = '\0';
        return recover_queue(f->q);
    }

    tmp = tmpfile();
    assert_non_null(tmp);

    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(saved != -1);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) != -1);

    rc = recover_queue(f->q);

    dup2(saved, STDERR_FILENO);
    close(saved);

    n = pread(fileno(tmp), f->log, LOG_MAX - 1, 0);
    f->log[n > 0 ? n : 0] = '\0';
    fclose(tmp);

    return rc;
}


/* A new queue over f's directory, recovered; fails the test on error. */
static queue_t *
recover(fx_t *f)
{
    new_queue(f);
    assert_int_equal(run_recover(f), 0);
    return f->q;
}


static void
expect_log(fx_t *f, const char *fmt, ...)
{
    char     want[512];
    va_list  ap;

    va_start(ap, fmt);
    vsnprintf(want, sizeof(want), fmt, ap);
    va_end(ap);

    if (strstr(f->log, want) == NULL) {
        print_error("log has no \"%s\":\n%s\n", want, f->log);
        fail();
    }
}


static void
expect_no_log(fx_t *f, const char *text)
{
    if (strstr(f->log, text) != NULL) {
        print_error("log has \"%s\":\n%s\n", text, f->log);
        fail();
    }
}


/* The truncation warning for the newest segment. */
static void
expect_tail_cut(fx_t *f, uint64_t id, uint64_t off, const char *why,
    uint64_t dropped)
{
    char  name[SEG_NAME_LEN + 1];

    seg_name(name, id);
    expect_log(f, "[warn] recover: " QNAME "/%s:%" PRIu64 ": %s, truncated %"
               PRIu64 " bytes", name, off, why, dropped);
}


static void
expect_cursor(queue_t *q, size_t rseg, uint64_t roff, uint64_t rseq)
{
    assert_int_equal(q->rseg, rseg);
    assert_int_equal(q->roff, roff);
    assert_int_equal(q->rseq, rseq);
}


static void
expect_seg(queue_t *q, size_t i, uint64_t id, uint64_t size)
{
    assert_true(i < q->nsegs);
    assert_int_equal(q->segs[i].id, id);
    assert_int_equal(q->segs[i].size, size);
    assert_true(q->segs[i].fd >= 0);
}


/* ---- cases ---- */

static void
test_recover_unusable_dir_fails(void **state)
{
    fx_t     *f = *state;
    queue_t  *q;

    q = new_queue(f);
    q->dirfd = -1;

    assert_int_equal(run_recover(f), -1);
    expect_log(f, "[error] recover: " QNAME ": cannot list");
    assert_int_equal(q->nsegs, 0);
}


static void
test_recover_one_segment(void **state)
{
    fx_t          *f = *state;
    tseg_t         s;
    queue_t       *q;
    const size_t   lens[] = { 0, 1, 39, 40, 41, 100, 4096, 0, 7, 65536 };

    seg_write(f, &s, 1, 1, 10, lens, 0);
    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    expect_seg(q, 0, 1, s.off[10]);
    assert_int_equal(q->items, 10);
    assert_int_equal(q->bytes, s.bytes);
    assert_int_equal(q->next_seq, 11);
    assert_int_equal(q->wbase, s.off[10]);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
    assert_int_equal(seg_file_size(f, 1), s.off[10]);

    expect_log(f, "[info] recover: " QNAME ": 1 segments, 10 items, %" PRIu64
               " bytes, next seq 11", s.bytes);
    expect_no_log(f, "[warn]");
    expect_no_log(f, "[error]");
}


static void
test_recover_several_segments(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[3];
    queue_t  *q;

    /* written newest first: the directory order must not matter */
    seg_write(f, &s[2], 9, 9, 4, NULL, 3);
    seg_write(f, &s[0], 1, 1, 5, NULL, 100);
    seg_write(f, &s[1], 6, 6, 3, NULL, 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 3);
    expect_seg(q, 0, 1, s[0].off[5]);
    expect_seg(q, 1, 6, s[1].off[3]);
    expect_seg(q, 2, 9, s[2].off[4]);
    assert_int_equal(q->items, 12);
    assert_int_equal(q->bytes, 5 * 100 + 4 * 3);
    assert_int_equal(q->next_seq, 13);
    assert_int_equal(q->wbase, s[2].off[4]);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
    expect_no_log(f, "[warn]");
}


static void
test_recover_ignores_other_files(void **state)
{
    fx_t        *f = *state;
    tseg_t       s;
    queue_t     *q;
    size_t       i;
    const char  *names[] = {
        "1.seg", "foo", ".seg", "00000000000000000002.seg.tmp",
        "000000000000000000003.seg", "0000000000000000000x.seg",
        "00000000000000000004.SEG", "position.tmp"
    };

    seg_write(f, &s, 1, 1, 3, NULL, 10);
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        put_file(f, names[i], "junk", 4);
    }

    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    assert_int_equal(q->items, 3);
    assert_int_equal(q->next_seq, 4);

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        assert_int_equal(faccessat(f->dirfd, names[i], F_OK, 0), 0);
    }
}


/* A valid position.tmp is a write cut short: only "position" counts. */
static void
test_recover_position_tmp_ignored(void **state)
{
    fx_t     *f = *state;
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 1, 1, 5, NULL, 10);
    assert_int_equal(position_write(f->dirfd, 4), 0);
    assert_int_equal(renameat(f->dirfd, "position", f->dirfd, "position.tmp"),
                     0);

    q = recover(f);

    assert_int_equal(q->items, 5);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
    assert_int_equal(q->pos_written, 0);
}


/* An empty tail segment whose id is past the last record sets next_seq. */
static void
test_recover_empty_tail_segment_sets_next_seq(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 10);
    seg_write(f, &s[1], 100, 100, 0, NULL, 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 2);
    expect_seg(q, 1, 100, MQ_SEG_HDR_SIZE);
    assert_int_equal(q->items, 5);
    assert_int_equal(q->next_seq, 100);
    assert_int_equal(q->wbase, MQ_SEG_HDR_SIZE);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
}


static void
test_recover_header_only_segment_kept(void **state)
{
    fx_t     *f = *state;
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 7, 7, 0, NULL, 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    expect_seg(q, 0, 7, MQ_SEG_HDR_SIZE);
    assert_int_equal(q->items, 0);
    assert_int_equal(q->next_seq, 7);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 7);
    assert_int_equal(seg_file_size(f, 7), MQ_SEG_HDR_SIZE);
    assert_string_equal(f->log, "");
}


/* ---- the position file ---- */

static void
test_recover_position_skips_consumed(void **state)
{
    fx_t     *f = *state;
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 1, 1, 10, NULL, 50);
    assert_int_equal(position_write(f->dirfd, 4), 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    expect_seg(q, 0, 1, s.off[10]);
    assert_int_equal(q->items, 7);
    assert_int_equal(q->bytes, 7 * 50);
    assert_int_equal(q->next_seq, 11);
    assert_int_equal(q->pos_written, 4);
    expect_cursor(q, 0, s.off[3], 4);
}


static void
test_recover_position_in_second_segment(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[3];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 30);
    seg_write(f, &s[2], 11, 11, 2, NULL, 40);
    assert_int_equal(position_write(f->dirfd, 8), 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 3);
    assert_int_equal(q->items, 3 + 2);
    assert_int_equal(q->bytes, 3 * 30 + 2 * 40);
    assert_int_equal(q->next_seq, 13);
    expect_cursor(q, 1, s[1].off[2], 8);
}


static void
test_recover_position_at_segment_start(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 30);
    assert_int_equal(position_write(f->dirfd, 6), 0);

    q = recover(f);

    assert_int_equal(q->items, 5);
    assert_int_equal(q->bytes, 5 * 30);
    expect_cursor(q, 1, MQ_SEG_HDR_SIZE, 6);
}


static void
test_recover_position_everything_consumed(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 30);
    assert_int_equal(position_write(f->dirfd, 11), 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 2);
    assert_int_equal(q->items, 0);
    assert_int_equal(q->bytes, 0);
    assert_int_equal(q->next_seq, 11);
    assert_int_equal(q->pos_written, 11);
    expect_cursor(q, 1, s[1].off[5], 11);

    /* nothing waiting: no summary line */
    assert_string_equal(f->log, "");
}


static void
test_recover_damaged_position_delivers_everything(void **state)
{
    fx_t           *f = *state;
    int             fd;
    size_t          i, len;
    tseg_t          s[2];
    queue_t        *q;
    unsigned char   good[21], bad[21];

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 30);
    assert_int_equal(position_write(f->dirfd, 8), 0);

    fd = openat(f->dirfd, "position", O_RDONLY | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(read(fd, good, sizeof(good)), 20);
    close(fd);

    /* every byte flipped in turn, then every wrong size */
    for (i = 0; i < 20 + 3; i++) {
        memcpy(bad, good, 20);
        bad[20] = 0;
        len = 20;

        if (i < 20) {
            bad[i] ^= 0x10;
        } else {
            len = i == 20 ? 0 : i == 21 ? 19 : 21;
        }

        put_file(f, "position", bad, len);
        q = recover(f);

        assert_int_equal(q->pos_written, 0);
        assert_int_equal(q->items, 10);
        assert_int_equal(q->bytes, 5 * 20 + 5 * 30);
        assert_int_equal(q->next_seq, 11);
        expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
    }

    /* and the intact file still skips */
    put_file(f, "position", good, 20);
    q = recover(f);
    assert_int_equal(q->items, 3);
}


/* ---- torn and corrupt tails ---- */

static void
test_recover_torn_tail(void **state)
{
    fx_t      *f = *state;
    size_t     i;
    tseg_t     s;
    queue_t   *q;
    uint64_t   last, cut;
    /* cut points inside the last record, from its start */
    const uint64_t  cuts[] = {
        1, 7, 8, 20, 39,                  /* mid-header */
        40,                               /* header, no payload */
        41, 90, 139                       /* mid-payload */
    };

    for (i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        clear_dir(f);
        seg_write(f, &s, 1, 1, 5, NULL, 100);
        last = s.off[4];
        cut = last + cuts[i];
        seg_cut(f, 1, cut);

        q = recover(f);

        assert_int_equal(q->nsegs, 1);
        expect_seg(q, 0, 1, last);
        assert_int_equal(q->items, 4);
        assert_int_equal(q->bytes, 4 * 100);
        assert_int_equal(q->next_seq, 5);
        assert_int_equal(q->wbase, last);
        expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
        assert_int_equal(seg_file_size(f, 1), last);
        expect_tail_cut(f, 1, last, "torn record", cuts[i]);

        /* the truncated file recovers cleanly a second time */
        q = recover(f);
        assert_int_equal(q->items, 4);
        expect_no_log(f, "[warn]");
    }
}


/* A crash inside the first record leaves just the header. */
static void
test_recover_torn_first_record(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 10);
    seg_write(f, &s[1], 6, 6, 1, NULL, 10);
    seg_cut(f, 6, MQ_SEG_HDR_SIZE + 30);

    q = recover(f);

    assert_int_equal(q->nsegs, 2);
    expect_seg(q, 1, 6, MQ_SEG_HDR_SIZE);
    assert_int_equal(q->items, 5);
    assert_int_equal(q->next_seq, 6);
    assert_int_equal(seg_file_size(f, 6), MQ_SEG_HDR_SIZE);
    expect_tail_cut(f, 6, MQ_SEG_HDR_SIZE, "torn record", 30);
}


static void
test_recover_garbage_appended(void **state)
{
    fx_t           *f = *state;
    size_t          i, j;
    tseg_t          s;
    queue_t        *q;
    unsigned char   g[4096];
    struct {
        const char  *why;
        size_t       len;
        int          fill;             /* byte value, -1 pseudo-random */
    } cases[] = {
        { "torn record", 1, 'x' },
        { "torn record", 39, 'x' },
        { "unknown kind", 40, 0 },        /* zeroed blocks after a crash */
        { "unknown kind", 4096, 0 },
        { "bad length", 64, 0xff },
        { "bad length", 8, 0xff },        /* the length alone is enough */
        { NULL, 4096, -1 }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_dir(f);
        seg_write(f, &s, 1, 1, 3, NULL, 25);

        for (j = 0; j < cases[i].len; j++) {
            g[j] = cases[i].fill >= 0 ? (unsigned char) cases[i].fill
                                      : (unsigned char) (j * 7919 >> 3);
        }
        seg_add_bytes(f, 1, g, cases[i].len);

        q = recover(f);

        expect_seg(q, 0, 1, s.off[3]);
        assert_int_equal(q->items, 3);
        assert_int_equal(q->bytes, 3 * 25);
        assert_int_equal(q->next_seq, 4);
        assert_int_equal(seg_file_size(f, 1), s.off[3]);

        if (cases[i].why) {
            expect_tail_cut(f, 1, s.off[3], cases[i].why,
                            (uint64_t) cases[i].len);
        } else {
            expect_log(f, "truncated %zu bytes", cases[i].len);
        }
    }
}


/* A whole record header appended, its payload write cut short. */
static void
test_recover_appended_record_cut_short(void **state)
{
    fx_t           *f = *state;
    tseg_t          s;
    queue_t        *q;
    unsigned char   rec[MQ_FRAME_HDR_SIZE + 500];
    mq_frame_hdr_t  h;

    seg_write(f, &s, 1, 1, 2, NULL, 500);

    memset(rec, 'p', sizeof(rec));
    memset(&h, 0, sizeof(h));
    h.len = 500;
    h.kind = MQ_FRAME_ITEM;
    h.seq = 3;
    mq_frame_encode(rec, &h, rec + MQ_FRAME_HDR_SIZE);
    seg_add_bytes(f, 1, rec, MQ_FRAME_HDR_SIZE + 200);

    q = recover(f);

    assert_int_equal(q->items, 2);
    assert_int_equal(q->next_seq, 3);
    assert_int_equal(seg_file_size(f, 1), s.off[2]);
    expect_tail_cut(f, 1, s.off[2], "torn record", MQ_FRAME_HDR_SIZE + 200);
}


/* Every byte of the last record, header and payload, flipped in turn. */
static void
test_recover_flipped_byte_in_last_record(void **state)
{
    fx_t           *f = *state;
    size_t          i, m;
    tseg_t          s;
    queue_t        *q;
    const unsigned  masks[] = { 0x01, 0x80 };

    for (m = 0; m < 2; m++) {
        for (i = 0; i < MQ_FRAME_HDR_SIZE + 60; i++) {
            clear_dir(f);
            seg_write(f, &s, 1, 1, 4, NULL, 60);
            seg_flip(f, 1, s.off[3] + i, (unsigned char) masks[m]);

            q = recover(f);

            expect_seg(q, 0, 1, s.off[3]);
            assert_int_equal(q->items, 3);
            assert_int_equal(q->bytes, 3 * 60);
            assert_int_equal(q->next_seq, 4);
            assert_int_equal(seg_file_size(f, 1), s.off[3]);
            expect_log(f, "[warn] recover: " QNAME
                       "/00000000000000000001.seg:%" PRIu64 ": ", s.off[3]);
            expect_log(f, ", truncated %d bytes", MQ_FRAME_HDR_SIZE + 60);
        }
    }

    /* a payload flip is a crc mismatch */
    clear_dir(f);
    seg_write(f, &s, 1, 1, 4, NULL, 60);
    seg_flip(f, 1, s.off[3] + MQ_FRAME_HDR_SIZE + 59, 0x04);
    recover(f);
    expect_tail_cut(f, 1, s.off[3], "bad crc", MQ_FRAME_HDR_SIZE + 60);
}


/*
 * The first bad record of the newest segment ends it: the good records
 * after it are dropped too, and their seqs are handed out again.
 */
static void
test_recover_bad_middle_record_of_tail_drops_later_records(
    void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 3, NULL, 10);
    seg_write(f, &s[1], 4, 4, 10, NULL, 70);
    seg_flip(f, 4, s[1].off[4] + MQ_FRAME_HDR_SIZE + 33, 0x20);   /* seq 8 */

    q = recover(f);

    assert_int_equal(q->nsegs, 2);
    expect_seg(q, 0, 1, s[0].off[3]);
    expect_seg(q, 1, 4, s[1].off[4]);
    assert_int_equal(q->items, 3 + 4);
    assert_int_equal(q->bytes, 3 * 10 + 4 * 70);
    assert_int_equal(q->next_seq, 8);
    assert_int_equal(q->wbase, s[1].off[4]);
    assert_int_equal(seg_file_size(f, 4), s[1].off[4]);
    expect_tail_cut(f, 4, s[1].off[4], "bad crc", 6 * (MQ_FRAME_HDR_SIZE + 70));
    expect_no_log(f, "[error]");
}


/* Damage in an older segment is corruption: logged as an error, that
 * segment cut there, the newer segments kept whole. */
static void
test_recover_corrupt_older_segment(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[3];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 10, NULL, 20);
    seg_write(f, &s[1], 11, 11, 5, NULL, 30);
    seg_write(f, &s[2], 16, 16, 2, NULL, 40);
    seg_flip(f, 1, s[0].off[4] + 20, 0x01);                      /* seq 5 */

    q = recover(f);

    assert_int_equal(q->nsegs, 3);
    expect_seg(q, 0, 1, s[0].off[4]);
    expect_seg(q, 1, 11, s[1].off[5]);
    expect_seg(q, 2, 16, s[2].off[2]);
    assert_int_equal(q->items, 4 + 5 + 2);
    assert_int_equal(q->bytes, 4 * 20 + 5 * 30 + 2 * 40);
    assert_int_equal(q->next_seq, 18);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
    assert_int_equal(seg_file_size(f, 1), s[0].off[4]);
    assert_int_equal(seg_file_size(f, 11), s[1].off[5]);
    expect_log(f, "[error] recover: " QNAME "/00000000000000000001.seg:%"
               PRIu64 ": corrupt segment (bad crc), truncated %d bytes",
               s[0].off[4], 6 * (MQ_FRAME_HDR_SIZE + 20));
    expect_no_log(f, "[warn]");
}


static void
test_recover_torn_older_segment(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 20);
    seg_cut(f, 1, s[0].off[4] + 10);

    q = recover(f);

    expect_seg(q, 0, 1, s[0].off[4]);
    expect_seg(q, 1, 6, s[1].off[5]);
    assert_int_equal(q->items, 9);
    assert_int_equal(q->next_seq, 11);
    assert_int_equal(seg_file_size(f, 1), s[0].off[4]);
    expect_log(f, "[error] recover: " QNAME "/00000000000000000001.seg:%"
               PRIu64 ": corrupt segment (torn record), truncated 10 bytes",
               s[0].off[4]);
}


/* Consumed records before the damage: the cursor is still right. */
static void
test_recover_position_with_corrupt_tail(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 20);
    seg_flip(f, 6, s[1].off[3] + 50, 0x02);                      /* seq 9 */
    assert_int_equal(position_write(f->dirfd, 7), 0);

    q = recover(f);

    assert_int_equal(q->items, 2);                               /* 7, 8 */
    assert_int_equal(q->bytes, 2 * 20);
    assert_int_equal(q->next_seq, 9);
    expect_cursor(q, 1, s[1].off[1], 7);
    assert_int_equal(seg_file_size(f, 6), s[1].off[3]);
}


/* ---- segment headers ---- */

static void
test_recover_bad_header_newest_removed(void **state)
{
    fx_t     *f = *state;
    size_t    i;
    tseg_t    s[2];
    queue_t  *q;
    /* magic bytes, then the version byte */
    const size_t  at[] = { 0, 4, 5, 7 };

    for (i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        clear_dir(f);
        seg_write(f, &s[0], 1, 1, 5, NULL, 20);
        seg_write(f, &s[1], 6, 6, 5, NULL, 20);
        seg_flip(f, 6, at[i], 0x03);

        q = recover(f);

        assert_int_equal(q->nsegs, 1);
        expect_seg(q, 0, 1, s[0].off[5]);
        assert_int_equal(q->items, 5);
        assert_int_equal(q->next_seq, 6);
        assert_int_equal(q->wbase, s[0].off[5]);
        expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 1);
        assert_int_equal(seg_file_size(f, 6), -1);
        expect_log(f, "[warn] recover: " QNAME "/00000000000000000006.seg: "
                   "no valid header, removed");
    }
}


static void
test_recover_bad_header_oldest_removed(void **state)
{
    fx_t     *f = *state;
    tseg_t    s[2];
    queue_t  *q;

    seg_write(f, &s[0], 1, 1, 5, NULL, 20);
    seg_write(f, &s[1], 6, 6, 5, NULL, 30);
    seg_flip(f, 1, 2, 0xff);

    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    expect_seg(q, 0, 6, s[1].off[5]);
    assert_int_equal(q->items, 5);
    assert_int_equal(q->bytes, 5 * 30);
    assert_int_equal(q->next_seq, 11);
    expect_cursor(q, 0, MQ_SEG_HDR_SIZE, 6);
    assert_int_equal(seg_file_size(f, 1), -1);
}


static void
test_recover_short_segment_removed(void **state)
{
    fx_t           *f = *state;
    size_t          i;
    char            name[SEG_NAME_LEN + 1];
    tseg_t          s;
    queue_t        *q;
    unsigned char   hdr[MQ_SEG_HDR_SIZE];
    const size_t    lens[] = { 1, 8, 10, 15 };

    mq_frame_seg_encode(hdr, 6);
    seg_name(name, 6);

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        clear_dir(f);
        seg_write(f, &s, 1, 1, 5, NULL, 20);
        put_file(f, name, hdr, lens[i]);          /* a header cut short */

        q = recover(f);

        assert_int_equal(q->nsegs, 1);
        expect_seg(q, 0, 1, s.off[5]);
        assert_int_equal(q->items, 5);
        assert_int_equal(q->next_seq, 6);
        assert_int_equal(seg_file_size(f, 6), -1);
        expect_log(f, "%s: no valid header, removed", name);
    }
}


static void
test_recover_zero_length_newest_segment_removed(void **state)
{
    fx_t     *f = *state;
    char      name[SEG_NAME_LEN + 1];
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 1, 1, 5, NULL, 20);
    seg_name(name, 6);
    put_file(f, name, "", 0);
    assert_int_equal(position_write(f->dirfd, 6), 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 1);
    expect_seg(q, 0, 1, s.off[5]);
    assert_int_equal(q->items, 0);
    assert_int_equal(q->next_seq, 6);
    assert_int_equal(q->wbase, s.off[5]);
    expect_cursor(q, 0, s.off[5], 6);
    assert_int_equal(seg_file_size(f, 6), -1);
    expect_log(f, "[warn] recover: " QNAME "/%s: no valid header, removed",
               name);
}


static void
test_recover_only_segment_zero_length(void **state)
{
    fx_t     *f = *state;
    char      name[SEG_NAME_LEN + 1];
    queue_t  *q;

    seg_name(name, 1);
    put_file(f, name, "", 0);

    q = recover(f);

    assert_int_equal(q->nsegs, 0);
    assert_int_equal(q->items, 0);
    assert_int_equal(q->next_seq, 1);
    expect_cursor(q, 0, 0, 1);
    assert_int_equal(seg_file_size(f, 1), -1);
}


/* ---- records larger than the scan buffer ---- */

static void
test_recover_large_records(void **state)
{
    fx_t          *f = *state;
    tseg_t         s;
    queue_t       *q;
    const size_t   lens[] = { 10, MIB, MIB, 1, MIB + 1, 0 };

    seg_write(f, &s, 1, 1, 6, lens, 0);

    q = recover(f);

    expect_seg(q, 0, 1, s.off[6]);
    assert_int_equal(q->items, 6);
    assert_int_equal(q->bytes, 3 * MIB + 12);
    assert_int_equal(q->next_seq, 7);
    expect_no_log(f, "[warn]");
}


/* A record header split across the end of the first 1 MiB read. */
static void
test_recover_header_across_scan_buffer(void **state)
{
    fx_t          *f = *state;
    size_t         i, lens[3];
    tseg_t         s;
    queue_t       *q;
    const size_t   splits[] = { 1, 6, 8, 20, 39, 40, 41, 139, 140 };

    /* the first read is SCAN_BUF bytes from offset 16; record 1 starts
     * split bytes before its end: mid-length, mid-header, header only,
     * header and part of the payload, exactly the whole record */
    for (i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
        clear_dir(f);
        lens[0] = SCAN_BUF - MQ_FRAME_HDR_SIZE - splits[i];
        lens[1] = 100;
        lens[2] = 5;
        seg_write(f, &s, 1, 1, 3, lens, 0);
        assert_int_equal(s.off[1] + splits[i], MQ_SEG_HDR_SIZE + SCAN_BUF);

        q = recover(f);

        expect_seg(q, 0, 1, s.off[3]);
        assert_int_equal(q->items, 3);
        assert_int_equal(q->bytes, lens[0] + 105);
        assert_int_equal(q->next_seq, 4);
        expect_no_log(f, "[warn]");
    }
}


static void
test_recover_large_record_damaged(void **state)
{
    fx_t          *f = *state;
    tseg_t         s;
    queue_t       *q;
    const size_t   lens[] = { 100, MIB, MIB };

    /* torn in the middle of the second 1 MiB payload */
    seg_write(f, &s, 1, 1, 3, lens, 0);
    seg_cut(f, 1, s.off[2] + MQ_FRAME_HDR_SIZE + MIB / 2);

    q = recover(f);

    expect_seg(q, 0, 1, s.off[2]);
    assert_int_equal(q->items, 2);
    assert_int_equal(q->bytes, 100 + MIB);
    assert_int_equal(q->next_seq, 3);
    assert_int_equal(seg_file_size(f, 1), s.off[2]);
    expect_tail_cut(f, 1, s.off[2], "torn record", MQ_FRAME_HDR_SIZE + MIB / 2);

    /* the last byte of a 1 MiB payload flipped */
    clear_dir(f);
    seg_write(f, &s, 1, 1, 3, lens, 0);
    seg_flip(f, 1, s.off[2] - 1, 0x40);

    q = recover(f);

    expect_seg(q, 0, 1, s.off[1]);
    assert_int_equal(q->items, 1);
    assert_int_equal(q->next_seq, 2);
    assert_int_equal(seg_file_size(f, 1), s.off[1]);
    expect_tail_cut(f, 1, s.off[1], "bad crc",
                    2 * (MQ_FRAME_HDR_SIZE + MIB));
}


static void
test_recover_empty_dir(void **state)
{
    fx_t     *f = *state;
    queue_t  *q = recover(f);

    assert_int_equal(q->nsegs, 0);
    assert_int_equal(q->items, 0);
    assert_int_equal(q->next_seq, 1);
    expect_cursor(q, 0, 0, 1);
}


static void
test_recover_position_without_segments(void **state)
{
    fx_t     *f = *state;
    queue_t  *q;

    assert_int_equal(position_write(f->dirfd, 42), 0);
    q = recover(f);
    assert_int_equal(q->next_seq, 42);
    expect_cursor(q, 0, 0, 42);
}


static void
test_recover_next_seq_not_below_position(void **state)
{
    fx_t     *f = *state;
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 1, 1, 5, NULL, 20);
    assert_int_equal(position_write(f->dirfd, 11), 0);
    q = recover(f);
    assert_int_equal(q->items, 0);
    assert_true(q->next_seq >= 11);
    assert_true(q->rseq >= 11);
}


static void
test_recover_next_seq_not_below_position_after_corrupt_tail(void **state)
{
    fx_t     *f = *state;
    tseg_t    s;
    queue_t  *q;

    seg_write(f, &s, 1, 1, 10, NULL, 20);
    assert_int_equal(position_write(f->dirfd, 11), 0);
    seg_flip(f, 1, s.off[4] + MQ_FRAME_HDR_SIZE, 0x01);   /* seq 5 */
    q = recover(f);
    assert_true(q->next_seq >= 11);
}


static void
test_recover_pending_items_come_back(void **state)
{
    fx_t            *f = *state;
    tseg_t           s;
    queue_t         *q;
    const uint64_t   pending[] = { 2, 5 };

    /* 1..10 stored; 1..7 delivered, of which 2 and 5 still owed */
    seg_write(f, &s, 1, 1, 10, NULL, 20);
    assert_int_equal(position_save(f->dirfd, 8, pending, 2), 0);

    q = recover(f);
    assert_int_equal(q->items, 5);
    assert_int_equal(q->nret, 2);
    assert_int_equal(q->ret[0].seq, 2);
    assert_int_equal(q->ret[0].off, s.off[1]);
    assert_int_equal(q->ret[1].seq, 5);
    assert_int_equal(q->ret[1].len, 20);
    expect_cursor(q, 0, s.off[7], 8);
    assert_int_equal(q->next_seq, 11);
    assert_int_equal(q->pos_written, 2);
}


#define T(name)  cmocka_unit_test_setup_teardown(name, setup, teardown)

int
main(void)
{
    const struct CMUnitTest  tests[] = {
        T(test_recover_pending_items_come_back),
        T(test_recover_empty_dir),
        T(test_recover_position_without_segments),
        T(test_recover_next_seq_not_below_position),
        T(test_recover_next_seq_not_below_position_after_corrupt_tail),
        T(test_recover_unusable_dir_fails),
        T(test_recover_one_segment),
        T(test_recover_several_segments),
        T(test_recover_ignores_other_files),
        T(test_recover_position_tmp_ignored),
        T(test_recover_empty_tail_segment_sets_next_seq),
        T(test_recover_header_only_segment_kept),
        T(test_recover_position_skips_consumed),
        T(test_recover_position_in_second_segment),
        T(test_recover_position_at_segment_start),
        T(test_recover_position_everything_consumed),
        T(test_recover_damaged_position_delivers_everything),
        T(test_recover_torn_tail),
        T(test_recover_torn_first_record),
        T(test_recover_garbage_appended),
        T(test_recover_appended_record_cut_short),
        T(test_recover_flipped_byte_in_last_record),
        T(test_recover_bad_middle_record_of_tail_drops_later_records),
        T(test_recover_corrupt_older_segment),
        T(test_recover_torn_older_segment),
        T(test_recover_position_with_corrupt_tail),
        T(test_recover_bad_header_newest_removed),
        T(test_recover_bad_header_oldest_removed),
        T(test_recover_short_segment_removed),
        T(test_recover_zero_length_newest_segment_removed),
        T(test_recover_only_segment_zero_length),
        T(test_recover_large_records),
        T(test_recover_header_across_scan_buffer),
        T(test_recover_large_record_damaged),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
