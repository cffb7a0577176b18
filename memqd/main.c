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
#include "mq_proto.h"
#include "notify.h"
#include "options.h"
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

static const char   *listen_addrs[MAX_LISTEN];
static size_t        nlisten;
static const char   *metrics_addr;


uint64_t
server_wall_ms(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);
    return (uint64_t) tv.tv_sec * 1000 + (uint64_t) tv.tv_usec / 1000;
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
            notify_send("STOPPING=1");
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


/* ------------------------------------------------------------ options */


/* ADDR:PORT as --listen and --metrics take it: NULL, or what is wrong
 * (the address itself is resolved when the listener opens) */
static const char *
addr_port_check(const char *v)
{
    char           *end;
    const char     *colon;
    unsigned long   port;

    if (*v == '\0') {
        return "empty";
    }

    colon = strrchr(v, ':');
    if (colon == NULL || colon[1] == '\0') {
        return "expected ADDR:PORT";
    }

    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0 || port > 65535 || colon[1] == '-'
        || colon[1] == '+' || colon[1] == ' ')
    {
        return "bad port";
    }

    return NULL;
}


static const char *
set_listen(const opt_t *o, const char *v)
{
    const char  *bad;

    if ((bad = addr_port_check(v)) != NULL) {
        return bad;
    }
    if (nlisten == MAX_LISTEN) {
        return "too many addresses (at most 16)";
    }
    listen_addrs[nlisten++] = v;
    return NULL;
}


static const char *
set_metrics(const opt_t *o, const char *v)
{
    const char  *bad;

    if ((bad = addr_port_check(v)) != NULL) {
        return bad;
    }
    metrics_addr = v;
    return NULL;
}


static const char *
set_data_dir(const opt_t *o, const char *v)
{
    if (*v == '\0') {
        return "empty";
    }
    srv.data_dir = v;
    return NULL;
}


static const char *
set_sync(const opt_t *o, const char *v)
{
    return parse_sync(v) == 0 ? NULL
                              : "expected always, interval=MS or none";
}


/* the size options (k, m, g suffixes): opt_t.code indexes this */
enum { SIZE_ITEM, SIZE_SEGMENT, SIZE_JOURNAL, SIZE_CONNS, SIZE_LEASES };

static const struct {
    uint64_t     *to;       /* the setting */
    uint64_t      min;
    uint64_t      max;
    const char   *why;      /* the reason a value out of bounds gets */
} sizes[] = {
    { &srv.max_item_size, 1, MQ_ITEM_MAX, "1 to 1g" },
    { &srv.segment_size, 4096, UINT64_MAX, "at least 4k" },
    { &srv.journal_size, 65536, UINT64_MAX, "at least 64k" },
    { &srv.max_conns, 1, UINT32_MAX, "a number, at least 1" },
    { &srv.max_leases, 1, UINT32_MAX, "a number, at least 1" },
};


static const char *
set_size(const opt_t *o, const char *v)
{
    uint64_t  n;

    if (config_parse_size(v, &n) != 0 || n < sizes[o->code].min
        || n > sizes[o->code].max)
    {
        return sizes[o->code].why;
    }

    *sizes[o->code].to = n;
    return NULL;
}


static const char *
set_shutdown_timeout(const opt_t *o, const char *v)
{
    uint64_t  s;

    if (parse_seconds(v, &s) != 0 || s > SHUTDOWN_TIMEOUT_MAX) {
        return "seconds, 0 to 86400";
    }
    srv.shutdown_timeout = s * 1000;
    return NULL;
}


static const char *
set_check(const opt_t *o, const char *v)
{
    srv.check_only = (v == NULL);
    return NULL;
}


static const char *
set_config(const opt_t *o, const char *v)
{
    srv.config_path = v;
    return NULL;
}


static const char *
set_etcd(const opt_t *o, const char *v)
{
    /* etcd_option() prints its own reason */
    return etcd_option(o->code, v) == 0 ? NULL : "";
}


static const char *
set_verbose(const opt_t *o, const char *v)
{
    log_max_level = (v == NULL) ? LOG_DEBUG : LOG_INFO;
    return NULL;
}


static const char *
set_help(const opt_t *o, const char *v)
{
    options_usage(stdout);
    return NULL;
}


static const char *
set_version(const opt_t *o, const char *v)
{
    printf("memqd %s\n", MEMQD_VERSION);
    return NULL;
}


/* Every option of memqd: the command line, --help and [memqd] of the
 * config file all read this table (options.h).  Defaults live here. */
static const opt_t  options[] = {
    { "listen", 'l', "ADDR:PORT", "127.0.0.1:22201",
      "serve here; repeat for more addresses", OPT_REPEAT, 0, set_listen },
    { "data-dir", 'd', "DIR", "./memq-data",
      "queue files", 0, 0, set_data_dir },
    { "sync", 's', "MODE", "always",
      "when STORED: always (fsynced), interval=MS, none", 0, 0,
      set_sync },
    { "max-item-size", 'm', "SIZE", "1m",
      "largest message (k, m, g: 1024-based)", 0, SIZE_ITEM, set_size },
    { "segment-size", 'S', "SIZE", "64m",
      "bytes of one segment file", 0, SIZE_SEGMENT, set_size },
    { "journal-size", 'J', "SIZE", "64m",
      "bytes of one journal file", 0, SIZE_JOURNAL, set_size },
    { "max-connections", 'C', "N", "10000",
      "connections past this are refused", 0, SIZE_CONNS, set_size },
    { "max-leases", 0, "N", "1m",
      "leases held at once (about 100 bytes each)", 0, SIZE_LEASES,
      set_size },
    { "shutdown-timeout", 0, "S", "10",
      "seconds replies in flight get on SIGTERM", 0, 0,
      set_shutdown_timeout },
    { "etcd", 0, "URL[,URL]", NULL,
      "register in etcd (http://HOST[:PORT])", 0, ETCD_OPT_URLS, set_etcd },
    { "advertise", 0, "HOST:PORT", NULL,
      "with --etcd: the address gateways connect to", 0, ETCD_OPT_ADVERTISE,
      set_etcd },
    { "cluster", 0, "NAME", NULL,
      "with --etcd: the cluster to join", 0, ETCD_OPT_CLUSTER, set_etcd },
    { "weight", 0, "N", "1",
      "with --etcd: the node's weight, 1 to 1000", 0, ETCD_OPT_WEIGHT,
      set_etcd },
    { "metrics", 0, "ADDR:PORT", NULL,
      "serve Prometheus text at http://ADDR:PORT/metrics", 0, 0,
      set_metrics },
    { "verbose", 'v', NULL, "off",
      "log every command (debug level)", OPT_FLAG, 0, set_verbose },
    { "config", 'c', "FILE", NULL,
      "queue limits and options (SIGHUP: limits)", OPT_CMDLINE, 0,
      set_config },
    { "check", 'K', NULL, "off",
      "check the data directory and exit", OPT_FLAG
      | OPT_CMDLINE, 0, set_check },
    { "help", 'h', NULL, NULL,
      "print this and exit", OPT_FLAG | OPT_CMDLINE | OPT_EXIT, 0,
      set_help },
    { "version", 0, NULL, NULL,
      "print \"memqd VERSION\" and exit", OPT_FLAG | OPT_CMDLINE | OPT_EXIT,
      0, set_version },
};


/* The command line, then --config's [memqd], then the defaults.  Returns
 * -1 to go on, else the exit status. */
static int
read_options(int argc, char **argv)
{
    int  rc;

    rc = options_parse(options, sizeof(options) / sizeof(options[0]), argc,
                       argv);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }

    /* the file's [memqd] applies at start only: SIGHUP re-reads the
     * queue limits and checks its keys */
    config_set_option_handler(options_config);
    rc = config_load(srv.config_path);
    config_set_option_handler(options_reload);
    if (rc != 0) {
        return 1;
    }

    options_defaults();

    return etcd_check() == 0 ? -1 : 2;
}


int
main(int argc, char **argv)
{
    int       i, rc;
    sigset_t  mask;

    rc = read_options(argc, argv);
    if (rc != -1) {
        return rc;
    }

    signal(SIGPIPE, SIG_IGN);

    /* blocked before any thread starts, so only the signalfd sees them */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    srv.start_time = (uint64_t) time(NULL);

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

    /* recovery is done and the listeners are open (systemd Type=notify) */
    notify_send("READY=1");

    loop_after_event = journal_commit_early;
    loop_run(before_sleep);

    etcd_stop();
    metrics_shutdown();
    conn_shutdown();
    queue_shutdown();
    log_info("main", "stopped");
    return 0;
}
