//! `spillway serve`: bind the listeners, accept connections, shut down on a signal.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nbd::{BlockDevice, Export, Server, ServerConfig};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cli::ServeArgs;
use crate::memory_volume::MemoryVolume;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("spillway")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

fn exports(args: &ServeArgs) -> anyhow::Result<Vec<Export<MemoryVolume>>> {
    if args.size == 0 {
        bail!("--size must be greater than zero");
    }
    let names = if args.exports.is_empty() { vec!["default".to_owned()] } else { args.exports.clone() };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            bail!("an export name may not be empty: the empty name already reaches `default`");
        }
        out.push(Export {
            description: format!("spillway RAM volume {name:?} (not persistent)"),
            name,
            device: Arc::new(MemoryVolume::new(args.size)),
            read_only: args.read_only,
        });
    }
    Ok(out)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let server = Server::new(exports(&args)?, ServerConfig::default())?;
    warn!("serving RAM volumes: data lives in memory only and does NOT survive a restart");
    for e in server.exports() {
        info!(export = %e.name, size = e.device.size(), read_only = e.read_only, "export");
    }

    let tcp = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    info!("listening on tcp {}", tcp.local_addr()?);
    let unix = match &args.unix {
        Some(path) => {
            let l = bind_unix(path)?;
            info!("listening on unix {}", path.display());
            Some(l)
        }
        None => None,
    };

    let tracker = TaskTracker::new();
    let mut accepts = Vec::new();
    accepts.push(tokio::spawn(accept_tcp(tcp, Arc::clone(&server), tracker.clone())));
    if let Some(l) = unix {
        accepts.push(tokio::spawn(accept_unix(l, Arc::clone(&server), tracker.clone())));
    }
    info!("ready");

    wait_for_signal().await?;
    info!("shutting down");
    for a in &accepts {
        a.abort();
    }
    server.shutdown();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!("connections still busy after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    for e in server.exports() {
        if let Err(err) = e.device.flush().await {
            warn!(export = %e.name, error = %err, "final flush failed");
        }
    }
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    info!("stopped");
    Ok(())
}

/// Bind a Unix socket, replacing a stale socket file but never any other kind of file.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; refusing to replace it", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("listening on unix socket {}", path.display()))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn accept_tcp<D: BlockDevice>(l: TcpListener, server: Arc<Server<D>>, tracker: TaskTracker) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, error = %e, "TCP_NODELAY");
                }
                let (r, w) = stream.into_split();
                let server = Arc::clone(&server);
                tracker.spawn(connection(server, r, w, peer.to_string()));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_unix<D: BlockDevice>(l: UnixListener, server: Arc<Server<D>>, tracker: TaskTracker) {
    let mut n: u64 = 0;
    loop {
        match l.accept().await {
            Ok((stream, _)) => {
                n += 1;
                let (r, w) = stream.into_split();
                let server = Arc::clone(&server);
                tracker.spawn(connection(server, r, w, format!("unix#{n}")));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Out of file descriptors and the like: say so and back off rather than spin.
async fn accept_error(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection<D, R, W>(server: Arc<Server<D>>, r: R, w: W, peer: String)
where
    D: BlockDevice,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    debug!(%peer, "connected");
    match server.serve(r, w).await {
        Ok(()) => debug!(%peer, "disconnected"),
        Err(e) => info!(%peer, error = %e, "connection closed"),
    }
}
