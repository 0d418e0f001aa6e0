//! S3-compatible object stores through the `object_store` crate: `s3://BUCKET/PREFIX`,
//! an optional endpoint (path-style addressing, plain http allowed for loopback servers),
//! and credentials and region from the usual `AWS_*` environment variables.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use super::{BackendError, ObjectBackend, ObjectInfo};

pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

/// Split `s3://BUCKET/PREFIX` into bucket and prefix (without slashes at either end).
pub fn parse_url(url: &str) -> Result<(String, String), BackendError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| BackendError::Config(format!("backend {url:?} must look like s3://BUCKET/PREFIX")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(BackendError::Config(format!("backend {url:?} names no bucket")));
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl S3Backend {
    pub fn new(url: &str, endpoint: Option<&str>) -> Result<Self, BackendError> {
        let (bucket, prefix) = parse_url(url)?;
        // Our own layers retry (RetryBackend, and the spiller for as long as it takes), and
        // they log each failure: the client gives up fast instead of retrying for minutes
        // out of sight.
        let retry = RetryConfig { max_retries: 1, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
        let client =
            ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(60));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .with_client_options(client);
        if let Some(ep) = endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        let store = b.build().map_err(|e| BackendError::Config(format!("S3 backend {url}: {e}")))?;
        Ok(Self { store: Arc::new(store), bucket, prefix })
    }

    /// The same store with a longer prefix (one volume's folder).
    pub fn child(&self, sub: &str) -> Self {
        let prefix = if self.prefix.is_empty() { sub.to_owned() } else { format!("{}/{sub}", self.prefix) };
        Self { store: Arc::clone(&self.store), bucket: self.bucket.clone(), prefix }
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(key: &str, e: object_store::Error) -> BackendError {
        match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound { key: key.to_owned() },
            e => BackendError::Store { key: key.to_owned(), source: e },
        }
    }
}

#[async_trait]
impl ObjectBackend for S3Backend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        self.store.put(&self.path(key), PutPayload::from(data)).await.map_err(|e| Self::err(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let r = self.store.get(&self.path(key)).await.map_err(|e| Self::err(key, e))?;
        r.bytes().await.map_err(|e| Self::err(key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let r = range.start as usize..range.end as usize;
        self.store.get_range(&self.path(key), r).await.map_err(|e| Self::err(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<_> = self.store.list(Some(&full)).try_collect().await.map_err(|e| Self::err(prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| {
                let k = m.location.to_string();
                ObjectInfo { key: k.strip_prefix(&strip).unwrap_or(&k).to_owned(), size: m.size as u64 }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q".into()));
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_url("http://b").is_err());
        assert!(parse_url("s3:///x").is_err());
    }
}
