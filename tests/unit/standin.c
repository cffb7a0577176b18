/*
 * standin.c: see standin.h.
 */

#include <stddef.h>
#include <stdint.h>
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
