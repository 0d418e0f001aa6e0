//! Loading persisted state: a manifest into the index and the chunk set, chunks written
//! after it adopted and leftovers cleaned up, and the whole index rebuilt from the backend alone (`spillway recover`).

use std::collections::HashSet;

use tracing::{info, warn};

use super::base::Base;
use super::cold::place_after;
use super::format::ChunkTables;
use super::format::KIND_SPILL;
use super::manifest::{key_generation, manifest_key, Manifest};
use super::recovery::key_recovery;
use super::set::{key_chunk, ChunkMeta, ChunkSet};
use super::store::{meta_from_tables, ChunkStore};
use super::ChunkError;
use crate::codec::Compression;
use crate::store::index::{BlockState, Entry, Index, Loc};
use crate::wal::record::BLOCK_SIZE;

/// Put a manifest's chunks into `set` and its blocks into `base`. Live counts follow the
/// base.
pub fn apply_manifest(m: &Manifest, base: &Base, set: &ChunkSet) -> Result<(), ChunkError> {
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
            None => base.zero(r.first, u64::from(r.count), true, set),
            Some(start) => {
                let meta = set.get(start.chunk).ok_or(ChunkError::Unknown(start.chunk))?;
                let inside =
                    |l: Loc| meta.frames.get(l.frame as usize).is_some_and(|fr| l.idx < fr.raw_len / BLOCK_SIZE as u32);
                // Only a chunk's last frame is short, so a run inside it at both ends is
                // inside it all along.
                if r.count == 0 || !inside(start) || !inside(place_after(start, r.count - 1)) {
                    return Err(ChunkError::Other(format!(
                        "manifest places blocks {}..{} outside chunk {:016x}",
                        r.first,
                        r.first + u64::from(r.count),
                        start.chunk
                    )));
                }
                base.set_run(r.first, r.count, start, set)?;
            }
        }
    }
    set.bump_next_id(m.next_chunk_id);
    Ok(())
}

/// What [`adopt_or_clean`] found among the chunks the manifest does not name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Orphans {
    /// Spill chunks holding data past the manifest, with the WAL position each spilled
    /// up to: kept for `recover` until a durable manifest covers that position.
    pub adopted: Vec<(u64, (u64, u64))>,
    /// Objects deleted: an unfinished compaction, or a deletion cut short.
    pub deleted: usize,
    /// The highest sequence number in the adopted chunks (0: none).
    pub max_seq: u64,
}

/// Deal with chunk objects the set (loaded from the manifest) does not know, and make new
/// ids start past every existing object. A spill chunk that spilled the WAL past
/// `replay_from` holds data newer than the manifest: it is kept, because it may be the
/// only copy on the backend of what a `--flush-target backend` FLUSH promised, until a
/// durable manifest covers that position (the WAL replayed next holds the same data for
/// this machine). Every other unknown chunk is deleted: a compaction chunk whose sources
/// still exist, or a chunk whose deletion was cut short.
pub async fn adopt_or_clean(store: &ChunkStore, replay_from: (u64, u64)) -> Result<Orphans, ChunkError> {
    let listed = store.backend.list("chunks/").await?;
    let chunk_ids: HashSet<u64> = listed.iter().filter_map(|o| key_chunk(&o.key)).collect();
    let mut out = Orphans::default();
    for o in listed {
        if let Some(id) = key_recovery(&o.key) {
            // The chunk it protected is gone (a deletion cut short between the two).
            if !chunk_ids.contains(&id) {
                store.backend.delete(&o.key).await?;
                out.deleted += 1;
            }
            continue;
        }
        let Some(id) = key_chunk(&o.key) else { continue };
        store.set.bump_next_id(id + 1);
        if store.set.get(id).is_some() {
            continue;
        }
        let t = match store.fetch_tables(id, o.size).await {
            Ok(t) => t,
            Err(e @ ChunkError::Format { .. }) => {
                // Useless to `recover`, and whatever it spilled is still in the local WAL.
                warn!(chunk = format!("{id:016x}"), error = %e, "unreadable chunk the manifest does not name; deleted");
                store.delete_chunk(id).await?;
                out.deleted += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let h = t.header;
        let end = (h.wal_segment, h.wal_offset);
        if h.volume_id == store.volume_id && h.kind == KIND_SPILL && end > replay_from {
            let seqs = t.blocks.iter().map(|e| e.seq).chain(t.tombstones.iter().map(|x| x.seq));
            out.max_seq = out.max_seq.max(seqs.max().unwrap_or(0));
            out.adopted.push((id, end));
            continue;
        }
        store.delete_chunk(id).await?;
        out.deleted += 1;
    }
    if !out.adopted.is_empty() || out.deleted > 0 {
        info!(
            kept = out.adopted.len(),
            deleted = out.deleted,
            "chunks the manifest does not name: spills past it kept until a checkpoint covers them, leftovers removed"
        );
    }
    Ok(out)
}

/// `recover`: put a spill chunk's blocks and tombstones into the index where they are
/// newer than what it holds, and the chunk into the set. Returns the highest sequence
/// number it carries.
fn apply_spill_chunk(store: &ChunkStore, index: &Index, t: &ChunkTables) -> Result<u64, ChunkError> {
    let id = t.header.chunk_id;
    store.set.insert(meta_from_tables(t)?);
    let mut max_seq = 0;
    for e in &t.blocks {
        max_seq = max_seq.max(e.seq);
        if index.get(e.block).is_none_or(|old| old.seq < e.seq) {
            let loc = Loc { chunk: id, frame: e.frame, idx: e.offset / BLOCK_SIZE as u32 };
            index.set(e.block, Some(Entry { seq: e.seq, state: BlockState::Persisted(loc) }));
        }
    }
    for ts in &t.tombstones {
        max_seq = max_seq.max(ts.seq);
        index.tombstone(ts.first, u64::from(ts.count), ts.seq, ts.keep_allocated);
    }
    store.set.bump_next_id(id + 1);
    Ok(max_seq)
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
/// that spilled the WAL past it, in id order and by sequence number (data and
/// tombstones). Compaction chunks no manifest names are skipped: the chunks they copied
/// from still exist.
pub async fn rebuild_from_backend(store: &ChunkStore, index: &Index) -> Result<Rebuilt, ChunkError> {
    let newest = newest_backend_manifest(store).await?;
    let mut next_seq = 1;
    let mut replay_from = (0, 0);
    let mut generation = 0;
    if let Some(m) = &newest {
        // The manifest's blocks with sequence number 0: older than any later chunk.
        let base = Base::new();
        apply_manifest(m, &base, &store.set)?;
        base.fill_index(index);
        next_seq = m.next_seq;
        replay_from = m.replay_from;
        generation = m.generation;
    }
    let mut ids: Vec<(u64, u64)> = store
        .backend
        .list("chunks/")
        .await?
        .iter()
        .filter_map(|o| key_chunk(&o.key).map(|id| (id, o.size)))
        .filter(|(id, _)| store.set.get(*id).is_none())
        .collect();
    ids.sort_unstable();
    let mut applied = 0;
    for (id, len) in ids {
        let t = store.fetch_tables(id, len).await?;
        if t.header.volume_id != store.volume_id {
            warn!(chunk = format!("{id:016x}"), "chunk of another volume; skipped");
            continue;
        }
        // Spills of the WAL past the manifest; anything else unnamed is a leftover.
        if t.header.kind != KIND_SPILL || (t.header.wal_segment, t.header.wal_offset) <= replay_from {
            continue;
        }
        next_seq = next_seq.max(apply_spill_chunk(store, index, &t)? + 1);
        applied += 1;
    }
    Ok(Rebuilt { manifest_generation: generation, chunks_applied: applied, next_seq })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::chunk::base::BaseRef;
    use crate::chunk::format::{build, BlockIn, ChunkHeader, Tombstone, KIND_COMPACTION};
    use crate::chunk::manifest::{manifest_key, Run};
    use crate::chunk::set::chunk_key;
    use crate::chunk::spiller::snapshot;

    const VOL: [u8; 16] = [9; 16];

    async fn put_chunk(
        store: &ChunkStore,
        id: u64,
        kind: u8,
        end: (u64, u64),
        blocks: &[(u64, u64, u8)],
        tombs: &[Tombstone],
    ) {
        let datas: Vec<Vec<u8>> = blocks.iter().map(|b| vec![b.2; BLOCK_SIZE]).collect();
        let ins: Vec<BlockIn> =
            blocks.iter().zip(&datas).map(|(b, d)| BlockIn { block: b.0, seq: b.1, data: d }).collect();
        let h = ChunkHeader {
            codec: 0,
            kind,
            par2_percent: 0,
            transport: crate::chunk::format::TRANSPORT_RAW,
            volume_id: VOL,
            chunk_id: id,
            wal_segment: end.0,
            wal_offset: end.1,
        };
        let (obj, _) = build(h, Compression::None, &ins, tombs);
        store.backend.put(&chunk_key(id), Bytes::from(obj)).await.unwrap();
    }

    fn state(index: &Index, b: u64) -> Option<(u64, u64)> {
        index.get(b).and_then(|e| match e.state {
            BlockState::Persisted(l) => Some((l.chunk, e.seq)),
            _ => None,
        })
    }

    /// Spill chunks past the manifest are applied in order, data and tombstones by
    /// sequence number; chunks at or before its position and compaction leftovers are not.
    #[tokio::test]
    async fn recover_applies_later_spills_with_their_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(Arc::new(LocalBackend::new(dir.path()).unwrap()), ChunkSet::new(1), 0, VOL);
        // Chunk 1, named by the manifest: blocks 0..4.
        put_chunk(&store, 1, KIND_SPILL, (1, 100), &[(0, 1, 1), (1, 2, 1), (2, 3, 1), (3, 4, 1)], &[]).await;
        // Chunk 2, unnamed, at the manifest's position: a leftover, not applied.
        put_chunk(&store, 2, KIND_SPILL, (1, 100), &[(0, 5, 2)], &[]).await;
        // Chunk 3, unnamed compaction chunk: not applied.
        put_chunk(&store, 3, KIND_COMPACTION, (9, 0), &[(0, 0, 3)], &[]).await;
        // Chunk 4, past the manifest: trims 1..3 (seq 10), then rewrites 2 (seq 11).
        let trim = Tombstone { first: 1, seq: 10, count: 2, keep_allocated: false };
        put_chunk(&store, 4, KIND_SPILL, (2, 4096), &[(2, 11, 4)], &[trim]).await;
        // Chunk 5, later still: block 3 zeroed with NO_HOLE (seq 12).
        let zero = Tombstone { first: 3, seq: 12, count: 1, keep_allocated: true };
        put_chunk(&store, 5, KIND_SPILL, (2, 8192), &[], &[zero]).await;

        let named = ChunkStore::new(Arc::clone(&store.backend), ChunkSet::new(1), 0, VOL);
        named
            .set
            .insert(meta_from_tables(&named.fetch_tables(1, 4096 * 4 + 64 + 24 + 4 * 32 + 48).await.unwrap()).unwrap());
        let base = Base::new();
        for b in 0..4 {
            base.set(b, BaseRef::Chunk(Loc { chunk: 1, frame: 0, idx: b as u32 }), &named.set).unwrap();
        }
        let m = snapshot(&base, &named.set, VOL, 7, 5, (1, 100));
        assert_eq!(m.runs, vec![Run { first: 0, count: 4, loc: Some(Loc { chunk: 1, frame: 0, idx: 0 }) }]);
        store.backend.put(&manifest_key(7), Bytes::from(m.encode())).await.unwrap();

        let index = Index::new(4);
        let r = rebuild_from_backend(&store, &index).await.unwrap();
        assert_eq!((r.manifest_generation, r.chunks_applied, r.next_seq), (7, 2, 13));
        assert_eq!(state(&index, 0), Some((1, 0)), "block 0 from the manifest; chunks 2 and 3 ignored");
        assert_eq!(index.get(1), None, "block 1 trimmed past the manifest");
        assert_eq!(state(&index, 2), Some((4, 11)), "block 2 rewritten after the trim");
        assert_eq!(index.get(3).map(|e| e.state), Some(BlockState::Empty { allocated: true }), "block 3 zeroed");
    }
}
