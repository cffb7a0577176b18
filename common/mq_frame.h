/*
 * mq_frame.h: on-disk framing of segment files and their records.
 *
 * Segment file, format version 1:
 *
 *   offset 0   8 bytes  magic "MQSEG\0\0\1" (the last byte is the version)
 *   offset 8   8 bytes  u64 LE: sequence number of the first record
 *   offset 16  records, back to back, until end of file
 *
 * Record (all integers little-endian, encoded field by field, never as a
 * struct dump):
 *
 *   0   u32 crc      CRC32C of bytes 4..39 of the header and the payload
 *   4   u32 len      payload length in bytes
 *   8   u32 flags    client flags, kept verbatim
 *   12  u32 kind     MQ_FRAME_ITEM (other values are reserved: a reader
 *                    treats them as corruption)
 *   16  u64 seq      sequence number within the queue, +1 per record
 *   24  u64 ctime    when stored, unix milliseconds
 *   32  i64 exptime  absolute expiry, unix seconds; 0 = never
 *   40  payload      len bytes
 *
 * Changing the format: bump MQ_SEG_VERSION, keep a decoder for the old
 * version so recovery can read existing files, and write only the new one.
 */

#ifndef MQ_FRAME_H
#define MQ_FRAME_H

#include "mq_common.h"

#define MQ_SEG_VERSION      1
#define MQ_SEG_HDR_SIZE     16
#define MQ_FRAME_HDR_SIZE   40
#define MQ_FRAME_ITEM       1

typedef struct {
    uint32_t  crc;       /* as stored; set by decode, computed by encode */
    uint32_t  len;       /* payload bytes */
    uint32_t  flags;     /* client flags */
    uint32_t  kind;      /* MQ_FRAME_ITEM */
    uint64_t  seq;       /* sequence number */
    uint64_t  ctime;     /* unix ms */
    int64_t   exptime;   /* unix s, 0 = never */
} mq_frame_hdr_t;

/*
 * Writes the MQ_FRAME_HDR_SIZE header bytes of a record to dst, computing
 * the CRC over the header fields and payload[0..h->len).  h->crc is set.
 */
void mq_frame_encode(unsigned char *dst, mq_frame_hdr_t *h,
    const void *payload);

/*
 * Decodes the record that starts at buf, of which avail bytes are present.
 * Returns
 *   MQ_OK     header and payload present, len <= max_len, kind known, CRC
 *             good; h is filled in; the record is MQ_FRAME_HDR_SIZE + h->len
 *             bytes long;
 *   MQ_AGAIN  fewer bytes than the record needs (h->len is set when at
 *             least the header was present, else 0);
 *   MQ_ERROR  bad length, unknown kind or CRC mismatch; *err names which.
 *             A length over max_len is reported as soon as the length field
 *             (bytes 4..7) is present, an unknown kind as soon as the header
 *             is: neither waits for the payload.
 */
int mq_frame_decode(const unsigned char *buf, size_t avail, uint32_t max_len,
    mq_frame_hdr_t *h, const char **err);

/* Writes the MQ_SEG_HDR_SIZE segment header. */
void mq_frame_seg_encode(unsigned char *dst, uint64_t first_seq);

/* MQ_OK and *first_seq set if buf holds a valid segment header, else
 * MQ_ERROR. buf must hold MQ_SEG_HDR_SIZE bytes. */
int mq_frame_seg_decode(const unsigned char *buf, uint64_t *first_seq);

#endif /* MQ_FRAME_H */
