//! fio's `nbd` ioengine against `spillway serve`: random 4 KiB writes at
//! queue depth 16 with crc32c verification, with one job and with four jobs
//! (one NBD connection each), followed by a separate verify-only pass on
//! fresh connections.

mod common;

use common::{all_output, require_tool, run_capture, Server};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1024 * 1024;

/// Runs fio with JSON output written to `json_path`; returns the parsed
/// report after checking the exit status and the absence of verify errors.
fn fio(server: &Server, args: &[String], json_path: &Path) -> Value {
    let mut cmd = Command::new("fio");
    cmd.current_dir(server.dir())
        .args(args)
        .arg("--output-format=json")
        .arg(format!("--output={}", json_path.display()));
    let out = run_capture(&mut cmd);
    let text = all_output(&out);
    let json = std::fs::read_to_string(json_path).unwrap_or_default();
    let context = format!(
        "fio {}\nstatus: {}\n--- output ---\n{text}\n--- json ---\n{json}\n--- server stderr ---\n{}",
        args.join(" "),
        out.status,
        server.log()
    );
    assert!(out.status.success(), "fio failed\n{context}");
    for bad in ["verify:", "bad magic", "crc32c: wanted", "bad header"] {
        assert!(!text.contains(bad) && !json.contains(bad), "fio reported {bad:?}\n{context}");
    }
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("fio JSON unparsable: {e}\n{context}"))
}

fn sum_io(report: &Value, dir: &str) -> u64 {
    jobs(report).iter().map(|j| j[dir]["io_bytes"].as_u64().expect("io_bytes")).sum()
}

fn jobs(report: &Value) -> &Vec<Value> {
    report["jobs"].as_array().unwrap_or_else(|| panic!("no jobs in fio report: {report:#}"))
}

fn base_args(uri: &str, numjobs: u64, per_job: u64) -> Vec<String> {
    vec![
        "--name=spillway".into(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        format!("--size={per_job}"),
        format!("--offset_increment={per_job}"),
        format!("--numjobs={numjobs}"),
        "--iodepth=16".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        "--verify_state_save=0".into(),
        "--randrepeat=1".into(),
    ]
}

fn write_and_verify(uri_of: fn(&Server) -> String, numjobs: u64) {
    if !require_tool("fio") {
        return;
    }
    let server = Server::start(&[]);
    let uri = uri_of(&server);
    let total = 64 * MIB;
    let per_job = total / numjobs;

    // Pass 1: random writes, then fio reads everything back and checks the
    // crc32c of each block (same connection per job).
    let mut args = base_args(&uri, numjobs, per_job);
    args.push("--do_verify=1".into());
    let report = fio(&server, &args, &server.dir().join("write.json"));
    assert_eq!(jobs(&report).len() as u64, numjobs, "{report:#}");
    for j in jobs(&report) {
        assert_eq!(j["error"].as_u64(), Some(0), "fio job error: {j:#}");
    }
    assert_eq!(sum_io(&report, "write"), total, "bytes written: {report:#}");
    assert_eq!(sum_io(&report, "read"), total, "bytes verified: {report:#}");

    // Pass 2: a verify-only run on new connections regenerates the same
    // offsets (same seed) and checks every block again.
    let mut args = base_args(&uri, numjobs, per_job);
    args.push("--verify_only".into());
    let report = fio(&server, &args, &server.dir().join("verify.json"));
    for j in jobs(&report) {
        assert_eq!(j["error"].as_u64(), Some(0), "fio job error: {j:#}");
    }
    assert_eq!(sum_io(&report, "read"), total, "bytes verified: {report:#}");
    // (fio accounts the skipped writes of a verify_only run as written, so
    // write io_bytes says nothing here; fio_verify_only_on_fresh_export_fails
    // shows that verify_only really writes nothing.)
    server.stop();
}

#[test]
fn fio_randwrite_verify_one_job_tcp() {
    write_and_verify(Server::tcp_uri, 1);
}

#[test]
fn fio_randwrite_verify_four_jobs_tcp() {
    write_and_verify(Server::tcp_uri, 4);
}

#[test]
fn fio_randwrite_verify_four_jobs_unix() {
    write_and_verify(Server::unix_uri, 4);
}

#[test]
fn fio_verify_only_on_fresh_export_fails() {
    // Guards the harness: verification must catch data that was never
    // written, so a server returning stale or zero data cannot pass.
    if !require_tool("fio") {
        return;
    }
    let server = Server::start(&[]);
    let mut args = base_args(&server.tcp_uri(), 1, 4 * MIB);
    args.push("--verify_only".into());
    let mut cmd = Command::new("fio");
    cmd.current_dir(server.dir()).args(&args);
    let out = run_capture(&mut cmd);
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.contains("verify"),
        "fio verify_only on a never-written export did not fail:\n{text}"
    );
    server.stop();
}
