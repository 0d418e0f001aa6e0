//! The reference yEnc body encoder and decoder, one byte at a time. The SIMD kernels call
//! these for the bytes they do not handle and must match them byte for byte.

/// Whether the encoded byte `o` is escaped when written at column `col` of a line of
/// `line_len` characters; `ends_data` says it is the last byte of the input.
#[inline]
pub fn needs_escape(o: u8, col: usize, line_len: usize, ends_data: bool) -> bool {
    match o {
        0 | b'\n' | b'\r' | b'=' => true,
        b'\t' | b' ' => col == 0 || col + 1 >= line_len || ends_data,
        b'.' => col == 0,
        _ => false,
    }
}

/// Encode `data` continuing a line at `*col`. `is_end` says the input ends with `data`.
/// Emits CRLF whenever a line reaches `line_len` characters (an escape may make it one longer).
pub fn encode_run(data: &[u8], is_end: bool, col: &mut usize, line_len: usize, out: &mut Vec<u8>) {
    let last = data.len().wrapping_sub(1);
    for (i, &b) in data.iter().enumerate() {
        let o = b.wrapping_add(42);
        if needs_escape(o, *col, line_len, is_end && i == last) {
            out.push(b'=');
            out.push(o.wrapping_add(64));
            *col += 2;
        } else {
            out.push(o);
            *col += 1;
        }
        if *col >= line_len {
            out.extend_from_slice(b"\r\n");
            *col = 0;
        }
    }
}

/// The body of a yEnc file: `data` in lines of `line_len` characters, each ending in CRLF.
pub fn encode_body(data: &[u8], line_len: usize, out: &mut Vec<u8>) {
    let mut col = 0;
    encode_run(data, true, &mut col, line_len, out);
    if col > 0 {
        out.extend_from_slice(b"\r\n");
    }
}

/// Decode `body`, continuing after an escape `=` when `*pending`; CR and LF are dropped
/// (except right after `=`, where any byte is the escaped one). Leaves `*pending` set when
/// `body` ends in an unfinished escape.
pub fn decode_run(body: &[u8], pending: &mut bool, out: &mut Vec<u8>) {
    for &b in body {
        if *pending {
            out.push(b.wrapping_sub(106));
            *pending = false;
            continue;
        }
        match b {
            b'\r' | b'\n' => {}
            b'=' => *pending = true,
            _ => out.push(b.wrapping_sub(42)),
        }
    }
}
