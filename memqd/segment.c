/*
 * segment.c: segment file names and creation, the position file.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mq_crc32c.h"
#include "mq_frame.h"
#include "segment.h"
#include "sys.h"

#define POS_FILE      "position"
#define POS_TMP       "position.tmp"
#define POS_SIZE      20

static const unsigned char  pos_magic[8] = { 'M', 'Q', 'P', 'O', 'S', 0, 0, 1 };


void
seg_name(char *buf, uint64_t id)
{
    snprintf(buf, SEG_NAME_LEN + 1, "%020" PRIu64 ".seg", id);
}


int
seg_parse_name(const char *name, uint64_t *id)
{
    size_t    i;
    uint64_t  v, d;

    if (strlen(name) != SEG_NAME_LEN || strcmp(name + 20, ".seg") != 0) {
        return -1;
    }

    v = 0;
    for (i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9') {
            return -1;
        }
        d = (uint64_t) (name[i] - '0');
        if (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > 5)) {
            return -1;
        }
        v = v * 10 + d;
    }

    *id = v;
    return 0;
}


int
seg_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    ssize_t               n;
    const unsigned char  *p;

    p = buf;

    while (len > 0) {
        n = sys.pwrite(fd, p, len, (off_t) off);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t) n;
        off += (uint64_t) n;
    }

    return 0;
}


int
seg_create(int dirfd, const char *qname, uint64_t id)
{
    int            fd;
    char           name[SEG_NAME_LEN + 1];
    unsigned char  hdr[MQ_SEG_HDR_SIZE];

    seg_name(name, id);

    fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd == -1) {
        log_error("segment", "%s/%s: create: %s", qname, name,
                  strerror(errno));
        return -1;
    }

    mq_frame_seg_encode(hdr, id);

    if (seg_pwrite(fd, hdr, sizeof(hdr), 0) != 0) {
        log_error("segment", "%s/%s: write: %s", qname, name,
                  strerror(errno));
        close(fd);
        unlinkat(dirfd, name, 0);
        return -1;
    }

    return fd;
}


static void
put_u64(unsigned char *p, uint64_t v)
{
    int  i;

    for (i = 0; i < 8; i++) {
        p[i] = (unsigned char) (v >> (8 * i));
    }
}


static uint64_t
get_u64(const unsigned char *p)
{
    int       i;
    uint64_t  v;

    v = 0;
    for (i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }

    return v;
}


int
position_read(int dirfd, uint64_t *seq)
{
    int            fd;
    ssize_t        n;
    uint32_t       crc;
    unsigned char  buf[POS_SIZE + 1];

    *seq = 0;

    fd = openat(dirfd, POS_FILE, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    n = read(fd, buf, sizeof(buf));
    close(fd);

    if (n != POS_SIZE || memcmp(buf, pos_magic, 8) != 0) {
        return -1;
    }

    crc = (uint32_t) buf[16] | (uint32_t) buf[17] << 8
          | (uint32_t) buf[18] << 16 | (uint32_t) buf[19] << 24;

    if (crc != mq_crc32c(0, buf, 16)) {
        return -1;
    }

    *seq = get_u64(buf + 8);
    return 0;
}


int
position_write(int dirfd, uint64_t seq)
{
    int            fd;
    uint32_t       crc;
    unsigned char  buf[POS_SIZE];

    memcpy(buf, pos_magic, 8);
    put_u64(buf + 8, seq);
    crc = mq_crc32c(0, buf, 16);
    buf[16] = (unsigned char) crc;
    buf[17] = (unsigned char) (crc >> 8);
    buf[18] = (unsigned char) (crc >> 16);
    buf[19] = (unsigned char) (crc >> 24);

    fd = openat(dirfd, POS_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0644);
    if (fd == -1) {
        return -1;
    }

    if (seg_pwrite(fd, buf, sizeof(buf), 0) != 0) {
        close(fd);
        return -1;
    }

    close(fd);

    /* no fsync: a lost position only means items delivered again */
    return renameat(dirfd, POS_TMP, dirfd, POS_FILE);
}
