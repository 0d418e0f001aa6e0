//! Pooled payload buffers, so a request does not allocate once the pool is warm.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use parking_lot::Mutex;

/// Smallest size class (4 KiB); classes double up to the largest request.
const MIN_CLASS_SHIFT: u32 = 12;
const CLASSES: usize = 14; // 4 KiB .. 32 MiB

/// Free lists of buffers by power-of-two size class. Bounded: it keeps at most
/// `max_retained_bytes` of idle buffers, and drops the rest.
#[derive(Debug)]
pub struct BufferPool {
    classes: [Mutex<Vec<Vec<u8>>>; CLASSES],
    retained: Mutex<usize>,
    max_retained_bytes: usize,
}

impl BufferPool {
    pub fn new(max_retained_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            classes: std::array::from_fn(|_| Mutex::new(Vec::new())),
            retained: Mutex::new(0),
            max_retained_bytes,
        })
    }

    fn class_of(len: usize) -> Option<usize> {
        let shift = len.max(1).next_power_of_two().trailing_zeros().max(MIN_CLASS_SHIFT);
        let idx = (shift - MIN_CLASS_SHIFT) as usize;
        (idx < CLASSES).then_some(idx)
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (old data or zeroes):
    /// callers overwrite every byte.
    pub fn get(self: &Arc<Self>, len: usize) -> PooledBuf {
        let class = Self::class_of(len);
        let reused = class.and_then(|c| self.classes[c].lock().pop());
        let buf = match (reused, class) {
            (Some(b), _) => {
                *self.retained.lock() -= b.len();
                b
            }
            (None, Some(c)) => vec![0u8; 1 << (c as u32 + MIN_CLASS_SHIFT)],
            (None, None) => vec![0u8; len],
        };
        PooledBuf { buf, len, pool: Arc::clone(self) }
    }

    fn put(&self, buf: Vec<u8>) {
        let Some(class) = Self::class_of(buf.len()).filter(|&c| buf.len() == 1 << (c as u32 + MIN_CLASS_SHIFT)) else {
            return;
        };
        {
            let mut retained = self.retained.lock();
            if *retained + buf.len() > self.max_retained_bytes {
                return;
            }
            *retained += buf.len();
        }
        self.classes[class].lock().push(buf);
    }

    /// Bytes held idle in the pool.
    pub fn retained_bytes(&self) -> usize {
        *self.retained.lock()
    }
}

/// A buffer on loan from a [`BufferPool`]; it goes back when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufferPool::new(64 << 10);
        let a = pool.get(5000);
        assert_eq!(a.len(), 5000);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.retained_bytes(), 8192);
        let b = pool.get(8000);
        assert_eq!(b.as_ptr(), ptr, "the 8 KiB class buffer is reused");
        drop(b);
        // Beyond the bound, buffers are dropped rather than kept.
        let big: Vec<_> = (0..4).map(|_| pool.get(32 << 10)).collect();
        drop(big);
        assert!(pool.retained_bytes() <= 64 << 10);
        // Sizes beyond the largest class still work, unpooled.
        let huge = pool.get(64 << 20);
        assert_eq!(huge.len(), 64 << 20);
    }
}
