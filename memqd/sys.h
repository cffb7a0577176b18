/*
 * sys.h: the system calls whose failures tests must be able to provoke
 * (disk full, fsync errors) go through this table.
 *
 * At start-up, sys_init() reads these variables, meant for tests only:
 *   MEMQD_FAULT_WRITE_AFTER=N   segment writes fail with ENOSPC after N
 *   MEMQD_FAULT_FSYNC_AFTER=N   fdatasync fails with EIO after N calls
 *   MEMQD_FAULT_FSYNC_DELAY_MS=N each fdatasync sleeps N ms first (a slow
 *                               disk)
 *   MEMQD_FAULT_READ_FAILS=N    the first N reads of queue files (not
 *                               the recovery scan) fail with EIO
 */

#ifndef MEMQD_SYS_H
#define MEMQD_SYS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct {
    ssize_t  (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    ssize_t  (*pwritev)(int fd, const struct iovec *iov, int cnt, off_t off);
    int      (*fdatasync)(int fd);
    ssize_t  (*pread)(int fd, void *buf, size_t n, off_t off);
    int      (*sync_range)(int fd, off_t off, off_t n, unsigned flags);
} sys_ops_t;

extern sys_ops_t  sys;

void sys_init(void);

#endif /* MEMQD_SYS_H */
