/*
 * recover.c: rebuilds the queues from the data directory at start.
 *
 * 1. The journal (journal.h) is scanned: for each queue, the first id it
 *    holds after the queue's last deletion.  Records from that id on may
 *    be missing or torn in the queue's files (they were not synced yet),
 *    but the journal has every one that was acknowledged.
 * 2. Each queue's segments are scanned record by record.  Damage at or
 *    past the journal's first id is cut off (the journal fills it in);
 *    damage below it costs the damaged records only: the scan finds the
 *    next good record by its magic and header CRC, logs file, offset and
 *    the ids lost at error, and counts them (srv.corrupt_records).  Only a
 *    torn tail of the newest segment (no good record after it) is
 *    truncated.  Nothing valid is unlinked; a file that cannot be read
 *    stops the start.
 * 3. The journal is replayed into the queue files: every record above the
 *    queue's last id.
 * 4. The caller syncs the queue files and removes the journal.
 *
 * With srv.check_only nothing on disk changes: damage is reported only.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "mq_frame.h"
#include "mq_name.h"
#include "queue.h"
#include "segment.h"
#include "server.h"

#define SCAN_BUF   (1024 * 1024)
#define JQ_HASH    1024
#define MAX_LEN    (UINT32_MAX - 64)
#define ACK_RANGE_MAX  (4 * 1024 * 1024)   /* ids made owed to honour
                                              acks above the cursor */

/* what the journal says about one queue */
typedef struct jq_s  jq_t;
struct jq_s {
    char       name[MQ_NAME_MAX + 1];
    size_t     len;
    uint64_t   first;       /* first id after the last drop, 0 if none */
    uint64_t   drop_rec;    /* record index of the last drop + 1, 0 none */
    uint64_t  *acks;        /* leases acknowledged after the last drop */
    size_t     nacks;
    size_t     acks_cap;
    int        acks_sorted; /* sorted, repeats removed */
    jq_t      *next;
};

typedef struct {
    uint64_t        number;
    unsigned char  *map;    /* the whole file, read only */
    size_t          size;
    uint32_t        mark;   /* its records' mark (mq_frame.h) */
} jfile_t;

struct jscan_s {
    jfile_t   *files;
    size_t     nfiles;
    jq_t      *hash[JQ_HASH];
    uint64_t   records;
};

/* what recovery knows while it scans the segments of one queue */
typedef struct {
    uint64_t   first;        /* position: records below were consumed... */
    uint64_t  *pending;      /* ...except these (ascending), still owed */
    uint32_t  *counts;       /* their delivery counts, or NULL */
    size_t     npending;
    size_t     next_pending; /* index of the next pending seq to meet */
    uint64_t   seg;          /* id of the segment being scanned */
    uint64_t   last_seq;     /* highest seq seen (or first - 1) */
    uint64_t   files_last;   /* highest seq decoded from the files */
    uint64_t   jfirst;       /* the journal holds ids from here, 0 none */
    uint64_t   next_first;   /* first id of the next segment file, 0 */
    int        cursor_set;   /* the cursor points at the first record at
                                or above `first` */
    int        cut;          /* the rest comes from the journal */
} scan_t;


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static int
list_segments(int dirfd, uint64_t **ids, size_t *n)
{
    DIR            *d;
    size_t          cap;
    uint64_t        id, *a, *t;
    struct dirent  *de;

    d = dir_stream(dirfd);
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
    const mq_frame_hdr_t *h, uint32_t deliveries)
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
    q->ret[q->nret].deliveries = deliveries;
    q->nret++;
    q->items++;
    q->bytes += h->len;
    return 0;
}



static int
push_skip(queue_t *q, uint64_t seg, uint64_t off, uint64_t next,
    uint64_t next_seq)
{
    skip_t  *ns;

    ns = realloc(q->skips, (q->nskips + 1) * sizeof(skip_t));
    if (ns == NULL) {
        return -1;
    }

    q->skips = ns;
    q->skips[q->nskips].seg = seg;
    q->skips[q->nskips].off = off;
    q->skips[q->nskips].next = next;
    q->skips[q->nskips].next_seq = next_seq;
    q->nskips++;
    return 0;
}


/* Reads [off, off + want) of fd into *buf (grown as needed): 0 or -1. */
static int
read_at(int fd, unsigned char **buf, size_t *cap, size_t want, uint64_t off)
{
    ssize_t  n;

    if (want > *cap) {
        unsigned char *nb = realloc(*buf, want);
        if (nb == NULL) {
            return -1;
        }
        *buf = nb;
        *cap = want;
    }

    n = pread(fd, *buf, want, (off_t) off);
    if (n < 0 || (size_t) n != want) {
        if (n >= 0) {
            errno = EIO;
        }
        return -1;
    }

    return 0;
}


/*
 * Finds the next good version 2 record of a file after offset `from`
 * whose id lies in [lo, hi]: its offset (fsize if none) and seq (0 if
 * none).  The bounds keep a frame that a client wrote inside a payload
 * from passing for a record with an absurd id.  0 or -1 on a read error.
 */
static int
find_next(int fd, uint64_t from, uint64_t fsize, uint64_t lo, uint64_t hi,
    uint32_t mark, unsigned char **buf, size_t *cap, uint64_t *next,
    uint64_t *next_seq)
{
    size_t          at, want;
    uint64_t        pos;
    const char     *err;
    mq_frame_hdr_t  h;

    *next = fsize;
    *next_seq = 0;

    for (pos = from; pos + MQ_FRAME_HDR_SIZE <= fsize;
         pos += SCAN_BUF - MQ_FRAME_HDR_SIZE)
    {
        want = fsize - pos < SCAN_BUF ? (size_t) (fsize - pos) : SCAN_BUF;
        if (read_at(fd, buf, cap, want, pos) != 0) {
            return -1;
        }

        for (at = mq_frame_resync(*buf, 0, want, MAX_LEN, mark); at < want;
             at = mq_frame_resync(*buf, at + 1, want, MAX_LEN, mark))
        {
            mq_frame_decode(*buf + at, want - at, MAX_LEN, mark, &h, &err);
            if (h.seq >= lo && h.seq <= hi && h.kind == MQ_FRAME_ITEM) {
                *next = pos + at;
                *next_seq = h.seq;
                return 0;
            }
        }

        if (want < SCAN_BUF) {
            break;
        }
    }

    return 0;
}


/* A good record of the queue: counts it, sets the cursor. */
static int
count_record(queue_t *q, scan_t *sc, uint64_t off, const mq_frame_hdr_t *h)
{
    if (h->seq >= sc->first) {
        if (!sc->cursor_set) {
            /* first undelivered record: the cursor starts here */
            q->rseg = q->nsegs;
            q->roff = off;
            q->rseq = h->seq;
            sc->cursor_set = 1;
        }
        q->items++;
        q->bytes += h->len;

    } else {
        while (sc->next_pending < sc->npending
               && sc->pending[sc->next_pending] < h->seq)
        {
            sc->next_pending++;
        }

        if (sc->next_pending < sc->npending
            && sc->pending[sc->next_pending] == h->seq
            && give_back_pending(q, sc->seg, off, h,
                                 sc->counts ? sc->counts[sc->next_pending]
                                            : 0) != 0)
        {
            return -1;
        }
    }

    if (h->seq > sc->last_seq) {
        sc->last_seq = h->seq;
    }

    if (h->seq > sc->files_last) {
        sc->files_last = h->seq;
    }

    return 0;
}


static void
truncate_at(queue_t *q, int fd, const char *fname, uint64_t off)
{
    if (srv.check_only) {
        return;
    }

    if (ftruncate(fd, (off_t) off) != 0 || fdatasync(fd) != 0) {
        log_error("recover", "%s/%s: truncate: %s", q->name, fname,
                  strerror(errno));
    }
}


/* The length field of a record header at p (not checked: only used to
 * decide whether the window must move). */
static uint64_t
peek_len(const unsigned char *p, unsigned ver)
{
    const unsigned char  *l;

    l = ver == 1 ? p + 4 : p + 8;
    return (uint64_t) l[0] | (uint64_t) l[1] << 8 | (uint64_t) l[2] << 16
           | (uint64_t) l[3] << 24;
}


/*
 * Scans one segment file.  Returns the size of its data (what the reader
 * may look at), or -1 on a read error (nothing changed on disk: a passing
 * EIO must not cut valid records off).
 */
static int64_t
scan_segment(queue_t *q, int fd, const char *fname, int last, scan_t *sc,
    unsigned *ver, uint32_t *mark, unsigned char **buf, size_t *cap)
{
    int             rc;
    off_t           fsize;
    int             trusted, suspect;
    size_t          hsz, want, avail;
    uint64_t        off, next, next_seq, lost, boff, blen, lo, hi, end;
    const unsigned char  *p;
    const char     *err;
    struct stat     st;
    mq_frame_hdr_t  h;

    if (fstat(fd, &st) != 0) {
        return -1;
    }
    fsize = st.st_size;

    *ver = MQ_SEG_VERSION;
    *mark = 0;

    if (fsize < MQ_SEG_HDR_SIZE) {
        if (read_at(fd, buf, cap, (size_t) fsize, 0) != 0) {
            return -1;
        }
        /* creation cut short: nothing in it */
        return 0;
    }

    if (read_at(fd, buf, cap, MQ_SEG_HDR_SIZE, 0) != 0) {
        return -1;
    }

    suspect = mq_frame_seg_decode(*buf, ver, mark) != MQ_OK;

    if (!suspect && *ver == 1) {
        /* a version byte damaged into 1: a version 2 record tells (a
         * version 1 file, written before marks, holds none that checks) */
        want = (size_t) fsize < SCAN_BUF ? (size_t) fsize : SCAN_BUF;
        if (read_at(fd, buf, cap, want, 0) != 0) {
            return -1;
        }
        suspect = mq_frame_mark_vote(*buf, MQ_SEG_HDR_SIZE, want, MAX_LEN,
                                     mark) == MQ_OK;
        *mark = 0;
    }

    if (suspect) {
        /* the records carry their own framing (and the mark): read them
         * anyway, in the format they show, and cut nothing off a file
         * whose header cannot be trusted */
        log_error("recover", "%s/%s: damaged segment header, records read "
                  "by their own framing", q->name, fname);
        *ver = 0;
        last = 0;

        /* a record bigger than the first window: one more, large enough
         * for the largest item */
        for (want = SCAN_BUF; *ver == 0;
             want = SCAN_BUF + (size_t) srv.max_item_size + MQ_FRAME_HDR_SIZE)
        {
            if ((off_t) want > fsize) {
                want = (size_t) fsize;
            }
            if (read_at(fd, buf, cap, want, 0) != 0) {
                return -1;
            }
            if (mq_frame_mark_vote(*buf, MQ_SEG_HDR_SIZE, want, MAX_LEN,
                                   mark) == MQ_OK)
            {
                *ver = MQ_SEG_VERSION;
            } else if (want == (size_t) fsize || want > SCAN_BUF) {
                break;
            }
        }

        /* no version 2 record: a version 1 record (its CRC covers header
         * and payload: it does not happen to check) tells an old file */
        if (want > SCAN_BUF) {
            want = SCAN_BUF;
        }
        for (boff = MQ_SEG_HDR_SIZE;
             *ver == 0 && boff + MQ_FRAME_V1_HDR_SIZE <= want; boff++)
        {
            if (mq_frame_decode_v1(*buf + boff, want - boff, MAX_LEN, &h,
                                   &err) == MQ_OK
                && h.seq >= sc->seg)
            {
                *ver = 1;
            }
        }

        if (*ver == 0) {
            /* nothing in it reads: every record counts as damaged */
            *ver = MQ_SEG_VERSION;
            *mark = 0;
        }
    }

    hsz = *ver == 1 ? MQ_FRAME_V1_HDR_SIZE : MQ_FRAME_HDR_SIZE;
    off = MQ_SEG_HDR_SIZE;

    boff = 0;
    blen = 0;
    trusted = 1;        /* off was reached by decoding, not by a search */

    while ((off_t) off < fsize) {
        if (off < boff || off + hsz > boff + blen
            || (off + hsz + peek_len(*buf + (off - boff), *ver)
                > boff + blen && boff + blen < (uint64_t) fsize))
        {
            /* refill the window from off */
            want = (size_t) (fsize - (off_t) off) < SCAN_BUF
                   ? (size_t) (fsize - (off_t) off) : SCAN_BUF;
            if (read_at(fd, buf, cap, want, off) != 0) {
                return -1;
            }
            boff = off;
            blen = want;
        }

        p = *buf + (off - boff);
        avail = (size_t) (boff + blen - off);

        rc = *ver == 1 ? mq_frame_decode_v1(p, avail, MAX_LEN, &h, &err)
                       : mq_frame_decode(p, avail, MAX_LEN, *mark, &h, &err);

        if (rc == MQ_AGAIN && h.len > 0 && (off_t) (off + hsz + h.len)
                                            <= fsize)
        {
            /* larger than the scan buffer */
            if (read_at(fd, buf, cap, hsz + h.len, off) != 0) {
                return -1;
            }
            boff = off;
            blen = hsz + h.len;
            p = *buf;
            rc = *ver == 1
                 ? mq_frame_decode_v1(p, blen, MAX_LEN, &h, &err)
                 : mq_frame_decode(p, blen, MAX_LEN, *mark, &h, &err);
        }

        if (rc == MQ_OK && h.kind != MQ_FRAME_ITEM) {
            rc = MQ_ERROR;
            err = "not an item";
        }

        if (rc == MQ_OK) {
            if (count_record(q, sc, off, &h) != 0) {
                return -1;
            }
            off += hsz + h.len;
            trusted = 1;
            continue;
        }

        if (rc == MQ_AGAIN) {
            err = "torn record";
        }

        /* damage at off: where does the good data start again?  Ids
         * after it lie above the last one seen and below the next file's
         * first (or within what the rest of the file can hold) */
        /* the first id the damage may hide: after the last one decoded
         * in this queue's files (not the position cursor: owed items
         * below it are in the files too) */
        lo = sc->files_last + 1 > sc->seg ? sc->files_last + 1 : sc->seg;
        hi = sc->next_first ? sc->next_first - 1
             : lo + ((uint64_t) fsize - off) / MQ_FRAME_HDR_SIZE;

        if (rc == MQ_DECLINED && trusted) {
            /* a good header where a record was due: its length holds, and
             * the damage is that one record */
            lo = h.seq;
            next = off + hsz + h.len;
            next_seq = h.seq + 1;
            if ((off_t) next < fsize
                && find_next(fd, next, (uint64_t) fsize, h.seq + 1, hi,
                             *mark, buf, cap, &next, &next_seq) != 0)
            {
                return -1;
            }
        } else if (*ver == 1) {
            next = (uint64_t) fsize;
            next_seq = 0;
        } else if (find_next(fd, off + 1, (uint64_t) fsize, lo, hi, *mark,
                             buf, cap, &next, &next_seq) != 0)
        {
            return -1;
        }

        trusted = 0;

        blen = 0;      /* find_next() used the buffer */

        /* the last id the damage may hide */
        end = next_seq ? next_seq - 1
              : sc->next_first ? sc->next_first - 1 : UINT64_MAX;

        if (sc->jfirst && end >= sc->jfirst) {
            /* the journal has everything from its first id on: ids below
             * it that the damage hides are lost, the rest comes back */
            if (lo < sc->jfirst) {
                log_error("recover", "%s/%s:%" PRIu64 ": %s, ids %" PRIu64
                          "-%" PRIu64 " lost", q->name, fname, off, err, lo,
                          sc->jfirst - 1);
                srv.corrupt_records += sc->jfirst - lo;
            }
            sc->cut = 1;
            log_warn("recover", "%s/%s:%" PRIu64 ": %s, %" PRIu64 " bytes "
                     "replaced from the journal", q->name, fname, off, err,
                     (uint64_t) (fsize - (off_t) off));
            truncate_at(q, fd, fname, off);
            return (int64_t) off;
        }

        if ((off_t) next == fsize && last) {
            /* a torn tail: the crash cut the last write short */
            log_warn("recover", "%s/%s:%" PRIu64 ": %s, truncated %" PRIu64
                     " bytes", q->name, fname, off, err,
                     (uint64_t) (fsize - (off_t) off));
            truncate_at(q, fd, fname, off);
            return (int64_t) off;
        }

        /* real damage: it costs the damaged records only, ids lo up to
         * the next good record's; damage to the end of the file ends
         * where the next file begins */
        if (next_seq == 0 && sc->next_first >= lo) {
            next_seq = sc->next_first;
        }
        lost = next_seq > lo ? next_seq - lo : next_seq == 0 ? 1 : 0;
        if (lost == 0) {
            /* bytes between records that hide no id */
            log_error("recover", "%s/%s:%" PRIu64 ": %s, %" PRIu64 " bytes "
                      "skipped, no id lost", q->name, fname, off, err,
                      next - off);
        } else {
            log_error("recover", "%s/%s:%" PRIu64 ": %s, %" PRIu64 " bytes "
                      "skipped, ids %" PRIu64 "-%" PRIu64 " lost%s",
                      q->name, fname, off, err, next - off, lo,
                      lo + lost - 1,
                      next_seq == 0 ? " (to the end of the file)" : "");
            srv.corrupt_records += lost;

            /* the items counter only counts records decoded */
            if (lo + lost - 1 > sc->files_last) {
                sc->files_last = lo + lost - 1;
            }
        }

        if (sc->cursor_set
            && push_skip(q, sc->seg, off, next, next_seq) != 0)
        {
            return -1;
        }

        if (next_seq > sc->last_seq) {
            sc->last_seq = next_seq - 1;
        }

        if ((off_t) next == fsize) {
            break;
        }

        off = next;
    }

    return (int64_t) fsize;
}


/*
 * Leases acknowledged in the journal (acks, ascending) leave the owed
 * list.  An acknowledged id at or above the position's cursor means the
 * file is older than the acknowledgement: the cursor moves past it, and
 * every id between the old cursor and it that was not acknowledged
 * becomes owed (it may have been delivered; at-least-once), up to
 * ACK_RANGE_MAX ids.  0, or -1 when out of memory.
 */
static int
apply_acks(queue_t *q, scan_t *sc, const uint64_t *acks, size_t nacks)
{
    int        range;
    size_t     i, j, k, n;
    uint64_t   amax, id, *np;
    uint32_t  *nc;

    if (nacks == 0) {
        return 0;
    }

    amax = acks[nacks - 1];
    range = amax >= sc->first;

    if (range && amax - sc->first >= ACK_RANGE_MAX) {
        log_warn("recover", "%s: ids %" PRIu64 "-%" PRIu64 " delivered "
                 "again: the position file is too far behind the journal's "
                 "acknowledgements", q->name, sc->first, amax);
        range = 0;
    }

    n = sc->npending + (range ? (size_t) (amax - sc->first + 1) : 0);
    np = malloc((n ? n : 1) * sizeof(uint64_t));
    nc = malloc((n ? n : 1) * sizeof(uint32_t));
    if (np == NULL || nc == NULL) {
        free(np);
        free(nc);
        return -1;
    }

    /* owed before (all below the cursor), then the ids from the cursor
     * up to the newest ack: ascending; minus the acks */
    j = 0;
    k = 0;
    for (i = 0; i < n; i++) {
        if (i < sc->npending) {
            id = sc->pending[i];
            if (range && id >= sc->first) {
                continue;               /* in the range below anyway */
            }
        } else {
            id = sc->first + (i - sc->npending);
        }

        while (j < nacks && acks[j] < id) {
            j++;
        }
        if (j < nacks && acks[j] == id) {
            continue;
        }

        np[k] = id;
        nc[k] = i < sc->npending && sc->counts ? sc->counts[i] : 0;
        k++;
    }

    free(sc->pending);
    free(sc->counts);
    sc->pending = np;
    sc->counts = nc;
    sc->npending = k;

    if (range) {
        sc->first = amax + 1;
    }

    return 0;
}


int
recover_queue(queue_t *q, uint64_t jfirst, const uint64_t *acks,
    size_t nacks)
{
    int             fd, dirfd, rc;
    char            fname[SEG_NAME_LEN + 1];
    size_t          i, nids, cap;
    seg_t          *s;
    int64_t         size;
    unsigned        ver;
    uint32_t        mark;
    uint64_t       *ids, from;
    struct stat     st;
    scan_t          sc;
    unsigned char  *buf;

    memset(&sc, 0, sizeof(sc));
    sc.jfirst = jfirst;
    rc = -1;
    ids = NULL;
    buf = NULL;

    dirfd = openat(srv.data_fd, q->name,
                   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd == -1) {
        log_error("recover", "%s: open: %s", q->name, strerror(errno));
        return -1;
    }

    position_read_counts(dirfd, &sc.first, &sc.pending, &sc.counts,
                         &sc.npending);

    if (apply_acks(q, &sc, acks, nacks) != 0) {
        log_error("recover", "%s: out of memory", q->name);
        goto done;
    }

    if (list_segments(dirfd, &ids, &nids) != 0) {
        log_error("recover", "%s: cannot list: %s", q->name, strerror(errno));
        goto done;
    }

    cap = SCAN_BUF;
    buf = malloc(cap);
    q->segs = calloc(nids ? nids : 1, sizeof(seg_t));
    if (buf == NULL || q->segs == NULL) {
        goto done;
    }
    q->segs_cap = nids ? nids : 1;

    sc.last_seq = sc.first ? sc.first - 1 : 0;
    q->rseq = 0;

    for (i = 0; i < nids; i++) {
        seg_name(fname, ids[i]);

        if (sc.cut) {
            /* past the cut: the journal has all of it */
            if (!srv.check_only) {
                unlinkat(dirfd, fname, 0);
            }
            continue;
        }

        fd = openat(dirfd, fname,
                    (srv.check_only ? O_RDONLY : O_RDWR) | O_CLOEXEC
                    | O_NOFOLLOW | O_NONBLOCK);
        if (fd != -1 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
            close(fd);
            fd = -1;
            errno = EINVAL;
        }

        if (fd == -1) {
            log_error("recover", "%s/%s: open: %s (not a readable regular "
                      "file)", q->name, fname, strerror(errno));
            goto done;
        }

        if (i > 0 && sc.jfirst && ids[i] > sc.files_last + 1
            && ids[i] - 1 >= sc.jfirst)
        {
            /* the file before ended short of this one's first id (its
             * tail never reached the disk): the journal has the ids from
             * its first on, and everything after them */
            close(fd);
            if (sc.files_last + 1 < sc.jfirst) {
                log_error("recover", "%s: ids %" PRIu64 "-%" PRIu64 " lost "
                          "before %s", q->name, sc.files_last + 1,
                          sc.jfirst - 1, fname);
                srv.corrupt_records += sc.jfirst - 1 - sc.files_last;
                sc.files_last = sc.jfirst - 1;
            }
            log_warn("recover", "%s: ids %" PRIu64 "-%" PRIu64 " missing "
                     "before %s, taken from the journal with what follows",
                     q->name, sc.files_last + 1, ids[i] - 1, fname);
            sc.cut = 1;
            if (!srv.check_only) {
                unlinkat(dirfd, fname, 0);
            }
            continue;
        }

        if (i > 0 && ids[i] > sc.last_seq + 1 && !sc.jfirst) {
            log_error("recover", "%s: ids %" PRIu64 "-%" PRIu64 " missing "
                      "before %s (file removed?)", q->name, sc.last_seq + 1,
                      ids[i] - 1, fname);
            srv.corrupt_records += ids[i] - 1 - sc.last_seq;
        }

        if (ids[i] > sc.last_seq + 1) {
            sc.last_seq = ids[i] - 1;
        }

        sc.seg = ids[i];
        sc.next_first = i + 1 < nids ? ids[i + 1] : 0;
        size = scan_segment(q, fd, fname, i + 1 == nids, &sc, &ver, &mark,
                            &buf, &cap);
        close(fd);

        if (size < 0) {
            log_error("recover", "%s/%s: read: %s", q->name, fname,
                      strerror(errno));
            goto done;
        }

        if (size < MQ_SEG_HDR_SIZE
            || (ver == 1 && size == MQ_SEG_HDR_SIZE && i + 1 == nids))
        {
            /* (an empty old-format tail would stand in the way of the
             * new-format segment the next append starts at its id) */
            if (i + 1 == nids || sc.cut) {
                /* the newest segment's creation was cut short */
                log_warn("recover", "%s/%s: empty, removed", q->name, fname);
                if (!srv.check_only) {
                    unlinkat(dirfd, fname, 0);
                }
                continue;
            }
            size = MQ_SEG_HDR_SIZE;
        }

        s = &q->segs[q->nsegs++];
        s->id = ids[i];
        s->size = (uint64_t) size;
        s->slot = -1;
        s->ver = ver;
        s->mark = mark;
    }

    /* an old-format tail left without records (cut, or empty) would stand
     * where the next append starts its new-format segment */
    while (q->nsegs > 0 && q->segs[q->nsegs - 1].ver == 1
           && q->segs[q->nsegs - 1].size <= MQ_SEG_HDR_SIZE)
    {
        seg_name(fname, q->segs[q->nsegs - 1].id);
        if (!srv.check_only) {
            unlinkat(dirfd, fname, 0);
        }
        q->nsegs--;
    }

    q->next_seq = sc.last_seq + 1;

    if (jfirst != 0) {
        /*
         * What the files do not hold comes from the journal, even below
         * the position file's cursor: that cursor may be ahead of the
         * files (open items, a position renamed without fsync), and an
         * item owed to a consumer must come back.  Items consumed before
         * the crash may so be delivered again, which at-least-once
         * allows.
         */
        from = sc.files_last + 1 > jfirst ? sc.files_last + 1 : jfirst;
        if (from < q->next_seq) {
            q->next_seq = from;
        }
    }

    if (!sc.cursor_set) {
        /* nothing undelivered: cursor at the end of the tail */
        q->rseg = q->nsegs ? q->nsegs - 1 : 0;
        q->roff = q->nsegs ? q->segs[q->rseg].size : 0;
        q->rseq = q->next_seq;
    }

    if (q->nsegs > 0) {
        q->wbase = q->segs[q->nsegs - 1].size;
        q->wdone = q->wbase;
    }

    q->pos_written = q->nret > 0 && q->ret[0].seq < sc.first
                     ? q->ret[0].seq : sc.first;
    q->pos_dirty = 1;

    if (q->items > 0) {
        log_info("recover", "%s: %zu segments, %" PRIu64 " items, %" PRIu64
                 " bytes, next seq %" PRIu64, q->name, q->nsegs, q->items,
                 q->bytes, q->next_seq);
    }

    /* the replay needs them: records below the cursor were consumed,
     * unless owed */
    q->rec_first = sc.first;
    q->rec_pending = sc.pending;
    q->rec_counts = sc.counts;
    q->rec_npending = sc.npending;
    sc.pending = NULL;
    sc.counts = NULL;

    rc = 0;

done:

    close(dirfd);
    free(buf);
    free(ids);
    free(sc.pending);
    free(sc.counts);
    return rc;
}


void
recover_remove_queue(const char *name)
{
    int             dirfd;
    DIR            *d;
    struct dirent  *de;

    log_info("recover", "%s: deleted before the stop, removing it", name);

    if (srv.check_only) {
        return;
    }

    dirfd = openat(srv.data_fd, name,
                   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd == -1) {
        return;
    }

    d = dir_stream(dirfd);
    if (d != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] != '.') {
                unlinkat(dirfd, de->d_name, 0);
            }
        }
        closedir(d);
    }

    close(dirfd);
    unlinkat(srv.data_fd, name, AT_REMOVEDIR);
}


/* ---- the journal ---- */


static uint32_t
jq_hash(const char *p, size_t len)
{
    uint32_t  h;

    h = 2166136261u;
    while (len--) {
        h = (h ^ (unsigned char) *p++) * 16777619u;
    }

    return h % JQ_HASH;
}


static jq_t *
jq_get(jscan_t *js, const char *name, size_t len, int create)
{
    jq_t      *j;
    uint32_t   h;

    h = jq_hash(name, len);

    for (j = js->hash[h]; j; j = j->next) {
        if (j->len == len && memcmp(j->name, name, len) == 0) {
            return j;
        }
    }

    if (!create) {
        return NULL;
    }

    j = calloc(1, sizeof(jq_t));
    if (j == NULL) {
        return NULL;
    }

    memcpy(j->name, name, len);
    j->len = len;
    j->next = js->hash[h];
    js->hash[h] = j;
    return j;
}


/* Splits a journal payload into queue name and data; -1 if malformed. */
static int
jrecord(const mq_frame_hdr_t *h, const unsigned char *payload,
    const char **name, size_t *nlen, const unsigned char **data, size_t *dlen)
{
    if (h->len < 1 || (size_t) payload[0] + 1 > h->len
        || !mq_name_valid((const char *) payload + 1, payload[0]))
    {
        return -1;
    }

    *nlen = payload[0];
    *name = (const char *) payload + 1;
    *data = payload + 1 + *nlen;
    *dlen = h->len - 1 - *nlen;
    return 0;
}


typedef int (*jvisit_pt)(jscan_t *js, uint64_t rec, const mq_frame_hdr_t *h,
    const char *name, size_t nlen, const unsigned char *data, size_t dlen);


/* Calls visit for every good record of every journal file, in order. */
static int
jwalk(jscan_t *js, jvisit_pt visit, int report)
{
    int                   rc;
    size_t                i, dlen, nlen, off, next;
    uint64_t              rec;
    const char           *err, *name;
    jfile_t              *f;
    mq_frame_hdr_t        h;
    const unsigned char  *data;

    rec = 0;

    for (i = 0; i < js->nfiles; i++) {
        f = &js->files[i];
        off = MQ_SEG_HDR_SIZE;

        while (off < f->size) {
            rc = mq_frame_decode(f->map + off, f->size - off, MAX_LEN,
                                 f->mark, &h, &err);

            if (rc == MQ_OK && h.kind != MQ_FRAME_ITEM
                && jrecord(&h, f->map + off + MQ_FRAME_HDR_SIZE, &name,
                           &nlen, &data, &dlen) == 0)
            {
                if (visit(js, rec++, &h, name, nlen, data, dlen) != 0) {
                    return -1;
                }
                off += MQ_FRAME_HDR_SIZE + h.len;
                continue;
            }

            next = mq_frame_resync(f->map, off + 1, f->size, MAX_LEN,
                                   f->mark);
            if (next == f->size) {
                /* zeros or a torn write: the end of what was written */
                break;
            }

            if (report) {
                log_warn("recover", "journal %020" PRIu64 ".jnl:%zu: %s, "
                         "%zu bytes skipped (a record there may be lost "
                         "unless its queue file has it)", f->number, off,
                         rc == MQ_OK ? "malformed record" : err,
                         next - off);
            }
            off = next;
        }
    }

    return 0;
}


/* Adds n acknowledged ids to j's, from a JACK (id) or a JACKS record
 * (ids != NULL: n encoded ids).  0 or -1 (out of memory). */
static int
add_acks(jq_t *j, uint64_t id, const unsigned char *ids, size_t n)
{
    size_t     i, cap;
    uint64_t  *na;

    if (j->nacks + n > j->acks_cap) {
        cap = j->acks_cap ? j->acks_cap : 64;
        while (cap < j->nacks + n) {
            cap *= 2;
        }
        na = realloc(j->acks, cap * sizeof(uint64_t));
        if (na == NULL) {
            return -1;
        }
        j->acks = na;
        j->acks_cap = cap;
    }

    for (i = 0; i < n; i++) {
        j->acks[j->nacks++] = ids ? mq_frame_id_get(ids, i) : id;
    }

    j->acks_sorted = 0;
    return 0;
}


static int
scan_visit(jscan_t *js, uint64_t rec, const mq_frame_hdr_t *h,
    const char *name, size_t nlen, const unsigned char *data, size_t dlen)
{
    jq_t  *j;

    if (h->kind == MQ_FRAME_JACKS && (dlen == 0 || dlen % 8 != 0)) {
        /* its CRC held: not damage, a record no memqd writes */
        log_warn("recover", "journal: a list of acknowledgements of %.*s "
                 "holds %zu bytes, not ids: skipped", (int) nlen, name,
                 dlen);
        return 0;
    }

    j = jq_get(js, name, nlen, 1);
    if (j == NULL) {
        return -1;
    }

    if (h->kind == MQ_FRAME_JDROP) {
        j->drop_rec = rec + 1;
        j->first = 0;
        j->nacks = 0;
    } else if (h->kind == MQ_FRAME_JACK) {
        if (add_acks(j, h->seq, NULL, 1) != 0) {
            return -1;
        }
    } else if (h->kind == MQ_FRAME_JACKS) {
        if (add_acks(j, 0, data, dlen / 8) != 0) {
            return -1;
        }
    } else if (j->first == 0) {
        j->first = h->seq;
    }

    js->records++;
    return 0;
}


int
recover_journal_scan(jscan_t **jsp, uint64_t *last)
{
    int             fd, jdir;
    DIR            *d;
    void           *m;
    size_t          cap;
    uint32_t        mark;
    uint64_t        number;
    jscan_t        *js;
    jfile_t        *f, *nf;
    struct stat     st;
    struct dirent  *de;

    *last = 0;
    *jsp = NULL;

    js = calloc(1, sizeof(jscan_t));
    if (js == NULL) {
        return -1;
    }
    *jsp = js;

    jdir = openat(srv.data_fd, JOURNAL_DIR,
                  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jdir == -1) {
        if (errno == ENOENT) {
            return 0;
        }
        log_error("recover", "journal: open: %s", strerror(errno));
        return -1;
    }

    d = dir_stream(jdir);
    if (d == NULL) {
        close(jdir);
        return -1;
    }

    cap = 0;

    while ((de = readdir(d)) != NULL) {
        if (journal_parse_name(de->d_name, &number) != 0) {
            continue;
        }

        if (number > *last) {
            *last = number;
        }

        fd = openat(jdir, de->d_name, O_RDONLY | O_CLOEXEC);
        if (fd == -1 || fstat(fd, &st) != 0) {
            log_error("recover", "journal %s: open: %s", de->d_name,
                      strerror(errno));
            if (fd != -1) {
                close(fd);
            }
            goto failed;
        }

        m = NULL;
        mark = 0;

        if (st.st_size < MQ_SEG_HDR_SIZE) {
            /* created, then the crash: no record in it, but listed, so
             * that it goes with the others once they are replayed (its
             * number is below the next file's: nothing else removes it) */
            close(fd);
            st.st_size = 0;
            goto listed;
        }

        m = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (m == MAP_FAILED) {
            log_error("recover", "journal %s: mmap: %s", de->d_name,
                      strerror(errno));
            goto failed;
        }

        if (mq_frame_jnl_decode(m, &mark) != MQ_OK) {
            /* the records tell the mark; none that checks: nothing to
             * read in it */
            mark = 0;
            mq_frame_mark_vote(m, MQ_SEG_HDR_SIZE, (size_t) st.st_size,
                               MAX_LEN, &mark);
            log_warn("recover", "journal %s: bad header, records read by "
                     "their own framing", de->d_name);
        }

    listed:

        if (js->nfiles == cap) {
            cap = cap ? cap * 2 : 8;
            nf = realloc(js->files, cap * sizeof(jfile_t));
            if (nf == NULL) {
                if (m != NULL) {
                    munmap(m, (size_t) st.st_size);
                }
                goto failed;
            }
            js->files = nf;
        }

        f = &js->files[js->nfiles++];
        f->number = number;
        f->map = m;
        f->size = (size_t) st.st_size;
        f->mark = mark;
    }

    closedir(d);
    close(jdir);

    /* in number order: the order the records were written */
    for (size_t i = 1; i < js->nfiles; i++) {
        jfile_t  t = js->files[i];
        size_t   j = i;
        while (j > 0 && js->files[j - 1].number > t.number) {
            js->files[j] = js->files[j - 1];
            j--;
        }
        js->files[j] = t;
    }

    if (jwalk(js, scan_visit, 1) != 0) {
        return -1;
    }

    if (js->records > 0) {
        log_info("recover", "journal: %zu files, %" PRIu64 " records to "
                 "check against the queues", js->nfiles, js->records);
    }

    return 0;

failed:

    closedir(d);
    close(jdir);
    return -1;
}


uint64_t
recover_journal_first(jscan_t *js, const char *name, size_t len,
    int *dropped)
{
    jq_t  *j;

    j = jq_get(js, name, len, 0);
    *dropped = j != NULL && j->drop_rec > 0;
    return j != NULL ? j->first : 0;
}


size_t
recover_journal_acks(jscan_t *js, const char *name, size_t len,
    const uint64_t **acks)
{
    jq_t    *j;
    size_t   i, k;

    j = js != NULL ? jq_get(js, name, len, 0) : NULL;
    if (j == NULL || j->nacks == 0) {
        *acks = NULL;
        return 0;
    }

    if (!j->acks_sorted) {
        qsort(j->acks, j->nacks, sizeof(uint64_t), cmp_u64);
        for (i = 1, k = 1; i < j->nacks; i++) {
            if (j->acks[i] != j->acks[k - 1]) {
                j->acks[k++] = j->acks[i];
            }
        }
        j->nacks = k;
        j->acks_sorted = 1;
    }

    *acks = j->acks;
    return j->nacks;
}


static uint64_t  replayed;


static int
replay_visit(jscan_t *js, uint64_t rec, const mq_frame_hdr_t *h,
    const char *name, size_t nlen, const unsigned char *data, size_t dlen)
{
    jq_t            *j;
    queue_t         *q;
    mq_frame_hdr_t   ih;

    if (h->kind != MQ_FRAME_JITEM) {
        return 0;
    }

    j = jq_get(js, name, nlen, 0);
    if (j == NULL || rec < j->drop_rec) {
        return 0;
    }

    if (srv.check_only) {
        q = queue_lookup(name, nlen, 0);
        if (q == NULL || !q->on_disk || h->seq >= q->next_seq) {
            replayed++;
        }
        return 0;
    }

    q = queue_lookup(name, nlen, 2);
    if (q == NULL) {
        return -1;
    }

    if (h->seq < q->next_seq) {
        /* its queue file has it */
        return 0;
    }

    if (h->seq > q->next_seq && q->on_disk && q->next_seq > 1) {
        /* journal records between were damaged, and no queue file has
         * them: acknowledged items are gone, and that is said */
        log_error("recover", "%s: ids %" PRIu64 "-%" PRIu64 " lost: their "
                  "journal records are damaged and no queue file has them",
                  q->name, q->next_seq, h->seq - 1);
        srv.corrupt_records += h->seq - q->next_seq;
    }

    ih = *h;
    ih.len = (uint32_t) dlen;

    if (queue_replay(q, &ih, data) != 0) {
        return -1;
    }

    replayed++;
    return 0;
}


int
recover_journal_replay(jscan_t *js)
{
    replayed = 0;

    if (js == NULL || js->nfiles == 0) {
        return 0;
    }

    if (jwalk(js, replay_visit, 0) != 0) {
        log_error("recover", "journal: replay failed");
        return -1;
    }

    log_info("recover", "journal: %" PRIu64 " records %s", replayed,
             srv.check_only ? "would be replayed" : "replayed");
    return 0;
}


void
recover_journal_done(jscan_t *js, int remove)
{
    int       jdir;
    char      name[32];
    size_t    i, k;
    jq_t     *j, *next;

    if (js == NULL) {
        return;
    }

    jdir = -1;
    if (remove && !srv.check_only && js->nfiles > 0) {
        jdir = openat(srv.data_fd, JOURNAL_DIR,
                      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }

    for (i = 0; i < js->nfiles; i++) {
        if (js->files[i].map != NULL) {
            munmap(js->files[i].map, js->files[i].size);
        }
        if (jdir != -1) {
            journal_name(name, js->files[i].number);
            unlinkat(jdir, name, 0);
        }
    }

    if (jdir != -1) {
        fsync(jdir);
        close(jdir);
    }

    for (k = 0; k < JQ_HASH; k++) {
        for (j = js->hash[k]; j; j = next) {
            next = j->next;
            free(j->acks);
            free(j);
        }
    }

    free(js->files);
    free(js);
}
