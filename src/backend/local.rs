//! The default backend: a directory on the local file system. A put writes a temporary
//! file, syncs it, renames it into place and syncs the directory, so an object is either
//! whole or absent after a crash.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BackendError, ObjectBackend, ObjectInfo};

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, BackendError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| io(&root.display().to_string(), e))?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        if key.is_empty() || key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(BackendError::Config(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn io(key: &str, e: std::io::Error) -> BackendError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BackendError::NotFound { key: key.to_owned() }
    } else {
        BackendError::Io { key: key.to_owned(), source: e }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackendError::Io {
        key: String::new(),
        source: std::io::Error::other(format!("backend task failed: {e}")),
    })?
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl ObjectBackend for LocalBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || {
            let dir = path.parent().map(Path::to_owned).unwrap_or_default();
            std::fs::create_dir_all(&dir).map_err(|e| io(&key, e))?;
            // `X.tmp` beside `X` (not `with_extension`, which would give `X.par2` and `X`
            // the same temporary file).
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let mut f = std::fs::File::create(&tmp).map_err(|e| io(&key, e))?;
            f.write_all(&data).map_err(|e| io(&key, e))?;
            f.sync_data().map_err(|e| io(&key, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&key, e))?;
            sync_dir(&dir).map_err(|e| io(&key, e))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| io(&key, e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || {
            let mut f = std::fs::File::open(&path).map_err(|e| io(&key, e))?;
            f.seek(SeekFrom::Start(range.start)).map_err(|e| io(&key, e))?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact(&mut buf).map_err(|e| io(&key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&key, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let prefix = prefix.trim_end_matches('/').to_owned();
        blocking(move || {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io(&prefix, e)),
            };
            let mut out = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|e| io(&prefix, e))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    continue;
                }
                let meta = ent.metadata().map_err(|e| io(&prefix, e))?;
                if meta.is_file() {
                    out.push(ObjectInfo { key: format!("{prefix}/{name}"), size: meta.len() });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}
