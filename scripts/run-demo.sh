#!/bin/sh
# Starts the demo cluster in the foreground and says what it starts:
#
#   etcd    a single member on 127.0.0.1:2379 (peers :2380), the config
#           centre the nodes register in (skipped when etcd is not
#           installed, or with MEMQ_DEMO_ETCD=0)
#   memqd   three nodes on 127.0.0.1:22201-22203, data in run/node-PORT
#   nginx   the gateway on 127.0.0.1:8080: the dashboard at /, the browser
#           tour at /tour.html, the queues at /mq, the status at /mq/status
#
# Order: etcd first (the nodes find it up), then the nodes, then nginx;
# Ctrl-C stops them the other way round, so nothing logs a refused
# connection.  Each runs in a session of its own (setsid), so the
# terminal's Ctrl-C reaches only this script, which stops them in order.  A node restarted by hand on the same data directory is
# stopped too: Ctrl-C stops whatever process holds run/node-PORT/memqd.lock.
#
# Environment (the README test runs a second demo on free ports with it):
#   MEMQ_DEMO_RUN=DIR            data, logs and pid files (default run/)
#   MEMQ_DEMO_PORT=N             gateway port (8080)
#   MEMQ_DEMO_NODES="P1 P2 P3"   node ports (22201 22202 22203)
#   MEMQ_DEMO_ETCD=0             no etcd
#   MEMQ_DEMO_ETCD_PORTS="C P"   etcd client and peer ports (2379 2380)
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
run=${MEMQ_DEMO_RUN:-$top/run}
port=${MEMQ_DEMO_PORT:-8080}
nodes=${MEMQ_DEMO_NODES:-22201 22202 22203}
set -- ${MEMQ_DEMO_ETCD_PORTS:-2379 2380}
etcd_port=$1
etcd_peer=$2
mkdir -p "$run/logs" "$run/pids"
run=$(cd "$run" && pwd)
etcd_pid=""
gw_pid=""

say() {
    echo "demo: $*"
}

# pids holding a node's lock file open: the nodes, also one restarted by
# hand on the same data directory
lock_holders() {
    find /proc/[0-9]*/fd -maxdepth 1 -lname "$run/node-*/memqd.lock" \
        2>/dev/null | cut -d/ -f3 | sort -u
}

# waits (up to 20 s) for the pids given to exit
wait_gone() {
    i=0
    while [ $i -lt 200 ]; do
        alive=""
        for p in "$@"; do
            # a child of ours that exited stays a zombie until waited for
            st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
            [ -n "$st" ] && [ "$st" != Z ] && alive="$alive $p"
        done
        [ -z "$alive" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    say "still running after 20 s:$alive" >&2
}

stopping=""
stop() {
    stopping=1
    trap - INT TERM HUP EXIT
    echo
    if [ -n "$gw_pid" ]; then
        say "stopping nginx"
        kill "$gw_pid" 2>/dev/null || true
        wait_gone "$gw_pid"
    fi
    # every running node holds its lock (a pid of ours that exited may have
    # been reused since: only holders are stopped)
    pids=$(lock_holders | tr '\n' ' ')
    if [ -n "${pids% }" ]; then
        say "stopping memqd (pids $pids)"
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone $pids
    fi
    if [ -n "$etcd_pid" ]; then
        say "stopping etcd"
        kill "$etcd_pid" 2>/dev/null || true
        wait_gone "$etcd_pid"
    fi
    wait 2>/dev/null || true
    rm -f "$run"/pids/*.pid
    say "stopped"
}
trap stop INT TERM HUP EXIT

register=""
etcd_url=http://127.0.0.1:$etcd_port
if [ "${MEMQ_DEMO_ETCD:-1}" = 0 ]; then
    say "etcd: off (MEMQ_DEMO_ETCD=0)"
elif command -v etcd >/dev/null 2>&1; then
    say "etcd on $etcd_url (peers :$etcd_peer), data in $run/etcd," \
        "log $run/logs/etcd.log"
    mkdir -p "$run/etcd"
    chmod 700 "$run/etcd"
    setsid etcd --name demo --data-dir "$run/etcd" \
        --listen-client-urls "$etcd_url" \
        --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "demo=http://127.0.0.1:$etcd_peer" \
        --logger zap --log-level error \
        >>"$run/logs/etcd.log" 2>&1 &
    etcd_pid=$!
    echo "$etcd_pid" >"$run/pids/etcd.pid"
    i=0
    until curl -sf "$etcd_url/health" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 200 ] || ! kill -0 "$etcd_pid" 2>/dev/null; then
            say "etcd did not come up; see $run/logs/etcd.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    register="--etcd $etcd_url --cluster main"
else
    say "etcd: not installed, the nodes will not register"
fi

for p in $nodes; do
    mkdir -p "$run/node-$p"
    say "memqd on 127.0.0.1:$p, data in $run/node-$p," \
        "log $run/logs/memqd-$p.log"
    # shellcheck disable=SC2086
    setsid "$top/build/memqd" --listen "127.0.0.1:$p" \
        --data-dir "$run/node-$p" --sync always \
        ${register:+$register --advertise 127.0.0.1:$p} \
        2>>"$run/logs/memqd-$p.log" &
    echo "$!" >"$run/pids/memqd-$p.pid"
done

if [ -f "$top/build/ngx_http_memq_module.so" ]; then
    MEMQ_DEMO_ETCD_URL=$([ -n "$register" ] && echo "$etcd_url") \
        setsid "$top/scripts/run-gateway.sh" "$run" &
    gw_pid=$!
    echo "$gw_pid" >"$run/pids/nginx.pid"
else
    say "build/ngx_http_memq_module.so missing: no gateway (make module)" >&2
fi

g=http://127.0.0.1:$port
first=${nodes%% *}
cat <<MSG
demo: up.  Open $g/ (dashboard) and $g/tour.html (EventSource tour).  Try:
  curl -d 'hello' '$g/mq?topic=jobs'
  curl '$g/mq?topic=jobs'
  curl -N '$g/mq?topic=jobs&wait=30&format=sse'
  curl '$g/mq/status?queues=1'
  printf 'set jobs 0 0 5\r\nhello\r\nget jobs\r\n' | nc -C -q1 127.0.0.1 $first
Ctrl-C stops everything.
MSG
# nginx exiting by itself (its port taken, a bad configuration) ends the
# demo with its reason, instead of leaving the nodes up with no gateway
if [ -n "$gw_pid" ]; then
    wait "$gw_pid" || true
    if [ -z "$stopping" ]; then
        gw_pid=""
        say "nginx exited (see above and $run/nginx/logs/error.log)" >&2
        exit 1
    fi
fi
wait
