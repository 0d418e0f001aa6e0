#!/usr/bin/env bash
# Benchmark spillway's RAM volume against `nbdkit memory` with fio's nbd engine.
#
# For each round and each workload (bench/fio/<workload>.fio) this starts a
# fresh server, runs fio against it over TCP loopback, stops it, and does the
# same for the other server, so runs alternate A B A B. It prints the median
# IOPS and MiB/s over rounds and the ratio spillway/nbdkit.
#
# Environment:
#   ROUNDS=3         rounds (each round runs every workload on both servers)
#   RUNTIME=10       seconds per timed fio run
#   WORKLOADS="..."  subset of workloads, space- or comma-separated
#                    (default: all five, see bench/README.md)
#   PIN=none         none: let the kernel place processes; cross: servers on CPU 0,
#                    fio on CPU 1; same: servers and fio all on CPU 0. On small VMs
#                    the kernel's placement decides qd1 latency (waking a thread on
#                    the other vCPU costs tens of microseconds), so pinned runs
#                    compare the servers' own cost.
#   ORDER=abab       abab: spillway first in every pair; abba: spillway first
#                    in odd rounds, nbdkit first in even rounds
#   SIZE=1G          export size for both servers
#   SETTLE=1         seconds to sleep after stopping a server
#   SKIP_BUILD=0     1: do not run `cargo build --release`
#   SPILLWAY=...     spillway binary (default: target/release/spillway)
#   SPILLWAY_LOG=info  RUST_LOG for spillway (must keep its info lines visible)
#
# Example smoke run:  ROUNDS=1 RUNTIME=2 bench/ram_vs_nbdkit.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
ALL_WORKLOADS="randread-4k-qd32 randwrite-4k-qd32 seqread-1m-qd8 seqwrite-1m-qd8 randwrite-4k-qd1"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
WORKLOADS=${WORKLOADS//,/ }
ORDER=${ORDER:-abab}
PIN=${PIN:-none}
case $PIN in
    none) PIN_SERVER=(); PIN_FIO=() ;;
    cross) PIN_SERVER=(taskset -c 0); PIN_FIO=(taskset -c 1) ;;
    same) PIN_SERVER=(taskset -c 0); PIN_FIO=(taskset -c 0) ;;
    *) echo "PIN must be none, cross or same" >&2; exit 2 ;;
esac
SIZE=${SIZE:-1G}
SETTLE=${SETTLE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
SPILLWAY=${SPILLWAY:-$ROOT/target/release/spillway}
SPILLWAY_LOG=${SPILLWAY_LOG:-info}
READY_TIMEOUT=${READY_TIMEOUT:-30}
# The read workloads write 512 MiB before their timed part; allow for a slow server.
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 2 + 180))}
PYTHON=${PYTHON:-$(command -v python3 || echo /usr/bin/python3)}

die() { echo "ram_vs_nbdkit: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME must be a positive integer (seconds), got '$RUNTIME'"
[[ $ORDER == abab || $ORDER == abba ]] || die "ORDER must be abab or abba, got '$ORDER'"
for tool in fio nbdkit ss timeout "$PYTHON"; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (needs fio built with libnbd)"
read -r -a WL <<<"$WORKLOADS"
((${#WL[@]} > 0)) || die "WORKLOADS is empty"
for w in "${WL[@]}"; do
    [[ -f $HERE/fio/$w.fio ]] || die "unknown workload '$w' (no bench/fio/$w.fio); known: $ALL_WORKLOADS"
done

# ---------------------------------------------------------------- cleanup
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/spillway-bench.XXXXXX")
SPW_PID="" NBK_PID="" FIO_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pids=() p
    for p in $FIO_PID $SPW_PID $NBK_PID; do
        kill -TERM "$p" 2>/dev/null && pids+=("$p")
    done
    if ((${#pids[@]})); then
        for _ in $(seq 50); do
            local alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        wait "${pids[@]}" 2>/dev/null || true
    fi
    rm -rf "$RUN_TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- build
if [[ $SKIP_BUILD != 1 ]]; then
    log "building: (cd $ROOT && cargo build --release)"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
fi
[[ -x $SPILLWAY ]] || die "spillway binary not found at $SPILLWAY"

# ---------------------------------------------------------------- results dir
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$HERE/results/$STAMP
mkdir -p "$OUT/raw" "$OUT/logs"

{
    echo "# spillway RAM volume vs nbdkit memory"
    echo
    echo "- date: $(date -Is)"
    echo "- command: ROUNDS=$ROUNDS RUNTIME=$RUNTIME WORKLOADS=\"${WL[*]}\" ORDER=$ORDER PIN=$PIN SIZE=$SIZE $0"
    echo "- nproc: $(nproc)"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
    echo "- loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
    echo "- kernel: $(uname -sr)"
    echo "- fio: $(fio --version 2>&1 | head -1)"
    echo "- nbdkit: $(nbdkit --version 2>&1 | head -1)"
    echo "- nbdkit memory plugin: $(nbdkit memory --dump-plugin 2>/dev/null | sed -n 's/^version=//p' | head -1), default allocator (sparse), default threads"
    if command -v nbdinfo >/dev/null; then
        echo "- libnbd (fio's nbd engine): $(nbdinfo --version 2>&1 | grep -m1 libnbd || echo unknown)"
    fi
    echo "- spillway: $SPILLWAY ($("$SPILLWAY" --version 2>/dev/null | head -1 || true)), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit'), $(rustc --version 2>/dev/null || echo 'rustc unknown')"
    echo "- both servers on TCP 127.0.0.1, export size $SIZE, fio region 512 MiB, one connection"
    echo "- rounds: $ROUNDS, runtime per run: ${RUNTIME}s, order: $ORDER, workloads: ${WL[*]}"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo
if ! awk -v n="$(nproc)" '{ exit !($1 <= n / 4) }' /proc/loadavg 2>/dev/null; then
    log "warning: load average $(cut -d' ' -f1 /proc/loadavg) at start: something else is using the CPUs, expect noisy numbers"
fi

# ---------------------------------------------------------------- servers
strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1"; }

# start_spillway LOGFILE -> sets SPW_PID, PORT
start_spillway() {
    local logf=$1 data
    data=$(mktemp -d "$RUN_TMP/spillway-data.XXXXXX")
    RUST_LOG=$SPILLWAY_LOG "${PIN_SERVER[@]}" "$SPILLWAY" serve --memory --data-dir "$data" --listen 127.0.0.1:0 --size "$SIZE" \
        </dev/null >"$logf" 2>&1 &
    SPW_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    until strip_ansi "$logf" | grep -Eq '(^|[^[:alnum:]_-])ready([[:space:]]|$)'; do
        if ! kill -0 "$SPW_PID" 2>/dev/null; then
            cat "$logf" >&2
            die "spillway exited before logging 'ready' (log: $logf)"
        fi
        ((SECONDS < deadline)) || { cat "$logf" >&2; die "spillway not ready after ${READY_TIMEOUT}s"; }
        sleep 0.05
    done
    local addr
    addr=$(strip_ansi "$logf" | grep -oE 'listening on tcp [^[:space:]]+' | tail -1 | awk '{print $4}')
    PORT=${addr##*:}
    [[ $PORT =~ ^[0-9]+$ && $PORT != 0 ]] || { cat "$logf" >&2; die "could not parse the port from spillway's 'listening on tcp' line"; }
}

# start_nbdkit LOGFILE -> sets NBK_PID, PORT
start_nbdkit() {
    local logf=$1 pidf
    pidf=$(mktemp -u "$RUN_TMP/nbdkit.pid.XXXXXX")
    # -p 0: the kernel picks a free port; nbdkit writes the pid file once it
    # is accepting, and ss tells us which port that process listens on.
    "${PIN_SERVER[@]}" nbdkit -f --exit-with-parent -i 127.0.0.1 -p 0 -P "$pidf" memory "$SIZE" \
        </dev/null >"$logf" 2>&1 &
    NBK_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    until [[ -s $pidf ]]; do
        kill -0 "$NBK_PID" 2>/dev/null || { cat "$logf" >&2; die "nbdkit exited early (log: $logf)"; }
        ((SECONDS < deadline)) || die "nbdkit not ready after ${READY_TIMEOUT}s"
        sleep 0.05
    done
    local addr
    addr=$(ss -Hltnp 2>/dev/null | grep -F "pid=$NBK_PID," | awk '{print $4}' | head -1)
    PORT=${addr##*:}
    [[ $PORT =~ ^[0-9]+$ && $PORT != 0 ]] || die "could not find nbdkit's port with ss"
}

# stop_server PID NAME -> sets STOP_RC to the server's exit status
# (not called through $(...): a subshell cannot wait for our children)
stop_server() {
    local pid=$1 name=$2
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "warning: $name (pid $pid) still running 10s after SIGTERM; killing"
        echo "- $name pid $pid needed SIGKILL" >>"$OUT/notes.md"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
}

# ---------------------------------------------------------------- runs
FAILED=0

# run_one SERVER WORKLOAD ROUND
run_one() {
    local server=$1 w=$2 r=$3
    local base="$w.r$r.$server"
    local json="$OUT/raw/$base.json" slog="$OUT/logs/$base.server.log" flog="$OUT/logs/$base.fio.log"
    case $server in
        spillway) start_spillway "$slog" ;;
        nbdkit) start_nbdkit "$slog" ;;
    esac
    local pid
    if [[ $server == spillway ]]; then pid=$SPW_PID; else pid=$NBK_PID; fi

    local rc=0
    URI="nbd://127.0.0.1:$PORT" RUNTIME=$RUNTIME \
        timeout --signal=TERM --kill-after=10 "$FIO_TIMEOUT" \
        "${PIN_FIO[@]}" fio --output-format=json --output="$json" --eta=never "$HERE/fio/$w.fio" \
        </dev/null >"$flog" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID" || rc=$?
    FIO_PID=""

    local died=0
    kill -0 "$pid" 2>/dev/null || died=1
    stop_server "$pid" "$server"
    local src=$STOP_RC
    if [[ $server == spillway ]]; then SPW_PID=""; else NBK_PID=""; fi
    if ((died)); then
        echo "- $base: $server died during the run (exit $src), see logs/$base.server.log" >>"$OUT/notes.md"
    elif [[ $src != 0 ]]; then
        echo "- $base: $server exited $src after SIGTERM (expected 0)" >>"$OUT/notes.md"
    fi

    local summary=""
    if ((rc == 0)) && summary=$("$PYTHON" "$HERE/summarize.py" one "$json" 2>>"$flog"); then
        local iops mibs p99
        read -r iops mibs p99 <<<"$summary"
        printf '[round %d/%d] %-18s %-8s %10s IOPS %9s MiB/s  clat p99 %9s us\n' \
            "$r" "$ROUNDS" "$w" "$server" "$iops" "$mibs" "$p99"
    else
        FAILED=$((FAILED + 1))
        [[ -f $json ]] && mv "$json" "$json.failed" || : >"$json.failed"
        printf '[round %d/%d] %-18s %-8s FAILED (fio exit %s), see %s\n' "$r" "$ROUNDS" "$w" "$server" "$rc" "$flog"
        echo "- $base: fio failed (exit $rc); tail of logs/$base.fio.log:" >>"$OUT/notes.md"
        tail -5 "$flog" | sed 's/^/    /' >>"$OUT/notes.md"
        tail -5 "$flog" | sed 's/^/    /' >&2
    fi
    sleep "$SETTLE"
}

for ((r = 1; r <= ROUNDS; r++)); do
    for w in "${WL[@]}"; do
        if [[ $ORDER == abba && $((r % 2)) == 0 ]]; then
            run_one nbdkit "$w" "$r"
            run_one spillway "$w" "$r"
        else
            run_one spillway "$w" "$r"
            run_one nbdkit "$w" "$r"
        fi
    done
done

# ---------------------------------------------------------------- report
{
    cat "$OUT/env.md"
    echo "- loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown) (fio and the server alone account for about 2)"
    echo
    echo "Median over $ROUNDS round(s) of ${RUNTIME}s each; ratio = median spillway IOPS / median nbdkit IOPS."
    echo
    "$PYTHON" "$HERE/summarize.py" table "$OUT" "${WL[@]}"
    if [[ -s $OUT/notes.md ]]; then
        echo
        echo "Notes:"
        cat "$OUT/notes.md"
    fi
} >"$OUT/table.md"
echo
sed -n '/^- loadavg at end/,$p' "$OUT/table.md"
echo
echo "results: $OUT"
((FAILED == 0)) || die "$FAILED run(s) failed"
