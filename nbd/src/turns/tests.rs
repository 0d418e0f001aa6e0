//! The thread-served transmission loop against a blocking client of this file's own, over
//! real Unix sockets: pipelining, budget waits, requests that wait in the device, refused
//! requests, and the ways a connection ends.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crate::consts::*;
use crate::device::{BlockDevice, Extent, ZeroFlags};
use crate::export::Export;
use crate::socket::Socket;
use crate::testing::{Injected, MemDevice};
use crate::{Server, ServerConfig};

const SIZE: usize = 32 << 20;
/// A TRIM at this offset panics in the device, after a wait.
const PANIC_AT: u64 = 1 << 20;

/// [`MemDevice`], except that FLUSH and FUA writes wait a little first, as a sync would, so
/// their replies come from a task.
#[derive(Debug)]
struct Waiting(MemDevice);

impl BlockDevice for Waiting {
    type Error = Injected;

    fn size(&self) -> u64 {
        self.0.size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Injected> {
        self.0.read(offset, buf).await
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Injected> {
        self.0.write(offset, data, fua).await?;
        if fua {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), Injected> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), Injected> {
        if offset == PANIC_AT {
            tokio::time::sleep(Duration::from_millis(1)).await;
            panic!("injected: a request that panics after it waited");
        }
        self.0.trim(offset, len, fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), Injected> {
        self.0.write_zeroes(offset, len, flags).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Injected> {
        self.0.block_status(offset, len).await
    }
}

fn export(size: usize) -> Export<Waiting> {
    Export {
        name: "default".into(),
        description: String::new(),
        device: Arc::new(Waiting(MemDevice::new(size))),
        read_only: false,
    }
}

fn server(threads: usize, config: ServerConfig) -> Arc<Server<Waiting>> {
    Server::new(vec![export(SIZE)], ServerConfig { connection_threads: threads, ..config }).expect("config")
}

/// Serve one end of a socket pair on the runtime; the client gets the other, negotiated.
fn connect(
    rt: &tokio::runtime::Runtime,
    server: &Arc<Server<Waiting>>,
) -> (Client, tokio::task::JoinHandle<Result<(), crate::ConnError>>) {
    let (b, served) = serve_pair(rt, server);
    (Client::negotiate(b), served)
}

/// Serve one end of a socket pair on the runtime; the other end, not yet negotiated, is
/// the client's.
fn serve_pair(
    rt: &tokio::runtime::Runtime,
    server: &Arc<Server<Waiting>>,
) -> (UnixStream, tokio::task::JoinHandle<Result<(), crate::ConnError>>) {
    let (a, b) = UnixStream::pair().expect("socket pair");
    a.set_nonblocking(true).expect("nonblocking");
    let s = Arc::clone(server);
    let served = rt.spawn(async move {
        let a = tokio::net::UnixStream::from_std(a).expect("register");
        s.serve_socket(Socket::Unix(a)).await
    });
    (b, served)
}

/// A client that speaks just enough: NBD_OPT_EXPORT_NAME, simple replies.
struct Client {
    s: UnixStream,
}

impl Client {
    /// Two clients on one connection: one to send requests from another thread, one to
    /// read the replies.
    fn split(self) -> (Client, Client) {
        (Client { s: self.s.try_clone().expect("clone") }, self)
    }

    fn negotiate(s: UnixStream) -> Client {
        Self::negotiate_then(s, &[])
    }

    /// Negotiate, sending `first` (requests) in the same write as the last option, before
    /// the server has answered it.
    fn negotiate_then(mut s: UnixStream, first: &[u8]) -> Client {
        // A server that never answers fails the test rather than hanging it.
        s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).expect("flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes());
        opt.extend_from_slice(first);
        s.write_all(&opt).expect("export name");
        let mut export = [0u8; 10];
        s.read_exact(&mut export).expect("export size and flags");
        assert_eq!(u64::from_be_bytes(export[..8].try_into().expect("8")), SIZE as u64);
        Client { s }
    }

    fn request(&mut self, cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        self.s.write_all(&encode(cmd, flags, cookie, offset, len, payload)).expect("request");
    }

    /// The next simple reply: (error, cookie).
    fn reply(&mut self) -> (u32, u64) {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r).expect("reply");
        assert_eq!(u32::from_be_bytes(r[..4].try_into().expect("4")), SIMPLE_REPLY_MAGIC);
        (u32::from_be_bytes(r[4..8].try_into().expect("4")), u64::from_be_bytes(r[8..].try_into().expect("8")))
    }

    fn read(&mut self, cookie: u64, offset: u64, len: usize) -> Vec<u8> {
        self.request(CMD_READ, 0, cookie, offset, len as u32, &[]);
        assert_eq!(self.reply(), (0, cookie), "read at {offset}");
        let mut data = vec![0u8; len];
        self.s.read_exact(&mut data).expect("read data");
        data
    }

    fn at_end(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0))
    }
}

fn encode(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(28 + payload.len());
    h.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&cmd.to_be_bytes());
    h.extend_from_slice(&cookie.to_be_bytes());
    h.extend_from_slice(&offset.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// The connection's end, bounded so that a server that never closes fails the test.
fn ended(
    rt: &tokio::runtime::Runtime,
    served: tokio::task::JoinHandle<Result<(), crate::ConnError>>,
) -> Result<(), crate::ConnError> {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), served).await })
        .expect("the connection ended within 60 s")
        .expect("join")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn block(i: u64) -> Vec<u8> {
    (0..4096u64).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect()
}

/// Runs the client side on a thread with a bound, so a hang fails the test instead.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("the client finished within 120 s")
}

#[test]
fn pipelined_requests_on_several_threads_are_each_answered_once_and_store_their_data() {
    let rt = runtime();
    // 0: the task-based loop, for comparison; the same client must see the same server.
    for threads in [0, 2, 5] {
        let server = server(threads, ServerConfig::default());
        let (client, served) = connect(&rt, &server);
        let mut client = bounded(move || {
            let (mut sender, mut receiver) = client.split();
            // 1000 writes of distinct blocks, FUA on every seventh (answered from a task),
            // and FLUSHes among them, all sent before any reply is read.
            let n = 1000u64;
            let send = std::thread::spawn(move || {
                for i in 0..n {
                    let flags = if i % 7 == 0 { CMD_FLAG_FUA } else { 0 };
                    sender.request(CMD_WRITE, flags, i, i * 4096, 4096, &block(i));
                    if i % 100 == 99 {
                        sender.request(CMD_FLUSH, 0, 1_000_000 + i, 0, 0, &[]);
                    }
                }
            });
            let mut seen = vec![0u32; n as usize];
            let mut flushes = 0;
            for _ in 0..n + n / 100 {
                let (err, cookie) = receiver.reply();
                assert_eq!(err, 0, "request {cookie}");
                if cookie >= 1_000_000 {
                    flushes += 1;
                } else {
                    seen[cookie as usize] += 1;
                }
            }
            send.join().expect("sender");
            assert!(seen.iter().all(|&c| c == 1), "every write answered exactly once");
            assert_eq!(flushes, n / 100);
            for i in (0..n).step_by(37) {
                assert_eq!(receiver.read(5_000_000 + i, i * 4096, 4096), block(i), "block {i}");
            }
            receiver.request(CMD_DISC, 0, 9, 0, 0, &[]);
            receiver
        });
        assert!(client.at_end(), "the server closes after DISC");
        ended(&rt, served).expect("connection ends cleanly");
    }
}

#[test]
fn a_client_past_its_budget_waits_and_loses_nothing() {
    let rt = runtime();
    let config = ServerConfig { max_block: 1 << 20, inflight_bytes: (1 << 20) + 8192, ..ServerConfig::default() };
    let server = server(2, config);
    let (client, served) = connect(&rt, &server);
    bounded(move || {
        // Sixteen 1 MiB FUA writes (each takes 2 ms in the device) sent back to back: the
        // budget holds one at a time, so the server must wait for replies to go out before
        // it reads on.
        let (mut sender, mut client) = client.split();
        let send = std::thread::spawn(move || {
            for i in 0..16u64 {
                let data: Vec<u8> = (0..1 << 20).map(|j: u64| (i * 3 + j / 4096) as u8).collect();
                sender.request(CMD_WRITE, CMD_FLAG_FUA, i, i << 20, 1 << 20, &data);
            }
        });
        for _ in 0..16 {
            assert_eq!(client.reply().0, 0);
        }
        send.join().expect("sender");
        for i in 0..16u64 {
            let data = client.read(100 + i, i << 20, 1 << 20);
            assert!(data.chunks(4096).enumerate().all(|(b, c)| c.iter().all(|&x| x == (i * 3 + b as u64) as u8)));
        }
    });
    server.shutdown();
    ended(&rt, served).expect("connection ends cleanly");
}

#[test]
fn a_refused_write_has_its_payload_skipped_and_the_connection_goes_on() {
    let rt = runtime();
    let server = server(2, ServerConfig::default());
    let (mut client, served) = connect(&rt, &server);
    let client = bounded(move || {
        // Past the end: EINVAL (or ENOSPC), and the payload must not be taken for a header.
        client.request(CMD_WRITE, 0, 1, SIZE as u64, 4096, &block(1));
        client.request(CMD_WRITE, 0, 2, 0, 4096, &block(2));
        let (err, cookie) = client.reply();
        let (ok, cookie2) = client.reply();
        let mut got = [(err, cookie), (ok, cookie2)];
        got.sort_by_key(|&(_, c)| c);
        assert_ne!(got[0].0, 0, "the write past the end is refused");
        assert_eq!(got[1], (0, 2));
        assert_eq!(client.read(3, 0, 4096), block(2));
        client
    });
    drop(client);
    let r = ended(&rt, served);
    assert!(r.is_ok(), "a client that hangs up ends the connection cleanly: {r:?}");
}

#[test]
fn shutdown_ends_an_idle_connection_at_once() {
    let rt = runtime();
    let server = server(3, ServerConfig::default());
    let (mut client, served) = connect(&rt, &server);
    let mut client = bounded(move || {
        assert_eq!(client.read(1, 0, 4096), vec![0u8; 4096]);
        client
    });
    server.shutdown();
    ended(&rt, served).expect("threads blocked in recv were woken, and the close is clean");
    assert!(client.at_end(), "the client sees the close");
}

#[test]
fn garbage_instead_of_a_request_ends_the_connection_with_an_error() {
    let rt = runtime();
    let server = server(2, ServerConfig::default());
    let (mut client, served) = connect(&rt, &server);
    let mut client = bounded(move || {
        client.s.write_all(&[0x55u8; 28]).expect("garbage");
        client
    });
    let r = ended(&rt, served);
    assert!(matches!(r, Err(crate::ConnError::BadRequestMagic(_))), "{r:?}");
    assert!(client.at_end());
}

#[test]
fn a_request_that_panics_after_waiting_ends_the_connection() {
    let rt = runtime();
    let server = server(2, ServerConfig::default());
    let (mut client, served) = connect(&rt, &server);
    let mut client = bounded(move || {
        // FUA writes wait too: they are on the reply thread beside the panicking TRIM.
        for i in 0..8u64 {
            client.request(CMD_WRITE, CMD_FLAG_FUA, 10 + i, i * 4096, 4096, &block(i));
        }
        client.request(CMD_TRIM, 0, 1, PANIC_AT, 4096, &[]);
        for i in 0..8u64 {
            client.request(CMD_WRITE, CMD_FLAG_FUA, 20 + i, i * 4096, 4096, &block(i));
        }
        client
    });
    // The reply thread catches the panic: the connection ends with that error, not with
    // a dead reply thread's, and it does end.
    let r = ended(&rt, served);
    assert!(matches!(r, Err(crate::ConnError::Protocol("a request panicked"))), "{r:?}");
    let replies = std::iter::from_fn(|| {
        let mut h = [0u8; 16];
        client.s.read_exact(&mut h).ok().map(|()| u64::from_be_bytes(h[8..].try_into().expect("8")))
    });
    assert!(replies.take(17).all(|cookie| cookie != 1), "no reply for the request that panicked");
}

#[test]
fn a_request_sent_with_the_last_option_is_served() {
    let rt = runtime();
    for threads in [0, 2] {
        let server = server(threads, ServerConfig::default());
        let (b, served) = serve_pair(&rt, &server);
        // The requests are in negotiation's receive buffer when transmission starts.
        let first = [encode(CMD_WRITE, 0, 1, 8192, 4096, &block(7)), encode(CMD_FLUSH, 0, 2, 0, 0, &[])].concat();
        let mut client = bounded(move || {
            let mut c = Client::negotiate_then(b, &first);
            let mut got = [c.reply(), c.reply()];
            got.sort_by_key(|&(_, cookie)| cookie);
            assert_eq!(got, [(0, 1), (0, 2)], "both requests answered");
            assert_eq!(c.read(3, 8192, 4096), block(7));
            c.request(CMD_DISC, 0, 9, 0, 0, &[]);
            c
        });
        assert!(client.at_end());
        ended(&rt, served).expect("clean");
    }
}

#[test]
fn a_client_that_sends_everything_before_reading_a_reply_is_served() {
    // 64 KiB reads and writes in turn, all sent before any reply is read: the read
    // replies (12 MiB) fill the socket long before the requests are all sent, so a server
    // that stopped reading requests while a reply waits for room would never finish.
    let rt = runtime();
    for threads in [0, 2, 4] {
        let server = server(threads, ServerConfig::default());
        let (client, served) = connect(&rt, &server);
        let client = bounded(move || {
            let (mut sender, mut receiver) = client.split();
            let n = 200u64;
            let send = std::thread::spawn(move || {
                for i in 0..n {
                    sender.request(CMD_READ, 0, 2 * i, i << 16, 1 << 16, &[]);
                    let data: Vec<u8> = (0..1u64 << 16).map(|j| (i ^ (j >> 12)) as u8).collect();
                    sender.request(CMD_WRITE, 0, 2 * i + 1, (16 << 20) + (i << 16), 1 << 16, &data);
                }
            });
            send.join().expect("every request sent before any reply is read");
            for _ in 0..2 * n {
                let (err, cookie) = receiver.reply();
                assert_eq!(err, 0, "request {cookie}");
                if cookie % 2 == 0 {
                    let mut data = vec![0u8; 1 << 16];
                    receiver.s.read_exact(&mut data).expect("read data");
                }
            }
            let i = 123u64;
            let back = receiver.read(9_999, (16 << 20) + (i << 16), 1 << 16);
            assert!(back.iter().enumerate().all(|(j, &x)| x == (i ^ (j as u64 >> 12)) as u8));
            receiver
        });
        drop(client);
        ended(&rt, served).expect("clean");
    }
}

#[test]
fn one_connection_thread_alone_is_refused() {
    for bad in [1, 65] {
        let e = Server::new(vec![export(4096)], ServerConfig { connection_threads: bad, ..ServerConfig::default() })
            .expect_err("refused");
        assert!(e.to_string().contains(&format!("connection_threads ({bad})")), "{e}");
    }
    for good in [0, 2, 64] {
        assert!(Server::new(vec![export(4096)], ServerConfig { connection_threads: good, ..ServerConfig::default() })
            .is_ok());
    }
}

#[test]
fn large_and_small_requests_mixed_in_one_stream_each_land_where_they_were_sent() {
    // After a request with a large payload the next header is read on its own, straight
    // from the socket; after small ones the buffer is filled. Alternate the two, all sent
    // before any reply is read, so each switch happens with bytes of the next requests
    // already waiting: a header read the wrong way would take payload bytes for a header.
    let rt = runtime();
    for threads in [2, 3] {
        let server = server(threads, ServerConfig::default());
        let (client, served) = connect(&rt, &server);
        let mut client = bounded(move || {
            let (mut sender, mut receiver) = client.split();
            let big = |i: u64| -> Vec<u8> { (0..256u64 << 10).map(|j| (i * 5 + j / 4096 + j % 251) as u8).collect() };
            // Large writes (256 KiB, the least that counts as large) at 256 KiB steps from 0;
            // small ones from 16 MiB.
            let plan: Vec<(u64, bool)> = (0..48u64).map(|i| (i, i % 3 != 1 && i % 5 != 2)).collect();
            let sent = plan.clone();
            let send = std::thread::spawn(move || {
                for &(i, large) in &sent {
                    if large {
                        sender.request(CMD_WRITE, 0, i, i << 18, 256 << 10, &big(i));
                    } else {
                        sender.request(CMD_WRITE, 0, i, (16 << 20) + i * 4096, 4096, &block(i));
                        sender.request(CMD_FLUSH, 0, 1000 + i, 0, 0, &[]);
                    }
                }
            });
            let replies = plan.iter().map(|&(_, large)| if large { 1 } else { 2 }).sum::<usize>();
            let mut seen = std::collections::HashSet::new();
            for _ in 0..replies {
                let (err, cookie) = receiver.reply();
                assert_eq!(err, 0, "request {cookie}");
                assert!(seen.insert(cookie), "request {cookie} answered twice");
            }
            send.join().expect("sender");
            for &(i, large) in &plan {
                if large {
                    assert!(receiver.read(2000 + i, i << 18, 256 << 10) == big(i), "large write {i}");
                } else {
                    assert_eq!(receiver.read(2000 + i, (16 << 20) + i * 4096, 4096), block(i), "small write {i}");
                }
            }
            // A DISC right behind a large write is read on its own too, and ends the
            // connection cleanly.
            receiver.request(CMD_WRITE, 0, 3000, 0, 256 << 10, &big(99));
            receiver.request(CMD_DISC, 0, 3001, 0, 0, &[]);
            assert_eq!(receiver.reply(), (0, 3000));
            receiver
        });
        assert!(client.at_end(), "the server closes after DISC");
        ended(&rt, served).expect("connection ends cleanly");
    }
}
