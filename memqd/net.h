/*
 * net.h: listening sockets from "ADDR:PORT" strings ("[v6]:PORT" too; an
 * empty ADDR listens on every address).
 */

#ifndef MEMQD_NET_H
#define MEMQD_NET_H

/* A bound, listening, non-blocking, close-on-exec socket, or -1 after
 * logging why under subsystem `who`. */
int net_listen(const char *addr, const char *who);

#endif /* MEMQD_NET_H */
