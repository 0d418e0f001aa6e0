//! x86_64 region multiply-add with byte shuffles (pshufb) over split-nibble tables.
//!
//! Each step loads two vectors of words, separates low and high bytes with a saturating pack
//! (the bytes fit, so it only compacts), looks the four nibbles up in eight 16-entry tables,
//! and interleaves the product bytes back with unpack. Pack and unpack both work within
//! 128-bit lanes, so they undo each other's lane order exactly.

use std::arch::x86_64::*;

use super::scalar;
use super::tables::NibbleTables;

/// SSSE3: 32 bytes (16 words) per step.
///
/// # Safety
/// The CPU must support SSSE3; `dst` and `src` have equal even lengths.
#[target_feature(enable = "ssse3")]
pub unsafe fn mul_add_ssse3(dst: &mut [u8], src: &[u8], t: &NibbleTables) {
    let n = dst.len().min(src.len());
    let body = n - n % 32;
    // SAFETY: all loads read 16 bytes inside `src[..body]` / `t`, all stores write 16 bytes
    // inside `dst[..body]`; unaligned forms are used throughout; SSSE3 is enabled by the caller.
    unsafe {
        let tl = [0, 1, 2, 3].map(|k| _mm_loadu_si128(t.lo[k].as_ptr().cast()));
        let th = [0, 1, 2, 3].map(|k| _mm_loadu_si128(t.hi[k].as_ptr().cast()));
        let nib = _mm_set1_epi8(0x0f);
        let low_bytes = _mm_set1_epi16(0x00ff);
        let mut i = 0;
        while i < body {
            let sp = src.as_ptr().add(i);
            let dp = dst.as_mut_ptr().add(i);
            let a = _mm_loadu_si128(sp.cast());
            let b = _mm_loadu_si128(sp.add(16).cast());
            let lo = _mm_packus_epi16(_mm_and_si128(a, low_bytes), _mm_and_si128(b, low_bytes));
            let hi = _mm_packus_epi16(_mm_srli_epi16::<8>(a), _mm_srli_epi16::<8>(b));
            let n0 = _mm_and_si128(lo, nib);
            let n1 = _mm_and_si128(_mm_srli_epi16::<4>(lo), nib);
            let n2 = _mm_and_si128(hi, nib);
            let n3 = _mm_and_si128(_mm_srli_epi16::<4>(hi), nib);
            let plo = _mm_xor_si128(
                _mm_xor_si128(_mm_shuffle_epi8(tl[0], n0), _mm_shuffle_epi8(tl[1], n1)),
                _mm_xor_si128(_mm_shuffle_epi8(tl[2], n2), _mm_shuffle_epi8(tl[3], n3)),
            );
            let phi = _mm_xor_si128(
                _mm_xor_si128(_mm_shuffle_epi8(th[0], n0), _mm_shuffle_epi8(th[1], n1)),
                _mm_xor_si128(_mm_shuffle_epi8(th[2], n2), _mm_shuffle_epi8(th[3], n3)),
            );
            let da = _mm_loadu_si128(dp.cast());
            let db = _mm_loadu_si128(dp.add(16).cast());
            _mm_storeu_si128(dp.cast(), _mm_xor_si128(da, _mm_unpacklo_epi8(plo, phi)));
            _mm_storeu_si128(dp.add(16).cast(), _mm_xor_si128(db, _mm_unpackhi_epi8(plo, phi)));
            i += 32;
        }
    }
    scalar::mul_add(&mut dst[body..n], &src[body..n], t);
}

/// AVX2: 64 bytes (32 words) per step.
///
/// # Safety
/// The CPU must support AVX2; `dst` and `src` have equal even lengths.
#[target_feature(enable = "avx2")]
pub unsafe fn mul_add_avx2(dst: &mut [u8], src: &[u8], t: &NibbleTables) {
    let n = dst.len().min(src.len());
    let body = n - n % 64;
    // SAFETY: all loads read 32 bytes inside `src[..body]` / `dst[..body]` (16 inside `t`),
    // all stores write 32 bytes inside `dst[..body]`, unaligned; AVX2 is enabled by the caller.
    unsafe {
        let tl = [0, 1, 2, 3].map(|k| _mm256_broadcastsi128_si256(_mm_loadu_si128(t.lo[k].as_ptr().cast())));
        let th = [0, 1, 2, 3].map(|k| _mm256_broadcastsi128_si256(_mm_loadu_si128(t.hi[k].as_ptr().cast())));
        let nib = _mm256_set1_epi8(0x0f);
        let low_bytes = _mm256_set1_epi16(0x00ff);
        let mut i = 0;
        while i < body {
            let sp = src.as_ptr().add(i);
            let dp = dst.as_mut_ptr().add(i);
            let a = _mm256_loadu_si256(sp.cast());
            let b = _mm256_loadu_si256(sp.add(32).cast());
            let lo = _mm256_packus_epi16(_mm256_and_si256(a, low_bytes), _mm256_and_si256(b, low_bytes));
            let hi = _mm256_packus_epi16(_mm256_srli_epi16::<8>(a), _mm256_srli_epi16::<8>(b));
            let n0 = _mm256_and_si256(lo, nib);
            let n1 = _mm256_and_si256(_mm256_srli_epi16::<4>(lo), nib);
            let n2 = _mm256_and_si256(hi, nib);
            let n3 = _mm256_and_si256(_mm256_srli_epi16::<4>(hi), nib);
            let plo = _mm256_xor_si256(
                _mm256_xor_si256(_mm256_shuffle_epi8(tl[0], n0), _mm256_shuffle_epi8(tl[1], n1)),
                _mm256_xor_si256(_mm256_shuffle_epi8(tl[2], n2), _mm256_shuffle_epi8(tl[3], n3)),
            );
            let phi = _mm256_xor_si256(
                _mm256_xor_si256(_mm256_shuffle_epi8(th[0], n0), _mm256_shuffle_epi8(th[1], n1)),
                _mm256_xor_si256(_mm256_shuffle_epi8(th[2], n2), _mm256_shuffle_epi8(th[3], n3)),
            );
            let da = _mm256_loadu_si256(dp.cast());
            let db = _mm256_loadu_si256(dp.add(32).cast());
            _mm256_storeu_si256(dp.cast(), _mm256_xor_si256(da, _mm256_unpacklo_epi8(plo, phi)));
            _mm256_storeu_si256(dp.add(32).cast(), _mm256_xor_si256(db, _mm256_unpackhi_epi8(plo, phi)));
            i += 64;
        }
        // The last 32..63 bytes: one SSSE3-width pass is cheaper than the scalar loop.
        if n - body >= 32 {
            mul_add_ssse3(&mut dst[body..n], &src[body..n], t);
            return;
        }
    }
    scalar::mul_add(&mut dst[body..n], &src[body..n], t);
}
