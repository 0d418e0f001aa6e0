//! Write-back holding: queued writes wait in memory until something needs them in the log
//! (a FLUSH, a FUA write, the size limit, shutdown, and in batched mode the sync interval).
//! Relaxed and async modes hold up to half the dirty budget; batched mode holds up to
//! `wal_append` bytes for at most one sync interval, so its appends are large. A block
//! written again while its older version waits here is logged once, newest version only:
//! the older version's memory and dirty budget go back at once.
//!
//! Why dropping the older version keeps every promise: a held item's reply promised
//! nothing durable (batched, relaxed and async reply at once, and a FUA write or a FLUSH
//! makes the writer log everything held). Everything held is logged in one batch, in
//! queue order, and that batch's sync is published only after all of it is written, so a
//! FLUSH that came between the two versions is answered only once the newer one is
//! durable, which a read would return anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::record::BLOCK_SIZE;
use super::writer::{Item, Op, Shared};
use crate::store::arena::SlotId;
use crate::store::hash::BuildBlockHasher;

/// Tombstones held at most: they take no dirty budget, so they need a bound of their own.
const MAX_TOMBSTONES: usize = 1 << 16;

/// One queued item, with the blocks a newer held write has made unneeded.
struct Held {
    item: Item,
    /// A bit per block of a data item of more than one block, set once a newer held
    /// version replaced it; empty until the first. (An item of one block goes whole.)
    dead: Vec<u64>,
    live: usize,
}

impl Held {
    fn is_dead(&self, k: usize) -> bool {
        bit(&self.dead, k)
    }
}

fn bit(bits: &[u64], k: usize) -> bool {
    bits.get(k / 64).is_some_and(|w| w & (1 << (k % 64)) != 0)
}

/// The held items, in queue order.
pub struct Hold {
    /// `None` where every block of an item was replaced (until the next compaction).
    items: Vec<Option<Held>>,
    /// Items still `Some`, and how many of them are tombstones.
    present: usize,
    tombstones: usize,
    /// Block -> the held item with its newest version, and that version's slot (so that
    /// replacing it does not have to look up the item's slot list: random 4 KiB rewrites
    /// spent a cache miss there).
    newest: HashMap<u64, (usize, SlotId), BuildBlockHasher>,
    live_bytes: u64,
    /// Held block data past which everything is logged.
    limit: u64,
    /// Longest an item may be held (batched mode: the sync interval), and when the oldest
    /// item now held came.
    max_age: Option<Duration>,
    since: Option<Instant>,
}

impl Hold {
    pub fn new(limit: u64, max_age: Option<Duration>) -> Self {
        Self {
            items: Vec::new(),
            present: 0,
            tombstones: 0,
            newest: HashMap::default(),
            live_bytes: 0,
            limit,
            max_age,
            since: None,
        }
    }

    /// When the oldest item now held came (`None`: nothing held).
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// When the held items must be logged at the latest (`None`: no age bound, or nothing
    /// held).
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.since? + self.max_age?)
    }

    /// Hold `item`; a data item releases the older held versions of its blocks.
    pub fn add(&mut self, item: Item, shared: &Shared) {
        if self.items.len() >= 2 * self.present + 1024 {
            self.compact();
        }
        self.since.get_or_insert_with(Instant::now);
        let at = self.items.len();
        let mut live = 0;
        if let Op::Data { block, slots, .. } = &item.op {
            live = slots.len();
            self.live_bytes += (live * BLOCK_SIZE) as u64;
            let mut freed = 0;
            for (k, &slot) in slots.iter().enumerate() {
                let b = block + k as u64;
                if let Some((old, old_slot)) = self.newest.insert(b, (at, slot)) {
                    freed += self.kill(old, b, old_slot, shared);
                }
            }
            if freed > 0 {
                shared.give_dirty(freed);
            }
        }
        if matches!(item.op, Op::Zero { .. }) {
            self.tombstones += 1;
        }
        self.present += 1;
        self.items.push(Some(Held { dead: Vec::new(), live, item }));
    }

    /// Drop the places of items that are gone, and point `newest` at the new places.
    fn compact(&mut self) {
        self.items.retain(Option::is_some);
        self.newest.clear();
        for (at, h) in self.items.iter().enumerate() {
            let Some(held @ Held { item: Item { op: Op::Data { block, slots, .. }, .. }, .. }) = h else { continue };
            for (k, &slot) in slots.iter().enumerate() {
                if !held.is_dead(k) {
                    self.newest.insert(block + k as u64, (at, slot));
                }
            }
        }
    }

    /// The held version of `block` in item `at`, in `slot`, is replaced: give back its slot
    /// reference, and the whole item once none of its blocks is left. Returns the dirty
    /// budget freed, for the caller to give back.
    fn kill(&mut self, at: usize, block: u64, slot: SlotId, shared: &Shared) -> usize {
        let Some(h) = self.items[at].as_mut() else { return 0 };
        let Op::Data { block: first, slots, .. } = &h.item.op else { return 0 };
        let (k, n) = ((block - first) as usize, slots.len());
        if n > 1 {
            if h.dead.is_empty() {
                h.dead = vec![0; n.div_ceil(64)];
            }
            if h.is_dead(k) {
                return 0;
            }
            h.dead[k / 64] |= 1 << (k % 64);
        }
        shared.arena.release(slot);
        self.live_bytes -= BLOCK_SIZE as u64;
        h.live -= 1;
        if h.live == 0 {
            self.items[at] = None;
            self.present -= 1;
        }
        BLOCK_SIZE
    }

    /// Must the held items be logged now? `trigger` is set when the new items asked for it
    /// (a barrier or a FUA write) or the writer is closing.
    pub fn must_log(&self, trigger: bool) -> bool {
        trigger
            || self.live_bytes >= self.limit
            || self.tombstones >= MAX_TOMBSTONES
            || self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Everything held, in queue order; a data item with replaced blocks becomes one item
    /// per run of blocks still needed (same sequence number and log position).
    pub fn take(&mut self) -> Vec<Item> {
        self.since = None;
        self.newest.clear();
        self.live_bytes = 0;
        self.present = 0;
        self.tombstones = 0;
        let mut out = Vec::with_capacity(self.items.len());
        for h in std::mem::take(&mut self.items).into_iter().flatten() {
            if h.dead.is_empty() {
                out.push(h.item);
                continue;
            }
            let Held { item: Item { op, force_sync, lsn }, dead, .. } = h;
            let Op::Data { seq, block, slots } = op else { continue };
            let mut run: Vec<SlotId> = Vec::new();
            let mut run_start = block;
            for (k, slot) in slots.into_iter().enumerate() {
                if bit(&dead, k) {
                    if !run.is_empty() {
                        let slots = std::mem::take(&mut run);
                        out.push(Item { op: Op::Data { seq, block: run_start, slots }, force_sync, lsn });
                    }
                    run_start = block + k as u64 + 1;
                } else {
                    run.push(slot);
                }
            }
            if !run.is_empty() {
                out.push(Item { op: Op::Data { seq, block: run_start, slots: run }, force_sync, lsn });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::arena::{Arena, SLAB_BYTES};
    use crate::store::index::Index;

    struct Rig {
        shared: Arc<Shared>,
        arena: Arc<Arena>,
        dirty: Arc<Semaphore>,
        lsn: u64,
    }

    impl Rig {
        fn new() -> Self {
            let arena = Arc::new(Arena::new(SLAB_BYTES));
            let dirty = Arc::new(Semaphore::new(SLAB_BYTES));
            let shared = Shared::new(Arc::new(Index::new(1)), Arc::clone(&arena), Arc::clone(&dirty), 0);
            Rig { shared, arena, dirty, lsn: 0 }
        }

        /// A data item of `n` blocks from `block`, holding one slot reference each and its
        /// dirty budget, as the volume queues it.
        fn data(&mut self, seq: u64, block: u64, n: usize) -> Item {
            self.dirty.try_acquire_many((n * BLOCK_SIZE) as u32).unwrap().forget();
            let slots = (0..n).map(|_| self.arena.fill(self.arena.alloc().unwrap(), 1, |_| {})).collect();
            self.lsn += 1;
            Item { op: Op::Data { seq, block, slots }, force_sync: false, lsn: self.lsn }
        }

        fn budget_used(&self) -> usize {
            SLAB_BYTES - self.dirty.available_permits()
        }
    }

    fn runs(items: &[Item]) -> Vec<(u64, u64, usize, u64)> {
        items
            .iter()
            .map(|i| match &i.op {
                Op::Data { seq, block, slots } => (*seq, *block, slots.len(), i.lsn),
                Op::Zero { seq, block, count, .. } => (*seq, *block, *count as usize, i.lsn),
                Op::Sync => (0, 0, 0, i.lsn),
            })
            .collect()
    }

    #[test]
    fn a_rewritten_block_is_logged_once_and_its_memory_goes_back_at_once() {
        let mut r = Rig::new();
        let mut hold = Hold::new(1 << 30, None);
        let a = r.data(1, 10, 4); // blocks 10..14
        hold.add(a, &r.shared);
        let b = r.data(2, 11, 2); // replaces 11 and 12
        hold.add(b, &r.shared);
        let c = r.data(3, 20, 1);
        hold.add(c, &r.shared);
        let d = r.data(4, 20, 1); // replaces all of c
        hold.add(d, &r.shared);
        assert_eq!(r.budget_used(), 8 * BLOCK_SIZE - 3 * BLOCK_SIZE, "replaced blocks give their budget back");
        assert!(!hold.must_log(false), "far below the limit, no barrier");
        assert!(hold.must_log(true));
        let out = hold.take();
        // a's blocks 10 and 13 stay, as two runs with a's sequence number and position.
        assert_eq!(runs(&out), vec![(1, 10, 1, 1), (1, 13, 1, 1), (2, 11, 2, 2), (4, 20, 1, 4)]);
        assert!(hold.items.is_empty());
        // The three replaced slots are free again: a one-slab arena has exactly that many
        // to give beyond what the live items hold.
        let live: usize = out.iter().map(|i| if let Op::Data { slots, .. } = &i.op { slots.len() } else { 0 }).sum();
        assert_eq!(live, 5);
        let mut freed = 0;
        while r.arena.alloc().is_ok() {
            freed += 1;
        }
        assert_eq!(freed, crate::store::arena::SLOTS_PER_SLAB - 5, "every slot but the live ones is free");
    }

    #[test]
    fn barriers_and_tombstones_keep_their_place() {
        let mut r = Rig::new();
        let mut hold = Hold::new(1 << 30, None);
        let a = r.data(1, 5, 1);
        hold.add(a, &r.shared);
        r.lsn += 1;
        hold.add(
            Item { op: Op::Zero { seq: 2, block: 5, count: 1, keep_allocated: false }, force_sync: false, lsn: r.lsn },
            &r.shared,
        );
        r.lsn += 1;
        hold.add(Item { op: Op::Sync, force_sync: true, lsn: r.lsn }, &r.shared);
        let b = r.data(3, 6, 1);
        hold.add(b, &r.shared);
        assert_eq!(runs(&hold.take()), vec![(1, 5, 1, 1), (2, 5, 1, 2), (0, 0, 0, 3), (3, 6, 1, 4)]);
    }

    #[test]
    fn the_limit_and_the_tombstone_bound_ask_for_logging() {
        let mut r = Rig::new();
        let mut hold = Hold::new(2 * BLOCK_SIZE as u64, None);
        let a = r.data(1, 0, 1);
        hold.add(a, &r.shared);
        assert!(!hold.must_log(false));
        let b = r.data(2, 0, 1); // a rewrite does not grow the held bytes
        hold.add(b, &r.shared);
        assert!(!hold.must_log(false));
        let c = r.data(3, 1, 1);
        hold.add(c, &r.shared);
        assert!(hold.must_log(false), "two blocks held: at the limit");
        hold.take();
        for i in 0..MAX_TOMBSTONES as u64 {
            hold.add(
                Item { op: Op::Zero { seq: i, block: i, count: 1, keep_allocated: false }, force_sync: false, lsn: i },
                &r.shared,
            );
        }
        assert!(hold.must_log(false), "tombstones are bounded by count");
    }

    #[test]
    fn an_age_bound_asks_for_logging_once_the_oldest_item_is_that_old() {
        let mut r = Rig::new();
        let mut hold = Hold::new(1 << 30, Some(std::time::Duration::from_millis(50)));
        assert_eq!(hold.deadline(), None, "nothing held, no deadline");
        let a = r.data(1, 0, 1);
        let before = Instant::now();
        hold.add(a, &r.shared);
        let deadline = hold.deadline().expect("a deadline once something is held");
        assert!(deadline >= before + std::time::Duration::from_millis(50));
        let b = r.data(2, 1, 1);
        hold.add(b, &r.shared);
        assert_eq!(hold.deadline(), Some(deadline), "the oldest item sets the deadline");
        assert!(!hold.must_log(false), "not that old yet");
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        assert!(hold.must_log(false), "the oldest item reached the age bound");
        assert_eq!(hold.take().len(), 2);
        assert_eq!(hold.deadline(), None, "taken: nothing held");
        assert_eq!(Hold::new(1 << 30, None).deadline(), None);
    }

    #[test]
    fn a_long_item_loses_blocks_in_both_words_of_its_bits_across_a_compaction() {
        let mut r = Rig::new();
        let mut hold = Hold::new(1 << 30, None);
        let a = r.data(1, 0, 100); // blocks 0..100: two words of bits
        hold.add(a, &r.shared);
        // 1099 rewrites of block 500 force a compaction, which moves `a` to a new place.
        for seq in 2..=1100 {
            let it = r.data(seq, 500, 1);
            hold.add(it, &r.shared);
        }
        assert!(hold.items.len() < 1100, "compacted: {}", hold.items.len());
        for (seq, block, n) in [(2000, 10, 10), (2001, 70, 5), (2002, 99, 1)] {
            let it = r.data(seq, block, n);
            hold.add(it, &r.shared);
        }
        assert_eq!(r.budget_used(), 101 * BLOCK_SIZE, "16 of a's blocks and 1098 of block 500's versions went");
        let out = hold.take();
        assert_eq!(
            runs(&out),
            vec![
                (1, 0, 10, 1),
                (1, 20, 50, 1),
                (1, 75, 24, 1),
                (1100, 500, 1, 1100),
                (2000, 10, 10, 1101),
                (2001, 70, 5, 1102),
                (2002, 99, 1, 1103)
            ]
        );
        // The slots given back are exactly the replaced versions' (each freed once).
        let mut free = 0;
        while r.arena.alloc().is_ok() {
            free += 1;
        }
        assert_eq!(free, crate::store::arena::SLOTS_PER_SLAB - 101);
    }

    #[test]
    fn compaction_keeps_the_newest_version_map_right() {
        let mut r = Rig::new();
        let mut hold = Hold::new(1 << 30, None);
        // 3000 rewrites of block 0 leave 2999 gone items: compaction runs on the way.
        for seq in 1..=3000 {
            let it = r.data(seq, 0, 1);
            hold.add(it, &r.shared);
        }
        let keep = r.data(3001, 1, 1);
        hold.add(keep, &r.shared);
        let last = r.data(3002, 0, 1);
        hold.add(last, &r.shared);
        assert!(hold.items.len() < 2000, "gone items were compacted away: {}", hold.items.len());
        assert_eq!(runs(&hold.take()), vec![(3001, 1, 1, 3001), (3002, 0, 1, 3002)]);
        assert_eq!(r.budget_used(), 2 * BLOCK_SIZE);
    }
}
