//! `nbdcopy` (libnbd) round trips through `spillway serve`: 64 MiB of
//! pseudo-random data in and back out, over TCP and the Unix socket, with
//! one and several connections.

mod common;

use common::{first_difference, pseudo_random_bytes, require_tool, Server};
use std::path::Path;
use std::process::Command;

const MIB: usize = 1024 * 1024;
const SIZE: usize = 64 * MIB;

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: data differs at byte {i} (got len {}, want len {}; got {:02x?}, want {:02x?})",
            got.len(),
            want.len(),
            got.get(i..(i + 16).min(got.len())),
            want.get(i..(i + 16).min(want.len())),
        );
    }
}

/// Copies `data` to `uri` and back with `extra` nbdcopy options in both
/// directions; checks the bytes read back are the ones written.
fn round_trip(server: &Server, uri: &str, extra: &[&str], data: &[u8], tag: &str) {
    let input = server.dir().join(format!("in-{tag}.img"));
    let output = server.dir().join(format!("out-{tag}.img"));
    write_file(&input, data);
    server.run_ok(Command::new("nbdcopy").args(extra).arg("--flush").arg(&input).arg(uri));
    server.run_ok(Command::new("nbdcopy").args(extra).arg(uri).arg(&output));
    let got = std::fs::read(&output).expect("read nbdcopy output");
    assert_same(&format!("nbdcopy {extra:?} via {uri}"), &got, data);
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
}

#[test]
fn nbdcopy_round_trip_tcp_default_connections() {
    if !require_tool("nbdcopy") {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    let data = pseudo_random_bytes(0x5eed_0001, SIZE);
    round_trip(&server, &server.tcp_uri(), &[], &data, "default");
    server.stop();
}

#[test]
fn nbdcopy_round_trip_tcp_single_connection() {
    if !require_tool("nbdcopy") {
        return;
    }
    // Busy polling off (`--busy-poll 0`): every other test here serves with it on.
    let server = Server::start(&["--size", "64M", "--busy-poll", "0"]);
    let data = pseudo_random_bytes(0x5eed_0002, SIZE);
    round_trip(&server, &server.tcp_uri(), &["-C", "1"], &data, "c1");
    server.stop();
}

#[test]
fn nbdcopy_round_trip_tcp_four_connections_then_sparse_overwrite() {
    if !require_tool("nbdcopy") {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    let data = pseudo_random_bytes(0x5eed_0004, SIZE);
    round_trip(&server, &server.tcp_uri(), &["-C", "4"], &data, "c4");

    // Overwrite with an image that has zero runs: nbdcopy sends those as
    // WRITE_ZEROES/TRIM instead of data, over already-written ranges.
    let mut sparse = pseudo_random_bytes(0x5eed_0005, SIZE);
    for (start, len) in [(0, MIB), (3 * MIB, 5 * MIB), (20 * MIB + 4096, MIB), (SIZE - 2 * MIB, 2 * MIB)] {
        sparse[start..start + len].fill(0);
    }
    round_trip(&server, &server.tcp_uri(), &["-C", "4"], &sparse, "c4-sparse");
    server.stop();
}

#[test]
fn nbdcopy_round_trip_unix_socket() {
    if !require_tool("nbdcopy") {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    let data = pseudo_random_bytes(0x5eed_0003, SIZE);
    round_trip(&server, &server.unix_uri(), &[], &data, "unix");
    // Written over the socket, read over TCP: same volume.
    let output = server.dir().join("out-cross.img");
    server.run_ok(Command::new("nbdcopy").arg(server.tcp_uri()).arg(&output));
    let got = std::fs::read(&output).expect("read nbdcopy output");
    assert_same("unix write, tcp read", &got, &data);
    server.stop();
}

#[test]
fn nbdcopy_between_two_exports() {
    if !require_tool("nbdcopy") {
        return;
    }
    let server = Server::start(&["--size", "64M", "--export", "a", "--export", "b"]);
    let data = pseudo_random_bytes(0x5eed_0006, SIZE);
    let input = server.dir().join("in.img");
    let output = server.dir().join("out.img");
    write_file(&input, &data);
    server.run_ok(Command::new("nbdcopy").arg(&input).arg(server.tcp_uri_export("a")));
    server.run_ok(
        Command::new("nbdcopy")
            .arg(server.tcp_uri_export("a"))
            .arg(server.unix_uri().replace("nbd+unix:///", "nbd+unix:///b")),
    );
    server.run_ok(Command::new("nbdcopy").arg(server.tcp_uri_export("b")).arg(&output));
    let got = std::fs::read(&output).expect("read nbdcopy output");
    assert_same("file -> a -> b -> file", &got, &data);
    server.stop();
}
