//! The client side: accepting connections (capped by `max_client_conn`), the startup and
//! authentication handshake, cancel requests, and the framed client socket.

pub mod cancel;
mod codec;
mod handshake;
pub mod listener;

pub use codec::ClientIo;
pub use handshake::{handshake, Login};

use crate::protocol::ProtocolError;

/// A failure on the client side: the client is disconnected, servers are unaffected.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The client's socket failed or closed.
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent invalid protocol.
    #[error("client protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client was refused (bad credentials, unknown database, limits); it was told why.
    #[error("client refused: {0}")]
    Refused(String),
    /// The client took longer than `client_login_timeout` to log in.
    #[error("client login timed out")]
    LoginTimeout,
    /// The client closed its socket before finishing its startup (port scanners, health
    /// checks that only open a TCP connection): nothing to warn about.
    #[error("client closed the connection during startup")]
    ClosedDuringStartup,
}

impl crate::error::Failure for FrontendError {
    fn side(&self) -> crate::error::Side {
        crate::error::Side::Client
    }

    fn sqlstate(&self) -> &str {
        match self {
            FrontendError::Protocol(_) => "08P01",
            FrontendError::Refused(_) => "28000",
            FrontendError::LoginTimeout => "08P01",
            FrontendError::Io(_) | FrontendError::ClosedDuringStartup => "08006",
        }
    }

    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}
