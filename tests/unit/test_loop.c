// links: memqd/loop_epoll.c memqd/log.c
// links: tests/unit/standin.c -Wl,--wrap=realloc
/*
 * test_loop.c: the event loop's timers (memqd/loop_epoll.c): a timer
 * whose owner holds a slot is armed even when memory has run out, and
 * every armed timer fires, in deadline order; a slot released that was
 * never reserved is not counted.  realloc() is wrapped at link time so
 * that it can be made to fail.
 */

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "loop.h"
#include "standin.h"

#define OWNERS  1000
#define ROOM    (8 * OWNERS)      /* more than any heap array here */


static loop_timer_t  timers[ROOM];
static uint64_t      fired_at[ROOM];
static size_t        nfired, nwant;


static void
fire(loop_timer_t *t)
{
    fired_at[nfired++] = t->deadline;

    if (nfired == nwant) {
        loop_stop();
    }
}


static int
never_busy(void)
{
    return 0;
}


/* arms n timers 0..9 ms from now; each must be armed */
static void
arm(size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        timers[i].handler = fire;
        loop_timer_add(&timers[i], (i * 7) % 10);
        assert_int_not_equal(timers[i].index, 0);
    }
}


/* runs the loop until the n armed timers fired: in deadline order */
static void
run_all(size_t n)
{
    size_t  i;

    nfired = 0;
    nwant = n;
    loop_run(never_busy);

    assert_int_equal(nfired, n);
    for (i = 1; i < n; i++) {
        assert_true(fired_at[i - 1] <= fired_at[i]);
    }
    for (i = 0; i < n; i++) {
        assert_int_equal(timers[i].index, 0);
    }
}


static void
test_reserved_slots_arm_without_memory(void **state)
{
    size_t  i, k;

    (void) state;

    for (i = 0; i < OWNERS; i++) {
        assert_int_equal(loop_timer_reserve(), 0);
    }

    /* the owners and the fixed timers, all at once, with no memory */
    realloc_fails = 1;
    arm(OWNERS + LOOP_TIMERS_FIXED);
    run_all(OWNERS + LOOP_TIMERS_FIXED);

    /* again: the room stays */
    arm(OWNERS + LOOP_TIMERS_FIXED);
    run_all(OWNERS + LOOP_TIMERS_FIXED);

    /* reservations go on while the array has room, then one that needs
     * memory says so and holds nothing */
    for (k = 0; k < ROOM && loop_timer_reserve() == 0; k++) {
        /* void */
    }
    assert_true(k < ROOM);
    realloc_fails = 0;

    for (i = 0; i < OWNERS + k; i++) {
        loop_timer_release();
    }
}


static void
test_released_slots_are_reused(void **state)
{
    size_t  i, k;

    (void) state;

    /* owners come and go many times over: the slots they give back are
     * taken again, so the room they need never grows past the most held
     * at once (no allocation for any of these rounds) */
    for (i = 0; i < OWNERS; i++) {
        assert_int_equal(loop_timer_reserve(), 0);
    }
    for (i = 0; i < OWNERS; i++) {
        loop_timer_release();
    }

    realloc_fails = 1;

    for (k = 0; k < 50; k++) {
        for (i = 0; i < OWNERS; i++) {
            assert_int_equal(loop_timer_reserve(), 0);
        }
        arm(OWNERS);
        for (i = 0; i < OWNERS; i += 3) {
            loop_timer_del(&timers[i]);
            assert_int_equal(timers[i].index, 0);
        }
        for (i = 0; i < OWNERS; i += 3) {
            loop_timer_add(&timers[i], 1);
            assert_int_not_equal(timers[i].index, 0);
        }
        run_all(OWNERS);
        for (i = 0; i < OWNERS; i++) {
            loop_timer_release();
        }
    }

    realloc_fails = 0;
}


static void
test_unreserved_timer_refused_cleanly(void **state)
{
    size_t  i, n;

    (void) state;

    /* more timers than slots while memory lasts: the room grows */
    n = LOOP_TIMERS_FIXED + 10;
    arm(n);

    /* one past what the array holds, with no memory: refused and left
     * unarmed, and the armed ones are intact */
    realloc_fails = 1;

    for (i = n; i < ROOM; i++) {
        timers[i].handler = fire;
        loop_timer_add(&timers[i], 1);
        if (timers[i].index == 0) {
            break;
        }
    }

    assert_true(i < ROOM);
    realloc_fails = 0;
    run_all(i);
}


/* the slots the heap has room for beyond those held */
static size_t
free_slots(void)
{
    size_t  i, n;

    realloc_fails = 1;
    for (n = 0; loop_timer_reserve() == 0; n++) {
        /* void */
    }
    realloc_fails = 0;

    for (i = 0; i < n; i++) {
        loop_timer_release();
    }

    return n;
}


/* n releases with stderr going to fd */
static void
release_logged_to(int fd, size_t n)
{
    int  saved;

    saved = dup(STDERR_FILENO);
    assert_true(saved != -1);
    dup2(fd, STDERR_FILENO);

    while (n-- > 0) {
        loop_timer_release();
    }

    dup2(saved, STDERR_FILENO);
    close(saved);
}


static void
test_unmatched_release_not_counted(void **state)
{
    int      out[2];                 /* the pipe stderr goes to */
    char     buf[1024];
    size_t   i, room;
    ssize_t  n;

    (void) state;

    assert_int_equal(pipe2(out, O_NONBLOCK), 0);
    room = free_slots();

    for (i = 0; i < 10; i++) {
        assert_int_equal(loop_timer_reserve(), 0);
    }

    /* ten releases more than the owners took: the fixed timers' slots
     * stay theirs */
    release_logged_to(out[1], 20);
    assert_int_equal(free_slots(), room);

    /* more than were ever reserved: the count does not wrap */
    release_logged_to(out[1], LOOP_TIMERS_FIXED + 10);
    assert_int_equal(free_slots(), room);

    /* said once, in one line */
    close(out[1]);
    n = read(out[0], buf, sizeof(buf) - 1);
    close(out[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "[error] loop: timer slot released without "
                                "a reservation"));
    assert_ptr_equal(strchr(buf, '\n'), buf + n - 1);

    /* slots reserved afterwards hold as before: the owners and the fixed
     * timers arm with no memory */
    for (i = 0; i < OWNERS; i++) {
        assert_int_equal(loop_timer_reserve(), 0);
    }
    realloc_fails = 1;
    arm(OWNERS + LOOP_TIMERS_FIXED);
    run_all(OWNERS + LOOP_TIMERS_FIXED);
    realloc_fails = 0;

    for (i = 0; i < OWNERS; i++) {
        loop_timer_release();
    }
    assert_int_equal(free_slots(), room);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_reserved_slots_arm_without_memory),
        cmocka_unit_test(test_released_slots_are_reused),
        cmocka_unit_test(test_unreserved_timer_refused_cleanly),
        cmocka_unit_test(test_unmatched_release_not_counted),
    };

    log_max_level = LOG_ERROR;     /* the refusal logs one error line */

    if (loop_init() != 0) {
        return 1;
    }

    return cmocka_run_group_tests(tests, NULL, NULL);
}
