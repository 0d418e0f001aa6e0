//! Memory of the block index after 4 GiB of writes, counted by a wrapping global
//! allocator. Writes enter the live index (`store::index::Index`) as WAL copies and spill
//! in 4 MiB chunks when the WAL is full; the base (`chunk::base::Base`, extents) then holds
//! them and the live index lets go. Prints the base's bytes per distinct written block (the
//! cost that grows with the volume) and what the live index still holds (bounded by the
//! WAL, not by the volume).
//!
//! ```text
//! cargo run --release --example index_memory [GIB [WAL_GIB]]     (default 4 and 1)
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use spillway::chunk::base::{Base, BaseRef};
use spillway::chunk::set::ChunkSet;
use spillway::store::index::{BlockState, Entry, Index, Loc};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BLOCK: u64 = 4096;
/// Blocks per 4 MiB chunk.
const CHUNK_BLOCKS: usize = 1024;

/// Write `writes` blocks (`block_of(i)` is the i-th), as the volume does: each enters the
/// live index as a WAL copy; the WAL holds `window` blocks, and when it is full the oldest
/// 1024 spill into a chunk, sorted by block (the base takes them, the index lets go).
fn measure(name: &str, writes: u64, window: usize, block_of: impl Fn(u64) -> u64) {
    let start = ALLOCATED.load(Ordering::Relaxed);
    let index = Index::new(16);
    let base = Base::new();
    let set = ChunkSet::new(1);
    let mut wal: VecDeque<(u64, u64)> = VecDeque::with_capacity(window);
    let wal_bytes = ALLOCATED.load(Ordering::Relaxed) - start;
    let mut chunk = 0u64;
    let mut spill = |wal: &mut VecDeque<(u64, u64)>, n: usize| {
        chunk += 1;
        let mut batch: Vec<(u64, u64)> = wal.drain(..n.min(wal.len())).collect();
        // The newest version of each block, as the spiller picks it.
        batch.sort_unstable_by_key(|e| (e.0, std::cmp::Reverse(e.1)));
        batch.dedup_by_key(|e| e.0);
        for (pos, &(block, seq)) in batch.iter().enumerate() {
            let loc = Loc { chunk, frame: (pos / 16) as u32, idx: (pos % 16) as u32 };
            base.set(block, BaseRef::Chunk(loc), &set).expect("place fits");
            index.persist(block, seq, BlockState::Pending { segment: 1, offset: seq * BLOCK });
        }
        index.shrink();
    };
    for i in 0..writes {
        if wal.len() == window {
            spill(&mut wal, CHUNK_BLOCKS);
        }
        let seq = i + 1;
        index.set(block_of(i), Some(Entry { seq, state: BlockState::Pending { segment: 1, offset: seq * BLOCK } }));
        wal.push_back((block_of(i), seq));
    }
    while !wal.is_empty() {
        spill(&mut wal, CHUNK_BLOCKS);
    }
    index.shrink();
    let total = ALLOCATED.load(Ordering::Relaxed) - start - wal_bytes;
    let left = index.len();
    drop(index);
    let base_bytes = ALLOCATED.load(Ordering::Relaxed) - start - wal_bytes;
    let distinct = base.len() as f64;
    let (extents, _) = base.footprint();
    println!(
        "| {name} | {writes} | {} | {extents} | {:.2} | {:.1} MiB ({left} entries) |",
        base.len(),
        base_bytes as f64 / distinct,
        (total - base_bytes) as f64 / (1 << 20) as f64
    );
}

fn main() {
    let gib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let wal_gib: f64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let writes = (gib << 30) / BLOCK;
    let window = ((wal_gib * (1u64 << 30) as f64) as u64 / BLOCK) as usize;
    println!("{gib} GiB of 4 KiB writes; the WAL holds {wal_gib} GiB ({window} blocks) before it spills");
    println!();
    println!("| pattern | 4 KiB writes | distinct blocks | base extents | base B/block | live index left (bounded by the WAL) |");
    println!("|---|---:|---:|---:|---:|---:|");
    measure("sequential", writes, window, |i| i);
    for (label, volume_blocks) in [("random, volume = written size", writes), ("random, volume = 16x", writes * 16)] {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let picks: Vec<u64> = (0..writes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % volume_blocks
            })
            .collect();
        measure(label, writes, window, |i| picks[i as usize]);
    }
}
