#!/bin/bash
# bench/rss.sh: memqd's memory with a large backlog.
#
# Starts memqd --sync none on a free loopback port in a fresh temporary
# directory, reads its VmRSS with no message queued, produces COUNT
# messages of SIZE bytes into QUEUES queues with memq-bench (nothing
# consumes them), and reads VmRSS (and the peak, VmHWM) again.  DESIGN.md: "Ten
# million queued items must not cost more than a few tens of MiB RSS".
#
# Environment: COUNT (10000000), SIZE (100), CONNS (50), DEPTH (16),
# QUEUES (1), SYNC (none: the --sync of memqd),
# MEMQD, BENCH (build/memqd, build/memq-bench), KEEP=1 keeps the data dir.
# Exit status 0 when the produce run succeeded.

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/build/memq-bench}
MEMQD=${MEMQD:-$ROOT/build/memqd}
COUNT=${COUNT:-10000000}
SIZE=${SIZE:-100}
CONNS=${CONNS:-50}
DEPTH=${DEPTH:-16}
KEEP=${KEEP:-0}
QUEUES=${QUEUES:-1}
SYNC=${SYNC:-none}

TMP=$(mktemp -d /tmp/memq-rss.XXXXXX)
PID=""

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ]; then
        echo "rss: data kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status_kb() {
    sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$PID/status"
}

for f in "$MEMQD" "$BENCH"; do
    [ -x "$f" ] || { echo "rss: $f missing (make memqd bench)" >&2; exit 1; }
done

PORT=$(python3 -c 'import socket; s = socket.socket(); \
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$MEMQD" --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" --sync "$SYNC" \
    >"$TMP/memqd.log" 2>&1 &
PID=$!

up=0
for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        up=1
        break
    fi
    sleep 0.1
done

if [ $up = 0 ]; then
    echo "rss: memqd did not start:" >&2
    tail -5 "$TMP/memqd.log" >&2
    exit 1
fi

sleep 0.5
rss0=$(status_kb VmRSS)

"$BENCH" -p "$PORT" -c "$CONNS" -d "$DEPTH" -s "$SIZE" -n "$COUNT" \
    -q rss --queues "$QUEUES" --timeout 300
rc=$?

sleep 1
kill -0 "$PID" 2>/dev/null || { echo "rss: memqd died" >&2; exit 1; }

rss1=$(status_kb VmRSS)
hwm1=$(status_kb VmHWM)
disk=$(du -sk "$TMP/data" | cut -f1)

printf 'memqd VmRSS, 0 messages queued: %s kB (%s MiB)\n' \
    "$rss0" "$((rss0 / 1024))"
printf 'memqd VmRSS, %s x %s B queued in %s queues: %s kB (%s MiB), peak' \
    "$COUNT" "$SIZE" "$QUEUES" "$rss1" "$((rss1 / 1024))"
printf ' VmHWM %s kB\n' "$hwm1"
printf 'data directory: %s MiB on disk\n' "$((disk / 1024))"
echo "RSS count=$COUNT size=$SIZE queues=$QUEUES sync=$SYNC rss0_kb=$rss0" \
     "rss_kb=$rss1 hwm_kb=$hwm1" \
     "disk_kb=$disk"

exit $rc
