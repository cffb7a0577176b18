#!/bin/bash
# Builds ngx_http_memq_module.so against Debian's nginx-dev sources.
#
#   ngx_memq/build.sh BUILD_DIR
#
# The nginx sources in /usr/share/nginx/src are copied to
# BUILD_DIR/nginx-src and configured once with Debian's own flags
# (conf_flags; --with-compat makes the module's signature match the
# packaged /usr/sbin/nginx) plus this module.  Later runs reuse that tree
# and only rebuild the module, so an edit costs a few seconds.  The tree is
# configured again when this module's `config` file or the flags change.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: build.sh BUILD_DIR}
mkdir -p "$build"
build=$(cd "$build" && pwd)
src=/usr/share/nginx/src
tree=$build/nginx-src
mod=$top/ngx_memq

if [ ! -f "$src/conf_flags" ]; then
    echo "build.sh: $src/conf_flags missing: install nginx-dev" >&2
    exit 1
fi

# shellcheck disable=SC1091
. "$src/conf_flags"

stamp="$(cat "$src/conf_flags" "$mod/config" | md5sum | cut -d' ' -f1)"

if [ ! -f "$tree/objs/Makefile" ] || \
   [ "$(cat "$tree/.memq-stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    cp -a "$src/." "$tree/"
    (
        cd "$tree"
        ./configure "${NGX_CONF_FLAGS[@]}" \
            --with-cc-opt="-g -O2 -fPIC -Wno-error=unused-function" \
            --with-ld-opt="-fPIC" \
            --add-dynamic-module="$mod" >"$tree/configure.log" 2>&1 || {
            tail -30 "$tree/configure.log" >&2
            exit 1
        }
    )
    echo "$stamp" >"$tree/.memq-stamp"
fi

make -s -C "$tree" -f objs/Makefile -j"$(nproc)" modules
cp "$tree/objs/ngx_http_memq_module.so" "$build/ngx_http_memq_module.so.tmp"
mv "$build/ngx_http_memq_module.so.tmp" "$build/ngx_http_memq_module.so"
