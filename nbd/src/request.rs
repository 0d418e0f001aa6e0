//! Transmission requests: the 28-byte header, and its validation into a typed command.

use crate::consts::*;
use crate::device::ZeroFlags;
use crate::errno::RequestError;

/// A request header as it came off the wire, magic already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: CommandKind,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// The command type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unsupported(u16),
}

impl CommandKind {
    pub fn from_wire(v: u16) -> Self {
        match v {
            CMD_READ => CommandKind::Read,
            CMD_WRITE => CommandKind::Write,
            CMD_DISC => CommandKind::Disc,
            CMD_FLUSH => CommandKind::Flush,
            CMD_TRIM => CommandKind::Trim,
            CMD_CACHE => CommandKind::Cache,
            CMD_WRITE_ZEROES => CommandKind::WriteZeroes,
            CMD_BLOCK_STATUS => CommandKind::BlockStatus,
            other => CommandKind::Unsupported(other),
        }
    }

    /// The command flags that may accompany this command (FUA is accepted everywhere,
    /// as the spec requires once SEND_FUA is advertised).
    fn allowed_flags(self, structured: bool) -> u16 {
        let extra = match self {
            CommandKind::Read if structured => CMD_FLAG_DF,
            CommandKind::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CommandKind::BlockStatus => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
        CMD_FLAG_FUA | extra
    }
}

/// The header's magic was wrong: the stream is out of sync, and the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadMagic(pub u32);

/// Decode a request header. Fails only on a bad magic.
pub fn decode_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, BadMagic> {
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&b[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&b[16..24]);
    Ok(RequestHeader {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: CommandKind::from_wire(u16::from_be_bytes([b[6], b[7]])),
        cookie: u64::from_be_bytes(cookie),
        offset: u64::from_be_bytes(offset),
        len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

/// Encode a request header (for clients, tests and the fuzzer).
pub fn encode_header(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; REQUEST_HEADER_LEN] {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// What was negotiated for this connection, against which requests are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    /// A metadata context (`base:allocation`) was selected.
    pub meta: bool,
    pub max_block: u32,
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read { offset: u64, len: u32 },
    Write { offset: u64, len: u32, fua: bool },
    Disc,
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    Cache { offset: u64, len: u32 },
    WriteZeroes { offset: u64, len: u32, flags: ZeroFlags },
    BlockStatus { offset: u64, len: u32, req_one: bool },
}

impl Command {
    /// The data the request moves over the connection: a WRITE's payload or a READ's
    /// reply; 0 for every other command.
    pub fn payload(&self) -> u32 {
        match self {
            Command::Read { len, .. } | Command::Write { len, .. } => *len,
            _ => 0,
        }
    }
}

/// Check a request against the negotiated limits. The order of checks is fixed, so each
/// fault yields one exact error: command, flags, reserved fields, read-only, metadata
/// context, zero length, maximum size, range.
pub fn validate(h: &RequestHeader, l: &Limits) -> Result<Command, RequestError> {
    if let CommandKind::Unsupported(v) = h.kind {
        return Err(RequestError::UnknownCommand(v));
    }
    if h.flags & !h.kind.allowed_flags(l.structured) != 0 {
        return Err(RequestError::BadFlags { flags: h.flags });
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (h.offset, h.len);
    match h.kind {
        // A DISC closes the connection whatever its fields say.
        CommandKind::Disc => return Ok(Command::Disc),
        CommandKind::Flush if offset != 0 || len != 0 => return Err(RequestError::FlushNotZero),
        CommandKind::Flush => return Ok(Command::Flush),
        CommandKind::Write | CommandKind::Trim | CommandKind::WriteZeroes if l.read_only => {
            return Err(RequestError::ReadOnly);
        }
        CommandKind::BlockStatus if !l.meta => return Err(RequestError::NoMetaContext),
        _ => {}
    }
    if len == 0 {
        return Err(RequestError::ZeroLength);
    }
    if len > l.max_block {
        match h.kind {
            // Without structured replies a read cannot be split, so it overflows.
            CommandKind::Read if !l.structured => {
                return Err(RequestError::ReadTooLarge { len, max: l.max_block });
            }
            CommandKind::Read | CommandKind::Write => {
                return Err(RequestError::TooLarge { len, max: l.max_block });
            }
            // TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS carry no payload; any length is served.
            _ => {}
        }
    }
    let end = offset.checked_add(u64::from(len));
    if end.is_none_or(|e| e > l.size) {
        return Err(match h.kind {
            CommandKind::Write | CommandKind::WriteZeroes => RequestError::WriteBeyondEnd { offset, len, size: l.size },
            _ => RequestError::ReadBeyondEnd { offset, len, size: l.size },
        });
    }
    Ok(match h.kind {
        CommandKind::Read => Command::Read { offset, len },
        CommandKind::Write => Command::Write { offset, len, fua },
        CommandKind::Trim => Command::Trim { offset, len, fua },
        CommandKind::Cache => Command::Cache { offset, len },
        CommandKind::WriteZeroes => Command::WriteZeroes {
            offset,
            len,
            flags: ZeroFlags { fua, no_hole: h.flags & CMD_FLAG_NO_HOLE != 0, fast: h.flags & CMD_FLAG_FAST_ZERO != 0 },
        },
        CommandKind::BlockStatus => Command::BlockStatus { offset, len, req_one: h.flags & CMD_FLAG_REQ_ONE != 0 },
        CommandKind::Disc | CommandKind::Flush | CommandKind::Unsupported(_) => {
            unreachable!("handled above")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::Errno;
    use proptest::prelude::*;

    const LIMITS: Limits =
        Limits { size: 1 << 30, read_only: false, structured: true, meta: true, max_block: 32 << 20 };

    fn hdr(kind: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        decode_header(&encode_header(flags, kind, 7, offset, len)).unwrap()
    }

    fn errno(kind: u16, flags: u16, offset: u64, len: u32, l: &Limits) -> Errno {
        validate(&hdr(kind, flags, offset, len), l).unwrap_err().errno()
    }

    #[test]
    fn header_bytes_are_pinned() {
        let b = encode_header(CMD_FLAG_FUA, CMD_WRITE, 0x0102030405060708, 0x1000, 0x200);
        assert_eq!(
            b,
            [
                0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10, 0, 0,
                0, 2, 0
            ]
        );
        let h = decode_header(&b).unwrap();
        assert_eq!(h.kind, CommandKind::Write);
        assert_eq!((h.flags, h.cookie, h.offset, h.len), (1, 0x0102030405060708, 0x1000, 0x200));
    }

    #[test]
    fn bad_magic_is_reported() {
        let mut b = encode_header(0, 0, 0, 0, 0);
        b[0] ^= 1;
        assert_eq!(decode_header(&b), Err(BadMagic(0x24609513)));
    }

    #[test]
    fn spec_errors() {
        let l = LIMITS;
        assert_eq!(errno(99, 0, 0, 512, &l), Errno::Inval, "unknown command");
        assert_eq!(errno(CMD_READ, 1 << 7, 0, 512, &l), Errno::Inval, "unknown flag");
        assert_eq!(errno(CMD_WRITE, CMD_FLAG_DF, 0, 512, &l), Errno::Inval, "DF on a write");
        assert_eq!(errno(CMD_FLUSH, 0, 512, 0, &l), Errno::Inval, "flush offset");
        assert_eq!(errno(CMD_FLUSH, 0, 0, 512, &l), Errno::Inval, "flush length");
        assert_eq!(errno(CMD_READ, 0, l.size, 1, &l), Errno::Inval, "read past end");
        assert_eq!(errno(CMD_TRIM, 0, l.size - 1, 2, &l), Errno::Inval, "trim past end");
        assert_eq!(errno(CMD_BLOCK_STATUS, 0, l.size, 1, &l), Errno::Inval, "status past end");
        assert_eq!(errno(CMD_WRITE, 0, l.size, 1, &l), Errno::NoSpc, "write past end");
        assert_eq!(errno(CMD_WRITE_ZEROES, 0, u64::MAX, 1, &l), Errno::NoSpc, "zero overflow");
        assert_eq!(errno(CMD_READ, 0, 0, (32 << 20) + 1, &l), Errno::Inval, "big structured read");
        let simple = Limits { structured: false, meta: false, ..l };
        assert_eq!(errno(CMD_READ, 0, 0, (32 << 20) + 1, &simple), Errno::Overflow, "big simple read");
        assert_eq!(errno(CMD_READ, CMD_FLAG_DF, 0, 512, &simple), Errno::Inval, "DF unnegotiated");
        assert_eq!(errno(CMD_BLOCK_STATUS, 0, 0, 512, &simple), Errno::Inval, "no context");
        let ro = Limits { read_only: true, ..l };
        for c in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(errno(c, 0, 0, 512, &ro), Errno::Perm, "read-only {c}");
        }
        assert!(validate(&hdr(CMD_READ, 0, 0, 512), &ro).is_ok());
    }

    #[test]
    fn payload_free_commands_take_any_length() {
        let big = u32::MAX;
        let l = Limits { size: u64::MAX, ..LIMITS };
        for c in [CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE, CMD_BLOCK_STATUS] {
            assert!(validate(&hdr(c, 0, 0, big), &l).is_ok(), "{c}");
        }
    }

    proptest! {
        // Start from a valid request and corrupt one field: exactly that field's error comes back.
        #[test]
        fn one_corrupt_field_one_error(offset in 0u64..(1 << 29), len in 1u32..(1 << 20), flag_bit in 5u16..16, kind in 8u16..) {
            let l = LIMITS;
            prop_assert!(validate(&hdr(CMD_WRITE, 0, offset, len), &l).is_ok());
            prop_assert_eq!(validate(&hdr(kind, 0, offset, len), &l), Err(RequestError::UnknownCommand(kind)));
            prop_assert_eq!(validate(&hdr(CMD_WRITE, 1 << flag_bit, offset, len), &l), Err(RequestError::BadFlags { flags: 1 << flag_bit }));
            let past = l.size - u64::from(len) + 1;
            prop_assert_eq!(validate(&hdr(CMD_WRITE, 0, past, len), &l), Err(RequestError::WriteBeyondEnd { offset: past, len, size: l.size }));
            prop_assert_eq!(validate(&hdr(CMD_WRITE, 0, offset, 0), &l), Err(RequestError::ZeroLength));
        }
    }
}
