/*
 * ngx_http_memq_shm.c: node health and counters shared by all workers.
 *
 * One zone per cluster ("memq_<cluster>"), holding one fixed-size
 * ngx_http_memq_sh_t allocated from the slab: a table of node slots keyed
 * by the "host:port" text.  No pointers into worker memory are kept there.
 * A worker's ngx_http_memq_node_t remembers its slot index.
 *
 * Health, as nginx's upstream does it: a failure opens a window of
 * fail_timeout; max_fails failures within it mark the node down for
 * fail_timeout (max_fails 0: never).  A success while up clears the count.
 * Health fields change under the slab mutex (short sections); counters are
 * atomics and need no lock.
 *
 * On reload the zone is reused when its size is unchanged (slots and
 * counters survive); the static source bits are recomputed from the new
 * configuration.  Slot exhaustion (more than NGX_HTTP_MEMQ_MAX_NODES
 * distinct nodes over the zone's life) leaves new nodes without a slot:
 * they work, health is then per worker (a private slot) and they are
 * missing from the status.
 */

#include "ngx_http_memq_module.h"


static ngx_int_t ngx_http_memq_shm_find(ngx_http_memq_sh_t *sh,
    ngx_str_t *addr, ngx_uint_t take);


/* used by nodes without a shared slot; per worker */
static ngx_http_memq_shnode_t  ngx_http_memq_private_slot;


ngx_int_t
ngx_http_memq_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_memq_cluster_t *ocl = data;

    ngx_uint_t                i;
    ngx_slab_pool_t          *shpool;
    ngx_http_memq_sh_t       *sh;
    ngx_http_memq_node_t    **np;
    ngx_http_memq_cluster_t  *cl;

    cl = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (ocl) {
        /* reload: keep the old table */
        sh = ocl->sh;

    } else if (shm_zone->shm.exists) {
        sh = shpool->data;

    } else {
        sh = ngx_slab_calloc(shpool, sizeof(ngx_http_memq_sh_t));
        if (sh == NULL) {
            return NGX_ERROR;
        }

        shpool->data = sh;

        shpool->log_ctx = ngx_slab_alloc(shpool,
                                         sizeof(" in memq zone \"\"")
                                         + shm_zone->shm.name.len);
        if (shpool->log_ctx == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(shpool->log_ctx, " in memq zone \"%V\"%Z",
                    &shm_zone->shm.name);
    }

    cl->sh = sh;
    cl->shpool = shpool;

    ngx_shmtx_lock(&shpool->mutex);

    /* sources are recomputed: static ones now, file ones by the new
     * workers when they read their nodes_file; etcd ones stay in force
     * until the new workers hear from etcd */
    for (i = 0; i < NGX_HTTP_MEMQ_MAX_NODES; i++) {
        sh->nodes[i].sources &= NGX_HTTP_MEMQ_SRC_ETCD;
    }

    ngx_http_memq_etcd_init_zone(cl);

    ngx_shmtx_unlock(&shpool->mutex);

    np = cl->nodes.elts;

    for (i = 0; i < cl->nodes.nelts; i++) {
        (void) ngx_http_memq_shm_slot(cl, np[i]);
    }

    return NGX_OK;
}


/* index of addr's slot; with take, a free slot is claimed; -1 if none */
static ngx_int_t
ngx_http_memq_shm_find(ngx_http_memq_sh_t *sh, ngx_str_t *addr,
    ngx_uint_t take)
{
    ngx_uint_t               i, gen, pass;
    ngx_http_memq_shnode_t  *sn;

    for (i = 0; i < NGX_HTTP_MEMQ_MAX_NODES; i++) {
        sn = &sh->nodes[i];

        if (sn->used && sn->addr_len == addr->len
            && ngx_memcmp(sn->addr, addr->data, addr->len) == 0)
        {
            return i;
        }
    }

    if (!take) {
        return -1;
    }

    /* a free slot, else one no worker lists any more (a node that left):
     * its gen changes, so a worker still holding the old node sees that
     * the slot is no longer its own */
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < NGX_HTTP_MEMQ_MAX_NODES; i++) {
            sn = &sh->nodes[i];

            if (pass == 0 ? sn->used : (sn->sources != 0)) {
                continue;
            }

            gen = sn->gen + 1;
            ngx_memzero(sn, sizeof(ngx_http_memq_shnode_t));
            sn->gen = gen;
            sn->used = 1;
            sn->addr_len = addr->len;
            ngx_memcpy(sn->addr, addr->data, addr->len);
            return i;
        }
    }

    return -1;
}


/*
 * Finds or claims node's slot and publishes its sources and weight there.
 * NGX_DECLINED when the table is full (the node keeps a private slot).
 */
ngx_int_t
ngx_http_memq_shm_slot(ngx_http_memq_cluster_t *cl, ngx_http_memq_node_t *node)
{
    ngx_int_t                i;
    ngx_http_memq_shnode_t  *sn;

    ngx_shmtx_lock(&cl->shpool->mutex);

    /* a node that left takes no slot: it only gives up its own */
    i = ngx_http_memq_shm_find(cl->sh, &node->addr, node->sources != 0);

    if (i < 0) {
        ngx_shmtx_unlock(&cl->shpool->mutex);
        node->slot = NGX_HTTP_MEMQ_MAX_NODES;
        return NGX_DECLINED;
    }

    node->slot = i;
    sn = &cl->sh->nodes[i];
    node->slot_gen = sn->gen;
    sn->weight = node->weight;
    sn->sources = (sn->sources & ~NGX_HTTP_MEMQ_SRC_STATIC)
                  | (node->sources & NGX_HTTP_MEMQ_SRC_STATIC);
    sn->sources = (sn->sources & ~NGX_HTTP_MEMQ_SRC_FILE)
                  | (node->sources & NGX_HTTP_MEMQ_SRC_FILE);
    sn->sources = (sn->sources & ~NGX_HTTP_MEMQ_SRC_ETCD)
                  | (node->sources & NGX_HTTP_MEMQ_SRC_ETCD);

    ngx_shmtx_unlock(&cl->shpool->mutex);

    return NGX_OK;
}


/* after a nodes_file or etcd was read: publish every node's sources and
 * weight */
void
ngx_http_memq_shm_sources(ngx_http_memq_cluster_t *cl)
{
    ngx_uint_t              i, pass;
    ngx_http_memq_node_t  **np;

    np = cl->nodes.elts;

    /* the nodes that left first: the slots they give up are free for the
     * nodes that joined */
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < cl->nodes.nelts; i++) {
            if ((np[i]->sources == 0) == (pass == 0)) {
                (void) ngx_http_memq_shm_slot(cl, np[i]);
            }
        }
    }
}


/* a node struct is about to be reused: its slot no longer lists it */
void
ngx_http_memq_shm_release(ngx_http_memq_node_t *node)
{
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    cl = node->cluster;
    sn = ngx_http_memq_shnode(node);

    if (cl == NULL || cl->sh == NULL || sn == &ngx_http_memq_private_slot) {
        return;
    }

    ngx_shmtx_lock(&cl->shpool->mutex);
    sn->sources = 0;
    ngx_shmtx_unlock(&cl->shpool->mutex);
}


ngx_http_memq_shnode_t *
ngx_http_memq_shnode(ngx_http_memq_node_t *node)
{
    ngx_http_memq_shnode_t  *sn;

    if (node->slot >= NGX_HTTP_MEMQ_MAX_NODES || node->cluster->sh == NULL) {
        return &ngx_http_memq_private_slot;
    }

    sn = &node->cluster->sh->nodes[node->slot];

    if (sn->gen != node->slot_gen) {
        /* the slot went to another address meanwhile */
        return &ngx_http_memq_private_slot;
    }

    return sn;
}


/* 1 if the node may be used now: listed and not marked down */
ngx_int_t
ngx_http_memq_node_usable(ngx_http_memq_node_t *node)
{
    ngx_int_t                 usable;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    if (node->sources == 0) {
        return 0;
    }

    cl = node->cluster;
    sn = ngx_http_memq_shnode(node);

    if (sn == &ngx_http_memq_private_slot) {
        return 1;
    }

    ngx_shmtx_lock(&cl->shpool->mutex);

    usable = 1;

    if (sn->down_until) {
        if ((ngx_msec_int_t) (sn->down_until - ngx_current_msec) > 0) {
            usable = 0;

        } else {
            /* fail_timeout passed: try it again */
            sn->down_until = 0;
            sn->fails = 0;
        }
    }

    ngx_shmtx_unlock(&cl->shpool->mutex);

    return usable;
}


/* counts a failure of the node, marking it down after max_fails */
void
ngx_http_memq_node_failed(ngx_http_memq_node_t *node, ngx_log_t *log,
    const char *reason)
{
    size_t                    len;
    ngx_uint_t                down;
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    cl = node->cluster;
    sn = ngx_http_memq_shnode(node);

    (void) ngx_atomic_fetch_add(&sn->failures, 1);

    if (sn == &ngx_http_memq_private_slot) {
        return;
    }

    down = 0;

    ngx_shmtx_lock(&cl->shpool->mutex);

    len = ngx_min(ngx_strlen(reason), NGX_HTTP_MEMQ_ERR_LEN);
    ngx_memcpy(sn->last_error, reason, len);
    sn->last_error_len = len;

    if (sn->down_until == 0 && cl->max_fails) {
        if (sn->fails == 0
            || ngx_current_msec - sn->fail_start >= cl->fail_timeout)
        {
            sn->fails = 0;
            sn->fail_start = ngx_current_msec;
        }

        sn->fails++;

        if (sn->fails >= cl->max_fails) {
            sn->down_until = ngx_current_msec + cl->fail_timeout;
            if (sn->down_until == 0) {
                sn->down_until = 1;
            }

            down = 1;
        }
    }

    ngx_shmtx_unlock(&cl->shpool->mutex);

    if (down) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "memq node %V of cluster \"%V\" marked down for %M ms "
                      "(%s)", &node->addr, &cl->name, cl->fail_timeout,
                      reason);
    }
}


/* a successful exchange with the node */
void
ngx_http_memq_node_ok(ngx_http_memq_node_t *node)
{
    ngx_http_memq_shnode_t   *sn;
    ngx_http_memq_cluster_t  *cl;

    cl = node->cluster;
    sn = ngx_http_memq_shnode(node);

    if (sn == &ngx_http_memq_private_slot || sn->fails == 0) {
        return;
    }

    ngx_shmtx_lock(&cl->shpool->mutex);

    if (sn->down_until == 0) {
        sn->fails = 0;
    }

    ngx_shmtx_unlock(&cl->shpool->mutex);
}
