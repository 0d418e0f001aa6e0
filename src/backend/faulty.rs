//! A backend wrapper for tests: added latency, switchable failures, and counters.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{BackendError, DynBackend, ObjectBackend, ObjectInfo};

#[derive(Default)]
pub struct BackendFaults {
    /// Every call fails (a backend that is down).
    pub down: AtomicBool,
    pub latency: Mutex<Duration>,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub deletes: AtomicU64,
}

pub struct FaultyBackend {
    inner: DynBackend,
    pub faults: Arc<BackendFaults>,
}

impl FaultyBackend {
    pub fn new(inner: DynBackend) -> Self {
        Self { inner, faults: Arc::default() }
    }

    async fn gate(&self, key: &str) -> Result<(), BackendError> {
        let lat = *self.faults.latency.lock();
        if !lat.is_zero() {
            tokio::time::sleep(lat).await;
        }
        if self.faults.down.load(Ordering::Acquire) {
            return Err(BackendError::Injected { key: key.to_owned() });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectBackend for FaultyBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        self.gate(key).await?;
        self.faults.puts.fetch_add(1, Ordering::Relaxed);
        self.faults.put_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        self.gate(key).await?;
        self.faults.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        self.gate(key).await?;
        self.faults.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.gate(key).await?;
        self.faults.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.gate(prefix).await?;
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}
