//! The live block index: one entry per block whose newest version is not yet in the
//! chunks, in shards with their own locks. Lookups and updates are O(1) and happen in place
//! on every write; nothing is rebuilt on a read. Once the spiller has put a block's version
//! into the base (`chunk::base`, the compact map of everything spilled), its entry goes,
//! and reads fall through to the base: the index holds what is in memory or in the WAL,
//! not the whole volume. A trim not yet spilled leaves a marker (`Empty`) per block, or for
//! a large range one entry in a list of holes, so that the base's older version stays
//! hidden.
//!
use std::collections::HashMap;

use parking_lot::RwLock;

use super::arena::SlotId;
use super::hash::{run_hash, BuildBlockHasher};
use crate::wal::record::{BLOCK_SIZE, HEADER_LEN};

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
    /// In the WAL inside an LZ4 data record, which must be read and decompressed whole:
    /// segment id, offset of the record's header in the segment (segments are at most
    /// 4 GiB), and the block's place in the record.
    PendingLz4 { segment: u64, record: u32, idx: u32 },
    /// In a chunk object: chunk id, frame, and the block's place in the frame. Only in an
    /// index being rebuilt from chunks (`recover`); a live index leaves these to the base.
    Persisted(Loc),
}

impl BlockState {
    /// Block `k` of the data record whose header is at `record` in WAL segment `segment`
    /// (`docs/wal.md`): the writer, replay and the spill all place blocks through this.
    /// `None` for an LZ4 record past 4 GiB into its segment, which no segment this program
    /// writes reaches; each caller reports it in its own terms.
    pub fn in_wal_record(segment: u64, record: u64, compressed: bool, k: u32) -> Option<BlockState> {
        if compressed {
            Some(BlockState::PendingLz4 { segment, record: u32::try_from(record).ok()?, idx: k })
        } else {
            let offset = record + (HEADER_LEN + k as usize * BLOCK_SIZE) as u64;
            Some(BlockState::Pending { segment, offset })
        }
    }

    /// Where in the WAL the block's version is, as (segment, offset) ordered like the log:
    /// the block's bytes, or for an LZ4 record the record's start. `None` when not in the WAL.
    pub fn wal_pos(&self) -> Option<(u64, u64)> {
        match *self {
            BlockState::Pending { segment, offset } => Some((segment, offset)),
            BlockState::PendingLz4 { segment, record, .. } => Some((segment, u64::from(record))),
            _ => None,
        }
    }

    /// Whether the block's newest version is in the WAL (raw or compressed).
    pub fn is_pending(&self) -> bool {
        self.wal_pos().is_some()
    }
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

/// A trim of more blocks than this leaves one entry in the list of holes rather than a
/// marker per block.
const MARKERS_MAX: u64 = 4096;

pub struct Index {
    shards: Box<[Shard]>,
    /// Large trims not yet spilled: `(first, end, seq)`. A block without an entry inside
    /// one reads as a hole, whatever the base holds.
    holes: RwLock<Vec<(u64, u64, u64)>>,
}

impl Index {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| RwLock::new(HashMap::default())).collect(),
            holes: RwLock::new(Vec::new()),
        }
    }

    /// Whether a trim not yet spilled covers `block` (for blocks without an entry).
    pub fn in_hole(&self, block: u64) -> bool {
        self.holes.read().iter().any(|&(first, end, _)| (first..end).contains(&block))
    }

    fn shard(&self, block: u64) -> &Shard {
        // A run of neighbouring blocks shares a shard, where it also takes neighbouring
        // buckets (`hash`); runs spread across the shards.
        &self.shards[(run_hash(block) >> 32) as usize % self.shards.len()]
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

    /// The spiller put a block's version into the base: if the entry still is that WAL
    /// copy, it goes, and reads find the version in the base. Call it only after the base
    /// holds the version (and after [`Self::clear_zero`] for the range's trims).
    /// `wal` is the WAL state the version had ([`BlockState::Pending`] or
    /// [`BlockState::PendingLz4`]).
    pub fn persist(&self, block: u64, seq: u64, wal: BlockState) -> bool {
        let mut shard = self.shard(block).write();
        match shard.get(&block) {
            Some(e) if e.seq == seq && e.state == wal && wal.is_pending() => {
                shard.remove(&block);
                true
            }
            _ => false,
        }
    }

    /// The spiller applied the trim `seq` of `count` blocks from `first` to the base: its
    /// markers (or its hole) go. Markers of newer writes or trims stay.
    pub fn clear_zero(&self, first: u64, count: u64, seq: u64, keep_allocated: bool) {
        if Self::as_hole(count, keep_allocated) {
            self.holes.write().retain(|h| h.2 != seq);
            return;
        }
        for b in first..first.saturating_add(count) {
            let mut shard = self.shard(b).write();
            if shard.get(&b).is_some_and(|e| e.seq == seq && matches!(e.state, BlockState::Empty { .. })) {
                shard.remove(&b);
            }
        }
    }

    /// Give back the memory of shards that emptied (a hash map keeps the capacity of its
    /// peak): after a spill, the index holds only what is still in memory or the WAL.
    pub fn shrink(&self) {
        for shard in self.shards.iter() {
            let mut s = shard.write();
            if s.capacity() > 4 * s.len() + 1024 {
                let keep = 2 * s.len();
                s.shrink_to(keep);
            }
        }
    }

    fn as_hole(count: u64, keep_allocated: bool) -> bool {
        !keep_allocated && count > MARKERS_MAX
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
    /// number, it now points into the WAL (`wal`: where, [`BlockState::Pending`] or
    /// [`BlockState::PendingLz4`]). Returns the slot the entry held, to release.
    pub fn settle(&self, block: u64, seq: u64, wal: BlockState) -> Option<SlotId> {
        let mut shard = self.shard(block).write();
        let e = shard.get_mut(&block)?;
        match e.state {
            BlockState::Hot(slot) if e.seq == seq => {
                e.state = wal;
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

    /// Make `count` blocks from `first` read as zeroes: a marker `Empty { allocated }` per
    /// block, or for a large plain trim one hole (the entries inside it go). The base may
    /// hold older versions of these blocks until the spiller applies the trim, so a marker
    /// is needed even where the index had nothing. Returns the entries replaced.
    pub fn zero_range(&self, first: u64, count: u64, keep_allocated: bool, seq: u64) -> Vec<Entry> {
        if Self::as_hole(count, keep_allocated) {
            let out = self.remove_range(first, count).into_iter().map(|(_, e)| e).collect();
            self.holes.write().push((first, first.saturating_add(count), seq));
            return out;
        }
        let new = Some(Entry { seq, state: BlockState::Empty { allocated: keep_allocated } });
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
    fn blocks_of_a_wal_record_are_placed_after_its_header() {
        // docs/wal.md: a 48-byte header, then whole blocks.
        assert_eq!(
            BlockState::in_wal_record(3, 8192, false, 2),
            Some(BlockState::Pending { segment: 3, offset: 8192 + 48 + 2 * 4096 })
        );
        assert_eq!(
            BlockState::in_wal_record(3, 8192, true, 2),
            Some(BlockState::PendingLz4 { segment: 3, record: 8192, idx: 2 })
        );
        assert_eq!(BlockState::in_wal_record(3, 1 << 32, true, 0), None, "an LZ4 record past 4 GiB");
        assert!(BlockState::in_wal_record(3, 1 << 32, false, 0).is_some(), "a raw one is placed by its offset");
    }

    #[test]
    fn settle_only_matching_seq_and_count_live() {
        let ix = Index::new(16);
        let arena = crate::store::arena::Arena::new(4 << 20);
        let slot = arena.fill(arena.alloc().unwrap(), 1, |_| {});
        ix.set(5, Some(Entry { seq: 1, state: BlockState::Hot(slot) }));
        let wal = BlockState::Pending { segment: 9, offset: 4096 };
        assert_eq!(ix.settle(5, 2, wal), None, "stale sequence number");
        assert_eq!(ix.settle(5, 1, wal), Some(slot));
        assert_eq!(ix.get(5).unwrap().state, wal);
        assert!(!ix.persist(5, 2, wal), "stale sequence number");
        assert!(!ix.persist(5, 1, BlockState::Pending { segment: 9, offset: 8192 }), "another WAL copy");
        assert!(!ix.persist(5, 1, BlockState::PendingLz4 { segment: 9, record: 4096, idx: 0 }), "another WAL copy");
        assert!(ix.persist(5, 1, wal));
        assert_eq!(ix.get(5), None, "persisted: reads go to the base");
        let loc = Loc { chunk: 1, frame: 0, idx: 3 };
        ix.set(5, Some(Entry { seq: 1, state: BlockState::Persisted(loc) }));
        assert_eq!(ix.tombstone(0, 10, 1, false).len(), 0, "older tombstones lose");
        assert_eq!(ix.tombstone(0, 10, 2, false).len(), 1);
        for b in 0..100 {
            ix.set(b, Some(Entry { seq: b, state: BlockState::Empty { allocated: true } }));
        }
        assert_eq!(ix.remove_range(10, 20).len(), 20);
        assert_eq!(ix.len(), 80);
    }

    #[test]
    fn compressed_wal_blocks_settle_and_persist_without_growing_entries() {
        // The index holds one entry per block in the WAL: the new state must not grow it.
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        let ix = Index::new(4);
        let arena = crate::store::arena::Arena::new(4 << 20);
        let slot = arena.fill(arena.alloc().unwrap(), 1, |_| {});
        ix.set(8, Some(Entry { seq: 3, state: BlockState::Hot(slot) }));
        let lz = BlockState::PendingLz4 { segment: 2, record: 8192, idx: 5 };
        assert_eq!(ix.settle(8, 3, lz), Some(slot));
        assert_eq!(lz.wal_pos(), Some((2, 8192)), "ordered by the record's start");
        assert!(!ix.persist(8, 3, BlockState::PendingLz4 { segment: 2, record: 8192, idx: 4 }));
        assert!(!ix.persist(8, 3, BlockState::Empty { allocated: false }));
        assert!(ix.persist(8, 3, lz));
        assert!(ix.is_empty());
    }

    #[test]
    fn trims_leave_markers_or_holes_until_the_spill_clears_them() {
        let ix = Index::new(4);
        let pending = |seq| Some(Entry { seq, state: BlockState::Pending { segment: 1, offset: 4096 * seq } });
        ix.set(3, pending(1));
        // A small trim: a marker on every block, the older entry replaced.
        assert_eq!(ix.zero_range(0, 10, false, 2).len(), 1);
        assert_eq!(ix.get(7).map(|e| e.state), Some(BlockState::Empty { allocated: false }));
        ix.set(4, pending(3)); // written after the trim
        ix.clear_zero(0, 10, 2, false);
        assert_eq!(ix.len(), 1, "only the newer write is left");
        // A large trim: one hole, entries inside it go, later writes show through it.
        ix.set(100_000, pending(4));
        assert_eq!(ix.zero_range(50_000, 1 << 30, false, 5).len(), 1);
        assert!(ix.in_hole(60_000) && !ix.in_hole(10));
        ix.set(100_001, pending(6));
        assert!(ix.get(100_001).is_some());
        ix.clear_zero(50_000, 1 << 30, 5, false);
        assert!(!ix.in_hole(60_000));
        // NO_HOLE zeroes always leave markers.
        ix.zero_range(0, 5000, true, 7);
        assert_eq!(ix.get(4999).map(|e| e.state), Some(BlockState::Empty { allocated: true }));
        ix.clear_zero(0, 5000, 7, true);
        // Block 4's write was older than this zero; only the write after the hole is left.
        assert_eq!(ix.collect(|_, _| true).into_iter().map(|e| e.0).collect::<Vec<_>>(), vec![100_001]);
    }
}
