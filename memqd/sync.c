/*
 * sync.c: see sync.h.  Only `pending`, `pending_ticket` and `stop` are
 * shared, under `mu`; `durable` and `failed` are published with atomics.
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "sync.h"
#include "sys.h"


static pthread_mutex_t  mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t   cv = PTHREAD_COND_INITIALIZER;
static pthread_t        thread;
static int              started;

/* shared under mu */
static int             *pending;          /* fds waiting for the thread */
static size_t           npending;
static size_t           pending_cap;
static uint64_t         pending_ticket;   /* highest ticket submitted */
static int              stop;

/* loop thread only */
static int             *batch;            /* fds of the batch being built */
static size_t           nbatch;
static size_t           batch_cap;
static uint64_t         next_ticket = 1;
static loop_io_t        wake_io;
static sync_done_pt     done_handler;

/* published by the thread */
static uint64_t         durable;
static int              failed;


static int
push_fd(int **arr, size_t *n, size_t *cap, int fd)
{
    int     *na;
    size_t   nc;

    if (*n == *cap) {
        nc = *cap ? *cap * 2 : 64;
        na = realloc(*arr, nc * sizeof(int));
        if (na == NULL) {
            return -1;
        }
        *arr = na;
        *cap = nc;
    }

    (*arr)[(*n)++] = fd;
    return 0;
}


static void *
sync_thread(void *arg)
{
    int       *fds, rc;
    size_t     i, n, cap;
    uint64_t   ticket, one;

    fds = NULL;
    cap = 0;

    for ( ;; ) {
        pthread_mutex_lock(&mu);

        while (npending == 0 && pending_ticket == __atomic_load_n(&durable,
                   __ATOMIC_ACQUIRE) && !stop)
        {
            pthread_cond_wait(&cv, &mu);
        }

        if (npending == 0 && pending_ticket == durable && stop) {
            pthread_mutex_unlock(&mu);
            break;
        }

        /* take everything submitted so far; hand back our empty array */
        {
            int     *t = fds;
            size_t   tc = cap;

            fds = pending;
            cap = pending_cap;
            n = npending;
            pending = t;
            pending_cap = tc;
            npending = 0;
        }

        ticket = pending_ticket;
        pthread_mutex_unlock(&mu);

        for (i = 0; i < n; i++) {
            rc = sys.fdatasync(fds[i]);
            if (rc == -1 && errno != EINVAL) {
                /* never retry-and-trust the same fd after a failed fsync */
                log_error("sync", "fdatasync: %s; refusing further writes",
                          strerror(errno));
                __atomic_store_n(&failed, 1, __ATOMIC_RELEASE);
            }
            close(fds[i]);
        }

        __atomic_store_n(&durable, ticket, __ATOMIC_RELEASE);

        one = 1;
        if (write(wake_io.fd, &one, sizeof(one)) < 0) {
            /* the counter is saturated: the loop is awake anyway */
        }
    }

    free(fds);
    return NULL;
}


static void
wake_handler(loop_io_t *io, unsigned events)
{
    uint64_t  v;

    if (read(io->fd, &v, sizeof(v)) < 0) {
        return;
    }

    done_handler(__atomic_load_n(&durable, __ATOMIC_ACQUIRE),
                 __atomic_exchange_n(&failed, 0, __ATOMIC_ACQ_REL));
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

    rc = pthread_create(&thread, NULL, sync_thread, NULL);
    if (rc != 0) {
        log_error("sync", "pthread_create: %s", strerror(rc));
        return -1;
    }

    started = 1;
    return 0;
}


void
sync_add_fd(int fd)
{
    if (push_fd(&batch, &nbatch, &batch_cap, fd) != 0) {
        /* cannot queue it: sync here rather than lose durability */
        if (fdatasync(fd) == -1) {
            __atomic_store_n(&failed, 1, __ATOMIC_RELEASE);
        }
        close(fd);
    }
}


uint64_t
sync_next_ticket(void)
{
    return next_ticket;
}


uint64_t
sync_submit(void)
{
    size_t    i;
    uint64_t  ticket;

    if (nbatch == 0) {
        return next_ticket - 1;
    }

    ticket = next_ticket++;

    pthread_mutex_lock(&mu);

    for (i = 0; i < nbatch; i++) {
        if (push_fd(&pending, &npending, &pending_cap, batch[i]) != 0) {
            if (fdatasync(batch[i]) == -1) {
                __atomic_store_n(&failed, 1, __ATOMIC_RELEASE);
            }
            close(batch[i]);
        }
    }

    pending_ticket = ticket;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);

    nbatch = 0;
    return ticket;
}


void
sync_shutdown(void)
{
    if (!started) {
        return;
    }

    sync_submit();

    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);

    pthread_join(thread, NULL);
    started = 0;
    free(batch);
    free(pending);
}
