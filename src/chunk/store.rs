//! Reading and writing chunk objects through a backend: frames fetched with range reads,
//! checked, decompressed and cached; tables fetched from a chunk's tail.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, warn};

use super::format::{self, ChunkTables, Footer, FOOTER_LEN, HEADER_LEN};
use super::recovery;
use super::set::{chunk_key, ChunkMeta, ChunkSet};
use super::ChunkError;
use crate::backend::{BackendError, DynBackend};
use crate::codec::par2::RepairOutcome;
use crate::codec::Compression;
use crate::store::cache::FrameCache;
use crate::store::index::Loc;
use crate::wal::record::BLOCK_SIZE;

pub struct ChunkStore {
    pub backend: DynBackend,
    pub set: ChunkSet,
    pub cache: FrameCache,
    pub volume_id: [u8; 16],
    /// One repair at a time: a damaged chunk read by many requests is fetched and rebuilt once.
    repair_lock: tokio::sync::Mutex<()>,
    /// Chunks found damaged that their recovery data cannot fix (or that have none): not
    /// fetched again for each read; their intact blocks are still salvaged one by one.
    beyond_repair: parking_lot::Mutex<HashSet<u64>>,
    /// How objects travel to the backend, recorded in each chunk header.
    transport: u8,
}

impl ChunkStore {
    pub fn new(backend: DynBackend, set: ChunkSet, cache_bytes: usize, volume_id: [u8; 16]) -> Self {
        Self {
            backend,
            set,
            cache: FrameCache::new(cache_bytes),
            volume_id,
            repair_lock: tokio::sync::Mutex::new(()),
            beyond_repair: Default::default(),
            transport: format::TRANSPORT_RAW,
        }
    }

    /// The store of a volume whose objects travel with `transport` (recorded in headers).
    pub fn with_transport(mut self, transport: u8) -> Self {
        self.transport = transport;
        self
    }

    pub fn transport(&self) -> u8 {
        self.transport
    }

    /// The decompressed frame holding `loc`, from the cache or the backend.
    pub async fn frame(&self, loc: Loc) -> Result<Arc<Vec<u8>>, ChunkError> {
        if let Some(f) = self.cache.get(loc) {
            metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
            return Ok(f);
        }
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
        let meta = self.set.get(loc.chunk).ok_or(ChunkError::Unknown(loc.chunk))?;
        let data = match self.fetch_frame(&meta, loc.frame).await {
            Err(ChunkError::Damaged { .. }) if self.repair(meta.id).await? => {
                self.fetch_frame(&meta, loc.frame).await?
            }
            r => r?,
        };
        self.cache.insert(loc.chunk, loc.frame, Arc::clone(&data));
        Ok(data)
    }

    /// Repair chunk `id` from its recovery object and write it back. `Ok(true)` when the
    /// chunk now matches its recovery data (read it again), `Ok(false)` when it cannot be
    /// repaired: no recovery object, or damage beyond it. Either way the log says what.
    pub async fn repair(&self, id: u64) -> Result<bool, ChunkError> {
        let _one = self.repair_lock.lock().await;
        if self.beyond_repair.lock().contains(&id) {
            return Ok(false);
        }
        let chunk = format!("{id:016x}");
        let rec = match self.backend.get_for_repair(&recovery::recovery_key(id)).await {
            Ok(b) => b,
            Err(BackendError::NotFound { .. }) => {
                warn!(chunk, "damaged chunk has no recovery object (written without --par2); cannot repair");
                self.beyond_repair.lock().insert(id);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let obj = self.backend.get_for_repair(&chunk_key(id)).await?;
        let (outcome, repaired, at_risk) = tokio::task::spawn_blocking(move || {
            let mut data = obj.to_vec();
            let outcome = recovery::repair(id, &mut data, &rec);
            let at_risk = if outcome.is_err() { recovery::damaged_blocks(&data) } else { Some(Vec::new()) };
            (outcome, data, at_risk)
        })
        .await
        .map_err(|e| ChunkError::Other(format!("repair task failed: {e}")))?;
        match outcome {
            Ok(RepairOutcome::Intact) => {
                // The bytes are right but their yEnc wrapping fails its CRC: write them anew.
                if self.transport == format::TRANSPORT_YENC
                    && recovery::rewrap_if_damaged(&self.backend, id, Bytes::from(repaired)).await?
                {
                    self.cache.drop_chunk(id);
                    metrics::counter!(crate::metrics::CHUNKS_REPAIRED).increment(1);
                }
                Ok(true)
            }
            Ok(RepairOutcome::Repaired(r)) => {
                self.backend.put(&chunk_key(id), Bytes::from(repaired)).await?;
                self.cache.drop_chunk(id);
                metrics::counter!(crate::metrics::CHUNKS_REPAIRED).increment(1);
                warn!(
                    chunk,
                    slices = r.slices.len(),
                    slice_bytes = r.slice_size,
                    byte_ranges = ?r.byte_ranges,
                    "damaged chunk repaired from its recovery object and written back"
                );
                Ok(true)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::CHUNKS_UNREPAIRABLE).increment(1);
                match at_risk {
                    Some(blocks) => error!(
                        chunk,
                        error = %e,
                        blocks = ?blocks,
                        "chunk damaged beyond its recovery data: reads of these volume blocks (4 KiB each) \
                         fail with EIO unless a block's own checksum still holds"
                    ),
                    None => error!(
                        chunk,
                        error = %e,
                        "chunk damaged beyond its recovery data, its block table too: every block in it is at risk"
                    ),
                }
                self.beyond_repair.lock().insert(id);
                Ok(false)
            }
        }
    }

    async fn fetch_frame(&self, meta: &ChunkMeta, frame: u32) -> Result<Arc<Vec<u8>>, ChunkError> {
        let damaged = |detail: String| {
            error!(chunk = format!("{:016x}", meta.id), frame, %detail, "damaged chunk frame: reads of its blocks fail with EIO");
            ChunkError::Damaged { chunk: meta.id, frame, detail }
        };
        let loc = meta.frames.get(frame as usize).ok_or_else(|| damaged("no such frame".into()))?;
        let stored =
            match self.backend.get_range(&chunk_key(meta.id), loc.offset..loc.offset + u64::from(loc.stored_len)).await
            {
                Err(BackendError::Corrupt { detail, .. }) => return Err(damaged(detail)),
                r => r?,
            };
        let raw = format::open_frame(meta.codec, loc, &stored).map_err(|e| damaged(e.to_string()))?;
        Ok(Arc::new(raw))
    }

    /// One block's 4 KiB: from its frame, or, if the frame is damaged, salvaged on its own.
    pub async fn block(&self, loc: Loc) -> Result<Vec<u8>, ChunkError> {
        match self.frame(loc).await {
            Ok(frame) => {
                let at = loc.idx as usize * BLOCK_SIZE;
                let b = frame.get(at..at + BLOCK_SIZE).ok_or_else(|| ChunkError::Damaged {
                    chunk: loc.chunk,
                    frame: loc.frame,
                    detail: format!("no block {} in the frame", loc.idx),
                })?;
                Ok(b.to_vec())
            }
            Err(ChunkError::Damaged { .. }) => self.salvage_block(loc).await,
            Err(e) => Err(e),
        }
    }

    /// Read one block of a damaged frame on its own: decompress what can be, and serve the
    /// block only if its own checksum (from the chunk's block table) holds. Blocks that
    /// share a frame with damage elsewhere stay readable; the damaged block gets an error.
    pub async fn salvage_block(&self, loc: Loc) -> Result<Vec<u8>, ChunkError> {
        let meta = self.set.get(loc.chunk).ok_or(ChunkError::Unknown(loc.chunk))?;
        let lost = |detail: String| {
            error!(chunk = format!("{:016x}", meta.id), frame = loc.frame, idx = loc.idx, %detail, "block lost to chunk damage");
            ChunkError::Damaged { chunk: meta.id, frame: loc.frame, detail }
        };
        let fl = meta.frames.get(loc.frame as usize).ok_or_else(|| lost("no such frame".into()))?;
        let frame_range = fl.offset..fl.offset + u64::from(fl.stored_len);
        let ranged = async {
            let tables = self.fetch_tables(meta.id, meta.object_len).await?;
            let stored = self.backend.get_range(&chunk_key(meta.id), frame_range.clone()).await?;
            Ok::<_, ChunkError>((tables, stored))
        };
        let (tables, stored) = match ranged.await {
            // The transport refuses the object as a whole (yEnc's CRC): take its bytes as
            // they are, and let the chunk's own checksums judge each block.
            Err(ChunkError::Backend(BackendError::Corrupt { .. })) => {
                let obj = self.backend.get_for_repair(&chunk_key(meta.id)).await?;
                let tables = format::parse_object(&obj).map_err(|e| lost(format!("tables unreadable: {e}")))?;
                let stored = obj
                    .get(frame_range.start as usize..frame_range.end as usize)
                    .ok_or_else(|| lost("the object is too short for the frame".into()))?;
                (tables, Bytes::copy_from_slice(stored))
            }
            r => r?,
        };
        let entry = tables
            .blocks
            .iter()
            .find(|e| e.frame == loc.frame && e.offset as usize == loc.idx as usize * BLOCK_SIZE)
            .ok_or_else(|| lost("the block table does not list this block".into()))?;
        let raw = if fl.compressed {
            meta.codec
                .decompress(&stored, fl.raw_len as usize)
                .map_err(|e| lost(format!("frame does not decompress: {e}")))?
        } else {
            stored.to_vec()
        };
        let start = entry.offset as usize;
        let block = raw.get(start..start + BLOCK_SIZE).ok_or_else(|| lost("frame too short".into()))?;
        if crate::crc::crc32c(block) != entry.crc {
            return Err(lost(format!("block {} fails its checksum", entry.block)));
        }
        tracing::warn!(
            chunk = format!("{:016x}", meta.id),
            frame = loc.frame,
            block = entry.block,
            "block read intact from a damaged frame"
        );
        Ok(block.to_vec())
    }

    /// Start fetching a frame into the cache, if it is not there.
    pub fn prefetch(self: &Arc<Self>, chunk: u64, frame: u32) {
        if self.cache.contains(chunk, frame) || self.set.get(chunk).is_none_or(|m| frame as usize >= m.frames.len()) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = me.frame(Loc { chunk, frame, idx: 0 }).await;
        });
    }

    /// Delete a chunk and its recovery object (if any).
    pub async fn delete_chunk(&self, id: u64) -> Result<(), ChunkError> {
        self.backend.delete(&chunk_key(id)).await?;
        self.backend.delete(&recovery::recovery_key(id)).await?;
        self.beyond_repair.lock().remove(&id);
        Ok(())
    }

    /// A chunk's tables, read from its tail (two range reads), given its object length.
    pub async fn fetch_tables(&self, id: u64, object_len: u64) -> Result<ChunkTables, ChunkError> {
        let key = chunk_key(id);
        let fmt = |source| ChunkError::Format { chunk: id, source };
        if object_len < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(fmt(format::ChunkFormatError::Layout("object too short".into())));
        }
        let fb = self.backend.get_range(&key, object_len - FOOTER_LEN as u64..object_len).await?;
        let footer = Footer::decode(&fb).map_err(fmt)?;
        if footer.table_offset + footer.tables_len() + FOOTER_LEN as u64 != object_len {
            return Err(fmt(format::ChunkFormatError::Layout("tables do not fit the object".into())));
        }
        let header = self.backend.get_range(&key, 0..HEADER_LEN as u64).await?;
        let tables =
            self.backend.get_range(&key, footer.table_offset..footer.table_offset + footer.tables_len()).await?;
        let t = format::parse_tables(&header, &tables, &footer, object_len).map_err(fmt)?;
        if t.header.chunk_id != id {
            return Err(fmt(format::ChunkFormatError::Layout(format!("names itself {:016x}", t.header.chunk_id))));
        }
        Ok(t)
    }
}

/// In-memory metadata for a chunk from its tables.
pub fn meta_from_tables(t: &ChunkTables) -> Result<ChunkMeta, ChunkError> {
    Ok(ChunkMeta {
        id: t.header.chunk_id,
        kind: t.header.kind,
        codec: Compression::from_id(t.header.codec)
            .map_err(|e| ChunkError::Format { chunk: t.header.chunk_id, source: e.into() })?,
        object_len: t.object_len,
        frames: t.frames.clone(),
        blocks: t.blocks.len() as u32,
        live: Default::default(),
    })
}
