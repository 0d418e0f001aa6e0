//! `spillway doctor`: what was detected, the profile, the effective settings, warnings;
//! with `--measure`, the cost of fdatasync and 4 KiB writes in the data directory and the
//! batched-mode sync interval derived from it.

use std::fmt::Write as _;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::detect::{Detected, Storage};
use super::profile::{judge_data_dir, DirVerdict, Profile};
use super::{ConfigError, Resolved};
use crate::io::faulty::FaultyFs;
use crate::io::std_fs::StdFs;
use crate::io::FileSystem;
use crate::units::{format_duration, format_size};
use crate::wal::Durability;

#[derive(Debug, Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DoctorError {
    let what = what.into();
    move |source| DoctorError::Io { what, source }
}

/// The auto-tuning rule: the batched mode syncs every `SYNC_INTERVAL_FACTOR` times the
/// median fdatasync latency, so that syncing takes at most about 1/20 (5 %) of the
/// disk's time under a steady stream of writes, clamped to
/// [`MIN_SYNC_INTERVAL`, `MAX_SYNC_INTERVAL`] and rounded up to 10 ms.
pub const SYNC_INTERVAL_FACTOR: u32 = 20;
/// Below this the built-in default (100 ms) already costs little: no shorter interval.
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// The loss window of batched mode stays bounded even on very slow storage.
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// The sync interval the rule derives from a median fdatasync latency.
pub fn derive_sync_interval(median_sync: Duration) -> Duration {
    let raw = median_sync.saturating_mul(SYNC_INTERVAL_FACTOR).clamp(MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL);
    let ms = raw.as_millis().div_ceil(10) * 10;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).min(MAX_SYNC_INTERVAL)
}

/// Latencies of one kind of operation.
#[derive(Debug, Clone)]
pub struct Stats {
    sorted: Vec<Duration>,
}

impl Stats {
    pub fn new(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats { sorted: samples }
    }
    pub fn count(&self) -> usize {
        self.sorted.len()
    }
    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: u32) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (self.sorted.len() * p as usize).div_ceil(100).max(1);
        self.sorted[rank.min(self.sorted.len()) - 1]
    }
    pub fn median(&self) -> Duration {
        self.percentile(50)
    }
    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
    pub fn mean(&self) -> Duration {
        let total: Duration = self.sorted.iter().sum();
        total / u32::try_from(self.sorted.len().max(1)).unwrap_or(u32::MAX)
    }
}

/// What `--measure` found.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// 4 KiB `pwrite`s at increasing offsets, no sync.
    pub writes: Stats,
    /// `fdatasync` after each 4 KiB write.
    pub syncs: Stats,
    pub sync_interval: Duration,
}

/// Writes timed without a sync.
pub const MEASURE_WRITES: usize = 1000;
/// Syncs timed.
pub const MEASURE_SYNCS: usize = 50;

/// Time `writes` 4 KiB writes and `syncs` fdatasyncs (each after a 4 KiB write) in a
/// temporary file in `dir`, written through first as the WAL's new segments are. The file
/// is removed.
pub fn measure(fs: &dyn FileSystem, dir: &Path, writes: usize, syncs: usize) -> Result<Measurement, DoctorError> {
    fs.create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let path = dir.join(format!(".spillway-doctor-{}.tmp", std::process::id()));
    let result = measure_in(fs, &path, writes, syncs);
    let removed = std::fs::remove_file(&path);
    let m = result?;
    removed.map_err(io_err(format!("removing {}", path.display())))?;
    Ok(m)
}

fn measure_in(fs: &dyn FileSystem, path: &Path, writes: usize, syncs: usize) -> Result<Measurement, DoctorError> {
    const BLOCK: usize = 4096;
    let what = || format!("measuring in {}", path.display());
    let f = fs.open(path, true).map_err(io_err(what()))?;
    let len = (writes + syncs) * BLOCK;
    f.allocate(len as u64).map_err(io_err(what()))?;
    // Written through with zeroes and synced first, as new WAL segments are
    // (`wal::prepare`): the timed syncs then pay for data only, as the WAL's do, and not
    // for the preallocation or its unwritten extents.
    f.write_all_vectored_at(&[IoSlice::new(&vec![0u8; len])], 0).map_err(io_err(what()))?;
    f.sync_data().map_err(io_err(what()))?;
    let block = vec![0x5au8; BLOCK];
    let mut w = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        f.write_all_vectored_at(&[IoSlice::new(&block)], (i * BLOCK) as u64).map_err(io_err(what()))?;
        w.push(t.elapsed());
    }
    f.sync_data().map_err(io_err(what()))?;
    let mut s = Vec::with_capacity(syncs);
    for i in 0..syncs {
        f.write_all_vectored_at(&[IoSlice::new(&block)], ((writes + i) * BLOCK) as u64).map_err(io_err(what()))?;
        let t = Instant::now();
        f.sync_data().map_err(io_err(what()))?;
        s.push(t.elapsed());
    }
    let syncs = Stats::new(s);
    let sync_interval = derive_sync_interval(syncs.median());
    Ok(Measurement { writes: Stats::new(w), syncs, sync_interval })
}

/// A latency for people: µs below 1 ms, ms below 1 s.
fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1}µs")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// Warnings about the effective settings on the detected platform.
pub fn warnings(r: &Resolved) -> Vec<String> {
    let mut out = Vec::new();
    let s = &r.settings;
    match judge_data_dir(&r.detected.fs) {
        DirVerdict::Ok => {}
        DirVerdict::Warn(why) => out.push(why),
        DirVerdict::Refuse(why) => out.push(format!("`serve` refuses this data directory: {why}")),
    }
    if matches!(r.detected.storage, Storage::SdCard { .. } | Storage::Emmc { .. }) && r.profile != Profile::JetsonSd {
        out.push(format!(
            "the data directory is on {} but the profile is {}: consider --profile jetson-sd",
            r.detected.storage,
            r.profile.name()
        ));
    }
    if !s.memory {
        if let Err(e) = s.volume_config().validate() {
            out.push(format!("`serve` refuses these settings: {e}"));
        }
    }
    if s.durability == Durability::Async {
        out.push("durability = async: FLUSH is acknowledged without syncing (unsafe)".into());
    }
    if s.memory {
        out.push("memory = true: RAM volumes, nothing survives a restart".into());
    }
    if let Some(mem) = r.detected.mem_total {
        let ours = s.max_dirty.saturating_add(s.cache_bytes);
        if ours > mem / 4 {
            out.push(format!(
                "max_dirty + cache_bytes = {} is more than a quarter of this machine's memory ({})",
                format_size(ours),
                format_size(mem)
            ));
        }
    }
    out
}

fn describe(d: &Detected) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "  data directory probed: {}", d.probed.display());
    let _ = writeln!(o, "  file system:           {}", d.fs);
    let _ = writeln!(o, "  storage:               {}", d.storage);
    let _ = writeln!(o, "  kernel:                {} (WSL: {})", d.kernel_release, if d.wsl { "yes" } else { "no" });
    let board = d.board.as_deref().map_or("none".to_owned(), |b| format!("{b:?}"));
    let _ = writeln!(
        o,
        "  board:                 {board} (Jetson: {})",
        if d.jetson_model.is_some() { "yes" } else { "no" }
    );
    let mem = d.mem_total.map_or("unknown".to_owned(), |m| format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64));
    let _ = writeln!(o, "  memory:                {mem}");
    let simd: Vec<String> = d.simd.iter().map(|(codec, k)| format!("{codec}: {k}")).collect();
    let _ = writeln!(o, "  SIMD kernels:          {}", simd.join(", "));
    o
}

/// The whole report (without a measurement).
pub fn report(r: &Resolved) -> String {
    let mut o = String::new();
    o.push_str("detected:\n");
    o.push_str(&describe(&r.detected));
    let cfg = r.config_file.as_ref().map_or("none".to_owned(), |p| p.display().to_string());
    let _ = writeln!(o, "config file: {cfg}");
    let _ = writeln!(o, "profile: {} ({})", r.profile.name(), r.profile_reason);
    o.push_str("effective settings:\n");
    let table = toml::to_string(&r.settings.to_layer()).unwrap_or_else(|e| format!("(cannot print: {e})\n"));
    for line in table.lines() {
        let _ = writeln!(o, "  {line}");
    }
    let w = warnings(r);
    if w.is_empty() {
        o.push_str("warnings: none\n");
    } else {
        o.push_str("warnings:\n");
        for line in w {
            let _ = writeln!(o, "  - {line}");
        }
    }
    o
}

/// Print the measurement.
pub fn measurement_report(m: &Measurement, dir: &Path, injected: Option<Duration>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "measured in {}:", dir.display());
    if let Some(d) = injected {
        let _ = writeln!(o, "  emulation: every sync takes {} longer (--inject-sync-latency)", format_duration(d));
    }
    for (name, s) in [("4 KiB write, no sync", &m.writes), ("fdatasync after a 4 KiB write", &m.syncs)] {
        let _ = writeln!(
            o,
            "  {name:<30} n={:<5} median {:>9}  p90 {:>9}  max {:>9}  mean {:>9}",
            s.count(),
            human(s.median()),
            human(s.percentile(90)),
            human(s.max()),
            human(s.mean())
        );
    }
    let _ = writeln!(
        o,
        "  derived batched sync interval: {} ({SYNC_INTERVAL_FACTOR} x median fdatasync, clamped to {}..{}, rounded up to 10ms)",
        format_duration(m.sync_interval),
        format_duration(MIN_SYNC_INTERVAL),
        format_duration(MAX_SYNC_INTERVAL)
    );
    let _ = writeln!(o, "  as a config line: sync_interval = \"{}\"", format_duration(m.sync_interval));
    o
}

/// `spillway doctor`.
pub fn run(args: crate::cli::DoctorArgs) -> Result<(), DoctorError> {
    let r = super::resolve(args.config.as_deref(), &args.settings, &args.detect_root)?;
    print!("{}", report(&r));
    if args.measure {
        let dir: PathBuf = r.settings.data_dir.clone();
        let fs: Arc<dyn FileSystem> = match args.inject_sync_latency {
            Some(d) => {
                let (fs, faults) = FaultyFs::new(Arc::new(StdFs));
                *faults.sync_latency.lock() = d;
                Arc::new(fs)
            }
            None => Arc::new(StdFs),
        };
        let m = measure(fs.as_ref(), &dir, MEASURE_WRITES, MEASURE_SYNCS)?;
        print!("{}", measurement_report(&m, &dir, args.inject_sync_latency));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_rule() {
        let ms = Duration::from_millis;
        assert_eq!(derive_sync_interval(Duration::from_micros(300)), ms(100), "fast disk: the floor");
        assert_eq!(derive_sync_interval(ms(10)), ms(200));
        assert_eq!(derive_sync_interval(Duration::from_micros(10_100)), ms(210), "rounded up to 10 ms");
        assert_eq!(derive_sync_interval(ms(25)), ms(500));
        assert_eq!(derive_sync_interval(ms(500)), ms(2000), "the ceiling");
    }

    #[test]
    fn percentiles() {
        let s = Stats::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.median(), Duration::from_millis(50));
        assert_eq!(s.percentile(90), Duration::from_millis(90));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(s.mean(), Duration::from_micros(50_500));
        assert_eq!(Stats::new(vec![]).median(), Duration::ZERO);
    }

    #[test]
    fn measure_counts_its_syncs_and_removes_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, faults) = FaultyFs::new(Arc::new(StdFs));
        let m = measure(&fs, dir.path(), 20, 5).expect("measures");
        assert_eq!(m.writes.count(), 20);
        assert_eq!(m.syncs.count(), 5);
        // One write of zeroes through the file and its sync, one sync after the unsynced
        // writes, then the timed ones.
        assert_eq!(faults.syncs(), 7);
        assert_eq!(faults.writes(), 1 + 25);
        assert_eq!(faults.bytes_written.load(std::sync::atomic::Ordering::SeqCst), 2 * 25 * 4096);
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0, "temporary file left behind");
    }
}
