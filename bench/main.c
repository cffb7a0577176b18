/*
 * main.c: memq-bench command line, the run and its report.
 *
 * Prints one line for people and one for scripts:
 *
 *   RESULT proto=.. mode=.. conns=.. depth=.. size=.. msgs=.. secs=..
 *          msgs_per_sec=.. mb_per_sec=.. p50_us=.. p99_us=.. errors=..
 *          queues=.. [queue_min=.. queue_max=..]
 *          [lost=.. dup=.. corrupt=.. [misplaced=..]]
 *
 * msgs counts messages acknowledged (produce) or taken (consume, mixed);
 * MB is 10^6 bytes of payload; latency is per request, send to reply;
 * queue_min and queue_max (--queues N > 1) are the msgs of the least and
 * of the most used queue.
 * Exit status: 0 success, 1 --verify found damage, 2 anything else.
 */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "mq_proto.h"


enum {
    OPT_PROTO = 256,
    OPT_ACK,
    OPT_LEASE,
    OPT_VERIFY,
    OPT_RUN_ID,
    OPT_WAIT,
    OPT_TIMEOUT,
    OPT_QUEUES
};


static const struct option  options[] = {
    { "proto",    required_argument, NULL, OPT_PROTO },
    { "host",     required_argument, NULL, 'H' },
    { "port",     required_argument, NULL, 'p' },
    { "conns",    required_argument, NULL, 'c' },
    { "depth",    required_argument, NULL, 'd' },
    { "size",     required_argument, NULL, 's' },
    { "count",    required_argument, NULL, 'n' },
    { "mode",     required_argument, NULL, 'm' },
    { "queue",    required_argument, NULL, 'q' },
    { "queues",   required_argument, NULL, OPT_QUEUES },
    { "duration", required_argument, NULL, 't' },
    { "ack",      no_argument,       NULL, OPT_ACK },
    { "lease",    required_argument, NULL, OPT_LEASE },
    { "verify",   no_argument,       NULL, OPT_VERIFY },
    { "run-id",   required_argument, NULL, OPT_RUN_ID },
    { "wait",     required_argument, NULL, OPT_WAIT },
    { "timeout",  required_argument, NULL, OPT_TIMEOUT },
    { "quiet",    no_argument,       NULL, 'Q' },
    { "help",     no_argument,       NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static const struct {
    const char           *name;
    const bench_proto_t  *proto;
    const char           *port;
} protos[] = {
    { "memq",      &bench_proto_memq,      "22201" },
    { "memcached", &bench_proto_memcached, "11211" },
    { "redis",     &bench_proto_redis,     "6379" },
    { "beanstalk", &bench_proto_beanstalk, "11300" }
};


static const char  *mode_names[] = { "produce", "consume", "mixed" };


static void
usage(FILE *f)
{
    fprintf(f,
"usage: memq-bench [options]\n"
"       memq-bench --http-drain [options]   (--http-drain --help)\n"
"  --proto P        memq (default), memcached, redis or beanstalk\n"
"  -H, --host H     server address (127.0.0.1)\n"
"  -p, --port N     server port (22201, 11211, 6379, 11300 by protocol)\n"
"  -c, --conns N    connections (1); mixed: half produce, half consume\n"
"  -d, --depth N    requests in flight per connection (1)\n"
"  -s, --size N     message bytes, k/m suffixes = 1024/1024^2 (100)\n"
"  -n, --count N    messages in total (100000)\n"
"  -m, --mode M     produce (default), consume or mixed\n"
"  -q, --queue Q    queue, list or tube name (bench)\n"
"  --queues N       N queues Q.0 .. Q.N-1 (1: Q itself); connection i uses\n"
"                   queue i %% N, or goes round its share, one request\n"
"                   each, when N > conns (same N to produce and consume)\n"
"  -t, --duration S stop sending new requests after S seconds\n"
"  --ack            memq: consume with get q/close/open (at-least-once)\n"
"  --lease MS       memq: consume with get q/lease=MS, acknowledge each\n"
"                   item with a pipelined delete q/<id> noreply\n"
"  --wait MS        consume: wait up to MS for an item (memq get q/t=MS,\n"
"                   redis BRPOP, beanstalk reserve-with-timeout)\n"
"  --verify         checkable payloads; consumers report lost/dup/corrupt\n"
"  --run-id ID      --verify: tag shared by a produce and a consume run\n"
"  --timeout S      fail when no reply comes for S seconds (30)\n"
"  -Q, --quiet      print only the RESULT line\n");
}


static int
parse_u64(const char *s, uint64_t *v, int sizes)
{
    char                *end;
    unsigned long long   n;

    if (*s < '0' || *s > '9') {
        return -1;
    }

    n = strtoull(s, &end, 10);

    if (sizes && (*end == 'k' || *end == 'K')) {
        n *= 1024;
        end++;

    } else if (sizes && (*end == 'm' || *end == 'M')) {
        n *= 1024 * 1024;
        end++;
    }

    if (*end != '\0') {
        return -1;
    }

    *v = n;

    return 0;
}


/* queue names go into request lines: keep them to the memq name set */
static int
queue_ok(const char *q)
{
    size_t  n;

    n = strlen(q);

    if (n == 0 || n > 250 || q[0] == '.') {
        return 0;
    }

    return strspn(q, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789_.:-") == n;
}


static int
bad(const char *msg)
{
    fprintf(stderr, "memq-bench: %s\n", msg);
    return BENCH_EXIT_FAIL;
}


int
main(int argc, char **argv)
{
    int              ch, rc, n;
    size_t           i;
    uint64_t         v, msgs;
    double           rate;
    const char      *mode_name;
    bench_conf_t     cf;
    bench_result_t  *res;
    char             name[16];
    static char      run_id[64];

    if (argc > 1 && strcmp(argv[1], "--http-drain") == 0) {
        return bench_http_drain(argc - 1, argv + 1);
    }

    memset(&cf, 0, sizeof(cf));
    cf.proto = &bench_proto_memq;
    cf.host = "127.0.0.1";
    cf.conns = 1;
    cf.depth = 1;
    cf.size = 100;
    cf.count = 100000;
    cf.mode = BENCH_MODE_PRODUCE;
    cf.queue = "bench";
    cf.queues = 1;
    cf.wait_ms = -1;
    cf.timeout = 30;

    while ((ch = getopt_long(argc, argv, "H:p:c:d:s:n:m:q:t:Qh", options,
                             NULL)) != -1)
    {
        switch (ch) {

        case OPT_PROTO:
            cf.proto = NULL;
            for (i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
                if (strcmp(optarg, protos[i].name) == 0) {
                    cf.proto = protos[i].proto;
                }
            }
            if (cf.proto == NULL) {
                return bad("--proto: memq, memcached, redis or beanstalk");
            }
            break;

        case 'H':
            cf.host = optarg;
            break;

        case 'p':
            cf.port = optarg;
            break;

        case 'c':
            if (parse_u64(optarg, &v, 0) != 0 || v == 0 || v > 10000) {
                return bad("-c: 1..10000 connections");
            }
            cf.conns = (unsigned) v;
            break;

        case 'd':
            if (parse_u64(optarg, &v, 0) != 0 || v == 0 || v > 100000) {
                return bad("-d: depth 1..100000");
            }
            cf.depth = (unsigned) v;
            break;

        case 's':
            if (parse_u64(optarg, &v, 1) != 0 || v > 64 * 1024 * 1024) {
                return bad("-s: size 0..64m");
            }
            cf.size = (size_t) v;
            break;

        case 'n':
            if (parse_u64(optarg, &v, 0) != 0 || v > ((uint64_t) 1 << 40)) {
                return bad("-n: a message count");
            }
            cf.count = v;
            break;

        case 'm':
            if (strcmp(optarg, "produce") == 0) {
                cf.mode = BENCH_MODE_PRODUCE;
            } else if (strcmp(optarg, "consume") == 0) {
                cf.mode = BENCH_MODE_CONSUME;
            } else if (strcmp(optarg, "mixed") == 0) {
                cf.mode = BENCH_MODE_MIXED;
            } else {
                return bad("-m: produce, consume or mixed");
            }
            break;

        case 'q':
            cf.queue = optarg;
            break;

        case OPT_QUEUES:
            if (parse_u64(optarg, &v, 0) != 0 || v == 0
                || v > BENCH_QUEUES_MAX)
            {
                return bad("--queues: 1..100000 queues");
            }
            cf.queues = (unsigned) v;
            break;

        case 't':
            cf.duration = strtod(optarg, NULL);
            if (cf.duration <= 0) {
                return bad("-t: seconds > 0");
            }
            break;

        case OPT_ACK:
            cf.ack = 1;
            break;

        case OPT_LEASE:
            if (parse_u64(optarg, &v, 0) != 0 || v == 0
                || v > MQ_LEASE_MS_MAX)
            {
                return bad("--lease: 1..43200000 ms");
            }
            cf.lease_ms = (uint32_t) v;
            break;

        case OPT_VERIFY:
            cf.verify = 1;
            break;

        case OPT_RUN_ID:
            cf.run_id = optarg;
            break;

        case OPT_WAIT:
            if (parse_u64(optarg, &v, 0) != 0 || v > 86400000) {
                return bad("--wait: milliseconds");
            }
            cf.wait_ms = (int64_t) v;
            break;

        case OPT_TIMEOUT:
            cf.timeout = strtod(optarg, NULL);
            if (cf.timeout <= 0) {
                return bad("--timeout: seconds > 0");
            }
            break;

        case 'Q':
            cf.quiet = 1;
            break;

        case 'h':
            usage(stdout);
            return BENCH_EXIT_OK;

        default:
            usage(stderr);
            return BENCH_EXIT_FAIL;
        }
    }

    if (optind != argc) {
        usage(stderr);
        return BENCH_EXIT_FAIL;
    }

    for (i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
        if (cf.proto == protos[i].proto && cf.port == NULL) {
            cf.port = protos[i].port;
        }
    }

    if (!queue_ok(cf.queue)) {
        return bad("-q: 1-250 bytes of [A-Za-z0-9_.:-], not starting "
                   "with '.'");
    }

    cf.queue_len = strlen(cf.queue);

    if (cf.queues > 1) {
        if (!cf.proto->queue) {
            return bad("--queues works only with queues (not memcached)");
        }

        n = snprintf(name, sizeof(name), ".%u", cf.queues - 1);

        if (cf.queue_len + (size_t) n > BENCH_QUEUE_MAX) {
            return bad("-q: too long for the --queues suffix .<i>");
        }
    }

    if (cf.mode == BENCH_MODE_MIXED && cf.conns < 2) {
        return bad("-m mixed needs at least 2 connections");
    }

    if (cf.ack && cf.proto != &bench_proto_memq) {
        return bad("--ack is for --proto memq");
    }

    if (cf.lease_ms && (cf.proto != &bench_proto_memq || cf.ack)) {
        return bad("--lease is for --proto memq, without --ack");
    }

    if (cf.verify) {
        if (!cf.proto->queue) {
            return bad("--verify works only with queues (not memcached)");
        }

        if (cf.run_id == NULL) {
            if (cf.mode != BENCH_MODE_MIXED) {
                return bad("--verify: give the same --run-id to the "
                           "produce and the consume run");
            }
            snprintf(run_id, sizeof(run_id), "m%ld", (long) getpid());
            cf.run_id = run_id;
        }

        if (strchr(cf.run_id, ':') != NULL || strlen(cf.run_id) > 40) {
            return bad("--run-id: at most 40 bytes, no ':'");
        }

        if (cf.size < bench_payload_min_size(&cf)) {
            fprintf(stderr, "memq-bench: --verify needs -s %zu or more\n",
                    bench_payload_min_size(&cf));
            return BENCH_EXIT_FAIL;
        }
    }

    if (cf.wait_ms >= 0 && cf.timeout < (double) cf.wait_ms / 1000 + 10) {
        cf.timeout = (double) cf.wait_ms / 1000 + 10;
    }

    signal(SIGPIPE, SIG_IGN);

    res = malloc(sizeof(bench_result_t));
    if (res == NULL) {
        return bad("out of memory");
    }

    rc = bench_run(&cf, res);
    mode_name = mode_names[cf.mode];

    if (rc != 0) {
        fprintf(stderr, "memq-bench: %s %s failed: %s\n", cf.proto->name,
                mode_name, res->failure);
        free(res);
        return BENCH_EXIT_FAIL;
    }

    msgs = cf.mode == BENCH_MODE_PRODUCE ? res->produced : res->consumed;
    rate = res->secs > 0 ? (double) msgs / res->secs : 0;

    if (!cf.quiet) {
        printf("%s %s: %llu msgs of %zu B, %u conns x depth %u, %.3f s: "
               "%.0f msgs/s, %.2f MB/s, latency p50 %llu us p99 %llu us",
               cf.proto->name, mode_name, (unsigned long long) msgs,
               cf.size, cf.conns, cf.depth, res->secs, rate,
               rate * (double) cf.size / 1e6,
               (unsigned long long) bench_hist_pct(&res->hist, 50),
               (unsigned long long) bench_hist_pct(&res->hist, 99));

        if (cf.mode == BENCH_MODE_MIXED) {
            printf(", produced %llu", (unsigned long long) res->produced);
        }

        if (cf.proto->queue && cf.mode != BENCH_MODE_PRODUCE
            && msgs < cf.count)
        {
            printf(", queue empty after %llu of %llu",
                   (unsigned long long) msgs, (unsigned long long) cf.count);
        }

        if (cf.queues > 1) {
            printf(", %u queues: %llu to %llu msgs each", cf.queues,
                   (unsigned long long) res->queue_min,
                   (unsigned long long) res->queue_max);
        }

        if (res->empties) {
            printf(", %llu empty answers",
                   (unsigned long long) res->empties);
        }

        if (res->misses) {
            printf(", %llu misses", (unsigned long long) res->misses);
        }

        if (res->errors) {
            printf(", %llu ERRORS", (unsigned long long) res->errors);
        }

        printf("\n");

        if (cf.verify && cf.mode != BENCH_MODE_PRODUCE) {
            printf("verify: lost=%llu dup=%llu corrupt=%llu",
                   (unsigned long long) res->lost,
                   (unsigned long long) res->dup,
                   (unsigned long long) res->corrupt);

            if (cf.queues > 1) {
                printf(" misplaced=%llu",
                       (unsigned long long) res->misplaced);
            }

            printf(" (run-id %s)\n", cf.run_id);
        }
    }

    printf("RESULT proto=%s mode=%s conns=%u depth=%u size=%zu msgs=%llu "
           "secs=%.3f msgs_per_sec=%.0f mb_per_sec=%.2f p50_us=%llu "
           "p99_us=%llu errors=%llu",
           cf.proto->name, mode_name, cf.conns, cf.depth, cf.size,
           (unsigned long long) msgs, res->secs, rate,
           rate * (double) cf.size / 1e6,
           (unsigned long long) bench_hist_pct(&res->hist, 50),
           (unsigned long long) bench_hist_pct(&res->hist, 99),
           (unsigned long long) res->errors);

    printf(" queues=%u", cf.queues);

    if (cf.queues > 1) {
        printf(" queue_min=%llu queue_max=%llu",
               (unsigned long long) res->queue_min,
               (unsigned long long) res->queue_max);
    }

    if (cf.verify && cf.mode != BENCH_MODE_PRODUCE) {
        printf(" lost=%llu dup=%llu corrupt=%llu",
               (unsigned long long) res->lost,
               (unsigned long long) res->dup,
               (unsigned long long) res->corrupt);

        if (cf.queues > 1) {
            printf(" misplaced=%llu", (unsigned long long) res->misplaced);
        }
    }

    printf("\n");
    fflush(stdout);

    rc = BENCH_EXIT_OK;

    if (res->errors) {
        rc = BENCH_EXIT_FAIL;

    } else if (cf.verify
               && (res->lost || res->dup || res->corrupt || res->misplaced))
    {
        rc = BENCH_EXIT_VERIFY;
    }

    free(res);

    return rc;
}
