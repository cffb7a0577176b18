/*
 * cmd.c: the command table of memqd: set, get/gets with queue options,
 * delete, flush, flush_all, stats, version, quit, and the refused storage
 * commands.  Protocol words are spelled once, below.
 */

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "lease.h"
#include "log.h"
#include "metrics.h"
#include "mq_proto.h"
#include "server.h"
#include "sync.h"

/* ack_ids() journals a list the parser let through as one record, so
 * that a refused list acknowledges none of its ids */
#if QUEUE_ACK_MAX < MQ_ACK_IDS_MAX
#error "QUEUE_ACK_MAX must hold an /ack= list of MQ_ACK_IDS_MAX ids"
#endif

#define RPL_STORED        "STORED\r\n"
#define RPL_END           "END\r\n"
#define RPL_DELETED       "DELETED\r\n"
#define RPL_NOT_FOUND     "NOT_FOUND\r\n"
#define RPL_TOUCHED       "TOUCHED\r\n"
#define RPL_OK            "OK\r\n"
#define RPL_ERROR         "ERROR\r\n"
#define RPL_TOO_LARGE     "SERVER_ERROR object too large for cache\r\n"
#define RPL_FULL          "SERVER_ERROR queue full\r\n"
#define RPL_WRITE_FAILED  "SERVER_ERROR storage failure, writes refused\r\n"
#define RPL_NO_RESOURCES  "SERVER_ERROR out of resources\r\n"
#define RPL_NOT_SUPP      "SERVER_ERROR not supported\r\n"
#define RPL_BAD_CHUNK     "CLIENT_ERROR bad data chunk\r\n"
#define RPL_NO_MEMORY     "SERVER_ERROR out of memory\r\n"

#define REPLY_SOFT_MAX  (8 * 1024 * 1024)  /* /n= stops adding items here */
#define EXPTIME_REL_MAX 2592000            /* 30 days, as memcached */
#define FLUSH_DELAY_MAX ((uint64_t) 3650 * 86400)   /* ten years, in s */

/* get_key() results */
#define GET_NONE        0               /* no item */
#define GET_ITEMS       1               /* items added to the reply */
#define GET_WAIT       -1               /* long poll: the connection waits */
#define GET_FAILED     -2               /* a queue could not be read now */
#define GET_REFUSED    -3               /* acks refused: writes refused */


static log_rate_t    client_errors = { "cmd", 10, 0, 0, 0 };
static loop_timer_t  flush_timer;      /* a pending `flush_all <delay>` */


/* Answers a client's mistake, and says so in the log at info level, at
 * most ten lines a second. */
static void
out_client_error(conn_t *c, const char *why)
{
    if (log_max_level >= LOG_INFO && log_rate_ok(&client_errors, loop_now()))
    {
        log_info("cmd", "fd %d: CLIENT_ERROR %s", c->io.fd, why);
    }

    conn_out_str(c, "CLIENT_ERROR ");
    conn_out_str(c, why);
    conn_out_str(c, "\r\n");
}


/* memcached exptime -> absolute unix seconds (0 = never, 1 = expired) */
static int64_t
abs_exptime(int64_t exptime)
{
    if (exptime == 0) {
        return 0;
    }

    if (exptime < 0) {
        return 1;
    }

    if (exptime <= EXPTIME_REL_MAX) {
        return (int64_t) time(NULL) + exptime;
    }

    return exptime;
}


/* 1 when the reply waits for an fsync (its latency is measured when it
 * is released, see conn.c), else 0. */
static int
do_set(conn_t *c, const char *key, size_t key_len, uint32_t flags,
    int64_t exptime, const unsigned char *data, size_t len, int noreply)
{
    int       rc;
    queue_t  *q;

    srv.cmd_set++;

    if (data[len] != '\r' || data[len + 1] != '\n') {
        conn_out_str(c, RPL_BAD_CHUNK);
        return 0;
    }

    if (srv.readonly) {
        conn_out_str(c, RPL_WRITE_FAILED);
        return 0;
    }

    q = queue_lookup(key, key_len, 2);
    if (q == NULL) {
        conn_out_str(c, RPL_WRITE_FAILED);
        return 0;
    }

    rc = queue_append(q, flags, abs_exptime(exptime), data, len);

    if (rc == QUEUE_FULL) {
        conn_out_str(c, RPL_FULL);
        return 0;
    }

    if (rc == QUEUE_NOFD) {
        /* descriptors or memory short: this request fails, not the node */
        conn_out_str(c, RPL_NO_RESOURCES);
        return 0;
    }

    if (rc != QUEUE_OK) {
        conn_out_str(c, RPL_WRITE_FAILED);
        return 0;
    }

    if (noreply) {
        return 0;
    }

    if (srv.sync_mode == SYNC_ALWAYS) {
        /* STORED and what follows wait for the fsync, see sync.c */
        conn_park(c, sync_next_ticket());
        if (c->closed) {
            return 0;               /* it could not wait: never STORED */
        }
        conn_out_str(c, RPL_STORED);
        return 1;
    }

    conn_out_str(c, RPL_STORED);
    return 0;
}


void
cmd_set_complete(conn_t *c)
{
    if (!do_set(c, c->set_key, c->set_key_len, c->set_flags, c->set_exptime,
                c->val, c->val_need - 2, c->set_noreply))
    {
        metrics_latency(METRICS_LAT_SET, c->cmd_start, 1);
    }
}


static int
start_set(conn_t *c, mq_request_t *req, const char *after, size_t avail,
    size_t *used)
{
    if (req->cmd != MQ_CMD_SET) {
        c->swallow = req->bytes + 2;
        c->swallow_reply = RPL_NOT_SUPP;
        c->state = CONN_SWALLOW;
        return CMD_DATA;
    }

    if (req->bytes > srv.max_item_size) {
        c->swallow = req->bytes + 2;
        c->swallow_reply = RPL_TOO_LARGE;
        c->state = CONN_SWALLOW;
        return CMD_DATA;
    }

    if (avail > req->bytes && after[req->bytes] != '\r') {
        /* the terminator is already wrong: answer now, skip the rest */
        conn_out_str(c, RPL_BAD_CHUNK);
        c->swallow_reply = NULL;
        *used = avail < req->bytes + 2 ? avail : (size_t) req->bytes + 2;
        c->swallow = req->bytes + 2 - *used;
        c->state = CONN_SWALLOW;
        return CMD_DATA;
    }

    if (avail >= req->bytes + 2) {
        /* the whole block is already here: no copy */
        if (!do_set(c, req->key, req->key_len, req->flags, req->exptime,
                    (const unsigned char *) after, (size_t) req->bytes,
                    req->noreply))
        {
            metrics_latency(METRICS_LAT_SET, c->cmd_start, 1);
        }
        *used = (size_t) req->bytes + 2;
        return CMD_DONE;
    }

    c->val_need = (size_t) req->bytes + 2;
    c->val = malloc(c->val_need);
    if (c->val == NULL) {
        c->swallow = req->bytes + 2;
        c->swallow_reply = RPL_NO_MEMORY;
        c->state = CONN_SWALLOW;
        return CMD_DATA;
    }

    memcpy(c->val, after, avail);
    c->val_len = avail;
    *used = avail;

    memcpy(c->set_key, req->key, req->key_len);
    c->set_key_len = req->key_len;
    c->set_flags = req->flags;
    c->set_exptime = req->exptime;
    c->set_noreply = req->noreply;
    c->state = CONN_DATA;
    return CMD_DATA;
}


/* Adds a VALUE block to the reply; -1 when out of memory (the
 * connection is then closed after what it has). */
static int
out_value(conn_t *c, const char *key, size_t key_len, const item_t *it,
    int with_cas)
{
    char  *p;

    /* "VALUE " key " " flags " " bytes [" " cas] CRLF data CRLF */
    if (conn_out_reserve(c, 6 + key_len + 3 * 21 + 2 + it->hdr.len + 2)
        != 0)
    {
        return -1;
    }

    p = c->out + c->out_len;
    memcpy(p, "VALUE ", 6);
    p += 6;
    memcpy(p, key, key_len);
    p += key_len;
    *p++ = ' ';
    p = mq_fmt_u64(p, it->hdr.flags);
    *p++ = ' ';
    p = mq_fmt_u64(p, it->hdr.len);
    if (with_cas) {
        *p++ = ' ';
        p = mq_fmt_u64(p, it->hdr.seq);
    }
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, it->payload, it->hdr.len);
    p += it->hdr.len;
    *p++ = '\r';
    *p++ = '\n';

    conn_out_commit(c, (size_t) (p - (c->out + c->out_len)));
    return 0;
}


/* An item taken and not sent after all goes back to the head of q. */
static void
give_back(conn_t *c, queue_t *q, const item_ref_t *ref)
{
    openset_t  *set;

    set = NULL;
    if (queue_open(q, c, &set, ref) == 0) {
        queue_abort_conn(&set);
    } else {
        queue_give_back(q, ref);
    }
}


/* Acknowledges the leases on q that a list checked by the parser names:
 * *acked of them.  0, or -1 when the journal refused a record. */
static int
ack_ids(queue_t *q, const char *list, size_t len, uint64_t *acked)
{
    size_t           n;
    uint64_t         k;
    const char      *p, *end;
    static uint64_t  ids[QUEUE_ACK_MAX];

    *acked = 0;
    p = list;
    end = list + len;

    do {
        for (n = 0; n < QUEUE_ACK_MAX
                    && mq_proto_next_id(&p, end, &ids[n]) == MQ_OK; n++)
        {
            /* void */
        }

        if (queue_ack_list(q, ids, n, &k) != 0) {
            return -1;
        }

        *acked += k;

    } while (n == QUEUE_ACK_MAX);

    return 0;
}


/*
 * /ack=<ids>: acknowledges the leases it names (unknown ids are ignored),
 * once, when the line comes in: a long poll run again later acknowledges
 * nothing (an id not leased then may be another consumer's lease now).
 * Under --sync always the reply that follows waits for the fsync of their
 * journal records, as DELETED does: the connection remembers the ticket,
 * so that a long poll run again later still waits for it.  -1 when the
 * journal refuses writes.
 */
static int
ack_list(conn_t *c, queue_t *q, const mq_get_opts_t *o)
{
    uint64_t  acked;

    acked = 0;

    if (c->wait_deadline == 0 && q != NULL && q->on_disk
        && ack_ids(q, o->acks, o->acks_len, &acked) != 0)
    {
        return -1;
    }

    if (acked && srv.sync_mode == SYNC_ALWAYS) {
        c->ack_ticket = sync_next_ticket();
    }

    if (c->ack_ticket > sync_durable()) {
        conn_park(c, c->ack_ticket);
    }

    return 0;
}




/*
 * One key of a get: GET_ITEMS if it added items to the reply, GET_NONE if
 * not, GET_WAIT if the connection must wait (single-key long poll),
 * GET_FAILED if the queue could not be read now and nothing was added.
 *
 * Items of a plain get (neither /open nor /peek) stay owed until their
 * bytes are delivered, see conn_out_item().
 */
static int
get_key(conn_t *c, const char *key, size_t key_len, const mq_get_opts_t *o,
    int with_cas, int may_wait)
{
    int          taking, rc;
    item_t       it;
    queue_t     *q;
    uint32_t     i, got;
    uint64_t     now;
    size_t       start;
    item_ref_t   taken;

    srv.cmd_get++;

    q = queue_lookup(key, o->name_len, 0);

    if (o->acks != NULL) {
        if (ack_list(c, q, o) != 0) {
            c->wait_deadline = 0;
            return GET_REFUSED;
        }
        if (c->closed) {
            return GET_NONE;        /* could not hold the reply back */
        }
    }

    if (q != NULL && q->on_disk) {
        if (o->close) {
            queue_close_open(q, c, &c->opensets);
        }
        if (o->abort) {
            queue_abort_open(q, c, &c->opensets);
        }
    }

    taking = o->open || o->peek || o->lease_ms
             || !(o->close || o->abort || o->acks);
    got = 0;

    if (taking && q != NULL && q->on_disk) {
        start = c->out_len;

        for (i = 0; i < (o->peek ? 1 : o->count); i++) {
            if (c->out_len - start > REPLY_SOFT_MAX) {
                break;
            }

            if (o->lease_ms && lease_count() >= srv.max_leases) {
                /* a lease costs memory: past the node's cap the items
                 * stay queued, and an empty answer would say the queue
                 * is empty */
                if (got == 0) {
                    c->wait_deadline = 0;
                    return GET_FAILED;
                }
                break;
            }

            rc = queue_take(q, o->peek ? QUEUE_PEEK : QUEUE_DELIVER, &it);

            if (rc < 0) {
                /* the item stays queued; what this reply has so far
                 * goes out, as when it stops at REPLY_SOFT_MAX */
                if (got == 0) {
                    c->wait_deadline = 0;
                    return GET_FAILED;
                }
                break;
            }

            if (rc == 0) {
                break;
            }

            /* one more delivery: the count goes with the item wherever
             * it goes next (given back, open, leased), except when it
             * cannot be tracked and goes back as it was taken */
            taken = it.ref;
            if (!o->peek && it.ref.deliveries < UINT32_MAX) {
                it.ref.deliveries++;
            }

            if ((o->lease_ms && queue_lease(q, &it.ref, o->lease_ms) != 0)
                || (o->open && !o->peek
                    && queue_open(q, c, &c->opensets, &it.ref) != 0))
            {
                /* no memory to track it: given back untouched */
                queue_give_back(q, &taken);
                break;
            }

            if (!o->peek && taken.deliveries > 0) {
                q->redelivered_items++;
            }

            if (out_value(c, key, key_len, &it,
                          with_cas || o->lease_ms) != 0)
            {
                /* not in the reply: an open item goes back when the
                 * connection closes, a leased one when its lease runs
                 * out, a taken one now */
                if (!o->open && !o->peek && !o->lease_ms) {
                    give_back(c, q, &taken);
                }
                break;
            }

            if (!o->open && !o->peek && !o->lease_ms) {
                /* acknowledged once its bytes are delivered; without
                 * memory to track that, delivered as before */
                (void) conn_out_item(c, q, &it.ref);
            }

            got++;
        }
    }

    if (got > 0) {
        srv.get_hits++;
        c->wait_deadline = 0;
        return GET_ITEMS;
    }

    if (taking && may_wait && o->wait_ms > 0 && !srv.stopping) {
        now = loop_now();

        if (c->wait_deadline == 0) {
            c->wait_deadline = now + (uint64_t) o->wait_ms;
        }

        if (c->wait_deadline > now) {
            if (q == NULL) {
                q = queue_lookup(key, o->name_len, 1);
            }
            if (q != NULL) {
                srv.cmd_get--;            /* counted again when it runs */
                queue_wait_add(q, c);
                loop_timer_add(&c->timer, c->wait_deadline - now);
                c->state = CONN_WAIT;
                return GET_WAIT;
            }
        }
    }

    c->wait_deadline = 0;
    srv.get_misses++;
    return GET_NONE;
}


static int
get_keys(conn_t *c, const mq_request_t *req, int with_cas)
{
    int             rc, nkeys, got;
    size_t          key_len;
    const char     *p, *end, *key, *err;
    mq_get_opts_t   opts;

    /* validate every key first: an error must not follow half a reply */
    p = req->rest;
    end = req->rest + req->rest_len;
    nkeys = 0;

    while (mq_proto_next_key(&p, end, &key, &key_len) == MQ_OK) {
        if (mq_proto_parse_get_key(key, key_len, &opts, &err) != MQ_OK) {
            out_client_error(c, err);
            return CMD_DONE;
        }
        nkeys++;
    }

    p = req->rest;
    got = 0;

    while (mq_proto_next_key(&p, end, &key, &key_len) == MQ_OK) {
        mq_proto_parse_get_key(key, key_len, &opts, &err);

        rc = get_key(c, key, key_len, &opts, with_cas, nkeys == 1);

        if (rc == GET_WAIT) {
            return CMD_WAIT;
        }

        if (c->closed) {
            return CMD_DONE;
        }

        if (rc == GET_REFUSED) {
            if (got == 0) {
                conn_out_str(c, RPL_WRITE_FAILED);
                return CMD_DONE;
            }
            break;
        }

        if (rc == GET_FAILED) {
            if (got == 0) {
                conn_out_str(c, RPL_NO_RESOURCES);
                return CMD_DONE;
            }
            /* values are in the reply already: end it with them */
            break;
        }

        got += rc == GET_ITEMS;
    }

    conn_out_str(c, RPL_END);
    return CMD_DONE;
}


static int
do_get(conn_t *c, const mq_request_t *req, int with_cas)
{
    int  rc;

    rc = get_keys(c, req, with_cas);

    if (rc != CMD_WAIT) {
        /* a long poll runs its line again: it keeps the ticket */
        c->ack_ticket = 0;
    }

    return rc;
}


/*
 * delete <q>/<id>: acknowledges a lease.  DELETED waits for the fsync of
 * its journal record under --sync always, as STORED does.
 *
 * delete <q>/<id>,<id>,...: the same for each id in turn, one reply for
 * them all: "DELETED <n>", n of them acknowledged (the others were not
 * leased, or named twice), with one journal record for the list.  When
 * the journal refuses it the reply is the storage failure, and none is
 * acknowledged.
 */
static void
do_ack(conn_t *c, const mq_request_t *req)
{
    int          rc;
    queue_t     *q;
    uint64_t     acked;
    char         buf[sizeof("DELETED \r\n") + 20];

    q = queue_lookup(req->key, req->key_len, 0);
    if (q != NULL && !q->on_disk) {
        q = NULL;
    }

    acked = 0;

    if (req->ids == NULL) {
        rc = q != NULL ? queue_ack(q, req->id) : 0;
        acked = rc > 0;

    } else {
        rc = q != NULL ? ack_ids(q, req->ids, req->ids_len, &acked) : 0;
    }

    if (rc < 0) {
        conn_out_str(c, RPL_WRITE_FAILED);
        return;
    }

    if (req->noreply) {
        return;
    }

    if (acked > 0 && srv.sync_mode == SYNC_ALWAYS) {
        conn_park(c, sync_next_ticket());
        if (c->closed) {
            return;
        }
    }

    if (req->ids != NULL) {
        (void) snprintf(buf, sizeof(buf), "DELETED %" PRIu64 "\r\n", acked);
        conn_out_str(c, buf);
        return;
    }

    conn_out_str(c, acked ? RPL_DELETED : RPL_NOT_FOUND);
}


/* touch <q>/<id> <seconds>: a new lease from now; 0 gives it back. */
static void
do_touch(conn_t *c, const mq_request_t *req)
{
    int       rc;
    queue_t  *q;

    q = queue_lookup(req->key, req->key_len, 0);
    rc = q != NULL && q->on_disk
         ? queue_touch(q, req->id, (uint64_t) req->exptime * 1000) : 0;

    /* noreply silences answers, not failures (as delete's) */
    if (rc < 0) {
        conn_out_str(c, RPL_NO_MEMORY);

    } else if (!req->noreply) {
        conn_out_str(c, rc ? RPL_TOUCHED : RPL_NOT_FOUND);
    }
}


static void
flush_timer_handler(loop_timer_t *t)
{
    log_info("cmd", "flush_all: delay passed, emptying every queue");
    queue_flush_all();
}


/*
 * flush_all [delay]: memcached's meaning: every queue is emptied `delay`
 * seconds from now (an absolute unix time past 30 days, as exptime); 0,
 * absent, negative or already past: now.  A later flush_all replaces a
 * pending one.  The delay does not survive a restart.
 */
static void
do_flush_all(int64_t delay)
{
    int64_t  now;

    loop_timer_del(&flush_timer);

    if (delay > EXPTIME_REL_MAX) {
        now = (int64_t) time(NULL);
        delay = delay > now ? delay - now : 0;
    }

    if (delay <= 0) {
        queue_flush_all();
        return;
    }

    if ((uint64_t) delay > FLUSH_DELAY_MAX) {
        delay = (int64_t) FLUSH_DELAY_MAX;
    }

    flush_timer.handler = flush_timer_handler;
    loop_timer_add(&flush_timer, (uint64_t) delay * 1000);
}


static void
out_stat(conn_t *c, const char *name, uint64_t v)
{
    char  buf[320];
    int   n;

    n = snprintf(buf, sizeof(buf), "STAT %s %" PRIu64 "\r\n", name, v);
    conn_out_mem(c, buf, (size_t) n);
}


static void
out_queue_stat(conn_t *c, queue_t *q, const char *name, uint64_t v)
{
    char  buf[400];
    int   n;

    n = snprintf(buf, sizeof(buf), "STAT queue_%s_%s %" PRIu64 "\r\n",
                 q->name, name, v);
    conn_out_mem(c, buf, (size_t) n);
}


static void
do_stats(conn_t *c)
{
    queue_t   *q;
    uint64_t   now, items, bytes;

    now = (uint64_t) time(NULL);
    queue_totals(&items, &bytes);

    out_stat(c, "pid", (uint64_t) getpid());
    out_stat(c, "uptime", now - srv.start_time);
    out_stat(c, "time", now);
    conn_out_str(c, "STAT version " MEMQD_VERSION "\r\n");
    out_stat(c, "curr_connections", srv.curr_conns);
    out_stat(c, "curr_waiters", srv.curr_waiters);
    out_stat(c, "corrupt_records", srv.corrupt_records);
    out_stat(c, "total_connections", srv.total_conns);
    out_stat(c, "cmd_get", srv.cmd_get);
    out_stat(c, "cmd_set", srv.cmd_set);
    out_stat(c, "get_hits", srv.get_hits);
    out_stat(c, "get_misses", srv.get_misses);
    out_stat(c, "curr_items", items);
    out_stat(c, "total_items", srv.total_items);
    out_stat(c, "bytes", bytes);

    for (q = queue_next(NULL); q; q = queue_next(q)) {
        out_queue_stat(c, q, "items", q->items);
        out_queue_stat(c, q, "bytes", q->bytes);
        out_queue_stat(c, q, "total_items", q->total_items);
        out_queue_stat(c, q, "expired_items", q->expired_items);
        out_queue_stat(c, q, "open_items", q->open_items);
        out_queue_stat(c, q, "leased_items", q->leased_items);
        out_queue_stat(c, q, "redelivered_items", q->redelivered_items);
        out_queue_stat(c, q, "dead_lettered_items", q->dead_lettered_items);
        out_queue_stat(c, q, "waiters", q->nwaiters);
        out_queue_stat(c, q, "age_ms", queue_age_ms(q));
    }

    conn_out_str(c, RPL_END);
}


int
cmd_execute(conn_t *c, const char *line, size_t len, const char *after,
    size_t avail, size_t *used)
{
    int            rc;
    queue_t       *q;
    uintptr_t      gone;
    const char    *err;
    mq_request_t   req;

    *used = 0;

    rc = mq_proto_parse_request(line, len, &req, &err);

    log_debug("cmd", "fd %d: %.*s", c->io.fd, (int) (len > 80 ? 80 : len),
              line);

    if (c->wait_deadline == 0) {
        /* a long poll run again was counted when it came in */
        metrics_command(req.cmd);
    }

    if (rc != MQ_OK) {
        if (req.has_data) {
            /* framing is intact: skip the block, then answer */
            c->swallow = req.bytes + 2;
            c->swallow_reply = strcmp(err, "bad queue name") == 0
                               ? "CLIENT_ERROR bad queue name\r\n"
                               : "CLIENT_ERROR bad command line format\r\n";
            c->state = CONN_SWALLOW;
            return CMD_DATA;
        }

        out_client_error(c, err);

        if (req.cmd == MQ_CMD_SET || req.cmd == MQ_CMD_ADD
            || req.cmd == MQ_CMD_REPLACE || req.cmd == MQ_CMD_APPEND
            || req.cmd == MQ_CMD_PREPEND || req.cmd == MQ_CMD_CAS)
        {
            /* the data block's length is unknown: framing is lost */
            return CMD_CLOSE;
        }

        return CMD_DONE;
    }

    switch (req.cmd) {

    case MQ_CMD_SET:
    case MQ_CMD_ADD:
    case MQ_CMD_REPLACE:
    case MQ_CMD_APPEND:
    case MQ_CMD_PREPEND:
    case MQ_CMD_CAS:
        return start_set(c, &req, after, avail, used);

    case MQ_CMD_GET:
    case MQ_CMD_GETS:
        rc = do_get(c, &req, req.cmd == MQ_CMD_GETS);
        if (rc != CMD_WAIT) {
            metrics_latency(METRICS_LAT_GET, c->cmd_start, 1);
        }
        return rc;

    case MQ_CMD_DELETE:
        if (req.has_id) {
            do_ack(c, &req);
            return CMD_DONE;
        }
        q = queue_lookup(req.key, req.key_len, 0);
        if (q == NULL || !q->on_disk) {
            if (!req.noreply) {
                conn_out_str(c, RPL_NOT_FOUND);
            }
            return CMD_DONE;
        }
        gone = (uintptr_t) q;
        if (queue_delete(q) != 0) {
            conn_out_str(c, srv.readonly ? RPL_WRITE_FAILED
                                         : RPL_NO_RESOURCES);
            return CMD_DONE;
        }
        /* items of replies still being sent died with the queue */
        conn_queue_deleted(gone);
        if (!req.noreply) {
            conn_out_str(c, RPL_DELETED);
        }
        return CMD_DONE;

    case MQ_CMD_FLUSH:
        q = queue_lookup(req.key, req.key_len, 0);
        if (q != NULL && q->on_disk) {
            queue_flush(q);
        }
        if (!req.noreply) {
            conn_out_str(c, RPL_OK);
        }
        return CMD_DONE;

    case MQ_CMD_FLUSH_ALL:
        do_flush_all(req.exptime);
        if (!req.noreply) {
            conn_out_str(c, RPL_OK);
        }
        return CMD_DONE;

    case MQ_CMD_TOUCH:
        do_touch(c, &req);
        return CMD_DONE;

    case MQ_CMD_STATS:
        do_stats(c);
        return CMD_DONE;

    case MQ_CMD_VERSION:
        conn_out_str(c, "VERSION memqd " MEMQD_VERSION "\r\n");
        return CMD_DONE;

    case MQ_CMD_QUIT:
        return CMD_CLOSE;

    default:
        conn_out_str(c, RPL_ERROR);
        return CMD_DONE;
    }
}
