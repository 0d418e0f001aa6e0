//! Reads lent from the WAL: a reply sends blocks that are only in a WAL segment straight
//! from a read-only mapping of the segment's file, so the page cache is copied once, into
//! the socket, instead of into a buffer first and then into the socket.
//!
//! - **Only resident pages.** A run is lent only if `mincore` says every page of it is in
//!   the page cache. Sending then neither waits for the disk nor meets a read error halfway
//!   through a reply (the kernel would fail the send with `EFAULT`, ending the connection).
//!   Otherwise the read copies as before (`pread`), and a disk error is an `EIO` reply. A
//!   page the kernel reclaims between the check and the send is read back in by the send;
//!   only if that read fails does the connection end (`EFAULT`) instead of an `EIO` reply.
//!   The server never touches the mapped bytes itself, so a failed read is never a
//!   `SIGBUS`.
//! - **The bytes cannot change.** A lent segment is held (its `Arc` and a count,
//!   [`Segment::lend`]); the writer recycles other segments and leaves it until the reply is
//!   written. A record's bytes are never rewritten while its segment lives.
//! - **Bounded.** Lent bytes come out of the same reserve as lent arena blocks
//!   ([`crate::store::lend::LEND_RESERVE_BYTES`]), and at most a quarter of the WAL's
//!   segment files are lent at once ([`max_lent_segments`]), so that clients which stop
//!   reading their replies cannot take every file the writer turns over.
//! - Test seams do not map files ([`crate::io::File::map_read`]), so faults injected on
//!   reads still reach every read.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;
use nbd::LentBytes;
use parking_lot::RwLock;

use super::record::BLOCK_SIZE;
use super::segment::{Segment, SegmentLend};
use crate::store::index::{BlockState, Index};
use crate::store::lend::Reserved;

/// Bytes of one segment's mapping sent by a reply.
struct Piece {
    _held: SegmentLend,
    map: Arc<Mmap>,
    at: usize,
    len: usize,
}

/// WAL bytes lent to one reply; the segments and the reserve go back when it is dropped.
pub struct WalLent {
    pieces: Vec<Piece>,
    _reserved: Reserved,
}

impl LentBytes for WalLent {
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        out.extend(self.pieces.iter().map(|p| IoSlice::new(&p.map[p.at..p.at + p.len])));
    }
}

/// WAL segments that replies may hold at once, of a WAL of `max_wal_segments` files: a
/// quarter, at least one. Clients that stop reading their replies hold their segments for
/// as long as they like; the writer keeps the other files to turn over (the bound is soft:
/// replies lent at the same moment may each take the last place).
pub fn max_lent_segments(max_wal_segments: usize) -> usize {
    (max_wal_segments / 4).max(1)
}

/// Lend blocks `first..first + count` if every one is a raw block in a WAL segment, in
/// pages that are resident, and the segments they are in are lent already or fit under
/// `max_segments` lent at once; `None` means read them another way.
pub fn lend(
    index: &Index,
    segments: &RwLock<BTreeMap<u64, Arc<Segment>>>,
    first: u64,
    count: u64,
    max_segments: usize,
    reserved: Reserved,
) -> Option<WalLent> {
    // Runs of blocks back to back in one segment: (segment, offset, length).
    let mut runs: Vec<(u64, u64, usize)> = Vec::new();
    for b in first..first + count {
        let Some(BlockState::Pending { segment, offset }) = index.get(b).map(|e| e.state) else {
            return None;
        };
        match runs.last_mut() {
            Some((s, o, l)) if *s == segment && *o + *l as u64 == offset => *l += BLOCK_SIZE,
            _ => runs.push((segment, offset, BLOCK_SIZE)),
        }
    }
    let held: Vec<SegmentLend> = {
        let listed = segments.read();
        // A segment gone was recycled since the index named it: the block has moved on.
        let found: Vec<&Arc<Segment>> = runs.iter().map(|(s, _, _)| listed.get(s)).collect::<Option<_>>()?;
        // Segments this reply would newly hold, and whether that stays within the bound.
        let mut newly: Vec<u64> = Vec::new();
        for seg in found.iter().filter(|seg| !seg.is_lent()) {
            if !newly.contains(&seg.id) {
                newly.push(seg.id);
            }
        }
        if !newly.is_empty() && listed.values().filter(|s| s.is_lent()).count() + newly.len() > max_segments {
            return None;
        }
        found.into_iter().map(Segment::lend).collect()
    };
    let mut out = WalLent { pieces: Vec::with_capacity(runs.len()), _reserved: reserved };
    for ((_, offset, len), held) in runs.into_iter().zip(held) {
        let map = Arc::clone(held.segment().mapped()?);
        let at = usize::try_from(offset).ok()?;
        map.get(at..at.checked_add(len)?)?;
        out.pieces.push(Piece { _held: held, map, at, len });
    }
    out.resident().then_some(out)
}

impl WalLent {
    /// Whether every page of every piece is resident. The records of concurrent writes
    /// interleave in the log (at qd8, 1 MiB of a read spreads over about 8 MiB), so a
    /// read's runs lie near each other in few segments: the span of a segment's runs is
    /// checked with one `mincore` when it is at most 16 times their bytes, else each run
    /// alone. Pages between the runs were written as recently, so they are as resident.
    fn resident(&self) -> bool {
        // (mapping, start, end, bytes of runs) per segment, in the order first met.
        let mut spans: Vec<(&Arc<Mmap>, usize, usize, usize)> = Vec::new();
        for p in &self.pieces {
            match spans.iter_mut().find(|s| Arc::ptr_eq(s.0, &p.map)) {
                Some(s) => {
                    s.1 = s.1.min(p.at);
                    s.2 = s.2.max(p.at + p.len);
                    s.3 += p.len;
                }
                None => spans.push((&p.map, p.at, p.at + p.len, p.len)),
            }
        }
        spans.iter().all(|&(map, start, end, bytes)| {
            if end - start <= 16 * bytes {
                resident(&map[start..end])
            } else {
                self.pieces.iter().filter(|p| Arc::ptr_eq(map, &p.map)).all(|p| resident(&map[p.at..p.at + p.len]))
            }
        })
    }
}

/// Whether every page under `bytes` (inside a mapping) is in the page cache.
fn resident(bytes: &[u8]) -> bool {
    let page = page_size();
    let start = bytes.as_ptr() as usize / page * page;
    let end = bytes.as_ptr() as usize + bytes.len();
    // 8 MiB of 4 KiB pages per call.
    let mut vec = [0u8; 2048];
    let mut at = start;
    while at < end {
        let pages = (end - at).div_ceil(page).min(vec.len());
        // SAFETY: `at` is page aligned and `at..at + pages * page` lies in a live mapping
        // (the pages under `bytes`); mincore only reads the page tables and writes `vec`.
        let r = unsafe { nix::libc::mincore(at as *mut nix::libc::c_void, pages * page, vec.as_mut_ptr()) };
        if r != 0 || vec[..pages].iter().any(|v| v & 1 == 0) {
            return false;
        }
        at += pages * page;
    }
    true
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    })
}
