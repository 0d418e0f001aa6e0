#!/usr/bin/env bash
# Count spillway's write and sync system calls per 4 KiB block written, in each
# durability mode. spillway runs under
#   strace -f -c -e trace=write,writev,sendmsg,pwrite64,pwritev,pwritev2,fsync,fdatasync,sync_file_range
# while fio writes 4 KiB blocks at random, 32 in flight, for RUNTIME seconds
# (bench/fio/randwrite-4k-qd32.fio, no FLUSH); blocks written = fio's total
# write IOs. strace slows the server down a lot: the COUNTS per block are the
# result, not the speed.
#
# How calls are classified (by name; see bench/README.md):
#   pwrite64/pwritev/pwritev2  WAL writes (only the WAL writer thread uses positioned writes)
#   fdatasync                  WAL syncs
#   fsync, sync_file_range     metadata (volume.meta, directories) at start-up / segment creation
#   writev, sendmsg            NBD replies on the TCP socket (sendmsg: a connection
#                              thread that kept its turn sends without waiting)
#   write                      everything else: mostly eventfd wake-ups between
#                              tokio threads and the WAL writer, plus log lines
# With DECODE=1 (the default) a second, shorter run per mode under
# `strace -f -yy` (no -c) records the file behind every call's descriptor and
# checks that classification.
#
# Environment (see also bench/durable_lib.sh):
#   MODES="strict batched relaxed async"
#   RUNTIME=10         seconds of the counted fio run
#   DECODE=1           0 skips the decode pass
#   DECODE_RUNTIME=5   seconds of each decode run
#   RETRIES=2          a run whose fio fails is retried on a fresh server this
#                      many times; failed attempts are kept and listed
#   STRACE_SECCOMP=1   pass --seccomp-bpf (strace stops only on the traced
#                      calls: same counts, less slowdown); 0 to leave it out
#   SIZE=1G, DATA_ROOT, SETTLE, SKIP_BUILD, SPILLWAY, SPILLWAY_LOG, LOCK, LOAD_MAX, LOAD_WAIT
#
# Example smoke run:  RUNTIME=2 DECODE_RUNTIME=2 bench/syscalls.sh
set -euo pipefail

NAME=syscalls
source "$(dirname "${BASH_SOURCE[0]}")/durable_lib.sh"

MODES=${MODES:-strict batched relaxed async}
MODES=${MODES//,/ }
RUNTIME=${RUNTIME:-10}
DECODE=${DECODE:-1}
RETRIES=${RETRIES:-2}
DECODE_RUNTIME=${DECODE_RUNTIME:-5}
STRACE_SECCOMP=${STRACE_SECCOMP:-1}
SIZE=${SIZE:-1G}
TRACE_SET=write,writev,sendmsg,pwrite64,pwritev,pwritev2,fsync,fdatasync,sync_file_range
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 3 + 120))}
JOB=$HERE/fio/randwrite-4k-qd32.fio

if ! command -v strace >/dev/null; then
    die "strace is not installed; it is needed to count system calls. On Debian/Ubuntu: apt-get install strace"
fi
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME must be a positive integer (seconds), got '$RUNTIME'"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "RETRIES must be a number, got '$RETRIES'"
need_tools taskset fio timeout flock pgrep "$PYTHON"
need_fio_nbd
read -r -a ML <<<"$MODES"
((${#ML[@]} > 0)) || die "MODES is empty"
for m in "${ML[@]}"; do
    [[ $m =~ ^(strict|batched|relaxed|async)$ ]] || die "unknown mode '$m'"
done

STRACE_OPTS=(-f)
if [[ $STRACE_SECCOMP == 1 ]]; then
    if strace -f --seccomp-bpf -e trace=write -o /dev/null true 2>/dev/null; then
        STRACE_OPTS+=(--seccomp-bpf)
    else
        log "warning: strace --seccomp-bpf does not work here; tracing without it (slower server)"
    fi
fi

build_spillway
make_out syscalls
snapshot_spillway
mkdir -p "$OUT/strace"

CMD="MODES=\"${ML[*]}\" RUNTIME=$RUNTIME DECODE=$DECODE DECODE_RUNTIME=$DECODE_RUNTIME STRACE_SECCOMP=$STRACE_SECCOMP RETRIES=$RETRIES PIN=$PIN $0"
{
    echo "# spillway write/sync system calls per 4 KiB block"
    echo
    echo "- command: $CMD"
    env_header
    echo "- strace: $(strace -V 2>&1 | head -1); strace ${STRACE_OPTS[*]} -c -e trace=$TRACE_SET -o strace/MODE.summary spillway serve ..."
    echo "- fio: bench/fio/randwrite-4k-qd32.fio (4 KiB random writes, iodepth 32, one connection, 512 MiB region, no FLUSH), ${RUNTIME}s"
    echo "- fresh data dir per run; spillway serve --durability MODE --size $SIZE, other flags default; modes: ${ML[*]}"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo

wait_for_load
echo "- load before measuring: $LOAD_NOTE; $(loadavg3)" | tee -a "$OUT/env.md"
echo

FAILED=0
# attempt MODE KIND(count|decode) TRY -> 0 if fio succeeded
attempt() {
    local mode=$1 kind=$2 try=$3 stem base json slog flog dir out
    if [[ $kind == count ]]; then stem=$mode; else stem=$mode.decode; fi
    base=$stem
    [[ $try == 1 ]] || base="$stem.try$try"
    if [[ $kind == count ]]; then
        out=$OUT/strace/$mode.summary
        SPW_WRAP=(strace "${STRACE_OPTS[@]}" -c -e "trace=$TRACE_SET" -o "$out")
    else
        out=$OUT/strace/$mode.trace
        SPW_WRAP=(strace "${STRACE_OPTS[@]}" -yy -e "trace=$TRACE_SET" -o "$out")
    fi
    json="$OUT/raw/$stem.json" slog="$OUT/logs/$base.server.log" flog="$OUT/logs/$base.fio.log"
    dir=$(fresh_run_dir)
    start_spillway "$slog" "$dir/spillway-data" --size "$SIZE" --durability "$mode"
    local rt=$RUNTIME
    [[ $kind == decode ]] && rt=$DECODE_RUNTIME
    RUNTIME=$rt run_fio "$json" "$flog" "$JOB" "nbd://127.0.0.1:$PORT"
    local rc=$FIO_RC
    stop_server "$SPW_PID" "spillway under strace" "$SPW_WRAP_PID"
    local src=$STOP_RC
    SPW_PID="" SPW_WRAP_PID="" SPW_WRAP=()
    remove_run_data "$dir"
    [[ $src == 0 ]] || echo "- $base: strace/spillway exited $src after SIGTERM (expected 0)" >>"$OUT/notes.md"
    local summary
    if ((rc == 0)) && summary=$("$PYTHON" "$HERE/durable_summarize.py" one "$json" 2>>"$flog"); then
        local iops mibs p50 p99
        read -r iops mibs p50 p99 <<<"$summary"
        printf '%-8s %-6s %8s IOPS under strace (%ss)%s\n' "$mode" "$kind" "$iops" "$rt" "$([[ $try == 1 ]] || echo "  (try $try)")"
        sleep "$SETTLE"
        return 0
    fi
    printf '%-8s %-6s FAILED (fio exit %s, try %d), see %s\n' "$mode" "$kind" "$rc" "$try" "$flog"
    {
        echo "- $base: fio failed (exit $rc); tail of logs/$base.fio.log:"
        tail -3 "$flog" | sed 's/^/    /'
        if grep -q 'request failed' "$slog"; then
            echo "  spillway logged $(grep -c 'request failed' "$slog") failed request(s), first:"
            strip_ansi "$slog" | grep -m1 'request failed' | sed 's/^/    /'
        fi
    } >>"$OUT/notes.md"
    [[ -f $json ]] && mv "$json" "$OUT/raw/$stem.try$try.json.failed" || : >"$OUT/raw/$stem.try$try.json.failed"
    [[ -f $out ]] && mv "$out" "$out.try$try.failed"
    sleep "$SETTLE"
    return 1
}

run_traced() {
    local try
    for ((try = 1; try <= RETRIES + 1; try++)); do
        attempt "$@" "$try" && return 0
    done
    FAILED=$((FAILED + 1))
}

# The whole measurement loop runs under the shared lock.
bench_lock
for m in "${ML[@]}"; do
    run_traced "$m" count
done
if [[ $DECODE == 1 ]]; then
    for m in "${ML[@]}"; do
        run_traced "$m" decode
    done
fi
bench_unlock

{
    cat "$OUT/env.md"
    echo "- loadavg at end: $(loadavg3)"
    echo
    echo "Calls per 1,000 4 KiB blocks written (blocks = fio's write IOs). write-type = write + writev + sendmsg + pwrite64 + pwritev + pwritev2;"
    echo "sync-type = fdatasync + fsync + sync_file_range. WAL writes = pwrite*, WAL syncs = fdatasync, socket writes = writev + sendmsg,"
    echo "other write() = eventfd wake-ups and log lines (see the decode table). Counts cover the server's whole life under strace."
    echo
    "$PYTHON" "$HERE/durable_summarize.py" syscalls "$OUT" "${ML[*]}"
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
