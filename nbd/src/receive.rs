//! Receiving a WRITE's payload into memory the device lends ([`crate::WriteBuffer`]): the
//! bytes the connection's buffer already holds are copied, the rest is read from the socket
//! straight into the device's memory with vectored reads.

use std::future::Future;
use std::io::{self, IoSliceMut, Read};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// The most buffers one vectored read or write takes (Linux's `UIO_MAXIOV` is 1024).
pub(crate) const MAX_IOV: usize = 1024;

/// A connection's read half. Sockets read into many buffers with one call; other streams
/// (in-memory pipes in tests) fill one buffer a call, which is as correct, only slower.
pub trait RecvVectored: AsyncRead + Unpin + Send + 'static {
    /// Read into `bufs` in order; `Ok(0)` only at the end of the stream.
    fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> impl Future<Output = io::Result<usize>> + Send {
        async move {
            match bufs.iter_mut().find(|b| !b.is_empty()) {
                Some(b) => self.read(b).await,
                None => Ok(0),
            }
        }
    }
}

macro_rules! socket_recv_vectored {
    ($t:ty) => {
        impl RecvVectored for $t {
            async fn recv_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
                loop {
                    self.readable().await?;
                    match self.try_read_vectored(bufs) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        done => return done,
                    }
                }
            }
        }
    };
}

socket_recv_vectored!(tokio::net::tcp::OwnedReadHalf);
socket_recv_vectored!(tokio::net::unix::OwnedReadHalf);
impl<T: AsyncRead + Send + 'static> RecvVectored for tokio::io::ReadHalf<T> {}
impl RecvVectored for tokio::io::DuplexStream {}

/// Fill `bufs`, in order, from `r`: first from what its buffer holds, then from the stream.
pub(crate) async fn receive_into<R: RecvVectored>(r: &mut BufReader<R>, mut bufs: Vec<&mut [u8]>) -> io::Result<()> {
    let mut at = Position::default();
    let copied = at.copy_held(r.buffer(), &mut bufs);
    r.consume(copied);
    while at.done < bufs.len() {
        let n = r.get_mut().recv_vectored(&mut at.iov(&mut bufs)).await?;
        at.received(&bufs, n)?;
    }
    Ok(())
}

/// [`receive_into`] for a blocking stream.
pub(crate) fn receive_into_blocking<R: Read>(
    r: &mut std::io::BufReader<R>,
    mut bufs: Vec<&mut [u8]>,
) -> io::Result<()> {
    let mut at = Position::default();
    let copied = at.copy_held(r.buffer(), &mut bufs);
    std::io::BufRead::consume(r, copied);
    while at.done < bufs.len() {
        let n = match r.get_mut().read_vectored(&mut at.iov(&mut bufs)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            n => n?,
        };
        at.received(&bufs, n)?;
    }
    Ok(())
}

/// How far a payload has been received: `done` whole buffers are full, and `at` bytes of
/// the next one.
#[derive(Default)]
struct Position {
    done: usize,
    at: usize,
}

impl Position {
    /// Copy what the connection's buffer already holds; returns the bytes taken from it.
    fn copy_held(&mut self, held: &[u8], bufs: &mut [&mut [u8]]) -> usize {
        skip_empty(bufs, &mut self.done);
        let mut copied = 0;
        while self.done < bufs.len() && copied < held.len() {
            let take = (held.len() - copied).min(bufs[self.done].len() - self.at);
            bufs[self.done][self.at..self.at + take].copy_from_slice(&held[copied..copied + take]);
            copied += take;
            advance(bufs, take, &mut self.done, &mut self.at);
            skip_empty(bufs, &mut self.done);
        }
        copied
    }

    /// The room left, as at most [`MAX_IOV`] buffers for one vectored read.
    fn iov<'a>(&self, bufs: &'a mut [&mut [u8]]) -> Vec<IoSliceMut<'a>> {
        let (first, rest) = bufs[self.done..].split_at_mut(1);
        let mut iov = Vec::with_capacity(rest.len().min(MAX_IOV - 1) + 1);
        iov.push(IoSliceMut::new(&mut first[0][self.at..]));
        iov.extend(rest.iter_mut().take(MAX_IOV - 1).map(|b| IoSliceMut::new(b)));
        iov
    }

    /// Count `n` bytes a read placed; a read of none is the stream's early end.
    fn received(&mut self, bufs: &[&mut [u8]], n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        advance(bufs, n, &mut self.done, &mut self.at);
        skip_empty(bufs, &mut self.done);
        Ok(())
    }
}

/// Count `n` more bytes received into `bufs` from position (`done`, `at`).
fn advance(bufs: &[&mut [u8]], mut n: usize, done: &mut usize, at: &mut usize) {
    while n > 0 {
        let take = n.min(bufs[*done].len() - *at);
        n -= take;
        *at += take;
        if *at == bufs[*done].len() {
            (*done, *at) = (*done + 1, 0);
        }
    }
}

/// Step over empty buffers, so `done` names one with room or the end.
fn skip_empty(bufs: &[&mut [u8]], done: &mut usize) {
    while *done < bufs.len() && bufs[*done].is_empty() {
        *done += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Send `header` and `payload` down `w`, read the header through a small buffer, then
    /// receive the payload into pieces of the given sizes.
    async fn round_trip<R: RecvVectored, W: tokio::io::AsyncWrite + Unpin + Send + 'static>(
        r: R,
        mut w: W,
        sizes: &[usize],
    ) {
        let total: usize = sizes.iter().sum();
        let payload: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4096) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(b"HEADER").await.unwrap();
            // In pieces, so the reader sees short reads.
            for piece in sent.chunks(3001) {
                w.write_all(piece).await.unwrap();
            }
            w.flush().await.unwrap();
            w
        });
        let mut r = BufReader::with_capacity(8192, r);
        let mut hdr = [0u8; 6];
        r.read_exact(&mut hdr).await.unwrap();
        assert_eq!(&hdr, b"HEADER");
        // The buffer may now hold part of the payload already.
        let _ = r.fill_buf().await.unwrap();
        let mut pieces: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xee; n]).collect();
        receive_into(&mut r, pieces.iter_mut().map(|p| p.as_mut_slice()).collect()).await.unwrap();
        assert_eq!(pieces.concat(), payload, "payload received out of order or short");
        let mut w = writer.await.unwrap();
        w.write_all(b"NEXT").await.unwrap();
        let mut next = [0u8; 4];
        r.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT", "the request after the payload starts where it ends");
    }

    fn sizes() -> Vec<usize> {
        let mut s = vec![4096; 300];
        s[3] = 0;
        s[10] = 100;
        s.push(7);
        s
    }

    #[tokio::test]
    async fn payload_arrives_whole_over_tcp_through_many_buffers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (r, _w) = server.into_split();
        let (_cr, cw) = client.into_split();
        round_trip(r, cw, &sizes()).await;
    }

    #[tokio::test]
    async fn payload_arrives_whole_over_a_unix_socket_and_a_pipe() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (r, _w) = a.into_split();
        let (_br, bw) = b.into_split();
        round_trip(r, bw, &sizes()).await;
        let (a, b) = tokio::io::duplex(5000);
        let (r, _w) = tokio::io::split(a);
        round_trip(r, b, &sizes()).await;
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_is_an_error() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&[1u8; 5000]).await.unwrap();
        drop(b);
        let mut r = BufReader::new(a);
        let mut pieces = [vec![0u8; 4096], vec![0u8; 4096]];
        let err = receive_into(&mut r, pieces.iter_mut().map(|p| p.as_mut_slice()).collect()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
