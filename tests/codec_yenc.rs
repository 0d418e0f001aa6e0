//! yEnc interop with sabctools (SABnzbd's SIMD yEnc, a PyPI wheel): its decoder accepts our
//! files with equal data and CRC, and our decoder accepts its encoder's output framed with
//! `=ybegin` / `=yend`.
//!
//! The interpreter is `$SPILLWAY_PYTHON`, else `python3` on PATH (here the pyenv one, where
//! `scripts/install-test-deps` installs the wheel).

mod common;

use common::{pseudo_random_bytes, require_sabctools, sabctools as helper};
use spillway::codec::yenc::{self, Kernel};

/// Bytes that encode to every escaped character often, mixed with random ones.
fn inputs() -> Vec<Vec<u8>> {
    let mut v = vec![vec![], vec![214], (0..=255u8).collect(), pseudo_random_bytes(1, 1_000_000)];
    let specials = [214u8, 224, 227, 19, 223, 246, 4];
    v.push(
        pseudo_random_bytes(2, 300_000)
            .iter()
            .enumerate()
            .map(|(i, b)| if i % 3 == 0 { specials[*b as usize % 7] } else { *b })
            .collect(),
    );
    v
}

#[test]
fn sabctools_decodes_what_we_encode() {
    if !require_sabctools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (n, data) in inputs().iter().enumerate() {
        if data.is_empty() {
            continue; // sabctools returns no body for an empty part; covered by our own tests
        }
        for k in Kernel::available() {
            std::fs::write(dir.path().join("in.yenc"), k.encode("obj.bin", data)).unwrap();
            let r = helper(dir.path(), &["decode", "in.yenc", "out.bin"]);
            let what = format!("input {n} ({} bytes), {} encoder: {r}", data.len(), k.kind());
            assert!(std::fs::read(dir.path().join("out.bin")).unwrap() == *data, "{what}: data differs");
            assert_eq!(r["name"], "obj.bin", "{what}");
            assert_eq!(r["size"].as_u64(), Some(data.len() as u64), "{what}");
            assert_eq!(r["crc"].as_u64(), Some(crc32fast::hash(data) as u64), "{what}: crc");
            assert_eq!(r["crc_expected"], r["crc"], "{what}");
        }
    }
}

#[test]
fn we_decode_what_sabctools_encodes() {
    if !require_sabctools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (n, data) in inputs().iter().enumerate() {
        std::fs::write(dir.path().join("in.bin"), data).unwrap();
        let r = helper(dir.path(), &["encode", "in.bin", "out.body"]);
        let crc = r["crc"].as_u64().expect("crc") as u32;
        assert_eq!(crc, crc32fast::hash(data), "input {n}: sabctools' crc");
        let mut file = format!("=ybegin line=128 size={} name=theirs\r\n", data.len()).into_bytes();
        let body = std::fs::read(dir.path().join("out.body")).unwrap();
        file.extend_from_slice(&body);
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            file.extend_from_slice(b"\r\n");
        }
        file.extend_from_slice(format!("=yend size={} crc32={crc:08x}\r\n", data.len()).as_bytes());
        for k in Kernel::available() {
            let dec = k.decode(&file).unwrap_or_else(|e| panic!("input {n}, {} decoder: {e}", k.kind()));
            assert!(dec.data == *data, "input {n}, {} decoder: data differs", k.kind());
            assert_eq!((dec.crc, dec.name.as_str()), (crc, "theirs"));
        }
        // And a damaged copy is refused, not returned.
        if body.len() > 10 {
            let mut bad = file.clone();
            let at = file.len() / 2;
            bad[at] = if bad[at] == b'x' { b'y' } else { b'x' };
            assert!(yenc::decode(&bad).is_err(), "input {n}: damage went unnoticed");
        }
    }
}
