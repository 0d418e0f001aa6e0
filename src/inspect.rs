//! `spillway list` and `spillway info`: what the volumes of a data directory hold, read from
//! their files without changing anything: `volume.meta` (size), the local manifest (chunks,
//! codecs, persisted blocks) and a read-only replay of the WAL after it (data not yet in a
//! chunk). The data-directory lock is taken, so a running server makes them refuse (its
//! figures are at `--metrics-listen`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::chunk::base::{Base, BaseRef};
use crate::chunk::format::{FRAME_BLOCKS, KIND_COMPACTION, KIND_SPILL};
use crate::chunk::manifest::Manifest;
use crate::chunk::rebuild::apply_manifest;
use crate::chunk::set::ChunkSet;
use crate::cli::{InfoArgs, ListArgs};
use crate::io::std_fs::StdFs;
use crate::serve::{export_dir_name, lock_data_dir};
use crate::store::index::{BlockState, Index};
use crate::volume::MANIFEST_FILE;
use crate::volume_meta::{VolumeMeta, META_FILE};
use crate::wal::record::BLOCK_SIZE;
use crate::wal::replay::replay;
use crate::wal::RecoveryMode;

const BS: u64 = BLOCK_SIZE as u64;

/// What one volume holds.
#[derive(Debug, Default)]
pub struct VolumeInfo {
    pub name: String,
    pub dir: PathBuf,
    pub size: u64,
    /// Blocks whose data is in a chunk.
    pub blocks_in_chunks: u64,
    /// Blocks whose newest data is only in the WAL (not yet spilled): the dirty data.
    pub blocks_in_wal: u64,
    /// Blocks zeroed but kept allocated (NO_HOLE zeroing).
    pub blocks_zero_allocated: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Chunks by codec name.
    pub codecs: BTreeMap<String, u64>,
    pub spill_chunks: u64,
    pub compaction_chunks: u64,
    pub manifest_generation: Option<u64>,
    pub wal_files: u64,
    pub wal_file_bytes: u64,
    /// Valid WAL segments after the checkpoint (they hold what is not in chunks yet).
    pub wal_segments_live: u64,
}

impl VolumeInfo {
    /// Bytes of data stored (in chunks or the WAL); holes and zeroes take none.
    pub fn used(&self) -> u64 {
        (self.blocks_in_chunks + self.blocks_in_wal) * BS
    }

    pub fn dirty(&self) -> u64 {
        self.blocks_in_wal * BS
    }

    /// The codecs of the chunks, e.g. `lz4` or `lz4 (3), zstd (1)`.
    pub fn codec_summary(&self) -> String {
        match self.codecs.len() {
            0 => "no chunks yet".to_owned(),
            1 => self.codecs.keys().next().cloned().unwrap_or_default(),
            _ => self.codecs.iter().map(|(c, n)| format!("{c} ({n})")).collect::<Vec<_>>().join(", "),
        }
    }
}

/// The export name a volume directory stands for (the inverse of [`export_dir_name`]).
pub fn export_name_of_dir(dir_name: &str) -> Option<String> {
    match dir_name.strip_prefix("x-") {
        Some(hex) if hex.len() % 2 == 0 => {
            let bytes: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
            String::from_utf8(bytes?).ok()
        }
        _ => Some(dir_name.to_owned()),
    }
}

/// Read a volume's state from its directory, changing nothing.
pub fn inspect(name: &str, dir: &Path) -> anyhow::Result<VolumeInfo> {
    let meta_path = dir.join(META_FILE);
    let meta_bytes = std::fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    let meta = VolumeMeta::decode(&meta_bytes).with_context(|| format!("{} is damaged", meta_path.display()))?;
    let mut info = VolumeInfo { name: name.to_owned(), dir: dir.to_owned(), size: meta.size, ..VolumeInfo::default() };
    let index = Index::new(16);
    let base = Base::new();
    let set = ChunkSet::new(1);
    let manifest_path = dir.join(MANIFEST_FILE);
    let mut from = (0, 0);
    match std::fs::read(&manifest_path) {
        Ok(bytes) => {
            let m = Manifest::decode(&bytes).with_context(|| format!("{} is damaged", manifest_path.display()))?;
            apply_manifest(&m, &base, &set).with_context(|| format!("reading {}", manifest_path.display()))?;
            from = m.replay_from;
            info.manifest_generation = Some(m.generation);
            for c in &m.chunks {
                info.chunks += 1;
                info.chunk_bytes += c.object_len;
                match c.kind {
                    KIND_SPILL => info.spill_chunks += 1,
                    KIND_COMPACTION => info.compaction_chunks += 1,
                    _ => {}
                }
            }
            for c in set.all() {
                *info.codecs.entry(codec_name(c.codec)).or_default() += 1;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    }
    let wal_dir = dir.join("wal");
    if wal_dir.is_dir() {
        for entry in std::fs::read_dir(&wal_dir).with_context(|| format!("listing {}", wal_dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", wal_dir.display()))?;
            let file_name = entry.file_name();
            let n = file_name.to_string_lossy();
            if n.starts_with("wal-") && n.ends_with(".seg") {
                info.wal_files += 1;
                info.wal_file_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        // Read-only: replay opens the segments without creating or changing anything.
        let replayed = replay(&StdFs, &wal_dir, meta.volume_id, RecoveryMode::TolerateCorruption, &index, from)
            .with_context(|| format!("reading the WAL in {}", wal_dir.display()))?;
        info.wal_segments_live = replayed.segments.len() as u64;
    }
    // The WAL (the live index) first; the manifest's blocks (the base) where the WAL has
    // nothing newer for them.
    index.collect(|_, e| {
        match e.state {
            BlockState::Persisted(_) => info.blocks_in_chunks += 1,
            BlockState::Pending { .. } | BlockState::PendingLz4 { .. } | BlockState::Hot(_) => info.blocks_in_wal += 1,
            BlockState::Empty { allocated: true } => info.blocks_zero_allocated += 1,
            BlockState::Empty { allocated: false } => {}
        }
        false
    });
    for (first, count, r) in base.runs() {
        for b in first..first + u64::from(count) {
            if index.get(b).is_some() || index.in_hole(b) {
                continue;
            }
            match r {
                BaseRef::Chunk(_) => info.blocks_in_chunks += 1,
                BaseRef::Zeroed => info.blocks_zero_allocated += 1,
            }
        }
    }
    Ok(info)
}

/// A chunk's codec by name; the zstd level is not recorded in chunks.
fn codec_name(c: crate::codec::Compression) -> String {
    match c {
        crate::codec::Compression::Zstd(_) => "zstd".to_owned(),
        other => other.to_string(),
    }
}

/// The volumes of a data directory by export name, in name order.
fn volumes(data_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let root = data_dir.join("volumes");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    for entry in rd {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let path = entry.path();
        if !path.join(META_FILE).is_file() {
            continue;
        }
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let name = export_name_of_dir(&dir_name).unwrap_or(dir_name);
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

fn lock(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    if !data_dir.is_dir() {
        bail!("no data directory {}", data_dir.display());
    }
    lock_data_dir(data_dir).context("spillway list and info read a stopped server's data directory")
}

pub fn run_list(args: ListArgs) -> anyhow::Result<()> {
    let _lock = lock(&args.data_dir)?;
    let vols = volumes(&args.data_dir)?;
    if vols.is_empty() {
        println!("no volumes in {}", args.data_dir.display());
        return Ok(());
    }
    println!("{:<20} {:>12} {:>12} {:>12} {:>7} {:>12}  CODEC", "NAME", "SIZE", "USED", "DIRTY", "CHUNKS", "WAL");
    for (name, dir) in vols {
        let i = inspect(&name, &dir).with_context(|| format!("reading volume {name:?}"))?;
        println!(
            "{:<20} {:>12} {:>12} {:>12} {:>7} {:>12}  {}",
            name,
            human(i.size),
            human(i.used()),
            human(i.dirty()),
            i.chunks,
            human(i.wal_file_bytes),
            i.codec_summary()
        );
    }
    Ok(())
}

pub fn run_info(args: InfoArgs) -> anyhow::Result<()> {
    let _lock = lock(&args.data_dir)?;
    let dir = args.data_dir.join("volumes").join(export_dir_name(&args.export));
    if !dir.join(META_FILE).is_file() {
        bail!("no volume {:?} in {}", args.export, args.data_dir.display());
    }
    let i = inspect(&args.export, &dir)?;
    print!("{}", info_text(&i));
    Ok(())
}

/// `spillway info`: one `key: value` line each, exact byte counts with a human form after.
pub fn info_text(i: &VolumeInfo) -> String {
    let bytes = |b: u64| format!("{b} bytes ({})", human(b));
    let manifest = i.manifest_generation.map_or("none yet".to_owned(), |g| format!("generation {g}"));
    format!(
        "volume: {}\n\
         directory: {}\n\
         size: {}\n\
         used: {} in {} blocks\n\
         in chunks: {} blocks\n\
         dirty: {} (in the WAL, not yet in a chunk)\n\
         zeroed, allocated: {} blocks\n\
         chunks: {} ({} spill, {} compaction), {} stored\n\
         codec pipeline: 4 KiB blocks -> frames of {} blocks -> {} -> crc32c per frame and block\n\
         manifest: {}\n\
         wal: {} segment files, {} on disk, {} segments after the checkpoint\n",
        i.name,
        i.dir.display(),
        bytes(i.size),
        bytes(i.used()),
        i.blocks_in_chunks + i.blocks_in_wal,
        i.blocks_in_chunks,
        bytes(i.dirty()),
        i.blocks_zero_allocated,
        i.chunks,
        i.spill_chunks,
        i.compaction_chunks,
        bytes(i.chunk_bytes),
        FRAME_BLOCKS,
        i.codec_summary(),
        manifest,
        i.wal_files,
        bytes(i.wal_file_bytes),
        i.wal_segments_live,
    )
}

/// A size in powers of 1024 with one decimal, e.g. `1.5 GiB`.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_map_back_to_export_names() {
        for name in ["default", "vm-1.img", "with space", ".hidden", "ü"] {
            assert_eq!(export_name_of_dir(&export_dir_name(name)).as_deref(), Some(name), "{name}");
        }
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1 << 30), "1.0 GiB");
    }
}
