//! Where a client's transaction stands, as one enum: no server, a BEGIN usher holds back
//! (possibly aborted by a refusal), or attached to a server (possibly only preparing for a
//! held transaction). The server connection lives inside the attached state, so a step that
//! needs it either has it or gets `None`; there is no "attached" flag to keep in step.
//!
//! A transaction across shards holds its servers in its own state (`Across`), with none
//! of them "the" attached server: the session runs each of its requests itself.
//!
//! The transaction status the client last saw in a ReadyForQuery ('I', 'T', 'E') is kept
//! beside it by the session: it is protocol state, reported as is.

use crate::pool::Lease;
use crate::protocol::Frame;
use crate::router::plan::Statement;

/// A BEGIN usher answered and holds back until the transaction's first real statement.
pub(super) struct Held {
    /// It, as a simple Query (whatever protocol the client used).
    pub frame: Frame,
    /// Its statement: the plan of the first real statement merges its classification.
    pub statement: Statement,
}

/// The client's transaction.
pub(super) enum Txn {
    /// No server: between transactions in transaction mode, or before the first statement.
    Idle,
    /// usher answered the client's BEGIN and holds it until the first real statement says
    /// where the transaction runs. `aborted`: usher refused a statement of it, so only
    /// COMMIT or ROLLBACK is accepted, as Postgres would have it.
    Held {
        /// The BEGIN (boxed: rare, and the state moves on every transaction).
        begin: Box<Held>,
        /// A statement of it was refused.
        aborted: bool,
    },
    /// On a server.
    Attached(Attached),
    /// A transaction block whose statements named several shards: a server of each shard
    /// concerned, each in its own transaction, committed together (see
    /// `fanout::spanning`).
    Across(Box<super::fanout::spanning::Spanning>),
}

/// A transaction on a server.
pub(super) struct Attached {
    /// The server connection.
    pub lease: Lease,
    /// The BEGIN is still held: this server only prepares or describes statements for the
    /// held transaction, and its idle ReadyForQuery is shown to the client as 'T'.
    pub held: Option<Box<Held>>,
    /// The aggressive strategy sent this transaction to a replica: its read-only errors are
    /// rewritten to name the setting.
    pub rewrite_read_only: bool,
}

impl Txn {
    /// The server connection, when attached.
    #[inline]
    pub fn lease(&mut self) -> Option<&mut Lease> {
        match self {
            Txn::Attached(a) => Some(&mut a.lease),
            _ => None,
        }
    }

    /// A server is attached.
    #[inline]
    pub fn is_attached(&self) -> bool {
        matches!(self, Txn::Attached(_))
    }

    /// The BEGIN usher holds, with or without a server preparing for it.
    #[inline]
    pub fn held(&self) -> Option<&Held> {
        match self {
            Txn::Held { begin, .. } => Some(begin),
            Txn::Attached(a) => a.held.as_deref(),
            Txn::Idle | Txn::Across(_) => None,
        }
    }

    /// The held transaction was aborted by a refusal.
    #[inline]
    pub fn aborted(&self) -> bool {
        matches!(self, Txn::Held { aborted: true, .. })
    }

    /// A refusal aborts a held transaction.
    pub fn abort_held(&mut self) {
        if let Txn::Held { aborted, .. } = self {
            *aborted = true;
        }
    }

    /// Attaches `lease`; a held BEGIN comes along (the session sends it or keeps holding it).
    #[inline]
    pub fn attach(&mut self, lease: Lease) {
        // The state is a few words (a held BEGIN is boxed): cheap to move.
        let held = match std::mem::replace(self, Txn::Idle) {
            Txn::Held { begin, .. } => Some(begin),
            Txn::Attached(a) => a.held,
            Txn::Idle | Txn::Across(_) => None,
        };
        *self = Txn::Attached(Attached {
            lease,
            held,
            rewrite_read_only: false,
        });
    }

    /// Detaches the server: a BEGIN held during a preparing trip is held again. Returns the
    /// lease, and whether the client's transaction stays open (a held BEGIN).
    #[inline]
    pub fn detach(&mut self) -> Option<(Lease, bool)> {
        let Txn::Attached(a) = self else {
            return None;
        };
        let held = a.held.take();
        let still_held = held.is_some();
        let next = match held {
            Some(begin) => Txn::Held {
                begin,
                aborted: false,
            },
            None => Txn::Idle,
        };
        match std::mem::replace(self, next) {
            Txn::Attached(a) => Some((a.lease, still_held)),
            _ => None,
        }
    }
}
