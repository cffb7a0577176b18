/*
 * notify.c: tells the service manager about start and stop (notify.h).
 */

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"


void
notify_send(const char *state)
{
    int                 fd;
    size_t              len;
    ssize_t             n;
    socklen_t           alen;
    const char         *path;
    struct sockaddr_un  sa;

    path = getenv("NOTIFY_SOCKET");
    if (path == NULL || *path == '\0') {
        return;
    }

    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path)) {
        log_warn("notify", "NOTIFY_SOCKET \"%s\": not a socket path",
                 path);
        return;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len);
    alen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len);

    if (path[0] == '@') {
        /* abstract namespace: the name starts with a NUL, no trailing
         * NUL is part of it */
        sa.sun_path[0] = '\0';
    } else {
        alen++;
    }

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        log_warn("notify", "socket: %s", strerror(errno));
        return;
    }

    n = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
               (struct sockaddr *) &sa, alen);
    if (n != (ssize_t) strlen(state)) {
        log_warn("notify", "%s: %s", path, n == -1 ? strerror(errno)
                                                    : "short send");
    }

    close(fd);
}
