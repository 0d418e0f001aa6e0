//! Block data in memory: 4 MiB slabs of 1024 slots of 4 KiB, slots reference-counted and
//! reused. No heap object per block. The arena never grows past its slab limit; callers
//! bound their use with a byte budget before they allocate (see `Volume`).
//!
//! A slab keeps its blocks page-aligned and back to back, and the slots' reference counts
//! in a dense array apart from them: counting touches a few cache lines shared by many
//! slots, rather than a cold line in front of each block. Slots are written once, so
//! they need no lock (see [`Arena`]).
//!
//! A slab's blocks are an anonymous mapping of their own, which the kernel hands out
//! zeroed, a page at a time as slots are first written: a new slab costs no zeroing pass
//! in user space (a `Vec` of zeroed blocks wrote all 4 MiB once more), and memory is
//! taken as slots are used. Transparent huge pages were tried and not kept: 4 KiB random
//! writes ran slower with them in 7 of 7 alternating runs (`bench/README.md`).

use std::cell::UnsafeCell;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

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

/// One block's bytes, on a page of its own.
#[repr(C, align(4096))]
struct Block(UnsafeCell<[u8; BLOCK_SIZE]>);

// SAFETY: a slot's bytes are written only through a `Fresh` (one owner, nobody else can
// reach the slot) and read only while a reference to the slot is counted, which keeps it
// from becoming fresh again. See `Arena`.
unsafe impl Sync for Block {}

/// One slab: the blocks, and their reference counts packed apart from them.
struct Slab {
    /// The start of `_map`, as [`SLOTS_PER_SLAB`] blocks.
    data: NonNull<Block>,
    /// Owns the blocks' memory; unmapped with the slab.
    _map: memmap2::MmapMut,
    refs: Box<[AtomicU32]>,
    /// Each slot's CRC32C with [`SUM_KNOWN`] set, if [`Arena::fill_summed`] wrote it; 0
    /// otherwise.
    sums: Box<[AtomicU64]>,
}

/// Set in a slot's `sums` entry when the low 32 bits are its CRC32C.
const SUM_KNOWN: u64 = 1 << 32;

// SAFETY: `data` points into `_map`, which the slab owns and which lives as long as it;
// the blocks themselves are `Sync` (see `Block`).
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl Slab {
    fn new() -> std::io::Result<Self> {
        let mut map = memmap2::MmapMut::map_anon(SLAB_BYTES)?;
        let data = NonNull::new(map.as_mut_ptr().cast::<Block>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(Self {
            data,
            _map: map,
            refs: (0..SLOTS_PER_SLAB).map(|_| AtomicU32::new(0)).collect(),
            sums: (0..SLOTS_PER_SLAB).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn block(&self, idx: usize) -> &Block {
        assert!(idx < SLOTS_PER_SLAB);
        // SAFETY: the mapping is SLAB_BYTES long and page-aligned, so it holds
        // SLOTS_PER_SLAB blocks at their alignment, zeroed by the kernel; it lives as long
        // as `self`.
        unsafe { &*self.data.as_ptr().add(idx) }
    }
}

/// The slab allocator.
///
/// A slot is written once: [`Arena::alloc`] hands it out as a [`Fresh`] with no references,
/// which only its owner can reach, and [`Arena::fill`] writes it and publishes it with its
/// first references. From then on its bytes never change; every read counts a reference
/// for as long as it borrows them ([`SlotRef`], [`LentSlot`]), and the slot goes back to the
/// free list only when the last reference is dropped. So no lock is needed: a slot being
/// read cannot be fresh, and a fresh slot cannot be read.
pub struct Arena {
    slabs: Box<[OnceLock<Slab>]>,
    free: Mutex<Vec<SlotId>>,
    /// Slabs created so far.
    created: Mutex<usize>,
}

/// No slot to give.
#[derive(Debug, thiserror::Error)]
pub enum ArenaFull {
    /// Out of slots: the caller's budget is smaller than it thinks.
    #[error("block arena exhausted ({0} slabs)")]
    Slabs(usize),
    /// The system refused the memory for a new slab.
    #[error("block arena: mapping a new 4 MiB slab failed: {0}")]
    Map(std::io::Error),
}

/// A slot was read that holds no reference: the caller's bookkeeping is wrong.
#[derive(Debug, thiserror::Error)]
#[error("block arena slot {0} read while free")]
pub struct SlotFree(u32);

/// A slot taken from the free list and not yet published: only its owner can reach it.
#[derive(Debug)]
pub struct Fresh(SlotId);

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

    /// Take a free slot. Its content is unspecified until [`Self::fill`] writes it.
    pub fn alloc(&self) -> Result<Fresh, ArenaFull> {
        // The free-list guard must be gone before `grow` takes it again.
        let popped = self.free.lock().pop();
        match popped {
            Some(id) => Ok(Fresh(id)),
            None => self.grow().map(Fresh),
        }
    }

    /// Write a fresh slot and publish it holding `refs` references (at least one).
    pub fn fill(&self, slot: Fresh, refs: u32, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) -> SlotId {
        self.publish(slot, refs, false, f)
    }

    /// [`Self::fill`], and note the slot's CRC32C ([`Self::sum`]) while its bytes are still
    /// in the cache: for blocks on their way to the WAL, whose record checksum is then
    /// made from its blocks' sums rather than by reading them again.
    pub fn fill_summed(&self, slot: Fresh, refs: u32, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) -> SlotId {
        self.publish(slot, refs, true, f)
    }

    fn publish(&self, slot: Fresh, refs: u32, summed: bool, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) -> SlotId {
        let id = slot.0;
        // SAFETY: `Fresh` is the only way to the slot (its count is zero, so no reader can
        // take a reference), and it is consumed here.
        let bytes = unsafe { &mut *self.block(id).0.get() };
        f(bytes);
        let sum = if summed { SUM_KNOWN | u64::from(crate::crc::crc32c(bytes)) } else { 0 };
        self.slab(id).sums[id.idx()].store(sum, Ordering::Relaxed);
        // Release: whoever counts a reference from here on sees the bytes and the sum.
        self.refs(id).store(refs.max(1), Ordering::Release);
        id
    }

    /// The CRC32C of a slot the caller holds a reference to, if it was filled with
    /// [`Self::fill_summed`].
    pub fn sum(&self, id: SlotId) -> Option<u32> {
        let s = self.slab(id).sums[id.idx()].load(Ordering::Relaxed);
        (s & SUM_KNOWN != 0).then_some(s as u32)
    }

    /// The bytes of a fresh slot, for its owner to write before [`Self::fill`] publishes it.
    pub fn bytes_mut<'a>(&'a self, slot: &'a mut Fresh) -> &'a mut [u8; BLOCK_SIZE] {
        // SAFETY: as in `fill`: the `Fresh`, borrowed mutably here, is the only way to the slot.
        unsafe { &mut *self.block(slot.0).0.get() }
    }

    /// Give back a fresh slot unused.
    pub fn discard(&self, slot: Fresh) {
        self.free.lock().push(slot.0);
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
            return Err(ArenaFull::Slabs(n));
        }
        let slab = Slab::new().map_err(ArenaFull::Map)?;
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

    fn block(&self, id: SlotId) -> &Block {
        self.slab(id).block(id.idx())
    }

    /// Drop one reference; the slot is reused once none are left.
    pub fn release(&self, id: SlotId) {
        if self.refs(id).fetch_sub(1, Ordering::AcqRel) == 1 {
            self.free.lock().push(id);
        }
    }

    /// Count one more reference to a published slot; refused if it has none (it is free
    /// or fresh, and must not be read).
    fn retain(&self, id: SlotId) -> Result<(), SlotFree> {
        // Acquire: pairs with `fill`'s release, so the bytes are visible.
        self.refs(id)
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |r| (r > 0).then_some(r + 1))
            .map(|_| ())
            .map_err(|_| SlotFree(id.0))
    }

    /// The bytes of a slot the caller holds a reference to (or knows to be held, as an
    /// index entry's under the index lock). Counts a reference of its own while borrowed.
    pub fn read(&self, id: SlotId) -> Result<SlotRef<'_>, SlotFree> {
        self.retain(id)?;
        Ok(SlotRef { arena: self, id })
    }

    /// Like [`Self::read`], for bytes that must outlive the borrow of the arena (a reply
    /// being sent).
    pub fn lend(self: &Arc<Self>, id: SlotId) -> Result<LentSlot, SlotFree> {
        self.retain(id)?;
        Ok(LentSlot { arena: Arc::clone(self), id })
    }

    /// Bytes in slabs created so far (mapped; a page becomes resident when a slot on it is
    /// first written).
    pub fn resident_bytes(&self) -> usize {
        *self.created.lock() * SLAB_BYTES
    }
}

/// A slot's bytes, read; its reference is dropped with this.
pub struct SlotRef<'a> {
    arena: &'a Arena,
    id: SlotId,
}

impl Deref for SlotRef<'_> {
    type Target = [u8; BLOCK_SIZE];
    fn deref(&self) -> &[u8; BLOCK_SIZE] {
        // SAFETY: the slot is published and this holds a reference, so nothing writes it.
        unsafe { &*self.arena.block(self.id).0.get() }
    }
}

impl Drop for SlotRef<'_> {
    fn drop(&mut self) {
        self.arena.release(self.id);
    }
}

/// A slot's bytes, lent out with a reference to the arena; its reference is dropped with this.
pub struct LentSlot {
    arena: Arc<Arena>,
    id: SlotId,
}

impl Deref for LentSlot {
    type Target = [u8; BLOCK_SIZE];
    fn deref(&self) -> &[u8; BLOCK_SIZE] {
        // SAFETY: as for `SlotRef`.
        unsafe { &*self.arena.block(self.id).0.get() }
    }
}

impl Drop for LentSlot {
    fn drop(&mut self) {
        self.arena.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocate and publish a slot filled with `byte`.
    fn filled(a: &Arena, refs: u32, byte: u8) -> Result<SlotId, ArenaFull> {
        Ok(a.fill(a.alloc()?, refs, |b| b.fill(byte)))
    }

    #[test]
    fn slots_are_reused_and_bounded() {
        let a = Arena::new(SLAB_BYTES);
        let ids: Vec<_> = (0..SLOTS_PER_SLAB).map(|k| filled(&a, 2, k as u8).unwrap()).collect();
        assert!(a.alloc().is_err(), "one slab holds 1024 slots");
        assert_eq!(a.read(ids[3]).unwrap()[100], 3);
        a.release(ids[3]);
        assert!(a.alloc().is_err(), "still one reference left");
        a.release(ids[3]);
        assert!(a.read(ids[3]).is_err(), "a free slot cannot be read");
        let again = a.alloc().unwrap();
        assert!(a.read(ids[3]).is_err(), "nor a fresh one");
        assert_eq!(a.fill(again, 1, |b| b.fill(9)), ids[3], "freed slot is reused");
        assert_eq!(a.read(ids[3]).unwrap()[0], 9);
        assert_eq!(a.resident_bytes(), SLAB_BYTES);
    }

    #[test]
    fn a_summed_slot_knows_its_checksum_until_it_is_filled_again() {
        let a = Arena::new(SLAB_BYTES);
        let id = a.fill_summed(a.alloc().unwrap(), 1, |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8));
        let bytes = a.read(id).unwrap().to_vec();
        assert_eq!(a.sum(id), Some(crate::crc::crc32c(&bytes)));
        // Freed and filled without a sum: the old one must not stay behind.
        a.release(id);
        let again = a.fill(a.alloc().unwrap(), 1, |b| b.fill(3));
        assert_eq!(again, id, "the freed slot is reused");
        assert_eq!(a.sum(again), None);
        let zero = a.fill_summed(a.alloc().unwrap(), 1, |b| b.fill(0));
        assert_eq!(a.sum(zero), Some(crate::crc::crc32c(&[0u8; BLOCK_SIZE])));
    }

    #[test]
    fn a_slot_read_or_lent_stays_until_the_reader_is_done() {
        let a = Arc::new(Arena::new(SLAB_BYTES));
        let id = filled(&a, 1, 7).unwrap();
        let lent = a.lend(id).unwrap();
        let read = a.read(id).unwrap();
        a.release(id);
        drop(read);
        // The owner's reference is gone, but the lent bytes still hold the slot.
        let others: Vec<_> = (1..SLOTS_PER_SLAB).map(|_| filled(&a, 1, 0).unwrap()).collect();
        assert!(!others.contains(&id));
        assert!(a.alloc().is_err(), "the lent slot is not free");
        assert!(lent.iter().all(|&b| b == 7));
        drop(lent);
        let fresh = a.alloc().unwrap();
        a.discard(fresh);
        assert_eq!(filled(&a, 1, 1).unwrap(), id, "free once the last reader is done");
    }

    #[test]
    fn blocks_are_page_aligned_and_apart() {
        let a = Arena::new(2 * SLAB_BYTES);
        let ids: Vec<_> = (0..SLOTS_PER_SLAB + 2).map(|k| filled(&a, 1, k as u8).unwrap()).collect();
        for (k, &id) in ids.iter().enumerate() {
            let r = a.read(id).unwrap();
            assert_eq!(r.as_ptr() as usize % 4096, 0, "slot {k} is not page-aligned");
            assert!(r.iter().all(|&x| x == k as u8), "slot {k} was overwritten by a neighbour");
        }
    }
}
