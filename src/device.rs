//! The device behind an export: a durable volume, or a RAM volume for benchmarks, with
//! per-operation request, byte, error and latency metrics.

use std::time::Instant;

use nbd::pool::PooledBuf;
use nbd::{BlockDevice, Extent, ReadData, WriteBuffer, ZeroFlags};

use crate::error::VolumeError;
use crate::memory_volume::MemoryVolume;
use crate::metrics::OpMetrics;
use crate::volume::Volume;

pub enum Volumes {
    /// Boxed: a durable volume is far larger than a RAM one, and there is one per export.
    Durable(Box<Volume>),
    Memory(MemoryVolume),
}

pub struct Device {
    pub volume: Volumes,
    ops: Ops,
}

struct Ops {
    read: OpMetrics,
    write: OpMetrics,
    flush: OpMetrics,
    trim: OpMetrics,
    write_zeroes: OpMetrics,
    block_status: OpMetrics,
}

impl Device {
    pub fn new(volume: Volumes) -> Self {
        let ops = Ops {
            read: OpMetrics::new("read"),
            write: OpMetrics::new("write"),
            flush: OpMetrics::new("flush"),
            trim: OpMetrics::new("trim"),
            write_zeroes: OpMetrics::new("write_zeroes"),
            block_status: OpMetrics::new("block_status"),
        };
        Self { volume, ops }
    }

    /// Sync and stop (durable volumes); nothing for RAM volumes.
    pub async fn close(&self) -> Result<(), VolumeError> {
        match &self.volume {
            Volumes::Durable(v) => v.close().await,
            Volumes::Memory(_) => Ok(()),
        }
    }
}

/// Count a request in `m` once `$call` completes.
macro_rules! timed {
    ($m:expr, $bytes:expr, $call:expr) => {{
        let started = Instant::now();
        let r = $call;
        $m.record(started, $bytes, r.is_ok());
        r
    }};
}

impl BlockDevice for Device {
    type Error = VolumeError;

    fn size(&self) -> u64 {
        match &self.volume {
            Volumes::Durable(v) => v.size(),
            Volumes::Memory(v) => v.size(),
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        timed!(
            self.ops.read,
            buf.len() as u64,
            match &self.volume {
                Volumes::Durable(v) => v.read(offset, buf).await,
                Volumes::Memory(v) => v.read(offset, buf).await,
            }
        )
    }

    async fn read_data(&self, offset: u64, buf: PooledBuf) -> Result<ReadData, VolumeError> {
        let len = buf.len() as u64;
        timed!(
            self.ops.read,
            len,
            match &self.volume {
                Volumes::Durable(v) => v.read_data(offset, buf).await,
                Volumes::Memory(v) => v.read_data(offset, buf).await,
            }
        )
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError> {
        timed!(
            self.ops.write,
            data.len() as u64,
            match &self.volume {
                Volumes::Durable(v) => v.write(offset, data, fua).await,
                Volumes::Memory(v) => v.write(offset, data, fua).await,
            }
        )
    }

    fn write_buffer(&self, offset: u64, len: u32) -> Option<Box<dyn WriteBuffer>> {
        match &self.volume {
            Volumes::Durable(v) => v.write_buffer(offset, len),
            Volumes::Memory(_) => None,
        }
    }

    async fn write_received(&self, offset: u64, mut buf: Box<dyn WriteBuffer>, fua: bool) -> Result<(), VolumeError> {
        let len: usize = buf.slices_mut().iter().map(|s| s.len()).sum();
        timed!(
            self.ops.write,
            len as u64,
            match &self.volume {
                Volumes::Durable(v) => v.write_received(offset, buf, fua).await,
                Volumes::Memory(v) => v.write_received(offset, buf, fua).await,
            }
        )
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        timed!(
            self.ops.flush,
            0,
            match &self.volume {
                Volumes::Durable(v) => v.flush().await,
                Volumes::Memory(v) => v.flush().await,
            }
        )
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        timed!(
            self.ops.trim,
            len,
            match &self.volume {
                Volumes::Durable(v) => v.trim(offset, len, fua).await,
                Volumes::Memory(v) => v.trim(offset, len, fua).await,
            }
        )
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), VolumeError> {
        timed!(
            self.ops.write_zeroes,
            len,
            match &self.volume {
                Volumes::Durable(v) => v.write_zeroes(offset, len, flags).await,
                Volumes::Memory(v) => v.write_zeroes(offset, len, flags).await,
            }
        )
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        timed!(
            self.ops.block_status,
            0,
            match &self.volume {
                Volumes::Durable(v) => v.block_status(offset, len).await,
                Volumes::Memory(v) => v.block_status(offset, len).await,
            }
        )
    }
}
