#!/usr/bin/env bash
# Benchmark spillway's durable volume against nbdkit's file plugin with fio's
# nbd engine, in two pairings with the same durability promise:
#
#   relaxed: spillway --durability relaxed    vs  nbdkit file FILE
#            (writes replied to at once; both make data durable on FLUSH/FUA)
#   strict:  spillway --durability strict     vs  nbdkit --filter=fua file FILE fuamode=force
#            (every write durable before its reply)
#
# For each round, pairing and workload (bench/fio/<workload>.fio) this starts a
# fresh server on a fresh data dir / fresh `truncate -s 1G` file, runs fio
# against it over TCP loopback, stops it, deletes its data, and does the same
# for the other server (A B A B). Each A/B pair runs under the machine-wide
# benchmark lock (flock /tmp/spillway-bench.lock). It prints the median IOPS
# and MiB/s over rounds and the ratio spillway/peer.
#
# A second table gives what each run cost per GiB the client moved: the server's CPU
# seconds, fio's CPU seconds, and the bytes written to the data disk per byte fio wrote.
# On a small machine fio and the server share the CPUs, so these bound the ratio.
#
# With CEILING=1 (the default) each round also runs every workload once against
# `nbdkit null`, a server that stores nothing (writes are dropped, reads are
# zeroes). What fio reaches against it is what this client, this protocol and
# this machine allow a server with nbdkit's per-request costs: the table gives
# it as a ratio to the peer next to spillway's, so a row whose ceiling is
# below TARGET cannot meet TARGET by storage work alone.
#
# With DISK_ALONE=1 (the default) each round also runs the strict pairing's write
# workloads with no NBD server at all: fio's psync engine on the data disk, one
# job per request in flight, each job writing a file of its own and calling
# fdatasync after every write, the way nbdkit with fuamode=force serves each
# request. For the 1 MiB row that is the best durable pattern found for this
# disk (bench/README.md); group commit makes fewer syncs, so for 4 KiB rows it
# is the peer's pattern, not a bound on spillway.
#
# Environment (see also bench/durable_lib.sh):
#   ROUNDS=3         rounds
#   RUNTIME=10       seconds per timed fio run
#   PAIRINGS="relaxed strict"
#   WORKLOADS="..."  subset, space- or comma-separated (default: all five)
#   ORDER=abab       abab: spillway first in every pair; abba: peer first in even rounds
#   SIZE=1G          export size of both servers (and of nbdkit's file)
#   TARGET=1.25      ratio the table checks each row against
#   RETRIES=2        a run whose fio fails (e.g. an I/O error) is retried on a fresh
#                    server this many times; failed attempts are kept and counted
#   CEILING=1        0 skips the nbdkit null runs
#   DISK_ALONE=1     0 skips the strict write workloads' runs of fio alone on the disk
#   DISK_PROBE=1     0 skips the 3 s fdatasync-latency probe of the data disk
#   DATA_ROOT=...    where the data goes (default: the results dir, real disk)
#   SETTLE, SKIP_BUILD, SPILLWAY, SPILLWAY_LOG, LOCK, LOAD_MAX, LOAD_WAIT
#
# Example smoke run:  ROUNDS=1 RUNTIME=2 bench/durable_vs_nbdkit.sh
set -euo pipefail

NAME=durable_vs_nbdkit
source "$(dirname "${BASH_SOURCE[0]}")/durable_lib.sh"

ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
ALL_WORKLOADS="randwrite-4k-qd32 randread-4k-qd32 seqwrite-1m-qd8 seqread-1m-qd8 randwrite-4k-qd1"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
WORKLOADS=${WORKLOADS//,/ }
PAIRINGS=${PAIRINGS:-relaxed strict}
PAIRINGS=${PAIRINGS//,/ }
ORDER=${ORDER:-abab}
SIZE=${SIZE:-1G}
TARGET=${TARGET:-1.25}
DISK_PROBE=${DISK_PROBE:-1}
CEILING=${CEILING:-1}
DISK_ALONE=${DISK_ALONE:-1}
RETRIES=${RETRIES:-2}
# The read workloads write 512 MiB first; with every write synced that can be slow.
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 2 + 300))}

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME must be a positive integer (seconds), got '$RUNTIME'"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "RETRIES must be a number, got '$RETRIES'"
[[ $ORDER == abab || $ORDER == abba ]] || die "ORDER must be abab or abba, got '$ORDER'"
need_tools taskset fio nbdkit ss timeout flock truncate pgrep "$PYTHON"
need_fio_nbd
nbdkit file --version >/dev/null 2>&1 || die "nbdkit has no file plugin"
nbdkit --filter=fua null --version >/dev/null 2>&1 || die "nbdkit has no fua filter (nbdkit-fua-filter)"
[[ $CEILING == 0 || $CEILING == 1 ]] || die "CEILING must be 0 or 1, got '$CEILING'"
read -r -a WL <<<"$WORKLOADS"
read -r -a PL <<<"$PAIRINGS"
((${#WL[@]} > 0)) || die "WORKLOADS is empty"
((${#PL[@]} > 0)) || die "PAIRINGS is empty"
for w in "${WL[@]}"; do
    [[ -f $HERE/fio/$w.fio ]] || die "unknown workload '$w' (no bench/fio/$w.fio); known: $ALL_WORKLOADS"
done
for p in "${PL[@]}"; do
    [[ $p == relaxed || $p == strict ]] || die "unknown pairing '$p' (known: relaxed strict)"
done

build_spillway
make_out durable-vs-nbdkit
snapshot_spillway
for p in "${PL[@]}"; do mkdir -p "$OUT/raw/$p"; done
[[ $CEILING == 0 ]] || mkdir -p "$OUT/raw/ceiling"
[[ $DISK_ALONE == 0 ]] || mkdir -p "$OUT/raw/disk"

CMD="ROUNDS=$ROUNDS RUNTIME=$RUNTIME RETRIES=$RETRIES PAIRINGS=\"${PL[*]}\" WORKLOADS=\"${WL[*]}\" ORDER=$ORDER SIZE=$SIZE PIN=$PIN CEILING=$CEILING $0"
{
    echo "# spillway durable volume vs nbdkit file plugin"
    echo
    echo "- command: $CMD"
    env_header
    echo "- nbdkit: $(nbdkit --version 2>&1 | head -1), file plugin, default threads; strict pairing adds --filter=fua fuamode=force"
    if command -v nbdinfo >/dev/null; then
        echo "- libnbd (fio's nbd engine): $(nbdinfo --version 2>&1 | grep -m1 libnbd || echo unknown)"
    fi
    [[ $CEILING == 0 ]] || echo "- ceiling: \`nbdkit null $SIZE\` (stores nothing), each workload once per round"
    echo "- both servers on TCP 127.0.0.1, export size $SIZE, fio region 512 MiB, one connection"
    echo "- fresh spillway data dir / fresh \`truncate -s $SIZE\` nbdkit file for every run, deleted (and synced) after it"
    echo "- rounds: $ROUNDS, runtime per run: ${RUNTIME}s, order: $ORDER, pairings: ${PL[*]}, workloads: ${WL[*]}"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo

wait_for_load
echo "- load before measuring: $LOAD_NOTE; $(loadavg3)" | tee -a "$OUT/env.md"

# ---------------------------------------------------------------- disk probe
# How long one fdatasync takes on the data disk: what a strict server, or
# nbdkit with fuamode=force, pays per write (or per group of writes).
if [[ $DISK_PROBE == 1 ]]; then
    bench_lock
    probe_dir=$(fresh_run_dir)
    if fio --name=fdatasync-probe --directory="$probe_dir" --ioengine=psync --rw=randwrite --bs=4k \
        --size=64m --fdatasync=1 --time_based=1 --runtime=3 --output-format=json \
        --output="$OUT/raw/disk-probe.json" --eta=never >"$OUT/logs/disk-probe.log" 2>&1; then
        probe=$("$PYTHON" - "$OUT/raw/disk-probe.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]
s = j.get("sync", {})
lat = s.get("lat_ns", {})
pct = lat.get("percentile", {})
print(f"4 KiB write + fdatasync, qd1: {j['write']['iops']:.0f} IOPS; "
      f"fdatasync mean {lat.get('mean', 0) / 1000:.0f} us, "
      f"p50 {pct.get('50.000000', 0) / 1000:.0f} us, p99 {pct.get('99.000000', 0) / 1000:.0f} us")
EOF
        ) || probe="(could not parse the probe)"
    else
        probe="(probe failed, see logs/disk-probe.log)"
    fi
    remove_run_data "$probe_dir"
    bench_unlock
    echo "- data disk: $probe" | tee -a "$OUT/env.md"
fi
echo

# ---------------------------------------------------------------- runs
FAILED=0

# attempt PAIRING SERVER WORKLOAD ROUND TRY -> 0 if fio succeeded; JSON in $json
attempt() {
    local pairing=$1 server=$2 w=$3 r=$4 try=$5
    local base="$w.r$r.$server"
    [[ $try == 1 ]] || base="$base.try$try"
    json="$OUT/raw/$pairing/$w.r$r.$server.json"
    local slog="$OUT/logs/$pairing.$base.server.log" flog="$OUT/logs/$pairing.$base.fio.log"
    local dir pid
    dir=$(fresh_run_dir)
    case $server in
        spillway)
            start_spillway "$slog" "$dir/spillway-data" --size "$SIZE" --durability "$pairing"
            pid=$SPW_PID
            ;;
        nbdkit)
            truncate -s "$SIZE" "$dir/nbdkit.img"
            if [[ $pairing == strict ]]; then
                start_nbdkit "$slog" --filter=fua file "$dir/nbdkit.img" fuamode=force
            else
                start_nbdkit "$slog" file "$dir/nbdkit.img"
            fi
            pid=$NBK_PID
            ;;
        null)
            start_nbdkit "$slog" null "$SIZE"
            pid=$NBK_PID
            ;;
    esac
    local load_at_start disk0 cpu
    load_at_start=$(loadavg1)
    disk0=$(data_disk_written)

    run_fio "$json" "$flog" "$HERE/fio/$w.fio" "nbd://127.0.0.1:$PORT"
    local rc=$FIO_RC
    cpu=$(proc_cpu_seconds "$pid")

    local died=0
    kill -0 "$pid" 2>/dev/null || died=1
    stop_server "$pid" "$server"
    local src=$STOP_RC
    # What the run cost: the server's CPU seconds (start-up to the end of fio) and the
    # bytes written to the data disk until the server stopped (durable_summarize.py).
    echo "$cpu $(awk -v a="$disk0" -v b="$(data_disk_written)" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : b - a }')" \
        >"${json%.json}.cost"
    if [[ $server == spillway ]]; then SPW_PID=""; else NBK_PID=""; fi
    remove_run_data "$dir"
    if ((died)); then
        echo "- $pairing/$base: $server died during the run (exit $src), see logs/$pairing.$base.server.log" >>"$OUT/notes.md"
    elif [[ $src != 0 ]]; then
        echo "- $pairing/$base: $server exited $src after SIGTERM (expected 0)" >>"$OUT/notes.md"
    fi

    local summary=""
    if ((rc == 0)) && summary=$("$PYTHON" "$HERE/durable_summarize.py" one "$json" 2>>"$flog"); then
        local iops mibs p50 p99
        read -r iops mibs p50 p99 <<<"$summary"
        printf '[round %d/%d] %-7s %-18s %-8s %9s IOPS %8s MiB/s  clat p50 %8s us p99 %9s us  load %s%s\n' \
            "$r" "$ROUNDS" "$pairing" "$w" "$server" "$iops" "$mibs" "$p50" "$p99" "$load_at_start" \
            "$([[ $try == 1 ]] || echo "  (try $try)")"
        sleep "$SETTLE"
        return 0
    fi
    printf '[round %d/%d] %-7s %-18s %-8s FAILED (fio exit %s, try %d), see %s\n' "$r" "$ROUNDS" "$pairing" "$w" "$server" "$rc" "$try" "$flog"
    {
        echo "- $pairing/$base: fio failed (exit $rc); tail of logs/$pairing.$base.fio.log:"
        tail -3 "$flog" | sed 's/^/    /'
        if [[ $server == spillway ]] && grep -q 'request failed' "$slog"; then
            echo "  spillway logged $(grep -c 'request failed' "$slog") failed request(s), first:"
            strip_ansi "$slog" | grep -m1 'request failed' | sed 's/^/    /'
        fi
    } >>"$OUT/notes.md"
    tail -3 "$flog" | sed 's/^/    /' >&2
    # Keep the failed output under a name the table counts as a failed attempt.
    [[ -f $json ]] && mv "$json" "$OUT/raw/$pairing/$w.r$r.$server.try$try.json.failed" ||
        : >"$OUT/raw/$pairing/$w.r$r.$server.try$try.json.failed"
    sleep "$SETTLE"
    return 1
}

# run_one PAIRING SERVER WORKLOAD ROUND: up to 1 + RETRIES attempts, each on a
# fresh server and fresh data; every failed attempt is kept and reported.
run_one() {
    local try json
    for ((try = 1; try <= RETRIES + 1; try++)); do
        attempt "$@" "$try" && return 0
    done
    # The ceiling is context, not a result: its failure is in notes.md only.
    [[ $1 == ceiling ]] || FAILED=$((FAILED + 1))
}

# run_disk WORKLOAD ROUND: a strict write workload's pattern with fio alone on the
# data disk (see DISK_ALONE above); other workloads are skipped. Context, like the
# ceiling: a failure is noted, never fatal.
run_disk() {
    local w=$1 r=$2 rw bs qd dir rc=0
    [[ $w =~ ^(rand|seq)write-([0-9]+[km])-qd([0-9]+)$ ]] || return 0
    rw=write
    [[ ${BASH_REMATCH[1]} == seq ]] || rw=randwrite
    bs=${BASH_REMATCH[2]} qd=${BASH_REMATCH[3]}
    local json="$OUT/raw/disk/$w.r$r.disk.json" flog="$OUT/logs/disk.$w.r$r.fio.log"
    dir=$(fresh_run_dir)
    # The same 512 MiB as the NBD runs, split between the jobs.
    timeout --signal=TERM --kill-after=10 "$FIO_TIMEOUT" "${PIN_FIO[@]}" \
        fio --name=disk-alone --directory="$dir" --ioengine=psync --rw="$rw" --bs="$bs" \
        --numjobs="$qd" --size=$((512 / qd))m --fdatasync=1 --randrepeat=1 --norandommap=1 \
        --time_based=1 --runtime="$RUNTIME" --group_reporting=1 \
        --output-format=json --output="$json" --eta=never </dev/null >"$flog" 2>&1 {LOCK_FD}>&- || rc=$?
    remove_run_data "$dir"
    if ((rc != 0)); then
        echo "- disk/$w.r$r: fio alone on the disk failed (exit $rc), see logs/disk.$w.r$r.fio.log" >>"$OUT/notes.md"
        [[ -f $json ]] && mv "$json" "$json.failed"
        return 0
    fi
    local summary iops mibs
    summary=$("$PYTHON" "$HERE/durable_summarize.py" one "$json" 2>>"$flog") || return 0
    read -r iops mibs _ <<<"$summary"
    printf '[round %d/%d] %-7s %-18s %-8s %9s IOPS %8s MiB/s  (fio alone on the data disk, %s jobs, fdatasync per write)\n' \
        "$r" "$ROUNDS" disk "$w" fio "$iops" "$mibs" "$qd"
    sleep "$SETTLE"
}

for ((r = 1; r <= ROUNDS; r++)); do
    for p in "${PL[@]}"; do
        for w in "${WL[@]}"; do
            # One A/B pair at a time under the shared lock: nothing else
            # benchmarks on this machine between the two halves of a pair.
            bench_lock
            if [[ $ORDER == abba && $((r % 2)) == 0 ]]; then
                run_one "$p" nbdkit "$w" "$r"
                run_one "$p" spillway "$w" "$r"
            else
                run_one "$p" spillway "$w" "$r"
                run_one "$p" nbdkit "$w" "$r"
            fi
            # Right after the pair, under the same lock: the disk at the same moment.
            [[ $DISK_ALONE == 0 || $p != strict ]] || run_disk "$w" "$r"
            bench_unlock
        done
    done
    if [[ $CEILING == 1 ]]; then
        for w in "${WL[@]}"; do
            bench_lock
            run_one ceiling null "$w" "$r"
            bench_unlock
        done
    fi
done

# ---------------------------------------------------------------- report
{
    cat "$OUT/env.md"
    echo "- loadavg at end: $(loadavg3) (fio and the server alone account for about 2)"
    echo
    echo "Median over $ROUNDS round(s) of ${RUNTIME}s each (only rounds in which both servers of a pair succeeded); ratio = median spillway IOPS / median peer IOPS (same block size, so also the MiB/s ratio); target ${TARGET}x."
    echo
    "$PYTHON" "$HERE/durable_summarize.py" peers "$OUT" "${PL[*]}" "${WL[*]}" "$TARGET" "$ROUNDS"
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
((FAILED == 0)) || die "$FAILED run(s) failed on every attempt"
