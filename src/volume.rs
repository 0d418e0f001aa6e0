//! `Volume`: a durable block device, composed of the block index, the arena, the WAL and
//! the chunk objects the spiller moves the WAL into.
//!
//! Write: split into blocks; partial blocks are read, modified and written whole under a
//! per-block lock; the data is copied once into the arena, the index marks the blocks Hot
//! with a fresh sequence number, and the record is queued to the WAL writer. The reply
//! waits for the covering sync in strict mode and for FUA; otherwise it goes at once.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbd::pool::PooledBuf;
use nbd::{BlockDevice, Extent, ReadData, WriteBuffer, ZeroFlags};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::backend::{BackendError, DynBackend};
use crate::chunk::base::{Base, BaseRef};
use crate::chunk::rebuild::{adopt_or_clean, apply_manifest};
use crate::chunk::set::ChunkSet;
use crate::chunk::spiller::{SpillConfig, SpillStart, Spiller};
use crate::chunk::store::ChunkStore;
use crate::chunk::ChunkError;
use crate::error::VolumeError;
use crate::io::FileSystem;
use crate::store::arena::{Arena, Fresh, SlotId, SLAB_BYTES};
use crate::store::index::{BlockState, Entry, Index, Loc};
use crate::store::lend::{Lender, LEND_MIN_BLOCKS, LEND_RESERVE_BYTES};
use crate::store::receive::{Receiving, RECEIVE_MIN_BLOCKS};
use crate::volume_meta::{VolumeMeta, META_FILE, TRANSPORT_RAW, TRANSPORT_YENC};
use crate::wal::lend;
use crate::wal::record::{RecordHeader, RecordKind, BLOCK_SIZE, HEADER_LEN};
use crate::wal::replay::replay;
use crate::wal::writer::{Op, Shared, WalConfig, Writer};
use crate::wal::{Durability, RecoveryMode, SyncPolicy, WalCompress};

const BS: u64 = BLOCK_SIZE as u64;
/// Blocks in one WAL data record (256 KiB).
pub const MAX_RECORD_BLOCKS: u64 = 64;
/// Per-block locks, by block number modulo this.
const STRIPES: usize = 4096;
/// Decompressed WAL records kept for reads (each at most 256 KiB), so that a sequential
/// read of a record decompresses it once, not once per block.
const LZ4_CACHE_RECORDS: usize = 8;
/// One block-status answer covers at most this many blocks; the client asks again.
const STATUS_MAX_BLOCKS: u64 = 65536;

/// Tunables of a durable volume. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Size for a new volume. Default: 1 GiB (`None` on an existing volume: keep its size).
    pub size: Option<u64>,
    /// Default: batched.
    pub durability: Durability,
    /// Batched mode: longest time written data stays unsynced. Default: 100 ms.
    pub sync_interval: Duration,
    /// Batched mode: most bytes written but unsynced. Default: 16 MiB.
    pub sync_bytes: u64,
    /// WAL segment file size. Default: 32 MiB.
    pub segment_bytes: u64,
    /// WAL writes are padded to this boundary. Default: 4096.
    pub wal_align: u64,
    /// Batched mode: writes wait in memory until this much is queued (or the sync interval
    /// is up, or a FLUSH or FUA write comes) and go to the WAL in one append; at most
    /// `sync_bytes` and half of `max_dirty_bytes` (the smaller wins). 0: each batch is
    /// appended at once. Default: 0 (`serve` defaults to 1 MiB).
    pub wal_append: u64,
    /// How WAL data records are stored (LZ4 when it saves an eighth or more). Default: none.
    pub wal_compress: WalCompress,
    /// Memory for data not yet written to the WAL; writers wait at the bound. Default: 128 MiB.
    pub max_dirty_bytes: usize,
    /// Shards of the block index. Default: 16.
    pub index_shards: usize,
    /// Default: tolerate a torn tail only.
    pub recovery: RecoveryMode,
    /// Most WAL segment files; past it, writes wait for the spill. Default: 32 (1 GiB).
    pub max_wal_segments: usize,
    /// Memory for decompressed chunk frames. Default: 64 MiB.
    pub cache_bytes: usize,
    /// Frames fetched ahead of a sequential read (0: off). Default: 2.
    pub readahead_frames: u32,
    /// Where a FLUSH or FUA reply lands. Default: local.
    pub flush_target: FlushTarget,
    /// The spill to chunks.
    pub spill: SpillConfig,
    /// A new volume's objects travel yEnc-encoded; an existing volume keeps its transport,
    /// and `true` on a raw one is refused. Default: false.
    pub yenc: bool,
}

/// Where a FLUSH (or FUA) reply means the data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlushTarget {
    /// Durable in the local WAL; the backend catches up in the background.
    Local,
    /// In a chunk on the backend (the reply waits for the upload).
    Backend,
}

/// Name of the local copy of the newest manifest, in the volume directory.
pub const MANIFEST_FILE: &str = "manifest";
/// Backend key of the volume's identity and size.
pub const BACKEND_META_KEY: &str = "volume.meta";

pub const DEFAULT_SIZE: u64 = 1 << 30;

impl Default for VolumeConfig {
    fn default() -> Self {
        Self {
            size: None,
            durability: Durability::Batched,
            sync_interval: Duration::from_millis(100),
            sync_bytes: 16 << 20,
            segment_bytes: 32 << 20,
            wal_align: 4096,
            wal_append: 0,
            wal_compress: WalCompress::None,
            max_dirty_bytes: 128 << 20,
            index_shards: 16,
            recovery: RecoveryMode::TolerateTail,
            max_wal_segments: 32,
            cache_bytes: 64 << 20,
            readahead_frames: 2,
            flush_target: FlushTarget::Local,
            spill: SpillConfig::default(),
            yenc: false,
        }
    }
}

impl VolumeConfig {
    /// Refuse settings the engine cannot honour, with the reason.
    pub fn validate(&self) -> Result<(), VolumeError> {
        let bad = |what: String| Err(VolumeError::Config(what));
        let max_record = MAX_RECORD_BLOCKS * BS + 2 * crate::wal::record::HEADER_LEN as u64;
        if self.wal_align == 0 || !self.wal_align.is_power_of_two() || self.wal_align > (1 << 20) {
            return bad(format!("wal_align {} must be a power of two up to 1 MiB", self.wal_align));
        }
        if self.segment_bytes < 1 << 20 || self.segment_bytes > u64::from(u32::MAX) {
            return bad(format!("segment size {} must be between 1 MiB and 4 GiB", self.segment_bytes));
        }
        if self.segment_bytes < crate::wal::segment::DATA_START + max_record + 2 * self.wal_align {
            return bad(format!(
                "segment size {} is too small for the alignment {}",
                self.segment_bytes, self.wal_align
            ));
        }
        if self.max_dirty_bytes < 40 << 20 {
            return bad(format!(
                "max_dirty_bytes {} must be at least 40 MiB (a 32 MiB request must fit)",
                self.max_dirty_bytes
            ));
        }
        if self.sync_bytes == 0 || self.sync_interval.is_zero() {
            return bad("sync_bytes and sync_interval must be greater than zero".into());
        }
        if self.max_wal_segments < 3 {
            return bad(format!("max_wal_segments {} must be at least 3", self.max_wal_segments));
        }
        if self.spill.par2_percent > 100 {
            return bad(format!("par2 {}% must be between 0 and 100", self.spill.par2_percent));
        }
        if self.spill.chunk_bytes < BLOCK_SIZE || self.spill.chunk_bytes > 64 << 20 {
            return bad(format!("chunk size {} must be between 4 KiB and 64 MiB", self.spill.chunk_bytes));
        }
        if !(0.0..1.0).contains(&self.spill.compact_below) {
            return bad(format!("compaction threshold {} must be in [0, 1)", self.spill.compact_below));
        }
        if self.size == Some(0) || self.size.is_some_and(|s| s % 512 != 0) {
            return bad("the size must be a positive multiple of 512 bytes".into());
        }
        Ok(())
    }
}

pub struct Volume {
    size: u64,
    durability: Durability,
    /// Note each written block's CRC32C as it is staged, while it is in the cache
    /// ([`Arena::fill_summed`]): in strict and batched modes, where blocks go to the WAL
    /// soon, as raw records. (Relaxed and async modes hold writes back and may never log
    /// a rewritten block; LZ4 records checksum their compressed bytes.)
    sum_blocks: bool,
    shared: Arc<Shared>,
    /// Blocks whose newest version is in memory or in the WAL (or a trim not yet spilled).
    index: Arc<Index>,
    /// Every spilled block, compactly; reads fall through to it past the index.
    base: Arc<Base>,
    arena: Arc<Arena>,
    /// Lends runs of in-memory blocks to read replies.
    lender: Lender,
    /// WAL segments replies may send from at once ([`lend::max_lent_segments`]).
    max_lent_segments: usize,
    /// Bytes of read replies lent from the arena and from WAL mappings, registered once.
    lent_arena_bytes: metrics::Counter,
    lent_wal_bytes: metrics::Counter,
    stripes: Box<[Mutex<()>]>,
    next_seq: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
    chunks: Arc<ChunkStore>,
    spiller: Arc<Spiller>,
    flush_target: FlushTarget,
    readahead: u32,
    /// Last block read, for sequential readahead.
    last_read: AtomicU64,
    /// Recently decompressed LZ4 WAL records by (segment id, record offset), newest last.
    /// Segment ids are never reused, so an entry cannot go stale.
    lz4_cache: Mutex<Lz4Cache>,
}

/// Decompressed LZ4 WAL records by (segment id, record offset), oldest first.
type Lz4Cache = VecDeque<((u64, u32), Arc<[u8]>)>;

/// Where one block's bytes come from for a read.
enum Src {
    Copied,
    Wal {
        segment: u64,
        offset: u64,
    },
    /// Block `idx` of the LZ4 record at `record` in WAL segment `segment`.
    Lz4 {
        segment: u64,
        record: u32,
        idx: u32,
    },
    Chunk(Loc),
}

/// Why staging a write must step back: a partial block's old bytes are in a chunk frame
/// that is not cached. The caller fetches it, without locks held, and tries again.
enum Stage {
    Fetch(Loc),
    Failed(VolumeError),
}

impl From<VolumeError> for Stage {
    fn from(e: VolumeError) -> Self {
        Stage::Failed(e)
    }
}

impl Volume {
    /// Open (or create) the volume in `dir` with its chunks on `backend`: load the
    /// manifest, replay the WAL after it, and start the WAL writer and the spiller.
    pub async fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        backend: DynBackend,
        cfg: VolumeConfig,
    ) -> Result<Self, VolumeError> {
        cfg.validate()?;
        let wal_dir = dir.join("wal");
        fs.create_dir_all(&wal_dir).map_err(|e| VolumeError::io(format!("creating {}", wal_dir.display()), e))?;
        let meta = load_or_create_meta(&*fs, dir, cfg.size, cfg.yenc)?;
        let backend = with_transport(backend, meta.transport);
        check_backend_meta(&backend, &meta).await?;
        let index = Arc::new(Index::new(cfg.index_shards));
        let store = Arc::new(
            ChunkStore::new(backend, ChunkSet::new(1), cfg.cache_bytes, meta.volume_id).with_transport(meta.transport),
        );
        let manifest_path = dir.join(MANIFEST_FILE);
        let base = Arc::new(Base::new());
        let manifest = match fs
            .read_file(&manifest_path)
            .map_err(|e| VolumeError::io(format!("reading {}", manifest_path.display()), e))?
        {
            Some(bytes) => {
                let m = crate::chunk::manifest::Manifest::decode(&bytes).map_err(|e| {
                    VolumeError::Config(format!(
                        "{} is damaged ({e}); run `spillway recover` to rebuild it from the backend",
                        manifest_path.display()
                    ))
                })?;
                if m.volume_id != meta.volume_id {
                    return Err(VolumeError::Config(format!("{} belongs to another volume", manifest_path.display())));
                }
                apply_manifest(&m, &base, &store.set)?;
                Some(m)
            }
            None => None,
        };
        let from = manifest.as_ref().map_or((0, 0), |m| m.replay_from);
        let orphans = adopt_or_clean(&store, from).await?;
        let replayed = replay(&*fs, &wal_dir, meta.volume_id, cfg.recovery, &index, from)?;
        let next_seq = Arc::new(AtomicU64::new(
            replayed.next_seq.max(manifest.as_ref().map_or(1, |m| m.next_seq)).max(orphans.max_seq + 1),
        ));
        // The arena holds the dirty budget (in whole slabs) and the reserve for lent reads.
        let dirty_bytes = cfg.max_dirty_bytes.div_ceil(SLAB_BYTES).max(1) * SLAB_BYTES;
        let arena = Arc::new(Arena::new(dirty_bytes + LEND_RESERVE_BYTES));
        let dirty = Arc::new(Semaphore::new(dirty_bytes));
        let shared = Shared::new(Arc::clone(&index), Arc::clone(&arena), dirty, 0);
        // Moved, not cloned: the writer recycles a segment only when no one else holds it.
        shared.segments.write().extend(replayed.segments.into_iter().map(|s| (s.id, s)));
        shared.set_recyclable_before(from.0);
        let wal_cfg = WalConfig {
            dir: wal_dir,
            segment_bytes: cfg.segment_bytes,
            align: cfg.wal_align,
            policy: SyncPolicy { durability: cfg.durability, interval: cfg.sync_interval, bytes: cfg.sync_bytes },
            volume_id: meta.volume_id,
            max_segments: cfg.max_wal_segments,
            // Relaxed and async modes keep up to half the dirty budget of unflushed writes
            // in memory, so overwrites cost no log space; the other half keeps writers
            // moving while the held data is logged. Batched mode gathers `wal_append`.
            hold_bytes: match cfg.durability {
                Durability::Strict => 0,
                Durability::Batched => cfg.wal_append.min(cfg.sync_bytes).min((dirty_bytes / 2) as u64),
                Durability::Relaxed | Durability::Async => (dirty_bytes / 2) as u64,
            },
            compress_lz4: cfg.wal_compress == WalCompress::Lz4,
        };
        let writer = Writer::start(
            Arc::clone(&shared),
            Arc::clone(&fs),
            wal_cfg,
            replayed.last,
            replayed.free_slots,
            replayed.next_slot,
        )?;
        let handle = std::thread::Builder::new()
            .name("spillway-wal".into())
            .spawn(move || writer.run())
            .map_err(|e| VolumeError::io("starting the WAL writer thread", e))?;
        let spiller = Spiller::start(
            Arc::clone(&shared),
            Arc::clone(&store),
            fs,
            manifest_path,
            cfg.spill.clone(),
            Arc::clone(&next_seq),
            cfg.max_wal_segments,
            SpillStart {
                pos: from,
                generation: manifest.as_ref().map_or(0, |m| m.generation),
                base: Arc::clone(&base),
                adopted: orphans.adopted,
            },
        );
        info!(
            dir = %dir.display(),
            size = meta.size,
            blocks = base.len(),
            in_memory_or_wal = index.len(),
            chunks = store.set.len(),
            backend = %store.backend.describe(),
            durability = cfg.durability.name(),
            pipeline = %crate::chunk::pipeline_name(cfg.spill.codec, cfg.spill.par2_percent, meta.transport),
            "volume opened"
        );
        Ok(Self {
            size: meta.size,
            durability: cfg.durability,
            sum_blocks: matches!(cfg.durability, Durability::Strict | Durability::Batched)
                && cfg.wal_compress != WalCompress::Lz4,
            shared,
            index,
            base,
            lender: Lender::new(Arc::clone(&arena)),
            max_lent_segments: lend::max_lent_segments(cfg.max_wal_segments),
            lent_arena_bytes: metrics::counter!(crate::metrics::READ_LENT_BYTES, "from" => "arena"),
            lent_wal_bytes: metrics::counter!(crate::metrics::READ_LENT_BYTES, "from" => "wal"),
            arena,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_seq,
            writer: Mutex::new(Some(handle)),
            dir: dir.to_owned(),
            chunks: store,
            spiller,
            flush_target: cfg.flush_target,
            readahead: cfg.readahead_frames,
            last_read: AtomicU64::new(u64::MAX),
            lz4_cache: Mutex::new(VecDeque::with_capacity(LZ4_CACHE_RECORDS)),
        })
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Entries in the live index: blocks in memory or in the WAL, and trims not yet
    /// spilled (for measurements).
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Blocks in the base: spilled into chunks (for measurements).
    pub fn spilled_blocks(&self) -> u64 {
        self.base.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sync what is written, stop the writer, spill everything to the backend and write
    /// the manifest. Later requests fail.
    pub async fn close(&self) -> Result<(), VolumeError> {
        self.shared.close();
        let handle = self.writer.lock().take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|_| VolumeError::io("joining the WAL writer", std::io::ErrorKind::Other.into()))?
                .map_err(|_| VolumeError::io("the WAL writer panicked", std::io::ErrorKind::Other.into()))?;
        }
        if self.shared.is_poisoned() {
            self.spiller.stop().await;
            return Err(self.shared.poisoned_error().into());
        }
        self.spiller.drain().await?;
        Ok(())
    }

    /// Spill everything synced so far to the backend and wait for it.
    pub async fn spill_now(&self) -> Result<(), VolumeError> {
        let target = self.shared.durable_pos();
        Ok(self.spiller.spill_through(target).await?)
    }

    /// Syncs made and other counters are visible through the file-system seam; this is
    /// the WAL's own view, for tests.
    pub fn durable_progress(&self) -> crate::wal::writer::Progress {
        self.shared.progress()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VolumeError::OutOfRange { offset, len, size: self.size }),
        }
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.shared.is_poisoned() {
            return Err(self.shared.poisoned_error().into());
        }
        Ok(())
    }

    /// Lock the stripes of `count` blocks from `first`, in ascending order.
    fn lock_blocks(&self, first: u64, count: u64) -> Vec<MutexGuard<'_, ()>> {
        if count >= STRIPES as u64 {
            return self.stripes.iter().map(|m| m.lock()).collect();
        }
        let mut ids: Vec<usize> = (first..first + count).map(|b| (b % STRIPES as u64) as usize).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| self.stripes[i].lock()).collect()
    }

    /// Copy a block's current bytes into `out` (a whole block) from memory, the WAL or a
    /// cached frame; `Some(loc)` when they are in a chunk frame that is not cached.
    fn read_block(&self, block: u64, out: &mut [u8]) -> Result<Option<Loc>, VolumeError> {
        loop {
            match self.locate(block, 0, out)? {
                Src::Copied => return Ok(None),
                Src::Wal { segment, offset } => {
                    if self.read_wal(segment, offset, out)? {
                        return Ok(None);
                    }
                }
                Src::Lz4 { segment, record, idx } => {
                    if self.read_lz4(segment, record, idx, 0, out)? {
                        return Ok(None);
                    }
                }
                Src::Chunk(loc) => {
                    let Some(frame) = self.chunks.cache.get(loc) else { return Ok(Some(loc)) };
                    out.copy_from_slice(frame_block(&frame, loc, 0, out.len())?);
                    return Ok(None);
                }
            }
        }
    }

    /// Copy part of a block (from `at` inside it) into `out`, wherever it is, fetching a
    /// chunk frame if need be. A chunk compacted away meanwhile means: look again.
    async fn read_piece(&self, block: u64, at: usize, out: &mut [u8]) -> Result<(), VolumeError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.locate(block, at, out)? {
                Src::Copied => return Ok(()),
                Src::Wal { segment, offset } => {
                    if self.read_wal(segment, offset, out)? {
                        return Ok(());
                    }
                }
                Src::Lz4 { segment, record, idx } => {
                    if self.read_lz4(segment, record, idx, at, out)? {
                        return Ok(());
                    }
                }
                Src::Chunk(loc) => match self.chunks.frame(loc).await {
                    Ok(frame) => {
                        out.copy_from_slice(frame_block(&frame, loc, at, out.len())?);
                        self.readahead(block, loc);
                        return Ok(());
                    }
                    Err(ChunkError::Unknown(_) | ChunkError::Backend(BackendError::NotFound { .. }))
                        if attempts < 100 =>
                    {
                        tokio::task::yield_now().await;
                    }
                    Err(ChunkError::Damaged { .. }) => {
                        let block = self.chunks.salvage_block(loc).await?;
                        out.copy_from_slice(&block[at..at + out.len()]);
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }

    /// On a sequential read, fetch the next frames of the chunk ahead of time.
    fn readahead(&self, block: u64, loc: Loc) {
        let prev = self.last_read.swap(block, Ordering::Relaxed);
        if self.readahead == 0 || prev.wrapping_add(1) != block {
            return;
        }
        for f in 1..=self.readahead {
            self.chunks_arc().prefetch(loc.chunk, loc.frame + f);
        }
    }

    fn chunks_arc(&self) -> &Arc<ChunkStore> {
        &self.chunks
    }

    /// Fill `out` from memory if the block is in memory or empty; else say where in the WAL
    /// or in which chunk its bytes are. `at` is the offset inside the block where `out` starts.
    fn locate(&self, block: u64, at: usize, out: &mut [u8]) -> Result<Src, VolumeError> {
        let hot = self.index.with_entry(block, |e| match e.map(|e| e.state) {
            None => None,
            Some(BlockState::Empty { .. }) => {
                out.fill(0);
                Some(Ok(Src::Copied))
            }
            // The index's reference keeps the slot while the index lock is held.
            Some(BlockState::Hot(slot)) => Some(self.arena.read(slot).map(|bytes| {
                out.copy_from_slice(&bytes[at..at + out.len()]);
                Src::Copied
            })),
            Some(BlockState::Pending { segment, offset }) => Some(Ok(Src::Wal { segment, offset: offset + at as u64 })),
            Some(BlockState::PendingLz4 { segment, record, idx }) => Some(Ok(Src::Lz4 { segment, record, idx })),
            Some(BlockState::Persisted(loc)) => Some(Ok(Src::Chunk(loc))),
        });
        if let Some(src) = hot {
            return src.map_err(|e| VolumeError::io("block arena", std::io::Error::other(e)));
        }
        // Not in memory or the WAL: spilled, or never written. The spiller changes the base
        // before it lets go of an index entry, so this is never older than what was there.
        match (self.index.in_hole(block), self.base.get(block)) {
            (false, Some(BaseRef::Chunk(loc))) => Ok(Src::Chunk(loc)),
            _ => {
                out.fill(0);
                Ok(Src::Copied)
            }
        }
    }

    /// What block status says of a block: (hole, zero).
    fn status_of(&self, block: u64) -> (bool, bool) {
        match self.index.get(block).map(|e| e.state) {
            Some(BlockState::Empty { allocated }) => (!allocated, true),
            Some(_) => (false, false),
            None if self.index.in_hole(block) => (true, true),
            None => match self.base.get(block) {
                None => (true, true),
                Some(BaseRef::Zeroed) => (false, true),
                Some(BaseRef::Chunk(_)) => (false, false),
            },
        }
    }

    /// Read from a WAL segment; `false` if the segment was recycled meanwhile (look again).
    fn read_wal(&self, segment: u64, offset: u64, out: &mut [u8]) -> Result<bool, VolumeError> {
        let Some(seg) = self.shared.segments.read().get(&segment).cloned() else {
            return Ok(false);
        };
        seg.file
            .read_exact_at(out, offset)
            .map_err(|e| VolumeError::io(format!("reading WAL segment {}", seg.slot), e))?;
        Ok(true)
    }

    /// Copy bytes of block `idx` (from `at` inside it) of the LZ4 record at `record` in WAL
    /// segment `segment` into `out`; `false` if the segment was recycled meanwhile (look
    /// again). The record is checked against its CRC and decompressed whole, then kept in a
    /// small cache for the reads of its neighbours.
    fn read_lz4(&self, segment: u64, record: u32, idx: u32, at: usize, out: &mut [u8]) -> Result<bool, VolumeError> {
        let key = (segment, record);
        let cached = self.lz4_cache.lock().iter().find(|(k, _)| *k == key).map(|(_, d)| Arc::clone(d));
        let data = match cached {
            Some(d) => d,
            None => {
                let Some(seg) = self.shared.segments.read().get(&segment).cloned() else {
                    return Ok(false);
                };
                let d = read_lz4_record(&seg, record)?;
                let mut cache = self.lz4_cache.lock();
                if cache.len() >= LZ4_CACHE_RECORDS {
                    cache.pop_front();
                }
                cache.push_back((key, Arc::clone(&d)));
                d
            }
        };
        let start = idx as usize * BLOCK_SIZE + at;
        let piece = data.get(start..start + out.len()).ok_or_else(|| {
            VolumeError::io(
                format!("WAL segment {segment}: compressed record at offset {record} has no block {idx}"),
                std::io::ErrorKind::InvalidData.into(),
            )
        })?;
        out.copy_from_slice(piece);
        Ok(true)
    }

    /// Stage a write under the block locks: arena copy, index update, WAL queue. Returns
    /// the log sequence number of the last record.
    fn stage_write(&self, offset: u64, data: &[u8], fua: bool) -> Result<u64, Stage> {
        let first = offset / BS;
        let end = offset + data.len() as u64;
        let last = (end - 1) / BS;
        let _locks = self.lock_blocks(first, last - first + 1);
        // The old bytes of partial blocks at either edge, read before anything is staged.
        let mut edges: Vec<(u64, [u8; BLOCK_SIZE])> = Vec::new();
        for b in [first, last] {
            let partial = offset > b * BS || end < (b + 1) * BS;
            if partial && edges.iter().all(|e| e.0 != b) {
                let mut whole = [0u8; BLOCK_SIZE];
                if let Some(loc) = self.read_block(b, &mut whole)? {
                    return Err(Stage::Fetch(loc));
                }
                edges.push((b, whole));
            }
        }
        let mut lsn = 0;
        let mut run = first;
        while run <= last {
            let n = (last - run + 1).min(MAX_RECORD_BLOCKS);
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut slots: Vec<SlotId> = Vec::with_capacity(n as usize);
            for b in run..run + n {
                let fresh = match self.arena.alloc() {
                    Ok(s) => s,
                    Err(e) => {
                        self.unstage(&slots);
                        return Err(VolumeError::io("block arena", std::io::Error::other(e)).into());
                    }
                };
                let block_start = b * BS;
                let lo = offset.max(block_start);
                let hi = (offset + data.len() as u64).min(block_start + BS);
                let piece = &data[(lo - offset) as usize..(hi - offset) as usize];
                let at = (lo - block_start) as usize;
                // Two references: the index's and the WAL queue's.
                let slot = self.fill(fresh, |d| {
                    if piece.len() < BLOCK_SIZE {
                        // A partial block: its old bytes around the piece (zeroes if none).
                        match edges.iter().find(|e| e.0 == b) {
                            Some(e) => d.copy_from_slice(&e.1),
                            None => d.fill(0),
                        }
                    }
                    d[at..at + piece.len()].copy_from_slice(piece);
                });
                slots.push(slot);
            }
            lsn = self.stage_run(seq, run, slots, fua)?;
            run += n;
        }
        Ok(lsn)
    }

    /// Stage a write of whole blocks received into fresh arena slots: publish them as they
    /// are, under the block locks. Returns the log sequence number of the last record.
    fn stage_received(&self, offset: u64, fresh: Vec<Fresh>, fua: bool) -> Result<u64, VolumeError> {
        let first = offset / BS;
        let _locks = self.lock_blocks(first, fresh.len() as u64);
        let mut lsn = 0;
        let mut run = first;
        let mut fresh = fresh.into_iter().peekable();
        while fresh.peek().is_some() {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            // Two references: the index's and the WAL queue's.
            let slots: Vec<SlotId> =
                fresh.by_ref().take(MAX_RECORD_BLOCKS as usize).map(|f| self.fill(f, |_| {})).collect();
            let n = slots.len() as u64;
            lsn = self.stage_run(seq, run, slots, fua)?;
            run += n;
        }
        Ok(lsn)
    }

    /// Publish a staged block with two references, the index's and the WAL queue's.
    fn fill(&self, fresh: Fresh, f: impl FnOnce(&mut [u8; BLOCK_SIZE])) -> SlotId {
        if self.sum_blocks {
            self.arena.fill_summed(fresh, 2, f)
        } else {
            self.arena.fill(fresh, 2, f)
        }
    }

    /// Put one record's run of published slots (two references each) in the index and the
    /// WAL queue.
    fn stage_run(&self, seq: u64, run: u64, slots: Vec<SlotId>, fua: bool) -> Result<u64, VolumeError> {
        for (k, &slot) in slots.iter().enumerate() {
            let old = self.index.set(run + k as u64, Some(Entry { seq, state: BlockState::Hot(slot) }));
            self.replaced(old);
        }
        Ok(self.shared.submit(Op::Data { seq, block: run, slots }, fua)?)
    }

    /// Undo the slot allocations of a run that failed before reaching the index.
    fn unstage(&self, slots: &[SlotId]) {
        for &s in slots {
            self.arena.release(s);
            self.arena.release(s);
        }
    }

    /// An index entry was replaced: release its arena slot. (A chunk's live count follows
    /// the spiller's base, not the live index: the old version may still be the one a
    /// checkpoint must keep.)
    fn replaced(&self, old: Option<Entry>) {
        if let Some(BlockState::Hot(slot)) = old.map(|e| e.state) {
            self.arena.release(slot);
        }
    }

    /// Make whole blocks read as zeroes (a tombstone record).
    fn stage_zero(&self, first: u64, count: u64, keep_allocated: bool, fua: bool) -> Result<u64, VolumeError> {
        let _locks = self.lock_blocks(first, count);
        let mut lsn = 0;
        let mut block = first;
        let end = first + count;
        while block < end {
            let n = (end - block).min(u64::from(u32::MAX));
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            for old in self.index.zero_range(block, n, keep_allocated, seq) {
                self.replaced(Some(old));
            }
            lsn = self.shared.submit(Op::Zero { seq, block, count: n as u32, keep_allocated }, fua)?;
            block += n;
        }
        Ok(lsn)
    }

    /// Reply now, or after the covering sync?
    async fn settle(&self, lsn: u64, fua: bool) -> Result<(), VolumeError> {
        let wait = match self.durability {
            Durability::Strict => true,
            Durability::Batched | Durability::Relaxed => fua,
            Durability::Async => false,
        };
        if wait {
            self.shared.wait_durable(lsn).await?;
        }
        if fua && self.flush_target == FlushTarget::Backend {
            self.spill_now().await?;
        }
        Ok(())
    }

    async fn zero_range(
        &self,
        offset: u64,
        len: u64,
        keep_allocated: bool,
        fua: bool,
        edges: bool,
    ) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        self.check_writable()?;
        let first = offset.div_ceil(BS);
        let end = (offset + len) / BS;
        if edges {
            // Partial blocks at either end are zeroed in place, as writes of zeroes.
            let zeros = [0u8; BLOCK_SIZE];
            let head_end = (first * BS).min(offset + len);
            if head_end > offset {
                self.write(offset, &zeros[..(head_end - offset) as usize], fua).await?;
            }
            let tail_start = (end * BS).max(head_end);
            if offset + len > tail_start {
                self.write(tail_start, &zeros[..(offset + len - tail_start) as usize], fua).await?;
            }
        }
        if end > first {
            let lsn = self.stage_zero(first, end - first, keep_allocated, fua)?;
            self.settle(lsn, fua).await?;
        }
        Ok(())
    }
}

/// The volume's backend as its transport needs it: yEnc volumes get the yEnc layer on top.
pub fn with_transport(backend: DynBackend, transport: u8) -> DynBackend {
    if transport == TRANSPORT_YENC {
        Arc::new(crate::backend::yenc::YencBackend::new(backend))
    } else {
        backend
    }
}

fn load_or_create_meta(
    fs: &dyn FileSystem,
    dir: &Path,
    size: Option<u64>,
    yenc: bool,
) -> Result<VolumeMeta, VolumeError> {
    let path = dir.join(META_FILE);
    let existing = fs.read_file(&path).map_err(|e| VolumeError::io(format!("reading {}", path.display()), e))?;
    match existing {
        Some(bytes) => {
            let meta = VolumeMeta::decode(&bytes).map_err(|e| VolumeError::Meta { path: path.clone(), source: e })?;
            if let Some(s) = size.filter(|&s| s != meta.size) {
                return Err(VolumeError::SizeMismatch { path, existing: meta.size, asked: s });
            }
            if yenc && meta.transport != TRANSPORT_YENC {
                return Err(VolumeError::Config(format!(
                    "{} was created without --yenc; a volume keeps the transport it was created with",
                    path.display()
                )));
            }
            Ok(meta)
        }
        None => {
            let transport = if yenc { TRANSPORT_YENC } else { TRANSPORT_RAW };
            let meta = VolumeMeta { size: size.unwrap_or(DEFAULT_SIZE), volume_id: random_id()?, transport };
            fs.write_file_atomic(&path, &meta.encode())
                .map_err(|e| VolumeError::io(format!("writing {}", path.display()), e))?;
            info!(path = %path.display(), size = meta.size, "volume created");
            Ok(meta)
        }
    }
}

/// Read, check and decompress the LZ4 data record at `record` in `seg`: its raw blocks.
/// Damage (a bad header, a CRC mismatch, a payload that does not decompress to the record's
/// size) is an I/O error naming the segment and the offset, never zeroes.
fn read_lz4_record(seg: &crate::wal::segment::Segment, record: u32) -> Result<Arc<[u8]>, VolumeError> {
    let at = u64::from(record);
    let damaged = |detail: String| {
        VolumeError::io(
            format!("WAL segment {} ({}): compressed record at offset {at}: {detail}", seg.id, seg.slot),
            std::io::ErrorKind::InvalidData.into(),
        )
    };
    let mut hb = [0u8; HEADER_LEN];
    seg.file.read_exact_at(&mut hb, at).map_err(|e| VolumeError::io(format!("reading WAL segment {}", seg.slot), e))?;
    let h = RecordHeader::decode(&hb).map_err(|e| damaged(e.to_string()))?;
    if h.kind != (RecordKind::Data { compressed: true }) || h.segment != seg.id {
        return Err(damaged(format!("found {:?} of segment {}", h.kind, h.segment)));
    }
    let mut payload = vec![0u8; h.data_len as usize];
    seg.file
        .read_exact_at(&mut payload, at + HEADER_LEN as u64)
        .map_err(|e| VolumeError::io(format!("reading WAL segment {}", seg.slot), e))?;
    RecordHeader::verify(&hb, &payload).map_err(|e| damaged(e.to_string()))?;
    let mut raw = vec![0u8; h.raw_len()];
    match lz4_flex::block::decompress_into(&payload, &mut raw) {
        Ok(n) if n == raw.len() => Ok(raw.into()),
        Ok(n) => Err(damaged(format!("decompresses to {n} bytes, not {}", raw.len()))),
        Err(e) => Err(damaged(format!("does not decompress: {e}"))),
    }
}

/// The bytes of a block inside a decompressed frame.
fn frame_block(frame: &[u8], loc: Loc, at: usize, len: usize) -> Result<&[u8], VolumeError> {
    let start = loc.idx as usize * BLOCK_SIZE + at;
    frame.get(start..start + len).ok_or_else(|| {
        ChunkError::Damaged { chunk: loc.chunk, frame: loc.frame, detail: format!("no block {} in the frame", loc.idx) }
            .into()
    })
}

/// The backend holds the volume's identity: refuse a backend that holds another volume,
/// and record ours on a new one.
async fn check_backend_meta(backend: &DynBackend, meta: &VolumeMeta) -> Result<(), VolumeError> {
    match backend.get(BACKEND_META_KEY).await {
        Ok(bytes) => {
            let theirs = VolumeMeta::decode(&bytes).map_err(|e| VolumeError::Meta {
                path: PathBuf::from(format!("{}/{BACKEND_META_KEY}", backend.describe())),
                source: e,
            })?;
            if theirs.volume_id != meta.volume_id || theirs.size != meta.size {
                return Err(VolumeError::Config(format!(
                    "the backend {} holds another volume (or one of another size); \
                     use `spillway recover` to rebuild this data directory from it",
                    backend.describe()
                )));
            }
            Ok(())
        }
        Err(BackendError::NotFound { .. }) => {
            Ok(backend.put(BACKEND_META_KEY, bytes::Bytes::from(meta.encode().to_vec())).await?)
        }
        Err(e) => Err(e.into()),
    }
}

fn random_id() -> Result<[u8; 16], VolumeError> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .map_err(|e| VolumeError::io("reading /dev/urandom", e))?;
    Ok(id)
}

impl BlockDevice for Volume {
    type Error = VolumeError;

    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check(offset, buf.len() as u64)?;
        // Runs of blocks that lie back to back in one WAL segment are read with one pread.
        let mut run: Option<(u64, u64, usize, usize)> = None; // segment, file offset, buf start, len
        let mut done = 0usize;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / BS;
            let at = (pos % BS) as usize;
            let n = (BS - pos % BS).min(end - pos) as usize;
            let src = self.locate(block, at, &mut buf[done..done + n])?;
            match src {
                Src::Wal { segment, offset: file_off } => match &mut run {
                    Some((s, o, _, l)) if *s == segment && *o + *l as u64 == file_off => *l += n,
                    _ => {
                        if let Some((s, o, b, l)) = run.take() {
                            self.read_run(s, o, b, &mut buf[b..b + l], offset).await?;
                        }
                        run = Some((segment, file_off, done, n));
                    }
                },
                // Not part of a run: a compressed block is not at a byte offset in the file.
                Src::Lz4 { segment, record, idx } => {
                    let out = &mut buf[done..done + n];
                    if !self.read_lz4(segment, record, idx, at, out)? {
                        self.read_piece(block, at, out).await?;
                    }
                }
                Src::Chunk(_) => self.read_piece(block, at, &mut buf[done..done + n]).await?,
                Src::Copied => {}
            }
            done += n;
            pos += n as u64;
        }
        if let Some((s, o, b, l)) = run {
            self.read_run(s, o, b, &mut buf[b..b + l], offset).await?;
        }
        Ok(())
    }

    async fn read_data(&self, offset: u64, mut buf: PooledBuf) -> Result<ReadData, VolumeError> {
        let len = buf.len() as u64;
        if offset % BS == 0 && len % BS == 0 && len / BS >= LEND_MIN_BLOCKS {
            self.check(offset, len)?;
            if let Some(lent) = self.lender.lend(&self.index, offset / BS, len / BS) {
                self.lent_arena_bytes.increment(len);
                return Ok(ReadData::Lent(Box::new(lent)));
            }
            let reserved = self.lender.reserve(len as usize);
            let wal = &self.shared.segments;
            let lent =
                reserved.and_then(|r| lend::lend(&self.index, wal, offset / BS, len / BS, self.max_lent_segments, r));
            if let Some(lent) = lent {
                self.lent_wal_bytes.increment(len);
                return Ok(ReadData::Lent(Box::new(lent)));
            }
        }
        self.read(offset, &mut buf).await?;
        Ok(ReadData::Copied(buf))
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError> {
        self.check(offset, data.len() as u64)?;
        self.check_writable()?;
        if data.is_empty() {
            return Ok(());
        }
        let blocks = (offset + data.len() as u64 - 1) / BS - offset / BS + 1;
        let bytes = (blocks * BS) as u32;
        // The dirty-memory bound: wait here, before any lock is taken.
        self.shared.take_dirty(bytes).await?;
        let mut fetches = 0;
        loop {
            let err = match self.stage_write(offset, data, fua) {
                Ok(lsn) => return self.settle(lsn, fua).await,
                Err(Stage::Fetch(loc)) if fetches < 100 => {
                    fetches += 1;
                    match self.chunks.frame(loc).await {
                        Ok(_) | Err(ChunkError::Unknown(_) | ChunkError::Backend(BackendError::NotFound { .. })) => {
                            continue
                        }
                        Err(e) => e.into(),
                    }
                }
                Err(Stage::Fetch(loc)) => ChunkError::Other(format!("chunk {:016x} keeps moving", loc.chunk)).into(),
                Err(Stage::Failed(e)) => e,
            };
            self.shared.give_dirty(bytes as usize);
            return Err(err);
        }
    }

    fn write_buffer(&self, offset: u64, len: u32) -> Option<Box<dyn WriteBuffer>> {
        let len = u64::from(len);
        let whole = offset % BS == 0 && len % BS == 0 && len / BS >= RECEIVE_MIN_BLOCKS;
        if !whole || self.check(offset, len).is_err() || self.check_writable().is_err() {
            return None;
        }
        let r = Receiving::take(&self.arena, &self.shared, (len / BS) as usize)?;
        Some(Box::new(r))
    }

    async fn write_received(&self, offset: u64, buf: Box<dyn WriteBuffer>, fua: bool) -> Result<(), VolumeError> {
        let Ok(received) = buf.into_any().downcast::<Receiving>() else {
            return Err(VolumeError::io(
                "receiving a write",
                std::io::Error::other("a write buffer that is not this volume's"),
            ));
        };
        // Dropping `received` gives its slots and budget back; a poisoned volume refuses here.
        self.check_writable()?;
        let fresh = received.into_slots();
        let bytes = fresh.len() * BLOCK_SIZE;
        match self.stage_received(offset, fresh, fua) {
            Ok(lsn) => self.settle(lsn, fua).await,
            Err(e) => {
                self.shared.give_dirty(bytes);
                Err(e)
            }
        }
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        if self.durability == Durability::Async {
            return Ok(());
        }
        self.check_writable()?;
        let lsn = self.shared.submit(Op::Sync, true)?;
        self.shared.wait_durable(lsn).await?;
        if self.flush_target == FlushTarget::Backend {
            self.spill_now().await?;
        }
        Ok(())
    }

    /// Whole blocks become empty (a tombstone); partial blocks at the edges are left alone,
    /// as TRIM allows.
    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        self.zero_range(offset, len, false, fua, false).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), VolumeError> {
        self.zero_range(offset, len, flags.no_hole, flags.fua, true).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        self.check(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let end = offset + len.min(STATUS_MAX_BLOCKS * BS);
        let mut pos = offset;
        while pos < end {
            let block = pos / BS;
            let n = (BS - pos % BS).min(end - pos);
            let (hole, zero) = self.status_of(block);
            match out.last_mut() {
                Some(e) if e.hole == hole && e.zero == zero => e.length += n,
                _ => out.push(Extent { length: n, hole, zero }),
            }
            pos += n;
        }
        Ok(out)
    }
}

impl Volume {
    /// Read a run of WAL bytes into `out`; if its segment was recycled meanwhile, fall back
    /// to reading each block afresh.
    async fn read_run(
        &self,
        segment: u64,
        file_off: u64,
        buf_start: usize,
        out: &mut [u8],
        req_offset: u64,
    ) -> Result<(), VolumeError> {
        if self.read_wal(segment, file_off, out)? {
            return Ok(());
        }
        warn!(segment, "WAL segment recycled during a read; reading again");
        let mut pos = req_offset + buf_start as u64;
        let mut done = 0;
        while done < out.len() {
            let block = pos / BS;
            let at = (pos % BS) as usize;
            let n = (BLOCK_SIZE - at).min(out.len() - done);
            self.read_piece(block, at, &mut out[done..done + n]).await?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }
}
