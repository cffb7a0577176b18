// links: memqd/cmd.c memqd/config.c memqd/conn.c memqd/etcd.c
// links: memqd/fdcache.c memqd/journal.c memqd/lease.c memqd/log.c
// links: memqd/loop_epoll.c
// links: memqd/queue.c memqd/recover.c memqd/segment.c memqd/sync.c
// links: memqd/sys.c
// links: memqd/metrics.c memqd/net.c memqd/prom.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_recover.c: start-up recovery, driven the way memqd drives it:
 * queue_init() over a synthetic data directory, then every queue drained
 * with queue_take().  Each case (one row of `cases`) writes the directory
 * itself (segment files of version 1 or 2, position files, journal files
 * with JITEM and JDROP records), damages it, recovers with stderr
 * captured, and checks
 *
 *   - which queues exist and which ids each delivers, in order, with the
 *     payload and flags they were written with;
 *   - the item and byte counters before and after draining;
 *   - srv.corrupt_records, after recovery and after draining;
 *   - a line of the log, and anything else the row's `after` checks (file
 *     sizes after a truncation, journal files removed, a queue directory
 *     removed, nothing changed on disk under srv.check_only).
 *
 * queue_shutdown() ends every case (SYNC_ALWAYS, for the journal; the
 * commit threads are not started, and it does not need them).
 *
 * Payload and flags of a record depend on its queue, its id and a
 * generation number, so a record delivered from the wrong place, twice,
 * or from a deleted incarnation of its queue is told apart.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "mq_crc32c.h"
#include "mq_frame.h"
#include "queue.h"
#include "segment.h"
#include "server.h"


#define MAX_RECS   64               /* records of one test segment */
#define MAX_SEGS   4                /* test segments a case remembers */
#define MAX_IDS    256              /* ids a queue is expected to deliver */
#define LOG_MAX    16384
#define JBUF_MAX   65536
#define SNAP_MAX   65536
#define CTIME0     1764000000000ull
#define MARK       0x5eedf00du      /* every test file's mark */


/* a segment file as a case wrote it */
typedef struct {
    char       path[64];            /* relative to the data directory */
    size_t     n;                   /* records */
    uint64_t   off[MAX_RECS + 1];   /* record offsets; off[n] = its size */
} tseg_t;

typedef struct rcase_s  rcase_t;

typedef struct {
    const rcase_t  *c;              /* (ref) the row */
    char            dir[64];        /* mkdtemp() path: the data directory */
    int             dirfd;          /* O_DIRECTORY fd of dir */
    int             inited;         /* queue_init() ran */
    tseg_t          seg[MAX_SEGS];  /* what build() wrote */
    unsigned char   jbuf[JBUF_MAX]; /* journal file being built */
    size_t          jlen;
    char            log[LOG_MAX];   /* what recovery logged */
    char            snap[SNAP_MAX]; /* the directory before recovery */
} fx_t;

/* what one queue must deliver */
typedef struct {
    const char  *name;
    const char  *ids;               /* "1-4,6-20"; "" empty; NULL: the
                                       queue does not exist */
    unsigned     gen;               /* generation its records were
                                       written with */
} qexpect_t;

struct rcase_s {
    const char  *what;
    void       (*build)(fx_t *f);
    int          check_only;
    int          init_rc;           /* what queue_init() returns */
    uint64_t     corrupt;           /* srv.corrupt_records */
    qexpect_t    q[3];
    const char  *log;               /* the log contains it, or NULL */
    void       (*after)(fx_t *f);   /* more checks, or NULL */
};


/* ---- records ---- */

static uint32_t
payload_len(uint64_t seq, unsigned gen)
{
    return (uint32_t) (5 + (seq * 13 + gen * 5) % 60);
}


static void
payload(unsigned char *p, const char *name, uint64_t seq, unsigned gen)
{
    uint32_t  i, len;

    len = payload_len(seq, gen);
    for (i = 0; i < len; i++) {
        p[i] = (unsigned char) (name[0] ^ (seq * 131 + i * 7 + gen * 17));
    }
}


/* Encodes the version 2 record of (name, seq, gen) of `kind` at p; a
 * journal record gets the journal's payload layout.  Returns its size. */
static size_t
encode(unsigned char *p, uint32_t kind, const char *name, uint64_t seq,
    unsigned gen)
{
    size_t          nlen, pre;
    mq_frame_hdr_t  h;

    memset(&h, 0, sizeof(h));
    pre = 0;
    nlen = strlen(name);

    if (kind != MQ_FRAME_ITEM) {
        p[MQ_FRAME_HDR_SIZE] = (unsigned char) nlen;
        memcpy(p + MQ_FRAME_HDR_SIZE + 1, name, nlen);
        pre = 1 + nlen;
    }

    h.kind = kind;

    if (kind != MQ_FRAME_JDROP) {
        payload(p + MQ_FRAME_HDR_SIZE + pre, name, seq, gen);
        h.len = payload_len(seq, gen);
        h.seq = seq;
        h.flags = gen;
        h.ctime = CTIME0 + seq;
    }

    h.len += (uint32_t) pre;
    mq_frame_encode(p, &h, p + MQ_FRAME_HDR_SIZE, MARK);
    return MQ_FRAME_HDR_SIZE + h.len;
}


/* The version 1 record of (name, seq, gen): u32 crc over bytes 4..39 and
 * the payload, len, flags, kind, seq, ctime, exptime. */
static size_t
encode_v1(unsigned char *p, const char *name, uint64_t seq, unsigned gen)
{
    size_t    i;
    uint32_t  len, crc;
    uint64_t  v[3];

    len = payload_len(seq, gen);
    v[0] = seq;
    v[1] = CTIME0 + seq;
    v[2] = 0;

    for (i = 0; i < 4; i++) {
        p[4 + i] = (unsigned char) (len >> (8 * i));
        p[8 + i] = (unsigned char) (gen >> (8 * i));
        p[12 + i] = (unsigned char) (MQ_FRAME_ITEM >> (8 * i));
    }

    for (i = 0; i < 24; i++) {
        p[16 + i] = (unsigned char) (v[i / 8] >> (8 * (i % 8)));
    }

    payload(p + MQ_FRAME_V1_HDR_SIZE, name, seq, gen);

    crc = mq_crc32c(0, p + 4, MQ_FRAME_V1_HDR_SIZE - 4 + len);
    for (i = 0; i < 4; i++) {
        p[i] = (unsigned char) (crc >> (8 * i));
    }

    return MQ_FRAME_V1_HDR_SIZE + len;
}


/* ---- files ---- */

static void
write_file(fx_t *f, const char *path, const void *data, size_t len)
{
    int  fd;

    fd = openat(f->dirfd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0644);
    if (fd == -1) {
        fail_msg("%s: %s", path, strerror(errno));
    }
    assert_int_equal(pwrite(fd, data, len, 0), (ssize_t) len);
    close(fd);
}


static void
poke(fx_t *f, const char *path, uint64_t off, const void *data, size_t len)
{
    int  fd;

    fd = openat(f->dirfd, path, O_WRONLY | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(pwrite(fd, data, len, (off_t) off), (ssize_t) len);
    close(fd);
}


static void
flip(fx_t *f, const char *path, uint64_t off)
{
    int            fd;
    unsigned char  b;

    fd = openat(f->dirfd, path, O_RDWR | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(pread(fd, &b, 1, (off_t) off), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, (off_t) off), 1);
    close(fd);
}


static void
append(fx_t *f, const char *path, const void *data, size_t len)
{
    int  fd;

    fd = openat(f->dirfd, path, O_WRONLY | O_APPEND | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(write(fd, data, len), (ssize_t) len);
    close(fd);
}


static off_t
file_size(fx_t *f, const char *path)
{
    struct stat  st;

    if (fstatat(f->dirfd, path, &st, 0) != 0) {
        return -1;
    }

    return st.st_size;
}


/*
 * Writes segment `id` of queue `name` (format version ver) holding ids
 * first .. first + n - 1 of generation gen, as f->seg[k].
 */
static void
write_seg(fx_t *f, int k, const char *name, uint64_t id, uint64_t first,
    size_t n, unsigned ver, unsigned gen)
{
    size_t          i, off;
    tseg_t         *s;
    unsigned char  *buf;

    assert_true(n <= MAX_RECS);

    if (mkdirat(f->dirfd, name, 0755) != 0) {
        assert_int_equal(errno, EEXIST);
    }

    buf = malloc(MQ_SEG_HDR_SIZE + MAX_RECS * (MQ_FRAME_HDR_SIZE + 64));
    assert_non_null(buf);

    s = &f->seg[k];
    snprintf(s->path, sizeof(s->path), "%s/", name);
    seg_name(s->path + strlen(s->path), id);

    mq_frame_seg_encode(buf, MARK);
    if (ver == 1) {
        /* the first writer's header: magic, first id */
        buf[7] = 1;
        for (i = 0; i < 8; i++) {
            buf[8 + i] = (unsigned char) (id >> (8 * i));
        }
    }
    off = MQ_SEG_HDR_SIZE;

    for (i = 0; i < n; i++) {
        s->off[i] = off;
        off += ver == 1 ? encode_v1(buf + off, name, first + i, gen)
                        : encode(buf + off, MQ_FRAME_ITEM, name, first + i,
                                 gen);
    }

    s->off[n] = off;
    s->n = n;
    write_file(f, s->path, buf, off);
    free(buf);
}


static void
jnl_item(fx_t *f, const char *name, uint64_t seq, unsigned gen)
{
    if (f->jlen == 0) {
        f->jlen = MQ_SEG_HDR_SIZE;
    }

    assert_true(f->jlen + 256 < JBUF_MAX);
    f->jlen += encode(f->jbuf + f->jlen, MQ_FRAME_JITEM, name, seq, gen);
}


static void
jnl_items(fx_t *f, const char *name, uint64_t from, uint64_t to,
    unsigned gen)
{
    uint64_t  seq;

    for (seq = from; seq <= to; seq++) {
        jnl_item(f, name, seq, gen);
    }
}


static void
jnl_drop(fx_t *f, const char *name)
{
    if (f->jlen == 0) {
        f->jlen = MQ_SEG_HDR_SIZE;
    }

    f->jlen += encode(f->jbuf + f->jlen, MQ_FRAME_JDROP, name, 0, 0);
}


/* A lease acknowledgement of (name, id): no bytes after the name. */
static void
jnl_ack(fx_t *f, const char *name, uint64_t id)
{
    size_t          nlen;
    unsigned char  *p;
    mq_frame_hdr_t  h;

    if (f->jlen == 0) {
        f->jlen = MQ_SEG_HDR_SIZE;
    }

    assert_true(f->jlen + 256 < JBUF_MAX);
    p = f->jbuf + f->jlen;
    nlen = strlen(name);
    p[MQ_FRAME_HDR_SIZE] = (unsigned char) nlen;
    memcpy(p + MQ_FRAME_HDR_SIZE + 1, name, nlen);

    memset(&h, 0, sizeof(h));
    h.kind = MQ_FRAME_JACK;
    h.seq = id;
    h.len = (uint32_t) (1 + nlen);
    mq_frame_encode(p, &h, p + MQ_FRAME_HDR_SIZE, MARK);
    f->jlen += MQ_FRAME_HDR_SIZE + h.len;
}


/* A list of lease acknowledgements of name (JACKS): after the name, the
 * n ids, 8 bytes each, and `extra` bytes more (a malformed record). */
static size_t
jnl_acks(fx_t *f, const char *name, const uint64_t *ids, size_t n,
    size_t extra)
{
    size_t          nlen, at;
    unsigned char  *p;
    mq_frame_hdr_t  h;

    if (f->jlen == 0) {
        f->jlen = MQ_SEG_HDR_SIZE;
    }

    nlen = strlen(name);
    at = f->jlen;
    assert_true(at + MQ_FRAME_HDR_SIZE + 1 + nlen + 8 * n + extra
                < JBUF_MAX);
    p = f->jbuf + at;
    p[MQ_FRAME_HDR_SIZE] = (unsigned char) nlen;
    memcpy(p + MQ_FRAME_HDR_SIZE + 1, name, nlen);
    mq_frame_ids_encode(p + MQ_FRAME_HDR_SIZE + 1 + nlen, ids, n);
    memset(p + MQ_FRAME_HDR_SIZE + 1 + nlen + 8 * n, 0, extra);

    memset(&h, 0, sizeof(h));
    h.kind = MQ_FRAME_JACKS;
    h.len = (uint32_t) (1 + nlen + 8 * n + extra);
    mq_frame_encode(p, &h, p + MQ_FRAME_HDR_SIZE, MARK);
    f->jlen += MQ_FRAME_HDR_SIZE + h.len;
    return at;
}


/* Writes the records built so far as journal file `number`, followed by
 * zeros up to `size` bytes (preallocated) when size is larger. */
static void
jnl_write(fx_t *f, uint64_t number, size_t size)
{
    char            path[64];
    unsigned char  *buf;

    if (mkdirat(f->dirfd, JOURNAL_DIR, 0755) != 0) {
        assert_int_equal(errno, EEXIST);
    }

    if (f->jlen == 0) {
        f->jlen = MQ_SEG_HDR_SIZE;
    }

    mq_frame_jnl_encode(f->jbuf, MARK);

    size = size > f->jlen ? size : f->jlen;
    buf = calloc(1, size);
    assert_non_null(buf);
    memcpy(buf, f->jbuf, f->jlen);

    memcpy(path, JOURNAL_DIR "/", sizeof(JOURNAL_DIR));
    journal_name(path + sizeof(JOURNAL_DIR), number);
    write_file(f, path, buf, size);

    free(buf);
    f->jlen = 0;
}


/* ---- directory walk: snapshot and removal ---- */

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}


/*
 * Appends one line per entry below dirfd (two levels) to out: the path
 * and, for files, their size and CRC32C.  Lines sorted, so the result
 * does not depend on readdir() order.
 */
static void
snapshot_dir(int dirfd, const char *prefix, int depth, char *out, size_t cap)
{
    int             fd;
    DIR            *d;
    char           *lines[256], path[512];
    size_t          n, i;
    ssize_t         r;
    struct stat     st;
    struct dirent  *de;
    unsigned char   b[65536];
    uint32_t        crc;

    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(fd != -1);
    d = fdopendir(fd);
    assert_non_null(d);
    n = 0;

    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        assert_true(n < 256);
        lines[n++] = strdup(de->d_name);
    }
    closedir(d);

    qsort(lines, n, sizeof(char *), cmp_str);

    for (i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s%s", prefix, lines[i]);
        assert_int_equal(fstatat(dirfd, lines[i], &st, AT_SYMLINK_NOFOLLOW),
                         0);

        if (S_ISDIR(st.st_mode)) {
            snprintf(out + strlen(out), cap - strlen(out), "%s/\n", path);
            if (depth > 0) {
                fd = openat(dirfd, lines[i], O_RDONLY | O_DIRECTORY);
                assert_true(fd != -1);
                strcat(path, "/");
                snapshot_dir(fd, path, depth - 1, out, cap);
                close(fd);
            }

        } else {
            fd = openat(dirfd, lines[i], O_RDONLY | O_CLOEXEC);
            assert_true(fd != -1);
            crc = 0;
            while ((r = read(fd, b, sizeof(b))) > 0) {
                crc = mq_crc32c(crc, b, (size_t) r);
            }
            close(fd);
            snprintf(out + strlen(out), cap - strlen(out),
                     "%s %lld %08x\n", path, (long long) st.st_size, crc);
        }

        free(lines[i]);
    }
}


static void
snapshot(fx_t *f, char *out, size_t cap)
{
    out[0] = '\0';
    snapshot_dir(f->dirfd, "", 2, out, cap);
    assert_true(strlen(out) + 1 < cap);
}


static void
remove_below(int dirfd, int depth)
{
    int             fd, sub;
    DIR            *d;
    struct dirent  *de;

    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    d = fd == -1 ? NULL : fdopendir(fd);

    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (unlinkat(dirfd, de->d_name, 0) == 0) {
            continue;
        }
        sub = openat(dirfd, de->d_name,
                     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub != -1 && depth > 0) {
            remove_below(sub, depth - 1);
        }
        if (sub != -1) {
            close(sub);
        }
        unlinkat(dirfd, de->d_name, AT_REMOVEDIR);
    }

    if (d != NULL) {
        closedir(d);
    }
}


/* ---- fixture ---- */

static int
setup(void **state)
{
    fx_t  *f;

    f = calloc(1, sizeof(fx_t));
    if (f == NULL) {
        return -1;
    }

    f->c = *state;

    strcpy(f->dir, "/tmp/memq-unit-recover-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }

    f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->dirfd == -1) {
        rmdir(f->dir);
        free(f);
        return -1;
    }

    memset(&srv, 0, sizeof(srv));
    srv.data_dir = f->dir;
    srv.data_fd = f->dirfd;
    srv.sync_mode = SYNC_ALWAYS;      /* (the journal exists only then) */
    srv.max_item_size = 1024 * 1024;
    srv.segment_size = 64 * 1024;
    srv.journal_size = 64 * 1024;
    srv.max_conns = 16;

    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    fx_t  *f;

    f = *state;

    if (f->inited) {
        queue_shutdown();
    }

    remove_below(f->dirfd, 2);
    close(f->dirfd);
    rmdir(f->dir);
    free(f);
    return 0;
}


/* Runs queue_init() with stderr going to f->log. */
static int
recover(fx_t *f)
{
    int      rc, saved, fd;
    char     path[80];
    ssize_t  n;

    snprintf(path, sizeof(path), "%s.log", f->dir);

    fflush(stderr);
    saved = dup(STDERR_FILENO);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(saved != -1 && fd != -1);
    dup2(fd, STDERR_FILENO);

    rc = queue_init();
    f->inited = 1;

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);

    n = pread(fd, f->log, sizeof(f->log) - 1, 0);
    f->log[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return rc;
}


/* Parses "1-4,6-20" into ids[]; returns the count. */
static size_t
parse_ids(const char *s, uint64_t *ids)
{
    char      *end;
    size_t     n;
    uint64_t   a, b;

    n = 0;

    while (*s) {
        a = strtoull(s, &end, 10);
        b = a;
        if (*end == '-') {
            b = strtoull(end + 1, &end, 10);
        }
        for ( /* void */ ; a <= b; a++) {
            assert_true(n < MAX_IDS);
            ids[n++] = a;
        }
        s = *end == ',' ? end + 1 : end;
    }

    return n;
}


/* Drains the queue; every item must be the expected one, in order. */
static void
check_queue(fx_t *f, const qexpect_t *e)
{
    int             rc;
    size_t          n, i;
    queue_t        *q;
    uint64_t        ids[MAX_IDS], bytes;
    item_t          it;
    unsigned char   want[128];

    q = queue_lookup(e->name, strlen(e->name), 0);

    if (e->ids == NULL) {
        if (q != NULL && q->on_disk) {
            fail_msg("%s: queue %s exists, %" PRIu64 " items\n%s",
                     f->c->what, e->name, q->items, f->log);
        }
        return;
    }

    if (q == NULL) {
        fail_msg("%s: queue %s missing\n%s", f->c->what, e->name, f->log);
    }

    n = parse_ids(e->ids, ids);
    bytes = 0;
    for (i = 0; i < n; i++) {
        bytes += payload_len(ids[i], e->gen);
    }

    if (q->items != n || q->bytes != bytes) {
        fail_msg("%s: %s holds %" PRIu64 " items, %" PRIu64 " bytes; want "
                 "%zu, %" PRIu64 "\n%s", f->c->what, e->name, q->items,
                 q->bytes, n, bytes, f->log);
    }

    for (i = 0; i < n; i++) {
        rc = queue_take(q, 0, &it);
        if (rc != 1 || it.hdr.seq != ids[i]) {
            fail_msg("%s: %s item %zu: rc %d, id %" PRIu64 ", want id %"
                     PRIu64 "\n%s", f->c->what, e->name, i, rc,
                     rc == 1 ? it.hdr.seq : 0, ids[i], f->log);
        }

        payload(want, e->name, ids[i], e->gen);
        assert_int_equal(it.hdr.len, payload_len(ids[i], e->gen));
        assert_memory_equal(it.payload, want, it.hdr.len);
        assert_int_equal(it.hdr.flags, e->gen);
        assert_true(it.hdr.ctime == CTIME0 + ids[i]);
    }

    rc = queue_take(q, 0, &it);
    if (rc != 0) {
        fail_msg("%s: %s: one more item: rc %d, id %" PRIu64 "\n%s",
                 f->c->what, e->name, rc, rc == 1 ? it.hdr.seq : 0, f->log);
    }

    assert_int_equal(q->items, 0);
    assert_int_equal(q->bytes, 0);
}


static void
run_case(void **state)
{
    fx_t           *f = *state;
    int             rc;
    size_t          i;
    char           *after;
    const rcase_t  *c = f->c;

    c->build(f);

    if (c->check_only) {
        srv.check_only = 1;
        snapshot(f, f->snap, sizeof(f->snap));
    }

    rc = recover(f);
    if (rc != c->init_rc) {
        fail_msg("%s: queue_init() = %d\n%s", c->what, rc, f->log);
    }

    if (srv.corrupt_records != c->corrupt) {
        fail_msg("%s: corrupt_records %" PRIu64 ", want %" PRIu64 "\n%s",
                 c->what, srv.corrupt_records, c->corrupt, f->log);
    }

    if (c->log != NULL && strstr(f->log, c->log) == NULL) {
        fail_msg("%s: no \"%s\" in the log:\n%s", c->what, c->log, f->log);
    }

    for (i = 0; i < 3 && c->q[i].name != NULL; i++) {
        check_queue(f, &c->q[i]);
    }

    /* damage counted at start is not counted again when met */
    if (srv.corrupt_records != c->corrupt) {
        fail_msg("%s: corrupt_records %" PRIu64 " after draining, want %"
                 PRIu64 "\n%s", c->what, srv.corrupt_records, c->corrupt,
                 f->log);
    }

    if (c->check_only) {
        after = malloc(SNAP_MAX);
        assert_non_null(after);
        snapshot(f, after, SNAP_MAX);
        if (strcmp(f->snap, after) != 0) {
            fail_msg("%s: the directory changed\nbefore:\n%s\nafter:\n%s",
                     c->what, f->snap, after);
        }
        free(after);
    }

    if (c->after != NULL) {
        c->after(f);
    }
}


/* ---- the cases: builders ---- */

/* q1: ids 1-10 in segment 1, 11-20 in segment 11 */
static void
two_segs(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 2, 0);
    write_seg(f, 1, "q1", 11, 11, 10, 2, 0);
}


static void
b_empty(fx_t *f)
{
}


static void
b_clean(fx_t *f)
{
    two_segs(f);
    write_seg(f, 2, "q2", 1, 1, 3, 2, 0);
    assert_int_equal(mkdirat(f->dirfd, "q3", 0755), 0);
}


static void
b_position(fx_t *f)
{
    int             dirfd;
    const uint64_t  pending[] = { 3, 5 };

    two_segs(f);
    dirfd = openat(f->dirfd, "q1", O_RDONLY | O_DIRECTORY);
    assert_true(dirfd != -1);
    assert_int_equal(position_save(dirfd, 8, pending, 2), 0);
    close(dirfd);
}


/* the position file: cursor 8, ids 3 and 5 owed (delivered 2 and 7
 * times) */
static void
position_3_5(fx_t *f, int counts)
{
    int             dirfd;
    const uint64_t  pending[] = { 3, 5 };
    const uint32_t  deliveries[] = { 2, 7 };

    two_segs(f);
    dirfd = openat(f->dirfd, "q1", O_RDONLY | O_DIRECTORY);
    assert_true(dirfd != -1);
    assert_int_equal(position_save_counts(dirfd, NULL, 8, pending,
                                          counts ? deliveries : NULL, 2),
                     0);
    close(dirfd);
}


/* acknowledged leases above the cursor: the file is older than them */
static void
b_acks_above(fx_t *f)
{
    position_3_5(f, 0);
    jnl_ack(f, "q1", 3);
    jnl_ack(f, "q1", 12);
    jnl_ack(f, "q1", 9);
    jnl_ack(f, "q1", 12);
    jnl_ack(f, "q2", 15);           /* another queue's id */
    jnl_write(f, 1, 4096);
}


/* the same acknowledgements as b_acks_above, in lists and single
 * records mixed, as a journal written before and after lists came */
static void
b_ack_lists_above(fx_t *f)
{
    static const uint64_t  a[] = { 3, 12 }, b[] = { 12 }, c[] = { 15 };

    position_3_5(f, 0);
    jnl_acks(f, "q1", a, 2, 0);
    jnl_ack(f, "q1", 9);
    jnl_acks(f, "q1", b, 1, 0);
    jnl_acks(f, "q2", c, 1, 0);     /* another queue's id */
    jnl_write(f, 1, 4096);
}


/* a damaged list costs its own acknowledgements only: 5 stays owed, 9
 * is owed again (below the newest ack, 12); 3 and 12 hold */
static void
b_ack_list_damaged(fx_t *f)
{
    size_t  at;

    static const uint64_t  a[] = { 3 }, b[] = { 5, 9 }, c[] = { 12 };

    position_3_5(f, 0);
    jnl_acks(f, "q1", a, 1, 0);
    at = jnl_acks(f, "q1", b, 2, 0);
    f->jbuf[at + MQ_FRAME_HDR_SIZE + 1 + 2 + 3] ^= 0x10;
    jnl_acks(f, "q1", c, 1, 0);
    jnl_write(f, 1, 4096);
}


/* a list whose CRC holds but whose ids do not fill it: skipped, said */
static void
b_ack_list_malformed(fx_t *f)
{
    static const uint64_t  a[] = { 3 }, b[] = { 5 };

    position_3_5(f, 0);
    jnl_acks(f, "q1", a, 1, 0);
    jnl_acks(f, "q1", b, 1, 3);
    jnl_acks(f, "q1", b, 0, 0);
    jnl_write(f, 1, 4096);
}


static void
b_acks_below(fx_t *f)
{
    position_3_5(f, 0);
    jnl_ack(f, "q1", 5);
    jnl_ack(f, "q1", 77);           /* never existed: a later lease of */
    jnl_write(f, 1, 0);             /* nothing, ids up to it are owed */
}


/* an ack far above a cursor: not honoured past 4 Mi ids, said so */
static void
b_acks_too_far(fx_t *f)
{
    two_segs(f);
    jnl_ack(f, "q1", 3);
    jnl_ack(f, "q1", 5000000);
    jnl_write(f, 1, 0);
}


static void
b_counts(fx_t *f)
{
    position_3_5(f, 1);
    jnl_ack(f, "q1", 9);
    jnl_write(f, 1, 0);
}


/* counts from the position file go with the owed items; ids made owed
 * by an ack above the cursor, and the log's items, have count 0 */
static void
a_counts(fx_t *f)
{
    size_t     i;
    queue_t   *q;
    item_t     it;

    static const uint64_t  ids[] = { 3, 5, 8, 10, 11 };
    static const uint32_t  counts[] = { 2, 7, 0, 0, 0 };

    q = queue_lookup("q1", 2, 0);
    assert_non_null(q);
    assert_int_equal(q->items, 14);

    for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        assert_int_equal(queue_take(q, 0, &it), 1);
        assert_int_equal(it.hdr.seq, ids[i]);
        assert_int_equal(it.ref.deliveries, counts[i]);
    }
}


static void
b_payload_oldest(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[4] + MQ_FRAME_HDR_SIZE + 2);
}


static void
b_payload_first(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[0] + MQ_FRAME_HDR_SIZE);
}


/* issue 7: one byte in the payload of the second of 40 records */
static void
b_payload_2_of_40(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 40, 2, 0);
    write_seg(f, 1, "q1", 41, 41, 1, 2, 0);
    flip(f, f->seg[0].path, f->seg[0].off[1] + MQ_FRAME_HDR_SIZE + 1);
}


/* issue 7: four bytes of a record header */
static void
b_header_4_bytes(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 40, 2, 0);
    write_seg(f, 1, "q1", 41, 41, 1, 2, 0);
    poke(f, f->seg[0].path, f->seg[0].off[1] + 8, "\xde\xad\xbe\xef", 4);
}


static void
b_header_seq(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[4] + 25);
}


static void
b_header_magic(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[4]);
}


static void
b_two_damaged(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[2] + 30);
    flip(f, f->seg[0].path, f->seg[0].off[3] + MQ_FRAME_HDR_SIZE);
    flip(f, f->seg[1].path, f->seg[1].off[5] + 12);
}


/* three whole records overwritten with garbage that holds fake magics */
static void
b_garbage_run(fx_t *f)
{
    size_t          i, len;
    unsigned char   junk[1024];

    two_segs(f);
    len = f->seg[0].off[6] - f->seg[0].off[3];
    assert_true(len <= sizeof(junk));
    for (i = 0; i < len; i++) {
        junk[i] = (unsigned char) "MQR2\xff\x00Mq"[i % 8];
    }
    poke(f, f->seg[0].path, f->seg[0].off[3], junk, len);
}


/* the last record of a segment that is not the newest */
static void
b_last_of_oldest_payload(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[9] + MQ_FRAME_HDR_SIZE + 1);
}


static void
b_last_of_oldest_header(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[9] + 30);
}


/* damage in the newest segment with good records after it: not a torn
 * tail, it costs the record only */
static void
b_newest_middle(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[1].path, f->seg[1].off[4] + 20);
}


static void
b_seg_magic(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[0].path, 2);
    flip(f, f->seg[1].path, 7);
}


static void
b_torn_tail(fx_t *f)
{
    unsigned char  rec[256];
    size_t         n;

    two_segs(f);
    n = encode(rec, MQ_FRAME_ITEM, "q1", 21, 0);
    append(f, f->seg[1].path, rec, n - 3);
}


static void
b_torn_header(fx_t *f)
{
    unsigned char  rec[256];

    two_segs(f);
    encode(rec, MQ_FRAME_ITEM, "q1", 21, 0);
    append(f, f->seg[1].path, rec, 20);
}


/* the newest segment's last record damaged, nothing good after it */
static void
b_torn_last_record(fx_t *f)
{
    two_segs(f);
    flip(f, f->seg[1].path, f->seg[1].off[9] + MQ_FRAME_HDR_SIZE);
}


static void
b_torn_zeros(fx_t *f)
{
    unsigned char  zeros[300];

    two_segs(f);
    memset(zeros, 0, sizeof(zeros));
    append(f, f->seg[1].path, zeros, sizeof(zeros));
}


/* a newest segment whose creation was cut short */
static void
b_empty_newest(fx_t *f)
{
    two_segs(f);
    write_file(f, "q1/00000000000000000021.seg", "MQSEG", 5);
}


/* issue 7: a file missing from the middle */
static void
b_missing_file(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 2, 0);
    write_seg(f, 1, "q1", 21, 21, 10, 2, 0);
}


/* a segment that cannot be read stops the start */
static void
b_unreadable(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 2, 0);
    assert_int_equal(mkdirat(f->dirfd, "q1/00000000000000000011.seg", 0755),
                     0);
}


/* crash after the journal commit, before the queue file was written:
 * the journal holds 6-12, the queue file 1-5 */
static void
b_journal_replay(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 5, 2, 0);
    jnl_items(f, "q1", 6, 12, 0);
    jnl_write(f, 3, 64 * 1024);
}


/* the journal holds 1-8, the queue file has 1-5 of them already */
static void
b_journal_overlap(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 5, 2, 0);
    jnl_items(f, "q1", 1, 8, 0);
    jnl_write(f, 3, 0);
}


/* everything in the journal is in the queue file already */
static void
b_journal_all_there(fx_t *f)
{
    two_segs(f);
    jnl_items(f, "q1", 4, 20, 0);
    jnl_write(f, 7, 64 * 1024);
}


/* two journal files, three queues interleaved; q2 has no directory */
static void
b_journal_interleaved(fx_t *f)
{
    uint64_t  i;

    write_seg(f, 0, "q1", 1, 1, 3, 2, 0);
    write_seg(f, 1, "q3", 1, 1, 2, 2, 0);

    for (i = 1; i <= 6; i++) {
        jnl_item(f, "q1", i, 0);
        jnl_item(f, "q2", i, 0);
    }
    jnl_write(f, 4, 0);

    for (i = 7; i <= 9; i++) {
        jnl_item(f, "q2", i, 0);
        jnl_item(f, "q1", i, 0);
        jnl_item(f, "q3", i - 4, 0);
    }
    jnl_write(f, 5, 4096);
}


/* the journal covers the damage: the file is cut there and the journal
 * fills it in, nothing lost */
static void
b_journal_covers_damage(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 2, 0);
    flip(f, f->seg[0].path, f->seg[0].off[5] + MQ_FRAME_HDR_SIZE);
    jnl_items(f, "q1", 4, 14, 0);
    jnl_write(f, 1, 0);
}


static void
b_journal_covers_torn_tail(fx_t *f)
{
    unsigned char  rec[256];
    size_t         n;

    write_seg(f, 0, "q1", 1, 1, 10, 2, 0);
    n = encode(rec, MQ_FRAME_ITEM, "q1", 11, 0);
    append(f, f->seg[0].path, rec, n / 2);
    jnl_items(f, "q1", 9, 13, 0);
    jnl_write(f, 1, 64 * 1024);
}


/* a damaged journal record is skipped; its queue file has it */
static void
b_journal_damaged(fx_t *f)
{
    size_t  at;

    write_seg(f, 0, "q1", 1, 1, 5, 2, 0);
    jnl_items(f, "q1", 3, 4, 0);
    at = f->jlen;
    jnl_items(f, "q1", 5, 8, 0);
    f->jbuf[at + MQ_FRAME_HDR_SIZE + 4] ^= 0xff;
    jnl_write(f, 1, 0);
}


static void
b_jdrop(fx_t *f)
{
    two_segs(f);
    write_seg(f, 2, "q2", 1, 1, 3, 2, 0);
    jnl_items(f, "q1", 19, 20, 0);
    jnl_drop(f, "q1");
    jnl_item(f, "q2", 4, 0);
    jnl_write(f, 2, 0);
}


/* deleted, then created again: only the new incarnation's records */
static void
b_jdrop_recreate(fx_t *f)
{
    two_segs(f);
    jnl_items(f, "q1", 20, 20, 0);
    jnl_drop(f, "q1");
    jnl_write(f, 2, 0);
    jnl_items(f, "q1", 1, 4, 1);
    jnl_write(f, 3, 0);
}


static void
b_v1(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 1, 0);
    write_seg(f, 1, "q1", 11, 11, 10, 1, 0);
}


/* the old version's files, then the new version's */
static void
b_v1_then_v2(fx_t *f)
{
    write_seg(f, 0, "q1", 1, 1, 10, 1, 0);
    write_seg(f, 1, "q1", 11, 11, 10, 2, 0);
}


static void
b_v1_torn_tail(fx_t *f)
{
    unsigned char  rec[256];
    size_t         n;

    write_seg(f, 0, "q1", 1, 1, 10, 1, 0);
    n = encode_v1(rec, "q1", 11, 0);
    append(f, f->seg[0].path, rec, n - 1);
}


/* every kind of damage at once, and a journal to replay */
static void
b_check_only(fx_t *f)
{
    unsigned char  rec[256];
    size_t         n;

    two_segs(f);
    flip(f, f->seg[0].path, f->seg[0].off[2] + MQ_FRAME_HDR_SIZE);
    flip(f, f->seg[0].path, 3);
    n = encode(rec, MQ_FRAME_ITEM, "q1", 21, 0);
    append(f, f->seg[1].path, rec, n - 1);
    assert_int_equal(mkdirat(f->dirfd, "q4", 0755), 0);
    write_file(f, "q4/00000000000000000001.seg", "MQS", 3);
    write_seg(f, 2, "q3", 1, 1, 2, 2, 0);
    jnl_items(f, "q2", 1, 3, 0);
    jnl_drop(f, "q3");
    jnl_write(f, 9, 4096);
}


/* ---- the cases: extra checks ---- */

static void
a_journal_files(fx_t *f, uint64_t gone, uint64_t fresh)
{
    char  path[64];

    memcpy(path, JOURNAL_DIR "/", sizeof(JOURNAL_DIR));

    journal_name(path + sizeof(JOURNAL_DIR), gone);
    assert_int_equal(file_size(f, path), -1);

    journal_name(path + sizeof(JOURNAL_DIR), fresh);
    assert_int_equal(file_size(f, path), srv.journal_size);
}


/*
 * A new record goes after the recovered ones: the next id, in a file the
 * reader finds.  It is appended with queue_replay(), which is
 * queue_append() without the journal: journal_shutdown() frees the
 * journal's buffer but keeps its capacity, so in a process that runs
 * queue_init() a second time journal_add() writes through NULL.
 */
static void
append_one(fx_t *f, uint64_t want_seq)
{
    queue_t         *q;
    item_t           it;
    mq_frame_hdr_t   h;

    q = queue_lookup("q1", 2, 0);
    assert_non_null(q);
    assert_true(q->next_seq == want_seq);

    memset(&h, 0, sizeof(h));
    h.len = 14;
    h.kind = MQ_FRAME_ITEM;
    h.seq = q->next_seq;
    h.ctime = server_wall_ms();
    assert_int_equal(queue_replay(q, &h, "after recovery"), 0);
    assert_int_equal(queue_write_all(), 0);

    assert_int_equal(queue_take(q, 0, &it), 1);
    assert_true(it.hdr.seq == want_seq);
    assert_memory_equal(it.payload, "after recovery", 14);
    assert_int_equal(queue_take(q, 0, &it), 0);
    assert_int_equal(q->items, 0);
}


static void
a_clean(fx_t *f)
{
    /* a clean directory changes nothing but gets a journal file */
    assert_int_equal(file_size(f, f->seg[0].path), f->seg[0].off[10]);
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[10]);
    a_journal_files(f, 0, 1);
    append_one(f, 21);
}


static void
a_sizes_kept(fx_t *f)
{
    /* damage below the newest segment's tail is skipped, never cut */
    assert_int_equal(file_size(f, f->seg[0].path), f->seg[0].off[10]);
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[10]);
    append_one(f, 21);
}


static void
a_torn_cut(fx_t *f)
{
    assert_int_equal(file_size(f, f->seg[0].path), f->seg[0].off[10]);
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[10]);
    append_one(f, 21);
}


static void
a_torn_last_record(fx_t *f)
{
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[9]);
    append_one(f, 20);
}


static void
a_empty_newest(fx_t *f)
{
    assert_int_equal(file_size(f, "q1/00000000000000000021.seg"), -1);
    append_one(f, 21);
}


static void
a_missing_file(fx_t *f)
{
    append_one(f, 31);
}


static void
a_journal_replay(fx_t *f)
{
    a_journal_files(f, 3, 4);
    append_one(f, 13);
}


static void
a_journal_all_there(fx_t *f)
{
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[10]);
    a_journal_files(f, 7, 8);
}


static void
a_journal_interleaved(fx_t *f)
{
    a_journal_files(f, 4, 6);
    a_journal_files(f, 5, 6);
}


static void
a_journal_covers_damage(fx_t *f)
{
    append_one(f, 15);
}


static void
a_jdrop(fx_t *f)
{
    assert_int_equal(file_size(f, "q1"), -1);
}


static void
a_v1(fx_t *f)
{
    int            fd;
    unsigned       ver;
    uint32_t       mark;
    unsigned char  hdr[MQ_SEG_HDR_SIZE];

    /* read in place, never rewritten; new records go to a new file of
     * the current version */
    assert_int_equal(file_size(f, f->seg[1].path), f->seg[1].off[10]);
    append_one(f, 21);

    fd = openat(f->dirfd, "q1/00000000000000000021.seg", O_RDONLY);
    assert_true(fd != -1);
    assert_int_equal(pread(fd, hdr, sizeof(hdr), 0), sizeof(hdr));
    close(fd);
    assert_int_equal(mq_frame_seg_decode(hdr, &ver, &mark), MQ_OK);
    assert_int_equal(ver, MQ_SEG_VERSION);
}


static void
a_v1_torn_tail(fx_t *f)
{
    assert_int_equal(file_size(f, f->seg[0].path), f->seg[0].off[10]);
    append_one(f, 11);
}


static void
a_check_only(fx_t *f)
{
    /* nothing was replayed or removed: the journal is still there */
    assert_int_equal(file_size(f, ".journal/00000000000000000009.jnl"),
                     4096);
    assert_true(file_size(f, "q3") != -1);
}


#define Q(n, ids)  { n, ids, 0 }

static const rcase_t  cases[] = {
    { "empty data directory", b_empty, 0, 0, 0,
      { Q("q1", NULL) }, NULL, NULL },

    { "clean", b_clean, 0, 0, 0,
      { Q("q1", "1-20"), Q("q2", "1-3"), Q("q3", "") }, NULL, a_clean },

    { "position with pending items", b_position, 0, 0, 0,
      { Q("q1", "3,5,8-20") }, NULL, NULL },

    { "journal acks above the position's cursor", b_acks_above, 0, 0, 0,
      { Q("q1", "5,8,10,11,13-20") }, NULL, NULL },

    { "journal ack lists (JACKS) and single acks mixed", b_ack_lists_above,
      0, 0, 0, { Q("q1", "5,8,10,11,13-20") }, NULL, NULL },

    { "a damaged ack list costs its own acks only", b_ack_list_damaged,
      0, 0, 0, { Q("q1", "5,8-11,13-20") }, "bad payload crc", NULL },

    { "an ack list that holds no whole ids is skipped",
      b_ack_list_malformed, 0, 0, 0, { Q("q1", "5,8-20") }, "not ids",
      NULL },

    { "journal acks below the position's cursor", b_acks_below, 0, 0, 0,
      { Q("q1", "3,8-20") }, NULL, NULL },

    /* (no position file: every id is above the cursor, 3 too) */
    { "journal ack too far above the cursor", b_acks_too_far, 0, 0, 0,
      { Q("q1", "1-20") }, "delivered again", NULL },

    { "delivery counts in the position file", b_counts, 0, 0, 0,
      { { NULL, NULL, 0 } }, NULL, a_counts },

    { "payload damaged in the middle of the oldest segment",
      b_payload_oldest, 0, 0, 1,
      { Q("q1", "1-4,6-20") }, "ids 5-5 lost", a_sizes_kept },

    { "payload of the first record damaged", b_payload_first, 0, 0, 1,
      { Q("q1", "2-20") }, "ids 1-1 lost", a_sizes_kept },

    { "issue 7: payload byte of record 2 of 40", b_payload_2_of_40, 0, 0, 1,
      { Q("q1", "1,3-41") }, "ids 2-2 lost", NULL },

    { "issue 7: four header bytes of record 2 of 40", b_header_4_bytes,
      0, 0, 1,
      { Q("q1", "1,3-41") }, "ids 2-2 lost", NULL },

    { "header damaged (seq byte)", b_header_seq, 0, 0, 1,
      { Q("q1", "1-4,6-20") }, "bad header crc", a_sizes_kept },

    { "record magic damaged", b_header_magic, 0, 0, 1,
      { Q("q1", "1-4,6-20") }, "bad magic", a_sizes_kept },

    { "three damaged records in two segments", b_two_damaged, 0, 0, 3,
      { Q("q1", "1-2,5-15,17-20") }, NULL, a_sizes_kept },

    { "garbage with fake magics over three records", b_garbage_run,
      0, 0, 3,
      { Q("q1", "1-3,7-20") }, "ids 4-6 lost", a_sizes_kept },

    { "payload of the last record of the oldest segment",
      b_last_of_oldest_payload, 0, 0, 1,
      { Q("q1", "1-9,11-20") }, "ids 10-10 lost", a_sizes_kept },

    { "header of the last record of the oldest segment",
      b_last_of_oldest_header, 0, 0, 1,
      { Q("q1", "1-9,11-20") }, "ids 10-10 lost", a_sizes_kept },

    { "damage in the middle of the newest segment", b_newest_middle,
      0, 0, 1,
      { Q("q1", "1-14,16-20") }, "ids 15-15 lost", a_sizes_kept },

    { "segment magic damaged: nothing lost", b_seg_magic, 0, 0, 0,
      { Q("q1", "1-20") }, "damaged segment header", a_sizes_kept },

    { "torn tail of the newest segment", b_torn_tail, 0, 0, 0,
      { Q("q1", "1-20") }, "truncated", a_torn_cut },

    { "torn header at the tail", b_torn_header, 0, 0, 0,
      { Q("q1", "1-20") }, "truncated", a_torn_cut },

    { "last record of the newest segment damaged", b_torn_last_record,
      0, 0, 0,
      { Q("q1", "1-19") }, "truncated", a_torn_last_record },

    { "zeros at the tail", b_torn_zeros, 0, 0, 0,
      { Q("q1", "1-20") }, "truncated", a_torn_cut },

    { "newest segment cut short at creation", b_empty_newest, 0, 0, 0,
      { Q("q1", "1-20") }, "empty, removed", a_empty_newest },

    { "issue 7: segment missing from the middle", b_missing_file,
      0, 0, 10,
      { Q("q1", "1-10,21-30") }, "ids 11-20 missing", a_missing_file },

    { "unreadable segment stops the start", b_unreadable, 0, -1, 0,
      { { NULL, NULL, 0 } }, "cannot recover the queue", NULL },

    { "journal replay after a crash", b_journal_replay, 0, 0, 0,
      { Q("q1", "1-12") }, "7 records replayed", a_journal_replay },

    { "journal records the file has are not duplicated",
      b_journal_overlap, 0, 0, 0,
      { Q("q1", "1-8") }, "3 records replayed", NULL },

    { "journal wholly in the files", b_journal_all_there, 0, 0, 0,
      { Q("q1", "1-20") }, "0 records replayed", a_journal_all_there },

    { "two journal files, three queues", b_journal_interleaved, 0, 0, 0,
      { Q("q1", "1-9"), Q("q2", "1-9"), Q("q3", "1-5") }, NULL,
      a_journal_interleaved },

    { "journal covers damage in the file", b_journal_covers_damage,
      0, 0, 0,
      { Q("q1", "1-14") }, "replaced from the journal",
      a_journal_covers_damage },

    { "journal covers a torn tail", b_journal_covers_torn_tail, 0, 0, 0,
      { Q("q1", "1-13") }, "3 records replayed", NULL },

    { "damaged journal record skipped", b_journal_damaged, 0, 0, 0,
      { Q("q1", "1-8") }, "bytes skipped", NULL },

    { "JDROP removes the queue", b_jdrop, 0, 0, 0,
      { Q("q1", NULL), Q("q2", "1-4") }, "deleted before the stop",
      a_jdrop },

    { "JDROP, then the queue made again", b_jdrop_recreate, 0, 0, 0,
      { { "q1", "1-4", 1 } }, "deleted before the stop", NULL },

    { "version 1 segments (upgrade)", b_v1, 0, 0, 0,
      { Q("q1", "1-20") }, NULL, a_v1 },

    { "version 1 then version 2", b_v1_then_v2, 0, 0, 0,
      { Q("q1", "1-20") }, NULL, NULL },

    { "version 1 torn tail", b_v1_torn_tail, 0, 0, 0,
      { Q("q1", "1-10") }, "truncated", a_v1_torn_tail },

    { "check only: nothing on disk changes", b_check_only, 1, 0, 1,
      { Q("q1", "1-2,4-20"), Q("q2", NULL), Q("q3", NULL) },
      "3 records would be replayed", a_check_only },
};

#define NCASES  (sizeof(cases) / sizeof(cases[0]))


int
main(void)
{
    size_t             i;
    struct CMUnitTest  tests[NCASES];

    for (i = 0; i < NCASES; i++) {
        tests[i].name = cases[i].what;
        tests[i].test_func = run_case;
        tests[i].setup_func = setup;
        tests[i].teardown_func = teardown;
        tests[i].initial_state = (void *) &cases[i];
    }

    return _cmocka_run_group_tests("test_recover", tests, NCASES, NULL,
                                   NULL);
}
