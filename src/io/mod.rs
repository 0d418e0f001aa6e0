//! The file-system seam: everything the WAL does to disk goes through these traits, so tests
//! can count syncs and inject latency and faults ([`faulty`]).

pub mod faulty;
pub mod std_fs;

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file, used with positional I/O only.
pub trait File: Send + Sync + 'static {
    /// Write all of `bufs` at `offset` (a loop of `pwritev` until everything is written).
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// Read exactly `buf.len()` bytes at `offset`, or fail with `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Reserve space for `len` bytes from offset 0 (`fallocate`), extending the file.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Current length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
    /// A read-only shared mapping of the whole file, for replies sent straight from the
    /// page cache; `Ok(None)` where the file cannot be mapped (then reads use
    /// [`File::read_exact_at`]). Test seams keep the default, so every read goes through them.
    fn map_read(&self) -> io::Result<Option<memmap2::Mmap>> {
        Ok(None)
    }
}

/// A directory tree of files.
pub trait FileSystem: Send + Sync + 'static {
    /// Open a file for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>>;
    /// The regular files directly inside `dir`, sorted by name.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// `fsync` a directory, making creations and renames in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// A whole small file; `Ok(None)` if it does not exist.
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Replace a small file atomically: write a temporary, sync it, rename it over `path`,
    /// sync the directory.
    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
}
