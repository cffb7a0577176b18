/*
 * options.c: the command line, `--help` and the [memqd] section of the
 * --config file, all read from main.c's option table (see options.h).
 */

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "options.h"

/* where an option's value came from */
#define FROM_NONE     0
#define FROM_ARGV     1
#define FROM_FILE     2

/* a value copied out of the file's line buffer; kept for the process's
 * life (set() may keep the pointer), and reachable from `kept` */
typedef struct kept_s  kept_t;

struct kept_s {
    kept_t  *next;      /* the value kept before */
    char     s[];       /* the value, NUL-terminated */
};

static const opt_t    *opts;                    /* (ref) main.c's table */
static size_t          nopts;
static unsigned char   from[OPTIONS_MAX];        /* FROM_* by option */
static size_t          file_line[OPTIONS_MAX];   /* for "set twice" */
static size_t          reload_line[OPTIONS_MAX]; /* the same, on SIGHUP */
static kept_t         *kept;


static const char *
short_options(void)
{
    size_t       i, k;
    static char  s[OPTIONS_MAX * 2 + 2];

    /* leading ':' is not wanted: getopt prints its own messages */
    k = 0;
    for (i = 0; i < nopts; i++) {
        if (opts[i].letter) {
            s[k++] = opts[i].letter;
            if (!(opts[i].flags & OPT_FLAG)) {
                s[k++] = ':';
            }
        }
    }
    s[k] = '\0';
    return s;
}


/* One value from argv; -1 after printing why it is refused. */
static int
apply_argv(size_t i, const char *value)
{
    const opt_t  *o;
    const char   *why;

    o = &opts[i];
    why = o->set(o, value);
    if (why != NULL) {
        fprintf(stderr, "memqd: bad --%s \"%s\"%s%s\n", o->name,
                value ? value : "", *why ? ": " : "", why);
        return -1;
    }

    from[i] = FROM_ARGV;
    return 0;
}


int
options_parse(const opt_t *table, size_t n, int argc, char **argv)
{
    int            c;
    size_t         i;
    struct option  lo[OPTIONS_MAX + 1];

    if (n > OPTIONS_MAX) {
        abort();
    }

    opts = table;
    nopts = n;

    for (i = 0; i < n; i++) {
        lo[i].name = table[i].name;
        lo[i].has_arg = (table[i].flags & OPT_FLAG) ? no_argument
                                                    : required_argument;
        lo[i].flag = NULL;
        lo[i].val = 256 + (int) i;
    }
    memset(&lo[n], 0, sizeof(lo[n]));

    while ((c = getopt_long(argc, argv, short_options(), lo, NULL)) != -1) {
        if (c == '?' || c == ':') {
            fprintf(stderr, "memqd: see memqd --help\n");
            return 2;
        }

        if (c >= 256) {
            i = (size_t) (c - 256);
        } else {
            for (i = 0; i < n && table[i].letter != c; i++) {
                /* void */
            }
        }

        if (i >= n) {
            return 2;
        }

        /* given twice: the last one wins, as wrappers that append an
         * option expect */
        if (apply_argv(i, optarg) != 0) {
            return 2;
        }

        if (table[i].flags & OPT_EXIT) {
            return 1;
        }
    }

    if (optind != argc) {
        fprintf(stderr, "memqd: unexpected argument \"%s\" (see memqd "
                "--help)\n", argv[optind]);
        return 2;
    }

    return 0;
}


/* "data_dir" and "data-dir" both name --data-dir. */
static int
same_name(const char *key, const char *name)
{
    for ( ; *key && *name; key++, name++) {
        if (*key != *name && !(*key == '_' && *name == '-')) {
            return 0;
        }
    }

    return *key == *name;
}


/* A flag's value in the file: NULL (on), "off", or bad. */
static int
file_bool(const char *v, const char **out)
{
    static const char  *on[] = { "yes", "true", "on", "1" };
    static const char  *off[] = { "no", "false", "off", "0" };
    size_t              i;

    for (i = 0; i < 4; i++) {
        if (strcmp(v, on[i]) == 0) {
            *out = NULL;
            return 0;
        }
        if (strcmp(v, off[i]) == 0) {
            *out = "off";
            return 0;
        }
    }

    return -1;
}


/* The option a [memqd] key names: NULL and its index, or why none. */
static const char *
find_key(const char *key, size_t *idx)
{
    size_t       i;
    static char  msg[256];

    for (i = 0; i < nopts && !same_name(key, opts[i].name); i++) {
        /* void */
    }

    if (i == nopts) {
        snprintf(msg, sizeof(msg), "unknown key \"%.64s\" in [memqd] "
                 "(the options of memqd --help are its keys)", key);
        return msg;
    }

    if (opts[i].flags & OPT_CMDLINE) {
        snprintf(msg, sizeof(msg), "%s is a command-line option only",
                 opts[i].name);
        return msg;
    }

    *idx = i;
    return NULL;
}


const char *
options_config(const char *key, const char *value, size_t line)
{
    size_t        i, len;
    kept_t       *k;
    const char   *why;
    const opt_t  *o;
    static char   msg[512];

    if (key == NULL) {
        /* read once, at start */
        return NULL;
    }

    why = find_key(key, &i);
    if (why != NULL) {
        return why;
    }

    o = &opts[i];

    if (from[i] == FROM_ARGV) {
        /* the command line wins */
        return NULL;
    }

    if (from[i] == FROM_FILE && !(o->flags & OPT_REPEAT)) {
        snprintf(msg, sizeof(msg), "%s set twice (first on line %zu)",
                 key, file_line[i]);
        return msg;
    }

    if (o->flags & OPT_FLAG) {
        if (file_bool(value, &value) != 0) {
            snprintf(msg, sizeof(msg), "bad %s \"%.64s\": expected yes or "
                     "no", key, value);
            return msg;
        }

    } else if (value != NULL) {
        len = strlen(value);
        k = malloc(sizeof(kept_t) + len + 1);
        if (k == NULL) {
            return "out of memory";
        }
        memcpy(k->s, value, len + 1);
        k->next = kept;
        kept = k;
        value = k->s;
    }

    why = o->set(o, value);
    if (why != NULL) {
        snprintf(msg, sizeof(msg), "bad %s \"%.64s\"%s%s", key,
                 value ? value : "yes", *why ? ": " : "", why);
        return msg;
    }

    from[i] = FROM_FILE;
    file_line[i] = line;
    return NULL;
}


const char *
options_reload(const char *key, const char *value, size_t line)
{
    size_t        i;
    const char   *why;
    static char   msg[256];

    if (key == NULL) {
        memset(reload_line, 0, sizeof(reload_line));
        return NULL;
    }

    /* names are checked as at start; values take effect at the next */
    why = find_key(key, &i);
    if (why != NULL) {
        return why;
    }

    if (reload_line[i] != 0 && !(opts[i].flags & OPT_REPEAT)) {
        snprintf(msg, sizeof(msg), "%s set twice (first on line %zu)", key,
                 reload_line[i]);
        return msg;
    }

    if (reload_line[i] == 0) {
        log_info("config", "[memqd] %s: applies at the next start", key);
    }

    reload_line[i] = line;
    return NULL;
}


void
options_defaults(void)
{
    size_t  i;

    for (i = 0; i < nopts; i++) {
        if (from[i] == FROM_NONE && opts[i].dflt != NULL) {
            if (opts[i].set(&opts[i], opts[i].dflt) != NULL) {
                /* a default the table's own setter refuses */
                abort();
            }
        }
    }
}


void
options_usage(FILE *f)
{
    int            w, len;
    size_t         i;
    const opt_t   *o;
    char           head[80];

    w = 0;
    for (i = 0; i < nopts; i++) {
        o = &opts[i];
        len = snprintf(head, sizeof(head), "--%s%s%s", o->name,
                       o->arg ? " " : "", o->arg ? o->arg : "");
        w = len > w ? len : w;
    }

    fprintf(f,
        "usage: memqd [OPTION]...\n"
        "memqd, the memq queue node.  Each option but those marked "
        "(command line)\ncan also be a key of the --config file's [memqd] "
        "section, as in\n\"data_dir = /var/lib/memq\"; the command line "
        "wins over the file.\n\n");

    for (i = 0; i < nopts; i++) {
        o = &opts[i];
        snprintf(head, sizeof(head), "--%s%s%s", o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");

        fprintf(f, "  %c%c%c %-*s  %s", o->letter ? '-' : ' ',
                o->letter ? o->letter : ' ', o->letter ? ',' : ' ', w, head,
                o->help);

        if (!(o->flags & OPT_EXIT)) {
            fprintf(f, " (default: %s)", o->dflt ? o->dflt : "none");
        }
        fputs((o->flags & OPT_CMDLINE) ? " (command line)\n" : "\n", f);
    }
}
