/*
 * log.h: one line per event on stderr:
 *   <ISO-8601 UTC time> [level] <subsystem>: <message>
 */

#ifndef MEMQD_LOG_H
#define MEMQD_LOG_H

#include <stdint.h>

typedef enum {
    LOG_ERROR,   /* acknowledged data at risk, write/fsync failed */
    LOG_WARN,    /* degraded: tail dropped, node read-only */
    LOG_INFO,    /* start/stop, recovery summary */
    LOG_DEBUG    /* per command; off unless -v */
} log_level_e;

extern log_level_e  log_max_level;

void log_msg(log_level_e level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(s, ...)  log_msg(LOG_ERROR, s, __VA_ARGS__)
#define log_warn(s, ...)   log_msg(LOG_WARN, s, __VA_ARGS__)
#define log_info(s, ...)   log_msg(LOG_INFO, s, __VA_ARGS__)
#define log_debug(s, ...)                                                    \
    do {                                                                     \
        if (log_max_level >= LOG_DEBUG) {                                    \
            log_msg(LOG_DEBUG, s, __VA_ARGS__);                              \
        }                                                                    \
    } while (0)

/* At most per_second lines a second for one kind of event (clients must
 * not be able to flood the log); the count of the rest is logged when the
 * next second starts. */
typedef struct {
    const char  *subsys;
    unsigned     per_second;
    unsigned     count;
    uint64_t     window_start;   /* monotonic ms */
    uint64_t     suppressed;
} log_rate_t;

int log_rate_ok(log_rate_t *r, uint64_t now_ms);

#endif /* MEMQD_LOG_H */
