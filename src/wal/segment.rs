//! WAL segment files: a 64-byte header in the first 4 KiB, then records.
//!
//! ```text
//!  0 magic        [u8; 8] "SPILLWAL"
//!  8 version      u32     2 (1: written before LZ4 data records; still read)
//! 12 block_size   u32     4096
//! 16 segment_id   u64     unique, increasing; 0 never used
//! 24 prev_id      u64     the segment written before this one (0: none)
//! 32 prev_end     u64     offset where the previous segment's records end
//! 40 volume_id    [u8;16] the volume this log belongs to
//! 56 reserved     u32     0
//! 60 crc32c       u32     over bytes 0..60
//! ```
//! Segment files are preallocated and recycled: a recycled file keeps old records past
//! the new ones, which replay tells apart by the segment id inside every record.

use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;

use crate::io::File;
use crate::wal::record::{RecordHeader, BLOCK_SIZE};

pub const SEGMENT_MAGIC: [u8; 8] = *b"SPILLWAL";
/// The version this build writes. Version 2 segments may hold LZ4 data records
/// ([`crate::wal::record::FLAG_LZ4`]); a build that reads only version 1 refuses them
/// instead of taking a compressed record for a torn tail.
pub const SEGMENT_VERSION: u32 = 2;
/// The oldest version this build reads (version 1 records are version 2 records without
/// compression).
pub const SEGMENT_VERSION_MIN: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Records start here, so that record writes are 4 KiB aligned in the file.
pub const DATA_START: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    pub prev_id: u64,
    pub prev_end: u64,
    pub volume_id: [u8; 16],
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentHeaderError {
    #[error("not a spillway WAL segment (bad magic)")]
    Magic,
    #[error("WAL segment version {0} is not supported (this build reads versions 1 and 2)")]
    Version(u32),
    #[error("WAL segment block size {0} is not supported")]
    BlockSize(u32),
    #[error("WAL segment header checksum mismatch")]
    Checksum,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.id.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_end.to_le_bytes());
        b[40..56].copy_from_slice(&self.volume_id);
        let crc = crate::crc::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; SEGMENT_HEADER_LEN]) -> Result<Self, SegmentHeaderError> {
        if b[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::Magic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(60) != crate::crc::crc32c(&b[..60]) {
            return Err(SegmentHeaderError::Checksum);
        }
        if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&u32_at(8)) {
            return Err(SegmentHeaderError::Version(u32_at(8)));
        }
        if u32_at(12) != BLOCK_SIZE as u32 {
            return Err(SegmentHeaderError::BlockSize(u32_at(12)));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[40..56]);
        Ok(Self { id: u64_at(16), prev_id: u64_at(24), prev_end: u64_at(32), volume_id })
    }
}

/// An open segment: its file and identity.
pub struct Segment {
    pub id: u64,
    /// File name inside the WAL directory (stays the same across recycling).
    pub slot: String,
    pub file: Arc<dyn File>,
    /// Where its records end once it is sealed (0 while it takes records).
    pub sealed_end: std::sync::atomic::AtomicU64,
    /// Its records, in order, as (header, offset), pads left out: those this process wrote,
    /// or those replay accepted in a segment found at start-up. The spill plans from these
    /// and reads back only the records it keeps.
    written: Mutex<Vec<(RecordHeader, u64)>>,
    /// The file mapped read-only, made on the first read that lends from it.
    map: std::sync::OnceLock<Option<Arc<memmap2::Mmap>>>,
    /// Replies that send from `map` now ([`crate::wal::lend`]). The writer does not recycle
    /// a lent segment: a slow client could hold it for long.
    lends: std::sync::atomic::AtomicUsize,
}

impl Segment {
    /// A sealed segment and the records in it, in offset order: one found at start-up, with
    /// those replay accepted (a damaged record replay dropped with `--recovery-mode
    /// tolerate-corruption` is not among them, so the spill never reads it), or the writer's
    /// start-up placeholder, with none.
    pub fn new(id: u64, slot: String, file: Arc<dyn File>, sealed_end: u64, records: Vec<(RecordHeader, u64)>) -> Self {
        Self {
            id,
            slot,
            file,
            sealed_end: sealed_end.into(),
            written: Mutex::new(records),
            map: std::sync::OnceLock::new(),
            lends: 0.into(),
        }
    }

    /// A segment the writer has just opened: it keeps a directory of the records it takes.
    pub fn fresh(id: u64, slot: String, file: Arc<dyn File>) -> Self {
        Self::new(id, slot, file, 0, Vec::new())
    }

    /// Note a record written at `offset` (the writer, in offset order).
    pub fn note_record(&self, header: RecordHeader, offset: u64) {
        self.written.lock().push((header, offset));
    }

    /// The records between `from` and `to`.
    pub fn records_noted(&self, from: u64, to: u64) -> Vec<(RecordHeader, u64)> {
        let w = self.written.lock();
        let start = w.partition_point(|r| r.1 < from);
        let end = w.partition_point(|r| r.1 < to);
        w[start..end].to_vec()
    }

    /// Whether a reply sends from the segment's mapping now.
    pub fn is_lent(&self) -> bool {
        self.lends.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Count one reply sending from the mapping, until the guard is dropped. Taken only
    /// while the segment is listed under the segments lock, so a writer that has unlisted
    /// it sees every lend that can still come.
    pub fn lend(self: &Arc<Self>) -> SegmentLend {
        self.lends.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        SegmentLend(Arc::clone(self))
    }

    /// The segment's bytes as mapped, or `None` if the file cannot be mapped.
    pub fn mapped(&self) -> Option<&Arc<memmap2::Mmap>> {
        self.map
            .get_or_init(|| match self.file.map_read() {
                Ok(m) => m.map(Arc::new),
                Err(e) => {
                    tracing::debug!(slot = %self.slot, error = %e, "mapping a WAL segment failed; reads copy");
                    None
                }
            })
            .as_ref()
    }

    pub fn sealed_end(&self) -> Option<u64> {
        match self.sealed_end.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }
}

/// A segment held for a reply that sends from its mapping ([`Segment::lend`]).
pub struct SegmentLend(Arc<Segment>);

impl SegmentLend {
    pub fn segment(&self) -> &Segment {
        &self.0
    }
}

impl Drop for SegmentLend {
    fn drop(&mut self) {
        self.0.lends.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_pinned() {
        let h = SegmentHeader { id: 5, prev_id: 4, prev_end: 0x2000, volume_id: [0xab; 16] };
        let b = h.encode();
        let mut expect = Vec::new();
        expect.extend_from_slice(b"SPILLWAL");
        expect.extend_from_slice(&[2, 0, 0, 0, 0, 0x10, 0, 0]); // version 2, block size 4096
        expect.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
        expect.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
        expect.extend_from_slice(&[0, 0x20, 0, 0, 0, 0, 0, 0]);
        expect.extend_from_slice(&[0xab; 16]);
        expect.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(&b[..60], &expect[..]);
        assert_eq!(u32::from_le_bytes(b[60..64].try_into().unwrap()), crc32c::crc32c(&expect));
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(SegmentHeaderError::Checksum));
        assert_eq!(SegmentHeader::decode(&[0u8; 64]), Err(SegmentHeaderError::Magic));
    }

    /// Re-encode `b` with another version and a fresh checksum.
    fn with_version(mut b: [u8; SEGMENT_HEADER_LEN], v: u32) -> [u8; SEGMENT_HEADER_LEN] {
        b[8..12].copy_from_slice(&v.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn version_1_is_read_and_later_versions_refused() {
        let h = SegmentHeader { id: 7, prev_id: 6, prev_end: 4096, volume_id: [1; 16] };
        assert_eq!(SegmentHeader::decode(&with_version(h.encode(), 1)), Ok(h));
        assert_eq!(SegmentHeader::decode(&with_version(h.encode(), 3)), Err(SegmentHeaderError::Version(3)));
        assert_eq!(SegmentHeader::decode(&with_version(h.encode(), 0)), Err(SegmentHeaderError::Version(0)));
    }
}
