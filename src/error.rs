//! What every layer's error says beside its message, the way pingora's errors do: which side
//! failed ([`Side`]), the SQLSTATE the client is answered with, and whether doing the same
//! work again is safe ([`Retry`]). The session's retry policy and its logging read these,
//! not the variants of each layer.

/// Which side of usher failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its socket, or a message it sent. Nothing to alert on.
    Client,
    /// A server: unreachable, lost, or it broke the protocol. Worth a WARN.
    Server,
    /// usher's configuration: a database, user or shard the request names is not there.
    Config,
    /// usher itself broke an invariant: a bug, logged as an ERROR.
    Internal,
}

/// Whether the failed work may be done again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No: the work may have run, or the same answer would come again.
    Never,
    /// Yes, on this server or another: nothing of the client's reached a server.
    Safe,
    /// Only when the connection that failed was a reused pooled one (it may have been closed
    /// by the server while idle); on a fresh connection the failure is real.
    OnReused,
}

/// An error that knows its side, SQLSTATE and retry policy.
pub trait Failure: std::error::Error {
    /// Which side failed.
    fn side(&self) -> Side;
    /// The SQLSTATE the client gets.
    fn sqlstate(&self) -> &str;
    /// Whether the work may be done again.
    fn retry(&self) -> Retry;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolError;
    use crate::server::ServerError;

    #[test]
    fn each_layer_says_its_side_and_retry() {
        let connect = ServerError::Connect {
            server: "s:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            (connect.side(), Failure::sqlstate(&connect), connect.retry()),
            (Side::Server, "08006", Retry::Safe)
        );
        let lost = ServerError::Io {
            server: "s:1".into(),
            reason: "reset".into(),
        };
        assert_eq!(lost.retry(), Retry::OnReused);
        let removed = PoolError::DatabaseRemoved {
            database: "d".into(),
        };
        assert_eq!(
            (removed.side(), removed.retry()),
            (Side::Config, Retry::Never)
        );
        let pooled = PoolError::Server(lost);
        assert_eq!(
            (pooled.side(), pooled.retry()),
            (Side::Server, Retry::OnReused)
        );
        let wait = PoolError::WaitTimeout {
            pool: "p".into(),
            waited: std::time::Duration::from_secs(1),
            size: 1,
        };
        assert_eq!(
            (Failure::sqlstate(&wait), wait.retry()),
            ("57014", Retry::Never)
        );
    }
}
