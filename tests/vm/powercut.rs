//! `spillway-powercut`: the workload and the read-back of the power-cut test
//! (tests/vm_power_cut.rs, docs/testing.md). A small NBD client over TCP, std only:
//! fixed newstyle handshake, `NBD_OPT_GO` on the default export, simple replies.
//!
//! ```text
//! spillway-powercut write --addr HOST:PORT --blocks N --gen G --seed S [--window W] [--max-writes M]
//! spillway-powercut read  --addr HOST:PORT --blocks N
//! ```
//!
//! `write` keeps up to W (default 8) 4 KiB WRITEs in flight over blocks [0, N), never two on
//! one block at once (so per block, issue order is apply order); one in 8 has FUA, and every
//! 16 writes a FLUSH goes out. It prints one line per event, in the order the events happen,
//! and the host reads them off the serial console:
//!
//! ```text
//! @@pc writing gen G     the write phase starts
//! A B N                  WRITE of version N to block B: reply arrived, no error
//! U B N                  the same for a FUA write
//! S K                    FLUSH K is about to be sent (it covers every A line printed before)
//! F K                    FLUSH K: reply arrived, no error
//! E ...                  an error reply (the process then exits 1)
//! ```
//!
//! Version numbers N grow through one write phase, so for one block a larger N is a later
//! write. It runs until M writes (default: no limit) or until the machine dies under it.
//!
//! `read` reads every block and prints `R B G N` (version N of generation G), `R B Z` (all
//! zeros) or `R B BAD why` (torn, garbage or another block's data), then `@@pc read done N`.
//!
//! A block identifies itself: magic, block number, generation and version, filler derived
//! from those, and a CRC32C of all of it in the last 4 bytes. So a block read back is zeros,
//! exactly one written version, or detectably bad.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

const BS: usize = 4096;
const MAGIC: &[u8; 8] = b"SPWPCUT1";

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_FLAG_FUA: u16 = 1;
/// Cookies of FLUSH requests have this bit set; WRITE cookies are their version number.
const FLUSH_COOKIE: u64 = 1 << 63;

type Res<T> = Result<T, String>;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content of version `n` of generation `gen` for `block`.
fn block_content(block: u64, gen: u64, n: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b[16..24].copy_from_slice(&gen.to_le_bytes());
    b[24..32].copy_from_slice(&n.to_le_bytes());
    let mut state = block ^ gen.rotate_left(40) ^ n.rotate_left(20);
    for chunk in b[32..BS - 4].chunks_mut(8) {
        let v = splitmix(&mut state).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let crc = spillway::crc::crc32c(&b[..BS - 4]);
    b[BS - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What a block read back holds, as one `R` line.
fn describe_block(block: u64, b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return format!("R {block} Z");
    }
    let crc = u32::from_le_bytes(b[BS - 4..].try_into().expect("4 bytes"));
    if &b[0..8] != MAGIC || spillway::crc::crc32c(&b[..BS - 4]) != crc {
        // Which 512-byte sectors are zero helps tell a torn write from garbage.
        let zero: String = b.chunks(512).map(|s| if s.iter().all(|&x| x == 0) { '0' } else { 'x' }).collect();
        return format!("R {block} BAD checksum sectors={zero} head={}", hex(&b[..32]));
    }
    let (owner, gen, n) = (u64_at(b, 8), u64_at(b, 16), u64_at(b, 24));
    if owner != block {
        return format!("R {block} BAD holds block {owner}'s data (gen {gen} version {n})");
    }
    if block_content(block, gen, n) != b {
        return format!("R {block} BAD filler does not match its header (gen {gen} version {n})");
    }
    format!("R {block} {gen} {n}")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Conn {
    rd: TcpStream,
    wr: BufWriter<TcpStream>,
    size: u64,
    flags: u16,
}

fn read_exact(s: &mut TcpStream, n: usize) -> Res<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).map_err(|e| format!("read {n} bytes: {e}"))?;
    Ok(b)
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().expect("2"))
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4"))
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8"))
}

impl Conn {
    /// Fixed newstyle handshake and `NBD_OPT_GO` for the default (empty-named) export.
    fn connect(addr: &str) -> Res<Conn> {
        let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let h = read_exact(&mut s, 18)?;
        if be_u64(&h[0..]) != NBDMAGIC || be_u64(&h[8..]) != IHAVEOPT {
            return Err(format!("not a newstyle NBD server: {}", hex(&h)));
        }
        let sflags = be_u16(&h[16..]);
        if sflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err("server is not fixed newstyle".into());
        }
        let cflags = u32::from(FLAG_FIXED_NEWSTYLE | (sflags & FLAG_NO_ZEROES));
        let mut msg = cflags.to_be_bytes().to_vec();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&6u32.to_be_bytes()); // name length (u32) + number of info requests (u16)
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&msg).map_err(|e| format!("send OPT_GO: {e}"))?;
        let mut export = None;
        loop {
            let r = read_exact(&mut s, 20)?;
            let (magic, opt, typ, len) = (be_u64(&r), be_u32(&r[8..]), be_u32(&r[12..]), be_u32(&r[16..]));
            if magic != OPT_REPLY_MAGIC || opt != OPT_GO {
                return Err(format!("bad option reply {}", hex(&r)));
            }
            let data = read_exact(&mut s, len as usize)?;
            match typ {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && be_u16(&data) == INFO_EXPORT => {
                    export = Some((be_u64(&data[2..]), be_u16(&data[10..])));
                }
                REP_INFO => {}
                t if t & 0x8000_0000 != 0 => {
                    return Err(format!("OPT_GO refused: type {t:#x}: {}", String::from_utf8_lossy(&data)))
                }
                t => return Err(format!("unexpected option reply type {t}")),
            }
        }
        let (size, flags) = export.ok_or("OPT_GO acked without NBD_INFO_EXPORT")?;
        let wr = BufWriter::with_capacity(64 * 1024, s.try_clone().map_err(|e| format!("clone: {e}"))?);
        Ok(Conn { rd: s, wr, size, flags })
    }

    fn send(&mut self, typ: u16, flags: u16, cookie: u64, offset: u64, data: &[u8], len: u32) -> Res<()> {
        let mut h = Vec::with_capacity(28);
        h.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&typ.to_be_bytes());
        h.extend_from_slice(&cookie.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        self.wr.write_all(&h).and_then(|_| self.wr.write_all(data)).map_err(|e| format!("send: {e}"))
    }

    fn push(&mut self) -> Res<()> {
        self.wr.flush().map_err(|e| format!("send: {e}"))
    }

    /// One simple reply: (error, cookie).
    fn reply(&mut self) -> Res<(u32, u64)> {
        let r = read_exact(&mut self.rd, 16)?;
        if be_u32(&r) != SIMPLE_REPLY_MAGIC {
            return Err(format!("bad reply magic: {}", hex(&r)));
        }
        Ok((be_u32(&r[4..]), be_u64(&r[8..])))
    }

    fn disconnect(mut self) {
        let _ = self.send(CMD_DISC, 0, 0, 0, &[], 0).and_then(|_| self.push());
    }
}

struct Args {
    addr: String,
    blocks: u64,
    gen: u64,
    seed: u64,
    window: usize,
    max_writes: u64,
}

fn parse(args: &[String]) -> Res<Args> {
    let mut a = Args { addr: String::new(), blocks: 0, gen: 0, seed: 1, window: 8, max_writes: u64::MAX };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--addr" => a.addr = v.clone(),
            "--blocks" => a.blocks = num()?,
            "--gen" => a.gen = num()?,
            "--seed" => a.seed = num()?,
            "--window" => a.window = num()? as usize,
            "--max-writes" => a.max_writes = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.addr.is_empty() || a.window == 0 || a.blocks <= a.window as u64 {
        return Err("--addr and --blocks are required; --window must be > 0 and below --blocks".into());
    }
    Ok(a)
}

fn check_size(c: &Conn, a: &Args) -> Res<()> {
    if c.size < a.blocks * BS as u64 {
        return Err(format!("export is {} bytes, smaller than {} blocks", c.size, a.blocks));
    }
    Ok(())
}

fn read_all(a: &Args, out: &mut impl Write) -> Res<()> {
    let mut c = Conn::connect(&a.addr)?;
    check_size(&c, a)?;
    for b in 0..a.blocks {
        c.send(CMD_READ, 0, b, b * BS as u64, &[], BS as u32)?;
        c.push()?;
        let (err, cookie) = c.reply()?;
        if err != 0 || cookie != b {
            return Err(format!("READ of block {b}: error {err}, cookie {cookie}"));
        }
        let data = read_exact(&mut c.rd, BS)?;
        line(out, &describe_block(b, &data))?;
    }
    c.disconnect();
    line(out, &format!("@@pc read done {}", a.blocks))
}

fn line(out: &mut impl Write, s: &str) -> Res<()> {
    // One write per line, so lines from other processes on the console never split one.
    out.write_all(format!("{s}\n").as_bytes()).and_then(|_| out.flush()).map_err(|e| format!("stdout: {e}"))
}

fn write_phase(a: &Args, out: &mut impl Write) -> Res<()> {
    let mut c = Conn::connect(&a.addr)?;
    check_size(&c, a)?;
    if c.flags & TFLAG_SEND_FLUSH == 0 || c.flags & TFLAG_SEND_FUA == 0 {
        return Err(format!("server does not advertise FLUSH and FUA (flags {:#x})", c.flags));
    }
    let mut rng = a.seed ^ a.gen.rotate_left(32);
    let mut inflight: HashMap<u64, (u64, bool)> = HashMap::new(); // version -> (block, fua)
    let mut busy: HashSet<u64> = HashSet::new(); // blocks with a write in flight
    let mut flush_inflight = false;
    let (mut issued, mut flushes) = (0u64, 0u64);
    line(out, &format!("@@pc writing gen {}", a.gen))?;
    loop {
        while issued < a.max_writes && inflight.len() < a.window {
            let block = loop {
                let b = splitmix(&mut rng) % a.blocks;
                if !busy.contains(&b) {
                    break b;
                }
            };
            issued += 1;
            let n = issued;
            let fua = splitmix(&mut rng) % 8 == 0;
            let data = block_content(block, a.gen, n);
            c.send(CMD_WRITE, if fua { CMD_FLAG_FUA } else { 0 }, n, block * BS as u64, &data, BS as u32)?;
            busy.insert(block);
            inflight.insert(n, (block, fua));
            if issued % 16 == 0 && !flush_inflight {
                flushes += 1;
                // Printed before it is sent: it covers every A line above it.
                line(out, &format!("S {flushes}"))?;
                c.send(CMD_FLUSH, 0, FLUSH_COOKIE | flushes, 0, &[], 0)?;
                flush_inflight = true;
            }
        }
        c.push()?;
        if inflight.is_empty() && !flush_inflight {
            break;
        }
        let (err, cookie) = c.reply()?;
        if cookie & FLUSH_COOKIE != 0 {
            if err != 0 {
                line(out, &format!("E flush {} error {err}", cookie & !FLUSH_COOKIE))?;
                return Err("error reply to FLUSH".into());
            }
            flush_inflight = false;
            line(out, &format!("F {}", cookie & !FLUSH_COOKIE))?;
            continue;
        }
        let (block, fua) = inflight.remove(&cookie).ok_or_else(|| format!("reply for unknown cookie {cookie}"))?;
        busy.remove(&block);
        if err != 0 {
            line(out, &format!("E write {block} {cookie} error {err}"))?;
            return Err("error reply to WRITE".into());
        }
        line(out, &format!("{} {block} {cookie}", if fua { 'U' } else { 'A' }))?;
    }
    c.disconnect();
    line(out, "@@pc write done")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let res = match args.first().map(String::as_str) {
        Some("write") => parse(&args[1..]).and_then(|a| write_phase(&a, &mut out)),
        Some("read") => parse(&args[1..]).and_then(|a| read_all(&a, &mut out)),
        _ => Err("usage: spillway-powercut write|read --addr HOST:PORT --blocks N [...]".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spillway-powercut: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_describes_itself_and_a_torn_one_is_bad() {
        let v1 = block_content(7, 2, 10);
        let v2 = block_content(7, 2, 11);
        assert_eq!(describe_block(7, &v1), "R 7 2 10");
        assert_eq!(describe_block(7, &[0u8; BS]), "R 7 Z");
        assert!(describe_block(8, &v1).starts_with("R 8 BAD holds block 7"));
        let mut torn = v1.clone();
        torn[2048..].copy_from_slice(&v2[2048..]);
        assert!(describe_block(7, &torn).starts_with("R 7 BAD checksum"), "{}", describe_block(7, &torn));
    }
}
