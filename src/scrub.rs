//! `spillway scrub`: read every chunk object of a volume, check every checksum, and repair
//! from the recovery objects (`X.par2`) what fails. Offline: it takes the data directory's
//! lock, so it never races a server's compaction.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use tracing::{error, warn};

use crate::backend::{BackendError, DynBackend};
use crate::chunk::format;
use crate::chunk::recovery::{self, recovery_key};
use crate::chunk::set::{chunk_key, key_chunk};
use crate::cli::ScrubArgs;
use crate::codec::par2::RepairOutcome;
use crate::codec::Compression;
use crate::progress::Progress;
use crate::serve::{export_dir_name, lock_data_dir};
use crate::volume_meta::{VolumeMeta, META_FILE, TRANSPORT_YENC};

/// What one chunk turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Intact,
    /// Damaged and repaired from its recovery object, then written back.
    Repaired {
        slices: usize,
    },
    /// Damaged, and its recovery data (if any) cannot fix it: these volume blocks are at risk.
    Lost {
        why: String,
        blocks: Option<Vec<u64>>,
    },
}

#[derive(Debug, Default)]
struct Tally {
    chunks: u64,
    bytes: u64,
    intact: u64,
    repaired: u64,
    lost: u64,
    unprotected: u64,
}

pub fn run(args: ScrubArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(scrub(args))
}

async fn scrub(args: ScrubArgs) -> anyhow::Result<()> {
    let volumes = args.data_dir.join("volumes");
    if !volumes.is_dir() {
        bail!("{} holds no volumes", args.data_dir.display());
    }
    let _lock = lock_data_dir(&args.data_dir)?;
    let dir_names: Vec<String> = if args.exports.is_empty() {
        let mut v: Vec<String> = std::fs::read_dir(&volumes)
            .with_context(|| format!("listing {}", volumes.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    } else {
        args.exports.iter().map(|n| export_dir_name(n)).collect()
    };
    let mut lost = 0;
    for name in dir_names {
        let dir = volumes.join(&name);
        if !dir.is_dir() {
            bail!("no volume {name:?} in {}", volumes.display());
        }
        let backend =
            args.backend.for_volume(&dir, &name).with_context(|| format!("opening the backend of volume {name:?}"))?;
        let meta_path = dir.join(META_FILE);
        let meta = std::fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
        let meta = VolumeMeta::decode(&meta).with_context(|| format!("{} is damaged", meta_path.display()))?;
        let backend = crate::volume::with_transport(backend, meta.transport);
        let t = scrub_volume(&name, &dir, &backend, meta.transport == TRANSPORT_YENC)
            .await
            .with_context(|| format!("scrubbing volume {name:?}"))?;
        println!(
            "scrubbed {name:?}: {} chunks ({} bytes): {} intact, {} repaired, {} damaged beyond repair, {} without recovery data",
            t.chunks, t.bytes, t.intact, t.repaired, t.lost, t.unprotected
        );
        lost += t.lost;
    }
    if lost > 0 {
        bail!("{lost} chunk(s) are damaged beyond repair; the log names the volume blocks at risk");
    }
    Ok(())
}

async fn scrub_volume(name: &str, dir: &Path, backend: &DynBackend, yenc: bool) -> anyhow::Result<Tally> {
    let listed = backend.list("chunks/").await?;
    let chunks: Vec<(u64, u64)> = listed.iter().filter_map(|o| key_chunk(&o.key).map(|id| (id, o.size))).collect();
    let total: u64 = chunks.iter().map(|c| c.1).sum();
    eprintln!("scrub {name} ({}): {} chunks", dir.display(), chunks.len());
    let mut progress = Progress::new(format!("scrub {name}"), total);
    let mut t = Tally::default();
    for (id, size) in chunks {
        let (verdict, protected) = scrub_chunk(backend, id, yenc).await?;
        t.chunks += 1;
        t.bytes += size;
        t.unprotected += u64::from(!protected);
        match verdict {
            Verdict::Intact => t.intact += 1,
            Verdict::Repaired { slices } => {
                warn!(volume = name, chunk = format!("{id:016x}"), slices, "chunk repaired and written back");
                t.repaired += 1;
            }
            Verdict::Lost { why, blocks } => {
                match blocks {
                    Some(b) => {
                        error!(volume = name, chunk = format!("{id:016x}"), why, blocks = ?b, "chunk damaged beyond repair: these volume blocks are at risk")
                    }
                    None => error!(
                        volume = name,
                        chunk = format!("{id:016x}"),
                        why,
                        "chunk damaged beyond repair, its block table too: all of its blocks are at risk"
                    ),
                }
                t.lost += 1;
            }
        }
        progress.set(t.bytes);
    }
    progress.finish();
    Ok(t)
}

/// Check one chunk; repair it if it is damaged and has recovery data. Also says whether it
/// has a recovery object.
async fn scrub_chunk(backend: &DynBackend, id: u64, yenc: bool) -> anyhow::Result<(Verdict, bool)> {
    let obj = backend.get_for_repair(&chunk_key(id)).await?;
    let unwrapped = obj.clone();
    let rec = match backend.get_for_repair(&recovery_key(id)).await {
        Ok(r) => Some(r),
        Err(BackendError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let protected = rec.is_some();
    let (verdict, repaired) = tokio::task::spawn_blocking(move || check(id, obj, rec))
        .await
        .map_err(|e| anyhow::anyhow!("scrub task failed: {e}"))?;
    if let Some(fixed) = repaired {
        backend.put(&chunk_key(id), fixed).await?;
    } else if yenc && verdict == Verdict::Intact && recovery::rewrap_if_damaged(backend, id, unwrapped).await? {
        return Ok((Verdict::Repaired { slices: 0 }, protected));
    }
    Ok((verdict, protected))
}

/// The verdict on a chunk object, and its repaired bytes when there are any to write back.
fn check(id: u64, obj: Bytes, rec: Option<Bytes>) -> (Verdict, Option<Bytes>) {
    let own = own_checksums(&obj);
    let mut data = obj.to_vec();
    match (own, rec) {
        (Ok(()), None) => (Verdict::Intact, None),
        (Err(why), None) => (Verdict::Lost { why, blocks: recovery::damaged_blocks(&data) }, None),
        // The recovery data checks every byte (its MD5s), beyond the chunk's own checksums.
        (own, Some(rec)) => match recovery::repair(id, &mut data, &rec) {
            Ok(RepairOutcome::Intact) => match own {
                Ok(()) => (Verdict::Intact, None),
                // The chunk matches the data its recovery object was made from, yet fails its
                // own checksums: it was written that way. Nothing to repair it to.
                Err(why) => (Verdict::Lost { why, blocks: recovery::damaged_blocks(&data) }, None),
            },
            Ok(RepairOutcome::Repaired(r)) => match own_checksums(&data) {
                Ok(()) => (Verdict::Repaired { slices: r.slices.len() }, Some(Bytes::from(data))),
                Err(why) => (
                    Verdict::Lost { why: format!("repaired, yet {why}"), blocks: recovery::damaged_blocks(&data) },
                    None,
                ),
            },
            Err(e) => {
                let why = match own {
                    Ok(()) => format!("{e} (its own checksums hold: the damage is outside its frames)"),
                    Err(own) => format!("{own}; {e}"),
                };
                (Verdict::Lost { why, blocks: recovery::damaged_blocks(&obj) }, None)
            }
        },
    }
}

/// Every checksum a chunk carries: header, tables, footer, each frame, and each frame
/// decompresses to its length.
fn own_checksums(obj: &[u8]) -> Result<(), String> {
    let t = format::parse_object(obj).map_err(|e| e.to_string())?;
    let codec = Compression::from_id(t.header.codec).map_err(|e| e.to_string())?;
    for (i, f) in t.frames.iter().enumerate() {
        let stored = obj
            .get(f.offset as usize..(f.offset + u64::from(f.stored_len)) as usize)
            .ok_or_else(|| format!("frame {i} lies outside the object"))?;
        format::open_frame(codec, f, stored).map_err(|e| format!("frame {i}: {e}"))?;
    }
    Ok(())
}
