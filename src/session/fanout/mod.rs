//! Running one read on every shard and answering with the rows merged, as one database
//! holding all of them would answer: the statement goes to a server of each shard at once
//! (a replica where a one-shard read could use one), the first shard's RowDescription (and
//! ParseComplete, BindComplete, ...) is the client's, rows are forwarded as they arrive — or,
//! under ORDER BY, merged k-way by the sort keys, one row held per shard — with OFFSET and
//! LIMIT applied to the merged rows, and one CommandComplete counting what was sent. An error
//! on any shard is the client's error, with its own SQLSTATE; the other shards are cancelled
//! and their connections closed rather than reused, so a late cancel can hit no one else.
//! DataRows are forwarded as the bytes the shards sent: no re-encoding.

pub mod aggregate;
mod average;
pub mod batch;
pub mod compare;
mod control;
mod copy_out;
mod finish;
mod insert;
mod merge;
pub mod numeric;
mod order;
mod pipeline;
mod read;
pub mod regroup;
pub(in crate::session) mod spanning;
mod spanning_run;
mod write;

use bytes::{Bytes, BytesMut};

use super::{Flow, Session, SessionError};
use crate::error::Failure;
use crate::frontend::cancel::{send_cancel, CancelTarget};
use crate::pool::Lease;
use crate::protocol::{frame::split_frame, messages, Frame};
use crate::router::fanout::Shape;
use crate::router::plan::{Fanout, Run};

/// Largest frame accepted from a shard (Postgres never sends one over 1 GB + header).
const MAX_FRAME: usize = (1 << 30) + 64;

/// One shard's part of the answer.
struct Part {
    lease: Lease,
    /// How many of its frames before the rows (ParseComplete, ..., RowDescription) arrived.
    header_seen: usize,
    /// Its next row under ORDER BY, waiting for the merge.
    head: Option<Frame>,
    /// It sent CommandComplete or an error: no more rows.
    rows_done: bool,
    /// It sent ReadyForQuery.
    ready: bool,
    /// It may not go back to the pool (cancelled, or broken).
    discard: bool,
    /// It is a shard's part of a transaction across shards (see `spanning`): its
    /// ReadyForQuery says 'T' between statements, and that is not a reason to close it.
    in_txn: bool,
}

impl Part {
    fn new(lease: Lease) -> Part {
        Part {
            lease,
            header_seen: 0,
            head: None,
            rows_done: false,
            ready: false,
            discard: false,
            in_txn: false,
        }
    }

    /// `lease` as a shard's part of a transaction across shards, between statements.
    fn member(lease: Lease) -> Part {
        Part {
            in_txn: true,
            ready: true,
            rows_done: true,
            ..Part::new(lease)
        }
    }

    /// It leaves its transaction across shards: what runs next on it (COMMIT, PREPARE
    /// TRANSACTION, ROLLBACK) leaves it idle.
    fn leave_txn(&mut self) {
        self.in_txn = false;
        self.ready = !self.discard;
    }

    /// Ready for the next statement of its transaction (a broken part stays broken).
    fn reset(&mut self) {
        self.header_seen = 0;
        self.head = None;
        if !self.discard {
            self.rows_done = false;
            self.ready = false;
        }
    }

    /// The ReadyForQuery status it ends a statement with when all went well: 'I', or 'T'
    /// inside a transaction across shards.
    fn settled(&self) -> &'static [u8] {
        if self.in_txn {
            b"T"
        } else {
            b"I"
        }
    }

    /// Its connection failed: no more frames, and it goes nowhere but closed.
    fn broken(&mut self) {
        self.discard = true;
        self.ready = true;
        self.rows_done = true;
    }

    /// The next whole frame its server sent, if one is buffered; a malformed one breaks the
    /// part (shard `i`'s failure becomes the client's `error`).
    fn next_frame(&mut self, i: usize, error: &mut Option<Bytes>) -> Option<Frame> {
        match split_frame(&mut self.lease.conn().rbuf, MAX_FRAME) {
            Ok(f) => f,
            Err(e) => {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                self.broken();
                None
            }
        }
    }
}

/// What ends or accompanies a part's answer alike in every statement across shards:
/// ErrorResponse (the first is the client's), ReadyForQuery (`idle`: anything but 'I' means
/// the server is mid-transaction and is not reused), notices and notifications (the
/// client's), ParameterStatus (ignored). Returns the frame when it is none of these, for the
/// caller to handle (or to call [`unexpected`]).
fn end_or_aside(
    client_out: &mut Vec<Bytes>,
    p: &mut Part,
    frame: Frame,
    error: &mut Option<Bytes>,
    idle: bool,
) -> Option<Frame> {
    match frame.tag {
        b'E' => {
            p.rows_done = true;
            error.get_or_insert(frame.raw);
        }
        b'Z' => {
            p.rows_done = true;
            p.ready = true;
            if idle && frame.body() != p.settled() {
                p.discard = true;
            }
        }
        b'N' | b'A' => client_out.push(frame.raw),
        b'S' => {}
        _ => return Some(frame),
    }
    None
}

/// Shard `i` sent `tag`, which has no place in a `what`: the client's error, and the part
/// is closed.
fn unexpected(p: &mut Part, i: usize, tag: u8, error: &mut Option<Bytes>, what: &str) {
    error.get_or_insert_with(|| {
        lost(
            i,
            &format!("unexpected message {:?} in {what}", tag as char),
        )
    });
    p.broken();
}

impl Session {
    /// Runs the read in `frames` (a Query, or extended messages up to their Sync) on every
    /// shard and answers the client with the merged rows.
    pub(super) async fn fan_out(
        &mut self,
        plan: Fanout,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        self.wait_if_paused().await;
        if let Some(Shape::CopyOut(copy)) = plan.class.fanout.as_ref() {
            let copy = *copy;
            return self.copy_out(plan, copy, frames).await;
        }
        let Some(Shape::Merge(planned)) = plan.class.fanout.as_ref() else {
            return Err(SessionError::Internal("a fan-out planned without a merge"));
        };
        let regrouped;
        let merge = if plan.regroup {
            regrouped = planned.regrouped().ok_or(SessionError::Internal(
                "a regrouping planned without its shape",
            ))?;
            &regrouped
        } else {
            planned
        };
        let batch = match batch::build(&frames, merge, &self.stmts) {
            Ok(b) => b,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let shards: Vec<usize> = (0..self.db.shards.len()).collect();
        let Some(mut parts) = self
            .checkout_parts(
                &shards,
                plan.primary,
                plan.split,
                crate::stats::RouteOutcome::Fanout,
            )
            .await?
        else {
            return Ok(Flow::Continue);
        };
        let result = self.merge_parts(&mut parts, &batch, merge).await;
        self.release_parts(parts);
        result?;
        Ok(Flow::Continue)
    }

    /// A server of each of `shards`, the route counted as `outcome` and the client active;
    /// `None` when one cannot be had (the client got the error, and the servers already
    /// taken went back).
    async fn checkout_parts(
        &mut self,
        shards: &[usize],
        primary: bool,
        split: bool,
        outcome: crate::stats::RouteOutcome,
    ) -> Result<Option<Vec<Part>>, SessionError> {
        let mut parts = Vec::with_capacity(shards.len());
        for &shard in shards {
            match self.checkout_shard(shard, primary, split).await? {
                Ok(lease) => parts.push(Part::new(lease)),
                Err(e) => {
                    for p in parts {
                        p.lease.release();
                    }
                    self.answer_fanout_error(e.sqlstate(), &e.to_string());
                    return Ok(None);
                }
            }
        }
        self.target_parts(&mut parts);
        self.stats.route(outcome);
        self.set_state(crate::stats::CLIENT_ACTIVE);
        Ok(Some(parts))
    }

    /// A cancel request from the client now reaches every part's server.
    fn target_parts(&self, parts: &mut [Part]) {
        self.login.cancel_slot.lock().across = parts
            .iter_mut()
            .map(|p| {
                let conn = p.lease.conn();
                CancelTarget {
                    addr: conn.addr.clone(),
                    key: conn.backend_key,
                }
            })
            .collect();
    }

    /// Returns the parts that ended cleanly to their pools; the others are closed. The
    /// client's cancel requests no longer go to them, and the client is idle again.
    fn release_parts(&self, parts: Vec<Part>) {
        self.login.cancel_slot.lock().across.clear();
        self.set_state(crate::stats::CLIENT_IDLE);
        for p in parts {
            if p.ready && !p.discard {
                p.lease.release();
            }
        }
    }

    /// A server of `shard` for the fan-out (its primary, or any server when `split` lets
    /// a read use a replica), with the client's settings applied.
    async fn checkout_shard(
        &mut self,
        shard: usize,
        primary: bool,
        split: bool,
    ) -> Result<Result<Lease, super::route::AttachError>, SessionError> {
        let run = Run {
            shard,
            primary,
            prepare_only: false,
            set_role: None,
            writes: false,
            track_writes: false,
            split,
            sharded: true,
        };
        let snap = self.snap.take().ok_or(SessionError::Internal(
            "the routing snapshot was lent out twice",
        ))?;
        let result = self.route_and_checkout(run, &snap).await;
        self.snap = Some(snap);
        Ok(result.map(|(lease, _)| lease))
    }

    /// When a statement across shards starting now runs into `query_timeout`.
    fn fanout_deadline(&self) -> Option<tokio::time::Instant> {
        let limit = self.timeouts.as_ref().and_then(|t| t.query)?;
        Some(tokio::time::Instant::now() + limit)
    }

    /// Waits until a shard that must send more has sent something. Past `deadline`
    /// (`query_timeout`) the statement fails with 57014: the shards still running are
    /// cancelled and their connections closed, and nothing more is waited for.
    async fn read_some(
        &mut self,
        parts: &mut [Part],
        error: &mut Option<Bytes>,
        deadline: Option<tokio::time::Instant>,
    ) {
        let mut reads = Vec::new();
        let mut which = Vec::new();
        for (i, p) in parts.iter_mut().enumerate() {
            if p.ready || p.head.is_some() {
                continue;
            }
            which.push(i);
            reads.push(Box::pin(p.lease.conn().fill()));
        }
        if reads.is_empty() {
            return;
        }
        // Cancel-safe: a fill that loses the race has read nothing.
        let any = futures_util::future::select_all(reads);
        let done = match deadline {
            Some(at) => tokio::time::timeout_at(at, any).await.ok(),
            None => Some(any.await),
        }
        .map(|(result, k, _rest)| (result, k));
        let Some((result, k)) = done else {
            self.app.metrics.timed_out("query_timeout");
            tracing::warn!(
                client = self.id,
                "query_timeout exceeded by a statement across shards"
            );
            error.get_or_insert_with(|| {
                messages::error_response(
                    "ERROR",
                    "57014",
                    "canceling statement due to query timeout (usher query_timeout, a statement across shards)",
                    None,
                )
            });
            self.cancel_running(parts);
            for p in parts.iter_mut().filter(|p| !p.ready) {
                p.broken();
            }
            return;
        };
        if let (Err(e), Some(i)) = (result, which.get(k).copied()) {
            error.get_or_insert_with(|| lost(i, &e.to_string()));
            if let Some(p) = parts.get_mut(i) {
                p.discard = true;
                p.ready = true;
                p.rows_done = true;
            }
        }
    }

    /// Cancels the shards still producing rows and stops waiting for them: their
    /// connections are closed. A cancel that reaches a server before the query it targets
    /// started is ignored there, so it is sent again a moment later (the connection is never
    /// reused, so a late cancel can hit nothing else).
    fn cancel_running(&self, parts: &mut [Part]) {
        for p in parts.iter_mut().filter(|p| !p.rows_done && !p.discard) {
            let conn = p.lease.conn();
            let target = CancelTarget {
                addr: conn.addr.clone(),
                key: conn.backend_key,
            };
            p.broken();
            tokio::spawn(async move {
                send_cancel(&target).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                send_cancel(&target).await;
            });
        }
    }

    /// Ends the client's answer to a statement across shards: its `error` (counted), or
    /// CommandComplete with `tag` when it has one, then ReadyForQuery: 'I' outside a
    /// transaction, else where the transaction across shards stands (an error aborts it).
    async fn end_answer(
        &mut self,
        error: Option<Bytes>,
        tag: Option<&[u8]>,
    ) -> Result<(), SessionError> {
        let status = self.status_after(error.is_some());
        if let (Some(e), b'E') = (&error, status) {
            tracing::debug!(client = self.id, error = ?crate::protocol::server::error_fields(e.get(5..).unwrap_or_default()), "a statement of a transaction across shards failed");
        }
        match (error, tag) {
            (Some(e), _) => {
                self.stats.errors.inc();
                self.client_out.push(e);
            }
            (None, Some(tag)) => {
                let mut out = BytesMut::new();
                messages::command_complete(&mut out, tag);
                self.client_out.push(out.freeze());
            }
            (None, None) => {}
        }
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, status);
        self.client_out.push(out.freeze());
        self.txn_status = status;
        self.flush_client().await
    }

    /// Answers the client's fan-out with an error and ReadyForQuery.
    fn answer_fanout_error(&mut self, code: &str, message: &str) {
        self.stats.errors.inc();
        self.client_out
            .push(messages::error_response("ERROR", code, message, None));
        let status = self.status_after(true);
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, status);
        self.client_out.push(out.freeze());
        self.txn_status = status;
    }

    /// The ReadyForQuery status after a statement across shards: 'I' outside a
    /// transaction; inside one across shards 'T', or 'E' once a statement failed (`failed`
    /// aborts it here).
    fn status_after(&mut self, failed: bool) -> u8 {
        match &mut self.txn {
            crate::session::txn::Txn::Across(span) => {
                span.aborted |= failed;
                if span.aborted {
                    b'E'
                } else {
                    b'T'
                }
            }
            _ => b'I',
        }
    }
}

/// The client's error when shard `i` could not be used mid-answer.
fn lost(i: usize, reason: &str) -> Bytes {
    messages::error_response(
        "ERROR",
        "08006",
        &format!("usher: shard {i} failed during a query across shards: {reason}"),
        None,
    )
}
