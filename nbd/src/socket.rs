//! A connection's socket, in the form the server takes it (tokio's, for negotiation) and in
//! the blocking form its transmission threads use.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;

/// An accepted connection, handed to [`crate::Server::serve_socket`].
#[derive(Debug)]
pub enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The read half of a split [`Socket`], which can be joined again with its write half
/// into the blocking [`Stream`] once negotiation is over.
pub(crate) trait ReadHalf: crate::RecvVectored {
    type Write: tokio::io::AsyncWrite + Unpin + Send + 'static;

    fn rejoin(self, w: Self::Write) -> io::Result<Stream>;
}

macro_rules! read_half {
    ($module:ident, $variant:ident) => {
        impl ReadHalf for tokio::net::$module::OwnedReadHalf {
            type Write = tokio::net::$module::OwnedWriteHalf;

            fn rejoin(self, w: Self::Write) -> io::Result<Stream> {
                let s = self.reunite(w).map_err(|_| io::Error::other("socket halves differ"))?;
                Stream::$variant(s.into_std()?).blocking()
            }
        }
    };
}

read_half!(tcp, Tcp);
read_half!(unix, Unix);

/// The socket in blocking mode. Each holder (the reading side, the writing side) has its
/// own descriptor; [`Stream::shutdown`] on any of them acts on the one socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    pub(crate) fn blocking(self) -> io::Result<Self> {
        match &self {
            Stream::Tcp(s) => s.set_nonblocking(false)?,
            Stream::Unix(s) => s.set_nonblocking(false)?,
        }
        Ok(self)
    }

    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Send what the socket takes at once, without waiting for room: `WouldBlock` if it
    /// takes nothing.
    pub(crate) fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{sendmsg, MsgFlags};
        let fd = self.raw_fd();
        let bufs = &bufs[..bufs.len().min(crate::receive::MAX_IOV)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        sendmsg::<()>(fd, bufs, &[], flags, None).map_err(io::Error::from)
    }

    /// Shut one or both directions down, waking a thread blocked on them. A socket the
    /// peer already closed is no error.
    pub(crate) fn shutdown(&self, how: Shutdown) {
        let r = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, ?how, "socket shutdown");
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
