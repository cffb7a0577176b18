// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_accept_nomem.c: a memcache listener when a new connection's timer
 * slot cannot be had (loop_timer_reserve() out of memory, realloc()
 * wrapped at link time to fail).  The client is closed; the shortage is
 * logged once, not once per connection a client makes; the connections
 * behind it wait in the backlog and are served when memory is back; every
 * slot taken comes back when its connection is freed.  The metrics
 * listener backs off the same way.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "server.h"
#include "standin.h"

#define CLIENTS  10
#define LOG_MAX  16384


/* the port of the one listening socket of this process */
static int
listener_port(void)
{
    int                 fd, on;
    socklen_t           len;
    struct sockaddr_in  sa;

    for (fd = 3; fd < 1024; fd++) {
        len = sizeof(on);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) != 0
            || !on)
        {
            continue;
        }

        len = sizeof(sa);
        if (getsockname(fd, (struct sockaddr *) &sa, &len) == 0
            && sa.sin_family == AF_INET)
        {
            return ntohs(sa.sin_port);
        }
    }

    return -1;
}


static int
client(int port)
{
    int                 fd;
    struct sockaddr_in  sa;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd != -1);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);

    return fd;
}


/* before_sleep: stops once `want` connections are open, or after the
 * first wait when `once` */
static int       once;
static unsigned  iterations;
static uint64_t  want;


static int
stop_when_done(void)
{
    int  busy;

    busy = conn_before_sleep();

    if (once ? iterations++ > 0 : srv.curr_conns == want) {
        loop_stop();
        return 1;
    }

    return busy;
}


static void
give_up(loop_timer_t *t)
{
    loop_stop();
}


/* how many lines of the log file at fd mention `what` */
static int
log_lines(int fd, const char *what)
{
    int      n;
    char     buf[LOG_MAX], *p;
    ssize_t  len;

    len = pread(fd, buf, sizeof(buf) - 1, 0);
    assert_true(len >= 0);
    buf[len] = '\0';

    for (n = 0, p = buf; (p = strstr(p, what)) != NULL; p++) {
        n++;
    }

    return n;
}


/*
 * Takes every slot the timer heap has room for and makes it unable to
 * grow, connects CLIENTS clients to the one listener, and runs the loop
 * once with stderr in a file (returned).
 */
static int
refuse_clients(int *fds, size_t *held)
{
    int   port, logfd, saved, i;
    char  path[] = "/tmp/memq-unit-accept-XXXXXX";

    port = listener_port();
    assert_true(port > 0);

    logfd = mkstemp(path);
    assert_true(logfd != -1);
    unlink(path);
    saved = dup(STDERR_FILENO);
    dup2(logfd, STDERR_FILENO);

    realloc_fails = 1;
    for (*held = 0; loop_timer_reserve() == 0; (*held)++) {
        /* void */
    }

    for (i = 0; i < CLIENTS; i++) {
        fds[i] = client(port);
    }

    once = 1;
    iterations = 0;
    loop_run(stop_when_done);
    once = 0;

    /* (cmocka reports on stderr) */
    dup2(saved, STDERR_FILENO);
    close(saved);

    return logfd;
}


/* the connections behind the refused one were not taken from the
 * backlog only to be refused in turn */
static void
rest_wait(int *fds)
{
    int      i;
    char     buf[64];
    ssize_t  n;

    for (i = 1; i < CLIENTS; i++) {
        n = recv(fds[i], buf, sizeof(buf), MSG_DONTWAIT);
        assert_int_equal(n, -1);
        assert_int_equal(errno, EAGAIN);
    }
}


static void
memory_back(size_t held)
{
    realloc_fails = 0;
    while (held-- > 0) {
        loop_timer_release();
    }
}


/* the slots the heap has room for beyond those held */
static size_t
free_slots(void)
{
    size_t  n;

    realloc_fails = 1;
    for (n = 0; loop_timer_reserve() == 0; n++) {
        /* void */
    }
    memory_back(n);

    return n;
}


/* runs the loop until `n` connections are open (10 s at most) */
static void
run_until(uint64_t n)
{
    loop_timer_t  deadline = { 0 };

    deadline.handler = give_up;
    loop_timer_add(&deadline, 10000);
    want = n;
    loop_run(stop_when_done);
    loop_timer_del(&deadline);
    assert_int_equal(srv.curr_conns, n);
}


static void
refusal_is_logged_once_and_the_rest_wait(void **state)
{
    int           fds[CLIENTS], logfd, i;
    char          buf[64];
    size_t        held;
    ssize_t       n;

    (void) state;

    memset(&srv, 0, sizeof(srv));
    srv.max_conns = 1000;
    assert_int_equal(conn_listen("127.0.0.1:0"), 0);

    logfd = refuse_clients(fds, &held);

    /* the first is closed (a reply line would be taken by the gateway
     * as the answer to its first set) */
    n = recv(fds[0], buf, sizeof(buf), 0);
    assert_int_equal(n, 0);

    rest_wait(fds);

    /* one line says so, not one per connection */
    assert_int_equal(log_lines(logfd, "memory"), 1);

    /* memory is back: the ones that waited are served */
    memory_back(held);
    run_until(CLIENTS - 1);

    /* every slot comes back, from a connection its client closed and
     * from those shutdown closes: as many free as before the refusal */
    close(fds[1]);
    run_until(CLIENTS - 2);
    conn_shutdown();
    conn_close_listeners();
    assert_int_equal(free_slots(), held);

    for (i = 0; i < CLIENTS; i++) {
        if (i != 1) {
            close(fds[i]);
        }
    }

    close(logfd);
}


static void
metrics_refusal_backs_off(void **state)
{
    int     fds[CLIENTS], logfd, i;
    char    buf[64];
    size_t  held;

    (void) state;

    memset(&srv, 0, sizeof(srv));
    assert_int_equal(metrics_listen("127.0.0.1:0"), 0);

    logfd = refuse_clients(fds, &held);

    /* the first is closed, the rest wait; nothing floods the log */
    assert_int_equal(recv(fds[0], buf, sizeof(buf), 0), 0);
    rest_wait(fds);
    assert_true(log_lines(logfd, "memory") <= 1);

    memory_back(held);
    metrics_shutdown();
    for (i = 0; i < CLIENTS; i++) {
        close(fds[i]);
    }
    close(logfd);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(refusal_is_logged_once_and_the_rest_wait),
        cmocka_unit_test(metrics_refusal_backs_off),
    };

    log_max_level = LOG_WARN;

    if (loop_init() != 0) {
        return 1;
    }

    return cmocka_run_group_tests(tests, NULL, NULL);
}
