#!/bin/sh
# Installs the Debian packages memq builds, tests and benchmarks with, when
# any is missing.  Idempotent; needs root (or sudo) only when it installs.
set -e
PKGS="build-essential clang libclang-rt-14-dev libcmocka-dev zlib1g-dev
nginx nginx-dev python3 python3-pytest python3-pymemcache python3-requests
memcached redis-server beanstalkd etcd-server etcd-client curl netcat-openbsd wrk
iproute2 procps strace util-linux chromium"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
