//! The base: the volume's state as of the spill position, built only from spilled WAL
//! ranges and compaction moves. For each block it holds the chunk place of the newest
//! version spilled so far, or "zeroed, still allocated"; a block it does not hold is a
//! hole. A checkpoint (manifest) is the base plus the spill position, so it never depends
//! on anything written after that position: not on data still in memory, nor on WAL
//! records past it. The live index (reads) may be newer than the base, never older.
//!
//! Chunk live counts are references from the base: a chunk is needed for as long as the
//! base points into it.

use std::collections::HashSet;

use parking_lot::RwLock;

pub use super::cold::ColdRef as BaseRef;
use super::cold::{place_after, ColdMap};
use super::set::ChunkSet;
use super::ChunkError;
use crate::store::index::{BlockState, Entry, Index, Loc};

/// Shared by the spiller, which alone changes it, and the volume's reads, which fall
/// through to it for every block the live index does not hold.
#[derive(Default)]
pub struct Base {
    map: RwLock<ColdMap>,
}

fn too_far(l: Loc) -> ChunkError {
    ChunkError::Other(format!("chunk place {l:?} is beyond what the index can hold (chunk size limit)"))
}

impl Base {
    pub fn new() -> Self {
        Self::default()
    }

    /// The persisted part of a live index, for a volume with no WAL (`recover`).
    pub fn from_index(index: &Index) -> Result<Self, ChunkError> {
        let b = Self::new();
        let mut entries =
            index.collect(|_, e| matches!(e.state, BlockState::Persisted(_) | BlockState::Empty { allocated: true }));
        entries.sort_unstable_by_key(|e| e.0);
        let mut map = b.map.write();
        for (block, e) in entries {
            let r = match e.state {
                BlockState::Persisted(l) => BaseRef::Chunk(l),
                _ => BaseRef::Zeroed,
            };
            map.insert(block, r).map_err(too_far)?;
        }
        drop(map);
        Ok(b)
    }

    /// Every block into `index` with sequence number 0 (older than anything in a log or a
    /// later chunk): `recover` starts from a manifest this way.
    pub fn fill_index(&self, index: &Index) {
        for (first, count, r) in self.map.read().runs() {
            for k in 0..u64::from(count) {
                let state = match r {
                    BaseRef::Zeroed => BlockState::Empty { allocated: true },
                    BaseRef::Chunk(l) => BlockState::Persisted(place_after(l, k as u32)),
                };
                index.set(first + k, Some(Entry { seq: 0, state }));
            }
        }
    }

    pub fn get(&self, block: u64) -> Option<BaseRef> {
        self.map.read().get(block)
    }

    /// Blocks held.
    pub fn len(&self) -> u64 {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extents held and the bytes they take (for measurements).
    pub fn footprint(&self) -> (usize, usize) {
        let m = self.map.read();
        (m.extents(), m.heap_bytes())
    }

    /// Put `r` for `block`, keeping the chunks' live counts.
    pub fn set(&self, block: u64, r: BaseRef, set: &ChunkSet) -> Result<(), ChunkError> {
        let old = self.map.write().insert(block, r).map_err(too_far)?;
        if let BaseRef::Chunk(l) = r {
            set.add_live(l.chunk, 1);
        }
        if let Some(BaseRef::Chunk(old)) = old {
            set.drop_live(old.chunk);
        }
        Ok(())
    }

    /// `count` blocks from `first` at consecutive places of one chunk from `start` (a
    /// manifest's run), keeping the chunks' live counts.
    pub fn set_run(&self, first: u64, count: u32, start: Loc, set: &ChunkSet) -> Result<(), ChunkError> {
        self.map.write().insert_run(first, count, start, |l, n| set.drop_live_n(l.chunk, n)).map_err(too_far)?;
        set.add_live(start.chunk, count);
        Ok(())
    }

    /// A tombstone: `count` blocks from `first` become holes, or zeroed-but-allocated.
    pub fn zero(&self, first: u64, count: u64, keep_allocated: bool, set: &ChunkSet) {
        let end = first.saturating_add(count);
        let mut map = self.map.write();
        let dropped = |l: Loc, n: u32| set.drop_live_n(l.chunk, n);
        if keep_allocated {
            map.fill_zeroed(first, end, dropped);
        } else {
            map.remove_range(first, end, dropped);
        }
    }

    /// Compaction copied a block: point it at `to` if it still is at `from`.
    pub fn relocate(&self, block: u64, from: Loc, to: Loc, set: &ChunkSet) -> Result<bool, ChunkError> {
        let mut map = self.map.write();
        if map.get(block) != Some(BaseRef::Chunk(from)) {
            return Ok(false);
        }
        map.insert(block, BaseRef::Chunk(to)).map_err(too_far)?;
        set.add_live(to.chunk, 1);
        set.drop_live(from.chunk);
        Ok(true)
    }

    /// Blocks whose base version lies in one of `chunks`, sorted by block.
    pub fn refs_into(&self, chunks: &HashSet<u64>) -> Vec<(u64, Loc)> {
        let mut v = Vec::new();
        for (first, count, r) in self.map.read().runs() {
            if let BaseRef::Chunk(l) = r {
                if chunks.contains(&l.chunk) {
                    v.extend((0..count).map(|k| (first + u64::from(k), place_after(l, k))));
                }
            }
        }
        v
    }

    /// Every extent in block order: first block, blocks, and the first block's place
    /// (consecutive places of one chunk follow it), for checkpoints.
    pub fn runs(&self) -> Vec<(u64, u32, BaseRef)> {
        self.map.read().runs().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::set::ChunkMeta;
    use crate::codec::Compression;

    fn chunk(set: &ChunkSet, id: u64) {
        set.insert(ChunkMeta {
            id,
            kind: 1,
            codec: Compression::None,
            object_len: 0,
            frames: Vec::new(),
            blocks: 16,
            live: Default::default(),
        });
    }

    #[test]
    fn live_counts_follow_the_base() {
        let set = ChunkSet::new(1);
        chunk(&set, 1);
        chunk(&set, 2);
        let b = Base::new();
        let at = |chunk, idx| Loc { chunk, frame: 0, idx };
        for i in 0..4 {
            b.set(i, BaseRef::Chunk(at(1, i as u32)), &set).unwrap();
        }
        assert_eq!(set.get(1).unwrap().live(), 4);
        b.set(0, BaseRef::Chunk(at(2, 0)), &set).unwrap();
        assert_eq!((set.get(1).unwrap().live(), set.get(2).unwrap().live()), (3, 1));
        b.zero(1, 1, false, &set);
        assert_eq!(b.get(1), None);
        b.zero(2, 1, true, &set);
        assert_eq!(b.get(2), Some(BaseRef::Zeroed));
        assert_eq!(set.get(1).unwrap().live(), 1, "only block 3 is left in chunk 1");
        assert!(b.relocate(3, at(1, 3), at(2, 5), &set).unwrap());
        assert!(!b.relocate(3, at(1, 3), at(2, 5), &set).unwrap(), "already moved");
        assert_eq!((set.get(1).unwrap().live(), set.get(2).unwrap().live()), (0, 2));
        let ids: HashSet<u64> = [2].into();
        assert_eq!(b.refs_into(&ids), vec![(0, at(2, 0)), (3, at(2, 5))]);
        b.zero(0, 1 << 40, false, &set);
        assert!(b.is_empty());
        assert_eq!(set.get(2).unwrap().live(), 0);
    }
}
