//! Shuffle tables for the SIMD yEnc kernels, built at compile time.
//!
//! Encoding expands 8 input bytes to 8 + (escapes) output bytes: for an escape mask `m`
//! (bit j = byte j is escaped), `ENCODE_INDEX[m]` lists the source byte of each output byte and
//! `ENCODE_EQ[m]` marks where an `=` goes. Decoding compacts 8 bytes: `DECODE_INDEX[m]` lists,
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

const ENCODE: ([[u8; 16]; 256], [[u8; 16]; 256]) = encode_tables();
pub static ENCODE_INDEX: [[u8; 16]; 256] = ENCODE.0;
pub static ENCODE_EQ: [[u8; 16]; 256] = ENCODE.1;
pub static DECODE_INDEX: [[u8; 8]; 256] = decode_table();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_expand_and_compact() {
        // Escape bytes 0 and 2 of 8: = b0 b0 b1 = b2 b2 b3 ... b7.
        let m = 0b101;
        assert_eq!(&ENCODE_INDEX[m][..10], &[0, 0, 1, 2, 2, 3, 4, 5, 6, 7]);
        assert_eq!(&ENCODE_EQ[m][..5], &[0xff, 0, 0, 0xff, 0]);
        assert_eq!(ENCODE_INDEX[m][10], 0x80);
        // Keep bytes 1, 6, 7.
        assert_eq!(DECODE_INDEX[0b1100_0010], [1, 6, 7, 0x80, 0x80, 0x80, 0x80, 0x80]);
    }
}
