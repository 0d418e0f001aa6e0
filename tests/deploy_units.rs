//! The systemd units in deploy/systemd pass `systemd-analyze verify` with no warning at all,
//! and say what deploy/README.md promises (Type=notify, the hardening, nbd-client's flags).
//!
//! `verify` checks that every Exec binary exists, so the units are copied into a temporary
//! directory with `/usr/local/bin/spillway` replaced by the binary under test; nothing is
//! installed. The template is verified through an instance (`spillway-nbd@default.service`).
//! PID 1 is not systemd on the test machines: no unit is started.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{all_output, require_path, require_tool, run_capture};

const UNITS: &[&str] = &["spillway.service", "spillway.socket", "spillway-nbd@.service", "mnt-spillway.mount"];
const INSTALLED_BINARY: &str = "/usr/local/bin/spillway";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd")
}

fn unit_text(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `key=value` lines of a unit (comments skipped), in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting(text: &str, key: &str) -> Vec<String> {
    settings(text).into_iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect()
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_warnings() {
    if !require_tool("systemd-analyze") || !require_path(Path::new("/usr/sbin/nbd-client"), "nbd-client") {
        return;
    }
    // Every file in deploy/systemd is a unit this test knows about.
    let mut present: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/systemd")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut known: Vec<String> = UNITS.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(present, known, "deploy/systemd holds units this test does not verify");

    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_spillway");
    for name in UNITS {
        let text = unit_text(name).replace(INSTALLED_BINARY, bin);
        std::fs::write(tmp.path().join(name), text).expect("copy unit");
    }
    for name in UNITS {
        let target = name.replace("@.", "@default.");
        let out = run_capture(
            Command::new("systemd-analyze").arg("verify").arg(format!("./{target}")).current_dir(tmp.path()),
        );
        let text = all_output(&out);
        assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify {target}:\n{text}");
    }
}

#[test]
fn the_verify_check_catches_a_broken_unit() {
    if !require_tool("systemd-analyze") {
        return;
    }
    // The check above is only worth something if verify speaks up: a missing binary and an
    // unknown key must both produce output.
    let tmp = tempfile::tempdir().expect("tempdir");
    let text =
        unit_text("spillway.service").replace(INSTALLED_BINARY, "/nonexistent/spillway") + "\n[Service]\nNoSuchKey=1\n";
    std::fs::write(tmp.path().join("spillway.service"), text).expect("write unit");
    let out =
        run_capture(Command::new("systemd-analyze").args(["verify", "./spillway.service"]).current_dir(tmp.path()));
    let text = all_output(&out);
    assert!(text.contains("/nonexistent/spillway"), "no complaint about the binary:\n{text}");
    assert!(text.contains("NoSuchKey"), "no complaint about the unknown key:\n{text}");
}

#[test]
fn the_service_is_notify_type_and_hardened() {
    let s = unit_text("spillway.service");
    assert_eq!(setting(&s, "Type"), ["notify"]);
    assert_eq!(setting(&s, "ExecStart"), [format!("{INSTALLED_BINARY} serve --config /etc/spillway/spillway.toml")]);
    assert_eq!(setting(&s, "StateDirectory"), ["spillway"]);
    assert_eq!(setting(&s, "ProtectSystem"), ["strict"]);
    assert_eq!(setting(&s, "ReadWritePaths"), ["/var/lib/spillway"]);
    for key in ["NoNewPrivileges", "PrivateTmp", "ProtectHome"] {
        assert_eq!(setting(&s, key), ["yes"], "{key}");
    }
    assert_eq!(setting(&s, "RestrictAddressFamilies"), ["AF_INET AF_INET6 AF_UNIX"]);
    assert_eq!(setting(&s, "LimitMEMLOCK"), ["infinity"]);
    assert_eq!(setting(&s, "OOMScoreAdjust").len(), 1);
    assert!(!setting(&s, "WatchdogSec").is_empty(), "WATCHDOG=1 needs WatchdogSec");
    // Only what --memlock needs: PR_SET_IO_FLUSHER wants CAP_SYS_RESOURCE; mlockall needs no
    // CAP_IPC_LOCK with LimitMEMLOCK=infinity.
    assert_eq!(setting(&s, "AmbientCapabilities"), ["CAP_SYS_RESOURCE"]);
    assert_eq!(setting(&s, "CapabilityBoundingSet"), ["CAP_SYS_RESOURCE"]);
}

#[test]
fn the_socket_and_attach_units_match_what_spillway_serves() {
    let sock = unit_text("spillway.socket");
    // src/systemd.rs serves exactly one passed TCP socket.
    assert_eq!(setting(&sock, "ListenStream"), ["127.0.0.1:10809"]);
    let nbd = unit_text("spillway-nbd@.service");
    let start = setting(&nbd, "ExecStart");
    assert_eq!(start.len(), 1);
    let args: Vec<&str> = start[0].split_whitespace().collect();
    for flag in ["-C", "-b", "-t", "-N"] {
        assert!(args.contains(&flag), "nbd-client without {flag}: {}", start[0]);
    }
    let b = args.iter().position(|a| *a == "-b").expect("-b");
    assert_eq!(args[b + 1], "4096");
    assert!(setting(&nbd, "ExecStop").iter().any(|s| s.contains("nbd-client -d")), "no detach on stop");
    assert!(setting(&nbd, "After").iter().any(|s| s.split_whitespace().any(|u| u == "spillway.service")));
    let mount = unit_text("mnt-spillway.mount");
    assert_eq!(setting(&mount, "Type"), ["ext4"]);
    assert_eq!(setting(&mount, "Where"), ["/mnt/spillway"]);
}
