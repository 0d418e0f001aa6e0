#!/usr/bin/env bash
# The WAL knobs the platform profiles set (docs/profiles.md): how each configuration
# changes what the log writes. fio writes 4 KiB blocks at random (FLUSH: see FSYNC) for RUNTIME
# seconds against `spillway serve --durability MODE`, once per configuration, workload
# and data kind; spillway's own metrics (--metrics-listen, scraped before the server
# stops) give what the WAL did:
#   - WAL bytes per written byte: spillway_wal_written_bytes_total over
#     spillway_nbd_bytes_total{op="write"}, scraped once nothing is left to log (record
#     headers and padding included: the log's write amplification, which an SD card
#     pays in time and in wear);
#   - WAL writes (pwrite calls) and syncs per 1,000 blocks written;
#   - the server's CPU time (user + system) per 1,000 blocks, over the whole run;
#   - IOPS, and with EMULATE set, IOPS on an emulated slow device.
#
# Environment (see also bench/durable_lib.sh):
#   CONFIGS="base=;append1M=--wal-append 1M"   semicolon-separated LABEL=SERVE_FLAGS
#   MODE=batched       durability mode of every run
#   DEPTHS="1 32"      fio iodepths
#   COMPRESS="0 50"    fio buffer_compress_percentage per run (0: random data)
#   FSYNC=0            fio sends a FLUSH every FSYNC writes (0: never)
#   EMULATE=""         more serve flags for every run, e.g. the SD-card emulation
#                      "--inject-sync-latency 10ms --inject-write-bandwidth 20M"
#   RUNTIME=10  REGION=256m  SIZE=1G  ROUNDS=1
#   DRAIN_WAIT=30      after fio, seconds to wait for the writer to log what is queued
#                      (spillway_dirty_bytes 0) before the scrape
#   DATA_ROOT, SETTLE, SKIP_BUILD, SPILLWAY, SPILLWAY_LOG, LOCK, LOAD_MAX, LOAD_WAIT, PIN
#
# Example: RUNTIME=5 CONFIGS="base=;append1M=--wal-append 1M" bench/wal_knobs.sh
set -euo pipefail

NAME=wal_knobs
source "$(dirname "${BASH_SOURCE[0]}")/durable_lib.sh"

CONFIGS=${CONFIGS:-base=;append1M=--wal-append 1M}
MODE=${MODE:-batched}
DEPTHS=${DEPTHS:-1 32}
COMPRESS=${COMPRESS:-0 50}
FSYNC=${FSYNC:-0}
EMULATE=${EMULATE:-}
RUNTIME=${RUNTIME:-10}
REGION=${REGION:-256m}
SIZE=${SIZE:-1G}
ROUNDS=${ROUNDS:-1}
DRAIN_WAIT=${DRAIN_WAIT:-30}
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 2 + 120))}
JOB=$HERE/fio/wal-randwrite-4k.fio

[[ $MODE =~ ^(strict|batched|relaxed|async)$ ]] || die "unknown mode '$MODE'"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME must be a positive integer (seconds), got '$RUNTIME'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $FSYNC =~ ^[0-9]+$ ]] || die "FSYNC must be a number, got '$FSYNC'"
need_tools fio timeout flock pgrep curl "$PYTHON"
need_fio_nbd
IFS=';' read -r -a CL <<<"$CONFIGS"
((${#CL[@]} > 0)) || die "CONFIGS is empty"
for c in "${CL[@]}"; do
    [[ $c == *=* && ${c%%=*} =~ ^[A-Za-z0-9_.-]+$ ]] || die "a config must be LABEL=FLAGS, got '$c'"
done
read -r -a DL <<<"$DEPTHS"
read -r -a PL <<<"$COMPRESS"
read -r -a EM <<<"$EMULATE"

build_spillway
make_out wal-knobs
snapshot_spillway

CMD="CONFIGS=\"$CONFIGS\" MODE=$MODE DEPTHS=\"$DEPTHS\" COMPRESS=\"$COMPRESS\" FSYNC=$FSYNC EMULATE=\"$EMULATE\" RUNTIME=$RUNTIME REGION=$REGION ROUNDS=$ROUNDS PIN=$PIN $0"
{
    echo "# spillway WAL knobs: what the log writes per configuration"
    echo
    echo "- command: $CMD"
    env_header
    echo "- spillway serve --profile server --durability $MODE --size $SIZE $EMULATE CONFIG_FLAGS --metrics-listen 127.0.0.1:PORT"
    echo "- fio: bench/fio/wal-randwrite-4k.fio, 4 KiB random writes, one connection, region $REGION, ${RUNTIME}s, a FLUSH every $FSYNC writes (0: none)"
    echo "- fresh data dir per run; configs: $CONFIGS; iodepths: $DEPTHS; compressibility: $COMPRESS; rounds: $ROUNDS"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo

wait_for_load
echo "- load before measuring: $LOAD_NOTE; $(loadavg3)" | tee -a "$OUT/env.md"
echo

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

FAILED=0
run_one() {
    local label=$1 flags=$2 depth=$3 comp=$4 r=$5
    local stem="$label.qd$depth.c$comp.r$r" dir mport rc
    local json="$OUT/raw/$stem.json" slog="$OUT/logs/$stem.server.log" flog="$OUT/logs/$stem.fio.log"
    local -a extra
    read -r -a extra <<<"$flags"
    dir=$(fresh_run_dir)
    mport=$(free_port)
    start_spillway "$slog" "$dir/spillway-data" --size "$SIZE" --durability "$MODE" --profile server \
        --metrics-listen "127.0.0.1:$mport" ${EM[@]+"${EM[@]}"} ${extra[@]+"${extra[@]}"}
    run_fio "$json" "$flog" "$JOB" "nbd://127.0.0.1:$PORT" REGION="$REGION" IODEPTH="$depth" COMPRESS="$comp" FSYNC="$FSYNC"
    rc=$FIO_RC
    # Scrape once the writer has caught up (nothing dirty left), so that every written
    # byte is in the WAL counts; relaxed and async modes hold data until a FLUSH and
    # are scraped after DRAIN_WAIT seconds regardless (noted).
    local waited=0 dirty
    while :; do
        curl -sf "http://127.0.0.1:$mport/metrics" >"$OUT/raw/$stem.metrics" || {
            echo "- $stem: metrics scrape failed" >>"$OUT/notes.md"
            break
        }
        dirty=$(awk '$1 == "spillway_dirty_bytes" { print $2 }' "$OUT/raw/$stem.metrics")
        [[ ${dirty:-0} == 0 ]] && break
        if ((waited >= DRAIN_WAIT * 10)); then
            echo "- $stem: still ${dirty} dirty bytes ${DRAIN_WAIT}s after fio ended; scraped anyway" >>"$OUT/notes.md"
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # The server's CPU time (user + system clock ticks) over the whole run.
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$SPW_PID/stat" >"$OUT/raw/$stem.cpu" 2>/dev/null || :
    stop_server "$SPW_PID" spillway
    SPW_PID=""
    remove_run_data "$dir"
    [[ $STOP_RC == 0 ]] || echo "- $stem: spillway exited $STOP_RC after SIGTERM (expected 0)" >>"$OUT/notes.md"
    if ((rc != 0)); then
        echo "- $stem: fio failed (exit $rc), see logs/$stem.fio.log" >>"$OUT/notes.md"
        FAILED=$((FAILED + 1))
    fi
    printf '%-12s qd%-3s compress %-3s round %s: fio exit %s\n' "$label" "$depth" "$comp" "$r" "$rc"
    sleep "$SETTLE"
}

bench_lock
for ((r = 1; r <= ROUNDS; r++)); do
    for depth in "${DL[@]}"; do
        for comp in "${PL[@]}"; do
            for c in "${CL[@]}"; do
                run_one "${c%%=*}" "${c#*=}" "$depth" "$comp" "$r"
            done
        done
    done
done
bench_unlock

{
    cat "$OUT/env.md"
    echo "- loadavg at end: $(loadavg3)"
    echo
    "$PYTHON" - "$OUT" "$CONFIGS" "$DEPTHS" "$COMPRESS" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, configs, depths, comps, rounds = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), int(sys.argv[5])
labels = [c.split("=", 1)[0] for c in configs.split(";") if c]

def metric(text, name):
    # Prometheus text: "NAME{LABELS} VALUE" or "NAME VALUE"; NAME here includes labels.
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    return 0.0

print("| config | iodepth | data | IOPS | WAL bytes per written byte | WAL writes per 1k blocks | syncs per 1k blocks | server CPU ms per 1k blocks |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for d in depths:
    for c in comps:
        for l in labels:
            rows = []
            for r in range(1, rounds + 1):
                stem = f"{out}/raw/{l}.qd{d}.c{c}.r{r}"
                try:
                    j = json.load(open(stem + ".json"))
                    m = open(stem + ".metrics").read()
                except (OSError, ValueError):
                    continue
                iops = sum(job["write"]["iops"] for job in j["jobs"])
                written = metric(m, 'spillway_nbd_bytes_total{op="write"}')
                if written <= 0:
                    continue
                blocks = written / 4096
                try:
                    cpu = float(open(stem + ".cpu").read())
                except (OSError, ValueError):
                    cpu = float("nan")
                rows.append((iops, metric(m, "spillway_wal_written_bytes_total") / written,
                             1000 * metric(m, "spillway_wal_writes_total") / blocks,
                             1000 * metric(m, "spillway_wal_sync_seconds_count") / blocks,
                             1e6 * cpu / blocks))
            if not rows:
                print(f"| {l} | {d} | {c} % | failed | | | | |")
                continue
            med = [statistics.median(x[i] for x in rows) for i in range(5)]
            data = "random" if c == "0" else f"{c} % compressible"
            print(f"| {l} | {d} | {data} | {med[0]:,.0f} | {med[1]:.2f} | {med[2]:.1f} | {med[3]:.2f} | {med[4]:.0f} |")
EOF
    if [[ -s $OUT/notes.md ]]; then
        echo
        echo "Notes:"
        cat "$OUT/notes.md"
    fi
} >"$OUT/table.md"
sed -n '/^- loadavg at end/,$p' "$OUT/table.md"
echo
echo "results: $OUT"
((FAILED == 0)) || die "$FAILED run(s) failed"
