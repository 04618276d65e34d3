//! A logged-in client's session: the data path from client frames through the router and the
//! pool to a server connection, and the server's frames back.
//!
//! In transaction mode a server is taken when a transaction's first message arrives and given
//! back at ReadyForQuery 'I' once no response is owed; the client's session parameters and
//! prepared statements are carried to whichever server it gets. Server frames are scanned by
//! header only and forwarded as raw bytes in runs (a 100 MB row streams through without being
//! held whole); only ReadyForQuery and ParameterStatus bodies are read.
//!
//! # Files, in the order a message meets them
//! - `drive`: the loop (client, server, timers, shutdown) and cutting client bytes into
//!   `request`s: the messages up to a Sync, each statement looked up once.
//! - `inbound`: one client message: checked, answered locally, or planned (the pure
//!   [[`crate::router::plan`]] over the request) when no server is attached; the plan is carried
//!   out by `attach` (PAUSE, checkout via `route`, preparing the connection), `broadcast`
//!   (DDL on every shard) or `aggressive` (a held BEGIN answered locally).
//! - `forward`: the message to the server; `prepared` renames statements in transaction
//!   mode, `params` follows SET, `responses` records what the server will answer.
//! - `release`: the server's answer relayed (`relay`), the round counted, the server
//!   given back; `retry` replays a read whose server failed before answering.
//! - `txn`: where the transaction stands (idle, BEGIN held, attached, across shards:
//!   `fanout::spanning`); `error`: how a
//!   session fails and which side failed.

mod aggressive;
mod attach;
mod broadcast;
mod drive;
mod error;
mod fanout;
mod forward;
mod inbound;
mod memo;
mod params;
mod pause;
mod prepared;
mod relay;
mod release;
mod request;
mod responses;
mod retry;
mod route;
mod shard;
pub mod sql_scan;
mod timeouts;
mod txn;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::app::App;
use crate::config::PoolMode;
use crate::error::{Failure, Side};
use crate::frontend::{ClientIo, Login};
use crate::protocol::Frame;
use crate::router;
use params::ClientParams;
use prepared::ClientStatements;
use request::Request;
use responses::Tracker;
use txn::Txn;

use drive::Flow;
pub use error::SessionError;
pub(crate) use forward::probe_translate;
pub use relay::Pass;

/// One client's session.
pub struct Session {
    app: Arc<App>,
    id: u64,
    io: ClientIo,
    login: Login,
    mode: PoolMode,
    params: ClientParams,
    stmts: ClientStatements,
    tracker: Tracker,
    /// Where the transaction stands; holds the server connection while attached.
    txn: Txn,
    /// Transaction status from the last ReadyForQuery the client saw.
    txn_status: u8,
    /// After an error usher raised for an extended-protocol message: drop messages until Sync.
    skip_until_sync: bool,
    /// A client DEALLOCATE ALL / DISCARD ALL went to the server in this transaction.
    dropped_statements: bool,
    /// Bytes for the client, in order.
    client_out: Vec<Bytes>,
    /// Bytes for the server, sent at the end of each batch of client frames.
    server_out: BytesMut,
    /// A server frame being streamed or skipped across reads.
    pass: Option<Pass>,
    /// Routing state between transactions (role override, read-your-writes LSN, pools).
    route: route::RouteState,
    /// Client frames of a read transaction nothing of whose answer reached the client yet.
    replay: Option<Vec<Frame>>,
    /// Their size.
    replay_bytes: usize,
    /// Length of `client_out` when recording started: anything past it is part of the answer.
    replay_mark: usize,
    /// The request being processed (kept when it waits for more client data or for the
    /// server, and reused for the next one); `None` only while it is out being processed.
    request: Option<Box<Request>>,
    /// The database has a shard map (statements are checked against the attached shard);
    /// follows reloads between transactions.
    sharded: bool,
    /// Client frames wait in the buffer until the server answered what is in flight.
    deferred: bool,
    /// Traffic counters of this (database, user).
    stats: Arc<crate::stats::ClientMetrics>,
    /// When the messages now at the server were sent (query duration).
    round_start: Option<std::time::Instant>,
    /// When the current transaction's first messages were sent (transaction duration).
    xact_start: Option<std::time::Instant>,
    /// This client in the registry SHOW CLIENTS reads.
    info: Arc<crate::stats::ClientInfo>,
    /// The config and topology this session routes with, refreshed when a transaction
    /// starts (one atomic load unless a reload happened). `None` only while
    /// [`Session::attach_now`] has it out.
    snap: Option<crate::app::Snapshot>,
    /// The database's name, shared cheaply with routing and metrics code.
    db_name: Arc<str>,
    /// The database's config in the session's snapshot (follows reloads with it), so
    /// routing does not look it up by name per transaction.
    db: Arc<crate::config::Database>,
    /// client_idle_timeout and friends for this client (follow reloads); `None` when all are
    /// off, so the loop checks one word.
    timeouts: Option<crate::config::ClientTimeouts>,
    /// When the client or its server last sent something (idle timeouts count from here).
    last_activity: std::time::Instant,
    /// What `info.busy` was last set to (see [`pause`]).
    busy: bool,
    /// Classifications of recent statement texts (see [`memo`]).
    memo: memo::Memo,
    /// Undoes the client's registration (SHOW CLIENTS row, cancel key, logged-in count) when
    /// the session is dropped, however it ends: return, error or panic.
    _registered: Registered,
}

/// A logged-in client's entries in shared state, removed in [`Drop`].
struct Registered {
    app: Arc<App>,
    id: u64,
    cancel_key: i32,
    stats: Arc<crate::stats::ClientMetrics>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.stats
            .logged_in
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.app.client_list.remove(self.id);
        self.app.cancels.unregister(self.cancel_key);
    }
}

impl Session {
    /// A session for a client that just logged in; `None` (after telling the client why) when
    /// a reload removed its database or user between its login and now.
    pub async fn start(app: Arc<App>, mut io: ClientIo, login: Login) -> Option<Session> {
        let snap = app.snapshot();
        let config = &snap.config;
        let (Some(db), Some(user)) = (
            config.databases.get(&login.database),
            config.user(&login.user),
        ) else {
            io.fatal(
                "3D000",
                &format!(
                    "database {:?} or user {:?} was removed from usher's config while logging in",
                    login.database, login.user
                ),
            )
            .await;
            app.cancels.unregister(login.cancel_key.0);
            return None;
        };
        let mode = config.pool_mode(db, user);
        let timeouts = config.client_timeouts(user).enabled();
        let sharded = db.sharding.is_some();
        let stats = app.metrics.client(&login.database, &login.user);
        let id = app.next_client_id();
        let info = Arc::new(crate::stats::ClientInfo::new(
            id,
            io.peer,
            login.database.clone(),
            login.user.clone(),
            login
                .params
                .get("application_name")
                .cloned()
                .unwrap_or_default(),
        ));
        app.client_list.add(info.clone());
        stats
            .logged_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let registered = Registered {
            app: app.clone(),
            id,
            cancel_key: login.cancel_key.0,
            stats: stats.clone(),
        };
        Some(Session {
            _registered: registered,
            db_name: Arc::from(login.database.as_str()),
            db: db.clone(),
            timeouts,
            last_activity: std::time::Instant::now(),
            busy: false,
            memo: memo::Memo::default(),
            snap: Some(snap),
            info,
            stats,
            round_start: None,
            xact_start: None,
            sharded,
            deferred: false,
            id,
            params: ClientParams::new(login.params.clone()),
            app,
            io,
            login,
            mode,
            stmts: ClientStatements::default(),
            tracker: Tracker::default(),
            txn: Txn::Idle,
            txn_status: b'I',
            skip_until_sync: false,
            dropped_statements: false,
            client_out: Vec::new(),
            server_out: BytesMut::new(),
            pass: None,
            route: route::RouteState::default(),
            replay: None,
            replay_bytes: 0,
            replay_mark: 0,
            request: None,
        })
    }

    /// Runs the session to its end and cleans up after it.
    pub async fn run(mut self) {
        tracing::info!(client = self.id, "client logged in");
        let result = self.main_loop().await;
        if let Err(e) = &result {
            let answer = match e.side() {
                // However the server failed (lost, or it broke the protocol): what it said
                // last (often a FATAL explaining why) and then usher's word reach the client,
                // and the connection is closed, not pooled.
                Side::Server => Some(format!("usher: server connection lost: {e}")),
                Side::Internal => Some(format!("usher: {e}")),
                Side::Client | Side::Config => None,
            };
            if let Some(message) = answer {
                self.txn = Txn::Idle;
                let _ = self.flush_client().await;
                self.io.fatal(e.sqlstate(), &message).await;
            }
        }
        match &result {
            Ok(()) => tracing::info!(client = self.id, "client disconnected"),
            // A lost server is something to alert on, a bug more so; a client going away is not.
            Err(e) => match e.side() {
                Side::Server => {
                    tracing::warn!(client = self.id, error = %e, "session ended: server connection lost")
                }
                Side::Internal => tracing::error!(client = self.id, error = %e, "session ended"),
                Side::Client | Side::Config => {
                    tracing::info!(client = self.id, error = %e, "session ended")
                }
            },
        }
        self.finish().await;
    }

    /// What statement lookups read (literal spans too for a sharded database, which routes
    /// by literal keys).
    fn lookup(&self) -> request::Lookup<'_> {
        request::Lookup {
            stmts: &self.stmts,
            memo: &self.memo,
            cache: &self.app.query_cache,
            spans: self.sharded,
        }
    }

    /// Nothing of the client's is in flight or open: it may be disconnected for a shutdown.
    fn idle_for_shutdown(&self) -> bool {
        self.txn_status == b'I'
            && self.txn.held().is_none()
            && self.tracker.is_idle()
            && self.pass.is_none()
            && self.io.rbuf.is_empty()
            && self.request.as_ref().is_none_or(|r| r.is_done())
    }

    /// Picks up a reload between transactions: the shard map (or its absence) of the new
    /// config is what the next statement routes by. False when the reload removed the
    /// session's database.
    #[inline]
    fn refresh_snapshot(&mut self) -> bool {
        let Some(snap) = &mut self.snap else {
            return true;
        };
        if !self.app.refresh(snap) {
            return true;
        }
        if let Some(user) = snap.config.user(&self.login.user) {
            let timeouts = snap.config.client_timeouts(user).enabled();
            if timeouts != self.timeouts {
                // Idle time is only tracked while a timeout is set: count from now.
                self.timeouts = timeouts;
                self.last_activity = std::time::Instant::now();
            }
        }
        match snap.config.databases.get(&*self.db_name) {
            Some(db) => {
                self.sharded = db.sharding.is_some();
                self.db = db.clone();
                true
            }
            None => false,
        }
    }

    /// SQLSTATE and message for a client whose database a reload removed.
    fn database_removed(&self) -> (String, String) {
        let e = crate::pool::PoolError::DatabaseRemoved {
            database: self.login.database.clone(),
        };
        (e.sqlstate().to_string(), e.to_string())
    }

    /// The classification of a statement text, computed once per text (see [`memo`]).
    fn classify(&self, sql: &Bytes) -> Arc<router::Classification> {
        self.memo.classify(&self.app.query_cache, sql)
    }

    /// The config and topology in force for this session.
    fn snap(&self) -> &crate::app::Snapshot {
        self.snap
            .as_ref()
            .expect("the snapshot is only lent out during attach")
    }
}

#[cfg(test)]
mod cleanup_tests {
    use super::*;

    /// A session task that panics leaves no ghost: its SHOW CLIENTS row and logged-in count go
    /// with it (the cleanup lives in Drop, not at the end of `run`).
    #[tokio::test]
    async fn registration_is_undone_when_the_session_task_panics() {
        let config = crate::config::load_str(
            "[general]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"u\"\nauth_type = \"trust\"\n[databases.d]\nshards = [ { primary = \"127.0.0.1:1/d\" } ]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let app = App::new(config);
        let stats = app.metrics.client("d", "u");
        let ((pid, _), _) = app.cancels.register();
        let info = Arc::new(crate::stats::ClientInfo::new(
            7,
            "127.0.0.1:9".parse().unwrap(),
            "d".into(),
            "u".into(),
            String::new(),
        ));
        app.client_list.add(info);
        stats
            .logged_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let registered = Registered {
            app: app.clone(),
            id: 7,
            cancel_key: pid,
            stats: stats.clone(),
        };
        let task = tokio::spawn(async move {
            let _held = registered;
            panic!("a bug in the session");
        });
        assert!(task.await.is_err());
        assert!(app.client_list.all().is_empty());
        assert_eq!(
            stats.logged_in.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
