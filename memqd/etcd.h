/*
 * etcd.h: registration of this node in the config centre (etcd v3).
 *
 * With --etcd, a thread of its own keeps the key
 *
 *     /memq/<cluster>/nodes/<host:port>  =  {"addr":"host:port","weight":N}
 *
 * alive under a lease of ETCD_TTL seconds, through etcd's HTTP/JSON
 * gateway, so that a node that dies leaves the node list by itself.
 * The thread reads the settings recorded by etcd_option() once, at start,
 * and touches nothing else of memqd: the loop thread never waits for etcd.
 * etcd being away never stops the node from serving; the thread retries
 * with backoff and registers again (a new lease) once etcd answers.
 */

#ifndef MEMQD_ETCD_H
#define MEMQD_ETCD_H

#define ETCD_TTL            5     /* lease time to live, seconds */

/* getopt codes of the options etcd_option() takes */
#define ETCD_OPT_URLS       'E'   /* --etcd URL[,URL...] */
#define ETCD_OPT_ADVERTISE  'A'   /* --advertise HOST:PORT */
#define ETCD_OPT_CLUSTER    'N'   /* --cluster NAME */
#define ETCD_OPT_WEIGHT     'W'   /* --weight N */

/* Records and checks one option value (argv strings are kept by
 * reference).  Returns 0, or -1 after printing why on stderr. */
int etcd_option(int opt, const char *value);

/* Checks the recorded options together: 0 when --etcd is not used or the
 * set is complete, -1 after printing why on stderr. */
int etcd_check(void);

/* Starts the registration thread when --etcd was given (no-op otherwise).
 * Returns 0, or -1 after logging why. */
int etcd_start(void);

/* Asks the thread to revoke its lease and end; never blocks (loop
 * thread, on SIGTERM). */
void etcd_stop_request(void);

/* Stops the thread (revoking the lease, at most about a second) and
 * waits for it.  Safe to call when nothing was started. */
void etcd_stop(void);

#endif /* MEMQD_ETCD_H */
