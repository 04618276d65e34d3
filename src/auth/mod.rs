//! Authentication: checking clients (SCRAM-SHA-256, md5, trust) and the secrets behind them.
//!
//! usher authenticates clients itself against the `[[users]]` list; towards servers it logs in
//! with `server_user` / `server_password` (see `server::connect`).

mod md5;
mod scram;

pub use md5::md5_response_matches;
pub use scram::{ScramServer, ScramVerifier};

/// Why a client could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, wrong proof or unknown user; the client gets SQLSTATE 28P01.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The SASL exchange was not well formed; the client gets SQLSTATE 08P01.
    #[error("invalid SCRAM exchange: {0}")]
    BadExchange(String),
    /// A stored secret in the config is unusable.
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(String),
}
