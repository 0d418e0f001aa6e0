//! Retries with exponential backoff and full jitter, for transient backend errors. Layered
//! over any backend, like the other wrappers.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::warn;

use super::{BackendError, DynBackend, ObjectBackend, ObjectInfo};

pub struct RetryBackend {
    inner: DynBackend,
    attempts: u32,
    base: Duration,
    cap: Duration,
}

impl RetryBackend {
    /// `attempts` tries in all (at least one), waits growing from `base` up to `cap`.
    pub fn new(inner: DynBackend, attempts: u32, base: Duration, cap: Duration) -> Self {
        Self { inner, attempts: attempts.max(1), base, cap }
    }

    async fn run<T, F, Fut>(&self, what: &str, key: &str, mut f: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    let delay = backoff(self.base, self.cap, attempt);
                    metrics::counter!(crate::metrics::BACKEND_RETRIES).increment(1);
                    warn!(op = what, key, error = %e, retry_in_ms = delay.as_millis() as u64, "backend error; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::BACKEND_ERRORS).increment(1);
                    return Err(e);
                }
            }
        }
    }
}

/// Full jitter: a random wait between zero and `base * 2^attempt`, capped.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let nanos = ceiling.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { rand::random_range(nanos / 4..=nanos) })
}

#[async_trait]
impl ObjectBackend for RetryBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        self.run("put", key, || self.inner.put(key, data.clone())).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        self.run("get", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        self.run("get_range", key, || self.inner.get_range(key, range.clone())).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.run("delete", key, || self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for a in 0..20 {
            let d = backoff(b, cap, a);
            assert!(d <= cap, "{d:?}");
            assert!(d >= b.saturating_mul(1 << a.min(16)).min(cap) / 4);
        }
    }
}
