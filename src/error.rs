//! Volume errors, and the one place where they become NBD wire errors.

use std::path::PathBuf;

use nbd::{DeviceError, Errno};

use crate::volume_meta::MetaError;
use crate::wal::WalError;

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A request reached the volume outside its bounds. The protocol layer checks ranges
    /// first, so this is a bug guard rather than a client error.
    #[error("range {offset}+{len} is outside the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: MetaError,
    },
    #[error("{path} says the volume is {existing} bytes, but --size asks for {asked}; volumes cannot be resized yet")]
    SizeMismatch { path: PathBuf, existing: u64, asked: u64 },
    #[error("invalid volume configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Chunk(#[from] crate::chunk::ChunkError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

impl VolumeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        VolumeError::Io { what: what.into(), source }
    }
}

impl DeviceError for VolumeError {
    fn errno(&self) -> Errno {
        match self {
            VolumeError::OutOfRange { .. } | VolumeError::Config(_) => Errno::Inval,
            VolumeError::Wal(WalError::Closed) => Errno::Shutdown,
            VolumeError::Wal(_)
            | VolumeError::Io { .. }
            | VolumeError::Meta { .. }
            | VolumeError::SizeMismatch { .. }
            | VolumeError::Chunk(_)
            | VolumeError::Backend(_) => Errno::Io,
        }
    }
}
