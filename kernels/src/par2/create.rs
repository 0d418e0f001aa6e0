//! Writing a recovery set for one file: checksums, Reed-Solomon recovery slices, packets.

use super::layout::{coefficient_log, input_logs, Par2Params};
use super::packet::{self, Hash, TYPE_CREATOR, TYPE_FILE_DESC, TYPE_IFSC, TYPE_MAIN, TYPE_RECV_SLICE};
use super::packets::{file_id, FileDesc, Ifsc, Main};
use super::Par2Error;
use crate::gf16::Kernel;
use md5::{Digest, Md5};

/// The Creator packet's text (no version in it, so the pinned bytes stay put across releases).
pub const CREATOR: &str = "spillway";

/// Slice `index` of `data`, zero-padded to `slice_size` when it is the short last one.
pub(super) fn slice_padded<'a>(data: &'a [u8], slice_size: usize, index: usize, pad: &'a mut Vec<u8>) -> &'a [u8] {
    let start = index * slice_size;
    let end = (start + slice_size).min(data.len());
    if end - start == slice_size {
        return &data[start..end];
    }
    pad.clear();
    pad.extend_from_slice(&data[start..end]);
    pad.resize(slice_size, 0);
    pad
}

/// MD5 and CRC32 of every slice (each zero-padded to the slice size), and the MD5 of the
/// whole file, in one pass so that each slice is read from memory once.
pub(super) fn slice_checksums(data: &[u8], slice_size: usize) -> (Vec<(Hash, u32)>, Hash) {
    let mut pad = Vec::new();
    let mut file = Md5::new();
    let slices = (0..data.len().div_ceil(slice_size))
        .map(|i| {
            file.update(&data[i * slice_size..((i + 1) * slice_size).min(data.len())]);
            let s = slice_padded(data, slice_size, i, &mut pad);
            (packet::md5(&[s]), crc32fast::hash(s))
        })
        .collect();
    (slices, file.finalize().into())
}

/// The FileDesc of `data` stored under `name`, whose MD5 is `md5`.
pub(super) fn describe(name: &str, data: &[u8], md5: Hash) -> FileDesc {
    let md5_16k = packet::md5(&[&data[..data.len().min(16384)]]);
    FileDesc {
        file_id: file_id(&md5_16k, data.len() as u64, name),
        md5,
        md5_16k,
        length: data.len() as u64,
        name: name.to_owned(),
    }
}

/// Recovery slices with the given exponents, `R_e = sum_i c_i^e * slice_i`, computed in place:
/// the one for `exponents[j]` is `region[j * stride + offset..][..slice_size]`, which must
/// start zeroed. (`create_with` points them straight into the RecvSlic packet bodies.)
pub(super) fn recovery_into(
    data: &[u8],
    slice_size: usize,
    exponents: &[u32],
    region: &mut [u8],
    stride: usize,
    offset: usize,
) -> Result<(), Par2Error> {
    let logs = input_logs(data.len().div_ceil(slice_size))?;
    let kernel = Kernel::best();
    let mut pad = Vec::new();
    for (i, &log) in logs.iter().enumerate() {
        let src = slice_padded(data, slice_size, i, &mut pad);
        for (chunk, &e) in region.chunks_exact_mut(stride).zip(exponents) {
            kernel.mul_add_log(&mut chunk[offset..offset + slice_size], src, coefficient_log(log, e));
        }
    }
    Ok(())
}

/// A complete `.par2` file protecting `data` (stored as `file_name`) with `params`: packets
/// Main, FileDesc, IFSC, one RecvSlic per recovery slice, and Creator, in that order.
pub fn create_with(file_name: &str, data: &[u8], params: Par2Params) -> Result<Vec<u8>, Par2Error> {
    params.check(data.len() as u64)?;
    let slice_size = params.slice_size as usize;
    let (slices, md5) = slice_checksums(data, slice_size);
    let desc = describe(file_name, data, md5);
    let ifsc = Ifsc { file_id: desc.file_id, slices };
    let main = Main { slice_size: params.slice_size, file_ids: vec![desc.file_id], non_recovery_ids: vec![] };
    let main_body = main.encode();
    let set_id = packet::md5(&[&main_body]);
    let exponents: Vec<u32> = if data.is_empty() { vec![] } else { (0..params.recovery_slices).collect() };

    let mut out = Vec::with_capacity(exponents.len() * (slice_size + 68) + 1024 + 20 * ifsc.slices.len());
    packet::write(&mut out, &set_id, TYPE_MAIN, &[&main_body]);
    packet::write(&mut out, &set_id, TYPE_FILE_DESC, &[&desc.encode()]);
    packet::write(&mut out, &set_id, TYPE_IFSC, &[&ifsc.encode()]);
    // RecvSlic packets: header, exponent, slice; the slices are computed in place.
    let stride = packet::HEADER_LEN + 4 + slice_size;
    let start = out.len();
    out.resize(start + exponents.len() * stride, 0);
    let region = &mut out[start..];
    recovery_into(data, slice_size, &exponents, region, stride, packet::HEADER_LEN + 4)?;
    for (p, e) in region.chunks_exact_mut(stride).zip(&exponents) {
        p[packet::HEADER_LEN..packet::HEADER_LEN + 4].copy_from_slice(&e.to_le_bytes());
        packet::seal(p, &set_id, TYPE_RECV_SLICE);
    }
    packet::write(&mut out, &set_id, TYPE_CREATOR, &[CREATOR.as_bytes()]);
    Ok(out)
}

/// [`create_with`] in par2cmdline's default shape for `redundancy_percent` (see
/// [`Par2Params::for_len`]).
pub fn create(file_name: &str, data: &[u8], redundancy_percent: u32) -> Result<Vec<u8>, Par2Error> {
    create_with(file_name, data, Par2Params::for_len(data.len() as u64, redundancy_percent))
}
