use proptest::prelude::*;

use super::*;

/// Inputs that hit every escape rule: critical bytes, whitespace and dots at line edges.
fn tricky(len: usize, seed: u64) -> Vec<u8> {
    let specials = [214u8, 224, 227, 19, 223, 246, 4, 0, 255, 42]; // encode to NUL LF CR = TAB SP . ...
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 4 == 0 {
                specials[(x >> 8) as usize % specials.len()]
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

#[test]
fn the_best_kernel_is_a_simd_one_where_the_cpu_has_it() {
    // Under qemu-aarch64 (scripts/test-aarch64) this is what makes sure the every-kernel
    // tests below run the NEON kernel, not only the scalar one.
    let best = Kernel::best().kind();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt") {
        assert_eq!(best, KernelKind::Avx2);
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(best, KernelKind::Neon);
    eprintln!("yenc kernels here: {:?}", Kernel::available());
}

#[test]
fn encodes_the_escape_rules() {
    // 214+42 = 0 (NUL), 224+42 = LF, 227+42 = CR, 19+42 = '=': always escaped (+64).
    let mut out = Vec::new();
    scalar::encode_body(&[b'a' - 42, 214, 224, 227, 19, b'b' - 42], 128, &mut out);
    assert_eq!(out, b"a=@=J=M=}b\r\n");
    // TAB and space escape at the start and end of a line (and of the data), '.' at the start.
    let mut out = Vec::new();
    let (tab, space, dot) = (9u8.wrapping_sub(42), 32u8.wrapping_sub(42), 46u8.wrapping_sub(42));
    scalar::encode_body(&[dot, tab, space, dot, space], 128, &mut out);
    assert_eq!(out, b"=n\t .=`\r\n");
    let mut out = Vec::new();
    scalar::encode_body(&[b'x' - 42, tab, b'y' - 42, tab, b'z' - 42], 4, &mut out);
    assert_eq!(out, b"x\ty=I\r\nz\r\n", "TAB in the last column of a 4-character line");
}

/// Pinned bytes of a whole file (see docs/codecs.md).
#[test]
fn a_small_file_is_pinned() {
    // '.' first, 'H', NUL, LF, CR, '=' and a space last: escapes at the start, inside, at the end.
    let data = [4u8, 72, 214, 224, 227, 19, 246];
    for k in Kernel::available() {
        let enc = k.encode("X", &data);
        assert_eq!(enc, b"=ybegin line=128 size=7 name=X\r\n=nr=@=J=M=}=`\r\n=yend size=7 crc32=c477c0ef\r\n".to_vec());
        assert_eq!(k.decode(&enc).unwrap().data, data);
    }
}

#[test]
fn lines_are_128_characters() {
    let enc = encode("X", &[b'a' - 42; 1000]);
    let text = std::str::from_utf8(&enc).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "=ybegin line=128 size=1000 name=X");
    assert!(lines[1..8].iter().all(|l| l.len() == 128));
    assert_eq!(lines[8].len(), 1000 - 7 * 128);
    assert!(lines[9].starts_with("=yend size=1000 crc32="));
}

#[test]
fn round_trips_every_kernel() {
    for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 127, 128, 129, 1000, 65_536, 100_003] {
        let data = tricky(len, len as u64 + 7);
        let want = Kernel::get(KernelKind::Scalar).unwrap().encode("obj", &data);
        for k in Kernel::available() {
            let enc = k.encode("obj", &data);
            assert_eq!(enc, want, "{} encode, len {len}", k.kind());
            let dec = k.decode(&enc).unwrap();
            assert_eq!(dec.data, data, "{} decode, len {len}", k.kind());
            assert_eq!(dec.crc, crc32fast::hash(&data));
            assert_eq!(dec.name, "obj");
        }
    }
}

#[test]
fn malformed_input_is_a_typed_error() {
    let data = tricky(5000, 3);
    let good = encode("X", &data);
    let crc = crc32fast::hash(&data);
    let find = |hay: &[u8], pat: &str| hay.windows(pat.len()).position(|w| w == pat.as_bytes()).unwrap();
    let replace = |from: &str, to: &str| {
        let at = find(&good, from);
        let mut v = good[..at].to_vec();
        v.extend_from_slice(to.as_bytes());
        v.extend_from_slice(&good[at + from.len()..]);
        v
    };

    // A flipped body byte: the CRC catches it.
    let mut bad = good.clone();
    let at = good.len() / 2;
    bad[at] = if bad[at] == b'a' { b'b' } else { b'a' };
    assert!(
        matches!(decode(&bad), Err(YencError::CrcMismatch { expected, .. }) if expected == crc)
            || matches!(decode(&bad), Err(YencError::SizeMismatch { .. }))
    );

    // Unchecked, a changed body character (not an escape) decodes with the failed check
    // named, and exactly one byte differs.
    let plain = |b: u8| !b"=\r\n".contains(&b);
    let at = (good.len() / 2..).find(|&i| plain(good[i]) && plain(good[i - 1]) && good[i] != b'a').unwrap();
    let mut bad = good.clone();
    bad[at] = b'a';
    let (d, problem) = decode_unchecked(&bad).unwrap();
    assert!(matches!(problem, Some(YencError::CrcMismatch { expected, .. }) if expected == crc), "{problem:?}");
    assert_eq!(d.data.len(), data.len());
    assert_eq!(d.data.iter().zip(&data).filter(|(a, b)| a != b).count(), 1);
    assert_eq!(decode_unchecked(&good).unwrap(), (decode(&good).unwrap(), None));

    // Truncated before =yend.
    let cut = find(&good, "=yend");
    assert_eq!(decode(&good[..cut]), Err(YencError::MissingEnd));
    let (d, problem) = decode_unchecked(&good[..cut]).unwrap();
    assert_eq!((d.data.as_slice(), problem), (&data[..], Some(YencError::MissingEnd)));
    // A body line lost: sizes disagree.
    let first_body_line = find(&good, "\r\n") + 2;
    let mut short = good[..first_body_line].to_vec();
    short.extend_from_slice(&good[first_body_line + 130..]);
    assert!(matches!(decode(&short), Err(YencError::SizeMismatch { begin: 5000, end: 5000, .. })));
    // =ybegin and =yend disagree.
    let wrong = replace("=ybegin line=128 size=5000", "=ybegin line=128 size=5001");
    assert_eq!(decode(&wrong), Err(YencError::SizeMismatch { begin: 5001, end: 5000, decoded: 5000 }));
    // No CRC, bad CRC text, no header, multipart, dangling escape.
    let no_crc = replace(&format!(" crc32={crc:08x}"), "");
    assert_eq!(decode(&no_crc), Err(YencError::MissingCrc));
    let bad_hex = replace(&format!("crc32={crc:08x}"), "crc32=zzzzzzzz");
    assert_eq!(decode(&bad_hex), Err(YencError::BadHeader("crc32")));
    assert_eq!(decode(b"hello\r\n=yend size=0 crc32=00000000\r\n"), Err(YencError::MissingBegin));
    let multi = "=ybegin part=1 line=128 size=1 name=X\r\n=ypart begin=1 end=1\r\nk\r\n=yend size=1\r\n";
    assert_eq!(decode(multi.as_bytes()), Err(YencError::Multipart));
    let dangling = "=ybegin line=128 size=1 name=X\r\nk=\r\n=yend size=1 crc32=00000000\r\n";
    // "=\r" escapes the CR, then the LF is dropped: 2 bytes decoded where 1 was declared.
    assert!(matches!(decode(dangling.as_bytes()), Err(YencError::SizeMismatch { decoded: 2, .. })));
    let dangling = "=ybegin line=128 size=1 name=X\r\nk=";
    assert_eq!(decode(dangling.as_bytes()), Err(YencError::MissingEnd));
    for k in Kernel::available() {
        let mut out = Vec::new();
        let mut pending = false;
        k.decode_run(b"abc=", &mut pending, &mut out);
        assert!(pending, "{}", k.kind());
        assert_eq!(k.decode_body(b"abc=", &mut Vec::new()), Err(YencError::DanglingEscape));
    }
}

#[test]
fn name_with_spaces_and_text_around_the_file() {
    let mut file = b"preamble\r\n".to_vec();
    file.extend_from_slice(&encode("my object 1", b"payload"));
    file.extend_from_slice(b"trailer text\r\n");
    let dec = decode(&file).unwrap();
    assert_eq!((dec.name.as_str(), dec.data.as_slice()), ("my object 1", &b"payload"[..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn simd_encode_matches_scalar(data in proptest::collection::vec(any::<u8>(), 0..700), line in 4usize..200, seed in any::<u64>()) {
        let mixed: Vec<u8> = data.iter().zip(tricky(data.len(), seed)).map(|(a, b)| if seed % 2 == 0 { *a } else { b }).collect();
        let mut want = Vec::new();
        scalar::encode_body(&mixed, line, &mut want);
        let split = (seed as usize >> 8) % (mixed.len() + 1);
        for k in Kernel::available() {
            let mut got = Vec::new();
            prop_assert_eq!(k.encode_body(&mixed, line, &mut got), crc32fast::hash(&mixed));
            prop_assert_eq!(&got, &want, "kernel {} line {}", k.kind(), line);
            // In two runs split anywhere, as encode_body does in 16 KiB pieces.
            let (mut pieces, mut col) = (Vec::new(), 0);
            k.encode_run(&mixed[..split], split == mixed.len(), &mut col, line, &mut pieces);
            k.encode_run(&mixed[split..], true, &mut col, line, &mut pieces);
            if col > 0 {
                pieces.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(&pieces, &want, "kernel {} line {} split at {}", k.kind(), line, split);
        }
    }

    #[test]
    fn simd_decode_matches_scalar_on_any_bytes(
        body in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'='), Just(b'\r'), Just(b'\n')], 0..600),
        pending in any::<bool>(),
    ) {
        let mut want = Vec::new();
        let mut want_pending = pending;
        scalar::decode_run(&body, &mut want_pending, &mut want);
        for k in Kernel::available() {
            let mut got = Vec::new();
            let mut got_pending = pending;
            k.decode_run(&body, &mut got_pending, &mut got);
            prop_assert_eq!(&got, &want, "kernel {}", k.kind());
            prop_assert_eq!(got_pending, want_pending, "kernel {}", k.kind());
        }
    }
}
