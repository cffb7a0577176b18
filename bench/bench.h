/*
 * bench.h: memq-bench, the load generator that measures memqd against its
 * peers (memcached, Redis, beanstalkd) with one client program.
 *
 * One thread, one epoll loop, non-blocking sockets.  Each connection keeps
 * up to `depth` produce or consume requests in flight; replies come back in
 * order, so the requests in flight are a FIFO per connection and the
 * latency of a request is the time between its send and its reply.
 *
 *   main.c       options, the run, the report
 *   loop.c       connections, the epoll loop, who sends what and when
 *   proto_mc.c   memq and memcached (memcache text protocol)
 *   proto_redis.c    Redis (RESP)
 *   proto_beanstalk.c beanstalkd
 *   payload.c    message bodies, --verify checks and the id bitmap
 *   hist.c       latency histogram
 *   http_drain.c --http-drain: GET streams through the HTTP gateway, with
 *                client acknowledgement (its own loop: a mode apart)
 *
 * A protocol module only formats requests and splits replies; all policy
 * (depth, counts, which connection uses which queue, when a queue counts
 * as drained) lives in loop.c.
 */

#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


#define BENCH_EXIT_OK        0
#define BENCH_EXIT_VERIFY    1    /* --verify found lost, dup or corrupt */
#define BENCH_EXIT_FAIL      2    /* usage, connect, server or protocol error */

#define BENCH_CRC_LEN        8    /* hex digits of the payload checksum */
#define BENCH_QUEUE_MAX      250  /* bytes of a queue name, as memqd's */
#define BENCH_QUEUES_MAX     100000


typedef enum {
    BENCH_MODE_PRODUCE,
    BENCH_MODE_CONSUME,
    BENCH_MODE_MIXED
} bench_mode_e;


/* a growable byte buffer: data[pos..len) is the unread/unsent part */
typedef struct {
    char                 *data;
    size_t                pos;
    size_t                len;
    size_t                cap;
} bench_buf_t;


/* what a request in flight is, so its reply is handled accordingly */
typedef enum {
    BENCH_REQ_SETUP,      /* connection preamble (beanstalk use/watch) */
    BENCH_REQ_SELECT,     /* a switch to another queue (beanstalk) */
    BENCH_REQ_PRODUCE,
    BENCH_REQ_CONSUME,
    BENCH_REQ_ACK         /* beanstalk delete, memq final get q/close */
} bench_req_e;


typedef enum {
    BENCH_REPLY_OK,       /* USING, WATCHING, DELETED, +OK */
    BENCH_REPLY_STORED,   /* STORED, INSERTED <id>, :<n> */
    BENCH_REPLY_VALUE,    /* one item: value[0..value_len), job_id */
    BENCH_REPLY_EMPTY,    /* END, $-1, *-1, TIMED_OUT */
    BENCH_REPLY_ERROR     /* the server refused: text says why */
} bench_reply_e;


typedef struct {
    bench_reply_e         type;
    const char           *value;      /* (ref) item bytes, in the in buffer */
    size_t                value_len;
    uint64_t              job_id;     /* beanstalk RESERVED <id>; memq
                                         --lease: the item's id */
    const char           *key;        /* (ref) memq VALUE key */
    size_t                key_len;
    const char           *text;       /* (ref) error line */
    size_t                text_len;
} bench_reply_t;


typedef struct bench_proto_s  bench_proto_t;


/*
 * One queue (list, tube) of a run: cf->queue itself, or with --queues N > 1
 * one of cf->queue ".0" .. cf->queue "." N-1.
 */
typedef struct {
    char                 *name;       /* NUL-terminated */
    size_t                len;
    uint64_t              stored;     /* produce requests acknowledged */
    uint64_t              taken;      /* items consumed from it */
    unsigned              drained:1;  /* empty once no producer was left */
} bench_queue_t;


/* the command line, read-only once the run starts */
typedef struct {
    const bench_proto_t  *proto;
    const char           *host;
    const char           *port;
    unsigned              conns;
    unsigned              depth;
    size_t                size;       /* message bytes */
    uint64_t              count;      /* messages in total */
    bench_mode_e          mode;
    const char           *queue;      /* queue, list or tube name */
    size_t                queue_len;
    unsigned              queues;     /* --queues: <queue>.<i> when > 1 */
    unsigned              ack:1;      /* memq: get q/close/open */
    uint32_t              lease_ms;   /* memq: get q/lease=MS, acked by
                                         delete q/<id> noreply; 0 = no */
    unsigned              verify:1;
    unsigned              quiet:1;
    int64_t               wait_ms;    /* consume: wait for items, -1 = no */
    const char           *run_id;     /* --verify: the run's tag */
    double                duration;   /* stop issuing after this, 0 = no */
    double                timeout;    /* give up after this long idle */
} bench_conf_t;


struct bench_proto_s {
    const char           *name;
    unsigned              queue:1;    /* a real queue: drains, --verify */

    /*
     * Appends what makes q the queue of the requests that follow on this
     * connection, in place of from (NULL: a new connection), and returns
     * how many replies it brings (each must be OK), or -1 when out of
     * memory.  memq and redis name the queue in every request: 0.
     */
    int       (*select)(bench_buf_t *out, const bench_conf_t *cf,
                        int producer, const bench_queue_t *from,
                        const bench_queue_t *q);

    /*
     * Appends a produce request for message number id into q with room
     * for cf->size payload bytes and returns where the payload goes (the
     * caller fills it in), or NULL when out of memory.
     */
    char     *(*produce)(bench_buf_t *out, const bench_conf_t *cf,
                         const bench_queue_t *q, uint64_t id);

    /* appends a consume request; id is the key number for memcached */
    int       (*consume)(bench_buf_t *out, const bench_conf_t *cf,
                         const bench_queue_t *q, uint64_t id);

    /*
     * After an item arrived: appends the request that removes it for good
     * (beanstalk delete) and returns 1, or 0 when none is needed.
     */
    int       (*ack)(bench_buf_t *out, const bench_conf_t *cf,
                     const bench_reply_t *r);

    /*
     * Before a consumer closes, once for each queue it used: appends a
     * last request (memq --ack: get q/close) and returns 1, or 0 when none
     * is needed.
     */
    int       (*finish)(bench_buf_t *out, const bench_conf_t *cf,
                        const bench_queue_t *q);

    /*
     * Splits one reply off buf[0..len): returns the bytes it took, 0 when
     * the reply is not complete yet, -1 when the bytes make no sense
     * (the connection is out of sync and the run fails).
     */
    ssize_t   (*parse)(const char *buf, size_t len, bench_reply_t *r);
};


extern const bench_proto_t  bench_proto_memq;
extern const bench_proto_t  bench_proto_memcached;
extern const bench_proto_t  bench_proto_redis;
extern const bench_proto_t  bench_proto_beanstalk;


/* latency histogram, microseconds, about 1.5% resolution */
#define BENCH_HIST_BUCKETS   (128 + 48 * 64)

typedef struct {
    uint64_t              n;
    uint64_t              max;
    uint64_t              b[BENCH_HIST_BUCKETS];
} bench_hist_t;

void bench_hist_add(bench_hist_t *h, uint64_t us);
uint64_t bench_hist_pct(const bench_hist_t *h, double pct);


/* what a run did; filled in by bench_run() */
typedef struct {
    uint64_t              produced;   /* produce requests acknowledged */
    uint64_t              consumed;   /* items taken */
    uint64_t              misses;     /* memcached get of an absent key */
    uint64_t              empties;    /* empty answers while producing */
    uint64_t              errors;     /* server refusals */
    uint64_t              lost;       /* --verify */
    uint64_t              dup;
    uint64_t              corrupt;
    uint64_t              misplaced;  /* --verify: taken from another queue */
    uint64_t              queue_min;  /* msgs of the least busy queue */
    uint64_t              queue_max;  /* and of the busiest */
    double                secs;
    bench_hist_t          hist;       /* produce and consume latencies */
    const char           *failure;    /* a reason the run failed, or NULL */
} bench_result_t;

/* runs the benchmark; returns 0, or -1 with res->failure set */
int bench_run(const bench_conf_t *cf, bench_result_t *res);

/* memq-bench --http-drain ...: argv[0] is "--http-drain"; exit status */
int bench_http_drain(int argc, char **argv);


/* buffers: each returns 0, or -1 when out of memory */
int bench_buf_reserve(bench_buf_t *b, size_t n);
int bench_buf_append(bench_buf_t *b, const void *p, size_t n);
int bench_buf_printf(bench_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));


/* payloads (payload.c) */
typedef struct bench_verify_s  bench_verify_t;

/* the shortest payload --verify can use for these ids and run id */
size_t bench_payload_min_size(const bench_conf_t *cf);

/* fills p[0..cf->size) with the payload of message id sent to queue q */
void bench_payload_fill(const bench_conf_t *cf, char *p, uint64_t id,
    unsigned q);

bench_verify_t *bench_verify_create(const bench_conf_t *cf);
void bench_verify_destroy(bench_verify_t *v);

/*
 * checks one item taken from queue q, counts it as seen, duplicate or
 * corrupt, and as misplaced when it was produced into another queue
 */
void bench_verify_item(bench_verify_t *v, const char *p, size_t n,
    unsigned q);

/* fills lost (ids 0..upto-1 never seen), dup, corrupt and misplaced */
void bench_verify_report(bench_verify_t *v, uint64_t upto,
    bench_result_t *res);

#endif /* BENCH_H */
