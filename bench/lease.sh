#!/bin/bash
# bench/lease.sh: consuming with leases against plain get, in the same
# run, on one memqd.
#
# For each cell (queues x connections) N messages of SIZE bytes are
# produced (not timed), then consumed three ways, each time after a fresh
# produce:
#
#   get     plain get (at-most-once; nothing is written)
#   lease   get q/lease=LEASE_MS, each item acknowledged by a pipelined
#           "delete q/<id> noreply" (a JACK journal record each)
#   ack     get q/close/open (the connection-bound at-least-once mode),
#           for reference
#
# Connections use pipeline depth DEPTH (1 with one connection).  A check
# run first: a --verify produce + lease consume over 16 queues, and the
# node must then hold no leased item.
#
# Environment:
#   QUICK=1     tiny counts: a smoke test in a few seconds
#   N           messages per cell (200000; QUICK=1: 2000)
#   N1          messages per cell with one connection (30000)
#   SIZE        message bytes (100)
#   SYNC        memqd --sync (always)
#   LEASE_MS    lease (30000)
#   DEPTH       pipeline depth with several connections (16)
#   QUEUES      queue counts ("1 16")
#   REPEAT      runs of each (produce, consume) pair (3); the table shows
#               the best, since other load only ever slows a run down
#   CONNS       connection counts ("1 16 50")
#   HOLD        items leased and never acknowledged on each queue before
#               the lease run (0): a consumer that holds many at once, as
#               the gateway's client mode does; they are produced first,
#               so they hold the queue's lowest ids
#   MEMQD, BENCH  the binaries (build/memqd, build/memq-bench)
#
# Prints one table row per cell: msgs/s for get, lease and ack, lease as
# a ratio of get, and memqd's CPU time per message (µs, /proc/<pid>/stat
# in 10 ms ticks, the lowest of the runs) while consuming by get and by
# lease: the node's own cost, which load from elsewhere moves less than
# the rates.  Exit status 1 when a run fails.

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/build/memq-bench}
MEMQD=${MEMQD:-$ROOT/build/memqd}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then N=${N:-2000}; else N=${N:-200000}; fi
if [ "$QUICK" = 1 ]; then N1=${N1:-2000}; else N1=${N1:-30000}; fi
SIZE=${SIZE:-100}
SYNC=${SYNC:-always}
LEASE_MS=${LEASE_MS:-30000}
DEPTH=${DEPTH:-16}
QUEUES=${QUEUES:-1 16}
CONNS=${CONNS:-1 16 50}
REPEAT=${REPEAT:-3}
HOLD=${HOLD:-0}

tmp=$(mktemp -d /tmp/memq-lease-bench.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MEMQD" --listen "127.0.0.1:$port" --data-dir "$tmp/data" --sync "$SYNC" \
    2>"$tmp/memqd.log" &
pid=$!
for _ in $(seq 100); do
    printf 'version\r\n' | timeout 1 nc -q1 127.0.0.1 "$port" 2>/dev/null \
        | grep -q VERSION && break
    sleep 0.05
done

fail() { echo "lease.sh: $*" >&2; exit 1; }

# leases $2 items of queue $1 for ten minutes, acknowledging none
hold() {
    /usr/bin/python3 - "$port" "$1" "$2" <<'PY' || fail "hold $1 $2 failed"
import socket, sys
port, q, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
end, buf = b"END\r\n", b""
while n > 0:
    k = min(n, 1000)    # a batch at a time: the replies never pile up
    n -= k
    s.sendall(("get %s/lease=600000\r\n" % q).encode() * k)
    while k > 0:
        chunk = s.recv(1 << 20)
        if not chunk:
            sys.exit(1)
        buf += chunk
        k -= buf.count(end)
        if end in buf:
            buf = buf[buf.rfind(end) + len(end):]
PY
}

# memqd's CPU time so far, in ticks
ticks() {
    awk '{ print $14 + $15 }' "/proc/$pid/stat"
}

# msgs/s of a RESULT line
rate() {
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^msgs=/) m = substr($i, 6);
           for (i = 1; i <= NF; i++) if ($i ~ /^secs=/) s = substr($i, 6) }
         END { if (s > 0) printf "%.0f", m / s; else print 0 }'
}

run() {
    "$BENCH" -p "$port" -Q "$@" || fail "memq-bench $* failed"
}

# the check: every item once, none left leased
run -c 4 -d 16 -n 20000 -q chk --queues 16 --verify --run-id lv >/dev/null
out=$(run -c 4 -d 16 -n 20000 -q chk --queues 16 --verify --run-id lv \
      -m consume --lease "$LEASE_MS") || exit 1
echo "$out" | grep -q "lost=0 dup=0 corrupt=0" \
    || fail "verify: $out"
leased=$(printf 'stats\r\n' | timeout 2 nc -q1 127.0.0.1 "$port" \
         | awk '/_leased_items / { n += $3 } END { print n + 0 }')
[ "$leased" = 0 ] || fail "$leased items still leased after the check"

printf '| queues | conns | depth | get msgs/s | lease msgs/s | ack msgs/s | lease / get | memqd µs/msg get | lease |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
cell=0
for nq in $QUEUES; do
    for c in $CONNS; do
        d=$DEPTH
        n=$N
        [ "$c" = 1 ] && d=1 && n=$N1
        cell=$((cell + 1))
        declare -A r=()
        r=([get]=0 [lease]=0 [ack]=0)
        declare -A cpu=()
        cpu=([get]=-1 [lease]=-1 [ack]=-1)
        for rep in $(seq "$REPEAT"); do
            # the three ways in turn, so that load from elsewhere hits
            # them alike
            for how in get lease ack; do
                q="b$cell$how$rep"
                if [ "$how" = lease ] && [ "$HOLD" -gt 0 ]; then
                    run -c 4 -d 16 -s "$SIZE" -n $((HOLD * nq)) -q "$q" \
                        --queues "$nq" >/dev/null
                    if [ "$nq" = 1 ]; then
                        hold "$q" "$HOLD"
                    else
                        for i in $(seq 0 $((nq - 1))); do
                            hold "$q.$i" "$HOLD"
                        done
                    fi
                fi
                run -c "$c" -d "$d" -s "$SIZE" -n "$n" -q "$q" \
                    --queues "$nq" >/dev/null
                extra=
                [ "$how" = lease ] && extra="--lease $LEASE_MS"
                [ "$how" = ack ] && extra="--ack"
                t0=$(ticks)
                # shellcheck disable=SC2086
                v=$(run -c "$c" -d "$d" -s "$SIZE" -n "$n" -q "$q" \
                    --queues "$nq" -m consume $extra | rate)
                t=$(( $(ticks) - t0 ))
                [ "$v" -gt "${r[$how]}" ] && r[$how]=$v
                if [ "${cpu[$how]}" -lt 0 ] || [ "$t" -lt "${cpu[$how]}" ]
                then
                    cpu[$how]=$t
                fi
            done
        done
        printf '| %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f |\n' \
            "$nq" "$c" "$d" "${r[get]}" "${r[lease]}" "${r[ack]}" \
            "$(echo "${r[lease]} ${r[get]}" | awk '{ print $1 / $2 }')" \
            "$(echo "${cpu[get]} $n" | awk '{ print $1 * 10000 / $2 }')" \
            "$(echo "${cpu[lease]} $n" | awk '{ print $1 * 10000 / $2 }')"
    done
done
