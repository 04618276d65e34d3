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
use crate::protocol::{client, messages, Frame};
use crate::router::Role;

impl Session {
    /// Handles a transaction-control statement while no server is attached, if BEGIN is held
    /// back (aggressive strategy, or a sharded database): holds a BEGIN, or answers the
    /// COMMIT/ROLLBACK of a transaction that never ran anything. Works for a simple Query and
    /// for an extended-protocol batch (Parse/Bind/Describe/Execute/Sync, as pgbench and JDBC
    /// send it; sharded databases only). Returns true when the frame (and its batch) was
    /// handled.
    pub(super) fn hold_begin(&mut self, frame: &Frame) -> bool {
        if self.mode != PoolMode::Transaction
            || !(frame.tag == b'Q' || (self.sharded && matches!(frame.tag, b'P' | b'B')))
        {
            return false;
        }
        let Some(db) = self.snap().config.databases.get(&self.login.database) else {
            return false;
        };
        let sharded = db.sharding.is_some();
        if !sharded
            && (!db.read_write_split || db.read_write_strategy != ReadWriteStrategy::Aggressive)
        {
            return false;
        }
        let Some((sql, frames)) = self.control_batch(frame) else {
            return false;
        };
        let class = self.classify(&sql);
        if class.statements != 1 {
            return false;
        }
        let holds = match class.begins {
            Some(read_only) => sharded || !read_only,
            None => false,
        };
        let (tag, status): (&[u8], u8) = if self.held_begin.is_none() && holds {
            let start = sql
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .is_some_and(|i| {
                    sql.get(i..i + 5)
                        .is_some_and(|w| w.eq_ignore_ascii_case(b"start"))
                });
            let tag: &[u8] = if start {
                b"START TRANSACTION"
            } else {
                b"BEGIN"
            };
            let mut q = sql.to_vec();
            q.push(0);
            self.held_begin = Some(Frame::new(b'Q', &q));
            (tag, b'T')
        } else if self.held_begin.is_some() && class.ends.is_some() {
            self.held_begin = None;
            if class.ends == Some(true) {
                (b"COMMIT", b'I')
            } else {
                (b"ROLLBACK", b'I')
            }
        } else {
            return false;
        };
        // Answer every message of the batch as the server would, and take the batch (up to
        // its Sync) off the buffer.
        let mut out = BytesMut::new();
        for t in &frames {
            match t {
                b'P' => out.extend_from_slice(messages::PARSE_COMPLETE),
                b'B' => out.extend_from_slice(messages::BIND_COMPLETE),
                b'd' => {
                    out.extend_from_slice(messages::NO_PARAMETERS);
                    out.extend_from_slice(messages::NO_DATA);
                }
                b'D' => out.extend_from_slice(messages::NO_DATA),
                _ => messages::command_complete(&mut out, tag),
            }
        }
        messages::ready_for_query(&mut out, status);
        if frame.tag != b'Q' {
            for _ in 0..frames.len() {
                let _ = crate::protocol::split_frame(&mut self.io.rbuf, self.io.max_message);
            }
        }
        self.txn_status = status;
        self.tracker.push(Expect::Local(out.freeze()));
        self.client_out.append(&mut self.tracker.ready);
        true
    }

    /// The statement text of a simple Query, or of an extended batch that executes exactly one
    /// statement and ends in a Sync, with the batch's message kinds (`d` for a Describe of a
    /// statement, `X` for an Execute or Query).
    fn control_batch(&self, frame: &Frame) -> Option<(Bytes, Vec<u8>)> {
        if frame.tag == b'Q' {
            return Some((client::Query::new(frame).ok()?.sql(), vec![b'X']));
        }
        let (frames, complete) = self.batch(frame);
        if !complete {
            return None;
        }
        // The batch must end in a Sync (a Flush would expect answers without ReadyForQuery).
        let consumed: usize = frames.iter().skip(1).map(|f| f.raw.len()).sum();
        if self.io.rbuf.get(consumed) != Some(&b'S') {
            return None;
        }
        let mut sql: Option<Bytes> = None;
        let mut kinds = Vec::new();
        let mut executes = 0;
        for f in &frames {
            let text = match f.tag {
                b'P' => {
                    kinds.push(b'P');
                    Some(client::Parse::new(f).ok()?.query())
                }
                b'B' => {
                    let bind = client::Bind::new(f).ok()?;
                    kinds.push(b'B');
                    match (&sql, bind.statement().is_empty()) {
                        (Some(_), true) => None,
                        _ => Some(self.stmts.statement(bind.statement())?.query.clone()),
                    }
                }
                b'D' => {
                    let d = client::Targeted::new(f).ok()?;
                    kinds.push(if d.target == client::Target::Statement {
                        b'd'
                    } else {
                        b'D'
                    });
                    None
                }
                b'E' => {
                    executes += 1;
                    kinds.push(b'X');
                    None
                }
                _ => return None,
            };
            if let Some(t) = text {
                if sql.as_ref().is_some_and(|s| *s != t) {
                    return None;
                }
                sql = Some(t);
            }
        }
        (executes == 1).then_some(())?;
        Some((sql?, kinds))
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
