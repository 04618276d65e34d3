//! The server's answer and the end of a transaction: frames are relayed to the client, rounds
//! counted, and in transaction mode the server goes back to the pool once nothing is owed
//! (with settings read back, the commit LSN read for read-your-writes, and the reset query
//! when configured). When the client leaves, its server is rolled back and returned, or
//! closed if it is mid-answer.
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::retry::Held;
use super::txn::Txn;
use super::{relay, Session, SessionError};
use crate::config::PoolMode;
use crate::frontend::FrontendError;
use crate::router;

impl Session {
    /// Reads what the server sent, forwards it and releases the server when the transaction is over.
    pub(super) async fn on_server_data(&mut self) -> Result<(), SessionError> {
        match self.held_answer() {
            Held::Relay => {}
            Held::Wait => return Ok(()),
            Held::Fatal => {
                if Box::pin(self.retry_read("server sent FATAL before answering")).await? {
                    return Ok(());
                }
            }
        }
        let Session {
            txn,
            tracker,
            params,
            pass,
            client_out,
            txn_status,
            ..
        } = self;
        let Some(attached) = (match txn {
            Txn::Attached(a) => Some(a),
            _ => None,
        }) else {
            return Err(SessionError::Internal(
                "server data with no server attached",
            ));
        };
        let rewrite = relay::Rewrite {
            read_only: attached.rewrite_read_only,
            idle_as_in_transaction: attached.held.is_some(),
        };
        let answered = relay::scan(
            attached.lease.conn(),
            tracker,
            params,
            pass,
            client_out,
            txn_status,
            rewrite,
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
        if std::mem::take(&mut self.tracker.hidden_sync_failed) {
            // The server skipped to usher's own Sync after an error: the client's messages
            // up to its Sync are skipped too, and a held transaction is now aborted.
            self.skip_until_sync = true;
            if self.txn.held().is_some() {
                self.txn_status = b'E';
                self.txn.abort_held();
            }
        }
        Ok(())
    }

    /// Releasing the server needs no round trip to it (no settings to read back, no commit
    /// LSN, no DEALLOCATE or reset query), so it cannot delay the answer to the client.
    pub(super) fn release_is_local(&self) -> bool {
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
    pub(super) fn account_round(&mut self, answered: relay::Answered) {
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

    pub(super) async fn flush_client(&mut self) -> Result<(), SessionError> {
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
    pub(super) async fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction
            || !self.txn.is_attached()
            || self.txn_status != b'I'
            || !self.tracker.is_idle()
            || self.pass.is_some()
        {
            return;
        }
        self.release().await;
    }

    /// Brings the server's bookkeeping up to date and returns it to the pool.
    pub(super) async fn release(&mut self) {
        let Some((mut lease, still_held)) = self.txn.detach() else {
            return;
        };
        if still_held {
            // The server only prepared for a held transaction, which the client sees open.
            self.txn_status = b'T';
        }
        self.set_state(crate::stats::CLIENT_IDLE);
        self.login.cancel_slot.lock().attached = None;
        let general = &self.snap().config.general;
        let reset_query = (general.server_reset_query_always
            && !general.server_reset_query.is_empty())
        .then(|| general.server_reset_query.clone());
        let conn = lease.conn();
        let mut ok = match self.settle_server(conn).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not settle the session's state on its server; closing server connection");
                false
            }
        };
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
        if let (true, Some(sql)) = (ok, reset_query) {
            ok = reset(conn, &sql).await;
        }
        if ok {
            lease.release();
        }
    }

    /// What the session recorded of its server while attached, settled before the server
    /// leaves that state (for its pool, or to be a member of a transaction across shards):
    /// statements whose Parse did not take effect are forgotten, settings the transaction
    /// changed are read back, and a client's DEALLOCATE ALL is made whole.
    pub(super) async fn settle_server(
        &mut self,
        conn: &mut crate::server::ServerConn,
    ) -> Result<(), crate::server::ServerError> {
        for name in self.tracker.unprepared.drain(..) {
            conn.state.prepared.pop(&name);
        }
        if !self.params.to_read_back.is_empty() {
            let names = std::mem::take(&mut self.params.to_read_back);
            let values = conn.current_settings(&names).await?;
            self.params.on_read_back(&names, values, &mut conn.state);
        }
        if std::mem::take(&mut self.dropped_statements) {
            conn.state.prepared.clear();
            conn.control_query("DEALLOCATE ALL").await?;
        }
        Ok(())
    }

    /// Cleanup when the client is gone: roll back, reset (session mode) and return the server,
    /// or close it when it is in the middle of something.
    pub(super) async fn finish(&mut self) {
        if matches!(self.txn, Txn::Across(_)) {
            self.finish_spanning().await;
            return;
        }
        let Some((mut lease, _)) = self.txn.detach() else {
            return;
        };
        self.login.cancel_slot.lock().attached = None;
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
pub(super) async fn reset(conn: &mut crate::server::ServerConn, sql: &str) -> bool {
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

/// Observes `n` ends arriving together at `now`: the first took since `start`, the others,
/// answered in the same read, took nothing after it. Nothing when `start` is unknown.
pub(super) fn observe_ends(
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
