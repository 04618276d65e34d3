//! Server connection pools, one per (database, user, server), with PgBouncer's semantics:
//! a size limit, a reserve used once a client waited `reserve_pool_timeout`, a wait limit
//! (`query_wait_timeout`), `min_pool_size` kept warm, and idle, aged or broken connections
//! retired (see [`maintenance`]).

mod lease;
pub mod maintenance;
#[allow(clippy::module_inception)]
mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use lease::Lease;
pub use pool::{Pool, PoolCounts, ServerInfo};

use crate::config::ServerAddr;
use crate::server::ServerError;

/// Identifies a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Database name clients connect to.
    pub database: String,
    /// User name clients log in with.
    pub user: String,
    /// The server this pool connects to.
    pub server: Arc<ServerAddr>,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.database, self.user, self.server)
    }
}

/// Limits and credentials of one pool, derived from the config.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Normal maximum of server connections.
    pub size: usize,
    /// Connections kept open even when idle.
    pub min: usize,
    /// Extra connections allowed after `reserve_timeout`.
    pub reserve: usize,
    /// Wait before the reserve may be used.
    pub reserve_timeout: Duration,
    /// Longest wait for a connection; `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// Idle connections above `min` are closed after this long.
    pub idle_timeout: Option<Duration>,
    /// Connections older than this are closed when idle.
    pub lifetime: Option<Duration>,
    /// Limit on connect + login.
    pub connect_timeout: Duration,
    /// Per-connection prepared statement LRU size.
    pub max_prepared: usize,
    /// Connections idle longer than this are checked before being handed out.
    pub check_delay: Option<Duration>,
    /// The check query.
    pub check_query: String,
    /// User name for the server.
    pub server_user: String,
    /// Password for the server.
    pub server_password: Option<String>,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Waited `query_wait_timeout` without a connection becoming free.
    #[error("query_wait_timeout: no server connection to {pool} became free within {waited:?} (pool size {size})")]
    WaitTimeout {
        /// The pool.
        pool: String,
        /// How long the client waited.
        waited: Duration,
        /// The pool's size.
        size: usize,
    },
    /// Opening a new server connection failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A reload removed the database this pool served.
    #[error("database {database:?} is no longer in usher's config (removed by a reload)")]
    DatabaseRemoved {
        /// The database name clients use.
        database: String,
    },
    /// A reload dropped this pool (its server, user or database left the config) while the
    /// client was waiting for it: routing again with the new config is safe.
    #[error(
        "server {server} of database {database:?} was removed from usher's config by a reload"
    )]
    Removed {
        /// The database name clients use.
        database: String,
        /// The server the pool connected to.
        server: String,
    },
}

impl crate::error::Failure for PoolError {
    fn side(&self) -> crate::error::Side {
        use crate::error::Side;
        match self {
            PoolError::Server(e) => e.side(),
            PoolError::WaitTimeout { .. } => Side::Server,
            PoolError::DatabaseRemoved { .. } | PoolError::Removed { .. } => Side::Config,
        }
    }

    fn sqlstate(&self) -> &str {
        PoolError::sqlstate(self)
    }

    fn retry(&self) -> crate::error::Retry {
        use crate::error::Retry;
        match self {
            PoolError::Server(e) => e.retry(),
            // Nothing was sent: route again by the new config.
            PoolError::Removed { .. } => Retry::Safe,
            PoolError::WaitTimeout { .. } | PoolError::DatabaseRemoved { .. } => Retry::Never,
        }
    }
}

impl PoolError {
    /// SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            PoolError::WaitTimeout { .. } => "57014",
            PoolError::Server(e) => e.sqlstate(),
            PoolError::DatabaseRemoved { .. } => "3D000",
            // Raised only for a client that then routes again; seen only if that fails too.
            PoolError::Removed { .. } => "08006",
        }
    }
}

/// Every pool in the process.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    /// The pool for `key`, created with `settings` on first use.
    pub fn get_or_create(
        &self,
        key: &PoolKey,
        settings: impl FnOnce() -> PoolSettings,
    ) -> Arc<Pool> {
        let mut map = self.map.lock();
        if let Some(p) = map.get(key) {
            return p.clone();
        }
        let pool = Arc::new(Pool::new(key.clone(), settings()));
        map.insert(key.clone(), pool.clone());
        pool
    }

    /// A snapshot of all pools.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.lock().values().cloned().collect()
    }

    /// Forgets the pools for which `keep` is false: their waiting clients are told (and route
    /// again), their idle connections close now, and connections in use when their clients
    /// give them back.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let dropped: Vec<Arc<Pool>> = {
            let mut map = self.map.lock();
            let gone: Vec<PoolKey> = map.keys().filter(|k| !keep(k)).cloned().collect();
            gone.iter().filter_map(|k| map.remove(k)).collect()
        };
        for pool in dropped {
            pool.remove();
        }
    }
}
