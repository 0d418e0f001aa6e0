//! `--metrics-listen`: the Prometheus text format over HTTP, scraped before and after a
//! workload from real clients. The NBD request, byte and latency series move, and so do
//! the spill's counters once the WAL spills, the WAL's batch and sync histograms and the
//! connection series. The dirty-bytes gauge is driven up deterministically by a backend
//! that refuses chunks (the WAL fills, written data waits in memory) and back to zero once
//! the backend works again.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pseudo_random_bytes, require_tool, Server};

const MIB: usize = 1 << 20;

/// Poll the metrics until `ok(text)` holds, at most a minute; returns the last scrape.
fn scrape_until(addr: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = scrape(addr);
        if ok(&t) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_metrics_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    format!("127.0.0.1:{port}")
}

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
    let addr = free_metrics_addr();
    let server = Server::start(&["--metrics-listen", &addr, "--wal-segment-size", "1M", "--spill-age", "1s"]);
    let before = scrape(&addr);
    // Registered before any client: present at zero.
    for series in ["spillway_connections_open 0", "spillway_connections_accepted_total 0", "spillway_dirty_bytes 0"] {
        assert!(before.lines().any(|l| l == series), "no `{series}` before the workload\n{before}");
    }
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

    // The WAL writer's batches hold every written byte; nbdcopy --flush made a sync.
    assert!(value(&after, "spillway_wal_batch_bytes_count") >= 1.0, "no WAL batch recorded\n{after}");
    assert!(value(&after, "spillway_wal_batch_bytes_sum") >= (8 * MIB) as f64, "WAL batch bytes\n{after}");
    assert!(value(&after, "spillway_wal_batch_items_sum") >= value(&after, write), "WAL batch items\n{after}");
    assert!(value(&after, "spillway_wal_sync_seconds_count") >= 1.0, "no WAL sync timed\n{after}");
    assert!(value(&after, "spillway_wal_sync_seconds_sum") > 0.0, "WAL syncs took no time\n{after}");
    // Every batch's bytes went out in WAL writes; the counters agree with the histogram.
    assert!(value(&after, "spillway_wal_writes_total") >= 1.0, "no WAL write counted\n{after}");
    assert_eq!(
        value(&after, "spillway_wal_written_bytes_total"),
        value(&after, "spillway_wal_batch_bytes_sum"),
        "WAL written bytes\n{after}"
    );
    // Two client runs (nbdcopy in and out, each with one or more connections).
    assert!(value(&after, "spillway_connections_accepted_total") >= 2.0, "connections accepted\n{after}");

    // A connection is counted open from accept to close, handshake or not.
    let idle = scrape_until(&addr, |t| value(t, "spillway_connections_open") == 0.0);
    assert_eq!(value(&idle, "spillway_connections_open"), 0.0, "the clients' connections stay open\n{idle}");
    let accepted = value(&idle, "spillway_connections_accepted_total");
    let conn = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    let open = scrape_until(&addr, |t| value(t, "spillway_connections_open") >= 1.0);
    assert_eq!(value(&open, "spillway_connections_open"), 1.0, "one client connected\n{open}");
    assert_eq!(value(&open, "spillway_connections_accepted_total"), accepted + 1.0, "accepted\n{open}");
    drop(conn);
    let closed = scrape_until(&addr, |t| value(t, "spillway_connections_open") == 0.0);
    assert_eq!(value(&closed, "spillway_connections_open"), 0.0, "the closed connection still counts\n{closed}");
    server.stop();
}

#[test]
fn reads_of_blocks_in_the_wal_are_sent_from_its_mapping() {
    if !require_tool("nbdcopy") {
        return;
    }
    let addr = free_metrics_addr();
    // Batched mode, and the default spill age (30 s): after nbdcopy's FLUSH the blocks are
    // in the WAL, not in memory, and nothing spills them before they are read back.
    let server = Server::start(&["--metrics-listen", &addr, "--durability", "batched"]);
    let input = server.dir().join("in.img");
    let data = pseudo_random_bytes(9, 8 * MIB);
    std::fs::write(&input, &data).expect("write input");
    server.run_ok(Command::new("nbdcopy").arg("--flush").arg(&input).arg(server.tcp_uri()));
    let before = scrape(&addr);
    let wal = r#"spillway_read_lent_bytes_total{from="wal"}"#;
    let read = r#"spillway_nbd_bytes_total{op="read"}"#;
    assert!(server.copy_out(8 * MIB) == data, "the bytes read back differ");
    let after = scrape(&addr);
    // nbdcopy reads in whole-block requests of 256 KiB: just written, their pages are in
    // the page cache, so they go out from the segments' mapping.
    let lent = value(&after, wal) - value(&before, wal);
    assert!(lent > 0.0, "no read reply was sent from the WAL's mapping\n{after}");
    assert!(lent <= value(&after, read) - value(&before, read), "more lent than read\n{after}");
}

#[test]
fn dirty_bytes_rise_while_the_wal_is_full_and_drain_after() {
    if !require_tool("nbdcopy") {
        return;
    }
    let addr = free_metrics_addr();
    // Three 1 MiB WAL segments at most: a few MiB fill the WAL.
    let server =
        Server::start(&["--metrics-listen", &addr, "--wal-segment-size", "1M", "--max-wal", "3M", "--spill-age", "1s"]);
    // Chunk uploads go to objects/chunks/ in the local backend: a plain file in its place
    // makes every upload fail (root or not) until it is removed.
    let blocker = server.dir().join("data/volumes/default/objects/chunks");
    assert!(!blocker.exists(), "no chunk was uploaded yet");
    std::fs::write(&blocker, b"not a directory").expect("block the chunk uploads");

    let len = 16 * MIB;
    let data = pseudo_random_bytes(9, len);
    let input = server.dir().join("in.img");
    std::fs::write(&input, &data).expect("write input");
    // Batched mode replies to writes at once; without --flush nbdcopy does not wait for the WAL.
    server.run_ok(Command::new("nbdcopy").arg(&input).arg(server.tcp_uri()));

    // Once the WAL is full, what it cannot take stays in memory until the backend works.
    let full = scrape_until(&addr, |t| {
        value(t, "spillway_wal_full_waits_total") >= 1.0
            && value(t, "spillway_upload_failures_total") >= 1.0
            && value(t, "spillway_dirty_bytes") >= (8 * MIB) as f64
    });
    assert!(
        value(&full, "spillway_dirty_bytes") >= (8 * MIB) as f64,
        "16 MiB written, at most 3 MiB fit the WAL, yet little is dirty\n{full}"
    );
    assert!(value(&full, "spillway_dirty_bytes") <= len as f64, "more dirty than written\n{full}");
    assert!(value(&full, "spillway_wal_full_waits_total") >= 1.0, "the WAL never filled\n{full}");
    assert!(value(&full, "spillway_upload_failures_total") >= 1.0, "no upload failed\n{full}");

    std::fs::remove_file(&blocker).expect("unblock the uploads");
    let drained = scrape_until(&addr, |t| value(t, "spillway_dirty_bytes") == 0.0);
    assert_eq!(value(&drained, "spillway_dirty_bytes"), 0.0, "dirty data never reached the WAL\n{drained}");
    assert!(value(&drained, "spillway_upload_bytes_total") > 0.0, "nothing uploaded\n{drained}");
    common::assert_same_blocks("read back after the stall", &server.copy_out(len), &data);
    server.stop();
}
