#!/bin/bash
# Builds ngx_http_memq_module.so against Debian's nginx-dev sources.
#
#   ngx_memq/build.sh BUILD_DIR
#
# Results:
#   BUILD_DIR/ngx_http_memq_module.so        for Debian's /usr/sbin/nginx
#   BUILD_DIR/asan/ngx_http_memq_module.so   the same with AddressSanitizer
#                                            and UBSan (load it into the
#                                            stock nginx with LD_PRELOAD of
#                                            libasan and libubsan; the test
#                                            suite does under MEMQ_SANITIZED)
#
# The nginx-dev tree (/usr/share/nginx/src: headers and build scripts) is
# copied to BUILD_DIR/nginx-src[-asan] and configured once with Debian's own
# flags (conf_flags; --with-compat makes the module's signature match the
# packaged nginx) plus this module.  Later runs reuse the tree and only
# rebuild what changed, so an edit costs a second or two.  A tree is
# configured again when conf_flags, the module's `config` or this script
# change.  Set MEMQ_NO_ASAN=1 to skip the sanitizer build.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: build.sh BUILD_DIR}
mkdir -p "$build"
build=$(cd "$build" && pwd)
src=/usr/share/nginx/src
mod=$top/ngx_memq

if [ ! -f "$src/conf_flags" ]; then
    echo "build.sh: $src/conf_flags missing: install nginx-dev" >&2
    exit 1
fi

# shellcheck disable=SC1091
. "$src/conf_flags"

# build_tree TREE CC_OPT LD_OPT OUT
build_tree() {
    local tree=$1 ccopt=$2 ldopt=$3 out=$4 stamp

    stamp="$(cat "$src/conf_flags" "$mod/config" "$0" | md5sum)"
    stamp="${stamp%% *} $ccopt $ldopt"

    if [ ! -f "$tree/objs/Makefile" ] || \
       [ "$(cat "$tree/.memq-stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$tree"
        mkdir -p "$tree"
        cp -a "$src/." "$tree/"
        (
            cd "$tree"
            ./configure "${NGX_CONF_FLAGS[@]}" \
                --with-cc-opt="$ccopt" --with-ld-opt="$ldopt" \
                --add-dynamic-module="$mod" >"$tree/configure.log" 2>&1 || {
                tail -30 "$tree/configure.log" >&2
                exit 1
            }
        )
        echo "$stamp" >"$tree/.memq-stamp"
    fi

    # the dashboard page as a C header (rewritten only when it changed)
    sh "$mod/embed.sh" "$mod/dashboard.html" \
        "$tree/objs/addon/memq/ngx_http_memq_dashboard_html.h" \
        ngx_http_memq_dashboard_html

    make -s -C "$tree" -f objs/Makefile -j"$(nproc)" modules
    mkdir -p "$(dirname "$out")"
    cp "$tree/objs/ngx_http_memq_module.so" "$out.tmp"
    mv "$out.tmp" "$out"
}

# Debian's own compiler options for its nginx
debian_cc="-g -O2 -fstack-protector-strong -Wformat -Werror=format-security"
debian_cc="$debian_cc -fPIC -Wdate-time -D_FORTIFY_SOURCE=2"

build_tree "$build/nginx-src" "$debian_cc" \
    "-Wl,-z,relro -Wl,-z,now -fPIC" \
    "$build/ngx_http_memq_module.so"

if [ -z "${MEMQ_NO_ASAN:-}" ]; then
    build_tree "$build/nginx-src-asan" \
        "-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fPIC" \
        "-fsanitize=address,undefined -fPIC" \
        "$build/asan/ngx_http_memq_module.so"
fi
