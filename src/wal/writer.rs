//! The group-commit writer: one thread takes everything queued, packs it into one buffer of
//! records, makes one write, and syncs when the durability policy asks. Many connections
//! and many in-flight requests share each sync.
//!
//! Two threads take turns at it. The leader holds the writer's state while it takes
//! batches and writes them. When what it wrote needs a sync, covers at least a megabyte,
//! and no sync is running, it lets go of the state and syncs; the other thread leads
//! meanwhile, writing what arrives into the page cache, and starts the next sync, covering
//! all of that, as soon as this one finishes. So with large writes the disk always has a
//! sync to work on, each as large as the traffic allows. A smaller sync runs with the
//! state held, as one thread would: handing over costs thread wake-ups that small writes
//! do not repay, and their clients wait for the sync anyway. Syncs run one at a time (the
//! sync gate), and a volume whose sync failed publishes no durability after it, so a
//! later sync that succeeds never vouches for data an earlier failed one lost.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, warn};

use super::batch::Batch;
use super::hold::Hold;
use super::prepare::{self, Spare};
use super::record::{RecordHeader, BLOCK_SIZE, HEADER_LEN, RECORD_ALIGN};
use super::segment::{Segment, SegmentHeader, DATA_START};
use super::{SyncPolicy, WalError};
use crate::io::{File, FileSystem};
use crate::store::arena::{Arena, SlotId};
use crate::store::index::{BlockState, Index};

/// One write of the batch buffer is at most this large; a bigger batch makes several
/// writes and still one sync.
const MAX_WRITE: usize = 8 << 20;

/// What the volume asks the log to record.
pub enum Op {
    /// Whole blocks from `block` on, their data in arena slots (one reference each is ours).
    Data { seq: u64, block: u64, slots: Vec<SlotId> },
    /// `count` blocks from `block` on read as zeroes.
    Zero { seq: u64, block: u64, count: u32, keep_allocated: bool },
    /// A barrier: sync everything queued before it.
    Sync,
}

pub struct Item {
    pub op: Op,
    /// Sync the batch holding this item (FUA).
    pub force_sync: bool,
    pub(super) lsn: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Items written to the segment files.
    pub written: u64,
    /// Items synced.
    pub durable: u64,
    pub poisoned: bool,
}

struct Queue {
    items: Vec<Item>,
    /// Block data in `items`, for the lazy wake-up ([`Shared::submit`]).
    bytes: u64,
    next_lsn: u64,
    closing: bool,
}

/// Static configuration of the log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Writes are padded so the next one starts on this boundary (1: no padding).
    pub align: u64,
    pub policy: SyncPolicy,
    pub volume_id: [u8; 16],
    /// Most segment files; past it, a roll waits for the spill to free one.
    pub max_segments: usize,
    /// Queued block data held back in memory up to this many bytes until a FLUSH, FUA
    /// write or shutdown needs it logged ([`super::hold`]); in batched mode also for at
    /// most one sync interval. 0: log at once. Strict mode never holds.
    pub hold_bytes: u64,
    /// Store data records as LZ4 when that saves at least an eighth of their bytes
    /// (`docs/wal.md`); incompressible data stays raw.
    pub compress_lz4: bool,
}

/// The state shared by the volume and the writer thread.
pub struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    poisoned: AtomicBool,
    /// What poisoned it, for the errors of the writes and flushes that follow.
    poison_reason: Mutex<String>,
    /// Open segments by id; readers clone an `Arc` while they read.
    pub segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    pub index: Arc<Index>,
    pub arena: Arc<Arena>,
    /// Dirty-byte budget: the volume takes from it per block queued, the writer gives back
    /// once a block is written ([`Shared::take_dirty`], [`Shared::give_dirty`]).
    dirty: Arc<Semaphore>,
    /// The bytes taken from `dirty` and not given back, as a metric.
    dirty_gauge: metrics::Gauge,
    /// WAL position (segment, offset) up to which everything is synced.
    durable_pos: Mutex<(u64, u64)>,
    /// Segments with a smaller id are spilled and checkpointed: free for reuse.
    recyclable_before: AtomicU64,
    /// Wakes the spiller when a segment is sealed.
    pub spill_wake: tokio::sync::Notify,
    /// Relaxed and async modes with holding: the writer would only hold a plain write, so
    /// it is woken once [`LAZY_WAKE_BYTES`] or [`LAZY_WAKE_ITEMS`] are queued, or by a
    /// FLUSH, a FUA write or the close, not by every write.
    lazy_wake: AtomicBool,
    /// Held while a sync runs: syncs run one at a time, in the order they take it.
    sync_gate: Mutex<()>,
    /// Syncs begun and not yet finished.
    syncs_in_flight: AtomicUsize,
    /// How long the last sync took, in nanoseconds (group commit's gathering wait).
    last_sync_ns: AtomicU64,
}

/// Queued block data that wakes a lazily woken writer (it then frees what rewrites made
/// unneeded, [`super::hold`]).
const LAZY_WAKE_BYTES: u64 = 1 << 20;
/// Queued items (tombstones carry no data) that wake a lazily woken writer.
const LAZY_WAKE_ITEMS: usize = 1024;
/// A sync of this much data or more runs while the other thread writes what comes next;
/// and while a sync runs, this much queued data is written at once rather than after it.
const OVERLAP_BYTES: u64 = 1 << 20;

impl Shared {
    pub fn new(index: Arc<Index>, arena: Arc<Arena>, dirty: Arc<Semaphore>, next_lsn: u64) -> Arc<Self> {
        let (progress, _) = watch::channel(Progress { written: next_lsn, durable: next_lsn, poisoned: false });
        Arc::new(Self {
            queue: Mutex::new(Queue { items: Vec::new(), bytes: 0, next_lsn, closing: false }),
            lazy_wake: AtomicBool::new(false),
            wake: Condvar::new(),
            progress,
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(String::new()),
            segments: RwLock::new(BTreeMap::new()),
            index,
            arena,
            dirty,
            dirty_gauge: {
                // Adding zero registers the series (a scrape shows 0) without touching what
                // other volumes hold.
                let g = metrics::gauge!(crate::metrics::DIRTY_BYTES);
                g.increment(0.0);
                g
            },
            durable_pos: Mutex::new((0, 0)),
            recyclable_before: AtomicU64::new(0),
            spill_wake: tokio::sync::Notify::new(),
            sync_gate: Mutex::new(()),
            syncs_in_flight: AtomicUsize::new(0),
            last_sync_ns: AtomicU64::new(0),
        })
    }

    /// Take `bytes` from the dirty budget, waiting while it is spent.
    pub async fn take_dirty(&self, bytes: u32) -> Result<(), WalError> {
        self.dirty.acquire_many(bytes).await.map_err(|_| WalError::Closed)?.forget();
        self.dirty_gauge.increment(f64::from(bytes));
        Ok(())
    }

    /// [`Shared::take_dirty`] if the budget has room now; `false` rather than a wait.
    pub fn try_take_dirty(&self, bytes: u32) -> bool {
        match self.dirty.try_acquire_many(bytes) {
            Ok(permit) => {
                permit.forget();
                self.dirty_gauge.increment(f64::from(bytes));
                true
            }
            Err(_) => false,
        }
    }

    /// Give back what [`Shared::take_dirty`] took.
    pub fn give_dirty(&self, bytes: usize) {
        self.dirty.add_permits(bytes);
        self.dirty_gauge.decrement(bytes as f64);
    }

    /// Where the synced part of the log ends.
    pub fn durable_pos(&self) -> (u64, u64) {
        *self.durable_pos.lock()
    }

    /// Segments before `segment` may be reused (a durable checkpoint no longer needs them).
    pub fn set_recyclable_before(&self, segment: u64) {
        self.recyclable_before.fetch_max(segment, Ordering::AcqRel);
    }

    pub fn is_closing(&self) -> bool {
        self.queue.lock().closing
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The error of a write or flush refused because the volume is poisoned.
    pub fn poisoned_error(&self) -> WalError {
        WalError::Poisoned(self.poison_reason.lock().clone())
    }

    /// Queue an item; returns its log sequence number, for [`Shared::wait_durable`].
    pub fn submit(&self, op: Op, force_sync: bool) -> Result<u64, WalError> {
        if self.is_poisoned() {
            return Err(self.poisoned_error());
        }
        let mut q = self.queue.lock();
        if q.closing {
            return Err(WalError::Closed);
        }
        q.next_lsn += 1;
        let lsn = q.next_lsn;
        let barrier = force_sync || matches!(op, Op::Sync);
        if let Op::Data { slots, .. } = &op {
            q.bytes += (slots.len() * BLOCK_SIZE) as u64;
        }
        q.items.push(Item { op, force_sync, lsn });
        let wake = barrier
            || !self.lazy_wake.load(Ordering::Relaxed)
            || q.bytes >= LAZY_WAKE_BYTES
            || q.items.len() >= LAZY_WAKE_ITEMS;
        drop(q);
        if wake {
            self.wake.notify_one();
        }
        Ok(lsn)
    }

    /// Wait until the item `lsn` is synced.
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), WalError> {
        let mut rx = self.progress.subscribe();
        let p = *rx.wait_for(|p| p.durable >= lsn || p.poisoned).await.map_err(|_| WalError::Closed)?;
        if p.durable >= lsn {
            Ok(())
        } else {
            Err(self.poisoned_error())
        }
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Ask the writer to sync what is queued and stop.
    pub fn close(&self) {
        self.queue.lock().closing = true;
        self.wake.notify_one();
    }

    /// After a failed sync or write, or WAL data the spill found damaged: every write and
    /// flush fails from now on.
    pub(crate) fn poison(&self, why: &dyn std::fmt::Display) {
        // The reason first: whoever sees the flag finds it.
        {
            let mut reason = self.poison_reason.lock();
            if reason.is_empty() {
                *reason = why.to_string();
            }
        }
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            error!(error = %why, "WAL failure: the volume is poisoned; every write and flush fails with EIO until restart");
        }
        self.progress.send_modify(|p| p.poisoned = true);
    }
}

/// The writer thread's own state.
pub struct Writer {
    shared: Arc<Shared>,
    fs: Arc<dyn FileSystem>,
    cfg: WalConfig,
    current: Arc<Segment>,
    /// Next write offset in the current segment.
    off: u64,
    /// Offset up to which the current segment is known synced (as of the batch being
    /// written; a sync finishing meanwhile only makes it conservative).
    synced_to: u64,
    /// The last item written to the segment files.
    written_lsn: u64,
    /// The writer has closed: both threads stop.
    stopped: bool,
    /// What has been written needs a sync, to start once the running one finishes.
    pending_sync: bool,
    first_unsynced: Option<Instant>,
    unsynced_bytes: u64,
    /// Recycled slot files ready for reuse.
    free_slots: Vec<(String, Arc<dyn File>)>,
    next_slot: u64,
    /// A new segment file being written through for a later roll (`prepare`).
    spare: Option<Spare>,
    /// Syncs made since the current segment opened.
    segment_syncs: u64,
    /// No segment file existed at start: a new volume, whose first segment is written
    /// through before it is used.
    fresh: bool,
    /// The write being gathered.
    buf: Batch,
    /// Items the last sync covered, and items written since it began (group commit).
    last_batch: usize,
    since_sync: usize,
    /// Bytes written for the batch being processed.
    batch_bytes: u64,
    batch_bytes_metric: metrics::Histogram,
    batch_items_metric: metrics::Histogram,
    sync_seconds_metric: metrics::Histogram,
    writes_metric: metrics::Counter,
    written_bytes_metric: metrics::Counter,
    /// Opening the first segment at start-up: the spiller that frees segments is not
    /// running yet, so waiting at the segment bound would wait forever. That one segment
    /// may go past the bound.
    starting: bool,
    /// Write-back holding (every mode but strict, with `hold_bytes` > 0).
    hold: Option<Hold>,
    /// When the oldest item of the batch being logged came, if it was held: its data has
    /// been unsynced since then, as far as the batched mode's interval is concerned.
    held_since: Option<Instant>,
    /// LZ4 mode: a record's raw blocks side by side, and their compressed form (kept at
    /// the largest size needed, so the hot path does not allocate).
    raw_scratch: Vec<u8>,
    lz4_scratch: Vec<u8>,
    /// Raw bytes of the data records logged, and the payload bytes stored for them.
    data_bytes_metric: metrics::Counter,
    stored_bytes_metric: metrics::Counter,
}

/// A sync to run: everything written to `segment` up to `off`, which holds every item up
/// to `lsn`, becomes durable.
struct SyncTicket {
    segment: Arc<Segment>,
    off: u64,
    lsn: u64,
    /// Run with the writer's state let go, for the other thread to lead meanwhile.
    hand_over: bool,
}

impl SyncTicket {
    /// Sync, then publish what it made durable. Syncs run one at a time through the gate;
    /// after a failure (the volume is poisoned) nothing is synced or published again: a
    /// later sync that succeeds does not prove that the pages an earlier one failed on
    /// reached the disk.
    fn run(self, shared: &Shared, metric: &metrics::Histogram) -> Result<(), WalError> {
        let result = {
            let _gate = shared.sync_gate.lock();
            if shared.is_poisoned() {
                Err(shared.poisoned_error())
            } else {
                let started = Instant::now();
                match self.segment.file.sync_data() {
                    Ok(()) => {
                        let took = started.elapsed();
                        shared.last_sync_ns.store(took.as_nanos() as u64, Ordering::Relaxed);
                        metric.record(took.as_secs_f64());
                        {
                            let mut pos = shared.durable_pos.lock();
                            *pos = (*pos).max((self.segment.id, self.off));
                        }
                        publish_durable(shared, self.lsn);
                        Ok(())
                    }
                    Err(e) => {
                        let e = WalError::io(format!("syncing WAL segment {}", self.segment.slot), e);
                        shared.poison(&e);
                        Err(e)
                    }
                }
            }
        };
        shared.syncs_in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.hand_over {
            // The other thread may be waiting to start the next sync. Taking the queue
            // lock first means it is either before its check (and sees the count) or
            // already waiting.
            drop(shared.queue.lock());
            shared.wake.notify_one();
        }
        result
    }
}

/// Items up to `lsn` are durable (never moves back).
fn publish_durable(shared: &Shared, lsn: u64) {
    shared.progress.send_if_modified(|p| {
        let moved = lsn > p.durable;
        p.durable = p.durable.max(lsn);
        moved
    });
}

/// Where a record of the current batch went.
struct Placed {
    item: usize,
    segment: u64,
    offset: u64,
    /// Stored as LZ4: its blocks are read by decompressing the record.
    compressed: bool,
}

impl Writer {
    /// Start on a fresh segment after `prev` (id and end of its valid records).
    pub fn start(
        shared: Arc<Shared>,
        fs: Arc<dyn FileSystem>,
        cfg: WalConfig,
        prev: (u64, u64),
        free_slots: Vec<(String, Arc<dyn File>)>,
        next_slot: u64,
    ) -> Result<Self, WalError> {
        let placeholder = Arc::new(Segment::new(prev.0, String::new(), dummy_file(), prev.1, Vec::new()));
        let mut w = Writer {
            shared,
            fs,
            cfg,
            current: placeholder,
            off: prev.1,
            synced_to: prev.1,
            written_lsn: 0,
            stopped: false,
            pending_sync: false,
            first_unsynced: None,
            unsynced_bytes: 0,
            fresh: next_slot <= 1 && free_slots.is_empty(),
            free_slots,
            next_slot,
            spare: None,
            segment_syncs: 0,
            buf: Batch::with_capacity(64 << 10),
            last_batch: 0,
            since_sync: 0,
            batch_bytes: 0,
            batch_bytes_metric: metrics::histogram!(crate::metrics::WAL_BATCH_BYTES),
            batch_items_metric: metrics::histogram!(crate::metrics::WAL_BATCH_ITEMS),
            sync_seconds_metric: metrics::histogram!(crate::metrics::WAL_SYNC_SECONDS),
            writes_metric: metrics::counter!(crate::metrics::WAL_WRITES),
            written_bytes_metric: metrics::counter!(crate::metrics::WAL_WRITTEN_BYTES),
            starting: true,
            hold: None,
            held_since: None,
            raw_scratch: Vec::new(),
            lz4_scratch: Vec::new(),
            data_bytes_metric: metrics::counter!(crate::metrics::WAL_DATA_BYTES),
            stored_bytes_metric: metrics::counter!(crate::metrics::WAL_STORED_BYTES),
        };
        if w.cfg.segment_bytes > u64::from(u32::MAX) {
            // The index keeps an LZ4 record's offset in 32 bits.
            return Err(WalError::io(
                format!("WAL segment size {} is over 4 GiB", w.cfg.segment_bytes),
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
        if w.cfg.policy.durability != super::Durability::Strict && w.cfg.hold_bytes > 0 {
            // Batched mode holds for at most one interval; relaxed and async until needed.
            w.hold = Some(Hold::new(w.cfg.hold_bytes, w.cfg.policy.deadline()));
            // Without a deadline, a plain write only joins the hold: no need to wake the
            // writer for each one (a futex wake and two context switches per write).
            let lazy = w.cfg.policy.deadline().is_none() && w.cfg.hold_bytes >= 2 * LAZY_WAKE_BYTES;
            w.shared.lazy_wake.store(lazy, Ordering::Relaxed);
        }
        *w.shared.durable_pos.lock() = prev;
        w.written_lsn = w.shared.progress().written;
        w.open_next()?;
        w.starting = false;
        Ok(w)
    }

    /// Run until closed, on this thread and a second one that takes turns with it.
    pub fn run(self) {
        let me = Arc::new(Mutex::new(self));
        let other = {
            let me = Arc::clone(&me);
            std::thread::Builder::new().name("spillway-wal2".into()).spawn(move || Writer::lead(&me))
        };
        if let Err(e) = &other {
            warn!(error = %e, "starting the second WAL writer thread failed; one thread writes and syncs in turn");
        }
        Writer::lead(&me);
        if let Ok(handle) = other {
            if handle.join().is_err() {
                error!("the second WAL writer thread panicked");
            }
        }
        debug!("WAL writer stopped");
    }

    /// Lead: take batches and write them, and sync them when they need it. Only while a
    /// large sync runs is the state let go, for the other thread to lead meanwhile.
    fn lead(me: &Mutex<Writer>) {
        let mut w = me.lock();
        let (shared, metric) = (Arc::clone(&w.shared), w.sync_seconds_metric.clone());
        // The state is let go only to hand over: a thread waiting for a lock that is
        // released and taken back at every turn would be woken for nothing each time.
        while !w.stopped {
            let Some(ticket) = w.turn() else { continue };
            // A failure has poisoned the volume; the next batch sees it.
            if ticket.hand_over {
                let _ = MutexGuard::unlocked(&mut w, || ticket.run(&shared, &metric));
            } else {
                let _ = ticket.run(&shared, &metric);
            }
        }
    }

    /// One batch: wait for items, hold or gather them, write them; returns the sync to run
    /// now, if one is wanted and none is running.
    fn turn(&mut self) -> Option<SyncTicket> {
        let (items, closing) = {
            let mut q = self.shared.queue.lock();
            while !q.closing && !self.worth_taking(&q) {
                let hold_deadline = self.hold.as_ref().and_then(Hold::deadline);
                match self.sync_deadline().into_iter().chain(hold_deadline).min() {
                    Some(d) => {
                        if self.shared.wake.wait_until(&mut q, d).timed_out() {
                            break;
                        }
                    }
                    None => self.shared.wake.wait(&mut q),
                }
            }
            q.bytes = 0;
            (std::mem::take(&mut q.items), q.closing)
        };
        let Some(items) = self.hold_back(items, closing) else { return self.ready_ticket() };
        let items = self.gather(items, closing);
        if !self.shared.is_poisoned() {
            if let Err(e) = self.process(&items) {
                self.shared.poison(&e);
            }
        }
        self.held_since = None;
        // Written or not, the items give back their memory, so nothing waits on it. Their
        // data is in the page cache now (the index points there), sync or no sync.
        for item in items {
            self.finish(item);
        }
        if closing && self.shared.queue.lock().items.is_empty() {
            if !self.shared.is_poisoned() && (self.unsynced_bytes > 0 || self.pending_sync) {
                if let Err(e) = self.sync() {
                    self.shared.poison(&e);
                }
            }
            if let Some(spare) = self.spare.take() {
                // Not left writing into the directory after the volume closed.
                if let Err(e) = spare.finish() {
                    warn!(error = %e, "preparing a WAL segment file failed");
                }
            }
            self.stopped = true;
            return None;
        }
        self.ready_ticket()
    }

    /// Whether to take the queue now. While a sync runs, small items wait for it to end,
    /// so they go out in one write with the rest (each write is padded to the alignment);
    /// a megabyte of data is written at once, so the copy overlaps the sync.
    fn worth_taking(&self, q: &Queue) -> bool {
        if self.shared.syncs_in_flight.load(Ordering::Acquire) > 0 {
            q.bytes >= OVERLAP_BYTES || q.items.len() >= LAZY_WAKE_ITEMS
        } else {
            !q.items.is_empty() || self.sync_ready()
        }
    }

    /// A sync is wanted and may start now: none is running (the volume is not poisoned).
    fn sync_ready(&self) -> bool {
        self.pending_sync && self.shared.syncs_in_flight.load(Ordering::Acquire) == 0 && !self.shared.is_poisoned()
    }

    /// The wanted sync, if it may start now.
    fn ready_ticket(&mut self) -> Option<SyncTicket> {
        if self.shared.is_poisoned() {
            self.pending_sync = false;
        }
        self.sync_ready().then(|| self.begin_sync())
    }

    /// Hold the new items with those already held, and return everything held once it
    /// must be logged (else `None`: wait for more).
    fn hold_back(&mut self, items: Vec<Item>, closing: bool) -> Option<Vec<Item>> {
        let Some(hold) = self.hold.as_mut() else { return Some(items) };
        let trigger = closing || items.iter().any(|i| i.force_sync || matches!(i.op, Op::Sync));
        let woken = items.is_empty();
        for item in items {
            hold.add(item, &self.shared);
        }
        if !hold.must_log(trigger) {
            // A wake-up with nothing new may be batched mode's sync deadline for data
            // already written: an empty batch lets `process` sync it.
            return woken.then(Vec::new);
        }
        self.held_since = hold.since();
        Some(hold.take())
    }

    /// Group commit: when replies wait for this batch's sync (strict mode, FUA, FLUSH) and
    /// fewer items came than the last sync covered, the rest of that wave of clients is
    /// probably a few microseconds behind. Wait for them a little (an eighth of the last
    /// sync's duration, at most 2 ms), so one sync covers them all. Not while a sync runs:
    /// the next one cannot start before it ends, and what comes meanwhile joins it.
    fn gather(&mut self, mut items: Vec<Item>, closing: bool) -> Vec<Item> {
        let waits = self.cfg.policy.durability == super::Durability::Strict
            || items.iter().any(|i| i.force_sync || matches!(i.op, Op::Sync));
        if closing || !waits || items.is_empty() || self.since_sync + items.len() >= self.last_batch {
            return items;
        }
        if self.shared.syncs_in_flight.load(Ordering::Acquire) > 0 {
            return items;
        }
        let last_sync = Duration::from_nanos(self.shared.last_sync_ns.load(Ordering::Relaxed));
        let deadline = Instant::now() + (last_sync / 8).min(Duration::from_millis(2));
        let mut q = self.shared.queue.lock();
        while self.since_sync + items.len() + q.items.len() < self.last_batch && !q.closing {
            if self.shared.wake.wait_until(&mut q, deadline).timed_out() {
                break;
            }
        }
        items.append(&mut q.items);
        q.bytes = 0;
        items
    }

    fn sync_deadline(&self) -> Option<Instant> {
        if self.pending_sync {
            // Decided already: it starts when the running sync finishes.
            return None;
        }
        let first = self.first_unsynced?;
        Some(first + self.cfg.policy.deadline()?)
    }

    /// Write a batch, and note whether it needs a sync.
    fn process(&mut self, items: &[Item]) -> Result<(), WalError> {
        let Some(last_lsn) = items.last().map(|i| i.lsn) else {
            // Woken by the batched-mode deadline.
            if self.sync_deadline().is_some_and(|d| Instant::now() >= d) {
                self.pending_sync = true;
            }
            return Ok(());
        };
        {
            let (segment, off) = *self.shared.durable_pos.lock();
            if segment == self.current.id {
                self.synced_to = self.synced_to.max(off);
            }
        }
        let mut forced = false;
        let mut placed: Vec<Placed> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            forced |= item.force_sync || matches!(item.op, Op::Sync);
            let (header, slots): (RecordHeader, &[SlotId]) = match &item.op {
                Op::Sync => continue,
                Op::Data { seq, block, slots } => {
                    (RecordHeader::data(0, *seq, *block, slots.len() as u32, 0), slots.as_slice())
                }
                Op::Zero { seq, block, count, keep_allocated } => {
                    (RecordHeader::zero(0, *seq, *block, *count, *keep_allocated, 0), &[])
                }
            };
            if self.off + self.buf.len() as u64 + header.total_len() + HEADER_LEN as u64 > self.cfg.segment_bytes {
                self.write_out(items, &mut placed)?;
                self.roll()?;
            } else if self.buf.len() >= MAX_WRITE {
                self.write_out(items, &mut placed)?;
            }
            let offset = self.off + self.buf.len() as u64;
            let header = RecordHeader { segment: self.current.id, synced_to: self.synced_to as u32, ..header };
            let header = self.append(&header, slots)?;
            self.current.note_record(header, offset);
            placed.push(Placed { item: i, segment: self.current.id, offset, compressed: header.is_compressed() });
        }
        self.write_out(items, &mut placed)?;
        self.prepare_next();
        self.batch_items_metric.record(items.len() as f64);
        self.batch_bytes_metric.record(std::mem::take(&mut self.batch_bytes) as f64);
        self.written_lsn = last_lsn;
        self.publish_written(last_lsn);
        let unsynced_for = self.first_unsynced.map_or(Duration::ZERO, |t| t.elapsed());
        self.since_sync += items.len();
        if self.cfg.policy.sync_after_batch(forced, self.unsynced_bytes, unsynced_for) {
            self.pending_sync = true;
        } else if !self.pending_sync
            && self.unsynced_bytes == 0
            && self.shared.syncs_in_flight.load(Ordering::Acquire) == 0
        {
            // Nothing was written since the last sync, which has finished.
            publish_durable(&self.shared, last_lsn);
        }
        Ok(())
    }

    /// Add one record to the batch: raw blocks stay in the arena until the write. In
    /// LZ4 mode a data record is stored compressed when that saves at least an eighth of
    /// its bytes. Returns the header as written.
    fn append(&mut self, header: &RecordHeader, slots: &[SlotId]) -> Result<RecordHeader, WalError> {
        if slots.is_empty() {
            self.buf.push_bytes(&header.encode(&[]));
            return Ok(*header);
        }
        let raw_len = slots.len() * BLOCK_SIZE;
        self.data_bytes_metric.increment(raw_len as u64);
        if !self.cfg.compress_lz4 {
            // The blocks are written from the arena, not copied. (The item holds references
            // to its slots.) The checksum comes from the blocks' own, taken when they were
            // received (`Arena::fill_summed`); blocks without one are read for it here.
            let sums: Option<Vec<u32>> = slots.iter().map(|&s| self.shared.arena.sum(s)).collect();
            if let Some(sums) = sums {
                self.buf.push_bytes(&header.encode_from_block_sums(&sums));
            } else {
                let guards = slots
                    .iter()
                    .map(|&s| self.shared.arena.read(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(arena_error)?;
                let pieces: Vec<&[u8]> = guards.iter().map(|g| &g[..]).collect();
                self.buf.push_bytes(&header.encode(&pieces));
            }
            for &s in slots {
                self.buf.push_slot(s);
            }
            self.stored_bytes_metric.increment(raw_len as u64);
            return Ok(*header);
        }
        // LZ4 wants the blocks side by side.
        self.raw_scratch.clear();
        for &s in slots {
            self.raw_scratch.extend_from_slice(&self.shared.arena.read(s).map_err(arena_error)?[..]);
        }
        let max = lz4_flex::block::get_maximum_output_size(raw_len);
        if self.lz4_scratch.len() < max {
            self.lz4_scratch.resize(max, 0);
        }
        let packed = lz4_flex::block::compress_into(&self.raw_scratch, &mut self.lz4_scratch).ok();
        match packed.filter(|&n| n > 0 && n < raw_len - raw_len / 8) {
            Some(n) => {
                let payload = &self.lz4_scratch[..n];
                let h = RecordHeader::data_lz4(
                    header.segment,
                    header.seq,
                    header.block,
                    header.count,
                    n as u32,
                    header.synced_to,
                );
                self.buf.push_bytes(&h.encode(&[payload]));
                self.buf.push_bytes(payload);
                // Zeroes up to the next record's 16-byte boundary (not in the checksum).
                let padded = (n as u64).next_multiple_of(RECORD_ALIGN) as usize;
                self.buf.push_zeros(padded - n);
                self.stored_bytes_metric.increment(n as u64);
                Ok(h)
            }
            None => {
                // Does not compress enough: stored raw, at no extra cost on disk.
                self.buf.push_bytes(&header.encode(&[&self.raw_scratch]));
                self.buf.push_bytes(&self.raw_scratch);
                self.stored_bytes_metric.increment(raw_len as u64);
                Ok(*header)
            }
        }
    }

    /// Write the batch buffer (padded to the alignment) and point the index at it.
    fn write_out(&mut self, items: &[Item], placed: &mut Vec<Placed>) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.off + self.buf.len() as u64;
        let mut gap = (self.cfg.align - end % self.cfg.align) % self.cfg.align;
        if gap > 0 && gap < HEADER_LEN as u64 {
            gap += self.cfg.align;
        }
        if gap > 0 && end + gap <= self.cfg.segment_bytes {
            let len = (gap - HEADER_LEN as u64) as u32;
            let zeros = vec![0u8; len as usize];
            let pad = RecordHeader::pad(self.current.id, len, self.synced_to as u32);
            self.buf.push_bytes(&pad.encode(&[&zeros]));
            self.buf.push_zeros(zeros.len());
        }
        let what = || format!("writing WAL segment {}", self.current.slot);
        self.buf
            .write_at(self.current.file.as_ref(), &self.shared.arena, self.off)
            .map_err(|e| WalError::io(what(), e))?;
        self.writes_metric.increment(1);
        self.written_bytes_metric.increment(self.buf.len() as u64);

        // Held data counts as unsynced from when it came, so batched mode's interval
        // bounds the time from a write to its sync, holding included.
        let since = self.held_since.take().unwrap_or_else(Instant::now);
        self.first_unsynced = Some(self.first_unsynced.map_or(since, |t| t.min(since)));
        self.unsynced_bytes += self.buf.len() as u64;
        self.batch_bytes += self.buf.len() as u64;
        self.off += self.buf.len() as u64;
        self.buf.clear();
        for p in placed.drain(..) {
            let item = &items[p.item];
            if let Op::Data { seq, block, slots } = &item.op {
                for k in 0..slots.len() {
                    // Segments are at most 4 GiB (checked in `Writer::start`).
                    let wal =
                        BlockState::in_wal_record(p.segment, p.offset, p.compressed, k as u32).ok_or_else(|| {
                            WalError::io(
                                format!("WAL offset {} past 4 GiB", p.offset),
                                std::io::ErrorKind::InvalidData.into(),
                            )
                        })?;
                    if let Some(slot) = self.shared.index.settle(block + k as u64, *seq, wal) {
                        self.shared.arena.release(slot);
                    }
                }
            }
        }
        Ok(())
    }

    /// Drop the item's own slot references, then give its bytes back to the budget. In
    /// that order: a writer let through by the budget must find its slots free.
    fn finish(&mut self, item: Item) {
        if let Op::Data { slots, .. } = item.op {
            let bytes = slots.len() * BLOCK_SIZE;
            for s in slots {
                self.shared.arena.release(s);
            }
            self.shared.give_dirty(bytes);
        }
    }

    /// A sync of everything written so far, to run with or without the state held.
    fn begin_sync(&mut self) -> SyncTicket {
        let hand_over = self.unsynced_bytes >= OVERLAP_BYTES;
        self.pending_sync = false;
        self.last_batch = std::mem::take(&mut self.since_sync);
        self.segment_syncs += 1;
        self.unsynced_bytes = 0;
        self.first_unsynced = None;
        self.shared.syncs_in_flight.fetch_add(1, Ordering::AcqRel);
        SyncTicket { segment: Arc::clone(&self.current), off: self.off, lsn: self.written_lsn, hand_over }
    }

    /// Sync now, with the state held (a roll, the close).
    fn sync(&mut self) -> Result<(), WalError> {
        let ticket = SyncTicket { hand_over: false, ..self.begin_sync() };
        ticket.run(&self.shared, &self.sync_seconds_metric)?;
        self.synced_to = self.off;
        Ok(())
    }

    /// Items up to `written` are in the segment files. Nobody waits for that, so the
    /// waiters for durability are not woken for it.
    fn publish_written(&self, written: u64) {
        self.shared.progress.send_if_modified(|p| {
            p.written = written;
            false
        });
    }

    /// Seal the current segment (sync it) and continue in a new one.
    fn roll(&mut self) -> Result<(), WalError> {
        self.sync()?;
        self.current.sealed_end.store(self.off, Ordering::Release);
        self.shared.spill_wake.notify_one();
        self.open_next()
    }

    fn open_next(&mut self) -> Result<(), WalError> {
        let (prev_id, prev_end) = (self.current.id, self.off);
        let id = prev_id + 1;
        let (slot, file) = self.take_slot()?;
        let mut page = vec![0u8; DATA_START as usize];
        let header = SegmentHeader { id, prev_id, prev_end, volume_id: self.cfg.volume_id };
        page[..super::segment::SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        let what = |w: &str| format!("{w} WAL segment {slot}");
        // Written before any record, so any sync that makes a record durable makes the
        // header durable too: a torn header means a segment that held nothing promised.
        file.write_all_vectored_at(&[IoSlice::new(&page)], 0)
            .map_err(|e| WalError::io(what("writing header of"), e))?;
        let seg = Arc::new(Segment::fresh(id, slot, file));
        self.shared.segments.write().insert(id, Arc::clone(&seg));
        debug!(segment = id, slot = %seg.slot, "WAL segment opened");
        self.current = seg;
        self.segment_syncs = 0;
        self.off = DATA_START;
        self.synced_to = DATA_START;
        Ok(())
    }

    /// A file for the next segment: the oldest segment if a durable checkpoint no longer
    /// needs it, else a recycled slot, else a new preallocated file. At the segment bound,
    /// wait for the spill (writers then wait on the dirty budget, they do not fail).
    fn take_slot(&mut self) -> Result<(String, Arc<dyn File>), WalError> {
        let mut waited = false;
        loop {
            if let Some(s) = self.recycle_oldest() {
                return Ok(s);
            }
            if let Some(s) = self.free_slots.pop() {
                return Ok(s);
            }
            if let Some(s) = self.take_spare(false) {
                return Ok(s);
            }
            let open = self.shared.segments.read().len();
            if open < self.cfg.max_segments || self.shared.is_closing() || self.starting {
                // A spare still being written counts against the bound: near it, wait for
                // the spare rather than create one file more than the bound allows.
                if self.spare.is_some() && open + 2 > self.cfg.max_segments {
                    if let Some(s) = self.take_spare(true) {
                        return Ok(s);
                    }
                }
                break;
            }
            if !waited {
                waited = true;
                metrics::counter!(crate::metrics::WAL_FULL_WAITS).increment(1);
                warn!(segments = open, "WAL full: writes wait until the spill to the backend frees a segment");
                self.shared.spill_wake.notify_one();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if waited {
            info!("WAL has room again");
        }
        let name = self.new_slot_name();
        // No client waits yet while a new volume starts: its first segment is written
        // through now. Later ones come from `prepare_next`, or preallocated only if that
        // is not ready in time.
        let write_through = self.starting && self.fresh;
        let file = prepare::create(self.fs.as_ref(), &self.cfg.dir, &name, self.cfg.segment_bytes, write_through)?;
        Ok((name, file))
    }

    /// The prepared spare file, if it is ready (or, with `wait`, once it is).
    fn take_spare(&mut self, wait: bool) -> Option<(String, Arc<dyn File>)> {
        if !wait && !self.spare.as_ref().is_some_and(Spare::is_ready) {
            return None;
        }
        match self.spare.take()?.finish() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "preparing a WAL segment file failed; creating one without");
                None
            }
        }
    }

    fn new_slot_name(&mut self) -> String {
        let name = format!("wal-{:06}.seg", self.next_slot);
        self.next_slot += 1;
        name
    }

    /// Once the open segment is half full, start writing the next segment's file through
    /// if the next roll would otherwise create one (no recycled slot waits, and the WAL
    /// has room for another segment) and the syncs are frequent enough to repay it.
    fn prepare_next(&mut self) {
        if self.spare.is_some() || !self.free_slots.is_empty() || self.off < self.cfg.segment_bytes / 2 {
            return;
        }
        if self.off.saturating_sub(DATA_START) > self.segment_syncs.saturating_mul(prepare::BYTES_PER_SYNC) {
            return;
        }
        if self.shared.segments.read().len() >= self.cfg.max_segments {
            return;
        }
        let name = self.new_slot_name();
        self.spare = Spare::start(Arc::clone(&self.fs), self.cfg.dir.clone(), name, self.cfg.segment_bytes);
    }

    /// The file of the oldest segment that a durable checkpoint no longer needs and no
    /// reply is sending from ([`super::lend`]): a slow client holds its segment, and the
    /// next one is recycled instead.
    fn recycle_oldest(&mut self) -> Option<(String, Arc<dyn File>)> {
        let before = self.shared.recyclable_before.load(Ordering::Acquire);
        let candidates: Vec<u64> = self
            .shared
            .segments
            .read()
            .range(..before)
            .map(|(&id, _)| id)
            .filter(|&id| id != self.current.id)
            .collect();
        for id in candidates {
            let seg = {
                let mut listed = self.shared.segments.write();
                let seg = listed.remove(&id)?;
                // Lends are taken only while it is listed: none can come now.
                if seg.is_lent() {
                    listed.insert(id, seg);
                    debug!(segment = id, "WAL segment lent to a reply; recycling the next one");
                    continue;
                }
                seg
            };
            // Readers that looked the segment up just before finish first; one that takes
            // too long keeps the segment for another round.
            let deadline = Instant::now() + Duration::from_secs(1);
            while Arc::strong_count(&seg) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
            match Arc::try_unwrap(seg) {
                Ok(s) => {
                    debug!(segment = id, slot = %s.slot, "WAL segment recycled");
                    return Some((s.slot, s.file));
                }
                Err(seg) => {
                    self.shared.segments.write().insert(id, seg);
                    return None;
                }
            }
        }
        None
    }
}

/// Stands in for "no segment yet" before the first one opens; never read or written.
fn dummy_file() -> Arc<dyn File> {
    struct NoFile;
    impl File for NoFile {
        fn write_all_vectored_at(&self, _: &[IoSlice<'_>], _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn allocate(&self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(0)
        }
    }
    Arc::new(NoFile)
}

/// A slot the WAL holds was found free: bookkeeping is broken, so the batch fails rather
/// than log bytes it cannot vouch for.
fn arena_error(e: crate::store::arena::SlotFree) -> WalError {
    WalError::io("block arena", std::io::Error::other(e))
}
