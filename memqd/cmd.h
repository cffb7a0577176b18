/*
 * cmd.h: executes parsed commands against the queues and formats replies.
 */

#ifndef MEMQD_CMD_H
#define MEMQD_CMD_H

#include "conn.h"

#define CMD_DONE   0     /* line consumed, reply written */
#define CMD_WAIT   1     /* long poll: keep the line, state is CONN_WAIT */
#define CMD_CLOSE  2     /* close after the reply */
#define CMD_DATA   3     /* line consumed; a data block follows */

/*
 * Executes the request line in[0..len); `avail` bytes of `in` follow it
 * (a data block may already be there: cmd_execute takes it when complete
 * and reports how much it used in *used).
 */
int cmd_execute(conn_t *c, const char *line, size_t len, const char *after,
    size_t avail, size_t *used);

/* The data block of a set that arrived in pieces is complete. */
void cmd_set_complete(conn_t *c);

#endif /* MEMQD_CMD_H */
