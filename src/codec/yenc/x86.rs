//! x86_64 yEnc body kernels: SSSE3 (16 bytes a step) and AVX2 (a 32-byte fast path on top).
//!
//! Encode: away from line edges only NUL, LF, CR and `=` need escaping. A step adds 42,
//! finds those four, and expands each 8-byte group with a pshufb table (inserting `=` and
//! adding 64 to the escaped byte). Bytes that would land at the start or in the last column
//! of a line go through the scalar rules one at a time, so the output equals the scalar
//! encoder's. Decode: a step finds `=`, CR and LF, subtracts 42 (and 64 after `=`), and
//! compacts each 8-byte group with a pshufb table. A step where `=` escapes `=`, CR or LF
//! (never written by an encoder) is decoded by the scalar rules.

use std::arch::x86_64::*;

use super::kernel::KernelKind;
use super::scalar;
use super::tables::{DECODE_INDEX, ENCODE_EQ, ENCODE_INDEX};

/// Encode one byte at `dst` by the scalar rules (never the last input byte); bytes written.
#[inline]
unsafe fn encode_one(b: u8, col: &mut usize, line_len: usize, dst: *mut u8) -> usize {
    let o = b.wrapping_add(42);
    let mut k = 0;
    // SAFETY: the caller reserved room for the worst case (4 bytes) at `dst`.
    unsafe {
        if scalar::needs_escape(o, *col, line_len, false) {
            *dst = b'=';
            *dst.add(1) = o.wrapping_add(64);
            k = 2;
        } else {
            *dst = o;
            k += 1;
        }
        *col += k;
        if *col >= line_len {
            *dst.add(k) = b'\r';
            *dst.add(k + 1) = b'\n';
            k += 2;
            *col = 0;
        }
    }
    k
}

/// One 16-byte encode step at `src` (at least 17 bytes remain): returns (consumed, written).
#[target_feature(enable = "ssse3")]
unsafe fn encode_step16(src: *const u8, col: &mut usize, line_len: usize, dst: *mut u8) -> (usize, usize) {
    // SAFETY: 16 bytes are readable at `src`; the caller reserved 2 * 16 + 4 bytes at `dst`;
    // the table indices are < 256.
    unsafe {
        if *col == 0 || *col + 8 >= line_len {
            return (1, encode_one(*src, col, line_len, dst));
        }
        let o = _mm_add_epi8(_mm_loadu_si128(src.cast()), _mm_set1_epi8(42));
        let crit = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(o, _mm_setzero_si128()), _mm_cmpeq_epi8(o, _mm_set1_epi8(b'=' as i8))),
            _mm_or_si128(_mm_cmpeq_epi8(o, _mm_set1_epi8(b'\n' as i8)), _mm_cmpeq_epi8(o, _mm_set1_epi8(b'\r' as i8))),
        );
        let m = _mm_movemask_epi8(crit) as usize;
        if m == 0 && *col + 16 < line_len {
            _mm_storeu_si128(dst.cast(), o);
            *col += 16;
            return (16, 16);
        }
        let escaped = _mm_add_epi8(o, _mm_and_si128(crit, _mm_set1_epi8(64)));
        let eq_char = _mm_set1_epi8(b'=' as i8);
        let (mut consumed, mut written) = (0, 0);
        for (g, group) in [escaped, _mm_srli_si128::<8>(escaped)].into_iter().enumerate() {
            let m8 = (m >> (8 * g)) & 0xff;
            let len = 8 + m8.count_ones() as usize;
            if *col + len >= line_len {
                break;
            }
            let index = _mm_loadu_si128(ENCODE_INDEX[m8].as_ptr().cast());
            let eq = _mm_loadu_si128(ENCODE_EQ[m8].as_ptr().cast());
            let out = _mm_shuffle_epi8(group, index);
            let out = _mm_or_si128(_mm_andnot_si128(eq, out), _mm_and_si128(eq, eq_char));
            _mm_storeu_si128(dst.add(written).cast(), out);
            *col += len;
            consumed += 8;
            written += len;
        }
        if consumed == 0 {
            return (1, encode_one(*src, col, line_len, dst));
        }
        (consumed, written)
    }
}

#[target_feature(enable = "ssse3")]
unsafe fn encode_ssse3(data: &[u8], col: &mut usize, line_len: usize, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 16 < data.len() {
        // SAFETY: 16 bytes remain at `i`; the caller reserved room for the worst case.
        let (c, n) = unsafe { encode_step16(data.as_ptr().add(i), col, line_len, dst.add(w)) };
        i += c;
        w += n;
    }
    (i, w)
}

#[target_feature(enable = "avx2")]
unsafe fn encode_avx2(data: &[u8], col: &mut usize, line_len: usize, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 16 < data.len() {
        // SAFETY: the 32-byte path reads only when 33 bytes remain; `dst` has room for the
        // worst case of what is consumed.
        unsafe {
            if i + 32 < data.len() && *col != 0 && *col + 32 < line_len {
                let o = _mm256_add_epi8(_mm256_loadu_si256(data.as_ptr().add(i).cast()), _mm256_set1_epi8(42));
                let crit = _mm256_or_si256(
                    _mm256_or_si256(
                        _mm256_cmpeq_epi8(o, _mm256_setzero_si256()),
                        _mm256_cmpeq_epi8(o, _mm256_set1_epi8(b'=' as i8)),
                    ),
                    _mm256_or_si256(
                        _mm256_cmpeq_epi8(o, _mm256_set1_epi8(b'\n' as i8)),
                        _mm256_cmpeq_epi8(o, _mm256_set1_epi8(b'\r' as i8)),
                    ),
                );
                if _mm256_movemask_epi8(crit) == 0 {
                    _mm256_storeu_si256(dst.add(w).cast(), o);
                    *col += 32;
                    i += 32;
                    w += 32;
                    continue;
                }
            }
            let (c, n) = encode_step16(data.as_ptr().add(i), col, line_len, dst.add(w));
            i += c;
            w += n;
        }
    }
    (i, w)
}

/// Append the encoded body of `data` to `out` (see [`scalar::encode_body`]).
pub fn encode_body(kind: KernelKind, data: &[u8], line_len: usize, out: &mut Vec<u8>) {
    out.reserve(super::max_body_len(data.len(), line_len) + 64);
    let mut col = 0;
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: the kernel for `kind` exists only after the CPU check in `Kernel::get`; `dst`
    // has room for the worst case (every byte escaped plus every CRLF, plus a step of slack),
    // and the bytes written are initialised before `set_len`.
    unsafe {
        let (consumed, written) = match kind {
            KernelKind::Avx2 => encode_avx2(data, &mut col, line_len, dst),
            _ => encode_ssse3(data, &mut col, line_len, dst),
        };
        out.set_len(out.len() + written);
        scalar::encode_run(&data[consumed..], true, &mut col, line_len, out);
    }
    if col > 0 {
        out.extend_from_slice(b"\r\n");
    }
}

/// One 16-byte decode step at `src`: returns the bytes written at `dst` (16 consumed).
#[target_feature(enable = "ssse3")]
unsafe fn decode_step16(src: *const u8, pending: &mut bool, dst: *mut u8) -> usize {
    // SAFETY: 16 bytes are readable at `src` and writable at `dst` (16 + 8 of slack).
    unsafe {
        let v = _mm_loadu_si128(src.cast());
        let eq = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'=' as i8))) as u32;
        let nl = _mm_movemask_epi8(_mm_or_si128(
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\r' as i8)),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)),
        )) as u32;
        let value = _mm_sub_epi8(v, _mm_set1_epi8(42));
        if (eq | nl) == 0 && !*pending {
            _mm_storeu_si128(dst.cast(), value);
            return 16;
        }
        let esc = ((eq << 1) | *pending as u32) & 0xffff;
        if esc & (eq | nl) != 0 {
            let mut out = Vec::with_capacity(16);
            scalar::decode_run(std::slice::from_raw_parts(src, 16), pending, &mut out);
            std::ptr::copy_nonoverlapping(out.as_ptr(), dst, out.len());
            return out.len();
        }
        *pending = eq >> 15 == 1;
        // Spread the 16 escape bits over 16 bytes: 0xff where the byte follows an `=`.
        let bits = _mm_shuffle_epi8(_mm_cvtsi32_si128(esc as i32), _mm_set_epi64x(0x0101_0101_0101_0101, 0));
        let select = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let escv = _mm_cmpeq_epi8(_mm_and_si128(bits, select), select);
        let value = _mm_sub_epi8(value, _mm_and_si128(escv, _mm_set1_epi8(64)));
        let keep = !(eq | nl) & 0xffff;
        let (k0, k1) = ((keep & 0xff) as usize, (keep >> 8) as usize);
        let i0 = u64::from_le_bytes(DECODE_INDEX[k0]);
        let i1 = u64::from_le_bytes(DECODE_INDEX[k1]).wrapping_add(0x0808_0808_0808_0808);
        let out0 = _mm_shuffle_epi8(value, _mm_cvtsi64_si128(i0 as i64));
        let out1 = _mm_shuffle_epi8(value, _mm_cvtsi64_si128(i1 as i64));
        let n0 = k0.count_ones() as usize;
        _mm_storel_epi64(dst.cast(), out0);
        _mm_storel_epi64(dst.add(n0).cast(), out1);
        n0 + k1.count_ones() as usize
    }
}

#[target_feature(enable = "ssse3")]
unsafe fn decode_ssse3(body: &[u8], pending: &mut bool, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 16 <= body.len() {
        // SAFETY: 16 bytes remain at `i`; the caller reserved body.len() + 32 at `dst`.
        w += unsafe { decode_step16(body.as_ptr().add(i), pending, dst.add(w)) };
        i += 16;
    }
    (i, w)
}

#[target_feature(enable = "avx2")]
unsafe fn decode_avx2(body: &[u8], pending: &mut bool, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 16 <= body.len() {
        // SAFETY: reads stay inside `body`; the caller reserved body.len() + 32 at `dst`.
        unsafe {
            if i + 32 <= body.len() && !*pending {
                let v = _mm256_loadu_si256(body.as_ptr().add(i).cast());
                let special = _mm256_or_si256(
                    _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'=' as i8)),
                    _mm256_or_si256(
                        _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\r' as i8)),
                        _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\n' as i8)),
                    ),
                );
                if _mm256_testz_si256(special, special) == 1 {
                    _mm256_storeu_si256(dst.add(w).cast(), _mm256_sub_epi8(v, _mm256_set1_epi8(42)));
                    i += 32;
                    w += 32;
                    continue;
                }
            }
            w += decode_step16(body.as_ptr().add(i), pending, dst.add(w));
        }
        i += 16;
    }
    (i, w)
}

/// Decode `body` onto `out` (see [`scalar::decode_run`]).
pub fn decode_run(kind: KernelKind, body: &[u8], pending: &mut bool, out: &mut Vec<u8>) {
    out.reserve(body.len() + 32);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: the kernel for `kind` exists only after the CPU check in `Kernel::get`; a step
    // never writes more than it consumes plus 8 bytes of slack, within the reserve, and the
    // bytes counted are initialised before `set_len`.
    unsafe {
        let (consumed, written) = match kind {
            KernelKind::Avx2 => decode_avx2(body, pending, dst),
            _ => decode_ssse3(body, pending, dst),
        };
        out.set_len(out.len() + written);
        scalar::decode_run(&body[consumed..], pending, out);
    }
}
