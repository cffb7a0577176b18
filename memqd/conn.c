/*
 * conn.c: listening sockets and client connections (see conn.h).
 *
 * Each readiness event: read what is there, execute every complete
 * command in the buffer (pipelining), then write what may be sent.  A
 * connection whose unsent output passes OUT_HIGH stops reading until it
 * drains, so a client that does not read cannot make memqd buffer
 * without bound.  Closed connections are freed in conn_before_sleep(),
 * never inside an event, so no pointer to them outlives an iteration.
 *
 * Items of plain gets are acknowledged only once delivered (conn.h):
 * sending_settle() runs after every write.  A listener whose accept()
 * fails (out of descriptors, say) is not watched for ACCEPT_BACKOFF_MS,
 * as the failure would repeat at once for ever otherwise.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cmd.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "mq_proto.h"
#include "net.h"
#include "server.h"

#define OUT_HIGH       (4 * 1024 * 1024)
#define READS_PER_EVENT 4
#define MAX_LISTENERS  16
#define LINGER_MS      2000
#define CONFIRM_POLL_MS 10         /* see conn_confirm() */
#define ACCEPT_BACKOFF_MS 100
#define ACCEPT_LOG_MS  1000        /* at most one accept error line */
#define SHUTDOWN_DRAIN (1024 * 1024)

typedef struct {
    loop_io_t     io;
    loop_timer_t  backoff;      /* armed while accept() is failing */
} listener_t;

const char  *conn_state_names[] = {
#define CONN_STATE_NAME(s) #s,
    CONN_STATES(CONN_STATE_NAME)
#undef CONN_STATE_NAME
};

static listener_t  listeners[MAX_LISTENERS];
static size_t      nlisteners;
static conn_t     *ready_head;
static conn_t     *ready_tail;
static conn_t     *parked;
static conn_t     *free_list;
static conn_t     *all_conns;     /* every open connection */

/* accept() failures, logged at most once every ACCEPT_LOG_MS */
static int           accept_err;        /* errno of the last failure */
static int           accept_failing;    /* the last accept() failed */
static int           accept_cleared;    /* it works again, not logged */
static uint64_t      accept_failures;   /* failures not logged yet */
static uint64_t      accept_logged_at;  /* monotonic ms, 0 = never */
static loop_timer_t  accept_report;     /* logs what the limit held */

static void conn_io(loop_io_t *io, unsigned events);
static void conn_process(conn_t *c);
static void conn_close(conn_t *c);
static void conn_linger(conn_t *c);
static void conn_confirm(conn_t *c);


static void
conn_set_state(conn_t *c, conn_state_e s)
{
    if (c->state != s) {
        log_debug("conn", "fd %d: %s -> %s", c->io.fd,
                  conn_state_names[c->state], conn_state_names[s]);
    }
    c->state = s;
}


int
conn_out_reserve(conn_t *c, size_t n)
{
    char    *nb;
    size_t   cap, i;

    if (c->out_len + n <= c->out_cap) {
        return 0;
    }

    /* drop what was sent before growing */
    if (c->out_sent > 0) {
        memmove(c->out, c->out + c->out_sent, c->out_len - c->out_sent);
        c->out_base += c->out_sent;
        c->out_len -= c->out_sent;
        c->out_ready -= c->out_sent;
        for (i = 0; i < c->nholds; i++) {
            c->holds[i].off -= c->out_sent;
        }
        c->out_sent = 0;
        if (c->out_len + n <= c->out_cap) {
            return 0;
        }
    }

    cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + n) {
        cap *= 2;
    }

    nb = realloc(c->out, cap);
    if (nb == NULL) {
        log_error("conn", "fd %d: out of memory for %zu bytes of replies",
                  c->io.fd, cap);
        c->close_after_write = 1;
        return -1;
    }

    c->out = nb;
    c->out_cap = cap;
    return 0;
}


void
conn_out_commit(conn_t *c, size_t n)
{
    c->out_len += n;

    if (c->nholds == 0) {
        c->out_ready = c->out_len;
    }
}


void
conn_out_mem(conn_t *c, const void *p, size_t n)
{
    if (conn_out_reserve(c, n) != 0) {
        return;
    }

    memcpy(c->out + c->out_len, p, n);
    conn_out_commit(c, n);
}


void
conn_out_str(conn_t *c, const char *s)
{
    conn_out_mem(c, s, strlen(s));
}


int
conn_parked(void)
{
    return parked != NULL;
}


void
conn_park(conn_t *c, uint64_t ticket)
{
    hold_t  *nh;
    size_t   cap;

    if (c->nholds > 0 && c->holds[c->nholds - 1].ticket == ticket) {
        c->holds[c->nholds - 1].nsets++;
        return;                     /* the held region just grows */
    }

    if (c->nholds == c->holds_cap) {
        cap = c->holds_cap ? c->holds_cap * 2 : 4;
        nh = realloc(c->holds, cap * sizeof(hold_t));
        if (nh == NULL) {
            /* cannot track it: wait for this ticket for all of it; with
             * nothing held yet the STORED could not wait at all, so the
             * connection goes (the client never sees STORED) */
            if (c->nholds > 0) {
                c->holds[c->nholds - 1].ticket = ticket;
                c->holds[c->nholds - 1].nsets++;
            } else {
                log_error("conn", "fd %d: out of memory holding a reply",
                          c->io.fd);
                c->out_len = c->out_ready;
                conn_close(c);
            }
            return;
        }
        c->holds = nh;
        c->holds_cap = cap;
    }

    c->holds[c->nholds].off = c->out_len;
    c->holds[c->nholds].ticket = ticket;
    c->holds[c->nholds].start = c->cmd_start;
    c->holds[c->nholds].nsets = 1;
    c->nholds++;

    if (!c->parked) {
        c->parked = 1;
        c->pnext = parked;
        parked = c;
    }
}


/* Releases the held regions covered by `durable`; 1 when none is left. */
static int
release_holds(conn_t *c, uint64_t durable)
{
    size_t  i;

    for (i = 0; i < c->nholds && c->holds[i].ticket <= durable; i++) {
        metrics_latency(METRICS_LAT_SET, c->holds[i].start,
                        c->holds[i].nsets);
    }

    if (i > 0) {
        memmove(c->holds, c->holds + i, (c->nholds - i) * sizeof(hold_t));
        c->nholds -= i;
    }

    c->out_ready = c->nholds ? c->holds[0].off : c->out_len;
    return c->nholds == 0;
}


/*
 * The list is taken whole first: conn_io() below may close c or another
 * parked connection (conn_close() unlinks it from `parked`) and may park
 * more, so walking `parked` itself could follow a link of a connection
 * closed meanwhile and leave one listed twice, or freed while listed.
 * Here a connection is on `parked` again (c->parked) only while it
 * still holds replies.
 */
void
conn_sync_done(uint64_t durable, int failed)
{
    conn_t  *c, *list;

    if (failed) {
        srv.readonly = 1;
    }

    list = parked;
    parked = NULL;

    for (c = list; c != NULL; c = c->pnext) {
        c->parked = 0;
    }

    while ((c = list) != NULL) {
        list = c->pnext;

        if (c->closed) {
            continue;               /* by conn_io() of one before it */
        }

        if (failed) {
            /* those STOREDs must never be sent */
            conn_close(c);
            continue;
        }

        if (!release_holds(c, durable)) {
            c->parked = 1;
            c->pnext = parked;
            parked = c;
        }

        conn_io(&c->io, LOOP_WRITE);
    }
}


int
conn_out_item(conn_t *c, queue_t *q, const item_ref_t *ref)
{
    size_t      cap, n;
    sending_t  *ns, *si;

    if (c->nsending == c->sending_cap && c->sending_head > 0) {
        n = c->nsending - c->sending_head;
        memmove(c->sending, c->sending + c->sending_head,
                n * sizeof(sending_t));
        c->sending_open -= c->sending_head;
        c->sending_head = 0;
        c->nsending = n;
    }

    if (c->nsending == c->sending_cap) {
        cap = c->sending_cap ? c->sending_cap * 2 : 16;
        ns = realloc(c->sending, cap * sizeof(sending_t));
        if (ns == NULL) {
            return -1;
        }
        c->sending = ns;
        c->sending_cap = cap;
    }

    si = &c->sending[c->nsending++];
    si->end = c->out_base + c->out_len;
    si->q = q;
    si->set = NULL;
    si->ref = *ref;

    return 0;
}


/*
 * Opens on their queues the items taken since the last write whose bytes
 * that write did not deliver.  Done here rather than when they are taken,
 * because most replies go out whole at once and then no open set is ever
 * needed; nothing between the take and this write can see the item (no
 * other connection runs, and queues save positions and drop segments
 * only in queue_before_sleep()).
 */
static void
sending_hold(conn_t *c)
{
    size_t      i;
    sending_t  *si;

    for (i = c->sending_open; i < c->nsending; i++) {
        si = &c->sending[i];

        if (si->q != NULL && queue_open(si->q, c, &si->set, &si->ref) != 0)
        {
            /* no memory to track it: given back now, so that a write
             * that never arrives loses nothing (it may be delivered
             * twice instead) */
            queue_give_back(si->q, &si->ref);
            si->q = NULL;
        }
    }

    c->sending_open = c->nsending;
}


/* Acknowledges the tracked items whose bytes end at or before stream
 * offset `done`. */
static void
sending_release(conn_t *c, uint64_t done)
{
    size_t      i, k;
    sending_t  *si;

    for (k = c->sending_head;
         k < c->nsending && c->sending[k].end <= done;
         k++)
    {
        /* void */
    }

    /* newest first: each item's open set is then at or near the head of
     * its queue's list of open sets, which closing walks; items not
     * opened yet were taken for good already */
    for (i = k; i > c->sending_head; i--) {
        si = &c->sending[i - 1];
        if (si->set != NULL) {
            queue_close_open(si->q, c, &si->set);
        }
    }

    c->sending_head = k;

    if (c->sending_open < k) {
        c->sending_open = k;
    }

    if (k == c->nsending) {
        c->sending_head = 0;
        c->sending_open = 0;
        c->nsending = 0;
    }
}


/*
 * Acknowledges what has been delivered: bytes in the socket, or, once the
 * client has half-closed, bytes its TCP has acknowledged (SIOCOUTQ counts
 * those still unacknowledged).
 */
static void
sending_settle(conn_t *c)
{
    int       unacked;
    uint64_t  done;

    if (c->sending_head == c->nsending) {
        return;
    }

    done = c->out_base + c->out_sent;

    if (c->eof) {
        if (ioctl(c->io.fd, SIOCOUTQ, &unacked) != 0 || unacked < 0
            || (uint64_t) unacked > done)
        {
            return;
        }
        done -= (uint64_t) unacked;
    }

    sending_release(c, done);
}


/* Gives back every tracked item not delivered: at the head of its queue,
 * as a closed connection's open items go back. */
static void
sending_abort(conn_t *c)
{
    size_t      i;
    sending_t  *si;

    sending_hold(c);

    for (i = c->sending_head; i < c->nsending; i++) {
        si = &c->sending[i];
        if (si->set != NULL) {
            queue_abort_conn(&si->set);
        }
    }

    c->sending_head = 0;
    c->sending_open = 0;
    c->nsending = 0;
}


void
conn_queue_deleted(uintptr_t q)
{
    size_t   i;
    conn_t  *c;

    for (c = all_conns; c; c = c->anext) {
        for (i = c->sending_head; i < c->nsending; i++) {
            if ((uintptr_t) c->sending[i].q == q) {
                c->sending[i].q = NULL;
                c->sending[i].set = NULL;
            }
        }
    }
}


/* 1 when the client is gone for good: reset, or our socket closed. */
static int
peer_gone(conn_t *c)
{
    int              err;
    socklen_t        len;
    struct tcp_info  ti;

    err = 0;
    len = sizeof(err);
    if (getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0
        || err != 0)
    {
        return 1;
    }

    len = sizeof(ti);
    if (getsockopt(c->io.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0
        && ti.tcpi_state == TCP_CLOSE)
    {
        return 1;
    }

    return 0;
}


int
conn_busy(void)
{
    conn_t  *c;

    if (parked != NULL) {
        return 1;
    }

    for (c = all_conns; c; c = c->anext) {
        if (!c->closed
            && (c->out_len > c->out_sent || c->sending_head < c->nsending))
        {
            return 1;
        }
    }

    return 0;
}


static void
update_events(conn_t *c)
{
    unsigned  ev;

    if (c->closed || c->lingering || c->confirming) {
        return;
    }

    ev = 0;

    if (c->out_ready > c->out_sent) {
        ev |= LOOP_WRITE;
    }

    /* stop reading while output is piling up or we wait on a long poll
     * (pipelined input stays buffered until the poll ends) */
    if (c->out_len - c->out_sent < OUT_HIGH && !c->close_after_write
        && !c->eof && c->in_end < CONN_IN_SIZE)
    {
        ev |= LOOP_READ;
    }

    loop_mod(&c->io, ev);
}


static int
conn_write(conn_t *c)
{
    size_t   i;
    ssize_t  n;

    while (c->out_ready > c->out_sent) {
        n = send(c->io.fd, c->out + c->out_sent, c->out_ready - c->out_sent,
                 MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                break;
            }
            return -1;
        }
        c->out_sent += (size_t) n;
        metrics.bytes_written += (size_t) n;
    }

    /* items delivered are acknowledged; those just taken whose bytes
     * are still to go are opened */
    sending_settle(c);
    sending_hold(c);

    if (c->out_sent == c->out_len) {
        for (i = 0; i < c->nholds; i++) {
            c->holds[i].off = 0;
        }
        c->out_base += c->out_len;
        c->out_sent = 0;
        c->out_len = 0;
        c->out_ready = 0;

        if (c->out_cap > 65536) {
            /* a big reply went out: give its memory back */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }

    return 0;
}


static void
conn_close(conn_t *c)
{
    if (c->closed) {
        return;
    }

    log_debug("conn", "fd %d: closed", c->io.fd);

    /* what has been delivered is acknowledged, the rest goes back */
    sending_settle(c);
    sending_abort(c);

    c->closed = 1;
    conn_set_state(c, CONN_CLOSING);
    loop_del(&c->io);
    close(c->io.fd);
    loop_timer_del(&c->timer);

    if (c->wait_q != NULL) {
        queue_wait_del(c->wait_q, c);
    }

    /* open items go back to the head of their queues */
    queue_abort_conn(&c->opensets);

    if (c->parked) {
        conn_t  **pp;

        for (pp = &parked; *pp; pp = &(*pp)->pnext) {
            if (*pp == c) {
                *pp = c->pnext;
                break;
            }
        }
        c->parked = 0;
    }

    srv.curr_conns--;
    c->fnext = free_list;
    free_list = c;
}


static void
conn_free(conn_t *c)
{
    if (c->aprev) {
        c->aprev->anext = c->anext;
    } else if (all_conns == c) {
        all_conns = c->anext;
    }
    if (c->anext) {
        c->anext->aprev = c->aprev;
    }

    free(c->in);
    free(c->out);
    free(c->holds);
    free(c->sending);
    free(c->val);
    free(c);
    loop_timer_release();
}


void
conn_wake(conn_t *c)
{
    if (c->wait_q != NULL) {
        queue_wait_del(c->wait_q, c);
    }

    loop_timer_del(&c->timer);

    if (c->ready || c->closed) {
        return;
    }

    c->ready = 1;
    c->rnext = NULL;
    if (ready_tail) {
        ready_tail->rnext = c;
    } else {
        ready_head = c;
    }
    ready_tail = c;
}


static void
timer_handler(loop_timer_t *t)
{
    conn_t  *c = t->data;

    if (c->lingering) {
        conn_close(c);
        return;
    }

    if (c->confirming) {
        conn_confirm(c);
        return;
    }

    conn_wake(c);
}


/*
 * All replies are out and the connection is to be closed.  Closing a
 * socket with unread input makes the kernel send a reset, which can
 * destroy the reply (say "CLIENT_ERROR line too long") before the client
 * reads it; so shut down our side and read and drop what still comes, for
 * a short while, as nginx's lingering close does.
 */
static void
conn_linger(conn_t *c)
{
    if (c->lingering) {
        return;
    }

    if (c->eof) {
        conn_confirm(c);
        return;
    }

    shutdown(c->io.fd, SHUT_WR);
    c->lingering = 1;

    /* the conversation is over: open items go back now, not at close */
    queue_abort_conn(&c->opensets);
    loop_timer_add(&c->timer, LINGER_MS);
    loop_mod(&c->io, LOOP_READ);
}


/*
 * A half-closed client has had every reply; before closing, wait (up to
 * LINGER_MS) until its TCP has acknowledged the bytes of the items it was
 * sent.  A client that closed entirely, rather than half, cannot be told
 * apart before that: its TCP answers those bytes with a reset, and the
 * items go back instead of being lost.  Polled: no event says "all
 * acknowledged", and with our side shut down too epoll would report a
 * hang-up all the time.
 */
static void
conn_confirm(conn_t *c)
{
    if (!c->confirming) {
        sending_settle(c);

        if (c->sending_head == c->nsending) {
            conn_close(c);
            return;
        }

        shutdown(c->io.fd, SHUT_WR);
        loop_del(&c->io);
        c->confirming = 1;
        c->confirm_deadline = loop_now() + LINGER_MS;

        /* the conversation is over: open items go back now */
        queue_abort_conn(&c->opensets);

    } else {
        sending_settle(c);

        if (c->sending_head == c->nsending || peer_gone(c)
            || loop_now() >= c->confirm_deadline)
        {
            conn_close(c);
            return;
        }
    }

    loop_timer_add(&c->timer, CONFIRM_POLL_MS);
}


static void
linger_read(conn_t *c)
{
    ssize_t  n;
    char     buf[4096];

    for ( ;; ) {
        n = recv(c->io.fd, buf, sizeof(buf), 0);
        if (n > 0) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        conn_close(c);
        return;
    }
}


/* 1 when a waiting client reset its connection.  A FIN is not enough: it
 * may be a half-close from a client that still wants its reply (printf
 * ... | nc).  Pending input is left in place. */
static int
waiter_left(conn_t *c)
{
    char     b;
    ssize_t  n;

    n = recv(c->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && errno != EAGAIN && errno != EINTR;
}


int
conn_before_sleep(void)
{
    conn_t  *c, *list;

    list = ready_head;
    ready_head = NULL;
    ready_tail = NULL;

    while ((c = list) != NULL) {
        list = c->rnext;
        c->ready = 0;

        if (c->closed) {
            continue;
        }

        if (c->state == CONN_WAIT) {
            if (waiter_left(c)) {
                /* it left while it waited: an item must not go to
                 * it; the queue wakes the next waiter instead */
                conn_close(c);
                continue;
            }
            conn_set_state(c, CONN_READ);
        }

        conn_process(c);
    }

    while ((c = free_list) != NULL) {
        free_list = c->fnext;
        conn_free(c);
    }

    return ready_head != NULL;
}


/* Consumes a data block or swallowed bytes from in[]; 1 when done. */
static int
conn_take_data(conn_t *c)
{
    size_t  n, avail;

    avail = c->in_end - c->in_start;

    if (c->state == CONN_SWALLOW) {
        n = avail < c->swallow ? avail : (size_t) c->swallow;
        c->in_start += n;
        c->swallow -= n;
        if (c->swallow > 0) {
            return 0;
        }
        if (c->swallow_reply != NULL) {
            conn_out_str(c, c->swallow_reply);
        }
        conn_set_state(c, CONN_READ);
        return 1;
    }

    n = c->val_need - c->val_len;
    if (n > avail) {
        n = avail;
    }

    memcpy(c->val + c->val_len, c->in + c->in_start, n);
    c->val_len += n;
    c->in_start += n;

    if (c->val_len > c->val_need - 2 && c->val[c->val_need - 2] != '\r') {
        /* no CRLF after the data: say so now, drop the rest quietly */
        conn_out_str(c, "CLIENT_ERROR bad data chunk\r\n");
        c->swallow = c->val_need - c->val_len;
        c->swallow_reply = NULL;
        free(c->val);
        c->val = NULL;
        conn_set_state(c, CONN_SWALLOW);
        return 1;
    }

    if (c->val_len < c->val_need) {
        return 0;
    }

    cmd_set_complete(c);
    free(c->val);
    c->val = NULL;
    conn_set_state(c, CONN_READ);
    return 1;
}


static void
conn_process(conn_t *c)
{
    int       rc;
    size_t    line_len, consumed, used;
    uint64_t  received;

    /* commands that came in one read were received together: one clock
     * read serves them all (a pipeline of deletes costs none each) */
    received = 0;

    while (!c->closed && !c->close_after_write
           && c->out_len - c->out_sent < OUT_HIGH)
    {
        if (c->state == CONN_DATA || c->state == CONN_SWALLOW) {
            if (!conn_take_data(c)) {
                break;
            }
            continue;
        }

        if (c->state != CONN_READ) {
            break;
        }

        rc = mq_proto_find_line(c->in + c->in_start, c->in_end - c->in_start,
                                &line_len, &consumed);

        if (rc == MQ_AGAIN) {
            break;
        }

        if (rc == MQ_ERROR) {
            conn_out_str(c, "CLIENT_ERROR line too long\r\n");
            c->close_after_write = 1;
            break;
        }

        if (c->wait_deadline == 0) {
            /* not a long poll run again: a new command */
            if (received == 0) {
                received = loop_now_us();
            }
            c->cmd_start = received;
        }

        rc = cmd_execute(c, c->in + c->in_start, line_len,
                         c->in + c->in_start + consumed,
                         c->in_end - c->in_start - consumed, &used);

        if (rc == CMD_WAIT) {
            break;
        }

        c->in_start += consumed + used;

        if (rc == CMD_CLOSE) {
            c->close_after_write = 1;
        }
    }

    if (c->closed) {
        return;
    }

    if (c->eof && c->state != CONN_WAIT
        && (c->state != CONN_READ
            || mq_proto_find_line(c->in + c->in_start,
                                  c->in_end - c->in_start, &line_len,
                                  &consumed) == MQ_AGAIN))
    {
        /* half-closed, every complete command answered, and whatever is
         * left (half a line, half a data block) can never complete */
        c->close_after_write = 1;
    }

    /* keep unparsed bytes at the start of the buffer */
    if (c->in_start == c->in_end) {
        c->in_start = 0;
        c->in_end = 0;

    } else if (c->in_start > 0 && c->state != CONN_WAIT) {
        memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
        c->in_end -= c->in_start;
        c->in_start = 0;
    }

    if (conn_write(c) != 0) {
        conn_close(c);
        return;
    }

    if (c->close_after_write && c->out_sent == c->out_len) {
        conn_linger(c);
        return;
    }

    update_events(c);
}


static void
conn_io(loop_io_t *io, unsigned events)
{
    int       i;
    conn_t   *c;
    ssize_t   n;

    c = io->data;

    if (c->closed) {
        return;
    }

    if (c->lingering) {
        linger_read(c);
        return;
    }

    if (c->confirming) {
        return;
    }

    if (c->eof && (events & LOOP_READ) && peer_gone(c)) {
        /* a half-closed connection no longer asks for reads, so this is
         * a reset or error: nobody is left to take a reply */
        conn_close(c);
        return;
    }

    if (events & LOOP_WRITE) {
        if (conn_write(c) != 0) {
            conn_close(c);
            return;
        }
    }

    if ((events & LOOP_READ) && !c->eof && !c->close_after_write) {
        for (i = 0; i < READS_PER_EVENT; i++) {
            if (c->in_end == CONN_IN_SIZE) {
                if (c->in_start == 0) {
                    /* full of unprocessed input: conn_process() below
                     * takes more once the output drains */
                    break;
                }
                memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
                c->in_end -= c->in_start;
                c->in_start = 0;
            }

            n = recv(c->io.fd, c->in + c->in_end, CONN_IN_SIZE - c->in_end,
                     0);

            if (n == 0) {
                /* half-closed: answer what was sent, a long poll too
                 * (`printf 'get q/t=2000\r\n' | nc`), then close */
                c->eof = 1;
                break;
            }

            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                if (errno == EAGAIN) {
                    break;
                }
                conn_close(c);
                return;
            }

            c->in_end += (size_t) n;
            metrics.bytes_read += (size_t) n;

            conn_process(c);
            if (c->closed || c->lingering) {
                return;
            }

            if ((size_t) n < CONN_IN_SIZE / 2) {
                break;
            }
        }
    }

    conn_process(c);
}


static void
accept_resume(loop_timer_t *t)
{
    listener_t  *l = t->data;

    loop_mod(&l->io, LOOP_READ);
}


/*
 * Says how accept() is doing: at most one line every ACCEPT_LOG_MS, the
 * failures and a recovery within that time summed up in the next one, so
 * a client cannot make memqd flood its log by exhausting descriptors.
 */
static void
accept_log(void)
{
    uint64_t  now;

    now = loop_now();

    if (accept_logged_at != 0 && now - accept_logged_at < ACCEPT_LOG_MS) {
        if (accept_report.index == 0) {
            loop_timer_add(&accept_report,
                           accept_logged_at + ACCEPT_LOG_MS - now);
        }
        return;
    }

    if (accept_failing) {
        log_warn("conn", "accept: %s: new connections wait in the "
                 "backlog, retried every %d ms (failures: %" PRIu64 ")",
                 strerror(accept_err), ACCEPT_BACKOFF_MS, accept_failures);

    } else if (accept_cleared) {
        log_info("conn", "accept: works again (failures since the last "
                 "line: %" PRIu64 ")", accept_failures);

    } else {
        return;
    }

    accept_failures = 0;
    accept_cleared = 0;
    accept_logged_at = now;
}


static void
accept_report_handler(loop_timer_t *t)
{
    accept_log();
}


/*
 * accept() failed for a reason that does not go away by itself (out of
 * descriptors or memory): the connection stays in the backlog and the
 * listener stays readable, so stop watching it for a while instead of
 * failing again at once.
 */
static void
accept_backoff(listener_t *l, int err)
{
    accept_err = err;
    accept_failing = 1;
    accept_failures++;
    accept_report.handler = accept_report_handler;
    accept_log();

    loop_mod(&l->io, 0);
    loop_timer_add(&l->backoff, ACCEPT_BACKOFF_MS);
}


/*
 * No memory for a connection just accepted: it is closed, and the
 * listener backs off as when accept() itself runs out of memory, so the
 * connections behind it wait in the backlog instead of each being
 * accepted, closed and logged in turn.  Closed without a word: the
 * gateway takes a close before any reply as the node failing and sends
 * its sets to the next node, but would take a SERVER_ERROR line as the
 * reply to its first set.
 */
static void
accept_nomem(listener_t *l, int fd)
{
    close(fd);
    accept_backoff(l, ENOMEM);
}


static void
accept_handler(loop_io_t *io, unsigned events)
{
    int          fd, one;
    conn_t      *c;
    listener_t  *l;

    l = io->data;

    for ( ;; ) {
        fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            switch (errno) {
            case EAGAIN:
                return;
            case EINTR:
            case ECONNABORTED:
            case EPERM:
            case EPROTO:
                /* that connection only */
                continue;
            default:
                accept_backoff(l, errno);
                return;
            }
        }

        if (accept_failing) {
            accept_failing = 0;
            accept_cleared = 1;
            accept_log();
        }

        if (srv.curr_conns >= srv.max_conns || srv.stopping) {
            static const char  msg[] =
                "SERVER_ERROR too many connections\r\n";
            if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL) < 0) {
                /* it is going away anyway */
            }
            close(fd);
            continue;
        }

        one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        /* the connection's timer slot first: it is given back in
         * conn_free() */
        if (loop_timer_reserve() != 0) {
            accept_nomem(l, fd);
            return;
        }

        c = calloc(1, sizeof(conn_t));
        if (c != NULL) {
            c->in = malloc(CONN_IN_SIZE);
        }
        if (c == NULL || c->in == NULL) {
            free(c);
            loop_timer_release();
            accept_nomem(l, fd);
            return;
        }

        c->io.fd = fd;
        c->io.handler = conn_io;
        c->io.data = c;
        c->timer.handler = timer_handler;
        c->timer.data = c;
        c->state = CONN_READ;

        if (loop_add(&c->io, LOOP_READ) != 0) {
            conn_free(c);
            close(fd);
            continue;
        }

        c->anext = all_conns;
        if (all_conns) {
            all_conns->aprev = c;
        }
        all_conns = c;

        srv.curr_conns++;
        srv.total_conns++;
    }
}


int
conn_listen(const char *addr)
{
    int          fd;
    listener_t  *l;

    if (nlisteners == MAX_LISTENERS) {
        log_error("conn", "%s: too many listeners", addr);
        return -1;
    }

    fd = net_listen(addr, "conn");
    if (fd == -1) {
        return -1;
    }

    l = &listeners[nlisteners++];
    l->io.fd = fd;
    l->io.handler = accept_handler;
    l->io.data = l;
    l->backoff.handler = accept_resume;
    l->backoff.data = l;

    if (loop_add(&l->io, LOOP_READ) != 0) {
        return -1;
    }

    log_info("conn", "listening on %s", addr);
    return 0;
}


/*
 * Input nobody will read makes close() reset the connection, and a reset
 * throws away what is still in the socket buffer for the client: replies
 * whose items count as delivered.  So read and drop what is there first.
 */
static void
drain_input(conn_t *c)
{
    size_t   total;
    ssize_t  n;
    char     buf[16384];

    for (total = 0; total < SHUTDOWN_DRAIN; total += (size_t) n) {
        n = recv(c->io.fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            return;
        }
    }
}


void
conn_shutdown(void)
{
    conn_t  *c;

    for (c = all_conns; c; c = c->anext) {
        if (!c->closed) {
            drain_input(c);
            conn_close(c);
        }
    }

    while ((c = free_list) != NULL) {
        free_list = c->fnext;
        conn_free(c);
    }
}


void
conn_close_listeners(void)
{
    size_t  i;

    loop_timer_del(&accept_report);

    for (i = 0; i < nlisteners; i++) {
        loop_timer_del(&listeners[i].backoff);
        loop_del(&listeners[i].io);
        close(listeners[i].io.fd);
    }

    nlisteners = 0;
}
