//! Client timeouts with PgBouncer's names and meanings: `client_idle_timeout` (no transaction,
//! nothing in flight), `idle_transaction_timeout` (idle inside a transaction),
//! `query_timeout` (an answer that takes too long) and `transaction_timeout` (a transaction
//! open too long). Which one can fire next follows from the session's state; the session loop
//! arms one timer for it, and none at all when every timeout is off (the default).
//!
//! When one fires the client gets a FATAL with the SQLSTATE Postgres uses for its own
//! equivalent, and the session ends: a query still running is canceled on its server and that
//! connection closed; an idle transaction is rolled back and its server returned to the pool
//! (by the session's usual cleanup).

use std::time::Instant;

use super::Session;

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timeout {
    ClientIdle,
    IdleTransaction,
    Query,
    Transaction,
}

impl Timeout {
    /// The setting's name (log lines, metrics label).
    pub(super) fn setting(self) -> &'static str {
        match self {
            Timeout::ClientIdle => "client_idle_timeout",
            Timeout::IdleTransaction => "idle_transaction_timeout",
            Timeout::Query => "query_timeout",
            Timeout::Transaction => "transaction_timeout",
        }
    }

    /// SQLSTATE and message of the FATAL the client gets (the codes of Postgres's own
    /// idle_session_timeout, idle_in_transaction_session_timeout, query cancel and
    /// transaction_timeout).
    fn fatal(self) -> (&'static str, &'static str) {
        match self {
            Timeout::ClientIdle => (
                "57P05",
                "terminating connection due to idle-session timeout (usher client_idle_timeout)",
            ),
            Timeout::IdleTransaction => (
                "25P03",
                "terminating connection due to idle-in-transaction timeout (usher idle_transaction_timeout); the transaction was rolled back",
            ),
            Timeout::Query => (
                "57014",
                "terminating connection due to query timeout (usher query_timeout); the query was canceled",
            ),
            Timeout::Transaction => (
                "25P04",
                "terminating connection due to transaction timeout (usher transaction_timeout); the transaction was rolled back",
            ),
        }
    }
}

impl Session {
    /// True while an answer is owed to the client.
    fn in_flight(&self) -> bool {
        !self.tracker.is_idle() || self.pass.is_some()
    }

    /// The timeout that fires next in the session's present state, and when.
    pub(super) fn next_timeout(&self) -> Option<(Instant, Timeout)> {
        let t = self.timeouts.as_ref()?;
        let in_flight = self.in_flight();
        let in_transaction = self.txn_status != b'I' || self.txn.held().is_some();
        let mut next: Option<(Instant, Timeout)> = None;
        let mut consider = |at: Instant, kind: Timeout| {
            if next.is_none_or(|(n, _)| at < n) {
                next = Some((at, kind));
            }
        };
        if in_flight {
            if let (Some(d), Some(start)) = (t.query, self.round_start) {
                consider(start + d, Timeout::Query);
            }
        } else if in_transaction {
            if let Some(d) = t.idle_transaction {
                consider(self.last_activity + d, Timeout::IdleTransaction);
            }
        } else if let Some(d) = t.client_idle {
            consider(self.last_activity + d, Timeout::ClientIdle);
        }
        if in_flight || in_transaction {
            if let Some(d) = t.transaction {
                let start = self.xact_start.unwrap_or(self.last_activity);
                consider(start + d, Timeout::Transaction);
            }
        }
        next
    }

    /// Ends the session for `kind`: the running query (if any) is canceled on its server and
    /// the client told why.
    pub(super) async fn time_out(&mut self, kind: Timeout) {
        let setting = kind.setting();
        tracing::warn!(
            client = self.id,
            setting,
            "client disconnected: {setting} exceeded"
        );
        self.app.metrics.timed_out(setting);
        if self.in_flight() {
            // The connection is closed by the session's cleanup (something is in flight); the
            // cancel makes the server stop the query rather than run it to its end.
            let targets: Vec<_> = self.login.cancel_slot.lock().all().cloned().collect();
            let limit = self.snap().config.general.server_connect_timeout.0;
            for target in targets {
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(limit, crate::frontend::cancel::send_cancel(&target))
                            .await;
                });
            }
        }
        let _ = self.flush_client().await;
        let (code, message) = kind.fatal();
        self.io.fatal(code, message).await;
    }
}
