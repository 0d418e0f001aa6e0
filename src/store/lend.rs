//! Reads lent from the arena: a reply sends a run of in-memory blocks straight from their
//! slots, without copying them into a buffer first.
//!
//! A lent slot stays taken until the reply is written, after its write may have given its
//! dirty budget back. So lending has a budget of its own ([`LEND_RESERVE_BYTES`]), and the
//! arena is that much larger than the dirty budget: a writer let through by the dirty
//! budget always finds a free slot. Past the reserve, reads copy as before.

use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nbd::LentBytes;

use super::arena::{Arena, LentSlot};
use super::index::{BlockState, Index};
use crate::wal::record::BLOCK_SIZE;

/// Bytes lent at once, by the arena (set aside on top of the dirty budget) and by WAL
/// segment mappings ([`crate::wal::lend`]) together.
pub const LEND_RESERVE_BYTES: usize = 16 << 20;
/// Reads shorter than this are copied: for a few blocks the copy is cheaper than lending.
pub const LEND_MIN_BLOCKS: u64 = 16;

pub struct Lender {
    arena: Arc<Arena>,
    /// Bytes lent now, at most [`LEND_RESERVE_BYTES`].
    lent: Arc<AtomicUsize>,
}

impl Lender {
    pub fn new(arena: Arc<Arena>) -> Self {
        Self { arena, lent: Arc::new(AtomicUsize::new(0)) }
    }

    /// Set `bytes` aside from the reserve for one reply; `None` when the reserve is spent.
    /// Dropping the reservation gives them back.
    pub fn reserve(&self, bytes: usize) -> Option<Reserved> {
        self.lent
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n + bytes <= LEND_RESERVE_BYTES).then_some(n + bytes)
            })
            .ok()?;
        Some(Reserved { bytes, lent: Arc::clone(&self.lent) })
    }

    /// Lend blocks `first..first + count` if every one is in memory (Hot) and the reserve
    /// has room; `None` means read them another way.
    pub fn lend(&self, index: &Index, first: u64, count: u64) -> Option<LentBlocks> {
        // From here on, dropping `out` gives the bytes back to the reserve.
        let reserved = self.reserve(count as usize * BLOCK_SIZE)?;
        let mut out = LentBlocks { slots: Vec::with_capacity(count as usize), _reserved: reserved };
        for b in first..first + count {
            // The index's reference keeps the slot while the index lock is held; the lent
            // slot counts one of its own.
            let slot = index.with_entry(b, |e| match e.map(|e| e.state) {
                Some(BlockState::Hot(slot)) => self.arena.lend(slot).ok(),
                _ => None,
            })?;
            out.slots.push(slot);
        }
        Some(out)
    }
}

/// Bytes of the lending reserve held by one reply.
pub struct Reserved {
    bytes: usize,
    lent: Arc<AtomicUsize>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.lent.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Blocks lent to one reply; their slots and reserve go back when it is dropped.
pub struct LentBlocks {
    slots: Vec<LentSlot>,
    _reserved: Reserved,
}

impl LentBytes for LentBlocks {
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        out.extend(self.slots.iter().map(|s| IoSlice::new(&s[..])));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Entry;

    fn hot(arena: &Arena, index: &Index, block: u64, byte: u8) {
        let slot = arena.fill(arena.alloc().unwrap(), 1, |d| d.fill(byte));
        index.set(block, Some(Entry { seq: 1, state: BlockState::Hot(slot) }));
    }

    #[test]
    fn lends_runs_in_memory_within_the_reserve() {
        let arena = Arc::new(Arena::new(2 * LEND_RESERVE_BYTES));
        let index = Index::new(16);
        let lender = Lender::new(Arc::clone(&arena));
        for b in 0..32 {
            hot(&arena, &index, b, b as u8);
        }
        let lent = lender.lend(&index, 0, 32).expect("all in memory");
        let mut slices = Vec::new();
        lent.slices(&mut slices);
        assert_eq!(slices.len(), 32);
        for (b, s) in slices.iter().enumerate() {
            assert!(s.len() == BLOCK_SIZE && s.iter().all(|&x| x == b as u8), "block {b}");
        }
        // A block that is not in memory means no loan at all, and nothing stays counted.
        index.set(40, Some(Entry { seq: 1, state: BlockState::Pending { segment: 1, offset: 0 } }));
        hot(&arena, &index, 39, 1);
        assert!(lender.lend(&index, 39, 2).is_none());
        assert!(lender.lend(&index, 32, 1).is_none(), "block 32 has no entry");
        assert_eq!(lender.lent.load(Ordering::Relaxed), 32 * BLOCK_SIZE);
        // The reserve bounds what is out at once.
        let max = (LEND_RESERVE_BYTES / BLOCK_SIZE) as u64;
        for b in 32..max {
            hot(&arena, &index, b, 0);
        }
        assert!(lender.lend(&index, 0, max).is_none(), "over the reserve while 32 blocks are out");
        drop(lent);
        assert_eq!(lender.lent.load(Ordering::Relaxed), 0);
        assert!(lender.lend(&index, 0, max).is_some(), "the whole reserve once they are back");
    }

    #[test]
    fn a_lent_block_keeps_its_bytes_after_the_index_moves_on() {
        let arena = Arc::new(Arena::new(LEND_RESERVE_BYTES));
        let index = Index::new(4);
        let lender = Lender::new(Arc::clone(&arena));
        hot(&arena, &index, 7, 0xaa);
        let lent = lender.lend(&index, 7, 1).unwrap();
        // Overwritten: the index drops its reference to the old slot.
        let old = index.set(7, None);
        if let Some(Entry { state: BlockState::Hot(slot), .. }) = old {
            arena.release(slot);
        }
        for _ in 0..100 {
            let s = arena.fill(arena.alloc().unwrap(), 1, |d| d.fill(0x55));
            arena.release(s);
        }
        let mut slices = Vec::new();
        lent.slices(&mut slices);
        assert!(slices[0].iter().all(|&x| x == 0xaa), "the lent bytes changed under the reply");
    }
}
