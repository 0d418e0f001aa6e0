//! spillway: a userspace virtual block device served over NBD.

pub mod backend;
pub mod chunk;
pub mod cli;
pub mod codec;
pub mod config;
pub mod crc;
pub mod device;
pub mod error;
pub mod image;
pub mod inspect;
pub mod io;
pub mod logging;
pub mod memlock;
pub mod memory_volume;
pub mod metrics;
pub mod progress;
pub mod recover;
pub mod scrub;
pub mod serve;
pub mod store;
pub mod systemd;
pub mod units;
pub mod volume;
pub mod volume_meta;
pub mod wal;
