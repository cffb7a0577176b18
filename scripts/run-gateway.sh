#!/bin/sh
# Runs the demo gateway in the foreground: Debian's nginx with
# build/ngx_http_memq_module.so and conf/demo.conf, everything it writes
# (pid, logs, temp dirs) under RUNDIR/nginx.  Ctrl-C (or SIGTERM) stops it.
#
#   scripts/run-gateway.sh RUNDIR
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
run=${1:?usage: run-gateway.sh RUNDIR}
mkdir -p "$run"
run=$(cd "$run" && pwd)
prefix="$run/nginx"
module="$top/build/ngx_http_memq_module.so"
nginx=${NGINX:-/usr/sbin/nginx}

if [ ! -f "$module" ]; then
    echo "run-gateway: $module missing: run \`make module\`" >&2
    exit 1
fi

mkdir -p "$prefix/logs" "$prefix/temp" "$prefix/modules"
ln -sf "$module" "$prefix/modules/ngx_http_memq_module.so"

# as root the workers would switch to nobody, who may not reach RUNDIR
globals="daemon off;"
if [ "$(id -u)" -eq 0 ]; then
    globals="$globals user root;"
fi

"$nginx" -t -q -p "$prefix/" -c "$top/conf/demo.conf" -g "$globals"
echo "gateway: nginx on http://127.0.0.1:8080 (logs in $prefix/logs)"
exec "$nginx" -p "$prefix/" -c "$top/conf/demo.conf" -g "$globals"
