//! Scalar arithmetic in GF(2^16) with the PAR2 polynomial x^16 + x^12 + x^3 + x + 1 (0x1100B).
//!
//! Addition is XOR. Multiplication uses log / antilog tables over the generator 2, built once
//! on first use (256 KiB each way).

use std::sync::OnceLock;

/// The field polynomial, PAR 2.0 section "Reed-Solomon".
pub const POLY: u32 = 0x1100B;
/// The multiplicative group order: every non-zero element `a` has `a^ORDER == 1`.
pub const ORDER: u32 = 65535;

struct Tables {
    log: Vec<u16>,
    /// `exp[i] = 2^i`, twice over so that `exp[log a + log b]` needs no reduction.
    exp: Vec<u16>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut log = vec![0u16; 65536];
        let mut exp = vec![0u16; 2 * ORDER as usize];
        let mut x: u32 = 1;
        for i in 0..ORDER as usize {
            exp[i] = x as u16;
            exp[i + ORDER as usize] = x as u16;
            log[x as usize] = i as u16;
            x <<= 1;
            if x & 0x10000 != 0 {
                x ^= POLY;
            }
        }
        Tables { log, exp }
    })
}

/// `a * b`.
#[inline]
pub fn mul(a: u16, b: u16) -> u16 {
    if a == 0 || b == 0 {
        return 0;
    }
    let t = tables();
    t.exp[t.log[a as usize] as usize + t.log[b as usize] as usize]
}

/// `a * x` (multiplication by the generator 2), without tables.
#[inline]
pub const fn mul2(a: u16) -> u16 {
    let shifted = (a as u32) << 1;
    if shifted & 0x10000 != 0 {
        (shifted ^ POLY) as u16
    } else {
        shifted as u16
    }
}

/// The multiplicative inverse of `a`; `None` for zero.
pub fn inv(a: u16) -> Option<u16> {
    if a == 0 {
        return None;
    }
    let t = tables();
    Some(t.exp[(ORDER - t.log[a as usize] as u32) as usize])
}

/// `a / b`; `None` when `b` is zero.
pub fn div(a: u16, b: u16) -> Option<u16> {
    inv(b).map(|ib| mul(a, ib))
}

/// `a^e` (with `0^0 == 1`).
pub fn pow(a: u16, e: u32) -> u16 {
    if e == 0 {
        return 1;
    }
    if a == 0 {
        return 0;
    }
    let t = tables();
    let l = (t.log[a as usize] as u64 * e as u64) % ORDER as u64;
    t.exp[l as usize]
}

/// `2^n`, the antilog.
pub fn exp2(n: u32) -> u16 {
    tables().exp[(n % ORDER) as usize]
}

/// The discrete log base 2 of `a`; `None` for zero.
pub fn log2(a: u16) -> Option<u32> {
    (a != 0).then(|| tables().log[a as usize] as u32)
}

/// `2^l * 2^j` for j = 0..16 (with `l` reduced mod 65535): sixteen consecutive antilogs, the
/// products of `2^l` with each single bit of a word.
pub fn bit_products(l: u32) -> [u16; 16] {
    let l = (l % ORDER) as usize;
    let mut out = [0u16; 16];
    out.copy_from_slice(&tables().exp[l..l + 16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carry-less multiply and reduce, bit by bit: the definition, independent of the tables.
    fn mul_slow(a: u16, b: u16) -> u16 {
        let mut p: u32 = 0;
        for i in 0..16 {
            if b >> i & 1 == 1 {
                p ^= (a as u32) << i;
            }
        }
        for bit in (16..32).rev() {
            if p >> bit & 1 == 1 {
                p ^= POLY << (bit - 16);
            }
        }
        p as u16
    }

    #[test]
    fn tables_agree_with_the_definition() {
        let mut x = 0x1234_5678u32;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let (a, b) = (x as u16, (x >> 16) as u16);
            assert_eq!(mul(a, b), mul_slow(a, b), "{a:#x} * {b:#x}");
        }
        assert_eq!(mul(0x8000, 2), 0x100B);
        assert_eq!(mul2(0x8000), 0x100B);
    }

    #[test]
    fn two_generates_the_whole_group() {
        let mut seen = vec![false; 65536];
        for n in 0..ORDER {
            let v = exp2(n);
            assert!(!seen[v as usize], "2^{n} repeats");
            seen[v as usize] = true;
        }
        assert!(!seen[0]);
        assert_eq!(exp2(ORDER), 1);
        assert_eq!(log2(0), None);
        assert_eq!(log2(exp2(1234)), Some(1234));
        let c = exp2(65530);
        let p = bit_products(65530);
        for (j, v) in p.iter().enumerate() {
            assert_eq!(*v, mul(c, 1 << j), "bit {j}");
        }
    }

    #[test]
    fn inverse_pow_and_div() {
        for a in 1..=u16::MAX {
            let Some(ia) = inv(a) else { panic!("{a} has no inverse") };
            assert_eq!(mul(a, ia), 1);
        }
        assert_eq!(inv(0), None);
        assert_eq!(pow(3, 0), 1);
        assert_eq!(pow(0, 5), 0);
        assert_eq!(pow(0x1234, 3), mul(0x1234, mul(0x1234, 0x1234)));
        assert_eq!(div(mul(77, 99), 99), Some(77));
        assert_eq!(div(1, 0), None);
    }
}
