//! Reading a `.par2` file back: the recovery set for one file.

use super::packet::{self, Hash, TYPE_FILE_DESC, TYPE_IFSC, TYPE_MAIN, TYPE_RECV_SLICE};
use super::packets::{FileDesc, Ifsc, Main};
use super::Par2Error;

/// The packets of one recovery set that describe a single file, with its usable recovery
/// slices (intact packets of the right size, one per exponent).
#[derive(Debug, Clone)]
pub struct RecoverySet<'a> {
    pub set_id: Hash,
    pub main: Main,
    pub file: FileDesc,
    pub ifsc: Ifsc,
    /// `(exponent, slice)` in the order found.
    pub recovery: Vec<(u32, &'a [u8])>,
}

impl<'a> RecoverySet<'a> {
    /// Parse `par2` and pick the set and file named `name`. Damaged packets are skipped;
    /// a set without intact Main, FileDesc and IFSC packets for the file is an error.
    pub fn parse(par2: &'a [u8], name: &str) -> Result<RecoverySet<'a>, Par2Error> {
        let packets = packet::scan(par2);
        let (set_id, main) = packets
            .iter()
            .filter(|p| &p.ptype == TYPE_MAIN && packet::md5(&[p.body]) == p.set_id)
            .find_map(|p| Main::decode(p.body).ok().map(|m| (p.set_id, m)))
            .ok_or(Par2Error::MissingPacket("Main"))?;
        let in_set = |ty: &'static [u8; 16]| packets.iter().filter(move |p| p.set_id == set_id && &p.ptype == ty);

        let descs: Vec<FileDesc> = in_set(TYPE_FILE_DESC)
            .filter_map(|p| FileDesc::decode(p.body).ok())
            .filter(|d| main.file_ids.contains(&d.file_id))
            .collect();
        let file = match descs.iter().find(|d| d.name == name) {
            Some(d) => d.clone(),
            None => {
                return Err(match descs.first() {
                    Some(d) => Par2Error::WrongFile { expected: name.to_owned(), found: d.name.clone() },
                    None => Par2Error::MissingPacket("FileDesc"),
                })
            }
        };
        let ifsc = in_set(TYPE_IFSC)
            .filter_map(|p| Ifsc::decode(p.body).ok())
            .find(|i| i.file_id == file.file_id)
            .ok_or(Par2Error::MissingPacket("IFSC"))?;
        if ifsc.slices.len() as u64 != file.length.div_ceil(main.slice_size) {
            return Err(Par2Error::Malformed("IFSC slice count does not match the file length"));
        }
        let mut recovery: Vec<(u32, &'a [u8])> = Vec::new();
        for p in in_set(TYPE_RECV_SLICE) {
            let Some((e, data)) = p.body.split_first_chunk::<4>() else { continue };
            let e = u32::from_le_bytes(*e);
            if data.len() as u64 == main.slice_size && !recovery.iter().any(|(x, _)| *x == e) {
                recovery.push((e, data));
            }
        }
        Ok(RecoverySet { set_id, main, file, ifsc, recovery })
    }
}
