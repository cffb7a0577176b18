/*
 * etcd.c: see etcd.h.  The registration thread and its HTTP/1.1 client.
 *
 *   loop thread                      etcd thread
 *   -----------                      -----------
 *   etcd_option(), etcd_check()
 *   etcd_start()  ---- creates ---->  grant lease -> put key -> keepalive
 *                                     every ETCD_TTL/3 s ... (backoff and
 *                                     a new lease when etcd was away)
 *   SIGTERM: etcd_stop_request()
 *         --- eventfd "wake" ------>  abandons what it was doing, revokes
 *   exit:  etcd_stop() <-- join ----  the lease (bounded), returns
 *
 * Shared between the threads: only the settings, written before the
 * thread starts and read-only afterwards, and the eventfd.  Everything
 * else is the thread's own (`ctx`).
 *
 * The client speaks just enough HTTP/1.1 for etcd's JSON gateway: one
 * POST per connection ("Connection: close"), the answer read to EOF into
 * a fixed buffer, Content-Length or chunked bodies.  Every wait is a poll
 * with a deadline that also watches the wake eventfd, so a stop request
 * is seen at once.  Only name resolution (getaddrinfo) cannot be
 * interrupted; numeric addresses never wait for it.
 *
 * etcd's gateway spells 64-bit numbers as JSON strings and keys and
 * values as base64.  The answers we read are small and of a known shape,
 * so fields are found by name rather than by a JSON parser.
 */

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"
#include "log.h"

#define ETCD_MAX_URLS      8
#define ETCD_HOST_LEN      256
#define ETCD_NAME_LEN      64      /* longest --cluster */
#define ETCD_MAX_WEIGHT    1000
#define ETCD_DEFAULT_PORT  "2379"

#define KEEPALIVE_MS       (ETCD_TTL * 1000 / 3)
#define REQUEST_MS         2000    /* one request to one URL */
#define REVOKE_MS          1000    /* all of the revoke at stop */
#define JOIN_MS            3000    /* etcd_stop() gives up after this */
#define BACKOFF_MIN_MS     250
#define BACKOFF_MAX_MS     2000
#define WARN_EVERY_MS      10000   /* repeated failures: one line a period */

#define KEY_SIZE           512     /* key, value: at most ~340 bytes */
#define B64_SIZE           704     /* base64 of KEY_SIZE bytes */
#define BODY_SIZE          1536    /* a put: two B64_SIZE and a lease */
#define REQ_SIZE           2048
#define RESP_SIZE          8192

/* results of a call */
#define E_OK               0
#define E_FAIL             -1      /* no URL answered (ctx.err says why) */
#define E_STOP             -2      /* stop requested meanwhile */

typedef struct {
    char          text[ETCD_HOST_LEN + 16];  /* "http://host:port" */
    char          host[ETCD_HOST_LEN];       /* without [] for IPv6 */
    char          port[8];
} etcd_url_t;

/* settings: written before the thread starts, read-only afterwards */
typedef struct {
    const char   *urls;          /* (ref) argv, --etcd */
    const char   *advertise;     /* (ref) argv, --advertise */
    const char   *cluster;       /* (ref) argv, --cluster */
    unsigned      weight;        /* --weight, 1 by default */
    etcd_url_t    url[ETCD_MAX_URLS];
    size_t        nurls;
    char          key[KEY_SIZE];     /* /memq/<cluster>/nodes/<addr> */
    char          key64[B64_SIZE];   /* key in base64 */
    char          value64[B64_SIZE]; /* the JSON value, base64 */
} etcd_conf_t;

/* the thread's own state */
typedef struct {
    uint64_t      lease;         /* current lease ID, 0 = none */
    int           registered;    /* the key is put under `lease` */
    uint64_t      last_ok;       /* when the lease was last known alive */
    uint64_t      backoff;       /* next wait after a failure, ms */
    unsigned      seed;          /* jitter */
    size_t        cur;           /* URL that answered last */
    unsigned      fails;         /* failed rounds since registered */
    uint64_t      last_warn;     /* when the last failure was logged */
    int           status;        /* HTTP status of the last answer */
    char         *body;          /* its body, NUL-terminated, in resp */
    char          err[128];      /* why the last request failed */
    char          req[REQ_SIZE];
    char          resp[RESP_SIZE];
} etcd_ctx_t;


static etcd_conf_t  conf = { .weight = 1 };
static etcd_ctx_t   ctx;
static pthread_t    thread;
static int          started;
static int          wake_fd = -1;   /* eventfd: readable = stop */


static uint64_t
mono_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


/*
 * base64 (RFC 4648, with padding) of len bytes of src into dst, which
 * holds cap bytes.  Returns the length written (NUL-terminated), or -1
 * when dst is too small.
 */
static int
base64_encode(char *dst, size_t cap, const char *src, size_t len)
{
    static const char      tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "abcdefghijklmnopqrstuvwxyz0123456789+/";
    char                  *p;
    size_t                 i;
    uint32_t               v;
    const unsigned char   *s;

    if ((len + 2) / 3 * 4 + 1 > cap) {
        return -1;
    }

    s = (const unsigned char *) src;
    p = dst;

    for (i = 0; i + 2 < len; i += 3) {
        v = (uint32_t) s[i] << 16 | (uint32_t) s[i + 1] << 8 | s[i + 2];
        *p++ = tab[v >> 18 & 63];
        *p++ = tab[v >> 12 & 63];
        *p++ = tab[v >> 6 & 63];
        *p++ = tab[v & 63];
    }

    if (i < len) {
        v = (uint32_t) s[i] << 16;
        if (i + 1 < len) {
            v |= (uint32_t) s[i + 1] << 8;
        }
        *p++ = tab[v >> 18 & 63];
        *p++ = tab[v >> 12 & 63];
        *p++ = i + 1 < len ? tab[v >> 6 & 63] : '=';
        *p++ = '=';
    }

    *p = '\0';
    return (int) (p - dst);
}


/* ---------------------------------------------------------- options */


static int
parse_port(const char *s, size_t len, char *out)
{
    size_t    i;
    unsigned  v;

    if (len == 0 || len > 5) {
        return -1;
    }

    v = 0;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (unsigned) (s[i] - '0');
    }

    if (v == 0 || v > 65535) {
        return -1;
    }

    snprintf(out, 8, "%u", v);
    return 0;
}


/*
 * Splits "host:port" or "[v6]:port" (port optional when dflt is given)
 * of len bytes.  The host goes to host without brackets; *hostlen gets
 * the length of the host as written (brackets included).  Host names are
 * letters, digits, '.' and '-'; bracketed hosts hex digits, ':' and '.'.
 */
static int
parse_hostport(const char *s, size_t len, char *host, size_t *hostlen,
    char *port, const char *dflt)
{
    size_t       i, n;
    const char  *h, *end;

    end = s + len;

    if (len > 0 && s[0] == '[') {
        h = memchr(s, ']', len);
        if (h == NULL || h == s + 1) {
            return -1;
        }
        n = (size_t) (h - s - 1);
        if (n >= ETCD_HOST_LEN) {
            return -1;
        }
        for (i = 1; i <= n; i++) {
            if (strchr("0123456789abcdefABCDEF:.", s[i]) == NULL) {
                return -1;
            }
        }
        memcpy(host, s + 1, n);
        host[n] = '\0';
        h++;

    } else {
        for (h = s; h < end && *h != ':'; h++) {
            if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z')
                  || (*h >= '0' && *h <= '9') || *h == '.' || *h == '-'))
            {
                return -1;
            }
        }
        n = (size_t) (h - s);
        if (n == 0 || n >= ETCD_HOST_LEN) {
            return -1;
        }
        memcpy(host, s, n);
        host[n] = '\0';
    }

    *hostlen = (size_t) (h - s);

    if (h == end) {
        if (dflt == NULL) {
            return -1;
        }
        strcpy(port, dflt);
        return 0;
    }

    if (*h != ':') {
        return -1;
    }

    h++;
    return parse_port(h, (size_t) (end - h), port);
}


/* one URL of --etcd: http://host[:port][/] */
static int
parse_url(const char *s, size_t len, etcd_url_t *u)
{
    char    port[8];
    size_t  hl;

    if (len < 7 || strncasecmp(s, "http://", 7) != 0) {
        return -1;
    }

    s += 7;
    len -= 7;

    if (len > 0 && s[len - 1] == '/') {
        len--;
    }

    if (len == 0 || memchr(s, '/', len) != NULL
        || parse_hostport(s, len, u->host, &hl, port, ETCD_DEFAULT_PORT)
           != 0)
    {
        return -1;
    }

    memcpy(u->port, port, sizeof(port));
    snprintf(u->text, sizeof(u->text), "http://%.*s:%s", (int) hl, s, port);
    return 0;
}


static int
set_urls(const char *value)
{
    size_t       n;
    const char  *p, *comma;

    conf.nurls = 0;

    for (p = value; ; p = comma + 1) {
        comma = strchr(p, ',');
        n = comma ? (size_t) (comma - p) : strlen(p);

        if (conf.nurls == ETCD_MAX_URLS) {
            fprintf(stderr, "memqd: at most %d URLs in --etcd\n",
                    ETCD_MAX_URLS);
            return -1;
        }

        if (parse_url(p, n, &conf.url[conf.nurls]) != 0) {
            fprintf(stderr, "memqd: bad --etcd URL \"%.*s\" "
                    "(expected http://HOST[:PORT])\n", (int) n, p);
            return -1;
        }

        conf.nurls++;

        if (comma == NULL) {
            break;
        }
    }

    conf.urls = value;
    return 0;
}


int
etcd_option(int opt, const char *value)
{
    size_t    i, n;
    char      host[ETCD_HOST_LEN], port[8];
    uint64_t  v;

    switch (opt) {

    case ETCD_OPT_URLS:
        return set_urls(value);

    case ETCD_OPT_ADVERTISE:
        n = strlen(value);
        if (parse_hostport(value, n, host, &i, port, NULL) != 0
            || i + 1 + strlen(port) != n)
        {
            /* a port with leading zeros would change the key: refused */
            fprintf(stderr, "memqd: bad --advertise \"%s\" "
                    "(expected HOST:PORT)\n", value);
            return -1;
        }
        conf.advertise = value;
        return 0;

    case ETCD_OPT_CLUSTER:
        n = strlen(value);
        for (i = 0; i < n; i++) {
            if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       "0123456789_.-", value[i]) == NULL)
            {
                break;
            }
        }
        if (n == 0 || n > ETCD_NAME_LEN || i != n || value[0] == '.') {
            fprintf(stderr, "memqd: bad --cluster \"%s\" (1-%d of "
                    "[A-Za-z0-9_.-], not starting with '.')\n", value,
                    ETCD_NAME_LEN);
            return -1;
        }
        conf.cluster = value;
        return 0;

    case ETCD_OPT_WEIGHT:
        v = 0;
        for (i = 0; value[i] >= '0' && value[i] <= '9' && i < 5; i++) {
            v = v * 10 + (uint64_t) (value[i] - '0');
        }
        if (i == 0 || value[i] != '\0' || v == 0 || v > ETCD_MAX_WEIGHT) {
            fprintf(stderr, "memqd: bad --weight \"%s\" (1-%d)\n", value,
                    ETCD_MAX_WEIGHT);
            return -1;
        }
        conf.weight = (unsigned) v;
        return 0;

    default:
        return -1;
    }
}


int
etcd_check(void)
{
    if (conf.urls == NULL) {
        if (conf.advertise || conf.cluster || conf.weight != 1) {
            fprintf(stderr, "memqd: --advertise, --cluster and --weight "
                    "need --etcd\n");
            return -1;
        }
        return 0;
    }

    if (conf.advertise == NULL) {
        fprintf(stderr, "memqd: --etcd needs --advertise HOST:PORT "
                "(the address the gateway connects to)\n");
        return -1;
    }

    if (conf.cluster == NULL) {
        fprintf(stderr, "memqd: --etcd needs --cluster NAME\n");
        return -1;
    }

    return 0;
}


/* ------------------------------------------------------ HTTP client */


static void
set_err(int err)
{
    const char  *s;

    /* the GNU strerror_r: thread-safe, may return a static string */
    s = strerror_r(err, ctx.err, sizeof(ctx.err));
    if (s != ctx.err) {
        snprintf(ctx.err, sizeof(ctx.err), "%s", s);
    }

    /* "Connection refused" -> "connection refused", as log lines read */
    if (ctx.err[0] >= 'A' && ctx.err[0] <= 'Z') {
        ctx.err[0] = (char) (ctx.err[0] - 'A' + 'a');
    }
}


/*
 * Waits until fd is ready for events, the deadline passes, or (wfd != -1)
 * a stop is requested.  Returns 1 ready, 0 timed out, E_STOP, or -1 with
 * errno set.
 */
static int
wait_fd(int fd, short events, uint64_t deadline, int wfd)
{
    int            rc;
    uint64_t       now;
    struct pollfd  pfd[2];

    for ( ;; ) {
        now = mono_ms();
        if (now >= deadline) {
            return 0;
        }

        pfd[0].fd = fd;
        pfd[0].events = events;
        pfd[0].revents = 0;
        pfd[1].fd = wfd;
        pfd[1].events = POLLIN;
        pfd[1].revents = 0;

        rc = poll(pfd, wfd == -1 ? 1 : 2, (int) (deadline - now));
        if (rc == -1) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }

        if (wfd != -1 && pfd[1].revents) {
            return E_STOP;
        }

        if (rc > 0) {
            return 1;
        }
    }
}


/* a connected non-blocking socket to u, or -1 (ctx.err) or E_STOP */
static int
http_connect(const etcd_url_t *u, uint64_t deadline, int wfd)
{
    int               fd, rc, err;
    socklen_t         len;
    struct addrinfo   hints, *res, *ai;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        snprintf(ctx.err, sizeof(ctx.err), "%s", gai_strerror(rc));
        return -1;
    }

    fd = -1;

    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
        if (fd == -1) {
            set_err(errno);
            continue;
        }

        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            break;
        }

        err = errno;

        if (err == EINPROGRESS) {
            rc = wait_fd(fd, POLLOUT, deadline, wfd);
            if (rc == E_STOP) {
                close(fd);
                fd = E_STOP;
                break;
            }

            if (rc == 1) {
                len = sizeof(err);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
                    err = errno;
                }
                if (err == 0) {
                    break;
                }

            } else {
                err = rc == 0 ? ETIMEDOUT : errno;
            }
        }

        set_err(err);
        close(fd);
        fd = -1;
    }

    freeaddrinfo(res);
    return fd;
}


/* decodes a chunked body in place; returns its length or -1 */
static ssize_t
dechunk(char *body, size_t len)
{
    char    *src, *dst, *end, *eol;
    size_t   size;
    int      digits;

    src = body;
    dst = body;
    end = body + len;

    for ( ;; ) {
        size = 0;
        digits = 0;

        while (src < end && digits < 8
               && ((*src >= '0' && *src <= '9')
                   || ((*src | 0x20) >= 'a' && (*src | 0x20) <= 'f')))
        {
            size = size * 16 + (size_t) (*src <= '9' ? *src - '0'
                                         : (*src | 0x20) - 'a' + 10);
            src++;
            digits++;
        }

        eol = memmem(src, (size_t) (end - src), "\r\n", 2);
        if (digits == 0 || eol == NULL) {
            return -1;
        }

        /* chunk extensions, if any, are skipped */
        src = eol + 2;

        if (size == 0) {
            return dst - body;
        }

        if ((size_t) (end - src) < size + 2) {
            return -1;
        }

        memmove(dst, src, size);
        dst += size;
        src += size + 2;
    }
}


/* parses the n bytes of ctx.resp: status, headers, body */
static int
parse_response(size_t n)
{
    char     *p, *eol, *hend, *colon, *v;
    ssize_t   blen;
    size_t    clen, name;
    int       chunked, have_clen;

    p = ctx.resp;
    p[n] = '\0';

    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' '
        || p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9'
        || p[11] < '0' || p[11] > '9')
    {
        snprintf(ctx.err, sizeof(ctx.err), "not an HTTP answer");
        return -1;
    }

    ctx.status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

    hend = strstr(p, "\r\n\r\n");
    if (hend == NULL) {
        snprintf(ctx.err, sizeof(ctx.err), "truncated HTTP answer");
        return -1;
    }

    chunked = 0;
    have_clen = 0;
    clen = 0;

    for (p = strstr(p, "\r\n") + 2; p < hend + 2; p = eol + 2) {
        eol = strstr(p, "\r\n");
        colon = memchr(p, ':', (size_t) (eol - p));
        if (colon == NULL) {
            continue;
        }

        name = (size_t) (colon - p);
        for (v = colon + 1; *v == ' ' || *v == '\t'; v++) { /* void */ }

        if (name == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0
            && strncasecmp(v, "chunked", 7) == 0)
        {
            chunked = 1;

        } else if (name == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
            have_clen = 1;
            clen = (size_t) strtoul(v, NULL, 10);
        }
    }

    ctx.body = hend + 4;
    blen = (ssize_t) (n - (size_t) (ctx.body - ctx.resp));

    if (chunked) {
        blen = dechunk(ctx.body, (size_t) blen);

    } else if (have_clen) {
        blen = (size_t) blen < clen ? -1 : (ssize_t) clen;
    }

    if (blen < 0) {
        snprintf(ctx.err, sizeof(ctx.err), "truncated HTTP body");
        return -1;
    }

    ctx.body[blen] = '\0';
    return 0;
}


/*
 * POSTs the JSON body to path at u and reads the answer into ctx (status,
 * body).  Returns E_OK, E_FAIL (ctx.err) or E_STOP.
 */
static int
http_post(const etcd_url_t *u, const char *path, const char *body,
    uint64_t deadline, int wfd)
{
    int       fd, rc;
    size_t    n, sent, blen;
    ssize_t   r;

    blen = strlen(body);
    rc = snprintf(ctx.req, sizeof(ctx.req),
                  "POST %s HTTP/1.1\r\n"
                  "Host: %s\r\n"
                  "Content-Type: application/json\r\n"
                  "Content-Length: %zu\r\n"
                  "Connection: close\r\n"
                  "\r\n%s",
                  path, u->text + 7, blen, body);
    if (rc < 0 || (size_t) rc >= sizeof(ctx.req)) {
        snprintf(ctx.err, sizeof(ctx.err), "request too large");
        return E_FAIL;
    }

    n = (size_t) rc;

    fd = http_connect(u, deadline, wfd);
    if (fd < 0) {
        return fd == E_STOP ? E_STOP : E_FAIL;
    }

    rc = E_FAIL;

    for (sent = 0; sent < n; sent += (size_t) r) {
        r = send(fd, ctx.req + sent, n - sent, MSG_NOSIGNAL);
        if (r >= 0) {
            continue;
        }

        if (errno != EAGAIN && errno != EINTR) {
            set_err(errno);
            goto cleanup;
        }

        r = 0;
        rc = wait_fd(fd, POLLOUT, deadline, wfd);
        if (rc != 1) {
            goto wait_failed;
        }
        rc = E_FAIL;
    }

    /* "Connection: close": the answer ends at EOF */
    n = 0;

    for ( ;; ) {
        if (n == sizeof(ctx.resp) - 1) {
            snprintf(ctx.err, sizeof(ctx.err), "answer too large");
            goto cleanup;
        }

        r = recv(fd, ctx.resp + n, sizeof(ctx.resp) - 1 - n, 0);
        if (r > 0) {
            n += (size_t) r;
            continue;
        }

        if (r == 0) {
            break;
        }

        if (errno != EAGAIN && errno != EINTR) {
            set_err(errno);
            goto cleanup;
        }

        rc = wait_fd(fd, POLLIN, deadline, wfd);
        if (rc != 1) {
            goto wait_failed;
        }
        rc = E_FAIL;
    }

    rc = parse_response(n) == 0 ? E_OK : E_FAIL;
    goto cleanup;

wait_failed:

    if (rc == 0) {
        snprintf(ctx.err, sizeof(ctx.err), "timed out");
        rc = E_FAIL;

    } else if (rc != E_STOP) {
        set_err(errno);
        rc = E_FAIL;
    }

cleanup:

    close(fd);
    return rc;
}


/* ------------------------------------------------------ etcd calls */


/*
 * Finds "name": in the JSON text s and reads the number after it, quoted
 * (int64 as etcd's gateway writes them) or not.  Returns 0 or -1.
 */
static int
json_u64(const char *s, const char *name, uint64_t *v)
{
    char         pat[32];
    const char  *p;
    uint64_t     n;

    snprintf(pat, sizeof(pat), "\"%s\"", name);

    p = strstr(s, pat);
    if (p == NULL) {
        return -1;
    }

    for (p += strlen(pat); *p == ' '; p++) { /* void */ }

    if (*p++ != ':') {
        return -1;
    }

    for ( /* void */ ; *p == ' ' || *p == '"'; p++) { /* void */ }

    if (*p < '0' || *p > '9') {
        return -1;
    }

    for (n = 0; *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (uint64_t) (*p - '0');
    }

    *v = n;
    return 0;
}


/* etcd's reason for a non-200 answer, "HTTP <status>" if it gave none */
static void
set_http_err(void)
{
    char   *p, *e;
    size_t  n;

    p = strstr(ctx.body, "\"error\":\"");
    if (p == NULL) {
        snprintf(ctx.err, sizeof(ctx.err), "HTTP %d", ctx.status);
        return;
    }

    p += 9;
    if (strncmp(p, "etcdserver: ", 12) == 0) {
        p += 12;
    }

    e = strpbrk(p, "\"\\");
    n = e ? (size_t) (e - p) : strlen(p);

    snprintf(ctx.err, sizeof(ctx.err), "HTTP %d, %.*s", ctx.status,
             (int) (n > 90 ? 90 : n), p);
}


/*
 * Whether a failure is logged: the first since the node was last
 * registered at once, then one every WARN_EVERY_MS.  A refusal by etcd
 * counts as a failure as much as no answer does.
 */
static int
warn_due(void)
{
    return ctx.fails == 0 || mono_ms() - ctx.last_warn >= WARN_EVERY_MS;
}


/* a failed round, logged or not */
static void
round_failed(int logged)
{
    if (logged) {
        ctx.last_warn = mono_ms();
    }

    ctx.fails++;
}


/* logs etcd's refusal (when due, see warn_due()) and counts the round */
static void
refused(const char *fmt, ...)
{
    int      due;
    char     msg[256];
    va_list  ap;

    due = warn_due();

    if (due) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_warn("etcd", "%s, retrying", msg);
    }

    round_failed(due);
}


/*
 * One round: POSTs to every URL in turn, starting with the one that
 * answered last, until etcd answers (200, or one of its own refusals).
 * Failures are logged at warn as warn_due() says.
 * wfd == -1 (the revoke at stop) makes the round uninterruptible but
 * bounded by deadline; otherwise each URL gets REQUEST_MS.
 */
static int
call(const char *path, const char *body, uint64_t deadline, int wfd)
{
    int          rc, quiet;
    size_t       i, k;
    uint64_t     end;
    etcd_url_t  *u;

    quiet = !warn_due();

    for (i = 0; i < conf.nurls; i++) {
        k = (ctx.cur + i) % conf.nurls;
        u = &conf.url[k];
        end = deadline ? deadline : mono_ms() + REQUEST_MS;

        rc = http_post(u, path, body, end, wfd);
        if (rc == E_STOP) {
            return E_STOP;
        }

        /*
         * etcd's own refusals (a gRPC error as JSON, such as "lease not
         * found") are answers; a 5xx, or anything else that is not etcd
         * speaking, sends us to the next URL
         */
        if (rc == E_OK && ctx.status != 200
            && (ctx.status >= 500 || strstr(ctx.body, "\"code\":") == NULL))
        {
            set_http_err();
            rc = E_FAIL;
        }

        if (rc == E_OK) {
            ctx.cur = k;
            return E_OK;
        }

        if (!quiet) {
            if (ctx.fails == 0) {
                log_warn("etcd", "%s%s: %s, retrying", u->text, path,
                         ctx.err);
            } else {
                log_warn("etcd", "%s%s: %s, still retrying (%u failed "
                         "attempts)", u->text, path, ctx.err, ctx.fails);
            }
        }

        if (deadline && mono_ms() >= deadline) {
            break;
        }
    }

    round_failed(!quiet);
    return E_FAIL;
}


static int
lease_grant(void)
{
    int       rc;
    char      body[64];
    uint64_t  id, t;

    t = mono_ms();
    snprintf(body, sizeof(body), "{\"TTL\":%d}", ETCD_TTL);

    rc = call("/v3/lease/grant", body, 0, wake_fd);
    if (rc != E_OK) {
        return rc;
    }

    if (ctx.status != 200 || json_u64(ctx.body, "ID", &id) != 0 || id == 0) {
        if (ctx.status == 200) {
            snprintf(ctx.err, sizeof(ctx.err), "HTTP 200 without a lease ID");
        } else {
            set_http_err();
        }
        refused("lease grant refused: %s", ctx.err);
        return E_FAIL;
    }

    ctx.lease = id;
    ctx.registered = 0;
    ctx.last_ok = t;
    return E_OK;
}


static int
key_put(void)
{
    int   rc;
    char  body[BODY_SIZE];

    snprintf(body, sizeof(body),
             "{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%llu\"}",
             conf.key64, conf.value64, (unsigned long long) ctx.lease);

    rc = call("/v3/kv/put", body, 0, wake_fd);
    if (rc != E_OK) {
        return rc;
    }

    if (ctx.status != 200) {
        set_http_err();
        refused("put %s refused: %s", conf.key, ctx.err);
        if (ctx.status == 404) {
            /* the lease is gone (expired meanwhile): take a new one */
            ctx.lease = 0;
        }
        return E_FAIL;
    }

    ctx.registered = 1;
    log_info("etcd", "registered %s lease %llx ttl %ds at %s", conf.key,
             (unsigned long long) ctx.lease, ETCD_TTL,
             conf.url[ctx.cur].text);
    return E_OK;
}


static int
lease_keepalive(void)
{
    int       rc;
    char      body[64];
    uint64_t  ttl, t;

    t = mono_ms();
    snprintf(body, sizeof(body), "{\"ID\":\"%llu\"}",
             (unsigned long long) ctx.lease);

    rc = call("/v3/lease/keepalive", body, 0, wake_fd);
    if (rc != E_OK) {
        return rc;
    }

    if (ctx.status != 200) {
        set_http_err();
        refused("keepalive of lease %llx refused: %s",
                (unsigned long long) ctx.lease, ctx.err);
        return E_FAIL;
    }

    /* an unknown lease is answered with no TTL (or 0), not an error */
    if (json_u64(ctx.body, "TTL", &ttl) != 0 || ttl == 0) {
        log_warn("etcd", "lease %llx expired, registering again",
                 (unsigned long long) ctx.lease);
        ctx.lease = 0;
        ctx.registered = 0;
        return E_OK;
    }

    ctx.last_ok = t;
    return E_OK;
}


static void
lease_revoke(void)
{
    int       rc;
    char      body[64];
    uint64_t  id;

    id = ctx.lease;
    if (id == 0) {
        return;
    }

    snprintf(body, sizeof(body), "{\"ID\":\"%llu\"}", (unsigned long long) id);

    /* bounded and uninterruptible: the stop is what asked for it */
    ctx.fails = 0;
    rc = call("/v3/lease/revoke", body, mono_ms() + REVOKE_MS, -1);

    if (rc == E_OK && ctx.status == 200) {
        if (ctx.registered) {
            log_info("etcd", "lease %llx revoked, %s removed",
                     (unsigned long long) id, conf.key);
        } else {
            log_info("etcd", "lease %llx revoked", (unsigned long long) id);
        }
        return;
    }

    if (rc == E_OK) {
        set_http_err();
    }

    log_warn("etcd", "lease %llx not revoked (%s): %s expires within %ds",
             (unsigned long long) id, ctx.err,
             ctx.registered ? conf.key : "it", ETCD_TTL);
}


/* waits until the monotonic time `until`; returns 1 if a stop came */
static int
pause_until(uint64_t until)
{
    uint64_t       now;
    struct pollfd  pfd;

    for ( ;; ) {
        now = mono_ms();
        if (now >= until) {
            return 0;
        }

        pfd.fd = wake_fd;
        pfd.events = POLLIN;
        pfd.revents = 0;

        if (poll(&pfd, 1, (int) (until - now)) > 0) {
            return 1;
        }
    }
}


static void *
etcd_thread(void *arg)
{
    int       rc;
    uint64_t  now, next, wait;

    ctx.backoff = BACKOFF_MIN_MS;
    next = 0;

    for ( ;; ) {
        if (pause_until(next)) {
            break;
        }

        now = mono_ms();

        if (ctx.lease != 0 && now - ctx.last_ok >= ETCD_TTL * 1000) {
            /* a lease that never held the key (the put was refused) runs
             * out unused: the refusals have been logged already */
            if (ctx.registered) {
                log_warn("etcd", "lease %llx expired while etcd was away, "
                         "registering again",
                         (unsigned long long) ctx.lease);
            }
            ctx.lease = 0;
            ctx.registered = 0;
        }

        if (ctx.lease == 0) {
            rc = lease_grant();

        } else if (!ctx.registered) {
            rc = key_put();

        } else {
            rc = lease_keepalive();
        }

        if (rc == E_STOP) {
            break;
        }

        now = mono_ms();

        if (rc == E_OK && !ctx.registered) {
            /* a lease granted, or lost: the put follows at once, and
             * the backoff stays as it is until the put is taken, so a
             * grant-then-refuse cycle is no faster than any failure */
            next = now;
            continue;
        }

        if (rc == E_OK) {
            if (ctx.fails > 0) {
                log_info("etcd", "%s reachable again (after %u failed "
                         "attempt%s)", conf.url[ctx.cur].text, ctx.fails,
                         ctx.fails == 1 ? "" : "s");
                ctx.fails = 0;
            }
            ctx.backoff = BACKOFF_MIN_MS;
            next = ctx.last_ok + KEEPALIVE_MS;
            continue;
        }

        /* backoff with +-25% jitter, so nodes do not retry in step */
        wait = ctx.backoff * 3 / 4
               + (uint64_t) rand_r(&ctx.seed) % (ctx.backoff / 2 + 1);
        next = now + wait;
        ctx.backoff = ctx.backoff * 2 > BACKOFF_MAX_MS
                      ? BACKOFF_MAX_MS : ctx.backoff * 2;
    }

    lease_revoke();
    return NULL;
}


/* ------------------------------------------------------ start, stop */


int
etcd_start(void)
{
    int   n, err;
    char  value[KEY_SIZE];

    if (conf.urls == NULL) {
        return 0;
    }

    snprintf(conf.key, sizeof(conf.key), "/memq/%s/nodes/%s", conf.cluster,
             conf.advertise);
    n = snprintf(value, sizeof(value), "{\"addr\":\"%s\",\"weight\":%u}",
                 conf.advertise, conf.weight);

    if (base64_encode(conf.key64, sizeof(conf.key64), conf.key,
                      strlen(conf.key)) < 0
        || base64_encode(conf.value64, sizeof(conf.value64), value,
                         (size_t) n) < 0)
    {
        log_error("etcd", "key or value too long");
        return -1;
    }

    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd == -1) {
        log_error("etcd", "eventfd: %s", strerror(errno));
        return -1;
    }

    ctx.seed = (unsigned) getpid() ^ (unsigned) mono_ms();

    log_info("etcd", "registering %s weight %u at %s", conf.key,
             conf.weight, conf.urls);

    err = pthread_create(&thread, NULL, etcd_thread, NULL);
    if (err != 0) {
        log_error("etcd", "pthread_create: %s", strerror(err));
        close(wake_fd);
        wake_fd = -1;
        return -1;
    }

    started = 1;
    return 0;
}


void
etcd_stop_request(void)
{
    uint64_t  one;

    if (!started) {
        return;
    }

    one = 1;
    if (write(wake_fd, &one, sizeof(one)) != (ssize_t) sizeof(one)) {
        /* EAGAIN: the counter is already set, the thread will see it */
    }
}


void
etcd_stop(void)
{
    int              err;
    struct timespec  ts;

    if (!started) {
        return;
    }

    etcd_stop_request();

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += JOIN_MS / 1000;

    err = pthread_timedjoin_np(thread, NULL, &ts);
    if (err != 0) {
        /* only a hung name lookup can hold it up: leave it behind */
        log_warn("etcd", "registration thread did not stop: %s",
                 strerror(err));
        started = 0;
        return;
    }

    started = 0;
    close(wake_fd);
    wake_fd = -1;
}
