//! aarch64 yEnc body kernels with NEON, 16 bytes a step; the same scheme as the x86 ones
//! (see x86.rs), with `tbl` for the shuffles and a bit-weight sum for the byte masks.

use std::arch::aarch64::*;

use super::scalar;
use super::tables::{DECODE_INDEX, ENCODE_SHUFFLE};

const BIT_WEIGHTS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// Bit j set where byte j of `c` (0x00 or 0xff per byte) is set.
#[target_feature(enable = "neon")]
unsafe fn movemask(c: uint8x16_t) -> u32 {
    // SAFETY: reads the 16-byte constant; NEON is enabled.
    unsafe {
        let bits = vandq_u8(c, vld1q_u8(BIT_WEIGHTS.as_ptr()));
        vaddv_u8(vget_low_u8(bits)) as u32 | (vaddv_u8(vget_high_u8(bits)) as u32) << 8
    }
}

/// Encode one byte at `dst` by the scalar rules (never the last input byte); bytes written.
#[inline]
unsafe fn encode_one(b: u8, col: &mut usize, line_len: usize, dst: *mut u8) -> usize {
    let o = b.wrapping_add(42);
    let mut k = 1;
    // SAFETY: the caller reserved room for the worst case (4 bytes) at `dst`.
    unsafe {
        if scalar::needs_escape(o, *col, line_len, false) {
            *dst = b'=';
            *dst.add(1) = o.wrapping_add(64);
            k = 2;
        } else {
            *dst = o;
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

#[target_feature(enable = "neon")]
unsafe fn encode_step16(src: *const u8, col: &mut usize, line_len: usize, dst: *mut u8) -> (usize, usize) {
    // SAFETY: 16 bytes are readable at `src`; the caller reserved 2 * 16 + 4 bytes at `dst`.
    unsafe {
        if *col == 0 || *col + 8 >= line_len {
            return (1, encode_one(*src, col, line_len, dst));
        }
        let o = vaddq_u8(vld1q_u8(src), vdupq_n_u8(42));
        let crit = vorrq_u8(
            vorrq_u8(vceqq_u8(o, vdupq_n_u8(0)), vceqq_u8(o, vdupq_n_u8(b'='))),
            vorrq_u8(vceqq_u8(o, vdupq_n_u8(b'\n')), vceqq_u8(o, vdupq_n_u8(b'\r'))),
        );
        if vmaxvq_u8(crit) == 0 && *col + 16 < line_len {
            vst1q_u8(dst, o);
            *col += 16;
            return (16, 16);
        }
        let m = movemask(crit) as usize;
        let escaped = vaddq_u8(o, vandq_u8(crit, vdupq_n_u8(64)));
        let (mut consumed, mut written) = (0, 0);
        for (g, group) in [escaped, vextq_u8::<8>(escaped, escaped)].into_iter().enumerate() {
            let m8 = (m >> (8 * g)) & 0xff;
            let len = 8 + m8.count_ones() as usize;
            if *col + len >= line_len {
                break;
            }
            let source = vcombine_u8(vget_low_u8(group), vdup_n_u8(b'='));
            let out = vqtbl1q_u8(source, vld1q_u8(ENCODE_SHUFFLE[m8].as_ptr()));
            vst1q_u8(dst.add(written), out);
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

/// Encode `data` continuing a line at `*col` (see [`scalar::encode_run`]).
pub fn encode_run(data: &[u8], is_end: bool, col: &mut usize, line_len: usize, out: &mut Vec<u8>) {
    out.reserve(super::max_body_len(data.len(), line_len) + 64);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let (mut i, mut w) = (0, 0);
    // SAFETY: a Neon kernel exists only after the CPU check in `Kernel::get`; 17 bytes remain
    // at `i`, so the last byte is left to the scalar tail (where `is_end` applies); `dst` has
    // room for the worst case plus slack; written bytes are initialised before `set_len`.
    unsafe {
        while i + 16 < data.len() {
            let (c, n) = encode_step16(data.as_ptr().add(i), col, line_len, dst.add(w));
            i += c;
            w += n;
        }
        out.set_len(out.len() + w);
    }
    scalar::encode_run(&data[i..], is_end, col, line_len, out);
}

#[target_feature(enable = "neon")]
unsafe fn decode_step16(src: *const u8, pending: &mut bool, dst: *mut u8) -> usize {
    // SAFETY: 16 bytes are readable at `src` and 16 + 8 writable at `dst`.
    unsafe {
        let v = vld1q_u8(src);
        let eqv = vceqq_u8(v, vdupq_n_u8(b'='));
        let nlv = vorrq_u8(vceqq_u8(v, vdupq_n_u8(b'\r')), vceqq_u8(v, vdupq_n_u8(b'\n')));
        let special = vorrq_u8(eqv, nlv);
        let value = vsubq_u8(v, vdupq_n_u8(42));
        if vmaxvq_u8(special) == 0 && !*pending {
            vst1q_u8(dst, value);
            return 16;
        }
        let (eq, nl) = (movemask(eqv), movemask(nlv));
        let esc = ((eq << 1) | *pending as u32) & 0xffff;
        if esc & (eq | nl) != 0 {
            let mut out = Vec::with_capacity(16);
            scalar::decode_run(std::slice::from_raw_parts(src, 16), pending, &mut out);
            std::ptr::copy_nonoverlapping(out.as_ptr(), dst, out.len());
            return out.len();
        }
        // The byte after each `=`: shift the `=` mask up one byte, the carry-in first.
        let carry = vdupq_n_u8(if *pending { 0xff } else { 0 });
        let escv = vextq_u8::<15>(carry, eqv);
        *pending = eq >> 15 == 1;
        let value = vsubq_u8(value, vandq_u8(escv, vdupq_n_u8(64)));
        let keep = !(eq | nl) & 0xffff;
        let (k0, k1) = ((keep & 0xff) as usize, (keep >> 8) as usize);
        let i0 = vld1_u8(DECODE_INDEX[k0].as_ptr());
        let i1 = vadd_u8(vld1_u8(DECODE_INDEX[k1].as_ptr()), vdup_n_u8(8));
        let n0 = k0.count_ones() as usize;
        vst1_u8(dst, vqtbl1_u8(value, i0));
        vst1_u8(dst.add(n0), vqtbl1_u8(value, i1));
        n0 + k1.count_ones() as usize
    }
}

/// Decode `body` onto `out` (see [`scalar::decode_run`]).
pub fn decode_run(body: &[u8], pending: &mut bool, out: &mut Vec<u8>) {
    out.reserve(body.len() + 32);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let (mut i, mut w) = (0, 0);
    // SAFETY: a Neon kernel exists only after the CPU check in `Kernel::get`; each step reads
    // 16 bytes inside `body` and writes at most 16 + 8 inside the reserve; written bytes are
    // initialised before `set_len`.
    unsafe {
        while i + 16 <= body.len() {
            w += decode_step16(body.as_ptr().add(i), pending, dst.add(w));
            i += 16;
        }
        out.set_len(out.len() + w);
    }
    scalar::decode_run(&body[i..], pending, out);
}
