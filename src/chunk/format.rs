//! Chunk object format, version 2 (version 1 still reads). Little-endian, fixed-width, CRC32C everywhere. A chunk
//! describes itself fully: its tables name every block (number and sequence number) and
//! every tombstone it carries, so the index can be rebuilt from chunks alone.
//! Documented in `docs/chunk.md`; `tests::chunk_bytes_are_pinned` pins the bytes.
//!
//! ```text
//! header (64 bytes, offset 0)
//!   0 magic "SPWCHUNK"   8 version u16   10 codec u8   11 kind u8 (1 spill, 2 compaction)
//!  12 header_len u16 (64)   14 par2 percent u8 (0: no recovery object)   15 transport u8 (0 raw, 1 yEnc)
//!  16 volume_id [16]   32 chunk_id u64   40 wal_segment u64   48 wal_offset u64
//!  56 crc32c u32 (bytes 0..56)   60 reserved u32
//! frames, back to back from offset 64, each compressed on its own (or raw)
//! frame table: 24 bytes each
//!   offset u64, stored_len u32, raw_len u32, crc32c(stored bytes) u32, flags u8 (1 = compressed), 3 reserved
//! block table: 32 bytes each
//!   block u64, seq u64, frame u32, offset in frame u32, length u32, crc32c(block bytes) u32
//! tombstone table: 24 bytes each
//!   first block u64, seq u64, count u32, flags u32 (1 = keep allocated)
//! footer (48 bytes, at the end)
//!   0 magic "SPWCHEND"   8 table_offset u64   16 frames u32   20 blocks u32   24 tombstones u32
//!  28 crc32c(tables) u32   32 chunk_id u64   40 version u16   42 reserved u16   44 crc32c(bytes 0..44) u32
//! ```

use thiserror::Error;

use crate::codec::{CodecError, Compression};
use crate::wal::record::BLOCK_SIZE;

pub const CHUNK_MAGIC: [u8; 8] = *b"SPWCHUNK";
pub const FOOTER_MAGIC: [u8; 8] = *b"SPWCHEND";
/// Version written. Version 1 differs only in bytes 14..16 of the header, which it left
/// zero (no recovery data, raw transport), so both read the same way.
pub const CHUNK_VERSION: u16 = 2;
const OLDEST_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
pub const FOOTER_LEN: usize = 48;
pub const FRAME_ENTRY: usize = 24;
pub const BLOCK_ENTRY: usize = 32;
pub const TOMB_ENTRY: usize = 24;
/// Blocks per frame: 16 blocks, 64 KiB, the most one 4 KiB read ever fetches.
pub const FRAME_BLOCKS: usize = 16;
pub const KIND_SPILL: u8 = 1;
pub const KIND_COMPACTION: u8 = 2;
pub const TRANSPORT_RAW: u8 = 0;
pub const TRANSPORT_YENC: u8 = 1;
const FLAG_COMPRESSED: u8 = 1;
const FLAG_KEEP_ALLOCATED: u32 = 1;

#[derive(Debug, Error)]
pub enum ChunkFormatError {
    #[error("bad chunk magic")]
    Magic,
    #[error("unsupported chunk version {0}")]
    Version(u16),
    #[error("chunk {0} checksum mismatch")]
    Checksum(&'static str),
    #[error("chunk is inconsistent: {0}")]
    Layout(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub codec: u8,
    pub kind: u8,
    /// PAR2 redundancy of the recovery object `X.par2` written beside it; 0: none.
    pub par2_percent: u8,
    /// How the object travels to the backend: [`TRANSPORT_RAW`] or [`TRANSPORT_YENC`].
    pub transport: u8,
    pub volume_id: [u8; 16],
    pub chunk_id: u64,
    /// For spill chunks: the WAL position (segment, offset) everything up to which is spilled.
    pub wal_segment: u64,
    pub wal_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub crc: u32,
    pub compressed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    pub block: u64,
    pub seq: u64,
    pub frame: u32,
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub first: u64,
    pub seq: u64,
    pub count: u32,
    pub keep_allocated: bool,
}

/// Everything a chunk says about itself, without its frame bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTables {
    pub header: ChunkHeader,
    pub frames: Vec<FrameLoc>,
    pub blocks: Vec<BlockEntry>,
    pub tombstones: Vec<Tombstone>,
    pub object_len: u64,
}

fn u16at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&CHUNK_MAGIC);
        b[8..10].copy_from_slice(&CHUNK_VERSION.to_le_bytes());
        b[10] = self.codec;
        b[11] = self.kind;
        b[12..14].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[14] = self.par2_percent;
        b[15] = self.transport;
        b[16..32].copy_from_slice(&self.volume_id);
        b[32..40].copy_from_slice(&self.chunk_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.wal_segment.to_le_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_le_bytes());
        let crc = crate::crc::crc32c(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ChunkFormatError> {
        if b.len() < HEADER_LEN || b[0..8] != CHUNK_MAGIC {
            return Err(ChunkFormatError::Magic);
        }
        let v = u16at(b, 8);
        if !(OLDEST_VERSION..=CHUNK_VERSION).contains(&v) {
            return Err(ChunkFormatError::Version(v));
        }
        if crate::crc::crc32c(&b[0..56]) != u32at(b, 56) {
            return Err(ChunkFormatError::Checksum("header"));
        }
        if u32at(b, 60) != 0 {
            return Err(ChunkFormatError::Layout("reserved header bytes are not zero".into()));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[16..32]);
        let (par2_percent, transport) = if v == 1 { (0, TRANSPORT_RAW) } else { (b[14], b[15]) };
        Ok(Self {
            codec: b[10],
            kind: b[11],
            par2_percent,
            transport,
            volume_id,
            chunk_id: u64at(b, 32),
            wal_segment: u64at(b, 40),
            wal_offset: u64at(b, 48),
        })
    }
}

/// The footer's fields: where the tables are and how many entries they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub table_offset: u64,
    pub frames: u32,
    pub blocks: u32,
    pub tombstones: u32,
    pub tables_crc: u32,
    pub chunk_id: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..16].copy_from_slice(&self.table_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.frames.to_le_bytes());
        b[20..24].copy_from_slice(&self.blocks.to_le_bytes());
        b[24..28].copy_from_slice(&self.tombstones.to_le_bytes());
        b[28..32].copy_from_slice(&self.tables_crc.to_le_bytes());
        b[32..40].copy_from_slice(&self.chunk_id.to_le_bytes());
        b[40..42].copy_from_slice(&CHUNK_VERSION.to_le_bytes());
        let crc = crate::crc::crc32c(&b[0..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ChunkFormatError> {
        if b.len() != FOOTER_LEN || b[0..8] != FOOTER_MAGIC {
            return Err(ChunkFormatError::Magic);
        }
        if crate::crc::crc32c(&b[0..44]) != u32at(b, 44) {
            return Err(ChunkFormatError::Checksum("footer"));
        }
        let v = u16at(b, 40);
        if !(OLDEST_VERSION..=CHUNK_VERSION).contains(&v) {
            return Err(ChunkFormatError::Version(v));
        }
        Ok(Self {
            table_offset: u64at(b, 8),
            frames: u32at(b, 16),
            blocks: u32at(b, 20),
            tombstones: u32at(b, 24),
            tables_crc: u32at(b, 28),
            chunk_id: u64at(b, 32),
        })
    }

    pub fn tables_len(&self) -> u64 {
        self.frames as u64 * FRAME_ENTRY as u64
            + self.blocks as u64 * BLOCK_ENTRY as u64
            + self.tombstones as u64 * TOMB_ENTRY as u64
    }
}

/// A block to put in a chunk.
pub struct BlockIn<'a> {
    pub block: u64,
    pub seq: u64,
    pub data: &'a [u8],
}

/// Build a whole chunk object. `blocks` must be sorted by block number, without repeats.
/// Returns the object bytes and its tables.
pub fn build(
    header: ChunkHeader,
    codec: Compression,
    blocks: &[BlockIn<'_>],
    tombstones: &[Tombstone],
) -> (Vec<u8>, ChunkTables) {
    let mut out = Vec::with_capacity(HEADER_LEN + blocks.len() * BLOCK_SIZE / 2 + 4096);
    let header = ChunkHeader { codec: codec.id(), ..header };
    out.extend_from_slice(&header.encode());
    let mut frames = Vec::with_capacity(blocks.len().div_ceil(FRAME_BLOCKS));
    let mut entries = Vec::with_capacity(blocks.len());
    let mut raw = Vec::with_capacity(FRAME_BLOCKS * BLOCK_SIZE);
    for (f, group) in blocks.chunks(FRAME_BLOCKS).enumerate() {
        raw.clear();
        for b in group {
            entries.push(BlockEntry {
                block: b.block,
                seq: b.seq,
                frame: f as u32,
                offset: raw.len() as u32,
                len: b.data.len() as u32,
                crc: crate::crc::crc32c(b.data),
            });
            raw.extend_from_slice(b.data);
        }
        let offset = out.len() as u64;
        let (compressed, stored_len) = match codec.compress(&raw) {
            Some(z) => {
                out.extend_from_slice(&z);
                (true, z.len())
            }
            None => {
                out.extend_from_slice(&raw);
                (false, raw.len())
            }
        };
        let crc = crate::crc::crc32c(&out[offset as usize..]);
        frames.push(FrameLoc { offset, stored_len: stored_len as u32, raw_len: raw.len() as u32, crc, compressed });
    }
    let table_offset = out.len() as u64;
    for fr in &frames {
        out.extend_from_slice(&fr.offset.to_le_bytes());
        out.extend_from_slice(&fr.stored_len.to_le_bytes());
        out.extend_from_slice(&fr.raw_len.to_le_bytes());
        out.extend_from_slice(&fr.crc.to_le_bytes());
        out.extend_from_slice(&[u8::from(fr.compressed), 0, 0, 0]);
    }
    for e in &entries {
        out.extend_from_slice(&e.block.to_le_bytes());
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.frame.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
    }
    for t in tombstones {
        out.extend_from_slice(&t.first.to_le_bytes());
        out.extend_from_slice(&t.seq.to_le_bytes());
        out.extend_from_slice(&t.count.to_le_bytes());
        out.extend_from_slice(&(if t.keep_allocated { FLAG_KEEP_ALLOCATED } else { 0 }).to_le_bytes());
    }
    let tables_crc = crate::crc::crc32c(&out[table_offset as usize..]);
    let footer = Footer {
        table_offset,
        frames: frames.len() as u32,
        blocks: entries.len() as u32,
        tombstones: tombstones.len() as u32,
        tables_crc,
        chunk_id: header.chunk_id,
    };
    out.extend_from_slice(&footer.encode());
    let object_len = out.len() as u64;
    let tables = ChunkTables { header, frames, blocks: entries, tombstones: tombstones.to_vec(), object_len };
    (out, tables)
}

/// Parse the tables, given the header bytes, the table bytes and the footer.
pub fn parse_tables(
    header: &[u8],
    tables: &[u8],
    footer: &Footer,
    object_len: u64,
) -> Result<ChunkTables, ChunkFormatError> {
    let header = ChunkHeader::decode(header)?;
    if header.chunk_id != footer.chunk_id {
        return Err(ChunkFormatError::Layout("header and footer name different chunks".into()));
    }
    if tables.len() as u64 != footer.tables_len()
        || footer.table_offset + footer.tables_len() + FOOTER_LEN as u64 != object_len
    {
        return Err(ChunkFormatError::Layout("table sizes do not match the object".into()));
    }
    if crate::crc::crc32c(tables) != footer.tables_crc {
        return Err(ChunkFormatError::Checksum("tables"));
    }
    let nf = footer.frames as usize;
    let nb = footer.blocks as usize;
    let frames: Vec<FrameLoc> = (0..nf)
        .map(|i| {
            let b = &tables[i * FRAME_ENTRY..];
            FrameLoc {
                offset: u64at(b, 0),
                stored_len: u32at(b, 8),
                raw_len: u32at(b, 12),
                crc: u32at(b, 16),
                compressed: b[20] & FLAG_COMPRESSED != 0,
            }
        })
        .collect();
    for f in &frames {
        if f.offset < HEADER_LEN as u64 || f.offset + u64::from(f.stored_len) > footer.table_offset {
            return Err(ChunkFormatError::Layout("a frame lies outside the data area".into()));
        }
    }
    let base = nf * FRAME_ENTRY;
    let blocks: Vec<BlockEntry> = (0..nb)
        .map(|i| {
            let b = &tables[base + i * BLOCK_ENTRY..];
            BlockEntry {
                block: u64at(b, 0),
                seq: u64at(b, 8),
                frame: u32at(b, 16),
                offset: u32at(b, 20),
                len: u32at(b, 24),
                crc: u32at(b, 28),
            }
        })
        .collect();
    for e in &blocks {
        let ok = frames.get(e.frame as usize).is_some_and(|f| e.offset as u64 + e.len as u64 <= f.raw_len as u64);
        if !ok || e.len as usize != BLOCK_SIZE {
            return Err(ChunkFormatError::Layout(format!("block {} points outside its frame", e.block)));
        }
    }
    let base = base + nb * BLOCK_ENTRY;
    let tombstones = (0..footer.tombstones as usize)
        .map(|i| {
            let b = &tables[base + i * TOMB_ENTRY..];
            Tombstone {
                first: u64at(b, 0),
                seq: u64at(b, 8),
                count: u32at(b, 16),
                keep_allocated: u32at(b, 20) & FLAG_KEEP_ALLOCATED != 0,
            }
        })
        .collect();
    Ok(ChunkTables { header, frames, blocks, tombstones, object_len })
}

/// Parse a whole chunk object held in memory.
pub fn parse_object(obj: &[u8]) -> Result<ChunkTables, ChunkFormatError> {
    if obj.len() < HEADER_LEN + FOOTER_LEN {
        return Err(ChunkFormatError::Layout("object too short".into()));
    }
    let footer = Footer::decode(&obj[obj.len() - FOOTER_LEN..])?;
    let start = footer.table_offset as usize;
    let end = obj.len() - FOOTER_LEN;
    if start > end {
        return Err(ChunkFormatError::Layout("table offset past the footer".into()));
    }
    parse_tables(&obj[..HEADER_LEN], &obj[start..end], &footer, obj.len() as u64)
}

/// Check a frame's stored bytes and decompress them.
pub fn open_frame(codec: Compression, loc: &FrameLoc, stored: &[u8]) -> Result<Vec<u8>, ChunkFormatError> {
    if stored.len() != loc.stored_len as usize || crate::crc::crc32c(stored) != loc.crc {
        return Err(ChunkFormatError::Checksum("frame"));
    }
    if loc.compressed {
        Ok(codec.decompress(stored, loc.raw_len as usize)?)
    } else {
        Ok(stored.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ChunkHeader {
        ChunkHeader {
            codec: 0,
            kind: KIND_SPILL,
            par2_percent: 10,
            transport: TRANSPORT_RAW,
            volume_id: [7; 16],
            chunk_id: 3,
            wal_segment: 2,
            wal_offset: 8192,
        }
    }

    #[test]
    fn build_parse_round_trip_and_frames_open() {
        let datas: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; BLOCK_SIZE]).collect();
        let blocks: Vec<BlockIn> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| BlockIn { block: i as u64 * 3, seq: 100 + i as u64, data: d })
            .collect();
        let tombs = [Tombstone { first: 1000, seq: 99, count: 50, keep_allocated: true }];
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            let (obj, t) = build(header(), codec, &blocks, &tombs);
            let parsed = parse_object(&obj).unwrap();
            assert_eq!(parsed, t);
            assert_eq!(t.frames.len(), 3);
            for e in &t.blocks {
                let f = &t.frames[e.frame as usize];
                let raw =
                    open_frame(codec, f, &obj[f.offset as usize..(f.offset + f.stored_len as u64) as usize]).unwrap();
                let d = &raw[e.offset as usize..(e.offset + e.len) as usize];
                assert_eq!(crc32c::crc32c(d), e.crc);
                assert_eq!(d[0] as u64, e.block / 3);
            }
            assert!(t.frames.iter().all(|f| f.raw_len as usize <= FRAME_BLOCKS * BLOCK_SIZE));
        }
    }

    #[test]
    fn damage_is_detected() {
        let d = vec![5u8; BLOCK_SIZE];
        let (obj, t) = build(header(), Compression::Lz4, &[BlockIn { block: 1, seq: 1, data: &d }], &[]);
        let f = t.frames[0];
        let mut stored = obj[f.offset as usize..(f.offset + f.stored_len as u64) as usize].to_vec();
        stored[0] ^= 1;
        assert!(matches!(open_frame(Compression::Lz4, &f, &stored), Err(ChunkFormatError::Checksum("frame"))));
        for i in 0..obj.len() {
            if (f.offset as usize..(f.offset + f.stored_len as u64) as usize).contains(&i) {
                continue;
            }
            let mut bad = obj.clone();
            bad[i] ^= 0x10;
            if let Ok(p) = parse_object(&bad) {
                panic!("flip at {i} went unnoticed: {p:?}");
            }
        }
    }

    /// The bytes of a tiny chunk, pinned: changing the format must change the version.
    #[test]
    fn chunk_bytes_are_pinned() {
        let d = vec![0xABu8; BLOCK_SIZE];
        let tombs = [Tombstone { first: 9, seq: 4, count: 2, keep_allocated: false }];
        let (obj, _) = build(header(), Compression::None, &[BlockIn { block: 5, seq: 6, data: &d }], &tombs);
        assert_eq!(obj.len(), HEADER_LEN + BLOCK_SIZE + FRAME_ENTRY + BLOCK_ENTRY + TOMB_ENTRY + FOOTER_LEN);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let head = concat!(
            "5350574348554e4b",
            "0200",
            "00",
            "01",
            "4000",
            "0a",
            "00",
            "07070707070707070707070707070707",
            "0300000000000000",
            "0200000000000000",
            "0020000000000000",
            "0c2861cf",
            "00000000"
        );
        let tail = concat!(
            // frame: offset 64, stored 4096, raw 4096, crc32c, flags 0
            "4000000000000000",
            "00100000",
            "00100000",
            "PINCRC",
            "00000000",
            // block 5, seq 6, frame 0, offset 0, len 4096, crc32c
            "0500000000000000",
            "0600000000000000",
            "00000000",
            "00000000",
            "00100000",
            "PINCRC",
            // tombstone: first 9, seq 4, count 2, flags 0
            "0900000000000000",
            "0400000000000000",
            "02000000",
            "00000000",
            // footer: magic, table offset 4160, 1 frame, 1 block, 1 tombstone, tables crc, chunk 3, v2
            "5350574348454e44",
            "4010000000000000",
            "01000000",
            "01000000",
            "01000000",
            "febe56c2",
            "0300000000000000",
            "0200",
            "0000",
            "7216494f"
        );
        let block_crc = hex(&crc32c::crc32c(&d).to_le_bytes());
        assert_eq!(block_crc, "93413794");
        assert_eq!(hex(&obj[..HEADER_LEN]), head);
        assert_eq!(hex(&obj[HEADER_LEN + BLOCK_SIZE..]), tail.replace("PINCRC", &block_crc));
    }

    /// A version 1 chunk (bytes 14..16 zero, both versions fields 1) still reads, as a chunk
    /// without recovery data that travels raw.
    #[test]
    fn version_1_chunks_read() {
        let d = vec![0x5Au8; BLOCK_SIZE];
        let (mut obj, _) = build(header(), Compression::None, &[BlockIn { block: 5, seq: 6, data: &d }], &[]);
        obj[8..10].copy_from_slice(&1u16.to_le_bytes());
        obj[14] = 0;
        let crc = crc32c::crc32c(&obj[0..56]);
        obj[56..60].copy_from_slice(&crc.to_le_bytes());
        let f = obj.len() - FOOTER_LEN;
        obj[f + 40..f + 42].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&obj[f..f + 44]);
        obj[f + 44..f + 48].copy_from_slice(&crc.to_le_bytes());
        let t = parse_object(&obj).unwrap();
        assert_eq!((t.header.par2_percent, t.header.transport), (0, TRANSPORT_RAW));
        assert_eq!(t.blocks.len(), 1);
        obj[8..10].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(ChunkHeader::decode(&obj), Err(ChunkFormatError::Version(3))));
    }
}
