// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_storage_review.c: the journal's checkpoint bookkeeping, driven
 * directly (the checkpoint thread is not started: its results are handed
 * to journal_checkpoint_done() by the test, as wake_handler() would).
 *
 * A checkpoint is a syncfs() of the data directory's file system; when it
 * fails, some queue-file pages it was to write may have failed writeback.
 * Linux then marks those pages clean (the data is in no file any more)
 * and reports the error once per descriptor: the next syncfs() returns 0.
 * journal_checkpoint_done(token, failed = 1) keeps the full journal files
 * and asks again; when the retry "succeeds" it unlinks them -- the only
 * copy of records whose queue-file writeback failed.  docs/memqd.md
 * ("Durability failures"): memqd "never retries and trusts the same
 * file" -- this path does.
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


static char  dir[64];


static int
jnl_exists(uint64_t number)
{
    char         path[160];
    char         name[32];
    struct stat  st;

    journal_name(name, number);
    snprintf(path, sizeof(path), "%s/%s/%s", dir, JOURNAL_DIR, name);
    return stat(path, &st) == 0;
}


static void
failed_checkpoint_keeps_the_journal(void **state)
{
    static char     big[60000];
    int             kept;
    queue_t        *q;

    strcpy(dir, "/tmp/memq-unit-review-XXXXXX");
    /* (the journal exists only under always) */
    standin_data_dir(dir, SYNC_ALWAYS, 64 * 1024);

    assert_int_equal(queue_init(), 0);          /* journal file 1 */
    assert_true(jnl_exists(1));

    memset(big, 'j', sizeof(big));
    q = queue_lookup("ck", 2, 2);
    assert_non_null(q);

    /* one record fills most of file 1; the second makes it switch */
    assert_int_equal(queue_append(q, 0, 0, big, sizeof(big)), QUEUE_OK);
    assert_int_equal(journal_commit(0), 0);
    assert_int_equal(queue_append(q, 0, 0, big, sizeof(big)), QUEUE_OK);
    assert_int_equal(journal_commit(0), 0);
    assert_true(jnl_exists(2));

    /* the checkpoint for file 1 fails (writeback error reported) ... */
    journal_checkpoint_done(2, 1);
    assert_true(jnl_exists(1));

    /* ... and the retry returns 0, as syncfs does once the error has
     * been reported: the queue-file pages that failed are not on disk */
    journal_checkpoint_done(2, 0);
    kept = jnl_exists(1);

    queue_shutdown();
    close(srv.data_fd);
    standin_remove(dir);

    assert_true(kept);            /* fails: the only copy was unlinked */
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(failed_checkpoint_keeps_the_journal),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
