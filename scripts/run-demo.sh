#!/bin/sh
# Starts the demo cluster in the foreground: a single-member etcd on
# 127.0.0.1:2379 (the config centre), three memqd nodes on
# 127.0.0.1:22201-22203 that register in it, with data under run/, plus
# nginx with the memq module on 127.0.0.1:8080.  Ctrl-C stops all.
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

etcd_url=http://127.0.0.1:2379
register=""
if command -v etcd >/dev/null 2>&1; then
    mkdir -p "$run/etcd"
    etcd --name demo --data-dir "$run/etcd" \
        --listen-client-urls "$etcd_url" \
        --advertise-client-urls "$etcd_url" \
        --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster demo=http://127.0.0.1:2380 \
        2>>"$run/logs/etcd.log" &
    pids="$pids $!"
    register="--etcd $etcd_url --cluster main"
else
    echo "demo: etcd not installed: nodes will not register" >&2
fi

for port in 22201 22202 22203; do
    mkdir -p "$run/node-$port"
    # shellcheck disable=SC2086
    "$top/build/memqd" --listen "127.0.0.1:$port" \
        --data-dir "$run/node-$port" --sync always \
        ${register:+$register --advertise 127.0.0.1:$port} \
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
run/logs/), registered in etcd at $etcd_url.  Try:
  curl -d 'hello' 'http://127.0.0.1:8080/mq?topic=jobs'
  curl 'http://127.0.0.1:8080/mq?topic=jobs'
  curl -N 'http://127.0.0.1:8080/mq?topic=jobs&wait=30&format=sse'
  curl 'http://127.0.0.1:8080/mq/status?queues=1'
  printf 'set jobs 0 0 5\r\nhello\r\nget jobs\r\n' | nc -q1 127.0.0.1 22201
  ETCDCTL_API=3 etcdctl --endpoints $etcd_url get --prefix /memq/
Ctrl-C stops everything.
MSG
wait
