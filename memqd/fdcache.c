/*
 * fdcache.c: see fdcache.h.  Slots are a plain array swept by a clock
 * hand; a lookup by hint is O(1) and a miss costs one openat().
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fdcache.h"
#include "queue.h"
#include "segment.h"
#include "server.h"

#define FDCACHE_MIN   8
#define FDCACHE_MAX   256

typedef struct {
    const queue_t  *q;       /* (ref) owner, NULL when free */
    uint64_t        seg;
    int             fd;
} slot_t;

static slot_t  *slots;
static int      nslots;
static int      hand;


int
fdcache_init(void)
{
    int            i;
    struct rlimit  rl;

    /* a quarter of the descriptors at most: the rest is for clients */
    nslots = FDCACHE_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && rl.rlim_cur / 4 < (rlim_t) nslots)
    {
        nslots = (int) (rl.rlim_cur / 4);
    }
    if (nslots < FDCACHE_MIN) {
        nslots = FDCACHE_MIN;
    }

    free(slots);
    slots = calloc((size_t) nslots, sizeof(slot_t));
    if (slots == NULL) {
        return -1;
    }

    hand = 0;
    for (i = 0; i < nslots; i++) {
        slots[i].fd = -1;
    }

    return 0;
}


static void
slot_close(slot_t *s)
{
    if (s->fd != -1) {
        close(s->fd);
    }
    s->fd = -1;
    s->q = NULL;
}


int
fdcache_shed(void)
{
    int  i;

    for (i = 0; i < nslots && slots[hand].fd == -1; i++) {
        hand = (hand + 1) % nslots;
    }
    if (slots[hand].fd == -1) {
        errno = EMFILE;
        return -1;
    }

    slot_close(&slots[hand]);
    return 0;
}


int
fdcache_get(const queue_t *q, uint64_t seg, int *hint)
{
    int      fd, tries;
    char     path[MQ_NAME_MAX + SEG_NAME_LEN + 2];
    slot_t  *s;

    if (*hint >= 0 && *hint < nslots && slots[*hint].q == q
        && slots[*hint].seg == seg)
    {
        return slots[*hint].fd;
    }

    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".seg", q->name, seg);

    for (tries = 0; ; tries++) {
        fd = openat(srv.data_fd, path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd != -1) {
            break;
        }

        if ((errno != EMFILE && errno != ENFILE) || tries == nslots) {
            return -1;
        }

        /* out of descriptors: give one of ours back and try again */
        if (fdcache_shed() != 0) {
            return -1;
        }
    }

    s = &slots[hand];
    slot_close(s);
    s->q = q;
    s->seg = seg;
    s->fd = fd;
    *hint = hand;
    hand = (hand + 1) % nslots;
    return fd;
}


void
fdcache_drop(const queue_t *q, uint64_t seg, int hint)
{
    if (hint >= 0 && hint < nslots && slots[hint].q == q
        && slots[hint].seg == seg)
    {
        slot_close(&slots[hint]);
    }
}


void
fdcache_drop_queue(const queue_t *q)
{
    int  i;

    for (i = 0; i < nslots; i++) {
        if (slots[i].q == q) {
            slot_close(&slots[i]);
        }
    }
}


void
fdcache_close_all(void)
{
    int  i;

    for (i = 0; i < nslots; i++) {
        slot_close(&slots[i]);
    }
}
