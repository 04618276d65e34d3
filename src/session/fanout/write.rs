//! Running one UPDATE or DELETE on several shards as one transaction: each shard's primary
//! runs it inside BEGIN (concurrently), with `now()` and its kin pinned to one constant
//! (`router::clock`), RETURNING rows stream to the client as they arrive,
//! and the command tag counts the rows of every shard. If every shard succeeded, each part is
//! prepared (`PREPARE TRANSACTION`), the decision is logged and fsynced, and every part is
//! committed (`COMMIT PREPARED`); a failure before the decision rolls every part back and
//! the client gets the error with its SQLSTATE. After the decision the write stands: a part
//! whose commit did not get through is committed by recovery (`twophase::recover`). One such
//! write runs at a time per database, so two of them cannot deadlock across shards.

use bytes::{Bytes, BytesMut};

use crate::error::Failure;

use super::control::{everywhere, everywhere_some, rollback, Answer};
use super::order::Order;
use super::{end_or_aside, lost, unexpected, Part};
use crate::protocol::{messages, server};
use crate::router::fanout::Merge;
use crate::router::plan::FanoutWrite;
use crate::session::{Flow, Session, SessionError};

/// The rows the shards' statements touched, by command (`UPDATE`, `DELETE`).
#[derive(Default)]
pub(super) struct Count {
    verb: Option<Bytes>,
    rows: u64,
}

impl Count {
    /// The client's command tag: the verb and every shard's rows (`UPDATE 42`).
    pub(super) fn tag(&self) -> Vec<u8> {
        let mut tag = self.verb.as_deref().unwrap_or(b"UPDATE").to_vec();
        tag.extend_from_slice(format!(" {}", self.rows).as_bytes());
        tag
    }
}

impl Session {
    /// Runs the write in `frames` (a Query, or extended messages up to their Sync) on the
    /// shards of `plan` and answers the client once it committed or rolled back everywhere.
    pub(in crate::session) async fn fan_out_write(
        &mut self,
        plan: FanoutWrite,
        frames: Vec<crate::protocol::Frame>,
    ) -> Result<Flow, SessionError> {
        self.wait_if_paused().await;
        // One clock for every shard: now() and its kin become the same constant.
        let at = crate::router::clock::timestamp(std::time::SystemTime::now());
        let Some((batches, returning)) = self.write_batches(&plan, &frames, &at).await else {
            return Ok(Flow::Continue);
        };
        let coordinator = self.app.twophase.clone();
        let log_path = self.snap().config.general.two_phase_log.clone();
        let log = match coordinator.log(log_path.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                self.answer_fanout_error(e.sqlstate(), &e.to_string());
                return Ok(Flow::Continue);
            }
        };
        let _turn = match self.take_turn().await {
            Ok(turn) => turn,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let outcome = crate::stats::RouteOutcome::FanoutWrite;
        let Some(mut parts) = self
            .checkout_parts(&plan.shards, true, false, outcome)
            .await?
        else {
            return Ok(Flow::Continue);
        };
        let bytes: Vec<Bytes> = batches
            .iter()
            .map(|b| {
                let mut begin = BytesMut::new();
                messages::query(&mut begin, "BEGIN");
                begin.extend_from_slice(&b.bytes);
                begin.freeze()
            })
            .collect();
        let order = match (&plan.rows, returning) {
            (Some(rows), true) => Some(Order {
                rows,
                shards: &plan.shards,
            }),
            _ => None,
        };
        let Some(first) = batches.first() else {
            return Err(SessionError::Internal(
                "a write across shards without a batch",
            ));
        };
        let (mut error, count, client_gone) = self
            .run_parts(&mut parts, &bytes, first, order, plan.global)
            .await;
        if error.is_none() && !client_gone {
            error = self
                .commit_parts(&mut parts, &plan.shards, &coordinator, &log)
                .await;
        } else {
            rollback(&mut parts).await;
        }
        self.release_parts(parts);
        if client_gone {
            return Err(SessionError::Internal(
                "the client went away during a write across shards",
            ));
        }
        let tag = count.tag();
        self.end_answer(error, Some(&tag)).await?;
        Ok(Flow::Continue)
    }

    /// The database's turn of writes across shards: one at a time, so two cannot wait on
    /// each other's rows on two shards (a deadlock no shard sees). Waiting longer than
    /// `two_phase_lock_timeout` is the client's 40P01, as a deadlock is.
    pub(super) fn take_turn(
        &self,
    ) -> impl std::future::Future<
        Output = Result<tokio::sync::OwnedMutexGuard<()>, (&'static str, String)>,
    > + Send
           + 'static {
        let wait = self.two_phase_wait();
        let app = self.app.clone();
        let gate = app.twophase.gate(&self.db_name);
        async move {
            match tokio::time::timeout(wait, gate.lock_owned()).await {
                Ok(turn) => Ok(turn),
                Err(_) => {
                    app.metrics.timed_out("two_phase_lock_timeout");
                    Err((
                    "40P01",
                    format!("deadlock detected (usher: this write waited {} ms for another write across shards of this database to finish; two_phase_lock_timeout)", wait.as_millis()),
                ))
                }
            }
        }
    }

    /// Each shard's messages for the write in `frames`, with `now()` and its kin pinned to
    /// `at`, and whether RETURNING rows come back in VALUES order; `None` when the client
    /// got an error instead.
    pub(super) async fn write_batches(
        &mut self,
        plan: &FanoutWrite,
        frames: &[crate::protocol::Frame],
        at: &str,
    ) -> Option<(Vec<super::batch::ShardBatch>, bool)> {
        let text = super::batch::statement_text(frames, &self.stmts);
        let pinned = match text
            .as_deref()
            .map(|sql| crate::router::clock::pin(sql, at))
        {
            Some(Ok(pinned)) => pinned,
            Some(Err(why)) => {
                self.answer_fanout_error(
                    "0A000",
                    &format!("usher: a write across shards with {why}"),
                );
                return None;
            }
            None => None,
        };
        let built = match &plan.rows {
            Some(rows) => {
                let sql = pinned.or(text).unwrap_or_default();
                self.insert_batches(plan, rows, frames, &sql, at).await
            }
            None if plan.global
                && plan.class.fanout == Some(crate::router::fanout::Shape::Insert) =>
            {
                let sql = pinned.or(text).unwrap_or_default();
                match self.global_insert_sql(plan, &sql, at).await {
                    Ok(sql) => {
                        let merge = Merge {
                            shard_sql: Some(sql),
                            ..Merge::default()
                        };
                        super::batch::build(frames, &merge, &self.stmts).map(|b| (vec![b], false))
                    }
                    Err(e) => Err(e),
                }
            }
            None => {
                let merge = Merge {
                    shard_sql: pinned,
                    ..Merge::default()
                };
                super::batch::build(frames, &merge, &self.stmts).map(|b| (vec![b], false))
            }
        };
        match built {
            Ok(b) => Some(b),
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                None
            }
        }
    }

    /// Sends BEGIN (unless a part is in a transaction already) and the statement to every
    /// part and relays the answers: the frames before
    /// the rows once, RETURNING rows as they come, and the first error. Returns the error,
    /// the rows counted, and whether the client stopped taking bytes.
    pub(super) async fn run_parts(
        &mut self,
        parts: &mut [Part],
        bytes: &[Bytes],
        batch: &super::batch::ShardBatch,
        order: Option<Order<'_>>,
        global: bool,
    ) -> (Option<Bytes>, Count, bool) {
        // Under `global`: the rows each copy changed (they must agree).
        let mut counts: Vec<Option<u64>> = vec![None; parts.len()];
        let mut error: Option<Bytes> = None;
        let mut count = Count::default();
        let mut client_gone = false;
        // A part in a transaction across shards is sent no BEGIN.
        let mut begun: Vec<bool> = parts.iter().map(|p| p.in_txn).collect();
        let deadline = self.fanout_deadline();
        // Under `order`: each part's RETURNING rows, put in the VALUES order at the end.
        let mut held: Vec<Vec<Bytes>> = vec![Vec::new(); parts.len()];
        for (i, p) in parts.iter_mut().enumerate() {
            let Some(bytes) = bytes.get(i).or(bytes.first()) else {
                continue;
            };
            if let Err(e) = p.lease.conn().write(bytes).await {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                p.broken();
            }
        }
        let mut parses = 0usize;
        let mut header_sent = 0usize;
        loop {
            for (i, p) in parts.iter_mut().enumerate() {
                while !p.ready {
                    let Some(frame) = p.next_frame(i, &mut error) else {
                        break;
                    };
                    let started = begun.get(i).copied().unwrap_or(true);
                    match frame.tag {
                        // The answer to BEGIN.
                        b'C' if !started => {}
                        b'Z' if !started => {
                            if let Some(b) = begun.get_mut(i) {
                                *b = true;
                            }
                        }
                        b'1' | b'2' | b't' | b'T' | b'n' if p.header_seen < batch.header_frames => {
                            let index = p.header_seen;
                            p.header_seen += 1;
                            if index < header_sent {
                                continue;
                            }
                            header_sent += 1;
                            if frame.tag == b'1' {
                                parses += 1;
                                if batch.injected.get(parses - 1).copied().unwrap_or(false) {
                                    continue;
                                }
                            }
                            self.client_out.push(frame.raw);
                        }
                        b'D' => {
                            if error.is_some() || client_gone || (global && i != 0) {
                                // Only the first copy's RETURNING rows are the client's.
                            } else if order.is_some() {
                                if let Some(h) = held.get_mut(i) {
                                    h.push(frame.raw);
                                }
                            } else {
                                self.client_out.push(frame.raw);
                            }
                        }
                        b'C' => {
                            p.rows_done = true;
                            match server::command_tag(frame.body())
                                .ok()
                                .and_then(server::tag_count)
                            {
                                Some((verb, n)) => {
                                    if let Some(c) = counts.get_mut(i) {
                                        *c = Some(n);
                                    }
                                    count.rows = count.rows.saturating_add(n);
                                    count
                                        .verb
                                        .get_or_insert_with(|| Bytes::copy_from_slice(verb));
                                }
                                None => {
                                    error.get_or_insert_with(|| {
                                        lost(i, "a command tag without a row count")
                                    });
                                }
                            }
                        }
                        // Inside BEGIN: ReadyForQuery says 'T', and the part goes on.
                        _ => {
                            if let Some(f) =
                                end_or_aside(&mut self.client_out, p, frame, &mut error, false)
                            {
                                unexpected(p, i, f.tag, &mut error, "a write");
                            }
                        }
                    }
                }
            }
            if error.is_some() {
                self.cancel_running(parts);
            }
            if parts.iter().all(|p| p.ready) {
                break;
            }
            if !client_gone && self.flush_client().await.is_err() {
                // Nothing is decided yet: the write is rolled back everywhere.
                client_gone = true;
                self.client_out.clear();
                self.cancel_running(parts);
            }
            self.read_some(parts, &mut error, deadline).await;
        }
        if let (None, true) = (&error, global) {
            let first = counts.first().copied().flatten();
            if counts.iter().any(|c| *c != first) {
                error = Some(messages::error_response(
                    "ERROR",
                    "XX000",
                    &format!("usher: the copies of the global table differ between shards (rows changed per shard: {counts:?}); the write was rolled back on every shard"),
                    None,
                ));
            }
            count.rows = first.unwrap_or(0);
        }
        if let (None, false, Some(order)) = (&error, client_gone, order) {
            match order.interleave(held) {
                Ok(rows) => self.client_out.extend(rows),
                Err(e) => error = Some(e),
            }
        }
        (error, count, client_gone)
    }

    /// Commits every part: with one part, COMMIT; with several, PREPARE TRANSACTION on each,
    /// the decision logged, then COMMIT PREPARED on each. Returns the client's error when
    /// the write was rolled back instead.
    pub(super) async fn commit_parts(
        &mut self,
        parts: &mut [Part],
        shards: &[usize],
        coordinator: &std::sync::Arc<crate::twophase::Coordinator>,
        log: &std::sync::Arc<crate::twophase::log::Log>,
    ) -> Option<Bytes> {
        if parts.len() == 1 {
            return super::control::commit_each(parts, shards).await;
        }
        let txn = coordinator.begin();
        let gids: Vec<String> = shards
            .iter()
            .map(|s| coordinator.gid(&txn.id, *s))
            .collect();
        let prepare = everywhere(parts, |i| {
            format!(
                "PREPARE TRANSACTION {}",
                crate::twophase::recover::quote(gids.get(i).map_or("", String::as_str))
            )
        })
        .await;
        let mut error = None;
        for (i, a) in prepare.iter().enumerate() {
            match a {
                Answer::Ok => {}
                Answer::Error(e) => {
                    error.get_or_insert_with(|| e.clone());
                }
                Answer::Lost(why) => {
                    error.get_or_insert_with(|| lost(shards.get(i).copied().unwrap_or(i), why));
                }
            }
        }
        let decided = match error {
            Some(_) => Err(error),
            None => {
                let (log, id) = (log.clone(), txn.id.clone());
                match tokio::task::spawn_blocking(move || log.commit(&id)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Some(messages::error_response(
                        "ERROR",
                        "58030",
                        &format!("{e}; the write across shards was rolled back"),
                        None,
                    ))),
                    Err(_) => Err(Some(messages::error_response(
                        "ERROR",
                        "XX000",
                        "usher: the two-phase commit log writer failed; the write across shards was rolled back",
                        None,
                    ))),
                }
            }
        };
        if let Err(error) = decided {
            // Parts that prepared are rolled back; a part that cannot be reached now is
            // rolled back by recovery (no commit was logged).
            let prepared: Vec<bool> = prepare.iter().map(|a| matches!(a, Answer::Ok)).collect();
            let answers = everywhere_some(parts, &prepared, |i| {
                format!(
                    "ROLLBACK PREPARED {}",
                    crate::twophase::recover::quote(gids.get(i).map_or("", String::as_str))
                )
            })
            .await;
            for (i, a) in answers.iter().enumerate() {
                if let Some(Answer::Error(_) | Answer::Lost(_)) = a {
                    tracing::warn!(
                        gid = gids.get(i).map_or("", String::as_str),
                        "ROLLBACK PREPARED failed; recovery will roll it back"
                    );
                }
            }
            return error;
        }
        let answers = everywhere(parts, |i| {
            format!(
                "COMMIT PREPARED {}",
                crate::twophase::recover::quote(gids.get(i).map_or("", String::as_str))
            )
        })
        .await;
        let mut all = true;
        for (i, a) in answers.iter().enumerate() {
            if !matches!(a, Answer::Ok) {
                all = false;
                tracing::warn!(
                    gid = gids.get(i).map_or("", String::as_str),
                    "COMMIT PREPARED failed; recovery will commit it"
                );
            }
        }
        if all {
            if let Err(e) = log.done(&txn.id) {
                tracing::warn!(error = %e, "could not mark a distributed transaction done");
            }
        }
        self.note_commit_lsns(parts, shards).await;
        None
    }

    /// Read-your-writes: the client's next reads on each shard wait for a replica that
    /// replayed this write.
    async fn note_commit_lsns(&mut self, parts: &mut [Part], shards: &[usize]) {
        if !(self.db.read_your_writes && self.db.read_write_split) {
            return;
        }
        for (p, &shard) in parts.iter_mut().zip(shards) {
            if !p.ready || p.discard {
                continue;
            }
            let lsn = p
                .lease
                .conn()
                .control_query("SELECT pg_catalog.pg_current_wal_insert_lsn()::text")
                .await;
            match lsn {
                Ok(rows) => {
                    if let Some(lsn) = rows
                        .first()
                        .and_then(|r| r.first())
                        .and_then(|v| v.as_deref())
                        .and_then(crate::router::topology::parse_lsn)
                    {
                        if self.route.min_lsn.len() <= shard {
                            self.route.min_lsn.resize(shard + 1, 0);
                        }
                        if let Some(m) = self.route.min_lsn.get_mut(shard) {
                            *m = (*m).max(lsn);
                        }
                    }
                }
                Err(_) => p.discard = true,
            }
        }
    }
}
