/*
 * options.h: memqd's options, read from one table (main.c) three ways:
 * the command line (getopt_long), `--help` (one line an option, with its
 * default) and the --config file's [memqd] section, where an option is a
 * key spelled like its long name with '_' or '-' ("data_dir = /x").
 *
 * The command line wins, then the config file, then the table's default:
 * an option is set from one of them only (on the command line the last of
 * several values wins; a repeatable option collects every value of the
 * place that gives it, and takes the default when none does).
 */

#ifndef MEMQD_OPTIONS_H
#define MEMQD_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

#define OPT_FLAG     0x1   /* takes no argument; in the file a boolean */
#define OPT_CMDLINE  0x2   /* command line only (an action, or --config) */
#define OPT_REPEAT   0x4   /* may be given several times */
#define OPT_EXIT     0x8   /* set() printed what was asked: exit 0 */

typedef struct opt_s  opt_t;

struct opt_s {
    const char   *name;     /* long name, without "--" */
    char          letter;   /* short option, or 0 */
    const char   *arg;      /* argument's name for --help, NULL for flags */
    const char   *dflt;     /* default: given to set() when nothing sets
                               the option, and shown by --help; NULL: none */
    const char   *help;     /* a few words */
    unsigned      flags;
    int           code;     /* free for set() */

    /* Applies one value (NULL for a flag given on the command line; "no"
     * / "yes" style for a flag from the file is turned into NULL or
     * "off").  Returns NULL, or why the value is refused ("" when set()
     * printed the reason itself). */
    const char  *(*set)(const opt_t *o, const char *value);
};

/* Reads argv with the table (n entries, at most OPTIONS_MAX).  Returns 0,
 * 1 when an OPT_EXIT option ran (exit 0), or 2 after printing why the
 * command line is refused. */
#define OPTIONS_MAX  64
int options_parse(const opt_t *table, size_t n, int argc, char **argv);

/* The --config handler for [memqd] lines (config_set_option_handler). */
const char *options_config(const char *key, const char *value, size_t line);

/* The [memqd] handler of a reload (SIGHUP): refuses unknown keys, applies
 * nothing (options take effect at start). */
const char *options_reload(const char *key, const char *value, size_t line);

/* Gives every option nothing has set its default.  Call once, after the
 * command line and the config file. */
void options_defaults(void);

/* The `--help` text. */
void options_usage(FILE *f);

#endif /* MEMQD_OPTIONS_H */
