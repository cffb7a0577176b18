/*
 * segment.c: segment file names and creation, the position file.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mq_crc32c.h"
#include "mq_frame.h"
#include "segment.h"
#include "server.h"
#include "sys.h"

#define POS_FILE      "position"
#define POS_TMP       "position.tmp"
#define POS_SIZE      20           /* version 1 */
#define POS2_MIN      28           /* version 2 without pending items */
#define POS_MAX_SIZE  (POS2_MIN + 12 * (uint64_t) 64 * 1024 * 1024)
#define POS_SECTOR    512          /* see overwrite() */

static const unsigned char  pos_magic[8] = {
    'M', 'Q', 'P', 'O', 'S', 0, 0, 1
};
static const unsigned char  pos2_magic[8] = {
    'M', 'Q', 'P', 'O', 'S', 0, 0, 2
};
static const unsigned char  pos3_magic[8] = {
    'M', 'Q', 'P', 'O', 'S', 0, 0, 3
};


DIR *
dir_stream(int dirfd)
{
    int   fd;
    DIR  *d;

    /* a new fd: closedir() must not close the caller's */
    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1) {
        return NULL;
    }

    d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
    }

    return d;
}


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
seg_create(const char *qname, uint64_t id, uint32_t mark)
{
    int            fd, err;
    char           path[MQ_NAME_MAX + SEG_NAME_LEN + 2];
    unsigned char  hdr[MQ_SEG_HDR_SIZE];

    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".seg", qname, id);

    fd = openat(srv.data_fd, path,
                O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd == -1) {
        err = errno;
        log_error("segment", "%s: create: %s", path, strerror(errno));
        errno = err;
        return -1;
    }

    mq_frame_seg_encode(hdr, mark);

    if (seg_pwrite(fd, hdr, sizeof(hdr), 0) != 0) {
        err = errno;
        log_error("segment", "%s: write: %s", path, strerror(errno));
        close(fd);
        unlinkat(srv.data_fd, path, 0);
        errno = err;
        return -1;
    }

    close(fd);
    return 0;
}


static void
put_u64(unsigned char *p, uint64_t v)
{
    int  i;

    for (i = 0; i < 8; i++) {
        p[i] = (unsigned char) (v >> (8 * i));
    }
}


static void
put_u32(unsigned char *p, uint32_t v)
{
    int  i;

    for (i = 0; i < 4; i++) {
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


static int
read_all(int dirfd, unsigned char **buf, size_t *len)
{
    int             fd;
    ssize_t         n;
    struct stat     st;
    unsigned char  *b;

    /* (non-blocking: a FIFO put in its place must not hold the node) */
    fd = openat(dirfd, POS_FILE, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)
        || (uint64_t) st.st_size > POS_MAX_SIZE)
    {
        close(fd);
        return -1;
    }

    b = malloc((size_t) st.st_size + 1);
    if (b == NULL) {
        close(fd);
        return -1;
    }

    n = read(fd, b, (size_t) st.st_size + 1);
    close(fd);

    if (n != (ssize_t) st.st_size) {
        free(b);
        return -1;
    }

    *buf = b;
    *len = (size_t) n;
    return 0;
}


static uint32_t
get_u32(const unsigned char *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}


int
position_read_counts(int dirfd, uint64_t *seq, uint64_t **pending,
    uint32_t **counts, size_t *npending)
{
    int             v3;
    size_t          len, i, each;
    uint64_t        n, *arr;
    uint32_t       *cnt;
    unsigned char  *b;

    *seq = 0;
    *pending = NULL;
    *counts = NULL;
    *npending = 0;

    if (read_all(dirfd, &b, &len) != 0) {
        return -1;
    }

    if (len == POS_SIZE && memcmp(b, pos_magic, 8) == 0
        && get_u32(b + 16) == mq_crc32c(0, b, 16))
    {
        *seq = get_u64(b + 8);
        free(b);
        return 0;
    }

    v3 = len >= POS2_MIN && memcmp(b, pos3_magic, 8) == 0;

    if (len < POS2_MIN || (!v3 && memcmp(b, pos2_magic, 8) != 0)
        || get_u32(b + len - 4) != mq_crc32c(0, b, len - 4))
    {
        free(b);
        return -1;
    }

    each = v3 ? 12 : 8;
    n = get_u64(b + 16);
    if (n != (len - POS2_MIN) / each || (len - POS2_MIN) % each != 0) {
        free(b);
        return -1;
    }

    arr = NULL;
    cnt = NULL;
    if (n > 0) {
        arr = malloc((size_t) n * sizeof(uint64_t));
        cnt = v3 ? malloc((size_t) n * sizeof(uint32_t)) : NULL;
        if (arr == NULL || (v3 && cnt == NULL)) {
            free(arr);
            free(cnt);
            free(b);
            return -1;
        }
        for (i = 0; i < n; i++) {
            arr[i] = get_u64(b + 24 + 8 * i);
            if (v3) {
                cnt[i] = get_u32(b + 24 + 8 * n + 4 * i);
            }
        }
    }

    *seq = get_u64(b + 8);
    *pending = arr;
    *counts = cnt;
    *npending = (size_t) n;
    free(b);
    return 0;
}


int
position_read_pending(int dirfd, uint64_t *seq, uint64_t **pending,
    size_t *npending)
{
    int        rc;
    uint32_t  *counts;

    rc = position_read_counts(dirfd, seq, pending, &counts, npending);
    free(counts);
    return rc;
}


int
position_read(int dirfd, uint64_t *seq)
{
    int        rc;
    size_t     n;
    uint64_t  *pending;

    rc = position_read_pending(dirfd, seq, &pending, &n);
    free(pending);
    return rc;
}


int
position_save(int dirfd, uint64_t seq, const uint64_t *pending, size_t n)
{
    return position_save_counts(dirfd, NULL, seq, pending, NULL, n);
}


/*
 * Writes a position record over the file's own bytes when the file holds
 * one of the same length within one sector: no new inode, no rename, no
 * change to the directory.  A new file renamed over the old one cost an
 * inode allocated and one freed a write, and ext4 starts the new file's
 * write-back at such a rename: with 4096 queues consumed in turn that was
 * 45% of the node's CPU (BENCHMARKS.md).  Neither way is fsynced.  After
 * a power cut a rename leaves the old record or the new one, and so does
 * a sector written in place on a disk that writes a sector whole (what
 * PostgreSQL counts on for pg_control).  A disk that does not, cut while
 * it writes that very sector, leaves one that fails its CRC: the queue is
 * then read again from its oldest file (docs/memqd.md says what comes
 * back).  A record longer than a sector, or of another
 * length than the file's, is still renamed into place.  1 written, 0 not
 * possible here, -1 failed.
 */
static int
overwrite(int dirfd, const char *path, const unsigned char *buf, size_t len)
{
    int          fd, rc;
    struct stat  st;

    if (len > POS_SECTOR) {
        return 0;
    }

    fd = openat(dirfd, path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd == -1) {
        return 0;
    }

    rc = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1
        && (uint64_t) st.st_size == len)
    {
        rc = seg_pwrite(fd, buf, len, 0) == 0 ? 1 : -1;
    }

    close(fd);
    return rc;
}


int
position_save_counts(int dirfd, const char *qname, uint64_t seq,
    const uint64_t *pending, const uint32_t *counts, size_t n)
{
    int             fd, rc;
    char            path[MQ_NAME_MAX + sizeof("/" POS_TMP)];
    char            tmp[MQ_NAME_MAX + sizeof("/" POS_TMP)];
    size_t          len, i;
    uint32_t        crc;
    unsigned char  *buf, small[POS_SIZE];

    if (qname != NULL && strlen(qname) > MQ_NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }

    snprintf(path, sizeof(path), "%s%s" POS_FILE, qname ? qname : "",
             qname ? "/" : "");
    snprintf(tmp, sizeof(tmp), "%s%s" POS_TMP, qname ? qname : "",
             qname ? "/" : "");

    for (i = 0; counts != NULL && i < n && counts[i] == 0; i++) {
        /* void */
    }

    if (counts != NULL && i == n) {
        counts = NULL;          /* no item delivered yet: version 2 */
    }

    if (n == 0) {
        /* version 1: the watermark alone */
        buf = small;
        len = POS_SIZE;
        memcpy(buf, pos_magic, 8);
        put_u64(buf + 8, seq);

    } else {
        len = POS2_MIN + (counts ? 12 : 8) * n;
        buf = malloc(len);
        if (buf == NULL) {
            return -1;
        }
        memcpy(buf, counts ? pos3_magic : pos2_magic, 8);
        put_u64(buf + 8, seq);
        put_u64(buf + 16, n);
        for (i = 0; i < n; i++) {
            put_u64(buf + 24 + 8 * i, pending[i]);
        }
        for (i = 0; counts != NULL && i < n; i++) {
            put_u32(buf + 24 + 8 * n + 4 * i, counts[i]);
        }
    }

    crc = mq_crc32c(0, buf, len - 4);
    buf[len - 4] = (unsigned char) crc;
    buf[len - 3] = (unsigned char) (crc >> 8);
    buf[len - 2] = (unsigned char) (crc >> 16);
    buf[len - 1] = (unsigned char) (crc >> 24);

    rc = overwrite(dirfd, path, buf, len);
    if (rc != 0) {
        if (buf != small) {
            free(buf);
        }
        return rc == 1 ? 0 : -1;
    }

    rc = -1;

    fd = openat(dirfd, tmp,
                O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd != -1) {
        if (seg_pwrite(fd, buf, len, 0) == 0) {
            rc = 0;
        }
        close(fd);
    }

    if (buf != small) {
        free(buf);
    }

    /* no fsync: a lost position only means items delivered again */
    return rc == 0 ? renameat(dirfd, tmp, dirfd, path) : -1;
}


int
position_write(int dirfd, uint64_t seq)
{
    return position_save(dirfd, seq, NULL, 0);
}
