//! Block data in memory: 4 MiB slabs of 1024 slots of 4 KiB, slots reference-counted and
//! reused. No heap object per block. The arena never grows past its slab limit; callers
//! bound their use with a byte budget before they allocate (see `Volume`).
//!
//! A slab keeps its blocks page-aligned and back to back, and each slot's lock and
//! reference count in dense arrays apart from them: taking a lock or counting touches a
//! few cache lines shared by many slots, rather than a cold line in front of each block.

use std::cell::UnsafeCell;
use std::ops::Deref;
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

/// One block's bytes, on a page of its own. Guarded by its slot's lock in [`Slab::locks`].
#[repr(C, align(4096))]
struct Block(UnsafeCell<[u8; BLOCK_SIZE]>);

// SAFETY: a `Block` is only reached through `Arena::read` and `Arena::write`, which hold
// the slot's lock (shared or exclusive) for as long as the bytes are borrowed.
unsafe impl Sync for Block {}

/// One slab: the blocks, and their locks and reference counts packed apart from them.
struct Slab {
    data: Box<[Block]>,
    locks: Box<[RwLock<()>]>,
    refs: Box<[AtomicU32]>,
}

/// A slot's bytes, borrowed for reading: the slot's lock is held until this is dropped.
pub struct SlotRead<'a> {
    _guard: RwLockReadGuard<'a, ()>,
    bytes: &'a [u8; BLOCK_SIZE],
}

impl Deref for SlotRead<'_> {
    type Target = [u8; BLOCK_SIZE];
    fn deref(&self) -> &[u8; BLOCK_SIZE] {
        self.bytes
    }
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
            data: (0..SLOTS_PER_SLAB).map(|_| Block(UnsafeCell::new([0; BLOCK_SIZE]))).collect(),
            locks: (0..SLOTS_PER_SLAB).map(|_| RwLock::new(())).collect(),
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

    /// A slot's lock and bytes.
    fn slot(&self, id: SlotId) -> (&RwLock<()>, &Block) {
        let slab = self.slab(id);
        (&slab.locks[id.idx()], &slab.data[id.idx()])
    }

    /// Drop one reference; the slot is reused once none are left.
    pub fn release(&self, id: SlotId) {
        if self.refs(id).fetch_sub(1, Ordering::AcqRel) == 1 {
            self.free.lock().push(id);
        }
    }

    /// Read access to a slot's bytes.
    pub fn read(&self, id: SlotId) -> SlotRead<'_> {
        let (lock, block) = self.slot(id);
        let guard = lock.read();
        // SAFETY: the shared lock is held as long as the borrow (it lives in `SlotRead`),
        // and bytes are changed only under the exclusive lock (`write`).
        let bytes = unsafe { &*block.0.get() };
        SlotRead { _guard: guard, bytes }
    }

    /// Fill a slot.
    pub fn write(&self, id: SlotId, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) {
        let (lock, block) = self.slot(id);
        let _guard = lock.write();
        // SAFETY: the exclusive lock is held until `f` returns, so no other borrow exists.
        f(unsafe { &mut *block.0.get() });
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

    #[test]
    fn blocks_are_page_aligned_and_apart() {
        let a = Arena::new(2 * SLAB_BYTES);
        let ids: Vec<_> = (0..SLOTS_PER_SLAB + 2).map(|_| a.alloc(1).unwrap()).collect();
        for (k, &id) in ids.iter().enumerate() {
            a.write(id, |b| b.fill(k as u8));
        }
        for (k, &id) in ids.iter().enumerate() {
            let r = a.read(id);
            assert_eq!(r.as_ptr() as usize % 4096, 0, "slot {k} is not page-aligned");
            assert!(r.iter().all(|&x| x == k as u8), "slot {k} was overwritten by a neighbour");
        }
    }
}
