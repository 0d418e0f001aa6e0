//! The manifest (checkpoint), version 1: the chunk list, where every persisted block is,
//! and where WAL replay resumes. Written atomically and rarely: locally (write, sync,
//! rename, sync the directory) and to the backend as `manifest/<generation>`.
//! Documented in `docs/chunk.md`; `tests::manifest_bytes_are_pinned` pins the bytes.
//!
//! ```text
//! header (96 bytes)
//!   0 magic "SPWMANIF"   8 version u16   10 reserved u16   12 header_len u32 (96)
//!  16 volume_id [16]   32 generation u64   40 next_seq u64
//!  48 replay_segment u64   56 replay_offset u64   64 next_chunk_id u64
//!  72 chunks u32   76 runs u32   80 body_len u64   88 crc32c(body) u32   92 crc32c(bytes 0..92) u32
//! body
//!   per chunk (32 bytes): id u64, kind u8, codec u8, reserved u16, frames u32, object_len u64,
//!                         blocks u32, reserved u32; then its frames, 24 bytes each as in a chunk
//!   per run (32 bytes):   first block u64, count u32, flags u32 (1 = zeroed, allocated),
//!                         chunk u64, frame u32, idx u32 (the first block's place; the rest follow)
//! ```

use thiserror::Error;

use super::format::{FrameLoc, FRAME_ENTRY};
use crate::store::index::Loc;

pub const MANIFEST_MAGIC: [u8; 8] = *b"SPWMANIF";
pub const MANIFEST_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 96;
const CHUNK_REC: usize = 32;
const RUN_REC: usize = 32;
const FLAG_EMPTY_ALLOCATED: u32 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not a manifest (bad magic)")]
    Magic,
    #[error("unsupported manifest version {0}")]
    Version(u16),
    #[error("manifest {0} checksum mismatch")]
    Checksum(&'static str),
    #[error("manifest is inconsistent: {0}")]
    Layout(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    pub id: u64,
    pub kind: u8,
    pub codec: u8,
    pub object_len: u64,
    pub blocks: u32,
    pub frames: Vec<FrameLoc>,
}

/// Consecutive blocks stored one after another in one chunk, or zeroed-but-allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u32,
    /// `None`: the blocks read as zeroes but stay allocated (NO_HOLE zeroing).
    pub loc: Option<Loc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub volume_id: [u8; 16],
    pub generation: u64,
    pub next_seq: u64,
    pub replay_from: (u64, u64),
    pub next_chunk_id: u64,
    pub chunks: Vec<ChunkRecord>,
    pub runs: Vec<Run>,
}

fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.chunks.len() * 256 + self.runs.len() * RUN_REC);
        for c in &self.chunks {
            body.extend_from_slice(&c.id.to_le_bytes());
            body.extend_from_slice(&[c.kind, c.codec, 0, 0]);
            body.extend_from_slice(&(c.frames.len() as u32).to_le_bytes());
            body.extend_from_slice(&c.object_len.to_le_bytes());
            body.extend_from_slice(&c.blocks.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            for f in &c.frames {
                body.extend_from_slice(&f.offset.to_le_bytes());
                body.extend_from_slice(&f.stored_len.to_le_bytes());
                body.extend_from_slice(&f.raw_len.to_le_bytes());
                body.extend_from_slice(&f.crc.to_le_bytes());
                body.extend_from_slice(&[u8::from(f.compressed), 0, 0, 0]);
            }
        }
        for r in &self.runs {
            body.extend_from_slice(&r.first.to_le_bytes());
            body.extend_from_slice(&r.count.to_le_bytes());
            let (flags, loc) = match r.loc {
                Some(l) => (0, l),
                None => (FLAG_EMPTY_ALLOCATED, Loc { chunk: 0, frame: 0, idx: 0 }),
            };
            body.extend_from_slice(&flags.to_le_bytes());
            body.extend_from_slice(&loc.chunk.to_le_bytes());
            body.extend_from_slice(&loc.frame.to_le_bytes());
            body.extend_from_slice(&loc.idx.to_le_bytes());
        }
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MANIFEST_MAGIC);
        h[8..10].copy_from_slice(&MANIFEST_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.volume_id);
        h[32..40].copy_from_slice(&self.generation.to_le_bytes());
        h[40..48].copy_from_slice(&self.next_seq.to_le_bytes());
        h[48..56].copy_from_slice(&self.replay_from.0.to_le_bytes());
        h[56..64].copy_from_slice(&self.replay_from.1.to_le_bytes());
        h[64..72].copy_from_slice(&self.next_chunk_id.to_le_bytes());
        h[72..76].copy_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        h[76..80].copy_from_slice(&(self.runs.len() as u32).to_le_bytes());
        h[80..88].copy_from_slice(&(body.len() as u64).to_le_bytes());
        h[88..92].copy_from_slice(&crate::crc::crc32c(&body).to_le_bytes());
        let crc = crate::crc::crc32c(&h[0..92]);
        h[92..96].copy_from_slice(&crc.to_le_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, ManifestError> {
        if b.len() < HEADER_LEN || b[0..8] != MANIFEST_MAGIC {
            return Err(ManifestError::Magic);
        }
        if crate::crc::crc32c(&b[0..92]) != u32at(b, 92) {
            return Err(ManifestError::Checksum("header"));
        }
        let v = u16::from_le_bytes([b[8], b[9]]);
        if v != MANIFEST_VERSION {
            return Err(ManifestError::Version(v));
        }
        let body_len = u64at(b, 80) as usize;
        let body = b.get(HEADER_LEN..).filter(|r| r.len() == body_len).ok_or(ManifestError::Layout(format!(
            "body is {} bytes, the header says {body_len}",
            b.len() - HEADER_LEN
        )))?;
        if crate::crc::crc32c(body) != u32at(b, 88) {
            return Err(ManifestError::Checksum("body"));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[16..32]);
        let short = || ManifestError::Layout("body ends early".into());
        let mut pos = 0usize;
        let mut chunks = Vec::new();
        for _ in 0..u32at(b, 72) {
            let r = body.get(pos..pos + CHUNK_REC).ok_or_else(short)?;
            let nframes = u32at(r, 12) as usize;
            let mut c = ChunkRecord {
                id: u64at(r, 0),
                kind: r[8],
                codec: r[9],
                object_len: u64at(r, 16),
                blocks: u32at(r, 24),
                frames: Vec::with_capacity(nframes),
            };
            pos += CHUNK_REC;
            let fb = body.get(pos..pos + nframes * FRAME_ENTRY).ok_or_else(short)?;
            for f in fb.chunks_exact(FRAME_ENTRY) {
                c.frames.push(FrameLoc {
                    offset: u64at(f, 0),
                    stored_len: u32at(f, 8),
                    raw_len: u32at(f, 12),
                    crc: u32at(f, 16),
                    compressed: f[20] & 1 != 0,
                });
            }
            pos += nframes * FRAME_ENTRY;
            chunks.push(c);
        }
        let nruns = u32at(b, 76) as usize;
        let rb = body.get(pos..pos + nruns * RUN_REC).ok_or_else(short)?;
        if pos + nruns * RUN_REC != body.len() {
            return Err(ManifestError::Layout("trailing bytes after the runs".into()));
        }
        let runs = rb
            .chunks_exact(RUN_REC)
            .map(|r| Run {
                first: u64at(r, 0),
                count: u32at(r, 8),
                loc: (u32at(r, 12) & FLAG_EMPTY_ALLOCATED == 0).then(|| Loc {
                    chunk: u64at(r, 16),
                    frame: u32at(r, 24),
                    idx: u32at(r, 28),
                }),
            })
            .collect();
        Ok(Self {
            volume_id,
            generation: u64at(b, 32),
            next_seq: u64at(b, 40),
            replay_from: (u64at(b, 48), u64at(b, 56)),
            next_chunk_id: u64at(b, 64),
            chunks,
            runs,
        })
    }
}

/// Backend key of a manifest generation.
pub fn manifest_key(generation: u64) -> String {
    format!("manifest/{generation:016x}")
}

pub fn key_generation(key: &str) -> Option<u64> {
    let g = key.strip_prefix("manifest/")?;
    (g.len() == 16).then(|| u64::from_str_radix(g, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            volume_id: [1; 16],
            generation: 2,
            next_seq: 3,
            replay_from: (4, 8192),
            next_chunk_id: 6,
            chunks: vec![ChunkRecord {
                id: 5,
                kind: 1,
                codec: 1,
                object_len: 1000,
                blocks: 2,
                frames: vec![FrameLoc { offset: 64, stored_len: 100, raw_len: 8192, crc: 7, compressed: true }],
            }],
            runs: vec![
                Run { first: 10, count: 2, loc: Some(Loc { chunk: 5, frame: 0, idx: 0 }) },
                Run { first: 20, count: 1, loc: None },
            ],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 4;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(Manifest::decode(&b[..b.len() - 1]).is_err());
        assert_eq!(key_generation(&manifest_key(77)), Some(77));
    }

    #[test]
    fn manifest_bytes_are_pinned() {
        let b = sample().encode();
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex.len(), 2 * (HEADER_LEN + 32 + 24 + 2 * 32));
        let header = concat!(
            "5350574d414e4946",
            "0100",
            "0000",
            "60000000",
            "01010101010101010101010101010101",
            "0200000000000000",
            "0300000000000000",
            "0400000000000000",
            "0020000000000000",
            "0600000000000000",
            "01000000",
            "02000000",
            "7800000000000000",
            "01703c7b",
            "5ac0b757"
        );
        assert_eq!(&hex[..192], header);
        let body = concat!(
            // chunk 5: kind 1, codec 1, 1 frame, object 1000 bytes, 2 blocks
            "0500000000000000",
            "0101",
            "0000",
            "01000000",
            "e803000000000000",
            "02000000",
            "00000000",
            // its frame: offset 64, stored 100, raw 8192, crc 7, compressed
            "4000000000000000",
            "64000000",
            "00200000",
            "07000000",
            "01000000",
            // run: blocks 10..12 at chunk 5, frame 0, idx 0
            "0a00000000000000",
            "02000000",
            "00000000",
            "0500000000000000",
            "00000000",
            "00000000",
            // run: block 20, zeroed but allocated
            "1400000000000000",
            "01000000",
            "01000000",
            "0000000000000000",
            "00000000",
            "00000000"
        );
        assert_eq!(&hex[192..], body);
    }
}
