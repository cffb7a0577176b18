/*
 * ngx_http_memq_ack.c: POST /mq?topic=Q&op=ack|release|touch[&lease=S]
 * settles items that a client-mode stream delivered (leased on the nodes).
 * The body lists their ids, "<host:port>/<id>", one a line or separated by
 * commas (blanks around an id and empty entries are ignored).
 *
 *   op=ack       "delete q/<id>,<id>,..."  DELETED <n>: n acked, the
 *                                       others of the line not found
 *   op=release   "touch q/<id> 0"       TOUCHED counts as acked (given back)
 *   op=touch     "touch q/<id> <S>"     TOUCHED counts as acked (extended;
 *                                       lease=S seconds, default memq_lease,
 *                                       rounded up to whole seconds)
 *
 * NOT_FOUND (acknowledged already, lease run out, never leased) and an id
 * of a node this gateway does not list count as not_found.  The whole body
 * is checked before anything is sent: one malformed id is a 400 and
 * nothing is done.  At most NGX_HTTP_MEMQ_ACK_BODY_MAX bytes of body and
 * NGX_HTTP_MEMQ_ACK_IDS_MAX ids (413 beyond).
 *
 * The ids are grouped per node; every node gets its commands pipelined on
 * one connection, in windows of at most NGX_HTTP_MEMQ_ACK_WINDOW ids (the
 * next window goes when every reply of the last one is read), and the
 * nodes work concurrently.  op=ack puts as many ids on a delete line as
 * a line of MQ_LINE_MAX bytes holds with the longest ids (85 or more):
 * one command, one reply and one queue lookup on the node for them all;
 * a line of one id is a plain "delete q/<id>" (DELETED or NOT_FOUND).
 * Memory: the ids (16 bytes each) and one window buffer per node, sized
 * by what the node gets.
 *
 *   200 {"acked":A,"not_found":N}
 *   503 {"error":"node failed","status":503,"acked":A,"not_found":N,
 *        "unknown":U}   a node failed: U ids may or may not be settled
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_ACK_BODY_MAX   (1024 * 1024)
#define NGX_HTTP_MEMQ_ACK_IDS_MAX    10000
#define NGX_HTTP_MEMQ_ACK_WINDOW     1000
#define NGX_HTTP_MEMQ_ACK_ADDR_MAX   (NGX_HTTP_MEMQ_ADDR_LEN - 1)
#define NGX_HTTP_MEMQ_ACK_ID_DIGITS  20     /* a u64 */

/* op names, enum members and the command each sends */
#define NGX_HTTP_MEMQ_ACK_OPS(X)                                             \
    X("ack",     NGX_HTTP_MEMQ_OP_ACK,     "delete ")                        \
    X("release", NGX_HTTP_MEMQ_OP_RELEASE, "touch ")                         \
    X("touch",   NGX_HTTP_MEMQ_OP_TOUCH,   "touch ")

typedef enum {
#define NGX_HTTP_MEMQ_OP_ENUM(name, e, cmd) e,
    NGX_HTTP_MEMQ_ACK_OPS(NGX_HTTP_MEMQ_OP_ENUM)
#undef NGX_HTTP_MEMQ_OP_ENUM
    NGX_HTTP_MEMQ_OP_COUNT
} ngx_http_memq_op_e;

static ngx_str_t  ngx_http_memq_op_names[] = {
#define NGX_HTTP_MEMQ_OP_NAME(name, e, cmd) ngx_string(name),
    NGX_HTTP_MEMQ_ACK_OPS(NGX_HTTP_MEMQ_OP_NAME)
#undef NGX_HTTP_MEMQ_OP_NAME
};

static const char  *ngx_http_memq_op_cmds[] = {
#define NGX_HTTP_MEMQ_OP_CMD(name, e, cmd) cmd,
    NGX_HTTP_MEMQ_ACK_OPS(NGX_HTTP_MEMQ_OP_CMD)
#undef NGX_HTTP_MEMQ_OP_CMD
};


typedef struct ngx_http_memq_ack_ctx_s  ngx_http_memq_ack_ctx_t;

/* one id of the body, with the node it names */
typedef struct {
    ngx_uint_t                  node;       /* index in ctx->nodes */
    uint64_t                    id;
} ngx_http_memq_ack_id_t;


/* one node's share of the request */
typedef struct {
    ngx_http_memq_ack_ctx_t    *ctx;        /* (ref) */
    ngx_http_memq_node_t       *node;       /* (ref) */
    ngx_http_memq_conn_t       *mc;         /* NULL when none attached */
    ngx_uint_t                  total;      /* ids for this node */
    ngx_uint_t                  cursor;     /* next index in ctx->ids */
    ngx_uint_t                  settled;    /* replies read, all windows */
    ngx_uint_t                  window;     /* ids in flight */
    ngx_buf_t                   out;        /* the window being sent */
    unsigned                    done:1;
} ngx_http_memq_ack_node_t;


struct ngx_http_memq_ack_ctx_s {
    ngx_http_memq_rstat_t       stat;       /* first: read by variables */
    ngx_http_request_t         *request;
    ngx_http_memq_loc_conf_t   *conf;       /* (ref) */
    ngx_str_t                   key;
    ngx_uint_t                  op;         /* ngx_http_memq_op_e */
    ngx_uint_t                  seconds;    /* op=touch: the new lease */
    ngx_http_memq_ack_id_t     *ids;
    ngx_uint_t                  nids;
    ngx_http_memq_ack_node_t   *nodes;
    ngx_uint_t                  nnodes;
    ngx_uint_t                  pending;    /* nodes not done */
    ngx_uint_t                  acked;
    ngx_uint_t                  not_found;
    ngx_uint_t                  unknown;    /* ids of failed nodes */
    ngx_str_t                   last_addr;  /* (ref) of the last id: the */
    ngx_int_t                   last_node;  /* node found for it, -1 none */
    unsigned                    done:1;     /* finalized */
};


static void ngx_http_memq_ack_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_memq_ack_parse(ngx_http_memq_ack_ctx_t *ctx,
    ngx_str_t *body, ngx_uint_t *status, const char **err);
static u_char *ngx_http_memq_ack_fast_id(ngx_http_memq_ack_ctx_t *ctx,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_memq_ack_parse_id(ngx_http_memq_ack_ctx_t *ctx,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_memq_ack_send(ngx_http_memq_ack_node_t *an);
static ngx_int_t ngx_http_memq_ack_reply(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static void ngx_http_memq_ack_fail(ngx_http_memq_ack_node_t *an,
    const char *reason, ngx_uint_t mark);
static void ngx_http_memq_ack_node_done(ngx_http_memq_ack_node_t *an);
static void ngx_http_memq_ack_answer(ngx_http_memq_ack_ctx_t *ctx);
static void ngx_http_memq_ack_cleanup(void *data);


/* a POST with an op= argument is not a publish */
ngx_uint_t
ngx_http_memq_ack_wanted(ngx_http_request_t *r)
{
    ngx_str_t  v;

    return ngx_http_arg(r, (u_char *) "op", 2, &v) == NGX_OK;
}


/*
 * A lease argument: seconds with up to three decimals, more than 0 and at
 * most MQ_LEASE_MS_MAX ms.  NGX_OK with *ms set, else NGX_ERROR.
 */
ngx_int_t
ngx_http_memq_parse_lease(ngx_str_t *v, ngx_msec_t *ms)
{
    ngx_int_t  n;

    if (v->len == 0 || v->len > 16) {
        return NGX_ERROR;
    }

    n = ngx_atofp(v->data, v->len, 3);

    if (n == NGX_ERROR || n == 0 || n > MQ_LEASE_MS_MAX) {
        return NGX_ERROR;
    }

    *ms = (ngx_msec_t) n;

    return NGX_OK;
}


/* the content handler for POST ...&op= */
ngx_int_t
ngx_http_memq_ack(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  v;
    ngx_msec_t                 lease;
    ngx_uint_t                 i;
    const char                *err;
    ngx_http_cleanup_t        *cln;
    ngx_http_memq_ack_ctx_t   *ctx;
    ngx_http_memq_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_memq_ack_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->conf = mlcf;

    ngx_http_set_ctx(r, ctx, ngx_http_memq_module);

    err = NULL;

    (void) ngx_http_arg(r, (u_char *) "op", 2, &v);

    for (i = 0; i < NGX_HTTP_MEMQ_OP_COUNT; i++) {
        if (v.len == ngx_http_memq_op_names[i].len
            && ngx_strncmp(v.data, ngx_http_memq_op_names[i].data, v.len)
               == 0)
        {
            break;
        }
    }

    ctx->op = i;

    if (i == NGX_HTTP_MEMQ_OP_COUNT) {
        err = "bad op";
    }

    lease = mlcf->lease;

    if (err == NULL
        && ngx_http_arg(r, (u_char *) "lease", 5, &v) == NGX_OK
        && ngx_http_memq_parse_lease(&v, &lease) != NGX_OK)
    {
        err = "bad lease";
    }

    /* touch takes whole seconds: a fraction is rounded up */
    ctx->seconds = (lease + 999) / 1000;

    if (err == NULL) {
        rc = ngx_http_memq_get_key(r, mlcf, &ctx->key);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED) {
            err = ctx->key.len ? "bad key" : "missing key";
        }
    }

    if (err) {
        /* answered before the body is read: nothing reaches a node */
        ctx->done = 1;
        r->main->count++;
        ngx_http_memq_json_error(r, NGX_HTTP_BAD_REQUEST, err);
        return NGX_DONE;
    }

    if (r->headers_in.content_length_n > NGX_HTTP_MEMQ_ACK_BODY_MAX) {
        ctx->done = 1;
        r->main->count++;
        ngx_http_memq_json_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "body too large");
        return NGX_DONE;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_memq_ack_cleanup;
    cln->data = ctx;

    rc = ngx_http_read_client_request_body(r, ngx_http_memq_ack_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* the whole body is here: check every id, then start every node */
static void
ngx_http_memq_ack_body(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  body;
    ngx_uint_t                 i, status;
    const char                *err;
    ngx_http_memq_ack_ctx_t   *ctx;
    ngx_http_memq_ack_node_t  *an;

    ctx = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    /* a chunked body's length is known only now (nginx counts it in
     * content_length_n): a body over the limit is refused before it is
     * copied, whatever client_max_body_size let through */
    if (r->headers_in.content_length_n <= NGX_HTTP_MEMQ_ACK_BODY_MAX
        && ngx_http_memq_body_bytes(r, &body) != NGX_OK)
    {
        ctx->done = 1;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    status = NGX_HTTP_BAD_REQUEST;

    if (r->headers_in.content_length_n > NGX_HTTP_MEMQ_ACK_BODY_MAX
        || body.len > NGX_HTTP_MEMQ_ACK_BODY_MAX)
    {
        status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        err = "body too large";

    } else {
        err = NULL;

        if (ngx_http_memq_ack_parse(ctx, &body, &status, &err) == NGX_ERROR
            && err == NULL)
        {
            ctx->done = 1;
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    if (err) {
        ctx->done = 1;
        ngx_http_memq_json_error(r, status, err);
        return;
    }

    /* every node counts before any starts: a node failing at once must
     * not see the others' share as finished */
    for (i = 0; i < ctx->nnodes; i++) {
        if (ctx->nodes[i].total) {
            ctx->pending++;
        }
    }

    if (ctx->pending == 0) {
        /* every id named a node this gateway does not list */
        ngx_http_memq_ack_answer(ctx);
        return;
    }

    /* the last node to start may fail at once and answer: with a body
     * read in an event of its own, that would free the request under
     * this loop, so the loop holds a reference of its own */
    r->main->count++;

    for (i = 0; i < ctx->nnodes; i++) {
        an = &ctx->nodes[i];

        if (an->total == 0) {
            continue;
        }

        rc = ngx_http_memq_ack_send(an);

        if (rc == NGX_BUSY) {
            ngx_http_memq_ack_fail(an, "no free connection in this worker",
                                   0);

        } else if (rc != NGX_OK) {
            ngx_http_memq_ack_fail(an, "connect failed", 1);
        }
    }

    ngx_http_finalize_request(r, NGX_DONE);
}


/*
 * Splits the body into ids, checks each and finds its node.  NGX_OK with
 * ctx->ids, ctx->nodes (every listed node, with its count) and not_found
 * set; NGX_ERROR with *err and *status for the client's mistakes, or
 * without *err when memory ran out.
 */
static ngx_int_t
ngx_http_memq_ack_parse(ngx_http_memq_ack_ctx_t *ctx, ngx_str_t *body,
    ngx_uint_t *status, const char **err)
{
    u_char                    *p, *s, *e, *last;
    size_t                     n;
    ngx_int_t                  rc;
    ngx_uint_t                 count, i;
    ngx_http_request_t        *r;
    ngx_http_memq_node_t     **np;
    ngx_http_memq_cluster_t   *cl;
    u_char                     quoted[NGX_HTTP_MEMQ_LOG_QUOTE * 3];

    r = ctx->request;
    cl = ctx->conf->cluster;
    last = body->data + body->len;

    /* the shortest id, "a:1/1", and its separator take 6 bytes */
    count = ngx_min(body->len / 6 + 1, NGX_HTTP_MEMQ_ACK_IDS_MAX);

    ctx->ids = ngx_palloc(r->pool, count * sizeof(ngx_http_memq_ack_id_t));
    ctx->nodes = ngx_pcalloc(r->pool, (cl->nodes.nelts + 1)
                                      * sizeof(ngx_http_memq_ack_node_t));

    if (ctx->ids == NULL || ctx->nodes == NULL) {
        return NGX_ERROR;
    }

    np = cl->nodes.elts;

    for (i = 0; i < cl->nodes.nelts; i++) {
        ctx->nodes[i].ctx = ctx;
        ctx->nodes[i].node = np[i];
    }

    ctx->nnodes = cl->nodes.nelts;

    for (p = body->data; p < last; p = e + 1) {

        e = ngx_http_memq_ack_fast_id(ctx, p, last);

        if (e != NULL) {
            continue;
        }

        e = p;

        while (e < last && *e != ',' && *e != '\n') {
            e++;
        }

        /* blanks (and the CR of a CRLF) around an id are not part of it */
        s = p;

        while (s < e && (*s == ' ' || *s == '\t' || *s == '\r')) {
            s++;
        }

        p = e;

        while (p > s && (p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\r')) {
            p--;
        }

        if (s == p) {
            continue;
        }

        if (ctx->nids + ctx->not_found == NGX_HTTP_MEMQ_ACK_IDS_MAX) {
            *status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            *err = "too many ids";
            return NGX_ERROR;
        }

        rc = ngx_http_memq_ack_parse_id(ctx, s, p);

        if (rc != NGX_OK) {
            n = ngx_http_memq_log_quote(quoted, s, p - s);
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "memq: malformed id \"%*s\"", n, quoted);
            *status = NGX_HTTP_BAD_REQUEST;
            *err = "bad id";
            return NGX_ERROR;
        }
    }

    if (ctx->nids + ctx->not_found == 0) {
        *status = NGX_HTTP_BAD_REQUEST;
        *err = "no ids";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The common shape, in one pass: the address of the id before (of a node
 * this gateway lists), '/', at most 19 digits (no overflow), then ',',
 * LF or the end, with no room left for doubt.  Kept as parse_id() keeps
 * it; returns the separator, or NULL to leave the id to the full parser.
 */
static u_char *
ngx_http_memq_ack_fast_id(ngx_http_memq_ack_ctx_t *ctx, u_char *p,
    u_char *last)
{
    u_char    *q, *d;
    size_t     alen;
    uint64_t   id;

    alen = ctx->last_addr.len;

    if (ctx->last_node < 0 || ctx->last_addr.data == NULL
        || (size_t) (last - p) <= alen + 1 || p[alen] != '/'
        || ngx_memcmp(p, ctx->last_addr.data, alen) != 0
        || ctx->nids + ctx->not_found == NGX_HTTP_MEMQ_ACK_IDS_MAX)
    {
        return NULL;
    }

    q = p + alen + 1;
    id = 0;

    for (d = q; d < last && d - q < 19 && *d >= '0' && *d <= '9'; d++) {
        id = id * 10 + (*d - '0');
    }

    if (d == q || (d < last && *d != ',' && *d != '\n')) {
        return NULL;
    }

    ctx->nodes[ctx->last_node].total++;
    ctx->ids[ctx->nids].node = ctx->last_node;
    ctx->ids[ctx->nids].id = id;
    ctx->nids++;

    return d;
}


/*
 * One id "<host:port>/<digits>" at p..last: its node's share is counted
 * and the id kept, or, for a node this gateway does not list, it counts
 * as not_found.  NGX_ERROR when malformed.
 */
static ngx_int_t
ngx_http_memq_ack_parse_id(ngx_http_memq_ack_ctx_t *ctx, u_char *p,
    u_char *last)
{
    u_char                    *slash, *colon, *q;
    uint64_t                   id;
    ngx_uint_t                 i;
    ngx_http_memq_node_t      *node;
    ngx_http_memq_ack_node_t  *an;

    slash = NULL;

    for (q = last; q > p; q--) {
        if (q[-1] == '/') {
            slash = q - 1;
            break;
        }
    }

    if (slash == NULL || slash == p
        || slash - p > NGX_HTTP_MEMQ_ACK_ADDR_MAX
        || last - slash - 1 < 1
        || last - slash - 1 > NGX_HTTP_MEMQ_ACK_ID_DIGITS)
    {
        return NGX_ERROR;
    }

    id = 0;

    for (q = slash + 1; q < last; q++) {
        if (*q < '0' || *q > '9') {
            return NGX_ERROR;
        }

        if (id > (UINT64_MAX - (*q - '0')) / 10) {
            return NGX_ERROR;
        }

        id = id * 10 + (*q - '0');
    }

    /* ids come in runs of one node: an address like the last one was
     * checked and looked up already */
    if (ctx->last_addr.data == NULL
        || ctx->last_addr.len != (size_t) (slash - p)
        || ngx_memcmp(ctx->last_addr.data, p, slash - p) != 0)
    {
        /* host:port as the gateway writes it: a name or an address, ':' and
         * the port; anything else cannot be one of its nodes */
        for (q = p; q < slash; q++) {
            if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')
                  || (*q >= '0' && *q <= '9') || *q == '.' || *q == ':'
                  || *q == '-' || *q == '_' || *q == '[' || *q == ']'))
            {
                return NGX_ERROR;
            }
        }

        /* a host before the last ':', 1-5 digits of port after it: an id
         * takes at least 5 bytes ("a:1/1"), which sizes ctx->ids */
        colon = NULL;

        for (q = slash; q > p; q--) {
            if (q[-1] == ':') {
                colon = q - 1;
                break;
            }
        }

        if (colon == NULL || colon == p || slash - colon - 1 < 1
            || slash - colon - 1 > 5)
        {
            return NGX_ERROR;
        }

        for (q = colon + 1; q < slash; q++) {
            if (*q < '0' || *q > '9') {
                return NGX_ERROR;
            }
        }

        ctx->last_addr.data = p;
        ctx->last_addr.len = slash - p;
        ctx->last_node = -1;

        node = ngx_http_memq_node_find(ctx->conf->cluster, p, slash - p);

        for (i = 0; node && node->sources && i < ctx->nnodes; i++) {
            if (ctx->nodes[i].node == node) {
                ctx->last_node = i;
                break;
            }
        }
    }

    if (ctx->last_node < 0) {
        ctx->not_found++;
        return NGX_OK;
    }

    i = ctx->last_node;
    an = &ctx->nodes[i];
    an->total++;

    ctx->ids[ctx->nids].node = i;
    ctx->ids[ctx->nids].id = id;
    ctx->nids++;

    return NGX_OK;
}


/* op=ack: ids on a delete line, every line but a window's last full:
 * as many of the longest ids as fit in MQ_LINE_MAX, at most
 * MQ_ACK_IDS_MAX; 1 for the other ops. */
static ngx_uint_t
ngx_http_memq_ack_per_line(ngx_http_memq_ack_ctx_t *ctx)
{
    size_t  room;

    if (ctx->op != NGX_HTTP_MEMQ_OP_ACK) {
        return 1;
    }

    /* "delete <key>/" then "<id>," a line; names are at most 250 bytes
     * (ngx_http_memq_get_key() checked it), so room holds 85 or more */
    room = MQ_LINE_MAX - (sizeof("delete /") - 1) - ctx->key.len;
    room /= NGX_HTTP_MEMQ_ACK_ID_DIGITS + 1;

    return ngx_max(ngx_min(room, MQ_ACK_IDS_MAX), 1);
}


/*
 * Sends the node its next window: up to NGX_HTTP_MEMQ_ACK_WINDOW of its
 * ids, pipelined.  NGX_ERROR (or NGX_BUSY: no connection in this
 * worker) when no connection could be had.
 */
static ngx_int_t
ngx_http_memq_ack_send(ngx_http_memq_ack_node_t *an)
{
    u_char                   *p;
    size_t                    size;
    ngx_int_t                 rc;
    ngx_uint_t                n, k, want, per;
    size_t                    cmdlen;
    const char               *cmd;
    ngx_http_memq_ack_ctx_t  *ctx;

    ctx = an->ctx;
    cmd = ngx_http_memq_op_cmds[ctx->op];
    cmdlen = ngx_strlen(cmd);
    want = ngx_min(an->total - an->settled, NGX_HTTP_MEMQ_ACK_WINDOW);

    if (an->out.start == NULL) {
        /* "touch " key "/" id " " seconds "\r\n", sized once */
        size = ngx_min(an->total, NGX_HTTP_MEMQ_ACK_WINDOW)
               * (sizeof("delete /  \r\n") + ctx->key.len
                  + NGX_HTTP_MEMQ_ACK_ID_DIGITS + NGX_INT_T_LEN);

        an->out.start = ngx_palloc(ctx->request->pool, size);
        if (an->out.start == NULL) {
            return NGX_ERROR;
        }

        an->out.end = an->out.start + size;
        an->out.temporary = 1;
    }

    if (an->mc == NULL) {
        rc = ngx_http_memq_conn_get(an->node, ctx->request->connection->log,
                                    &an->mc);
        if (rc == NGX_ERROR || rc == NGX_BUSY) {
            return rc;
        }

        an->mc->handler = ngx_http_memq_ack_reply;
        an->mc->data = an;
        an->mc->owner_conn = ctx->request->connection;
    }

    p = an->out.start;
    per = ngx_http_memq_ack_per_line(ctx);
    k = 0;

    /* "<cmd> <key>/<id>[,<id>...][ <seconds>]\r\n"; the buffer holds a
     * line an id, so it holds these */
    for (n = 0; n < want; an->cursor++) {
        if (ctx->ids[an->cursor].node != (ngx_uint_t) (an - ctx->nodes)) {
            continue;
        }

        if (k == 0) {
            p = ngx_cpymem(p, cmd, cmdlen);
            p = ngx_http_memq_write_id(p, &ctx->key,
                                       ctx->ids[an->cursor].id);
        } else {
            *p++ = ',';
            p = ngx_http_memq_write_uint(p, ctx->ids[an->cursor].id);
        }

        n++;

        if (++k < per && n < want) {
            continue;
        }

        if (ctx->op != NGX_HTTP_MEMQ_OP_ACK) {
            p = ngx_sprintf(p, " %ui", ctx->op == NGX_HTTP_MEMQ_OP_TOUCH
                                       ? ctx->seconds : 0);
        }

        *p++ = '\r';
        *p++ = '\n';
        k = 0;
    }

    an->window = n;
    an->out.pos = an->out.start;
    an->out.last = p;
    an->mc->need = 0;

    ngx_http_memq_conn_send(an->mc, &an->out,
                            ctx->conf->cluster->read_timeout);

    return NGX_OK;
}


/* the connection handler: one reply a line, in order */
static ngx_int_t
ngx_http_memq_ack_reply(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    ngx_int_t                  prc;
    ngx_uint_t                 k;
    ngx_buf_t                 *b;
    mq_reply_t                 reply;
    const char                *err;
    ngx_http_memq_ack_ctx_t   *ctx;
    ngx_http_memq_ack_node_t  *an;

    an = mc->data;
    ctx = an->ctx;

    if (rc == NGX_ERROR) {
        ngx_http_memq_ack_fail(an, mc->err, !mc->local);
        return NGX_DONE;
    }

    b = mc->in;

    while (an->window) {
        prc = mq_proto_parse_reply((const char *) b->pos, b->last - b->pos,
                                   0, &reply, &err);

        if (prc == MQ_AGAIN) {
            return NGX_OK;
        }

        if (prc == MQ_ERROR) {
            goto bad;
        }

        /* the ids of this line: every line of a window but its last
         * is full */
        k = ngx_min(ngx_http_memq_ack_per_line(ctx), an->window);

        if (k == an->window && reply.consumed != (size_t) (b->last - b->pos))
        {
            /* the window's last line answered, and more after it: which
             * reply is this line's is unknown, so the line is too */
            err = "bytes after the last reply";
            goto bad;
        }

        if (reply.type == MQ_REPLY_NOT_FOUND && k == 1) {
            ctx->not_found++;

        } else if (ctx->op == NGX_HTTP_MEMQ_OP_ACK
                   && reply.type == MQ_REPLY_DELETED
                   && (k == 1 ? !reply.has_count
                              : reply.has_count && reply.count <= k))
        {
            if (k == 1) {
                ctx->acked++;

            } else {
                ctx->acked += reply.count;
                ctx->not_found += k - reply.count;
            }

        } else if (ctx->op != NGX_HTTP_MEMQ_OP_ACK
                   && reply.type == MQ_REPLY_TOUCHED)
        {
            ctx->acked++;

        } else {
            ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                          "memq node %V answered \"%*s\"", &an->node->addr,
                          ngx_min(reply.consumed, 128) - 2, b->pos);
            ngx_http_memq_ack_fail(an, "unexpected reply",
                                   reply.type != MQ_REPLY_SERVER_ERROR);
            return NGX_DONE;
        }

        b->pos += reply.consumed;
        an->window -= k;
        an->settled += k;
    }

    ngx_http_memq_conn_replied(mc);
    ngx_http_memq_node_ok(an->node);

    if (an->settled < an->total) {
        if (ngx_http_memq_ack_send(an) != NGX_OK) {
            ngx_http_memq_ack_fail(an, "out of memory", 0);
        }

        return NGX_DONE;
    }

    ngx_http_memq_conn_release(mc);
    an->mc = NULL;
    ctx->stat.nodes_ok++;
    ngx_http_memq_ack_node_done(an);

    return NGX_DONE;

bad:

    ngx_log_error(NGX_LOG_ERR, &mc->log, 0,
                  "memq node %V sent a malformed reply: %s",
                  &an->node->addr, err);

    ngx_http_memq_ack_fail(an, err, 1);
    return NGX_DONE;
}


/*
 * The node leaves the request: what it did not answer is unknown.  mark:
 * the node's own failure, counted against its health.
 */
static void
ngx_http_memq_ack_fail(ngx_http_memq_ack_node_t *an, const char *reason,
    ngx_uint_t mark)
{
    ngx_uint_t                level;
    ngx_http_memq_ack_ctx_t  *ctx;

    ctx = an->ctx;
    level = mark ? NGX_LOG_ERR : NGX_LOG_WARN;

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "memq node %V failed: %s", &an->node->addr, reason);

    if (an->mc) {
        ngx_http_memq_conn_close(an->mc);
        an->mc = NULL;
    }

    ctx->unknown += an->total - an->settled;
    ctx->stat.nodes_failed++;

    if (mark) {
        ngx_http_memq_node_failed(an->node, ctx->request->connection->log,
                                  reason);
    }

    ngx_http_memq_ack_node_done(an);
}


static void
ngx_http_memq_ack_node_done(ngx_http_memq_ack_node_t *an)
{
    ngx_http_memq_ack_ctx_t  *ctx;

    ctx = an->ctx;
    an->done = 1;

    if (--ctx->pending == 0) {
        ngx_http_memq_ack_answer(ctx);
    }
}


/* every node answered or failed: 200, or 503 with what is known */
static void
ngx_http_memq_ack_answer(ngx_http_memq_ack_ctx_t *ctx)
{
    u_char              *p;
    ngx_uint_t           status;
    ngx_http_request_t  *r;
    u_char               body[160];

    if (ctx->done) {
        return;
    }

    r = ctx->request;
    ctx->done = 1;
    ctx->stat.messages = ctx->acked;

    if (ctx->unknown) {
        status = NGX_HTTP_SERVICE_UNAVAILABLE;
        p = ngx_snprintf(body, sizeof(body),
                         "{\"error\":\"node failed\",\"status\":503,"
                         "\"acked\":%ui,\"not_found\":%ui,\"unknown\":%ui}\n",
                         ctx->acked, ctx->not_found, ctx->unknown);

    } else {
        status = NGX_HTTP_OK;
        p = ngx_snprintf(body, sizeof(body),
                         "{\"acked\":%ui,\"not_found\":%ui}\n",
                         ctx->acked, ctx->not_found);
    }

    (void) ngx_http_memq_send_json(r, status, body, p - body);
}


/* however the request ends: node connections still attached are closed */
static void
ngx_http_memq_ack_cleanup(void *data)
{
    ngx_http_memq_ack_ctx_t *ctx = data;

    ngx_uint_t  i;

    ctx->done = 1;

    for (i = 0; i < ctx->nnodes; i++) {
        if (ctx->nodes[i].mc) {
            ngx_http_memq_conn_close(ctx->nodes[i].mc);
            ctx->nodes[i].mc = NULL;
        }
    }
}
