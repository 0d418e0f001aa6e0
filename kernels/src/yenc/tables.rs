//! Shuffle tables for the SIMD yEnc kernels, built at compile time.
//!
//! Encoding expands 8 input bytes to 8 + (escapes) output bytes: for an escape mask `m`
//! (bit j = byte j is escaped), `ENCODE_SHUFFLE[m]` lists the source byte of each output byte,
//! 8 where an `=` goes (the kernels put `=` in bytes 8..16 of the shuffle source). Decoding compacts 8 bytes: `DECODE_INDEX[m]` lists,
//! for a keep mask `m`, the positions of the kept bytes in order.

const fn encode_tables() -> ([[u8; 16]; 256], [[u8; 16]; 256]) {
    let mut index = [[0x80u8; 16]; 256];
    let mut eq = [[0u8; 16]; 256];
    let mut m = 0;
    while m < 256 {
        let mut pos = 0;
        let mut j = 0;
        while j < 8 {
            if m >> j & 1 == 1 {
                eq[m][pos] = 0xff;
                index[m][pos] = j as u8;
                pos += 1;
            }
            index[m][pos] = j as u8;
            pos += 1;
            j += 1;
        }
        m += 1;
    }
    (index, eq)
}

const fn decode_table() -> [[u8; 8]; 256] {
    let mut index = [[0x80u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut pos = 0;
        let mut j = 0;
        while j < 8 {
            if m >> j & 1 == 1 {
                index[m][pos] = j as u8;
                pos += 1;
            }
            j += 1;
        }
        m += 1;
    }
    index
}

/// Per escape mask: the source byte of each output byte, and where an `=` goes.
const ENCODE: ([[u8; 16]; 256], [[u8; 16]; 256]) = encode_tables();

/// The source index of each output byte, with each `=` position pointing at byte 8 of the
/// shuffle source, where the kernels keep `=` characters (one shuffle, no blend).
const fn encode_shuffle() -> [[u8; 16]; 256] {
    let mut out = ENCODE.0;
    let mut m = 0;
    while m < 256 {
        let mut p = 0;
        while p < 16 {
            if ENCODE.1[m][p] == 0xff {
                out[m][p] = 8;
            }
            p += 1;
        }
        m += 1;
    }
    out
}
pub static ENCODE_SHUFFLE: [[u8; 16]; 256] = encode_shuffle();

#[cfg(target_arch = "x86_64")]
/// `ENCODE_SHUFFLE` for a group held in bytes 8..16 of the source with `=` in bytes 0..8:
/// data indices + 8, `=` positions 0.
const fn encode_shuffle_high() -> [[u8; 16]; 256] {
    let mut out = encode_shuffle();
    let mut m = 0;
    while m < 256 {
        let mut p = 0;
        while p < 16 {
            out[m][p] = match out[m][p] {
                8 => 0,
                0x80 => 0x80,
                j => j + 8,
            };
            p += 1;
        }
        m += 1;
    }
    out
}
#[cfg(target_arch = "x86_64")]
pub static ENCODE_SHUFFLE_HIGH: [[u8; 16]; 256] = encode_shuffle_high();
pub static DECODE_INDEX: [[u8; 8]; 256] = decode_table();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_expand_and_compact() {
        // Escape bytes 0 and 2 of 8: = b0 b0 b1 = b2 b2 b3 ... b7.
        let m = 0b101;
        assert_eq!(&ENCODE.0[m][..10], &[0, 0, 1, 2, 2, 3, 4, 5, 6, 7]);
        assert_eq!(&ENCODE.1[m][..5], &[0xff, 0, 0, 0xff, 0]);
        assert_eq!(ENCODE.0[m][10], 0x80);
        assert_eq!(&ENCODE_SHUFFLE[m][..11], &[8, 0, 1, 8, 2, 3, 4, 5, 6, 7, 0x80]);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(&ENCODE_SHUFFLE_HIGH[m][..11], &[0, 8, 9, 0, 10, 11, 12, 13, 14, 15, 0x80]);
        // Keep bytes 1, 6, 7.
        assert_eq!(DECODE_INDEX[0b1100_0010], [1, 6, 7, 0x80, 0x80, 0x80, 0x80, 0x80]);
    }
}
