/*
 * metrics.c: the Prometheus endpoint of memqd: a small HTTP/1.1 server in
 * the event loop answering `GET /metrics` (and HEAD) with text format
 * 0.0.4 (prom.h), and the counters only it reads.
 *
 * It must never be a way to hurt the node:
 *   - at most METRICS_MAX_CONNS connections; more are accepted and closed
 *     at once, so they neither queue in the backlog nor hold a descriptor,
 *     unless a connection that made no progress for METRICS_EVICT_MS
 *     gives up its slot (evict_one()): a scraper sends its request at
 *     once and reads as the answer comes, so eight idle or stalled
 *     clients cannot keep every scraper out for their whole life;
 *     when accept() itself fails (no descriptors) the listener rests for
 *     METRICS_BACKOFF_MS rather than spin;
 *   - the request (line and headers) must fit in METRICS_REQ_MAX bytes
 *     and arrive within METRICS_READ_MS of the accept, else 431 / close;
 *   - the answer is rendered once into a buffer and written without
 *     blocking as the client takes it; a client that takes nothing for
 *     METRICS_WRITE_MS is closed, and no connection lives longer than
 *     METRICS_TOTAL_MS, however slowly it reads;
 *   - a big answer is shared by the scrapes that ask soon after it was
 *     rendered (answer_share()), so many scrapers, or a flood of them,
 *     neither take the loop's time nor hold a copy each;
 *   - every answer closes the connection (no keep-alive): after the last
 *     byte the write side is shut and input is drained for at most
 *     METRICS_LINGER_MS, so the close does not reset the answer away.
 *
 *   READ ──request──► WRITE ──all sent──► LINGER ──EOF / timer──► closed
 *     └──timer, EOF, error─────────────────────────────────────► closed
 *
 * A connection is freed only by its own event handler or its own timer,
 * so no loop callback ever sees a freed one.
 *
 * Per-queue families come from the queue_metrics[] table: a counter or
 * gauge kept in a queue_t field is one line there.
 */

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "mq_proto.h"
#include "net.h"
#include "queue.h"
#include "server.h"
#include "sync.h"

#define METRICS_MAX_CONNS   8
#define METRICS_REQ_MAX     8192
#define METRICS_READ_MS     5000
#define METRICS_WRITE_MS    10000
#define METRICS_TOTAL_MS    60000     /* a connection's whole life */
#define METRICS_EVICT_MS    1000      /* slots full: one still that long
                                         makes room */
#define METRICS_LINGER_MS   2000
#define METRICS_BACKOFF_MS  100       /* accept() failing: pause */
#define METRICS_HDR_ROOM    256       /* status line and headers */
#define METRICS_OUT_MAX     ((size_t) 256 * 1024 * 1024)
#define METRICS_SHARE_MIN   ((size_t) 1024 * 1024)   /* answer_share() */
#define METRICS_SHARE_COST  9     /* reuse for 9x the time it took */
#define METRICS_PATH        "/metrics"
#define METRICS_CTYPE       "text/plain; version=0.0.4; charset=utf-8"

typedef enum {
    MC_READ,
    MC_WRITE,
    MC_LINGER
} mconn_state_e;

typedef struct mconn_s  mconn_t;

/* an answer, headers included, shared by the connections sending it */
typedef struct {
    unsigned        refs;         /* those connections, and `shared` */
    int             status;
    prom_buf_t      buf;          /* METRICS_HDR_ROOM bytes, then body */
    size_t          start;        /* where the status line begins */
} manswer_t;

struct mconn_s {
    loop_io_t       io;
    loop_timer_t    timer;        /* the deadline of the current state */
    mconn_state_e   state;
    uint64_t        deadline;     /* loop_now() past which it is closed */
    char            in[METRICS_REQ_MAX];
    size_t          in_len;
    manswer_t      *out;          /* (ref) what it sends, NULL before */
    size_t          out_sent;     /* next byte of out->buf to send */
    size_t          out_end;      /* out->buf.len, or the head for HEAD */
    mconn_t        *next;         /* every open connection */
    mconn_t        *prev;
};

typedef struct {
    const char     *name;
    const char     *type;
    const char     *help;
    size_t          field;        /* offsetof a uint64_t in queue_t */
    uint64_t      (*value)(queue_t *q);   /* else computed */
    unsigned        scale;        /* prom_sample() */
} queue_metric_t;

#define QFIELD(name, type, help, f)                                          \
    { name, type, help, offsetof(queue_t, f), NULL, 1 }

static uint64_t queue_age(queue_t *q);

static const queue_metric_t  queue_metrics[] = {
    QFIELD("memqd_queue_items", "gauge",
           "Items waiting in the queue (open items not included).", items),
    QFIELD("memqd_queue_bytes", "gauge",
           "Payload bytes of the items waiting in the queue.", bytes),
    QFIELD("memqd_queue_open_items", "gauge",
           "Items taken but not acknowledged yet (get /open, or a reply "
           "still being delivered): owed to the queue.", open_items),
    QFIELD("memqd_queue_waiters", "gauge",
           "Long polls waiting on the queue.", nwaiters),
    QFIELD("memqd_queue_enqueued_total", "counter",
           "Items stored in the queue since it was created.", total_items),
    QFIELD("memqd_queue_expired_total", "counter",
           "Items of the queue dropped because they expired.",
           expired_items),
    QFIELD("memqd_queue_leased_items", "gauge",
           "Items leased (get /lease=) and not acknowledged yet.",
           leased_items),
    QFIELD("memqd_queue_redelivered_total", "counter",
           "Deliveries of items that had been delivered before.",
           redelivered_items),
    QFIELD("memqd_queue_dead_lettered_total", "counter",
           "Items moved to the dead-letter queue after max_deliveries.",
           dead_lettered_items),
    { "memqd_queue_head_age_seconds", "gauge",
      "Age of the item at the head of the queue, 0 when it is empty.",
      0, queue_age, 1000 },
};

static const char  *cmd_names[] = {
#define METRICS_CMD_NAME(e, s) s,
    METRICS_CMDS(METRICS_CMD_NAME)
#undef METRICS_CMD_NAME
};

metrics_t           metrics;

static loop_io_t    listen_io;
static loop_timer_t listen_backoff;   /* armed while accept() fails */
static mconn_t     *conns;
static unsigned     nconns;
static size_t       last_size;        /* of the last 200 answer */
static manswer_t   *shared;           /* a big 200 answer, for a while */
static loop_timer_t shared_timer;     /* ends its while */

static void mconn_close(mconn_t *mc);
static void mconn_write(mconn_t *mc);
static void mconn_arm(mconn_t *mc, uint64_t ms);
static int evict_one(void);


static uint64_t
queue_age(queue_t *q)
{
    return queue_age_ms(q);
}


void
metrics_command(int mq_cmd)
{
    metrics_cmd_e  k;

    switch (mq_cmd) {
    case MQ_CMD_SET:
        k = METRICS_CMD_SET;
        break;
    case MQ_CMD_GET:
    case MQ_CMD_GETS:
        k = METRICS_CMD_GET;
        break;
    case MQ_CMD_DELETE:
        k = METRICS_CMD_DELETE;
        break;
    case MQ_CMD_TOUCH:
        k = METRICS_CMD_TOUCH;
        break;
    case MQ_CMD_STATS:
        k = METRICS_CMD_STATS;
        break;
    default:
        k = METRICS_CMD_OTHER;
        break;
    }

    metrics.cmds[k]++;
}


void
metrics_latency(int which, uint64_t start_us, uint64_t n)
{
    uint64_t  now, us;

    now = loop_now_us();
    us = now > start_us ? now - start_us : 0;

    while (n--) {
        prom_hist_observe(&metrics.latency[which], us);
    }
}


/* one family of one number */
static void
single(prom_buf_t *b, const char *name, const char *type, const char *help,
    uint64_t v)
{
    prom_family(b, name, type, help);
    prom_sample(b, name, NULL, NULL, 0, v, 1);
}


static void
render_node(prom_buf_t *b)
{
    size_t       i;
    uint64_t     items, bytes;
    prom_hist_t  fsync_hist;

    queue_totals(&items, &bytes);

    single(b, "memqd_open_connections", "gauge",
           "Memcache client connections open now.", srv.curr_conns);
    single(b, "memqd_accepted_connections_total", "counter",
           "Memcache client connections accepted since start.",
           srv.total_conns);

    prom_family(b, "memqd_commands_total", "counter",
                "Memcache commands received, by kind.");
    for (i = 0; i < METRICS_NCMDS; i++) {
        prom_sample(b, "memqd_commands_total", "command", cmd_names[i],
                    strlen(cmd_names[i]), metrics.cmds[i], 1);
    }

    single(b, "memqd_get_hits_total", "counter",
           "Keys of get commands that returned items.", srv.get_hits);
    single(b, "memqd_get_misses_total", "counter",
           "Keys of get commands that returned nothing.", srv.get_misses);
    single(b, "memqd_read_bytes_total", "counter",
           "Bytes read from memcache clients.", metrics.bytes_read);
    single(b, "memqd_written_bytes_total", "counter",
           "Bytes written to memcache clients.", metrics.bytes_written);
    single(b, "memqd_items", "gauge",
           "Items waiting, over every queue.", items);
    single(b, "memqd_item_bytes", "gauge",
           "Payload bytes of the items waiting, over every queue.", bytes);
    single(b, "memqd_stored_items_total", "counter",
           "Items stored since start.", srv.total_items);
    single(b, "memqd_waiters", "gauge",
           "Long polls waiting, on any queue.", srv.curr_waiters);
    single(b, "memqd_corrupt_records_total", "counter",
           "Damaged records found and skipped (their items are lost).",
           srv.corrupt_records);
    single(b, "memqd_readonly", "gauge",
           "1 when a write or fsync failed and sets are refused.",
           (uint64_t) srv.readonly);
    single(b, "memqd_uptime_seconds", "gauge",
           "Seconds since memqd started.",
           (uint64_t) time(NULL) - srv.start_time);

    sync_fsync_hist(&fsync_hist);
    prom_family(b, "memqd_fsync_duration_seconds", "histogram",
                "Time of each group commit's fdatasync (all journal files "
                "of one commit).");
    prom_hist(b, "memqd_fsync_duration_seconds", NULL, NULL, &fsync_hist);

    prom_family(b, "memqd_request_duration_seconds", "histogram",
                "Command line received to reply queued, STORED released "
                "by its fsync included; a long poll counts its wait.");
    prom_hist(b, "memqd_request_duration_seconds", "command", "set",
              &metrics.latency[METRICS_LAT_SET]);
    prom_hist(b, "memqd_request_duration_seconds", "command", "get",
              &metrics.latency[METRICS_LAT_GET]);
}


/*
 * The per-queue families.  The queues are listed once (queue_next() walks
 * the hash table) and the list is read once per family.
 */
static void
render_queues(prom_buf_t *b)
{
    size_t                 i, j, n, cap;
    uint64_t               v;
    queue_t               *q, **qs, **nq;
    const queue_metric_t  *m;

    qs = NULL;
    n = 0;
    cap = 0;

    for (q = queue_next(NULL); q; q = queue_next(q)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            nq = realloc(qs, cap * sizeof(queue_t *));
            if (nq == NULL) {
                b->failed = 1;
                free(qs);
                return;
            }
            qs = nq;
        }
        qs[n++] = q;
    }

    for (i = 0; i < sizeof(queue_metrics) / sizeof(queue_metrics[0]); i++) {
        m = &queue_metrics[i];
        prom_family(b, m->name, m->type, m->help);

        for (j = 0; j < n && !b->failed; j++) {
            q = qs[j];
            v = m->value ? m->value(q)
                         : *(const uint64_t *) ((const char *) q + m->field);
            prom_sample(b, m->name, "queue", q->name, q->name_len, v,
                        m->scale);
        }
    }

    free(qs);
}


static void
answer_unref(manswer_t *a)
{
    if (a != NULL && --a->refs == 0) {
        prom_buf_free(&a->buf);
        free(a);
    }
}


static void
shared_expire(loop_timer_t *t)
{
    answer_unref(shared);
    shared = NULL;
}


/*
 * A big answer costs the loop its render (tens of milliseconds per ten
 * thousand queues) and costs memory for as long as a scraper takes to
 * read it.  So one of METRICS_SHARE_MIN bytes or more is kept and given
 * to every scrape that asks within METRICS_SHARE_COST times the time its
 * render took: however many scrapers ask, however often, rendering takes
 * at most a tenth of the loop, and scrapers asking together hold one
 * copy.  Smaller answers are rendered for every scrape.
 */
static void
answer_share(manswer_t *a, uint64_t cost_us)
{
    uint64_t  ms;

    ms = cost_us * METRICS_SHARE_COST / 1000;

    if (a->buf.len < METRICS_SHARE_MIN || ms == 0) {
        return;
    }

    a->refs++;
    shared = a;
    loop_timer_add(&shared_timer, ms);
}


/*
 * A new answer: the body is rendered after METRICS_HDR_ROOM bytes left
 * free, then the status line and headers are written just before it, so
 * a big body is never copied.  NULL when out of memory.
 */
static manswer_t *
answer_make(int status, const char *reason)
{
    char        hdr[METRICS_HDR_ROOM];
    int         n;
    size_t      body;
    uint64_t    start, cost;
    manswer_t  *a;
    prom_buf_t *b;

    a = calloc(1, sizeof(manswer_t));
    if (a == NULL) {
        return NULL;
    }

    a->refs = 1;
    b = &a->buf;
    b->max = METRICS_OUT_MAX;

    /* about the size of the last answer: few reallocations */
    if (status == 200 && last_size > 0) {
        b->p = malloc(last_size + last_size / 8);
        b->cap = b->p ? last_size + last_size / 8 : 0;
    }

    memset(hdr, ' ', sizeof(hdr));
    prom_mem(b, hdr, sizeof(hdr));

    cost = 0;

    if (status == 200) {
        start = loop_now_us();
        render_node(b);
        render_queues(b);
        cost = loop_now_us() - start;
        log_debug("metrics", "%zu bytes rendered in %" PRIu64 " us",
                  b->len, cost);

        if (b->failed) {
            log_warn("metrics", "answer larger than %zu bytes or out of "
                     "memory: 500", (size_t) METRICS_OUT_MAX);
            prom_buf_free(b);
            b->max = METRICS_OUT_MAX;
            prom_mem(b, hdr, sizeof(hdr));
            status = 500;
            reason = "Internal Server Error";
        } else {
            last_size = b->len;
        }
    }

    if (status != 200) {
        prom_str(b, reason);
        prom_str(b, "\n");
    }

    if (b->failed) {
        answer_unref(a);
        return NULL;
    }

    body = b->len - sizeof(hdr);

    /* at most about 150 bytes: the reasons and types are ours */
    n = snprintf(hdr, sizeof(hdr),
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s"
                 "Connection: close\r\n\r\n",
                 status, reason,
                 status == 200 ? METRICS_CTYPE : "text/plain",
                 body,
                 status == 405 ? "Allow: GET, HEAD\r\n" : "");

    a->start = sizeof(hdr) - (size_t) n;
    memcpy(b->p + a->start, hdr, (size_t) n);

    a->status = status;

    if (status == 200) {
        answer_share(a, cost);
    }

    return a;
}


/* Sends mc the answer (its head only for HEAD), a shared one if fresh. */
static void
respond(mconn_t *mc, int status, const char *reason, int head)
{
    manswer_t  *a;

    if (status == 200 && shared != NULL) {
        a = shared;
        a->refs++;

    } else {
        a = answer_make(status, reason);
        if (a == NULL) {
            mconn_close(mc);
            return;
        }
    }

    if (a->status == 200) {
        metrics.scrapes++;
    }

    mc->out = a;
    mc->out_sent = a->start;
    mc->out_end = head ? METRICS_HDR_ROOM : a->buf.len;

    mc->state = MC_WRITE;
    mconn_arm(mc, METRICS_WRITE_MS);
    loop_mod(&mc->io, LOOP_WRITE);
    mconn_write(mc);
}


static int
token_char(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
           || (ch >= '0' && ch <= '9') || strchr("!#$%&'*+-.^_`|~", ch);
}


/*
 * The request line of a complete head in[0..len): "METHOD SP target SP
 * HTTP/1.x".  Headers are not needed and are not looked at beyond their
 * size.
 */
static void
handle_request(mconn_t *mc, size_t len)
{
    char        *p, *end, *sp1, *sp2, *q;
    size_t       mlen, plen;

    p = mc->in;
    end = memchr(p, '\n', len);
    if (end > p && end[-1] == '\r') {
        end--;
    }

    sp1 = memchr(p, ' ', (size_t) (end - p));
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t) (end - sp1 - 1)) : NULL;

    if (sp1 == NULL || sp2 == NULL || sp1 == p || sp2 == sp1 + 1
        || sp1[1] != '/' || end - sp2 - 1 != 8
        || memcmp(sp2 + 1, "HTTP/1.", 7) != 0
        || sp2[8] < '0' || sp2[8] > '9')
    {
        respond(mc, 400, "Bad Request", 0);
        return;
    }

    for (q = p; q < sp1; q++) {
        if (!token_char(*q)) {
            respond(mc, 400, "Bad Request", 0);
            return;
        }
    }

    for (q = sp1 + 1; q < sp2; q++) {
        if ((unsigned char) *q <= 0x20 || *q == 0x7f) {
            respond(mc, 400, "Bad Request", 0);
            return;
        }
    }

    mlen = (size_t) (sp1 - p);

    if (!(mlen == 3 && memcmp(p, "GET", 3) == 0)
        && !(mlen == 4 && memcmp(p, "HEAD", 4) == 0))
    {
        respond(mc, 405, "Method Not Allowed", 0);
        return;
    }

    q = memchr(sp1 + 1, '?', (size_t) (sp2 - sp1 - 1));
    plen = (size_t) ((q ? q : sp2) - (sp1 + 1));

    if (plen != sizeof(METRICS_PATH) - 1
        || memcmp(sp1 + 1, METRICS_PATH, plen) != 0)
    {
        respond(mc, 404, "Not Found", mlen == 4);
        return;
    }

    respond(mc, 200, "OK", mlen == 4);
}


/* Length of the head (through its blank line) in in[0..len), or 0. */
static size_t
head_end(const char *in, size_t len)
{
    size_t  i;

    for (i = 0; i + 1 < len; i++) {
        if (in[i] != '\n') {
            continue;
        }
        if (in[i + 1] == '\n') {
            return i + 2;
        }
        if (in[i + 1] == '\r' && i + 2 < len && in[i + 2] == '\n') {
            return i + 3;
        }
    }

    return 0;
}


static void
mconn_read(mconn_t *mc)
{
    ssize_t  n;

    for ( ;; ) {
        n = recv(mc->io.fd, mc->in + mc->in_len,
                 sizeof(mc->in) - mc->in_len, 0);

        if (n == 0) {
            mconn_close(mc);                /* gone before asking */
            return;
        }

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN) {
                mconn_close(mc);
            }
            return;
        }

        mc->in_len += (size_t) n;

        if (head_end(mc->in, mc->in_len) > 0) {
            handle_request(mc, mc->in_len);
            return;
        }

        if (mc->in_len == sizeof(mc->in)) {
            respond(mc, 431, "Request Header Fields Too Large", 0);
            return;
        }
    }
}


static void
mconn_write(mconn_t *mc)
{
    ssize_t  n;

    while (mc->out_sent < mc->out_end) {
        n = send(mc->io.fd, mc->out->buf.p + mc->out_sent,
                 mc->out_end - mc->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                /* the client reads slowly: its deadline starts again */
                mconn_arm(mc, METRICS_WRITE_MS);
                return;
            }
            mconn_close(mc);
            return;
        }
        mc->out_sent += (size_t) n;
    }

    answer_unref(mc->out);
    mc->out = NULL;
    shutdown(mc->io.fd, SHUT_WR);
    mc->state = MC_LINGER;
    mconn_arm(mc, METRICS_LINGER_MS);
    loop_mod(&mc->io, LOOP_READ);
}


/* Reads and drops what the client still sends, until its EOF. */
static void
mconn_linger(mconn_t *mc)
{
    char     buf[4096];
    ssize_t  n;
    size_t   total;

    for (total = 0; total < 16 * sizeof(buf); total += (size_t) n) {
        n = recv(mc->io.fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            mconn_close(mc);
            return;
        }
        if (n < 0) {
            return;
        }
    }
}


static void
mconn_io(loop_io_t *io, unsigned events)
{
    mconn_t  *mc = io->data;

    switch (mc->state) {
    case MC_READ:
        if (events & LOOP_READ) {
            mconn_read(mc);
        }
        break;
    case MC_WRITE:
        if (events & (LOOP_WRITE | LOOP_READ)) {
            mconn_write(mc);
        }
        break;
    case MC_LINGER:
        mconn_linger(mc);
        break;
    }
}


/* Arms mc's timer for ms, never past its deadline. */
static void
mconn_arm(mconn_t *mc, uint64_t ms)
{
    uint64_t  now;

    now = loop_now();
    if (now + ms > mc->deadline) {
        ms = mc->deadline > now ? mc->deadline - now : 0;
    }

    loop_timer_add(&mc->timer, ms);
}


static void
mconn_timeout(loop_timer_t *t)
{
    mconn_close(t->data);
}


static void
mconn_close(mconn_t *mc)
{
    loop_timer_del(&mc->timer);
    loop_del(&mc->io);
    close(mc->io.fd);

    if (mc->prev) {
        mc->prev->next = mc->next;
    } else {
        conns = mc->next;
    }
    if (mc->next) {
        mc->next->prev = mc->prev;
    }

    nconns--;
    answer_unref(mc->out);
    free(mc);
    loop_timer_release();
}


static void
accept_pause(void)
{
    loop_mod(&listen_io, 0);
    loop_timer_add(&listen_backoff, METRICS_BACKOFF_MS);
}


static void
accept_handler(loop_io_t *io, unsigned events)
{
    int       fd;
    mconn_t  *mc;

    for ( ;; ) {
        fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno != EAGAIN) {
                /* out of descriptors or memory: the connection stays in
                 * the backlog and the listener would be ready again at
                 * once, for ever; look again later (the memcache
                 * listeners log the shortage) */
                accept_pause();
            }
            return;
        }

        if (srv.stopping
            || (nconns >= METRICS_MAX_CONNS && evict_one() != 0))
        {
            close(fd);
            continue;
        }

        /* out of memory for this one: the ones behind it wait in the
         * backlog as when accept() fails */
        if (loop_timer_reserve() != 0) {        /* given back at close */
            close(fd);
            accept_pause();
            return;
        }

        mc = calloc(1, sizeof(mconn_t));
        if (mc == NULL) {
            loop_timer_release();
            close(fd);
            accept_pause();
            return;
        }

        mc->io.fd = fd;
        mc->io.handler = mconn_io;
        mc->io.data = mc;
        mc->timer.handler = mconn_timeout;
        mc->timer.data = mc;
        mc->state = MC_READ;

        if (loop_add(&mc->io, LOOP_READ) != 0) {
            close(fd);
            free(mc);
            loop_timer_release();
            continue;
        }

        mc->next = conns;
        if (conns) {
            conns->prev = mc;
        }
        conns = mc;
        nconns++;

        mc->deadline = loop_now() + METRICS_TOTAL_MS;
        mconn_arm(mc, METRICS_READ_MS);
    }
}


/*
 * The slots are full: the connection that made no progress for longest,
 * if that is METRICS_EVICT_MS or more, is ended by its own timer (its
 * deadline becomes now, so no state arms it later), and the caller may
 * take one more meanwhile.  Progress is what last armed its timer: the
 * accept (no request yet), bytes a scraper took, the end of the answer
 * (lingering), so a scraper reading a big answer is never the one ended.
 * At most METRICS_MAX_CONNS are ever being ended, since one is never
 * picked twice.  -1 when none has been still that long.
 */
static int
evict_one(void)
{
    uint64_t   now, since, still_since;
    mconn_t   *mc, *victim;

    now = loop_now();
    victim = NULL;
    still_since = 0;

    /* newest first: of those still since the same millisecond, the last
     * one seen came first */
    for (mc = conns; mc; mc = mc->next) {
        since = mc->timer.deadline
                - (mc->state == MC_READ ? METRICS_READ_MS
                   : mc->state == MC_WRITE ? METRICS_WRITE_MS
                   : METRICS_LINGER_MS);

        if (mc->deadline > now && mc->timer.index != 0
            && since + METRICS_EVICT_MS <= now
            && (victim == NULL || since <= still_since))
        {
            victim = mc;
            still_since = since;
        }
    }

    if (victim == NULL) {
        return -1;
    }

    victim->deadline = now;
    mconn_arm(victim, 0);
    return 0;
}


static void
accept_resume(loop_timer_t *t)
{
    loop_mod(&listen_io, LOOP_READ);
}


int
metrics_listen(const char *addr)
{
    listen_io.fd = net_listen(addr, "metrics");
    if (listen_io.fd == -1) {
        return -1;
    }

    listen_io.handler = accept_handler;
    listen_backoff.handler = accept_resume;
    shared_timer.handler = shared_expire;
    if (loop_add(&listen_io, LOOP_READ) != 0) {
        close(listen_io.fd);
        listen_io.fd = -1;
        return -1;
    }

    log_info("metrics", "serving /metrics on %s", addr);
    return 0;
}


void
metrics_shutdown(void)
{
    while (conns) {
        mconn_close(conns);
    }

    loop_timer_del(&shared_timer);
    shared_expire(&shared_timer);

    if (listen_io.handler != NULL && listen_io.fd != -1) {
        loop_timer_del(&listen_backoff);
        loop_del(&listen_io);
        close(listen_io.fd);
        listen_io.fd = -1;
    }
}
