/*
 * fsync_designs.c: what one group commit costs the disk under the storage
 * designs memqd could use, measured on the machine at hand.
 *
 *   percommit  per-queue files, every dirty file fdatasync()ed per batch
 *              (the first memqd storage)
 *   syncfs     per-queue files, one syncfs() per batch
 *   journal    one node-wide journal, preallocated and zero-filled, one
 *              write + fdatasync() per batch; the per-queue files are
 *              written too but synced only at checkpoints (memqd now)
 *
 * usage: fsync-designs DIR QUEUES BATCHES [RECORD_BYTES]
 * prints one line per design: microseconds per batch (median, p99).
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double
now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}


static int
cmp_d(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}


static void
die(const char *what)
{
    perror(what);
    exit(1);
}


static void
report(const char *name, double *t, int n, int queues)
{
    qsort(t, n, sizeof(double), cmp_d);
    printf("%-10s queues=%-4d median %8.0f us  p99 %8.0f us\n", name, queues,
           t[n / 2], t[n * 99 / 100]);
}


int
main(int argc, char **argv)
{
    int      queues, batches, rec, i, j, jfd, *fds;
    char     path[4096], *buf;
    off_t    joff, *qoff;
    double  *t, t0;

    if (argc < 4) {
        fprintf(stderr, "usage: %s DIR QUEUES BATCHES [RECORD_BYTES]\n",
                argv[0]);
        return 2;
    }

    queues = atoi(argv[2]);
    batches = atoi(argv[3]);
    rec = argc > 4 ? atoi(argv[4]) : 140;
    if (queues < 1 || batches < 10 || rec < 1) {
        return 2;
    }

    buf = calloc(1, (size_t) rec * queues + 4096);
    fds = calloc(queues, sizeof(int));
    qoff = calloc(queues, sizeof(off_t));
    t = calloc(batches, sizeof(double));
    if (buf == NULL || fds == NULL || qoff == NULL || t == NULL) {
        die("calloc");
    }
    memset(buf, 'x', (size_t) rec * queues);

    for (j = 0; j < queues; j++) {
        snprintf(path, sizeof(path), "%s/q%d", argv[1], j);
        fds[j] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fds[j] == -1) {
            die(path);
        }
    }

    /* percommit: one record per queue per batch, each file synced */
    for (i = 0; i < batches; i++) {
        t0 = now_us();
        for (j = 0; j < queues; j++) {
            if (pwrite(fds[j], buf, rec, qoff[j]) != rec) {
                die("pwrite");
            }
            qoff[j] += rec;
            if (fdatasync(fds[j]) != 0) {
                die("fdatasync");
            }
        }
        t[i] = now_us() - t0;
    }
    report("percommit", t, batches, queues);

    /* syncfs: the same writes, one syncfs per batch */
    for (i = 0; i < batches; i++) {
        t0 = now_us();
        for (j = 0; j < queues; j++) {
            if (pwrite(fds[j], buf, rec, qoff[j]) != rec) {
                die("pwrite");
            }
            qoff[j] += rec;
        }
        if (syncfs(fds[0]) != 0) {
            die("syncfs");
        }
        t[i] = now_us() - t0;
    }
    report("syncfs", t, batches, queues);

    /* journal: zero-filled file written in place, one fdatasync */
    snprintf(path, sizeof(path), "%s/journal", argv[1]);
    jfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (jfd == -1) {
        die(path);
    }
    {
        char   *z = calloc(1, 1 << 20);
        off_t   need = (off_t) rec * queues * batches + (1 << 20);
        for (joff = 0; joff < need; joff += 1 << 20) {
            if (pwrite(jfd, z, 1 << 20, joff) != 1 << 20) {
                die("pwrite");
            }
        }
        if (fsync(jfd) != 0) {
            die("fsync");
        }
        free(z);
    }
    joff = 0;
    for (i = 0; i < batches; i++) {
        t0 = now_us();
        for (j = 0; j < queues; j++) {
            if (pwrite(fds[j], buf, rec, qoff[j]) != rec) {
                die("pwrite");
            }
            qoff[j] += rec;
        }
        if (pwrite(jfd, buf, (size_t) rec * queues, joff)
            != (ssize_t) rec * queues)
        {
            die("pwrite");
        }
        joff += (off_t) rec * queues;
        if (fdatasync(jfd) != 0) {
            die("fdatasync");
        }
        t[i] = now_us() - t0;
    }
    report("journal", t, batches, queues);

    for (j = 0; j < queues; j++) {
        snprintf(path, sizeof(path), "%s/q%d", argv[1], j);
        unlink(path);
        close(fds[j]);
    }
    snprintf(path, sizeof(path), "%s/journal", argv[1]);
    unlink(path);
    return 0;
}
