#!/bin/bash
# bench/fsync_stalls.sh: slow commits of one --sync always memqd under
# steady durable produce, for one or more memqd binaries alternated.
#
# For each round, each shape and each binary: a fresh data directory, a
# 5 s warm-up (the first journal file is 1 MiB, the switch to a full one
# is not what is measured), then memq-bench producing for SECS seconds.
# The node's fsync histogram (--metrics) is read before and after: the
# commits over 10 ms and over 25 ms are the stalls a producer sees as
# tail latency (one per journal file or checkpoint before write-behind).
#
# Environment:
#   BINS    memqd binaries to compare (build/memqd), e.g.
#           "/tmp/old/memqd build/memqd"
#   SHAPES  conns:size:queues list ("50:100:1 16:4096:1 50:100:256")
#   SECS    seconds of each run (20); ROUNDS (2); PORT (7401, and +1)
# Prints one line a run: binary, shape, msgs/s, p50/p99 (us), commits,
# commits over 10 ms and over 25 ms.

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/build/memq-bench
BINS=${BINS:-$ROOT/build/memqd}
PORT=${PORT:-7401}
MPORT=$((PORT + 1))
DATA=$(mktemp -d /tmp/memq-stalls-XXXXXX)
trap 'rm -rf "$DATA"' EXIT

# the histogram's cumulative count at bucket $2 in metrics text $1
bucket() {
    echo "$1" | awk -v le="$2" -F'[" ]' \
        '/fsync_duration_seconds_bucket/ && $2 == le { print $NF }'
}

run() {
    local bin=$1 shape=$2 c sz nq pid m0 m1 r tot s10 s25
    IFS=: read -r c sz nq <<<"$shape"

    rm -rf "$DATA/d"
    "$bin" --listen "127.0.0.1:$PORT" --data-dir "$DATA/d" --sync always \
        --metrics "127.0.0.1:$MPORT" >"$DATA/node.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        curl -sf "127.0.0.1:$MPORT/metrics" >/dev/null && break
        sleep 0.1
    done

    "$BENCH" -p "$PORT" -c 50 -s 100 -n 100000000 -t 5 -q warm -Q >/dev/null
    m0=$(curl -sf "127.0.0.1:$MPORT/metrics")
    r=$("$BENCH" -p "$PORT" -c "$c" -s "$sz" --queues "$nq" -n 100000000 \
        -t "${SECS:-20}" -q st -Q)
    m1=$(curl -sf "127.0.0.1:$MPORT/metrics")
    kill "$pid"
    wait "$pid" 2>/dev/null || true

    tot=$(( $(bucket "$m1" +Inf) - $(bucket "$m0" +Inf) ))
    s10=$(( tot - ($(bucket "$m1" 0.01) - $(bucket "$m0" 0.01)) ))
    s25=$(( tot - ($(bucket "$m1" 0.025) - $(bucket "$m0" 0.025)) ))
    echo "$bin $shape $(echo "$r" | sed \
        's/.*msgs_per_sec=\([0-9]*\).*p50_us=\([0-9]*\) p99_us=\([0-9]*\).*/msgs\/s=\1 p50=\2 p99=\3/') commits=$tot over10ms=$s10 over25ms=$s25"
}

for _ in $(seq "${ROUNDS:-2}"); do
    for shape in ${SHAPES:-50:100:1 16:4096:1 50:100:256}; do
        for bin in $BINS; do
            run "$bin" "$shape"
        done
    done
done
