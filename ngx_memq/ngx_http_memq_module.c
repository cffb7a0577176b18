/*
 * ngx_http_memq_module.c: directives, configuration create/merge, module
 * tables, variables, and the per-worker nodes_file watcher (etcd has its
 * own file, ngx_http_memq_etcd.c).
 *
 * Clusters are parsed into the main conf; a location names one with
 * memq_pass, resolved at merge time so a cluster may be defined after the
 * server that uses it.  Every config mistake is an [emerg] at load time
 * naming the directive and the value.
 *
 * Node lists: static `node` lines are fixed at load; a `nodes_file` is
 * re-read by every worker when its mtime or size changes (checked every
 * second).  A node is never freed: one that leaves the list only loses its
 * source bit, so streams and pooled connections that refer to it stay
 * valid.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_WATCH_INTERVAL  1000


static ngx_int_t ngx_http_memq_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_memq_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_memq_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_memq_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_memq_init_process(ngx_cycle_t *cycle);
static void ngx_http_memq_watch_handler(ngx_event_t *ev);
static void ngx_http_memq_exit_handler(ngx_event_t *ev);
static void ngx_http_memq_read_nodes_file(ngx_http_memq_cluster_t *cl,
    ngx_log_t *log, ngx_uint_t force);
static ngx_int_t ngx_http_memq_parse_node_line(ngx_str_t *line,
    ngx_str_t *addr, ngx_int_t *weight);

static void *ngx_http_memq_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_memq_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_memq_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);

static char *ngx_http_memq_cluster(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_memq_cluster_cmd(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf);
static char *ngx_http_memq_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_memq_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static char *ngx_http_memq_check_bounds(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_num_bounds_t  ngx_http_memq_batch_bounds = {
    ngx_http_memq_check_bounds, 1, MQ_GET_COUNT_MAX
};

static ngx_conf_num_bounds_t  ngx_http_memq_flag_bounds = {
    ngx_http_memq_check_bounds, 1, 0x7fffffff
};

static ngx_conf_enum_t  ngx_http_memq_ack_modes[] = {
    { ngx_string("write"), NGX_HTTP_MEMQ_ACK_WRITE },
    { ngx_string("client"), NGX_HTTP_MEMQ_ACK_CLIENT },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_memq_commands[] = {

    { ngx_string("memq_cluster"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_memq_cluster,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("memq_pass"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_memq_pass,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("memq_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, key),
      NULL },

    { ngx_string("memq_wait_max"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, wait_max),
      NULL },

    { ngx_string("memq_batch"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, batch),
      &ngx_http_memq_batch_bounds },

    { ngx_string("memq_inflate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, inflate),
      NULL },

    { ngx_string("memq_compress_flag"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, compress_flag),
      &ngx_http_memq_flag_bounds },

    { ngx_string("memq_inflate_max_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, inflate_max_size),
      NULL },

    { ngx_string("memq_compress_min_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, compress_min_size),
      NULL },

    { ngx_string("memq_sse_heartbeat"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, sse_heartbeat),
      NULL },

    { ngx_string("memq_ack"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, ack),
      &ngx_http_memq_ack_modes },

    { ngx_string("memq_lease"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, lease),
      NULL },

    { ngx_string("memq_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_memq_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("memq_cors"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_memq_cors_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_memq_loc_conf_t, cors),
      NULL },

    { ngx_string("memq_dashboard"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_memq_dashboard_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_memq_module_ctx = {
    ngx_http_memq_add_variables,           /* preconfiguration */
    ngx_http_memq_postconfiguration,       /* postconfiguration */

    ngx_http_memq_create_main_conf,        /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_memq_create_loc_conf,         /* create location configuration */
    ngx_http_memq_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_memq_module = {
    NGX_MODULE_V1,
    &ngx_http_memq_module_ctx,             /* module context */
    ngx_http_memq_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_memq_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* per worker: notices a graceful shutdown (cancelable, never holds it up) */
static ngx_event_t  ngx_http_memq_exit_ev;


static ngx_http_variable_t  ngx_http_memq_vars[] = {

    { ngx_string("memq_messages"), NULL, ngx_http_memq_variable,
      offsetof(ngx_http_memq_rstat_t, messages), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("memq_nodes_ok"), NULL, ngx_http_memq_variable,
      offsetof(ngx_http_memq_rstat_t, nodes_ok), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("memq_nodes_failed"), NULL, ngx_http_memq_variable,
      offsetof(ngx_http_memq_rstat_t, nodes_failed),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* the content handler of memq_pass locations */
static ngx_int_t
ngx_http_memq_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if ((r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST))
        && ngx_http_memq_cors_check(r) != NGX_OK)
    {
        /* a browser page of an origin memq_cors does not allow */
        r->main->count++;
        ngx_http_memq_json_error(r, NGX_HTTP_FORBIDDEN, "origin not allowed");
        return NGX_DONE;
    }

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        return ngx_http_memq_consume(r);
    }

    if (r->method & NGX_HTTP_POST) {
        /* POST ...&op=ack|release|touch settles leased items */
        if (r->args.len && ngx_http_memq_ack_wanted(r)) {
            return ngx_http_memq_ack(r);
        }

        return ngx_http_memq_publish(r);
    }

    if (r->method & NGX_HTTP_OPTIONS) {
        rc = ngx_http_memq_cors_preflight(r);
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    r->main->count++;
    ngx_http_memq_json_error(r, NGX_HTTP_NOT_ALLOWED, "method not allowed");
    return NGX_DONE;
}


/*
 * Sends a complete JSON answer (headers and body) and finalizes the
 * request once.  The caller holds a reference for that finalization: a
 * content handler does r->main->count++ first and returns NGX_DONE, a body
 * handler owns the one ngx_http_read_client_request_body() took.
 */
ngx_int_t
ngx_http_memq_send_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_http_clear_last_modified(r);
    ngx_http_clear_accept_ranges(r);

    if (r->method == NGX_HTTP_HEAD || len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }

    b->last = ngx_cpymem(b->last, body, len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
    return NGX_DONE;
}


/*
 * A client's bytes for a log line: at most NGX_HTTP_MEMQ_LOG_QUOTE of
 * them, with control bytes, spaces, quotes and '%' as %XX, so that a
 * terminal escape or a forged line never reaches the log as it came; buf
 * holds 3 * NGX_HTTP_MEMQ_LOG_QUOTE bytes.  The length written.
 */
size_t
ngx_http_memq_log_quote(u_char *buf, u_char *data, size_t len)
{
    len = ngx_min(len, NGX_HTTP_MEMQ_LOG_QUOTE);

    return (u_char *) ngx_escape_uri(buf, data, len, NGX_ESCAPE_ARGS) - buf;
}


/*
 * Answers {"error":"<reason>","status":<code>} and finalizes the request
 * (drops one reference: the caller holds one, see send_json); reason is a
 * fixed string without characters that need escaping.
 */
void
ngx_http_memq_json_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    u_char  *p;
    u_char   body[256];

    ngx_http_discard_request_body(r);

    p = ngx_snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%ui}\n",
                     reason, status);

    (void) ngx_http_memq_send_json(r, status, body, p - body);
}


/*
 * The module's filters: nginx's own error pages in memq locations become
 * JSON (errpage), and every answer gets the CORS headers (cors).  The
 * filter installed last runs first, so the CORS headers are added to
 * whatever the error-page filter made of the answer.
 */
static ngx_int_t
ngx_http_memq_postconfiguration(ngx_conf_t *cf)
{
    if (ngx_http_memq_errpage_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_memq_cors_init(cf);
}


static ngx_int_t
ngx_http_memq_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_memq_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_memq_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                 *p;
    ngx_http_memq_rstat_t  *st;

    st = ngx_http_get_module_ctx(r, ngx_http_memq_module);

    if (st == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%ui", *(ngx_uint_t *) ((char *) st + data)) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


/* a worker starts: read nodes files now and watch them every second */
static ngx_int_t
ngx_http_memq_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_http_memq_cluster_t   **clp, *cl;
    ngx_http_memq_main_conf_t  *mmcf;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_memq_module);
    if (mmcf == NULL || mmcf->clusters.nelts == 0) {
        return NGX_OK;
    }

    ngx_http_memq_exit_ev.handler = ngx_http_memq_exit_handler;
    ngx_http_memq_exit_ev.log = cycle->log;
    ngx_http_memq_exit_ev.cancelable = 1;
    ngx_add_timer(&ngx_http_memq_exit_ev, NGX_HTTP_MEMQ_WATCH_INTERVAL);

    clp = mmcf->clusters.elts;

    for (i = 0; i < mmcf->clusters.nelts; i++) {
        cl = clp[i];

        if (cl->etcd) {
            ngx_http_memq_etcd_init_process(cl, cycle);
        }

        if (cl->nodes_file.len == 0) {
            continue;
        }

        ngx_http_memq_read_nodes_file(cl, cycle->log, 1);

        cl->watch.handler = ngx_http_memq_watch_handler;
        cl->watch.data = cl;
        cl->watch.log = cycle->log;
        cl->watch.cancelable = 1;

        ngx_add_timer(&cl->watch, NGX_HTTP_MEMQ_WATCH_INTERVAL);
    }

    return NGX_OK;
}


static void
ngx_http_memq_watch_handler(ngx_event_t *ev)
{
    ngx_http_memq_cluster_t  *cl;

    cl = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_http_memq_read_nodes_file(cl, ev->log, 0);

    ngx_add_timer(ev, NGX_HTTP_MEMQ_WATCH_INTERVAL);
}


/*
 * Once a second: when the worker shuts down gracefully, streams end now
 * instead of running out their long polls.
 */
static void
ngx_http_memq_exit_handler(ngx_event_t *ev)
{
    if (ngx_exiting) {
        ngx_http_memq_streams_exiting();
    }

    ngx_add_timer(ev, NGX_HTTP_MEMQ_WATCH_INTERVAL);
}


/*
 * Re-reads cl->nodes_file when its mtime or size changed (or force): nodes
 * in the file get the FILE source bit, the others lose it.  A missing or
 * unreadable file is a warning and leaves the list as it was.
 */
static void
ngx_http_memq_read_nodes_file(ngx_http_memq_cluster_t *cl, ngx_log_t *log,
    ngx_uint_t force)
{
    u_char                 *buf, *p, *last, *eol;
    ssize_t                 n;
    ngx_fd_t                fd;
    ngx_int_t               weight;
    ngx_str_t               line, addr, err;
    ngx_uint_t              i, lineno, pass;
    ngx_file_info_t         fi;
    ngx_http_memq_node_t  **np, *node;

    if (ngx_file_info(cl->nodes_file.data, &fi) == NGX_FILE_ERROR) {
        if (cl->file_seen || force) {
            ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                          "memq cluster \"%V\": nodes_file \"%V\" missing",
                          &cl->name, &cl->nodes_file);
            cl->file_seen = 0;
            cl->file_mtime = 0;
            cl->file_size = -1;
        }
        return;
    }

    /* mtime to the nanosecond and the inode too: a rewrite of the same
     * size within the same second (or a rename over it) is a change */
    if (!force && cl->file_seen
        && ngx_file_mtime(&fi) == cl->file_mtime
        && fi.st_mtim.tv_nsec == cl->file_mtime_ns
        && fi.st_ino == cl->file_ino
        && ngx_file_size(&fi) == cl->file_size)
    {
        return;
    }

    fd = ngx_open_file(cl->nodes_file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "memq cluster \"%V\": cannot open nodes_file \"%V\"",
                      &cl->name, &cl->nodes_file);
        return;
    }

    buf = ngx_alloc(ngx_file_size(&fi) + 1, log);
    if (buf == NULL) {
        ngx_close_file(fd);
        return;
    }

    n = read(fd, buf, ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n < 0) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "memq cluster \"%V\": cannot read nodes_file \"%V\"",
                      &cl->name, &cl->nodes_file);
        ngx_free(buf);
        return;
    }

    cl->file_seen = 1;
    cl->file_mtime = ngx_file_mtime(&fi);
    cl->file_mtime_ns = fi.st_mtim.tv_nsec;
    cl->file_ino = fi.st_ino;
    cl->file_size = ngx_file_size(&fi);

    /* clear the file bit, then set it again for every node listed */
    np = cl->nodes.elts;
    for (i = 0; i < cl->nodes.nelts; i++) {
        np[i]->sources &= ~NGX_HTTP_MEMQ_SRC_FILE;
    }

    /*
     * Two passes: the nodes already known get their bit back first, so a
     * node listed further down is never taken for a node that left (and
     * reused for a new address) before its own line is read.
     */
    for (pass = 0; pass < 2; pass++) {
        p = buf;
        last = buf + n;
        lineno = 0;

        while (p < last) {
            lineno++;

            eol = ngx_strlchr(p, last, '\n');
            if (eol == NULL) {
                eol = last;
            }

            line.data = p;
            line.len = eol - p;
            p = eol + 1;

            if (ngx_http_memq_parse_node_line(&line, &addr, &weight)
                != NGX_OK)
            {
                if (pass) {
                    ngx_log_error(NGX_LOG_WARN, log, 0,
                                  "memq cluster \"%V\": %V:%ui: bad line "
                                  "\"%V\"", &cl->name, &cl->nodes_file,
                                  lineno, &line);
                }

                continue;
            }

            if (addr.len == 0
                || (pass == 0
                    && ngx_http_memq_node_find(cl, addr.data, addr.len)
                       == NULL))
            {
                continue;
            }

            node = ngx_http_memq_node_add(cl, ngx_cycle->pool, &addr,
                                          weight, NGX_HTTP_MEMQ_SRC_FILE,
                                          &err);
            if (node == NULL && pass) {
                ngx_log_error(NGX_LOG_WARN, log, 0,
                              "memq cluster \"%V\": %V:%ui: %V",
                              &cl->name, &cl->nodes_file, lineno, &err);
            }
        }
    }

    ngx_free(buf);

    /* nodes that left: no new work, their pooled connections go now */
    np = cl->nodes.elts;
    for (i = 0; i < cl->nodes.nelts; i++) {
        if (np[i]->sources == 0) {
            ngx_http_memq_conn_close_idle(np[i]);
        }
    }

    ngx_http_memq_shm_sources(cl);

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "memq cluster \"%V\": nodes_file \"%V\" read",
                  &cl->name, &cl->nodes_file);
}


/*
 * Parses "host:port [weight=N]" (a nodes_file line, comments and blanks
 * allowed: addr->len == 0 then).
 */
static ngx_int_t
ngx_http_memq_parse_node_line(ngx_str_t *line, ngx_str_t *addr,
    ngx_int_t *weight)
{
    u_char  *p, *last, *s;

    p = line->data;
    last = line->data + line->len;

    s = ngx_strlchr(p, last, '#');
    if (s) {
        last = s;
    }

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t'
                        || last[-1] == '\r'))
    {
        last--;
    }

    addr->data = p;
    addr->len = 0;
    *weight = 1;

    if (p == last) {
        return NGX_OK;
    }

    while (p < last && *p != ' ' && *p != '\t') {
        p++;
    }

    addr->len = p - addr->data;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == last) {
        return NGX_OK;
    }

    if (last - p <= 7 || ngx_strncmp(p, "weight=", 7) != 0) {
        return NGX_ERROR;
    }

    *weight = ngx_http_memq_weight(p + 7, last - p - 7);
    if (*weight == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A node's weight, 1 to NGX_HTTP_MEMQ_MAX_WEIGHT, or NGX_ERROR: node
 * choice multiplies weights by owed replies and sums them, which a bigger
 * one would wrap.
 */
ngx_int_t
ngx_http_memq_weight(u_char *p, size_t len)
{
    ngx_int_t  n;

    n = ngx_atoi(p, len);

    if (n <= 0 || n > NGX_HTTP_MEMQ_MAX_WEIGHT) {
        return NGX_ERROR;
    }

    return n;
}


/* the node with this address text, or NULL */
ngx_http_memq_node_t *
ngx_http_memq_node_find(ngx_http_memq_cluster_t *cl, u_char *addr, size_t len)
{
    ngx_uint_t              i;
    ngx_http_memq_node_t  **np;

    np = cl->nodes.elts;

    for (i = 0; i < cl->nodes.nelts; i++) {
        if (np[i]->addr.len == len
            && ngx_strncmp(np[i]->addr.data, addr, len) == 0)
        {
            return np[i];
        }
    }

    return NULL;
}


/*
 * Resolves "host:port" into node (sockaddr, addr text copied into pool).
 * A host name is resolved only when resolve is set (the configuration is
 * being read, in the master); at run time (nodes_file, etcd) a worker
 * never blocks in getaddrinfo(), so only an IP address is taken there.
 * NGX_ERROR with *err set when the address is unusable.
 */
ngx_int_t
ngx_http_memq_node_parse(ngx_pool_t *pool, ngx_str_t *text,
    ngx_http_memq_node_t *node, ngx_str_t *err, ngx_uint_t resolve)
{
    ngx_url_t    u;
    ngx_addr_t   a;
    ngx_pool_t  *tmp;

    if (text->len >= NGX_HTTP_MEMQ_ADDR_LEN) {
        ngx_str_set(err, "node address too long");
        return NGX_ERROR;
    }

    if (!resolve) {
        /* parsed in a pool of its own: nothing is left behind per node
         * in the long-lived pool */
        tmp = ngx_create_pool(256, ngx_cycle->log);
        if (tmp == NULL) {
            ngx_str_set(err, "out of memory");
            return NGX_ERROR;
        }

        ngx_memzero(&a, sizeof(ngx_addr_t));

        if (ngx_parse_addr_port(tmp, &a, text->data, text->len) != NGX_OK
            || ngx_inet_get_port(a.sockaddr) == 0
            || a.socklen > sizeof(ngx_sockaddr_t))
        {
            ngx_destroy_pool(tmp);
            ngx_str_set(err, "bad node address (ip:port expected; "
                             "host names are not resolved here)");
            return NGX_ERROR;
        }

        ngx_memcpy(&node->sa, a.sockaddr, a.socklen);
        node->sockaddr = &node->sa.sockaddr;
        node->socklen = a.socklen;
        ngx_destroy_pool(tmp);

        goto addr;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *text;
    u.no_resolve = 0;

    if (ngx_parse_url(pool, &u) != NGX_OK || u.naddrs == 0
        || u.no_port || u.family == AF_UNIX)
    {
        ngx_str_set(err, "bad node address (host:port expected)");
        return NGX_ERROR;
    }

    if (u.addrs[0].socklen > sizeof(ngx_sockaddr_t)) {
        ngx_str_set(err, "bad node address");
        return NGX_ERROR;
    }

    ngx_memcpy(&node->sa, u.addrs[0].sockaddr, u.addrs[0].socklen);
    node->sockaddr = &node->sa.sockaddr;
    node->socklen = u.addrs[0].socklen;

addr:

    ngx_memcpy(node->addr_buf, text->data, text->len);
    node->addr.data = node->addr_buf;
    node->addr.len = text->len;

    return NGX_OK;
}


/*
 * Adds a node to the cluster, or gives an existing one the source bit.
 * Weight: a static line wins over the file, the file over etcd.
 */
ngx_http_memq_node_t *
ngx_http_memq_node_add(ngx_http_memq_cluster_t *cl, ngx_pool_t *pool,
    ngx_str_t *addr, ngx_int_t weight, ngx_uint_t source, ngx_str_t *err)
{
    ngx_uint_t              i;
    ngx_http_memq_pipe_t   *pipes;
    ngx_http_memq_node_t   *node, **np;

    node = ngx_http_memq_node_find(cl, addr->data, addr->len);

    if (node) {
        if (source == NGX_HTTP_MEMQ_SRC_STATIC
            && (node->sources & NGX_HTTP_MEMQ_SRC_STATIC))
        {
            ngx_str_set(err, "duplicate node");
            return NULL;
        }

        /* the lower bit, the stronger source */
        if ((node->sources & (source - 1)) == 0) {
            node->weight = weight;
        }

        node->sources |= source;
        return node;
    }

    np = NULL;

    if (cl->nodes.nelts >= NGX_HTTP_MEMQ_MAX_NODES) {
        /* a node that left and that nothing uses any more makes room */
        np = cl->nodes.elts;

        for (i = 0; i < cl->nodes.nelts; i++) {
            /* only its own pooled connections may still refer to it */
            if (np[i]->sources == 0 && np[i]->refs == np[i]->nidle) {
                break;
            }
        }

        if (i == cl->nodes.nelts) {
            ngx_str_set(err, "too many nodes");
            return NULL;
        }

        np = &np[i];
        node = *np;

        ngx_http_memq_conn_close_idle(node);
        ngx_http_memq_shm_release(node);

        /* it keeps its publish pipes (empty: nothing refers to the
         * node), which are cycle memory */
        pipes = node->pipes;

    } else {
        node = ngx_palloc(pool, sizeof(ngx_http_memq_node_t));
        if (node == NULL) {
            ngx_str_set(err, "out of memory");
            return NULL;
        }

        pipes = NULL;
    }

    ngx_memzero(node, sizeof(ngx_http_memq_node_t));
    node->pipes = pipes;
    node->cluster = cl;
    node->slot = NGX_HTTP_MEMQ_MAX_NODES;
    ngx_queue_init(&node->idle);

    if (ngx_http_memq_node_parse(pool, addr, node, err,
                                 source == NGX_HTTP_MEMQ_SRC_STATIC)
        != NGX_OK)
    {
        /* a reused node stays a free one: no sources, no references */
        return NULL;
    }

    node->weight = weight;
    node->sources = source;

    if (np == NULL) {
        np = ngx_array_push(&cl->nodes);
        if (np == NULL) {
            ngx_str_set(err, "out of memory");
            return NULL;
        }

        *np = node;
    }

    if (cl->sh) {
        /* added at run time: find or take its slot now */
        (void) ngx_http_memq_shm_slot(cl, node);
    }

    return node;
}


static void *
ngx_http_memq_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_memq_main_conf_t  *mmcf;

    mmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_memq_main_conf_t));
    if (mmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&mmcf->clusters, cf->pool, 4,
                       sizeof(ngx_http_memq_cluster_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return mmcf;
}


static void *
ngx_http_memq_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_memq_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_memq_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->pass = { 0, NULL };
     *     conf->cluster = NULL;
     */

    conf->key = NGX_CONF_UNSET_PTR;
    conf->wait_max = NGX_CONF_UNSET_MSEC;
    conf->batch = NGX_CONF_UNSET_UINT;
    conf->inflate = NGX_CONF_UNSET;
    conf->compress_flag = NGX_CONF_UNSET_UINT;
    conf->inflate_max_size = NGX_CONF_UNSET_SIZE;
    conf->compress_min_size = NGX_CONF_UNSET_SIZE;
    conf->sse_heartbeat = NGX_CONF_UNSET_MSEC;
    conf->ack = NGX_CONF_UNSET_UINT;
    conf->lease = NGX_CONF_UNSET_MSEC;
    conf->status = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_memq_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_memq_loc_conf_t *prev = parent;
    ngx_http_memq_loc_conf_t *conf = child;

    ngx_uint_t                  i;
    ngx_http_memq_cluster_t   **clp;
    ngx_http_memq_main_conf_t  *mmcf;

    ngx_conf_merge_ptr_value(conf->key, prev->key, NULL);
    ngx_conf_merge_msec_value(conf->wait_max, prev->wait_max, 30000);
    ngx_conf_merge_uint_value(conf->batch, prev->batch, 64);
    ngx_conf_merge_value(conf->inflate, prev->inflate, 0);
    ngx_conf_merge_uint_value(conf->compress_flag, prev->compress_flag, 1);
    ngx_conf_merge_size_value(conf->inflate_max_size, prev->inflate_max_size,
                              16 * 1024 * 1024);
    ngx_conf_merge_size_value(conf->compress_min_size,
                              prev->compress_min_size, 0);
    ngx_conf_merge_msec_value(conf->sse_heartbeat, prev->sse_heartbeat,
                              15000);
    ngx_conf_merge_uint_value(conf->ack, prev->ack,
                              NGX_HTTP_MEMQ_ACK_WRITE);
    ngx_conf_merge_msec_value(conf->lease, prev->lease, 30000);
    ngx_conf_merge_value(conf->status, prev->status, 0);
    ngx_conf_merge_str_value(conf->cors, prev->cors, "");

    if (conf->sse_heartbeat == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"memq_sse_heartbeat\" must be positive");
        return NGX_CONF_ERROR;
    }

    if (conf->lease == 0 || conf->lease > MQ_LEASE_MS_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"memq_lease\" must be between 1ms and 12h");
        return NGX_CONF_ERROR;
    }

    if (conf->pass.len == 0) {
        return NGX_CONF_OK;
    }

    if (conf->key == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"memq_pass %V\" needs \"memq_key\"",
                           &conf->pass);
        return NGX_CONF_ERROR;
    }

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_memq_module);
    clp = mmcf->clusters.elts;

    for (i = 0; i < mmcf->clusters.nelts; i++) {
        if (clp[i]->name.len == conf->pass.len
            && ngx_strncmp(clp[i]->name.data, conf->pass.data,
                           conf->pass.len) == 0)
        {
            conf->cluster = clp[i];
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown memq_cluster \"%V\" in \"memq_pass\"",
                       &conf->pass);
    return NGX_CONF_ERROR;
}


/* memq_cluster NAME { ... } */
static char *
ngx_http_memq_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_memq_main_conf_t *mmcf = conf;

    char                      *rv;
    ngx_str_t                 *value, zname;
    ngx_uint_t                 i;
    ngx_conf_t                 save;
    ngx_http_memq_cluster_t   *cl, **clp;

    value = cf->args->elts;

    clp = mmcf->clusters.elts;
    for (i = 0; i < mmcf->clusters.nelts; i++) {
        if (clp[i]->name.len == value[1].len
            && ngx_strncmp(clp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate memq_cluster \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (value[1].len == 0 || value[1].len > 64) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid memq_cluster name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    cl = ngx_pcalloc(cf->pool, sizeof(ngx_http_memq_cluster_t));
    if (cl == NULL) {
        return NGX_CONF_ERROR;
    }

    cl->name = value[1];
    cl->keepalive = NGX_CONF_UNSET_UINT;
    cl->keepalive_timeout = NGX_CONF_UNSET_MSEC;
    cl->connect_timeout = NGX_CONF_UNSET_MSEC;
    cl->read_timeout = NGX_CONF_UNSET_MSEC;
    cl->max_fails = NGX_CONF_UNSET_UINT;
    cl->fail_timeout = NGX_CONF_UNSET_MSEC;
    cl->publish_pipes = NGX_CONF_UNSET_UINT;
    cl->file_size = -1;
    cl->conf_file = cf->conf_file->file.name.data;
    cl->conf_line = cf->conf_file->line;

    if (ngx_array_init(&cl->nodes, cf->pool, 8,
                       sizeof(ngx_http_memq_node_t *))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    clp = ngx_array_push(&mmcf->clusters);
    if (clp == NULL) {
        return NGX_CONF_ERROR;
    }

    *clp = cl;

    save = *cf;
    cf->handler = ngx_http_memq_cluster_cmd;
    cf->handler_conf = (char *) cl;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_conf_init_uint_value(cl->keepalive, 16);
    ngx_conf_init_msec_value(cl->keepalive_timeout, 60000);
    ngx_conf_init_msec_value(cl->connect_timeout, 1000);
    ngx_conf_init_msec_value(cl->read_timeout, 5000);
    ngx_conf_init_uint_value(cl->max_fails, 1);
    ngx_conf_init_msec_value(cl->fail_timeout, 10000);
    ngx_conf_init_uint_value(cl->publish_pipes, 2);

    if (cl->publish_pipes > NGX_HTTP_MEMQ_MAX_PIPES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "memq_cluster \"%V\": publish_pipes is more "
                           "than %d", &cl->name, NGX_HTTP_MEMQ_MAX_PIPES);
        return NGX_CONF_ERROR;
    }

    if (cl->nodes.nelts == 0 && cl->nodes_file.len == 0 && cl->etcd == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "memq_cluster \"%V\" has no \"node\" and no "
                           "\"nodes_file\" (nor \"etcd\")", &cl->name);
        return NGX_CONF_ERROR;
    }

    zname.len = sizeof("memq_") - 1 + cl->name.len;
    zname.data = ngx_pnalloc(cf->pool, zname.len);
    if (zname.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(zname.data, "memq_%V", &cl->name);

    cl->shm_zone = ngx_shared_memory_add(cf, &zname, NGX_HTTP_MEMQ_SHM_SIZE,
                                         &ngx_http_memq_module);
    if (cl->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cl->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared zone \"%V\" is already used", &zname);
        return NGX_CONF_ERROR;
    }

    cl->shm_zone->init = ngx_http_memq_shm_init_zone;
    cl->shm_zone->data = cl;

    return NGX_CONF_OK;
}


/* one directive inside memq_cluster { } */
static char *
ngx_http_memq_cluster_cmd(ngx_conf_t *cf, ngx_command_t *dummy, void *conf)
{
    ngx_http_memq_cluster_t *cl = conf;

    ngx_int_t    n;
    ngx_str_t   *value, *name, err;
    ngx_msec_t   ms, *msp;
    ngx_uint_t   nargs, *up;

    value = cf->args->elts;
    name = &value[0];
    nargs = cf->args->nelts;

#define MEMQ_IS(s)  (name->len == sizeof(s) - 1                              \
                     && ngx_strncmp(name->data, s, sizeof(s) - 1) == 0)

    if (MEMQ_IS("node")) {
        n = 1;

        if (nargs == 3) {
            if (value[2].len <= 7
                || ngx_strncmp(value[2].data, "weight=", 7) != 0
                || (n = ngx_http_memq_weight(value[2].data + 7,
                                             value[2].len - 7))
                   == NGX_ERROR)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid parameter \"%V\" of \"node\" "
                                   "(weight=N with N from 1 to %d expected)",
                                   &value[2], NGX_HTTP_MEMQ_MAX_WEIGHT);
                return NGX_CONF_ERROR;
            }

        } else if (nargs != 2) {
            goto bad_args;
        }

        if (ngx_http_memq_node_add(cl, cf->pool, &value[1], n,
                                   NGX_HTTP_MEMQ_SRC_STATIC, &err)
            == NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V in \"node %V\"", &err, &value[1]);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (MEMQ_IS("etcd")) {
        return ngx_http_memq_etcd_conf(cf, cl);
    }

    if (nargs != 2) {
        goto bad_args;
    }

    if (MEMQ_IS("nodes_file")) {
        if (cl->nodes_file.len) {
            return "is duplicate";
        }

        cl->nodes_file = value[1];

        if (ngx_conf_full_name(cf->cycle, &cl->nodes_file, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    up = NULL;
    msp = NULL;

    if (MEMQ_IS("keepalive")) {
        up = &cl->keepalive;

    } else if (MEMQ_IS("max_fails")) {
        up = &cl->max_fails;

    } else if (MEMQ_IS("publish_pipes")) {
        up = &cl->publish_pipes;

    } else if (MEMQ_IS("keepalive_timeout")) {
        msp = &cl->keepalive_timeout;

    } else if (MEMQ_IS("connect_timeout")) {
        msp = &cl->connect_timeout;

    } else if (MEMQ_IS("read_timeout")) {
        msp = &cl->read_timeout;

    } else if (MEMQ_IS("fail_timeout")) {
        msp = &cl->fail_timeout;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown directive \"%V\" in memq_cluster", name);
        return NGX_CONF_ERROR;
    }

#undef MEMQ_IS

    if (up) {
        if (*up != NGX_CONF_UNSET_UINT) {
            goto duplicate;
        }

        n = ngx_atoi(value[1].data, value[1].len);
        if (n == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid number \"%V\" in \"%V\"",
                               &value[1], name);
            return NGX_CONF_ERROR;
        }

        *up = n;
        return NGX_CONF_OK;
    }

    if (*msp != NGX_CONF_UNSET_MSEC) {
        goto duplicate;
    }

    ms = ngx_parse_time(&value[1], 0);
    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"%V\"", &value[1], name);
        return NGX_CONF_ERROR;
    }

    *msp = ms;
    return NGX_CONF_OK;

duplicate:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" directive is duplicate in memq_cluster", name);
    return NGX_CONF_ERROR;

bad_args:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid number of arguments in \"%V\" directive "
                       "in memq_cluster", name);
    return NGX_CONF_ERROR;
}


static char *
ngx_http_memq_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_memq_loc_conf_t *mlcf = conf;

    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (mlcf->pass.len || mlcf->status == 1 || mlcf->dashboard.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    mlcf->pass = value[1];

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_memq_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_memq_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_memq_loc_conf_t *mlcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (mlcf->status != NGX_CONF_UNSET || mlcf->pass.len
        || mlcf->dashboard.len)
    {
        return "is duplicate";
    }

    mlcf->status = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_memq_status_handler;

    return NGX_CONF_OK;
}


/* like ngx_conf_check_num_bounds(), but the message names the directive */
static char *
ngx_http_memq_check_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_conf_num_bounds_t  *bounds = post;
    ngx_int_t              *np = data;

    ngx_str_t  *value;

    if (*np >= bounds->low && *np <= bounds->high) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\": must be between %i "
                       "and %i", &value[1], &value[0], bounds->low,
                       bounds->high);

    return NGX_CONF_ERROR;
}
