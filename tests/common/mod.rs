//! Shared harness for the black-box client integration tests.
//!
//! Every test starts its own `spillway serve` on an ephemeral TCP port and a
//! Unix socket inside a fresh temporary directory, drives it with real NBD
//! clients (nbdinfo, nbdcopy, qemu-io, fio, libnbd's Python bindings) and
//! tears it down again.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The Python interpreter that sees Debian's `nbd` module (the pyenv one
/// first on PATH does not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// How long the server may take to log `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time limit for one client command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);

fn test_name() -> String {
    thread::current().name().map(str::to_owned).unwrap_or_else(|| "<unknown test>".to_owned())
}

fn ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

fn missing(what: &str) -> bool {
    if ci() {
        panic!("CI=true: missing tool {what} fails the suite");
    }
    eprintln!("SKIP: {}: {what} not installed", test_name());
    false
}

fn on_path(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(name);
        candidate
            .metadata()
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
            .unwrap_or(false)
    })
}

/// Whether the external tool `name` is on PATH. When it is not: panics under
/// `CI=true`, otherwise prints a SKIP line and returns false (the caller
/// should return early).
pub fn require_tool(name: &str) -> bool {
    if on_path(name) {
        true
    } else {
        missing(name)
    }
}

/// Whether the file `path` exists; `what` names it (and how to get it) in the
/// SKIP line or CI failure. Same CI / SKIP behaviour as [`require_tool`].
pub fn require_path(path: &Path, what: &str) -> bool {
    if path.exists() {
        true
    } else {
        missing(what)
    }
}

/// Whether `/usr/bin/python3` can `import nbd` (libnbd's Python bindings).
/// Same CI / SKIP behaviour as [`require_tool`].
pub fn require_python_nbd() -> bool {
    let ok = Path::new(SYSTEM_PYTHON).is_file()
        && Command::new(SYSTEM_PYTHON)
            .args(["-c", "import nbd"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if ok {
        true
    } else {
        missing("python3-libnbd (/usr/bin/python3 -c 'import nbd')")
    }
}

/// Requires every tool in `names`; false if any is missing.
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains('\'') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) and returns its
/// output, whatever its exit status. Kills it and panics if it runs longer
/// than `timeout`.
pub fn run_capture_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{desc}`: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "`{desc}` timed out after {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// [`run_capture_timeout`] with [`CMD_TIMEOUT`].
pub fn run_capture(cmd: &mut Command) -> Output {
    run_capture_timeout(cmd, CMD_TIMEOUT)
}

/// Formats a command's output for a failure message.
pub fn format_output(desc: &str, out: &Output) -> String {
    format!(
        "command: {desc}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` and panics with its full stdout/stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let desc = describe(cmd);
    let out = run_capture(cmd);
    if !out.status.success() {
        panic!("command failed\n{}", format_output(&desc, &out));
    }
    out
}

/// Stdout of a successful command as a String.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout + stderr of a command as one String.
pub fn all_output(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Deterministic pseudo-random bytes (splitmix64), so failures reproduce.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Panics, naming the first differing byte and its 4 KiB block, unless `got == want`.
pub fn assert_same_blocks(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!("{what}: differs at byte {i} (block {}), lengths {} and {}", i / 4096, got.len(), want.len());
    }
}

/// Index of the first differing byte of two buffers (or of the shorter
/// length if one is a prefix of the other).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b.iter()).position(|(x, y)| x != y).or(if a.len() != b.len() {
        Some(a.len().min(b.len()))
    } else {
        None
    })
}

/// A running `spillway serve` in its own temporary directory.
pub struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
    host: String,
    port: u16,
    unix_path: PathBuf,
    args: Vec<String>,
}

/// The value-taking flags the harness supplies by default; an `extra`
/// argument naming one of them replaces the default.
fn flag_given(extra: &[&str], flag: &str) -> bool {
    extra.iter().any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
}

impl Server {
    /// Starts `spillway serve --data-dir TMP/data --listen 127.0.0.1:0
    /// --unix TMP/nbd.sock --size 256M <extra>`; a `--size` (or any other of
    /// those flags) in `extra` replaces the default. Blocks until the server
    /// logs `ready` and both listening addresses are known.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the server.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new().prefix("spillway-it-").tempdir().expect("create tempdir");
        let data_dir = dir.path().join("data");
        let sock = dir.path().join("nbd.sock");

        let mut args: Vec<String> = vec!["serve".into()];
        let defaults: [(&str, String); 4] = [
            ("--data-dir", data_dir.to_string_lossy().into_owned()),
            ("--listen", "127.0.0.1:0".into()),
            ("--unix", sock.to_string_lossy().into_owned()),
            ("--size", "256M".into()),
        ];
        for (flag, value) in defaults {
            if !flag_given(extra, flag) {
                args.push(flag.into());
                args.push(value);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        match std::env::var("SPILLWAY_TEST_RUST_LOG") {
            Ok(v) => {
                cmd.env("RUST_LOG", v);
            }
            Err(_) => {
                cmd.env_remove("RUST_LOG");
            }
        }
        let desc = describe(&cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn `{desc}`: {e}"));

        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let log2 = Arc::clone(&log);
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        log2.lock().unwrap().push_str(&text);
                        // The receiver goes away once the server is ready;
                        // keep draining into the log regardless.
                        let _ = tx.send(text);
                    }
                }
            }
        });

        let mut tcp: Option<(String, u16)> = None;
        let mut unix: Option<PathBuf> = None;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = false;
        while !ready {
            let now = Instant::now();
            if now >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{desc}` did not log `ready` within {READY_TIMEOUT:?}\n--- stderr ---\n{}",
                    log.lock().unwrap()
                );
            }
            match rx.recv_timeout(deadline - now) {
                Ok(line) => {
                    let line = line.trim_end();
                    if let Some(rest) = after(line, "listening on tcp ") {
                        let addr = rest.split_whitespace().next().unwrap_or("");
                        let (h, p) = addr
                            .rsplit_once(':')
                            .unwrap_or_else(|| panic!("cannot parse tcp address in log line {line:?}"));
                        let p: u16 = p.parse().unwrap_or_else(|_| panic!("cannot parse tcp port in log line {line:?}"));
                        assert_ne!(p, 0, "server logged port 0: {line:?}");
                        tcp = Some((h.trim_matches(['[', ']']).to_owned(), p));
                    } else if let Some(rest) = after(line, "listening on unix ") {
                        let p = rest.split_whitespace().next().unwrap_or("");
                        unix = Some(PathBuf::from(p));
                    } else if line.split_whitespace().any(|w| w == "ready") {
                        ready = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "`{desc}` closed stderr before logging `ready` (exit status {status:?})\n--- stderr ---\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        drop(rx);

        let log_now = log.lock().unwrap().clone();
        let (host, port) = tcp.unwrap_or_else(|| {
            panic!("server logged `ready` but no `listening on tcp HOST:PORT` line\n--- stderr ---\n{log_now}")
        });
        let unix_path = unix.unwrap_or_else(|| {
            panic!("server logged `ready` but no `listening on unix PATH` line\n--- stderr ---\n{log_now}")
        });
        let requested_sock = args.iter().position(|a| a == "--unix").and_then(|i| args.get(i + 1)).map(PathBuf::from);
        if let Some(req) = requested_sock {
            assert_eq!(
                unix_path, req,
                "`listening on unix` names a different path than --unix\n--- stderr ---\n{log_now}"
            );
        }

        Server { dir, child: Some(child), log, reader: Some(reader), host, port, unix_path, args }
    }

    /// The TCP port the server logged.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host part of the `listening on tcp` line.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The Unix socket path the server logged.
    pub fn unix_path(&self) -> &Path {
        &self.unix_path
    }

    /// The server's temporary directory (scratch space for the test too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The arguments `spillway` was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// `nbd://127.0.0.1:PORT/` (the default export).
    pub fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/", self.port)
    }

    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn tcp_uri_export(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, name)
    }

    /// `nbd+unix:///?socket=PATH` (the default export).
    pub fn unix_uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.unix_path.display())
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Runs `cmd` like [`run_ok`], adding the server's log to the panic
    /// message on failure.
    pub fn run_ok(&self, cmd: &mut Command) -> Output {
        let desc = describe(cmd);
        let out = run_capture(cmd);
        if !out.status.success() {
            panic!("command failed\n{}\n--- server stderr ---\n{}", format_output(&desc, &out), self.log());
        }
        out
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit; returns
    /// the exit status and the whole stderr log.
    pub fn terminate(&mut self) -> (ExitStatus, String) {
        self.terminate_within(STOP_TIMEOUT)
    }

    /// [`terminate`](Self::terminate) with another limit: a clean shutdown drains
    /// everything to the backend, which takes longer when much is waiting.
    pub fn terminate_within(&mut self, limit: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server already stopped");
        let pid = child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                panic!("server did not exit within {limit:?} of SIGTERM\n--- stderr ---\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    /// `nbdcopy` the file `data` (written under the server's directory as `name`) over the
    /// start of the default export, with a FLUSH at the end when `flush`.
    pub fn copy_in(&self, data: &[u8], name: &str, flush: bool) {
        let input = self.dir().join(name);
        std::fs::write(&input, data).unwrap_or_else(|e| panic!("write {}: {e}", input.display()));
        let mut cmd = Command::new("nbdcopy");
        if flush {
            cmd.arg("--flush");
        }
        self.run_ok(cmd.arg(&input).arg(self.tcp_uri()));
    }

    /// The first `len` bytes of the default export, through `nbdcopy`.
    pub fn copy_out(&self, len: usize) -> Vec<u8> {
        let out = self.dir().join("out.img");
        let _ = std::fs::remove_file(&out);
        self.run_ok(Command::new("nbdcopy").arg(self.tcp_uri()).arg(&out));
        let mut got = std::fs::read(&out).expect("read the nbdcopy output");
        got.truncate(len);
        got
    }

    /// SIGKILL (kill -9) and reap the process; returns the stderr log.
    pub fn kill9(&mut self) -> String {
        let mut child = self.child.take().expect("server already stopped");
        let _ = child.kill();
        let _ = child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }

    /// SIGTERM, wait up to 10 s, assert the exit status is success; returns
    /// the stderr log.
    pub fn stop(mut self) -> String {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`stop`](Self::stop) with another limit, keeping the server's directory (it lives
    /// as long as `self`): a clean shutdown drains everything to the backend first.
    pub fn stop_within(&mut self, limit: Duration) -> String {
        let (status, log) = self.terminate_within(limit);
        assert!(
            status.success(),
            "server exited with {status} after SIGTERM (contract: exit 0)\n--- stderr ---\n{log}"
        );
        log
    }

    /// Start with `extra`, write `data` at the start of the default export with a FLUSH,
    /// and shut down cleanly (everything lands in chunks). The stopped server keeps its
    /// directory; the data directory is `dir()/data`.
    pub fn written(extra: &[&str], data: &[u8]) -> Server {
        let mut s = Server::start(extra);
        s.copy_in(data, "in.img", true);
        s.stop_within(Duration::from_secs(120));
        s
    }
}

/// The text after the first occurrence of `needle` in `line`.
fn after<'a>(line: &'a str, needle: &str) -> Option<&'a str> {
    line.find(needle).map(|i| &line[i + needle.len()..])
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!(
                "--- spillway {} stderr ---\n{}--- end of spillway stderr ---",
                self.args.join(" "),
                self.log.lock().unwrap()
            );
        }
    }
}

/// Runs a Python script from tests/py with /usr/bin/python3 and the given
/// arguments; returns its output (does not check the status).
pub fn run_py(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("py").join(script);
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(&path).args(args).env("PYTHONUNBUFFERED", "1");
    run_capture(&mut cmd)
}

/// Chunk ids and paths in a volume directory's default object backend (`objects/chunks/`).
pub fn chunk_files(vol: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(vol.join("objects").join("chunks"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            spillway::chunk::set::key_chunk(&format!("chunks/{name}")).map(|id| (id, p))
        })
        .collect();
    out.sort();
    out
}

/// After a clean shutdown the volume's manifest names exactly the chunk objects there are
/// (no leaked object, no dangling reference), and every run points into a named chunk.
pub fn chunks_match_manifest(vol: &Path) -> Result<(), String> {
    let bytes = std::fs::read(vol.join("manifest")).map_err(|e| format!("reading the manifest: {e}"))?;
    let m = spillway::chunk::manifest::Manifest::decode(&bytes).map_err(|e| format!("manifest: {e}"))?;
    let named: std::collections::BTreeSet<u64> = m.chunks.iter().map(|c| c.id).collect();
    let present: std::collections::BTreeSet<u64> = chunk_files(vol).into_iter().map(|c| c.0).collect();
    if named != present {
        return Err(format!(
            "named by the manifest but missing: {:x?}\non the backend but not named: {:x?}",
            named.difference(&present).collect::<Vec<_>>(),
            present.difference(&named).collect::<Vec<_>>()
        ));
    }
    for r in &m.runs {
        if let Some(l) = r.loc {
            if !named.contains(&l.chunk) {
                return Err(format!("run {r:?} points at chunk {:x}, which the manifest does not name", l.chunk));
            }
        }
    }
    Ok(())
}

/// The Python that has sabctools (SABnzbd's yEnc, a PyPI wheel): `$SPILLWAY_PYTHON`, else
/// `python3` on PATH (the pyenv one here, where `scripts/install-test-deps` installs it).
pub fn sabctools_python() -> String {
    std::env::var("SPILLWAY_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether sabctools imports. Same CI / SKIP behaviour as [`require_tool`].
pub fn require_sabctools() -> bool {
    let ok = run_capture(Command::new(sabctools_python()).args(["-c", "import sabctools"])).status.success();
    ok || missing(&format!("sabctools (PyPI) for {}", sabctools_python()))
}

/// Run `tests/py/yenc_sabctools.py ARGS` in `dir`; its JSON answer.
pub fn sabctools(dir: &Path, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/yenc_sabctools.py");
    let out = run_ok(Command::new(sabctools_python()).current_dir(dir).arg(script).args(args));
    serde_json::from_str(stdout_of(&out).trim()).expect("helper prints JSON")
}
