//! A small in-memory device for this crate's tests and its fuzz target.

use parking_lot::Mutex;

use crate::device::{BlockDevice, DeviceError, Extent, ZeroFlags};
use crate::errno::Errno;

/// The only error [`MemDevice`] can raise: an injected one.
#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
pub struct Injected;

impl DeviceError for Injected {
    fn errno(&self) -> Errno {
        Errno::Io
    }
}

/// A flat byte vector; block status reports every range as data.
#[derive(Debug)]
pub struct MemDevice {
    data: Mutex<Vec<u8>>,
    /// Reads at this offset fail with EIO.
    pub fail_at: Option<u64>,
}

impl MemDevice {
    pub fn new(size: usize) -> Self {
        Self { data: Mutex::new(vec![0; size]), fail_at: None }
    }
}

impl BlockDevice for MemDevice {
    type Error = Injected;

    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Injected> {
        if self.fail_at == Some(offset) {
            return Err(Injected);
        }
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock()[o..o + buf.len()]);
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Injected> {
        let o = offset as usize;
        self.data.lock()[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), Injected> {
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> Result<(), Injected> {
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> Result<(), Injected> {
        let o = offset as usize;
        self.data.lock()[o..o + len as usize].fill(0);
        Ok(())
    }

    async fn block_status(&self, _offset: u64, len: u64) -> Result<Vec<Extent>, Injected> {
        Ok(vec![Extent { length: len, hole: false, zero: false }])
    }
}
