//! The block index: one entry per block that is not plain empty, in shards with their own
//! locks. Lookups and updates are O(1) and happen in place on every write; nothing is
//! rebuilt on a read.
//!
//! It also counts, per WAL segment, how many entries point into it (`Pending`), which is
//! what decides when a segment can be recycled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub state: BlockState,
}

type Shard = RwLock<HashMap<u64, Entry, BuildBlockHasher>>;

pub struct Index {
    shards: Box<[Shard]>,
    live: RwLock<HashMap<u64, AtomicI64>>,
}

impl Index {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| RwLock::new(HashMap::default())).collect(),
            live: RwLock::new(HashMap::new()),
        }
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

    /// Replace a block's entry (`None`: plain empty). Returns the previous entry. The
    /// caller deals with what the previous entry held (a slot to release, a segment whose
    /// count drops once the replacement is durable): see [`Index::segment_released`].
    pub fn set(&self, block: u64, entry: Option<Entry>) -> Option<Entry> {
        let mut shard = self.shard(block).write();
        match entry {
            Some(e) => {
                if let BlockState::Pending { segment, .. } = e.state {
                    self.add_live(segment, 1);
                }
                shard.insert(block, e)
            }
            None => shard.remove(&block),
        }
    }

    /// The WAL writer wrote a block's record: if the entry still holds that sequence
    /// number, it now points into the WAL. Returns the slot the entry held, to release.
    pub fn settle(&self, block: u64, seq: u64, segment: u64, offset: u64) -> Option<SlotId> {
        let mut shard = self.shard(block).write();
        let e = shard.get_mut(&block)?;
        match e.state {
            BlockState::Hot(slot) if e.seq == seq => {
                e.state = BlockState::Pending { segment, offset };
                self.add_live(segment, 1);
                Some(slot)
            }
            _ => None,
        }
    }

    /// An entry that pointed into `segment` was replaced, and the replacement is durable.
    pub fn segment_released(&self, segment: u64) {
        self.add_live(segment, -1);
    }

    fn add_live(&self, segment: u64, n: i64) {
        if let Some(c) = self.live.read().get(&segment) {
            c.fetch_add(n, Ordering::AcqRel);
            return;
        }
        self.live.write().entry(segment).or_insert_with(|| AtomicI64::new(0)).fetch_add(n, Ordering::AcqRel);
    }

    /// Entries still pointing into `segment`, counting only durable replacements.
    pub fn live(&self, segment: u64) -> i64 {
        self.live.read().get(&segment).map_or(0, |c| c.load(Ordering::Acquire))
    }

    pub fn forget_segment(&self, segment: u64) {
        self.live.write().remove(&segment);
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
        assert_eq!(ix.live(9), 1);
        ix.set(5, None);
        assert_eq!(ix.live(9), 1, "the count drops only when the replacement is durable");
        ix.segment_released(9);
        assert_eq!(ix.live(9), 0);
        for b in 0..100 {
            ix.set(b, Some(Entry { seq: b, state: BlockState::Empty { allocated: true } }));
        }
        assert_eq!(ix.remove_range(10, 20).len(), 20);
        assert_eq!(ix.len(), 80);
    }
}
