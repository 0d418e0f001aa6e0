//! The base: the volume's state as of the spill position, built only from spilled WAL
//! ranges and compaction moves. For each block it holds the chunk place of the newest
//! version spilled so far, or "zeroed, still allocated"; a block it does not hold is a
//! hole. A checkpoint (manifest) is the base plus the spill position, so it never depends
//! on anything written after that position: not on data still in memory, nor on WAL
//! records past it. The live index (reads) may be newer than the base, never older.
//!
//! Chunk live counts are references from the base: a chunk is needed for as long as the
//! base points into it.

use std::collections::{HashMap, HashSet};

use super::set::ChunkSet;
use crate::store::hash::BuildBlockHasher;
use crate::store::index::{BlockState, Index, Loc};

/// What the base says of one block it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseRef {
    Chunk(Loc),
    /// Reads as zeroes but stays allocated (WRITE_ZEROES with NO_HOLE).
    Zeroed,
}

#[derive(Default)]
pub struct Base {
    map: HashMap<u64, BaseRef, BuildBlockHasher>,
}

impl Base {
    pub fn new() -> Self {
        Self::default()
    }

    /// The persisted part of a live index, for a volume with no WAL (`recover`).
    pub fn from_index(index: &Index) -> Self {
        let mut b = Self::new();
        for (block, e) in
            index.collect(|_, e| matches!(e.state, BlockState::Persisted(_) | BlockState::Empty { allocated: true }))
        {
            let r = match e.state {
                BlockState::Persisted(l) => BaseRef::Chunk(l),
                _ => BaseRef::Zeroed,
            };
            b.map.insert(block, r);
        }
        b
    }

    pub fn get(&self, block: u64) -> Option<BaseRef> {
        self.map.get(&block).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Put `r` for `block`, keeping the chunks' live counts.
    pub fn set(&mut self, block: u64, r: BaseRef, set: &ChunkSet) {
        if let BaseRef::Chunk(l) = r {
            set.add_live(l.chunk, 1);
        }
        if let Some(BaseRef::Chunk(old)) = self.map.insert(block, r) {
            set.drop_live(old.chunk);
        }
    }

    /// A tombstone: `count` blocks from `first` become holes, or zeroed-but-allocated.
    pub fn zero(&mut self, first: u64, count: u64, keep_allocated: bool, set: &ChunkSet) {
        let end = first.saturating_add(count);
        if !keep_allocated && count as usize > self.map.len() {
            // A range larger than the base: sweep it instead of visiting every block.
            self.map.retain(|&b, r| {
                let inside = b >= first && b < end;
                if let (true, BaseRef::Chunk(l)) = (inside, *r) {
                    set.drop_live(l.chunk);
                }
                !inside
            });
            return;
        }
        for b in first..end {
            let old = if keep_allocated { self.map.insert(b, BaseRef::Zeroed) } else { self.map.remove(&b) };
            if let Some(BaseRef::Chunk(l)) = old {
                set.drop_live(l.chunk);
            }
        }
    }

    /// Compaction copied a block: point it at `to` if it still is at `from`.
    pub fn relocate(&mut self, block: u64, from: Loc, to: Loc, set: &ChunkSet) -> bool {
        match self.map.get_mut(&block) {
            Some(r) if *r == BaseRef::Chunk(from) => {
                *r = BaseRef::Chunk(to);
                set.add_live(to.chunk, 1);
                set.drop_live(from.chunk);
                true
            }
            _ => false,
        }
    }

    /// Blocks whose base version lies in one of `chunks`, sorted by block.
    pub fn refs_into(&self, chunks: &HashSet<u64>) -> Vec<(u64, Loc)> {
        let mut v: Vec<(u64, Loc)> = self
            .map
            .iter()
            .filter_map(|(&b, r)| match r {
                BaseRef::Chunk(l) if chunks.contains(&l.chunk) => Some((b, *l)),
                _ => None,
            })
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Every entry, sorted by block (for checkpoints).
    pub fn sorted(&self) -> Vec<(u64, BaseRef)> {
        let mut v: Vec<(u64, BaseRef)> = self.map.iter().map(|(&b, &r)| (b, r)).collect();
        v.sort_unstable_by_key(|e| e.0);
        v
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
        let mut b = Base::new();
        let at = |chunk, idx| Loc { chunk, frame: 0, idx };
        for i in 0..4 {
            b.set(i, BaseRef::Chunk(at(1, i as u32)), &set);
        }
        assert_eq!(set.get(1).unwrap().live(), 4);
        b.set(0, BaseRef::Chunk(at(2, 0)), &set);
        assert_eq!((set.get(1).unwrap().live(), set.get(2).unwrap().live()), (3, 1));
        b.zero(1, 1, false, &set);
        assert_eq!(b.get(1), None);
        b.zero(2, 1, true, &set);
        assert_eq!(b.get(2), Some(BaseRef::Zeroed));
        assert_eq!(set.get(1).unwrap().live(), 1, "only block 3 is left in chunk 1");
        assert!(b.relocate(3, at(1, 3), at(2, 5), &set));
        assert!(!b.relocate(3, at(1, 3), at(2, 5), &set), "already moved");
        assert_eq!((set.get(1).unwrap().live(), set.get(2).unwrap().live()), (0, 2));
        let ids: HashSet<u64> = [2].into();
        assert_eq!(b.refs_into(&ids), vec![(0, at(2, 0)), (3, at(2, 5))]);
        b.zero(0, 1 << 40, false, &set);
        assert!(b.is_empty());
        assert_eq!(set.get(2).unwrap().live(), 0);
    }
}
