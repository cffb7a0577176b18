/*
 * ngx_http_memq_errpage.c: nginx's own error answers in a memq location
 * are JSON, like every error the module sends itself.
 *
 * nginx answers some requests before (or instead of) the module: a body
 * over client_max_body_size (413), a method it refuses (405), an
 * internal failure (500), a client that sent a bad request (400) ...  It
 * sends them through ngx_http_special_response_handler(), which sets
 * r->err_status and an HTML page.  In a location with memq_pass (and no
 * error_page of its own for that code, which would have redirected the
 * request elsewhere first) this filter pair swaps that page for
 *
 *     {"error":"<reason>","status":<code>}
 *
 * Answers the module sends itself never set r->err_status, so they pass
 * untouched.  No per-request state is needed: both filters test the same
 * condition, and the body filter drops nginx's buffers and sends the JSON
 * with the last one.
 */

#include "ngx_http_memq_module.h"


typedef struct {
    ngx_uint_t   status;
    const char  *reason;
} ngx_http_memq_reason_t;


static ngx_int_t ngx_http_memq_errpage_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_memq_errpage_body(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_uint_t ngx_http_memq_errpage_ours(ngx_http_request_t *r);
static size_t ngx_http_memq_errpage_text(ngx_http_request_t *r, u_char *buf,
    size_t size);


static ngx_http_output_header_filter_pt  ngx_http_memq_next_header;
static ngx_http_output_body_filter_pt    ngx_http_memq_next_body;

static ngx_http_memq_reason_t  ngx_http_memq_reasons[] = {
    { NGX_HTTP_BAD_REQUEST, "bad request" },
    { NGX_HTTP_FORBIDDEN, "forbidden" },
    { NGX_HTTP_NOT_FOUND, "not found" },
    { NGX_HTTP_NOT_ALLOWED, "method not allowed" },
    { NGX_HTTP_REQUEST_TIME_OUT, "request timed out" },
    { NGX_HTTP_LENGTH_REQUIRED, "length required" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "request too large" },
    { NGX_HTTP_REQUEST_URI_TOO_LARGE, "uri too long" },
    { NGX_HTTP_TOO_MANY_REQUESTS, "too many requests" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "internal error" },
    { NGX_HTTP_NOT_IMPLEMENTED, "not implemented" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "service unavailable" },
    { 0, NULL }
};


/* postconfiguration: the filters go on top of nginx's */
ngx_int_t
ngx_http_memq_errpage_init(ngx_conf_t *cf)
{
    ngx_http_memq_next_header = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_memq_errpage_header;

    ngx_http_memq_next_body = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_memq_errpage_body;

    return NGX_OK;
}


/* nginx's own error page in a memq location */
static ngx_uint_t
ngx_http_memq_errpage_ours(ngx_http_request_t *r)
{
    ngx_http_memq_loc_conf_t  *mlcf;

    if (r->err_status < NGX_HTTP_BAD_REQUEST || r != r->main) {
        return 0;
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_memq_module);

    return (mlcf != NULL && mlcf->cluster != NULL);
}


static size_t
ngx_http_memq_errpage_text(ngx_http_request_t *r, u_char *buf, size_t size)
{
    const char              *reason;
    ngx_http_memq_reason_t  *e;

    reason = "error";

    for (e = ngx_http_memq_reasons; e->status; e++) {
        if (e->status == r->err_status) {
            reason = e->reason;
            break;
        }
    }

    return ngx_snprintf(buf, size, "{\"error\":\"%s\",\"status\":%ui}\n",
                        reason, r->err_status)
           - buf;
}


static ngx_int_t
ngx_http_memq_errpage_header(ngx_http_request_t *r)
{
    u_char  buf[128];

    if (ngx_http_memq_errpage_ours(r)) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        r->headers_out.content_type_lowcase = NULL;
        r->headers_out.charset.len = 0;
        r->headers_out.content_length_n =
                               ngx_http_memq_errpage_text(r, buf, sizeof(buf));

        if (r->headers_out.content_length) {
            r->headers_out.content_length->hash = 0;
            r->headers_out.content_length = NULL;
        }
    }

    return ngx_http_memq_next_header(r);
}


static ngx_int_t
ngx_http_memq_errpage_body(ngx_http_request_t *r, ngx_chain_t *in)
{
    size_t        n;
    ngx_buf_t    *b;
    ngx_uint_t    last;
    ngx_chain_t  *cl, out;
    u_char        buf[128];

    if (in == NULL || !ngx_http_memq_errpage_ours(r)) {
        return ngx_http_memq_next_body(r, in);
    }

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_buf || cl->buf->last_in_chain) {
            last = 1;
        }

        /* nginx's page is static text: consumed, never sent */
        cl->buf->pos = cl->buf->last;

        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }
    }

    if (!last) {
        return NGX_OK;
    }

    n = ngx_http_memq_errpage_text(r, buf, sizeof(buf));

    b = ngx_create_temp_buf(r->pool, n);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, buf, n);
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_memq_next_body(r, &out);
}
