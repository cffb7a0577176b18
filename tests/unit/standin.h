/*
 * standin.h: what unit tests and fuzz targets of memqd code link in place
 * of memqd/main.c and of parts of libc (tests/unit/standin.c): srv and
 * server_wall_ms() as main.c defines them, LeakSanitizer's suppression of
 * fdcache_init() (queue_init() runs once per case here, once per process
 * in memqd), and a realloc() that fails on demand.
 *
 * A test names tests/unit/standin.c in its "// links:" line together with
 * -Wl,--wrap=realloc: the wrapper does not link without it.
 */

#ifndef MEMQ_TEST_STANDIN_H
#define MEMQ_TEST_STANDIN_H

#include <stdint.h>

/* while non-zero, every realloc() of the linked code returns NULL and
 * changes nothing */
extern int  realloc_fails;

/* a fresh data directory made from the mkdtemp() template `dir`, and srv
 * set for it as memqd's defaults would, under `sync_mode`, with journal
 * files of `journal_size` bytes: ready for queue_init() */
void standin_data_dir(char *dir, int sync_mode, uint64_t journal_size);

/* removes `dir` and everything in it (what is left of a failed removal
 * stays in /tmp) */
void standin_remove(const char *dir);

#endif /* MEMQ_TEST_STANDIN_H */
