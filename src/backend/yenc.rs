//! yEnc transport: every object of a volume stored as a single-part yEnc 1.3 file, for
//! backends and transports that carry only text-safe bytes. The layers above see the
//! decoded bytes, keys and sizes, as if nothing were encoded.
//!
//! yEnc escapes bytes, so an offset in the data is not an offset in the object: a range
//! read fetches and decodes the whole object (a few recently decoded objects are kept), and
//! a listing reads each object's `=ybegin` line for its decoded size. Decoding checks the
//! sizes and the CRC32 and refuses bad bytes ([`BackendError::Corrupt`]), except in
//! [`ObjectBackend::get_for_repair`], which hands them to PAR2 repair.

use std::collections::VecDeque;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tracing::warn;

use super::{BackendError, DynBackend, ObjectBackend, ObjectInfo};
use crate::codec::yenc;

/// Decoded objects kept for range reads (4 MiB chunks: 16 MiB at most).
const DECODED_KEPT: usize = 4;
/// Listing: objects whose `=ybegin` line is read at once.
const LIST_PARALLEL: usize = 16;
/// Enough of an object to hold its `=ybegin` line (the name is a key's last part).
const BEGIN_LINE_MAX: u64 = 512;

pub struct YencBackend {
    inner: DynBackend,
    decoded: Mutex<VecDeque<(String, Bytes)>>,
}

impl YencBackend {
    pub fn new(inner: DynBackend) -> Self {
        Self { inner, decoded: Mutex::new(VecDeque::new()) }
    }

    fn cached(&self, key: &str) -> Option<Bytes> {
        self.decoded.lock().iter().find(|(k, _)| k == key).map(|(_, b)| b.clone())
    }

    fn keep(&self, key: &str, data: Bytes) {
        let mut d = self.decoded.lock();
        d.retain(|(k, _)| k != key);
        if d.len() == DECODED_KEPT {
            d.pop_front();
        }
        d.push_back((key.to_owned(), data));
    }

    fn forget(&self, key: &str) {
        self.decoded.lock().retain(|(k, _)| k != key);
    }

    /// The decoded size of an object `stored` bytes long, from its `=ybegin` line.
    async fn decoded_size(&self, key: &str, stored: u64) -> Result<u64, BackendError> {
        let head = self.inner.get_range(key, 0..stored.min(BEGIN_LINE_MAX)).await?;
        let (begin, _) = yenc::frame::parse_begin(&head).map_err(|e| corrupt(key, e))?;
        Ok(begin.size)
    }
}

fn corrupt(key: &str, e: yenc::YencError) -> BackendError {
    BackendError::Corrupt { key: key.to_owned(), detail: format!("yEnc: {e}") }
}

/// The last part of a key: the name inside the yEnc file.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackendError::Io {
        key: String::new(),
        source: std::io::Error::other(format!("yEnc task failed: {e}")),
    })
}

#[async_trait]
impl ObjectBackend for YencBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let name = file_name(key).to_owned();
        let raw = data.clone();
        let encoded = blocking(move || yenc::encode(&name, &raw)).await?;
        self.forget(key);
        self.inner.put(key, Bytes::from(encoded)).await?;
        self.keep(key, data);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        if let Some(b) = self.cached(key) {
            return Ok(b);
        }
        let stored = self.inner.get(key).await?;
        let decoded = blocking(move || yenc::decode(&stored)).await?.map_err(|e| corrupt(key, e))?;
        let data = Bytes::from(decoded.data);
        self.keep(key, data.clone());
        Ok(data)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let all = self.get(key).await?;
        if range.start > range.end || range.end > all.len() as u64 {
            return Err(BackendError::Corrupt {
                key: key.to_owned(),
                detail: format!("range {range:?} is outside the {} decoded bytes", all.len()),
            });
        }
        Ok(all.slice(range.start as usize..range.end as usize))
    }

    async fn get_for_repair(&self, key: &str) -> Result<Bytes, BackendError> {
        self.forget(key);
        let stored = self.inner.get(key).await?;
        let (decoded, problem) =
            blocking(move || yenc::decode_unchecked(&stored)).await?.map_err(|e| corrupt(key, e))?;
        if let Some(p) = problem {
            warn!(key, problem = %p, "yEnc object fails its own check; its bytes go to PAR2 repair");
        }
        Ok(Bytes::from(decoded.data))
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.forget(key);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let listed = self.inner.list(prefix).await?;
        futures::stream::iter(listed.into_iter().map(|o| async move {
            let size = self.decoded_size(&o.key, o.size).await?;
            Ok::<_, BackendError>(ObjectInfo { key: o.key, size })
        }))
        .buffered(LIST_PARALLEL)
        .try_collect()
        .await
    }

    fn describe(&self) -> String {
        format!("{} (yEnc transport)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use std::sync::Arc;

    #[tokio::test]
    async fn objects_are_yenc_files_and_read_back_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let local: DynBackend = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let y = YencBackend::new(Arc::clone(&local));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 256) as u8).collect();
        y.put("chunks/00000000000000a1", Bytes::from(data.clone())).await.unwrap();
        // On the backend: a yEnc file naming the object, which decodes to the data.
        let stored = std::fs::read(dir.path().join("chunks/00000000000000a1")).unwrap();
        assert!(stored.starts_with(b"=ybegin line=128 size=100000 name=00000000000000a1\r\n"));
        assert!(!stored.contains(&0), "a NUL travelled unescaped");
        assert_eq!(yenc::decode(&stored).unwrap().data, data);
        // Through a fresh wrapper (nothing cached): ranges, whole gets, listed sizes.
        let y = YencBackend::new(Arc::clone(&local));
        assert_eq!(&y.get_range("chunks/00000000000000a1", 70_000..70_100).await.unwrap()[..], &data[70_000..70_100]);
        assert_eq!(&y.get("chunks/00000000000000a1").await.unwrap()[..], &data[..]);
        let listed = y.list("chunks/").await.unwrap();
        assert_eq!(listed, vec![ObjectInfo { key: "chunks/00000000000000a1".into(), size: 100_000 }]);
        assert!(y.get_range("chunks/00000000000000a1", 99_999..100_001).await.is_err());

        // A damaged byte: a strict get refuses, a get for repair hands over the bytes.
        let plain = |b: u8| !b"=\r\n".contains(&b);
        let at = (stored.len() / 2..).find(|&i| plain(stored[i]) && plain(stored[i - 1]) && stored[i] != b'a').unwrap();
        let mut bad = stored.clone();
        bad[at] = b'a';
        std::fs::write(dir.path().join("chunks/00000000000000a1"), &bad).unwrap();
        let y = YencBackend::new(local);
        let err = y.get("chunks/00000000000000a1").await.unwrap_err();
        assert!(matches!(err, BackendError::Corrupt { .. }), "{err}");
        assert!(!err.is_transient());
        let salvaged = y.get_for_repair("chunks/00000000000000a1").await.unwrap();
        assert_eq!(salvaged.len(), data.len());
        assert_eq!(salvaged.iter().zip(&data).filter(|(a, b)| a != b).count(), 1);
    }
}
