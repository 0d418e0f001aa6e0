//! `spillway recover`: rebuild a volume's local state from its backend alone.

use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use tracing::info;

use crate::chunk::base::Base;
use crate::chunk::manifest::manifest_key;
use crate::chunk::rebuild::rebuild_from_backend;
use crate::chunk::set::ChunkSet;
use crate::chunk::spiller::snapshot;
use crate::chunk::store::ChunkStore;
use crate::cli::RecoverArgs;
use crate::io::std_fs::StdFs;
use crate::io::FileSystem;
use crate::serve::{export_dir_name, lock_data_dir};
use crate::store::index::Index;
use crate::volume::{BACKEND_META_KEY, MANIFEST_FILE};
use crate::volume_meta::{VolumeMeta, META_FILE};

pub fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(recover(args))
}

async fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;
    let names = if args.exports.is_empty() { vec!["default".to_owned()] } else { args.exports.clone() };
    for name in names {
        recover_one(&args, &name).await.with_context(|| format!("recovering volume {name:?}"))?;
    }
    Ok(())
}

async fn recover_one(args: &RecoverArgs, name: &str) -> anyhow::Result<()> {
    let dir_name = export_dir_name(name);
    let dir = args.data_dir.join("volumes").join(&dir_name);
    if dir.join(META_FILE).exists() || dir.join("wal").exists() {
        bail!("{} already holds a volume; move it away first (recover never overwrites local state)", dir.display());
    }
    if args.backend.backend.is_none() {
        bail!("--backend is required: a volume's default backend lives in its (lost) data directory");
    }
    let backend = args.backend.for_volume(&dir, &dir_name)?;
    let meta_bytes = backend
        .get(BACKEND_META_KEY)
        .await
        .with_context(|| format!("reading {BACKEND_META_KEY} from {}", backend.describe()))?;
    // A yEnc volume's objects, this one included, are yEnc files.
    let meta_bytes = if meta_bytes.starts_with(b"=ybegin ") {
        Bytes::from(
            crate::codec::yenc::decode(&meta_bytes).context("the backend's volume.meta is damaged (yEnc)")?.data,
        )
    } else {
        meta_bytes
    };
    let meta = VolumeMeta::decode(&meta_bytes).context("the backend's volume.meta is damaged")?;
    let backend = crate::volume::with_transport(backend, meta.transport);
    let store =
        ChunkStore::new(Arc::clone(&backend), ChunkSet::new(1), 0, meta.volume_id).with_transport(meta.transport);
    let index = Index::new(16);
    let rebuilt = rebuild_from_backend(&store, &index).await?;
    let generation = rebuilt.manifest_generation + 1;
    let m = snapshot(&Base::from_index(&index)?, &store.set, meta.volume_id, generation, rebuilt.next_seq, (0, 0));
    let fs = StdFs;
    fs.create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = m.encode();
    backend.put(&manifest_key(generation), Bytes::from(bytes.clone())).await?;
    fs.write_file_atomic(&dir.join(MANIFEST_FILE), &bytes).context("writing the manifest")?;
    fs.write_file_atomic(&dir.join(META_FILE), &meta.encode()).context("writing the volume metadata")?;
    info!(
        volume = name,
        size = meta.size,
        blocks = index.len(),
        chunks = store.set.len(),
        from_manifest = rebuilt.manifest_generation,
        later_chunks = rebuilt.chunks_applied,
        "volume rebuilt from the backend"
    );
    println!(
        "recovered {name:?}: {} bytes, {} blocks in {} chunks (manifest generation {}, {} later chunks applied)",
        meta.size,
        index.len(),
        store.set.len(),
        rebuilt.manifest_generation,
        rebuilt.chunks_applied
    );
    Ok(())
}
