/*
 * main.c: memqd's command line, start-up, signals and shutdown.
 *
 * Signals arrive through a signalfd in the event loop, so handlers run as
 * ordinary loop callbacks: SIGTERM/SIGINT stop accepting, answer long
 * polls, finish replies (for up to --shutdown-timeout; items of replies
 * not delivered by then go back to their queues), fsync and exit 0;
 * SIGHUP re-reads --config.
 */

#include <errno.h>
#include <malloc.h>
#include <inttypes.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "etcd.h"
#include "journal.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "queue.h"
#include "server.h"
#include "sync.h"
#include "sys.h"

#define MAX_LISTEN       16
#define SHUTDOWN_TIMEOUT_MAX  86400   /* s */

server_t             srv;

static loop_io_t     sig_io;
static loop_timer_t  interval_timer;
static loop_timer_t  stop_timer;


uint64_t
server_wall_ms(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);
    return (uint64_t) tv.tv_sec * 1000 + (uint64_t) tv.tv_usec / 1000;
}


static void
usage(FILE *f)
{
    fprintf(f,
        "usage: memqd [--listen ADDR:PORT]... [--data-dir DIR]\n"
        "             [--sync always|interval=MS|none] [--max-item-size N]\n"
        "             [--segment-size N] [--journal-size N] [--config FILE]\n"
        "             [--check]\n"
        "             [--max-connections N] [--shutdown-timeout S] [-v]\n"
        "             [--etcd URL[,URL...] --advertise HOST:PORT "
        "--cluster NAME\n"
        "              [--weight N]]\n"
        "             [--metrics ADDR:PORT]\n");
}


static int
before_sleep(void)
{
    int  busy;

    busy = conn_before_sleep();
    busy |= queue_before_sleep();

    if (srv.stopping && !conn_busy()) {
        /* every reply is out (stop_timer ends the wait otherwise); do
         * not block in this last wait */
        loop_stop();
        return 1;
    }

    return busy;
}


static void
interval_handler(loop_timer_t *t)
{
    queue_sync_all(0);
    loop_timer_add(t, srv.sync_interval);
}


static void
signal_handler(loop_io_t *io, unsigned events)
{
    struct signalfd_siginfo  si;

    while (read(io->fd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
        switch (si.ssi_signo) {

        case SIGHUP:
            log_info("main", "SIGHUP: reloading %s",
                     srv.config_path ? srv.config_path : "(no config)");
            config_load(srv.config_path);
            break;

        case SIGTERM:
        case SIGINT:
            if (srv.stopping) {
                break;
            }
            log_info("main", "signal %u: stopping", si.ssi_signo);
            srv.stopping = 1;
            conn_close_listeners();
            etcd_stop_request();
            queue_wake_all_waiters();
            /* replies in flight, STOREDs waiting for their fsync too,
             * get until then; before_sleep() stops sooner when they are
             * all out */
            loop_timer_add(&stop_timer, srv.shutdown_timeout);
            break;

        default:
            break;
        }
    }
}


static void
stop_timeout(loop_timer_t *t)
{
    if (conn_busy()) {
        log_warn("main", "--shutdown-timeout passed with replies still in "
                 "flight: their undelivered items go back to their queues");
    }

    loop_stop();
}


/* Decimal seconds, digits only. */
static int
parse_seconds(const char *s, uint64_t *out)
{
    uint64_t  v;

    if (*s == '\0') {
        return -1;
    }

    for (v = 0; *s; s++) {
        if (*s < '0' || *s > '9' || v > UINT32_MAX) {
            return -1;
        }
        v = v * 10 + (uint64_t) (*s - '0');
    }

    *out = v;
    return 0;
}


static int
parse_sync(const char *s)
{
    uint64_t  ms;

    if (strcmp(s, "always") == 0) {
        srv.sync_mode = SYNC_ALWAYS;
        return 0;
    }

    if (strcmp(s, "none") == 0) {
        srv.sync_mode = SYNC_NONE;
        return 0;
    }

    if (strncmp(s, "interval=", 9) == 0
        && config_parse_size(s + 9, &ms) == 0 && ms > 0)
    {
        srv.sync_mode = SYNC_INTERVAL;
        srv.sync_interval = ms;
        return 0;
    }

    return -1;
}


static int
open_data_dir(void)
{
    int  lock;

    if (mkdir(srv.data_dir, 0755) != 0 && errno != EEXIST) {
        log_error("main", "%s: %s", srv.data_dir, strerror(errno));
        return -1;
    }

    srv.data_fd = open(srv.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (srv.data_fd == -1) {
        log_error("main", "%s: %s", srv.data_dir, strerror(errno));
        return -1;
    }

    /* two daemons must never share a data directory */
    lock = openat(srv.data_fd, "memqd.lock", O_RDWR | O_CREAT | O_CLOEXEC,
                  0644);
    if (lock == -1 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        log_error("main", "%s: locked by another memqd (%s)", srv.data_dir,
                  strerror(errno));
        return -1;
    }

    return 0;
}


static void
raise_fd_limit(void)
{
    struct rlimit  rl;
    rlim_t         want;

    want = (rlim_t) srv.max_conns + 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) {
        return;
    }

    rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
    if (rl.rlim_max < want) {
        rl.rlim_max = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
            return;
        }
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
    }

    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want) {
        log_warn("main", "open files limited to %lu: fewer connections "
                 "than --max-connections", (unsigned long) rl.rlim_cur);
    }
}


int
main(int argc, char **argv)
{
    int                  opt, i;
    size_t               nlisten;
    uint64_t             v;
    sigset_t             mask;
    const char          *listen_addrs[MAX_LISTEN];
    const char          *metrics_addr;

    static struct option  longopts[] = {
        { "listen",          required_argument, NULL, 'l' },
        { "data-dir",        required_argument, NULL, 'd' },
        { "sync",            required_argument, NULL, 's' },
        { "max-item-size",   required_argument, NULL, 'm' },
        { "segment-size",    required_argument, NULL, 'S' },
        { "journal-size",    required_argument, NULL, 'J' },
        { "check",           no_argument,       NULL, 'K' },
        { "config",          required_argument, NULL, 'c' },
        { "max-connections", required_argument, NULL, 'C' },
        { "shutdown-timeout", required_argument, NULL, 'T' },
        { "etcd",            required_argument, NULL, ETCD_OPT_URLS },
        { "advertise",       required_argument, NULL, ETCD_OPT_ADVERTISE },
        { "cluster",         required_argument, NULL, ETCD_OPT_CLUSTER },
        { "weight",          required_argument, NULL, ETCD_OPT_WEIGHT },
        { "metrics",         required_argument, NULL, 'P' },
        { "verbose",         no_argument,       NULL, 'v' },
        { "help",            no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    srv.data_dir = "./memq-data";
    srv.sync_mode = SYNC_ALWAYS;
    srv.max_item_size = 1024 * 1024;
    srv.segment_size = 64 * 1024 * 1024;
    srv.journal_size = 64 * 1024 * 1024;
    srv.max_conns = 10000;
    srv.shutdown_timeout = 10000;
    nlisten = 0;
    metrics_addr = NULL;

    while ((opt = getopt_long(argc, argv, "l:d:s:m:S:J:Kc:C:vh", longopts,
                              NULL)) != -1)
    {
        switch (opt) {
        case 'l':
            if (nlisten == MAX_LISTEN) {
                fprintf(stderr, "memqd: at most %d --listen\n", MAX_LISTEN);
                return 2;
            }
            listen_addrs[nlisten++] = optarg;
            break;
        case 'd':
            srv.data_dir = optarg;
            break;
        case 's':
            if (parse_sync(optarg) != 0) {
                fprintf(stderr, "memqd: bad --sync \"%s\"\n", optarg);
                return 2;
            }
            break;
        case 'm':
            if (config_parse_size(optarg, &v) != 0 || v == 0
                || v > 1024 * 1024 * 1024)
            {
                fprintf(stderr, "memqd: bad --max-item-size \"%s\"\n",
                        optarg);
                return 2;
            }
            srv.max_item_size = v;
            break;
        case 'S':
            if (config_parse_size(optarg, &v) != 0 || v < 4096) {
                fprintf(stderr, "memqd: bad --segment-size \"%s\" "
                        "(at least 4k)\n", optarg);
                return 2;
            }
            srv.segment_size = v;
            break;
        case 'J':
            if (config_parse_size(optarg, &v) != 0 || v < 65536) {
                fprintf(stderr, "memqd: bad --journal-size \"%s\" "
                        "(at least 64k)\n", optarg);
                return 2;
            }
            srv.journal_size = v;
            break;
        case 'K':
            srv.check_only = 1;
            break;
        case 'c':
            srv.config_path = optarg;
            break;
        case 'C':
            if (config_parse_size(optarg, &v) != 0 || v == 0) {
                fprintf(stderr, "memqd: bad --max-connections \"%s\"\n",
                        optarg);
                return 2;
            }
            srv.max_conns = v;
            break;
        case 'T':
            if (parse_seconds(optarg, &v) != 0 || v > SHUTDOWN_TIMEOUT_MAX) {
                fprintf(stderr, "memqd: bad --shutdown-timeout \"%s\" "
                        "(seconds, 0 to %d)\n", optarg, SHUTDOWN_TIMEOUT_MAX);
                return 2;
            }
            srv.shutdown_timeout = v * 1000;
            break;
        case ETCD_OPT_URLS:
        case ETCD_OPT_ADVERTISE:
        case ETCD_OPT_CLUSTER:
        case ETCD_OPT_WEIGHT:
            if (etcd_option(opt, optarg) != 0) {
                return 2;
            }
            break;
        case 'P':
            metrics_addr = optarg;
            break;
        case 'v':
            log_max_level = LOG_DEBUG;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }

    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    if (etcd_check() != 0) {
        return 2;
    }

    if (nlisten == 0) {
        listen_addrs[nlisten++] = "127.0.0.1:22201";
    }

    signal(SIGPIPE, SIG_IGN);

    /* blocked before any thread starts, so only the signalfd sees them */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    srv.start_time = (uint64_t) time(NULL);

    if (config_load(srv.config_path) != 0) {
        return 1;
    }

    raise_fd_limit();
    sys_init();

    /* write buffers come and go every loop iteration: keep freed heap
     * rather than hand it back and fault it in again each time */
    mallopt(M_TRIM_THRESHOLD, 16 * 1024 * 1024);

    if (loop_init() != 0 || open_data_dir() != 0) {
        return srv.check_only ? 2 : 1;
    }

    if (queue_init() != 0) {
        log_error("main", "%s: cannot read queues", srv.data_dir);
        return srv.check_only ? 2 : 1;
    }

    if (srv.check_only) {
        /* --check: report, change nothing, serve nothing */
        printf("memqd: check %s: %" PRIu64 " damaged records\n",
               srv.data_dir, srv.corrupt_records);
        return srv.corrupt_records ? 1 : 0;
    }

    if (sync_init(queue_sync_done) != 0) {
        return 1;
    }

    for (i = 0; i < (int) nlisten; i++) {
        if (conn_listen(listen_addrs[i]) != 0) {
            return 1;
        }
    }

    if (metrics_addr != NULL && metrics_listen(metrics_addr) != 0) {
        return 1;
    }

    sig_io.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    sig_io.handler = signal_handler;
    if (sig_io.fd == -1 || loop_add(&sig_io, LOOP_READ) != 0) {
        log_error("main", "signalfd: %s", strerror(errno));
        return 1;
    }

    if (srv.sync_mode == SYNC_INTERVAL) {
        interval_timer.handler = interval_handler;
        loop_timer_add(&interval_timer, srv.sync_interval);
    }

    stop_timer.handler = stop_timeout;

    log_info("main", "memqd %s started, pid %d, data %s, sync %s",
             MEMQD_VERSION, (int) getpid(), srv.data_dir,
             srv.sync_mode == SYNC_ALWAYS ? "always"
             : srv.sync_mode == SYNC_NONE ? "none" : "interval");

    /* registered only once it serves: the gateway may connect at once */
    if (etcd_start() != 0) {
        return 1;
    }

    loop_run(before_sleep);

    etcd_stop();
    metrics_shutdown();
    conn_shutdown();
    queue_shutdown();
    log_info("main", "stopped");
    return 0;
}
