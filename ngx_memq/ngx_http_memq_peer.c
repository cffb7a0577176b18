/*
 * ngx_http_memq_peer.c: the gateway's own connections to memq nodes, the
 * per-worker keepalive pool, and node choice (fewest replies owed per
 * weight, then smooth weighted round robin).
 *
 * A connection is an ngx_http_memq_conn_t in its own pool (c->pool), so it
 * can outlive the request that opened it:
 *
 *   conn_get() ──► connecting ──► sending ──► waiting ──► owner handler
 *        ▲          (write ev)    (write ev)   (read ev)      │
 *        │                                                    ├─ send() again
 *        └──────────── idle in node->idle ◄── release() ──────┤
 *                     (any readiness closes)                  └─ close()
 *
 * One event handler serves both events of a connection and dispatches on
 * the state; it ends with ngx_http_run_posted_requests() for the client
 * connection of the owner.  The owner handler is called with NGX_OK when
 * reply bytes arrived and NGX_ERROR on failure; it says NGX_DONE once it has
 * taken the connection elsewhere (closed, released, new request sent), after
 * which this file does not touch it again.
 *
 * A connection is pooled only when provably clean: the reply fully
 * consumed (no unread byte), nothing left to send, no error, timeout or
 * eof, and the worker not exiting.  Otherwise it is closed, which also
 * makes memqd give back the items it had open for it.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_IN_SIZE  16384


static void ngx_http_memq_conn_handler(ngx_event_t *ev);
static void ngx_http_memq_conn_write(ngx_http_memq_conn_t *mc);
static void ngx_http_memq_conn_read(ngx_http_memq_conn_t *mc);
static void ngx_http_memq_conn_fail(ngx_http_memq_conn_t *mc,
    const char *err);
static ngx_int_t ngx_http_memq_conn_test_connect(ngx_http_memq_conn_t *mc);
static ngx_uint_t ngx_http_memq_conn_error(ngx_log_t *log,
    ngx_http_memq_node_t *node, ngx_err_t err);
static ngx_int_t ngx_http_memq_conn_room(ngx_http_memq_conn_t *mc);
static void ngx_http_memq_conn_idle_handler(ngx_event_t *ev);
static void ngx_http_memq_conn_free(ngx_http_memq_conn_t *mc);


/* the worker's shutdown timer closed a connection in use: none is opened
 * after it (nginx closes each connection once, and a retry on a new one
 * would outlive worker_shutdown_timeout) */
static ngx_uint_t  ngx_http_memq_shutdown_closed;


/*
 * Gives a connection to node: a pooled one (NGX_OK, connected) or a new one
 * (NGX_OK or NGX_AGAIN while connecting).  With nothing to clean up and
 * *mcp NULL: NGX_ERROR when the node refused the connect (its failure),
 * NGX_BUSY when this worker is short of something (no free connection in
 * worker_connections, no socket, no local port, no memory, see
 * conn_error()) or its shutdown timer is closing its connections, which
 * is not the node's fault and must not mark it.
 * The caller sets mc->handler, mc->data and mc->owner_conn next.
 */
ngx_int_t
ngx_http_memq_conn_get(ngx_http_memq_node_t *node, ngx_log_t *log,
    ngx_http_memq_conn_t **mcp)
{
    ngx_err_t                 err;
    ngx_int_t                 rc;
    ngx_uint_t                level;
    ngx_pool_t               *pool;
    ngx_queue_t              *q;
    ngx_connection_t         *c;
    ngx_http_memq_conn_t     *mc;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    *mcp = NULL;

    if (ngx_http_memq_shutdown_closed) {
        return NGX_BUSY;
    }

    cl = node->cluster;
    sn = ngx_http_memq_shnode(node);

    if (!ngx_queue_empty(&node->idle)) {
        q = ngx_queue_head(&node->idle);
        ngx_queue_remove(q);
        node->nidle--;

        mc = ngx_queue_data(q, ngx_http_memq_conn_t, queue);
        c = mc->pc.connection;

        mc->pooled = 0;
        mc->log = *log;
        mc->log.action = "talking to memq node";
        c->log = &mc->log;
        c->read->log = &mc->log;
        c->write->log = &mc->log;
        c->pool->log = &mc->log;
        c->idle = 0;

        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        c->read->handler = ngx_http_memq_conn_handler;
        c->write->handler = ngx_http_memq_conn_handler;

        (void) ngx_atomic_fetch_add(&sn->pool_idle, -1);
        (void) ngx_atomic_fetch_add(&sn->pool_busy, 1);

        *mcp = mc;
        return NGX_OK;
    }

    if (ngx_cycle->free_connection_n == 0
        && ngx_queue_empty((ngx_queue_t *)
                           &ngx_cycle->reusable_connections_queue))
    {
        /* nginx would only log an alert and fail */
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "memq node %V: worker_connections are not enough",
                      &node->addr);
        return NGX_BUSY;
    }

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        return NGX_BUSY;
    }

    mc = ngx_pcalloc(pool, sizeof(ngx_http_memq_conn_t));
    if (mc == NULL) {
        ngx_destroy_pool(pool);
        return NGX_BUSY;
    }

    mc->pool = pool;
    mc->node = node;
    mc->log = *log;
    mc->log.action = "connecting to memq node";
    pool->log = &mc->log;

    mc->in = ngx_create_temp_buf(pool, NGX_HTTP_MEMQ_IN_SIZE);
    if (mc->in == NULL) {
        ngx_destroy_pool(pool);
        return NGX_BUSY;
    }

    mc->pc.sockaddr = node->sockaddr;
    mc->pc.socklen = node->socklen;
    mc->pc.name = &node->addr;
    mc->pc.get = ngx_event_get_peer;
    mc->pc.log = &mc->log;
    mc->pc.log_error = NGX_ERROR_ERR;
    mc->pc.tries = 1;

    /*
     * ngx_event_connect_peer() (src/event/ngx_event_connect.c, nginx 1.22
     * and later) answers NGX_DECLINED for every error of connect(): a
     * node that refuses and a host with no local port left
     * (EADDRNOTAVAIL) alike; it logs the error and closes the socket
     * before it returns.  Whose failure it was is told by errno, and
     * between connect() and that return only two calls may change errno:
     * the write of that log line, when the write fails (a full disk,
     * syslog), and close() of a socket that never connected (epoll drops
     * it without a call of its own), which fails, if ever, with EBADF,
     * EINTR or EIO, none of them a shortage: at worst the node is blamed,
     * as before.  So that log line (error or crit) is held back for the
     * call, alerts (socket() failing and the like) still pass, errno is
     * connect()'s when it returns, and conn_error() logs the failure
     * instead, saying whose it is.
     */
    level = mc->log.log_level;

    if (level > NGX_LOG_ALERT) {
        mc->log.log_level = NGX_LOG_ALERT;
    }

    rc = ngx_event_connect_peer(&mc->pc);
    err = (rc == NGX_DECLINED) ? ngx_socket_errno : 0;

    mc->log.log_level = level;

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        /* ngx_event_connect_peer() closed the socket already */
        if (mc->pc.connection) {
            ngx_close_connection(mc->pc.connection);
        }

        /* NGX_DECLINED: connect() itself failed (refused, unreachable, or
         * a shortage here); NGX_ERROR: socket(), a connection slot or an
         * event failed here */
        if (rc == NGX_DECLINED && !ngx_http_memq_conn_error(&mc->log, node,
                                                            err))
        {
            rc = NGX_ERROR;

        } else {
            rc = NGX_BUSY;
        }

        ngx_destroy_pool(pool);

        return rc;
    }

    /* the node is not reused while a connection to it lives */
    node->refs++;

    c = mc->pc.connection;
    c->data = mc;
    c->pool = pool;
    c->log = &mc->log;
    c->read->log = &mc->log;
    c->write->log = &mc->log;
    c->read->handler = ngx_http_memq_conn_handler;
    c->write->handler = ngx_http_memq_conn_handler;

    /*
     * Requests to a node are small and often follow one another before
     * the node has answered the first (pipes, acknowledgements, the next
     * get); under Nagle's rule each would wait for the node's ACK, which a
     * node busy with fdatasync holds back up to its delayed-ACK timer.
     * A failure is logged by nginx; the connection works, only slower.
     */
    (void) ngx_tcp_nodelay(c);

    (void) ngx_atomic_fetch_add(&sn->pool_busy, 1);

    if (rc == NGX_AGAIN) {
        mc->connecting = 1;
        ngx_add_timer(c->write, cl->connect_timeout);
    }

    *mcp = mc;
    return rc;
}


/*
 * Sends out (the owner keeps its memory untouched until the reply comes)
 * and waits for a reply; reply_timeout bounds the wait for its first byte.
 * Errors are reported through the handler, posted so the caller's stack is
 * unwound first.
 */
void
ngx_http_memq_conn_send(ngx_http_memq_conn_t *mc, ngx_buf_t *out,
    ngx_msec_t reply_timeout)
{
    ngx_connection_t  *c;

    c = mc->pc.connection;

    mc->out = out;
    mc->reply_timeout = reply_timeout;
    mc->waiting = 0;
    mc->log.action = mc->connecting ? "connecting to memq node"
                                    : "sending to memq node";

    if (c->read->timer_set && !mc->pipelined) {
        /* a pipelined connection still owes the replies to what went
         * before: the wait for them goes on */
        ngx_del_timer(c->read);
    }

    if (mc->connecting) {
        return;
    }

    /* write from the event loop: the owner may still be setting up */
    c->write->ready = 1;
    ngx_post_event(c->write, &ngx_posted_events);
}


/*
 * The owner has the whole reply and keeps the connection (for the next
 * request, or while it holds the node back for its client): the read timer
 * is deleted, since nothing is due from the node any more.  A node never
 * times out while the gateway does not wait for it.
 */
void
ngx_http_memq_conn_replied(ngx_http_memq_conn_t *mc)
{
    ngx_connection_t  *c;

    c = mc->pc.connection;
    mc->waiting = 0;

    /* a later write event (epoll reports writability too) must not take
     * the old request for a new one and start waiting again */
    mc->out = NULL;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }
}


/*
 * Whether a reply line is memqd's "SERVER_ERROR too many connections" as
 * memqd says it: once, as the first line of a connection it just
 * accepted, then it closes.  NGX_OK: so said, a refusal of this connection
 * that marks nothing (nothing sent on it is stored); NGX_ERROR: said after
 * another reply (logged here), the node's fault, as any unexpected reply;
 * NGX_DECLINED: another line.  A publish or a stream passes every reply
 * line here, in order; a connection back from the keepalive pool has
 * answered before.
 */
ngx_int_t
ngx_http_memq_conn_limit(ngx_http_memq_conn_t *mc, mq_reply_t *reply)
{
    ngx_uint_t  first;

    first = !mc->spoke;
    mc->spoke = 1;

    if (reply->type != MQ_REPLY_SERVER_ERROR
        || reply->text_len != sizeof(NGX_HTTP_MEMQ_CONN_LIMIT) - 1
        || ngx_strncmp(reply->text, NGX_HTTP_MEMQ_CONN_LIMIT,
                       reply->text_len) != 0)
    {
        return NGX_DECLINED;
    }

    if (first) {
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                  "memq node %V said \"" NGX_HTTP_MEMQ_CONN_LIMIT
                  "\" after a reply", &mc->node->addr);

    return NGX_ERROR;
}


/*
 * The owner stops reading the reply for a while (its client has not taken
 * what came before): nothing more is read and the node is not timed: the
 * node is not what is waited for.
 */
void
ngx_http_memq_conn_hold(ngx_http_memq_conn_t *mc)
{
    ngx_connection_t  *c;

    c = mc->pc.connection;
    mc->held = 1;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }
}


/* the owner reads on: the bytes already in go to the handler first, from
 * the event loop */
void
ngx_http_memq_conn_resume(ngx_http_memq_conn_t *mc)
{
    ngx_connection_t  *c;

    c = mc->pc.connection;
    mc->held = 0;
    mc->resumed = 1;

    ngx_add_timer(c->read, mc->node->cluster->read_timeout);
    ngx_post_event(c->read, &ngx_posted_events);
}


/* closes the connection and frees it; memqd gives back its open items */
void
ngx_http_memq_conn_close(ngx_http_memq_conn_t *mc)
{
    ngx_http_memq_shnode_t  *sn;

    sn = ngx_http_memq_shnode(mc->node);

    if (mc->pooled) {
        ngx_queue_remove(&mc->queue);
        mc->node->nidle--;
        (void) ngx_atomic_fetch_add(&sn->pool_idle, -1);

    } else {
        (void) ngx_atomic_fetch_add(&sn->pool_busy, -1);
        mc->reset = 1;
    }

    ngx_http_memq_conn_free(mc);
}


/*
 * Closes a connection in use, whose reply was read in full, with a FIN:
 * what was written to it is still read and done by the node.
 */
void
ngx_http_memq_conn_close_fin(ngx_http_memq_conn_t *mc)
{
    ngx_http_memq_shnode_t  *sn;

    sn = ngx_http_memq_shnode(mc->node);

    if (mc->pooled) {
        ngx_http_memq_conn_close(mc);
        return;
    }

    (void) ngx_atomic_fetch_add(&sn->pool_busy, -1);
    ngx_http_memq_conn_free(mc);
}


static void
ngx_http_memq_conn_free(ngx_http_memq_conn_t *mc)
{
    ngx_pool_t        *pool;
    struct linger      l;
    ngx_connection_t  *c;

    c = mc->pc.connection;
    pool = mc->pool;
    mc->node->refs--;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "memq node connection close: %V", &mc->node->addr);

    if (c->read->timedout || c->write->timedout || mc->reset) {
        /*
         * A reset, as nginx's reset_timedout_connection does: the kernel
         * drops what it still holds for the node, so a request we gave
         * up on (and retried elsewhere) is not delivered and stored late
         * when the node becomes reachable again.  A connection closed in
         * use (client abort, error) is reset too: memqd keeps answering
         * a client that only half-closed (FIN), so a long poll would
         * otherwise live on until its own timeout.
         */
        l.l_onoff = 1;
        l.l_linger = 0;

        if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, (const void *) &l,
                       sizeof(struct linger))
            == -1)
        {
            ngx_log_error(NGX_LOG_INFO, c->log, ngx_socket_errno,
                          "setsockopt(SO_LINGER) failed");
        }
    }

    /* the pool (and mc in it) must not be logged to after this */
    c->log = ngx_cycle->log;
    c->read->log = ngx_cycle->log;
    c->write->log = ngx_cycle->log;
    c->pool = NULL;
    pool->log = ngx_cycle->log;

    ngx_close_connection(c);
    ngx_destroy_pool(pool);
}


/* a node left every source: its pooled connections go now */
void
ngx_http_memq_conn_close_idle(ngx_http_memq_node_t *node)
{
    ngx_queue_t           *q;
    ngx_http_memq_conn_t  *mc;

    while (!ngx_queue_empty(&node->idle)) {
        q = ngx_queue_head(&node->idle);
        mc = ngx_queue_data(q, ngx_http_memq_conn_t, queue);
        ngx_http_memq_conn_close(mc);
    }
}


/*
 * Puts the connection in the node's keepalive pool when it is clean, closes
 * it otherwise.  The owner's log and memory are no longer referenced.
 */
void
ngx_http_memq_conn_release(ngx_http_memq_conn_t *mc)
{
    ngx_queue_t              *q;
    ngx_connection_t         *c;
    ngx_http_memq_conn_t     *old;
    ngx_http_memq_node_t     *node;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    c = mc->pc.connection;
    node = mc->node;
    cl = node->cluster;

    if (mc->connecting || mc->waiting
        || (mc->out && mc->out->pos != mc->out->last)
        || mc->in->pos != mc->in->last
        || c->read->timedout || c->read->eof || c->read->error
        || c->write->timedout || c->error
        || cl->keepalive == 0 || node->sources == 0
        || ngx_terminate || ngx_exiting)
    {
        ngx_http_memq_conn_close(mc);
        return;
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_memq_conn_close(mc);
        return;
    }

    if (mc->in->end - mc->in->start > NGX_HTTP_MEMQ_IN_SIZE) {
        /*
         * a big value grew the buffer to its size: an idle connection
         * keeps the usual one, or every pooled connection that once read
         * a big value would hold it for as long as it is reused
         */
        ngx_pfree(mc->pool, mc->in->start);

        mc->in->start = ngx_palloc(mc->pool, NGX_HTTP_MEMQ_IN_SIZE);
        if (mc->in->start == NULL) {
            mc->in->end = NULL;
            ngx_http_memq_conn_close(mc);
            return;
        }

        mc->in->end = mc->in->start + NGX_HTTP_MEMQ_IN_SIZE;
    }

    if (node->nidle >= cl->keepalive) {
        /* the least recently used goes */
        q = ngx_queue_last(&node->idle);
        old = ngx_queue_data(q, ngx_http_memq_conn_t, queue);
        ngx_http_memq_conn_close(old);
    }

    sn = ngx_http_memq_shnode(node);
    (void) ngx_atomic_fetch_add(&sn->pool_busy, -1);
    (void) ngx_atomic_fetch_add(&sn->pool_idle, 1);

    mc->out = NULL;
    mc->pipelined = 0;
    mc->handler = NULL;
    mc->data = NULL;
    mc->owner_conn = NULL;
    mc->need = 0;
    mc->held = 0;
    mc->resumed = 0;
    mc->in->pos = mc->in->start;
    mc->in->last = mc->in->start;
    mc->pooled = 1;

    /* pooled only after a reply read in full, whoever read it */
    mc->spoke = 1;

    ngx_queue_insert_head(&node->idle, &mc->queue);
    node->nidle++;

    c->log = ngx_cycle->log;
    c->read->log = ngx_cycle->log;
    c->write->log = ngx_cycle->log;
    c->pool->log = ngx_cycle->log;
    c->idle = 1;
    c->read->handler = ngx_http_memq_conn_idle_handler;
    c->write->handler = ngx_http_memq_conn_idle_handler;

    ngx_add_timer(c->read, cl->keepalive_timeout);

    if (c->read->ready) {
        ngx_http_memq_conn_idle_handler(c->read);
    }
}


/*
 * A pooled connection: a node never speaks unasked, so any readiness means
 * eof or garbage; close.  A peek that says EAGAIN was a stale event.
 */
static void
ngx_http_memq_conn_idle_handler(ngx_event_t *ev)
{
    int                    n;
    char                   buf[1];
    ngx_connection_t      *c;
    ngx_http_memq_conn_t  *mc;

    c = ev->data;
    mc = c->data;

    if (ev->write) {
        return;
    }

    if (c->close || ev->timedout) {
        goto close;
    }

    n = recv(c->fd, buf, 1, MSG_PEEK);

    if (n == -1 && ngx_socket_errno == NGX_EAGAIN) {
        ev->ready = 0;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            goto close;
        }

        return;
    }

close:

    ngx_http_memq_conn_close(mc);
}


static void
ngx_http_memq_conn_handler(ngx_event_t *ev)
{
    ngx_connection_t      *c, *oc;
    ngx_http_memq_conn_t  *mc;

    c = ev->data;
    mc = c->data;
    oc = mc->owner_conn;

    if (c->close) {
        /*
         * worker_shutdown_timeout ran out and nginx closes every
         * connection: the owner is told as of a failure of this worker,
         * not of the node, so a pipe whose clients are gone does not hold
         * the worker until read_timeout
         */
        ngx_http_memq_shutdown_closed = 1;
        mc->local = 1;
        ngx_http_memq_conn_fail(mc, "worker shutdown timeout");

    } else if (ev->write) {
        ngx_http_memq_conn_write(mc);

    } else {
        ngx_http_memq_conn_read(mc);
    }

    ngx_http_memq_run_posted(oc);
}


/*
 * ngx_http_run_posted_requests() for a client connection after one of our
 * handlers ran.  That handler may have finalized the request: when the
 * connection was closed (destroyed) or went to keepalive (idle: c->data is
 * no longer a request) there is nothing to run and c->data must not be
 * read as a request.
 */
void
ngx_http_memq_run_posted(ngx_connection_t *c)
{
    if (c == NULL || c->destroyed || c->idle) {
        return;
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_memq_conn_write(ngx_http_memq_conn_t *mc)
{
    ssize_t            n;
    ngx_buf_t         *b;
    ngx_uint_t         progress;
    ngx_event_t       *wev;
    ngx_connection_t  *c;

    c = mc->pc.connection;
    wev = c->write;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_ERR, c->log, NGX_ETIMEDOUT,
                      "memq node %V timed out", &mc->node->addr);
        ngx_http_memq_conn_fail(mc, mc->connecting ? "connect timed out"
                                                   : "send timed out");
        return;
    }

    if (mc->connecting) {
        if (ngx_http_memq_conn_test_connect(mc) != NGX_OK) {
            ngx_http_memq_conn_fail(mc, "connect failed");
            return;
        }

        mc->connecting = 0;

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }
    }

    b = mc->out;

    if (b == NULL || mc->waiting) {
        /* connected, nothing to send yet */
        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_memq_conn_fail(mc, "write event failed");
        }

        return;
    }

    mc->log.action = "sending to memq node";
    progress = 0;

    while (b->pos < b->last) {
        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_AGAIN) {
            /* the send timer bounds a node that takes nothing: it starts
             * again whenever the node took some */
            if (progress || !wev->timer_set) {
                ngx_add_timer(wev, mc->node->cluster->read_timeout);
            }

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_memq_conn_fail(mc, "write event failed");
            }

            return;
        }

        if (n == NGX_ERROR) {
            /*
             * The node may have answered and closed before it read the
             * rest ("SERVER_ERROR too many connections" is said at
             * accept, see conn_limit()): what it said is read first, and
             * decides; a node that said nothing fails on the read
             * ("closed", "recv").
             */
            if (wev->timer_set) {
                ngx_del_timer(wev);
            }

            mc->waiting = 1;
            ngx_add_timer(c->read, mc->node->cluster->read_timeout);
            ngx_http_memq_conn_read(mc);
            return;
        }

        b->pos += n;
        progress = 1;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    mc->waiting = 1;
    mc->log.action = "reading from memq node";

    if (!(mc->pipelined && c->read->timer_set)) {
        ngx_add_timer(c->read, mc->reply_timeout);
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_memq_conn_fail(mc, "read event failed");
        return;
    }

    if (c->read->ready) {
        ngx_http_memq_conn_read(mc);
    }
}


static void
ngx_http_memq_conn_read(ngx_http_memq_conn_t *mc)
{
    ssize_t            n;
    ngx_buf_t         *b;
    ngx_event_t       *rev;
    ngx_connection_t  *c;

    c = mc->pc.connection;
    rev = c->read;
    b = mc->in;

    if (rev->timedout) {
        ngx_log_error(NGX_LOG_ERR, c->log, NGX_ETIMEDOUT,
                      "memq node %V timed out", &mc->node->addr);
        ngx_http_memq_conn_fail(mc, "read timed out");
        return;
    }

    if ((!mc->waiting && !mc->pipelined) || mc->held) {
        /* readable while we still send, or the owner holds the reply
         * back: look later (conn_resume() posts this event again).  A
         * pipelined connection reads the replies to the sets sent before
         * while later ones still go out: its read timer runs for them, so
         * a reply left unread behind a blocked write would time out */
        return;
    }

    if (mc->resumed) {
        /* bytes read before the hold come first */
        mc->resumed = 0;

        if (b->pos != b->last) {
            if (mc->handler(mc, NGX_OK) != NGX_OK) {
                return;
            }

            if (!mc->waiting || mc->held) {
                return;
            }
        }
    }

    for ( ;; ) {
        if (ngx_http_memq_conn_room(mc) != NGX_OK) {
            mc->local = 1;
            ngx_http_memq_conn_fail(mc, "out of memory");
            return;
        }

        n = c->recv(c, b->last, b->end - b->last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "memq node %V closed the connection",
                          &mc->node->addr);
            ngx_http_memq_conn_fail(mc, "connection closed by node");
            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_memq_conn_fail(mc, "recv failed");
            return;
        }

        b->last += n;

        /* more time for the rest of the reply; a pipe restarts its wait
         * at each whole reply instead (ngx_http_memq_pipe.c) */
        if (!mc->pipelined) {
            ngx_add_timer(rev, mc->node->cluster->read_timeout);
        }

        if (mc->handler(mc, NGX_OK) != NGX_OK) {
            return;
        }

        if (mc->held) {
            return;
        }

        if (!mc->waiting && !mc->pipelined) {
            /* the owner has the whole reply and keeps the connection */
            if (rev->timer_set) {
                ngx_del_timer(rev);
            }

            return;
        }

        if (!rev->ready) {
            break;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_memq_conn_fail(mc, "read event failed");
    }
}


/*
 * Makes room in the read buffer: compacts, and grows it when the owner
 * needs more contiguous bytes (mc->need) than it holds.
 */
static ngx_int_t
ngx_http_memq_conn_room(ngx_http_memq_conn_t *mc)
{
    size_t      size, len;
    u_char     *p;
    ngx_buf_t  *b;

    b = mc->in;
    len = b->last - b->pos;

    if (b->pos == b->last) {
        b->pos = b->start;
        b->last = b->start;
    }

    size = b->end - b->start;

    if (mc->need > size) {
        size = ngx_max(mc->need, size * 2);

        p = ngx_palloc(mc->pool, size);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, b->pos, len);

        /* the first buffer too: it is a large allocation of the pool */
        ngx_pfree(mc->pool, b->start);

        b->start = p;
        b->pos = p;
        b->last = p + len;
        b->end = p + size;

        return NGX_OK;
    }

    if (b->last == b->end || (size_t) (b->end - b->pos) < mc->need) {
        ngx_memmove(b->start, b->pos, len);
        b->pos = b->start;
        b->last = b->start + len;
    }

    return NGX_OK;
}


/* reports a failure to the owner, which closes the connection */
static void
ngx_http_memq_conn_fail(ngx_http_memq_conn_t *mc, const char *err)
{
    mc->err = err;
    mc->pc.connection->error = 1;

    if (mc->handler == NULL) {
        ngx_http_memq_conn_close(mc);
        return;
    }

    (void) mc->handler(mc, NGX_ERROR);
}


/* a connect that was in progress: NGX_ERROR, with mc->local set for a
 * shortage here, when it failed */
static ngx_int_t
ngx_http_memq_conn_test_connect(ngx_http_memq_conn_t *mc)
{
    int                err;
    socklen_t          len;
    ngx_connection_t  *c;

    c = mc->pc.connection;

#if (NGX_HAVE_KQUEUE)
    if (ngx_event_flags & NGX_USE_KQUEUE_EVENT) {
        if (c->write->pending_eof || c->read->pending_eof) {
            return NGX_ERROR;
        }

        return NGX_OK;
    }
#endif

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        mc->local = ngx_http_memq_conn_error(c->log, mc->node, err);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Logs a failed connect() to node and says whether its error is a shortage
 * of this host (1), which must not mark the node (DESIGN §2), or the
 * node's failure (0: refused, unreachable, reset, timed out, and whatever
 * else is not listed here).  A shortage: no local port left for the node's
 * address (EADDRNOTAVAIL; EADDRINUSE), the kernel's buffers or memory
 * (ENOBUFS, ENOMEM; EAGAIN, which Linux says for a TCP connect when its
 * route cache is full: nodes are never unix sockets, where it would mean
 * a full listen queue), descriptors (EMFILE, ENFILE: from socket(), listed
 * for completeness).
 */
static ngx_uint_t
ngx_http_memq_conn_error(ngx_log_t *log, ngx_http_memq_node_t *node,
    ngx_err_t err)
{
    switch (err) {

    case EADDRNOTAVAIL:
    case EADDRINUSE:
    case EAGAIN:
    case ENOBUFS:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
        ngx_log_error(NGX_LOG_WARN, log, err,
                      "connect() to memq node %V failed, a shortage of "
                      "this host: the node is not marked", &node->addr);
        return 1;

    default:
        ngx_log_error(NGX_LOG_ERR, log, err,
                      "connect() to memq node %V failed", &node->addr);
        return 0;
    }
}


/*
 * Picks a node among the usable nodes of the cluster, leaving out the
 * nskip nodes in skip, by smooth weighted round robin among the nodes
 * whose replies owed to this worker's publish pipes, per unit of weight,
 * are at most one above the lowest.  Idle, or with every node about as
 * quick, that is plain smooth weighted round robin (a node of weight 100
 * keeps its share until it owes 100 replies more than a node of weight
 * 1).  A node whose disk stalls collects owed sets and drops out until it
 * catches up, so single POSTs go to the others meanwhile instead of every
 * client ending up waiting on it (one node with 50 ms fsyncs among three:
 * 1,410 POSTs/s by round robin, 36,700 this way).  NULL when none is
 * left.
 *
 * Runs (piped: a single message that may share a publish pipe): a first
 * try (nskip 0) goes to the node round robin chose for such a message
 * last while the worker's clock (ngx_current_msec,
 * updated when the event loop wakes) still shows the same millisecond,
 * that node owes at most
 * NGX_HTTP_MEMQ_RUN_SLACK replies a unit of weight above the least, and
 * its replies lately (a moving average of its pipes' reply times) came
 * at most NGX_HTTP_MEMQ_RUN_LAG ms later than the quickest node's (of
 * the nodes that answered one: a node never reached is not the quickest,
 * which would keep every node from runs).
 * Under load the POSTs of a millisecond then cost one node write a pass
 * of the event loop and wake one node, not every node: a node reads a
 * dozen sets at a time instead of about four, and the nodes' CPU a POST
 * falls by half or more (6.4-8.0 against 2.6-3.3 us with three nodes,
 * BENCHMARKS.md).  Round robin spreads the runs, so over
 * time the shares are still the weights', and POSTs a millisecond or
 * more apart (light traffic) are plain smooth round robin.  A node whose
 * disk stalls gets no runs: each time it caught up, a whole millisecond
 * of clients would wait on it (one node with 50 ms fsyncs among three:
 * 4-9k POSTs/s with runs to it, 38-39k without).  A batch, or a message
 * too big for a pipe, neither goes on with a run nor starts one: it has
 * a connection of its own, so a run saves it nothing, and it is neither
 * owed nor timed, so nothing would bound the run.
 */
static ngx_uint_t
ngx_http_memq_node_skipped(ngx_http_memq_node_t *node,
    ngx_http_memq_node_t **skip, ngx_uint_t nskip)
{
    ngx_uint_t  j;

    for (j = 0; j < nskip; j++) {
        if (skip[j] == node) {
            return 1;
        }
    }

    return !ngx_http_memq_node_usable(node);
}


ngx_http_memq_node_t *
ngx_http_memq_node_next(ngx_http_memq_cluster_t *cl,
    ngx_http_memq_node_t **skip, ngx_uint_t nskip, ngx_uint_t piped)
{
    uint64_t                ok;
    ngx_int_t               total;
    ngx_uint_t              i, run_ok;
    ngx_msec_t              quick;
    ngx_http_memq_node_t  **np, *node, *best, *least;

    np = cl->nodes.elts;
    least = NULL;
    quick = NGX_MAX_INT32_VALUE;
    run_ok = 0;

    /* each node asked once (the shared zone's lock): ok has a bit a
     * usable node; the table holds at most NGX_HTTP_MEMQ_MAX_NODES */
#if (NGX_HTTP_MEMQ_MAX_NODES > 64)
#error "node_next() keeps a node a bit of a uint64_t"
#endif
    ok = 0;

    for (i = 0; i < cl->nodes.nelts; i++) {
        node = np[i];

        if (ngx_http_memq_node_skipped(node, skip, nskip)) {
            continue;
        }

        ok |= (uint64_t) 1 << i;

        if (node == cl->run_node) {
            run_ok = 1;
        }

        /* a node with no reply yet is not the quickest */
        if (node->replied) {
            quick = ngx_min(quick, node->reply_ms8);
        }

        if (least == NULL
            || node->owed * (ngx_uint_t) least->weight
               < least->owed * (ngx_uint_t) node->weight)
        {
            least = node;
        }
    }

    node = cl->run_node;

    if (piped && nskip == 0 && node != NULL && least != NULL
        && cl->run_msec == ngx_current_msec
        && node->reply_ms8 <= quick + NGX_HTTP_MEMQ_RUN_LAG * 8
        && run_ok
        && node->owed * (ngx_uint_t) least->weight
           <= (least->owed + NGX_HTTP_MEMQ_RUN_SLACK
                             * (ngx_uint_t) least->weight)
              * (ngx_uint_t) node->weight)
    {
        return node;
    }

    best = NULL;
    total = 0;

    for (i = 0; least != NULL && i < cl->nodes.nelts; i++) {
        node = np[i];

        /* owed / weight at most one above the least's */
        if (node->owed * (ngx_uint_t) least->weight
            > (least->owed + (ngx_uint_t) least->weight)
              * (ngx_uint_t) node->weight
            || !(ok & ((uint64_t) 1 << i)))
        {
            continue;
        }

        node->current_weight += node->weight;
        total += node->weight;

        if (best == NULL || node->current_weight > best->current_weight) {
            best = node;
        }
    }

    if (best) {
        best->current_weight -= total;
    }

    if (piped) {
        cl->run_node = best;
        cl->run_msec = ngx_current_msec;
    }

    return best;
}
