//! What both transmission loops share: a validated request's work ([`Job`]), running it on
//! the device ([`execute`]), and the reply it produces ([`Frame`]).

use std::io::IoSlice;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use crate::consts::META_BASE_ALLOCATION_ID;
use crate::device::{BlockDevice, DeviceError, ReadData, WriteBuffer, ZeroFlags};
use crate::errno::Errno;
use crate::pool::{BufferPool, PooledBuf};
use crate::reply;
use crate::request::Command;

/// Replies gathered into one vectored write at most.
pub(crate) const MAX_BATCH: usize = 64;
/// Budget charged per request on top of its payload, which bounds the number in flight
/// (refused requests included: their error replies wait in memory too).
pub(crate) const REQUEST_OVERHEAD: u32 = 1024;
/// A payload this large or larger is copied while the next request is received (a task of
/// its own, or another thread's turn), not in line with reading.
pub(crate) const LARGE_PAYLOAD: u32 = 256 << 10;
/// The connection's receive buffer.
pub(crate) const READ_BUFFER: usize = 128 << 10;

/// The bytes of one reply, ready to go.
pub(crate) struct Frame {
    head: Head,
    body: Option<ReadData>,
    /// Released once the reply is written, returning its bytes to the connection's budget.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

enum Head {
    Simple([u8; 16]),
    Data([u8; 28]),
    Bytes(Vec<u8>),
}

impl Head {
    fn as_slice(&self) -> &[u8] {
        match self {
            Head::Simple(b) => b,
            Head::Data(b) => b,
            Head::Bytes(b) => b,
        }
    }
}

impl Frame {
    fn new(head: Head) -> Self {
        Frame { head, body: None, permit: None }
    }

    fn ok(cookie: u64) -> Self {
        Frame::new(Head::Simple(reply::simple(0, cookie)))
    }

    pub(crate) fn error(cookie: u64, structured: bool, errno: Errno, message: &str) -> Self {
        if structured {
            Frame::new(Head::Bytes(reply::error_chunk(cookie, errno, message)))
        } else {
            Frame::new(Head::Simple(reply::simple(errno.code(), cookie)))
        }
    }
}

/// The bytes of `frames`, in order, for one vectored write.
pub(crate) fn slices(frames: &[Frame]) -> Vec<IoSlice<'_>> {
    let mut out = Vec::with_capacity(frames.len() * 2);
    for f in frames {
        out.push(IoSlice::new(f.head.as_slice()));
        match &f.body {
            Some(ReadData::Copied(b)) => out.push(IoSlice::new(b)),
            Some(ReadData::Lent(b)) => b.slices(&mut out),
            None => {}
        }
    }
    out
}

/// Work for one validated request, with its payload.
pub(crate) enum Job {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: WriteData, fua: bool },
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    Cache { offset: u64, len: u32 },
    Zero { offset: u64, len: u32, flags: ZeroFlags },
    Status { offset: u64, len: u32, req_one: bool },
}

/// A WRITE's payload: in a server buffer, or in the device's own memory.
pub(crate) enum WriteData {
    Pooled(PooledBuf),
    Device(Box<dyn WriteBuffer>),
}

impl Job {
    /// The work of a command without a payload to receive; `None` for WRITE (whose
    /// payload the loop receives first) and DISC (which ends the connection).
    pub(crate) fn without_payload(cmd: Command) -> Option<Job> {
        Some(match cmd {
            Command::Read { offset, len } => Job::Read { offset, len },
            Command::Flush => Job::Flush,
            Command::Trim { offset, len, fua } => Job::Trim { offset, len, fua },
            Command::Cache { offset, len } => Job::Cache { offset, len },
            Command::WriteZeroes { offset, len, flags } => Job::Zero { offset, len, flags },
            Command::BlockStatus { offset, len, req_one } => Job::Status { offset, len, req_one },
            Command::Write { .. } | Command::Disc => return None,
        })
    }
}

/// Run `job` on the device and build its reply, holding `permit` until the reply is sent.
pub(crate) async fn run<D: BlockDevice>(
    device: Arc<D>,
    pool: Arc<BufferPool>,
    job: Job,
    cookie: u64,
    structured: bool,
    permit: OwnedSemaphorePermit,
) -> Frame {
    let mut frame = execute(&*device, job, cookie, structured, &pool).await;
    frame.permit = Some(permit);
    frame
}

async fn execute<D: BlockDevice>(dev: &D, job: Job, cookie: u64, structured: bool, pool: &Arc<BufferPool>) -> Frame {
    let done: Result<Frame, D::Error> = match job {
        Job::Read { offset, len } => match dev.read_data(offset, pool.get(len as usize)).await {
            Ok(buf) => {
                let head = if structured {
                    Head::Data(reply::offset_data_header(cookie, offset, len))
                } else {
                    Head::Simple(reply::simple(0, cookie))
                };
                Ok(Frame { head, body: Some(buf), permit: None })
            }
            Err(e) => Err(e),
        },
        Job::Write { offset, data, fua } => match data {
            WriteData::Pooled(data) => dev.write(offset, &data, fua).await,
            WriteData::Device(buf) => dev.write_received(offset, buf, fua).await,
        }
        .map(|()| Frame::ok(cookie)),
        Job::Flush => dev.flush().await.map(|()| Frame::ok(cookie)),
        Job::Trim { offset, len, fua } => dev.trim(offset, u64::from(len), fua).await.map(|()| Frame::ok(cookie)),
        Job::Cache { offset, len } => dev.cache(offset, u64::from(len)).await.map(|()| Frame::ok(cookie)),
        Job::Zero { flags, .. } if flags.fast && !dev.fast_zero() => {
            return Frame::error(cookie, structured, Errno::NotSup, "zeroing would not be faster than writing");
        }
        Job::Zero { offset, len, flags } => {
            dev.write_zeroes(offset, u64::from(len), flags).await.map(|()| Frame::ok(cookie))
        }
        Job::Status { offset, len, req_one } => dev.block_status(offset, u64::from(len)).await.map(|ex| {
            let extents = reply::clamp_extents(&ex, len, req_one);
            Frame::new(Head::Bytes(reply::block_status_chunk(cookie, META_BASE_ALLOCATION_ID, &extents)))
        }),
    };
    done.unwrap_or_else(|e| {
        warn!(cookie, error = %e, "request failed");
        Frame::error(cookie, structured, e.errno(), &e.to_string())
    })
}
