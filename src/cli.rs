//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::units::parse_size;

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
    /// NOTE: this build serves RAM-backed volumes. Their data lives in memory only and does
    /// NOT survive a restart of the server. The durable engine (WAL and chunk store) is not
    /// in this build yet.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the volume's state (created if missing). The RAM volume stores nothing
    /// there yet.
    #[arg(long, value_name = "DIR", default_value = "./spillway-data")]
    pub data_dir: PathBuf,

    /// TCP address to listen on. Port 0 picks a free port; the log says which.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,

    /// Also listen on a Unix socket at this path.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,

    /// Size of each export: bytes, or with a K, M, G, T suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub size: u64,

    /// Name of an export to serve; repeat for several [default: default]. The empty export
    /// name "" reaches the export named `default`.
    #[arg(long = "export", value_name = "NAME")]
    pub exports: Vec<String>,

    /// Serve every export read-only: writes, trims and zeroes fail with EPERM.
    #[arg(long)]
    pub read_only: bool,
}
