//! PAUSE from the session's side: a paused database's new transactions wait for RESUME, in
//! both pool modes, and the session tells the admin console whether it is inside one.
//!
//! The session publishes `busy` (running a transaction, or holding a server in transaction
//! mode) and the console sets the database paused; each writes its flag before reading the
//! other's (sequentially consistent), so either the session sees the pause and waits or the
//! console sees the session busy and waits for it. No transaction starts unseen.

use std::sync::atomic::Ordering;

use super::Session;
use crate::config::PoolMode;

impl Session {
    /// Publishes whether this client is inside a transaction (only when that changed).
    pub(super) fn update_busy(&mut self) {
        let busy = self.txn.is_attached()
            && (self.mode == PoolMode::Transaction
                || self.txn_status != b'I'
                || !self.tracker.is_idle()
                || self.pass.is_some());
        if busy != self.busy {
            self.busy = busy;
            self.info.busy.store(busy, Ordering::SeqCst);
        }
    }

    /// A transaction is about to start: waits while its database is paused.
    pub(super) async fn wait_if_paused(&mut self) {
        loop {
            if !self.busy {
                self.busy = true;
                self.info.busy.store(true, Ordering::SeqCst);
            }
            if !self.app.any_paused.load(Ordering::SeqCst) {
                return;
            }
            let resumed = self.app.resumed.notified();
            if !self.app.paused.lock().contains(&self.login.database) {
                return;
            }
            self.busy = false;
            self.info.busy.store(false, Ordering::SeqCst);
            let state = self.info.state.load(Ordering::Relaxed);
            self.set_state(crate::stats::CLIENT_WAITING);
            resumed.await;
            self.set_state(state);
        }
    }

    /// True when the next client message starts a transaction on the server this session
    /// keeps (session mode, nothing open or owed).
    pub(super) fn starts_session_transaction(&self) -> bool {
        self.mode == PoolMode::Session
            && self.txn.is_attached()
            && self.txn_status == b'I'
            && self.tracker.is_idle()
            && self.pass.is_none()
    }
}
