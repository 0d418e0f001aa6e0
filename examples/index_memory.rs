//! Memory of the per-block maps after 4 GiB of writes, counted by a wrapping global
//! allocator: the live block index (`store::index::Index`) and the spiller's base
//! (`chunk::base::Base`), both holding each written block as persisted in a chunk (the
//! state once the WAL has spilled). Prints bytes per distinct written block.
//!
//! ```text
//! cargo run --release --example index_memory [GIB]     (default 4)
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
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

fn measure(name: &str, writes: u64, block_of: impl Fn(u64) -> u64) {
    let start = ALLOCATED.load(Ordering::Relaxed);
    let index = Index::new(16);
    for i in 0..writes {
        // Where the spill would put it: 1024 blocks per 4 MiB chunk, 16 per frame.
        let loc = Loc { chunk: i / 1024 + 1, frame: (i % 1024 / 16) as u32, idx: (i % 16) as u32 };
        index.set(block_of(i), Some(Entry { seq: i + 1, state: BlockState::Persisted(loc) }));
    }
    let after_index = ALLOCATED.load(Ordering::Relaxed);
    let set = ChunkSet::new(1);
    let mut base = Base::new();
    for i in 0..writes {
        let loc = Loc { chunk: i / 1024 + 1, frame: (i % 1024 / 16) as u32, idx: (i % 16) as u32 };
        base.set(block_of(i), BaseRef::Chunk(loc), &set);
    }
    let after_base = ALLOCATED.load(Ordering::Relaxed);
    let distinct = index.len() as f64;
    let idx = (after_index - start) as f64 / distinct;
    let bas = (after_base - after_index) as f64 / distinct;
    println!("| {name} | {writes} | {} | {idx:.1} | {bas:.1} | {:.1} |", index.len(), idx + bas);
    drop(base);
    drop(index);
}

fn main() {
    let gib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let writes = (gib << 30) / BLOCK;
    println!("size_of::<Entry>() = {} bytes", std::mem::size_of::<Entry>());
    println!();
    println!("| pattern | 4 KiB writes | distinct blocks | index B/block | base B/block | total B/block |");
    println!("|---|---:|---:|---:|---:|---:|");
    measure("sequential", writes, |i| i);
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
        measure(label, writes, |i| picks[i as usize]);
    }
}
