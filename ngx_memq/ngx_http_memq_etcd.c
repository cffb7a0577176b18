/*
 * ngx_http_memq_etcd.c: nodes learnt from etcd.  Every worker follows
 * the cluster's prefix (/memq/<cluster>/nodes/ unless told otherwise)
 * through etcd's v3 HTTP/JSON gateway by short polling:
 *
 *   timer ──► connect ──► send POST /v3/kv/range ──► read to eof ──► apply
 *     ▲         │ fails, timeout, bad answer: next URL of the list       │
 *     │         └─ every URL failed: unreachable, last list stays ───────┤
 *     └───────────────────────── interval (1s) ◄─────────────────────────┘
 *
 * One poll at a time per cluster and worker, over the worker's own
 * connection (ngx_event_connect_peer, non-blocking, timers on its events);
 * the request is HTTP/1.0, so the answer ends at eof.  Values are JSON
 * written by memqd, {"addr":"host:port","weight":N}; a key without a usable
 * value names its node by the part after the prefix.  Node hosts must be
 * IP addresses: a worker never resolves names.
 *
 * Applying an answer: every node loses the etcd source bit, the nodes in
 * the answer get it back (ngx_http_memq_node_add).  A node left with no
 * source is no longer chosen, its pooled connections are closed, streams
 * that already use it go on with it until they end.  When etcd cannot be
 * reached the bits stay as they were: the last known list is in force.
 *
 * The state (up, unreachable, last error, nodes listed) is kept in the
 * cluster's shared zone for memq_status.  nginx's own error messages
 * about the etcd connection are kept quiet (its log copy only passes
 * [crit] and worse): losing etcd is logged once as a warning, its return
 * as a notice, and the status says it all along.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_ETCD_INTERVAL   1000
#define NGX_HTTP_MEMQ_ETCD_IN_SIZE    4096
#define NGX_HTTP_MEMQ_ETCD_MAX_REPLY  (1024 * 1024)
#define NGX_HTTP_MEMQ_ETCD_PORT       2379


typedef struct {
    ngx_str_t                 url;         /* as configured */
    ngx_str_t                 host;        /* "host:port", Host header */
    struct sockaddr          *sockaddr;
    socklen_t                 socklen;
} ngx_http_memq_etcd_url_t;


struct ngx_http_memq_etcd_s {
    ngx_http_memq_cluster_t  *cluster;     /* (ref) */
    ngx_array_t               urls;        /* ngx_http_memq_etcd_url_t */
    ngx_str_t                 prefix;
    ngx_str_t                 body;        /* the range request's JSON */
    ngx_msec_t                interval;

    /* per worker, at run time */
    ngx_event_t               timer;
    ngx_peer_connection_t     pc;
    ngx_pool_t               *pool;        /* one poll's memory */
    ngx_buf_t                *out;
    ngx_buf_t                *in;
    ngx_log_t                 log;         /* quiet copy for the connection */
    ngx_uint_t                current;     /* URL in use */
    ngx_uint_t                tried;       /* URLs failed this round */
    uint32_t                  crc;         /* of the list last applied */
    unsigned                  applied:1;   /* an answer was applied */
    unsigned                  unreachable:1;
    unsigned                  connecting:1;
    unsigned                  sent:1;
};


static void ngx_http_memq_etcd_timer(ngx_event_t *ev);
static void ngx_http_memq_etcd_connect(ngx_http_memq_etcd_t *et);
static void ngx_http_memq_etcd_event(ngx_event_t *ev);
static void ngx_http_memq_etcd_write(ngx_http_memq_etcd_t *et);
static void ngx_http_memq_etcd_read(ngx_http_memq_etcd_t *et);
static void ngx_http_memq_etcd_done(ngx_http_memq_etcd_t *et);
static void ngx_http_memq_etcd_fail(ngx_http_memq_etcd_t *et,
    const char *reason, ngx_err_t err);
static void ngx_http_memq_etcd_close(ngx_http_memq_etcd_t *et);
static void ngx_http_memq_etcd_next(ngx_http_memq_etcd_t *et);
static const char *ngx_http_memq_etcd_body(ngx_buf_t *b, ngx_str_t *body);
static const char *ngx_http_memq_etcd_apply(ngx_http_memq_etcd_t *et,
    ngx_str_t *json);
static ngx_int_t ngx_http_memq_etcd_entry(ngx_http_memq_etcd_t *et,
    ngx_str_t *kv, ngx_str_t *addr, ngx_int_t *weight, ngx_str_t *err);
static void ngx_http_memq_etcd_state(ngx_http_memq_etcd_t *et,
    ngx_uint_t state, ngx_uint_t nodes, u_char *err, size_t len);

static u_char *ngx_http_memq_json_ws(u_char *p, u_char *last);
static u_char *ngx_http_memq_json_skip(u_char *p, u_char *last,
    ngx_uint_t depth);
static ngx_int_t ngx_http_memq_json_member(ngx_str_t *obj, const char *name,
    ngx_str_t *value);
static ngx_int_t ngx_http_memq_json_string(ngx_str_t *value, ngx_str_t *s);
static ngx_int_t ngx_http_memq_json_next(ngx_str_t *arr, u_char **pos,
    ngx_str_t *elt);


/*
 * A worker starts: poll at once, then every interval.  Nodes that the
 * previous worker generation had from etcd (kept in the shared zone over
 * a reload) are in force until the first answer.
 */
void
ngx_http_memq_etcd_init_process(ngx_http_memq_cluster_t *cl,
    ngx_cycle_t *cycle)
{
    ngx_http_memq_etcd_t     *et;

    et = cl->etcd;

    et->log = *cycle->log;
    et->log.log_level = NGX_LOG_CRIT;
    et->log.next = NULL;

    ngx_http_memq_etcd_seed(cl, cycle->log);

    et->timer.handler = ngx_http_memq_etcd_timer;
    et->timer.data = et;
    et->timer.log = cycle->log;
    et->timer.cancelable = 1;

    ngx_add_timer(&et->timer, 1);
}


static void
ngx_http_memq_etcd_timer(ngx_event_t *ev)
{
    ngx_http_memq_etcd_t  *et;

    et = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    et->tried = 0;
    ngx_http_memq_etcd_connect(et);
}


/* one attempt at the current URL */
static void
ngx_http_memq_etcd_connect(ngx_http_memq_etcd_t *et)
{
    u_char                    *p;
    ngx_err_t                  err;
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_http_memq_cluster_t   *cl;
    ngx_http_memq_etcd_url_t  *u;

    cl = et->cluster;
    u = &((ngx_http_memq_etcd_url_t *) et->urls.elts)[et->current];

    et->pool = ngx_create_pool(NGX_HTTP_MEMQ_ETCD_IN_SIZE, ngx_cycle->log);
    if (et->pool == NULL) {
        ngx_http_memq_etcd_fail(et, "out of memory", 0);
        return;
    }

    et->out = ngx_create_temp_buf(et->pool,
                                  sizeof("POST /v3/kv/range HTTP/1.0\r\n"
                                         "Host: \r\n"
                                         "Content-Type: application/json"
                                         "\r\nContent-Length: \r\n\r\n")
                                  + u->host.len + NGX_SIZE_T_LEN
                                  + et->body.len);
    et->in = ngx_create_temp_buf(et->pool, NGX_HTTP_MEMQ_ETCD_IN_SIZE);

    if (et->out == NULL || et->in == NULL) {
        ngx_http_memq_etcd_fail(et, "out of memory", 0);
        return;
    }

    p = ngx_sprintf(et->out->last,
                    "POST /v3/kv/range HTTP/1.0\r\n"
                    "Host: %V\r\n"
                    "Content-Type: application/json\r\n"
                    "Content-Length: %uz\r\n\r\n%V",
                    &u->host, et->body.len, &et->body);
    et->out->last = p;

    ngx_memzero(&et->pc, sizeof(ngx_peer_connection_t));

    et->pc.sockaddr = u->sockaddr;
    et->pc.socklen = u->socklen;
    et->pc.name = &u->host;
    et->pc.get = ngx_event_get_peer;
    et->pc.log = &et->log;
    et->pc.log_error = NGX_ERROR_INFO;
    et->pc.tries = 1;

    et->connecting = 0;
    et->sent = 0;

    rc = ngx_event_connect_peer(&et->pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        /* NGX_DECLINED: connect() itself failed, its errno is still there */
        err = (rc == NGX_DECLINED) ? ngx_socket_errno : 0;

        if (et->pc.connection) {
            ngx_close_connection(et->pc.connection);
            et->pc.connection = NULL;
        }

        ngx_http_memq_etcd_fail(et, "connect() failed", err);
        return;
    }

    c = et->pc.connection;
    c->data = et;
    c->pool = et->pool;

    /* a worker that quits closes it at once (ngx_close_idle_connections()
     * sets c->close): it would not use the answer */
    c->idle = 1;

    c->read->handler = ngx_http_memq_etcd_event;
    c->write->handler = ngx_http_memq_etcd_event;

    if (rc == NGX_AGAIN) {
        et->connecting = 1;
        ngx_add_timer(c->write, cl->connect_timeout);
        return;
    }

    ngx_http_memq_etcd_write(et);
}


static void
ngx_http_memq_etcd_event(ngx_event_t *ev)
{
    ngx_connection_t      *c;
    ngx_http_memq_etcd_t  *et;

    c = ev->data;
    et = c->data;

    if (c->close) {
        /* the worker quits (or its worker_shutdown_timeout ran out): the
         * poll ends without an answer, and etcd is not blamed for it */
        ngx_http_memq_etcd_close(et);
        return;
    }

    if (ev->timedout) {
        ngx_http_memq_etcd_fail(et, et->connecting ? "connect timed out"
                                                   : "timed out",
                                NGX_ETIMEDOUT);
        return;
    }

    if (ev->write) {
        ngx_http_memq_etcd_write(et);

    } else {
        ngx_http_memq_etcd_read(et);
    }
}


static void
ngx_http_memq_etcd_write(ngx_http_memq_etcd_t *et)
{
    int                errn;
    ssize_t            n;
    socklen_t          len;
    ngx_buf_t         *b;
    ngx_connection_t  *c;

    c = et->pc.connection;
    b = et->out;

    if (et->connecting) {
        errn = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &errn, &len)
            == -1)
        {
            errn = ngx_socket_errno;
        }

        if (errn) {
            ngx_http_memq_etcd_fail(et, "connect() failed", errn);
            return;
        }

        et->connecting = 0;

        if (c->write->timer_set) {
            ngx_del_timer(c->write);
        }
    }

    if (et->sent) {
        return;
    }

    while (b->pos < b->last) {
        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_AGAIN) {
            if (!c->write->timer_set) {
                ngx_add_timer(c->write, et->cluster->read_timeout);
            }

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_http_memq_etcd_fail(et, "write event failed", 0);
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_memq_etcd_fail(et, "send() failed", 0);
            return;
        }

        b->pos += n;
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    et->sent = 1;

    /* the whole answer must come within read_timeout */
    ngx_add_timer(c->read, et->cluster->read_timeout);

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_memq_etcd_fail(et, "read event failed", 0);
        return;
    }

    if (c->read->ready) {
        ngx_http_memq_etcd_read(et);
    }
}


static void
ngx_http_memq_etcd_read(ngx_http_memq_etcd_t *et)
{
    u_char            *p;
    size_t             size;
    ssize_t            n;
    ngx_buf_t         *b;
    ngx_connection_t  *c;

    c = et->pc.connection;
    b = et->in;

    if (!et->sent) {
        /* readable before the request went out: looked at after */
        return;
    }

    for ( ;; ) {
        if (b->last == b->end) {
            size = (b->end - b->start) * 2;

            if (size > NGX_HTTP_MEMQ_ETCD_MAX_REPLY) {
                ngx_http_memq_etcd_fail(et, "answer too large", 0);
                return;
            }

            p = ngx_palloc(et->pool, size);
            if (p == NULL) {
                ngx_http_memq_etcd_fail(et, "out of memory", 0);
                return;
            }

            b->last = ngx_cpymem(p, b->pos, b->last - b->pos);
            b->start = p;
            b->pos = p;
            b->end = p + size;
        }

        n = c->recv(c, b->last, b->end - b->last);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                ngx_http_memq_etcd_fail(et, "read event failed", 0);
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_memq_etcd_fail(et, "recv() failed", 0);
            return;
        }

        if (n == 0) {
            ngx_http_memq_etcd_done(et);
            return;
        }

        b->last += n;
    }
}


/* the whole answer is in: apply it, or count it as a failure */
static void
ngx_http_memq_etcd_done(ngx_http_memq_etcd_t *et)
{
    ngx_str_t    body;
    const char  *err;

    err = ngx_http_memq_etcd_body(et->in, &body);

    if (err == NULL) {
        err = ngx_http_memq_etcd_apply(et, &body);
    }

    if (err) {
        ngx_http_memq_etcd_fail(et, err, 0);
        return;
    }

    ngx_http_memq_etcd_close(et);

    if (et->unreachable) {
        et->unreachable = 0;
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "memq cluster \"%V\": etcd reachable again",
                      &et->cluster->name);
    }

    ngx_http_memq_etcd_next(et);
}


/*
 * An attempt failed: the next URL is tried at once, unless every one failed
 * this round; then etcd is unreachable until the next poll.
 */
static void
ngx_http_memq_etcd_fail(ngx_http_memq_etcd_t *et, const char *reason,
    ngx_err_t err)
{
    u_char                    *p, *last;
    u_char                     text[NGX_HTTP_MEMQ_ERR_LEN];
    ngx_http_memq_etcd_url_t  *u;

    u = &((ngx_http_memq_etcd_url_t *) et->urls.elts)[et->current];

    ngx_http_memq_etcd_close(et);

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        /* a poll cut short by the worker's own exit says nothing about
         * etcd: the shared status keeps what the last poll learnt */
        return;
    }

    last = text + sizeof(text);
    p = ngx_slprintf(text, last, "%V: %s", &u->url, reason);

    if (err && p < last - 2) {
        p = ngx_cpymem(p, " (", 2);
        p = ngx_strerror(err, p, last - p - 1);
        if (p < last) {
            *p++ = ')';
        }
    }

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "memq cluster \"%V\": etcd %*s", &et->cluster->name,
                  p - text, text);

    et->current = (et->current + 1) % et->urls.nelts;

    if (++et->tried < et->urls.nelts) {
        ngx_http_memq_etcd_connect(et);
        return;
    }

    if (!et->unreachable) {
        et->unreachable = 1;
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "memq cluster \"%V\": etcd unreachable (%*s), "
                      "the last known node list stays in force",
                      &et->cluster->name, p - text, text);
    }

    ngx_http_memq_etcd_state(et, NGX_HTTP_MEMQ_ETCD_UNREACHABLE,
                             (ngx_uint_t) -1, text, p - text);

    ngx_http_memq_etcd_next(et);
}


static void
ngx_http_memq_etcd_next(ngx_http_memq_etcd_t *et)
{
    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(&et->timer, et->interval);
}


/* closes the poll's connection (if any) and frees its memory */
static void
ngx_http_memq_etcd_close(ngx_http_memq_etcd_t *et)
{
    ngx_connection_t  *c;

    c = et->pc.connection;

    if (c) {
        c->pool = NULL;
        ngx_close_connection(c);
        et->pc.connection = NULL;
    }

    if (et->pool) {
        ngx_destroy_pool(et->pool);
        et->pool = NULL;
    }
}


/* the JSON body of a complete HTTP answer with status 200, or why not */
static const char *
ngx_http_memq_etcd_body(ngx_buf_t *b, ngx_str_t *body)
{
    u_char     *p, *end, *h;
    off_t       len;
    ngx_int_t   status;

    p = b->pos;

    if (b->last - p < 12 || ngx_strncmp(p, "HTTP/1.", 7) != 0
        || p[8] != ' ')
    {
        return "not an HTTP answer";
    }

    status = ngx_atoi(p + 9, 3);

    end = ngx_strlcasestrn(p, b->last, (u_char *) "\r\n\r\n", 4 - 1);
    if (end == NULL) {
        return "truncated answer";
    }

    if (status != 200) {
        return status == 404 ? "HTTP 404 (no v3 JSON gateway there)"
                             : "HTTP status not 200";
    }

    if (ngx_strlcasestrn(p, end, (u_char *) "transfer-encoding:", 18 - 1)) {
        return "chunked answer";
    }

    body->data = end + 4;
    body->len = b->last - body->data;

    h = ngx_strlcasestrn(p, end, (u_char *) "\ncontent-length:", 16 - 1);

    if (h) {
        h += 16;

        while (h < end && *h == ' ') {
            h++;
        }

        p = h;

        while (h < end && *h >= '0' && *h <= '9') {
            h++;
        }

        len = ngx_atoof(p, h - p);

        if (len < 0 || (size_t) len > body->len) {
            return "truncated answer";
        }

        body->len = len;
    }

    return NULL;
}


/*
 * Applies a range answer: {"header":{..},"kvs":[{"key":"<base64>",
 * "value":"<base64>",..},..],"count":".."} (kvs is left out when none).
 */
static const char *
ngx_http_memq_etcd_apply(ngx_http_memq_etcd_t *et, ngx_str_t *json)
{
    u_char                   *pos;
    uint32_t                  crc;
    uint64_t                  had;
    ngx_int_t                 rc, weight;
    ngx_str_t                 kvs, kv, addr, err, hdr;
    ngx_uint_t                i, n, log_bad, bit;
    ngx_http_memq_node_t    **np, *node;
    ngx_http_memq_cluster_t  *cl;

    cl = et->cluster;

    if (json->len == 0 || json->data[0] != '{'
        || ngx_http_memq_json_member(json, "header", &hdr) != NGX_OK)
    {
        return "not a range answer";
    }

    rc = ngx_http_memq_json_member(json, "kvs", &kvs);

    if (rc == NGX_ERROR || (rc == NGX_OK && kvs.data[0] != '[')) {
        return "malformed range answer";
    }

    if (rc == NGX_DECLINED) {
        ngx_str_set(&kvs, "[]");
    }

    /* first pass: check it all and see whether it changed */
    ngx_crc32_init(crc);
    pos = NULL;

    for ( ;; ) {
        rc = ngx_http_memq_json_next(&kvs, &pos, &kv);

        if (rc == NGX_DONE) {
            break;
        }

        if (rc != NGX_OK) {
            return "malformed range answer";
        }

        ngx_crc32_update(&crc, kv.data, kv.len);
    }

    ngx_crc32_final(crc);

    log_bad = !et->applied || crc != et->crc;
    et->crc = crc;
    et->applied = 1;

    np = cl->nodes.elts;
    had = 0;

    for (i = 0; i < cl->nodes.nelts; i++) {
        if (np[i]->sources & NGX_HTTP_MEMQ_SRC_ETCD) {
            had |= (uint64_t) 1 << i;
        }

        np[i]->sources &= ~NGX_HTTP_MEMQ_SRC_ETCD;
    }

    /*
     * Two passes, as for a nodes_file: known nodes get their bit back
     * first, so none is taken for a node that left (and reused for a new
     * address) before its own entry is read.
     */
    n = 0;
    pos = NULL;

    while (ngx_http_memq_json_next(&kvs, &pos, &kv) == NGX_OK) {
        if (ngx_http_memq_etcd_entry(et, &kv, &addr, &weight, &err) == NGX_OK
            && ngx_http_memq_node_find(cl, addr.data, addr.len) != NULL)
        {
            (void) ngx_http_memq_node_add(cl, ngx_cycle->pool, &addr, weight,
                                          NGX_HTTP_MEMQ_SRC_ETCD, &err);
        }
    }

    pos = NULL;

    while (ngx_http_memq_json_next(&kvs, &pos, &kv) == NGX_OK) {

        if (ngx_http_memq_etcd_entry(et, &kv, &addr, &weight, &err)
            != NGX_OK)
        {
            if (log_bad) {
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "memq cluster \"%V\": etcd entry left out: %V",
                              &cl->name, &err);
            }

            continue;
        }

        node = ngx_http_memq_node_add(cl, ngx_cycle->pool, &addr, weight,
                                      NGX_HTTP_MEMQ_SRC_ETCD, &err);
        if (node == NULL) {
            if (log_bad) {
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "memq cluster \"%V\": etcd node %V: %V",
                              &cl->name, &addr, &err);
            }

            continue;
        }

        n++;
    }

    /* what changed, and what a node that left still holds */
    np = cl->nodes.elts;

    for (i = 0; i < cl->nodes.nelts; i++) {
        node = np[i];
        bit = (had >> i) & 1;

        if (bit == ((node->sources & NGX_HTTP_MEMQ_SRC_ETCD) ? 1 : 0)) {
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "memq cluster \"%V\": node %V %s etcd%s",
                      &cl->name, &node->addr,
                      bit ? "left" : "joined from",
                      node->sources ? " (still listed elsewhere)"
                      : (bit ? ", drained" : ""));

        if (node->sources) {
            continue;
        }

        /* no new work: its pooled connections go now */
        ngx_http_memq_conn_close_idle(node);
    }

    ngx_http_memq_shm_sources(cl);

    ngx_http_memq_etcd_state(et, NGX_HTTP_MEMQ_ETCD_UP, n, NULL, 0);

    return NULL;
}


/* one element of kvs: the node's address and weight, or why not */
static ngx_int_t
ngx_http_memq_etcd_entry(ngx_http_memq_etcd_t *et, ngx_str_t *kv,
    ngx_str_t *addr, ngx_int_t *weight, ngx_str_t *err)
{
    ngx_str_t   v, b64, key, value, a, w;
    ngx_addr_t  ia;

    *weight = 1;

    if (ngx_http_memq_json_member(kv, "key", &v) != NGX_OK
        || ngx_http_memq_json_string(&v, &b64) != NGX_OK)
    {
        ngx_str_set(err, "no key");
        return NGX_ERROR;
    }

    key.data = ngx_pnalloc(et->pool, ngx_base64_decoded_length(b64.len));
    if (key.data == NULL || ngx_decode_base64(&key, &b64) != NGX_OK
        || key.len < et->prefix.len
        || ngx_strncmp(key.data, et->prefix.data, et->prefix.len) != 0)
    {
        ngx_str_set(err, "bad key");
        return NGX_ERROR;
    }

    /* by default the key names the node */
    addr->data = key.data + et->prefix.len;
    addr->len = key.len - et->prefix.len;

    if (ngx_http_memq_json_member(kv, "value", &v) == NGX_OK
        && ngx_http_memq_json_string(&v, &b64) == NGX_OK)
    {
        value.data = ngx_pnalloc(et->pool,
                                 ngx_base64_decoded_length(b64.len));

        if (value.data && ngx_decode_base64(&value, &b64) == NGX_OK
            && value.len && value.data[0] == '{')
        {
            if (ngx_http_memq_json_member(&value, "addr", &v) == NGX_OK
                && ngx_http_memq_json_string(&v, &a) == NGX_OK)
            {
                *addr = a;
            }

            if (ngx_http_memq_json_member(&value, "weight", &w) == NGX_OK) {
                *weight = ngx_http_memq_weight(w.data, w.len);

                if (*weight == NGX_ERROR) {
                    err->data = ngx_pnalloc(et->pool, key.len + 64);
                    if (err->data == NULL) {
                        ngx_str_set(err, "bad weight");
                        return NGX_ERROR;
                    }

                    err->len = ngx_sprintf(err->data, "bad weight in %V",
                                           &key)
                               - err->data;
                    return NGX_ERROR;
                }
            }
        }
    }

    /* no name lookups in a worker */
    if (addr->len == 0 || addr->len >= NGX_HTTP_MEMQ_ADDR_LEN
        || ngx_parse_addr_port(et->pool, &ia, addr->data, addr->len)
           != NGX_OK
        || ngx_inet_get_port(ia.sockaddr) == 0)
    {
        err->data = ngx_pnalloc(et->pool, key.len + addr->len + 64);
        if (err->data == NULL) {
            ngx_str_set(err, "bad address");
            return NGX_ERROR;
        }

        err->len = ngx_sprintf(err->data, "%V: \"%V\" is not IP:port",
                               &key, addr)
                   - err->data;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* publishes the state for memq_status; nodes -1: unchanged */
static void
ngx_http_memq_etcd_state(ngx_http_memq_etcd_t *et, ngx_uint_t state,
    ngx_uint_t nodes, u_char *err, size_t len)
{
    ngx_http_memq_sh_t        *sh;
    ngx_http_memq_cluster_t   *cl;
    ngx_http_memq_shetcd_t    *se;
    ngx_http_memq_etcd_url_t  *u;

    cl = et->cluster;
    sh = cl->sh;

    if (sh == NULL) {
        return;
    }

    se = &sh->etcd;

    (void) ngx_atomic_fetch_add(&se->polls, 1);

    if (state != NGX_HTTP_MEMQ_ETCD_UP) {
        (void) ngx_atomic_fetch_add(&se->failures, 1);
    }

    ngx_shmtx_lock(&cl->shpool->mutex);

    se->state = state;

    if (nodes != (ngx_uint_t) -1) {
        se->nodes = nodes;
    }

    if (state == NGX_HTTP_MEMQ_ETCD_UP) {
        u = et->urls.elts;
        u = &u[et->current];
        se->endpoint_len = ngx_min(u->url.len, sizeof(se->endpoint));
        ngx_memcpy(se->endpoint, u->url.data, se->endpoint_len);
    }

    if (err) {
        se->last_error_len = ngx_min(len, NGX_HTTP_MEMQ_ERR_LEN);
        ngx_memcpy(se->last_error, err, se->last_error_len);
        se->last_error_at = ngx_time();
    }

    ngx_shmtx_unlock(&cl->shpool->mutex);
}


/*
 * Until this worker has applied an etcd answer of its own, it takes the
 * etcd nodes its siblings (or the workers before a reload) put in the
 * shared zone: a worker that starts after its sibling, or whose first
 * poll failed, serves the known list instead of answering 503.  Called at
 * start and before each request picks nodes; it costs nothing once an
 * answer was applied.
 */
void
ngx_http_memq_etcd_seed(ngx_http_memq_cluster_t *cl, ngx_log_t *log)
{
    size_t                   len;
    ngx_str_t                addr, err;
    ngx_int_t                weight;
    ngx_uint_t               i, take;
    ngx_http_memq_shnode_t  *sn;
    u_char                   buf[NGX_HTTP_MEMQ_ADDR_LEN];

    if (cl->etcd == NULL || cl->etcd->applied || cl->sh == NULL) {
        return;
    }

    for (i = 0; i < NGX_HTTP_MEMQ_MAX_NODES; i++) {
        sn = &cl->sh->nodes[i];

        ngx_shmtx_lock(&cl->shpool->mutex);

        take = (sn->used && (sn->sources & NGX_HTTP_MEMQ_SRC_ETCD));
        len = ngx_min(sn->addr_len, sizeof(buf));
        weight = sn->weight;

        if (take) {
            ngx_memcpy(buf, sn->addr, len);
        }

        ngx_shmtx_unlock(&cl->shpool->mutex);

        if (!take) {
            continue;
        }

        addr.data = buf;
        addr.len = len;

        if (ngx_http_memq_node_add(cl, ngx_cycle->pool, &addr, weight,
                                   NGX_HTTP_MEMQ_SRC_ETCD, &err)
            == NULL)
        {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "memq cluster \"%V\": etcd node %V: %V",
                          &cl->name, &addr, &err);
        }
    }

    ngx_http_memq_shm_sources(cl);
}


/* a reload: the new workers start from the etcd nodes of the old ones */
void
ngx_http_memq_etcd_init_zone(ngx_http_memq_cluster_t *cl)
{
    ngx_uint_t               i;
    ngx_http_memq_shnode_t  *sn;

    if (cl->etcd) {
        cl->sh->etcd.state = NGX_HTTP_MEMQ_ETCD_STARTING;
        return;
    }

    ngx_memzero(&cl->sh->etcd, sizeof(ngx_http_memq_shetcd_t));

    for (i = 0; i < NGX_HTTP_MEMQ_MAX_NODES; i++) {
        sn = &cl->sh->nodes[i];
        sn->sources &= ~NGX_HTTP_MEMQ_SRC_ETCD;
    }
}


/* ---------------------------------------------------------- tiny JSON */

static u_char *
ngx_http_memq_json_ws(u_char *p, u_char *last)
{
    while (p < last
           && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    return p;
}


/* the end of the JSON value at p, or NULL when it is malformed */
static u_char *
ngx_http_memq_json_skip(u_char *p, u_char *last, ngx_uint_t depth)
{
    u_char  close;

    p = ngx_http_memq_json_ws(p, last);

    if (p == last || depth > 16) {
        return NULL;
    }

    switch (*p) {

    case '"':
        for (p++; p < last; p++) {
            if (*p == '\\') {
                p++;
                continue;
            }

            if (*p == '"') {
                return p + 1;
            }
        }

        return NULL;

    case '{':
    case '[':
        close = (*p == '{') ? '}' : ']';
        p = ngx_http_memq_json_ws(p + 1, last);

        if (p < last && *p == close) {
            return p + 1;
        }

        for ( ;; ) {
            if (close == '}') {
                p = ngx_http_memq_json_ws(p, last);
                if (p == last || *p != '"') {
                    return NULL;
                }

                p = ngx_http_memq_json_skip(p, last, depth + 1);
                if (p == NULL) {
                    return NULL;
                }

                p = ngx_http_memq_json_ws(p, last);
                if (p == last || *p != ':') {
                    return NULL;
                }

                p++;
            }

            p = ngx_http_memq_json_skip(p, last, depth + 1);
            if (p == NULL) {
                return NULL;
            }

            p = ngx_http_memq_json_ws(p, last);
            if (p == last) {
                return NULL;
            }

            if (*p == close) {
                return p + 1;
            }

            if (*p != ',') {
                return NULL;
            }

            p++;
        }

    default:
        /* number, true, false, null */
        if (!((*p >= '0' && *p <= '9') || *p == '-'
              || (*p >= 'a' && *p <= 'z')))
        {
            return NULL;
        }

        while (p < last
               && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')
                   || *p == '-' || *p == '+' || *p == '.' || *p == 'E'))
        {
            p++;
        }

        return p;
    }
}


/*
 * The raw text of member `name` of the object obj: NGX_OK, NGX_DECLINED
 * when there is none, NGX_ERROR when obj is malformed.
 */
static ngx_int_t
ngx_http_memq_json_member(ngx_str_t *obj, const char *name,
    ngx_str_t *value)
{
    u_char  *p, *last, *k, *e;
    size_t   len;

    p = obj->data;
    last = obj->data + obj->len;
    len = ngx_strlen(name);

    p = ngx_http_memq_json_ws(p, last);
    if (p == last || *p != '{') {
        return NGX_ERROR;
    }

    p = ngx_http_memq_json_ws(p + 1, last);
    if (p < last && *p == '}') {
        return NGX_DECLINED;
    }

    for ( ;; ) {
        k = ngx_http_memq_json_ws(p, last);
        if (k == last || *k != '"') {
            return NGX_ERROR;
        }

        p = ngx_http_memq_json_skip(k, last, 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        p = ngx_http_memq_json_ws(p, last);
        if (p == last || *p != ':') {
            return NGX_ERROR;
        }

        p = ngx_http_memq_json_ws(p + 1, last);

        e = ngx_http_memq_json_skip(p, last, 1);
        if (e == NULL) {
            return NGX_ERROR;
        }

        if ((size_t) (p - k) >= len + 2 && k[len + 1] == '"'
            && ngx_strncmp(k + 1, name, len) == 0)
        {
            value->data = p;
            value->len = e - p;
            return NGX_OK;
        }

        p = ngx_http_memq_json_ws(e, last);
        if (p == last) {
            return NGX_ERROR;
        }

        if (*p == '}') {
            return NGX_DECLINED;
        }

        if (*p != ',') {
            return NGX_ERROR;
        }

        p++;
    }
}


/* the characters of a JSON string value without escapes */
static ngx_int_t
ngx_http_memq_json_string(ngx_str_t *value, ngx_str_t *s)
{
    if (value->len < 2 || value->data[0] != '"'
        || value->data[value->len - 1] != '"'
        || ngx_strlchr(value->data, value->data + value->len, '\\'))
    {
        return NGX_ERROR;
    }

    s->data = value->data + 1;
    s->len = value->len - 2;

    return NGX_OK;
}


/*
 * The next element of the array arr (*pos NULL at first): NGX_OK,
 * NGX_DONE at the end, NGX_ERROR when malformed.  Elements must be
 * objects.
 */
static ngx_int_t
ngx_http_memq_json_next(ngx_str_t *arr, u_char **pos, ngx_str_t *elt)
{
    u_char  *p, *last, *e;

    last = arr->data + arr->len;
    p = *pos;

    if (p == NULL) {
        p = ngx_http_memq_json_ws(arr->data, last);
        if (p == last || *p != '[') {
            return NGX_ERROR;
        }

        p = ngx_http_memq_json_ws(p + 1, last);
        if (p < last && *p == ']') {
            *pos = p;
            return NGX_DONE;
        }

    } else {
        p = ngx_http_memq_json_ws(p, last);
        if (p == last) {
            return NGX_ERROR;
        }

        if (*p == ']') {
            return NGX_DONE;
        }

        if (*p != ',') {
            return NGX_ERROR;
        }

        p = ngx_http_memq_json_ws(p + 1, last);
    }

    if (p == last || *p != '{') {
        return NGX_ERROR;
    }

    e = ngx_http_memq_json_skip(p, last, 1);
    if (e == NULL) {
        return NGX_ERROR;
    }

    elt->data = p;
    elt->len = e - p;
    *pos = e;

    return NGX_OK;
}


/* -------------------------------------------------------- configuration */

/*
 * etcd URL[,URL...] [prefix=/memq/<cluster>/nodes/] [interval=1s] inside
 * memq_cluster; URLs are http://host[:port] (port 2379 by default),
 * resolved now.
 */
char *
ngx_http_memq_etcd_conf(ngx_conf_t *cf, ngx_http_memq_cluster_t *cl)
{
    u_char                    *p, *last, *s, *e;
    ngx_str_t                 *value, list, one, prefix, b64k, b64e, end;
    ngx_url_t                  u;
    ngx_uint_t                 i;
    ngx_msec_t                 interval;
    ngx_http_memq_etcd_t      *et;
    ngx_http_memq_etcd_url_t  *eu;

    if (cl->etcd) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"etcd\" directive is duplicate in memq_cluster");
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    if (cf->args->nelts < 2 || cf->args->nelts > 4) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of arguments in \"etcd\" "
                           "directive in memq_cluster");
        return NGX_CONF_ERROR;
    }

    et = ngx_pcalloc(cf->pool, sizeof(ngx_http_memq_etcd_t));
    if (et == NULL) {
        return NGX_CONF_ERROR;
    }

    et->cluster = cl;
    ngx_str_null(&prefix);
    interval = NGX_CONF_UNSET_MSEC;

    for (i = 2; i < cf->args->nelts; i++) {

        if (value[i].len > 7
            && ngx_strncmp(value[i].data, "prefix=", 7) == 0
            && prefix.data == NULL)
        {
            prefix.data = value[i].data + 7;
            prefix.len = value[i].len - 7;

            if (prefix.len == 0 || prefix.data[0] != '/'
                || prefix.data[prefix.len - 1] == 0xff)
            {
                goto bad_param;
            }

            continue;
        }

        if (value[i].len > 9
            && ngx_strncmp(value[i].data, "interval=", 9) == 0
            && interval == NGX_CONF_UNSET_MSEC)
        {
            one.data = value[i].data + 9;
            one.len = value[i].len - 9;

            interval = ngx_parse_time(&one, 0);
            if (interval == (ngx_msec_t) NGX_ERROR || interval == 0) {
                goto bad_param;
            }

            continue;
        }

        goto bad_param;
    }

    if (prefix.data == NULL) {
        prefix.len = sizeof("/memq//nodes/") - 1 + cl->name.len;
        prefix.data = ngx_pnalloc(cf->pool, prefix.len);
        if (prefix.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_sprintf(prefix.data, "/memq/%V/nodes/", &cl->name);
    }

    et->prefix = prefix;
    et->interval = (interval == NGX_CONF_UNSET_MSEC)
                   ? NGX_HTTP_MEMQ_ETCD_INTERVAL : interval;

    if (ngx_array_init(&et->urls, cf->pool, 2,
                       sizeof(ngx_http_memq_etcd_url_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    list = value[1];
    p = list.data;
    last = list.data + list.len;

    while (p <= last) {
        e = ngx_strlchr(p, last, ',');
        if (e == NULL) {
            e = last;
        }

        one.data = p;
        one.len = e - p;
        p = e + 1;

        if (one.len <= 7 || ngx_strncasecmp(one.data, (u_char *) "http://", 7)
                            != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid etcd URL \"%V\" in \"etcd\" "
                               "(http://host[:port] expected)", &one);
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url.data = one.data + 7;
        u.url.len = one.len - 7;

        /* a trailing "/" is fine, any other path is not */
        s = ngx_strlchr(u.url.data, u.url.data + u.url.len, '/');
        if (s) {
            if (s != u.url.data + u.url.len - 1) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid etcd URL \"%V\" in \"etcd\" "
                                   "(no path expected)", &one);
                return NGX_CONF_ERROR;
            }

            u.url.len--;
        }

        u.default_port = NGX_HTTP_MEMQ_ETCD_PORT;

        if (u.url.len == 0 || ngx_parse_url(cf->pool, &u) != NGX_OK
            || u.naddrs == 0 || u.family == AF_UNIX)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid etcd URL \"%V\" in \"etcd\"%s%s",
                               &one, u.err ? ": " : "",
                               u.err ? u.err : "");
            return NGX_CONF_ERROR;
        }

        eu = ngx_array_push(&et->urls);
        if (eu == NULL) {
            return NGX_CONF_ERROR;
        }

        eu->url = one;
        eu->url.len = 7 + u.url.len;
        eu->sockaddr = u.addrs[0].sockaddr;
        eu->socklen = u.addrs[0].socklen;

        eu->host.len = u.host.len + 1 + NGX_INT_T_LEN;
        eu->host.data = ngx_pnalloc(cf->pool, eu->host.len);
        if (eu->host.data == NULL) {
            return NGX_CONF_ERROR;
        }

        eu->host.len = ngx_sprintf(eu->host.data, "%V:%d", &u.host,
                                   (int) u.port)
                       - eu->host.data;
    }

    /* {"key":"<prefix>","range_end":"<prefix + 1>"}, base64 */
    end.len = prefix.len;
    end.data = ngx_pnalloc(cf->pool, end.len);
    if (end.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(end.data, prefix.data, prefix.len);
    end.data[end.len - 1]++;

    b64k.len = ngx_base64_encoded_length(prefix.len);
    b64e.len = b64k.len;
    b64k.data = ngx_pnalloc(cf->pool, b64k.len);
    b64e.data = ngx_pnalloc(cf->pool, b64e.len);

    et->body.data = ngx_pnalloc(cf->pool, 2 * b64k.len + 32);

    if (b64k.data == NULL || b64e.data == NULL || et->body.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_encode_base64(&b64k, &prefix);
    ngx_encode_base64(&b64e, &end);

    et->body.len = ngx_sprintf(et->body.data,
                               "{\"key\":\"%V\",\"range_end\":\"%V\"}",
                               &b64k, &b64e)
                   - et->body.data;

    cl->etcd = et;

    return NGX_CONF_OK;

bad_param:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" of \"etcd\" "
                       "(prefix=/PATH or interval=TIME expected)",
                       &value[i]);
    return NGX_CONF_ERROR;
}

