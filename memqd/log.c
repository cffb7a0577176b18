/*
 * log.c: formats and writes log lines to stderr with a single write(2),
 * so lines from the sync thread and the loop never interleave.  A line is
 * always one line: control bytes in a message are written as '?'.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"


log_level_e  log_max_level = LOG_INFO;

static const char *level_names[] = { "error", "warn", "info", "debug" };


void
log_msg(log_level_e level, const char *subsys, const char *fmt, ...)
{
    char            line[1024];
    size_t          n, end;
    int             rc;
    va_list         ap;
    struct tm       tm;
    struct timeval  tv;

    if (level > log_max_level) {
        return;
    }

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);

    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    rc = snprintf(line + n, sizeof(line) - n, ".%03dZ [%s] %s: ",
                  (int) (tv.tv_usec / 1000), level_names[level], subsys);
    n += (size_t) rc;

    va_start(ap, fmt);
    rc = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);

    if (rc < 0) {
        rc = 0;
    }

    end = n + (size_t) rc;
    if (end > sizeof(line) - 2) {
        end = sizeof(line) - 2;
    }

    /* a message may quote a peer (etcd's error text, a file name): one
     * line each, and no byte that a terminal would act on */
    for ( /* void */ ; n < end; n++) {
        if ((unsigned char) line[n] < 0x20 || line[n] == 0x7f) {
            line[n] = '?';
        }
    }

    line[n++] = '\n';

    if (write(STDERR_FILENO, line, n) < 0) {
        /* nowhere left to report it */
    }
}


int
log_rate_ok(log_rate_t *r, uint64_t now_ms)
{
    if (now_ms - r->window_start >= 1000) {
        if (r->suppressed > 0) {
            log_msg(LOG_INFO, r->subsys, "%lu similar lines suppressed",
                    (unsigned long) r->suppressed);
        }
        r->window_start = now_ms;
        r->count = 0;
        r->suppressed = 0;
    }

    if (r->count < r->per_second) {
        r->count++;
        return 1;
    }

    r->suppressed++;
    return 0;
}
