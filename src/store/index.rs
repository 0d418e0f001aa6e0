//! The block index: one entry per block that is not plain empty, in shards with their own
//! locks. Lookups and updates are O(1) and happen in place on every write; nothing is
//! rebuilt on a read.
//!
use std::collections::HashMap;

use parking_lot::RwLock;

use super::arena::SlotId;
use super::hash::BuildBlockHasher;

/// Where a block's current content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Reads as zeroes. `allocated` when zeroed with NO_HOLE (block status: data, zero).
    /// Plain empty blocks have no entry at all.
    Empty { allocated: bool },
    /// In memory, in an arena slot; its WAL record is not written yet.
    Hot(SlotId),
    /// In the WAL: segment id and the offset of the block's bytes in that segment.
    Pending { segment: u64, offset: u64 },
    /// In a chunk object: chunk id, frame, and the block's place in the frame.
    Persisted(Loc),
}

/// Where a persisted block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub chunk: u64,
    pub frame: u32,
    pub idx: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub state: BlockState,
}

type Shard = RwLock<HashMap<u64, Entry, BuildBlockHasher>>;

pub struct Index {
    shards: Box<[Shard]>,
}

impl Index {
    pub fn new(shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| RwLock::new(HashMap::default())).collect() }
    }

    fn shard(&self, block: u64) -> &Shard {
        // Spread neighbouring blocks across shards.
        let h = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        &self.shards[h as usize % self.shards.len()]
    }

    pub fn get(&self, block: u64) -> Option<Entry> {
        self.shard(block).read().get(&block).copied()
    }

    /// Run `f` on the entry with the shard's read lock held, so that an arena slot it names
    /// cannot be released meanwhile.
    pub fn with_entry<R>(&self, block: u64, f: impl FnOnce(Option<&Entry>) -> R) -> R {
        f(self.shard(block).read().get(&block))
    }

    /// Replace a block's entry (`None`: plain empty). Returns the previous entry; the
    /// caller deals with what it held (an arena slot, a chunk's live count).
    pub fn set(&self, block: u64, entry: Option<Entry>) -> Option<Entry> {
        let mut shard = self.shard(block).write();
        match entry {
            Some(e) => shard.insert(block, e),
            None => shard.remove(&block),
        }
    }

    /// The spiller put a block into a chunk: if the entry still is that WAL copy, it now
    /// points into the chunk.
    pub fn persist(&self, block: u64, seq: u64, segment: u64, offset: u64, loc: Loc) -> bool {
        let mut shard = self.shard(block).write();
        match shard.get_mut(&block) {
            Some(e) if e.seq == seq && e.state == (BlockState::Pending { segment, offset }) => {
                e.state = BlockState::Persisted(loc);
                true
            }
            _ => false,
        }
    }

    /// Compaction copied a block to a new place: move the entry if it is still at `from`.
    pub fn relocate(&self, block: u64, from: Loc, to: Loc) -> bool {
        let mut shard = self.shard(block).write();
        match shard.get_mut(&block) {
            Some(e) if e.state == BlockState::Persisted(from) => {
                e.state = BlockState::Persisted(to);
                true
            }
            _ => false,
        }
    }

    /// Every entry, shard by shard, filtered by `keep` (for checkpoints and compaction).
    pub fn collect(&self, mut keep: impl FnMut(u64, &Entry) -> bool) -> Vec<(u64, Entry)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.read().iter().filter(|(b, e)| keep(**b, e)).map(|(b, e)| (*b, *e)));
        }
        out
    }

    /// Drop entries in `first..first+count` older than `seq` (a tombstone met in rebuild).
    pub fn tombstone(&self, first: u64, count: u64, seq: u64, keep_allocated: bool) -> Vec<Entry> {
        let end = first.saturating_add(count);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut s = shard.write();
            let hit: Vec<u64> =
                s.iter().filter(|(b, e)| **b >= first && **b < end && e.seq < seq).map(|(b, _)| *b).collect();
            for b in hit {
                if let Some(old) = s.remove(&b) {
                    out.push(old);
                }
            }
        }
        if keep_allocated {
            for b in first..end {
                let mut shard = self.shard(b).write();
                if shard.get(&b).is_none_or(|e| e.seq < seq) {
                    shard.insert(b, Entry { seq, state: BlockState::Empty { allocated: true } });
                }
            }
        }
        out
    }

    /// The WAL writer wrote a block's record: if the entry still holds that sequence
    /// number, it now points into the WAL. Returns the slot the entry held, to release.
    pub fn settle(&self, block: u64, seq: u64, segment: u64, offset: u64) -> Option<SlotId> {
        let mut shard = self.shard(block).write();
        let e = shard.get_mut(&block)?;
        match e.state {
            BlockState::Hot(slot) if e.seq == seq => {
                e.state = BlockState::Pending { segment, offset };
                Some(slot)
            }
            _ => None,
        }
    }

    /// Remove every plain-empty-able entry in `first..first+count` in one pass per shard,
    /// for ranges too large to visit block by block. Returns the removed entries.
    pub fn remove_range(&self, first: u64, count: u64) -> Vec<(u64, Entry)> {
        let end = first.saturating_add(count);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            shard.write().retain(|&b, e| {
                let inside = b >= first && b < end;
                if inside {
                    out.push((b, *e));
                }
                !inside
            });
        }
        out
    }

    /// Make `count` blocks from `first` read as zeroes (plain empty, or `Empty { allocated }`
    /// with `keep_allocated`). Returns the entries replaced.
    pub fn zero_range(&self, first: u64, count: u64, keep_allocated: bool, seq: u64) -> Vec<Entry> {
        if !keep_allocated && count as usize > self.len() {
            // A range larger than the index: sweep the shards instead of every block.
            return self.remove_range(first, count).into_iter().map(|(_, e)| e).collect();
        }
        let new = keep_allocated.then_some(Entry { seq, state: BlockState::Empty { allocated: true } });
        (first..first + count).filter_map(|b| self.set(b, new)).collect()
    }

    /// Entries in the index.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_only_matching_seq_and_count_live() {
        let ix = Index::new(16);
        let slot = crate::store::arena::Arena::new(4 << 20).alloc(1).unwrap();
        ix.set(5, Some(Entry { seq: 1, state: BlockState::Hot(slot) }));
        assert_eq!(ix.settle(5, 2, 9, 4096), None, "stale sequence number");
        assert_eq!(ix.settle(5, 1, 9, 4096), Some(slot));
        assert_eq!(ix.get(5).unwrap().state, BlockState::Pending { segment: 9, offset: 4096 });
        let loc = Loc { chunk: 1, frame: 0, idx: 3 };
        assert!(!ix.persist(5, 2, 9, 4096, loc), "stale sequence number");
        assert!(!ix.persist(5, 1, 9, 8192, loc), "another WAL copy");
        assert!(ix.persist(5, 1, 9, 4096, loc));
        let to = Loc { chunk: 2, frame: 1, idx: 0 };
        assert!(ix.relocate(5, loc, to));
        assert!(!ix.relocate(5, loc, to), "already moved");
        assert_eq!(ix.get(5).unwrap().state, BlockState::Persisted(to));
        assert_eq!(ix.tombstone(0, 10, 1, false).len(), 0, "older tombstones lose");
        assert_eq!(ix.tombstone(0, 10, 2, false).len(), 1);
        for b in 0..100 {
            ix.set(b, Some(Entry { seq: b, state: BlockState::Empty { allocated: true } }));
        }
        assert_eq!(ix.remove_range(10, 20).len(), 20);
        assert_eq!(ix.len(), 80);
    }
}
