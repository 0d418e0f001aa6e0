//! Chunk objects on the default backend (the volume's `objects/` directory), driven
//! through the real binary with real clients: the WAL spills into chunks and stays
//! bounded, data reads back after SIGKILL and after a clean restart, a damaged byte in
//! a chunk costs exactly that block (EIO, never wrong data), TRIM leaves holes that
//! `nbdinfo --map` and `nbdcopy` see, and random overwrites keep the backend's space
//! bounded through compaction. The formats are in docs/chunk.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    assert_same_blocks, chunk_files, pseudo_random_bytes, require_python_nbd, require_tool, run_py, stdout_of, Server,
};
use spillway::chunk::format::{parse_object, ChunkTables};
use spillway::chunk::manifest::Manifest;

const MIB: usize = 1 << 20;
const BS: usize = 4096;

fn vol_dir(data: &Path) -> PathBuf {
    data.join("volumes").join("default")
}

fn manifest(vol: &Path) -> Manifest {
    let bytes = std::fs::read(vol.join("manifest")).unwrap_or_else(|e| panic!("read manifest: {e}"));
    Manifest::decode(&bytes).unwrap_or_else(|e| panic!("decode manifest: {e}"))
}

fn tables(path: &Path) -> ChunkTables {
    let obj = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_object(&obj).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn wal_bytes(vol: &Path) -> u64 {
    std::fs::read_dir(vol.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn assert_manifest_matches_objects(vol: &Path) {
    if let Err(e) = common::chunks_match_manifest(vol) {
        panic!("manifest vs chunk objects on the backend: {e}");
    }
}

/// Half pseudo-random (incompressible), half text-like (compressible), 1 MiB at a time.
fn mixed_data(len: usize) -> Vec<u8> {
    let mut out = pseudo_random_bytes(7, len);
    for (i, m) in out.chunks_mut(MIB).enumerate() {
        if i % 2 == 1 {
            for (j, b) in m.iter_mut().enumerate() {
                *b = b"spillway chunk "[(j + i) % 15];
            }
            m[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
    }
    out
}

const SPILL_FLAGS: [&str; 10] =
    ["--size", "64M", "--wal-segment-size", "1M", "--chunk-size", "256K", "--max-wal", "8M", "--spill-age", "1s"];

/// 48 MiB through a WAL capped at 8 MiB: the spill must run while the client writes.
/// SIGKILL, restart, every byte is there; the WAL stayed bounded; a clean shutdown leaves
/// a manifest naming exactly the chunks there are, and a restart reads from chunks alone.
#[test]
fn spill_bounds_the_wal_and_survives_kill_and_restart() {
    if !require_tool("nbdcopy") {
        return;
    }
    let data = mixed_data(48 * MIB);
    let mut first = Server::start(&SPILL_FLAGS);
    let data_dir = first.dir().join("data");
    let vol = vol_dir(&data_dir);
    first.copy_in(&data, "in.img", true);
    first.kill9();
    let wal = wal_bytes(&vol);
    assert!(wal <= 9 * MIB as u64, "WAL holds {wal} bytes with --max-wal 8M");
    assert!(!chunk_files(&vol).is_empty(), "48 MiB written through an 8 MiB WAL but no chunk on the backend");

    let mut args: Vec<&str> = SPILL_FLAGS.to_vec();
    let dd = data_dir.to_string_lossy().into_owned();
    args.extend(["--data-dir", dd.as_str()]);
    let second = Server::start(&args);
    assert_same_blocks("after SIGKILL and restart", &second.copy_out(data.len()), &data);
    second.stop();
    assert_manifest_matches_objects(&vol);

    let third = Server::start(&args);
    assert_same_blocks("after a clean restart", &third.copy_out(data.len()), &data);
    let log = third.stop();
    assert!(!log.contains("ERROR"), "errors in the log:\n{log}");
    drop(first);
}

/// Write `blocks` distinct blocks, shut down cleanly (everything goes into chunks), flip
/// one byte of block `victim` inside its chunk object, restart, and read every block on
/// its own. Returns the checker's output.
fn damage_one_block(codec: &str, data: &[u8], victim: u64) -> (String, String) {
    let flags = ["--size", "16M", "--codec", codec];
    let mut first = Server::start(&flags);
    let data_dir = first.dir().join("data");
    let vol = vol_dir(&data_dir);
    first.copy_in(data, "in.img", true);
    let (status, _) = first.terminate();
    assert!(status.success());

    // Find the victim's frame and place through the chunk's own tables.
    let mut hit = None;
    for (_, path) in chunk_files(&vol) {
        let t = tables(&path);
        if let Some(e) = t.blocks.iter().find(|e| e.block == victim) {
            hit = Some((path.clone(), t.frames[e.frame as usize], *e));
        }
    }
    let (path, frame, entry) = hit.expect("the victim block is in no chunk");
    let at = if frame.compressed {
        frame.offset + u64::from(frame.stored_len) / 2
    } else {
        frame.offset + u64::from(entry.offset) + 1234
    };
    let mut obj = std::fs::read(&path).expect("read chunk");
    obj[at as usize] ^= 0x40;
    std::fs::write(&path, &obj).expect("write damaged chunk");

    let dd = data_dir.to_string_lossy().into_owned();
    let mut args = flags.to_vec();
    args.extend(["--data-dir", dd.as_str()]);
    let second = Server::start(&args);
    let expect = second.dir().join("expect.img");
    std::fs::write(&expect, data).expect("write expectation");
    let out = run_py("blocks.py", &["check", &second.tcp_uri(), &expect.to_string_lossy()]);
    let text = stdout_of(&out);
    // The server lives on and serves the next request.
    let again = run_py("blocks.py", &["check", &second.tcp_uri(), &expect.to_string_lossy()]);
    assert_eq!(stdout_of(&again), text, "a second pass reads differently");
    let log = second.stop();
    drop(first);
    (text, log)
}

/// Raw frames: one flipped byte costs exactly the block it is in.
#[test]
fn a_damaged_byte_costs_exactly_its_block() {
    if !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    let data = pseudo_random_bytes(11, MIB); // 256 incompressible blocks: frames stored raw
    let (text, log) = damage_one_block("none", &data, 100);
    assert!(text.contains("blocks: 255 ok, 1 eio, 0 err, 0 wrong"), "checker:\n{text}");
    assert!(text.lines().any(|l| l == "EIO 100"), "checker:\n{text}");
    assert!(log.contains("block lost to chunk damage"), "no log line names the lost block:\n{log}");
    assert!(log.contains("block 100 fails its checksum"), "the log does not name block 100:\n{log}");
}

/// Compressed frames: a flipped byte may spoil the frame it is in, but every block of the
/// other frames reads back, and no read ever returns wrong bytes.
#[test]
fn a_damaged_compressed_frame_never_returns_wrong_data() {
    if !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    let mut data = vec![0u8; MIB];
    for (i, b) in data.chunks_mut(BS).enumerate() {
        for (j, x) in b.iter_mut().enumerate() {
            *x = b"abcdefgh"[(j / 64 + i) % 8] ^ (i as u8);
        }
    }
    let (text, log) = damage_one_block("lz4", &data, 100);
    assert!(!text.contains("WRONG") && !text.contains("ERR"), "checker:\n{text}");
    let eio: Vec<u64> =
        text.lines().filter_map(|l| l.strip_prefix("EIO ")).map(|n| n.parse().expect("block number")).collect();
    assert!(!eio.is_empty(), "a damaged frame read back without an error:\n{text}");
    // Frames hold 16 blocks: only the victim's frame may fail.
    assert!(eio.iter().all(|b| b / 16 == 100 / 16), "blocks outside the damaged frame failed: {eio:?}");
    assert!(log.contains("damaged chunk frame"), "no log line names the damaged frame:\n{log}");
}

/// A 1 GiB volume: 4 MiB written every 16 MiB, spilled into chunks, then everything but
/// the first 1 MiB of each 16 MiB trimmed. `nbdinfo --map` reports exactly the kept
/// megabytes as data, and `nbdcopy` writes only those into a sparse file.
#[test]
fn trim_leaves_holes_that_map_and_nbdcopy_see() {
    if !require_tool("nbdinfo") || !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    const STRIDE: usize = 16 * MIB;
    let flags = ["--size", "1G"];
    let mut first = Server::start(&flags);
    let out = run_py("blocks.py", &["stripe-write", &first.tcp_uri(), &STRIDE.to_string(), &(4 * MIB).to_string()]);
    assert!(out.status.success(), "stripe-write: {}", common::all_output(&out));
    let (status, _) = first.terminate();
    assert!(status.success());
    let data_dir = first.dir().join("data");
    let dd = data_dir.to_string_lossy().into_owned();
    let mut args = flags.to_vec();
    args.extend(["--data-dir", dd.as_str()]);
    let second = Server::start(&args);
    let persisted = manifest(&vol_dir(&data_dir)).runs.iter().filter(|r| r.loc.is_some()).count();
    assert!(persisted > 0, "the written stripes are not in chunks");
    let out = run_py("blocks.py", &["stripe-trim", &second.tcp_uri(), &STRIDE.to_string(), &MIB.to_string()]);
    assert!(out.status.success(), "stripe-trim: {}", common::all_output(&out));

    let map = second.run_ok(Command::new("nbdinfo").arg("--map").arg("--json").arg(second.tcp_uri()));
    let extents: serde_json::Value = serde_json::from_slice(&map.stdout).expect("nbdinfo --map --json");
    let mut data_ranges = Vec::new();
    for e in extents.as_array().expect("extent list") {
        let (off, len, ty) =
            (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["type"].as_u64().unwrap());
        if ty & 1 == 0 {
            data_ranges.push((off, len));
        }
    }
    let want: Vec<(u64, u64)> = (0..64).map(|k| ((k * STRIDE) as u64, MIB as u64)).collect();
    assert_eq!(data_ranges, want, "data extents after the trim\n{}", stdout_of(&map));

    let img = second.dir().join("sparse.img");
    second.run_ok(Command::new("nbdcopy").arg(second.tcp_uri()).arg(&img));
    let meta = std::fs::metadata(&img).expect("stat copy");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert_eq!(meta.len(), 1 << 30);
    assert!(allocated <= 80 * MIB as u64, "nbdcopy allocated {allocated} bytes for 64 MiB of data");
    let got = std::fs::read(&img).expect("read copy");
    for (k, stripe) in got.chunks(STRIDE).enumerate() {
        for (i, block) in stripe.chunks(BS).enumerate() {
            let off = (k * STRIDE + i * BS) as u64;
            let want: Vec<u8> = if i * BS < MIB { (off / BS as u64).to_le_bytes().repeat(BS / 8) } else { vec![0; BS] };
            assert!(block == want.as_slice(), "block at offset {off} reads wrong after the trim");
        }
    }
    second.stop();
    drop(first);
}

/// Random 4 KiB overwrites of a 32 MiB volume until 4x its size is written: compaction
/// keeps the raw bytes in chunks within 1.5x the live data, and the WAL within its cap.
#[test]
fn random_overwrites_keep_space_bounded() {
    if !require_tool("fio") {
        return;
    }
    let mut server = Server::start(&[
        "--size",
        "32M",
        "--wal-segment-size",
        "1M",
        "--max-wal",
        "8M",
        "--chunk-size",
        "1M",
        "--spill-age",
        "1s",
        "--max-dirty",
        "40M",
    ]);
    let vol = vol_dir(&server.dir().join("data"));
    let out = server.run_ok(Command::new("fio").current_dir(server.dir()).args([
        "--name=overwrite",
        "--ioengine=nbd",
        &format!("--uri={}", server.tcp_uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--io_size=128M",
        "--iodepth=32",
        "--norandommap",
        "--randrepeat=0",
    ]));
    assert!(out.status.success());
    let wal = wal_bytes(&vol);
    assert!(wal <= 9 * MIB as u64, "WAL holds {wal} bytes with --max-wal 8M");
    // Compaction runs in the background; give it a bounded while to catch up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (raw, live) = loop {
        let m = manifest(&vol);
        let raw: u64 = m.chunks.iter().map(|c| u64::from(c.blocks) * BS as u64).sum();
        let live: u64 = m.runs.iter().filter(|r| r.loc.is_some()).map(|r| u64::from(r.count) * BS as u64).sum();
        // The newest checkpoint must cover the data (most blocks of the volume) and the
        // compaction that followed.
        if (live > 24 * MIB as u64 && raw * 2 <= live * 3) || Instant::now() > deadline {
            break (raw, live);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("chunks hold {raw} raw bytes for {live} live bytes ({:.2}x)", raw as f64 / live.max(1) as f64);
    assert!(live > 24 * MIB as u64, "only {live} live bytes after 128 MiB of random writes over 32 MiB");
    assert!(raw * 2 <= live * 3, "chunks hold {raw} raw bytes for {live} live bytes: more than 1.5x");
    // Up to --max-dirty of acknowledged writes may still wait for the 8 MiB WAL and go
    // to the backend on the way out.
    server.stop_within(Duration::from_secs(120));
    assert_manifest_matches_objects(&vol);
}

fn recover_from(backend: &Path, data_dir: &Path) {
    let out = common::run_capture(Command::new(env!("CARGO_BIN_EXE_spillway")).args([
        "recover",
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--backend",
        &backend.to_string_lossy(),
    ]));
    assert!(out.status.success(), "spillway recover failed\n{}", common::all_output(&out));
}

/// What `map_layout.py` leaves in the first 4 MiB: data, a trimmed MiB, data, a zeroed MiB.
fn layout_expected() -> Vec<u8> {
    [vec![0x41u8; MIB], vec![0; MIB], vec![0x43u8; MIB], vec![0; MIB]].concat()
}

/// TRIM and WRITE_ZEROES are tombstones that travel through the spill into chunks and
/// checkpoints: after a clean shutdown, and after SIGKILL with `--flush-target backend`,
/// a data directory rebuilt by `recover` from a directory backend reads the trimmed and
/// zeroed ranges as zeros, and the data around them intact.
#[test]
fn trims_and_zeroes_survive_spill_and_recover() {
    if !require_tool("nbdcopy") || !require_python_nbd() {
        return;
    }
    for (how, target) in [("clean shutdown", "local"), ("SIGKILL", "backend")] {
        let tmp = tempfile::Builder::new().prefix("spillway-tombs-").tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let objects = tmp.path().join("objects");
        let (dd, ob) = (data_dir.to_string_lossy().into_owned(), objects.to_string_lossy().into_owned());
        let mut args: Vec<&str> = SPILL_FLAGS.to_vec();
        args.extend(["--data-dir", &dd, "--backend", &ob, "--flush-target", target]);
        let mut server = Server::start(&args);
        // Data first, then the layout over it (it flushes), then more data elsewhere so
        // the tombstones' WAL segment fills and spills.
        server.copy_in(&pseudo_random_bytes(3, 4 * MIB), "noise.img", true);
        let out = run_py("map_layout.py", &[&server.tcp_uri()]);
        assert!(out.status.success(), "map_layout.py: {}", common::all_output(&out));
        if how == "SIGKILL" {
            // At once, while the layout's FLUSH has just put the tombstones in a spill
            // chunk. Whether a checkpoint also covers them by then depends on timing;
            // recover's handling of tombstones in chunks past the checkpoint is pinned
            // by chunk::rebuild::tests.
            server.kill9();
            std::fs::remove_dir_all(&data_dir).expect("lose the data directory");
            recover_from(&objects, &data_dir);
            let again = Server::start(&args);
            let got = again.copy_out(4 * MIB);
            assert_same_blocks("SIGKILL: the layout after recover", &got, &layout_expected());
            again.stop();
            continue;
        }
        let tail = server.dir().join("tail.img");
        std::fs::write(&tail, pseudo_random_bytes(4, 4 * MIB)).expect("write tail");
        let uri = format!("nbd://127.0.0.1:{}/", server.port());
        let py = format!(
            "import nbd; h = nbd.NBD(); h.connect_uri({uri:?}); h.pwrite(open({:?}, 'rb').read(), 8 << 20); h.flush(); h.shutdown()",
            tail.to_string_lossy()
        );
        server.run_ok(Command::new(common::SYSTEM_PYTHON).args(["-c", &py]));
        let (status, log) = server.terminate();
        assert!(status.success(), "{log}");
        std::fs::remove_dir_all(&data_dir).expect("lose the data directory");
        recover_from(&objects, &data_dir);
        let again = Server::start(&args);
        let got = again.copy_out(12 * MIB);
        assert_same_blocks(&format!("{how}: the layout after recover"), &got[..4 * MIB], &layout_expected());
        assert_same_blocks(
            &format!("{how}: the tail after recover"),
            &got[8 * MIB..],
            &pseudo_random_bytes(4, 4 * MIB),
        );
        again.stop();
    }
}
