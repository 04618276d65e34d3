//! One client message: checked, then answered locally, refused, or planned and routed when
//! no server is attached (the plan comes from [`crate::router::plan`]), and forwarded.

use bytes::{Bytes, BytesMut};

use super::drive::Flow;
use super::request::Request;
use super::responses::Expect;
use super::txn::Txn;
use super::{shard, Session, SessionError};
use crate::config::PoolMode;
use crate::error::Failure;
use crate::protocol::{client, messages, Frame, ProtocolError};
use crate::router::plan::Plan;

impl Session {
    /// One client message. Most messages of a transaction on a server need nothing
    /// asynchronous and are handled by [`Session::on_attached_frame`] without building this
    /// function's future; `drive` calls it when [`Session::needs_async`] says so.
    pub(super) async fn on_client_frame(
        &mut self,
        request: &mut Request,
        frame: Frame,
    ) -> Result<Flow, SessionError> {
        if let Some(flow) = self.check_frame(&frame)? {
            return Ok(flow);
        }
        if self.starts_session_transaction() && !matches!(frame.tag, b'S' | b'H') {
            // Session mode keeps its server: PAUSE holds the transaction here instead.
            self.wait_if_paused().await;
        }
        if self.runs_behind_prepare_trip(&frame) {
            // The server only prepares for the held transaction: what runs waits until it is
            // given back, and is then planned as the transaction's first statement (its BEGIN
            // sent first, on the shard its key names).
            if !self.tracker.is_idle() || self.pass.is_some() {
                // A trip ended by a Flush is closed by usher's own Sync first.
                return Ok(self.end_prepare_trip());
            }
            self.release().await;
        }
        if matches!(self.txn, Txn::Across(_)) {
            return Box::pin(self.run_spanning(request)).await;
        }
        if self.may_widen(request) && request.is_complete() && self.leaves_pin(request) {
            // A request for other shards inside a transaction block: the transaction
            // widens across shards, and the request runs there.
            if Box::pin(self.widen()).await? {
                return Box::pin(self.run_spanning(request)).await;
            }
        }
        if self.txn.is_attached() {
            return self.run_attached(request);
        }
        self.start_transaction(request, frame).await
    }

    /// False when the message can be handled synchronously on the attached server.
    #[inline]
    pub(super) fn needs_async(&self, request: &Request, frame: &Frame) -> bool {
        !self.txn.is_attached()
            || (self.starts_session_transaction() && !matches!(frame.tag, b'S' | b'H'))
            || self.runs_behind_prepare_trip(frame)
            || self.may_widen(request)
    }

    /// The request starts while the attached server of a sharded database is idle inside a
    /// transaction block in transaction mode: if it names other shards, the transaction
    /// may widen across shards before anything of it is sent.
    #[inline]
    fn may_widen(&self, request: &Request) -> bool {
        self.sharded
            && self.txn_status == b'T'
            && request.position() == 0
            && self.mode == PoolMode::Transaction
            && self.txn.is_attached()
            && self.txn.held().is_none()
            && self.tracker.answered()
            && self.pass.is_none()
            && self.server_out.is_empty()
    }

    /// The request's current message on the attached server, when [`Session::needs_async`]
    /// is false (read in place: no copy of its handle).
    pub(super) fn on_attached_frame(
        &mut self,
        request: &mut Request,
    ) -> Result<Flow, SessionError> {
        let Some(frame) = request.current() else {
            return Ok(Flow::Continue);
        };
        if let Some(flow) = self.check_frame(frame)? {
            return Ok(flow);
        }
        self.run_attached(request)
    }

    /// A message that would run something while the attached server only prepares for a
    /// held transaction.
    #[inline]
    fn runs_behind_prepare_trip(&self, frame: &Frame) -> bool {
        matches!(&self.txn, Txn::Attached(a) if a.held.is_some())
            && matches!(frame.tag, b'Q' | b'B' | b'E' | b'F')
    }

    /// The checks every message goes through: its type, a batch being skipped to its Sync,
    /// and its lengths. `Some` when that settled it.
    fn check_frame(&mut self, frame: &Frame) -> Result<Option<Flow>, SessionError> {
        tracing::trace!(tag = %(frame.tag as char), len = frame.raw.len(), attached = self.txn.is_attached(), "client frame");
        match frame.tag {
            b'X' => return Ok(Some(Flow::Stop)),
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
            return Ok(Some(Flow::Continue));
        }
        if let Err(e) = client::validate(frame) {
            // As Postgres answers a malformed message: 08P01, and the rest of an extended batch
            // is skipped up to its Sync. On a server, the error is raised there so that the
            // server's transaction is aborted exactly as the client now sees it.
            self.stats.protocol_violations.inc();
            tracing::warn!(client = self.id, error = %e, "protocol violation from client");
            let message = format!("usher: {e}");
            if self.txn.is_attached() {
                self.replay = None;
                self.inject_error(frame, "08P01", &message);
                self.client_out.append(&mut self.tracker.ready);
            } else {
                let error = messages::error_response("ERROR", "08P01", &message, None);
                self.refuse_in_held_transaction(frame.tag, error);
            }
            return Ok(Some(Flow::Continue));
        }
        Ok(None)
    }

    /// The first message of a transaction, with no server attached: answered locally, or
    /// planned and its plan carried out.
    async fn start_transaction(
        &mut self,
        request: &mut Request,
        frame: Frame,
    ) -> Result<Flow, SessionError> {
        {
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
            let mut plan = self.plan_now(request, None);
            if let Plan::CheckColumns(check) = plan {
                // Rare (a table's first INSERT without a column list): boxed, as below.
                let table = check.table.clone();
                if let Err(why) = Box::pin(self.learn_key_position(check)).await {
                    // Not recorded: the next such INSERT asks again.
                    let e = messages::error_response(
                        "ERROR",
                        "58000",
                        &format!("usher: could not read the columns of table {table:?} for an INSERT without a column list: {why}"),
                        None,
                    );
                    self.refuse_in_held_transaction(frame.tag, e);
                    return Ok(Flow::Continue);
                }
                plan = self.plan_now(request, None);
            }
            let plan = match plan {
                // Rare (a user function, first seen): boxed, so the session's state that
                // moves on every transaction stays small.
                Plan::CheckFunctions(functions) => {
                    let volatile = Box::pin(self.volatility(functions)).await;
                    self.plan_now(request, Some(volatile))
                }
                plan => plan,
            };
            if let Plan::Refuse(r) = &plan {
                // A transaction usher holds the BEGIN of, whose first statement needs
                // several shards: it runs as a transaction across shards.
                if r.rejected
                    && self.sharded
                    && self.mode == PoolMode::Transaction
                    && self.span_from_held()
                {
                    return Box::pin(self.run_spanning(request)).await;
                }
            }
            match plan {
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
                    return Box::pin(self.broadcast(frames)).await;
                }
                Plan::Fanout(fanout) => {
                    let frames = request.take_rest();
                    return Box::pin(self.fan_out(fanout, frames)).await;
                }
                Plan::FanoutWrite(write) => {
                    let frames = request.take_rest();
                    return Box::pin(self.fan_out_write(write, frames)).await;
                }
                Plan::Pipeline(pipeline) => {
                    let frames = request.take_rest();
                    return Box::pin(self.run_pipeline(pipeline, frames)).await;
                }
                Plan::CheckFunctions(_) | Plan::CheckColumns(_) => {
                    // Session::plan answers these itself; a plan asking twice is usher's bug.
                    let e = messages::error_response(
                        "ERROR",
                        "XX000",
                        "usher: internal error: a catalog lookup the plan needs is unresolved",
                        None,
                    );
                    self.refuse_in_held_transaction(frame.tag, e);
                    return Ok(Flow::Continue);
                }
                Plan::Run(run) => {
                    if run.sharded {
                        self.stats.route(crate::stats::RouteOutcome::Shard);
                    }
                    if let Err(e) = self.attach(run).await {
                        self.stats.route(crate::stats::RouteOutcome::Rejected);
                        let e =
                            messages::error_response("ERROR", e.sqlstate(), &e.to_string(), None);
                        self.refuse_in_held_transaction(frame.tag, e);
                        return Ok(Flow::Continue);
                    }
                    self.start_replay();
                    if !run.prepare_only {
                        // Only preparing leaves a held BEGIN held, and the client keeps
                        // seeing its transaction as open; anything else starts it.
                        self.release_held_begin();
                    }
                }
            }
        }
        self.forward_checked(request)
    }

    /// The request's current message on the attached server: checked against the pinned
    /// shard, then forwarded.
    fn run_attached(&mut self, request: &mut Request) -> Result<Flow, SessionError> {
        let tag = request.current().map_or(0, |f| f.tag);
        if self.sharded && matches!(tag, b'Q' | b'B') {
            match self.check_pinned(request) {
                shard::PinCheck::Run => {}
                shard::PinCheck::Defer => return Ok(Flow::Wait),
                shard::PinCheck::Move => return Ok(self.end_prepare_trip()),
                shard::PinCheck::Reject(code, message) => {
                    self.stats.route(crate::stats::RouteOutcome::Rejected);
                    self.replay = None;
                    if let Some(frame) = request.current() {
                        self.inject_error(frame, code, &message);
                    }
                    self.client_out.append(&mut self.tracker.ready);
                    return Ok(Flow::Continue);
                }
            }
        }
        self.forward_checked(request)
    }

    /// Forwards the request's current message to the attached server, kept for a replay and
    /// checked for writes.
    fn forward_checked(&mut self, request: &mut Request) -> Result<Flow, SessionError> {
        self.note_write(request);
        let Some(frame) = request.current() else {
            return Ok(Flow::Continue);
        };
        self.record(frame);
        self.forward(frame)?;
        self.client_out.append(&mut self.tracker.ready);
        Ok(Flow::Continue)
    }

    /// True when the query of the Parse at the request's position is valid SQL for the
    /// Postgres grammar (cached by text), so usher may answer the Parse itself; otherwise it
    /// goes to a server, which reports the syntax error where the client expects it.
    pub(super) fn parses(&self, request: &mut Request) -> bool {
        let i = request.position();
        request
            .statement(i, &self.lookup())
            .and_then(|s| s.class.as_ref())
            .is_some_and(|c| !c.parse_error)
    }

    /// Answers a message usher refuses with `error` (and ReadyForQuery for a simple Query; an
    /// extended-protocol batch is skipped up to its Sync).
    pub(super) fn refuse(&mut self, tag: u8, error: Bytes) {
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
    pub(super) fn refuse_in_held_transaction(&mut self, tag: u8, error: Bytes) {
        if self.txn.held().is_some() {
            self.txn_status = b'E';
            self.txn.abort_held();
        }
        self.refuse(tag, error);
    }

    /// Answers a Sync usher handled itself.
    pub(super) fn push_local_ready(&mut self) {
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, self.txn_status);
        self.tracker.push(Expect::Local(out.freeze()));
        self.client_out.append(&mut self.tracker.ready);
    }
}
