//! spillway: a userspace virtual block device served over NBD.

pub mod cli;
pub mod error;
pub mod logging;
pub mod memory_volume;
pub mod serve;
pub mod units;
