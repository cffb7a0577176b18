/*
 * standin.c: see standin.h.
 */

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "server.h"
#include "standin.h"


server_t  srv;

int       realloc_fails;


/* the same clock as main.c's */
uint64_t
server_wall_ms(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);
    return (uint64_t) tv.tv_sec * 1000 + (uint64_t) tv.tv_usec / 1000;
}


void
standin_data_dir(char *dir, int sync_mode, uint64_t journal_size)
{
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }

    memset(&srv, 0, sizeof(srv));
    srv.data_dir = dir;
    srv.data_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (srv.data_fd == -1) {
        perror(dir);
        abort();
    }
    srv.sync_mode = sync_mode;
    srv.max_item_size = 1024 * 1024;
    srv.segment_size = 64 * 1024 * 1024;
    srv.journal_size = journal_size;
    srv.max_conns = 16;
}



void
standin_remove(const char *dir)
{
    char  cmd[256];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        /* left behind in /tmp */
    }
}


void *__real_realloc(void *p, size_t n);

void *
__wrap_realloc(void *p, size_t n)
{
    if (realloc_fails) {
        return NULL;
    }

    return __real_realloc(p, n);
}


/*
 * fdcache_init() allocates its slot array anew each time queue_init()
 * runs and never frees the old one: memqd runs queue_init() once, tests
 * and fuzz targets once per case or input.
 */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_options(void);

const char *
__lsan_default_suppressions(void)
{
    return "leak:fdcache_init\n";
}


const char *
__lsan_default_options(void)
{
    return "print_suppressions=0";
}
