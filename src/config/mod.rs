//! Configuration: the TOML file operators edit, its types, and its validation.
//!
//! Every field below is documented with what it does in production. `load` reads a file and
//! reports every problem with the file, line and key (see [`load::load_file`]).

mod duration;
mod load;
mod server_addr;
mod server_spec;
mod sharding;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use duration::{parse_duration, ConfigDuration};
pub use load::{load_file, load_str, ConfigError, ConfigProblem};
pub use server_addr::ServerAddr;
pub use server_spec::{RoleSpec, ServerSpec};
pub use sharding::{Hasher, KeyType, ShardedTable, Sharding};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings: listener, pool sizes and timeouts.
    #[serde(default)]
    pub general: General,
    /// Users allowed to log in, with the credentials usher uses towards the servers.
    #[serde(default)]
    pub users: Vec<User>,
    /// Databases clients may connect to, keyed by the name clients use.
    #[serde(default)]
    pub databases: BTreeMap<String, std::sync::Arc<Database>>,
    /// The admin console (`psql -U admin usher`); without this section it is disabled.
    #[serde(default)]
    pub admin: Option<Admin>,
}

/// `[admin]`: who may use the admin console (database `usher`, alias `pgbouncer`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The console's user name.
    #[serde(default = "default_admin_user")]
    pub user: String,
    /// Its password: plain text, an `md5...` hash or a `SCRAM-SHA-256$...` verifier.
    pub password: Option<String>,
    /// How the admin authenticates; defaults to `general.auth_type`.
    #[serde(default)]
    pub auth_type: Option<AuthMethod>,
}

fn default_admin_user() -> String {
    "admin".into()
}

impl Admin {
    /// The admin as a user entry, for the authentication code.
    pub fn as_user(&self) -> User {
        User {
            name: self.user.clone(),
            password: self.password.clone(),
            server_user: None,
            server_password: None,
            auth_type: self.auth_type,
            pool_size: None,
            pool_mode: None,
            client_idle_timeout: None,
            idle_transaction_timeout: None,
            query_timeout: None,
            transaction_timeout: None,
        }
    }
}

/// A client's timeouts, resolved from its user and `[general]`; `None` is disabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// `client_idle_timeout`.
    pub client_idle: Option<std::time::Duration>,
    /// `idle_transaction_timeout`.
    pub idle_transaction: Option<std::time::Duration>,
    /// `query_timeout`.
    pub query: Option<std::time::Duration>,
    /// `transaction_timeout`.
    pub transaction: Option<std::time::Duration>,
}

impl ClientTimeouts {
    /// `None` when none is set (the session loop then arms no timer).
    pub fn enabled(self) -> Option<ClientTimeouts> {
        (self != ClientTimeouts::default()).then_some(self)
    }
}

/// How long a client keeps a server connection.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server is lent for one transaction and returned at ReadyForQuery 'I' (the default).
    #[default]
    Transaction,
    /// A server is lent for the client's whole session and reset with `server_reset_query`.
    Session,
}

/// How clients prove who they are to usher.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// SASL SCRAM-SHA-256 (RFC 7677), the default; works with a plain password or a verifier.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge; needs the plain password in the config.
    #[serde(rename = "md5")]
    Md5,
    /// No password asked; anyone who can reach the port may log in as this user.
    #[serde(rename = "trust")]
    Trust,
}

/// `[general]`: settings shared by every pool.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address clients connect to, e.g. `"127.0.0.1:6432"` or `"0.0.0.0:6432"`.
    pub listen: String,
    /// Default pool mode: `"transaction"` (servers shared between transactions) or `"session"`.
    pub pool_mode: PoolMode,
    /// Most client connections usher accepts at once; the next one gets SQLSTATE 53300.
    pub max_client_conn: usize,
    /// Server connections per (database, user, server) pool.
    pub default_pool_size: usize,
    /// Server connections each pool keeps open even when idle, so bursts skip the connect cost.
    pub min_pool_size: usize,
    /// Extra server connections a pool may open once a client has waited `reserve_pool_timeout`.
    pub reserve_pool_size: usize,
    /// How long a client waits before the reserve pool may be used for it.
    pub reserve_pool_timeout: ConfigDuration,
    /// How long a client may wait for a server before it gets an error (SQLSTATE 08P01 / 53300);
    /// `0` waits forever.
    pub query_wait_timeout: ConfigDuration,
    /// Idle server connections above `min_pool_size` are closed after this long; `0` never.
    pub server_idle_timeout: ConfigDuration,
    /// Server connections older than this are closed when next released; `0` never.
    pub server_lifetime: ConfigDuration,
    /// How long connecting and logging in to a server may take before it counts as failed.
    pub server_connect_timeout: ConfigDuration,
    /// How long a new client has to finish the startup and authentication exchange.
    pub client_login_timeout: ConfigDuration,
    /// A client with no transaction open and nothing in flight for this long is disconnected
    /// (FATAL 57P05); in session mode this frees its server. `0` never.
    pub client_idle_timeout: ConfigDuration,
    /// A client idle inside a transaction for this long is disconnected (FATAL 25P03) and its
    /// transaction rolled back, so it cannot hold a server (and its locks) forever. `0` never.
    pub idle_transaction_timeout: ConfigDuration,
    /// A query whose answer takes longer than this is canceled on its server, the server
    /// connection closed and the client disconnected (FATAL 57014). Meant as a safety net for
    /// network trouble: set it a little above the servers' `statement_timeout`. `0` never.
    pub query_timeout: ConfigDuration,
    /// A transaction open longer than this is canceled and rolled back and its client
    /// disconnected (FATAL 25P04), idle or not. `0` never.
    pub transaction_timeout: ConfigDuration,
    /// Query run on a server when a session-mode client releases it (and after a client left a
    /// server in an unknown state). Empty disables it.
    pub server_reset_query: String,
    /// Also run `server_reset_query` in transaction mode after every transaction (PgBouncer's
    /// `server_reset_query_always`); normally not needed because usher tracks session parameters.
    pub server_reset_query_always: bool,
    /// Prepared statements remembered per server connection in transaction mode (LRU); statements
    /// are re-prepared lazily on whichever server a client gets.
    pub max_prepared_statements: usize,
    /// Largest message, in bytes, a client may send; a bigger length gets SQLSTATE 08P01 and a close.
    pub max_message_size: usize,
    /// Default client authentication method; each user may override it.
    pub auth_type: AuthMethod,
    /// Worker threads of the runtime; `0` uses one per core.
    pub worker_threads: usize,
    /// A server whose connection failed gets no traffic for this long.
    pub ban_time: ConfigDuration,
    /// How often replica lag and server roles are measured.
    pub lag_check_interval: ConfigDuration,
    /// A pooled connection idle longer than this is checked with `server_check_query` before it
    /// is handed out; `0` disables the check.
    pub server_check_delay: ConfigDuration,
    /// Query used for that check (`;` is the cheapest: an empty query).
    pub server_check_query: String,
    /// User whose server credentials the lag and role probes use; defaults to the first user.
    pub health_check_user: Option<String>,
    /// Parsed statements kept in the routing cache (keyed by query text).
    pub query_cache_size: usize,
    /// Address of the HTTP endpoint for Prometheus (`/metrics`) and health checks (`/health`,
    /// `/ready`, `/pools`), e.g. `"127.0.0.1:9930"`; unset disables it.
    pub metrics_listen: Option<String>,
    /// On SIGTERM/SIGINT or admin SHUTDOWN: how long clients in a transaction get to finish
    /// it before usher exits anyway.
    pub shutdown_timeout: ConfigDuration,
    /// How long the admin PAUSE waits for running transactions; past it PAUSE fails and
    /// resumes what it paused. `0` waits forever (as PgBouncer's PAUSE does).
    pub pause_timeout: ConfigDuration,
    /// Log lines as `"text"` (default) or `"json"` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// File where usher records the commit decisions of writes across shards (two-phase
    /// commit) before it commits them, fsynced, so that after a crash a restarted usher (or
    /// `usher recover`) commits what was decided and rolls back the rest. Required when a
    /// database sets `two_phase_commit`; keep it on durable storage, one file per usher.
    pub two_phase_log: Option<std::path::PathBuf>,
    /// This usher's name in the ids of its prepared transactions (`usher:NAME:...`), so its
    /// recovery touches only its own. Default: the host name and listen port. Every usher
    /// process sharing shards must have its own.
    pub instance_name: Option<String>,
}

/// `log_format`.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            max_client_conn: 1000,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: ConfigDuration::secs(5),
            query_wait_timeout: ConfigDuration::secs(120),
            server_idle_timeout: ConfigDuration::secs(600),
            server_lifetime: ConfigDuration::secs(3600),
            server_connect_timeout: ConfigDuration::secs(5),
            client_login_timeout: ConfigDuration::secs(60),
            client_idle_timeout: ConfigDuration::secs(0),
            idle_transaction_timeout: ConfigDuration::secs(0),
            query_timeout: ConfigDuration::secs(0),
            transaction_timeout: ConfigDuration::secs(0),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            max_prepared_statements: 200,
            max_message_size: 256 * 1024 * 1024,
            auth_type: AuthMethod::ScramSha256,
            worker_threads: 0,
            ban_time: ConfigDuration::secs(60),
            lag_check_interval: ConfigDuration(std::time::Duration::from_millis(500)),
            server_check_delay: ConfigDuration::secs(30),
            server_check_query: ";".into(),
            health_check_user: None,
            query_cache_size: 10_000,
            metrics_listen: None,
            shutdown_timeout: ConfigDuration::secs(30),
            pause_timeout: ConfigDuration::secs(60),
            log_format: LogFormat::Text,
            two_phase_log: None,
            instance_name: None,
        }
    }
}

/// `[[users]]`: one login.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user name clients log in with.
    pub name: String,
    /// The client's password: plain text, an `md5...` hash or a `SCRAM-SHA-256$...` verifier.
    #[serde(default)]
    pub password: Option<String>,
    /// User name usher logs in to the servers with; defaults to `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password usher gives the servers; defaults to `password` when that is plain text.
    #[serde(default)]
    pub server_password: Option<String>,
    /// Client authentication method for this user; defaults to `general.auth_type`.
    #[serde(default)]
    pub auth_type: Option<AuthMethod>,
    /// Pool size for this user's pools; defaults to the database's or `default_pool_size`.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Pool mode for this user; defaults to the database's or `general.pool_mode`.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// `client_idle_timeout` for this user's clients; defaults to `general`'s.
    #[serde(default)]
    pub client_idle_timeout: Option<ConfigDuration>,
    /// `idle_transaction_timeout` for this user's clients; defaults to `general`'s.
    #[serde(default)]
    pub idle_transaction_timeout: Option<ConfigDuration>,
    /// `query_timeout` for this user's clients; defaults to `general`'s.
    #[serde(default)]
    pub query_timeout: Option<ConfigDuration>,
    /// `transaction_timeout` for this user's clients; defaults to `general`'s.
    #[serde(default)]
    pub transaction_timeout: Option<ConfigDuration>,
}

impl User {
    /// The user name presented to servers.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// The password presented to servers, if any: `server_password`, else a plain `password`.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or_else(|| {
            self.password
                .as_deref()
                .filter(|p| !p.starts_with("SCRAM-SHA-256$") && !is_md5_hash(p))
        })
    }
}

/// True when `p` looks like PostgreSQL's stored md5 form (`md5` + 32 hex digits).
pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `[databases.NAME]`: a logical database and its servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// The shards, each with a primary and optional replicas; index = shard number.
    pub shards: Vec<Shard>,
    /// Pool size for this database's pools; defaults to `general.default_pool_size`.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Pool mode for this database; defaults to `general.pool_mode`.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Send reads to replicas (`true`) or everything to the primary (`false`, the default).
    #[serde(default)]
    pub read_write_split: bool,
    /// Whether the primary takes reads: `"never"`, `"fallback"` (when no replica is usable, the
    /// default) or `"always"` (as one more read server).
    #[serde(default)]
    pub primary_reads: PrimaryReads,
    /// How reads are spread over replicas.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Replicas further behind the primary than this get no reads; `0` disables the check.
    #[serde(default = "default_max_replica_lag")]
    pub max_replica_lag: ConfigDuration,
    /// After a client commits a write, its reads go only to replicas that replayed it.
    #[serde(default = "default_true")]
    pub read_your_writes: bool,
    /// `"conservative"`: explicit transactions go to the primary unless READ ONLY.
    /// `"aggressive"`: a transaction is routed by its first statement after BEGIN.
    #[serde(default)]
    pub read_write_strategy: ReadWriteStrategy,
    /// Functions (name or schema.name) whose calls make a statement a write.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Treat calls of user-defined functions that Postgres marks VOLATILE as writes (looked up
    /// in pg_proc once per function and cached).
    #[serde(default = "default_true")]
    pub volatile_functions_are_writes: bool,
    /// The shard map: which tables are split by which key column and how keys are hashed.
    /// Without it every statement goes to shard 0.
    #[serde(default)]
    pub sharding: Option<Sharding>,
}

fn default_true() -> bool {
    true
}

fn default_max_replica_lag() -> ConfigDuration {
    ConfigDuration::secs(1)
}

/// `primary_reads`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryReads {
    /// Reads never go to the primary; without a usable replica they fail.
    Never,
    /// Reads go to the primary only when no replica is usable.
    #[default]
    Fallback,
    /// The primary takes its share of reads like a replica.
    Always,
}

/// `load_balancing`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// The replica with the fewest server connections in use (per weight).
    #[default]
    LeastConnections,
    /// Each replica in turn, weighted.
    RoundRobin,
    /// A random replica, weighted.
    Random,
}

/// `read_write_strategy`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadWriteStrategy {
    /// Explicit transactions go to the primary unless declared READ ONLY.
    #[default]
    Conservative,
    /// BEGIN is held back and the transaction routed by its first statement.
    Aggressive,
}

/// One shard: a primary and its streaming replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// The read-write server: `"host:port/dbname"` or `{ addr = "...", role = "auto" }`.
    pub primary: ServerSpec,
    /// Read-only replicas of the primary, in the same two forms.
    #[serde(default)]
    pub replicas: Vec<ServerSpec>,
}

impl Shard {
    /// Every server of the shard, the configured primary first.
    pub fn servers(&self) -> impl Iterator<Item = &ServerSpec> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

impl Config {
    /// The user entry named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Pool mode for a (database, user) pair: user setting, then database, then general.
    pub fn pool_mode(&self, db: &Database, user: &User) -> PoolMode {
        user.pool_mode
            .or(db.pool_mode)
            .unwrap_or(self.general.pool_mode)
    }

    /// The client timeouts in force for `user`: its own settings, then `[general]`'s.
    pub fn client_timeouts(&self, user: &User) -> ClientTimeouts {
        let g = &self.general;
        let pick =
            |own: Option<ConfigDuration>, general: ConfigDuration| own.unwrap_or(general).enabled();
        ClientTimeouts {
            client_idle: pick(user.client_idle_timeout, g.client_idle_timeout),
            idle_transaction: pick(user.idle_transaction_timeout, g.idle_transaction_timeout),
            query: pick(user.query_timeout, g.query_timeout),
            transaction: pick(user.transaction_timeout, g.transaction_timeout),
        }
    }

    /// Pool size for a (database, user) pair: user setting, then database, then general.
    pub fn pool_size(&self, db: &Database, user: &User) -> usize {
        user.pool_size
            .or(db.pool_size)
            .unwrap_or(self.general.default_pool_size)
    }

    /// Client authentication method for `user`.
    pub fn auth_method(&self, user: &User) -> AuthMethod {
        user.auth_type.unwrap_or(self.general.auth_type)
    }
}
