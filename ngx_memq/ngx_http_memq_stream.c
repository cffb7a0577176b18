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
 * Encoders write into memory the caller sized with encode_size(); they
 * neither allocate nor fail.
 */

#include "ngx_http_memq_module.h"

#include <zlib.h>


#define NGX_HTTP_MEMQ_UINT_MAX  ((size_t) UINT_MAX)     /* zlib's uInt */


static void *ngx_http_memq_zalloc(void *opaque, u_int items, u_int size);
static void ngx_http_memq_zfree(void *opaque, void *address);


/* upper bound of the bytes encode() writes for this message */
size_t
ngx_http_memq_encode_size(ngx_uint_t format, u_char *data, size_t len,
    ngx_str_t *id)
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
        return NGX_SIZE_T_LEN + 4 + len;

    default: /* NGX_HTTP_MEMQ_FMT_NDJSON */
        return len + 1;
    }
}


/* writes the framed message at dst, returns the end */
u_char *
ngx_http_memq_encode(ngx_uint_t format, u_char *dst, u_char *data,
    size_t len, ngx_str_t *id)
{
    u_char  *p, *last, *s;

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
        dst = ngx_sprintf(dst, "%uz\r\n", len);
        dst = ngx_cpymem(dst, data, len);
        *dst++ = '\r';
        *dst++ = '\n';
        return dst;

    default: /* NGX_HTTP_MEMQ_FMT_NDJSON */
        for (p = data; p < last; p++) {
            *dst++ = (*p == '\r' || *p == '\n') ? ' ' : *p;
        }

        *dst++ = '\n';
        return dst;
    }
}


/*
 * Inflates src (zlib, gzip or raw deflate, told apart by the header bytes)
 * into *dst, a scratch buffer of *cap bytes from pool that is grown as
 * needed up to max.  NGX_OK: *dlen bytes of plain text at *dst.
 * NGX_DECLINED: not a complete compressed stream, or larger than max (the
 * caller passes the value through untouched).  NGX_ERROR: out of memory.
 */
ngx_int_t
ngx_http_memq_inflate(u_char *src, size_t len, u_char **dst, size_t *dlen,
    size_t *cap, size_t max, ngx_pool_t *pool)
{
    int        rc, wbits;
    size_t     size;
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
            break;
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

        if (zs.total_out >= max) {
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

            ngx_memcpy(p, *dst, zs.total_out);
            ngx_pfree(pool, *dst);

            *dst = p;
            *cap = size;
        }

        zs.next_out = *dst + zs.total_out;
        zs.avail_out = (uInt) ngx_min(ngx_min(*cap, max) - zs.total_out,
                                      NGX_HTTP_MEMQ_UINT_MAX);
    }

    *dlen = zs.total_out;
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
