/*
 * ngx_http_memq_cors.c: memq_cors, for browser consumers on another origin.
 *
 *   memq_cors <origin>|*;
 *
 * Where it is in force (http, server or location, inherited as usual), a
 * header filter puts Access-Control-Allow-Origin on every answer, whatever
 * produced it: streams (SSE included, sent with the first header), publish
 * results, JSON errors, the status and nginx's own error pages.  A single
 * origin also gets `Vary: Origin`, so a cache never gives one origin's
 * answer to another.  A preflight OPTIONS to a memq_pass or memq_status
 * location answers 204 with the methods, request headers and max age a
 * browser needs; without memq_cors an OPTIONS answers 405 as before.
 *
 * The origin is checked at load time: `*`, or `http[s]://host[:port]`
 * without a path, so no byte of it can break a header.
 *
 * A GET or POST to a memq_pass location that carries an Origin header
 * which memq_cors does not allow, and which is not the gateway's own
 * origin (the Host header), is refused with 403 before any node is asked:
 * the browser would hide the answer from the page anyway, so a consume
 * would take messages nobody reads, and a publish would let any page the
 * user visits write into the queues.  Clients that are not browsers send
 * no Origin and are not affected.
 */

#include "ngx_http_memq_module.h"


#define NGX_HTTP_MEMQ_CORS_MAX_AGE  "600"


static ngx_int_t ngx_http_memq_cors_header_filter(ngx_http_request_t *r);


static ngx_http_output_header_filter_pt  ngx_http_memq_next_header_filter;


char *
ngx_http_memq_cors_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_memq_loc_conf_t *mlcf = conf;

    u_char     *p, *last;
    ngx_str_t  *value;

    if (mlcf->cors.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    p = value[1].data;
    last = p + value[1].len;

    if (value[1].len == 1 && p[0] == '*') {
        mlcf->cors = value[1];
        return NGX_CONF_OK;
    }

    if (value[1].len > 7 && ngx_strncmp(p, "http://", 7) == 0) {
        p += 7;

    } else if (value[1].len > 8 && ngx_strncmp(p, "https://", 8) == 0) {
        p += 8;

    } else {
        goto invalid;
    }

    if (p == last || value[1].len > 256) {
        goto invalid;
    }

    for ( /* void */ ; p < last; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9')
            || *p == '.' || *p == '-' || *p == ':' || *p == '['
            || *p == ']')
        {
            continue;
        }

        goto invalid;
    }

    mlcf->cors = value[1];
    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid origin \"%V\" in \"memq_cors\": \"*\" or "
                       "\"http[s]://host[:port]\" expected", &value[1]);
    return NGX_CONF_ERROR;
}


/* postconfiguration: the header filter */
ngx_int_t
ngx_http_memq_cors_init(ngx_conf_t *cf)
{
    ngx_http_memq_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_memq_cors_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_memq_cors_header_filter(ngx_http_request_t *r)
{
    ngx_str_t                  vary;
    ngx_http_memq_loc_conf_t  *mlcf;

    if (r != r->main) {
        return ngx_http_memq_next_header_filter(r);
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    if (mlcf == NULL || mlcf->cors.len == 0) {
        return ngx_http_memq_next_header_filter(r);
    }

    if (ngx_http_memq_header_add(r, "Access-Control-Allow-Origin", &mlcf->cors)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (mlcf->cors.len != 1) {
        ngx_str_set(&vary, "Origin");

        if (ngx_http_memq_header_add(r, "Vary", &vary) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_http_memq_next_header_filter(r);
}


/*
 * A content handler's answer to OPTIONS: 204 with the preflight headers
 * (Allow-Origin comes from the filter), or NGX_DECLINED when memq_cors is
 * not in force (the caller answers 405).
 */
ngx_int_t
ngx_http_memq_cors_preflight(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  v;
    ngx_http_memq_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    if (mlcf->cors.len == 0) {
        return NGX_DECLINED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&v, "GET, HEAD, POST, OPTIONS");
    if (ngx_http_memq_header_add(r, "Access-Control-Allow-Methods", &v)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&v, "Content-Type, Accept, Cache-Control, Last-Event-ID");
    if (ngx_http_memq_header_add(r, "Access-Control-Allow-Headers", &v)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&v, NGX_HTTP_MEMQ_CORS_MAX_AGE);
    if (ngx_http_memq_header_add(r, "Access-Control-Max-Age", &v) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;
    ngx_http_clear_last_modified(r);
    ngx_http_clear_accept_ranges(r);

    return ngx_http_send_header(r);
}


/*
 * NGX_OK when the request may be served: no Origin header, an origin that
 * memq_cors allows, or the gateway's own (Origin "http[s]://" + Host).
 * NGX_DECLINED otherwise.
 */
ngx_int_t
ngx_http_memq_cors_check(ngx_http_request_t *r)
{
    u_char                    *p;
    size_t                     len, n;
    ngx_uint_t                 i;
    ngx_list_part_t           *part;
    ngx_table_elt_t           *h, *origin;
    ngx_http_memq_loc_conf_t  *mlcf;
    u_char                     quoted[NGX_HTTP_MEMQ_LOG_QUOTE * 3];

    origin = NULL;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "origin", 6) == 0)
        {
            origin = &h[i];
            break;
        }
    }

    if (origin == NULL) {
        return NGX_OK;
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    if (mlcf->cors.len == 1 && mlcf->cors.data[0] == '*') {
        return NGX_OK;
    }

    if (mlcf->cors.len == origin->value.len
        && ngx_strncasecmp(mlcf->cors.data, origin->value.data,
                           origin->value.len) == 0)
    {
        return NGX_OK;
    }

    /* the gateway's own origin: the scheme does not matter here */
    p = origin->value.data;
    len = origin->value.len;

    if (len > 7 && ngx_strncasecmp(p, (u_char *) "http://", 7) == 0) {
        p += 7;
        len -= 7;

    } else if (len > 8 && ngx_strncasecmp(p, (u_char *) "https://", 8) == 0) {
        p += 8;
        len -= 8;

    } else {
        len = 0;
    }

    if (len && r->headers_in.host
        && r->headers_in.host->value.len == len
        && ngx_strncasecmp(r->headers_in.host->value.data, p, len) == 0)
    {
        return NGX_OK;
    }

    n = ngx_http_memq_log_quote(quoted, origin->value.data,
                                origin->value.len);
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "memq: refused a request from origin \"%*s\" "
                  "(not allowed by memq_cors)", n, quoted);

    return NGX_DECLINED;
}


/* adds "key: value" to the answer's headers; both must outlive it */
ngx_int_t
ngx_http_memq_header_add(ngx_http_request_t *r, const char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;

    return NGX_OK;
}
