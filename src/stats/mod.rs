//! What usher counts, for the Prometheus `/metrics` endpoint, `/pools` and the admin console.
//!
//! Traffic counters and duration histograms are per (database, user) and updated on the data
//! path through handles each session resolves once at login (a relaxed atomic add per event).
//! Gauges (clients and server connections by state, pool sizes, waits, lag, bans) are read from
//! the pools and the topology when scraped ([`collect::refresh`]), so they cost nothing between
//! scrapes.

pub mod collect;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    Counter, CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Where a routing decision went (label `outcome` of `usher_route_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// The primary (writes, or no split).
    Primary,
    /// A replica.
    Replica,
    /// The primary because no replica was usable.
    Fallback,
    /// A shard picked by key or hint (counted in addition to the server's role).
    Shard,
    /// Refused (no key, no server, ...).
    Rejected,
    /// One read run on every shard and merged (counted once, besides each shard's role).
    Fanout,
    /// One write run on several shards and committed with two-phase commit.
    FanoutWrite,
    /// A transaction block that widened to several shards (counted once, when it widens).
    Spanning,
}

impl RouteOutcome {
    /// Every outcome, in declaration order (the index of each is `outcome as usize`).
    pub const ALL: [RouteOutcome; 8] = [
        RouteOutcome::Primary,
        RouteOutcome::Replica,
        RouteOutcome::Fallback,
        RouteOutcome::Shard,
        RouteOutcome::Rejected,
        RouteOutcome::Fanout,
        RouteOutcome::FanoutWrite,
        RouteOutcome::Spanning,
    ];

    fn label(self) -> &'static str {
        match self {
            RouteOutcome::Primary => "primary",
            RouteOutcome::Replica => "replica",
            RouteOutcome::Fallback => "fallback",
            RouteOutcome::Shard => "shard",
            RouteOutcome::Rejected => "rejected",
            RouteOutcome::Fanout => "fanout",
            RouteOutcome::FanoutWrite => "fanout_write",
            RouteOutcome::Spanning => "spanning",
        }
    }
}

/// Traffic handles of one (database, user).
pub struct ClientMetrics {
    /// Clients logged in now.
    pub logged_in: AtomicI64,
    /// Transactions finished.
    pub transactions: IntCounter,
    /// Queries (simple Query and Execute messages).
    pub queries: IntCounter,
    /// Bytes received from clients.
    pub received: IntCounter,
    /// Bytes sent to clients.
    pub sent: IntCounter,
    /// ErrorResponses sent to clients (from servers or from usher).
    pub errors: IntCounter,
    /// Malformed or out-of-place messages received from clients (answered with 08P01).
    pub protocol_violations: IntCounter,
    /// Time clients spent waiting for a server connection.
    pub wait: Counter,
    /// From sending a client's messages to the server until the server is ready again.
    pub query_duration: Histogram,
    /// From a transaction's first message until it ended.
    pub transaction_duration: Histogram,
    /// Routing decisions of the database, by [`RouteOutcome`] (shared by its users).
    routes: [IntCounter; RouteOutcome::ALL.len()],
}

impl ClientMetrics {
    /// Counts a routing decision.
    pub fn route(&self, outcome: RouteOutcome) {
        self.routes[outcome as usize].inc();
    }
}

/// Every metric of one usher process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    clients: IntGaugeVec,
    servers: IntGaugeVec,
    pool_size: IntGaugeVec,
    pool_max_size: IntGaugeVec,
    pool_max_wait: GaugeVec,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    errors: IntCounterVec,
    protocol_violations: IntCounterVec,
    wait: CounterVec,
    query_duration: HistogramVec,
    transaction_duration: HistogramVec,
    routes: IntCounterVec,
    lag: GaugeVec,
    banned: IntGaugeVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    reloads: IntCounterVec,
    refused: IntCounterVec,
    timeouts: IntCounterVec,
    handles: Mutex<HashMap<(String, String), Arc<ClientMetrics>>>,
    /// (totals at the last tick, averages over the last period) by database.
    averages: Mutex<(
        std::collections::BTreeMap<String, Totals>,
        std::collections::BTreeMap<String, Totals>,
    )>,
}

const DB_USER: &[&str] = &["database", "user"];
const POOL: &[&str] = &["database", "user", "shard", "role", "server"];

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("unique metric names");
            m
        }
        let iv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let ic = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let hist = |name: &str, help: &str| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.clone()),
                    DB_USER,
                )
                .expect("valid"),
            )
        };
        Metrics {
            clients: iv("usher_clients", "Client connections by state (active: holding a server connection; waiting: queued for one; idle).", &["database", "user", "state"]),
            servers: iv("usher_server_connections", "Server connections by state (active: lent to a client; idle; login: being opened; tested: being checked before use).", &["database", "user", "shard", "role", "server", "state"]),
            pool_size: iv("usher_pool_size", "Configured pool size.", POOL),
            pool_max_size: iv("usher_pool_max_size", "Pool size plus the reserve pool.", POOL),
            pool_max_wait: reg(&registry, GaugeVec::new(Opts::new("usher_pool_max_wait_seconds", "How long the longest-waiting client of the pool has waited so far."), POOL).expect("valid")),
            transactions: ic("usher_transactions_total", "Transactions finished (explicit, or one statement outside a transaction).", DB_USER),
            queries: ic("usher_queries_total", "Queries: simple Query and extended-protocol Execute messages.", DB_USER),
            received: ic("usher_client_received_bytes_total", "Bytes received from clients.", DB_USER),
            sent: ic("usher_client_sent_bytes_total", "Bytes sent to clients.", DB_USER),
            errors: ic("usher_errors_total", "ErrorResponses sent to clients, from servers or from usher.", DB_USER),
            protocol_violations: ic("usher_client_protocol_violations_total", "Malformed or out-of-place messages from clients, answered with SQLSTATE 08P01.", DB_USER),
            wait: reg(&registry, CounterVec::new(Opts::new("usher_wait_seconds_total", "Time clients spent waiting for a server connection."), DB_USER).expect("valid")),
            query_duration: hist("usher_query_duration_seconds", "One per ReadyForQuery: from sending a client's messages to the server (or, pipelined, from the previous answer) until it is ready for more."),
            transaction_duration: hist("usher_transaction_duration_seconds", "From a transaction's first message to its end."),
            routes: ic("usher_route_decisions_total", "Routing decisions by outcome: primary, replica, fallback (a read on the primary for want of a replica), shard (picked by key or hint), rejected.", &["database", "outcome"]),
            lag: reg(&registry, GaugeVec::new(Opts::new("usher_replica_lag_seconds", "Replication lag of each replica as last measured (-1: unknown)."), &["database", "shard", "server"]).expect("valid")),
            banned: iv("usher_server_banned", "1 while a server is banned after a failure.", &["database", "shard", "role", "server"]),
            cache_hits: reg(&registry, IntCounter::new("usher_query_cache_hits_total", "Statement classifications answered from the parse cache.").expect("valid")),
            cache_misses: reg(&registry, IntCounter::new("usher_query_cache_misses_total", "Statements parsed with libpg_query.").expect("valid")),
            reloads: ic("usher_config_reloads_total", "Config reloads by result (ok, error).", &["result"]),
            refused: ic("usher_client_connections_refused_total", "Client connections refused before login by reason: max_client_conn (told 53300), flood (over max_client_conn with too many already being refused: closed at accept), login_timeout.", &["reason"]),
            timeouts: ic("usher_client_timeouts_total", "Clients disconnected by a timeout, by setting: client_idle_timeout, idle_transaction_timeout, query_timeout, transaction_timeout.", &["setting"]),
            handles: Mutex::new(HashMap::new()),
            averages: Mutex::new(Default::default()),
            registry,
        }
    }

    /// The traffic handles of (database, user), created on first use.
    pub fn client(&self, database: &str, user: &str) -> Arc<ClientMetrics> {
        let key = (database.to_string(), user.to_string());
        self.handles
            .lock()
            .entry(key)
            .or_insert_with(|| {
                let l = [database, user];
                Arc::new(ClientMetrics {
                    logged_in: AtomicI64::new(0),
                    transactions: self.transactions.with_label_values(&l),
                    queries: self.queries.with_label_values(&l),
                    received: self.received.with_label_values(&l),
                    sent: self.sent.with_label_values(&l),
                    errors: self.errors.with_label_values(&l),
                    protocol_violations: self.protocol_violations.with_label_values(&l),
                    wait: self.wait.with_label_values(&l),
                    query_duration: self.query_duration.with_label_values(&l),
                    transaction_duration: self.transaction_duration.with_label_values(&l),
                    routes: RouteOutcome::ALL
                        .map(|o| self.routes.with_label_values(&[database, o.label()])),
                })
            })
            .clone()
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts a client connection refused before login (`reason` is a fixed label).
    pub fn refused(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// Counts a client disconnected by the timeout `setting`.
    pub fn timed_out(&self, setting: &'static str) {
        self.timeouts.with_label_values(&[setting]).inc();
    }

    /// Every (database, user) seen so far with its handles.
    pub fn clients(&self) -> Vec<((String, String), Arc<ClientMetrics>)> {
        self.handles
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One client connection as SHOW CLIENTS lists it; its session keeps `state` current.
pub struct ClientInfo {
    /// usher's client id.
    pub id: u64,
    /// Peer address.
    pub peer: std::net::SocketAddr,
    /// Database it logged in to.
    pub database: String,
    /// User it logged in as.
    pub user: String,
    /// Its application_name startup parameter.
    pub application_name: String,
    /// When it connected.
    pub connected: std::time::SystemTime,
    /// [`CLIENT_IDLE`], [`CLIENT_ACTIVE`] or [`CLIENT_WAITING`].
    pub state: std::sync::atomic::AtomicU8,
    /// Inside a transaction (or, in transaction mode, holding a server): PAUSE waits for it.
    pub busy: std::sync::atomic::AtomicBool,
    /// Wakes the session when the process needs it to look up (a shutdown began). Each session
    /// has its own, so waiting for it touches no lock other sessions use.
    pub wake: tokio::sync::Notify,
}

impl ClientInfo {
    /// A client that just logged in: idle, connected now.
    pub fn new(
        id: u64,
        peer: std::net::SocketAddr,
        database: String,
        user: String,
        application_name: String,
    ) -> ClientInfo {
        ClientInfo {
            id,
            peer,
            database,
            user,
            application_name,
            connected: std::time::SystemTime::now(),
            state: std::sync::atomic::AtomicU8::new(CLIENT_IDLE),
            busy: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// The client holds no server connection.
pub const CLIENT_IDLE: u8 = 0;
/// The client holds a server connection.
pub const CLIENT_ACTIVE: u8 = 1;
/// The client waits for a server connection.
pub const CLIENT_WAITING: u8 = 2;

/// Live client connections by id.
#[derive(Default)]
pub struct ClientRegistry {
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    /// Adds a client.
    pub fn add(&self, info: Arc<ClientInfo>) {
        self.map.lock().insert(info.id, info);
    }

    /// Removes a client.
    pub fn remove(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<Arc<ClientInfo>> = self.map.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Totals of one database (summed over its users), PgBouncer's SHOW STATS columns.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Transactions.
    pub xacts: f64,
    /// Queries.
    pub queries: f64,
    /// Bytes received from clients.
    pub received: f64,
    /// Bytes sent to clients.
    pub sent: f64,
    /// Transaction time, microseconds.
    pub xact_us: f64,
    /// Query time, microseconds.
    pub query_us: f64,
    /// Wait time, microseconds.
    pub wait_us: f64,
}

impl Totals {
    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            xacts: self.xacts - o.xacts,
            queries: self.queries - o.queries,
            received: self.received - o.received,
            sent: self.sent - o.sent,
            xact_us: self.xact_us - o.xact_us,
            query_us: self.query_us - o.query_us,
            wait_us: self.wait_us - o.wait_us,
        }
    }
}

/// How often SHOW STATS_AVERAGES is recomputed (PgBouncer's `stats_period`).
pub const STATS_PERIOD: std::time::Duration = std::time::Duration::from_secs(15);

impl Metrics {
    /// Totals per database.
    pub fn totals(&self) -> std::collections::BTreeMap<String, Totals> {
        let mut out: std::collections::BTreeMap<String, Totals> = Default::default();
        for ((db, _), m) in self.clients() {
            let t = out.entry(db).or_default();
            t.xacts += m.transactions.get() as f64;
            t.queries += m.queries.get() as f64;
            t.received += m.received.get() as f64;
            t.sent += m.sent.get() as f64;
            t.xact_us += m.transaction_duration.get_sample_sum() * 1e6;
            t.query_us += m.query_duration.get_sample_sum() * 1e6;
            t.wait_us += m.wait.get() * 1e6;
        }
        out
    }

    /// Per-second rates over the last [`STATS_PERIOD`] (counts and bytes per second; times
    /// as the average per transaction / query, microseconds), as SHOW STATS_AVERAGES shows.
    pub fn averages(&self) -> std::collections::BTreeMap<String, Totals> {
        self.averages.lock().1.clone()
    }

    /// Takes a snapshot and recomputes the averages (run every [`STATS_PERIOD`]).
    pub fn tick_averages(&self) {
        let now = self.totals();
        let mut guard = self.averages.lock();
        let (prev, avg) = &mut *guard;
        let secs = STATS_PERIOD.as_secs_f64();
        avg.clear();
        for (db, t) in &now {
            let d = t.minus(prev.get(db).unwrap_or(&Totals::default()));
            avg.insert(
                db.clone(),
                Totals {
                    xacts: d.xacts / secs,
                    queries: d.queries / secs,
                    received: d.received / secs,
                    sent: d.sent / secs,
                    xact_us: if d.xacts > 0.0 {
                        d.xact_us / d.xacts
                    } else {
                        0.0
                    },
                    query_us: if d.queries > 0.0 {
                        d.query_us / d.queries
                    } else {
                        0.0
                    },
                    wait_us: if d.xacts > 0.0 {
                        d.wait_us / d.xacts
                    } else {
                        0.0
                    },
                },
            );
        }
        *prev = now;
    }
}
