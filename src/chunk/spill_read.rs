//! The bytes a spill takes from the WAL. A segment keeps a directory of its records
//! (`Segment::records_noted`: noted by the writer, or listed by replay for a segment found
//! at start-up), so the spill plans from the headers alone and reads back only the records
//! whose blocks it keeps: a block a newer durable write has replaced is never read again,
//! nor a damaged record replay dropped. Every record read is checked against its CRC, and
//! must be the record the directory says was written there.

use std::collections::BTreeSet;

use crate::chunk::ChunkError;
use crate::wal::record::{RecordHeader, BLOCK_SIZE, HEADER_LEN};
use crate::wal::replay::records_between;
use crate::wal::segment::Segment;

/// The records of a WAL range with their offsets, in order.
pub type Records = [(RecordHeader, u64)];

/// Bytes of a WAL range's records, read as the spill needs them.
pub struct RecordBytes {
    bytes: Vec<u8>,
    /// Where each record starts in `bytes`, once read.
    at: Vec<Option<usize>>,
    /// Where each LZ4 record's blocks start in `bytes`, once decompressed.
    raw: Vec<Option<usize>>,
}

impl RecordBytes {
    /// Nothing read yet, for `n` records.
    pub fn unread(n: usize) -> Self {
        Self { bytes: Vec::new(), at: vec![None; n], raw: vec![None; n] }
    }

    /// Read the records in `needed` not read yet, a run of neighbouring ones with one read,
    /// and check each is the record the directory says.
    pub fn read(&mut self, seg: &Segment, records: &Records, needed: &BTreeSet<usize>) -> Result<(), ChunkError> {
        let unread: Vec<usize> = needed.iter().copied().filter(|&i| self.at[i].is_none()).collect();
        let mut k = 0;
        while k < unread.len() {
            // A run: records back to back in the file, all to read.
            let mut end = k + 1;
            while end < unread.len() && unread[end] == unread[end - 1] + 1 && {
                let (h, at) = &records[unread[end - 1]];
                records[unread[end]].1 == at + h.total_len()
            } {
                end += 1;
            }
            let (first, last) = (unread[k], unread[end - 1]);
            let from = records[first].1;
            let to = records[last].1 + records[last].0.total_len();
            let (img, found) = records_between(seg, from, to).map_err(ChunkError::from_wal_read)?;
            if found.as_slice() != &records[first..=last] {
                return Err(ChunkError::WalDamaged(format!(
                    "WAL segment {}: the records between offsets {from} and {to} are not the ones written there",
                    seg.slot
                )));
            }
            for (at, r) in self.at[first..=last].iter_mut().zip(&records[first..=last]) {
                *at = Some(self.bytes.len() + (r.1 - from) as usize);
            }
            self.bytes.extend_from_slice(&img);
            k = end;
        }
        Ok(())
    }

    /// Where block `idx` of record `i` is in the bytes (an LZ4 record is checked and
    /// decompressed whole the first time).
    pub fn block(&mut self, seg: &Segment, records: &Records, i: usize, idx: u32) -> Result<usize, ChunkError> {
        let (h, at) = &records[i];
        let Some(start) = self.at[i] else {
            return Err(ChunkError::Other(format!("WAL segment {}: record at {at} used but not read", seg.slot)));
        };
        if !h.is_compressed() {
            return Ok(start + HEADER_LEN + idx as usize * BLOCK_SIZE);
        }
        let raw = match self.raw[i] {
            Some(r) => r,
            None => {
                let corrupt = |detail: String| ChunkError::WalDamaged(format!("WAL segment {}: {detail}", seg.slot));
                let dst = self.bytes.len();
                self.bytes.resize(dst + h.raw_len(), 0);
                let (head, tail) = self.bytes.split_at_mut(dst);
                let payload = &head[start + HEADER_LEN..start + HEADER_LEN + h.data_len as usize];
                match lz4_flex::block::decompress_into(payload, tail) {
                    Ok(n) if n == h.raw_len() => {}
                    Ok(n) => {
                        return Err(corrupt(format!(
                            "compressed record at synced offset {at} holds {n} bytes, not {}",
                            h.raw_len()
                        )))
                    }
                    Err(e) => {
                        return Err(corrupt(format!(
                            "compressed record at synced offset {at} does not decompress: {e}"
                        )))
                    }
                }
                self.raw[i] = Some(dst);
                dst
            }
        };
        Ok(raw + idx as usize * BLOCK_SIZE)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
