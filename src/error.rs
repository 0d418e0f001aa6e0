//! Volume errors, and the one place where they become NBD wire errors.

use nbd::{DeviceError, Errno};

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A request reached the volume outside its bounds. The protocol layer checks ranges
    /// first, so this is a bug guard rather than a client error.
    #[error("range {offset}+{len} is outside the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

impl DeviceError for VolumeError {
    fn errno(&self) -> Errno {
        match self {
            VolumeError::OutOfRange { .. } => Errno::Inval,
        }
    }
}
