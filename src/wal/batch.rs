//! The bytes of one WAL write, gathered without copying block data: record headers,
//! padding and compressed payloads are packed into a buffer, while raw blocks stay in
//! their arena slots and go to the file straight from there in one vectored write.

use std::io::{self, IoSlice};
use std::ops::Range;

use crate::io::File;
use crate::store::arena::{Arena, SlotId};
use crate::wal::record::BLOCK_SIZE;

/// One piece of the write, in file order.
enum Part {
    /// A range of [`Batch::bytes`].
    Bytes(Range<usize>),
    /// A whole block, read from the arena when written. Its slot must stay referenced
    /// (the queued item holds a reference) until [`Batch::write_at`] returns.
    Slot(SlotId),
}

#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    parts: Vec<Part>,
    len: usize,
}

impl Batch {
    pub fn with_capacity(bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), parts: Vec::new(), len: 0 }
    }

    /// Bytes in the write so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append bytes (copied).
    pub fn push_bytes(&mut self, b: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        self.extend_bytes(start);
    }

    /// Append `n` zero bytes.
    pub fn push_zeros(&mut self, n: usize) {
        let start = self.bytes.len();
        self.bytes.resize(start + n, 0);
        self.extend_bytes(start);
    }

    /// Account for `bytes[start..]`, joining it to the previous part if that one ends there.
    fn extend_bytes(&mut self, start: usize) {
        let end = self.bytes.len();
        self.len += end - start;
        match self.parts.last_mut() {
            Some(Part::Bytes(r)) if r.end == start => r.end = end,
            _ => self.parts.push(Part::Bytes(start..end)),
        }
    }

    /// Append a whole block from the arena, without copying it.
    pub fn push_slot(&mut self, slot: SlotId) {
        self.parts.push(Part::Slot(slot));
        self.len += BLOCK_SIZE;
    }

    /// Write everything at `offset` of `file`.
    pub fn write_at(&self, file: &dyn File, arena: &Arena, offset: u64) -> io::Result<()> {
        // The batch's items hold references to their slots until the write is done.
        let guards = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Slot(s) => Some(arena.read(*s)),
                Part::Bytes(_) => None,
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let mut blocks = guards.iter();
        let slices: Vec<IoSlice<'_>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Bytes(r) => IoSlice::new(&self.bytes[r.clone()]),
                // One guard per slot part, in the same order.
                Part::Slot(_) => IoSlice::new(blocks.next().map_or(&[][..], |g| &g[..])),
            })
            .collect();
        file.write_all_vectored_at(&slices, offset)
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.parts.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::std_fs::StdFs;
    use crate::io::FileSystem;

    #[test]
    fn writes_bytes_and_blocks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = StdFs.open(&dir.path().join("f"), true).unwrap();
        let arena = Arena::new(4 << 20);
        let a = arena.fill(arena.alloc().unwrap(), 1, |d| d.fill(0xaa));
        let b = arena.fill(arena.alloc().unwrap(), 1, |d| d.fill(0xbb));
        let mut batch = Batch::with_capacity(64);
        batch.push_bytes(b"head");
        batch.push_zeros(3);
        batch.push_slot(a);
        batch.push_bytes(b"mid");
        batch.push_slot(b);
        batch.push_slot(a);
        assert_eq!(batch.len(), 7 + 3 + 3 * BLOCK_SIZE);
        batch.write_at(file.as_ref(), &arena, 5).unwrap();
        let mut got = vec![0u8; 5 + batch.len()];
        file.read_exact_at(&mut got, 0).unwrap();
        let mut want = vec![0u8; 5];
        want.extend_from_slice(b"head\0\0\0");
        want.extend_from_slice(&[0xaa; BLOCK_SIZE]);
        want.extend_from_slice(b"mid");
        want.extend_from_slice(&[0xbb; BLOCK_SIZE]);
        want.extend_from_slice(&[0xaa; BLOCK_SIZE]);
        assert_eq!(got, want);
        batch.clear();
        assert!(batch.is_empty());
    }
}
