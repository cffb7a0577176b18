/*
 * conn.h: a client connection and its state machine.
 *
 *   READ ──set header──► DATA ──data block──► READ
 *     │  └─rejected set─► SWALLOW ──skipped──► READ
 *     ├──get /t= on an empty queue──► WAIT ──item / timeout──► READ
 *     └──quit, fatal error──► CLOSING
 *
 * Replies accumulate in `out`; only out[0..out_ready) may be sent: a
 * STORED that waits for its fsync (see sync.c) holds back everything
 * after it, so replies keep their order.
 *
 * Items of a plain `get` are owed to their queue until the last byte of
 * their VALUE block is in the socket; only then are they acknowledged.
 * Each is a `sending_t`.  An item whose bytes do not all go out in the
 * write that follows its command is opened (queue_open) on a list of its
 * own and closed (queue_close_open) once they have; a connection that
 * closes first gives it back, so a reply cut short by the client or by
 * shutdown loses nothing.  Items that go out at once, the usual case,
 * never need an open set.  When the client has half-closed, "in the
 * socket" is not enough (a client that closed entirely resets the
 * connection when the bytes reach it): the items wait until the client's
 * TCP has acknowledged their bytes, see conn_confirm().
 */

#ifndef MEMQD_CONN_H
#define MEMQD_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "mq_name.h"
#include "queue.h"

#define CONN_STATES(X)                                                       \
    X(CONN_READ)                                                             \
    X(CONN_DATA)                                                             \
    X(CONN_SWALLOW)                                                          \
    X(CONN_WAIT)                                                             \
    X(CONN_CLOSING)

typedef enum {
#define CONN_STATE_ENUM(s) s,
    CONN_STATES(CONN_STATE_ENUM)
#undef CONN_STATE_ENUM
    CONN_NSTATES
} conn_state_e;

#define CONN_IN_SIZE   16384

typedef struct {
    size_t          off;          /* start of the held region in out */
    uint64_t        ticket;       /* fsync ticket it waits for */
    uint64_t        start;        /* receipt of its first set, us (its
                                     sets all came in one iteration) */
    uint64_t        nsets;        /* STOREDs it holds, for metrics */
} hold_t;

/* an item of a plain get whose bytes are not all delivered yet */
typedef struct {
    uint64_t        end;          /* stream offset just past its bytes */
    queue_t        *q;            /* (ref) its queue; NULL once deleted or
                                     when it cannot be tracked */
    openset_t      *set;          /* the item alone, open on this conn,
                                     once opened (see sending_open) */
    item_ref_t      ref;
} sending_t;

struct conn_s {
    loop_io_t       io;
    conn_state_e    state;

    char           *in;           /* CONN_IN_SIZE bytes */
    size_t          in_start;     /* unparsed bytes: in[in_start..in_end) */
    size_t          in_end;

    /* CONN_DATA: a set whose data block did not fit in `in` */
    unsigned char  *val;          /* bytes + 2 */
    size_t          val_len;      /* received so far */
    size_t          val_need;     /* bytes + 2 */
    char            set_key[MQ_NAME_MAX + 1];
    size_t          set_key_len;
    uint32_t        set_flags;
    int64_t         set_exptime;
    int             set_noreply;

    /* CONN_SWALLOW: bytes to skip, then this reply */
    uint64_t        swallow;
    const char     *swallow_reply;

    char           *out;
    size_t          out_len;
    size_t          out_cap;
    size_t          out_sent;
    size_t          out_ready;    /* may send out[out_sent..out_ready) */
    uint64_t        out_base;     /* stream offset of out[0]: bytes
                                     committed before it, ever */
    hold_t         *holds;        /* out[holds[i].off..] waits for the
                                     fsync ticket holds[i].ticket */
    size_t          nholds;
    size_t          holds_cap;

    openset_t      *opensets;     /* items open on this connection */
    uint64_t        ack_ticket;   /* get /ack=: the fsync ticket its
                                     acknowledgements wait for, 0 none */

    sending_t      *sending;      /* sending[sending_head..nsending):
                                     items of replies not yet delivered,
                                     in stream order; those before
                                     sending_open are open on the queue,
                                     the rest were taken by the command
                                     being answered and are opened by
                                     the write that follows it */
    size_t          sending_head;
    size_t          sending_open;
    size_t          nsending;
    size_t          sending_cap;

    uint64_t        cmd_start;    /* loop_now_us() at the receipt of the
                                     command being run (read once for the
                                     commands processed together; a long
                                     poll keeps its first one) */

    queue_t        *wait_q;       /* (ref) CONN_WAIT: the queue */
    uint64_t        wait_deadline;/* monotonic ms, 0 = not waiting */
    loop_timer_t    timer;
    conn_t         *wnext;        /* waiter list of wait_q */
    conn_t         *wprev;

    conn_t         *rnext;        /* ready list (woken waiters) */
    int             ready;
    conn_t         *pnext;        /* parked list (waiting for fsync) */
    int             parked;
    int             close_after_write;
    int             eof;          /* the client half-closed */
    int             lingering;    /* see conn_linger() */
    int             confirming;   /* see conn_confirm() */
    uint64_t        confirm_deadline;  /* monotonic ms */
    int             closed;
    conn_t         *fnext;        /* free list after close */
    conn_t         *anext;        /* list of all connections */
    conn_t         *aprev;
};

int conn_listen(const char *addr);
void conn_close_listeners(void);

/* Closes every connection (open items and items of replies not written
 * whole go back) and frees them. */
void conn_shutdown(void);

/* 1 while some connection still has a reply to send or to see
 * delivered, or a reply waiting for an fsync (shutdown waits for it). */
int conn_busy(void);

/* Schedules c to run its pending get again (item arrived, timeout). */
void conn_wake(conn_t *c);

/* Runs woken connections, frees closed ones; 1 if more are ready. */
int conn_before_sleep(void);

/* Releases replies parked for fsync tickets <= durable. */
void conn_sync_done(uint64_t durable, int failed);


/* Output helpers for cmd.c */
int conn_out_reserve(conn_t *c, size_t n);
void conn_out_str(conn_t *c, const char *s);
void conn_out_mem(conn_t *c, const void *p, size_t n);

/* Accounts n bytes written in place after conn_out_reserve(). */
void conn_out_commit(conn_t *c, size_t n);

/* Parks the replies from here on until fsync ticket `ticket`. */
void conn_park(conn_t *c, uint64_t ticket);

/*
 * An item just taken from q (plain get) whose VALUE block ends at the
 * current end of the output: acknowledged once those bytes are delivered,
 * given back if c closes first.  The write that ends this command opens
 * it on q if its bytes are not all out by then (queue.h: queue_open() of
 * an item taken earlier in the same loop iteration).  -1 when it cannot
 * be tracked (no memory): the item is then delivered as before, at most
 * once.
 */
int conn_out_item(conn_t *c, queue_t *q, const item_ref_t *ref);

/* The queue at address q was deleted (and freed): connections forget
 * the items of it they track, whose open sets queue_delete() freed. */
void conn_queue_deleted(uintptr_t q);

/* 1 while replies wait for an fsync */
int conn_parked(void);

extern const char  *conn_state_names[];

#endif /* MEMQD_CONN_H */
