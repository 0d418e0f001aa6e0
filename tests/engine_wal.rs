//! The durable engine through its library API, with the file-system seam counting syncs
//! and injecting faults. No timing assertions: counts and contents only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nbd::{BlockDevice, DeviceError, Errno, ZeroFlags};
use spillway::chunk::spiller::SpillConfig;
use spillway::io::faulty::{Faults, FaultyFs};
use spillway::io::std_fs::StdFs;
use spillway::volume::{Volume, VolumeConfig};
use spillway::wal::{Durability, RecoveryMode, WalCompress};

const BS: usize = 4096;

/// The WAL layer alone: nothing moves to chunks, so the tests see (and damage) the log
/// itself. tests/chunks_local.rs and tests/chunks_s3.rs cover the spill.
fn cfg(durability: Durability) -> VolumeConfig {
    let spill = SpillConfig { hold_in_wal: true, ..SpillConfig::default() };
    VolumeConfig { size: Some(64 << 20), durability, spill, ..VolumeConfig::default() }
}

fn backend(dir: &Path) -> spillway::backend::DynBackend {
    spillway::backend::for_volume(None, None, dir, "test").expect("local backend")
}

async fn open(dir: &Path, cfg: VolumeConfig) -> (Volume, Arc<Faults>) {
    let (fs, faults) = FaultyFs::new(Arc::new(StdFs));
    let v = Volume::open(Arc::new(fs), dir, backend(dir), cfg).await.expect("volume opens");
    (v, faults)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read(v: &Volume, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    v.read(offset, &mut b).await.expect("read");
    b
}

/// WAL segment files of a volume, newest (highest segment id) last.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            (b.len() >= 64 && &b[..8] == b"SPILLWAL").then(|| (u64::from_le_bytes(b[16..24].try_into().unwrap()), p))
        })
        .collect();
    out.sort();
    out
}

/// Offsets of every record of segment `id` in its file, walking the chain of headers.
fn record_offsets(path: &Path, id: u64) -> Vec<(u64, u64)> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 4096usize;
    while at + 48 <= b.len() {
        let magic = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let seg = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        if magic != 0x5257_5053 || seg != id {
            break;
        }
        let len = 48 + u64::from(u32::from_le_bytes(b[at + 36..at + 40].try_into().unwrap()));
        out.push((at as u64, len));
        at += len as usize;
    }
    out
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_syncs_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (v, faults) = open(dir.path(), cfg(Durability::Strict)).await;
    // A slow sync (like an SD card) makes writers pile up behind each one.
    *faults.sync_latency.lock() = Duration::from_millis(5);
    let v = Arc::new(v);
    let before = faults.syncs();
    let writers = 32;
    let per_writer = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let v = Arc::clone(&v);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let block = (w * per_writer + i) as u64;
                v.write(block * BS as u64, &pattern(block, BS), false).await.expect("strict write");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let writes = (writers * per_writer) as u64;
    let syncs = faults.syncs() - before;
    println!("{writes} strict writes from {writers} writers took {syncs} syncs");
    assert!(syncs * 4 <= writes, "group commit: {syncs} syncs for {writes} writes");
    for b in 0..writes {
        assert_eq!(read(&v, b * BS as u64, BS).await, pattern(b, BS), "block {b}");
    }
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_mode_syncs_only_on_flush_and_fua() {
    let dir = tempfile::tempdir().unwrap();
    let (v, faults) = open(dir.path(), cfg(Durability::Relaxed)).await;
    let start = faults.syncs();
    for b in 0..200u64 {
        v.write(b * BS as u64, &pattern(b, BS), false).await.unwrap();
    }
    // Give a time-based sync every chance to happen; none may.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(faults.syncs(), start, "no sync between FLUSHes");
    v.flush().await.unwrap();
    assert_eq!(faults.syncs(), start + 1, "one sync per FLUSH");
    v.flush().await.unwrap();
    assert_eq!(faults.syncs(), start + 1, "a FLUSH with nothing unsynced costs nothing");
    v.write(0, &pattern(9, BS), false).await.unwrap();
    assert_eq!(faults.syncs(), start + 1);
    v.write(BS as u64, &pattern(10, BS), true).await.unwrap();
    assert_eq!(faults.syncs(), start + 2, "FUA syncs");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_syncs_by_interval_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let c = VolumeConfig { sync_interval: Duration::from_millis(20), ..cfg(Durability::Batched) };
    let (v, faults) = open(dir.path(), c).await;
    let start = faults.syncs();
    v.write(0, &pattern(1, BS), false).await.unwrap();
    // The interval sync comes on its own; wait for it by polling the WAL's progress.
    for _ in 0..500 {
        let p = v.durable_progress();
        if p.durable >= p.written && faults.syncs() > start {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(faults.syncs(), start + 1, "exactly one interval sync for one write");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_with_wal_append_gathers_small_writes_and_still_syncs_by_interval() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(2);
    let c = VolumeConfig { sync_interval: interval, wal_append: 64 << 10, ..cfg(Durability::Batched) };
    let (v, faults) = open(dir.path(), c).await;
    let (writes0, syncs0) = (faults.writes(), faults.syncs());
    // 16 blocks are 64 KiB: the first 15 wait in memory, the 16th sends all of them to the
    // log in one append (not synced: the interval is not up and nothing asked for it).
    let started = std::time::Instant::now();
    for b in 0..15u64 {
        v.write(b * BS as u64, &pattern(b, BS), false).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = started.elapsed() < interval;
    assert_eq!(faults.writes(), writes0, "below wal_append, nothing is written");
    assert_eq!(read(&v, 3 * BS as u64, BS).await, pattern(3, BS), "held blocks read back from memory");
    v.write(15 * BS as u64, &pattern(15, BS), false).await.unwrap();
    for _ in 0..500 {
        if faults.writes() > writes0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(faults.writes(), writes0 + 1, "64 KiB held: one append");
    if early && started.elapsed() < interval {
        assert_eq!(faults.syncs(), syncs0, "written, not synced before the interval");
    }
    // The interval's sync comes on its own, though nothing is held any more.
    for _ in 0..1000 {
        let p = v.durable_progress();
        if p.durable >= p.written && faults.syncs() > syncs0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(faults.syncs(), syncs0 + 1, "one interval sync for the append");
    // A FLUSH logs and syncs what is held at once.
    v.write(20 * BS as u64, &pattern(20, BS), false).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!((faults.writes(), faults.syncs()), (writes0 + 2, syncs0 + 2), "FLUSH: one append, one sync");
    for b in (0..16u64).chain([20]) {
        assert_eq!(read(&v, b * BS as u64, BS).await, pattern(b, BS), "block {b}");
    }
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sync_poisons_the_volume() {
    for mode in [Durability::Strict, Durability::Batched] {
        let dir = tempfile::tempdir().unwrap();
        let (v, faults) = open(dir.path(), cfg(mode)).await;
        v.write(0, &pattern(1, BS), false).await.unwrap();
        v.flush().await.unwrap();
        faults.fail_syncs.store(true, std::sync::atomic::Ordering::SeqCst);
        let first = v.write(BS as u64, &pattern(2, BS), false).await;
        let flush = v.flush().await;
        assert_eq!(flush.map_err(|e| e.errno()), Err(Errno::Io), "{mode:?}: a flush after a failed sync fails");
        if mode == Durability::Strict {
            assert_eq!(first.map_err(|e| e.errno()), Err(Errno::Io), "strict write waits for its sync");
        }
        // The fault is gone, but the volume stays poisoned until restart.
        faults.fail_syncs.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(v.write(0, &pattern(3, BS), false).await.map_err(|e| e.errno()), Err(Errno::Io));
        assert_eq!(v.flush().await.map_err(|e| e.errno()), Err(Errno::Io));
        assert_eq!(v.write_zeroes(0, BS as u64, ZeroFlags::default()).await.map_err(|e| e.errno()), Err(Errno::Io));
        // Reads still work, and serve what was written.
        assert_eq!(read(&v, 0, BS).await, pattern(1, BS));
        assert!(v.close().await.is_err(), "close reports the poisoning");
        drop(v);
        // After a restart, everything flushed before the failure is there.
        let (v, _) = open(dir.path(), cfg(mode)).await;
        assert_eq!(read(&v, 0, BS).await, pattern(1, BS), "{mode:?}: flushed data survives");
        v.close().await.unwrap();
    }
}

/// Ten strict writes, each its own synced batch: records 1..=10 in one segment.
async fn ten_synced_records(dir: &Path) -> (PathBuf, u64, Vec<(u64, u64)>) {
    let (v, _) = open(dir, cfg(Durability::Strict)).await;
    for i in 0..10u64 {
        v.write(i * BS as u64, &pattern(100 + i, BS), false).await.unwrap();
    }
    v.close().await.unwrap();
    let (id, path) = segments(dir).pop().unwrap();
    let recs: Vec<_> = record_offsets(&path, id).into_iter().filter(|&(_, len)| len == 48 + BS as u64).collect();
    assert_eq!(recs.len(), 10, "ten data records");
    (path, id, recs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_dropped_and_the_rest_survives() {
    // A bit flip in the last record, a half-written last record, a zeroed last page.
    for damage in ["flip", "half", "zero-page"] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, recs) = ten_synced_records(dir.path()).await;
        let (at, len) = recs[9];
        match damage {
            "flip" => flip(&path, at + 48 + 100),
            "half" => {
                let mut b = std::fs::read(&path).unwrap();
                b[(at + len / 2) as usize..(at + len) as usize].fill(0);
                std::fs::write(&path, b).unwrap();
            }
            _ => {
                let mut b = std::fs::read(&path).unwrap();
                let page = (at + 48 + 4096) / 4096 * 4096 - 4096;
                b[page as usize..(page + 4096) as usize].fill(0);
                std::fs::write(&path, b).unwrap();
            }
        }
        let (v, _) = open(dir.path(), cfg(Durability::Strict)).await;
        for i in 0..9u64 {
            assert_eq!(read(&v, i * BS as u64, BS).await, pattern(100 + i, BS), "{damage}: block {i}");
        }
        assert_eq!(read(&v, 9 * BS as u64, BS).await, vec![0u8; BS], "{damage}: the torn write is gone");
        // The log goes on: write more, restart again, and both old and new data are there.
        v.write(20 * BS as u64, &pattern(7, BS), false).await.unwrap();
        v.close().await.unwrap();
        drop(v);
        let (v, _) = open(dir.path(), cfg(Durability::Strict)).await;
        assert_eq!(read(&v, 0, BS).await, pattern(100, BS), "{damage}: second restart");
        assert_eq!(read(&v, 20 * BS as u64, BS).await, pattern(7, BS), "{damage}: second restart");
        v.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_refuses_to_start_unless_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, recs) = ten_synced_records(dir.path()).await;
    // Record 3 was synced before records 4..10 were written: damage there is not a torn tail.
    flip(&path, recs[3].0 + 48 + 7);
    let (fs, _) = FaultyFs::new(Arc::new(StdFs));
    let err = Volume::open(Arc::new(fs), dir.path(), backend(dir.path()), cfg(Durability::Strict))
        .await
        .err()
        .expect("refuses to start");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("corruption") && msg.contains("tolerate-corruption"), "clear error: {msg}");

    let tolerate = VolumeConfig { recovery: RecoveryMode::TolerateCorruption, ..cfg(Durability::Strict) };
    let (v, _) = open(dir.path(), tolerate).await;
    for i in (0..10u64).filter(|&i| i != 3) {
        assert_eq!(read(&v, i * BS as u64, BS).await, pattern(100 + i, BS), "block {i} around the damage");
    }
    assert_eq!(read(&v, 3 * BS as u64, BS).await, vec![0u8; BS], "the damaged record is dropped, never served");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_dropped_at_start_up_is_never_spilled() {
    // The ten records are only in the WAL (`cfg` keeps the spill off), record 3 damaged.
    let dir = tempfile::tempdir().unwrap();
    let (path, _, recs) = ten_synced_records(dir.path()).await;
    flip(&path, recs[3].0 + 48 + 7);
    // With the spill on, the records replay kept go to chunks; the dropped one is never read
    // again (reading it would fail its checksum and poison the volume).
    let with_spill = |recovery| VolumeConfig { recovery, spill: SpillConfig::default(), ..cfg(Durability::Strict) };
    let (v, _) = open(dir.path(), with_spill(RecoveryMode::TolerateCorruption)).await;
    v.spill_now().await.expect("the records replay kept are spilled");
    v.write(20 * BS as u64, &pattern(120, BS), false).await.expect("the volume takes writes");
    v.close().await.expect("and closes cleanly");
    drop(v);
    // The checkpoint now starts the log past the damage: a plain start works, from chunks.
    let (v, _) = open(dir.path(), with_spill(RecoveryMode::TolerateTail)).await;
    for i in (0..10u64).filter(|&i| i != 3) {
        assert_eq!(read(&v, i * BS as u64, BS).await, pattern(100 + i, BS), "block {i}");
    }
    assert_eq!(read(&v, 3 * BS as u64, BS).await, vec![0u8; BS], "the dropped record stays dropped");
    assert_eq!(read(&v, 20 * BS as u64, BS).await, pattern(120, BS));
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = VolumeConfig { segment_bytes: 1 << 20, ..cfg(Durability::Relaxed) };
    let (v, _) = open(dir.path(), c.clone()).await;
    // 3 MiB of distinct blocks: at least three segments, all live.
    for b in 0..768u64 {
        v.write(b * BS as u64, &pattern(b, BS), false).await.unwrap();
    }
    v.close().await.unwrap();
    drop(v);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{} segments", segs.len());
    std::fs::remove_file(&segs[1].1).unwrap();
    let (fs, _) = FaultyFs::new(Arc::new(StdFs));
    let err = Volume::open(Arc::new(fs), dir.path(), backend(dir.path()), c).await.err().expect("refuses to start");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_recycled_and_data_survives() {
    // 8 segment files, and the smallest WAL the engine accepts (3), where a full WAL must
    // still start the spill at once rather than wait for the aged spill (30 s here).
    for max in [8, 3] {
        recycle_through(max).await;
    }
}

async fn recycle_through(max: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Recycling needs the spill: a segment is reused once its data is in chunks and a
    // checkpoint says so.
    // At most `max` segment files: the writer waits for a free one rather than create
    // another, so writing 16 MiB through them finishes only if spilled segments are reused.
    let c = VolumeConfig {
        segment_bytes: 1 << 20,
        max_wal_segments: max,
        spill: SpillConfig::default(),
        ..cfg(Durability::Batched)
    };
    let (v, _) = open(dir.path(), c.clone()).await;
    // Overwrite the same 16 blocks over and over: 16 MiB of log, 64 KiB live. Without
    // reuse the ninth segment never comes and the writes stall.
    let work = async {
        for round in 0..256u64 {
            for b in 0..16u64 {
                v.write(b * BS as u64, &pattern(round * 100 + b, BS), false).await.unwrap();
            }
            if round % 8 == 7 {
                v.flush().await.unwrap();
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), work)
        .await
        .unwrap_or_else(|_| panic!("16 MiB of writes through {max} WAL files stalled: segments are not reused"));
    for b in 0..16u64 {
        assert_eq!(read(&v, b * BS as u64, BS).await, pattern(255 * 100 + b, BS), "block {b} while serving");
    }
    v.close().await.unwrap();
    drop(v);
    let files = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    // 16 segments' worth of log through at most `max` files: a segment waits in the WAL
    // until the spill's high-water mark (6 sealed segments of 8, 1 of 3), then for its
    // spill and a checkpoint, before reuse.
    assert!(files <= max, "{files} WAL files: the bound of {max} holds");
    let (v, _) = open(dir.path(), c).await;
    for b in 0..16u64 {
        assert_eq!(read(&v, b * BS as u64, BS).await, pattern(255 * 100 + b, BS), "block {b} after restart");
    }
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sub_block_writers_match_a_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path(), cfg(Durability::Batched)).await;
    let v = Arc::new(v);
    // 8 writers, each owning every 8th byte range of 3 shared blocks (odd offsets and
    // lengths, straddling block edges): no update may be lost.
    let span = 3 * BS as u64;
    let base = 5 * BS as u64 + 1000;
    let mut model = vec![0u8; span as usize];
    let mut tasks = Vec::new();
    let piece = 37usize;
    for w in 0..8usize {
        let mut writes = Vec::new();
        let mut at = w * piece;
        while at + piece <= span as usize {
            let data = pattern((w * 100_000 + at) as u64, piece);
            model[at..at + piece].copy_from_slice(&data);
            writes.push((base + at as u64, data));
            at += 8 * piece;
        }
        let v = Arc::clone(&v);
        tasks.push(tokio::spawn(async move {
            for (off, data) in writes {
                v.write(off, &data, false).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(read(&v, base, span as usize).await, model, "while serving");
    v.flush().await.unwrap();
    Arc::into_inner(v).unwrap().close().await.unwrap();
    let (v, _) = open(dir.path(), cfg(Durability::Batched)).await;
    assert_eq!(read(&v, base, span as usize).await, model, "after restart");
    assert_eq!(read(&v, base - 1000, 1000).await, vec![0u8; 1000], "bytes before untouched");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_and_zero_are_tombstones_that_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (v, faults) = open(dir.path(), cfg(Durability::Relaxed)).await;
    let data = pattern(1, 64 * BS);
    v.write(0, &data, false).await.unwrap();
    v.flush().await.unwrap();
    let bytes_before = faults.bytes_written.load(std::sync::atomic::Ordering::SeqCst);
    // Trim 16 blocks and zero 16 MiB: tombstones, not stored zeroes.
    v.trim(8 * BS as u64, 16 * BS as u64, false).await.unwrap();
    v.write_zeroes(32 * BS as u64 + 5, (16 << 20) - 5, ZeroFlags::default()).await.unwrap();
    v.flush().await.unwrap();
    let written = faults.bytes_written.load(std::sync::atomic::Ordering::SeqCst) - bytes_before;
    assert!(written < 64 * 1024, "{written} bytes of WAL for trimming and zeroing 16 MiB");
    let status = v.block_status(0, 64 * BS as u64).await.unwrap();
    assert!(status.iter().any(|e| e.hole), "trimmed blocks are holes: {status:?}");
    v.close().await.unwrap();
    drop(v);
    let (v, _) = open(dir.path(), cfg(Durability::Relaxed)).await;
    let mut expect = data.clone();
    expect[8 * BS..24 * BS].fill(0);
    expect[32 * BS + 5..].fill(0);
    assert_eq!(read(&v, 0, 64 * BS).await, expect);
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_volume_identity_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path(), cfg(Durability::Batched)).await;
    v.close().await.unwrap();
    drop(v);
    let (fs, _) = FaultyFs::new(Arc::new(StdFs));
    let other = VolumeConfig { size: Some(128 << 20), ..cfg(Durability::Batched) };
    let err = Volume::open(Arc::new(fs), dir.path(), backend(dir.path()), other)
        .await
        .err()
        .expect("a different size is refused");
    assert!(err.to_string().contains("cannot be resized"), "{err}");
    // Without a size, the volume keeps its own.
    let (v, _) = open(dir.path(), VolumeConfig { size: None, ..cfg(Durability::Batched) }).await;
    assert_eq!(v.size(), 64 << 20);
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_at_the_memory_bound_and_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest dirty bound, and far more data in flight than it holds.
    let c = VolumeConfig { max_dirty_bytes: 40 << 20, ..cfg(Durability::Relaxed) };
    let (v, _) = open(dir.path(), c).await;
    let v = Arc::new(v);
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let v = Arc::clone(&v);
        tasks.push(tokio::spawn(async move {
            for pass in 0..6u64 {
                for i in 0..8u64 {
                    let off = (w * 8 + i) << 20;
                    let data = pattern(pass * 1000 + w * 8 + i, 1 << 20);
                    v.write(off, &data, false).await.unwrap_or_else(|e| panic!("write at {off} failed: {e}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for blk in [0u64, 17, 63] {
        assert_eq!(read(&v, blk << 20, 1 << 20).await, pattern(5000 + blk, 1 << 20), "MiB {blk}");
    }
    Arc::into_inner(v).unwrap().close().await.unwrap();
}

/// Compressible but distinct per block: runs of one byte, with the block number in every
/// 64-byte line.
fn compressible(block: u64) -> Vec<u8> {
    (0..BS).map(|i| if i % 64 < 8 { (block >> (8 * (i % 8))) as u8 } else { (i / 64) as u8 ^ block as u8 }).collect()
}

/// Data records of segment `id`: (offset, compressed, count, data_len), walking the chain
/// of headers (an LZ4 payload is padded to 16 bytes on disk).
fn data_records(path: &Path, id: u64) -> Vec<(u64, bool, u32, u32)> {
    let b = std::fs::read(path).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 4096usize;
    while at + 48 <= b.len() {
        let seg = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        if u32_at(at) != 0x5257_5053 || seg != id {
            break;
        }
        let (kind, lz4) = (b[at + 4], b[at + 5] & 2 != 0);
        let (count, data_len) = (u32_at(at + 32), u32_at(at + 36));
        if kind == 1 {
            out.push((at as u64, lz4, count, data_len));
        }
        let payload = if kind == 1 && lz4 { data_len.next_multiple_of(16) } else { data_len };
        at += 48 + payload as usize;
    }
    out
}

fn lz4_cfg(durability: Durability, hold_in_wal: bool) -> VolumeConfig {
    let spill = SpillConfig { hold_in_wal, chunk_bytes: 256 << 10, ..SpillConfig::default() };
    VolumeConfig { wal_compress: WalCompress::Lz4, spill, ..cfg(durability) }
}

/// What the LZ4 test writes: blocks 0..200 compressible, 300..400 random, and a sub-block
/// write into block 5 (a read-modify-write of a compressed block).
fn lz4_expect(block: u64) -> Vec<u8> {
    match block {
        5 => {
            let mut b = compressible(5);
            b[100..300].copy_from_slice(&pattern(55, 200));
            b
        }
        0..200 => compressible(block),
        300..400 => pattern(block, BS),
        _ => vec![0u8; BS],
    }
}

async fn lz4_check(v: &Volume, what: &str) {
    // One large read (runs of raw WAL blocks and compressed blocks side by side)...
    let all = read(v, 0, 420 * BS).await;
    for b in 0..420u64 {
        let at = b as usize * BS;
        assert!(all[at..at + BS] == lz4_expect(b)[..], "{what}: block {b} in the large read");
    }
    // ...and pieces inside blocks.
    for b in [0u64, 5, 63, 64, 199, 300, 399] {
        let got = read(v, b * BS as u64 + 1000, 100).await;
        assert_eq!(got, lz4_expect(b)[1000..1100], "{what}: a piece of block {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_wal_stores_compressible_data_smaller_and_reads_back_from_wal_replay_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Relaxed, true)).await;
    // Records of 64 blocks, and single blocks.
    for r in 0..3u64 {
        let data: Vec<u8> = (r * 64..r * 64 + 64).flat_map(compressible).collect();
        v.write(r * 64 * BS as u64, &data, false).await.unwrap();
    }
    for b in 192..200u64 {
        v.write(b * BS as u64, &compressible(b), false).await.unwrap();
    }
    let random: Vec<u8> = (300..400u64).flat_map(|b| pattern(b, BS)).collect();
    v.write(300 * BS as u64, &random, false).await.unwrap();
    v.flush().await.unwrap();
    v.write(5 * BS as u64 + 100, &pattern(55, 200), true).await.unwrap();
    lz4_check(&v, "from the WAL").await;

    // The log really holds compressed records for the compressible data, raw ones for the
    // random data.
    let (id, path) = segments(dir.path()).pop().unwrap();
    let recs = data_records(&path, id);
    let (lz, raw): (Vec<(u64, bool, u32, u32)>, Vec<_>) = recs.iter().partition(|r| r.1);
    let lz_raw_bytes: u64 = lz.iter().map(|r| u64::from(r.2) * BS as u64).sum();
    let lz_stored: u64 = lz.iter().map(|r| u64::from(r.3)).sum();
    println!("{} LZ4 records: {lz_raw_bytes} raw bytes stored as {lz_stored}", lz.len());
    // Three 64-block records, eight single blocks, and the rewrite of block 5.
    assert_eq!(lz.len(), 12, "every compressible record is stored LZ4: {recs:?}");
    assert!(lz_stored * 8 < lz_raw_bytes, "compressible data shrinks at least 8 times: {recs:?}");
    assert!(raw.iter().any(|r| r.2 == 64 && r.3 == 64 * BS as u32), "random data stays raw: {recs:?}");
    assert!(raw.iter().all(|r| u64::from(r.3) == u64::from(r.2) * BS as u64));
    v.close().await.unwrap();
    drop(v);

    // Replay finds the compressed records (nothing was spilled).
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Relaxed, true)).await;
    assert_eq!(v.spilled_blocks(), 0);
    assert_eq!(v.index_len(), 300);
    lz4_check(&v, "after replay").await;
    v.close().await.unwrap();
    drop(v);

    // The spill takes the blocks of compressed records into chunks.
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Relaxed, false)).await;
    v.write(150 * BS as u64, &compressible(150), false).await.unwrap(); // a fresh record too
    v.flush().await.unwrap();
    v.spill_now().await.unwrap();
    assert_eq!(v.spilled_blocks(), 300, "every written block is in a chunk");
    assert_eq!(v.index_len(), 0, "the WAL copies are let go");
    lz4_check(&v, "from chunks").await;
    v.close().await.unwrap();
    drop(v);
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Relaxed, false)).await;
    lz4_check(&v, "from chunks after a restart").await;
    v.close().await.unwrap();
}

/// Ten strict single-block LZ4 records in one segment: (path, their data records).
async fn ten_compressed_records(dir: &Path) -> (PathBuf, Vec<(u64, bool, u32, u32)>) {
    let (v, _) = open(dir, lz4_cfg(Durability::Strict, true)).await;
    for i in 0..10u64 {
        v.write(i * BS as u64, &compressible(100 + i), false).await.unwrap();
    }
    v.close().await.unwrap();
    let (id, path) = segments(dir).pop().unwrap();
    let recs = data_records(&path, id);
    assert_eq!(recs.len(), 10, "ten data records");
    assert!(recs.iter().all(|r| r.1 && r.2 == 1), "all compressed: {recs:?}");
    (path, recs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_compressed_tail_is_dropped_like_a_raw_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, recs) = ten_compressed_records(dir.path()).await;
    let (at, _, _, data_len) = recs[9];
    flip(&path, at + 48 + u64::from(data_len) / 2);
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Strict, true)).await;
    for i in 0..9u64 {
        assert_eq!(read(&v, i * BS as u64, BS).await, compressible(100 + i), "block {i}");
    }
    assert_eq!(read(&v, 9 * BS as u64, BS).await, vec![0u8; BS], "the torn write is gone");
    v.write(20 * BS as u64, &compressible(7), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Strict, true)).await;
    assert_eq!(read(&v, 0, BS).await, compressible(100), "second restart");
    assert_eq!(read(&v, 20 * BS as u64, BS).await, compressible(7), "second restart");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_record_damaged_under_a_running_volume_fails_the_read() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (path, recs) = ten_compressed_records(dir.path()).await;
    let (v, _) = open(dir.path(), lz4_cfg(Durability::Strict, true)).await;
    // Damage record 4 after replay checked it: a read must fail, not return other bytes.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8; 1];
    let at = recs[4].0 + 48 + 3;
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    let mut buf = vec![0u8; BS];
    let err = v.read(4 * BS as u64, &mut buf).await.expect_err("a damaged record fails the read");
    println!("{err}");
    assert_eq!(err.errno(), Errno::Io);
    assert!(err.to_string().contains(&format!("offset {}", recs[4].0)), "names the offset: {err}");
    assert_eq!(read(&v, 3 * BS as u64, BS).await, compressible(103), "its neighbours still read");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_of_a_later_format_version_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path(), cfg(Durability::Strict)).await;
    v.write(0, &pattern(1, BS), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let (_, path) = segments(dir.path()).pop().unwrap();
    let mut b = std::fs::read(&path).unwrap();
    assert_eq!(b[8..12], 2u32.to_le_bytes(), "this build writes version 2");
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c_of(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, b).unwrap();
    let (fs, _) = FaultyFs::new(Arc::new(StdFs));
    let err = Volume::open(Arc::new(fs), dir.path(), backend(dir.path()), cfg(Durability::Strict))
        .await
        .err()
        .expect("refuses a segment it cannot read, rather than reusing it as empty");
    assert!(err.to_string().contains("version 3"), "{err}");
}

/// CRC32C (Castagnoli), bitwise: independent of the crate the server uses.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// One WAL range whose LZ4 records hold more raw data than the spill decompresses at once
/// (64 MiB): the spill takes it in parts, and every block reads back from the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_range_of_more_compressed_data_than_one_spill_step_spills_in_parts() {
    const MIB: u64 = 1 << 20;
    let blocks = 72 * MIB / BS as u64;
    let dir = tempfile::tempdir().unwrap();
    let c = VolumeConfig { size: Some(128 * MIB), ..lz4_cfg(Durability::Relaxed, false) };
    let (v, _) = open(dir.path(), c.clone()).await;
    for m in 0..blocks * BS as u64 / MIB {
        let first = m * MIB / BS as u64;
        let data: Vec<u8> = (first..first + MIB / BS as u64).flat_map(compressible).collect();
        v.write(m * MIB, &data, false).await.unwrap();
    }
    v.flush().await.unwrap();
    assert_eq!(segments(dir.path()).len(), 1, "all of it in one segment, so one spill range");
    v.spill_now().await.unwrap();
    assert_eq!(v.spilled_blocks(), blocks);
    assert_eq!(v.index_len(), 0);
    for m in 0..blocks * BS as u64 / MIB {
        let got = read(&v, m * MIB, MIB as usize).await;
        let first = m * MIB / BS as u64;
        let want: Vec<u8> = (first..first + MIB / BS as u64).flat_map(compressible).collect();
        assert!(got == want, "MiB {m} reads back wrong from the chunks");
    }
    v.close().await.unwrap();
}

/// What happened to one file, in order: writes (offset, length, all zeroes?), and syncs
/// (when one began, and when it ended).
#[derive(Debug, Clone, Copy, PartialEq)]
enum FileEvent {
    Write { at: u64, len: u64, zeroes: bool },
    SyncStart,
    Sync,
}

type FileLog = Arc<parking_lot::Mutex<Vec<(String, FileEvent)>>>;

/// The real file system, recording every write and sync by file name; each sync takes
/// at least `sync_delay`.
struct Recording {
    log: FileLog,
    sync_delay: Duration,
}

struct RecordingFile {
    name: String,
    inner: Arc<dyn spillway::io::File>,
    log: FileLog,
    sync_delay: Duration,
}

impl spillway::io::File for RecordingFile {
    fn write_all_vectored_at(&self, bufs: &[std::io::IoSlice<'_>], offset: u64) -> std::io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let zeroes = bufs.iter().all(|b| b.iter().all(|&x| x == 0));
        self.inner.write_all_vectored_at(bufs, offset)?;
        self.log.lock().push((self.name.clone(), FileEvent::Write { at: offset, len, zeroes }));
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.log.lock().push((self.name.clone(), FileEvent::SyncStart));
        std::thread::sleep(self.sync_delay);
        self.inner.sync_data()?;
        self.log.lock().push((self.name.clone(), FileEvent::Sync));
        Ok(())
    }
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

impl spillway::io::FileSystem for Recording {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn spillway::io::File>> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let inner = StdFs.open(path, create)?;
        Ok(Arc::new(RecordingFile { name, inner, log: Arc::clone(&self.log), sync_delay: self.sync_delay }))
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        StdFs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.sync_dir(dir)
    }
    fn read_file(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        StdFs.read_file(path)
    }
    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        StdFs.write_file_atomic(path, bytes)
    }
}

/// How far from offset 0 a file was covered by writes of zeroes followed by a sync, before
/// anything else was written into it; and whether anything else was.
fn written_through(log: &[(String, FileEvent)], name: &str) -> (u64, bool) {
    let mut zeroed = 0u64;
    let mut through = 0u64;
    for (_, e) in log.iter().filter(|(n, _)| n == name) {
        match *e {
            FileEvent::Write { at, len, zeroes: true } if at == zeroed => zeroed += len,
            FileEvent::Sync => through = zeroed,
            FileEvent::SyncStart => {}
            FileEvent::Write { .. } => return (through, true),
        }
    }
    (through, false)
}

async fn open_recording(dir: &Path, c: VolumeConfig, log: &FileLog) -> Volume {
    open_recording_slow(dir, c, log, Duration::ZERO).await
}

async fn open_recording_slow(dir: &Path, c: VolumeConfig, log: &FileLog, sync_delay: Duration) -> Volume {
    let fs = Recording { log: Arc::clone(log), sync_delay };
    Volume::open(Arc::new(fs), dir, backend(dir), c).await.expect("volume opens")
}

/// The names of the WAL segment files that had any write or sync, sorted.
fn segment_files(log: &[(String, FileEvent)]) -> Vec<String> {
    let mut names: Vec<String> = log.iter().map(|(n, _)| n.clone()).filter(|n| n.starts_with("wal-")).collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_segment_files_are_written_through_before_they_take_records() {
    // A preallocated file's syncs also commit the file system's unwritten-extent
    // conversions; a file written through once does not (docs/wal.md). A new volume writes
    // its first segment through at start-up; while a segment with frequent syncs fills, a
    // thread prepares the next new file, and the writer never takes a half-written one.
    let dir = tempfile::tempdir().unwrap();
    let log: FileLog = Arc::default();
    let seg = 1u64 << 20;
    let c = VolumeConfig { segment_bytes: seg, max_wal_segments: 8, ..cfg(Durability::Strict) };
    let v = open_recording(dir.path(), c.clone(), &log).await;
    // Written through and synced, then given its header.
    assert_eq!(written_through(&log.lock(), "wal-000001.seg"), (seg, true), "first segment, at start-up");
    // Fill the first segment past half, a sync per 16 KiB write (strict): the next file is
    // being prepared.
    let chunk = 16 << 10;
    let mut written = 0u64;
    while written < seg * 5 / 8 {
        v.write(written, &pattern(written, chunk), false).await.unwrap();
        written += chunk as u64;
    }
    let mut prepared = false;
    for _ in 0..3000 {
        if written_through(&log.lock(), "wal-000002.seg").0 == seg {
            prepared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(prepared, "the second segment file was written through while the first filled");
    // Three more segments' worth: every file the writer puts records into was either written
    // through completely first, or not touched until the writer's own first write.
    while written < seg * 4 {
        v.write(written, &pattern(written, chunk), false).await.unwrap();
        written += chunk as u64;
    }
    v.close().await.unwrap();
    drop(v);
    let events = log.lock().clone();
    let names = segment_files(&events);
    assert!(names.len() >= 4, "4 MiB of records went through 4 or more segment files: {names:?}");
    for name in &names {
        let (through, used) = written_through(&events, name);
        assert!(through == 0 || through == seg, "{name}: written through to {through}, not all of it");
        if name.as_str() == "wal-000002.seg" {
            assert!(through == seg && used, "{name}: the prepared file took records");
        }
        // No record write may land in a file between its first zeroes and their sync.
        let first_other =
            events.iter().position(|(n, e)| n == name && matches!(e, FileEvent::Write { zeroes: false, .. }));
        let first_zero =
            events.iter().position(|(n, e)| n == name && matches!(e, FileEvent::Write { zeroes: true, .. }));
        if let (Some(z), Some(o)) = (first_zero, first_other) {
            if z < o {
                assert_eq!(through, seg, "{name}: records written while the file was being written through");
            }
        }
    }
    // Everything reads back after a restart; a prepared file never used is a free slot.
    let v = open_recording(dir.path(), c, &log).await;
    let mut at = 0u64;
    while at < written {
        assert_eq!(read(&v, at, chunk).await, pattern(at, chunk), "offset {at} after restart");
        at += chunk as u64;
    }
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_files_are_not_written_through_when_syncs_are_few() {
    // Writing a file through doubles its first pass of writes; with a sync per 1 MiB or
    // more it does not pay (src/wal/prepare.rs), so only the new volume's first segment is.
    let dir = tempfile::tempdir().unwrap();
    let log: FileLog = Arc::default();
    let seg = 1u64 << 20;
    let c = VolumeConfig { segment_bytes: seg, max_wal_segments: 8, ..cfg(Durability::Batched) };
    let v = open_recording(dir.path(), c, &log).await;
    let chunk = 256 << 10;
    for k in 0..16u64 {
        v.write(k * chunk as u64, &pattern(k, chunk), false).await.unwrap();
    }
    v.flush().await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let events = log.lock().clone();
    let names = segment_files(&events);
    assert!(names.len() >= 4, "4 MiB of records went through 4 or more segment files: {names:?}");
    assert_eq!(written_through(&events, "wal-000001.seg").0, seg, "the new volume's first segment");
    for name in &names[1..] {
        assert_eq!(written_through(&events, name).0, 0, "{name} was written through");
    }
}

/// Writes of record data (not zeroes) to WAL files that happened while a WAL sync ran, and
/// whether a sync ever began while another ran.
fn writes_during_syncs(log: &[(String, FileEvent)]) -> (usize, bool) {
    let (mut syncing, mut during, mut overlapped) = (false, 0, false);
    for (_, e) in log.iter().filter(|(n, _)| n.starts_with("wal-")) {
        match e {
            FileEvent::SyncStart => {
                overlapped |= syncing;
                syncing = true;
            }
            FileEvent::Sync => syncing = false,
            FileEvent::Write { zeroes: false, .. } if syncing => during += 1,
            FileEvent::Write { .. } => {}
        }
    }
    (during, overlapped)
}

/// `writers` tasks at once, each making `count` writes of `len` bytes; write `n` from
/// `first` on goes to `n * len` and holds `pattern(n, len)`.
async fn concurrent_writers(v: &Arc<Volume>, first: u64, writers: u64, count: u64, len: usize) {
    let tasks: Vec<_> = (0..writers)
        .map(|t| {
            let v = Arc::clone(v);
            tokio::spawn(async move {
                for i in 0..count {
                    let n = first + t * count + i;
                    v.write(n * len as u64, &pattern(n, len), false).await.expect("write");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_strict_writes_are_written_while_the_previous_sync_runs() {
    // With 1 MiB writes, a sync's thread lets go of the writer while the disk works, and
    // the other thread writes what arrives meanwhile (docs/wal.md, "Group commit"); with
    // 4 KiB writes the sync runs with the writer held. Syncs never overlap either way.
    let dir = tempfile::tempdir().unwrap();
    let log: FileLog = Arc::default();
    let slow = Duration::from_millis(20);
    let v = Arc::new(open_recording_slow(dir.path(), cfg(Durability::Strict), &log, slow).await);
    let start = log.lock().len();
    concurrent_writers(&v, 0, 8, 4, 1 << 20).await;
    let (during, overlapped) = writes_during_syncs(&log.lock()[start..]);
    assert!(during > 0, "no 1 MiB record was written while a sync ran");
    assert!(!overlapped, "two syncs ran at once");
    for n in 0..32u64 {
        assert!(read(&v, n << 20, 1 << 20).await == pattern(n, 1 << 20), "MiB {n} reads back wrong");
    }

    let start = log.lock().len();
    let small = (32 << 20) / BS as u64;
    concurrent_writers(&v, small, 32, 4, BS).await;
    let (during, overlapped) = writes_during_syncs(&log.lock()[start..]);
    assert_eq!((during, overlapped), (0, false), "4 KiB writes: syncs run with the writer held");
    Arc::into_inner(v).expect("no other users").close().await.unwrap();

    // Everything replied to survives a restart.
    let (v, _) = open(dir.path(), cfg(Durability::Strict)).await;
    for n in 0..32u64 {
        assert!(read(&v, n << 20, 1 << 20).await == pattern(n, 1 << 20), "MiB {n} after restart");
    }
    for b in small..small + 128 {
        assert_eq!(read(&v, b * BS as u64, BS).await, pattern(b, BS), "block {b} after restart");
    }
    v.close().await.unwrap();
}

/// The bytes of a READ reply, however the volume gave them.
fn reply_bytes(d: &nbd::ReadData) -> Vec<u8> {
    match d {
        nbd::ReadData::Copied(b) => b.to_vec(),
        nbd::ReadData::Lent(l) => {
            let mut slices = Vec::new();
            l.slices(&mut slices);
            slices.iter().flat_map(|s| s.iter().copied()).collect()
        }
    }
}

#[tokio::test]
async fn reads_of_blocks_in_memory_are_lent_and_writes_still_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    // Relaxed mode holds up to half the dirty bound in memory: 32 MiB, more than is written.
    let c = VolumeConfig { max_dirty_bytes: 64 << 20, ..cfg(Durability::Relaxed) };
    let (v, _) = open(dir.path(), c).await;
    let pool = nbd::pool::BufferPool::new(64 << 20);
    for mib in 0..20u64 {
        v.write(mib << 20, &pattern(mib, 1 << 20), false).await.unwrap();
    }
    // Held in memory (relaxed mode): whole-block reads are lent, up to the 16 MiB reserve.
    let mut lent = Vec::new();
    for mib in 0..17u64 {
        let d = v.read_data(mib << 20, pool.get(1 << 20)).await.unwrap();
        assert_eq!(reply_bytes(&d), pattern(mib, 1 << 20), "MiB {mib}");
        assert_eq!(matches!(d, nbd::ReadData::Lent(_)), mib < 16, "MiB {mib}: lent only within the reserve");
        lent.push(d);
    }
    // Unaligned or short reads are copied.
    let d = v.read_data(4096 + 1, pool.get(64 << 10)).await.unwrap();
    assert!(matches!(d, nbd::ReadData::Copied(_)));
    assert_eq!(reply_bytes(&d), pattern(0, 1 << 20)[4097..4097 + (64 << 10)]);
    // With the reserve out, overwrite everything several times over the dirty bound: the
    // lent bytes stay as they were, and no write fails for want of arena slots.
    for pass in 1..4u64 {
        for mib in 0..64u64 {
            v.write(mib << 20, &pattern(pass * 100 + mib, 1 << 20), false).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for (mib, d) in lent.iter().enumerate() {
        assert_eq!(reply_bytes(d), pattern(mib as u64, 1 << 20), "lent MiB {mib} changed");
    }
    drop(lent);
    // After a FLUSH the blocks are in the WAL: read back, copied, with the newest bytes.
    v.flush().await.unwrap();
    for mib in [0u64, 19, 63] {
        let d = v.read_data(mib << 20, pool.get(1 << 20)).await.unwrap();
        assert_eq!(reply_bytes(&d), pattern(300 + mib, 1 << 20), "MiB {mib} after flush");
    }
    v.close().await.unwrap();
}

/// The real file system, without the fault seam: only it maps WAL segments.
async fn open_mapped(dir: &Path, cfg: VolumeConfig) -> Volume {
    Volume::open(Arc::new(StdFs), dir, backend(dir), cfg).await.expect("volume opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_blocks_in_the_wal_are_lent_from_the_segment_and_recycling_goes_around_them() {
    let dir = tempfile::tempdir().unwrap();
    // Three 1 MiB segment files at most: with one held by a reply, the writer must recycle
    // the others, or the writes below stall.
    let c = VolumeConfig {
        segment_bytes: 1 << 20,
        max_wal_segments: 3,
        spill: SpillConfig::default(),
        ..cfg(Durability::Strict)
    };
    let v = open_mapped(dir.path(), c.clone()).await;
    let pool = nbd::pool::BufferPool::new(4 << 20);
    let first = pattern(7, 256 << 10);
    v.write(0, &first, false).await.unwrap();
    // Strict mode: the blocks are in the WAL, not in memory, and their pages are resident.
    let lent = v.read_data(0, pool.get(256 << 10)).await.unwrap();
    assert!(matches!(lent, nbd::ReadData::Lent(_)), "a whole-block read of WAL blocks is lent");
    assert_eq!(reply_bytes(&lent), first);
    // Short and unaligned reads are copied.
    let d = v.read_data(4096 + 1, pool.get(8 << 10)).await.unwrap();
    assert!(matches!(d, nbd::ReadData::Copied(_)));
    assert_eq!(reply_bytes(&d), first[4097..4097 + (8 << 10)]);
    // 16 MiB of log through 3 files while the reply holds its segment.
    let work = async {
        for round in 0..64u64 {
            v.write(0, &pattern(round + 100, 256 << 10), false).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("writes stalled: the segment lent to a reply blocks recycling");
    assert_eq!(reply_bytes(&lent), first, "the lent bytes changed under the reply");
    drop(lent);
    // The reply is gone: its segment is recycled like any other.
    let work = async {
        for round in 0..32u64 {
            v.write(0, &pattern(round + 200, 256 << 10), false).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), work).await.expect("writes after the reply stalled");
    let d = v.read_data(0, pool.get(256 << 10)).await.unwrap();
    assert_eq!(reply_bytes(&d), pattern(231, 256 << 10));
    v.close().await.unwrap();
    drop(v);
    let files = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(files <= 3, "{files} WAL files: the bound of 3 holds");
    let v = open_mapped(dir.path(), c).await;
    assert_eq!(read(&v, 0, 256 << 10).await, pattern(231, 256 << 10), "after restart");
    v.close().await.unwrap();
}

#[tokio::test]
async fn wal_blocks_not_in_the_page_cache_are_read_not_lent() {
    let dir = tempfile::tempdir().unwrap();
    let v = open_mapped(dir.path(), cfg(Durability::Strict)).await;
    let pool = nbd::pool::BufferPool::new(4 << 20);
    let data = pattern(3, 128 << 10);
    v.write(1 << 20, &data, false).await.unwrap();
    // Synced, so clean: the kernel can drop the pages, and nothing has mapped them yet.
    for (_, path) in segments(dir.path()) {
        let f = std::fs::File::open(&path).unwrap();
        nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
    }
    let d = v.read_data(1 << 20, pool.get(128 << 10)).await.unwrap();
    assert!(matches!(d, nbd::ReadData::Copied(_)), "pages not resident: a send would wait on the disk");
    assert_eq!(reply_bytes(&d), data);
    // Read once, they are resident again and the next read is lent.
    let d = v.read_data(1 << 20, pool.get(128 << 10)).await.unwrap();
    assert!(matches!(d, nbd::ReadData::Lent(_)));
    assert_eq!(reply_bytes(&d), data);
    v.close().await.unwrap();
}

#[tokio::test]
async fn at_most_a_quarter_of_the_wal_files_are_lent_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB segments hold at most 3 records of 64 blocks, so 256 KiB pieces 0, 4 and 8 are
    // in three different segments. 8 files: 2 may be lent at once.
    let c = VolumeConfig { segment_bytes: 1 << 20, max_wal_segments: 8, ..cfg(Durability::Strict) };
    let v = open_mapped(dir.path(), c).await;
    let pool = nbd::pool::BufferPool::new(4 << 20);
    let piece = 256usize << 10;
    for i in 0..12u64 {
        v.write(i * piece as u64, &pattern(i, piece), false).await.unwrap();
    }
    let read = |i: u64| v.read_data(i * piece as u64, pool.get(piece));
    let a = read(0).await.unwrap();
    let b = read(4).await.unwrap();
    assert!(matches!(a, nbd::ReadData::Lent(_)) && matches!(b, nbd::ReadData::Lent(_)));
    let c = read(8).await.unwrap();
    assert!(matches!(c, nbd::ReadData::Copied(_)), "a third segment lent with a bound of 2");
    assert_eq!(reply_bytes(&c), pattern(8, piece));
    let again = read(0).await.unwrap();
    assert!(matches!(again, nbd::ReadData::Lent(_)), "a segment already lent takes no new place");
    drop((a, again));
    let c = read(8).await.unwrap();
    assert!(matches!(c, nbd::ReadData::Lent(_)), "a place is free again");
    assert_eq!(reply_bytes(&c), pattern(8, piece));
    assert_eq!(reply_bytes(&b), pattern(4, piece));
    drop((b, c));
    v.close().await.unwrap();
}

/// Write `data` as the NBD reader does when the volume lends a buffer: receive it into the
/// buffer's slices, then hand the buffer back. `None` if the volume lends none.
async fn write_received(v: &Volume, offset: u64, data: &[u8], fua: bool) -> Option<Result<(), String>> {
    let mut buf = v.write_buffer(offset, data.len() as u32)?;
    let mut at = 0;
    for s in buf.slices_mut() {
        s.copy_from_slice(&data[at..at + s.len()]);
        at += s.len();
    }
    assert_eq!(at, data.len(), "the slices cover the payload");
    Some(v.write_received(offset, buf, fua).await.map_err(|e| e.to_string()))
}

/// [`write_received`], waiting while the dirty budget is spent: `write_buffer` does not
/// wait (a server then copies through a buffer of its own), and writes copied just before
/// may still hold the budget until the log writer has taken them.
async fn write_received_when_lent(v: &Volume, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
    loop {
        match write_received(v, offset, data, fua).await {
            Some(r) => return r,
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

#[tokio::test]
async fn writes_received_into_the_arena_read_back_and_a_broken_one_gives_its_slots_back() {
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 128 << 20;
    let c = VolumeConfig { size: Some(size), max_dirty_bytes: 64 << 20, ..cfg(Durability::Relaxed) };
    let (v, _) = open(dir.path(), c.clone()).await;
    // Unaligned, partial, short or out-of-range writes take the copying path.
    assert!(v.write_buffer(512, 1 << 20).is_none());
    assert!(v.write_buffer(0, (1 << 20) + 512).is_none());
    assert!(v.write_buffer(0, 15 * BS as u32).is_none());
    assert!(v.write_buffer(size - (1 << 20) + BS as u64, 1 << 20).is_none());
    // Connections that break mid-payload: take every buffer the dirty budget allows and
    // drop them unwritten.
    let mut held = Vec::new();
    while let Some(b) = v.write_buffer(0, 1 << 20) {
        held.push(b);
        assert!(held.len() <= 64, "more buffers than the dirty budget holds");
    }
    assert_eq!(held.len(), 64, "the 64 MiB dirty budget gives 64 buffers of 1 MiB");
    drop(held);
    // Their slots and budget came back: three times the budget, received and copied in
    // turn, all lands.
    let all = async {
        for pass in 0..3u64 {
            for mib in 0..64u64 {
                let data = pattern(pass * 100 + mib, 1 << 20);
                if mib % 2 == 0 {
                    write_received_when_lent(&v, mib << 20, &data, false).await.unwrap();
                } else {
                    v.write(mib << 20, &data, false).await.unwrap();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("writes stalled: budget or slots not given back");
    for mib in 0..64u64 {
        assert_eq!(read(&v, mib << 20, 1 << 20).await, pattern(200 + mib, 1 << 20), "MiB {mib}");
    }
    // A FUA write received this way is durable at once; the rest after the FLUSH.
    tokio::time::timeout(Duration::from_secs(120), write_received_when_lent(&v, 64 << 20, &pattern(7, 64 * BS), true))
        .await
        .expect("a buffer is lent within 120 s")
        .unwrap();
    v.flush().await.unwrap();
    v.close().await.unwrap();
    let (v, _) = open(dir.path(), c).await;
    for mib in 0..64u64 {
        assert_eq!(read(&v, mib << 20, 1 << 20).await, pattern(200 + mib, 1 << 20), "MiB {mib} after restart");
    }
    assert_eq!(read(&v, 64 << 20, 64 * BS).await, pattern(7, 64 * BS));
    v.close().await.unwrap();
}
