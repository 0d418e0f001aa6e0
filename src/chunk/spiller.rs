//! The spiller: moves synced WAL records into chunk objects on the backend, writes the
//! manifest (checkpoint) that lets old segments be reused, and compacts chunks whose live
//! blocks have fallen below a threshold. It runs as one task, off the request path;
//! compression runs on the blocking pool.
//!
//! Spill: take the records between the spill position and the synced end of the log,
//! keep the blocks whose index entry still is that WAL copy (the newest), sort them by
//! block number, pack them into chunks with the log's tombstones, upload, and only then
//! point the index entries (if unchanged) at the chunk.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::base::{Base, BaseRef};
use super::cold::place_after;
use super::format::{self, BlockIn, ChunkHeader, ChunkTables, Tombstone, KIND_COMPACTION, KIND_SPILL};
use super::manifest::{manifest_key, ChunkRecord, Manifest, Run};
use super::recovery::{self, recovery_key};
use super::set::{chunk_key, key_chunk, ChunkMeta};
use super::spill_read::RecordBytes;
use super::store::{meta_from_tables, ChunkStore};
use super::ChunkError;
use crate::backend::retry::backoff;
use crate::codec::Compression;
use crate::io::FileSystem;
use crate::store::index::{BlockState, Loc};
use crate::wal::record::{RecordKind, BLOCK_SIZE};
use crate::wal::segment::DATA_START;
use crate::wal::writer::Shared;

/// One block picked from a WAL range for a chunk: block, sequence number, where it is in
/// the WAL (the index state it had), offset of its bytes in the range's image (past the
/// raw image for a block of an LZ4 record: decompressed there).
type Pick = (u64, u64, BlockState, usize);
/// A chunk uploaded for a WAL range: its id, its tables, the blocks in it.
type Uploaded = (u64, ChunkTables, Vec<Pick>);

/// Most raw bytes of LZ4 WAL records one spill step decompresses (see `spill_range`).
const SPILL_PART_DECOMPRESSED: usize = 64 << 20;

/// Tunables of the spill. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// Default: lz4.
    pub codec: Compression,
    /// PAR2 redundancy of the recovery object written beside each chunk, in percent; 0
    /// writes none. Default: 0.
    pub par2_percent: u8,
    /// Raw block bytes per chunk. Default: 4 MiB.
    pub chunk_bytes: usize,
    /// Synced data older than this is spilled even if its segment is not full. Default: 30 s.
    pub spill_age: Duration,
    /// Least time between two checkpoints, unless the WAL is filling up. Default: 5 s.
    pub manifest_interval: Duration,
    /// Chunks whose live fraction is below this are compacted. Default: 0.7.
    pub compact_below: f64,
    /// Uploads in flight at once. Default: 4.
    pub upload_parallel: usize,
    /// Tests of the WAL layer alone: never spill, keep everything in the log (the WAL
    /// bound still applies). Not a user setting. Default: false.
    pub hold_in_wal: bool,
}

impl Default for SpillConfig {
    fn default() -> Self {
        Self {
            codec: Compression::Lz4,
            par2_percent: 0,
            chunk_bytes: 4 << 20,
            spill_age: Duration::from_secs(30),
            manifest_interval: Duration::from_secs(5),
            compact_below: 0.7,
            upload_parallel: 4,
            hold_in_wal: false,
        }
    }
}

struct State {
    /// WAL position up to which everything is in chunks.
    pos: (u64, u64),
    generation: u64,
    /// Position the last durable manifest resumes replay at.
    manifest_pos: (u64, u64),
    last_manifest: Instant,
    manifest_due: bool,
    /// Chunks dropped from the set, deleted once a manifest without them is durable.
    doomed: Vec<u64>,
    /// Chunks with a block that cannot be read (damage): never compacted, so the blocks
    /// that can be read stay where they are and the lost one keeps failing loudly.
    stuck: HashSet<u64>,
    /// The volume as of `pos`: what a checkpoint records. Reads fall through to it.
    base: Arc<Base>,
    /// Spill chunks of an earlier run that hold data past the loaded manifest, with the
    /// WAL position each spilled up to. `recover` needs them until a durable manifest
    /// covers that position; then they are deleted.
    adopted: Vec<(u64, (u64, u64))>,
    behind_since: Option<Instant>,
}

/// What the spiller did since the volume opened; logged at clean shutdown (the
/// benchmarks read write amplification from it).
#[derive(Default)]
pub struct SpillTotals {
    pub uploaded_bytes: AtomicU64,
    pub chunks_uploaded: AtomicU64,
    pub chunks_compacted: AtomicU64,
    pub chunks_deleted: AtomicU64,
}

pub struct Spiller {
    wal: Arc<Shared>,
    pub store: Arc<ChunkStore>,
    fs: Arc<dyn FileSystem>,
    manifest_path: std::path::PathBuf,
    cfg: SpillConfig,
    next_seq: Arc<AtomicU64>,
    max_segments: usize,
    state: tokio::sync::Mutex<State>,
    spilled: watch::Sender<(u64, u64)>,
    /// Set when a spill met damaged WAL data: nothing past it can ever be spilled, so the
    /// spiller stops and whoever waits for it gets this error.
    failed: Mutex<Option<String>>,
    urgent: AtomicBool,
    wake: Notify,
    stopping: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub totals: SpillTotals,
}

/// Where the spill stood when the volume opened.
pub struct SpillStart {
    pub pos: (u64, u64),
    pub generation: u64,
    /// The state the loaded manifest recorded, shared with the volume's reads.
    pub base: Arc<Base>,
    /// Spill chunks past the manifest (see `State::adopted`).
    pub adopted: Vec<(u64, (u64, u64))>,
}

impl Spiller {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        wal: Arc<Shared>,
        store: Arc<ChunkStore>,
        fs: Arc<dyn FileSystem>,
        manifest_path: std::path::PathBuf,
        cfg: SpillConfig,
        next_seq: Arc<AtomicU64>,
        max_segments: usize,
        start: SpillStart,
    ) -> Arc<Self> {
        let (spilled, _) = watch::channel(start.pos);
        let me = Arc::new(Self {
            wal,
            store,
            fs,
            manifest_path,
            cfg,
            next_seq,
            max_segments,
            state: tokio::sync::Mutex::new(State {
                pos: start.pos,
                generation: start.generation,
                manifest_pos: start.pos,
                last_manifest: Instant::now(),
                manifest_due: false,
                doomed: Vec::new(),
                stuck: HashSet::new(),
                base: start.base,
                adopted: start.adopted,
                behind_since: None,
            }),
            spilled,
            failed: Mutex::new(None),
            urgent: AtomicBool::new(false),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            task: Mutex::new(None),
            totals: SpillTotals::default(),
        });
        let runner = Arc::clone(&me);
        *me.task.lock() = Some(tokio::spawn(async move { runner.run().await }));
        me
    }

    async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.wal.spill_wake.notified() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let urgent = self.urgent.swap(false, Ordering::AcqRel);
            if self.cfg.hold_in_wal || self.failed.lock().is_some() {
                continue;
            }
            match self.round(urgent).await {
                Ok(()) => {}
                Err(ChunkError::WalDamaged(detail)) => self.fail(detail),
                Err(e) => {
                    error!(error = %e, "spill round failed; the data stays in the WAL and the spill tries again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The spill met WAL data it can never move: a record damaged on disk since it was
    /// written (the blocks of a damaged record cannot be read either). Retrying would fail
    /// the same way forever while the WAL fills and writes wait for it; so the volume is
    /// poisoned at once (writes and flushes fail with EIO, reads of undamaged blocks go
    /// on), and whoever waits for the spill gets the error.
    fn fail(&self, detail: String) {
        error!(
            error = %detail,
            "the spill met damaged WAL data and stops; restart the server (with --recovery-mode \
             tolerate-corruption to drop the damaged record and keep the rest)"
        );
        self.wal.poison(&detail);
        *self.failed.lock() = Some(detail);
        // Wake the waiters of `spill_through`, who look at `failed` (set first).
        self.spilled.send_modify(|_| {});
    }

    /// Spill everything synced up to now and wait for it to reach the backend
    /// (`--flush-target backend`).
    pub async fn spill_through(&self, target: (u64, u64)) -> Result<(), ChunkError> {
        let mut rx = self.spilled.subscribe();
        self.urgent.store(true, Ordering::Release);
        self.wake.notify_one();
        let reached = *rx
            .wait_for(|p| *p >= target || self.failed.lock().is_some())
            .await
            .map_err(|_| ChunkError::Other("the spiller stopped".into()))?
            >= target;
        match self.failed.lock().clone() {
            Some(detail) if !reached => Err(ChunkError::WalDamaged(detail)),
            _ => Ok(()),
        }
    }

    /// Stop the background task (a poisoned volume's close: nothing more is spilled).
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Stop the background task, spill everything and write the manifest (clean shutdown).
    pub async fn drain(&self) -> Result<(), ChunkError> {
        self.stop().await;
        if self.cfg.hold_in_wal {
            return Ok(());
        }
        let mut st = self.state.lock().await;
        let target = self.wal.durable_pos();
        if let Err(e) = self.spill_to(&mut st, target).await {
            if let ChunkError::WalDamaged(detail) = &e {
                self.fail(detail.clone());
            }
            return Err(e);
        }
        self.write_manifest(&mut st).await?;
        let t = &self.totals;
        info!(
            uploaded_bytes = t.uploaded_bytes.load(Ordering::Relaxed),
            chunks_uploaded = t.chunks_uploaded.load(Ordering::Relaxed),
            chunks_compacted = t.chunks_compacted.load(Ordering::Relaxed),
            chunks_deleted = t.chunks_deleted.load(Ordering::Relaxed),
            chunks = self.store.set.len(),
            "spill totals since the volume opened"
        );
        Ok(())
    }

    async fn round(&self, urgent: bool) -> Result<(), ChunkError> {
        let mut st = self.state.lock().await;
        let target = self.wal.durable_pos();
        let open = self.wal.segments.read().len();
        let crowded = open * 2 >= self.max_segments;
        // Every segment file taken: the writer waits for one. The high-water mark below
        // may not see it, when a segment already spilled cannot be reused yet (a reply
        // still sends from it, `wal::lend`).
        let full = open >= self.max_segments;
        if target > st.pos {
            let since = *st.behind_since.get_or_insert_with(Instant::now);
            if urgent || full || since.elapsed() >= self.cfg.spill_age {
                // Someone waiting, a full WAL, or an old tail: spill up to the synced end.
                self.spill_to(&mut st, target).await?;
            } else {
                // Otherwise the sealed segments stay in the WAL until they pass the high-water
                // mark, and then only the oldest go. A block rewritten meanwhile has its newer
                // version durable later in the WAL, and its older one is not spilled at all:
                // a working set rewritten in place costs no chunk space. The spiller is still
                // behind after these, so its age clock keeps running: an aged spill still
                // comes `spill_age` after it fell behind, however busy the WAL stays.
                let behind_since = st.behind_since;
                while target.0.saturating_sub(st.pos.0) > self.high_water() {
                    let before = st.pos;
                    let next = (st.pos.0 + 1, 0);
                    self.spill_to(&mut st, next).await?;
                    if st.pos == before {
                        break;
                    }
                }
                if target > st.pos {
                    st.behind_since = behind_since;
                }
            }
        }
        if !urgent {
            // A few rounds at a time, so compaction keeps up with random overwrites. A
            // failed compaction must not hold up the checkpoint below.
            for _ in 0..8 {
                match self.compact(&mut st).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        warn!(error = %e, "compaction failed; it is tried again later");
                        break;
                    }
                }
            }
        }
        // Segments spilled but still kept, waiting for a checkpoint to free them.
        let waiting = st.pos.0.saturating_sub(st.manifest_pos.0);
        let due = st.manifest_due || waiting > 0;
        if due && (crowded || waiting >= 2 || st.last_manifest.elapsed() >= self.cfg.manifest_interval) {
            self.write_manifest(&mut st).await?;
        }
        Ok(())
    }

    /// Sealed segments kept unspilled at most (without an urgent or aged spill): three
    /// quarters of the WAL bound, leaving room for the writer while the oldest spill. At
    /// most the bound less two: a full WAL (the bound, less the segment being written) must
    /// be past the mark, or a writer waiting for a segment would wait for the aged spill.
    fn high_water(&self) -> u64 {
        let max = self.max_segments as u64;
        (max * 3 / 4).min(max.saturating_sub(2)).max(1)
    }

    /// Spill records from the spill position up to `to` (a `(segment, 0)` target means up to
    /// the end of the segment before it).
    async fn spill_to(&self, st: &mut State, to: (u64, u64)) -> Result<(), ChunkError> {
        while st.pos < to {
            let (seg_id, from) = st.pos;
            let seg = {
                let segs = self.wal.segments.read();
                segs.range(seg_id..).next().map(|(_, s)| Arc::clone(s))
            };
            let Some(seg) = seg else { return Ok(()) };
            if seg.id > seg_id {
                st.pos = (seg.id, DATA_START);
                continue;
            }
            let end = match seg.id.cmp(&to.0) {
                std::cmp::Ordering::Equal => to.1,
                std::cmp::Ordering::Less => match seg.sealed_end() {
                    Some(e) => e,
                    None => return Ok(()),
                },
                std::cmp::Ordering::Greater => return Ok(()),
            };
            let from = from.max(DATA_START);
            if end > from {
                self.spill_range(st, seg.id, &seg, from, end).await?;
            }
            st.behind_since = None;
            st.pos = if seg.id < to.0 { (seg.id + 1, DATA_START) } else { (seg.id, end.max(from)) };
            self.spilled.send_replace(st.pos);
        }
        Ok(())
    }

    /// Spill the synced records of `seg` between `from` and `to`. LZ4 records are
    /// decompressed for it, so a range whose LZ4 records hold more than
    /// [`SPILL_PART_DECOMPRESSED`] raw bytes (a segment of compressible data can hold many
    /// times its size) is spilled in parts, one after the other, each bounded so.
    async fn spill_range(
        &self,
        st: &mut State,
        seg_id: u64,
        seg: &crate::wal::segment::Segment,
        from: u64,
        to: u64,
    ) -> Result<(), ChunkError> {
        // The segment lists its records (the writer's or replay's directory): the spill plans
        // from those, and reads only the records it keeps.
        let records = seg.records_noted(from, to);
        let mut parts = Vec::new();
        let (mut start, mut inflated) = (0, 0);
        for (i, (h, _)) in records.iter().enumerate() {
            let n = if h.is_compressed() { h.raw_len() } else { 0 };
            if i > start && inflated + n > SPILL_PART_DECOMPRESSED {
                parts.push(start..i);
                (start, inflated) = (i, 0);
            }
            inflated += n;
        }
        if parts.is_empty() {
            return self.spill_part(st, seg, RecordBytes::unread(records.len()), &records, from, to).await;
        }
        parts.push(start..records.len());
        debug!(segment = seg_id, from, to, parts = parts.len(), "WAL range of LZ4 records spilled in parts");
        for part in parts {
            let part_from = records[part.start].1;
            let part_to = records.get(part.end).map_or(to, |r| r.1);
            let part_bytes = RecordBytes::unread(part.len());
            self.spill_part(st, seg, part_bytes, &records[part], part_from, part_to).await?;
        }
        Ok(())
    }

    /// Spill `records`, the records of `seg` between `from` and `to`; `bytes` reads them.
    async fn spill_part(
        &self,
        st: &mut State,
        seg: &crate::wal::segment::Segment,
        mut bytes: RecordBytes,
        records: &[(crate::wal::record::RecordHeader, u64)],
        from: u64,
        to: u64,
    ) -> Result<(), ChunkError> {
        let seg_id = seg.id;
        // The newest version of each block in the range, in log order (for one block the log
        // order is the write order): a tombstone cuts the data before it. Whatever the live
        // index says now: a newer write may still be in memory only, and until it is
        // durable this version is the one a checkpoint must keep.
        // block -> (seq, index of its record in `records`, index of the block in the record).
        let mut latest: BTreeMap<u64, (u64, usize, u32)> = BTreeMap::new();
        let mut tombs = Vec::new();
        for (i, (h, _)) in records.iter().enumerate() {
            match h.kind {
                RecordKind::Data { .. } => {
                    for k in 0..h.count {
                        latest.insert(h.block + u64::from(k), (h.seq, i, k));
                    }
                }
                RecordKind::Zero { keep_allocated } => {
                    let end = h.block.saturating_add(u64::from(h.count));
                    let cut: Vec<u64> = latest.range(h.block..end).map(|(b, _)| *b).collect();
                    for b in cut {
                        latest.remove(&b);
                    }
                    tombs.push(Tombstone { first: h.block, seq: h.seq, count: h.count, keep_allocated })
                }
                RecordKind::Pad => {}
            }
        }
        // A version whose block already has a newer one durable in the WAL is not needed:
        // a checkpoint at the end of this range replays that newer one. Anything else newer
        // (in memory, or not yet synced, or a trim) may still be lost, so this version stays.
        let durable = self.wal.durable_pos();
        let index = &self.wal.index;
        let kept: Vec<(u64, (u64, usize, u32))> = latest
            .into_iter()
            .filter(|(b, (seq, _, _))| {
                !index.get(*b).is_some_and(|e| e.seq > *seq && e.state.wal_pos().is_some_and(|pos| pos < durable))
            })
            .collect();
        // Only now are the bytes of the records kept read (and checked).
        let needed = kept.iter().map(|(_, (_, i, _))| *i).collect();
        bytes.read(seg, records, &needed)?;
        let mut blocks: Vec<Pick> = Vec::with_capacity(kept.len());
        for (b, (seq, i, k)) in kept {
            let (h, at) = &records[i];
            let wal = BlockState::in_wal_record(seg_id, *at, h.is_compressed(), k).ok_or_else(|| {
                ChunkError::Other(format!("WAL segment {}: compressed record at offset {at}, past 4 GiB", seg.slot))
            })?;
            blocks.push((b, seq, wal, bytes.block(seg, records, i, k)?));
        }
        let per_chunk = (self.cfg.chunk_bytes / BLOCK_SIZE).max(1);
        let img = Arc::new(bytes.into_bytes());
        let mut groups: Vec<Vec<Pick>> = blocks.chunks(per_chunk).map(<[_]>::to_vec).collect();
        if groups.is_empty() && !tombs.is_empty() {
            groups.push(Vec::new());
        }
        let mut jobs = Vec::new();
        for (i, g) in groups.into_iter().enumerate() {
            let id = self.store.set.allocate_id();
            let t = if i == 0 { tombs.clone() } else { Vec::new() };
            jobs.push((id, g, t));
        }
        let n_blocks = blocks.len();
        let results: Vec<Result<Uploaded, ChunkError>> = futures::stream::iter(jobs.into_iter().map(|(id, g, t)| {
            let img = Arc::clone(&img);
            async move {
                let header = self.header(id, KIND_SPILL, (seg_id, to));
                let codec = self.cfg.codec;
                let g2 = g.clone();
                let (obj, tables, rec) = tokio::task::spawn_blocking(move || {
                    let ins: Vec<BlockIn> = g2
                        .iter()
                        .map(|&(block, seq, _, at)| BlockIn { block, seq, data: &img[at..at + BLOCK_SIZE] })
                        .collect();
                    let (obj, tables) = format::build(header, codec, &ins, &t);
                    let rec = with_recovery(id, &obj, header.par2_percent);
                    (obj, tables, rec)
                })
                .await
                .map_err(|e| ChunkError::Other(format!("chunk build failed: {e}")))?;
                self.upload_with_recovery(id, Bytes::from(obj), rec?).await?;
                Ok((id, tables, g))
            }
        }))
        .buffer_unordered(self.cfg.upload_parallel.max(1))
        .collect()
        .await;
        // Chunks that made it stay in the set either way (a failed range is spilled again,
        // and the next checkpoint lets compaction drop what nothing points into).
        let mut done = Vec::with_capacity(results.len());
        let mut failed = None;
        for r in results {
            match r {
                Ok((id, tables, g)) => {
                    self.store.set.insert(meta_from_tables(&tables)?);
                    done.push((id, tables, g));
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Every chunk of the range is durable: the base takes the range, tombstones first
        // (data after a tombstone in the range survived it, above).
        for t in &tombs {
            st.base.zero(t.first, u64::from(t.count), t.keep_allocated, &self.store.set);
        }
        for (id, tables, g) in &done {
            for (e, &(block, _, _, _)) in tables.blocks.iter().zip(g.iter()) {
                let loc = Loc { chunk: *id, frame: e.frame, idx: e.offset / BLOCK_SIZE as u32 };
                st.base.set(block, BaseRef::Chunk(loc), &self.store.set)?;
            }
        }
        // Then the live index lets go of what the base now holds: the range's trims first
        // (a large one hides the base, and writes after it in the range must show), then
        // the WAL copies. A read looks at the index before the base, so it finds either.
        for t in &tombs {
            self.wal.index.clear_zero(t.first, u64::from(t.count), t.seq, t.keep_allocated);
        }
        for (id, _, g) in done {
            let mut live = 0;
            for &(block, seq, wal, _) in &g {
                if self.wal.index.persist(block, seq, wal) {
                    live += 1;
                }
            }
            metrics::counter!(crate::metrics::SPILL_CHUNKS).increment(1);
            metrics::counter!(crate::metrics::SPILL_BLOCKS).increment(g.len() as u64);
            debug!(chunk = format!("{id:016x}"), blocks = g.len(), current = live, "chunk spilled");
        }
        self.wal.index.shrink();
        debug!(segment = seg_id, from, to, blocks = n_blocks, "WAL range spilled");
        Ok(())
    }

    /// The header of a new chunk of this volume, with the pipeline it is written with.
    fn header(&self, id: u64, kind: u8, wal: (u64, u64)) -> ChunkHeader {
        ChunkHeader {
            codec: self.cfg.codec.id(),
            kind,
            par2_percent: self.cfg.par2_percent,
            transport: self.store.transport(),
            volume_id: self.store.volume_id,
            chunk_id: id,
            wal_segment: wal.0,
            wal_offset: wal.1,
        }
    }

    /// Upload a chunk's recovery object (if any), then the chunk: a chunk on the backend
    /// always has the recovery object its header promises.
    async fn upload_with_recovery(&self, id: u64, obj: Bytes, rec: Option<Vec<u8>>) -> Result<(), ChunkError> {
        if let Some(rec) = rec {
            self.upload(recovery_key(id), Bytes::from(rec)).await?;
        }
        self.upload(chunk_key(id), obj).await
    }

    /// Upload, retrying with backoff for as long as it takes; the WAL holds the data
    /// meanwhile. At shutdown, give up after a while (the data stays in the WAL).
    async fn upload(&self, key: String, obj: Bytes) -> Result<(), ChunkError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.store.backend.put(&key, obj.clone()).await {
                Ok(()) => {
                    metrics::counter!(crate::metrics::UPLOAD_BYTES).increment(obj.len() as u64);
                    self.totals.uploaded_bytes.fetch_add(obj.len() as u64, Ordering::Relaxed);
                    if key_chunk(&key).is_some() {
                        self.totals.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
                    }
                    if attempt > 0 {
                        info!(key, attempts = attempt + 1, "backend reachable again; upload done");
                    }
                    return Ok(());
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::UPLOAD_FAILURES).increment(1);
                    if self.stopping.load(Ordering::Acquire) && started.elapsed() > Duration::from_secs(30) {
                        return Err(e.into());
                    }
                    let wait = backoff(Duration::from_millis(100), Duration::from_secs(5), attempt);
                    warn!(key, error = %e, retry_in_ms = wait.as_millis() as u64, "upload failed; writes keep landing in the WAL");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Rewrite the live blocks of chunks below the live threshold into a new chunk.
    async fn compact(&self, st: &mut State) -> Result<bool, ChunkError> {
        let per_chunk = (self.cfg.chunk_bytes / BLOCK_SIZE).max(1);
        let mut victims = Vec::new();
        let mut live_total = 0usize;
        let mut all = self.store.set.all();
        all.sort_by(|a, b| {
            let ra = a.live() as f64 / a.blocks.max(1) as f64;
            let rb = b.live() as f64 / b.blocks.max(1) as f64;
            ra.total_cmp(&rb)
        });
        for c in all.into_iter().filter(|c| !st.stuck.contains(&c.id)) {
            let ratio = c.live() as f64 / c.blocks.max(1) as f64;
            if ratio >= self.cfg.compact_below || c.blocks == 0 {
                // Tombstone-only chunks matter only until the next manifest.
                if c.blocks == 0 && st.pos.0 > st.manifest_pos.0 {
                    continue;
                }
                if c.blocks > 0 {
                    break;
                }
            }
            if live_total + c.live() as usize > per_chunk && !victims.is_empty() {
                break;
            }
            live_total += c.live() as usize;
            victims.push(c);
        }
        if victims.is_empty() {
            return Ok(false);
        }
        let mut ids: HashSet<u64> = victims.iter().map(|c| c.id).collect();
        let entries: Vec<(u64, Loc)> = st.base.refs_into(&ids);
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
        for (_, loc) in &entries {
            if !ids.contains(&loc.chunk) {
                blocks.push(Vec::new());
                continue;
            }
            match self.store.block(*loc).await {
                Ok(b) => blocks.push(b),
                Err(e @ ChunkError::Damaged { .. }) => {
                    error!(chunk = format!("{:016x}", loc.chunk), error = %e,
                        "chunk holds a block that cannot be read; it is left as it is, never compacted");
                    ids.remove(&loc.chunk);
                    st.stuck.insert(loc.chunk);
                    blocks.push(Vec::new());
                }
                Err(e) => return Err(e),
            }
        }
        victims.retain(|c| ids.contains(&c.id));
        let mut data = Vec::with_capacity(entries.len() * BLOCK_SIZE);
        let mut kept = Vec::with_capacity(entries.len());
        for (e, b) in entries.into_iter().zip(blocks) {
            if ids.contains(&e.1.chunk) {
                data.extend_from_slice(&b);
                kept.push(e);
            }
        }
        let entries = kept;
        if victims.is_empty() {
            return Ok(true);
        }
        let mut new_id = None;
        if !entries.is_empty() {
            let id = self.store.set.allocate_id();
            let header = self.header(id, KIND_COMPACTION, st.pos);
            let codec = self.cfg.codec;
            let list: Vec<u64> = entries.iter().map(|e| e.0).collect();
            let data = Arc::new(data);
            let d2 = Arc::clone(&data);
            let (obj, tables, rec) = tokio::task::spawn_blocking(move || {
                let ins: Vec<BlockIn> = list
                    .iter()
                    .enumerate()
                    .map(|(i, &block)| BlockIn { block, seq: 0, data: &d2[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE] })
                    .collect();
                let (obj, tables) = format::build(header, codec, &ins, &[]);
                let rec = with_recovery(id, &obj, header.par2_percent);
                (obj, tables, rec)
            })
            .await
            .map_err(|e| ChunkError::Other(format!("chunk build failed: {e}")))?;
            self.upload_with_recovery(id, Bytes::from(obj), rec?).await?;
            self.store.set.insert(meta_from_tables(&tables)?);
            for (e, (block, from)) in tables.blocks.iter().zip(entries.iter()) {
                let to = Loc { chunk: id, frame: e.frame, idx: e.offset / BLOCK_SIZE as u32 };
                st.base.relocate(*block, *from, to, &self.store.set)?;
            }
            new_id = Some(id);
        }
        // Reads reach chunks through the base only; if it still points into a victim (it
        // should not), keep that chunk rather than break a read.
        let still_read: HashSet<u64> = st.base.refs_into(&ids).into_iter().map(|(_, l)| l.chunk).collect();
        for c in &victims {
            if still_read.contains(&c.id) {
                error!(chunk = format!("{:016x}", c.id), "compaction left reads pointing into a chunk; it is kept");
                st.stuck.insert(c.id);
                continue;
            }
            self.store.set.remove(c.id);
            st.doomed.push(c.id);
        }
        st.manifest_due = true;
        metrics::counter!(crate::metrics::GC_CHUNKS_COMPACTED).increment(victims.len() as u64);
        self.totals.chunks_compacted.fetch_add(victims.len() as u64, Ordering::Relaxed);
        debug!(victims = victims.len(), blocks = entries.len(), new = ?new_id, "chunks compacted");
        Ok(true)
    }

    /// Snapshot the persisted part of the index and write it, locally and to the backend.
    /// Then older segments may be reused and doomed chunks deleted.
    async fn write_manifest(&self, st: &mut State) -> Result<(), ChunkError> {
        let m = self.snapshot(st);
        let bytes = m.encode();
        let fs = Arc::clone(&self.fs);
        let path = self.manifest_path.clone();
        let local = bytes.clone();
        tokio::task::spawn_blocking(move || fs.write_file_atomic(&path, &local))
            .await
            .map_err(|e| ChunkError::Other(format!("manifest write task failed: {e}")))?
            .map_err(|e| ChunkError::Other(format!("writing {}: {e}", self.manifest_path.display())))?;
        self.store.backend.put(&manifest_key(m.generation), Bytes::from(bytes)).await?;
        st.generation = m.generation;
        st.manifest_pos = m.replay_from;
        st.last_manifest = Instant::now();
        st.manifest_due = false;
        self.wal.set_recyclable_before(m.replay_from.0);
        metrics::counter!(crate::metrics::MANIFESTS_WRITTEN).increment(1);
        debug!(generation = m.generation, chunks = m.chunks.len(), runs = m.runs.len(), "manifest written");
        for id in std::mem::take(&mut st.doomed) {
            if let Err(e) = self.store.delete_chunk(id).await {
                warn!(chunk = format!("{id:016x}"), error = %e, "deleting a compacted chunk failed; it is retried");
                st.doomed.push(id);
                continue;
            }
            self.store.cache.drop_chunk(id);
            metrics::counter!(crate::metrics::GC_CHUNKS_DELETED).increment(1);
            self.totals.chunks_deleted.fetch_add(1, Ordering::Relaxed);
        }
        let covered: Vec<u64> = st.adopted.iter().filter(|a| a.1 <= m.replay_from).map(|a| a.0).collect();
        for id in covered {
            match self.store.delete_chunk(id).await {
                Ok(()) => st.adopted.retain(|a| a.0 != id),
                Err(e) => {
                    warn!(chunk = format!("{id:016x}"), error = %e, "deleting a superseded chunk failed; it is retried")
                }
            }
        }
        if m.generation > 2 {
            let _ = self.store.backend.delete(&manifest_key(m.generation - 2)).await;
        }
        Ok(())
    }

    fn snapshot(&self, st: &State) -> Manifest {
        snapshot(
            &st.base,
            &self.store.set,
            self.store.volume_id,
            st.generation + 1,
            self.next_seq.load(Ordering::Acquire),
            st.pos,
        )
    }
}

/// A manifest of `base`: every chunk of `set`, and runs of blocks.
pub fn snapshot(
    base: &Base,
    set: &super::set::ChunkSet,
    volume_id: [u8; 16],
    generation: u64,
    next_seq: u64,
    replay_from: (u64, u64),
) -> Manifest {
    let chunks: Vec<Arc<ChunkMeta>> = set.all();
    let mut runs: Vec<Run> = Vec::new();
    for (first, count, r) in base.runs() {
        let loc = match r {
            BaseRef::Chunk(l) => Some(l),
            BaseRef::Zeroed => None,
        };
        // The base splits runs at its region edges; a manifest run carries on across them.
        if let Some(prev) = runs.last_mut() {
            let follows = match (prev.loc, loc) {
                (None, None) => true,
                (Some(p), Some(l)) => p.chunk == l.chunk && place_after(p, prev.count) == l,
                _ => false,
            };
            if prev.first + u64::from(prev.count) == first && follows && prev.count.checked_add(count).is_some() {
                prev.count += count;
                continue;
            }
        }
        runs.push(Run { first, count, loc });
    }
    Manifest {
        volume_id,
        generation,
        next_seq,
        replay_from,
        next_chunk_id: set.next_id(),
        chunks: chunks
            .iter()
            .map(|c| ChunkRecord {
                id: c.id,
                kind: c.kind,
                codec: c.codec.id(),
                object_len: c.object_len,
                blocks: c.blocks,
                frames: c.frames.clone(),
            })
            .collect(),
        runs,
    }
}

/// The recovery object of a chunk just built, when the pipeline asks for one.
fn with_recovery(id: u64, obj: &[u8], percent: u8) -> Result<Option<Vec<u8>>, ChunkError> {
    if percent == 0 {
        return Ok(None);
    }
    recovery::create(id, obj, percent).map(Some)
}
