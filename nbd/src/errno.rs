//! NBD error values, and the one place where request-validation failures map to them.

use std::fmt;

/// The error values the protocol allows on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted (write to a read-only export).
    Perm,
    /// Input/output error.
    Io,
    /// Cannot allocate memory. Servers should avoid it.
    NoMem,
    /// Invalid argument.
    Inval,
    /// No space left on device (writes past the end).
    NoSpc,
    /// Value too large (reads that cannot be sent unfragmented).
    Overflow,
    /// Operation not supported (FAST_ZERO that would not be fast).
    NotSup,
    /// Server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value that goes in the error field of a reply.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        };
        f.write_str(s)
    }
}

/// Why a well-framed request was refused before it reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("command flags {flags:#06x} are not valid for this command")]
    BadFlags { flags: u16 },
    #[error("offset and length of FLUSH must be zero")]
    FlushNotZero,
    #[error("offset and length of DISC must be zero")]
    DiscNotZero,
    #[error("write to a read-only export")]
    ReadOnly,
    #[error("request of {len} bytes exceeds the maximum block size {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("read of {len} bytes exceeds the maximum block size {max} and cannot be fragmented")]
    ReadTooLarge { len: u32, max: u32 },
    #[error("range {offset}+{len} extends beyond the export size {size}")]
    ReadBeyondEnd { offset: u64, len: u32, size: u64 },
    #[error("range {offset}+{len} extends beyond the export size {size}")]
    WriteBeyondEnd { offset: u64, len: u32, size: u64 },
    #[error("zero-length request")]
    ZeroLength,
    #[error("block status needs a negotiated metadata context")]
    NoMetaContext,
}

impl RequestError {
    /// The wire error for each refusal, as the spec lays them down.
    pub fn errno(self) -> Errno {
        match self {
            RequestError::UnknownCommand(_)
            | RequestError::BadFlags { .. }
            | RequestError::FlushNotZero
            | RequestError::DiscNotZero
            | RequestError::TooLarge { .. }
            | RequestError::ReadBeyondEnd { .. }
            | RequestError::ZeroLength
            | RequestError::NoMetaContext => Errno::Inval,
            RequestError::ReadOnly => Errno::Perm,
            RequestError::ReadTooLarge { .. } => Errno::Overflow,
            RequestError::WriteBeyondEnd { .. } => Errno::NoSpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec() {
        let pairs = [
            (Errno::Perm, 1),
            (Errno::Io, 5),
            (Errno::NoMem, 12),
            (Errno::Inval, 22),
            (Errno::NoSpc, 28),
            (Errno::Overflow, 75),
            (Errno::NotSup, 95),
            (Errno::Shutdown, 108),
        ];
        for (e, c) in pairs {
            assert_eq!(e.code(), c, "{e}");
        }
    }
}
