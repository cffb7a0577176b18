/*
 * loop_epoll.c: loop.h on Linux epoll (level-triggered).
 *
 * Timers live in a 1-based binary min-heap of pointers; each timer knows
 * its heap index so deletion is O(log n).  The heap's array grows when a
 * slot is reserved (loop_timer_reserve()), never when a timer is armed.
 */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

#define LOOP_EVENTS  256


static int             epfd = -1;
static int             running;
static uint64_t        now_ms;
static loop_timer_t  **heap;       /* heap[1..nheap] */
static size_t          nheap;
static size_t          heap_cap;   /* heap[0] is unused */
static size_t          reserved;   /* slots: LOOP_TIMERS_FIXED + owners */
static int             unmatched;  /* a release without a reserve was
                                      logged */


uint64_t
loop_update_time(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now_ms = (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
    return now_ms;
}


uint64_t
loop_now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


uint64_t
loop_now(void)
{
    return now_ms;
}


int
loop_init(void)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd == -1) {
        log_error("loop", "epoll_create1: %s", strerror(errno));
        return -1;
    }

    loop_update_time();

    reserved = LOOP_TIMERS_FIXED - 1;
    return loop_timer_reserve();
}


static int
heap_grow(size_t want)
{
    size_t          cap;
    loop_timer_t  **nh;

    if (want < heap_cap) {
        return 0;
    }

    cap = heap_cap ? heap_cap : 64;

    while (cap <= want) {
        cap *= 2;
    }

    nh = realloc(heap, cap * sizeof(*heap));
    if (nh == NULL) {
        return -1;
    }

    heap = nh;
    heap_cap = cap;
    return 0;
}


int
loop_timer_reserve(void)
{
    if (heap_grow(reserved + 1) != 0) {
        return -1;                  /* the caller says so, rate-limited */
    }

    reserved++;
    return 0;
}


/*
 * The fixed timers' slots are never given back, so a release that would
 * take one has no reserve to match (an owner released twice, or never
 * reserved): the count stays, so that it neither eats into the fixed
 * timers' room nor wraps, and the first such release is logged.  A debug
 * build (-DMEMQD_DEBUG, the sanitizer build) stops there instead.
 */
void
loop_timer_release(void)
{
    if (reserved > LOOP_TIMERS_FIXED) {
        reserved--;
        return;
    }

    if (!unmatched) {
        unmatched = 1;
        log_error("loop", "timer slot released without a reservation "
                  "(%zu held, the %d fixed ones only); not counted",
                  reserved, LOOP_TIMERS_FIXED);
    }

#ifdef MEMQD_DEBUG
    assert(reserved > LOOP_TIMERS_FIXED);
#endif
}


static int
io_ctl(loop_io_t *io, int op, unsigned events)
{
    struct epoll_event  ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = ((events & LOOP_READ) ? EPOLLIN | EPOLLRDHUP : 0)
                | ((events & LOOP_WRITE) ? EPOLLOUT : 0);
    ev.data.ptr = io;

    if (epoll_ctl(epfd, op, io->fd, &ev) == -1) {
        log_error("loop", "epoll_ctl(%d): %s", io->fd, strerror(errno));
        return -1;
    }

    io->events = events;
    return 0;
}


int
loop_add(loop_io_t *io, unsigned events)
{
    return io_ctl(io, EPOLL_CTL_ADD, events);
}


int
loop_mod(loop_io_t *io, unsigned events)
{
    if (io->events == events) {
        return 0;
    }

    return io_ctl(io, EPOLL_CTL_MOD, events);
}


void
loop_del(loop_io_t *io)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->events = 0;
}


static void
heap_swap(size_t a, size_t b)
{
    loop_timer_t  *t;

    t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
    heap[a]->index = a;
    heap[b]->index = b;
}


static void
heap_up(size_t i)
{
    while (i > 1 && heap[i / 2]->deadline > heap[i]->deadline) {
        heap_swap(i, i / 2);
        i /= 2;
    }
}


static void
heap_down(size_t i)
{
    size_t  m;

    for ( ;; ) {
        m = i;
        if (2 * i <= nheap && heap[2 * i]->deadline < heap[m]->deadline) {
            m = 2 * i;
        }
        if (2 * i + 1 <= nheap
            && heap[2 * i + 1]->deadline < heap[m]->deadline)
        {
            m = 2 * i + 1;
        }
        if (m == i) {
            return;
        }
        heap_swap(i, m);
        i = m;
    }
}


void
loop_timer_del(loop_timer_t *t)
{
    size_t         i;
    loop_timer_t  *moved;

    i = t->index;
    if (i == 0) {
        return;
    }

    t->index = 0;

    if (i != nheap) {
        moved = heap[nheap];
        heap[i] = moved;
        moved->index = i;
        nheap--;
        heap_up(i);
        heap_down(moved->index);
        return;
    }

    nheap--;
}


void
loop_timer_add(loop_timer_t *t, uint64_t ms)
{
    loop_timer_del(t);

    /* every owner holds a slot, so this grows nothing; a timer armed
     * without one gets its room here while memory lasts */
    if (heap_grow(nheap + 1) != 0) {
        log_error("loop", "out of memory for a timer without a slot");
        return;
    }

    t->deadline = now_ms + ms;
    heap[++nheap] = t;
    t->index = nheap;
    heap_up(nheap);
}


static void
run_timers(void)
{
    loop_timer_t  *t;

    while (nheap > 0 && heap[1]->deadline <= now_ms) {
        t = heap[1];
        loop_timer_del(t);
        t->handler(t);
    }
}


void
loop_stop(void)
{
    running = 0;
}


void (*loop_after_event)(int more);


void
loop_run(int (*before_sleep)(void))
{
    int                 i, n, timeout, busy;
    unsigned            events;
    loop_io_t          *io;
    struct epoll_event  evs[LOOP_EVENTS];

    running = 1;

    while (running) {
        busy = before_sleep();

        if (busy) {
            timeout = 0;

        } else if (nheap > 0) {
            loop_update_time();
            timeout = heap[1]->deadline <= now_ms
                      ? 0 : (int) (heap[1]->deadline - now_ms);

        } else {
            timeout = -1;
        }

        n = epoll_wait(epfd, evs, LOOP_EVENTS, timeout);
        if (n == -1 && errno != EINTR) {
            log_error("loop", "epoll_wait: %s", strerror(errno));
            return;
        }

        loop_update_time();

        for (i = 0; i < n; i++) {
            io = evs[i].data.ptr;
            events = 0;

            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                events |= LOOP_READ;
            }
            if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
                events |= LOOP_WRITE;
            }

            io->handler(io, events);

            if (loop_after_event != NULL) {
                loop_after_event(n - i - 1);
            }
        }

        run_timers();
    }
}
