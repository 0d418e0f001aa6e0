//! systemd integration, both halves optional and driven by the environment systemd sets:
//!
//! - the notify protocol (`Type=notify`): `READY=1` once every listener accepts, `STATUS=`
//!   lines, `STOPPING=1` at shutdown, and `WATCHDOG=1` every half `WatchdogSec`. Each is a
//!   datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! - socket activation: with `LISTEN_FDS` and `LISTEN_PID` naming this process, fd 3 is a
//!   listening TCP socket to serve on instead of binding `--listen`.
//!
//! Without those variables nothing here does anything.

use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use anyhow::{bail, Context};
use tracing::{debug, warn};

/// The first passed file descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sends notify messages, if systemd asked for them.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Self { target: None } };
        let path = path.to_string_lossy().into_owned();
        let addr = if let Some(name) = path.strip_prefix('@') {
            <SocketAddr as SocketAddrExt>::from_abstract_name(name.as_bytes())
        } else {
            SocketAddr::from_pathname(&path)
        };
        match (UnixDatagram::unbound(), addr) {
            (Ok(sock), Ok(addr)) => Self { target: Some((sock, addr)) },
            (Err(e), _) | (_, Err(e)) => {
                warn!(socket = %path, error = %e, "NOTIFY_SOCKET is unusable; no readiness notification");
                Self { target: None }
            }
        }
    }

    /// Send `msg` (newline-separated `KEY=VALUE` lines). Failures are logged, not fatal.
    pub fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            match sock.send_to_addr(msg.as_bytes(), addr) {
                Ok(_) => debug!(msg, "sd_notify"),
                Err(e) => warn!(error = %e, "sd_notify failed"),
            }
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is meant for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        if !meant_for_us("WATCHDOG_PID") {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// Whether `$VAR` (a pid) is absent or names this process.
fn meant_for_us(var: &str) -> bool {
    match std::env::var(var) {
        Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    }
}

/// The listening TCP socket systemd passed, if any (`LISTEN_FDS=1`, `LISTEN_PID` = us).
pub fn activated_tcp_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let Ok(n) = std::env::var("LISTEN_FDS") else { return Ok(None) };
    if std::env::var("LISTEN_PID").is_err() || !meant_for_us("LISTEN_PID") {
        return Ok(None);
    }
    let n: i32 = n.trim().parse().with_context(|| format!("LISTEN_FDS={n:?} is not a number"))?;
    if n != 1 {
        bail!("socket activation passed {n} sockets; spillway serves exactly one TCP socket");
    }
    // SAFETY: systemd's protocol hands this process fd 3, open, for it to own; nothing
    // else in the process uses it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FDS_START) };
    listener.local_addr().context("fd 3 from socket activation is not a TCP socket")?;
    listener.set_nonblocking(true).context("socket activation: making fd 3 non-blocking")?;
    Ok(Some(listener))
}
