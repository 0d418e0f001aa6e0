//! Portable region multiply-add: one word at a time through the nibble tables.

use super::tables::NibbleTables;

/// `dst[i] ^= c * src[i]` over little-endian 16-bit words. Lengths are equal and even.
pub fn mul_add(dst: &mut [u8], src: &[u8], t: &NibbleTables) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
        let p = t.mul_word(u16::from_le_bytes([s[0], s[1]]));
        let w = u16::from_le_bytes([d[0], d[1]]) ^ p;
        d.copy_from_slice(&w.to_le_bytes());
    }
}
