//! Block data in memory: 4 MiB slabs of 1024 slots of 4 KiB, slots reference-counted and
//! reused. No heap object per block. The arena never grows past its slab limit; callers
//! bound their use with a byte budget before they allocate (see `Volume`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::wal::record::BLOCK_SIZE;

pub const SLAB_BYTES: usize = 4 << 20;
pub const SLOTS_PER_SLAB: usize = SLAB_BYTES / BLOCK_SIZE;

/// A slot: slab number and index inside the slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(u32);

impl SlotId {
    fn new(slab: usize, idx: usize) -> Self {
        SlotId((slab * SLOTS_PER_SLAB + idx) as u32)
    }
    fn slab(self) -> usize {
        self.0 as usize / SLOTS_PER_SLAB
    }
    fn idx(self) -> usize {
        self.0 as usize % SLOTS_PER_SLAB
    }
}

/// One slab: the blocks, and their reference counts packed apart from them, so that
/// counting touches a few dense cache lines rather than one beside each 4 KiB block.
struct Slab {
    data: Box<[RwLock<[u8; BLOCK_SIZE]>]>,
    refs: Box<[AtomicU32]>,
}

/// The slab allocator.
pub struct Arena {
    slabs: Box<[OnceLock<Slab>]>,
    free: Mutex<Vec<SlotId>>,
    /// Slabs created so far.
    created: Mutex<usize>,
}

/// Out of slots: the caller's budget is smaller than it thinks.
#[derive(Debug, thiserror::Error)]
#[error("block arena exhausted ({0} slabs)")]
pub struct ArenaFull(usize);

impl Arena {
    /// An arena that holds at most `max_bytes` of block data (rounded up to whole slabs).
    pub fn new(max_bytes: usize) -> Self {
        let slabs = max_bytes.div_ceil(SLAB_BYTES).max(1);
        Self {
            slabs: (0..slabs).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(Vec::new()),
            created: Mutex::new(0),
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.slabs.len() * SLAB_BYTES
    }

    /// Take a slot holding `refs` references. Its content is unspecified until written.
    pub fn alloc(&self, refs: u32) -> Result<SlotId, ArenaFull> {
        // The free-list guard must be gone before `grow` takes it again.
        let popped = self.free.lock().pop();
        let id = match popped {
            Some(id) => id,
            None => self.grow()?,
        };
        self.refs(id).store(refs, Ordering::Release);
        Ok(id)
    }

    fn grow(&self) -> Result<SlotId, ArenaFull> {
        let mut created = self.created.lock();
        // Another thread may have grown the arena while we waited.
        let popped = self.free.lock().pop();
        if let Some(id) = popped {
            return Ok(id);
        }
        let n = *created;
        if n == self.slabs.len() {
            return Err(ArenaFull(n));
        }
        let slab = Slab {
            data: (0..SLOTS_PER_SLAB).map(|_| RwLock::new([0; BLOCK_SIZE])).collect(),
            refs: (0..SLOTS_PER_SLAB).map(|_| AtomicU32::new(0)).collect(),
        };
        let _ = self.slabs[n].set(slab);
        *created = n + 1;
        let mut free = self.free.lock();
        free.extend((1..SLOTS_PER_SLAB).rev().map(|i| SlotId::new(n, i)));
        Ok(SlotId::new(n, 0))
    }

    fn slab(&self, id: SlotId) -> &Slab {
        self.slabs[id.slab()].get().expect("slot ids only come from created slabs")
    }

    fn refs(&self, id: SlotId) -> &AtomicU32 {
        &self.slab(id).refs[id.idx()]
    }

    fn data(&self, id: SlotId) -> &RwLock<[u8; BLOCK_SIZE]> {
        &self.slab(id).data[id.idx()]
    }

    /// Drop one reference; the slot is reused once none are left.
    pub fn release(&self, id: SlotId) {
        if self.refs(id).fetch_sub(1, Ordering::AcqRel) == 1 {
            self.free.lock().push(id);
        }
    }

    /// Read access to a slot's bytes.
    pub fn read(&self, id: SlotId) -> RwLockReadGuard<'_, [u8; BLOCK_SIZE]> {
        self.data(id).read()
    }

    /// Fill a slot.
    pub fn write(&self, id: SlotId, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) {
        f(&mut self.data(id).write());
    }

    /// Bytes in slabs created so far.
    pub fn resident_bytes(&self) -> usize {
        *self.created.lock() * SLAB_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_bounded() {
        let a = Arena::new(SLAB_BYTES);
        let ids: Vec<_> = (0..SLOTS_PER_SLAB).map(|_| a.alloc(2).unwrap()).collect();
        assert!(a.alloc(1).is_err(), "one slab holds 1024 slots");
        a.write(ids[3], |b| b.fill(7));
        assert_eq!(a.read(ids[3])[100], 7);
        a.release(ids[3]);
        assert!(a.alloc(1).is_err(), "still one reference left");
        a.release(ids[3]);
        assert_eq!(a.alloc(1).unwrap(), ids[3], "freed slot is reused");
        assert_eq!(a.resident_bytes(), SLAB_BYTES);
    }
}
