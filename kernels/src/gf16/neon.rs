//! aarch64 region multiply-add with NEON table lookups (tbl) over split-nibble tables.
//!
//! `vld2q_u8` separates the low and high bytes of 16 words in one load and `vst2q_u8`
//! interleaves them back, so no shuffles are needed around the eight lookups.

use std::arch::aarch64::*;

use super::scalar;
use super::tables::NibbleTables;

/// NEON: 32 bytes (16 words) per step.
///
/// # Safety
/// The CPU must support NEON (every aarch64 Linux CPU does); equal even lengths.
#[target_feature(enable = "neon")]
pub unsafe fn mul_add_neon(dst: &mut [u8], src: &[u8], t: &NibbleTables) {
    let n = dst.len().min(src.len());
    let body = n - n % 32;
    // SAFETY: every vld2q/vst2q touches 32 bytes inside `src[..body]` / `dst[..body]`, every
    // vld1q 16 bytes inside `t`; NEON is enabled by the caller.
    unsafe {
        let tl = [0, 1, 2, 3].map(|k| vld1q_u8(t.lo[k].as_ptr()));
        let th = [0, 1, 2, 3].map(|k| vld1q_u8(t.hi[k].as_ptr()));
        let nib = vdupq_n_u8(0x0f);
        let mut i = 0;
        while i < body {
            let s = vld2q_u8(src.as_ptr().add(i));
            let d = vld2q_u8(dst.as_ptr().add(i));
            let n0 = vandq_u8(s.0, nib);
            let n1 = vshrq_n_u8::<4>(s.0);
            let n2 = vandq_u8(s.1, nib);
            let n3 = vshrq_n_u8::<4>(s.1);
            let plo = veorq_u8(
                veorq_u8(vqtbl1q_u8(tl[0], n0), vqtbl1q_u8(tl[1], n1)),
                veorq_u8(vqtbl1q_u8(tl[2], n2), vqtbl1q_u8(tl[3], n3)),
            );
            let phi = veorq_u8(
                veorq_u8(vqtbl1q_u8(th[0], n0), vqtbl1q_u8(th[1], n1)),
                veorq_u8(vqtbl1q_u8(th[2], n2), vqtbl1q_u8(th[3], n3)),
            );
            vst2q_u8(dst.as_mut_ptr().add(i), uint8x16x2_t(veorq_u8(d.0, plo), veorq_u8(d.1, phi)));
            i += 32;
        }
    }
    scalar::mul_add(&mut dst[body..n], &src[body..n], t);
}
