/*
 * log.h: one line per event on stderr:
 *   <ISO-8601 UTC time> [level] <subsystem>: <message>
 */

#ifndef MEMQD_LOG_H
#define MEMQD_LOG_H

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

#endif /* MEMQD_LOG_H */
