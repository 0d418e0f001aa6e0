# Shared helpers for the durable-engine benchmarks (sourced, not run):
#   bench/durable_vs_nbdkit.sh, bench/slow_storage.sh, bench/syscalls.sh.
# Same conventions as bench/ram_vs_nbdkit.sh: fresh server per run, port from
# spillway's `listening on tcp HOST:PORT` line after its `ready` line, nbdkit's
# port from ss, SIGTERM to stop, a cleanup trap that stops everything.
#
# The sourcing script sets NAME (for messages) before sourcing, and may set
# any of these beforehand (all have defaults):
#   LOCK=/tmp/spillway-bench.lock  flock(1) lock shared by every benchmark on the machine
#   LOCK_WAIT=3600                 seconds to wait for that lock before giving up
#   LOAD_MAX=1.5                   wait until the 1-minute load average is below this...
#   LOAD_WAIT=900                  ...for at most this many seconds (then warn and go on)
#   LOAD_POLL=10                   seconds between two looks at /proc/loadavg
#   DATA_ROOT=...                  where data dirs / nbdkit files go (default: under
#                                  the results dir, i.e. bench/results/, on the real disk)
#   PIN=none                       none: the kernel places processes; cross: servers on
#                                  CPU 0, fio on CPU 1; same: all on CPU 0 (as in
#                                  ram_vs_nbdkit.sh: qd1 latency on a 2-vCPU VM depends
#                                  on where the kernel puts the threads)
#   SKIP_BUILD, SPILLWAY, SPILLWAY_LOG, READY_TIMEOUT, STOP_TIMEOUT, SETTLE

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
NAME=${NAME:-bench}

SETTLE=${SETTLE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
SPILLWAY=${SPILLWAY:-$ROOT/target/release/spillway}
SPILLWAY_LOG=${SPILLWAY_LOG:-info}
READY_TIMEOUT=${READY_TIMEOUT:-30}
# A durable server syncs its WAL on SIGTERM; give it time before SIGKILL.
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
LOCK=${LOCK:-/tmp/spillway-bench.lock}
LOCK_WAIT=${LOCK_WAIT:-3600}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-900}
LOAD_POLL=${LOAD_POLL:-10}
PYTHON=${PYTHON:-$(command -v python3 || echo /usr/bin/python3)}
PIN=${PIN:-none}
case $PIN in
    none) PIN_SERVER=() PIN_FIO=() ;;
    cross) PIN_SERVER=(taskset -c 0) PIN_FIO=(taskset -c 1) ;;
    same) PIN_SERVER=(taskset -c 0) PIN_FIO=(taskset -c 0) ;;
    *) echo "$NAME: PIN must be none, cross or same, got '$PIN'" >&2; exit 2 ;;
esac

die() { echo "$NAME: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
    done
}

need_fio_nbd() {
    fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (needs fio built with libnbd)"
}

loadavg1() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown; }
loadavg3() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }

# ---------------------------------------------------------------- cleanup
# Every pid the script starts goes into one of these; cleanup stops them all.
SPW_PID="" SPW_WRAP_PID="" NBK_PID="" FIO_PID=""
RUN_TMP=""
SPW_WRAP=()
# The lock file is opened once, here; children get it closed ({LOCK_FD}>&-).
exec {LOCK_FD}>>"$LOCK" || { echo "$NAME: cannot open the lock file $LOCK" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pids=() p
    # The real server first (under strace, SPW_WRAP_PID is strace itself,
    # which then exits on its own once its tracee is gone).
    for p in $FIO_PID $SPW_PID $NBK_PID $SPW_WRAP_PID; do
        kill -TERM "$p" 2>/dev/null && pids+=("$p")
    done
    if ((${#pids[@]})); then
        for _ in $(seq 100); do
            local alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        wait "${pids[@]}" 2>/dev/null || true
    fi
    flock -u "$LOCK_FD" 2>/dev/null
    if [[ -n $RUN_TMP && -d $RUN_TMP ]]; then
        rm -rf "$RUN_TMP"
        [[ ${DATA_ROOT_OURS:-0} == 1 ]] && { rmdir "$DATA_ROOT" 2>/dev/null || true; }
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- the shared lock
# flock on a file descriptor of this shell (no flock(1) child to signal), taken
# around each measurement and released between them. Compatible with
# `flock /tmp/spillway-bench.lock COMMAND` used by other benchmarks.
# Already running under `flock /tmp/spillway-bench.lock bench/<script>.sh`?
# Then an ancestor holds the lock (and we inherited its descriptor): taking it
# again on our own descriptor would wait for ourselves forever. /proc/locks
# names the pid that took each flock lock, by device:inode.
lock_holder_ancestor() {
    local dev ino holders p
    dev=$(stat -c %D "$LOCK" 2>/dev/null) || return 1
    ino=$(stat -c %i "$LOCK" 2>/dev/null) || return 1
    holders=$(awk -v ino="$ino" '$2 == "FLOCK" { n = split($6, a, ":"); if (a[n] == ino) print $5 }' /proc/locks 2>/dev/null)
    [[ -n $holders ]] || return 1
    p=$$
    while [[ -n $p && $p -gt 1 ]]; do
        for h in $holders; do
            if [[ $h == "$p" ]]; then
                echo "$p"
                return 0
            fi
        done
        p=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
    done
    return 1
}
LOCK_NESTED=""
if LOCK_HOLDER=$(lock_holder_ancestor); then
    LOCK_NESTED=1
    echo "$NAME: already running under the benchmark lock $LOCK (held by ancestor pid $LOCK_HOLDER); not taking it again" >&2
fi

bench_lock() {
    [[ -n $LOCK_NESTED ]] && return 0
    if ! flock -n "$LOCK_FD"; then
        log "waiting for the benchmark lock $LOCK (held by another benchmark run)..."
        flock -w "$LOCK_WAIT" "$LOCK_FD" || die "could not take $LOCK within ${LOCK_WAIT}s"
    fi
}
bench_unlock() {
    [[ -n $LOCK_NESTED ]] && return 0
    flock -u "$LOCK_FD"
}

# ---------------------------------------------------------------- load average
# wait_for_load: wait until the 1-minute load average is below LOAD_MAX,
# polling every LOAD_POLL s for at most LOAD_WAIT s; then go on regardless,
# with a warning. Sets LOAD_SEEN (the load when it returned) and LOAD_NOTE.
wait_for_load() {
    local start=$SECONDS l
    LOAD_NOTE=""
    while :; do
        l=$(loadavg1)
        if awk -v l="$l" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; then
            LOAD_SEEN=$l
            log "load average $l < $LOAD_MAX after $((SECONDS - start))s of waiting"
            LOAD_NOTE="1-min load $l (< $LOAD_MAX) after waiting $((SECONDS - start))s"
            return 0
        fi
        if ((SECONDS - start >= LOAD_WAIT)); then
            LOAD_SEEN=$l
            log "WARNING: load average still $l (>= $LOAD_MAX) after ${LOAD_WAIT}s; measuring anyway, expect noisy numbers"
            LOAD_NOTE="WARNING: 1-min load $l, still >= $LOAD_MAX after waiting ${LOAD_WAIT}s; measured anyway"
            return 0
        fi
        if (((SECONDS - start) % 60 < LOAD_POLL)); then
            log "load average $l >= $LOAD_MAX; waiting (up to ${LOAD_WAIT}s, $((SECONDS - start))s so far): $(loadavg3)"
        fi
        sleep "$LOAD_POLL"
    done
}

# ---------------------------------------------------------------- build, dirs
build_spillway() {
    if [[ $SKIP_BUILD != 1 ]]; then
        log "building: (cd $ROOT && cargo build --release)"
        (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
    fi
    [[ -x $SPILLWAY ]] || die "spillway binary not found at $SPILLWAY"
}

# make_out SUFFIX -> sets OUT (results dir), DATA_ROOT (on the real disk), RUN_TMP
make_out() {
    local suffix=$1
    OUT=$HERE/results/$(date +%Y%m%d-%H%M%S)-$suffix
    mkdir -p "$OUT/raw" "$OUT/logs"
    if [[ -z ${DATA_ROOT:-} ]]; then
        DATA_ROOT=$OUT/data
        DATA_ROOT_OURS=1
    fi
    mkdir -p "$DATA_ROOT"
    RUN_TMP=$(mktemp -d "$DATA_ROOT/run.XXXXXX")
    local fstype
    # findmnt names ext4 as ext4 (stat -f says "ext2/ext3" for all three).
    fstype=$(findmnt -no FSTYPE -T "$RUN_TMP" 2>/dev/null || stat -f -c %T "$RUN_TMP" 2>/dev/null || echo unknown)
    DATA_FS="$fstype, $(df -P "$RUN_TMP" | awk 'NR==2 {print $1 " mounted on " $6}')"
    case $fstype in
        tmpfs | ramfs) die "DATA_ROOT=$DATA_ROOT is on $fstype; put it on a real disk (e.g. DATA_ROOT=/var/tmp/spillway-bench)" ;;
    esac
}

# snapshot_spillway: copy the binary into the run's temporary dir and use the
# copy, so a rebuild of target/release during a long run cannot mix binaries.
snapshot_spillway() {
    SPILLWAY_ORIG=$SPILLWAY
    SPILLWAY_SHA=$(sha256sum "$SPILLWAY" | cut -c1-16)
    cp "$SPILLWAY" "$RUN_TMP/spillway"
    SPILLWAY=$RUN_TMP/spillway
}

# A fresh, empty directory for one run (removed by remove_run_data).
fresh_run_dir() { mktemp -d "$RUN_TMP/run.XXXXXX"; }

# remove_run_data DIR: delete a run's data and let the disk settle, so that
# write-back from one run does not land in the next one.
remove_run_data() {
    rm -rf "$1"
    sync -f "$RUN_TMP" 2>/dev/null || sync
}

env_header() {
    echo "- date: $(date -Is)"
    echo "- nproc: $(nproc)"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
    echo "- kernel: $(uname -sr)"
    echo "- fio: $(fio --version 2>&1 | head -1)"
    local dirty
    dirty=$(git -C "$ROOT" status --porcelain -- src nbd Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | paste -sd' ' -)
    echo "- spillway: ${SPILLWAY_ORIG:-$SPILLWAY} ($("$SPILLWAY" --version 2>/dev/null | head -1 || true), sha256 ${SPILLWAY_SHA:-?}, built $(date -r "${SPILLWAY_ORIG:-$SPILLWAY}" -Is)), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')${dirty:+ + uncommitted changes in: $dirty}, $(rustc --version 2>/dev/null || echo 'rustc unknown')"
    echo "- data on: $DATA_ROOT ($DATA_FS)"
    echo "- lock: $LOCK; CPU pinning: PIN=$PIN${PIN_SERVER:+ (servers: ${PIN_SERVER[*]}, fio: ${PIN_FIO[*]})}"
}

# ---------------------------------------------------------------- costs
# proc_cpu_seconds PID -> user + system CPU seconds of the process so far (all its
# threads), or nan if it is gone.
proc_cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo nan
}

# data_disk_written -> bytes written so far to the block device that holds the data
# (from /proc/diskstats), or nan when that device is not known.
data_disk_written() {
    local dev
    dev=$(df -P "$RUN_TMP" 2>/dev/null | awk 'NR==2 {print $1}')
    dev=${dev#/dev/}
    awk -v d="$dev" '$3 == d { printf "%.0f\n", $10 * 512; found = 1 } END { if (!found) print "nan" }' /proc/diskstats
}

# ---------------------------------------------------------------- servers
strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1"; }

# start_spillway LOGFILE DATADIR [SERVE_ARGS...] -> sets SPW_PID, PORT
#   With SPW_WRAP=(strace ...) set, runs "${SPW_WRAP[@]}" spillway ...; then
#   SPW_WRAP_PID is the wrapper's pid and SPW_PID the spillway process under it.
start_spillway() {
    local logf=$1 data=$2
    shift 2
    if ((${#SPW_WRAP[@]})); then
        RUST_LOG=$SPILLWAY_LOG "${SPW_WRAP[@]}" "${PIN_SERVER[@]}" "$SPILLWAY" serve --data-dir "$data" --listen 127.0.0.1:0 "$@" \
            </dev/null >"$logf" 2>&1 {LOCK_FD}>&- &
        SPW_WRAP_PID=$!
        SPW_PID=""
    else
        RUST_LOG=$SPILLWAY_LOG "${PIN_SERVER[@]}" "$SPILLWAY" serve --data-dir "$data" --listen 127.0.0.1:0 "$@" \
            </dev/null >"$logf" 2>&1 {LOCK_FD}>&- &
        SPW_PID=$!
        SPW_WRAP_PID=""
    fi
    local watch=${SPW_WRAP_PID:-$SPW_PID}
    local deadline=$((SECONDS + READY_TIMEOUT))
    until strip_ansi "$logf" | grep -Eq '(^|[^[:alnum:]_-])ready([[:space:]]|$)'; do
        if ! kill -0 "$watch" 2>/dev/null; then
            cat "$logf" >&2
            die "spillway exited before logging 'ready' (log: $logf)"
        fi
        ((SECONDS < deadline)) || { cat "$logf" >&2; die "spillway not ready after ${READY_TIMEOUT}s"; }
        sleep 0.05
    done
    if [[ -n $SPW_WRAP_PID ]]; then
        # The wrapper (strace) forked spillway: its only child.
        SPW_PID=$(pgrep -P "$SPW_WRAP_PID" | head -1)
        [[ -n $SPW_PID ]] || die "could not find spillway under pid $SPW_WRAP_PID"
    fi
    local addr
    addr=$(strip_ansi "$logf" | grep -oE 'listening on tcp [^[:space:]]+' | tail -1 | awk '{print $4}')
    PORT=${addr##*:}
    [[ $PORT =~ ^[0-9]+$ && $PORT != 0 ]] || { cat "$logf" >&2; die "could not parse the port from spillway's 'listening on tcp' line"; }
}

# start_nbdkit LOGFILE NBDKIT_ARGS... -> sets NBK_PID, PORT
#   e.g. start_nbdkit log file /path/disk.img
#        start_nbdkit log --filter=fua file /path/disk.img fuamode=force
start_nbdkit() {
    local logf=$1 pidf
    shift
    pidf=$(mktemp -u "$RUN_TMP/nbdkit.pid.XXXXXX")
    "${PIN_SERVER[@]}" nbdkit -f --exit-with-parent -i 127.0.0.1 -p 0 -P "$pidf" "$@" \
        </dev/null >"$logf" 2>&1 {LOCK_FD}>&- &
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

# stop_server PID NAME [WRAPPER_PID] -> sets STOP_RC to the server's exit status
# (under strace, strace's exit status, which is its tracee's). Not called
# through $(...): a subshell cannot wait for our children.
stop_server() {
    local pid=$1 name=$2 wrap=${3:-}
    kill -TERM "$pid" 2>/dev/null || true
    # (Under strace the exited server stays a zombie until strace reaps it,
    # which it does at once; kill -0 sees it until then.)
    for _ in $(seq $((STOP_TIMEOUT * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "warning: $name (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM; killing"
        echo "- $name pid $pid needed SIGKILL" >>"$OUT/notes.md"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    STOP_RC=0
    wait "${wrap:-$pid}" 2>/dev/null || STOP_RC=$?
}

# run_fio JSON FIOLOG JOBFILE URI [ENV=VALUE...] -> sets FIO_RC
#   Runs fio with a timeout (FIO_TIMEOUT) in the background so that Ctrl-C
#   reaches cleanup; the job file's ${VARS} come from URI, RUNTIME and ENV.
run_fio() {
    local json=$1 flog=$2 job=$3 uri=$4
    shift 4
    FIO_RC=0
    env URI="$uri" RUNTIME="$RUNTIME" "$@" \
        timeout --signal=TERM --kill-after=10 "$FIO_TIMEOUT" \
        "${PIN_FIO[@]}" fio --output-format=json --output="$json" --eta=never "$job" \
        </dev/null >"$flog" 2>&1 {LOCK_FD}>&- &
    FIO_PID=$!
    wait "$FIO_PID" || FIO_RC=$?
    FIO_PID=""
}
