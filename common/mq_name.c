/*
 * mq_name.c: queue-name validation.
 *
 * The allowed set [A-Za-z0-9_.:-] is a 256-bit map, one bit per byte value,
 * so a check is a load and a mask.  Names never start with '.', which rules
 * out "." and ".." (and hidden files) as directory names.
 */

#include "mq_name.h"


/* bit (ch & 31) of word (ch >> 5) is set when ch may appear in a name */
static const uint32_t  mq_name_map[8] = {
    0x00000000,  /* 0x00-0x1f: control bytes */
    0x07ff6000,  /* 0x20-0x3f: '-' '.' '0'-'9' ':' */
    0x87fffffe,  /* 0x40-0x5f: 'A'-'Z' '_' */
    0x07fffffe,  /* 0x60-0x7f: 'a'-'z' */
    0x00000000,  /* 0x80-0xff: nothing outside ASCII */
    0x00000000,
    0x00000000,
    0x00000000
};


int
mq_name_char(unsigned char ch)
{
    return (mq_name_map[ch >> 5] >> (ch & 31)) & 1;
}


int
mq_name_valid(const char *name, size_t len)
{
    size_t                i;
    const unsigned char  *p;

    if (len == 0 || len > MQ_NAME_MAX || name[0] == '.') {
        return 0;
    }

    p = (const unsigned char *) name;

    for (i = 0; i < len; i++) {
        if (!mq_name_char(p[i])) {
            return 0;
        }
    }

    return 1;
}
