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
    Serve(ServeArgs),
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

    /// Serve RAM volumes instead: nothing is written to disk and the data does NOT survive
    /// a restart. For benchmarks of the protocol path.
    #[arg(long)]
    pub memory: bool,

    /// Benchmarks only: add this much latency to every sync, to emulate slow storage
    /// (an SD card, WSL2's 9p).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub inject_sync_latency: Option<Duration>,
}
