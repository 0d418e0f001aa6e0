//! yEnc transport (`--yenc`), through the real binary: every object of the volume on the
//! backend is a single-part yEnc file that an independent decoder (sabctools) reads back to
//! a valid chunk; the volume reads back after restarts without the flag (the transport is
//! the volume's, recorded in volume.meta); a damaged yEnc chunk is repaired from its PAR2
//! recovery object; `recover` rebuilds a data directory from a yEnc backend alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{pseudo_random_bytes, require_sabctools, require_tool, run_capture, sabctools, Server};
use spillway::chunk::format::{parse_object, TRANSPORT_YENC};

const MIB: usize = 1 << 20;
const FLAGS: [&str; 7] = ["--size", "16M", "--par2", "10", "--chunk-size", "256K", "--yenc"];

fn data() -> Vec<u8> {
    let mut d = pseudo_random_bytes(33, 2 * MIB);
    for (i, b) in d[MIB..].iter_mut().enumerate() {
        *b = b"=\r\n\0. \t"[i % 7]; // the bytes yEnc escapes, many times over
    }
    d
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn serve_on(data_dir: &Path, extra: &[&str]) -> Server {
    let dd = data_dir.to_string_lossy().into_owned();
    let mut args = extra.to_vec();
    args.extend(["--data-dir", dd.as_str()]);
    Server::start(&args)
}

#[test]
fn every_object_is_a_yenc_file_that_sabctools_decodes_and_the_volume_reads_back() {
    if !require_tool("nbdcopy") || !require_sabctools() {
        return;
    }
    let want = data();
    let first = Server::written(&FLAGS, &want);
    let data_dir = first.dir().join("data");
    let objects = data_dir.join("volumes/default/objects");
    let all = files(&objects);
    let chunks: Vec<&PathBuf> =
        all.iter().filter(|p| p.parent().is_some_and(|d| d.ends_with("chunks")) && p.extension().is_none()).collect();
    assert!(chunks.len() >= 4, "expected several chunks: {all:?}");
    assert!(all.iter().any(|p| p.to_string_lossy().ends_with(".par2")), "no recovery objects: {all:?}");
    assert!(all.iter().any(|p| p.to_string_lossy().contains("manifest")), "no manifest: {all:?}");
    let work = tempfile::tempdir().expect("tempdir");
    for p in &all {
        let stored = std::fs::read(p).expect("read object");
        assert!(stored.starts_with(b"=ybegin line=128 size="), "{} is not a yEnc file", p.display());
        for line in stored.split(|&b| b == b'\n') {
            assert!(
                !line.contains(&0) && !line.strip_suffix(b"\r").unwrap_or(line).contains(&b'\r'),
                "{}",
                p.display()
            );
        }
        let r = sabctools(work.path(), &["decode", &p.to_string_lossy(), "out.bin"]);
        assert_eq!(r["crc"], r["crc_expected"], "{}: sabctools sees a CRC mismatch: {r}", p.display());
        let decoded = std::fs::read(work.path().join("out.bin")).expect("decoded");
        assert_eq!(r["name"].as_str(), p.file_name().and_then(|n| n.to_str()), "{r}");
        assert_eq!(r["size"].as_u64(), Some(decoded.len() as u64), "{r}");
        if chunks.contains(&p) {
            let t = parse_object(&decoded).unwrap_or_else(|e| panic!("{}: decoded chunk: {e}", p.display()));
            assert_eq!(
                (t.header.transport, t.header.par2_percent),
                (TRANSPORT_YENC, 10),
                "the header records the pipeline"
            );
        }
    }

    // Without the flag: the volume keeps its transport and reads back.
    let second = serve_on(&data_dir, &["--size", "16M"]);
    assert!(second.copy_out(want.len()) == want, "the yEnc volume read back differently");
    let log = second.stop();
    assert!(log.contains("pipeline=lz4 + yenc"), "the log names the pipeline:\n{log}");

    // A raw volume refuses --yenc rather than mix transports.
    let mut raw = Server::start(&["--size", "16M"]);
    let raw_dir = raw.dir().join("data");
    raw.stop_within(Duration::from_secs(10));
    let out = run_capture(
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--yenc", "--data-dir"])
            .arg(&raw_dir),
    );
    let text = common::all_output(&out);
    assert!(!out.status.success() && text.contains("created without --yenc"), "{text}");
}

#[test]
fn a_damaged_yenc_chunk_is_repaired_from_its_recovery_object() {
    if !require_tool("nbdcopy") {
        return;
    }
    let want = data();
    let first = Server::written(&FLAGS, &want);
    let data_dir = first.dir().join("data");
    let victim = common::chunk_files(&data_dir.join("volumes/default")).remove(1).1;
    let original = std::fs::read(&victim).expect("read chunk");
    // Change body characters (not line ends or escapes): the yEnc CRC fails, and the
    // decoded bytes are wrong in a few places that PAR2 can rebuild.
    let mut bad = original.clone();
    let mut changed = 0;
    for i in (original.len() / 3..original.len()).step_by(997) {
        if !b"\r\n=.\t ".contains(&bad[i]) && !b"\r\n=.\t ".contains(&bad[i - 1]) && bad[i] != b'a' {
            bad[i] = b'a';
            changed += 1;
        }
        if changed == 20 {
            break;
        }
    }
    assert_eq!(changed, 20);
    std::fs::write(&victim, &bad).expect("write damaged chunk");
    let second = serve_on(&data_dir, &FLAGS);
    assert!(second.copy_out(want.len()) == want, "the repaired volume read back differently");
    let log = second.stop();
    assert!(log.contains("damaged chunk repaired from its recovery object and written back"), "log:\n{log}");
    let now = std::fs::read(&victim).expect("read chunk");
    assert!(now == original, "the chunk was not written back as it was");
}

#[test]
fn recover_rebuilds_from_a_yenc_backend_alone() {
    if !require_tool("nbdcopy") {
        return;
    }
    let want = data();
    let backend = tempfile::tempdir().expect("tempdir");
    let bk = backend.path().to_string_lossy().into_owned();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--backend", bk.as_str()]);
    let _first = Server::written(&flags, &want);
    let fresh = tempfile::tempdir().expect("tempdir");
    let data_dir = fresh.path().join("data");
    let out = run_capture(
        Command::new(env!("CARGO_BIN_EXE_spillway")).args(["recover", "--backend", &bk, "--data-dir"]).arg(&data_dir),
    );
    assert!(out.status.success(), "{}", common::all_output(&out));
    let second = serve_on(&data_dir, &["--size", "16M", "--backend", &bk]);
    assert!(second.copy_out(want.len()) == want, "the recovered yEnc volume read back differently");
    second.stop();
}
