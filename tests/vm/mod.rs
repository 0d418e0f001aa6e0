//! Boots a small Linux guest in qemu for tests that need the real kernel (the nbd
//! driver, ext4, a power cut). See docs/testing.md.
//!
//! The guest is Debian's kernel (unpacked by scripts/install-test-deps into
//! `SPILLWAY_VM_KERNEL_ROOT`, default /opt/spillway-test/linux) with an initramfs:
//! a base archive built once by tests/vm/mkinitramfs.sh (busybox, the kernel
//! modules, nbd-client, e2fsprogs, fio) and cached under the target directory,
//! plus a small archive per boot with the test's `/test/run.sh` and any host
//! binaries it needs (with their libraries). Its /init (tests/vm/init.sh) runs
//! the script, prints `@@vm result rc=N` and powers off. Everything the guest
//! prints arrives here line by line from the serial console.
//!
//! Networking is qemu's user mode (slirp): the guest is 10.0.2.15/24 with no
//! default route, and 10.0.2.2 reaches the host's loopback, so a server the test
//! starts on 127.0.0.1 is reachable from the guest and nothing else is.
//!
//! Only one qemu runs at a time on the machine: [`Vm::boot`] holds a file lock
//! in the target directory until the VM is gone.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::common;

/// Default place of the unpacked kernel package (scripts/install-test-deps).
const DEFAULT_KERNEL_ROOT: &str = "/opt/spillway-test/linux";
/// Prefix of the lines /init prints.
pub const RESULT_PREFIX: &str = "@@vm result rc=";

fn vm_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spillway-vm");
    fs::create_dir_all(&d).expect("create the VM cache directory");
    d
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("vm")
}

/// A tool on PATH or in the sbin directories (nbd-client, mke2fs and e2fsck live there).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What a guest boots: the kernel (the base initramfs is built on first use).
#[derive(Clone, Debug)]
pub struct Kit {
    pub kernel_root: PathBuf,
    pub vmlinuz: PathBuf,
    pub accel: String,
}

/// The kernel, qemu and the tools for the initramfs. None when something is
/// missing: that panics under `CI=true` and prints a SKIP line otherwise, like
/// `require_tool`.
pub fn require_vm() -> Option<Kit> {
    for tool in ["qemu-system-x86_64", "nbd-client", "mke2fs", "e2fsck", "fio", "ldd", "gzip"] {
        if find_tool(tool).is_none() && !common::require_tool(tool) {
            return None;
        }
    }
    if !common::require_path(Path::new("/bin/busybox"), "busybox-static (/bin/busybox)") {
        return None;
    }
    let root = PathBuf::from(std::env::var("SPILLWAY_VM_KERNEL_ROOT").unwrap_or_else(|_| DEFAULT_KERNEL_ROOT.into()));
    let vmlinuz = fs::read_dir(root.join("boot")).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
    });
    let what = format!("Debian's kernel unpacked in {} (scripts/install-test-deps)", root.display());
    let vmlinuz = match vmlinuz {
        Some(v) => v,
        None => {
            common::require_path(&root.join("boot").join("vmlinuz-*"), &what);
            return None;
        }
    };
    Some(Kit { kernel_root: root, vmlinuz, accel: accel() })
}

/// The base initramfs, with the tools (nbd-client, e2fsprogs, fio) or without,
/// built once per process at most, and reused from the cache across runs.
fn base_initramfs(kit: &Kit, tools: bool) -> PathBuf {
    static WITH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static WITHOUT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = if tools { &WITH } else { &WITHOUT };
    match cell.get_or_init(|| build_base(&kit.kernel_root, &kit.vmlinuz, tools)) {
        Ok(b) => b.clone(),
        Err(e) => panic!("building the test initramfs failed:\n{e}"),
    }
}

/// A stable 64-bit FNV-1a hash (cache keys).
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn file_key(h: u64, p: &Path) -> u64 {
    let m = fs::metadata(p).ok();
    let size = m.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = m
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fnv(fnv(fnv(h, p.to_string_lossy().as_bytes()), &size.to_le_bytes()), &mtime.to_le_bytes())
}

/// Deletes the cached files `PREFIX<16 hex digits>SUFFIX` in `dir` other than
/// `keep` (older builds), so the cache does not grow with every rebuild. Call
/// under the build lock.
fn remove_stale(dir: &Path, prefix: &str, suffix: &str, keep: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let key = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix));
        if key.is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit())) && e.path() != keep {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn lock(path: &Path) -> Flock<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open lock {}: {e}", path.display()));
    Flock::lock(f, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()))
}

/// Builds (or finds in the cache) the base initramfs. The key covers the build
/// script, /init, the kernel and the tools copied in, so a change rebuilds it.
fn build_base(root: &Path, vmlinuz: &Path, tools: bool) -> Result<PathBuf, String> {
    let script = src_dir().join("mkinitramfs.sh");
    let mut key = fnv(0xcbf2_9ce4_8422_2325u64, &[u8::from(tools)]);
    for f in [script.clone(), src_dir().join("init.sh")] {
        key = fnv(key, &fs::read(&f).map_err(|e| format!("read {}: {e}", f.display()))?);
    }
    key = file_key(key, vmlinuz);
    for tool in ["nbd-client", "mke2fs", "e2fsck", "fio", "busybox"] {
        if let Some(p) = find_tool(tool) {
            key = file_key(key, &p);
        }
    }
    let dir = vm_dir();
    let out = dir.join(format!("base-{}-{key:016x}.cpio.gz", if tools { "tools" } else { "min" }));
    let _guard = lock(&dir.join("build.lock"));
    if out.is_file() {
        return Ok(out);
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(root).arg(&out);
    if !tools {
        cmd.arg("--no-tools");
    }
    let res = common::run_capture_timeout(&mut cmd, Duration::from_secs(600));
    if !res.status.success() || !out.is_file() {
        return Err(common::format_output("tests/vm/mkinitramfs.sh", &res));
    }
    eprintln!("{}", String::from_utf8_lossy(&res.stdout).trim_end());
    remove_stale(&dir, &format!("base-{}-", if tools { "tools" } else { "min" }), ".cpio.gz", &out);
    Ok(out)
}

/// `SPILLWAY_VM_ACCEL` (a qemu `-accel` value, e.g. `tcg`), else KVM with a
/// fallback to TCG when /dev/kvm is usable, else TCG. A /dev/kvm provided by
/// `kvm_pvm` (a paravirtualized KVM for sandboxed guests) cannot boot a stock
/// kernel, so it counts as no KVM.
fn accel() -> String {
    if let Ok(a) = std::env::var("SPILLWAY_VM_ACCEL") {
        return a;
    }
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm = Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    let usable = OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if usable && kvm && !pvm {
        "kvm:tcg".into()
    } else {
        "tcg".into()
    }
}

/// What one boot runs.
#[derive(Clone, Debug)]
pub struct Guest {
    /// Name for the log file (target/tmp/spillway-vm/logs/NAME.log).
    pub name: String,
    /// The body of /test/run.sh, run by `sh -eu` with the serial console as
    /// stdin, stdout and stderr.
    pub script: String,
    /// Host binaries to copy in (guest path, host path), each with the
    /// libraries `ldd` lists; debug info is stripped when objcopy is there.
    pub binaries: Vec<(String, PathBuf)>,
    /// Raw disk images, attached as virtio-blk (/dev/vda, /dev/vdb, ...) with cache=none.
    pub disks: Vec<PathBuf>,
    /// User-mode networking (eth0 = 10.0.2.15/24, host loopback at 10.0.2.2).
    pub network: bool,
    /// nbd-client, mke2fs, e2fsck and fio in the initramfs (false: a smaller one).
    pub tools: bool,
    pub mem_mib: u32,
}

impl Guest {
    pub fn new(name: &str, script: &str) -> Guest {
        Guest {
            name: name.into(),
            script: script.into(),
            binaries: Vec::new(),
            disks: Vec::new(),
            network: true,
            tools: true,
            mem_mib: 1024,
        }
    }
}

/// A newc (SVR4, no CRC) cpio archive, as the kernel's initramfs unpacker reads it.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio { buf: Vec::new(), ino: 1000, dirs: Default::default() }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Adds `path` (absolute, in the guest) with its parent directories.
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let rel = path.trim_start_matches('/');
        let mut parent = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(p);
            if self.dirs.insert(parent.clone()) {
                let d = parent.clone();
                self.entry(&d, 0o040755, &[]);
            }
        }
        self.entry(rel, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// `bin` with its debug info stripped (cached by path, size and mtime), or
/// `bin` itself when objcopy is not installed.
fn stripped(bin: &Path) -> PathBuf {
    let Some(objcopy) = find_tool("objcopy") else {
        return bin.to_path_buf();
    };
    let key = file_key(0xcbf2_9ce4_8422_2325, bin);
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = vm_dir();
    let out = dir.join(format!("{name}-{key:016x}.stripped"));
    let _guard = lock(&dir.join("build.lock"));
    if !out.is_file() {
        let tmp = out.with_extension("tmp");
        let mut cmd = Command::new(objcopy);
        cmd.arg("--strip-debug").arg(bin).arg(&tmp);
        let res = common::run_capture(&mut cmd);
        assert!(res.status.success(), "{}", common::format_output("objcopy --strip-debug", &res));
        fs::rename(&tmp, &out).expect("rename the stripped binary");
        remove_stale(&dir, &format!("{name}-"), ".stripped", &out);
    }
    out
}

/// The absolute paths `ldd` lists for `bin` (the loader included).
fn libraries(bin: &Path) -> Vec<PathBuf> {
    let out = common::run_capture(Command::new("ldd").arg(bin));
    let text = common::stdout_of(&out);
    if !out.status.success() {
        // A static binary: ldd says so and exits 1.
        assert!(common::all_output(&out).contains("not a dynamic executable"), "ldd {}: {text}", bin.display());
        return Vec::new();
    }
    text.split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from).collect()
}

fn per_boot_archive(g: &Guest) -> Vec<u8> {
    let mut c = Cpio::new();
    c.file("/test/run.sh", 0o755, g.script.as_bytes());
    let mut libs = std::collections::BTreeSet::new();
    for (guest_path, host) in &g.binaries {
        let data = fs::read(stripped(host)).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        c.file(guest_path, 0o755, &data);
        libs.extend(libraries(host));
    }
    for lib in libs {
        let data = fs::read(&lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display()));
        c.file(&lib.to_string_lossy(), 0o755, &data);
    }
    c.finish()
}

/// A running guest.
pub struct Vm {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Held while qemu runs: one VM at a time on the machine.
    lock: Option<Flock<File>>,
}

impl Vm {
    /// Boots `guest`. Waits (without a limit) for any other test's VM to go away first.
    pub fn boot(kit: &Kit, guest: &Guest) -> Vm {
        let dir = tempfile::Builder::new().prefix("spillway-vm-").tempdir().expect("tempdir");
        let initrd = dir.path().join("initrd.img");
        let mut img = fs::read(base_initramfs(kit, guest.tools)).expect("read the base initramfs");
        // The kernel reads the next archive from a 4-byte boundary.
        img.resize(img.len().next_multiple_of(4), 0);
        img.extend_from_slice(&per_boot_archive(guest));
        fs::write(&initrd, img).expect("write the initramfs");

        let lock_guard = lock(&vm_dir().join("qemu.lock"));
        let mut cmd = Command::new("qemu-system-x86_64");
        for a in kit.accel.split(':') {
            cmd.args(["-accel", a]);
        }
        cmd.args(["-cpu", "max", "-smp", "1", "-m", &guest.mem_mib.to_string()])
            .args(["-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&kit.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"]);
        if guest.network {
            cmd.args(["-netdev", "user,id=n0,ipv6=off", "-device", "virtio-net-pci,netdev=n0,romfile="]);
        } else {
            cmd.args(["-nic", "none"]);
        }
        for d in &guest.disks {
            cmd.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=none", d.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let readers = vec![
            read_lines(child.stdout.take().expect("stdout"), Arc::clone(&log), Some(tx), ""),
            read_lines(child.stderr.take().expect("stderr"), Arc::clone(&log), None, "qemu stderr: "),
        ];
        let logs = vm_dir().join("logs");
        fs::create_dir_all(&logs).expect("create the log directory");
        let stdin = child.stdin.take();
        Vm {
            child: Some(child),
            stdin,
            lines,
            log,
            readers,
            log_path: logs.join(format!("{}.log", guest.name)),
            _dir: dir,
            lock: Some(lock_guard),
        }
    }

    /// Everything the guest printed so far (and qemu's own stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a line that `pred` accepts and returns it. Err when the guest
    /// goes away or `timeout` passes first.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(format!("no {what} within {timeout:?}")),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(format!("the VM ended before {what}")),
            }
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait_prefix(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for(&format!("`{prefix}` line"), timeout, |l| l.starts_with(prefix))
    }

    /// Types `line` and Enter on the guest's serial console.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("qemu stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).and_then(|_| stdin.flush()).expect("write to qemu's stdin");
    }

    /// Waits for the guest's `@@vm result rc=N` and for qemu to exit; returns N.
    pub fn finish(&mut self, timeout: Duration) -> Result<i32, String> {
        let line = self.wait_prefix(RESULT_PREFIX, timeout)?;
        let rc = line[RESULT_PREFIX.len()..].trim().parse().map_err(|_| format!("bad result line {line:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let child = self.child.as_mut().expect("qemu running");
        loop {
            match child.try_wait().expect("try_wait") {
                Some(_) => break,
                None if Instant::now() >= deadline => {
                    self.kill9();
                    return Err("qemu did not exit within 60 s of the guest's poweroff".into());
                }
                None => thread::sleep(Duration::from_millis(50)),
            }
        }
        self.end();
        Ok(rc)
    }

    /// Pulls the plug: SIGKILL to qemu, so the guest gets no chance to write anything back.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.end();
    }

    fn end(&mut self) {
        self.child.take().map(|mut c| c.wait());
        self.stdin.take();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.lock.take();
        let _ = fs::write(&self.log_path, self.log());
    }

    /// Where the whole serial log is written when the VM ends.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.end();
    }
}

fn read_lines<R: Read + Send + 'static>(
    r: R,
    log: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
    prefix: &'static str,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if !buf.ends_with(b"\n") => {
                    // The guest died mid-line (a power cut): keep it in the log, but
                    // never hand a truncated line to a parser.
                    let mut l = log.lock().unwrap();
                    l.push_str(prefix);
                    l.push_str(&String::from_utf8_lossy(&buf).replace('\r', ""));
                    l.push_str(" <incomplete line at EOF>\n");
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                    {
                        let mut l = log.lock().unwrap();
                        l.push_str(prefix);
                        l.push_str(&text);
                        l.push('\n');
                    }
                    if let Some(tx) = &tx {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}
