/*
 * queue.h: a queue: its segment files, read cursor, items given back,
 * items open on connections, long-poll waiters and limits.
 *
 *   segs[0] ........ segs[rseg] ......... segs[nsegs-1] (tail, written)
 *   |acked or open|  ^cursor (rseq)        ^ wbuf (unwritten appends)
 *
 * An item is delivered from `ret` (items given back, sorted by seq) first,
 * then from the cursor.  The low watermark, min(ret, open, cursor), is
 * what the position file records: on restart delivery resumes there, so
 * an item is never lost, and an item acknowledged out of order may come
 * back once (at-least-once).  Segments wholly below the watermark are
 * deleted.
 *
 * Leased items (lease.h) are owed too: they count in the watermark and
 * are listed in the position file like open items, and come back as
 * waiting items after a restart.  An item carries its delivery count
 * wherever it goes (given back, open, leased, listed in the position
 * file); the log holds only items never delivered (count 0).
 *
 * A queue that does not exist on disk can still have an object: a
 * "ghost" that holds long-poll waiters and is freed when they leave.
 */

#ifndef MEMQD_QUEUE_H
#define MEMQD_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "mq_frame.h"
#include "mq_name.h"

typedef struct conn_s     conn_t;
typedef struct queue_s    queue_t;
typedef struct openset_s  openset_t;
typedef struct lease_s    lease_t;

#define LEASE_RUNS  4

/* a sorted run of leases (lease.c): positions head..tail - 1 of a ring
 * of cap (a power of two) slots, NULL where one left; its last key is
 * kept here, so that picking a run reads no lease record */
typedef struct {
    lease_t  **a;
    size_t     head;
    size_t     tail;
    size_t     live;        /* non-NULL in head..tail - 1 */
    size_t     cap;
    uint64_t   last;        /* key at tail - 1, when not empty */
} lease_run_t;

/* leases in one order, by deadline or by id (lease.c): those that came
 * in order in sorted runs, the others in a binary min-heap */
typedef struct {
    lease_run_t  run[LEASE_RUNS];
    lease_t    **heap;
    size_t       hn;
    size_t       hcap;
} lease_order_t;

typedef struct {
    uint64_t  seq;       /* record sequence number */
    uint64_t  seg;       /* id of its segment (first seq of the segment) */
    uint64_t  off;       /* record offset in the segment file */
    uint32_t  len;       /* payload bytes */
    uint32_t  deliveries;  /* times delivered so far (get, /open, /lease) */
} item_ref_t;

typedef struct {
    uint64_t  id;        /* first seq; also the file name */
    uint64_t  size;      /* bytes, including unwritten wbuf of the tail */
    int       slot;      /* fdcache hint, -1 */
    unsigned  ver;       /* format version (mq_frame.h); 1 is read only */
    uint32_t  mark;      /* the file's mark (mq_frame.h); 0 for version 1 */
} seg_t;

/* damage found at start in a segment that stays: the reader jumps over
 * it without counting it again */
typedef struct {
    uint64_t  seg;       /* segment id */
    uint64_t  off;       /* where the damage starts */
    uint64_t  next;      /* where the next good record starts */
    uint64_t  next_seq;  /* its seq */
} skip_t;

/* items one connection has open on one queue */
struct openset_s {
    queue_t     *q;          /* (ref) */
    conn_t      *c;          /* (ref) */
    item_ref_t  *refs;       /* in delivery order */
    size_t       n;
    size_t       cap;
    uint64_t     min_seq;    /* lowest seq in refs, UINT64_MAX if none */
    openset_t   *cnext;      /* next set of the same connection */
    openset_t   *qnext;      /* next set on the same queue */
};

/* an item taken from a queue; payload valid until the next queue call */
typedef struct {
    item_ref_t            ref;
    mq_frame_hdr_t        hdr;
    const unsigned char  *payload;
} item_t;

struct queue_s {
    char         name[MQ_NAME_MAX + 1];
    size_t       name_len;
    int          on_disk;       /* 0: ghost (waiters only) */

    seg_t       *segs;
    size_t       nsegs;
    size_t       segs_cap;

    uint64_t     next_seq;      /* seq of the next append */
    unsigned char *wbuf;        /* appends not yet written to the tail,
                                   allocated while there are some */
    size_t       wlen;
    size_t       wcap;
    uint64_t     wbase;         /* tail file offset of wbuf[0] */
    uint64_t     wdone;         /* tail offset where write-behind stands */

    size_t       rseg;          /* cursor: segment index */
    uint64_t     roff;          /* cursor: offset in it */
    uint64_t     rseq;          /* seq of the record at the cursor */

    unsigned char *rbuf;        /* read-ahead: bytes of segment rbuf_seg */
    size_t       rlen;          /*   at [rbuf_off, rbuf_off + rlen); lent
                                     by a bounded pool, may be taken back */
    int          rbuf_slot;     /* its pool slot */
    size_t       rwant;         /* bytes the next read asks for */
    uint64_t     rbuf_seg;
    uint64_t     rbuf_off;

    item_ref_t  *ret;           /* given back, sorted by seq: ret[rhead..] */
    size_t       rhead;
    size_t       nret;          /* end index */
    size_t       ret_cap;

    openset_t   *opensets;

    lease_t    **lbuckets;      /* leased items by id (lease.c) */
    lease_order_t lseq;         /* the same by id (lease.c) */
    size_t       lbuckets_n;    /* power of two, 0 = none yet */
    uint64_t     dlq_ticket;    /* commit that makes its last dead
                                   letter durable (--sync always) */
    int          acked;         /* a lease was acknowledged since the
                                   position file was last written in
                                   full (see queue_save_acked()) */

    uint64_t     rec_first;     /* recovery only: the position file's */
    uint64_t    *rec_pending;   /*   cursor and owed items (ascending) */
    uint32_t    *rec_counts;    /*   and their delivery counts, or NULL */
    size_t       rec_npending;

    skip_t      *skips;         /* in file order, skips[skip_head..] */
    size_t       nskips;
    size_t       skip_head;

    conn_t      *wait_head;     /* long-poll waiters, FIFO */
    conn_t      *wait_tail;

    limits_t     lim;
    uint64_t     lim_gen;       /* config_generation of lim */

    /* counters (stats) */
    uint64_t     items;         /* waiting (not open) */
    uint64_t     bytes;         /* payload bytes of waiting items */
    uint64_t     total_items;
    uint64_t     expired_items;
    uint64_t     open_items;
    uint64_t     leased_items;  /* leases held (lease.c keeps it) */
    uint64_t     redelivered_items;  /* deliveries of an item delivered
                                        before */
    uint64_t     dead_lettered_items;  /* moved to the dead-letter queue */
    uint64_t     nwaiters;

    uint64_t     age_seq;       /* head seq whose ctime is age_ctime */
    uint64_t     age_ctime;

    /* durability bookkeeping, see queue_before_sleep() */
    int          dirty;         /* on the dirty list */
    int          later;         /* on the later list */
    int          pos_dirty;     /* watermark may have moved */
    uint64_t     pos_written;   /* watermark in the position file */

    queue_t     *hnext;         /* hash chain */
    queue_t     *dnext;         /* dirty list */
    queue_t     *lnext;         /* later list */
};

/* queue_append() results */
#define QUEUE_OK        0
#define QUEUE_FULL     -1
#define QUEUE_IO       -2
#define QUEUE_NOFD     -3      /* out of descriptors or memory: this
                                  request fails, the node goes on */

int queue_init(void);
void queue_shutdown(void);

/* Finds a queue; create: 0 no, 1 ghost allowed, 2 on disk. */
queue_t *queue_lookup(const char *name, size_t len, int create);

/* Frees a ghost that has no waiters left. */
void queue_release(queue_t *q);

int queue_append(queue_t *q, uint32_t flags, int64_t exptime,
    const void *data, size_t len);

/* queue_take() modes */
#define QUEUE_DELIVER  0    /* taken for a consumer */
#define QUEUE_PEEK     1    /* left at the head */
#define QUEUE_DROP     2    /* taken to be dropped (overflow) */

/* Takes the head item (QUEUE_PEEK: leaves it there).  1 taken, 0 empty,
 * -1 when it cannot be read now (descriptors or memory short, I/O
 * error): the item stays at the head.  Damaged records on the way are
 * skipped, logged and counted (srv.corrupt_records).  QUEUE_DELIVER
 * never hands out an item whose count reached max_deliveries (a restart
 * ended its lease or /open, or the limit was lowered): it goes to the
 * dead-letter queue on the way, as if it had just gone back. */
int queue_take(queue_t *q, int how, item_t *it);

/* Marks an item as open on connection c; its openset is linked into
 * *conn_sets when new.  -1 on allocation failure: the item is still the
 * caller's, who gives it back (queue_give_back()) as it was taken. */
int queue_open(queue_t *q, conn_t *c, openset_t **conn_sets,
    const item_ref_t *ref);

/*
 * Leases the item just taken (queue_take) for ms milliseconds: it belongs
 * to no connection from now on.  -1 when out of memory: the item is still
 * the caller's, as for queue_open().
 */
int queue_lease(queue_t *q, const item_ref_t *ref, uint64_t ms);

/* Puts a taken item back at the head of q, in id order among the items
 * given back, with the delivery count *ref has. */
void queue_give_back(queue_t *q, const item_ref_t *ref);

/*
 * Acknowledges leased item `seq`: journaled (JACK) under --sync always,
 * so the caller parks its reply behind the next ticket.  1 done, 0 not
 * leased (acknowledged already, run out, never existed), -1 when the
 * journal refused it (the lease stays).
 */
int queue_ack(queue_t *q, uint64_t seq);

#define QUEUE_ACK_MAX  1000     /* ids of one queue_ack_list() */

/*
 * Acknowledges those of ids[0..n) (n <= QUEUE_ACK_MAX) that are leased
 * on q, *acked of them (an id named twice counts once), with a single
 * journal record (JACKS) for them all under --sync always.  0, or -1
 * when the journal refused it or n is over QUEUE_ACK_MAX (no lease
 * ends).
 */
int queue_ack_list(queue_t *q, const uint64_t *ids, size_t n,
    uint64_t *acked);

/* A new lease of ms from now; 0 gives the item back at once.  1 done, 0
 * not leased, -1 out of memory (the lease stays as it was). */
int queue_touch(queue_t *q, uint64_t seq, uint64_t ms);

/* Before the journal switches files: queues whose acknowledgements are
 * in the full file get their position file written in full (see
 * docs/memqd.md, Leases). */
void queue_save_acked(void);

/* Acknowledges / gives back everything c has open on q. */
void queue_close_open(queue_t *q, conn_t *c, openset_t **conn_sets);
void queue_abort_open(queue_t *q, conn_t *c, openset_t **conn_sets);

/* Gives back every open set of a closing connection. */
void queue_abort_conn(openset_t **conn_sets);

int queue_delete(queue_t *q);
void queue_flush(queue_t *q);
void queue_flush_all(void);

/* Long-poll waiters (conn.c links them through the conn). */
void queue_wait_add(queue_t *q, conn_t *c);
void queue_wait_del(queue_t *q, conn_t *c);

/* Wakes every long poll, on ghosts too (shutdown). */
void queue_wake_all_waiters(void);

/* Head item age in ms, 0 when empty. */
uint64_t queue_age_ms(queue_t *q);

/* Iterates over queues on disk, for stats: pass NULL to start. */
queue_t *queue_next(queue_t *q);

/* Waiting items and their bytes over every queue. */
void queue_totals(uint64_t *items, uint64_t *bytes);

/* Writes appends, submits group commit, writes position files, deletes
 * consumed segments.  Returns 1 when more work is pending. */
int queue_before_sleep(void);

/* Commits what was written (--sync interval). */
void queue_sync_all(int wait);

/* The commit thread made `durable` durable, or failed (sync.h). */
void queue_sync_done(uint64_t durable, int failed);

/* Writes every queue's buffered appends to its files.  0, QUEUE_NOFD
 * (some stay buffered for want of a descriptor) or -1 (write failed). */
int queue_write_all(void);

/* Recovery: appends a record with its own seq, ctime and expiry. */
int queue_replay(queue_t *q, const mq_frame_hdr_t *h, const void *data);

#endif /* MEMQD_QUEUE_H */
