/*
 * server.h: process-wide settings, state and counters of memqd.
 * Owned by the loop thread; the sync thread never touches it.
 */

#ifndef MEMQD_SERVER_H
#define MEMQD_SERVER_H

#include <stdint.h>

#define MEMQD_VERSION  "0.1.0"

typedef enum {
    SYNC_ALWAYS,     /* STORED only after an fsync covering the record */
    SYNC_INTERVAL,   /* fsync every sync_interval ms */
    SYNC_NONE        /* leave it to the kernel */
} sync_mode_e;

typedef struct {
    /* settings */
    const char   *data_dir;        /* (ref) argv */
    int           data_fd;         /* O_DIRECTORY fd of data_dir */
    sync_mode_e   sync_mode;
    uint64_t      sync_interval;   /* ms, SYNC_INTERVAL */
    uint64_t      max_item_size;   /* bytes */
    uint64_t      segment_size;    /* bytes */
    uint64_t      journal_size;    /* bytes of one journal file */
    int           check_only;      /* --check: report damage, change
                                      nothing */
    uint64_t      max_conns;
    uint64_t      max_leases;      /* leases held node-wide, at most */
    uint64_t      shutdown_timeout;  /* ms replies in flight get on
                                        SIGTERM */
    const char   *config_path;     /* (ref) argv, or NULL */

    /* state */
    int           readonly;        /* an fsync or write failed: refuse sets */
    int           stopping;        /* SIGTERM seen */
    uint64_t      start_time;      /* unix s */

    /* counters for `stats` */
    uint64_t      curr_conns;
    uint64_t      total_conns;
    uint64_t      cmd_get;
    uint64_t      cmd_set;
    uint64_t      get_hits;
    uint64_t      get_misses;
    uint64_t      total_items;
    uint64_t      curr_waiters;    /* long polls parked, on any queue */
    uint64_t      corrupt_records; /* damaged records skipped (ids lost) */
} server_t;

extern server_t  srv;

/* unix time in ms / s (wall clock; records carry it) */
uint64_t server_wall_ms(void);

#endif /* MEMQD_SERVER_H */
