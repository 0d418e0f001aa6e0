//! The server side of the Network Block Device protocol.
//!
//! This crate knows the wire and nothing about storage: fixed newstyle negotiation
//! ([`handshake`]), option and request decoding into typed enums ([`option`], [`request`]),
//! simple and structured reply encoding ([`reply`]), and a pipelined per-connection loop
//! that is generic over a [`BlockDevice`]: on threads that take turns at a socket
//! ([`Server::serve_socket`]), or on tokio tasks for any stream ([`Server::serve`]).

mod busy_poll;
pub mod consts;
pub mod device;
pub mod errno;
pub mod export;
pub mod handshake;
pub mod option;
pub mod pool;
mod receive;
pub mod reply;
pub mod request;
pub mod server;
mod socket;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod transmission;
mod turns;
mod work;

pub use device::{BlockDevice, DeviceError, Extent, LentBytes, ReadData, WriteBuffer, ZeroFlags};
pub use errno::{Errno, RequestError};
pub use export::Export;
pub use receive::RecvVectored;
pub use server::{ConfigError, ConnError, Server, ServerConfig};
pub use socket::Socket;
