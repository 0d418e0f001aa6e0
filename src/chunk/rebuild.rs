//! Loading persisted state: a manifest into the index and the chunk set, orphan chunks
//! cleaned up, and the whole index rebuilt from the backend alone (`spillway recover`).

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::format::KIND_SPILL;
use super::manifest::{key_generation, manifest_key, next_place, Manifest};
use super::set::{key_chunk, ChunkMeta, ChunkSet};
use super::store::{meta_from_tables, ChunkStore};
use super::ChunkError;
use crate::codec::Compression;
use crate::store::index::{BlockState, Entry, Index, Loc};
use crate::wal::record::BLOCK_SIZE;

/// Put a manifest's chunks into `set` and its blocks into `index` (sequence number 0:
/// older than anything in the log or in later chunks).
pub fn apply_manifest(m: &Manifest, index: &Index, set: &ChunkSet) -> Result<(), ChunkError> {
    for c in &m.chunks {
        set.insert(ChunkMeta {
            id: c.id,
            kind: c.kind,
            codec: Compression::from_id(c.codec).map_err(|e| ChunkError::Format { chunk: c.id, source: e.into() })?,
            object_len: c.object_len,
            frames: c.frames.clone(),
            blocks: c.blocks,
            live: Default::default(),
        });
    }
    for r in &m.runs {
        match r.loc {
            None => {
                for b in r.first..r.first + u64::from(r.count) {
                    index.set(b, Some(Entry { seq: 0, state: BlockState::Empty { allocated: true } }));
                }
            }
            Some(start) => {
                let meta = set.get(start.chunk).ok_or(ChunkError::Unknown(start.chunk))?;
                let frame_blocks = |f: u32| meta.frames.get(f as usize).map_or(0, |fr| fr.raw_len / BLOCK_SIZE as u32);
                let mut loc = start;
                for b in r.first..r.first + u64::from(r.count) {
                    if loc.frame as usize >= meta.frames.len() || loc.idx >= frame_blocks(loc.frame) {
                        return Err(ChunkError::Other(format!(
                            "manifest places block {b} outside chunk {:016x}",
                            start.chunk
                        )));
                    }
                    index.set(b, Some(Entry { seq: 0, state: BlockState::Persisted(loc) }));
                    loc = next_place(loc, frame_blocks);
                }
                meta.live.fetch_add(r.count, Ordering::AcqRel);
            }
        }
    }
    set.bump_next_id(m.next_chunk_id);
    Ok(())
}

/// Delete chunk objects the set does not know (an unfinished spill or compaction, or a
/// deletion cut short), and make new ids start past every existing object.
pub async fn clean_orphans(store: &ChunkStore) -> Result<usize, ChunkError> {
    let listed = store.backend.list("chunks/").await?;
    let mut removed = 0;
    for o in listed {
        let Some(id) = key_chunk(&o.key) else { continue };
        store.set.bump_next_id(id + 1);
        if store.set.get(id).is_none() {
            store.backend.delete(&o.key).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        info!(removed, "orphan chunks deleted (left by an unfinished spill or compaction)");
    }
    Ok(removed)
}

/// The newest manifest on the backend that reads back cleanly.
pub async fn newest_backend_manifest(store: &ChunkStore) -> Result<Option<Manifest>, ChunkError> {
    let mut gens: Vec<u64> =
        store.backend.list("manifest/").await?.iter().filter_map(|o| key_generation(&o.key)).collect();
    gens.sort_unstable();
    for g in gens.into_iter().rev() {
        let bytes = store.backend.get(&manifest_key(g)).await?;
        match Manifest::decode(&bytes) {
            Ok(m) if m.volume_id == store.volume_id => return Ok(Some(m)),
            Ok(_) => warn!(generation = g, "manifest belongs to another volume; skipped"),
            Err(e) => warn!(generation = g, error = %e, "manifest damaged; trying an older one"),
        }
    }
    Ok(None)
}

/// What a rebuild from the backend found.
pub struct Rebuilt {
    pub manifest_generation: u64,
    pub chunks_applied: usize,
    pub next_seq: u64,
}

/// Rebuild the index from the backend alone: the newest manifest, then every spill chunk
/// written after it, applied by sequence number (data and tombstones). Compaction chunks
/// no manifest names are skipped: the chunks they copied from still exist.
pub async fn rebuild_from_backend(store: &ChunkStore, index: &Index) -> Result<Rebuilt, ChunkError> {
    let base = newest_backend_manifest(store).await?;
    let mut next_seq = 1;
    let mut first_new = 0;
    let mut generation = 0;
    if let Some(m) = &base {
        apply_manifest(m, index, &store.set)?;
        next_seq = m.next_seq;
        first_new = m.next_chunk_id;
        generation = m.generation;
    }
    let mut ids: Vec<(u64, u64)> = store
        .backend
        .list("chunks/")
        .await?
        .iter()
        .filter_map(|o| key_chunk(&o.key).map(|id| (id, o.size)))
        .filter(|(id, _)| *id >= first_new && store.set.get(*id).is_none())
        .collect();
    ids.sort_unstable();
    let mut applied = 0;
    for (id, len) in ids {
        let t = store.fetch_tables(id, len).await?;
        if t.header.volume_id != store.volume_id {
            warn!(chunk = format!("{id:016x}"), "chunk of another volume; skipped");
            continue;
        }
        if t.header.kind != KIND_SPILL {
            continue;
        }
        let meta = store.set.insert(meta_from_tables(&t)?);
        let mut live = 0;
        for e in &t.blocks {
            next_seq = next_seq.max(e.seq + 1);
            let newer = index.get(e.block).is_none_or(|old| old.seq < e.seq);
            if newer {
                let loc = Loc { chunk: id, frame: e.frame, idx: e.offset / BLOCK_SIZE as u32 };
                if let Some(old) = index.set(e.block, Some(Entry { seq: e.seq, state: BlockState::Persisted(loc) })) {
                    if let BlockState::Persisted(l) = old.state {
                        store.set.drop_live(l.chunk);
                    }
                }
                live += 1;
            }
        }
        meta.live.fetch_add(live, Ordering::AcqRel);
        for ts in &t.tombstones {
            next_seq = next_seq.max(ts.seq + 1);
            for old in index.tombstone(ts.first, u64::from(ts.count), ts.seq, ts.keep_allocated) {
                if let BlockState::Persisted(l) = old.state {
                    store.set.drop_live(l.chunk);
                }
            }
        }
        store.set.bump_next_id(id + 1);
        applied += 1;
    }
    Ok(Rebuilt { manifest_generation: generation, chunks_applied: applied, next_seq })
}
