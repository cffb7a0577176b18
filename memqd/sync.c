/*
 * sync.c: see sync.h.  Shared state is under `mu`; the loop learns about
 * progress through an eventfd and reads the published values under `mu`
 * too, so "durable" and "failed" are always seen together.  Jobs queued
 * at shutdown still run before the background thread ends.
 *
 * A failed sync never publishes its ticket: the replies waiting for it are
 * failed instead, and the thread refuses every later commit (it does not
 * retry and trust the same file).
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "prom.h"
#include "sync.h"
#include "sys.h"

#define SYNC_FDS_MAX  16      /* journal files waiting for one commit */
#define SYNC_QUICK_US 2000    /* a commit made in the loop must follow one
                                 that took less: a slow disk stalls the
                                 thread, never the loop's other clients */


static pthread_mutex_t  mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t   cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t   jobcv = PTHREAD_COND_INITIALIZER;
static pthread_t        commit_thread;
static pthread_t        job_thread;
static int              started;

/* shared under mu */
static int              pending[SYNC_FDS_MAX];   /* fds to sync */
static size_t           npending;
static int              pending_full;
static int              pending_dir = -1;
static uint64_t         pending_ticket;          /* highest submitted */
static uint64_t         durable;                 /* highest synced */
static int              failed;                  /* a sync failed */
static prom_hist_t      fsync_hist;              /* time of each commit */
static uint64_t         last_us = SYNC_QUICK_US; /* time of the last one
                                                    (none yet: unknown) */
static sync_job_t      *jobs;                    /* queued, FIFO */
static sync_job_t      *jobs_tail;
static sync_job_t      *finished;                /* done() not yet run */
static int              stop;

/* loop thread only */
static uint64_t         next_ticket = 1;
static uint64_t         seen_durable;
static loop_io_t        wake_io;
static sync_done_pt     done_handler;


static void
wake_loop(void)
{
    uint64_t  one;

    one = 1;
    if (write(wake_io.fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the loop is awake anyway */
    }
}


static int
sync_one(int fd, int full)
{
    int  rc;

    rc = full ? fsync(fd) : sys.fdatasync(fd);
    if (rc == -1 && errno != EINVAL) {
        log_error("sync", "%s: %s; refusing further writes",
                  full ? "fsync" : "fdatasync", strerror(errno));
        return -1;
    }

    return 0;
}


/* one commit: every descriptor, then the directory; 0 or -1 */
static int
sync_all(const int *fds, size_t n, int full, int dirfd)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (sync_one(fds[i], full) != 0) {
            return -1;
        }
    }

    return dirfd != -1 ? sync_one(dirfd, 1) : 0;
}


static void *
commit_main(void *arg)
{
    int       fds[SYNC_FDS_MAX], full, dirfd, bad;
    size_t    n;
    uint64_t  ticket, start;

    pthread_mutex_lock(&mu);

    for ( ;; ) {
        while (pending_ticket == durable && !stop) {
            pthread_cond_wait(&cv, &mu);
        }

        if (pending_ticket == durable) {
            break;
        }

        n = npending;
        memcpy(fds, pending, n * sizeof(int));
        full = pending_full;
        dirfd = pending_dir;
        ticket = pending_ticket;
        npending = 0;
        pending_full = 0;
        pending_dir = -1;
        bad = failed;

        pthread_mutex_unlock(&mu);

        start = loop_now_us();

        if (!bad) {
            bad = sync_all(fds, n, full, dirfd) != 0;
        }

        start = loop_now_us() - start;

        pthread_mutex_lock(&mu);

        if (n > 0 || dirfd != -1) {
            prom_hist_observe(&fsync_hist, start);
            last_us = start;
        }

        if (bad) {
            failed = 1;
            /* nothing more will be made durable: let waiters go */
            durable = pending_ticket;
        } else {
            durable = ticket;
        }

        wake_loop();
    }

    pthread_mutex_unlock(&mu);
    return NULL;
}


static void *
job_main(void *arg)
{
    int          rc;
    sync_job_t  *job;

    pthread_mutex_lock(&mu);

    for ( ;; ) {
        while (jobs == NULL && !stop) {
            pthread_cond_wait(&jobcv, &mu);
        }

        if (jobs == NULL) {
            break;
        }

        job = jobs;
        jobs = job->next;
        if (jobs == NULL) {
            jobs_tail = NULL;
        }
        pthread_mutex_unlock(&mu);

        rc = job->run(job);

        pthread_mutex_lock(&mu);
        job->rc = rc;
        job->finished = 1;
        job->next = finished;
        finished = job;
        wake_loop();
    }

    pthread_mutex_unlock(&mu);
    return NULL;
}


static void
wake_handler(loop_io_t *io, unsigned events)
{
    int          f;
    uint64_t     v, d;
    sync_job_t  *job, *list;

    if (read(io->fd, &v, sizeof(v)) < 0) {
        /* spurious: look anyway */
    }

    pthread_mutex_lock(&mu);
    d = durable;
    f = failed;
    list = finished;
    finished = NULL;
    pthread_mutex_unlock(&mu);

    if (d != seen_durable || f) {
        seen_durable = d;
        done_handler(d, f);
    }

    while ((job = list) != NULL) {
        list = job->next;
        job->finished = 0;
        job->busy = 0;
        job->done(job, job->rc);
    }
}


int
sync_init(sync_done_pt done)
{
    int  rc;

    done_handler = done;

    wake_io.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_io.fd == -1) {
        log_error("sync", "eventfd: %s", strerror(errno));
        return -1;
    }

    wake_io.handler = wake_handler;
    if (loop_add(&wake_io, LOOP_READ) != 0) {
        return -1;
    }

    rc = pthread_create(&commit_thread, NULL, commit_main, NULL);
    if (rc == 0) {
        rc = pthread_create(&job_thread, NULL, job_main, NULL);
        if (rc != 0) {
            pthread_mutex_lock(&mu);
            stop = 1;
            pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
            pthread_join(commit_thread, NULL);
        }
    }

    if (rc != 0) {
        log_error("sync", "pthread_create: %s", strerror(rc));
        return -1;
    }

    started = 1;
    return 0;
}


uint64_t
sync_next_ticket(void)
{
    return next_ticket;
}


uint64_t
sync_durable(void)
{
    return seen_durable;
}


uint64_t
sync_submit(const int *fds, size_t n, int full, int dirfd, int quiet)
{
    int       bad;
    size_t    i, j;
    uint64_t  ticket, start;

    if (n == 0 && dirfd == -1) {
        return next_ticket - 1;
    }

    ticket = next_ticket++;

    pthread_mutex_lock(&mu);

    if (quiet && pending_ticket == durable && !failed
        && last_us < SYNC_QUICK_US)
    {
        /* the thread is idle and waits for pending_ticket to move: it
         * stays asleep while the commit is made here */
        pthread_mutex_unlock(&mu);

        start = loop_now_us();
        bad = sync_all(fds, n, full, dirfd) != 0;
        start = loop_now_us() - start;

        pthread_mutex_lock(&mu);
        prom_hist_observe(&fsync_hist, start);
        last_us = start;
        failed |= bad;
        pending_ticket = ticket;
        durable = ticket;
        /* the replies go out from wake_handler() at once: the loop finds
         * the eventfd readable without sleeping */
        wake_loop();
        pthread_mutex_unlock(&mu);
        return ticket;
    }

    for (i = 0; i < n; i++) {
        for (j = 0; j < npending && pending[j] != fds[i]; j++) {
            /* void */
        }
        if (j < npending) {
            continue;
        }
        if (npending < SYNC_FDS_MAX) {
            pending[npending++] = fds[i];
        } else if (sync_one(fds[i], 1) != 0) {
            /* the thread is far behind a burst of journal switches:
             * sync this one here rather than forget it */
            failed = 1;
        }
    }

    pending_full |= full;
    if (dirfd != -1) {
        pending_dir = dirfd;
    }
    pending_ticket = ticket;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);

    return ticket;
}


int
sync_job(sync_job_t *job)
{
    if (job->busy) {
        return -1;
    }

    job->busy = 1;
    job->finished = 0;
    job->next = NULL;

    pthread_mutex_lock(&mu);
    if (jobs_tail != NULL) {
        jobs_tail->next = job;
    } else {
        jobs = job;
    }
    jobs_tail = job;
    pthread_cond_signal(&jobcv);
    pthread_mutex_unlock(&mu);
    return 0;
}


void
sync_shutdown(void)
{
    if (!started) {
        return;
    }

    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_signal(&cv);
    pthread_cond_signal(&jobcv);
    pthread_mutex_unlock(&mu);

    pthread_join(commit_thread, NULL);
    pthread_join(job_thread, NULL);
    started = 0;

    /* results the loop has not seen: hand them over now */
    wake_handler(&wake_io, 0);
}


void
sync_fsync_hist(prom_hist_t *out)
{
    pthread_mutex_lock(&mu);
    *out = fsync_hist;
    pthread_mutex_unlock(&mu);
}
