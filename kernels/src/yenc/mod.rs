//! yEnc 1.3 for one object: a valid single-part yEnc file.
//!
//! Encoding adds 42 to every byte; NUL, LF, CR and `=` are always escaped as `=` followed by
//! the byte plus 64; TAB and space are escaped at the start and end of a line, `.` at the
//! start. Lines hold 128 characters (129 when the last is an escape). The body sits between
//! `=ybegin line=128 size=N name=X` and `=yend size=N crc32=xxxxxxxx` (CRC32/IEEE of the
//! data). Decoding checks the sizes and the CRC and returns a typed error rather than bad
//! data. The body kernels (scalar, SSSE3/AVX2, NEON) are chosen at run time and give the same
//! bytes. See `docs/codecs.md`.

pub mod frame;
pub mod kernel;
pub mod scalar;
mod tables;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use thiserror::Error;

pub use kernel::{Kernel, KernelKind};

/// Characters per encoded line.
pub const LINE_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum YencError {
    #[error("no =ybegin line")]
    MissingBegin,
    #[error("no =yend line: the yEnc data is truncated")]
    MissingEnd,
    #[error("multi-part yEnc (=ypart) is not supported")]
    Multipart,
    #[error("bad or missing `{0}` in a yEnc keyword line")]
    BadHeader(&'static str),
    #[error("=yend has no crc32")]
    MissingCrc,
    #[error("size mismatch: =ybegin says {begin}, =yend says {end}, the body decodes to {decoded}")]
    SizeMismatch { begin: u64, end: u64, decoded: u64 },
    #[error("crc32 mismatch: =yend says {expected:08x}, the data has {actual:08x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("the body ends inside an escape")]
    DanglingEscape,
}

/// A decoded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub name: String,
    pub data: Vec<u8>,
    /// CRC32/IEEE of `data` (checked against `=yend`).
    pub crc: u32,
}

/// Worst-case encoded body length for `len` input bytes.
pub fn max_body_len(len: usize, line_len: usize) -> usize {
    2 * len + 2 * (len / (line_len / 2).max(1) + 1) + 64
}

/// A complete single-part yEnc file holding `data` under `name`, with the best kernel.
pub fn encode(name: &str, data: &[u8]) -> Vec<u8> {
    Kernel::best().encode(name, data)
}

/// Decode a single-part yEnc file as far as its framing allows, reporting rather than
/// refusing a failed size or CRC32 check (see [`Kernel::decode_unchecked`]).
pub fn decode_unchecked(bytes: &[u8]) -> Result<(Decoded, Option<YencError>), YencError> {
    Kernel::best().decode_unchecked(bytes)
}

/// Decode a single-part yEnc file, checking sizes and CRC32, with the best kernel.
pub fn decode(bytes: &[u8]) -> Result<Decoded, YencError> {
    Kernel::best().decode(bytes)
}

#[cfg(test)]
mod tests;
