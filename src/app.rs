//! The shared state of a running usher: config and topology snapshots, pools, probes, caches,
//! the client registry, the pause gate and the shutdown signal. Lower layers (frontend,
//! session, admin, monitor) see it; it sees none of them. What spawns the listener, monitor
//! and HTTP server around it is [`crate::serve`](mod@crate::serve).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

mod defaults;
mod lifecycle;

use parking_lot::RwLock;

use crate::auth::{AuthError, ScramVerifier};
use crate::config::{Config, ServerAddr, User};
use crate::frontend::cancel::CancelRegistry;
use crate::pool::{Pool, PoolError, PoolKey, PoolSettings, Pools};
use crate::router::cache::QueryCache;
use crate::router::probes::Probes;
use crate::router::topology::Topology;

/// Shared state of one usher process.
pub struct App {
    config: RwLock<Arc<Config>>,
    /// Every server pool.
    pub pools: Arc<Pools>,
    /// Cancel keys of live clients.
    pub cancels: CancelRegistry,
    /// Client connections open now.
    pub clients: AtomicUsize,
    next_client_id: AtomicU64,
    /// SCRAM verifiers derived from plain passwords, by (user, secret): deriving one costs
    /// 4096 PBKDF2 rounds, too much to repeat on every login.
    verifiers: parking_lot::Mutex<HashMap<(String, String), Arc<ScramVerifier>>>,
    topology: RwLock<Arc<Topology>>,
    /// Bumped after every swap of `config` and `topology`: sessions check their
    /// [`Snapshot`] with one atomic load per transaction instead of taking the locks.
    generation: AtomicU64,
    /// Routing classifications by query text.
    pub query_cache: QueryCache,
    /// Control-plane connections for probes and catalog lookups.
    pub probes: Probes,
    /// Counters, gauges and histograms for `/metrics` and the admin console.
    pub metrics: crate::stats::Metrics,
    /// Client connections, for SHOW CLIENTS.
    pub client_list: crate::stats::ClientRegistry,
    /// Databases paused by the admin console (PAUSE): their new transactions wait.
    pub paused: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// True while `paused` is not empty (checked lock-free on every transaction).
    pub any_paused: std::sync::atomic::AtomicBool,
    /// Woken on RESUME.
    pub resumed: tokio::sync::Notify,
    /// The config file, for reloads.
    config_path: parking_lot::Mutex<Option<std::path::PathBuf>>,
    /// True once a graceful shutdown started (for the listener and the signal handler).
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The same, read lock-free by sessions.
    stopping: std::sync::atomic::AtomicBool,
    /// Whether a user-defined function is VOLATILE, by (database, name).
    volatile: parking_lot::Mutex<HashMap<(String, String), bool>>,
    /// Column defaults of sharded tables, by (database, table), for INSERTs split across
    /// shards (see [`App::column_defaults`]); forgotten after DDL through usher.
    defaults: parking_lot::Mutex<HashMap<(String, String), TableDefaults>>,
    /// Distributed transactions of writes across shards (ids, decision log, recovery).
    pub twophase: Arc<crate::twophase::Coordinator>,
}

/// The column defaults of one table (see [`App::column_defaults`]).
pub type TableDefaults = Arc<Vec<crate::router::fanout_insert::ColumnDefault>>;

/// A consistent view of the config and topology in force, for a session to keep between
/// transactions (see [`App::refresh`]).
pub struct Snapshot {
    generation: u64,
    /// The config.
    pub config: Arc<Config>,
    /// The servers' run-time state.
    pub topology: Arc<Topology>,
}

impl App {
    /// A new proxy state for `config`.
    pub fn new(config: Config) -> Arc<App> {
        Arc::new(App {
            topology: RwLock::new(Arc::new(Topology::new(&config))),
            query_cache: QueryCache::new(config.general.query_cache_size),
            probes: Probes::default(),
            metrics: crate::stats::Metrics::new(),
            config_path: parking_lot::Mutex::new(None),
            client_list: crate::stats::ClientRegistry::default(),
            paused: parking_lot::Mutex::new(std::collections::HashSet::new()),
            any_paused: std::sync::atomic::AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            shutdown: tokio::sync::watch::Sender::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            volatile: parking_lot::Mutex::new(HashMap::new()),
            defaults: parking_lot::Mutex::new(HashMap::new()),
            twophase: Arc::new(crate::twophase::Coordinator::new(&config.general)),
            config: RwLock::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            pools: Arc::new(Pools::default()),
            cancels: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            verifiers: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Run-time state of the servers (roles, bans, lag).
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().clone()
    }

    /// True when one of `functions` (called by a statement on `database`) is a user-defined
    /// VOLATILE function; looked up in pg_proc on the shard-0 primary once per name. A failed
    /// lookup counts as a write (the safe side) and is retried next time.
    pub async fn calls_volatile(
        &self,
        config: &Config,
        database: &str,
        functions: &[String],
    ) -> bool {
        for f in functions {
            let key = (database.to_string(), f.clone());
            if let Some(v) = self.volatile.lock().get(&key) {
                if *v {
                    return true;
                }
                continue;
            }
            let (schema, name) = match f.rsplit_once('.') {
                Some((s, n)) => (Some(s.to_string()), n.to_string()),
                None => (None, f.clone()),
            };
            let Some(db) = config.databases.get(database) else {
                return true;
            };
            let sql = "SELECT coalesce(bool_or(p.provolatile = 'v'), false) FROM pg_catalog.pg_proc p \
                       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.proname = $1 \
                       AND ($2::text IS NULL OR n.nspname = $2)";
            match self
                .probes
                .query(config, &db.shards[0].primary.addr, sql, &[&name, &schema])
                .await
            {
                Ok(rows) => {
                    // An answer of another type counts as volatile (the safe side).
                    let volatile: bool = rows
                        .first()
                        .map(|r| r.try_get(0).unwrap_or(true))
                        .unwrap_or(false);
                    self.volatile.lock().insert(key, volatile);
                    if volatile {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(function = %f, error = %e, "could not look up function volatility; routing to the primary");
                    return true;
                }
            }
        }
        false
    }

    /// What an earlier lookup found about `function` on `database`, without a new lookup.
    pub fn volatile_cached(&self, database: &str, function: &str) -> Option<bool> {
        self.volatile
            .lock()
            .get(&(database.to_string(), function.to_string()))
            .copied()
    }

    /// The config and topology in force, stamped with their generation.
    pub fn snapshot(&self) -> Snapshot {
        // The generation is read first: a swap racing with this leaves an older stamp on
        // newer data, and the next [`App::refresh`] reads again.
        let generation = self.generation.load(Ordering::Acquire);
        Snapshot {
            generation,
            config: self.config(),
            topology: self.topology(),
        }
    }

    /// Brings `snap` up to date; true when a reload replaced it. Costs one atomic load when
    /// nothing was reloaded.
    pub fn refresh(&self, snap: &mut Snapshot) -> bool {
        if self.generation.load(Ordering::Acquire) == snap.generation {
            return false;
        }
        *snap = self.snapshot();
        true
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// The SCRAM verifier for a user's configured secret, derived once (on a blocking thread:
    /// PBKDF2 must not stall the runtime) and then cached.
    pub async fn scram_verifier(
        &self,
        user: &str,
        secret: &str,
    ) -> Result<Arc<ScramVerifier>, AuthError> {
        let key = (user.to_string(), secret.to_string());
        if let Some(v) = self.verifiers.lock().get(&key) {
            return Ok(v.clone());
        }
        let owned = secret.to_string();
        let derived = tokio::task::spawn_blocking(move || ScramVerifier::from_secret(&owned))
            .await
            .map_err(|e| AuthError::BadVerifier(format!("verifier derivation failed: {e}")))?;
        let v = Arc::new(derived?);
        self.verifiers.lock().insert(key, v.clone());
        Ok(v)
    }

    /// A fresh client id.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The pool serving `user` on `database` at `server`.
    pub fn pool(
        &self,
        config: &Config,
        database: &str,
        user: &User,
        server: &ServerAddr,
    ) -> Arc<Pool> {
        let key = PoolKey {
            database: database.to_string(),
            user: user.name.clone(),
            server: Arc::new(server.clone()),
        };
        self.pools
            .get_or_create(&key, || pool_settings(config, database, user))
    }

    /// The server parameters to announce to a client of `database`: from the first server
    /// connection of shard 0's primary pool (opened now if there is none yet).
    pub async fn server_params(
        &self,
        config: &Config,
        database: &str,
        user: &User,
    ) -> Result<BTreeMap<String, String>, PoolError> {
        let removed = || PoolError::DatabaseRemoved {
            database: database.to_string(),
        };
        let db = config.databases.get(database).ok_or_else(removed)?;
        let primary = &db.shards.first().ok_or_else(removed)?.primary.addr;
        let pool = self.pool(config, database, user, primary);
        if let Some(p) = pool.server_params() {
            return Ok(p);
        }
        let mut lease = pool.checkout().await?;
        let params = lease.conn().state.reported.clone();
        lease.release();
        Ok(params)
    }
}

/// Pool settings for a (database, user) from the config. A database the config no longer
/// has (a session still routing by an older snapshot) gets a pool of size 0: it opens nothing.
pub fn pool_settings(config: &Config, database: &str, user: &User) -> PoolSettings {
    let g = &config.general;
    let size = config
        .databases
        .get(database)
        .map_or(0, |db| config.pool_size(db, user));
    PoolSettings {
        size,
        min: g.min_pool_size.min(size),
        reserve: g.reserve_pool_size,
        reserve_timeout: g.reserve_pool_timeout.0,
        wait_timeout: g.query_wait_timeout.enabled(),
        idle_timeout: g.server_idle_timeout.enabled(),
        lifetime: g.server_lifetime.enabled(),
        connect_timeout: g.server_connect_timeout.0,
        max_prepared: g.max_prepared_statements,
        check_delay: g.server_check_delay.enabled(),
        check_query: g.server_check_query.clone(),
        server_user: user.server_user().to_string(),
        server_password: user.server_password().map(str::to_string),
    }
}
