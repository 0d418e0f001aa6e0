//! Recovery: read every segment in id order, rebuild the index, and decide what damage
//! means. A torn tail (unsynced data cut short by a crash) is dropped with a log line.
//! Damage anywhere else refuses to start unless `RecoveryMode::TolerateCorruption`.
//!
//! How damage is placed: each segment header records where the previous segment's records
//! end, so every segment but the last must be read cleanly up to that point. In the last
//! segment, every record carries `synced_to`, the offset known durable when it was written:
//! a damaged record followed by a valid one whose `synced_to` lies past the damage was
//! synced once, so it is corruption, not a torn tail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use super::record::{RecordHeader, RecordKind, HEADER_LEN};
use super::segment::{Segment, SegmentHeader, DATA_START, SEGMENT_HEADER_LEN};
use super::{RecoveryMode, WalError};
use crate::io::{File, FileSystem};
use crate::store::index::{BlockState, Entry, Index};

/// What replay found.
pub struct Replayed {
    /// Valid segments in id order.
    pub segments: Vec<Arc<Segment>>,
    /// Slot files holding no valid segment, free for reuse.
    pub free_slots: Vec<(String, Arc<dyn File>)>,
    /// Id and valid end of the newest segment, `(0, 0)` for an empty log.
    pub last: (u64, u64),
    pub next_seq: u64,
    pub next_slot: u64,
    pub records: u64,
    /// Bytes of torn or damaged records dropped.
    pub dropped_bytes: u64,
}

struct Found {
    header: SegmentHeader,
    slot: String,
    file: Arc<dyn File>,
    path: PathBuf,
}

/// Replay the log from position `from` (segment, offset): what lies before it is already in
/// chunks, as the checkpoint that named `from` says; older segments are free slots.
pub fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    volume_id: [u8; 16],
    mode: RecoveryMode,
    index: &Index,
    from: (u64, u64),
) -> Result<Replayed, WalError> {
    let mut found = Vec::new();
    let mut free_slots = Vec::new();
    let mut next_slot = 1;
    let listing = fs.list(dir).map_err(|e| WalError::io(format!("listing {}", dir.display()), e))?;
    for path in listing {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        let Some(n) =
            name.strip_prefix("wal-").and_then(|r| r.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        next_slot = next_slot.max(n + 1);
        let file = fs.open(&path, false).map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
        let mut hb = [0u8; SEGMENT_HEADER_LEN];
        let header = match file.read_exact_at(&mut hb, 0) {
            Ok(()) => SegmentHeader::decode(&hb),
            Err(_) => Err(super::segment::SegmentHeaderError::Magic),
        };
        match header {
            Ok(h) if h.volume_id != volume_id => return Err(WalError::ForeignSegment { path }),
            Ok(h) if h.id < from.0 => free_slots.push((name, file)),
            Ok(header) => found.push(Found { header, slot: name, file, path }),
            // A header whose checksum holds but whose version is unknown was written by a
            // newer build: its records may be data this build cannot read. Refuse, rather
            // than take the slot for an unused one.
            Err(super::segment::SegmentHeaderError::Version(version)) => {
                return Err(WalError::Version {
                    path,
                    version,
                    min: super::segment::SEGMENT_VERSION_MIN,
                    max: super::segment::SEGMENT_VERSION,
                })
            }
            // A file written through with zeroes and never used (`prepare`).
            Err(_) if hb.iter().all(|&b| b == 0) => {
                debug!(path = %path.display(), "unused WAL slot");
                free_slots.push((name, file));
            }
            Err(e) => {
                // Headers are synced before a segment takes records, so a bad header is a
                // segment that never held any (a crash while it was being created).
                warn!(path = %path.display(), error = %e, "WAL slot holds no valid segment; it will be reused");
                free_slots.push((name, file));
            }
        }
    }
    found.sort_by_key(|f| f.header.id);

    if from.0 > 0 && found.first().is_none_or(|f| f.header.id != from.0) {
        let detail = format!("the checkpoint resumes the log at segment {} but it is missing", from.0);
        damage(mode, dir, &detail)?;
    }
    let mut out =
        Replayed { segments: Vec::new(), free_slots, last: from, next_seq: 1, next_slot, records: 0, dropped_bytes: 0 };
    for i in 0..found.len() {
        let f = &found[i];
        let next = found.get(i + 1);
        if let Some(n) = next {
            if n.header.prev_id != f.header.id {
                let detail = format!(
                    "segment {} follows segment {} but names {} as its predecessor: a segment is missing",
                    n.header.id, f.header.id, n.header.prev_id
                );
                damage(mode, &n.path, &detail)?;
            }
        }
        // Where this segment's records must end, if a later segment says so.
        let bound = next.filter(|n| n.header.prev_id == f.header.id).map(|n| n.header.prev_end);
        let skip_to = if f.header.id == from.0 { from.1 } else { 0 };
        let (end, records) = scan_segment(f, bound, skip_to, mode, index, &mut out)?;
        out.last = (f.header.id, end);
        out.segments.push(Arc::new(Segment::new(f.header.id, f.slot.clone(), Arc::clone(&f.file), end, records)));
    }
    if out.records > 0 || out.dropped_bytes > 0 {
        info!(
            segments = out.segments.len(),
            records = out.records,
            dropped_bytes = out.dropped_bytes,
            blocks = index.len(),
            "WAL replayed"
        );
    }
    Ok(out)
}

fn damage(mode: RecoveryMode, path: &Path, detail: &str) -> Result<(), WalError> {
    match mode {
        RecoveryMode::TolerateTail => Err(WalError::Corrupt { path: path.to_owned(), detail: detail.to_owned() }),
        RecoveryMode::TolerateCorruption => {
            error!(path = %path.display(), "WAL damage tolerated, data in it is lost: {detail}");
            Ok(())
        }
    }
}

/// A record read from the segment image: header and its offset in the image.
#[derive(Clone, Copy)]
struct Rec {
    header: RecordHeader,
    at: usize,
}

/// Try to read a valid record of `segment` at `at` in `img`.
fn record_at(img: &[u8], at: usize, segment: u64) -> Option<Rec> {
    let hb: &[u8; HEADER_LEN] = img.get(at..at + HEADER_LEN)?.try_into().ok()?;
    let header = RecordHeader::decode(hb).ok()?;
    if header.segment != segment {
        return None;
    }
    let payload = img.get(at + HEADER_LEN..at + HEADER_LEN + header.data_len as usize)?;
    RecordHeader::verify(hb, payload).ok()?;
    Some(Rec { header, at })
}

/// The first valid record at or after `start`. Records start on 16-byte boundaries.
fn next_valid(img: &[u8], start: usize, segment: u64) -> Option<Rec> {
    let magic = super::record::RECORD_MAGIC.to_le_bytes();
    (start.next_multiple_of(16)..img.len().saturating_sub(HEADER_LEN))
        .step_by(16)
        .filter(|&at| img[at..at + 4] == magic)
        .find_map(|at| record_at(img, at, segment))
}

/// Bytes of a record of `segment` that starts at `at` but does not check out (its header
/// parses, its payload is short or fails the checksum); `None` if nothing starts there.
fn torn_len(img: &[u8], at: usize, segment: u64) -> Option<u64> {
    let hb: &[u8; HEADER_LEN] = img.get(at..at + HEADER_LEN)?.try_into().ok()?;
    let h = RecordHeader::decode(hb).ok().filter(|h| h.segment == segment)?;
    Some(h.total_len().min((img.len() - at) as u64))
}

/// Replay one segment into the index; returns the absolute offset where its valid records end.
fn scan_segment(
    f: &Found,
    bound: Option<u64>,
    skip_to: u64,
    mode: RecoveryMode,
    index: &Index,
    out: &mut Replayed,
) -> Result<(u64, Vec<(RecordHeader, u64)>), WalError> {
    let len = f.file.size().map_err(|e| WalError::io(format!("reading {}", f.path.display()), e))?;
    let limit = bound.unwrap_or(len);
    if limit > len || limit < DATA_START {
        damage(mode, &f.path, &format!("records should end at {limit} but the file holds {len} bytes"))?;
    }
    let limit = limit.clamp(DATA_START, len.max(DATA_START));
    let mut img = vec![0u8; (limit - DATA_START) as usize];
    f.file.read_exact_at(&mut img, DATA_START).map_err(|e| WalError::io(format!("reading {}", f.path.display()), e))?;
    let id = f.header.id;
    let mut pos = 0usize;
    // The records accepted, for the segment's directory: the spill reads only those, and
    // never the bytes of a damaged record dropped here.
    let mut records = Vec::new();
    while pos < img.len() {
        if let Some(r) = record_at(&img, pos, id) {
            let at = DATA_START + r.at as u64;
            if at >= skip_to {
                apply(index, &r.header, id, at, &f.path, out)?;
            }
            if r.header.kind != RecordKind::Pad {
                records.push((r.header, at));
            }
            pos += r.header.total_len() as usize;
            continue;
        }
        // The records stop here. Is that the end, a torn tail, or damage?
        let at = DATA_START + pos as u64;
        let later = next_valid(&img, pos + 16, id);
        if bound.is_none() {
            // The newest segment. Valid records past this point that were all written
            // before anything past it was synced are a torn tail, dropped with the rest.
            let mut tail_end = None;
            let mut next = later;
            let mut synced_past = false;
            while let Some(r) = next {
                if u64::from(r.header.synced_to) > at {
                    synced_past = true;
                    break;
                }
                let end = r.at + r.header.total_len() as usize;
                tail_end = Some(end);
                next = next_valid(&img, end, id);
            }
            if !synced_past {
                let dropped = match tail_end {
                    Some(end) => (end - pos) as u64,
                    None => torn_len(&img, pos, id).unwrap_or(0),
                };
                if dropped > 0 {
                    warn!(path = %f.path.display(), offset = at, dropped_bytes = dropped,
                        "WAL tail torn by a crash: unsynced records from here on are dropped");
                    out.dropped_bytes += dropped;
                }
                break;
            }
        }
        let detail = match bound {
            Some(b) => format!("damaged record at offset {at}; the records should run to {b}"),
            None => format!("damaged record at offset {at}, followed by records written after it was synced"),
        };
        damage(mode, &f.path, &detail)?;
        // Tolerated: skip to the next valid record, or give up on this segment.
        match later {
            Some(r) => {
                out.dropped_bytes += (r.at - pos) as u64;
                pos = r.at;
            }
            None => {
                out.dropped_bytes += (img.len() - pos) as u64;
                break;
            }
        }
    }
    Ok((DATA_START + pos.min(img.len()) as u64, records))
}

/// Apply one durable record to the index.
fn apply(
    index: &Index,
    h: &RecordHeader,
    segment: u64,
    at: u64,
    path: &Path,
    out: &mut Replayed,
) -> Result<(), WalError> {
    out.records += 1;
    out.next_seq = out.next_seq.max(h.seq + 1);
    match h.kind {
        RecordKind::Data { compressed } => {
            // An LZ4 record was checked against the CRC of its stored (compressed) payload;
            // a read decompresses it, and a payload that does not decompress is then an
            // error, never zeroes. Segments are at most 4 GiB (`VolumeConfig::validate`), so
            // placing a block cannot fail for a segment this program wrote.
            for k in 0..h.count {
                let state = BlockState::in_wal_record(segment, at, compressed, k).ok_or_else(|| WalError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("compressed record at offset {at}, past 4 GiB"),
                })?;
                index.set(h.block + u64::from(k), Some(Entry { seq: h.seq, state }));
            }
        }
        RecordKind::Zero { keep_allocated } => {
            index.zero_range(h.block, u64::from(h.count), keep_allocated, h.seq);
        }
        RecordKind::Pad => {}
    }
    Ok(())
}

/// Bytes of a segment range, and its records with their absolute offsets.
pub type SegmentImage = (Vec<u8>, Vec<(RecordHeader, u64)>);

/// The records of one segment between two offsets, for the spiller: every record there is
/// synced, so anything that does not check out is damage.
pub fn records_between(seg: &Segment, from: u64, to: u64) -> Result<SegmentImage, WalError> {
    let from = from.max(DATA_START);
    let mut img = vec![0u8; to.saturating_sub(from) as usize];
    seg.file.read_exact_at(&mut img, from).map_err(|e| WalError::io(format!("reading WAL segment {}", seg.slot), e))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < img.len() {
        let r = record_at(&img, pos, seg.id).ok_or_else(|| WalError::Corrupt {
            path: PathBuf::from(&seg.slot),
            detail: format!("no valid record at synced offset {}", from + pos as u64),
        })?;
        out.push((r.header, from + pos as u64));
        pos += r.header.total_len() as usize;
    }
    Ok((img, out))
}
