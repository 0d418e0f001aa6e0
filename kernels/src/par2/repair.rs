//! Verifying a file against its recovery set, and rebuilding damaged slices.

use std::ops::Range;

use super::create::slice_padded;
use super::layout::{coefficient_log, input_logs};
use super::matrix::invert;
use super::packet;
use super::set::RecoverySet;
use super::Par2Error;
use crate::gf16::{exp2, Kernel};

/// What [`verify_and_repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The data already matched the file's MD5; nothing was changed.
    Intact,
    /// Damaged slices were rebuilt and the data now matches the file's MD5.
    Repaired(RepairReport),
}

/// Exactly what was repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Bytes per slice in this recovery set.
    pub slice_size: u64,
    /// Indices of the slices that failed their checksums and were rebuilt, ascending.
    pub slices: Vec<u32>,
    /// The byte ranges of the file those slices cover (the last one may be short).
    pub byte_ranges: Vec<Range<u64>>,
    /// Exponents of the recovery slices used.
    pub recovery_used: Vec<u32>,
    /// The length the data had before repair, when it differed from the file's length.
    pub length_was: Option<u64>,
}

/// The slices of `data` that fail their IFSC checksums. `data` must be the file's length.
fn damaged_slices(set: &RecoverySet<'_>, data: &[u8]) -> Vec<u32> {
    let slice_size = set.main.slice_size as usize;
    let mut pad = Vec::new();
    let mut out = Vec::new();
    for (i, (md5, crc)) in set.ifsc.slices.iter().enumerate() {
        let s = slice_padded(data, slice_size, i, &mut pad);
        if crc32fast::hash(s) != *crc || packet::md5(&[s]) != *md5 {
            out.push(i as u32);
        }
    }
    out
}

/// Which slices of `data` (stored as `name`) are damaged according to `par2`; empty when the
/// data is intact. A length different from the recorded one counts the slices it touches.
pub fn verify(name: &str, data: &[u8], par2: &[u8]) -> Result<Vec<u32>, Par2Error> {
    let set = RecoverySet::parse(par2, name)?;
    if data.len() as u64 == set.file.length && packet::md5(&[data]) == set.file.md5 {
        return Ok(vec![]);
    }
    let mut fixed = data.to_vec();
    fixed.resize(set.file.length as usize, 0);
    Ok(damaged_slices(&set, &fixed))
}

/// Check `data` (stored as `name`) against the recovery set in `par2` and rebuild damaged
/// slices in place. On error `data` is left as it was.
pub fn verify_and_repair(name: &str, data: &mut Vec<u8>, par2: &[u8]) -> Result<RepairOutcome, Par2Error> {
    let set = RecoverySet::parse(par2, name)?;
    let length = usize::try_from(set.file.length).map_err(|_| Par2Error::Malformed("file length"))?;
    if data.len() == length && packet::md5(&[data]) == set.file.md5 {
        return Ok(RepairOutcome::Intact);
    }
    let mut work = data.clone();
    work.resize(length, 0);
    let damaged = damaged_slices(&set, &work);
    let recovery_used = if damaged.is_empty() { vec![] } else { rebuild(&set, &mut work, &damaged)? };
    if packet::md5(&[&work]) != set.file.md5 {
        return Err(Par2Error::VerifyFailed);
    }
    let slice_size = set.main.slice_size;
    let byte_ranges =
        damaged.iter().map(|&i| i as u64 * slice_size..((i as u64 + 1) * slice_size).min(set.file.length)).collect();
    let length_was = (data.len() != length).then_some(data.len() as u64);
    *data = work;
    Ok(RepairOutcome::Repaired(RepairReport { slice_size, slices: damaged, byte_ranges, recovery_used, length_was }))
}

/// Solve for the `damaged` slices of `work` from as many recovery slices; returns the
/// exponents used.
fn rebuild(set: &RecoverySet<'_>, work: &mut [u8], damaged: &[u32]) -> Result<Vec<u32>, Par2Error> {
    let k = damaged.len();
    if set.recovery.len() < k {
        return Err(Par2Error::Unrepairable { damaged: damaged.to_vec(), recovery_available: set.recovery.len() });
    }
    let slice_size = set.main.slice_size as usize;
    let logs = input_logs(set.ifsc.slices.len())?;
    let used = &set.recovery[..k];
    let kernel = Kernel::best();

    // R'_j = R_j - sum over intact slices i of c_i^e_j * slice_i: what the damaged ones owe.
    let mut owed: Vec<u8> = used.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let mut pad = Vec::new();
    let mut next_damaged = damaged.iter().peekable();
    for (i, &log) in logs.iter().enumerate() {
        if next_damaged.peek() == Some(&&(i as u32)) {
            next_damaged.next();
            continue;
        }
        let src = slice_padded(work, slice_size, i, &mut pad);
        for (dst, (e, _)) in owed.chunks_exact_mut(slice_size).zip(used) {
            kernel.mul_add_log(dst, src, coefficient_log(log, *e));
        }
    }

    // M[j][m] = c_{d_m}^{e_j}; the damaged slices are M^-1 * R'.
    let m: Vec<Vec<u16>> = used
        .iter()
        .map(|(e, _)| damaged.iter().map(|&d| exp2(coefficient_log(logs[d as usize], *e))).collect())
        .collect();
    let m_inv = invert(m).ok_or(Par2Error::Singular)?;
    let mut rebuilt = vec![0u8; slice_size];
    for (row, &d) in m_inv.iter().zip(damaged) {
        rebuilt.fill(0);
        for (&coeff, src) in row.iter().zip(owed.chunks_exact(slice_size)) {
            kernel.mul_add_coeff(&mut rebuilt, src, coeff);
        }
        let start = d as usize * slice_size;
        let end = (start + slice_size).min(work.len());
        work[start..end].copy_from_slice(&rebuilt[..end - start]);
    }
    Ok(used.iter().map(|(e, _)| *e).collect())
}
