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
