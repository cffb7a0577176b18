/*
 * ngx_http_memq_pipe.c: publish pipes, the node connections that single
 * POSTs share.
 *
 * Every worker keeps, per node, up to the cluster's publish_pipes pipes.
 * A single POST appends its "set" command to a pipe's send buffer and an
 * entry to the pipe's FIFO; the node answers the sets in the order it
 * read them, so the oldest entry owns the next reply line.  One write
 * carries the sets of every request that came since the last one, one
 * read brings the replies of all of them, and a node syncing each write
 * (--sync always) commits them in one group.
 *
 *   append ──► out (unsent sets) ──conn_send──► node
 *                                                │ one line per set
 *   FIFO: [oldest .. newest] ◄── reply ──────────┘
 *     oldest entry popped, its owner told (NULL owner: its client left,
 *     the reply is read and dropped)
 *
 * The connection comes from the node's keepalive pool when the first
 * entry is appended and goes back to it when the FIFO empties, so an idle
 * pipe holds nothing and the pool's idle handling (eof, keepalive
 * timeout) applies.  The node's read timer runs only while replies are
 * owed: ngx_http_memq_peer.c arms it once the sets are sent, the pipe
 * restarts it when a whole reply came (bytes alone do not: a node sending
 * a byte now and then would hold every POST of the pipe as long as it
 * goes on), and (mc->pipelined) the peer leaves it alone when more
 * sets are sent, so a node that never answers fails read_timeout after
 * its last reply however many POSTs keep coming; it is deleted when the
 * FIFO empties.  Replies are read while later sets still go out (a write
 * blocked on a node that stopped reading must not leave the replies it
 * sent before unread until that timer fails it).  Nothing here waits for
 * a client, so a slow client never makes a node look slow.
 *
 * Bounds: at most NGX_HTTP_MEMQ_PIPE_DEPTH entries per pipe and
 * NGX_HTTP_MEMQ_PIPE_BYTES of unsent sets; a set longer than
 * NGX_HTTP_MEMQ_PIPE_MSG never enters a pipe.  A pipe that has its
 * connection is taken before an idle one, so no new connection is needed
 * while one of them has room.  When no pipe of the node has room the
 * caller takes a connection of its own, as every POST did before pipes.
 *
 * A failure of the connection (connect refused or timed out, reset, eof,
 * read timeout while replies are owed, a malformed reply, bytes after the
 * last reply, a reply to a set still in out, "SERVER_ERROR too many
 * connections" after another reply) closes it with a reset, marks the
 * node once (one failed connection, one failure, as for a connection of
 * its own), and tells every waiting owner, oldest first; "too many
 * connections" as the connection's first line (said at accept, then the
 * node closes) refuses every waiting entry without marking the node.
 * A reply other than STORED or a refusal marks the node once, whether or
 * not its owner is still here; any other reply is a success of the node
 * (ngx_http_memq_node_ok()), as the reply on a connection of its own
 * is.  Each reply counts, not the FIFO emptying:
 * under steady traffic a FIFO may never empty, and a failure would stay
 * the node's current error (and its fails count) however many sets it
 * stored after it; a node failing every set still never has a success.
 * The successes of a read count when the read ends in step: one that
 * fails the pipe (bytes after the last reply, a malformed reply) has
 * none, so a node out of step is marked down after max_fails.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_PIPE_DEPTH     256           /* sets owed per pipe */
#define NGX_HTTP_MEMQ_PIPE_BYTES     (64 * 1024)   /* unsent sets */


struct ngx_http_memq_pipe_s {
    ngx_http_memq_node_t         *node;     /* (ref) */
    ngx_http_memq_conn_t         *mc;       /* NULL: nothing owed */
    ngx_buf_t                     out;      /* sets not sent yet */
    ngx_http_memq_pipe_entry_t   *ring;     /* the FIFO, DEPTH entries */
    ngx_uint_t                    head;     /* oldest entry */
    ngx_uint_t                    n;        /* entries owed a reply */
    size_t                        queued;   /* bytes of sets appended
                                               ever (wraps) */
};


static ngx_int_t ngx_http_memq_pipe_init(ngx_http_memq_node_t *node);
static ngx_int_t ngx_http_memq_pipe_room(ngx_http_memq_pipe_t *p,
    size_t size);
static ngx_int_t ngx_http_memq_pipe_read(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static void ngx_http_memq_pipe_fail(ngx_http_memq_pipe_t *p,
    const char *reason);
static void ngx_http_memq_pipe_drain(ngx_http_memq_pipe_t *p, ngx_int_t rc,
    const char *reason);


/*
 * Appends one set (data, size bytes, for a message of len payload bytes)
 * for owner to a pipe of node; *ep is the owner's entry until the owner is
 * told its reply (ngx_http_memq_publish_piped()).  NGX_OK: queued;
 * NGX_DECLINED: no pipe has room (or pipes are off, or the set is too
 * big): the caller uses a connection of its own; NGX_ERROR: the node
 * refused the connect (its failure); NGX_BUSY: this worker is short of
 * connections, local ports or memory; neither marks the node here.
 */
ngx_int_t
ngx_http_memq_pipe_send(ngx_http_memq_node_t *node, u_char *data,
    size_t size, size_t len, void *owner, ngx_http_memq_pipe_entry_t **ep)
{
    ngx_int_t                    rc;
    ngx_uint_t                   i, kick;
    ngx_http_memq_pipe_t        *p, *q;
    ngx_http_memq_conn_t        *mc;
    ngx_http_memq_cluster_t     *cl;
    ngx_http_memq_pipe_entry_t  *e;

    cl = node->cluster;

    if (cl->publish_pipes == 0 || size > NGX_HTTP_MEMQ_PIPE_MSG) {
        return NGX_DECLINED;
    }

    if (node->pipes == NULL && ngx_http_memq_pipe_init(node) != NGX_OK) {
        return NGX_BUSY;
    }

    /*
     * The first pipe with a connection and room, else the first idle one
     * (nothing owed, no connection): a busy node fills one pipe before it
     * gets a second, and a POST never needs a new connection (which this
     * worker may be short of) while a pipe that has one has room.
     */
    p = NULL;

    for (i = 0; i < cl->publish_pipes; i++) {
        q = &node->pipes[i];

        if (q->mc == NULL) {
            if (p == NULL) {
                p = q;
            }

            continue;
        }

        if (q->n < NGX_HTTP_MEMQ_PIPE_DEPTH
            && ngx_http_memq_pipe_room(q, size) == NGX_OK)
        {
            p = q;
            break;
        }
    }

    if (p == NULL) {
        /* a run to it ends here: what the node owes cannot grow past what
         * its pipes hold, so the slack would not end it (node_next()) */
        if (cl->run_node == node) {
            cl->run_node = NULL;
        }

        return NGX_DECLINED;
    }

    if (p->ring == NULL) {
        p->ring = ngx_alloc(NGX_HTTP_MEMQ_PIPE_DEPTH
                            * sizeof(ngx_http_memq_pipe_entry_t),
                            ngx_cycle->log);
        p->out.start = ngx_alloc(NGX_HTTP_MEMQ_PIPE_BYTES, ngx_cycle->log);

        if (p->ring == NULL || p->out.start == NULL) {
            ngx_free(p->ring);
            ngx_free(p->out.start);
            p->ring = NULL;
            p->out.start = NULL;
            return NGX_BUSY;
        }

        p->out.pos = p->out.start;
        p->out.last = p->out.start;
        p->out.end = p->out.start + NGX_HTTP_MEMQ_PIPE_BYTES;
        p->out.temporary = 1;
    }

    if (p->mc == NULL) {
        /* the pipe's log is the cycle's: the connection outlives every
         * request that appends to it */
        rc = ngx_http_memq_conn_get(node, ngx_cycle->log, &p->mc);

        if (rc == NGX_ERROR || rc == NGX_BUSY) {
            return rc;
        }

        p->mc->handler = ngx_http_memq_pipe_read;
        p->mc->data = p;
        p->mc->owner_conn = NULL;
        p->mc->pipelined = 1;
        kick = 1;

    } else {
        /* sending (or connecting) already: the sets appended now go out
         * with the ones being sent */
        kick = (p->mc->out == NULL || p->mc->waiting);
    }

    mc = p->mc;

    p->out.last = ngx_cpymem(p->out.last, data, size);
    p->queued += size;

    e = &p->ring[(p->head + p->n) % NGX_HTTP_MEMQ_PIPE_DEPTH];
    e->owner = owner;
    e->len = len;
    e->sent = ngx_current_msec;
    e->end = p->queued;
    p->n++;
    node->owed++;

    if (kick) {
        ngx_http_memq_conn_send(mc, &p->out, cl->read_timeout);
    }

    *ep = e;

    return NGX_OK;
}


/* the owner's client left: its reply is still read, and dropped */
void
ngx_http_memq_pipe_forget(ngx_http_memq_pipe_entry_t *e)
{
    e->owner = NULL;
}


static ngx_int_t
ngx_http_memq_pipe_init(ngx_http_memq_node_t *node)
{
    ngx_uint_t                i, n;
    ngx_http_memq_pipe_t     *p;

    /* cycle memory: a node is never freed, and a reused node keeps its
     * pipes (ngx_http_memq_node_add()) */
    n = node->cluster->publish_pipes;

    p = ngx_pcalloc(ngx_cycle->pool, n * sizeof(ngx_http_memq_pipe_t));
    if (p == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        p[i].node = node;
    }

    node->pipes = p;

    return NGX_OK;
}


/*
 * Room for size more bytes of sets: the sent ones are dropped, the unsent
 * moved to the front.  The peer layer reads out.pos afresh on every
 * send, and nothing is being sent while this runs.
 */
static ngx_int_t
ngx_http_memq_pipe_room(ngx_http_memq_pipe_t *p, size_t size)
{
    size_t      unsent;
    ngx_buf_t  *b;

    b = &p->out;
    unsent = b->last - b->pos;

    if ((size_t) (b->end - b->last) >= size) {
        return NGX_OK;
    }

    if ((size_t) (b->end - b->start) - unsent < size) {
        return NGX_DECLINED;
    }

    ngx_memmove(b->start, b->pos, unsent);
    b->pos = b->start;
    b->last = b->start + unsent;

    return NGX_OK;
}


/* the node's replies, one line per set, for the oldest entries */
static ngx_int_t
ngx_http_memq_pipe_read(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    void                        *owner;
    ngx_int_t                    prc;
    ngx_buf_t                   *b;
    ngx_msec_t                   took;
    ngx_uint_t                   refused, good, sampled;
    mq_reply_t                   reply;
    const char                  *err;
    ngx_http_memq_pipe_t        *p;
    ngx_http_memq_node_t        *node;
    ngx_http_memq_shnode_t      *shn;
    ngx_http_memq_pipe_entry_t  *e;

    p = mc->data;
    node = mc->node;

    if (rc == NGX_ERROR) {
        ngx_http_memq_pipe_fail(p, mc->err);
        return NGX_DONE;
    }

    b = mc->in;
    shn = ngx_http_memq_shnode(node);
    good = 0;
    sampled = 0;

    while (p->n) {
        prc = mq_proto_parse_reply((const char *) b->pos, b->last - b->pos,
                                   0, &reply, &err);

        if (prc == MQ_AGAIN) {
            goto again;
        }

        if (prc == MQ_ERROR) {
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V sent a malformed reply: %s",
                          &node->addr, err);
            ngx_http_memq_pipe_fail(p, err);
            return NGX_DONE;
        }

        prc = ngx_http_memq_conn_limit(mc, &reply);

        if (prc == NGX_OK) {
            /* said at accept, and the node closes: nothing it was sent
             * is stored, and the node is not to blame */
            ngx_log_error(NGX_LOG_WARN, &mc->log, 0,
                          "memq node %V: " NGX_HTTP_MEMQ_CONN_LIMIT,
                          &node->addr);

            p->mc = NULL;
            ngx_http_memq_conn_close(mc);
            ngx_http_memq_pipe_drain(p, NGX_DECLINED,
                                     NGX_HTTP_MEMQ_CONN_LIMIT);
            return NGX_DONE;
        }

        if (prc == NGX_ERROR) {
            /* after other replies: out of step, as a reply too many */
            ngx_http_memq_pipe_fail(p, "unexpected reply");
            return NGX_DONE;
        }

        refused = ngx_http_memq_set_refused(&reply);

        e = &p->ring[p->head];

        if (p->queued - e->end < (size_t) (p->out.last - p->out.pos)) {
            /* some of its set is still in out: the node answers what it
             * was never sent, and every line from it is suspect */
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V answered a set not sent",
                          &node->addr);
            ngx_http_memq_pipe_fail(p, "reply to a set not sent");
            return NGX_DONE;
        }

        p->head = (p->head + 1) % NGX_HTTP_MEMQ_PIPE_DEPTH;
        p->n--;
        node->owed--;

        /*
         * The reply times' average (see node_next(), runs): one sample a
         * read, the oldest entry's wait, capped, an eighth of the way.
         * A read that comes late because this worker was late (busy, or
         * off its core) delays every reply in it alike: counted once and
         * capped, it adds at most 3 ms, less than the lag that ends runs,
         * while a node whose every read lags gets there in two reads.
         */
        if (!sampled) {
            sampled = 1;
            took = ngx_min(ngx_current_msec - e->sent,
                           NGX_HTTP_MEMQ_RUN_LAG * 6);
            node->reply_ms8 = node->reply_ms8 - node->reply_ms8 / 8 + took;
            node->replied = 1;
        }

        owner = e->owner;
        e->owner = NULL;

        if (reply.type == MQ_REPLY_STORED) {
            (void) ngx_atomic_fetch_add(&shn->msgs_in, 1);
            (void) ngx_atomic_fetch_add(&shn->bytes_in, e->len);
        }

        if (reply.type == MQ_REPLY_STORED || refused) {
            /* stored, or refused by a healthy node (queue full, too
             * large): a success of the node, counted when the rest of
             * this read is in step (see "again" below) */
            good = 1;

        } else {
            /* the node's fault, as on a connection of its own, whether or
             * not the client is still here; the pipe goes on, since the
             * protocol is still in step */
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V answered \"%*s\" to set",
                          &node->addr, reply.consumed - 2, b->pos);

            if (good) {
                /* the successes before it come first, as they came */
                ngx_http_memq_node_ok(node);
                good = 0;
            }

            ngx_http_memq_node_failed(node, &mc->log,
                                      reply.type == MQ_REPLY_SERVER_ERROR
                                      ? "server error" : "unexpected reply");
        }

        if (owner) {
            ngx_http_memq_publish_piped(owner, node, NGX_OK, &reply, NULL);
        }

        b->pos += reply.consumed;

        if (p->mc != mc) {
            /* taken elsewhere meanwhile (cannot happen: an owner retries
             * on other nodes only) */
            return NGX_DONE;
        }
    }

    if (b->pos != b->last) {
        ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                      "memq node %V sent bytes after the last reply",
                      &node->addr);
        ngx_http_memq_pipe_fail(p, "bytes after the last reply");
        return NGX_DONE;
    }

    /* nothing owed: the node is not timed any more, and the connection
     * waits in the keepalive pool for the next set */
    ngx_http_memq_conn_replied(mc);

    if (good) {
        ngx_http_memq_node_ok(node);
    }

    p->mc = NULL;
    p->head = 0;
    p->out.pos = p->out.start;
    p->out.last = p->out.start;

    ngx_http_memq_conn_release(mc);

    return NGX_DONE;

again:

    /* the wait for the next reply starts again at each whole reply, not
     * at each byte: a node that sends a byte now and then fails
     * read_timeout after its last whole reply */
    if (sampled || !mc->pc.connection->read->timer_set) {
        ngx_add_timer(mc->pc.connection->read, mc->reply_timeout);
    }

    /*
     * The good replies of a read count once it is known to be in step:
     * a node answering more than it was sent (bytes after the last reply,
     * a reply to a set not sent, a malformed one) fails the pipe with no
     * success, as on a connection of its own, and is marked down after
     * max_fails of them, not forgiven by the STORED before each.
     */
    if (good) {
        ngx_http_memq_node_ok(node);
    }

    return NGX_OK;
}


/* the connection failed: the node is marked once (not for a failure of
 * this worker: out of memory, its shutdown timer), every owner told */
static void
ngx_http_memq_pipe_fail(ngx_http_memq_pipe_t *p, const char *reason)
{
    ngx_uint_t             local, level;
    ngx_http_memq_conn_t  *mc;

    mc = p->mc;
    local = mc->local;

    level = local ? NGX_LOG_WARN : NGX_LOG_ERR;

    ngx_log_error(level, ngx_cycle->log, 0,
                  "memq node %V failed: %s, %ui publishes waiting",
                  &p->node->addr, reason, p->n);

    p->mc = NULL;
    ngx_http_memq_conn_close(mc);

    if (!local) {
        ngx_http_memq_node_failed(p->node, ngx_cycle->log, reason);
    }

    ngx_http_memq_pipe_drain(p, NGX_ERROR, reason);
}


/*
 * Empties the FIFO (the connection is closed already) and tells each
 * waiting owner, oldest first.  The owners are taken out before any is
 * told: an owner retries on another node, and its answer may free
 * requests, so the ring is consistent (empty) while they run.
 */
static void
ngx_http_memq_pipe_drain(ngx_http_memq_pipe_t *p, ngx_int_t rc,
    const char *reason)
{
    ngx_uint_t                   i, n;
    ngx_http_memq_pipe_entry_t  *e;
    void                        *owners[NGX_HTTP_MEMQ_PIPE_DEPTH];

    n = 0;

    for (i = 0; i < p->n; i++) {
        e = &p->ring[(p->head + i) % NGX_HTTP_MEMQ_PIPE_DEPTH];

        if (e->owner) {
            owners[n++] = e->owner;
            e->owner = NULL;
        }
    }

    p->node->owed -= p->n;
    p->n = 0;
    p->head = 0;
    p->out.pos = p->out.start;
    p->out.last = p->out.start;

    for (i = 0; i < n; i++) {
        ngx_http_memq_publish_piped(owners[i], p->node, rc, NULL, reason);
    }
}
