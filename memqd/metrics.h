/*
 * metrics.h: counters for the Prometheus endpoint and its HTTP listener
 * (`--metrics ADDR:PORT`, `GET /metrics`).
 *
 * The loop thread owns everything here.  The fsync histogram is kept by
 * the commit thread and copied under its lock (sync_fsync_hist()).
 */

#ifndef MEMQD_METRICS_H
#define MEMQD_METRICS_H

#include <stdint.h>

#include "prom.h"

/* commands by kind, the `command` label of memqd_commands_total */
#define METRICS_CMDS(X)                                                      \
    X(METRICS_CMD_SET,    "set")                                             \
    X(METRICS_CMD_GET,    "get")                                             \
    X(METRICS_CMD_DELETE, "delete")                                          \
    X(METRICS_CMD_TOUCH,  "touch")                                           \
    X(METRICS_CMD_STATS,  "stats")                                           \
    X(METRICS_CMD_OTHER,  "other")

typedef enum {
#define METRICS_CMD_ENUM(e, s) e,
    METRICS_CMDS(METRICS_CMD_ENUM)
#undef METRICS_CMD_ENUM
    METRICS_NCMDS
} metrics_cmd_e;

/* request latency histograms: receipt of the command line to its reply
 * in the output, released (a STORED waits for its fsync) */
#define METRICS_LAT_SET  0
#define METRICS_LAT_GET  1
#define METRICS_NLAT     2

typedef struct {
    uint64_t     cmds[METRICS_NCMDS];
    uint64_t     bytes_read;         /* from memcache clients */
    uint64_t     bytes_written;      /* to memcache clients */
    prom_hist_t  latency[METRICS_NLAT];
    uint64_t     scrapes;            /* answered GET /metrics */
} metrics_t;

extern metrics_t  metrics;

/* Counts one command of memcache kind `mq_cmd` (mq_proto.h). */
void metrics_command(int mq_cmd);

/* Records n requests that took from start_us (loop_now_us()) to now in
 * histogram `which`. */
void metrics_latency(int which, uint64_t start_us, uint64_t n);

/* Starts the HTTP listener; 0 or -1 (logged). */
int metrics_listen(const char *addr);

/* Closes the listener and every scrape connection (exit). */
void metrics_shutdown(void);

#endif /* MEMQD_METRICS_H */
