//! Raw-socket protocol tests for `spillway serve`.
//!
//! A small hand-written NBD client codec (plain blocking std I/O, 5 s
//! timeouts everywhere so nothing can hang) drives the fixed newstyle
//! handshake and the transmission phase byte by byte: malformed, truncated,
//! oversized, pipelined and flooding input, thousands of garbage connections,
//! and structured replies. Every test ends by checking that the same server
//! still serves a fresh well-behaved client (GO, write, read back, over TCP
//! and the Unix socket), that its log shows no panic, and that SIGTERM makes
//! it exit 0. The `sigterm_*` tests check that last step with clients still
//! connected (idle, stalled mid-payload, not reading their replies).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{first_difference, pseudo_random_bytes, Server};

// ---------------------------------------------------------------------------
// Wire constants (NetworkBlockDevice/nbd doc/proto.md), written out here on
// purpose rather than imported from the server's crate.
// ---------------------------------------------------------------------------

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// The 18-byte greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES.
const GREETING: [u8; 18] =
    [0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0x00, 0x03];

const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;
const CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_PEEK_EXPORT: u32 = 4;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;
const OPT_EXTENDED_HEADERS: u32 = 11;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_ERR + 1;
const REP_ERR_INVALID: u32 = REP_ERR + 3;
const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR + 8;
const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const INFO_BLOCK_SIZE: u16 = 3;

const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_SEND_FLUSH: u16 = 1 << 2;
const FLAG_SEND_FUA: u16 = 1 << 3;
const FLAG_SEND_TRIM: u16 = 1 << 5;
const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const FLAG_SEND_DF: u16 = 1 << 7;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const FLAG_SEND_CACHE: u16 = 1 << 10;
const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// What a writable export must advertise (DF comes on top with structured replies).
const REQUIRED_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_CAN_MULTI_CONN
    | FLAG_SEND_CACHE
    | FLAG_SEND_FAST_ZERO;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_DF: u16 = 1 << 2;
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

const REPLY_FLAG_DONE: u16 = 1 << 0;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

const STATE_HOLE: u32 = 1 << 0;
const STATE_ZERO: u32 = 1 << 1;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// The harness's default `--size 256M`.
const EXPORT_SIZE: u64 = 256 * MIB;
/// The server's advertised maximum block size (ServerConfig::default().max_block).
const MAX_BLOCK: u32 = 32 << 20;
/// Every socket read and write in these tests times out after this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Human-readable name of an option reply type, for failure messages.
fn rep_name(t: u32) -> String {
    let name = match t {
        REP_ACK => "ACK",
        REP_SERVER => "SERVER",
        REP_INFO => "INFO",
        REP_META_CONTEXT => "META_CONTEXT",
        REP_ERR_UNSUP => "ERR_UNSUP",
        x if x == REP_ERR + 2 => "ERR_POLICY",
        REP_ERR_INVALID => "ERR_INVALID",
        x if x == REP_ERR + 4 => "ERR_PLATFORM",
        x if x == REP_ERR + 5 => "ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "ERR_UNKNOWN",
        x if x == REP_ERR + 7 => "ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "ERR_TOO_BIG",
        _ => "?",
    };
    format!("{t:#x} ({name})")
}

/// Deterministic splitmix64, so the garbage tests reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        pseudo_random_bytes(self.next(), n)
    }
    /// Between 0 and `max - 1` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let num = rest.trim().trim_end_matches("kB").trim();
            return num.parse().unwrap_or_else(|_| panic!("cannot parse {key} line {line:?}"));
        }
    }
    panic!("no {key} in /proc/{pid}/status:\n{text}");
}

/// Number of open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Option data of INFO / GO: name, then the information requests.
fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Option data of LIST_META_CONTEXT / SET_META_CONTEXT.
fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// One option request on the wire.
fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The exact bytes of one option reply.
fn option_reply_bytes(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// One request header (28 bytes) followed by `payload`.
fn request_bytes(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + payload.len());
    b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// The exact bytes of a simple reply header.
fn simple_reply_bytes(error: u32, cookie: u64) -> Vec<u8> {
    let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: {} bytes received, {} expected; first difference at byte {i}\n got: {:02x?}\nwant: {:02x?}",
            got.len(),
            want.len(),
            &got[..got.len().min(i + 32)],
            &want[..want.len().min(i + 32)]
        );
    }
}

// ---------------------------------------------------------------------------
// The client codec.
// ---------------------------------------------------------------------------

/// A TCP or Unix stream.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn tcp(port: u16) -> Stream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        s.set_nodelay(true).expect("TCP_NODELAY");
        let s = Stream::Tcp(s);
        s.set_timeouts(Some(IO_TIMEOUT), Some(IO_TIMEOUT));
        s
    }

    fn unix(path: &std::path::Path) -> Stream {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let s = Stream::Unix(s);
        s.set_timeouts(Some(IO_TIMEOUT), Some(IO_TIMEOUT));
        s
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read).expect("read timeout");
                s.set_write_timeout(write).expect("write timeout");
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read).expect("read timeout");
                s.set_write_timeout(write).expect("write timeout");
            }
        }
    }

    /// Sets the write timeout only (shared by every clone of the socket).
    fn set_write_timeout(&self, t: Duration) {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(t)).expect("write timeout"),
            Stream::Unix(s) => s.set_write_timeout(Some(t)).expect("write timeout"),
        }
    }

    fn try_clone(&self) -> Stream {
        match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone().expect("clone tcp stream")),
            Stream::Unix(s) => Stream::Unix(s.try_clone().expect("clone unix stream")),
        }
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One option reply.
#[derive(Debug)]
struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

/// What GO / INFO told us.
#[derive(Debug, Default)]
struct ExportInfo {
    size: u64,
    flags: u16,
    name: Option<String>,
    description: Option<String>,
    /// (minimum, preferred, maximum)
    block: Option<(u32, u32, u32)>,
    /// The raw INFO replies, in order.
    replies: Vec<OptReply>,
}

/// One structured reply chunk.
#[derive(Debug)]
struct Chunk {
    flags: u16,
    kind: u16,
    cookie: u64,
    payload: Vec<u8>,
}

/// One transmission reply of either kind.
#[derive(Debug)]
enum Reply {
    Simple { error: u32, cookie: u64, data: Vec<u8> },
    Chunk(Chunk),
}

/// Request header fields: (flags, command, cookie, offset, length).
type Header = (u16, u16, u64, u64, u32);

/// A hand-rolled NBD client over one connection.
struct Client {
    r: BufReader<Stream>,
    w: Stream,
    label: String,
}

impl Client {
    fn from_stream(s: Stream, label: String) -> Client {
        let w = s.try_clone();
        Client { r: BufReader::with_capacity(64 * 1024, s), w, label }
    }

    fn tcp(server: &Server) -> Client {
        Client::from_stream(Stream::tcp(server.port()), format!("tcp:{}", server.port()))
    }

    fn unix(server: &Server) -> Client {
        Client::from_stream(Stream::unix(server.unix_path()), format!("unix:{}", server.unix_path().display()))
    }

    /// Connects over TCP, checks the greeting byte for byte and sends `client_flags`.
    fn start(server: &Server, client_flags: u32) -> Client {
        let mut c = Client::tcp(server);
        c.greeting();
        c.send(&client_flags.to_be_bytes());
        c
    }

    fn start_unix(server: &Server, client_flags: u32) -> Client {
        let mut c = Client::unix(server);
        c.greeting();
        c.send(&client_flags.to_be_bytes());
        c
    }

    fn read_bytes(&mut self, n: usize, what: &str) -> Vec<u8> {
        let mut v = vec![0u8; n];
        if let Err(e) = self.r.read_exact(&mut v) {
            panic!("{}: reading {what} ({n} bytes) failed: {e}", self.label);
        }
        v
    }

    fn send(&mut self, b: &[u8]) {
        if let Err(e) = self.w.write_all(b) {
            panic!("{}: writing {} bytes failed: {e}", self.label, b.len());
        }
    }

    fn shutdown_write(&self) {
        self.w.shutdown(Shutdown::Write);
    }

    /// The 18-byte greeting, exactly.
    fn greeting(&mut self) {
        let g = self.read_bytes(18, "greeting");
        assert_eq!(be64(&g[0..8]), NBDMAGIC, "greeting NBDMAGIC");
        assert_eq!(be64(&g[8..16]), IHAVEOPT, "greeting IHAVEOPT");
        assert_eq!(be16(&g[16..18]), 3, "greeting handshake flags (FIXED_NEWSTYLE | NO_ZEROES)");
        assert_same("greeting", &g, &GREETING);
    }

    /// The server must close the connection with a clean EOF and no more bytes.
    fn expect_eof(&mut self, what: &str) {
        let mut buf = [0u8; 512];
        let started = Instant::now();
        match self.r.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{}: {what}: expected the server to close the connection, but got {n} more bytes: {:02x?}",
                self.label,
                &buf[..n]
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "{}: {what}: expected the server to close the connection, but it stayed open for {:?}",
                self.label,
                started.elapsed()
            ),
            Err(e) => panic!("{}: {what}: expected a clean EOF, got error {e} ({:?})", self.label, e.kind()),
        }
    }

    // ---- options ----

    fn option(&mut self, option: u32, data: &[u8]) {
        self.send(&option_bytes(option, data));
    }

    fn opt_reply(&mut self) -> OptReply {
        let h = self.read_bytes(20, "option reply header");
        assert_eq!(be64(&h[0..8]), OPT_REPLY_MAGIC, "{}: option reply magic; header {h:02x?}", self.label);
        let option = be32(&h[8..12]);
        let kind = be32(&h[12..16]);
        let len = be32(&h[16..20]);
        assert!(len <= 1 << 20, "{}: absurd option reply length {len}; header {h:02x?}", self.label);
        let data = self.read_bytes(len as usize, "option reply data");
        OptReply { option, kind, data }
    }

    /// One option reply that must be the error `kind` for `option`, with a
    /// UTF-8 message. Returns the message.
    fn expect_opt_error(&mut self, option: u32, kind: u32, what: &str) -> String {
        let r = self.opt_reply();
        assert_eq!(r.option, option, "{what}: reply names option {} instead of {option}", r.option);
        assert_eq!(
            r.kind,
            kind,
            "{what}: reply type {} instead of {}; data {:?}",
            rep_name(r.kind),
            rep_name(kind),
            String::from_utf8_lossy(&r.data)
        );
        String::from_utf8(r.data).unwrap_or_else(|e| panic!("{what}: error message is not UTF-8: {e}"))
    }

    fn expect_ack(&mut self, option: u32, what: &str) {
        let r = self.opt_reply();
        let got = option_reply_bytes(r.option, r.kind, &r.data);
        assert_same(&format!("{what}: ACK for option {option}"), &got, &option_reply_bytes(option, REP_ACK, &[]));
    }

    /// LIST, checked byte for byte: one SERVER reply naming `default`, then ACK.
    fn list_ok(&mut self, what: &str) {
        self.option(OPT_LIST, &[]);
        let a = self.opt_reply();
        let b = self.opt_reply();
        let mut got = option_reply_bytes(a.option, a.kind, &a.data);
        got.extend_from_slice(&option_reply_bytes(b.option, b.kind, &b.data));
        let mut name = 7u32.to_be_bytes().to_vec();
        name.extend_from_slice(b"default");
        let mut want = option_reply_bytes(OPT_LIST, REP_SERVER, &name);
        want.extend_from_slice(&option_reply_bytes(OPT_LIST, REP_ACK, &[]));
        assert_same(&format!("{what}: LIST replies"), &got, &want);
    }

    /// Reads INFO replies up to the ACK; panics on any error reply.
    fn info_replies(&mut self, option: u32, what: &str) -> ExportInfo {
        let mut info = ExportInfo::default();
        let mut seen_export = false;
        loop {
            let r = self.opt_reply();
            assert_eq!(r.option, option, "{what}: reply for option {} during option {option}", r.option);
            match r.kind {
                REP_ACK => {
                    assert!(r.data.is_empty(), "{what}: ACK with data {:02x?}", r.data);
                    break;
                }
                REP_INFO => {
                    assert!(r.data.len() >= 2, "{what}: REP_INFO shorter than its type: {:02x?}", r.data);
                    let t = be16(&r.data);
                    let d = &r.data[2..];
                    match t {
                        INFO_EXPORT => {
                            assert_eq!(d.len(), 10, "{what}: INFO_EXPORT payload length; data {:02x?}", r.data);
                            assert!(!seen_export, "{what}: INFO_EXPORT sent twice");
                            seen_export = true;
                            info.size = be64(d);
                            info.flags = be16(&d[8..]);
                        }
                        INFO_NAME => {
                            assert!(info.name.is_none(), "{what}: INFO_NAME sent twice");
                            info.name = Some(String::from_utf8(d.to_vec()).expect("INFO_NAME is UTF-8"));
                        }
                        INFO_DESCRIPTION => {
                            assert!(info.description.is_none(), "{what}: INFO_DESCRIPTION sent twice");
                            info.description = Some(String::from_utf8(d.to_vec()).expect("INFO_DESCRIPTION UTF-8"));
                        }
                        INFO_BLOCK_SIZE => {
                            assert_eq!(d.len(), 12, "{what}: INFO_BLOCK_SIZE payload length; data {:02x?}", r.data);
                            assert!(info.block.is_none(), "{what}: INFO_BLOCK_SIZE sent twice");
                            info.block = Some((be32(d), be32(&d[4..]), be32(&d[8..])));
                        }
                        other => println!("{what}: ignoring unknown info type {other}"),
                    }
                    info.replies.push(r);
                }
                other => panic!(
                    "{what}: option {option} got reply type {} with data {:?}",
                    rep_name(other),
                    String::from_utf8_lossy(&r.data)
                ),
            }
        }
        assert!(seen_export, "{what}: no INFO_EXPORT before the ACK (spec: MUST be sent)");
        info
    }

    /// GO for `name` with no information requests; returns what it told.
    fn go(&mut self, name: &str) -> ExportInfo {
        self.option(OPT_GO, &info_data(name, &[]));
        self.info_replies(OPT_GO, &format!("GO {name:?}"))
    }

    /// STRUCTURED_REPLY, checked byte for byte.
    fn structured_reply(&mut self) {
        self.option(OPT_STRUCTURED_REPLY, &[]);
        self.expect_ack(OPT_STRUCTURED_REPLY, "STRUCTURED_REPLY");
    }

    /// SET_META_CONTEXT "" base:allocation, checked byte for byte.
    fn set_meta_base_allocation(&mut self) {
        self.option(OPT_SET_META_CONTEXT, &meta_data("", &["base:allocation"]));
        let a = self.opt_reply();
        let b = self.opt_reply();
        let mut got = option_reply_bytes(a.option, a.kind, &a.data);
        got.extend_from_slice(&option_reply_bytes(b.option, b.kind, &b.data));
        let mut ctx = 1u32.to_be_bytes().to_vec();
        ctx.extend_from_slice(b"base:allocation");
        let mut want = option_reply_bytes(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &ctx);
        want.extend_from_slice(&option_reply_bytes(OPT_SET_META_CONTEXT, REP_ACK, &[]));
        assert_same("SET_META_CONTEXT base:allocation replies", &got, &want);
    }

    // ---- transmission ----

    fn request(&mut self, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        self.send(&request_bytes(flags, cmd, cookie, offset, len, payload));
    }

    /// Reads one reply of either kind; `data_len(cookie)` says how many data
    /// bytes follow a successful simple reply to that cookie.
    fn reply(&mut self, data_len: &dyn Fn(u64) -> usize) -> Reply {
        let m = self.read_bytes(4, "reply magic");
        match be32(&m) {
            SIMPLE_REPLY_MAGIC => {
                let h = self.read_bytes(12, "simple reply header");
                let error = be32(&h);
                let cookie = be64(&h[4..]);
                let data = if error == 0 { self.read_bytes(data_len(cookie), "read data") } else { Vec::new() };
                Reply::Simple { error, cookie, data }
            }
            STRUCTURED_REPLY_MAGIC => {
                let h = self.read_bytes(16, "structured reply chunk header");
                let len = be32(&h[12..]);
                assert!(len <= MAX_BLOCK + 4096, "{}: absurd chunk length {len}; header {h:02x?}", self.label);
                let payload = self.read_bytes(len as usize, "chunk payload");
                Reply::Chunk(Chunk { flags: be16(&h), kind: be16(&h[2..]), cookie: be64(&h[4..]), payload })
            }
            other => panic!("{}: bad reply magic {other:#010x} (bytes {m:02x?})", self.label),
        }
    }

    /// A simple reply to `cookie` (with `data_len` bytes of data when it succeeds).
    fn simple(&mut self, cookie: u64, data_len: usize, what: &str) -> (u32, Vec<u8>) {
        match self.reply(&|_| data_len) {
            Reply::Simple { error, cookie: c, data } => {
                assert_eq!(c, cookie, "{what}: reply cookie");
                (error, data)
            }
            Reply::Chunk(ch) => panic!("{what}: expected a simple reply, got a structured chunk {ch:?}"),
        }
    }

    fn chunk(&mut self, what: &str) -> Chunk {
        match self.reply(&|_| 0) {
            Reply::Chunk(c) => c,
            r => panic!("{what}: expected a structured chunk, got {r:?}"),
        }
    }

    /// A request without payload that must succeed with a simple reply.
    fn simple_ok(&mut self, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32, what: &str) {
        self.request(flags, cmd, cookie, offset, len, &[]);
        let (error, _) = self.simple(cookie, 0, what);
        assert_eq!(error, 0, "{what}: error");
    }

    /// A request that must fail with `errno` in a simple reply (no data after it).
    fn simple_err(&mut self, header: Header, payload: &[u8], errno: u32) {
        let (flags, cmd, cookie, offset, len) = header;
        let what = format!("cmd {cmd} flags {flags:#x} offset {offset} len {len}");
        self.request(flags, cmd, cookie, offset, len, payload);
        let h = self.read_bytes(16, &format!("{what}: simple reply"));
        assert_same(&format!("{what}: simple error reply"), &h, &simple_reply_bytes(errno, cookie));
    }

    fn write_ok(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        self.request(0, CMD_WRITE, cookie, offset, data.len() as u32, data);
        let h = self.read_bytes(16, "write reply");
        assert_same(&format!("write of {} at {offset}", data.len()), &h, &simple_reply_bytes(0, cookie));
    }

    fn read_ok(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, CMD_READ, cookie, offset, len, &[]);
        let h = self.read_bytes(16, "read reply");
        assert_same(&format!("read of {len} at {offset}"), &h, &simple_reply_bytes(0, cookie));
        self.read_bytes(len as usize, "read data")
    }

    /// A request that must succeed with either a simple reply or a final NONE chunk.
    fn ok_any(&mut self, cookie: u64, what: &str) {
        match self.reply(&|_| 0) {
            Reply::Simple { error, cookie: c, .. } => {
                assert_eq!((error, c), (0, cookie), "{what}: simple reply (error, cookie)");
            }
            Reply::Chunk(ch) => {
                assert_eq!(
                    (ch.flags, ch.kind, ch.cookie, ch.payload.len()),
                    (REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0),
                    "{what}: chunk (flags, type, cookie, length)"
                );
            }
        }
    }

    /// DISC, then the server must close.
    fn disc(&mut self) {
        self.request(0, CMD_DISC, 0xd15c, 0, 0, &[]);
        self.expect_eof("after NBD_CMD_DISC");
    }
}

// ---------------------------------------------------------------------------
// "The same server still works" and the end of every test.
// ---------------------------------------------------------------------------

/// A fresh well-behaved client, over TCP and the Unix socket: GO, write,
/// read back, DISC.
fn assert_serves(server: &Server, tag: u64) {
    for (i, unix) in [false, true].into_iter().enumerate() {
        let mut c = if unix { Client::start_unix(server, CLIENT_FLAGS) } else { Client::start(server, CLIENT_FLAGS) };
        let info = c.go("");
        assert_eq!(info.size, EXPORT_SIZE, "health check: export size");
        let offset = 250 * MIB + (tag % 64) * 8 * KIB + i as u64 * 4 * KIB;
        let data = pseudo_random_bytes(0x5eed_0000 + tag * 2 + i as u64, 4096);
        c.write_ok(1, offset, &data);
        let back = c.read_ok(2, offset, 4096);
        assert_same("health check: data read back", &back, &data);
        c.disc();
    }
}

/// Health check, then SIGTERM: exit 0 and no panic in the log.
fn finish(server: Server, tag: u64) {
    assert_serves(&server, tag);
    let log = server.stop();
    assert!(!log.contains("panicked"), "server log shows a panic:\n{log}");
}

// ---------------------------------------------------------------------------
// 1. Greeting and client flags.
// ---------------------------------------------------------------------------

#[test]
fn bad_client_flags_close_the_connection() {
    let server = Server::start(&[]);
    for flags in [0x80u32, 0xffff_ffff, 1 << 31, 0x4, CLIENT_FLAGS | 0x100] {
        let mut c = Client::tcp(&server);
        c.greeting();
        c.send(&flags.to_be_bytes());
        c.expect_eof(&format!("client flags {flags:#x}"));
    }
    // Same over the Unix socket.
    let mut c = Client::unix(&server);
    c.greeting();
    c.send(&0x80u32.to_be_bytes());
    c.expect_eof("client flags 0x80 over unix");
    // Client flags cut short, then the client goes away.
    let mut c = Client::tcp(&server);
    c.greeting();
    c.send(&[0, 0]);
    c.shutdown_write();
    c.expect_eof("2 of the 4 client flag bytes, then EOF");
    // A client that connects, reads the greeting and hangs up at once.
    for _ in 0..20 {
        let mut c = Client::tcp(&server);
        c.greeting();
    }
    finish(server, 1);
}

// ---------------------------------------------------------------------------
// 2. Option magic.
// ---------------------------------------------------------------------------

#[test]
fn bad_option_magic_closes_the_connection() {
    let server = Server::start(&[]);
    // As the very first option.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    let mut b = option_bytes(OPT_LIST, &[]);
    b[7] ^= 0x01;
    c.send(&b);
    c.expect_eof("bad option magic as the first option");
    // After a good option, with an all-zero header.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.list_ok("before the bad magic");
    c.send(&[0u8; 16]);
    c.expect_eof("all-zero option header");
    // A request magic where an option should be (client thinks it is in transmission).
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.send(&request_bytes(0, CMD_READ, 1, 0, 512, &[])[..16]);
    c.expect_eof("request header during negotiation");
    finish(server, 2);
}

// ---------------------------------------------------------------------------
// 3. Truncated options.
// ---------------------------------------------------------------------------

#[test]
fn truncated_option_closes_cleanly() {
    let server = Server::start(&[]);
    for option in [OPT_INFO, OPT_GO, OPT_EXPORT_NAME, OPT_SET_META_CONTEXT, 0x1234] {
        let mut c = Client::start(&server, CLIENT_FLAGS);
        let mut b = option_bytes(option, &[0u8; 10]);
        b[12..16].copy_from_slice(&100u32.to_be_bytes());
        c.send(&b);
        c.shutdown_write();
        c.expect_eof(&format!("option {option}: header says 100 bytes, 10 sent, then EOF"));
    }
    // The option header itself cut short.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.send(&option_bytes(OPT_LIST, &[])[..7]);
    c.shutdown_write();
    c.expect_eof("7 bytes of an option header, then EOF");
    // A good option, then a truncated one: the first is still answered.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.list_ok("before the truncated option");
    let mut b = option_bytes(OPT_GO, &info_data("", &[]));
    b[12..16].copy_from_slice(&100u32.to_be_bytes());
    c.send(&b);
    c.shutdown_write();
    c.expect_eof("GO truncated after a LIST");
    finish(server, 3);
}

// ---------------------------------------------------------------------------
// 4. Huge and oversized options.
// ---------------------------------------------------------------------------

#[test]
fn huge_and_oversized_options() {
    let server = Server::start(&[]);
    // len = 0xFFFFFFFF then EOF, with nothing or a little data.
    for sent in [0usize, 1000] {
        let mut c = Client::start(&server, CLIENT_FLAGS);
        let mut b = option_bytes(0x1234, &vec![0xab; sent]);
        b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        c.send(&b);
        c.shutdown_write();
        c.expect_eof(&format!("option len 0xFFFFFFFF with {sent} bytes, then EOF"));
    }
    // Over the limit but fully sent: ERR_TOO_BIG, and the connection goes on.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    let mut d = info_data("", &[]);
    d.resize(70000, 0x5a);
    c.option(OPT_GO, &d);
    let msg = c.expect_opt_error(OPT_GO, REP_ERR_TOO_BIG, "GO with 70000 bytes of data");
    println!("ERR_TOO_BIG message: {msg:?}");
    c.list_ok("after ERR_TOO_BIG");
    // Exactly at the 64 KiB limit: read and parsed (an unknown option is ERR_UNSUP, not TOO_BIG).
    c.option(0x1234, &vec![7u8; 64 * 1024]);
    c.expect_opt_error(0x1234, REP_ERR_UNSUP, "unknown option with exactly 65536 bytes");
    // One byte over: TOO_BIG.
    c.option(0x1234, &vec![7u8; 64 * 1024 + 1]);
    c.expect_opt_error(0x1234, REP_ERR_TOO_BIG, "unknown option with 65537 bytes");
    c.option(OPT_LIST, &vec![0u8; 1 << 20]);
    c.expect_opt_error(OPT_LIST, REP_ERR_TOO_BIG, "LIST with 1 MiB of data");
    c.list_ok("after three oversized options");
    // The connection still reaches transmission.
    let info = c.go("");
    assert_eq!(info.size, EXPORT_SIZE);
    let data = pseudo_random_bytes(4, 4096);
    c.write_ok(1, 0, &data);
    assert_same("read back after oversized options", &c.read_ok(2, 0, 4096), &data);
    c.disc();
    // EXPORT_NAME cannot be answered with an error: an oversized one closes the connection.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.option(OPT_EXPORT_NAME, &vec![b'a'; 70000]);
    c.expect_eof("EXPORT_NAME with 70000 bytes");
    finish(server, 4);
}

// ---------------------------------------------------------------------------
// 5. Option errors keep negotiation alive.
// ---------------------------------------------------------------------------

#[test]
fn option_errors_keep_negotiation_alive() {
    let server = Server::start(&[]);
    let mut c = Client::start(&server, CLIENT_FLAGS);

    c.option(0x1234, &pseudo_random_bytes(5, 100));
    c.expect_opt_error(0x1234, REP_ERR_UNSUP, "unknown option 0x1234 with 100 bytes");
    c.list_ok("after unknown option");

    c.option(OPT_STARTTLS, &[]);
    c.expect_opt_error(OPT_STARTTLS, REP_ERR_UNSUP, "STARTTLS");
    c.option(OPT_EXTENDED_HEADERS, &[]);
    c.expect_opt_error(OPT_EXTENDED_HEADERS, REP_ERR_UNSUP, "EXTENDED_HEADERS");
    c.option(OPT_PEEK_EXPORT, &[]);
    c.expect_opt_error(OPT_PEEK_EXPORT, REP_ERR_UNSUP, "PEEK_EXPORT");
    c.option(0xffff_ffff, &[1, 2, 3]);
    c.expect_opt_error(0xffff_ffff, REP_ERR_UNSUP, "option 0xffffffff");
    c.list_ok("after ERR_UNSUP replies");

    c.option(OPT_LIST, b"x");
    c.expect_opt_error(OPT_LIST, REP_ERR_INVALID, "LIST with data");
    c.list_ok("after LIST with data");

    // INFO whose name length runs past the option data.
    let mut d = 200u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"abc");
    c.option(OPT_INFO, &d);
    c.expect_opt_error(OPT_INFO, REP_ERR_INVALID, "INFO with name length 200 but 3 bytes");
    // INFO whose request count runs past the data, and INFO with trailing bytes.
    let mut d = info_data("", &[INFO_NAME]);
    d.pop();
    c.option(OPT_INFO, &d);
    c.expect_opt_error(OPT_INFO, REP_ERR_INVALID, "INFO with a truncated information request");
    let mut d = info_data("", &[]);
    d.push(0);
    c.option(OPT_INFO, &d);
    c.expect_opt_error(OPT_INFO, REP_ERR_INVALID, "INFO with a trailing byte");
    c.option(OPT_GO, &[0, 0]);
    c.expect_opt_error(OPT_GO, REP_ERR_INVALID, "GO with 2 bytes of data");
    c.list_ok("after ERR_INVALID replies");

    c.option(OPT_INFO, &info_data("nope", &[]));
    c.expect_opt_error(OPT_INFO, REP_ERR_UNKNOWN, "INFO for an unknown export");
    c.option(OPT_GO, &info_data("nope", &[INFO_BLOCK_SIZE]));
    c.expect_opt_error(OPT_GO, REP_ERR_UNKNOWN, "GO for an unknown export");
    c.list_ok("after ERR_UNKNOWN replies");

    c.option(OPT_SET_META_CONTEXT, &meta_data("", &["base:allocation"]));
    c.expect_opt_error(OPT_SET_META_CONTEXT, REP_ERR_INVALID, "SET_META_CONTEXT before STRUCTURED_REPLY");
    c.option(OPT_LIST_META_CONTEXT, &meta_data("", &[]));
    c.expect_opt_error(OPT_LIST_META_CONTEXT, REP_ERR_INVALID, "LIST_META_CONTEXT before STRUCTURED_REPLY");

    c.option(OPT_STRUCTURED_REPLY, b"zz");
    c.expect_opt_error(OPT_STRUCTURED_REPLY, REP_ERR_INVALID, "STRUCTURED_REPLY with data");
    c.structured_reply();
    c.option(OPT_STRUCTURED_REPLY, &[]);
    c.expect_opt_error(OPT_STRUCTURED_REPLY, REP_ERR_INVALID, "second STRUCTURED_REPLY");

    // Meta contexts once structured replies are on.
    c.option(OPT_SET_META_CONTEXT, &meta_data("", &["nocolon"]));
    c.expect_opt_error(OPT_SET_META_CONTEXT, REP_ERR_INVALID, "SET_META_CONTEXT query without namespace");
    c.option(OPT_SET_META_CONTEXT, &meta_data("nope", &["base:allocation"]));
    c.expect_opt_error(OPT_SET_META_CONTEXT, REP_ERR_UNKNOWN, "SET_META_CONTEXT for an unknown export");
    let mut d = meta_data("", &["base:allocation"]);
    d[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    d.truncate(8);
    c.option(OPT_SET_META_CONTEXT, &d);
    c.expect_opt_error(OPT_SET_META_CONTEXT, REP_ERR_INVALID, "SET_META_CONTEXT claiming 2^32-1 queries");
    c.option(OPT_LIST_META_CONTEXT, &meta_data("", &["base:"]));
    let r = c.opt_reply();
    assert_eq!((r.option, r.kind), (OPT_LIST_META_CONTEXT, REP_META_CONTEXT), "LIST_META_CONTEXT base: -> {r:?}");
    assert!(r.data.len() >= 4, "LIST_META_CONTEXT reply too short: {r:?}");
    assert_eq!(&r.data[4..], b"base:allocation", "LIST_META_CONTEXT context name");
    c.expect_ack(OPT_LIST_META_CONTEXT, "LIST_META_CONTEXT");
    c.set_meta_base_allocation();
    c.list_ok("after meta contexts");

    c.option(OPT_ABORT, &[]);
    c.expect_ack(OPT_ABORT, "ABORT");
    c.expect_eof("after ABORT's ACK");

    // ABORT as the very first option, over the Unix socket.
    let mut c = Client::start_unix(&server, CLIENT_FLAGS);
    c.option(OPT_ABORT, &[]);
    c.expect_ack(OPT_ABORT, "ABORT first");
    c.expect_eof("after ABORT's ACK (unix)");
    finish(server, 5);
}

// ---------------------------------------------------------------------------
// 6. INFO / GO replies, and a simple-reply transmission phase.
// ---------------------------------------------------------------------------

fn check_kernel_style_info(info: &ExportInfo, structured: bool, what: &str) {
    assert_eq!(info.size, EXPORT_SIZE, "{what}: INFO_EXPORT size");
    assert_eq!(info.flags & REQUIRED_FLAGS, REQUIRED_FLAGS, "{what}: transmission flags {:#06x} lack some of {REQUIRED_FLAGS:#06x} (HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO)", info.flags);
    assert_eq!(info.flags & FLAG_READ_ONLY, 0, "{what}: READ_ONLY set on a writable export: {:#06x}", info.flags);
    assert_eq!(
        info.flags & FLAG_SEND_DF != 0,
        structured,
        "{what}: SEND_DF must be advertised exactly when structured replies are negotiated (flags {:#06x})",
        info.flags
    );
    assert_eq!(info.name.as_deref(), Some("default"), "{what}: INFO_NAME");
    let desc = info.description.as_deref().unwrap_or_else(|| panic!("{what}: no INFO_DESCRIPTION"));
    assert!(!desc.is_empty(), "{what}: empty INFO_DESCRIPTION");
    assert_eq!(info.block, Some((1, 4096, 32 << 20)), "{what}: INFO_BLOCK_SIZE (min, preferred, max)");
    // Byte-exact INFO_EXPORT and INFO_BLOCK_SIZE payloads.
    let export = info.replies.iter().find(|r| be16(&r.data) == INFO_EXPORT).expect("INFO_EXPORT");
    let mut want = vec![0u8, 0];
    want.extend_from_slice(&EXPORT_SIZE.to_be_bytes());
    want.extend_from_slice(&info.flags.to_be_bytes());
    assert_same(&format!("{what}: INFO_EXPORT payload"), &export.data, &want);
    let block = info.replies.iter().find(|r| be16(&r.data) == INFO_BLOCK_SIZE).expect("INFO_BLOCK_SIZE");
    assert_same(
        &format!("{what}: INFO_BLOCK_SIZE payload"),
        &block.data,
        &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
    );
}

#[test]
fn go_without_info_requests_like_the_kernel() {
    let server = Server::start(&[]);

    // What the Linux kernel's nbd-client does: GO "" with no information
    // requests and no structured replies.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.option(OPT_GO, &info_data("", &[]));
    let info = c.info_replies(OPT_GO, "kernel-style GO");
    println!(
        "GO: size {} flags {:#06x} name {:?} description {:?} block {:?}",
        info.size, info.flags, info.name, info.description, info.block
    );
    check_kernel_style_info(&info, false, "kernel-style GO");

    // Transmission with simple replies.
    let a = pseudo_random_bytes(61, 4096);
    let b = pseudo_random_bytes(62, 8192);
    c.request(CMD_FLAG_FUA, CMD_WRITE, 10, 0, 4096, &a);
    let (e, _) = c.simple(10, 0, "FUA write");
    assert_eq!(e, 0, "FUA write");
    c.write_ok(11, 4096, &b);
    assert_same("read back", &c.read_ok(12, 0, 12288), &[a.as_slice(), b.as_slice()].concat());
    c.simple_ok(0, CMD_FLUSH, 13, 0, 0, "FLUSH");
    c.simple_ok(CMD_FLAG_FUA, CMD_FLUSH, 14, 0, 0, "FLUSH with FUA");
    c.simple_ok(0, CMD_TRIM, 15, 4096, 4096, "TRIM");
    c.simple_ok(0, CMD_WRITE_ZEROES, 16, 0, 4096, "WRITE_ZEROES");
    assert_same("zeroes after WRITE_ZEROES", &c.read_ok(17, 0, 4096), &[0u8; 4096]);
    assert_same("untouched after TRIM of another block", &c.read_ok(18, 8192, 4096), &b[4096..]);
    c.simple_ok(0, CMD_CACHE, 19, 0, 65536, "CACHE");
    // Unaligned, tiny and last-byte accesses.
    c.write_ok(20, EXPORT_SIZE - 1, &[0xee]);
    assert_eq!(c.read_ok(21, EXPORT_SIZE - 1, 1), vec![0xee], "last byte");
    c.write_ok(22, 12345, b"hello");
    assert_eq!(c.read_ok(23, 12345, 5), b"hello".to_vec(), "unaligned read");
    c.disc();

    // GO by the export's real name, over the Unix socket.
    let mut c = Client::start_unix(&server, CLIENT_FLAGS);
    let info = c.go("default");
    check_kernel_style_info(&info, false, "GO default (unix)");
    c.disc();

    // INFO keeps the connection in negotiation; asking for BLOCK_SIZE changes nothing.
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.option(OPT_INFO, &info_data("", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]));
    let info = c.info_replies(OPT_INFO, "INFO with requests");
    check_kernel_style_info(&info, false, "INFO with requests");
    c.list_ok("after INFO");
    // With structured replies, DF appears.
    c.structured_reply();
    let info = c.go("");
    check_kernel_style_info(&info, true, "GO after STRUCTURED_REPLY");
    c.request(0, CMD_DISC, 1, 0, 0, &[]);
    c.expect_eof("DISC after structured GO");
    finish(server, 6);
}

// ---------------------------------------------------------------------------
// 7. NBD_OPT_EXPORT_NAME (oldest clients).
// ---------------------------------------------------------------------------

#[test]
fn export_name_replies() {
    let server = Server::start(&[]);
    // With NO_ZEROES: exactly 10 bytes, then transmission begins.
    for (flags, name) in [(CLIENT_FLAGS, ""), (CLIENT_FLAGS, "default")] {
        let mut c = Client::start(&server, flags);
        c.option(OPT_EXPORT_NAME, name.as_bytes());
        let r = c.read_bytes(10, "EXPORT_NAME reply");
        assert_eq!(be64(&r), EXPORT_SIZE, "EXPORT_NAME {name:?}: size");
        let tflags = be16(&r[8..]);
        assert_eq!(tflags & REQUIRED_FLAGS, REQUIRED_FLAGS, "EXPORT_NAME transmission flags {tflags:#06x}");
        assert_eq!(tflags & (FLAG_SEND_DF | FLAG_READ_ONLY), 0, "EXPORT_NAME transmission flags {tflags:#06x}");
        // The very next bytes are the reply to our first request: no padding was sent.
        let data = pseudo_random_bytes(71, 512);
        c.write_ok(1, 4096, &data);
        assert_same("EXPORT_NAME (10 bytes): read back", &c.read_ok(2, 4096, 512), &data);
        c.disc();
    }
    // Without NO_ZEROES (FIXED_NEWSTYLE only, and no flags at all): 134 bytes.
    for flags in [FLAG_C_FIXED_NEWSTYLE, 0] {
        let mut c = Client::start(&server, flags);
        c.option(OPT_EXPORT_NAME, b"");
        let r = c.read_bytes(134, "EXPORT_NAME reply with zeroes");
        assert_eq!(be64(&r), EXPORT_SIZE, "client flags {flags}: size");
        let tflags = be16(&r[8..]);
        assert_eq!(tflags & REQUIRED_FLAGS, REQUIRED_FLAGS, "client flags {flags}: transmission flags {tflags:#06x}");
        assert_same("124 zero bytes", &r[10..], &[0u8; 124]);
        let data = pseudo_random_bytes(72, 512);
        c.write_ok(1, 8192, &data);
        assert_same("EXPORT_NAME (134 bytes): read back", &c.read_ok(2, 8192, 512), &data);
        c.disc();
    }
    // After some newstyle options.
    let mut c = Client::start_unix(&server, CLIENT_FLAGS);
    c.list_ok("before EXPORT_NAME");
    c.option(0x1234, b"junk");
    c.expect_opt_error(0x1234, REP_ERR_UNSUP, "unknown option before EXPORT_NAME");
    c.option(OPT_EXPORT_NAME, b"default");
    let r = c.read_bytes(10, "EXPORT_NAME reply after options");
    assert_eq!(be64(&r), EXPORT_SIZE);
    c.disc();
    // Unknown export name: the connection is closed, without any reply.
    for name in [&b"nope"[..], b"Default", b"default\0", &[0xff, 0xfe]] {
        let mut c = Client::start(&server, CLIENT_FLAGS);
        c.option(OPT_EXPORT_NAME, name);
        c.expect_eof(&format!("EXPORT_NAME {:?}", String::from_utf8_lossy(name)));
    }
    finish(server, 7);
}

// ---------------------------------------------------------------------------
// 8. Transmission errors stay survivable.
// ---------------------------------------------------------------------------

#[test]
fn transmission_errors_are_survivable() {
    let server = Server::start(&[]);
    let pid = server.pid();
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.go("");
    let good = pseudo_random_bytes(81, 4096);
    c.write_ok(1, 0, &good);

    // Unknown command (no payload follows: the server cannot know of any).
    c.simple_err((0, 99, 2, 0, 512), &[], EINVAL);
    assert_same("after unknown command", &c.read_ok(3, 0, 4096), &good);
    c.simple_err((0, 0xffff, 4, 0, 0), &[], EINVAL);
    // Unknown flag bits, on a read and on a write (whose payload must be skipped).
    c.simple_err((1 << 7, CMD_READ, 5, 0, 512), &[], EINVAL);
    c.simple_err((1 << 15, CMD_WRITE, 6, 0, 4096), &[0xaa; 4096], EINVAL);
    assert_same("write with a bad flag left the data alone", &c.read_ok(7, 0, 4096), &good);
    // DF without structured replies (SEND_DF was not advertised).
    c.simple_err((CMD_FLAG_DF, CMD_READ, 8, 0, 512), &[], EINVAL);
    // FLUSH with nonzero offset or length.
    c.simple_err((0, CMD_FLUSH, 9, 512, 0), &[], EINVAL);
    c.simple_err((0, CMD_FLUSH, 10, 0, 512), &[], EINVAL);
    // BLOCK_STATUS without a negotiated context.
    c.simple_err((0, CMD_BLOCK_STATUS, 11, 0, 4096), &[], EINVAL);
    // Reads and trims past the end: EINVAL, no data.
    c.simple_err((0, CMD_READ, 12, EXPORT_SIZE - 512, 4096), &[], EINVAL);
    c.simple_err((0, CMD_READ, 13, u64::MAX - 10, 4096), &[], EINVAL);
    c.simple_err((0, CMD_TRIM, 14, EXPORT_SIZE, 1), &[], EINVAL);
    // Writes past the end: ENOSPC, and the payload that followed is skipped.
    c.simple_err((0, CMD_WRITE, 15, EXPORT_SIZE - 2048, 4096), &[0xbb; 4096], ENOSPC);
    c.simple_err((0, CMD_WRITE, 16, u64::MAX - 100, 4096), &[0xbb; 4096], ENOSPC);
    c.simple_err((0, CMD_WRITE_ZEROES, 17, EXPORT_SIZE - 1, 2), &[], ENOSPC);
    assert_same("after ENOSPC", &c.read_ok(18, 0, 4096), &good);
    // A zero-length read.
    c.simple_err((0, CMD_READ, 19, 0, 0), &[], EINVAL);
    // A read above the maximum block size cannot be sent without structured replies.
    c.simple_err((0, CMD_READ, 20, 0, MAX_BLOCK + 1), &[], EOVERFLOW);
    assert_same("after the oversized read", &c.read_ok(21, 0, 4096), &good);

    // An oversized WRITE (33 MiB + 1 > 32 MiB): the server must skip the
    // payload without buffering it, answer EINVAL and keep serving.
    let len = 33 * MIB as u32 + 1;
    let rss_before = proc_status_kib(pid, "VmRSS");
    let hwm_before = proc_status_kib(pid, "VmHWM");
    c.request(0, CMD_WRITE, 22, 0, len, &[]);
    let chunk = vec![0xcc; MIB as usize];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        c.send(&chunk[..n]);
        left -= n;
    }
    let h = c.read_bytes(16, "oversized write reply");
    assert_same("oversized write reply", &h, &simple_reply_bytes(EINVAL, 22));
    let rss_after = proc_status_kib(pid, "VmRSS");
    let hwm_after = proc_status_kib(pid, "VmHWM");
    println!(
        "oversized write: VmRSS {rss_before} -> {rss_after} KiB, VmHWM {hwm_before} -> {hwm_after} KiB (payload {} KiB)",
        len / 1024
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 16 * 1024,
        "server peak RSS grew by {} KiB while skipping a {} KiB oversized write: it buffered the payload",
        hwm_after - hwm_before,
        len / 1024
    );
    assert_same("after the oversized write", &c.read_ok(23, 0, 4096), &good);

    // Several errors back to back without reading, then a good request.
    let mut burst = request_bytes(0, 99, 30, 0, 0, &[]);
    burst.extend(request_bytes(0, CMD_WRITE, 31, EXPORT_SIZE, 100, &[1; 100]));
    burst.extend(request_bytes(1 << 9, CMD_WRITE, 32, 0, 100, &[2; 100]));
    burst.extend(request_bytes(0, CMD_READ, 33, 0, 16, &[]));
    c.send(&burst);
    let mut answered = HashMap::new();
    for _ in 0..4 {
        match c.reply(&|cookie| if cookie == 33 { 16 } else { 0 }) {
            Reply::Simple { error, cookie, data } => {
                assert!(answered.insert(cookie, (error, data)).is_none(), "cookie {cookie} answered twice");
            }
            Reply::Chunk(ch) => panic!("structured chunk without structured replies: {ch:?}"),
        }
    }
    assert_eq!(answered[&30], (EINVAL, vec![]), "burst: unknown command");
    assert_eq!(answered[&31], (ENOSPC, vec![]), "burst: write past the end");
    assert_eq!(answered[&32], (EINVAL, vec![]), "burst: write with a bad flag");
    assert_eq!(answered[&33], (0, good[..16].to_vec()), "burst: read after the errors");

    // A bad request magic: the stream is out of sync, the connection closes.
    let mut b = request_bytes(0, CMD_READ, 40, 0, 512, &[]);
    b[0] ^= 0x80;
    c.send(&b);
    c.expect_eof("bad request magic");

    // The same over the Unix socket, after a flush.
    let mut c = Client::start_unix(&server, CLIENT_FLAGS);
    c.go("");
    c.simple_ok(0, CMD_FLUSH, 1, 0, 0, "flush");
    c.send(&[0u8; 28]);
    c.expect_eof("all-zero request header (unix)");
    finish(server, 8);
}

// ---------------------------------------------------------------------------
// 9. Pipelining.
// ---------------------------------------------------------------------------

/// Reads `n` simple replies in any order; `reads` maps the cookies of reads
/// to their expected data, every other cookie must be in `others` and succeed.
fn collect_pipelined(c: &mut Client, reads: &HashMap<u64, Vec<u8>>, others: &HashSet<u64>, what: &str) {
    let total = reads.len() + others.len();
    let mut answered = HashSet::new();
    let lens: HashMap<u64, usize> = reads.iter().map(|(k, v)| (*k, v.len())).collect();
    for i in 0..total {
        match c.reply(&|cookie| lens.get(&cookie).copied().unwrap_or(0)) {
            Reply::Simple { error, cookie, data } => {
                assert_eq!(error, 0, "{what}: reply {i} (cookie {cookie}) failed");
                assert!(answered.insert(cookie), "{what}: cookie {cookie} answered twice");
                if let Some(want) = reads.get(&cookie) {
                    assert_same(&format!("{what}: data of read cookie {cookie}"), &data, want);
                } else {
                    assert!(others.contains(&cookie), "{what}: reply for unknown cookie {cookie}");
                }
            }
            Reply::Chunk(ch) => panic!("{what}: structured chunk without structured replies: {ch:?}"),
        }
    }
    assert_eq!(answered.len(), total, "{what}: every cookie answered once");
}

#[test]
fn pipelined_requests() {
    let server = Server::start(&[]);
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.go("");
    // Known content for the reads, written beforehand.
    let base = MIB;
    let known: Vec<Vec<u8>> = (0..16).map(|i| pseudo_random_bytes(900 + i, 4096)).collect();
    for (i, d) in known.iter().enumerate() {
        c.write_ok(i as u64, base + i as u64 * 4096, d);
    }

    // 64 requests back to back, without reading: 32 writes to distinct
    // offsets, 32 reads of the known regions.
    let wbase = 4 * MIB;
    let mut reads = HashMap::new();
    let mut writes = HashSet::new();
    let mut written = HashMap::new();
    for i in 0..64u64 {
        let cookie = 0xc0de_0000 + i;
        if i % 2 == 0 {
            let d = pseudo_random_bytes(1000 + i, 4096);
            c.request(0, CMD_WRITE, cookie, wbase + i * 4096, 4096, &d);
            written.insert(wbase + i * 4096, d);
            writes.insert(cookie);
        } else {
            let k = (i % 16) as usize;
            c.request(0, CMD_READ, cookie, base + k as u64 * 4096, 4096, &[]);
            reads.insert(cookie, known[k].clone());
        }
    }
    collect_pipelined(&mut c, &reads, &writes, "64 pipelined requests");

    // Read back every pipelined write, pipelined too.
    let mut reads = HashMap::new();
    for (j, (off, d)) in written.iter().enumerate() {
        let cookie = 0xbeef_0000 + j as u64;
        c.request(0, CMD_READ, cookie, *off, 4096, &[]);
        reads.insert(cookie, d.clone());
    }
    collect_pipelined(&mut c, &reads, &HashSet::new(), "read back the pipelined writes");
    c.disc();

    // Many requests in one write() call, over the Unix socket: 48 reads and
    // 16 small writes (2816 bytes).
    let mut c = Client::start_unix(&server, CLIENT_FLAGS);
    c.go("");
    let mut buf = Vec::new();
    let mut reads = HashMap::new();
    let mut writes = HashSet::new();
    for i in 0..64u64 {
        let cookie = 0xfeed_0000 + i;
        if i % 4 == 3 {
            let d = pseudo_random_bytes(2000 + i, 64);
            buf.extend(request_bytes(0, CMD_WRITE, cookie, 8 * MIB + i * 64, 64, &d));
            writes.insert(cookie);
        } else {
            let k = (i % 16) as usize;
            let off = (i % 7) * 100;
            buf.extend(request_bytes(0, CMD_READ, cookie, base + k as u64 * 4096 + off, 200, &[]));
            reads.insert(cookie, known[k][off as usize..off as usize + 200].to_vec());
        }
    }
    let n = c.w.write(&buf).expect("one write() of 64 requests");
    assert_eq!(n, buf.len(), "the single write() call took all {} bytes", buf.len());
    collect_pipelined(&mut c, &reads, &writes, "64 requests in one write()");
    // Check the small writes landed.
    let all = c.read_ok(1, 8 * MIB, 64 * 64);
    for i in (0..64u64).filter(|i| i % 4 == 3) {
        let at = (i * 64) as usize;
        assert_same(&format!("small write {i}"), &all[at..at + 64], &pseudo_random_bytes(2000 + i, 64));
    }
    // Then many requests and a DISC in one write(): DISC must come after every reply.
    let mut buf = Vec::new();
    for i in 0..32u64 {
        buf.extend(request_bytes(0, CMD_READ, i, base, 512, &[]));
    }
    buf.extend(request_bytes(0, CMD_DISC, 99, 0, 0, &[]));
    let n = c.w.write(&buf).expect("one write() of 32 requests + DISC");
    assert_eq!(n, buf.len());
    let reads: HashMap<u64, Vec<u8>> = (0..32u64).map(|i| (i, known[0][..512].to_vec())).collect();
    collect_pipelined(&mut c, &reads, &HashSet::new(), "32 reads then DISC");
    c.expect_eof("after the pipelined DISC");
    finish(server, 9);
}

// ---------------------------------------------------------------------------
// 10. Flooding is bounded.
// ---------------------------------------------------------------------------

/// What the flooding writer managed before it was blocked (or gave up).
#[derive(Debug, Clone, Copy)]
struct FloodReport {
    /// Requests written completely.
    complete: u64,
    /// Bytes written.
    bytes: u64,
    /// A write() stayed blocked for the whole write timeout.
    blocked: bool,
    elapsed: Duration,
}

/// How one flood is run and judged.
struct Flood {
    what: &'static str,
    /// The bytes of batch `b`, which holds requests with cookies
    /// `b * per_batch .. (b + 1) * per_batch`.
    make: Box<dyn Fn(u64) -> Vec<u8> + Send>,
    per_batch: u64,
    /// Give up (without having been blocked) after this long or this many bytes.
    max_time: Duration,
    max_bytes: u64,
    /// Data bytes that follow a successful simple reply to this cookie.
    data_len: fn(u64) -> usize,
    /// The error every reply must carry (0: success).
    errno: u32,
    /// The client must have been blocked before sending this many bytes.
    max_sent: Option<u64>,
}

/// Writes batch after batch as fast as it can, without reading, until a
/// write() stays blocked for `block_timeout` (the server stopped reading) or
/// the limits are reached; reports then. Once blocked, it finishes the batch
/// it was in the middle of (the caller drains replies meanwhile), so the
/// stream stays in sync; the thread returns the number of requests written.
fn flood_writer(
    w: Stream,
    make: Box<dyn Fn(u64) -> Vec<u8> + Send>,
    per_batch: u64,
    max_time: Duration,
    max_bytes: u64,
    block_timeout: Duration,
) -> (mpsc::Receiver<FloodReport>, thread::JoinHandle<u64>) {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let mut w = w;
        w.set_write_timeout(block_timeout);
        let start = Instant::now();
        let (mut batches, mut bytes) = (0u64, 0u64);
        while start.elapsed() < max_time && bytes < max_bytes {
            let req = make(batches);
            let mut pos = 0;
            while pos < req.len() {
                match w.write(&req[pos..]) {
                    Ok(0) => panic!("flood: write returned 0"),
                    Ok(n) => {
                        pos += n;
                        bytes += n as u64;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        let complete = batches * per_batch;
                        let _ = tx.send(FloodReport { complete, bytes, blocked: true, elapsed: start.elapsed() });
                        // Finish this batch while the reader drains replies.
                        w.set_write_timeout(IO_TIMEOUT);
                        w.write_all(&req[pos..]).expect("flood: finishing the interrupted batch");
                        return complete + per_batch;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("flood: write failed after {bytes} bytes: {e}"),
                }
            }
            batches += 1;
        }
        let complete = batches * per_batch;
        let _ = tx.send(FloodReport { complete, bytes, blocked: false, elapsed: start.elapsed() });
        complete
    });
    (rx, h)
}

/// Floods one fresh connection without reading any reply, sampling the
/// server's RSS meanwhile; then reads every reply, checks the connection
/// still works, and asserts that the client was pushed back and that the
/// server's memory stayed bounded (< 400 MB).
fn flood_and_check(server: &Server, f: Flood) {
    let what = f.what;
    let pid = server.pid();
    let mut c = Client::start(server, CLIENT_FLAGS);
    c.go("");
    let rss_start = proc_status_kib(pid, "VmRSS");
    let (rx, writer) =
        flood_writer(c.w.try_clone(), f.make, f.per_batch, f.max_time, f.max_bytes, Duration::from_millis(500));
    let mut rss_peak = rss_start;
    let report = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) => rss_peak = rss_peak.max(proc_status_kib(pid, "VmRSS")),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: flood writer died"),
        }
    };
    let rss_stopped = proc_status_kib(pid, "VmRSS");
    rss_peak = rss_peak.max(rss_stopped);
    println!(
        "{what}: {report:?} ({} MiB); server VmRSS {rss_start} KiB at start, peak {rss_peak} KiB during the flood, \
         {rss_stopped} KiB once the writer stopped",
        report.bytes / MIB
    );
    let total = if report.blocked { report.complete + f.per_batch } else { report.complete };

    // Drain every reply.
    let mut seen = vec![false; total as usize];
    let drain_start = Instant::now();
    for i in 0..total {
        match c.reply(&|cookie| if f.errno == 0 { (f.data_len)(cookie) } else { 0 }) {
            Reply::Simple { error, cookie, .. } => {
                assert_eq!(error, f.errno, "{what}: reply {i} (cookie {cookie})");
                assert!(cookie < total, "{what}: reply for cookie {cookie}, only {total} sent");
                assert!(!seen[cookie as usize], "{what}: cookie {cookie} answered twice");
                seen[cookie as usize] = true;
            }
            Reply::Chunk(ch) => panic!("{what}: structured chunk without structured replies: {ch:?}"),
        }
    }
    assert_eq!(writer.join().expect("flood writer"), total, "{what}: requests written");
    let hwm = proc_status_kib(pid, "VmHWM");
    println!("{what}: all {total} replies read in {:?}; server VmHWM {hwm} KiB", drain_start.elapsed());

    // The connection still works.
    c.w.set_write_timeout(IO_TIMEOUT);
    let d = pseudo_random_bytes(1010, 4096);
    c.write_ok(u64::MAX - 1, 100 * MIB, &d);
    assert_same(&format!("{what}: read back after the flood"), &c.read_ok(u64::MAX, 100 * MIB, 4096), &d);
    c.disc();

    assert!(
        report.blocked,
        "{what}: the writer was never blocked: it sent {} MiB ({} requests) in {:?} without reading a reply and \
         without the server pushing back; server VmRSS grew from {rss_start} KiB to {rss_stopped} KiB meanwhile",
        report.bytes / MIB,
        report.complete,
        report.elapsed
    );
    if let Some(max) = f.max_sent {
        assert!(
            report.bytes < max,
            "{what}: the client could send {} MiB without reading a reply before it was blocked (limit {} MiB)",
            report.bytes / MIB,
            max / MIB
        );
    }
    assert!(
        rss_peak < 400 * 1024 && hwm < 400 * 1024,
        "{what}: server memory not bounded: VmRSS peaked at {rss_peak} KiB during the flood, VmHWM {hwm} KiB \
         (the client had sent {} MiB)",
        report.bytes / MIB
    );
}

fn no_data(_: u64) -> usize {
    0
}

/// Every fourth cookie is a 4 KiB read.
fn every_fourth_reads(cookie: u64) -> usize {
    if cookie % 4 == 3 {
        4096
    } else {
        0
    }
}

fn all_read(_: u64) -> usize {
    4096
}

#[test]
fn flooding_writes_is_bounded() {
    let server = Server::start(&[]);
    let payload = pseudo_random_bytes(10, 4096);

    // (a) 4 KiB writes over the first 1 MiB, all with the same data, never
    // reading a reply. Write replies are 16 bytes, so the server, which
    // applies each write and frees its buffer, only stops reading once the
    // kernel's socket buffers are full of unread replies: no limit on the
    // bytes sent, only on the server's memory. Flood until blocked.
    let p = payload.clone();
    flood_and_check(
        &server,
        Flood {
            what: "4 KiB write flood",
            make: Box::new(move |i| request_bytes(0, CMD_WRITE, i, (i % 256) * 4096, 4096, &p)),
            per_batch: 1,
            max_time: Duration::from_secs(30),
            max_bytes: 16 * 1024 * MIB,
            data_len: no_data,
            errno: 0,
            max_sent: None,
        },
    );
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.go("");
    for k in [0u64, 17, 255] {
        assert_same(&format!("flooded block {k}"), &c.read_ok(k, k * 4096, 4096), &payload);
    }
    c.disc();

    // (b) The same with every fourth request a 4 KiB read: read replies fill
    // the socket, the 64 MiB in-flight budget runs out and the server must
    // stop reading well before 300 MiB.
    let p = payload.clone();
    flood_and_check(
        &server,
        Flood {
            what: "4 KiB write + read flood",
            make: Box::new(move |i| {
                if i % 4 == 3 {
                    request_bytes(0, CMD_READ, i, (i % 256) * 4096, 4096, &[])
                } else {
                    request_bytes(0, CMD_WRITE, i, (i % 256) * 4096, 4096, &p)
                }
            }),
            per_batch: 1,
            max_time: Duration::from_secs(2),
            max_bytes: 1024 * MIB,
            data_len: every_fourth_reads,
            errno: 0,
            max_sent: Some(300 * MIB),
        },
    );

    // (c) 4 KiB reads only, 256 requests per write(): the budget bounds the
    // replies the server holds.
    flood_and_check(
        &server,
        Flood {
            what: "4 KiB read flood",
            make: Box::new(|b| {
                (b * 256..(b + 1) * 256)
                    .flat_map(|i| request_bytes(0, CMD_READ, i, (i % 256) * 4096, 4096, &[]))
                    .collect()
            }),
            per_batch: 256,
            max_time: Duration::from_secs(2),
            max_bytes: 256 * MIB,
            data_len: all_read,
            errno: 0,
            max_sent: Some(300 * MIB),
        },
    );
    finish(server, 10);
}

/// Requests that fail validation never reach the in-flight budget; a client
/// that sends nothing but those and never reads must still be pushed back
/// before the server's memory grows without bound.
#[test]
fn flooding_invalid_requests_is_bounded() {
    let server = Server::start(&[]);
    // 28-byte requests with an unknown command, 1024 per write(). Each
    // 16-byte reply is as cheap to hold as a write's, so a bounded server is
    // stuck, like in the write flood, once the socket buffers are full of
    // replies (a few hundred thousand requests, under 10 MiB sent). The
    // attempt is capped at 64 MiB (2.4 million requests) or 30 s.
    flood_and_check(
        &server,
        Flood {
            what: "unknown-command flood",
            make: Box::new(|b| (b * 1024..(b + 1) * 1024).flat_map(|i| request_bytes(0, 99, i, 0, 0, &[])).collect()),
            per_batch: 1024,
            max_time: Duration::from_secs(30),
            max_bytes: 64 * MIB,
            data_len: no_data,
            errno: EINVAL,
            max_sent: Some(64 * MIB),
        },
    );
    finish(server, 11);
}

// ---------------------------------------------------------------------------
// 11. Thousands of garbage connections.
// ---------------------------------------------------------------------------

/// One garbage connection: what it sends depends on `i % 5`.
fn garbage_connection(server: &Server, rng: &mut Rng, i: u64) {
    let stream = if i % 2 == 0 { Stream::tcp(server.port()) } else { Stream::unix(server.unix_path()) };
    let mut s = stream;
    let mut out = Vec::new();
    match i % 5 {
        // Pure random bytes (possibly none).
        0 => out = rng.some_bytes(300),
        // Valid client flags, then random bytes.
        1 => {
            out.extend_from_slice(&CLIENT_FLAGS.to_be_bytes());
            out.extend(rng.some_bytes(300));
        }
        // Well-framed options with random numbers, lengths and data.
        2 => {
            out.extend_from_slice(&CLIENT_FLAGS.to_be_bytes());
            for _ in 0..rng.below(6) {
                let option = if rng.below(2) == 0 { rng.below(16) as u32 } else { rng.next() as u32 };
                let len = rng.below(200) as usize;
                let mut o = option_bytes(option, &rng.bytes(len));
                if rng.below(8) == 0 {
                    // Lie about the length.
                    o[12..16].copy_from_slice(&(rng.next() as u32).to_be_bytes());
                }
                out.extend(o);
            }
        }
        // GO, then well-framed requests with random fields, then junk.
        3 => {
            out.extend_from_slice(&CLIENT_FLAGS.to_be_bytes());
            if rng.below(2) == 0 {
                out.extend(option_bytes(OPT_STRUCTURED_REPLY, &[]));
            }
            out.extend(option_bytes(OPT_GO, &info_data("", &[])));
            for _ in 0..rng.below(8) {
                let cmd = rng.below(10) as u16;
                let flags = if rng.below(2) == 0 { 0 } else { rng.next() as u16 };
                let offset = rng.below(EXPORT_SIZE / 2);
                let len = rng.below(8192) as u32;
                let payload = if cmd == CMD_WRITE { rng.bytes(len as usize) } else { Vec::new() };
                out.extend(request_bytes(flags, cmd, rng.next(), offset, len, &payload));
            }
            out.extend(rng.some_bytes(64));
        }
        // EXPORT_NAME, then random bytes.
        _ => {
            out.extend_from_slice(&CLIENT_FLAGS.to_be_bytes());
            out.extend(option_bytes(OPT_EXPORT_NAME, b""));
            out.extend(rng.some_bytes(100));
        }
    }
    // Cut it anywhere, sometimes.
    if rng.below(4) == 0 && !out.is_empty() {
        let cut = rng.below(out.len() as u64) as usize;
        out.truncate(cut);
    }
    // The server may already have closed: write errors are fine here.
    let _ = s.write_all(&out);
    if rng.below(2) == 0 {
        s.shutdown(Shutdown::Both);
    }
}

#[test]
fn thousands_of_garbage_connections() {
    let server = Server::start(&[]);
    let pid = server.pid();
    let fds_before = fd_count(pid);
    let started = Instant::now();
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 500;
    thread::scope(|s| {
        for t in 0..THREADS {
            let server = &server;
            s.spawn(move || {
                let mut rng = Rng(0x6a7b_a6e0 + t);
                for j in 0..PER_THREAD {
                    garbage_connection(server, &mut rng, t * PER_THREAD + j);
                }
            });
        }
    });
    println!("{} garbage connections in {:?}", THREADS * PER_THREAD, started.elapsed());
    // A well-behaved client works right away, while the server is still tidying up.
    assert_serves(&server, 12);
    // Every garbage connection gets closed on the server side.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = fd_count(pid);
    while fds > fds_before + 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        fds = fd_count(pid);
    }
    println!("server fds: {fds_before} before, {fds} after; total {:?}", started.elapsed());
    assert!(fds <= fds_before + 2, "server still holds {fds} fds ({fds_before} before the garbage connections)");
    let log = server.log();
    assert!(!log.contains("panicked"), "server log shows a panic:\n{log}");
    finish(server, 13);
}

// ---------------------------------------------------------------------------
// 12. Structured replies.
// ---------------------------------------------------------------------------

fn structured_client(server: &Server, meta: bool) -> Client {
    let mut c = Client::start(server, CLIENT_FLAGS);
    c.structured_reply();
    if meta {
        c.set_meta_base_allocation();
    }
    let info = c.go("");
    check_kernel_style_info(&info, true, "structured GO");
    c
}

/// A READ answered by exactly one OFFSET_DATA chunk with DONE set.
fn structured_read(c: &mut Client, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    c.request(flags, CMD_READ, cookie, offset, len, &[]);
    let ch = c.chunk("structured read");
    assert_eq!(
        (ch.flags, ch.kind, ch.cookie, ch.payload.len()),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, len as usize + 8),
        "READ {offset}+{len} flags {flags:#x}: chunk (flags, type, cookie, length)"
    );
    assert_eq!(be64(&ch.payload), offset, "OFFSET_DATA offset");
    ch.payload[8..].to_vec()
}

/// An ERROR chunk with DONE and `errno`; returns the message.
fn expect_error_chunk(c: &mut Client, cookie: u64, errno: u32, what: &str) -> String {
    let ch = c.chunk(what);
    assert_eq!((ch.flags, ch.kind, ch.cookie), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie), "{what}: chunk header");
    assert!(ch.payload.len() >= 6, "{what}: error chunk too short: {:02x?}", ch.payload);
    assert_eq!(be32(&ch.payload), errno, "{what}: errno");
    let mlen = be16(&ch.payload[4..]) as usize;
    assert_eq!(mlen, ch.payload.len() - 6, "{what}: message length vs chunk length");
    let msg = String::from_utf8(ch.payload[6..].to_vec()).expect("error message is UTF-8");
    assert!(!msg.is_empty(), "{what}: empty error message");
    msg
}

/// A BLOCK_STATUS request: the one chunk's descriptors for context 1.
fn block_status(c: &mut Client, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<(u32, u32)> {
    c.request(flags, CMD_BLOCK_STATUS, cookie, offset, len, &[]);
    let ch = c.chunk("block status");
    assert_eq!(
        (ch.flags, ch.kind, ch.cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie),
        "BLOCK_STATUS {offset}+{len}: chunk header"
    );
    assert!(
        ch.payload.len() >= 12 && (ch.payload.len() - 4) % 8 == 0,
        "BLOCK_STATUS payload length {} is not 4 + 8n (n >= 1)",
        ch.payload.len()
    );
    assert_eq!(be32(&ch.payload), 1, "BLOCK_STATUS context id");
    let d: Vec<(u32, u32)> = ch.payload[4..].chunks(8).map(|x| (be32(x), be32(&x[4..]))).collect();
    let sum: u64 = d.iter().map(|(l, _)| u64::from(*l)).sum();
    assert!(sum <= u64::from(len), "BLOCK_STATUS descriptors sum to {sum} > request length {len}: {d:?}");
    assert!(d.iter().all(|(l, _)| *l > 0), "zero-length descriptor in {d:?}");
    if flags & CMD_FLAG_REQ_ONE != 0 {
        assert_eq!(d.len(), 1, "REQ_ONE: exactly one descriptor, got {d:?}");
    }
    d
}

#[test]
fn structured_replies() {
    let server = Server::start(&[]);
    let mut c = structured_client(&server, true);
    let data = pseudo_random_bytes(121, 4096);
    c.request(0, CMD_WRITE, 1, 8192, 4096, &data);
    c.ok_any(1, "write");

    assert_same("structured read", &structured_read(&mut c, 0, 2, 8192, 4096), &data);
    assert_same("structured read with DF", &structured_read(&mut c, CMD_FLAG_DF, 3, 8192, 4096), &data);
    // Spanning hole and data, unaligned.
    let got = structured_read(&mut c, CMD_FLAG_DF, 4, 6000, 8000);
    assert_same("read over hole and data (hole before)", &got[..2192], &[0u8; 2192]);
    assert_same("read over hole and data (data)", &got[2192..6288], &data);
    assert_same("read over hole and data (hole after)", &got[6288..], &[0u8; 1712]);
    // A read of the maximum block size with DF is still one chunk.
    let big = structured_read(&mut c, CMD_FLAG_DF, 5, 0, MAX_BLOCK);
    assert_eq!(big.len(), MAX_BLOCK as usize);
    assert_same("big read", &big[8192..12288], &data);

    // Errors are ERROR chunks with errno and a message.
    c.request(0, CMD_READ, 6, EXPORT_SIZE - 512, 4096, &[]);
    let msg = expect_error_chunk(&mut c, 6, EINVAL, "read past the end");
    println!("read past the end: {msg:?}");
    c.request(1 << 9, CMD_READ, 7, 0, 512, &[]);
    expect_error_chunk(&mut c, 7, EINVAL, "read with an unknown flag");
    c.request(CMD_FLAG_DF, CMD_WRITE, 8, 0, 512, &[0x11; 512]);
    expect_error_chunk(&mut c, 8, EINVAL, "write with DF");
    c.request(0, CMD_WRITE, 9, EXPORT_SIZE - 100, 512, &[0x22; 512]);
    expect_error_chunk(&mut c, 9, ENOSPC, "write past the end");
    c.request(0, 99, 10, 0, 0, &[]);
    expect_error_chunk(&mut c, 10, EINVAL, "unknown command");
    c.request(0, CMD_READ, 11, 0, MAX_BLOCK + 1, &[]);
    expect_error_chunk(&mut c, 11, EINVAL, "read above the maximum block size");
    assert_same("still in sync", &structured_read(&mut c, 0, 12, 8192, 4096), &data);

    // BLOCK_STATUS: hole, data, hole.
    let d = block_status(&mut c, 0, 13, 0, 16384);
    assert_eq!(d, vec![(8192, STATE_HOLE | STATE_ZERO), (4096, 0), (4096, STATE_HOLE | STATE_ZERO)], "BLOCK_STATUS");
    let d = block_status(&mut c, CMD_FLAG_REQ_ONE, 14, 0, 16384);
    assert_eq!(d, vec![(8192, STATE_HOLE | STATE_ZERO)], "BLOCK_STATUS REQ_ONE");
    let d = block_status(&mut c, CMD_FLAG_REQ_ONE, 15, 8192, 100);
    assert_eq!(d, vec![(100, 0)], "BLOCK_STATUS REQ_ONE inside the data block");
    // The whole export, and a length beyond the maximum block size (no payload, so allowed).
    let d = block_status(&mut c, 0, 16, 0, EXPORT_SIZE as u32);
    println!("BLOCK_STATUS of the whole export: {} descriptors, first {:?}", d.len(), &d[..d.len().min(4)]);
    block_status(&mut c, CMD_FLAG_REQ_ONE, 17, 4096, EXPORT_SIZE as u32 - 4096);
    c.request(0, CMD_BLOCK_STATUS, 18, EXPORT_SIZE - 4096, 8192, &[]);
    expect_error_chunk(&mut c, 18, EINVAL, "BLOCK_STATUS past the end");
    c.request(CMD_FLAG_DF, CMD_BLOCK_STATUS, 19, 0, 4096, &[]);
    expect_error_chunk(&mut c, 19, EINVAL, "BLOCK_STATUS with DF");

    // Other commands succeed (simple reply or NONE chunk).
    c.request(0, CMD_FLUSH, 20, 0, 0, &[]);
    c.ok_any(20, "flush");
    c.request(0, CMD_TRIM, 21, 8192, 4096, &[]);
    c.ok_any(21, "trim");
    let d = block_status(&mut c, 0, 22, 0, 16384);
    assert_eq!(d, vec![(16384, STATE_HOLE | STATE_ZERO)], "BLOCK_STATUS after the trim");
    c.disc();

    // Structured replies without a metadata context: BLOCK_STATUS is refused.
    let mut c = structured_client(&server, false);
    c.request(0, CMD_BLOCK_STATUS, 1, 0, 4096, &[]);
    expect_error_chunk(&mut c, 1, EINVAL, "BLOCK_STATUS without a context");
    assert_eq!(structured_read(&mut c, 0, 2, 0, 512), vec![0u8; 512]);
    c.disc();

    // Pipelined structured reads: every cookie gets one DONE chunk.
    let mut c = structured_client(&server, true);
    c.request(0, CMD_WRITE, 1, 0, 4096, &data);
    c.ok_any(1, "write");
    let mut buf = Vec::new();
    for i in 0..32u64 {
        buf.extend(request_bytes(if i % 2 == 0 { CMD_FLAG_DF } else { 0 }, CMD_READ, 100 + i, i * 128, 128, &[]));
    }
    c.send(&buf);
    let mut seen = HashSet::new();
    for _ in 0..32 {
        let ch = c.chunk("pipelined structured read");
        assert_eq!((ch.flags, ch.kind), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA), "pipelined chunk {ch:?}");
        let i = ch.cookie - 100;
        assert!(i < 32 && seen.insert(i), "unexpected or repeated cookie {}", ch.cookie);
        assert_eq!(be64(&ch.payload), i * 128, "offset of cookie {}", ch.cookie);
        assert_same("pipelined structured data", &ch.payload[8..], &data[(i * 128) as usize..(i * 128 + 128) as usize]);
    }
    c.disc();
    finish(server, 14);
}

// ---------------------------------------------------------------------------
// Extra: SIGTERM with clients still connected.
// ---------------------------------------------------------------------------

/// The state letter of /proc/PID/stat (R, S, Z, ...).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).unwrap_or('?')
}

/// Sends SIGTERM and waits up to `limit` for the process to exit (it stays
/// a zombie: the harness reaps it in `stop()`). Returns how long it took.
fn sigterm_and_wait(pid: u32, limit: Duration) -> Option<Duration> {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {pid}: {status}");
    let start = Instant::now();
    while start.elapsed() < limit {
        if matches!(proc_state(pid), 'Z' | 'X' | '?') {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The harness gives a server 10 s to exit after SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn sigterm_with_idle_clients_exits_promptly() {
    let server = Server::start(&[]);
    assert_serves(&server, 15);
    let pid = server.pid();
    // Idle after the client flags, idle after GO, and half a request header.
    let mut negotiating = Client::start(&server, CLIENT_FLAGS);
    let mut transmitting = Client::start(&server, CLIENT_FLAGS);
    transmitting.go("");
    let mut half = Client::start_unix(&server, CLIENT_FLAGS);
    half.go("");
    half.send(&request_bytes(0, CMD_READ, 1, 0, 512, &[])[..10]);
    // And one with a read whose reply it has not read yet.
    let mut unread = Client::start(&server, CLIENT_FLAGS);
    unread.go("");
    unread.request(0, CMD_READ, 2, 0, 65536, &[]);
    thread::sleep(Duration::from_millis(200));

    let took = sigterm_and_wait(pid, EXIT_LIMIT);
    println!("exit after SIGTERM with idle clients: {took:?}");
    negotiating.expect_eof("negotiating client at shutdown");
    transmitting.expect_eof("idle transmitting client at shutdown");
    half.expect_eof("client with half a request header at shutdown");
    let (e, data) = unread.simple(2, 65536, "in-flight read at shutdown");
    assert_eq!((e, data.len()), (0, 65536), "the in-flight read is answered before the close");
    unread.expect_eof("after the in-flight read at shutdown");
    assert!(took.is_some(), "server did not exit within {EXIT_LIMIT:?} of SIGTERM with idle clients connected");
    let log = server.stop();
    assert!(log.contains("shutting down"), "no `shutting down` in the log:\n{log}");
    assert!(!log.contains("panicked"), "server log shows a panic:\n{log}");
}

/// SIGTERM while `stalled` is connected: the server must exit within
/// [`EXIT_LIMIT`]. If it does not, the stalled client is closed to show
/// that it was what the server waited for.
fn sigterm_with_stalled_client(server: Server, stalled: Client, what: &str) {
    let pid = server.pid();
    let took = sigterm_and_wait(pid, EXIT_LIMIT);
    println!("{what}: exit after SIGTERM: {took:?}");
    let mut closed_after = None;
    if took.is_none() {
        let t = Instant::now();
        drop(stalled);
        while t.elapsed() < Duration::from_secs(25) && !matches!(proc_state(pid), 'Z' | 'X' | '?') {
            thread::sleep(Duration::from_millis(20));
        }
        closed_after = Some(t.elapsed());
        println!("{what}: server state {:?} {:?} after the stalled client closed", proc_state(pid), t.elapsed());
    }
    assert!(
        took.is_some(),
        "{what}: server did not exit within {EXIT_LIMIT:?} of SIGTERM; once that client closed its socket it \
         exited {closed_after:?} later"
    );
    let log = server.stop();
    assert!(!log.contains("panicked"), "server log shows a panic:\n{log}");
}

/// A client that stalls in the middle of a WRITE payload: shutdown must not
/// wait for it (the request never became in-flight work).
#[test]
fn sigterm_with_client_stalled_mid_write_payload() {
    let server = Server::start(&[]);
    assert_serves(&server, 16);
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.go("");
    c.request(0, CMD_WRITE, 1, 0, 65536, &[0x33; 1000]);
    thread::sleep(Duration::from_millis(200));
    sigterm_with_stalled_client(server, c, "client stalled mid-WRITE-payload");
}

/// A client that floods reads and never reads the replies: shutdown must not
/// wait for it forever.
#[test]
fn sigterm_with_client_not_reading_replies() {
    let server = Server::start(&[]);
    assert_serves(&server, 17);
    let mut c = Client::start(&server, CLIENT_FLAGS);
    c.go("");
    c.w.set_write_timeout(Duration::from_millis(500));
    let batch: Vec<u8> = (0..256u64).flat_map(|i| request_bytes(0, CMD_READ, i, i * 4096, 4096, &[])).collect();
    let start = Instant::now();
    let mut sent = 0usize;
    let blocked = loop {
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        match c.w.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break true,
            Err(e) => panic!("read flood: {e}"),
        }
    };
    println!("read flood blocked: {blocked} after {} KiB", sent / 1024);
    assert!(blocked, "the read flood was never pushed back");
    sigterm_with_stalled_client(server, c, "client not reading its replies");
}
