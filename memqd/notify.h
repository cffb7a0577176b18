/*
 * notify.h: the systemd readiness protocol (sd_notify), without
 * libsystemd: one datagram a state change to the unix socket named by
 * $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@').
 */

#ifndef MEMQD_NOTIFY_H
#define MEMQD_NOTIFY_H

/* Sends state ("READY=1", "STOPPING=1") when $NOTIFY_SOCKET is set; a
 * failure is logged, never fatal. */
void notify_send(const char *state);

#endif /* MEMQD_NOTIFY_H */
