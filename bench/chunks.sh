#!/usr/bin/env bash
# Chunk objects under load (issue "chunk objects"), against nbdkit's file plugin in the
# same run, with fio's nbd engine over TCP loopback:
#
#   1. sustained 4k random writes, qd32, for RUNTIME seconds over a working set of
#      10x --max-dirty, so the spill and compaction run for real: IOPS, ratio, and CPU
#      seconds per written GiB of each server (CPU read from /proc while it runs);
#   2. 4k random reads, qd32, of data already spilled: written sequentially, server
#      restarted, page cache dropped (cold), then the same run again (warm);
#   3. write amplification: bytes uploaded to the backend (spillway's "spill totals"
#      line at clean shutdown) per byte the client wrote, for the random run of (1) and
#      for one sequential pass of 1 MiB writes.
#
# spillway runs with --durability relaxed (replies at once, syncs on FLUSH), like
# nbdkit file (page cache, syncs on FLUSH); the fio jobs send no FLUSH.
#
# Environment (see also bench/durable_lib.sh):
#   RUNTIME=60       seconds of the random-write run
#   READ_RUNTIME=20  seconds of each random-read run
#   MAX_DIRTY=128M   spillway --max-dirty; the write working set is 10x this
#   READ_SET=512M    data written, then read back at random
#   SEQ_SET=1G       one sequential pass for write amplification
#   SIZE=2G          export size of both servers
#
# Smoke run:  RUNTIME=5 READ_RUNTIME=3 MAX_DIRTY=40M READ_SET=128M SEQ_SET=256M bench/chunks.sh
set -euo pipefail

NAME=chunks
source "$(dirname "${BASH_SOURCE[0]}")/durable_lib.sh"

RUNTIME=${RUNTIME:-60}
READ_RUNTIME=${READ_RUNTIME:-20}
MAX_DIRTY=${MAX_DIRTY:-128M}
READ_SET=${READ_SET:-512M}
SEQ_SET=${SEQ_SET:-1G}
SIZE=${SIZE:-2G}
FIO_TIMEOUT=${FIO_TIMEOUT:-$((RUNTIME * 3 + 600))}
need_tools fio nbdkit ss timeout flock truncate "$PYTHON"
need_fio_nbd

bytes() { numfmt --from=iec "${1%B}"; }
WSET_BYTES=$(($(bytes "$MAX_DIRTY") * 10))
((WSET_BYTES <= $(bytes "$SIZE"))) || die "the working set (10 x MAX_DIRTY) does not fit in SIZE=$SIZE"

build_spillway
make_out chunks
snapshot_spillway
CMD="RUNTIME=$RUNTIME READ_RUNTIME=$READ_RUNTIME MAX_DIRTY=$MAX_DIRTY READ_SET=$READ_SET SEQ_SET=$SEQ_SET SIZE=$SIZE PIN=$PIN $0"
{
    echo "# spillway chunk objects vs nbdkit file plugin"
    echo
    echo "- command: $CMD"
    env_header
    echo "- nbdkit: $(nbdkit --version 2>&1 | head -1), file plugin"
    echo "- spillway: --durability relaxed --max-dirty $MAX_DIRTY, default backend (local directory), codec lz4"
} >"$OUT/env.md"
cat "$OUT/env.md"
echo
wait_for_load

# CPU seconds (user + system) a process has used so far.
cpu_secs() {
    local tck stat
    tck=$(getconf CLK_TCK)
    stat=$(cut -d')' -f2- "/proc/$1/stat")
    awk -v t="$tck" '{printf "%.2f", ($12 + $13) / t}' <<<"$stat"
}

drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]]; then
        echo 3 >/proc/sys/vm/drop_caches
        CACHE_NOTE="page cache dropped"
    else
        CACHE_NOTE="page cache NOT dropped (needs root)"
    fi
}

# fio_run NAME URI ARGS... -> json in $OUT/raw/NAME.json
fio_run() {
    local name=$1 uri=$2
    shift 2
    FIO_RC=0
    timeout --signal=TERM --kill-after=10 "$FIO_TIMEOUT" "${PIN_FIO[@]}" fio --name="$name" --ioengine=nbd \
        --uri="$uri" --output-format=json --output="$OUT/raw/$name.json" --eta=never "$@" \
        </dev/null >"$OUT/logs/$name.fio.log" 2>&1 {LOCK_FD}>&- || FIO_RC=$?
    ((FIO_RC == 0)) || die "fio $name failed (rc $FIO_RC), see $OUT/logs/$name.fio.log"
}

# field JSON DIR KEY: a number from fio's first job ("write" or "read" side).
field() {
    "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]; print(j[sys.argv[3]])' "$@"
}

uploaded() { strip_ansi "$1" | grep -F 'spill totals' | tail -1 | grep -oE 'uploaded_bytes=[0-9]+' | cut -d= -f2; }

start_server() { # SERVER DIR LOG
    case $1 in
        spillway) start_spillway "$3" "$2/spillway-data" --size "$SIZE" --durability relaxed --max-dirty "$MAX_DIRTY"; PID=$SPW_PID ;;
        nbdkit)
            [[ -f $2/nbdkit.img ]] || truncate -s "$SIZE" "$2/nbdkit.img"
            start_nbdkit "$3" file "$2/nbdkit.img"
            PID=$NBK_PID
            ;;
    esac
}

declare -A IOPS CPU GIB RIOPS_COLD RIOPS_WARM AMP
bench_lock
for server in spillway nbdkit; do
    # 1. sustained random writes
    dir=$(fresh_run_dir)
    start_server "$server" "$dir" "$OUT/logs/$server.write.log"
    cpu0=$(cpu_secs "$PID")
    fio_run "$server-randwrite" "nbd://127.0.0.1:$PORT/" --rw=randwrite --bs=4k --iodepth=32 \
        --size="$WSET_BYTES" --time_based=1 --runtime="$RUNTIME" --randrepeat=1 --norandommap=1
    cpu1=$(cpu_secs "$PID")
    stop_server "$PID" "$server"
    json=$OUT/raw/$server-randwrite.json
    IOPS[$server]=$(field "$json" write iops)
    bytes_w=$(field "$json" write io_bytes)
    GIB[$server]=$("$PYTHON" -c "print(f'{$bytes_w / 2**30:.2f}')")
    CPU[$server]=$("$PYTHON" -c "print(f'{($cpu1 - $cpu0) / ($bytes_w / 2**30):.2f}')")
    if [[ $server == spillway ]]; then
        up=$(uploaded "$OUT/logs/$server.write.log")
        AMP[random]=$("$PYTHON" -c "print(f'{${up:-0} / $bytes_w:.2f}')")
    fi
    remove_run_data "$dir"

    # 2. random reads of spilled data, cold then warm
    dir=$(fresh_run_dir)
    start_server "$server" "$dir" "$OUT/logs/$server.fill.log"
    fio_run "$server-fill" "nbd://127.0.0.1:$PORT/" --rw=write --bs=1M --iodepth=8 --size="$READ_SET"
    stop_server "$PID" "$server"
    drop_caches
    start_server "$server" "$dir" "$OUT/logs/$server.read.log"
    for pass in cold warm; do
        fio_run "$server-randread-$pass" "nbd://127.0.0.1:$PORT/" --rw=randread --bs=4k --iodepth=32 \
            --size="$READ_SET" --time_based=1 --runtime="$READ_RUNTIME" --randrepeat=1 --norandommap=1
    done
    stop_server "$PID" "$server"
    RIOPS_COLD[$server]=$(field "$OUT/raw/$server-randread-cold.json" read iops)
    RIOPS_WARM[$server]=$(field "$OUT/raw/$server-randread-warm.json" read iops)
    remove_run_data "$dir"
done

# 3. sequential write amplification (spillway only)
dir=$(fresh_run_dir)
start_server spillway "$dir" "$OUT/logs/spillway.seq.log"
fio_run spillway-seqwrite "nbd://127.0.0.1:$PORT/" --rw=write --bs=1M --iodepth=8 --size="$SEQ_SET"
stop_server "$PID" spillway
bytes_w=$(field "$OUT/raw/spillway-seqwrite.json" write io_bytes)
up=$(uploaded "$OUT/logs/spillway.seq.log")
AMP[sequential]=$("$PYTHON" -c "print(f'{${up:-0} / $bytes_w:.2f}')")
remove_run_data "$dir"
bench_unlock

ratio() { "$PYTHON" -c "print(f'{$1 / $2:.2f}x')"; }
{
    echo
    echo "## Sustained 4k random writes, qd32, ${RUNTIME}s, working set $((WSET_BYTES >> 20)) MiB"
    echo
    echo "| server | IOPS | GiB written | CPU s per written GiB |"
    echo "|---|---:|---:|---:|"
    for s in spillway nbdkit; do printf '| %s | %.0f | %s | %s |\n' "$s" "${IOPS[$s]}" "${GIB[$s]}" "${CPU[$s]}"; done
    echo
    echo "ratio spillway / nbdkit IOPS: $(ratio "${IOPS[spillway]}" "${IOPS[nbdkit]}")"
    echo
    echo "## 4k random reads of spilled data, qd32, ${READ_RUNTIME}s each, $READ_SET written ($CACHE_NOTE before the cold run)"
    echo
    echo "| pass | spillway IOPS | nbdkit IOPS | ratio |"
    echo "|---|---:|---:|---:|"
    printf '| cold | %.0f | %.0f | %s |\n' "${RIOPS_COLD[spillway]}" "${RIOPS_COLD[nbdkit]}" "$(ratio "${RIOPS_COLD[spillway]}" "${RIOPS_COLD[nbdkit]}")"
    printf '| warm | %.0f | %.0f | %s |\n' "${RIOPS_WARM[spillway]}" "${RIOPS_WARM[nbdkit]}" "$(ratio "${RIOPS_WARM[spillway]}" "${RIOPS_WARM[nbdkit]}")"
    echo
    echo "## Write amplification: backend bytes uploaded per byte written (after lz4, spills and compaction)"
    echo
    echo "| workload | backend bytes / client bytes |"
    echo "|---|---:|"
    echo "| 4k random writes (run 1) | ${AMP[random]} |"
    echo "| 1 MiB sequential, $SEQ_SET | ${AMP[sequential]} |"
} | tee "$OUT/results.md"
