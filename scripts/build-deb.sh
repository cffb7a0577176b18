#!/bin/bash
# Builds memq's Debian packages (debian/: memqd, libnginx-mod-http-memq,
# memq-tools) into OUT, without touching the source tree.
#
#   scripts/build-deb.sh [OUT]        (make deb: OUT = build/deb)
#
# The tree is copied to OUT/work/memq-VERSION (git's files, tracked and new
# but not ignored, when it is a git checkout; else everything but build/,
# run/ and .git), dpkg-buildpackage -b -us -uc builds there, and the .deb,
# .changes and .buildinfo files are moved to OUT.  OUT/.built lists the
# packages of the last build; nothing is rebuilt while they all exist and
# no file the packages are made of is newer than it.  MEMQ_DEB_FORCE=1
# rebuilds anyway.  Needs what scripts/deps.sh installs (debhelper,
# dpkg-dev, nginx-dev).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build/deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# what the packages are built from (tests and benchmarks' data are not)
inputs=(Makefile debian common memqd bench ngx_memq conf docs memqctl
        scripts/build-deb.sh)

up_to_date() {
    local deb newer

    [ -z "${MEMQ_DEB_FORCE:-}" ] && [ -s "$out/.built" ] || return 1
    while read -r deb; do
        [ -f "$out/$deb" ] || return 1
    done <"$out/.built"
    newer=$(cd "$top" && find "${inputs[@]}" -newer "$out/.built" \
        -print -quit)
    [ -z "$newer" ]
}

# the source files to copy, NUL-separated, relative to $top
source_files() {
    if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # --cached may list files deleted in the work tree: skip them
        git -C "$top" ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                [ -f "$top/$f" ] && printf '%s\0' "$f"
            done
    else
        (cd "$top" && find . \( -path ./build -o -path ./run -o -path ./.git \
            \) -prune -o -type f -print0)
    fi
}

if up_to_date; then
    echo "deb: $out is up to date"
    exit 0
fi

version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
work=$out/work
src=$work/memq-$version
rm -rf "$work"
mkdir -p "$src"
source_files | (cd "$top" && tar --null -T - -cf -) | tar -xf - -C "$src"

echo "deb: building memq $version in $src (log: $out/build.log)"
if ! (cd "$src" && dpkg-buildpackage -b -us -uc -j"$(nproc)") \
        >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log" >&2
    echo "deb: dpkg-buildpackage failed; the whole log is $out/build.log" >&2
    exit 1
fi

rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo "$out/.built"
(cd "$work" && ls -- *.deb) >"$out/.built.tmp"
mv "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out/"
rm -rf "$work"
mv "$out/.built.tmp" "$out/.built"
sed "s|^|deb: $out/|" "$out/.built"
echo "deb: check with: lintian $out/memq_${version}_*.changes"
