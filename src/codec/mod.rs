//! Frame codecs: how each chunk frame is compressed. The chunk header records the codec, so
//! a volume written with one codec always reads back after the default changes.
//!
//! The kernels (GF(2^16), PAR2, yEnc and the SIMD kinds) live in the `spillway-kernels`
//! crate (`kernels/`), which builds without the rest of spillway; they are re-exported here
//! so the rest of spillway names them `codec::gf16` and so on.

pub use spillway_kernels::{gf16, par2, simd, yenc};

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub const CODEC_NONE: u8 = 0;
pub const CODEC_LZ4: u8 = 1;
pub const CODEC_ZSTD: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd(i32),
}

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("unknown codec {0:?}: use lz4, zstd[:LEVEL] or none")]
    Unknown(String),
    #[error("zstd level {0} is out of range 1..=22")]
    Level(i32),
    #[error("unknown codec id {0} in a chunk")]
    UnknownId(u8),
    #[error("frame does not decompress: {0}")]
    Corrupt(String),
}

impl Compression {
    pub fn id(self) -> u8 {
        match self {
            Compression::None => CODEC_NONE,
            Compression::Lz4 => CODEC_LZ4,
            Compression::Zstd(_) => CODEC_ZSTD,
        }
    }

    /// The codec a chunk names; the level does not matter for decompression.
    pub fn from_id(id: u8) -> Result<Self, CodecError> {
        match id {
            CODEC_NONE => Ok(Compression::None),
            CODEC_LZ4 => Ok(Compression::Lz4),
            CODEC_ZSTD => Ok(Compression::Zstd(0)),
            n => Err(CodecError::UnknownId(n)),
        }
    }

    /// Compress `raw`; `None` when it does not shrink (the frame is then stored raw).
    pub fn compress(self, raw: &[u8]) -> Option<Vec<u8>> {
        let out = match self {
            Compression::None => return None,
            Compression::Lz4 => lz4_flex::block::compress(raw),
            Compression::Zstd(level) => zstd::bulk::compress(raw, level).ok()?,
        };
        (out.len() < raw.len()).then_some(out)
    }

    /// Decompress a frame known to hold `raw_len` bytes.
    pub fn decompress(self, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
        let out = match self {
            Compression::None => stored.to_vec(),
            Compression::Lz4 => {
                lz4_flex::block::decompress(stored, raw_len).map_err(|e| CodecError::Corrupt(e.to_string()))?
            }
            Compression::Zstd(_) => {
                zstd::bulk::decompress(stored, raw_len).map_err(|e| CodecError::Corrupt(e.to_string()))?
            }
        };
        if out.len() != raw_len {
            return Err(CodecError::Corrupt(format!("{} bytes instead of {raw_len}", out.len())));
        }
        Ok(out)
    }
}

impl FromStr for Compression {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, CodecError> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd(3)),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .ok_or_else(|| CodecError::Unknown(s.to_owned()))?;
                if !(1..=22).contains(&level) {
                    return Err(CodecError::Level(level));
                }
                Ok(Compression::Zstd(level))
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        for s in ["none", "lz4", "zstd", "zstd:19"] {
            let c: Compression = s.parse().unwrap();
            let data: Vec<u8> = (0..65536u32).map(|i| (i / 7) as u8).collect();
            match c.compress(&data) {
                Some(z) => assert_eq!(Compression::from_id(c.id()).unwrap().decompress(&z, data.len()).unwrap(), data),
                None => assert_eq!(c, Compression::None),
            }
        }
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(Compression::Lz4.compress(&random).is_none(), "incompressible data is stored raw");
    }
}
