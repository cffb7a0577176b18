/*
 * recover.c: rebuilds a queue from its directory at start.
 *
 * Every segment is scanned record by record and every CRC checked.  The
 * first torn or corrupt record of a segment ends it: the file is truncated
 * there and the loss is logged with queue, file, offset and bytes.  In the
 * newest segment that is the expected result of a crash mid-write (warn);
 * anywhere else it is corruption (error).  Records below the position
 * file's watermark were acknowledged before the stop and are skipped.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "mq_frame.h"
#include "segment.h"
#include "server.h"

#define SCAN_BUF  (1024 * 1024)

/* what recovery knows while it scans the segments of one queue */
typedef struct {
    uint64_t   first;        /* position: records below were consumed... */
    uint64_t  *pending;      /* ...except these (ascending), still owed */
    size_t     npending;
    size_t     next_pending; /* index of the next pending seq to meet */
    uint64_t   seg;          /* id of the segment being scanned */
    uint64_t   last_seq;     /* highest seq seen (or first - 1) */
    int        cursor_set;   /* the cursor points at the first record at
                                or above `first` */
} scan_t;


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static int
list_segments(queue_t *q, uint64_t **ids, size_t *n)
{
    DIR            *d;
    size_t          cap;
    uint64_t        id, *a, *t;
    struct dirent  *de;

    d = dir_stream(q->dirfd);
    if (d == NULL) {
        return -1;
    }

    a = NULL;
    *n = 0;
    cap = 0;

    while ((de = readdir(d)) != NULL) {
        if (seg_parse_name(de->d_name, &id) != 0) {
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            t = realloc(a, cap * sizeof(uint64_t));
            if (t == NULL) {
                free(a);
                closedir(d);
                return -1;
            }
            a = t;
        }
        a[(*n)++] = id;
    }

    closedir(d);

    if (*n > 1) {
        qsort(a, *n, sizeof(uint64_t), cmp_u64);
    }

    *ids = a;
    return 0;
}


/* An item that was open or given back when the position was written: it
 * goes back to the head of the queue (records are met in seq order). */
static int
give_back_pending(queue_t *q, uint64_t seg, uint64_t off,
    const mq_frame_hdr_t *h)
{
    size_t       cap;
    item_ref_t  *nr;

    if (q->nret == q->ret_cap) {
        cap = q->ret_cap ? q->ret_cap * 2 : 16;
        nr = realloc(q->ret, cap * sizeof(item_ref_t));
        if (nr == NULL) {
            return -1;
        }
        q->ret = nr;
        q->ret_cap = cap;
    }

    q->ret[q->nret].seq = h->seq;
    q->ret[q->nret].seg = seg;
    q->ret[q->nret].off = off;
    q->ret[q->nret].len = h->len;
    q->nret++;
    q->items++;
    q->bytes += h->len;
    return 0;
}


/*
 * Scans one segment file.  Returns the size of its valid prefix, or 0 if
 * the file has no valid header.  Counts items at or above `first`.  A read
 * error sets *io_error and changes nothing on disk: a passing EIO must not
 * cut valid records off.
 */
static uint64_t
scan_segment(queue_t *q, int fd, const char *fname, int last, scan_t *sc,
    unsigned char **buf, size_t *cap, int *io_error)
{
    int             rc;
    off_t           fsize;
    size_t          blen, pos, want;
    ssize_t         n;
    uint64_t        off, boff, seg_first;
    const char     *err;
    struct stat     st;
    mq_frame_hdr_t  h;

    if (fstat(fd, &st) != 0) {
        *io_error = 1;
        return 0;
    }
    fsize = st.st_size;

    if (fsize < MQ_SEG_HDR_SIZE
        || pread(fd, *buf, MQ_SEG_HDR_SIZE, 0) != MQ_SEG_HDR_SIZE
        || mq_frame_seg_decode(*buf, &seg_first) != MQ_OK)
    {
        return 0;
    }

    off = MQ_SEG_HDR_SIZE;
    boff = off;
    blen = 0;
    err = "torn record";

    for ( ;; ) {
        if ((off_t) off == fsize) {
            break;
        }

        pos = (size_t) (off - boff);
        rc = mq_frame_decode(*buf + pos, blen - pos, UINT32_MAX - 64, &h,
                             &err);

        if (rc == MQ_AGAIN) {
            want = blen - pos < MQ_FRAME_HDR_SIZE
                   ? MQ_FRAME_HDR_SIZE : MQ_FRAME_HDR_SIZE + (size_t) h.len;

            if ((off_t) (off + want) > fsize) {
                err = "torn record";
                break;
            }

            if (want < SCAN_BUF) {
                want = SCAN_BUF;
            }
            if ((off_t) (off + want) > fsize) {
                want = (size_t) (fsize - (off_t) off);
            }

            if (want > *cap) {
                unsigned char *nb = realloc(*buf, want);
                if (nb == NULL) {
                    *io_error = 1;
                    return 0;
                }
                *buf = nb;
                *cap = want;
            }

            n = pread(fd, *buf, want, (off_t) off);
            if (n < 0 || (size_t) n != want) {
                log_error("recover", "%s/%s:%" PRIu64 ": read: %s", q->name,
                          fname, off, n < 0 ? strerror(errno) : "short");
                *io_error = 1;
                return 0;
            }

            boff = off;
            blen = want;
            continue;
        }

        if (rc != MQ_OK) {
            break;
        }

        if (h.seq >= sc->first) {
            if (!sc->cursor_set) {
                /* first undelivered record: the cursor starts here */
                q->rseg = q->nsegs;
                q->roff = off;
                q->rseq = h.seq;
                sc->cursor_set = 1;
            }
            q->items++;
            q->bytes += h.len;

        } else {
            while (sc->next_pending < sc->npending
                   && sc->pending[sc->next_pending] < h.seq)
            {
                sc->next_pending++;
            }

            if (sc->next_pending < sc->npending
                && sc->pending[sc->next_pending] == h.seq
                && give_back_pending(q, sc->seg, off, &h) != 0)
            {
                *io_error = 1;
                return 0;
            }
        }

        if (h.seq > sc->last_seq) {
            sc->last_seq = h.seq;
        }

        off += MQ_FRAME_HDR_SIZE + h.len;
    }

    if ((off_t) off < fsize) {
        if (last) {
            log_warn("recover", "%s/%s:%" PRIu64 ": %s, truncated %" PRIu64
                     " bytes", q->name, fname, off, err,
                     (uint64_t) (fsize - (off_t) off));
        } else {
            log_error("recover", "%s/%s:%" PRIu64 ": corrupt segment (%s), "
                      "truncated %" PRIu64 " bytes", q->name, fname, off,
                      err, (uint64_t) (fsize - (off_t) off));
        }

        if (ftruncate(fd, (off_t) off) != 0 || fdatasync(fd) != 0) {
            log_error("recover", "%s/%s: truncate: %s", q->name, fname,
                      strerror(errno));
        }
    }

    return off;
}


int
recover_queue(queue_t *q)
{
    int             fd, io_error;
    char            fname[SEG_NAME_LEN + 1], bad[SEG_NAME_LEN + 9];
    size_t          i, nids, cap;
    seg_t          *s;
    uint64_t        *ids, size;
    scan_t          sc;
    unsigned char  *buf;

    memset(&sc, 0, sizeof(sc));
    position_read_pending(q->dirfd, &sc.first, &sc.pending, &sc.npending);

    if (list_segments(q, &ids, &nids) != 0) {
        log_error("recover", "%s: cannot list: %s", q->name, strerror(errno));
        return -1;
    }

    cap = SCAN_BUF;
    buf = malloc(cap);
    q->segs = calloc(nids ? nids : 1, sizeof(seg_t));
    if (buf == NULL || q->segs == NULL) {
        free(buf);
        free(ids);
        return -1;
    }
    q->segs_cap = nids ? nids : 1;

    sc.last_seq = sc.first ? sc.first - 1 : 0;
    q->rseq = 0;

    for (i = 0; i < nids; i++) {
        seg_name(fname, ids[i]);

        fd = openat(q->dirfd, fname, O_RDWR | O_CLOEXEC);
        if (fd == -1) {
            log_error("recover", "%s/%s: open: %s", q->name, fname,
                      strerror(errno));
            continue;
        }

        io_error = 0;
        sc.seg = ids[i];
        size = scan_segment(q, fd, fname, i + 1 == nids, &sc, &buf, &cap,
                            &io_error);

        if (io_error) {
            close(fd);
            free(buf);
            free(ids);
            free(sc.pending);
            return -1;
        }

        if (size == 0) {
            close(fd);

            if (i + 1 == nids) {
                /* the newest segment's creation was cut short */
                log_warn("recover", "%s/%s: no valid header, removed",
                         q->name, fname);
                unlinkat(q->dirfd, fname, 0);
                continue;
            }

            /* an older one: keep the bytes for inspection, skip them */
            snprintf(bad, sizeof(bad), "%s.corrupt", fname);
            log_error("recover", "%s/%s: corrupt segment header, renamed to "
                      "%s", q->name, fname, bad);
            renameat(q->dirfd, fname, q->dirfd, bad);
            continue;
        }

        s = &q->segs[q->nsegs++];
        s->id = ids[i];
        s->fd = fd;
        s->size = size;

        if (ids[i] > sc.last_seq + 1) {
            sc.last_seq = ids[i] - 1;
        }
    }

    free(buf);
    free(ids);
    free(sc.pending);

    q->next_seq = sc.last_seq + 1;

    if (!sc.cursor_set) {
        /* nothing undelivered: cursor at the end of the tail */
        q->rseg = q->nsegs ? q->nsegs - 1 : 0;
        q->roff = q->nsegs ? q->segs[q->rseg].size : 0;
        q->rseq = q->next_seq;
    }

    if (q->nsegs > 0) {
        q->wbase = q->segs[q->nsegs - 1].size;
    }

    q->pos_written = q->nret > 0 && q->ret[0].seq < sc.first
                     ? q->ret[0].seq : sc.first;
    q->pos_dirty = 1;

    if (q->items > 0) {
        log_info("recover", "%s: %zu segments, %" PRIu64 " items, %" PRIu64
                 " bytes, next seq %" PRIu64, q->name, q->nsegs, q->items,
                 q->bytes, q->next_seq);
    }

    return 0;
}
