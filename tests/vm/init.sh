#!/bin/sh
# /init of the test initramfs (tests/vm/mkinitramfs.sh): mounts the pseudo file systems,
# loads the modules, brings up the network, runs the test's /test/run.sh, prints
# `@@vm result rc=N` and powers off. The host reads the serial console (ttyS0).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || echo "@@vm insmod $m failed"
done

# User-mode networking: the guest is 10.0.2.15/24 and 10.0.2.2 is the host's loopback.
# No default route, so nothing beyond the slirp's 10.0.2.0/24 is reachable.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
fi

echo "@@vm booted $(uname -r)"
rc=1
if ip route | grep -q '^default'; then
  # Never let a test send traffic beyond the slirp's host address.
  echo "@@vm refusing to run the test: the guest has a default route"
elif [ -f /test/run.sh ]; then
  sh -eu /test/run.sh
  rc=$?
else
  echo "@@vm no /test/run.sh"
fi
sync
echo "@@vm result rc=$rc"
poweroff -f
