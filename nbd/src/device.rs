//! The seam between the protocol and storage: what a served export must do.

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
