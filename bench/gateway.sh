#!/bin/bash
# bench/gateway.sh: the HTTP gateway (ngx_http_memq_module) under load.
#
# Starts, on free loopback ports in a fresh temporary directory, 8 memqd
# nodes with --sync none, 3 more with --sync always, and Debian's nginx
# (2 workers, build/ngx_http_memq_module.so) with four clusters:
#
#   /n1  node 1            /n3  nodes 1-3        /n8  nodes 1-8
#   /a3  the 3 --sync always nodes
#
# and measures:
#
#   drain    one backlog of DRAIN_N x 100 B messages spread evenly over 1, 3
#            and 8 nodes, drained by 1, 10 and 100 concurrent GET streams
#            (drain mode, wait=0, ndjson) of the same queue; then the same
#            backlog consumed straight from the nodes by memq-bench
#            (-m consume, K connections x depth 16 against every node at
#            once, as many connections per node as the gateway opens for K
#            streams); ratio = gateway / direct
#   client   consume with client acknowledgement (ack=client, leases) against
#            write-mode consume, same run, alternating: DRAIN_N x 100 B on
#            the 3 nodes of /n3, CLIENT_CONSUMERS streams; in client mode
#            every stream acknowledges its ids with POST op=ack lists of
#            ACK_BATCH ids (ACK_INFLIGHT POSTs in flight per stream) and the
#            time runs to the last acknowledgement; ratio = client / write.
#            The client is memq-bench --http-drain (C) for both modes;
#            CLIENT_TOOL=python runs bench/gwload.py drain instead
#   publish  wrk, PUB_CONNS keep-alive connections for PUB_SECS: single
#            100 B messages a POST, and ndjson batches of 100 a POST, on /n3
#            and on /a3 (--sync always); and the two references the single
#            POSTs are held to: the same POST answered by `return 201` in
#            the same nginx (/r201: what nginx costs without memq), and
#            memq-bench producing 100 B straight to the three --sync always
#            nodes over PUB_CONNS connections in all, one set at a time
#            (what the nodes give without the gateway).  With Debian's
#            libnginx-mod-http-lua installed (LUA_MODULE), the same single
#            POSTs also go to /luan3 and /luaa3, the same nodes behind
#            bench/seedgw.lua: publish as the OpenResty gateway memq
#            replaces does it (a cosocket `set` a POST); the ratios
#            gateway / Lua come with the others
#   wakeup   a consumer long-polls (wait=30&max=1) on /n3; a 100 B message
#            is published through the gateway, or with `set` straight to a
#            node; time from the publish to the line at the consumer, ROUNDS
#   rss      sum of the nginx workers' VmRSS: idle, with LONGPOLLS open long
#            polls on /n3, and while a slow client (1 KiB every 10 ms for
#            SLOW_SECS) drains a backlog of SLOW_N messages on /n3
#
# Prints tables; the raw lines (DRAIN, DIRECT, PUBLISH, WAKEUP, LONGPOLL,
# SLOW) go to RESULTS (build/gateway-results.txt).
#
# Environment:
#   QUICK=1      tiny counts: a smoke run in under 30 s
#   REPEAT       runs of each drain cell (3); the table shows the best
#   DRAIN_N      backlog of a drain cell (300000)
#   NODES        node counts of the drain cells ("1 3 8")
#   CONSUMERS    consumer counts of the drain cells ("1 10 100")
#   PUB_SECS     seconds of each wrk run (6); PUB_CONNS (50)
#   PUB_ROUNDS   rounds of the single-POST cells, each next to its
#                reference (1); the ratios' median is printed
#   ROUNDS       wake-up rounds (200)
#   LONGPOLLS    open long polls (1000)
#   SLOW_N       slow-client backlog (500000); SLOW_SECS (20)
#   CLIENT_CONSUMERS  stream counts of the client cells ("1 10"); each
#                row also prints the median of the runs' own client/write
#                ratios and of their write/client CPU a message
#   ACK_BATCH    ids per op=ack POST (1000); ACK_INFLIGHT POSTs in flight
#                per stream (1: a POST, its answer, the next, as a simple
#                consumer acknowledges; 4 costs more CPU a message here,
#                BENCHMARKS.md)
#   CLIENT_TOOL  the client of the client cells: c (memq-bench
#                --http-drain, the default) or python (bench/gwload.py)
#   CLIENT_FORMAT  format of both modes' streams in the client cells with
#                the C client: ndjson (the default) or raw
#   PARTS        subset of "drain client publish wakeup rss" (all)
#   BATCH        memq_batch of the locations (64, the module's default)
#   RESULTS, MEMQD, BENCH, MODULE, NGINX, LUA_MODULE (Debian's
#                ngx_http_lua_module.so; "" or missing: no Lua cells)
#
# Needs: build/memqd, build/memq-bench (make memqd bench), the module (make
# module), Debian's nginx, python3, wrk (Debian package `wrk`; without it
# the publish rows are skipped).  Exit status 1 if a run failed or lost
# messages.  Whatever it started is stopped on any exit (trap).

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/build/memq-bench}
MEMQD=${MEMQD:-$ROOT/build/memqd}
MODULE=${MODULE:-$ROOT/build/ngx_http_memq_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
LUA_MODULE=${LUA_MODULE-/usr/lib/nginx/modules/ngx_http_lua_module.so}
[ -n "$LUA_MODULE" ] && [ -f "$LUA_MODULE" ] || LUA_MODULE=""
RESULTS=${RESULTS:-$ROOT/build/gateway-results.txt}
LOAD="python3 $ROOT/bench/gwload.py"
QUICK=${QUICK:-0}
NODES=${NODES:-1 3 8}
CONSUMERS=${CONSUMERS:-1 10 100}
BATCH=${BATCH:-64}
PUB_CONNS=${PUB_CONNS:-50}
PUB_ROUNDS=${PUB_ROUNDS:-1}
CLIENT_CONSUMERS=${CLIENT_CONSUMERS:-1 10}
ACK_BATCH=${ACK_BATCH:-1000}
ACK_INFLIGHT=${ACK_INFLIGHT:-1}
CLIENT_TOOL=${CLIENT_TOOL:-c}
CLIENT_FORMAT=${CLIENT_FORMAT:-ndjson}
PARTS=${PARTS:-drain client publish wakeup rss}
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }

if [ "$QUICK" = 1 ]; then
    REPEAT=${REPEAT:-1}
    DRAIN_N=${DRAIN_N:-3000}
    PUB_SECS=${PUB_SECS:-1}
    ROUNDS=${ROUNDS:-10}
    LONGPOLLS=${LONGPOLLS:-50}
    SLOW_N=${SLOW_N:-20000}
    SLOW_SECS=${SLOW_SECS:-2}
else
    REPEAT=${REPEAT:-3}
    DRAIN_N=${DRAIN_N:-300000}
    PUB_SECS=${PUB_SECS:-6}
    ROUNDS=${ROUNDS:-200}
    LONGPOLLS=${LONGPOLLS:-1000}
    SLOW_N=${SLOW_N:-500000}
    SLOW_SECS=${SLOW_SECS:-20}
fi

TMP=$(mktemp -d /tmp/memq-gwbench.XXXXXX)
PIDS=""
NGINX_PID=""
STATUS=0

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    local pid
    if [ -n "$NGINX_PID" ]; then
        kill -QUIT "$NGINX_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$NGINX_PID" 2>/dev/null
        wait "$NGINX_PID" 2>/dev/null
    fi
    for pid in $PIDS; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in $PIDS; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "gateway: $*" >&2
    STATUS=1
}

for f in "$MEMQD" "$BENCH"; do
    [ -x "$f" ] || { echo "gateway: $f missing (make memqd bench)" >&2
                     exit 1; }
done
[ -f "$MODULE" ] || { echo "gateway: $MODULE missing (make module)" >&2
                      exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); \
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {   # pid port
    for _ in $(seq 1 100); do
        kill -0 "$1" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

now() { date +%s.%N; }

# -- nodes: N1..N8 --sync none, A1..A3 --sync always

start_node() {  # name sync: sets PORT
    PORT=$(free_port)
    mkdir -p "$TMP/$1"
    "$MEMQD" --listen "127.0.0.1:$PORT" --data-dir "$TMP/$1/data" \
        --sync "$2" >"$TMP/$1/log" 2>&1 &
    PIDS="$PIDS $!"
}

NPORT=()
APORT=()
NPID=()
for i in 1 2 3 4 5 6 7 8; do
    start_node "n$i" none
    NPORT[i]=$PORT
    NPID[i]=$!
done
for i in 1 2 3; do
    start_node "a$i" always
    APORT[i]=$PORT
done
for p in "${NPORT[@]}" "${APORT[@]}"; do
    ok=0
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [ $ok = 1 ] || { echo "gateway: memqd on $p did not start" >&2; exit 1; }
done

# -- nginx

GW=$(free_port)
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/temp"
cluster() {     # name ports...
    local name=$1 p
    shift
    echo "    memq_cluster $name {"
    for p in "$@"; do
        echo "        node 127.0.0.1:$p;"
    done
    echo "        keepalive 32; read_timeout 60s; max_fails 0;"
    [ -n "${PUB_PIPES:-}" ] && echo "        publish_pipes $PUB_PIPES;"
    echo "    }"
}
location() {    # path cluster
    cat <<EOF
        location $1 {
            memq_pass $2;
            memq_key \$arg_topic;
            memq_wait_max 30s;
            memq_batch $BATCH;
        }
EOF
}
user=""
[ "$(id -u)" -eq 0 ] && user="user root;"
# the Lua reference (see the header): its module, and a location a cluster
lua_load() {
    [ -n "$LUA_MODULE" ] || return 0
    echo "load_module $(dirname "$LUA_MODULE")/ndk_http_module.so;"
    echo "load_module $LUA_MODULE;"
}
lua_location() {    # path ports...
    [ -n "$LUA_MODULE" ] || return 0
    local path=$1 p nodes=""
    shift
    for p in "$@"; do nodes="$nodes 127.0.0.1:$p"; done
    cat <<EOF
        location $path {
            set \$seedgw_nodes "${nodes# }";
            content_by_lua_file $ROOT/bench/seedgw.lua;
        }
EOF
}
cat >"$TMP/nginx/nginx.conf" <<EOF
$(lua_load)
load_module $MODULE;
$user
worker_processes 2;
worker_rlimit_nofile 20000;
error_log $TMP/nginx/logs/error.log notice;
pid $TMP/nginx/nginx.pid;
events { worker_connections 10000; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/temp/body;
    proxy_temp_path $TMP/nginx/temp/proxy;
    fastcgi_temp_path $TMP/nginx/temp/fastcgi;
    uwsgi_temp_path $TMP/nginx/temp/uwsgi;
    scgi_temp_path $TMP/nginx/temp/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
    keepalive_requests 1000000;
$(cluster n1 "${NPORT[1]}")
$(cluster n3 "${NPORT[1]}" "${NPORT[2]}" "${NPORT[3]}")
$(cluster n8 "${NPORT[@]}")
$(cluster a3 "${APORT[@]}")
    server {
        listen 127.0.0.1:$GW backlog=4096;
$(location /n1 n1)
$(location /n3 n3)
$(location /n8 n8)
$(location /a3 a3)
$(lua_location /luan3 "${NPORT[1]}" "${NPORT[2]}" "${NPORT[3]}")
$(lua_location /luaa3 "${APORT[@]}")
        location = /status { memq_status; }
        location = /r201 { return 201 '{"queued":1,"node":"-"}'; }
    }
}
EOF
"$NGINX" -t -q -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" ||
    { echo "gateway: nginx -t failed" >&2; exit 1; }
"$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
    >"$TMP/nginx/logs/stderr.log" 2>&1 &
NGINX_PID=$!
wait_port "$NGINX_PID" "$GW" ||
    { echo "gateway: nginx did not start:" >&2
      tail -5 "$TMP/nginx/logs/error.log" >&2; exit 1; }
sleep 0.5

: >"$RESULTS"
record() { echo "$*" >>"$RESULTS"; }

echo "gateway: 8+3 memqd nodes, nginx $("$NGINX" -v 2>&1 | sed 's|.*/||')" \
     "on 127.0.0.1:$GW (2 workers), $(nproc) cores," \
     "load $(cut -d' ' -f1-3 /proc/loadavg)"
record "# $(date -u '+%F %T') UTC commit $(git -C "$ROOT" rev-parse --short \
HEAD 2>/dev/null) QUICK=$QUICK REPEAT=$REPEAT DRAIN_N=$DRAIN_N BATCH=$BATCH"

IDLE_RSS=$($LOAD rss --master "$NGINX_PID" | sed 's/.*kb=//')

# -- drain cells

# fill TOPIC COUNT ports...: COUNT messages spread evenly over the ports
fill() {
    local topic=$1 count=$2 n pids=() rc=0 p per
    shift 2
    n=$#
    for p in "$@"; do
        per=$((count / n))
        "$BENCH" -p "$p" -c 50 -d 16 -s 100 -n "$per" -q "$topic" -Q \
            --timeout 60 >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    return $rc
}

# direct TOPIC PER CONNS ports...: memq-bench consume against every port at
# once; prints "msgs secs"
direct() {
    local topic=$1 per=$2 conns=$3 p pids=() t0 t1 out msgs=0 m rc=0
    shift 3
    t0=$(now)
    for p in "$@"; do
        "$BENCH" -p "$p" -c "$conns" -d 16 -s 100 -n "$per" -q "$topic" \
            -m consume -Q --timeout 60 >"$TMP/direct.$p" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    t1=$(now)
    for p in "$@"; do
        m=$(sed -n 's/^RESULT.* msgs=\([0-9]*\) .*/\1/p' "$TMP/direct.$p")
        msgs=$((msgs + ${m:-0}))
    done
    echo "$msgs $(echo "$t1 - $t0" | bc -l) $rc"
}

declare -A GWBEST DIRBEST
part drain || NODES=""
for n in $NODES; do
    ports=("${NPORT[@]:0:$n}")
    per=$((DRAIN_N / n))
    total=$((per * n))
    for k in $CONSUMERS; do
        for r in $(seq 1 "$REPEAT"); do
            # through the gateway
            topic="g${n}_${k}_$r"
            fill "$topic" "$total" "${ports[@]}" ||
                fail "fill $topic failed"
            line=$($LOAD drain --port "$GW" --path "/n$n" --topic "$topic" \
                   --consumers "$k" --master "$NGINX_PID") ||
                fail "drain $topic: $line"
            record "$line nodes=$n backlog=$total run=$r"
            msgs=$(sed 's/.* msgs=\([0-9]*\) .*/\1/' <<<"$line")
            rate=$(sed 's/.*msgs_per_sec=\([0-9]*\) .*/\1/' <<<"$line")
            [ "$msgs" = "$total" ] ||
                fail "drain $topic: $msgs of $total messages"
            [ "${rate:-0}" -gt "${GWBEST[$n.$k]:-0}" ] &&
                GWBEST[$n.$k]=$rate
            # straight from the nodes
            topic="d${n}_${k}_$r"
            fill "$topic" "$total" "${ports[@]}" ||
                fail "fill $topic failed"
            read -r msgs secs rc < <(direct "$topic" "$per" "$k" \
                                     "${ports[@]}")
            rate=$(printf '%.0f' "$(echo "$msgs / $secs" | bc -l)")
            record "DIRECT nodes=$n conns_per_node=$k depth=16 msgs=$msgs" \
                   "secs=$(printf '%.3f' "$secs") msgs_per_sec=$rate" \
                   "backlog=$total run=$r"
            [ "$rc" = 0 ] && [ "$msgs" = "$total" ] ||
                fail "direct $topic: $msgs of $total messages, rc $rc"
            [ "$rate" -gt "${DIRBEST[$n.$k]:-0}" ] && DIRBEST[$n.$k]=$rate
        done
    done
done

# -- client acknowledgement against write mode, same backlog, alternating

# CPU ticks (user + system) of the processes given
cpu_ticks() {
    local p t=0 s
    for p in "$@"; do
        s=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
        # fields after "(comm)": state is 1, utime 12, stime 13
        t=$((t + $(awk '{print $12 + $13}' <<<"$s")))
    done
    echo "$t"
}

# the median of the numbers given (empty when none)
median() {
    tr ' ' '\n' <<<"$*" | sed '/^$/d' | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'
}

declare -A CLBEST CLRATE CLCPU CLRUNS CLCPURUNS
CLROWS=""
part client || CLIENT_CONSUMERS=""
for k in $CLIENT_CONSUMERS; do
    for r in $(seq 1 "$REPEAT"); do
        for mode in write client; do
            topic="c${mode}_${k}_$r"
            per=$((DRAIN_N / 3))
            fill "$topic" "$((per * 3))" "${NPORT[1]}" "${NPORT[2]}" \
                "${NPORT[3]}" || fail "fill $topic failed"
            opt=""
            [ "$mode" = client ] && opt="--ack-client --ack-batch \
$ACK_BATCH --ack-inflight $ACK_INFLIGHT"
            m0=$(cpu_ticks "${NPID[1]}" "${NPID[2]}" "${NPID[3]}")
            if [ "$CLIENT_TOOL" = python ]; then
                # shellcheck disable=SC2086  # opt is several words or none
                line=$($LOAD drain --port "$GW" --path /n3 --topic "$topic" \
                       --consumers "$k" --master "$NGINX_PID" $opt) ||
                    fail "client $topic: $line"
                line="$line tool=python"
            else
                # shellcheck disable=SC2046  # the worker pids, one a word
                w0=$(cpu_ticks $(pgrep -P "$NGINX_PID"))
                # shellcheck disable=SC2086  # opt is several words or none
                out=$("$BENCH" --http-drain -p "$GW" --path /n3 -q "$topic" \
                      -c "$k" -n "$((per * 3))" -Q --timeout 60 \
                      --format "$CLIENT_FORMAT" $opt 2>&1) ||
                    fail "client $topic: $out"
                # shellcheck disable=SC2046
                w1=$(cpu_ticks $(pgrep -P "$NGINX_PID"))
                res=$(grep '^RESULT proto=http ' <<<"$out")
                line="DRAIN consumers=$k ${res#RESULT * * conns=* }"
                line="$line workers_cpu_us_per_msg=$(echo "scale=2; ($w1 - \
$w0) * 1000000 / $(getconf CLK_TCK) / ($per * 3)" | bc -l) tool=c"
                line="$line format=$CLIENT_FORMAT"
            fi
            m1=$(cpu_ticks "${NPID[1]}" "${NPID[2]}" "${NPID[3]}")
            mcpu=$(echo "scale=2; ($m1 - $m0) * 1000000 / \
$(getconf CLK_TCK) / ($per * 3)" | bc -l)
            record "$line mode=$mode nodes=3 backlog=$((per * 3)) run=$r" \
                   "memqd_cpu_us_per_msg=$mcpu"
            msgs=$(sed 's/.* msgs=\([0-9]*\) .*/\1/' <<<"$line")
            rate=$(sed 's/.*msgs_per_sec=\([0-9]*\) .*/\1/' <<<"$line")
            [ "$msgs" = "$((per * 3))" ] ||
                fail "client $topic: $msgs of $((per * 3)) messages"
            [ "${rate:-0}" -gt "${CLBEST[$mode.$k]:-0}" ] &&
                CLBEST[$mode.$k]=$rate
            CLRATE[$mode]=$rate
            # CPU a message of the whole machine's part in it: workers,
            # nodes and client (the C client's line has all three)
            CLCPU[$mode]=$(sed -n 's/.*client_cpu_us_per_msg=\([0-9.]*\)'\
'.*workers_cpu_us_per_msg=\([0-9.]*\).*/\1 + \2/p' <<<"$line")
            [ -n "${CLCPU[$mode]}" ] && CLCPU[$mode]="${CLCPU[$mode]} + $mcpu"
        done
        CLRUNS[$k]="${CLRUNS[$k]:-} $(echo "scale=2; ${CLRATE[client]:-0} / \
(${CLRATE[write]:-0} + (${CLRATE[write]:-0} == 0))" | bc -l)"
        [ -n "${CLCPU[write]}" ] && [ -n "${CLCPU[client]}" ] &&
            CLCPURUNS[$k]="${CLCPURUNS[$k]:-} $(echo "scale=2; \
(${CLCPU[write]}) / (${CLCPU[client]})" | bc -l)"
    done
    w=${CLBEST[write.$k]:-0}
    c=${CLBEST[client.$k]:-0}
    ratio=$(echo "scale=2; $c / ($w + ($w == 0))" | bc -l)
    runs=$(median ${CLRUNS[$k]})
    cpur=$(median ${CLCPURUNS[$k]:-})
    record "CLIENTRATIO consumers=$k write=$w client=$c ratio=$ratio" \
           "median_run_ratio=$runs runs=${CLRUNS[$k]# }" \
           "median_cpu_ratio=$cpur cpu_runs=${CLCPURUNS[$k]# }"
    CLROWS="$CLROWS$(printf '%-10s %10s %10s %7s %11s %11s' "$k" "$w" "$c" \
        "$ratio" "$runs" "$cpur")
"
done

# -- publish

pub_run() {     # name path body-file content-type
    local name=$1 path=$2 body=$3 ctype=$4 out rps non2xx lat msgs per=1
    [ "$ctype" = ndjson ] && per=$(wc -l <"$body")
    cat >"$TMP/pub.lua" <<EOF
local f = io.open("$body", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "$([ "$ctype" = ndjson ] &&
    echo application/x-ndjson || echo application/octet-stream)"
EOF
    out=$(wrk -t 2 -c "$PUB_CONNS" -d "${PUB_SECS}s" --latency \
          -s "$TMP/pub.lua" "http://127.0.0.1:$GW$path?topic=pub_$name" 2>&1)
    rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' <<<"$out")
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' \
             <<<"$out")
    lat=$(awk '/Latency Distribution/ {d=1} d && /50%/ {p50=$2}
               d && /99%/ {p99=$2} END {print p50, p99}' <<<"$out")
    msgs=$(printf '%.0f' "$(echo "${rps:-0} * $per" | bc -l)")
    record "PUBLISH name=$name path=$path conns=$PUB_CONNS msgs_per_post=$per" \
           "secs=$PUB_SECS posts_per_sec=${rps:-0} msgs_per_sec=$msgs" \
           "p50=${lat% *} p99=${lat#* } non2xx=${non2xx:-0}"
    [ -n "$rps" ] && [ -z "$non2xx" ] || {
        fail "publish $name: non-2xx ${non2xx:-?}"; echo "$out" >&2; }
    PUBROWS="$PUBROWS$(printf '%-28s %10s %12s %10s %10s' "$name" \
        "${rps:-0}" "$msgs" "${lat% *}" "${lat#* }")
"
    PUBMSGS[$name]=$msgs
}

declare -A PUBMSGS PUBRATIOS

# memq-bench straight to the --sync always nodes: PUB_CONNS connections in
# all, one set at a time
pub_direct() {
    local dpids=() p m dmsgs=0 dp50=0 dp99=0
    for p in "${APORT[@]}"; do
        "$BENCH" -p "$p" -c $(( (PUB_CONNS + 2) / 3 )) -d 1 -s 100 \
            -n 100000000 -t "$PUB_SECS" -q pub_direct -Q --timeout 60 \
            >"$TMP/pubdirect.$p" 2>&1 &
        dpids+=($!)
    done
    for p in "${dpids[@]}"; do
        wait "$p" || fail "publish direct: memq-bench failed"
    done
    for p in "${APORT[@]}"; do
        m=$(sed -n 's/^RESULT.* msgs_per_sec=\([0-9]*\) .*/\1/p' \
            "$TMP/pubdirect.$p")
        dmsgs=$((dmsgs + ${m:-0}))
        # latency: the slowest of the three nodes
        m=$(sed -n 's/^RESULT.* p50_us=\([0-9]*\).*/\1/p' "$TMP/pubdirect.$p")
        [ "${m:-0}" -gt "$dp50" ] && dp50=$m
        m=$(sed -n 's/^RESULT.* p99_us=\([0-9]*\).*/\1/p' "$TMP/pubdirect.$p")
        [ "${m:-0}" -gt "$dp99" ] && dp99=$m
    done
    record "PUBLISH name=direct_always conns=$PUB_CONNS msgs_per_sec=$dmsgs" \
           "p50_us=$dp50 p99_us=$dp99"
    PUBMSGS[direct_always]=$dmsgs
    PUBROWS="$PUBROWS$(printf '%-28s %10s %12s %10s %10s' direct_always \
        - "$dmsgs" "${dp50}us" "${dp99}us")
"
}

# the ratio of two cells of this round, kept for the summary
pub_ratio() {       # what of-what round
    local a=${PUBMSGS[$1]:-0} b=${PUBMSGS[$2]:-0} r
    [ "$b" -gt 0 ] || return 0
    r=$(echo "scale=2; $a / $b" | bc -l)
    record "PUBRATIO $1/$2=$r round=$3"
    PUBRATIOS[$1/$2]="${PUBRATIOS[$1/$2]:-} $r"
}

PUBROWS=""
head -c 100 /dev/zero | tr '\0' 'x' >"$TMP/one.body"
for _ in $(seq 1 100); do
    printf '{"n":"%090d"}\n' 0
done >"$TMP/batch.body"
if ! part publish; then
    :
elif command -v wrk >/dev/null; then
    # warm-up: a node's first journal file is small (1 MiB) and the next
    # one is written full of zeros while the sets go on, which stalls
    # fsyncs; the first cell on the --sync always nodes would pay for it
    wpids=()
    for p in "${APORT[@]}"; do
        "$BENCH" -p "$p" -c 8 -d 1 -s 1000 -n 16000 -q pub_warm -Q \
            --timeout 60 >/dev/null 2>&1 &
        wpids+=($!)
    done
    for p in "${wpids[@]}"; do
        wait "$p" || fail "publish warm-up: memq-bench failed"
    done
    for round in $(seq 1 "$PUB_ROUNDS"); do
        # each single-POST cell right before its reference, so that the
        # machine drifts little between the two; a ratio a round
        pub_run "single_none" /n3 "$TMP/one.body" octet
        pub_run "single_return201" /r201 "$TMP/one.body" octet
        pub_ratio single_none single_return201 "$round"
        pub_run "single_always" /a3 "$TMP/one.body" octet
        pub_direct
        pub_ratio single_always direct_always "$round"
        [ -n "$LUA_MODULE" ] || continue
        pub_run "lua_single_none" /luan3 "$TMP/one.body" octet
        pub_ratio single_none lua_single_none "$round"
        pub_run "lua_single_always" /luaa3 "$TMP/one.body" octet
        pub_ratio single_always lua_single_always "$round"
    done
    pub_run "batch100_none" /n3 "$TMP/batch.body" ndjson
    pub_run "batch100_always" /a3 "$TMP/batch.body" ndjson
else
    echo "gateway: wrk not installed (apt-get install wrk): no publish rows"
fi

# -- long-poll wake-up

WAKE=""
part wakeup || WAKEVIA=""
for via in ${WAKEVIA-gateway node}; do
    pp=$GW
    [ "$via" = node ] && pp=${NPORT[2]}
    line=$($LOAD wakeup --port "$GW" --path /n3 --topic "wake_$via" \
           --rounds "$ROUNDS" --via $via --pub-port "$pp" \
           --dump "$RESULTS.wakeup-$via") ||
        fail "wakeup $via: $line"
    record "$line"
    WAKE="$WAKE$line
"
done

# -- memory

LP=""
SL=""
if part rss; then
    line=$($LOAD longpoll --port "$GW" --path /n3 --topic lp \
           --count "$LONGPOLLS" --master "$NGINX_PID") || fail "longpoll: $line"
    record "$line"
    LP=$line

    fill slow "$SLOW_N" "${NPORT[1]}" "${NPORT[2]}" "${NPORT[3]}" ||
        fail "fill slow failed"
    line=$($LOAD slow --port "$GW" --path /n3 --topic slow --secs "$SLOW_SECS" \
           --master "$NGINX_PID") || fail "slow: $line"
    record "$line"
    SL=$line
fi
record "RSS idle_at_start_kb=$IDLE_RSS idle_at_end_kb=$($LOAD rss \
--master "$NGINX_PID" | sed 's/.*kb=//')"

# -- report

[ -n "$NODES" ] && echo &&
echo "== drain: $DRAIN_N x 100 B, one queue spread over N nodes;" \
     "msgs/s, best of $REPEAT"
[ -n "$NODES" ] &&
    printf '%-6s %-10s %10s %10s %7s\n' nodes consumers gateway direct ratio
for n in $NODES; do
    for k in $CONSUMERS; do
        g=${GWBEST[$n.$k]:-0}
        d=${DIRBEST[$n.$k]:-0}
        ratio=$(echo "scale=2; $g / ($d + (${d} == 0))" | bc -l)
        printf '%-6s %-10s %10s %10s %7s\n' "$n" "$k" "$g" "$d" "$ratio"
        record "RATIO nodes=$n consumers=$k gateway=$g direct=$d" \
               "ratio=$ratio"
    done
done

if [ -n "$CLROWS" ]; then
    echo
    echo "== client acknowledgement: $DRAIN_N x 100 B on 3 nodes; msgs/s," \
         "best of $REPEAT; client mode acks with op=ack lists of" \
         "$ACK_BATCH, $ACK_INFLIGHT in flight per stream; client" \
         "$CLIENT_TOOL$([ "$CLIENT_TOOL" = c ] && echo ", $CLIENT_FORMAT")"
    printf '%-10s %10s %10s %7s %11s %11s\n' consumers write client ratio \
        run-median cpu-median
    printf '%s' "$CLROWS"
    echo "(ratio: best client / best write; run-median: the median of each" \
         "run's client / write; cpu-median: the median of each run's write /" \
         "client CPU a message, workers + nodes + client)"
fi

if [ -n "$PUBROWS" ]; then
    echo
    echo "== publish: wrk, $PUB_CONNS keep-alive connections, ${PUB_SECS}s," \
         "3 nodes"
    printf '%-28s %10s %12s %10s %10s\n' run posts/s msgs/s p50 p99
    printf '%s' "$PUBROWS"
    for k in single_none/single_return201 single_always/direct_always \
             single_none/lua_single_none single_always/lua_single_always; do
        [ -n "${PUBRATIOS[$k]:-}" ] || continue
        med=$(median ${PUBRATIOS[$k]})
        printf '%-36s median %s (rounds:%s)\n' "${k/\// / }" "$med" \
            "${PUBRATIOS[$k]}"
        record "PUBMEDIAN $k=$med rounds=$PUB_ROUNDS"
    done
fi

[ -n "$WAKE" ] && echo && echo "== long-poll wake-up: $ROUNDS rounds, 3 nodes"
awk 'NF {for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "publish via %-8s p50 %6d us  p90 %6d us  p99 %6d us  " \
             "max %6d us  errors %d\n", v["via"], v["p50_us"], v["p90_us"],
             v["p99_us"], v["max_us"], v["errors"]}' <<<"$WAKE"

field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<" $2"; }
if [ -n "$LP" ]; then
echo
echo "== nginx workers' VmRSS (sum of 2 workers)"
printf 'idle, at start:                       %6d kB\n' "$IDLE_RSS"
printf '%d open long polls (3 nodes):        %6d kB  (before %d, after' \
       "$(field open "$LP")" "$(field held_kb "$LP")" "$(field idle_kb "$LP")"
printf ' close %d)\n' "$(field after_close_kb "$LP")"
printf 'slow client, %d backlog, %ss:    start %d, peak %d, end %d kB' \
       "$SLOW_N" "$SLOW_SECS" "$(field start_kb "$SL")" \
       "$(field peak_kb "$SL")" "$(field end_kb "$SL")"
printf ' (read %d msgs)\n' "$(field msgs_read "$SL")"
fi

record "ERRORLOG $(grep -c '\[error\]' "$TMP/nginx/logs/error.log")" \
       "error, $(grep -c '\[warn\]' "$TMP/nginx/logs/error.log") warn lines"
if grep -E '\[(alert|emerg|crit)\]|exited on signal' \
        "$TMP/nginx/logs/error.log" >&2; then
    fail "nginx error log has alerts or crashes (above)"
fi

record "# end $(date -u '+%F %T') UTC load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
ELOG=$TMP/nginx/logs/error.log
echo "nginx error log: $(grep -c '\[error\]' "$ELOG") [error]," \
     "$(grep -c '\[warn\]' "$ELOG") [warn] lines;" \
     "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw results: $RESULTS"
exit $STATUS
