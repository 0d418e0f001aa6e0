//! WAL record format (segment version 2). Little-endian, fixed-width, CRC32C over header and
//! payload. Documented in `docs/wal.md`; `tests::record_bytes_are_pinned` and
//! `tests::compressed_record_bytes_are_pinned` pin the bytes.
//!
//! ```text
//!  0 magic      u32  0x52575053 ("SPWR")
//!  4 kind       u8   1 = data, 2 = zero (tombstone), 3 = padding
//!  5 flags      u8   zero: bit 0 = keep allocated (NO_HOLE); data: bit 1 = LZ4 payload
//!  6 reserved   u16  0
//!  8 segment    u64  id of the segment holding the record
//! 16 seq        u64  volume-wide sequence number
//! 24 block      u64  first block
//! 32 count      u32  blocks covered
//! 36 data_len   u32  payload bytes (count * 4096 for data, 1..count * 4096 - 1 for LZ4
//!                    data, 0 for zero, any for padding)
//! 40 synced_to  u32  segment offset known durable when this record was written
//! 44 crc32c     u32  over bytes 0..44, then the payload
//! 48 payload
//! ```
//!
//! An LZ4 data record's payload is one LZ4 block (no size prefix) of the `count * 4096` raw
//! bytes. It is followed by zero bytes up to a 16-byte boundary, which the checksum does not
//! cover, so that every record starts on a 16-byte boundary as replay's search expects.

use crate::crc::{crc32c, crc32c_extend_block, Crc32c};
use thiserror::Error;

pub const RECORD_MAGIC: u32 = 0x5257_5053;
pub const HEADER_LEN: usize = 48;
pub const BLOCK_SIZE: usize = 4096;

pub const KIND_DATA: u8 = 1;
pub const KIND_ZERO: u8 = 2;
pub const KIND_PAD: u8 = 3;

pub const FLAG_KEEP_ALLOCATED: u8 = 1;
/// Data records: the payload is one LZ4 block of the record's raw blocks.
pub const FLAG_LZ4: u8 = 2;
/// Records start on this boundary in a segment.
pub const RECORD_ALIGN: u64 = 16;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `count` whole blocks of data follow; `compressed`: as one LZ4 block of `data_len`
    /// bytes.
    Data { compressed: bool },
    /// `count` blocks read as zeroes from now on; `keep_allocated` for NO_HOLE zeroing.
    Zero { keep_allocated: bool },
    /// Filler to align the next write; its payload is ignored.
    Pad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub segment: u64,
    pub seq: u64,
    pub block: u64,
    pub count: u32,
    pub data_len: u32,
    pub synced_to: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("bad record magic {0:#010x}")]
    Magic(u32),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("record fields are inconsistent: {0}")]
    Fields(&'static str),
    #[error("record checksum mismatch")]
    Checksum,
}

impl RecordHeader {
    pub fn data(segment: u64, seq: u64, block: u64, count: u32, synced_to: u32) -> Self {
        let kind = RecordKind::Data { compressed: false };
        Self { kind, segment, seq, block, count, data_len: count * BLOCK_SIZE as u32, synced_to }
    }

    /// A data record whose payload is `data_len` bytes of LZ4 (less than `count * 4096`).
    pub fn data_lz4(segment: u64, seq: u64, block: u64, count: u32, data_len: u32, synced_to: u32) -> Self {
        Self { kind: RecordKind::Data { compressed: true }, segment, seq, block, count, data_len, synced_to }
    }

    pub fn zero(segment: u64, seq: u64, block: u64, count: u32, keep_allocated: bool, synced_to: u32) -> Self {
        Self { kind: RecordKind::Zero { keep_allocated }, segment, seq, block, count, data_len: 0, synced_to }
    }

    pub fn pad(segment: u64, data_len: u32, synced_to: u32) -> Self {
        Self { kind: RecordKind::Pad, segment, seq: 0, block: 0, count: 0, data_len, synced_to }
    }

    /// Bytes on disk, header included (and an LZ4 payload's padding to 16 bytes).
    pub fn total_len(&self) -> u64 {
        let payload = u64::from(self.data_len);
        match self.kind {
            RecordKind::Data { compressed: true } => HEADER_LEN as u64 + payload.next_multiple_of(RECORD_ALIGN),
            _ => HEADER_LEN as u64 + payload,
        }
    }

    /// Whether this is a data record with an LZ4 payload.
    pub fn is_compressed(&self) -> bool {
        matches!(self.kind, RecordKind::Data { compressed: true })
    }

    /// Raw bytes of the blocks a data record covers (`count * 4096`).
    pub fn raw_len(&self) -> usize {
        self.count as usize * BLOCK_SIZE
    }

    /// Encode, with the checksum over the header and `payload` (which must be `data_len`
    /// bytes, possibly in several pieces).
    pub fn encode(&self, payload: &[&[u8]]) -> [u8; HEADER_LEN] {
        let mut b = self.fields();
        let mut crc = Crc32c::new();
        crc.update(&b[..44]);
        for p in payload {
            crc.update(p);
        }
        b[44..48].copy_from_slice(&crc.finish().to_le_bytes());
        b
    }

    /// [`Self::encode`] for a payload of whole 4 KiB blocks, from each block's CRC32C
    /// (in order) rather than the blocks: the same bytes.
    pub fn encode_from_block_sums(&self, sums: &[u32]) -> [u8; HEADER_LEN] {
        let mut b = self.fields();
        let crc = sums.iter().fold(crc32c(&b[..44]), |c, &s| crc32c_extend_block(c, s));
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header's bytes but the checksum.
    fn fields(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        let (kind, flags) = match self.kind {
            RecordKind::Data { compressed } => (KIND_DATA, if compressed { FLAG_LZ4 } else { 0 }),
            RecordKind::Zero { keep_allocated } => (KIND_ZERO, if keep_allocated { FLAG_KEEP_ALLOCATED } else { 0 }),
            RecordKind::Pad => (KIND_PAD, 0),
        };
        b[4] = kind;
        b[5] = flags;
        b[8..16].copy_from_slice(&self.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.block.to_le_bytes());
        b[32..36].copy_from_slice(&self.count.to_le_bytes());
        b[36..40].copy_from_slice(&self.data_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.synced_to.to_le_bytes());
        b
    }

    /// Decode and sanity-check a header. The checksum is checked separately with the
    /// payload ([`RecordHeader::verify`]).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, RecordError> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let magic = u32_at(0);
        if magic != RECORD_MAGIC {
            return Err(RecordError::Magic(magic));
        }
        let (count, data_len) = (u32_at(32), u32_at(36));
        let kind = match b[4] {
            KIND_DATA if b[5] & !FLAG_LZ4 != 0 => return Err(RecordError::Fields("unknown data record flags")),
            KIND_DATA => RecordKind::Data { compressed: b[5] & FLAG_LZ4 != 0 },
            KIND_ZERO => RecordKind::Zero { keep_allocated: b[5] & FLAG_KEEP_ALLOCATED != 0 },
            KIND_PAD => RecordKind::Pad,
            k => return Err(RecordError::Kind(k)),
        };
        let consistent = match kind {
            RecordKind::Data { compressed: false } => {
                count > 0 && u64::from(data_len) == u64::from(count) * BLOCK_SIZE as u64
            }
            RecordKind::Data { compressed: true } => {
                count > 0 && data_len > 0 && u64::from(data_len) < u64::from(count) * BLOCK_SIZE as u64
            }
            RecordKind::Zero { .. } => count > 0 && data_len == 0,
            RecordKind::Pad => count == 0,
        };
        if !consistent || b[6] != 0 || b[7] != 0 {
            return Err(RecordError::Fields("count, length and kind disagree"));
        }
        Ok(Self {
            kind,
            segment: u64_at(8),
            seq: u64_at(16),
            block: u64_at(24),
            count,
            data_len,
            synced_to: u32_at(40),
        })
    }

    /// Check the stored checksum against the header bytes and the payload.
    pub fn verify(b: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), RecordError> {
        let stored = u32::from_le_bytes([b[44], b[45], b[46], b[47]]);
        let mut crc = Crc32c::new();
        crc.update(&b[..44]);
        crc.update(payload);
        let crc = crc.finish();
        if crc == stored {
            Ok(())
        } else {
            Err(RecordError::Checksum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_are_pinned() {
        let h = RecordHeader::zero(2, 0x0102, 7, 3, true, 4096);
        let b = h.encode(&[]);
        assert_eq!(
            b,
            [
                0x53, 0x50, 0x57, 0x52, // magic "SPWR"
                2, 1, 0, 0, // kind zero, keep allocated, reserved
                2, 0, 0, 0, 0, 0, 0, 0, // segment 2
                0x02, 0x01, 0, 0, 0, 0, 0, 0, // seq 0x0102
                7, 0, 0, 0, 0, 0, 0, 0, // block 7
                3, 0, 0, 0, // count 3
                0, 0, 0, 0, // data_len 0
                0, 0x10, 0, 0, // synced_to 4096
                0x1a, 0x03, 0x9e, 0x0e, // crc32c (checked against an independent bitwise CRC32C)
            ]
        );
        assert_eq!(RecordHeader::decode(&b), Ok(h));
        assert_eq!(RecordHeader::verify(&b, &[]), Ok(()));
    }

    #[test]
    fn compressed_record_bytes_are_pinned() {
        let payload: Vec<u8> = (0..20).collect();
        let h = RecordHeader::data_lz4(3, 0x0201, 9, 2, 20, 8192);
        let b = h.encode(&[&payload]);
        assert_eq!(
            b,
            [
                0x53, 0x50, 0x57, 0x52, // magic "SPWR"
                1, 2, 0, 0, // kind data, LZ4, reserved
                3, 0, 0, 0, 0, 0, 0, 0, // segment 3
                0x01, 0x02, 0, 0, 0, 0, 0, 0, // seq 0x0201
                9, 0, 0, 0, 0, 0, 0, 0, // block 9
                2, 0, 0, 0, // count 2
                20, 0, 0, 0, // data_len 20 (compressed)
                0, 0x20, 0, 0, // synced_to 8192
                0x9f, 0xee, 0x56, 0x71, // crc32c over 0..44 and the 20 stored bytes (independent bitwise CRC32C)
            ]
        );
        assert_eq!(RecordHeader::decode(&b), Ok(h));
        assert_eq!(RecordHeader::verify(&b, &payload), Ok(()));
        assert_eq!(h.total_len(), 48 + 32, "the payload is padded to 16 bytes on disk");
        assert!(h.is_compressed() && !RecordHeader::data(3, 1, 9, 2, 0).is_compressed());
    }

    #[test]
    fn a_data_header_from_block_sums_is_the_header_from_the_blocks() {
        for count in [1usize, 2, 7] {
            let raw: Vec<u8> = (0..count * BLOCK_SIZE).map(|i| (i * 7 + i / 4093) as u8).collect();
            let blocks: Vec<&[u8]> = raw.chunks(BLOCK_SIZE).collect();
            let sums: Vec<u32> = blocks.iter().map(|b| crc32c(b)).collect();
            let h = RecordHeader::data(4, 0x0303, 11, count as u32, 12_288);
            let b = h.encode_from_block_sums(&sums);
            assert_eq!(b, h.encode(&blocks), "{count} blocks");
            assert_eq!(RecordHeader::verify(&b, &raw), Ok(()));
            // One block's sum wrong: the header's checksum no longer verifies.
            let mut bad = sums.clone();
            bad[count - 1] ^= 1;
            assert!(RecordHeader::verify(&h.encode_from_block_sums(&bad), &raw).is_err());
        }
    }

    #[test]
    fn compressed_record_round_trips() {
        let raw: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| (i / 512) as u8).collect();
        let packed = lz4_flex::block::compress(&raw);
        assert!(packed.len() < raw.len());
        let h = RecordHeader::data_lz4(1, 5, 40, 3, packed.len() as u32, 4096);
        let b = h.encode(&[&packed[..7], &packed[7..]]);
        let d = RecordHeader::decode(&b).expect("decodes");
        assert_eq!(d, h);
        assert_eq!(RecordHeader::verify(&b, &packed), Ok(()));
        let mut out = vec![0u8; d.raw_len()];
        assert_eq!(lz4_flex::block::decompress_into(&packed, &mut out).ok(), Some(raw.len()));
        assert_eq!(out, raw);
    }

    #[test]
    fn compressed_lengths_must_be_shorter_than_raw() {
        for bad_len in [0u32, 4096, 4097, 1 << 20] {
            let b = RecordHeader::data_lz4(1, 1, 1, 1, bad_len, 0).encode(&[]);
            assert!(matches!(RecordHeader::decode(&b), Err(RecordError::Fields(_))), "data_len {bad_len}");
        }
        let ok = RecordHeader::data_lz4(1, 1, 1, 1, 4095, 0).encode(&[]);
        assert!(RecordHeader::decode(&ok).is_ok());
        // A raw data record must still be exactly count * 4096; unknown data flags are refused.
        let mut b = RecordHeader::data(1, 1, 1, 1, 0).encode(&[]);
        b[5] = 4;
        assert!(matches!(RecordHeader::decode(&b), Err(RecordError::Fields(_))));
    }

    #[test]
    fn data_checksum_covers_payload() {
        let data = vec![0xa5u8; BLOCK_SIZE * 2];
        let h = RecordHeader::data(1, 9, 100, 2, 0);
        let b = h.encode(&[&data[..BLOCK_SIZE], &data[BLOCK_SIZE..]]);
        assert_eq!(RecordHeader::verify(&b, &data), Ok(()));
        let mut bad = data.clone();
        bad[5000] ^= 1;
        assert_eq!(RecordHeader::verify(&b, &bad), Err(RecordError::Checksum));
        let mut hb = b;
        hb[24] ^= 1; // block number flipped
        assert_eq!(RecordHeader::verify(&hb, &data), Err(RecordError::Checksum));
    }

    #[test]
    fn inconsistent_headers_are_rejected() {
        let mut b = RecordHeader::data(1, 1, 1, 1, 0).encode(&[&[0u8; BLOCK_SIZE]]);
        b[36] = 1; // data_len no longer count * 4096
        assert!(matches!(RecordHeader::decode(&b), Err(RecordError::Fields(_))));
        let mut b = RecordHeader::pad(1, 8, 0).encode(&[&[0u8; 8]]);
        b[4] = 9;
        assert_eq!(RecordHeader::decode(&b), Err(RecordError::Kind(9)));
        assert_eq!(RecordHeader::decode(&[0u8; HEADER_LEN]), Err(RecordError::Magic(0)));
    }
}
