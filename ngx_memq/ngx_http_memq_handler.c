/*
 * ngx_http_memq_handler.c: consume, the push.  GET /mq?topic=Q[&wait=S]
 * [&max=N][&format=ndjson|sse|raw] streams what every node of the cluster
 * holds, fetched concurrently over the module's own connections.
 *
 * One ngx_http_memq_ctx_t per request, one ngx_http_memq_snode_t per node
 * in it.  Every event (node reply, node failure, client writable, client
 * gone, heartbeat) ends in ngx_http_memq_run(), which flushes output and
 * then moves each node along:
 *
 *   IDLE ──ask──► BUSY ──reply with items──► FLUSH ──client took them──► IDLE
 *                  │   ──empty reply──► IDLE (long poll) / DONE (drain)
 *                  └── failure ──► FAILED
 *   when the stream ends: IDLE with open items ──"get q/close"──► ACK ► DONE
 *   an item taken beyond max ──"get q/abort"──► ABORT ──► IDLE
 *
 * At-least-once: items are taken with /open; the /close that acknowledges
 * them rides on the node's next request (get q/close/open/n=...), which is
 * sent only once the client connection has no busy or buffered output
 * left, i.e. nginx wrote their bytes to the socket.  The same rule is the
 * backpressure: a node is asked for more only when the client has taken
 * what came before, so at most one batch per node is in memory.
 *
 * max is exact.  A request that returns at once reserves its /n= count
 * from what max still allows, so it never brings more than can be sent.  A
 * long-poll request cannot hold a reservation (it would starve the other
 * nodes for the whole wait), so under max it asks for one item, unreserved:
 * if that item arrives when max is already spoken for, it is given back
 * with /abort, which is exact because it is the only item open on that
 * connection (the request's own /close acknowledged the batch before).
 * When the client goes away, node connections that hold open items or a
 * request in flight are closed, and memqd gives those items back.
 *
 * Client mode (memq_ack client, or ack=client): items are taken with
 * "get q/lease=MS/n=N" instead, nothing is acknowledged (the client does
 * that with POST op=ack, ngx_http_memq_ack.c), and every message carries
 * its id "<host:port>/<id>".  The states are the same; a node has no open
 * items, so the end needs no /close, and an item beyond max goes back with
 * "touch q/<id> 0" (state ABORT, answered TOUCHED or NOT_FOUND).  The ids
 * of the batch in nginx's output (state FLUSH) are kept: when the stream
 * ends before they reached the socket (send_timeout, client abort, error),
 * the cleanup gives them back at once with "touch q/<id> 0 noreply" on
 * the node's connection, which is then closed with a FIN (not reset), so
 * memqd still reads them.  Items whose get was in flight when the stream
 * ended come back when their lease runs out.
 *
 * Every way out ends in exactly one ngx_http_finalize_request(); the
 * cleanup handler closes whatever node connection is still attached.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_OUT_SIZE   32768
#define NGX_HTTP_MEMQ_LINE_SIZE  384

/* output beyond the values' stored bytes (inflated, or grown by framing:
 * an sse line per line, JSON escapes) a stream may have waiting for its
 * client before it stops reading node replies (one more value may exceed
 * it) */
#define NGX_HTTP_MEMQ_GROWN_BUDGET  65536

/* per-node states in a stream: name, enum member */
#define NGX_HTTP_MEMQ_SN_STATES(X)                                           \
    X("idle",   NGX_HTTP_MEMQ_SN_IDLE)                                       \
    X("busy",   NGX_HTTP_MEMQ_SN_BUSY)                                       \
    X("flush",  NGX_HTTP_MEMQ_SN_FLUSH)                                      \
    X("ack",    NGX_HTTP_MEMQ_SN_ACK)                                        \
    X("abort",  NGX_HTTP_MEMQ_SN_ABORT)                                      \
    X("done",   NGX_HTTP_MEMQ_SN_DONE)                                       \
    X("failed", NGX_HTTP_MEMQ_SN_FAILED)

typedef enum {
#define NGX_HTTP_MEMQ_SN_ENUM(name, e) e,
    NGX_HTTP_MEMQ_SN_STATES(NGX_HTTP_MEMQ_SN_ENUM)
#undef NGX_HTTP_MEMQ_SN_ENUM
    NGX_HTTP_MEMQ_SN_COUNT
} ngx_http_memq_sn_state_e;

#if (NGX_DEBUG)
static const char  *ngx_http_memq_sn_names[] = {
#define NGX_HTTP_MEMQ_SN_NAME(name, e) name,
    NGX_HTTP_MEMQ_SN_STATES(NGX_HTTP_MEMQ_SN_NAME)
#undef NGX_HTTP_MEMQ_SN_NAME
};
#endif

static ngx_str_t  ngx_http_memq_format_names[] = {
#define NGX_HTTP_MEMQ_FMT_NAME(name, e) ngx_string(name),
    NGX_HTTP_MEMQ_FORMATS(NGX_HTTP_MEMQ_FMT_NAME)
#undef NGX_HTTP_MEMQ_FMT_NAME
};

static ngx_str_t  ngx_http_memq_content_types[] = {
    ngx_string("application/x-ndjson"),
    ngx_string("text/event-stream"),
    ngx_string("application/octet-stream")
};


typedef struct ngx_http_memq_ctx_s  ngx_http_memq_ctx_t;

/* one node's part in one stream */
typedef struct {
    ngx_http_memq_ctx_t    *ctx;          /* (ref) */
    ngx_http_memq_node_t   *node;         /* (ref) */
    ngx_http_memq_conn_t   *mc;           /* NULL when none attached */
    ngx_uint_t              state;        /* ngx_http_memq_sn_state_e */
    ngx_uint_t              asked;        /* /n= of the request in flight */
    ngx_uint_t              reserved;     /* of it, reserved against max */
    ngx_uint_t              got;          /* VALUEs in the current reply */
    ngx_uint_t              rounds;       /* requests sent */
    uint64_t               *ids;          /* client mode: the ids of the
                                             batch in the output */
    ngx_uint_t              nids;
    uint64_t                give_id;      /* client mode: the item beyond
                                             max, to give back */
    mq_reply_t              value;        /* header of the value being read */
    ngx_buf_t               req;          /* request line, in line[] */
    ngx_str_t               sent_key;     /* its key, in line[]: every
                                             VALUE must echo it */
    u_char                  line[NGX_HTTP_MEMQ_LINE_SIZE];
    unsigned                open:1;       /* items open on the connection */
    unsigned                in_value:1;   /* reading a data block */
    unsigned                answered:1;   /* a reply came at least once */
    unsigned                last_empty:1; /* the last reply had no item */
    unsigned                drained:1;    /* drain mode: it said it was
                                             empty */
    unsigned                waiting:1;    /* the request has /t= */
    unsigned                give_back:1;  /* the item read is beyond max */
    unsigned                paused:1;     /* reply held: grown output
                                             over budget */
} ngx_http_memq_snode_t;


struct ngx_http_memq_ctx_s {
    ngx_http_memq_rstat_t       stat;      /* first: read by variables */
    ngx_http_request_t         *request;
    ngx_http_memq_loc_conf_t   *conf;      /* (ref) */
    ngx_http_memq_cluster_t    *cluster;   /* (ref) */
    ngx_str_t                   key;
    ngx_uint_t                  format;
    ngx_msec_t                  wait;      /* 0: drain */
    ngx_uint_t                  max;       /* 0: unlimited */
    ngx_uint_t                  client;    /* ack=client: leases */
    ngx_msec_t                  lease;     /* client mode: /lease= */
    ngx_uint_t                  reserved;  /* items asked for, not in yet */
    ngx_uint_t                  marked;    /* nodes failed by their fault */
    ngx_msec_t                  deadline;  /* long poll: idle until */
    ngx_msec_t                  last_out;  /* last message or ping */
    ngx_http_memq_snode_t      *nodes;
    ngx_uint_t                  nnodes;
    ngx_http_memq_node_t      **skipped;   /* listed but marked down at the
                                              start: named at the end */
    ngx_uint_t                  nskipped;

    ngx_chain_t                *out;       /* ready for the output filter */
    ngx_chain_t               **last_out_cl;
    ngx_chain_t                *cur;       /* being filled */
    ngx_chain_t                *free;
    ngx_chain_t                *busy;

    u_char                     *scratch;   /* inflated values */
    size_t                      scratch_cap;
    size_t                      grown;     /* output bytes beyond the values'
                                              stored ones (inflated or
                                              framed) not yet written to
                                              the socket */

    ngx_event_t                 heartbeat;
    ngx_queue_t                 queue;     /* in ngx_http_memq_streams */

    unsigned                    header_sent:1;
    unsigned                    finishing:1;
    unsigned                    cut:1;      /* a drain ended by a graceful
                                               shutdown: nodes that did
                                               not say empty are named */
    unsigned                    done:1;     /* finalized */
    unsigned                    counted:1;  /* in streams_active */
    unsigned                    listed:1;   /* in ngx_http_memq_streams */
};


/* this worker's running streams, so a graceful shutdown can end them */
static ngx_queue_t  ngx_http_memq_streams;
static ngx_uint_t   ngx_http_memq_streams_init;


static ngx_int_t ngx_http_memq_parse_args(ngx_http_request_t *r,
    ngx_http_memq_ctx_t *ctx, const char **err);
static ngx_uint_t ngx_http_memq_wants_sse(ngx_http_request_t *r);
static void ngx_http_memq_run(ngx_http_memq_ctx_t *ctx);
static ngx_int_t ngx_http_memq_ask(ngx_http_memq_snode_t *sn, ngx_uint_t n,
    ngx_uint_t close, ngx_uint_t waiting, ngx_uint_t reserve);
static ngx_int_t ngx_http_memq_ask_line(ngx_http_memq_snode_t *sn,
    const char *opt, ngx_uint_t state);
static ngx_int_t ngx_http_memq_send_line(ngx_http_memq_snode_t *sn,
    u_char *last, ngx_msec_t t);
static ngx_int_t ngx_http_memq_node_reply(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static ngx_int_t ngx_http_memq_node_values(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static void ngx_http_memq_node_fail(ngx_http_memq_snode_t *sn,
    const char *reason, ngx_uint_t mark);
static void ngx_http_memq_send_failed(ngx_http_memq_snode_t *sn,
    ngx_int_t rc);
static ngx_int_t ngx_http_memq_emit(ngx_http_memq_snode_t *sn, u_char *data,
    size_t len);
static void ngx_http_memq_count_out(ngx_http_memq_shnode_t *shn,
    size_t raw);
static u_char *ngx_http_memq_reserve(ngx_http_memq_ctx_t *ctx, size_t need);
static ngx_int_t ngx_http_memq_flush(ngx_http_memq_ctx_t *ctx,
    ngx_uint_t last);
static ngx_int_t ngx_http_memq_send_header(ngx_http_memq_ctx_t *ctx);
static void ngx_http_memq_finish(ngx_http_memq_ctx_t *ctx);
static ngx_int_t ngx_http_memq_tell_failed(ngx_http_memq_ctx_t *ctx);
static ngx_uint_t ngx_http_memq_chunked(ngx_http_request_t *r);
static void ngx_http_memq_abort(ngx_http_memq_ctx_t *ctx, ngx_int_t rc);
static void ngx_http_memq_check_broken(ngx_http_request_t *r);
static void ngx_http_memq_writer(ngx_http_request_t *r);
static void ngx_http_memq_heartbeat(ngx_event_t *ev);
static void ngx_http_memq_cleanup(void *data);
static void ngx_http_memq_give_back(ngx_http_memq_snode_t *sn);
static void ngx_http_memq_set_state(ngx_http_memq_snode_t *sn,
    ngx_uint_t state);


/*
 * Evaluates memq_key and validates it: 1..250 bytes of the queue-name set,
 * used as evaluated (not URL-decoded).  NGX_DECLINED for an empty or bad
 * key (the caller answers 400), NGX_ERROR on failure.
 */
ngx_int_t
ngx_http_memq_get_key(ngx_http_request_t *r, ngx_http_memq_loc_conf_t *mlcf,
    ngx_str_t *key)
{
    size_t  n;
    u_char  quoted[NGX_HTTP_MEMQ_LOG_QUOTE * 3];

    if (ngx_http_complex_value(r, mlcf->key, key) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!mq_name_valid((const char *) key->data, key->len)) {
        n = ngx_http_memq_log_quote(quoted, key->data, key->len);
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "memq: rejected key \"%*s\"", n, quoted);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* the content handler for GET and HEAD */
ngx_int_t
ngx_http_memq_consume(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_uint_t                 i, n;
    const char                *err;
    ngx_http_cleanup_t        *cln;
    ngx_http_memq_ctx_t       *ctx;
    ngx_http_memq_node_t     **np;
    ngx_http_memq_snode_t     *sn;
    ngx_http_memq_cluster_t   *cl;
    ngx_http_memq_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);
    cl = mlcf->cluster;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_memq_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->conf = mlcf;
    ctx->cluster = cl;
    ctx->last_out_cl = &ctx->out;

    ngx_http_set_ctx(r, ctx, ngx_http_memq_module);

    /* one reference for our own finalization, whatever path it takes */
    r->main->count++;

    rc = ngx_http_memq_get_key(r, mlcf, &ctx->key);

    if (rc == NGX_ERROR) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_DONE;
    }

    if (rc == NGX_DECLINED) {
        ctx->done = 1;
        ngx_http_memq_json_error(r, NGX_HTTP_BAD_REQUEST,
                                 ctx->key.len ? "bad key" : "missing key");
        return NGX_DONE;
    }

    if (ngx_http_memq_parse_args(r, ctx, &err) != NGX_OK) {
        ctx->done = 1;
        ngx_http_memq_json_error(r, NGX_HTTP_BAD_REQUEST, err);
        return NGX_DONE;
    }

    if (r->method == NGX_HTTP_HEAD) {
        /* a HEAD must not take messages */
        ctx->done = 1;
        r->headers_out.status = NGX_HTTP_OK;
        r->headers_out.content_type = ngx_http_memq_content_types[ctx->format];
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        r->header_only = 1;
        ngx_http_finalize_request(r, ngx_http_send_header(r));
        return NGX_DONE;
    }

    ngx_http_memq_etcd_seed(cl, r->connection->log);

    /* the nodes usable now take part */
    np = cl->nodes.elts;
    n = 0;

    ctx->nodes = ngx_pcalloc(r->pool,
                             cl->nodes.nelts * sizeof(ngx_http_memq_snode_t)
                             + 1);
    if (ctx->nodes == NULL) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_DONE;
    }

    for (i = 0; i < cl->nodes.nelts; i++) {
        if (!ngx_http_memq_node_usable(np[i])) {
            if (np[i]->sources == 0) {
                continue;
            }

            if (ctx->skipped == NULL) {
                ctx->skipped = ngx_palloc(r->pool, cl->nodes.nelts
                                          * sizeof(ngx_http_memq_node_t *));
                if (ctx->skipped == NULL) {
                    ctx->done = 1;
                    ngx_http_finalize_request(r,
                                              NGX_HTTP_INTERNAL_SERVER_ERROR);
                    return NGX_DONE;
                }
            }

            ctx->skipped[ctx->nskipped++] = np[i];
            continue;
        }

        sn = &ctx->nodes[n++];
        sn->ctx = ctx;
        sn->node = np[i];
        sn->state = NGX_HTTP_MEMQ_SN_IDLE;

        if (ctx->client) {
            sn->ids = ngx_palloc(r->pool, mlcf->batch * sizeof(uint64_t));
            if (sn->ids == NULL) {
                ctx->done = 1;
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return NGX_DONE;
            }
        }
    }

    ctx->nnodes = n;

    if (n == 0) {
        ctx->done = 1;
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "memq cluster \"%V\": no healthy node", &cl->name);
        ngx_http_memq_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "no healthy node");
        return NGX_DONE;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_DONE;
    }

    cln->handler = ngx_http_memq_cleanup;
    cln->data = ctx;

    /* the stream holds its nodes until cleanup: none is reused meanwhile */
    for (i = 0; i < ctx->nnodes; i++) {
        ctx->nodes[i].node->refs++;
    }

    if (cl->sh) {
        (void) ngx_atomic_fetch_add(&cl->sh->streams_active, 1);
        ctx->counted = 1;
    }

    if (!ngx_http_memq_streams_init) {
        ngx_queue_init(&ngx_http_memq_streams);
        ngx_http_memq_streams_init = 1;
    }

    ngx_queue_insert_tail(&ngx_http_memq_streams, &ctx->queue);
    ctx->listed = 1;

    ctx->deadline = ngx_current_msec + ctx->wait;
    ctx->last_out = ngx_current_msec;

    ctx->heartbeat.handler = ngx_http_memq_heartbeat;
    ctx->heartbeat.data = ctx;
    ctx->heartbeat.log = r->connection->log;
    ctx->heartbeat.cancelable = 1;

    r->read_event_handler = ngx_http_memq_check_broken;
    r->write_event_handler = ngx_http_memq_writer;

    ngx_http_memq_run(ctx);

    if (!ctx->done) {
        /* the client may have gone before we looked */
        ngx_http_memq_check_broken(r);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_memq_parse_args(ngx_http_request_t *r, ngx_http_memq_ctx_t *ctx,
    const char **err)
{
    ngx_int_t   n;
    ngx_str_t   v;
    ngx_uint_t  i;

    if (ngx_http_arg(r, (u_char *) "format", 6, &v) == NGX_OK) {
        for (i = 0; i < NGX_HTTP_MEMQ_FMT_COUNT; i++) {
            if (v.len == ngx_http_memq_format_names[i].len
                && ngx_strncmp(v.data, ngx_http_memq_format_names[i].data,
                               v.len) == 0)
            {
                break;
            }
        }

        if (i == NGX_HTTP_MEMQ_FMT_COUNT) {
            *err = "bad format";
            return NGX_ERROR;
        }

        ctx->format = i;

    } else {
        ctx->format = ngx_http_memq_wants_sse(r) ? NGX_HTTP_MEMQ_FMT_SSE
                                                 : NGX_HTTP_MEMQ_FMT_NDJSON;
    }

    ctx->wait = 0;

    if (ngx_http_arg(r, (u_char *) "wait", 4, &v) == NGX_OK) {
        /* seconds, with up to three decimals */
        n = ngx_atofp(v.data, v.len, 3);

        if (n == NGX_ERROR) {
            *err = "bad wait";
            return NGX_ERROR;
        }

        ctx->wait = ((ngx_msec_t) n > ctx->conf->wait_max)
                    ? ctx->conf->wait_max : (ngx_msec_t) n;
    }

    if (ngx_http_arg(r, (u_char *) "max", 3, &v) == NGX_OK) {
        n = ngx_atoi(v.data, v.len);

        if (n == NGX_ERROR || n == 0) {
            *err = "bad max";
            return NGX_ERROR;
        }

        ctx->max = n;
    }

    ctx->client = (ctx->conf->ack == NGX_HTTP_MEMQ_ACK_CLIENT);

    if (ngx_http_arg(r, (u_char *) "ack", 3, &v) == NGX_OK) {
        if (v.len == 6 && ngx_strncmp(v.data, "client", 6) == 0) {
            ctx->client = 1;

        } else if (v.len == 5 && ngx_strncmp(v.data, "write", 5) == 0) {
            ctx->client = 0;

        } else {
            *err = "bad ack";
            return NGX_ERROR;
        }
    }

    ctx->lease = ctx->conf->lease;

    if (ngx_http_arg(r, (u_char *) "lease", 5, &v) == NGX_OK
        && ngx_http_memq_parse_lease(&v, &ctx->lease) != NGX_OK)
    {
        *err = "bad lease";
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_memq_wants_sse(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "accept", 6) == 0
            && ngx_strlcasestrn(h[i].value.data,
                                h[i].value.data + h[i].value.len,
                                (u_char *) "text/event-stream", 17 - 1)
               != NULL)
        {
            return 1;
        }
    }

    return 0;
}


static void
ngx_http_memq_set_state(ngx_http_memq_snode_t *sn, ngx_uint_t state)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sn->ctx->request->connection->log, 0,
                   "memq stream node %V: %s -> %s", &sn->node->addr,
                   ngx_http_memq_sn_names[sn->state],
                   ngx_http_memq_sn_names[state]);

    sn->state = state;
}


/*
 * The pump: flushes output, then decides for every node what comes next.
 * Called after every event of the stream; it may finalize the request (then
 * ctx->done is set and nothing else may be touched).
 */
static void
ngx_http_memq_run(ngx_http_memq_ctx_t *ctx)
{
    ngx_int_t               rc;
    ngx_uint_t              i, flushed, busy, live, idle, n, left, end;
    ngx_uint_t              waiting, reserve;
    ngx_http_memq_snode_t  *sn;

    if (ctx->done) {
        return;
    }

    rc = ngx_http_memq_flush(ctx, 0);

    if (rc == NGX_ERROR) {
        /* a failed write to the client is the client gone (reset) */
        ngx_http_memq_abort(ctx, ctx->request->connection->error
                                 ? NGX_HTTP_CLIENT_CLOSED_REQUEST
                                 : NGX_ERROR);
        return;
    }

    flushed = (rc == NGX_OK);

    if (flushed) {
        /* the client took the grown output: held replies read on */
        for (i = 0; i < ctx->nnodes; i++) {
            sn = &ctx->nodes[i];

            if (sn->paused) {
                sn->paused = 0;

                if (sn->mc && sn->state == NGX_HTTP_MEMQ_SN_BUSY) {
                    ngx_http_memq_conn_resume(sn->mc);
                }
            }
        }
    }

    busy = 0;
    live = 0;
    idle = 0;

    for (i = 0; i < ctx->nnodes; i++) {
        sn = &ctx->nodes[i];

        if (flushed && sn->state == NGX_HTTP_MEMQ_SN_FLUSH) {
            /* the client has its items: the next /close may go (in
             * client mode: they are the client's to acknowledge) */
            sn->nids = 0;
            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_IDLE);
        }

        switch (sn->state) {
        case NGX_HTTP_MEMQ_SN_IDLE:
            idle++;
            live++;
            break;
        case NGX_HTTP_MEMQ_SN_BUSY:
        case NGX_HTTP_MEMQ_SN_ACK:
        case NGX_HTTP_MEMQ_SN_ABORT:
            busy++;
            live++;
            break;
        case NGX_HTTP_MEMQ_SN_FLUSH:
            live++;
            break;
        default:
            break;
        }
    }

    if (!ctx->finishing) {
        end = 0;

        if (ctx->max && ctx->stat.messages >= ctx->max) {
            end = 1;

        } else if (ngx_exiting || ngx_terminate) {
            /* graceful shutdown: a long poll must not hold the worker;
             * a drain ends before every node said empty */
            end = 1;
            ctx->cut = (ctx->wait == 0);

        } else if (live == 0) {
            end = 1;

        } else if (ctx->wait
                   && (ngx_msec_int_t) (ngx_current_msec - ctx->deadline) >= 0
                   && busy == 0 && idle == live)
        {
            end = 1;
        }

        if (end) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log,
                           0, "memq stream ends after %ui messages, "
                           "%ui nodes live", ctx->stat.messages, live);
            ctx->finishing = 1;
        }
    }

    if (ctx->finishing) {
        for (i = 0; i < ctx->nnodes; i++) {
            sn = &ctx->nodes[i];

            if (sn->state == NGX_HTTP_MEMQ_SN_BUSY) {
                /* a get in flight (max reached or idle time over): what it
                 * opens goes back when the connection closes */
                ngx_http_memq_conn_close(sn->mc);
                sn->mc = NULL;
                ctx->reserved -= sn->reserved;
                sn->reserved = 0;
                ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_DONE);
                continue;
            }

            if (sn->state != NGX_HTTP_MEMQ_SN_IDLE) {
                continue;
            }

            if (sn->open) {
                rc = ngx_http_memq_ask_line(sn, "close",
                                            NGX_HTTP_MEMQ_SN_ACK);
                if (rc != NGX_OK) {
                    ngx_http_memq_send_failed(sn, rc);
                }

                continue;
            }

            if (sn->mc) {
                ngx_http_memq_conn_release(sn->mc);
                sn->mc = NULL;
            }

            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_DONE);
        }

        for (i = 0; i < ctx->nnodes; i++) {
            if (ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_DONE
                && ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_FAILED)
            {
                return;
            }
        }

        if (flushed || !ctx->header_sent) {
            /* without a header nothing can be flushed: no node answered
             * completely, and none is left to wait for (503) */
            ngx_http_memq_finish(ctx);
        }

        return;
    }

    if (!flushed) {
        /* backpressure: nothing more until the client took it */
        return;
    }

    /* ask every idle node for its next batch */
    for (i = 0; i < ctx->nnodes; i++) {
        sn = &ctx->nodes[i];

        if (sn->state != NGX_HTTP_MEMQ_SN_IDLE) {
            continue;
        }

        /* a node waits (/t=) only when it had nothing the last time */
        waiting = (ctx->wait && sn->rounds && sn->last_empty);

        if (waiting
            && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) <= 0)
        {
            /* idle time is over for this node; the end check does the rest */
            continue;
        }

        n = ctx->conf->batch;
        reserve = 0;

        if (ctx->max) {
            if (waiting) {
                n = 1;

            } else {
                if (ctx->stat.messages + ctx->reserved >= ctx->max) {
                    continue;
                }

                left = ctx->max - ctx->stat.messages - ctx->reserved;

                /* share what max still allows among the nodes asked */
                n = ngx_min(n, ngx_max(1, left / idle));
                n = ngx_min(n, left);
                reserve = 1;
            }
        }

        rc = ngx_http_memq_ask(sn, n, sn->open, waiting, reserve);
        if (rc != NGX_OK) {
            ngx_http_memq_send_failed(sn, rc);
            continue;
        }

        idle--;
    }

    /* a node may have failed at once */
    for (i = 0; i < ctx->nnodes; i++) {
        if (ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_FAILED
            && ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_DONE)
        {
            return;
        }
    }

    ngx_http_memq_run(ctx);
}


/*
 * Sends the node its next request "get[s] q[/close]/open/n=N[/t=MS]" (BUSY).
 * A waiting request carries /t= (the idle time left) and no reservation.
 * The first request of a stream never waits, so every reachable node
 * answers at once and the headers go out (or a 503) without delay.
 */
static ngx_int_t
ngx_http_memq_ask(ngx_http_memq_snode_t *sn, ngx_uint_t n, ngx_uint_t close,
    ngx_uint_t waiting, ngx_uint_t reserve)
{
    u_char               *p;
    ngx_int_t             rc;
    ngx_msec_t            t;
    ngx_http_memq_ctx_t  *ctx;

    ctx = sn->ctx;

    if (ctx->client) {
        /* leased items belong to no connection: nothing to close */
        p = ngx_sprintf(sn->line, "get %V/lease=%M/n=%ui", &ctx->key,
                        ctx->lease, n);

    } else {
        p = ngx_sprintf(sn->line, "%s %V%s/open/n=%ui",
                        ctx->format == NGX_HTTP_MEMQ_FMT_SSE ? "gets" : "get",
                        &ctx->key, close ? "/close" : "", n);
    }

    t = 0;

    if (waiting) {
        t = ngx_min(ctx->deadline - ngx_current_msec, MQ_GET_WAIT_MAX);
        p = ngx_sprintf(p, "/t=%M", t);
    }

    *p++ = '\r';
    *p++ = '\n';

    rc = ngx_http_memq_send_line(sn, p, t);
    if (rc != NGX_OK) {
        return rc;
    }

    sn->asked = n;
    sn->reserved = reserve ? n : 0;
    sn->waiting = waiting;
    ctx->reserved += sn->reserved;

    ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_BUSY);

    return NGX_OK;
}


/*
 * "get q/close" (state ACK) or "get q/abort" (state ABORT); in client
 * mode the abort is "touch q/<give_id> 0".
 */
static ngx_int_t
ngx_http_memq_ask_line(ngx_http_memq_snode_t *sn, const char *opt,
    ngx_uint_t state)
{
    u_char     *p;
    ngx_int_t   rc;

    if (sn->ctx->client && state == NGX_HTTP_MEMQ_SN_ABORT) {
        p = ngx_sprintf(sn->line, "touch %V/%uL 0\r\n", &sn->ctx->key,
                        sn->give_id);

    } else {
        p = ngx_sprintf(sn->line, "get %V/%s\r\n", &sn->ctx->key, opt);
    }

    rc = ngx_http_memq_send_line(sn, p, 0);
    if (rc != NGX_OK) {
        return rc;
    }

    sn->asked = 0;
    sn->reserved = 0;
    sn->waiting = 0;

    ngx_http_memq_set_state(sn, state);

    return NGX_OK;
}


/* sends sn->line up to last; t is the node's own wait (ms) */
static ngx_int_t
ngx_http_memq_send_line(ngx_http_memq_snode_t *sn, u_char *last,
    ngx_msec_t t)
{
    ngx_int_t             rc;
    ngx_http_memq_ctx_t  *ctx;

    ctx = sn->ctx;

    if (sn->mc == NULL) {
        rc = ngx_http_memq_conn_get(sn->node,
                                    ctx->request->connection->log, &sn->mc);
        if (rc == NGX_ERROR || rc == NGX_BUSY) {
            return rc;
        }

        sn->mc->handler = ngx_http_memq_node_reply;
        sn->mc->data = sn;
        sn->mc->owner_conn = ctx->request->connection;
    }

    /* "get[s] <key>\r\n": the key is what the node must echo */
    sn->sent_key.data = (u_char *) ngx_strlchr(sn->line, last, ' ') + 1;
    sn->sent_key.len = last - 2 - sn->sent_key.data;

    sn->req.start = sn->line;
    sn->req.pos = sn->line;
    sn->req.last = last;
    sn->req.end = last;
    sn->req.temporary = 1;

    sn->got = 0;
    sn->in_value = 0;
    sn->give_back = 0;
    sn->rounds++;
    sn->mc->need = 0;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "memq node %V: \"%*s\"", &sn->node->addr,
                   (size_t) (last - sn->line - 2), sn->line);

    ngx_http_memq_conn_send(sn->mc, &sn->req,
                            t + ctx->cluster->read_timeout);

    return NGX_OK;
}


/* the connection handler of a stream's node: parses the reply */
static ngx_int_t
ngx_http_memq_node_reply(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    rc = ngx_http_memq_node_values(mc, rc);

    /* the messages of this read are counted in the shared zone once */
    ngx_http_memq_count_out(NULL, 0);

    return rc;
}


/* a node connection's handler: the values of a reply, one by one */
static ngx_int_t
ngx_http_memq_node_values(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    size_t                  need;
    ngx_int_t               prc;
    ngx_uint_t              take;
    ngx_buf_t              *b;
    const char             *err;
    mq_reply_t              reply;
    ngx_http_memq_ctx_t    *ctx;
    ngx_http_memq_snode_t  *sn;

    sn = mc->data;
    ctx = sn->ctx;

    if (rc == NGX_ERROR) {
        ngx_http_memq_node_fail(sn, mc->err, !mc->local);
        ngx_http_memq_run(ctx);
        return NGX_DONE;
    }

    b = mc->in;

    for ( ;; ) {

        if (sn->in_value) {
            need = sn->value.bytes + 2;

            if ((size_t) (b->last - b->pos) < need) {
                mc->need = need;
                return NGX_OK;
            }

            if (b->pos[need - 2] != '\r' || b->pos[need - 1] != '\n') {
                err = "value not followed by CRLF";
                goto bad;
            }

            if (ctx->grown >= NGX_HTTP_MEMQ_GROWN_BUDGET && !sn->give_back) {
                /*
                 * Output grown past the stored values (inflated, or
                 * framed: a message of line breaks is 7 times its size
                 * in sse) waits for the client already: stop here (the
                 * value stays in the buffer, the node is not timed)
                 * until the client took it, so memory per stream is one
                 * batch of values plus the budget and one value.
                 */
                if (ngx_http_memq_send_header(ctx) != NGX_OK) {
                    ngx_http_memq_abort(ctx, NGX_ERROR);
                    return NGX_DONE;
                }

                sn->paused = 1;
                ngx_http_memq_conn_hold(mc);
                ngx_http_memq_run(ctx);
                return NGX_DONE;
            }

            if (sn->reserved) {
                /* a reserved item: its place in max becomes a message, so
                 * messages + reserved never exceeds max */
                sn->reserved--;
                ctx->reserved--;
                take = 1;

            } else if (ctx->max
                       && ctx->stat.messages + ctx->reserved >= ctx->max)
            {
                /* an unreserved item beyond max: it goes back (the only
                 * one of its reply: an unreserved request asks for one) */
                sn->give_back = 1;
                sn->give_id = sn->value.cas;
                take = 0;

            } else {
                take = 1;
            }

            if (take
                && ngx_http_memq_emit(sn, b->pos, sn->value.bytes) != NGX_OK)
            {
                ngx_http_memq_abort(ctx, NGX_ERROR);
                return NGX_DONE;
            }

            b->pos += need;
            mc->need = 0;
            sn->in_value = 0;
            continue;
        }

        /* a length no node can store is a broken reply; one the gateway
         * does not stream is checked below */
        prc = mq_proto_parse_reply((const char *) b->pos, b->last - b->pos,
                                   MQ_ITEM_MAX, &reply, &err);

        if (prc == MQ_AGAIN) {
            return NGX_OK;
        }

        if (prc == MQ_ERROR) {
            goto bad;
        }

        b->pos += reply.consumed;

        if (ngx_http_memq_conn_limit(mc, &reply) == NGX_OK) {
            goto busy;
        }

        if (reply.type == MQ_REPLY_END) {
            break;
        }

        if (ctx->client && sn->state == NGX_HTTP_MEMQ_SN_ABORT
            && (reply.type == MQ_REPLY_TOUCHED
                || reply.type == MQ_REPLY_NOT_FOUND))
        {
            /* the touch that gave back an item beyond max; NOT_FOUND: its
             * lease ran out meanwhile, it is back already */
            break;
        }

        if (reply.type != MQ_REPLY_VALUE || sn->state != NGX_HTTP_MEMQ_SN_BUSY
            || sn->got >= sn->asked)
        {
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V answered \"%*s\"", &sn->node->addr,
                          ngx_min(reply.consumed, 128) - 2,
                          b->pos - reply.consumed);
            err = "unexpected reply";
            goto failed;
        }

        if (reply.key_len != sn->sent_key.len
            || ngx_strncmp(reply.key, sn->sent_key.data, reply.key_len) != 0)
        {
            err = "VALUE for a key not asked for";
            goto bad;
        }

        if (ctx->client && !reply.has_cas) {
            err = "VALUE without a lease id";
            goto bad;
        }

        if (reply.bytes > NGX_HTTP_MEMQ_MAX_VALUE) {
            /*
             * memqd stores items up to its --max-item-size (1g at most);
             * one bigger than the gateway streams is the queue's content,
             * not the node's fault: the node leaves this stream unmarked
             * (the connection is reset, the item goes back), so one item
             * cannot take its node out of every stream
             */
            ngx_log_error(NGX_LOG_WARN, &mc->log, 0,
                          "memq node %V: a value of %uL bytes in \"%V\" is "
                          "over the gateway's limit of %uz, left in the "
                          "queue", &sn->node->addr, reply.bytes, &ctx->key,
                          (size_t) NGX_HTTP_MEMQ_MAX_VALUE);

            ngx_http_memq_node_fail(sn, "value over the gateway's limit", 0);
            ngx_http_memq_run(ctx);
            return NGX_DONE;
        }

        sn->value = reply;
        sn->in_value = 1;
        sn->got++;
    }

    if (b->pos != b->last) {
        err = "bytes after END";
        goto bad;
    }

    /* a complete reply: whatever happens next, the node is not waited for
     * (its read timer goes) until the next request is sent */
    ngx_http_memq_conn_replied(mc);
    sn->answered = 1;
    ngx_http_memq_node_ok(sn->node);

    if (sn->state == NGX_HTTP_MEMQ_SN_ACK
        || sn->state == NGX_HTTP_MEMQ_SN_ABORT)
    {
        sn->open = 0;

        if (sn->state == NGX_HTTP_MEMQ_SN_ACK || ctx->finishing) {
            ngx_http_memq_conn_release(mc);
            sn->mc = NULL;
            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_DONE);

        } else {
            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_IDLE);
        }

        ngx_http_memq_run(ctx);
        return NGX_DONE;
    }

    ctx->reserved -= sn->reserved;
    sn->reserved = 0;

    if (sn->give_back) {
        /* the item stays the next one of the node; ask again (without
         * waiting) once max has room, or end */
        sn->last_empty = 0;

        rc = ngx_http_memq_ask_line(sn, "abort", NGX_HTTP_MEMQ_SN_ABORT);
        if (rc != NGX_OK) {
            ngx_http_memq_send_failed(sn, rc);
        }

        ngx_http_memq_run(ctx);
        return NGX_DONE;
    }

    if (ngx_http_memq_send_header(ctx) != NGX_OK) {
        ngx_http_memq_abort(ctx, NGX_ERROR);
        return NGX_DONE;
    }

    sn->last_empty = (sn->got == 0);

    if (sn->got) {
        /* the /close of this request acknowledged the previous batch; now
         * these are open until the client has them (leased items are open
         * on no connection: nothing to close) */
        sn->open = !ctx->client;
        ctx->deadline = ngx_current_msec + ctx->wait;
        ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_FLUSH);

    } else {
        sn->open = 0;

        if (ctx->wait == 0) {
            sn->drained = 1;
            ngx_http_memq_conn_release(mc);
            sn->mc = NULL;
            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_DONE);

        } else {
            ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_IDLE);
        }
    }

    ngx_http_memq_run(ctx);
    return NGX_DONE;

bad:

    ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                  "memq node %V sent a malformed reply: %s",
                  &sn->node->addr, err);

failed:

    ngx_http_memq_node_fail(sn, err, 1);
    ngx_http_memq_run(ctx);
    return NGX_DONE;

busy:

    /* the node works but has no room for us: its shortage, not a failure
     * (said as the connection's first line; after that, as any other
     * unexpected reply) */
    ngx_log_error(NGX_LOG_WARN, &mc->log, 0,
                  "memq node %V answered \"%*s\"", &sn->node->addr,
                  ngx_min(reply.consumed, 128) - 2, b->pos - reply.consumed);

    ngx_http_memq_node_fail(sn, NGX_HTTP_MEMQ_CONN_LIMIT, 0);
    ngx_http_memq_run(ctx);
    return NGX_DONE;
}


/* a request could not be sent: rc is what the connection attempt said */
static void
ngx_http_memq_send_failed(ngx_http_memq_snode_t *sn, ngx_int_t rc)
{
    if (rc == NGX_BUSY) {
        ngx_http_memq_node_fail(sn, "no free connection in this worker", 0);

    } else {
        ngx_http_memq_node_fail(sn, "connect failed", 1);
    }
}


/*
 * The node leaves this stream: close, count, and go on with the others.
 * mark: the node's own failure (connect, timeout, broken reply), counted
 * against its health; a shortage (ours, or the node's connection limit)
 * is not.  Either way the stream can no longer say that every node is
 * drained.
 */
static void
ngx_http_memq_node_fail(ngx_http_memq_snode_t *sn, const char *reason,
    ngx_uint_t mark)
{
    ngx_uint_t            level;
    ngx_http_memq_ctx_t  *ctx;

    ctx = sn->ctx;
    level = mark ? NGX_LOG_ERR : NGX_LOG_WARN;

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "memq node %V failed: %s", &sn->node->addr, reason);

    if (sn->mc) {
        ngx_http_memq_conn_close(sn->mc);
        sn->mc = NULL;
    }

    ctx->reserved -= sn->reserved;
    sn->reserved = 0;

    sn->open = 0;
    sn->in_value = 0;
    ctx->stat.nodes_failed++;

    if (mark) {
        ctx->marked++;
        ngx_http_memq_node_failed(sn->node, ctx->request->connection->log,
                                  reason);
    }

    ngx_http_memq_set_state(sn, NGX_HTTP_MEMQ_SN_FAILED);
}


/* one message: inflate when flagged, frame, append to the output */
static ngx_int_t
ngx_http_memq_emit(ngx_http_memq_snode_t *sn, u_char *data, size_t len)
{
    u_char                  *p;
    size_t                   raw, dlen, need, written;
    ngx_int_t                rc;
    ngx_uint_t               how;
    ngx_str_t                id, *idp;
    ngx_http_memq_ctx_t     *ctx;
    ngx_http_memq_shnode_t  *shn;
    u_char                   idbuf[NGX_HTTP_MEMQ_ADDR_LEN + NGX_INT64_LEN + 2];

    ctx = sn->ctx;
    shn = ngx_http_memq_shnode(sn->node);
    raw = len;

    if (ctx->conf->inflate && (sn->value.flags & ctx->conf->compress_flag)) {
        rc = ngx_http_memq_inflate(data, len, &ctx->scratch, &dlen,
                                   &ctx->scratch_cap,
                                   ctx->conf->inflate_max_size,
                                   ctx->request->pool);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_OK) {
            data = ctx->scratch;
            len = dlen;

        } else {
            /* passed through untouched, and counted */
            (void) ngx_atomic_fetch_add(&shn->inflate_errors, 1);
            ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                          "memq: value from %V does not inflate within %uz "
                          "bytes, passed through", &sn->node->addr,
                          ctx->conf->inflate_max_size);
        }
    }

    idp = NULL;

    if ((ctx->client || ctx->format == NGX_HTTP_MEMQ_FMT_SSE)
        && sn->value.has_cas)
    {
        id.data = idbuf;
        id.len = ngx_http_memq_write_id(idbuf, &sn->node->addr,
                                        sn->value.cas) - idbuf;
        idp = &id;
    }

    how = NGX_HTTP_MEMQ_JSON_PLAIN;
    need = ngx_http_memq_encode_size(ctx->format, data, len, idp, &how);

    p = ngx_http_memq_reserve(ctx, need);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->cur->buf->last = ngx_http_memq_encode(ctx->format, p, data, len,
                                               idp, how);

    /* what inflating and framing added to the stored bytes */
    written = ctx->cur->buf->last - p;

    if (written > raw) {
        ctx->grown += written - raw;
    }

    if (ctx->client && sn->nids < ctx->conf->batch) {
        sn->ids[sn->nids++] = sn->value.cas;
    }

    ctx->stat.messages++;
    ctx->last_out = ngx_current_msec;

    ngx_http_memq_count_out(shn, raw);

    return NGX_OK;
}


/*
 * Counts a message of raw bytes out of shn; shn NULL: what was counted is
 * added to the shared zone now.  node_reply() adds the messages of a read
 * once: an atomic add a message, on a line both workers write, was half
 * of the worker's time in node_reply().
 */
static void
ngx_http_memq_count_out(ngx_http_memq_shnode_t *shn, size_t raw)
{
    static size_t                   msgs, bytes;
    static ngx_http_memq_shnode_t  *cur;

    if (cur != shn && cur != NULL) {
        (void) ngx_atomic_fetch_add(&cur->msgs_out, msgs);
        (void) ngx_atomic_fetch_add(&cur->bytes_out, bytes);
        msgs = 0;
        bytes = 0;
    }

    cur = shn;

    if (shn) {
        msgs++;
        bytes += raw;
    }
}


/*
 * Room for need bytes at the end of the buffer being filled; a new buffer
 * (recycled from ctx->free when possible) when it has not enough.
 */
static u_char *
ngx_http_memq_reserve(ngx_http_memq_ctx_t *ctx, size_t need)
{
    size_t               size;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (ctx->cur) {
        b = ctx->cur->buf;

        if ((size_t) (b->end - b->last) >= need) {
            return b->last;
        }

        *ctx->last_out_cl = ctx->cur;
        ctx->last_out_cl = &ctx->cur->next;
        ctx->cur = NULL;
    }

    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NULL;
    }

    b = cl->buf;
    size = ngx_max(need, NGX_HTTP_MEMQ_OUT_SIZE);

    if (b->start == NULL || (size_t) (b->end - b->start) < need) {
        if (b->start) {
            ngx_pfree(r->pool, b->start);
        }

        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NULL;
        }

        b->end = b->start + size;
    }

    b->pos = b->start;
    b->last = b->start;
    b->temporary = 1;
    b->flush = 0;
    b->last_buf = 0;
    b->last_in_chain = 0;
    b->tag = (ngx_buf_tag_t) &ngx_http_memq_module;

    cl->next = NULL;
    ctx->cur = cl;

    return b->last;
}


/*
 * Hands pending output to nginx's filters.  NGX_OK: nothing left busy or
 * buffered, every byte is in the socket.  NGX_AGAIN: some is still waiting
 * (a write handler and send_timeout are armed).  NGX_ERROR: the client
 * connection failed.
 */
static ngx_int_t
ngx_http_memq_flush(ngx_http_memq_ctx_t *ctx, ngx_uint_t last)
{
    ngx_int_t                  rc;
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = ctx->request;
    c = r->connection;

    if (ctx->cur && ctx->cur->buf->last != ctx->cur->buf->pos) {
        *ctx->last_out_cl = ctx->cur;
        ctx->last_out_cl = &ctx->cur->next;
        ctx->cur = NULL;
    }

    if (last) {
        if (ctx->out == NULL) {
            /* an empty special buffer: not in memory, only last_buf */
            b = ngx_calloc_buf(r->pool);
            if (b == NULL) {
                return NGX_ERROR;
            }

            cl = ngx_alloc_chain_link(r->pool);
            if (cl == NULL) {
                return NGX_ERROR;
            }

            cl->buf = b;
            cl->next = NULL;
            ctx->out = cl;
            ctx->last_out_cl = &cl->next;
        }

        for (cl = ctx->out; cl->next; cl = cl->next) { /* void */ }

        cl->buf->last_buf = (r == r->main) ? 1 : 0;
        cl->buf->last_in_chain = 1;
    }

    if (ctx->out == NULL && ctx->busy == NULL && !c->buffered
        && !r->buffered)
    {
        ctx->grown = 0;
        return NGX_OK;
    }

    if (!ctx->header_sent) {
        /* nothing may go out before the header */
        return NGX_AGAIN;
    }

    if (ctx->out) {
        for (cl = ctx->out; cl->next; cl = cl->next) { /* void */ }
        cl->buf->flush = 1;
    }

    rc = ngx_http_output_filter(r, ctx->out);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &ctx->out,
                            (ngx_buf_tag_t) &ngx_http_memq_module);
    ctx->last_out_cl = &ctx->out;

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (ctx->busy || c->buffered || r->buffered) {
        if (!c->write->ready || c->write->delayed) {
            if (!c->write->timer_set && !c->write->delayed) {
                ngx_add_timer(c->write, clcf->send_timeout);
            }
        }

        if (ngx_handle_write_event(c->write, clcf->send_lowat) != NGX_OK) {
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    if (c->write->timer_set && !c->write->delayed) {
        ngx_del_timer(c->write);
    }

    ctx->grown = 0;

    return NGX_OK;
}


/* the status line and headers, once, before the first byte of the body */
static ngx_int_t
ngx_http_memq_send_header(ngx_http_memq_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_table_elt_t     *h;
    ngx_http_request_t  *r;

    if (ctx->header_sent) {
        return NGX_OK;
    }

    r = ctx->request;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    r->headers_out.content_type = ngx_http_memq_content_types[ctx->format];
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_http_clear_last_modified(r);
    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_etag(r);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    if (ctx->format == NGX_HTTP_MEMQ_FMT_SSE) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "X-Accel-Buffering");
        ngx_str_set(&h->value, "no");

        ngx_add_timer(&ctx->heartbeat, ctx->conf->sse_heartbeat);

    } else if (r->http_version >= NGX_HTTP_VERSION_11
               && ngx_http_memq_chunked(r))
    {
        /* nodes that could not be reached are named in a trailer */
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Trailer");
        ngx_str_set(&h->value, "Memq-Nodes-Failed");
        r->expect_trailers = 1;
    }

    ctx->header_sent = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return NGX_ERROR;
    }

    /* the header alone would wait for postpone_output: push it out now, a
     * long-polling client should know at once that it is connected */
    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* 1 when nginx will send the stream chunked, so it can carry trailers */
static ngx_uint_t
ngx_http_memq_chunked(ngx_http_request_t *r)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    return clcf->chunked_transfer_encoding ? 1 : 0;
}


/* the stream ended normally: last chunk, then one finalization */
static void
ngx_http_memq_finish(ngx_http_memq_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_uint_t           i, level;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (ctx->heartbeat.timer_set) {
        ngx_del_timer(&ctx->heartbeat);
    }

    ctx->stat.nodes_ok = 0;

    for (i = 0; i < ctx->nnodes; i++) {
        if (ctx->nodes[i].answered
            && ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_FAILED)
        {
            ctx->stat.nodes_ok++;
        }
    }

    if (!ctx->header_sent) {
        /* no node ever answered: failed, or (a warning) short of
         * connections, theirs or ours */
        ctx->done = 1;
        level = ctx->marked ? NGX_LOG_ERR : NGX_LOG_WARN;
        ngx_log_error(level, r->connection->log, 0,
                      "memq cluster \"%V\": no node answered",
                      &ctx->cluster->name);
        ngx_http_memq_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "no healthy node");
        return;
    }

    if (ngx_http_memq_tell_failed(ctx) != NGX_OK) {
        rc = NGX_ERROR;

    } else {
        rc = ngx_http_memq_flush(ctx, 1);
    }

    ctx->done = 1;

    ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
}


/*
 * At the end of a stream, names the nodes that could not be reached (failed
 * during it, or marked down at its start), and, when a graceful shutdown
 * cut a drain short, the nodes that had not said they were empty (else
 * that end would read as a drained queue): SSE gets a last event
 *
 *   event: memq
 *   data: {"nodes_failed":["host:port",...]}
 *
 * ndjson and raw get the trailer "Memq-Nodes-Failed: host:port, ..."
 * (announced by a Trailer header; sent only with chunked encoding, so not
 * to an HTTP/1.0 client).  Nothing is added when every node took part.
 */
static ngx_int_t
ngx_http_memq_tell_failed(ngx_http_memq_ctx_t *ctx)
{
    u_char                *p, *start;
    size_t                 len;
    ngx_uint_t             i, n;
    ngx_table_elt_t       *h;
    ngx_http_request_t    *r;
    ngx_http_memq_node_t  *node, **list;

    r = ctx->request;

    list = ngx_palloc(r->pool, (ctx->nnodes + ctx->nskipped + 1)
                               * sizeof(ngx_http_memq_node_t *));
    if (list == NULL) {
        return NGX_ERROR;
    }

    n = 0;
    len = 0;

    for (i = 0; i < ctx->nnodes + ctx->nskipped; i++) {
        if (i < ctx->nnodes) {
            if (ctx->nodes[i].state != NGX_HTTP_MEMQ_SN_FAILED
                && !(ctx->cut && !ctx->nodes[i].drained))
            {
                continue;
            }

            node = ctx->nodes[i].node;

        } else {
            node = ctx->skipped[i - ctx->nnodes];
        }

        list[n++] = node;
        len += node->addr.len + ngx_escape_json(NULL, node->addr.data,
                                                node->addr.len) + 3;
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (ctx->format == NGX_HTTP_MEMQ_FMT_SSE) {
        len += sizeof("event: memq\ndata: {\"nodes_failed\":[]}\n\n");

        start = ngx_http_memq_reserve(ctx, len);
        if (start == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(start, "event: memq\ndata: {\"nodes_failed\":[",
                       sizeof("event: memq\ndata: {\"nodes_failed\":[") - 1);

        for (i = 0; i < n; i++) {
            if (i) {
                *p++ = ',';
            }

            *p++ = '"';
            p = (u_char *) ngx_escape_json(p, list[i]->addr.data,
                                           list[i]->addr.len);
            *p++ = '"';
        }

        p = ngx_cpymem(p, "]}\n\n", sizeof("]}\n\n") - 1);
        ctx->cur->buf->last = p;

        return NGX_OK;
    }

    if (!r->expect_trailers) {
        return NGX_OK;
    }

    start = ngx_pnalloc(r->pool, len);
    if (start == NULL) {
        return NGX_ERROR;
    }

    p = start;

    for (i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }

        /* addresses are host:port text; keep a header line whole anyway */
        for (len = 0; len < list[i]->addr.len; len++) {
            *p++ = (list[i]->addr.data[len] < 0x21
                    || list[i]->addr.data[len] == 0x7f
                    || list[i]->addr.data[len] == ',')
                   ? '?' : list[i]->addr.data[len];
        }
    }

    h = ngx_list_push(&r->headers_out.trailers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Memq-Nodes-Failed");
    h->value.data = start;
    h->value.len = p - start;

    return NGX_OK;
}


/* the client went away or its connection failed */
static void
ngx_http_memq_abort(ngx_http_memq_ctx_t *ctx, ngx_int_t rc)
{
    ngx_http_request_t  *r;

    if (ctx->done) {
        return;
    }

    r = ctx->request;
    ctx->done = 1;

    if (ctx->heartbeat.timer_set) {
        ngx_del_timer(&ctx->heartbeat);
    }

    if (rc == NGX_HTTP_CLIENT_CLOSED_REQUEST) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "client closed the memq stream after %ui messages",
                      ctx->stat.messages);

        /* logged as 499 even when the 200 went out */
        r->headers_out.status = NGX_HTTP_CLIENT_CLOSED_REQUEST;
    }

    /* the cleanup handler closes the node connections */
    ngx_http_finalize_request(r, rc);
}


/*
 * Read events on the client connection while streaming: an eof (or error)
 * is a client abort, noticed at once even when every node is in a long
 * poll.  With EPOLLRDHUP the kernel says so; otherwise peek one byte.
 */
static void
ngx_http_memq_check_broken(ngx_http_request_t *r)
{
    int                   n;
    char                  buf[1];
    ngx_err_t             err;
    ngx_event_t          *ev;
    ngx_connection_t     *c;
    ngx_http_memq_ctx_t  *ctx;

    c = r->connection;
    ev = c->read;
    ctx = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    if (ctx == NULL || ctx->done) {
        return;
    }

    if (c->error) {
        goto broken;
    }

#if (NGX_HTTP_V2)
    if (r->stream) {
        return;
    }
#endif

#if (NGX_HAVE_EPOLLRDHUP)

    if ((ngx_event_flags & NGX_USE_EPOLL_EVENT) && ngx_use_epoll_rdhup) {
        if (!ev->pending_eof) {
            return;
        }

        ev->eof = 1;
        c->error = 1;
        goto broken;
    }

#endif

    n = recv(c->fd, buf, 1, MSG_PEEK);

    err = ngx_socket_errno;

    if (n > 0) {
        /* a pipelined request: not our business */
        return;
    }

    if (n == -1) {
        if (err == NGX_EAGAIN) {
            if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && ev->active) {
                /* level-triggered: stop until there is something new */
                (void) ngx_del_event(ev, NGX_READ_EVENT, 0);
            }

            return;
        }

        ev->error = 1;

    } else {
        ev->eof = 1;
    }

    c->error = 1;

broken:

    ngx_http_memq_abort(ctx, NGX_HTTP_CLIENT_CLOSED_REQUEST);
}


/* the client connection is writable again (or send_timeout expired) */
static void
ngx_http_memq_writer(ngx_http_request_t *r)
{
    ngx_connection_t     *c;
    ngx_http_memq_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    if (ctx == NULL || ctx->done) {
        return;
    }

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out taking the memq stream");
        c->timedout = 1;
        ngx_http_memq_abort(ctx, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    ngx_http_memq_run(ctx);
}


/* sse: a comment line while idle keeps proxies and clients patient */
static void
ngx_http_memq_heartbeat(ngx_event_t *ev)
{
    u_char               *p;
    ngx_connection_t     *c;
    ngx_http_memq_ctx_t  *ctx;

    ctx = ev->data;
    c = ctx->request->connection;

    if (ctx->done) {
        return;
    }

    if (ngx_current_msec - ctx->last_out >= ctx->conf->sse_heartbeat / 2) {
        p = ngx_http_memq_reserve(ctx, sizeof(": ping\n\n") - 1);
        if (p == NULL) {
            ngx_http_memq_abort(ctx, NGX_ERROR);
            ngx_http_memq_run_posted(c);
            return;
        }

        ctx->cur->buf->last = ngx_cpymem(p, ": ping\n\n", 8);
        ctx->last_out = ngx_current_msec;
    }

    ngx_add_timer(ev, ctx->conf->sse_heartbeat);

    ngx_http_memq_run(ctx);
    ngx_http_memq_run_posted(c);
}


/*
 * Runs when the request is freed, however it ended: node connections still
 * attached are closed (memqd gives their open items back), except clean
 * ones without open items, which are pooled.
 */
static void
ngx_http_memq_cleanup(void *data)
{
    ngx_http_memq_ctx_t *ctx = data;

    ngx_uint_t              i;
    ngx_http_memq_snode_t  *sn;

    ctx->done = 1;

    if (ctx->heartbeat.timer_set) {
        ngx_del_timer(&ctx->heartbeat);
    }

    for (i = 0; i < ctx->nnodes; i++) {
        sn = &ctx->nodes[i];

        if (sn->mc == NULL) {
            continue;
        }

        if (sn->state == NGX_HTTP_MEMQ_SN_IDLE && !sn->open) {
            ngx_http_memq_conn_release(sn->mc);

        } else if (sn->state == NGX_HTTP_MEMQ_SN_FLUSH && sn->nids) {
            ngx_http_memq_give_back(sn);

        } else {
            ngx_http_memq_conn_close(sn->mc);
        }

        sn->mc = NULL;
    }

    for (i = 0; i < ctx->nnodes; i++) {
        ctx->nodes[i].node->refs--;
    }

    ctx->nnodes = 0;

    if (ctx->counted) {
        (void) ngx_atomic_fetch_add(&ctx->cluster->sh->streams_active, -1);
        ctx->counted = 0;
    }

    if (ctx->listed) {
        ngx_queue_remove(&ctx->queue);
        ctx->listed = 0;
    }
}


/*
 * Client mode, the stream ended with a batch of this node not known to be
 * in the socket: its items are given back now ("touch q/<id> 0 noreply",
 * written at once on the node's idle connection, whose reply was read in
 * full), and the connection is closed with a FIN so memqd reads them all.
 * What the socket does not take at once is left to the leases.
 */
static void
ngx_http_memq_give_back(ngx_http_memq_snode_t *sn)
{
    u_char              *p, *last;
    ssize_t              n;
    ngx_uint_t           i, sent;
    ngx_connection_t    *c;
    ngx_http_memq_ctx_t *ctx;
    u_char               buf[4096];

    ctx = sn->ctx;
    c = sn->mc->pc.connection;
    sent = 0;
    i = 0;

    /* a line is at most "touch " + 250 + "/" + 20 + " 0 noreply\r\n" */
    while (i < sn->nids) {
        p = buf;
        last = buf + sizeof(buf) - NGX_HTTP_MEMQ_LINE_SIZE;

        while (i < sn->nids && p < last) {
            p = ngx_sprintf(p, "touch %V/%uL 0 noreply\r\n", &ctx->key,
                            sn->ids[i++]);
        }

        n = c->send(c, buf, p - buf);

        if (n != p - buf) {
            break;
        }

        sent = i;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                  "memq: %ui of %ui unwritten items given back to %V",
                  sent, sn->nids, &sn->node->addr);

    sn->nids = 0;
    ngx_http_memq_conn_close_fin(sn->mc);
}


/*
 * The worker is shutting down gracefully: every stream ends now (its
 * long polls are closed, acknowledged items stay acknowledged, open ones go
 * back), so the worker can exit without waiting for idle timers.
 */
void
ngx_http_memq_streams_exiting(void)
{
    ngx_queue_t          *q, *next;
    ngx_connection_t     *c;
    ngx_http_memq_ctx_t  *ctx;

    if (!ngx_http_memq_streams_init) {
        return;
    }

    for (q = ngx_queue_head(&ngx_http_memq_streams);
         q != ngx_queue_sentinel(&ngx_http_memq_streams);
         q = next)
    {
        /* run() may finalize and unlink this stream, never another */
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_memq_ctx_t, queue);
        c = ctx->request->connection;

        ngx_http_memq_run(ctx);
        ngx_http_memq_run_posted(c);
    }
}
