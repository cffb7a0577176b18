#!/bin/bash
# bench/peers.sh: memqd measured side by side with Redis, beanstalkd and
# memcached, all driven by build/memq-bench on loopback.
#
# For each durability level, each system is started alone on a free
# loopback port in a fresh temporary directory, runs every cell, and is
# stopped before the next one starts:
#
#   level     memqd                 redis                        beanstalkd
#   always    --sync always         appendonly, fsync always     -b DIR -f 0
#   interval  --sync interval=1000  appendonly, fsync everysec   -b DIR -f 1000
#   none      --sync none           no AOF, --save ''            -b DIR -F
#
# memcached (-m 2048, keys k<i>, no queue, no disk) is run once as the
# ceiling of the protocol and shown in every table.
#
# A cell is (message size, connections); in each, N messages are produced
# (stopping early after DURATION seconds) and then exactly the messages
# produced are consumed.  Before its cells, each queue system passes a
# small produce + consume run with --verify.
#
# MATRIX=1 runs, instead of all that, the durable-throughput matrix: memqd
# --sync always against Redis appendonly + appendfsync always, produce
# only, 100-byte messages, every shape (connections x pipeline depth) of
# MATRIX_SHAPES with every queue count of MATRIX_QUEUES (memq-bench
# --queues: the connections spread over that many queues, a connection
# with several going round them one message each).  Each cell runs on a
# freshly started server with an empty data directory, memqd and Redis
# back to back.  Before the cells, each system passes a produce + consume
# run with --verify over 16 queues and 4 connections.  It prints a table
# per queue count, the last shape's figures with several queues as a ratio
# of its 1-queue figure, the mean time of one durable set at 1x1, and its
# median against its bound (matrix_bound below).
#
# Environment:
#   QUICK=1           tiny counts, 1 s cap: a smoke test in well under a minute
#   MATRIX=1          only the durable-throughput matrix (see above)
#   MATRIX_SHAPES     CONNSxDEPTH list ("1x1 16x1 50x1 50x16")
#   MATRIX_QUEUES     queue counts ("1 16 256")
#   MATRIX_N          messages per matrix cell (1000000; QUICK=1: 2000)
#   MATRIX_MODE       produce (default) or consume: each cell first fills
#                     its queues with MATRIX_N messages in the same shape,
#                     then the cell's figure is consuming them (plain get,
#                     RPOP, reserve + delete) for DURATION seconds
#   N100, N4096       messages per cell for 100 and 4096 bytes (300000, 60000)
#   DURATION          seconds cap of each produce run (5)
#   DEPTH1, DEPTH50   pipeline depth with 1 and with 50 connections (1, 16)
#   REPEAT            runs of each cell (1); the table shows the best, since
#                     other load on the machine only ever slows a run down
#   LEVELS            subset of "always interval none"
#   SYSTEMS           subset of "memqd redis beanstalkd memcached"
#   RESULTS           file for the raw RESULT lines (build/peers-results.txt,
#                     with MATRIX=1 build/peers-matrix.txt)
#   MEMQD, BENCH      the binaries (build/memqd, build/memq-bench)
#
# Exit status: 0 when every run that was started succeeded and verified,
# 1 otherwise.  Whatever it started is stopped on any exit (trap).

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/build/memq-bench}
MEMQD=${MEMQD:-$ROOT/build/memqd}
FSYNC_DESIGNS=${FSYNC_DESIGNS:-$ROOT/build/fsync-designs}
QUICK=${QUICK:-0}
MATRIX=${MATRIX:-0}
MATRIX_SHAPES=${MATRIX_SHAPES:-1x1 16x1 50x1 50x16}
MATRIX_QUEUES=${MATRIX_QUEUES:-1 16 256}
MATRIX_MODE=${MATRIX_MODE:-produce}
if [ "$MATRIX" = 1 ]; then
    RESULTS=${RESULTS:-$ROOT/build/peers-matrix.txt}
else
    RESULTS=${RESULTS:-$ROOT/build/peers-results.txt}
fi
LEVELS=${LEVELS:-always interval none}
SYSTEMS=${SYSTEMS:-memqd redis beanstalkd memcached}
DEPTH1=${DEPTH1:-1}
DEPTH50=${DEPTH50:-16}
REPEAT=${REPEAT:-1}

if [ "$QUICK" = 1 ]; then
    N100=${N100:-2000}
    N4096=${N4096:-500}
    MATRIX_N=${MATRIX_N:-2000}
    DURATION=${DURATION:-1}
    VERIFY_N=200
else
    N100=${N100:-300000}
    N4096=${N4096:-60000}
    MATRIX_N=${MATRIX_N:-1000000}
    DURATION=${DURATION:-5}
    VERIFY_N=5000
fi

SIZES="100 4096"
CONNS="1 50"

TMP=$(mktemp -d /tmp/memq-peers.XXXXXX)
PIDS=""
STATUS=0
MEMQD_OK=0

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    local pid
    for pid in $PIDS; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in $PIDS; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    PIDS=""
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() {
    echo "peers: $*" >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); \
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# waits until something accepts on the port and $2 is alive
wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# starts "$@" in the background, logging to $LOGF; sets PID
spawn() {
    "$@" >"$LOGF" 2>&1 &
    PID=$!
    PIDS="$PIDS $PID"
}

stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$pid" | tr '\n' ' ')
}

# start SYSTEM LEVEL: sets PORT, PID and DIR (its data), returns 1 when it
# did not come up
start() {
    local sys=$1 level=$2 dir
    dir=$(mktemp -d "$TMP/$sys-$level.XXXX")
    DIR=$dir
    PORT=$(free_port)
    LOGF=$dir/log

    case $sys in
    memqd)
        local sync=always
        [ "$level" = interval ] && sync=interval=1000
        [ "$level" = none ] && sync=none
        spawn "$MEMQD" --listen "127.0.0.1:$PORT" --data-dir "$dir/data" \
            --sync "$sync"
        ;;
    redis)
        local aof="--appendonly yes --appendfsync always"
        [ "$level" = interval ] && aof="--appendonly yes --appendfsync everysec"
        [ "$level" = none ] && aof="--appendonly no"
        # shellcheck disable=SC2086
        spawn redis-server --port "$PORT" --bind 127.0.0.1 --dir "$dir" \
            --save '' $aof --daemonize no
        ;;
    beanstalkd)
        local fs="-f 0"
        [ "$level" = interval ] && fs="-f 1000"
        [ "$level" = none ] && fs="-F"
        mkdir -p "$dir/binlog"
        # shellcheck disable=SC2086
        spawn beanstalkd -l 127.0.0.1 -p "$PORT" -b "$dir/binlog" $fs
        ;;
    memcached)
        local user=""
        [ "$(id -u)" = 0 ] && user="-u root"
        # shellcheck disable=SC2086
        spawn memcached -l 127.0.0.1 -p "$PORT" -m 2048 -U 0 $user
        ;;
    esac

    if ! wait_port "$PORT" "$PID"; then
        log "$sys ($level) did not start; its log:"
        tail -5 "$LOGF" >&2
        stop "$PID"
        return 1
    fi
    return 0
}

proto_of() {
    case $1 in
    memqd) echo memq ;;
    redis) echo redis ;;
    beanstalkd) echo beanstalk ;;
    memcached) echo memcached ;;
    esac
}

# bench SYSTEM LEVEL ARGS...: one memq-bench run, its RESULT line kept
bench() {
    local sys=$1 level=$2 out rc line
    shift 2
    out=$("$BENCH" --proto "$(proto_of "$sys")" -p "$PORT" "$@" 2>&1)
    rc=$?
    line=$(echo "$out" | grep '^RESULT ' | tail -1)
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        log "$sys ($level) failed: memq-bench $*"
        printf '    %s\n' "$out" >&2
        STATUS=1
        return 1
    fi
    echo "$line system=$sys level=$level${TAG:+ $TAG}" >>"$RESULTS"
    echo "$line"
}

field() {
    echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# runs all cells of one system at one level
run_system() {
    local sys=$1 level=$2 size conns depth n line got q rep
    if ! start "$sys" "$level"; then
        STATUS=1
        return
    fi
    log "$sys ($level) on port $PORT"

    if [ "$sys" != memcached ]; then
        if TAG=check=verify bench "$sys" "$level" -c 4 -d 8 -s 100 \
                -n "$VERIFY_N" -q verify --verify --run-id "$level" -Q \
                >/dev/null \
           && TAG=check=verify bench "$sys" "$level" -c 4 -d 8 -s 100 \
                -n "$VERIFY_N" -q verify --verify --run-id "$level" \
                -m consume -Q >/dev/null
        then
            log "$sys ($level): verify lost=0 dup=0 corrupt=0"
        fi
    fi

    for size in $SIZES; do
        for conns in $CONNS; do
            depth=$DEPTH1
            [ "$conns" -gt 1 ] && depth=$DEPTH50
            n=$N100
            [ "$size" -gt 100 ] && n=$N4096
            for rep in $(seq 1 "$REPEAT"); do
                q="cell_${size}_${conns}_$rep"

                kill -0 "$PID" 2>/dev/null || {
                    log "$sys ($level) is gone"; STATUS=1; break 3; }

                line=$(bench "$sys" "$level" -c "$conns" -d "$depth" \
                           -s "$size" -n "$n" -t "$DURATION" -q "$q" -Q) \
                    || { STATUS=1; continue; }
                got=$(field "$line" msgs)
                [ "$got" -gt 0 ] || continue
                bench "$sys" "$level" -c "$conns" -d "$depth" -s "$size" \
                    -n "$got" -q "$q" -m consume -Q >/dev/null \
                    || STATUS=1
            done
        done
    done

    stop "$PID"
}

# memqd is being built alongside: use it only when it answers set and get;
# a private copy keeps one binary for the whole run even if make runs again
check_memqd() {
    [ -x "$MEMQD" ] || return 1
    cp "$MEMQD" "$TMP/memqd" || return 1
    MEMQD=$TMP/memqd
    start memqd none 2>/dev/null || return 1
    "$BENCH" -p "$PORT" -n 10 -q check --verify --run-id c -Q \
        >/dev/null 2>&1 \
        && "$BENCH" -p "$PORT" -n 10 -q check --verify --run-id c \
            -m consume -Q >/dev/null 2>&1
    local rc=$?
    stop "$PID"
    return $rc
}

table() {
    awk -v levels="$LEVELS" -v sizes="$SIZES" -v conns="$CONNS" \
        -v d1="$DEPTH1" -v d50="$DEPTH50" -v rep="$REPEAT" '
    /^RESULT / && !/ check=/ && !/ part=matrix/ {
        delete f
        for (i = 2; i <= NF; i++) {
            split($i, kv, "=")
            f[kv[1]] = kv[2]
        }
        if (f["msgs"] == 0 || f["mode"] != mode) next
        k = f["level"] SUBSEP f["system"] SUBSEP f["mode"] SUBSEP \
            f["size"] SUBSEP f["conns"]
        if (!(k in v) || f["msgs_per_sec"] + 0 > v[k] + 0)
            v[k] = f["msgs_per_sec"]
    }
    function get(l, s, m, z, c) {
        if (s == "memcached") l = "ceiling"
        return v[l, s, m, z, c]
    }
    function ratio(a, b) {
        if (a == "" || b == "" || b == 0) return "-"
        return sprintf("%.2f", a / b)
    }
    function num(a) { return a == "" ? "n/a" : a }
    END {
        nl = split(levels, L, " ")
        ns = split(sizes, S, " ")
        nc = split(conns, C, " ")
        for (li = 1; li <= nl; li++) {
            l = L[li]
            printf "\n== durability: %s (msgs/s%s; ratio = memqd / peer)\n", \
                l, (rep > 1 ? ", best of " rep : "")
            printf "%-22s %9s %9s %9s %9s %7s %7s %7s\n", "cell", "memqd", \
                "redis", "beanstk", "memcache", "/redis", "/beanst", "/memc"
            split("produce consume", M, " ")
            for (mi = 1; mi <= 2; mi++)
            for (si = 1; si <= ns; si++)
            for (ci = 1; ci <= nc; ci++) {
                m = M[mi]; z = S[si]; c = C[ci]
                d = c > 1 ? d50 : d1
                q = get(l, "memqd", m, z, c)
                r = get(l, "redis", m, z, c)
                b = get(l, "beanstalkd", m, z, c)
                mc = get(l, "memcached", m, z, c)
                printf "%-22s %9s %9s %9s %9s %7s %7s %7s\n", \
                    sprintf("%s %sB c%s d%s", m, z, c, d), \
                    num(q), num(r), num(b), num(mc), \
                    ratio(q, r), ratio(q, b), ratio(q, mc)
            }
        }
        printf "\nmemcache = memcached: no queue, no disk, the protocol" \
               " ceiling\n"
    }' "$RESULTS"
}

# the durable-throughput matrix (MATRIX=1)
matrix_systems() {
    local sys
    for sys in memqd redis; do
        case " $SYSTEMS " in *" $sys "*) ;; *) continue ;; esac
        [ "$sys" = memqd ] && [ $MEMQD_OK = 0 ] && continue
        echo "$sys"
    done
}

# a produce + consume --verify run over 16 queues, 4 connections going
# round 4 queues each
matrix_check() {
    local sys=$1
    start "$sys" always || { STATUS=1; return; }
    if TAG="check=verify part=matrix" bench "$sys" always -c 4 -d 8 -s 100 \
            -n "$VERIFY_N" --queues 16 -q verify --verify --run-id mx -Q \
            >/dev/null \
       && TAG="check=verify part=matrix" bench "$sys" always -c 4 -d 8 \
            -s 100 -n "$VERIFY_N" --queues 16 -q verify --verify \
            --run-id mx -m consume -Q >/dev/null
    then
        log "$sys (always): verify over 16 queues lost=0 dup=0 corrupt=0" \
            "misplaced=0"
    fi
    stop "$PID"
    rm -rf "$DIR"
}

# one cell of the matrix on a fresh server: produce, or (MATRIX_MODE=
# consume) MATRIX_N messages produced in the same shape without a time
# cap, then consumed for DURATION seconds
matrix_cell() {
    local sys=$1 conns=$2 depth=$3 queues=$4
    start "$sys" always || { STATUS=1; return; }
    if [ "$MATRIX_MODE" = consume ]; then
        TAG=part=fill bench "$sys" always -c "$conns" -d "$depth" -s 100 \
            -n "$MATRIX_N" --queues "$queues" -q mx -Q --timeout 120 \
            >/dev/null || STATUS=1
    fi
    TAG=part=matrix bench "$sys" always -c "$conns" -d "$depth" -s 100 \
        -n "$MATRIX_N" -t "$DURATION" --queues "$queues" -q mx \
        -m "$MATRIX_MODE" -Q >/dev/null || STATUS=1
    stop "$PID"
    rm -rf "$DIR"
}

# What bounds a durable set at 1x1 (issue 7: one fdatasync plus a
# loopback round trip plus 10%), measured beside the 1x1 cells: the median
# fdatasync of a 100 B journal write (build/fsync-designs, in a directory
# of the same file system), and a set at 1x1 on memqd --sync none, the
# same round trip and work without the disk
matrix_bound() {
    local dir f
    dir=$TMP/fsync
    rm -rf "$dir" && mkdir "$dir" || return
    f=$("$FSYNC_DESIGNS" "$dir" 1 2000 100 | awk '/^journal/ { print $4 }')
    rm -rf "$dir"
    [ -n "$f" ] && echo "RESULT part=bound fsync_p50_us=$f" >>"$RESULTS"
    start memqd none || { STATUS=1; return; }
    TAG=part=bound bench memqd none -c 1 -d 1 -s 100 -n 5000 -q rt -Q \
        >/dev/null || STATUS=1
    stop "$PID"
    rm -rf "$DIR"
}

run_matrix() {
    local sys nq shape rep systems
    systems=$(matrix_systems)

    for sys in $systems; do
        matrix_check "$sys"
    done

    for nq in $MATRIX_QUEUES; do
        for shape in $MATRIX_SHAPES; do
            log "matrix: $shape, $nq queue(s)"
            for rep in $(seq 1 "$REPEAT"); do
                for sys in $systems; do
                    matrix_cell "$sys" "${shape%x*}" "${shape#*x}" "$nq"
                done
                if [ "$shape" = 1x1 ] && [ "$nq" = 1 ] && \
                   [ "$MATRIX_MODE" = produce ] && [ -x "$FSYNC_DESIGNS" ]
                then
                    matrix_bound
                fi
            done
        done
    done
}

matrix_table() {
    awk -v shapes="$MATRIX_SHAPES" -v queues="$MATRIX_QUEUES" \
        -v rep="$REPEAT" -v n="$MATRIX_N" -v secs="$DURATION" \
        -v mode="$MATRIX_MODE" '
    function min(a, b) { return a == "" || b + 0 < a + 0 ? b : a }
    /^RESULT / && / part=(matrix|bound)/ && !/ check=/ {
        delete f
        for (i = 2; i <= NF; i++) {
            split($i, kv, "=")
            f[kv[1]] = kv[2]
        }
        if (f["part"] == "bound") {
            if ("fsync_p50_us" in f)
                fs = min(fs, f["fsync_p50_us"])
            else
                rt = min(rt, f["p50_us"])
            next
        }
        if (f["msgs"] == 0 || f["mode"] != mode) next
        k = f["system"] SUBSEP f["queues"] SUBSEP f["conns"] "x" f["depth"]
        if (!(k in v) || f["msgs_per_sec"] + 0 > v[k] + 0) {
            v[k] = f["msgs_per_sec"]
            p50[k] = f["p50_us"]
        }
    }
    function ratio(a, b) {
        if (a == "" || b == "" || b == 0) return "-"
        return sprintf("%.2f", a / b)
    }
    function num(a) { return a == "" ? "n/a" : a }
    function us(a) { return a == "" || a == 0 ? "n/a" : \
                            sprintf("%.0f us", 1e6 / a) }
    END {
        ns = split(shapes, S, " ")
        nq = split(queues, Q, " ")
        printf "\n== durable %s: memqd --sync always vs redis", mode
        printf " appendonly yes, appendfsync always\n"
        printf "   100 B messages, %s per cell or %s s, whichever first;" \
               " msgs/s%s\n", n, secs, (rep > 1 ? ", best of " rep : "")
        for (qi = 1; qi <= nq; qi++) {
            q = Q[qi]
            printf "\n-- %s queue%s %s\n", q, (q == 1 ? "" : "s"), \
                (mode == "produce" ? "taking writes" : "consumed")
            printf "%-8s %10s %10s %12s\n", "shape", "memqd", "redis", \
                "memqd/redis"
            for (si = 1; si <= ns; si++) {
                s = S[si]
                a = v["memqd", q, s]
                b = v["redis", q, s]
                printf "%-8s %10s %10s %12s\n", s, num(a), num(b), \
                    ratio(a, b)
            }
        }
        s = S[ns]
        printf "\n%s, N queues as a ratio of 1 queue:", s
        split("memqd redis", Y, " ")
        for (yi = 1; yi <= 2; yi++) {
            printf " %s", Y[yi]
            sep = ""
            for (qi = 1; qi <= nq; qi++) {
                if (Q[qi] == 1) continue
                printf "%s %sq %s", sep, Q[qi], \
                    ratio(v[Y[yi], Q[qi], s], v[Y[yi], 1, s])
                sep = ","
            }
            printf "%s", (yi == 1 ? ";" : "\n")
        }
        if (mode != "produce") exit
        printf "durable set at 1x1, 1 queue, mean (1e6 / msgs/s):" \
               " memqd %s, redis %s\n", us(v["memqd", 1, "1x1"]), \
               us(v["redis", 1, "1x1"])
        if (fs != "" && rt != "" && p50["memqd", 1, "1x1"] != "") {
            b = (fs + rt) * 1.1
            printf "durable set at 1x1, 1 queue, p50: memqd %s us, redis" \
                   " %s us; bound (fdatasync p50 %s us + set round trip" \
                   " at --sync none p50 %s us) x 1.1 = %.0f us;" \
                   " memqd/bound %.2f\n", p50["memqd", 1, "1x1"], \
                   p50["redis", 1, "1x1"], fs, rt, b, \
                   p50["memqd", 1, "1x1"] / b
        }
    }' "$RESULTS"
}

main() {
    local level sys tools

    if [ ! -x "$BENCH" ]; then
        echo "peers: $BENCH missing: run 'make bench'" >&2
        exit 1
    fi
    tools="redis-server beanstalkd memcached python3"
    [ "$MATRIX" = 1 ] && tools="redis-server python3"
    for sys in $MATRIX_SHAPES; do
        [[ $sys =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || {
            echo "peers: MATRIX_SHAPES: $sys is not CONNSxDEPTH" >&2; exit 1; }
    done
    for sys in $tools; do
        command -v "$sys" >/dev/null || {
            echo "peers: $sys not installed (scripts/deps.sh)" >&2; exit 1; }
    done

    mkdir -p "$(dirname "$RESULTS")"
    : >"$RESULTS"
    echo "# peers.sh $(date -u +%FT%TZ) QUICK=$QUICK N100=$N100" \
         "N4096=$N4096 DURATION=$DURATION DEPTH1=$DEPTH1 DEPTH50=$DEPTH50" \
         "REPEAT=$REPEAT MATRIX=$MATRIX MATRIX_SHAPES='$MATRIX_SHAPES'" \
         "MATRIX_QUEUES='$MATRIX_QUEUES' MATRIX_N=$MATRIX_N nproc=$(nproc)" \
         >>"$RESULTS"

    case " $SYSTEMS " in
    *" memqd "*)
        if check_memqd; then
            MEMQD_OK=1
        else
            echo "memqd: not available"
        fi
        ;;
    esac

    if [ "$MATRIX" = 1 ]; then
        run_matrix
        matrix_table
        case " $SYSTEMS " in
        *" memqd "*) [ $MEMQD_OK = 1 ] || echo "memqd: not available" ;;
        esac
        echo "raw RESULT lines: $RESULTS"
        return $STATUS
    fi

    for level in $LEVELS; do
        for sys in memqd redis beanstalkd; do
            case " $SYSTEMS " in *" $sys "*) ;; *) continue ;; esac
            [ "$sys" = memqd ] && [ $MEMQD_OK = 0 ] && continue
            run_system "$sys" "$level"
        done
    done

    case " $SYSTEMS " in
    *" memcached "*) run_system memcached ceiling ;;
    esac

    table
    case " $SYSTEMS " in
    *" memqd "*) [ $MEMQD_OK = 1 ] || echo "memqd: not available" ;;
    esac
    echo "raw RESULT lines: $RESULTS"
    return $STATUS
}

main "$@"
exit $?
