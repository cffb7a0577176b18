// links: memqd/config.c memqd/log.c
/*
 * test_config.c: the --config file: config_parse_size(), and config_load()
 * of files written here ([defaults], [queue NAME], [queue prefix*], the
 * longest match, comments and spacing), every kind of bad line (the
 * previous configuration must stay in force), config_load(NULL) and
 * config_generation.
 *
 * config.c keeps its rules in static state, so every test starts from
 * config_load(NULL) and compares config_generation by difference.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "mq_name.h"
#include "log.h"


#define LOG_MAX  4096
#define GIB      (1024ull * 1024 * 1024)


typedef struct {
    char  dir[64];                  /* mkdtemp() path */
    char  path[128];                /* the config file in dir */
    char  log[LOG_MAX];             /* what the last load logged */
} fx_t;


static int
setup(void **state)
{
    fx_t  *f;

    f = calloc(1, sizeof(fx_t));
    if (f == NULL) {
        return -1;
    }

    strcpy(f->dir, "/tmp/memq-unit-config-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }

    snprintf(f->path, sizeof(f->path), "%s/memqd.conf", f->dir);

    if (config_load(NULL) != 0) {
        rmdir(f->dir);
        free(f);
        return -1;
    }

    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    fx_t  *f;

    f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}


static void
write_conf(fx_t *f, const char *text)
{
    FILE  *fp;

    fp = fopen(f->path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);
}


/* config_load(path) with stderr captured into f->log. */
static int
load(fx_t *f, const char *path)
{
    int       rc, saved;
    FILE     *tmp;
    ssize_t   n;

    tmp = tmpfile();
    assert_non_null(tmp);

    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(saved != -1);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) != -1);

    rc = config_load(path);

    dup2(saved, STDERR_FILENO);
    close(saved);

    n = pread(fileno(tmp), f->log, LOG_MAX - 1, 0);
    f->log[n > 0 ? n : 0] = '\0';
    fclose(tmp);

    return rc;
}


static int
load_text(fx_t *f, const char *text)
{
    write_conf(f, text);
    return load(f, f->path);
}


static limits_t
limits(const char *name)
{
    limits_t  lim;

    memset(&lim, 0x5a, sizeof(lim));
    config_limits(name, strlen(name), &lim);
    return lim;
}


static void
expect_limits(const char *name, uint64_t items, uint64_t bytes,
    uint64_t age, int drop_oldest)
{
    limits_t  lim;

    lim = limits(name);

    if (lim.max_items != items || lim.max_bytes != bytes
        || lim.max_age != age || lim.drop_oldest != drop_oldest)
    {
        print_error("%s: got items %llu bytes %llu age %llu drop %d, "
                    "want %llu %llu %llu %d\n", name,
                    (unsigned long long) lim.max_items,
                    (unsigned long long) lim.max_bytes,
                    (unsigned long long) lim.max_age, lim.drop_oldest,
                    (unsigned long long) items, (unsigned long long) bytes,
                    (unsigned long long) age, drop_oldest);
        fail();
    }
}


/* ---- config_parse_size ---- */

static void
test_parse_size_valid(void **state)
{
    size_t     i;
    uint64_t   v;
    struct {
        const char  *s;
        uint64_t     v;
    } cases[] = {
        { "0", 0 },
        { "1", 1 },
        { "007", 7 },
        { "123456", 123456 },
        { "1k", 1024 },
        { "1K", 1024 },
        { "10k", 10240 },
        { "0k", 0 },
        { "1m", 1048576 },
        { "1M", 1048576 },
        { "64m", 64ull * 1048576 },
        { "1g", GIB },
        { "1G", GIB },
        { "0g", 0 },
        { "1024g", 1024 * GIB },
        { "18446744073709551615", UINT64_MAX },
        { "18014398509481983k", UINT64_MAX - 1023 },
        { "17592186044415m", UINT64_MAX - 1048575 },
        { "17179869183g", 17179869183ull * GIB },
    };

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        v = 12345;
        if (config_parse_size(cases[i].s, &v) != 0 || v != cases[i].v) {
            print_error("\"%s\": got %llu\n", cases[i].s,
                        (unsigned long long) v);
            fail();
        }
    }
}


static void
test_parse_size_invalid(void **state)
{
    size_t       i;
    uint64_t     v;
    const char  *bad[] = {
        "", "k", "m", "g", "-1", "-0", "+1", " 1", "1 ", "1 k", "1x", "1kk",
        "1km", "1kb", "1t", "1.5k", "1,000", "0x10", "k1", "1k ", "\t1",
        "18446744073709551616",                 /* UINT64_MAX + 1 */
        "99999999999999999999999",
        "18014398509481984k",                   /* 2^64 */
        "17592186044416m",                      /* 2^64 */
        "17179869184g",                         /* 2^64 */
        "99999999999g",
    };

    (void) state;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 12345;
        if (config_parse_size(bad[i], &v) != -1) {
            print_error("accepted \"%s\" as %llu\n", bad[i],
                        (unsigned long long) v);
            fail();
        }
        assert_int_equal(v, 12345);
    }
}


/* ---- config_load ---- */

static void
test_config_no_file_is_unlimited(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f, "[defaults]\nmax_items = 5\n"
                                  "overflow = drop_oldest\n"
                                  "[queue q]\nmax_bytes = 1k\n"), 0);
    expect_limits("q", 5, 1024, 0, 1);

    assert_int_equal(load(f, NULL), 0);
    expect_limits("q", 0, 0, 0, 0);
    expect_limits("other", 0, 0, 0, 0);
}


static void
test_config_empty_file(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f, ""), 0);
    expect_limits("q", 0, 0, 0, 0);

    assert_int_equal(load_text(f, "\n\n# nothing\n   \n"), 0);
    expect_limits("q", 0, 0, 0, 0);
}


static void
test_config_defaults(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[defaults]\n"
        "max_items = 1000000\n"
        "max_bytes = 1g\n"
        "max_age = 3600\n"
        "overflow = drop_oldest\n"), 0);

    expect_limits("jobs", 1000000, GIB, 3600, 1);
    expect_limits("a", 1000000, GIB, 3600, 1);
    assert_null(strstr(f->log, "[error]"));
}


static void
test_config_exact_queue(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[defaults]\n"
        "max_items = 100\n"
        "[queue jobs]\n"
        "max_items = 5\n"
        "max_age = 60\n"), 0);

    expect_limits("jobs", 5, 0, 60, 0);
    expect_limits("job", 100, 0, 0, 0);
    expect_limits("jobs2", 100, 0, 0, 0);
    expect_limits("Jobs", 100, 0, 0, 0);
    expect_limits("xjobs", 100, 0, 0, 0);
}


static void
test_config_prefix_queue(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[queue jobs*]\n"
        "max_bytes = 2m\n"), 0);

    expect_limits("jobs", 0, 2 * 1048576, 0, 0);
    expect_limits("jobs.mail", 0, 2 * 1048576, 0, 0);
    expect_limits("jobsx", 0, 2 * 1048576, 0, 0);
    expect_limits("job", 0, 0, 0, 0);
    expect_limits("xjobs", 0, 0, 0, 0);
    expect_limits("Jobs.mail", 0, 0, 0, 0);
}


static void
test_config_longest_match_wins(void **state)
{
    fx_t  *f = *state;

    /* written in no particular order */
    assert_int_equal(load_text(f,
        "[queue jobs.mail.*]\n"
        "max_items = 4\n"
        "[queue j*]\n"
        "max_items = 1\n"
        "[queue jobs.mail.urgent]\n"
        "max_items = 5\n"
        "[queue jobs*]\n"
        "max_items = 2\n"
        "[queue jobs.*]\n"
        "max_items = 3\n"), 0);

    expect_limits("j", 1, 0, 0, 0);
    expect_limits("jx", 1, 0, 0, 0);
    expect_limits("jobs", 2, 0, 0, 0);
    expect_limits("jobsmail", 2, 0, 0, 0);
    expect_limits("jobs.", 3, 0, 0, 0);
    expect_limits("jobs.mail", 3, 0, 0, 0);
    expect_limits("jobs.mail.x", 4, 0, 0, 0);
    expect_limits("jobs.mail.urgent", 5, 0, 0, 0);
    expect_limits("jobs.mail.urgent2", 4, 0, 0, 0);
    expect_limits("other", 0, 0, 0, 0);
}


static void
test_config_exact_beats_prefix_of_same_length(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[queue jobs]\nmax_items = 1\n"
        "[queue jobs*]\nmax_items = 2\n"), 0);
    expect_limits("jobs", 1, 0, 0, 0);
    expect_limits("jobs1", 2, 0, 0, 0);

    assert_int_equal(load_text(f,
        "[queue jobs*]\nmax_items = 2\n"
        "[queue jobs]\nmax_items = 1\n"), 0);
    expect_limits("jobs", 1, 0, 0, 0);
    expect_limits("jobs1", 2, 0, 0, 0);
}


/* A rule overrides only what it sets; the rest comes from [defaults],
 * wherever that section is in the file. */
static void
test_config_rule_inherits_defaults(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[queue jobs*]\n"
        "max_bytes = 1k\n"
        "[defaults]\n"
        "max_items = 10\n"
        "max_bytes = 1m\n"
        "max_age = 7\n"
        "overflow = drop_oldest\n"
        "[queue strict]\n"
        "overflow = reject\n"
        "max_items = 0\n"), 0);

    expect_limits("jobs.a", 10, 1024, 7, 1);
    expect_limits("strict", 0, 1048576, 7, 0);
    expect_limits("other", 10, 1048576, 7, 1);
}


static void
test_config_comments_blanks_spacing(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "# memqd limits\n"
        "\n"
        "   \n"
        "\t\n"
        "  # indented comment\n"
        "[defaults]   # trailing comment\n"
        "max_items=1\n"
        "max_bytes    =    2k   \n"
        "\tmax_age\t=\t3\t\n"
        "  overflow = drop_oldest# no space before it\n"
        "#max_items = 999\n"
        "\n"
        "  [ queue \t a* ]  \n"
        "max_items = 4 # four\n"
        "[queue\tb]\r\n"
        "max_items = 5\r\n"
        "\r\n"
        "[ defaults ]\n"
        "max_age = 6"), 0);                /* no final newline */

    expect_limits("x", 1, 2048, 6, 1);
    expect_limits("ab", 4, 2048, 6, 1);
    expect_limits("b", 5, 2048, 6, 1);
}


static void
test_config_overflow_values(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[defaults]\noverflow = drop_oldest\n"
        "[queue r]\noverflow = reject\n"), 0);
    expect_limits("r", 0, 0, 0, 0);
    expect_limits("d", 0, 0, 0, 1);

    /* later lines of a section win */
    assert_int_equal(load_text(f,
        "[defaults]\noverflow = drop_oldest\noverflow = reject\n"
        "max_items = 1\nmax_items = 2\n"), 0);
    expect_limits("d", 2, 0, 0, 0);
}


static void
test_config_bad_lines_keep_previous(void **state)
{
    fx_t          *f = *state;
    size_t         i;
    uint64_t       gen;
    char           text[1024], longname[300];
    const char    *bad[] = {
        "[defaults]\nmax_itemz = 1\n",           /* unknown key */
        "[defaults]\nMAX_ITEMS = 1\n",
        "[defaults]\nmax_items = abc\n",         /* bad values */
        "[defaults]\nmax_items = -1\n",
        "[defaults]\nmax_items =\n",
        "[defaults]\nmax_items = 1 2\n",
        "[defaults]\nmax_bytes = 1x\n",
        "[defaults]\nmax_bytes = 99999999999g\n",
        "[defaults]\nmax_age = 1.5\n",
        "[defaults]\noverflow = maybe\n",
        "[defaults]\noverflow =\n",
        "[defaults]\noverflow = Reject\n",
        "[defaults]\n= 5\n",
        "[defaults]\nmax_items 5\n",             /* no '=' */
        "[defaults]\njust words\n",
        "max_items = 1\n",                       /* no section yet */
        "max_items = 1\n[defaults]\n",
        "[queue jobs\nmax_items = 1\n",          /* unterminated '[' */
        "[defaults\nmax_items = 1\n",
        "[queue jobs]]\nmax_items = 1\n",
        "[queue jobs] x\nmax_items = 1\n",
        "[queue]\nmax_items = 1\n",              /* no name */
        "[queue ]\nmax_items = 1\n",
        "[queuejobs]\nmax_items = 1\n",
        "[queues jobs]\nmax_items = 1\n",
        "[other]\nmax_items = 1\n",              /* unknown section */
        "[]\nmax_items = 1\n",
        "[defaults]\nmax_items = 1\n[queue a]\nmax_bytes = 1k\nbad\n",
        longname,
    };

    memset(text, 'n', 256);
    snprintf(longname, sizeof(longname), "[queue %.*s]\nmax_items = 1\n",
             256, text);

    assert_int_equal(load_text(f,
        "[defaults]\nmax_items = 7\n"
        "[queue keep*]\nmax_bytes = 3k\noverflow = drop_oldest\n"), 0);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gen = config_generation;

        if (load_text(f, bad[i]) != -1) {
            print_error("accepted:\n%s\n", bad[i]);
            fail();
        }

        assert_int_equal(config_generation, gen);
        expect_limits("keep.me", 7, 3072, 0, 1);
        expect_limits("x", 7, 0, 0, 0);
        expect_limits("a", 7, 0, 0, 0);
        assert_non_null(strstr(f->log, "[error] config: "));
        assert_non_null(strstr(f->log, "configuration not changed"));
    }
}


static void
test_config_error_names_file_and_line(void **state)
{
    fx_t  *f = *state;
    char   want[256];

    assert_int_equal(load_text(f,
        "# one\n"
        "[defaults]\n"
        "\n"
        "max_items = 1\n"
        "max_items = one\n"), -1);

    snprintf(want, sizeof(want), "[error] config: %s:5: bad line", f->path);
    assert_non_null(strstr(f->log, want));
}


static void
test_config_missing_file_keeps_previous(void **state)
{
    fx_t      *f = *state;
    char       path[192];
    uint64_t   gen;

    assert_int_equal(load_text(f, "[defaults]\nmax_items = 9\n"), 0);
    gen = config_generation;

    snprintf(path, sizeof(path), "%s/missing.conf", f->dir);
    assert_int_equal(load(f, path), -1);
    assert_int_equal(config_generation, gen);
    expect_limits("q", 9, 0, 0, 0);
    assert_non_null(strstr(f->log, "missing.conf"));
}


/* A new file replaces the old rules entirely; it does not merge. */
static void
test_config_reload_replaces_rules(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f,
        "[defaults]\nmax_age = 5\n"
        "[queue jobs]\nmax_items = 1\n"), 0);
    expect_limits("jobs", 1, 0, 5, 0);

    assert_int_equal(load_text(f, "[queue mail*]\nmax_items = 2\n"), 0);
    expect_limits("jobs", 0, 0, 0, 0);
    expect_limits("mail.x", 2, 0, 0, 0);
}


static void
test_config_generation(void **state)
{
    fx_t      *f = *state;
    uint64_t   gen;

    gen = config_generation;

    assert_int_equal(load(f, NULL), 0);
    assert_int_equal(config_generation, gen + 1);

    assert_int_equal(load_text(f, "[defaults]\nmax_items = 1\n"), 0);
    assert_int_equal(config_generation, gen + 2);

    assert_int_equal(load_text(f, "[defaults]\nmax_items = x\n"), -1);
    assert_int_equal(config_generation, gen + 2);

    assert_int_equal(load(f, "/nonexistent/memqd.conf"), -1);
    assert_int_equal(config_generation, gen + 2);

    /* the same file again is still a new generation */
    assert_int_equal(load_text(f, "[defaults]\nmax_items = 1\n"), 0);
    assert_int_equal(config_generation, gen + 3);
}


/* Rule lookups take a length: the name need not be NUL-terminated. */
static void
test_config_limits_uses_length(void **state)
{
    fx_t      *f = *state;
    limits_t   lim;

    assert_int_equal(load_text(f,
        "[queue jobs]\nmax_items = 1\n"
        "[queue jo*]\nmax_items = 2\n"), 0);

    config_limits("jobsXYZ", 4, &lim);
    assert_int_equal(lim.max_items, 1);

    config_limits("jobsXYZ", 3, &lim);
    assert_int_equal(lim.max_items, 2);

    config_limits("jobsXYZ", 1, &lim);
    assert_int_equal(lim.max_items, 0);
}


static void
test_config_directory_is_an_error(void **state)
{
    fx_t  *f = *state;

    assert_int_equal(load_text(f, "[defaults]\nmax_items = 9\n"), 0);
    assert_int_equal(load(f, f->dir), -1);
    expect_limits("q", 9, 0, 0, 0);
}


static void
test_config_long_comment_line(void **state)
{
    fx_t  *f = *state;
    char   text[2048];
    size_t n;

    strcpy(text, "[defaults]\n# ");
    n = strlen(text);
    memset(text + n, 'c', 1021);
    strcpy(text + n + 1021, "max_items = 1\n");

    /* too long: rejected whole, never half-parsed as a setting */
    assert_int_equal(load_text(f, text), -1);
    expect_limits("q", 0, 0, 0, 0);
}


/* max_deliveries and dead_letter: per rule, defaults, the <q>.dlq name */
static void
test_config_dead_letters(void **state)
{
    fx_t    *f = *state;
    char     name[MQ_NAME_MAX + 1], longq[MQ_NAME_MAX + 1];
    size_t   n;

    assert_int_equal(load_text(f,
        "[defaults]\n"
        "max_deliveries = 9\n"
        "[queue jobs*]\n"
        "max_deliveries = 3\n"
        "dead_letter = jobs.failed\n"
        "[queue mail]\n"
        "max_items = 5\n"), 0);

    assert_int_equal(limits("jobs.eu").max_deliveries, 3);
    assert_int_equal(limits("mail").max_deliveries, 9);
    assert_int_equal(limits("other").max_deliveries, 9);

    n = config_dead_letter("jobs.eu", 7, name);
    assert_int_equal(n, 11);
    assert_string_equal(name, "jobs.failed");
    n = config_dead_letter("mail", 4, name);
    assert_int_equal(n, 8);
    assert_string_equal(name, "mail.dlq");

    /* a name with ".dlq" past 250 bytes has no dead-letter queue */
    memset(longq, 'a', MQ_NAME_MAX);
    assert_int_equal(config_dead_letter(longq, MQ_NAME_MAX - 4, name),
                     MQ_NAME_MAX);
    assert_int_equal(config_dead_letter(longq, MQ_NAME_MAX - 3, name), 0);

    /* a dead_letter that is no queue name is a bad line */
    assert_int_equal(load_text(f,
        "[queue x]\n"
        "dead_letter = ../etc\n"), -1);
    assert_int_equal(load_text(f,
        "[queue x]\n"
        "max_deliveries = -1\n"), -1);
    assert_int_equal(limits("jobs.eu").max_deliveries, 3);

    /* a default dead_letter applies where no rule names one */
    assert_int_equal(load_text(f,
        "[defaults]\n"
        "dead_letter = all.dead\n"), 0);
    n = config_dead_letter("mail", 4, name);
    assert_string_equal(name, "all.dead");
    assert_int_equal(n, 8);
    assert_int_equal(limits("mail").max_deliveries, 0);
}


#define T(name)  cmocka_unit_test_setup_teardown(name, setup, teardown)

int
main(void)
{
    const struct CMUnitTest  tests[] = {
        T(test_config_directory_is_an_error),
        T(test_config_long_comment_line),
        cmocka_unit_test(test_parse_size_valid),
        cmocka_unit_test(test_parse_size_invalid),
        T(test_config_no_file_is_unlimited),
        T(test_config_empty_file),
        T(test_config_defaults),
        T(test_config_exact_queue),
        T(test_config_prefix_queue),
        T(test_config_longest_match_wins),
        T(test_config_exact_beats_prefix_of_same_length),
        T(test_config_rule_inherits_defaults),
        T(test_config_comments_blanks_spacing),
        T(test_config_overflow_values),
        T(test_config_bad_lines_keep_previous),
        T(test_config_error_names_file_and_line),
        T(test_config_missing_file_keeps_previous),
        T(test_config_reload_replaces_rules),
        T(test_config_generation),
        T(test_config_limits_uses_length),
        T(test_config_dead_letters),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
