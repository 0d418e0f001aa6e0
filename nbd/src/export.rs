//! An export: a named device with its flags.

use std::sync::Arc;

use crate::consts::*;
use crate::device::BlockDevice;

/// One export offered by the server.
#[derive(Debug)]
pub struct Export<D> {
    pub name: String,
    pub description: String,
    pub device: Arc<D>,
    pub read_only: bool,
}

impl<D: BlockDevice> Export<D> {
    /// The transmission flags advertised for this export. DF is only offered once structured
    /// replies are negotiated, as the spec requires; write-side features are not offered on a
    /// read-only export.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
        if structured {
            f |= FLAG_SEND_DF;
        }
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        f
    }
}
