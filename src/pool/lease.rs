//! A server connection lent to one client; returning it is explicit, dropping it closes it.

use std::sync::Arc;

use super::Pool;
use crate::server::ServerConn;

/// A server connection on loan from a pool.
///
/// [`Lease::release`] hands a clean connection back; if a lease is dropped instead (the client
/// vanished mid-transaction, a task was cancelled), the connection is closed, never reused in an
/// unknown state.
pub struct Lease {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    waited: std::time::Duration,
}

impl Lease {
    /// A connection the pool already counts as lent; `waited` is how long the checkout took
    /// (zero when an idle connection was at hand).
    pub(super) fn new(
        conn: Box<ServerConn>,
        pool: Arc<Pool>,
        waited: std::time::Duration,
    ) -> Lease {
        Lease {
            conn: Some(conn),
            pool,
            waited,
        }
    }

    /// How long the client waited for this connection (queued, or while it was opened).
    pub fn waited(&self) -> std::time::Duration {
        self.waited
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("a live lease holds a connection")
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns the connection to its pool (which may still close it if it is broken or old).
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.discard(conn);
        }
    }
}
