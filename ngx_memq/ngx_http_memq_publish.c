/*
 * ngx_http_memq_publish.c: POST /mq?topic=Q stores the body as one message,
 * or, with Content-Type application/x-ndjson, every non-blank line as one
 * message, pipelined to one node.
 *
 * The key is validated before the body is read, so a bad key never reaches
 * a node.  The whole batch is built once as a run of "set" commands; the
 * node is chosen by smooth weighted round robin among usable nodes.  Replies
 * come back in order, so after a failure only the messages not yet STORED
 * are sent again, to the next node (at most NGX_HTTP_MEMQ_PUBLISH_TRIES
 * nodes in all).  "object too large" is the client's problem: 413, no retry.
 *
 *   201 {"queued":N,"node":"host:port"}   every message STORED
 *   400 bad or missing key, empty body    413 too large
 *   503 no node took it
 */

#include "ngx_http_memq_module.h"


typedef struct {
    ngx_http_memq_rstat_t       stat;       /* first: read by variables */
    ngx_http_request_t         *request;
    ngx_http_memq_loc_conf_t   *conf;       /* (ref) */
    ngx_str_t                   key;
    ngx_buf_t                   req;        /* all "set" commands */
    size_t                     *offsets;    /* start of message i in req,
                                               offsets[nmsgs] = end */
    size_t                     *sizes;      /* payload bytes of message i */
    ngx_uint_t                  nmsgs;
    ngx_uint_t                  stored;     /* STORED so far, all tries */
    ngx_http_memq_node_t       *tried[NGX_HTTP_MEMQ_PUBLISH_TRIES];
    ngx_uint_t                  ntried;
    ngx_http_memq_conn_t       *mc;
    const char                 *last_error;
    unsigned                    done:1;
} ngx_http_memq_pub_ctx_t;


static void ngx_http_memq_publish_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_memq_publish_build(ngx_http_memq_pub_ctx_t *ctx,
    u_char *body, size_t len, ngx_uint_t ndjson);
static ngx_int_t ngx_http_memq_publish_body_bytes(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_memq_publish_try(ngx_http_memq_pub_ctx_t *ctx);
static ngx_int_t ngx_http_memq_publish_reply(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static void ngx_http_memq_publish_fail(ngx_http_memq_pub_ctx_t *ctx,
    const char *reason);
static void ngx_http_memq_publish_done(ngx_http_memq_pub_ctx_t *ctx);
static void ngx_http_memq_publish_error(ngx_http_memq_pub_ctx_t *ctx,
    ngx_uint_t status, const char *reason);
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


/* the whole body is here: build the batch and send it */
static void
ngx_http_memq_publish_body(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_str_t                 body;
    ngx_uint_t                ndjson;
    ngx_http_memq_pub_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    if (ngx_http_memq_publish_body_bytes(r, &body) != NGX_OK) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ndjson = 0;

    if (r->headers_in.content_type) {
        ngx_str_t  *ct = &r->headers_in.content_type->value;

        if (ct->len >= sizeof("application/x-ndjson") - 1
            && ngx_strncasecmp(ct->data, (u_char *) "application/x-ndjson",
                               sizeof("application/x-ndjson") - 1) == 0)
        {
            ndjson = 1;
        }
    }

    rc = ngx_http_memq_publish_build(ctx, body.data, body.len, ndjson);

    if (rc == NGX_ERROR) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_memq_publish_error(ctx, NGX_HTTP_BAD_REQUEST, "empty body");
        return;
    }

    ngx_http_memq_publish_try(ctx);
}


/* the request body as one piece of memory (read back when in a file) */
static ngx_int_t
ngx_http_memq_publish_body_bytes(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    body->len = 0;
    body->data = (u_char *) "";

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len == 0) {
        return NGX_OK;
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
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;

        } else {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }
    }

    return NGX_OK;
}


/*
 * Splits the body into messages and writes one "set" command each into
 * ctx->req, deflating those of at least memq_compress_min_size.
 * NGX_DECLINED when there is no message.
 */
static ngx_int_t
ngx_http_memq_publish_build(ngx_http_memq_pub_ctx_t *ctx, u_char *body,
    size_t len, ngx_uint_t ndjson)
{
    u_char              *p, *last, *eol, *s, *e, *w;
    size_t               total, hdr;
    ngx_str_t            z, *msgs;
    ngx_uint_t           i, n, *flags;
    ngx_http_request_t  *r;

    r = ctx->request;
    last = body + len;

    /* count messages first */
    n = 0;

    if (ndjson) {
        for (p = body; p < last; p = eol + 1) {
            eol = ngx_strlchr(p, last, '\n');
            if (eol == NULL) {
                eol = last;
            }

            for (s = p; s < eol && (*s == ' ' || *s == '\t' || *s == '\r');
                 s++)
            { /* void */ }

            if (s < eol) {
                n++;
            }
        }

    } else if (len) {
        n = 1;
    }

    if (n == 0) {
        return NGX_DECLINED;
    }

    msgs = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    flags = ngx_palloc(r->pool, n * sizeof(ngx_uint_t));
    ctx->offsets = ngx_palloc(r->pool, (n + 1) * sizeof(size_t));
    ctx->sizes = ngx_palloc(r->pool, n * sizeof(size_t));

    if (msgs == NULL || flags == NULL || ctx->offsets == NULL
        || ctx->sizes == NULL)
    {
        return NGX_ERROR;
    }

    i = 0;

    if (ndjson) {
        for (p = body; p < last; p = eol + 1) {
            eol = ngx_strlchr(p, last, '\n');
            if (eol == NULL) {
                eol = last;
            }

            for (s = p; s < eol && (*s == ' ' || *s == '\t' || *s == '\r');
                 s++)
            { /* void */ }

            if (s == eol) {
                continue;
            }

            e = eol;
            if (e > p && e[-1] == '\r') {
                e--;
            }

            msgs[i].data = p;
            msgs[i].len = e - p;
            i++;
        }

    } else {
        msgs[0].data = body;
        msgs[0].len = len;
    }

    total = 0;
    hdr = sizeof("set  4294967295 0 \r\n\r\n") - 1 + ctx->key.len
          + NGX_SIZE_T_LEN;

    for (i = 0; i < n; i++) {
        ctx->sizes[i] = msgs[i].len;
        flags[i] = 0;

        if (ctx->conf->compress_min_size
            && msgs[i].len >= ctx->conf->compress_min_size)
        {
            if (ngx_http_memq_deflate(r->pool, msgs[i].data, msgs[i].len, &z)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            msgs[i] = z;
            flags[i] = ctx->conf->compress_flag;
        }

        total += hdr + msgs[i].len;
    }

    w = ngx_pnalloc(r->pool, total);
    if (w == NULL) {
        return NGX_ERROR;
    }

    ctx->req.start = w;
    ctx->req.pos = w;
    ctx->req.temporary = 1;

    p = w;

    for (i = 0; i < n; i++) {
        ctx->offsets[i] = p - w;
        p = ngx_sprintf(p, "set %V %ui 0 %uz\r\n", &ctx->key, flags[i],
                        msgs[i].len);
        p = ngx_cpymem(p, msgs[i].data, msgs[i].len);
        *p++ = '\r';
        *p++ = '\n';
    }

    ctx->offsets[n] = p - w;
    ctx->req.last = p;
    ctx->req.end = p;
    ctx->nmsgs = n;

    return NGX_OK;
}


/* sends what is not stored yet to the next node, or answers 503 */
static void
ngx_http_memq_publish_try(ngx_http_memq_pub_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_http_request_t       *r;
    ngx_http_memq_node_t     *node;
    ngx_http_memq_cluster_t  *cl;

    r = ctx->request;
    cl = ctx->conf->cluster;

    for ( ;; ) {
        if (ctx->ntried >= NGX_HTTP_MEMQ_PUBLISH_TRIES) {
            break;
        }

        node = ngx_http_memq_node_next(cl, ctx->tried, ctx->ntried);
        if (node == NULL) {
            break;
        }

        ctx->tried[ctx->ntried++] = node;

        rc = ngx_http_memq_conn_get(node, r->connection->log, &ctx->mc);

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

        ctx->req.pos = ctx->req.start + ctx->offsets[ctx->stored];

        ngx_http_memq_conn_send(ctx->mc, &ctx->req, cl->read_timeout);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "memq cluster \"%V\": no node took the message (%s)",
                  &cl->name, ctx->last_error ? ctx->last_error
                                             : "no healthy node");

    ngx_http_memq_publish_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                "no node took the message");
}


/* replies to the pipelined sets: one line each, in order */
static ngx_int_t
ngx_http_memq_publish_reply(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    ngx_int_t                 prc;
    ngx_buf_t                *b;
    mq_reply_t                reply;
    const char               *err;
    ngx_http_memq_shnode_t   *shn;
    ngx_http_memq_pub_ctx_t  *ctx;

    ctx = mc->data;

    if (rc == NGX_ERROR) {
        ngx_http_memq_publish_fail(ctx, mc->err);
        return NGX_DONE;
    }

    b = mc->in;
    shn = ngx_http_memq_shnode(mc->node);

    for ( ;; ) {
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

        b->pos += reply.consumed;

        if (reply.type == MQ_REPLY_STORED) {
            (void) ngx_atomic_fetch_add(&shn->msgs_in, 1);
            (void) ngx_atomic_fetch_add(&shn->bytes_in,
                                        ctx->sizes[ctx->stored]);
            ctx->stored++;

            if (ctx->stored == ctx->nmsgs) {
                break;
            }

            continue;
        }

        if (reply.type == MQ_REPLY_SERVER_ERROR
            && reply.text_len >= sizeof("object too large") - 1
            && ngx_strncmp(reply.text, "object too large",
                           sizeof("object too large") - 1) == 0)
        {
            /* the node is fine; the message is not */
            ngx_http_memq_node_ok(mc->node);
            ngx_http_memq_conn_close(mc);
            ctx->mc = NULL;
            ngx_http_memq_publish_error(ctx, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                        "message too large");
            return NGX_DONE;
        }

        ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                      "memq node %V answered \"%*s\" to set",
                      &mc->node->addr, reply.consumed - 2,
                      b->pos - reply.consumed);

        ngx_http_memq_publish_fail(ctx, reply.type == MQ_REPLY_SERVER_ERROR
                                        ? "server error" : "unexpected reply");
        return NGX_DONE;
    }

    if (b->pos != b->last) {
        ngx_http_memq_publish_fail(ctx, "bytes after the last reply");
        return NGX_DONE;
    }

    mc->waiting = 0;
    ngx_http_memq_node_ok(mc->node);
    ngx_http_memq_publish_done(ctx);

    return NGX_DONE;
}


static void
ngx_http_memq_publish_fail(ngx_http_memq_pub_ctx_t *ctx, const char *reason)
{
    ngx_http_memq_node_t  *node;

    node = ctx->mc->node;

    ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                  "memq node %V failed: %s, %ui of %ui messages stored",
                  &node->addr, reason, ctx->stored, ctx->nmsgs);

    ngx_http_memq_conn_close(ctx->mc);
    ctx->mc = NULL;

    ctx->stat.nodes_failed++;
    ctx->last_error = reason;
    ngx_http_memq_node_failed(node, ctx->request->connection->log, reason);

    ngx_http_memq_publish_try(ctx);
}


static void
ngx_http_memq_publish_done(ngx_http_memq_pub_ctx_t *ctx)
{
    u_char                *p;
    ngx_http_request_t    *r;
    ngx_http_memq_node_t  *node;
    u_char                 body[NGX_INT_T_LEN + NGX_HTTP_MEMQ_ADDR_LEN + 32];

    r = ctx->request;
    node = ctx->mc->node;

    ctx->stat.messages = ctx->stored;
    ctx->stat.nodes_ok = 1;

    p = ngx_snprintf(body, sizeof(body), "{\"queued\":%ui,\"node\":\"%V\"}\n",
                     ctx->stored, &node->addr);

    ngx_http_memq_conn_release(ctx->mc);
    ctx->mc = NULL;
    ctx->done = 1;

    (void) ngx_http_memq_send_json(r, NGX_HTTP_CREATED, body, p - body);
}


static void
ngx_http_memq_publish_error(ngx_http_memq_pub_ctx_t *ctx, ngx_uint_t status,
    const char *reason)
{
    ctx->stat.messages = ctx->stored;
    ctx->done = 1;

    ngx_http_memq_json_error(ctx->request, status, reason);
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
}
