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

/* where the lines being read go */
typedef struct {
    limits_t  *ndef;     /* [defaults] of the file being read */
    char      *ndef_dlq; /* its dead_letter */
    limits_t  *lim;      /* [defaults] or a [queue], NULL: none yet */
    char      *dlq;      /* the dead_letter of that section */
    rule_t    *rule;     /* the [queue] being read, or NULL */
    int        memqd;    /* inside [memqd] */
} section_t;

static rule_t             *rules;
static size_t              nrules;
static limits_t            defaults;
static char                defaults_dlq[MQ_NAME_MAX + 1];
static config_option_pt    option_handler;
uint64_t                   config_generation;


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


/* Returns NULL, or why the line is refused. */
static const char *
set_value(limits_t *lim, char *dlq, unsigned *set, const char *key,
    const char *val)
{
    uint64_t  *field;
    unsigned   bit;

    if (strcmp(key, "dead_letter") == 0) {
        /* a queue name: it becomes a directory name */
        if (!mq_name_valid(val, strlen(val))) {
            return "bad dead_letter (expected a queue name)";
        }
        memcpy(dlq, val, strlen(val) + 1);
        return NULL;
    }

    if (strcmp(key, "max_deliveries") == 0) {
        field = &lim->max_deliveries;
        bit = SET_DELIV;

    } else if (strcmp(key, "max_items") == 0) {
        field = &lim->max_items;
        bit = SET_ITEMS;

    } else if (strcmp(key, "max_bytes") == 0) {
        field = &lim->max_bytes;
        bit = SET_BYTES;

    } else if (strcmp(key, "max_age") == 0) {
        field = &lim->max_age;
        bit = SET_AGE;

    } else if (strcmp(key, "overflow") == 0) {
        *set |= SET_OVF;
        if (strcmp(val, "reject") == 0) {
            lim->drop_oldest = 0;
            return NULL;
        }
        if (strcmp(val, "drop_oldest") == 0) {
            lim->drop_oldest = 1;
            return NULL;
        }
        return "bad overflow (expected reject or drop_oldest)";

    } else {
        return "unknown key (expected max_items, max_bytes, max_age, "
               "overflow, max_deliveries or dead_letter)";
    }

    *set |= bit;
    if (config_parse_size(val, field) != 0) {
        return "bad number (expected digits, with k, m or g)";
    }

    return NULL;
}


void
config_set_option_handler(config_option_pt handler)
{
    option_handler = handler;
}


/*
 * Reads one "[...]" section header line and
 * points the section state at it.  Returns NULL or why it is refused.
 */
static const char *
section(char *line, rule_t **nr, size_t *n, size_t *cap, section_t *sec)
{
    char    *p;
    rule_t  *r, *tmp;

    p = strchr(line, ']');
    if (p == NULL || p[1] != '\0') {
        return "bad section header (expected [memqd], [defaults] or "
               "[queue NAME])";
    }
    *p = '\0';
    line = trim(line + 1);

    sec->rule = NULL;
    sec->lim = NULL;
    sec->memqd = 0;

    if (strcmp(line, "memqd") == 0) {
        sec->memqd = 1;
        return NULL;
    }

    if (strcmp(line, "defaults") == 0) {
        sec->lim = sec->ndef;
        sec->dlq = sec->ndef_dlq;
        return NULL;
    }

    if (strncmp(line, "queue", 5) != 0
        || !isspace((unsigned char) line[5]))
    {
        return "unknown section (expected [memqd], [defaults] or "
               "[queue NAME])";
    }

    line = trim(line + 5);
    if (*line == '\0' || strlen(line) >= RULE_NAME_MAX) {
        return "bad queue name in section header";
    }

    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        tmp = realloc(*nr, *cap * sizeof(rule_t));
        if (tmp == NULL) {
            return "out of memory";
        }
        *nr = tmp;
    }

    r = &(*nr)[(*n)++];
    memset(r, 0, sizeof(rule_t));
    r->len = strlen(line);
    memcpy(r->name, line, r->len + 1);
    if (line[r->len - 1] == '*') {
        r->wildcard = 1;
        r->name[--r->len] = '\0';
    }

    sec->rule = r;
    sec->lim = &r->lim;
    sec->dlq = r->dlq;
    return NULL;
}


/* One "key = value" line of the current section.  NULL or why not. */
static const char *
key_value(char *line, size_t lineno, section_t *sec)
{
    char      *eq, *key, *val;
    unsigned   dummy;

    eq = strchr(line, '=');
    if (eq == NULL) {
        return "expected \"key = value\" or a [section]";
    }
    *eq = '\0';
    key = trim(line);
    val = trim(eq + 1);

    if (sec->memqd) {
        /* daemon settings apply at start only; a reload skips them */
        return option_handler ? option_handler(key, val, lineno) : NULL;
    }

    if (sec->lim == NULL) {
        return "key outside a section";
    }

    return set_value(sec->lim, sec->dlq, sec->rule ? &sec->rule->set : &dummy,
                     key, val);
}


int
config_load(const char *path)
{
    FILE        *f;
    char         buf[1024], *line, *p;
    rule_t      *nr;
    size_t       n, cap, lineno;
    char         ndef_dlq[MQ_NAME_MAX + 1];
    limits_t     ndef;
    section_t    sec;
    const char  *why;

    memset(&ndef, 0, sizeof(ndef));
    ndef_dlq[0] = '\0';
    memset(&sec, 0, sizeof(sec));
    sec.ndef = &ndef;
    sec.ndef_dlq = ndef_dlq;
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

    lineno = 0;
    why = NULL;

    if (option_handler != NULL) {
        /* a new file: the handler forgets the keys of the last one */
        option_handler(NULL, NULL, 0);
    }

    while (why == NULL && fgets(buf, sizeof(buf), f) != NULL) {
        lineno++;

        if (strchr(buf, '\n') == NULL && !feof(f)) {
            /* never parse the tail of a long line as a line of its own */
            why = "line too long";
            break;
        }

        p = strchr(buf, '#');
        if (p != NULL) {
            *p = '\0';
        }

        line = trim(buf);
        if (*line == '\0') {
            continue;
        }

        why = (*line == '[') ? section(line, &nr, &n, &cap, &sec)
                             : key_value(line, lineno, &sec);
    }

    if (why == NULL && ferror(f)) {
        /* a read error is not the end of the file */
        log_error("config", "%s: read error", path);
        fclose(f);
        free(nr);
        return -1;
    }

    fclose(f);

    if (why != NULL) {
        log_error("config", "%s:%zu: %s; configuration not changed", path,
                  lineno, why);
        free(nr);
        return -1;
    }

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
