//! A transaction block that spans shards: `BEGIN`, statements for two families, `COMMIT`,
//! answered as one database would answer it.
//!
//! A transaction starts on one shard (its first keyed statement, see `session::shard`).
//! When a later request names another shard, or a sharded table without its key, the
//! transaction *widens*: the server it runs on becomes its first member, and every shard a
//! statement names from then on joins it with a BEGIN of the same isolation and access mode
//! (a transaction held by usher's BEGIN that starts with such a statement widens at once,
//! with no member yet). Each request is then run by the session itself, as planned by
//! [`crate::router::plan_within`]: statements of one shard on that shard's member (answers
//! relayed in the client's order, as a pipeline's are), reads and writes across shards on
//! every member concerned, merged as outside a transaction. Every member sees the
//! transaction's own writes. One clock for the whole transaction: `now()` and its kin are
//! the transaction's start on every shard.
//!
//! An error aborts the whole transaction (25P02 until it ends, as Postgres). COMMIT commits
//! every member: two-phase (the decision logged first, see `twophase`) when more than one
//! wrote, one-phase otherwise; ROLLBACK rolls every member back. Two such transactions could
//! wait on each other's rows on two shards, a deadlock no shard's detector sees; so every
//! member runs with `lock_timeout` = `two_phase_lock_timeout` (unless the client set its
//! own), and such a cycle ends with 55P03 in one of them (retry it, as after a deadlock).
//! Transactions across shards thus run concurrently; only single statements across shards
//! take turns (see `write`).
//!
//! Only READ COMMITTED transactions widen: every shard takes its own snapshot, which a
//! REPEATABLE READ or SERIALIZABLE transaction would see as not one database's.

use bytes::{Bytes, BytesMut};

use super::control::{everywhere_some, Answer};
use super::{lost, Part};
use crate::error::Failure;
use crate::protocol::{messages, Frame};
use crate::router::plan::{Control, Plan, Within};
use crate::session::request::Request;
use crate::session::txn::Txn;
use crate::session::{Flow, Session, SessionError};

/// A transaction across shards.
pub(in crate::session) struct Spanning {
    /// Each shard's part of the transaction, once it joined (index: shard).
    pub(super) members: Vec<Option<Part>>,
    /// The shards whose part ran a write.
    pub(super) wrote: Vec<bool>,
    /// What a joining shard's transaction starts with.
    pub(super) begin: String,
    /// The transaction's clock: `now()` and its kin on every shard.
    pub(super) at: String,
    /// A statement failed: only COMMIT (which rolls back) or ROLLBACK is accepted.
    pub aborted: bool,
}

impl Spanning {
    /// A transaction across `shards` shards starting with `begin`, clocked at `at`.
    fn new(shards: usize, begin: String, at: String) -> Spanning {
        Spanning {
            members: (0..shards).map(|_| None).collect(),
            wrote: vec![false; shards],
            begin,
            at,
            aborted: false,
        }
    }

    /// How many shards wrote, counting `also` as writing.
    fn writers_with(&self, also: &[usize]) -> usize {
        self.wrote
            .iter()
            .enumerate()
            .filter(|(s, w)| **w || also.contains(s))
            .count()
    }
}

/// The BEGIN a joining shard gets for a transaction of this isolation and access mode;
/// `None` when the isolation is not READ COMMITTED.
pub(in crate::session) fn joining_begin(isolation: &str, read_only: bool) -> Option<String> {
    if !isolation.eq_ignore_ascii_case("read committed") {
        return None;
    }
    let mode = if read_only { " READ ONLY" } else { "" };
    Some(format!("BEGIN ISOLATION LEVEL READ COMMITTED{mode}"))
}

/// Whether a client's BEGIN text leaves the transaction READ COMMITTED (no stricter level).
pub(in crate::session) fn read_committed(begin: &[u8]) -> bool {
    let text = String::from_utf8_lossy(begin).to_ascii_lowercase();
    !(text.contains("repeatable") || text.contains("serializable"))
}

impl Session {
    /// Starts a transaction across shards in place of a held BEGIN (the statement at hand
    /// needs several shards): no member yet; shards join with the client's BEGIN.
    pub(in crate::session) fn span_from_held(&mut self) -> bool {
        let Some(held) = self.txn.held() else {
            return false;
        };
        let Some(sql) = held.statement.sql.as_deref() else {
            return false;
        };
        if !read_committed(sql) || self.txn.aborted() {
            return false;
        }
        let begin = format!("{}; {}", String::from_utf8_lossy(sql), self.lock_bound());
        let at = crate::router::clock::timestamp(std::time::SystemTime::now());
        self.txn = Txn::Across(Box::new(Spanning::new(self.db.shards.len(), begin, at)));
        self.txn_status = b'T';
        true
    }

    /// Widens the transaction on the attached server (idle inside its transaction block) to
    /// one across shards, that server its first member. False (nothing changed) when it
    /// cannot: a replica's transaction, an isolation above READ COMMITTED, or a server that
    /// does not answer (the usual path then reports the statement).
    pub(in crate::session) async fn widen(&mut self) -> Result<bool, SessionError> {
        if self.route.attached_role != Some(crate::router::Role::Primary) {
            return Ok(false);
        }
        let bound = self.lock_bound();
        let Some(lease) = self.txn.lease() else {
            return Ok(false);
        };
        let conn = lease.conn();
        if self.tracker.unsynced {
            // A Parse and Describe ended by a Flush (asyncpg, node-postgres) left the server
            // waiting for a Sync: usher's own closes that step (the transaction stays open).
            let frames = conn.exchange(messages::SYNC).await?;
            if frames.iter().any(|f| f.tag == b'E') {
                return Ok(false);
            }
            self.tracker.unsynced = false;
        }
        let rows = conn
            .control_query(&format!(
                "{bound}SELECT pg_catalog.current_setting('transaction_isolation'), pg_catalog.current_setting('transaction_read_only'), pg_catalog.txid_current_if_assigned() IS NOT NULL, pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
            ))
            .await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (isolation, read_only, wrote, at) = (field(0), field(1), field(2), field(3));
        let Some(begin) = joining_begin(&isolation, read_only == "on") else {
            return Ok(false);
        };
        let begin = format!("{begin}; {bound}");
        let shard = self.route.attached_shard;
        let Some((mut lease, _)) = self.txn.detach() else {
            return Ok(false);
        };
        self.settle_server(lease.conn()).await?;
        self.login.cancel_slot.lock().attached = None;
        // Nothing of it may be replayed elsewhere now.
        self.replay = None;
        let mut span = Spanning::new(self.db.shards.len(), begin, at);
        if let Some(m) = span.members.get_mut(shard) {
            *m = Some(Part::member(lease));
        }
        if let Some(w) = span.wrote.get_mut(shard) {
            *w = wrote == "t";
        }
        self.txn = Txn::Across(Box::new(span));
        self.stats.route(crate::stats::RouteOutcome::Spanning);
        Ok(true)
    }

    /// Runs the request at hand inside the transaction across shards.
    pub(in crate::session) async fn run_spanning(
        &mut self,
        request: &mut Request,
    ) -> Result<Flow, SessionError> {
        let mut volatile = None;
        let within = loop {
            match self.plan_within_now(request, volatile) {
                Within::Wait => return Ok(Flow::Wait),
                Within::Plan(Plan::CheckFunctions(functions)) => {
                    volatile = Some(Box::pin(self.volatility(functions)).await);
                }
                Within::Plan(Plan::CheckColumns(check)) => {
                    let table = check.table.clone();
                    if let Err(why) = Box::pin(self.learn_key_position(check)).await {
                        let frames = request.take_rest();
                        let e = messages::error_response(
                            "ERROR",
                            "58000",
                            &format!("usher: could not read the columns of table {table:?} for an INSERT without a column list: {why}"),
                            None,
                        );
                        self.answer_within(Some(e), wants_ready(&frames));
                        return Ok(Flow::Continue);
                    }
                }
                within => break within,
            }
        };
        let frames = request.take_rest();
        tracing::debug!(client = self.id, plan = ?within, messages = frames.len(), "a request of a transaction across shards");
        let flow = self.run_within(within, frames).await;
        if matches!(&self.txn, Txn::Across(s) if s.aborted) {
            // Aborted: nothing of it can commit, so every shard rolls back now and its locks
            // go at once (the client still sees the transaction open until its end).
            self.abort_members().await;
        }
        flow
    }

    /// Carries out the plan of a request inside the transaction.
    async fn run_within(
        &mut self,
        within: Within,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        let aborted = matches!(&self.txn, Txn::Across(s) if s.aborted);
        match within {
            Within::End(control) => self.end_spanning(control).await,
            _ if aborted => {
                let e = messages::error_response(
                    "ERROR",
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                    None,
                );
                self.answer_within(Some(e), wants_ready(&frames));
                Ok(Flow::Continue)
            }
            Within::Begin(control) => {
                self.client_out.push(messages::notice_response(
                    "WARNING",
                    "25001",
                    "there is already a transaction in progress",
                ));
                self.client_out.push(control_answer(&control, None, b'T'));
                Ok(Flow::Continue)
            }
            Within::Close => {
                for f in &frames {
                    if f.tag != b'C' {
                        continue;
                    }
                    let close = crate::protocol::client::Targeted::new(f)?;
                    if close.target == crate::protocol::client::Target::Statement {
                        self.stmts.remove(close.name());
                    }
                    let mut out = BytesMut::new();
                    messages::close_complete(&mut out);
                    self.client_out.push(out.freeze());
                }
                self.answer_within(None, wants_ready(&frames));
                Ok(Flow::Continue)
            }
            Within::Segments(p) => self.span_segments(p, frames).await,
            Within::Plan(Plan::Fanout(f)) => self.span_read(f, frames).await,
            Within::Plan(Plan::FanoutWrite(w)) => self.span_write(w, frames).await,
            Within::Plan(Plan::Refuse(r)) => {
                if r.rejected {
                    self.stats.route(crate::stats::RouteOutcome::Rejected);
                }
                let e = messages::error_response("ERROR", r.sqlstate, &r.message, None);
                self.answer_within(Some(e), wants_ready(&frames));
                Ok(Flow::Continue)
            }
            Within::Wait | Within::Plan(_) => {
                let e = messages::error_response(
                    "ERROR",
                    "XX000",
                    "usher: internal error: a plan with no place in a transaction across shards",
                    None,
                );
                self.answer_within(Some(e), wants_ready(&frames));
                Ok(Flow::Continue)
            }
        }
    }

    /// The plan of the request at hand inside a transaction across shards.
    fn plan_within_now(&self, request: &mut Request, volatile: Option<bool>) -> Within {
        let lookup = self.lookup();
        let batch = request.batch(Some(&lookup));
        let facts = crate::router::plan::Facts {
            db: &self.db,
            transaction_mode: true,
            held: None,
            aborted: false,
            role_override: self.route.role_override,
            shard_override: self.route.shard_override.as_ref(),
            volatile,
            rotation: 0,
        };
        crate::router::plan::plan_within(&batch, &facts)
    }

    /// Answers a request of the transaction with `error` (it aborts the transaction), and
    /// ReadyForQuery when the client asked for one (`ready`).
    pub(super) fn answer_within(&mut self, error: Option<Bytes>, ready: bool) {
        let failed = error.is_some();
        if let Some(e) = error {
            tracing::debug!(client = self.id, error = ?crate::protocol::server::error_fields(e.get(5..).unwrap_or_default()), "a statement of a transaction across shards failed");
            self.stats.errors.inc();
            self.client_out.push(e);
        }
        let status = self.status_after(failed);
        if failed && !ready {
            // As Postgres: after an error, what the client sends is skipped up to its Sync.
            self.skip_until_sync = true;
        }
        if ready {
            let mut out = BytesMut::new();
            messages::ready_for_query(&mut out, status);
            self.client_out.push(out.freeze());
        }
        self.txn_status = status;
    }

    /// The transaction across shards (an internal error outside one).
    pub(super) fn spanning(&mut self) -> Result<&mut Spanning, SessionError> {
        match &mut self.txn {
            Txn::Across(s) => Ok(s),
            _ => Err(SessionError::Internal(
                "a statement across shards ran outside its transaction",
            )),
        }
    }

    /// The shards of `shards` that are not members yet join the transaction: a primary
    /// each, and its BEGIN. The error when one cannot.
    pub(super) async fn join(&mut self, shards: &[usize]) -> Result<Option<Bytes>, SessionError> {
        let span = self.spanning()?;
        let begin = span.begin.clone();
        let missing: Vec<usize> = shards
            .iter()
            .copied()
            .filter(|&k| span.members.get(k).is_some_and(Option::is_none))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let mut joined = Vec::with_capacity(missing.len());
        let mut error = None;
        for &shard in &missing {
            match self.checkout_shard(shard, true, false).await? {
                Ok(lease) => joined.push((shard, Part::member(lease))),
                Err(e) => {
                    error = Some(messages::error_response(
                        "ERROR",
                        e.sqlstate(),
                        &e.to_string(),
                        None,
                    ));
                    break;
                }
            }
        }
        let (which, mut parts): (Vec<usize>, Vec<Part>) = joined.into_iter().unzip();
        let all = vec![true; parts.len()];
        let answers = everywhere_some(&mut parts, &all, |_| begin.clone()).await;
        for (a, &shard) in answers.iter().zip(&which) {
            match a {
                Some(Answer::Ok) => {}
                Some(Answer::Error(e)) => {
                    error.get_or_insert_with(|| e.clone());
                }
                Some(Answer::Lost(why)) => {
                    error.get_or_insert_with(|| lost(shard, why));
                }
                None => {
                    error.get_or_insert_with(|| lost(shard, "the connection was closed"));
                }
            }
        }
        let span = self.spanning()?;
        for (shard, part) in which.into_iter().zip(parts) {
            // A part whose BEGIN failed is closed (dropped), never pooled.
            if part.discard {
                continue;
            }
            if let Some(slot) = span.members.get_mut(shard) {
                *slot = Some(part);
            }
        }
        Ok(error)
    }

    /// The members of `shards` (all joined), in that order, ready for a statement; the
    /// client's cancel requests now reach them.
    pub(super) fn take_members(&mut self, shards: &[usize]) -> Result<Vec<Part>, SessionError> {
        let span = self.spanning()?;
        let mut parts = Vec::with_capacity(shards.len());
        for &s in shards {
            let Some(mut part) = span.members.get_mut(s).and_then(Option::take) else {
                // Put back what was taken: the caller reports the error.
                for (&k, p) in shards.iter().zip(parts) {
                    if let Some(slot) = span.members.get_mut(k) {
                        *slot = Some(p);
                    }
                }
                return Err(SessionError::Internal(
                    "a shard of a transaction across shards has no member",
                ));
            };
            part.reset();
            parts.push(part);
        }
        self.target_parts(&mut parts);
        self.set_state(crate::stats::CLIENT_ACTIVE);
        Ok(parts)
    }

    /// Puts the members taken by [`Session::take_members`] back; `writes` marks them as
    /// having written.
    pub(super) fn put_members(
        &mut self,
        shards: &[usize],
        parts: Vec<Part>,
        writes: &[usize],
    ) -> Result<(), SessionError> {
        self.login.cancel_slot.lock().across.clear();
        self.set_state(crate::stats::CLIENT_IDLE);
        let span = self.spanning()?;
        for (&s, p) in shards.iter().zip(parts) {
            if p.discard {
                // Broken or cancelled: its part of the transaction is lost.
                span.aborted = true;
            }
            if let Some(slot) = span.members.get_mut(s) {
                *slot = Some(p);
            }
        }
        for &s in writes {
            if let Some(w) = span.wrote.get_mut(s) {
                *w = true;
            }
        }
        Ok(())
    }

    /// Before writing on `shards`: refused when that makes two writers in a database
    /// without two-phase commit. The error, if any.
    pub(super) async fn before_writing(
        &mut self,
        shards: &[usize],
    ) -> Result<Option<Bytes>, SessionError> {
        let two_phase = self
            .db
            .sharding
            .as_ref()
            .is_some_and(|m| m.two_phase_commit);
        let span = self.spanning()?;
        if two_phase || shards.is_empty() || span.writers_with(shards) < 2 {
            return Ok(None);
        }
        Ok(Some(messages::error_response(
            "ERROR",
            "0A000",
            "usher: this transaction would write on more than one shard; a transaction that writes across shards needs two_phase_commit = true in the database's [sharding] section (and max_prepared_transactions > 0 on the shards)",
            None,
        )))
    }

    /// `two_phase_lock_timeout` of the session's database.
    pub(super) fn two_phase_wait(&self) -> std::time::Duration {
        self.db
            .sharding
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |m| {
                m.two_phase_lock_timeout.0
            })
    }

    /// Keeps the client's statements named by the Parses of `frames` (they ran).
    pub(super) fn remember_parses(&mut self, frames: &[Frame]) -> Result<(), SessionError> {
        for f in frames.iter().filter(|f| f.tag == b'P') {
            if !f.body().starts_with(b"\0") {
                self.stmts.remember(f)?;
            }
        }
        Ok(())
    }

    /// The statement that bounds each lock wait of a shard's part of a transaction across
    /// shards (`SET LOCAL lock_timeout ...; `), so a deadlock across shards ends; empty when
    /// the client set a lock_timeout of its own, which then applies as it is.
    fn lock_bound(&self) -> String {
        if self.params.desired.contains_key("lock_timeout") {
            return String::new();
        }
        let wait = self.two_phase_wait();
        format!("SET LOCAL lock_timeout = '{}ms'; ", wait.as_millis().max(1))
    }
}

/// Whether the client expects a ReadyForQuery for these messages (a Sync or a Query ends
/// them; a Flush does not).
pub(super) fn wants_ready(frames: &[Frame]) -> bool {
    frames.iter().any(|f| matches!(f.tag, b'S' | b'Q'))
}

/// The local answer to a transaction-control batch (a held BEGIN, the end of a held or a
/// spanning transaction): each message's completion (`tag` for the execution, or `error` in
/// its place), then ReadyForQuery `status`.
pub(in crate::session) fn control_answer(
    control: &Control,
    error: Option<&Bytes>,
    status: u8,
) -> Bytes {
    let mut out = BytesMut::new();
    for t in &control.kinds {
        match t {
            b'P' => out.extend_from_slice(messages::PARSE_COMPLETE),
            b'B' => out.extend_from_slice(messages::BIND_COMPLETE),
            b'd' => {
                out.extend_from_slice(messages::NO_PARAMETERS);
                out.extend_from_slice(messages::NO_DATA);
            }
            b'D' => out.extend_from_slice(messages::NO_DATA),
            _ => match error {
                Some(e) => out.extend_from_slice(e),
                None => messages::command_complete(&mut out, control.tag),
            },
        }
    }
    messages::ready_for_query(&mut out, status);
    out.freeze()
}
