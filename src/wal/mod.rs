//! The write-ahead log: record and segment formats, the group-commit writer, durability
//! policy, and replay.

pub mod batch;
pub mod durability;
pub mod hold;
pub mod lend;
pub mod prepare;
pub mod record;
pub mod replay;
pub mod segment;
pub mod writer;

use std::path::PathBuf;

pub use durability::{Durability, SyncPolicy};

/// Why the WAL failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Every write and flush after the first failure, with what that failure was.
    #[error("the volume is poisoned ({0}); restart the server")]
    Poisoned(String),
    #[error("the WAL is shut down")]
    Closed,
    #[error(
        "WAL corruption in {path}: {detail} (start with --recovery-mode tolerate-corruption to drop the damaged part)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("WAL segment {path} belongs to another volume")]
    ForeignSegment { path: PathBuf },
    #[error(
        "WAL segment {path} has format version {version}, which this build cannot read (it reads versions {min} to {max}): \
         start the build that wrote it"
    )]
    Version { path: PathBuf, version: u32, min: u32, max: u32 },
}

impl WalError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        WalError::Io { what: what.into(), source }
    }
}

/// How WAL data records are stored (`docs/wal.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WalCompress {
    /// Raw 4 KiB blocks.
    #[default]
    None,
    /// One LZ4 block per record when that saves at least an eighth of its bytes; records
    /// that do not compress that well stay raw.
    Lz4,
}

/// How replay treats damage (compare raft-engine's RecoveryMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecoveryMode {
    /// Drop a torn tail (unsynced data cut short by a crash); refuse to start on damage
    /// anywhere else.
    TolerateTail,
    /// Drop damaged records wherever they are, log what was lost, and start.
    TolerateCorruption,
}
