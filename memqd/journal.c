/*
 * journal.c: see journal.h.
 *
 * Life of a journal file:
 *
 *   created (fallocate, header) -> current (records appended; commits
 *   fdatasync it) -> full: the next file becomes current, a checkpoint
 *   (syncfs) is asked for -> checkpoint over: unlinked.
 *
 * A full file's descriptor stays open until the commit that covers its
 * last records is durable: the commit thread borrows it (sync.h).
 */

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
#include "queue.h"
#include "server.h"
#include "sync.h"
#include "sys.h"

#define JBUF_FLUSH   (4 * 1024 * 1024)   /* write early past this */
#define OLD_MAX      64                  /* full files awaiting removal */
#define FIRST_SIZE   (1024 * 1024)       /* the first file after a start */
#define ZERO_STEP    (1024 * 1024)       /* zero_fill() writes out this much
                                            at a time */

typedef struct {
    uint64_t  number;
    int       fd;          /* -1 once closed */
    uint64_t  ticket;      /* commit covering its last records */
} jfile_t;

static int             jdir = -1;        /* journal directory */
static int             reserve = -1;     /* a descriptor kept for a new
                                            journal file when clients
                                            took all the others */
static jfile_t         cur = { 0, -1, 0 };
static uint64_t        cur_off;          /* write position in cur */
/* every file this process creates carries this mark (mq_frame.h): records
 * are encoded before it is known which file they land in */
static uint32_t        jmark;
static uint64_t        cur_size;         /* bytes allocated to cur */
static jfile_t         old[OLD_MAX];     /* full files, oldest first */
static size_t          nold;
static uint64_t        oldest;           /* lowest number on disk */
static uint64_t        ckpt_wanted;      /* files below it may go */
static uint64_t        ckpt_covered;     /* a checkpoint synced the
                                            records of files below it */
static unsigned char  *buf;
static size_t          len;
static size_t          cap;
static int             broken;           /* a write failed */
static int             unsynced;         /* written since the last commit */
static int             switched;         /* a new file awaits its first
                                            commit (fsync with metadata) */
static unsigned        nrec;             /* records since the last commit */
static unsigned        prev_nrec = 2;    /* records in the last commit */


void
journal_name(char *b, uint64_t number)
{
    snprintf(b, 25, "%020" PRIu64 ".jnl", number);
}


int
journal_parse_name(const char *name, uint64_t *number)
{
    size_t    i;
    uint64_t  v;

    if (strlen(name) != 24 || strcmp(name + 20, ".jnl") != 0) {
        return -1;
    }

    v = 0;
    for (i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9'
            || v > (UINT64_MAX - 9) / 10)
        {
            return -1;
        }
        v = v * 10 + (uint64_t) (name[i] - '0');
    }

    *number = v;
    return 0;
}


static void
fail(const char *what, uint64_t number)
{
    if (!broken) {
        log_error("journal", "%020" PRIu64 ".jnl: %s: %s; refusing further "
                  "writes", number, what, strerror(errno));
    }
    broken = 1;
    srv.readonly = 1;
}


/*
 * Writes zeros over [MQ_SEG_HDR_SIZE, size) of fd, and out to the disk a
 * ZERO_STEP at a time: 0 or -1.
 *
 * Left in the page cache, the 64 MiB went out at the file's fsync in one
 * piece, and the commit whose fdatasync reached the disk meanwhile waited
 * behind all of it: one commit of 35-50 ms a journal file at 50 writers
 * (none with the steps; docs/memqd.md, BENCHMARKS.md).  The wait also
 * takes the step's write-back error, which the fsync on this descriptor
 * would no longer see: it is a failure of the file here.  Where the file
 * system does not have the call, the fsync that follows writes it all.
 */
static int
zero_fill(int fd, uint64_t size)
{
    size_t          n;
    uint64_t        off, end, done;
    static unsigned char  zeros[64 * 1024];

    done = 0;

    for (off = MQ_SEG_HDR_SIZE; off < size; off = end) {
        n = size - off < sizeof(zeros) ? (size_t) (size - off)
                                       : sizeof(zeros);
        if (pwrite(fd, zeros, n, (off_t) off) != (ssize_t) n) {
            return -1;
        }

        end = off + n;

        if (end - done >= ZERO_STEP || end == size) {
            if (sys.sync_range(fd, (off_t) done, (off_t) (end - done),
                               SYNC_FILE_RANGE_WAIT_BEFORE
                               | SYNC_FILE_RANGE_WRITE
                               | SYNC_FILE_RANGE_WAIT_AFTER) != 0
                && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
            {
                return -1;
            }
            done = end;
        }
    }

    return 0;
}


/* Creates file `number` with `size` bytes allocated: its fd, -1 (failed,
 * logged) or -2 (out of descriptors: try again later). */
static int
create_file(uint64_t number, uint64_t size)
{
    int            fd;
    char           name[32];
    unsigned char  hdr[MQ_SEG_HDR_SIZE];

    journal_name(name, number);

    fd = openat(jdir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd == -1 && (errno == EMFILE || errno == ENFILE) && reserve != -1) {
        /* out of descriptors: use the one kept for this */
        close(reserve);
        reserve = -1;
        fd = openat(jdir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    }
    if (fd == -1 && (errno == EMFILE || errno == ENFILE)) {
        return -2;
    }
    if (fd == -1) {
        fail("create", number);
        return -1;
    }

    mq_frame_jnl_encode(hdr, jmark);

    if (fallocate(fd, 0, 0, (off_t) size) != 0
        && errno != EOPNOTSUPP && errno != ENOSYS)
    {
        fail("fallocate", number);
        goto bad;
    }

    if (sys.pwrite(fd, hdr, sizeof(hdr), 0) != (ssize_t) sizeof(hdr)) {
        fail("write", number);
        goto bad;
    }

    return fd;

bad:

    close(fd);
    unlinkat(jdir, name, 0);
    return -1;
}


int
journal_init(uint64_t last)
{
    if (mkdirat(srv.data_fd, JOURNAL_DIR, 0755) != 0 && errno != EEXIST) {
        log_error("journal", "mkdir: %s", strerror(errno));
        return -1;
    }

    jdir = openat(srv.data_fd, JOURNAL_DIR,
                  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jdir == -1) {
        log_error("journal", "open: %s", strerror(errno));
        return -1;
    }

    /* a fresh start (tests start more than once in one process) */
    jmark = mq_frame_new_mark();
    nold = 0;
    oldest = 0;
    ckpt_wanted = 0;
    ckpt_covered = 0;
    broken = 0;
    unsynced = 0;
    switched = 0;
    len = 0;

    if (reserve == -1) {
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }

    /* the first file is small and written full of zeros here (see the
     * preparing job below); the next ones are prepared in the background */
    cur.number = last + 1;
    cur_size = srv.journal_size < FIRST_SIZE ? srv.journal_size : FIRST_SIZE;
    cur.fd = create_file(cur.number, cur_size);
    if (cur.fd >= 0 && zero_fill(cur.fd, cur_size) != 0) {
        log_error("journal", "write: %s", strerror(errno));
        return -1;
    }
    if (cur.fd < 0) {
        log_error("journal", "cannot create the journal file");
        return -1;
    }

    /* the file and its directory entry are durable before any commit */
    if (fsync(cur.fd) != 0 || fsync(jdir) != 0 || fsync(srv.data_fd) != 0) {
        log_error("journal", "fsync: %s", strerror(errno));
        return -1;
    }

    cur_off = MQ_SEG_HDR_SIZE;
    oldest = cur.number;
    return 0;
}


int
journal_on(void)
{
    return jdir != -1;
}


int
journal_add(uint32_t kind, const char *name, size_t nlen,
    const mq_frame_hdr_t *h, const void *data, size_t dlen)
{
    size_t          need, cap2;
    unsigned char  *p, *nb;
    mq_frame_hdr_t  jh;

    if (jdir == -1) {
        return 0;           /* no journal: --sync interval or none */
    }

    if (broken) {
        return -1;
    }

    if (kind == MQ_FRAME_JDROP) {
        dlen = 0;
        memset(&jh, 0, sizeof(jh));
    } else {
        jh = *h;
    }

    need = MQ_FRAME_HDR_SIZE + 1 + nlen + dlen;

    if (len + need > cap) {
        cap2 = cap ? cap : 64 * 1024;
        while (cap2 < len + need) {
            cap2 *= 2;
        }
        nb = realloc(buf, cap2);
        if (nb == NULL) {
            return -1;
        }
        buf = nb;
        cap = cap2;
    }

    p = buf + len;
    p[MQ_FRAME_HDR_SIZE] = (unsigned char) nlen;
    memcpy(p + MQ_FRAME_HDR_SIZE + 1, name, nlen);
    if (dlen) {
        memcpy(p + MQ_FRAME_HDR_SIZE + 1 + nlen, data, dlen);
    }

    jh.kind = kind;
    jh.len = (uint32_t) (1 + nlen + dlen);
    mq_frame_encode(p, &jh, p + MQ_FRAME_HDR_SIZE, jmark);
    len += need;
    nrec++;
    return 0;
}


int
journal_flush_big(void)
{
    /* written now, made durable by the commit before the loop sleeps */
    return len >= JBUF_FLUSH ? journal_commit(0) : 0;
}


/* the checkpoint job: syncfs of the data directory's file system */

static uint64_t        ckpt_token;       /* files below it, when it ends */


int
journal_syncfs(sync_job_t *job)
{
    if (syncfs(srv.data_fd) != 0) {
        log_error("sync", "syncfs: %s", strerror(errno));
        return -1;
    }

    return 0;
}


static void
ckpt_done(sync_job_t *job, int rc)
{
    journal_checkpoint_done(ckpt_token, rc != 0);
}


static sync_job_t      ckpt_job = { journal_syncfs, ckpt_done, 0, 0, 0,
                                    NULL };


static void
ask_checkpoint(void)
{
    if (ckpt_wanted > oldest && !ckpt_job.busy) {
        ckpt_token = ckpt_wanted;
        if (sync_job(&ckpt_job) == 0) {
            ckpt_wanted = 0;
        }
    }
}


/*
 * The preparing job: the next journal file, written full of zeros and
 * fsynced with its directory entry, in the background.  An fdatasync of
 * blocks that were allocated but never written (fallocate) must also
 * write the inode that records them as written: measured 200-230 us
 * against 140-155 us for blocks written once (docs/memqd.md).  Asked for
 * when the current file is half full, so idle nodes write nothing.
 */

static uint64_t        prep_number;      /* being prepared, or ready */
static uint64_t        prep_size;
static int             prep_ready;


static int
prep_run(sync_job_t *job)
{
    int            fd, rc;
    char           name[32];
    unsigned char  hdr[MQ_SEG_HDR_SIZE];

    journal_name(name, prep_number);

    fd = openat(jdir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd == -1) {
        return -1;
    }

    mq_frame_jnl_encode(hdr, jmark);

    rc = pwrite(fd, hdr, sizeof(hdr), 0) == (ssize_t) sizeof(hdr)
         && zero_fill(fd, prep_size) == 0
         && fsync(fd) == 0 && fsync(jdir) == 0 ? 0 : -1;

    if (rc != 0) {
        /* (the background thread: log.c writes whole lines) */
        log_warn("journal", "%s: preparing: %s; the file is made when "
                 "needed", name, strerror(errno));
        unlinkat(jdir, name, 0);
    }

    close(fd);

    return rc;
}


static void
prep_done(sync_job_t *job, int rc)
{
    prep_ready = rc == 0;
}


static sync_job_t      prep_job = { prep_run, prep_done, 0, 0, 0, NULL };


static void
ask_prepare(void)
{
    /* only fdatasync per batch gains from it: under interval and none it
     * would be a third write of every byte for nothing */
    if (srv.sync_mode == SYNC_ALWAYS
        && !prep_job.busy && !prep_ready && prep_number != cur.number + 1
        && cur_off > cur_size / 2 && srv.journal_size >= 1024 * 1024)
    {
        prep_number = cur.number + 1;
        prep_size = srv.journal_size;
        sync_job(&prep_job);
    }
}


/* Opens the prepared file if it is the next one: its fd or -1. */
static int
take_prepared(uint64_t size)
{
    int   fd;
    char  name[32];

    if (!prep_ready || prep_number != cur.number + 1 || size > prep_size) {
        return -1;
    }

    prep_ready = 0;
    journal_name(name, prep_number);

    fd = openat(jdir, name, O_RDWR | O_CLOEXEC);
    if (fd == -1 && (errno == EMFILE || errno == ENFILE) && reserve != -1) {
        close(reserve);
        reserve = -1;
        fd = openat(jdir, name, O_RDWR | O_CLOEXEC);
    }

    return fd;
}


/* Makes a new file current; the full one waits for its checkpoint. */
static int
switch_file(uint64_t need)
{
    int       fd, prepared;
    uint64_t  size;

    /* every record of the full file must be in its queue file before a
     * checkpoint may count it as synced */
    switch (queue_write_all()) {
    case 0:
        break;
    case QUEUE_NOFD:
        return -2;
    default:
        return -1;
    }

    /* acknowledgements of leases in the full file leave with it: the
     * position files must hold them first (the checkpoint syncs them) */
    queue_save_acked();

    if (reserve == -1) {
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }

    if (nold == OLD_MAX) {
        /* checkpoints cannot keep up: take one here, in the loop */
        if (syncfs(srv.data_fd) != 0) {
            fail("syncfs", cur.number);
            return -1;
        }
        journal_checkpoint_done(cur.number, 0);
        if (nold == OLD_MAX) {
            errno = EAGAIN;
            fail("too many full journal files", cur.number);
            return -1;
        }
    }

    size = srv.journal_size;
    if (size < need + MQ_SEG_HDR_SIZE) {
        size = need + MQ_SEG_HDR_SIZE;
    }

    fd = take_prepared(size);
    prepared = fd != -1;

    if (fd == -1) {
        if (prep_job.busy && prep_number == cur.number + 1) {
            /* still being written: write past the end of this one
             * meanwhile rather than wait or race it */
            return -2;
        }
        fd = create_file(cur.number + 1, size);
        if (fd < 0) {
            return fd;
        }
    }

    old[nold] = cur;
    old[nold].ticket = UINT64_MAX;     /* its tail still needs a commit */
    nold++;
    /* a prepared file is durable with its name already; a new one is
     * fsynced with its directory by the first commit */
    switched = !prepared;
    cur.number++;
    cur.fd = fd;
    cur.ticket = 0;
    cur_off = MQ_SEG_HDR_SIZE;
    cur_size = size;

    /* every record in files below cur is in its queue file: once those
     * are synced, the full files can go */
    ckpt_wanted = cur.number;
    return 0;
}


static int commit(int sync, int early);


int
journal_commit(int sync)
{
    return commit(sync, 0);
}


/*
 * After each ready descriptor of an iteration with more to come: records
 * are waiting and the commit thread is idle (as far as the loop knows), so
 * they are committed now and the disk works while the loop reads on; what
 * the rest of the iteration brings goes with the next commit.  Many
 * writers, each waiting for its reply, then split into groups that take
 * turns on the disk, instead of all waiting for one commit and leaving the
 * disk idle while their replies go out and their next sets come in.
 */
void
journal_commit_early(int more)
{
    if (jdir != -1 && more > 0 && nrec > 0 && srv.sync_mode == SYNC_ALWAYS
        && sync_durable() + 1 == sync_next_ticket())
    {
        (void) commit(1, 1);
    }
}


/* early: not the iteration's last commit, so never the lone writer's */
static int
commit(int sync, int early)
{
    int       fds[OLD_MAX + 1];
    size_t    i, n;
    uint64_t  ticket;

    if (jdir == -1) {
        return 0;           /* no journal: --sync interval or none */
    }

    if (broken) {
        len = 0;
        return -1;
    }

    if (len > 0) {
        if (cur_off + len > cur_size && switch_file(len) == -1) {
            len = 0;
            return -1;
        }

        /* (a switch put off for want of a descriptor: the current file
         * grows past its preallocated size meanwhile) */

        if (sys.pwrite(cur.fd, buf, len, (off_t) cur_off) != (ssize_t) len) {
            if (errno == 0) {
                errno = EIO;
            }
            fail("write", cur.number);
            len = 0;
            return -1;
        }

        cur_off += len;
        len = 0;
        unsynced = 1;

        if (cap > 2 * JBUF_FLUSH) {
            free(buf);
            buf = NULL;
            cap = 0;
        }
    }

    if (sync && srv.sync_mode != SYNC_NONE && (unsynced || switched)) {
        /* full files whose last records were never committed go with
         * this commit, and a new file is fsynced with its metadata */
        n = 0;
        for (i = 0; i < nold; i++) {
            if (old[i].ticket == UINT64_MAX && old[i].fd != -1) {
                fds[n++] = old[i].fd;
            }
        }
        fds[n++] = cur.fd;

        /* one record after one record: a lone writer waiting for each
         * reply, whom a hand-over to the commit thread only delays */
        ticket = sync_submit(fds, n, switched, switched ? jdir : -1,
                             !early && nrec <= 1 && prev_nrec <= 1);
        prev_nrec = nrec;
        nrec = 0;
        switched = 0;
        unsynced = 0;
        cur.ticket = ticket;

        for (i = 0; i < nold; i++) {
            if (old[i].ticket == UINT64_MAX) {
                old[i].ticket = ticket;
            }
        }
    }

    journal_durable(sync_durable());
    ask_checkpoint();
    ask_prepare();
    return 0;
}


/* Unlinks the full files a finished checkpoint covered whose descriptors
 * are closed (oldest first: a gap would make replay skip a file). */
static void
remove_covered(void)
{
    char    name[32];
    size_t  i, k;

    if (broken) {
        return;     /* after a failure nothing is removed: replay needs it */
    }

    for (k = 0; k < nold && old[k].number < ckpt_covered && old[k].fd == -1;
         k++)
    {
        journal_name(name, old[k].number);
        if (unlinkat(jdir, name, 0) != 0 && errno != ENOENT) {
            log_warn("journal", "%s: unlink: %s", name, strerror(errno));
        }
        oldest = old[k].number + 1;
    }

    for (i = k; i < nold; i++) {
        old[i - k] = old[i];
    }
    nold -= k;
}


void
journal_durable(uint64_t durable)
{
    size_t  i;

    for (i = 0; i < nold; i++) {
        if (old[i].fd != -1
            && (old[i].ticket <= durable || srv.sync_mode == SYNC_NONE))
        {
            close(old[i].fd);
            old[i].fd = -1;
        }
    }

    remove_covered();
}


void
journal_checkpoint_done(uint64_t token, int failed)
{
    size_t  i;

    if (failed) {
        /* the kernel reports a writeback error once: a retry that then
         * succeeds proves nothing.  Keep every journal file for the
         * replay at the next start, and stop taking writes. */
        errno = EIO;
        fail("checkpoint", cur.number);
        return;
    }

    if (token > ckpt_covered) {
        ckpt_covered = token;
    }

    for (i = 0; i < nold && old[i].number < token; i++) {
        if (old[i].fd != -1 && old[i].ticket == UINT64_MAX) {
            /* never handed to the commit thread, and synced now by the
             * checkpoint: its commit is not needed any more */
            close(old[i].fd);
            old[i].fd = -1;
            old[i].ticket = 0;
        }
    }

    /* the others go when their commit is over (journal_durable) */
    remove_covered();
}


void
journal_keep_all(void)
{
    broken = 1;
    srv.readonly = 1;
}


void
journal_shutdown(int keep)
{
    char      name[32];
    size_t    i;
    uint64_t  n;

    if (jdir == -1) {
        return;
    }

    if (journal_commit(0) != 0 || broken || srv.readonly || keep) {
        /* a write failed somewhere: keep the files, recovery replays
         * them into the queue files */
        return;
    }

    if (syncfs(srv.data_fd) != 0) {
        log_error("journal", "syncfs: %s; journal kept for recovery",
                  strerror(errno));
        return;
    }

    for (i = 0; i < nold; i++) {
        if (old[i].fd != -1) {
            close(old[i].fd);
        }
    }
    nold = 0;
    close(cur.fd);
    cur.fd = -1;

    /* (and the next file, if one was prepared) */
    for (n = oldest; n <= cur.number + 1; n++) {
        journal_name(name, n);
        unlinkat(jdir, name, 0);
    }
    prep_ready = 0;
    prep_number = 0;

    fsync(jdir);
    close(jdir);
    jdir = -1;
    free(buf);
    buf = NULL;
    cap = 0;
    len = 0;
    if (reserve != -1) {
        close(reserve);
        reserve = -1;
    }
}
