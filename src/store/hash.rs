//! Hashing for block numbers.
//!
//! A hash table places a key by the low bits of its hash and tags it with the top 7, so
//! both must depend on every bit of the block number. (A plain multiply would not do: its
//! low bits depend only on the block's low bits, and blocks at a power-of-two stride, such
//! as a file system's group boundaries, would pile into a few buckets.)
//!
//! Runs of [`RUN_BLOCKS`] aligned blocks stay together: their hashes differ only in the low
//! bits and the tag, so a sequential request walks neighbouring buckets, a few cache lines,
//! instead of one random bucket per block.

use std::hash::{BuildHasherDefault, Hasher};

/// Blocks per run that hash to neighbouring buckets (and, in the index, to one shard).
pub const RUN_BLOCKS: u64 = 1 << RUN_SHIFT;
const RUN_SHIFT: u32 = 4;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The run a block belongs to, well mixed in every bit.
pub fn run_hash(block: u64) -> u64 {
    // The high half of the product depends on every bit of the run number; the rotation
    // brings it down to where tables look first.
    (block >> RUN_SHIFT).wrapping_mul(GOLDEN).rotate_left(32)
}

/// The hash of one block: its run's hash, with the block's place in the run in the low bits
/// (neighbouring buckets) and folded into the top 7 (distinct tags within a run).
pub fn block_hash(block: u64) -> u64 {
    let place = block & (RUN_BLOCKS - 1);
    ((run_hash(block) & !(RUN_BLOCKS - 1)) | place) ^ (place << 57)
}

#[derive(Default)]
pub struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = block_hash(n);
    }
}

pub type BuildBlockHasher = BuildHasherDefault<BlockHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// How many distinct runs of buckets of a 2^bits table the blocks land in. (A table
    /// probes 16 buckets at a time, so a run of buckets is where a key's probe starts.)
    fn bucket_runs(blocks: impl Iterator<Item = u64>, bits: u32) -> usize {
        blocks.map(|b| (block_hash(b) & ((1 << bits) - 1)) >> RUN_SHIFT).collect::<HashSet<_>>().len()
    }

    #[test]
    fn power_of_two_strides_spread_over_the_table() {
        // 4096 blocks at a 32768-block stride (ext4's 128 MiB groups) in a table of 4096
        // bucket runs: spread at random they would take about 2,600 (1 - 1/e); a plain
        // multiply puts them all into one.
        for stride in [15, 20, 30] {
            let n = bucket_runs((0..4096).map(|i| i << stride), 16);
            assert!(n > 2300, "only {n} of 4096 bucket runs used at a 2^{stride} stride");
        }
    }

    #[test]
    fn a_run_takes_neighbouring_buckets_and_distinct_tags() {
        for first in [0u64, 16, 1 << 20, 0xdead_bee0] {
            let base = block_hash(first) & !(RUN_BLOCKS - 1) & ((1 << 57) - 1);
            let tags: HashSet<u64> = (first..first + RUN_BLOCKS).map(|b| block_hash(b) >> 57).collect();
            assert_eq!(tags.len(), RUN_BLOCKS as usize, "tags repeat in the run at {first}");
            for b in first..first + RUN_BLOCKS {
                assert_eq!(block_hash(b) & ((1 << 57) - 1), base | (b - first), "block {b}");
            }
        }
    }
}
