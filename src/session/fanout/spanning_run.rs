//! The requests of a transaction across shards, run on its members (see `spanning`):
//! statements of one shard each (as a pipeline's segments, answers relayed in the client's
//! order), a read merged across shards, a write across shards, and the transaction's end.

use bytes::Bytes;

use super::control::{commit_each, rollback};
use super::order::Order;
use super::pipeline::streams;
use super::spanning::{control_answer, wants_ready};
use super::Part;
use crate::error::Failure;
use crate::protocol::{messages, Frame};
use crate::router::fanout::Shape;
use crate::router::plan::{Control, Fanout, FanoutWrite, Pipeline};
use crate::session::txn::Txn;
use crate::session::{Flow, Session, SessionError};

impl Session {
    /// Runs each execution of `plan` on its shard's member (a request without one on any
    /// member) and relays the answers in the client's order.
    pub(super) async fn span_segments(
        &mut self,
        mut plan: Pipeline,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        let ready = wants_ready(&frames);
        if plan.segments.is_empty() {
            // Only a Parse or Describe: any member answers it.
            let span = self.spanning()?;
            let any = span
                .members
                .iter()
                .position(|m| m.as_ref().is_some_and(|p| !p.discard));
            let shard = any.unwrap_or(self.db.sharding.as_ref().map_or(0, |m| m.default_shard));
            plan.segments.push(shard);
            plan.writes.push(false);
        }
        let shards = plan.shards();
        let writes: Vec<usize> = plan
            .segments
            .iter()
            .zip(&plan.writes)
            .filter(|(_, w)| **w)
            .map(|(s, _)| *s)
            .collect();
        if let Some(e) = self.before_writing(&writes).await? {
            self.answer_within(Some(e), ready);
            return Ok(Flow::Continue);
        }
        if let Some(e) = self.join(&shards).await? {
            self.answer_within(Some(e), ready);
            return Ok(Flow::Continue);
        }
        let at = self.spanning()?.at.clone();
        let built = match self
            .pinned_texts(&frames, plan.statements.as_deref(), &at)
            .await
        {
            Ok(texts) => streams(&frames, &plan, &shards, &self.stmts, &texts, false),
            Err(e) => Err(e),
        };
        let streams = match built {
            Ok(s) => s,
            Err((code, message)) => {
                let e = messages::error_response("ERROR", code, &message, None);
                self.answer_within(Some(e), ready);
                return Ok(Flow::Continue);
            }
        };
        let mut parts = self.take_members(&shards)?;
        let error = self.run_streams(&mut parts, &streams, &plan, &shards).await;
        self.put_members(&shards, parts, &writes)?;
        if error.is_none() {
            self.remember_parses(&frames)?;
        }
        self.answer_within(error, ready);
        self.flush_client().await?;
        Ok(Flow::Continue)
    }

    /// Runs a read across shards on every shard's member, merged as outside a transaction.
    pub(super) async fn span_read(
        &mut self,
        plan: Fanout,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        let merge = match plan.class.fanout.as_ref() {
            Some(Shape::Merge(m)) if plan.regroup => m.regrouped().map(Box::new),
            Some(Shape::Merge(m)) => Some(m.clone()),
            _ => None,
        };
        let Some(merge) = merge else {
            let e = messages::error_response(
                "ERROR",
                "0A000",
                "usher: COPY ... TO of a sharded table runs outside a transaction block, not inside a transaction across shards",
                None,
            );
            self.answer_within(Some(e), wants_ready(&frames));
            return Ok(Flow::Continue);
        };
        let batch = match super::batch::build(&frames, &merge, &self.stmts) {
            Ok(b) => b,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let shards: Vec<usize> = (0..self.db.shards.len()).collect();
        if let Some(e) = self.join(&shards).await? {
            self.answer_within(Some(e), true);
            return Ok(Flow::Continue);
        }
        let mut parts = self.take_members(&shards)?;
        self.stats.route(crate::stats::RouteOutcome::Fanout);
        let result = self.merge_parts(&mut parts, &batch, &merge).await;
        self.put_members(&shards, parts, &[])?;
        result?;
        Ok(Flow::Continue)
    }

    /// Runs a write across shards on the members of its shards, inside the transaction.
    pub(super) async fn span_write(
        &mut self,
        plan: FanoutWrite,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        let at = self.spanning()?.at.clone();
        let Some((batches, returning)) = self.write_batches(&plan, &frames, &at).await else {
            return Ok(Flow::Continue);
        };
        if let Some(e) = self.before_writing(&plan.shards).await? {
            self.answer_within(Some(e), true);
            return Ok(Flow::Continue);
        }
        if let Some(e) = self.join(&plan.shards).await? {
            self.answer_within(Some(e), true);
            return Ok(Flow::Continue);
        }
        let Some(first) = batches.first() else {
            return Err(SessionError::Internal(
                "a write across shards without a batch",
            ));
        };
        let bytes: Vec<Bytes> = batches.iter().map(|b| b.bytes.clone()).collect();
        let order = match (&plan.rows, returning) {
            (Some(rows), true) => Some(Order {
                rows,
                shards: &plan.shards,
            }),
            _ => None,
        };
        let mut parts = self.take_members(&plan.shards)?;
        self.stats.route(crate::stats::RouteOutcome::FanoutWrite);
        let (error, count, client_gone) = self
            .run_parts(&mut parts, &bytes, first, order, plan.global)
            .await;
        self.put_members(&plan.shards, parts, &plan.shards)?;
        if client_gone {
            return Err(SessionError::Internal(
                "the client went away during a transaction across shards",
            ));
        }
        let tag = count.tag();
        self.end_answer(error, Some(&tag)).await?;
        Ok(Flow::Continue)
    }

    /// COMMIT or ROLLBACK of the transaction across shards: every member commits (two-phase
    /// when more than one wrote) or rolls back, goes back to its pool, and the client's
    /// transaction is over.
    pub(super) async fn end_spanning(&mut self, control: Control) -> Result<Flow, SessionError> {
        let Txn::Across(span) = std::mem::replace(&mut self.txn, Txn::Idle) else {
            return Err(SessionError::Internal(
                "the end of a transaction across shards outside one",
            ));
        };
        let span = *span;
        let mut readers: (Vec<usize>, Vec<Part>) = (Vec::new(), Vec::new());
        let mut writers: (Vec<usize>, Vec<Part>) = (Vec::new(), Vec::new());
        for (shard, member) in span.members.into_iter().enumerate() {
            let Some(mut part) = member else { continue };
            part.leave_txn();
            let side = if span.wrote.get(shard).copied().unwrap_or(false) {
                &mut writers
            } else {
                &mut readers
            };
            side.0.push(shard);
            side.1.push(part);
        }
        self.set_state(crate::stats::CLIENT_ACTIVE);
        let commit = control.tag == b"COMMIT" && !span.aborted;
        let mut error = None;
        if commit {
            error = self.commit_writers(&mut writers.1, &writers.0).await;
            if error.is_none() {
                if let Some(e) = commit_each(&mut readers.1, &readers.0).await {
                    // Nothing of theirs to lose: only read, so no data differs.
                    tracing::warn!(error = ?e, "a read-only part of a transaction across shards did not commit");
                }
            } else {
                rollback(&mut readers.1).await;
            }
        } else {
            rollback(&mut writers.1).await;
            rollback(&mut readers.1).await;
        }
        self.release_parts(writers.1.into_iter().chain(readers.1).collect());
        let tag: &'static [u8] = if commit { b"COMMIT" } else { b"ROLLBACK" };
        let control = Control { tag, ..control };
        if error.is_some() {
            self.stats.errors.inc();
        }
        self.client_out
            .push(control_answer(&control, error.as_ref(), b'I'));
        self.txn_status = b'I';
        self.stats.transactions.inc();
        self.flush_client().await?;
        Ok(Flow::Continue)
    }

    /// Commits the members that wrote: one-phase for one, two-phase for several. The
    /// client's error when the transaction was rolled back instead.
    async fn commit_writers(&mut self, parts: &mut [Part], shards: &[usize]) -> Option<Bytes> {
        if parts.len() < 2 {
            return commit_each(parts, shards).await;
        }
        let coordinator = self.app.twophase.clone();
        let path = self.snap().config.general.two_phase_log.clone();
        match coordinator.log(path.as_deref()) {
            Ok(log) => self.commit_parts(parts, shards, &coordinator, &log).await,
            Err(e) => {
                rollback(parts).await;
                Some(messages::error_response(
                    "ERROR",
                    e.sqlstate(),
                    &e.to_string(),
                    None,
                ))
            }
        }
    }

    /// Rolls every member of an aborted transaction across shards back and returns it to
    /// its pool; the transaction stays (aborted, with no member) until the client ends it.
    pub(super) async fn abort_members(&mut self) {
        let Txn::Across(span) = &mut self.txn else {
            return;
        };
        let mut parts: Vec<Part> = span
            .members
            .iter_mut()
            .filter_map(Option::take)
            .filter(|p| !p.discard)
            .map(|mut p| {
                p.leave_txn();
                p
            })
            .collect();
        if parts.is_empty() {
            return;
        }
        rollback(&mut parts).await;
        self.release_parts(parts);
    }

    /// The client went away inside a transaction across shards: every member rolls back
    /// and goes back to its pool (one that does not answer is closed).
    pub(in crate::session) async fn finish_spanning(&mut self) {
        let Txn::Across(span) = std::mem::replace(&mut self.txn, Txn::Idle) else {
            return;
        };
        let mut parts: Vec<Part> = span
            .members
            .into_iter()
            .flatten()
            .filter(|p| !p.discard && p.ready)
            .map(|mut p| {
                p.leave_txn();
                p
            })
            .collect();
        let work = rollback(&mut parts);
        if tokio::time::timeout(std::time::Duration::from_secs(5), work)
            .await
            .is_err()
        {
            return;
        }
        self.release_parts(parts);
    }
}
