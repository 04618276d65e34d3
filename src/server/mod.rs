//! Server connections: connecting and logging in to PostgreSQL, the state usher tracks per
//! connection (parameters, prepared statements, cancel key), and control-path queries
//! (parameter sync, reset, rollback) that never touch a client.

mod conn;
mod control;

pub use conn::{ServerConn, ServerState};
pub use control::quote_literal;

use crate::error::{Retry, Side};
use crate::protocol::messages::ErrorFields;

/// A failure on the server side, with whether the client's work may be retried elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP connect failed; nothing was sent, so retrying on another server is safe.
    #[error("could not connect to server {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting or logging in took longer than `server_connect_timeout`.
    #[error("timed out connecting to server {server} after {after:?}")]
    ConnectTimeout {
        /// The server.
        server: String,
        /// The configured timeout.
        after: std::time::Duration,
    },
    /// The server refused the login (bad password, missing database, too many connections...).
    #[error("server {server} refused login: {fields}")]
    Login {
        /// The server.
        server: String,
        /// Its ErrorResponse.
        fields: ErrorFields,
    },
    /// The server asked for an authentication method usher cannot answer.
    #[error("server {server} asked for {method}, which usher cannot answer{hint}")]
    AuthUnsupported {
        /// The server.
        server: String,
        /// The method asked for.
        method: String,
        /// What to configure.
        hint: String,
    },
    /// The connection broke or the server closed it while in use.
    #[error("lost connection to server {server}: {reason}")]
    Io {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server sent something that is not valid protocol.
    #[error("protocol error from server {server}: {reason}")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// A control query (parameter sync, reset, rollback) failed.
    #[error("server {server}: {fields}")]
    Query {
        /// The server.
        server: String,
        /// Its ErrorResponse.
        fields: ErrorFields,
    },
}

impl crate::error::Failure for ServerError {
    fn side(&self) -> Side {
        match self {
            // The server refused what the client asked (a setting, a statement).
            ServerError::Query { .. } => Side::Client,
            _ => Side::Server,
        }
    }

    fn sqlstate(&self) -> &str {
        ServerError::sqlstate(self)
    }

    fn retry(&self) -> Retry {
        match self {
            // Nothing of the client's work reached the server.
            ServerError::Connect { .. }
            | ServerError::ConnectTimeout { .. }
            | ServerError::Login { .. } => Retry::Safe,
            // A pooled connection may have been closed while idle.
            ServerError::Io { .. } => Retry::OnReused,
            ServerError::AuthUnsupported { .. }
            | ServerError::Protocol { .. }
            | ServerError::Query { .. } => Retry::Never,
        }
    }
}

impl ServerError {
    /// SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Login { fields, .. } | ServerError::Query { fields, .. }
                if !fields.code.is_empty() =>
            {
                &fields.code
            }
            ServerError::Protocol { .. } => "08P01",
            _ => "08006",
        }
    }
}
