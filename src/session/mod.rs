//! A logged-in client's session: the data path from client frames through the router and the
//! pool to a server connection, and the server's frames back.
//!
//! In transaction mode a server is taken when a transaction's first message arrives and given
//! back at ReadyForQuery 'I' once no response is owed; the client's session parameters and
//! prepared statements are carried to whichever server it gets. Server frames are scanned by
//! header only and forwarded as raw bytes in runs (a 100 MB row streams through without being
//! held whole); only ReadyForQuery and ParameterStatus bodies are read.

mod aggressive;
mod broadcast;
mod memo;
mod params;
mod pause;
mod prepared;
mod relay;
mod request;
mod responses;
mod retry;
mod route;
mod shard;
pub mod sql_scan;
mod timeouts;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::config::PoolMode;
use crate::frontend::cancel::CancelTarget;
use crate::frontend::{ClientIo, FrontendError, Login};
use crate::pool::Lease;
use crate::protocol::{client, messages, Frame, ProtocolError};
use crate::router;
use crate::router::plan::{Plan, Run};
use params::ClientParams;
use prepared::ClientStatements;
use request::Request;
use responses::{Expect, Tracker};
use sql_scan::SessionChange;

pub use relay::Pass;

/// Why a session ended abnormally; says which side failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's socket failed or the client broke the protocol.
    #[error(transparent)]
    Client(#[from] FrontendError),
    /// The server connection failed while the client was using it.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

impl From<ProtocolError> for SessionError {
    fn from(e: ProtocolError) -> Self {
        SessionError::Client(FrontendError::Protocol(e))
    }
}

/// How a step of the loop ended.
enum Flow {
    Continue,
    Stop,
    /// Process the request's current message later: when more client data arrived (its batch
    /// is incomplete) or, with a server attached, once the server answered what is in flight.
    Wait,
}

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
    server: Option<Lease>,
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
    /// A BEGIN held back by the aggressive strategy until the first real statement.
    held_begin: Option<aggressive::Held>,
    /// The request being processed, when it waits for more client data or for the server.
    request: Option<Request>,
    /// The attached transaction was routed to a replica by the aggressive strategy: its
    /// read-only errors are rewritten to name the setting.
    rewrite_read_only: bool,
    /// The database has a shard map (statements are checked against the attached shard);
    /// follows reloads between transactions.
    sharded: bool,
    /// Client frames wait in the buffer until the server answered what is in flight.
    deferred: bool,
    /// The attached server only prepares statements for a transaction whose BEGIN is held:
    /// its idle ReadyForQuery is shown to the client as 'T'.
    side_trip: bool,
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
            side_trip: false,
            id,
            params: ClientParams::new(login.params.clone()),
            app,
            io,
            login,
            mode,
            stmts: ClientStatements::default(),
            tracker: Tracker::default(),
            server: None,
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
            held_begin: None,
            request: None,
            rewrite_read_only: false,
        })
    }

    /// Runs the session to its end and cleans up after it.
    pub async fn run(mut self) {
        tracing::info!(client = self.id, "client logged in");
        let result = self.main_loop().await;
        if let Err(SessionError::Server(e)) = &result {
            // However the server failed (lost, or it broke the protocol): what it said last
            // (often a FATAL explaining why) and then usher's word reach the client, and the
            // connection is closed, not pooled.
            self.server = None;
            let _ = self.flush_client().await;
            self.io
                .fatal("08006", &format!("usher: server connection lost: {e}"))
                .await;
        }
        match &result {
            Ok(()) => tracing::info!(client = self.id, "client disconnected"),
            // A lost server is something to alert on; a client going away is not.
            Err(e @ SessionError::Server(_)) => {
                tracing::warn!(client = self.id, error = %e, "session ended: server connection lost")
            }
            Err(e) => tracing::info!(client = self.id, error = %e, "session ended"),
        }
        self.finish().await;
    }

    async fn main_loop(&mut self) -> Result<(), SessionError> {
        loop {
            if self.app.shutting_down() && self.idle_for_shutdown() {
                self.io
                    .fatal(
                        "57P01",
                        "terminating connection due to administrator command (usher is shutting down)",
                    )
                    .await;
                return Ok(());
            }
            self.update_busy();
            let timeout = self.next_timeout();
            let armed = timeout.is_some();
            let event = {
                let Session {
                    io, server, info, ..
                } = self;
                // Never resolves when no timeout is set: no timer is armed.
                let timer = async {
                    match timeout {
                        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                match server {
                    Some(lease) if self.deferred => tokio::select! {
                        r = lease.conn().fill() => Event::Server(r),
                        _ = timer, if armed => Event::Timeout,
                    },
                    // Mid-transaction a shutdown waits for the transaction: no need to listen.
                    Some(lease) if self.mode == PoolMode::Transaction => {
                        let conn = lease.conn();
                        tokio::select! {
                            r = conn.fill() => Event::Server(r),
                            r = io.fill() => Event::Client(r),
                            _ = timer, if armed => Event::Timeout,
                        }
                    }
                    Some(lease) => {
                        let conn = lease.conn();
                        tokio::select! {
                            r = conn.fill() => Event::Server(r),
                            r = io.fill() => Event::Client(r),
                            _ = info.wake.notified() => Event::Shutdown,
                            _ = timer, if armed => Event::Timeout,
                        }
                    }
                    None => tokio::select! {
                        r = io.fill() => Event::Client(r),
                        _ = info.wake.notified() => Event::Shutdown,
                        _ = timer, if armed => Event::Timeout,
                    },
                }
            };
            if self.timeouts.is_some() && matches!(event, Event::Client(_) | Event::Server(Ok(_))) {
                self.last_activity = std::time::Instant::now();
            }
            match event {
                Event::Shutdown => continue,
                Event::Timeout => {
                    if let Some((_, kind)) = timeout {
                        self.time_out(kind).await;
                    }
                    return Ok(());
                }
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(n)) => {
                    self.stats.received.inc_by(n as u64);
                    if let Flow::Stop = self.on_client_data().await? {
                        return Ok(());
                    }
                }
                Event::Client(Err(e)) => return Err(FrontendError::Io(e).into()),
                Event::Server(Ok(_)) => {
                    self.on_server_data().await?;
                    if self.deferred && (self.server.is_none() || self.tracker.is_idle()) {
                        self.deferred = false;
                        if let Flow::Stop = self.on_client_data().await? {
                            return Ok(());
                        }
                    }
                }
                Event::Server(Err(e)) => {
                    if self.retry_read(&e.to_string()).await? {
                        continue;
                    }
                    self.tracker.clear();
                    return Err(e.into());
                }
            }
        }
    }

    /// Processes every whole request the client sent, then sends the batch to the server.
    async fn on_client_data(&mut self) -> Result<Flow, SessionError> {
        let max = self.io.max_message;
        loop {
            let mut request = match self.request.take() {
                Some(mut r) => {
                    r.extend(&mut self.io.rbuf, max);
                    r
                }
                None => match Request::cut(&mut self.io.rbuf, max) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        self.io
                            .fatal("08P01", &format!("invalid message: {e}"))
                            .await;
                        return Err(e.into());
                    }
                },
            };
            let flow = self.on_request(&mut request).await;
            if !request.is_done() {
                self.request = Some(request);
            }
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return Ok(Flow::Stop),
                Ok(Flow::Wait) => {
                    self.deferred = self.server.is_some();
                    break;
                }
                Err(SessionError::Client(FrontendError::Protocol(e))) => {
                    self.io
                        .fatal("08P01", &format!("invalid message: {e}"))
                        .await;
                    return Err(e.into());
                }
                Err(e) => return Err(e),
            }
        }
        if !self.server_out.is_empty() {
            let out = self.server_out.split().freeze();
            if let Some(lease) = &mut self.server {
                let now = std::time::Instant::now();
                self.round_start.get_or_insert(now);
                self.xact_start.get_or_insert(now);
                lease.conn().write(&out).await?;
            }
        }
        self.flush_client().await?;
        self.maybe_release().await;
        Ok(Flow::Continue)
    }

    /// Processes the request's messages in order, until it is done or must wait.
    async fn on_request(&mut self, request: &mut Request) -> Result<Flow, SessionError> {
        while let Some(frame) = request.current().cloned() {
            match self.on_client_frame(request, frame).await? {
                Flow::Continue => request.advance(1),
                other => return Ok(other),
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_client_frame(
        &mut self,
        request: &mut Request,
        frame: Frame,
    ) -> Result<Flow, SessionError> {
        tracing::trace!(tag = %(frame.tag as char), len = frame.raw.len(), attached = self.server.is_some(), "client frame");
        match frame.tag {
            b'X' => return Ok(Flow::Stop),
            b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f' => {}
            other => {
                return Err(ProtocolError::UnknownType(other as char).into());
            }
        }
        if self.skip_until_sync {
            if frame.tag == b'S' {
                self.skip_until_sync = false;
                self.push_local_ready();
            }
            return Ok(Flow::Continue);
        }
        if let Err(e) = client::validate(&frame) {
            // As Postgres answers a malformed message: 08P01, and the rest of an extended batch
            // is skipped up to its Sync. On a server, the error is raised there so that the
            // server's transaction is aborted exactly as the client now sees it.
            self.stats.protocol_violations.inc();
            tracing::warn!(client = self.id, error = %e, "protocol violation from client");
            let message = format!("usher: {e}");
            if self.server.is_some() {
                self.replay = None;
                self.inject_error(&frame, "08P01", &message);
                self.client_out.append(&mut self.tracker.ready);
            } else {
                let error = messages::error_response("ERROR", "08P01", &message, None);
                self.refuse_in_held_transaction(frame.tag, error);
            }
            return Ok(Flow::Continue);
        }
        if self.starts_session_transaction() && !matches!(frame.tag, b'S' | b'H') {
            // Session mode keeps its server: PAUSE holds the transaction here instead.
            self.wait_if_paused().await;
        }
        if self.server.is_none() {
            if !self.refresh_snapshot() {
                self.flush_client().await?;
                let (code, message) = self.database_removed();
                self.io.fatal(&code, &message).await;
                return Ok(Flow::Stop);
            }
            match frame.tag {
                b'S' => {
                    self.push_local_ready();
                    return Ok(Flow::Continue);
                }
                b'H' | b'd' | b'c' | b'f' => return Ok(Flow::Continue),
                b'P' if self.mode == PoolMode::Transaction
                    && !frame.body().starts_with(b"\0")
                    && self.parses(request) =>
                {
                    self.stmts.remember(&frame)?;
                    self.tracker
                        .push(Expect::Local(Bytes::from_static(messages::PARSE_COMPLETE)));
                    self.client_out.append(&mut self.tracker.ready);
                    return Ok(Flow::Continue);
                }
                b'C' if self.mode == PoolMode::Transaction => {
                    let close = client::Targeted::new(&frame)?;
                    if close.target == client::Target::Statement && !close.name().is_empty() {
                        self.stmts.remove(close.name());
                        let mut out = BytesMut::new();
                        messages::close_complete(&mut out);
                        self.client_out.push(out.freeze());
                        return Ok(Flow::Continue);
                    }
                }
                _ => {}
            }
            match self.plan(request).await {
                Plan::Wait => return Ok(Flow::Wait),
                Plan::Local(control) => {
                    self.answer_control(request, control);
                    return Ok(Flow::Continue);
                }
                Plan::Refuse(r) => {
                    if r.rejected {
                        self.stats.route(crate::stats::RouteOutcome::Rejected);
                    }
                    let e = messages::error_response("ERROR", r.sqlstate, &r.message, None);
                    self.refuse_in_held_transaction(frame.tag, e);
                    return Ok(Flow::Continue);
                }
                Plan::Broadcast => {
                    let frames = request.take_rest();
                    return self.broadcast(frames).await;
                }
                Plan::CheckFunctions(_) => {
                    // Session::plan answers these itself; a plan asking twice is usher's bug.
                    let e = messages::error_response(
                        "ERROR",
                        "XX000",
                        "usher: internal error: function volatility unresolved",
                        None,
                    );
                    self.refuse_in_held_transaction(frame.tag, e);
                    return Ok(Flow::Continue);
                }
                Plan::Run(run) => {
                    if run.sharded {
                        self.stats.route(crate::stats::RouteOutcome::Shard);
                    }
                    if let Err((code, message)) = self.attach(run).await {
                        self.stats.route(crate::stats::RouteOutcome::Rejected);
                        let e = messages::error_response("ERROR", &code, &message, None);
                        self.refuse_in_held_transaction(frame.tag, e);
                        return Ok(Flow::Continue);
                    }
                    self.start_replay();
                    if run.prepare_only {
                        // Only preparing: the held BEGIN stays held, and the client keeps
                        // seeing its transaction as open.
                        self.side_trip = true;
                        self.rewrite_read_only = false;
                    } else {
                        self.release_held_begin();
                    }
                }
            }
        } else if self.sharded && matches!(frame.tag, b'Q' | b'B') {
            match self.check_pinned(request) {
                shard::PinCheck::Run => {}
                shard::PinCheck::Defer => return Ok(Flow::Wait),
                shard::PinCheck::Reject(code, message) => {
                    self.stats.route(crate::stats::RouteOutcome::Rejected);
                    self.replay = None;
                    self.inject_error(&frame, code, &message);
                    self.client_out.append(&mut self.tracker.ready);
                    return Ok(Flow::Continue);
                }
            }
        }
        self.record(&frame);
        self.note_write(request);
        self.forward(frame)?;
        self.client_out.append(&mut self.tracker.ready);
        Ok(Flow::Continue)
    }

    /// Appends a client frame to the server batch and records what it expects back.
    fn forward(&mut self, frame: Frame) -> Result<(), SessionError> {
        if matches!(frame.tag, b'Q' | b'E') {
            self.stats.queries.inc();
        }
        let lease = self.server.as_mut().expect("attached");
        let state = &mut lease.conn().state;
        let rewrite = self.mode == PoolMode::Transaction;
        match frame.tag {
            b'Q' => {
                let sql = frame.body().strip_suffix(b"\0").unwrap_or(frame.body());
                tracing::debug!(client = self.id, sql = %String::from_utf8_lossy(sql), "query");
                let (changes, statements) = sql_scan::scan(sql);
                if changes
                    .iter()
                    .any(|c| matches!(c, SessionChange::ResetAll | SessionChange::DiscardAll))
                {
                    // Like every other setting, usher.* go back to their defaults.
                    self.route.role_override = None;
                    self.route.shard_override = None;
                }
                if changes.iter().any(|c| matches!(c, SessionChange::Set(n) | SessionChange::Reset(n) if n.to_ascii_lowercase().starts_with("usher."))) {
                    let sql = client::sql_of(&frame).unwrap_or_default();
                    let class = self.memo.classify(&self.app.query_cache, &sql);
                    if let Some(role) = class.set_role {
                        self.route.role_override = Some(role);
                    }
                    if let Some(hint) = &class.set_shard {
                        self.route.shard_override = hint.clone();
                    }
                }
                if rewrite && statements == 1 {
                    if let [SessionChange::Deallocate(name)] = changes.as_slice() {
                        if self.stmts.remove(name.as_bytes()) {
                            // A protocol-level statement: only usher knows it by this name.
                            let mut out = BytesMut::new();
                            messages::command_complete(&mut out, b"DEALLOCATE");
                            messages::ready_for_query(&mut out, self.txn_status);
                            self.tracker.push(Expect::Local(out.freeze()));
                            return Ok(());
                        }
                    }
                }
                if changes
                    .iter()
                    .any(|c| matches!(c, SessionChange::DeallocateAll | SessionChange::DiscardAll))
                {
                    self.stmts.clear();
                    self.dropped_statements = true;
                    state.prepared.clear();
                    state.unnamed_owner = None;
                }
                self.params.on_changes(&changes, state);
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Query);
            }
            b'P' | b'B' | b'D' | b'C' if rewrite => {
                self.stmts.translate(
                    self.id,
                    &frame,
                    state,
                    &mut self.tracker,
                    &mut self.server_out,
                )?;
            }
            b'P' | b'B' | b'D' | b'C' => {
                let expect = match frame.tag {
                    b'P' => Expect::Parse {
                        injected: false,
                        name: None,
                    },
                    b'B' => Expect::Bind,
                    b'C' => Expect::Close,
                    _ => match client::Targeted::new(&frame)?.target {
                        client::Target::Statement => Expect::DescribeStatement,
                        client::Target::Portal => Expect::DescribePortal,
                    },
                };
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(expect);
            }
            b'E' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Execute);
            }
            b'S' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Sync);
            }
            b'F' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::FunctionCall);
            }
            b'H' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.note_unsynced();
            }
            b'c' | b'f' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.client_copy_end();
            }
            _ => self.server_out.extend_from_slice(&frame.raw),
        }
        Ok(())
    }

    /// True when the query of the Parse at the request's position is valid SQL for the
    /// Postgres grammar (cached by text), so usher may answer the Parse itself; otherwise it
    /// goes to a server, which reports the syntax error where the client expects it.
    fn parses(&self, request: &mut Request) -> bool {
        let i = request.position();
        request
            .statement(i, &self.lookup())
            .and_then(|s| s.class.as_ref())
            .is_some_and(|c| !c.parse_error)
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
            && self.held_begin.is_none()
            && self.tracker.is_idle()
            && self.pass.is_none()
            && self.io.rbuf.is_empty()
            && self.request.is_none()
    }

    /// Answers a message usher refuses with `error` (and ReadyForQuery for a simple Query; an
    /// extended-protocol batch is skipped up to its Sync).
    fn refuse(&mut self, tag: u8, error: Bytes) {
        self.stats.errors.inc();
        self.client_out.push(error);
        if tag == b'Q' || tag == b'F' {
            self.push_local_ready();
        } else {
            self.skip_until_sync = true;
        }
    }

    /// Like [`Session::refuse`]; inside a transaction whose BEGIN usher holds back, the
    /// transaction is now aborted, as Postgres would leave it.
    fn refuse_in_held_transaction(&mut self, tag: u8, error: Bytes) {
        if self.held_begin.is_some() {
            self.txn_status = b'E';
        }
        self.refuse(tag, error);
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

    /// Answers a Sync usher handled itself.
    fn push_local_ready(&mut self) {
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, self.txn_status);
        self.tracker.push(Expect::Local(out.freeze()));
        self.client_out.append(&mut self.tracker.ready);
    }

    /// Gets a server for a transaction planned to run as `run`; on failure returns the
    /// SQLSTATE and message for the client.
    async fn attach(&mut self, run: Run) -> Result<(), (String, String)> {
        // PAUSE: new transactions of a paused database wait for RESUME.
        self.wait_if_paused().await;
        self.set_state(crate::stats::CLIENT_WAITING);
        let result = self.attach_now(run).await;
        self.set_state(if result.is_ok() {
            crate::stats::CLIENT_ACTIVE
        } else {
            crate::stats::CLIENT_IDLE
        });
        result
    }

    fn set_state(&self, state: u8) {
        self.info
            .state
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }

    async fn attach_now(&mut self, run: Run) -> Result<(), (String, String)> {
        if let Some(role) = run.set_role {
            self.route.role_override = Some(role);
        }
        self.route.txn_writes = run.writes;
        self.route.track_writes = run.track_writes;
        // Lent out (not cloned) for the checkout: no shared reference count is touched.
        let mut snap = self
            .snap
            .take()
            .expect("the snapshot is back after every attach");
        let mut result = self.route_and_checkout(run, &snap).await;
        let mut removed = false;
        // A reload dropped the pool being waited for: route again by the new config (a few
        // times, in case reloads follow each other). Not for a sharded database: the shard
        // was chosen by the old map, and the client's retry will choose by the new one.
        for _ in 0..3 {
            if !matches!(result, Err(route::AttachError::PoolRemoved)) || self.sharded {
                break;
            }
            // The snapshot changed under the session: refreshed as between transactions.
            self.snap = Some(snap);
            removed = !self.refresh_snapshot();
            snap = self.snap.take().expect("just put back");
            if removed || self.sharded {
                break;
            }
            result = self.route_and_checkout(run, &snap).await;
        }
        self.snap = Some(snap);
        let (mut lease, _target) = result.map_err(|e| match e {
            route::AttachError::Refused(code, message) => (code, message),
            route::AttachError::PoolRemoved if removed => self.database_removed(),
            route::AttachError::PoolRemoved => (
                "08006".to_string(),
                "usher: the server was removed from the config by a reload; try again".to_string(),
            ),
        })?;
        let conn = lease.conn();
        *self.login.cancel_slot.lock() = Some(CancelTarget {
            addr: conn.addr.clone(),
            key: conn.backend_key,
        });
        self.server = Some(lease);
        Ok(())
    }

    /// Makes a just checked-out connection ready for this client: closes statements the LRU
    /// evicted and brings session parameters in line. Nothing of the client's has reached the
    /// server yet, so a connection-level failure here is safe to retry elsewhere.
    pub(super) async fn prepare_server(
        &mut self,
        lease: &mut Lease,
    ) -> Result<(), crate::server::ServerError> {
        let conn = lease.conn();
        if !conn.state.to_close.is_empty() {
            let sql: String = conn
                .state
                .to_close
                .iter()
                .map(|n| format!("DEALLOCATE \"{}\";", String::from_utf8_lossy(n)))
                .collect();
            conn.control_query(&sql).await?;
            conn.state.to_close.clear();
        }
        conn.sync_params(&mut self.params.desired).await
    }

    /// Reads what the server sent, forwards it and releases the server when the transaction is over.
    async fn on_server_data(&mut self) -> Result<(), SessionError> {
        if self.server_says_fatal()
            && self
                .retry_read("server sent FATAL before answering")
                .await?
        {
            return Ok(());
        }
        let Session {
            server,
            tracker,
            params,
            pass,
            client_out,
            txn_status,
            ..
        } = self;
        let conn = server.as_mut().expect("attached").conn();
        let answered = relay::scan(
            conn,
            tracker,
            params,
            pass,
            client_out,
            txn_status,
            relay::Rewrite {
                read_only: self.rewrite_read_only,
                idle_as_in_transaction: self.side_trip,
            },
        )?;
        if !self.client_out.is_empty() {
            self.replay = None;
        }
        self.account_round(answered);
        if self.release_is_local() {
            // The server goes back to the pool (and to the next waiting client) before the
            // answer is written to this client: the connection does not idle through a send.
            self.maybe_release().await;
            self.flush_client().await?;
        } else {
            self.flush_client().await?;
            self.maybe_release().await;
        }
        Ok(())
    }

    /// Releasing the server needs no round trip to it (no settings to read back, no commit
    /// LSN, no DEALLOCATE or reset query), so it cannot delay the answer to the client.
    fn release_is_local(&self) -> bool {
        let reads_commit_lsn =
            self.route.txn_writes && self.route.attached_role == Some(router::Role::Primary);
        let round_trip = !self.params.to_read_back.is_empty()
            || reads_commit_lsn
            || self.dropped_statements
            || self.snap().config.general.server_reset_query_always;
        !round_trip
    }

    /// Counts what the server answered, as PgBouncer does: every ReadyForQuery ends a query
    /// round trip and every idle one a transaction. A pipelining client's next round started
    /// at the latest when the previous answer arrived, so its duration is counted from there
    /// (the time the server spent on it), and two transactions are never merged into one.
    fn account_round(&mut self, answered: relay::Answered) {
        let errors = std::mem::take(&mut self.tracker.errors);
        if errors > 0 {
            self.stats.errors.inc_by(errors);
        }
        if answered.ready == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let more = !self.tracker.is_idle();
        observe_ends(
            &self.stats.query_duration,
            self.round_start,
            now,
            answered.ready,
        );
        self.round_start = more.then_some(now);
        if answered.idle > 0 {
            self.stats.transactions.inc_by(u64::from(answered.idle));
            observe_ends(
                &self.stats.transaction_duration,
                self.xact_start,
                now,
                answered.idle,
            );
            self.xact_start = (more || self.txn_status != b'I').then_some(now);
        }
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        self.replay_mark = 0;
        let bytes: usize = self.client_out.iter().map(|c| c.len()).sum();
        if bytes > 0 {
            self.stats.sent.inc_by(bytes as u64);
        }
        for chunk in self.client_out.drain(..) {
            self.io
                .stream
                .write_all(&chunk)
                .await
                .map_err(FrontendError::Io)?;
        }
        Ok(())
    }

    /// In transaction mode, gives the server back once the transaction is over and nothing is owed.
    async fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction
            || self.server.is_none()
            || self.txn_status != b'I'
            || !self.tracker.is_idle()
            || self.pass.is_some()
        {
            return;
        }
        self.release().await;
        if std::mem::take(&mut self.side_trip) {
            self.txn_status = b'T';
        }
    }

    /// Brings the server's bookkeeping up to date and returns it to the pool.
    async fn release(&mut self) {
        let Some(mut lease) = self.server.take() else {
            return;
        };
        self.set_state(crate::stats::CLIENT_IDLE);
        *self.login.cancel_slot.lock() = None;
        let conn = lease.conn();
        for name in self.tracker.unprepared.drain(..) {
            conn.state.prepared.pop(&name);
        }
        let general = &self.snap().config.general;
        let reset_query = (general.server_reset_query_always
            && !general.server_reset_query.is_empty())
        .then(|| general.server_reset_query.clone());
        let mut ok = true;
        if !self.params.to_read_back.is_empty() {
            let names = std::mem::take(&mut self.params.to_read_back);
            match conn.current_settings(&names).await {
                Ok(values) => self.params.on_read_back(&names, values, &mut conn.state),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read back session settings; closing server connection");
                    ok = false;
                }
            }
        }
        if ok
            && std::mem::take(&mut self.route.txn_writes)
            && self.route.attached_role == Some(router::Role::Primary)
        {
            // Read-your-writes: remember how far the primary's WAL is after this commit.
            match conn
                .control_query("SELECT pg_catalog.pg_current_wal_insert_lsn()::text")
                .await
            {
                Ok(rows) => {
                    if let Some(lsn) = rows
                        .first()
                        .and_then(|r| r.first())
                        .and_then(|v| v.as_deref())
                        .and_then(router::topology::parse_lsn)
                    {
                        let shard = self.route.attached_shard;
                        if self.route.min_lsn.len() <= shard {
                            self.route.min_lsn.resize(shard + 1, 0);
                        }
                        self.route.min_lsn[shard] = self.route.min_lsn[shard].max(lsn);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the commit LSN; closing server connection");
                    ok = false;
                }
            }
        }
        if ok && std::mem::take(&mut self.dropped_statements) {
            ok = conn.control_query("DEALLOCATE ALL").await.is_ok();
            conn.state.prepared.clear();
        }
        if let (true, Some(sql)) = (ok, reset_query) {
            ok = reset(conn, &sql).await;
        }
        if ok {
            lease.release();
        }
    }

    /// Cleanup when the client is gone: roll back, reset (session mode) and return the server,
    /// or close it when it is in the middle of something.
    async fn finish(&mut self) {
        let Some(mut lease) = self.server.take() else {
            return;
        };
        *self.login.cancel_slot.lock() = None;
        if !self.tracker.is_idle() || self.pass.is_some() {
            return; // Dropping the lease closes the connection: a query may still be running.
        }
        let config = self.app.config();
        let conn = lease.conn();
        let work = async {
            if self.txn_status != b'I' {
                conn.control_query("ROLLBACK").await?;
            }
            Ok::<(), crate::server::ServerError>(())
        };
        let cleaned = matches!(
            tokio::time::timeout(Duration::from_secs(5), work).await,
            Ok(Ok(()))
        );
        if !cleaned {
            return;
        }
        if self.mode == PoolMode::Session
            && !config.general.server_reset_query.is_empty()
            && !reset(conn, &config.general.server_reset_query).await
        {
            return;
        }
        lease.release();
    }
}

/// Runs the reset query and forgets the session state it wipes.
async fn reset(conn: &mut crate::server::ServerConn, sql: &str) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), conn.control_query(sql)).await {
        Ok(Ok(_)) => {
            conn.state.applied.clear();
            conn.state.prepared.clear();
            conn.state.to_close.clear();
            conn.state.unnamed_owner = None;
            true
        }
        _ => false,
    }
}

/// Runs the prepared-statement translation on an arbitrary client frame body (for the
/// robustness tests and fuzzing): it must return an error or a translation, never panic.
pub(crate) fn probe_translate(tag: u8, body: &[u8]) {
    let frame = Frame::new(tag, body);
    let mut stmts = ClientStatements::default();
    let mut state = crate::server::ServerState::default();
    let mut tracker = Tracker::default();
    let mut out = BytesMut::new();
    let _ = stmts.remember(&frame);
    let _ = stmts.translate(1, &frame, &mut state, &mut tracker, &mut out);
}

enum Event {
    /// A graceful shutdown started (checked at the top of the loop).
    Shutdown,
    /// The timeout [`Session::next_timeout`] named fired.
    Timeout,
    Client(std::io::Result<usize>),
    Server(Result<usize, crate::server::ServerError>),
}

/// Observes `n` ends arriving together at `now`: the first took since `start`, the others,
/// answered in the same read, took nothing after it. Nothing when `start` is unknown.
fn observe_ends(
    histogram: &prometheus::Histogram,
    start: Option<std::time::Instant>,
    now: std::time::Instant,
    n: u32,
) {
    if let Some(t) = start {
        histogram.observe(now.saturating_duration_since(t).as_secs_f64());
        for _ in 1..n {
            histogram.observe(0.0);
        }
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
