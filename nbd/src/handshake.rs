//! Fixed newstyle negotiation: from the greeting to the start of transmission.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::consts::*;
use crate::device::BlockDevice;
use crate::option::{decode_option, ClientOption, InfoRequest, MetaRequest};
use crate::reply::option_reply;
use crate::server::{ConnError, Server};

/// Option payloads larger than this are discarded unread and answered `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// What negotiation settled for the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Index into the server's exports.
    pub export: usize,
    pub structured: bool,
    /// `base:allocation` is selected for this export.
    pub meta: bool,
}

/// How negotiation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Transmit(Negotiated),
    /// The client aborted or went away between options.
    Closed,
}

#[derive(Default)]
struct State {
    structured: bool,
    /// Export (canonical name) for which `base:allocation` was selected.
    meta_for: Option<String>,
}

/// Run the negotiation. Writes are flushed after each option's replies.
pub async fn negotiate<D, R, W>(server: &Server<D>, r: &mut R, w: &mut W) -> Result<Outcome, ConnError>
where
    D: BlockDevice,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    greeting[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnError::BadClientFlags(client_flags));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut st = State::default();

    loop {
        let mut head = [0u8; 16];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
            Err(e) => return Err(e.into()),
        }
        let magic = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        if magic != IHAVEOPT {
            return Err(ConnError::BadOptionMagic(magic));
        }
        if len > MAX_OPTION_DATA {
            let skipped = tokio::io::copy(&mut (&mut *r).take(u64::from(len)), &mut tokio::io::sink()).await?;
            if skipped < u64::from(len) {
                return Ok(Outcome::Closed);
            }
            if option == OPT_EXPORT_NAME {
                return Err(ConnError::Protocol("export name option too large"));
            }
            send_err(w, option, REP_ERR_TOO_BIG, "option data too large").await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        let opt = match decode_option(option, &data) {
            Ok(o) => o,
            Err(e) if option == OPT_EXPORT_NAME => return Err(ConnError::Protocol(e.reason)),
            Err(e) => {
                debug!(option, reason = e.reason, "invalid option");
                send_err(w, option, REP_ERR_INVALID, e.reason).await?;
                continue;
            }
        };
        debug!(?opt, "option");
        match opt {
            ClientOption::ExportName(name) => {
                let Some(idx) = server.find_export(&name) else {
                    return Err(ConnError::UnknownExport(name));
                };
                let export = &server.exports()[idx];
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&export.device.size().to_be_bytes());
                b.extend_from_slice(&export.transmission_flags(st.structured).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b).await?;
                w.flush().await?;
                return Ok(Outcome::Transmit(st.negotiated(idx, &export.name)));
            }
            ClientOption::Abort => {
                // The client may already have gone; a failed ACK does not matter.
                let _ = send(w, &option_reply(option, REP_ACK, &[])).await;
                return Ok(Outcome::Closed);
            }
            ClientOption::List => {
                let mut b = Vec::new();
                for e in server.exports() {
                    let mut d = (e.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(e.name.as_bytes());
                    b.extend_from_slice(&option_reply(option, REP_SERVER, &d));
                }
                b.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                send(w, &b).await?;
            }
            ClientOption::StartTls => send_err(w, option, REP_ERR_UNSUP, "TLS is not supported").await?,
            ClientOption::StructuredReply if st.structured => {
                send_err(w, option, REP_ERR_INVALID, "structured replies already negotiated").await?;
            }
            ClientOption::StructuredReply => {
                st.structured = true;
                send(w, &option_reply(option, REP_ACK, &[])).await?;
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let Some(idx) = info(server, &st, option, &req, w).await? else {
                    continue;
                };
                if option == OPT_GO {
                    let name = &server.exports()[idx].name;
                    return Ok(Outcome::Transmit(st.negotiated(idx, name)));
                }
            }
            ClientOption::ListMetaContext(req) => meta(server, &mut st, option, &req, false, w).await?,
            ClientOption::SetMetaContext(req) => meta(server, &mut st, option, &req, true, w).await?,
            ClientOption::Unsupported(o) => send_err(w, o, REP_ERR_UNSUP, "option not supported").await?,
        }
    }
}

impl State {
    fn negotiated(&self, export: usize, name: &str) -> Negotiated {
        Negotiated {
            export,
            structured: self.structured,
            meta: self.structured && self.meta_for.as_deref() == Some(name),
        }
    }
}

/// Answer INFO or GO. Returns the export's index on success.
async fn info<D: BlockDevice, W: AsyncWrite + Unpin>(
    server: &Server<D>,
    st: &State,
    option: u32,
    req: &InfoRequest,
    w: &mut W,
) -> Result<Option<usize>, ConnError> {
    let Some(idx) = server.find_export(&req.name) else {
        send_err(w, option, REP_ERR_UNKNOWN, &format!("no export named {:?}", req.name)).await?;
        return Ok(None);
    };
    let export = &server.exports()[idx];
    let cfg = server.config();
    let mut b = Vec::with_capacity(256);
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&export.device.size().to_be_bytes());
    d.extend_from_slice(&export.transmission_flags(st.structured).to_be_bytes());
    b.extend_from_slice(&option_reply(option, REP_INFO, &d));
    let mut d = INFO_NAME.to_be_bytes().to_vec();
    d.extend_from_slice(export.name.as_bytes());
    b.extend_from_slice(&option_reply(option, REP_INFO, &d));
    let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
    d.extend_from_slice(export.description.as_bytes());
    b.extend_from_slice(&option_reply(option, REP_INFO, &d));
    // Block sizes go out whether or not they were asked for: they are within the defaults,
    // so a client that did not ask (the kernel) is never refused.
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&cfg.preferred_block.to_be_bytes());
    d.extend_from_slice(&cfg.max_block.to_be_bytes());
    b.extend_from_slice(&option_reply(option, REP_INFO, &d));
    b.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    send(w, &b).await?;
    Ok(Some(idx))
}

/// Answer LIST_META_CONTEXT or SET_META_CONTEXT.
async fn meta<D: BlockDevice, W: AsyncWrite + Unpin>(
    server: &Server<D>,
    st: &mut State,
    option: u32,
    req: &MetaRequest,
    set: bool,
    w: &mut W,
) -> Result<(), ConnError> {
    if set {
        // A SET replaces the selection even when it fails.
        st.meta_for = None;
    }
    if !st.structured {
        return send_err(w, option, REP_ERR_INVALID, "negotiate structured replies first").await;
    }
    let Some(idx) = server.find_export(&req.export) else {
        return send_err(w, option, REP_ERR_UNKNOWN, &format!("no export named {:?}", req.export)).await;
    };
    if let Some(q) = req.queries.iter().find(|q| !q.contains(':')) {
        return send_err(w, option, REP_ERR_INVALID, &format!("query {q:?} has no namespace")).await;
    }
    let matches = |q: &str| {
        if set {
            q == META_BASE_ALLOCATION
        } else {
            q == META_BASE_ALLOCATION || q == "base:"
        }
    };
    let selected = if set {
        req.queries.iter().any(|q| matches(q))
    } else {
        req.queries.is_empty() || req.queries.iter().any(|q| matches(q))
    };
    let mut b = Vec::new();
    if selected {
        let id = if set { META_BASE_ALLOCATION_ID } else { 0 };
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
        b.extend_from_slice(&option_reply(option, REP_META_CONTEXT, &d));
        if set {
            st.meta_for = Some(server.exports()[idx].name.clone());
        }
    }
    b.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    send(w, &b).await
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<(), ConnError> {
    w.write_all(b).await?;
    w.flush().await?;
    Ok(())
}

async fn send_err<W: AsyncWrite + Unpin>(w: &mut W, option: u32, reply: u32, msg: &str) -> Result<(), ConnError> {
    send(w, &option_reply(option, reply, msg.as_bytes())).await
}
