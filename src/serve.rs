//! `spillway serve`: bind the listeners, accept connections, shut down on a signal.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nbd::{BlockDevice, Export, Server, ServerConfig, Socket};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cli::ServeArgs;
use crate::config::profile::{judge_data_dir, DirVerdict};
use crate::config::settings::Settings;
use crate::device::{Device, Volumes};
use crate::io::faulty::FaultyFs;
use crate::io::std_fs::StdFs;
use crate::io::FileSystem;
use crate::memory_volume::MemoryVolume;
use crate::volume::{Volume, DEFAULT_SIZE};
use crate::wal::Durability;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What `serve` runs with: the effective settings and the run-only flags.
struct Run {
    s: Settings,
    inject_sync_latency: Option<Duration>,
    inject_write_bandwidth: Option<u64>,
    inject_backend_latency: Option<Duration>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let r = crate::config::resolve(args.config.as_deref(), &args.settings, &args.detect_root)?;
    if let Some(path) = &r.config_file {
        info!("config file {}", path.display());
    }
    info!(profile = r.profile.name(), "profile {} ({})", r.profile.name(), r.profile_reason);
    debug!(settings = ?r.settings, "effective settings");
    if !r.settings.memory {
        match judge_data_dir(&r.detected.fs) {
            DirVerdict::Ok => {}
            DirVerdict::Warn(why) => warn!("{}: {why}", r.settings.data_dir.display()),
            DirVerdict::Refuse(why) if args.force => {
                warn!("{}: {why} (serving anyway: --force)", r.settings.data_dir.display())
            }
            DirVerdict::Refuse(why) => bail!("refusing data directory {}: {why}", r.settings.data_dir.display()),
        }
    }
    if !r.settings.memory {
        r.settings.volume_config().validate().context("checking the settings")?;
    }
    // Before the runtime starts its threads: they inherit PR_SET_IO_FLUSHER.
    if r.settings.memlock {
        crate::memlock::apply();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("spillway")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(Run {
        s: r.settings,
        inject_sync_latency: args.inject_sync_latency,
        inject_write_bandwidth: args.inject_write_bandwidth,
        inject_backend_latency: args.inject_backend_latency,
    }))
}

/// A directory name for an export: safe characters as they are, anything else hex-encoded.
pub fn export_dir_name(name: &str) -> String {
    let safe = !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if safe {
        name.to_owned()
    } else {
        format!("x-{}", name.bytes().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

/// Refuse exports that are the same name twice, or two names that map to one volume
/// directory (`" "` is stored as `x-20`, which is also a name of its own): two volumes
/// writing one WAL would destroy it.
fn distinct_dirs(names: &[String]) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for name in names {
        if let Some(other) = seen.insert(export_dir_name(name), name) {
            bail!(
                "exports {other:?} and {name:?} would share the volume directory {:?}; serve each name once, \
                 and rename one of two names that map to the same directory",
                export_dir_name(name)
            );
        }
    }
    Ok(())
}

async fn exports(run: &Run) -> anyhow::Result<Vec<Export<Device>>> {
    let args = &run.s;
    if args.size == Some(0) {
        bail!("--size must be greater than zero");
    }
    let names = if args.exports.is_empty() { vec!["default".to_owned()] } else { args.exports.clone() };
    distinct_dirs(&names)?;
    let fs: Arc<dyn FileSystem> = if run.inject_sync_latency.is_some() || run.inject_write_bandwidth.is_some() {
        let (fs, faults) = FaultyFs::new(Arc::new(StdFs));
        if let Some(d) = run.inject_sync_latency {
            *faults.sync_latency.lock() = d;
            warn!("benchmark mode: every sync takes {d:?} longer");
        }
        if let Some(bw) = run.inject_write_bandwidth {
            faults.write_bandwidth.store(bw, std::sync::atomic::Ordering::SeqCst);
            warn!("benchmark mode: every sync also waits for the bytes written since the last one at {bw} bytes/s");
        }
        Arc::new(fs)
    } else {
        Arc::new(StdFs)
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            bail!("an export name may not be empty: the empty name already reaches `default`");
        }
        let (device, description) = if args.memory {
            let size = args.size.unwrap_or(DEFAULT_SIZE);
            (
                Device::new(Volumes::Memory(MemoryVolume::new(size))),
                format!("spillway RAM volume {name:?} (not persistent)"),
            )
        } else {
            let dir = args.data_dir.join("volumes").join(export_dir_name(&name));
            let dir_name = export_dir_name(&name);
            let backend =
                crate::backend::for_volume(args.backend.as_deref(), args.s3_endpoint.as_deref(), &dir, &dir_name)
                    .with_context(|| format!("opening the backend of volume {name:?}"))?;
            let backend: crate::backend::DynBackend = match run.inject_backend_latency {
                Some(d) => {
                    let slow = crate::backend::faulty::FaultyBackend::new(backend);
                    *slow.faults.latency.lock() = d;
                    warn!("benchmark mode: every backend call of volume {name:?} takes {d:?} longer");
                    Arc::new(slow)
                }
                None => backend,
            };
            let cfg = args.volume_config();
            let v = Volume::open(Arc::clone(&fs), &dir, backend, cfg)
                .await
                .with_context(|| format!("opening volume {name:?} in {}", dir.display()))?;
            (
                Device::new(Volumes::Durable(Box::new(v))),
                format!("spillway volume {name:?} ({} durability)", args.durability.name()),
            )
        };
        out.push(Export { description, name, device: Arc::new(device), read_only: args.read_only });
    }
    Ok(out)
}

/// Hold an exclusive lock on the data directory for the life of the process: two servers
/// writing one WAL would destroy it.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| anyhow::anyhow!("{} is in use by another spillway ({e})", dir.display()))
}

async fn serve(run: Run) -> anyhow::Result<()> {
    let args = &run.s;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let _lock = if args.memory { None } else { Some(lock_data_dir(&args.data_dir)?) };
    if let Some(addr) = args.metrics_listen {
        crate::metrics::install_prometheus(addr)?;
        info!("metrics on http://{addr}/metrics");
    }
    if args.memory {
        warn!("serving RAM volumes (--memory): data lives in memory only and does NOT survive a restart");
    } else if args.durability == Durability::Async {
        warn!("**********************************************************************");
        warn!("durability=async: FLUSH and FUA are acknowledged WITHOUT syncing.");
        warn!("A crash or power cut can lose any amount of acknowledged data.");
        warn!("Use it only for scratch volumes and benchmarks.");
        warn!("**********************************************************************");
    }
    let server = Server::new(
        exports(&run).await?,
        ServerConfig {
            connection_threads: args.connection_threads,
            busy_poll: args.busy_poll,
            ..ServerConfig::default()
        },
    )?;
    for e in server.exports() {
        info!(export = %e.name, size = e.device.size(), read_only = e.read_only, "export");
    }

    let notifier = Arc::new(crate::systemd::Notifier::from_env());
    let tcp = match crate::systemd::activated_tcp_listener()? {
        Some(l) => {
            info!("socket activation: serving the TCP socket systemd passed (--listen is ignored)");
            TcpListener::from_std(l).context("socket activation: adopting fd 3")?
        }
        None => TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?,
    };
    let tcp_addr = tcp.local_addr()?;
    info!("listening on tcp {tcp_addr}");
    let unix = match &args.unix {
        Some(path) => {
            let l = bind_unix(path)?;
            info!("listening on unix {}", path.display());
            Some(l)
        }
        None => None,
    };

    // Registered before the first client, so a scrape shows them at zero.
    metrics::counter!(crate::metrics::CONNECTIONS_ACCEPTED).absolute(0);
    metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).set(0.0);
    let tracker = TaskTracker::new();
    let mut accepts = Vec::new();
    accepts.push(tokio::spawn(accept_tcp(tcp, Arc::clone(&server), tracker.clone())));
    if let Some(l) = unix {
        accepts.push(tokio::spawn(accept_unix(l, Arc::clone(&server), tracker.clone())));
    }
    // Before `ready`: a SIGTERM sent as soon as `ready` is seen must shut down cleanly,
    // not kill the process with the default action.
    let signals = Signals::install()?;
    info!("ready");
    notifier.send(&format!("READY=1\nSTATUS=serving {} export(s) on {tcp_addr}", server.exports().len()));
    if let Some(every) = notifier.watchdog_interval() {
        let n = Arc::clone(&notifier);
        tokio::spawn(async move {
            loop {
                n.send("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        });
    }

    signals.wait().await;
    info!("shutting down");
    notifier.send("STOPPING=1\nSTATUS=shutting down: finishing requests, draining to the backend");
    for a in &accepts {
        a.abort();
    }
    server.shutdown();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!("connections still busy after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    let mut failed = false;
    for e in server.exports() {
        if let Err(err) = e.device.flush().await {
            warn!(export = %e.name, error = %err, "final flush failed");
            failed = true;
        }
        if let Err(err) = e.device.close().await {
            warn!(export = %e.name, error = %err, "closing the volume failed");
            failed = true;
        }
    }
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    if failed {
        bail!("shut down with errors: data written since the last successful flush may be lost");
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

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn accept_tcp<D: BlockDevice>(l: TcpListener, server: Arc<Server<D>>, tracker: TaskTracker) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, error = %e, "TCP_NODELAY");
                }
                let server = Arc::clone(&server);
                tracker.spawn(connection(server, Socket::Tcp(stream), peer.to_string()));
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
                let server = Arc::clone(&server);
                tracker.spawn(connection(server, Socket::Unix(stream), format!("unix#{n}")));
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

/// Counts a connection in the connection metrics from accept until it is dropped.
struct Counted;

impl Counted {
    fn accepted() -> Self {
        metrics::counter!(crate::metrics::CONNECTIONS_ACCEPTED).increment(1);
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).increment(1.0);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).decrement(1.0);
    }
}

async fn connection<D: BlockDevice>(server: Arc<Server<D>>, socket: Socket, peer: String) {
    let _counted = Counted::accepted();
    debug!(%peer, "connected");
    match server.serve_socket(socket).await {
        Ok(()) => debug!(%peer, "disconnected"),
        Err(e) => info!(%peer, error = %e, "connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_exports_never_share_a_volume_directory() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(distinct_dirs(&names(&["default", "a", "b c"])).is_ok());
        let e = distinct_dirs(&names(&[" ", "x-20"])).unwrap_err().to_string();
        assert!(e.contains("\"x-20\"") && e.contains("share the volume directory"), "{e}");
        assert!(distinct_dirs(&names(&["a", "a"])).is_err(), "the same name twice");
    }
}
