//! `spillway import` / `export` / `info` / `list` against a sparse 1 GiB raw image made
//! with `qemu-img create`, with regions written into it: small random ones, a 384 MiB one
//! (more than the memory bound, so buffering the image would show), one holding an
//! all-zero block, and one written with zeroes only.
//!
//! - the export is byte for byte the image;
//! - its data extents (SEEK_DATA/SEEK_HOLE) are exactly the non-zero blocks: holes stay
//!   holes, and written zeroes become holes;
//! - peak RSS of import and export (GNU time's "Maximum resident set size") stays under
//!   [`RSS_LIMIT_KIB`], whatever the image size;
//! - `info` reports the size and the bytes used, and a running server's lock makes
//!   import refuse.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{all_output, require_path, require_tool, run_capture_timeout, stdout_of, Server};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BS: u64 = 4096;
/// Peak RSS allowed for import and export of the 1 GiB image (384 MiB of data).
const RSS_LIMIT_KIB: u64 = 300 * 1024;
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn spillway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env("NO_COLOR", "1").env_remove("RUST_LOG");
    c
}

/// Run `spillway ARGS` under GNU time -v; returns the output and the peak RSS in KiB.
fn spillway_timed(args: &[&str]) -> (Output, u64) {
    let out = run_capture_timeout(
        Command::new("/usr/bin/time").arg("-v").arg(env!("CARGO_BIN_EXE_spillway")).args(args).env_remove("RUST_LOG"),
        TIMEOUT,
    );
    let text = all_output(&out);
    assert!(out.status.success(), "spillway {args:?} failed:\n{text}");
    let rss = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in GNU time's output:\n{text}"));
    (out, rss)
}

/// What a block of a region holds.
#[derive(Clone, Copy)]
enum Fill {
    Random(u64),
    /// Cheap, compressible, different in every block.
    Pattern(u64),
    Zeroes,
}

/// The image: regions written into a sparse file; returns the non-zero blocks.
fn make_image(path: &Path) -> Vec<u64> {
    common::run_ok(Command::new("qemu-img").args(["create", "-f", "raw"]).arg(path).arg("1G"));
    let regions: &[(u64, u64, Fill)] = &[
        (0, 64 * KIB, Fill::Random(1)),
        (100 * MIB + BS, MIB, Fill::Random(2)),
        (256 * MIB, 384 * MIB, Fill::Pattern(3)),
        (700 * MIB, 64 * KIB, Fill::Zeroes),
        (900 * MIB, 8 * KIB, Fill::Random(4)),
        (GIB - BS, BS, Fill::Random(5)),
    ];
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open image");
    let mut nonzero = Vec::new();
    for &(off, len, fill) in regions {
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(4 * MIB);
            let mut buf = match fill {
                Fill::Random(seed) => common::pseudo_random_bytes(seed ^ at, n as usize),
                Fill::Pattern(seed) => {
                    let mut b = vec![0u8; n as usize];
                    for (i, block) in b.chunks_mut(BS as usize).enumerate() {
                        let word = (at / BS + i as u64) ^ (seed << 56) | 1;
                        for w in block.chunks_mut(8) {
                            w.copy_from_slice(&word.to_le_bytes());
                        }
                    }
                    b
                }
                Fill::Zeroes => vec![0u8; n as usize],
            };
            // One written all-zero block inside the second region: data in the image, a hole
            // after the round trip.
            if at == 100 * MIB + BS {
                buf[5 * BS as usize..6 * BS as usize].fill(0);
            }
            f.write_all_at(&buf, at).expect("write region");
            for (i, block) in buf.chunks(BS as usize).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    nonzero.push(at / BS + i as u64);
                }
            }
            at += n;
        }
    }
    f.sync_all().expect("sync image");
    nonzero.sort_unstable();
    nonzero
}

/// Byte ranges of consecutive blocks.
fn ranges(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(r) if r.1 == b * BS => r.1 += BS,
            _ => out.push((b * BS, (b + 1) * BS)),
        }
    }
    out
}

/// The data extents of a file (SEEK_DATA / SEEK_HOLE).
fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let f = File::open(path).expect("open");
    let len = f.metadata().expect("stat").len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        let Ok(start) = lseek(f.as_raw_fd(), pos, Whence::SeekData) else { break };
        let end = lseek(f.as_raw_fd(), start, Whence::SeekHole).expect("SEEK_HOLE");
        out.push((start as u64, end as u64));
        pos = end;
    }
    out
}

fn assert_same_files(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).expect("open a"), File::open(b).expect("open b"));
    let len = fa.metadata().expect("stat").len();
    assert_eq!(len, fb.metadata().expect("stat").len(), "sizes differ");
    let mut ba = vec![0u8; 4 * MIB as usize];
    let mut bb = vec![0u8; 4 * MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(4 * MIB) as usize;
        fa.read_exact_at(&mut ba[..n], at).expect("read a");
        fb.read_exact_at(&mut bb[..n], at).expect("read b");
        if let Some(i) = common::first_difference(&ba[..n], &bb[..n]) {
            panic!("{} and {} differ at byte {}", a.display(), b.display(), at + i as u64);
        }
        at += n as u64;
    }
}

fn line_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in\n{text}"))
}

#[test]
fn sparse_image_round_trips_with_holes_and_bounded_memory() {
    if !require_tool("qemu-img") || !require_path(Path::new("/usr/bin/time"), "GNU time (/usr/bin/time)") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = tmp.path().join("disk.img");
    let nonzero = make_image(&img);
    let data_bytes = nonzero.len() as u64 * BS;
    let data = tmp.path().join("data");
    let d = data.to_str().expect("utf-8 path");

    let (out, import_rss) = spillway_timed(&["import", img.to_str().expect("path"), "--export", "vm", "--data-dir", d]);
    let text = all_output(&out);
    assert!(stdout_of(&out).contains(&format!("{GIB} bytes, {data_bytes} bytes of data")), "import summary:\n{text}");
    // Not a terminal: plain progress lines, up to the end.
    assert!(text.contains(&format!("import: {GIB} of {GIB} bytes (100%)")), "no final progress line:\n{text}");
    eprintln!("import peak RSS: {import_rss} KiB");
    assert!(import_rss < RSS_LIMIT_KIB, "import peak RSS {import_rss} KiB for a 1 GiB image");

    // Offline inspection: everything was spilled at close.
    let info = common::run_ok(spillway().args(["info", "vm", "--data-dir", d]));
    let info = stdout_of(&info);
    assert!(line_value(&info, "size").starts_with(&format!("{GIB} bytes")), "{info}");
    assert!(line_value(&info, "used").starts_with(&format!("{data_bytes} bytes")), "{info}");
    assert!(line_value(&info, "dirty").starts_with("0 bytes"), "{info}");
    let chunks: u64 = line_value(&info, "chunks").split_whitespace().next().and_then(|n| n.parse().ok()).expect("n");
    assert!(chunks >= data_bytes / (4 * MIB), "{chunks} chunks for {data_bytes} bytes\n{info}");
    assert!(line_value(&info, "codec pipeline").contains("lz4"), "{info}");
    let list = stdout_of(&common::run_ok(spillway().args(["list", "--data-dir", d])));
    assert!(list.lines().any(|l| l.split_whitespace().next() == Some("vm")), "{list}");

    let exported = tmp.path().join("out.img");
    let x = exported.to_str().expect("path");
    let (out, export_rss) = spillway_timed(&["export", "vm", x, "--data-dir", d]);
    assert!(stdout_of(&out).contains(&format!("{data_bytes} bytes of data")), "{}", all_output(&out));
    eprintln!("export peak RSS: {export_rss} KiB");
    assert!(export_rss < RSS_LIMIT_KIB, "export peak RSS {export_rss} KiB for a 1 GiB image");

    assert_same_files(&img, &exported);
    assert_eq!(data_extents(&exported), ranges(&nonzero), "the exported file's data extents");
    // The image itself holds the written zeroes as data, the export does not.
    assert!(data_extents(&img).iter().map(|r| r.1 - r.0).sum::<u64>() > data_bytes);

    // An existing file is not overwritten without --force.
    let again = run_capture_timeout(spillway().args(["export", "vm", x, "--data-dir", d]), TIMEOUT);
    assert!(!again.status.success() && all_output(&again).contains("--force"), "{}", all_output(&again));
}

#[test]
fn import_refuses_while_a_server_holds_the_data_directory() {
    let server = Server::start(&[]);
    let img = server.dir().join("small.img");
    std::fs::write(&img, vec![7u8; 64 * 1024]).expect("write image");
    let data = server.dir().join("data");
    let out = run_capture_timeout(
        spillway().arg("import").arg(&img).args(["--export", "other", "--data-dir"]).arg(&data),
        TIMEOUT,
    );
    let text = all_output(&out);
    assert!(!out.status.success(), "import ran beside a server:\n{text}");
    assert!(text.contains("in use by another spillway"), "{text}");
    assert!(!data.join("volumes/other").exists(), "import created the volume anyway");
    server.stop();
}

#[test]
fn import_refuses_a_size_that_is_not_whole_blocks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = tmp.path().join("odd.img");
    std::fs::write(&img, vec![1u8; 5000]).expect("write image");
    let out =
        run_capture_timeout(spillway().arg("import").arg(&img).arg("--data-dir").arg(tmp.path().join("d")), TIMEOUT);
    let text = all_output(&out);
    assert!(!out.status.success() && text.contains("not a positive multiple of 4096"), "{text}");
}

#[test]
fn info_counts_data_still_in_the_wal_as_dirty() {
    if !require_tool("nbdcopy") {
        return;
    }
    // No spill for an hour: after FLUSH the data is only in the WAL; kill -9 keeps it there.
    let mut server = Server::start(&["--spill-age", "60m"]);
    server.copy_in(&common::pseudo_random_bytes(11, MIB as usize), "in.img", true);
    server.kill9();
    let data = server.dir().join("data");
    let out = common::run_ok(spillway().args(["info", "default", "--data-dir"]).arg(&data));
    let info = stdout_of(&out);
    assert!(line_value(&info, "dirty").starts_with(&format!("{MIB} bytes")), "{info}");
    assert!(line_value(&info, "used").starts_with(&format!("{MIB} bytes")), "{info}");
    assert_eq!(line_value(&info, "in chunks"), "0 blocks", "{info}");
    let list = stdout_of(&common::run_ok(spillway().args(["list", "--data-dir"]).arg(&data)));
    let row: Vec<&str> = list.lines().find(|l| l.starts_with("default ")).expect("a row").split_whitespace().collect();
    // NAME SIZE(2 words) USED(2) DIRTY(2) ...
    assert_eq!(&row[1..7], ["256.0", "MiB", "1.0", "MiB", "1.0", "MiB"], "{list}");
}
