/*
 * mq_proto.h: the memcache text protocol as memq speaks it.
 *
 * Server side (memqd): find a request line in a buffer, parse it into an
 * mq_request_t, split each get key into queue name and options.
 * Client side (gateway, bench): parse a reply header line into an
 * mq_reply_t.
 *
 * Nothing here allocates or copies: results point into the caller's buffer
 * ("(ref)").  Every parser returns MQ_OK, MQ_AGAIN (need more bytes) or
 * MQ_ERROR with a static reason string meant for "CLIENT_ERROR <reason>".
 */

#ifndef MQ_PROTO_H
#define MQ_PROTO_H

#include "mq_common.h"
#include "mq_name.h"

#define MQ_LINE_MAX        2048      /* longest request line, CRLF excluded */
#define MQ_GET_COUNT_MAX   1000      /* largest /n= */
#define MQ_GET_WAIT_MAX    86400000  /* largest /t= (ms): one day */
#define MQ_KEYS_MAX        64        /* keys in one get line */
#define MQ_BYTES_MAX       2147483647  /* largest data block a storage
                                          command may announce: 2^31 - 1 */
#define MQ_LEASE_MS_MAX    43200000  /* longest /lease= (ms): 12 hours */
#define MQ_ITEM_MAX        (1024 * 1024 * 1024) /* largest --max-item-size:
                                          no node stores a bigger item */
#define MQ_ACK_IDS_MAX     1000      /* ids in one /ack= list */

/* command name, enum member; one list so names and values never drift */
#define MQ_CMD_LIST(X)                                                       \
    X("set",       MQ_CMD_SET)                                               \
    X("get",       MQ_CMD_GET)                                               \
    X("gets",      MQ_CMD_GETS)                                              \
    X("delete",    MQ_CMD_DELETE)                                            \
    X("flush",     MQ_CMD_FLUSH)                                             \
    X("flush_all", MQ_CMD_FLUSH_ALL)                                         \
    X("touch",     MQ_CMD_TOUCH)                                             \
    X("stats",     MQ_CMD_STATS)                                             \
    X("version",   MQ_CMD_VERSION)                                           \
    X("quit",      MQ_CMD_QUIT)                                              \
    X("add",       MQ_CMD_ADD)                                               \
    X("replace",   MQ_CMD_REPLACE)                                           \
    X("append",    MQ_CMD_APPEND)                                            \
    X("prepend",   MQ_CMD_PREPEND)                                           \
    X("cas",       MQ_CMD_CAS)

typedef enum {
#define MQ_CMD_ENUM(name, e) e,
    MQ_CMD_LIST(MQ_CMD_ENUM)
#undef MQ_CMD_ENUM
    MQ_CMD_UNKNOWN
} mq_cmd_e;

/* name of a command, "unknown" for MQ_CMD_UNKNOWN */
const char *mq_cmd_name(mq_cmd_e cmd);

typedef struct {
    mq_cmd_e      cmd;
    const char   *key;        /* (ref) first key / queue argument, or NULL */
    size_t        key_len;
    const char   *rest;       /* (ref) get/gets: all keys, space separated;
                                 stats: its arguments; else NULL */
    size_t        rest_len;
    uint32_t      flags;      /* storage commands */
    int64_t       exptime;    /* storage commands, as sent; flush_all:
                                 its optional delay (0 when absent);
                                 touch: the lease in seconds */
    uint64_t      bytes;      /* storage commands: data block length,
                                 at most MQ_BYTES_MAX */
    uint64_t      id;         /* delete <q>/<id>, touch <q>/<id>: the id;
                                 key is then the queue name alone */
    const char   *ids;        /* (ref) delete <q>/<id>,<id>,...: the list
                                 (2 .. MQ_ACK_IDS_MAX ids; id unset), for
                                 mq_proto_next_id(); else NULL */
    size_t        ids_len;
    uint32_t      nids;
    unsigned      has_id:1;   /* an id followed the queue name */
    unsigned      noreply:1;  /* "noreply" was the last token */
    unsigned      has_data:1; /* a data block of `bytes` + CRLF follows */
} mq_request_t;

/*
 * Looks for the end of a request line in buf[0..len).
 * MQ_OK: *line_len = length without the line ending ("\r\n" or "\n"),
 *        *consumed = length with it.
 * MQ_AGAIN: no line end yet and the line may still be legal: len <=
 *           MQ_LINE_MAX, or MQ_LINE_MAX bytes and a '\r' whose '\n' is
 *           still on its way.
 * MQ_ERROR: the line is longer than MQ_LINE_MAX bytes ("line too long"):
 *           no '\n' within MQ_LINE_MAX + 2 bytes, or MQ_LINE_MAX + 1 bytes
 *           ended by a bare '\n'.
 */
int mq_proto_find_line(const char *buf, size_t len, size_t *line_len,
    size_t *consumed);

/*
 * Parses one request line (without its line ending).
 * MQ_OK: req filled in.  Unknown command: MQ_OK with MQ_CMD_UNKNOWN (the
 *        server answers "ERROR").
 * MQ_ERROR: *err is the reason.  When the command is a storage command
 *        whose byte count parsed (and is at most MQ_BYTES_MAX), has_data
 *        is still set so the caller can swallow the data block; otherwise
 *        framing is lost.
 * Validation done here: token counts, numbers (flags u32, exptime i64,
 * bytes <= MQ_BYTES_MAX, cas u64), key length <= MQ_NAME_MAX for add/
 * replace/append/prepend/cas; queue-name checks of set/delete/flush keys
 * ("bad queue name"); at most MQ_KEYS_MAX get keys ("too many keys").
 * get keys are checked by mq_proto_parse_get_key() (their length is
 * bounded only by the line).  noreply is set only where the command takes
 * it (storage commands, delete, flush, flush_all, touch), never for get.
 * delete takes "<q>" or "<q>/<id>" ("bad id" when what follows the '/' is
 * not a decimal u64); touch takes "<q>/<id> <seconds>" (seconds at most
 * MQ_LEASE_MS_MAX / 1000: "bad lease time").
 */
int mq_proto_parse_request(const char *line, size_t len, mq_request_t *req,
    const char **err);

/* Iterates over space-separated keys in *p..end; MQ_OK with the key, or
 * MQ_DECLINED when none is left. */
int mq_proto_next_key(const char **p, const char *end, const char **key,
    size_t *key_len);

typedef struct {
    size_t        name_len;   /* queue name = key[0..name_len) */
    int64_t       wait_ms;    /* /t=MS, -1 when absent */
    uint32_t      count;      /* /n=COUNT, 1 when absent */
    unsigned      open:1;     /* /open */
    unsigned      close:1;    /* /close */
    unsigned      abort:1;    /* /abort */
    unsigned      peek:1;     /* /peek */
    uint32_t      lease_ms;   /* /lease=MS, 0 when absent */
    const char   *acks;       /* (ref) /ack=: the id list, NULL if none */
    size_t        acks_len;
    uint32_t      nacks;      /* ids in it, 1..MQ_ACK_IDS_MAX */
} mq_get_opts_t;

/*
 * Splits a get key "name[/opt...]" into name and options.
 * MQ_ERROR with "bad queue name", "bad option" or "too many ids" (an
 * /ack= list over MQ_ACK_IDS_MAX).  /lease= takes 1..MQ_LEASE_MS_MAX and
 * excludes /open and /peek; /ack= takes comma-separated decimal ids.
 */
int mq_proto_parse_get_key(const char *key, size_t len, mq_get_opts_t *o,
    const char **err);

/* Iterates over the ids of an /ack= list that mq_proto_parse_get_key()
 * accepted, or of a delete's list (mq_request_t ids): MQ_OK with *id,
 * MQ_DECLINED at the end. */
int mq_proto_next_id(const char **p, const char *end, uint64_t *id);

/* client side: reply header lines */
typedef enum {
    MQ_REPLY_VALUE,         /* VALUE <key> <flags> <bytes> [<cas>] */
    MQ_REPLY_END,
    MQ_REPLY_STORED,
    MQ_REPLY_NOT_STORED,
    MQ_REPLY_DELETED,
    MQ_REPLY_NOT_FOUND,
    MQ_REPLY_OK,
    MQ_REPLY_STAT,          /* STAT <name> <value> */
    MQ_REPLY_VERSION,       /* VERSION <text> */
    MQ_REPLY_ERROR,         /* ERROR */
    MQ_REPLY_CLIENT_ERROR,  /* CLIENT_ERROR <text> */
    MQ_REPLY_SERVER_ERROR,  /* SERVER_ERROR <text> */
    MQ_REPLY_TOUCHED
} mq_reply_e;

typedef struct {
    mq_reply_e    type;
    const char   *key;        /* (ref) VALUE key, STAT name */
    size_t        key_len;
    const char   *text;       /* (ref) STAT value, VERSION and error text */
    size_t        text_len;
    uint32_t      flags;      /* VALUE */
    uint64_t      bytes;      /* VALUE: data block length (CRLF follows) */
    uint64_t      cas;        /* VALUE: 4th field when present */
    uint64_t      count;      /* DELETED <n>: n */
    unsigned      has_cas:1;
    unsigned      has_count:1;
    size_t        consumed;   /* header line length including CRLF */
} mq_reply_t;

/*
 * Parses the reply header line at the start of buf[0..len).
 * MQ_OK: r filled in; for MQ_REPLY_VALUE the data block (r->bytes + 2
 *        bytes) starts at buf + r->consumed.
 * MQ_AGAIN: no complete line yet.
 * MQ_ERROR: malformed reply (*err says why): the peer is broken.
 * bytes larger than max_bytes is MQ_ERROR ("value too large").
 */
int mq_proto_parse_reply(const char *buf, size_t len, uint64_t max_bytes,
    mq_reply_t *r, const char **err);

/* Writes v in decimal at p (20 bytes are enough), returns the end. */
char *mq_fmt_u64(char *p, uint64_t v);

#endif /* MQ_PROTO_H */
