//! New WAL segment files, written through with zeroes before they take records.
//!
//! A preallocated (`fallocate`) file's blocks are unwritten extents. The first write into
//! each one makes the file system mark it written, and the `fdatasync` that follows must
//! commit that metadata as well as the data (on ext4, a journal commit per sync). A file
//! written through once has no unwritten extents left, so its syncs flush data only. On
//! the ext4 test disk, 4 KiB write + `fdatasync` pairs ran at 1.45x the rate in a written
//! file (`docs/wal.md`). Recycled segments are written through already; this is for the
//! files a volume adds until its WAL has as many as it needs.
//!
//! Writing a file through costs its size in writes, once: worth it where syncs are
//! frequent, and not where they are few (a large write per sync, or a FLUSH now and then
//! in relaxed mode), where it only doubles the first pass's writes. The saving is about
//! one journal commit per sync (some 120 µs on the test disk, milliseconds on an SD
//! card); the cost, the file's size at the disk's write speed (80 ms for 32 MiB on the
//! test disk, over a second on an SD card). So a file is written through when the open
//! segment has had at least one sync per [`BYTES_PER_SYNC`] of its records.
//!
//! The writer does not wait for it. Once the open segment is half full, no recycled slot
//! is waiting, and its syncs were that frequent, a thread prepares the next file
//! ([`Spare`]). If it is not ready when the writer rolls, the writer creates a
//! preallocated file as before and takes the prepared one at a later roll. Only a new
//! volume's first segment is written through on the writer's own time, at start-up,
//! before any client is served.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{debug, warn};

use super::WalError;
use crate::io::{File, FileSystem};

/// Zeroes written per call while a file is written through.
const ZERO_PIECE: usize = 1 << 20;

/// The next new file is written through when the open segment has had at least one sync
/// per this many bytes of records.
pub const BYTES_PER_SYNC: u64 = 64 << 10;

/// Create the segment file `name` in `dir`, preallocated to `bytes`; with `write_through`,
/// also write it with zeroes and sync it. The directory is synced either way, so the file
/// outlives a crash.
pub fn create(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: u64,
    write_through: bool,
) -> Result<Arc<dyn File>, WalError> {
    let path = dir.join(name);
    let file = fs.open(&path, true).map_err(|e| WalError::io(format!("creating {}", path.display()), e))?;
    file.allocate(bytes).map_err(|e| WalError::io(format!("preallocating {}", path.display()), e))?;
    if write_through {
        let zeros = vec![0u8; ZERO_PIECE];
        let mut at = 0;
        while at < bytes {
            let n = (bytes - at).min(ZERO_PIECE as u64) as usize;
            file.write_all_vectored_at(&[IoSlice::new(&zeros[..n])], at)
                .map_err(|e| WalError::io(format!("writing {} through", path.display()), e))?;
            at += n as u64;
        }
        file.sync_data().map_err(|e| WalError::io(format!("syncing {}", path.display()), e))?;
    }
    fs.sync_dir(dir).map_err(|e| WalError::io(format!("syncing {}", dir.display()), e))?;
    Ok(file)
}

/// A segment file being written through on a thread of its own.
pub struct Spare {
    name: String,
    thread: JoinHandle<Result<Arc<dyn File>, WalError>>,
}

impl Spare {
    /// Start preparing `name`; `None` if no thread could be started (the writer then
    /// creates its files itself, as it would anyway).
    pub fn start(fs: Arc<dyn FileSystem>, dir: PathBuf, name: String, bytes: u64) -> Option<Spare> {
        let job = {
            let name = name.clone();
            move || create(fs.as_ref(), &dir, &name, bytes, true)
        };
        match std::thread::Builder::new().name("spillway-walprep".into()).spawn(job) {
            Ok(thread) => {
                debug!(slot = %name, "preparing a WAL segment file");
                Some(Spare { name, thread })
            }
            Err(e) => {
                warn!(error = %e, "cannot start a thread to prepare WAL segment files");
                None
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the file. An error leaves a file that holds no valid segment, which the
    /// next start takes for a free slot.
    pub fn finish(self) -> Result<(String, Arc<dyn File>), WalError> {
        match self.thread.join() {
            Ok(r) => r.map(|f| (self.name, f)),
            Err(_) => Err(WalError::io(
                format!("preparing WAL segment file {}", self.name),
                std::io::Error::other("the preparing thread panicked"),
            )),
        }
    }
}
