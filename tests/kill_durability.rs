//! Crash tests: `spillway serve` is SIGKILLed (kill -9) while libnbd clients
//! (tests/py/killtest.py, run with /usr/bin/python3) keep writes, FUA writes
//! and FLUSHes in flight; the server is restarted on the SAME data directory,
//! replays its WAL, and every block of the working set is checked against
//! the promise of the durability mode (see docs/killtest.md):
//!
//! - strict: every write whose reply arrived survives;
//! - batched, relaxed: every FUA write whose reply arrived, and every write
//!   whose reply arrived before a FLUSH was sent and that FLUSH's reply
//!   arrived, survives;
//! - async: nothing is guaranteed;
//! - every mode: a block holds exactly one version written to it (or zeros),
//!   never a torn mix of two, never garbage.
//!
//! Each test runs `SPILLWAY_KILL_CYCLES` (default 30) kill cycles on one data
//! directory; the content read back after each crash is the base the next
//! cycle builds on. The long run:
//!
//! ```text
//! SPILLWAY_KILL_CYCLES=1000 cargo test --release --test kill_durability -- --nocapture
//! ```
//!
//! `SPILLWAY_KILL_SEED=N` fixes the base seed (default: derived from the test
//! name); a failure prints the seeds, the writer's and the checker's output,
//! the server's stderr of the killed and of the restarted run, and keeps the
//! data directory and state file for inspection (`SPILLWAY_KILL_KEEP=0`:
//! delete them). `SPILLWAY_KILL_SERVE_ARGS` adds `spillway serve` flags;
//! `SPILLWAY_KILL_CHECK_MODE` checks against another mode's promise (to show
//! what a weaker mode loses).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{format_output, require_python_nbd, run_capture_timeout, SYSTEM_PYTHON};

/// Blocks in the working set: 512 x 4 KiB = 2 MiB, so overwrites are frequent.
const BLOCKS: u32 = 512;
/// Blocks written by the tests with 1 MiB writes (16 MiB).
const LARGE_BLOCKS: u32 = 4096;
/// Export size (the first start creates the volume; every start passes the same value).
const SIZE: &str = "64M";
/// Default number of kill cycles per test.
const DEFAULT_CYCLES: u64 = 30;
/// The write phase runs this long (randomly, per cycle) before the kill.
const KILL_AFTER_MS: (u64, u64) = (200, 1000);
/// Backstop for the writer if the kill never comes.
const WRITER_SECONDS: &str = "60";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const WRITER_START_TIMEOUT: Duration = Duration::from_secs(30);
const WRITER_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn killtest_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("py").join("killtest.py")
}

fn cycles() -> u64 {
    match std::env::var("SPILLWAY_KILL_CYCLES") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("SPILLWAY_KILL_CYCLES={v:?} is not a number")),
        Err(_) => DEFAULT_CYCLES,
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `SPILLWAY_KILL_SEED`, or a stable hash of the test name.
fn base_seed(name: &str) -> u64 {
    if let Ok(v) = std::env::var("SPILLWAY_KILL_SEED") {
        return v.trim().parse().unwrap_or_else(|_| panic!("SPILLWAY_KILL_SEED={v:?} is not a number"));
    }
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) >> 16
}

/// Python's random.Random takes any int; keep seeds in i64 range for readability.
fn cycle_seed(base: u64, cycle: u64) -> u64 {
    splitmix(base ^ cycle.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 1
}

fn collect_lines<R: Read + Send + 'static>(
    r: R,
    log: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    log.lock().unwrap().push_str(&text);
                    if let Some(tx) = &tx {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

/// One run of `spillway serve` on a given data directory.
struct ServerRun {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
    port: u16,
    unix: PathBuf,
}

impl ServerRun {
    /// Starts the server and waits for `ready`; Err(reason and stderr) when it
    /// exits or does not get ready in time.
    fn start(data: &Path, mode: &str, extra: &[String]) -> Result<ServerRun, String> {
        let sock = data.join("sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--unix"])
            .arg(&sock)
            .args(["--size", SIZE, "--durability", mode])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        match std::env::var("SPILLWAY_TEST_RUST_LOG") {
            Ok(v) => cmd.env("RUST_LOG", v),
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().map_err(|e| format!("cannot spawn spillway: {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let reader = collect_lines(child.stderr.take().expect("piped stderr"), Arc::clone(&log), Some(tx));
        let mut run = ServerRun { child: Some(child), log, reader: Some(reader), port: 0, unix: PathBuf::new() };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut unix = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log = run.kill9();
                return Err(format!("no `ready` within {READY_TIMEOUT:?}\n--- stderr ---\n{log}"));
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim_end();
                    if let Some(rest) = after(line, "listening on tcp ") {
                        let addr = rest.split_whitespace().next().unwrap_or("");
                        run.port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
                    } else if let Some(rest) = after(line, "listening on unix ") {
                        unix = Some(PathBuf::from(rest.split_whitespace().next().unwrap_or("")));
                    } else if line.split_whitespace().any(|w| w == "ready") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = run.child.take().map(|mut c| c.wait());
                    if let Some(r) = run.reader.take() {
                        let _ = r.join();
                    }
                    return Err(format!(
                        "exited before `ready` (status {status:?})\n--- stderr ---\n{}",
                        run.log.lock().unwrap()
                    ));
                }
            }
        }
        if run.port == 0 || unix.as_deref() != Some(sock.as_path()) {
            let log = run.kill9();
            return Err(format!("`ready` without the expected `listening on` lines\n--- stderr ---\n{log}"));
        }
        run.unix = sock;
        Ok(run)
    }

    fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/", self.port)
    }

    fn unix_uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.unix.display())
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// None while running, else how it exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// SIGKILL (std's Child::kill), reap, and return the whole stderr log.
    fn kill9(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }

    /// SIGTERM and wait for the exit; Err(reason) when that fails or times
    /// out (the process is then SIGKILLed; `kill9` still returns the log).
    fn terminate(&mut self) -> Result<ExitStatus, String> {
        let pid = self.child.as_ref().expect("server running").id().to_string();
        match Command::new("kill").args(["-TERM", &pid]).status() {
            Ok(st) if st.success() => {}
            Ok(st) => return Err(format!("kill -TERM {pid} failed: {st}")),
            Err(e) => return Err(format!("kill -TERM {pid}: {e}")),
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(s) = self.exited() {
                self.kill9();
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!("no exit within {STOP_TIMEOUT:?} of SIGTERM"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerRun {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn after<'a>(line: &'a str, needle: &str) -> Option<&'a str> {
    line.find(needle).map(|i| &line[i + needle.len()..])
}

/// The python writer, running in the background.
struct Writer {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    fn spawn(args: &[String]) -> Writer {
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(killtest_py())
            .arg("write")
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {SYSTEM_PYTHON} killtest.py write: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let readers = vec![
            collect_lines(child.stdout.take().expect("stdout"), Arc::clone(&out), Some(tx)),
            collect_lines(child.stderr.take().expect("stderr"), Arc::clone(&out), None),
        ];
        Writer { child, out, readers, lines }
    }

    /// Waits for the `started` line (all connections up, writes flowing).
    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WRITER_START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("started") => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("the writer exited or did not start within {WRITER_START_TIMEOUT:?}")),
            }
        }
    }

    /// Waits for the exit; (status, output). Kills it after a timeout.
    fn finish(mut self) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + WRITER_EXIT_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.out.lock().unwrap().clone();
        (status, out)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn python(args: &[String], timeout: Duration) -> (String, Output) {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(killtest_py()).args(args).env("PYTHONUNBUFFERED", "1");
    let desc = format!("{SYSTEM_PYTHON} tests/py/killtest.py {}", args.join(" "));
    let out = run_capture_timeout(&mut cmd, timeout);
    (desc, out)
}

/// How one test drives the server.
struct KillTest {
    name: &'static str,
    mode: &'static str,
    /// libnbd connections of the writer (alternately over the Unix socket and TCP).
    conns: usize,
    /// Writes on connections 0..conns-1, FLUSHes mostly on the last one.
    flush_elsewhere: bool,
    /// A quarter of the writes are 1 MiB, over a region of [`LARGE_BLOCKS`].
    large: bool,
    /// Extra `spillway serve` flags.
    extra: &'static [&'static str],
}

/// The state of one running test: its directory, the current server run.
struct Ctx {
    t: KillTest,
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    state: PathBuf,
    base: u64,
    cycles: u64,
}

impl Ctx {
    /// Extra `spillway serve` flags: the test's own, then `SPILLWAY_KILL_SERVE_ARGS` (split at whitespace).
    fn args(&self) -> Vec<String> {
        let env = std::env::var("SPILLWAY_KILL_SERVE_ARGS").unwrap_or_default();
        self.t.extra.iter().map(|s| s.to_string()).chain(env.split_whitespace().map(String::from)).collect()
    }

    /// Keeps the directory and panics with everything needed to reproduce.
    fn fail(&mut self, cycle: u64, seed: u64, what: &str, details: &[(&str, String)]) -> ! {
        let keep = std::env::var("SPILLWAY_KILL_KEEP").map(|v| v != "0").unwrap_or(true);
        let kept = match self.dir.take() {
            Some(d) if keep => format!("kept for inspection (SPILLWAY_KILL_KEEP=0: delete): {}", d.keep().display()),
            _ => "deleted (SPILLWAY_KILL_KEEP=0)".to_owned(),
        };
        let t = &self.t;
        let msg_head = format!(
            "{name}: {what}\n  mode {mode} ({conns} connection(s){fe}), cycle {n} of {total}, cycle seed {seed}, \
             base seed {base}\n  rerun: SPILLWAY_KILL_SEED={base} SPILLWAY_KILL_CYCLES={total} cargo test --test \
             kill_durability {name} -- --nocapture\n  (the kill moment depends on timing, so a rerun may not hit \
             the same crash)\n  test directory {kept} (data dir {data}, state file {state})\n",
            name = t.name,
            mode = t.mode,
            conns = t.conns,
            fe = if t.flush_elsewhere { ", FLUSH on another connection" } else { "" },
            n = cycle + 1,
            total = self.cycles,
            base = self.base,
            data = self.data.display(),
            state = self.state.display(),
        );
        let mut msg = msg_head;
        for (title, text) in details {
            msg.push_str(&format!("--- {title} ---\n{}\n", text.trim_end()));
        }
        panic!("{msg}");
    }

    /// `killtest.py write` arguments: the connections alternate between the Unix socket and TCP.
    fn writer_args(&self, server: &ServerRun, cycle: u64, seed: u64) -> Vec<String> {
        let mut a = vec!["--mode".to_owned(), self.t.mode.to_owned()];
        for i in 0..self.t.conns as u64 {
            a.push("--uri".to_owned());
            a.push(if (cycle + i) % 2 == 0 { server.unix_uri() } else { server.tcp_uri() });
        }
        for (k, v) in [
            ("--seconds", WRITER_SECONDS.to_owned()),
            ("--seed", seed.to_string()),
            ("--blocks", if self.t.large { LARGE_BLOCKS } else { BLOCKS }.to_string()),
            ("--state", self.state.to_string_lossy().into_owned()),
        ] {
            a.push(k.to_owned());
            a.push(v);
        }
        if self.t.flush_elsewhere {
            a.push("--flush-elsewhere".into());
        }
        if self.t.large {
            a.push("--large".into());
        }
        a
    }
}

fn run_kill_test(t: KillTest) {
    if !require_python_nbd() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("spillway-kill-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = dir.path().join("state.json");
    let base = base_seed(t.name);
    let cycles = cycles();
    let mut ctx = Ctx { t, dir: Some(dir), data, state, base, cycles };
    let started = Instant::now();
    println!(
        "{}: {} kill cycles, mode {}, {} connection(s), base seed {base}, data dir {}",
        ctx.t.name,
        cycles,
        ctx.t.mode,
        ctx.t.conns,
        ctx.data.display()
    );

    let mut server = match ServerRun::start(&ctx.data, ctx.t.mode, &ctx.args()) {
        Ok(s) => s,
        Err(e) => ctx.fail(0, base, "the first start failed", &[("server", e)]),
    };
    let mut lost_total = 0u64;
    for cycle in 0..cycles {
        let seed = cycle_seed(base, cycle);
        let delay = Duration::from_millis(KILL_AFTER_MS.0 + seed % (KILL_AFTER_MS.1 - KILL_AFTER_MS.0));
        let wargs = ctx.writer_args(&server, cycle, seed);

        // Write phase, then kill -9 in the middle of it.
        let mut writer = Writer::spawn(&wargs);
        if let Err(e) = writer.wait_started() {
            let log = server.kill9();
            let (_, out) = writer.finish();
            ctx.fail(cycle, seed, &e, &[("writer", out), ("server stderr", log)]);
        }
        thread::sleep(delay);
        if let Some(status) = server.exited() {
            let log = server.kill9();
            let (_, out) = writer.finish();
            ctx.fail(
                cycle,
                seed,
                &format!("the server died on its own during the write phase ({status})"),
                &[("writer", out), ("server stderr", log)],
            );
        }
        let killed_log = server.kill9();
        let (wstatus, wout) = writer.finish();
        if wstatus.map(|s| !s.success()).unwrap_or(true) {
            ctx.fail(
                cycle,
                seed,
                &format!("the writer failed after the kill ({wstatus:?}; None = timed out)"),
                &[("writer", wout), ("killed server stderr", killed_log)],
            );
        }
        if wout.contains("ERROR REPLY") {
            ctx.fail(
                cycle,
                seed,
                "the server answered a request with an error before it was killed",
                &[("writer", wout), ("killed server stderr", killed_log)],
            );
        }

        // Restart on the same data directory: the WAL must replay.
        server = match ServerRun::start(&ctx.data, ctx.t.mode, &ctx.args()) {
            Ok(s) => s,
            Err(e) => ctx.fail(
                cycle,
                seed,
                "the restart after kill -9 failed",
                &[("writer", wout), ("killed server stderr", killed_log), ("restarted server", e)],
            ),
        };

        let mut vargs: Vec<String> =
            ["verify", "--uri", &server.unix_uri(), "--mode", ctx.t.mode, "--state", &ctx.state.to_string_lossy()]
                .map(String::from)
                .to_vec();
        // Checking a mode against a stricter promise shows what that mode may lose (a demonstration only).
        if let Ok(rule) = std::env::var("SPILLWAY_KILL_CHECK_MODE") {
            vargs.extend(["--check-mode".to_owned(), rule]);
        }
        let (desc, vout) = python(&vargs, VERIFY_TIMEOUT);
        let vtext = String::from_utf8_lossy(&vout.stdout).into_owned();
        if !vout.status.success() {
            let restarted_log = server.log();
            ctx.fail(
                cycle,
                seed,
                "durability violation (or checker failure) after kill -9",
                &[
                    ("checker", format_output(&desc, &vout)),
                    ("writer", wout),
                    ("killed server stderr", killed_log),
                    ("restarted server stderr", restarted_log),
                ],
            );
        }
        let wsum = wout.lines().find(|l| l.starts_with("write:")).unwrap_or("").trim_start_matches("write: ");
        let vsum = vtext.lines().find(|l| l.starts_with("verify:")).unwrap_or("");
        let stats = vtext.lines().find(|l| l.starts_with("stats:")).unwrap_or("");
        lost_total += stats
            .split(", ")
            .find(|p| p.contains("lost an acknowledged"))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        println!(
            "{} cycle {}/{cycles} seed {seed} kill after {delay:?}: {wsum}\n    {vsum}\n    {stats}",
            ctx.t.name,
            cycle + 1
        );
    }

    // A last write phase ended by a clean shutdown (SIGTERM: in-flight requests finish, exit 0): then every
    // acknowledged write survives, in every mode, so the check uses the strict rule.
    let seed = cycle_seed(base, cycles);
    let wargs = ctx.writer_args(&server, cycles, seed);
    let mut writer = Writer::spawn(&wargs);
    if let Err(e) = writer.wait_started() {
        let log = server.kill9();
        let (_, out) = writer.finish();
        ctx.fail(cycles, seed, &e, &[("writer", out), ("server stderr", log)]);
    }
    thread::sleep(Duration::from_millis(KILL_AFTER_MS.0));
    let term = server.terminate();
    let stopped_log = server.kill9();
    let (wstatus, wout) = writer.finish();
    match term {
        Ok(s) if s.success() => {}
        Ok(s) => ctx.fail(
            cycles,
            seed,
            &format!("exit status {s} after SIGTERM (contract: 0)"),
            &[("writer", wout), ("server stderr", stopped_log)],
        ),
        Err(e) => ctx.fail(cycles, seed, &e, &[("writer", wout), ("server stderr", stopped_log)]),
    }
    if wstatus.map(|s| !s.success()).unwrap_or(true) || wout.contains("ERROR REPLY") {
        ctx.fail(
            cycles,
            seed,
            &format!("the writer failed around the clean shutdown ({wstatus:?})"),
            &[("writer", wout), ("server stderr", stopped_log)],
        );
    }
    drop(server);
    let vol = ctx.data.join("volumes").join("default");
    // No manifest: nothing was ever spilled, so there is nothing to match.
    let matched = if vol.join("manifest").exists() { common::chunks_match_manifest(&vol) } else { Ok(()) };
    if let Err(e) = matched {
        ctx.fail(
            cycles,
            seed,
            "after a clean shutdown the manifest and the chunk objects disagree",
            &[("chunks", e), ("stopped server stderr", stopped_log)],
        );
    }
    let mut again = match ServerRun::start(&ctx.data, ctx.t.mode, &ctx.args()) {
        Ok(s) => s,
        Err(e) => ctx.fail(
            cycles,
            seed,
            "the start after a clean shutdown failed",
            &[("writer", wout), ("stopped server stderr", stopped_log), ("restarted server", e)],
        ),
    };
    let vargs: Vec<String> = [
        "verify",
        "--uri",
        &again.tcp_uri(),
        "--mode",
        ctx.t.mode,
        "--check-mode",
        "strict",
        "--state",
        &ctx.state.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec();
    let (desc, vout) = python(&vargs, VERIFY_TIMEOUT);
    if !vout.status.success() {
        let log = again.log();
        ctx.fail(
            cycles,
            seed,
            "an acknowledged write was lost across a clean shutdown (SIGTERM)",
            &[
                ("checker", format_output(&desc, &vout)),
                ("writer", wout),
                ("stopped server stderr", stopped_log),
                ("restarted server stderr", log),
            ],
        );
    }
    println!(
        "{} clean shutdown: {}\n    {}",
        ctx.t.name,
        wout.lines().find(|l| l.starts_with("write:")).unwrap_or(""),
        String::from_utf8_lossy(&vout.stdout).lines().find(|l| l.starts_with("verify:")).unwrap_or("")
    );
    again.kill9();
    println!(
        "{}: {cycles} kill cycles passed in {:.1?} ({lost_total} block(s) lost an acknowledged write the mode \
         does not guarantee)",
        ctx.t.name,
        started.elapsed()
    );
}

#[test]
fn kill9_strict() {
    run_kill_test(KillTest {
        name: "kill9_strict",
        mode: "strict",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: &[],
    });
}

/// A quarter of the writes are 1 MiB: the syncs they need run while the WAL writer's
/// other thread writes what comes next (docs/wal.md, "Group commit").
#[test]
fn kill9_strict_large_writes() {
    run_kill_test(KillTest {
        name: "kill9_strict_large_writes",
        mode: "strict",
        conns: 1,
        flush_elsewhere: false,
        large: true,
        extra: &[],
    });
}

#[test]
fn kill9_batched() {
    // Every batch appended at once; the other batched tests run with serve's default
    // --wal-append (writes held in memory until 1 MiB, a FLUSH or the interval).
    run_kill_test(KillTest {
        name: "kill9_batched",
        mode: "batched",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: &["--wal-append", "0"],
    });
}

#[test]
fn kill9_relaxed() {
    run_kill_test(KillTest {
        name: "kill9_relaxed",
        mode: "relaxed",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: &[],
    });
}

#[test]
fn kill9_async() {
    run_kill_test(KillTest {
        name: "kill9_async",
        mode: "async",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: &[],
    });
}

/// Three connections (Unix and TCP), writes on two, FLUSH mostly on the
/// third: the server advertises multi-conn, so a FLUSH covers the writes
/// completed on every connection before it was sent.
#[test]
fn kill9_batched_multiconn() {
    run_kill_test(KillTest {
        name: "kill9_batched_multiconn",
        mode: "batched",
        conns: 3,
        flush_elsewhere: true,
        large: false,
        extra: &[],
    });
}

/// LZ4 WAL records: killtest.py's blocks compress by about half, so most records are
/// stored compressed (tests/engine_wal.rs checks that compression happens); a crash must
/// keep the same promise, and a torn LZ4 record must be dropped like a raw one.
#[test]
fn kill9_relaxed_wal_lz4() {
    run_kill_test(KillTest {
        name: "kill9_relaxed_wal_lz4",
        mode: "relaxed",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: &["--wal-compress", "lz4"],
    });
}

/// Flags that make the WAL spill into chunks all the time: 1 MiB segments and at most 4
/// of them, 64 KiB chunks, spill after 100 ms, compaction of anything below 90 % live.
/// Kills then land during spills, uploads, checkpoints and compactions.
const SPILLING: &[&str] = &[
    "--wal-segment-size",
    "1M",
    "--max-wal",
    "4M",
    "--chunk-size",
    "64K",
    "--spill-age",
    "100ms",
    "--compact-below",
    "0.9",
];

#[test]
fn kill9_strict_spilling() {
    run_kill_test(KillTest {
        name: "kill9_strict_spilling",
        mode: "strict",
        conns: 1,
        flush_elsewhere: false,
        large: false,
        extra: SPILLING,
    });
}

#[test]
fn kill9_batched_spilling_multiconn() {
    run_kill_test(KillTest {
        name: "kill9_batched_spilling_multiconn",
        mode: "batched",
        conns: 3,
        flush_elsewhere: true,
        large: false,
        extra: SPILLING,
    });
}

/// The checker itself: after a write phase, blocks are broken on purpose (a
/// torn mix of two versions, garbage, a version older than the guaranteed
/// one, another block's version) and the server is killed and restarted;
/// verify must report exactly those blocks, each with the right diagnosis.
/// Under the async rule (nothing guaranteed) the rollback is allowed, the
/// other three are not.
#[test]
fn checker_detects_sabotaged_blocks() {
    if !require_python_nbd() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("spillway-kill-check-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = dir.path().join("state.json");
    let state_s = state.to_string_lossy().into_owned();
    let mut server = ServerRun::start(&data, "strict", &[]).unwrap_or_else(|e| panic!("start: {e}"));
    let server_log = |s: &ServerRun| s.log();

    // A write phase that ends on its own (time limit) with everything answered.
    let (desc, out) = python(
        &[
            "write",
            "--uri",
            &server.unix_uri(),
            "--uri",
            &server.tcp_uri(),
            "--mode",
            "strict",
            "--seconds",
            "0.4",
            "--seed",
            "7",
            "--blocks",
            &BLOCKS.to_string(),
            "--state",
            &state_s,
        ]
        .map(String::from),
        VERIFY_TIMEOUT,
    );
    assert!(out.status.success(), "{}\n--- server ---\n{}", format_output(&desc, &out), server_log(&server));

    let (desc, out) = python(
        &["sabotage", "--uri", &server.tcp_uri(), "--state", &state_s, "--seed", "11"].map(String::from),
        VERIFY_TIMEOUT,
    );
    assert!(out.status.success(), "{}\n--- server ---\n{}", format_output(&desc, &out), server_log(&server));
    let stext = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stext}");
    // "sabotage: KIND block B: ..."
    let broken: Vec<(String, u64)> = stext
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("sabotage: ")?.split_whitespace();
            let kind = w.next()?.to_owned();
            let _ = w.next()?;
            let b = w.next()?.trim_end_matches(':').parse().ok()?;
            Some((kind, b))
        })
        .collect();
    let kinds: Vec<&str> = broken.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["torn", "garbage", "rollback", "misdirect"], "sabotage output:\n{stext}");

    server.kill9();
    let server = ServerRun::start(&data, "strict", &[]).unwrap_or_else(|e| panic!("restart: {e}"));
    for (rule, expect) in [
        ("strict", &["TORN", "GARBAGE", "LOST DURABLE WRITE", "MISDIRECTED"][..]),
        ("async", &["TORN", "GARBAGE", "MISDIRECTED"][..]),
    ] {
        let (desc, out) = python(
            &["verify", "--uri", &server.unix_uri(), "--mode", "strict", "--check-mode", rule, "--state", &state_s]
                .map(String::from),
            VERIFY_TIMEOUT,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("--- verify under the {rule} rule ---\n{text}");
        assert_eq!(out.status.code(), Some(1), "verify must fail\n{}", format_output(&desc, &out));
        let violations: Vec<&str> = text.lines().filter(|l| l.starts_with("VIOLATION ")).collect();
        assert!(
            text.contains(&format!("{} violations", expect.len())),
            "expected {} violations under the {rule} rule\n{text}",
            expect.len()
        );
        for (kind, b) in &broken {
            let want = match kind.as_str() {
                "torn" => "TORN",
                "garbage" => "GARBAGE",
                "rollback" => "LOST DURABLE WRITE",
                _ => "MISDIRECTED",
            };
            let hit = violations.iter().find(|l| l.starts_with(&format!("VIOLATION block {b} ")));
            if expect.contains(&want) {
                let hit = hit.unwrap_or_else(|| panic!("{kind} block {b} not reported under the {rule} rule\n{text}"));
                assert!(hit.contains(want), "{kind} block {b} misdiagnosed under the {rule} rule: {hit}");
            } else {
                assert!(hit.is_none(), "{kind} block {b} must pass under the {rule} rule\n{text}");
            }
        }
    }
}
