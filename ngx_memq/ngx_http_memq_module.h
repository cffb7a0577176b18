/*
 * ngx_http_memq_module.h: types shared by the files of the memq gateway.
 *
 * Ownership at a glance:
 *
 *   cf->pool        main conf, clusters, static nodes, location confs
 *   cycle->pool     nodes learnt from a nodes_file or etcd at run time (per
 *                   worker; a node is never freed, only marked inactive
 *                   while running streams and connections refer to it;
 *                   once unreferenced, its struct and its shared slot
 *                   are reused for a new address, so the table never
 *                   exceeds NGX_HTTP_MEMQ_MAX_NODES)
 *   cycle->pool and ngx_alloc()
 *                   a node's publish pipes (ngx_http_memq_pipe.c), made at
 *                   their first use, kept for the worker's life and
 *                   reused with the node
 *   per poll pool   an etcd poll's connection buffers and decoded answer
 *   shared zone     one per cluster: node health and counters, summed over
 *                   all workers (ngx_http_memq_sh_t, fixed size, no pointers)
 *   c->pool         one per node connection: the ngx_http_memq_conn_t and
 *                   its read buffer; it lives as long as the connection, so
 *                   a connection can outlive its request in the keepalive
 *                   pool
 *   r->pool         request state: ngx_http_memq_ctx_t and its per-node
 *                   state, output buffers (recycled, never one per message)
 */

#ifndef NGX_HTTP_MEMQ_MODULE_H
#define NGX_HTTP_MEMQ_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "mq_proto.h"
#include "mq_name.h"


#define NGX_HTTP_MEMQ_MAX_NODES       64       /* per cluster, shm slots */
#define NGX_HTTP_MEMQ_ADDR_LEN        64       /* "host:port" in shm */
#define NGX_HTTP_MEMQ_ERR_LEN         96       /* last_error in shm */
#define NGX_HTTP_MEMQ_MAX_VALUE       (64 * 1024 * 1024)
#define NGX_HTTP_MEMQ_PUBLISH_TRIES   3
#define NGX_HTTP_MEMQ_MAX_PIPES       16       /* publish_pipes at most */
#define NGX_HTTP_MEMQ_MAX_WEIGHT      1000     /* as memqd --weight: node
                                                  choice multiplies it by
                                                  owed replies */
#define NGX_HTTP_MEMQ_RUN_SLACK       32       /* replies a node may owe
                                                  above the least while
                                                  a run goes on */
#define NGX_HTTP_MEMQ_RUN_LAG         4        /* ms a node's replies may
                                                  lag the quickest node's
                                                  and it still keeps runs */
#define NGX_HTTP_MEMQ_PIPE_MSG        (16 * 1024) /* a set in a pipe at
                                                   most */
#define NGX_HTTP_MEMQ_LOG_QUOTE       96       /* client bytes in a log
                                                  line at most */
#define NGX_HTTP_MEMQ_SHM_SIZE        (128 * 1024)
/* memqd's refusal of a connection it just accepted (see conn_limit()) */
#define NGX_HTTP_MEMQ_CONN_LIMIT      "too many connections"

#define NGX_HTTP_MEMQ_SRC_STATIC      0x01
#define NGX_HTTP_MEMQ_SRC_FILE        0x02
#define NGX_HTTP_MEMQ_SRC_ETCD        0x04

/* etcd state in shm */
#define NGX_HTTP_MEMQ_ETCD_STARTING   0        /* no answer yet */
#define NGX_HTTP_MEMQ_ETCD_UP         1
#define NGX_HTTP_MEMQ_ETCD_UNREACHABLE 2

/* consume output formats: name, enum member */
#define NGX_HTTP_MEMQ_FORMATS(X)                                             \
    X("ndjson", NGX_HTTP_MEMQ_FMT_NDJSON)                                    \
    X("sse",    NGX_HTTP_MEMQ_FMT_SSE)                                       \
    X("raw",    NGX_HTTP_MEMQ_FMT_RAW)

typedef enum {
#define NGX_HTTP_MEMQ_FMT_ENUM(name, e) e,
    NGX_HTTP_MEMQ_FORMATS(NGX_HTTP_MEMQ_FMT_ENUM)
#undef NGX_HTTP_MEMQ_FMT_ENUM
    NGX_HTTP_MEMQ_FMT_COUNT
} ngx_http_memq_format_e;


/* memq_ack: who ends a message's life */
#define NGX_HTTP_MEMQ_ACK_WRITE       0        /* written to the socket */
#define NGX_HTTP_MEMQ_ACK_CLIENT      1        /* the client's op=ack */


typedef struct ngx_http_memq_cluster_s  ngx_http_memq_cluster_t;
typedef struct ngx_http_memq_node_s     ngx_http_memq_node_t;
typedef struct ngx_http_memq_conn_s     ngx_http_memq_conn_t;
typedef struct ngx_http_memq_etcd_s     ngx_http_memq_etcd_t;
typedef struct ngx_http_memq_pipe_s     ngx_http_memq_pipe_t;


/* a single POST waiting in a publish pipe (ngx_http_memq_pipe.c) */
typedef struct {
    void                     *owner;       /* NULL: its client left */
    size_t                    len;         /* payload bytes */
    ngx_msec_t                sent;        /* appended at */
    size_t                    end;         /* the pipe's queued after it */
} ngx_http_memq_pipe_entry_t;


/* one node in shared memory; plain data only, counters are atomics */
typedef struct {
    u_char                  addr[NGX_HTTP_MEMQ_ADDR_LEN]; /* "host:port" */
    size_t                  addr_len;
    ngx_uint_t              used;         /* slot taken */
    ngx_uint_t              sources;      /* NGX_HTTP_MEMQ_SRC_* listing it */
    ngx_uint_t              weight;
    ngx_uint_t              fails;        /* failures in the current window */
    ngx_msec_t              fail_start;   /* window start */
    ngx_msec_t              down_until;   /* 0 = up */
    ngx_atomic_t            failures;     /* total */
    ngx_atomic_t            pool_idle;
    ngx_atomic_t            pool_busy;
    ngx_atomic_t            msgs_in;      /* published to the node */
    ngx_atomic_t            msgs_out;     /* consumed from the node */
    ngx_atomic_t            bytes_in;
    ngx_atomic_t            bytes_out;
    ngx_atomic_t            inflate_errors;
    ngx_uint_t              gen;          /* bumped when the slot is
                                             taken for another address */
    size_t                  last_error_len;
    u_char                  last_error[NGX_HTTP_MEMQ_ERR_LEN];
    time_t                  last_error_at; /* 0: never */
    ngx_uint_t              erring;       /* no success since last_error */
} ngx_http_memq_shnode_t;


/* the cluster's etcd as the workers last saw it */
typedef struct {
    ngx_uint_t              state;        /* NGX_HTTP_MEMQ_ETCD_* */
    ngx_uint_t              nodes;        /* listed by the last answer */
    ngx_atomic_t            polls;
    ngx_atomic_t            failures;     /* polls that found no etcd */
    size_t                  endpoint_len; /* URL last answered */
    u_char                  endpoint[NGX_HTTP_MEMQ_ADDR_LEN];
    size_t                  last_error_len;
    u_char                  last_error[NGX_HTTP_MEMQ_ERR_LEN];
    time_t                  last_error_at; /* 0: never */
} ngx_http_memq_shetcd_t;


typedef struct {
    ngx_atomic_t            streams_active;
    ngx_http_memq_shetcd_t  etcd;
    ngx_http_memq_shnode_t  nodes[NGX_HTTP_MEMQ_MAX_NODES];
} ngx_http_memq_sh_t;


/* a node as a worker sees it */
struct ngx_http_memq_node_s {
    ngx_str_t                 addr;        /* "host:port" */
    struct sockaddr          *sockaddr;
    socklen_t                 socklen;
    ngx_int_t                 weight;
    ngx_int_t                 current_weight;  /* smooth weighted RR */
    ngx_uint_t                owed;        /* sets this worker's publish
                                              pipes wait replies for */
    ngx_msec_t                reply_ms8;   /* how long those replies
                                              took lately: a moving
                                              average, ms x 8 */
    ngx_uint_t                replied;     /* reply_ms8 has a reply */
    ngx_uint_t                sources;     /* NGX_HTTP_MEMQ_SRC_* */
    ngx_uint_t                slot;        /* index in sh->nodes */
    ngx_uint_t                slot_gen;    /* its gen when taken */
    ngx_http_memq_cluster_t  *cluster;     /* (ref) */
    ngx_queue_t               idle;        /* pooled ngx_http_memq_conn_t */
    ngx_uint_t                nidle;
    ngx_uint_t                refs;        /* streams and connections
                                              using it: a node without
                                              sources and refs may be
                                              reused for another address */
    ngx_http_memq_pipe_t     *pipes;       /* publish_pipes of them, made
                                              at the first single POST;
                                              kept when the node is
                                              reused */
    ngx_sockaddr_t            sa;          /* sockaddr points here */
    u_char                    addr_buf[NGX_HTTP_MEMQ_ADDR_LEN];
};


struct ngx_http_memq_cluster_s {
    ngx_str_t                 name;
    ngx_array_t               nodes;       /* ngx_http_memq_node_t *; every
                                              node ever known; active ones
                                              have sources != 0 */
    ngx_uint_t                keepalive;
    ngx_msec_t                keepalive_timeout;
    ngx_msec_t                connect_timeout;
    ngx_msec_t                read_timeout;
    ngx_uint_t                max_fails;
    ngx_msec_t                fail_timeout;
    ngx_uint_t                publish_pipes; /* per node per worker */
    ngx_http_memq_node_t     *run_node;    /* node_next(): the last
                                              node round robin chose */
    ngx_msec_t                run_msec;    /* and when */
    ngx_str_t                 nodes_file;  /* empty: none */

    ngx_shm_zone_t           *shm_zone;
    ngx_http_memq_sh_t       *sh;          /* (ref) in the zone */
    ngx_slab_pool_t          *shpool;      /* (ref) */

    time_t                    file_mtime;  /* nodes_file as last read */
    long                      file_mtime_ns;
    ino_t                     file_ino;
    off_t                     file_size;
    ngx_uint_t                file_seen;   /* read at least once */
    ngx_event_t               watch;       /* nodes_file timer */
    ngx_http_memq_etcd_t     *etcd;        /* NULL: no etcd */

    u_char                   *conf_file;   /* where it was defined */
    ngx_uint_t                conf_line;
};


typedef struct {
    ngx_array_t               clusters;    /* ngx_http_memq_cluster_t * */
} ngx_http_memq_main_conf_t;


/* per-request figures behind $memq_messages, $memq_nodes_ok and
 * $memq_nodes_failed; the first member of every request ctx */
typedef struct {
    ngx_uint_t                messages;
    ngx_uint_t                nodes_ok;
    ngx_uint_t                nodes_failed;
} ngx_http_memq_rstat_t;


typedef struct {
    ngx_str_t                 pass;        /* memq_pass cluster name */
    ngx_http_memq_cluster_t  *cluster;     /* (ref) resolved at merge */
    ngx_http_complex_value_t *key;
    ngx_msec_t                wait_max;
    ngx_uint_t                batch;
    ngx_flag_t                inflate;
    ngx_uint_t                compress_flag;
    size_t                    inflate_max_size;
    size_t                    compress_min_size;
    ngx_msec_t                sse_heartbeat;
    ngx_uint_t                ack;         /* NGX_HTTP_MEMQ_ACK_* */
    ngx_msec_t                lease;       /* client mode: default lease */
    ngx_flag_t                status;
    ngx_str_t                 cors;        /* memq_cors origin; empty: off */
    ngx_str_t                 dashboard;   /* memq_dashboard page; empty:
                                              none */
} ngx_http_memq_loc_conf_t;


/*
 * A connection to a node (ngx_http_memq_peer.c).  Allocated from its own
 * pool, which becomes c->pool, so it survives in the keepalive pool.
 *
 * The owner gives a request to send (out, owner's memory, untouched until
 * sent) and a handler.  The handler is called with NGX_OK when new reply
 * bytes are in `in` (the owner consumes them by moving in->pos, and sets
 * `need` when it must see more bytes at once than the buffer holds), or
 * with NGX_ERROR when the connection failed (`err` says why).  The handler
 * returns NGX_OK to keep reading, NGX_DONE once it has closed, released or
 * re-armed the connection (then the caller must not touch it).
 */
typedef ngx_int_t (*ngx_http_memq_conn_handler_pt)(ngx_http_memq_conn_t *mc,
    ngx_int_t rc);

struct ngx_http_memq_conn_s {
    ngx_peer_connection_t          pc;
    ngx_http_memq_node_t          *node;        /* (ref) */
    ngx_pool_t                    *pool;        /* becomes c->pool */
    ngx_log_t                      log;         /* copy of the owner's */
    ngx_buf_t                     *in;          /* reply bytes */
    size_t                         need;        /* bytes needed from in->pos */
    ngx_buf_t                     *out;         /* (ref) request to send */
    ngx_msec_t                     reply_timeout; /* first byte of a reply */
    ngx_http_memq_conn_handler_pt  handler;
    void                          *data;        /* owner */
    ngx_connection_t              *owner_conn;  /* (ref) client connection,
                                                   for posted requests */
    const char                    *err;         /* static reason */
    ngx_queue_t                    queue;       /* in node->idle */
    unsigned                       connecting:1;
    unsigned                       waiting:1;   /* request sent, reply due */
    unsigned                       pooled:1;
    unsigned                       reset:1;     /* closed in use: RST */
    unsigned                       held:1;      /* the owner reads no more
                                                   for now */
    unsigned                       resumed:1;   /* handler first, then
                                                   read */
    unsigned                       local:1;     /* err is a shortage of
                                                   this worker, not the
                                                   node's failure */
    unsigned                       pipelined:1; /* a send while replies
                                                   are owed keeps their
                                                   read timer (a publish
                                                   pipe) */
    unsigned                       spoke:1;     /* a reply line came on
                                                   it (kept in the pool):
                                                   the node can no longer
                                                   refuse it */
};


extern ngx_module_t  ngx_http_memq_module;


/* ngx_http_memq_module.c */
ngx_http_memq_node_t *ngx_http_memq_node_find(ngx_http_memq_cluster_t *cl,
    u_char *addr, size_t len);
ngx_http_memq_node_t *ngx_http_memq_node_add(ngx_http_memq_cluster_t *cl,
    ngx_pool_t *pool, ngx_str_t *addr, ngx_int_t weight, ngx_uint_t source,
    ngx_str_t *err);
ngx_int_t ngx_http_memq_weight(u_char *p, size_t len);
ngx_int_t ngx_http_memq_node_parse(ngx_pool_t *pool, ngx_str_t *text,
    ngx_http_memq_node_t *node, ngx_str_t *err, ngx_uint_t resolve);
size_t ngx_http_memq_log_quote(u_char *buf, u_char *data, size_t len);
void ngx_http_memq_json_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
ngx_int_t ngx_http_memq_send_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len);

/* ngx_http_memq_handler.c */
ngx_int_t ngx_http_memq_consume(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_get_key(ngx_http_request_t *r,
    ngx_http_memq_loc_conf_t *mlcf, ngx_str_t *key);
void ngx_http_memq_streams_exiting(void);

/* ngx_http_memq_ack.c */
ngx_uint_t ngx_http_memq_ack_wanted(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_ack(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_parse_lease(ngx_str_t *v, ngx_msec_t *ms);

/* ngx_http_memq_publish.c */
ngx_int_t ngx_http_memq_publish(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_body_bytes(ngx_http_request_t *r, ngx_str_t *body);
ngx_uint_t ngx_http_memq_set_refused(mq_reply_t *reply);
void ngx_http_memq_publish_piped(void *owner, ngx_http_memq_node_t *node,
    ngx_int_t rc, mq_reply_t *reply, const char *reason);

/* ngx_http_memq_pipe.c */
ngx_int_t ngx_http_memq_pipe_send(ngx_http_memq_node_t *node, u_char *data,
    size_t size, size_t len, void *owner, ngx_http_memq_pipe_entry_t **ep);
void ngx_http_memq_pipe_forget(ngx_http_memq_pipe_entry_t *e);

/* ngx_http_memq_peer.c */
ngx_int_t ngx_http_memq_conn_get(ngx_http_memq_node_t *node, ngx_log_t *log,
    ngx_http_memq_conn_t **mcp);
void ngx_http_memq_conn_send(ngx_http_memq_conn_t *mc, ngx_buf_t *out,
    ngx_msec_t reply_timeout);
void ngx_http_memq_conn_replied(ngx_http_memq_conn_t *mc);
ngx_int_t ngx_http_memq_conn_limit(ngx_http_memq_conn_t *mc,
    mq_reply_t *reply);
void ngx_http_memq_conn_hold(ngx_http_memq_conn_t *mc);
void ngx_http_memq_conn_resume(ngx_http_memq_conn_t *mc);
void ngx_http_memq_conn_release(ngx_http_memq_conn_t *mc);
void ngx_http_memq_conn_close(ngx_http_memq_conn_t *mc);
void ngx_http_memq_conn_close_fin(ngx_http_memq_conn_t *mc);
void ngx_http_memq_conn_close_idle(ngx_http_memq_node_t *node);
ngx_http_memq_node_t *ngx_http_memq_node_next(ngx_http_memq_cluster_t *cl,
    ngx_http_memq_node_t **skip, ngx_uint_t nskip, ngx_uint_t piped);
void ngx_http_memq_run_posted(ngx_connection_t *c);

/* ngx_http_memq_stream.c; how an ndjson message with an id goes */
#define NGX_HTTP_MEMQ_JSON_PLAIN    0      /* copied as it is */
#define NGX_HTTP_MEMQ_JSON_ESCAPED  1
#define NGX_HTTP_MEMQ_JSON_B64      2      /* not valid UTF-8 */

size_t ngx_http_memq_encode_size(ngx_uint_t format, u_char *data, size_t len,
    ngx_str_t *id, ngx_uint_t *how);
u_char *ngx_http_memq_encode(ngx_uint_t format, u_char *dst, u_char *data,
    size_t len, ngx_str_t *id, ngx_uint_t how);
u_char *ngx_http_memq_write_uint(u_char *p, uint64_t n);
u_char *ngx_http_memq_write_id(u_char *p, ngx_str_t *addr, uint64_t n);
ngx_int_t ngx_http_memq_inflate(u_char *src, size_t len, u_char **dst,
    size_t *dlen, size_t *cap, size_t max, ngx_pool_t *pool);
ngx_int_t ngx_http_memq_deflate(ngx_pool_t *pool, u_char *src, size_t len,
    ngx_str_t *out);

/* ngx_http_memq_shm.c */
ngx_int_t ngx_http_memq_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data);
ngx_int_t ngx_http_memq_shm_slot(ngx_http_memq_cluster_t *cl,
    ngx_http_memq_node_t *node);
ngx_int_t ngx_http_memq_node_usable(ngx_http_memq_node_t *node);
void ngx_http_memq_node_failed(ngx_http_memq_node_t *node, ngx_log_t *log,
    const char *reason);
void ngx_http_memq_node_ok(ngx_http_memq_node_t *node);
ngx_http_memq_shnode_t *ngx_http_memq_shnode(ngx_http_memq_node_t *node);
void ngx_http_memq_shm_sources(ngx_http_memq_cluster_t *cl);
void ngx_http_memq_shm_release(ngx_http_memq_node_t *node);

/* ngx_http_memq_etcd.c */
char *ngx_http_memq_etcd_conf(ngx_conf_t *cf, ngx_http_memq_cluster_t *cl);
void ngx_http_memq_etcd_init_zone(ngx_http_memq_cluster_t *cl);
void ngx_http_memq_etcd_init_process(ngx_http_memq_cluster_t *cl,
    ngx_cycle_t *cycle);
void ngx_http_memq_etcd_seed(ngx_http_memq_cluster_t *cl, ngx_log_t *log);

/* ngx_http_memq_errpage.c */
ngx_int_t ngx_http_memq_errpage_init(ngx_conf_t *cf);

/* ngx_http_memq_status.c */
ngx_int_t ngx_http_memq_status_handler(ngx_http_request_t *r);

/* ngx_http_memq_cors.c */
char *ngx_http_memq_cors_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_memq_cors_init(ngx_conf_t *cf);
ngx_int_t ngx_http_memq_cors_preflight(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_cors_check(ngx_http_request_t *r);
ngx_int_t ngx_http_memq_header_add(ngx_http_request_t *r, const char *key,
    ngx_str_t *value);

/* ngx_http_memq_dashboard.c */
char *ngx_http_memq_dashboard_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

#endif /* NGX_HTTP_MEMQ_MODULE_H */
