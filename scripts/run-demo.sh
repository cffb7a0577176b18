#!/bin/sh
# Starts the demo cluster in the foreground: three memqd nodes on
# 127.0.0.1:22201-22203 with data under run/, plus nginx with the memq
# module on 127.0.0.1:8080 when the module is built.  Ctrl-C stops all.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
run="$top/run"
mkdir -p "$run/logs"
pids=""

stop() {
    trap - INT TERM EXIT
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
    echo "demo: stopped"
}
trap stop INT TERM EXIT

for port in 22201 22202 22203; do
    mkdir -p "$run/node-$port"
    "$top/build/memqd" --listen "127.0.0.1:$port" \
        --data-dir "$run/node-$port" --sync always \
        2>>"$run/logs/memqd-$port.log" &
    pids="$pids $!"
done

if [ -x "$top/scripts/run-gateway.sh" ] && \
   [ -f "$top/build/ngx_http_memq_module.so" ]; then
    "$top/scripts/run-gateway.sh" "$run" &
    pids="$pids $!"
fi

cat <<MSG
demo: memqd nodes on 127.0.0.1:22201, :22202, :22203 (data in run/, logs in
run/logs/).  Try:
  printf 'set jobs 0 0 5\r\nhello\r\nget jobs\r\n' | nc -q1 127.0.0.1 22201
  printf 'stats\r\n' | nc -q1 127.0.0.1 22201
Ctrl-C stops everything.
MSG
wait
