/*
 * config.c: the INI-style --config file (see config.h).  The parsed rules
 * are kept in one array; lookups scan it, which is fine for the handful of
 * rules an operator writes, and run only when a queue is created or the
 * configuration changes.
 */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "mq_name.h"

#define RULE_NAME_MAX  256

typedef struct {
    char      name[RULE_NAME_MAX];  /* queue name, or prefix when wildcard */
    size_t    len;
    int       wildcard;             /* name ended in '*' */
    limits_t  lim;
    char      dlq[MQ_NAME_MAX + 1]; /* dead_letter, "" when not set */
    unsigned  set;                  /* which fields this section sets */
} rule_t;

#define SET_ITEMS  0x1
#define SET_BYTES  0x2
#define SET_AGE    0x4
#define SET_OVF    0x8
#define SET_DELIV  0x10

static rule_t    *rules;
static size_t     nrules;
static limits_t   defaults;
static char       defaults_dlq[MQ_NAME_MAX + 1];
uint64_t          config_generation;


int
config_parse_size(const char *s, uint64_t *out)
{
    char      *end;
    uint64_t   v, mul;

    if (!isdigit((unsigned char) *s)) {
        return -1;
    }

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0) {
        return -1;
    }

    switch (*end) {
    case 'k': case 'K': mul = 1024; end++; break;
    case 'm': case 'M': mul = 1024 * 1024; end++; break;
    case 'g': case 'G': mul = 1024 * 1024 * 1024; end++; break;
    default: mul = 1;
    }

    if (*end != '\0' || (v != 0 && mul > UINT64_MAX / v)) {
        return -1;
    }

    *out = v * mul;
    return 0;
}


static char *
trim(char *s)
{
    char  *e;

    while (isspace((unsigned char) *s)) {
        s++;
    }

    e = s + strlen(s);
    while (e > s && isspace((unsigned char) e[-1])) {
        *--e = '\0';
    }

    return s;
}


static int
set_value(limits_t *lim, char *dlq, unsigned *set, const char *key,
    const char *val)
{
    if (strcmp(key, "max_deliveries") == 0) {
        *set |= SET_DELIV;
        return config_parse_size(val, &lim->max_deliveries);
    }

    if (strcmp(key, "dead_letter") == 0) {
        /* a queue name: it becomes a directory name */
        if (!mq_name_valid(val, strlen(val))) {
            return -1;
        }
        memcpy(dlq, val, strlen(val) + 1);
        return 0;
    }

    if (strcmp(key, "max_items") == 0) {
        *set |= SET_ITEMS;
        return config_parse_size(val, &lim->max_items);
    }

    if (strcmp(key, "max_bytes") == 0) {
        *set |= SET_BYTES;
        return config_parse_size(val, &lim->max_bytes);
    }

    if (strcmp(key, "max_age") == 0) {
        *set |= SET_AGE;
        return config_parse_size(val, &lim->max_age);
    }

    if (strcmp(key, "overflow") == 0) {
        *set |= SET_OVF;
        if (strcmp(val, "reject") == 0) {
            lim->drop_oldest = 0;
            return 0;
        }
        if (strcmp(val, "drop_oldest") == 0) {
            lim->drop_oldest = 1;
            return 0;
        }
        return -1;
    }

    return -1;
}


int
config_load(const char *path)
{
    FILE      *f;
    char       buf[1024], *line, *eq, *p;
    rule_t    *nr, *cur_rule, *tmp;
    size_t     n, cap, lineno;
    char       ndef_dlq[MQ_NAME_MAX + 1], *cur_dlq;
    limits_t   ndef, *cur;
    unsigned   dummy;

    memset(&ndef, 0, sizeof(ndef));
    ndef_dlq[0] = '\0';
    cur_dlq = NULL;
    nr = NULL;
    n = 0;
    cap = 0;

    if (path == NULL) {
        goto done;
    }

    f = fopen(path, "r");
    if (f == NULL) {
        log_error("config", "%s: %s", path, strerror(errno));
        return -1;
    }

    cur = NULL;
    cur_rule = NULL;
    lineno = 0;

    while (fgets(buf, sizeof(buf), f) != NULL) {
        lineno++;

        if (strchr(buf, '\n') == NULL && !feof(f)) {
            /* a line longer than the buffer: never parse its tail as a
             * line of its own */
            goto bad;
        }

        p = strchr(buf, '#');
        if (p != NULL) {
            *p = '\0';
        }

        line = trim(buf);
        if (*line == '\0') {
            continue;
        }

        if (*line == '[') {
            p = strchr(line, ']');
            if (p == NULL || p[1] != '\0') {
                goto bad;
            }
            *p = '\0';
            line = trim(line + 1);

            if (strcmp(line, "defaults") == 0) {
                cur = &ndef;
                cur_dlq = ndef_dlq;
                cur_rule = NULL;
                continue;
            }

            if (strncmp(line, "queue", 5) != 0
                || !isspace((unsigned char) line[5]))
            {
                goto bad;
            }

            line = trim(line + 5);
            if (*line == '\0' || strlen(line) >= RULE_NAME_MAX) {
                goto bad;
            }

            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                tmp = realloc(nr, cap * sizeof(rule_t));
                if (tmp == NULL) {
                    goto bad;
                }
                nr = tmp;
            }

            cur_rule = &nr[n++];
            memset(cur_rule, 0, sizeof(rule_t));
            cur_rule->len = strlen(line);
            memcpy(cur_rule->name, line, cur_rule->len + 1);
            if (line[cur_rule->len - 1] == '*') {
                cur_rule->wildcard = 1;
                cur_rule->name[--cur_rule->len] = '\0';
            }
            cur = &cur_rule->lim;
            cur_dlq = cur_rule->dlq;
            continue;
        }

        eq = strchr(line, '=');
        if (eq == NULL || cur == NULL) {
            goto bad;
        }
        *eq = '\0';

        if (set_value(cur, cur_dlq, cur_rule ? &cur_rule->set : &dummy,
                      trim(line), trim(eq + 1)) != 0)
        {
            goto bad;
        }
    }

    if (ferror(f)) {
        /* a read error is not the end of the file */
        log_error("config", "%s: read error", path);
        fclose(f);
        free(nr);
        return -1;
    }

    fclose(f);

done:

    free(rules);
    rules = nr;
    nrules = n;
    defaults = ndef;
    memcpy(defaults_dlq, ndef_dlq, sizeof(defaults_dlq));
    config_generation++;

    if (path != NULL) {
        log_info("config", "%s: loaded, %zu queue rules", path, n);
    }

    return 0;

bad:

    log_error("config", "%s:%zu: bad line, configuration not changed",
              path, lineno);
    fclose(f);
    free(nr);
    return -1;
}


/* The rule that applies to a queue name, or NULL. */
static rule_t *
best_rule(const char *name, size_t len)
{
    size_t   i, best_len;
    rule_t  *r, *best;

    best = NULL;
    best_len = 0;

    for (i = 0; i < nrules; i++) {
        r = &rules[i];

        if (r->wildcard) {
            if (r->len > len || memcmp(r->name, name, r->len) != 0) {
                continue;
            }
        } else if (r->len != len || memcmp(r->name, name, len) != 0) {
            continue;
        }

        /* an exact name beats a prefix of the same length */
        if (best == NULL || r->len > best_len
            || (r->len == best_len && !r->wildcard))
        {
            best = r;
            best_len = r->len;
        }
    }

    return best;
}


size_t
config_dead_letter(const char *name, size_t len, char *out)
{
    size_t   n;
    rule_t  *best;

    best = best_rule(name, len);

    if (best != NULL && best->dlq[0] != '\0') {
        n = strlen(best->dlq);
        memcpy(out, best->dlq, n + 1);
        return n;
    }

    if (defaults_dlq[0] != '\0') {
        n = strlen(defaults_dlq);
        memcpy(out, defaults_dlq, n + 1);
        return n;
    }

    if (len + 4 > MQ_NAME_MAX) {
        return 0;
    }

    memcpy(out, name, len);
    memcpy(out + len, ".dlq", 5);
    return len + 4;
}


void
config_limits(const char *name, size_t len, limits_t *out)
{
    rule_t  *best;

    *out = defaults;
    best = best_rule(name, len);

    if (best == NULL) {
        return;
    }

    if (best->set & SET_ITEMS) {
        out->max_items = best->lim.max_items;
    }
    if (best->set & SET_BYTES) {
        out->max_bytes = best->lim.max_bytes;
    }
    if (best->set & SET_AGE) {
        out->max_age = best->lim.max_age;
    }
    if (best->set & SET_OVF) {
        out->drop_oldest = best->lim.drop_oldest;
    }
    if (best->set & SET_DELIV) {
        out->max_deliveries = best->lim.max_deliveries;
    }
}
