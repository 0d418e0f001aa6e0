//! A file-system wrapper that counts calls and injects latency and failures. Used by tests,
//! and by `serve --inject-sync-latency` / `--inject-write-bandwidth` to emulate slow
//! storage in benchmarks.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{File, FileSystem};

/// Counters and switches shared by a [`FaultyFs`] and every file it opened.
#[derive(Debug, Default)]
pub struct Faults {
    /// `sync_data` calls made (including failed ones).
    pub syncs: AtomicU64,
    /// `write_all_vectored_at` calls made.
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Bytes read with `read_exact_at`.
    pub bytes_read: AtomicU64,
    /// Every `sync_data` fails with EIO while set.
    pub fail_syncs: AtomicBool,
    /// Every write fails with ENOSPC while set.
    pub fail_writes: AtomicBool,
    /// Added to every `sync_data`.
    pub sync_latency: Mutex<Duration>,
    /// Bytes per second the emulated device writes at: a `sync_data` also waits as long
    /// as the bytes written since the last sync take at this rate (0: no limit).
    pub write_bandwidth: AtomicU64,
    /// Bytes written since the last `sync_data` (any file).
    unsynced: AtomicU64,
}

impl Faults {
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
}

/// Wraps a file system; see [`Faults`].
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    faults: Arc<Faults>,
}

impl FaultyFs {
    pub fn new(inner: Arc<dyn FileSystem>) -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (Self { inner, faults: Arc::clone(&faults) }, faults)
    }
}

struct FaultyFile {
    inner: Arc<dyn File>,
    faults: Arc<Faults>,
}

impl File for FaultyFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.faults.bytes_written.fetch_add(n as u64, Ordering::SeqCst);
        self.faults.unsynced.fetch_add(n as u64, Ordering::SeqCst);
        self.inner.write_all_vectored_at(bufs, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.faults.bytes_read.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let mut delay = *self.faults.sync_latency.lock();
        let unsynced = self.faults.unsynced.swap(0, Ordering::SeqCst);
        let bandwidth = self.faults.write_bandwidth.load(Ordering::SeqCst);
        if bandwidth > 0 {
            delay += Duration::from_secs_f64(unsynced as f64 / bandwidth as f64);
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if self.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.inner.sync_data()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl FileSystem for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let inner = self.inner.open(path, create)?;
        Ok(Arc::new(FaultyFile { inner, faults: Arc::clone(&self.faults) }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_dir(dir)
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.inner.read_file(path)
    }

    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.faults.syncs.fetch_add(2, Ordering::SeqCst);
        self.inner.write_file_atomic(path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::io::std_fs::StdFs;

    #[test]
    fn a_sync_waits_for_the_bytes_written_since_the_last_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (fs, faults) = FaultyFs::new(Arc::new(StdFs));
        faults.write_bandwidth.store(1 << 20, Ordering::SeqCst); // 1 MiB/s
        let f = fs.open(&dir.path().join("f"), true).expect("open");
        f.write_all_vectored_at(&[IoSlice::new(&[7u8; 100 << 10])], 0).expect("write");
        let started = Instant::now();
        f.sync_data().expect("sync");
        // 100 KiB at 1 MiB/s: the emulation sleeps at least ~98 ms (a lower bound).
        assert!(started.elapsed() >= Duration::from_millis(95), "{:?}", started.elapsed());
        assert_eq!(faults.unsynced.load(Ordering::SeqCst), 0, "the sync consumed the bytes written");
        assert_eq!(faults.syncs(), 1);
    }
}
