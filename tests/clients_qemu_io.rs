//! `qemu-io` (QEMU's NBD block driver) against `spillway serve`: aligned and
//! unaligned I/O, write-zeroes, discard, flush, vectored and asynchronous
//! requests.
//!
//! qemu-io reports a pattern mismatch as "Pattern verification failed" (and,
//! depending on the version, may still exit 0), so every run checks the
//! exit status, the absence of that string and of any error message, and
//! the presence of one "wrote"/"read"/"discard" line per command.

mod common;

use common::{require_tool, Server};
use std::process::Command;

/// Runs qemu-io on `uri` with the given `-c` commands; returns stdout.
fn qemu_io(server: &Server, uri: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "--discard=unmap", uri]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = server.run_ok(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let all = format!("{stdout}{stderr}");
    assert!(
        !all.contains("Pattern verification failed"),
        "qemu-io pattern mismatch on {uri} for {cmds:?}:\n{all}\n--- server stderr ---\n{}",
        server.log()
    );
    for bad in ["failed", "error", "Error"] {
        assert!(
            !all.contains(bad),
            "qemu-io printed {bad:?} on {uri} for {cmds:?}:\n{all}\n--- server stderr ---\n{}",
            server.log()
        );
    }
    stdout
}

/// Asserts `out` has a line `VERB LEN/LEN bytes at offset OFF` for every
/// (verb, offset, len), e.g. `("wrote", 4097, 12345)`.
fn expect_lines(out: &str, want: &[(&str, u64, u64)]) {
    for (verb, off, len) in want {
        let line = format!("{verb} {len}/{len} bytes at offset {off}");
        assert!(out.lines().any(|l| l.trim() == line), "missing qemu-io output line {line:?} in:\n{out}");
    }
}

fn count_lines(out: &str, prefix: &str) -> usize {
    out.lines().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn qemu_io_aligned_write_read() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let uri = server.tcp_uri();
    let out = qemu_io(
        &server,
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "read -P 0 1M 1M",
            "write -P 0xcd 255M 1M",
            "read -P 0xcd 255M 1M",
        ],
    );
    expect_lines(
        &out,
        &[
            ("wrote", 0, 1 << 20),
            ("read", 0, 1 << 20),
            ("read", 1 << 20, 1 << 20),
            ("wrote", 255 << 20, 1 << 20),
            ("read", 255 << 20, 1 << 20),
        ],
    );
    // A second process (new connection) sees the data.
    let out = qemu_io(&server, &uri, &["read -P 0xab 0 1M", "read -P 0xcd 255M 1M"]);
    assert_eq!(count_lines(&out, "read "), 2, "{out}");
    server.stop();
}

#[test]
fn qemu_io_rejects_a_wrong_pattern() {
    // Guards the harness: a mismatching pattern must be detected.
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", &server.tcp_uri()]);
    cmd.args(["-c", "write -P 0x11 0 4096", "-c", "read -P 0x22 0 4096"]);
    let out = common::run_capture(&mut cmd);
    let all = common::all_output(&out);
    assert!(
        all.contains("Pattern verification failed"),
        "reading 0x11 data with pattern 0x22 was not flagged:\n{all}\n--- server stderr ---\n{}",
        server.log()
    );
    server.stop();
}

#[test]
fn qemu_io_unaligned_offsets_and_lengths() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let uri = server.tcp_uri();
    // [4097, 16442) = 0x5a; then [10000, 10100) = 0x33 over it; then a
    // two-byte write straddling the 4 KiB boundary at 4095.
    let out = qemu_io(
        &server,
        &uri,
        &[
            "write -P 0x5a 4097 12345",
            "read -P 0x5a 4097 12345",
            "read -P 0 0 4097",
            "read -P 0 16442 3558",
            "write -P 0x33 10000 100",
            "write -P 0x77 4095 2",
            "write -P 0x99 1048575 3",
        ],
    );
    expect_lines(
        &out,
        &[
            ("wrote", 4097, 12345),
            ("read", 4097, 12345),
            ("read", 0, 4097),
            ("read", 16442, 3558),
            ("wrote", 10000, 100),
            ("wrote", 4095, 2),
            ("wrote", 1048575, 3),
        ],
    );
    // Verify every byte range from a fresh connection.
    let checks = [
        ("read -P 0 0 4095", ("read", 0, 4095)),
        ("read -P 0x77 4095 2", ("read", 4095, 2)),
        ("read -P 0x5a 4097 5903", ("read", 4097, 5903)),
        ("read -P 0x33 10000 100", ("read", 10000, 100)),
        ("read -P 0x5a 10100 6342", ("read", 10100, 6342)),
        ("read -P 0 16442 3558", ("read", 16442, 3558)),
        ("read -P 0 16442 1031132", ("read", 16442, 1031132)),
        ("read -P 0 1047574 1001", ("read", 1047574, 1001)),
        ("read -P 0x99 1048575 3", ("read", 1048575, 3)),
        ("read -P 0 1048578 7", ("read", 1048578, 7)),
        ("read -P 0x5a 4098 1", ("read", 4098, 1)),
        ("read -P 0x5a 16441 1", ("read", 16441, 1)),
    ];
    let cmds: Vec<&str> = checks.iter().map(|c| c.0).collect();
    let want: Vec<(&str, u64, u64)> = checks.iter().map(|c| c.1).collect();
    let out = qemu_io(&server, &uri, &cmds);
    expect_lines(&out, &want);
    server.stop();
}

#[test]
fn qemu_io_write_zeroes_discard_flush() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let uri = server.tcp_uri();
    let out = qemu_io(
        &server,
        &uri,
        &[
            "write -P 0x77 0 64k",
            "write -z 4096 8192",     // WRITE_ZEROES, may not unmap
            "write -z -u 20000 5000", // WRITE_ZEROES, may unmap, unaligned
            "write -z -f 40000 1",    // WRITE_ZEROES with FUA
            "read -P 0x77 0 4096",
            "read -P 0 4096 8192",
            "read -P 0x77 12288 7712",
            "read -P 0 20000 5000",
            "read -P 0x77 25000 15000",
            "read -P 0 40000 1",
            "read -P 0x77 40001 25535",
            "write -P 0x11 2M 2M",
            "discard 3M 1M",
            "read -P 0x11 2M 1M",
            "read -P 0 3M 1M",
            "flush",
            "write -f -P 0x42 8M 4097",
            "read -P 0x42 8M 4097",
        ],
    );
    expect_lines(
        &out,
        &[
            ("wrote", 0, 65536),
            ("wrote", 4096, 8192),
            ("wrote", 20000, 5000),
            ("wrote", 40000, 1),
            ("read", 4096, 8192),
            ("read", 20000, 5000),
            ("read", 40001, 25535),
            ("discard", 3 << 20, 1 << 20),
            ("read", 3 << 20, 1 << 20),
            ("wrote", 8 << 20, 4097),
            ("read", 8 << 20, 4097),
        ],
    );
    // Another connection agrees.
    let out = qemu_io(
        &server,
        &uri,
        &[
            "read -P 0 4096 8192",
            "read -P 0x77 12288 7712",
            "read -P 0x11 2M 1M",
            "read -P 0 3M 1M",
            "read -P 0x42 8M 4097",
        ],
    );
    assert_eq!(count_lines(&out, "read "), 5, "{out}");
    server.stop();
}

#[test]
fn qemu_io_vectored_and_async_requests() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let uri = server.tcp_uri();
    let out = qemu_io(
        &server,
        &uri,
        &[
            "writev -P 0x44 1M 4096 513 7",
            "readv -P 0x44 1M 4096 513 7",
            "aio_write -P 0x01 0 64k",
            "aio_write -P 0x02 64k 64k",
            "aio_write -P 0x03 128k 1000",
            "aio_write -P 0x04 132072 99999",
            "aio_write -P 0x05 4M 4M",
            "aio_flush",
            "aio_read -P 0x01 0 64k",
            "aio_read -P 0x02 64k 64k",
            "aio_read -P 0x03 128k 1000",
            "aio_read -P 0x04 132072 99999",
            "aio_read -P 0x05 4M 4M",
            "aio_read -P 0 232071 1000",
            "aio_flush",
        ],
    );
    expect_lines(
        &out,
        &[
            ("wrote", 1 << 20, 4616),
            ("read", 1 << 20, 4616),
            ("wrote", 0, 65536),
            ("wrote", 65536, 65536),
            ("wrote", 131072, 1000),
            ("wrote", 132072, 99999),
            ("wrote", 4 << 20, 4 << 20),
            ("read", 0, 65536),
            ("read", 65536, 65536),
            ("read", 131072, 1000),
            ("read", 132072, 99999),
            ("read", 4 << 20, 4 << 20),
            ("read", 232071, 1000),
        ],
    );
    server.stop();
}

#[test]
fn qemu_io_over_unix_socket_and_image_opts() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&[]);
    let out = qemu_io(&server, &server.unix_uri(), &["write -P 0xe1 12345 54321", "read -P 0xe1 12345 54321"]);
    expect_lines(&out, &[("wrote", 12345, 54321), ("read", 12345, 54321)]);

    // The same data through --image-opts over TCP.
    let opts = format!("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={}", server.port());
    let o = server.run_ok(Command::new("qemu-io").args([
        "--image-opts",
        &opts,
        "-c",
        "read -P 0xe1 12345 54321",
        "-c",
        "read -P 0 0 12345",
        "-c",
        "read -P 0 66666 1000",
    ]));
    let all = common::all_output(&o);
    assert!(!all.contains("Pattern verification failed"), "{all}");
    expect_lines(
        &String::from_utf8_lossy(&o.stdout),
        &[("read", 12345, 54321), ("read", 0, 12345), ("read", 66666, 1000)],
    );

    // --image-opts over the Unix socket.
    let opts = format!("driver=nbd,server.type=unix,server.path={}", server.unix_path().display());
    let o = server.run_ok(Command::new("qemu-io").args(["--image-opts", &opts, "-c", "read -P 0xe1 12345 54321"]));
    let all = common::all_output(&o);
    assert!(!all.contains("Pattern verification failed"), "{all}");
    expect_lines(&String::from_utf8_lossy(&o.stdout), &[("read", 12345, 54321)]);
    server.stop();
}

#[test]
fn qemu_io_read_only_export_refuses_writes() {
    if !require_tool("qemu-io") {
        return;
    }
    let server = Server::start(&["--read-only"]);
    // Opening read-write must fail or the write must fail; either way no
    // "wrote" line and a non-zero exit.
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", &server.tcp_uri(), "-c", "write -P 0x01 0 4096"]);
    let out = common::run_capture(&mut cmd);
    let all = common::all_output(&out);
    assert!(!out.status.success() && !all.contains("wrote 4096/4096"), "qemu-io wrote to a --read-only export:\n{all}");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-r", "-f", "raw", &server.tcp_uri(), "-c", "read -P 0 0 64k"]);
    let o = server.run_ok(&mut cmd);
    expect_lines(&String::from_utf8_lossy(&o.stdout), &[("read", 0, 65536)]);
    server.stop();
}
