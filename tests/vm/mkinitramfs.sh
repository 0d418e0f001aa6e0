#!/usr/bin/env bash
# Builds the base initramfs for the kernel tests (see docs/testing.md):
#   mkinitramfs.sh KERNEL_ROOT OUT.cpio.gz [--no-tools]
# KERNEL_ROOT is Debian's linux-image package unpacked with `dpkg -x` (scripts/install-test-deps).
# The archive holds busybox (static), /init (tests/vm/init.sh), the kernel modules for
# virtio-net, virtio-blk, nbd and ext4 with everything they depend on (in load order, in
# /lib/modules/load-order), and nbd-client, mke2fs, e2fsck and fio, each with every library
# `ldd` lists (not with --no-tools: a smaller archive, faster to unpack, for guests that
# only run binaries of their own). A test adds its own script (and any binaries) as a second archive appended to
# this one; see tests/vm/mod.rs.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

kroot=$1
out=$2
tools=1
[ "${3:-}" = --no-tools ] && tools=0
here=$(cd "$(dirname "$0")" && pwd)

vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -n 1)
kver=${vmlinuz##*/vmlinuz-}
moddir="$kroot/lib/modules/$kver/kernel"
[ -d "$moddir" ] || { echo "mkinitramfs: no modules in $moddir" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,root,lib/modules,test}

# busybox and its applets (the static build needs no libraries).
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
# /dev/console must exist before devtmpfs is mounted, or init has no stdout.
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
fi

# Kernel modules. The package has no modules.dep (and kmod is not installed), so the load
# order comes from each module's `depends=` field in its .modinfo section.
declare -A path_of=()
while IFS= read -r -d '' ko; do
  name=$(basename "$ko")
  name=${name%.ko*}
  path_of[${name//-/_}]=$ko
done < <(find "$moddir" -name '*.ko*' -print0)

modinfo_depends() {
  local ko=$1
  case "$ko" in
    *.ko.xz) xz -dc "$ko" ;;
    *.ko.zst) zstd -dc "$ko" ;;
    *.ko.gz) gzip -dc "$ko" ;;
    *) cat "$ko" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}

declare -A seen=()
order=()
visit() {
  local m=${1//-/_}
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  local ko=${path_of[$m]:-}
  if [ -z "$ko" ]; then
    if grep -q "/$m.ko" "$kroot/lib/modules/$kver/modules.builtin" 2>/dev/null; then
      return 0
    fi
    echo "mkinitramfs: module $m not found (and not built in)" >&2
    exit 1
  fi
  local d
  for d in $(modinfo_depends "$ko"); do
    visit "$d"
  done
  order+=("$m")
}
# ext4 (and jbd2) ask the crypto API for "crc32c" at mount time, which no depends= names.
for m in virtio_pci virtio_net virtio_blk nbd crc32c_generic crc32c_intel ext4; do
  visit "$m"
done
for m in "${order[@]}"; do
  ko=${path_of[$m]}
  case "$ko" in
    # busybox insmod loads plain .ko files: decompress.
    *.ko.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$ko" >"$root/lib/modules/$m.ko" ;;
    *) cp "$ko" "$root/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"

# Dynamically linked tools, each with every library ldd lists (the loader included).
copy_with_libs() {
  local bin=$1 dest=${2:-$1} lib
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$bin" "$root$dest"
  # ldd prints `name => /path (addr)` and `/lib64/ld-linux-x86-64.so.2 (addr)`: take every
  # absolute path (Debian's awk has no \s, so match fields instead).
  for lib in $(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
    if [ ! -e "$root$lib" ]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}
if [ "$tools" = 1 ]; then
  copy_with_libs "$(command -v nbd-client)" /sbin/nbd-client
  copy_with_libs "$(command -v mke2fs)" /sbin/mke2fs
  ln -s mke2fs "$root/sbin/mkfs.ext4"
  copy_with_libs "$(command -v e2fsck)" /sbin/e2fsck
  copy_with_libs "$(command -v fio)" /bin/fio
  if [ -f /etc/mke2fs.conf ]; then cp /etc/mke2fs.conf "$root/etc/"; fi
  # fio's libaio engine needs libaio (fio links it; make sure it came along).
  ls "$root"/lib/x86_64-linux-gnu/libaio.so.* >/dev/null
fi

cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
echo "spillway-vm $kver" >"$root/etc/spillway-vm"

(cd "$root" && find . | LC_ALL=C sort | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: $out ($(du -h "$out" | cut -f1)), kernel $kver, modules: ${order[*]}"
