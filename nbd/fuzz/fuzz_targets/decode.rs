//! The pure decoders: option payloads and request headers, then validation against
//! limits taken from the input too. None may panic, and validation must keep its promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd::request::{decode_header, validate, Command, Limits};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let option = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let _ = nbd::option::decode_option(option, &data[4..]);

    if data.len() < 4 + 28 + 9 {
        return;
    }
    let hdr: &[u8; 28] = data[4..32].try_into().unwrap();
    let l = &data[32..];
    let limits = Limits {
        size: u64::from_le_bytes(l[0..8].try_into().unwrap()),
        read_only: l[8] & 1 != 0,
        structured: l[8] & 2 != 0,
        meta: l[8] & 4 != 0,
        max_block: 32 << 20,
    };
    if let Ok(h) = decode_header(hdr) {
        if let Ok(cmd) = validate(&h, &limits) {
            // Anything accepted lies inside the export and within the payload limit.
            let range = match cmd {
                Command::Read { offset, len } | Command::Write { offset, len, .. } => {
                    assert!(len <= limits.max_block && len > 0);
                    Some((offset, len))
                }
                Command::Trim { offset, len, .. }
                | Command::Cache { offset, len }
                | Command::WriteZeroes { offset, len, .. }
                | Command::BlockStatus { offset, len, .. } => Some((offset, len)),
                Command::Flush | Command::Disc => None,
            };
            if let Some((offset, len)) = range {
                assert!(offset.checked_add(u64::from(len)).is_some_and(|e| e <= limits.size));
            }
            if limits.read_only {
                assert!(!matches!(cmd, Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }));
            }
        }
    }
});
