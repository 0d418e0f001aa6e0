//! The tunable settings of `spillway serve`, and how their layers combine.
//!
//! One settings layer ([`SettingsArgs`], every field optional) comes from each of: the
//! chosen platform profile, the config file, and the command line. [`Settings`] holds the
//! effective values: built-in default < profile < config file < command-line flag.
//! [`SettingsArgs`] is both the clap argument group and the TOML schema, so a flag and its
//! config key cannot drift apart: the key is the flag's long name with `-` written `_`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::chunk::spiller::SpillConfig;
use crate::codec::Compression;
use crate::units::{format_duration, format_size, parse_duration, parse_size};
use crate::volume::{FlushTarget, VolumeConfig};
use crate::wal::{Durability, RecoveryMode, WalCompress};

use super::profile::ProfileChoice;

/// One layer of settings: what one source (profile, file or command line) says. `None`
/// (or an empty list) means "this source does not say". The doc comments are the `--help`
/// text and, through `config --print-defaults`, the comments of the config file.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsArgs {
    /// Directory for the volumes' state (created if missing). One server at a time.
    /// [default: ./spillway-data]
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// TCP address to listen on. Port 0 picks a free port; the log says which.
    /// [default: 127.0.0.1:10809]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Also listen on a Unix socket at this path. [default: none]
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,

    /// Size of each export: bytes, or with a K, M, G, T suffix (powers of 1024). A new
    /// volume gets it [default: 1G]; an existing volume keeps its size, and a different
    /// --size is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub size: Option<u64>,

    /// Name of an export to serve; repeat for several [default: default]. The empty export
    /// name "" reaches the export named `default`. In the config file: a list.
    #[arg(long = "export", value_name = "NAME")]
    #[serde(default, rename = "export", skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,

    /// Serve every export read-only: writes, trims and zeroes fail with EPERM.
    /// [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,

    /// When a reply may go out. strict: after its WAL record is synced. batched: at once,
    /// the WAL syncs every --sync-interval or --sync-bytes. relaxed: at once, the WAL syncs
    /// on FLUSH, FUA and segment roll. async: everything at once, FLUSH included (UNSAFE).
    /// [default: batched]
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value_enum")]
    pub durability: Option<Durability>,

    /// Batched mode: longest time written data stays unsynced (ms, s or m).
    /// [default: 100ms; the profile may change it]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub sync_interval: Option<Duration>,

    /// Batched mode: most data written but unsynced. [default: 16M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub sync_bytes: Option<u64>,

    /// What to do with a damaged WAL at start-up. tolerate-tail: drop a tail torn by a
    /// crash, refuse to start on damage anywhere else. tolerate-corruption: drop damaged
    /// records wherever they are, log what was lost, and start. [default: tolerate-tail]
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value_enum")]
    pub recovery_mode: Option<RecoveryMode>,

    /// Memory for written data not yet in the WAL; writers wait at this bound (at least
    /// 40M). Relaxed and async modes hold up to half of it as a write-back cache.
    /// [default: 128M; the server profile takes 1/16 of the memory, up to 2G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub max_dirty: Option<u64>,

    /// Size of each preallocated WAL segment file. [default: 32M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub wal_segment_size: Option<u64>,

    /// WAL writes are padded so that each one starts on this boundary (a power of two up
    /// to 1M). [default: 4K]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub wal_align: Option<u64>,

    /// Batched mode: writes wait in memory until this much is queued (or --sync-interval is
    /// up, or a FLUSH or FUA write comes) and reach the WAL in one large append (at most
    /// --sync-bytes and half of --max-dirty, the smaller wins; 0: append each batch at
    /// once). [default: 1M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub wal_append: Option<u64>,

    /// How WAL data records are stored. none: raw 4 KiB blocks. lz4: each record (up to
    /// 256K of blocks) as one LZ4 block when that saves at least an eighth of its bytes, so
    /// compressible data reaches a slow disk (an SD card) as fewer bytes; data that does not
    /// compress stays raw. Costs CPU on the writer thread and on reads not yet spilled.
    /// Segments written either way are read either way. [default: none]
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value_enum")]
    pub wal_compress: Option<WalCompress>,

    /// Where chunk objects live: s3://BUCKET/PREFIX (credentials and region from the
    /// AWS_* environment variables), or a directory. [default: DATA_DIR/volumes/NAME/objects]
    #[arg(long, value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,

    /// S3 endpoint URL for S3-compatible stores (path-style addressing; http:// allowed).
    /// [default: none, the AWS endpoint of AWS_REGION]
    #[arg(long, value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,

    /// Codec of chunk frames: lz4, zstd[:LEVEL] (1-22, default 3) or none. Existing chunks
    /// keep the codec they were written with. [default: lz4]
    #[arg(long, value_name = "CODEC")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_display")]
    pub codec: Option<Compression>,

    /// PAR2 recovery data written beside each chunk object X as X.par2, in percent of the
    /// chunk (0-100; 0: none). A chunk that fails its checksums is repaired from it and
    /// written back; `par2 verify`/`par2 repair` read it too. Existing chunks keep theirs.
    /// [default: 0]
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub par2: Option<u8>,

    /// Store a new volume's objects (chunks, recovery data, manifests) as yEnc text, for
    /// backends or transports that carry only text-safe bytes. Fixed when the volume is
    /// created: an existing volume keeps its transport, and true on a raw one is refused.
    /// [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yenc: Option<bool>,

    /// Where a FLUSH or FUA reply lands. local: durable in the local WAL, the backend
    /// catches up in the background. backend: the reply waits until the data is in a chunk
    /// on the backend (for a local disk that cannot be trusted). [default: local]
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value_enum")]
    pub flush_target: Option<FlushTarget>,

    /// Memory for decompressed chunk frames (the read cache).
    /// [default: 64M; the profile may change it]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub cache_bytes: Option<u64>,

    /// Frames fetched ahead of sequential reads (64 KiB each); 0 turns readahead off.
    /// [default: 2]
    #[arg(long, value_name = "FRAMES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readahead: Option<u32>,

    /// Most local WAL space; when the backend is slow or down the WAL fills up to this,
    /// then writes wait (they do not fail) until the spill catches up. [default: 1G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub max_wal: Option<u64>,

    /// Raw data per chunk object. [default: 4M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_size")]
    pub chunk_size: Option<u64>,

    /// Synced data older than this goes to the backend; younger data waits in the WAL
    /// until three quarters of --max-wal is sealed and unspilled. [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub spill_age: Option<Duration>,

    /// Chunks with a smaller fraction of live blocks are compacted (0 turns compaction
    /// off). [default: 0.7]
    #[arg(long, value_name = "FRACTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_below: Option<f64>,

    /// Uploads to the backend in flight at once. [default: 4; the profile may change it]
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_parallel: Option<usize>,

    /// Threads that serve each NBD connection, taking turns at its socket (2 to 64); 0
    /// serves connections on the shared async runtime instead (more throughput on 4 KiB
    /// reads at high queue depth, far more latency at queue depth 1: bench/README.md).
    /// [default: 2]
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_threads: Option<usize>,

    /// How long a connection thread that finds no request waiting keeps checking the
    /// socket before it sleeps (us, ms): on a VM a sleeping thread is slow to wake, and a
    /// busy client sends its next request within microseconds. Adaptive (a client slower
    /// than this is not polled for), and at most one thread fewer than the CPUs polls at
    /// once; 0 turns it off (so does --connection-threads 0). [default: 50us]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub busy_poll: Option<Duration>,

    /// Serve Prometheus metrics (text format) at http://HOST:PORT/metrics, e.g.
    /// 127.0.0.1:9108. The names are listed in docs/metrics.md. [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve RAM volumes instead: nothing is written to disk and the data does NOT survive
    /// a restart. For benchmarks of the protocol path. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,

    /// Lock the server's memory (mlockall) and mark it an I/O flusher
    /// (PR_SET_IO_FLUSHER, Linux 5.6+), so that serving a /dev/nbd device on this same
    /// host cannot deadlock under memory pressure. The log says which took effect.
    /// [default: false; true in the jetson-sd profile]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock: Option<bool>,

    /// Platform profile: auto (chosen from what `spillway doctor` detects), jetson-sd,
    /// wsl or server. It sets the defaults listed in docs/profiles.md; the config file
    /// and flags override them. [default: auto]
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value_enum")]
    pub profile: Option<ProfileChoice>,
}

/// The effective settings, every value decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub unix: Option<PathBuf>,
    /// `None`: a new volume gets [`crate::volume::DEFAULT_SIZE`], an existing one keeps its own.
    pub size: Option<u64>,
    pub exports: Vec<String>,
    pub read_only: bool,
    pub durability: Durability,
    pub sync_interval: Duration,
    pub sync_bytes: u64,
    pub recovery_mode: RecoveryMode,
    pub max_dirty: u64,
    pub wal_segment_size: u64,
    pub wal_align: u64,
    pub wal_append: u64,
    pub wal_compress: WalCompress,
    pub backend: Option<String>,
    pub s3_endpoint: Option<String>,
    pub codec: Compression,
    pub par2: u8,
    pub yenc: bool,
    pub flush_target: FlushTarget,
    pub cache_bytes: u64,
    pub readahead: u32,
    pub max_wal: u64,
    pub chunk_size: u64,
    pub spill_age: Duration,
    pub compact_below: f64,
    pub upload_parallel: usize,
    pub connection_threads: usize,
    pub busy_poll: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub memory: bool,
    pub memlock: bool,
    pub profile: ProfileChoice,
}

impl Default for Settings {
    /// The built-in defaults (they are also the `server` profile's values).
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./spillway-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 10809)),
            unix: None,
            size: None,
            exports: Vec::new(),
            read_only: false,
            durability: Durability::Batched,
            sync_interval: Duration::from_millis(100),
            sync_bytes: 16 << 20,
            recovery_mode: RecoveryMode::TolerateTail,
            max_dirty: 128 << 20,
            wal_segment_size: 32 << 20,
            wal_align: 4096,
            wal_append: 1 << 20,
            wal_compress: WalCompress::None,
            backend: None,
            s3_endpoint: None,
            codec: Compression::Lz4,
            par2: 0,
            yenc: false,
            flush_target: FlushTarget::Local,
            cache_bytes: 64 << 20,
            readahead: 2,
            max_wal: 1 << 30,
            chunk_size: 4 << 20,
            spill_age: Duration::from_secs(30),
            compact_below: 0.7,
            upload_parallel: 4,
            connection_threads: 2,
            busy_poll: Duration::from_micros(50),
            metrics_listen: None,
            memory: false,
            memlock: false,
            profile: ProfileChoice::Auto,
        }
    }
}

impl Settings {
    /// Lay `layer` over these settings: every value it gives replaces ours.
    pub fn apply(&mut self, layer: &SettingsArgs) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        let l = layer;
        set(&mut self.data_dir, &l.data_dir);
        set(&mut self.listen, &l.listen);
        if l.unix.is_some() {
            self.unix.clone_from(&l.unix);
        }
        if l.size.is_some() {
            self.size = l.size;
        }
        if !l.exports.is_empty() {
            self.exports.clone_from(&l.exports);
        }
        set(&mut self.read_only, &l.read_only);
        set(&mut self.durability, &l.durability);
        set(&mut self.sync_interval, &l.sync_interval);
        set(&mut self.sync_bytes, &l.sync_bytes);
        set(&mut self.recovery_mode, &l.recovery_mode);
        set(&mut self.max_dirty, &l.max_dirty);
        set(&mut self.wal_segment_size, &l.wal_segment_size);
        set(&mut self.wal_align, &l.wal_align);
        set(&mut self.wal_append, &l.wal_append);
        set(&mut self.wal_compress, &l.wal_compress);
        if l.backend.is_some() {
            self.backend.clone_from(&l.backend);
        }
        if l.s3_endpoint.is_some() {
            self.s3_endpoint.clone_from(&l.s3_endpoint);
        }
        set(&mut self.codec, &l.codec);
        set(&mut self.par2, &l.par2);
        set(&mut self.yenc, &l.yenc);
        set(&mut self.flush_target, &l.flush_target);
        set(&mut self.cache_bytes, &l.cache_bytes);
        set(&mut self.readahead, &l.readahead);
        set(&mut self.max_wal, &l.max_wal);
        set(&mut self.chunk_size, &l.chunk_size);
        set(&mut self.spill_age, &l.spill_age);
        set(&mut self.compact_below, &l.compact_below);
        set(&mut self.upload_parallel, &l.upload_parallel);
        set(&mut self.connection_threads, &l.connection_threads);
        set(&mut self.busy_poll, &l.busy_poll);
        if l.metrics_listen.is_some() {
            self.metrics_listen = l.metrics_listen;
        }
        set(&mut self.memory, &l.memory);
        set(&mut self.memlock, &l.memlock);
        set(&mut self.profile, &l.profile);
    }

    /// The configuration of each durable volume these settings serve.
    pub fn volume_config(&self) -> VolumeConfig {
        VolumeConfig {
            size: self.size,
            durability: self.durability,
            sync_interval: self.sync_interval,
            sync_bytes: self.sync_bytes,
            segment_bytes: self.wal_segment_size,
            wal_align: self.wal_align,
            wal_append: self.wal_append,
            wal_compress: self.wal_compress,
            max_dirty_bytes: usize::try_from(self.max_dirty).unwrap_or(usize::MAX),
            recovery: self.recovery_mode,
            max_wal_segments: usize::try_from(self.max_wal / self.wal_segment_size.max(1)).unwrap_or(usize::MAX),
            cache_bytes: usize::try_from(self.cache_bytes).unwrap_or(usize::MAX),
            readahead_frames: self.readahead,
            flush_target: self.flush_target,
            spill: SpillConfig {
                codec: self.codec,
                par2_percent: self.par2,
                chunk_bytes: usize::try_from(self.chunk_size).unwrap_or(usize::MAX),
                spill_age: self.spill_age,
                compact_below: self.compact_below,
                upload_parallel: self.upload_parallel,
                ..SpillConfig::default()
            },
            yenc: self.yenc,
            ..VolumeConfig::default()
        }
    }

    /// These settings as a layer that gives every value (for printing them as a file).
    pub fn to_layer(&self) -> SettingsArgs {
        SettingsArgs {
            data_dir: Some(self.data_dir.clone()),
            listen: Some(self.listen),
            unix: self.unix.clone(),
            size: self.size,
            exports: self.exports.clone(),
            read_only: Some(self.read_only),
            durability: Some(self.durability),
            sync_interval: Some(self.sync_interval),
            sync_bytes: Some(self.sync_bytes),
            recovery_mode: Some(self.recovery_mode),
            max_dirty: Some(self.max_dirty),
            wal_segment_size: Some(self.wal_segment_size),
            wal_align: Some(self.wal_align),
            wal_append: Some(self.wal_append),
            wal_compress: Some(self.wal_compress),
            backend: self.backend.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            codec: Some(self.codec),
            par2: Some(self.par2),
            yenc: Some(self.yenc),
            flush_target: Some(self.flush_target),
            cache_bytes: Some(self.cache_bytes),
            readahead: Some(self.readahead),
            max_wal: Some(self.max_wal),
            chunk_size: Some(self.chunk_size),
            spill_age: Some(self.spill_age),
            compact_below: Some(self.compact_below),
            upload_parallel: Some(self.upload_parallel),
            connection_threads: Some(self.connection_threads),
            busy_poll: Some(self.busy_poll),
            metrics_listen: self.metrics_listen,
            memory: Some(self.memory),
            memlock: Some(self.memlock),
            profile: Some(self.profile),
        }
    }
}

/// Sizes in the file: a string such as "128M" (as on the command line) or a byte count.
mod opt_size {
    use super::{format_size, parse_size};
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&format_size(*n)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"128M\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
                u64::try_from(n).map_err(|_| E::custom(format!("size {n} is negative")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
                Ok(n)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
                parse_size(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V).map(Some)
    }
}

/// Durations in the file: a string such as "100ms", "2s" or "1m".
mod opt_duration {
    use std::time::Duration;

    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// The enums of the command line, spelled as on the command line.
mod opt_value_enum {
    use clap::ValueEnum;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: ValueEnum, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v.as_ref().and_then(|v| v.to_possible_value()) {
            Some(p) => s.serialize_str(p.get_name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: ValueEnum, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        let s = String::deserialize(d)?;
        T::from_str(&s, false).map(Some).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_owned())
                .collect();
            serde::de::Error::custom(format!("{s:?} is not one of {}", names.join(", ")))
        })
    }
}

/// Values with `FromStr` and `Display` (the codec).
mod opt_display {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_absent_values_keep_the_lower_ones() {
        let mut s = Settings::default();
        let profile =
            SettingsArgs { sync_interval: Some(Duration::from_millis(200)), memlock: Some(true), ..Default::default() };
        let file = SettingsArgs { memlock: Some(false), max_dirty: Some(1 << 20), ..Default::default() };
        let flags = SettingsArgs { max_dirty: Some(2 << 20), ..Default::default() };
        s.apply(&profile);
        s.apply(&file);
        s.apply(&flags);
        assert_eq!(s.sync_interval, Duration::from_millis(200), "from the profile");
        assert!(!s.memlock, "the file turns off what the profile turned on");
        assert_eq!(s.max_dirty, 2 << 20, "the flag beats the file");
        assert_eq!(s.cache_bytes, Settings::default().cache_bytes, "nobody said: built-in default");
    }

    #[test]
    fn every_profile_gives_settings_the_engine_accepts() {
        use crate::config::profile::Profile;
        for p in [Profile::Server, Profile::Wsl, Profile::JetsonSd] {
            for mem in [None, Some(1 << 30), Some(4 << 30), Some(24 << 30), Some(1 << 40)] {
                let mut s = Settings::default();
                s.apply(&p.layer(mem));
                if let Err(e) = s.volume_config().validate() {
                    panic!("profile {} with {mem:?} bytes of memory: {e}", p.name());
                }
            }
        }
    }

    #[test]
    fn to_layer_round_trips_through_apply() {
        let mut s = Settings {
            unix: Some("/run/x.sock".into()),
            size: Some(5 << 30),
            wal_compress: WalCompress::Lz4,
            ..Settings::default()
        };
        s.exports = vec!["a".into(), "b".into()];
        let mut t = Settings::default();
        t.apply(&s.to_layer());
        assert_eq!(s, t);
    }

    #[test]
    fn wal_compress_reaches_the_volume_config() {
        let mut s = Settings::default();
        assert_eq!(s.volume_config().wal_compress, WalCompress::None, "off unless asked");
        let file: SettingsArgs = toml::from_str("wal_compress = \"lz4\"").expect("parses");
        s.apply(&file);
        assert_eq!(s.volume_config().wal_compress, WalCompress::Lz4);
        assert!(toml::from_str::<SettingsArgs>("wal_compress = \"zstd\"").is_err());
        let printed = toml::to_string(&s.to_layer()).expect("prints");
        assert!(printed.contains("wal_compress = \"lz4\""), "{printed}");
    }
}
