//! `volume.meta`: a volume's identity, size and transport, written once when the volume is
//! created.
//!
//! ```text
//!  0 magic       [u8; 8] "SPILLVOL"
//!  8 version     u32     2 (version 1, which left byte 40 zero, still reads)
//! 12 block_size  u32     4096
//! 16 size        u64     bytes
//! 24 volume_id   [u8;16] random, also stamped in every WAL segment header
//! 40 transport   u8      how objects travel to the backend: 0 raw, 1 yEnc
//! 41 reserved    [u8; 3] 0
//! 44 crc32c      u32     over bytes 0..44
//! ```

use thiserror::Error;

use crate::wal::record::BLOCK_SIZE;

pub const META_FILE: &str = "volume.meta";
const MAGIC: [u8; 8] = *b"SPILLVOL";
const VERSION: u32 = 2;
const OLDEST_VERSION: u32 = 1;
pub use crate::chunk::format::{TRANSPORT_RAW, TRANSPORT_YENC};
pub const META_LEN: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeMeta {
    pub size: u64,
    pub volume_id: [u8; 16],
    /// [`TRANSPORT_RAW`] or [`TRANSPORT_YENC`]; fixed when the volume is created.
    pub transport: u8,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("not a spillway volume file (bad magic or length)")]
    Magic,
    #[error("volume format version {0} is not supported (this build reads versions 1 and 2)")]
    Version(u32),
    #[error("volume block size {0} is not supported")]
    BlockSize(u32),
    #[error("volume file checksum mismatch")]
    Checksum,
    #[error("unknown transport {0} in the volume file")]
    Transport(u8),
}

impl VolumeMeta {
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..40].copy_from_slice(&self.volume_id);
        b[40] = self.transport;
        let crc = crate::crc::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, MetaError> {
        if b.len() != META_LEN || b[0..8] != MAGIC {
            return Err(MetaError::Magic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if u32_at(44) != crate::crc::crc32c(&b[..44]) {
            return Err(MetaError::Checksum);
        }
        let version = u32_at(8);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(MetaError::Version(version));
        }
        if u32_at(12) != BLOCK_SIZE as u32 {
            return Err(MetaError::BlockSize(u32_at(12)));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[24..40]);
        let transport = if version == 1 { TRANSPORT_RAW } else { b[40] };
        if transport > TRANSPORT_YENC {
            return Err(MetaError::Transport(transport));
        }
        Ok(Self { size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")), volume_id, transport })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_bytes_are_pinned() {
        let m = VolumeMeta { size: 1 << 30, volume_id: [7; 16], transport: TRANSPORT_YENC };
        let b = m.encode();
        let mut expect = b"SPILLVOL".to_vec();
        expect.extend_from_slice(&[2, 0, 0, 0, 0, 0x10, 0, 0]);
        expect.extend_from_slice(&[0, 0, 0, 0x40, 0, 0, 0, 0]);
        expect.extend_from_slice(&[7; 16]);
        expect.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(&b[..44], &expect[..]);
        assert_eq!(&b[44..], &[0xa5, 0x25, 0x77, 0xf5], "crc32c of bytes 0..44");
        assert_eq!(VolumeMeta::decode(&b), Ok(m));
        let mut bad = b;
        bad[17] ^= 1;
        assert_eq!(VolumeMeta::decode(&bad), Err(MetaError::Checksum));
        assert_eq!(VolumeMeta::decode(&b[..40]), Err(MetaError::Magic));
    }

    /// A version 1 file (from before transports) reads as a raw volume.
    #[test]
    fn version_1_reads_as_raw() {
        let hex = "5350494c4c564f4c010000000010000000000040000000000707070707070707070707070707070700000000d943677c";
        let b: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        assert_eq!(
            VolumeMeta::decode(&b),
            Ok(VolumeMeta { size: 1 << 30, volume_id: [7; 16], transport: TRANSPORT_RAW })
        );
    }
}
