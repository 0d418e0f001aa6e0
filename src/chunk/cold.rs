//! A compact map from block number to where the block is in the chunks (or "zeroed but
//! allocated"), for every block of a volume that has been spilled: the memory-bound part of
//! the index. Blocks are grouped in regions of 4096 (16 MiB); a region holds sorted
//! extents of 12 bytes each, a run of consecutive blocks at consecutive places of one
//! chunk. Sequential writes make long extents (a few bytes per 4 MiB); random writes make
//! one extent per block, 12 bytes, plus at most an eighth of slack.
//!
//! A place packs into 64 bits as `chunk << 24 | (frame * 16 + idx)`: a chunk's blocks are
//! numbered in order, 16 to a frame, so the block after place `p` in the same chunk is
//! `p + 1`. That holds for every chunk the format builds (only the last frame is short).

use std::collections::BTreeMap;

use crate::chunk::format::FRAME_BLOCKS;
use crate::store::index::Loc;

const REGION_SHIFT: u32 = 12;
const REGION_BLOCKS: u64 = 1 << REGION_SHIFT;
const POS_BITS: u32 = 24;
/// The packed value of a zeroed-but-allocated block.
const ZEROED: u64 = u64::MAX;

/// What the map says of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdRef {
    Chunk(Loc),
    /// Reads as zeroes but stays allocated (WRITE_ZEROES with NO_HOLE).
    Zeroed,
}

/// Pack a place; `None` if it does not fit (a chunk id past 2^40 or a frame past 2^20,
/// which the chunk size limit rules out).
fn pack(r: ColdRef) -> Option<u64> {
    match r {
        ColdRef::Zeroed => Some(ZEROED),
        ColdRef::Chunk(l) => {
            let pos = u64::from(l.frame) * FRAME_BLOCKS as u64 + u64::from(l.idx);
            (l.chunk < (1u64 << (64 - POS_BITS)) - 1 && pos < 1 << POS_BITS && (l.idx as usize) < FRAME_BLOCKS)
                .then_some(l.chunk << POS_BITS | pos)
        }
    }
}

fn unpack(v: u64) -> ColdRef {
    if v == ZEROED {
        return ColdRef::Zeroed;
    }
    let pos = v & ((1 << POS_BITS) - 1);
    ColdRef::Chunk(Loc {
        chunk: v >> POS_BITS,
        frame: (pos / FRAME_BLOCKS as u64) as u32,
        idx: (pos % FRAME_BLOCKS as u64) as u32,
    })
}

/// The place `k` blocks after `l` in the same chunk (blocks are numbered in order, 16 to
/// a frame).
pub fn place_after(l: Loc, k: u32) -> Loc {
    let pos = u64::from(l.frame) * FRAME_BLOCKS as u64 + u64::from(l.idx) + u64::from(k);
    Loc { chunk: l.chunk, frame: (pos / FRAME_BLOCKS as u64) as u32, idx: (pos % FRAME_BLOCKS as u64) as u32 }
}

/// `len` blocks from offset `off` of a region, at consecutive places from `lo | hi << 32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Extent {
    off: u16,
    len: u16,
    lo: u32,
    hi: u32,
}

impl Extent {
    fn new(off: u16, len: u16, v: u64) -> Self {
        Self { off, len, lo: v as u32, hi: (v >> 32) as u32 }
    }

    fn value(&self) -> u64 {
        u64::from(self.hi) << 32 | u64::from(self.lo)
    }

    fn end(&self) -> u32 {
        u32::from(self.off) + u32::from(self.len)
    }

    /// The packed place of the block `k` blocks into the extent.
    fn at(&self, k: u16) -> u64 {
        let v = self.value();
        if v == ZEROED {
            v
        } else {
            v + u64::from(k)
        }
    }

    /// Whether `next` carries on where this one ends: adjacent blocks, and the next place
    /// of the same chunk (or both zeroed).
    fn continues_into(&self, next: &Extent) -> bool {
        if self.end() != u32::from(next.off) {
            return false;
        }
        let (a, b) = (self.value(), next.value());
        match (a == ZEROED, b == ZEROED) {
            (true, true) => true,
            (false, false) => a + u64::from(self.len) == b && a >> POS_BITS == b >> POS_BITS,
            _ => false,
        }
    }
}

/// Grow by an eighth rather than double: the map's memory is the point.
fn reserve(v: &mut Vec<Extent>, more: usize) {
    if v.len() + more > v.capacity() {
        v.reserve_exact(more.max(v.len() / 8).max(4));
    }
}

#[derive(Default)]
pub struct ColdMap {
    regions: BTreeMap<u64, Vec<Extent>>,
    blocks: u64,
}

impl ColdMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks held.
    pub fn len(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Extents held (for measurements).
    pub fn extents(&self) -> usize {
        self.regions.values().map(Vec::len).sum()
    }

    /// Heap bytes the extents take, capacity included (for measurements; the tree's own
    /// nodes add about 30 bytes per region).
    pub fn heap_bytes(&self) -> usize {
        self.regions.values().map(|v| v.capacity() * std::mem::size_of::<Extent>()).sum()
    }

    pub fn get(&self, block: u64) -> Option<ColdRef> {
        let v = self.regions.get(&(block >> REGION_SHIFT))?;
        let off = (block & (REGION_BLOCKS - 1)) as u32;
        let i = v.partition_point(|e| u32::from(e.off) <= off).checked_sub(1)?;
        let e = &v[i];
        (off < e.end()).then(|| unpack(e.at((off - u32::from(e.off)) as u16)))
    }

    /// Put `r` for `block`; returns what it replaces. A place that cannot be packed is
    /// refused (`Err` with the place); nothing changes then.
    pub fn insert(&mut self, block: u64, r: ColdRef) -> Result<Option<ColdRef>, Loc> {
        let value = pack(r).ok_or(match r {
            ColdRef::Chunk(l) => l,
            ColdRef::Zeroed => Loc { chunk: 0, frame: 0, idx: 0 },
        })?;
        let off = (block & (REGION_BLOCKS - 1)) as u16;
        let v = self.regions.entry(block >> REGION_SHIFT).or_default();
        let old = cut(v, off, off + 1);
        if old.is_none() {
            self.blocks += 1;
        }
        // Where the new single-block extent goes, then merge it with its neighbours.
        let i = v.partition_point(|e| e.off < off);
        reserve(v, 1);
        v.insert(i, Extent::new(off, 1, value));
        merge_around(v, i);
        Ok(old.map(unpack))
    }

    /// Drop `block`; returns what it held.
    pub fn remove(&mut self, block: u64) -> Option<ColdRef> {
        let key = block >> REGION_SHIFT;
        let v = self.regions.get_mut(&key)?;
        let off = (block & (REGION_BLOCKS - 1)) as u16;
        let old = cut(v, off, off + 1)?;
        self.blocks -= 1;
        if v.is_empty() {
            self.regions.remove(&key);
        }
        Some(unpack(old))
    }

    /// Drop every block in `first..end`, calling `dropped(place, count)` for each run of
    /// blocks removed that pointed into a chunk (`place` is the run's first place).
    pub fn remove_range(&mut self, first: u64, end: u64, mut dropped: impl FnMut(Loc, u32)) {
        if first >= end {
            return;
        }
        let keys: Vec<u64> =
            self.regions.range(first >> REGION_SHIFT..=(end - 1) >> REGION_SHIFT).map(|(k, _)| *k).collect();
        for key in keys {
            let base = key << REGION_SHIFT;
            let lo = first.max(base) - base;
            let hi = end.min(base + REGION_BLOCKS) - base;
            let Some(v) = self.regions.get_mut(&key) else { continue };
            let mut removed = 0u64;
            cut_range(v, lo as u32, hi as u32, |value, n| {
                removed += u64::from(n);
                if let ColdRef::Chunk(l) = unpack(value) {
                    dropped(l, n);
                }
            });
            self.blocks -= removed;
            if v.is_empty() {
                self.regions.remove(&key);
            }
        }
    }

    /// Mark every block in `first..end` zeroed-but-allocated, calling `dropped` for what
    /// they held (as [`Self::remove_range`] does).
    pub fn fill_zeroed(&mut self, first: u64, end: u64, dropped: impl FnMut(Loc, u32)) {
        self.remove_range(first, end, dropped);
        self.put_run(first, end, ZEROED);
    }

    /// Put `count` blocks from `first` at consecutive places from `start` (one chunk),
    /// calling `dropped` for what they held. A run that cannot be packed is refused whole.
    pub fn insert_run(&mut self, first: u64, count: u32, start: Loc, dropped: impl FnMut(Loc, u32)) -> Result<(), Loc> {
        let last = place_after(start, count.saturating_sub(1));
        let value = pack(ColdRef::Chunk(start)).ok_or(start)?;
        pack(ColdRef::Chunk(last)).ok_or(last)?;
        let end = first + u64::from(count);
        self.remove_range(first, end, dropped);
        self.put_run(first, end, value);
        Ok(())
    }

    /// Put extents for `first..end` (which holds nothing now) from packed place `value`.
    fn put_run(&mut self, first: u64, end: u64, value: u64) {
        let mut b = first;
        while b < end {
            let key = b >> REGION_SHIFT;
            let base = key << REGION_SHIFT;
            let hi = end.min(base + REGION_BLOCKS);
            let off = (b - base) as u16;
            let v = self.regions.entry(key).or_default();
            let i = v.partition_point(|e| e.off < off);
            reserve(v, 1);
            let here = if value == ZEROED { ZEROED } else { value + (b - first) };
            v.insert(i, Extent::new(off, (hi - b) as u16, here));
            merge_around(v, i);
            self.blocks += hi - b;
            b = hi;
        }
    }

    /// Every extent in block order: first block, blocks, and the first block's place
    /// (`Zeroed` for the whole extent).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u32, ColdRef)> + '_ {
        self.regions.iter().flat_map(|(k, v)| {
            v.iter().map(move |e| ((k << REGION_SHIFT) + u64::from(e.off), u32::from(e.len), unpack(e.value())))
        })
    }
}

/// Remove `lo..hi` (region offsets) from the extents, splitting those that straddle an
/// edge; for a single block, returns the packed place it held.
fn cut(v: &mut Vec<Extent>, lo: u16, hi: u16) -> Option<u64> {
    let mut held = None;
    cut_range(v, u32::from(lo), u32::from(hi), |value, _| held = Some(value));
    held
}

/// Remove offsets `lo..hi`, reporting each removed piece (its first packed place, blocks).
fn cut_range(v: &mut Vec<Extent>, lo: u32, hi: u32, mut removed: impl FnMut(u64, u32)) {
    // Extents that overlap lo..hi: from the last one starting at or before lo.
    let start = v.partition_point(|e| u32::from(e.off) <= lo).saturating_sub(1);
    let mut i = start;
    let mut keep: Vec<Extent> = Vec::new();
    let mut end = start;
    while i < v.len() && u32::from(v[i].off) < hi {
        let e = v[i];
        if e.end() > lo {
            let a = lo.max(u32::from(e.off));
            let b = hi.min(e.end());
            removed(e.at((a - u32::from(e.off)) as u16), b - a);
            if u32::from(e.off) < a {
                keep.push(Extent::new(e.off, (a - u32::from(e.off)) as u16, e.value()));
            }
            if b < e.end() {
                keep.push(Extent::new(b as u16, (e.end() - b) as u16, e.at((b - u32::from(e.off)) as u16)));
            }
        } else {
            keep.push(e);
        }
        i += 1;
        end = i;
    }
    if end > start {
        let grow = keep.len().saturating_sub(end - start);
        reserve(v, grow);
        v.splice(start..end, keep);
    }
}

/// Merge the extent at `i` with its neighbours where they carry on into each other.
fn merge_around(v: &mut Vec<Extent>, mut i: usize) {
    if i > 0 && v[i - 1].continues_into(&v[i]) {
        v[i - 1].len += v[i].len;
        v.remove(i);
        i -= 1;
    }
    if i + 1 < v.len() && v[i].continues_into(&v[i + 1]) {
        v[i].len += v[i + 1].len;
        v.remove(i + 1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn at(chunk: u64, pos: u32) -> ColdRef {
        ColdRef::Chunk(Loc { chunk, frame: pos / 16, idx: pos % 16 })
    }

    #[test]
    fn sequential_places_make_one_extent_and_random_ones_twelve_bytes() {
        let mut m = ColdMap::new();
        for b in 0..3000u64 {
            m.insert(10_000 + b, at(7, b as u32)).unwrap();
        }
        // 10000..13000 crosses one region edge (12288): two extents.
        assert_eq!((m.len(), m.extents()), (3000, 2));
        assert_eq!(m.get(10_000 + 1234), Some(at(7, 1234)));
        assert_eq!(m.get(9_999), None);
        assert_eq!(m.get(13_000), None);
        // Overwrite one in the middle: the extent splits in three.
        assert_eq!(m.insert(11_000, at(9, 0)).unwrap(), Some(at(7, 1000)));
        assert_eq!(m.extents(), 4);
        // Put the old place back: they merge again.
        m.insert(11_000, at(7, 1000)).unwrap();
        assert_eq!(m.extents(), 2);
        // Places in another chunk never continue one another, even when the numbers would.
        let mut n = ColdMap::new();
        n.insert(0, ColdRef::Chunk(Loc { chunk: 1, frame: (1 << 20) - 1, idx: 15 })).unwrap();
        n.insert(1, ColdRef::Chunk(Loc { chunk: 2, frame: 0, idx: 0 })).unwrap();
        assert_eq!(n.extents(), 2);
        assert!(n.insert(2, ColdRef::Chunk(Loc { chunk: 3, frame: 1 << 20, idx: 0 })).is_err());
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn zeroed_ranges_and_removal_report_what_they_drop() {
        let mut m = ColdMap::new();
        for b in 0..100u64 {
            m.insert(b, at(1 + b / 50, (b % 50) as u32)).unwrap();
        }
        let mut dropped = Vec::new();
        m.fill_zeroed(40, 10_000, |l, n| dropped.push((l, n)));
        assert_eq!(dropped, vec![(Loc { chunk: 1, frame: 2, idx: 8 }, 10), (Loc { chunk: 2, frame: 0, idx: 0 }, 50)]);
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(9_999), Some(ColdRef::Zeroed));
        assert_eq!(m.get(39), Some(at(1, 39)));
        dropped.clear();
        m.remove_range(0, 1 << 40, |l, n| dropped.push((l, n)));
        assert_eq!(dropped, vec![(Loc { chunk: 1, frame: 0, idx: 0 }, 40)]);
        assert!(m.is_empty() && m.extents() == 0);
        assert_eq!(m.remove(5), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any sequence of inserts, removals and range operations agrees with a plain map.
        #[test]
        fn agrees_with_a_hash_map(ops in proptest::collection::vec((0u8..4, 0u64..9000, 1u64..300, 1u64..4, 0u32..40), 1..400)) {
            let mut m = ColdMap::new();
            let mut model: HashMap<u64, ColdRef> = HashMap::new();
            for (op, block, count, chunk, pos) in ops {
                match op {
                    0 if chunk % 2 == 0 => {
                        // A run of consecutive places in one go, as a manifest holds them.
                        let n = count.min(40);
                        let start = Loc { chunk, frame: pos / 16, idx: pos % 16 };
                        m.insert_run(block, n as u32, start, |_, _| {}).unwrap();
                        for k in 0..n {
                            model.insert(block + k, at(chunk, pos + k as u32));
                        }
                    }
                    0 => {
                        // A run of consecutive places, block by block, as a spill makes them.
                        for k in 0..count.min(40) {
                            let r = at(chunk, pos + k as u32);
                            prop_assert_eq!(m.insert(block + k, r).unwrap(), model.insert(block + k, r));
                        }
                    }
                    1 => prop_assert_eq!(m.remove(block), model.remove(&block)),
                    2 => {
                        let key = |r: &ColdRef| match r {
                            ColdRef::Chunk(l) => (l.chunk, l.frame, l.idx),
                            ColdRef::Zeroed => (0, 0, 0),
                        };
                        let mut got = Vec::new();
                        m.remove_range(block, block + count, |l, n| {
                            for k in 0..n {
                                let pos = l.frame * 16 + l.idx + k;
                                got.push((l.chunk, pos / 16, pos % 16));
                            }
                        });
                        let mut want = Vec::new();
                        model.retain(|b, r| {
                            let inside = (block..block + count).contains(b);
                            if inside && matches!(r, ColdRef::Chunk(_)) {
                                want.push(key(r));
                            }
                            !inside
                        });
                        got.sort_unstable();
                        want.sort_unstable();
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        m.fill_zeroed(block, block + count, |_, _| {});
                        for b in block..block + count {
                            model.insert(b, ColdRef::Zeroed);
                        }
                    }
                }
                prop_assert_eq!(m.len(), model.len() as u64);
            }
            for b in 0..9400u64 {
                prop_assert_eq!(m.get(b), model.get(&b).copied(), "block {}", b);
            }
            let from_runs: u64 = m.runs().map(|r| u64::from(r.1)).sum();
            prop_assert_eq!(from_runs, m.len());
            // Extents are sorted, disjoint and merged.
            let runs: Vec<_> = m.runs().collect();
            for w in runs.windows(2) {
                prop_assert!(w[0].0 + u64::from(w[0].1) <= w[1].0);
            }
        }
    }
}
