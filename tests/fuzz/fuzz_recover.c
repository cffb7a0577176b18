// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * fuzz_recover.c: libFuzzer target for start-up recovery.  Each input
 * becomes a data directory (/tmp/memq-fuzz-recover-<pid>, removed before
 * and after every input) holding queue q1 with one to three segment files
 * and, optionally, a journal file; memqd recovers it (queue_init()) and
 * every queue is drained with queue_take().
 *
 * Input, read front to back (missing bytes read as zero):
 *
 *   layout   bits 0-1 segments (1-3), 2 journal, 3 first segment in format
 *            version 1, 4 journal preallocated (zeros after its records),
 *            5 queue q2 interleaved in the journal
 *   n        records in all (0-47): ids 1..n of q1
 *   f        of which the segment files hold ids 1..f (with a journal)
 *   j        the journal holds ids j..n (1 <= j <= f + 1)
 *   cuts     one byte per boundary between segments
 *   records  per record: a control byte (0xf0 and up: raw input bytes go
 *            in front of the record), a length byte (bit 6: the payload
 *            comes from the input, else it is generated)
 *   damage   then, while input lasts, operations on the files: overwrite
 *            bytes with input bytes, truncate, append input bytes, flip a
 *            byte
 *
 * So files mix well-formed records (which the harness remembers) with raw
 * input bytes.  Checked after recovery, unless raw bytes happen to form a
 * good record header somewhere recovery could meet it (then a forged
 * record may legitimately change ids, and only "no crash" is checked):
 *
 *   - what is delivered is a strictly increasing run of ids, each one a
 *     record the harness wrote, with its payload and flags;
 *   - every record that stayed intact where recovery must read it is
 *     delivered: its journal copy, and its segment copy unless
 *       . damage before it reaches the ids the journal holds (then the
 *         file may be cut there for the journal to fill in, recover.c),
 *       . it follows damage in a version 1 segment (no magic to resync
 *         on), or its segment's header is damaged so that the segment is
 *         read in the other format;
 *   - the queue's item and byte counters match what is delivered.
 *
 * Set MEMQ_FUZZ_LOG=1 to see memqd's log lines and what the harness wrote
 * and expects.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sanitizer/common_interface_defs.h>

#include "journal.h"
#include "log.h"
#include "mq_crc32c.h"
#include "mq_frame.h"
#include "queue.h"
#include "segment.h"
#include "server.h"


#define MAX_RECS   48             /* records of q1 */
#define MAX_Q2     48             /* records of q2 */
#define MAX_PLEN   63             /* payload bytes of a record */
#define FILE_CAP   (64 * 1024)
#define MAX_FILES  4              /* three segments and the journal */
#define MAX_OPS    24             /* damage operations */
#define MAX_LEN    (UINT32_MAX - 64)
#define CTIME0     1764000000000ull
#define MARK       0x5eedf00du    /* the mark every file is written with */

#define QN         2              /* queues: q1, q2 */

#define check(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            violation(__LINE__, __VA_ARGS__);                                \
        }                                                                    \
    } while (0)


/* a record the harness wrote */
typedef struct {
    int        q;                  /* 0: q1, 1: q2 */
    uint64_t   seq;
    size_t     off;                /* in its file */
    size_t     len;                /* header and payload */
} rec_t;

typedef struct {
    unsigned char  buf[FILE_CAP];  /* the file as written */
    unsigned char  orig[FILE_CAP]; /* before the damage operations */
    size_t         len;
    size_t         olen;
    uint64_t       id;             /* segment id or journal number */
    unsigned       ver;            /* segment format version */
    int            journal;
    rec_t          recs[MAX_RECS + MAX_Q2];
    size_t         nrecs;
} tfile_t;

/* one record's payload, as written */
typedef struct {
    unsigned char  data[MAX_PLEN];
    uint32_t       len;
    int            file_ok;        /* its segment copy must be read */
    int            jnl_ok;         /* its journal copy must be read */
} payload_t;

typedef struct {
    const uint8_t  *p;
    size_t          n;
} input_t;


static char       dir[64];
static int        devnull = -1;
static int        saved_stderr = -1;  /* while memqd's log is muted */
static int        verbose;
static tfile_t    files[MAX_FILES];
static size_t     nfiles;
static payload_t  pl[QN][MAX_RECS + 1];
static size_t     npl[QN];


static void rm_dir(void);
static void violation(int line, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));


static void
violation(int line, const char *fmt, ...)
{
    va_list  ap;

    if (saved_stderr != -1) {
        dup2(saved_stderr, STDERR_FILENO);
    }

    fprintf(stderr, "fuzz_recover.c:%d: ", line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");

    /* the input rebuilds the directory: leave nothing behind */
    rm_dir();
    __builtin_trap();
}


static unsigned
get8(input_t *in)
{
    if (in->n == 0) {
        return 0;
    }

    in->n--;
    return *in->p++;
}


static unsigned
get16(input_t *in)
{
    unsigned  v;

    v = get8(in);
    return v | get8(in) << 8;
}


/* ---- building the files ---- */

static void
put_bytes(tfile_t *f, const void *p, size_t n)
{
    if (f->len + n > FILE_CAP) {
        n = FILE_CAP - f->len;
    }

    memcpy(f->buf + f->len, p, n);
    f->len += n;
}


static void
put_raw(tfile_t *f, input_t *in, size_t n)
{
    while (n-- > 0 && in->n > 0 && f->len < FILE_CAP) {
        f->buf[f->len++] = (unsigned char) get8(in);
    }
}


/* Appends the record of (q, seq) to f in f's format, remembered. */
static void
put_record(tfile_t *f, int q, uint64_t seq)
{
    size_t          n, i, pre;
    uint32_t        crc;
    payload_t      *p;
    mq_frame_hdr_t  h;
    unsigned char   b[MQ_FRAME_HDR_SIZE + 3 + MAX_PLEN];

    p = &pl[q][seq];
    memset(&h, 0, sizeof(h));
    h.flags = (uint32_t) (seq * 3 + (uint64_t) q);
    h.seq = seq;
    h.ctime = CTIME0 + seq;

    if (f->ver == 1 && !f->journal) {
        /* u32 crc over bytes 4..39 and the payload, len, flags, kind,
         * seq, ctime, exptime */
        uint64_t  v[3] = { seq, CTIME0 + seq, 0 };

        for (i = 0; i < 4; i++) {
            b[4 + i] = (unsigned char) (p->len >> (8 * i));
            b[8 + i] = (unsigned char) (h.flags >> (8 * i));
            b[12 + i] = (unsigned char) (MQ_FRAME_ITEM >> (8 * i));
        }
        for (i = 0; i < 24; i++) {
            b[16 + i] = (unsigned char) (v[i / 8] >> (8 * (i % 8)));
        }
        memcpy(b + MQ_FRAME_V1_HDR_SIZE, p->data, p->len);
        crc = mq_crc32c(0, b + 4, MQ_FRAME_V1_HDR_SIZE - 4 + p->len);
        for (i = 0; i < 4; i++) {
            b[i] = (unsigned char) (crc >> (8 * i));
        }
        n = MQ_FRAME_V1_HDR_SIZE + p->len;

    } else {
        pre = 0;
        h.kind = MQ_FRAME_ITEM;
        if (f->journal) {
            b[MQ_FRAME_HDR_SIZE] = 2;
            b[MQ_FRAME_HDR_SIZE + 1] = 'q';
            b[MQ_FRAME_HDR_SIZE + 2] = (unsigned char) ('1' + q);
            pre = 3;
            h.kind = MQ_FRAME_JITEM;
        }
        memcpy(b + MQ_FRAME_HDR_SIZE + pre, p->data, p->len);
        h.len = p->len + (uint32_t) pre;
        mq_frame_encode(b, &h, b + MQ_FRAME_HDR_SIZE, MARK);
        n = MQ_FRAME_HDR_SIZE + h.len;
    }

    if (f->len + n > FILE_CAP) {
        return;
    }

    f->recs[f->nrecs].q = q;
    f->recs[f->nrecs].seq = seq;
    f->recs[f->nrecs].off = f->len;
    f->recs[f->nrecs].len = n;
    f->nrecs++;
    put_bytes(f, b, n);
}


/* Reads the control byte in front of a record: raw bytes, maybe. */
static void
maybe_raw(tfile_t *f, input_t *in)
{
    unsigned  c;

    c = get8(in);
    if (c >= 0xf0) {
        put_raw(f, in, (c & 0x0f) * 8 + get8(in) % 8);
    }
}


static void
make_payload(input_t *in, int q, uint64_t seq)
{
    unsigned    l, i;
    payload_t  *p;

    p = &pl[q][seq];
    l = q == 0 ? get8(in) : (unsigned) seq * 7;
    p->len = l & MAX_PLEN;

    for (i = 0; i < p->len; i++) {
        p->data[i] = q == 0 && (l & 0x40)
                     ? (unsigned char) get8(in)
                     : (unsigned char) (seq * 37 + i * 11 + l);
    }
}


static void
build(const uint8_t *data, size_t size)
{
    int        q2;
    size_t     i, k, nseg, nq2;
    unsigned   layout, cuts[3];
    uint64_t   n, f, j, seq, first;
    input_t    in;
    tfile_t   *t;

    in.p = data;
    in.n = size;

    memset(pl, 0, sizeof(pl));
    for (i = 0; i < MAX_FILES; i++) {
        files[i].len = 0;
        files[i].nrecs = 0;
    }

    layout = get8(&in);
    nseg = (layout & 3) % 3 + 1;
    n = get8(&in) % MAX_RECS;
    f = n;
    j = 0;

    if (layout & 4) {
        f = get8(&in) % (n + 1);
        j = 1 + get8(&in) % (f + 1);
    }

    q2 = (layout & 4) && (layout & 32);
    npl[0] = n;
    npl[1] = 0;

    for (seq = 1; seq <= n; seq++) {
        make_payload(&in, 0, seq);
    }

    /* segment k holds ids cuts[k-1]+1 .. cuts[k]; an empty segment in the
     * middle would share its name with the next one: left out */
    for (k = 0; k + 1 < nseg; k++) {
        cuts[k] = get8(&in) % (f + 1);
    }
    cuts[nseg - 1] = (unsigned) f;
    for (k = 1; k < nseg; k++) {
        for (i = k; i > 0 && cuts[i - 1] > cuts[i]; i--) {
            unsigned  t2 = cuts[i];
            cuts[i] = cuts[i - 1];
            cuts[i - 1] = t2;
        }
    }
    cuts[nseg - 1] = (unsigned) f;

    nfiles = 0;
    first = 1;

    for (k = 0; k < nseg; k++) {
        if (k + 1 < nseg && cuts[k] + 1 == first) {
            continue;
        }

        t = &files[nfiles++];
        t->journal = 0;
        t->id = first;
        t->ver = (k == 0 && (layout & 8)) ? 1 : 2;
        mq_frame_seg_encode(t->buf, MARK);
        if (t->ver == 1) {
            /* the first writer's header: magic, first id */
            t->buf[7] = 1;
            for (seq = 0; seq < 8; seq++) {
                t->buf[8 + seq] = (unsigned char) (first >> (8 * seq));
            }
        }
        t->len = MQ_SEG_HDR_SIZE;

        for (seq = first; seq <= cuts[k]; seq++) {
            maybe_raw(t, &in);
            put_record(t, 0, seq);
        }

        first = (uint64_t) cuts[k] + 1;
    }

    if (layout & 4) {
        t = &files[nfiles++];
        t->journal = 1;
        t->id = 1;
        t->ver = 2;
        mq_frame_jnl_encode(t->buf, MARK);
        t->len = MQ_SEG_HDR_SIZE;
        nq2 = 0;

        for (seq = j; seq <= n; seq++) {
            maybe_raw(t, &in);
            put_record(t, 0, seq);

            if (q2 && nq2 < MAX_Q2) {
                nq2++;
                make_payload(&in, 1, nq2);
                put_record(t, 1, nq2);
            }
        }

        npl[1] = nq2;

        if (layout & 16) {
            k = t->len + 512 < FILE_CAP ? t->len + 512 : FILE_CAP;
            memset(t->buf + t->len, 0, k - t->len);
            t->len = k;
        }
    }

    for (i = 0; i < nfiles; i++) {
        memcpy(files[i].orig, files[i].buf, files[i].len);
        files[i].olen = files[i].len;
    }

    /* damage */
    for (k = 0; k < MAX_OPS && in.n > 0; k++) {
        unsigned  op, pos, m;

        op = get8(&in);
        t = &files[(op >> 2) % nfiles];
        pos = get16(&in) % (unsigned) (t->len + 1);

        switch (op & 3) {

        case 0:
            m = get8(&in) % 48 + 1;
            for (i = 0; i < m && pos + i < t->len && in.n > 0; i++) {
                t->buf[pos + i] = (unsigned char) get8(&in);
            }
            break;

        case 1:
            t->len = pos;
            break;

        case 2:
            put_raw(t, &in, get8(&in));
            break;

        default:
            if (t->len > 0) {
                t->buf[pos % t->len] ^= (unsigned char) (get8(&in) | 1);
            }
            break;
        }
    }
}


/* ---- what must survive ---- */

static int
intact(const tfile_t *t, const rec_t *r)
{
    return r->off + r->len <= t->len && r->off + r->len <= t->olen
           && memcmp(t->buf + r->off, t->orig + r->off, r->len) == 0;
}


/* The record of t that starts at off, or NULL. */
static const rec_t *
rec_at(const tfile_t *t, size_t off)
{
    size_t  i;

    for (i = 0; i < t->nrecs; i++) {
        if (t->recs[i].off == off) {
            return &t->recs[i];
        }
    }

    return NULL;
}


/*
 * Whether raw bytes of t form a good version 2 header where recovery may
 * meet it: anywhere but at the start of one of our records (with our
 * header bytes) or inside one of our intact records (the reader skips
 * those whole).  A harness record whose payload changed and still passes
 * its CRC counts too.
 */
static int
forged_v2(const tfile_t *t, int whole)
{
    size_t          at, i;
    const char     *err;
    const rec_t    *r;
    mq_frame_hdr_t  h;

    for (at = mq_frame_resync(t->buf, 0, t->len, MAX_LEN, MARK); at < t->len;
         at = mq_frame_resync(t->buf, at + 1, t->len, MAX_LEN, MARK))
    {
        r = whole ? NULL : rec_at(t, at);

        if (r != NULL && at + MQ_FRAME_HDR_SIZE <= t->olen
            && memcmp(t->buf + at, t->orig + at, MQ_FRAME_HDR_SIZE) == 0)
        {
            if (!intact(t, r)
                && mq_frame_decode(t->buf + at, t->len - at, MAX_LEN, MARK, &h,
                                   &err) == MQ_OK)
            {
                return 1;
            }
            continue;
        }

        for (i = 0; !whole && i < t->nrecs; i++) {
            r = &t->recs[i];
            if (at > r->off && at < r->off + r->len && intact(t, r)) {
                break;
            }
        }

        if (whole || i == t->nrecs) {
            return 1;
        }
    }

    return 0;
}


/*
 * The segment's format as recovery will read it (recover.c
 * scan_segment): the header's, unless the header does not check, or says
 * 1 while a version 2 record votes for a mark; then version 2 if a record
 * votes, else 1 if a version 1 record of this file's ids decodes, else 2.
 * 0 when the mark recovery reads with is not the one the records were
 * written with (raw bytes or damaged headers outvoted them), or no mark
 * could be trusted: nothing is promised then.
 */
static unsigned
read_as(const tfile_t *t)
{
    size_t          at;
    unsigned        ver;
    uint32_t        mark;
    const char     *err;
    mq_frame_hdr_t  h;

    if (t->len < MQ_SEG_HDR_SIZE) {
        return 2;
    }

    if (mq_frame_seg_decode(t->buf, &ver, &mark) == MQ_OK
        && !(ver == 1 && mq_frame_mark_vote(t->buf, MQ_SEG_HDR_SIZE, t->len,
                                            MAX_LEN, &mark) == MQ_OK))
    {
        return ver == 2 && mark != MARK ? 0 : ver;
    }

    if (mq_frame_mark_vote(t->buf, MQ_SEG_HDR_SIZE, t->len, MAX_LEN, &mark)
        == MQ_OK)
    {
        return mark == MARK ? 2 : 0;
    }

    for (at = MQ_SEG_HDR_SIZE; at + MQ_FRAME_V1_HDR_SIZE <= t->len; at++) {
        if (mq_frame_decode_v1(t->buf + at, t->len - at, MAX_LEN, &h, &err)
            == MQ_OK && h.seq >= t->id)
        {
            return 1;
        }
    }

    /* no mark to trust: records of a version 2 file that stayed intact
     * are not read (and the journal's copies are) */
    return t->ver == 2 ? 0 : 2;
}


/* Whether recovery reads journal file t with the mark its records have. */
static int
jnl_mark_ok(const tfile_t *t)
{
    uint32_t  mark;

    if (t->len >= MQ_SEG_HDR_SIZE
        && mq_frame_jnl_decode(t->buf, &mark) == MQ_OK)
    {
        return mark == MARK;
    }

    mark = 0;
    mq_frame_mark_vote(t->buf, MQ_SEG_HDR_SIZE, t->len, MAX_LEN, &mark);
    return mark == MARK;
}


/*
 * The id at which a reader that met damage at `off` of segment files[k]
 * resumes: the next record after it whose header is intact (a version 2
 * reader resyncs on it), else the next segment's first id, else 0.
 */
static uint64_t
resumes_at(size_t k, size_t off)
{
    size_t          i;
    const tfile_t  *t;
    const rec_t    *r;

    t = &files[k];

    if (t->ver == 2 && read_as(t) == 2) {
        for (i = 0; i < t->nrecs; i++) {
            r = &t->recs[i];
            if (r->off > off && r->off + MQ_FRAME_HDR_SIZE <= t->len
                && memcmp(t->buf + r->off, t->orig + r->off,
                          MQ_FRAME_HDR_SIZE) == 0)
            {
                return r->seq;
            }
        }
    }

    return k + 1 < nfiles && !files[k + 1].journal ? files[k + 1].id : 0;
}


/*
 * Decides which records must be delivered (file_ok, jnl_ok).  Returns 0
 * when raw bytes may have forged a record: then nothing is promised.
 */
static int
expect(void)
{
    int             damaged;
    size_t          i, k, pos, bad, here;
    unsigned        ver;
    uint64_t        jfirst, ub, lb;
    const char     *err;
    tfile_t        *t;
    const rec_t    *r;
    mq_frame_hdr_t  h;

    jfirst = 0;

    for (k = 0; k < nfiles; k++) {
        t = &files[k];

        if (t->journal) {
            if (forged_v2(t, 0) || !jnl_mark_ok(t)) {
                return 0;
            }
            for (i = 0; i < t->nrecs; i++) {
                r = &t->recs[i];
                if (intact(t, r)) {
                    pl[r->q][r->seq].jnl_ok = 1;
                    if (r->q == 0 && (jfirst == 0 || r->seq < jfirst)) {
                        jfirst = r->seq;
                    }
                }
            }
            continue;
        }

        ver = read_as(t);

        if (ver == 0 || (ver == 2 && forged_v2(t, t->ver != 2))) {
            return 0;
        }

        if (ver == 1) {
            /* no magic: the reader decodes record after record, and the
             * first thing that is not ours ends the file for it */
            pos = MQ_SEG_HDR_SIZE;
            for (i = 0; i < t->nrecs && t->ver == 1; i++) {
                if (t->recs[i].off != pos || !intact(t, &t->recs[i])) {
                    break;
                }
                pos += t->recs[i].len;
            }
            if (pos < t->len
                && mq_frame_decode_v1(t->buf + pos, t->len - pos, MAX_LEN,
                                      &h, &err) == MQ_OK)
            {
                return 0;
            }
        }
    }

    /*
     * Walk the segments in order.  A damage point is where the reader
     * meets something that is not one of our intact records; ub is the
     * highest id recovery can have seen before it (ids of records that
     * start before it, and every segment's first id - 1).  The first
     * damage point that reaches the ids the journal holds (ub + 1 >=
     * jfirst, or the reader resumes past jfirst) may be cut off there,
     * later segments removed, for the journal to fill in.  So may a
     * segment whose first id leaves a gap (above lb, the lowest id
     * recovery must have reached) into the ids the journal holds.
     */
    ub = 0;
    lb = 0;

    for (k = 0; k < nfiles; k++) {
        t = &files[k];
        if (t->journal) {
            continue;
        }

        if (jfirst && t->id - 1 >= jfirst && t->id > lb + 1) {
            /* ids missing in front of this segment that the journal
             * holds: it may be cut off here */
            return 1;
        }

        ub = t->id - 1 > ub ? t->id - 1 : ub;
        lb = t->id - 1 > lb ? t->id - 1 : lb;

        ver = t->len < MQ_SEG_HDR_SIZE ? t->ver : read_as(t);
        damaged = ver != t->ver;
        bad = damaged ? MQ_SEG_HDR_SIZE : 0;
        pos = MQ_SEG_HDR_SIZE;

        for (i = 0; i <= t->nrecs; i++) {
            r = i < t->nrecs && t->recs[i].off < t->len ? &t->recs[i] : NULL;

            here = 0;
            if (r == NULL) {
                /* after the last record present: bytes left over */
                here = pos < t->len ? pos : 0;
            } else if (r->off > pos) {
                here = pos;                   /* raw bytes in front */
            } else if (!intact(t, r)) {
                here = r->off;
            }

            if (here != 0 && bad == 0) {
                bad = here;
            }

            if (i == 0 && damaged) {
                here = MQ_SEG_HDR_SIZE;
            }

            if (here != 0 && jfirst
                && (ub + 1 >= jfirst || resumes_at(k, here) > jfirst))
            {
                /* may be cut here: the rest counts on the journal */
                return 1;
            }

            if (r == NULL) {
                break;
            }

            if (!damaged && intact(t, r) && (t->ver == 2 || bad == 0)) {
                /* a version 2 reader finds it again after damage, a
                 * version 1 reader does not */
                pl[0][r->seq].file_ok = 1;
                lb = r->seq > lb ? r->seq : lb;
            }

            if (r->seq > ub) {
                ub = r->seq;
            }

            pos = r->off + r->len;
        }
    }

    return 1;
}


/* Prints the files and what is promised (MEMQ_FUZZ_LOG). */
static void
dump(int promised)
{
    size_t      i, k;
    tfile_t    *t;
    const rec_t  *r;

    for (k = 0; k < nfiles; k++) {
        t = &files[k];
        fprintf(stderr, "%s %" PRIu64 " v%u: %zu bytes (%zu written), "
                "header %s\n", t->journal ? "journal" : "segment", t->id,
                t->ver, t->len, t->olen,
                t->len >= MQ_SEG_HDR_SIZE
                && memcmp(t->buf, t->orig, MQ_SEG_HDR_SIZE) == 0
                ? "intact" : "changed");
        for (i = 0; i < t->nrecs; i++) {
            r = &t->recs[i];
            fprintf(stderr, "  q%d id %" PRIu64 " at %zu, %zu bytes%s%s\n",
                    r->q + 1, r->seq, r->off, r->len,
                    intact(t, r) ? "" : ", damaged",
                    t->journal ? (pl[r->q][r->seq].jnl_ok ? ", promised" : "")
                    : (pl[r->q][r->seq].file_ok ? ", promised" : ""));
        }
    }

    fprintf(stderr, "%s\n", promised ? "checked" : "forged header found: "
            "not checked");
}


/* ---- running recovery ---- */

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st;
    (void) flag;
    (void) ftw;

    remove(path);
    return 0;
}


static void
rm_dir(void)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}


static void
write_files(int dirfd)
{
    int        fd;
    char       path[64];
    size_t     k;
    tfile_t   *t;

    if (mkdirat(dirfd, "q1", 0755) != 0) {
        violation(__LINE__, "mkdir q1: %s", strerror(errno));
    }

    for (k = 0; k < nfiles; k++) {
        t = &files[k];

        if (t->journal) {
            if (mkdirat(dirfd, JOURNAL_DIR, 0755) != 0) {
                violation(__LINE__, "mkdir: %s", strerror(errno));
            }
            memcpy(path, JOURNAL_DIR "/", sizeof(JOURNAL_DIR));
            journal_name(path + sizeof(JOURNAL_DIR), t->id);
        } else {
            memcpy(path, "q1/", 3);
            seg_name(path + 3, t->id);
        }

        fd = openat(dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                    0644);
        if (fd == -1 || write(fd, t->buf, t->len) != (ssize_t) t->len) {
            violation(__LINE__, "%s: %s", path, strerror(errno));
        }
        close(fd);
    }
}


/*
 * Closes the descriptors memqd left open since fds_before() (journal_init()
 * keeps a spare one that journal_shutdown() does not close): thousands of
 * inputs in one process must not run out of them.
 */
static unsigned char  fd_open[1024];


static void
fds_walk(int close_new)
{
    int             fd, n, i, fds[64];
    DIR            *d;
    struct dirent  *de;

    d = opendir("/proc/self/fd");
    if (d == NULL) {
        return;
    }

    n = 0;
    if (!close_new) {
        memset(fd_open, 0, sizeof(fd_open));
    }

    while ((de = readdir(d)) != NULL) {
        fd = atoi(de->d_name);
        if (de->d_name[0] == '.' || fd == dirfd(d)) {
            continue;
        }
        if (fd < 0 || fd >= (int) sizeof(fd_open)) {
            continue;
        }
        if (!close_new) {
            fd_open[fd] = 1;
        } else if (!fd_open[fd] && n < 64) {
            fds[n++] = fd;
        }
    }

    closedir(d);

    for (i = 0; i < n; i++) {
        close(fds[i]);
    }
}


/* memqd logs every damaged record: keep that off the fuzzer's output
 * (sanitizer reports and violations still go to the real stderr) */
static void
mute(void)
{
    if (!verbose) {
        fflush(stderr);
        dup2(devnull, STDERR_FILENO);
    }
}


static void
unmute(void)
{
    if (!verbose) {
        dup2(saved_stderr, STDERR_FILENO);
    }
}


/* Drains queue qi and checks it against what was written. */
static void
drain(int qi, int promised)
{
    int             rc;
    char            name[3];
    queue_t        *q;
    uint64_t        last, items, bytes, got, seq;
    item_t          it;
    payload_t      *p;

    name[0] = 'q';
    name[1] = (char) ('1' + qi);
    name[2] = '\0';

    q = queue_lookup(name, 2, 0);
    last = 0;
    got = 0;
    items = q != NULL ? q->items : 0;
    bytes = q != NULL ? q->bytes : 0;

    while (q != NULL && (rc = queue_take(q, 0, &it)) != 0) {
        check(rc == 1, "%s: queue_take() = %d", name, rc);

        if (!promised) {
            continue;
        }

        seq = it.hdr.seq;
        check(seq > last, "%s: id %" PRIu64 " after %" PRIu64, name, seq,
              last);
        check(seq >= 1 && seq <= npl[qi], "%s: id %" PRIu64 " was never "
              "written", name, seq);

        p = &pl[qi][seq];
        check(it.hdr.len == p->len
              && memcmp(it.payload, p->data, p->len) == 0
              && it.hdr.flags == (uint32_t) (seq * 3 + (uint64_t) qi),
              "%s: id %" PRIu64 ": not the payload written", name, seq);

        /* nothing promised between the last one and this one */
        for (last++; last < seq; last++) {
            check(!pl[qi][last].file_ok && !pl[qi][last].jnl_ok,
                  "%s: id %" PRIu64 " lost (%s copy intact)", name, last,
                  pl[qi][last].jnl_ok ? "journal" : "segment");
        }

        got++;
        bytes -= bytes >= it.hdr.len ? it.hdr.len : bytes;
    }

    if (!promised) {
        return;
    }

    for (last++; last <= npl[qi]; last++) {
        check(!pl[qi][last].file_ok && !pl[qi][last].jnl_ok,
              "%s: id %" PRIu64 " lost (%s copy intact)", name, last,
              pl[qi][last].jnl_ok ? "journal" : "segment");
    }

    check(items == got, "%s: counted %" PRIu64 " items, delivered %"
          PRIu64, name, items, got);
    check(bytes == 0, "%s: %" PRIu64 " bytes counted and not delivered",
          name, bytes);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int            dirfd, rc, promised;
    struct rlimit  rl;

    if (devnull == -1) {
        /* fdcache_init() sizes its slots from this limit, and the slots
         * of every input but the last are leaked (see above): few */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 128) {
            rl.rlim_cur = 128;
            setrlimit(RLIMIT_NOFILE, &rl);
        }

        devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        saved_stderr = dup(STDERR_FILENO);
        __sanitizer_set_report_fd((void *) (intptr_t) saved_stderr);
        verbose = getenv("MEMQ_FUZZ_LOG") != NULL;
        snprintf(dir, sizeof(dir), "/tmp/memq-fuzz-recover-%d",
                 (int) getpid());
    }

    rm_dir();

    if (mkdir(dir, 0755) != 0) {
        violation(__LINE__, "%s: %s", dir, strerror(errno));
    }

    dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd == -1) {
        violation(__LINE__, "%s: %s", dir, strerror(errno));
    }

    build(data, size);
    write_files(dirfd);
    promised = expect();

    if (verbose) {
        dump(promised);
    }

    fds_walk(0);

    memset(&srv, 0, sizeof(srv));
    srv.data_dir = dir;
    srv.data_fd = dirfd;
    srv.sync_mode = SYNC_ALWAYS;      /* (the journal exists only then) */
    srv.max_item_size = 1024 * 1024;
    srv.segment_size = 4096;
    srv.journal_size = 4096;
    srv.max_conns = 16;

    mute();
    rc = queue_init();
    unmute();

    if (promised) {
        check(rc == 0, "queue_init() = %d", rc);
    }

    mute();
    drain(0, promised);
    drain(1, promised);
    queue_shutdown();
    unmute();

    close(dirfd);
    fds_walk(1);
    rm_dir();
    return 0;
}
