//! PAR2 recovery objects beside chunk objects: `chunks/X.par2` protects `chunks/X`.
//!
//! The recovery object is a genuine PAR 2.0 file naming the chunk by its file name `X`, so
//! in a local backend directory `par2 verify X.par2` and `par2 repair X.par2` work on it
//! as they are. spillway repairs with it on its own: a frame that fails its checksum makes
//! the store fetch both objects, rebuild the damaged slices, write the chunk back and read
//! again. See `docs/chunk.md` ("Recovery objects").

use bytes::Bytes;
use tracing::warn;

use super::format;
use super::set::chunk_key;
use super::ChunkError;
use crate::backend::{BackendError, DynBackend};
use crate::codec::par2::{self, RepairOutcome};

/// Key of the recovery object of chunk `id`.
pub fn recovery_key(id: u64) -> String {
    format!("chunks/{id:016x}.par2")
}

/// The chunk's file name, as the recovery object names it (the key without its folder).
pub fn file_name(id: u64) -> String {
    format!("{id:016x}")
}

/// The chunk id a recovery object's key names.
pub fn key_recovery(key: &str) -> Option<u64> {
    let name = key.strip_prefix("chunks/")?.strip_suffix(".par2")?;
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// The recovery object for chunk `id` with `object` as its bytes, `percent` redundancy.
pub fn create(id: u64, object: &[u8], percent: u8) -> Result<Vec<u8>, ChunkError> {
    par2::create(&file_name(id), object, u32::from(percent))
        .map_err(|source| ChunkError::Recovery { chunk: id, source })
}

/// Check `object` against its recovery data and rebuild damaged slices in place.
pub fn repair(id: u64, object: &mut Vec<u8>, recovery: &[u8]) -> Result<RepairOutcome, ChunkError> {
    par2::verify_and_repair(&file_name(id), object, recovery)
        .map_err(|source| ChunkError::Recovery { chunk: id, source })
}

/// Chunk `id`'s content is intact (`content`), but is its transport wrapping? When the
/// backend refuses the object as corrupt (a yEnc CRC that fails), write the content anew.
/// Returns whether it did.
pub async fn rewrap_if_damaged(backend: &DynBackend, id: u64, content: Bytes) -> Result<bool, BackendError> {
    match backend.get(&chunk_key(id)).await {
        Err(BackendError::Corrupt { detail, .. }) => {
            backend.put(&chunk_key(id), content).await?;
            warn!(
                chunk = format!("{id:016x}"),
                detail, "chunk with intact content but a damaged yEnc wrapping written anew"
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The volume blocks in frames of `object` that fail their checksums: what is at risk when
/// the chunk cannot be repaired. `None` when the tables themselves are unreadable (then
/// every block of the chunk is).
pub fn damaged_blocks(object: &[u8]) -> Option<Vec<u64>> {
    let t = format::parse_object(object).ok()?;
    let bad: Vec<bool> = t
        .frames
        .iter()
        .map(|f| {
            object
                .get(f.offset as usize..(f.offset + u64::from(f.stored_len)) as usize)
                .is_none_or(|b| crate::crc::crc32c(b) != f.crc)
        })
        .collect();
    Some(t.blocks.iter().filter(|e| bad.get(e.frame as usize).copied().unwrap_or(true)).map(|e| e.block).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::format::{build, BlockIn, ChunkHeader, KIND_SPILL, TRANSPORT_RAW};
    use crate::codec::Compression;
    use crate::wal::record::BLOCK_SIZE;

    #[test]
    fn keys_round_trip_and_do_not_look_like_chunks() {
        assert_eq!(recovery_key(0xa1), "chunks/00000000000000a1.par2");
        assert_eq!(key_recovery(&recovery_key(0xa1)), Some(0xa1));
        assert_eq!(crate::chunk::set::key_chunk(&recovery_key(0xa1)), None);
        assert_eq!(key_recovery("chunks/00000000000000a1"), None);
    }

    #[test]
    fn damaged_chunk_is_rebuilt_and_the_blocks_at_risk_are_named() {
        let datas: Vec<Vec<u8>> =
            (0..64u32).map(|i| (0..BLOCK_SIZE).map(|j| (i * 7 + j as u32) as u8).collect()).collect();
        let ins: Vec<BlockIn> =
            datas.iter().enumerate().map(|(i, d)| BlockIn { block: 100 + i as u64, seq: 1, data: d }).collect();
        let h = ChunkHeader {
            codec: 0,
            kind: KIND_SPILL,
            par2_percent: 10,
            transport: TRANSPORT_RAW,
            volume_id: [1; 16],
            chunk_id: 9,
            wal_segment: 1,
            wal_offset: 0,
        };
        let (obj, _) = build(h, Compression::None, &ins, &[]);
        let rec = create(9, &obj, 10).unwrap();
        let mut bad = obj.clone();
        for b in &mut bad[70_000..70_100] {
            *b ^= 0x55;
        }
        // Bytes 70000..70100 lie in the second frame (bytes 65600..131136, blocks 116..132).
        assert_eq!(damaged_blocks(&bad), Some((116..132).collect::<Vec<u64>>()));
        assert_eq!(damaged_blocks(&obj), Some(vec![]));
        match repair(9, &mut bad, &rec).unwrap() {
            RepairOutcome::Repaired(r) => assert!(!r.slices.is_empty() && r.length_was.is_none()),
            other => panic!("expected a repair, got {other:?}"),
        }
        assert_eq!(bad, obj);
        assert!(matches!(repair(9, &mut bad, &rec), Ok(RepairOutcome::Intact)));
        let mut short = obj[..obj.len() - 10].to_vec();
        assert!(matches!(repair(9, &mut short, &rec), Ok(RepairOutcome::Repaired(_))));
        assert_eq!(short, obj, "a truncated chunk is rebuilt to its full length");
        // Far more damage than 10% recovery data can rebuild.
        let mut ruined = obj.clone();
        for b in ruined.iter_mut().step_by(1000) {
            *b ^= 1;
        }
        assert!(matches!(repair(9, &mut ruined, &rec), Err(ChunkError::Recovery { chunk: 9, .. })));
        assert_eq!(create(9, &obj, 10).unwrap(), rec, "recovery data is deterministic");
    }
}
