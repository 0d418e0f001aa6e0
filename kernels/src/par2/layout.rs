//! How a file is cut into slices, and the Reed-Solomon constants of each slice.

use super::Par2Error;
use crate::gf16::{exp2, field::ORDER};

/// Most input slices one recovery set can hold: the exponents coprime to 65535.
pub const MAX_SOURCE_SLICES: u64 = 32768;
/// Source slices the default layout aims for (par2cmdline's default block count).
pub const TARGET_SOURCE_SLICES: u64 = 2000;
/// The smallest slice the default layout chooses (PAR2 itself allows 4).
pub const MIN_SLICE_SIZE: u64 = 64;

/// The shape of a recovery set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Par2Params {
    /// Bytes per slice, a multiple of 4.
    pub slice_size: u64,
    /// Recovery slices to write, with exponents `0..recovery_slices`.
    pub recovery_slices: u32,
}

impl Par2Params {
    /// par2cmdline's default shape: about 2000 source slices (slices of at least 64 bytes),
    /// and `ceil(source slices * percent / 100)` recovery slices (at least one when
    /// `redundancy_percent > 0`).
    pub fn for_len(len: u64, redundancy_percent: u32) -> Par2Params {
        let slice_size = len.div_ceil(TARGET_SOURCE_SLICES).next_multiple_of(4).max(MIN_SLICE_SIZE);
        let source = len.div_ceil(slice_size);
        let recovery = (source * redundancy_percent as u64).div_ceil(100);
        let recovery = if redundancy_percent > 0 { recovery.max(1) } else { 0 };
        Par2Params { slice_size, recovery_slices: recovery.min(u32::MAX as u64) as u32 }
    }

    /// Input slices for a file of `len` bytes.
    pub fn source_slices(&self, len: u64) -> u64 {
        len.div_ceil(self.slice_size)
    }

    /// Reject shapes PAR 2.0 cannot express.
    pub fn check(&self, len: u64) -> Result<(), Par2Error> {
        if self.slice_size == 0 || self.slice_size % 4 != 0 {
            return Err(Par2Error::InvalidParams(format!(
                "slice size {} is not a positive multiple of 4",
                self.slice_size
            )));
        }
        if self.source_slices(len) > MAX_SOURCE_SLICES {
            return Err(Par2Error::InvalidParams(format!(
                "{} source slices: PAR2 allows at most {MAX_SOURCE_SLICES}; use larger slices",
                self.source_slices(len)
            )));
        }
        if self.recovery_slices >= ORDER {
            return Err(Par2Error::InvalidParams(format!("{} recovery slices: at most 65534", self.recovery_slices)));
        }
        Ok(())
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The log (base 2) of each input slice's constant, in order: n = 1, 2, 4, 7, 8, 11, ...
/// (every n with gcd(n, 65535) = 1, ascending), as PAR 2.0 and par2cmdline assign them.
pub fn input_logs(count: usize) -> Result<Vec<u32>, Par2Error> {
    let out: Vec<u32> = (1..ORDER).filter(|&n| gcd(n, ORDER) == 1).take(count).collect();
    if out.len() < count {
        return Err(Par2Error::InvalidParams(format!(
            "{count} source slices: PAR2 allows at most {MAX_SOURCE_SLICES}"
        )));
    }
    Ok(out)
}

/// The constant `2^n` of each input slice, in order (see [`input_logs`]).
pub fn input_constants(count: usize) -> Result<Vec<u16>, Par2Error> {
    Ok(input_logs(count)?.into_iter().map(exp2).collect())
}

/// The log of the coefficient of input slice `log` in the recovery slice with `exponent`:
/// `(2^log)^exponent = 2^(log * exponent)`.
pub fn coefficient_log(log: u32, exponent: u32) -> u32 {
    ((log as u64 * exponent as u64) % ORDER as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_skip_logs_sharing_a_factor_with_65535() {
        // 65535 = 3 * 5 * 17 * 257: the logs start 1, 2, 4, 7, 8, 11, 13, 14, 16, 19.
        let logs = [1u32, 2, 4, 7, 8, 11, 13, 14, 16, 19];
        let want: Vec<u16> = logs.iter().map(|&n| exp2(n)).collect();
        assert_eq!(input_constants(10).unwrap(), want);
        assert_eq!(&want[..4], &[2, 4, 16, 128]);
        assert_eq!(input_constants(MAX_SOURCE_SLICES as usize).unwrap().len(), MAX_SOURCE_SLICES as usize);
        assert!(input_constants(MAX_SOURCE_SLICES as usize + 1).is_err());
    }

    #[test]
    fn default_shape_matches_par2cmdline_for_a_chunk() {
        let p = Par2Params::for_len(4 << 20, 5);
        assert_eq!(p.slice_size, 2100);
        assert_eq!(p.source_slices(4 << 20), 1998);
        assert_eq!(p.recovery_slices, 100);
        assert_eq!(Par2Params::for_len(4 << 20, 10).recovery_slices, 200);
        let small = Par2Params::for_len(1000, 5);
        assert_eq!((small.slice_size, small.source_slices(1000), small.recovery_slices), (64, 16, 1));
        assert_eq!(Par2Params::for_len(1000, 0).recovery_slices, 0);
        assert!(Par2Params { slice_size: 6, recovery_slices: 1 }.check(10).is_err());
        assert!(Par2Params { slice_size: 4, recovery_slices: 1 }.check(4 * MAX_SOURCE_SLICES + 1).is_err());
    }
}
