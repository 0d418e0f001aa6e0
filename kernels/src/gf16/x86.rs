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

/// The AVX2 loop with the eight tables already in registers (each 16-byte table in both
/// lanes). A tail shorter than 64 bytes goes through a zero-padded copy on the stack.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn mul_add_avx2_with(dst: &mut [u8], src: &[u8], tl: [__m256i; 4], th: [__m256i; 4]) {
    let n = dst.len().min(src.len());
    let body = n - n % 64;
    let nib = _mm256_set1_epi8(0x0f);
    let low_bytes = _mm256_set1_epi16(0x00ff);
    let step = |sp: *const u8, dp: *mut u8| {
        // SAFETY: the callers below pass pointers with 64 readable (`sp`) and 64 readable and
        // writable (`dp`) bytes; unaligned loads and stores.
        unsafe {
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
        }
    };
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 64 <= body <= n`, inside both slices.
        unsafe { step(src.as_ptr().add(i), dst.as_mut_ptr().add(i)) };
        i += 64;
    }
    if body < n {
        let r = n - body;
        let (mut s, mut d) = ([0u8; 64], [0u8; 64]);
        s[..r].copy_from_slice(&src[body..n]);
        d[..r].copy_from_slice(&dst[body..n]);
        // Zero source words multiply to zero, so the padding stays zero.
        step(s.as_ptr(), d.as_mut_ptr());
        dst[body..n].copy_from_slice(&d[..r]);
    }
}

/// AVX2: 64 bytes (32 words) per step.
///
/// # Safety
/// The CPU must support AVX2; `dst` and `src` have equal even lengths.
#[target_feature(enable = "avx2")]
pub unsafe fn mul_add_avx2(dst: &mut [u8], src: &[u8], t: &NibbleTables) {
    // SAFETY: 16-byte loads inside `t`; AVX2 is enabled by the caller.
    let (tl, th) = unsafe {
        (
            [0, 1, 2, 3].map(|k| _mm256_broadcastsi128_si256(_mm_loadu_si128(t.lo[k].as_ptr().cast()))),
            [0, 1, 2, 3].map(|k| _mm256_broadcastsi128_si256(_mm_loadu_si128(t.hi[k].as_ptr().cast()))),
        )
    };
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { mul_add_avx2_with(dst, src, tl, th) }
}

/// AVX2 with the tables for `c` built in registers from its sixteen single-bit products
/// `base[j] = c * 2^j`: nibble table k holds, for n = 0..16, the XOR of `base[4k + b]` over
/// the set bits b of n.
///
/// # Safety
/// The CPU must support AVX2; `dst` and `src` have equal even lengths.
#[target_feature(enable = "avx2")]
pub unsafe fn mul_add_avx2_bits(dst: &mut [u8], src: &[u8], base: &[u16; 16]) {
    // For n = 0..16 as 16-bit lanes: all ones where bit b of n is set.
    let n = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let bit = |b: i16| _mm256_cmpeq_epi16(_mm256_and_si256(n, _mm256_set1_epi16(1 << b)), _mm256_set1_epi16(1 << b));
    let masks = [bit(0), bit(1), bit(2), bit(3)];
    // Per 128-bit lane: low bytes of the 8 words, then their high bytes.
    let split = _mm256_setr_epi8(
        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
    );
    let mut tl = [_mm256_setzero_si256(); 4];
    let mut th = [_mm256_setzero_si256(); 4];
    for k in 0..4 {
        let mut t = _mm256_setzero_si256();
        for (b, mask) in masks.iter().enumerate() {
            t = _mm256_xor_si256(t, _mm256_and_si256(*mask, _mm256_set1_epi16(base[4 * k + b] as i16)));
        }
        let bytes = _mm256_shuffle_epi8(t, split);
        // q0 = low bytes of words 0..8, q2 = low bytes of words 8..16; q1, q3 the high bytes.
        tl[k] = _mm256_permute4x64_epi64::<0b1000_1000>(bytes);
        th[k] = _mm256_permute4x64_epi64::<0b1101_1101>(bytes);
    }
    // SAFETY: AVX2 is enabled by the caller.
    unsafe { mul_add_avx2_with(dst, src, tl, th) }
}
