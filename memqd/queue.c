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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "loop.h"
#include "queue.h"
#include "segment.h"
#include "server.h"
#include "sync.h"
#include "sys.h"

#define WBUF_SIZE      (64 * 1024)
#define RBUF_SIZE      (64 * 1024)
#define HASH_SIZE      4096          /* buckets; chains stay short enough */
#define POS_INTERVAL   100           /* ms between position file writes */
#define POS_PENDING_MAX 4096         /* owed items listed in it, at most */

static queue_t        *hash[HASH_SIZE];
static queue_t        *dirty_list;
static unsigned char  *scratch;      /* records larger than RBUF_SIZE */
static size_t          scratch_cap;
static uint64_t        last_pos_flush;
static loop_timer_t    pos_timer;     /* wakes the loop for deferred
                                         position writes */


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
    q->dirfd = -1;
    q->next_seq = 1;
    q->rseq = 1;
    return q;
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
    size_t      i;
    queue_t   **pp;

    for (pp = &dirty_list; *pp; pp = &(*pp)->dnext) {
        if (*pp == q) {
            *pp = q->dnext;
            break;
        }
    }

    for (i = 0; i < q->nsegs; i++) {
        close(q->segs[i].fd);
    }

    if (q->dirfd != -1) {
        close(q->dirfd);
    }

    free(q->segs);
    free(q->wbuf);
    free(q->rbuf);
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
    size_t          n;
    queue_t        *q;
    struct stat     st;
    struct dirent  *de;

    pos_timer.handler = pos_timer_handler;

    d = dir_stream(srv.data_fd);
    if (d == NULL) {
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

        q = queue_alloc(de->d_name, n);
        if (q == NULL) {
            closedir(d);
            return -1;
        }

        q->dirfd = openat(srv.data_fd, de->d_name,
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (q->dirfd == -1 || recover_queue(q) != 0) {
            /* refuse to start rather than serve without it: a later set
             * would write beside records we could not read */
            log_error("recover", "%s: cannot recover the queue", de->d_name);
            queue_free(q);
            closedir(d);
            return -1;
        }

        q->on_disk = 1;
        refresh_limits(q);
        hash_insert(q);
        mark_dirty(q);
    }

    closedir(d);
    return 0;
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
        if (mkdirat(srv.data_fd, q->name, 0755) != 0 && errno != EEXIST) {
            log_error("queue", "%s: mkdir: %s", q->name, strerror(errno));
            return NULL;
        }

        q->dirfd = openat(srv.data_fd, q->name,
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (q->dirfd == -1) {
            log_error("queue", "%s: open: %s", q->name, strerror(errno));
            return NULL;
        }

        q->on_disk = 1;
        q->sync_dir = 1;          /* the data dir gained an entry */
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


static int
flush_wbuf(queue_t *q)
{
    if (q->wlen == 0) {
        return 0;
    }

    if (seg_pwrite(q->segs[q->nsegs - 1].fd, q->wbuf, q->wlen, q->wbase)
        != 0)
    {
        if (!srv.readonly) {
            log_error("queue", "%s: write: %s; refusing further writes",
                      q->name, strerror(errno));
        }
        srv.readonly = 1;
        return -1;
    }

    q->wbase += q->wlen;
    q->wlen = 0;
    q->sync_data = 1;
    return 0;
}


static int
push_segment(queue_t *q, uint64_t id, int fd)
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
    q->segs[q->nsegs].fd = fd;
    q->segs[q->nsegs].size = MQ_SEG_HDR_SIZE;
    q->nsegs++;
    return 0;
}


static int
rotate(queue_t *q)
{
    int  fd;

    if (q->nsegs > 0) {
        if (flush_wbuf(q) != 0) {
            return -1;
        }
        if (q->sync_data && srv.sync_mode != SYNC_NONE) {
            /* the old tail's last writes must be durable too */
            fd = dup(q->segs[q->nsegs - 1].fd);
            if (fd != -1) {
                sync_add_fd(fd);
            }
        }
    }

    fd = seg_create(q->dirfd, q->name, q->next_seq);
    if (fd == -1) {
        srv.readonly = 1;
        return -1;
    }

    if (push_segment(q, q->next_seq, fd) != 0) {
        close(fd);
        return -1;
    }

    if (q->items == 0 && q->rhead == q->nret) {
        /* the cursor was at the end: move it to the new tail */
        q->rseg = q->nsegs - 1;
        q->roff = MQ_SEG_HDR_SIZE;
    }

    q->wbase = MQ_SEG_HDR_SIZE;
    q->wlen = 0;
    q->sync_dir = 1;
    q->sync_data = 1;
    return 0;
}


/* Reads the record at (segment index si, off).  MQ_OK, MQ_AGAIN past the
 * end of the segment, MQ_ERROR on a damaged record. */
static int
read_record(queue_t *q, size_t si, uint64_t off, mq_frame_hdr_t *h,
    const unsigned char **payload)
{
    int                   rc;
    seg_t                *s;
    size_t                avail, want;
    ssize_t               n;
    uint64_t              limit;
    const char           *err;
    const unsigned char  *p;

    s = &q->segs[si];

    if (off >= s->size) {
        return MQ_AGAIN;
    }

    if (si == q->nsegs - 1 && off >= q->wbase) {
        p = q->wbuf + (off - q->wbase);
        rc = mq_frame_decode(p, q->wlen - (size_t) (off - q->wbase),
                             UINT32_MAX - 64, h, &err);
        if (rc == MQ_OK) {
            *payload = p + MQ_FRAME_HDR_SIZE;
        }
        return rc == MQ_OK ? MQ_OK : MQ_ERROR;
    }

    limit = si == q->nsegs - 1 ? q->wbase : s->size;

    if (q->rbuf != NULL && q->rbuf_seg == s->id && off >= q->rbuf_off
        && off < q->rbuf_off + q->rlen)
    {
        p = q->rbuf + (off - q->rbuf_off);
        avail = q->rlen - (size_t) (off - q->rbuf_off);
        rc = mq_frame_decode(p, avail, UINT32_MAX - 64, h, &err);
        if (rc == MQ_OK) {
            *payload = p + MQ_FRAME_HDR_SIZE;
            return MQ_OK;
        }
        if (rc == MQ_ERROR) {
            goto bad;
        }
    }

    if (q->rbuf == NULL) {
        q->rbuf = malloc(RBUF_SIZE);
        if (q->rbuf == NULL) {
            return MQ_ERROR;
        }
    }

    want = limit - off < RBUF_SIZE ? (size_t) (limit - off) : RBUF_SIZE;
    n = pread(s->fd, q->rbuf, want, (off_t) off);
    if (n < 0) {
        err = strerror(errno);
        goto bad;
    }

    q->rbuf_seg = s->id;
    q->rbuf_off = off;
    q->rlen = (size_t) n;

    rc = mq_frame_decode(q->rbuf, q->rlen, UINT32_MAX - 64, h, &err);
    if (rc == MQ_OK) {
        *payload = q->rbuf + MQ_FRAME_HDR_SIZE;
        return MQ_OK;
    }

    if (rc == MQ_AGAIN && q->rlen >= MQ_FRAME_HDR_SIZE
        && off + MQ_FRAME_HDR_SIZE + h->len <= limit)
    {
        /* larger than the read-ahead buffer */
        want = MQ_FRAME_HDR_SIZE + (size_t) h->len;
        if (want > scratch_cap) {
            unsigned char *nb = realloc(scratch, want);
            if (nb == NULL) {
                return MQ_ERROR;
            }
            scratch = nb;
            scratch_cap = want;
        }

        n = pread(s->fd, scratch, want, (off_t) off);
        if (n == (ssize_t) want
            && mq_frame_decode(scratch, want, UINT32_MAX - 64, h, &err)
               == MQ_OK)
        {
            *payload = scratch + MQ_FRAME_HDR_SIZE;
            return MQ_OK;
        }
    }

    err = "short record";

bad:

    log_error("queue", "%s/%020" PRIu64 ".seg:%" PRIu64 ": %s", q->name,
              s->id, off, err);
    return MQ_ERROR;
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


int
queue_append(queue_t *q, uint32_t flags, int64_t exptime, const void *data,
    size_t len)
{
    item_t          it;
    size_t          reclen;
    seg_t          *tail;
    struct iovec    iov[2];
    mq_frame_hdr_t  h;
    unsigned char   hdr[MQ_FRAME_HDR_SIZE];

    refresh_limits(q);

    while ((q->lim.max_items && q->items + 1 > q->lim.max_items)
           || (q->lim.max_bytes && q->bytes + len > q->lim.max_bytes))
    {
        if (!q->lim.drop_oldest || q->items == 0) {
            return QUEUE_FULL;
        }
        if (!queue_take(q, 0, &it)) {
            return QUEUE_FULL;
        }
    }

    reclen = MQ_FRAME_HDR_SIZE + len;

    if (q->nsegs == 0
        || (q->segs[q->nsegs - 1].size + reclen > srv.segment_size
            && q->segs[q->nsegs - 1].size > MQ_SEG_HDR_SIZE))
    {
        if (rotate(q) != 0) {
            return QUEUE_IO;
        }
    }

    if (q->wbuf == NULL) {
        q->wbuf = malloc(WBUF_SIZE);
        if (q->wbuf == NULL) {
            return QUEUE_IO;
        }
    }

    if (q->wlen + reclen > WBUF_SIZE && flush_wbuf(q) != 0) {
        return QUEUE_IO;
    }

    h.len = (uint32_t) len;
    h.flags = flags;
    h.kind = MQ_FRAME_ITEM;
    h.seq = q->next_seq;
    h.ctime = server_wall_ms();
    h.exptime = exptime;

    tail = &q->segs[q->nsegs - 1];

    if (reclen > WBUF_SIZE) {
        mq_frame_encode(hdr, &h, data);
        iov[0].iov_base = hdr;
        iov[0].iov_len = sizeof(hdr);
        iov[1].iov_base = (void *) data;
        iov[1].iov_len = len;

        if (sys.pwritev(tail->fd, iov, 2, (off_t) q->wbase)
            != (ssize_t) reclen)
        {
            log_error("queue", "%s: write: %s; refusing further writes",
                      q->name, strerror(errno));
            srv.readonly = 1;
            return QUEUE_IO;
        }

        q->wbase += reclen;
        q->sync_data = 1;

    } else {
        memcpy(q->wbuf + q->wlen + MQ_FRAME_HDR_SIZE, data, len);
        mq_frame_encode(q->wbuf + q->wlen, &h,
                        q->wbuf + q->wlen + MQ_FRAME_HDR_SIZE);
        q->wlen += reclen;
    }

    tail->size += reclen;
    q->next_seq++;
    q->items++;
    q->bytes += len;
    q->total_items++;
    srv.total_items++;
    mark_dirty(q);

    if (q->wait_head != NULL) {
        conn_wake(q->wait_head);
    }

    return QUEUE_OK;
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
        q->roff += MQ_FRAME_HDR_SIZE + len;
        q->rseq = seq + 1;
    }

    q->items--;
    q->bytes -= len;
    q->pos_dirty = 1;
    mark_dirty(q);
}


int
queue_take(queue_t *q, int peek, item_t *it)
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
            }

            si = q->rseg;
            off = q->roff;
        }

        rc = read_record(q, si, off, &it->hdr, &it->payload);

        if (rc == MQ_AGAIN) {
            return 0;
        }

        if (rc != MQ_OK) {
            /* unreadable: count what we lose and skip past it */
            if (from_ret) {
                pop_head(q, 1, q->ret[q->rhead].len, q->ret[q->rhead].seq);
            } else {
                log_error("queue", "%s: dropping the rest of segment "
                          "%020" PRIu64, q->name, q->segs[si].id);
                q->items = 0;
                q->bytes = 0;
                q->roff = q->segs[si].size;
                if (si + 1 == q->nsegs) {
                    return 0;
                }
            }
            continue;
        }

        it->ref.seq = it->hdr.seq;
        it->ref.seg = q->segs[si].id;
        it->ref.off = off;
        it->ref.len = it->hdr.len;

        if ((it->hdr.exptime != 0 && (uint64_t) it->hdr.exptime <= now_s())
            || (it->hdr.exptime < 0)
            || (q->lim.max_age
                && it->hdr.ctime + q->lim.max_age * 1000 <= server_wall_ms()))
        {
            pop_head(q, from_ret, it->hdr.len, it->hdr.seq);
            q->expired_items++;
            continue;
        }

        if (!peek) {
            pop_head(q, from_ret, it->hdr.len, it->hdr.seq);
        }

        return 1;
    }
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
        os = calloc(1, sizeof(openset_t));
        if (os == NULL) {
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
        cap = os->cap ? os->cap * 2 : 16;
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


static void
give_back(openset_t *os, openset_t **conn_sets)
{
    size_t       i, j, k, n, total;
    queue_t     *q;
    item_ref_t  *merged;

    q = os->q;
    n = os->n;

    qsort(os->refs, n, sizeof(item_ref_t), cmp_ref);

    /* merge the sorted open items with the sorted items given back */
    total = q->nret - q->rhead + n;
    merged = malloc((total ? total : 1) * sizeof(item_ref_t));
    if (merged == NULL) {
        /* keep them open rather than lose them; they will come back on
         * restart at the latest (the watermark still covers them) */
        log_error("queue", "%s: out of memory giving items back", q->name);
        return;
    }

    i = q->rhead;
    j = 0;
    k = 0;
    while (i < q->nret || j < n) {
        if (j == n || (i < q->nret && q->ret[i].seq < os->refs[j].seq)) {
            merged[k++] = q->ret[i++];
        } else {
            merged[k++] = os->refs[j++];
        }
    }

    free(q->ret);
    q->ret = merged;
    q->rhead = 0;
    q->nret = total;
    q->ret_cap = total;

    for (j = 0; j < n; j++) {
        q->bytes += os->refs[j].len;
    }

    q->items += n;
    q->open_items -= n;
    q->pos_dirty = 1;
    mark_dirty(q);

    unlink_set(os, conn_sets);

    /* one waiter per item given back */
    for (j = 0; j < n && q->wait_head != NULL; j++) {
        conn_wake(q->wait_head);
    }
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

    for (i = 0; i < q->nsegs; i++) {
        seg_name(name, q->segs[i].id);
        close(q->segs[i].fd);
        unlinkat(q->dirfd, name, 0);
    }
    q->nsegs = 0;

    unlinkat(q->dirfd, "position", 0);
    unlinkat(q->dirfd, "position.tmp", 0);

    if (unlinkat(srv.data_fd, q->name, AT_REMOVEDIR) != 0) {
        log_warn("queue", "%s: rmdir: %s", q->name, strerror(errno));
    }

    if (srv.sync_mode != SYNC_NONE) {
        int fd = dup(srv.data_fd);
        if (fd != -1) {
            sync_add_fd(fd);
        }
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


uint64_t
queue_age_ms(queue_t *q)
{
    item_t    it;
    uint64_t  now;

    if (q->items == 0 || !queue_take(q, 1, &it)) {
        return 0;
    }

    now = server_wall_ms();
    return now > it.hdr.ctime ? now - it.hdr.ctime : 0;
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
    return q->items == q->nret - q->rhead ? q->next_seq : q->rseq;
}


/* lowest seq still owed to a consumer: segments below it can go */
static uint64_t
watermark(queue_t *q)
{
    uint64_t    w;
    openset_t  *os;

    w = log_cursor(q);

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


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


/*
 * Writes the position file: the log cursor plus every item still owed
 * (given back or open), so that a restart redelivers exactly those.  With
 * more than POS_PENDING_MAX owed items the file holds the watermark only,
 * unless `precise` (shutdown): a crash may then deliver consumed items
 * again, which at-least-once allows.
 */
static int
save_position(queue_t *q, int precise)
{
    int         rc;
    size_t      n, k, i;
    uint64_t   *seqs;
    openset_t  *os;

    n = q->nret - q->rhead;
    for (os = q->opensets; os; os = os->qnext) {
        n += os->n;
    }

    if (n == 0) {
        return position_save(q->dirfd, log_cursor(q), NULL, 0);
    }

    seqs = (n > POS_PENDING_MAX && !precise)
           ? NULL : malloc(n * sizeof(uint64_t));

    if (seqs == NULL) {
        return position_save(q->dirfd, watermark(q), NULL, 0);
    }

    k = 0;
    for (i = q->rhead; i < q->nret; i++) {
        seqs[k++] = q->ret[i].seq;
    }
    for (os = q->opensets; os; os = os->qnext) {
        for (i = 0; i < os->n; i++) {
            seqs[k++] = os->refs[i].seq;
        }
    }

    qsort(seqs, n, sizeof(uint64_t), cmp_u64);
    rc = position_save(q->dirfd, log_cursor(q), seqs, n);
    free(seqs);
    return rc;
}


/* Deletes segments every record of which is below the watermark. */
static void
collect_segments(queue_t *q, uint64_t w)
{
    char  name[SEG_NAME_LEN + 1];

    while (q->nsegs > 1 && q->segs[1].id <= w && q->rseg > 0) {
        seg_name(name, q->segs[0].id);
        close(q->segs[0].fd);

        if (unlinkat(q->dirfd, name, 0) != 0) {
            log_warn("queue", "%s/%s: unlink: %s", q->name, name,
                     strerror(errno));
        }

        if (q->rbuf_seg == q->segs[0].id) {
            q->rlen = 0;
        }

        memmove(&q->segs[0], &q->segs[1], (q->nsegs - 1) * sizeof(seg_t));
        q->nsegs--;
        q->rseg--;
    }
}


int
queue_before_sleep(void)
{
    int       fd, pos_due;
    queue_t  *q, *next;
    uint64_t  w;

    pos_due = srv.stopping || loop_now() - last_pos_flush >= POS_INTERVAL;
    if (pos_due) {
        last_pos_flush = loop_now();
    }

    for (q = dirty_list, dirty_list = NULL; q; q = next) {
        next = q->dnext;
        q->dirty = 0;

        if (!q->on_disk) {
            continue;
        }

        if (q->wlen > 0 && !srv.readonly && flush_wbuf(q) != 0) {
            mark_dirty(q);
            continue;
        }

        if (srv.sync_mode == SYNC_ALWAYS) {
            if (q->sync_data && q->nsegs > 0) {
                fd = dup(q->segs[q->nsegs - 1].fd);
                if (fd != -1) {
                    sync_add_fd(fd);
                }
                q->sync_data = 0;
            }
            if (q->sync_dir) {
                fd = dup(q->dirfd);
                if (fd != -1) {
                    sync_add_fd(fd);
                }
                fd = dup(srv.data_fd);
                if (fd != -1) {
                    sync_add_fd(fd);
                }
                q->sync_dir = 0;
            }
        }

        if (q->pos_dirty) {
            if (!pos_due) {
                mark_dirty(q);      /* again when the timer fires */
                if (pos_timer.index == 0) {
                    loop_timer_add(&pos_timer, POS_INTERVAL
                                   - (loop_now() - last_pos_flush));
                }
                continue;
            }

            q->pos_dirty = 0;
            w = watermark(q);

            if (save_position(q, 0) != 0) {
                log_warn("queue", "%s: position: %s", q->name,
                         strerror(errno));
            } else {
                q->pos_written = w;
            }

            collect_segments(q, q->pos_written);
        }
    }

    if (srv.sync_mode == SYNC_ALWAYS) {
        sync_submit();
    }

    if (srv.readonly && conn_parked()) {
        /* a write failed: the STOREDs waiting for it must never be sent */
        conn_sync_done(0, 1);
    }

    return 0;
}


void
queue_sync_all(int wait)
{
    int       fd;
    size_t    i;
    queue_t  *q;

    for (i = 0; i < HASH_SIZE; i++) {
        for (q = hash[i]; q; q = q->hnext) {
            if (!q->on_disk) {
                continue;
            }

            if (q->wlen > 0) {
                flush_wbuf(q);
            }

            if (q->sync_data || q->sync_dir || wait) {
                if (q->nsegs > 0) {
                    fd = dup(q->segs[q->nsegs - 1].fd);
                    if (fd != -1) {
                        sync_add_fd(fd);
                    }
                }
                fd = dup(q->dirfd);
                if (fd != -1) {
                    sync_add_fd(fd);
                }
                q->sync_data = 0;
                q->sync_dir = 0;
            }
        }
    }

    fd = dup(srv.data_fd);
    if (fd != -1) {
        sync_add_fd(fd);
    }

    sync_submit();
}


void
queue_shutdown(void)
{
    size_t    i;
    queue_t  *q, *next;

    srv.stopping = 1;
    queue_before_sleep();

    for (i = 0; i < HASH_SIZE; i++) {
        for (q = hash[i]; q; q = q->hnext) {
            if (q->on_disk) {
                save_position(q, 1);
            }
        }
    }

    queue_sync_all(1);
    sync_shutdown();

    for (i = 0; i < HASH_SIZE; i++) {
        for (q = hash[i]; q; q = next) {
            next = q->hnext;
            queue_free(q);
        }
        hash[i] = NULL;
    }

    free(scratch);
}
