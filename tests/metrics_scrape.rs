//! `--metrics-listen`: the Prometheus text format over HTTP, scraped before and after a
//! workload from real clients. The NBD request, byte and latency series move, and so do
//! the spill's counters once the WAL spills.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pseudo_random_bytes, require_tool, Server};

const MIB: usize = 1 << 20;

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to metrics at {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    assert!(text.starts_with("HTTP/1.1 200"), "metrics answer:\n{text}");
    text
}

/// The value of the series `name{labels}` (exactly as printed), or 0 when it is absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("bad value in {series} {v}")))
        .unwrap_or(0.0)
}

#[test]
fn metrics_move_with_a_workload() {
    if !require_tool("nbdcopy") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--metrics-listen", &addr, "--wal-segment-size", "1M", "--spill-age", "1s"]);
    let before = scrape(&addr);
    let write = r#"spillway_nbd_requests_total{op="write"}"#;
    let wbytes = r#"spillway_nbd_bytes_total{op="write"}"#;
    let read = r#"spillway_nbd_requests_total{op="read"}"#;
    let flush = r#"spillway_nbd_requests_total{op="flush"}"#;

    let input = server.dir().join("in.img");
    std::fs::write(&input, pseudo_random_bytes(5, 8 * MIB)).expect("write input");
    server.run_ok(Command::new("nbdcopy").arg("--flush").arg(&input).arg(server.tcp_uri()));
    let _ = server.copy_out(8 * MIB);

    // The spill runs in the background: wait (bounded) for its first upload.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let t = scrape(&addr);
        if value(&t, "spillway_upload_bytes_total") > 0.0 || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(value(&after, write) > value(&before, write), "write requests did not move\n{after}");
    assert!(value(&after, wbytes) - value(&before, wbytes) >= (8 * MIB) as f64, "write bytes\n{after}");
    assert!(value(&after, read) > value(&before, read), "read requests did not move\n{after}");
    assert!(value(&after, flush) >= 1.0, "no flush counted\n{after}");
    assert!(
        value(&after, r#"spillway_nbd_request_seconds_count{op="write"}"#) >= value(&after, write),
        "the latency histogram misses requests\n{after}"
    );
    assert!(value(&after, "spillway_upload_bytes_total") > 0.0, "nothing spilled within a minute\n{after}");
    assert!(value(&after, "spillway_spill_chunks_total") > 0.0, "no spill chunks counted\n{after}");
    server.stop();
}
