#!/usr/bin/env bash
# The chunk codec pipeline, one core: lz4 and zstd as spillway uses them (64 KiB frames,
# lz4_flex and the zstd crate) against the `lz4` and `zstd` command-line tools on the same
# file (peer time / our time and ratio against ratio: above 1 means we are faster/denser);
# ratio and speed at each frame size and level (how the defaults were chosen); and the
# cost of each whole pipeline: MB/s to build a 4 MiB chunk, and the time a 4 KiB read from
# a frame not in the frame cache adds.
#
#   bench/pipeline.sh                 # corpus: 64 MiB of /usr (binaries, libraries, text)
#   CORPUS=FILE REPS=5 bench/pipeline.sh
#
# Needs: apt `lz4 zstd` (the CLIs).
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${REPS:-3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
corpus="${CORPUS:-$work/corpus}"
if [ -z "${CORPUS:-}" ]; then
  # A block device's worth of ordinary files: what a root file system on an SD card holds.
  # (head closes the pipe early: tar's SIGPIPE is expected, not an error.)
  (tar cf - /usr/bin /usr/lib/x86_64-linux-gnu /usr/share/doc 2>/dev/null || true) | head -c $((64 << 20)) > "$corpus"
fi
for t in lz4 zstd; do command -v "$t" >/dev/null || { echo "install $t (apt-get install lz4 zstd)" >&2; exit 1; }; done

cargo build --release --example pipeline_timing -q
ours=target/release/examples/pipeline_timing
bytes=$(stat -c %s "$corpus")
py=python3

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# corpus: $bytes bytes; $(lz4 --version 2>&1 | head -1); $(zstd --version 2>&1 | head -1)"

# Best wall time of $reps runs of a command whose output goes to a file; prints "seconds bytes".
best_cli() {
  local best="" t0 t1 t
  for _ in $(seq "$reps"); do
    t0=$(date +%s%N)
    "$@" > "$work/out"
    t1=$(date +%s%N)
    t=$(( t1 - t0 ))
    if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
  done
  echo "$("$py" -c "print($best / 1e9)") $(stat -c %s "$work/out")"
}

printf '\n%-34s %9s %9s %9s %9s %9s %9s\n' "vs CLI (1 thread)" "ours GB/s" "CLI GB/s" "speed" "our ratio" "CLI ratio" "ratio/CLI"
row() { # name, our codec, compress CLI..., -- , decompress CLI...
  local name=$1 codec=$2; shift 2
  local j; j=$("$ours" whole "$corpus" "$codec" "$reps")
  read -r ct cs < <(best_cli "$@" "$corpus")
  "$py" -c "
import json, sys
j = json.loads(sys.argv[1]); ct, cs, n = float(sys.argv[2]), int(sys.argv[3]), j['bytes']
ours, cli = n / j['compress_s'] / 1e9, n / ct / 1e9
ro, rc = n / j['stored'], n / cs
print('%-34s %9.3f %9.3f %8.2fx %9.3f %9.3f %8.2fx' % (sys.argv[4], ours, cli, ours / cli, ro, rc, ro / rc))
" "$j" "$ct" "$cs" "$name"
}
row "lz4 compress (CLI: lz4 -1)" lz4 lz4 -1 -c -q
row "zstd:1 compress (CLI: zstd -1)" zstd:1 zstd -1 -T1 -c -q
row "zstd:3 compress (CLI: zstd -3)" zstd:3 zstd -3 -T1 -c -q
row "zstd:9 compress (CLI: zstd -9)" zstd:9 zstd -9 -T1 -c -q

printf '\n%-34s %9s %9s %9s\n' "decompress (1 thread)" "ours GB/s" "CLI GB/s" "speed"
lz4 -1 -c -q "$corpus" > "$work/c.lz4"; zstd -3 -T1 -c -q "$corpus" > "$work/c.zst"
drow() { # our codec, decompress CLI...
  local codec=$1; shift
  local j; j=$("$ours" whole "$corpus" "$codec" "$reps")
  read -r dt _ < <(best_cli "$@")
  "$py" -c "
import json, sys
j = json.loads(sys.argv[1]); n = j['bytes']
ours, cli = n / j['decompress_s'] / 1e9, n / float(sys.argv[2]) / 1e9
print('%-34s %9.3f %9.3f %8.2fx' % (sys.argv[3] + ' decompress', ours, cli, ours / cli))
" "$j" "$dt" "$codec"
}
drow lz4 lz4 -d -c -q "$work/c.lz4"
drow zstd:3 zstd -d -c -q "$work/c.zst"

printf '\n%-8s %7s %7s %10s %10s %12s\n' "codec" "frame" "ratio" "comp GB/s" "dec GB/s" "4K read us"
"$ours" frames "$corpus" "$reps" | "$py" -c "
import json, sys
for l in sys.stdin:
    j = json.loads(l)
    print('%-8s %6dK %7.3f %10.3f %10.3f %12.1f' % (j['codec'], j['frame'] // 1024, j['ratio'], j['compress_gbps'], j['decompress_gbps'], j['read_4k_us']))
"

printf '\n%-24s %10s %10s %10s %12s %12s\n' "4 MiB chunk pipeline" "stored" "par2" "build MB/s" "4K read us" "read +us"
"$ours" chunks "$corpus" "$reps" | "$py" -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin]
base = rows[0]['read_4k_us']
for j in rows:
    print('%-24s %10d %10d %10.1f %12.1f %12.1f' % (j['pipeline'], j['stored'], j['par2'], j['build_mbps'], j['read_4k_us'], j['read_4k_us'] - base))
"
