//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::config::settings::SettingsArgs;
use crate::units::{parse_duration, parse_size};

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
    /// Check every chunk object of the volumes against its checksums and its PAR2 recovery
    /// data, and repair what can be repaired (written back in place). Offline: stop the
    /// server first. Exits non-zero when a chunk is damaged beyond repair; the log names
    /// the volume blocks at risk.
    Scrub(ScrubArgs),
    /// Config file help: `spillway config --print-defaults` prints a complete commented
    /// /etc/spillway/spillway.toml with every key at its default.
    Config(ConfigArgs),
    /// Say what this machine is (storage behind the data directory, WSL, Jetson, memory,
    /// SIMD kernels), which profile `serve` would choose, the effective settings, and any
    /// warnings. With --measure, time syncs and writes in the data directory.
    Doctor(Box<DoctorArgs>),
    /// Copy a raw disk image into a new volume, offline (no server may be running on the
    /// data directory). Holes and all-zero blocks are not stored. Memory does not grow with
    /// the image's size; the index of stored blocks grows by about 13 bytes per 4 KiB.
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
pub struct ScrubArgs {
    /// Data directory of the volumes.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    /// Name of an export to scrub; repeat for several [default: every volume in DATA_DIR].
    #[arg(long = "export", value_name = "NAME")]
    pub exports: Vec<String>,

    #[command(flatten)]
    pub backend: BackendArgs,
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

impl BackendArgs {
    /// The backend of the volume in `volume_dir` named `volume_name` (see
    /// [`crate::backend::for_volume`]).
    pub fn for_volume(
        &self,
        volume_dir: &std::path::Path,
        volume_name: &str,
    ) -> Result<crate::backend::DynBackend, crate::backend::BackendError> {
        crate::backend::for_volume(self.backend.as_deref(), self.s3_endpoint.as_deref(), volume_dir, volume_name)
    }
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
    /// Read settings from this TOML file (see `spillway config --print-defaults`); flags
    /// override it. [default: /etc/spillway/spillway.toml, if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve even from a data directory that is refused (one on 9p, such as WSL2's /mnt/c).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,

    /// Benchmarks only: add this much latency to every sync, to emulate slow storage
    /// (an SD card, WSL2's 9p).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub inject_sync_latency: Option<Duration>,

    /// Benchmarks only: emulate a device that writes this many bytes per second (e.g. 20M
    /// for an SD card): every WAL sync also waits as long as the bytes written since the
    /// last sync take at this rate.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub inject_write_bandwidth: Option<u64>,

    /// Benchmarks only: add this much latency to every call to the object backend (a
    /// distant S3 endpoint, a slow uplink).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub inject_backend_latency: Option<Duration>,

    /// Tests only: read /proc and /sys below this directory instead of /, to fake a
    /// platform for detection (docs/profiles.md).
    #[arg(long, value_name = "DIR", hide = true, default_value = "/")]
    pub detect_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print a complete config file: every key with its meaning and default.
    #[arg(long, required = true)]
    pub print_defaults: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Read settings from this TOML file, as `serve --config` does.
    /// [default: /etc/spillway/spillway.toml, if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also time fdatasync and 4 KiB writes in the data directory (a few seconds; creates
    /// the directory if needed, writes and removes a small temporary file), and derive the
    /// batched mode's sync interval.
    #[arg(long)]
    pub measure: bool,

    /// The settings `serve` would get with the same flags.
    #[command(flatten)]
    pub settings: SettingsArgs,

    /// Benchmarks and tests only: add this much latency to every sync that --measure
    /// times, the emulation of `serve --inject-sync-latency`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, hide = true)]
    pub inject_sync_latency: Option<Duration>,

    /// Tests only: read /proc and /sys below this directory instead of /.
    #[arg(long, value_name = "DIR", hide = true, default_value = "/")]
    pub detect_root: PathBuf,
}
