/*
 * test_proto.c: the memcache text protocol: line framing, every request
 * shape memqd accepts and the ways each can be wrong, get-key options, and
 * the reply parser the gateway and bench use.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "mq_proto.h"


#define FMT   "bad command line format"
#define NAME  "bad queue name"
#define KEYS  "too many keys"
#define OPT   "bad option"
#define BADID "bad id"
#define IDS   "too many ids"
#define LEASE "bad lease time"
#define BAD   "bad reply"
#define BIG   "value too large"
#define ANY   "*"                   /* key: not checked */

#define I64_MIN  (-9223372036854775807LL - 1)


/* ---- find_line ---- */

typedef struct {
    const char  *buf;
    int          rc;
    size_t       line_len;
    size_t       consumed;
} line_case_t;


static void
test_find_line_table(void **state)
{
    int     rc;
    size_t  i, ll, used;

    static const line_case_t  cases[] = {
        { "get q\r\n", MQ_OK, 5, 7 },
        { "get q\n", MQ_OK, 5, 6 },
        { "\r\n", MQ_OK, 0, 2 },
        { "\n", MQ_OK, 0, 1 },
        { "a\r\nb\r\n", MQ_OK, 1, 3 },
        { "a\nb\r\n", MQ_OK, 1, 2 },
        { "a\rb\n", MQ_OK, 3, 4 },
        { "\r\r\n", MQ_OK, 1, 3 },
        { "get q", MQ_AGAIN, 0, 0 },
        { "get q\r", MQ_AGAIN, 0, 0 },
        { "", MQ_AGAIN, 0, 0 },
        { "\r", MQ_AGAIN, 0, 0 },
    };

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ll = 12345;
        used = 12345;
        rc = mq_proto_find_line(cases[i].buf, strlen(cases[i].buf), &ll,
                                &used);

        if (rc != cases[i].rc) {
            fail_msg("case %zu: rc %d, expected %d", i, rc, cases[i].rc);
        }

        if (rc == MQ_OK) {
            assert_int_equal(ll, cases[i].line_len);
            assert_int_equal(used, cases[i].consumed);
        }
    }
}


static void
test_find_line_limits(void **state)
{
    size_t  ll, used;
    char    buf[5000];

    (void) state;

    memset(buf, 'x', sizeof(buf));

    /* exactly MQ_LINE_MAX bytes: the longest legal line */
    memcpy(buf + MQ_LINE_MAX, "\r\n", 2);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 2, &ll, &used),
                     MQ_OK);
    assert_int_equal(ll, MQ_LINE_MAX);
    assert_int_equal(used, MQ_LINE_MAX + 2);

    /* and with more bytes behind it */
    assert_int_equal(mq_proto_find_line(buf, sizeof(buf), &ll, &used),
                     MQ_OK);
    assert_int_equal(ll, MQ_LINE_MAX);

    /* the same line still waiting for its '\n', or for both bytes */
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 1, &ll, &used),
                     MQ_AGAIN);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX, &ll, &used),
                     MQ_AGAIN);

    memcpy(buf + MQ_LINE_MAX, "\n", 1);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 1, &ll, &used),
                     MQ_OK);
    assert_int_equal(ll, MQ_LINE_MAX);
    assert_int_equal(used, MQ_LINE_MAX + 1);

    /* MQ_LINE_MAX + 1 bytes: too long, whatever the ending */
    memset(buf, 'x', sizeof(buf));
    memcpy(buf + MQ_LINE_MAX + 1, "\r\n", 2);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 3, &ll, &used),
                     MQ_ERROR);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 2, &ll, &used),
                     MQ_ERROR);

    memset(buf, 'x', sizeof(buf));
    buf[MQ_LINE_MAX + 1] = '\n';
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 2, &ll, &used),
                     MQ_ERROR);

    /* no line end at all */
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX - 1, &ll, &used),
                     MQ_AGAIN);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX, &ll, &used),
                     MQ_AGAIN);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 1, &ll, &used),
                     MQ_ERROR);
    assert_int_equal(mq_proto_find_line(buf, MQ_LINE_MAX + 2, &ll, &used),
                     MQ_ERROR);
    assert_int_equal(mq_proto_find_line(buf, sizeof(buf), &ll, &used),
                     MQ_ERROR);

    /* a '\n' far past the limit does not help */
    buf[3000] = '\n';
    assert_int_equal(mq_proto_find_line(buf, sizeof(buf), &ll, &used),
                     MQ_ERROR);

    /* a short line first is found whatever follows */
    memcpy(buf, "get q\r\n", 7);
    assert_int_equal(mq_proto_find_line(buf, sizeof(buf), &ll, &used),
                     MQ_OK);
    assert_int_equal(ll, 5);
    assert_int_equal(used, 7);
}


/* ---- requests ---- */

typedef struct {
    const char  *line;
    int          rc;
    mq_cmd_e     cmd;
    const char  *err;       /* MQ_ERROR: the reason */
    const char  *key;       /* NULL: key must be NULL; ANY: not checked */
    unsigned     has_data;
    unsigned     noreply;
    uint32_t     flags;
    int64_t      exptime;
    uint64_t     bytes;
    const char  *rest;      /* NULL: rest must be NULL */
} req_case_t;


static const req_case_t  req_cases[] = {
    /* set */
    { "set q 0 0 5", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 0, 0, 5, NULL },
    { "set q 1 2 3 noreply", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 1, 1, 2, 3,
      NULL },
    { "set  q   1  2  3  ", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, 2, 3,
      NULL },
    { "   set q 1 2 3", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, 2, 3, NULL },
    { "set q 1 2 3   noreply  ", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 1, 1, 2,
      3, NULL },
    { "set a.b:c-d_e 7 0 0", MQ_OK, MQ_CMD_SET, NULL, "a.b:c-d_e", 1, 0, 7,
      0, 0, NULL },
    { "set q 4294967295 0 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0,
      4294967295u, 0, 1, NULL },
    { "set q 00001 0 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 1 -100 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, -100, 1,
      NULL },
    { "set q 1 2592000 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, 2592000,
      1, NULL },
    { "set q 1 -0 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 1 9223372036854775807 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0,
      1, INT64_MAX, 1, NULL },
    { "set q 1 -9223372036854775808 1", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0,
      1, I64_MIN, 1, NULL },
    /* the largest byte count believed: 2^31 - 1 */
    { "set q 0 0 2147483647", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 0, 0, 0,
      2147483647, NULL },
    { "set q 0 0 0002147483647 noreply", MQ_OK, MQ_CMD_SET, NULL, "q", 1, 1,
      0, 0, 2147483647, NULL },

    /* set: bytes bad or token count wrong: framing is lost */
    { "set q 0 0 2147483648", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set q 0 0 4294967295", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set q 0 0 4294967296000", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0,
      0, NULL },
    { "set q 0 0 18446744073709551614", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0,
      0, 0, 0, 0, NULL },
    { "set q 0 0 18446744073709551615", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0,
      0, 0, 0, 0, NULL },
    { "set q 0 0 18446744073709551615 noreply", MQ_ERROR, MQ_CMD_SET, FMT,
      ANY, 0, 0, 0, 0, 0, NULL },
    /* a count too large loses framing whatever else is wrong */
    { "set q x 0 2147483648", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set a/b 0 0 4294967296000", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0,
      0, 0, NULL },
    { "set q 0 0 2147483648 noreply extra", MQ_ERROR, MQ_CMD_SET, FMT, ANY,
      0, 0, 0, 0, 0, NULL },
    { "set q 0 0 18446744073709551616", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0,
      0, 0, 0, 0, NULL },
    { "set q 0 0 99999999999999999999999", MQ_ERROR, MQ_CMD_SET, FMT, ANY,
      0, 0, 0, 0, 0, NULL },
    { "set q 0 0 -1", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q 0 0 +1", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q 0 0 1x", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q 0 0 0x10", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set q 0 0 1.0", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q 0 0 noreply", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set q 0 0", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q 0", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set q", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "set    ", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    /* too many tokens, but <bytes> parses: the block follows */
    { "set q 0 0 5 noreply extra", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 1, 0, 0,
      0, 5, NULL },
    { "set q 0 0 5 noreply a b c d e", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 1, 0,
      0, 0, 5, NULL },
    { "set q 0 0\t5", MQ_ERROR, MQ_CMD_SET, FMT, ANY, 0, 0, 0, 0, 0, NULL },

    /* set: bytes good, something else wrong: the data block follows */
    { "set q 4294967296 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1,
      NULL },
    { "set q -1 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1, NULL },
    { "set q +1 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1, NULL },
    { "set q 0x1 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1, NULL },
    { "set q 1.5 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1, NULL },
    { "set q x 0 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 1, NULL },
    { "set q 1 9223372036854775808 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0,
      1, 0, 1, NULL },
    { "set q 1 -9223372036854775809 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1,
      0, 1, 0, 1, NULL },
    { "set q 1 - 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 1 -- 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 1 +5 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 1 5- 1", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 1, 0, 1, NULL },
    { "set q 0 0 5 norepl", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "set q 0 0 5 NOREPLY", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "set q 0 0 5 0", MQ_ERROR, MQ_CMD_SET, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "set a/b 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "a/b", 1, 0, 0, 0, 5,
      NULL },
    { "set .q 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, ".q", 1, 0, 0, 0, 5,
      NULL },
    { "set .. 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "..", 1, 0, 0, 0, 5,
      NULL },
    { "set . 0 0 5 noreply", MQ_ERROR, MQ_CMD_SET, NAME, ".", 1, 1, 0, 0,
      5, NULL },
    { "set ../../etc 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "../../etc", 1, 0,
      0, 0, 5, NULL },
    { "set %2e%2e 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "%2e%2e", 1, 0, 0, 0,
      5, NULL },
    { "set q\r 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "q\r", 1, 0, 0, 0, 5,
      NULL },
    { "set caf\xc3\xa9 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "caf\xc3\xa9", 1,
      0, 0, 0, 5, NULL },
    { "set q/open 0 0 5", MQ_ERROR, MQ_CMD_SET, NAME, "q/open", 1, 0, 0, 0,
      5, NULL },

    /* refused storage commands: parsed so the data can be swallowed */
    { "add q 0 0 5", MQ_OK, MQ_CMD_ADD, NULL, "q", 1, 0, 0, 0, 5, NULL },
    { "replace a/b 1 2 3", MQ_OK, MQ_CMD_REPLACE, NULL, "a/b", 1, 0, 1, 2,
      3, NULL },
    { "append ../x 1 2 3 noreply", MQ_OK, MQ_CMD_APPEND, NULL, "../x", 1, 1,
      1, 2, 3, NULL },
    { "prepend .q 0 -1 10", MQ_OK, MQ_CMD_PREPEND, NULL, ".q", 1, 0, 0, -1,
      10, NULL },
    { "prepend q 0 0", MQ_ERROR, MQ_CMD_PREPEND, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "add q 0 0 x", MQ_ERROR, MQ_CMD_ADD, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "add q x 0 5", MQ_ERROR, MQ_CMD_ADD, FMT, "q", 1, 0, 0, 0, 5, NULL },
    { "add q 0 x 5", MQ_ERROR, MQ_CMD_ADD, FMT, "q", 1, 0, 0, 0, 5, NULL },
    { "append q 0 0 5 nope", MQ_ERROR, MQ_CMD_APPEND, FMT, "q", 1, 0, 0, 0,
      5, NULL },
    { "cas q 0 0 5 123", MQ_OK, MQ_CMD_CAS, NULL, "q", 1, 0, 0, 0, 5, NULL },
    { "cas q 1 2 5 123 noreply", MQ_OK, MQ_CMD_CAS, NULL, "q", 1, 1, 1, 2,
      5, NULL },
    { "cas q 0 0 5", MQ_ERROR, MQ_CMD_CAS, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "cas q 0 0 5 noreply", MQ_ERROR, MQ_CMD_CAS, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "cas q 0 0 x 1", MQ_ERROR, MQ_CMD_CAS, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "cas q 0 0 5 x", MQ_ERROR, MQ_CMD_CAS, FMT, "q", 1, 0, 0, 0, 5, NULL },
    { "cas q 0 0 5 -1", MQ_ERROR, MQ_CMD_CAS, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "cas q 0 0 5 1 2", MQ_ERROR, MQ_CMD_CAS, FMT, "q", 1, 0, 0, 0, 5,
      NULL },
    { "cas q 0 0 5 1 noreply x", MQ_ERROR, MQ_CMD_CAS, FMT, ANY, 1, 0, 0, 0,
      5, NULL },
    /* refused storage commands: the same bound on the byte count */
    { "add q 0 0 2147483647", MQ_OK, MQ_CMD_ADD, NULL, "q", 1, 0, 0, 0,
      2147483647, NULL },
    { "cas q 0 0 2147483647 1", MQ_OK, MQ_CMD_CAS, NULL, "q", 1, 0, 0, 0,
      2147483647, NULL },
    { "add q 0 0 18446744073709551615", MQ_ERROR, MQ_CMD_ADD, FMT, ANY, 0,
      0, 0, 0, 0, NULL },
    { "replace q 0 0 4294967296000", MQ_ERROR, MQ_CMD_REPLACE, FMT, ANY, 0,
      0, 0, 0, 0, NULL },
    { "append q 0 0 2147483648", MQ_ERROR, MQ_CMD_APPEND, FMT, ANY, 0, 0, 0,
      0, 0, NULL },
    { "prepend q 0 0 18446744073709551614", MQ_ERROR, MQ_CMD_PREPEND, FMT,
      ANY, 0, 0, 0, 0, 0, NULL },
    { "cas q 0 0 2147483648 1", MQ_ERROR, MQ_CMD_CAS, FMT, ANY, 0, 0, 0, 0,
      0, NULL },
    { "cas q 0 0 18446744073709551615 1 noreply", MQ_ERROR, MQ_CMD_CAS, FMT,
      ANY, 0, 0, 0, 0, 0, NULL },

    /* get, gets: keys are checked later, per key */
    { "get q", MQ_OK, MQ_CMD_GET, NULL, "q", 0, 0, 0, 0, 0, "q" },
    { "gets q", MQ_OK, MQ_CMD_GETS, NULL, "q", 0, 0, 0, 0, 0, "q" },
    { "get   a b  c  ", MQ_OK, MQ_CMD_GET, NULL, "a", 0, 0, 0, 0, 0,
      "a b  c" },
    { "  gets q/open/t=10 r", MQ_OK, MQ_CMD_GETS, NULL, "q/open/t=10", 0, 0,
      0, 0, 0, "q/open/t=10 r" },
    { "get a/b/../x", MQ_OK, MQ_CMD_GET, NULL, "a/b/../x", 0, 0, 0, 0, 0,
      "a/b/../x" },
    { "get q noreply", MQ_OK, MQ_CMD_GET, NULL, "q", 0, 0, 0, 0, 0,
      "q noreply" },
    { "get", MQ_ERROR, MQ_CMD_GET, FMT, NULL, 0, 0, 0, 0, 0, NULL },
    { "get     ", MQ_ERROR, MQ_CMD_GET, FMT, NULL, 0, 0, 0, 0, 0, NULL },
    { "gets", MQ_ERROR, MQ_CMD_GETS, FMT, NULL, 0, 0, 0, 0, 0, NULL },

    /* delete <key> [0] [noreply] */
    { "delete q", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 0, 0, 0, 0, NULL },
    { "delete q 0", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 0, 0, 0, 0, NULL },
    { "delete q noreply", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 1, 0, 0, 0,
      NULL },
    { "delete  q  0  noreply ", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 1, 0, 0,
      0, NULL },
    { "delete noreply", MQ_OK, MQ_CMD_DELETE, NULL, "noreply", 0, 0, 0, 0,
      0, NULL },
    { "delete q 5", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "delete q -0", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "delete q x", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "delete q noreply 0", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0,
      0, NULL },
    { "delete q 0 noreply x", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0,
      0, NULL },
    { "delete q 0 x", MQ_ERROR, MQ_CMD_DELETE, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "delete", MQ_ERROR, MQ_CMD_DELETE, FMT, NULL, 0, 0, 0, 0, 0, NULL },
    { "delete a/b", MQ_ERROR, MQ_CMD_DELETE, BADID, "a", 0, 0, 0, 0, 0,
      NULL },
    { "delete ..", MQ_ERROR, MQ_CMD_DELETE, NAME, "..", 0, 0, 0, 0, 0,
      NULL },
    { "delete .", MQ_ERROR, MQ_CMD_DELETE, NAME, ".", 0, 0, 0, 0, 0, NULL },
    { "delete q* noreply", MQ_ERROR, MQ_CMD_DELETE, NAME, "q*", 0, 1, 0, 0,
      0, NULL },

    /* flush <key> [noreply] */
    { "flush q", MQ_OK, MQ_CMD_FLUSH, NULL, "q", 0, 0, 0, 0, 0, NULL },
    { "flush q noreply", MQ_OK, MQ_CMD_FLUSH, NULL, "q", 0, 1, 0, 0, 0,
      NULL },
    { "flush", MQ_ERROR, MQ_CMD_FLUSH, FMT, NULL, 0, 0, 0, 0, 0, NULL },
    { "flush q x", MQ_ERROR, MQ_CMD_FLUSH, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "flush q 0", MQ_ERROR, MQ_CMD_FLUSH, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "flush q noreply x", MQ_ERROR, MQ_CMD_FLUSH, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "flush ../x", MQ_ERROR, MQ_CMD_FLUSH, NAME, "../x", 0, 0, 0, 0, 0,
      NULL },

    /* flush_all [delay] [noreply] */
    { "flush_all", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 0, 0, 0, 0,
      NULL },
    { "flush_all 10", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 0, 0, 10, 0,
      NULL },
    { "flush_all noreply", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 1, 0, 0,
      0, NULL },
    { "flush_all 0 noreply", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 1, 0,
      0, 0, NULL },
    { "flush_all 2 noreply", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 1, 0,
      2, 0, NULL },
    { "flush_all -1", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 0, 0, -1, 0,
      NULL },
    { "flush_all 2592001", MQ_OK, MQ_CMD_FLUSH_ALL, NULL, NULL, 0, 0, 0,
      2592001, 0, NULL },
    { "flush_all x", MQ_ERROR, MQ_CMD_FLUSH_ALL, FMT, NULL, 0, 0, 0, 0, 0,
      NULL },
    { "flush_all 1 2", MQ_ERROR, MQ_CMD_FLUSH_ALL, FMT, NULL, 0, 0, 0, 0,
      0, NULL },
    { "flush_all 1 2 3", MQ_ERROR, MQ_CMD_FLUSH_ALL, FMT, NULL, 0, 0, 0, 0,
      0, NULL },
    { "flush_all noreply 10", MQ_ERROR, MQ_CMD_FLUSH_ALL, FMT, NULL, 0, 0,
      0, 0, 0, NULL },
    { "flush_all 1 noreply x", MQ_ERROR, MQ_CMD_FLUSH_ALL, FMT, NULL, 0, 0,
      0, 0, 0, NULL },

    /* stats [args] */
    { "stats", MQ_OK, MQ_CMD_STATS, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "stats    ", MQ_OK, MQ_CMD_STATS, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "stats items", MQ_OK, MQ_CMD_STATS, NULL, NULL, 0, 0, 0, 0, 0,
      "items" },
    { "stats  detail  dump ", MQ_OK, MQ_CMD_STATS, NULL, NULL, 0, 0, 0, 0,
      0, "detail  dump" },

    /* version, quit: arguments ignored */
    { "version", MQ_OK, MQ_CMD_VERSION, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "version x y", MQ_OK, MQ_CMD_VERSION, NULL, NULL, 0, 0, 0, 0, 0,
      NULL },
    { "quit", MQ_OK, MQ_CMD_QUIT, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { " quit now ", MQ_OK, MQ_CMD_QUIT, NULL, NULL, 0, 0, 0, 0, 0, NULL },

    /* unknown or empty */
    { "", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "     ", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "foo", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "SET q 0 0 1", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0,
      NULL },
    { "Get q", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "getx q", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "ge q", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "incr q 1", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    /* leases: delete <q>/<id>, touch <q>/<id> <seconds> */
    { "delete q/17", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 0, 0, 0, 0, NULL },
    { "delete q/17 noreply", MQ_OK, MQ_CMD_DELETE, NULL, "q", 0, 1, 0, 0, 0,
      NULL },
    { "delete q/", MQ_ERROR, MQ_CMD_DELETE, BADID, "q", 0, 0, 0, 0, 0,
      NULL },
    { "delete q/-1", MQ_ERROR, MQ_CMD_DELETE, BADID, "q", 0, 0, 0, 0, 0,
      NULL },
    { "delete q/18446744073709551616", MQ_ERROR, MQ_CMD_DELETE, BADID, "q",
      0, 0, 0, 0, 0, NULL },
    { "delete q/1/2", MQ_ERROR, MQ_CMD_DELETE, BADID, "q", 0, 0, 0, 0, 0,
      NULL },
    { "delete /1", MQ_ERROR, MQ_CMD_DELETE, NAME, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "touch q/5 30", MQ_OK, MQ_CMD_TOUCH, NULL, "q", 0, 0, 0, 30, 0,
      NULL },
    { "touch q/5 0 noreply", MQ_OK, MQ_CMD_TOUCH, NULL, "q", 0, 1, 0, 0, 0,
      NULL },
    { "touch q/5 43200", MQ_OK, MQ_CMD_TOUCH, NULL, "q", 0, 0, 0, 43200, 0,
      NULL },
    { "touch q/5 43201", MQ_ERROR, MQ_CMD_TOUCH, LEASE, "q", 0, 0, 0, 0, 0,
      NULL },
    { "touch q 0", MQ_ERROR, MQ_CMD_TOUCH, BADID, "q", 0, 0, 0, 0, 0,
      NULL },
    { "touch q/x 0", MQ_ERROR, MQ_CMD_TOUCH, BADID, "q", 0, 0, 0, 0, 0,
      NULL },
    { "touch q/5", MQ_ERROR, MQ_CMD_TOUCH, FMT, ANY, 0, 0, 0, 0, 0, NULL },
    { "touch", MQ_ERROR, MQ_CMD_TOUCH, FMT, NULL, 0, 0, 0, 0, 0, NULL },
    { "touch q/5 -1", MQ_ERROR, MQ_CMD_TOUCH, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "touch q/5 1x", MQ_ERROR, MQ_CMD_TOUCH, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "touch q/5 1 later", MQ_ERROR, MQ_CMD_TOUCH, FMT, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "touch q/5 1 noreply x", MQ_ERROR, MQ_CMD_TOUCH, FMT, NULL, 0, 0, 0,
      0, 0, NULL },
    { "touch b@d/5 1", MQ_ERROR, MQ_CMD_TOUCH, NAME, ANY, 0, 0, 0, 0, 0,
      NULL },
    { "set\tq 0 0 1", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0,
      NULL },
    { "\r", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
    { "unknown", MQ_OK, MQ_CMD_UNKNOWN, NULL, NULL, 0, 0, 0, 0, 0, NULL },
};


static void
check_request(size_t i, const req_case_t *c)
{
    int            rc;
    size_t         len;
    const char    *err;
    mq_request_t   req;

    len = strlen(c->line);
    err = NULL;
    memset(&req, 0xa5, sizeof(req));

    rc = mq_proto_parse_request(c->line, len, &req, &err);

    if (rc != c->rc) {
        fail_msg("case %zu \"%s\": rc %d, expected %d (%s)", i, c->line, rc,
                 c->rc, err ? err : "-");
    }

    if (req.cmd != c->cmd) {
        fail_msg("case %zu \"%s\": cmd %s, expected %s", i, c->line,
                 mq_cmd_name(req.cmd), mq_cmd_name(c->cmd));
    }

    if (rc == MQ_ERROR) {
        assert_non_null(err);
        if (strcmp(err, c->err) != 0) {
            fail_msg("case %zu \"%s\": err \"%s\", expected \"%s\"", i,
                     c->line, err, c->err);
        }
    }

    if (req.has_data != c->has_data || req.noreply != c->noreply) {
        fail_msg("case %zu \"%s\": has_data %u noreply %u", i, c->line,
                 req.has_data, req.noreply);
    }

    if (c->key == NULL) {
        if (req.key != NULL) {
            fail_msg("case %zu \"%s\": key not NULL", i, c->line);
        }

    } else if (strcmp(c->key, ANY) != 0) {
        if (req.key == NULL || req.key_len != strlen(c->key)
            || memcmp(req.key, c->key, req.key_len) != 0)
        {
            fail_msg("case %zu \"%s\": key wrong", i, c->line);
        }
    }

    /* a key always points into the line */
    if (req.key != NULL) {
        assert_true(req.key >= c->line);
        assert_true(req.key + req.key_len <= c->line + len);
    }

    if (c->rest == NULL) {
        if (req.rest != NULL || req.rest_len != 0) {
            fail_msg("case %zu \"%s\": rest not NULL", i, c->line);
        }

    } else if (req.rest == NULL || req.rest_len != strlen(c->rest)
               || memcmp(req.rest, c->rest, req.rest_len) != 0)
    {
        fail_msg("case %zu \"%s\": rest wrong", i, c->line);
    }

    if (rc == MQ_OK || c->has_data) {
        if (req.bytes != c->bytes) {
            fail_msg("case %zu \"%s\": bytes %llu", i, c->line,
                     (unsigned long long) req.bytes);
        }
    }

    if (rc == MQ_OK) {
        if (req.flags != c->flags || req.exptime != c->exptime) {
            fail_msg("case %zu \"%s\": flags %u exptime %lld", i, c->line,
                     req.flags, (long long) req.exptime);
        }
    }
}


static void
test_request_table(void **state)
{
    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(req_cases) / sizeof(req_cases[0]); i++) {
        check_request(i, &req_cases[i]);
    }
}


/* the line is not NUL-terminated: the parser must honour len */
static void
test_request_len_bound(void **state)
{
    const char    *err;
    mq_request_t   req;

    static const char  line[] = "set q 0 0 5 noreply trailing junk";

    (void) state;

    assert_int_equal(mq_proto_parse_request(line, 11, &req, &err), MQ_OK);
    assert_int_equal(req.cmd, MQ_CMD_SET);
    assert_int_equal(req.bytes, 5);
    assert_int_equal(req.noreply, 0);

    assert_int_equal(mq_proto_parse_request(line, 19, &req, &err), MQ_OK);
    assert_int_equal(req.noreply, 1);

    assert_int_equal(mq_proto_parse_request(line, 10, &req, &err), MQ_ERROR);
    assert_int_equal(req.has_data, 0);

    assert_int_equal(mq_proto_parse_request("get qq", 5, &req, &err), MQ_OK);
    assert_int_equal(req.key_len, 1);
    assert_int_equal(req.rest_len, 1);

    assert_int_equal(mq_proto_parse_request("set", 2, &req, &err), MQ_OK);
    assert_int_equal(req.cmd, MQ_CMD_UNKNOWN);

    /* a NUL inside a line is just a byte */
    assert_int_equal(mq_proto_parse_request("set q\0 0 0 1", 12, &req, &err),
                     MQ_ERROR);
    assert_string_equal(err, NAME);
    assert_int_equal(req.has_data, 1);
}


static void
test_request_key_length(void **state)
{
    int            rc;
    size_t         n;
    const char    *err;
    mq_request_t   req;
    char           line[600];

    (void) state;

    /* set: 250 bytes is the longest name */
    memcpy(line, "set ", 4);
    memset(line + 4, 'k', MQ_NAME_MAX);
    n = 4 + MQ_NAME_MAX;
    n += (size_t) sprintf(line + n, " 0 0 5");

    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.key_len, MQ_NAME_MAX);

    memcpy(line, "set ", 4);
    memset(line + 4, 'k', MQ_NAME_MAX + 1);
    n = 4 + MQ_NAME_MAX + 1;
    n += (size_t) sprintf(line + n, " 0 0 5");

    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, NAME);
    assert_int_equal(req.has_data, 1);
    assert_int_equal(req.bytes, 5);

    /* add: not a queue name, but still at most 250 bytes */
    memcpy(line, "add ", 4);
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, FMT);
    assert_int_equal(req.has_data, 1);

    memcpy(line, "add ", 4);
    memset(line + 4, '/', MQ_NAME_MAX);
    n = 4 + MQ_NAME_MAX;
    n += (size_t) sprintf(line + n, " 0 0 5");
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.cmd, MQ_CMD_ADD);

    /* delete and flush */
    memcpy(line, "delete ", 7);
    memset(line + 7, 'k', MQ_NAME_MAX + 1);
    rc = mq_proto_parse_request(line, 7 + MQ_NAME_MAX, &req, &err);
    assert_int_equal(rc, MQ_OK);
    rc = mq_proto_parse_request(line, 7 + MQ_NAME_MAX + 1, &req, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, NAME);
}


static void
test_request_many_keys(void **state)
{
    int            rc;
    size_t         n, i, klen;
    const char    *err, *p, *end, *k;
    mq_request_t   req;
    char           line[1024];

    (void) state;

    n = (size_t) sprintf(line, "get");
    for (i = 0; i < MQ_KEYS_MAX; i++) {
        n += (size_t) sprintf(line + n, " k%zu", i);
    }

    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.key_len, 2);
    assert_memory_equal(req.key, "k0", 2);

    /* the keys, in order, through next_key */
    p = req.rest;
    end = req.rest + req.rest_len;
    for (i = 0; i < MQ_KEYS_MAX; i++) {
        char  expect[16];

        assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_OK);
        sprintf(expect, "k%zu", i);
        assert_int_equal(klen, strlen(expect));
        assert_memory_equal(k, expect, klen);
    }
    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_DECLINED);
    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_DECLINED);

    n += (size_t) sprintf(line + n, " one-too-many");
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, KEYS);

    /* trailing spaces are not keys */
    n = (size_t) sprintf(line, "gets");
    for (i = 0; i < MQ_KEYS_MAX; i++) {
        n += (size_t) sprintf(line + n, "  k");
    }
    n += (size_t) sprintf(line + n, "      ");
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_OK);
}


static void
test_next_key(void **state)
{
    size_t       klen;
    const char  *p, *end, *k;

    static const char  keys[] = "  a  bb ccc   ";

    (void) state;

    p = keys;
    end = keys + sizeof(keys) - 1;

    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_OK);
    assert_int_equal(klen, 1);
    assert_ptr_equal(k, keys + 2);
    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_OK);
    assert_int_equal(klen, 2);
    assert_memory_equal(k, "bb", 2);
    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_OK);
    assert_int_equal(klen, 3);
    assert_memory_equal(k, "ccc", 3);
    assert_int_equal(mq_proto_next_key(&p, end, &k, &klen), MQ_DECLINED);
    assert_true(p <= end);

    p = keys;
    assert_int_equal(mq_proto_next_key(&p, keys, &k, &klen), MQ_DECLINED);
    assert_int_equal(mq_proto_next_key(&p, keys + 2, &k, &klen), MQ_DECLINED);

    /* a key cut by end */
    p = keys;
    assert_int_equal(mq_proto_next_key(&p, keys + 6, &k, &klen), MQ_OK);
    assert_int_equal(mq_proto_next_key(&p, keys + 6, &k, &klen), MQ_OK);
    assert_int_equal(klen, 1);
    assert_int_equal(mq_proto_next_key(&p, keys + 6, &k, &klen), MQ_DECLINED);
}


static void
test_cmd_names(void **state)
{
    int            i;
    size_t         len;
    const char    *err, *name;
    mq_request_t   req;
    char           line[64];

    (void) state;

    assert_string_equal(mq_cmd_name(MQ_CMD_SET), "set");
    assert_string_equal(mq_cmd_name(MQ_CMD_GETS), "gets");
    assert_string_equal(mq_cmd_name(MQ_CMD_FLUSH_ALL), "flush_all");
    assert_string_equal(mq_cmd_name(MQ_CMD_CAS), "cas");
    assert_string_equal(mq_cmd_name(MQ_CMD_UNKNOWN), "unknown");
    assert_string_equal(mq_cmd_name((mq_cmd_e) (MQ_CMD_UNKNOWN + 1)),
                        "unknown");
    assert_string_equal(mq_cmd_name((mq_cmd_e) -1), "unknown");

    /* every name parses back to its command */
    for (i = 0; i < MQ_CMD_UNKNOWN; i++) {
        name = mq_cmd_name((mq_cmd_e) i);
        len = (size_t) sprintf(line, "%s", name);
        mq_proto_parse_request(line, len, &req, &err);
        assert_int_equal(req.cmd, i);
    }
}


/* ---- get keys ---- */

typedef struct {
    const char  *key;
    int          rc;
    const char  *err;
    size_t       name_len;
    int64_t      wait_ms;
    uint32_t     count;
    unsigned     open, close, abort, peek;
} key_case_t;


static const key_case_t  key_cases[] = {
    { "q", MQ_OK, NULL, 1, -1, 1, 0, 0, 0, 0 },
    { "orders.eu", MQ_OK, NULL, 9, -1, 1, 0, 0, 0, 0 },
    { "q/open", MQ_OK, NULL, 1, -1, 1, 1, 0, 0, 0 },
    { "q/close", MQ_OK, NULL, 1, -1, 1, 0, 1, 0, 0 },
    { "q/abort", MQ_OK, NULL, 1, -1, 1, 0, 0, 1, 0 },
    { "q/peek", MQ_OK, NULL, 1, -1, 1, 0, 0, 0, 1 },
    { "q/close/open", MQ_OK, NULL, 1, -1, 1, 1, 1, 0, 0 },
    { "q/open/close", MQ_OK, NULL, 1, -1, 1, 1, 1, 0, 0 },
    { "q/t=0", MQ_OK, NULL, 1, 0, 1, 0, 0, 0, 0 },
    { "q/t=1000", MQ_OK, NULL, 1, 1000, 1, 0, 0, 0, 0 },
    { "q/t=86400000", MQ_OK, NULL, 1, 86400000, 1, 0, 0, 0, 0 },
    { "q/t=0000100", MQ_OK, NULL, 1, 100, 1, 0, 0, 0, 0 },
    { "q/n=1", MQ_OK, NULL, 1, -1, 1, 0, 0, 0, 0 },
    { "q/n=1000", MQ_OK, NULL, 1, -1, 1000, 0, 0, 0, 0 },
    { "q/n=07", MQ_OK, NULL, 1, -1, 7, 0, 0, 0, 0 },
    { "q/t=100/n=5/open", MQ_OK, NULL, 1, 100, 5, 1, 0, 0, 0 },
    { "q/n=5/open/t=100", MQ_OK, NULL, 1, 100, 5, 1, 0, 0, 0 },
    { "q/open/t=100/n=5/close", MQ_OK, NULL, 1, 100, 5, 1, 1, 0, 0 },
    { "q/peek/abort/close/open/n=2/t=3", MQ_OK, NULL, 1, 3, 2, 1, 1, 1, 1 },
    { "q/open/open", MQ_OK, NULL, 1, -1, 1, 1, 0, 0, 0 },
    { "q/t=1/t=2", MQ_OK, NULL, 1, 2, 1, 0, 0, 0, 0 },
    { "q/n=9/n=3", MQ_OK, NULL, 1, -1, 3, 0, 0, 0, 0 },

    { "q/t=86400001", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=99999999999999999999999", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=-1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=+1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=1x", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=1s", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t= 1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/T=1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=0", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=00", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=1001", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=18446744073709551617", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/n=-1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q//open", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/open/", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/t=100/", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/OPEN", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/opened", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/ope", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/x=1", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/open close", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/open\r", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/..", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },
    { "q/open/../../x", MQ_ERROR, OPT, 1, 0, 0, 0, 0, 0, 0 },

    { "", MQ_ERROR, NAME, 0, 0, 0, 0, 0, 0, 0 },
    { "/open", MQ_ERROR, NAME, 0, 0, 0, 0, 0, 0, 0 },
    { ".q/open", MQ_ERROR, NAME, 2, 0, 0, 0, 0, 0, 0 },
    { "../etc/passwd", MQ_ERROR, NAME, 2, 0, 0, 0, 0, 0, 0 },
    { "a b", MQ_ERROR, NAME, 3, 0, 0, 0, 0, 0, 0 },
    { "%2e%2e/open", MQ_ERROR, NAME, 6, 0, 0, 0, 0, 0, 0 },
    { "q\\open", MQ_ERROR, NAME, 6, 0, 0, 0, 0, 0, 0 },
};


static void
test_get_key_table(void **state)
{
    int             rc;
    size_t          i;
    const char     *err;
    mq_get_opts_t   o;
    const key_case_t  *c;

    (void) state;

    for (i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
        c = &key_cases[i];
        err = NULL;
        rc = mq_proto_parse_get_key(c->key, strlen(c->key), &o, &err);

        if (rc != c->rc) {
            fail_msg("case %zu \"%s\": rc %d, expected %d", i, c->key, rc,
                     c->rc);
        }

        if (rc == MQ_ERROR) {
            assert_non_null(err);
            if (strcmp(err, c->err) != 0) {
                fail_msg("case %zu \"%s\": err \"%s\"", i, c->key, err);
            }
            continue;
        }

        if (o.name_len != c->name_len || o.wait_ms != c->wait_ms
            || o.count != c->count || o.open != c->open
            || o.close != c->close || o.abort != c->abort
            || o.peek != c->peek)
        {
            fail_msg("case %zu \"%s\": name_len %zu wait %lld count %u "
                     "open %u close %u abort %u peek %u", i, c->key,
                     o.name_len, (long long) o.wait_ms, o.count, o.open,
                     o.close, o.abort, o.peek);
        }
    }
}


/* ids of delete/touch, and the /lease= and /ack= options */
/* An id list "3,0,18446744073709551615", through mq_proto_next_id(). */
static void
check_3_0_max(const char *p, size_t len)
{
    uint64_t     id;
    const char  *end;

    end = p + len;
    assert_int_equal(mq_proto_next_id(&p, end, &id), MQ_OK);
    assert_int_equal(id, 3);
    assert_int_equal(mq_proto_next_id(&p, end, &id), MQ_OK);
    assert_int_equal(id, 0);
    assert_int_equal(mq_proto_next_id(&p, end, &id), MQ_OK);
    assert_true(id == UINT64_MAX);
    assert_int_equal(mq_proto_next_id(&p, end, &id), MQ_DECLINED);
}


static void
test_lease_forms(void **state)
{
    int             rc;
    size_t          n, i;
    const char     *err;
    char            key[2100];
    mq_request_t    req;
    mq_get_opts_t   o;

    (void) state;

    rc = mq_proto_parse_request("delete q/18446744073709551615", 29, &req,
                                &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.has_id, 1);
    assert_true(req.id == UINT64_MAX);

    rc = mq_proto_parse_request("delete q", 8, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.has_id, 0);

    rc = mq_proto_parse_request("touch q/42 7", 12, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.has_id, 1);
    assert_int_equal(req.id, 42);
    assert_int_equal(req.exptime, 7);

    rc = mq_proto_parse_get_key("q/lease=5000/n=3", 16, &o, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(o.lease_ms, 5000);
    assert_int_equal(o.count, 3);
    assert_null(o.acks);

    static const char  *bad[] = {
        "q/lease=0", "q/lease=43200001", "q/lease=", "q/lease=-1",
        "q/lease=1/open", "q/peek/lease=1", "q/ack=", "q/ack=1,",
        "q/ack=,1", "q/ack=1,,2", "q/ack=a", "q/ack=1/ack=2",
        "q/ack=18446744073709551616", "q/leasex=1", "q/ack"
    };
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        rc = mq_proto_parse_get_key(bad[i], strlen(bad[i]), &o, &err);
        if (rc != MQ_ERROR || strcmp(err, OPT) != 0) {
            fail_msg("%s: rc %d err %s", bad[i], rc, err ? err : "-");
        }
    }

    rc = mq_proto_parse_get_key("q/lease=43200000/ack=3,0,18446744073709551615"
                                "/n=2", 49, &o, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(o.lease_ms, 43200000);
    assert_int_equal(o.nacks, 3);
    check_3_0_max(o.acks, o.acks_len);

    /* MQ_ACK_IDS_MAX ids, then one more */
    n = (size_t) sprintf(key, "q/ack=1");
    for (i = 1; i < MQ_ACK_IDS_MAX; i++) {
        n += (size_t) sprintf(key + n, ",%zu", i % 10);
    }
    rc = mq_proto_parse_get_key(key, n, &o, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(o.nacks, MQ_ACK_IDS_MAX);
    n += (size_t) sprintf(key + n, ",9");
    rc = mq_proto_parse_get_key(key, n, &o, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, IDS);
}


static void
test_get_key_long_name(void **state)
{
    const char     *err;
    mq_get_opts_t   o;
    char            key[300];

    (void) state;

    memset(key, 'n', MQ_NAME_MAX);
    memcpy(key + MQ_NAME_MAX, "/open/n=3", 9);

    assert_int_equal(mq_proto_parse_get_key(key, MQ_NAME_MAX + 9, &o, &err),
                     MQ_OK);
    assert_int_equal(o.name_len, MQ_NAME_MAX);
    assert_int_equal(o.count, 3);
    assert_int_equal(o.open, 1);

    memset(key, 'n', MQ_NAME_MAX + 1);
    memcpy(key + MQ_NAME_MAX + 1, "/open", 5);
    assert_int_equal(mq_proto_parse_get_key(key, MQ_NAME_MAX + 6, &o, &err),
                     MQ_ERROR);
    assert_string_equal(err, NAME);

    /* len is honoured: the option is cut to "ope" */
    assert_int_equal(mq_proto_parse_get_key("q/open", 5, &o, &err),
                     MQ_ERROR);
    assert_string_equal(err, OPT);
    assert_int_equal(mq_proto_parse_get_key("q/open", 1, &o, &err), MQ_OK);
    assert_int_equal(o.open, 0);
}


/* ---- replies ---- */

#define MAXB  1048576

typedef struct {
    const char  *buf;
    int          rc;
    mq_reply_e   type;
    const char  *err;
    const char  *key;       /* NULL: not checked */
    const char  *text;      /* NULL: not checked */
    uint32_t     flags;
    uint64_t     bytes;
    unsigned     has_cas;
    uint64_t     cas;
    size_t       consumed;
} reply_case_t;


static const reply_case_t  reply_cases[] = {
    { "VALUE q 0 5\r\nhello\r\nEND\r\n", MQ_OK, MQ_REPLY_VALUE, NULL, "q",
      NULL, 0, 5, 0, 0, 13 },
    { "VALUE q/open 42 5 7\r\n", MQ_OK, MQ_REPLY_VALUE, NULL, "q/open",
      NULL, 42, 5, 1, 7, 21 },
    { "VALUE q 4294967295 0\r\n", MQ_OK, MQ_REPLY_VALUE, NULL, "q", NULL,
      4294967295u, 0, 0, 0, 22 },
    { "VALUE q 0 1048576 18446744073709551615\n", MQ_OK, MQ_REPLY_VALUE,
      NULL, "q", NULL, 0, 1048576, 1, UINT64_MAX, 39 },
    { "VALUE k 1 2\n", MQ_OK, MQ_REPLY_VALUE, NULL, "k", NULL, 1, 2, 0, 0,
      12 },
    { "END\r\n", MQ_OK, MQ_REPLY_END, NULL, NULL, NULL, 0, 0, 0, 0, 5 },
    { "END\n", MQ_OK, MQ_REPLY_END, NULL, NULL, NULL, 0, 0, 0, 0, 4 },
    { "END\r\nEND\r\n", MQ_OK, MQ_REPLY_END, NULL, NULL, NULL, 0, 0, 0, 0,
      5 },
    { "STORED\r\n", MQ_OK, MQ_REPLY_STORED, NULL, NULL, NULL, 0, 0, 0, 0,
      8 },
    { "NOT_STORED\r\n", MQ_OK, MQ_REPLY_NOT_STORED, NULL, NULL, NULL, 0, 0,
      0, 0, 12 },
    { "DELETED\r\n", MQ_OK, MQ_REPLY_DELETED, NULL, NULL, NULL, 0, 0, 0, 0,
      9 },
    { "NOT_FOUND\r\n", MQ_OK, MQ_REPLY_NOT_FOUND, NULL, NULL, NULL, 0, 0, 0,
      0, 11 },
    { "OK\r\n", MQ_OK, MQ_REPLY_OK, NULL, NULL, NULL, 0, 0, 0, 0, 4 },
    { "STAT pid 1234\r\n", MQ_OK, MQ_REPLY_STAT, NULL, "pid", "1234", 0, 0,
      0, 0, 15 },
    { "STAT version memqd 0.1.0\r\n", MQ_OK, MQ_REPLY_STAT, NULL, "version",
      "memqd 0.1.0", 0, 0, 0, 0, 26 },
    { "STAT queue_q_items 0\r\n", MQ_OK, MQ_REPLY_STAT, NULL, "queue_q_items",
      "0", 0, 0, 0, 0, 22 },
    { "STAT x\r\n", MQ_OK, MQ_REPLY_STAT, NULL, "x", "", 0, 0, 0, 0, 8 },
    { "VERSION memqd 0.1.0\r\n", MQ_OK, MQ_REPLY_VERSION, NULL, NULL,
      "memqd 0.1.0", 0, 0, 0, 0, 21 },
    { "VERSION 1.6.18\r\n", MQ_OK, MQ_REPLY_VERSION, NULL, NULL, "1.6.18", 0,
      0, 0, 0, 16 },
    { "ERROR\r\n", MQ_OK, MQ_REPLY_ERROR, NULL, NULL, "", 0, 0, 0, 0, 7 },
    { "CLIENT_ERROR bad queue name\r\n", MQ_OK, MQ_REPLY_CLIENT_ERROR, NULL,
      NULL, "bad queue name", 0, 0, 0, 0, 29 },
    { "SERVER_ERROR object too large for cache\r\n", MQ_OK,
      MQ_REPLY_SERVER_ERROR, NULL, NULL, "object too large for cache", 0, 0,
      0, 0, 41 },
    { "SERVER_ERROR\r\n", MQ_OK, MQ_REPLY_SERVER_ERROR, NULL, NULL, "", 0, 0,
      0, 0, 14 },

    /* incomplete */
    { "", MQ_AGAIN, 0, NULL, NULL, NULL, 0, 0, 0, 0, 0 },
    { "END", MQ_AGAIN, 0, NULL, NULL, NULL, 0, 0, 0, 0, 0 },
    { "END\r", MQ_AGAIN, 0, NULL, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 5", MQ_AGAIN, 0, NULL, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 5\r", MQ_AGAIN, 0, NULL, NULL, NULL, 0, 0, 0, 0, 0 },

    /* too large */
    { "VALUE q 0 1048577\r\n", MQ_ERROR, 0, BIG, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 99999999999 5\r\n", MQ_ERROR, 0, BIG, NULL, NULL, 0, 0, 0,
      0, 0 },

    /* malformed */
    { "VALUE q 4294967296 0\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0,
      0 },
    { "VALUE q 0 18446744073709551616\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0,
      0, 0, 0, 0 },
    { "VALUE q 0 x\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 -5\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q -1 5\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE \r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 5 x\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUE q 0 5 1 2\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "VALUES q 0 1\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "value q 0 1\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "end\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "END \r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { " END\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "ENDX\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "END\r\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "STORED x\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "OK OK\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "STAT\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "STAT \r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "STATS pid 1\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "ERRORS\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "HELLO\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "hello\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
    { "\x00\r\n", MQ_ERROR, 0, BAD, NULL, NULL, 0, 0, 0, 0, 0 },
};


/* delete <q>/<id>,<id>,...: the list form, and its reply DELETED <n> */
static void
test_delete_lists(void **state)
{
    int            rc;
    size_t         n, i;
    const char    *err;
    char           line[MQ_LINE_MAX + 1];
    mq_reply_t     r;
    mq_request_t   req;

    (void) state;

    rc = mq_proto_parse_request("delete q/3,0,18446744073709551615 noreply",
                                41, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.has_id, 1);
    assert_int_equal(req.noreply, 1);
    assert_int_equal(req.nids, 3);
    assert_int_equal(req.key_len, 1);
    check_3_0_max(req.ids, req.ids_len);

    /* one id is the plain form */
    rc = mq_proto_parse_request("delete q/7 0", 12, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_null(req.ids);
    assert_int_equal(req.id, 7);

    /* ids are checked by their digits: UINT64_MAX and leading zeros
     * are fine, as they are in one id */
    rc = mq_proto_parse_request("delete q/0003,000,"
                                "0018446744073709551615", 40, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.nids, 3);
    check_3_0_max(req.ids, req.ids_len);

    rc = mq_proto_parse_request("delete q/9,9999999999999999999,"
                                "10000000000000000000", 51, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.nids, 3);

    static const char  *bad[] = {
        "delete q/1,", "delete q/,1", "delete q/1,,2", "delete q/1,a",
        "delete q/1,18446744073709551616", "delete q/1, 2", "touch q/1,2 5",
        "delete q/1,18446744073709551620", "delete q/1,28446744073709551615",
        "delete q/1,100000000000000000000", "delete q/a1,2", "delete q/1,2a",
        "delete q/1,2,", "delete q/1,-2", "delete q/1,0x2"
    };
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        rc = mq_proto_parse_request(bad[i], strlen(bad[i]), &req, &err);
        if (rc != MQ_ERROR
            || (strcmp(err, "bad id") != 0
                && strcmp(err, "bad command line format") != 0))
        {
            fail_msg("%s: rc %d err %s", bad[i], rc, err ? err : "-");
        }
    }

    /* MQ_ACK_IDS_MAX ids, then one more */
    n = (size_t) sprintf(line, "delete q/1");
    for (i = 1; i < MQ_ACK_IDS_MAX; i++) {
        n += (size_t) sprintf(line + n, ",%zu", i % 10);
    }
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(req.nids, MQ_ACK_IDS_MAX);
    n += (size_t) sprintf(line + n, ",9");
    rc = mq_proto_parse_request(line, n, &req, &err);
    assert_int_equal(rc, MQ_ERROR);
    assert_string_equal(err, IDS);

    /* the replies */
    rc = mq_proto_parse_reply("DELETED 97\r\n", 12, MAXB, &r, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(r.type, MQ_REPLY_DELETED);
    assert_int_equal(r.has_count, 1);
    assert_int_equal(r.count, 97);
    assert_int_equal(r.consumed, 12);

    rc = mq_proto_parse_reply("DELETED\r\n", 9, MAXB, &r, &err);
    assert_int_equal(rc, MQ_OK);
    assert_int_equal(r.type, MQ_REPLY_DELETED);
    assert_int_equal(r.has_count, 0);

    static const char  *bad_replies[] = {
        "DELETED \r\n", "DELETED x\r\n", "DELETED 1 2\r\n",
        "DELETED -1\r\n", "DELETED 18446744073709551616\r\n"
    };
    for (i = 0; i < sizeof(bad_replies) / sizeof(bad_replies[0]); i++) {
        err = NULL;
        rc = mq_proto_parse_reply(bad_replies[i], strlen(bad_replies[i]),
                                  MAXB, &r, &err);
        if (rc != MQ_ERROR) {
            fail_msg("%s: rc %d", bad_replies[i], rc);
        }
    }
}


static void
check_str(size_t i, const char *what, const char *p, size_t len,
    const char *expect)
{
    if (p == NULL || len != strlen(expect) || memcmp(p, expect, len) != 0) {
        fail_msg("case %zu: %s \"%.*s\", expected \"%s\"", i, what,
                 p ? (int) len : 0, p ? p : "", expect);
    }
}


static void
test_reply_table(void **state)
{
    int                  rc;
    size_t               i, len;
    const char          *err;
    mq_reply_t           r;
    const reply_case_t  *c;

    (void) state;

    for (i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
        c = &reply_cases[i];
        len = strlen(c->buf);
        if (len == 0 && c->rc == MQ_ERROR) {
            len = 3;                        /* "\0\r\n" */
        }

        err = NULL;
        memset(&r, 0xa5, sizeof(r));
        rc = mq_proto_parse_reply(c->buf, len, MAXB, &r, &err);

        if (rc != c->rc) {
            fail_msg("case %zu \"%s\": rc %d, expected %d (%s)", i, c->buf,
                     rc, c->rc, err ? err : "-");
        }

        if (rc == MQ_ERROR) {
            assert_non_null(err);
            if (strcmp(err, c->err) != 0) {
                fail_msg("case %zu \"%s\": err \"%s\"", i, c->buf, err);
            }
        }

        if (rc != MQ_OK) {
            continue;
        }

        if (r.type != c->type) {
            fail_msg("case %zu \"%s\": type %d", i, c->buf, (int) r.type);
        }

        assert_int_equal(r.consumed, c->consumed);

        if (c->key) {
            check_str(i, "key", r.key, r.key_len, c->key);
        }

        if (c->text) {
            check_str(i, "text", r.text, r.text_len, c->text);
        }

        if (r.key) {
            assert_true(r.key >= c->buf && r.key + r.key_len <= c->buf + len);
        }

        if (r.text) {
            assert_true(r.text >= c->buf
                        && r.text + r.text_len <= c->buf + len);
        }

        if (r.type == MQ_REPLY_VALUE) {
            assert_int_equal(r.flags, c->flags);
            assert_true(r.bytes == c->bytes);
            assert_int_equal(r.has_cas, c->has_cas);
            if (c->has_cas) {
                assert_true(r.cas == c->cas);
            }
        }
    }
}


static void
test_reply_limits(void **state)
{
    size_t         n;
    const char    *err;
    mq_reply_t     r;
    char           buf[4000];

    (void) state;

    /* max_bytes is inclusive */
    n = (size_t) sprintf(buf, "VALUE q 0 100\r\n");
    assert_int_equal(mq_proto_parse_reply(buf, n, 100, &r, &err), MQ_OK);
    assert_int_equal(mq_proto_parse_reply(buf, n, 99, &r, &err), MQ_ERROR);
    assert_string_equal(err, BIG);
    assert_int_equal(mq_proto_parse_reply(buf, n, 0, &r, &err), MQ_ERROR);

    n = (size_t) sprintf(buf, "VALUE q 0 0\r\n\r\n");
    assert_int_equal(mq_proto_parse_reply(buf, n, 0, &r, &err), MQ_OK);
    assert_int_equal(r.bytes, 0);
    assert_int_equal(r.consumed, 13);

    /* a long line without its end: wait up to the limit, then fail */
    memset(buf, 'x', sizeof(buf));
    memcpy(buf, "STAT ", 5);
    assert_int_equal(mq_proto_parse_reply(buf, MQ_LINE_MAX, MAXB, &r, &err),
                     MQ_AGAIN);
    assert_int_equal(mq_proto_parse_reply(buf, sizeof(buf), MAXB, &r, &err),
                     MQ_ERROR);
    assert_non_null(err);

    /* the longest line is fine */
    memcpy(buf + MQ_LINE_MAX, "\r\n", 2);
    assert_int_equal(mq_proto_parse_reply(buf, sizeof(buf), MAXB, &r, &err),
                     MQ_OK);
    assert_int_equal(r.type, MQ_REPLY_STAT);
    assert_int_equal(r.consumed, MQ_LINE_MAX + 2);
}


/* a whole get reply walked the way the gateway does */
static void
test_reply_stream(void **state)
{
    size_t        off, len;
    const char   *err;
    mq_reply_t    r;

    static const char  buf[] =
        "VALUE q 0 5 1\r\nhello\r\n"
        "VALUE q 2 0 2\r\n\r\n"
        "VALUE q 0 7 3\r\nEND\r\nxy\r\n"
        "END\r\n";

    (void) state;

    len = sizeof(buf) - 1;
    off = 0;

    assert_int_equal(mq_proto_parse_reply(buf + off, len - off, MAXB, &r,
                                          &err), MQ_OK);
    assert_int_equal(r.type, MQ_REPLY_VALUE);
    assert_int_equal(r.cas, 1);
    off += r.consumed + r.bytes + 2;

    assert_int_equal(mq_proto_parse_reply(buf + off, len - off, MAXB, &r,
                                          &err), MQ_OK);
    assert_int_equal(r.flags, 2);
    assert_int_equal(r.bytes, 0);
    off += r.consumed + r.bytes + 2;

    assert_int_equal(mq_proto_parse_reply(buf + off, len - off, MAXB, &r,
                                          &err), MQ_OK);
    assert_int_equal(r.bytes, 7);
    assert_memory_equal(buf + off + r.consumed, "END\r\nxy", 7);
    off += r.consumed + r.bytes + 2;

    assert_int_equal(mq_proto_parse_reply(buf + off, len - off, MAXB, &r,
                                          &err), MQ_OK);
    assert_int_equal(r.type, MQ_REPLY_END);
    off += r.consumed;
    assert_int_equal(off, len);

    assert_int_equal(mq_proto_parse_reply(buf + off, 0, MAXB, &r, &err),
                     MQ_AGAIN);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_find_line_table),
        cmocka_unit_test(test_find_line_limits),
        cmocka_unit_test(test_request_table),
        cmocka_unit_test(test_request_len_bound),
        cmocka_unit_test(test_request_key_length),
        cmocka_unit_test(test_request_many_keys),
        cmocka_unit_test(test_next_key),
        cmocka_unit_test(test_cmd_names),
        cmocka_unit_test(test_get_key_table),
        cmocka_unit_test(test_get_key_long_name),
        cmocka_unit_test(test_lease_forms),
        cmocka_unit_test(test_delete_lists),
        cmocka_unit_test(test_reply_table),
        cmocka_unit_test(test_reply_limits),
        cmocka_unit_test(test_reply_stream),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
