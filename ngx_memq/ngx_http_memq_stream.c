/*
 * ngx_http_memq_stream.c: how one message looks on the client connection
 * (ndjson, sse, raw), and the zlib work (inflate on consume, deflate on
 * publish).
 *
 *   ndjson  the message's bytes with each CR and each LF replaced by one
 *           space, then "\n"; an empty message is an empty line
 *   sse     "id: <host:port>/<seq>\n" (when known), then every line of the
 *           message (CRLF, CR and LF all end a line) as "data: <line>\n",
 *           then "\n"
 *   raw     "<length>\r\n<bytes>\r\n", binary safe
 *
 * With an id (memq_ack client: "<host:port>/<id>", the handle the client
 * acknowledges with), ndjson and raw change shape:
 *
 *   ndjson  {"id":"<id>","data":"<message as a JSON string>"}\n, or
 *           {"id":"<id>","data_b64":"<base64>"}\n when the message is not
 *           valid UTF-8 (overlong forms, surrogates and code points past
 *           U+10FFFF are not valid)
 *   raw     "<id> <length>\r\n<bytes>\r\n"
 *
 * Encoders write into memory the caller sized with encode_size(); they
 * neither allocate nor fail.
 */

#include "ngx_http_memq_module.h"

#include <zlib.h>


#define NGX_HTTP_MEMQ_UINT_MAX  ((size_t) UINT_MAX)     /* zlib's uInt */


static u_char *ngx_http_memq_json_plain(u_char *p, u_char *last);
static u_char *ngx_http_memq_line_copy(u_char *dst, u_char *p,
    u_char *last);
static size_t ngx_http_memq_json_size(u_char *data, size_t len);
static u_char *ngx_http_memq_json_escape(u_char *dst, u_char *data,
    size_t len);
static void *ngx_http_memq_zalloc(void *opaque, u_int items, u_int size);
static void ngx_http_memq_zfree(void *opaque, void *address);


/* writes n in decimal at p (NGX_INT64_LEN bytes are enough); returns the
 * end.  Ids go out with every client-mode message and every
 * acknowledgement, so not through ngx_sprintf(). */
u_char *
ngx_http_memq_write_uint(u_char *p, uint64_t n)
{
    return (u_char *) mq_fmt_u64((char *) p, n);
}


/* writes "<addr>/<n>", an item's id, at p (NGX_HTTP_MEMQ_ADDR_LEN +
 * NGX_INT64_LEN + 1 bytes are enough); returns the end */
u_char *
ngx_http_memq_write_id(u_char *p, ngx_str_t *addr, uint64_t n)
{
    p = ngx_cpymem(p, addr->data, addr->len);
    *p++ = '/';

    return ngx_http_memq_write_uint(p, n);
}


/*
 * Upper bound of the bytes encode() writes for this message.  *how tells
 * encode() how an ndjson message with an id goes (NGX_HTTP_MEMQ_JSON_*):
 * copied as it is, escaped, or in base64 when it is not valid UTF-8, so
 * the message is scanned once.
 */
size_t
ngx_http_memq_encode_size(ngx_uint_t format, u_char *data, size_t len,
    ngx_str_t *id, ngx_uint_t *how)
{
    size_t   lines;
    u_char  *p, *last;

    switch (format) {

    case NGX_HTTP_MEMQ_FMT_SSE:
        lines = 1;
        last = data + len;

        for (p = data; p < last; p++) {
            if (*p == '\n' || *p == '\r') {
                lines++;
            }
        }

        return (id ? sizeof("id: \n") - 1 + id->len : 0)
               + lines * (sizeof("data: \n") - 1) + len + 1;

    case NGX_HTTP_MEMQ_FMT_RAW:
        return (id ? id->len + 1 : 0) + NGX_SIZE_T_LEN + 4 + len;

    default: /* NGX_HTTP_MEMQ_FMT_NDJSON */
        if (id == NULL) {
            return len + 1;
        }

        /* most messages are plain text: one scan, then one copy */
        if (ngx_http_memq_json_plain(data, data + len) == data + len) {
            *how = NGX_HTTP_MEMQ_JSON_PLAIN;
            lines = len;

        } else {
            lines = ngx_http_memq_json_size(data, len);
            *how = NGX_HTTP_MEMQ_JSON_ESCAPED;

            if (lines == (size_t) -1) {
                *how = NGX_HTTP_MEMQ_JSON_B64;
                lines = ngx_base64_encoded_length(len) + sizeof("_b64") - 1;
            }
        }

        return sizeof("{\"id\":\"\",\"data\":\"\"}\n") - 1 + id->len + lines;
    }
}


/*
 * JSON string contents, per byte below 0x80: 0 copied as it is, else the
 * length of its escape ("\\n", "\\u0001"); bytes from 0x80 are UTF-8,
 * copied once checked.
 */
static const u_char  ngx_http_memq_json_esc[128] = {
    6, 6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 6, 6, 2, 6, 6,
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
    0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,   /* '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
};


#define NGX_HTTP_MEMQ_ONES  0x0101010101010101ULL
#define NGX_HTTP_MEMQ_HIGHS 0x8080808080808080ULL

/* the high bit of a byte of w is set where that byte is 0 (a byte above
 * the first such one may be set as well) */
#define ngx_http_memq_zero_bytes(w)                                          \
    (((w) - NGX_HTTP_MEMQ_ONES) & ~(w) & NGX_HTTP_MEMQ_HIGHS)

/*
 * The first byte from p on that is not copied as it is into a JSON string
 * (below 0x20, '"', '\\', or 0x80 and above), or last.  Eight bytes are
 * tested at a time; a word with such a byte, or a false alarm above it, is
 * left to the byte loop, which decides.
 */
static u_char *
ngx_http_memq_json_plain(u_char *p, u_char *last)
{
    uint64_t  w, t;

    while (last - p >= 8) {
        ngx_memcpy(&w, p, 8);

        t = ((w - 0x20 * NGX_HTTP_MEMQ_ONES) & ~w)
            | ngx_http_memq_zero_bytes(w ^ ('"' * NGX_HTTP_MEMQ_ONES))
            | ngx_http_memq_zero_bytes(w ^ ('\\' * NGX_HTTP_MEMQ_ONES))
            | w;

        if (t & NGX_HTTP_MEMQ_HIGHS) {
            break;
        }

        p += 8;
    }

    while (p < last && *p < 0x80 && ngx_http_memq_json_esc[*p] == 0) {
        p++;
    }

    return p;
}


/*
 * An ndjson line of write mode: the message with CR and LF made spaces,
 * then LF.  Eight bytes a step: a word without either byte is copied
 * whole (this copy is most of what a write-mode stream costs the worker
 * in user space).
 */
static u_char *
ngx_http_memq_line_copy(u_char *dst, u_char *p, u_char *last)
{
    u_char    *end;
    uint64_t   w;

    while (last - p >= 8) {
        ngx_memcpy(&w, p, 8);

        if (ngx_http_memq_zero_bytes(w ^ ('\n' * NGX_HTTP_MEMQ_ONES))
            | ngx_http_memq_zero_bytes(w ^ ('\r' * NGX_HTTP_MEMQ_ONES)))
        {
            for (end = p + 8; p < end; p++) {
                *dst++ = (*p == '\r' || *p == '\n') ? ' ' : *p;
            }

            continue;
        }

        ngx_memcpy(dst, &w, 8);
        dst += 8;
        p += 8;
    }

    for ( /* void */ ; p < last; p++) {
        *dst++ = (*p == '\r' || *p == '\n') ? ' ' : *p;
    }

    *dst++ = '\n';
    return dst;
}


/*
 * The length of data as the contents of a JSON string, or (size_t) -1
 * when data is not valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF, no truncated sequence).  Valid
 * multi-byte sequences are copied as they are; '"', '\\' and control
 * characters are escaped.
 */
static size_t
ngx_http_memq_json_size(u_char *data, size_t len)
{
    u_char  *p, *last;
    size_t   n, i, more;
    u_char   lo, hi;

    n = len;
    last = data + len;

    for (p = data; p < last; /* void */) {

        /* the common case: a run of bytes copied as they are */
        p = ngx_http_memq_json_plain(p, last);

        if (p == last) {
            break;
        }

        if (*p < 0x80) {
            n += ngx_http_memq_json_esc[*p] - 1;
            p++;
            continue;
        }

        /* the lead byte gives the length and the range of the second
         * byte, which rules out overlong forms, surrogates and code
         * points past U+10FFFF */
        lo = 0x80;
        hi = 0xbf;

        if (*p >= 0xc2 && *p <= 0xdf) {
            more = 1;

        } else if (*p >= 0xe0 && *p <= 0xef) {
            more = 2;
            lo = (*p == 0xe0) ? 0xa0 : 0x80;
            hi = (*p == 0xed) ? 0x9f : 0xbf;

        } else if (*p >= 0xf0 && *p <= 0xf4) {
            more = 3;
            lo = (*p == 0xf0) ? 0x90 : 0x80;
            hi = (*p == 0xf4) ? 0x8f : 0xbf;

        } else {
            return (size_t) -1;
        }

        if ((size_t) (last - p) <= more || p[1] < lo || p[1] > hi) {
            return (size_t) -1;
        }

        for (i = 2; i <= more; i++) {
            if (p[i] < 0x80 || p[i] > 0xbf) {
                return (size_t) -1;
            }
        }

        p += more + 1;
    }

    return n;
}


/* writes data as the contents of a JSON string; valid UTF-8 only */
static u_char *
ngx_http_memq_json_escape(u_char *dst, u_char *data, size_t len)
{
    u_char         *p, *s, *last;
    static u_char   hex[] = "0123456789abcdef";

    last = data + len;

    for (p = data; p < last; /* void */) {
        s = p;

        /* plain runs and (checked) UTF-8 sequences are copied */
        do {
            p = ngx_http_memq_json_plain(p, last);

            while (p < last && *p >= 0x80) {
                p++;
            }

        } while (p < last && *p >= 0x20 && *p != '"' && *p != '\\');

        dst = ngx_cpymem(dst, s, p - s);

        if (p == last) {
            break;
        }

        *dst++ = '\\';

        switch (*p) {
        case '"':
        case '\\':
            *dst++ = *p;
            break;
        case '\n':
            *dst++ = 'n';
            break;
        case '\r':
            *dst++ = 'r';
            break;
        case '\t':
            *dst++ = 't';
            break;
        default:
            dst = ngx_cpymem(dst, "u00", 3);
            *dst++ = hex[*p >> 4];
            *dst++ = hex[*p & 0x0f];
        }

        p++;
    }

    return dst;
}


/* writes the framed message at dst, returns the end; how as
 * encode_size() said */
u_char *
ngx_http_memq_encode(ngx_uint_t format, u_char *dst, u_char *data,
    size_t len, ngx_str_t *id, ngx_uint_t how)
{
    u_char     *p, *last, *s;
    ngx_str_t   enc, src;

    last = data + len;

    switch (format) {

    case NGX_HTTP_MEMQ_FMT_SSE:
        if (id) {
            dst = ngx_cpymem(dst, "id: ", 4);
            dst = ngx_cpymem(dst, id->data, id->len);
            *dst++ = '\n';
        }

        p = data;

        for ( ;; ) {
            s = p;

            while (p < last && *p != '\r' && *p != '\n') {
                p++;
            }

            dst = ngx_cpymem(dst, "data: ", 6);
            dst = ngx_cpymem(dst, s, p - s);
            *dst++ = '\n';

            if (p == last) {
                break;
            }

            if (*p == '\r' && p + 1 < last && p[1] == '\n') {
                p++;
            }

            p++;

            if (p == last) {
                /* a message ending in a line break: the empty last line */
                dst = ngx_cpymem(dst, "data: \n", 7);
                break;
            }
        }

        *dst++ = '\n';
        return dst;

    case NGX_HTTP_MEMQ_FMT_RAW:
        if (id) {
            dst = ngx_cpymem(dst, id->data, id->len);
            *dst++ = ' ';
        }

        dst = ngx_sprintf(dst, "%uz\r\n", len);
        dst = ngx_cpymem(dst, data, len);
        *dst++ = '\r';
        *dst++ = '\n';
        return dst;

    default: /* NGX_HTTP_MEMQ_FMT_NDJSON */
        if (id) {
            dst = ngx_cpymem(dst, "{\"id\":\"", 7);
            dst = ngx_cpymem(dst, id->data, id->len);

            if (how == NGX_HTTP_MEMQ_JSON_PLAIN) {
                dst = ngx_cpymem(dst, "\",\"data\":\"", 10);
                dst = ngx_cpymem(dst, data, len);

            } else if (how == NGX_HTTP_MEMQ_JSON_ESCAPED) {
                dst = ngx_cpymem(dst, "\",\"data\":\"", 10);
                dst = ngx_http_memq_json_escape(dst, data, len);

            } else {
                dst = ngx_cpymem(dst, "\",\"data_b64\":\"", 14);
                enc.data = dst;
                src.data = data;
                src.len = len;
                ngx_encode_base64(&enc, &src);
                dst += enc.len;
            }

            dst = ngx_cpymem(dst, "\"}\n", 3);
            return dst;
        }

        return ngx_http_memq_line_copy(dst, data, last);
    }
}


/*
 * Inflates src (zlib, gzip or raw deflate, told apart by the header bytes)
 * into *dst, a scratch buffer of *cap bytes from pool that is grown as
 * needed up to max.  NGX_OK: *dlen bytes of plain text at *dst (every
 * member of a gzip value).  NGX_DECLINED: not a complete compressed stream,
 * bytes after it, or larger than max (the caller passes the value through
 * untouched).  NGX_ERROR: out of memory.
 */
ngx_int_t
ngx_http_memq_inflate(u_char *src, size_t len, u_char **dst, size_t *dlen,
    size_t *cap, size_t max, ngx_pool_t *pool)
{
    int        rc, wbits;
    size_t     size, out;
    u_char    *p;
    z_stream   zs;

    if (len >= 2 && src[0] == 0x1f && src[1] == 0x8b) {
        wbits = 16 + MAX_WBITS;

    } else if (len >= 2 && (src[0] & 0x0f) == Z_DEFLATED
               && (src[0] >> 4) <= 7
               && ((src[0] << 8) | src[1]) % 31 == 0)
    {
        wbits = MAX_WBITS;

    } else {
        wbits = -MAX_WBITS;
    }

    ngx_memzero(&zs, sizeof(z_stream));
    zs.zalloc = ngx_http_memq_zalloc;
    zs.zfree = ngx_http_memq_zfree;
    zs.opaque = pool;

    if (inflateInit2(&zs, wbits) != Z_OK) {
        return NGX_ERROR;
    }

    if (*dst == NULL || *cap == 0) {
        size = ngx_min(ngx_max(len * 4, 16384), ngx_max(max, 1));

        *dst = ngx_palloc(pool, size);
        if (*dst == NULL) {
            inflateEnd(&zs);
            return NGX_ERROR;
        }

        *cap = size;
    }

    zs.next_in = src;
    zs.avail_in = len;
    /* avail_out is a uInt: a memq_inflate_max_size of 4g or more must
     * not wrap it (the loop below hands out the rest in turns) */
    zs.next_out = *dst;
    zs.avail_out = (uInt) ngx_min(ngx_min(*cap, max), NGX_HTTP_MEMQ_UINT_MAX);

    for ( ;; ) {
        rc = inflate(&zs, Z_NO_FLUSH);

        if (rc == Z_STREAM_END) {
            if (zs.avail_in == 0) {
                break;
            }

            /*
             * Bytes after the end: gzip members may follow one another
             * (gunzip inflates them all, so do we); after a zlib or raw
             * stream, or after a member when no member follows, the value
             * did not inflate completely and goes out as stored.  Breaking
             * here lost those bytes.  inflateReset() zeroes total_out:
             * the output so far is next_out - *dst.
             */
            if (wbits != 16 + MAX_WBITS || inflateReset(&zs) != Z_OK) {
                inflateEnd(&zs);
                return NGX_DECLINED;
            }

            continue;
        }

        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            inflateEnd(&zs);
            return NGX_DECLINED;
        }

        if (zs.avail_out > 0) {
            /* input ended before the stream did */
            inflateEnd(&zs);
            return NGX_DECLINED;
        }

        out = zs.next_out - *dst;

        if (out >= max) {
            inflateEnd(&zs);
            return NGX_DECLINED;
        }

        size = ngx_min(*cap * 2, max);

        if (size > *cap) {
            p = ngx_palloc(pool, size);
            if (p == NULL) {
                inflateEnd(&zs);
                return NGX_ERROR;
            }

            ngx_memcpy(p, *dst, out);
            ngx_pfree(pool, *dst);

            *dst = p;
            *cap = size;
        }

        zs.next_out = *dst + out;
        zs.avail_out = (uInt) ngx_min(ngx_min(*cap, max) - out,
                                      NGX_HTTP_MEMQ_UINT_MAX);
    }

    *dlen = zs.next_out - *dst;
    inflateEnd(&zs);

    return NGX_OK;
}


/* deflates src in zlib format into memory from pool */
ngx_int_t
ngx_http_memq_deflate(ngx_pool_t *pool, u_char *src, size_t len,
    ngx_str_t *out)
{
    uLongf  dlen;

    dlen = compressBound(len);

    out->data = ngx_pnalloc(pool, dlen);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    if (compress2(out->data, &dlen, src, len, Z_DEFAULT_COMPRESSION) != Z_OK)
    {
        return NGX_ERROR;
    }

    out->len = dlen;

    return NGX_OK;
}


/* zlib's allocations come from the request pool, freed with it */
static void *
ngx_http_memq_zalloc(void *opaque, u_int items, u_int size)
{
    return ngx_palloc(opaque, items * size);
}


static void
ngx_http_memq_zfree(void *opaque, void *address)
{
    ngx_pfree(opaque, address);
}
