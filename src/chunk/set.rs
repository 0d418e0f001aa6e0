//! The chunks a volume holds, in memory: where each frame of each chunk is, and how many
//! index entries still point into it (its live blocks), which is what compaction reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::format::FrameLoc;
use crate::codec::Compression;

pub struct ChunkMeta {
    pub id: u64,
    pub kind: u8,
    pub codec: Compression,
    pub object_len: u64,
    pub frames: Vec<FrameLoc>,
    /// Blocks the chunk was written with.
    pub blocks: u32,
    /// Index entries that point into it.
    pub live: AtomicU32,
}

impl ChunkMeta {
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Acquire)
    }
}

/// Object key of a chunk.
pub fn chunk_key(id: u64) -> String {
    format!("chunks/{id:016x}")
}

/// The chunk id a key names.
pub fn key_chunk(key: &str) -> Option<u64> {
    let name = key.strip_prefix("chunks/")?;
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

#[derive(Default)]
pub struct ChunkSet {
    chunks: RwLock<BTreeMap<u64, Arc<ChunkMeta>>>,
    next_id: AtomicU64,
}

impl ChunkSet {
    pub fn new(next_id: u64) -> Self {
        Self { chunks: RwLock::default(), next_id: AtomicU64::new(next_id.max(1)) }
    }

    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::AcqRel)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Acquire)
    }

    pub fn bump_next_id(&self, at_least: u64) {
        self.next_id.fetch_max(at_least, Ordering::AcqRel);
    }

    pub fn insert(&self, meta: ChunkMeta) -> Arc<ChunkMeta> {
        let m = Arc::new(meta);
        self.chunks.write().insert(m.id, Arc::clone(&m));
        m
    }

    pub fn get(&self, id: u64) -> Option<Arc<ChunkMeta>> {
        self.chunks.read().get(&id).cloned()
    }

    pub fn remove(&self, id: u64) -> Option<Arc<ChunkMeta>> {
        self.chunks.write().remove(&id)
    }

    pub fn all(&self) -> Vec<Arc<ChunkMeta>> {
        self.chunks.read().values().cloned().collect()
    }

    pub fn add_live(&self, id: u64, n: u32) {
        if let Some(c) = self.chunks.read().get(&id) {
            c.live.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// An entry that pointed into chunk `id` was replaced.
    pub fn drop_live(&self, id: u64) {
        self.drop_live_n(id, 1);
    }

    /// `n` entries that pointed into chunk `id` were replaced.
    pub fn drop_live_n(&self, id: u64, n: u32) {
        if let Some(c) = self.chunks.read().get(&id) {
            let _ = c.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(chunk_key(0xa1), "chunks/00000000000000a1");
        assert_eq!(key_chunk(&chunk_key(0xa1)), Some(0xa1));
        assert_eq!(key_chunk("chunks/xyz"), None);
        assert_eq!(key_chunk("manifest/0000000000000001"), None);
    }
}
