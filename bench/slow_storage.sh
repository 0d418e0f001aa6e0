#!/usr/bin/env bash
# spillway on emulated slow storage: every fdatasync takes INJECT (10 ms) more,
# through spillway's file-system seam (`serve --inject-sync-latency`), as on an
# SD card or WSL2's 9p. fio writes 4 KiB blocks at random, 32 in flight, for
# RUNTIME seconds, once per durability mode; the table gives milliseconds per
# 4 KiB block (1000 / IOPS) and fio's completion latency.
#
# Targets: <= 0.1 ms/block in batched and relaxed, <= 0.5 ms/block in strict.
#
# Environment (see also bench/durable_lib.sh):
#   MODES="strict batched relaxed"   durability modes (async is accepted too)
#   INJECT=10ms      --inject-sync-latency
#   RUNTIME=20       seconds per fio run
#   REGION=256m      fio's region at the start of the export
#   ROUNDS=1         runs per mode (the table shows the median)
#   RETRIES=2        a run whose fio fails is retried on a fresh server this many
#                    times; failed attempts are kept and counted in the table
#   SIZE=1G          export size
#   SERVE_EXTRA=""   more serve flags for every run, e.g. "--sync-interval 200ms"
#                    (how docs/profiles.md compares sync intervals)
#   DATA_ROOT, SETTLE, SKIP_BUILD, SPILLWAY, SPILLWAY_LOG, LOCK, LOAD_MAX, LOAD_WAIT
#
# Example smoke run:  RUNTIME=3 bench/slow_storage.sh
set -euo pipefail

NAME=slow_storage
source "$(dirname "${BASH_SOURCE[0]}")/durable_lib.sh"

MODES=${MODES:-strict batched relaxed}
MODES=${MODES//,/ }
INJECT=${INJECT:-10ms}
RUNTIME=${RUNTIME:-20}
REGION=${REGION:-256m}
ROUNDS=${ROUNDS:-1}
RETRIES=${RETRIES:-2}
SIZE=${SIZE:-1G}
SERVE_EXTRA=${SERVE_EXTRA:-}
read -r -a EXTRA <<<"$SERVE_EXTRA"
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 2 + 120))}
JOB=$HERE/fio/slow-randwrite-4k-qd32.fio

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "RETRIES must be a number, got '$RETRIES'"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME must be a positive integer (seconds), got '$RUNTIME'"
need_tools taskset fio timeout flock pgrep "$PYTHON"
need_fio_nbd
read -r -a ML <<<"$MODES"
((${#ML[@]} > 0)) || die "MODES is empty"
for m in "${ML[@]}"; do
    [[ $m =~ ^(strict|batched|relaxed|async)$ ]] || die "unknown mode '$m'"
done

build_spillway
make_out slow-storage
snapshot_spillway

CMD="SERVE_EXTRA=\"$SERVE_EXTRA\" MODES=\"${ML[*]}\" INJECT=$INJECT RUNTIME=$RUNTIME REGION=$REGION ROUNDS=$ROUNDS RETRIES=$RETRIES PIN=$PIN $0"
{
    echo "# spillway on emulated slow storage (--inject-sync-latency $INJECT)"
    echo
    echo "- command: $CMD"
    env_header
    echo "- spillway serve --profile server --durability MODE --inject-sync-latency $INJECT --size $SIZE $SERVE_EXTRA (other flags default: --sync-interval 100ms, --sync-bytes 16M, --wal-segment-size 32M)"
    echo "- fio: bench/fio/slow-randwrite-4k-qd32.fio, 4 KiB random writes, iodepth 32, one connection, region $REGION, ${RUNTIME}s, no FLUSH"
    echo "- fresh data dir per run; modes: ${ML[*]}; rounds: $ROUNDS"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo

wait_for_load
echo "- load before measuring: $LOAD_NOTE; $(loadavg3)" | tee -a "$OUT/env.md"
echo

FAILED=0
# attempt MODE ROUND TRY -> 0 if fio succeeded
attempt() {
    local mode=$1 r=$2 try=$3
    local base="$mode.r$r"
    [[ $try == 1 ]] || base="$base.try$try"
    local json="$OUT/raw/$mode.r$r.json" slog="$OUT/logs/$base.server.log" flog="$OUT/logs/$base.fio.log"
    local dir load_at_start
    dir=$(fresh_run_dir)
    start_spillway "$slog" "$dir/spillway-data" --size "$SIZE" --durability "$mode" --inject-sync-latency "$INJECT" \
        --profile server ${EXTRA[@]+"${EXTRA[@]}"}
    load_at_start=$(loadavg1)
    run_fio "$json" "$flog" "$JOB" "nbd://127.0.0.1:$PORT" REGION="$REGION"
    local rc=$FIO_RC died=0
    kill -0 "$SPW_PID" 2>/dev/null || died=1
    stop_server "$SPW_PID" spillway
    local src=$STOP_RC
    SPW_PID=""
    remove_run_data "$dir"
    if ((died)); then
        echo "- $base: spillway died during the run (exit $src), see logs/$base.server.log" >>"$OUT/notes.md"
    elif [[ $src != 0 ]]; then
        echo "- $base: spillway exited $src after SIGTERM (expected 0)" >>"$OUT/notes.md"
    fi
    local summary
    if ((rc == 0)) && summary=$("$PYTHON" "$HERE/durable_summarize.py" one "$json" 2>>"$flog"); then
        local iops mibs p50 p99
        read -r iops mibs p50 p99 <<<"$summary"
        printf '[round %d/%d] %-8s %8s IOPS  %s ms/block  clat p50 %s us p99 %s us  load %s%s\n' "$r" "$ROUNDS" "$mode" "$iops" \
            "$(awk -v i="$iops" 'BEGIN { printf "%.3f", (i > 0 ? 1000 / i : 0) }')" "$p50" "$p99" "$load_at_start" \
            "$([[ $try == 1 ]] || echo "  (try $try)")"
        sleep "$SETTLE"
        return 0
    fi
    printf '[round %d/%d] %-8s FAILED (fio exit %s, try %d), see %s\n' "$r" "$ROUNDS" "$mode" "$rc" "$try" "$flog"
    {
        echo "- $base: fio failed (exit $rc); tail of logs/$base.fio.log:"
        tail -3 "$flog" | sed 's/^/    /'
        if grep -q 'request failed' "$slog"; then
            echo "  spillway logged $(grep -c 'request failed' "$slog") failed request(s), first:"
            strip_ansi "$slog" | grep -m1 'request failed' | sed 's/^/    /'
        fi
    } >>"$OUT/notes.md"
    [[ -f $json ]] && mv "$json" "$OUT/raw/$mode.r$r.try$try.json.failed" || : >"$OUT/raw/$mode.r$r.try$try.json.failed"
    sleep "$SETTLE"
    return 1
}

run_mode() {
    local try
    for ((try = 1; try <= RETRIES + 1; try++)); do
        attempt "$@" "$try" && return 0
    done
    FAILED=$((FAILED + 1))
}

# The whole measurement loop (a minute or two) runs under the shared lock.
bench_lock
for ((r = 1; r <= ROUNDS; r++)); do
    for m in "${ML[@]}"; do
        run_mode "$m" "$r"
    done
done
bench_unlock

{
    cat "$OUT/env.md"
    echo "- loadavg at end: $(loadavg3)"
    echo
    echo "ms per 4 KiB block = 1000 / IOPS (median over $ROUNDS round(s)); every fdatasync takes $INJECT more."
    echo
    "$PYTHON" "$HERE/durable_summarize.py" slow "$OUT" "${ML[*]}"
    if [[ -s $OUT/notes.md ]]; then
        echo
        echo "Notes:"
        cat "$OUT/notes.md"
    fi
} >"$OUT/table.md"
sed -n '/^- loadavg at end/,$p' "$OUT/table.md"
echo
echo "results: $OUT"
((FAILED == 0)) || die "$FAILED run(s) failed on every attempt"
