/*
 * net.c: see net.h.  Shared by the memcache listeners (conn.c) and the
 * metrics listener (metrics.c).
 */

#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "net.h"


int
net_listen(const char *addr, const char *who)
{
    int               fd, one, rc;
    char              host[256], *colon;
    const char       *port;
    struct addrinfo   hints, *res;

    if (strlen(addr) >= sizeof(host)) {
        log_error(who, "%.64s...: address too long", addr);
        return -1;
    }

    strcpy(host, addr);
    colon = strrchr(host, ':');
    if (colon == NULL) {
        log_error(who, "%s: expected ADDR:PORT", addr);
        return -1;
    }
    *colon = '\0';
    port = colon + 1;

    if (host[0] == '[' && colon > host && colon[-1] == ']') {
        colon[-1] = '\0';
        memmove(host, host + 1, strlen(host));
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;

    rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        log_error(who, "%s: %s", addr, gai_strerror(rc));
        return -1;
    }

    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd == -1) {
        log_error(who, "%s: socket: %s", addr, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }

    one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0
        || listen(fd, 1024) != 0)
    {
        log_error(who, "%s: %s", addr, strerror(errno));
        freeaddrinfo(res);
        close(fd);
        return -1;
    }

    freeaddrinfo(res);
    return fd;
}
