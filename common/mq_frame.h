/*
 * mq_frame.h: on-disk framing of segment files, journal files and their
 * records.
 *
 * Segment file (one queue's records), format version 2:
 *
 *   offset 0   8 bytes  magic "MQSEG\0\0\2" (the last byte is the version)
 *   offset 8   u32 LE   mark: random, chosen when the file is created
 *   offset 12  u32 LE   CRC32C of bytes 0..11
 *   offset 16  records, back to back, until end of file
 *
 * The file's first sequence number is in its name only.
 *
 * Journal file (every queue's records, in commit order), version 2:
 *
 *   offset 0   8 bytes  magic "MQJNL\0\0\2"
 *   offset 8   u32 LE   mark, as in a segment
 *   offset 12  u32 LE   CRC32C of bytes 0..11
 *   offset 16  records, back to back; the rest of the file is zeros
 *              (preallocated), which no record decodes from
 *
 * The mark is what keeps a client from writing a record: every record's
 * header CRC is XORed with its file's mark, which never leaves the node.
 * A payload that holds bytes shaped like a record (magic, CRCs and all)
 * does not check in any file but one whose mark its writer guessed (one
 * chance in 2^32), so a reader searching for the next record after
 * damage never takes a client's bytes for a record.  When a file header
 * is damaged, the mark is read back from the records themselves: for a
 * record whose header is intact, header CRC XOR stored CRC is the mark
 * (mq_frame_mark_vote()).
 *
 * Record, version 2 (all integers little-endian, encoded field by field,
 * never as a struct dump):
 *
 *   0   u32 magic    MQ_FRAME_MAGIC ("MQR2"): where a record starts
 *   4   u32 hcrc     CRC32C of header bytes 8..47, XOR the file's mark
 *   8   u32 len      payload length in bytes
 *   12  u32 flags    client flags, kept verbatim
 *   16  u32 kind     MQ_FRAME_ITEM in segments; MQ_FRAME_JITEM,
 *                    MQ_FRAME_JDROP, MQ_FRAME_JACK and MQ_FRAME_JACKS
 *                    in the journal
 *   20  u32 pcrc     CRC32C of the payload
 *   24  u64 seq      sequence number within the queue, +1 per record
 *   32  u64 ctime    when stored, unix milliseconds
 *   40  i64 exptime  absolute expiry, unix seconds; 0 = never
 *   48  payload      len bytes
 *
 * The header has a CRC of its own, so a record whose payload is damaged
 * still tells its length and id, and a reader that meets damage finds
 * the next record by looking for the magic and a header CRC that holds.
 *
 * Journal payloads start with the queue name: u8 name length, the name,
 * then (JITEM) the item's bytes.  JDROP marks a queue deleted.  JACK
 * (no bytes after the name) acknowledges the leased item whose id is its
 * seq: recovery never delivers that item again.  JACKS does the same for
 * every id of a list (one delete line or /ack= list): after the name,
 * the ids as u64 LE, 8 bytes each, at least one (seq is 0).  A journal
 * may hold both kinds: JACKS came later, and a reader that does not know
 * it skips the record (its acknowledgements may then come back).
 *
 * Version 1 segments (magic "MQSEG\0\0\1", u64 first sequence number;
 * 40-byte record header: u32 crc over bytes 4..39 and
 * the payload, len, flags, kind, seq, ctime, exptime; no magic) are still
 * read; only version 2 is written.  Changing the format: bump the version,
 * keep a decoder for the old one so existing files are read, write only the
 * new one.
 */

#ifndef MQ_FRAME_H
#define MQ_FRAME_H

#include "mq_common.h"

#define MQ_SEG_VERSION        2
#define MQ_SEG_HDR_SIZE       16    /* both versions; journal too */
#define MQ_JNL_VERSION        2
#define MQ_FRAME_HDR_SIZE     48
#define MQ_FRAME_V1_HDR_SIZE  40
#define MQ_FRAME_MAGIC        0x3252514du    /* "MQR2" in file order */

#define MQ_FRAME_ITEM         1
#define MQ_FRAME_JITEM        2
#define MQ_FRAME_JDROP        3
#define MQ_FRAME_JACK         4
#define MQ_FRAME_JACKS        5

typedef struct {
    uint32_t  crc;       /* v1: record CRC; v2: payload CRC */
    uint32_t  len;       /* payload bytes */
    uint32_t  flags;     /* client flags */
    uint32_t  kind;      /* MQ_FRAME_* */
    uint64_t  seq;       /* sequence number */
    uint64_t  ctime;     /* unix ms */
    int64_t   exptime;   /* unix s, 0 = never */
} mq_frame_hdr_t;

/* distinct marks mq_frame_mark_vote() tells apart, and the payload bytes
 * it checks at most */
#define MQ_MARK_VOTES         16
#define MQ_MARK_WORK          (64u * 1024 * 1024)

/*
 * Writes the MQ_FRAME_HDR_SIZE header bytes of a version 2 record to dst,
 * with the CRC of payload[0..h->len), for a file with this mark.  h->crc
 * is set.
 */
void mq_frame_encode(unsigned char *dst, mq_frame_hdr_t *h,
    const void *payload, uint32_t mark);

/*
 * Decodes the version 2 record that starts at buf, of which avail bytes
 * are present, in a file with this mark.  Returns
 *   MQ_OK       header and payload present and good, len <= max_len, kind
 *               known; h is filled in; the record is MQ_FRAME_HDR_SIZE +
 *               h->len bytes long;
 *   MQ_AGAIN    fewer bytes than the record needs (h->len is set when the
 *               header was present and good, else 0);
 *   MQ_DECLINED the header is good (h filled in, the record's length is
 *               known) but the payload's CRC is not;
 *   MQ_ERROR    no good header here (magic, header CRC, length over
 *               max_len or unknown kind); *err names which.  Nothing
 *               waits for a payload before the header is checked.
 */
int mq_frame_decode(const unsigned char *buf, size_t avail, uint32_t max_len,
    uint32_t mark, mq_frame_hdr_t *h, const char **err);

/* The same for a version 1 record (MQ_FRAME_V1_HDR_SIZE header); it never
 * returns MQ_DECLINED. */
int mq_frame_decode_v1(const unsigned char *buf, size_t avail,
    uint32_t max_len, mq_frame_hdr_t *h, const char **err);

/*
 * Returns the offset of the first place in buf[from..len) where a good
 * version 2 header starts (magic and header CRC hold, len <= max_len), or
 * len when there is none.  A header cut off by the end of buf is not
 * found: callers scanning a file overlap their windows by
 * MQ_FRAME_HDR_SIZE - 1 bytes.
 */
size_t mq_frame_resync(const unsigned char *buf, size_t from, size_t len,
    uint32_t max_len, uint32_t mark);

/*
 * The mark of a file whose header is damaged, read back from its records
 * (buf[from] is where the first record starts).  The first record's mark
 * (header CRC XOR stored CRC) when the record after it checks with that
 * mark; else every place in buf[from..len) that holds a whole version 2
 * record whose payload CRC holds votes (within MQ_MARK_WORK bytes of
 * payload), and the mark with the most votes (the first met on a tie) is
 * set if at least two records agree on it or no record votes otherwise.
 * MQ_OK, or MQ_ERROR when no mark can be trusted.
 */
int mq_frame_mark_vote(const unsigned char *buf, size_t from, size_t len,
    uint32_t max_len, uint32_t *mark);

/* The ids of a JACKS payload (after the name): n u64 LE at dst, and
 * the i-th of them at src. */
void mq_frame_ids_encode(unsigned char *dst, const uint64_t *ids, size_t n);
uint64_t mq_frame_id_get(const unsigned char *src, size_t i);

/* A random mark for a new file. */
uint32_t mq_frame_new_mark(void);

/* Segment header, version MQ_SEG_VERSION. */
void mq_frame_seg_encode(unsigned char *dst, uint32_t mark);

/* MQ_OK with *version (1 or 2) and *mark (0 for version 1) if buf holds a
 * segment header that checks, else MQ_ERROR.  buf must hold
 * MQ_SEG_HDR_SIZE bytes. */
int mq_frame_seg_decode(const unsigned char *buf, unsigned *version,
    uint32_t *mark);

/* Journal file header (MQ_SEG_HDR_SIZE bytes). */
void mq_frame_jnl_encode(unsigned char *dst, uint32_t mark);
int mq_frame_jnl_decode(const unsigned char *buf, uint32_t *mark);

#endif /* MQ_FRAME_H */
