#!/bin/bash
# bench/pubbudget.sh: where the CPU of one durable publish goes, through
# the gateway and straight to the nodes, and what that leaves for the
# gateway's throughput against the nodes' own on the same cores.
#
# On a machine whose cores run the load generator, nginx and the nodes
# together, throughput is CPU divided by CPU a message.  This measures the
# CPU a message of each part, in one run, for three shapes (ROUNDS times):
#
#   r201     wrk -c PUB_CONNS POSTs of 100 B to a `return 201` location:
#            what nginx and wrk cost for a POST with no module work at all
#   gateway  the same POSTs to memq_pass over three --sync always nodes
#   direct   memq-bench sets of 100 B straight to the same nodes, PUB_CONNS
#            connections in all, one set at a time each
#
# For each: msgs/s and us of CPU a message for the load generator, the
# nginx workers, the nodes and the rest of the machine (kernel threads:
# the file system's journal, interrupts; /proc/stat's busy time less the
# processes', so anything else running counts there: use a quiet
# machine), and how busy the cores were.  Then three ratios of the
# gateway to direct: measured (msgs/s), by CPU a message (what the
# throughputs would be on cores both kept busy), and for a module that
# cost no more than `return 201`: r201's client and worker CPU plus the
# nodes' and the rest's CPU of the gateway run,
#
#   direct CPU a message / (r201 client + r201 workers
#                           + gateway nodes + gateway rest)
#
# Usage (after make memqd module build/memq-bench): bench/pubbudget.sh
# Environment: MODULE (build/ngx_http_memq_module.so), SECS (5), ROUNDS
# (3), PUB_CONNS (50), BASE_PORT (7300).  Needs wrk.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE=$(realpath "${MODULE:-$ROOT/build/ngx_http_memq_module.so}")
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
PUB_CONNS=${PUB_CONNS:-50}
BASE_PORT=${BASE_PORT:-7300}
TICK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/memq-pubbudget.XXXXXX)
PIDS=()

cleanup() {
    [ -f "$TMP/nginx/nginx.pid" ] && kill "$(cat "$TMP/nginx/nginx.pid")" \
        2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

for f in "$ROOT/build/memqd" "$ROOT/build/memq-bench" "$MODULE"; do
    [ -e "$f" ] || { echo "pubbudget: $f missing (make first)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "pubbudget: needs wrk" >&2; exit 1; }

# ticks of CPU used so far by the given processes (threads included)
ticks() {
    local p s=0 t
    for p in "$@"; do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")
        s=$((s + t))
    done
    echo "$s"
}

# busy ticks of the whole machine (iowait counts as idle)
busy() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

wait_port() {
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "pubbudget: nothing listens on $1" >&2
    exit 1
}

NODE_PORTS=()
for i in 1 2 3; do
    port=$((BASE_PORT + i))
    "$ROOT/build/memqd" --listen "127.0.0.1:$port" --data-dir "$TMP/d$i" \
        --sync always >"$TMP/node$i.log" 2>&1 &
    PIDS+=($!)
    NODE_PORTS+=("$port")
done
for port in "${NODE_PORTS[@]}"; do wait_port "$port"; done
# past each node's first journal file (1 MiB), whose switch to a full-size
# one stalls fsyncs: the first shape measured would pay for it
for port in "${NODE_PORTS[@]}"; do
    "$ROOT/build/memq-bench" -p "$port" -c 8 -d 1 -s 1000 -n 16000 \
        -q warm -Q --timeout 60 >/dev/null
done

mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<EOF
load_module $MODULE;
worker_processes 2;
error_log $TMP/nginx/logs/error.log warn;
pid $TMP/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    keepalive_requests 100000000;
    memq_cluster a {
        node 127.0.0.1:${NODE_PORTS[0]};
        node 127.0.0.1:${NODE_PORTS[1]};
        node 127.0.0.1:${NODE_PORTS[2]};
        keepalive 32; read_timeout 60s; max_fails 0;
    }
    server {
        listen 127.0.0.1:$BASE_PORT backlog=4096;
        location /a { memq_pass a; memq_key \$arg_topic; }
        location = /r201 { return 201 '{"queued":1,"node":"-"}'; }
    }
}
EOF
nginx -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log"
wait_port "$BASE_PORT"
for i in $(seq 50); do [ -s "$TMP/nginx/nginx.pid" ] && break; sleep 0.05; done
WORKERS=$(pgrep -P "$(cat "$TMP/nginx/nginx.pid")" | tr '\n' ' ')

cat >"$TMP/pub.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# one shape: runs "$@" (the load generator, in the foreground, printing
# its message count as the last line), prints
# "msgs_per_sec gen_us workers_us nodes_us rest_us busy_percent"
measure() {
    local w0 n0 b0 w1 n1 b1 out msgs
    w0=$(ticks $WORKERS); n0=$(ticks "${PIDS[@]}"); b0=$(busy)
    out=$("$@")
    w1=$(ticks $WORKERS); n1=$(ticks "${PIDS[@]}"); b1=$(busy)
    msgs=${out##* }
    gen=${out%% *}
    awk -v m="$msgs" -v s="$SECS" -v t="$TICK" -v g="$gen" -v c="$(nproc)" \
        -v w=$((w1 - w0)) -v n=$((n1 - n0)) -v b=$((b1 - b0)) 'BEGIN {
        u = 1e6 / t / m
        printf "%d %.1f %.1f %.1f %.1f %d\n", m / s, g * u, w * u, n * u,
               (b - g - w - n) * u, 100 * b / (s * t * c) }'
}

# prints "<generator ticks> <messages>"
run_wrk() {
    local out
    out=$( { /usr/bin/time -f "TICKS %U %S" wrk -t 2 -c "$PUB_CONNS" \
        -d "$SECS" -s "$TMP/pub.lua" "http://127.0.0.1:$BASE_PORT$1"; } 2>&1)
    awk -v t="$TICK" '/requests in/ { n = $1 }
        /^TICKS/ { g = ($2 + $3) * t }
        END { printf "%d %d\n", g, n }' <<<"$out"
}

run_direct() {
    local p per=$(( (PUB_CONNS + 2) / 3 )) pids=() out
    for p in "${NODE_PORTS[@]}"; do
        /usr/bin/time -f "TICKS %U %S" -o "$TMP/time.$p" \
            "$ROOT/build/memq-bench" -p "$p" -c "$per" -d 1 -s 100 \
            -n 100000000 -t "$SECS" -q direct -Q --timeout 60 \
            >"$TMP/direct.$p" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for p in "${NODE_PORTS[@]}"; do
        cat "$TMP/time.$p" "$TMP/direct.$p"
    done | awk -v t="$TICK" -v s="$SECS" '
        /^TICKS/ { g += ($2 + $3) * t }
        /^RESULT/ { for (i = 1; i <= NF; i++)
                        if ($i ~ /^msgs_per_sec=/) { sub(/.*=/, "", $i); n += $i * s } }
        END { printf "%d %d\n", g, n }'
}

printf '%-8s %5s %9s %9s %9s %9s %9s %9s %5s\n' shape round msgs/s \
    client_us worker_us node_us rest_us total_us busy%
for r in $(seq "$ROUNDS"); do
    read -r r201 rg rw rn rr rb < <(measure run_wrk /r201)
    read -r gw gg gwk gn gr gb < <(measure run_wrk "/a?topic=budget")
    read -r dm dg dw dn dr db < <(measure run_direct)
    for row in "r201 $r201 $rg $rw $rn $rr $rb" \
               "gateway $gw $gg $gwk $gn $gr $gb" \
               "direct $dm $dg $dw $dn $dr $db"; do
        set -- $row
        printf '%-8s %5d %9d %9.1f %9.1f %9.1f %9.1f %9.1f %5d\n' "$1" \
            "$r" "$2" "$3" "$4" "$5" "$6" "$(echo "$3 + $4 + $5 + $6" | bc)" \
            "$7"
    done
    awk -v r="$r" -v gw="$gw" -v dm="$dm" \
        -v dt="$(echo "$dg + $dw + $dn + $dr" | bc)" \
        -v gt="$(echo "$gg + $gwk + $gn + $gr" | bc)" \
        -v floor="$(echo "$rg + $rw + $gn + $gr" | bc)" 'BEGIN {
        printf "round %d: gateway/direct %.2f measured, %.2f by CPU a " \
               "message, %.2f for a module that cost what return 201 " \
               "does\n", r, gw / dm, dt / gt, dt / floor }'
done
