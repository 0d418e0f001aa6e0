//! The device behind an export: a durable volume, or a RAM volume for benchmarks.

use nbd::{BlockDevice, Extent, ZeroFlags};

use crate::error::VolumeError;
use crate::memory_volume::MemoryVolume;
use crate::volume::Volume;

pub enum Device {
    Durable(Volume),
    Memory(MemoryVolume),
}

impl Device {
    /// Sync and stop (durable volumes); nothing for RAM volumes.
    pub async fn close(&self) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.close().await,
            Device::Memory(_) => Ok(()),
        }
    }
}

impl BlockDevice for Device {
    type Error = VolumeError;

    fn size(&self) -> u64 {
        match self {
            Device::Durable(v) => v.size(),
            Device::Memory(v) => v.size(),
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.read(offset, buf).await,
            Device::Memory(v) => v.read(offset, buf).await,
        }
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.write(offset, data, fua).await,
            Device::Memory(v) => v.write(offset, data, fua).await,
        }
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.flush().await,
            Device::Memory(v) => v.flush().await,
        }
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.trim(offset, len, fua).await,
            Device::Memory(v) => v.trim(offset, len, fua).await,
        }
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), VolumeError> {
        match self {
            Device::Durable(v) => v.write_zeroes(offset, len, flags).await,
            Device::Memory(v) => v.write_zeroes(offset, len, flags).await,
        }
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        match self {
            Device::Durable(v) => v.block_status(offset, len).await,
            Device::Memory(v) => v.block_status(offset, len).await,
        }
    }
}
