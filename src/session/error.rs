//! How a session ends when it fails, and which side failed.

use crate::error::{Failure, Retry, Side};
use crate::frontend::FrontendError;
use crate::protocol::ProtocolError;

/// Why a session ended abnormally; says which side failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's socket failed or the client broke the protocol.
    #[error(transparent)]
    Client(#[from] FrontendError),
    /// The server connection failed while the client was using it.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// usher's own state broke an invariant (a bug): the client gets XX000 and the session
    /// ends, instead of a panic taking the task down.
    #[error("usher internal error: {0}")]
    Internal(&'static str),
}

impl Failure for SessionError {
    fn side(&self) -> Side {
        match self {
            SessionError::Client(_) => Side::Client,
            // A failure of the connection in use, whatever the server's error kind.
            SessionError::Server(_) => Side::Server,
            SessionError::Internal(_) => Side::Internal,
        }
    }

    fn sqlstate(&self) -> &str {
        match self {
            SessionError::Client(e) => e.sqlstate(),
            SessionError::Server(_) => "08006",
            SessionError::Internal(_) => "XX000",
        }
    }

    /// The client's work may have run: only the client can know whether to do it again.
    fn retry(&self) -> Retry {
        Retry::Never
    }
}

impl From<ProtocolError> for SessionError {
    fn from(e: ProtocolError) -> Self {
        SessionError::Client(FrontendError::Protocol(e))
    }
}
