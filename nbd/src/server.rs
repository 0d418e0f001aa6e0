//! The server: its exports and limits, and the life of one connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, BufReader};
use tokio::sync::watch;

use crate::device::BlockDevice;
use crate::export::Export;
use crate::handshake::{negotiate, Negotiated, Outcome};
use crate::pool::BufferPool;
use crate::receive::RecvVectored;
use crate::request::{BadMagic, Limits};
use crate::socket::{ReadHalf, Socket};

/// Limits and defaults of the protocol server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest READ or WRITE payload accepted, advertised as the maximum block size.
    /// Default: 32 MiB.
    pub max_block: u32,
    /// Advertised preferred block size. Default: 4096.
    pub preferred_block: u32,
    /// Payload bytes one connection may have in flight (buffered writes plus pending read
    /// replies). A client past it waits. Must exceed `max_block`. Default: 64 MiB.
    pub inflight_bytes: usize,
    /// A client must finish negotiating within this time. Default: 30 s.
    pub handshake_timeout: Duration,
    /// The export that the empty name `""` reaches. Default: `default`.
    pub default_export: String,
    /// Idle payload buffers kept for reuse, shared by all connections. Default: 64 MiB.
    pub pool_retained_bytes: usize,
    /// OS threads that serve one connection from [`Server::serve_socket`], taking turns
    /// at its socket; 0 serves it on tokio tasks instead, as [`Server::serve`] does. Not 1:
    /// the other threads go on reading requests while one waits to write a reply, which a
    /// client that sends everything before it reads needs. At most 64. Default: 2 (on a
    /// 2-vCPU VM, 2 threads matched or beat 4 on every workload of `bench/`).
    pub connection_threads: usize,
    /// How long a connection thread that finds no request waiting checks the socket before
    /// it sleeps in `recv` (`busy_poll.rs`: adaptive, at most CPUs - 1 threads at once);
    /// zero never polls. Only connections served on their own threads poll. Default: 50 us.
    pub busy_poll: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_block: 32 << 20,
            preferred_block: 4096,
            inflight_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            default_export: "default".to_owned(),
            pool_retained_bytes: 64 << 20,
            connection_threads: 2,
            busy_poll: Duration::from_micros(50),
        }
    }
}

/// A configuration the server cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("inflight_bytes ({inflight}) must exceed max_block ({max_block}) by at least 4 KiB")]
    InflightBelowMaxBlock { inflight: usize, max_block: u32 },
    #[error("preferred_block ({0}) must be a power of two between 512 and 65536")]
    PreferredBlock(u32),
    #[error("max_block ({0}) must be at least 1 MiB")]
    MaxBlock(u32),
    #[error("export name {0:?} appears twice")]
    DuplicateExport(String),
    #[error("export name {0:?} is longer than 4096 bytes")]
    ExportNameTooLong(String),
    #[error("no exports")]
    NoExports,
    #[error(
        "connection_threads ({0}) must be 0 (tokio tasks) or from 2 to 64: one thread alone cannot read requests \
         while it waits to write a reply, and a client that sends before it reads would stall it"
    )]
    ConnectionThreads(usize),
}

/// Why a connection ended other than by the client's choice.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client sent unknown flags {0:#x}")]
    BadClientFlags(u32),
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error(transparent)]
    BadRequestMagic(#[from] BadMagic),
    #[error("client chose unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("handshake not finished within the time limit")]
    HandshakeTimeout,
}

/// An NBD server for a set of exports backed by devices of type `D`.
#[derive(Debug)]
pub struct Server<D> {
    exports: Vec<Export<D>>,
    config: ServerConfig,
    pool: Arc<BufferPool>,
    shutdown: watch::Sender<bool>,
}

impl<D: BlockDevice> Server<D> {
    pub fn new(exports: Vec<Export<D>>, config: ServerConfig) -> Result<Arc<Self>, ConfigError> {
        if exports.is_empty() {
            return Err(ConfigError::NoExports);
        }
        if config.max_block < (1 << 20) {
            return Err(ConfigError::MaxBlock(config.max_block));
        }
        if !config.preferred_block.is_power_of_two() || !(512..=65536).contains(&config.preferred_block) {
            return Err(ConfigError::PreferredBlock(config.preferred_block));
        }
        if config.inflight_bytes < config.max_block as usize + 4096 || config.inflight_bytes > u32::MAX as usize {
            return Err(ConfigError::InflightBelowMaxBlock {
                inflight: config.inflight_bytes,
                max_block: config.max_block,
            });
        }
        if config.connection_threads == 1 || config.connection_threads > 64 {
            return Err(ConfigError::ConnectionThreads(config.connection_threads));
        }
        for (i, e) in exports.iter().enumerate() {
            if e.name.len() > crate::consts::MAX_STRING {
                return Err(ConfigError::ExportNameTooLong(e.name.clone()));
            }
            if exports[..i].iter().any(|o| o.name == e.name) {
                return Err(ConfigError::DuplicateExport(e.name.clone()));
            }
        }
        let pool = BufferPool::new(config.pool_retained_bytes);
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Self { exports, config, pool, shutdown }))
    }

    pub fn exports(&self) -> &[Export<D>] {
        &self.exports
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub(crate) fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// The limits requests on a connection negotiated as `neg` are checked against.
    pub(crate) fn limits(&self, neg: &Negotiated) -> Limits {
        let export = &self.exports[neg.export];
        Limits {
            size: export.device.size(),
            read_only: export.read_only,
            structured: neg.structured,
            meta: neg.meta,
            max_block: self.config.max_block,
        }
    }

    /// The export a client's name reaches: the empty name reaches the default export.
    pub fn find_export(&self, name: &str) -> Option<usize> {
        let name = if name.is_empty() { self.config.default_export.as_str() } else { name };
        self.exports.iter().position(|e| e.name == name)
    }

    /// Ask every connection to finish its in-flight requests and close.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Serve one connection from the greeting to its close, on tokio tasks.
    pub async fn serve<R, W>(self: &Arc<Self>, reader: R, writer: W) -> Result<(), ConnError>
    where
        R: RecvVectored,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        match self.negotiate(reader, writer).await? {
            None => Ok(()),
            Some((n, reader, writer)) => crate::transmission::run(Arc::clone(self), n, reader, writer).await,
        }
    }

    /// Serve an accepted socket from the greeting to its close: negotiation on tokio, then
    /// transmission on `connection_threads` threads of its own (see
    /// [`ServerConfig::connection_threads`]).
    pub async fn serve_socket(self: &Arc<Self>, socket: Socket) -> Result<(), ConnError> {
        match socket {
            Socket::Tcp(s) => {
                let (r, w) = s.into_split();
                self.serve_halves(r, w).await
            }
            Socket::Unix(s) => {
                let (r, w) = s.into_split();
                self.serve_halves(r, w).await
            }
        }
    }

    async fn serve_halves<R: ReadHalf>(self: &Arc<Self>, r: R, w: R::Write) -> Result<(), ConnError> {
        let threads = self.config.connection_threads;
        if threads == 0 {
            return self.serve(r, w).await;
        }
        let Some((n, r, w)) = self.negotiate(r, w).await? else {
            return Ok(());
        };
        let held = r.buffer().to_vec();
        let stream = r.into_inner().rejoin(w)?;
        crate::turns::run(Arc::clone(self), n, held, stream, threads).await
    }

    /// Negotiate until transmission; `None` if the client closed or the server is stopping.
    #[allow(clippy::type_complexity)]
    async fn negotiate<R, W>(
        self: &Arc<Self>,
        reader: R,
        mut writer: W,
    ) -> Result<Option<(Negotiated, BufReader<R>, W)>, ConnError>
    where
        R: RecvVectored,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = BufReader::with_capacity(crate::work::READ_BUFFER, reader);
        let mut stop = self.shutdown_signal();
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.config.handshake_timeout, negotiate(self, &mut reader, &mut writer)) => {
                r.map_err(|_| ConnError::HandshakeTimeout)??
            }
            _ = stop.wait_for(|s| *s) => return Ok(None),
        };
        Ok(match outcome {
            Outcome::Closed => None,
            Outcome::Transmit(n) => Some((n, reader, writer)),
        })
    }
}
