/*
 * mq_crc32c.h: CRC32C (Castagnoli), the checksum of every stored record.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it, a slicing table
 * otherwise.  mq_crc32c(0, p, n) is the standard CRC32C of p[0..n)
 * ("123456789" -> 0xe3069283); pass a previous result as crc to continue.
 */

#ifndef MQ_CRC32C_H
#define MQ_CRC32C_H

#include "mq_common.h"

uint32_t mq_crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable table path, same result as mq_crc32c(); for tests and for
 * comparing the two paths. */
uint32_t mq_crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif /* MQ_CRC32C_H */
