/*
 * http_drain.c: memq-bench --http-drain, K concurrent GET streams draining
 * one queue through the HTTP gateway (ngx_http_memq_module).
 *
 * Every stream is one GET <path>?topic=Q (HTTP/1.1, Connection: close: a
 * drain, the gateway's default wait=0); the body, chunked or sized, is
 * ndjson and every line is a message, or with --format raw a sequence of
 * frames "[<id> ]<length>\r\n<bytes>\r\n".  In write mode the messages are
 * counted.  With --ack-client the GET asks ack=client&lease=S, the id of
 * every message ({"id":"<host:port>/<id>",... in ndjson, the word before
 * the length in raw) is taken and the stream
 * acknowledges its ids with POST <path>?topic=Q&op=ack bodies of
 * --ack-batch ids, one id a line, on --ack-inflight keep-alive connections
 * of its own (one POST in flight on each); every answer must be
 * 200 {"acked":A,"not_found":N}.
 *
 * The time runs from the first connect to the last stream closed and the
 * last acknowledgement answered.  Prints
 *
 *   RESULT proto=http mode=write|client conns=K msgs=.. secs=..
 *          msgs_per_sec=.. mb_per_sec=.. client_cpu_us_per_msg=..
 *          [acked=.. not_found=.. ack_posts=.. ack_batch=..
 *          ack_inflight=..]
 *
 * MB is 10^6 bytes of body (the ndjson lines); client CPU is this
 * process's user + system time (getrusage).  Exit status 0 when every
 * stream ended and, in client mode, every message was acknowledged exactly
 * once (acked = msgs, not_found = 0), and -n, when given, equals msgs; 1
 * when a count is wrong; 2 on usage, connection or protocol errors.
 *
 * Memory is bounded: one read buffer, the response head, a small carry
 * for the start of a line split between reads (up to the end of its id),
 * and per stream at most
 * HD_PENDING_BATCHES batches of ids waiting: past that the stream is not
 * read until acknowledgements catch up.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"


#define HD_READ_SIZE         (256 * 1024)
#define HD_HEAD_MAX          8192     /* response headers */
#define HD_ID_MAX            256      /* a line up to the end of its id */
#define HD_ACK_REPLY_MAX     4096     /* an op=ack answer */
#define HD_PENDING_BATCHES   16       /* ids waiting per stream, batches */
#define HD_STREAMS_MAX       10000

#define HD_ID_PREFIX         "{\"id\":\""
#define HD_ID_PREFIX_LEN     (sizeof(HD_ID_PREFIX) - 1)
#define HD_RAW_LEN_MAX       ((uint64_t) 1 << 40)


enum {
    HD_STREAM,
    HD_ACKER
};


enum {
    HD_CH_SIZE,       /* hex digits of a chunk size */
    HD_CH_EXT,        /* a chunk extension, up to CR */
    HD_CH_SIZE_LF,    /* LF after a chunk-size line */
    HD_CH_DATA,
    HD_CH_DATA_CR,    /* CR LF after a chunk's data */
    HD_CH_DATA_LF
};


enum {
    HD_RAW_HEAD,      /* "[<id> ]<length>\r\n", gathered in pre */
    HD_RAW_DATA,
    HD_RAW_DATA_CR,   /* CR LF after a frame's bytes */
    HD_RAW_DATA_LF
};


typedef struct hd_stream_s  hd_stream_t;


typedef struct {
    int                   kind;       /* HD_ACKER */
    int                   fd;         /* -1: not connected */
    hd_stream_t          *stream;
    bench_buf_t           out;        /* the request not sent yet */
    char                  in[HD_ACK_REPLY_MAX];
    size_t                in_len;
    uint64_t              sent;       /* ids of the POST in flight, 0 = idle */
    unsigned              want_out:1; /* watched for EPOLLOUT */
} hd_acker_t;


struct hd_stream_s {
    int                   kind;       /* HD_STREAM */
    int                   fd;
    unsigned              idx;
    unsigned              sent:1;     /* the GET went out */
    unsigned              head_done:1;
    unsigned              chunked:1;
    unsigned              done:1;     /* the body ended */
    unsigned              paused:1;   /* not read: too many ids waiting */
    unsigned              have_id:1;  /* the current line's id is taken */
    int                   chunk_state;
    unsigned              chunk_digits; /* of the size line so far */
    uint64_t              chunk_left; /* data bytes left in this chunk */
    int64_t               left;       /* Content-Length left, -1 = none */
    char                  head[HD_HEAD_MAX];
    size_t                head_len;
    char                  pre[HD_ID_MAX]; /* start of a line split by
                                             reads; a raw frame's head */
    size_t                pre_len;
    int                   raw_state;
    uint64_t              raw_left;   /* bytes of the frame left */
    uint64_t              lines;
    uint64_t              bytes;
    bench_buf_t           ids;        /* ids not sent yet, each ending \n */
    uint64_t              nids;
    hd_acker_t           *ackers;
};


typedef struct {
    const char           *host;
    const char           *port;
    const char           *path;
    const char           *topic;
    unsigned              consumers;
    unsigned              client:1;
    unsigned              raw:1;      /* --format raw */
    double                lease;
    unsigned              batch;
    unsigned              inflight;
    unsigned              max;
    uint64_t              count;      /* expected messages, 0 = unchecked */
    double                timeout;
    unsigned              quiet:1;

    int                   ep;
    struct addrinfo      *addr;
    char                 *get;        /* the GET request */
    size_t                get_len;
    hd_stream_t          *streams;
    unsigned              live;       /* streams not done */
    unsigned              busy;       /* POSTs in flight */
    uint64_t              acked;
    uint64_t              not_found;
    uint64_t              posts;
    char                  rbuf[HD_READ_SIZE];
    char                  err[512];
} hd_t;


static double
hd_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}


static double
hd_cpu(void)
{
    struct rusage  ru;

    getrusage(RUSAGE_SELF, &ru);

    return (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec / 1e6
           + (double) ru.ru_stime.tv_sec + (double) ru.ru_stime.tv_usec / 1e6;
}


static int
hd_fail(hd_t *hd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
hd_fail(hd_t *hd, const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    vsnprintf(hd->err, sizeof(hd->err), fmt, ap);
    va_end(ap);

    return -1;
}


static int
hd_connect(hd_t *hd, int nonblock)
{
    int  fd, one;

    fd = socket(hd->addr->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return hd_fail(hd, "socket: %s", strerror(errno));
    }

    one = 1;
    (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    /* acknowledgement connections connect blocking: loopback, rare */
    if (!nonblock
        && connect(fd, hd->addr->ai_addr, hd->addr->ai_addrlen) != 0)
    {
        hd_fail(hd, "connect %s:%s: %s", hd->host, hd->port,
                strerror(errno));
        close(fd);
        return -1;
    }

    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        close(fd);
        return hd_fail(hd, "fcntl: %s", strerror(errno));
    }

    if (nonblock
        && connect(fd, hd->addr->ai_addr, hd->addr->ai_addrlen) != 0
        && errno != EINPROGRESS)
    {
        hd_fail(hd, "connect %s:%s: %s", hd->host, hd->port,
                strerror(errno));
        close(fd);
        return -1;
    }

    return fd;
}


static int
hd_watch(hd_t *hd, int op, int fd, uint32_t events, void *data)
{
    struct epoll_event  ev;

    ev.events = events;
    ev.data.ptr = data;

    if (epoll_ctl(hd->ep, op, fd, &ev) != 0) {
        return hd_fail(hd, "epoll_ctl: %s", strerror(errno));
    }

    return 0;
}


/*
 * The value of header name (lower case, with its colon) in the NUL-ended
 * head whose lines end in CRLF, or NULL.
 */
static const char *
hd_header(const char *head, const char *name)
{
    size_t       n;
    const char  *p;

    n = strlen(name);

    for (p = strstr(head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) == 0) {
            p += 2 + n;
            return p + strspn(p, " \t");
        }
    }

    return NULL;
}


/*
 * The status of the NUL-ended head: 100..599, or -1 when the status line
 * is not HTTP/1.x.
 */
static int
hd_status(const char *head)
{
    if (strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' '
        || head[9] < '1' || head[9] > '5'
        || head[10] < '0' || head[10] > '9'
        || head[11] < '0' || head[11] > '9')
    {
        return -1;
    }

    return (head[9] - '0') * 100 + (head[10] - '0') * 10 + head[11] - '0';
}


/* Content-Length of the head: 0 and *len, 1 when absent, -1 when bad */
static int
hd_content_length(const char *head, uint64_t *len)
{
    char        *end;
    const char  *v;

    v = hd_header(head, "content-length:");
    if (v == NULL) {
        return 1;
    }

    if (*v < '0' || *v > '9') {
        return -1;
    }

    errno = 0;
    *len = strtoull(v, &end, 10);

    if (errno != 0 || (*end != '\r' && *end != ' ' && *end != '\0')) {
        return -1;
    }

    return 0;
}


/* one more id to acknowledge */
static int
hd_push_id(hd_t *hd, hd_stream_t *s, const char *id, size_t len)
{
    if (bench_buf_reserve(&s->ids, len + 1) != 0) {
        return hd_fail(hd, "out of memory");
    }

    memcpy(s->ids.data + s->ids.len, id, len);
    s->ids.len += len;
    s->ids.data[s->ids.len++] = '\n';
    s->nids++;

    return 0;
}


/*
 * A line's start, p[0..n), complete when it reached its LF: takes its id
 * into s->ids once the closing quote is there, keeping an incomplete start
 * in s->pre for the next read.
 */
static int
hd_take_id(hd_t *hd, hd_stream_t *s, const char *p, size_t n, int complete)
{
    size_t       k;
    const char  *q;

    if (s->pre_len) {
        k = sizeof(s->pre) - s->pre_len;
        k = n < k ? n : k;
        memcpy(s->pre + s->pre_len, p, k);
        s->pre_len += k;
        p = s->pre;
        n = s->pre_len;
    }

    k = n < HD_ID_PREFIX_LEN ? n : HD_ID_PREFIX_LEN;

    if (memcmp(p, HD_ID_PREFIX, k) != 0) {
        return hd_fail(hd, "stream %u: line %llu does not start with "
                       "{\"id\":\" (%.40s)", s->idx,
                       (unsigned long long) s->lines + 1, p);
    }

    q = NULL;

    if (n > HD_ID_PREFIX_LEN) {
        q = memchr(p + HD_ID_PREFIX_LEN, '"', n - HD_ID_PREFIX_LEN);
    }

    if (q != NULL) {
        if (q == p + HD_ID_PREFIX_LEN) {
            return hd_fail(hd, "stream %u: line %llu has an empty id",
                           s->idx, (unsigned long long) s->lines + 1);
        }

        s->have_id = 1;

        return hd_push_id(hd, s, p + HD_ID_PREFIX_LEN,
                          q - p - HD_ID_PREFIX_LEN);
    }

    if (complete || n >= sizeof(s->pre)) {
        return hd_fail(hd, "stream %u: line %llu has no complete id in its "
                       "first %zu bytes", s->idx,
                       (unsigned long long) s->lines + 1, n);
    }

    if (p != s->pre) {
        memcpy(s->pre, p, n);
        s->pre_len = n;
    }

    return 0;
}


/* body bytes: counts the lines, takes the ids in client mode */
static int
hd_lines(hd_t *hd, hd_stream_t *s, const char *p, size_t n)
{
    const char  *end, *nl;

    s->bytes += n;
    end = p + n;

    while (p < end) {
        nl = memchr(p, '\n', end - p);

        if (hd->client && !s->have_id
            && hd_take_id(hd, s, p, (nl ? nl : end) - p, nl != NULL) != 0)
        {
            return -1;
        }

        if (nl == NULL) {
            break;
        }

        s->lines++;
        s->have_id = 0;
        s->pre_len = 0;
        p = nl + 1;
    }

    return 0;
}


/* a raw frame's head, pre[0..pre_len) up to its LF: id and length */
static int
hd_raw_head(hd_t *hd, hd_stream_t *s)
{
    char      *p, *end, *sp;
    uint64_t   len;

    p = s->pre;
    end = s->pre + s->pre_len - 1;            /* the LF */

    if (end == p || end[-1] != '\r') {
        return hd_fail(hd, "stream %u: frame %llu: head without CRLF",
                       s->idx, (unsigned long long) s->lines + 1);
    }

    end--;

    if (hd->client) {
        sp = memchr(p, ' ', end - p);

        if (sp == NULL || sp == p) {
            return hd_fail(hd, "stream %u: frame %llu has no id", s->idx,
                           (unsigned long long) s->lines + 1);
        }

        if (hd_push_id(hd, s, p, sp - p) != 0) {
            return -1;
        }

        p = sp + 1;
    }

    if (p == end) {
        return hd_fail(hd, "stream %u: frame %llu has no length", s->idx,
                       (unsigned long long) s->lines + 1);
    }

    for (len = 0; p < end; p++) {
        if (*p < '0' || *p > '9' || len >= HD_RAW_LEN_MAX) {
            return hd_fail(hd, "stream %u: frame %llu: bad length",
                           s->idx, (unsigned long long) s->lines + 1);
        }

        len = len * 10 + (uint64_t) (*p - '0');
    }

    s->raw_left = len;
    s->raw_state = len ? HD_RAW_DATA : HD_RAW_DATA_CR;
    s->pre_len = 0;

    return 0;
}


/* body bytes in raw frames: counts the frames, takes the ids in client
 * mode */
static int
hd_raw(hd_t *hd, hd_stream_t *s, const char *p, size_t n)
{
    size_t       k;
    const char  *end, *nl;

    s->bytes += n;
    end = p + n;

    while (p < end) {
        switch (s->raw_state) {

        case HD_RAW_HEAD:
            nl = memchr(p, '\n', end - p);
            k = (nl ? nl + 1 : end) - p;

            if (s->pre_len + k > sizeof(s->pre)) {
                return hd_fail(hd, "stream %u: frame %llu: head longer "
                               "than %zu bytes", s->idx,
                               (unsigned long long) s->lines + 1,
                               sizeof(s->pre));
            }

            memcpy(s->pre + s->pre_len, p, k);
            s->pre_len += k;
            p += k;

            if (nl != NULL && hd_raw_head(hd, s) != 0) {
                return -1;
            }

            break;

        case HD_RAW_DATA:
            k = (size_t) (end - p) < s->raw_left ? (size_t) (end - p)
                                                 : (size_t) s->raw_left;
            p += k;
            s->raw_left -= k;

            if (s->raw_left == 0) {
                s->raw_state = HD_RAW_DATA_CR;
            }

            break;

        case HD_RAW_DATA_CR:
        case HD_RAW_DATA_LF:
            if (*p != (s->raw_state == HD_RAW_DATA_CR ? '\r' : '\n')) {
                return hd_fail(hd, "stream %u: frame %llu not followed by "
                               "CRLF", s->idx,
                               (unsigned long long) s->lines + 1);
            }

            p++;

            if (s->raw_state == HD_RAW_DATA_CR) {
                s->raw_state = HD_RAW_DATA_LF;

            } else {
                s->raw_state = HD_RAW_HEAD;
                s->lines++;
            }

            break;
        }
    }

    return 0;
}


/* body bytes of either format */
static int
hd_body(hd_t *hd, hd_stream_t *s, const char *p, size_t n)
{
    return hd->raw ? hd_raw(hd, s, p, n) : hd_lines(hd, s, p, n);
}


/* body bytes of a chunked response: undoes the chunk framing */
static int
hd_chunked(hd_t *hd, hd_stream_t *s, const char *p, size_t n)
{
    int     d;
    char    c;
    size_t  i, take;

    for (i = 0; i < n && !s->done; /* void */) {
        c = p[i];

        switch (s->chunk_state) {

        case HD_CH_DATA:
            take = n - i;
            if (take > s->chunk_left) {
                take = s->chunk_left;
            }

            if (hd_body(hd, s, p + i, take) != 0) {
                return -1;
            }

            i += take;
            s->chunk_left -= take;

            if (s->chunk_left == 0) {
                s->chunk_state = HD_CH_DATA_CR;
            }

            continue;

        case HD_CH_SIZE:
            d = c >= '0' && c <= '9' ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;

            if (d >= 0) {
                if (s->chunk_left >> 40) {
                    return hd_fail(hd, "stream %u: chunk size too large",
                                   s->idx);
                }

                s->chunk_left = s->chunk_left * 16 + (uint64_t) d;
                s->chunk_digits++;
                break;
            }

            if (s->chunk_digits == 0 || (c != ';' && c != '\r')) {
                return hd_fail(hd, "stream %u: malformed chunk size line "
                               "(byte 0x%02x)", s->idx, (unsigned char) c);
            }

            s->chunk_state = c == ';' ? HD_CH_EXT : HD_CH_SIZE_LF;
            break;

        case HD_CH_EXT:
            if (c == '\r') {
                s->chunk_state = HD_CH_SIZE_LF;
            }
            break;

        case HD_CH_SIZE_LF:
            if (c != '\n') {
                return hd_fail(hd, "stream %u: chunk size line without LF",
                               s->idx);
            }

            s->chunk_digits = 0;

            if (s->chunk_left == 0) {
                /* the last chunk: trailers, if any, are not read */
                s->done = 1;
                break;
            }

            s->chunk_state = HD_CH_DATA;
            break;

        case HD_CH_DATA_CR:
        case HD_CH_DATA_LF:
            if (c != (s->chunk_state == HD_CH_DATA_CR ? '\r' : '\n')) {
                return hd_fail(hd, "stream %u: chunk data not followed by "
                               "CRLF", s->idx);
            }

            s->chunk_state = s->chunk_state == HD_CH_DATA_CR
                             ? HD_CH_DATA_LF : HD_CH_SIZE;
            break;
        }

        i++;
    }

    return 0;
}


/* response bytes of a stream: the head, then the body */
static int
hd_response(hd_t *hd, hd_stream_t *s, const char *p, size_t n)
{
    int          st;
    char        *end;
    size_t       room, used;
    uint64_t     len;
    const char  *v;

    if (!s->head_done) {
        room = sizeof(s->head) - 1 - s->head_len;
        used = n < room ? n : room;
        memcpy(s->head + s->head_len, p, used);
        s->head_len += used;

        end = memmem(s->head, s->head_len, "\r\n\r\n", 4);

        if (end == NULL) {
            if (s->head_len == sizeof(s->head) - 1) {
                return hd_fail(hd, "stream %u: response head longer than "
                               "%zu bytes", s->idx, sizeof(s->head) - 1);
            }

            return 0;
        }

        /* the bytes of p past the head are body */
        used -= s->head_len - (size_t) (end + 4 - s->head);
        p += used;
        n -= used;
        end[2] = '\0';

        st = hd_status(s->head);

        if (st != 200) {
            return hd_fail(hd, "stream %u: GET answered %.*s", s->idx,
                           (int) strcspn(s->head, "\r"), s->head);
        }

        v = hd_header(s->head, "transfer-encoding:");
        s->chunked = v != NULL && strncasecmp(v, "chunked", 7) == 0;
        s->left = -1;

        if (!s->chunked) {
            st = hd_content_length(s->head, &len);
            if (st < 0) {
                return hd_fail(hd, "stream %u: bad Content-Length", s->idx);
            }

            s->left = st == 0 ? (int64_t) len : -1;
            s->done = s->left == 0;
        }

        s->head_done = 1;
        s->chunk_state = HD_CH_SIZE;
    }

    if (s->chunked) {
        return hd_chunked(hd, s, p, n);
    }

    if (s->left >= 0 && n >= (uint64_t) s->left) {
        n = (size_t) s->left;
        s->done = 1;
    }

    if (s->left >= 0) {
        s->left -= n;
    }

    return hd_body(hd, s, p, n);
}


static int
hd_ack_write(hd_t *hd, hd_acker_t *a)
{
    ssize_t  n;

    while (a->out.pos < a->out.len) {
        n = write(a->fd, a->out.data + a->out.pos, a->out.len - a->out.pos);

        if (n < 0 && errno == EAGAIN) {
            if (a->want_out) {
                return 0;
            }

            a->want_out = 1;

            return hd_watch(hd, EPOLL_CTL_MOD, a->fd, EPOLLIN | EPOLLOUT, a);
        }

        if (n < 0) {
            return hd_fail(hd, "stream %u: op=ack POST: %s", a->stream->idx,
                           strerror(errno));
        }

        a->out.pos += (size_t) n;
    }

    a->out.pos = 0;
    a->out.len = 0;

    if (!a->want_out) {
        return 0;
    }

    a->want_out = 0;

    return hd_watch(hd, EPOLL_CTL_MOD, a->fd, EPOLLIN, a);
}


/* sends the next list of at most --ack-batch ids of s on a */
static int
hd_ack_send(hd_t *hd, hd_stream_t *s, hd_acker_t *a)
{
    char      *p, *q, *end;
    uint64_t   k;

    p = s->ids.data + s->ids.pos;
    end = s->ids.data + s->ids.len;

    for (q = p, k = 0; k < hd->batch && q < end; k++) {
        q = (char *) memchr(q, '\n', end - q) + 1;
    }

    if (a->fd < 0) {
        a->fd = hd_connect(hd, 0);

        a->want_out = 0;

        if (a->fd < 0
            || hd_watch(hd, EPOLL_CTL_ADD, a->fd, EPOLLIN, a) != 0)
        {
            return -1;
        }
    }

    /* the body: the ids, one a line, without the last LF */
    if (bench_buf_printf(&a->out, "POST %s?topic=%s&op=ack HTTP/1.1\r\n"
                         "Host: bench\r\nContent-Length: %zu\r\n\r\n",
                         hd->path, hd->topic, (size_t) (q - p - 1)) != 0
        || bench_buf_append(&a->out, p, q - p - 1) != 0)
    {
        return hd_fail(hd, "out of memory");
    }

    s->ids.pos += q - p;

    if (s->ids.pos == s->ids.len) {
        s->ids.pos = 0;
        s->ids.len = 0;
    }

    s->nids -= k;
    a->sent = k;
    hd->busy++;
    hd->posts++;

    return hd_ack_write(hd, a);
}


/*
 * Sends what s has to acknowledge on its idle connections: full lists,
 * and the rest once its stream ended; reads s again when few ids wait.
 */
static int
hd_ack_more(hd_t *hd, hd_stream_t *s)
{
    unsigned     i;
    hd_acker_t  *a;

    for (i = 0; i < hd->inflight; i++) {
        a = &s->ackers[i];

        if (a->sent == 0
            && (s->nids >= hd->batch || (s->done && s->nids > 0))
            && hd_ack_send(hd, s, a) != 0)
        {
            return -1;
        }
    }

    if (s->paused && s->nids < (uint64_t) hd->batch * HD_PENDING_BATCHES) {
        s->paused = 0;
        return hd_watch(hd, EPOLL_CTL_ADD, s->fd, EPOLLIN, s);
    }

    return 0;
}


/* an op=ack answer: 200 {"acked":A,"not_found":N}, one a POST */
static int
hd_ack_read(hd_t *hd, hd_acker_t *a)
{
    int                  st, used;
    char                *end, body[HD_ACK_REPLY_MAX];
    size_t               head_len;
    ssize_t              n;
    uint64_t             len;
    const char          *v;
    unsigned long long   acked, not_found;

    n = read(a->fd, a->in + a->in_len, sizeof(a->in) - 1 - a->in_len);

    if (n < 0 && errno == EAGAIN) {
        return 0;
    }

    if (n <= 0) {
        if (a->sent == 0 && a->in_len == 0) {
            /* an idle keep-alive connection closed: open another */
            close(a->fd);
            a->fd = -1;
            return 0;
        }

        return hd_fail(hd, "stream %u: op=ack connection %s with a POST "
                       "in flight", a->stream->idx,
                       n == 0 ? "closed" : strerror(errno));
    }

    a->in_len += (size_t) n;
    a->in[a->in_len] = '\0';

    end = memmem(a->in, a->in_len, "\r\n\r\n", 4);

    if (end == NULL) {
        if (a->in_len == sizeof(a->in) - 1) {
            return hd_fail(hd, "stream %u: op=ack answer head too long",
                           a->stream->idx);
        }

        return 0;
    }

    head_len = end + 4 - a->in;
    end[2] = '\0';

    if (hd_content_length(a->in, &len) != 0
        || len > sizeof(a->in) - 1 - head_len)
    {
        return hd_fail(hd, "stream %u: op=ack answer without a usable "
                       "Content-Length: %.*s", a->stream->idx,
                       (int) strcspn(a->in, "\r"), a->in);
    }

    if (a->in_len < head_len + len) {
        end[2] = '\r';          /* whole again for the next read */
        return 0;
    }

    if (a->sent == 0 || a->in_len > head_len + len) {
        return hd_fail(hd, "stream %u: op=ack answer nobody asked for",
                       a->stream->idx);
    }

    memcpy(body, a->in + head_len, len);
    body[len] = '\0';
    st = hd_status(a->in);

    used = -1;

    if (st != 200
        || sscanf(body, "{\"acked\":%llu,\"not_found\":%llu}%n",
                  &acked, &not_found, &used) != 2
        || used < 0 || body[used + strspn(body + used, "\r\n")] != '\0')
    {
        return hd_fail(hd, "stream %u: op=ack answered %.*s: %.200s",
                       a->stream->idx, (int) strcspn(a->in, "\r"), a->in,
                       body);
    }

    if (acked + not_found != a->sent) {
        return hd_fail(hd, "stream %u: op=ack of %llu ids answered acked "
                       "%llu not_found %llu", a->stream->idx,
                       (unsigned long long) a->sent, acked, not_found);
    }

    hd->acked += acked;
    hd->not_found += not_found;
    hd->busy--;
    a->sent = 0;
    a->in_len = 0;

    v = hd_header(a->in, "connection:");

    if (v != NULL && strncasecmp(v, "close", 5) == 0) {
        close(a->fd);
        a->fd = -1;
    }

    return hd_ack_more(hd, a->stream);
}


static int
hd_stream_event(hd_t *hd, hd_stream_t *s)
{
    int        err;
    ssize_t    n;
    socklen_t  len;

    if (!s->sent) {
        err = 0;
        len = sizeof(err);
        (void) getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);

        if (err != 0) {
            return hd_fail(hd, "stream %u: connect %s:%s: %s", s->idx,
                           hd->host, hd->port, strerror(err));
        }

        /* a few hundred bytes into an empty socket buffer */
        n = write(s->fd, hd->get, hd->get_len);

        if (n != (ssize_t) hd->get_len) {
            return hd_fail(hd, "stream %u: GET: %s", s->idx,
                           n < 0 ? strerror(errno) : "short write");
        }

        s->sent = 1;

        return hd_watch(hd, EPOLL_CTL_MOD, s->fd, EPOLLIN, s);
    }

    n = read(s->fd, hd->rbuf, sizeof(hd->rbuf));

    if (n < 0 && errno == EAGAIN) {
        return 0;
    }

    if (n < 0) {
        return hd_fail(hd, "stream %u: read: %s", s->idx, strerror(errno));
    }

    if (n == 0) {
        if (!s->head_done || s->chunked || s->left > 0) {
            return hd_fail(hd, "stream %u: connection closed before the end "
                           "of the response (%llu lines)", s->idx,
                           (unsigned long long) s->lines);
        }

        s->done = 1;

    } else if (hd_response(hd, s, hd->rbuf, (size_t) n) != 0) {
        return -1;
    }

    if (s->done) {
        if (hd->raw ? s->raw_state != HD_RAW_HEAD || s->pre_len
                    : hd->client && (s->have_id || s->pre_len))
        {
            return hd_fail(hd, "stream %u: the body ends inside a %s",
                           s->idx, hd->raw ? "frame" : "line");
        }

        close(s->fd);
        s->fd = -1;
        hd->live--;
    }

    if (!hd->client) {
        return 0;
    }

    if (hd_ack_more(hd, s) != 0) {
        return -1;
    }

    if (!s->done && s->nids >= (uint64_t) hd->batch * HD_PENDING_BATCHES) {
        /* acknowledgements lag: stop reading until they catch up */
        s->paused = 1;

        return hd_watch(hd, EPOLL_CTL_DEL, s->fd, 0, s);
    }

    return 0;
}


static int
hd_run(hd_t *hd)
{
    int                  n, i, *kind;
    double               last, now;
    unsigned             k, j;
    hd_stream_t         *s;
    struct rlimit        rl;
    struct epoll_event   ev[64];

    /* a stream and --ack-inflight connections each */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
    }

    hd->ep = epoll_create1(EPOLL_CLOEXEC);
    if (hd->ep < 0) {
        return hd_fail(hd, "epoll_create1: %s", strerror(errno));
    }

    for (k = 0; k < hd->consumers; k++) {
        s = &hd->streams[k];
        s->kind = HD_STREAM;
        s->idx = k;

        for (j = 0; j < hd->inflight && hd->client; j++) {
            s->ackers[j].kind = HD_ACKER;
            s->ackers[j].fd = -1;
            s->ackers[j].stream = s;
        }

        s->fd = hd_connect(hd, 1);

        if (s->fd < 0
            || hd_watch(hd, EPOLL_CTL_ADD, s->fd, EPOLLOUT, s) != 0)
        {
            return -1;
        }

        hd->live++;
    }

    last = hd_now();

    while (hd->live || hd->busy) {
        n = epoll_wait(hd->ep, ev, 64, 1000);

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n < 0) {
            return hd_fail(hd, "epoll_wait: %s", strerror(errno));
        }

        now = hd_now();

        if (n == 0) {
            if (now - last > hd->timeout) {
                return hd_fail(hd, "nothing for %.0f s: %u streams open, "
                               "%u POSTs in flight", hd->timeout, hd->live,
                               hd->busy);
            }

            continue;
        }

        last = now;

        for (i = 0; i < n; i++) {
            kind = ev[i].data.ptr;

            if (*kind == HD_STREAM) {
                if (hd_stream_event(hd, ev[i].data.ptr) != 0) {
                    return -1;
                }

                continue;
            }

            if (((hd_acker_t *) ev[i].data.ptr)->fd < 0) {
                continue;
            }

            if ((ev[i].events & EPOLLOUT)
                && hd_ack_write(hd, ev[i].data.ptr) != 0)
            {
                return -1;
            }

            if ((ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                && hd_ack_read(hd, ev[i].data.ptr) != 0)
            {
                return -1;
            }
        }
    }

    return 0;
}


static const struct option  hd_options[] = {
    { "host",         required_argument, NULL, 'H' },
    { "port",         required_argument, NULL, 'p' },
    { "path",         required_argument, NULL, 'P' },
    { "queue",        required_argument, NULL, 'q' },
    { "conns",        required_argument, NULL, 'c' },
    { "count",        required_argument, NULL, 'n' },
    { "ack-client",   no_argument,       NULL, 'A' },
    { "lease",        required_argument, NULL, 'L' },
    { "ack-batch",    required_argument, NULL, 'B' },
    { "ack-inflight", required_argument, NULL, 'I' },
    { "max",          required_argument, NULL, 'M' },
    { "format",       required_argument, NULL, 'F' },
    { "timeout",      required_argument, NULL, 'T' },
    { "quiet",        no_argument,       NULL, 'Q' },
    { "help",         no_argument,       NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static void
hd_usage(FILE *f)
{
    fprintf(f,
"usage: memq-bench --http-drain -p PORT -q TOPIC [options]\n"
"  -H, --host H       gateway address (127.0.0.1)\n"
"  -p, --port N       gateway port\n"
"  --path P           location of the queue (/mq)\n"
"  -q, --queue Q      topic\n"
"  -c, --conns K      concurrent GET streams (1)\n"
"  -n, --count N      fail unless exactly N messages come (0: any)\n"
"  --ack-client       ack=client&lease=S; acknowledge with POST op=ack\n"
"  --lease S          client mode: lease seconds (60)\n"
"  --ack-batch N      client mode: ids a POST (1000)\n"
"  --ack-inflight N   client mode: POSTs in flight a stream, each on a\n"
"                     keep-alive connection of its own (4)\n"
"  --max N            max=N on every GET (0: none)\n"
"  --format F         ndjson (the default) or raw: format=F on every GET\n"
"  --timeout S        fail when nothing happens for S seconds (30)\n"
"  -Q, --quiet        print only the RESULT line\n");
}


static int
hd_bad(const char *msg)
{
    fprintf(stderr, "memq-bench --http-drain: %s\n", msg);
    return BENCH_EXIT_FAIL;
}


static int
hd_number(const char *s, unsigned lo, unsigned hi, unsigned *v)
{
    char           *end;
    unsigned long   n;

    if (*s < '0' || *s > '9') {
        return -1;
    }

    errno = 0;
    n = strtoul(s, &end, 10);

    if (errno != 0 || *end != '\0' || n < lo || n > hi) {
        return -1;
    }

    *v = (unsigned) n;

    return 0;
}


#define HD_NAME_BYTES                                                         \
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"

/* topic and path go into request lines: the memq name bytes only */
static int
hd_url_ok(const char *s, int path)
{
    size_t  n;

    n = strlen(s);

    if (n == 0 || n > 250 || (path && s[0] != '/')) {
        return 0;
    }

    return strspn(s, path ? HD_NAME_BYTES "/" : HD_NAME_BYTES) == n;
}


int
bench_http_drain(int argc, char **argv)
{
    int               ch, rc, gai;
    char              lease[32], max[32];
    double            t0, secs, cpu0, cpu, rate;
    unsigned          k, v;
    uint64_t          msgs, bytes;
    hd_t             *hd;
    char             *end;
    struct addrinfo   hints;

    hd = calloc(1, sizeof(hd_t));
    if (hd == NULL) {
        return hd_bad("out of memory");
    }

    hd->host = "127.0.0.1";
    hd->path = "/mq";
    hd->consumers = 1;
    hd->lease = 60;
    hd->batch = 1000;
    hd->inflight = 4;
    hd->timeout = 30;
    rc = BENCH_EXIT_FAIL;

    while ((ch = getopt_long(argc, argv, "H:p:q:c:n:Qh", hd_options, NULL))
           != -1)
    {
        switch (ch) {

        case 'H':
            hd->host = optarg;
            break;

        case 'p':
            hd->port = optarg;
            break;

        case 'P':
            hd->path = optarg;
            break;

        case 'q':
            hd->topic = optarg;
            break;

        case 'c':
            if (hd_number(optarg, 1, HD_STREAMS_MAX, &hd->consumers) != 0) {
                rc = hd_bad("-c: 1..10000 streams");
                goto done;
            }
            break;

        case 'n':
            errno = 0;
            hd->count = strtoull(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end != '\0' || errno) {
                rc = hd_bad("-n: a count of messages");
                goto done;
            }
            break;

        case 'A':
            hd->client = 1;
            break;

        case 'L':
            hd->lease = strtod(optarg, &end);
            if (*end != '\0' || !(hd->lease >= 0.001 && hd->lease <= 43200)) {
                rc = hd_bad("--lease: 0.001..43200 seconds");
                goto done;
            }
            break;

        case 'B':
            if (hd_number(optarg, 1, 1000000, &hd->batch) != 0) {
                rc = hd_bad("--ack-batch: 1..1000000 ids");
                goto done;
            }
            break;

        case 'I':
            if (hd_number(optarg, 1, 64, &hd->inflight) != 0) {
                rc = hd_bad("--ack-inflight: 1..64 POSTs");
                goto done;
            }
            break;

        case 'M':
            if (hd_number(optarg, 1, 1000000000, &v) != 0) {
                rc = hd_bad("--max: a count of messages");
                goto done;
            }
            hd->max = v;
            break;

        case 'F':
            if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "ndjson") != 0)
            {
                rc = hd_bad("--format: ndjson or raw");
                goto done;
            }
            hd->raw = optarg[0] == 'r';
            break;

        case 'T':
            hd->timeout = strtod(optarg, &end);
            if (*end != '\0' || !(hd->timeout > 0)) {
                rc = hd_bad("--timeout: seconds > 0");
                goto done;
            }
            break;

        case 'Q':
            hd->quiet = 1;
            break;

        case 'h':
            hd_usage(stdout);
            rc = BENCH_EXIT_OK;
            goto done;

        default:
            hd_usage(stderr);
            goto done;
        }
    }

    if (optind != argc || hd->port == NULL || hd->topic == NULL) {
        hd_usage(stderr);
        goto done;
    }

    if (!hd_url_ok(hd->topic, 0) || !hd_url_ok(hd->path, 1)) {
        rc = hd_bad("-q and --path: letters, digits, _ . : - (and / in "
                    "--path, which starts with /), at most 250 bytes");
        goto done;
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    gai = getaddrinfo(hd->host, hd->port, &hints, &hd->addr);

    if (gai != 0) {
        fprintf(stderr, "memq-bench --http-drain: %s:%s: %s\n", hd->host,
                hd->port, gai_strerror(gai));
        goto done;
    }

    max[0] = '\0';
    lease[0] = '\0';

    if (hd->max) {
        snprintf(max, sizeof(max), "&max=%u", hd->max);
    }

    if (hd->client) {
        snprintf(lease, sizeof(lease), "&ack=client&lease=%g", hd->lease);
    }

    hd->streams = calloc(hd->consumers, sizeof(hd_stream_t));
    hd->get = malloc(600);

    if (hd->streams == NULL || hd->get == NULL) {
        rc = hd_bad("out of memory");
        goto done;
    }

    hd->get_len = snprintf(hd->get, 600, "GET %s?topic=%s%s%s%s HTTP/1.1\r\n"
                           "Host: bench\r\nConnection: close\r\n\r\n",
                           hd->path, hd->topic, max, lease,
                           hd->raw ? "&format=raw" : "");

    for (k = 0; k < hd->consumers && hd->client; k++) {
        hd->streams[k].ackers = calloc(hd->inflight, sizeof(hd_acker_t));

        if (hd->streams[k].ackers == NULL) {
            rc = hd_bad("out of memory");
            goto done;
        }
    }

    signal(SIGPIPE, SIG_IGN);

    cpu0 = hd_cpu();
    t0 = hd_now();

    if (hd_run(hd) != 0) {
        fprintf(stderr, "memq-bench --http-drain: %s\n", hd->err);
        goto done;
    }

    secs = hd_now() - t0;
    cpu = hd_cpu() - cpu0;

    msgs = 0;
    bytes = 0;

    for (k = 0; k < hd->consumers; k++) {
        msgs += hd->streams[k].lines;
        bytes += hd->streams[k].bytes;
    }

    rate = secs > 0 ? (double) msgs / secs : 0;

    if (!hd->quiet) {
        printf("http drain, %s mode: %llu msgs, %u streams, %.3f s: "
               "%.0f msgs/s, %.2f MB/s", hd->client ? "client" : "write",
               (unsigned long long) msgs, hd->consumers, secs, rate,
               secs > 0 ? (double) bytes / secs / 1e6 : 0);

        if (hd->client) {
            printf(", acked %llu, not found %llu, %llu POSTs",
                   (unsigned long long) hd->acked,
                   (unsigned long long) hd->not_found,
                   (unsigned long long) hd->posts);
        }

        printf("\n");
    }

    printf("RESULT proto=http mode=%s conns=%u msgs=%llu secs=%.3f "
           "msgs_per_sec=%.0f mb_per_sec=%.2f client_cpu_us_per_msg=%.2f",
           hd->client ? "client" : "write", hd->consumers,
           (unsigned long long) msgs, secs, rate,
           secs > 0 ? (double) bytes / secs / 1e6 : 0,
           msgs ? cpu * 1e6 / (double) msgs : 0);

    if (hd->client) {
        printf(" acked=%llu not_found=%llu ack_posts=%llu ack_batch=%u "
               "ack_inflight=%u", (unsigned long long) hd->acked,
               (unsigned long long) hd->not_found,
               (unsigned long long) hd->posts, hd->batch, hd->inflight);
    }

    printf("\n");
    fflush(stdout);

    rc = BENCH_EXIT_OK;

    if ((hd->count && msgs != hd->count)
        || (hd->client && (hd->acked != msgs || hd->not_found != 0)))
    {
        fprintf(stderr, "memq-bench --http-drain: %llu msgs (-n %llu), "
                "acked %llu, not found %llu\n", (unsigned long long) msgs,
                (unsigned long long) hd->count,
                (unsigned long long) hd->acked,
                (unsigned long long) hd->not_found);
        rc = BENCH_EXIT_VERIFY;
    }

done:

    /* the process ends here: the descriptors go with it */
    for (k = 0; hd->streams != NULL && k < hd->consumers; k++) {
        for (v = 0; hd->streams[k].ackers != NULL && v < hd->inflight; v++) {
            free(hd->streams[k].ackers[v].out.data);
        }

        free(hd->streams[k].ackers);
        free(hd->streams[k].ids.data);
    }

    if (hd->addr != NULL) {
        freeaddrinfo(hd->addr);
    }

    free(hd->streams);
    free(hd->get);
    free(hd);

    return rc;
}
