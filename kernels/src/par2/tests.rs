use proptest::prelude::*;

use super::layout::input_constants;
use super::packet::{scan, TYPE_RECV_SLICE};
use super::*;
use crate::gf16::{mul, pow};

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn recovery_slices_are_the_reed_solomon_sums() {
    // Two 4-byte slices; exponent 0 is plain XOR parity, exponent 1 weighs by 2 and 4.
    let data = b"spillway";
    let par2 = create_with("X", data, Par2Params { slice_size: 4, recovery_slices: 2 }).unwrap();
    let rec: Vec<_> = scan(&par2).into_iter().filter(|p| &p.ptype == TYPE_RECV_SLICE).collect();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[0].body[..4], 0u32.to_le_bytes());
    let xor: Vec<u8> = data[..4].iter().zip(&data[4..]).map(|(a, b)| a ^ b).collect();
    assert_eq!(&rec[0].body[4..], &xor[..]);
    let c = input_constants(2).unwrap();
    assert_eq!(c, vec![2, 4]);
    let word = |b: &[u8], i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
    for w in 0..2 {
        let want = mul(pow(c[0], 1), word(&data[..4], w)) ^ mul(pow(c[1], 1), word(&data[4..], w));
        assert_eq!(word(&rec[1].body[4..], w), want);
    }
}

/// The whole `.par2` for a tiny input, pinned. par2cmdline accepts exactly these bytes
/// (checked by tests/codec_par2.rs against the same input); any change to them is a format
/// change and must be deliberate.
#[test]
fn tiny_par2_bytes_are_pinned() {
    let par2 = create_with("X", b"spillway", Par2Params { slice_size: 4, recovery_slices: 1 }).unwrap();
    let hex: String = par2.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, PINNED_TINY_PAR2);
}

const PINNED_TINY_PAR2: &str = concat!(
    // Main
    "5041523200504b545c00000000000000081adf031ed7a0490a9f68e5735916a57adeafea277e8b106c4be3110b6ee3a450415220322e30004d61696e00000000",
    "040000000000000001000000b47c2be9c10a0ee96595ea747e87195f",
    // FileDesc
    "5041523200504b547c000000000000009370d94abc65dca5a6b506b3b61ce61a7adeafea277e8b106c4be3110b6ee3a450415220322e300046696c6544657363",
    "b47c2be9c10a0ee96595ea747e87195f6b305d8353bc6d9c5ac9de7717327cc56b305d8353bc6d9c5ac9de7717327cc5080000000000000058000000",
    // IFSC
    "5041523200504b54780000000000000046797328c0e8b7fb439035dfb1dcf78a7adeafea277e8b106c4be3110b6ee3a450415220322e30004946534300000000",
    "b47c2be9c10a0ee96595ea747e87195f2e8a8f57abdb02e75da48e3083a2f769a34504fc2232c5441d046d93f77ec6d81a534fee0c7a3554",
    // RecvSlic (exponent 0: "spil" XOR "lway")
    "5041523200504b5448000000000000004d5e1ab8e9ec29f55578f82e177d51597adeafea277e8b106c4be3110b6ee3a450415220322e300052656376536c6963",
    "000000001f070815",
    // Creator
    "5041523200504b54480000000000000034819059f8bdbbe95bd90e0bf7c78cd17adeafea277e8b106c4be3110b6ee3a450415220322e300043726561746f7200",
    "7370696c6c776179",
);

#[test]
fn intact_data_is_left_alone() {
    let data = pseudo_random(10_000, 1);
    let par2 = create("X", &data, 10).unwrap();
    let mut copy = data.clone();
    assert_eq!(verify_and_repair("X", &mut copy, &par2).unwrap(), RepairOutcome::Intact);
    assert_eq!(verify("X", &data, &par2).unwrap(), Vec::<u32>::new());
}

#[test]
fn repairs_damage_up_to_the_recovery_count() {
    for len in [1000usize, 4096, 65_537, 200_003] {
        let data = pseudo_random(len, len as u64);
        let params = Par2Params::for_len(len as u64, 10);
        let par2 = create("X", &data, 10).unwrap();
        let slices = params.source_slices(len as u64) as usize;
        let k = params.recovery_slices as usize;
        // Damage k slices spread over the file, including the last (short) one.
        let mut bad = data.clone();
        let mut hit: Vec<u32> = (0..k).map(|j| (j * slices / k) as u32).collect();
        *hit.last_mut().unwrap() = slices as u32 - 1;
        hit.dedup();
        for &s in &hit {
            let at = (s as usize * params.slice_size as usize + 1).min(len - 1);
            bad[at] ^= 0x5a;
        }
        assert_eq!(verify("X", &bad, &par2).unwrap(), hit, "len {len}");
        let outcome = verify_and_repair("X", &mut bad, &par2).unwrap();
        assert_eq!(bad, data, "len {len}");
        let RepairOutcome::Repaired(report) = outcome else { panic!("len {len}: {outcome:?}") };
        assert_eq!(report.slices, hit);
        assert_eq!(report.recovery_used.len(), hit.len());
        assert_eq!(report.length_was, None);
        let last = report.byte_ranges.last().unwrap();
        assert_eq!(last.end, len as u64, "the last range stops at the end of the file");
    }
}

#[test]
fn truncated_or_extended_data_is_repaired() {
    let data = pseudo_random(50_000, 9);
    let par2 = create("X", &data, 5).unwrap();
    let mut short = data[..49_990].to_vec();
    let RepairOutcome::Repaired(r) = verify_and_repair("X", &mut short, &par2).unwrap() else { panic!() };
    assert_eq!(short, data);
    assert_eq!(r.length_was, Some(49_990));
    let mut long = data.clone();
    long.extend_from_slice(b"trailing junk");
    let RepairOutcome::Repaired(r) = verify_and_repair("X", &mut long, &par2).unwrap() else { panic!() };
    assert_eq!(long, data);
    assert_eq!((r.length_was, r.slices.len()), (Some(50_013), 0));
}

#[test]
fn too_much_damage_is_a_clear_error_and_leaves_data_alone() {
    let data = pseudo_random(20_000, 3);
    let params = Par2Params { slice_size: 1000, recovery_slices: 2 };
    let par2 = create_with("X", &data, params).unwrap();
    let mut bad = data.clone();
    for s in [0usize, 7, 19] {
        bad[s * 1000 + 10] ^= 1;
    }
    let before = bad.clone();
    let err = verify_and_repair("X", &mut bad, &par2).unwrap_err();
    assert_eq!(err, Par2Error::Unrepairable { damaged: vec![0, 7, 19], recovery_available: 2 });
    assert!(err.to_string().contains("data lost: 3 slice(s) damaged"), "{err}");
    assert_eq!(bad, before);
}

#[test]
fn damaged_par2_packets_are_skipped_and_missing_ones_reported() {
    let data = pseudo_random(20_000, 4);
    let params = Par2Params { slice_size: 1000, recovery_slices: 3 };
    let mut par2 = create_with("X", &data, params).unwrap();
    // Break the first recovery packet: two recovery slices stay usable.
    let offset = par2.windows(16).position(|w| w == TYPE_RECV_SLICE).unwrap();
    par2[offset + 100] ^= 0xff;
    assert_eq!(scan(&par2).iter().filter(|p| &p.ptype == TYPE_RECV_SLICE).count(), 2);
    let mut bad = data.clone();
    bad[5] ^= 1;
    bad[15_000] ^= 1;
    verify_and_repair("X", &mut bad, &par2).unwrap();
    assert_eq!(bad, data);

    assert_eq!(
        verify_and_repair("Y", &mut bad, &par2).unwrap_err(),
        Par2Error::WrongFile { expected: "Y".into(), found: "X".into() }
    );
    assert_eq!(verify("X", &data, &par2[64..]).unwrap_err(), Par2Error::MissingPacket("Main"));
    assert_eq!(verify("X", &data, b"not a par2 file").unwrap_err(), Par2Error::MissingPacket("Main"));
}

#[test]
fn empty_file_and_zero_redundancy() {
    let par2 = create("X", b"", 10).unwrap();
    let mut empty = Vec::new();
    assert_eq!(verify_and_repair("X", &mut empty, &par2).unwrap(), RepairOutcome::Intact);
    let par2 = create("X", b"abc", 0).unwrap();
    let mut bad = b"abd".to_vec();
    assert!(matches!(verify_and_repair("X", &mut bad, &par2), Err(Par2Error::Unrepairable { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any shape, any set of damaged slices up to the recovery count: repaired exactly; one
    /// more: refused with the data untouched.
    #[test]
    fn repairs_any_damage_within_capacity(
        len in 1usize..6000,
        slice_words in 1u64..64,
        recovery in 1u32..8,
        seed in any::<u64>(),
    ) {
        let params = Par2Params { slice_size: slice_words * 4, recovery_slices: recovery };
        let data = pseudo_random(len, seed);
        let par2 = create_with("X", &data, params).unwrap();
        let slices = params.source_slices(len as u64) as u32;
        let mut x = seed | 1;
        let mut pick = |n: u32| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % n as u64) as u32 };
        let mut damaged: Vec<u32> = (0..recovery.min(slices)).map(|_| pick(slices)).collect();
        damaged.sort_unstable();
        damaged.dedup();
        let mut bad = data.clone();
        for &d in &damaged {
            let start = (d as u64 * params.slice_size) as usize;
            let end = (start + params.slice_size as usize).min(len);
            let at = start + pick((end - start) as u32) as usize;
            bad[at] ^= 1 << pick(8);
        }
        let outcome = verify_and_repair("X", &mut bad, &par2).unwrap();
        prop_assert_eq!(&bad, &data);
        match outcome {
            RepairOutcome::Intact => prop_assert!(damaged.is_empty()),
            RepairOutcome::Repaired(r) => prop_assert_eq!(r.slices, damaged),
        }
        if slices > recovery {
            let mut worse = data.clone();
            for d in 0..=recovery {
                worse[(d as u64 * params.slice_size) as usize] ^= 0x80;
            }
            let before = worse.clone();
            let err = verify_and_repair("X", &mut worse, &par2).unwrap_err();
            let unrepairable = matches!(err, Par2Error::Unrepairable { .. });
            prop_assert!(unrepairable);
            prop_assert_eq!(worse, before);
        }
    }
}
