//! Busy-polling the socket: a connection thread that finds nothing to read tries again for
//! a short while before it sleeps in `recv`.
//!
//! Why: on a virtual machine, waking a thread that sleeps on an idle vCPU costs tens of
//! microseconds (the vCPU halted, and the host must run it again), and the client that
//! wakes it pays for the wake-up inside its own `send`. A client at a steady pace sends
//! its next request within microseconds of reading a reply, so a thread that keeps trying
//! for that long takes it without anyone sleeping or waking.
//!
//! Adaptive: a poll that finds nothing within the window turns polling off for the
//! connection. It comes back on once a sleeping read returns within the window, that is,
//! once requests come back to back again. So a client that paces itself slower than the
//! window (a strict-mode write waits for the disk before its reply; an idle mount) costs
//! one window, not one per request.
//!
//! Not for bulk: after a request with a large payload the connection does not poll (see
//! [`PolledStream::set_bulk`]).
//!
//! Bounded: at most one thread fewer than the CPUs this process may run on polls at a
//! time, process wide, so polling never takes the last CPU from the client and the rest
//! of the server. On one CPU nothing polls.

use std::io::{self, IoSliceMut, Read};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, recvmsg, MsgFlags};

use crate::receive::MAX_IOV;
use crate::socket::Stream;

/// The places to poll from, process wide.
static PLACES: Places = Places::new(None);

/// Threads that may poll at once, and how many do.
#[derive(Debug)]
pub(crate) struct Places {
    polling: AtomicUsize,
    /// `None`: one fewer than the CPUs this process may run on.
    max: Option<usize>,
}

impl Places {
    const fn new(max: Option<usize>) -> Self {
        Self { polling: AtomicUsize::new(0), max }
    }

    fn max(&self) -> usize {
        static CPUS_LESS_ONE: OnceLock<usize> = OnceLock::new();
        self.max.unwrap_or_else(|| {
            *CPUS_LESS_ONE.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1))
        })
    }

    fn take(&'static self) -> Option<Place> {
        let max = self.max();
        let taken = self.polling.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| Place(self))
    }
}

/// A polling place, given back on drop.
struct Place(&'static Places);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's read side, polled before it sleeps.
#[derive(Debug)]
pub(crate) struct PolledStream {
    stream: Stream,
    /// Zero: never poll.
    window: Duration,
    /// Polling is on for this connection (see the module's "Adaptive").
    on: bool,
    /// The last requests read carried large payloads: see [`PolledStream::set_bulk`].
    bulk: bool,
    places: &'static Places,
    /// Reads that a poll answered (for the tests).
    polled: u64,
}

impl PolledStream {
    pub(crate) fn new(stream: Stream, window: Duration) -> Self {
        Self { stream, window, on: !window.is_zero(), bulk: false, places: &PLACES, polled: 0 }
    }

    /// The requests just read carried large payloads (or not). After those the client
    /// streams bulk data, the CPUs are busy copying it (this connection's other threads,
    /// the client), and a request comes when a copy ends: a poll would only take a CPU from
    /// them. 1 MiB reads at queue depth 8 ran 11 % slower with polling (`bench/README.md`).
    pub(crate) fn set_bulk(&mut self, bulk: bool) {
        self.bulk = bulk;
    }

    /// What [`PolledStream::set_bulk`] last said.
    pub(crate) fn bulk(&self) -> bool {
        self.bulk
    }

    /// Try `attempt` (a non-blocking read) until it takes something or the window passes.
    /// `None`: nothing came, or this connection or the machine does not poll now.
    fn poll<T>(&mut self, mut attempt: impl FnMut(RawFd) -> nix::Result<T>) -> Option<io::Result<T>> {
        if !self.on || self.bulk {
            return None;
        }
        let _place = self.places.take()?;
        let fd = self.stream.raw_fd();
        let until = Instant::now() + self.window;
        loop {
            match attempt(fd) {
                Ok(n) => {
                    self.polled += 1;
                    return Some(Ok(n));
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Some(Err(e.into())),
            }
            if Instant::now() >= until {
                self.on = false;
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// A read that may sleep; one that comes back within the window turns polling on.
    fn sleep<T>(&mut self, read: impl FnOnce(&mut Stream) -> io::Result<T>) -> io::Result<T> {
        let start = Instant::now();
        let r = read(&mut self.stream);
        if !self.window.is_zero() && start.elapsed() < self.window {
            self.on = true;
        }
        r
    }
}

impl Read for PolledStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(r) = self.poll(|fd| recv(fd, buf, MsgFlags::MSG_DONTWAIT)) {
            return r;
        }
        self.sleep(|s| s.read(buf))
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let n = bufs.len().min(MAX_IOV);
        let polled = self.poll(|fd| recvmsg::<()>(fd, &mut bufs[..n], None, MsgFlags::MSG_DONTWAIT).map(|m| m.bytes));
        if let Some(r) = polled {
            return r;
        }
        self.sleep(|s| s.read_vectored(bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A polled stream with a polling place of its own (the process-wide ones may be taken
    /// by other tests' servers), and its peer.
    fn pair(window: Duration) -> (PolledStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let places = Box::leak(Box::new(Places::new(Some(1))));
        (PolledStream { places, ..PolledStream::new(Stream::Unix(ours), window) }, theirs)
    }

    #[test]
    fn bytes_waiting_are_read_by_the_poll_and_polling_stays_on() {
        let (mut s, mut peer) = pair(Duration::from_secs(5));
        peer.write_all(b"request").unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"request");
        assert_eq!(s.polled, 1, "answered by the poll");
        assert!(s.on);
    }

    #[test]
    fn a_poll_that_finds_nothing_turns_polling_off_until_a_read_comes_back_within_the_window() {
        // A 1 ms window, and a client that sends 200 ms later: the poll gives up, the
        // thread sleeps, and a sleep that long leaves polling off.
        let (mut s, peer) = pair(Duration::from_millis(1));
        let late = std::thread::spawn(move || {
            let mut peer = peer;
            std::thread::sleep(Duration::from_millis(200));
            peer.write_all(b"late").unwrap();
            peer
        });
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"late");
        assert_eq!(s.polled, 0);
        assert!(!s.on, "a client slower than the window is not polled for");
        let mut peer = late.join().unwrap();

        // Bytes already there: the sleeping read returns at once, well within a window of
        // 5 s, and polling comes back on.
        s.window = Duration::from_secs(5);
        peer.write_all(b"soon").unwrap();
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"soon");
        assert_eq!(s.polled, 0, "off: that read slept");
        assert!(s.on, "requests back to back again: polling is on");
        peer.write_all(b"next").unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 4);
        assert_eq!(s.polled, 1, "and the next read is polled");
    }

    #[test]
    fn vectored_reads_and_the_end_of_the_stream_come_through_the_poll() {
        let (mut s, mut peer) = pair(Duration::from_secs(5));
        peer.write_all(b"abcdefgh").unwrap();
        let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
        let n = s.read_vectored(&mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)]).unwrap();
        assert_eq!((n, &a, &b), (8, b"abc", b"defgh"));
        drop(peer);
        assert_eq!(s.read(&mut a).unwrap(), 0, "the peer closed: end of stream");
        assert_eq!(s.polled, 2);
        assert!(s.on);
    }

    #[test]
    fn no_poll_after_bulk_requests() {
        let (mut s, mut peer) = pair(Duration::from_secs(5));
        s.set_bulk(true);
        peer.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(s.polled, 0, "bulk: the read sleeps");
        s.set_bulk(false);
        peer.write_all(b"y").unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(s.polled, 1, "small requests again: polled");
    }

    #[test]
    fn a_zero_window_never_polls() {
        let (mut s, mut peer) = pair(Duration::ZERO);
        assert!(!s.on);
        peer.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(s.polled, 0);
        assert!(!s.on, "a quick read does not turn on a poll that is off by configuration");
    }

    #[test]
    fn places_are_bounded_and_given_back() {
        let places: &'static Places = Box::leak(Box::new(Places::new(Some(2))));
        let (a, b) = (places.take(), places.take());
        assert!(a.is_some() && b.is_some());
        assert!(places.take().is_none(), "a third poller with a bound of 2");
        drop(a);
        assert!(places.take().is_some(), "a place given back is taken again");
        // The process-wide bound: one fewer than the CPUs.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(PLACES.max(), cpus - 1);
    }

    #[test]
    fn no_place_no_poll() {
        // Every place taken: the read sleeps instead, and polling stays on for later.
        let (mut s, mut peer) = pair(Duration::from_millis(1));
        let _taken = s.places.take().unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            peer.write_all(b"x").unwrap();
            peer
        });
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 1);
        assert_eq!(s.polled, 0);
        assert!(s.on, "not polled, so not turned off");
        drop(late.join().unwrap());
    }
}
