/*
 * prom.h: the Prometheus text exposition format (version 0.0.4), written
 * into a growing buffer, and the fixed-bucket latency histogram memqd
 * exposes in it.
 *
 * A family is `# HELP`, `# TYPE`, then its samples.  Label values are
 * escaped as the format says (backslash, double quote, line feed), so any
 * bytes may be passed.  The buffer stops growing at its `max`: it is then
 * marked failed and the caller answers an error instead of a cut text.
 *
 * A histogram counts observations in microseconds into PROM_HIST_BUCKETS
 * buckets (prom_hist_bounds, upper bounds included) plus +Inf; it is
 * written with cumulative `_bucket{le="seconds"}`, `_sum` and `_count`.
 * It is plain data: a writer in another thread copies it under its own
 * lock (see sync.c).
 */

#ifndef MEMQD_PROM_H
#define MEMQD_PROM_H

#include <stddef.h>
#include <stdint.h>

#define PROM_HIST_BUCKETS  16

typedef struct {
    uint64_t   counts[PROM_HIST_BUCKETS + 1];  /* per bucket, not
                                                  cumulative; last +Inf */
    uint64_t   count;
    uint64_t   sum_us;
} prom_hist_t;

typedef struct {
    char      *p;           /* text, not NUL-terminated */
    size_t     len;
    size_t     cap;
    size_t     max;         /* never grows past this */
    int        failed;      /* out of memory or past max: text unusable */
} prom_buf_t;

/* upper bounds of the buckets, microseconds, ascending */
extern const uint64_t  prom_hist_bounds[PROM_HIST_BUCKETS];

void prom_hist_observe(prom_hist_t *h, uint64_t us);

/* Appends n bytes / a C string. */
void prom_mem(prom_buf_t *b, const char *s, size_t n);
void prom_str(prom_buf_t *b, const char *s);

/* Appends s[0..n) escaped for a label value (without the quotes). */
void prom_escape(prom_buf_t *b, const char *s, size_t n);

/* `# HELP name help` and `# TYPE name type`; help is a constant without
 * backslashes or line feeds. */
void prom_family(prom_buf_t *b, const char *name, const char *type,
    const char *help);

/*
 * One sample: name, an optional label (lname NULL: none) whose value
 * lval[0..llen) is escaped, and the value, an integer divided by `scale`
 * (1: an integer; 1000: milli-units written as a decimal).
 */
void prom_sample(prom_buf_t *b, const char *name, const char *lname,
    const char *lval, size_t llen, uint64_t v, unsigned scale);

/* The samples of a histogram (its family lines are the caller's), with
 * an optional label as prom_sample(). */
void prom_hist(prom_buf_t *b, const char *name, const char *lname,
    const char *lval, const prom_hist_t *h);

void prom_buf_free(prom_buf_t *b);

#endif /* MEMQD_PROM_H */
