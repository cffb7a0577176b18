// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc -Wl,--wrap=malloc
/*
 * test_take_nomem.c: a get that takes an item and then cannot record its
 * lease or its open set (malloc() and realloc() of memqd's code wrapped at
 * link time to fail) gives the item back as it was taken: its delivery
 * count has not gone up, so max_deliveries dead-letters it no earlier
 * than its real deliveries say, and it is not counted as redelivered.  A
 * connection's first open item is never left behind as an empty set.
 * touch ... noreply that cannot renew a lease says so.  The commands go
 * through cmd_execute() on a connection with no socket, its output read
 * from its buffer.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "conn.h"
#include "loop.h"
#include "queue.h"
#include "server.h"
#include "standin.h"

static char  dir[64];
static int   malloc_fails;


void *__real_malloc(size_t n);

void *
__wrap_malloc(size_t n)
{
    if (malloc_fails) {
        return NULL;
    }

    return __real_malloc(n);
}


static queue_t *
start(void)
{
    queue_t  *q;

    strcpy(dir, "/tmp/memq-unit-take-XXXXXX");
    standin_data_dir(dir, SYNC_NONE, 64 * 1024 * 1024);
    srv.max_leases = 1000;
    assert_int_equal(queue_init(), 0);

    q = queue_lookup("q", 1, 2);
    assert_non_null(q);
    q->lim.max_deliveries = 2;
    assert_int_equal(queue_append(q, 0, 0, "one", 3), QUEUE_OK);
    assert_int_equal(queue_write_all(), 0);
    return q;
}


static void
stop(void)
{
    queue_shutdown();
    standin_remove(dir);
}


/* a connection with no socket and room for its replies made beforehand,
 * so that a command run while realloc() fails has it */
static conn_t *
conn_new(void)
{
    conn_t  *c;

    c = calloc(1, sizeof(conn_t));
    assert_non_null(c);
    c->state = CONN_READ;
    assert_int_equal(conn_out_reserve(c, 64 * 1024), 0);
    return c;
}


static void
conn_gone(conn_t *c)
{
    queue_abort_conn(&c->opensets);
    free(c->out);
    free(c);
}


/* runs `line` (no CRLF) on c: whether its reply has a value */
static int
has_value(conn_t *c, const char *line)
{
    int     rc;
    size_t  used;

    c->out_len = 0;
    used = 0;
    rc = cmd_execute(c, line, strlen(line), "", 0, &used);
    assert_int_equal(rc, CMD_DONE);
    assert_true(c->out_len >= 5);
    assert_memory_equal(c->out + c->out_len - 5, "END\r\n", 5);
    return c->out_len > 5 && memcmp(c->out, "VALUE ", 6) == 0;
}


/*
 * The item is delivered once (/open, then the connection goes: back with
 * one delivery), then taken by `line` while memory is short: it must come
 * back with one delivery still, so that a third get has it (max 2).
 */
static void
failed_tracking_keeps_the_count(const char *line)
{
    conn_t    *c;
    queue_t   *q;
    uint64_t   redelivered;

    q = start();

    c = conn_new();
    assert_true(has_value(c, "get q/open"));
    conn_gone(c);
    assert_int_equal(q->items, 1);

    redelivered = q->redelivered_items;
    c = conn_new();
    realloc_fails = 1;
    malloc_fails = 1;
    assert_false(has_value(c, line));
    realloc_fails = 0;
    malloc_fails = 0;
    conn_gone(c);

    /* back at the head, not dead-lettered on the way, not counted */
    assert_int_equal(q->items, 1);
    assert_int_equal(q->redelivered_items, redelivered);
    assert_null(queue_lookup("q.dlq", 5, 0));

    c = conn_new();
    assert_true(has_value(c, "get q/open"));
    assert_int_equal(q->redelivered_items, redelivered + 1);
    conn_gone(c);

    /* that was the second delivery: the next take dead-letters it */
    c = conn_new();
    assert_false(has_value(c, "get q/open"));
    conn_gone(c);
    q = queue_lookup("q.dlq", 5, 0);
    assert_non_null(q);
    assert_int_equal(q->items, 1);

    stop();
}


static void
lease_without_memory(void **state)
{
    (void) state;
    failed_tracking_keeps_the_count("get q/lease=60000");
}


static void
open_without_memory(void **state)
{
    (void) state;
    failed_tracking_keeps_the_count("get q/open");
}


/* touch ... noreply that cannot renew the lease says so, as delete ...
 * noreply does when it fails: noreply silences answers, not failures */
static void
touch_without_memory(void **state)
{
    char      line[64];
    conn_t   *c;
    size_t    used;
    uint64_t  id;

    (void) state;

    start();
    c = conn_new();
    assert_true(has_value(c, "get q/lease=60000"));
    assert_int_equal(sscanf(c->out, "VALUE q/lease=60000 0 3 %" SCNu64, &id),
                     1);

    /* a deadline before the lease's: a place of its own in the deadline
     * order, which needs memory */
    snprintf(line, sizeof(line), "touch q/%" PRIu64 " 1 noreply", id);
    c->out_len = 0;
    malloc_fails = 1;
    realloc_fails = 1;
    assert_int_equal(cmd_execute(c, line, strlen(line), "", 0, &used),
                     CMD_DONE);
    malloc_fails = 0;
    realloc_fails = 0;
    assert_int_equal(c->out_len, sizeof("SERVER_ERROR out of memory\r\n") - 1);
    assert_memory_equal(c->out, "SERVER_ERROR out of memory\r\n", c->out_len);

    /* the lease is still there, as it was */
    snprintf(line, sizeof(line), "touch q/%" PRIu64 " 0 noreply", id);
    c->out_len = 0;
    assert_int_equal(cmd_execute(c, line, strlen(line), "", 0, &used),
                     CMD_DONE);
    assert_int_equal(c->out_len, 0);
    conn_gone(c);

    stop();
}


int
main(void)
{
    /* the fixed timers' slots (the lease timer's) */
    if (loop_init() != 0) {
        return 1;
    }

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lease_without_memory),
        cmocka_unit_test(open_without_memory),
        cmocka_unit_test(touch_without_memory),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
