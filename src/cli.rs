//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_duration, parse_size};
use crate::wal::{Durability, RecoveryMode};

#[derive(Debug, Parser)]
#[command(name = "spillway", version, about = "A userspace virtual block device served over NBD")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve volumes over NBD (TCP, and optionally a Unix socket).
    ///
    /// Each export is a durable volume under DATA_DIR/volumes/NAME: a write-ahead log with
    /// the durability mode of --durability. FLUSH and FUA are always honoured, except in
    /// async mode. With --memory the exports are RAM volumes instead, whose data does not
    /// survive a restart.
    Serve(Box<ServeArgs>),
    /// Rebuild a volume's local state (manifest and index) from its backend alone, for a
    /// machine whose local disk died. The volume directory must not exist yet.
    Recover(RecoverArgs),
    /// Copy a raw disk image into a new volume, offline (no server may be running on the
    /// data directory). Holes and all-zero blocks are not stored. Memory does not grow with
    /// the image's size; the volume's block index grows with the data stored.
    Import(ImportArgs),
    /// Copy a volume out to a raw image file, offline. Ranges that read as zeroes become
    /// holes in the file.
    Export(ExportArgs),
    /// List the volumes of a data directory: size, used, dirty data, chunks, WAL, codec.
    List(ListArgs),
    /// Show one volume: size, used, chunks, WAL, dirty data and the codec pipeline.
    Info(InfoArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Raw image to read (a regular file; its size must be a multiple of 4096 bytes and
    /// becomes the volume's size).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Name of the new volume.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub export: String,

    /// Data directory holding the volumes (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    /// Codec of the chunk frames: lz4, zstd[:LEVEL] or none.
    #[arg(long, value_name = "CODEC", default_value = "lz4")]
    pub codec: crate::codec::Compression,

    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Name of the volume to copy out.
    #[arg(value_name = "NAME")]
    pub export: String,

    /// Raw image file to write (must not exist, unless --force).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,

    /// Data directory holding the volumes.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Data directory holding the volumes.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Name of the volume.
    #[arg(value_name = "NAME")]
    pub export: String,

    /// Data directory holding the volumes.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Where chunk objects live: s3://BUCKET/PREFIX (credentials and region from the
    /// AWS_* environment variables), or a directory. [default: DATA_DIR/volumes/NAME/objects]
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,

    /// S3 endpoint URL for S3-compatible stores (path-style addressing; http:// allowed).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Data directory to rebuild the volumes into.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    /// Name of an export to rebuild; repeat for several [default: default].
    #[arg(long = "export", value_name = "NAME")]
    pub exports: Vec<String>,

    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the volumes' state (created if missing). One server at a time.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    /// TCP address to listen on. Port 0 picks a free port; the log says which.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,

    /// Also listen on a Unix socket at this path.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,

    /// Size of each export: bytes, or with a K, M, G, T suffix (powers of 1024). A new
    /// volume gets it [default: 1G]; an existing volume keeps its size, and a different
    /// --size is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,

    /// Name of an export to serve; repeat for several [default: default]. The empty export
    /// name "" reaches the export named `default`.
    #[arg(long = "export", value_name = "NAME")]
    pub exports: Vec<String>,

    /// Serve every export read-only: writes, trims and zeroes fail with EPERM.
    #[arg(long)]
    pub read_only: bool,

    /// When a reply may go out. strict: after its WAL record is synced. batched: at once,
    /// the WAL syncs every --sync-interval or --sync-bytes. relaxed: at once, the WAL syncs
    /// on FLUSH, FUA and segment roll. async: everything at once, FLUSH included (UNSAFE).
    #[arg(long, value_enum, default_value = "batched")]
    pub durability: Durability,

    /// Batched mode: longest time written data stays unsynced (ms, s or m).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub sync_interval: Duration,

    /// Batched mode: most data written but unsynced.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub sync_bytes: u64,

    /// What to do with a damaged WAL at start-up. tolerate-tail: drop a tail torn by a
    /// crash, refuse to start on damage anywhere else. tolerate-corruption: drop damaged
    /// records wherever they are, log what was lost, and start.
    #[arg(long, value_enum, default_value = "tolerate-tail")]
    pub recovery_mode: RecoveryMode,

    /// Memory for written data not yet in the WAL; writers wait at this bound.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    pub max_dirty: u64,

    /// Size of each preallocated WAL segment file.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub wal_segment_size: u64,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Codec of chunk frames: lz4, zstd[:LEVEL] (1-22, default 3) or none. Existing chunks
    /// keep the codec they were written with.
    #[arg(long, value_name = "CODEC", default_value = "lz4")]
    pub codec: crate::codec::Compression,

    /// Where a FLUSH or FUA reply lands. local: durable in the local WAL, the backend
    /// catches up in the background. backend: the reply waits until the data is in a chunk
    /// on the backend (for a local disk that cannot be trusted).
    #[arg(long, value_enum, default_value = "local")]
    pub flush_target: crate::volume::FlushTarget,

    /// Memory for decompressed chunk frames (the read cache).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub cache_bytes: u64,

    /// Frames fetched ahead of sequential reads (64 KiB each); 0 turns readahead off.
    #[arg(long, value_name = "FRAMES", default_value = "2")]
    pub readahead: u32,

    /// Most local WAL space; when the backend is slow or down the WAL fills up to this,
    /// then writes wait (they do not fail) until the spill catches up.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub max_wal: u64,

    /// Raw data per chunk object.
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Synced data older than this goes to the backend even if its WAL segment is not full.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub spill_age: Duration,

    /// Chunks with a smaller fraction of live blocks are compacted (0 turns compaction off).
    #[arg(long, value_name = "FRACTION", default_value = "0.7")]
    pub compact_below: f64,

    /// Uploads to the backend in flight at once.
    #[arg(long, value_name = "N", default_value = "4")]
    pub upload_parallel: usize,

    /// Serve Prometheus metrics (text format) at http://HOST:PORT/metrics, e.g.
    /// 127.0.0.1:9108. Off unless given. The names are listed in docs/metrics.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve RAM volumes instead: nothing is written to disk and the data does NOT survive
    /// a restart. For benchmarks of the protocol path.
    #[arg(long)]
    pub memory: bool,

    /// Benchmarks only: add this much latency to every sync, to emulate slow storage
    /// (an SD card, WSL2's 9p).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub inject_sync_latency: Option<Duration>,
}
