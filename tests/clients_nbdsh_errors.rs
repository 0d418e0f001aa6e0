//! libnbd's Python bindings (tests/py/errors.py, run with /usr/bin/python3)
//! against `spillway serve`: errno values for out-of-bounds, bad-flag,
//! read-only and oversized requests, a data round trip exercising every
//! command and flag, and visibility across connections.

mod common;

use common::{all_output, require_python_nbd, require_tool, run_py, Server};
use std::process::Command;

/// Runs `errors.py MODE URI`, prints its output, asserts exit 0 and that it
/// actually ran checks.
fn errors_py(server: &Server, mode: &str, uri: &str) {
    errors_py_multi(server, mode, &[uri]);
}

fn errors_py_multi(server: &Server, mode: &str, uris: &[&str]) {
    let mut args = vec![mode];
    args.extend_from_slice(uris);
    let out = run_py("errors.py", &args);
    let text = all_output(&out);
    println!("--- errors.py {} ---\n{text}", args.join(" "));
    let passes = text.lines().filter(|l| l.starts_with("PASS ")).count();
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        out.status.success() && fails.is_empty() && passes > 0,
        "errors.py {mode} failed (status {}):\n{}\n--- full output ---\n{text}\n--- server stderr ---\n{}",
        out.status,
        fails.join("\n"),
        server.log()
    );
}

#[test]
fn libnbd_errors_on_writable_export() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&[]);
    errors_py(&server, "rw", &server.tcp_uri());
    server.stop();
}

#[test]
fn libnbd_errors_on_writable_export_unix() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&["--size", "3M"]);
    errors_py(&server, "rw", &server.unix_uri());
    server.stop();
}

#[test]
fn libnbd_errors_on_read_only_export() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&["--read-only"]);
    errors_py(&server, "ro", &server.tcp_uri());
    server.stop();
}

#[test]
fn libnbd_oversized_read_einval_structured_eoverflow_simple() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    errors_py(&server, "bigread", &server.unix_uri());
    server.stop();
}

#[test]
fn libnbd_round_trip_all_commands_and_flags() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&[]);
    errors_py(&server, "roundtrip", &server.tcp_uri());
    server.stop();
}

#[test]
fn libnbd_multi_connection_visibility() {
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&[]);
    errors_py(&server, "multiconn", &server.tcp_uri());
    server.stop();
}

#[test]
fn libnbd_multi_connection_visibility_mixed_transports() {
    if !require_python_nbd() {
        return;
    }
    // Write over TCP, flush over the Unix socket, read over TCP again.
    let server = Server::start(&[]);
    errors_py_multi(&server, "multiconn", &[&server.tcp_uri(), &server.unix_uri(), &server.tcp_uri()]);
    server.stop();
}

#[test]
fn nbdsh_one_liner_write_read() {
    // The same thing through the nbdsh front end, as users would. The
    // /usr/bin/nbdsh wrapper runs whichever `python3` is first on PATH, so
    // run its module with the system interpreter directly.
    if !require_tool("nbdsh") || !require_python_nbd() {
        return;
    }
    let server = Server::start(&[]);
    let out = server.run_ok(Command::new(common::SYSTEM_PYTHON).args([
        "-m",
        "nbd",
        "-u",
        &server.tcp_uri(),
        "-c",
        "buf = b'spillway' * 1000",
        "-c",
        "h.pwrite(buf, 12345)",
        "-c",
        "assert h.pread(len(buf), 12345) == buf",
        "-c",
        "assert h.pread(10, 12335) == bytes(10)",
        "-c",
        "print('size', h.get_size())",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.trim() == "size 268435456"), "nbdsh output:\n{text}");
    server.stop();
}

#[test]
fn errors_py_detects_a_wrong_errno() {
    // Guards the harness: the script must fail when the server's answer is
    // not the expected one. A read-only export fails writes with EPERM, so
    // the writable-export checks (ENOSPC for a write past the end etc.) are
    // not all met there.
    if !require_python_nbd() {
        return;
    }
    let server = Server::start(&["--read-only"]);
    let out = run_py("errors.py", &["rw", &server.tcp_uri()]);
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.lines().any(|l| l.starts_with("FAIL ")),
        "errors.py rw passed against a read-only export:\n{text}"
    );
    server.stop();
}
