//! The bodies of the five PAR 2.0 packets spillway writes and reads.

use super::packet::Hash;
use super::Par2Error;

/// Main: the slice size and the files of the recovery set. Its body's MD5 is the set ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Main {
    pub slice_size: u64,
    /// Recovery-set file IDs, sorted by [`sort_file_ids`].
    pub file_ids: Vec<Hash>,
    pub non_recovery_ids: Vec<Hash>,
}

/// File description: what the whole file should hash to, its length and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDesc {
    pub file_id: Hash,
    pub md5: Hash,
    pub md5_16k: Hash,
    pub length: u64,
    pub name: String,
}

/// Input file slice checksums: MD5 and CRC32 of every slice, the last one zero-padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ifsc {
    pub file_id: Hash,
    pub slices: Vec<(Hash, u32)>,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn hash_at(b: &[u8], at: usize) -> Option<Hash> {
    b.get(at..at + 16)?.try_into().ok()
}

/// PAR2 orders file IDs as 128-bit little-endian integers: byte 15 is the most significant
/// (par2cmdline's `operator<` on MD5 hashes compares from byte 15 down).
pub fn sort_file_ids(ids: &mut [Hash]) {
    ids.sort_by_key(|id| u128::from_le_bytes(*id));
}

/// File ID = MD5(MD5 of the first 16 KiB, length as u64 LE, name bytes without padding).
pub fn file_id(md5_16k: &Hash, length: u64, name: &str) -> Hash {
    super::packet::md5(&[md5_16k, &length.to_le_bytes(), name.as_bytes()])
}

impl Main {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + 16 * (self.file_ids.len() + self.non_recovery_ids.len()));
        b.extend_from_slice(&self.slice_size.to_le_bytes());
        b.extend_from_slice(&(self.file_ids.len() as u32).to_le_bytes());
        for id in self.file_ids.iter().chain(&self.non_recovery_ids) {
            b.extend_from_slice(id);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Main, Par2Error> {
        let bad = || Par2Error::Malformed("Main packet");
        let slice_size = u64_at(b, 0).ok_or_else(bad)?;
        let count = u32_at(b, 8).ok_or_else(bad)? as usize;
        let ids: Vec<Hash> = b[12..].chunks_exact(16).filter_map(|c| c.try_into().ok()).collect();
        if (b.len() - 12) % 16 != 0 || count > ids.len() || slice_size == 0 || slice_size % 4 != 0 {
            return Err(bad());
        }
        Ok(Main { slice_size, file_ids: ids[..count].to_vec(), non_recovery_ids: ids[count..].to_vec() })
    }
}

impl FileDesc {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(56 + self.name.len() + 3);
        b.extend_from_slice(&self.file_id);
        b.extend_from_slice(&self.md5);
        b.extend_from_slice(&self.md5_16k);
        b.extend_from_slice(&self.length.to_le_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<FileDesc, Par2Error> {
        let bad = || Par2Error::Malformed("FileDesc packet");
        let name_bytes = b.get(56..).ok_or_else(bad)?;
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(name_bytes.len());
        Ok(FileDesc {
            file_id: hash_at(b, 0).ok_or_else(bad)?,
            md5: hash_at(b, 16).ok_or_else(bad)?,
            md5_16k: hash_at(b, 32).ok_or_else(bad)?,
            length: u64_at(b, 48).ok_or_else(bad)?,
            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
        })
    }
}

impl Ifsc {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + 20 * self.slices.len());
        b.extend_from_slice(&self.file_id);
        for (md5, crc) in &self.slices {
            b.extend_from_slice(md5);
            b.extend_from_slice(&crc.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Ifsc, Par2Error> {
        let bad = || Par2Error::Malformed("IFSC packet");
        let file_id = hash_at(b, 0).ok_or_else(bad)?;
        if (b.len() - 16) % 20 != 0 {
            return Err(bad());
        }
        let slices = b[16..]
            .chunks_exact(20)
            .map(|e| Some((hash_at(e, 0)?, u32_at(e, 16)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Ifsc { file_id, slices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_sort_from_byte_15_down() {
        let mut a = [0u8; 16];
        a[0] = 0xFF; // large in byte 0, small in byte 15
        let mut b = [0u8; 16];
        b[15] = 0x01;
        let mut ids = [b, a];
        sort_file_ids(&mut ids);
        assert_eq!(ids, [a, b]);
    }

    #[test]
    fn bodies_round_trip() {
        let m = Main { slice_size: 2100, file_ids: vec![[1; 16]], non_recovery_ids: vec![] };
        assert_eq!(Main::decode(&m.encode()).unwrap(), m);
        let f = FileDesc { file_id: [1; 16], md5: [2; 16], md5_16k: [3; 16], length: 77, name: "X".into() };
        let mut enc = f.encode();
        enc.extend_from_slice(&[0, 0, 0]); // padding as it sits in a packet
        assert_eq!(FileDesc::decode(&enc).unwrap(), f);
        let i = Ifsc { file_id: [9; 16], slices: vec![([4; 16], 0xdead_beef), ([5; 16], 1)] };
        assert_eq!(Ifsc::decode(&i.encode()).unwrap(), i);
        assert!(Main::decode(&[0u8; 11]).is_err());
        assert!(Ifsc::decode(&[0u8; 17]).is_err());
    }
}
