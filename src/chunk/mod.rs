//! Chunk objects: the format, the in-memory chunk set, the manifest, reading frames back,
//! and the spiller that moves the WAL into chunks and compacts them.

pub mod base;
pub mod cold;
pub mod format;
pub mod manifest;
pub mod rebuild;
pub mod recovery;
pub mod set;
pub mod spill_read;
pub mod spiller;
pub mod store;

use thiserror::Error;

use crate::backend::BackendError;
use crate::codec::Compression;

/// The codec pipeline new chunks are written with, for logs: `lz4`, `zstd:3 + par2 10%`,
/// `none + par2 5% + yenc`.
pub fn pipeline_name(codec: Compression, par2_percent: u8, transport: u8) -> String {
    let mut s = codec.to_string();
    if par2_percent > 0 {
        s.push_str(&format!(" + par2 {par2_percent}%"));
    }
    if transport == format::TRANSPORT_YENC {
        s.push_str(" + yenc");
    }
    s
}

#[derive(Debug, Error)]
pub enum ChunkError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("chunk {chunk:016x}: {source}")]
    Format {
        chunk: u64,
        #[source]
        source: format::ChunkFormatError,
    },
    #[error("chunk {chunk:016x} frame {frame} is damaged ({detail}); the blocks in it cannot be read")]
    Damaged { chunk: u64, frame: u32, detail: String },
    #[error("chunk {chunk:016x} recovery data: {source}")]
    Recovery {
        chunk: u64,
        #[source]
        source: crate::codec::par2::Par2Error,
    },
    #[error("chunk {0:016x} is not known to this volume")]
    Unknown(u64),
    #[error("manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    /// WAL data the spill must move is damaged (a checksum, a record where the directory
    /// put another, a record that does not decompress): it cannot be spilled, ever.
    #[error("{0}")]
    WalDamaged(String),
    #[error("{0}")]
    Other(String),
}

impl ChunkError {
    /// An error reading WAL records for the spill: damage, or I/O (which may pass).
    pub fn from_wal_read(e: crate::wal::WalError) -> Self {
        match e {
            crate::wal::WalError::Corrupt { .. } => ChunkError::WalDamaged(e.to_string()),
            e => ChunkError::Other(e.to_string()),
        }
    }
}
