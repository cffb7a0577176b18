#!/bin/sh
# Runs the demo gateway in the foreground: Debian's nginx with
# build/ngx_http_memq_module.so and conf/demo.conf, everything it writes
# (pid, logs, temp dirs) under RUNDIR/nginx.  Ctrl-C (or SIGTERM) stops it.
#
#   scripts/run-gateway.sh RUNDIR
#
# The configuration used is RUNDIR/nginx/demo.conf: conf/demo.conf with the
# ports of MEMQ_DEMO_PORT and MEMQ_DEMO_NODES and the etcd URL of
# MEMQ_DEMO_ETCD_URL (none: the etcd line goes) put in, as run-demo.sh
# sets them.  RUNDIR/nginx/html is conf/www (the tour page).
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
ln -sfn "$top/conf/www" "$prefix/html"

conf="$prefix/demo.conf"
awk -v port="${MEMQ_DEMO_PORT:-8080}" \
    -v nodes="${MEMQ_DEMO_NODES:-22201 22202 22203}" \
    -v etcd="${MEMQ_DEMO_ETCD_URL-http://127.0.0.1:2379}" '
    /^ *listen 127\.0\.0\.1:8080;/ { sub(/8080/, port) }
    /^ *node 127\.0\.0\.1:[0-9]+;/ {
        if (!done) {
            n = split(nodes, p, " ")
            for (i = 1; i <= n; i++)
                printf "        node 127.0.0.1:%s;\n", p[i]
            done = 1
        }
        next
    }
    /^ *etcd http:\/\/127\.0\.0\.1:2379;/ {
        if (etcd == "") next
        sub(/http:\/\/127\.0\.0\.1:2379/, etcd)
    }
    { print }' "$top/conf/demo.conf" >"$conf.tmp"
mv "$conf.tmp" "$conf"

# as root the workers would switch to nobody, who may not reach RUNDIR
globals="daemon off;"
if [ "$(id -u)" -eq 0 ]; then
    globals="$globals user root;"
fi

"$nginx" -t -q -p "$prefix/" -c "$conf" -g "$globals"
echo "demo: nginx on http://127.0.0.1:${MEMQ_DEMO_PORT:-8080}" \
    "(dashboard /, tour /tour.html, logs in $prefix/logs)"
exec "$nginx" -p "$prefix/" -c "$conf" -g "$globals"
