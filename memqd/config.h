/*
 * config.h: per-queue limits from the --config file.
 *
 *   # comment
 *   [defaults]
 *   max_items = 1000000
 *   [queue jobs*]           # prefix match; the longest match wins
 *   max_bytes = 1g
 *   max_age = 3600          # seconds
 *   overflow = drop_oldest  # or reject (default)
 *   max_deliveries = 5      # dead-letter an item delivered 5 times
 *   dead_letter = jobs.failed   # its queue (default: <name>.dlq)
 *
 * Sizes take k/m/g suffixes (1024-based).  0 means no limit.
 */

#ifndef MEMQD_CONFIG_H
#define MEMQD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t  max_items;      /* 0 = unlimited */
    uint64_t  max_bytes;      /* 0 = unlimited */
    uint64_t  max_age;        /* seconds, 0 = unlimited */
    int       drop_oldest;    /* overflow policy: 1 drop_oldest, 0 reject */
    uint64_t  max_deliveries; /* 0 = no dead letters */
} limits_t;

/* Loads path (NULL = no file: everything unlimited).  On error logs the
 * file, line and reason, keeps the previous configuration, returns -1. */
int config_load(const char *path);

/* Limits for a queue name under the current configuration. */
void config_limits(const char *name, size_t len, limits_t *out);

/* The dead-letter queue of a queue name: its `dead_letter` setting or
 * "<name>.dlq", written to out (MQ_NAME_MAX + 1 bytes).  Its length, or 0
 * when that name would not be a valid queue name (too long). */
size_t config_dead_letter(const char *name, size_t len, char *out);

/* Bumped by every successful config_load(); queues compare it with the
 * generation they cached their limits at. */
extern uint64_t  config_generation;

/* Parses "123", "4k", "1m", "2g" (1024-based).  0 on success. */
int config_parse_size(const char *s, uint64_t *out);

#endif /* MEMQD_CONFIG_H */
