//! PAR 2.0 (Parchive) recovery data for one file, compatible with par2cmdline.
//!
//! [`create`] writes a complete `.par2` file (Main, FileDesc, IFSC, RecvSlic and Creator
//! packets) for a single input file; `par2 verify X.par2` accepts it and `par2 repair X.par2`
//! can use it. [`verify_and_repair`] does the repair in our own code: IFSC checksums find the
//! damaged slices, Gaussian elimination over GF(2^16) rebuilds them from recovery slices. See
//! `docs/codecs.md` for the exact use of the format.

mod create;
pub mod layout;
mod matrix;
pub mod packet;
pub mod packets;
mod repair;
pub mod set;

use thiserror::Error;

pub use create::{create, create_with, CREATOR};
pub use layout::Par2Params;
pub use repair::{verify, verify_and_repair, RepairOutcome, RepairReport};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Par2Error {
    #[error("invalid PAR2 parameters: {0}")]
    InvalidParams(String),
    #[error("no intact {0} packet in the PAR2 data")]
    MissingPacket(&'static str),
    #[error("malformed PAR2 data: {0}")]
    Malformed(&'static str),
    #[error("the PAR2 data protects {found:?}, not {expected:?}")]
    WrongFile { expected: String, found: String },
    #[error(
        "data lost: {} slice(s) damaged ({damaged:?}) but only {recovery_available} recovery slice(s) usable",
        damaged.len()
    )]
    Unrepairable { damaged: Vec<u32>, recovery_available: usize },
    #[error("the recovery slices at hand give a singular matrix; these slices cannot be solved")]
    Singular,
    #[error("repaired data still fails the file's MD5")]
    VerifyFailed,
}

#[cfg(test)]
mod tests;
