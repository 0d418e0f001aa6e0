//! The seam between the protocol and storage: what a served export must do.

use std::any::Any;
use std::future::Future;
use std::io::IoSlice;

use crate::errno::Errno;
use crate::pool::PooledBuf;

/// Flags that shape a WRITE_ZEROES request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// Persist before replying.
    pub fua: bool,
    /// The range must stay allocated: do not punch a hole.
    pub no_hole: bool,
    /// Fail with `ENOTSUP` at once unless zeroing is faster than writing.
    pub fast: bool,
}

/// One run of blocks with the same allocation state, for `base:allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// The range is not allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// The range reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// The `base:allocation` status flags for this extent.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.hole {
            f |= crate::consts::STATE_HOLE;
        }
        if self.zero {
            f |= crate::consts::STATE_ZERO;
        }
        f
    }
}

/// The bytes of a successful READ, as the reply will send them.
pub enum ReadData {
    /// Read into the buffer the server passed in.
    Copied(PooledBuf),
    /// The device's own memory, lent without a copy.
    Lent(Box<dyn LentBytes>),
}

/// Bytes a device lends to a reply. They must stay valid and unchanged as long as this
/// value lives (until the reply is written).
pub trait LentBytes: Send + Sync + 'static {
    /// Append the bytes, in order, to `out`; their lengths add up to the request's length.
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>);
}

/// Memory of a device's own that a WRITE's payload is received into, saving the copy from
/// a server buffer (see [`BlockDevice::write_buffer`]).
pub trait WriteBuffer: Send + 'static {
    /// The memory, in order; the lengths add up to the request's length.
    fn slices_mut(&mut self) -> Vec<&mut [u8]>;
    /// The device's own type again, for [`BlockDevice::write_received`].
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// A device error: what went wrong, and which wire error it becomes.
///
/// Implementations keep their own typed errors; the mapping to the wire happens in the
/// implementation's single `From<&TheirError> for Errno` impl.
pub trait DeviceError: std::error::Error + Send + Sync + 'static {
    fn errno(&self) -> Errno;
}

/// A block device served by the protocol. Every request reaching these methods has already
/// been checked against the export size, the flags and the maximum block size.
///
/// Multi-connection contract: one device is shared by every connection to its export, and a
/// `flush` must cover every write that was completed on any connection.
pub trait BlockDevice: Send + Sync + 'static {
    type Error: DeviceError;

    /// Export size in bytes.
    fn size(&self) -> u64;

    /// Whether zeroing a range is cheaper than writing it (advertised FAST_ZERO semantics).
    fn fast_zero(&self) -> bool {
        true
    }

    /// Fill `buf` with the bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Read `buf.len()` bytes at `offset` for a reply. By default this fills `buf`; a
    /// device may instead lend memory of its own that already holds the bytes, and save
    /// the copy.
    fn read_data(&self, offset: u64, mut buf: PooledBuf) -> impl Future<Output = Result<ReadData, Self::Error>> + Send {
        async move { self.read(offset, &mut buf).await.map(|()| ReadData::Copied(buf)) }
    }

    /// Write `data` at `offset`; with `fua`, it is durable before this returns.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Memory of the device's own to receive the payload of a WRITE of `len` bytes at
    /// `offset` into, which is then passed to [`Self::write_received`]; or `None` (the
    /// default), and the payload goes to [`Self::write`] in a server buffer. It is called
    /// before the payload is read, on the connection's reader, so it must not wait. Dropped
    /// unwritten (the connection broke), the buffer must give back whatever it holds.
    fn write_buffer(&self, _offset: u64, _len: u32) -> Option<Box<dyn WriteBuffer>> {
        None
    }

    /// Write a payload received into a buffer from [`Self::write_buffer`], as
    /// [`Self::write`] would. The default copies it out and calls `write`.
    fn write_received(
        &self,
        offset: u64,
        mut buf: Box<dyn WriteBuffer>,
        fua: bool,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async move {
            let data = buf.slices_mut().concat();
            self.write(offset, &data, fua).await
        }
    }

    /// Make every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Discard a range; reads of it may return anything until it is written again.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Make a range read as zeroes.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// A hint that a range will be read soon.
    fn cache(&self, _offset: u64, _len: u64) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Allocation state starting at `offset`. Returns at least one extent; the extents are
    /// consecutive, and may cover less than `len` (the client asks again) but never more
    /// than the export.
    fn block_status(&self, offset: u64, len: u64) -> impl Future<Output = Result<Vec<Extent>, Self::Error>> + Send;
}
