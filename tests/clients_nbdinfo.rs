//! `nbdinfo` (libnbd) against `spillway serve`: capability flags, block
//! sizes, export listing, allocation map, and the SIGTERM contract.

mod common;

use common::{require_python_nbd, require_tool, run_capture, run_py, Server};
use serde_json::Value;
use std::process::Command;

const MIB: u64 = 1024 * 1024;

fn nbdinfo_json(server: &Server, args: &[&str]) -> Value {
    let out = server.run_ok(Command::new("nbdinfo").arg("--json").args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("nbdinfo --json printed invalid JSON ({e}):\n{text}"))
}

fn only_export(v: &Value) -> &Value {
    let exports = v["exports"].as_array().unwrap_or_else(|| panic!("no \"exports\" array in {v:#}"));
    assert_eq!(exports.len(), 1, "expected exactly one export in {v:#}");
    &exports[0]
}

fn flag(export: &Value, key: &str) -> bool {
    export[key].as_bool().unwrap_or_else(|| panic!("nbdinfo JSON has no boolean {key:?}: {export:#}"))
}

fn num(export: &Value, key: &str) -> u64 {
    export[key].as_u64().unwrap_or_else(|| panic!("nbdinfo JSON has no number {key:?}: {export:#}"))
}

fn check_full_capabilities(export: &Value, size: u64) {
    for key in
        ["can_flush", "can_fua", "can_trim", "can_zero", "can_df", "can_multi_conn", "can_cache", "can_fast_zero"]
    {
        assert!(flag(export, key), "{key} should be true: {export:#}");
    }
    assert!(!flag(export, "is_read_only"), "is_read_only should be false: {export:#}");
    let contexts: Vec<&str> = export["contexts"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"contexts\" array: {export:#}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(contexts.contains(&"base:allocation"), "base:allocation missing from contexts {contexts:?}");
    assert_eq!(num(export, "block_size_minimum"), 1, "{export:#}");
    assert_eq!(num(export, "block_size_preferred"), 4096, "{export:#}");
    assert_eq!(num(export, "block_size_maximum"), 33_554_432, "{export:#}");
    assert_eq!(num(export, "export-size"), size, "{export:#}");
}

#[test]
fn nbdinfo_shows_every_capability_tcp_and_unix() {
    if !require_tool("nbdinfo") {
        return;
    }
    let server = Server::start(&[]);
    let tcp = nbdinfo_json(&server, &[&server.tcp_uri()]);
    assert_eq!(tcp["protocol"], "newstyle-fixed", "{tcp:#}");
    assert_eq!(tcp["structured"], true, "{tcp:#}");
    check_full_capabilities(only_export(&tcp), 256 * MIB);

    let unix = nbdinfo_json(&server, &[&server.unix_uri()]);
    check_full_capabilities(only_export(&unix), 256 * MIB);
    server.stop();
}

#[test]
fn nbdinfo_size_flag_sets_export_size() {
    if !require_tool("nbdinfo") {
        return;
    }
    for (arg, bytes) in [("1G", 1024 * MIB), ("3M", 3 * MIB), ("64MiB", 64 * MIB), ("4096K", 4 * MIB), ("1048576", MIB)]
    {
        let server = Server::start(&["--size", arg]);
        let v = nbdinfo_json(&server, &[&server.tcp_uri()]);
        assert_eq!(num(only_export(&v), "export-size"), bytes, "--size {arg} should give {bytes} bytes");
        // The size query without JSON agrees.
        let out = server.run_ok(Command::new("nbdinfo").args(["--size", &server.tcp_uri()]));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), bytes.to_string(), "nbdinfo --size for --size {arg}");
        server.stop();
    }
}

#[test]
fn nbdinfo_read_only_export() {
    if !require_tool("nbdinfo") {
        return;
    }
    let server = Server::start(&["--read-only"]);
    for uri in [server.tcp_uri(), server.unix_uri()] {
        let v = nbdinfo_json(&server, &[&uri]);
        let e = only_export(&v);
        assert!(flag(e, "is_read_only"), "is_read_only should be true: {e:#}");
        assert_eq!(num(e, "export-size"), 256 * MIB, "{e:#}");
    }
    server.stop();
}

#[test]
fn nbdinfo_lists_all_exports_over_tcp() {
    if !require_tool("nbdinfo") {
        return;
    }
    let server = Server::start(&["--export", "default", "--export", "second"]);
    let v = nbdinfo_json(&server, &["--list", &server.tcp_uri()]);
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("no exports array: {v:#}"))
        .iter()
        .map(|e| e["export-name"].as_str().unwrap_or_else(|| panic!("export without export-name: {e:#}")).to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["default", "second"], "nbdinfo --list: {v:#}");
    for e in v["exports"].as_array().unwrap() {
        assert_eq!(num(e, "export-size"), 256 * MIB, "{e:#}");
    }

    // The plain-text listing names both too.
    let out = server.run_ok(Command::new("nbdinfo").args(["--list", &server.tcp_uri()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("default") && text.contains("second"), "nbdinfo --list:\n{text}");

    // Each export can be connected to by name; "" reaches default.
    for uri in [server.tcp_uri_export("second"), server.tcp_uri_export("default"), server.tcp_uri()] {
        let v = nbdinfo_json(&server, &[&uri]);
        check_full_capabilities(only_export(&v), 256 * MIB);
    }
    let v = nbdinfo_json(&server, &[&server.tcp_uri_export("second")]);
    assert_eq!(only_export(&v)["export-name"], "second", "{v:#}");

    // A name the server does not export is refused.
    let out = run_capture(Command::new("nbdinfo").arg(server.tcp_uri_export("no-such-export")));
    assert!(
        !out.status.success(),
        "nbdinfo on an unknown export name succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.stop();
}

/// (offset, length, type) entries of `nbdinfo --map --json`, adjacent
/// entries of equal type merged.
fn map_of(server: &Server, uri: &str) -> Vec<(u64, u64, u64)> {
    let v = nbdinfo_json(server, &["--map", uri]);
    let arr = v.as_array().unwrap_or_else(|| panic!("nbdinfo --map --json is not an array: {v:#}"));
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut expect_off = 0;
    for e in arr {
        let (o, l, t) = (num(e, "offset"), num(e, "length"), num(e, "type"));
        assert_eq!(o, expect_off, "map is not contiguous: {v:#}");
        assert!(l > 0, "empty extent in map: {v:#}");
        expect_off = o + l;
        match out.last_mut() {
            Some(last) if last.2 == t => last.1 += l,
            _ => out.push((o, l, t)),
        }
    }
    out
}

#[test]
fn nbdinfo_map_reports_trimmed_and_zeroed_ranges_as_holes() {
    if !require_tool("nbdinfo") || !require_python_nbd() {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    // A fresh export is all hole.
    assert_eq!(
        map_of(&server, &server.tcp_uri()),
        vec![(0, 64 * MIB, 3)],
        "a fresh RAM export should map as one hole,zero extent"
    );

    let out = run_py("map_layout.py", &[&server.unix_uri()]);
    assert!(
        out.status.success(),
        "map_layout.py failed:\n{}\n--- server stderr ---\n{}",
        common::all_output(&out),
        server.log()
    );

    let map = map_of(&server, &server.tcp_uri());
    let expected = vec![
        (0, MIB, 0),            // data
        (MIB, MIB, 3),          // trimmed: hole,zero
        (2 * MIB, MIB, 0),      // data
        (3 * MIB, 61 * MIB, 3), // zeroed + never written: hole,zero
    ];
    assert_eq!(map, expected, "nbdinfo --map after write [0,4M), trim [1M,2M), zero [3M,4M)");

    // The plain-text map names the types.
    let out = server.run_ok(Command::new("nbdinfo").args(["--map", &server.unix_uri()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hole,zero"), "{text}");
    assert!(text.contains("data"), "{text}");
    server.stop();
}

#[test]
fn sigterm_logs_shutting_down_and_exits_zero() {
    if !require_tool("nbdinfo") {
        return;
    }
    let server = Server::start(&[]);
    // Serve at least one client first.
    server.run_ok(Command::new("nbdinfo").arg(server.tcp_uri()));
    let log = server.stop();
    let lines: Vec<&str> = log.lines().collect();
    let idx = |pred: &dyn Fn(&str) -> bool, what: &str| {
        lines.iter().position(|l| pred(l)).unwrap_or_else(|| panic!("no {what} line in the log:\n{log}"))
    };
    let ready = idx(&|l| l.split_whitespace().any(|w| w == "ready"), "`ready`");
    let tcp = idx(&|l| l.contains("listening on tcp "), "`listening on tcp`");
    let unix = idx(&|l| l.contains("listening on unix "), "`listening on unix`");
    let down = idx(&|l| l.contains("shutting down"), "`shutting down`");
    assert!(tcp < ready && unix < ready, "`ready` must come after both listening lines:\n{log}");
    assert!(ready < down, "`shutting down` must come after `ready`:\n{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in stderr although it is not a terminal:\n{log}");
}
