//! The spill through its library API, with the backend behind the fault- and
//! latency-injecting wrapper: a backend that is down makes writes wait (never fail) and
//! everything completes when it returns; a slow backend changes nothing but speed.
//! Counts and contents only, no timing assertions.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nbd::BlockDevice;
use spillway::backend::faulty::{BackendFaults, FaultyBackend};
use spillway::chunk::spiller::SpillConfig;
use spillway::io::std_fs::StdFs;
use spillway::volume::{Volume, VolumeConfig};
use spillway::wal::Durability;

const MIB: u64 = 1 << 20;

fn cfg() -> VolumeConfig {
    let spill = SpillConfig { chunk_bytes: 256 << 10, spill_age: Duration::from_millis(100), ..SpillConfig::default() };
    VolumeConfig {
        size: Some(128 * MIB),
        durability: Durability::Relaxed,
        segment_bytes: MIB,
        max_wal_segments: 4,
        max_dirty_bytes: 40 << 20,
        spill,
        ..VolumeConfig::default()
    }
}

async fn open(dir: &Path) -> (Volume, Arc<BackendFaults>) {
    let local = spillway::backend::for_volume(None, None, dir, "test").expect("local backend");
    let faulty = FaultyBackend::new(local);
    let faults = Arc::clone(&faulty.faults);
    let v = Volume::open(Arc::new(StdFs), dir, Arc::new(faulty), cfg()).await.expect("volume opens");
    (v, faults)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    common::pseudo_random_bytes(seed, len)
}

async fn check(v: &Volume, mib: u64, what: &str) {
    for m in 0..mib {
        let mut got = vec![0u8; MIB as usize];
        v.read(m * MIB, &mut got).await.unwrap_or_else(|e| panic!("{what}: read of MiB {m} failed: {e}"));
        assert!(got == pattern(m, MIB as usize), "{what}: MiB {m} reads back wrong");
    }
}

/// 48 MiB cannot fit in 40 MiB of dirty memory plus a 4 MiB WAL: with the backend down
/// the writer must be waiting, not failing. When the backend returns, it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_makes_writes_wait_then_they_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (v, faults) = open(dir.path()).await;
    let v = Arc::new(v);
    let puts_before = faults.puts.load(Ordering::Acquire); // volume.meta, at open
    faults.down.store(true, Ordering::Release);
    let writer = {
        let v = Arc::clone(&v);
        tokio::spawn(async move {
            for m in 0..48 {
                v.write(m * MIB, &pattern(m, MIB as usize), false).await.map_err(|e| format!("MiB {m}: {e}"))?;
            }
            v.flush().await.map_err(|e| format!("flush: {e}"))
        })
    };
    // However long the backend stays down, the writer cannot get through.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!writer.is_finished(), "48 MiB went through a 4 MiB WAL with the backend down: {:?}", writer.await);
    assert_eq!(faults.puts.load(Ordering::Acquire), puts_before, "the faulty backend let puts through while down");
    faults.down.store(false, Ordering::Release);
    let done =
        tokio::time::timeout(Duration::from_secs(300), writer).await.expect("writes complete once the backend is back");
    done.expect("writer task").unwrap_or_else(|e| panic!("a write failed instead of waiting: {e}"));
    assert!(faults.puts.load(Ordering::Acquire) > puts_before, "nothing was uploaded after the outage");
    check(&v, 48, "after the outage").await;
    Arc::into_inner(v).unwrap().close().await.expect("clean close");
    let (v, _) = open(dir.path()).await;
    check(&v, 48, "after a restart").await;
    v.close().await.unwrap();
}

/// Every backend call 20 ms late: data spills, is read back from chunks (the cache is
/// cold after a restart), and nothing differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_changes_nothing_but_speed() {
    let dir = tempfile::tempdir().unwrap();
    let (v, faults) = open(dir.path()).await;
    *faults.latency.lock() = Duration::from_millis(20);
    for m in 0..12 {
        v.write(m * MIB, &pattern(m, MIB as usize), false).await.unwrap();
    }
    v.flush().await.unwrap();
    v.spill_now().await.expect("spill through the slow backend");
    assert!(faults.put_bytes.load(Ordering::Acquire) >= 12 * MIB, "not everything was uploaded");
    v.close().await.unwrap();
    let (v, faults) = open(dir.path()).await;
    *faults.latency.lock() = Duration::from_millis(20);
    check(&v, 12, "read back through the slow backend").await;
    assert!(faults.gets.load(Ordering::Acquire) > 0, "the reads did not come from chunks");
    v.close().await.unwrap();
}

/// A damaged object among the chunks that no manifest names (a stray, or a torn object on
/// a store without atomic puts) does not stop the volume from opening: it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_unnamed_chunk_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path()).await;
    v.write(0, &pattern(0, MIB as usize), false).await.unwrap();
    v.close().await.unwrap();
    let stray = dir.path().join("objects").join("chunks").join("00000000000000ff");
    std::fs::write(&stray, b"not a chunk at all, just some bytes that are long enough to have a footer spot").unwrap();
    let (v, _) = open(dir.path()).await;
    assert!(!stray.exists(), "the unreadable stray chunk is still there");
    check(&v, 1, "after removing a stray").await;
    v.close().await.unwrap();
}

/// What the two-tier test expects of MiB `m`: trims and zeroes over spilled data, with a
/// 4 KiB write inside some.
fn tiers_expect(m: u64) -> Vec<u8> {
    let mut want =
        if m == 2 || m == 4 || (8..32).contains(&m) { vec![0; MIB as usize] } else { pattern(m, MIB as usize) };
    if m == 2 || m == 4 || m == 20 {
        want[8192..8192 + 4096].copy_from_slice(&pattern(99, 4096));
    }
    want
}

async fn tiers_check(v: &Volume, round: &str) {
    for m in 0..40 {
        let mut got = vec![0u8; MIB as usize];
        v.read(m * MIB, &mut got).await.unwrap();
        assert!(got == tiers_expect(m), "{round}: MiB {m} reads wrong");
    }
    let st = |e: &[nbd::Extent]| (e[0].hole, e[0].zero);
    let at = |m: u64, k: u64| m * MIB + k * 4096;
    assert_eq!(st(&v.block_status(at(2, 0), 4096).await.unwrap()), (true, true), "{round}: trimmed (marker)");
    assert_eq!(st(&v.block_status(at(9, 0), 4096).await.unwrap()), (true, true), "{round}: trimmed (hole)");
    assert_eq!(st(&v.block_status(at(4, 0), 4096).await.unwrap()), (false, true), "{round}: zeroed, allocated");
    assert_eq!(st(&v.block_status(at(20, 2), 4096).await.unwrap()), (false, false), "{round}: written in the hole");
    assert_eq!(st(&v.block_status(at(36, 0), 4096).await.unwrap()), (false, false), "{round}: spilled data");
}

/// The two tiers of the index: spilled blocks are read through the base, and trims and
/// writes not yet spilled hide or replace them (small trims leave a marker per block, a
/// large one a hole), before and after the next spill, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_blocks_and_later_trims_and_writes_read_right_in_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = open(dir.path()).await;
    for m in 0..40 {
        v.write(m * MIB, &pattern(m, MIB as usize), false).await.unwrap();
    }
    v.flush().await.unwrap();
    v.spill_now().await.unwrap();
    assert!(v.spilled_blocks() >= 40 * 256, "only {} blocks spilled", v.spilled_blocks());
    v.trim(2 * MIB, MIB, false).await.unwrap(); // 256 blocks: markers
    v.trim(8 * MIB, 24 * MIB, false).await.unwrap(); // 6144 blocks: a hole
    v.write_zeroes(4 * MIB, MIB, nbd::ZeroFlags { no_hole: true, fua: false, fast: false }).await.unwrap();
    for m in [2, 4, 20] {
        v.write(m * MIB + 8192, &pattern(99, 4096), false).await.unwrap();
    }
    tiers_check(&v, "before the spill").await;
    v.flush().await.unwrap();
    v.spill_now().await.unwrap();
    assert!(v.index_len() < 16, "the live index still holds {} entries after the spill", v.index_len());
    tiers_check(&v, "after the spill").await;
    v.close().await.unwrap();
    let (v, _) = open(dir.path()).await;
    tiers_check(&v, "after a restart").await;
    v.close().await.unwrap();
}

/// A WAL segment this process wrote lists its records, so a spill reads back only the
/// records whose blocks it keeps: 4 MiB written twice is read back once, not twice. A kept
/// record damaged on disk still stops the spill with an error instead of going into a chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_reads_back_only_the_records_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, faults) = spillway::io::faulty::FaultyFs::new(Arc::new(StdFs));
    let local = spillway::backend::for_volume(None, None, dir.path(), "test").expect("local backend");
    // Strict mode, one WAL segment, no aged spill: nothing spills until asked.
    let spill = SpillConfig { chunk_bytes: 256 << 10, spill_age: Duration::from_secs(3600), ..SpillConfig::default() };
    let c = VolumeConfig { durability: Durability::Strict, max_wal_segments: 16, spill, ..cfg() };
    let v = Volume::open(Arc::new(fs), dir.path(), local, c).await.expect("volume opens");
    for pass in 0..2u64 {
        for m in 0..4 {
            v.write(m * MIB, &pattern(pass * 100 + m, MIB as usize), false).await.unwrap();
        }
    }
    let before = faults.bytes_read.load(Ordering::SeqCst);
    v.spill_now().await.unwrap();
    let read = faults.bytes_read.load(Ordering::SeqCst) - before;
    assert!(read >= 4 * MIB, "the 4 MiB kept must be read back to be spilled ({read} bytes read)");
    assert!(read < 5 * MIB, "only the records kept are read back, not the 4 MiB replaced ({read} bytes read)");
    for m in 0..4 {
        let mut got = vec![0u8; MIB as usize];
        v.read(m * MIB, &mut got).await.unwrap();
        assert!(got == pattern(100 + m, MIB as usize), "MiB {m} after the spill");
    }
    // Damage one byte of a new write's record in the WAL file: the spill refuses it, the
    // volume is poisoned rather than left to fill its WAL, and the close refuses it too.
    let marker = pattern(777, MIB as usize);
    v.write(8 * MIB, &marker, false).await.unwrap();
    let mut damaged = 0;
    for e in std::fs::read_dir(dir.path().join("wal")).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(64).position(|w| w == &marker[..64]) {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[at + 1000] ^ 0x40], (at + 1000) as u64).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "the new write's record is in one WAL file");
    // (Bounded only so that a spill that never gives up fails the test instead of hanging it.)
    let err = tokio::time::timeout(Duration::from_secs(120), v.spill_now())
        .await
        .expect("the spill gives up on damage instead of trying forever")
        .expect_err("a damaged record must not be spilled");
    assert!(err.to_string().contains("no valid record"), "unexpected error: {err}");
    let err = v.write(9 * MIB, &pattern(778, 4096), false).await.expect_err("writes fail once the spill found damage");
    assert!(err.to_string().contains("poisoned"), "unexpected error: {err}");
    assert!(v.flush().await.is_err(), "flushes fail too");
    for m in 0..4 {
        let mut got = vec![0u8; MIB as usize];
        v.read(m * MIB, &mut got).await.expect("undamaged blocks still read");
        assert!(got == pattern(100 + m, MIB as usize), "MiB {m} after the damage");
    }
    let err = v.close().await.expect_err("a damaged record must not be spilled");
    assert!(err.to_string().contains("no valid record"), "unexpected error: {err}");
}
