//! Object backends: where chunk objects and manifests live. A local directory by default,
//! any S3-compatible store when one machine is not enough, and a fault- and
//! latency-injecting wrapper for tests. Keys are relative paths like `chunks/00000000000000a1`.

pub mod faulty;
pub mod local;
pub mod retry;
pub mod s3;
pub mod yenc;

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("backend I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store on {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("backend configuration: {0}")]
    Config(String),
    #[error("object {key} is damaged: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("injected fault on {key}")]
    Injected { key: String },
}

impl BackendError {
    /// Worth trying again (a network or server hiccup), as opposed to a permanent answer.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::NotFound { .. } | BackendError::Config(_) | BackendError::Corrupt { .. } => false,
            BackendError::Store { source, .. } => {
                !matches!(source, object_store::Error::NotFound { .. } | object_store::Error::NotImplemented)
            }
            BackendError::Io { .. } | BackendError::Injected { .. } => true,
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// The seam every object store sits behind. A `put` that returns Ok is durable.
#[async_trait]
pub trait ObjectBackend: Send + Sync + 'static {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError>;
    async fn get(&self, key: &str) -> Result<Bytes, BackendError>;
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError>;
    /// The object's bytes even when the transport's own check of them fails, for repair
    /// from recovery data (which checks every byte itself). The same as `get` unless the
    /// transport has such a check (yEnc's CRC32).
    async fn get_for_repair(&self, key: &str) -> Result<Bytes, BackendError> {
        self.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Objects whose key starts with `prefix` (a folder like `chunks/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    /// For logs: where this backend keeps things.
    fn describe(&self) -> String;
}

pub type DynBackend = Arc<dyn ObjectBackend>;

/// The backend of one volume. `spec` is `s3://BUCKET/PREFIX`, a directory (`file:///path`
/// or a plain path), or `None`: the `objects` folder of the volume directory. Shared
/// backends get one folder per volume, named `volume_name`. Wrapped in retries.
pub fn for_volume(
    spec: Option<&str>,
    s3_endpoint: Option<&str>,
    volume_dir: &std::path::Path,
    volume_name: &str,
) -> Result<DynBackend, BackendError> {
    let inner: DynBackend = match spec {
        None => Arc::new(local::LocalBackend::new(volume_dir.join("objects"))?),
        Some(s) if s.starts_with("s3://") => Arc::new(s3::S3Backend::new(s, s3_endpoint)?.child(volume_name)),
        Some(s) => {
            let path = s.strip_prefix("file://").unwrap_or(s);
            if path.is_empty() || path.contains("://") {
                return Err(BackendError::Config(format!("backend {s:?}: use s3://BUCKET/PREFIX or a directory path")));
            }
            Arc::new(local::LocalBackend::new(std::path::Path::new(path).join(volume_name))?)
        }
    };
    let retry =
        retry::RetryBackend::new(inner, 4, std::time::Duration::from_millis(100), std::time::Duration::from_secs(2));
    Ok(Arc::new(retry))
}
