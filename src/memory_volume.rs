//! A RAM-backed volume: the placeholder engine until the durable store lands.
//! Its data lives in memory only and does not survive a restart.
//!
//! Blocks of 4 KiB are allocated on first write in a sharded map; unwritten, trimmed and
//! zeroed blocks are holes, which block status reports as such.

use std::collections::HashMap;

use nbd::{BlockDevice, Extent, ZeroFlags};
use parking_lot::RwLock;

use crate::error::VolumeError;
use crate::store::hash::BuildBlockHasher;

const BLOCK: u64 = 4096;
const SHARDS: usize = 64;
/// One block-status answer covers at most this many blocks (256 MiB); the client asks again.
const STATUS_MAX_BLOCKS: u64 = 65536;

type Block = Box<[u8; BLOCK as usize]>;
type Shard = RwLock<HashMap<u64, Block, BuildBlockHasher>>;

/// A sparse in-memory volume.
pub struct MemoryVolume {
    size: u64,
    shards: Box<[Shard]>,
}

/// The part of one block that a byte range touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    block: u64,
    /// Offset inside the block.
    at: usize,
    len: usize,
}

impl Piece {
    fn whole(&self) -> bool {
        self.len == BLOCK as usize
    }
}

/// Split `offset..offset+len` into per-block pieces.
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let block = pos / BLOCK;
        let at = (pos % BLOCK) as usize;
        let n = (BLOCK - pos % BLOCK).min(end - pos);
        pos += n;
        Some(Piece { block, at, len: n as usize })
    })
}

impl MemoryVolume {
    pub fn new(size: u64) -> Self {
        let shards = (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect();
        Self { size, shards }
    }

    fn shard(&self, block: u64) -> &Shard {
        &self.shards[(block as usize) % SHARDS]
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VolumeError::OutOfRange { offset, len, size: self.size }),
        }
    }

    fn read_sync(&self, offset: u64, buf: &mut [u8]) {
        let mut done = 0;
        for p in pieces(offset, buf.len() as u64) {
            let out = &mut buf[done..done + p.len];
            match self.shard(p.block).read().get(&p.block) {
                Some(b) => out.copy_from_slice(&b[p.at..p.at + p.len]),
                None => out.fill(0),
            }
            done += p.len;
        }
    }

    fn write_sync(&self, offset: u64, data: &[u8]) {
        let mut done = 0;
        for p in pieces(offset, data.len() as u64) {
            let src = &data[done..done + p.len];
            let mut shard = self.shard(p.block).write();
            let b = shard.entry(p.block).or_insert_with(|| Box::new([0u8; BLOCK as usize]));
            b[p.at..p.at + p.len].copy_from_slice(src);
            done += p.len;
        }
    }

    /// Zero a range. Whole blocks become holes unless `keep_allocated`; partial blocks are
    /// zeroed in place (an absent block already reads as zero).
    fn zero_sync(&self, offset: u64, len: u64, keep_allocated: bool) {
        for p in pieces(offset, len) {
            let mut shard = self.shard(p.block).write();
            if p.whole() && !keep_allocated {
                shard.remove(&p.block);
            } else if p.whole() {
                shard.insert(p.block, Box::new([0u8; BLOCK as usize]));
            } else if let Some(b) = shard.get_mut(&p.block) {
                b[p.at..p.at + p.len].fill(0);
            }
        }
    }

    fn status_sync(&self, offset: u64, len: u64) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        let end = offset + len.min(STATUS_MAX_BLOCKS * BLOCK);
        for p in pieces(offset, end - offset) {
            let hole = !self.shard(p.block).read().contains_key(&p.block);
            match out.last_mut() {
                Some(e) if e.hole == hole => e.length += p.len as u64,
                _ => out.push(Extent { length: p.len as u64, hole, zero: hole }),
            }
        }
        out
    }

    /// Bytes of block data held.
    pub fn allocated_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.read().len() as u64 * BLOCK).sum()
    }
}

impl BlockDevice for MemoryVolume {
    type Error = VolumeError;

    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check(offset, buf.len() as u64)?;
        self.read_sync(offset, buf);
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), VolumeError> {
        self.check(offset, data.len() as u64)?;
        self.write_sync(offset, data);
        Ok(())
    }

    /// Nothing to make durable: RAM is all there is.
    async fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    /// Whole blocks in the range are dropped; the partial edges are left as they are.
    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        let first = offset.div_ceil(BLOCK) * BLOCK;
        let last = (offset + len) / BLOCK * BLOCK;
        if last > first {
            self.zero_sync(first, last - first, false);
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        self.zero_sync(offset, len, flags.no_hole);
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        self.check(offset, len)?;
        Ok(self.status_sync(offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_cover_ranges() {
        let p: Vec<_> = pieces(4000, 5000).collect();
        assert_eq!(
            p,
            vec![
                Piece { block: 0, at: 4000, len: 96 },
                Piece { block: 1, at: 0, len: 4096 },
                Piece { block: 2, at: 0, len: 808 }
            ]
        );
    }

    #[test]
    fn holes_and_data() {
        let v = MemoryVolume::new(1 << 20);
        v.write_sync(4096, &[7u8; 8192]);
        assert_eq!(
            v.status_sync(0, 16384),
            vec![
                Extent { length: 4096, hole: true, zero: true },
                Extent { length: 8192, hole: false, zero: false },
                Extent { length: 4096, hole: true, zero: true },
            ]
        );
        v.zero_sync(4096, 4096, false);
        assert_eq!(v.allocated_bytes(), 4096);
        v.zero_sync(4096, 4096, true);
        assert_eq!(v.allocated_bytes(), 8192, "NO_HOLE keeps the block allocated");
        let mut b = [1u8; 8192];
        v.read_sync(4096, &mut b);
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..].iter().all(|&x| x == 7));
    }

    proptest! {
        // Any sequence of byte-granular writes and zeroes matches a flat reference buffer.
        #[test]
        fn matches_flat_model(ops in proptest::collection::vec((0u64..20000, 1u64..9000, any::<u8>(), any::<bool>()), 1..40)) {
            let size = 32768u64;
            let v = MemoryVolume::new(size);
            let mut model = vec![0u8; size as usize];
            for (off, len, byte, zero) in ops {
                let len = len.min(size - off);
                let r = off as usize..(off + len) as usize;
                if zero {
                    v.zero_sync(off, len, byte % 2 == 0);
                    model[r].fill(0);
                } else {
                    v.write_sync(off, &vec![byte; len as usize]);
                    model[r].fill(byte);
                }
            }
            let mut all = vec![0u8; size as usize];
            v.read_sync(0, &mut all);
            prop_assert_eq!(all, model);
        }
    }
}
