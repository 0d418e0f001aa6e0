//! Split-nibble product tables for one coefficient.
//!
//! A 16-bit word `w` is the XOR of its four nibbles in place, so
//! `c * w = T0[w & 15] ^ T1[(w >> 4) & 15] ^ T2[(w >> 8) & 15] ^ T3[w >> 12]` with
//! `Tk[n] = c * (n << 4k)`. Each `Tk` is stored as two 16-byte tables (low and high product
//! bytes) so that a byte shuffle (pshufb, NEON tbl) can look up 16 or 32 nibbles at once.

use super::field::{bit_products, log2};

/// The eight 16-byte lookup tables for multiplying by one coefficient.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct NibbleTables {
    /// `lo[k][n]` is the low byte of `c * (n << 4k)`.
    pub lo: [[u8; 16]; 4],
    /// `hi[k][n]` is the high byte of `c * (n << 4k)`.
    pub hi: [[u8; 16]; 4],
    coefficient: u16,
}

impl NibbleTables {
    /// Tables for multiplying by `c`.
    pub fn new(c: u16) -> Self {
        match log2(c) {
            Some(l) => Self::from_log(l),
            None => NibbleTables { lo: [[0; 16]; 4], hi: [[0; 16]; 4], coefficient: 0 },
        }
    }

    /// Tables for multiplying by `2^l`: the sixteen single-bit products come straight from
    /// the antilog table, and each nibble table is built from four of them with 15 XORs.
    /// Cheap enough to build for every (input slice, recovery slice) pair.
    pub fn from_log(l: u32) -> Self {
        let base = bit_products(l);
        let mut lo = [[0u8; 16]; 4];
        let mut hi = [[0u8; 16]; 4];
        for k in 0..4 {
            let mut t = [0u16; 16];
            for n in 1..16usize {
                t[n] = t[n & (n - 1)] ^ base[4 * k + n.trailing_zeros() as usize];
            }
            for n in 0..16 {
                lo[k][n] = t[n] as u8;
                hi[k][n] = (t[n] >> 8) as u8;
            }
        }
        NibbleTables { lo, hi, coefficient: base[0] }
    }

    pub fn coefficient(&self) -> u16 {
        self.coefficient
    }

    /// `c * w` through the tables.
    #[inline]
    pub fn mul_word(&self, w: u16) -> u16 {
        let mut p = 0u16;
        for k in 0..4 {
            let n = ((w >> (4 * k)) & 15) as usize;
            p ^= self.lo[k][n] as u16 | (self.hi[k][n] as u16) << 8;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::field::mul;
    use super::*;

    #[test]
    fn tables_multiply_like_the_field() {
        for c in [0u16, 1, 2, 3, 0x100B, 0x8000, 0xFFFF, 0x1234] {
            let t = NibbleTables::new(c);
            assert_eq!(t.coefficient(), c);
            if let Some(l) = crate::gf16::field::log2(c) {
                assert_eq!(NibbleTables::from_log(l + 65535), t);
            }
            for w in (0..=u16::MAX).step_by(7).chain([u16::MAX]) {
                assert_eq!(t.mul_word(w), mul(c, w), "{c:#x} * {w:#x}");
            }
        }
    }
}
