/*
 * mq_common.h: return codes shared by everything in common/.
 *
 * The values mirror nginx's (NGX_OK, NGX_ERROR, NGX_AGAIN, NGX_DECLINED) so
 * code in common/ reads the same inside the gateway and inside memqd.
 * common/ includes only libc headers, never logs, never allocates.
 */

#ifndef MQ_COMMON_H
#define MQ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define MQ_OK        0
#define MQ_ERROR    -1
#define MQ_AGAIN    -2
#define MQ_DECLINED -5

#endif /* MQ_COMMON_H */
