//! GF(2^16) arithmetic for PAR2 (polynomial 0x1100B) and the region kernel
//! `dst[i] ^= c * src[i]` over little-endian 16-bit words, chosen at run time by CPU features.
//!
//! Kernels: portable scalar; SSSE3 and AVX2 (pshufb) on x86_64; NEON (tbl) on aarch64. Every
//! kernel gives the same bytes; the property tests below hold each to the field definition.
//! There is no AVX-512 or GFNI kernel yet.

pub mod field;
mod scalar;
pub mod tables;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

pub use field::{div, exp2, inv, mul, pow};
pub use tables::NibbleTables;

pub use crate::simd::KernelKind;

/// A region kernel this CPU can run. Only [`Kernel::get`], [`Kernel::best`] and
/// [`Kernel::available`] make one, and they check the CPU first, so calling it is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(KernelKind);

impl Kernel {
    /// The kernel `kind` if this CPU supports it.
    pub fn get(kind: KernelKind) -> Option<Kernel> {
        let ok = match kind {
            KernelKind::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelKind::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
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

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| Kernel::available().pop().unwrap_or(Kernel(KernelKind::Scalar)))
    }

    pub fn kind(self) -> KernelKind {
        self.0
    }

    /// `dst[i] ^= c * src[i]` for each little-endian 16-bit word, with `c` given by its tables.
    ///
    /// # Panics
    /// When `dst` and `src` differ in length or the length is odd: a caller bug.
    pub fn mul_add(self, dst: &mut [u8], src: &[u8], t: &NibbleTables) {
        assert_eq!(dst.len(), src.len(), "gf16 regions differ in length");
        assert_eq!(dst.len() % 2, 0, "gf16 regions hold whole 16-bit words");
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel of this kind exists only after `get` detected SSSE3.
            KernelKind::Ssse3 => unsafe { x86::mul_add_ssse3(dst, src, t) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel of this kind exists only after `get` detected AVX2.
            KernelKind::Avx2 => unsafe { x86::mul_add_avx2(dst, src, t) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: a Kernel of this kind exists only after `get` detected NEON.
            KernelKind::Neon => unsafe { neon::mul_add_neon(dst, src, t) },
            _ => scalar::mul_add(dst, src, t),
        }
    }

    /// `dst[i] ^= 2^l * src[i]`: plain XOR when `2^l == 1`, else through tables built from
    /// the antilog table.
    pub fn mul_add_log(self, dst: &mut [u8], src: &[u8], l: u32) {
        assert_eq!(dst.len(), src.len(), "gf16 regions differ in length");
        assert_eq!(dst.len() % 2, 0, "gf16 regions hold whole 16-bit words");
        if l % field::ORDER == 0 {
            xor_into(dst, src);
            return;
        }
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel of this kind exists only after `get` detected AVX2.
            KernelKind::Avx2 => unsafe { x86::mul_add_avx2_bits(dst, src, &field::bit_products(l)) },
            _ => self.mul_add(dst, src, &NibbleTables::from_log(l)),
        }
    }

    /// `dst[i] ^= c * src[i]`, building the tables for `c` (skips `c == 0`, XORs for `c == 1`).
    pub fn mul_add_coeff(self, dst: &mut [u8], src: &[u8], c: u16) {
        match c {
            0 => assert_eq!(dst.len(), src.len(), "gf16 regions differ in length"),
            1 => {
                assert_eq!(dst.len(), src.len(), "gf16 regions differ in length");
                xor_into(dst, src);
            }
            _ => self.mul_add(dst, src, &NibbleTables::new(c)),
        }
    }
}

/// `dst ^= src`, written so the compiler vectorises it.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let mut d = dst.chunks_exact_mut(32);
    let mut s = src.chunks_exact(32);
    for (d, s) in (&mut d).zip(&mut s) {
        for (x, y) in d.iter_mut().zip(s) {
            *x ^= *y;
        }
    }
    for (x, y) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *x ^= *y;
    }
}

/// `dst[i] ^= c * src[i]` with the best kernel for this CPU.
pub fn mul_add(dst: &mut [u8], src: &[u8], c: u16) {
    Kernel::best().mul_add_coeff(dst, src, c);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The definition, one word at a time through the field's log tables.
    fn reference(dst: &mut [u8], src: &[u8], c: u16) {
        for (d, s) in dst.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
            let w = u16::from_le_bytes([d[0], d[1]]) ^ mul(c, u16::from_le_bytes([s[0], s[1]]));
            d.copy_from_slice(&w.to_le_bytes());
        }
    }

    #[test]
    fn the_best_kernel_is_a_simd_one_where_the_cpu_has_it() {
        let best = Kernel::best().kind();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(best, KernelKind::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(best, KernelKind::Neon);
        eprintln!("gf16 kernels here: {:?}", Kernel::available());
    }

    #[test]
    fn known_products_land_in_little_endian_words() {
        // 0x8000 * 2 = 0x100B (the reduction), 0x0102 * 1 = 0x0102.
        for k in Kernel::available() {
            let src = [0x00, 0x80, 0x02, 0x01];
            let mut dst = [0u8; 4];
            k.mul_add(&mut dst, &src, &NibbleTables::new(2));
            assert_eq!(dst, [0x0B, 0x10, 0x04, 0x02], "{k:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_kernel_matches_the_definition(
            words in 0usize..300,
            src_off in 0usize..33,
            dst_off in 0usize..33,
            c in any::<u16>(),
            seed in any::<u64>(),
        ) {
            let len = words * 2;
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 };
            let src_buf: Vec<u8> = (0..len + src_off).map(|_| next()).collect();
            // 32 guard bytes after the region: a kernel that stores past its end shows there.
            let dst_buf: Vec<u8> = (0..len + dst_off + 32).map(|_| next()).collect();
            let src = &src_buf[src_off..];
            let region = dst_off..dst_off + len;
            let mut want = dst_buf[region.clone()].to_vec();
            reference(&mut want, src, c);
            for k in Kernel::available() {
                let mut got_buf = dst_buf.clone();
                k.mul_add(&mut got_buf[region.clone()], src, &NibbleTables::new(c));
                prop_assert_eq!(&got_buf[region.clone()], &want[..], "kernel {}", k.kind());
                prop_assert_eq!(&got_buf[region.end..], &dst_buf[region.end..], "kernel {} wrote past dst", k.kind());
                let mut via_coeff = dst_buf[region.clone()].to_vec();
                k.mul_add_coeff(&mut via_coeff, src, c);
                prop_assert_eq!(&via_coeff, &want, "kernel {} via mul_add_coeff", k.kind());
                if let Some(l) = field::log2(c) {
                    let mut via_log = dst_buf[region.clone()].to_vec();
                    k.mul_add_log(&mut via_log, src, l + 65535 * (seed % 3) as u32);
                    prop_assert_eq!(&via_log, &want, "kernel {} via mul_add_log", k.kind());
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn unequal_regions_are_a_caller_bug() {
        mul_add(&mut [0u8; 4], &[0u8; 6], 3);
    }
}
