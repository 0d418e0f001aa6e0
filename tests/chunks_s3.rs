//! The S3 backend against a real S3-compatible server, `s3s-fs`, started by each test on
//! loopback (scripts/install-test-deps builds it): data written, restarted and read back;
//! a data directory lost after a clean shutdown, or after SIGKILL with
//! `--flush-target backend`, rebuilt with `spillway recover`; and the S3 server stopped in
//! the middle of a workload, which stalls and then completes with nothing lost; and the
//! whole chunk pipeline (PAR2 recovery objects, yEnc) repairing a chunk damaged in the bucket.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_blocks, pseudo_random_bytes, require_tool, Server};

const MIB: usize = 1 << 20;
const BUCKET: &str = "spillway-test";
const KEY_ID: &str = "spillwaytest";
const SECRET: &str = "spillwaytestsecret";

/// One `s3s-fs` on 127.0.0.1, storing under a temporary directory; killed on drop.
struct S3 {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3 {
    fn start() -> S3 {
        let root = tempfile::Builder::new().prefix("spillway-s3-").tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("bucket directory");
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let mut s3 = S3 { child: None, root, port };
        s3.launch();
        s3
    }

    /// (Re)start the server on the same port and root, waiting until it accepts.
    fn launch(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", KEY_ID, "--secret-key", SECRET])
                .arg(self.root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs");
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port may still be held: try again
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "s3s-fs did not start listening on 127.0.0.1:{}", self.port);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Chunk objects the volume `default` holds under prefix `vols`.
    fn chunks(&self) -> usize {
        std::fs::read_dir(self.root.path().join(BUCKET).join("vols").join("default").join("chunks"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_s3() -> bool {
    if !require_tool("s3s-fs") {
        return false;
    }
    // The S3 client reads its credentials from the environment; every test sets the same.
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_REGION", "us-east-1");
    require_tool("nbdcopy")
}

fn serve_flags(s3: &S3, data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--size",
        "64M",
        "--backend",
        &format!("s3://{BUCKET}/vols"),
        "--s3-endpoint",
        &s3.endpoint(),
        "--wal-segment-size",
        "1M",
        "--chunk-size",
        "1M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(flags: &[String]) -> Server {
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(&refs)
}

fn recover(s3: &S3, data_dir: &Path) -> String {
    let out = common::run_capture(
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["recover", "--data-dir", &data_dir.to_string_lossy()])
            .args(["--backend", &format!("s3://{BUCKET}/vols"), "--s3-endpoint", &s3.endpoint()]),
    );
    let text = common::all_output(&out);
    assert!(out.status.success(), "spillway recover failed\n{text}");
    text
}

/// Write, shut down cleanly, restart on the same data directory, read back; the chunks
/// are in the bucket.
#[test]
fn s3_write_restart_read_back() {
    if !require_s3() {
        return;
    }
    let s3 = S3::start();
    let data = pseudo_random_bytes(21, 24 * MIB);
    let tmp = tempfile::Builder::new().prefix("spillway-s3vol-").tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let flags = serve_flags(&s3, &dir, &[]);
    let server = start(&flags);
    server.copy_in(&data, "in.img", true);
    server.stop();
    assert!(s3.chunks() >= 24, "only {} chunk objects in the bucket for 24 MiB", s3.chunks());
    let server = start(&flags);
    assert_same_blocks("after restart", &server.copy_out(data.len()), &data);
    server.stop();
}

/// A clean shutdown drains everything to S3: with the data directory gone, `recover`
/// rebuilds the volume from the bucket alone, byte for byte.
#[test]
fn s3_recover_after_clean_shutdown() {
    if !require_s3() {
        return;
    }
    let s3 = S3::start();
    let data = pseudo_random_bytes(22, 20 * MIB);
    let tmp = tempfile::Builder::new().prefix("spillway-s3vol-").tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let flags = serve_flags(&s3, &dir, &[]);
    let server = start(&flags);
    server.copy_in(&data, "in.img", false);
    server.stop();
    std::fs::remove_dir_all(&dir).expect("lose the data directory");
    let text = recover(&s3, &dir);
    assert!(text.contains("recovered \"default\""), "recover said:\n{text}");
    let server = start(&flags);
    assert_same_blocks("after recover", &server.copy_out(data.len()), &data);
    server.stop();
}

/// `--flush-target backend`: a FLUSH reply means the data is in S3. SIGKILL the server,
/// lose the data directory, recover: every flushed byte is there. Then the same with a
/// restart in between (which adopts the chunks spilled after the last checkpoint) and a
/// second SIGKILL right after it.
#[test]
fn s3_flush_target_backend_survives_kill_and_disk_loss() {
    if !require_s3() {
        return;
    }
    let s3 = S3::start();
    let data = pseudo_random_bytes(23, 16 * MIB);
    let tmp = tempfile::Builder::new().prefix("spillway-s3vol-").tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let flags = serve_flags(&s3, &dir, &["--flush-target", "backend", "--spill-age", "60s"]);

    let mut server = start(&flags);
    server.copy_in(&data, "in.img", true);
    server.kill9();
    std::fs::remove_dir_all(&dir).expect("lose the data directory");
    recover(&s3, &dir);
    let server = start(&flags);
    assert_same_blocks("recovered after SIGKILL", &server.copy_out(data.len()), &data);

    // Overwrite with new data (flushed), kill, restart once, kill again, lose the disk.
    let data2 = pseudo_random_bytes(24, 16 * MIB);
    server.copy_in(&data2, "in.img", true);
    let mut server = server;
    server.kill9();
    let mut again = start(&flags);
    again.kill9();
    std::fs::remove_dir_all(&dir).expect("lose the data directory");
    recover(&s3, &dir);
    let server = start(&flags);
    assert_same_blocks("recovered after two SIGKILLs and a restart", &server.copy_out(data2.len()), &data2);
    server.stop();
}

/// The S3 server goes away in the middle of a 24 MiB copy through a 4 MiB WAL: the copy
/// stalls (the WAL fills, writes wait, nothing fails), and when S3 comes back it
/// completes. Every byte reads back, before and after a restart.
#[test]
fn s3_outage_stalls_the_workload_then_it_completes() {
    if !require_s3() {
        return;
    }
    let mut s3 = S3::start();
    let data = pseudo_random_bytes(25, 24 * MIB);
    let tmp = tempfile::Builder::new().prefix("spillway-s3vol-").tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let flags = serve_flags(&s3, &dir, &["--max-wal", "4M", "--spill-age", "1s"]);
    let server = start(&flags);
    s3.stop();
    let input = server.dir().join("in.img");
    std::fs::write(&input, &data).expect("write input");
    let mut copy = Command::new("nbdcopy")
        .arg("--flush")
        .arg(&input)
        .arg(server.tcp_uri())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nbdcopy");
    // Wait (bounded) until the server says the WAL is full (writes are waiting) and that
    // uploads fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(server.log().contains("WAL full") && server.log().contains("upload failed")) {
        assert!(Instant::now() < deadline, "no full WAL and failed upload with S3 down\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(copy.try_wait().expect("try_wait").is_none(), "24 MiB went through a 4 MiB WAL with S3 down");
    s3.launch();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = copy.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the copy did not complete after S3 came back\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "nbdcopy failed after the outage\n{}", server.log());
    assert!(server.log().contains("backend reachable again"), "no recovery logged\n{}", server.log());
    assert_same_blocks("after the outage", &server.copy_out(data.len()), &data);
    server.stop();
    let server = start(&flags);
    assert_same_blocks("after the outage and a restart", &server.copy_out(data.len()), &data);
    server.stop();
}

/// The whole pipeline on S3: `--par2` puts `X.par2` beside every chunk `X` in the bucket,
/// `--yenc` makes every object a yEnc file, and a chunk damaged in the bucket is repaired
/// from its recovery object (through the S3 API) and read back intact.
#[test]
fn s3_par2_and_yenc_objects_repair_through_the_bucket() {
    if !require_s3() {
        return;
    }
    let s3 = S3::start();
    let data = pseudo_random_bytes(23, 3 * MIB);
    let tmp = tempfile::Builder::new().prefix("spillway-s3vol-").tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let flags = serve_flags(&s3, &dir, &["--par2", "5", "--yenc"]);
    let mut server = start(&flags);
    server.copy_in(&data, "in.img", true);
    // PAR2 of 1 MiB chunks takes seconds each in a debug build.
    server.stop_within(Duration::from_secs(120));
    let chunks_dir = s3.root.path().join(BUCKET).join("vols").join("default").join("chunks");
    let mut names: Vec<String> = std::fs::read_dir(&chunks_dir)
        .expect("chunks in the bucket")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let chunks: Vec<&String> = names.iter().filter(|n| n.len() == 16).collect();
    assert!(chunks.len() >= 3, "chunks in the bucket: {names:?}");
    for c in &chunks {
        assert!(names.contains(&format!("{c}.par2")), "{c} has no recovery object: {names:?}");
        let stored = std::fs::read(chunks_dir.join(c)).expect("read object");
        assert!(stored.starts_with(b"=ybegin line=128 size="), "{c} is not a yEnc file");
    }
    // Damage plain body characters of one chunk in the bucket's storage.
    let victim = chunks_dir.join(chunks[1]);
    let original = std::fs::read(&victim).expect("read chunk");
    let mut bad = original.clone();
    let plain = |b: u8| !b"=\r\n.\t ".contains(&b);
    let mut changed = 0;
    for i in (original.len() / 2..original.len()).step_by(1009) {
        if plain(bad[i]) && plain(bad[i - 1]) && bad[i] != b'a' && changed < 10 {
            bad[i] = b'a';
            changed += 1;
        }
    }
    std::fs::write(&victim, &bad).expect("damage the chunk");
    let mut server = start(&flags);
    assert_same_blocks("after repair", &server.copy_out(data.len()), &data);
    let log = server.stop_within(Duration::from_secs(120));
    assert!(log.contains("damaged chunk repaired from its recovery object and written back"), "log:\n{log}");
    assert!(std::fs::read(&victim).expect("read chunk") == original, "the repair was not written back to the bucket");
}
