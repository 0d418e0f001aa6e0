//! Reply encoding: simple replies, structured reply chunks, and option replies.

use crate::consts::*;
use crate::device::Extent;
use crate::errno::Errno;

/// A simple reply header (16 bytes); a successful READ's data follows it.
pub fn simple(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header (20 bytes).
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// Header of a final `OFFSET_DATA` chunk carrying `data_len` bytes read at `offset` (28 bytes).
pub fn offset_data_header(cookie: u64, offset: u64, data_len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, data_len + 8));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A final `ERROR` chunk with a human-readable message.
pub fn error_chunk(cookie: u64, errno: Errno, message: &str) -> Vec<u8> {
    let msg = truncate_utf8(message, MAX_STRING);
    let mut b = Vec::with_capacity(26 + msg.len());
    b.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32));
    b.extend_from_slice(&errno.code().to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg.as_bytes());
    b
}

/// A final `BLOCK_STATUS` chunk for one metadata context.
pub fn block_status_chunk(cookie: u64, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = Vec::with_capacity(20 + len);
    b.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len as u32));
    b.extend_from_slice(&context.to_be_bytes());
    for (length, flags) in extents {
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
    }
    b
}

/// Fit device extents to a BLOCK_STATUS request of `len` bytes: non-empty, nonzero lengths,
/// never past the request, merged where flags repeat, and a single one for REQ_ONE.
pub fn clamp_extents(extents: &[Extent], len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut left = u64::from(len);
    for e in extents {
        if left == 0 {
            break;
        }
        let take = e.length.min(left);
        if take == 0 {
            continue;
        }
        left -= take;
        let flags = e.flags();
        match out.last_mut() {
            Some((l, f)) if *f == flags => *l += take as u32,
            _ => out.push((take as u32, flags)),
        }
    }
    if out.is_empty() {
        // A device that said nothing: report the whole range as allocated data (always safe).
        out.push((len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// An option reply: magic, option, reply type, length, data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(length: u64, hole: bool) -> Extent {
        Extent { length, hole, zero: hole }
    }

    #[test]
    fn bytes_are_pinned() {
        assert_eq!(simple(22, 9), [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(
            offset_data_header(1, 4096, 512),
            [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 8, 0, 0, 0, 0, 0, 0, 0x10, 0]
        );
        let e = error_chunk(2, Errno::Inval, "no");
        assert_eq!(&e[4..8], &[0x00, 0x01, 0x80, 0x01]);
        assert_eq!(&e[16..], &[0, 0, 0, 8, 0, 0, 0, 22, 0, 2, b'n', b'o']);
        let o = option_reply(OPT_LIST, REP_ACK, &[]);
        assert_eq!(o, [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn extents_are_clamped_and_merged() {
        let e = [ext(4096, false), ext(4096, false), ext(1 << 20, true)];
        assert_eq!(clamp_extents(&e, 10000, false), vec![(8192, 0), (1808, 3)]);
        assert_eq!(clamp_extents(&e, 10000, true), vec![(8192, 0)]);
        assert_eq!(clamp_extents(&[], 512, false), vec![(512, 0)]);
        assert_eq!(clamp_extents(&[ext(0, true), ext(100, true)], 50, false), vec![(50, 3)]);
    }
}
