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
pub mod regroup;
mod write;

use bytes::{Bytes, BytesMut};

use super::{Flow, Session, SessionError};
use crate::error::Failure;
use crate::frontend::cancel::{send_cancel, CancelTarget};
use crate::pool::Lease;
use crate::protocol::{frame::split_frame, messages, Frame};
use crate::router::fanout::{Merge, Shape};
use crate::router::plan::{Fanout, Run};
use compare::Column;
use finish::Header;
use merge::{sort_columns, Window};

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
        }
    }

    /// Its connection failed: no more frames, and it goes nowhere but closed.
    fn broken(&mut self) {
        self.discard = true;
        self.ready = true;
        self.rows_done = true;
    }
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
            .checkout_parts(&shards, plan.primary, plan.split)
            .await?
        else {
            return Ok(Flow::Continue);
        };
        self.stats.route(crate::stats::RouteOutcome::Fanout);
        self.set_state(crate::stats::CLIENT_ACTIVE);
        let result = self.merge_parts(&mut parts, &batch, merge).await;
        self.release_parts(parts);
        self.set_state(crate::stats::CLIENT_IDLE);
        result?;
        Ok(Flow::Continue)
    }

    /// A server of each of `shards`; `None` when one cannot be had (the client got the
    /// error, and the servers already taken went back).
    async fn checkout_parts(
        &mut self,
        shards: &[usize],
        primary: bool,
        split: bool,
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
        // A cancel request from the client now reaches every shard's server.
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
        Ok(Some(parts))
    }

    /// Returns the parts that ended cleanly to their pools; the others are closed. The
    /// client's cancel requests no longer go to them.
    fn release_parts(&self, parts: Vec<Part>) {
        self.login.cancel_slot.lock().across.clear();
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

    /// Sends the batch to every shard, relays and merges the answers, and ends with the
    /// client's CommandComplete (or error) and ReadyForQuery.
    async fn merge_parts(
        &mut self,
        parts: &mut [Part],
        batch: &batch::ShardBatch,
        merge: &Merge,
    ) -> Result<(), SessionError> {
        let mut error: Option<Bytes> = None;
        let deadline = self.fanout_deadline();
        for (i, p) in parts.iter_mut().enumerate() {
            if let Err(e) = p.lease.conn().write(&batch.bytes).await {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                p.broken();
            }
        }
        let mut window = Window {
            offset: batch.offset,
            limit: batch.limit,
            skipped: 0,
            sent: 0,
        };
        let mut columns: Option<Vec<Column>> = None;
        // Under aggregates: the result's column types, and each shard's row of partials.
        let mut fields: Option<Vec<aggregate::Field>> = None;
        let mut partials: Vec<Frame> = Vec::new();
        // Under regrouping: the ORDER BY of the combined groups.
        let mut group_order: Vec<Column> = Vec::new();
        // Under a finishing statement: the frames before the rows, held for its answer.
        let mut held: Vec<Header> = Vec::new();
        let mut parses = 0usize;
        let mut after_t = false;
        let mut header_sent = 0usize;
        loop {
            for (i, p) in parts.iter_mut().enumerate() {
                while !p.ready && p.head.is_none() {
                    let frame = match split_frame(&mut p.lease.conn().rbuf, MAX_FRAME) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            error.get_or_insert_with(|| lost(i, &e.to_string()));
                            p.discard = true;
                            p.ready = true;
                            p.rows_done = true;
                            break;
                        }
                    };
                    match frame.tag {
                        b'1' | b'2' | b't' | b'T' | b'n' if p.header_seen < batch.header_frames => {
                            // Every shard sends the same frames before its rows: the client
                            // gets each from whichever shard sends it first.
                            let index = p.header_seen;
                            p.header_seen += 1;
                            if index < header_sent {
                                continue;
                            }
                            header_sent += 1;
                            // A RowDescription right after a ParameterDescription describes
                            // a statement (formats unknown), not the portal that runs.
                            let of_statement = std::mem::replace(&mut after_t, frame.tag == b't');
                            if frame.tag == b'1' {
                                parses += 1;
                                if batch.injected.get(parses - 1).copied().unwrap_or(false) {
                                    continue;
                                }
                            }
                            if frame.tag == b'T' && !of_statement && merge.needs_types() {
                                if merge.aggregates.is_some() || merge.grouped.is_some() {
                                    match aggregate_fields(frame.body()) {
                                        Ok(f) => fields = Some(f),
                                        Err(e) => {
                                            error.get_or_insert_with(|| lost(i, &e));
                                        }
                                    }
                                    if let (Some(g), Some(f)) = (&merge.grouped, &fields) {
                                        // Refused before any row is gathered.
                                        if let Err((code, message)) = regroup::check_fields(g, f) {
                                            error.get_or_insert_with(|| {
                                                messages::error_response(
                                                    "ERROR", code, &message, None,
                                                )
                                            });
                                        }
                                    }
                                }
                                if merge.grouped.is_some() && !merge.order.is_empty() {
                                    match sort_columns(frame.body(), merge) {
                                        Ok(c) => group_order = c,
                                        Err(construct) => {
                                            error.get_or_insert_with(|| not_mergeable(&construct));
                                        }
                                    }
                                } else if merge.aggregates.is_none() && merge.grouped.is_none() {
                                    match sort_columns(frame.body(), merge) {
                                        Ok(c) => columns = Some(c),
                                        Err(construct) => {
                                            error.get_or_insert_with(|| not_mergeable(&construct));
                                        }
                                    }
                                }
                                if batch.described_here {
                                    continue;
                                }
                            }
                            if merge.finishes() {
                                // The finishing statement's answer replaces the shards'.
                                held.push(match frame.tag {
                                    b'T' if of_statement => Header::StatementDescription,
                                    b'T' => Header::PortalDescription,
                                    _ => Header::Frame(frame.raw),
                                });
                                continue;
                            }
                            if frame.tag == b'T' && merge.hidden() > 0 {
                                // avg()'s partials are the shards', not the client's.
                                let visible =
                                    crate::protocol::server::row_description_columns(frame.body())
                                        .map(|n| n.saturating_sub(merge.hidden()))
                                        .and_then(|n| {
                                            crate::protocol::server::row_description_prefix(
                                                frame.body(),
                                                n,
                                            )
                                        });
                                match visible {
                                    Ok(t) => self.client_out.push(t),
                                    Err(e) => {
                                        error.get_or_insert_with(|| lost(i, &e.to_string()));
                                    }
                                }
                                continue;
                            }
                            self.client_out.push(frame.raw);
                        }
                        b'D' => {
                            if error.is_some() || window.full() {
                                continue;
                            }
                            if merge.grouped.is_some()
                                && partials.len() >= regroup::MAX_PARTIAL_ROWS
                            {
                                error.get_or_insert_with(|| {
                                    messages::error_response(
                                        "ERROR",
                                        "54000",
                                        &format!("usher: GROUP BY across shards gathered more than {} partial groups", regroup::MAX_PARTIAL_ROWS),
                                        None,
                                    )
                                });
                            } else if merge.aggregates.is_some() || merge.grouped.is_some() {
                                partials.push(frame);
                            } else if merge.order.is_empty() {
                                if window.take() {
                                    self.client_out.push(frame.raw);
                                }
                            } else if columns.is_some() {
                                p.head = Some(frame);
                            } else {
                                error.get_or_insert_with(|| {
                                    lost(i, "rows before their description")
                                });
                            }
                        }
                        b'C' => {
                            p.rows_done = true;
                        }
                        b'E' => {
                            p.rows_done = true;
                            error.get_or_insert(frame.raw);
                        }
                        b'Z' => {
                            p.rows_done = true;
                            p.ready = true;
                            if frame.body() != b"I" {
                                p.discard = true;
                            }
                        }
                        b'N' | b'A' => self.client_out.push(frame.raw),
                        b'S' => {}
                        other => {
                            error.get_or_insert_with(|| {
                                lost(
                                    i,
                                    &format!("unexpected message {:?} in a read", other as char),
                                )
                            });
                            p.discard = true;
                            p.rows_done = true;
                        }
                    }
                }
            }
            if error.is_some() {
                self.cancel_running(parts);
                for p in parts.iter_mut() {
                    p.head = None;
                }
            }
            if let Some(columns) = &columns {
                match self.emit_ordered(parts, columns, &mut window, error.is_some()) {
                    // A shard's head was taken: its next rows may already be buffered.
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        error.get_or_insert_with(|| not_mergeable(&e));
                        continue;
                    }
                }
            }
            if parts.iter().all(|p| p.ready) {
                break;
            }
            self.flush_client().await?;
            self.read_some(parts, &mut error, deadline).await;
        }
        let fields = fields.unwrap_or_default();
        if let (None, Some(kinds)) = (&error, &merge.aggregates) {
            match (aggregate::combine(kinds, &fields, &partials), &merge.finish) {
                (Ok(Some(row)), Some(sql)) => {
                    let visible = fields.get(..kinds.len()).unwrap_or_default();
                    match finish::run(parts, sql, visible, &[row], &batch.result_formats).await {
                        Ok(done) => {
                            if let Err(e) = self.answer_finished(&mut held, &done) {
                                error = Some(e);
                            }
                            for row in done.rows {
                                if window.take() {
                                    self.client_out.push(row);
                                }
                            }
                        }
                        Err(e) => error = Some(e),
                    }
                }
                (Ok(Some(row)), None) => {
                    if window.take() {
                        self.client_out.push(row);
                    }
                }
                (Ok(None), Some(_)) => {
                    error = Some(lost(0, "no shard returned its aggregates"));
                }
                (Ok(None), None) => {}
                (Err((code, message)), _) => {
                    error = Some(messages::error_response("ERROR", code, &message, None));
                }
            }
        }
        if let (None, Some(columns)) = (&error, &merge.grouped) {
            match regroup::regroup(columns, &fields, &partials, &group_order) {
                Ok(rows) if merge.finish_groups.is_some() => {
                    let visible = fields.get(..columns.len()).unwrap_or_default();
                    let finished = match &merge.finish_groups {
                        Some(t) => t
                            .sql(rows.len(), visible.len())
                            .map_err(|e| messages::error_response("ERROR", "54000", &e, None)),
                        None => Err(lost(0, "no finishing statement")),
                    };
                    let done = match finished {
                        Ok(sql) => {
                            finish::run(parts, &sql, visible, &rows, &batch.result_formats).await
                        }
                        Err(e) => Err(e),
                    };
                    match done {
                        Ok(done) => {
                            if let Err(e) = self.answer_finished(&mut held, &done) {
                                error = Some(e);
                            }
                            for row in done.rows {
                                if window.take() {
                                    self.client_out.push(row);
                                }
                            }
                        }
                        Err(e) => error = Some(e),
                    }
                }
                Ok(rows) => {
                    for row in rows {
                        if window.take() {
                            self.client_out.push(row);
                        }
                    }
                }
                Err((code, message)) => {
                    error = Some(messages::error_response("ERROR", code, &message, None));
                }
            }
        }
        if error.is_some() {
            // What came before the error, without the descriptions of what never ran.
            for h in held {
                if let Header::Frame(f) = h {
                    self.client_out.push(f);
                }
            }
        }
        match error {
            Some(e) => self.client_out.push(e),
            None => {
                let mut out = BytesMut::new();
                messages::command_complete(&mut out, format!("SELECT {}", window.sent).as_bytes());
                self.client_out.push(out.freeze());
            }
        }
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, b'I');
        self.client_out.push(out.freeze());
        self.txn_status = b'I';
        self.flush_client().await
    }

    /// Sends the held frames before the rows, the descriptions the finishing statement's
    /// (a statement's without result formats), and its notices.
    fn answer_finished(
        &mut self,
        held: &mut Vec<Header>,
        done: &finish::Finished,
    ) -> Result<(), Bytes> {
        for h in std::mem::take(held) {
            let frame = match (h, &done.description) {
                (Header::Frame(f), _) => f,
                (Header::PortalDescription, Some(t)) => t.clone(),
                (Header::StatementDescription, Some(t)) => {
                    crate::protocol::server::row_description_unformatted(
                        t.get(5..).unwrap_or_default(),
                    )
                    .map_err(|e| lost(0, &e.to_string()))?
                }
                (_, None) => Bytes::from_static(messages::NO_DATA),
            };
            self.client_out.push(frame);
        }
        self.client_out.extend(done.notices.iter().cloned());
        Ok(())
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

    /// Answers the client's fan-out with an error and ReadyForQuery.
    fn answer_fanout_error(&mut self, code: &str, message: &str) {
        self.stats.errors.inc();
        self.client_out
            .push(messages::error_response("ERROR", code, message, None));
        let mut out = BytesMut::new();
        messages::ready_for_query(&mut out, b'I');
        self.client_out.push(out.freeze());
    }
}

/// The type and format of each column of an aggregate row, from its RowDescription.
fn aggregate_fields(description: &[u8]) -> Result<Vec<aggregate::Field>, String> {
    let fields =
        crate::protocol::server::row_description(description).map_err(|e| e.to_string())?;
    Ok(fields
        .iter()
        .map(|f| aggregate::Field {
            type_oid: f.type_oid,
            format: f.format,
        })
        .collect())
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

/// The client's error when the rows turn out not to merge exactly (found from the result).
fn not_mergeable(construct: &str) -> Bytes {
    messages::error_response(
        "ERROR",
        "0A000",
        &format!("usher: a query across shards is run only when its rows merge exactly, and this one has {construct}"),
        None,
    )
}
