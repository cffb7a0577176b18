/*
 * ngx_http_memq_publish.c: POST /mq?topic=Q stores the body as one message,
 * or, with Content-Type application/x-ndjson, every non-blank line as one
 * message, pipelined to one node.
 *
 * The key is validated before the body is read, so a bad key never reaches
 * a node.  Messages are found in the body as they are sent: nothing is
 * allocated per message.  "set" commands go out in windows of at most
 * NGX_HTTP_MEMQ_PUB_WINDOW messages and NGX_HTTP_MEMQ_PUB_BYTES bytes (one
 * bigger message goes alone); every message sent and not yet answered has
 * an entry in a ring of that size, and a new window is built when half of
 * the ring is answered, while the node's replies are read.  Memory per
 * publish is the body (held once, as nginx read it), the ring and one
 * window, whatever the number of lines.
 *
 *   SEND ──window sent──► replies read ──half answered──► SEND ...
 *     │                        │
 *     │                        ├─ STORED: the message is stored (exactly)
 *     │                        ├─ queue full / too many connections (the
 *     │                        │    connection's first line): refused
 *     │                        │    (exactly), kept for the next node
 *     │                        └─ object too large: 413 once all answered
 *     └─ a refusal stops new windows to this node (DRAIN) until every
 *        message sent to it is answered; then the refused and the unsent
 *        ones go to the next node (NGX_HTTP_MEMQ_PUBLISH_TRIES nodes).
 *
 * A node failure (connect refused or timed out before anything was sent)
 * tries the next node.  A failure after sets were sent ends the publish:
 * the messages in flight may or may not be stored, and sending them again
 * elsewhere could store them twice, so the answer says exactly which lines
 * were stored and which are unknown, and nothing is sent to another node.
 *
 *   201 {"queued":N,"node":"host:port"}   every message stored
 *   400 bad or missing key, empty body
 *   413 a message too large                 507 queue full (every try)
 *   503 no node took it, or a node failed part-way
 * An error answer after some lines were stored carries "queued":N and
 * "stored":[[first,last],...], 1-based numbers of messages (non-blank
 * lines) in the body; "unknown":[first,last] when a node failed with
 * messages in flight.
 *
 * A single message (no ndjson) is built the same way, as a window of one,
 * and handed to a publish pipe of the node (ngx_http_memq_pipe.c), whose
 * connection it shares with the other single POSTs of the worker; the
 * pipe tells ngx_http_memq_publish_piped() its reply, or that the pipe
 * failed (then it goes to the next node, as when a connection of its own
 * fails before the reply).  When no pipe has room it takes a connection
 * of its own as above.
 */

#include "ngx_http_memq_module.h"

#include <zlib.h>


#define NGX_HTTP_MEMQ_PUB_WINDOW     1024          /* messages in flight */
#define NGX_HTTP_MEMQ_PUB_BYTES      (256 * 1024)  /* window buffer */
#define NGX_HTTP_MEMQ_PUB_RANGES     64            /* stored ranges told */
#define NGX_HTTP_MEMQ_PUB_HDR        (sizeof("set  4294967295 0 \r\n\r\n") \
                                      + NGX_SIZE_T_LEN + 64)
                                    /* a message's bytes beyond payload and
                                       key, deflate's growth included */
#define NGX_HTTP_MEMQ_QUEUE_FULL     "queue full"
#define NGX_HTTP_MEMQ_TOO_LARGE      "object too large"


/* a message of the body: where it is and what the client numbers it */
typedef struct {
    ngx_uint_t                  idx;        /* 0-based message number */
    size_t                      off;        /* payload start in the body */
    size_t                      len;        /* payload bytes */
} ngx_http_memq_pub_msg_t;


/* stored messages [start, end), kept sorted and merged */
typedef struct {
    ngx_uint_t                  start;
    ngx_uint_t                  end;
} ngx_http_memq_pub_range_t;


typedef struct {
    ngx_http_memq_rstat_t       stat;       /* first: read by variables */
    ngx_http_request_t         *request;
    ngx_http_memq_loc_conf_t   *conf;       /* (ref) */
    ngx_str_t                   key;
    ngx_str_t                   body;       /* (ref) nginx's or our copy */
    ngx_uint_t                  ndjson;
    size_t                      next;       /* body offset of the next
                                               unsent line */
    ngx_uint_t                  next_idx;   /* its message number */
    ngx_uint_t                  more;       /* body has unsent messages */

    ngx_http_memq_pub_msg_t    *ring;       /* sent, not answered */
    ngx_uint_t                  ring_size;  /* NGX_HTTP_MEMQ_PUB_WINDOW,
                                               or fewer for a small body */
    ngx_uint_t                  head;       /* oldest in the ring */
    ngx_uint_t                  inflight;

    ngx_http_memq_pub_msg_t    *retry;      /* refused: for the next node */
    ngx_uint_t                  nretry;
    ngx_http_memq_pub_msg_t    *again;      /* to send before the body's
                                               next: refused elsewhere */
    ngx_http_memq_pub_msg_t    *again2;     /* the next again, built */
    ngx_uint_t                  nagain;     /* at most 2 windows */
    ngx_uint_t                  again_pos;  /* sent of them */

    size_t                      node_next;  /* the body cursor when this */
    ngx_uint_t                  node_idx;   /* node got its first window */
    ngx_uint_t                  node_more;
    ngx_uint_t                  windows;    /* built for this node */
    ngx_uint_t                  replies;    /* read from this node */

    ngx_buf_t                   win;        /* the window being sent */
    u_char                     *zbuf;       /* deflate scratch */
    size_t                      zcap;

    ngx_array_t                 stored;     /* ngx_http_memq_pub_range_t */
    ngx_uint_t                  nstored;
    ngx_uint_t                  nmsgs;      /* messages seen so far */

    ngx_http_memq_node_t       *tried[NGX_HTTP_MEMQ_PUBLISH_TRIES];
    ngx_uint_t                  ntried;
    ngx_http_memq_conn_t       *mc;
    ngx_http_memq_pipe_entry_t *pe;         /* waiting in a publish pipe */
    ngx_http_memq_node_t       *last_node;  /* (ref) stored the last */
    const char                 *last_error;
    ngx_uint_t                  refusal;    /* 0, 507 or 503 */
    unsigned                    draining:1; /* no new window to this node */
    unsigned                    too_large:1;
    unsigned                    done:1;
} ngx_http_memq_pub_ctx_t;


static void ngx_http_memq_publish_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_memq_publish_next_msg(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_pub_msg_t *m);
static ngx_int_t ngx_http_memq_publish_fill(ngx_http_memq_pub_ctx_t *ctx);
static ngx_int_t ngx_http_memq_publish_add(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_pub_msg_t *m);
static void ngx_http_memq_publish_try(ngx_http_memq_pub_ctx_t *ctx);
static ngx_int_t ngx_http_memq_publish_pipe(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_node_t *node);
static void ngx_http_memq_publish_rewind(ngx_http_memq_pub_ctx_t *ctx);
static ngx_int_t ngx_http_memq_publish_reply(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static ngx_int_t ngx_http_memq_publish_answered(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_conn_t *mc);
static ngx_int_t ngx_http_memq_publish_stored(ngx_http_memq_pub_ctx_t *ctx,
    ngx_uint_t idx);
static void ngx_http_memq_publish_fail(ngx_http_memq_pub_ctx_t *ctx,
    const char *reason);
static void ngx_http_memq_publish_done(ngx_http_memq_pub_ctx_t *ctx);
static void ngx_http_memq_publish_error(ngx_http_memq_pub_ctx_t *ctx,
    ngx_uint_t status, const char *reason, ngx_uint_t unknown);
static void ngx_http_memq_publish_cleanup(void *data);


/* the content handler for POST */
ngx_int_t
ngx_http_memq_publish(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_cleanup_t        *cln;
    ngx_http_memq_pub_ctx_t   *ctx;
    ngx_http_memq_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_memq_pub_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->conf = mlcf;

    ngx_http_set_ctx(r, ctx, ngx_http_memq_module);

    rc = ngx_http_memq_get_key(r, mlcf, &ctx->key);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        /* answered before the body is read: nothing reaches a node */
        ctx->done = 1;
        r->main->count++;
        ngx_http_memq_json_error(r, NGX_HTTP_BAD_REQUEST,
                                 ctx->key.len ? "bad key" : "missing key");
        return NGX_DONE;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_memq_publish_cleanup;
    cln->data = ctx;

    rc = ngx_http_read_client_request_body(r, ngx_http_memq_publish_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* the whole body is here: find the first message and start sending */
static void
ngx_http_memq_publish_body(ngx_http_request_t *r)
{
    u_char                   *p, *last;
    size_t                    size;
    ngx_str_t                *ct;
    ngx_uint_t                lines;
    ngx_http_memq_pub_msg_t   m;
    ngx_http_memq_pub_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    if (ngx_http_memq_body_bytes(r, &ctx->body) != NGX_OK) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (r->headers_in.content_type) {
        ct = &r->headers_in.content_type->value;

        if (ct->len >= sizeof("application/x-ndjson") - 1
            && ngx_strncasecmp(ct->data, (u_char *) "application/x-ndjson",
                               sizeof("application/x-ndjson") - 1) == 0)
        {
            ctx->ndjson = 1;
        }
    }

    ctx->more = (ctx->body.len > 0);

    ngx_http_memq_etcd_seed(ctx->conf->cluster, r->connection->log);

    /* a body without any message is the client's mistake: say so before
     * anything is sent */
    if (ngx_http_memq_publish_next_msg(ctx, &m) != NGX_OK) {
        ngx_http_memq_publish_error(ctx, NGX_HTTP_BAD_REQUEST, "empty body",
                                    0);
        return;
    }

    ctx->next = 0;
    ctx->next_idx = 0;
    ctx->more = 1;
    ctx->nmsgs = 0;

    /*
     * A small body gets a ring and a window of its size: a single message
     * must not cost a 256 KiB allocation.  Upper bounds: one message per
     * line, and per message its "set" line, CRLF and what deflate may add.
     */
    lines = 1;

    if (ctx->ndjson) {
        for (p = ctx->body.data, last = p + ctx->body.len;
             p < last && lines < NGX_HTTP_MEMQ_PUB_WINDOW;
             p++)
        {
            p = ngx_strlchr(p, last, '\n');
            if (p == NULL) {
                break;
            }

            lines++;
        }
    }

    ctx->ring_size = lines;
    size = ctx->body.len + lines * (ctx->key.len + NGX_HTTP_MEMQ_PUB_HDR);
    size = ngx_min(size, NGX_HTTP_MEMQ_PUB_BYTES);

    ctx->ring = ngx_palloc(r->pool, 2 * ctx->ring_size
                                    * sizeof(ngx_http_memq_pub_msg_t));
    ctx->win.start = ngx_palloc(r->pool, size);

    if (ctx->ring == NULL || ctx->win.start == NULL
        || ngx_array_init(&ctx->stored, r->pool, 4,
                          sizeof(ngx_http_memq_pub_range_t))
           != NGX_OK)
    {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->retry = ctx->ring + ctx->ring_size;
    ctx->win.end = ctx->win.start + size;
    ctx->win.pos = ctx->win.start;
    ctx->win.last = ctx->win.start;
    ctx->win.temporary = 1;

    ngx_http_memq_publish_try(ctx);
}


/*
 * The request body as one piece of memory: nginx's own buffer when the
 * body is in one, else a copy (read back when nginx wrote it to a file).
 * Empty buffers are skipped (their pointers may be NULL).  Also used by
 * the op=ack requests (ngx_http_memq_ack.c).
 */
ngx_int_t
ngx_http_memq_body_bytes(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len, n;
    ssize_t       rd;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;
    ngx_uint_t    bufs;

    body->len = 0;
    body->data = (u_char *) "";

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;
    bufs = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        n = b->in_file ? (size_t) (b->file_last - b->file_pos)
                       : (size_t) (b->last - b->pos);

        if (n) {
            len += n;
            bufs++;
        }
    }

    if (len == 0) {
        return NGX_OK;
    }

    if (bufs == 1) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (!b->in_file && b->last != b->pos) {
                body->data = b->pos;
                body->len = len;
                return NGX_OK;
            }
        }
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = len;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = (size_t) (b->file_last - b->file_pos);

            if (n == 0) {
                continue;
            }

            rd = ngx_read_file(b->file, p, n, b->file_pos);
            if (rd < 0 || (size_t) rd != n) {
                return NGX_ERROR;
            }

            p += n;

        } else if (b->last != b->pos) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }
    }

    return NGX_OK;
}


/*
 * The next message of the body after ctx->next (blank ndjson lines are
 * skipped, a CR before LF dropped).  NGX_DECLINED when none is left.
 */
static ngx_int_t
ngx_http_memq_publish_next_msg(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_pub_msg_t *m)
{
    u_char  *p, *s, *e, *eol, *last;

    if (!ctx->more) {
        return NGX_DECLINED;
    }

    if (!ctx->ndjson) {
        ctx->more = 0;
        m->idx = ctx->next_idx++;
        m->off = 0;
        m->len = ctx->body.len;
        ctx->nmsgs = ctx->next_idx;
        return NGX_OK;
    }

    last = ctx->body.data + ctx->body.len;

    for (p = ctx->body.data + ctx->next; p < last; p = eol + 1) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            eol = last;
        }

        for (s = p; s < eol && (*s == ' ' || *s == '\t' || *s == '\r'); s++)
        { /* void */ }

        if (s == eol) {
            if (eol == last) {
                break;
            }

            continue;
        }

        e = eol;
        if (e > p && e[-1] == '\r') {
            e--;
        }

        m->idx = ctx->next_idx++;
        m->off = p - ctx->body.data;
        m->len = e - p;

        ctx->next = (eol == last) ? ctx->body.len
                                  : (size_t) (eol + 1 - ctx->body.data);
        ctx->more = (ctx->next < ctx->body.len);
        ctx->nmsgs = ctx->next_idx;

        return NGX_OK;
    }

    ctx->next = ctx->body.len;
    ctx->more = 0;

    return NGX_DECLINED;
}


/*
 * Builds the next window in ctx->win: the messages refused by the node
 * before first, then new ones from the body, while the ring has room and
 * the window its bytes.  Returns the number of messages added (0: nothing
 * left to send), or NGX_ERROR.
 */
static ngx_int_t
ngx_http_memq_publish_fill(ngx_http_memq_pub_ctx_t *ctx)
{
    size_t                    off;
    ngx_int_t                 rc, n;
    ngx_uint_t                idx, more, again;
    ngx_http_memq_pub_msg_t   m;

    ctx->win.pos = ctx->win.start;
    ctx->win.last = ctx->win.start;
    n = 0;

    while (ctx->inflight < ctx->ring_size) {

        again = (ctx->again_pos < ctx->nagain);
        off = ctx->next;
        idx = ctx->next_idx;
        more = ctx->more;

        if (again) {
            m = ctx->again[ctx->again_pos];

        } else if (ngx_http_memq_publish_next_msg(ctx, &m) != NGX_OK) {
            break;
        }

        rc = ngx_http_memq_publish_add(ctx, &m);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_DECLINED) {
            /* the window is full: this message opens the next one */
            ctx->next = off;
            ctx->next_idx = idx;
            ctx->more = more;
            break;
        }

        if (again) {
            ctx->again_pos++;
        }

        n++;
    }

    if (n) {
        ctx->windows++;
    }

    return n;
}


/*
 * Appends "set" for message m to the window (deflated when big enough)
 * and puts m in the ring.  NGX_DECLINED when the window has no room left
 * for it (an empty window grows to hold one big message).
 */
static ngx_int_t
ngx_http_memq_publish_add(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_pub_msg_t *m)
{
    u_char              *data, *p;
    size_t               len, need, size;
    uLongf               zlen;
    ngx_buf_t           *w;
    ngx_uint_t           flags, slot;
    ngx_http_request_t  *r;

    r = ctx->request;
    w = &ctx->win;
    data = ctx->body.data + m->off;
    len = m->len;
    flags = 0;

    if (ctx->conf->compress_min_size && len >= ctx->conf->compress_min_size)
    {
        zlen = compressBound(len);

        if (zlen > ctx->zcap) {
            if (ctx->zbuf) {
                ngx_pfree(r->pool, ctx->zbuf);
            }

            ctx->zbuf = ngx_pnalloc(r->pool, zlen);
            if (ctx->zbuf == NULL) {
                ctx->zcap = 0;
                return NGX_ERROR;
            }

            ctx->zcap = zlen;
        }

        if (compress2(ctx->zbuf, &zlen, data, len, Z_DEFAULT_COMPRESSION)
            != Z_OK)
        {
            return NGX_ERROR;
        }

        data = ctx->zbuf;
        len = zlen;
        flags = ctx->conf->compress_flag;
    }

    need = sizeof("set  4294967295 0 \r\n\r\n") - 1 + ctx->key.len
           + NGX_SIZE_T_LEN + len;

    if ((size_t) (w->end - w->last) < need) {
        if (w->last != w->start) {
            return NGX_DECLINED;
        }

        /* one message bigger than a window: a buffer of its own size */
        size = ngx_max(need, NGX_HTTP_MEMQ_PUB_BYTES);

        ngx_pfree(r->pool, w->start);

        w->start = ngx_palloc(r->pool, size);
        if (w->start == NULL) {
            return NGX_ERROR;
        }

        w->end = w->start + size;
        w->pos = w->start;
        w->last = w->start;
    }

    p = ngx_sprintf(w->last, "set %V %ui 0 %uz\r\n", &ctx->key, flags, len);
    p = ngx_cpymem(p, data, len);
    *p++ = '\r';
    *p++ = '\n';
    w->last = p;

    slot = (ctx->head + ctx->inflight) % ctx->ring_size;
    ctx->ring[slot] = *m;
    ctx->inflight++;

    return NGX_OK;
}


/* sends what is not stored yet to the next node, or answers */
static void
ngx_http_memq_publish_try(ngx_http_memq_pub_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_uint_t                level, piped;
    ngx_http_request_t       *r;
    ngx_http_memq_node_t     *node;
    ngx_http_memq_pub_msg_t  *swap;
    ngx_http_memq_cluster_t  *cl;

    r = ctx->request;
    cl = ctx->conf->cluster;

    /* a single message may share a publish pipe (then it may go on with
     * a run, see ngx_http_memq_node_next()); a batch, or one too big for a
     * pipe, takes a connection of its own */
    piped = !ctx->ndjson && cl->publish_pipes
            && (ctx->body.len <= NGX_HTTP_MEMQ_PIPE_MSG
                || ctx->conf->compress_min_size);

    /* the refused ones go first, then those refused before that were not
     * sent yet: at most one window each (a node's first window takes
     * again's first ones), so again never holds more than two */
    if (ctx->nretry) {
        if (ctx->again == NULL) {
            ctx->again = ngx_palloc(r->pool, 4 * ctx->ring_size
                                            * sizeof(ngx_http_memq_pub_msg_t));
            if (ctx->again == NULL) {
                ngx_http_memq_publish_error(ctx,
                                            NGX_HTTP_INTERNAL_SERVER_ERROR,
                                            "out of memory", 0);
                return;
            }

            ctx->again2 = ctx->again + 2 * ctx->ring_size;
        }

        ngx_memcpy(ctx->again2, ctx->retry,
                   ctx->nretry * sizeof(ngx_http_memq_pub_msg_t));
        ngx_memcpy(ctx->again2 + ctx->nretry, ctx->again + ctx->again_pos,
                   (ctx->nagain - ctx->again_pos)
                   * sizeof(ngx_http_memq_pub_msg_t));

        ctx->nagain = ctx->nretry + ctx->nagain - ctx->again_pos;
        ctx->again_pos = 0;
        ctx->nretry = 0;

        swap = ctx->again;
        ctx->again = ctx->again2;
        ctx->again2 = swap;
    }

    ctx->draining = 0;
    ctx->windows = 0;
    ctx->replies = 0;
    ctx->node_next = ctx->next;
    ctx->node_idx = ctx->next_idx;
    ctx->node_more = ctx->more;

    for ( ;; ) {
        if (ctx->ntried >= NGX_HTTP_MEMQ_PUBLISH_TRIES) {
            break;
        }

        node = ngx_http_memq_node_next(cl, ctx->tried, ctx->ntried, piped);
        if (node == NULL) {
            break;
        }

        ctx->tried[ctx->ntried++] = node;

        /* when no pipe has room it takes a connection of its own */
        rc = piped ? ngx_http_memq_publish_pipe(ctx, node) : NGX_DECLINED;

        if (rc == NGX_OK) {
            return;
        }

        if (rc == NGX_ABORT) {
            ngx_http_memq_publish_error(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "out of memory", 0);
            return;
        }

        if (rc == NGX_DECLINED) {
            rc = ngx_http_memq_conn_get(node, r->connection->log, &ctx->mc);
        }

        if (rc == NGX_BUSY) {
            /* this worker is short of connections or memory: no other
             * node would do better, and none is to blame */
            ctx->last_error = "no free connection in this worker";
            ctx->refusal = NGX_HTTP_SERVICE_UNAVAILABLE;
            break;
        }

        if (rc == NGX_ERROR) {
            ctx->stat.nodes_failed++;
            ctx->last_error = "connect failed";
            ngx_http_memq_node_failed(node, r->connection->log,
                                      "connect failed");
            continue;
        }

        ctx->mc->handler = ngx_http_memq_publish_reply;
        ctx->mc->data = ctx;
        ctx->mc->owner_conn = r->connection;

        /* a single message's window may be built already: a pipe had no
         * room for it */
        if (ctx->inflight == 0 && ngx_http_memq_publish_fill(ctx) <= 0) {
            ngx_http_memq_conn_close(ctx->mc);
            ctx->mc = NULL;
            ngx_http_memq_publish_error(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "out of memory", 0);
            return;
        }

        ngx_http_memq_conn_send(ctx->mc, &ctx->win, cl->read_timeout);
        return;
    }

    /* a full queue is the client's business, a shortage is not a fault */
    if (ctx->refusal == NGX_HTTP_INSUFFICIENT_STORAGE) {
        level = NGX_LOG_INFO;

    } else {
        level = ctx->refusal ? NGX_LOG_WARN : NGX_LOG_ERR;
    }

    ngx_log_error(level, r->connection->log, 0,
                  "memq cluster \"%V\": no node took the message (%s), "
                  "%ui stored", &cl->name,
                  ctx->last_error ? ctx->last_error : "no healthy node",
                  ctx->nstored);

    if (ctx->refusal == NGX_HTTP_INSUFFICIENT_STORAGE) {
        ngx_http_memq_publish_error(ctx, NGX_HTTP_INSUFFICIENT_STORAGE,
                                    "queue full", 0);
        return;
    }

    ngx_http_memq_publish_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "no node took the message", 0);
}


/*
 * A single message's set in a publish pipe of node (the body's message,
 * built as a window of one, once: it stays built for the next node or a
 * connection of its own while this publish_try() runs, so a big message
 * is not deflated again).  NGX_OK: queued, and
 * ngx_http_memq_publish_piped() answers; NGX_DECLINED: no pipe has room;
 * NGX_ERROR, NGX_BUSY: as ngx_http_memq_conn_get(); NGX_ABORT: out of
 * memory.
 */
static ngx_int_t
ngx_http_memq_publish_pipe(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_node_t *node)
{
    if (ctx->inflight == 0 && ngx_http_memq_publish_fill(ctx) <= 0) {
        return NGX_ABORT;
    }

    return ngx_http_memq_pipe_send(node, ctx->win.pos,
                                   ctx->win.last - ctx->win.pos,
                                   ctx->ring[ctx->head].len, ctx, &ctx->pe);
}


/*
 * The reply to a single message's set in a publish pipe, or (reply NULL)
 * the end of the pipe: rc NGX_ERROR when its connection failed (the pipe
 * marked the node), NGX_DECLINED when the node refused the connection.
 * Either way the message goes to the next node, as when a connection of
 * its own fails before any reply.
 */
void
ngx_http_memq_publish_piped(void *owner, ngx_http_memq_node_t *node,
    ngx_int_t rc, mq_reply_t *reply, const char *reason)
{
    ngx_uint_t                status;
    ngx_connection_t         *c;
    ngx_http_memq_pub_ctx_t  *ctx;

    ctx = owner;
    ctx->pe = NULL;
    c = ctx->request->connection;

    status = reply ? ngx_http_memq_set_refused(reply) : 0;

    if (reply && reply->type == MQ_REPLY_STORED) {
        ctx->last_node = node;

        if (ngx_http_memq_publish_stored(ctx, ctx->ring[ctx->head].idx)
            != NGX_OK)
        {
            ngx_http_memq_publish_error(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "out of memory", 0);

        } else {
            ctx->inflight = 0;
            ngx_http_memq_publish_done(ctx);
        }

    } else if (reply == NULL || status == NGX_HTTP_INSUFFICIENT_STORAGE) {
        if (rc == NGX_ERROR) {
            ctx->stat.nodes_failed++;

        } else if (status == NGX_HTTP_INSUFFICIENT_STORAGE
                   || ctx->refusal == 0)
        {
            ctx->refusal = status ? status : NGX_HTTP_SERVICE_UNAVAILABLE;
        }

        ctx->last_error = reason ? reason : NGX_HTTP_MEMQ_QUEUE_FULL;

        ngx_http_memq_publish_rewind(ctx);
        ngx_http_memq_publish_try(ctx);

    } else if (status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        ngx_http_memq_publish_error(ctx, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "message too large", 0);

    } else {
        /* as on a connection of its own: the node is at fault (the pipe
         * logged and marked it), and the message may or may not be
         * stored */
        ctx->stat.nodes_failed++;
        ctx->last_error = (reply->type == MQ_REPLY_SERVER_ERROR)
                          ? "server error" : "unexpected reply";
        ngx_http_memq_publish_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                    "node failed", 1);
    }

    /* called from the pipe's event handler, not the client's */
    ngx_http_memq_run_posted(c);
}


/*
 * What a refused set is: NGX_HTTP_INSUFFICIENT_STORAGE (queue full, the
 * node is fine), NGX_HTTP_REQUEST_ENTITY_TOO_LARGE (the client's message),
 * 0 for any other reply ("too many connections" is the connection's, see
 * ngx_http_memq_conn_limit()).
 */
ngx_uint_t
ngx_http_memq_set_refused(mq_reply_t *reply)
{
    if (reply->type != MQ_REPLY_SERVER_ERROR) {
        return 0;
    }

    if (reply->text_len == sizeof(NGX_HTTP_MEMQ_QUEUE_FULL) - 1
        && ngx_strncmp(reply->text, NGX_HTTP_MEMQ_QUEUE_FULL,
                       reply->text_len) == 0)
    {
        return NGX_HTTP_INSUFFICIENT_STORAGE;
    }

    if (reply->text_len >= sizeof(NGX_HTTP_MEMQ_TOO_LARGE) - 1
        && ngx_strncmp(reply->text, NGX_HTTP_MEMQ_TOO_LARGE,
                       sizeof(NGX_HTTP_MEMQ_TOO_LARGE) - 1) == 0)
    {
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    return 0;
}


/* the message goes to another node as if this one never had it */
static void
ngx_http_memq_publish_rewind(ngx_http_memq_pub_ctx_t *ctx)
{
    ctx->inflight = 0;
    ctx->head = 0;
    ctx->again_pos = 0;
    ctx->next = ctx->node_next;
    ctx->next_idx = ctx->node_idx;
    ctx->more = ctx->node_more;
}


/*
 * Replies to the pipelined sets: one line each, in order, for the oldest
 * message in the ring.  Reads while windows are still being built.
 */
static ngx_int_t
ngx_http_memq_publish_reply(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    ngx_int_t                 prc;
    ngx_buf_t                *b;
    mq_reply_t                reply;
    const char               *err;
    ngx_http_memq_pub_msg_t  *m;
    ngx_http_memq_shnode_t   *shn;
    ngx_http_memq_pub_ctx_t  *ctx;

    ctx = mc->data;

    if (rc == NGX_ERROR) {
        ngx_http_memq_publish_fail(ctx, mc->err);
        return NGX_DONE;
    }

    b = mc->in;
    shn = ngx_http_memq_shnode(mc->node);

    while (ctx->inflight) {
        prc = mq_proto_parse_reply((const char *) b->pos, b->last - b->pos,
                                   0, &reply, &err);

        if (prc == MQ_AGAIN) {
            return NGX_OK;
        }

        if (prc == MQ_ERROR) {
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V sent a malformed reply: %s",
                          &mc->node->addr, err);
            ngx_http_memq_publish_fail(ctx, err);
            return NGX_DONE;
        }

        m = &ctx->ring[ctx->head];
        ctx->replies++;
        prc = ngx_http_memq_conn_limit(mc, &reply);

        if (reply.type == MQ_REPLY_STORED) {
            b->pos += reply.consumed;

            (void) ngx_atomic_fetch_add(&shn->msgs_in, 1);
            (void) ngx_atomic_fetch_add(&shn->bytes_in, m->len);

            if (ngx_http_memq_publish_stored(ctx, m->idx) != NGX_OK) {
                ngx_http_memq_publish_fail(ctx, "out of memory");
                return NGX_DONE;
            }

            ctx->last_node = mc->node;

        } else if (prc == NGX_OK) {
            /* said once, before the node read anything, and it closes:
             * every message in flight is refused (said after a reply, it
             * is an unexpected reply, below) */
            ngx_log_error(NGX_LOG_WARN, &mc->log, 0,
                          "memq node %V: " NGX_HTTP_MEMQ_CONN_LIMIT,
                          &mc->node->addr);

            while (ctx->inflight) {
                ctx->retry[ctx->nretry++] = ctx->ring[ctx->head];
                ctx->head = (ctx->head + 1) % ctx->ring_size;
                ctx->inflight--;
            }

            ctx->last_error = NGX_HTTP_MEMQ_CONN_LIMIT;

            if (ctx->refusal == 0) {
                ctx->refusal = NGX_HTTP_SERVICE_UNAVAILABLE;
            }

            ngx_http_memq_conn_close(mc);
            ctx->mc = NULL;
            ngx_http_memq_publish_try(ctx);
            return NGX_DONE;

        } else if (ngx_http_memq_set_refused(&reply)
                   == NGX_HTTP_INSUFFICIENT_STORAGE)
        {
            /* the node is fine; this message was not stored, and no new
             * window goes to this node */
            b->pos += reply.consumed;
            ctx->draining = 1;
            ctx->retry[ctx->nretry++] = *m;
            ctx->refusal = NGX_HTTP_INSUFFICIENT_STORAGE;
            ctx->last_error = NGX_HTTP_MEMQ_QUEUE_FULL;

        } else if (ngx_http_memq_set_refused(&reply)
                   == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE)
        {
            /* the client's message, not the node: 413 once the messages
             * in flight are answered, no retry */
            b->pos += reply.consumed;
            ctx->draining = 1;
            ctx->too_large = 1;

        } else {
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V answered \"%*s\" to set",
                          &mc->node->addr, reply.consumed - 2, b->pos);

            ngx_http_memq_publish_fail(ctx,
                                       reply.type == MQ_REPLY_SERVER_ERROR
                                       ? "server error" : "unexpected reply");
            return NGX_DONE;
        }

        ctx->head = (ctx->head + 1) % ctx->ring_size;
        ctx->inflight--;
    }

    return ngx_http_memq_publish_answered(ctx, mc);
}


/*
 * Every reply read so far is handled: send the next window, wait, or
 * (nothing in flight and nothing more for this node) move on.
 */
static ngx_int_t
ngx_http_memq_publish_answered(ngx_http_memq_pub_ctx_t *ctx,
    ngx_http_memq_conn_t *mc)
{
    ngx_int_t  n;

    if (!ctx->draining && mc->waiting
        && ctx->inflight <= ctx->ring_size / 2
        && (ctx->more || ctx->again_pos < ctx->nagain))
    {
        /* the window went out and half of it is answered: the next one,
         * while the rest of the replies come */
        n = ngx_http_memq_publish_fill(ctx);

        if (n == NGX_ERROR) {
            ngx_http_memq_publish_fail(ctx, "out of memory");
            return NGX_DONE;
        }

        if (n > 0) {
            ngx_http_memq_conn_send(mc, &ctx->win,
                                    ctx->conf->cluster->read_timeout);
            return NGX_DONE;
        }
    }

    if (ctx->inflight) {
        return NGX_OK;
    }

    if (mc->in->pos != mc->in->last) {
        ngx_http_memq_publish_fail(ctx, "bytes after the last reply");
        return NGX_DONE;
    }

    if (!mc->waiting) {
        /* the window is still going out */
        return NGX_OK;
    }

    ngx_http_memq_conn_replied(mc);
    ngx_http_memq_node_ok(mc->node);

    if (ctx->too_large) {
        ngx_http_memq_conn_release(mc);
        ctx->mc = NULL;
        ngx_http_memq_publish_error(ctx, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "message too large", 0);
        return NGX_DONE;
    }

    if (ctx->nretry || ctx->more || ctx->again_pos < ctx->nagain) {
        /* refused here: the rest goes to the next node */
        ngx_http_memq_conn_release(mc);
        ctx->mc = NULL;
        ngx_http_memq_publish_try(ctx);
        return NGX_DONE;
    }

    ngx_http_memq_publish_done(ctx);

    return NGX_DONE;
}


/* notes message idx as stored: the ranges stay sorted and merged */
static ngx_int_t
ngx_http_memq_publish_stored(ngx_http_memq_pub_ctx_t *ctx, ngx_uint_t idx)
{
    ngx_uint_t                  i, n;
    ngx_http_memq_pub_range_t  *rg, *nr;

    ctx->nstored++;
    rg = ctx->stored.elts;
    n = ctx->stored.nelts;

    /* the usual case: right after the last range */
    if (n && rg[n - 1].end == idx) {
        rg[n - 1].end++;
        return NGX_OK;
    }

    for (i = 0; i < n && rg[i].end < idx; i++) { /* void */ }

    if (i < n && rg[i].end == idx) {
        rg[i].end++;

        if (i + 1 < n && rg[i + 1].start == rg[i].end) {
            rg[i].end = rg[i + 1].end;
            ngx_memmove(&rg[i + 1], &rg[i + 2],
                        (n - i - 2) * sizeof(ngx_http_memq_pub_range_t));
            ctx->stored.nelts--;
        }

        return NGX_OK;
    }

    if (i < n && rg[i].start == idx + 1) {
        rg[i].start = idx;
        return NGX_OK;
    }

    nr = ngx_array_push(&ctx->stored);
    if (nr == NULL) {
        return NGX_ERROR;
    }

    rg = ctx->stored.elts;
    ngx_memmove(&rg[i + 1], &rg[i],
                (n - i) * sizeof(ngx_http_memq_pub_range_t));
    rg[i].start = idx;
    rg[i].end = idx + 1;

    return NGX_OK;
}


/*
 * The node failed.  Before anything was sent to it the next node is
 * tried; after, the messages in flight are unknown and the publish ends.
 */
static void
ngx_http_memq_publish_fail(ngx_http_memq_pub_ctx_t *ctx, const char *reason)
{
    ngx_uint_t             untouched, local, level;
    ngx_http_memq_node_t  *node;
    ngx_http_memq_conn_t  *mc;

    mc = ctx->mc;
    node = mc->node;
    local = mc->local;

    /*
     * The node failed before it answered anything (connect refused or
     * timed out, no reply at all): as the design's retry says, its first
     * window (nothing else went to it) goes whole to the next node; the
     * reset that closes this connection keeps what the kernel still holds
     * from being stored late.  Once it answered some, a failure is
     * partial: what it stored is known, the rest in flight is not, and
     * sending that elsewhere could store it twice.
     */
    untouched = (ctx->replies == 0);

    level = local ? NGX_LOG_WARN : NGX_LOG_ERR;

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "memq node %V failed: %s, %ui messages stored, %ui in "
                  "flight", &node->addr, reason, ctx->nstored,
                  ctx->inflight);

    ngx_http_memq_conn_close(mc);
    ctx->mc = NULL;

    ctx->stat.nodes_failed++;
    ctx->last_error = reason;

    if (!local) {
        ngx_http_memq_node_failed(node, ctx->request->connection->log,
                                  reason);
    }

    if (untouched) {
        ngx_http_memq_publish_rewind(ctx);
        ngx_http_memq_publish_try(ctx);
        return;
    }

    ngx_http_memq_publish_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "node failed", 1);
}


static void
ngx_http_memq_publish_done(ngx_http_memq_pub_ctx_t *ctx)
{
    u_char                *p;
    ngx_http_request_t    *r;
    ngx_http_memq_node_t  *node;
    u_char                 body[NGX_INT_T_LEN + NGX_HTTP_MEMQ_ADDR_LEN + 32];

    r = ctx->request;
    node = ctx->last_node ? ctx->last_node : ctx->mc->node;

    ctx->stat.messages = ctx->nstored;
    ctx->stat.nodes_ok = 1;

    p = ngx_snprintf(body, sizeof(body), "{\"queued\":%ui,\"node\":\"%V\"}\n",
                     ctx->nstored, &node->addr);

    if (ctx->mc) {
        ngx_http_memq_conn_release(ctx->mc);
        ctx->mc = NULL;
    }
    ctx->done = 1;

    (void) ngx_http_memq_send_json(r, NGX_HTTP_CREATED, body, p - body);
}


/*
 * An error answer.  When some lines were stored it says which: "queued",
 * and "stored" as ranges of 1-based message numbers (at most
 * NGX_HTTP_MEMQ_PUB_RANGES of them, then "stored_more":true); unknown: the
 * messages in flight when a node failed ("unknown":[first,last]).
 */
static void
ngx_http_memq_publish_error(ngx_http_memq_pub_ctx_t *ctx, ngx_uint_t status,
    const char *reason, ngx_uint_t unknown)
{
    u_char                     *p, *body;
    size_t                      size;
    ngx_uint_t                  i, n, first, last;
    ngx_http_request_t         *r;
    ngx_http_memq_pub_range_t  *rg;

    r = ctx->request;
    ctx->stat.messages = ctx->nstored;
    ctx->done = 1;

    if (ctx->nstored == 0 && !(unknown && ctx->inflight)) {
        ngx_http_memq_json_error(r, status, reason);
        return;
    }

    n = ngx_min(ctx->stored.nelts, NGX_HTTP_MEMQ_PUB_RANGES);
    size = 128 + 2 * NGX_INT_T_LEN + n * (2 * NGX_INT_T_LEN + 4)
           + ngx_strlen(reason);

    body = ngx_pnalloc(r->pool, size);
    if (body == NULL) {
        ngx_http_memq_json_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "out of memory");
        return;
    }

    p = ngx_sprintf(body, "{\"error\":\"%s\",\"status\":%ui,\"queued\":%ui,"
                    "\"stored\":[", reason, status, ctx->nstored);

    rg = ctx->stored.elts;

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, "%s[%ui,%ui]", i ? "," : "", rg[i].start + 1,
                        rg[i].end);
    }

    *p++ = ']';

    if (ctx->stored.nelts > n) {
        p = ngx_cpymem(p, ",\"stored_more\":true", 19);
    }

    if (unknown && ctx->inflight) {
        first = ctx->ring[ctx->head].idx + 1;
        last = ctx->ring[(ctx->head + ctx->inflight - 1)
                         % ctx->ring_size].idx + 1;
        p = ngx_sprintf(p, ",\"unknown\":[%ui,%ui]", first, last);
    }

    *p++ = '}';
    *p++ = '\n';

    ngx_http_discard_request_body(r);
    (void) ngx_http_memq_send_json(r, status, body, p - body);
}


static void
ngx_http_memq_publish_cleanup(void *data)
{
    ngx_http_memq_pub_ctx_t *ctx = data;

    ctx->done = 1;

    if (ctx->mc) {
        ngx_http_memq_conn_close(ctx->mc);
        ctx->mc = NULL;
    }

    if (ctx->pe) {
        /* its set stays in the pipe: the reply is read and dropped */
        ngx_http_memq_pipe_forget(ctx->pe);
        ctx->pe = NULL;
    }
}
