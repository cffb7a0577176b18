/*
 * loop.c: the connections of a run and the epoll loop that drives them.
 *
 * Every connection is a producer or a consumer (mixed mode: the first half
 * produce, the rest consume).  Its life:
 *
 *   SETUP --(preamble replies OK)--> RUN --(nothing left to send, nothing
 *   in flight)--> FINISH (memq --ack: last "get q/close") --> DONE
 *
 * In RUN a connection keeps up to depth produce/consume requests in
 * flight; acknowledgements that follow an item (beanstalk delete) ride
 * along and do not count against the depth.  Replies come in request
 * order, so the requests in flight are a FIFO of (kind, send time).
 *
 * Queues (--queues N): connection k of the n producers (or of the n
 * consumers) uses queue k % N when N <= n; when N > n it goes round the
 * queues i with i % n == k, one request each in turn, so every queue is
 * used.  Its "share" is thus q_first, q_first + q_step, ... below N.
 * A protocol whose requests do not name the queue (beanstalk) is told to
 * switch before the first request to another queue (select()).
 *
 * Shared counters decide what is sent:
 *   producers take message ids next_id = 0, 1, ... until count;
 *   consumers ask while consumed + asked < count, so a run never takes
 *   more than count items off queues that hold more;
 *   memcached consumers get keys next_key = 0, 1, ... until count.
 * A queue is "drained" when an empty answer comes to a request to it sent
 * after every producer of the run had all its items acknowledged (in
 * consume mode: at once); consumers then skip it, a consumer whose share
 * is drained finishes, and once every queue is drained all stop.  An empty
 * answer while producers run just means "ask again" (--wait makes that a
 * long poll instead of a busy loop).
 *
 * A consumer that stops asking only because the requests in flight could
 * bring the rest of the count is "capped": it stays open, and is filled
 * again when an empty answer makes room (the items may be in its queues
 * only) or when the run is over.
 */

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"


#define CONN_READ_MIN    (64 * 1024)
#define RUN_ERRORS_MAX   100        /* server refusals before giving up */
#define RUN_TICK_MS      50


typedef enum {
    CONN_SETUP,
    CONN_RUN,
    CONN_FINISH,
    CONN_DONE
} conn_state_e;


typedef struct {
    uint64_t              sent_ns;
    uint32_t              queue;      /* index into run_t.queues */
    uint8_t               kind;       /* bench_req_e */
    uint8_t               after_prod; /* sent when no producer was left */
} flight_t;


typedef struct {
    int                   fd;
    conn_state_e          state;
    unsigned              producer:1;
    unsigned              want_out:1; /* EPOLLOUT is armed */
    unsigned              capped:1;   /* consumer waiting for room */
    unsigned              setup_left; /* preamble replies still due */
    unsigned              q_first;    /* its share of the queues: */
    unsigned              q_step;     /*   q_first + i * q_step < N */
    unsigned              q_next;     /* queue of its next request */
    unsigned              q_sel;      /* queue selected (beanstalk) */
    unsigned              inflight;   /* produce/consume requests out */
    bench_buf_t           in;
    bench_buf_t           out;
    flight_t             *fl;         /* ring of requests in flight */
    size_t                fl_head;
    size_t                fl_n;
    size_t                fl_cap;
} conn_t;


typedef struct {
    const bench_conf_t   *cf;         /* (ref) */
    const bench_proto_t  *proto;      /* (ref) */
    bench_result_t       *res;        /* (ref) */
    int                   ep;
    conn_t               *conns;
    unsigned              nconns;
    unsigned              live;       /* connections not DONE */
    unsigned              producers;  /* producer connections not DONE */
    unsigned              capped;     /* consumers waiting for room */
    bench_queue_t        *queues;
    unsigned              nqueues;
    unsigned              ndrained;   /* queues drained */
    char                 *names;      /* the queue names, one block */
    uint64_t              next_id;    /* next message id to produce */
    uint64_t              next_key;   /* memcached: next key to get */
    uint64_t              asked;      /* consume requests in flight */
    uint64_t              start_ns;
    uint64_t              now_ns;
    uint64_t              progress_ns; /* last reply */
    bench_verify_t       *verify;
    unsigned              drained:1;  /* every queue is */
    unsigned              stop:1;     /* --duration is over */
    unsigned              failed:1;
    char                  why[256];
} run_t;


static uint64_t
now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}


static void __attribute__((format(printf, 2, 3)))
run_fail(run_t *r, const char *fmt, ...)
{
    va_list  ap;

    if (r->failed) {
        return;
    }

    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);

    r->failed = 1;
}


static int
conn_push(run_t *r, conn_t *c, bench_req_e kind, unsigned q)
{
    size_t     i, cap;
    flight_t  *fl;

    if (c->fl_n == c->fl_cap) {
        cap = c->fl_cap ? c->fl_cap * 2 : 64;

        fl = malloc(cap * sizeof(flight_t));
        if (fl == NULL) {
            run_fail(r, "out of memory");
            return -1;
        }

        for (i = 0; i < c->fl_n; i++) {
            fl[i] = c->fl[(c->fl_head + i) % c->fl_cap];
        }

        free(c->fl);
        c->fl = fl;
        c->fl_head = 0;
        c->fl_cap = cap;
    }

    fl = &c->fl[(c->fl_head + c->fl_n) % c->fl_cap];
    fl->sent_ns = r->now_ns;
    fl->queue = q;
    fl->kind = (uint8_t) kind;
    fl->after_prod = r->producers == 0;
    c->fl_n++;

    return 0;
}


static void
conn_close(run_t *r, conn_t *c)
{
    if (c->state == CONN_DONE) {
        return;
    }

    if (c->producer) {
        r->producers--;
    }

    if (c->capped) {
        c->capped = 0;
        r->capped--;
    }

    close(c->fd);
    c->fd = -1;
    c->state = CONN_DONE;
    r->live--;
}


/*
 * Sets the share of connection k of the n doing its job (see the top of
 * the file); its first queue is selected by the connection preamble.
 */
static void
conn_share(run_t *r, conn_t *c, unsigned k, unsigned n)
{
    unsigned  m;

    m = r->nqueues < n ? r->nqueues : n;

    c->q_first = k % m;
    c->q_step = m;
    c->q_next = c->q_first;
    c->q_sel = c->q_first;
}


/* the queue after q in c's share, round and round */
static unsigned
conn_step(run_t *r, conn_t *c, unsigned q)
{
    q += c->q_step;

    return q < r->nqueues ? q : c->q_first;
}


/* a consumer's next queue: the first of its share not drained, from q_next */
static int
conn_pick(run_t *r, conn_t *c, unsigned *qp)
{
    unsigned  q;

    q = c->q_next;

    do {
        if (!r->queues[q].drained) {
            *qp = q;
            return 0;
        }

        q = conn_step(r, c, q);

    } while (q != c->q_next);

    return -1;
}


/* switches the connection to queue q when its protocol needs to be told */
static int
conn_select(run_t *r, conn_t *c, unsigned q)
{
    int  n;

    if (q == c->q_sel) {
        return 0;
    }

    n = r->proto->select(&c->out, r->cf, c->producer, &r->queues[c->q_sel],
                         &r->queues[q]);
    if (n < 0) {
        run_fail(r, "out of memory");
        return -1;
    }

    c->q_sel = q;

    while (n-- > 0) {
        if (conn_push(r, c, BENCH_REQ_SELECT, q) != 0) {
            return -1;
        }
    }

    return 0;
}


/*
 * A consumer's last requests, one for each queue of its share: returns how
 * many replies are due, or -1 when out of memory.
 */
static int
conn_finish(run_t *r, conn_t *c)
{
    int       rc, n;
    unsigned  q;

    n = 0;
    q = c->q_first;

    do {
        rc = r->proto->finish(&c->out, r->cf, &r->queues[q]);
        if (rc < 0) {
            return -1;
        }

        if (rc > 0) {
            if (conn_push(r, c, BENCH_REQ_ACK, q) != 0) {
                return -1;
            }
            n++;
        }

        q = conn_step(r, c, q);

    } while (q != c->q_first);

    return n;
}


/* queues requests until the connection has depth in flight */
static void
conn_fill(run_t *r, conn_t *c)
{
    int                  rc, capped;
    char                *p;
    unsigned             q;
    const bench_conf_t  *cf;

    cf = r->cf;
    capped = 0;

    if (c->capped) {
        c->capped = 0;
        r->capped--;
    }

    if (c->state == CONN_RUN) {

        while (c->inflight < cf->depth && !r->failed) {

            if (c->producer) {
                if (r->stop || r->next_id >= cf->count) {
                    break;
                }

                q = c->q_next;

                if (conn_select(r, c, q) != 0) {
                    return;
                }

                p = r->proto->produce(&c->out, cf, &r->queues[q],
                                      r->next_id);
                if (p == NULL) {
                    run_fail(r, "out of memory");
                    return;
                }

                bench_payload_fill(cf, p, r->next_id, q);
                r->next_id++;

                if (conn_push(r, c, BENCH_REQ_PRODUCE, q) != 0) {
                    return;
                }

            } else {
                if (r->stop || r->drained) {
                    break;
                }

                if (!r->proto->queue) {
                    if (r->next_key >= cf->count) {
                        break;
                    }

                } else if (r->res->consumed + r->asked >= cf->count) {
                    capped = r->res->consumed < cf->count;
                    break;
                }

                if (conn_pick(r, c, &q) != 0) {
                    break;
                }

                if (conn_select(r, c, q) != 0) {
                    return;
                }

                if (r->proto->consume(&c->out, cf, &r->queues[q],
                                      r->next_key)
                    != 0)
                {
                    run_fail(r, "out of memory");
                    return;
                }

                r->next_key++;
                r->asked++;

                if (conn_push(r, c, BENCH_REQ_CONSUME, q) != 0) {
                    return;
                }
            }

            c->q_next = conn_step(r, c, q);
            c->inflight++;
        }

        if (c->inflight > 0 || c->fl_n > 0) {
            return;
        }

        if (c->producer) {
            conn_close(r, c);
            return;
        }

        if (capped) {
            c->capped = 1;
            r->capped++;
            return;
        }

        rc = conn_finish(r, c);

        if (rc < 0) {
            run_fail(r, "out of memory");
            return;
        }

        if (rc == 0) {
            conn_close(r, c);
            return;
        }

        c->state = CONN_FINISH;
        return;
    }

    if (c->state == CONN_FINISH && c->fl_n == 0) {
        conn_close(r, c);
    }
}


static void
conn_flush(run_t *r, conn_t *c)
{
    ssize_t             n;
    unsigned            want;
    struct epoll_event  ev;

    if (c->state == CONN_DONE) {
        return;
    }

    while (c->out.pos < c->out.len) {
        n = write(c->fd, c->out.data + c->out.pos, c->out.len - c->out.pos);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }

            run_fail(r, "write: %s", strerror(errno));
            return;
        }

        c->out.pos += (size_t) n;
    }

    if (c->out.pos == c->out.len) {
        c->out.pos = 0;
        c->out.len = 0;
    }

    want = c->out.len > 0;

    if (want != c->want_out) {
        ev.events = EPOLLIN | (want ? EPOLLOUT : 0);
        ev.data.ptr = c;

        if (epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            run_fail(r, "epoll_ctl: %s", strerror(errno));
            return;
        }

        c->want_out = want;
    }
}


/*
 * Fills the capped consumers again once a reply made room under the count,
 * or the run is over for them (count taken, every queue drained, time).
 */
static void
run_wake(run_t *r)
{
    unsigned             k;
    conn_t              *c;
    const bench_conf_t  *cf;

    cf = r->cf;

    if (r->capped == 0
        || (r->res->consumed + r->asked >= cf->count
            && r->res->consumed < cf->count && !r->drained && !r->stop
            && !r->failed))
    {
        return;
    }

    for (k = 0; k < r->nconns && r->capped > 0; k++) {
        c = &r->conns[k];

        if (c->capped) {
            conn_fill(r, c);
            conn_flush(r, c);
        }
    }
}


/* queue q answered empty with no producer left */
static void
run_drained(run_t *r, unsigned q)
{
    if (r->queues[q].drained) {
        return;
    }

    r->queues[q].drained = 1;

    if (++r->ndrained == r->nqueues) {
        r->drained = 1;
    }
}


static void
run_error_reply(run_t *r, const bench_reply_t *rp, const char *what)
{
    r->res->errors++;

    if (r->res->errors == 1) {
        fprintf(stderr, "memq-bench: %s: server said \"%.*s\"\n", what,
                (int) (rp->text_len > 200 ? 200 : rp->text_len),
                rp->text ? rp->text : "");
    }

    if (r->res->errors >= RUN_ERRORS_MAX) {
        run_fail(r, "%llu errors from the server, giving up",
                 (unsigned long long) r->res->errors);
    }
}


/* one reply to the oldest request in flight */
static void
conn_reply(run_t *r, conn_t *c, const bench_reply_t *rp)
{
    int        rc;
    flight_t   f;
    uint64_t   us;

    if (c->fl_n == 0) {
        run_fail(r, "a reply nobody asked for");
        return;
    }

    f = c->fl[c->fl_head];
    c->fl_head = (c->fl_head + 1) % c->fl_cap;
    c->fl_n--;

    us = (r->now_ns - f.sent_ns) / 1000;

    switch (f.kind) {

    case BENCH_REQ_SETUP:
        if (rp->type != BENCH_REPLY_OK) {
            run_fail(r, "connection preamble refused: %.*s",
                     (int) rp->text_len, rp->text ? rp->text : "");
            return;
        }

        if (--c->setup_left == 0) {
            c->state = CONN_RUN;
        }

        return;

    case BENCH_REQ_SELECT:
        if (rp->type != BENCH_REPLY_OK) {
            run_fail(r, "switching to queue %s refused: %.*s",
                     r->queues[f.queue].name, (int) rp->text_len,
                     rp->text ? rp->text : "");
        }

        return;

    case BENCH_REQ_PRODUCE:
        c->inflight--;
        bench_hist_add(&r->res->hist, us);

        if (rp->type == BENCH_REPLY_STORED) {
            r->res->produced++;
            r->queues[f.queue].stored++;
            return;
        }

        if (rp->type == BENCH_REPLY_ERROR) {
            run_error_reply(r, rp, "produce");
            return;
        }

        run_fail(r, "unexpected reply to a produce request");
        return;

    case BENCH_REQ_CONSUME:
        c->inflight--;
        r->asked--;
        bench_hist_add(&r->res->hist, us);

        switch (rp->type) {

        case BENCH_REPLY_VALUE:
            r->res->consumed++;
            r->queues[f.queue].taken++;

            if (r->verify != NULL) {
                bench_verify_item(r->verify, rp->value, rp->value_len,
                                  f.queue);
            }

            rc = r->proto->ack(&c->out, r->cf, rp);

            if (rc < 0) {
                run_fail(r, "out of memory");

            } else if (rc > 0) {
                (void) conn_push(r, c, BENCH_REQ_ACK, f.queue);
            }

            return;

        case BENCH_REPLY_EMPTY:
            if (!r->proto->queue) {
                r->res->misses++;

            } else if (f.after_prod) {
                run_drained(r, f.queue);

            } else {
                r->res->empties++;
            }

            return;

        case BENCH_REPLY_ERROR:
            run_error_reply(r, rp, "consume");
            return;

        default:
            run_fail(r, "unexpected reply to a consume request");
            return;
        }

    default:
        if (rp->type == BENCH_REPLY_ERROR) {
            run_error_reply(r, rp, "acknowledge");

        } else if (rp->type != BENCH_REPLY_OK
                   && rp->type != BENCH_REPLY_EMPTY)
        {
            run_fail(r, "unexpected reply to an acknowledgement");
        }

        return;
    }
}


static void
conn_read(run_t *r, conn_t *c)
{
    ssize_t        n;
    bench_reply_t  rp;

    if (bench_buf_reserve(&c->in, CONN_READ_MIN) != 0) {
        run_fail(r, "out of memory");
        return;
    }

    n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);

    if (n == 0) {
        run_fail(r, "the server closed a connection");
        return;
    }

    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            run_fail(r, "read: %s", strerror(errno));
        }
        return;
    }

    c->in.len += (size_t) n;
    r->now_ns = now_ns();
    r->progress_ns = r->now_ns;

    while (!r->failed && c->in.pos < c->in.len) {
        n = r->proto->parse(c->in.data + c->in.pos, c->in.len - c->in.pos,
                            &rp);
        if (n < 0) {
            run_fail(r, "a reply that makes no sense: \"%.*s\"",
                     (int) (c->in.len - c->in.pos > 60
                            ? 60 : c->in.len - c->in.pos),
                     c->in.data + c->in.pos);
            return;
        }

        if (n == 0) {
            break;
        }

        conn_reply(r, c, &rp);
        c->in.pos += (size_t) n;
    }

    if (c->in.pos == c->in.len) {
        c->in.pos = 0;
        c->in.len = 0;
    }

    conn_fill(r, c);
    conn_flush(r, c);
    run_wake(r);
}


static int
conn_open(run_t *r, conn_t *c, struct addrinfo *ai)
{
    int                 one, flags;
    struct epoll_event  ev;

    c->fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (c->fd < 0) {
        run_fail(r, "socket: %s", strerror(errno));
        return -1;
    }

    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        run_fail(r, "connect to %s:%s: %s", r->cf->host, r->cf->port,
                 strerror(errno));
        close(c->fd);
        c->fd = -1;
        return -1;
    }

    one = 1;
    (void) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    flags = fcntl(c->fd, F_GETFL);
    if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        run_fail(r, "fcntl: %s", strerror(errno));
        return -1;
    }

    ev.events = EPOLLIN;
    ev.data.ptr = c;

    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        run_fail(r, "epoll_ctl: %s", strerror(errno));
        return -1;
    }

    return 0;
}


static void
run_tick(run_t *r)
{
    unsigned  i;
    double    idle;

    r->now_ns = now_ns();

    if (r->cf->duration > 0 && !r->stop
        && (double) (r->now_ns - r->start_ns) / 1e9 >= r->cf->duration)
    {
        r->stop = 1;

        for (i = 0; i < r->nconns; i++) {
            conn_fill(r, &r->conns[i]);
            conn_flush(r, &r->conns[i]);
        }
    }

    run_wake(r);

    idle = (double) (r->now_ns - r->progress_ns) / 1e9;

    if (idle > r->cf->timeout) {
        run_fail(r, "no reply for %.0f s (%llu produced, %llu consumed)",
                 idle, (unsigned long long) r->res->produced,
                 (unsigned long long) r->res->consumed);
    }
}


/* the queues of the run: <queue>, or <queue>.0 .. <queue>.N-1 */
static int
run_queues(run_t *r)
{
    size_t               stride;
    unsigned             i;
    bench_queue_t       *q;
    const bench_conf_t  *cf;

    cf = r->cf;
    r->nqueues = cf->queues > 0 ? cf->queues : 1;
    stride = cf->queue_len + 16;

    r->queues = calloc(r->nqueues, sizeof(bench_queue_t));
    r->names = malloc(r->nqueues * stride);

    if (r->queues == NULL || r->names == NULL) {
        return -1;
    }

    for (i = 0; i < r->nqueues; i++) {
        q = &r->queues[i];
        q->name = r->names + i * stride;

        if (r->nqueues == 1) {
            memcpy(q->name, cf->queue, cf->queue_len + 1);
            q->len = cf->queue_len;

        } else {
            q->len = (size_t) snprintf(q->name, stride, "%s.%u", cf->queue,
                                       i);
        }
    }

    return 0;
}


/* msgs of the least and of the most used queue */
static void
run_queue_spread(run_t *r)
{
    unsigned   i;
    uint64_t   n;

    for (i = 0; i < r->nqueues; i++) {
        n = r->cf->mode == BENCH_MODE_PRODUCE ? r->queues[i].stored
                                              : r->queues[i].taken;

        if (i == 0 || n < r->res->queue_min) {
            r->res->queue_min = n;
        }

        if (n > r->res->queue_max) {
            r->res->queue_max = n;
        }
    }
}


int
bench_run(const bench_conf_t *cf, bench_result_t *res)
{
    int                  n, i, rc;
    unsigned             k, nprod;
    run_t                run, *r;
    conn_t              *c;
    struct addrinfo      hints, *ai;
    struct epoll_event   evs[256];
    static char          why[256];

    r = &run;
    memset(r, 0, sizeof(run_t));
    memset(res, 0, sizeof(bench_result_t));

    r->cf = cf;
    r->proto = cf->proto;
    r->res = res;
    r->ep = -1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    rc = getaddrinfo(cf->host, cf->port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, sizeof(why), "%s:%s: %s", cf->host, cf->port,
                 gai_strerror(rc));
        res->failure = why;
        return -1;
    }

    switch (cf->mode) {
    case BENCH_MODE_PRODUCE:
        nprod = cf->conns;
        break;
    case BENCH_MODE_CONSUME:
        nprod = 0;
        break;
    default:
        nprod = cf->conns / 2;
        break;
    }

    if (cf->verify && cf->mode != BENCH_MODE_PRODUCE) {
        r->verify = bench_verify_create(cf);
        if (r->verify == NULL) {
            run_fail(r, "out of memory for the --verify bitmap");
            goto done;
        }
    }

    if (run_queues(r) != 0) {
        run_fail(r, "out of memory for %u queues", cf->queues);
        goto done;
    }

    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->conns = calloc(cf->conns, sizeof(conn_t));

    if (r->ep < 0 || r->conns == NULL) {
        run_fail(r, "epoll/calloc: %s", strerror(errno));
        goto done;
    }

    for (k = 0; k < cf->conns; k++) {
        c = &r->conns[k];
        c->fd = -1;
        c->state = CONN_DONE;
    }

    for (k = 0; k < cf->conns; k++) {
        if (conn_open(r, &r->conns[k], ai) != 0) {
            goto done;
        }
        r->nconns++;
    }

    /* the clock starts once every connection is up */
    r->now_ns = now_ns();
    r->start_ns = r->now_ns;
    r->progress_ns = r->now_ns;
    r->producers = nprod;
    r->live = r->nconns;

    for (k = 0; k < r->nconns; k++) {
        c = &r->conns[k];
        c->producer = k < nprod;
        c->state = CONN_SETUP;

        if (c->producer) {
            conn_share(r, c, k, nprod);
        } else {
            conn_share(r, c, k - nprod, r->nconns - nprod);
        }

        n = r->proto->select(&c->out, cf, c->producer, NULL,
                             &r->queues[c->q_sel]);
        if (n < 0) {
            run_fail(r, "out of memory");
            goto done;
        }

        c->setup_left = (unsigned) n;

        for (i = 0; i < n; i++) {
            (void) conn_push(r, c, BENCH_REQ_SETUP, c->q_sel);
        }

        if (c->setup_left == 0) {
            c->state = CONN_RUN;
        }
    }

    for (k = 0; k < r->nconns; k++) {
        conn_fill(r, &r->conns[k]);
        conn_flush(r, &r->conns[k]);
    }

    while (r->live > 0 && !r->failed) {
        n = epoll_wait(r->ep, evs, 256, RUN_TICK_MS);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            run_fail(r, "epoll_wait: %s", strerror(errno));
            break;
        }

        for (i = 0; i < n && !r->failed; i++) {
            c = evs[i].data.ptr;

            if (c->state == CONN_DONE) {
                continue;
            }

            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                conn_read(r, c);
            }

            if (c->state != CONN_DONE && (evs[i].events & EPOLLOUT)) {
                conn_flush(r, c);
            }
        }

        run_tick(r);
    }

    res->secs = (double) (now_ns() - r->start_ns) / 1e9;
    run_queue_spread(r);

done:

    if (r->verify != NULL) {
        bench_verify_report(r->verify,
                            cf->mode == BENCH_MODE_MIXED ? r->next_id
                                                         : cf->count,
                            res);
        bench_verify_destroy(r->verify);
    }

    if (r->conns != NULL) {
        for (k = 0; k < cf->conns; k++) {
            c = &r->conns[k];
            if (c->fd >= 0) {
                close(c->fd);
            }
            free(c->in.data);
            free(c->out.data);
            free(c->fl);
        }
        free(r->conns);
    }

    if (r->ep >= 0) {
        close(r->ep);
    }

    free(r->queues);
    free(r->names);

    freeaddrinfo(ai);

    if (r->failed) {
        memcpy(why, r->why, sizeof(why));
        res->failure = why;
        return -1;
    }

    return 0;
}
