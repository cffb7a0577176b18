/*
 * sys.c: see sys.h.  Without the test variables the table holds the libc
 * functions and costs one indirect call.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sys.h"

sys_ops_t  sys = { pwrite, pwritev, fdatasync, pread, sync_file_range };

static long  writes_left = -1;   /* loop thread only */
static long  syncs_left = -1;    /* the committer: the commit thread or
                                    the loop, never both at once (sync.c) */
static long  sync_delay_ms;      /* each fdatasync takes this long first */
static long  read_fails;         /* loop thread only */


static ssize_t
faulty_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (writes_left == 0) {
        errno = ENOSPC;
        return -1;
    }

    writes_left--;
    return pwrite(fd, buf, n, off);
}


static ssize_t
faulty_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (writes_left == 0) {
        errno = ENOSPC;
        return -1;
    }

    writes_left--;
    return pwritev(fd, iov, cnt, off);
}


static int
faulty_fdatasync(int fd)
{
    if (syncs_left == 0) {
        errno = EIO;
        return -1;
    }

    if (sync_delay_ms > 0) {
        struct timespec  ts = { sync_delay_ms / 1000,
                                sync_delay_ms % 1000 * 1000000 };

        nanosleep(&ts, NULL);
    }

    syncs_left--;
    return fdatasync(fd);
}


static ssize_t
faulty_pread(int fd, void *buf, size_t n, off_t off)
{
    if (read_fails > 0) {
        read_fails--;
        errno = EIO;
        return -1;
    }

    return pread(fd, buf, n, off);
}


void
sys_init(void)
{
    const char  *v;

    v = getenv("MEMQD_FAULT_WRITE_AFTER");
    if (v != NULL) {
        writes_left = atol(v);
        sys.pwrite = faulty_pwrite;
        sys.pwritev = faulty_pwritev;
        log_warn("sys", "test fault: writes fail after %ld", writes_left);
    }

    v = getenv("MEMQD_FAULT_FSYNC_AFTER");
    if (v != NULL) {
        syncs_left = atol(v);
        sys.fdatasync = faulty_fdatasync;
        log_warn("sys", "test fault: fdatasync fails after %ld", syncs_left);
    }

    v = getenv("MEMQD_FAULT_FSYNC_DELAY_MS");
    if (v != NULL) {
        sync_delay_ms = atol(v);
        sys.fdatasync = faulty_fdatasync;
        log_warn("sys", "test fault: fdatasync takes %ld ms", sync_delay_ms);
    }

    v = getenv("MEMQD_FAULT_READ_FAILS");
    if (v != NULL) {
        read_fails = atol(v);
        sys.pread = faulty_pread;
        log_warn("sys", "test fault: the first %ld reads fail", read_fails);
    }
}
