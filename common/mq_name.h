/*
 * mq_name.h: queue-name validation, the single gate against path and
 * protocol injection.
 *
 * A queue name is 1..MQ_NAME_MAX bytes of [A-Za-z0-9_.:-] and does not start
 * with '.'.  Such a name can be used as a directory name under the data
 * directory as is: it has no '/', no NUL, and is never "." or "..".
 */

#ifndef MQ_NAME_H
#define MQ_NAME_H

#include "mq_common.h"

#define MQ_NAME_MAX  250

/* 1 if the byte may appear in a queue name, 0 otherwise. */
int mq_name_char(unsigned char ch);

/* 1 if name[0..len) is a valid queue name, 0 otherwise. */
int mq_name_valid(const char *name, size_t len);

#endif /* MQ_NAME_H */
