/*
 * ngx_http_memq_status.c: memq_status, the gateway's view of its clusters.
 *
 * JSON by default, Prometheus text with ?format=prometheus.  Node state and
 * counters come from the shared zones, so they are summed over all workers.
 * With ?queues=1 every listed node is asked for `stats`, one node after the
 * other over the usual node connections, and the per-queue figures are
 * summed per cluster (age_ms is the oldest head, a maximum: a sum of ages
 * means nothing).  A node that does not answer is left out of the sums.
 *
 * Queue stats come as "STAT queue_<q>_<name> <value>"; since '_' may be in
 * a queue name, the field is recognised by its known suffix, longest first.
 */

#include "ngx_http_memq_module.h"

#include <stdarg.h>


typedef struct {
    ngx_str_t                  name;
    uint64_t                   items;
    uint64_t                   open_items;
    uint64_t                   bytes;
    uint64_t                   age_ms;
    uint64_t                   total_items;  /* ever queued */
    uint64_t                   leased_items;
    uint64_t                   dead_lettered_items;
} ngx_http_memq_qstat_t;


typedef struct {
    ngx_http_memq_cluster_t   *cluster;    /* (ref) */
    ngx_array_t                queues;     /* ngx_http_memq_qstat_t */
} ngx_http_memq_cstat_t;


typedef struct {
    ngx_http_memq_rstat_t      stat;       /* first: read by variables */
    ngx_http_request_t        *request;
    ngx_array_t                clusters;   /* ngx_http_memq_cstat_t */
    ngx_uint_t                 ci;         /* cluster being asked */
    ngx_uint_t                 ni;         /* node being asked */
    ngx_http_memq_conn_t      *mc;
    ngx_buf_t                  req;
    unsigned                   prometheus:1;
    unsigned                   queues:1;
    unsigned                   done:1;
} ngx_http_memq_status_ctx_t;


typedef struct {
    ngx_pool_t                *pool;
    u_char                    *start;
    u_char                    *last;
    u_char                    *end;
    ngx_uint_t                 failed;
} ngx_http_memq_sb_t;


static void ngx_http_memq_status_next(ngx_http_memq_status_ctx_t *ctx);
static ngx_int_t ngx_http_memq_status_reply(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);
static void ngx_http_memq_status_qstat(ngx_http_memq_status_ctx_t *ctx,
    u_char *name, size_t len, u_char *value, size_t vlen);
static void ngx_http_memq_status_send(ngx_http_memq_status_ctx_t *ctx);
static void ngx_http_memq_status_json(ngx_http_memq_status_ctx_t *ctx,
    ngx_http_memq_sb_t *sb);
static void ngx_http_memq_status_prometheus(ngx_http_memq_status_ctx_t *ctx,
    ngx_http_memq_sb_t *sb);
static void ngx_http_memq_status_cleanup(void *data);
static void ngx_http_memq_sb_printf(ngx_http_memq_sb_t *sb,
    const char *fmt, ...);
static void ngx_http_memq_sb_json(ngx_http_memq_sb_t *sb, u_char *s,
    size_t len);
static void ngx_http_memq_sb_family(ngx_http_memq_sb_t *sb,
    const char *name, const char *type, const char *help);
static void ngx_http_memq_sb_label(ngx_http_memq_sb_t *sb, u_char *s,
    size_t len);


/* longest first where one ends another: "_leased_items" is not a queue
 * "<q>_leased" with "_items" */
static ngx_str_t  ngx_http_memq_qfields[] = {
    ngx_string("_leased_items"),
    ngx_string("_redelivered_items"),
    ngx_string("_dead_lettered_items"),
    ngx_string("_total_items"),
    ngx_string("_expired_items"),
    ngx_string("_open_items"),
    ngx_string("_items"),
    ngx_string("_bytes"),
    ngx_string("_waiters"),
    ngx_string("_age_ms"),
    ngx_null_string
};


ngx_int_t
ngx_http_memq_status_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_str_t                    v;
    ngx_uint_t                   i;
    ngx_http_cleanup_t          *cln;
    ngx_http_memq_cstat_t       *cs;
    ngx_http_memq_cluster_t    **clp;
    ngx_http_memq_main_conf_t   *mmcf;
    ngx_http_memq_status_ctx_t  *ctx;

    if (r->method & NGX_HTTP_OPTIONS) {
        rc = ngx_http_memq_cors_preflight(r);
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_memq_status_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;

    if (ngx_http_arg(r, (u_char *) "format", 6, &v) == NGX_OK
        && v.len == 10 && ngx_strncmp(v.data, "prometheus", 10) == 0)
    {
        ctx->prometheus = 1;
    }

    if (ngx_http_arg(r, (u_char *) "queues", 6, &v) == NGX_OK
        && v.len == 1 && v.data[0] == '1')
    {
        ctx->queues = 1;
    }

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_memq_module);

    if (ngx_array_init(&ctx->clusters, r->pool, mmcf->clusters.nelts + 1,
                       sizeof(ngx_http_memq_cstat_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    clp = mmcf->clusters.elts;

    for (i = 0; i < mmcf->clusters.nelts; i++) {
        cs = ngx_array_push(&ctx->clusters);
        if (cs == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cs->cluster = clp[i];

        if (ngx_array_init(&cs->queues, r->pool, 8,
                           sizeof(ngx_http_memq_qstat_t))
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ngx_http_set_ctx(r, ctx, ngx_http_memq_module);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_memq_status_cleanup;
    cln->data = ctx;

    r->main->count++;

    if (ctx->queues && r->method == NGX_HTTP_GET) {
        ngx_str_set(&v, "stats\r\n");
        ctx->req.start = v.data;
        ctx->req.end = v.data + v.len;
        ngx_http_memq_status_next(ctx);

    } else {
        ngx_http_memq_status_send(ctx);
    }

    return NGX_DONE;
}


/* asks the next listed node for its stats, or answers when none is left */
static void
ngx_http_memq_status_next(ngx_http_memq_status_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_http_memq_node_t    **np, *node;
    ngx_http_memq_cstat_t    *cs;
    ngx_http_memq_cluster_t  *cl;

    cs = ctx->clusters.elts;

    for ( ;; ) {
        if (ctx->ci >= ctx->clusters.nelts) {
            ngx_http_memq_status_send(ctx);
            return;
        }

        cl = cs[ctx->ci].cluster;

        if (ctx->ni >= cl->nodes.nelts) {
            ctx->ci++;
            ctx->ni = 0;
            continue;
        }

        np = cl->nodes.elts;
        node = np[ctx->ni++];

        if (!ngx_http_memq_node_usable(node)) {
            continue;
        }

        rc = ngx_http_memq_conn_get(node, ctx->request->connection->log,
                                    &ctx->mc);
        if (rc == NGX_ERROR) {
            ngx_http_memq_node_failed(node, ctx->request->connection->log,
                                      "connect failed");
            continue;
        }

        if (rc == NGX_BUSY) {
            /* a shortage of this worker: the node's stats are left out,
             * and it is not marked */
            continue;
        }

        ctx->mc->handler = ngx_http_memq_status_reply;
        ctx->mc->data = ctx;
        ctx->mc->owner_conn = ctx->request->connection;

        ctx->req.pos = ctx->req.start;
        ctx->req.last = ctx->req.end;

        ngx_http_memq_conn_send(ctx->mc, &ctx->req, cl->read_timeout);
        return;
    }
}


static ngx_int_t
ngx_http_memq_status_reply(ngx_http_memq_conn_t *mc, ngx_int_t rc)
{
    ngx_int_t                    prc;
    ngx_buf_t                   *b;
    ngx_uint_t                   level;
    mq_reply_t                   reply;
    const char                  *err;
    ngx_http_memq_status_ctx_t  *ctx;

    ctx = mc->data;

    if (rc == NGX_ERROR) {
        goto failed;
    }

    b = mc->in;

    for ( ;; ) {
        prc = mq_proto_parse_reply((const char *) b->pos, b->last - b->pos,
                                   0, &reply, &err);

        if (prc == MQ_AGAIN) {
            return NGX_OK;
        }

        if (prc == MQ_ERROR) {
            goto failed;
        }

        b->pos += reply.consumed;

        if (reply.type == MQ_REPLY_END) {
            break;
        }

        if (reply.type != MQ_REPLY_STAT) {
            goto failed;
        }

        if (reply.key_len > 6
            && ngx_strncmp(reply.key, "queue_", 6) == 0)
        {
            ngx_http_memq_status_qstat(ctx, (u_char *) reply.key + 6,
                                       reply.key_len - 6,
                                       (u_char *) reply.text,
                                       reply.text_len);
        }
    }

    if (b->pos != b->last) {
        goto failed;
    }

    mc->waiting = 0;
    ngx_http_memq_node_ok(mc->node);
    ngx_http_memq_conn_release(mc);
    ctx->mc = NULL;

    ngx_http_memq_status_next(ctx);
    return NGX_DONE;

failed:

    level = mc->local ? NGX_LOG_WARN : NGX_LOG_ERR;

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "memq node %V: stats failed", &mc->node->addr);

    /* the status is a health check too (the dashboard polls it), but not
     * of this worker's shortages */
    if (!mc->local) {
        ngx_http_memq_node_failed(mc->node, ctx->request->connection->log,
                                  mc->err ? mc->err : "bad stats reply");
    }

    ngx_http_memq_conn_close(mc);
    ctx->mc = NULL;

    ngx_http_memq_status_next(ctx);
    return NGX_DONE;
}


/* adds "<q>_<field>" = value to the cluster being asked */
static void
ngx_http_memq_status_qstat(ngx_http_memq_status_ctx_t *ctx, u_char *name,
    size_t len, u_char *value, size_t vlen)
{
    off_t                   n;
    size_t                  qlen;
    ngx_str_t              *f;
    ngx_uint_t              i;
    ngx_http_memq_qstat_t  *qs;
    ngx_http_memq_cstat_t  *cs;

    for (f = ngx_http_memq_qfields; f->len; f++) {
        if (len > f->len
            && ngx_strncmp(name + len - f->len, f->data, f->len) == 0)
        {
            break;
        }
    }

    if (f->len == 0) {
        return;
    }

    n = ngx_atoof(value, vlen);
    if (n < 0) {
        return;
    }

    qlen = len - f->len;
    cs = &((ngx_http_memq_cstat_t *) ctx->clusters.elts)[ctx->ci];
    qs = cs->queues.elts;

    for (i = 0; i < cs->queues.nelts; i++) {
        if (qs[i].name.len == qlen
            && ngx_strncmp(qs[i].name.data, name, qlen) == 0)
        {
            break;
        }
    }

    if (i == cs->queues.nelts) {
        qs = ngx_array_push(&cs->queues);
        if (qs == NULL) {
            return;
        }

        ngx_memzero(qs, sizeof(ngx_http_memq_qstat_t));

        qs->name.data = ngx_pnalloc(ctx->request->pool, qlen);
        if (qs->name.data == NULL) {
            cs->queues.nelts--;
            return;
        }

        ngx_memcpy(qs->name.data, name, qlen);
        qs->name.len = qlen;

    } else {
        qs = &qs[i];
    }

    switch (f - ngx_http_memq_qfields) {
    case 0:
        qs->leased_items += n;
        break;
    case 2:
        qs->dead_lettered_items += n;
        break;
    case 3:
        qs->total_items += n;
        break;
    case 5:
        qs->open_items += n;
        break;
    case 6:
        qs->items += n;
        break;
    case 7:
        qs->bytes += n;
        break;
    case 9:
        qs->age_ms = ngx_max(qs->age_ms, (uint64_t) n);
        break;
    default:
        break;
    }
}


static void
ngx_http_memq_status_send(ngx_http_memq_status_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_chain_t          out;
    ngx_http_request_t  *r;
    ngx_http_memq_sb_t   sb;

    r = ctx->request;
    ctx->done = 1;

    sb.pool = r->pool;
    sb.failed = 0;
    sb.start = ngx_pnalloc(r->pool, 4096);
    if (sb.start == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    sb.last = sb.start;
    sb.end = sb.start + 4096;

    if (ctx->prometheus) {
        ngx_http_memq_status_prometheus(ctx, &sb);
        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4");

    } else {
        ngx_http_memq_status_json(ctx, &sb);
        ngx_str_set(&r->headers_out.content_type, "application/json");
    }

    if (sb.failed) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = sb.last - sb.start;

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    b->start = sb.start;
    b->pos = sb.start;
    b->last = sb.last;
    b->end = sb.end;
    b->temporary = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}


static const char *
ngx_http_memq_source_name(ngx_http_memq_shnode_t *sn)
{
    if (sn->sources & NGX_HTTP_MEMQ_SRC_STATIC) {
        return "static";
    }

    if (sn->sources & NGX_HTTP_MEMQ_SRC_FILE) {
        return "file";
    }

    return "etcd";
}


static const char *
ngx_http_memq_etcd_state_name(ngx_http_memq_shetcd_t *se)
{
    switch (se->state) {
    case NGX_HTTP_MEMQ_ETCD_UP:
        return "up";
    case NGX_HTTP_MEMQ_ETCD_UNREACHABLE:
        return "unreachable";
    default:
        return "starting";
    }
}


static ngx_uint_t
ngx_http_memq_node_up(ngx_http_memq_shnode_t *sn)
{
    return sn->down_until == 0
           || (ngx_msec_int_t) (sn->down_until - ngx_current_msec) <= 0;
}


/*
 * "<current error or empty>","last_error":"<text>","last_error_at":<unix
 * seconds or null>: the last error stays with its time once the node (or
 * etcd) recovered, the current one clears
 */
static void
ngx_http_memq_status_error(ngx_http_memq_sb_t *sb, ngx_uint_t current,
    u_char *text, size_t len, time_t at)
{
    ngx_http_memq_sb_json(sb, text, current ? len : 0);
    ngx_http_memq_sb_printf(sb, ",\"last_error\":");
    ngx_http_memq_sb_json(sb, text, len);

    if (at) {
        ngx_http_memq_sb_printf(sb, ",\"last_error_at\":%T", at);

    } else {
        ngx_http_memq_sb_printf(sb, ",\"last_error_at\":null");
    }
}


static void
ngx_http_memq_status_json(ngx_http_memq_status_ctx_t *ctx,
    ngx_http_memq_sb_t *sb)
{
    ngx_uint_t                i, j, first;
    ngx_http_memq_sh_t       *sh;
    ngx_http_memq_qstat_t    *qs;
    ngx_http_memq_cstat_t    *cs;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    cs = ctx->clusters.elts;

    ngx_http_memq_sb_printf(sb, "{\"clusters\":[");

    for (i = 0; i < ctx->clusters.nelts; i++) {
        cl = cs[i].cluster;
        sh = cl->sh;

        ngx_http_memq_sb_printf(sb, "%s{\"name\":", i ? "," : "");
        ngx_http_memq_sb_json(sb, cl->name.data, cl->name.len);
        ngx_http_memq_sb_printf(sb, ",\"nodes\":[");

        first = 1;

        for (j = 0; sh && j < NGX_HTTP_MEMQ_MAX_NODES; j++) {
            sn = &sh->nodes[j];

            if (!sn->used || sn->sources == 0) {
                continue;
            }

            ngx_http_memq_sb_printf(sb, "%s{\"addr\":", first ? "" : ",");
            first = 0;
            ngx_http_memq_sb_json(sb, sn->addr, sn->addr_len);
            ngx_http_memq_sb_printf(sb,
                ",\"source\":\"%s\",\"state\":\"%s\",\"weight\":%ui,"
                "\"fails\":%uA,\"error\":",
                ngx_http_memq_source_name(sn),
                ngx_http_memq_node_up(sn) ? "up" : "down",
                sn->weight, sn->failures);
            ngx_http_memq_status_error(sb, sn->erring, sn->last_error,
                                       sn->last_error_len,
                                       sn->last_error_at);
            ngx_http_memq_sb_printf(sb,
                ",\"pool_idle\":%uA,\"pool_busy\":%uA,\"msgs_in\":%uA,"
                "\"msgs_out\":%uA,\"bytes_in\":%uA,\"bytes_out\":%uA,"
                "\"inflate_errors\":%uA}",
                sn->pool_idle, sn->pool_busy, sn->msgs_in, sn->msgs_out,
                sn->bytes_in, sn->bytes_out, sn->inflate_errors);
        }

        ngx_http_memq_sb_printf(sb, "],\"streams_active\":%uA",
                                sh ? sh->streams_active : 0);

        if (cl->etcd && sh) {
            ngx_http_memq_sb_printf(sb,
                ",\"etcd\":{\"state\":\"%s\",\"nodes\":%ui,"
                "\"polls\":%uA,\"failures\":%uA,\"endpoint\":",
                ngx_http_memq_etcd_state_name(&sh->etcd), sh->etcd.nodes,
                sh->etcd.polls, sh->etcd.failures);
            ngx_http_memq_sb_json(sb, sh->etcd.endpoint,
                                  sh->etcd.endpoint_len);
            ngx_http_memq_sb_printf(sb, ",\"error\":");
            ngx_http_memq_status_error(sb,
                sh->etcd.state != NGX_HTTP_MEMQ_ETCD_UP,
                sh->etcd.last_error, sh->etcd.last_error_len,
                sh->etcd.last_error_at);
            ngx_http_memq_sb_printf(sb, "}");
        }

        if (ctx->queues) {
            ngx_http_memq_sb_printf(sb, ",\"queues\":{");

            qs = cs[i].queues.elts;

            for (j = 0; j < cs[i].queues.nelts; j++) {
                ngx_http_memq_sb_printf(sb, "%s", j ? "," : "");
                ngx_http_memq_sb_json(sb, qs[j].name.data, qs[j].name.len);
                ngx_http_memq_sb_printf(sb,
                    ":{\"items\":%uL,\"open_items\":%uL,\"bytes\":%uL,"
                    "\"age_ms\":%uL,\"total_items\":%uL,"
                    "\"leased_items\":%uL,\"dead_lettered_items\":%uL}",
                    qs[j].items, qs[j].open_items, qs[j].bytes,
                    qs[j].age_ms, qs[j].total_items, qs[j].leased_items,
                    qs[j].dead_lettered_items);
            }

            ngx_http_memq_sb_printf(sb, "}");
        }

        ngx_http_memq_sb_printf(sb, "}");
    }

    ngx_http_memq_sb_printf(sb, "]}\n");
}


/*
 * Prometheus text format 0.0.4: every family opens with `# HELP` and
 * `# TYPE`; label values (cluster names, node addresses from a nodes file
 * or etcd, queue names from the nodes' stats) are escaped, so no value can
 * end a label or a line.  Families without a sample (etcd, queues) are
 * left out altogether.
 */
static void
ngx_http_memq_status_prometheus(ngx_http_memq_status_ctx_t *ctx,
    ngx_http_memq_sb_t *sb)
{
    ngx_uint_t                i, j, m;
    ngx_atomic_uint_t         v;
    ngx_http_memq_sh_t       *sh;
    ngx_http_memq_qstat_t    *qs;
    ngx_http_memq_cstat_t    *cs;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    static const char  *metrics[] = {
        "memq_node_up", "gauge",
        "1 when the gateway counts the node as usable, 0 while it is "
        "marked down.",
        "memq_node_messages_in_total", "counter",
        "Messages published to the node through the gateway.",
        "memq_node_messages_out_total", "counter",
        "Messages consumed from the node through the gateway.",
        "memq_node_failures_total", "counter",
        "Failures of the node seen by the gateway (connect, timeout, "
        "broken reply).",
        "memq_pool_idle_connections", "gauge",
        "Idle keepalive connections to the node, over all workers.",
    };

    cs = ctx->clusters.elts;

    for (m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m += 3) {
        ngx_http_memq_sb_family(sb, metrics[m], metrics[m + 1],
                                metrics[m + 2]);

        for (i = 0; i < ctx->clusters.nelts; i++) {
            cl = cs[i].cluster;
            sh = cl->sh;

            for (j = 0; sh && j < NGX_HTTP_MEMQ_MAX_NODES; j++) {
                sn = &sh->nodes[j];

                if (!sn->used || sn->sources == 0) {
                    continue;
                }

                v = m == 0 ? (ngx_atomic_uint_t) ngx_http_memq_node_up(sn)
                    : m == 3 ? sn->msgs_in
                    : m == 6 ? sn->msgs_out
                    : m == 9 ? sn->failures
                    : sn->pool_idle;

                ngx_http_memq_sb_printf(sb, "%s{cluster=\"", metrics[m]);
                ngx_http_memq_sb_label(sb, cl->name.data, cl->name.len);
                ngx_http_memq_sb_printf(sb, "\",node=\"");
                ngx_http_memq_sb_label(sb, sn->addr, sn->addr_len);
                ngx_http_memq_sb_printf(sb, "\"} %uA\n", v);
            }
        }
    }

    ngx_http_memq_sb_family(sb, "memq_streams_active", "gauge",
                            "Consume streams open now, over all workers.");

    for (i = 0; i < ctx->clusters.nelts; i++) {
        cl = cs[i].cluster;
        ngx_http_memq_sb_printf(sb, "memq_streams_active{cluster=\"");
        ngx_http_memq_sb_label(sb, cl->name.data, cl->name.len);
        ngx_http_memq_sb_printf(sb, "\"} %uA\n",
                                cl->sh ? cl->sh->streams_active : 0);
    }

    for (m = 0; m < 2; m++) {
        for (i = 0, j = 0; i < ctx->clusters.nelts; i++) {
            cl = cs[i].cluster;
            sh = cl->sh;

            if (cl->etcd == NULL || sh == NULL) {
                continue;
            }

            if (j++ == 0) {
                if (m) {
                    ngx_http_memq_sb_family(sb, "memq_etcd_nodes", "gauge",
                        "Usable nodes in etcd's last answer (kept while "
                        "etcd is unreachable).");
                } else {
                    ngx_http_memq_sb_family(sb, "memq_etcd_up", "gauge",
                        "1 when the last poll of etcd was answered.");
                }
            }

            ngx_http_memq_sb_printf(sb, "%s{cluster=\"",
                                    m ? "memq_etcd_nodes" : "memq_etcd_up");
            ngx_http_memq_sb_label(sb, cl->name.data, cl->name.len);
            ngx_http_memq_sb_printf(sb, "\"} %ui\n",
                                    m ? sh->etcd.nodes
                                    : (ngx_uint_t) (sh->etcd.state
                                                == NGX_HTTP_MEMQ_ETCD_UP));
        }
    }

    if (!ctx->queues) {
        return;
    }

    ngx_http_memq_sb_family(sb, "memq_queue_items", "gauge",
                            "Items waiting in the queue, summed over the "
                            "nodes that answered.");

    for (i = 0; i < ctx->clusters.nelts; i++) {
        qs = cs[i].queues.elts;

        for (j = 0; j < cs[i].queues.nelts; j++) {
            ngx_http_memq_sb_printf(sb, "memq_queue_items{cluster=\"");
            ngx_http_memq_sb_label(sb, cs[i].cluster->name.data,
                                   cs[i].cluster->name.len);
            ngx_http_memq_sb_printf(sb, "\",queue=\"");
            ngx_http_memq_sb_label(sb, qs[j].name.data, qs[j].name.len);
            ngx_http_memq_sb_printf(sb, "\"} %uL\n", qs[j].items);
        }
    }
}


/* `# HELP` and `# TYPE` of a family; help has no '\\' nor line feed */
static void
ngx_http_memq_sb_family(ngx_http_memq_sb_t *sb, const char *name,
    const char *type, const char *help)
{
    ngx_http_memq_sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help,
                            name, type);
}


/* a Prometheus label value, without its quotes: '\\', '"' and line feed
 * escaped, every other byte as it is */
static void
ngx_http_memq_sb_label(ngx_http_memq_sb_t *sb, u_char *s, size_t len)
{
    u_char  *p, *end, *from;

    end = s + len;

    for (p = s, from = s; p < end; p++) {
        if (*p != '\\' && *p != '"' && *p != '\n') {
            continue;
        }

        if (p > from) {
            ngx_http_memq_sb_printf(sb, "%*s", (size_t) (p - from), from);
        }

        ngx_http_memq_sb_printf(sb, "%s", *p == '\\' ? "\\\\"
                                          : *p == '"' ? "\\\"" : "\\n");
        from = p + 1;
    }

    if (p > from) {
        ngx_http_memq_sb_printf(sb, "%*s", (size_t) (p - from), from);
    }
}


static void
ngx_http_memq_status_cleanup(void *data)
{
    ngx_http_memq_status_ctx_t *ctx = data;

    ctx->done = 1;

    if (ctx->mc) {
        ngx_http_memq_conn_close(ctx->mc);
        ctx->mc = NULL;
    }
}


/* printf into a growing buffer; on allocation failure sets sb->failed */
static void
ngx_http_memq_sb_printf(ngx_http_memq_sb_t *sb, const char *fmt, ...)
{
    u_char   *p, *n;
    size_t    size;
    va_list   args;

    for ( ;; ) {
        if (sb->failed) {
            return;
        }

        va_start(args, fmt);
        p = ngx_vslprintf(sb->last, sb->end, fmt, args);
        va_end(args);

        if (p < sb->end) {
            sb->last = p;
            return;
        }

        /* it may not have fit: grow and write it again */
        size = (sb->end - sb->start) * 2;

        n = ngx_pnalloc(sb->pool, size);
        if (n == NULL) {
            sb->failed = 1;
            return;
        }

        sb->last = ngx_cpymem(n, sb->start, sb->last - sb->start);
        sb->start = n;
        sb->end = n + size;
    }
}


/* a JSON string, quoted and escaped */
static void
ngx_http_memq_sb_json(ngx_http_memq_sb_t *sb, u_char *s, size_t len)
{
    u_char  *p;
    size_t   n, size;

    n = len + ngx_escape_json(NULL, s, len) + 2;

    if (sb->failed) {
        return;
    }

    if ((size_t) (sb->end - sb->last) < n + 1) {
        size = ngx_max((size_t) (sb->end - sb->start) * 2,
                       (size_t) (sb->last - sb->start) + n + 1);

        p = ngx_pnalloc(sb->pool, size);
        if (p == NULL) {
            sb->failed = 1;
            return;
        }

        sb->last = ngx_cpymem(p, sb->start, sb->last - sb->start);
        sb->start = p;
        sb->end = p + size;
    }

    p = sb->last;
    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, s, len);
    *p++ = '"';
    sb->last = p;
}
