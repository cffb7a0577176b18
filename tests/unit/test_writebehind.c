// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_writebehind.c: what memqd asks of sync_file_range().
 *
 * Under --sync always a queue file's write-back is started every 256 KiB
 * written to it (so the checkpoint's syncfs has little left to send at
 * once), in ranges that follow one another with no gap or overlap and end
 * on a page, without waiting; under interval and none it is never asked
 * for.  When it fails for want of the disk, the journal keeps everything.
 * A journal file is written out while it is zero-filled, waiting for each
 * step.
 * The calls are recorded through the sys table, then passed on.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "queue.h"
#include "server.h"
#include "standin.h"
#include "sys.h"

#define CALLS_MAX  4096
#define WAIT_ALL   (SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE \
                    | SYNC_FILE_RANGE_WAIT_AFTER)

typedef struct {
    dev_t     dev;
    ino_t     ino;
    off_t     off;
    off_t     n;
    unsigned  flags;
} call_t;

static call_t  calls[CALLS_MAX];
static size_t  ncalls;
static char    dir[64];


static int
record_range(int fd, off_t off, off_t n, unsigned flags)
{
    struct stat  st;

    assert_int_equal(fstat(fd, &st), 0);
    assert_true(ncalls < CALLS_MAX);
    calls[ncalls].dev = st.st_dev;
    calls[ncalls].ino = st.st_ino;
    calls[ncalls].off = off;
    calls[ncalls].n = n;
    calls[ncalls].flags = flags;
    ncalls++;

    return sync_file_range(fd, off, n, flags);
}


/* a fresh data directory and queue_init() under `mode`, the calls
 * going through `range`: queue_init()'s result */
static int
start(int mode, int (*range)(int, off_t, off_t, unsigned))
{
    strcpy(dir, "/tmp/memq-unit-wb-XXXXXX");
    standin_data_dir(dir, mode, 64 * 1024 * 1024);

    ncalls = 0;
    sys.sync_range = range;
    return queue_init();
}


static void
stop(void)
{
    queue_shutdown();
    close(srv.data_fd);
    sys.sync_range = sync_file_range;

    standin_remove(dir);
}


/* the file `name` of the data directory: its inode */
static ino_t
inode_of(const char *name)
{
    char         path[200];
    struct stat  st;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    assert_int_equal(stat(path, &st), 0);
    return st.st_ino;
}


/* `count` records of `size` bytes appended to q, committed as they go */
static void
append(queue_t *q, size_t count, size_t size)
{
    size_t       i;
    static char  data[512 * 1024];

    assert_true(size <= sizeof(data));
    memset(data, 'w', size);

    for (i = 0; i < count; i++) {
        assert_int_equal(queue_append(q, 0, 0, data, size), QUEUE_OK);
        if (srv.sync_mode == SYNC_ALWAYS) {
            assert_int_equal(journal_commit(0), 0);
        }
    }

    assert_int_equal(queue_write_all(), 0);
}


static void
queue_files_written_behind_in_steps(void **state)
{
    size_t    i, found;
    off_t     next;
    ino_t     seg;
    queue_t  *q;

    assert_int_equal(start(SYNC_ALWAYS, record_range), 0);

    q = queue_lookup("wb", 2, 2);
    assert_non_null(q);

    /* 2 MiB in small records (through the write buffer), then three of
     * 300 KiB (written straight to the file) */
    append(q, 2048, 1000);
    append(q, 3, 300 * 1024);

    seg = inode_of("wb/00000000000000000001.seg");

    found = 0;
    next = 16;                               /* the segment's header */
    for (i = 0; i < ncalls; i++) {
        if (calls[i].ino != seg) {
            continue;
        }
        /* started, not waited for: a write-back error stays for the
         * checkpoint's syncfs */
        assert_int_equal(calls[i].flags, SYNC_FILE_RANGE_WRITE);
        assert_int_equal(calls[i].off, next);
        /* up to the last whole page */
        assert_int_equal((calls[i].off + calls[i].n) % 4096, 0);
        assert_true(calls[i].n > 256 * 1024 - 4096);
        assert_true(calls[i].n < 256 * 1024 + 300 * 1024 + 64 * 1024);
        next = calls[i].off + calls[i].n;
        found++;
    }

    /* 2,048 x (48 + 1,000) + 3 x (48 + 300 KiB) written: at most one step
     * and one record short of the end */
    assert_true(found >= 8);
    assert_true(next > (off_t) (16 + 2048 * 1048 + 3 * (48 + 300 * 1024))
                       - 256 * 1024 - 300 * 1024);

    stop();
}


static void
no_write_behind_without_journal(void **state)
{
    int       modes[] = { SYNC_NONE, SYNC_INTERVAL };
    size_t    m;
    queue_t  *q;

    for (m = 0; m < 2; m++) {
        assert_int_equal(start(modes[m], record_range), 0);

        q = queue_lookup("wb", 2, 2);
        assert_non_null(q);
        append(q, 2048, 1000);
        append(q, 3, 300 * 1024);

        assert_int_equal(ncalls, 0);

        stop();
    }
}


static void
journal_file_written_out_while_zeroed(void **state)
{
    size_t  i;
    off_t   next;
    ino_t   jnl;

    assert_int_equal(start(SYNC_ALWAYS, record_range), 0);

    jnl = inode_of(JOURNAL_DIR "/00000000000000000001.jnl");

    next = 0;
    for (i = 0; i < ncalls; i++) {
        assert_int_equal(calls[i].ino, jnl);
        assert_int_equal(calls[i].flags, WAIT_ALL);
        assert_int_equal(calls[i].off, next);
        assert_true(calls[i].n > 0 && calls[i].n <= 1024 * 1024 + 64 * 1024);
        next += calls[i].n;
    }

    /* the whole first file (1 MiB), every byte written out */
    assert_true(ncalls >= 1);
    assert_int_equal(next, 1024 * 1024);

    stop();
}


static int
fail_range(int fd, off_t off, off_t n, unsigned flags)
{
    errno = EIO;
    return -1;
}


static void
journal_write_out_failure_fails_the_start(void **state)
{
    /* the wait took the error: the file's fsync would not see it */
    assert_int_equal(start(SYNC_ALWAYS, fail_range), -1);

    stop();
}


static int  range_errno;           /* the next calls fail with it */


/* write-behind fails (with range_errno); the waiting calls of the journal
 * work */
static int
fail_write_behind(int fd, off_t off, off_t n, unsigned flags)
{
    if (flags == SYNC_FILE_RANGE_WRITE) {
        ncalls++;
        errno = range_errno;
        return -1;
    }

    return sync_file_range(fd, off, n, flags);
}


static void
write_behind_failure_keeps_the_journal(void **state)
{
    int          kept;
    queue_t     *q;
    char         path[200];
    static char  big[300 * 1024];

    range_errno = EIO;
    assert_int_equal(start(SYNC_ALWAYS, fail_write_behind), 0);

    q = queue_lookup("wb", 2, 2);
    assert_non_null(q);
    memset(big, 'b', sizeof(big));
    assert_int_equal(queue_append(q, 0, 0, big, sizeof(big)), QUEUE_OK);

    /* the pages may hold records of journal files already full: nothing
     * the journal holds goes, no write is taken, and the commit that
     * would answer STORED fails */
    assert_int_equal(ncalls, 1);
    assert_int_equal(srv.readonly, 1);
    assert_int_equal(journal_commit(0), -1);

    queue_shutdown();
    snprintf(path, sizeof(path), "%s/%s/00000000000000000001.jnl", dir,
             JOURNAL_DIR);
    kept = access(path, F_OK) == 0;
    assert_int_equal(queue_init(), 0);          /* replays it */
    stop();

    assert_true(kept);
}


static void
write_behind_not_supported_is_no_failure(void **state)
{
    int       e[] = { ENOSYS, EINVAL, ENOMEM };
    size_t    i;
    queue_t  *q;

    for (i = 0; i < 3; i++) {
        range_errno = e[i];
        assert_int_equal(start(SYNC_ALWAYS, fail_write_behind), 0);

        q = queue_lookup("wb", 2, 2);
        assert_non_null(q);
        append(q, 2, 300 * 1024);

        /* the pages are left to the checkpoint */
        assert_int_equal(ncalls, 2);
        assert_int_equal(srv.readonly, 0);

        stop();
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(queue_files_written_behind_in_steps),
        cmocka_unit_test(no_write_behind_without_journal),
        cmocka_unit_test(journal_file_written_out_while_zeroed),
        cmocka_unit_test(journal_write_out_failure_fails_the_start),
        cmocka_unit_test(write_behind_failure_keeps_the_journal),
        cmocka_unit_test(write_behind_not_supported_is_no_failure),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
