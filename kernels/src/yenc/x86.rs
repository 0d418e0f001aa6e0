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
use super::tables::{DECODE_INDEX, ENCODE_SHUFFLE, ENCODE_SHUFFLE_HIGH};

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

/// Whether `b` encodes to a character escaped only at the start of a line (TAB, space, `.`):
/// any other first byte lets a line start go through the mid-line SIMD path.
#[inline]
fn starts_line_specially(b: u8) -> bool {
    matches!(b.wrapping_add(42), b'\t' | b' ' | b'.')
}

/// Write one expanded 8-byte group (escape mask `m8`, bytes in the low half of `group`) at
/// `dst`: 16 bytes are stored, `8 + m8.count_ones()` of them are the output. The shuffle
/// source holds the group in bytes 0..8 and `=` in bytes 8..16, which the index table points
/// at for each inserted `=`.
#[target_feature(enable = "ssse3")]
#[inline]
unsafe fn put_group(group: __m128i, m8: usize, dst: *mut u8) {
    // SAFETY: `m8` < 256 indexes the table; the caller has 16 writable bytes at `dst`.
    unsafe {
        let index = _mm_loadu_si128(ENCODE_SHUFFLE[m8].as_ptr().cast());
        let source = _mm_unpacklo_epi64(group, _mm_set1_epi8(b'=' as i8));
        _mm_storeu_si128(dst.cast(), _mm_shuffle_epi8(source, index));
    }
}

/// The encoded bytes (+42) of 16 bytes, the same with 64 added where escaped, and the
/// escape mask.
#[target_feature(enable = "ssse3")]
#[inline]
fn encode16(v: __m128i) -> (__m128i, __m128i, u32) {
    let o = _mm_add_epi8(v, _mm_set1_epi8(42));
    let crit = _mm_or_si128(
        _mm_or_si128(_mm_cmpeq_epi8(o, _mm_setzero_si128()), _mm_cmpeq_epi8(o, _mm_set1_epi8(b'=' as i8))),
        _mm_or_si128(_mm_cmpeq_epi8(o, _mm_set1_epi8(b'\n' as i8)), _mm_cmpeq_epi8(o, _mm_set1_epi8(b'\r' as i8))),
    );
    let escaped = _mm_add_epi8(o, _mm_and_si128(crit, _mm_set1_epi8(64)));
    (o, escaped, _mm_movemask_epi8(crit) as u32)
}

/// Encode one group of 8 (escape mask `$m8`, bytes in the low half of `$group`) at
/// `$dst + $w` if its output stays before the last column of the line; otherwise write it in
/// part, up to the byte that would reach that column, and `break` out of the group loop.
/// Adds the input bytes consumed to `$consumed`. A macro so that it is inlined with the
/// groups kept in registers.
macro_rules! group_step {
    ($group:expr, $m8:expr, $col:ident, $line_len:ident, $dst:ident, $w:ident, $consumed:ident) => {{
        let m8 = $m8 as usize;
        let mut len = 8 + m8.count_ones() as usize;
        let mut take = 8;
        if $col + len >= $line_len {
            let room = $line_len - 1 - $col;
            (take, len) = (0, 0);
            while take < 8 && len + 1 + (m8 >> take & 1) <= room {
                len += 1 + (m8 >> take & 1);
                take += 1;
            }
        }
        // SAFETY: the caller reserved room for two output bytes per input byte plus slack; a
        // partial group stores 16 bytes but only `len` of them count.
        unsafe { put_group($group, m8, $dst.add($w)) };
        $col += len;
        $w += len;
        $consumed += take;
        if take < 8 {
            break;
        }
    }};
}

#[target_feature(enable = "ssse3,popcnt")]
unsafe fn encode_ssse3(data: &[u8], col_in: usize, line_len: usize, dst: *mut u8) -> (usize, usize, usize) {
    let (mut i, mut w, mut col) = (0, 0, col_in);
    while i + 16 < data.len() {
        let mut consumed = 0;
        if col + 9 < line_len && (col != 0 || !starts_line_specially(data[i])) {
            // SAFETY: 17 bytes remain at `i` (the last input byte is left to the scalar tail).
            let (_, escaped, m) = encode16(unsafe { _mm_loadu_si128(data.as_ptr().add(i).cast()) });
            let total = 16 + m.count_ones() as usize;
            if col + total < line_len {
                // SAFETY: the caller reserved room for two output bytes per input byte plus
                // slack; each group stores 16 bytes at its offset.
                unsafe {
                    put_group(escaped, (m & 0xff) as usize, dst.add(w));
                    put_group(
                        _mm_srli_si128::<8>(escaped),
                        (m >> 8) as usize,
                        dst.add(w + 8 + (m & 0xff).count_ones() as usize),
                    );
                }
                (i, w, col) = (i + 16, w + total, col + total);
                continue;
            }
            #[allow(clippy::never_loop)]
            loop {
                group_step!(escaped, m & 0xff, col, line_len, dst, w, consumed);
                group_step!(_mm_srli_si128::<8>(escaped), m >> 8, col, line_len, dst, w, consumed);
                break;
            }
        }
        if consumed == 0 {
            // SAFETY: the caller reserved room for the worst case at `dst`.
            w += unsafe { encode_one(data[i], &mut col, line_len, dst.add(w)) };
            consumed = 1;
        }
        i += consumed;
    }
    (i, w, col)
}

#[target_feature(enable = "avx2,popcnt")]
unsafe fn encode_avx2(data: &[u8], col_in: usize, line_len: usize, dst: *mut u8) -> (usize, usize, usize) {
    let (mut i, mut w, mut col) = (0, 0, col_in);
    while i + 32 < data.len() {
        if col + 9 < line_len && (col != 0 || !starts_line_specially(data[i])) {
            // SAFETY: 33 bytes remain at `i` (the last input byte is left to the scalar tail).
            let o = unsafe { _mm256_loadu_si256(data.as_ptr().add(i).cast()) };
            let o = _mm256_add_epi8(o, _mm256_set1_epi8(42));
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
            let m = _mm256_movemask_epi8(crit) as u32;
            let escaped = _mm256_add_epi8(o, _mm256_and_si256(crit, _mm256_set1_epi8(64)));
            let total = 32 + m.count_ones() as usize;
            // Input bytes to take: all 32 when the block lands before the last column;
            // otherwise the most whose output still does (at least 4, as `col + 9 < line_len`).
            let take = if col + total < line_len {
                32
            } else {
                let room = line_len - 1 - col;
                let out_len = |k: usize| k + (u64::from(m) & ((1u64 << k) - 1)).count_ones() as usize;
                let mut k = room.min(32);
                while out_len(k) > room {
                    k -= 1;
                }
                k
            };
            let (o1, o2, o3) = (
                8 + (m & 0xff).count_ones() as usize,
                16 + (m & 0xffff).count_ones() as usize,
                24 + (m & 0xff_ffff).count_ones() as usize,
            );
            // Groups 0 and 2 (the low half of each lane) shuffle against `=` in the high half,
            // groups 1 and 3 against `=` in the low half: two shuffles for the four groups.
            let eq = _mm256_set1_epi8(b'=' as i8);
            let even = _mm256_blend_epi32::<0b1100_1100>(escaped, eq);
            let odd = _mm256_blend_epi32::<0b0011_0011>(escaped, eq);
            let (m0, m1, m2, m3) =
                ((m & 0xff) as usize, ((m >> 8) & 0xff) as usize, ((m >> 16) & 0xff) as usize, (m >> 24) as usize);
            // SAFETY: the table rows are 16 bytes; the caller reserved two output bytes per
            // remaining input byte (33 or more remain) plus slack, so the four 16-byte stores
            // at offsets up to 48 from `w` stay inside; only the output of the bytes taken
            // counts.
            unsafe {
                let even_index =
                    _mm256_loadu2_m128i(ENCODE_SHUFFLE[m2].as_ptr().cast(), ENCODE_SHUFFLE[m0].as_ptr().cast());
                let odd_index = _mm256_loadu2_m128i(
                    ENCODE_SHUFFLE_HIGH[m3].as_ptr().cast(),
                    ENCODE_SHUFFLE_HIGH[m1].as_ptr().cast(),
                );
                let even_out = _mm256_shuffle_epi8(even, even_index);
                let odd_out = _mm256_shuffle_epi8(odd, odd_index);
                // In group order: each store's tail is garbage that the next one overwrites.
                let d = dst.add(w);
                _mm_storeu_si128(d.cast(), _mm256_castsi256_si128(even_out));
                _mm_storeu_si128(d.add(o1).cast(), _mm256_castsi256_si128(odd_out));
                _mm_storeu_si128(d.add(o2).cast(), _mm256_extracti128_si256::<1>(even_out));
                _mm_storeu_si128(d.add(o3).cast(), _mm256_extracti128_si256::<1>(odd_out));
            }
            let len =
                if take == 32 { total } else { take + (u64::from(m) & ((1u64 << take) - 1)).count_ones() as usize };
            (i, w, col) = (i + take, w + len, col + len);
            continue;
        }
        // SAFETY: the caller reserved room for the worst case at `dst`.
        w += unsafe { encode_one(data[i], &mut col, line_len, dst.add(w)) };
        i += 1;
    }
    (i, w, col)
}

/// Encode `data` continuing a line at `*col` (see [`scalar::encode_run`]).
pub fn encode_run(kind: KernelKind, data: &[u8], is_end: bool, col: &mut usize, line_len: usize, out: &mut Vec<u8>) {
    out.reserve(super::max_body_len(data.len(), line_len) + 64);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: the kernel for `kind` exists only after the CPU check in `Kernel::get`; `dst`
    // has room for the worst case (every byte escaped plus every CRLF, plus a step of slack).
    // The kernels never consume the last byte of `data`, so `is_end` applies to the tail.
    let (consumed, written, c) = unsafe {
        match kind {
            KernelKind::Avx2 => encode_avx2(data, *col, line_len, dst),
            _ => encode_ssse3(data, *col, line_len, dst),
        }
    };
    *col = c;
    // SAFETY: the kernel initialised `written` bytes past the old length, within the reserve.
    unsafe { out.set_len(out.len() + written) };
    scalar::encode_run(&data[consumed..], is_end, col, line_len, out);
}

/// One 16-byte decode step at `src`: returns the bytes written at `dst` (16 consumed).
#[target_feature(enable = "ssse3,popcnt")]
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

#[target_feature(enable = "ssse3,popcnt")]
unsafe fn decode_ssse3(body: &[u8], pending: &mut bool, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 16 <= body.len() {
        // SAFETY: 16 bytes remain at `i`; the caller reserved body.len() + 32 at `dst`.
        w += unsafe { decode_step16(body.as_ptr().add(i), pending, dst.add(w)) };
        i += 16;
    }
    (i, w)
}

/// One 32-byte decode step at `src`: returns the bytes written at `dst` (32 consumed).
#[target_feature(enable = "avx2,popcnt")]
unsafe fn decode_step32(src: *const u8, pending: &mut bool, dst: *mut u8) -> usize {
    // SAFETY: 32 bytes are readable at `src` and 32 + 8 writable at `dst`.
    unsafe {
        let v = _mm256_loadu_si256(src.cast());
        let eq = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'=' as i8))) as u32;
        let nl = _mm256_movemask_epi8(_mm256_or_si256(
            _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\r' as i8)),
            _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\n' as i8)),
        )) as u32;
        let value = _mm256_sub_epi8(v, _mm256_set1_epi8(42));
        if (eq | nl) == 0 && !*pending {
            _mm256_storeu_si256(dst.cast(), value);
            return 32;
        }
        let esc = (eq << 1) | *pending as u32;
        if esc & (eq | nl) != 0 {
            let w = decode_step16(src, pending, dst);
            return w + decode_step16(src.add(16), pending, dst.add(w));
        }
        *pending = eq >> 31 == 1;
        // Spread the 32 escape bits over 32 bytes: 0xff where the byte follows an `=`.
        let bits = _mm256_shuffle_epi8(
            _mm256_set1_epi32(esc as i32),
            _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let escv = _mm256_cmpeq_epi8(_mm256_and_si256(bits, select), select);
        let value = _mm256_sub_epi8(value, _mm256_and_si256(escv, _mm256_set1_epi8(64)));
        let (lo, hi) = (_mm256_castsi256_si128(value), _mm256_extracti128_si256::<1>(value));
        let keep = !(eq | nl);
        let mut w = 0;
        for (g, lane) in [lo, lo, hi, hi].into_iter().enumerate() {
            let k = ((keep >> (8 * g)) & 0xff) as usize;
            let mut index = u64::from_le_bytes(DECODE_INDEX[k]);
            if g % 2 == 1 {
                index = index.wrapping_add(0x0808_0808_0808_0808);
            }
            _mm_storel_epi64(dst.add(w).cast(), _mm_shuffle_epi8(lane, _mm_cvtsi64_si128(index as i64)));
            w += k.count_ones() as usize;
        }
        w
    }
}

#[target_feature(enable = "avx2,popcnt")]
unsafe fn decode_avx2(body: &[u8], pending: &mut bool, dst: *mut u8) -> (usize, usize) {
    let (mut i, mut w) = (0, 0);
    while i + 32 <= body.len() {
        // SAFETY: 32 bytes remain at `i`; the caller reserved body.len() + 32 at `dst`.
        w += unsafe { decode_step32(body.as_ptr().add(i), pending, dst.add(w)) };
        i += 32;
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
