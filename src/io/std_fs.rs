//! The real file system: `std::fs` plus `pwritev`, `fdatasync` and `fallocate` from nix.

use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{File, FileSystem};

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(std::fs::File);

/// Slices one `pwritev` takes at most (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

impl File for StdFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut rest = &mut owned[..];
        let mut at = offset;
        // Skip empty slices up front so a zero-length write is never mistaken for a stall.
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            // The kernel takes at most IOV_MAX (1024) slices per call.
            let take = rest.len().min(IOV_MAX);
            let n = nix::sys::uio::pwritev(&self.0, &rest[..take], at as i64).map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&self.0),
            nix::fcntl::FallocateFlags::empty(),
            0,
            len as i64,
        ) {
            Ok(()) => Ok(()),
            // Some file systems (tmpfs on old kernels, 9p) cannot preallocate: extend instead.
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                if self.0.metadata()?.len() < len {
                    self.0.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn map_read(&self) -> io::Result<Option<memmap2::Mmap>> {
        // SAFETY: the mapping is read-only and the file is never truncated while open
        // (segments are preallocated and recycled whole), so no access past its end.
        let map = unsafe { memmap2::MmapOptions::new().map(&self.0)? };
        Ok(Some(map))
    }
}

impl FileSystem for StdFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let dir = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp)?;
            io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        self.sync_dir(dir)
    }
}
