/*
 * queue.c: queues, see queue.h for the model.
 *
 * Appends go to the queue's write buffer and reach the tail segment once
 * per loop iteration (queue_before_sleep), or earlier when the buffer is
 * full; a reader that needs a record still in the buffer reads it from
 * there.  Reads come from a bounded read-ahead buffer per queue, so the
 * memory of a queue does not grow with its backlog.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "fdcache.h"
#include "journal.h"
#include "lease.h"
#include "log.h"
#include "loop.h"
#include "queue.h"
#include "segment.h"
#include "server.h"
#include "sync.h"
#include "sys.h"

#define WBUF_SIZE      (64 * 1024)
#define RBUF_SIZE      (64 * 1024)
#define RBUF_SLOTS     64            /* read-ahead buffers in all */
#define RBUF_MIN       (4 * 1024)    /* first read of a queue's window */
#define WBUF_BUDGET    (8 * 1024 * 1024)   /* unwritten appends, all queues */
#define WB_STEP        (256 * 1024)  /* write-behind: see write_behind() */
#define WB_PAGE        4096
#define HASH_SIZE      4096          /* buckets; chains stay short enough */
#define POS_INTERVAL   100           /* ms between position file writes */
#define POS_SAVES_MAX  1024          /* position files written an interval,
                                        at most: see queue_before_sleep() */
#define POS_PENDING_MAX 4096         /* owed items listed in it, at most */
#define EXPIRE_BATCH   4096          /* leases given back per sort */

static queue_t        *hash[HASH_SIZE];
static queue_t        *dirty_list;    /* touched in this iteration */
static queue_t        *later_list;    /* waiting for the position interval:
                                         see queue_before_sleep() */
static queue_t        *later_tail;    /* (FIFO) */
static unsigned char  *scratch;      /* records larger than RBUF_SIZE */
static size_t          scratch_cap;
static uint64_t        last_pos_flush;
static loop_timer_t    pos_timer;     /* wakes the loop for deferred
                                         position writes */
static loop_timer_t    lease_timer;   /* armed for the earliest lease
                                         deadline, see arm_lease_timer() */
static log_rate_t      dlq_warn = { "queue", 1, 0, 0, 0 };

/*
 * Read-ahead buffers are lent to queues from a fixed pool, so memory does
 * not grow with the number of queues being read.  How much a read asks
 * for is a window of the queue's own: RBUF_MIN at first and after its
 * buffer was taken back, twice as long each time it reads on while still
 * holding the buffer, up to RBUF_SIZE.  With more queues read in turn
 * than buffers, every buffer is taken back before its next item is
 * wanted, and a window of the whole buffer copied 64 KiB from the page
 * cache for each 100-byte item (BENCHMARKS.md, consume over many queues).
 */
static struct {
    queue_t        *owner;    /* (ref) NULL when free */
    unsigned char  *buf;
} rbufs[RBUF_SLOTS];
static int             rbuf_hand;
static size_t          wbuf_bytes;    /* unwritten appends, all queues */


static uint32_t
hash_name(const char *p, size_t len)
{
    uint32_t  h;

    h = 2166136261u;                 /* FNV-1a */
    while (len--) {
        h = (h ^ (unsigned char) *p++) * 16777619u;
    }

    return h % HASH_SIZE;
}


static void
mark_dirty(queue_t *q)
{
    if (!q->dirty) {
        q->dirty = 1;
        q->dnext = dirty_list;
        dirty_list = q;
    }
}


static void
mark_later(queue_t *q)
{
    if (!q->later) {
        q->later = 1;
        q->lnext = NULL;
        if (later_tail != NULL) {
            later_tail->lnext = q;
        } else {
            later_list = q;
        }
        later_tail = q;
    }
}


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static int dead_letter(queue_t *q, const item_ref_t *ref);
static uint64_t watermark(queue_t *q);
static int save_position(queue_t *q, int precise);


static uint64_t
now_s(void)
{
    return (uint64_t) time(NULL);
}


static void
refresh_limits(queue_t *q)
{
    if (q->lim_gen != config_generation) {
        config_limits(q->name, q->name_len, &q->lim);
        q->lim_gen = config_generation;
    }
}


static queue_t *
queue_alloc(const char *name, size_t len)
{
    queue_t  *q;

    q = calloc(1, sizeof(queue_t));
    if (q == NULL) {
        return NULL;
    }

    memcpy(q->name, name, len);
    q->name[len] = '\0';
    q->name_len = len;
    q->next_seq = 1;
    q->rseq = 1;
    q->rbuf_slot = -1;
    q->rwant = RBUF_MIN;
    return q;
}


/* Lends q a read-ahead buffer, taking one back from another queue when
 * the pool is used up.  0 or -1. */
static int
rbuf_get(queue_t *q)
{
    int  i;

    if (q->rbuf != NULL) {
        return 0;
    }

    for (i = 0; i < RBUF_SLOTS && rbufs[rbuf_hand].owner != NULL; i++) {
        rbuf_hand = (rbuf_hand + 1) % RBUF_SLOTS;
    }

    if (rbufs[rbuf_hand].owner != NULL) {
        rbufs[rbuf_hand].owner->rbuf = NULL;
        rbufs[rbuf_hand].owner->rlen = 0;
        rbufs[rbuf_hand].owner->rbuf_slot = -1;
        rbufs[rbuf_hand].owner->rwant = RBUF_MIN;
    }

    if (rbufs[rbuf_hand].buf == NULL) {
        rbufs[rbuf_hand].buf = malloc(RBUF_SIZE);
        if (rbufs[rbuf_hand].buf == NULL) {
            rbufs[rbuf_hand].owner = NULL;
            return -1;
        }
    }

    rbufs[rbuf_hand].owner = q;
    q->rbuf = rbufs[rbuf_hand].buf;
    q->rbuf_slot = rbuf_hand;
    q->rlen = 0;
    rbuf_hand = (rbuf_hand + 1) % RBUF_SLOTS;
    return 0;
}


static void
rbuf_put(queue_t *q)
{
    if (q->rbuf_slot >= 0) {
        rbufs[q->rbuf_slot].owner = NULL;
    }
    q->rbuf = NULL;
    q->rlen = 0;
    q->rbuf_slot = -1;
}


static void
hash_insert(queue_t *q)
{
    uint32_t  h;

    h = hash_name(q->name, q->name_len);
    q->hnext = hash[h];
    hash[h] = q;
}


static void
hash_remove(queue_t *q)
{
    queue_t  **pp;

    for (pp = &hash[hash_name(q->name, q->name_len)]; *pp; pp = &(*pp)->hnext)
    {
        if (*pp == q) {
            *pp = q->hnext;
            return;
        }
    }
}


static void
queue_free(queue_t *q)
{
    queue_t   **pp, *prev;

    for (pp = &dirty_list; *pp; pp = &(*pp)->dnext) {
        if (*pp == q) {
            *pp = q->dnext;
            break;
        }
    }

    prev = NULL;
    for (pp = &later_list; *pp; prev = *pp, pp = &(*pp)->lnext) {
        if (*pp == q) {
            *pp = q->lnext;
            if (later_tail == q) {
                later_tail = prev;
            }
            break;
        }
    }

    fdcache_drop_queue(q);
    rbuf_put(q);
    lease_drop_queue(q);
    wbuf_bytes -= q->wlen;
    free(q->rec_pending);
    free(q->rec_counts);
    free(q->skips);
    free(q->segs);
    free(q->wbuf);
    free(q->ret);
    free(q);
}


static void
pos_timer_handler(loop_timer_t *t)
{
    /* nothing to do here: queue_before_sleep() runs right after */
}


int
queue_init(void)
{
    DIR            *d;
    int             dropped;
    size_t          n, nacks;
    queue_t        *q;
    uint64_t        last, first;
    const uint64_t *acks;
    jscan_t        *js;
    struct stat     st;
    struct dirent  *de;

    pos_timer.handler = pos_timer_handler;

    if (fdcache_init() != 0) {
        return -1;
    }

    /* what the journal holds decides how far each queue's files are
     * trusted: see recover.c */
    if (recover_journal_scan(&js, &last) != 0) {
        return -1;
    }

    d = dir_stream(srv.data_fd);
    if (d == NULL) {
        recover_journal_done(js, 0);
        return -1;
    }

    while ((de = readdir(d)) != NULL) {
        n = strlen(de->d_name);

        if (!mq_name_valid(de->d_name, n)) {
            continue;
        }

        if (fstatat(srv.data_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0
            || !S_ISDIR(st.st_mode))
        {
            continue;
        }

        first = recover_journal_first(js, de->d_name, n, &dropped);
        nacks = recover_journal_acks(js, de->d_name, n, &acks);

        if (dropped) {
            /* deleted before the crash: the journal says so */
            recover_remove_queue(de->d_name);
            continue;
        }

        q = queue_alloc(de->d_name, n);
        if (q == NULL) {
            goto failed;
        }

        if (recover_queue(q, first, acks, nacks) != 0) {
            /* refuse to start rather than serve without it: a later set
             * would write beside records we could not read */
            log_error("recover", "%s: cannot recover the queue", de->d_name);
            queue_free(q);
            goto failed;
        }

        q->on_disk = 1;
        refresh_limits(q);
        hash_insert(q);
        mark_dirty(q);
    }

    closedir(d);
    d = NULL;

    if (recover_journal_replay(js) != 0) {
        goto failed;
    }

    if (!srv.check_only) {
        /* the replayed records are in their files for good before the
         * journal that held them goes */
        if (queue_write_all() != 0 || syncfs(srv.data_fd) != 0) {
            log_error("recover", "writing replayed records failed");
            goto failed;
        }
    }

    recover_journal_done(js, 1);

    for (q = queue_next(NULL); q; q = queue_next(q)) {
        free(q->rec_pending);
        free(q->rec_counts);
        q->rec_pending = NULL;
        q->rec_counts = NULL;
        q->rec_npending = 0;
        q->rec_first = 0;
    }

    if (srv.check_only || srv.sync_mode != SYNC_ALWAYS) {
        return 0;
    }

    return journal_init(last);

failed:

    if (d != NULL) {
        closedir(d);
    }
    recover_journal_done(js, 0);
    return -1;
}


queue_t *
queue_lookup(const char *name, size_t len, int create)
{
    queue_t  *q;

    for (q = hash[hash_name(name, len)]; q; q = q->hnext) {
        if (q->name_len == len && memcmp(q->name, name, len) == 0) {
            break;
        }
    }

    if (q == NULL) {
        if (create == 0) {
            return NULL;
        }

        q = queue_alloc(name, len);
        if (q == NULL) {
            return NULL;
        }

        hash_insert(q);
    }

    if (create == 2 && !q->on_disk) {
        /* the directory needs no fsync of its own: until a checkpoint
         * has synced it, the journal can create it again */
        if (!srv.check_only && mkdirat(srv.data_fd, q->name, 0755) != 0
            && errno != EEXIST)
        {
            log_error("queue", "%s: mkdir: %s", q->name, strerror(errno));
            return NULL;
        }

        q->on_disk = 1;
        refresh_limits(q);
        mark_dirty(q);
    }

    return q;
}


void
queue_release(queue_t *q)
{
    if (!q->on_disk && q->wait_head == NULL) {
        hash_remove(q);
        queue_free(q);
    }
}


static int flush_wbuf_keep(queue_t *q, int keep);


/*
 * Under --sync always the queue files are made durable by the checkpoint
 * (a syncfs when a journal file is full).  Left to the kernel, their pages
 * stayed dirty until then (its own write-back starts at a tenth of memory
 * or after 30 s), and the syncfs sent them all at once: up to a journal
 * file's worth ahead of the commits' fdatasyncs in the disk's queue, one
 * commit of 40-70 ms a checkpoint at 50 writers (BENCHMARKS.md).  So the
 * write-back of a tail file is started every WB_STEP written to it, up to
 * its last whole page (the partial one is written with the next step),
 * without waiting: the checkpoint finds little left to write.  A queue
 * written a little at a time leaves up to WB_STEP of its own to it.
 *
 * A failed write-back is recorded for the file system and reported by the
 * checkpoint's syncfs; an error only this call can report (the pages could
 * not be sent) is treated as a failed checkpoint: every journal file
 * is kept for the replay (the pages may hold records of files already
 * full) and the node refuses further writes.  A call the file system
 * does not support, or a shortage of memory for it, leaves the pages to
 * the checkpoint.
 * Under interval and none nothing waits on the disk, and a file consumed
 * before the kernel writes it back never costs a write.
 */
static void
write_behind(queue_t *q, int fd)
{
    uint64_t  end;

    if (srv.sync_mode != SYNC_ALWAYS || q->wbase - q->wdone < WB_STEP) {
        return;
    }

    end = q->wbase & ~(uint64_t) (WB_PAGE - 1);

    if (sys.sync_range(fd, (off_t) q->wdone, (off_t) (end - q->wdone),
                       SYNC_FILE_RANGE_WRITE) != 0
        && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP
        && errno != ESPIPE && errno != ENOMEM && errno != EINTR)
    {
        log_error("queue", "%s: write-behind: %s; refusing further writes, "
                  "journal kept for recovery", q->name, strerror(errno));
        journal_keep_all();
        return;
    }

    q->wdone = end;
}


static int
flush_wbuf(queue_t *q)
{
    return flush_wbuf_keep(q, 0);
}


/* Writes q's buffered appends to its tail segment; keep: the queue is
 * busy, keep the buffer for the next appends. */
static int
flush_wbuf_keep(queue_t *q, int keep)
{
    int  fd;

    if (q->wlen == 0) {
        return 0;
    }

    fd = fdcache_get(q, q->segs[q->nsegs - 1].id, &q->segs[q->nsegs - 1].slot);

    if (fd == -1 && (errno == EMFILE || errno == ENFILE)) {
        /* no descriptor now: the bytes stay buffered (the journal has
         * them) and are written on a later try */
        return QUEUE_NOFD;
    }

    if (fd == -1 || seg_pwrite(fd, q->wbuf, q->wlen, q->wbase) != 0) {
        if (!srv.readonly) {
            log_error("queue", "%s: write: %s; refusing further writes",
                      q->name, strerror(errno));
        }
        srv.readonly = 1;
        return -1;
    }

    q->wbase += q->wlen;
    wbuf_bytes -= q->wlen;
    q->wlen = 0;
    write_behind(q, fd);

    if (!keep) {
        /* idle queues hold no buffer */
        free(q->wbuf);
        q->wbuf = NULL;
        q->wcap = 0;
    }

    return 0;
}


static int
push_segment(queue_t *q, uint64_t id)
{
    seg_t   *ns;
    size_t   cap;

    if (q->nsegs == q->segs_cap) {
        cap = q->segs_cap ? q->segs_cap * 2 : 4;
        ns = realloc(q->segs, cap * sizeof(seg_t));
        if (ns == NULL) {
            return -1;
        }
        q->segs = ns;
        q->segs_cap = cap;
    }

    q->segs[q->nsegs].id = id;
    q->segs[q->nsegs].size = MQ_SEG_HDR_SIZE;
    q->segs[q->nsegs].slot = -1;
    q->segs[q->nsegs].ver = MQ_SEG_VERSION;
    q->segs[q->nsegs].mark = mq_frame_new_mark();
    q->nsegs++;
    return 0;
}


static int
rotate_at(queue_t *q, uint64_t first)
{
    int  rc;

    if (q->nsegs > 0 && (rc = flush_wbuf(q)) != 0) {
        return rc;
    }

    if (push_segment(q, first) != 0) {
        return QUEUE_NOFD;
    }

    while ((rc = seg_create(q->name, first, q->segs[q->nsegs - 1].mark))
           != 0 && (errno == EMFILE || errno == ENFILE) && fdcache_shed() == 0)
    {
        /* void: a cached descriptor was given back, try again */
    }

    if (rc != 0) {
        q->nsegs--;
        if (errno == EMFILE || errno == ENFILE) {
            return QUEUE_NOFD;
        }
        srv.readonly = 1;
        return -1;
    }

    if (q->items == 0 && q->rhead == q->nret) {
        /* the cursor was at the end: move it to the new tail */
        q->rseg = q->nsegs - 1;
        q->roff = MQ_SEG_HDR_SIZE;
        q->rseq = first;
    }

    q->wbase = MQ_SEG_HDR_SIZE;
    q->wdone = MQ_SEG_HDR_SIZE;
    q->wlen = 0;
    return 0;
}


/* read_record() results */
#define RD_OK     MQ_OK
#define RD_END    MQ_AGAIN       /* past the end of the segment */
#define RD_BAD    MQ_ERROR       /* damaged record at this offset */
#define RD_BUSY   MQ_DECLINED    /* cannot read now: try again later */


static int
decode(const seg_t *s, const unsigned char *p, size_t avail,
    mq_frame_hdr_t *h, const char **err)
{
    int  rc;

    if (s->ver == 1) {
        return mq_frame_decode_v1(p, avail, UINT32_MAX - 64, h, err);
    }

    rc = mq_frame_decode(p, avail, UINT32_MAX - 64, s->mark, h, err);
    if (rc == MQ_OK && h->kind != MQ_FRAME_ITEM) {
        *err = "not an item";
        return MQ_ERROR;
    }

    return rc == MQ_DECLINED ? MQ_ERROR : rc;
}


static size_t
hdr_size(const seg_t *s)
{
    return s->ver == 1 ? MQ_FRAME_V1_HDR_SIZE : MQ_FRAME_HDR_SIZE;
}


static int
seg_fd(queue_t *q, size_t si)
{
    return fdcache_get(q, q->segs[si].id, &q->segs[si].slot);
}


/*
 * Reads the record at (segment index si, off) into h and *payload (valid
 * until the next queue call).  RD_OK, RD_END, RD_BAD (logged by the
 * caller) or RD_BUSY.
 */
static int
read_record(queue_t *q, size_t si, uint64_t off, mq_frame_hdr_t *h,
    const unsigned char **payload)
{
    int                   rc, fd, had;
    seg_t                *s;
    size_t                avail, want, hsz;
    ssize_t               n;
    uint64_t              limit;
    const char           *err;
    const unsigned char  *p;

    s = &q->segs[si];
    hsz = hdr_size(s);

    if (off >= s->size) {
        return RD_END;
    }

    if (si == q->nsegs - 1 && off >= q->wbase) {
        p = q->wbuf + (off - q->wbase);
        rc = decode(s, p, q->wlen - (size_t) (off - q->wbase), h, &err);
        if (rc == MQ_OK) {
            *payload = p + hsz;
        }
        return rc == MQ_OK ? RD_OK : RD_BAD;
    }

    limit = si == q->nsegs - 1 ? q->wbase : s->size;

    if (q->rbuf != NULL && q->rbuf_seg == s->id && off >= q->rbuf_off
        && off < q->rbuf_off + q->rlen)
    {
        p = q->rbuf + (off - q->rbuf_off);
        avail = q->rlen - (size_t) (off - q->rbuf_off);
        rc = decode(s, p, avail, h, &err);
        if (rc == MQ_OK) {
            *payload = p + hsz;
            return RD_OK;
        }
        if (rc == MQ_ERROR) {
            return RD_BAD;
        }
    }

    had = q->rbuf != NULL;

    if (rbuf_get(q) != 0) {
        return RD_BUSY;
    }

    fd = seg_fd(q, si);
    if (fd == -1) {
        /* a segment file removed under us is lost; anything else (out
         * of descriptors) passes */
        return errno == ENOENT ? RD_BAD : RD_BUSY;
    }

    if (had && q->rwant < RBUF_SIZE) {
        /* read on past the window while still holding the buffer: the
         * next window is twice as long (see rbuf_get()) */
        q->rwant *= 2;
    }

    for ( ;; ) {
        want = limit - off < q->rwant ? (size_t) (limit - off) : q->rwant;
        n = sys.pread(fd, q->rbuf, want, (off_t) off);
        if (n < 0) {
            log_error("queue", "%s/%020" PRIu64 ".seg:%" PRIu64 ": read: %s",
                      q->name, s->id, off, strerror(errno));
            q->rlen = 0;
            return RD_BUSY;
        }

        q->rbuf_seg = s->id;
        q->rbuf_off = off;
        q->rlen = (size_t) n;

        rc = decode(s, q->rbuf, q->rlen, h, &err);
        if (rc == MQ_OK) {
            *payload = q->rbuf + hsz;
            return RD_OK;
        }

        if (rc == MQ_ERROR || q->rlen < hsz || off + hsz + h->len > limit) {
            /* bad, or cut short by the end of the file */
            return RD_BAD;
        }

        if ((size_t) n < want || q->rwant >= hsz + (size_t) h->len
            || hsz + (size_t) h->len > RBUF_SIZE)
        {
            break;
        }

        /* longer than the window but not than the buffer: a window that
         * holds it, now and for the next reads */
        while (q->rwant < hsz + (size_t) h->len) {
            q->rwant *= 2;
        }
    }

    if (hsz + (size_t) h->len <= RBUF_SIZE) {
        /* the file ends before the record does */
        return RD_BAD;
    }

    /* larger than the read-ahead buffer */
    want = hsz + (size_t) h->len;
    if (want > scratch_cap) {
        unsigned char *nb = realloc(scratch, want);
        if (nb == NULL) {
            return RD_BUSY;
        }
        scratch = nb;
        scratch_cap = want;
    }

    n = sys.pread(fd, scratch, want, (off_t) off);
    if (n < 0) {
        return RD_BUSY;
    }

    if ((size_t) n == want && decode(s, scratch, want, h, &err) == MQ_OK)
    {
        *payload = scratch + hsz;
        return RD_OK;
    }

    return RD_BAD;
}


/*
 * After damage at `off` of segment si: finds the next good record of the
 * segment.  Sets *next to its offset (the end of the segment's data when
 * there is none) and *next_seq to its seq (0 when none).  Version 1
 * segments have no magic to look for: their damage costs the rest of the
 * segment.  0, or -1 when it cannot read now.
 */
static int
skip_damage(queue_t *q, size_t si, uint64_t off, uint64_t *next,
    uint64_t *next_seq)
{
    int                   fd;
    seg_t                *s;
    size_t                at, want;
    ssize_t               n;
    uint64_t              limit, pos, hi;
    const char           *err;
    mq_frame_hdr_t        h;
    const unsigned char  *p;

    s = &q->segs[si];
    limit = si == q->nsegs - 1 ? q->wbase : s->size;
    *next = si == q->nsegs - 1 ? s->size : limit;
    *next_seq = 0;
    hi = si + 1 < q->nsegs ? q->segs[si + 1].id - 1 : q->next_seq - 1;

    if (s->ver == 1 || rbuf_get(q) != 0) {
        return s->ver == 1 ? 0 : -1;
    }

    fd = seg_fd(q, si);
    if (fd == -1) {
        return errno == ENOENT ? 0 : -1;
    }

    for (pos = off + 1; pos < limit; pos += RBUF_SIZE - MQ_FRAME_HDR_SIZE) {
        want = limit - pos < RBUF_SIZE ? (size_t) (limit - pos) : RBUF_SIZE;
        n = sys.pread(fd, q->rbuf, want, (off_t) pos);
        if (n < 0) {
            q->rlen = 0;
            return -1;
        }

        q->rbuf_seg = s->id;
        q->rbuf_off = pos;
        q->rlen = (size_t) n;

        /* the file's mark keeps clients' bytes from checking; the id
         * range is a second guard */
        for (at = mq_frame_resync(q->rbuf, 0, q->rlen, UINT32_MAX - 64,
                                  s->mark);
             at < q->rlen;
             at = mq_frame_resync(q->rbuf, at + 1, q->rlen, UINT32_MAX - 64,
                                  s->mark))
        {
            p = q->rbuf + at;
            mq_frame_decode(p, q->rlen - at, UINT32_MAX - 64, s->mark, &h,
                            &err);
            if (h.kind == MQ_FRAME_ITEM && h.seq >= q->rseq && h.seq <= hi) {
                *next = pos + at;
                *next_seq = h.seq;
                return 0;
            }
        }

        if ((size_t) n < want || want < RBUF_SIZE) {
            break;
        }
    }

    if (*next > limit && si == q->nsegs - 1) {
        /* the unwritten tail starts at wbase with a good record */
        *next = limit;
        if (q->wlen > 0) {
            decode(s, q->wbuf, q->wlen, &h, &err);
            *next_seq = h.seq;
        }
    }

    return 0;
}


static size_t
seg_index(queue_t *q, uint64_t id)
{
    size_t  lo, hi, mid;

    lo = 0;
    hi = q->nsegs;

    while (hi - lo > 1) {
        mid = (lo + hi) / 2;
        if (q->segs[mid].id <= id) {
            lo = mid;
        } else {
            hi = mid;
        }
    }

    return lo;
}


/*
 * Appends the record h describes to q's tail segment (through the write
 * buffer) and, unless it is being replayed from there, to the journal.
 */
static int
append_record(queue_t *q, mq_frame_hdr_t *h, const void *data, int journal)
{
    int             rc, fd;
    size_t          reclen, ncap;
    seg_t          *tail;
    struct iovec    iov[2];
    unsigned char  *nb, hdr[MQ_FRAME_HDR_SIZE];

    reclen = MQ_FRAME_HDR_SIZE + (size_t) h->len;

    if (q->nsegs == 0
        || q->segs[q->nsegs - 1].ver != MQ_SEG_VERSION
        || (q->segs[q->nsegs - 1].size + reclen > srv.segment_size
            && q->segs[q->nsegs - 1].size > MQ_SEG_HDR_SIZE)
        || (q->nsegs > 0 && h->seq != q->next_seq))
    {
        /* a new segment: the first, a full tail, a tail of the old
         * format, or a gap in the ids (replay after damage) */
        rc = rotate_at(q, h->seq);
        if (rc != 0) {
            return rc == QUEUE_NOFD ? QUEUE_NOFD : QUEUE_IO;
        }
    }

    if (q->wlen + reclen > WBUF_SIZE && (rc = flush_wbuf_keep(q, 1)) != 0) {
        return rc == QUEUE_NOFD ? QUEUE_NOFD : QUEUE_IO;
    }

    tail = &q->segs[q->nsegs - 1];
    fd = -1;

    /* everything that can fail for want of resources comes before the
     * journal: a record the journal holds must be stored, or a later one
     * would take its id and replay would keep the wrong one */
    if (reclen > WBUF_SIZE) {
        fd = fdcache_get(q, tail->id, &tail->slot);
        if (fd == -1) {
            return errno == EMFILE || errno == ENFILE ? QUEUE_NOFD : QUEUE_IO;
        }

    } else if (q->wlen + reclen > q->wcap) {
        /* grown as needed: ten thousand queues written in one iteration
         * must not each cost WBUF_SIZE */
        ncap = q->wcap ? q->wcap : 1024;
        while (ncap < q->wlen + reclen) {
            ncap *= 2;
        }
        nb = realloc(q->wbuf, ncap);
        if (nb == NULL) {
            return QUEUE_NOFD;
        }
        q->wbuf = nb;
        q->wcap = ncap;
    }

    if (journal && journal_add(MQ_FRAME_JITEM, q->name, q->name_len, h, data,
                               h->len) != 0)
    {
        return QUEUE_NOFD;
    }

    if (fd != -1) {
        mq_frame_encode(hdr, h, data, tail->mark);
        iov[0].iov_base = hdr;
        iov[0].iov_len = sizeof(hdr);
        iov[1].iov_base = (void *) data;
        iov[1].iov_len = h->len;

        if (sys.pwritev(fd, iov, 2, (off_t) q->wbase) != (ssize_t) reclen) {
            /* the node stops taking writes; the journal keeps the record
             * and its id for the replay */
            log_error("queue", "%s: write: %s; refusing further writes",
                      q->name, strerror(errno));
            srv.readonly = 1;
            q->next_seq = h->seq + 1;
            return QUEUE_IO;
        }

        q->wbase += reclen;
        write_behind(q, fd);

    } else {
        memcpy(q->wbuf + q->wlen + MQ_FRAME_HDR_SIZE, data, h->len);
        mq_frame_encode(q->wbuf + q->wlen, h,
                        q->wbuf + q->wlen + MQ_FRAME_HDR_SIZE, tail->mark);
        q->wlen += reclen;
        wbuf_bytes += reclen;
    }

    tail->size += reclen;
    q->next_seq = h->seq + 1;
    q->items++;
    q->bytes += h->len;
    q->total_items++;
    srv.total_items++;
    mark_dirty(q);

    if (q->wait_head != NULL) {
        conn_wake(q->wait_head);
    }

    /* after the record is in place: an early write may switch journal
     * files, which writes every queue file first */
    if (journal && journal_flush_big() != 0) {
        return QUEUE_IO;
    }

    return QUEUE_OK;
}


int
queue_append(queue_t *q, uint32_t flags, int64_t exptime, const void *data,
    size_t len)
{
    int             rc;
    item_t          it;
    mq_frame_hdr_t  h;

    refresh_limits(q);

    while ((q->lim.max_items && q->items + 1 > q->lim.max_items)
           || (q->lim.max_bytes && q->bytes + len > q->lim.max_bytes))
    {
        if (!q->lim.drop_oldest || q->items == 0) {
            return QUEUE_FULL;
        }
        rc = queue_take(q, QUEUE_DROP, &it);
        if (rc < 0) {
            return QUEUE_NOFD;
        }
        if (rc == 0) {
            return QUEUE_FULL;
        }
    }

    h.len = (uint32_t) len;
    h.flags = flags;
    h.kind = MQ_FRAME_ITEM;
    h.seq = q->next_seq;
    h.ctime = server_wall_ms();
    h.exptime = exptime;

    return append_record(q, &h, data, 1);
}


int
queue_replay(queue_t *q, const mq_frame_hdr_t *jh, const void *data)
{
    int             at_end, consumed;
    uint64_t       *owed;
    item_ref_t      ref;
    mq_frame_hdr_t  h;

    h = *jh;
    h.kind = MQ_FRAME_ITEM;

    owed = q->rec_npending == 0 ? NULL
           : bsearch(&h.seq, q->rec_pending, q->rec_npending,
                     sizeof(uint64_t), cmp_u64);
    consumed = h.seq < q->rec_first && owed == NULL;
    at_end = q->nsegs == 0 || (q->rseg == q->nsegs - 1
                               && q->roff >= q->segs[q->rseg].size);

    if (append_record(q, &h, data, 0) != QUEUE_OK) {
        return -1;
    }

    if (h.seq < q->rec_first && at_end) {
        /* below the position file's cursor: in the file for
         * completeness, behind the cursor as before; an owed one goes
         * back to the head, as recovery does for owed items in files */
        ref.seq = h.seq;
        ref.seg = q->segs[q->nsegs - 1].id;
        ref.off = q->segs[q->nsegs - 1].size - MQ_FRAME_HDR_SIZE - h.len;
        ref.len = h.len;
        ref.deliveries = owed != NULL && q->rec_counts != NULL
                         ? q->rec_counts[owed - q->rec_pending] : 0;

        q->rseg = q->nsegs - 1;
        q->roff = q->segs[q->rseg].size;
        q->rseq = h.seq + 1;
        q->items -= q->items ? 1 : 0;
        q->bytes -= q->bytes < h.len ? q->bytes : h.len;

        if (!consumed) {
            queue_give_back(q, &ref);
        }
    }

    return 0;
}


static void
pop_head(queue_t *q, int from_ret, uint32_t len, uint64_t seq)
{
    if (from_ret) {
        if (++q->rhead == q->nret) {
            q->rhead = 0;
            q->nret = 0;
        }
    } else {
        q->roff += hdr_size(&q->segs[q->rseg]) + len;
        q->rseq = seq + 1;
    }

    /* counts never wrap, whatever damage did to them */
    q->items -= q->items ? 1 : 0;
    q->bytes -= q->bytes < len ? q->bytes : len;
    q->pos_dirty = 1;
    mark_dirty(q);
}


/* Skips the damaged log record at the cursor (segment si, off): counts
 * and logs the ids lost.  0, or -1 when the file cannot be read now. */
static int
skip_at_cursor(queue_t *q, size_t si, uint64_t off)
{
    uint64_t  next, next_seq, lost, end_seq;

    if (skip_damage(q, si, off, &next, &next_seq) != 0) {
        return -1;
    }

    end_seq = next_seq ? next_seq
              : si + 1 < q->nsegs ? q->segs[si + 1].id : q->next_seq;
    lost = end_seq > q->rseq ? end_seq - q->rseq : 1;

    if (lost > q->items - (q->nret - q->rhead)) {
        lost = q->items - (q->nret - q->rhead);
    }

    log_error("queue", "%s/%020" PRIu64 ".seg:%" PRIu64 ": damaged record, "
              "%" PRIu64 " bytes skipped, ids %" PRIu64 "-%" PRIu64 " lost",
              q->name, q->segs[si].id, off, next - off, q->rseq,
              q->rseq + (lost ? lost - 1 : 0));

    srv.corrupt_records += lost;
    q->items -= lost;
    q->bytes -= q->bytes < next - off ? q->bytes : next - off;
    q->roff = next;
    q->rseq = end_seq > q->rseq ? end_seq : q->rseq + 1;
    q->pos_dirty = 1;
    mark_dirty(q);
    return 0;
}


int
queue_take(queue_t *q, int how, item_t *it)
{
    int       from_ret, rc;
    size_t    si;
    uint64_t  off;

    refresh_limits(q);

    for ( ;; ) {
        if (q->rhead < q->nret) {
            from_ret = 1;
            si = seg_index(q, q->ret[q->rhead].seg);
            off = q->ret[q->rhead].off;

        } else {
            from_ret = 0;

            if (q->nsegs == 0) {
                return 0;
            }

            while (q->roff >= q->segs[q->rseg].size && q->rseg + 1 < q->nsegs)
            {
                q->rseg++;
                q->roff = MQ_SEG_HDR_SIZE;
                q->rseq = q->segs[q->rseg].id;
            }

            si = q->rseg;
            off = q->roff;

            while (q->skip_head < q->nskips
                   && (q->skips[q->skip_head].seg < q->segs[si].id
                       || (q->skips[q->skip_head].seg == q->segs[si].id
                           && q->skips[q->skip_head].off < off)))
            {
                q->skip_head++;     /* behind the cursor */
            }

            if (q->skip_head < q->nskips
                && q->skips[q->skip_head].seg == q->segs[si].id
                && q->skips[q->skip_head].off == off)
            {
                /* damage recovery already counted and logged */
                q->roff = q->skips[q->skip_head].next;
                if (q->skips[q->skip_head].next_seq) {
                    q->rseq = q->skips[q->skip_head].next_seq;
                }
                q->skip_head++;
                continue;
            }
        }

        rc = read_record(q, si, off, &it->hdr, &it->payload);

        if (rc == RD_END) {
            if (!from_ret) {
                /* the counters promised more than the files hold */
                if (q->items > q->nret - q->rhead) {
                    log_error("queue", "%s: %" PRIu64 " items missing from "
                              "the files", q->name,
                              q->items - (q->nret - q->rhead));
                    srv.corrupt_records += q->items - (q->nret - q->rhead);
                    q->items = q->nret - q->rhead;
                }
                return 0;
            }
            rc = RD_BAD;
        }

        if (rc == RD_BUSY) {
            return -1;
        }

        if (rc == RD_BAD) {
            if (from_ret) {
                log_error("queue", "%s/%020" PRIu64 ".seg:%" PRIu64 ": "
                          "damaged record, id %" PRIu64 " lost", q->name,
                          q->segs[si].id, off, q->ret[q->rhead].seq);
                srv.corrupt_records++;
                pop_head(q, 1, q->ret[q->rhead].len, q->ret[q->rhead].seq);
                continue;
            }
            if (skip_at_cursor(q, si, off) != 0) {
                return -1;
            }
            continue;
        }

        it->ref.seq = it->hdr.seq;
        it->ref.seg = q->segs[si].id;
        it->ref.off = off;
        it->ref.len = it->hdr.len;
        it->ref.deliveries = from_ret ? q->ret[q->rhead].deliveries : 0;

        q->age_seq = it->hdr.seq;
        q->age_ctime = it->hdr.ctime;

        if ((it->hdr.exptime != 0 && (uint64_t) it->hdr.exptime <= now_s())
            || (it->hdr.exptime < 0)
            || (q->lim.max_age
                && it->hdr.ctime + q->lim.max_age * 1000 <= server_wall_ms()))
        {
            pop_head(q, from_ret, it->hdr.len, it->hdr.seq);
            q->expired_items++;
            continue;
        }

        if (how == QUEUE_DELIVER && from_ret && q->lim.max_deliveries
            && it->ref.deliveries >= q->lim.max_deliveries
            && dead_letter(q, &it->ref) == 0)
        {
            pop_head(q, 1, it->hdr.len, it->hdr.seq);
            continue;
        }

        if (how != QUEUE_PEEK) {
            pop_head(q, from_ret, it->hdr.len, it->hdr.seq);
        }

        return 1;
    }
}


/* Puts one taken item back at the head of q, in seq order among the items
 * given back.  Memory for it is tried hard: the queue's given-back array
 * only grows by one. */
void
queue_give_back(queue_t *q, const item_ref_t *ref)
{
    size_t       i, n;
    item_ref_t  *nr;

    if (q->rhead > 0) {
        /* room in front: compact first */
        memmove(q->ret, q->ret + q->rhead,
                (q->nret - q->rhead) * sizeof(item_ref_t));
        q->nret -= q->rhead;
        q->rhead = 0;
    }

    if (q->nret == q->ret_cap) {
        nr = realloc(q->ret, (q->ret_cap + 1) * sizeof(item_ref_t));
        if (nr == NULL) {
            log_error("queue", "%s: id %" PRIu64 " lost: out of memory",
                      q->name, ref->seq);
            return;
        }
        q->ret = nr;
        q->ret_cap++;
    }

    n = q->nret;
    for (i = 0; i < n && q->ret[i].seq < ref->seq; i++) {
        /* void */
    }
    memmove(q->ret + i + 1, q->ret + i, (n - i) * sizeof(item_ref_t));
    q->ret[i] = *ref;
    q->nret++;
    q->items++;
    q->bytes += ref->len;
    q->pos_dirty = 1;
    mark_dirty(q);
}


static openset_t *
find_set(queue_t *q, openset_t *sets)
{
    for ( /* void */ ; sets; sets = sets->cnext) {
        if (sets->q == q) {
            return sets;
        }
    }

    return NULL;
}


int
queue_open(queue_t *q, conn_t *c, openset_t **conn_sets,
    const item_ref_t *ref)
{
    size_t       cap;
    openset_t   *os;
    item_ref_t  *nr;

    os = find_set(q, *conn_sets);

    if (os == NULL) {
        /* linked only with room for its first item: no set is ever
         * empty (giving one back sorts its refs) */
        os = calloc(1, sizeof(openset_t));
        if (os == NULL) {
            goto fail;
        }
        os->cap = 16;
        os->refs = malloc(os->cap * sizeof(item_ref_t));
        if (os->refs == NULL) {
            free(os);
            goto fail;
        }
        os->q = q;
        os->c = c;
        os->min_seq = UINT64_MAX;
        os->cnext = *conn_sets;
        *conn_sets = os;
        os->qnext = q->opensets;
        q->opensets = os;
    }

    if (os->n == os->cap) {
        cap = os->cap * 2;
        nr = realloc(os->refs, cap * sizeof(item_ref_t));
        if (nr == NULL) {
            goto fail;
        }
        os->refs = nr;
        os->cap = cap;
    }

    os->refs[os->n++] = *ref;
    if (ref->seq < os->min_seq) {
        os->min_seq = ref->seq;
    }
    q->open_items++;
    return 0;

fail:

    log_error("queue", "%s: out of memory for open items", q->name);
    return -1;
}


static void
unlink_set(openset_t *os, openset_t **conn_sets)
{
    openset_t  **pp;

    for (pp = conn_sets; *pp; pp = &(*pp)->cnext) {
        if (*pp == os) {
            *pp = os->cnext;
            break;
        }
    }

    for (pp = &os->q->opensets; *pp; pp = &(*pp)->qnext) {
        if (*pp == os) {
            *pp = os->qnext;
            break;
        }
    }

    free(os->refs);
    free(os);
}


void
queue_close_open(queue_t *q, conn_t *c, openset_t **conn_sets)
{
    openset_t  *os;

    os = find_set(q, *conn_sets);
    if (os == NULL) {
        return;
    }

    q->open_items -= os->n;
    q->pos_dirty = 1;
    mark_dirty(q);
    unlink_set(os, conn_sets);
}


static int
cmp_ref(const void *a, const void *b)
{
    uint64_t  x = ((const item_ref_t *) a)->seq;
    uint64_t  y = ((const item_ref_t *) b)->seq;

    return x < y ? -1 : x > y;
}


/* The index of the first given-back item of q whose seq is not below
 * `seq` (q->nret when none is). */
static size_t
ret_find(const queue_t *q, uint64_t seq)
{
    size_t  lo, hi, mid;

    lo = q->rhead;
    hi = q->nret;
    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (q->ret[mid].seq < seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }

    return lo;
}


/*
 * Merges refs[0..n) (sorted by seq) into the items given back: the head
 * of q, in seq order.  0, or -1 when out of memory (nothing changed).
 *
 * It costs O(n) plus the given-back items on one side of refs, never a
 * copy of them all: into the room in front that taking from the head
 * left (an item leased or opened and given back comes from there) when
 * fewer items sort below refs' last than above refs' first, else from
 * the back into the room at the end (leases running out in id order are
 * appended), which grows by doubling.  A copy of them all for each (a
 * touch 0 each, say) cost a node with 300,000 items given back 8 ms a
 * give-back (BENCHMARKS.md).
 */
static int
merge_back(queue_t *q, const item_ref_t *refs, size_t n)
{
    size_t       i, j, k, live, cap;
    item_ref_t  *nr;

    if (n == 0) {
        return 0;
    }

    live = q->nret - q->rhead;

    if (n <= q->rhead
        && ret_find(q, refs[n - 1].seq) - q->rhead
           <= q->nret - ret_find(q, refs[0].seq))
    {
        /* from the front: ret[rhead..) and refs into ret[rhead - n..) */
        i = q->rhead;
        j = 0;
        k = q->rhead - n;
        q->rhead = k;
        while (j < n) {
            if (i < q->nret && q->ret[i].seq < refs[j].seq) {
                q->ret[k++] = q->ret[i++];
            } else {
                q->ret[k++] = refs[j++];
            }
        }
        goto merged;
    }

    if (q->nret + n > q->ret_cap) {
        if (live + n <= q->ret_cap) {
            memmove(q->ret, q->ret + q->rhead, live * sizeof(item_ref_t));

        } else {
            cap = q->ret_cap * 2 > live + n ? q->ret_cap * 2 : live + n;
            nr = malloc(cap * sizeof(item_ref_t));
            if (nr == NULL) {
                return -1;
            }
            if (live > 0) {
                memcpy(nr, q->ret + q->rhead, live * sizeof(item_ref_t));
            }
            free(q->ret);
            q->ret = nr;
            q->ret_cap = cap;
        }

        q->rhead = 0;
        q->nret = live;
    }

    /* from the back: ret[rhead..i) and refs[0..j) into ret[..k) */
    i = q->nret;
    j = n;
    k = q->nret + n;
    while (j > 0) {
        if (i > q->rhead && q->ret[i - 1].seq > refs[j - 1].seq) {
            q->ret[--k] = q->ret[--i];
        } else {
            q->ret[--k] = refs[--j];
        }
    }

    q->nret += n;

merged:

    for (j = 0; j < n; j++) {
        q->bytes += refs[j].len;
    }

    q->items += n;
    q->pos_dirty = 1;
    mark_dirty(q);

    /* one waiter per item given back */
    for (j = 0; j < n && q->wait_head != NULL; j++) {
        conn_wake(q->wait_head);
    }

    return 0;
}


/*
 * Appends the item ref names to q's dead-letter queue: flags, bytes and
 * expiry unchanged, journaled like a set.  0, or -1 when it cannot (no
 * such queue name, the record unreadable, the queue full, writes
 * refused): the caller gives the item back instead.
 */
static int
dead_letter(queue_t *q, const item_ref_t *ref)
{
    int                   rc;
    char                  name[MQ_NAME_MAX + 1];
    size_t                len;
    queue_t              *d;
    unsigned char        *copy;
    mq_frame_hdr_t        h;
    const unsigned char  *payload;

    len = config_dead_letter(q->name, q->name_len, name);

    if (len == 0 || (len == q->name_len && memcmp(name, q->name, len) == 0)
        || srv.readonly)
    {
        rc = QUEUE_IO;
        goto failed;
    }

    if (read_record(q, seg_index(q, ref->seg), ref->off, &h, &payload)
        != RD_OK)
    {
        rc = QUEUE_NOFD;
        goto failed;
    }

    /* the payload lives in a buffer the append may reuse */
    copy = malloc(h.len ? h.len : 1);
    if (copy == NULL) {
        rc = QUEUE_NOFD;
        goto failed;
    }
    memcpy(copy, payload, h.len);

    d = queue_lookup(name, len, 2);
    rc = d ? queue_append(d, h.flags, h.exptime, copy, h.len) : QUEUE_IO;
    free(copy);

    if (rc != QUEUE_OK) {
        goto failed;
    }

    q->dead_lettered_items++;
    if (srv.sync_mode == SYNC_ALWAYS) {
        /* the position file may drop the item only once the dead-letter
         * queue's record is durable */
        q->dlq_ticket = sync_next_ticket();
    }
    return 0;

failed:

    if (log_rate_ok(&dlq_warn, loop_now())) {
        log_warn("queue", "%s: id %" PRIu64 " delivered %" PRIu32 " times "
                 "stays: dead-letter queue %s %s", q->name, ref->seq,
                 ref->deliveries, len ? name : "(name too long)",
                 rc == QUEUE_FULL ? "full" : "not writable now");
    }
    return -1;
}


/* Moves the items of refs[0..n) that reached max_deliveries to the
 * dead-letter queue; compacts the rest, in order.  Returns how many are
 * left. */
static size_t
sort_out_dead(queue_t *q, item_ref_t *refs, size_t n)
{
    size_t  i, k;

    refresh_limits(q);

    if (q->lim.max_deliveries == 0) {
        return n;
    }

    for (i = 0, k = 0; i < n; i++) {
        if (refs[i].deliveries >= q->lim.max_deliveries
            && dead_letter(q, &refs[i]) == 0)
        {
            continue;
        }
        refs[k++] = refs[i];
    }

    return k;
}


static void
give_back(openset_t *os, openset_t **conn_sets)
{
    size_t    i, n, left;
    queue_t  *q;

    q = os->q;
    n = os->n;

    qsort(os->refs, n, sizeof(item_ref_t), cmp_ref);

    left = sort_out_dead(q, os->refs, n);
    q->open_items -= n - left;
    os->n = left;

    if (merge_back(q, os->refs, left) != 0) {
        /* keep them open rather than lose them; they will come back on
         * restart at the latest (the watermark still covers them) */
        log_error("queue", "%s: out of memory giving items back", q->name);
        os->min_seq = UINT64_MAX;
        for (i = 0; i < left; i++) {
            if (os->refs[i].seq < os->min_seq) {
                os->min_seq = os->refs[i].seq;
            }
        }
        return;
    }

    q->open_items -= left;
    unlink_set(os, conn_sets);
}


void
queue_abort_open(queue_t *q, conn_t *c, openset_t **conn_sets)
{
    openset_t  *os;

    os = find_set(q, *conn_sets);
    if (os != NULL) {
        give_back(os, conn_sets);
    }
}


void
queue_abort_conn(openset_t **conn_sets)
{
    openset_t  *os;

    while ((os = *conn_sets) != NULL) {
        give_back(os, conn_sets);
        if (*conn_sets == os) {
            /* could not give back: drop the link, keep the watermark */
            *conn_sets = os->cnext;
            os->c = NULL;
        }
    }
}


/* ---- leases (lease.h holds the structures) ---- */


/* Arms the lease timer for the earliest deadline when it is not armed
 * for it or earlier already.  A lease acknowledged meanwhile leaves the
 * timer early: it then finds nothing due and arms for the next. */
static void
arm_lease_timer(void)
{
    lease_t   *l;
    uint64_t   now;

    l = lease_min();
    if (l == NULL) {
        loop_timer_del(&lease_timer);
        return;
    }

    if (lease_timer.index == 0 || lease_timer.deadline > l->deadline) {
        now = loop_now();
        loop_timer_add(&lease_timer, l->deadline > now ? l->deadline - now
                                                       : 0);
    }
}


/* Gives back refs[0..n) of q (sorted by seq), whose leases are over:
 * dead letters first, the rest to the head of q. */
static void
give_back_refs(queue_t *q, item_ref_t *refs, size_t n)
{
    size_t  i;

    q->pos_dirty = 1;
    mark_dirty(q);
    n = sort_out_dead(q, refs, n);

    if (merge_back(q, refs, n) != 0) {
        /* one at a time: the array grows by one each */
        for (i = 0; i < n; i++) {
            queue_give_back(q, &refs[i]);
            if (q->wait_head != NULL) {
                conn_wake(q->wait_head);
            }
        }
    }
}


typedef struct {
    queue_t     *q;          /* (ref) */
    item_ref_t   ref;
} expired_t;


static int
cmp_expired(const void *a, const void *b)
{
    const expired_t  *x = a, *y = b;

    if (x->q != y->q) {
        return (uintptr_t) x->q < (uintptr_t) y->q ? -1 : 1;
    }

    return x->ref.seq < y->ref.seq ? -1 : x->ref.seq > y->ref.seq;
}


/*
 * Leases that ran out go back, EXPIRE_BATCH at a time: grouped by queue
 * and sorted, so each queue merges them into its head in one pass (one
 * at a time, 100,000 leases running out together would cost a memmove
 * each).
 */
static void
lease_timer_handler(loop_timer_t *t)
{
    size_t            n, i, j, k;
    lease_t          *l;
    uint64_t          now;
    static expired_t   ex[EXPIRE_BATCH];
    static item_ref_t  refs[EXPIRE_BATCH];

    now = loop_now();

    do {
        n = 0;
        while (n < EXPIRE_BATCH && (l = lease_min()) != NULL
               && l->deadline <= now)
        {
            ex[n].q = l->q;
            ex[n].ref = l->ref;
            lease_remove(l);
            n++;
        }

        qsort(ex, n, sizeof(expired_t), cmp_expired);

        for (i = 0; i < n; i = j) {
            for (j = i, k = 0; j < n && ex[j].q == ex[i].q; j++) {
                refs[k++] = ex[j].ref;
            }
            give_back_refs(ex[i].q, refs, k);
        }

    } while (n == EXPIRE_BATCH);

    arm_lease_timer();
}


int
queue_lease(queue_t *q, const item_ref_t *ref, uint64_t ms)
{
    uint64_t  deadline;

    deadline = loop_now() + ms;

    if (lease_add(q, ref, deadline) == NULL) {
        log_error("queue", "%s: out of memory for leases", q->name);
        return -1;
    }

    /* a timer armed for this deadline or before stays right */
    if (lease_timer.index == 0 || lease_timer.deadline > deadline) {
        lease_timer.handler = lease_timer_handler;
        arm_lease_timer();
    }

    return 0;
}


int
queue_ack(queue_t *q, uint64_t seq)
{
    lease_t         *l;
    mq_frame_hdr_t   h;

    l = lease_find(q, seq);
    if (l == NULL) {
        return 0;
    }

    /* journaled: recovery after a crash never delivers it again */
    memset(&h, 0, sizeof(h));
    h.seq = seq;
    if (journal_add(MQ_FRAME_JACK, q->name, q->name_len, &h, NULL, 0) != 0) {
        return -1;
    }

    lease_remove(l);
    q->acked = srv.sync_mode == SYNC_ALWAYS;
    q->pos_dirty = 1;
    mark_dirty(q);
    return 1;
}


int
queue_ack_list(queue_t *q, const uint64_t *ids, size_t n, uint64_t *acked)
{
    size_t           i, k;
    lease_t         *l;
    mq_frame_hdr_t   h;
    static unsigned char  rec[QUEUE_ACK_MAX * 8];

    *acked = 0;

    if (n > QUEUE_ACK_MAX) {
        return -1;
    }

    lease_prefetch(q, ids, n);

    if (journal_on()) {
        /* the leased ids first, in one record: when the journal refuses
         * it, every lease stays */
        for (i = 0, k = 0; i < n; i++) {
            if (lease_find(q, ids[i]) != NULL) {
                mq_frame_ids_encode(rec + 8 * k++, &ids[i], 1);
            }
        }

        if (k == 0) {
            return 0;
        }

        memset(&h, 0, sizeof(h));
        if (journal_add(MQ_FRAME_JACKS, q->name, q->name_len, &h, rec,
                        8 * k)
            != 0)
        {
            return -1;
        }
    }

    for (i = 0; i < n; i++) {
        l = lease_find(q, ids[i]);
        if (l != NULL) {
            lease_remove(l);
            (*acked)++;
        }
    }

    if (*acked > 0) {
        q->acked = srv.sync_mode == SYNC_ALWAYS;
        q->pos_dirty = 1;
        mark_dirty(q);
    }

    return 0;
}


int
queue_touch(queue_t *q, uint64_t seq, uint64_t ms)
{
    lease_t     *l;
    item_ref_t   ref;

    l = lease_find(q, seq);
    if (l == NULL) {
        return 0;
    }

    if (ms > 0) {
        if (lease_renew(l, loop_now() + ms) != 0) {
            log_error("queue", "%s: out of memory for leases", q->name);
            return -1;
        }
        lease_timer.handler = lease_timer_handler;
        arm_lease_timer();
        return 1;
    }

    /* given back at once */
    ref = l->ref;
    lease_remove(l);
    give_back_refs(q, &ref, 1);
    arm_lease_timer();
    return 1;
}


void
queue_save_acked(void)
{
    size_t    k;
    queue_t  *q;
    uint64_t  w;

    for (k = 0; k < HASH_SIZE; k++) {
        for (q = hash[k]; q; q = q->hnext) {
            if (!q->on_disk || !q->acked) {
                continue;
            }
            w = watermark(q);
            if (save_position(q, 1) != 0) {
                log_warn("queue", "%s: position: %s; acknowledged leases "
                         "may come back after a crash", q->name,
                         strerror(errno));
                continue;
            }
            q->pos_written = w;
        }
    }
}


void
queue_flush(queue_t *q)
{
    q->rhead = 0;
    q->nret = 0;
    q->items = 0;
    q->bytes = 0;

    if (q->nsegs > 0) {
        q->rseg = q->nsegs - 1;
        q->roff = q->segs[q->rseg].size;
    }

    q->rseq = q->next_seq;
    q->pos_dirty = 1;
    mark_dirty(q);
}


void
queue_flush_all(void)
{
    queue_t  *q;

    for (q = queue_next(NULL); q; q = queue_next(q)) {
        queue_flush(q);
    }
}


/* Unlinks q/<name>; ENOENT is fine. */
static void
unlink_in(queue_t *q, const char *name)
{
    char  path[MQ_NAME_MAX + SEG_NAME_LEN + 2];

    snprintf(path, sizeof(path), "%s/%s", q->name, name);
    if (unlinkat(srv.data_fd, path, 0) != 0 && errno != ENOENT) {
        log_warn("queue", "%s: unlink: %s", path, strerror(errno));
    }
}


int
queue_delete(queue_t *q)
{
    char           name[SEG_NAME_LEN + 1];
    size_t         i;
    conn_t        *c;
    openset_t     *os;

    if (!q->on_disk) {
        return -1;
    }

    /* journaled first: a crash before the files are gone still ends with
     * the queue deleted */
    if (journal_add(MQ_FRAME_JDROP, q->name, q->name_len, NULL, NULL, 0)
        != 0)
    {
        return -1;
    }

    /* open items die with the queue */
    while ((os = q->opensets) != NULL) {
        q->opensets = os->qnext;
        os->qnext = NULL;
        if (os->c != NULL) {
            openset_t **pp;
            for (pp = &os->c->opensets; *pp; pp = &(*pp)->cnext) {
                if (*pp == os) {
                    *pp = os->cnext;
                    break;
                }
            }
        }
        free(os->refs);
        free(os);
    }

    fdcache_drop_queue(q);

    for (i = 0; i < q->nsegs; i++) {
        seg_name(name, q->segs[i].id);
        unlink_in(q, name);
    }
    q->nsegs = 0;

    unlink_in(q, "position");
    unlink_in(q, "position.tmp");

    if (unlinkat(srv.data_fd, q->name, AT_REMOVEDIR) != 0) {
        log_warn("queue", "%s: rmdir: %s", q->name, strerror(errno));
    }

    hash_remove(q);

    /* waiters go on waiting, on a ghost of the same name */
    while ((c = q->wait_head) != NULL) {
        conn_wake(c);
    }

    queue_free(q);
    return 0;
}


void
queue_wait_add(queue_t *q, conn_t *c)
{
    c->wnext = NULL;
    c->wprev = q->wait_tail;

    if (q->wait_tail) {
        q->wait_tail->wnext = c;
    } else {
        q->wait_head = c;
    }

    q->wait_tail = c;
    q->nwaiters++;
    srv.curr_waiters++;
    c->wait_q = q;
}


void
queue_wait_del(queue_t *q, conn_t *c)
{
    if (c->wprev) {
        c->wprev->wnext = c->wnext;
    } else {
        q->wait_head = c->wnext;
    }

    if (c->wnext) {
        c->wnext->wprev = c->wprev;
    } else {
        q->wait_tail = c->wprev;
    }

    c->wnext = NULL;
    c->wprev = NULL;
    c->wait_q = NULL;
    q->nwaiters--;
    srv.curr_waiters--;
    queue_release(q);
}


void
queue_wake_all_waiters(void)
{
    int       last;
    size_t    i;
    conn_t   *c;
    queue_t  *q, *next;

    /* ghosts too: a long poll on a queue that does not exist also ends */
    for (i = 0; i < HASH_SIZE; i++) {
        for (q = hash[i]; q; q = next) {
            next = q->hnext;

            while ((c = q->wait_head) != NULL) {
                /* waking the last waiter of a ghost frees the ghost */
                last = c->wnext == NULL && !q->on_disk;
                conn_wake(c);
                if (last) {
                    break;
                }
            }
        }
    }
}


/* ctime of the head item, reading its header alone when it is not in the
 * read-ahead: `stats` over ten thousand queues reads 48 bytes of each. */
static int
head_ctime(queue_t *q, uint64_t *ctime)
{
    int             fd;
    size_t          si;
    seg_t          *s;
    uint64_t        off, seq;
    const char     *err;
    mq_frame_hdr_t  h;
    unsigned char   b[MQ_FRAME_HDR_SIZE];

    if (q->rhead < q->nret) {
        si = seg_index(q, q->ret[q->rhead].seg);
        off = q->ret[q->rhead].off;
        seq = q->ret[q->rhead].seq;
    } else {
        if (q->nsegs == 0) {
            return -1;
        }
        si = q->rseg;
        off = q->roff;
        seq = q->rseq;
        if (off >= q->segs[si].size && si + 1 < q->nsegs) {
            si++;
            off = MQ_SEG_HDR_SIZE;
            seq = q->segs[si].id;
        }
    }

    if (q->age_seq == seq && seq != 0) {
        *ctime = q->age_ctime;
        return 0;
    }

    s = &q->segs[si];

    if (si == q->nsegs - 1 && off >= q->wbase) {
        if (decode(s, q->wbuf + (off - q->wbase),
                   q->wlen - (size_t) (off - q->wbase), &h, &err) != MQ_OK)
        {
            return -1;
        }

    } else {
        fd = seg_fd(q, si);
        if (fd == -1 || sys.pread(fd, b, hdr_size(s), (off_t) off)
                        != (ssize_t) hdr_size(s))
        {
            return -1;
        }
        /* the header alone: MQ_AGAIN with h filled in is what we want */
        if (decode(s, b, hdr_size(s), &h, &err) == MQ_ERROR) {
            return -1;
        }
    }

    q->age_seq = seq;
    q->age_ctime = h.ctime;
    *ctime = h.ctime;
    return 0;
}


uint64_t
queue_age_ms(queue_t *q)
{
    uint64_t  now, ctime;

    if (q->items == 0 || head_ctime(q, &ctime) != 0) {
        return 0;
    }

    now = server_wall_ms();
    return now > ctime ? now - ctime : 0;
}


queue_t *
queue_next(queue_t *q)
{
    size_t  i;

    i = 0;

    if (q != NULL) {
        i = hash_name(q->name, q->name_len) + 1;

        for (q = q->hnext; q; q = q->hnext) {
            if (q->on_disk) {
                return q;
            }
        }
    }

    for ( /* void */ ; i < HASH_SIZE; i++) {
        for (q = hash[i]; q; q = q->hnext) {
            if (q->on_disk) {
                return q;
            }
        }
    }

    return NULL;
}


void
queue_totals(uint64_t *items, uint64_t *bytes)
{
    queue_t  *q;

    *items = 0;
    *bytes = 0;

    for (q = queue_next(NULL); q; q = queue_next(q)) {
        *items += q->items;
        *bytes += q->bytes;
    }
}


/* seq of the next record the log cursor delivers */
static uint64_t
log_cursor(queue_t *q)
{
    /* from where the cursor is, never from the item counter: damage can
     * make the counter wrong, and this value decides what is deleted */
    if (q->nsegs == 0
        || (q->rseg == q->nsegs - 1 && q->roff >= q->segs[q->rseg].size))
    {
        return q->next_seq;
    }

    return q->rseq;
}


/* lowest seq still owed to a consumer: segments below it can go */
static uint64_t
watermark(queue_t *q)
{
    uint64_t    w;
    openset_t  *os;

    w = log_cursor(q);

    if (lease_min_seq(q) < w) {
        w = lease_min_seq(q);
    }

    if (q->rhead < q->nret && q->ret[q->rhead].seq < w) {
        w = q->ret[q->rhead].seq;
    }

    for (os = q->opensets; os; os = os->qnext) {
        if (os->min_seq < w) {
            w = os->min_seq;
        }
    }

    return w;
}


typedef struct {
    uint64_t  seq;
    uint32_t  deliveries;
} owed_t;


static int
cmp_owed(const void *a, const void *b)
{
    uint64_t  x = ((const owed_t *) a)->seq, y = ((const owed_t *) b)->seq;

    return x < y ? -1 : x > y;
}


static void
lease_owed(lease_t *l, void *arg)
{
    owed_t  **o = arg;

    (*o)->seq = l->ref.seq;
    (*o)->deliveries = l->ref.deliveries;
    (*o)++;
}


/*
 * Writes the position file: the log cursor plus every item still owed
 * (given back, open or leased) with its delivery count, so that a restart
 * redelivers exactly those.  With more than POS_PENDING_MAX owed items the
 * file holds the watermark only, unless `precise` (shutdown, a journal
 * switch): a crash may then deliver consumed items again, which
 * at-least-once allows.  But once a lease was acknowledged, a watermark
 * alone would bring that item back after the journal that holds its
 * acknowledgement is gone: the file is then left as it is (1 returned)
 * until a precise write.  0 written, -1 failed.
 */
static int
save_position(queue_t *q, int precise)
{
    int          rc;
    size_t       n, k, i;
    owed_t      *owed, *o;
    uint64_t    *seqs;
    uint32_t    *counts;
    openset_t   *os;

    n = q->nret - q->rhead + q->leased_items;
    for (os = q->opensets; os; os = os->qnext) {
        n += os->n;
    }

    if (n > POS_PENDING_MAX && !precise && q->acked) {
        return 1;
    }

    owed = NULL;
    seqs = NULL;
    counts = NULL;
    if (n > 0 && (n <= POS_PENDING_MAX || precise)) {
        owed = malloc(n * sizeof(owed_t));
        seqs = malloc(n * sizeof(uint64_t));
        counts = malloc(n * sizeof(uint32_t));
    }

    if (n == 0) {
        rc = position_save_counts(srv.data_fd, q->name, log_cursor(q), NULL,
                                  NULL, 0);
        q->acked = 0;

    } else if (owed == NULL || seqs == NULL || counts == NULL) {
        rc = q->acked ? -1 : position_save_counts(srv.data_fd, q->name,
                                                  watermark(q), NULL, NULL,
                                                  0);

    } else {
        o = owed;
        for (i = q->rhead; i < q->nret; i++, o++) {
            o->seq = q->ret[i].seq;
            o->deliveries = q->ret[i].deliveries;
        }
        for (os = q->opensets; os; os = os->qnext) {
            for (i = 0; i < os->n; i++, o++) {
                o->seq = os->refs[i].seq;
                o->deliveries = os->refs[i].deliveries;
            }
        }
        lease_each(q, lease_owed, &o);

        k = (size_t) (o - owed);
        qsort(owed, k, sizeof(owed_t), cmp_owed);
        for (i = 0; i < k; i++) {
            seqs[i] = owed[i].seq;
            counts[i] = owed[i].deliveries;
        }

        rc = position_save_counts(srv.data_fd, q->name, log_cursor(q), seqs,
                                  counts, k);
        if (rc == 0) {
            q->acked = 0;
        }
    }

    free(owed);
    free(seqs);
    free(counts);
    return rc;
}


/* Deletes segments every record of which is below the watermark. */
static void
collect_segments(queue_t *q, uint64_t w)
{
    char  name[SEG_NAME_LEN + 1];

    while (q->nsegs > 1 && q->segs[1].id <= w && q->rseg > 0) {
        seg_name(name, q->segs[0].id);
        fdcache_drop(q, q->segs[0].id, q->segs[0].slot);
        unlink_in(q, name);

        if (q->rbuf_seg == q->segs[0].id) {
            q->rlen = 0;
        }

        memmove(&q->segs[0], &q->segs[1], (q->nsegs - 1) * sizeof(seg_t));
        q->nsegs--;
        q->rseg--;
    }
}


void
queue_sync_done(uint64_t durable, int failed)
{
    journal_durable(durable);
    conn_sync_done(durable, failed);
}


static void
write_one(queue_t *q, int *rc)
{
    if (q->on_disk && q->wlen > 0) {
        switch (flush_wbuf(q)) {
        case 0:
            break;
        case QUEUE_NOFD:
            if (*rc == 0) {
                *rc = QUEUE_NOFD;
            }
            break;
        default:
            *rc = -1;
        }
    }
}


int
queue_write_all(void)
{
    int       rc;
    queue_t  *q;

    rc = 0;

    /* a queue with unwritten appends is on one list or both */
    for (q = dirty_list; q; q = q->dnext) {
        write_one(q, &rc);
    }

    for (q = later_list; q; q = q->lnext) {
        write_one(q, &rc);
    }

    return rc;
}


/* the waiter woken for q's items went away before it took them (closed
 * in the same iteration): the next one is woken.  1 if one was. */
static int
wake_check(queue_t *q)
{
    if (q->items > 0 && q->wait_head != NULL) {
        conn_wake(q->wait_head);
        return 1;
    }

    return 0;
}


/* q's position once the interval came: saved, unless a dead letter's
 * record is not durable yet (the file still owes the item until it is).
 * 1 when a file was written. */
static int
save_later(queue_t *q)
{
    int       rc;
    uint64_t  w;

    if (q->dlq_ticket > sync_durable()) {
        mark_later(q);
        return 0;
    }

    q->pos_dirty = 0;
    w = watermark(q);

    rc = save_position(q, 0);
    if (rc < 0) {
        log_warn("queue", "%s: position: %s", q->name, strerror(errno));
        q->pos_dirty = 1;
        mark_later(q);
    } else if (rc == 0) {
        q->pos_written = w;
    }

    collect_segments(q, q->pos_written);
    return rc == 0;
}


int
queue_before_sleep(void)
{
    int       pos_due, woke;
    size_t    saves;
    queue_t  *q, *next;
    uint64_t  w;

    pos_due = srv.stopping || loop_now() - last_pos_flush >= POS_INTERVAL;
    if (pos_due) {
        last_pos_flush = loop_now();
    }

    /*
     * The journal makes appends durable; the queue files need them only
     * for reading, which the write buffers serve meanwhile.  So queue
     * files are written in large pieces: when a buffer is full, every
     * POS_INTERVAL, past WBUF_BUDGET in all, and before the journal
     * switches files (journal.c), where a checkpoint must find every
     * record of the full file in its queue file.
     */
    if (!srv.readonly && (pos_due || wbuf_bytes > WBUF_BUDGET
                          || srv.sync_mode != SYNC_ALWAYS))
    {
        /* (without a journal, the files are the only copy: at once) */
        queue_write_all();
    }

    if (!srv.readonly) {
        journal_commit(srv.sync_mode == SYNC_ALWAYS);
    }

    woke = 0;

    /*
     * The queues touched in this iteration; those with appends not
     * written yet or a position to save wait on the later list, which is
     * walked once a POS_INTERVAL only: with thousands of queues written
     * a little each, walking them all every iteration cost a fifth of the
     * node's CPU.
     */
    for (q = dirty_list, dirty_list = NULL; q; q = next) {
        next = q->dnext;
        q->dirty = 0;

        if (!q->on_disk) {
            continue;
        }

        woke |= wake_check(q);

        if (q->wlen > 0 || q->pos_dirty) {
            mark_later(q);
        }
    }

    /*
     * At most POS_SAVES_MAX position files an interval, in the order the
     * queues came to the list; the others keep their place at its head
     * for the next interval.  With thousands of queues consumed at once,
     * a position file written for each every 100 ms was a write for every
     * two items delivered (BENCHMARKS.md); so past 1024 queues, each
     * queue's file is written every (queues / 1024) intervals: the items
     * a crash may deliver again are those of that long.  Shutdown writes
     * them all.
     */
    if (pos_due) {
        saves = 0;
        q = later_list;
        later_list = NULL;
        later_tail = NULL;

        for ( /* void */ ; q; q = next) {
            next = q->lnext;
            q->later = 0;

            if (!q->on_disk) {
                continue;
            }

            /* (and a waiter missed, at worst this late) */
            woke |= wake_check(q);

            if (q->pos_dirty) {
                if (saves < POS_SAVES_MAX || srv.stopping) {
                    /* (one that cannot be written, or waits for a dead
                     * letter, leaves its turn to the next) */
                    saves += save_later(q);
                } else {
                    mark_later(q);
                }
            }

            if (q->wlen > 0) {
                /* not written (no descriptor, or writes refused) */
                mark_later(q);
            }
        }
    }

    if (later_list != NULL && pos_timer.index == 0) {
        w = loop_now() - last_pos_flush;
        loop_timer_add(&pos_timer, w < POS_INTERVAL ? POS_INTERVAL - w : 0);
    }

    if (srv.readonly && conn_parked()) {
        /* a write failed: the STOREDs waiting for it must never be sent */
        conn_sync_done(0, 1);
    }

    return woke;
}


/* --sync interval: every queue file written so far, and the directories,
 * made durable by one syncfs in the background thread (journal_syncfs) */
static void
interval_done(sync_job_t *job, int rc)
{
    if (rc != 0) {
        srv.readonly = 1;
    }
}


static sync_job_t  interval_job = { journal_syncfs, interval_done, 0, 0, 0,
                                    NULL };


void
queue_sync_all(int wait)
{
    if (!srv.readonly) {
        queue_write_all();
        sync_job(&interval_job);     /* (one at a time: busy is fine) */
    }
}


void
queue_shutdown(void)
{
    int       i, unwritten;
    size_t    k;
    queue_t  *q, *next;

    srv.stopping = 1;
    queue_before_sleep();

    for (k = 0; k < HASH_SIZE; k++) {
        for (q = hash[k]; q; q = q->hnext) {
            if (q->on_disk) {
                save_position(q, 1);
            }
        }
    }

    unwritten = srv.readonly || queue_write_all() != 0;
    sync_shutdown();

    /* records still only in the journal keep it for the next start */
    journal_shutdown(unwritten);

    for (k = 0; k < HASH_SIZE; k++) {
        for (q = hash[k]; q; q = next) {
            next = q->hnext;
            queue_free(q);
        }
        hash[k] = NULL;
    }

    fdcache_close_all();
    loop_timer_del(&lease_timer);
    lease_shutdown();

    for (i = 0; i < RBUF_SLOTS; i++) {
        free(rbufs[i].buf);
        rbufs[i].buf = NULL;
    }

    free(scratch);
    scratch = NULL;
    scratch_cap = 0;
    wbuf_bytes = 0;
}
