//! The real Linux NBD client against spillway: a qemu guest (tests/vm, docs/testing.md)
//! attaches `/dev/nbd0` with `nbd-client 10.0.2.2 PORT` (10.0.2.2 is the host's
//! loopback inside qemu's user-mode network), once with one connection and once with
//! four (`-C 4`). In one boot the guest:
//!
//! 1. makes an ext4 file system, mounts it, writes 50 MiB of random data and a small
//!    tree of files, records their sha256, syncs, unmounts; `e2fsck -fn` must be clean;
//! 2. detaches, and asks the host (a marker on the serial console) to SIGKILL spillway
//!    and start it again on the same data directory and port; the host types
//!    `restarted` on the console when it has;
//! 3. attaches the restarted server as `/dev/nbd1` (a cold page cache), where
//!    `e2fsck -fn` must be clean again and every file's sha256 must match;
//! 4. runs fio on `/dev/nbd0` (libaio, direct I/O): a random write pass with crc32c
//!    verify headers, then a random read pass that checks every block. TCG is slow:
//!    this checks correctness, nothing is timed.

mod common;
mod vm;

use std::process::Command;
use std::time::Duration;

/// Size of the export (the restart passes the same value, as it must).
const SIZE: &str = "512M";
/// Files the guest writes: random.bin plus 40 + 40 in the tree.
const FILES: usize = 81;
/// Bound on each waiting step; TCG on a busy 2-core machine is slow.
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

const SCRIPT: &str = r#"
P=@PORT@
C=@CONNS@
attach() {
  i=0
  until nbd-client 10.0.2.2 "$P" "/dev/$1" -C "$C"; do
    i=$((i + 1))
    if [ "$i" -ge 30 ]; then echo "@@fail nbd-client $1 did not connect"; return 1; fi
    sleep 1
  done
  n=$(netstat -tn | grep -c "10.0.2.2:$P .*ESTABLISHED" || true)
  echo "@@step attached /dev/$1: $n connection(s)"
}

attach nbd0
mkfs.ext4 -q -F /dev/nbd0
mount -t ext4 /dev/nbd0 /mnt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=50 2>/dev/null
mkdir -p /mnt/tree/a/b/c /mnt/tree/d
i=1
while [ "$i" -le 40 ]; do
  dd if=/dev/urandom of="/mnt/tree/a/b/c/f$i" bs=1k count="$i" 2>/dev/null
  echo "small file $i" >"/mnt/tree/d/s$i"
  i=$((i + 1))
done
ln -s ../d/s1 /mnt/tree/a/link
(cd /mnt && find . -type f | sort >/tmp/files && xargs sha256sum </tmp/files >/tmp/sums)
echo "@@step wrote $(wc -l </tmp/sums) files"
sync
umount /mnt
e2fsck -fn /dev/nbd0
echo "@@check e2fsck after writing: clean"
nbd-client -d /dev/nbd0

echo "@@host kill-server"
read -r -t 900 reply || true
[ "$reply" = restarted ]

attach nbd1
e2fsck -fn /dev/nbd1
echo "@@check e2fsck after the server restart: clean"
mount -t ext4 -o ro /dev/nbd1 /mnt
(cd /mnt && sha256sum -c /tmp/sums >/tmp/check) || { cat /tmp/check; exit 1; }
echo "@@check sha256 after the server restart: $(grep -c ': OK$' /tmp/check) files OK"
umount /mnt
nbd-client -d /dev/nbd1

attach nbd0
fio --name=write --filename=/dev/nbd0 --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --size=16M --iodepth=16 --verify=crc32c --do_verify=0 --randseed=7 --output-format=terse >/dev/null
fio --name=read --filename=/dev/nbd0 --ioengine=libaio --direct=1 --rw=randread --bs=4k \
    --size=16M --iodepth=16 --verify=crc32c --randseed=7 --output-format=terse >/tmp/fio.out \
  || { cat /tmp/fio.out; exit 1; }
echo "@@check fio randwrite then randread with verify=crc32c: ok"
nbd-client -d /dev/nbd0
"#;

fn kernel_nbd(conns: u32) {
    let Some(kit) = vm::require_vm() else { return };
    let dir = tempfile::Builder::new().prefix("spillway-kernel-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let mut server = common::Server::start(&["--data-dir", data, "--size", SIZE]);
    let port = server.port();
    let script = SCRIPT.replace("@PORT@", &port.to_string()).replace("@CONNS@", &conns.to_string());
    let guest = vm::Guest::new(&format!("kernel_nbd_{conns}_conn"), &script);
    let mut vm = vm::Vm::boot(&kit, &guest);

    if let Err(e) = vm.wait_prefix("@@host kill-server", STEP_TIMEOUT) {
        fail(&vm, e);
    }
    let pid = server.pid().to_string();
    let kill = Command::new("kill").args(["-KILL", &pid]).status().expect("run kill");
    assert!(kill.success(), "kill -KILL {pid}: {kill}");
    drop(server); // reaps the killed process
    let listen = format!("127.0.0.1:{port}");
    server = common::Server::start(&["--data-dir", data, "--size", SIZE, "--listen", &listen]);
    vm.send_line("restarted");

    let rc = vm.finish(STEP_TIMEOUT).unwrap_or_else(|e| fail(&vm, e));
    if rc != 0 {
        fail(&vm, format!("the guest script failed with status {rc}"));
    }
    let log = vm.log();
    let expect = [
        format!("@@step attached /dev/nbd0: {conns} connection(s)"),
        format!("@@step attached /dev/nbd1: {conns} connection(s)"),
        format!("@@step wrote {FILES} files"),
        "@@check e2fsck after writing: clean".to_owned(),
        "@@check e2fsck after the server restart: clean".to_owned(),
        format!("@@check sha256 after the server restart: {FILES} files OK"),
        "@@check fio randwrite then randread with verify=crc32c: ok".to_owned(),
    ];
    for e in &expect {
        if !log.lines().any(|l| l == e) {
            fail(&vm, format!("the guest did not print {e:?}"));
        }
    }
    server.stop();
}

fn fail(vm: &vm::Vm, what: String) -> ! {
    panic!(
        "{what}\n--- serial console (last 80 lines; all of it in {}) ---\n{}",
        vm.log_path().display(),
        vm.log_tail(80)
    )
}

#[test]
fn ext4_restart_and_fio_over_one_connection() {
    kernel_nbd(1);
}

#[test]
fn ext4_restart_and_fio_over_four_connections() {
    kernel_nbd(4);
}
