//! systemd integration against the real binary: the notify protocol (`READY=1` only once a
//! client can connect, `STOPPING=1` on SIGTERM) through a datagram socket the test owns,
//! and socket activation through systemd's own `systemd-socket-activate`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{all_output, require_tool, run_capture_timeout, Server};

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notify message within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notify_ready_only_once_clients_can_connect_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut server = Server::start_with_env(&[], &[("NOTIFY_SOCKET", &path.to_string_lossy())]);
    let ready = recv(&sock);
    // Checked at the moment READY=1 is in hand: the listener already accepts.
    TcpStream::connect(("127.0.0.1", server.port())).expect("connect right after READY=1");
    assert!(ready.lines().any(|l| l == "READY=1"), "first message: {ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=serving 1 export")), "no status: {ready:?}");
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let stopping = recv(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "after SIGTERM: {stopping:?}");
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    if !require_tool("systemd-socket-activate") || !require_tool("nbdinfo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let data = tmp.path().join("data");
    // systemd-socket-activate listens, and on the first connection starts spillway with
    // the listening socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = spillway's pid).
    let mut act = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), env!("CARGO_BIN_EXE_spillway"), "serve", "--size", "64M"])
        .args(["--data-dir", &data.to_string_lossy(), "--listen", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "systemd-socket-activate never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run_capture_timeout(
        Command::new("nbdinfo").arg("--size").arg(format!("nbd://127.0.0.1:{port}/")),
        Duration::from_secs(60),
    );
    let _ = Command::new("kill").arg("-TERM").arg(act.id().to_string()).status();
    let _ = Command::new("pkill").args(["-TERM", "-f", &data.to_string_lossy()]).status();
    let _ = act.wait();
    let mut log = String::new();
    if let Some(e) = act.stderr.take() {
        for line in BufReader::new(e).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    assert!(out.status.success(), "nbdinfo through the activated socket\n{}\n--- log ---\n{log}", all_output(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "67108864", "{}", all_output(&out));
    assert!(log.contains("socket activation"), "spillway did not say it used the passed socket\n{log}");
}
