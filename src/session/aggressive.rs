//! `read_write_strategy = "aggressive"`: a simple-protocol `BEGIN` is answered by usher and held
//! back, and the transaction is routed by its first real statement (a read-only transaction can
//! then run on a replica). The held BEGIN is sent ahead of that statement and its answer
//! swallowed. If such a transaction later tries to write on the replica, the client gets
//! SQLSTATE 25006 with a message naming the setting, never a silent misroute. A transaction
//! that ends before any statement is answered by usher alone.
//!
//! Sharded databases hold every BEGIN the same way: a transaction runs on one shard, and the
//! first statement that names a key (or a hint) says which.

use bytes::{Bytes, BytesMut};

use super::responses::Expect;
use super::Session;
use crate::config::{PoolMode, ReadWriteStrategy};
use crate::protocol::{messages, Frame};
use crate::router::Role;

impl Session {
    /// Handles a simple Query while no server is attached, if the aggressive strategy applies:
    /// holds a BEGIN, or answers the COMMIT/ROLLBACK of a transaction that never ran anything.
    /// Returns true when the frame was handled.
    pub(super) fn hold_begin(&mut self, frame: &Frame) -> bool {
        if frame.tag != b'Q' || self.mode != PoolMode::Transaction {
            return false;
        }
        let config = self.app.config();
        let Some(db) = config.databases.get(&self.login.database) else {
            return false;
        };
        let sharded = db.sharding.is_some();
        if !sharded
            && (!db.read_write_split || db.read_write_strategy != ReadWriteStrategy::Aggressive)
        {
            return false;
        }
        let sql = frame.raw.slice(5..frame.raw.len() - 1);
        let class = self.app.query_cache.classify(&sql);
        if class.statements != 1 {
            return false;
        }
        let mut out = BytesMut::new();
        let holds = match class.begins {
            Some(read_only) => sharded || !read_only,
            None => false,
        };
        if self.held_begin.is_none() && holds {
            let start = sql
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .is_some_and(|i| {
                    sql[i..].len() >= 5 && sql[i..i + 5].eq_ignore_ascii_case(b"start")
                });
            let tag: &[u8] = if start {
                b"START TRANSACTION\0"
            } else {
                b"BEGIN\0"
            };
            out.extend_from_slice(&Frame::new(b'C', tag).raw);
            messages::ready_for_query(&mut out, b'T');
            self.txn_status = b'T';
            self.held_begin = Some(frame.clone());
        } else if self.held_begin.is_some() && class.ends.is_some() {
            let tag: &[u8] = if class.ends == Some(true) {
                b"COMMIT\0"
            } else {
                b"ROLLBACK\0"
            };
            out.extend_from_slice(&Frame::new(b'C', tag).raw);
            messages::ready_for_query(&mut out, b'I');
            self.txn_status = b'I';
            self.held_begin = None;
        } else {
            return false;
        }
        self.tracker.push(Expect::Local(out.freeze()));
        self.client_out.append(&mut self.tracker.ready);
        true
    }

    /// After attaching: sends the held BEGIN first (its answer is swallowed).
    pub(super) fn release_held_begin(&mut self) {
        if let Some(begin) = self.held_begin.take() {
            self.server_out.extend_from_slice(&begin.raw);
            self.tracker.push(Expect::HiddenQuery);
            self.route.retryable = false;
            self.replay = None;
            self.rewrite_read_only = self.route.attached_role == Some(Role::Replica);
        } else {
            self.rewrite_read_only = false;
        }
    }
}

/// The error a client gets when a transaction the aggressive strategy sent to a replica writes.
pub fn read_only_error(original: &str) -> Bytes {
    messages::error_response(
        "ERROR",
        "25006",
        &format!(
            "usher: this transaction was routed to a replica because read_write_strategy = \"aggressive\" routes a transaction by its first statement, and it then tried to write ({original})"
        ),
        Some("Start transactions that write with a write, use read_write_strategy = \"conservative\", or add /* usher: role=primary */ to the first statement."),
    )
}
