#!/usr/bin/env bash
# `spillway import` / `spillway export` against nbdcopy into and out of nbdkit's file plugin,
# on the same sparse image in the same run.
#
# The image: SIZE (default 4G) made with `qemu-img create -f raw`, then DATA_PCT percent of
# it (default 50) written from /dev/urandom in 64 MiB pieces spread over the image, the rest
# holes. Incompressible data: the worst case for spillway's lz4 chunks.
#
# Timed (wall clock and peak RSS from GNU time), ROUNDS times each, alternating:
#   import   spillway import IMG --export bench          (new volume: WAL, spill to lz4 chunks,
#                                                          final sync; fresh data dir per round)
#   peer-in  nbdcopy --flush IMG  -> nbdkit file OUT     (OUT a fresh sparse file of SIZE)
#   export   spillway export bench OUT.img               (holes for zero ranges, fsync)
#   peer-out nbdcopy nbdkit-file(IMG) -> OUT.img         (nbdcopy skips holes via extents; then sync)
# and prints the median seconds, MiB/s of the image size, and the ratios spillway / nbdcopy.
#
# Environment: SIZE=4G DATA_PCT=50 ROUNDS=3 SKIP_BUILD=0 SPILLWAY=target/release/spillway
#              WORK=$TMPDIR (needs about 3 x SIZE x DATA_PCT% free)
# Needs: qemu-img, nbdkit (file plugin), nbdcopy (libnbd-bin), GNU time (/usr/bin/time).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE=${SIZE:-4G}
DATA_PCT=${DATA_PCT:-50}
ROUNDS=${ROUNDS:-3}
SKIP_BUILD=${SKIP_BUILD:-0}
SPILLWAY=${SPILLWAY:-$ROOT/target/release/spillway}

die() { echo "image_vs_nbdcopy: $*" >&2; exit 1; }
for t in qemu-img nbdkit nbdcopy /usr/bin/time; do command -v "$t" >/dev/null || die "$t not found"; done
[ "$SKIP_BUILD" = 1 ] || (cd "$ROOT" && cargo build --release --bin spillway)
[ -x "$SPILLWAY" ] || die "no spillway binary at $SPILLWAY"

work=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/spillway-image-bench.XXXXXX")
nbdkit_pid=""
cleanup() {
  [ -n "$nbdkit_pid" ] && kill "$nbdkit_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

img=$work/image.raw
qemu-img create -q -f raw "$img" "$SIZE"
bytes=$(stat -c %s "$img")
piece=$((64 << 20))
pieces=$((bytes / piece))
want=$((pieces * DATA_PCT / 100))
echo "image: $SIZE, $want of $pieces 64 MiB pieces written from /dev/urandom" >&2
# Spread the data: piece i is written when floor(i*want/pieces) steps up.
for ((i = 0; i < pieces; i++)); do
  if (( (i + 1) * want / pieces > i * want / pieces )); then
    dd if=/dev/urandom of="$img" bs=4M count=16 seek=$((i * 16)) conv=notrunc status=none
  fi
done
sync

echo "spillway: $("$SPILLWAY" --version); $(nbdcopy --version | head -n1); $(nbdkit --version | head -n1)" >&2
echo "nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# timed NAME CMD...: append "NAME seconds peak_rss_kib" to $work/times.
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; die "$name failed"; }
  echo "$name $(cat "$work/t")" >>"$work/times"
}

start_nbdkit() { # FILE: serve it with nbdkit's file plugin on a Unix socket
  rm -f "$work/nbdkit.sock"
  nbdkit -f --exit-with-parent -U "$work/nbdkit.sock" file "$1" &
  nbdkit_pid=$!
  for _ in $(seq 1 100); do [ -S "$work/nbdkit.sock" ] && return 0; sleep 0.1; done
  die "nbdkit did not start"
}
stop_nbdkit() { kill "$nbdkit_pid"; wait "$nbdkit_pid" 2>/dev/null || true; nbdkit_pid=""; }
peer_uri() { echo "nbd+unix:///?socket=$work/nbdkit.sock"; }

: >"$work/times"
for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r/$ROUNDS" >&2
  rm -rf "$work/data" "$work/out.img" "$work/peer.img"
  timed import "$SPILLWAY" import "$img" --export bench --data-dir "$work/data"

  truncate -s "$bytes" "$work/peer.img"
  start_nbdkit "$work/peer.img"
  timed peer-in nbdcopy --flush "$img" "$(peer_uri)"
  stop_nbdkit
  rm -f "$work/peer.img"

  timed export "$SPILLWAY" export bench "$work/out.img" --data-dir "$work/data"
  cmp "$img" "$work/out.img" || die "round $r: the export differs from the image"
  rm -f "$work/out.img"

  start_nbdkit "$img"
  timed peer-out sh -c "nbdcopy '$(peer_uri)' '$work/out.img' && sync -f '$work/out.img'"
  stop_nbdkit
  rm -f "$work/out.img"
done

python3 - "$work/times" "$bytes" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
size = int(sys.argv[2])
t = {}
rss = {}
for name, secs, kib in rows:
    t.setdefault(name, []).append(float(secs))
    rss.setdefault(name, []).append(int(kib))
med = {k: statistics.median(v) for k, v in t.items()}
print(f"| step | median s | MiB/s of the {size >> 20} MiB image | peak RSS MiB | runs |")
print("|---|---|---|---|---|")
for k in ["import", "peer-in", "export", "peer-out"]:
    print(f"| {k} | {med[k]:.2f} | {size / 2**20 / med[k]:.0f} | {max(rss[k]) / 1024:.0f} | {' '.join(f'{x:.2f}' for x in t[k])} |")
print()
print(f"import / nbdcopy-in time ratio:  {med['import'] / med['peer-in']:.2f}  (above 1: spillway slower)")
print(f"export / nbdcopy-out time ratio: {med['export'] / med['peer-out']:.2f}")
EOF
