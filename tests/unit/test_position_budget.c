// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_position_budget.c: how many position files one position interval
 * writes, and in which order.
 *
 * With 3,000 queues consumed at once, an interval writes 1,024 of them;
 * the others are written in the next intervals, before any queue written
 * already whose position moved again (first come, first written: none
 * waits for ever); shutdown writes every one left.  Queues whose files
 * cannot be written use none of the budget.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"
#include "queue.h"
#include "segment.h"
#include "server.h"
#include "standin.h"

#define NQ      3000
#define BUDGET  1024

static char      dir[64];
static queue_t  *qs[NQ];


static void
name_of(char *buf, size_t cap, unsigned k)
{
    snprintf(buf, cap, "pb%u", k);
}


/* the cursor in queue k's position file, 0 when it has none */
static uint64_t
position_of(unsigned k)
{
    int       fd;
    char      name[32];
    uint64_t  seq;

    name_of(name, sizeof(name), k);
    fd = openat(srv.data_fd, name, O_RDONLY | O_DIRECTORY);
    assert_true(fd != -1);
    if (position_read(fd, &seq) != 0) {
        seq = 0;
    }
    close(fd);
    return seq;
}


static unsigned
count_at_least(uint64_t seq)
{
    unsigned  k, n;

    n = 0;
    for (k = 0; k < NQ; k++) {
        n += position_of(k) >= seq;
    }
    return n;
}


/* one pass of the loop after a whole position interval */
static void
interval(void)
{
    struct timespec  ts = { 0, 110 * 1000 * 1000 };

    nanosleep(&ts, NULL);
    loop_update_time();
    queue_before_sleep();
}


static void
take(unsigned k)
{
    item_t  it;

    assert_int_equal(queue_take(qs[k], QUEUE_DELIVER, &it), 1);
}


static void
start(void)
{
    strcpy(dir, "/tmp/memq-unit-pb-XXXXXX");
    standin_data_dir(dir, SYNC_NONE, 64 * 1024 * 1024);
    assert_int_equal(queue_init(), 0);
}


static void
stop(void)
{
    queue_shutdown();
    close(srv.data_fd);
    standin_remove(dir);
}


static void
budget_first_come_first_written(void **state)
{
    char      name[32];
    unsigned  k, first[BUDGET], n;

    start();

    for (k = 0; k < NQ; k++) {
        name_of(name, sizeof(name), k);
        qs[k] = queue_lookup(name, strlen(name), 2);
        assert_non_null(qs[k]);
        assert_int_equal(queue_append(qs[k], 0, 0, "abc", 3), QUEUE_OK);
        assert_int_equal(queue_append(qs[k], 0, 0, "def", 3), QUEUE_OK);
        assert_int_equal(queue_append(qs[k], 0, 0, "ghi", 3), QUEUE_OK);
    }
    interval();

    /* one item taken from each: every position moved */
    for (k = 0; k < NQ; k++) {
        take(k);
    }
    interval();
    assert_int_equal(count_at_least(2), BUDGET);

    /* those written take a second item: they come after the others */
    n = 0;
    for (k = 0; k < NQ; k++) {
        if (position_of(k) >= 2) {
            first[n++] = k;
            take(k);
        }
    }
    assert_int_equal(n, BUDGET);

    interval();
    assert_int_equal(count_at_least(2), 2 * BUDGET);
    for (k = 0; k < n; k++) {
        assert_int_equal(position_of(first[k]), 2);
    }

    interval();
    assert_int_equal(count_at_least(2), NQ);
    /* the rest of that interval's budget went to second takes */
    assert_int_equal(count_at_least(3), 3 * BUDGET - NQ);

    interval();
    assert_int_equal(count_at_least(3), BUDGET);
    for (k = 0; k < n; k++) {
        assert_int_equal(position_of(first[k]), 3);
    }

    /* shutdown writes every file, whatever the budget */
    for (k = 0; k < NQ; k++) {
        take(k);
    }
    srv.stopping = 1;
    queue_before_sleep();
    srv.stopping = 0;
    assert_int_equal(count_at_least(4), BUDGET);
    assert_int_equal(count_at_least(3), NQ);

    stop();
}


/* 1,030 queues whose position file cannot be written (a directory in its
 * place), taken from after 70 healthy ones, so that they come first: the
 * healthy ones are written in the first interval all the same. */
static void
failing_saves_leave_their_turn(void **state)
{
    int       fd;
    char      name[32];
    unsigned  k;

    start();

    for (k = 0; k < 1100; k++) {
        name_of(name, sizeof(name), k);
        qs[k] = queue_lookup(name, strlen(name), 2);
        assert_non_null(qs[k]);
        assert_int_equal(queue_append(qs[k], 0, 0, "abc", 3), QUEUE_OK);
        assert_int_equal(queue_append(qs[k], 0, 0, "def", 3), QUEUE_OK);
        if (k >= 70) {
            fd = openat(srv.data_fd, name, O_RDONLY | O_DIRECTORY);
            assert_true(fd != -1);
            assert_int_equal(mkdirat(fd, "position", 0755), 0);
            close(fd);
        }
    }
    interval();

    for (k = 0; k < 1100; k++) {
        take(k);
    }
    interval();

    for (k = 0; k < 70; k++) {
        assert_int_equal(position_of(k), 2);
    }

    stop();
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(budget_first_come_first_written),
        cmocka_unit_test(failing_saves_leave_their_turn),
    };

    if (loop_init() != 0) {
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
