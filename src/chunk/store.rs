//! Reading and writing chunk objects through a backend: frames fetched with range reads,
//! checked, decompressed and cached; tables fetched from a chunk's tail.

use std::sync::Arc;

use bytes::Bytes;
use tracing::error;

use super::format::{self, ChunkTables, Footer, FOOTER_LEN, HEADER_LEN};
use super::set::{chunk_key, ChunkMeta, ChunkSet};
use super::ChunkError;
use crate::backend::DynBackend;
use crate::codec::Compression;
use crate::store::cache::FrameCache;
use crate::store::index::Loc;

pub struct ChunkStore {
    pub backend: DynBackend,
    pub set: ChunkSet,
    pub cache: FrameCache,
    pub volume_id: [u8; 16],
}

impl ChunkStore {
    pub fn new(backend: DynBackend, set: ChunkSet, cache_bytes: usize, volume_id: [u8; 16]) -> Self {
        Self { backend, set, cache: FrameCache::new(cache_bytes), volume_id }
    }

    /// The decompressed frame holding `loc`, from the cache or the backend.
    pub async fn frame(&self, loc: Loc) -> Result<Arc<Vec<u8>>, ChunkError> {
        if let Some(f) = self.cache.get(loc) {
            metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
            return Ok(f);
        }
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
        let meta = self.set.get(loc.chunk).ok_or(ChunkError::Unknown(loc.chunk))?;
        let data = self.fetch_frame(&meta, loc.frame).await?;
        self.cache.insert(loc.chunk, loc.frame, Arc::clone(&data));
        Ok(data)
    }

    async fn fetch_frame(&self, meta: &ChunkMeta, frame: u32) -> Result<Arc<Vec<u8>>, ChunkError> {
        let damaged = |detail: String| {
            error!(chunk = format!("{:016x}", meta.id), frame, %detail, "damaged chunk frame: reads of its blocks fail with EIO");
            ChunkError::Damaged { chunk: meta.id, frame, detail }
        };
        let loc = meta.frames.get(frame as usize).ok_or_else(|| damaged("no such frame".into()))?;
        let stored =
            self.backend.get_range(&chunk_key(meta.id), loc.offset..loc.offset + u64::from(loc.stored_len)).await?;
        let raw = format::open_frame(meta.codec, loc, &stored).map_err(|e| damaged(e.to_string()))?;
        Ok(Arc::new(raw))
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

    pub async fn put_chunk(&self, id: u64, object: Bytes) -> Result<(), ChunkError> {
        self.backend.put(&chunk_key(id), object).await?;
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
