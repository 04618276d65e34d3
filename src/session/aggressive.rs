//! `read_write_strategy = "aggressive"`: a simple-protocol `BEGIN` is answered by usher and held
//! back, and the transaction is routed by its first real statement (a read-only transaction can
//! then run on a replica). The held BEGIN is sent ahead of that statement and its answer
//! swallowed. If such a transaction later tries to write on the replica, the client gets
//! SQLSTATE 25006 with a message naming the setting, never a silent misroute. A transaction
//! that ends before any statement is answered by usher alone.
//!
//! Sharded databases hold every BEGIN the same way: a transaction runs on one shard, and the
//! first statement that names a key (or a hint) says which.

use bytes::Bytes;

use super::request::Request;
use super::responses::Expect;
use super::txn::{Held, Txn};
use super::Session;
use crate::protocol::{messages, Frame};
use crate::router::plan::{Control, Statement};
use crate::router::Role;

impl Session {
    /// Carries out a transaction-control batch the plan answers locally: holds a BEGIN, or
    /// ends a held transaction that never ran anything. Every message of the batch (a simple
    /// Query, or Parse/Bind/Describe/Execute/Sync as pgbench and JDBC send it) is answered as
    /// the server would, and the batch is consumed up to its Sync.
    pub(super) fn answer_control(&mut self, request: &mut Request, control: Control) {
        let status = match &control.hold {
            Some(sql) => {
                let sql = sql.clone();
                let mut q = sql.to_vec();
                q.push(0);
                let class = self.classify(&sql);
                self.txn = Txn::Held {
                    begin: Box::new(Held {
                        frame: Frame::new(b'Q', &q),
                        statement: Statement {
                            tag: b'Q',
                            sql: Some(sql),
                            class: Some(class),
                            ..Statement::default()
                        },
                    }),
                    aborted: false,
                };
                b'T'
            }
            None => {
                self.txn = Txn::Idle;
                b'I'
            }
        };
        let out = super::fanout::spanning::control_answer(&control, None, status);
        if control.extended {
            // The batch's messages and its Sync; the caller moves past the current one.
            request.advance(control.kinds.len());
        }
        self.txn_status = status;
        self.tracker.push(Expect::Local(out));
        self.client_out.append(&mut self.tracker.ready);
    }

    /// After attaching: sends the held BEGIN first (its answer is swallowed).
    pub(super) fn release_held_begin(&mut self) {
        let on_replica = self.route.attached_role == Some(Role::Replica);
        let Txn::Attached(attached) = &mut self.txn else {
            return;
        };
        attached.rewrite_read_only = false;
        if let Some(held) = attached.held.take() {
            // A simple Query: it destroys the unnamed statement on the server (a Bind of the
            // client's unnamed statement prepares it again there).
            attached.lease.conn().state.unnamed_owner = None;
            self.server_out.extend_from_slice(&held.frame.raw);
            self.tracker.push(Expect::HiddenQuery);
            self.route.retryable = false;
            self.replay = None;
            attached.rewrite_read_only = on_replica;
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
