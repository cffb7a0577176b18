/*
 * loop.h: the event loop that owns all of memqd's state.
 *
 * One thread runs the loop: readiness callbacks for registered fds, a
 * min-heap of timers, and a before-sleep hook where batched work (segment
 * writes, group commit, position files) happens once per iteration.
 * The poll timeout is the nearest timer deadline.
 */

#ifndef MEMQD_LOOP_H
#define MEMQD_LOOP_H

#include <stddef.h>
#include <stdint.h>

#define LOOP_READ   0x1
#define LOOP_WRITE  0x2

typedef struct loop_io_s     loop_io_t;
typedef struct loop_timer_s  loop_timer_t;

typedef void (*loop_io_pt)(loop_io_t *io, unsigned events);
typedef void (*loop_timer_pt)(loop_timer_t *t);

struct loop_io_s {
    int            fd;        /* registered fd */
    unsigned       events;    /* LOOP_READ | LOOP_WRITE currently wanted */
    loop_io_pt     handler;   /* called with the ready events */
    void          *data;      /* (ref) owner */
};

struct loop_timer_s {
    uint64_t       deadline;  /* monotonic ms */
    size_t         index;     /* position in the heap, 0 = not armed */
    loop_timer_pt  handler;
    void          *data;      /* (ref) owner */
};

int loop_init(void);
int loop_add(loop_io_t *io, unsigned events);
int loop_mod(loop_io_t *io, unsigned events);
void loop_del(loop_io_t *io);

/*
 * (Re)arms t to fire ms milliseconds from now.  Never fails for a timer
 * whose owner holds a slot: the loop keeps LOOP_TIMERS_FIXED slots for
 * the process's own timers, and an owner made at run time (a client
 * connection) takes one with loop_timer_reserve() when it is made, and
 * gives it back with loop_timer_release() when it is freed.  Arming then
 * allocates nothing, so running out of memory refuses a new connection
 * instead of leaving an armed deadline (a long poll's, a lingering
 * close's, the leases') unarmed.
 */
void loop_timer_add(loop_timer_t *t, uint64_t ms);
void loop_timer_del(loop_timer_t *t);

#define LOOP_TIMERS_FIXED  64

/* A slot for one more timer: 0, or -1 out of memory (not logged: the
 * caller knows how often it may say so).  A release must match a reserve;
 * one that does not is not counted (logged once, see loop_epoll.c). */
int loop_timer_reserve(void);
void loop_timer_release(void);

/* Monotonic milliseconds, updated once per loop iteration. */
uint64_t loop_now(void);
uint64_t loop_update_time(void);

/* Monotonic microseconds, read now; safe in any thread (latency
 * measurements). */
uint64_t loop_now_us(void);

/* Runs until loop_stop(); before_sleep runs before every wait and returns
 * 1 when it wants the next wait not to block. */
void loop_run(int (*before_sleep)(void));
void loop_stop(void);

/* Called after each ready descriptor's handler, with the number of ready
 * descriptors still to be handled in this iteration (NULL: none). */
extern void (*loop_after_event)(int more);

#endif /* MEMQD_LOOP_H */
