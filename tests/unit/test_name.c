/*
 * test_name.c: queue-name validation, the gate against path and protocol
 * injection.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "mq_name.h"


typedef struct {
    const char  *name;
    size_t       len;      /* 0: strlen(name) */
    int          valid;
} name_case_t;


static const name_case_t  cases[] = {
    { "a", 0, 1 },
    { "q1", 0, 1 },
    { "orders", 0, 1 },
    { "Biz.topic", 0, 1 },
    { "a-b_c.d:e", 0, 1 },
    { "0", 0, 1 },
    { "-", 0, 1 },
    { "_", 0, 1 },
    { ":", 0, 1 },
    { "a..b", 0, 1 },
    { "a.", 0, 1 },
    { "ABCXYZabcxyz0189", 0, 1 },

    { "", 0, 0 },
    { ".", 0, 0 },
    { "..", 0, 0 },
    { ".hidden", 0, 0 },
    { "../etc", 0, 0 },
    { "a/b", 0, 0 },
    { "/", 0, 0 },
    { "a\\b", 0, 0 },
    { "\0", 1, 0 },
    { "a\0b", 3, 0 },
    { "%2e", 0, 0 },
    { "%2e%2e", 0, 0 },
    { "a b", 0, 0 },
    { " a", 0, 0 },
    { "a ", 0, 0 },
    { "a\tb", 0, 0 },
    { "a\r\nset", 0, 0 },
    { "a\n", 0, 0 },
    { "caf\xc3\xa9", 0, 0 },
    { "\xff", 0, 0 },
    { "\x80", 0, 0 },
    { "a+b", 0, 0 },
    { "a=b", 0, 0 },
    { "a,b", 0, 0 },
    { "a;b", 0, 0 },
    { "a*", 0, 0 },
    { "a?", 0, 0 },
    { "~a", 0, 0 },
    { "a@b", 0, 0 },
    { "a[b]", 0, 0 },
    { "a{b}", 0, 0 },
    { "a`b", 0, 0 },
    { "\x7f", 0, 0 },
};


static void
test_name_table(void **state)
{
    size_t  i, len;

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        len = cases[i].len ? cases[i].len : strlen(cases[i].name);

        if (mq_name_valid(cases[i].name, len) != cases[i].valid) {
            fail_msg("case %zu \"%s\": expected %d", i, cases[i].name,
                     cases[i].valid);
        }
    }
}


static void
test_name_length(void **state)
{
    char  buf[MQ_NAME_MAX + 2];

    (void) state;

    memset(buf, 'a', sizeof(buf));

    assert_int_equal(mq_name_valid(buf, MQ_NAME_MAX), 1);
    assert_int_equal(mq_name_valid(buf, MQ_NAME_MAX - 1), 1);
    assert_int_equal(mq_name_valid(buf, MQ_NAME_MAX + 1), 0);
    assert_int_equal(mq_name_valid(buf, MQ_NAME_MAX + 2), 0);
    assert_int_equal(mq_name_valid(buf, 1), 1);
    assert_int_equal(mq_name_valid(buf, 0), 0);

    /* only the given length is looked at */
    buf[5] = '/';
    assert_int_equal(mq_name_valid(buf, 5), 1);
    assert_int_equal(mq_name_valid(buf, 6), 0);
}


static int
reference_char(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
           || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.'
           || ch == ':' || ch == '-';
}


static void
test_name_char_all_bytes(void **state)
{
    int   ch;
    char  name[2];

    (void) state;

    for (ch = 0; ch < 256; ch++) {
        if (mq_name_char((unsigned char) ch) != reference_char(ch)) {
            fail_msg("byte 0x%02x", ch);
        }

        /* as a single-byte name and as the second byte of a name */
        assert_int_equal(mq_name_valid((char *) &(unsigned char) { ch }, 1),
                         reference_char(ch) && ch != '.');

        name[0] = 'q';
        name[1] = (char) ch;
        assert_int_equal(mq_name_valid(name, 2), reference_char(ch));
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_name_table),
        cmocka_unit_test(test_name_length),
        cmocka_unit_test(test_name_char_all_bytes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
