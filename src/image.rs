//! `spillway import` and `spillway export`: raw disk images in and out of a volume, offline.
//!
//! Both open the volume directly (under the data-directory lock, so a running server makes
//! them refuse) and stream through the volume API in pieces of [`PIECE`] bytes. Memory is
//! that piece, the volume's fixed budgets (dirty data, read cache, the spill of one WAL
//! segment, the live index of what the WAL holds), and the index of spilled blocks, which
//! grows with the data stored by about 13 bytes per 4 KiB block, never with the image's
//! size or holes. Both are sparse-aware:
//!
//! - import skips the file's holes (`SEEK_DATA`/`SEEK_HOLE`) and every all-zero 4 KiB block
//!   inside its data: a new volume reads those as zeroes without storing anything.
//! - export asks the volume which ranges read as zeroes (block status) and skips them, and
//!   skips all-zero blocks inside data too: the output file has holes there.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use nbd::BlockDevice;
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use tracing::info;

use crate::chunk::spiller::SpillConfig;
use crate::cli::{ExportArgs, ImportArgs};
use crate::io::std_fs::StdFs;
use crate::progress::Progress;
use crate::serve::{export_dir_name, lock_data_dir};
use crate::volume::{Volume, VolumeConfig};
use crate::volume_meta::META_FILE;
use crate::wal::record::BLOCK_SIZE;
use crate::wal::Durability;

const BS: u64 = BLOCK_SIZE as u64;
/// Bytes read or written in one step.
const PIECE: usize = 4 << 20;
/// Memory for written data on its way to the WAL during an import (the least the volume
/// accepts is 40 MiB).
const IMPORT_DIRTY: usize = 64 << 20;
/// Read cache during an export: sequential reads need little.
const EXPORT_CACHE: usize = 16 << 20;

pub fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    runtime()?.block_on(import(args))
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    runtime()?.block_on(export(args))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Whether every byte is zero (no early exit: the loop vectorises).
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc | x) == 0
}

/// Runs of non-zero blocks in `buf` (whose length is a multiple of the block size), as byte
/// ranges.
fn data_runs(buf: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
        if is_zero(block) {
            continue;
        }
        let start = i * BLOCK_SIZE;
        match runs.last_mut() {
            Some(r) if r.end == start => r.end = start + block.len(),
            _ => runs.push(start..start + block.len()),
        }
    }
    runs
}

/// The next data region of `file` at or after `pos`, as `(start, end)`; `None` past the last
/// data. File systems without `SEEK_DATA` report everything as data.
fn next_data(file: &File, pos: u64, len: u64) -> anyhow::Result<Option<(u64, u64)>> {
    let off = i64::try_from(pos).context("file offset")?;
    let start = match lseek(file.as_raw_fd(), off, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(Errno::ENXIO) => return Ok(None),
        Err(Errno::EINVAL) => return Ok(Some((pos, len))),
        Err(e) => return Err(std::io::Error::from(e)).context("SEEK_DATA"),
    };
    let end = match lseek(file.as_raw_fd(), start as i64, Whence::SeekHole) {
        Ok(e) => e as u64,
        Err(e) => return Err(std::io::Error::from(e)).context("SEEK_HOLE"),
    };
    Ok(Some((start, end.min(len))))
}

#[derive(Debug, Default)]
struct Copied {
    /// Bytes of non-zero blocks copied; the rest were holes or zeroes, skipped.
    data: u64,
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let file = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let len = file.metadata().with_context(|| format!("reading the size of {}", args.file.display()))?.len();
    if len == 0 || len % BS != 0 {
        bail!(
            "{} is {len} bytes, not a positive multiple of {BS}; a volume holds whole blocks \
             (pad the image first, e.g. `truncate -s %{BS} FILE`)",
            args.file.display()
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;
    let name = &args.export;
    let dir_name = export_dir_name(name);
    let dir = args.data_dir.join("volumes").join(&dir_name);
    if dir.join(META_FILE).exists() {
        bail!(
            "volume {name:?} already exists in {}; import makes a new volume: choose another --export \
             name, or remove that directory first",
            dir.display()
        );
    }
    let backend =
        args.backend.for_volume(&dir, &dir_name).with_context(|| format!("opening the backend of volume {name:?}"))?;
    let cfg = VolumeConfig {
        size: Some(len),
        // The import is one unit: the WAL syncs at segment rolls and at the final close.
        durability: Durability::Relaxed,
        max_dirty_bytes: IMPORT_DIRTY,
        spill: SpillConfig { codec: args.codec, ..SpillConfig::default() },
        ..VolumeConfig::default()
    };
    let volume = Volume::open(Arc::new(StdFs), &dir, backend, cfg)
        .await
        .with_context(|| format!("creating volume {name:?} in {}", dir.display()))?;
    let copied = copy_in(&volume, &file, len).await;
    // Closing syncs the WAL and spills everything to the backend.
    let closed = volume.close().await;
    let partial = || format!("the partial volume stays in {}; remove it before trying again", dir.display());
    let copied = copied.with_context(partial)?;
    closed.context("closing the volume (final sync and spill)").with_context(partial)?;
    info!(volume = %name, size = len, data = copied.data, "image imported");
    println!(
        "imported {} into {name:?}: {len} bytes, {} bytes of data, {} bytes of zeroes and holes not stored",
        args.file.display(),
        copied.data,
        len - copied.data
    );
    Ok(())
}

async fn copy_in(volume: &Volume, file: &File, len: u64) -> anyhow::Result<Copied> {
    let mut progress = Progress::new("import", len);
    let mut buf = vec![0u8; PIECE];
    let mut copied = Copied::default();
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data(file, pos, len)? else { break };
        // Whole blocks around the data region; the bytes of a hole read as zeroes.
        let mut at = start / BS * BS;
        let end = end.div_ceil(BS).saturating_mul(BS).min(len);
        while at < end {
            let n = (end - at).min(PIECE as u64) as usize;
            let piece = &mut buf[..n];
            file.read_exact_at(piece, at).with_context(|| format!("reading the image at byte {at}"))?;
            for run in data_runs(piece) {
                volume
                    .write(at + run.start as u64, &piece[run.clone()], false)
                    .await
                    .with_context(|| format!("writing the volume at byte {}", at + run.start as u64))?;
                copied.data += run.len() as u64;
            }
            at += n as u64;
            progress.set(at);
        }
        pos = end.max(pos + BS);
    }
    progress.finish();
    Ok(copied)
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let name = &args.export;
    let dir_name = export_dir_name(name);
    let dir = args.data_dir.join("volumes").join(&dir_name);
    if !dir.join(META_FILE).exists() {
        bail!("no volume {name:?} in {} (no {})", args.data_dir.display(), dir.join(META_FILE).display());
    }
    let _lock = lock_data_dir(&args.data_dir)?;
    let out = open_output(&args.file, args.force)?;
    let backend =
        args.backend.for_volume(&dir, &dir_name).with_context(|| format!("opening the backend of volume {name:?}"))?;
    let cfg = VolumeConfig { durability: Durability::Relaxed, cache_bytes: EXPORT_CACHE, ..VolumeConfig::default() };
    let volume = Volume::open(Arc::new(StdFs), &dir, backend, cfg)
        .await
        .with_context(|| format!("opening volume {name:?} in {}", dir.display()))?;
    let copied = copy_out(&volume, &out).await;
    let closed = volume.close().await;
    let copied = copied?;
    closed.context("closing the volume")?;
    let size = volume.size();
    info!(volume = %name, size, data = copied.data, "volume exported");
    println!(
        "exported {name:?} to {}: {size} bytes, {} bytes of data, {} bytes left as holes",
        args.file.display(),
        copied.data,
        size - copied.data
    );
    Ok(())
}

/// A new, empty output file (an existing one only with `force`, then truncated).
fn open_output(path: &Path, force: bool) -> anyhow::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(path).with_context(|| {
        if !force && path.exists() {
            format!("{} exists; pass --force to overwrite it", path.display())
        } else {
            format!("creating {}", path.display())
        }
    })
}

async fn copy_out(volume: &Volume, out: &File) -> anyhow::Result<Copied> {
    let size = volume.size();
    let mut progress = Progress::new("export", size);
    let mut buf = vec![0u8; PIECE];
    let mut copied = Copied::default();
    let mut pos = 0u64;
    while pos < size {
        // One answer covers a bounded number of blocks; ask again from where it ends.
        let extents = volume.block_status(pos, size - pos).await.context("asking the volume for its extents")?;
        if extents.is_empty() {
            bail!("the volume reported no extents at byte {pos}");
        }
        for e in extents {
            let end = pos + e.length;
            if !e.zero {
                let mut at = pos;
                while at < end {
                    let n = (end - at).min(PIECE as u64) as usize;
                    let piece = &mut buf[..n];
                    volume.read(at, piece).await.with_context(|| format!("reading the volume at byte {at}"))?;
                    for run in data_runs(piece) {
                        let off = at + run.start as u64;
                        out.write_all_at(&piece[run.clone()], off)
                            .with_context(|| format!("writing the image at byte {off}"))?;
                        copied.data += run.len() as u64;
                    }
                    at += n as u64;
                    progress.set(at);
                }
            }
            pos = end;
            progress.set(pos);
        }
    }
    out.set_len(size).context("setting the image size")?;
    out.sync_all().context("syncing the image")?;
    progress.finish();
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_non_zero_blocks() {
        let mut buf = vec![0u8; 6 * BLOCK_SIZE];
        buf[BLOCK_SIZE + 7] = 1;
        buf[2 * BLOCK_SIZE] = 1;
        buf[6 * BLOCK_SIZE - 1] = 9;
        assert_eq!(data_runs(&buf), vec![BLOCK_SIZE..3 * BLOCK_SIZE, 5 * BLOCK_SIZE..6 * BLOCK_SIZE]);
        assert!(data_runs(&vec![0u8; 3 * BLOCK_SIZE]).is_empty());
        assert!(is_zero(&[]) && is_zero(&[0; 17]) && !is_zero(&[0, 0, 1]));
    }
}
