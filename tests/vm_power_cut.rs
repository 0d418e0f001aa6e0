//! Power cut: spillway runs INSIDE a qemu guest (tests/vm, docs/testing.md), its data
//! directory on an ext4 file system on a virtio-blk disk backed by a host file with
//! `cache=none`. The workload, `spillway-powercut write` (tests/vm/powercut.rs), runs
//! in the guest too, over loopback: pipelined 4 KiB WRITEs (some with FUA) and FLUSHes,
//! printing every reply to the serial console. The host SIGKILLs qemu at a random
//! moment, which loses everything the guest had not yet written to its disk (its page
//! cache, spillway's unsynced WAL) — unlike a kill -9 of the server, which keeps the
//! kernel's page cache. The next boot, from the same disk image, mounts the file
//! system (replaying its journal), starts spillway (replaying its WAL) and reads every
//! block back with `spillway-powercut read`; the host checks the promise of the mode:
//!
//! - strict: no write whose reply was seen is lost;
//! - batched, relaxed: no FUA write whose reply was seen is lost, nor any write whose
//!   reply was seen before a FLUSH was sent that got its reply;
//! - every mode: no block is torn or garbage; it holds a version written to it (or the
//!   version read back after the previous cut), never an older one than guaranteed.
//!
//! What was read back is the base the next cycle builds on. Cycles per mode:
//! `SPILLWAY_POWERCUT_CYCLES` (default 3). The long run (docs/testing.md):
//!
//! ```text
//! SPILLWAY_POWERCUT_CYCLES=100 cargo test --release --test vm_power_cut -- --nocapture
//! ```
//!
//! `SPILLWAY_POWERCUT_SEED` fixes the seed (default: from the clock; the seed is printed).
//! `SPILLWAY_POWERCUT_SERVE_MODE` runs the server in another mode than the promise
//! checked, to show what a weaker mode loses (e.g. `relaxed` under the strict test).

mod common;
mod vm;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Blocks in the working set (1 MiB): small, so overwrites are frequent.
const BLOCKS: u64 = 256;
const DEFAULT_CYCLES: u64 = 3;
/// After the workload's first line, the plug is pulled after this long (ms, random).
const CUT_AFTER_MS: (u64, u64) = (2000, 10000);
const DISK_BYTES: u64 = 512 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

const SCRIPT: &str = r#"
echo 1 >/proc/sys/kernel/printk
mkdir -p /data
mount -t ext4 /dev/vda /data
spillway serve --data-dir /data/spillway --listen 127.0.0.1:10809 --size 64M \
  --durability @MODE@ --wal-segment-size 4M >/tmp/spillway.log 2>&1 &
spid=$!
i=0
until grep -qw ready /tmp/spillway.log; do
  i=$((i + 1))
  if [ "$i" -ge 600 ] || ! kill -0 "$spid" 2>/dev/null; then
    echo "@@fail spillway did not get ready"
    sed 's/^/spillway| /' /tmp/spillway.log
    exit 1
  fi
  sleep 1
done
sed 's/^/spillway| /' /tmp/spillway.log
spillway-powercut read --addr 127.0.0.1:10809 --blocks @BLOCKS@
if [ @WRITE@ = 1 ]; then
  spillway-powercut write --addr 127.0.0.1:10809 --blocks @BLOCKS@ --gen @GEN@ --seed @SEED@ \
    --max-writes 1000000
  echo "@@fail the workload ended before the power cut"
  exit 1
fi
kill -TERM "$spid"
wait "$spid"
echo "@@pc spillway stopped cleanly"
sed 's/^/spillway| /' /tmp/spillway.log | tail -n 5
umount /data
"#;

/// What a block held when read back.
#[derive(Clone, Debug, PartialEq)]
enum Held {
    Zero,
    Version { gen: u64, n: u64 },
    Bad(String),
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Zero => write!(f, "zeros"),
            Held::Version { gen, n } => write!(f, "gen {gen} version {n}"),
            Held::Bad(why) => write!(f, "BAD ({why})"),
        }
    }
}

/// One event of a write phase, in console order.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    /// The reply to a WRITE of version `n` to `block` arrived.
    Acked { block: u64, n: u64, fua: bool },
    /// FLUSH `k` is about to be sent.
    FlushSent(u64),
    /// FLUSH `k`'s reply arrived.
    FlushDone(u64),
}

fn num(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// The `R` lines of the read-back (which must be complete: `@@pc read done N`).
fn parse_read(log: &str) -> Result<Vec<Held>, String> {
    let mut held: Vec<Option<Held>> = vec![None; BLOCKS as usize];
    let mut done = false;
    for l in log.lines() {
        if l == format!("@@pc read done {BLOCKS}") {
            done = true;
            break;
        }
        let t: Vec<&str> = l.split_whitespace().collect();
        if t.len() < 3 || t[0] != "R" {
            continue;
        }
        let Some(b) = num(t[1]).filter(|&b| b < BLOCKS) else { continue };
        let h = match (t.len(), t[2]) {
            (3, "Z") => Held::Zero,
            (_, "BAD") => Held::Bad(t[3..].join(" ")),
            (4, g) => match (num(g), num(t[3])) {
                (Some(gen), Some(n)) => Held::Version { gen, n },
                _ => return Err(format!("cannot parse {l:?}")),
            },
            _ => return Err(format!("cannot parse {l:?}")),
        };
        held[b as usize] = Some(h);
    }
    if !done {
        return Err("the read-back did not finish (no `@@pc read done`)".into());
    }
    held.into_iter().enumerate().map(|(b, h)| h.ok_or(format!("no R line for block {b}"))).collect()
}

/// The events after `@@pc writing gen GEN`, up to where the console stopped.
/// Lines that do not parse exactly (a kernel message in the middle of one) are skipped,
/// which can only make the check weaker, never report a false loss.
fn parse_write(log: &str, gen: u64) -> Result<Vec<Event>, String> {
    let start = format!("@@pc writing gen {gen}");
    let mut lines = log.lines().skip_while(|l| *l != start);
    if lines.next().is_none() {
        return Err(format!("no `{start}` line"));
    }
    let mut ev = Vec::new();
    for l in lines {
        let t: Vec<&str> = l.split_whitespace().collect();
        match (t.as_slice(), t.first().copied()) {
            ([_, b, n], Some(k @ ("A" | "U"))) => {
                if let (Some(block), Some(n)) = (num(b), num(n)) {
                    ev.push(Event::Acked { block, n, fua: k == "U" });
                }
            }
            ([_, k], Some("S")) => ev.extend(num(k).map(Event::FlushSent)),
            ([_, k], Some("F")) => ev.extend(num(k).map(Event::FlushDone)),
            (_, Some("E")) => return Err(format!("the workload got an error reply: {l}")),
            _ => {}
        }
    }
    Ok(ev)
}

/// For each block, the newest version whose survival `mode` promises (None: only what
/// was there before this write phase).
fn guaranteed(mode: &str, events: &[Event]) -> HashMap<u64, u64> {
    let sent: HashMap<u64, usize> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| matches!(e, Event::FlushSent(_)).then_some(i))
        .map(|i| {
            let Event::FlushSent(k) = events[i] else { unreachable!() };
            (k, i)
        })
        .collect();
    // Every A line before the send of the last FLUSH that completed is covered by it.
    let covered_before = events
        .iter()
        .filter_map(|e| match e {
            Event::FlushDone(k) => sent.get(k).copied(),
            _ => None,
        })
        .max();
    let mut g = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::Acked { block, n, fua } = *e {
            let ok = match mode {
                "strict" => true,
                "batched" | "relaxed" => fua || covered_before.is_some_and(|p| i < p),
                _ => false,
            };
            if ok {
                let v = g.entry(block).or_insert(n);
                *v = (*v).max(n);
            }
        }
    }
    g
}

/// Checks the read-back `after` against `mode`'s promise, given what was read back
/// before the write phase `gen` (`base`) and what the workload saw. One line per violation.
fn check(mode: &str, base: &[Held], gen: u64, events: &[Event], after: &[Held]) -> Vec<String> {
    let g = guaranteed(mode, events);
    let mut bad = Vec::new();
    for (b, (old, now)) in base.iter().zip(after).enumerate() {
        let b = b as u64;
        let need = g.get(&b).copied();
        let what = match need {
            Some(n) => format!("gen {gen} version {n} or later"),
            None => format!("{old} or a gen {gen} version"),
        };
        let ok = match now {
            Held::Bad(_) => false,
            Held::Version { gen: g2, n } if *g2 == gen => need.is_none_or(|need| *n >= need),
            other => need.is_none() && other == old,
        };
        if !ok {
            let acks: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Acked { block, n, fua } if *block == b => {
                        Some(format!("{n}{}", if *fua { "(FUA)" } else { "" }))
                    }
                    _ => None,
                })
                .collect();
            bad.push(format!(
                "block {b}: holds {now}; the {mode} promise needs {what} (acked versions this phase: {})",
                if acks.is_empty() { "none".to_owned() } else { acks.join(" ") }
            ));
        }
    }
    bad
}

/// Blocks whose newest acknowledged version of phase `gen` did not survive (what a
/// weaker mode may lose; strict must report 0).
fn lost_acked(gen: u64, events: &[Event], after: &[Held]) -> usize {
    let mut newest: HashMap<u64, u64> = HashMap::new();
    for e in events {
        if let Event::Acked { block, n, .. } = *e {
            newest.insert(block, n);
        }
    }
    newest
        .iter()
        .filter(|(b, n)| !matches!(after[**b as usize], Held::Version { gen: g, n: m } if g == gen && m >= **n))
        .count()
}

fn splitmix(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn make_disk(path: &Path) {
    let f = fs::File::create(path).expect("create the disk image");
    f.set_len(DISK_BYTES).expect("size the disk image");
    drop(f);
    common::run_ok(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4"]).arg(path));
}

fn power_cut(mode: &str) {
    let Some(kit) = vm::require_vm() else { return };
    let cycles = env_u64("SPILLWAY_POWERCUT_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_u64("SPILLWAY_POWERCUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64 >> 1
    });
    let serve_mode = std::env::var("SPILLWAY_POWERCUT_SERVE_MODE").unwrap_or_else(|_| mode.to_owned());
    eprintln!("power cut {mode}: {cycles} cycles, server in {serve_mode} mode, SPILLWAY_POWERCUT_SEED={seed}");
    let mut rng = seed;
    // The disk image lives under the target directory: cache=none needs O_DIRECT,
    // which a tmpfs /tmp does not have.
    let dir = tempfile::Builder::new().prefix("powercut-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let disk = dir.path().join("disk.img");
    make_disk(&disk);
    let bin = |name: &str| Path::new(env!("CARGO_BIN_EXE_spillway")).with_file_name(name);

    let mut base: Vec<Held> = Vec::new();
    let mut last: Option<(u64, Vec<Event>)> = None; // the previous write phase
    let (mut total_acks, mut total_flushes) = (0usize, 0usize);
    for cycle in 0..=cycles {
        let gen = cycle + 1;
        let write = cycle < cycles;
        let script = SCRIPT
            .replace("@MODE@", &serve_mode)
            .replace("@BLOCKS@", &BLOCKS.to_string())
            .replace("@GEN@", &gen.to_string())
            .replace("@SEED@", &splitmix(&mut rng).to_string())
            .replace("@WRITE@", if write { "1" } else { "0" });
        let mut guest = vm::Guest::new(&format!("power_cut_{mode}_{cycle}"), &script);
        guest.network = false;
        guest.tools = false;
        guest.disks.push(disk.clone());
        guest.binaries.push(("/bin/spillway".into(), bin("spillway")));
        guest.binaries.push(("/bin/spillway-powercut".into(), bin("spillway-powercut")));
        let started = Instant::now();
        let mut vm = vm::Vm::boot(&kit, &guest);
        let fail = |vm: &vm::Vm, what: &str| -> String {
            format!(
                "power cut {mode}, cycle {cycle} of {cycles} (SPILLWAY_POWERCUT_SEED={seed}): {what}\n\
                 --- serial console (last 60 lines; all of it in {}) ---\n{}",
                vm.log_path().display(),
                vm.log_tail(60)
            )
        };
        if let Err(e) = vm.wait_prefix("@@pc read done", BOOT_TIMEOUT) {
            vm.kill9();
            panic!("{}", fail(&vm, &e));
        }
        let after = parse_read(&vm.log()).unwrap_or_else(|e| panic!("{}", fail(&vm, &e)));
        match &last {
            None => {
                if let Some((b, h)) = after.iter().enumerate().find(|(_, h)| **h != Held::Zero) {
                    panic!("{}", fail(&vm, &format!("block {b} of a new volume holds {h}, not zeros")));
                }
            }
            Some((pgen, events)) => {
                let v = check(mode, &base, *pgen, events, &after);
                if !v.is_empty() {
                    vm.kill9();
                    panic!("{}", fail(&vm, &format!("{} violation(s):\n{}", v.len(), v.join("\n"))));
                }
                eprintln!(
                    "power cut {mode}: cycle {cycle}: promise kept; {} block(s) lost an acknowledged write the \
                     promise does not cover",
                    lost_acked(*pgen, events, &after)
                );
            }
        }
        base = after;
        if write {
            if let Err(e) = vm.wait_prefix(&format!("@@pc writing gen {gen}"), BOOT_TIMEOUT) {
                vm.kill9();
                panic!("{}", fail(&vm, &e));
            }
            let (lo, hi) = CUT_AFTER_MS;
            thread::sleep(Duration::from_millis(lo + splitmix(&mut rng) % (hi - lo)));
            vm.kill9();
            let log = vm.log();
            if log.lines().any(|l| l.starts_with("@@fail") || l.starts_with(vm::RESULT_PREFIX)) {
                panic!("{}", fail(&vm, "the guest failed before the power cut"));
            }
            let events = parse_write(&log, gen).unwrap_or_else(|e| panic!("{}", fail(&vm, &e)));
            let acks = events.iter().filter(|e| matches!(e, Event::Acked { .. })).count();
            let flushes = events.iter().filter(|e| matches!(e, Event::FlushDone(_))).count();
            eprintln!(
                "power cut {mode}: cycle {}: {acks} writes and {flushes} flushes acknowledged before the cut ({:.0?})",
                cycle + 1,
                started.elapsed()
            );
            total_acks += acks;
            total_flushes += flushes;
            last = Some((gen, events));
        } else {
            let rc = vm.finish(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{}", fail(&vm, &e)));
            if rc != 0 || !vm.log().lines().any(|l| l == "@@pc spillway stopped cleanly") {
                panic!("{}", fail(&vm, &format!("the final boot failed (status {rc})")));
            }
        }
    }
    eprintln!("power cut {mode}: {cycles} cycles passed; {total_acks} writes, {total_flushes} flushes acknowledged");
    // A run in which nothing was ever acknowledged would check nothing.
    assert!(cycles == 0 || total_acks > 0, "power cut {mode}: no write was acknowledged in {cycles} cycles");
}

#[test]
fn power_cut_strict() {
    power_cut("strict");
}

#[test]
fn power_cut_batched() {
    power_cut("batched");
}

#[test]
fn power_cut_relaxed() {
    power_cut("relaxed");
}

// The checker itself, on made-up consoles: each kind of loss must be reported.

fn v(gen: u64, n: u64) -> Held {
    Held::Version { gen, n }
}

fn acked(block: u64, n: u64) -> Event {
    Event::Acked { block, n, fua: false }
}

/// Blocks 0..BLOCKS, all at `h` except the given ones.
fn blocks(h: Held, except: &[(u64, Held)]) -> Vec<Held> {
    let mut all = vec![h; BLOCKS as usize];
    for (b, x) in except {
        all[*b as usize] = x.clone();
    }
    all
}

#[test]
fn checker_strict_reports_a_lost_acknowledged_write() {
    let base = blocks(v(1, 5), &[]);
    let ev = [acked(3, 10), acked(4, 11)];
    let ok = blocks(v(1, 5), &[(3, v(2, 10)), (4, v(2, 11))]);
    assert!(check("strict", &base, 2, &ev, &ok).is_empty());
    let lost = blocks(v(1, 5), &[(3, v(2, 10))]);
    let got = check("strict", &base, 2, &ev, &lost);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("block 4: holds gen 1 version 5"), "{got:?}");
    // The same loss is allowed in batched and relaxed mode: no FLUSH covered it.
    assert!(check("batched", &base, 2, &ev, &lost).is_empty());
    assert!(check("relaxed", &base, 2, &ev, &lost).is_empty());
}

#[test]
fn checker_batched_reports_a_lost_flushed_or_fua_write() {
    let base = blocks(Held::Zero, &[]);
    // Block 1's write was acked before FLUSH 1 was sent, and FLUSH 1 completed; block 2's
    // write was acked after, so FLUSH 1 does not cover it; block 3's was FUA.
    let ev = [
        acked(1, 1),
        Event::FlushSent(1),
        acked(2, 2),
        Event::FlushDone(1),
        Event::Acked { block: 3, n: 3, fua: true },
    ];
    let keep_all = blocks(Held::Zero, &[(1, v(1, 1)), (3, v(1, 3))]);
    assert!(check("batched", &base, 1, &ev, &keep_all).is_empty());
    for (b, name) in [(1, "flushed"), (3, "FUA")] {
        let mut lost = keep_all.clone();
        lost[b] = Held::Zero;
        let got = check("relaxed", &base, 1, &ev, &lost);
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert!(got[0].starts_with(&format!("block {b}: holds zeros")), "{got:?}");
    }
    // A FLUSH that was sent but never answered guarantees nothing.
    let unanswered = [acked(1, 1), Event::FlushSent(1)];
    assert!(check("batched", &base, 1, &unanswered, &blocks(Held::Zero, &[])).is_empty());
}

#[test]
fn checker_reports_torn_older_and_foreign_versions() {
    let base = blocks(v(1, 5), &[(7, Held::Zero)]);
    let ev = [acked(3, 10)];
    let cases = [
        (2, Held::Bad("checksum".into()), "BAD"),
        (7, v(1, 9), "gen 1 version 9"), // an old generation's version that was not there
        (8, Held::Zero, "zeros"),        // data that was there went away
        (9, v(3, 1), "gen 3 version 1"), // a future generation
        (3, v(2, 9), "gen 2 version 9"), // older than the acked version 10 (strict)
    ];
    for (b, h, shown) in cases {
        let mut after = blocks(v(1, 5), &[(7, Held::Zero), (3, v(2, 10))]);
        after[b as usize] = h;
        let got = check("strict", &base, 2, &ev, &after);
        assert_eq!(got.len(), 1, "block {b}: {got:?}");
        assert!(got[0].starts_with(&format!("block {b}: holds {shown}")), "{got:?}");
    }
    // An unacknowledged newer version of this phase is fine.
    let after = blocks(v(1, 5), &[(7, Held::Zero), (3, v(2, 10)), (4, v(2, 12))]);
    assert!(check("strict", &base, 2, &ev, &after).is_empty());
}

#[test]
fn parsers_read_the_console() {
    let mut log = String::from("spillway| ready\n[ 1.0] kernel noise\n");
    for b in 0..BLOCKS {
        log.push_str(&match b {
            0 => "R 0 Z\n".to_owned(),
            1 => "R 1 BAD checksum sectors=xx head=00\n".to_owned(),
            b => format!("R {b} 2 {}\n", b * 3),
        });
    }
    log.push_str(&format!("@@pc read done {BLOCKS}\n@@pc writing gen 3\nA 5 1\nS 1\nU 6 2\nF 1\nA 7 3[ 2.0] noise\nA 8 4 <incomplete line at EOF>\n"));
    let held = parse_read(&log).expect("parse read");
    assert_eq!(held[0], Held::Zero);
    assert_eq!(held[1], Held::Bad("checksum sectors=xx head=00".into()));
    assert_eq!(held[9], v(2, 27));
    let ev = parse_write(&log, 3).expect("parse write");
    assert_eq!(
        ev,
        vec![acked(5, 1), Event::FlushSent(1), Event::Acked { block: 6, n: 2, fua: true }, Event::FlushDone(1)]
    );
    assert!(parse_read("R 0 Z\n").is_err(), "an unfinished read-back must not parse");
}
