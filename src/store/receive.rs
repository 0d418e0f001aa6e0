//! Writes received straight into the arena: a WRITE of 16 or more whole blocks lends fresh
//! slots to the connection, which reads the payload from the socket into them, and the
//! volume then publishes them as they are (`Volume::write_received`). This saves the copy
//! from a server buffer into the arena, the largest cost of a large write in memory.
//!
//! The slots and their dirty budget are taken before the payload is read, without waiting:
//! if either is short, the write takes the copying path, which waits. Dropped unwritten (the
//! connection broke mid-payload), a [`Receiving`] gives both back.

use std::any::Any;
use std::sync::Arc;

use nbd::WriteBuffer;

use super::arena::{Arena, Fresh};
use crate::wal::record::BLOCK_SIZE;
use crate::wal::writer::Shared;

/// Writes shorter than this are copied, as small reads are ([`super::lend::LEND_MIN_BLOCKS`]).
pub const RECEIVE_MIN_BLOCKS: u64 = 16;

/// Fresh slots for one write's payload, with the dirty budget they were taken under.
pub struct Receiving {
    arena: Arc<Arena>,
    shared: Arc<Shared>,
    slots: Vec<Fresh>,
    /// Dirty budget held, in bytes; 0 once the slots are taken.
    budget: usize,
}

impl Receiving {
    /// Take `blocks` fresh slots and their dirty budget, if both are there now.
    pub fn take(arena: &Arc<Arena>, shared: &Arc<Shared>, blocks: usize) -> Option<Self> {
        let bytes = u32::try_from(blocks * BLOCK_SIZE).ok()?;
        if !shared.try_take_dirty(bytes) {
            return None;
        }
        // From here on, dropping `r` gives back the budget and whatever slots it holds.
        let mut r = Self {
            arena: Arc::clone(arena),
            shared: Arc::clone(shared),
            slots: Vec::with_capacity(blocks),
            budget: bytes as usize,
        };
        for _ in 0..blocks {
            r.slots.push(arena.alloc().ok()?);
        }
        Some(r)
    }

    /// The slots, holding the payload, for the volume to publish; their dirty budget goes
    /// with them (the WAL writer gives it back once they are written, as for any write).
    pub fn into_slots(mut self) -> Vec<Fresh> {
        self.budget = 0;
        std::mem::take(&mut self.slots)
    }
}

impl WriteBuffer for Receiving {
    fn slices_mut(&mut self) -> Vec<&mut [u8]> {
        self.slots.iter_mut().map(|s| &mut self.arena.bytes_mut(s)[..]).collect()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        for s in self.slots.drain(..) {
            self.arena.discard(s);
        }
        if self.budget > 0 {
            self.shared.give_dirty(self.budget);
        }
    }
}
