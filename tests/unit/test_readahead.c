// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_readahead.c: how much memqd reads from a queue file for what it
 * delivers.
 *
 * A queue read on and on asks for more at each read (few reads for many
 * items); queues read in turn, more of them than there are read-ahead
 * buffers, ask for a page or so an item, not a whole buffer; items longer
 * than a first read, or than a buffer, still come back whole and right.
 * The reads are counted through the sys table, then passed on.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue.h"
#include "server.h"
#include "standin.h"
#include "sys.h"

static size_t  nreads;
static size_t  bytes_read;
static char    dir[64];


static ssize_t
count_pread(int fd, void *buf, size_t n, off_t off)
{
    nreads++;
    bytes_read += n;
    return pread(fd, buf, n, off);
}


static void
start(void)
{
    strcpy(dir, "/tmp/memq-unit-ra-XXXXXX");
    standin_data_dir(dir, SYNC_NONE, 64 * 1024 * 1024);
    sys.pread = count_pread;
    assert_int_equal(queue_init(), 0);
}


static void
stop(void)
{
    queue_shutdown();
    close(srv.data_fd);
    sys.pread = pread;

    standin_remove(dir);
}


/* item i of queue k, `size` bytes: its bytes say which it is */
static void
fill(unsigned char *p, size_t size, unsigned k, unsigned i)
{
    size_t  j;

    for (j = 0; j < size; j++) {
        p[j] = (unsigned char) (k * 31 + i * 7 + j);
    }
}


static queue_t *
make(unsigned k, size_t count, const size_t *sizes, size_t nsizes)
{
    char            name[32];
    size_t          i;
    queue_t        *q;
    unsigned char  *data;

    data = malloc(200 * 1024);
    assert_non_null(data);

    snprintf(name, sizeof(name), "ra%u", k);
    q = queue_lookup(name, strlen(name), 2);
    assert_non_null(q);

    for (i = 0; i < count; i++) {
        fill(data, sizes[i % nsizes], k, (unsigned) i);
        assert_int_equal(queue_append(q, 0, 0, data, sizes[i % nsizes]),
                         QUEUE_OK);
    }

    free(data);
    return q;
}


/* takes the next item of q, item i of queue k, and checks its bytes */
static void
take(queue_t *q, unsigned k, unsigned i, size_t size)
{
    item_t          it;
    unsigned char  *want;

    want = malloc(size);
    assert_non_null(want);
    fill(want, size, k, i);

    assert_int_equal(queue_take(q, QUEUE_DELIVER, &it), 1);
    assert_int_equal(it.hdr.len, size);
    assert_memory_equal(it.payload, want, size);
    free(want);
}


/* 1,000 items of 100 bytes from one queue: the reads grow, so a few
 * dozen at most (a 4 KiB read an item would be 37) */
static void
one_queue_reads_grow(void **state)
{
    size_t    size = 100;
    unsigned  i;
    queue_t  *q;

    start();
    q = make(0, 1000, &size, 1);
    assert_int_equal(queue_write_all(), 0);

    nreads = 0;
    bytes_read = 0;
    for (i = 0; i < 1000; i++) {
        take(q, 0, i, size);
    }

    assert_true(nreads <= 12);
    /* every byte read was delivered, give or take the last read */
    assert_true(bytes_read < 1000 * (100 + 48) + 64 * 1024);

    stop();
}


/* 200 queues (more than the 64 read-ahead buffers), taken from in turn:
 * each buffer is lent to another queue before its owner comes back, so
 * a read is wasted but for its first item.  It asks for a small window,
 * not for the whole 64 KiB buffer (which it did: 64 KiB an item). */
static void
many_queues_read_small(void **state)
{
    size_t    size = 100;
    unsigned  k, i;
    queue_t  *qs[200];

    start();
    for (k = 0; k < 200; k++) {
        qs[k] = make(k, 600, &size, 1);
    }
    assert_int_equal(queue_write_all(), 0);

    nreads = 0;
    bytes_read = 0;
    for (i = 0; i < 5; i++) {
        for (k = 0; k < 200; k++) {
            take(qs[k], k, i, size);
        }
    }

    assert_int_equal(nreads, 1000);
    assert_true(bytes_read <= 1000 * 8 * 1024);

    stop();
}


/* items of 100 B, 6 KiB (longer than a first read), 100 KiB (longer than
 * a buffer) and 60 KiB, in turn over 80 queues: every one comes back
 * whole, and no item costs more than two reads */
static void
mixed_sizes_whole(void **state)
{
    size_t    sizes[] = { 100, 6 * 1024, 100 * 1024, 60 * 1024, 100 };
    unsigned  k, i;
    queue_t  *qs[80];

    start();
    for (k = 0; k < 80; k++) {
        qs[k] = make(k, 10, sizes, 5);
    }
    assert_int_equal(queue_write_all(), 0);

    nreads = 0;
    for (i = 0; i < 10; i++) {
        for (k = 0; k < 80; k++) {
            take(qs[k], k, i, sizes[i % 5]);
        }
    }

    assert_true(nreads <= 2 * 800);

    stop();
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(one_queue_reads_grow),
        cmocka_unit_test(many_queues_read_small),
        cmocka_unit_test(mixed_sizes_whole),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
