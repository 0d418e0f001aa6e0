//! Choosing a yEnc body kernel by CPU features, and the framing shared by all of them.

use std::sync::OnceLock;

use super::{frame, scalar, Decoded, YencError, LINE_LEN};

pub use crate::simd::KernelKind;

/// A body kernel this CPU can run; made only after checking the CPU, so calling it is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(KernelKind);

impl Kernel {
    pub fn get(kind: KernelKind) -> Option<Kernel> {
        let ok = match kind {
            KernelKind::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelKind::Ssse3 => {
                std::arch::is_x86_feature_detected!("ssse3") && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        };
        ok.then_some(Kernel(kind))
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        [KernelKind::Scalar, KernelKind::Ssse3, KernelKind::Avx2, KernelKind::Neon]
            .into_iter()
            .filter_map(Kernel::get)
            .collect()
    }

    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| Kernel::available().pop().unwrap_or(Kernel(KernelKind::Scalar)))
    }

    pub fn kind(self) -> KernelKind {
        self.0
    }

    /// Encode `data` continuing a line at `*col`; `is_end` says the input ends with it.
    pub fn encode_run(self, data: &[u8], is_end: bool, col: &mut usize, line_len: usize, out: &mut Vec<u8>) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            KernelKind::Ssse3 | KernelKind::Avx2 => super::x86::encode_run(self.0, data, is_end, col, line_len, out),
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => super::neon::encode_run(data, is_end, col, line_len, out),
            _ => scalar::encode_run(data, is_end, col, line_len, out),
        }
    }

    /// Append the encoded body of `data` to `out` (lines of `line_len`, CRLF-terminated) and
    /// return the CRC32 of `data`, computed a piece at a time while the piece is in cache.
    pub fn encode_body(self, data: &[u8], line_len: usize, out: &mut Vec<u8>) -> u32 {
        const PIECE: usize = 16 * 1024;
        out.reserve(super::max_body_len(data.len(), line_len));
        let mut col = 0;
        let mut crc = crc32fast::Hasher::new();
        let pieces = data.len().div_ceil(PIECE);
        for (n, piece) in data.chunks(PIECE).enumerate() {
            self.encode_run(piece, n + 1 == pieces, &mut col, line_len, out);
            crc.update(piece);
        }
        if col > 0 {
            out.extend_from_slice(b"\r\n");
        }
        crc.finalize()
    }

    /// Decode `body` continuing an escape when `*pending` (see [`scalar::decode_run`]).
    pub fn decode_run(self, body: &[u8], pending: &mut bool, out: &mut Vec<u8>) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            KernelKind::Ssse3 | KernelKind::Avx2 => super::x86::decode_run(self.0, body, pending, out),
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => super::neon::decode_run(body, pending, out),
            _ => scalar::decode_run(body, pending, out),
        }
    }

    /// Append the decoded bytes of `body` to `out` and return their CRC32, computed a piece
    /// at a time while the piece is still in cache; `Err` when it ends inside an escape.
    pub fn decode_body(self, body: &[u8], out: &mut Vec<u8>) -> Result<u32, YencError> {
        const PIECE: usize = 16 * 1024;
        let mut pending = false;
        let mut crc = crc32fast::Hasher::new();
        for piece in body.chunks(PIECE) {
            let before = out.len();
            self.decode_run(piece, &mut pending, out);
            crc.update(&out[before..]);
        }
        if pending {
            return Err(YencError::DanglingEscape);
        }
        Ok(crc.finalize())
    }

    /// A complete single-part yEnc file for `data` named `name`.
    pub fn encode(self, name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(super::max_body_len(data.len(), LINE_LEN) + name.len() + 96);
        out.extend_from_slice(format!("=ybegin line={LINE_LEN} size={} name={name}\r\n", data.len()).as_bytes());
        let crc = self.encode_body(data, LINE_LEN, &mut out);
        out.extend_from_slice(format!("=yend size={} crc32={crc:08x}\r\n", data.len()).as_bytes());
        out
    }

    /// Decode a single-part yEnc file as far as its framing allows, without refusing bytes
    /// that fail the size or CRC32 check: for data that carries checksums of its own (PAR2
    /// recovery then rebuilds it). Returns the bytes and the check that failed, if any.
    pub fn decode_unchecked(self, bytes: &[u8]) -> Result<(Decoded, Option<YencError>), YencError> {
        let (begin, body_start) = frame::parse_begin(bytes)?;
        let (end, end_at) = match frame::parse_end(bytes, body_start) {
            Ok(e) => e,
            Err(YencError::MissingEnd) => (frame::End { size: begin.size, crc32: None }, bytes.len()),
            Err(e) => return Err(e),
        };
        let mut data = Vec::with_capacity(usize::try_from(begin.size).unwrap_or(0).min(bytes.len()));
        let mut pending = false;
        self.decode_run(&bytes[body_start..end_at], &mut pending, &mut data);
        let actual = crc32fast::hash(&data);
        let problem = if end_at == bytes.len() {
            Some(YencError::MissingEnd)
        } else if pending {
            Some(YencError::DanglingEscape)
        } else if begin.size != end.size || data.len() as u64 != end.size {
            Some(YencError::SizeMismatch { begin: begin.size, end: end.size, decoded: data.len() as u64 })
        } else {
            match end.crc32 {
                None => Some(YencError::MissingCrc),
                Some(expected) if expected != actual => Some(YencError::CrcMismatch { expected, actual }),
                Some(_) => None,
            }
        };
        Ok((Decoded { name: begin.name, data, crc: actual }, problem))
    }

    /// Decode a single-part yEnc file and check its sizes and CRC32.
    pub fn decode(self, bytes: &[u8]) -> Result<Decoded, YencError> {
        let (begin, body_start) = frame::parse_begin(bytes)?;
        let (end, end_at) = frame::parse_end(bytes, body_start)?;
        let expected = end.crc32.ok_or(YencError::MissingCrc)?;
        let body = &bytes[body_start..end_at];
        let mut data = Vec::with_capacity(body.len().min(usize::try_from(begin.size).unwrap_or(usize::MAX)));
        let actual = self.decode_body(body, &mut data)?;
        if begin.size != end.size || data.len() as u64 != end.size {
            return Err(YencError::SizeMismatch { begin: begin.size, end: end.size, decoded: data.len() as u64 });
        }
        if actual != expected {
            return Err(YencError::CrcMismatch { expected, actual });
        }
        Ok(Decoded { name: begin.name, data, crc: actual })
    }
}
