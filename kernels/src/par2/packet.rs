//! PAR 2.0 packet framing: the 64-byte header, its MD5, and a scanner that finds the valid
//! packets in a byte stream and steps over damaged ones.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "PAR2\0PKT"
//!      8     8  packet length, header included, a multiple of 4 (little-endian u64)
//!     16    16  MD5 of bytes 32..length (recovery set ID, type and body)
//!     32    16  recovery set ID (MD5 of the Main packet's body)
//!     48    16  packet type
//!     64     -  body
//! ```

use md5::{Digest, Md5};

pub type Hash = [u8; 16];

pub const MAGIC: &[u8; 8] = b"PAR2\0PKT";
pub const HEADER_LEN: usize = 64;

pub const TYPE_MAIN: &[u8; 16] = b"PAR 2.0\0Main\0\0\0\0";
pub const TYPE_FILE_DESC: &[u8; 16] = b"PAR 2.0\0FileDesc";
pub const TYPE_IFSC: &[u8; 16] = b"PAR 2.0\0IFSC\0\0\0\0";
pub const TYPE_RECV_SLICE: &[u8; 16] = b"PAR 2.0\0RecvSlic";
pub const TYPE_CREATOR: &[u8; 16] = b"PAR 2.0\0Creator\0";

/// MD5 of the concatenation of `parts`.
pub fn md5(parts: &[&[u8]]) -> Hash {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Append one packet whose body is the concatenation of `body` (each part is copied once);
/// pads the body with zeros to a multiple of 4.
pub fn write(out: &mut Vec<u8>, set_id: &Hash, ptype: &[u8; 16], body: &[&[u8]]) {
    let start = out.len();
    let body_len: usize = body.iter().map(|p| p.len()).sum();
    let padded = body_len.next_multiple_of(4);
    out.reserve(HEADER_LEN + padded);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&((HEADER_LEN + padded) as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(set_id);
    out.extend_from_slice(ptype);
    for p in body {
        out.extend_from_slice(p);
    }
    out.resize(start + HEADER_LEN + padded, 0);
    let digest = md5(&[&out[start + 32..]]);
    out[start + 16..start + 32].copy_from_slice(&digest);
}

/// Fill in the header of a packet whose body already sits in `packet[HEADER_LEN..]` (its
/// length a multiple of 4): magic, length, set ID, type, then the MD5.
pub fn seal(packet: &mut [u8], set_id: &Hash, ptype: &[u8; 16]) {
    packet[..8].copy_from_slice(MAGIC);
    let len = packet.len() as u64;
    packet[8..16].copy_from_slice(&len.to_le_bytes());
    packet[32..48].copy_from_slice(set_id);
    packet[48..64].copy_from_slice(ptype);
    let digest = md5(&[&packet[32..]]);
    packet[16..32].copy_from_slice(&digest);
}

/// One packet whose length and MD5 check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPacket<'a> {
    pub set_id: Hash,
    pub ptype: [u8; 16],
    pub body: &'a [u8],
}

fn find_magic(bytes: &[u8], from: usize) -> Option<usize> {
    bytes.get(from..)?.windows(MAGIC.len()).position(|w| w == MAGIC).map(|p| p + from)
}

fn parse_at(bytes: &[u8], at: usize) -> Option<(RawPacket<'_>, usize)> {
    let header = bytes.get(at..at + HEADER_LEN)?;
    let len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    if len < HEADER_LEN || len % 4 != 0 {
        return None;
    }
    let packet = bytes.get(at..at.checked_add(len)?)?;
    if md5(&[&packet[32..]]) != packet[16..32] {
        return None;
    }
    let raw = RawPacket {
        set_id: packet[32..48].try_into().ok()?,
        ptype: packet[48..64].try_into().ok()?,
        body: &packet[HEADER_LEN..],
    };
    Some((raw, len))
}

/// Every intact packet in `bytes`, in order. A damaged packet is skipped by searching for the
/// next magic after its start.
pub fn scan(bytes: &[u8]) -> Vec<RawPacket<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(at) = find_magic(bytes, pos) {
        match parse_at(bytes, at) {
            Some((p, len)) => {
                out.push(p);
                pos = at + len;
            }
            None => pos = at + 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_round_trips_and_damage_is_skipped() {
        let set = [7u8; 16];
        let mut bytes = Vec::new();
        write(&mut bytes, &set, TYPE_CREATOR, &[b"abc"]);
        write(&mut bytes, &set, TYPE_CREATOR, &[b"defgh", b"i"]);
        assert_eq!(bytes.len(), 2 * HEADER_LEN + 4 + 8);
        let found = scan(&bytes);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].body, b"abc\0");
        assert_eq!(found[1].body, b"defghi\0\0");
        assert_eq!(found[1].set_id, set);
        assert_eq!(&found[1].ptype, TYPE_CREATOR);
        let mut sealed = vec![0u8; HEADER_LEN + 8];
        sealed[HEADER_LEN..].copy_from_slice(b"defghi\0\0");
        seal(&mut sealed, &set, TYPE_CREATOR);
        assert_eq!(sealed, bytes[HEADER_LEN + 4..]);

        // A flipped body byte fails the first packet's MD5; the second is still found.
        bytes[HEADER_LEN] ^= 1;
        let found = scan(&bytes);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].body, b"defghi\0\0");

        // A length that runs past the end is rejected, not trusted.
        let mut short = Vec::new();
        write(&mut short, &set, TYPE_CREATOR, &[b"abcd"]);
        short.truncate(short.len() - 1);
        assert!(scan(&short).is_empty());
    }
}
