/*
 * mq_proto.c: the memcache text protocol, request side (memqd) and reply
 * side (gateway, bench).
 *
 * Everything works on the caller's bytes: results point into them, nothing
 * is copied, allocated or logged.  A request line is split into at most
 * MQ_TOKENS_MAX space-separated tokens (get/gets keys are walked instead,
 * there may be up to MQ_KEYS_MAX of them); numbers are decimal digits only,
 * with overflow an error.
 *
 * Storage commands report has_data as soon as their byte count parses, even
 * when the rest of the line is wrong: the data block is then on its way and
 * the server must swallow exactly that many bytes to stay in sync.  A count
 * over MQ_BYTES_MAX is not believed: no client sends a block of 2 GiB to a
 * queue, swallowing one would hold the connection for hours, and counts
 * near 2^64 would wrap "bytes + 2"; framing is then lost.
 */

#include <string.h>

#include "mq_proto.h"


/* the longest line we tokenize: "cas k f e b c noreply" */
#define MQ_TOKENS_MAX  7

/* reasons, for "CLIENT_ERROR <reason>" */
#define MQ_ERR_FORMAT     "bad command line format"
#define MQ_ERR_NAME       "bad queue name"
#define MQ_ERR_KEYS       "too many keys"
#define MQ_ERR_OPTION     "bad option"
#define MQ_ERR_REPLY      "bad reply"
#define MQ_ERR_TOO_LARGE  "value too large"
#define MQ_ERR_LINE       "line too long"
#define MQ_ERR_ID         "bad id"
#define MQ_ERR_IDS        "too many ids"
#define MQ_ERR_LEASE      "bad lease time"

/* protocol words */
#define MQ_WORD_NOREPLY   "noreply"

#define MQ_OPT_OPEN       "open"
#define MQ_OPT_CLOSE      "close"
#define MQ_OPT_ABORT      "abort"
#define MQ_OPT_PEEK       "peek"
#define MQ_OPT_WAIT       "t="
#define MQ_OPT_COUNT      "n="
#define MQ_OPT_LEASE      "lease="
#define MQ_OPT_ACK        "ack="

#define MQ_REPLY_W_VALUE         "VALUE"
#define MQ_REPLY_W_END           "END"
#define MQ_REPLY_W_STORED        "STORED"
#define MQ_REPLY_W_NOT_STORED    "NOT_STORED"
#define MQ_REPLY_W_DELETED       "DELETED"
#define MQ_REPLY_W_TOUCHED       "TOUCHED"
#define MQ_REPLY_W_NOT_FOUND     "NOT_FOUND"
#define MQ_REPLY_W_OK            "OK"
#define MQ_REPLY_W_STAT          "STAT"
#define MQ_REPLY_W_VERSION       "VERSION"
#define MQ_REPLY_W_ERROR         "ERROR"
#define MQ_REPLY_W_CLIENT_ERROR  "CLIENT_ERROR"
#define MQ_REPLY_W_SERVER_ERROR  "SERVER_ERROR"

#define mq_str_eq(p, n, lit)                                                 \
    ((n) == sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0)


typedef struct {
    const char  *p;      /* (ref) first byte */
    size_t       len;
} mq_tok_t;

typedef struct {
    const char  *name;
    size_t       len;
    mq_cmd_e     cmd;
} mq_cmd_t;


static int mq_check_ids(const char *p, size_t len, uint32_t *n,
    const char *bad, const char **err);

static const mq_cmd_t  mq_cmds[] = {
#define MQ_CMD_ENTRY(name, e) { name, sizeof(name) - 1, e },
    MQ_CMD_LIST(MQ_CMD_ENTRY)
#undef MQ_CMD_ENTRY
};

/* reply words that stand alone on their line */
static const struct {
    const char  *word;
    size_t       len;
    mq_reply_e   type;
} mq_reply_words[] = {
    { MQ_REPLY_W_END, sizeof(MQ_REPLY_W_END) - 1, MQ_REPLY_END },
    { MQ_REPLY_W_STORED, sizeof(MQ_REPLY_W_STORED) - 1, MQ_REPLY_STORED },
    { MQ_REPLY_W_NOT_STORED, sizeof(MQ_REPLY_W_NOT_STORED) - 1,
      MQ_REPLY_NOT_STORED },
    { MQ_REPLY_W_DELETED, sizeof(MQ_REPLY_W_DELETED) - 1,
      MQ_REPLY_DELETED },
    { MQ_REPLY_W_NOT_FOUND, sizeof(MQ_REPLY_W_NOT_FOUND) - 1,
      MQ_REPLY_NOT_FOUND },
    { MQ_REPLY_W_OK, sizeof(MQ_REPLY_W_OK) - 1, MQ_REPLY_OK },
    { MQ_REPLY_W_TOUCHED, sizeof(MQ_REPLY_W_TOUCHED) - 1,
      MQ_REPLY_TOUCHED }
};

/* reply words followed by free text */
static const struct {
    const char  *word;
    size_t       len;
    mq_reply_e   type;
} mq_reply_text_words[] = {
    { MQ_REPLY_W_VERSION, sizeof(MQ_REPLY_W_VERSION) - 1,
      MQ_REPLY_VERSION },
    { MQ_REPLY_W_ERROR, sizeof(MQ_REPLY_W_ERROR) - 1, MQ_REPLY_ERROR },
    { MQ_REPLY_W_CLIENT_ERROR, sizeof(MQ_REPLY_W_CLIENT_ERROR) - 1,
      MQ_REPLY_CLIENT_ERROR },
    { MQ_REPLY_W_SERVER_ERROR, sizeof(MQ_REPLY_W_SERVER_ERROR) - 1,
      MQ_REPLY_SERVER_ERROR }
};


/* The first ' ' in p..end, or end.  Tokens and keys are mostly short, so
 * a plain loop beats memchr()'s call and setup for the first bytes; a
 * long one (a delete's list of ids, about 900 bytes) goes to memchr(). */
static const char *
mq_find_space(const char *p, const char *end)
{
    const char  *s, *e;

    e = end - p > 32 ? p + 32 : end;

    for (s = p; s < e; s++) {
        if (*s == ' ') {
            return s;
        }
    }

    if (s == end) {
        return end;
    }

    s = memchr(s, ' ', (size_t) (end - s));

    return s != NULL ? s : end;
}


const char *
mq_cmd_name(mq_cmd_e cmd)
{
    size_t  i;

    i = (size_t) cmd;

    if (i >= sizeof(mq_cmds) / sizeof(mq_cmds[0])) {
        return "unknown";
    }

    return mq_cmds[i].name;
}


int
mq_proto_find_line(const char *buf, size_t len, size_t *line_len,
    size_t *consumed)
{
    size_t       n, ll;
    const char  *nl;

    n = len < MQ_LINE_MAX + 2 ? len : MQ_LINE_MAX + 2;

    nl = memchr(buf, '\n', n);

    if (nl == NULL) {
        if (len <= MQ_LINE_MAX) {
            return MQ_AGAIN;
        }

        /* a line of exactly MQ_LINE_MAX bytes whose '\n' has not arrived
         * yet after its '\r' */
        if (len == MQ_LINE_MAX + 1 && buf[MQ_LINE_MAX] == '\r') {
            return MQ_AGAIN;
        }

        return MQ_ERROR;
    }

    ll = (size_t) (nl - buf);

    if (ll > 0 && buf[ll - 1] == '\r') {
        ll--;
    }

    /* MQ_LINE_MAX + 1 bytes ended by a bare '\n' */
    if (ll > MQ_LINE_MAX) {
        return MQ_ERROR;
    }

    *line_len = ll;
    *consumed = (size_t) (nl - buf) + 1;

    return MQ_OK;
}


/* Decimal digits only, at least one, no sign; MQ_ERROR on overflow. */
static int
mq_parse_u64(const char *p, size_t len, uint64_t *out)
{
    size_t    i;
    uint64_t  v, d;

    if (len == 0) {
        return MQ_ERROR;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return MQ_ERROR;
        }

        d = (uint64_t) (p[i] - '0');

        if (v >= UINT64_MAX / 10
            && (v > UINT64_MAX / 10 || d > UINT64_MAX % 10))
        {
            return MQ_ERROR;
        }

        v = v * 10 + d;
    }

    *out = v;

    return MQ_OK;
}


static int
mq_parse_u32(const char *p, size_t len, uint32_t *out)
{
    uint64_t  v;

    if (mq_parse_u64(p, len, &v) != MQ_OK || v > UINT32_MAX) {
        return MQ_ERROR;
    }

    *out = (uint32_t) v;

    return MQ_OK;
}


/* An optional '-' then decimal digits; the full int64_t range. */
static int
mq_parse_i64(const char *p, size_t len, int64_t *out)
{
    uint64_t  v;

    if (len > 0 && p[0] == '-') {
        if (mq_parse_u64(p + 1, len - 1, &v) != MQ_OK
            || v > (uint64_t) INT64_MAX + 1)
        {
            return MQ_ERROR;
        }

        /* -(v - 1) - 1 cannot overflow, even for v = 2^63 */
        *out = v == 0 ? 0 : -(int64_t) (v - 1) - 1;

        return MQ_OK;
    }

    if (mq_parse_u64(p, len, &v) != MQ_OK || v > (uint64_t) INT64_MAX) {
        return MQ_ERROR;
    }

    *out = (int64_t) v;

    return MQ_OK;
}


/*
 * Splits p..end at runs of spaces into at most max tokens.  Returns the
 * number of tokens, or max + 1 when there are more than max.
 */
static size_t
mq_tokenize(const char *p, const char *end, mq_tok_t *t, size_t max)
{
    size_t       n;
    const char  *s;

    n = 0;

    for ( ;; ) {
        while (p < end && *p == ' ') {
            p++;
        }

        if (p == end) {
            return n;
        }

        if (n == max) {
            return max + 1;
        }

        s = mq_find_space(p, end);

        t[n].p = p;
        t[n].len = (size_t) (s - p);
        n++;

        p = s;
    }
}


static mq_cmd_e
mq_cmd_lookup(const char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < sizeof(mq_cmds) / sizeof(mq_cmds[0]); i++) {
        if (mq_cmds[i].len == len && mq_cmds[i].name[0] == p[0]
            && memcmp(mq_cmds[i].name, p, len) == 0)
        {
            return mq_cmds[i].cmd;
        }
    }

    return MQ_CMD_UNKNOWN;
}


static int
mq_is_noreply(const mq_tok_t *t)
{
    return mq_str_eq(t->p, t->len, MQ_WORD_NOREPLY);
}


/*
 * set/add/replace/append/prepend <key> <flags> <exptime> <bytes> [noreply]
 * cas <key> <flags> <exptime> <bytes> <cas> [noreply]
 * t[0] is the command.
 */
static int
mq_parse_storage(mq_request_t *req, const mq_tok_t *t, size_t n,
    const char **err)
{
    size_t    need;
    uint64_t  cas;

    need = req->cmd == MQ_CMD_CAS ? 6 : 5;

    if (n < need || mq_parse_u64(t[4].p, t[4].len, &req->bytes) != MQ_OK
        || req->bytes > MQ_BYTES_MAX)
    {
        req->bytes = 0;
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    /* from here on the data block is known to follow, even when the line
     * has more tokens than it should: the client framed it by <bytes> */
    req->has_data = 1;

    if (n > need + 1) {
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    req->key = t[1].p;
    req->key_len = t[1].len;

    if (n == need + 1) {
        if (!mq_is_noreply(&t[need])) {
            *err = MQ_ERR_FORMAT;
            return MQ_ERROR;
        }

        req->noreply = 1;
    }

    if (mq_parse_u32(t[2].p, t[2].len, &req->flags) != MQ_OK
        || mq_parse_i64(t[3].p, t[3].len, &req->exptime) != MQ_OK)
    {
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    if (req->cmd == MQ_CMD_CAS
        && mq_parse_u64(t[5].p, t[5].len, &cas) != MQ_OK)
    {
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    if (req->cmd == MQ_CMD_SET) {
        if (!mq_name_valid(req->key, req->key_len)) {
            *err = MQ_ERR_NAME;
            return MQ_ERROR;
        }

    } else if (req->key_len > MQ_NAME_MAX) {
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    return MQ_OK;
}


/* get|gets <key>...; p..end is what follows the command name */
static int
mq_parse_get(mq_request_t *req, const char *p, const char *end,
    const char **err)
{
    size_t       n, klen;
    const char  *k;

    while (p < end && *p == ' ') {
        p++;
    }

    while (end > p && end[-1] == ' ') {
        end--;
    }

    if (p == end) {
        *err = MQ_ERR_FORMAT;
        return MQ_ERROR;
    }

    req->rest = p;
    req->rest_len = (size_t) (end - p);

    n = 0;

    while (mq_proto_next_key(&p, end, &k, &klen) == MQ_OK) {
        if (n == 0) {
            req->key = k;
            req->key_len = klen;
        }

        if (++n > MQ_KEYS_MAX) {
            *err = MQ_ERR_KEYS;
            return MQ_ERROR;
        }
    }

    return MQ_OK;
}


/*
 * delete and touch: the key token is "<q>" or "<q>/<id>", and for delete
 * (`list`) also "<q>/<id>,<id>,..." (up to MQ_ACK_IDS_MAX ids).  Sets key
 * to the queue name and, with an id, has_id and id, or with a list of
 * two or more, has_id, ids and nids.  The name is checked later with the
 * other commands' names; a bad id is MQ_ERROR "bad id".
 */
static int
mq_split_id(mq_request_t *req, const mq_tok_t *t, int list,
    const char **err)
{
    size_t       len;
    const char  *slash, *p;

    slash = memchr(t->p, '/', t->len);

    req->key = t->p;
    req->key_len = slash ? (size_t) (slash - t->p) : t->len;

    if (slash == NULL) {
        return MQ_OK;
    }

    if (!mq_name_valid(req->key, req->key_len)) {
        req->key_len = t->len;          /* the token as sent */
        *err = MQ_ERR_NAME;
        return MQ_ERROR;
    }

    p = slash + 1;
    len = (size_t) (t->p + t->len - p);

    if (list && memchr(p, ',', len) != NULL) {
        if (mq_check_ids(p, len, &req->nids, MQ_ERR_ID, err) != MQ_OK) {
            return MQ_ERROR;
        }

        req->ids = p;
        req->ids_len = len;
        req->has_id = 1;
        return MQ_OK;
    }

    if (mq_parse_u64(p, len, &req->id) != MQ_OK) {
        *err = MQ_ERR_ID;
        return MQ_ERROR;
    }

    req->has_id = 1;
    return MQ_OK;
}


int
mq_proto_parse_request(const char *line, size_t len, mq_request_t *req,
    const char **err)
{
    size_t       n;
    mq_tok_t     t[MQ_TOKENS_MAX];
    const char  *p, *end, *s;
    uint64_t     zero;

    memset(req, 0, sizeof(*req));
    req->cmd = MQ_CMD_UNKNOWN;

    p = line;
    end = line + len;

    while (p < end && *p == ' ') {
        p++;
    }

    if (p == end) {
        return MQ_OK;
    }

    s = mq_find_space(p, end);

    req->cmd = mq_cmd_lookup(p, (size_t) (s - p));

    switch (req->cmd) {

    case MQ_CMD_UNKNOWN:
    case MQ_CMD_VERSION:
    case MQ_CMD_QUIT:
        return MQ_OK;

    case MQ_CMD_GET:
    case MQ_CMD_GETS:
        return mq_parse_get(req, s, end, err);

    case MQ_CMD_STATS:
        while (s < end && *s == ' ') {
            s++;
        }

        while (end > s && end[-1] == ' ') {
            end--;
        }

        if (s < end) {
            req->rest = s;
            req->rest_len = (size_t) (end - s);
        }

        return MQ_OK;

    default:
        break;
    }

    n = mq_tokenize(p, end, t, MQ_TOKENS_MAX);

    switch (req->cmd) {

    case MQ_CMD_SET:
    case MQ_CMD_ADD:
    case MQ_CMD_REPLACE:
    case MQ_CMD_APPEND:
    case MQ_CMD_PREPEND:
    case MQ_CMD_CAS:
        return mq_parse_storage(req, t, n, err);

    case MQ_CMD_DELETE:
        /* delete <key> [0] [noreply]: the "0" is memcached's legacy time */
        if (n < 2 || n > 4) {
            goto format;
        }

        if (mq_split_id(req, &t[1], 1, err) != MQ_OK) {
            return MQ_ERROR;
        }

        if (n == 4) {
            if (mq_parse_u64(t[2].p, t[2].len, &zero) != MQ_OK || zero != 0
                || !mq_is_noreply(&t[3]))
            {
                goto format;
            }

            req->noreply = 1;

        } else if (n == 3) {
            if (mq_is_noreply(&t[2])) {
                req->noreply = 1;

            } else if (mq_parse_u64(t[2].p, t[2].len, &zero) != MQ_OK
                       || zero != 0)
            {
                goto format;
            }
        }

        break;

    case MQ_CMD_FLUSH:
        /* flush <key> [noreply] */
        if (n < 2 || n > 3) {
            goto format;
        }

        req->key = t[1].p;
        req->key_len = t[1].len;

        if (n == 3) {
            if (!mq_is_noreply(&t[2])) {
                goto format;
            }

            req->noreply = 1;
        }

        break;

    case MQ_CMD_TOUCH:
        /* touch <q>/<id> <seconds> [noreply] */
        if (n < 3 || n > 4) {
            goto format;
        }

        if (mq_split_id(req, &t[1], 0, err) != MQ_OK) {
            return MQ_ERROR;
        }

        if (n == 4) {
            if (!mq_is_noreply(&t[3])) {
                goto format;
            }

            req->noreply = 1;
        }

        if (mq_parse_i64(t[2].p, t[2].len, &req->exptime) != MQ_OK
            || req->exptime < 0)
        {
            goto format;
        }

        if (req->exptime > MQ_LEASE_MS_MAX / 1000) {
            *err = MQ_ERR_LEASE;
            return MQ_ERROR;
        }

        if (!req->has_id) {
            *err = MQ_ERR_ID;
            return MQ_ERROR;
        }

        break;

    case MQ_CMD_FLUSH_ALL:
        /* flush_all [delay] [noreply]; the delay goes to exptime */
        if (n > 3) {
            goto format;
        }

        if (n >= 2 && mq_is_noreply(&t[n - 1])) {
            req->noreply = 1;
            n--;
        }

        if (n == 3) {
            goto format;
        }

        if (n == 2 && mq_parse_i64(t[1].p, t[1].len, &req->exptime) != MQ_OK)
        {
            goto format;
        }

        return MQ_OK;

    default:
        /* not reached: every command is handled above */
        return MQ_OK;
    }

    /* delete and flush name a queue */

    if (!mq_name_valid(req->key, req->key_len)) {
        *err = MQ_ERR_NAME;
        return MQ_ERROR;
    }

    return MQ_OK;

format:

    *err = MQ_ERR_FORMAT;
    return MQ_ERROR;
}


int
mq_proto_next_key(const char **p, const char *end, const char **key,
    size_t *key_len)
{
    const char  *s, *e;

    s = *p;

    while (s < end && *s == ' ') {
        s++;
    }

    if (s >= end) {
        *p = s;
        return MQ_DECLINED;
    }

    /* keys may be long (a name is up to 250 bytes): memchr() pays off */
    e = memchr(s, ' ', (size_t) (end - s));
    if (e == NULL) {
        e = end;
    }

    *key = s;
    *key_len = (size_t) (e - s);
    *p = e;

    return MQ_OK;
}


#define MQ_ID_MAX  "18446744073709551615"        /* UINT64_MAX */


/* A list of ids: decimal u64 ids separated by single commas, at least
 * one, at most MQ_ACK_IDS_MAX; *n is how many.  A malformed list is
 * MQ_ERROR with *err = bad.  Only checked here, by digit counts (an id
 * of 20 digits is compared with UINT64_MAX as a string): the values are
 * read once, by mq_proto_next_id(). */
static int
mq_check_ids(const char *p, size_t len, uint32_t *n, const char *bad,
    const char **err)
{
    size_t       digits;
    const char  *s, *z, *end;

    end = p + len;
    *n = 0;

    for (s = p; ; s++) {
        /* an id starts at s: leading zeros, then its digits from z */
        for (p = s; s < end && *s == '0'; s++) {
            /* void */
        }

        for (z = s; s < end && *s >= '0' && *s <= '9'; s++) {
            /* void */
        }

        digits = (size_t) (s - z);

        if (s == p || digits > sizeof(MQ_ID_MAX) - 1
            || (digits == sizeof(MQ_ID_MAX) - 1
                && memcmp(z, MQ_ID_MAX, digits) > 0)
            || (s < end && *s != ','))
        {
            *err = bad;
            return MQ_ERROR;
        }

        if (++*n > MQ_ACK_IDS_MAX) {
            *err = MQ_ERR_IDS;
            return MQ_ERROR;
        }

        if (s == end) {
            return MQ_OK;
        }
    }
}


int
mq_proto_parse_get_key(const char *key, size_t len, mq_get_opts_t *o,
    const char **err)
{
    size_t       olen;
    uint64_t     v;
    const char  *p, *end, *opt, *slash;

    memset(o, 0, sizeof(*o));
    o->wait_ms = -1;
    o->count = 1;

    end = key + len;

    slash = memchr(key, '/', len);
    o->name_len = slash ? (size_t) (slash - key) : len;

    if (!mq_name_valid(key, o->name_len)) {
        *err = MQ_ERR_NAME;
        return MQ_ERROR;
    }

    for (p = key + o->name_len; p < end; p = slash) {

        /* *p is '/' */
        opt = p + 1;

        for (slash = opt; slash < end && *slash != '/'; slash++) {
            /* void */
        }

        olen = (size_t) (slash - opt);

        if (mq_str_eq(opt, olen, MQ_OPT_OPEN)) {
            o->open = 1;

        } else if (mq_str_eq(opt, olen, MQ_OPT_CLOSE)) {
            o->close = 1;

        } else if (mq_str_eq(opt, olen, MQ_OPT_ABORT)) {
            o->abort = 1;

        } else if (mq_str_eq(opt, olen, MQ_OPT_PEEK)) {
            o->peek = 1;

        } else if (olen > 2 && memcmp(opt, MQ_OPT_WAIT, 2) == 0) {
            if (mq_parse_u64(opt + 2, olen - 2, &v) != MQ_OK
                || v > MQ_GET_WAIT_MAX)
            {
                goto bad;
            }

            o->wait_ms = (int64_t) v;

        } else if (olen > 2 && memcmp(opt, MQ_OPT_COUNT, 2) == 0) {
            if (mq_parse_u64(opt + 2, olen - 2, &v) != MQ_OK
                || v == 0 || v > MQ_GET_COUNT_MAX)
            {
                goto bad;
            }

            o->count = (uint32_t) v;

        } else if (olen > sizeof(MQ_OPT_LEASE) - 1
                   && memcmp(opt, MQ_OPT_LEASE, sizeof(MQ_OPT_LEASE) - 1)
                      == 0)
        {
            if (mq_parse_u64(opt + sizeof(MQ_OPT_LEASE) - 1,
                             olen - (sizeof(MQ_OPT_LEASE) - 1), &v) != MQ_OK
                || v == 0 || v > MQ_LEASE_MS_MAX)
            {
                goto bad;
            }

            o->lease_ms = (uint32_t) v;

        } else if (olen > sizeof(MQ_OPT_ACK) - 1
                   && memcmp(opt, MQ_OPT_ACK, sizeof(MQ_OPT_ACK) - 1) == 0
                   && o->acks == NULL)
        {
            o->acks = opt + sizeof(MQ_OPT_ACK) - 1;
            o->acks_len = olen - (sizeof(MQ_OPT_ACK) - 1);

            if (mq_check_ids(o->acks, o->acks_len, &o->nacks,
                             MQ_ERR_OPTION, err)
                != MQ_OK)
            {
                return MQ_ERROR;
            }

        } else {
            goto bad;
        }
    }

    if (o->lease_ms && (o->open || o->peek)) {
        goto bad;
    }

    return MQ_OK;

bad:

    *err = MQ_ERR_OPTION;
    return MQ_ERROR;
}


int
mq_proto_next_id(const char **p, const char *end, uint64_t *id)
{
    uint64_t     v;
    const char  *s;

    s = *p;
    if (s >= end) {
        return MQ_DECLINED;
    }

    /* the list was checked: digits, and no id over UINT64_MAX */
    for (v = 0; s < end && *s != ','; s++) {
        v = v * 10 + (uint64_t) (*s - '0');
    }

    *id = v;
    *p = s < end ? s + 1 : s;
    return MQ_OK;
}


int
mq_proto_parse_reply(const char *buf, size_t len, uint64_t max_bytes,
    mq_reply_t *r, const char **err)
{
    int          rc;
    size_t       i, n, ll, consumed, wlen;
    mq_tok_t     t[4];
    const char  *p, *end, *s;

    rc = mq_proto_find_line(buf, len, &ll, &consumed);

    if (rc == MQ_AGAIN) {
        return MQ_AGAIN;
    }

    if (rc == MQ_ERROR) {
        *err = MQ_ERR_LINE;
        return MQ_ERROR;
    }

    memset(r, 0, sizeof(*r));
    r->consumed = consumed;

    end = buf + ll;

    s = mq_find_space(buf, end);

    wlen = (size_t) (s - buf);

    /* s..end: the arguments, from the separating space on */

    if (mq_str_eq(buf, wlen, MQ_REPLY_W_VALUE)) {
        n = mq_tokenize(s, end, t, 4);

        if (n < 3 || n > 4
            || mq_parse_u32(t[1].p, t[1].len, &r->flags) != MQ_OK
            || mq_parse_u64(t[2].p, t[2].len, &r->bytes) != MQ_OK)
        {
            goto bad;
        }

        if (n == 4) {
            if (mq_parse_u64(t[3].p, t[3].len, &r->cas) != MQ_OK) {
                goto bad;
            }

            r->has_cas = 1;
        }

        if (r->bytes > max_bytes) {
            *err = MQ_ERR_TOO_LARGE;
            return MQ_ERROR;
        }

        r->type = MQ_REPLY_VALUE;
        r->key = t[0].p;
        r->key_len = t[0].len;

        return MQ_OK;
    }

    if (mq_str_eq(buf, wlen, MQ_REPLY_W_STAT)) {
        /* STAT <name> <value...>: the value is the rest of the line */
        p = s;

        if (mq_proto_next_key(&p, end, &r->key, &r->key_len) != MQ_OK) {
            goto bad;
        }

        while (p < end && *p == ' ') {
            p++;
        }

        r->type = MQ_REPLY_STAT;
        r->text = p;
        r->text_len = (size_t) (end - p);

        return MQ_OK;
    }

    if (mq_str_eq(buf, wlen, MQ_REPLY_W_DELETED) && s < end) {
        /* DELETED <n>: the answer to a delete of a list of ids */
        if (s + 1 >= end
            || mq_parse_u64(s + 1, (size_t) (end - s - 1), &r->count)
               != MQ_OK)
        {
            goto bad;
        }

        r->type = MQ_REPLY_DELETED;
        r->has_count = 1;
        return MQ_OK;
    }

    for (i = 0; i < sizeof(mq_reply_words) / sizeof(mq_reply_words[0]); i++)
    {
        if (mq_reply_words[i].len == ll
            && memcmp(mq_reply_words[i].word, buf, ll) == 0)
        {
            r->type = mq_reply_words[i].type;
            return MQ_OK;
        }
    }

    for (i = 0;
         i < sizeof(mq_reply_text_words) / sizeof(mq_reply_text_words[0]);
         i++)
    {
        if (mq_reply_text_words[i].len == wlen
            && memcmp(mq_reply_text_words[i].word, buf, wlen) == 0)
        {
            /* the text after one space, may be empty */
            p = s < end ? s + 1 : end;

            r->type = mq_reply_text_words[i].type;
            r->text = p;
            r->text_len = (size_t) (end - p);

            return MQ_OK;
        }
    }

bad:

    *err = MQ_ERR_REPLY;
    return MQ_ERROR;
}


/* Writes v in decimal at p, returns the end; used instead of snprintf on
 * the get path, where formatting was a tenth of the work per item.  The
 * digits are counted from the bit length (no loop), then written from
 * the end two a division: a lease's id (the cas field) has as many
 * digits as the queue has held items.  The gateway writes ids with it
 * too (every client-mode message, every acknowledged id). */
char *
mq_fmt_u64(char *p, uint64_t v)
{
    size_t  n, d;

    static const uint64_t  pow10[20] = {
        1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull,
        10000000ull, 100000000ull, 1000000000ull, 10000000000ull,
        100000000000ull, 1000000000000ull, 10000000000000ull,
        100000000000000ull, 1000000000000000ull, 10000000000000000ull,
        100000000000000000ull, 1000000000000000000ull,
        10000000000000000000ull
    };
    static const char  pairs[] =
        "00010203040506070809101112131415161718192021222324"
        "25262728293031323334353637383940414243444546474849"
        "50515253545556575859606162636465666768697071727374"
        "75767778798081828384858687888990919293949596979899";

    if (v < 10) {
        *p = (char) ('0' + v);
        return p + 1;
    }

    /* bits * log10(2) is 1233 / 4096 to within the error that the
     * comparison corrects: n is floor(log10(v)) + 1 */
    n = (size_t) ((64 - __builtin_clzll(v)) * 1233) >> 12;
    n += v >= pow10[n];

    p += n;

    while (v >= 100) {
        d = (size_t) (v % 100) * 2;
        v /= 100;
        *--p = pairs[d + 1];
        *--p = pairs[d];
    }

    if (v >= 10) {
        *--p = pairs[v * 2 + 1];
        *--p = pairs[v * 2];
    } else {
        *--p = (char) ('0' + v);
    }

    return p + n;
}
